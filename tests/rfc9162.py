"""RFC 9162 §2.1 with SM3, written out naively from the RFC: the oracle the Merkle tests check
both implementations against (appliance/node/merkle.py and the double's hil/merkle.py)."""

from __future__ import annotations

from appliance.gm.sm3 import digest as H


def split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves: list[bytes]) -> bytes:
    """MTH of §2.1.1, recursively."""
    if not leaves:
        return H(b"")
    if len(leaves) == 1:
        return H(b"\x00" + leaves[0])
    k = split(len(leaves))
    return H(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of §2.1.3.1, recursively."""
    if len(leaves) == 1:
        return []
    k = split(len(leaves))
    if m < k:
        return path(m, leaves[:k]) + [mth(leaves[k:])]
    return path(m - k, leaves[k:]) + [mth(leaves[:k])]


def verify(leaf: bytes, proof: dict, root: bytes) -> bool:
    """§2.1.3.2, step by step (with the ledger protocol's 64-entry path limit)."""
    leaf_index, tree_size, path_ = proof["leaf_index"], proof["tree_size"], proof["path"]
    if leaf_index >= tree_size or len(path_) > 64:
        return False
    fn, sn = leaf_index, tree_size - 1
    r = H(b"\x00" + leaf)
    for p in path_:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = H(b"\x01" + p + r)
            while fn % 2 == 0 and fn != 0:
                fn //= 2
                sn //= 2
        else:
            r = H(b"\x01" + r + p)
        fn //= 2
        sn //= 2
    return sn == 0 and r == root
