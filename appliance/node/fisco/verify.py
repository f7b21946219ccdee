"""What a FISCO BCOS 3.x light client believes, and why. Pure functions; every failure is a
:class:`VerificationError` (``rule``, ``height``) and nothing is mutated.

Rules (``VerificationError.rule``):

- ``anchor``: the anchor block does not hash (any preimage) to the provisioned hash, or has
  another number;
- ``height``: a block's number is not its predecessor's + 1;
- ``parent``: ``parentInfo`` is not exactly ``[{prev number, prev hash}]`` with the hash
  recomputed from the predecessor's fields;
- ``sealer_change``: the block's ``sealerList``/``consensusWeights`` differ from the trusted
  ones (:class:`SealerChange` names both lists);
- ``timestamp``: a block from more than ``max_skew_ms`` in the future;
- ``quorum``: the signers' weight is below ``total - floor((total - 1) / 3)``, or a
  ``sealerIndex`` is out of range or repeated;
- ``signature``: a ``signatureList`` entry does not verify (SM2, default ID, over the 32-byte
  hash, by ``sealerList[sealerIndex]``);
- ``block_hash``: a block served for an inclusion is not the verified one at its height;
- ``txs_root`` / ``not_in_block``: the block's transaction list does not give its
  ``txsRoot`` / lacks the transaction (or has it twice);
- ``proof`` / ``receipt_proof``: a proof does not lead to the root **at the transaction's
  position**;
- ``receipt``: the receipt is of another transaction or block.

Segment rule: a segment is a run of blocks on top of a trusted block. Every block is checked
for number, parent link, sealer list and clock; the **last** block's quorum is verified (its
hash authenticates every block below it through the parent links, as each hash covers its
parent's). ``strict=True`` verifies the quorum of every block. Which blocks hold transactions
plays no part: an empty block at the end of a segment is checked like any other.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.gm import sm2

from ..errors import VerificationError
from . import merkle
from .anchor import FiscoAnchor
from .block import FiscoHeader, SealerSet
from .receipt import Receipt

__all__ = [
    "FISCO_RULES", "MAX_SKEW_MS", "Inclusion", "SealerChange", "Segment", "Trusted",
    "check_anchor", "genesis_sealers", "verify_inclusion", "verify_link_range",
    "verify_quorum", "verify_segment",
]

MAX_SKEW_MS = 60_000

FISCO_RULES = frozenset({
    "anchor", "height", "parent", "sealer_change", "timestamp", "quorum", "signature",
    "block_hash", "txs_root", "not_in_block", "proof", "receipt_proof", "receipt",
})  # fmt: skip


class SealerChange(VerificationError):
    """A block names other sealers than the trusted ones (or other weights, or another order).

    A light client cannot tell a real change (made by a system-contract transaction it cannot
    execute) from a peer that made its own sealers up: the sync stops at the block before and
    an operator must provision a new anchor. ``trusted`` and ``found`` are both lists."""

    def __init__(self, height: int, trusted: SealerSet, found: SealerSet) -> None:
        self.trusted = trusted
        self.found = found
        super().__init__("sealer_change", height,
                         f"trusted {len(trusted.node_ids)} sealers, block names "
                         f"{len(found.node_ids)}")

    def describe(self) -> str:
        return (f"block {self.height} names sealers {self.found.describe()}; the trusted list "
                f"is {self.trusted.describe()}")


@dataclass(frozen=True, slots=True)
class Trusted:
    """A verified block: the sync's state."""

    number: int
    block_hash: bytes
    sealers: SealerSet


@dataclass(frozen=True, slots=True)
class Segment:
    """A verified segment: (number, hash, preimage) per block, in order; ``signed``: the
    numbers whose quorum was verified."""

    blocks: tuple[tuple[int, bytes, bytes], ...]
    signed: tuple[int, ...]

    @property
    def tip(self) -> tuple[int, bytes]:
        return self.blocks[-1][0], self.blocks[-1][1]


def check_anchor(anchor: FiscoAnchor, header: FiscoHeader) -> bytes:
    """The preimage of the anchor block (its hash is the provisioned one)."""
    if header.number != anchor.height:
        raise VerificationError("anchor", header.number,
                                f"block {header.number} served for the anchor {anchor.height}")
    pre = header.preimage_for(anchor.block_hash)
    if pre is None:
        raise VerificationError("anchor", header.number,
                                "the block does not hash to the provisioned hash")
    if header.number == 0:
        named = genesis_sealers(header.extra_data)
        if named is not None and named != anchor.sealers:
            raise VerificationError("anchor", 0, "the genesis configuration names other "
                                    f"sealers: {named.describe()}")
    return pre


