"""FISCO BCOS 3.x block headers (and transaction proofs) as their JSON-RPC answers show them.

**The block hash** (gm mode: SM3) is recomputed here from the fields; the ``hash`` field of an
answer is never used. The preimage, as FISCO's tars ``BlockHeaderData`` is hashed (integers
big-endian, no lengths, no separators)::

    int32 version
    for each parentInfo: int64 blockNumber || blockHash (32)
    txsRoot || receiptsRoot || stateRoot
    int64 number || gasUsed (decimal ASCII) || int64 timestamp || int64 sealer
    each sealerList entry (64-byte node id) || extraData || each consensusWeight as int64

**The JSON is lossy in one place**: a root the node never set is an *empty* byte string in
the preimage but is printed as 32 zero bytes, and an unset ``gasUsed`` is printed ``"0"``
(the genesis block is built that way; a block FISCO builds later sets its roots, 32 zero bytes
when there is nothing to hash, and its gas as ``"0"``). So a zero root or a ``"0"`` gas has
two possible preimages. :meth:`FiscoHeader.hash_candidates` gives every one (at most 16, one
when nothing is zero); the verifier accepts a candidate only when something it trusts names it
(the anchor, a verified child's ``parentInfo``, or a quorum of signatures). The variants print
as the same JSON, so which one it was changes nothing a reader of the fields can see.

Receipts, whose hash is the harder case, are in :mod:`.receipt`.

Decoders take the parsed JSON object (see :mod:`.jsonrpc` for the byte limits) and raise
:class:`MalformedError` for any field of the wrong type, length or range. Unknown keys are
ignored: nothing outside the fields above is hashed, stored or shown as verified, and newer
FISCO versions add keys.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Any

from appliance.gm import sm3

from ..errors import MalformedError

__all__ = [
    "HASH_LEN", "MAX_EXTRA", "MAX_SEALERS", "MAX_TXS", "NODE_ID_LEN", "SIG_LEN", "FiscoHeader",
    "SealerSet", "decode_header", "decode_tx_proof", "parse_hex", "parse_proof",
]

HASH_LEN = 32
NODE_ID_LEN = 64
SIG_LEN = 64
MAX_SEALERS = 256
MAX_EXTRA = 64 * 1024
MAX_TXS = 65_536
MAX_PARENTS = 16
_I32 = (-(1 << 31), (1 << 31) - 1)
_I64 = (0, (1 << 63) - 1)
_HEX = re.compile(r"(0x|0X)?([0-9a-fA-F]*)")
_DEC = re.compile(r"0|[1-9][0-9]{0,76}")
_ZERO = bytes(HASH_LEN)
_SM3 = sm3.digest


def parse_hex(value: object, what: str, *, length: int | None = None, max_len: int = MAX_EXTRA,
              prefix: bool = True) -> bytes:
    """Bytes of a hex string (``0x`` required when ``prefix``, optional otherwise)."""
    if type(value) is not str:
        raise MalformedError("type", f"{what} is not a string")
    if len(value) > 2 * max_len + 2:
        raise MalformedError("length", f"{what} longer than {max_len} bytes")
    m = _HEX.fullmatch(value)
    if m is None or (prefix and m.group(1) is None) or len(m.group(2)) % 2:
        raise MalformedError("hex", f"{what} is not {'0x-' if prefix else ''}hex")
    data = bytes.fromhex(m.group(2))
    if length is not None and len(data) != length:
        raise MalformedError("length", f"{what} is {len(data)} bytes, not {length}")
    return data


def _int(obj: dict, key: str, bounds: tuple[int, int], what: str) -> int:
    v = obj.get(key)
    if type(v) is not int:
        raise MalformedError("type", f"{what}.{key} is not an integer")
    if not bounds[0] <= v <= bounds[1]:
        raise MalformedError("range", f"{what}.{key} = {v} out of range")
    return v


def _list(obj: dict, key: str, limit: int, what: str) -> list:
    v = obj.get(key)
    if type(v) is not list:
        raise MalformedError("type", f"{what}.{key} is not a list")
    if len(v) > limit:
        raise MalformedError("count", f"{what}.{key} has {len(v)} entries > {limit}")
    return v


def _dec(obj: dict, key: str, what: str) -> str:
    v = obj.get(key)
    if type(v) is not str or _DEC.fullmatch(v) is None:
        raise MalformedError("type", f"{what}.{key} is not a decimal string")
    return v


def _i64(x: int) -> bytes:
    return struct.pack(">q", x)


@dataclass(frozen=True, slots=True)
class SealerSet:
    """The consensus nodes of a block (``sealerList``) with their ``consensusWeights``, in
    order: a ``sealerIndex`` points into it. Equal sets are equal lists, order included."""

    node_ids: tuple[bytes, ...]
    weights: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.node_ids) != len(self.weights):
            raise MalformedError("count", "sealerList and consensusWeights differ in length")
        if len(self.node_ids) > MAX_SEALERS:
            raise MalformedError("count", f"more than {MAX_SEALERS} sealers")
        for n in self.node_ids:
            if type(n) is not bytes or len(n) != NODE_ID_LEN:
                raise MalformedError("length", "a node id is 64 bytes")
        for w in self.weights:
            if type(w) is not int or not _I64[0] <= w <= _I64[1]:
                raise MalformedError("range", "a consensus weight is an int64 >= 0")

    @property
    def total(self) -> int:
        return sum(self.weights)

    @property
    def threshold(self) -> int:
        """Signed weight needed: total - floor((total - 1) / 3) (FISCO's PBFT quorum)."""
        t = self.total
        return t - (t - 1) // 3

    @property
    def encoded(self) -> bytes:
        """Count, node ids, weights: the bytes :attr:`hash` covers (and the store keeps)."""
        return struct.pack(">I", len(self.node_ids)) + b"".join(self.node_ids) + \
            b"".join(_i64(w) for w in self.weights)

    @property
    def hash(self) -> bytes:
        return _SM3(b"fisco-sealers/1" + self.encoded)

    def to_json(self) -> dict[str, Any]:
        return {"sealers": ["0x" + n.hex() for n in self.node_ids],
                "weights": list(self.weights)}

    @classmethod
    def from_json(cls, obj: object) -> SealerSet:
        if type(obj) is not dict:
            raise MalformedError("type", "a sealer set is an object")
        sealers = _list(obj, "sealers", MAX_SEALERS, "sealer set")
        weights = _list(obj, "weights", MAX_SEALERS, "sealer set")
        return cls(tuple(parse_hex(s, "sealer", length=NODE_ID_LEN) for s in sealers),
                   tuple(weights))

    @classmethod
    def decode(cls, data: bytes) -> SealerSet:
        if len(data) < 4:
            raise MalformedError("length", "a sealer set encoding is too short")
        (n,) = struct.unpack_from(">I", data)
        if n > MAX_SEALERS or len(data) != 4 + n * (NODE_ID_LEN + 8):
            raise MalformedError("length", "a sealer set encoding of the wrong length")
        ids = tuple(data[4 + i * NODE_ID_LEN:4 + (i + 1) * NODE_ID_LEN] for i in range(n))
        base = 4 + n * NODE_ID_LEN
        weights = tuple(struct.unpack_from(">q", data, base + 8 * i)[0] for i in range(n))
        return cls(ids, weights)

    def describe(self) -> str:
        """The list for people: each node id (hex) with its weight."""
        return "[" + ", ".join(f"{n.hex()}:{w}" for n, w in zip(self.node_ids, self.weights,
                                                              strict=True)) + "]"


@dataclass(frozen=True, slots=True)
class FiscoHeader:
    """A block header from ``getBlockByNumber`` (the fields the hash covers, the signatures,
    and the transaction hashes when they were asked for)."""

    version: int
    parents: tuple[tuple[int, bytes], ...]
    txs_root: bytes
    receipts_root: bytes
    state_root: bytes
    number: int
    gas_used: str
    timestamp: int
    sealer: int
    sealers: SealerSet
    extra_data: bytes
    signatures: tuple[tuple[int, bytes], ...]
    tx_hashes: tuple[bytes, ...] | None = None
    _cands: list = field(default_factory=list, compare=False, repr=False)

    def preimage(self, mask: int = 0) -> bytes:
        """The bytes hashed; ``mask`` bits 0-3 put txsRoot, receiptsRoot, stateRoot, gasUsed
        as empty (only meaningful when they are zero / "0")."""
        parts = [struct.pack(">i", self.version)]
        for num, h in self.parents:
            parts += [_i64(num), h]
        for bit, root in ((1, self.txs_root), (2, self.receipts_root), (4, self.state_root)):
            parts.append(b"" if mask & bit else root)
        parts += [_i64(self.number), b"" if mask & 8 else self.gas_used.encode(),
                  _i64(self.timestamp), _i64(self.sealer), *self.sealers.node_ids,
                  self.extra_data, *(_i64(w) for w in self.sealers.weights)]
        return b"".join(parts)

    def ambiguous_mask(self) -> int:
        """Bits of the fields with two possible preimages."""
        m = 0
        for bit, root in ((1, self.txs_root), (2, self.receipts_root), (4, self.state_root)):
            if root == _ZERO:
                m |= bit
        if self.gas_used == "0":
            m |= 8
        return m

    def masks(self) -> list[int]:
        """The preimage variants (see :meth:`preimage`), the likeliest first (genesis: all
        unset; other blocks: all set)."""
        amb = self.ambiguous_mask()
        if not amb:
            return [0]
        masks = [m for m in range(16) if m & ~amb == 0]
        masks.sort(key=lambda m: (m != amb) if self.number == 0 else m)
        return masks

    def _hash_of(self, mask: int) -> bytes:
        for m, h in self._cands:
            if m == mask:
                return h
        h = _SM3(self.preimage(mask))
        self._cands.append((mask, h))
        return h

    def hash_candidates(self) -> list[bytes]:
        """Every possible block hash (one unless a root is zero or gasUsed is "0")."""
        return [self._hash_of(m) for m in self.masks()]

    def preimage_for(self, block_hash: bytes) -> bytes | None:
        """The preimage whose SM3 is ``block_hash``, or None (hashes computed lazily, the
        likeliest first)."""
        for m in self.masks():
            if self._hash_of(m) == block_hash:
                return self.preimage(m)
        return None


def _signature_list(raw: list) -> tuple[tuple[int, bytes], ...]:
    out = []
    for s in raw:
        if type(s) is not dict:
            raise MalformedError("type", "a signatureList entry is an object")
        idx = _int(s, "sealerIndex", _I64, "signature")
        out.append((idx, parse_hex(s.get("signature"), "signature", length=SIG_LEN)))
    return tuple(out)


def decode_header(obj: object) -> FiscoHeader:
    """A FiscoHeader from a ``getBlockByNumber`` result (MalformedError otherwise)."""
    if type(obj) is not dict:
        raise MalformedError("type", "a block is a JSON object")
    w = "block"
    parents = []
    for p in _list(obj, "parentInfo", MAX_PARENTS, w):
        if type(p) is not dict:
            raise MalformedError("type", "a parentInfo entry is an object")
        parents.append((_int(p, "blockNumber", _I64, "parentInfo"),
                        parse_hex(p.get("blockHash"), "parentInfo.blockHash", length=HASH_LEN)))
    sealer_list = _list(obj, "sealerList", MAX_SEALERS, w)
    weights = _list(obj, "consensusWeights", MAX_SEALERS, w)
    for x in weights:
        if type(x) is not int or not _I64[0] <= x <= _I64[1]:
            raise MalformedError("range", "a consensus weight is an int64 >= 0")
    sealers = SealerSet(tuple(parse_hex(s, "sealerList entry", length=NODE_ID_LEN)
                              for s in sealer_list), tuple(weights))
    tx_hashes = None
    if "transactions" in obj:
        txs = _list(obj, "transactions", MAX_TXS, w)
        if txs and type(txs[0]) is not str:
            raise MalformedError("type", "transactions are asked as hashes (onlyTxHash)")
        tx_hashes = tuple(parse_hex(t, "transaction hash", length=HASH_LEN) for t in txs)
    return FiscoHeader(
        version=_int(obj, "version", _I32, w),
        parents=tuple(parents),
        txs_root=parse_hex(obj.get("txsRoot"), "txsRoot", length=HASH_LEN),
        receipts_root=parse_hex(obj.get("receiptsRoot"), "receiptsRoot", length=HASH_LEN),
        state_root=parse_hex(obj.get("stateRoot"), "stateRoot", length=HASH_LEN),
        number=_int(obj, "number", _I64, w),
        gas_used=_dec(obj, "gasUsed", w),
        timestamp=_int(obj, "timestamp", _I64, w),
        sealer=_int(obj, "sealer", _I64, w),
        sealers=sealers,
        extra_data=parse_hex(obj.get("extraData"), "extraData", max_len=MAX_EXTRA),
        signatures=_signature_list(_list(obj, "signatureList", MAX_SEALERS, w)),
        tx_hashes=tx_hashes,
    )


def parse_proof(raw: object, what: str) -> tuple[bytes, ...]:
    """A proof as FISCO prints it: a list of hex strings (count markers of 4 bytes, hashes of
    32), with or without 0x."""
    if type(raw) is not list:
        raise MalformedError("type", f"{what} is not a list")
    if len(raw) > 64 * 17:
        raise MalformedError("count", f"{what} has {len(raw)} elements")
    out = []
    for e in raw:
        b = parse_hex(e, what, max_len=HASH_LEN, prefix=False)
        if len(b) not in (4, HASH_LEN):
            raise MalformedError("length", f"{what} element of {len(b)} bytes")
        out.append(b)
    return tuple(out)


def decode_tx_proof(obj: object) -> tuple[bytes, int, tuple[bytes, ...]]:
    """(hash, blockNumber, proof) of a ``getTransaction(..., true)`` result. The hash is the
    node's word; it is the leaf that the proof and the block's list must place."""
    if type(obj) is not dict:
        raise MalformedError("type", "a transaction is a JSON object")
    proof_raw: object = []
    for key in ("txProof", "transactionProof"):
        if type(obj.get(key)) is list and obj[key]:
            proof_raw = obj[key]
            break
    return (parse_hex(obj.get("hash"), "transaction hash", length=HASH_LEN),
            _int(obj, "blockNumber", _I64, "transaction"), parse_proof(proof_raw, "tx proof"))
