"""Frames (appliance.hsm.proto.frame): encoding, each FrameError reason, streaming and resync."""

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.hsm.proto import cobs, frame
from appliance.hsm.proto.frame import Frame, FrameDecoder, FrameError, encode_frame


def raw_frame(payload=b"", ftype=frame.REQ, seq=1, ver=1, length=None, crc=None):
    """Wire bytes of a frame with every field under the test's control."""
    body = struct.pack(">BBBH", ver, ftype, seq, len(payload) if length is None else length)
    body += payload
    body += struct.pack(">I", zlib.crc32(body) if crc is None else crc)
    return cobs.encode(body) + b"\x00"


def summary(items):
    """Frames and errors as comparable tuples."""
    return [("F", i.type, i.seq, i.payload) if isinstance(i, Frame) else ("E", i.reason, i.seq)
            for i in items]


def decode_all(data):
    return summary(FrameDecoder().feed(data))


# --- CRC ----------------------------------------------------------------------------------------


def test_crc32_check_value():
    assert frame.crc32(b"123456789") == frame.crc32_py(b"123456789") == 0xCBF43926


@settings(max_examples=200)
@given(st.binary(max_size=300), st.integers(0, 2**32 - 1))
def test_crc32_both_implementations_match_zlib(data, start):
    assert frame.crc32(data) == frame.crc32_py(data) == zlib.crc32(data)
    assert frame.crc32(data, start) == frame.crc32_py(data, start) == zlib.crc32(data, start)


# --- encoding -----------------------------------------------------------------------------------


def test_encode_layout():
    wire = encode_frame(frame.RSP, 7, b"\xa0")
    assert wire.endswith(b"\x00") and b"\x00" not in wire[:-1]
    body = cobs.decode(wire[:-1])
    assert body[:5] == b"\x01\x02\x07\x00\x01" and body[5:6] == b"\xa0"
    assert body[6:] == struct.pack(">I", zlib.crc32(body[:6]))
    assert wire == raw_frame(b"\xa0", frame.RSP, 7)


def test_constants():
    assert (frame.VERSION, frame.MAX_PAYLOAD) == (1, 4096)
    assert (frame.REQ, frame.RSP, frame.WAIT, frame.NAK, frame.BOOT) == (1, 2, 3, 4, 5)


@settings(max_examples=200)
@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=300))
def test_round_trip(ftype, seq, payload):
    items = FrameDecoder().feed(encode_frame(ftype, seq, payload))
    assert summary(items) == [("F", ftype, seq, payload)]
    assert type(items[0].payload) is bytes


def test_round_trip_max_payload():
    for payload in (bytes(4096), b"\x01" * 4096, bytes(range(1, 256)) * 16):
        assert decode_all(encode_frame(frame.RSP, 255, payload)) == [("F", 2, 255, payload)]


@pytest.mark.parametrize(("ftype", "seq", "payload"),
                         [(1, 256, b""), (1, -1, b""), (256, 0, b""), (1, 0, bytes(4097))])
def test_encode_refuses(ftype, seq, payload):
    with pytest.raises(ValueError):
        encode_frame(ftype, seq, payload)


# --- each FrameError reason ---------------------------------------------------------------------


def test_bad_cobs():
    assert decode_all(b"\x05\x11\x22\x00") == [("E", "cobs", 0)]


def test_body_too_short():
    body = b"\x01\x01\x05\x00\x00\x00\x00\x00"  # 8 bytes: no room for header and CRC
    assert decode_all(cobs.encode(body) + b"\x00") == [("E", "length", 0)]


def test_length_field_mismatch():
    assert decode_all(raw_frame(b"abc", seq=9, length=2)) == [("E", "length", 0)]
    assert decode_all(raw_frame(b"abc", seq=9, length=4)) == [("E", "length", 0)]


def test_length_over_4096():
    # Consistent length field and a good CRC, but one byte too many.
    assert decode_all(raw_frame(b"x" * 4097, seq=9)) == [("E", "length", 0)]


def test_version():
    assert decode_all(raw_frame(b"\xa0", seq=42, ver=2)) == [("E", "version", 42)]
    assert decode_all(raw_frame(b"", seq=0, ver=0)) == [("E", "version", 0)]


def test_crc_mismatch():
    wire = bytearray(raw_frame(b"payload", seq=42))
    wire[3] ^= 0x20  # inside the payload, stays non-zero
    assert decode_all(bytes(wire)) == [("E", "crc", 0)]
    assert decode_all(raw_frame(b"payload", seq=42, crc=0)) == [("E", "crc", 0)]


