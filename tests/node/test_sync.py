"""The sync machine (appliance/node/sync.py) and the peer table (peers.py), sans-I/O.

Chains are built in memory with real keys (tests/node/chainutil.py); commits are signed lazily,
only for the heights a node serves one for, so a few thousand headers cost milliseconds. A
:class:`Node` answers the machine's requests from such a chain the way protocol §7 says; its
subclasses misbehave. :func:`drive` plays the network: it answers the machine's requests in a
seeded random order and applies the events to an in-memory store.
"""

from __future__ import annotations

import random
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import chainutil as cu
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import wire
from appliance.node import merkle, signatures, sync, verify
from appliance.node.errors import MalformedError
from appliance.node.model import (
    Commit,
    Header,
    SignedTx,
    TxBody,
    ValidatorSet,
    decode_commit,
    peer_id,
)
from appliance.node.peers import BANNED, CONFLICT, NEW, OK, PeerTable, normalize_url

CHAIN_ID = cu.CHAIN_ID
T0 = cu.T0
STEP = cu.STEP
KEYS = cu.keys(4)
OTHER_KEYS = cu.keys(4, offset=10)  # the hijackers' set


# --- in-memory chains --------------------------------------------------------------------------


class SimChain:
    """Headers 0..length-1; ``changes[h]``: the keys of the set that signs from h on.

    ``tweak(h, fields)`` alters a header before it is hashed (later ones link to it), as in
    chainutil; commits are signed on demand by every key of the signing set. ``tx_heights``
    get two real evidence.deposit transactions each (for proofs); other blocks a fake root.
    """

    def __init__(self, length: int, *, changes: dict[int, list[cu.Key]] | None = None,
                 tweak: Callable[[int, dict], dict] | None = None, keys: list[cu.Key] = KEYS,
                 tx_heights: tuple[int, ...] = (), chain_id: str = CHAIN_ID,
                 signers: Callable[[int], list[cu.Key]] | None = None) -> None:
        changes = changes or {}
        self.chain_id = chain_id
        self.sets: list[ValidatorSet] = [cu.vset(keys)]
        self.keys = {k.public: k for k in keys}
        for h in range(1, length + 1):
            if h in changes:
                self.sets.append(cu.vset(changes[h]))
                self.keys.update({k.public: k for k in changes[h]})
            else:
                self.sets.append(self.sets[-1])
        self.txs: dict[int, list[SignedTx]] = {h: make_txs(h, chain_id) for h in tx_heights}
        self.headers: list[Header] = []
        for h in range(length):
            f = cu.header_fields(h, self.headers[-1] if self.headers else None,
                                 self.sets[h].hash, self.sets[h + 1].hash, chain_id)
            if h in self.txs:
                f["tx_root"] = merkle.root([t.tx_id for t in self.txs[h]])
            if tweak is not None:
                f = tweak(h, dict(f))
            self.headers.append(Header(**f))
        self._signers = signers
        self._commits: dict[int, Commit] = {}

    @property
    def tip(self) -> int:
        return len(self.headers) - 1

    def commit(self, h: int) -> Commit:
        c = self._commits.get(h)
        if c is None:
            ks = self._signers(h) if self._signers else list(self.keys.values())
            c = self._commits[h] = cu.sign_commit(self.headers[h], self.sets[h], ks)
        return c

    @property
    def anchor(self):
        from appliance.node.model import TrustAnchor
        return TrustAnchor(self.chain_id, 0, self.headers[0].block_id, self.sets[0])

    def is_change(self, h: int) -> bool:
        hd = self.headers[h]
        return hd.next_validators_hash != hd.validators_hash


def make_txs(height: int, chain_id: str = CHAIN_ID) -> list[SignedTx]:
    out = []
    for i in range(2):
        priv, pub = cu._keypair("sm2", 100 + i)
        body = TxBody(chain_id, "evidence.deposit", T0 + STEP * height, peer_id(pub),
                      {"digest": bytes([height % 256, i]) * 16, "kind": "k", "issuer": "o"},
                      bytes([i]) * 16)
        out.append(SignedTx(body, "sm2", pub, signatures.sign("sm2", priv, body.encoded)))
    return out


# --- nodes ------------------------------------------------------------------------------------


