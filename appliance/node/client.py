"""The sync engine's I/O adapter: aiohttp for the district nodes, the HeaderStore for the result.

Thin on purpose: every decision is the machine's (:mod:`appliance.node.sync`). This module

- sends the machine's requests (several at once, on one aiohttp session) and reads each body
  **within limits while reading**: a declared Content-Length over the request's limit is
  refused before a byte of body is read; otherwise the body is read in chunks and the transfer
  is cut the moment it passes the limit (8 MiB for header batches, less for the smaller
  answers, see :class:`~appliance.node.sync.Request`). A body must also keep coming: after a
  grace period it must average at least ``min_rate_bps`` (a slow trickle is a failure, not a
  wait), no gap may exceed ``idle_timeout_s``, and the whole request has ``total_timeout_s``.
  Compressed bodies are not decompressed (``auto_decompress=False``): the limit is on the
  bytes that travel, and canonical CBOR is never compressed;
- reports each answer or failure to the machine, with the time;
- applies the machine's events: :class:`~appliance.node.sync.Initialize` and
  :class:`~appliance.node.sync.AppendSegment` become one HeaderStore transaction each;
  :class:`~appliance.node.sync.EquivocationFound` becomes evidence on disk with its alarm, in
  one transaction (``HeaderStore.add_evidence(..., alarm=...)``): the alarm blocks new
  authorizations until an operator clears it;
- writes the peer table to ``peers.json`` next to the store (atomically, at most once a
  second) for ``appliance node status``;
- logs one event per line (logger ``appliance.node``).

A failed write to the store stops the run (:class:`SyncAborted`): the machine's view and the
disk must never disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from appliance import wire

from . import sync
from .model import (
    Header,
    TrustAnchor,
    ValidatorSet,
    decode_header,
    decode_trust_anchor,
    decode_validator_set,
)
from .peers import BANNED, CONFLICT, OK
from .store import HeaderStore, StoreError

__all__ = [
    "FetchError", "Limits", "NodeSync", "SyncAborted", "SyncResult", "USER_AGENT", "fetch",
    "load_machine",
]

log = logging.getLogger("appliance.node")

USER_AGENT = "appliance-light-node/1"
READ_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Transport limits of one request (defaults for a LAN of district nodes)."""

    connect_timeout_s: float = 3.0  # TCP connect
    headers_timeout_s: float = 10.0  # from sending to the status line and headers
    total_timeout_s: float = 60.0  # the whole request, body included
    idle_timeout_s: float = 5.0  # longest gap between two pieces of body
    min_rate_bps: int = 64 * 1024  # average body rate required after the grace period
    rate_grace_s: float = 2.0  # from the headers on, before the rate counts
    connections_per_peer: int = 4


class FetchError(Exception):
    """A request failed in transport; ``reason`` is what the machine bans for."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SyncAborted(Exception):
    """The run cannot go on (the store refused a write, or was given another anchor)."""


def new_session(limits: Limits) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit_per_host=limits.connections_per_peer,
                                     enable_cleanup_closed=True)
    timeout = aiohttp.ClientTimeout(total=None, connect=limits.connect_timeout_s,
                                    sock_connect=limits.connect_timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                 headers={"Accept": "application/cbor",
                                          "User-Agent": USER_AGENT})


async def fetch(session: aiohttp.ClientSession, req: sync.Request,
                limits: Limits = Limits()) -> tuple[int, bytes]:
    """GET ``req.url``; (status, body) or FetchError(timeout | slow | oversize | unreachable |
    disconnected | http). The body limit is ``req.max_bytes``, enforced while reading."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(limits.headers_timeout_s):
            resp = await session.get(req.url, allow_redirects=False)
    except TimeoutError:
        raise FetchError("timeout", "no response headers in time") from None
    except aiohttp.ClientConnectorError as exc:
        raise FetchError("unreachable", str(exc)[:120]) from None
    except aiohttp.ClientError as exc:
        raise FetchError("disconnected", f"{type(exc).__name__}: {str(exc)[:100]}") from None
    except (OSError, ValueError) as exc:  # e.g. an invalid URL the table let through
        raise FetchError("unreachable", str(exc)[:120]) from None
    ok = False
    try:
        body = await _read_body(resp, req.max_bytes, limits, started)
        ok = True
        return resp.status, body
    finally:
        if ok:
            resp.release()
        else:
            resp.close()  # drop the connection: never drain what an abusive peer sends


