"""Transactions in the sync machine and the pure helpers of appliance/node/sync.py, sans-I/O.

The machine's side: a transaction above the stored tip waits for the sync (and makes the
machine ask the peer's /v1/info at once), a transaction below the store's window is checked
through checkpoints (a range of headers that must hash-link between two known block_ids),
``poll_info``, ``ban_peer``, ``cancel_tx``. The adapter's side: the decisions on answers to
``POST /v1/tx`` (``judge_submit``), ``/v1/wait`` and ``/v1/lookup`` (decoders, fuzzed:
``MalformedError`` only), a lookup hit's check, the old-header check. The network and the
in-memory chains are those of test_sync.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sync import (
    BadProof,
    Node,
    Run,
    SimChain,
    Store,
    cbor,
    cbor_values,
    drive,
    make_txs,
)

from appliance import wire
from appliance.node import sync
from appliance.node.errors import MalformedError, VerificationError
from appliance.node.model import Header, SignedTx, TxBody
from appliance.node.peers import BANNED, OK

A, B = "http://a.test:8080", "http://b.test:8080"
WINDOW, EVERY = 50, 64
TX_HEIGHTS = (5, 120, 128, 630)


@pytest.fixture(scope="module")
def chain() -> SimChain:
    return SimChain(650, tx_heights=TX_HEIGHTS)


# --- a store that prunes, with checkpoints (HeaderStore's policy, in memory) ----------------------


@dataclass
class PrunedStore(Store):
    """Keeps the last ``window`` headers, and the block_ids of the anchor and of every
    multiple of ``every`` (like HeaderStore)."""

    window: int = WINDOW
    every: int = EVERY
    checkpoints: dict[int, bytes] = field(default_factory=dict)

    def apply(self, ev: sync.Event) -> None:
        super().apply(ev)
        if isinstance(ev, sync.Initialize):
            self.checkpoints[ev.header.height] = ev.header.block_id
        elif isinstance(ev, sync.AppendSegment):
            for h in ev.headers:
                if h.height % self.every == 0:
                    self.checkpoints[h.height] = h.block_id
        assert self.tip is not None or not self.headers
        if self.tip is not None:
            for h in [h for h in self.headers if h <= self.tip - self.window]:
                del self.headers[h]

    def around(self, height: int) -> tuple[tuple[int, bytes], tuple[int, bytes]] | None:
        if self.tip is None or not 0 <= height <= self.tip:
            return None
        known = {**self.checkpoints, **{h: hd.block_id for h, hd in self.headers.items()}}
        lo = max(h for h in known if h <= height)
        hi = min(h for h in known if h >= height)
        return (lo, known[lo]), (hi, known[hi])


def start(chain: SimChain, nodes: dict[str, Node], *, checkpoints: bool = True,
          **config: Any) -> Run:
    config.setdefault("batch", 100)
    config.setdefault("ban_base_ms", 1000)
    store = PrunedStore()
    m = sync.SyncMachine(chain.anchor, sync.SyncConfig(**config),
                         lookup_header=store.headers.get, lookup_set=store.sets.get,
                         lookup_checkpoints=store.around if checkpoints else None)
    for url in nodes:
        m.add_peer(url)
    return Run(m, nodes, store)


def fetch(run: Run, tx_id: bytes) -> Run:
    run.machine.fetch_tx(tx_id)
    return drive(run)


def ranges(run: Run, peer: str | None = None) -> list[sync.Request]:
    return [r for r in run.requests if r.kind == sync.RANGE and (peer is None or r.peer == peer)]


# --- nodes that misbehave on checkpoint ranges only ----------------------------------------------


class BadRange(Node):
    """Honest, except that a range of headers asked for an old transaction has one header
    altered (and the later ones re-linked to it): the range no longer reaches the checkpoint."""

    def handle(self, req: sync.Request) -> tuple[int, bytes]:
        status, body = super().handle(req)
        if req.kind != sync.RANGE or status != 200:
            return status, body
        doc = wire.decode(body)
        hs = [Header.from_obj(h) for h in doc["headers"]]
        out: list[Header] = []
        for i, h in enumerate(hs):
            f = h.to_obj()
            if out:
                f["prev_hash"] = out[-1].block_id
            if i == len(hs) // 2:
                f["timestamp"] += 1
            out.append(Header(**f))
        doc["headers"] = [h.to_obj() for h in out]
        return status, cbor(doc)


class Piecemeal(Node):
    """Serves at most 7 headers per range answer (a node may return fewer than asked)."""

    def handle(self, req: sync.Request) -> tuple[int, bytes]:
        if req.kind == sync.RANGE:
            req = sync.Request(req.id, req.peer, req.kind,
                               f"/v1/headers?from={req.height}&count={min(req.count, 7)}",
                               req.max_bytes, req.height, min(req.count, 7))
        return super().handle(req)


class NoRange(Node):
    """Answers 404 to checkpoint ranges (withholding what it has)."""

    def handle(self, req: sync.Request) -> tuple[int, bytes]:
        if req.kind == sync.RANGE:
            return 404, cbor({"error": "not_found", "message": "-"})
        return super().handle(req)


# --- old transactions: through checkpoints ---------------------------------------------------


@pytest.mark.parametrize("height", [5, 120, 128])
def test_old_tx_is_verified_through_checkpoints(chain: SimChain, height: int) -> None:
    run = drive(start(chain, {A: Node(chain)}))
    assert run.store.tip == chain.tip and height not in run.store.headers
    tx = chain.txs[height][1]
    fetch(run, tx.tx_id)
    [ok] = run.of(sync.TxVerified)
    assert (ok.tx, ok.height, ok.peer) == (tx, height, A)
    assert ok.block_id == chain.headers[height].block_id and ok.leaf_index == 1
    assert ok.time_ms == chain.headers[height].timestamp
    assert ok.inclusion == sync.VerifiedInclusion(tx, tx.tx_id, height, ok.block_id, 1,
                                                  ok.time_ms)
    [r] = ranges(run)
    if height % EVERY == 0:  # its own block_id is a checkpoint: that one header
        assert (r.height, r.count) == (height, 1)
    else:
        lo = height - height % EVERY
        assert (r.height, r.count) == (lo + 1, EVERY)
    assert not run.bans()


def test_tx_in_the_window_needs_no_range(chain: SimChain) -> None:
    run = drive(start(chain, {A: Node(chain)}))
    fetch(run, chain.txs[630][0].tx_id)
    assert run.of(sync.TxVerified) and not ranges(run)


def test_a_range_that_does_not_link_bans_and_another_peer_serves_it(chain: SimChain) -> None:
    run = drive(start(chain, {A: BadRange(chain), B: Node(chain)}))
    tx = chain.txs[120][0]
    fetch(run, tx.tx_id)
    [ok] = run.of(sync.TxVerified)
    assert ok.tx == tx and ok.block_id == chain.headers[120].block_id
    assert [r.peer for r in ranges(run)] == [A, B]  # A first (URL order), then B
    assert [b.reason for b in run.bans(A)] == ["prev_hash"]
    assert not run.bans(B)


def test_a_range_no_peer_serves_leaves_the_tx_not_verifiable(chain: SimChain) -> None:
    run = drive(start(chain, {A: BadRange(chain)}))
    tx = chain.txs[120][0]
    fetch(run, tx.tx_id)
    assert not run.of(sync.TxVerified)
    [nf] = run.of(sync.TxNotFound)
    assert nf.served_by == (A,) and nf.absent == ()
    assert "headers 65..128" in nf.reason
    assert [b.reason for b in run.bans(A)] == ["prev_hash"]


def test_a_range_in_pieces_is_continued(chain: SimChain) -> None:
    run = drive(start(chain, {A: Piecemeal(chain)}))
    fetch(run, chain.txs[120][1].tx_id)
    assert run.of(sync.TxVerified)
    assert len(ranges(run)) == 10  # 64 headers, 7 at a time
    assert [r.height for r in ranges(run)] == list(range(65, 129, 7))


def test_a_withheld_range_bans(chain: SimChain) -> None:
    run = drive(start(chain, {A: NoRange(chain), B: Node(chain)}))
    fetch(run, chain.txs[5][0].tx_id)
    assert run.of(sync.TxVerified)
    assert ranges(run, A) and [b.reason for b in run.bans(A)] == ["withhold"]


def test_bad_proof_of_an_old_tx_bans_its_server(chain: SimChain) -> None:
    run = drive(start(chain, {A: BadProof(chain)}))
    fetch(run, chain.txs[120][0].tx_id)
    assert [b.reason for b in run.bans(A)] == ["proof"]
    [nf] = run.of(sync.TxNotFound)
    assert nf.served_by == (A,)


def test_without_checkpoints_an_old_tx_cannot_be_verified(chain: SimChain) -> None:
    run = drive(start(chain, {A: Node(chain)}, checkpoints=False))
    fetch(run, chain.txs[120][0].tx_id)
    [nf] = run.of(sync.TxNotFound)
    assert nf.served_by == (A,) and "no verified header or checkpoint" in nf.reason
    assert not run.bans()


# --- transactions above the stored tip, and the chain growing ----------------------------------


def test_tx_above_the_tip_waits_for_the_sync_and_asks_info_at_once(chain: SimChain) -> None:
    node = Node(chain, tip=100)
    run = drive(start(chain, {A: node}))
    assert run.store.tip == 100
    node.tip = chain.tip  # the chain grows; the machine's next /v1/info poll is 10 s away
    tx = chain.txs[120][0]
    fetch(run, tx.tx_id)  # the clock does not move
    [ok] = run.of(sync.TxVerified)
    assert ok.height == 120 and ok.block_id == chain.headers[120].block_id
    assert run.store.tip == chain.tip
    assert not ranges(run)  # its header came with the sync, not through checkpoints


def test_header_stored_in_the_same_step_is_found(chain: SimChain) -> None:
    """The header of a waiting tx arrives in a segment handed out in the same step, before the
    adapter has written it: the machine still has it (no "header not held")."""
    node = Node(chain, tip=100)
    run = start(chain, {A: node})
    lookups: list[int] = []
    store = run.store

    def lookup(h: int) -> Header | None:
        lookups.append(h)
        return store.headers.get(h)

    run.machine._lookup_header = lookup
    drive(run)
    node.tip = chain.tip
    fetch(run, chain.txs[120][1].tx_id)
    [ok] = run.of(sync.TxVerified)
    assert ok.height == 120 and not run.of(sync.TxNotFound)
    assert 120 not in lookups


def test_poll_info_lets_the_sync_follow_at_once(chain: SimChain) -> None:
    node = Node(chain, tip=100)
    run = drive(start(chain, {A: node}))
    node.tip = 300
    drive(run)
    assert run.store.tip == 100  # nothing asked: /v1/info is not due yet
    run.machine.poll_info()
    drive(run)
    assert run.store.tip == 300


def test_not_found_lists_who_said_so(chain: SimChain) -> None:
    run = drive(start(chain, {A: Node(chain), B: Node(chain)}))
    fetch(run, b"\x07" * 32)
    [nf] = run.of(sync.TxNotFound)
    assert set(nf.absent) == {A, B} and nf.served_by == ()


def test_ban_peer_and_cancel_tx(chain: SimChain) -> None:
    run = drive(start(chain, {A: Node(chain), B: Node(chain)}))
    m = run.machine
    m.ban_peer(A, "lookup_digest", run.now, detail="listed a tx of another digest")
    [ban] = m.events()
    assert (ban.peer, ban.reason) == (A, "lookup_digest")
    assert m.peers.get(A).state == BANNED and m.peers.get(B).state == OK
    tx = chain.txs[630][0]
    m.fetch_tx(tx.tx_id)
    [req] = [r for r in m.requests(run.now) if r.kind == sync.TX]
    m.cancel_tx(tx.tx_id)
    status, body = run.nodes[req.peer].handle(req)
    assert m.receive(req.id, status, body, run.now) == []
    assert m.requests(run.now) == [] and m.in_flight == 0


# --- pure helpers ---------------------------------------------------------------------------


TX_ID = b"\x11" * 32


def err(code: str, message: str = "m") -> bytes:
    return cbor({"error": code, "message": message})


@pytest.mark.parametrize("status, body, outcome, code", [
    (202, cbor({"tx_id": TX_ID}), sync.ACCEPTED, ""),
    (400, err("duplicate"), sync.ACCEPTED, "duplicate"),
    (400, err("bad_tx"), sync.REJECTED, "bad_tx"),
    (400, err("bad_signature"), sync.REJECTED, "bad_signature"),
    (400, err("unknown_sender"), sync.REJECTED, "unknown_sender"),
    (503, err("busy"), sync.RETRY, "http_503_busy"),
    (202, cbor({"tx_id": b"\x22" * 32}), sync.BAN, "tx_id"),
    (202, b"\xff", sync.BAN, "malformed"),
    (202, cbor({"tx_id": TX_ID, "x": 1}), sync.BAN, "malformed_keys"),
    (200, cbor({"tx_id": TX_ID}), sync.BAN, "http_200"),
    (400, err("bad_request"), sync.BAN, "http_400_bad_request"),
    (400, b"garbage", sync.BAN, "http_400"),
    (413, err("too_large"), sync.BAN, "http_413_too_large"),
    (500, err("internal"), sync.BAN, "http_500_internal"),
])
def test_judge_submit(status: int, body: bytes, outcome: str, code: str) -> None:
    v = sync.judge_submit(status, body, TX_ID)
    assert (v.outcome, v.code) == (outcome, code)
    if outcome == sync.REJECTED:
        assert v.message == "m"


@settings(max_examples=300, deadline=None)
@given(status=st.integers(0, 999), body=st.binary(max_size=200) | cbor_values.map(wire.encode))
def test_judge_submit_never_raises(status: int, body: bytes) -> None:
    v = sync.judge_submit(status, body, TX_ID)
    assert v.outcome in (sync.ACCEPTED, sync.REJECTED, sync.RETRY, sync.BAN)
    if v.outcome == sync.ACCEPTED:
        assert status in (202, 400)


VALID = {
    sync.decode_submit_response: cbor({"tx_id": TX_ID}),
    sync.decode_wait_response: cbor({"height": 12345}),
    sync.decode_lookup_response: cbor({"tx_ids": [TX_ID, b"\x22" * 32]}),
}
DECODERS = list(VALID)


def test_decoders_accept_valid_answers() -> None:
    assert sync.decode_submit_response(VALID[sync.decode_submit_response]) == TX_ID
    assert sync.decode_wait_response(VALID[sync.decode_wait_response]) == 12345
    assert sync.decode_lookup_response(VALID[sync.decode_lookup_response]) == (
        TX_ID, b"\x22" * 32)
    assert sync.decode_lookup_response(cbor({"tx_ids": []})) == ()


@pytest.mark.parametrize("body, reason", [
    (cbor({"tx_ids": [TX_ID, TX_ID]}), "duplicate"),
    (cbor({"tx_ids": [b"\x01" * 31]}), "type"),
    (cbor({"tx_ids": TX_ID}), "type"),
    (cbor({"tx_ids": [], "more": 1}), "keys"),
    (cbor({"tx_ids": [i.to_bytes(32, "big") for i in range(sync.MAX_LOOKUP_IDS + 1)]}),
     "oversize"),
])
def test_lookup_decoder_refuses(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedError) as e:
        sync.decode_lookup_response(body)
    assert e.value.reason == reason


def test_lookup_decoder_limits_the_count() -> None:
    ids = [i.to_bytes(32, "big") for i in range(sync.MAX_LOOKUP_IDS)]
    assert len(sync.decode_lookup_response(cbor({"tx_ids": ids}))) == sync.MAX_LOOKUP_IDS


def test_wait_decoder_refuses() -> None:
    for obj in ({"height": -1}, {"height": True}, {"height": 1, "tip": 2}, [1], {}):
        with pytest.raises(MalformedError):
            sync.decode_wait_response(cbor(obj))
    with pytest.raises(MalformedError) as e:
        sync.decode_wait_response(bytes(sync.MAX_WAIT_BYTES + 1))
    assert e.value.reason == "oversize"


@pytest.mark.parametrize("decode", DECODERS, ids=lambda d: d.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300))
def test_decoders_fuzz_bytes(decode: Any, data: bytes) -> None:
    try:
        decode(data)
    except MalformedError:
        pass


@pytest.mark.parametrize("decode", DECODERS, ids=lambda d: d.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=cbor_values | st.fixed_dictionaries(
    {}, optional={"tx_ids": st.lists(st.binary(min_size=30, max_size=33), max_size=4),
                  "height": st.integers(-(2**64), 2**64 - 1), "tx_id": st.binary(max_size=40)}))
def test_decoders_fuzz_structures(decode: Any, obj: Any) -> None:
    try:
        decode(wire.encode(obj))
    except MalformedError:
        pass


@pytest.mark.parametrize("decode", DECODERS, ids=lambda d: d.__name__)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pos=st.integers(0, 10**6), byte=st.integers(0, 255), cut=st.booleans())
def test_decoders_fuzz_mutations(decode: Any, pos: int, byte: int, cut: bool) -> None:
    body = bytearray(VALID[decode])
    pos %= len(body)
    if cut:
        del body[pos:]
    else:
        body[pos] = byte
    try:
        decode(bytes(body))
    except MalformedError:
        pass


def _with(tx: SignedTx, **changes: Any) -> SignedTx:
    b = tx.body
    fields = {"chain_id": b.chain_id, "type": b.type, "timestamp": b.timestamp,
              "sender": b.sender, "data": b.data, "nonce": b.nonce, "recipient": b.recipient,
              "memo": b.memo, **changes}
    return SignedTx(TxBody(**fields), tx.alg, tx.public_key, tx.signature)


def test_check_lookup_hit() -> None:
    tx = make_txs(9)[0]
    digest = tx.body.data["digest"]
    assert sync.check_lookup_hit(tx, digest) is None
    assert sync.check_lookup_hit(tx, b"\x00" * 32) == "lookup_digest"
    assert sync.check_lookup_hit(_with(tx, type="device.enroll"), digest) == "lookup_type"
    assert sync.check_lookup_hit(_with(tx, data={"kind": "k"}), digest) == "lookup_digest"
    assert sync.check_lookup_hit(_with(tx, data={"digest": digest.hex()}), digest) \
        == "lookup_digest"


def test_check_old_header(chain: SimChain) -> None:
    hs = chain.headers
    lower, upper = (64, hs[64].block_id), (128, hs[128].block_id)
    assert sync.check_old_header(lower, upper, hs[65:129], 100) == hs[100]
    assert sync.check_old_header(upper, upper, [hs[128]], 128) == hs[128]
    bad = [
        (lower, upper, hs[65:128], 100),  # one short
        (lower, upper, hs[66:129], 100),  # the first one missing
        (upper, upper, [hs[127]], 128),  # not the header at the height
        ((128, hs[127].block_id), upper, [hs[128]], 128),  # not the known block_id
        (lower, upper, hs[65:129], 130),  # outside the range
    ]
    for lo, hi, headers, h in bad:
        with pytest.raises(VerificationError):
            sync.check_old_header(lo, hi, headers, h)


def test_verified_inclusion_to_json() -> None:
    tx = _with(make_txs(3)[0], memo="a note", recipient="office-9")
    inc = sync.VerifiedInclusion(tx, tx.tx_id, 3, b"\xab" * 32, 1, 1_700_000_003_000)
    doc = inc.to_json()
    assert doc["tx_id"] == tx.tx_id.hex() and doc["block_id"] == "ab" * 32
    assert (doc["height"], doc["leaf_index"], doc["type"]) == (3, 1, "evidence.deposit")
    assert doc["sender"] == tx.body.sender.hex()
    assert doc["data"] == {"digest": tx.body.data["digest"].hex(), "kind": "k", "issuer": "o"}
    assert (doc["memo"], doc["recipient"]) == ("a note", "office-9")
    json.dumps(doc)