class Fail(Exception):
    """A transport failure the adapter would report (timeout, slow, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def cbor(obj: Any) -> bytes:
    return wire.encode(obj)


class Node:
    """An honest district node over a SimChain (protocol §7)."""

    def __init__(self, chain: SimChain, tip: int | None = None, extra: int = 0) -> None:
        self.chain = chain
        self.tip = chain.tip if tip is None else tip
        self.extra = extra  # serve this many headers more than asked (the double may)
        self.served: list[str] = []

    def info(self) -> dict:
        c = self.chain
        return {"chain_id": c.chain_id, "protocol": 1, "height": self.tip,
                "tip_id": self.header(self.tip).block_id, "genesis_id": c.headers[0].block_id,
                "peer_id": bytes(32), "district": "d", "software": "sim"}

    def header(self, h: int) -> Header:
        return self.chain.headers[h]

    def commit(self, h: int) -> Commit:
        return self.chain.commit(h)

    def set_for(self, h: int) -> ValidatorSet:
        return self.chain.sets[h]

    def headers_body(self, start: int, count: int) -> dict:
        end = min(start + count - 1 + self.extra, self.tip, start + 999)
        hs = [self.header(h) for h in range(start, end + 1)]
        changes = [h.height for h in hs if h.next_validators_hash != h.validators_hash]
        commits = [self.commit(h).to_obj() for h in sorted({*changes, end})]
        sets = [{"height": h, "validators": self.set_for(h).to_obj()}
                for h in [start, *(c + 1 for c in changes)]]
        return {"headers": [h.to_obj() for h in hs], "commits": commits,
                "validator_sets": sets}

    def handle(self, req: sync.Request) -> tuple[int, bytes]:
        self.served.append(req.path)
        url = urllib.parse.urlsplit(req.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        parts = url.path.split("/")
        if url.path == "/v1/info":
            return 200, cbor(self.info())
        if url.path == "/v1/headers":
            start, count = int(q["from"]), int(q["count"])
            if start > self.tip:
                return 404, cbor({"error": "not_found", "message": "past the tip"})
            return 200, cbor(self.headers_body(start, count))
        if parts[2] == "commits":
            h = int(parts[3])
            if h > self.tip:
                return 404, cbor({"error": "not_found", "message": "-"})
            return 200, cbor(self.commit(h).to_obj())
        if parts[2] == "tx":
            tx_id = bytes.fromhex(parts[3])
            for h, txs in self.chain.txs.items():
                for i, t in enumerate(txs):
                    if t.tx_id == tx_id and h <= self.tip:
                        return 200, cbor({"tx": t.to_obj(), "height": h,
                                          "proof": self.proof(h, i)})
            return 404, cbor({"error": "not_found", "message": "-"})
        return 404, cbor({"error": "not_found", "message": "-"})

    def proof(self, h: int, i: int) -> dict:
        ids = [t.tx_id for t in self.chain.txs[h]]
        return {"leaf_index": i, "tree_size": len(ids),
                "path": list(merkle.inclusion_proof(ids, i))}


class Tamper(Node):
    """Serves every headers answer of 3+ headers with its middle header altered by ``rule``,
    later headers re-linked and the commits it carries re-signed by the real validators, so
    that exactly that rule fails. Checks (one header) are answered honestly."""

    def __init__(self, chain: SimChain, rule: str) -> None:
        super().__init__(chain)
        self.rule = rule

    def headers_body(self, start: int, count: int) -> dict:
        body = super().headers_body(start, count)
        hs = [Header.from_obj(h) for h in body["headers"]]
        if len(hs) < 3:
            return body
        m = len(hs) // 2
        hijack = cu.vset(OTHER_KEYS)
        out = hs[:m]
        for i in range(m, len(hs)):
            f = hs[i].to_obj()
            f["prev_hash"] = out[-1].block_id
            if i == m:
                f = self.alter(f, out[-1])
            elif self.rule == "set_change_commit":
                f["validators_hash"] = f["next_validators_hash"] = hijack.hash
            elif self.rule == "timestamp" and f["timestamp"] < out[-1].timestamp:
                f["timestamp"] = out[-1].timestamp
            out.append(Header(**f))
        commits = []
        for c in body["commits"]:
            h = c["height"]
            hd = out[h - start]
            if self.rule == "set_change_commit" and h >= start + m:
                commits.append(cu.sign_commit(hd, hijack, OTHER_KEYS).to_obj())
            elif h >= start + m:
                commits.append(cu.sign_commit(hd, self.chain.sets[h], KEYS).to_obj())
            else:
                commits.append(c)
        if self.rule == "set_change_commit":
            at = start + m
            if at not in {c["height"] for c in commits}:
                commits.append(cu.sign_commit(out[m], hijack, OTHER_KEYS).to_obj())
                commits.sort(key=lambda c: c["height"])
            body["validator_sets"].append({"height": at + 1, "validators": hijack.to_obj()})
        if self.rule == "last_commit":
            last = commits[-1]
            last["signatures"] = [{"index": s["index"], "signature": bytes(64)}
                                  for s in last["signatures"]]
        body["headers"] = [h.to_obj() for h in out]
        body["commits"] = commits
        return body

    def alter(self, f: dict, prev: Header) -> dict:
        rule = self.rule
        if rule == "chain_id":
            f["chain_id"] = "another-chain"
        elif rule == "version":
            f["version"] = "2"
        elif rule == "prev_hash":
            f["prev_hash"] = bytes(32)
        elif rule == "timestamp":
            f["timestamp"] = T0 + 10**9  # far past now + max_skew
        elif rule == "validators_hash":
            f["validators_hash"] = f["next_validators_hash"] = b"\x07" * 32
        elif rule == "set_change_commit":
            f["next_validators_hash"] = cu.vset(OTHER_KEYS).hash
        return f


class Raw(Node):
    """Answers every request (or those of ``kinds``) with a fixed status and body."""

    def __init__(self, chain: SimChain, status: int, body: bytes | Callable[[bytes], bytes],
                 kinds: tuple[str, ...] = ("info", "headers", "check", "commit", "tx")) -> None:
        super().__init__(chain)
        self.status, self.body, self.kinds = status, body, kinds
        self.kind = ""

    def handle(self, req: sync.Request) -> tuple[int, bytes]:
        status, body = super().handle(req)
        if req.kind not in self.kinds:
            return status, body
        return self.status, self.body(body) if callable(self.body) else self.body


class Failing(Node):
    """Fails (transport) the first ``times`` requests with ``reason``, then is honest."""

    def __init__(self, chain: SimChain, reason: str = "timeout", times: int = 10**9) -> None:
        super().__init__(chain)
        self.reason, self.times = reason, times

    def handle(self, req: sync.Request) -> tuple[int, bytes]:
        if self.times > 0:
            self.times -= 1
            raise Fail(self.reason)
        return super().handle(req)


# --- the network and the store ------------------------------------------------------------------


@dataclass
class Store:
    """What the adapter would write, with the store's own continuity checks."""

    headers: dict[int, Header] = field(default_factory=dict)
    tip: int | None = None
    next_set_hash: bytes | None = None
    sets: dict[bytes, ValidatorSet] = field(default_factory=dict)
    evidence: list[verify.Equivocation] = field(default_factory=list)

    def apply(self, ev: sync.Event) -> None:
        if isinstance(ev, sync.Initialize):
            assert self.tip is None
            self.headers[ev.header.height] = ev.header
            self.tip = ev.header.height
            self.next_set_hash = ev.next_set.hash
            self.sets.update({s.hash: s for s in ev.sets})
        elif isinstance(ev, sync.AppendSegment):
            assert self.tip is not None
            assert ev.headers[0].height == self.tip + 1
            assert ev.headers[0].prev_hash == self.headers[self.tip].block_id
            for h in ev.headers:
                self.headers[h.height] = h
            self.tip = ev.headers[-1].height
            self.next_set_hash = ev.next_set_hash
            self.sets.update({s.hash: s for s in ev.sets})
        elif isinstance(ev, sync.EquivocationFound):
            self.evidence.append(ev.evidence)


