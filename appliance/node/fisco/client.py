"""``FiscoNodeSync``: the aiohttp adapter of :class:`FiscoSync`, and verified inclusions.

It POSTs the machine's JSON-RPC bodies and reads the answers with the native light node's
transport (:class:`~appliance.node.client.Limits` and its body reader: a declared length over
the limit refused before the body, reading stopped the moment it passes, connect, headers, gap
and whole-request timeouts, a minimum body rate counted from the headers on after a grace
period, a short body against its declared length refused, a failed answer's connection
closed), and writes verified blocks to the :class:`HeaderStore` (one transaction per segment,
in a worker thread). The FISCO chain lives in the same store as the native one would: chain id
``fisco-bcos-3/CHAIN/GROUP``, the anchor file's canonical JSON as the anchor, each block's
hash preimage as its header (its SM3 is the stored block id), the sealer set's encoding as
the one validator set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ..client import FetchError, Limits, new_session, read_body
from ..errors import LedgerError, MalformedError, VerificationError
from ..store import HeaderStore, StoreError
from . import jsonrpc
from .anchor import FiscoAnchor
from .block import decode_header, decode_tx_proof
from .receipt import decode_receipt
from .sync import AppendSegment, BanPeer, FiscoSync, FiscoSyncConfig, Initialize, TipReached
from .verify import Inclusion, Trusted, verify_inclusion, verify_link_range

__all__ = ["FiscoNodeSync", "Limits", "StoreMismatch", "SyncResult", "fetch_inclusion", "post"]

log = logging.getLogger("appliance.node.fisco")

_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class StoreMismatch(Exception):
    """The store holds another chain, group or anchor."""


class _Fail(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def post(session: aiohttp.ClientSession, url: str, body: bytes, max_bytes: int,
               limits: Limits) -> bytes:
    """POST a JSON-RPC body; the answer's bytes, or _Fail(reason).

    The native light node's transport rules (:class:`~appliance.node.client.Limits`): the
    headers within ``headers_timeout_s`` of sending (the node's think time), then the body read
    by the native reader: a declared length over the limit refused before the body, the rate
    clock started when the headers arrive, ``idle_timeout_s`` between pieces,
    ``total_timeout_s`` for all, a body shorter than its declared length is ``disconnected``.
    A failed answer's connection is closed, never drained or reused."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(limits.headers_timeout_s):
            resp = await session.post(url, data=body, allow_redirects=False,
                                      headers=_JSON_HEADERS)
    except TimeoutError:
        raise _Fail("timeout") from None
    except aiohttp.ClientConnectorError:
        raise _Fail("unreachable") from None
    except aiohttp.ClientError:
        raise _Fail("disconnected") from None
    except (OSError, ValueError):
        raise _Fail("unreachable") from None
    ok = False
    try:
        if resp.status != 200:
            raise _Fail(f"http_{resp.status}")
        data = await read_body(resp, max_bytes, limits, started)
        ok = True
        return data
    except FetchError as exc:
        raise _Fail(exc.reason) from None
    finally:
        if ok:
            resp.release()
        else:
            resp.close()


@dataclass
class SyncResult:
    ok: bool
    reason: str  # reached, no_valid_chain, sealer_change, stopped
    message: str
    height: int | None
    tip_hash: bytes | None
    appended: int
    peers: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, "message": self.message,
                "chain_kind": "fisco-bcos-3", "height": self.height,
                "tip_hash": None if self.tip_hash is None else "0x" + self.tip_hash.hex(),
                "appended": self.appended, "peers": self.peers, "alarms": self.alarms,
                "elapsed_s": round(self.elapsed_s, 3)}


def _now_ms() -> int:
    return int(time.time() * 1000)


