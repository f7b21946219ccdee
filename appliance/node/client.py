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
- logs one event per line (logger ``appliance.node``);
- transactions (:meth:`NodeSync.submit_tx`, :meth:`NodeSync.wait_for_inclusion`,
  :meth:`NodeSync.get_inclusion`, :meth:`NodeSync.lookup`): ``POST /v1/tx``, ``/v1/wait`` and
  ``/v1/lookup`` are sent from here, with the same limits, and judged by the pure helpers of
  :mod:`~appliance.node.sync`; every inclusion is the machine's verdict (a proof against a
  verified header). A peer whose answer is wrong is banned through the machine.

A failed write to the store stops the run (:class:`SyncAborted`): the machine's view and the
disk must never disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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

from . import sync, verify
from .errors import LedgerError, MalformedError, VerificationError
from .model import (
    MAX_SIGNED_TX_BYTES,
    Header,
    SignedTx,
    TrustAnchor,
    ValidatorSet,
    decode_header,
    decode_trust_anchor,
    decode_validator_set,
)
from .peers import BANNED, CONFLICT, DEFAULT_MAX_DISCOVERED, NEW, OK, PeerTableFull
from .store import HeaderStore, StoreError
from .sync import VerifiedInclusion

__all__ = [
    "ANSWERED", "DroppedHit", "FAILED", "FetchError", "InclusionTimeout", "Limits",
    "LookupResult", "NOT_ASKED", "NoPeers", "NodeSync", "NotFound", "NotVerifiable",
    "PeerAnswer", "SyncAborted", "SyncResult", "TxError", "TxRejected", "USER_AGENT",
    "VerifiedInclusion", "fetch", "load_machine",
]

log = logging.getLogger("appliance.node")

USER_AGENT = "appliance-light-node/1"
READ_CHUNK = 64 * 1024
CBOR = "application/cbor"
#: Longest single ``/v1/wait`` (the protocol allows 30 s); shorter ones keep the loop lively.
WAIT_POLL_MS = 10_000
#: A transaction submitted and not yet included is offered again to the usable peers that have
#: not accepted it, this often (a node that accepted it may not relay it, or may drop it).
RESUBMIT_AFTER_S = 5.0
#: Least time between two rounds of a wait, so a peer that answers /v1/wait at once with a
#: height it does not have cannot make the client spin.
MIN_ROUND_S = 0.2
LOOKUP_CONCURRENCY = 8


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


class TxError(Exception):
    """A transaction could not be submitted, found or verified; ``code`` says which, stably
    (the CLI prints it as ``error``)."""

    code = "tx_error"

    def __init__(self, message: str, *, code: str | None = None, tx_id: bytes | None = None,
                 peer: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.tx_id = tx_id
        self.peer = peer


class TxRejected(TxError):
    """The transaction itself is refused: ``code`` is ``bad_tx``, ``bad_signature``,
    ``unknown_sender``, ``bad_reference`` or ``duplicate_matter`` (§7), from the district node
    ``peer``, or found here before sending it (``peer`` None: its signature, sender or
    chain_id is wrong, or it is too large)."""


class NoPeers(TxError):
    """No district node could be asked, or none gave an answer (all unreachable, banned...).
    From a lookup, ``answers`` says what became of each peer (:class:`PeerAnswer`)."""

    code = "no_peers"
    answers: tuple[PeerAnswer, ...] = ()


class NotFound(TxError):
    """Every peer asked says the transaction is not in a block it has."""

    code = "not_found"


class NotVerifiable(TxError):
    """A peer served the transaction, but no answer verified (a bad proof, a header that could
    not be had): it is not accepted. The peers at fault are banned."""

    code = "not_verifiable"


class InclusionTimeout(TxError):
    """The transaction was not in a block any peer could prove before the time ran out."""

    code = "timeout"


@dataclass(frozen=True, slots=True)
class DroppedHit:
    """A lookup hit that was not kept: ``reason`` (``not_found``, ``not_verifiable``,
    ``lookup_type``, ``lookup_digest``), and the peers that listed it (banned for it)."""

    tx_id: bytes
    reason: str
    peers: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"tx_id": self.tx_id.hex(), "reason": self.reason, "peers": list(self.peers)}


