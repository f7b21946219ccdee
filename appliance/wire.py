"""Canonical CBOR for the ledger wire protocol (protocol §1).

Hashes and signatures are computed over encodings, so every value must have exactly one byte
form: two nodes that encode the same object must produce the same bytes, and a decoder must not
accept a second spelling of a value (it would hash differently from the signed form, or carry
bytes that no signature covers). The profile is RFC 8949 §4.2.1 core deterministic encoding,
narrowed: definite lengths, shortest-form heads, no floats, no tags, no simple values other than
false/true/null, integers in [-2**64, 2**64 - 1], map keys are text strings of at most 23 UTF-8
bytes sorted by their encoded bytes (the one-byte head carries the length, so: shorter first,
then bytewise), no duplicate keys.

encode() checks the object tree against the profile, then lets cbor2 write it with
canonical=True. For these types cbor2 emits shortest-form definite heads and sorts map keys by
(encoded length, encoded bytes), which equals RFC 8949 bytewise order for such keys.

decode() checks the size before parsing, then parses with cbor2 with indefinite lengths and
duplicate keys disabled, non-string keys refused (no hash flooding through int keys), a nesting
limit, and every tag refused at its head. It then checks the decoded tree against the profile,
re-encodes it and accepts the input only if it is byte-identical to the re-encoding. That
comparison alone guarantees canonicity (it is what rejects non-shortest heads); the checks
before it fail fast and give WireError.reason a precise value.

cbor2 6.x quirks handled here (seen with 6.3.0): loads() silently ignores trailing bytes;
tags such as 0/1 (datetime), 2/3 (bignum -> int), 4/5 (Decimal), 28/29 (shared references),
30, 35 and 258 (set) are decoded by built-in decoders that tag_hook never sees, so every tag
is refused through a catch-all semantic_decoders mapping; max_depth does not count empty
containers; a memoryview is encoded as an array of ints; dumps() lets UnicodeEncodeError (lone
surrogates) escape unwrapped.
"""

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NoReturn

import cbor2

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_SIZE",
    "MAX_KEY_BYTES",
    "WireError",
    "decode",
    "encode",
]

DEFAULT_MAX_SIZE = 8 * 1024 * 1024  # the largest body the protocol allows (HTTP response)
DEFAULT_MAX_DEPTH = 64  # nested arrays/maps, empty ones included
MAX_KEY_BYTES = 23  # keys fit the one-byte text-string head
_INT_MIN, _INT_MAX = -(2**64), 2**64 - 1
_LEAVES = frozenset({str, bytes, bytearray, memoryview, bool, type(None)})
_CONTAINERS = frozenset({list, tuple, dict})
_DETAIL_MAX = 120  # cbor2 messages may quote attacker data (e.g. a duplicate 1 MiB key)


class WireError(ValueError):
    """Wire data that is not canonical CBOR, or an object that cannot be encoded canonically.

    `reason` is a short machine-readable code: type, oversize, truncated, malformed, trailing,
    not_canonical, key_order, duplicate_key, indefinite_length, float, tag, simple, bad_key,
    int_range, depth, utf8.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail[:_DETAIL_MAX]
        super().__init__(f"{reason}: {self.detail}" if self.detail else reason)


def encode(obj: object, *, max_depth: int = DEFAULT_MAX_DEPTH) -> bytes:
    """Return the canonical CBOR encoding of obj.

    Allowed: None, bool, int in [-2**64, 2**64 - 1], bytes/bytearray/memoryview, str,
    list/tuple, dict with str keys of at most 23 UTF-8 bytes; exact types only (no subclasses,
    so an IntEnum or OrderedDict is refused rather than silently reinterpreted).
    """
    views = _check(obj, max_depth, decoded=False)
    try:
        # A custom encoder table makes cbor2 several times slower; use it only when needed.
        return cbor2.dumps(obj, canonical=True, encoders=_ENCODERS if views else None)
    except UnicodeEncodeError as exc:
        raise WireError("utf8", "text string is not encodable as UTF-8") from exc
    except Exception as exc:  # not expected after _check; keep the one error type
        raise WireError("type", f"cbor2 could not encode: {exc}") from exc


def decode(
    data: bytes | bytearray | memoryview,
    max_size: int = DEFAULT_MAX_SIZE,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Any:
    """Decode exactly one canonical CBOR item; raise WireError for anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError("type", f"expected bytes, got {type(data).__name__}")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > max_size:
        raise WireError("oversize", f"{size} bytes > {max_size}")
    data = bytes(data)
    try:
        obj = cbor2.loads(
            data,
            semantic_decoders=_REFUSE_TAGS,
            tag_hook=_refuse_tag_hook,
            max_depth=max_depth,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
        )
    except Exception as exc:  # every cbor2 error, RecursionError and MemoryError included
        raise _from_cbor2(exc) from exc
    except BaseException as exc:
        # A Rust panic surfaces as pyo3's PanicException, a BaseException; it is still bad input.
        if type(exc).__name__ != "PanicException":
            raise
        raise WireError("malformed", "cbor2 panicked") from exc
    _check(obj, max_depth, decoded=True)
    try:
        canonical = cbor2.dumps(obj, canonical=True)
    except Exception as exc:  # not expected after _check
        raise WireError("malformed", f"cannot re-encode: {exc}") from exc
    if canonical != data:
        if data.startswith(canonical):
            raise WireError("trailing", f"{len(data) - len(canonical)} bytes after the item")
        raise WireError("not_canonical", "input differs from the canonical encoding")
    return obj


