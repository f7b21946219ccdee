"""COBS (appliance.hsm.proto.cobs): known vectors, round trips, and strict decoding."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.hsm.proto import cobs

# Wikipedia's examples ("Consistent Overhead Byte Stuffing"), without the 0x00 delimiter; the
# two that end in a full block are in test_full_block_at_the_end.
VECTORS = [
    (b"", b"\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
]


@pytest.mark.parametrize(("raw", "encoded"), VECTORS)
def test_vectors(raw, encoded):
    assert cobs.encode(raw) == encoded
    assert cobs.decode(encoded) == raw


def test_full_block_at_the_end():
    # 254 non-zero bytes: the paper's encoder ends with its own 01 block; the shorter form
    # without it (Wikipedia's example 7) decodes to the same bytes.
    raw = bytes(range(1, 255))
    assert cobs.encode(raw) == b"\xff" + raw + b"\x01"
    assert cobs.decode(b"\xff" + raw + b"\x01") == raw
    assert cobs.decode(b"\xff" + raw) == raw
    assert cobs.encode(b"\x00" + raw) == b"\x01\xff" + raw + b"\x01"
    assert cobs.decode(b"\x01\xff" + raw) == b"\x00" + raw


def test_accepts_bytearray_and_memoryview():
    assert cobs.encode(bytearray(b"\x11\x00")) == b"\x02\x11\x01"
    assert cobs.decode(memoryview(b"\x02\x11\x01")) == b"\x11\x00"


@pytest.mark.parametrize(
    "bad",
    [
        b"",  # no block at all
        b"\x00",  # a zero code
        b"\x02\x11\x00\x01",  # a zero inside
        b"\x03\x00\x11",  # a zero as data
        b"\x05\x11\x22",  # the code points past the end
        b"\x02\x11\x03\x22",  # the second block overruns
        b"\xff" + b"\x01" * 253,  # a full block one byte short
    ],
)
def test_decode_rejects(bad):
    with pytest.raises(ValueError):
        cobs.decode(bad)


@settings(max_examples=300)
@given(st.binary(max_size=1200))
def test_round_trip(raw):
    encoded = cobs.encode(raw)
    assert b"\x00" not in encoded
    assert len(encoded) <= len(raw) + len(raw) // 254 + 1
    assert cobs.decode(encoded) == raw


@settings(max_examples=200)
@given(st.lists(st.sampled_from([b"\x00", b"\x01", b"\xff", b"\x07" * 253, b"\x09" * 254]),
                max_size=12))
def test_round_trip_block_boundaries(parts):
    raw = b"".join(parts)
    assert cobs.decode(cobs.encode(raw)) == raw


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_decode_fuzz(data):
    try:
        raw = cobs.decode(data)
    except ValueError:
        return
    # Whatever was accepted is a zero-free, non-empty block sequence that re-encodes to the
    # input, up to the optional final 01 block after a full block.
    assert data and b"\x00" not in data
    again = cobs.encode(raw)
    assert again == data or again == data + b"\x01"