NOW = T0 + STEP * 100_000  # after every header of the test chains


@dataclass
class Run:
    machine: sync.SyncMachine
    nodes: dict[str, Node]
    store: Store = field(default_factory=Store)
    events: list[sync.Event] = field(default_factory=list)
    now: int = NOW
    requests: list[sync.Request] = field(default_factory=list)
    queue: list[sync.Request] = field(default_factory=list)  # sent, not answered yet

    def bans(self, url: str | None = None) -> list[sync.BanPeer]:
        return [e for e in self.events if isinstance(e, sync.BanPeer)
                and (url is None or e.peer == url)]

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def machine_for(chain: SimChain, **config: Any) -> sync.SyncMachine:
    config.setdefault("batch", 100)
    config.setdefault("ban_base_ms", 1000)
    return sync.SyncMachine(chain.anchor, sync.SyncConfig(**config))


def drive(run: Run, *, seed: int | None = None, max_steps: int = 20_000,
          until: Callable[[Run], bool] | None = None, tick_ms: int = 0) -> Run:
    """Answer requests until nothing is in flight and nothing is due (or ``until``): in the
    order they were made, or in a random order from ``seed``. With ``tick_ms`` the clock
    advances to the machine's next wakeup when idle (ban expiries, info polls)."""
    rng = random.Random(seed)
    queue = run.queue
    m = run.machine
    for _ in range(max_steps):
        new = m.requests(run.now)
        for ev in m.events():
            run.store.apply(ev)
            run.events.append(ev)
        run.requests += new
        queue += new
        if until is not None and until(run):
            return run
        if not queue:
            wake = m.next_wakeup(run.now)
            if tick_ms and wake is not None and not run.of(sync.TipReached):
                run.now = max(run.now + 1, wake)
                continue
            return run
        req = queue.pop(0 if seed is None else rng.randrange(len(queue)))
        node = run.nodes.get(req.peer)
        try:
            if node is None:
                raise Fail("unreachable")
            status, body = node.handle(req)
        except Fail as exc:
            events = m.fail(req.id, exc.reason, run.now)
        else:
            events = m.receive(req.id, status, body, run.now)
        for ev in events:
            run.store.apply(ev)
        run.events += events
    raise AssertionError("the machine did not settle")


def start(chain: SimChain, nodes: dict[str, Node], **config: Any) -> Run:
    config.setdefault("batch", 100)
    config.setdefault("ban_base_ms", 1000)
    store = Store()
    m = sync.SyncMachine(chain.anchor, sync.SyncConfig(**config),
                         lookup_header=store.headers.get, lookup_set=store.sets.get)
    for url in nodes:
        m.add_peer(url)
    return Run(m, nodes, store)


A, B, C = "http://a.test:8080", "http://b.test:8080", "http://c.test:8080"


@pytest.fixture(scope="module")
def chain() -> SimChain:
    return SimChain(650, tx_heights=(120, 400))


def assert_synced(run: Run, chain: SimChain, tip: int | None = None) -> None:
    tip = chain.tip if tip is None else tip
    assert run.store.tip == tip
    assert run.store.headers[tip].block_id == chain.headers[tip].block_id
    for h in range(tip + 1):
        assert run.store.headers[h] == chain.headers[h]
    reached = run.of(sync.TipReached)
    assert reached and reached[-1].height == tip


# --- the peer table ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw, norm", [
    ("http://Node-1.LOCAL:80/", "http://node-1.local"),
    ("HTTP://node-1.local", "http://node-1.local"),
    ("https://n.example:443", "https://n.example"),
    ("https://n.example:8443/", "https://n.example:8443"),
    ("http://127.0.0.1:8080//", "http://127.0.0.1:8080"),
    ("http://[0:0:0:0:0:0:0:1]:9000", "http://[::1]:9000"),
    ("http://node.local./api/", "http://node.local/api"),
    ("  http://n:81  ", "http://n:81"),
])
def test_normalize_url(raw: str, norm: str) -> None:
    assert normalize_url(raw) == norm


@pytest.mark.parametrize("bad", [
    "", "ftp://n", "n:8080", "http://", "http://u:p@n", "http://n?x=1", "http://n#f",
    "http://n:99999", "http://n:x", "file:///etc/passwd", 5,
])
def test_normalize_url_refuses(bad: Any) -> None:
    with pytest.raises(ValueError):
        normalize_url(bad)


