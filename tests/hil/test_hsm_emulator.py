"""The crypto-module emulator: pty, the real firmware on both runtimes, faults, pacing, restarts.

The host side here is deliberately raw (frames from appliance.hsm.proto, no HostLink, no
retransmission) so that what the emulator does to the line shows up unfiltered.
"""

import collections
import os
import re
import selectors
import signal
import stat
import sys
import time

import pytest
import serial

from appliance.hsm.proto import frame, mcbor
from hil import hsm_emulator
from hil.hsm_emulator import FIRMWARE_MAIN, HsmEmulator

WAIT_S = 20  # upper bound of any single wait below; the normal case takes well under 1 s

pytestmark = pytest.mark.skipif(not FIRMWARE_MAIN.is_file(),
                                reason="appliance/hsm/firmware/main.py not written yet")


@pytest.fixture(params=["cpython", "micropython"])
def runtime(request):
    if request.param == "micropython":
        hsm_emulator.require_micropython()
    return request.param


class Host:
    """A bare host: REQ frames out, Frame/FrameError items in, every wait bounded."""

    def __init__(self, path):
        self.port = serial.Serial(str(path), timeout=0.02)
        self.decoder = frame.FrameDecoder()
        self.items = collections.deque()
        self.seq = 0

    def close(self):
        self.port.close()

    def next_item(self, timeout):
        deadline = time.monotonic() + timeout
        while not self.items:
            if time.monotonic() > deadline:
                return None
            self.items.extend(self.decoder.feed(self.port.read(4096)))
        return self.items.popleft()

    def send(self, payload):
        self.seq = (self.seq + 1) % 256
        wire = frame.encode_frame(frame.REQ, self.seq, mcbor.encode(payload))
        self.port.write(wire)
        return wire

    def exchange(self, payload, timeout=WAIT_S):
        """("rsp", dict) for our seq, ("boot", dict), ("nak", dict), ("error", FrameError) or
        ("timeout", None); WAIT frames are skipped."""
        self.send(payload)
        deadline = time.monotonic() + timeout
        while True:
            item = self.next_item(max(0.0, deadline - time.monotonic()))
            if item is None:
                return "timeout", None
            if isinstance(item, frame.FrameError):
                return "error", item
            if item.type == frame.WAIT:
                continue
            if item.type == frame.RSP and item.seq == self.seq:
                return "rsp", mcbor.decode(item.payload)
            if item.type == frame.BOOT:
                return "boot", mcbor.decode(item.payload)
            if item.type == frame.NAK:
                return "nak", mcbor.decode(item.payload)


