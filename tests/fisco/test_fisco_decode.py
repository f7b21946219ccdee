"""The FISCO decoders under hypothesis (typed errors only, limits before parsing) and the
width-w Merkle proofs with their position checked."""

from __future__ import annotations

import json
import pathlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.gm import sm3
from appliance.node.errors import LedgerError, MalformedError
from appliance.node.fisco import jsonrpc, merkle
from appliance.node.fisco.anchor import decode_anchor
from appliance.node.fisco.block import decode_header
from appliance.node.fisco.receipt import decode_receipt

DATA = json.loads((pathlib.Path(__file__).parent.parent / "data" /
                   "fisco-bcos-3x-gm.json").read_text())
FAST = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=12), c, max_size=5),
    max_leaves=30)


@FAST
@given(st.binary(max_size=400))
def test_loads_random_bytes_typed_errors_only(body: bytes) -> None:
    try:
        jsonrpc.loads(body)
    except MalformedError:
        pass


def test_loads_limits_and_strictness() -> None:
    with pytest.raises(MalformedError) as e:
        jsonrpc.loads(b" " * 101, max_bytes=100)
    assert e.value.reason == "oversize"
    with pytest.raises(MalformedError) as e:
        jsonrpc.loads(b"[" * 10_000 + b"]" * 10_000)
    assert e.value.reason == "depth"
    for body, reason in ((b'{"a":1,"a":2}', "duplicate_key"), (b"1.5", "float"),
                         (b"NaN", "float"), (b"1" * 50, "range"), (b'"\xff"', "utf8"),
                         (b"[1] x", "trailing"), (b"{", "json")):
        with pytest.raises(MalformedError) as e:
            jsonrpc.loads(body)
        assert e.value.reason == reason, body


def test_batch_answers_are_matched_by_id() -> None:
    ok = b'[{"jsonrpc":"2.0","id":2,"result":5},{"jsonrpc":"2.0","id":1,"error":' \
         b'{"code":-1,"message":"m"}}]'
    got = jsonrpc.parse_batch(ok, [1, 2])
    assert got[2] == 5 and got[1] == jsonrpc.RpcError(-1, "m")
    for bad in (b'[{"jsonrpc":"2.0","id":1,"result":5}]',
                b'[{"jsonrpc":"2.0","id":1,"result":5},{"jsonrpc":"2.0","id":1,"result":5}]',
                b'[{"jsonrpc":"2.0","id":1,"result":5},{"jsonrpc":"2.0","id":3,"result":5}]',
                b'[{"jsonrpc":"2.0","id":1,"result":5,"error":{}},{"id":2}]', b'{}'):
        with pytest.raises(MalformedError):
            jsonrpc.parse_batch(bad, [1, 2])


def _mutate(obj, path, value):
    if not path:
        return value
    if isinstance(obj, dict):
        k = sorted(obj)[path[0] % len(obj)] if obj else None
        if k is None:
            return obj
        return {**obj, k: _mutate(obj[k], path[1:], value)}
    if isinstance(obj, list) and obj:
        i = path[0] % len(obj)
        return obj[:i] + [_mutate(obj[i], path[1:], value)] + obj[i + 1:]
    return value


@FAST
@given(st.sampled_from(["getBlockByNumber_0", "getBlockByHash_2",
                        "getTransactionReceipt_block2"]),
       st.lists(st.integers(0, 50), min_size=1, max_size=3), json_values)
def test_decoders_on_mutated_answers_typed_errors_only(which, path, value) -> None:
    obj = _mutate(DATA[which], path, value)
    for fn in (decode_header, decode_receipt):
        try:
            fn(obj)
        except LedgerError:
            pass


@FAST
@given(json_values)
def test_decoders_on_random_json_typed_errors_only(value) -> None:
    for fn in (decode_header, decode_receipt):
        try:
            fn(value)
        except LedgerError:
            pass
    try:
        decode_anchor(json.dumps(value).encode())
    except LedgerError:
        pass


def _leaves(n: int) -> list[bytes]:
    return [sm3.digest(struct.pack(">I", i)) for i in range(n)]


def test_root_shape_by_hand() -> None:
    a, b, c = _leaves(3)
    assert merkle.root([a]) == a and merkle.root([]) == bytes(32)
    assert merkle.root([a, b, c]) == sm3.digest(sm3.digest(a + b) + sm3.digest(c))
    assert merkle.root([a, b, c], width=3) == sm3.digest(a + b + c)
    p = merkle.proof([a, b, c], 2)
    assert p == [struct.pack(">I", 1), c, struct.pack(">I", 2), sm3.digest(a + b),
                 sm3.digest(c)]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.sampled_from([2, 3, 16]), st.data())
def test_every_proof_verifies_only_at_its_position(n: int, width: int, data) -> None:
    leaves = _leaves(n)
    root = merkle.root(leaves, width)
    i = data.draw(st.integers(0, n - 1))
    p = merkle.proof(leaves, i, width)
    assert merkle.verify(leaves[i], i, n, p, root, width)
    for j in range(n):
        if j != i:
            assert not merkle.verify(leaves[i], j, n, p, root, width)
    # (another tree size may share this path's shape: the size is the caller's fact, from the
    # block's verified transaction list, and is not tested against the proof here)
    if len(p) > 1:
        k = data.draw(st.integers(0, len(p) - 1))
        bad = list(p)
        bad[k] = bytes([bad[k][0] ^ 1]) + bad[k][1:]
        assert not merkle.verify(leaves[i], i, n, bad, root, width)
        assert not merkle.verify(leaves[i], i, n, p[:-1], root, width)
        assert not merkle.verify(leaves[i], i, n, p + [p[-1]], root, width)


def test_an_inner_node_does_not_pass_for_a_leaf() -> None:
    leaves = _leaves(4)
    inner = sm3.digest(leaves[0] + leaves[1])
    root = merkle.root(leaves)
    # FISCO's membership check accepts [count 2, inner, sibling] for `inner`; we know the size.
    p = [struct.pack(">I", 2), inner, sm3.digest(leaves[2] + leaves[3])]
    for i in range(4):
        assert not merkle.verify(inner, i, 4, p, root)
    # (as a 2-leaf tree it would pass: the size comes from the verified transaction list)


@FAST
@given(st.binary(max_size=40), st.integers(-3, 70), st.integers(-3, 70),
       st.lists(st.binary(max_size=40), max_size=8), st.binary(max_size=40))
def test_verify_never_raises(leaf, index, size, path, root) -> None:
    assert merkle.verify(leaf, index, size, path, root) in (True, False)


def _depth(v) -> int:
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    return 0


# integers within what loads accepts (its digit limit is tested on its own)
_INTS = st.integers(-(10**jsonrpc._MAX_INT_DIGITS - 1), 10**jsonrpc._MAX_INT_DIGITS - 1)
deep_values = st.recursive(
    st.text(alphabet='[]{}"\\ab', max_size=6) | _INTS,
    lambda c: st.lists(c, max_size=2) | st.dictionaries(
        st.text(alphabet='[]{}"\\x', max_size=4), c, max_size=2), max_leaves=40)


@FAST
@given(deep_values, st.booleans())
def test_the_depth_prescan_matches_the_parsed_depth(value, ascii_only) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert jsonrpc._depth_ok(body) == (_depth(value) <= jsonrpc.MAX_DEPTH)
    if _depth(value) <= jsonrpc.MAX_DEPTH:
        assert jsonrpc.loads(body) == value