def test_peer_table_has_no_duplicates_and_counts_sources() -> None:
    t = PeerTable()
    p, new = t.add("http://Node:80/", "static")
    assert new and p.url == "http://node"
    q, new = t.add("http://node", "mdns")
    assert q is p and not new and len(t) == 1 and p.sources == {"static", "mdns"}
    assert not t.remove("http://node/", "mdns")  # the static source keeps it
    assert len(t) == 1
    assert t.remove("http://node", "static") and len(t) == 0


def test_ban_schedule_is_exponential_capped_and_deterministic() -> None:
    t = PeerTable(ban_base_ms=1000, ban_factor=2, ban_max_ms=10_000)
    t.add("http://n")
    now = 0
    lengths = []
    for _ in range(6):
        p = t.ban("http://n", "x", now)
        assert p.state == BANNED
        lengths.append(p.banned_until_ms - now)
        # a ban while banned changes nothing
        assert t.ban("http://n", "y", now + 1).banned_until_ms == p.banned_until_ms
        assert t.expire(p.banned_until_ms - 1) == []
        now = p.banned_until_ms
        assert [x.url for x in t.expire(now)] == ["http://n"] and p.state == NEW
    assert lengths == [1000, 2000, 4000, 8000, 10_000, 10_000]
    t.good("http://n")
    assert t.ban("http://n", "z", now).banned_until_ms == now + 1000  # strikes forgiven
    assert t.get("http://n").bans == 7


# --- honest sync --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_one_honest_peer(chain: SimChain, seed: int) -> None:
    run = drive(start(chain, {A: Node(chain)}), seed=seed)
    assert_synced(run, chain)
    assert isinstance(run.events[0], sync.PeerInfo)
    assert len(run.of(sync.Initialize)) == 1
    assert not run.bans()
    appends = run.of(sync.AppendSegment)
    assert all(e.confirmed_by is None for e in appends)  # no second peer to vouch
    assert max(len(e.headers) for e in appends) <= 100
    assert run.store.next_set_hash == chain.sets[chain.tip + 1].hash


@pytest.mark.parametrize("seed", range(6))
def test_two_honest_peers_share_and_cross_check(chain: SimChain, seed: int) -> None:
    run = drive(start(chain, {A: Node(chain), B: Node(chain)}), seed=seed)
    assert_synced(run, chain)
    assert not run.bans()
    # Every stored segment was vouched for by the peer that did not serve it.
    for e in run.of(sync.AppendSegment):
        assert e.confirmed_by is not None and e.confirmed_by != e.peer


def test_pipelining_keeps_several_batches_in_flight(chain: SimChain) -> None:
    m = machine_for(chain, per_peer=2, lookahead=8)
    for url in (A, B):
        m.add_peer(url)
    nodes = {A: Node(chain), B: Node(chain)}
    first = m.requests(NOW)
    assert [r.kind for r in first] == ["info", "info"]
    for r in first:
        m.receive(r.id, *nodes[r.peer].handle(r), NOW)
    batch = m.requests(NOW)
    assert [r.kind for r in batch] == ["headers"] * 4  # 2 per peer
    spans = sorted((r.height, r.height + r.count - 1) for r in batch)
    assert spans == [(0, 99), (100, 199), (200, 299), (300, 399)]
    by_start = {r.height: r.peer for r in batch}
    assert by_start[0] != by_start[100] and by_start[100] != by_start[200]  # alternating
    # Answer the last one first: it waits, verified only when the ones below are.
    for r in sorted(batch, key=lambda r: -r.height):
        m.receive(r.id, *nodes[r.peer].handle(r), NOW)
    assert m.verified_height == 399


def test_until_height_stops_exactly_there(chain: SimChain) -> None:
    run = drive(start(chain, {A: Node(chain), B: Node(chain)}, until_height=333))
    assert_synced(run, chain, 333)
    assert all(r.height + r.count - 1 <= 333 for r in run.requests if r.kind == "headers")


def test_node_may_return_more_or_fewer_than_asked(chain: SimChain) -> None:
    run = drive(start(chain, {A: Node(chain, extra=37), B: Node(chain, extra=0)}, batch=50))
    assert_synced(run, chain)
    assert not run.bans()


def test_resume_from_a_stored_tip(chain: SimChain) -> None:
    tip = chain.headers[300]
    m = sync.SyncMachine(chain.anchor, sync.SyncConfig(batch=100), tip=tip,
                         next_set=chain.sets[301])
    m.add_peer(A)
    run = Run(m, {A: Node(chain)})
    run.store.tip, run.store.headers = 300, {h: chain.headers[h] for h in range(301)}
    drive(run)
    assert_synced(run, chain)
    assert not run.of(sync.Initialize)
    assert min(r.height for r in run.requests if r.kind == "headers") == 301


def test_set_changes_are_followed_and_stored(chain: SimChain) -> None:
    ch = SimChain(400, changes={50: cu.keys(4, offset=20), 230: cu.keys(5, offset=30)})
    run = drive(start(ch, {A: Node(ch), B: Node(ch)}, batch=64))
    assert_synced(run, ch)
    assert {ch.sets[50].hash, ch.sets[230].hash} <= set(run.store.sets)
    assert run.store.next_set_hash == ch.sets[400].hash


def test_anchor_that_is_a_set_change() -> None:
    ch = SimChain(120, changes={1: cu.keys(4, offset=40)})
    run = drive(start(ch, {A: Node(ch)}))
    assert_synced(run, ch)
    init = run.of(sync.Initialize)[0]
    assert init.next_set == ch.sets[1] and init.sets == (ch.sets[0], ch.sets[1])


