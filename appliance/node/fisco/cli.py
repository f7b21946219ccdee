"""``appliance node sync|status|tx --chain-kind fisco-bcos-3 --rpc URL [--group G]``.

The same commands, state directory, store file, output form and exit statuses as the native
chain (appliance/node/cli.py); the trust anchor is the FISCO anchor JSON (anchor.py), the
peers are FISCO JSON-RPC endpoints (``--rpc``, repeatable). ``--group`` must match the
anchor's group when given.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

KIND = "fisco-bcos-3"


def add_options(p: argparse.ArgumentParser) -> None:
    """The chain-kind options, added to sync, status and tx."""
    p.add_argument("--chain-kind", choices=["native", KIND], default="native",
                   help="the chain: this project's ledger protocol (native, default) or a "
                   "FISCO BCOS 3.x chain in gm mode (fisco-bcos-3, see docs/fisco-bcos.md)")
    p.add_argument("--rpc", action="append", default=[], metavar="URL",
                   help="fisco-bcos-3: a node's JSON-RPC URL (repeatable)")
    p.add_argument("--group", default=None, metavar="G",
                   help="fisco-bcos-3: the group (must be the anchor's; default: the anchor's)")


def _common() -> Any:
    """The native CLI module (its output and store functions), imported when used."""
    from .. import cli

    return cli


def _anchor(args: argparse.Namespace, data: bytes, what: str) -> Any:
    from ..errors import LedgerError
    from .anchor import decode_anchor

    c = _common()
    try:
        anchor = decode_anchor(data)
    except LedgerError as exc:
        return c._fail(c.EXIT_USAGE, "usage", f"{what} is not a FISCO trust anchor: {exc}")
    if args.group is not None and args.group != anchor.group:
        return c._fail(c.EXIT_USAGE, "usage", f"--group {args.group} is not the anchor's "
                       f"group {anchor.group}")
    return anchor


def _peers(args: argparse.Namespace) -> list[str] | int:
    from ..peers import normalize_url

    c = _common()
    urls = []
    for url in args.rpc:
        try:
            urls.append(normalize_url(url))
        except ValueError as exc:
            return c._fail(c.EXIT_USAGE, "usage", str(exc))
    if not urls:
        return c._fail(c.EXIT_USAGE, "usage", "no nodes: give --rpc URL (repeatable)")
    return urls


def run_sync(args: argparse.Namespace) -> int:
    c = _common()
    c._setup_logging(args.log_level)
    from .client import FiscoNodeSync, StoreMismatch
    from .sync import FiscoSyncConfig

    try:
        data = Path(args.trust).read_bytes()
    except OSError as exc:
        return c._fail(c.EXIT_USAGE, "usage", f"cannot read the trust anchor {args.trust}: "
                       f"{exc.strerror or exc}")
    anchor = _anchor(args, data, args.trust)
    if isinstance(anchor, int):
        return anchor
    peers = _peers(args)
    if isinstance(peers, int):
        return peers
    if args.until_height is not None and args.until_height < anchor.height:
        return c._fail(c.EXIT_USAGE, "usage", f"--until-height {args.until_height} is below "
                       f"the anchor's height {anchor.height}")
    try:
        config = FiscoSyncConfig(batch=min(args.batch, 1000) or 1, strict=args.strict,
                                 until_height=args.until_height,
                                 ban_base_ms=max(1, args.ban_base_ms),
                                 ban_max_ms=max(1, args.ban_base_ms, args.ban_max_ms))
    except ValueError as exc:
        return c._fail(c.EXIT_USAGE, "usage", str(exc))
    store = c._open_store(c.node_dir(args.state))
    if isinstance(store, int):
        return store
    try:
        try:
            node = FiscoNodeSync(store, anchor, config)
        except StoreMismatch as exc:
            return c._fail(c.EXIT_STORE, "store", str(exc))
        for url in peers:
            node.add_peer(url)
        result = asyncio.run(_run(node, args.timeout))
        _write_peers(Path(store.path).with_name(c.PEERS_NAME), result.peers)
        doc = result.to_json()
        if not result.ok:
            print(f"appliance node: {result.message}", file=sys.stderr, flush=True)
            doc["error"] = result.reason
        c._out(doc)
        if result.reason == "stopped":
            return 130
        return c.EXIT_OK if result.ok else c.EXIT_NO_CHAIN
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug or a store failure: say what, no stack trace
        from ..store import StoreError

        logging.getLogger("appliance.node").debug("internal error", exc_info=True)
        if isinstance(exc, StoreError):
            return c._fail(c.EXIT_STORE, "store", str(exc))
        return c._fail(c.EXIT_INTERNAL, "internal", f"internal error: {type(exc).__name__}: "
                       f"{exc}")
    finally:
        store.close()


def _write_peers(path: Path, peers: list[dict[str, Any]]) -> None:
    """The peer table as the native sync writes it, for ``status`` (write-temp, rename)."""
    import json
    import os

    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps({"updated_at_ms": int(time.time() * 1000), "peers": peers}))
        os.replace(tmp, path)
    except OSError as exc:
        logging.getLogger("appliance.node").warning("cannot write %s: %s", path, exc)


async def _run(node: Any, timeout: float) -> Any:
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return await node.run(stall_timeout_s=timeout, stop=stop)


def run_status(args: argparse.Namespace) -> int:
    """The native status, plus the FISCO anchor's fields when the store holds a FISCO chain."""
    c = _common()
    from ..store import HeaderStore, StoreError

    path = c.node_dir(args.state) / c.STORE_NAME
    if not path.exists():
        c._out({"ok": True, "chain_kind": KIND, "initialized": False, "height": None,
                "tip_hash": None, "alarms": [], "authorizations_blocked": False})
        return c.EXIT_OK
    try:
        store = HeaderStore.open(path)
    except StoreError as exc:
        return c._fail(c.EXIT_STORE, "store", str(exc))
    try:
        if store.initialized and not store.chain_id.startswith(KIND + "/"):
            return c._fail(c.EXIT_STORE, "store", f"the store holds {store.chain_id!r}, not a "
                           f"{KIND} chain")
        alarms = [{"id": a.id, "kind": a.kind, "detail": a.detail,
                   "raised_at_ms": a.raised_at_ms} for a in store.alarms()]
        doc: dict[str, Any] = {"ok": True, "chain_kind": KIND, "store": str(path),
                               "initialized": store.initialized, "alarms": alarms,
                               "authorizations_blocked": bool(alarms)}
        if store.initialized:
            from .anchor import decode_anchor

            anchor = decode_anchor(store.anchor)
            tip = store.tip()
            doc.update({"chain_id": anchor.chain_id, "group": anchor.group,
                        "anchor_height": anchor.height, "height": tip.height,
                        "tip_hash": "0x" + tip.block_id.hex(), "sealers": anchor.to_json()[
                            "sealers"], "weights": list(anchor.sealers.weights),
                        "window_start": store.window_start()})
        else:
            doc.update({"height": None, "tip_hash": None})
    except StoreError as exc:
        return c._fail(c.EXIT_STORE, "store", str(exc))
    finally:
        store.close()
    c._out({**doc, **c._read_peers(path.with_name(c.PEERS_NAME))})
    return c.EXIT_OK


