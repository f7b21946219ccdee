"""Canonical CBOR (appliance.wire): known encodings, round trips, every rejection class, fuzz."""

import array
import collections
import datetime
import decimal
import enum
import fractions
import tracemalloc

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.wire import DEFAULT_MAX_DEPTH, DEFAULT_MAX_SIZE, WireError, decode, encode

REASONS = {
    "type", "oversize", "truncated", "malformed", "trailing", "not_canonical", "key_order",
    "duplicate_key", "indefinite_length", "float", "tag", "simple", "bad_key", "int_range",
    "depth", "utf8",
}  # fmt: skip


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def head(major: int, n: int) -> bytes:
    """Shortest-form CBOR head, written independently of the code under test."""
    if n < 24:
        return bytes([major << 5 | n])
    for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * width):
            return bytes([major << 5 | info]) + n.to_bytes(width, "big")
    raise AssertionError(n)


def reference(obj: object) -> bytes:
    """Reference RFC 8949 §4.2.1 encoder for the allowed types (map keys sorted bytewise)."""
    if obj is False or obj is True or obj is None:
        return {False: b"\xf4", True: b"\xf5", None: b"\xf6"}[obj]
    if isinstance(obj, int):
        return head(0, obj) if obj >= 0 else head(1, -1 - obj)
    if isinstance(obj, bytes):
        return head(2, len(obj)) + obj
    if isinstance(obj, str):
        raw = obj.encode()
        return head(3, len(raw)) + raw
    if isinstance(obj, list):
        return head(4, len(obj)) + b"".join(map(reference, obj))
    if isinstance(obj, dict):
        pairs = sorted((reference(k), reference(v)) for k, v in obj.items())
        return head(5, len(obj)) + b"".join(k + v for k, v in pairs)
    raise AssertionError(type(obj))


def shape(obj: object) -> object:
    """Type-exact comparable form (so True != 1 and b"" != "")."""
    if isinstance(obj, list):
        return ("list", [shape(x) for x in obj])
    if isinstance(obj, dict):
        return ("dict", sorted((k, shape(v)) for k, v in obj.items()))
    return (type(obj).__name__, obj)


def reject(data: bytes, reason: str, **kwargs: int) -> WireError:
    with pytest.raises(WireError) as info:
        decode(data, **kwargs)
    assert info.value.reason == reason, info.value
    return info.value


def refuse(obj: object, reason: str, **kwargs: int) -> None:
    with pytest.raises(WireError) as info:
        encode(obj, **kwargs)
    assert info.value.reason == reason, info.value


TEXT = st.text(st.characters(codec="utf-8"), max_size=30)
KEYS = st.text(st.characters(codec="utf-8"), max_size=23).filter(lambda k: len(k.encode()) <= 23)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, -(2**64)])
    | st.binary(max_size=40)
    | TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=30,
)


# --- known encodings (RFC 8949 Appendix A) ---------------------------------------------------