def test_strict_mode_checks_every_commit() -> None:
    ch = SimChain(40)
    run = drive(start(ch, {A: Node(ch), B: Node(ch)}, strict=True))
    assert_synced(run, ch)
    assert all(r.count == 1 for r in run.requests if r.kind == "headers")


def test_strict_mode_catches_a_forged_middle_commit() -> None:
    ch = SimChain(40)

    class ForgedAt(Node):
        def commit(self, h: int) -> Commit:
            c = super().commit(h)
            if h == 17:
                return Commit(h, c.block_id, tuple((i, bytes(64)) for i, _ in c.signatures))
            return c

    # Skipping mode never looks at commit 17 and accepts the chain.
    assert_synced(drive(start(ch, {A: ForgedAt(ch)})), ch)
    run = drive(start(ch, {A: ForgedAt(ch)}, strict=True))
    assert [b.reason for b in run.bans()] == ["last_commit"]
    assert run.store.tip == 16


# --- §5 rules: the serving peer is banned --------------------------------------------------------

TAMPER_RULES = ["chain_id", "version", "prev_hash", "timestamp", "validators_hash",
                "set_change_commit", "last_commit"]


@pytest.mark.parametrize("rule", TAMPER_RULES)
def test_rule_violation_bans_the_peer_alone(chain: SimChain, rule: str) -> None:
    run = drive(start(chain, {A: Tamper(chain, rule)}))
    assert [b.reason for b in run.bans(A)] == [rule]
    assert run.machine.peers.get(A).state == BANNED
    # Only the honest prefix below the altered header could be stored: nothing of it was.
    assert run.store.tip is None or run.store.tip < 50
    assert not run.of(sync.TipReached)


@pytest.mark.parametrize("rule", TAMPER_RULES)
@pytest.mark.parametrize("seed", [None, 0, 1, 2])
def test_rule_violation_with_an_honest_peer(chain: SimChain, rule: str, seed: int | None
                                            ) -> None:
    run = drive(start(chain, {A: Tamper(chain, rule), B: Node(chain)}), seed=seed)
    assert_synced(run, chain)
    served = any(r.peer == A and r.kind == "headers" for r in run.requests)
    assert served or seed is not None  # in request order both peers get batches
    assert {b.reason for b in run.bans(A)} == ({rule} if served else set())
    assert not run.bans(B)
    assert not run.store.evidence


def test_missing_last_commit_bans(chain: SimChain) -> None:
    class NoCommits(Node):
        def headers_body(self, start: int, count: int) -> dict:
            body = super().headers_body(start, count)
            body["commits"] = []
            return body

    run = drive(start(chain, {A: NoCommits(chain, tip=chain.tip)}))
    assert [b.reason for b in run.bans(A)] == ["last_commit"]


def test_anchor_mismatch_bans() -> None:
    honest = SimChain(200)
    other = SimChain(200, tweak=lambda h, f: {**f, "tx_root": b"\x01" * 32} if h == 0 else f)
    m = sync.SyncMachine(honest.anchor, sync.SyncConfig(batch=100))
    m.add_peer(A)
    run = drive(Run(m, {A: Node(other)}))
    assert [b.reason for b in run.bans(A)] == ["genesis"]  # its /v1/info already says so
    # With an anchor above genesis the info cannot tell: the header check does.
    from appliance.node.model import TrustAnchor
    anchor = TrustAnchor(CHAIN_ID, 10, honest.headers[10].block_id, honest.sets[10])
    other10 = SimChain(200, tweak=lambda h, f: {**f, "tx_root": b"\x01" * 32} if h == 10 else f)
    m = sync.SyncMachine(anchor, sync.SyncConfig(batch=100))
    m.add_peer(A)
    run = drive(Run(m, {A: Node(other10)}))
    assert [b.reason for b in run.bans(A)] == ["anchor"]
    assert run.store.tip is None
    m.add_peer(B)
    run.nodes[B] = Node(honest)
    drive(run)
    assert run.store.tip == 199 and run.store.headers[10] == honest.headers[10]


