"""Module side of the link (appliance.hsm.proto.modlink): NAKs and the exactly-once cache."""

import struct
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.hsm.proto import cobs, frame, mcbor
from appliance.hsm.proto.frame import FrameDecoder, encode_frame
from appliance.hsm.proto.modlink import ModuleLink

SIGN = mcbor.encode({"op": "sign", "slot": 1, "message": b"m"})
INFO = mcbor.encode({"op": "info"})
OK = mcbor.encode({"ok": True})


def req(seq, payload=SIGN):
    return encode_frame(frame.REQ, seq, payload)


def frames_of(wire):
    items = FrameDecoder().feed(wire)
    assert all(isinstance(i, frame.Frame) for i in items)
    return [(i.type, i.seq, i.payload) for i in items]


def nak_reason(action):
    kind, wire = action
    assert kind == "send"
    [(ftype, seq, payload)] = frames_of(wire)
    assert ftype == frame.NAK
    return mcbor.decode(payload)["reason"], seq


def test_request_then_respond():
    link = ModuleLink()
    assert link.feed(req(7)) == [("request", 7, SIGN)]
    wire = link.respond(7, SIGN, OK)
    assert frames_of(wire) == [(frame.RSP, 7, OK)]


def test_nak_reasons():
    link = ModuleLink()
    assert nak_reason(link.feed(b"\x05\x11\x00")[0]) == ("cobs", 0)
    body = struct.pack(">BBBH", 1, frame.REQ, 9, len(SIGN)) + SIGN
    bad_crc = cobs.encode(body + struct.pack(">I", zlib.crc32(body) ^ 1)) + b"\x00"
    [action] = link.feed(bad_crc)
    assert nak_reason(action) == ("crc", 0)
    short = cobs.encode(b"\x01\x01\x01") + b"\x00"
    assert nak_reason(link.feed(short)[0]) == ("length", 0)
    body = struct.pack(">BBBH", 2, frame.REQ, 33, 0)
    v2 = cobs.encode(body + struct.pack(">I", zlib.crc32(body))) + b"\x00"
    assert nak_reason(link.feed(v2)[0]) == ("version", 33)
    assert nak_reason(link.feed(b"\x01" * (frame.MAX_ENCODED + 1))[0]) == ("length", 0)
    # after all that the link still works
    assert link.feed(b"\x00" + req(10)) == [("request", 10, SIGN)]


def test_nak_payload_is_canonical_cbor():
    [(kind, wire)] = ModuleLink().feed(b"\x05\x11\x00")
    [(_, _, payload)] = frames_of(wire)
    assert payload == mcbor.encode({"reason": "cobs"}) == b"\xa1\x66reason\x64cobs"


def test_duplicate_gets_the_cached_response_and_is_not_executed():
    link = ModuleLink()
    [(_, seq, payload)] = link.feed(req(7))
    rsp = link.respond(seq, payload, OK)
    assert link.feed(req(7)) == [("send", rsp)]
    assert link.feed(req(7) + req(7)) == [("send", rsp), ("send", rsp)]


def test_same_seq_other_payload_is_a_new_request():
    link = ModuleLink()
    link.respond(7, SIGN, OK)
    assert link.feed(req(7, INFO)) == [("request", 7, INFO)]


def test_other_seq_same_payload_is_a_new_request():
    link = ModuleLink()
    link.respond(7, SIGN, OK)
    assert link.feed(req(8)) == [("request", 8, SIGN)]


def test_only_the_last_request_is_cached():
    link = ModuleLink()
    link.respond(7, SIGN, OK)
    link.respond(8, INFO, OK)
    assert link.feed(req(7)) == [("request", 7, SIGN)]


def test_retransmission_before_the_response_is_not_executed_twice():
    link = ModuleLink()
    # the REQ and its retransmission arrive in one read, before respond()
    assert link.feed(req(7) + req(7)) == [("request", 7, SIGN)]
    assert link.feed(req(7)) == []  # still running: respond() will answer it
    rsp = link.respond(7, SIGN, OK)
    assert link.feed(req(7)) == [("send", rsp)]


def test_two_different_requests_in_one_read_are_both_handed_out():
    link = ModuleLink()
    assert link.feed(req(7) + req(8, INFO)) == [("request", 7, SIGN), ("request", 8, INFO)]


def test_boot_empties_the_cache():
    link = ModuleLink()
    link.respond(7, SIGN, OK)
    info = mcbor.encode({"firmware": "1.0", "serial": "S1", "boot_count": 3})
    wire = link.boot(info)
    assert frames_of(wire) == [(frame.BOOT, 0, info)]
    assert link.feed(req(7)) == [("request", 7, SIGN)]


def test_boot_forgets_partial_input_and_pending_requests():
    link = ModuleLink()
    assert link.feed(req(7)) == [("request", 7, SIGN)]
    link.feed(req(8)[:5])
    link.boot(b"")
    assert link.feed(req(7)) == [("request", 7, SIGN)]


def test_wait_frame():
    assert frames_of(ModuleLink().wait(200)) == [(frame.WAIT, 200, b"")]


def test_frames_other_than_req_are_ignored():
    link = ModuleLink()
    for ftype in (frame.RSP, frame.WAIT, frame.NAK, frame.BOOT, 0, 6, 255):
        assert link.feed(encode_frame(ftype, 1, b"")) == []


@settings(max_examples=300)
@given(st.lists(st.one_of(st.binary(max_size=100),
                          st.builds(req, st.integers(0, 255), st.sampled_from([SIGN, INFO]))),
                max_size=6))
def test_feed_never_raises(parts):
    link = ModuleLink()
    for part in parts:
        for action in link.feed(part):
            assert action[0] in ("request", "send")
            if action[0] == "request":
                link.respond(action[1], action[2], OK)
