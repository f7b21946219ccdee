"""``appliance node ...``: the light node's header sync and its state, from the command line.

Every call prints one JSON object on stdout; logs (one event a line) go to stderr.

``appliance node sync --trust FILE [--peer URL ...] [--discover] [--state DIR] [--strict]
[--until-height H]`` verifies headers from the anchor (or the stored tip) on and stores them.
Exit status: 0 when the verified tip reaches H (or, without ``--until-height``, the best tip
the usable peers claim); 1 when no valid chain could be had (nothing stored for ``--timeout``
seconds: no peers, every peer banned, or the peers do not reach H); 2 bad usage or trust file;
3 the header store cannot be used (corrupt, or holding another anchor's chain); 4 an internal
error (a bug: the message says what; ``--log-level debug`` logs the traceback).

``appliance node status [--state DIR]`` reads the store: height, tip id, alarms, evidence, and
the peer table the last sync wrote.

``appliance node tx TXID_HEX [--trust FILE] [--peer URL ...] [--discover] [--state DIR]``
prints the transaction's verified inclusion (its proof checked against a verified header: the
store is synced as far as that needs first); ``appliance node lookup DIGEST_HEX ...`` prints the
verified ``evidence.deposit`` hits of a document digest (an empty list is an answer: not on
chain). ``--trust`` may be left out once the store is initialized (its anchor is used). Exit
status: 0 an answer; 1 none could be had (``error``: ``not_found``, ``not_verifiable``,
``no_peers``, ``timeout``); 2, 3, 4 and 130 as for ``sync``.

The node's state is ``DIR/node/headers.sqlite`` (and ``DIR/node/peers.json``), with DIR from
``--state``, else ``$APPLIANCE_STATE``, else ``/var/lib/appliance``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_NO_CHAIN, EXIT_USAGE, EXIT_STORE, EXIT_INTERNAL = 0, 1, 2, 3, 4
DEFAULT_STATE = "/var/lib/appliance"
STORE_NAME = "headers.sqlite"
PEERS_NAME = "peers.json"


def state_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("APPLIANCE_STATE") or DEFAULT_STATE)


def node_dir(arg: str | None) -> Path:
    return state_dir(arg) / "node"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("node", help="the SPV light node: header sync and state",
                       description="The light node's verified header chain. State lives in "
                       "DIR/node/ (DIR from --state, $APPLIANCE_STATE or /var/lib/appliance).")
    cmds = p.add_subparsers(dest="node_command", metavar="COMMAND", required=True)

    s = cmds.add_parser("sync", help="verify and store headers from district nodes",
                        description="Sync the verified header chain from district nodes "
                        "(protocol §5, §7). Exit 0 when the tip reaches --until-height (or the "
                        "peers' tip), 1 when no valid chain can be had.")
    s.add_argument("--trust", required=True, metavar="FILE",
                   help="the trust anchor: canonical CBOR {chain_id, height, block_id, "
                   "validators}")
    s.add_argument("--peer", action="append", default=[], metavar="URL",
                   help="a district node's base URL (repeatable)")
    s.add_argument("--discover", action="store_true",
                   help="also find district nodes by mDNS (_gov-ledger._tcp.local.)")
    s.add_argument("--discover-interface", action="append", default=None, metavar="ADDR",
                   help="browse only on this interface address (repeatable; e.g. 127.0.0.1)")
    s.add_argument("--discover-wait", type=float, default=2.0, metavar="S",
                   help="with --discover, listen this long before declaring the tip reached "
                   "(default 2)")
    s.add_argument("--state", default=None, metavar="DIR", help="state directory")
    s.add_argument("--strict", action="store_true",
                   help="audit mode: a valid commit on every header")
    s.add_argument("--until-height", type=_uint, default=None, metavar="H",
                   help="stop when the verified tip reaches H")
    s.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="give up when nothing could be stored for S seconds (default 60)")
    s.add_argument("--batch", type=_uint, default=1000, metavar="N",
                   help="headers per request, 1..1000 (default 1000)")
    s.add_argument("--ban-base-ms", type=_uint, default=2000, metavar="MS",
                   help="first ban of a misbehaving peer; doubles each time (default 2000)")
    s.add_argument("--ban-max-ms", type=_uint, default=300_000, metavar="MS",
                   help="longest ban (default 300000)")
    s.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    _fisco_options(s)
    s.set_defaults(func=run_sync)

    st = cmds.add_parser("status", help="height, tip, alarms and peers of the stored chain")
    st.add_argument("--state", default=None, metavar="DIR", help="state directory")
    _fisco_options(st)
    st.set_defaults(func=run_status)

    t = cmds.add_parser("tx", help="a transaction's verified inclusion",
                        description="Fetch a transaction and verify its inclusion proof against "
                        "the verified header chain (synced as needed first). Exit 0 with the "
                        "verified inclusion; 1 when it is not found, not verifiable or no peer "
                        "answered.")
    t.add_argument("tx_id", metavar="TXID_HEX", help="the transaction id, 64 hex digits")
    _query_options(t)
    _fisco_options(t)
    t.set_defaults(func=run_tx)

    lk = cmds.add_parser("lookup", help="verified evidence.deposit transactions of a document",
                         description="Look up the evidence.deposit transactions of a document "
                         "digest on the peers and verify each hit (synced as needed first). "
                         "Exit 0 with the verified hits (an empty list: not on chain); 1 when no "
                         "peer answered.")
    lk.add_argument("digest", metavar="DIGEST_HEX", help="SM3 of the document, 64 hex digits")
    _query_options(lk)
    lk.set_defaults(func=run_lookup)

    ca = cmds.add_parser("clear-alarm", help="clear an alarm (logged in the audit log)",
                         description="Clear every active alarm of KIND in the header store "
                         "and write an alarm_cleared entry to the audit log (DIR/audit). "
                         "Exit 0 when cleared, 1 when no such alarm is active, 3 when the "
                         "store or the audit log cannot be used.")
    ca.add_argument("kind", metavar="KIND", help="the alarm kind (see 'appliance node status')")
    ca.add_argument("--operator", required=True, metavar="NAME", help="who clears it")
    ca.add_argument("--state", default=None, metavar="DIR", help="state directory")
    ca.set_defaults(func=run_clear_alarm)


def _fisco_options(p: argparse.ArgumentParser) -> None:
    from .fisco.cli import add_options

    add_options(p)


def _fisco(args: argparse.Namespace, name: str) -> int | None:
    """Run the FISCO BCOS variant of a command when --chain-kind fisco-bcos-3 is given."""
    if getattr(args, "chain_kind", "native") != "fisco-bcos-3":
        return None
    from .fisco import cli as fisco_cli

    return getattr(fisco_cli, name)(args)


def _query_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust", default=None, metavar="FILE",
                   help="the trust anchor (canonical CBOR); default: the one of the "
                   "initialized store")
    p.add_argument("--peer", action="append", default=[], metavar="URL",
                   help="a district node's base URL (repeatable)")
    p.add_argument("--discover", action="store_true",
                   help="also find district nodes by mDNS (_gov-ledger._tcp.local.)")
    p.add_argument("--discover-interface", action="append", default=None, metavar="ADDR",
                   help="browse only on this interface address (repeatable)")
    p.add_argument("--discover-wait", type=float, default=2.0, metavar="S",
                   help="with --discover, listen this long before asking (default 2)")
    p.add_argument("--state", default=None, metavar="DIR", help="state directory")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="give up when no answer could be had in S seconds (default 60)")
    p.add_argument("--log-level", default="warning",
                   choices=["debug", "info", "warning", "error"])


def _uint(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return value


def _out(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


def _fail(code: int, error: str, message: str) -> int:
    print(f"appliance node: {message}", file=sys.stderr, flush=True)
    _out({"ok": False, "error": error, "message": message})
    return code


def _setup_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    logging.getLogger("zeroconf").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.WARNING)


# --- sync ---------------------------------------------------------------------------------------


def _open_store(directory: Path) -> Any:
    """The header store in ``directory`` (created if missing), or an exit status after the
    failure was printed."""
    from .store import HeaderStore, StoreCorrupt, StoreError

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _fail(EXIT_STORE, "store", f"cannot create {directory}: {exc.strerror or exc}")
    try:
        return HeaderStore.open(directory / STORE_NAME)
    except StoreCorrupt as exc:
        return _fail(EXIT_STORE, "store_corrupt", f"{exc} (move it aside to sync again "
                     "from the anchor)")
    except StoreError as exc:
        return _fail(EXIT_STORE, "store", str(exc))


def run_sync(args: argparse.Namespace) -> int:
    if (code := _fisco(args, "run_sync")) is not None:
        return code
    _setup_logging(args.log_level)
    from .errors import LedgerError
    from .model import decode_trust_anchor
    from .peers import normalize_url
    from .sync import SyncConfig

    try:
        anchor_bytes = Path(args.trust).read_bytes()
    except OSError as exc:
        return _fail(EXIT_USAGE, "usage", f"cannot read the trust anchor {args.trust}: "
                     f"{exc.strerror or exc}")
    try:
        anchor = decode_trust_anchor(anchor_bytes)
    except LedgerError as exc:
        return _fail(EXIT_USAGE, "usage", f"{args.trust} is not a trust anchor: {exc}")
    if args.until_height is not None and args.until_height < anchor.height:
        return _fail(EXIT_USAGE, "usage", f"--until-height {args.until_height} is below the "
                     f"trust anchor's height {anchor.height}")
    peers = []
    for url in args.peer:
        try:
            peers.append(normalize_url(url))
        except ValueError as exc:
            return _fail(EXIT_USAGE, "usage", str(exc))
    if not peers and not args.discover:
        return _fail(EXIT_USAGE, "usage", "no peers: give --peer URL (repeatable) or "
                     "--discover")
    try:
        config = SyncConfig(batch=args.batch, strict=args.strict,
                            until_height=args.until_height, ban_base_ms=max(1, args.ban_base_ms),
                            ban_max_ms=max(1, args.ban_base_ms, args.ban_max_ms))
    except ValueError as exc:
        return _fail(EXIT_USAGE, "usage", str(exc))
    directory = node_dir(args.state)
    store = _open_store(directory)
    if isinstance(store, int):
        return store
    try:
        return asyncio.run(_sync(args, store, anchor_bytes, anchor.chain_id, peers, config))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: say what, without a stack trace (unless debugging)
        logging.getLogger("appliance.node").debug("internal error", exc_info=True)
        return _fail(EXIT_INTERNAL, "internal", f"internal error: {type(exc).__name__}: {exc}")
    finally:
        store.close()


async def _start_node(args: argparse.Namespace, store: Any, anchor_bytes: bytes, chain_id: str,
                      peers: list[str], config: Any) -> tuple[Any, asyncio.Event, Any] | int:
    """The NodeSync with its static peers, SIGTERM/SIGINT setting the stop event and, with
    --discover, mDNS discovery started: (node, stop, discovery or None), or an exit status
    after the failure was printed."""
    from .client import NodeSync, SyncAborted
    from .discovery import Discovery

    try:
        node = NodeSync(store, anchor_bytes, config,
                        peers_file=Path(store.path).with_name(PEERS_NAME))
    except SyncAborted as exc:
        return _fail(EXIT_STORE, "store", str(exc))
    for url in peers:
        node.add_peer(url, "static")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    discovery = None
    if args.discover:
        discovery = Discovery(chain_id, lambda url, name: node.add_peer(url, f"mdns:{name}"),
                              lambda url, name: node.remove_peer(url, f"mdns:{name}"),
                              interfaces=args.discover_interface)
        try:
            await discovery.start()
        except OSError as exc:
            return _fail(EXIT_USAGE, "discovery", f"mDNS discovery could not start: {exc}")
    return node, stop, discovery


async def _sync(args: argparse.Namespace, store: Any, anchor_bytes: bytes, chain_id: str,
                peers: list[str], config: Any) -> int:
    from .client import SyncAborted

    started = await _start_node(args, store, anchor_bytes, chain_id, peers, config)
    if isinstance(started, int):
        return started
    node, stop, discovery = started
    if discovery is not None and args.discover_wait > 0:
        # Let announcements come in first: the peers' tip is the best of all of them.
        await _wait(stop, args.discover_wait)
    try:
        result = await node.run(stop_at_tip=True, stall_timeout_s=args.timeout, stop=stop)
    except SyncAborted as exc:
        return _fail(EXIT_STORE, "store", str(exc))
    finally:
        if discovery is not None:
            await discovery.stop()
    doc = result.to_json()
    if not result.ok:
        print(f"appliance node: {result.message}", file=sys.stderr, flush=True)
        doc["error"] = result.reason
    _out(doc)
    if result.reason == "stopped":
        return 130
    return EXIT_OK if result.ok else EXIT_NO_CHAIN


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


# --- tx and lookup ------------------------------------------------------------------------------


def run_tx(args: argparse.Namespace) -> int:
    if (code := _fisco(args, "run_tx")) is not None:
        return code
    return _run_query(args, "tx", args.tx_id)


def run_lookup(args: argparse.Namespace) -> int:
    return _run_query(args, "lookup", args.digest)


def _hex32(text: str) -> bytes | None:
    if len(text) != 64:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def _run_query(args: argparse.Namespace, kind: str, key_hex: str) -> int:
    _setup_logging(args.log_level)
    from .errors import LedgerError
    from .model import decode_trust_anchor
    from .peers import normalize_url
    from .store import StoreError

    what = "TXID_HEX" if kind == "tx" else "DIGEST_HEX"
    key = _hex32(key_hex)
    if key is None:
        return _fail(EXIT_USAGE, "usage", f"{what} must be 64 hex digits, got {key_hex[:80]!r}")
    peers = []
    for url in args.peer:
        try:
            peers.append(normalize_url(url))
        except ValueError as exc:
            return _fail(EXIT_USAGE, "usage", str(exc))
    if not peers and not args.discover:
        return _fail(EXIT_USAGE, "usage", "no peers: give --peer URL (repeatable) or "
                     "--discover")
    if not args.timeout > 0:
        return _fail(EXIT_USAGE, "usage", "--timeout must be > 0")
    anchor_bytes = None
    if args.trust is not None:
        try:
            anchor_bytes = Path(args.trust).read_bytes()
        except OSError as exc:
            return _fail(EXIT_USAGE, "usage", f"cannot read the trust anchor {args.trust}: "
                         f"{exc.strerror or exc}")
    directory = node_dir(args.state)
    if anchor_bytes is None and not (directory / STORE_NAME).exists():
        return _fail(EXIT_USAGE, "usage", f"no header store in {directory}: give --trust FILE")
    store = _open_store(directory)
    if isinstance(store, int):
        return store
    try:
        if anchor_bytes is None:
            if not store.initialized:
                return _fail(EXIT_USAGE, "usage", f"{store.path} is empty: give --trust FILE")
            anchor_bytes = store.anchor
        try:
            anchor = decode_trust_anchor(anchor_bytes)
        except LedgerError as exc:
            return _fail(EXIT_USAGE, "usage", f"{args.trust} is not a trust anchor: {exc}")
        return asyncio.run(_query(args, kind, key, store, anchor_bytes, anchor.chain_id,
                                  peers))
    except KeyboardInterrupt:
        return 130
    except StoreError as exc:
        return _fail(EXIT_STORE, "store", str(exc))
    except Exception as exc:  # a bug: say what, without a stack trace (unless debugging)
        logging.getLogger("appliance.node").debug("internal error", exc_info=True)
        return _fail(EXIT_INTERNAL, "internal", f"internal error: {type(exc).__name__}: {exc}")
    finally:
        store.close()


async def _query(args: argparse.Namespace, kind: str, key: bytes, store: Any,
                 anchor_bytes: bytes, chain_id: str, peers: list[str]) -> int:
    """Run the sync in the background and ask the question; the sync stores what the answer
    needs (the header of the transaction's block) before the answer is given."""
    from .client import SyncAborted, TxError
    from .sync import SyncConfig

    started = await _start_node(args, store, anchor_bytes, chain_id, peers, SyncConfig())
    if isinstance(started, int):
        return started
    node, stop, discovery = started
    started = time.monotonic()
    sync_task = asyncio.create_task(node.run(stop_at_tip=False, stall_timeout_s=None,
                                             stop=stop))
    question = asyncio.create_task(_ask(node, kind, key, args))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({question, sync_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if question.done():
            try:
                doc = question.result()
            except TxError as exc:
                message = exc.message
                print(f"appliance node: {message}", file=sys.stderr, flush=True)
                _out({"ok": False, "error": exc.code, "message": message,
                      ("tx_id" if kind == "tx" else "digest"): key.hex(),
                      **_state(node, started)})
                return EXIT_NO_CHAIN
            _out({"ok": True, **doc, **_state(node, started)})
            return EXIT_OK
        if sync_task.done():
            sync_task.result()  # SyncAborted (the store refused a write) or a bug: raised
            return _fail(EXIT_INTERNAL, "internal", "the sync ended before the answer")
        return 130  # SIGINT/SIGTERM
    except SyncAborted as exc:
        return _fail(EXIT_STORE, "store", str(exc))
    finally:
        question.cancel()
        stopper.cancel()
        stop.set()
        await asyncio.gather(question, stopper, return_exceptions=True)
        try:
            await sync_task
        except Exception:  # already reported above, or a failure on the way out
            logging.getLogger("appliance.node").debug("sync ended with", exc_info=True)
        if discovery is not None:
            await discovery.stop()


async def _ask(node: Any, kind: str, key: bytes, args: argparse.Namespace) -> dict[str, Any]:
    if args.discover and args.discover_wait > 0:
        await asyncio.sleep(args.discover_wait)  # let announcements come in
    if kind == "tx":
        inclusion = await node.get_inclusion(key, timeout_s=args.timeout)
        return inclusion.to_json()
    result = await node.lookup_detailed(key, timeout_s=args.timeout)
    if result.dropped and not result.hits:
        # Peers listed transactions for this digest and none verified: that is not "not on
        # chain", it is no trustworthy answer (the window clerk must not be told "forged").
        from .client import NotVerifiable

        raise NotVerifiable(
            f"peers listed {len(result.dropped)} transaction(s) for this digest but none "
            "verified; the answer is unknown, not 'not on chain'")
    return {"digest": key.hex(), "hits": [h.to_json() for h in result.hits],
            "dropped": [d.to_json() for d in result.dropped], "asked": list(result.peers)}


def _state(node: Any, started: float) -> dict[str, Any]:
    tip = node.machine.tip
    return {"verified_height": None if tip is None else tip.height,
            "alarms": [{"id": a.id, "kind": a.kind, "detail": a.detail,
                        "raised_at_ms": a.raised_at_ms} for a in node.store.alarms()],
            "peers": node.machine.peers.snapshot(),
            "elapsed_s": round(time.monotonic() - started, 3)}


# --- status -------------------------------------------------------------------------------------


def run_status(args: argparse.Namespace) -> int:
    if (code := _fisco(args, "run_status")) is not None:
        return code
    from .store import HeaderStore, StoreCorrupt, StoreError

    directory = node_dir(args.state)
    path = directory / STORE_NAME
    doc: dict[str, Any] = {"ok": True, "state": str(directory), "store": str(path)}
    peers_doc = _read_peers(directory / PEERS_NAME)
    if not path.exists():
        _out({**doc, "initialized": False, "height": None, "tip_id": None, "alarms": [],
              "authorizations_blocked": False, **peers_doc})
        return EXIT_OK
    try:
        store = HeaderStore.open(path)
    except StoreCorrupt as exc:
        return _fail(EXIT_STORE, "store_corrupt", str(exc))
    except StoreError as exc:
        return _fail(EXIT_STORE, "store", str(exc))
    try:
        alarms = [{"id": a.id, "kind": a.kind, "detail": a.detail,
                   "raised_at_ms": a.raised_at_ms, "evidence_id": a.evidence_id}
                  for a in store.alarms()]
        evidence = store.evidence()
        doc.update({"initialized": store.initialized, "alarms": alarms,
                    "authorizations_blocked": bool(alarms),
                    "evidence": [{"id": e.id, "height": e.height, "kind": e.kind,
                                  "at_ms": e.at_ms} for e in evidence]})
        if store.initialized:
            tip = store.tip()
            doc.update({"chain_id": store.chain_id, "anchor_height": store.anchor_height,
                        "height": tip.height, "tip_id": tip.block_id.hex(),
                        "next_set_hash": tip.next_set_hash.hex(),
                        "window_start": store.window_start()})
        else:
            doc.update({"height": None, "tip_id": None})
    except StoreError as exc:
        return _fail(EXIT_STORE, "store", str(exc))
    finally:
        store.close()
    _out({**doc, **peers_doc})
    return EXIT_OK


def _read_peers(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"peers": [], "peers_updated_at_ms": None}
    if not isinstance(data, dict):
        return {"peers": [], "peers_updated_at_ms": None}
    updated = data.get("updated_at_ms")
    age = None if not isinstance(updated, int) else round(time.time() - updated / 1000, 1)
    return {"peers": data.get("peers", []), "peers_updated_at_ms": updated,
            "peers_age_s": age}


# --- clear-alarm --------------------------------------------------------------------------------


def run_clear_alarm(args: argparse.Namespace) -> int:
    """Clear the alarm, then log ``alarm_cleared``; the audit log is checked first, so an
    alarm is never cleared without its entry (barring a crash between the two writes)."""
    from ..audit import AuditError, AuditFieldError, AuditLog
    from .store import StoreError

    directory = node_dir(args.state)
    if not (directory / STORE_NAME).exists():
        return _fail(EXIT_USAGE, "usage", f"no header store in {directory}")
    audit = AuditLog(state_dir(args.state) / "audit")
    try:
        audit.check()
    except (AuditError, OSError) as exc:
        return _fail(EXIT_STORE, "audit", f"the audit log cannot be written: {exc}")
    store = _open_store(directory)
    if isinstance(store, int):
        return store
    try:
        ids = [a.id for a in store.alarms() if a.kind == args.kind]
        if not ids:
            return _fail(EXIT_NO_CHAIN, "no_alarm", f"no active alarm of kind {args.kind!r}")
        now_ms = time.time_ns() // 1_000_000
        cleared = store.clear_alarm(args.kind, args.operator, at_ms=now_ms)
        entry = audit.append("alarm_cleared", alarm=args.kind, operator=args.operator,
                             alarm_ids=ids, cleared=cleared)
    except StoreError as exc:
        return _fail(EXIT_STORE, "store", str(exc))
    except AuditFieldError as exc:
        return _fail(EXIT_USAGE, "usage", str(exc))
    except (AuditError, OSError) as exc:
        return _fail(EXIT_STORE, "audit", f"alarm cleared but not logged: {exc}")
    finally:
        store.close()
    _out({"ok": True, "kind": args.kind, "cleared": cleared, "alarm_ids": ids,
          "operator": args.operator, "audit_seq": entry.seq, "cleared_at_ms": now_ms})
    return EXIT_OK