def _check(obj: object, max_depth: int, *, decoded: bool) -> bool:
    """Raise WireError unless the tree is inside the profile; return True if it holds a memoryview.

    Iterative, so no recursion limit; scalars are checked in place (the hot path for big arrays).
    """
    views = False
    pending: list[tuple[int, Iterable[Any]]] = [(0, (obj,))]  # (depth of items, items)
    while pending:
        depth, items = pending.pop()
        for item in items:
            kind = type(item)
            if kind is int:
                if not _INT_MIN <= item <= _INT_MAX:
                    raise WireError("int_range", "integer outside [-2**64, 2**64 - 1]")
            elif kind in _LEAVES:
                if kind is memoryview:
                    views = True
            elif kind in _CONTAINERS:
                if depth >= max_depth:  # also stops cyclic objects passed to encode()
                    raise WireError("depth", f"nesting deeper than {max_depth}")
                if kind is dict:
                    _check_keys(item, decoded)
                    pending.append((depth + 1, item.values()))
                else:
                    pending.append((depth + 1, item))
            else:
                _refuse_type(item)
    return views


def _check_keys(mapping: dict[Any, Any], decoded: bool) -> None:
    previous = (-1, b"")
    for key in mapping:
        if type(key) is not str:
            raise WireError("bad_key", f"map key of type {type(key).__name__}")
        try:
            raw = key.encode()
        except UnicodeEncodeError as exc:
            raise WireError("utf8", "map key is not encodable as UTF-8") from exc
        if len(raw) > MAX_KEY_BYTES:
            raise WireError("bad_key", f"map key of {len(raw)} bytes > {MAX_KEY_BYTES}")
        # cbor2 builds dicts in input order; encode() sorts, so only decoded maps must be sorted.
        if decoded:
            current = (len(raw), raw)
            if current <= previous:
                raise WireError("key_order", "map keys are not in canonical order")
            previous = current


def _refuse_type(item: object) -> NoReturn:
    if isinstance(item, float):
        raise WireError("float", "floats are not allowed")
    if isinstance(item, cbor2.CBORTag):
        raise WireError("tag", f"tag {item.tag}")
    if isinstance(item, cbor2.CBORSimpleValue) or item is cbor2.undefined:
        raise WireError("simple", f"simple value {item!r}")
    if isinstance(item, int) and not isinstance(item, bool):
        raise WireError("type", f"int subclass {type(item).__name__}")
    raise WireError("type", f"unsupported type {type(item).__name__}")


class _RefuseTags(Mapping[int, Any]):
    """semantic_decoders that refuses every tag when cbor2 looks it up, i.e. at the tag head."""

    def __getitem__(self, tag: int) -> NoReturn:
        raise WireError("tag", f"tag {tag}")

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[int]:
        return iter(())


_REFUSE_TAGS = _RefuseTags()


def _refuse_tag_hook(tag: cbor2.CBORTag, immutable: bool) -> NoReturn:
    raise WireError("tag", f"tag {tag.tag}")  # backstop; _REFUSE_TAGS is consulted first


def _encode_memoryview(encoder: cbor2.CBOREncoder, view: memoryview) -> None:
    encoder.encode_bytes(view.tobytes())  # cbor2 would otherwise write an array of ints


_ENCODERS = {memoryview: _encode_memoryview}

# Reasons for cbor2 errors that carry no structured cause; matched on cbor2 6.x messages. An
# unknown message still rejects the input, only with the generic reason "malformed".
_CBOR2_MESSAGES = (
    ("indefinite length", "indefinite_length"),
    ("duplicate map key", "duplicate_key"),
    ("nesting depth", "depth"),
    ("map key must be", "bad_key"),
)


def _from_cbor2(exc: BaseException) -> WireError:
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, WireError):  # raised by our tag hooks inside cbor2
            return WireError(cause.reason, cause.detail)
        if isinstance(cause, UnicodeDecodeError):
            return WireError("utf8", "text string is not valid UTF-8")
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, cbor2.CBORDecodeEOF):
        return WireError("truncated", str(exc))
    message = str(exc)
    for needle, reason in _CBOR2_MESSAGES:
        if needle in message.lower():
            return WireError(reason, message)
    return WireError("malformed", f"{type(exc).__name__}: {message}")