async def _read_body(resp: aiohttp.ClientResponse, limit: int, limits: Limits,
                     started: float) -> bytes:
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise FetchError("oversize", f"Content-Length {declared} > {limit}")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    deadline = started + limits.total_timeout_s
    buf = bytearray()
    while True:
        now = loop.time()
        # When the bytes received so far fall below the required average.
        rate_due = t0 + limits.rate_grace_s + len(buf) / limits.min_rate_bps
        wait = min(limits.idle_timeout_s, deadline - now, rate_due - now)
        try:
            if wait <= 0:
                raise TimeoutError
            async with asyncio.timeout(wait):
                chunk = await resp.content.readany()
        except TimeoutError:
            now = loop.time()
            if now >= deadline:
                raise FetchError("timeout", f"body not complete in {limits.total_timeout_s} s"
                                 ) from None
            if now >= rate_due:
                raise FetchError("slow", f"{len(buf)} bytes in {now - t0:.1f} s, below "
                                 f"{limits.min_rate_bps} B/s") from None
            raise FetchError("timeout", f"no body byte for {limits.idle_timeout_s} s") from None
        except aiohttp.ClientError as exc:
            raise FetchError("disconnected", f"{type(exc).__name__}: {str(exc)[:100]}"
                             ) from None
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise FetchError("oversize", f"body passed {limit} bytes")
    if declared is not None and len(buf) != declared:
        raise FetchError("disconnected", f"body of {len(buf)} bytes, declared {declared}")
    return bytes(buf)


# --- the run -----------------------------------------------------------------------------------


@dataclass
class SyncResult:
    """How a run ended (the CLI prints it as JSON)."""

    ok: bool
    reason: str  # reached | stopped | no_valid_chain
    message: str
    height: int | None
    tip_id: str | None
    target: int | None
    appended: int
    alarms: list[dict[str, Any]]
    peers: list[dict[str, Any]]
    elapsed_s: float

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, "message": self.message,
                "height": self.height, "tip_id": self.tip_id, "target": self.target,
                "appended": self.appended, "alarms": self.alarms, "peers": self.peers,
                "elapsed_s": round(self.elapsed_s, 3)}


def load_machine(store: HeaderStore, anchor: TrustAnchor, anchor_bytes: bytes,
                 config: sync.SyncConfig) -> sync.SyncMachine:
    """A machine that resumes from the store's tip (or starts from the anchor)."""

    def lookup_header(height: int) -> Header | None:
        raw = store.header(height)
        return None if raw is None else decode_header(raw)

    def lookup_set(set_hash: bytes) -> ValidatorSet | None:
        raw = store.validator_set(set_hash)
        return None if raw is None else decode_validator_set(raw)

    if not store.initialized:
        return sync.SyncMachine(anchor, config, lookup_header=lookup_header,
                                lookup_set=lookup_set)
    if store.anchor != anchor_bytes:
        raise SyncAborted(f"{store.path} holds the chain of another trust anchor "
                          f"({store.chain_id!r} at height {store.anchor_height}); use another "
                          "--state directory, or move this one aside to start again")
    tip = store.tip()
    header = decode_header(tip.header)
    next_raw = store.validator_set(tip.next_set_hash)
    if next_raw is None:
        raise SyncAborted(f"{store.path}: the validator set after the tip is missing")
    next_set = decode_validator_set(next_raw)
    sets = [next_set]
    signing = store.validator_set(header.validators_hash)
    if signing is not None:
        sets.append(decode_validator_set(signing))
    return sync.SyncMachine(anchor, config, tip=header, next_set=next_set, sets=sets,
                            lookup_header=lookup_header, lookup_set=lookup_set)