_NODE_LINE = re.compile(rb"^node\.(\d+)\s*:\s*([0-9a-fA-F]{128})\s*,\s*(\d{1,18})\s*$", re.M)


def genesis_sealers(extra_data: bytes) -> SealerSet | None:
    """The sealers a genesis block's configuration text (its ``extraData``) names, in
    ``node.i`` order, or None when it names none. At a genesis anchor the provisioned list
    must be this one (the text is covered by the genesis hash)."""
    found = sorted((int(i), bytes.fromhex(n.decode()), int(w))
                   for i, n, w in _NODE_LINE.findall(extra_data))
    if not found or [f[0] for f in found] != list(range(len(found))):
        return None
    return SealerSet(tuple(f[1] for f in found), tuple(f[2] for f in found))


def _pk(node_id: bytes) -> bytes:
    return b"\x04" + node_id


def verify_quorum(header: FiscoHeader, sealers: SealerSet,
                  block_hash: bytes | None = None) -> bytes:
    """The block hash that a quorum of ``sealers`` signed, or VerificationError.

    ``block_hash``: the hash already established (by a link); else each preimage candidate is
    tried. Cheap checks first (indices, weight), then every signature must verify: one bad
    signature fails the block even if the others would reach the quorum."""
    n = header.number
    seen: set[int] = set()
    weight = 0
    for idx, _ in header.signatures:
        if idx >= len(sealers.node_ids):
            raise VerificationError("quorum", n, f"sealerIndex {idx} of {len(sealers.node_ids)}")
        if idx in seen:
            raise VerificationError("quorum", n, f"sealerIndex {idx} twice")
        seen.add(idx)
        weight += sealers.weights[idx]
    if weight < sealers.threshold or not header.signatures:
        raise VerificationError("quorum", n, f"signed weight {weight} < {sealers.threshold} "
                                f"of {sealers.total}")
    candidates = [block_hash] if block_hash is not None else header.hash_candidates()
    idx0, sig0 = header.signatures[0]
    chosen = next((h for h in candidates
                   if sm2.verify(_pk(sealers.node_ids[idx0]), h, sig0)), None)
    if chosen is None:
        raise VerificationError("signature", n, f"signature of sealer {idx0} does not verify")
    for idx, sig in header.signatures[1:]:
        if not sm2.verify(_pk(sealers.node_ids[idx]), chosen, sig):
            raise VerificationError("signature", n, f"signature of sealer {idx} does not verify")
    return chosen


def verify_segment(trusted: Trusted, headers: Sequence[FiscoHeader], *, now_ms: int,
                   strict: bool = False, max_skew_ms: int = MAX_SKEW_MS) -> Segment:
    """Verify ``headers`` (consecutive, the first at trusted.number + 1); see the module
    docstring. An empty list is an empty Segment."""
    if not headers:
        return Segment((), ())
    prev_number = trusted.number
    for h in headers:
        if h.number != prev_number + 1:
            raise VerificationError("height", h.number, f"{prev_number + 1} was due")
        if len(h.parents) != 1 or h.parents[0][0] != prev_number:
            raise VerificationError("parent", h.number, "parentInfo is not [the block before]")
        if h.sealers != trusted.sealers:
            raise SealerChange(h.number, trusted.sealers, h.sealers)
        if h.timestamp > now_ms + max_skew_ms:
            raise VerificationError("timestamp", h.number, f"{h.timestamp} ms is in the future")
        prev_number = h.number
    prev_hash = trusted.block_hash
    blocks: list[tuple[int, bytes, bytes]] = []
    signed: list[int] = []
    last = len(headers) - 1
    for i, h in enumerate(headers):
        if h.parents[0][1] != prev_hash:
            raise VerificationError("parent", h.number, "parentInfo names another hash than "
                                    "the one recomputed from the block before")
        if i < last:
            own = headers[i + 1].parents[0][1]
            pre = h.preimage_for(own)
            if pre is None:
                raise VerificationError("parent", h.number + 1, "parentInfo names another "
                                        "hash than the one recomputed from the block before")
            if strict:
                verify_quorum(h, trusted.sealers, own)
                signed.append(h.number)
        else:
            own = verify_quorum(h, trusted.sealers)
            pre = h.preimage_for(own)
            assert pre is not None
            signed.append(h.number)
        blocks.append((h.number, own, pre))
        prev_hash = own
    return Segment(tuple(blocks), tuple(signed))


