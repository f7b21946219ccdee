"""The sans-I/O FISCO sync machine driven without sockets: answers in any order, bans, and
hypothesis over every answer it judges (a ban, never an exception)."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.node.fisco.anchor import decode_anchor
from appliance.node.fisco.sync import (
    AppendSegment,
    BanPeer,
    FiscoSync,
    FiscoSyncConfig,
    Initialize,
    TipReached,
)
from hil.fisco_node import FiscoChain, FiscoNode

NOW = 1_800_000_000_000
URL = "http://127.0.0.1:1"


@pytest.fixture(scope="module")
def chain() -> FiscoChain:
    return FiscoChain(120, 4, seed="machine")


def answer(node: FiscoNode, body: bytes) -> bytes:
    req = json.loads(body)
    if isinstance(req, list):
        return json.dumps([node._answer(c)[0] for c in req]).encode()
    return json.dumps(node._answer(req)[0]).encode()


def machine(chain: FiscoChain, **kw) -> FiscoSync:
    m = FiscoSync(decode_anchor(json.dumps(chain.anchor(0)).encode()),
                  FiscoSyncConfig(**kw))
    m.add_peer(URL)
    return m


def drive(m: FiscoSync, node: FiscoNode, rng: random.Random, steps: int = 500) -> list:
    events: list = []
    queue: list = []
    for _ in range(steps):
        queue += m.requests(NOW)
        if not queue or any(isinstance(e, TipReached) for e in events):
            break
        q = queue.pop(rng.randrange(len(queue)))
        events += m.receive(q.id, answer(node, q.body), NOW)
    return events


@pytest.mark.parametrize("seed", range(4))
def test_answers_in_any_order_give_the_chain_in_order(chain, seed) -> None:
    m = machine(chain, batch=7, lookahead=5, per_peer=3)
    events = drive(m, FiscoNode(chain, log=print), random.Random(seed))
    assert isinstance(events[0], Initialize) and isinstance(events[-1], TipReached)
    blocks = [b for e in events if isinstance(e, AppendSegment) for b in e.blocks]
    assert [(n, h) for n, h, _ in blocks] == list(enumerate(chain.hashes))[1:]
    assert not any(isinstance(e, BanPeer) for e in events)


def test_a_bad_range_is_asked_again_of_another_peer(chain) -> None:
    m = machine(chain, batch=10)
    m.add_peer("http://127.0.0.1:2")
    honest, forger = FiscoNode(chain, log=print), FiscoNode(chain, misbehave="forge-commit@5",
                                                            log=print)
    events: list = []
    for _ in range(300):
        qs = m.requests(NOW)
        if not qs or m.done:
            break
        for q in qs:
            node = forger if q.peer.endswith(":2") else honest
            events += m.receive(q.id, answer(node, q.body), NOW)
    bans = [e for e in events if isinstance(e, BanPeer)]
    assert [(b.peer, b.reason) for b in bans] == [("http://127.0.0.1:2", "signature")]
    assert m.done and m.tip.number == chain.tip and m.tip.block_hash == chain.hashes[-1]


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _ready(chain: FiscoChain):
    """A machine that has the anchor and a blocks request out, and that request."""
    m = machine(chain, batch=5)
    node = FiscoNode(chain, log=print)
    for _ in range(3):
        for q in m.requests(NOW):
            if q.kind == "blocks":
                return m, q, answer(node, q.body)
            m.receive(q.id, answer(node, q.body), NOW)
    raise AssertionError("no blocks request")


@FUZZ
@given(st.binary(max_size=300) | st.builds(lambda v: json.dumps(v).encode(), st.recursive(
    st.none() | st.integers() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4))))
def test_any_answer_to_any_request_bans_or_passes_never_raises(body: bytes) -> None:
    chain = FiscoChain(12, 4, seed="machine-fuzz")
    m = machine(chain)
    (q,) = m.requests(NOW)
    for e in m.receive(q.id, body, NOW):
        assert isinstance(e, BanPeer | TipReached)
    m, q, _ = _ready(chain)
    events = m.receive(q.id, body, NOW)
    assert events and all(isinstance(e, BanPeer) for e in events)
    assert m.tip.number == 0


@FUZZ
@given(st.data())
def test_mutated_block_answers_are_banned_and_nothing_is_appended(data) -> None:
    chain = FiscoChain(12, 4, seed="machine-fuzz")
    m, q, good = _ready(chain)
    raw = bytearray(good)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    events = m.receive(q.id, bytes(raw), NOW)
    appended = [e for e in events if isinstance(e, AppendSegment)]
    if appended:  # a change the hash does not cover (the "hash" field, JSON spacing ...)
        assert [(n, h) for n, h, _ in appended[0].blocks] == \
            list(enumerate(chain.hashes))[1:6]
    else:
        assert all(isinstance(e, BanPeer) for e in events) and m.tip.number == 0


def test_empty_blocks_hash_their_set_zero_roots(chain) -> None:
    """FISCO sets an empty block's roots to 32 zero bytes and its gas to "0" (they are in
    the hash); genesis leaves them unset (empty). Both verify and the stored preimage is the
    one that hashes to the verified hash."""
    m = machine(chain, batch=3)  # ranges end at 3, 6, 9 ...: empty blocks get the quorum check
    events = drive(m, FiscoNode(chain, log=print), random.Random(0))
    blocks = {n: pre for e in events if isinstance(e, AppendSegment) for n, _, pre in e.blocks}
    pre = blocks[3]  # version 4, parent 8 + 32, then txsRoot, receiptsRoot, stateRoot
    assert pre[44:108] == bytes(64) and pre[108:140] == chain.blocks[3].state_root
    assert pre[140:149] == (3).to_bytes(8, "big") + b"0"  # number, then gasUsed "0"
    init = next(e for e in events if isinstance(e, Initialize))
    assert bytes(32) not in init.preimage[:80]  # genesis: the roots are absent


LOW, HIGH = "http://127.0.0.1:1", "http://127.0.0.1:2"


@pytest.mark.parametrize("high", ["liar", "gone"])
def test_a_lower_peer_is_asked_for_what_it_has_when_the_highest_claim_goes(chain, high) -> None:
    """LOW honestly has blocks 0..60 only; HIGH claims more ("liar": 10**6, and answers
    garbage; "gone": the true tip, then it is unreachable). Once HIGH is banned the target is
    60, and the blocks above the first range must be asked of LOW, cut at what it has."""
    m = machine(chain, batch=50)
    m.add_peer(HIGH)
    low = FiscoNode(FiscoChain(61, 4, seed="machine"), log=print)  # the same chain, shorter
    honest_high = FiscoNode(chain, log=print)
    events: list = []
    asked: list = []
    for _ in range(100):
        qs = m.requests(NOW)
        if not qs or m.done:
            break
        for q in qs:
            if q.kind == "blocks":
                asked.append((q.peer, q.start, q.start + q.count - 1))
            if q.peer == LOW:
                events += m.receive(q.id, answer(low, q.body), NOW)
            elif q.kind == "number":
                body = b'{"jsonrpc":"2.0","id":%d,"result":1000000}' % q.id if high == "liar" \
                    else answer(honest_high, q.body)
                events += m.receive(q.id, body, NOW)
            elif q.kind == "anchor":
                events += m.receive(q.id, answer(honest_high, q.body), NOW)
            elif high == "liar":
                events += m.receive(q.id, b"not json", NOW)
            else:
                events += m.fail(q.id, "unreachable", NOW)
    bans = [(e.peer, e.reason) for e in events if isinstance(e, BanPeer)]
    assert bans == [(HIGH, "malformed_json" if high == "liar" else "unreachable")], bans
    assert all(last <= 60 for peer, _, last in asked if peer == LOW), asked
    assert m.done and m.tip.number == 60 and m.tip.block_hash == chain.hashes[60]
    blocks = [b for e in events if isinstance(e, AppendSegment) for b in e.blocks]
    assert [(n, h) for n, h, _ in blocks] == list(enumerate(chain.hashes))[1:61]


@pytest.mark.parametrize("back_first", [False, True])
def test_verified_blocks_do_not_forgive_a_peer_banned_since_it_served_them(chain,
                                                                           back_first) -> None:
    """BAD serves one range right and the next one wrong: it is banned. When its good range
    is verified later (while it is banned, or once its ban has run out), its strikes stay:
    its next ban is twice as long."""
    m = machine(chain, batch=10, ban_base_ms=2_000, ban_max_ms=60_000)
    bad = "http://127.0.0.1:2"
    m.add_peer(bad)
    node = FiscoNode(chain, log=print)
    held: list = []
    for _ in range(5):  # the numbers, the anchor, the first ranges
        for q in m.requests(NOW):
            if q.kind == "blocks":
                held.append(q)
            else:
                m.receive(q.id, answer(node, q.body), NOW)
        if held:
            break
    first = min(held, key=lambda q: q.start)
    theirs = sorted((q for q in held if q.peer == bad), key=lambda q: q.start)
    assert first.peer == URL and len(theirs) == 2 and theirs[0].start > first.start
    assert m.receive(theirs[0].id, answer(node, theirs[0].body), NOW) == []  # buffered
    (ban,) = m.receive(theirs[1].id, b"[]", NOW)
    assert ban.peer == bad and ban.until_ms == NOW + 2_000
    now = NOW
    if back_first:  # its ban runs out and it answers again before its range is verified
        now = NOW + 2_000
        for q in m.requests(now):
            if q.peer == bad and q.kind == "number":
                m.receive(q.id, answer(node, q.body), now)
        assert m.peers.get(bad).state == "ok"
    events = m.receive(first.id, answer(node, first.body), now)
    got = [(e.blocks[0][0], e.peer) for e in events if isinstance(e, AppendSegment)]
    assert got == [(first.start, URL), (theirs[0].start, bad)]
    assert m.peers.get(bad).strikes == 1 and m.peers.get(bad).verified_headers == 10
    now += 2_000
    for _ in range(20):  # back again, it serves garbage again: the second ban is longer
        qs = m.requests(now)
        q = next((q for q in qs if q.peer == bad and q.kind == "blocks"), None)
        if q is not None:
            (ban,) = m.receive(q.id, b"[]", now)
            assert ban.until_ms == now + 4_000
            return
        for q in qs:
            if q.kind == "number":
                m.receive(q.id, answer(node, q.body), now)
    raise AssertionError("no range was asked of the bad peer again")