def test_missing_next_set_bans() -> None:
    ch = SimChain(300, changes={h: cu.keys(4, offset=50 + h // 40) for h in range(40, 300, 40)})

    class NoSets(Node):
        def headers_body(self, start: int, count: int) -> dict:
            body = super().headers_body(start, count)
            body["validator_sets"] = body["validator_sets"][:1]
            return body

    run = drive(start(ch, {A: NoSets(ch), B: Node(ch)}))
    assert_synced(run, ch)
    assert {b.reason for b in run.bans(A)} == {"validator_set_hash"}


def test_headers_not_consecutive_bans(chain: SimChain) -> None:
    class Gap(Node):
        def headers_body(self, start: int, count: int) -> dict:
            body = super().headers_body(start, count)
            del body["headers"][len(body["headers"]) // 2]
            return body

    run = drive(start(chain, {A: Gap(chain)}))
    assert [b.reason for b in run.bans(A)] == ["height"]


@pytest.mark.parametrize("name, node, reason", [
    ("garbage", lambda ch: Raw(ch, 200, b"\xff\xfe not cbor"), "malformed"),
    ("not canonical", lambda ch: Raw(ch, 200, lambda b: b"\x9f" + b[1:]), "malformed"),
    ("oversize", lambda ch: Raw(ch, 200, bytes(sync.MAX_INFO_BYTES + 1)), "oversize"),
    ("http 500", lambda ch: Raw(ch, 500, cbor({"error": "internal", "message": "x"})),
     "http_500_internal"),
    ("http 503 junk", lambda ch: Raw(ch, 503, b"<html>"), "http_503"),
    ("headers 404", lambda ch: Raw(ch, 404, cbor({"error": "not_found", "message": "x"}),
                                   ("headers",)), "withhold"),
    ("empty headers", lambda ch: Raw(ch, 200, cbor({"headers": [], "commits": [],
                                                    "validator_sets": []}), ("headers",)),
     "withhold"),
    ("extra key", lambda ch: Raw(ch, 200, lambda b: cbor({**wire.decode(b), "x": 1}),
                                 ("headers",)), "malformed_keys"),
    ("timeout", lambda ch: Failing(ch, "timeout"), "timeout"),
    ("slow", lambda ch: Failing(ch, "slow"), "slow"),
])
def test_bad_answers_ban(chain: SimChain, name: str, node: Callable, reason: str) -> None:
    run = drive(start(chain, {A: node(chain), B: Node(chain)}))
    assert_synced(run, chain)
    assert run.bans(A) and all(b.reason.startswith(reason) for b in run.bans(A)), run.bans(A)
    assert not run.bans(B)


def test_info_of_another_chain_or_protocol_bans(chain: SimChain) -> None:
    other = SimChain(10, chain_id="other-chain")
    run = drive(start(chain, {A: Node(other), B: Node(chain)}))
    assert [b.reason for b in run.bans(A)] == ["wrong_chain"]

    class Proto2(Node):
        def info(self) -> dict:
            return {**super().info(), "protocol": 2}

    run = drive(start(chain, {A: Proto2(chain), B: Node(chain)}))
    assert [b.reason for b in run.bans(A)] == ["protocol"]
    assert_synced(run, chain)


def test_withholding_peer_is_banned_then_retried(chain: SimChain) -> None:
    class Withhold(Node):
        def headers_body(self, start: int, count: int) -> dict:
            if start > 300:
                return {"headers": [], "commits": [], "validator_sets": []}
            return super().headers_body(start, min(count, 301 - start))

    run = drive(start(chain, {A: Withhold(chain)}))
    assert run.store.tip == 300
    assert [b.reason for b in run.bans(A)] == ["withhold"]
    # Back after its ban, it withholds again: banned for twice as long.
    run.machine.add_peer(B)
    run.nodes[B] = Node(chain)
    drive(run, tick_ms=1)
    assert_synced(run, chain)


# --- bans, backoff, retry, failover -------------------------------------------------------------


def test_unreachable_peer_backs_off_exponentially_then_recovers(chain: SimChain) -> None:
    node = Failing(chain, "unreachable", times=4)
    run = start(chain, {A: node}, ban_base_ms=1000, ban_max_ms=60_000)
    t0 = run.now
    drive(run, tick_ms=1)
    assert_synced(run, chain)
    bans = run.bans(A)
    assert [b.reason for b in bans] == ["unreachable"] * 4
    assert [b.strikes for b in bans] == [1, 2, 3, 4]
    # Each retry comes exactly when the previous ban ran out: 1 + 2 + 4 + 8 s.
    assert [b.until_ms - t0 for b in bans] == [1000, 3000, 7000, 15_000]
    assert run.machine.peers.get(A).strikes == 0  # forgiven once it served verified data


def test_failover_when_a_peer_dies_mid_sync(chain: SimChain) -> None:
    run = start(chain, {A: Node(chain), B: Node(chain)})
    drive(run, until=lambda r: r.store.tip is not None and r.store.tip >= 200)
    run.nodes[A] = Failing(chain, "unreachable")  # A goes away
    drive(run)
    assert_synced(run, chain)
    assert run.machine.peers.get(A).state == BANNED
    assert run.machine.peers.get(B).state == OK


def test_removed_peer_is_forgotten(chain: SimChain) -> None:
    m = machine_for(chain)
    m.add_peer(A, "mdns")
    m.add_peer(A + "/", "static")
    assert len(m.peers) == 1
    reqs = m.requests(NOW)
    m.remove_peer(A, "mdns")
    assert len(m.peers) == 1
    m.remove_peer(A, "static")
    assert len(m.peers) == 0
    assert m.receive(reqs[0].id, 200, b"", NOW) == []  # an abandoned request's late answer


# --- equivocation --------------------------------------------------------------------------------


def fork_of(chain: SimChain, at: int) -> SimChain:
    """The same validators sign a different block at ``at`` and a chain on top of it."""
    return SimChain(len(chain.headers), tx_heights=tuple(chain.txs),
                    tweak=lambda h, f: {**f, "timestamp": f["timestamp"] + 1} if h == at else f)


def resumed(chain: SimChain, tip: int, nodes: dict[str, Node], **config: Any) -> Run:
    """A machine that already stored chain[0..tip] (a daemon that has been running)."""
    config.setdefault("batch", 100)
    stored = {h: chain.headers[h] for h in range(tip + 1)}
    m = sync.SyncMachine(chain.anchor, sync.SyncConfig(**config), tip=chain.headers[tip],
                         next_set=chain.sets[tip + 1], lookup_header=stored.get,
                         lookup_set={s.hash: s for s in chain.sets}.get)
    for url in nodes:
        m.add_peer(url)
    run = Run(m, nodes)
    run.store.tip, run.store.headers = tip, dict(stored)
    return run


@pytest.mark.parametrize("seed", [None, 0, 1])
def test_equivocation_found_through_info_and_kept_as_evidence(chain: SimChain,
                                                             seed: int | None) -> None:
    fork = fork_of(chain, 250)
    # We hold the whole chain; B's /v1/info names another block at our tip height.
    run = drive(resumed(chain, chain.tip, {A: Node(chain), B: Node(fork)}), seed=seed)
    [found] = run.of(sync.EquivocationFound)
    ev = found.evidence
    assert found.theirs_from == B
    assert ev.height == chain.tip
    assert ev.header_a == chain.headers[-1] and ev.header_b == fork.headers[-1]
    for c, h in ((ev.commit_a, ev.header_a), (ev.commit_b, ev.header_b)):
        verify.verify_commit(c, h, chain.sets[chain.tip], CHAIN_ID)
    assert ev.double_signers == (0, 1, 2, 3) and ev.double_signed_power == 4
    assert found.ours_from == A  # our commit there came from A (we had resumed)
    assert run.machine.peers.get(B).state == CONFLICT
    assert not run.bans(B)
    assert run.store.evidence == [ev]
    assert run.of(sync.TipReached)


@pytest.mark.parametrize("seed", [None, 0, 1, 2])
def test_equivocation_found_when_its_batch_does_not_link(chain: SimChain,
                                                        seed: int | None) -> None:
    fork = fork_of(chain, 250)
    run = drive(resumed(chain, 299, {A: Node(chain), B: Node(fork)}), seed=seed)
    assert_synced(run, chain)  # we keep the branch we had verified
    found = run.of(sync.EquivocationFound)
    if any(r.peer == B and r.kind == "headers" for r in run.requests):
        [found] = found
        ev = found.evidence
        assert ev.header_a == chain.headers[ev.height]
        assert ev.header_b == fork.headers[ev.height]
        assert run.machine.peers.get(B).state == CONFLICT
    assert not run.bans()


def test_equivocation_evidence_waits_for_our_commit(chain: SimChain) -> None:
    fork = fork_of(chain, 250)
    # We resumed at 299 (our commit there is not in memory) and only B, on the fork, answers.
    run = drive(resumed(chain, 299, {B: Node(fork)}))
    assert run.machine.peers.get(B).state == CONFLICT
    assert not run.of(sync.EquivocationFound) and not run.bans()
    run.machine.add_peer(A)
    run.nodes[A] = Node(chain)
    drive(run)
    [found] = run.of(sync.EquivocationFound)
    assert found.evidence.height == 299 and found.ours_from == A
    assert_synced(run, chain)


def test_conflicting_header_without_valid_commit_is_just_a_ban(chain: SimChain) -> None:
    fork = fork_of(chain, 250)
    bad = SimChain(len(chain.headers), tweak=lambda h, f: {**f, "timestamp": f["timestamp"] + 1}
                   if h == 250 else f, signers=lambda h: OTHER_KEYS)
    del fork
    run = drive(resumed(chain, 400, {A: Node(chain), B: Node(bad)}))
    assert_synced(run, chain)
    assert not run.of(sync.EquivocationFound)
    assert [b.reason for b in run.bans(B)] == ["commit"]


def test_equivocation_between_pending_segments_keeps_ours(chain: SimChain) -> None:
    fork = fork_of(chain, 520)
    run = drive(start(chain, {A: Node(chain), B: Node(fork)}), seed=1)
    found = run.of(sync.EquivocationFound)
    assert found, [type(e).__name__ for e in run.events]
    ours = run.store.headers[run.store.tip]
    theirs_peer = found[0].theirs_from
    # Whichever branch we verified first is kept, whole and linked; the other peer is out.
    assert run.machine.peers.get(theirs_peer).state == CONFLICT
    assert run.store.tip == chain.tip
    assert ours.block_id in (chain.headers[-1].block_id, fork.headers[-1].block_id)


# --- transactions and proofs ----------------------------------------------------------------------


class BadProof(Node):
    def proof(self, h: int, i: int) -> dict:
        p = super().proof(h, i)
        p["path"] = [bytes(32)] * len(p["path"])
        return p


def test_tx_with_a_valid_proof(chain: SimChain) -> None:
    run = drive(start(chain, {A: Node(chain)}))
    tx = chain.txs[120][1]
    run.machine.fetch_tx(tx.tx_id)
    drive(run)
    [ok] = run.of(sync.TxVerified)
    assert ok.tx == tx and ok.height == 120


def test_bad_proof_bans_and_another_peer_is_asked(chain: SimChain) -> None:
    run = drive(start(chain, {A: BadProof(chain)}))
    tx = chain.txs[400][0]
    run.machine.fetch_tx(tx.tx_id)
    drive(run)
    assert [b.reason for b in run.bans(A)] == ["proof"]
    assert [e.reason for e in run.of(sync.TxNotFound)]
    run.machine.add_peer(B)
    run.nodes[B] = Node(chain)
    drive(run)
    run.machine.fetch_tx(tx.tx_id)
    drive(run)
    assert [e.peer for e in run.of(sync.TxVerified)] == [B]


def test_tx_not_found(chain: SimChain) -> None:
    run = drive(start(chain, {A: Node(chain), B: Node(chain)}))
    run.machine.fetch_tx(b"\x05" * 32)
    drive(run)
    assert [e.tx_id for e in run.of(sync.TxNotFound)] == [b"\x05" * 32]
    assert not run.bans()


# --- sparse commits: a batch without a commit on its last header is joined -----------------------


def test_commitless_ranges_are_joined_from_the_same_peer() -> None:
    ch = SimChain(900)

    class Sparse(Node):
        """Keeps commits at multiples of 300 and the tip, like --commit-every 300."""

        def headers_body(self, start: int, count: int) -> dict:
            body = super().headers_body(start, count)
            end = body["headers"][-1]["height"]
            if end % 300 and end != self.tip:
                body["commits"] = [c for c in body["commits"] if c["height"] != end]
            return body

    run = drive(start(ch, {A: Sparse(ch), B: Sparse(ch)}, batch=120))
    assert_synced(run, ch)
    assert not run.bans()
    assert any(r.join is not None for r in run.requests)
    for e in run.of(sync.AppendSegment):
        assert (e.headers[-1].height % 300 == 0) or e.headers[-1].height == ch.tip


# --- decoders: typed errors only -----------------------------------------------------------

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20)

DECODERS = [sync.decode_info, sync.decode_headers, sync.decode_validators,
            sync.decode_tx_response, sync.decode_error, decode_commit]


def _valid_bodies() -> list[bytes]:
    ch = SimChain(5, tx_heights=(2,))
    n = Node(ch)
    return [cbor(n.info()), cbor(n.headers_body(0, 5)), cbor(n.commit(3).to_obj()),
            cbor({"height": 1, "validators": ch.sets[1].to_obj()}),
            cbor({"tx": ch.txs[2][0].to_obj(), "height": 2, "proof": n.proof(2, 0)}),
            cbor({"error": "not_found", "message": "m"})]


VALID = _valid_bodies()


@pytest.mark.parametrize("decode", DECODERS, ids=lambda d: d.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300))
def test_decoders_fuzz_bytes(decode: Callable, data: bytes) -> None:
    try:
        decode(data)
    except MalformedError:
        pass


@pytest.mark.parametrize("decode", DECODERS, ids=lambda d: d.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=cbor_values)
def test_decoders_fuzz_structures(decode: Callable, obj: Any) -> None:
    try:
        decode(wire.encode(obj))
    except MalformedError:
        pass


@pytest.mark.parametrize("decode", DECODERS, ids=lambda d: d.__name__)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, len(VALID) - 1), pos=st.integers(0, 10**6),
       byte=st.integers(0, 255), cut=st.booleans())