@dataclass(frozen=True, slots=True)
class Inclusion:
    """A transaction placed at ``index`` of the verified block ``number``/``block_hash``;
    ``receipt`` proven at the same index of its receiptsRoot (or None)."""

    tx_hash: bytes
    number: int
    block_hash: bytes
    index: int
    tree_size: int
    receipt: Receipt | None

    def to_json(self) -> dict:
        return {"tx_hash": "0x" + self.tx_hash.hex(), "height": self.number,
                "block_hash": "0x" + self.block_hash.hex(), "index": self.index,
                "tree_size": self.tree_size,
                "receipt": None if self.receipt is None else self.receipt.to_json()}


def verify_inclusion(block: FiscoHeader, block_hash: bytes, tx_hash: bytes,
                     tx_proof: Sequence[bytes], receipt: Receipt | None,
                     width: int = merkle.DEFAULT_WIDTH) -> Inclusion:
    """Place ``tx_hash`` in the verified block ``block_hash``; see the module docstring.

    ``block`` must carry its transaction hashes (``onlyTxHash``): the list fixes the tree size
    and the position, and must itself give txsRoot. ``tx_proof`` (FISCO's) must prove that
    position too. The receipt, when given, must be of this transaction and block, and proven
    at the same index of receiptsRoot: its hash is recomputed from its fields."""
    n = block.number
    if block.preimage_for(block_hash) is None:
        raise VerificationError("block_hash", n, "not the verified block at this height")
    txs = block.tx_hashes
    if txs is None or merkle.root(txs, width) != block.txs_root:
        raise VerificationError("txs_root", n, "the transaction list does not give txsRoot")
    if txs.count(tx_hash) != 1:
        raise VerificationError("not_in_block", n, "the transaction is not once in the block")
    index = txs.index(tx_hash)
    if not merkle.verify(tx_hash, index, len(txs), tx_proof, block.txs_root, width):
        raise VerificationError("proof", n, f"the transaction proof does not place it at "
                                f"index {index} of {len(txs)}")
    if receipt is not None:
        if receipt.block_number != n or receipt.transaction_hash != tx_hash:
            raise VerificationError("receipt", n, "a receipt of another transaction or block")
        if not merkle.verify(receipt.hash, index, len(txs), receipt.proof,
                             block.receipts_root, width):
            raise VerificationError("receipt_proof", n, f"the receipt proof does not place it "
                                    f"at index {index} of {len(txs)}")
    return Inclusion(tx_hash, n, block_hash, index, len(txs), receipt)


def verify_link_range(lower: tuple[int, bytes], upper: tuple[int, bytes],
                      headers: Sequence[FiscoHeader]) -> dict[int, bytes]:
    """The hash of every block lower..upper, from blocks lower+1..upper that hash-link from the
    known hash at ``lower`` to the known hash at ``upper`` (two stored checkpoints around a
    block older than the store's window). Only the links matter: both ends are verified."""
    (lo, lo_hash), (hi, hi_hash) = lower, upper
    if len(headers) != hi - lo:
        raise VerificationError("height", None, f"{len(headers)} blocks for {lo + 1}..{hi}")
    hashes = {lo: lo_hash}
    prev_hash = lo_hash
    for i, h in enumerate(headers):
        if h.number != lo + 1 + i:
            raise VerificationError("height", h.number, f"{lo + 1 + i} was due")
        if h.parents != ((h.number - 1, prev_hash),):
            raise VerificationError("parent", h.number, "does not link to the block before")
        own = headers[i + 1].parents[0][1] if i + 1 < len(headers) and \
            len(headers[i + 1].parents) == 1 else hi_hash
        if h.preimage_for(own) is None:
            raise VerificationError("parent", h.number, "does not hash to what links to it")
        hashes[h.number] = prev_hash = own
    if hashes.get(hi) != hi_hash:
        raise VerificationError("parent", hi, "the range does not end at the known hash")
    return hashes
