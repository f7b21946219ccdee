"""Merkle trees and inclusion proofs of RFC 9162 §2.1 with H = SM3 (protocol §4).

Leaves are tx_ids (32 bytes), in block order::

    MTH([])       = H(b"")
    MTH([d0])     = H(0x00 || d0)
    MTH(D[0:n])   = H(0x01 || MTH(D[0:k]) || MTH(D[k:n]))   k = largest power of 2 < n

The 0x00/0x01 prefixes keep a leaf from being passed off as an inner node (second-preimage
resistance). :func:`verify_inclusion` is the algorithm of RFC 9162 §2.1.3.2 with the
protocol's extra rules: leaf_index < tree_size, a path of exactly the length the tree shape
implies (no element missing or left over), at most :data:`MAX_PATH` elements, each 32 bytes.
It is fed network data and returns False, never raises, for anything malformed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from appliance.gm import sm3 as _sm3

__all__ = [
    "EMPTY_ROOT", "HASH_SIZE", "MAX_PATH", "digest", "inclusion_proof", "leaf_hash",
    "node_hash", "root", "verify_inclusion",
]

HASH_SIZE = 32
MAX_PATH = 64  # protocol §8

if _sm3.FAST:
    _PROTO = hashlib.new("sm3")

    def digest(data: bytes) -> bytes:
        """SM3 of ``data`` (copying a prepared OpenSSL context is the cheapest call)."""
        h = _PROTO.copy()
        h.update(data)
        return h.digest()

else:  # pragma: no cover - an OpenSSL without SM3
    digest = _sm3.digest

EMPTY_ROOT = digest(b"")


def leaf_hash(leaf: bytes) -> bytes:
    """H(0x00 || leaf)."""
    return digest(b"\x00" + leaf)


def node_hash(left: bytes, right: bytes) -> bytes:
    """H(0x01 || left || right)."""
    return digest(b"\x01" + left + right)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH(leaves), computed bottom-up: pair neighbours, carry an odd last node up unchanged.

    That is the recursive definition evaluated level by level (the left subtree of every split
    is a perfect tree of 2^j leaves, so levels pair up the same way).
    """
    if not leaves:
        return EMPTY_ROOT
    level = [leaf_hash(bytes(d)) for d in leaves]
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) & 1:
            paired.append(level[-1])
        level = paired
    return level[0]


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, leaves) of RFC 9162 §2.1.3.1, ordered from the leaf up to the root.

    Used by the test double and the tests; the light node only verifies proofs.
    """
    n = len(leaves)
    if not 0 <= index < n:
        raise IndexError(f"leaf index {index} outside a tree of {n} leaves")
    # Hash each level once (O(n)) and pick siblings, instead of recomputing subtree roots.
    level = [leaf_hash(bytes(d)) for d in leaves]
    path: list[bytes] = []
    m = index
    while len(level) > 1:
        sibling = m ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        # else: m is the odd last node, carried up unchanged; no path element at this level
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) & 1:
            paired.append(level[-1])
        level = paired
        m >>= 1
    return path


def verify_inclusion(
    leaf: bytes, index: int, tree_size: int, path: Sequence[bytes], root_hash: bytes
) -> bool:
    """True when ``path`` proves ``leaf`` (a tx_id) at ``index`` in the tree with ``root_hash``.

    RFC 9162 §2.1.3.2, step by step; False for index >= tree_size, a path that is too long or
    too short, a path element that is not 32 bytes, or a root that does not match.
    """
    if (
        type(index) is not int
        or type(tree_size) is not int
        or not 0 <= index < tree_size
        or not isinstance(leaf, bytes | bytearray)
        or not isinstance(root_hash, bytes | bytearray)
        or len(root_hash) != HASH_SIZE
    ):
        return False
    try:
        if len(path) > MAX_PATH:
            return False
        elements = list(path)
    except TypeError:
        return False
    fn, sn = index, tree_size - 1
    r = leaf_hash(bytes(leaf))
    for p in elements:
        if type(p) is not bytes or len(p) != HASH_SIZE:
            return False
        if sn == 0:  # the path goes on past the root
            return False
        if fn & 1 or fn == sn:
            r = digest(b"\x01" + p + r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = digest(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root_hash
