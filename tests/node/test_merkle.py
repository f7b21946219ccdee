"""Merkle trees and inclusion proofs (protocol §4, RFC 9162 §2.1 with SM3).

Cross-checked against a naive recursive implementation of the definitions written here from the
RFC text, with SM3 from hashlib directly (not through the code under test).
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rfc9162 import mth, path

from appliance.node import merkle


def sm3(data: bytes) -> bytes:
    return hashlib.new("sm3", data).digest()




def leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [sm3(salt + b"tx %d" % i) for i in range(n)]


SIZES = range(1, 34)


def test_empty_and_single() -> None:
    assert merkle.root([]) == sm3(b"") == merkle.EMPTY_ROOT
    d = sm3(b"only")
    assert merkle.root([d]) == sm3(b"\x00" + d) == merkle.leaf_hash(d)
    assert merkle.node_hash(b"a" * 32, b"b" * 32) == sm3(b"\x01" + b"a" * 32 + b"b" * 32)
    assert merkle.verify_inclusion(d, 0, 1, [], merkle.root([d]))


def test_golden_two_leaves() -> None:
    """A fixed value, so a change of prefix or hash shows even if both implementations agree."""
    d0, d1 = bytes(32), bytes([1]) * 32
    expected = sm3(b"\x01" + sm3(b"\x00" + d0) + sm3(b"\x00" + d1))
    assert merkle.root([d0, d1]) == expected
    assert merkle.digest(b"abc").hex() == (
        "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    )  # GB/T 32905 example 1


@pytest.mark.parametrize("n", SIZES)
def test_root_matches_recursive_definition(n: int) -> None:
    d = leaves(n)
    assert merkle.root(d) == mth(d)


@pytest.mark.parametrize("n", SIZES)
def test_every_index_proves_and_matches_rfc_path(n: int) -> None:
    d = leaves(n)
    r = mth(d)
    for m in range(n):
        p = merkle.inclusion_proof(d, m)
        assert p == path(m, d)
        assert merkle.verify_inclusion(d[m], m, n, p, r)


@pytest.mark.parametrize("n", SIZES)
def test_bad_proofs_rejected(n: int) -> None:
    d = leaves(n)
    r = mth(d)
    other_root = mth(leaves(n, b"other"))
    for m in sorted({0, n // 2, n - 1}):
        p = path(m, d)
        assert not merkle.verify_inclusion(d[m], m, n, p, other_root)  # wrong root
        assert not merkle.verify_inclusion(sm3(b"not a tx"), m, n, p, r)  # wrong leaf
        assert not merkle.verify_inclusion(d[m], m, n, p + [bytes(32)], r)  # extra element
        assert not merkle.verify_inclusion(d[m], m, n, p + [r], r)
        if p:
            assert not merkle.verify_inclusion(d[m], m, n, p[:-1], r)  # missing element
            assert not merkle.verify_inclusion(d[m], m, n, p[1:], r)
            flipped = [bytes([p[0][0] ^ 1]) + p[0][1:]] + p[1:]
            assert not merkle.verify_inclusion(d[m], m, n, flipped, r)
        for wrong in {m - 1, m + 1} - {-1}:
            if wrong < n:  # another leaf's position, same path
                assert not merkle.verify_inclusion(d[m], wrong, n, p, r)
        assert not merkle.verify_inclusion(d[m], n, n, p, r)  # index == size
        assert not merkle.verify_inclusion(d[m], n + 5, n, p, r)
        assert not merkle.verify_inclusion(d[m], -1, n, p, r)


def test_size_zero_and_malformed_inputs_return_false() -> None:
    d = leaves(4)
    r = mth(d)
    p = path(1, d)
    assert not merkle.verify_inclusion(d[1], 0, 0, [], merkle.EMPTY_ROOT)
    assert not merkle.verify_inclusion(d[1], 1, 4, [x[:31] for x in p], r)
    assert not merkle.verify_inclusion(d[1], 1, 4, [bytearray(x) for x in p], r)
    assert not merkle.verify_inclusion(d[1], 1, 4, [None, *p[1:]], r)  # type: ignore[list-item]
    assert not merkle.verify_inclusion(d[1], 1, 4, p, r[:31])
    assert not merkle.verify_inclusion(d[1], True, 4, p, r)  # type: ignore[arg-type]
    assert not merkle.verify_inclusion(d[1], 1, 4, None, r)  # type: ignore[arg-type]
    assert not merkle.verify_inclusion("x", 1, 4, p, r)  # type: ignore[arg-type]
    assert merkle.verify_inclusion(d[1], 1, 4, tuple(p), r)


def test_path_longer_than_64_rejected() -> None:
    # A tree of 2**65 leaves would need 65 hashes; the protocol caps paths at 64.
    assert not merkle.verify_inclusion(bytes(32), 0, 2**65, [bytes(32)] * 65, bytes(32))


def test_proof_binds_membership_not_position() -> None:
    """RFC 9162 proofs authenticate the leaf under the root; index and size are only the path
    shape. The same path proves leaf 4 of 5 as (index 4, size 5) and as (index 2, size 3) (the
    last leaf at depth 1 in both shapes), and never another leaf (0x00/0x01 prefixes)."""
    d = leaves(5)
    r = mth(d)
    p = path(4, d)
    assert merkle.verify_inclusion(d[4], 4, 5, p, r)
    assert merkle.verify_inclusion(d[4], 2, 3, p, r)
    assert not merkle.verify_inclusion(d[4], 0, 5, p, r)
    inner = sm3(b"\x01" + sm3(b"\x00" + d[0]) + sm3(b"\x00" + d[1]))  # an inner node
    assert not merkle.verify_inclusion(inner, 0, 3, path(1, d)[1:], r)


def test_inclusion_proof_index_errors() -> None:
    with pytest.raises(IndexError):
        merkle.inclusion_proof(leaves(3), 3)
    with pytest.raises(IndexError):
        merkle.inclusion_proof([], 0)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_random_trees(n: int, data: st.DataObject) -> None:
    d = leaves(n, b"h")
    m = data.draw(st.integers(0, n - 1))
    p = merkle.inclusion_proof(d, m)
    r = merkle.root(d)
    assert merkle.verify_inclusion(d[m], m, n, p, r)
    # Any single-bit flip anywhere in the proof breaks it.
    if p:
        i = data.draw(st.integers(0, len(p) - 1))
        bit = data.draw(st.integers(0, 255))
        bad = list(p)
        bad[i] = bytes(b ^ (1 << (bit % 8)) if j == bit // 8 else b for j, b in enumerate(bad[i]))
        assert not merkle.verify_inclusion(d[m], m, n, bad, r)


@settings(max_examples=200, deadline=None)
@given(
    leaf=st.binary(max_size=40),
    index=st.integers(-2, 2**64),
    size=st.integers(-2, 2**64),
    p=st.lists(st.binary(min_size=30, max_size=33), max_size=70),
    r=st.binary(min_size=31, max_size=33),
)
def test_arbitrary_inputs_never_raise(
    leaf: bytes, index: int, size: int, p: list[bytes], r: bytes
) -> None:
    assert merkle.verify_inclusion(leaf, index, size, p, r) in (True, False)


def test_4096_leaf_proof() -> None:
    d = leaves(4096)
    r = merkle.root(d)
    for m in (0, 1, 2047, 2048, 4095):
        p = merkle.inclusion_proof(d, m)
        assert len(p) == 12
        assert merkle.verify_inclusion(d[m], m, 4096, p, r)
    assert r == mth(d)
