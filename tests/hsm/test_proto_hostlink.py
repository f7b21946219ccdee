"""Host side of the link (appliance.hsm.proto.hostlink), one rule per test, on simulated time."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.hsm.proto import frame, mcbor
from appliance.hsm.proto.frame import FrameDecoder, encode_frame
from appliance.hsm.proto.hostlink import PROBE_PAYLOAD, HostLink

SIGN = mcbor.encode({"op": "sign", "slot": 1, "message": b"m"})
OK = mcbor.encode({"ok": True, "signature": b"s" * 64})
BOOT_INFO = mcbor.encode({"firmware": "1.0", "serial": "S1", "boot_count": 2})


def rsp(seq, payload=OK):
    return encode_frame(frame.RSP, seq, payload)


def nak(seq=0, reason="crc"):
    return encode_frame(frame.NAK, seq, mcbor.encode({"reason": reason}))


def wait(seq):
    return encode_frame(frame.WAIT, seq)


def sent_req(wire):
    """(seq, payload) of the single REQ frame in wire (leading zeros allowed)."""
    [item] = FrameDecoder().feed(wire)
    assert item.type == frame.REQ
    return item.seq, item.payload


def started(first_seq=10, **kw):
    link = HostLink(first_seq=first_seq, **kw)
    wire = link.request(SIGN, 0.0)
    return link, wire


def test_defaults():
    link = HostLink()
    assert (link.response_timeout, link.max_retries, link.resync_zeros) == (0.5, 3, 16)
    assert not link.busy and link.deadline() is None
    assert 0 <= sent_req(link.request(b"", 0.0))[0] <= 255  # random start


def test_seq_increments_and_wraps():
    link = HostLink(first_seq=254)
    seqs = []
    for i in range(4):
        wire = link.request(SIGN, float(i))
        seq, payload = sent_req(wire)
        assert payload == SIGN
        seqs.append(seq)
        assert link.feed(rsp(seq), i + 0.1) == [("response", OK)]
    assert seqs == [254, 255, 0, 1]


def test_response_completes_the_request():
    link, wire = started()
    assert link.busy and link.deadline() == 0.5
    assert link.feed(rsp(10), 0.2) == [("response", OK)]
    assert not link.busy and link.deadline() is None
    assert link.poll(5.0) == []


def test_one_request_at_a_time():
    link, _ = started()
    with pytest.raises(RuntimeError):
        link.request(SIGN, 0.1)


def test_oversize_payload_is_refused_and_leaves_the_link_idle():
    link = HostLink(first_seq=10)
    with pytest.raises(ValueError):
        link.request(bytes(4097), 0.0)
    assert not link.busy
    assert sent_req(link.request(SIGN, 0.0))[0] == 10


@pytest.mark.parametrize("nak_seq", [0, 10])
def test_nak_retransmits_unchanged(nak_seq):
    link, wire = started()
    assert link.feed(nak(nak_seq), 0.1) == [("send", wire)]
    assert link.deadline() == pytest.approx(0.6)
    assert link.feed(rsp(10), 0.2) == [("response", OK)]


def test_nak_for_another_seq_is_ignored():
    link, _ = started()
    assert link.feed(nak(9), 0.1) == []
    assert link.busy and link.deadline() == 0.5


def test_timeout_retransmits_unchanged():
    link, wire = started()
    assert link.poll(0.49) == []
    assert link.poll(0.5) == [("send", wire)]
    assert link.deadline() == pytest.approx(1.0)


def test_max_retries_then_zeros_and_probe():
    link, wire = started()
    for t in (0.5, 1.0, 1.5):
        assert link.poll(t) == [("send", wire)]
    [(kind, out)] = link.poll(2.0)
    assert kind == "send"
    assert out.startswith(b"\x00" * 16) and not out.startswith(b"\x00" * 17)
    assert sent_req(out) == (11, PROBE_PAYLOAD)
    assert mcbor.decode(PROBE_PAYLOAD) == {"op": "info"}
    assert link.busy and link.deadline() == pytest.approx(2.5)


def run_to_probe(link, wire):
    t = 0.0
    for _ in range(link.max_retries):
        t += link.response_timeout
        assert link.poll(t) == [("send", wire)]
    t += link.response_timeout
    [(_, out)] = link.poll(t)
    return t, out


def test_probe_answered_fails_the_request_with_timeout():
    link, wire = started()
    t, _ = run_to_probe(link, wire)
    assert link.feed(rsp(11, mcbor.encode({"ok": True})), t + 0.1) == [("failed", "timeout")]
    assert not link.busy
    assert sent_req(link.request(SIGN, t + 0.2))[0] == 12  # the next seq after the probe


def test_probe_is_retransmitted_then_link_down():
    link, wire = started()
    t, out = run_to_probe(link, wire)
    probe = out.lstrip(b"\x00")
    for _ in range(3):
        t += 0.5
        assert link.poll(t) == [("send", probe)]
    assert link.poll(t + 0.5) == [("failed", "link_down")]
    assert not link.busy and link.deadline() is None
    assert sent_req(link.request(SIGN, t + 1))[0] == 12


def test_probe_retransmitted_on_nak_too():
    link, wire = started()
    t, out = run_to_probe(link, wire)
    assert link.feed(nak(0), t + 0.1) == [("send", out.lstrip(b"\x00"))]


def test_late_response_to_the_original_during_the_probe_counts():
    link, wire = started()
    t, _ = run_to_probe(link, wire)
    assert link.feed(rsp(10), t + 0.1) == [("response", OK)]
    assert not link.busy


def test_custom_parameters():
    link = HostLink(response_timeout=2.0, max_retries=0, resync_zeros=4, first_seq=0)
    wire = link.request(SIGN, 0.0)
    assert link.poll(1.9) == []
    [(_, out)] = link.poll(2.0)
    assert out[:5] == b"\x00" * 4 + out[4:5] and out[4] != 0
    assert sent_req(out) == (1, PROBE_PAYLOAD)
    assert link.poll(4.0) == [("failed", "link_down")]
    assert wire != out


def test_wait_restarts_the_timer():
    link, wire = started()
    assert link.feed(wait(10), 0.4) == [("wait",)]
    assert link.deadline() == pytest.approx(0.9)
    assert link.poll(0.6) == []
    assert link.feed(wait(10), 0.8) == [("wait",)]
    assert link.poll(1.2) == []
    assert link.poll(1.3) == [("send", wire)]


def test_wait_does_not_reset_the_retry_count():
    link, wire = started()
    t = 0.0
    for _ in range(3):
        t = link.deadline()
        assert link.poll(t) == [("send", wire)]
        assert link.feed(wait(10), t + 0.1) == [("wait",)]  # deadline t + 0.6
    [(_, out)] = link.poll(t + 0.6)
    assert sent_req(out)[1] == PROBE_PAYLOAD


def test_wait_for_another_seq_is_ignored():
    link, _ = started()
    assert link.feed(wait(9), 0.4) == []
    assert link.deadline() == 0.5


def test_boot_fails_the_request_in_flight():
    link, _ = started()
    assert link.feed(encode_frame(frame.BOOT, 0, BOOT_INFO), 0.1) == [
        ("boot", BOOT_INFO), ("failed", "module_reset")]
    assert not link.busy


def test_boot_while_idle():
    link = HostLink(first_seq=1)
    assert link.feed(encode_frame(frame.BOOT, 0, BOOT_INFO), 0.1) == [("boot", BOOT_INFO)]


def test_stale_response_is_ignored():
    link, _ = started()
    assert link.feed(rsp(9) + rsp(11), 0.1) == []
    assert link.busy
    assert link.feed(rsp(10), 0.2) == [("response", OK)]
    assert link.feed(rsp(10), 0.3) == []  # a duplicate after completion


def test_idle_link_ignores_everything_but_boot():
    link = HostLink(first_seq=1)
    assert link.feed(rsp(1) + nak(0) + wait(1) + b"\x05garbage\x00", 0.0) == []


def test_corrupted_frame_is_an_immediate_retransmit():
    link, wire = started()
    damaged = bytearray(rsp(10))
    damaged[-3] ^= 0x01  # inside the CRC; the byte is non-zero before and after
    assert damaged[-3] != 0
    assert link.feed(bytes(damaged), 0.1) == [("send", wire)]
    assert link.feed(rsp(10), 0.2) == [("response", OK)]


def test_corrupted_frames_count_as_retries():
    link, wire = started()
    for t in (0.1, 0.2, 0.3):
        assert link.feed(b"\x05junk\x00", t) == [("send", wire)]
    [(_, out)] = link.feed(b"\x05junk\x00", 0.4)
    assert sent_req(out) == (11, PROBE_PAYLOAD)


def test_response_in_pieces():
    link, _ = started()
    data = rsp(10)
    events = []
    for i in range(len(data)):
        events += link.feed(data[i:i + 1], 0.1)
    assert events == [("response", OK)]


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=80), max_size=6), st.booleans())
def test_feed_never_raises(parts, busy):
    link = HostLink(first_seq=0)
    if busy:
        link.request(SIGN, 0.0)
    t = 0.0
    for part in parts:
        t += 0.3
        for event in link.feed(part, t) + link.poll(t):
            assert event[0] in ("send", "response", "wait", "boot", "failed")


def test_sends_counts_transmissions_of_the_request_only():
    link, _ = started()
    assert link.sends == 1
    link.feed(nak(10), 0.1)
    link.poll(0.7)  # timeout: another retransmission
    assert link.sends == 3
    link.poll(1.3)  # third retry
    link.poll(1.9)  # retries exhausted: the probe goes out, not the request
    assert link.sends == 4
    fresh, _ = started(first_seq=50)
    assert fresh.sends == 1


def test_abort_forgets_the_request_and_any_partial_frame():
    link, _ = started()
    link.feed(rsp(10)[:5], 0.1)  # half a frame, then the port is lost
    link.abort()
    assert not link.busy and link.deadline() is None
    wire = link.request(SIGN, 1.0)  # a new request is possible at once
    seq = sent_req(wire)[0]
    assert seq == 11
    # The stale half frame does not corrupt the next response.
    assert link.feed(rsp(seq), 1.1) == [("response", OK)]