def _read_boot_raw(path):
    """The BOOT frame waiting in the pty since start-up (pyserial's open would flush it)."""
    fd = os.open(str(path), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    decoder = frame.FrameDecoder()
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline:
                if sel.select(0.2):
                    items = decoder.feed(os.read(fd, 4096))
                    if items:
                        return items
    finally:
        os.close(fd)
    return []


def _pids(log):
    return [int(p) for p in re.findall(r"start #\d+ pid=(\d+)", log)]


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_boot_info_and_sigterm(tmp_path, runtime):
    link = tmp_path / "gmcrypto0"
    emu = HsmEmulator(link, tmp_path / "store.bin", runtime=runtime, serial="HIL-0001",
                      seed=1, log_path=tmp_path / "emu.log")
    with emu:
        assert emu.ready_line == f"ready {link}"
        assert os.path.islink(link) and os.readlink(link).startswith("/dev/pts/")
        # "ready" means the first BOOT is already waiting on the pty
        items = _read_boot_raw(link)
        assert [(type(i), getattr(i, "type", None)) for i in items] == [(frame.Frame, frame.BOOT)]
        boot = mcbor.decode(items[0].payload)
        assert boot["serial"] == "HIL-0001" and boot["boot_count"] == 1
        assert set(boot) == {"firmware", "serial", "boot_count"}
        for _ in range(2):  # closing and reopening the port must not break the link
            host = Host(link)
            kind, rsp = host.exchange({"op": "info"})
            host.close()
            assert kind == "rsp", (kind, rsp, emu.log_text())
            assert rsp["ok"] is True and rsp["protocol"] == 1 and rsp["serial"] == "HIL-0001"
        pids = _pids(emu.log_text())
        assert emu.stop() == 0
    assert not os.path.lexists(link)
    assert len(pids) == 1 and _gone(pids[0])
    log = emu.log_text()
    assert f"runtime={runtime}" in log and "stop: SIGTERM" in log and "ERROR" not in log


def test_sigint_stops_cleanly(tmp_path):
    link = tmp_path / "gm"
    with HsmEmulator(link, tmp_path / "store.bin", log_path=tmp_path / "emu.log") as emu:
        emu.proc.send_signal(signal.SIGINT)
        assert emu.proc.wait(timeout=WAIT_S) == 0
    assert not os.path.lexists(link)
    assert "stop: SIGINT" in emu.log_text()


def test_store_survives_restarts_of_the_emulator(tmp_path):
    store = tmp_path / "store.bin"
    counts = []
    for _ in range(2):
        with HsmEmulator(tmp_path / "gm", store, seed=2) as emu:
            counts.append(mcbor.decode(_read_boot_raw(emu.link)[0].payload)["boot_count"])
    assert counts == [1, 2]


def test_reset_every_power_resets_the_module(tmp_path):
    link = tmp_path / "gm"
    with HsmEmulator(link, tmp_path / "store.bin", faults="reset_every=3", seed=3,
                     log_path=tmp_path / "emu.log") as emu:
        host = Host(link)
        results = [host.exchange({"op": "info"}) for _ in range(7)]
        host.close()
        log = emu.log_text()
    kinds = [kind for kind, _ in results]
    # The 3rd frame since each start is lost in the reset; the host sees BOOT instead.
    assert kinds == ["rsp", "rsp", "boot", "rsp", "rsp", "boot", "rsp"], log
    boots = [rsp["boot_count"] for kind, rsp in results if kind == "boot"]
    assert boots == [2, 3]
    assert log.count("power reset after 3 host frames") == 2
    assert len(_pids(log)) == 3


def test_power_cut_in_a_key_store_write_restarts_the_firmware(tmp_path):
    link = tmp_path / "gm"
    pin = hsm_emulator.provision_store(tmp_path / "store.bin")
    with HsmEmulator(link, tmp_path / "store.bin", faults="cut_write=0.4", seed=4,
                     log_path=tmp_path / "emu.log") as emu:
        host = Host(link)
        boots, after_cut_ok = [], False
        for _ in range(40):
            kind, rsp = host.exchange({"op": "login", "pin": pin})
            if kind == "rsp" and rsp["ok"]:
                kind, rsp = host.exchange({"op": "generate_key", "slot": 1, "alg": "sm2",
                                           "overwrite": True, "session": rsp["session"]})
            if kind == "boot":
                boots.append(rsp["boot_count"])
            elif kind == "rsp" and rsp["ok"] and boots:
                after_cut_ok = True  # the restarted module works (and keeps its store)
                break
        host.close()
        log = emu.log_text()
    assert boots and after_cut_ok, log
    assert boots == sorted(boots) and boots[0] >= 2
    assert "power cut: firmware exited with status 75; restarting" in log
    assert "--cut-write" not in log  # (the argv is not logged; the cut comes from the firmware)
    assert "ERROR" not in log


def test_line_faults_reach_the_host_and_are_logged(tmp_path):
    link = tmp_path / "gm"
    with HsmEmulator(link, tmp_path / "store.bin", faults="flip=0.003", seed=5,
                     log_path=tmp_path / "emu.log") as emu:
        host = Host(link)
        kinds = [host.exchange({"op": "info"}, timeout=0.5)[0] for _ in range(15)]
        host.close()
    log = emu.log_text()
    assert "rsp" in kinds
    assert set(kinds) - {"rsp"}, kinds  # some request or response was damaged
    flipped = [int(n) for n in re.findall(r"faults (?:h2m|m2h): .*flipped=(\d+)", log)]
    assert len(flipped) == 2 and sum(flipped) > 0, log


def test_baud_pacing_is_never_faster_than_the_wire(tmp_path):
    baud = 9600
    link = tmp_path / "gm"
    with HsmEmulator(link, tmp_path / "store.bin", baud=baud, seed=6,
                     log_path=tmp_path / "emu.log") as emu:
        host = Host(link)
        start = time.monotonic()
        req = host.send({"op": "random", "length": 900})
        raw = b""
        while raw.count(b"\x00") < 1 and time.monotonic() - start < WAIT_S:
            raw += host.port.read(4096)
        elapsed = time.monotonic() - start
        host.close()
        assert "baud=9600" in emu.log_text()
    (rsp,) = frame.FrameDecoder().feed(raw)
    assert rsp.type == frame.RSP and len(mcbor.decode(rsp.payload)["data"]) == 900
    wire_s = (len(req) + len(raw)) * 10 / baud  # ~0.97 s for ~930 bytes
    assert elapsed >= 0.8 * wire_s, (elapsed, wire_s)
    assert elapsed < 3 * wire_s + 5, (elapsed, wire_s)  # pacing, not a stall


def test_pacer_arithmetic():
    pacer = hsm_emulator._Pacer(9600)
    pacer.push(b"x" * 960, 100.0)
    assert pacer.pop_due(100.0) == b""
    assert pacer.next_time() == pytest.approx(100.0 + 10 / 9600)
    assert len(pacer.pop_due(100.5)) == 480
    pacer.push(b"y" * 10, 100.5)  # queued behind the rest of the first chunk
    assert len(pacer.pop_due(101.0)) == 480
    assert pacer.pop_due(101.0 + 5 / 9600) == b""
    assert pacer.pop_due(101.0 + 100 / 9600) == b"y" * 10
    assert pacer.next_time() is None
    unpaced = hsm_emulator._Pacer(0)
    unpaced.push(b"abc", 5.0)
    assert unpaced.pop_due(5.0) == b"abc"


_STUB = '''
import os, sys, time
from appliance.hsm.proto import frame, mcbor
store = sys.argv[sys.argv.index("--store") + 1]
n = int(open(store).read() or "0") + 1  # the emulator creates the store (mode 0600)
open(store, "w").write(str(n))
if n >= int(os.environ.get("STUB_CRASH_FROM", "1")):
    sys.exit(3)
time.sleep(float(os.environ.get("STUB_BOOT_DELAY", "0")))
boot = {"firmware": "stub", "serial": "S", "boot_count": n}
os.write(1, frame.encode_frame(frame.BOOT, 0, mcbor.encode(boot)))
os.read(0, 100)
sys.exit(3)
'''


def test_ready_waits_for_the_first_boot_frame(tmp_path, monkeypatch):
    stub = tmp_path / "stub.py"
    stub.write_text(_STUB)
    monkeypatch.setenv("STUB_CRASH_FROM", "99")
    monkeypatch.setenv("STUB_BOOT_DELAY", "1.0")
    link = tmp_path / "gm"
    start = time.monotonic()
    with HsmEmulator(link, tmp_path / "store", firmware=stub) as emu:
        assert time.monotonic() - start >= 1.0
        fd = os.open(str(link), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(fd, selectors.EVENT_READ)
                assert sel.select(0.5), "no BOOT on the pty right after 'ready'"
                time.sleep(0.05)
                (boot,) = frame.FrameDecoder().feed(os.read(fd, 4096))
        finally:
            os.close(fd)
        assert boot.type == frame.BOOT and emu.returncode is None


def test_firmware_that_cannot_start_ends_the_emulator(tmp_path):
    stub = tmp_path / "stub.py"
    stub.write_text(_STUB)
    link = tmp_path / "gm"
    emu = HsmEmulator(link, tmp_path / "store", firmware=stub, ready_timeout=WAIT_S,
                      log_path=tmp_path / "emu.log")
    with pytest.raises(RuntimeError, match="failed 3 times before its first BOOT"):
        emu.start()
    assert emu.returncode == 1
    assert not os.path.lexists(link)


def test_firmware_that_dies_is_restarted_and_logged(tmp_path, monkeypatch):
    stub = tmp_path / "stub.py"
    stub.write_text(_STUB)
    monkeypatch.setenv("STUB_CRASH_FROM", "99")
    link = tmp_path / "gm"
    with HsmEmulator(link, tmp_path / "store", firmware=stub,
                     log_path=tmp_path / "emu.log") as emu:
        host = Host(link)
        kind, boot = host.exchange({"op": "info"})
        host.close()
        log = emu.log_text()
    assert (kind, boot["boot_count"]) == ("boot", 2)
    assert "ERROR: firmware exited with status 3" in log
    assert len(_pids(log)) == 2


def test_cli_rejects_bad_faults(capsys):
    from hil import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["hsm-emulator", "--link", "x", "--store", "y", "--faults", "flip=3"])
    assert info.value.code == 2
    assert "[0, 1]" in capsys.readouterr().err


def test_refuses_to_replace_a_file_with_the_link(tmp_path):
    path = tmp_path / "not-a-link"
    path.write_text("keep me")
    emu = HsmEmulator(path, tmp_path / "store.bin", ready_timeout=WAIT_S,
                      log_path=tmp_path / "emu.log")
    with pytest.raises(RuntimeError, match="not a symlink"):
        emu.start()
    assert path.read_text() == "keep me"
    assert emu.returncode == 1 and "Traceback" not in emu.log_text()


def test_firmware_command_for_micropython_puts_the_flat_folders_on_the_path():
    argv, env = hsm_emulator.firmware_command(
        "micropython", "/s", micropython="/mp", seed=9, cut_write=0.25, kat_fail=True,
        slow_ms=30, serial="X", presence="/b")
    assert argv == ["/mp", str(FIRMWARE_MAIN), "--store", "/s", "--serial", "X", "--seed", "9",
                    "--cut-write", "0.25", "--kat-fail", "--slow-ms", "30", "--presence", "/b"]
    path = env["MICROPYPATH"].split(os.pathsep)
    for folder in (hsm_emulator.FIRMWARE_DIR, hsm_emulator.PROTO_DIR, hsm_emulator.PURE_DIR):
        assert str(folder) in path
    argv, env = hsm_emulator.firmware_command("cpython", "/s")
    assert argv == [sys.executable, str(FIRMWARE_MAIN), "--store", "/s"]
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(hsm_emulator.REPO_ROOT)



# -- permissions and the reset button ------------------------------------------------------


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("existing", [False, True])
def test_device_node_and_key_store_are_owner_only_whatever_the_umask(tmp_path, existing):
    store = tmp_path / "store.bin"
    if existing:
        store.write_bytes(b"")
        os.chmod(store, 0o666)  # a store left world-readable is made owner-only too
    old = os.umask(0)  # the emulator (a subprocess) inherits it: modes must not depend on it
    try:
        emu = HsmEmulator(tmp_path / "gm", store, log_path=tmp_path / "emu.log").start()
    finally:
        os.umask(old)
    with emu:
        host = Host(emu.link)  # the firmware wrote its first records
        assert host.exchange({"op": "info"})[0] == "rsp"
        host.close()
        node = os.path.realpath(emu.link)
        assert node.startswith("/dev/pts/")
        assert _mode(node) == 0o600 and os.stat(node).st_uid == os.getuid()
        assert _mode(store) == 0o600 and store.stat().st_size > 0


def test_the_pty_is_made_owner_only_whatever_devpts_gives(tmp_path, monkeypatch):
    """devpts gives new ptys the mode of its mount option (0620 on many systems, 0600 on
    others): the emulator sets 0600 itself."""
    real_openpty = os.openpty

    def openpty_0620():
        master, slave = real_openpty()
        os.fchmod(slave, 0o620)
        return master, slave

    monkeypatch.setattr(os, "openpty", openpty_0620)
    emu = hsm_emulator.Emulator(str(tmp_path / "gm"), str(tmp_path / "store.bin"))
    try:
        emu._open_pty()
        assert _mode(emu._slave_name) == 0o600
    finally:
        emu._remove_link()
        for fd in (emu._master, emu._slave):
            os.close(fd)


def test_a_fresh_key_store_written_by_the_firmware_itself_is_owner_only(tmp_path):
    from appliance.hsm.firmware import keystore

    old = os.umask(0)
    try:
        keystore.KeyStore(str(tmp_path / "s.bin")).save(keystore.default_state())
    finally:
        os.umask(old)
    assert _mode(tmp_path / "s.bin") == 0o600


def test_the_reset_button_is_a_file_the_rig_creates(tmp_path, runtime):
    pin = hsm_emulator.provision_store(tmp_path / "store.bin")
    with HsmEmulator(tmp_path / "gm", tmp_path / "store.bin", runtime=runtime,
                     log_path=tmp_path / "emu.log") as emu:
        assert emu.presence == tmp_path / "gm.presence" and not emu.presence.exists()
        assert "presence=%s" % emu.presence in emu.log_text()
        host = Host(emu.link)
        try:
            for _ in range(5):
                assert host.exchange({"op": "login", "pin": "00000000"})[1]["ok"] is False
            kind, rsp = host.exchange({"op": "factory_reset", "confirm": "erase", "pin": pin})
            assert rsp["error"] == "PIN_LOCKED"
            with emu.button_held():
                assert emu.presence.exists()
                kind, rsp = host.exchange({"op": "factory_reset", "confirm": "erase"})
            assert rsp == {"ok": True} and not emu.presence.exists()
            assert host.exchange({"op": "info"})[1]["pin_retries"] == 5
        finally:
            host.close()


def test_a_button_left_held_by_an_earlier_run_is_released(tmp_path):
    (tmp_path / "gm.presence").touch()
    emu = HsmEmulator(tmp_path / "gm", tmp_path / "store.bin")
    assert not emu.presence.exists()