class NodeSync:
    """Runs a :class:`~appliance.node.sync.SyncMachine` against the network and a store.

    ``anchor_bytes`` is the provisioned trust anchor (canonical CBOR, as in the trust file);
    the store must be empty or initialized with the same anchor. ``peers_file`` (default:
    ``peers.json`` next to the store) receives the peer table for ``appliance node status``.
    """

    def __init__(self, store: HeaderStore, anchor_bytes: bytes,
                 config: sync.SyncConfig | None = None, *, limits: Limits | None = None,
                 peers_file: str | os.PathLike[str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.anchor_bytes = anchor_bytes
        self.anchor = decode_trust_anchor(anchor_bytes)
        self.config = config or sync.SyncConfig()
        self.limits = limits or Limits()
        self.machine = load_machine(store, self.anchor, anchor_bytes, self.config)
        tip = self.machine.tip
        if tip is None:
            log.info("starting from the trust anchor: chain %s, height %d, block %s",
                     self.anchor.chain_id, self.anchor.height, self.anchor.block_id.hex())
        else:
            log.info("resuming from the stored tip %d %s", tip.height, tip.block_id.hex())
        self.peers_file = Path(peers_file) if peers_file is not None else \
            Path(store.path).with_name("peers.json")
        self._clock = clock
        self._wake: asyncio.Event | None = None
        self._tx_waiters: dict[bytes, list[asyncio.Future]] = {}
        self._reached: sync.TipReached | None = None
        self._last_progress = 0.0
        self._peers_written = 0.0
        self._peers_dirty = True
        self.equivocations: list[sync.EquivocationFound] = []

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- peers and lookups (callable from the same event loop, e.g. by discovery) -----------

    def add_peer(self, url: str, source: str = "static") -> str:
        url = self.machine.add_peer(url, source)
        self._peers_dirty = True
        self._poke()
        return url

    def remove_peer(self, url: str, source: str | None = None) -> None:
        self.machine.remove_peer(url, source)
        self._peers_dirty = True
        self._poke()

    async def fetch_tx(self, tx_id: bytes) -> sync.TxVerified | sync.TxNotFound:
        """A transaction with its proof checked against a stored header, or TxNotFound.
        Needs :meth:`run` going in the same loop."""
        fut = asyncio.get_running_loop().create_future()
        self._tx_waiters.setdefault(tx_id, []).append(fut)
        self.machine.fetch_tx(tx_id)
        self._poke()
        return await fut

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, *, stop_at_tip: bool = True, stall_timeout_s: float | None = 60.0,
                  stop: asyncio.Event | None = None,
                  session: aiohttp.ClientSession | None = None) -> SyncResult:
        """Sync until the tip is reached (``stop_at_tip``), ``stop`` is set, or nothing was
        stored for ``stall_timeout_s`` (then ``ok`` is False: no valid chain could be had)."""
        self._wake = asyncio.Event()
        started = self._clock()
        self._last_progress = started
        own = session is None
        session = session or new_session(self.limits)
        tasks: dict[asyncio.Task, sync.Request] = {}
        result: SyncResult | None = None
        try:
            while result is None:
                now = self.now_ms()
                for req in self.machine.requests(now):
                    log.debug("GET %s", req.url)
                    tasks[asyncio.create_task(fetch(session, req, self.limits))] = req
                await self._apply(self.machine.events())
                self._write_peers()
                if stop is not None and stop.is_set():
                    result = self._result(True, "stopped", "stopped on request", started)
                    break
                if self._reached is not None and stop_at_tip:
                    r = self._reached
                    result = self._result(True, "reached",
                                          f"verified tip {r.height} reached target {r.target}",
                                          started)
                    break
                if stall_timeout_s is not None and \
                        self._clock() - self._last_progress > stall_timeout_s:
                    result = self._result(False, "no_valid_chain",
                                          self._stall_message(stall_timeout_s), started)
                    break
                wake = self.machine.next_wakeup(now)
                timeout = 1.0 if wake is None else max(0.0, min(1.0, (wake - now) / 1000))
                self._wake.clear()
                waiter = asyncio.create_task(self._wake.wait())
                pending = {*tasks, waiter}
                if stop is not None:
                    pending.add(stopper := asyncio.create_task(stop.wait()))
                done, _ = await asyncio.wait(pending, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if stop is not None:
                    stopper.cancel()
                for task in done:
                    req = tasks.pop(task, None)
                    if req is None:
                        continue
                    try:
                        status, body = task.result()
                    except FetchError as exc:
                        events = self.machine.fail(req.id, exc.reason, self.now_ms(),
                                                   detail=f"{req.path}: {exc.detail}")
                    else:
                        events = self.machine.receive(req.id, status, body, self.now_ms())
                    await self._apply(events)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if own:
                await session.close()
            self._write_peers(force=True)
            for futs in self._tx_waiters.values():
                for fut in futs:
                    if not fut.done():
                        fut.cancel()
            self._tx_waiters.clear()
        return result

    async def _apply(self, events: list[sync.Event]) -> None:
        for ev in events:
            if isinstance(ev, sync.AppendSegment):
                rows = [(h.height, h.block_id, h.encoded) for h in ev.headers]
                sets = [(s.hash, s.encoded) for s in ev.sets]
                await self._store(self.store.append, rows, ev.next_set_hash, sets)
                self._last_progress = self._clock()
                log.info("stored headers %d..%d from %s%s", rows[0][0], rows[-1][0], ev.peer,
                         f", vouched for by {ev.confirmed_by}" if ev.confirmed_by else "")
            elif isinstance(ev, sync.Initialize):
                h = ev.header
                await self._store(self.store.initialize, self.anchor.chain_id,
                                  self.anchor_bytes, h.height, h.block_id, h.encoded,
                                  ev.next_set.hash, [(s.hash, s.encoded) for s in ev.sets])
                self._last_progress = self._clock()
                log.info("trust anchor header %d %s verified and stored", h.height,
                         h.block_id.hex())
            elif isinstance(ev, sync.BanPeer):
                self._peers_dirty = True
                log.warning("peer %s banned: %s (strike %d, until %d ms)%s", ev.peer,
                            ev.reason, ev.strikes, ev.until_ms,
                            f": {ev.detail}" if ev.detail else "")
            elif isinstance(ev, sync.PeerInfo):
                self._peers_dirty = True
                log.debug("peer %s claims height %d", ev.peer, ev.height)
            elif isinstance(ev, sync.EquivocationFound):
                await self._keep_evidence(ev)
            elif isinstance(ev, sync.TipReached):
                self._reached = ev
                self._last_progress = self._clock()
                log.info("tip %d %s reached (target %d)", ev.height, ev.block_id.hex(),
                         ev.target)
            elif isinstance(ev, sync.TxVerified | sync.TxNotFound):
                for fut in self._tx_waiters.pop(ev.tx_id, []):
                    if not fut.done():
                        fut.set_result(ev)

    async def _keep_evidence(self, ev: sync.EquivocationFound) -> None:
        e = ev.evidence
        detail = (f"equivocation at height {e.height}: block {e.header_a.block_id.hex()[:16]} "
                  f"(ours, from {ev.ours_from or 'our store'}) and "
                  f"{e.header_b.block_id.hex()[:16]} (from {ev.theirs_from}) both carry valid "
                  f"commits; validators {list(e.double_signers)} signed both "
                  f"(power {e.double_signed_power}). New authorizations are blocked until an "
                  "operator clears the alarm.")
        blob = wire.encode(e.to_obj())
        await self._store(self.store.add_evidence, e.height, "equivocation", blob,
                          at_ms=self.now_ms(), alarm=detail)
        self.equivocations.append(ev)
        self._peers_dirty = True
        log.error("ALARM %s", detail)

    async def _store(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except StoreError as exc:
            raise SyncAborted(f"the header store refused a write: {exc}") from exc

    # -- reporting --------------------------------------------------------------------------

    def _result(self, ok: bool, reason: str, message: str, started: float) -> SyncResult:
        tip = self.machine.tip
        alarms = [{"id": a.id, "kind": a.kind, "detail": a.detail,
                   "raised_at_ms": a.raised_at_ms} for a in self.store.alarms()]
        return SyncResult(ok, reason, message, None if tip is None else tip.height,
                          None if tip is None else tip.block_id.hex(), self.machine.target,
                          self.machine.appended, alarms, self.machine.peers.snapshot(),
                          self._clock() - started)

    def _stall_message(self, waited: float) -> str:
        peers = list(self.machine.peers)
        tip = self.machine.tip
        have = "nothing verified yet" if tip is None else f"verified tip {tip.height}"
        if not peers:
            return f"no valid chain: no peers to ask ({have}); give --peer URL or --discover"
        usable = [p for p in peers if p.state == OK]
        # Every peer that was banned or conflicts, whatever its state now (a ban may have run
        # out and the peer be on retry).
        bad = [f"{p.url} ({p.state if p.state in (BANNED, CONFLICT) else 'banned before'}: "
               f"{p.last_reason}, {p.bans} ban{'s' if p.bans != 1 else ''})"
               for p in peers if p.last_reason is not None]
        until = self.config.until_height
        if usable and until is not None:
            best = max((p.height or 0) for p in usable)
            if best < until:
                return (f"no valid chain up to height {until}: the peers' best claim is {best} "
                        f"({have}) after {waited:.0f} s")
        msg = f"no valid chain could be had in {waited:.0f} s ({have})"
        if bad:
            msg += "; peers that served invalid data or failed: " + ", ".join(bad)
        if not usable:
            msg += "; no peer is usable now"
        return msg

    def _write_peers(self, force: bool = False) -> None:
        now = self._clock()
        if not force and (not self._peers_dirty or now - self._peers_written < 1.0):
            return
        self._peers_written, self._peers_dirty = now, False
        doc = {"updated_at_ms": int(now * 1000), "pid": os.getpid(),
               "target": self.machine.target, "peers": self.machine.peers.snapshot()}
        tmp = self.peers_file.with_name(self.peers_file.name + ".tmp")
        with contextlib.suppress(OSError):
            with open(tmp, "w") as f:
                json.dump(doc, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.peers_file)