def test_decoders_fuzz_mutations(decode: Callable, which: int, pos: int, byte: int,
                                 cut: bool) -> None:
    body = bytearray(VALID[which])
    pos %= len(body)
    if cut:
        del body[pos:]
    else:
        body[pos] = byte
    try:
        decode(bytes(body))
    except MalformedError:
        pass


def test_decoders_accept_their_own_answers() -> None:
    info = sync.decode_info(VALID[0])
    assert info.chain_id == CHAIN_ID and info.protocol == 1
    resp = sync.decode_headers(VALID[1])
    assert len(resp.headers) == 5 and set(resp.commits) == {4}
    assert decode_commit(VALID[2]).height == 3
    assert sync.decode_validators(VALID[3])[0] == 1
    assert sync.decode_tx_response(VALID[4])[1] == 2
    assert sync.decode_error(VALID[5]) == ("not_found", "m")


def test_decoders_refuse_oversize_before_parsing() -> None:
    with pytest.raises(MalformedError) as e:
        sync.decode_info(bytes(sync.MAX_INFO_BYTES + 1))
    assert e.value.reason == "oversize"
    with pytest.raises(MalformedError) as e:
        sync.decode_headers(b"\x00" * (8 * 1024 * 1024 + 1))
    assert e.value.reason == "oversize"