class FiscoNodeSync:
    """Sync a FISCO chain into ``store`` from the peers added with :meth:`add_peer`."""

    def __init__(self, store: HeaderStore, anchor: FiscoAnchor,
                 config: FiscoSyncConfig | None = None,
                 limits: Limits | None = None) -> None:
        self.store = store
        self.anchor = anchor
        self.limits = limits or Limits()
        tip = None
        if store.initialized:
            if store.chain_id != anchor.store_chain_id or store.anchor != anchor.encode():
                raise StoreMismatch(f"the store holds {store.chain_id!r} with another anchor")
            t = store.tip()
            tip = Trusted(t.height, t.block_id, anchor.sealers)
        self.machine = FiscoSync(anchor, config, tip)
        self.appended = 0
        self._events: list[object] = []  # in the machine's order; one writer drains them
        self._write_lock = asyncio.Lock()
        self._abort: StoreError | None = None

    def add_peer(self, url: str) -> None:
        self.machine.add_peer(url)

    async def _handle(self, events: Sequence[object]) -> None:
        """Queue the events (synchronously, so in the machine's order) and write them in
        that order: store writes never overtake one another."""
        self._events.extend(events)
        async with self._write_lock:
            while self._events and self._abort is None:
                try:
                    await self._apply(self._events.pop(0))
                except StoreError as exc:
                    self._abort = exc

    async def _apply(self, ev: object) -> None:
        s = self.anchor.sealers
        if isinstance(ev, Initialize):
            await asyncio.to_thread(self.store.initialize, self.anchor.store_chain_id,
                                    self.anchor.encode(), ev.number, ev.block_hash,
                                    ev.preimage, s.hash, [(s.hash, s.encoded)])
            log.info("initialized at the anchor block %d", ev.number)
        elif isinstance(ev, AppendSegment):
            await asyncio.to_thread(self.store.append, list(ev.blocks), s.hash)
            self.appended += len(ev.blocks)
            log.info("stored blocks %d..%d from %s", ev.blocks[0][0], ev.blocks[-1][0],
                     ev.peer)
        elif isinstance(ev, BanPeer):
            log.warning("peer %s banned: %s %s", ev.peer, ev.reason, ev.detail)

    async def run(self, *, stall_timeout_s: float = 60.0,
                  stop: asyncio.Event | None = None) -> SyncResult:
        started = time.monotonic()
        m = self.machine
        stop = stop or asyncio.Event()
        last_progress = time.monotonic()
        tasks: set[asyncio.Task[Any]] = set()
        wake = asyncio.Event()
        reached = False
        async with new_session(self.limits) as session:

            async def one(q: Any) -> None:
                try:
                    body = await post(session, q.peer, q.body, q.max_bytes, self.limits)
                except _Fail as exc:
                    events = m.fail(q.id, exc.reason, _now_ms())
                else:
                    events = m.receive(q.id, body, _now_ms())
                await self._handle(events)
                nonlocal reached, last_progress
                if any(isinstance(e, AppendSegment | Initialize) for e in events):
                    last_progress = time.monotonic()
                if any(isinstance(e, TipReached) for e in events):
                    reached = True
                wake.set()

            try:
                while not stop.is_set() and not reached and self._abort is None:
                    for q in m.requests(_now_ms()):
                        t = asyncio.create_task(one(q))
                        tasks.add(t)
                        t.add_done_callback(tasks.discard)
                    if time.monotonic() - last_progress > stall_timeout_s:
                        break
                    wake.clear()
                    delay = max(0.01, (m.next_wakeup(_now_ms()) - _now_ms()) / 1000)
                    waiter = asyncio.create_task(wake.wait())
                    stopper = asyncio.create_task(stop.wait())
                    await asyncio.wait({waiter, stopper}, timeout=min(delay, 0.5),
                                       return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    stopper.cancel()
            finally:
                for t in list(tasks):
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        if self._abort is not None:
            raise self._abort
        return self._result(reached, stop.is_set(), started)

    def _result(self, reached: bool, stopped: bool, started: float) -> SyncResult:
        m = self.machine
        tip = m.tip
        peers = m.peers.snapshot()
        if reached:
            reason, message = "reached", f"the verified tip is {tip.number if tip else None}"
        elif stopped:
            reason, message = "stopped", "stopped"
        elif m.sealer_change is not None:
            exc, peer = m.sealer_change
            reason = "sealer_change"
            message = (f"sync stopped: {exc.describe()} (served by {peer}). A light client "
                       "cannot follow a sealer change; provision a new anchor")
            try:
                self.store.raise_alarm("sealer_change", message, at_ms=_now_ms())
            except StoreError as e:
                message += f" (the alarm could not be stored: {e})"
        else:
            why = "; ".join(f"{p['url']}: {p['state']}"
                            f"{' (' + p['last_reason'] + ')' if p['last_reason'] else ''}"
                            for p in peers) or "no peers"
            reason, message = "no_valid_chain", f"no valid chain could be had: {why}"
        alarms = []
        if self.store.initialized or reason == "sealer_change":
            alarms = [{"id": a.id, "kind": a.kind, "detail": a.detail,
                       "raised_at_ms": a.raised_at_ms} for a in self.store.alarms()]
        return SyncResult(reached, reason, message, tip.number if tip else None,
                          tip.block_hash if tip else None, self.appended, peers, alarms,
                          time.monotonic() - started)


async def fetch_inclusion(store: HeaderStore, anchor: FiscoAnchor, peers: Sequence[str],
                          tx_hash: bytes, limits: Limits | None = None
                          ) -> tuple[Inclusion | None, dict[str, str]]:
    """Ask each peer in turn for the transaction, its receipt and its block (with the
    transaction hashes) and verify the inclusion against the **stored** block hash at that
    height. (inclusion or None, {peer: why its answer was not used})."""
    t = limits or Limits()
    g = anchor.group
    hx = "0x" + tx_hash.hex()
    why: dict[str, str] = {}
    async with new_session(t) as session:
        for peer in peers:
            try:
                calls = [jsonrpc.request("getTransaction", [g, "", hx, True], 1),
                         jsonrpc.request("getTransactionReceipt", [g, "", hx, True], 2)]
                got = jsonrpc.parse_batch(await post(session, peer, jsonrpc.batch(calls),
                                                     1024 * 1024, t), [1, 2], 1024 * 1024)
                if any(isinstance(v, jsonrpc.RpcError) for v in got.values()):
                    why[peer] = "not_found"
                    continue
                h, number, tx_proof = decode_tx_proof(got[1])
                receipt = decode_receipt(got[2])
                if h != tx_hash:
                    raise VerificationError("not_in_block", number, "another transaction")
                block_hash = await asyncio.to_thread(store.block_id, number)
                if block_hash is None:
                    block_hash = await _old_block_hash(session, peer, store, g, number, t)
                body = jsonrpc.batch([jsonrpc.request(
                    "getBlockByNumber", [g, "", number, False, True], 3)])[1:-1]
                value = jsonrpc.parse_response(await post(session, peer, body,
                                                          jsonrpc.MAX_BODY, t), 3)
                if isinstance(value, jsonrpc.RpcError):
                    why[peer] = "withhold"
                    continue
                block = decode_header(value)
                return verify_inclusion(block, block_hash, tx_hash, tx_proof, receipt,
                                        anchor.merkle_width), why
            except StoreError as exc:  # below the anchor or above the verified tip
                why[peer] = f"not_verifiable: {exc}"
            except VerificationError as exc:
                why[peer] = exc.rule
            except MalformedError as exc:
                why[peer] = f"malformed_{exc.reason}"
            except LedgerError as exc:  # pragma: no cover
                why[peer] = str(exc)
            except _Fail as exc:
                why[peer] = exc.reason
    return None, why


_RANGE_CHUNK = 500


async def _old_block_hash(session: aiohttp.ClientSession, peer: str, store: HeaderStore,
                          group: str, number: int, t: Limits) -> bytes:
    """The verified hash of a block below the store's window: the blocks between the two
    stored hashes around it, fetched from ``peer``, must hash-link from one to the other."""
    lower, upper = await asyncio.to_thread(store.checkpoints_around, number)
    headers = []
    for start in range(lower[0] + 1, upper[0] + 1, _RANGE_CHUNK):
        ids = list(range(start, min(start + _RANGE_CHUNK, upper[0] + 1)))
        body = jsonrpc.batch([jsonrpc.request("getBlockByNumber", [group, "", n, True, True],
                                              n) for n in ids])
        got = jsonrpc.parse_batch(await post(session, peer, body, jsonrpc.MAX_BODY, t), ids)
        for n in ids:
            if isinstance(got[n], jsonrpc.RpcError):
                raise VerificationError("withhold", n, "a block of a range it claims")
            headers.append(decode_header(got[n]))
    return verify_link_range(lower, upper, headers)[number]