def run_tx(args: argparse.Namespace) -> int:
    """Sync to the nodes' tip, then verify the transaction's inclusion and receipt against
    the stored block at its height."""
    c = _common()
    c._setup_logging(args.log_level)
    from .client import FiscoNodeSync, StoreMismatch, fetch_inclusion

    key = c._hex32(args.tx_id[2:] if args.tx_id.startswith("0x") else args.tx_id)
    if key is None:
        return c._fail(c.EXIT_USAGE, "usage", f"TXID_HEX must be 64 hex digits, got "
                       f"{args.tx_id[:80]!r}")
    peers = _peers(args)
    if isinstance(peers, int):
        return peers
    directory = c.node_dir(args.state)
    data = None
    if args.trust is not None:
        try:
            data = Path(args.trust).read_bytes()
        except OSError as exc:
            return c._fail(c.EXIT_USAGE, "usage", f"cannot read the trust anchor {args.trust}:"
                           f" {exc.strerror or exc}")
    elif not (directory / c.STORE_NAME).exists():
        return c._fail(c.EXIT_USAGE, "usage", f"no header store in {directory}: give --trust")
    store = c._open_store(directory)
    if isinstance(store, int):
        return store
    try:
        if data is None:
            if not store.initialized:
                return c._fail(c.EXIT_USAGE, "usage", "the store is empty: give --trust FILE")
            data = store.anchor
        anchor = _anchor(args, data, args.trust or "the store's anchor")
        if isinstance(anchor, int):
            return anchor
        try:
            node = FiscoNodeSync(store, anchor)
        except StoreMismatch as exc:
            return c._fail(c.EXIT_STORE, "store", str(exc))
        for url in peers:
            node.add_peer(url)
        started = time.monotonic()
        result = asyncio.run(_run(node, args.timeout))
        inclusion, why = asyncio.run(fetch_inclusion(store, anchor, peers, key))
        state = {"verified_height": result.height, "alarms": result.alarms,
                 "peers": result.peers, "elapsed_s": round(time.monotonic() - started, 3)}
        if inclusion is None:
            served = {p: w for p, w in why.items() if w != "not_found"}
            code = "not_verifiable" if served else ("not_found" if why else "no_peers")
            message = f"transaction {args.tx_id}: {code} ({why})"
            print(f"appliance node: {message}", file=sys.stderr, flush=True)
            c._out({"ok": False, "error": code, "message": message, "tx_id": "0x" + key.hex(),
                    "answers": why, **state})
            return c.EXIT_NO_CHAIN
        c._out({"ok": True, "chain_kind": KIND, **inclusion.to_json(), **state})
        return c.EXIT_OK
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        logging.getLogger("appliance.node").debug("internal error", exc_info=True)
        return c._fail(c.EXIT_INTERNAL, "internal", f"internal error: {type(exc).__name__}: "
                       f"{exc}")
    finally:
        store.close()