def test_until_height_inside_an_extended_range() -> None:
    """A node extends a range to its next commit: the verified prefix up to H is kept."""
    ch = SimChain(300, changes={150: cu.keys(4, offset=60)})
    run = drive(start(ch, {A: Node(ch, extra=40)}, until_height=130, batch=100))
    assert_synced(run, ch, 130)
    assert run.store.next_set_hash == ch.sets[131].hash
    run = drive(start(ch, {A: Node(ch, extra=80)}, until_height=170, batch=100))
    assert_synced(run, ch, 170)
    assert run.store.next_set_hash == ch.sets[171].hash and ch.sets[171] != ch.sets[0]
    assert ch.sets[150].hash in run.store.sets


@pytest.mark.parametrize("what, reason", [("signature", "tx_signature"),
                                          ("another tx", "proof"), ("sender", "sender")])
def test_bad_transaction_bans(chain: SimChain, what: str, reason: str) -> None:
    good = chain.txs[120][0]
    other = chain.txs[120][1]

    class BadTx(Node):
        def handle(self, req: sync.Request) -> tuple[int, bytes]:
            if req.kind != "tx":
                return super().handle(req)
            tx = good.to_obj()
            if what == "signature":
                tx["signature"] = bytes(64)
            elif what == "sender":
                tx["public_key"] = other.public_key
            else:
                tx = other.to_obj()
            return 200, cbor({"tx": tx, "height": 120, "proof": self.proof(120, 0)})

    run = drive(start(chain, {A: BadTx(chain), B: Node(chain)}))
    run.machine.fetch_tx(good.tx_id)
    drive(run)
    [ok] = run.of(sync.TxVerified)
    assert ok.tx == good
    if ok.peer == B and any(r.peer == A and r.kind == "tx" for r in run.requests):
        assert [b.reason for b in run.bans(A)] == [reason]
    run2 = drive(start(chain, {A: BadTx(chain)}))
    run2.machine.fetch_tx(good.tx_id)
    drive(run2)
    assert [b.reason for b in run2.bans(A)] == [reason] and run2.of(sync.TxNotFound)