APPENDIX_A = [
    (0, "00"),
    (1, "01"),
    (10, "0a"),
    (23, "17"),
    (24, "1818"),
    (25, "1819"),
    (100, "1864"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"),
    (-10, "29"),
    (-100, "3863"),
    (-1000, "3903e7"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (b"", "40"),
    (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"),
    ("a", "6161"),
    ("IETF", "6449455446"),
    ('"\\', "62225c"),
    ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"),
    ("\U00010151", "64f0908591"),
    ([], "80"),
    ([1, 2, 3], "83010203"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    (
        {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"},
        "a56161614161626142616361436164614461656145",
    ),
]


@pytest.mark.parametrize(("value", "expected"), APPENDIX_A)
def test_appendix_a_encode(value: object, expected: str) -> None:
    assert encode(value).hex() == expected


@pytest.mark.parametrize(("value", "expected"), APPENDIX_A)
def test_appendix_a_decode(value: object, expected: str) -> None:
    assert shape(decode(h(expected))) == shape(value)


def test_map_keys_shorter_first_then_bytewise() -> None:
    assert encode({"bb": 1, "a": 2, "c": 3}) == h("a3 6161 02 6163 03 626262 01")
    keys = ["ab", "", "b", "\u00e9", "aa", "a", "z"]  # "\u00e9" is 2 UTF-8 bytes (c3 a9)
    encoded = encode(dict.fromkeys(keys, 0))
    assert encoded == h("a7 60 00 6161 00 6162 00 617a 00 626161 00 626162 00 62c3a9 00")


def test_decode_accepts_sorted_keys_and_preserves_order() -> None:
    assert list(decode(h("a3 6161 02 6163 03 626262 01"))) == ["a", "c", "bb"]


def test_other_input_types() -> None:
    assert encode((1, (2,))) == encode([1, [2]]) == h("82 01 81 02")
    assert encode(bytearray(b"ab")) == encode(memoryview(b"ab")) == h("42 6162")
    assert encode({"k": [memoryview(b"\x00")]}) == h("a1 616b 81 41 00")
    assert decode(bytearray(h("8101"))) == [1]
    assert decode(memoryview(h("a1616140"))) == {"a": b""}


def test_decoded_container_types() -> None:
    value = decode(encode({"a": [b"x", ("y",)]}))
    assert type(value) is dict
    assert type(value["a"]) is list
    assert type(value["a"][0]) is bytes
    assert type(value["a"][1]) is list


def test_wire_error_is_a_value_error() -> None:
    err = reject(h("f7"), "simple")
    assert isinstance(err, ValueError)
    assert str(err).startswith("simple")


# --- round trips against the reference encoder -----------------------------------------------


@given(VALUES)
def test_encode_matches_reference_encoder(value: object) -> None:
    assert encode(value) == reference(value)


@given(st.dictionaries(KEYS, st.integers(0, 3), min_size=2, max_size=30))
def test_cbor2_map_order_is_rfc8949_bytewise_order(value: dict[str, int]) -> None:
    # cbor2 sorts by (encoded length, encoded bytes); for text keys <= 23 bytes the head byte
    # carries the length, so that is the same as sorting the encoded keys bytewise.
    by_bytes = sorted(value, key=lambda k: reference(k))
    assert list(decode(encode(value))) == by_bytes
    assert cbor2.dumps(value, canonical=True) == reference(value)


@given(VALUES)
def test_round_trip(value: object) -> None:
    data = encode(value)
    assert shape(decode(data)) == shape(value)
    assert encode(decode(data)) == data


# --- decode rejections, one rule at a time ---------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        "1817",  # 23 in a one-byte argument
        "190064",  # 100 in two bytes
        "1a000003e8",  # 1000 in four bytes
        "1b00000000000f4240",  # 1000000 in eight bytes
        "3800",  # -1 in one byte
        "3b00000000000000ff",  # -256 in eight bytes
        "81 1800",  # inside an array
        "a1 6161 190018",  # 24 in two bytes, as a map value
    ],
)
def test_reject_non_shortest_int(data: str) -> None:
    reject(h(data), "not_canonical")


@pytest.mark.parametrize(
    "data",
    [
        "5801 ff",  # byte string, length 1 in one byte
        "590001 ff",  # byte string, length 1 in two bytes
        "7801 61",  # text string
        "7a00000001 61",  # text string, four-byte length
        "9801 01",  # array
        "b801 6161 01",  # map
        "a1 7801 61 01",  # map key with a non-shortest length
    ],
)
def test_reject_non_shortest_length(data: str) -> None:
    reject(h(data), "not_canonical")


@pytest.mark.parametrize(
    "data",
    [
        "9f 01 ff",  # array
        "9f ff",  # empty array
        "bf 6161 01 ff",  # map
        "5f 4101 ff",  # byte string
        "7f 6161 ff",  # text string
        "81 9f ff",  # nested
    ],
)
def test_reject_indefinite_length(data: str) -> None:
    reject(h(data), "indefinite_length")


@pytest.mark.parametrize(
    "data",
    [
        "f93c00",  # 1.0 half
        "f90000",  # 0.0 half
        "f97e00",  # NaN half
        "fa3f800000",  # 1.0 single
        "fb3ff0000000000000",  # 1.0 double
        "fb3ff199999999999a",  # 1.1 double
        "a1 6161 f93c00",  # as a map value
    ],
)
def test_reject_float(data: str) -> None:
    reject(h(data), "float")


@pytest.mark.parametrize(
    "data",
    [
        "c0 74 323031332d30332d32315432303a30343a30305a",  # 0: date/time string
        "c1 1a514b67b0",  # 1: epoch datetime
        "c2 49 010000000000000000",  # 2: bignum 2**64
        "c2 41 01",  # 2: bignum 1, would otherwise pass as the int 1
        "c3 41 00",  # 3: negative bignum -1
        "c4 82 21 196ab3",  # 4: decimal fraction
        "d8 18 41 00",  # 24: embedded CBOR
        "d8 1e 82 01 02",  # 30: rational
        "d9 0102 82 01 02",  # 258: set
        "d8 1c 81 00",  # 28: shareable
        "d9 0100 81 00",  # 256: string namespace
        "d9 d9f7 00",  # 55799: self-described CBOR around a canonical 0
        "d9 ffff 00",  # an unknown tag
        "db ffffffffffffffff 00",  # the largest tag number
        "c0",  # refused at the tag head, before its content is read
        "81 c1 00",  # nested
        "a1 6161 c1 00",  # as a map value
        "a1 c1 00 01",  # as a map key
    ],
)
def test_reject_tag(data: str) -> None:
    reject(h(data), "tag")


@pytest.mark.parametrize("data", ["f7", "e0", "f3", "f820", "f8ff", "81 f7", "a1 6161 e0"])
def test_reject_undefined_and_simple_values(data: str) -> None:
    reject(h(data), "simple")


@pytest.mark.parametrize(
    "data",
    [
        "a2 6162 01 6161 02",  # {"b", "a"}: bytewise order broken
        "a2 626161 01 6162 02",  # {"aa", "b"}: longer key first
        "a2 6161 01 60 02",  # {"a", ""}: the empty key sorts first
        "81 a2 6162 01 6161 02",  # nested
    ],
)
def test_reject_unsorted_keys(data: str) -> None:
    reject(h(data), "key_order")


@pytest.mark.parametrize(
    "data",
    [
        "a2 6161 01 6161 02",
        "a2 6161 02 6161 01",
        "a3 6161 01 6162 02 6161 03",  # not adjacent
        "a2 6161 01 6161 01",  # same value too
    ],
)
def test_reject_duplicate_keys(data: str) -> None:
    reject(h(data), "duplicate_key")


@pytest.mark.parametrize(
    "data",
    [
        "a1 01 02",  # int key
        "a1 20 02",  # negative int key
        "a1 41 61 02",  # byte string key
        "a1 f5 02",  # bool key
        "a1 f6 02",  # null key
        "a1 f93c00 02",  # float key
        "a1 81 01 02",  # array key
        "a1 a0 02",  # map key
    ],
)
def test_reject_non_text_key(data: str) -> None:
    reject(h(data), "bad_key")


def test_non_string_key_refused_as_soon_as_read() -> None:
    # Int keys are refused inside cbor2 before the map is built (colliding int hashes would make
    # building it quadratic), so the truncated rest of this map is never reached.
    reject(h("a2 01 02"), "bad_key")
    reject(h("bb 00000000ffffffff 01 00"), "bad_key")


def test_key_length_limit() -> None:
    ok = "k" * 23
    assert decode(h("a1") + reference(ok) + h("01")) == {ok: 1}
    reject(h("a1") + reference("k" * 24) + h("01"), "bad_key")
    reject(h("a1") + reference("\u00e9" * 12) + h("01"), "bad_key")  # 12 chars, 24 bytes


@pytest.mark.parametrize(
    "data",
    [
        "62 c328",  # bad continuation byte
        "61 ff",  # invalid start byte
        "62 c0af",  # overlong "/"
        "63 eda080",  # UTF-8 encoded surrogate U+D800
        "64 f4908080",  # beyond U+10FFFF
        "a1 62c328 01",  # in a map key
    ],
)
def test_reject_invalid_utf8(data: str) -> None:
    reject(h(data), "utf8")


@pytest.mark.parametrize("data", ["00 00", "a0 00", "80 ff", "6161 61", "f6 f6"])
def test_reject_trailing_bytes(data: str) -> None:
    reject(h(data), "trailing")


@pytest.mark.parametrize(
    "data", ["", "18", "19 00", "1b 000000", "62 61", "82 01", "a1 6161", "a1", "81"]
)
def test_reject_truncated(data: str) -> None:
    reject(h(data), "truncated")


@pytest.mark.parametrize(
    "data",
    [
        "1c",  # reserved additional information 28
        "5d",  # reserved additional information 29 on a length
        "ff",  # break outside an indefinite-length item
        "f818",  # two-byte simple value below 32 is not well-formed
    ],
)
def test_reject_malformed(data: str) -> None:
    reject(h(data), "malformed")


def test_oversize_checked_before_parsing() -> None:
    data = encode(b"x" * 100)
    assert len(data) == 102
    assert decode(data, max_size=102) == b"x" * 100
    reject(data, "oversize", max_size=101)
    reject(b"\xff" * 10, "oversize", max_size=9)  # garbage, but the size check comes first
    view = memoryview(array.array("H", [0, 0, 0]))  # 3 items, 6 bytes
    with pytest.raises(WireError) as info:
        decode(view, max_size=5)
    assert info.value.reason == "oversize"


def test_default_max_size() -> None:
    assert DEFAULT_MAX_SIZE == 8 * 1024 * 1024
    reject(b"\x00" * (DEFAULT_MAX_SIZE + 1), "oversize")


@pytest.mark.timeout(30)
def test_depth_bomb() -> None:
    reject(b"\x81" * 100000 + b"\x00", "depth")
    reject(b"\xa1\x61a" * 100000 + b"\x00", "depth")


def test_depth_limit() -> None:
    assert DEFAULT_MAX_DEPTH == 64
    assert decode(b"\x81" * 64 + b"\x00") == encode_nested(64, 0)
    reject(b"\x81" * 65 + b"\x00", "depth")
    # cbor2's own max_depth does not count an empty innermost container; ours does.
    assert decode(b"\x81" * 63 + b"\x80") == encode_nested(63, [])
    reject(b"\x81" * 64 + b"\x80", "depth")
    reject(h("818100"), "depth", max_depth=1)
    assert decode(h("818100"), max_depth=2) == [[0]]
    reject(h("80"), "depth", max_depth=0)
    assert decode(h("00"), max_depth=0) == 0


def encode_nested(levels: int, inner: object) -> object:
    value = inner
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "data",
    [
        "5b 7fffffffffffffff 00",  # byte string of 2**63 - 1 bytes
        "5b ffffffffffffffff",  # byte string of 2**64 - 1 bytes
        "7b 7fffffffffffffff 61",  # text string
        "5a ffffffff 00",  # 4 GiB byte string
        "9b 7fffffffffffffff 00",  # array
        "bb 7fffffffffffffff 6161",  # map
        "81 5b 7fffffffffffffff 00",  # nested
    ],
)
def test_huge_declared_length_fails_fast(data: str) -> None:
    tracemalloc.start()
    try:
        reject(h(data), "truncated")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_reject_non_bytes_input() -> None:
    for bad in ("00", None, [0], 0):
        with pytest.raises(WireError) as info:
            decode(bad)  # type: ignore[arg-type]
        assert info.value.reason == "type"


# --- encode rejections -----------------------------------------------------------------------


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (1.0, "float"),
        (float("nan"), "float"),
        ({1, 2}, "type"),
        (frozenset(), "type"),
        (2**64, "int_range"),
        (-(2**64) - 1, "int_range"),
        (10**100, "int_range"),
        ({1: "a"}, "bad_key"),
        ({b"a": 1}, "bad_key"),
        ({("a",): 1}, "bad_key"),
        ({None: 1}, "bad_key"),
        ({True: 1}, "bad_key"),
        ({"k" * 24: 1}, "bad_key"),
        ({"\u00e9" * 12: 1}, "bad_key"),
        ({Name("a"): 1}, "bad_key"),
        (datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC), "type"),
        (datetime.date(2024, 1, 1), "type"),
        (decimal.Decimal(1), "type"),
        (fractions.Fraction(1, 2), "type"),
        (Color.RED, "type"),
        (Name("a"), "type"),
        (collections.OrderedDict(a=1), "type"),
        (object(), "type"),
        (cbor2.CBORTag(1, 0), "tag"),
        (cbor2.undefined, "simple"),
        (cbor2.CBORSimpleValue(0), "simple"),
        ("\ud800", "utf8"),
        ({"\ud800": 1}, "utf8"),
        ([{"a": [1, 2, {"b": [0.5]}]}], "float"),
        ({"a": {"b": (1, {2**70})}}, "type"),
        ([0, [1, [2, [2**64]]]], "int_range"),
        ([[{"ok": 1}], {"x": {3: 4}}], "bad_key"),
    ],
)
def test_encode_rejects(value: object, reason: str) -> None:
    refuse(value, reason)


