"""RFC 9162 §2.1 Merkle trees with SM3, for the district-node test double (protocol §4).

Written from the protocol page alone, independently of ``appliance.node``: the light node and
this test double are two implementations of the same spec, and their agreement is the interop
test. Leaves are tx_ids (32 bytes each)::

    MTH([])     = H(b"")
    MTH([d0])   = H(0x00 || d0)
    MTH(D[0:n]) = H(0x01 || MTH(D[0:k]) || MTH(D[k:n]))    k = largest power of 2 < n

:func:`root` computes MTH level by level (pairing neighbours, carrying a lone last node up
unchanged), which gives the same value as the recursive definition. :func:`inclusion_path`
is PATH(m, D[n]) of RFC 9162 §2.1.3.1 (sibling hashes from the leaf up) and
:func:`verify_inclusion` is the verification algorithm of §2.1.3.2 (with the protocol's
extra rules: leaf_index < tree_size, no path element left over or missing, at most 64).
"""

from __future__ import annotations

from collections.abc import Sequence

from appliance.gm import sm3

__all__ = [
    "EMPTY_ROOT", "MAX_PATH", "inclusion_path", "leaf_hash", "node_hash", "root",
    "root_from_path", "verify_inclusion",
]

MAX_PATH = 64  # protocol §8: proof path entries
EMPTY_ROOT = sm3.digest(b"")


def leaf_hash(leaf: bytes) -> bytes:
    """H(0x00 || leaf)."""
    return sm3.digest(b"\x00" + bytes(leaf))


def node_hash(left: bytes, right: bytes) -> bytes:
    """H(0x01 || left || right)."""
    return sm3.digest(b"\x01" + bytes(left) + bytes(right))


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH of ``leaves`` (the tx_ids of a block, in order)."""
    if not leaves:
        return EMPTY_ROOT
    level = [leaf_hash(d) for d in leaves]
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, leaves): the audit path of leaf ``index``, ordered from the leaf upwards."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} outside a tree of {len(leaves)} leaves")
    lo, hi, m = 0, len(leaves), index
    siblings: list[bytes] = []  # collected from the root down
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            siblings.append(root(leaves[lo + k:hi]))
            hi = lo + k
        else:
            siblings.append(root(leaves[lo:lo + k]))
            lo, m = lo + k, m - k
    siblings.reverse()
    return siblings


def root_from_path(leaf: bytes, leaf_index: int, tree_size: int,
                   path: Sequence[bytes]) -> bytes | None:
    """The root that ``path`` proves for ``leaf``, or None if the proof is malformed.

    RFC 9162 §2.1.3.2 steps 1-4; the caller compares the result with the trusted root.
    """
    if not (isinstance(leaf_index, int) and isinstance(tree_size, int)):
        return None
    if not 0 <= leaf_index < tree_size or len(path) > MAX_PATH:
        return None
    fn, sn = leaf_index, tree_size - 1
    r = leaf_hash(leaf)
    for p in path:
        if not isinstance(p, bytes | bytearray) or len(p) != 32:
            return None
        if sn == 0:
            return None  # an element left over
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return None  # elements missing
    return r


def verify_inclusion(leaf: bytes, leaf_index: int, tree_size: int, path: Sequence[bytes],
                     expected_root: bytes) -> bool:
    """True when ``path`` proves ``leaf`` at ``leaf_index`` in the tree with ``expected_root``."""
    got = root_from_path(leaf, leaf_index, tree_size, path)
    return got is not None and got == bytes(expected_root)
