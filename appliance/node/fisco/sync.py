"""``FiscoSync``: the sans-I/O sync machine for a FISCO BCOS 3.x chain.

It decides every JSON-RPC request and judges every answer; the adapter (client.py) moves the
bytes and writes the store. No clock: ``now_ms`` comes with every call.

- ``getBlockNumber`` of every new peer and every ``info_interval_ms``: the peer's claimed tip
  (untrusted; it only says how far to ask).
- the anchor block (``getBlockByNumber(anchor, onlyHeader=true, onlyTxHash=true)``) when the
  store is new: it must hash to the provisioned hash (``Initialize``).
- ranges of up to ``batch`` blocks as **one JSON-RPC batch** of ``getBlockByNumber(n, true,
  true)`` calls, up to ``per_peer`` in flight per peer and ``lookahead * batch`` blocks past
  the tip, spread over the usable peers. A range is cut when it is handed out, from the lowest
  block nobody is asked for, and ends at the height its peer claims (a peer that claims a
  whole batch is preferred): a lower peer is asked for what it has, so the sync goes on when
  the highest claim goes away (a liar banned, a node gone). Ranges may come back in any
  order; each is verified as a segment (:func:`verify.verify_segment`: links, sealer list,
  the last block's quorum, or every block's with ``strict``) once the range below it is
  verified, and handed out as ``AppendSegment``. A range whose peer fails is dropped and cut
  again for the peers left.

Anything invalid bans its peer (:class:`PeerTable`, the native sync's backoff) with the rule
or failure as the reason: a verification rule, ``malformed_<reason>``, ``withhold`` (a block
it claims and does not serve), ``rpc_error``, and the adapter's ``timeout``, ``slow``,
``oversize``, ``unreachable``, ``disconnected``, ``http_<status>``. A peer's strikes (the
length of its next ban) are forgiven when blocks it served verify, unless it was banned since
it served them. A block naming other sealers than the trusted ones bans its peer for
``sealer_change`` and is remembered (:attr:`sealer_change`): if no peer carries the chain on
past it, the adapter stops with an alarm naming both lists.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ..errors import LedgerError, MalformedError, VerificationError
from ..peers import BANNED, OK, PeerTable
from . import jsonrpc
from .anchor import FiscoAnchor
from .block import FiscoHeader, decode_header
from .verify import SealerChange, Trusted, check_anchor, verify_segment

__all__ = [
    "AppendSegment", "BanPeer", "FiscoSync", "FiscoSyncConfig", "Initialize", "Request",
    "TipReached",
]


@dataclass(frozen=True)
class FiscoSyncConfig:
    batch: int = 100
    per_peer: int = 2
    lookahead: int = 8
    strict: bool = False
    until_height: int | None = None
    info_interval_ms: int = 10_000
    ban_base_ms: int = 2_000
    ban_max_ms: int = 300_000
    max_body: int = jsonrpc.MAX_BODY

    def __post_init__(self) -> None:
        if not 1 <= self.batch <= 1000:
            raise ValueError("batch must be 1..1000 blocks")
        if self.per_peer < 1 or self.lookahead < 1:
            raise ValueError("per_peer and lookahead must be >= 1")


@dataclass(frozen=True)
class Request:
    """A POST of ``body`` to ``peer``; the answer goes to ``receive(id, ...)``."""

    id: int
    peer: str
    kind: str  # "number", "anchor", "blocks"
    body: bytes
    max_bytes: int
    start: int = 0
    count: int = 0


@dataclass(frozen=True)
class Initialize:
    number: int
    block_hash: bytes
    preimage: bytes


@dataclass(frozen=True)
class AppendSegment:
    blocks: tuple[tuple[int, bytes, bytes], ...]
    peer: str


@dataclass(frozen=True)
class BanPeer:
    peer: str
    reason: str
    until_ms: int
    detail: str = ""


@dataclass(frozen=True)
class TipReached:
    number: int
    block_hash: bytes


@dataclass
class _Range:
    start: int
    count: int
    peer: str | None = None
    req: int | None = None
    headers: list[FiscoHeader] = field(default_factory=list)
    bans: int = 0  # its peer's ban count when it served the headers


class FiscoSync:
    def __init__(self, anchor: FiscoAnchor, config: FiscoSyncConfig | None = None,
                 tip: Trusted | None = None) -> None:
        self.anchor = anchor
        self.config = config or FiscoSyncConfig()
        self.tip = tip
        self.peers = PeerTable(ban_base_ms=self.config.ban_base_ms,
                               ban_max_ms=self.config.ban_max_ms)
        self.sealer_change: tuple[SealerChange, str] | None = None
        self.done = False
        self._ids = itertools.count(1)
        self._inflight: dict[int, Request] = {}
        self._ranges: dict[int, _Range] = {}  # by start, above the tip: asked or buffered
        self._anchor_req: int | None = None

    # -- peers -------------------------------------------------------------------------------

    def add_peer(self, url: str, source: str = "static") -> None:
        self.peers.add(url, source)

    @property
    def target(self) -> int | None:
        """The height to reach: --until-height, else the best claim of the usable peers."""
        if self.config.until_height is not None:
            return self.config.until_height
        claims = [p.height for p in self.peers.usable() if p.height is not None]
        return max(claims) if claims else None

    def _ban(self, peer: str, reason: str, now_ms: int, detail: str = "") -> list:
        p = self.peers.ban(peer, reason, now_ms)
        for r in list(self._ranges.values()):  # its open ranges are cut again for others
            if r.peer == p.url and not r.headers:
                del self._ranges[r.start]
        for rid in [i for i, q in self._inflight.items() if q.peer == p.url]:
            q = self._inflight.pop(rid)
            if q.kind == "anchor":
                self._anchor_req = None
        return [BanPeer(p.url, reason, p.banned_until_ms or now_ms, detail)]

    # -- requests ----------------------------------------------------------------------------

    def _call_body(self, calls: list[dict]) -> bytes:
        return jsonrpc.batch(calls) if len(calls) > 1 else \
            jsonrpc.batch(calls)[1:-1]

    def requests(self, now_ms: int) -> list[Request]:
        out: list[Request] = []
        self.peers.expire(now_ms)
        group = self.anchor.group
        busy = {q.peer for q in self._inflight.values() if q.kind == "number"}
        for p in self.peers:
            due = p.state == "new" or (p.state == OK and (p.info_at_ms is None or
                                                          now_ms - p.info_at_ms >=
                                                          self.config.info_interval_ms))
            if due and p.url not in busy:
                rid = next(self._ids)
                body = self._call_body([jsonrpc.request("getBlockNumber", [group, ""], rid)])
                out.append(Request(rid, p.url, "number", body, 4096))
                p.info_at_ms = now_ms
        usable = [p for p in self.peers.usable() if p.height is not None]
        if not usable:
            return self._track(out)
        load = {p.url: 0 for p in usable}
        for q in self._inflight.values():
            if q.peer in load and q.kind != "number":
                load[q.peer] += 1
        if self.tip is None:
            if self._anchor_req is None:
                cands = [p for p in usable if p.height >= self.anchor.height]
                if cands:
                    peer = cands[0].url
                    rid = next(self._ids)
                    body = self._call_body([jsonrpc.request(
                        "getBlockByNumber", [group, "", self.anchor.height, True, True], rid)])
                    out.append(Request(rid, peer, "anchor", body, self.config.max_body))
                    self._anchor_req = rid
            return self._track(out)
        target = self.target
        if target is None:
            return self._track(out)
        limit = min(target, self.tip.number + self.config.lookahead * self.config.batch)
        rot = 0
        for start, end in self._holes(limit):
            while start <= end:
                free = [p for p in usable if p.height >= start
                        and load[p.url] < self.config.per_peer]
                if not free:
                    return self._track(out)  # holes above are no easier to serve
                # A range is cut when it is handed out, at what its peer claims to have:
                # a peer with a whole batch if there is one (in turn), else the highest.
                want = min(start + self.config.batch - 1, end)
                full = [p for p in free if p.height >= want]
                p = full[rot % len(full)] if full else max(free, key=lambda p: p.height)
                rot += 1
                last = min(want, p.height)
                rid = next(self._ids)
                calls = [jsonrpc.request("getBlockByNumber", [group, "", n, True, True], n)
                         for n in range(start, last + 1)]
                count = last - start + 1
                out.append(Request(rid, p.url, "blocks", jsonrpc.batch(calls),
                                   self.config.max_body, start, count))
                self._ranges[start] = _Range(start, count, p.url, rid)
                load[p.url] += 1
                start = last + 1
        return self._track(out)

    def _holes(self, limit: int) -> list[tuple[int, int]]:
        """The block ranges above the tip, up to ``limit``, that no range covers."""
        assert self.tip is not None
        holes = []
        pos = self.tip.number + 1
        for r in sorted(self._ranges.values(), key=lambda r: r.start):
            if r.start > pos:
                holes.append((pos, min(r.start - 1, limit)))
            pos = max(pos, r.start + r.count)
        holes.append((pos, limit))
        return [(a, b) for a, b in holes if a <= b]

    def _track(self, out: list[Request]) -> list[Request]:
        for q in out:
            self._inflight[q.id] = q
        return out

    def next_wakeup(self, now_ms: int) -> int:
        t = now_ms + self.config.info_interval_ms
        exp = self.peers.next_expiry()
        return min(t, exp) if exp is not None else t

    # -- answers -----------------------------------------------------------------------------

    def fail(self, req_id: int, reason: str, now_ms: int) -> list:
        q = self._inflight.get(req_id)
        if q is None:
            return []
        return self._ban(q.peer, reason, now_ms)

    def receive(self, req_id: int, body: bytes, now_ms: int) -> list:
        q = self._inflight.pop(req_id, None)
        if q is None:
            return []
        if self.peers.get(q.peer) is None or self.peers.get(q.peer).state not in ("new", OK):
            return []
        try:
            if q.kind == "number":
                return self._on_number(q, body)
            if q.kind == "anchor":
                return self._on_anchor(q, body, now_ms)
            return self._on_blocks(q, body, now_ms)
        except SealerChange as exc:
            self.sealer_change = (exc, q.peer)
            return self._ban(q.peer, "sealer_change", now_ms, exc.describe())
        except VerificationError as exc:
            return self._ban(q.peer, exc.rule, now_ms, str(exc))
        except MalformedError as exc:
            return self._ban(q.peer, f"malformed_{exc.reason}", now_ms, str(exc))
        except LedgerError as exc:  # pragma: no cover - the two above are the family
            return self._ban(q.peer, "malformed", now_ms, str(exc))

    def _single(self, q: Request, body: bytes) -> object:
        value = jsonrpc.parse_response(body, q.id, q.max_bytes)
        if isinstance(value, jsonrpc.RpcError):
            raise _Withheld(value)
        return value

    def _on_number(self, q: Request, body: bytes) -> list:
        try:
            value = self._single(q, body)
        except _Withheld as exc:
            raise MalformedError("rpc_error", exc.err.message) from None
        if type(value) is not int or not 0 <= value < 1 << 63:
            raise MalformedError("type", "getBlockNumber is not a block number")
        p = self.peers.get(q.peer)
        assert p is not None
        p.state, p.height = OK, value
        return self._maybe_done()

    def _on_anchor(self, q: Request, body: bytes, now_ms: int) -> list:
        self._anchor_req = None
        try:
            header = decode_header(self._single(q, body))
        except _Withheld:
            raise VerificationError("withhold", self.anchor.height, "anchor block") from None
        pre = check_anchor(self.anchor, header)
        self.tip = Trusted(self.anchor.height, self.anchor.block_hash, self.anchor.sealers)
        self.peers.good(q.peer, 1)
        return [Initialize(self.anchor.height, self.anchor.block_hash, pre),
                *self._maybe_done()]

    def _on_blocks(self, q: Request, body: bytes, now_ms: int) -> list:
        r = self._ranges.get(q.start)
        if r is None or r.req != q.id:
            return []  # the range was already served by another peer
        ids = list(range(q.start, q.start + q.count))
        results = jsonrpc.parse_batch(body, ids, q.max_bytes)
        headers = []
        for n in ids:
            value = results[n]
            if isinstance(value, jsonrpc.RpcError):
                raise VerificationError("withhold", n, f"block {n}: {value.message}")
            h = decode_header(value)
            if h.number != n:
                raise VerificationError("height", h.number, f"asked {n}")
            headers.append(h)
        r.headers = headers
        r.peer = q.peer
        p = self.peers.get(q.peer)
        assert p is not None  # receive() answers only the peers it knows
        r.bans = p.bans
        return self._advance(now_ms)

    def _credit(self, url: str, bans: int, blocks: int) -> None:
        """Count verified blocks to the peer that served them; forgive its strikes only if
        it has not been banned since it served them: a peer that mixes valid ranges with
        garbage must see its bans grow."""
        p = self.peers.get(url)
        if p is None:
            return
        if p.bans == bans and p.state != BANNED:
            self.peers.good(url, blocks)
        else:
            p.verified_headers += blocks

    def _advance(self, now_ms: int) -> list:
        events: list = []
        while self.tip is not None and (r := self._ranges.get(self.tip.number + 1)) is not None \
                and r.headers:
            peer = r.peer
            assert peer is not None
            try:
                seg = verify_segment(self.tip, r.headers, now_ms=now_ms,
                                     strict=self.config.strict)
            except SealerChange as exc:
                self.sealer_change = (exc, peer)
                del self._ranges[r.start]
                events += self._ban(peer, "sealer_change", now_ms, exc.describe())
                break
            except VerificationError as exc:
                del self._ranges[r.start]
                events += self._ban(peer, exc.rule, now_ms, str(exc))
                break
            del self._ranges[r.start]
            n, h = seg.tip
            self.tip = Trusted(n, h, self.tip.sealers)
            self.sealer_change = None if self.sealer_change is None or \
                self.sealer_change[0].height > n else self.sealer_change
            self._credit(peer, r.bans, len(seg.blocks))
            events.append(AppendSegment(seg.blocks, peer))
        return events + self._maybe_done()

    def _maybe_done(self) -> list:
        if self.done or self.tip is None:
            return []
        target = self.target
        if target is None or any(p.state == "new" for p in self.peers):
            return []
        if self.tip.number >= target:
            self.done = True
            return [TipReached(self.tip.number, self.tip.block_hash)]
        return []


class _Withheld(Exception):
    def __init__(self, err: jsonrpc.RpcError) -> None:
        self.err = err