def test_crc_is_checked_before_version():
    # A bad CRC makes the seq untrustworthy: reported as crc with seq 0, not as version.
    assert decode_all(raw_frame(b"", seq=42, ver=2, crc=1)) == [("E", "crc", 0)]


def test_frame_error_is_a_value_error():
    err = FrameError("crc")
    assert isinstance(err, ValueError) and (err.reason, err.seq) == ("crc", 0)
    assert FrameError("version", 3).seq == 3


# --- streaming ----------------------------------------------------------------------------------


def test_zero_runs_are_ignored():
    wire = encode_frame(frame.REQ, 1, b"x")
    assert decode_all(b"\x00" * 5 + wire + b"\x00" * 3 + wire) == [("F", 1, 1, b"x")] * 2


def test_partial_frame_waits_for_the_delimiter():
    wire = encode_frame(frame.REQ, 1, b"hello")
    dec = FrameDecoder()
    assert dec.feed(wire[:-1]) == []
    assert summary(dec.feed(b"\x00")) == [("F", 1, 1, b"hello")]


def test_resync_after_garbage():
    wire = encode_frame(frame.RSP, 3, b"ok")
    # Garbage without a zero glues onto the next frame: that run is lost, the next one is fine.
    assert decode_all(b"\x17garbage" + wire + wire) == [("E", "cobs", 0), ("F", 2, 3, b"ok")]
    # Garbage ended by a zero (a resync run) costs only itself.
    assert decode_all(b"\x17garbage\x00" + wire)[-1] == ("F", 2, 3, b"ok")


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_any_garbage_then_delimiter_then_frame(garbage):
    wire = encode_frame(frame.RSP, 200, b"after")
    assert decode_all(garbage + b"\x00" + wire)[-1] == ("F", 2, 200, b"after")


def test_oversize_run_gives_one_length_error_then_recovers():
    wire = encode_frame(frame.RSP, 5, b"next")
    run = b"\x01" * (frame.MAX_ENCODED + 1)
    assert decode_all(run + run + b"\x00" + wire) == [("E", "length", 0), ("F", 2, 5, b"next")]
    dec = FrameDecoder()  # the same when the run comes in pieces
    out = []
    for i in range(0, len(run) * 3, 1000):
        out += dec.feed((run * 3)[i:i + 1000])
    out += dec.feed(b"\x00" + wire)
    assert summary(out) == [("E", "length", 0), ("F", 2, 5, b"next")]


def test_overflow_threshold():
    # Up to MAX_ENCODED bytes the decoder waits for the delimiter; one more is an overflow,
    # reported at once, before any 0x00 arrives.
    assert FrameDecoder().feed(b"\x01" * frame.MAX_ENCODED) == []
    assert decode_all(b"\x01" * (frame.MAX_ENCODED + 1)) == [("E", "length", 0)]
    # the longest frame the encoder can produce fits under the threshold
    longest = encode_frame(255, 255, b"\xff" * frame.MAX_PAYLOAD)
    assert len(longest) - 1 <= frame.MAX_ENCODED
    assert decode_all(longest) == [("F", 255, 255, b"\xff" * 4096)]


chunks = st.lists(
    st.one_of(
        st.builds(encode_frame, st.integers(1, 5), st.integers(0, 255), st.binary(max_size=40)),
        st.binary(max_size=30),
        st.just(b"\x00"),
        st.just(b"\x01" * (frame.MAX_ENCODED + 3)),
    ),
    max_size=8,
)


@settings(max_examples=150)
@given(chunks, st.data())
def test_byte_by_byte_equals_at_once(parts, data):
    stream = b"".join(parts)
    at_once = decode_all(stream)
    dec = FrameDecoder()
    one_by_one = []
    for i in range(len(stream)):
        one_by_one += dec.feed(stream[i:i + 1])
    assert summary(one_by_one) == at_once
    # and any other split
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    dec = FrameDecoder()
    pieces = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        pieces += dec.feed(stream[a:b])
    assert summary(pieces) == at_once


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=200), max_size=5))
def test_feed_never_raises(parts):
    dec = FrameDecoder()
    for part in parts:
        for item in dec.feed(part):
            assert isinstance(item, Frame | FrameError)
    dec.feed(bytearray(b"\x01\x00"))
    dec.feed(memoryview(b"\x01\x00"))


def test_reset_drops_a_partial_frame():
    wire = encode_frame(frame.REQ, 1, b"x")
    dec = FrameDecoder()
    dec.feed(wire[:4])
    dec.reset()
    assert summary(dec.feed(wire)) == [("F", 1, 1, b"x")]
