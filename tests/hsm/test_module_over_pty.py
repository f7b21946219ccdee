"""The host driver against the real firmware behind the HIL emulator's pty, on both runtimes.

Real serial framing over a real pty, the firmware on CPython (fast crypto) and on the real
MicroPython unix port, the OpenSSL command line as the interop oracle.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import oracles
import pytest
import serial

from appliance import wire
from appliance.gm import sm2
from appliance.hsm import errors
from appliance.hsm.client import AsyncClient, Client
from appliance.hsm.firmware.keystore import KeyStore
from appliance.hsm.proto import frame, mcbor
from hil import urlhandlers
from hil.hsm_emulator import HsmEmulator, require_micropython

PIN = "123456"
RUNTIMES = ["cpython", "micropython"]


def start(tmp_path: Path, runtime: str = "cpython", **kwargs) -> HsmEmulator:
    if runtime == "micropython":
        require_micropython()
    return HsmEmulator(tmp_path / "gmcrypto0", tmp_path / "store.bin", runtime=runtime,
                       **kwargs).start()


@pytest.fixture(params=RUNTIMES)
def runtime(request) -> str:
    return request.param


@pytest.fixture
def emu(tmp_path, runtime):
    emulator = start(tmp_path, runtime)
    yield emulator
    emulator.stop()


# ------------------------------------------------------------------------- raw frames


class RawPort:
    """The pty spoken to frame by frame, to test what the driver would never send."""

    def __init__(self, path: str) -> None:
        self.port = serial.Serial(path, 115200, timeout=0.05)
        self.decoder = frame.FrameDecoder()
        self.seq = 0

    def close(self) -> None:
        self.port.close()

    def send_raw(self, data: bytes) -> None:
        self.port.write(data)

    def request(self, obj: dict, seq: int | None = None) -> bytes:
        if seq is None:
            self.seq = (self.seq + 1) & 0xFF
            seq = self.seq
        wire_bytes = frame.encode_frame(frame.REQ, seq, mcbor.encode(obj))
        self.port.write(wire_bytes)
        return wire_bytes

    def frames(self, until_type: int, timeout: float = 10.0) -> list:
        out, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.decoder.feed(self.port.read(4096)):
                out.append(item)
                if isinstance(item, frame.Frame) and item.type == until_type:
                    return out
        raise AssertionError(f"no frame of type {until_type} in {timeout} s: {out}")

    def response(self, timeout: float = 10.0) -> tuple[frame.Frame, dict]:
        rsp = self.frames(frame.RSP, timeout)[-1]
        return rsp, mcbor.decode(rsp.payload)


@pytest.fixture
def raw(emu):
    port = RawPort(emu.port)
    yield port
    port.close()


# ------------------------------------------------------------------------- conformance


def test_info_login_and_pin_tries(emu):
    with Client(emu.port) as client:
        info = client.info()
        assert info["protocol"] == 1 and info["max_payload"] == 4096
        assert {"sm2", "sm3", "sm4"} <= set(info["algs"]) and info["slots"] >= 1
        assert info["logged_in"] is False and info["pin_retries"] == 5
        with pytest.raises(errors.AccessDenied) as denied:
            client.login("000000")
        assert denied.value.code == 0x01000007 and denied.value.details["retries"] == 4
        client.login(PIN)
        assert client.info()["logged_in"] and client.info()["pin_retries"] == 5


def test_keys_sign_and_openssl_interop(emu, tmp_path):
    with Client(emu.port, pin=PIN) as client:
        with pytest.raises(errors.KeyNotFound):
            client.public_key(1)
        public_key = client.generate_key(1)
        assert client.public_key(1).public_key == public_key
        with pytest.raises(errors.SlotOccupied):
            client.generate_key(1)
        message = b"license.authorize " + os.urandom(16)
        first, second = client.sign(1, message), client.sign(1, message)
        assert second.counter == first.counter + 1
        assert sm2.verify(public_key, message, first.signature)
        # OpenSSL's command line verifies the module's signature...
        (tmp_path / "m").write_bytes(message)
        (tmp_path / "pub.pem").write_bytes(oracles.public_pem(public_key))
        (tmp_path / "sig").write_bytes(sm2.signature_to_der(first.signature))
        out = oracles.run("pkeyutl", "-verify", "-rawin", "-digest", "sm3", "-pubin",
                          "-inkey", str(tmp_path / "pub.pem"), "-in", str(tmp_path / "m"),
                          "-sigfile", str(tmp_path / "sig"), "-pkeyopt", oracles.DISTID)
        assert b"Verified Successfully" in out
        # ...and the module verifies OpenSSL's.
        pem, _, their_key = oracles.generate_key(tmp_path)
        der_sig = oracles.run("pkeyutl", "-sign", "-rawin", "-digest", "sm3", "-inkey", str(pem),
                              "-in", str(tmp_path / "m"), "-pkeyopt", oracles.DISTID)
        theirs = sm2.signature_from_der(der_sig)
        assert client.verify(their_key, theirs, message=message)
        assert not client.verify(their_key, theirs, message=message + b"!")
        # Hashing on the module with Z_A equals e computed here; sign_digest signs it.
        e = client.sm3(message, public_key=public_key)
        assert e == sm2.message_digest(public_key, message)
        assert sm2.verify_digest(public_key, e, client.sign_digest(1, e).signature)
        # Encryption to the module's key, decrypted inside it.
        assert client.decrypt(1, sm2.encrypt(public_key, b"secret")) == b"secret"


def test_exactly_once_on_the_wire(emu, raw):
    raw.request({"op": "login", "pin": PIN})
    assert raw.response()[1]["ok"]
    raw.request({"op": "generate_key", "slot": 2, "alg": "sm2"})
    _, generated = raw.response()
    request = raw.request({"op": "sign", "slot": 2, "message": b"once"})
    first_frame, first = raw.response()
    raw.send_raw(request)  # the host's retransmission: same seq, same payload
    again_frame, again = raw.response()
    assert again_frame.payload == first_frame.payload and again["counter"] == first["counter"]
    raw.send_raw(frame.encode_frame(frame.REQ, raw.seq, mcbor.encode(
        {"op": "generate_key", "slot": 2, "alg": "sm2", "overwrite": True})))
    assert raw.response()[1]["ok"]  # same seq, new payload: a new request
    raw.request({"op": "sign", "slot": 2, "message": b"once"})
    assert raw.response()[1]["counter"] == first["counter"] + 1
    # A retransmitted generate_key does not replace the key again.
    keygen = raw.request({"op": "generate_key", "slot": 3, "alg": "sm2"})
    _, k1 = raw.response()
    raw.send_raw(keygen)
    _, k2 = raw.response()
    raw.request({"op": "public_key", "slot": 3})
    assert k1["public_key"] == k2["public_key"] == raw.response()[1]["public_key"]
    assert generated["ok"]


@pytest.mark.parametrize("case", ["garbage", "crc", "oversize", "version", "noncanonical",
                                  "unknown_op", "missing_arg", "mistyped_arg"])
def test_bad_input_on_the_wire_gets_a_nak_or_typed_error(emu, raw, case):
    body_ok = frame.encode_frame(frame.REQ, 9, mcbor.encode({"op": "info"}))
    if case == "garbage":
        raw.send_raw(b"\x13\x37\xff\xfe" * 8 + b"\x00")
        nak = raw.frames(frame.NAK)[-1]
        assert mcbor.decode(nak.payload)["reason"] in ("cobs", "length", "crc") and nak.seq == 0
    elif case == "crc":
        broken = bytearray(body_ok)
        broken[-3] ^= 0x01 if broken[-3] not in (0, 1) else 0x02
        raw.send_raw(bytes(broken))
        assert mcbor.decode(raw.frames(frame.NAK)[-1].payload)["reason"] in ("crc", "cobs")
    elif case == "oversize":
        raw.send_raw(b"\x01" * 6000 + b"\x00")
        assert mcbor.decode(raw.frames(frame.NAK)[-1].payload)["reason"] == "length"
    elif case == "version":
        payload = mcbor.encode({"op": "info"})
        body = bytes([2, frame.REQ, 7]) + len(payload).to_bytes(2, "big") + payload
        body += frame.crc32(body).to_bytes(4, "big")
        from appliance.hsm.proto import cobs

        raw.send_raw(cobs.encode(body) + b"\x00")
        nak = raw.frames(frame.NAK)[-1]
        assert mcbor.decode(nak.payload)["reason"] == "version" and nak.seq == 7
    else:
        if case == "noncanonical":  # {"op": "info"} with a 2-byte length head for "info"
            payload, expected = bytes.fromhex("a1626f707804") + b"info", "INARGERR"
        elif case == "unknown_op":
            payload = mcbor.encode({"op": "export_private_key", "slot": 0})
            expected = "NOTSUPPORT"
        elif case == "missing_arg":
            payload, expected = mcbor.encode({"op": "public_key"}), "INARGERR"
        else:
            payload, expected = mcbor.encode({"op": "public_key", "slot": "0"}), "INARGERR"
        raw.send_raw(frame.encode_frame(frame.REQ, 11, payload))
        rsp, result = raw.response()
        assert rsp.seq == 11 and result["ok"] is False and result["error"] == expected
    # Whatever came before, the module keeps serving.
    raw.request({"op": "info"}, seq=42)
    assert raw.response()[1]["protocol"] == 1


def test_reset_then_the_driver_logs_in_again(emu):
    with Client(emu.port, pin=PIN) as client:
        client.generate_key(4)
        boots = client.boots_seen
        client.reset()
        time.sleep(0.3)  # let the BOOT arrive while idle
        signature = client.sign(4, b"after reset")  # needs login: the driver redoes it
        assert client.boots_seen == boots + 1
        assert sm2.verify(client.public_key(4).public_key, b"after reset", signature.signature)


def test_factory_reset_erases_and_unlocks(emu):
    with Client(emu.port) as client:
        for _ in range(4):
            with pytest.raises(errors.AccessDenied):
                client.login("999999")
        with pytest.raises(errors.PinLocked):
            client.login("999999")
        with pytest.raises(errors.PinLocked):
            client.login(PIN)  # locked means locked, even for the right PIN
        client.factory_reset()
        client.login(PIN)
        assert client.info()["pin_retries"] == 5


def test_async_facade(emu):
    async def main():
        client = AsyncClient(Client(emu.port))
        info, data = await asyncio.gather(client.info(), client.random(32))
        client.close()
        return info, data

    info, data = asyncio.run(main())
    assert info["protocol"] == 1 and len(data) == 32


# ------------------------------------------------------------------------- long work, faults


def test_wait_frames_keep_a_slow_operation_alive(tmp_path):
    with start(tmp_path, slow_ms=700) as emu:
        raw = RawPort(emu.port)
        try:
            started = time.monotonic()
            raw.request({"op": "random", "length": 8})
            frames = raw.frames(frame.RSP)
            waits = [f for f in frames if isinstance(f, frame.Frame) and f.type == frame.WAIT]
            assert time.monotonic() - started >= 0.7
            assert len(waits) >= 3 and all(f.seq == raw.seq for f in waits)
        finally:
            raw.close()
        # The driver, with its 0.5 s response timeout, is kept waiting by them.
        with Client(emu.port, response_timeout=0.5) as client:
            assert len(client.random(8)) == 8


def test_hardware_failure_refuses_crypto(tmp_path):
    with start(tmp_path, kat_fail=True) as emu, Client(emu.port, pin=PIN) as client:
        assert client.info()["protocol"] == 1
        with pytest.raises(errors.HardwareFailure):
            client.random(8)
        with pytest.raises(errors.HardwareFailure):
            client.generate_key(0)
        result = client.self_test()
        assert result["passed"] is False and not all(result["results"].values())


def test_unplug_and_replug(tmp_path):
    emu = start(tmp_path)
    client = Client(emu.port, pin=PIN, reconnect_timeout=0.5)
    public_key = client.generate_key(5)
    emu.stop()  # unplugged: the device node disappears
    with pytest.raises(errors.LinkDown):
        client.info()
    with start(tmp_path):  # plugged back, same module (same key store)
        client.reconnect_timeout = 5.0
        assert client.public_key(5).public_key == public_key
        assert sm2.verify(public_key, b"m", client.sign(5, b"m").signature)
    client.close()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_campaign_over_the_pty(tmp_path, runtime):
    """Every command ends in a correct result or a typed error; no wrong result accepted."""
    faults = "flip=0.001,drop=0.001,dup=0.001,delay_ms=0-5,reset_every=150"
    n = 600 if runtime == "cpython" else 150
    with start(tmp_path, runtime, faults=faults, seed=11) as emu, \
            Client(emu.port, pin=PIN, response_timeout=0.3) as client:
        public_key = None
        outcomes = {"ok": 0, "typed": 0}
        for i in range(n):
            try:
                if public_key is None:
                    public_key = client.generate_key(0, overwrite=True)
                elif i % 3 == 0:
                    message = i.to_bytes(4, "big")
                    assert sm2.verify(public_key, message, client.sign(0, message).signature)
                elif i % 3 == 1:
                    assert client.public_key(0).public_key == public_key
                else:
                    data = os.urandom(100)
                    assert client.sm3(data) == sm2.sm3.digest(data)
                outcomes["ok"] += 1
            except errors.HsmError:  # every failure is typed; a wrong result fails above
                outcomes["typed"] += 1
        assert outcomes["ok"] > 3 * outcomes["typed"], outcomes
        assert "restart" in emu.log_text() or "reset" in emu.log_text()


def test_faulty_url_handler_with_the_driver(emu):
    urlhandlers.register()
    url = f"faulty://?port={emu.port}&flip=0.002&drop=0.002&dup=0.002&seed=5"
    ok = typed = 0
    with Client(url, response_timeout=0.2) as client:
        for _ in range(150):
            try:
                assert len(client.random(40)) == 40
                ok += 1
            except errors.LinkError:
                typed += 1
    assert ok > 100, (ok, typed)


# ------------------------------------------------------------------------- power cuts


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_power_cuts_never_tear_a_key_or_raise_the_pin_counter(tmp_path, runtime):
    rounds = 40 if runtime == "cpython" else 12
    with start(tmp_path, runtime, faults="cut_write=0.15", seed=3) as emu, \
            Client(emu.port, pin=PIN, response_timeout=0.5) as client:
        cuts_seen, seen_a_key = 0, False
        for _ in range(rounds):
            try:
                client.generate_key(6, overwrite=True)
            except (errors.LinkError, errors.AccessDenied):
                cuts_seen += 1
            # Whatever key the slot holds (old or new), it is whole: it signs and verifies.
            for _attempt in range(20):
                try:
                    key = client.public_key(6).public_key
                    sig = client.sign(6, b"whole").signature
                    break
                except errors.KeyNotFound:
                    # Only the very first key may be missing (its write was cut).
                    assert not seen_a_key, "a key vanished after a power cut"
                    key = None
                    break
                except (errors.LinkError, errors.AccessDenied):
                    cuts_seen += 1
            else:
                pytest.fail("the module did not recover from power cuts")
            if key is not None:
                seen_a_key = True
                assert sm2.verify(key, b"whole", sig), "a torn key after a power cut"
        assert cuts_seen > 0
    # PIN counter under cuts, wrong PINs only: it never goes back up.
    with start(tmp_path, runtime, faults="cut_write=0.4", seed=4) as emu, \
            Client(emu.port, response_timeout=0.5) as client:
        client.factory_reset() if _retry(client.info)["pin_retries"] < 5 else None
        previous = 5
        while previous > 0:
            try:
                client.login("000000")
            except (errors.AccessDenied, errors.PinLocked, errors.LinkError):
                pass
            retries = _retry(client.info)["pin_retries"]
            assert retries <= previous, "the PIN counter went back up after a power cut"
            previous = retries
        with pytest.raises(errors.PinLocked):
            _retry(lambda: client.login(PIN))


def _retry(fn, attempts: int = 10):
    for _ in range(attempts - 1):
        try:
            return fn()
        except errors.LinkError:
            pass
    return fn()


# ------------------------------------------------------------------------- command line


def _cli(emu: HsmEmulator, *args: str, data: bytes | None = None) -> tuple[int, dict]:
    env = dict(os.environ, APPLIANCE_HSM_PIN=PIN)
    proc = subprocess.run([sys.executable, "-m", "appliance.cli", "hsm", "--device", emu.port,
                           *args], input=data, capture_output=True, env=env, timeout=120)
    assert proc.stderr == b"", proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 1, lines  # one JSON object per call
    return proc.returncode, json.loads(lines[0])


def test_cli_commands_and_no_private_key_leaks(tmp_path):
    with start(tmp_path) as emu:
        outputs = []
        rc, out = _cli(emu, "keygen", "7")
        outputs.append(out)
        assert rc == 0 and len(bytes.fromhex(out["public_key"])) == 65
        public_hex = out["public_key"]
        (tmp_path / "doc").write_bytes(b"document" * 1000)  # > 3 KiB: hashed on the host
        for name in ("doc",):
            rc, signed = _cli(emu, "sign", "7", str(tmp_path / name))
            outputs.append(signed)
            assert rc == 0
            rc, verdict = _cli(emu, "verify", public_hex, str(tmp_path / name),
                               signed["signature"])
            assert rc == 0 and verdict["valid"] is True
            assert sm2.verify(bytes.fromhex(public_hex), (tmp_path / name).read_bytes(),
                              bytes.fromhex(signed["signature"]))
        rc, signed = _cli(emu, "sign", "7", "-", data=b"short message")
        assert rc == 0
        rc, verdict = _cli(emu, "verify", public_hex, "-", signed["signature"], data=b"other")
        assert rc == 1 and verdict["valid"] is False
        rc, out = _cli(emu, "pubkey", "7")
        assert rc == 0 and out["public_key"] == public_hex
        rc, out = _cli(emu, "pubkey", "8")
        assert rc == 2 and out["error"] == "KEYNOTEXIST" and out["code"] == 0x01000008
        rc, out = _cli(emu, "selftest")
        assert rc == 0 and out["passed"] is True
        rc, out = _cli(emu, "info")
        outputs.append(out)
        rc, out = _cli(emu, "factory-reset")
        assert rc == 4 and "--yes" in out["message"]
        log = emu.log_text()
        # The private key, read from the module's own store, is in no output and no log line.
        state = KeyStore(str(tmp_path / "store.bin")).load()
        private = next(k for k in state["keys"] if k is not None)[1]
        assert len(private) == 32
        blob = json.dumps(outputs) + log
        assert private.hex() not in blob.lower() and private.hex().upper() not in blob
        rc, out = _cli(emu, "factory-reset", "--yes")
        assert rc == 0 and out["erased"]
        rc, out = _cli(emu, "pubkey", "7")
        assert rc == 2 and out["error"] == "KEYNOTEXIST"


def test_cli_reports_a_missing_device_without_a_trace(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "appliance.cli", "hsm", "--device",
                           str(tmp_path / "absent"), "info"], capture_output=True, timeout=60)
    assert proc.returncode == 3 and b"Traceback" not in proc.stderr + proc.stdout
    assert json.loads(proc.stdout)["error"] == "link"


def test_wire_payloads_are_canonical_for_the_host_codec(emu, raw):
    # The firmware's own codec and the host's agree byte for byte on a real response.
    raw.request({"op": "info"})
    rsp, _ = raw.response()
    assert wire.encode(wire.decode(rsp.payload)) == rsp.payload