def test_encode_int_bounds() -> None:
    assert encode(2**64 - 1) == h("1bffffffffffffffff")
    assert encode(-(2**64)) == h("3bffffffffffffffff")


def test_encode_depth() -> None:
    assert decode(encode(encode_nested(64, 0))) == encode_nested(64, 0)
    refuse(encode_nested(65, 0), "depth")
    refuse(encode_nested(2, 0), "depth", max_depth=1)
    cycle: list[object] = []
    cycle.append(cycle)
    refuse(cycle, "depth")


# --- fuzz ------------------------------------------------------------------------------------


def check_decode(data: bytes) -> None:
    """decode either raises WireError or returns a value whose encoding is exactly data."""
    try:
        value = decode(data)
    except WireError as exc:
        assert exc.reason in REASONS, exc
        return
    assert encode(value) == data


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    check_decode(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(encode(draw(VALUES)))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if op == "insert":
            data.insert(where, draw(st.integers(0, 255)))
        elif op == "truncate":
            del data[where:]
        elif where < len(data):
            if op == "flip":
                data[where] ^= 1 << draw(st.integers(0, 7))
            elif op == "set":
                data[where] = draw(st.integers(0, 255))
            else:
                del data[where]
    return bytes(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_encodings(data: bytes) -> None:
    check_decode(data)


@st.composite
def loose_item(draw: st.DrawFn, depth: int = 0) -> bytes:
    """Well-formed-ish CBOR with any head width, indefinite lengths, tags, floats, simples."""

    def any_head(major: int, n: int) -> bytes:
        widths = [w for w in (0, 1, 2, 4, 8) if n < (24 if w == 0 else 1 << (8 * w))]
        width = draw(st.sampled_from(widths))
        if width == 0:
            return bytes([major << 5 | n])
        info = {1: 24, 2: 25, 4: 26, 8: 27}[width]
        return bytes([major << 5 | info]) + n.to_bytes(width, "big")

    def text() -> bytes:
        raw = draw(st.sampled_from(["", "a", "b", "aa", "\u00e9"])).encode()
        return any_head(3, len(raw)) + raw

    kinds = ["uint", "nint", "bytes", "text", "simple", "float"]
    if depth < 4:
        kinds += ["array", "map", "tag", "indef"]
    kind = draw(st.sampled_from(kinds))
    if kind in ("uint", "nint"):
        return any_head(0 if kind == "uint" else 1, draw(st.integers(0, 2**64 - 1)))
    if kind == "bytes":
        raw = draw(st.binary(max_size=8))
        return any_head(2, len(raw)) + raw
    if kind == "text":
        return text()
    if kind == "simple":
        return draw(st.sampled_from([h("f4"), h("f5"), h("f6"), h("f7"), h("e0"), h("f820")]))
    if kind == "float":
        return draw(st.sampled_from([h("f93c00"), h("fa3f800000"), h("fb3ff0000000000000")]))
    if kind == "tag":
        tag = draw(st.sampled_from([0, 1, 2, 3, 24, 28, 29, 256, 258, 55799, 99999]))
        return any_head(6, tag) + draw(loose_item(depth + 1))
    children = draw(st.lists(loose_item(depth + 1), max_size=4))
    if kind == "array":
        return any_head(4, len(children)) + b"".join(children)
    if kind == "map":  # mostly text keys (the allowed kind), possibly repeated or unsorted
        keys = [
            text() if draw(st.integers(0, 4)) else draw(loose_item(depth + 1)) for _ in children
        ]
        return any_head(5, len(children)) + b"".join(
            k + v for k, v in zip(keys, children, strict=True)
        )
    return h("9f") + b"".join(children) + h("ff")


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(loose_item())
def test_fuzz_loose_cbor(data: bytes) -> None:
    check_decode(data)