#: What became of a peer in a lookup (:class:`PeerAnswer`).
ANSWERED, FAILED, NOT_ASKED = "answered", "failed", "not_asked"


@dataclass(frozen=True, slots=True)
class PeerAnswer:
    """One peer of the table in a lookup: ``answered`` (its list was used), ``failed`` (asked,
    no usable answer: ``reason`` says why) or ``not_asked`` (not usable then: ``reason`` is its
    state, and why it is in that state)."""

    url: str
    outcome: str
    reason: str | None = None

    @property
    def asked(self) -> bool:
        return self.outcome != NOT_ASKED

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "outcome": self.outcome, "asked": self.asked,
                "reason": self.reason}


@dataclass(frozen=True, slots=True)
class LookupResult:
    """What :meth:`NodeSync.lookup_detailed` found: the verified ``hits`` in chain order, the
    ``dropped`` ones, the peers whose lookup answer was used, and what became of every peer of
    the table (``answers``: configured first, then discovered). An empty ``hits`` means "not on
    chain" only as far as the ``answered`` peers know."""

    digest: bytes
    hits: tuple[VerifiedInclusion, ...]
    dropped: tuple[DroppedHit, ...]
    peers: tuple[str, ...]
    answers: tuple[PeerAnswer, ...] = ()


def new_session(limits: Limits) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit_per_host=limits.connections_per_peer,
                                     enable_cleanup_closed=True)
    timeout = aiohttp.ClientTimeout(total=None, connect=limits.connect_timeout_s,
                                    sock_connect=limits.connect_timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                 headers={"Accept": "application/cbor",
                                          "User-Agent": USER_AGENT})


async def fetch(session: aiohttp.ClientSession, req: sync.Request,
                limits: Limits = Limits(), *, data: bytes | None = None) -> tuple[int, bytes]:
    """GET ``req.url`` (POST ``data`` as ``application/cbor`` when given); (status, body) or
    FetchError(timeout | slow | oversize | unreachable | disconnected | http). The body limit
    of the answer is ``req.max_bytes``, enforced while reading."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(limits.headers_timeout_s):
            if data is None:
                resp = await session.get(req.url, allow_redirects=False)
            else:
                resp = await session.post(req.url, data=data, allow_redirects=False,
                                          headers={"Content-Type": CBOR})
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
        body = await read_body(resp, req.max_bytes, limits, started)
        ok = True
        return resp.status, body
    finally:
        if ok:
            resp.release()
        else:
            resp.close()  # drop the connection: never drain what an abusive peer sends


async def read_body(resp: aiohttp.ClientResponse, limit: int, limits: Limits,
                    started: float) -> bytes:
    """A peer's response body under ``limits`` (the native and the FISCO light node): the
    declared and the streamed size against ``limit``, the total time from ``started``, the
    gap between chunks, and the body rate from the headers' arrival. :class:`FetchError`
    names what was broken."""
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


def _urls(urls: tuple[str, ...] | list[str]) -> str:
    return ", ".join(urls) if urls else "no peer"


def _accumulate(prev: sync.TxNotFound | None, res: sync.TxNotFound) -> sync.TxNotFound:
    """What the rounds of a wait found together: a peer that served the transaction with a
    proof that failed stays on record after it is banned (and asked no more)."""
    if prev is None:
        return res
    return dataclasses.replace(
        res, reason=res.reason if res.served_by or not prev.served_by else prev.reason,
        absent=tuple(dict.fromkeys(prev.absent + res.absent)),
        served_by=tuple(dict.fromkeys(prev.served_by + res.served_by)))


def load_machine(store: HeaderStore, anchor: TrustAnchor, anchor_bytes: bytes,
                 config: sync.SyncConfig) -> sync.SyncMachine:
    """A machine that resumes from the store's tip (or starts from the anchor)."""

    def lookup_header(height: int) -> Header | None:
        raw = store.header(height)
        return None if raw is None else decode_header(raw)

    def lookup_set(set_hash: bytes) -> ValidatorSet | None:
        raw = store.validator_set(set_hash)
        return None if raw is None else decode_validator_set(raw)

    def lookup_checkpoints(height: int) -> tuple[tuple[int, bytes], tuple[int, bytes]] | None:
        try:
            return store.checkpoints_around(height)
        except StoreError:
            return None

    if not store.initialized:
        return sync.SyncMachine(anchor, config, lookup_header=lookup_header,
                                lookup_set=lookup_set, lookup_checkpoints=lookup_checkpoints)
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
                            lookup_header=lookup_header, lookup_set=lookup_set,
                            lookup_checkpoints=lookup_checkpoints)


