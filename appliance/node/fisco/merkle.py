"""FISCO BCOS 3.x Merkle trees (``bcos::crypto::merkle::Merkle<Hasher, width>``) with SM3.

The leaves are the transaction (or receipt) hashes, unprefixed. Each level groups ``width``
consecutive nodes (the last group may be shorter) and hashes their concatenation; one leaf is
its own root, and no leaf gives 32 zero bytes. FISCO 3.x builds blocks with ``width = 2``.

A proof, as FISCO prints it, is a list per level from the leaves up, the root's level left
out: a 4-byte big-endian count ``c`` then the ``c`` nodes of the group that holds the path
node (itself included). A one-leaf tree's proof is the leaf alone.

FISCO's own verifier only checks that the running hash is *somewhere* in each group and
trusts the counts, so a proof shows membership only: the same hash proves any of several
positions, and a crafted count can walk an inner node through as a leaf. :func:`verify`
rebuilds the exact shape from ``(index, tree_size)``: every count must be the one the tree
has, the running hash must be at its own position in the group, the number of levels must be
the tree's depth. So a receipt proven at index i is the receipt of the transaction at index i.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from appliance.gm import sm3

__all__ = ["DEFAULT_WIDTH", "ZERO", "proof", "root", "verify"]

DEFAULT_WIDTH = 2
ZERO = bytes(32)
_MAX_LEVELS = 64


def _levels(leaves: Sequence[bytes], width: int) -> list[list[bytes]]:
    level = [bytes(x) for x in leaves]
    out = [level]
    while len(level) > 1:
        level = [sm3.digest(b"".join(level[i:i + width])) for i in range(0, len(level), width)]
        out.append(level)
    return out


def root(leaves: Sequence[bytes], width: int = DEFAULT_WIDTH) -> bytes:
    """The root of ``leaves`` (32 zero bytes for none)."""
    if width < 2:
        raise ValueError("width must be >= 2")
    if not leaves:
        return ZERO
    return _levels(leaves, width)[-1][0]


def proof(leaves: Sequence[bytes], index: int, width: int = DEFAULT_WIDTH) -> list[bytes]:
    """FISCO's proof of leaf ``index`` (for the test double and tests)."""
    n = len(leaves)
    if not 0 <= index < n:
        raise IndexError(f"leaf {index} outside a tree of {n}")
    if n == 1:
        return [bytes(leaves[0])]
    out: list[bytes] = []
    pos = index
    for level in _levels(leaves, width)[:-1]:
        start = pos - pos % width
        group = level[start:start + width]
        out.append(struct.pack(">I", len(group)))
        out.extend(group)
        pos //= width
    return out


def verify(leaf: bytes, index: int, tree_size: int, path: Sequence[bytes], root_hash: bytes,
           width: int = DEFAULT_WIDTH) -> bool:
    """True when ``path`` proves ``leaf`` at ``index`` of a ``tree_size``-leaf tree with root
    ``root_hash``. False (never raises) for anything else, malformed input included."""
    try:
        if (type(index) is not int or type(tree_size) is not int or type(width) is not int
                or width < 2 or not 0 <= index < tree_size or type(leaf) is not bytes
                or len(leaf) != 32 or type(root_hash) is not bytes or len(root_hash) != 32):
            return False
        elements = list(path)
        if len(elements) > _MAX_LEVELS * (width + 1):
            return False
        if tree_size == 1:
            return elements == [leaf] and leaf == root_hash
        h, pos, size, i = leaf, index, tree_size, 0
        while size > 1:
            start = pos - pos % width
            count = min(size - start, width)
            if i + 1 + count > len(elements) or elements[i] != struct.pack(">I", count):
                return False
            group = elements[i + 1:i + 1 + count]
            if any(type(g) is not bytes or len(g) != 32 for g in group):
                return False
            if group[pos - start] != h:
                return False
            h = sm3.digest(b"".join(group))
            i += 1 + count
            pos //= width
            size = (size + width - 1) // width
        return i == len(elements) and h == root_hash
    except Exception:  # hostile input must never raise out of a verifier
        return False
