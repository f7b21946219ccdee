"""The pyserial ``faulty://`` URL handler, with ``loop://`` as the inner port."""

import time

import pytest
import serial

import hil.urlhandlers
from hil.faults import FaultSpec
from hil.urlhandlers import protocol_faulty


@pytest.fixture(autouse=True)
def _registered():
    hil.urlhandlers.register()


def _open(query, **kwargs):
    kwargs.setdefault("timeout", 0.5)
    return serial.serial_for_url("faulty://?port=loop://" + query, **kwargs)


def test_register_is_idempotent():
    hil.urlhandlers.register()
    hil.urlhandlers.register()
    assert serial.protocol_handler_packages.count("hil.urlhandlers") == 1


def test_no_faults_is_a_transparent_loop():
    with _open("") as port:
        assert isinstance(port, protocol_faulty.Serial)
        data = bytes(range(256)) * 4
        assert port.write(data) == len(data)
        assert port.read(len(data)) == data
        assert port.read(1) == b""  # nothing more: the read timed out
        assert port.spec == FaultSpec()


def test_flip_every_byte_on_both_directions():
    # flip=1: the write flips one bit, the read flips one more (or the same one back).
    with _open("&flip=1&seed=3") as port:
        data = bytes(200)
        port.write(data)
        got = port.read(len(data))
        assert len(got) == len(data)
        assert all(bin(b).count("1") in (0, 2) for b in got)
        stats = port.fault_stats
        assert stats["tx"].flipped == 200 and stats["rx"].flipped == 200
        assert any(got)  # two independent streams do not always cancel out


def test_drop_everything():
    with _open("&drop=1", timeout=0.2) as port:
        port.write(b"hello")
        assert port.read(5) == b""
        assert port.fault_stats["tx"].dropped == 5


def test_dup_everything_writes_each_byte_twice_then_reads_it_twice_again():
    with _open("&dup=1") as port:
        port.write(b"ab")
        assert port.read(8) == b"aaaabbbb"


def test_same_seed_same_noise_other_seed_other_noise():
    data = bytes(range(256)) * 2

    def run(seed):
        with _open("&flip=0.1&drop=0.05&dup=0.05&seed=%d" % seed, timeout=0.2) as port:
            port.write(data)
            return port.read(4 * len(data))

    first = run(11)
    assert first != data
    assert run(11) == first
    assert run(12) != first


def test_read_delay_holds_bytes_back_in_order():
    with _open("&delay_ms=150-150", timeout=0) as port:
        start = time.monotonic()
        port.write(b"abc")  # a delayed write blocks the writer until the chunk's time
        assert time.monotonic() - start >= 0.14
        assert port.read(10) == b""  # read side: another 150 ms on the way in
        assert port.in_waiting == 0
        port.timeout = 1.0
        got = port.read(3)
        assert got == b"abc"
        assert time.monotonic() - start >= 0.29


def test_non_blocking_read_returns_what_is_due():
    with _open("", timeout=0) as port:
        port.write(b"xyz")
        assert port.in_waiting == 3
        assert port.read(2) == b"xy"
        assert port.read(5) == b"z"
        assert port.read(5) == b""


def test_reset_input_buffer_discards_pending_bytes():
    with _open("&delay_ms=50") as port:
        port.write(b"stale")
        port.read(0)  # pull the bytes into the pending queue
        port.reset_input_buffer()
        assert port.read(5) == b""


def test_settings_reach_the_inner_port():
    with _open("", baudrate=19200) as port:
        assert port.inner.baudrate == 19200
        port.baudrate = 57600
        assert port.inner.baudrate == 57600
        port.dtr = False
        assert port.inner.dtr is False
    assert not port.is_open


def test_path_form_of_the_url():
    with serial.serial_for_url("faulty://loop://?flip=0", timeout=0.2) as port:
        port.write(b"ok")
        assert port.read(2) == b"ok"


@pytest.mark.parametrize("url, fragment", [
    ("faulty://?flip=0.1", "no inner port"),
    ("faulty://?port=loop://&jitter=1", "unknown fault 'jitter'"),
    ("faulty://?port=loop://&flip=7", "[0, 1]"),
    ("faulty://?port=loop://&seed=x", "seed='x'"),
    ("faulty://?port=loop://&reset_every=5", "reset_every acts on the module"),
    ("faulty://?port=loop://&cut_write=0.1", "cut_write acts on the module"),
    ("faulty://?port=loop://&flip=0.1&flip=0.2", "given twice"),
])
def test_bad_urls(url, fragment):
    with pytest.raises(serial.SerialException) as info:
        serial.serial_for_url(url)
    assert fragment in str(info.value)


def test_closed_port_refuses_io():
    port = _open("")
    port.close()
    with pytest.raises(serial.PortNotOpenError):
        port.read(1)
    with pytest.raises(serial.PortNotOpenError):
        port.write(b"x")
