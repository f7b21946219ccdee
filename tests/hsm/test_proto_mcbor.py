"""mcbor (the firmware's canonical CBOR) against appliance.wire, the host's cbor2-based codec.

Encoding must be byte-identical, and decoding must accept exactly what wire accepts, with equal
results: checked on random objects, on random and mutated inputs, on structured near-canonical
inputs (long heads, unsorted or duplicate keys, floats, tags, indefinite lengths...), and on an
explicit list of rejections.
"""

import collections
import enum
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import wire
from appliance.hsm.proto import mcbor

INT_EDGES = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1,
             -1, -24, -25, -256, -257, -65536, -65537, -(2**32), -(2**32) - 1, -(2**64)]

ints = st.one_of(st.integers(-(2**64), 2**64 - 1), st.sampled_from(INT_EDGES))
keys = st.text(max_size=10).filter(lambda k: len(k.encode()) <= 23)
leaves = st.one_of(ints, st.binary(max_size=40), st.text(max_size=20), st.booleans(), st.none())
objects = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(keys, inner, max_size=6),
    ),
    max_leaves=30,
)


def same(a, b):
    """Equal values of equal types, recursively (True != 1 here, and bytes != bytearray)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def normalized(obj):
    """What a decoder returns for obj: tuples as lists, bytes-likes as bytes."""
    if isinstance(obj, list | tuple):
        return [normalized(x) for x in obj]
    if isinstance(obj, dict):
        return {k: normalized(v) for k, v in obj.items()}
    if isinstance(obj, bytearray | memoryview):
        return bytes(obj)
    return obj


def outcome(decoder, data, **kw):
    try:
        return ("ok", decoder(data, **kw))
    except (wire.WireError, mcbor.CborError) as exc:
        return ("error", type(exc).__name__)


def assert_same_verdict(data, max_size=4096, max_depth=16):
    theirs = outcome(wire.decode, data, max_size=max_size, max_depth=max_depth)
    ours = outcome(mcbor.decode, data, max_size=max_size, max_depth=max_depth)
    assert theirs[0] == ours[0], (data.hex(), theirs, ours)
    if ours[0] == "ok":
        assert same(theirs[1], ours[1]), (data.hex(), theirs, ours)
    else:
        assert ours[1] == "CborError"
    return ours[0]


# --- encoding -------------------------------------------------------------------------------


@settings(max_examples=400)
@given(objects)
def test_encode_is_byte_identical_to_wire(obj):
    encoded = mcbor.encode(obj)
    assert encoded == wire.encode(obj)
    assert same(mcbor.decode(encoded, max_size=1 << 20), normalized(obj))


def test_encode_known_bytes():
    assert mcbor.encode({"op": "info"}) == bytes.fromhex("a1626f7064696e666f")
    assert mcbor.encode({"bb": 1, "a": 2, "c": 3}) == bytes.fromhex("a3616102616303626262" "01")
    assert mcbor.encode(2**64 - 1) == b"\x1b" + b"\xff" * 8
    assert mcbor.encode(-(2**64)) == b"\x3b" + b"\xff" * 8
    assert mcbor.encode([True, False, None]) == b"\x83\xf5\xf4\xf6"
    assert mcbor.encode(memoryview(b"ab")) == mcbor.encode(bytearray(b"ab")) == b"\x42ab"


class _Color(enum.IntEnum):
    RED = 1


class _Str(str):
    pass


CYCLE: list = []
CYCLE.append(CYCLE)

UNENCODABLE = [
    1.5, {1, 2}, 2**64, -(2**64) - 1, _Color.RED, _Str("x"), collections.OrderedDict(a=1),
    {1: "int key"}, {b"k": "bytes key"}, {"k" * 24: "long key"}, {"中" * 8: "24 UTF-8 bytes"},
    "\ud800", {"\udc00": 1}, CYCLE, object(),
]


@pytest.mark.parametrize("obj", UNENCODABLE, ids=repr)
def test_encode_refuses_what_wire_refuses(obj):
    with pytest.raises(wire.WireError):
        wire.encode(obj, max_depth=16)
    with pytest.raises(mcbor.CborError):
        mcbor.encode(obj)


def test_encode_depth_limit():
    nested = []
    for _ in range(15):
        nested = [nested]  # 16 containers
    assert mcbor.encode(nested) == b"\x81" * 15 + b"\x80"
    with pytest.raises(mcbor.CborError):
        mcbor.encode([nested])
    assert mcbor.encode([nested], max_depth=17) == b"\x81" * 16 + b"\x80"


# --- decoding: explicit cases -----------------------------------------------------------------

REJECTED = {
    "empty": b"",
    "int head 24 for 23": b"\x18\x17",
    "int head 25 for 255": b"\x19\x00\xff",
    "int head 26 for 65535": b"\x1a\x00\x00\xff\xff",
    "int head 27 for 2**32-1": b"\x1b\x00\x00\x00\x00\xff\xff\xff\xff",
    "negative long head": b"\x38\x00",
    "length long head": b"\x58\x01a",
    "count long head": b"\x98\x00",
    "reserved ai 28": b"\x1c",
    "reserved ai 30": b"\x3e",
    "indefinite uint": b"\x1f",
    "indefinite bytes": b"\x5f\x41a\xff",
    "indefinite text": b"\x7f\x61a\xff",
    "indefinite array": b"\x9f\xff",
    "indefinite map": b"\xbf\xff",
    "half float": b"\xf9\x00\x00",
    "single float": b"\xfa\x00\x00\x00\x00",
    "double float": b"\xfb" + bytes(8),
    "undefined": b"\xf7",
    "simple 16": b"\xf0",
    "simple 32": b"\xf8\x20",
    "simple 24 short": b"\xf8\x10",
    "break": b"\xff",
    "tag 1": b"\xc1\x01",
    "bignum tag": b"\xc2\x41\x01",
    "tag in array": b"\x81\xd8\x20\x01",
    "keys unsorted": b"\xa2\x61b\x01\x61a\x02",
    "keys longer first": b"\xa2\x62aa\x01\x61b\x02",
    "duplicate key": b"\xa2\x61a\x01\x61a\x02",
    "int key": b"\xa1\x01\x02",
    "bytes key": b"\xa1\x41a\x01",
    "24-byte key": b"\xa1\x78\x18" + b"k" * 24 + b"\x01",
    "key long head": b"\xa1\x78\x01k\x01",
    "bad UTF-8": b"\x62\xc3\x28",
    "surrogate": b"\x63\xed\xa0\x80",
    "overlong NUL": b"\x62\xc0\x80",
    "overlong 3-byte": b"\x63\xe0\x80\xaf",
    "above U+10FFFF": b"\x64\xf4\x90\x80\x80",
    "truncated UTF-8": b"\x62\x61\xe4",
    "bad UTF-8 key": b"\xa1\x61\xff\x01",
    "trailing byte": b"\x01\x02",
    "trailing after map": b"\xa0\x00",
    "truncated head": b"\x19\x01",
    "truncated bytes": b"\x43ab",
    "truncated array": b"\x82\x01",
    "truncated map": b"\xa1\x61a",
    "huge bytes length": b"\x5b" + b"\xff" * 8,
    "huge text length": b"\x7a\xff\xff\xff\xff",
    "huge array count": b"\x9b" + b"\xff" * 8,
    "huge map count": b"\xbb" + b"\xff" * 8 + b"\x61a\x01",
    "map count > bytes/2": b"\xa2\x61a\x01",
}


@pytest.mark.parametrize("data", REJECTED.values(), ids=list(REJECTED))
def test_decode_rejects(data):
    with pytest.raises(mcbor.CborError):
        mcbor.decode(data)
    with pytest.raises(wire.WireError):  # and the reference agrees
        wire.decode(data, max_size=4096, max_depth=16)


ACCEPTED = [
    (b"\x17", 23), (b"\x18\x18", 24), (b"\x19\x01\x00", 256), (b"\x3b" + b"\xff" * 8, -(2**64)),
    (b"\x1b" + b"\xff" * 8, 2**64 - 1), (b"\x40", b""), (b"\x60", ""), (b"\x80", []),
    (b"\xa0", {}), (b"\xf4", False), (b"\xf5", True), (b"\xf6", None),
    (b"\x64\xf0\x9f\x98\x80", "\U0001f600"), (b"\x63\xef\xbf\xbf", "\uffff"),
    (b"\xa3\x61a\x01\x61b\x80\x62aa\xa0", {"a": 1, "b": [], "aa": {}}),
]


@pytest.mark.parametrize(("data", "value"), ACCEPTED)
def test_decode_accepts(data, value):
    assert same(mcbor.decode(data), value)
    assert same(mcbor.decode(bytearray(data)), value)
    assert same(mcbor.decode(memoryview(data)), value)
    assert mcbor.encode(value) == data


def test_decode_returns_bytes_for_bytearray_input():
    assert type(mcbor.decode(bytearray(b"\x42ab"))) is bytes


@pytest.mark.parametrize("data", ["\x01", [1], 1, None])
def test_decode_refuses_non_bytes(data):
    with pytest.raises(mcbor.CborError):
        mcbor.decode(data)


def test_size_limit_is_checked_first():
    big = mcbor.encode(b"x" * 4094)  # 4097 bytes
    with pytest.raises(mcbor.CborError):
        mcbor.decode(big)
    assert mcbor.decode(big, max_size=4097) == b"x" * 4094
    with pytest.raises(mcbor.CborError):  # refused by size although it is garbage
        mcbor.decode(b"\xff" * 4097)
    assert mcbor.decode(mcbor.encode(b"x" * 4093)) == b"x" * 4093  # 4096 bytes fit


def test_depth_limit():
    assert mcbor.decode(b"\x81" * 15 + b"\x80") is not None  # 16 nested containers
    with pytest.raises(mcbor.CborError):
        mcbor.decode(b"\x81" * 16 + b"\x80")
    with pytest.raises(mcbor.CborError):
        mcbor.decode(b"\xa1\x61a" * 16 + b"\xa0")
    with pytest.raises(mcbor.CborError):
        mcbor.decode(b"\x81" * 3000 + b"\x80")  # deep but within the size limit
    assert mcbor.decode(b"\x81\x80", max_depth=2) == [[]]
    with pytest.raises(mcbor.CborError):
        mcbor.decode(b"\x81\x80", max_depth=1)


def test_utf8_validator_matches_cpython():
    samples = [bytes([a, b, c, d]) for a in (0x7F, 0xC2, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5)
               for b in (0x80, 0x9F, 0xA0, 0xBF, 0xC0) for c in (0x80, 0x41) for d in (0x80,)]
    for raw in samples:
        try:
            raw.decode("utf-8")
            valid = True
        except UnicodeDecodeError:
            valid = False
        assert mcbor.utf8_valid(raw) == valid, raw.hex()


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_utf8_validator_fuzz(raw):
    try:
        raw.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    assert mcbor.utf8_valid(raw) == valid


# --- decoding: differential fuzz ----------------------------------------------------------------


@settings(max_examples=400)
@given(st.binary(max_size=40))
def test_differential_random_bytes(data):
    assert_same_verdict(data)


@st.composite
def mutated(draw):
    data = bytearray(mcbor.encode(draw(objects)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data.insert(pos, draw(st.integers(0, 255)))
        elif op == "delete" and pos < len(data):
            del data[pos]
        elif op == "truncate":
            del data[pos:]
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=3))
    return bytes(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_differential_mutated(data):
    assert_same_verdict(data)


def _head(major, n, width):
    """A head with the argument in the given width (None: shortest), maybe non-canonical."""
    if width is None:
        return _shortest(major, n)
    return bytes([major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[width]]) + n.to_bytes(width, "big")


def _shortest(major, n):
    out = bytearray()
    mcbor._head(out, major, n)
    return bytes(out)


widths = st.sampled_from([None] * 6 + [1, 2, 4, 8])


@st.composite
def raw_items(draw, depth=0):
    """CBOR items built from parts, mostly canonical, with every kind of deviation mixed in."""
    kinds = ["uint", "nint", "bytes", "text", "badtext", "simple", "float", "tag", "indef", "odd"]
    if depth < 5:
        kinds += ["array", "map", "map"]
    kind = draw(st.sampled_from(kinds))
    if kind in ("uint", "nint"):
        n = draw(st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32,
                                  2**64 - 1]))
        width = draw(widths)
        if width is not None and n >= 1 << (8 * width):
            width = None
        return _head(0 if kind == "uint" else 1, n, width)
    if kind in ("bytes", "text", "badtext"):
        raw = draw(st.binary(max_size=6)) if kind == "bytes" else draw(
            st.text(max_size=4)).encode()
        if kind == "badtext":
            raw += draw(st.sampled_from([b"\xc0\x80", b"\xed\xa0\x80", b"\xff", b"\xe4\xb8"]))
        return _head(2 if kind == "bytes" else 3, len(raw), draw(widths)) + raw
    if kind == "simple":
        return draw(st.sampled_from([b"\xf4", b"\xf5", b"\xf6", b"\xf7", b"\xe0", b"\xf8\x20",
                                     b"\xf8\x14", b"\xff"]))
    if kind == "float":
        return draw(st.sampled_from([b"\xf9\x3c\x00", b"\xfa\x3f\x80\x00\x00",
                                     b"\xfb\x3f\xf0" + bytes(6)]))
    if kind == "tag":
        return bytes([0xC0 | draw(st.integers(0, 23))]) + draw(raw_items(depth + 1))
    if kind == "indef":
        return draw(st.sampled_from([b"\x5f\x41a\xff", b"\x9f\x01\xff", b"\xbf\x61a\x01\xff",
                                     b"\x7f\xff"]))
    if kind == "odd":
        return bytes([draw(st.sampled_from([0x1c, 0x1d, 0x1e, 0x3f, 0xdc, 0xfc, 0xfd]))])
    items = draw(st.lists(raw_items(depth + 1), max_size=4))
    if kind == "array":
        return _head(4, len(items), draw(widths)) + b"".join(items)
    # map: sorted text keys by default, sometimes shuffled, duplicated or not text
    names = draw(st.lists(st.sampled_from(["a", "b", "aa", "ab", "z", "k" * 23, "k" * 24, "é"]),
                          max_size=len(items), min_size=len(items)))
    if draw(st.booleans()):
        names = sorted(set(names), key=lambda k: (len(k.encode()), k.encode()))
        items = items[:len(names)]
    encoded_keys = [mcbor.encode(k) if len(k.encode()) <= 23 else b"\x78\x18" + k.encode()
                    for k in names]
    if draw(st.integers(0, 9)) == 0 and encoded_keys:
        encoded_keys[0] = draw(st.sampled_from([b"\x01", b"\x41a", b"\x78\x01a", b"\xf6"]))
    return _head(5, len(items), draw(widths)) + b"".join(
        k + v for k, v in zip(encoded_keys, items, strict=True))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(raw_items(), st.sampled_from([b""] * 8 + [b"\x00", b"\xff"]))
def test_differential_structured(data, tail):
    assert_same_verdict(data + tail)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(raw_items(), st.integers(1, 6), st.integers(8, 64))
def test_differential_limits(data, max_depth, max_size):
    assert_same_verdict(data, max_size=max_size, max_depth=max_depth)


def test_structured_strategy_reaches_both_verdicts():
    # Guard against a strategy that only ever produces one kind of input.
    seen = set()

    @settings(max_examples=150, database=None)
    @given(raw_items())
    def collect(data):
        seen.add(assert_same_verdict(data))

    collect()
    assert seen == {"ok", "error"}


def test_struct_is_big_endian():  # the heads written through struct
    assert _shortest(0, 0x1234) == b"\x19" + struct.pack(">H", 0x1234)