class NodeSync:
    """Runs a :class:`~appliance.node.sync.SyncMachine` against the network and a store.

    ``anchor_bytes`` is the provisioned trust anchor (canonical CBOR, as in the trust file);
    the store must be empty or initialized with the same anchor. ``peers_file`` (default:
    ``peers.json`` next to the store) receives the peer table for ``appliance node status``.
    """

    def __init__(self, store: HeaderStore, anchor_bytes: bytes,
                 config: sync.SyncConfig | None = None, *, limits: Limits | None = None,
                 peers_file: str | os.PathLike[str] | None = None,
                 clock: Callable[[], float] = time.time,
                 max_discovered: int = DEFAULT_MAX_DISCOVERED) -> None:
        self.store = store
        self.anchor_bytes = anchor_bytes
        self.anchor = decode_trust_anchor(anchor_bytes)
        self.config = config or sync.SyncConfig()
        self.limits = limits or Limits()
        self.machine = load_machine(store, self.anchor, anchor_bytes, self.config)
        self.machine.peers.max_discovered = max_discovered
        self._refused: dict[str, None] = {}  # discovered URLs refused while full (logged once)
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
        self._session: aiohttp.ClientSession | None = None
        self._tx_waiters: dict[bytes, list[asyncio.Future]] = {}
        # Transactions submitted and not yet seen included, with the peers that accepted them
        # (offered again to the others while waiting; bounded: the oldest are forgotten).
        self._submitted: dict[bytes, tuple[SignedTx, set[str]]] = {}
        self.resubmit_after_s = RESUBMIT_AFTER_S
        self._reached: sync.TipReached | None = None
        self._last_progress = 0.0
        self._peers_written = 0.0
        self._peers_dirty = True
        self.equivocations: list[sync.EquivocationFound] = []

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- peers and lookups (callable from the same event loop, e.g. by discovery) -----------

    def add_peer(self, url: str, source: str = "static") -> str | None:
        """Add a peer, or a source to a known one; its normalised URL. ValueError for a bad
        URL. A discovered peer (source ``mdns:...``) over the table's bound takes the place of
        the worst failing discovered peer, which is dropped; when none is failing it is refused
        (None): a new discovery never displaces a working peer. Discovery offers what it found
        again from time to time, so a refused node gets in once a place frees up."""
        known = self.machine.peers.get(url)
        if known is not None and source in known.sources:
            return known.url  # nothing new (discovery offers its instances again)
        try:
            url = self.machine.add_peer(url, source)
        except PeerTableFull as full:
            victim = self.machine.peers.eviction_candidate()
            if victim is None:
                if full.url not in self._refused:
                    log.warning("peer %s (%s) not added: %s, none of them failing", full.url,
                                source, f"the table holds {full.limit} discovered peers")
                    self._refused[full.url] = None
                    while len(self._refused) > 4 * full.limit:
                        del self._refused[next(iter(self._refused))]
                return None
            log.warning("peer %s dropped for %s (%s): the table holds %d discovered peers and "
                        "it is failing (%s: %s, %d strikes)", victim.url, full.url, source,
                        full.limit, victim.state, victim.last_reason, victim.strikes)
            self.machine.remove_peer(victim.url)
            url = self.machine.add_peer(url, source)
        self._refused.pop(url, None)
        self._peers_dirty = True
        self._poke()
        return url

    @property
    def refused(self) -> tuple[str, ...]:
        """Discovered URLs refused while the table was full and not admitted since."""
        return tuple(self._refused)

    def remove_peer(self, url: str, source: str | None = None) -> None:
        self.machine.remove_peer(url, source)
        self._peers_dirty = True
        self._poke()

    async def fetch_tx(self, tx_id: bytes) -> sync.TxVerified | sync.TxNotFound:
        """A transaction with its proof checked against a stored header, or TxNotFound.
        Needs :meth:`run` going in the same loop. Cancelling it forgets the query."""
        fut = asyncio.get_running_loop().create_future()
        self._tx_waiters.setdefault(tx_id, []).append(fut)
        self.machine.fetch_tx(tx_id)
        self._poke()
        try:
            return await fut
        except asyncio.CancelledError:
            waiters = self._tx_waiters.get(tx_id, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._tx_waiters.pop(tx_id, None)
                self.machine.cancel_tx(tx_id)
            raise

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- transactions (all need run() going in the same loop) -------------------------------

    async def submit_tx(self, tx: SignedTx, *, timeout_s: float = 30.0) -> bytes:
        """Submit ``tx`` (``POST /v1/tx``) to the peers in turn until one accepts it; its tx_id.

        Checked here first (chain_id, sender, signature, the 64 KiB limit): what the chain
        would refuse is never sent (:class:`TxRejected`, ``peer`` None). A node's 400
        ``bad_tx`` / ``bad_signature`` / ``unknown_sender`` / ``bad_reference`` /
        ``duplicate_matter`` is :class:`TxRejected` with that
        code (every honest node would say the same); 400 ``duplicate`` means it is already
        there: submitted. A peer that fails in transport or answers anything else is banned
        and the next one asked; 503 (busy) is no fault. Only usable peers are asked (they
        answered ``/v1/info`` for our chain), in URL order; :class:`NoPeers` when none accepted
        it within ``timeout_s``.
        Accepting is only a node's word: :meth:`wait_for_inclusion` is the proof.
        """
        self._check_own(tx)
        body = wire.encode(tx.to_obj())
        tx_id = tx.tx_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        failures: dict[str, str] = {}
        while True:
            for url in self._submit_peers():
                left = deadline - loop.time()
                if left <= 0:
                    break
                verdict = await self._post_tx(url, body, tx_id, left)
                if verdict.outcome == sync.ACCEPTED:
                    self._remember_submitted(tx, url)
                    log.info("transaction %s accepted by %s%s", tx_id.hex(), url,
                             " (already there)" if verdict.code == "duplicate" else "")
                    return tx_id
                if verdict.outcome == sync.REJECTED:
                    raise TxRejected(
                        f"{url} refused transaction {tx_id.hex()}: {verdict.code}"
                        + (f" ({verdict.message})" if verdict.message else ""),
                        code=verdict.code, tx_id=tx_id, peer=url)
                failures[url] = verdict.code
            left = deadline - loop.time()
            if left <= 0:
                raise NoPeers(self._peers_message(
                    f"no district node accepted transaction {tx_id.hex()} in {timeout_s:g} s",
                    failures), tx_id=tx_id)
            await self._pause(left)

    async def wait_for_inclusion(self, tx_id: bytes, *, timeout_s: float) -> VerifiedInclusion:
        """Wait until ``tx_id`` is in a block, proven against the verified store.

        Each round asks the peers for it (:meth:`fetch_tx`: the proof is checked against a
        stored, verified header; a block above the stored tip is synced first, one below the
        store's window is checked through checkpoints). While no peer has it in a block, the
        round ends with ``GET /v1/wait?height=H`` on the usable peers (H one above the best
        height known); when the tip grows the machine asks /v1/info again, so the sync follows.
        A transaction submitted through this object is offered again every
        ``resubmit_after_s`` (:data:`RESUBMIT_AFTER_S`) to the usable peers that have not
        accepted it (one that did may not relay it); the long poll never outlasts that.

        Raises, when ``timeout_s`` has passed: :class:`NotVerifiable` (a peer served it and
        nothing verified: it is not accepted, the peer is banned), :class:`NoPeers` (no peer
        answered) or :class:`InclusionTimeout`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last: sync.TxNotFound | None = None
        offered = loop.time()
        while True:
            started = loop.time()
            res = await self._fetch_before(tx_id, deadline, last, timeout_s)
            if isinstance(res, sync.TxVerified):
                self._submitted.pop(tx_id, None)
                return res.inclusion
            last = _accumulate(last, res)
            mine = tx_id in self._submitted
            if mine and loop.time() - offered >= self.resubmit_after_s:
                offered = loop.time()
                await self._offer_again(tx_id, deadline)
            # A node that accepted it may make no block of it: the long poll must not outlast
            # the next offer to the other peers.
            await self._wait_for_growth(
                min(deadline, offered + self.resubmit_after_s) if mine else deadline)
            pause = min(MIN_ROUND_S - (loop.time() - started), deadline - loop.time())
            if pause > 0:
                await asyncio.sleep(pause)

    async def _fetch_before(self, tx_id: bytes, deadline: float,
                            last: sync.TxNotFound | None, timeout_s: float
                            ) -> sync.TxVerified | sync.TxNotFound:
        """:meth:`fetch_tx` cut at ``deadline`` (loop time); the timeout error otherwise."""
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise self._timeout_error(tx_id, last, timeout_s)
        try:
            async with asyncio.timeout(left):
                return await self.fetch_tx(tx_id)
        except TimeoutError:
            raise self._timeout_error(tx_id, last, timeout_s) from None

    async def get_inclusion(self, tx_id: bytes, *, timeout_s: float = 30.0
                            ) -> VerifiedInclusion:
        """``tx_id`` as it is now: verified inclusion, or :class:`NotFound` (every peer that
        answered says it is in no block), :class:`NotVerifiable` (served, nothing verified),
        :class:`NoPeers` (no peer answered within ``timeout_s``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last: sync.TxNotFound | None = None
        while True:
            res = await self._fetch_before(tx_id, deadline, last, timeout_s)
            if isinstance(res, sync.TxVerified):
                return res.inclusion
            if res.served_by:
                raise NotVerifiable(self._not_verifiable_message(tx_id, res), tx_id=tx_id)
            if res.absent:
                raise NotFound(f"transaction {tx_id.hex()} is not in a block of "
                               f"{_urls(res.absent)}", tx_id=tx_id)
            last = res  # nobody answered yet: a ban may run out, discovery may find a node
            await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))

    async def lookup(self, digest: bytes, *, timeout_s: float = 30.0
                     ) -> list[VerifiedInclusion]:
        """The ``evidence.deposit`` transactions of document ``digest``, each verified, in
        chain order; an empty list when it is not on chain. See :meth:`lookup_detailed`."""
        return list((await self.lookup_detailed(digest, timeout_s=timeout_s)).hits)

    async def lookup_detailed(self, digest: bytes, *, timeout_s: float = 30.0) -> LookupResult:
        """``GET /v1/lookup/{digest}`` on every usable peer (the union of their answers: one
        node alone could leave a hit out), then each listed tx_id through
        :meth:`get_inclusion`. A hit is kept only if it verifies and is an
        ``evidence.deposit`` whose ``data.digest`` is ``digest``; otherwise it is dropped and
        the peers that listed it are banned (``lookup_not_found``,
        ``lookup_not_verifiable``, ``lookup_type``, ``lookup_digest``). :class:`NoPeers` if no
        peer answered the lookup, or a hit could not be checked for want of peers (no answer
        is better than an incomplete one). The result says, for every peer of the table,
        whether it answered, failed (and why) or was not asked (and why)."""
        if type(digest) is not bytes or len(digest) != 32:
            raise ValueError("digest must be 32 bytes")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        listers: dict[bytes, list[str]] = {}
        answered: list[str] = []
        failed: dict[str, str] = {}
        while True:
            peers = [p.url for p in self.machine.peers.usable()]
            if peers:
                found = await asyncio.gather(*(self._lookup_on(url, digest, deadline)
                                               for url in peers))
                for url, (ids, why) in zip(peers, found, strict=True):
                    if ids is None:
                        failed[url] = why
                        continue
                    failed.pop(url, None)
                    answered.append(url)
                    for tx_id in ids:
                        listers.setdefault(tx_id, []).append(url)
                if answered:
                    break
            left = deadline - loop.time()
            if left <= 0:
                exc = NoPeers(self._peers_message(
                    f"no peer answered the lookup of {digest.hex()} in {timeout_s:g} s",
                    failed))
                exc.answers = self._lookup_answers([], failed)
                raise exc
            await self._pause(left)
        answers = self._lookup_answers(answered, failed)
        sem = asyncio.Semaphore(LOOKUP_CONCURRENCY)

        async def check(tx_id: bytes) -> VerifiedInclusion | DroppedHit:
            async with sem:
                try:
                    inc = await self.get_inclusion(
                        tx_id, timeout_s=max(0.0, deadline - loop.time()))
                except (NotFound, NotVerifiable) as exc:
                    reason = f"lookup_{exc.code}"
                else:
                    bad = sync.check_lookup_hit(inc.tx, digest)
                    if bad is None:
                        return inc
                    reason = bad
            peers = tuple(listers[tx_id])
            for url in peers:
                self._ban(url, reason, f"it listed {tx_id.hex()[:16]} for digest "
                          f"{digest.hex()[:16]}")
            log.warning("lookup %s: hit %s dropped (%s), listed by %s", digest.hex(),
                        tx_id.hex(), reason, ", ".join(peers))
            return DroppedHit(tx_id, reason, peers)

        tasks = [asyncio.create_task(check(tx_id)) for tx_id in listers]
        try:
            results = [await t for t in tasks]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        hits = sorted((r for r in results if isinstance(r, VerifiedInclusion)),
                      key=lambda i: (i.height, i.leaf_index))
        return LookupResult(digest, tuple(hits),
                            tuple(r for r in results if isinstance(r, DroppedHit)),
                            tuple(answered), answers)

    def _lookup_answers(self, answered: list[str], failed: dict[str, str]
                        ) -> tuple[PeerAnswer, ...]:
        """Every peer of the table as the lookup left it (before hits were checked: a peer
        banned for a bad hit still answered), and any peer asked that has left it since."""
        out = []
        for p in self.machine.peers:
            if p.url in answered:
                out.append(PeerAnswer(p.url, ANSWERED))
            elif p.url in failed:
                out.append(PeerAnswer(p.url, FAILED, failed[p.url]))
            else:
                why = {NEW: "its /v1/info is pending", BANNED: f"banned: {p.last_reason}",
                       CONFLICT: f"conflict: {p.last_reason}"}.get(p.state, p.state)
                out.append(PeerAnswer(p.url, NOT_ASKED, why))
        listed = {a.url for a in out}
        out += [PeerAnswer(u, ANSWERED) for u in answered if u not in listed]
        out += [PeerAnswer(u, FAILED, why) for u, why in failed.items() if u not in listed]
        return tuple(out)

    # -- transactions: helpers --------------------------------------------------------------

    def _check_own(self, tx: SignedTx) -> None:
        try:
            verify.verify_tx(tx, self.anchor.chain_id)
            size = len(wire.encode(tx.to_obj()))
        except LedgerError as exc:
            code = "bad_signature" if isinstance(exc, VerificationError) \
                and exc.rule == "tx_signature" else "bad_tx"
            raise TxRejected(f"{code}: transaction {tx.tx_id.hex()} not sent: {exc}",
                             code=code, tx_id=tx.tx_id) from None
        if size > MAX_SIGNED_TX_BYTES:
            raise TxRejected(f"bad_tx: transaction {tx.tx_id.hex()} not sent: {size} bytes > "
                             f"{MAX_SIGNED_TX_BYTES}", code="bad_tx", tx_id=tx.tx_id)

    def _submit_peers(self) -> list[str]:
        # Only peers that answered /v1/info for our chain: a node of another chain would
        # answer bad_tx, which is not a verdict on the transaction.
        return [p.url for p in self.machine.peers.usable()]

    def _remember_submitted(self, tx: SignedTx, url: str) -> None:
        entry = self._submitted.pop(tx.tx_id, None)
        given = entry[1] if entry is not None else set()
        given.add(url)
        self._submitted[tx.tx_id] = (tx, given)
        while len(self._submitted) > 256:
            del self._submitted[next(iter(self._submitted))]

    async def _send(self, req: sync.Request, *, data: bytes | None = None,
                    limits: Limits | None = None) -> tuple[int, bytes]:
        for _ in range(3):  # run() may have been created and not started yet
            if self._session is not None:
                break
            await asyncio.sleep(0)
        session = self._session
        if session is None or session.closed:
            raise TxError("the light node is not running (NodeSync.run)", code="stopped")
        try:
            return await fetch(session, req, limits or self.limits, data=data)
        except RuntimeError as exc:  # the session closed under us: run() ended
            raise TxError(f"the light node stopped: {exc}", code="stopped") from None

    async def _pause(self, left: float) -> None:
        """Before asking again: briefly while a peer's /v1/info is still due (it is about to
        become usable), longer otherwise (a ban has to run out, discovery to find a node)."""
        waiting = any(p.state == NEW for p in self.machine.peers)
        await asyncio.sleep(max(0.0, min(0.05 if waiting else 0.5, left)))

    def _ban(self, url: str, reason: str, detail: str = "") -> None:
        self.machine.ban_peer(url, reason, self.now_ms(), detail)
        self._peers_dirty = True
        self._poke()

    async def _post_tx(self, url: str, body: bytes, tx_id: bytes, left: float
                       ) -> sync.SubmitVerdict:
        req = sync.Request(0, url, "submit", "/v1/tx", sync.MAX_SUBMIT_BYTES)
        try:
            async with asyncio.timeout(left):
                status, answer = await self._send(req, data=body)
        except TimeoutError:  # our own deadline, not the peer's fault
            return sync.SubmitVerdict(sync.RETRY, "deadline")
        except FetchError as exc:
            self._ban(url, exc.reason, f"POST /v1/tx: {exc.detail}")
            return sync.SubmitVerdict(sync.BAN, exc.reason, exc.detail)
        verdict = sync.judge_submit(status, answer, tx_id)
        if verdict.outcome == sync.BAN:
            self._ban(url, verdict.code, f"POST /v1/tx: HTTP {status} {verdict.message}")
        elif verdict.outcome == sync.RETRY:
            log.info("peer %s busy: %s", url, verdict.code)
        return verdict

    async def _offer_again(self, tx_id: bytes, deadline: float) -> None:
        tx, given = self._submitted[tx_id]
        body = wire.encode(tx.to_obj())
        loop = asyncio.get_running_loop()
        for url in [u for u in self._submit_peers() if u not in given]:
            left = min(deadline - loop.time(), 5.0)
            if left <= 0:
                return
            verdict = await self._post_tx(url, body, tx_id, left)
            if verdict.outcome == sync.ACCEPTED:
                given.add(url)
                log.info("transaction %s offered again, accepted by %s", tx_id.hex(), url)

    async def _wait_for_growth(self, deadline: float) -> None:
        """Until a usable peer says its tip passed the best height known (``/v1/wait``), or
        WAIT_POLL_MS; then the machine asks /v1/info again (the sync follows)."""
        loop = asyncio.get_running_loop()
        left = deadline - loop.time()
        if left <= 0:
            return
        usable = self.machine.peers.usable()
        if not usable:
            await asyncio.sleep(min(0.5, left))
            return
        tip = self.machine.tip
        known = [tip.height if tip is not None else self.anchor.height]
        known += [p.height for p in usable if p.height is not None]
        target = max(known) + 1
        timeout_ms = max(0, min(WAIT_POLL_MS, int(left * 1000)))
        tasks = [asyncio.create_task(self._wait_on(p.url, target, timeout_ms)) for p in usable]
        try:
            for next_done in asyncio.as_completed(tasks):
                height = await next_done
                if height is not None and height >= target:
                    break
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.machine.poll_info()
        self._poke()

    async def _wait_on(self, url: str, height: int, timeout_ms: int) -> int | None:
        """The height a peer's ``/v1/wait`` answers (its claim), or None (it is banned)."""
        extra = timeout_ms / 1000
        limits = dataclasses.replace(self.limits,
                                     headers_timeout_s=self.limits.headers_timeout_s + extra,
                                     total_timeout_s=self.limits.total_timeout_s + extra)
        req = sync.Request(0, url, "wait", f"/v1/wait?height={height}&timeout_ms={timeout_ms}",
                           sync.MAX_WAIT_BYTES)
        return await self._ask_peer(req, sync.decode_wait_response, limits=limits)

    async def _ask_peer(self, req: sync.Request, decode: Callable[[bytes], Any], *,
                        limits: Limits | None = None) -> Any:
        """A peer's decoded 200 answer to ``req``, or None after banning it for a transport
        failure, another status or a body that does not decode."""
        url = req.peer
        try:
            status, body = await self._send(req, limits=limits)
        except FetchError as exc:
            self._ban(url, exc.reason, f"{req.path}: {exc.detail}")
            return None
        if status != 200:
            self._ban(url, sync.http_reason(status, body), f"{req.path}: HTTP {status}")
            return None
        try:
            return decode(body)
        except MalformedError as exc:
            self._ban(url, sync.ban_reason(exc), f"{req.path}: {exc}")
            return None

    async def _lookup_on(self, url: str, digest: bytes, deadline: float
                         ) -> tuple[tuple[bytes, ...] | None, str]:
        """The tx_ids a peer lists for ``digest`` (its claim), or None and why not (it is
        banned for its answer, or there was no time)."""
        req = sync.Request(0, url, "lookup", f"/v1/lookup/{digest.hex()}",
                           sync.MAX_LOOKUP_BYTES)
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return None, "no time left to ask it"
        try:
            async with asyncio.timeout(left):
                ids = await self._ask_peer(req, sync.decode_lookup_response)
        except TimeoutError:
            return None, "no answer in time"
        if ids is None:
            peer = self.machine.peers.get(url)
            return None, (peer.last_reason if peer is not None else None) or "no valid answer"
        return ids, ""

    def _timeout_error(self, tx_id: bytes, last: sync.TxNotFound | None,
                       timeout_s: float) -> TxError:
        if last is not None and last.served_by:
            return NotVerifiable(self._not_verifiable_message(tx_id, last), tx_id=tx_id)
        if (last is None and not self.machine.peers.usable()) or \
                (last is not None and not last.absent):
            return NoPeers(self._peers_message(
                f"no peer answered for transaction {tx_id.hex()} in {timeout_s:g} s"),
                tx_id=tx_id)
        return InclusionTimeout(f"transaction {tx_id.hex()} was not in a block any peer could "
                                f"prove within {timeout_s:g} s", tx_id=tx_id)

    @staticmethod
    def _not_verifiable_message(tx_id: bytes, res: sync.TxNotFound) -> str:
        return (f"transaction {tx_id.hex()} was served by {_urls(res.served_by)} but did not "
                f"verify ({res.reason}); it is not accepted")

    def _peers_message(self, prefix: str, failures: dict[str, str] | None = None) -> str:
        peers = list(self.machine.peers)
        if not peers:
            return f"{prefix}: no peers to ask; give --peer URL or --discover"
        parts = []
        for p in peers:
            why = (failures or {}).get(p.url) or p.last_reason
            parts.append(f"{p.url} ({p.state}{f': {why}' if why else ''})")
        return f"{prefix}; peers: " + ", ".join(parts)

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
        self._session = session
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
            self._session = None
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
