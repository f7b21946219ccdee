"""The ledger's objects (protocol §3) as frozen dataclasses, with strict decoders (§1, §8).

Every class has ``to_obj()`` (the plain dict/list that :func:`appliance.wire.encode` turns into
the canonical bytes) and a strict ``from_obj(obj)`` that accepts exactly the shape of §3:
exact types (``bool`` is not an ``int``), byte lengths, the required keys, the optional keys
the protocol allows and no other key (an unknown key would change a hash that a signature
covers), the §8 text limits, uint ranges [0, 2**64 - 1]. The ``decode_*(data)`` functions take
wire bytes, refuse anything over the §8 size limit for that object before parsing, decode the
canonical CBOR (:func:`appliance.wire.decode`) and call ``from_obj``.

Everything refused raises :class:`~appliance.node.errors.MalformedError`; a ``WireError`` from
the codec is re-raised as a MalformedError with the same ``reason`` (one error family).

Constructors check field types and lengths too (so an object built by hand, e.g. by the chain
generator, can always be encoded and hashed), and ``ValidatorSet`` checks its order. The few
cross-field rules that §5 also states as verification rules (commit signature indices strictly
increasing) are checked by ``from_obj`` and again by the verifier, not by the constructor.

The header path is hot (the sync engine verifies 10^5 headers/s): :class:`Header` validates
and encodes its fixed shape in one pass with a specialised canonical encoder
(:func:`encode_header`), byte-identical to ``appliance.wire.encode(header.to_obj())`` (a
hypothesis test checks it), and caches ``encoded`` and ``block_id = SM3(encoded)``. Headers
read from a response body skip even that: :func:`parse_headers_at` takes a byte span as a
header only if it is the canonical encoding of one, so the span itself is ``encoded`` and its
SM3 the ``block_id``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from appliance import wire

from .errors import MalformedError
from .merkle import MAX_PATH, digest

__all__ = [
    "Admin", "Block", "Commit", "Header", "MAX_BLOCK_BYTES", "MAX_CHAIN_ID", "MAX_COMMIT_BYTES",
    "MAX_HEADER_BYTES", "MAX_HEADERS_PER_RESPONSE", "MAX_PATH", "MAX_PROOF_BYTES",
    "MAX_RESPONSE_BYTES", "MAX_SIGNED_TX_BYTES", "MAX_TEXT", "MAX_TRUST_ANCHOR_BYTES",
    "MAX_UINT", "MAX_VALIDATORS", "MAX_VALIDATOR_SET_BYTES", "PROTOCOL_VERSION", "Proof",
    "SignedTx", "TrustAnchor", "TxBody", "Validator", "ValidatorSet", "ZERO_HASH",
    "decode_block", "decode_commit", "decode_header", "decode_limited", "decode_proof",
    "decode_signed_tx",
    "decode_trust_anchor", "decode_tx_body", "decode_validator_set", "enc", "encode_header",
    "parse_header_at", "parse_headers_at", "peer_id", "vote_bytes",
]

PROTOCOL_VERSION = "1"
MAX_UINT = 2**64 - 1
MAX_TEXT = 1024  # §8: text fields, bytes of UTF-8, unless stated
MAX_CHAIN_ID = 64  # §3: chain_id is 1..64 bytes
MAX_VALIDATORS = 256  # §3, §8
MAX_SIGNED_TX_BYTES = 64 * 1024  # §8
MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # §8: HTTP response body
MAX_HEADERS_PER_RESPONSE = 1000  # §8
HASH_SIZE = 32
KEY_SIZE = 65
SIGNATURE_SIZE = 64
NONCE_SIZE = 16
ZERO_HASH = bytes(HASH_SIZE)


def peer_id(public_key: bytes) -> bytes:
    """H(public_key): a validator's or terminal's identity (§1)."""
    return digest(bytes(public_key))


def enc(obj: object) -> bytes:
    """Canonical CBOR of ``obj``; a WireError becomes a MalformedError."""
    try:
        return wire.encode(obj)
    except wire.WireError as exc:
        raise MalformedError(exc.reason, exc.detail) from exc


# --- field checks -----------------------------------------------------------------------------


def _uint(value: object, what: str) -> int:
    if type(value) is not int:
        raise MalformedError("type", f"{what}: expected an unsigned integer")
    if not 0 <= value <= MAX_UINT:
        raise MalformedError("range", f"{what}: outside [0, 2**64 - 1]")
    return value


def _bytes(value: object, size: int, what: str) -> bytes:
    if type(value) is not bytes:
        raise MalformedError("type", f"{what}: expected a byte string")
    if len(value) != size:
        raise MalformedError("length", f"{what}: {len(value)} bytes, expected {size}")
    return value


def _text(value: object, what: str, low: int = 0, high: int = MAX_TEXT) -> bytes:
    """Check a text field; return its UTF-8 bytes."""
    if type(value) is not str:
        raise MalformedError("type", f"{what}: expected a text string")
    if len(value) > high:  # every character is at least one byte
        raise MalformedError("text", f"{what}: longer than {high} bytes")
    try:
        raw = value.encode()
    except UnicodeEncodeError:
        raise MalformedError("utf8", f"{what}: not encodable as UTF-8") from None
    if not low <= len(raw) <= high:
        raise MalformedError("text", f"{what}: {len(raw)} bytes, allowed {low}..{high}")
    return raw


def _map(obj: object, required: frozenset[str], optional: frozenset[str], what: str) -> dict:
    if type(obj) is not dict:
        raise MalformedError("type", f"{what}: expected a map")
    keys = obj.keys()
    if keys != required:
        missing = required - keys
        if missing:
            raise MalformedError("keys", f"{what}: missing {sorted(missing)}")
        unknown = keys - required - optional
        if unknown:
            shown = sorted(repr(k)[:30] for k in unknown)[:4]
            raise MalformedError("keys", f"{what}: unknown keys {shown}")
    return obj


def _array(obj: object, what: str, high: int, low: int = 0) -> list:
    if type(obj) is not list:
        raise MalformedError("type", f"{what}: expected an array")
    if not low <= len(obj) <= high:
        raise MalformedError("count", f"{what}: {len(obj)} entries, allowed {low}..{high}")
    return obj


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


# --- the specialised header encoder -----------------------------------------------------------

_SMALL = tuple(bytes((n,)) for n in range(0x78))  # heads of uints < 24 and texts < 24 bytes


def _head(major: int, n: int) -> bytes:
    """Shortest-form CBOR head (RFC 8949 §4.2.1) for 0 <= n <= 2**64 - 1."""
    mt = major << 5
    if n < 24:
        return bytes((mt | n,))
    if n < 0x100:
        return bytes((mt | 24, n))
    if n < 0x10000:
        return bytes((mt | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((mt | 26,)) + n.to_bytes(4, "big")
    return bytes((mt | 27,)) + n.to_bytes(8, "big")


# Map keys in canonical order (by encoded bytes: shorter first, then bytewise), each with its
# text head; the 32-byte values carry their byte-string head 0x58 0x20.
_K_HEIGHT = b"\x66height"
_K_TX_ROOT = b"\x67tx_root\x58\x20"
_K_VERSION = b"\x67version"
_K_CHAIN_ID = b"\x68chain_id"
_K_PREV_HASH = b"\x69prev_hash\x58\x20"
_K_TIMESTAMP = b"\x69timestamp"
_K_VALIDATORS_HASH = b"\x6fvalidators_hash\x58\x20"
_K_NEXT_VALIDATORS_HASH = b"\x74next_validators_hash\x58\x20"
_MAP8 = b"\xa8"


def encode_header(
    chain_id: object,
    height: object,
    version: object,
    prev_hash: object,
    tx_root: object,
    timestamp: object,
    validators_hash: object,
    next_validators_hash: object,
) -> bytes:
    """Check the header fields and return enc(header), the canonical CBOR of the 8-key map.

    Equal to ``appliance.wire.encode`` of the header map (tested), about five times faster.
    """
    if type(chain_id) is not str:
        raise MalformedError("type", "header.chain_id: expected a text string")
    try:
        c = chain_id.encode()
    except UnicodeEncodeError:
        raise MalformedError("utf8", "header.chain_id: not encodable as UTF-8") from None
    if not 0 < len(c) <= MAX_CHAIN_ID:
        raise MalformedError("text", f"header.chain_id: {len(c)} bytes, allowed 1..64")
    if type(version) is not str:
        raise MalformedError("type", "header.version: expected a text string")
    if version == "1":
        v = b"\x611"
    else:
        raw = _text(version, "header.version")
        v = _head(3, len(raw)) + raw
    if type(height) is not int or not 0 <= height <= MAX_UINT:
        _uint(height, "header.height")
    if type(timestamp) is not int or not 0 <= timestamp <= MAX_UINT:
        _uint(timestamp, "header.timestamp")
    if (
        type(prev_hash) is not bytes
        or len(prev_hash) != 32
        or type(tx_root) is not bytes
        or len(tx_root) != 32
        or type(validators_hash) is not bytes
        or len(validators_hash) != 32
        or type(next_validators_hash) is not bytes
        or len(next_validators_hash) != 32
    ):
        _bytes(prev_hash, 32, "header.prev_hash")
        _bytes(tx_root, 32, "header.tx_root")
        _bytes(validators_hash, 32, "header.validators_hash")
        _bytes(next_validators_hash, 32, "header.next_validators_hash")
    return b"".join((
        _MAP8,
        _K_HEIGHT, _SMALL[height] if height < 24 else _head(0, height),
        _K_TX_ROOT, tx_root,
        _K_VERSION, v,
        _K_CHAIN_ID, _SMALL[0x60 | len(c)] if len(c) < 24 else b"\x78" + bytes((len(c),)), c,
        _K_PREV_HASH, prev_hash,
        _K_TIMESTAMP, _head(0, timestamp),
        _K_VALIDATORS_HASH, validators_hash,
        _K_NEXT_VALIDATORS_HASH, next_validators_hash,
    ))  # fmt: skip


# --- objects -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Validator:
    """``{ "alg", "public_key", "power" }``; ``peer_id`` = H(public_key) is cached."""

    alg: str
    public_key: bytes
    power: int
    peer_id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _text(self.alg, "validator.alg")
        _bytes(self.public_key, KEY_SIZE, "validator.public_key")
        _uint(self.power, "validator.power")
        if self.power < 1:
            raise MalformedError("range", "validator.power: must be >= 1")
        _set(self, "peer_id", digest(self.public_key))

    def to_obj(self) -> dict[str, Any]:
        return {"alg": self.alg, "public_key": self.public_key, "power": self.power}

    @classmethod
    def from_obj(cls, obj: object) -> Validator:
        m = _map(obj, _VALIDATOR_KEYS, _NONE, "validator")
        return cls(m["alg"], m["public_key"], m["power"])


@dataclass(frozen=True, slots=True)
class ValidatorSet:
    """A validator set: 1..256 validators sorted by peer_id ascending, no duplicates.

    ``hash`` = H(enc(set)) (the value headers carry as validators_hash), ``total_power`` and
    ``encoded`` are cached. Use :meth:`of` to build one from validators in any order.
    """

    validators: tuple[Validator, ...]
    hash: bytes = field(init=False, repr=False, compare=False)
    total_power: int = field(init=False, repr=False, compare=False)
    encoded: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validators = self.validators
        if type(validators) is not tuple:
            raise MalformedError("type", "validator set: expected a tuple of validators")
        if not 1 <= len(validators) <= MAX_VALIDATORS:
            raise MalformedError("count", f"validator set: {len(validators)} entries, 1..256")
        previous = b""
        for v in validators:
            if type(v) is not Validator:
                raise MalformedError("type", "validator set: expected Validator entries")
            if v.peer_id <= previous:
                raise MalformedError("order", "validator set: not sorted by peer_id, or dup")
            previous = v.peer_id
        encoded = enc([v.to_obj() for v in validators])
        _set(self, "encoded", encoded)
        _set(self, "hash", digest(encoded))
        _set(self, "total_power", sum(v.power for v in validators))

    @classmethod
    def of(cls, validators: Iterable[Validator]) -> ValidatorSet:
        """The set of ``validators`` in canonical order (duplicates still raise)."""
        return cls(tuple(sorted(validators, key=lambda v: v.peer_id)))

    def __len__(self) -> int:
        return len(self.validators)

    def __getitem__(self, index: int) -> Validator:
        return self.validators[index]

    def to_obj(self) -> list[dict[str, Any]]:
        return [v.to_obj() for v in self.validators]

    @classmethod
    def from_obj(cls, obj: object) -> ValidatorSet:
        items = _array(obj, "validator set", MAX_VALIDATORS, 1)
        return cls(tuple(Validator.from_obj(v) for v in items))


@dataclass(frozen=True, slots=True)
class Header:
    """A block header (§3). ``encoded`` = enc(header) and ``block_id`` = H(encoded) are cached.

    ``version`` is any text here: ``version == "1"`` is verification rule 1, not structure.
    """

    chain_id: str
    height: int
    version: str
    prev_hash: bytes
    tx_root: bytes
    timestamp: int
    validators_hash: bytes
    next_validators_hash: bytes
    encoded: bytes = field(init=False, repr=False, compare=False)
    block_id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        encoded = encode_header(
            self.chain_id, self.height, self.version, self.prev_hash, self.tx_root,
            self.timestamp, self.validators_hash, self.next_validators_hash,
        )  # fmt: skip
        _set(self, "encoded", encoded)
        _set(self, "block_id", digest(encoded))

    def to_obj(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "height": self.height,
            "version": self.version,
            "prev_hash": self.prev_hash,
            "tx_root": self.tx_root,
            "timestamp": self.timestamp,
            "validators_hash": self.validators_hash,
            "next_validators_hash": self.next_validators_hash,
        }

    @classmethod
    def from_obj(cls, obj: object) -> Header:
        if type(obj) is not dict or obj.keys() != _HEADER_KEYS:
            _map(obj, _HEADER_KEYS, _NONE, "header")
        assert type(obj) is dict  # for the type checker; _map raised otherwise
        if cls is not Header:  # a subclass gets the ordinary constructor
            return cls(**obj)
        return _make_header(
            obj["chain_id"], obj["height"], obj["version"], obj["prev_hash"], obj["tx_root"],
            obj["timestamp"], obj["validators_hash"], obj["next_validators_hash"],
        )  # fmt: skip


_new = object.__new__
(
    _set_chain_id, _set_height, _set_version, _set_prev_hash, _set_tx_root, _set_timestamp,
    _set_validators_hash, _set_next_validators_hash, _set_encoded, _set_block_id,
) = (
    Header.__dict__[name].__set__  # the slot descriptors: what object.__setattr__ ends up calling
    for name in (
        "chain_id", "height", "version", "prev_hash", "tx_root", "timestamp", "validators_hash",
        "next_validators_hash", "encoded", "block_id",
    )
)  # fmt: skip


def _make_header(
    chain_id: str,
    height: int,
    version: str,
    prev_hash: bytes,
    tx_root: bytes,
    timestamp: int,
    validators_hash: bytes,
    next_validators_hash: bytes,
) -> Header:
    """Header(...) without the dataclass __init__ (half the cost of the per-header path).

    Same checks, same result: encode_header validates every field, then the slots are filled
    directly, as the frozen dataclass's own __init__ does through object.__setattr__.
    """
    encoded = encode_header(
        chain_id, height, version, prev_hash, tx_root, timestamp, validators_hash,
        next_validators_hash,
    )  # fmt: skip
    return _header_of_span(chain_id, height, version, prev_hash, tx_root, timestamp,
                           validators_hash, next_validators_hash, encoded)


def parse_header_at(data: bytes, pos: int) -> tuple[Header, int] | None:
    """The canonical header map that starts at ``data[pos]``, and the offset just after it.

    A fast path for header arrays in response bodies; what it returns is exactly what
    ``Header.from_obj(wire.decode(data[pos:end]))`` gives, and None for anything else (other
    shapes, bad fields, non-canonical spellings, truncation): the caller then falls back to the
    generic decoder, which gives the typed error.

    The common shape (version "1") is matched by a pattern that admits only the canonical
    spelling (:data:`_HDR_HEAD`, :data:`_HDR_TAIL`): the 8-key map head, the keys in canonical
    order, each value with its one shortest-form head, 32-byte hashes, a chain_id of 1..64
    bytes that must decode as UTF-8. A span it matches IS enc(header), so ``encoded`` is the
    span itself and ``block_id`` its SM3: no re-encoding. Other headers (another version, odd
    lengths) are read field by field, built through the checking constructor and accepted
    only if their canonical encoding equals the bytes read.
    """
    m = _HDR_HEAD.match(data, pos)
    if m is not None:
        height_raw, tx_root, c_head = m.groups()
        i = m.end()
        j = i + (c_head[0] - 0x60 if len(c_head) == 1 else c_head[1])
        t = _HDR_TAIL.match(data, j)  # matches only if data[i:j] is all there
        if t is not None:
            prev_hash, ts_raw, validators_hash, next_validators_hash = t.groups()
            try:
                chain_id = data[i:j].decode()
            except UnicodeDecodeError:
                return None
            end = t.end()
            return _header_of_span(
                chain_id, _UINT_OF(height_raw, "big") - _UINT_BIAS[len(height_raw)], "1",
                prev_hash, tx_root, _UINT_OF(ts_raw, "big") - _UINT_BIAS[len(ts_raw)],
                validators_hash, next_validators_hash, data[pos:end],
            ), end  # fmt: skip
    try:
        if not data.startswith(_HDR_START, pos):
            return None
        i = pos + 8
        height, i = _read_uint(data, i)
        if not data.startswith(_K_TX_ROOT, i):
            return None
        tx_root = data[i + 10 : i + 42]
        i += 42
        if data.startswith(_K_VERSION_1, i):
            version = "1"
            i += 10
        elif data.startswith(_K_VERSION, i):
            version, i = _read_text(data, i + 8)
        else:
            return None
        if not data.startswith(_K_CHAIN_ID, i):
            return None
        chain_id, i = _read_text(data, i + 9)
        if not data.startswith(_K_PREV_HASH, i):
            return None
        prev_hash = data[i + 12 : i + 44]
        i += 44
        if not data.startswith(_K_TIMESTAMP, i):
            return None
        timestamp, i = _read_uint(data, i + 10)
        if not data.startswith(_K_VALIDATORS_HASH, i):
            return None
        validators_hash = data[i + 18 : i + 50]
        i += 50
        if not data.startswith(_K_NEXT_VALIDATORS_HASH, i):
            return None
        next_validators_hash = data[i + 23 : i + 55]
        i += 55
        h = _make_header(
            chain_id, height, version, prev_hash, tx_root, timestamp, validators_hash,
            next_validators_hash,
        )  # fmt: skip
    except (MalformedError, IndexError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    if h.encoded != data[pos:i]:  # a short slice (truncation) or a non-shortest head
        return None
    return h, i


def parse_headers_at(data: bytes, pos: int, count: int) -> tuple[list[Header], int] | None:
    """``count`` canonical headers one after the other from ``data[pos]``, and the offset after
    them; None if any of them is not one (see :func:`parse_header_at`, whose result this is,
    header by header).

    The loop of the sync engine's header batches. From the first version-"1" header on, the
    headers of its chain_id are matched by one pattern each (:func:`_chain_pattern`: the whole
    canonical header with that chain_id spelled out, compiled once per chain_id), share one
    chain_id object and are built in place; any header the pattern does not match (another
    chain or version, odd lengths, anything invalid) goes through :func:`parse_header_at`.
    One pattern per batch at most, so a body mixing chain_ids cannot make it compile more.
    """
    out: list[Header] = []
    append = out.append
    pattern = None
    chain_id = ""
    bias = _UINT_BIAS
    of = _UINT_OF
    new = _new
    sm3 = digest
    for _ in range(count):
        m = None if pattern is None else pattern.match(data, pos)
        if m is None:
            parsed = parse_header_at(data, pos)
            if parsed is None:
                return None
            h, end = parsed
            append(h)
            pos = end
            if pattern is None and h.version == "1":  # at most one pattern per batch
                chain_id = h.chain_id
                pattern = _chain_pattern(chain_id)
            continue
        height_raw, tx_root, prev_hash, ts_raw, validators_hash, next_validators_hash = (
            m.groups())
        end = m.end()
        encoded = data[pos:end]
        h = new(Header)
        _set_chain_id(h, chain_id)
        _set_height(h, of(height_raw, "big") - bias[len(height_raw)])
        _set_version(h, "1")
        _set_prev_hash(h, prev_hash)
        _set_tx_root(h, tx_root)
        _set_timestamp(h, of(ts_raw, "big") - bias[len(ts_raw)])
        _set_validators_hash(h, validators_hash)
        _set_next_validators_hash(h, next_validators_hash)
        _set_encoded(h, encoded)
        _set_block_id(h, sm3(encoded))
        append(h)
        pos = end
    return out, pos


def _header_of_span(
    chain_id: str,
    height: int,
    version: str,
    prev_hash: bytes,
    tx_root: bytes,
    timestamp: int,
    validators_hash: bytes,
    next_validators_hash: bytes,
    encoded: bytes,
) -> Header:
    """A Header whose fields the caller has read from ``encoded``, a span proven canonical
    (so ``encoded`` == encode_header(fields) and every field check holds)."""
    h = _new(Header)
    _set_chain_id(h, chain_id)
    _set_height(h, height)
    _set_version(h, version)
    _set_prev_hash(h, prev_hash)
    _set_tx_root(h, tx_root)
    _set_timestamp(h, timestamp)
    _set_validators_hash(h, validators_hash)
    _set_next_validators_hash(h, next_validators_hash)
    _set_encoded(h, encoded)
    _set_block_id(h, digest(encoded))
    return h


_HDR_START = _MAP8 + _K_HEIGHT
_K_VERSION_1 = _K_VERSION + b"\x611"
# A uint (major type 0) in its shortest form only (RFC 8949 §4.2.1): the value needs the head's
# size, i.e. is at least 24, 2**8, 2**16, 2**32 for the 1-, 2-, 4-, 8-byte arguments.
_CANONICAL_UINT_RE = (
    rb"([\x00-\x17]|\x18[\x18-\xff]|\x19[\x01-\xff].|\x1a(?:[\x01-\xff].|\x00[\x01-\xff]).."
    rb"|\x1b(?!\x00\x00\x00\x00).{8})"
)
#: The value of a matched uint item is int.from_bytes(item) minus its head's contribution.
_UINT_OF = int.from_bytes
_UINT_BIAS = (0, 0, 0x18 << 8, 0x19 << 16, 0, 0x1A << 32, 0, 0, 0, 0x1B << 64)
# chain_id: a text head in shortest form for 1..64 bytes (1..23 in the head, 24..64 after 0x78).
_HDR_HEAD = re.compile(
    re.escape(_HDR_START) + _CANONICAL_UINT_RE + re.escape(_K_TX_ROOT) + rb"(.{32})"
    + re.escape(_K_VERSION_1 + _K_CHAIN_ID) + rb"([\x61-\x77]|\x78[\x18-\x40])",
    re.DOTALL,
)
_HDR_TAIL = re.compile(
    re.escape(_K_PREV_HASH) + rb"(.{32})" + re.escape(_K_TIMESTAMP) + _CANONICAL_UINT_RE
    + re.escape(_K_VALIDATORS_HASH) + rb"(.{32})" + re.escape(_K_NEXT_VALIDATORS_HASH)
    + rb"(.{32})",
    re.DOTALL,
)
_CHAIN_PATTERNS: dict[str, re.Pattern[bytes]] = {}


def _chain_pattern(chain_id: str) -> re.Pattern[bytes]:
    """The whole canonical version-"1" header of ``chain_id`` (a valid one, 1..64 bytes) as one
    pattern: _HDR_HEAD and _HDR_TAIL with the chain_id's text item spelled out between them.
    Compiled once per chain_id (a few are kept: a node syncs one chain)."""
    pattern = _CHAIN_PATTERNS.get(chain_id)
    if pattern is None:
        raw = chain_id.encode()
        item = (bytes((0x60 | len(raw),)) if len(raw) < 24 else bytes((0x78, len(raw)))) + raw
        pattern = re.compile(
            re.escape(_HDR_START) + _CANONICAL_UINT_RE + re.escape(_K_TX_ROOT) + rb"(.{32})"
            + re.escape(_K_VERSION_1 + _K_CHAIN_ID + item + _K_PREV_HASH) + rb"(.{32})"
            + re.escape(_K_TIMESTAMP) + _CANONICAL_UINT_RE + re.escape(_K_VALIDATORS_HASH)
            + rb"(.{32})" + re.escape(_K_NEXT_VALIDATORS_HASH) + rb"(.{32})",
            re.DOTALL,
        )
        if len(_CHAIN_PATTERNS) >= 8:
            _CHAIN_PATTERNS.clear()
        _CHAIN_PATTERNS[chain_id] = pattern
    return pattern


def _read_uint(data: bytes, i: int) -> tuple[int, int]:
    """A major-type-0 item at data[i] (any head length; canonicity is checked by the caller)."""
    b = data[i]
    if b < 24:
        return b, i + 1
    if 24 <= b <= 27:
        n = 1 << (b - 24)
        if i + 1 + n > len(data):
            raise IndexError
        return int.from_bytes(data[i + 1 : i + 1 + n], "big"), i + 1 + n
    raise ValueError


def _read_text(data: bytes, i: int) -> tuple[str, int]:
    """A major-type-3 item of at most 2**16 - 1 bytes at data[i], decoded as UTF-8."""
    b = data[i]
    if 0x60 <= b <= 0x77:
        n, i = b - 0x60, i + 1
    elif b == 0x78:
        n, i = data[i + 1], i + 2
    elif b == 0x79:
        n, i = int.from_bytes(data[i + 1 : i + 3], "big"), i + 3
    else:
        raise ValueError
    if i + n > len(data):
        raise IndexError
    return data[i : i + n].decode(), i + n


def vote_bytes(chain_id: str, height: int, block_id: bytes) -> bytes:
    """enc(vote): the bytes each commit signature signs (§3)."""
    _text(chain_id, "vote.chain_id", 1, MAX_CHAIN_ID)
    _uint(height, "vote.height")
    _bytes(block_id, HASH_SIZE, "vote.block_id")
    return enc({"type": "commit", "chain_id": chain_id, "height": height, "block_id": block_id})


@dataclass(frozen=True, slots=True)
class Commit:
    """A block's quorum certificate: signatures as ``((index, signature), ...)``.

    The constructor checks types and lengths (at most 256 signatures); :meth:`from_obj` also
    requires strictly increasing indices, which the verifier checks again.
    """

    height: int
    block_id: bytes
    signatures: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        _uint(self.height, "commit.height")
        _bytes(self.block_id, HASH_SIZE, "commit.block_id")
        sigs = self.signatures
        if type(sigs) is not tuple:
            raise MalformedError("type", "commit.signatures: expected a tuple")
        if len(sigs) > MAX_VALIDATORS:
            raise MalformedError("count", f"commit.signatures: {len(sigs)} > {MAX_VALIDATORS}")
        for entry in sigs:
            if type(entry) is not tuple or len(entry) != 2:
                raise MalformedError("type", "commit.signatures: expected (index, signature)")
            _uint(entry[0], "commit.signatures.index")
            _bytes(entry[1], SIGNATURE_SIZE, "commit.signatures.signature")

    def to_obj(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "block_id": self.block_id,
            "signatures": [{"index": i, "signature": s} for i, s in self.signatures],
        }

    @classmethod
    def from_obj(cls, obj: object) -> Commit:
        m = _map(obj, _COMMIT_KEYS, _NONE, "commit")
        items = _array(m["signatures"], "commit.signatures", MAX_VALIDATORS)
        sigs = []
        previous = -1
        for item in items:
            s = _map(item, _SIGNATURE_KEYS, _NONE, "commit.signatures entry")
            index = _uint(s["index"], "commit.signatures.index")
            if index <= previous:
                raise MalformedError("order", "commit.signatures: indices not strictly increasing")
            previous = index
            sigs.append((index, s["signature"]))
        return cls(m["height"], m["block_id"], tuple(sigs))


@dataclass(frozen=True, slots=True)
class TxBody:
    """``tx_body`` (§3). ``data`` is the type-specific map of §6, checked here only for being a
    map that encodes canonically (its per-type schema is the business of the type's handler).

    ``encoded`` and ``tx_id`` = H(encoded) are cached. Do not mutate ``data``.
    """

    chain_id: str
    type: str
    timestamp: int
    sender: bytes
    data: dict[str, Any]
    nonce: bytes
    recipient: str | None = None
    memo: str | None = None
    encoded: bytes = field(init=False, repr=False, compare=False)
    tx_id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _text(self.chain_id, "tx_body.chain_id", 1, MAX_CHAIN_ID)
        _text(self.type, "tx_body.type")
        _uint(self.timestamp, "tx_body.timestamp")
        _bytes(self.sender, HASH_SIZE, "tx_body.sender")
        if type(self.data) is not dict:
            raise MalformedError("type", "tx_body.data: expected a map")
        _bytes(self.nonce, NONCE_SIZE, "tx_body.nonce")
        if self.recipient is not None:
            _text(self.recipient, "tx_body.recipient")
        if self.memo is not None:
            _text(self.memo, "tx_body.memo")
        encoded = enc(self.to_obj())
        _set(self, "encoded", encoded)
        _set(self, "tx_id", digest(encoded))

    def __hash__(self) -> int:  # data is a dict; the id stands for the whole body
        return hash(self.tx_id)

    def to_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "chain_id": self.chain_id,
            "type": self.type,
            "timestamp": self.timestamp,
            "sender": self.sender,
            "data": self.data,
            "nonce": self.nonce,
        }
        if self.recipient is not None:
            obj["recipient"] = self.recipient
        if self.memo is not None:
            obj["memo"] = self.memo
        return obj

    @classmethod
    def from_obj(cls, obj: object) -> TxBody:
        m = _map(obj, _TX_BODY_KEYS, _TX_BODY_OPTIONAL, "tx_body")
        recipient, memo = m.get("recipient"), m.get("memo")
        # A present key must hold text: null would be a second spelling of "absent".
        if "recipient" in m and type(recipient) is not str:
            raise MalformedError("type", "tx_body.recipient: expected a text string")
        if "memo" in m and type(memo) is not str:
            raise MalformedError("type", "tx_body.memo: expected a text string")
        return cls(
            m["chain_id"], m["type"], m["timestamp"], m["sender"], m["data"], m["nonce"],
            recipient, memo,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class SignedTx:
    """``{ "body", "alg", "public_key", "signature" }``; the signature is over enc(body).

    Structure only: that public_key hashes to body.sender and that the signature verifies are
    checked by :func:`appliance.node.verify.verify_tx`.
    """

    body: TxBody
    alg: str
    public_key: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if type(self.body) is not TxBody:
            raise MalformedError("type", "signed_tx.body: expected a TxBody")
        _text(self.alg, "signed_tx.alg")
        _bytes(self.public_key, KEY_SIZE, "signed_tx.public_key")
        _bytes(self.signature, SIGNATURE_SIZE, "signed_tx.signature")

    @property
    def tx_id(self) -> bytes:
        """H(enc(body)) (§3)."""
        return self.body.tx_id

    def __hash__(self) -> int:
        return hash((self.body.tx_id, self.signature))

    def to_obj(self) -> dict[str, Any]:
        return {
            "body": self.body.to_obj(),
            "alg": self.alg,
            "public_key": self.public_key,
            "signature": self.signature,
        }

    @classmethod
    def from_obj(cls, obj: object) -> SignedTx:
        m = _map(obj, _SIGNED_TX_KEYS, _NONE, "signed_tx")
        return cls(TxBody.from_obj(m["body"]), m["alg"], m["public_key"], m["signature"])


@dataclass(frozen=True, slots=True)
class Block:
    """``{ "header", "txs" }``; that tx_root matches is checked by ``verify.check_block``."""

    header: Header
    txs: tuple[SignedTx, ...]

    def __post_init__(self) -> None:
        if type(self.header) is not Header:
            raise MalformedError("type", "block.header: expected a Header")
        if type(self.txs) is not tuple or any(type(t) is not SignedTx for t in self.txs):
            raise MalformedError("type", "block.txs: expected a tuple of SignedTx")

    @property
    def tx_ids(self) -> list[bytes]:
        return [t.body.tx_id for t in self.txs]

    def to_obj(self) -> dict[str, Any]:
        return {"header": self.header.to_obj(), "txs": [t.to_obj() for t in self.txs]}

    @classmethod
    def from_obj(cls, obj: object) -> Block:
        m = _map(obj, _BLOCK_KEYS, _NONE, "block")
        txs = _array(m["txs"], "block.txs", MAX_BLOCK_BYTES)  # bounded by the byte limit
        return cls(Header.from_obj(m["header"]), tuple(SignedTx.from_obj(t) for t in txs))


MAX_ADMINS = 64  # district admin keys in one trust anchor


@dataclass(frozen=True, slots=True)
class Admin:
    """A district admin key of the trust anchor (§5): ``{ "alg", "public_key", "district" }``.
    It may enroll keys (§6 ``device.enroll``) for its own district only."""

    alg: str
    public_key: bytes
    district: str

    def __post_init__(self) -> None:
        _text(self.alg, "admin.alg", 1)
        _bytes(self.public_key, KEY_SIZE, "admin.public_key")
        _text(self.district, "admin.district", 1)

    def to_obj(self) -> dict[str, Any]:
        return {"alg": self.alg, "public_key": self.public_key, "district": self.district}

    @classmethod
    def from_obj(cls, obj: object) -> Admin:
        m = _map(obj, _ADMIN_KEYS, _NONE, "admin")
        return cls(m["alg"], m["public_key"], m["district"])


@dataclass(frozen=True, slots=True)
class TrustAnchor:
    """``{ "chain_id", "height", "block_id", "validators", "admins" }`` (§5), provisioned, not
    fetched.

    ``validators`` is the set that signs the anchor block (it must hash to the anchor header's
    validators_hash). ``admins`` are the district admin keys that may enroll keys (§6); an
    anchor used only to sync headers may omit them (then no enrollment verifies).
    """

    chain_id: str
    height: int
    block_id: bytes
    validators: ValidatorSet
    admins: tuple[Admin, ...] = ()

    def __post_init__(self) -> None:
        _text(self.chain_id, "trust_anchor.chain_id", 1, MAX_CHAIN_ID)
        _uint(self.height, "trust_anchor.height")
        _bytes(self.block_id, HASH_SIZE, "trust_anchor.block_id")
        if type(self.validators) is not ValidatorSet:
            raise MalformedError("type", "trust_anchor.validators: expected a ValidatorSet")
        if type(self.admins) is not tuple or len(self.admins) > MAX_ADMINS \
                or any(type(a) is not Admin for a in self.admins):
            raise MalformedError("type", f"trust_anchor.admins: up to {MAX_ADMINS} Admin")
        if len({a.public_key for a in self.admins}) != len(self.admins):
            raise MalformedError("duplicate", "trust_anchor.admins: a key appears twice")

    def admin(self, public_key: bytes) -> Admin | None:
        """The admin entry of ``public_key``, or None."""
        return next((a for a in self.admins if a.public_key == public_key), None)

    def to_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "chain_id": self.chain_id,
            "height": self.height,
            "block_id": self.block_id,
            "validators": self.validators.to_obj(),
        }
        if self.admins:
            obj["admins"] = [a.to_obj() for a in self.admins]
        return obj

    @classmethod
    def from_obj(cls, obj: object) -> TrustAnchor:
        m = _map(obj, _ANCHOR_KEYS, _ANCHOR_OPTIONAL, "trust_anchor")
        admins = ()
        if "admins" in m:
            items = _array(m["admins"], "trust_anchor.admins", MAX_ADMINS)
            admins = tuple(Admin.from_obj(a) for a in items)
        return cls(
            m["chain_id"], m["height"], m["block_id"], ValidatorSet.from_obj(m["validators"]),
            admins,
        )


@dataclass(frozen=True, slots=True)
class Proof:
    """An inclusion proof (§4): ``{ "leaf_index", "tree_size", "path" }``, path <= 64 hashes.

    ``leaf_index < tree_size`` and the path length are checked by the verifier (a proof that
    breaks them is well-formed but invalid).
    """

    leaf_index: int
    tree_size: int
    path: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _uint(self.leaf_index, "proof.leaf_index")
        _uint(self.tree_size, "proof.tree_size")
        if type(self.path) is not tuple:
            raise MalformedError("type", "proof.path: expected a tuple")
        if len(self.path) > MAX_PATH:
            raise MalformedError("count", f"proof.path: {len(self.path)} entries > {MAX_PATH}")
        for p in self.path:
            _bytes(p, HASH_SIZE, "proof.path entry")

    def to_obj(self) -> dict[str, Any]:
        return {"leaf_index": self.leaf_index, "tree_size": self.tree_size, "path": list(self.path)}

    @classmethod
    def from_obj(cls, obj: object) -> Proof:
        m = _map(obj, _PROOF_KEYS, _NONE, "proof")
        path = _array(m["path"], "proof.path", MAX_PATH)
        return cls(m["leaf_index"], m["tree_size"], tuple(path))


_NONE: frozenset[str] = frozenset()
_VALIDATOR_KEYS = frozenset({"alg", "public_key", "power"})
_HEADER_KEYS = frozenset({
    "chain_id", "height", "version", "prev_hash", "tx_root", "timestamp", "validators_hash",
    "next_validators_hash",
})  # fmt: skip
_COMMIT_KEYS = frozenset({"height", "block_id", "signatures"})
_SIGNATURE_KEYS = frozenset({"index", "signature"})
_TX_BODY_KEYS = frozenset({"chain_id", "type", "timestamp", "sender", "data", "nonce"})
_TX_BODY_OPTIONAL = frozenset({"recipient", "memo"})
_SIGNED_TX_KEYS = frozenset({"body", "alg", "public_key", "signature"})
_BLOCK_KEYS = frozenset({"header", "txs"})
_ANCHOR_KEYS = frozenset({"chain_id", "height", "block_id", "validators"})
_ANCHOR_OPTIONAL = frozenset({"admins"})
_ADMIN_KEYS = frozenset({"alg", "public_key", "district"})
_PROOF_KEYS = frozenset({"leaf_index", "tree_size", "path"})


# --- size limits (§8) and decoders -------------------------------------------------------------
# Objects without a byte limit of their own in §8 get the size of their largest well-formed
# encoding, derived from the field limits (so the limit can never refuse a valid object).

_MAX_VALIDATOR = {"alg": "a" * MAX_TEXT, "public_key": bytes(KEY_SIZE), "power": MAX_UINT}
MAX_HEADER_BYTES = len(wire.encode({
    "chain_id": "c" * MAX_CHAIN_ID, "height": MAX_UINT, "version": "v" * MAX_TEXT,
    "prev_hash": ZERO_HASH, "tx_root": ZERO_HASH, "timestamp": MAX_UINT,
    "validators_hash": ZERO_HASH, "next_validators_hash": ZERO_HASH,
}))  # fmt: skip
MAX_VALIDATOR_SET_BYTES = len(wire.encode([_MAX_VALIDATOR] * MAX_VALIDATORS))
MAX_COMMIT_BYTES = len(wire.encode({
    "height": MAX_UINT, "block_id": ZERO_HASH,
    "signatures": [{"index": MAX_UINT, "signature": bytes(SIGNATURE_SIZE)}] * MAX_VALIDATORS,
}))  # fmt: skip
MAX_TRUST_ANCHOR_BYTES = len(wire.encode({
    "chain_id": "c" * MAX_CHAIN_ID, "height": MAX_UINT, "block_id": ZERO_HASH,
    "validators": [_MAX_VALIDATOR] * MAX_VALIDATORS,
    "admins": [{"alg": "a" * MAX_TEXT, "public_key": bytes(KEY_SIZE),
                "district": "d" * MAX_TEXT}] * MAX_ADMINS,
}))  # fmt: skip
MAX_PROOF_BYTES = len(wire.encode({
    "leaf_index": MAX_UINT, "tree_size": MAX_UINT, "path": [ZERO_HASH] * MAX_PATH,
}))  # fmt: skip
MAX_BLOCK_BYTES = MAX_RESPONSE_BYTES  # a block travels at most as one HTTP response


def decode_limited(data: object, max_size: int, what: str) -> Any:
    """Size check first, then canonical CBOR decoding, with WireError mapped to MalformedError
    (every ledger object here and every district-node response in sync.py)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedError("type", f"{what}: expected bytes, got {type(data).__name__}")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > max_size:
        raise MalformedError("oversize", f"{what}: {size} bytes > {max_size}")
    try:
        return wire.decode(data, max_size)
    except wire.WireError as exc:
        raise MalformedError(exc.reason, f"{what}: {exc.detail}") from exc


def decode_header(data: bytes) -> Header:
    return Header.from_obj(decode_limited(data, MAX_HEADER_BYTES, "header"))


def decode_validator_set(data: bytes) -> ValidatorSet:
    return ValidatorSet.from_obj(decode_limited(data, MAX_VALIDATOR_SET_BYTES, "validator set"))


def decode_commit(data: bytes) -> Commit:
    return Commit.from_obj(decode_limited(data, MAX_COMMIT_BYTES, "commit"))


def decode_tx_body(data: bytes) -> TxBody:
    return TxBody.from_obj(decode_limited(data, MAX_SIGNED_TX_BYTES, "tx_body"))


def decode_signed_tx(data: bytes) -> SignedTx:
    return SignedTx.from_obj(decode_limited(data, MAX_SIGNED_TX_BYTES, "signed_tx"))


def decode_block(data: bytes) -> Block:
    return Block.from_obj(decode_limited(data, MAX_BLOCK_BYTES, "block"))


def decode_trust_anchor(data: bytes) -> TrustAnchor:
    return TrustAnchor.from_obj(decode_limited(data, MAX_TRUST_ANCHOR_BYTES, "trust_anchor"))


def decode_proof(data: bytes) -> Proof:
    return Proof.from_obj(decode_limited(data, MAX_PROOF_BYTES, "proof"))
