"""The host driver against the real firmware behind the HIL emulator's pty, on both runtimes.

Real serial framing over a real pty, the firmware on CPython (fast crypto) and on the real
MicroPython unix port, the OpenSSL command line as the interop oracle. The ``emu`` fixture's
module has been set up as a technician does (its factory PIN changed to PIN); ``fresh`` is
one straight from the factory.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from hil.hsm_emulator import (
    FACTORY_PIN,
    PROVISIONED_PIN,
    HsmEmulator,
    change_factory_pin,
    provision,
    provision_store,
    require_micropython,
)

PIN = PROVISIONED_PIN
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
def fresh(tmp_path, runtime):
    emulator = start(tmp_path, runtime)
    yield emulator
    emulator.stop()


@pytest.fixture
def emu(fresh):
    change_factory_pin(fresh.port, PIN)
    return fresh


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

    def call(self, obj: dict) -> dict:
        self.request(obj)
        return self.response()[1]

    def login(self, pin: str = PIN) -> bytes:
        rsp = self.call({"op": "login", "pin": pin})
        assert rsp["ok"], rsp
        return rsp["session"]

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
        assert info["default_pin"] is False
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


def test_exactly_once_on_the_wire_with_the_session(emu, raw):
    """The duplicate cache answers a retransmitted REQ (which carries the same session)."""
    s = raw.login()
    raw.request({"op": "generate_key", "slot": 2, "alg": "sm2", "session": s})
    _, generated = raw.response()
    request = raw.request({"op": "sign", "slot": 2, "message": b"once", "session": s})
    first_frame, first = raw.response()
    raw.send_raw(request)  # the host's retransmission: same seq, same payload
    again_frame, again = raw.response()
    assert again_frame.payload == first_frame.payload and again["counter"] == first["counter"]
    raw.send_raw(frame.encode_frame(frame.REQ, raw.seq, mcbor.encode(
        {"op": "generate_key", "slot": 2, "alg": "sm2", "overwrite": True, "session": s})))
    assert raw.response()[1]["ok"]  # same seq, new payload: a new request
    raw.request({"op": "sign", "slot": 2, "message": b"once", "session": s})
    assert raw.response()[1]["counter"] == first["counter"] + 1
    # A retransmitted generate_key does not replace the key again.
    keygen = raw.request({"op": "generate_key", "slot": 3, "alg": "sm2", "session": s})
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


def test_factory_reset_needs_the_pin_then_the_button(emu):
    public_key = provision(emu.port, slot=1, pin=PIN)[0]
    with Client(emu.port) as client:
        with pytest.raises(errors.AccessDenied) as denied:
            client.factory_reset()  # no PIN: refused, no try spent
        assert "retries" not in denied.value.details
        with pytest.raises(errors.AccessDenied) as denied:
            client.factory_reset("999999")  # a wrong PIN is a failed login
        assert denied.value.details["retries"] == 4
        assert client.public_key(1).public_key == public_key
        for _ in range(3):  # (the last two wait a second each: the slow-down)
            with pytest.raises(errors.AccessDenied):
                client.login("999999")
        with pytest.raises(errors.PinLocked):
            client.login("999999")
        with pytest.raises(errors.PinLocked):
            client.login(PIN)  # locked means locked, even for the right PIN
        with pytest.raises(errors.PinLocked) as locked:
            client.factory_reset(PIN)  # the button is not held
        assert "reset button" in str(locked.value)
        assert client.public_key(1).public_key == public_key
        with emu.button_held():
            client.factory_reset()
        with pytest.raises(errors.KeyNotFound):
            client.public_key(1)
        info = client.info()
        assert info["pin_retries"] == 5 and info["default_pin"] is True
        client.login(FACTORY_PIN)


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
    # (a module whose self test fails cannot have its PIN changed: change_pin is crypto)
    with start(tmp_path, kat_fail=True) as emu, Client(emu.port, pin=FACTORY_PIN) as client:
        assert client.info()["protocol"] == 1
        with pytest.raises(errors.HardwareFailure):
            client.random(8)
        with pytest.raises(errors.HardwareFailure):
            client.generate_key(0)
        result = client.self_test()
        assert result["passed"] is False and not all(result["results"].values())


def test_unplug_and_replug(tmp_path):
    emu = start(tmp_path)
    change_factory_pin(emu.port, PIN)
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
    provision_store(tmp_path / "store.bin", PIN)
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
    provision_store(tmp_path / "store.bin", PIN)
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
        previous = _retry(client.info)["pin_retries"]
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


def _cli(emu: HsmEmulator, *args: str, data: bytes | None = None,
         env: dict[str, str] | None = None) -> tuple[int, dict]:
    """The command line, with no terminal to ask on (its own session: no controlling tty)."""
    env = dict(os.environ, APPLIANCE_HSM_PIN=PIN) if env is None else env
    proc = subprocess.run([sys.executable, "-m", "appliance.cli", "hsm", "--device", emu.port,
                           *args], input=data, capture_output=True, env=env, timeout=120,
                          start_new_session=True)
    assert proc.stderr == b"", proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 1, lines  # one JSON object per call
    return proc.returncode, json.loads(lines[0])


def test_cli_commands_and_no_private_key_leaks(tmp_path):
    with start(tmp_path) as emu:
        change_factory_pin(emu.port, PIN)
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


# ------------------------------------------------------------------------- sessions (rev. 2)


def _counter(store: Path, slot: int) -> int:
    """The slot's signature counter as the module persisted it."""
    return KeyStore(str(store)).load()["counters"][slot]


def test_login_hands_out_a_fresh_session(emu, raw):
    first, second = raw.login(), raw.login()
    assert len(first) == len(second) == 16 and first != second
    raw.close()
    with Client(emu.port) as client:
        client.login(PIN)
        assert client.logged_in and client.info()["logged_in"] is True


def test_signing_without_the_session_or_with_another_is_refused(emu):
    store = emu.store
    with Client(emu.port, pin=PIN) as client:
        client.generate_key(0)
        assert client.sign(0, b"m").counter == 1
        for session in (None, os.urandom(16), b"not a session"):
            with pytest.raises(errors.AccessDenied):
                client.call("sign", slot=0, message=b"m", session=session)
            with pytest.raises(errors.AccessDenied):
                client.call("sign_digest", slot=0, digest=bytes(32), session=session)
            assert _counter(store, 0) == 1  # the counter did not move
        assert client.sign(0, b"m").counter == 2  # the driver's own session still works


def test_another_login_ends_the_earlier_session_and_the_driver_logs_in_again(emu):
    with Client(emu.port, pin=PIN) as client:
        client.generate_key(0)
        old = client._session
        client.close()  # (the port is the driver's alone while it is open)
        raw = RawPort(emu.port)
        raw.login()  # someone with the PIN logs in: the driver's session is over
        raw.close()
        with pytest.raises(errors.AccessDenied):
            client.call("sign", slot=0, message=b"m", session=old)
        assert _counter(emu.store, 0) == 0
        assert client.sign(0, b"m").counter == 1  # refused once, logged in again, signed
        assert client._session != old


def test_a_failed_login_keeps_the_session(emu):
    with Client(emu.port, pin=PIN) as client:
        client.generate_key(0)
        with pytest.raises(errors.AccessDenied):
            client.login("000000")
        assert client.sign(0, b"m").counter == 1
        # no second login happened: a successful one would have reset the tries
        assert client.info()["pin_retries"] == 4


def test_driver_never_sends_a_wrong_pin_twice(emu):
    with Client(emu.port, pin=PIN) as client:
        client.login(PIN)
        session = client._session
        with pytest.raises(errors.AccessDenied) as denied:
            client.change_pin("99999999", "24680135")
        assert denied.value.details["retries"] == 4
        # a wrong PIN is not a lost session: no new login, no second try with it
        assert client._session == session and client.info()["pin_retries"] == 4


def test_logout_and_reset_end_the_session(emu):
    with Client(emu.port, pin=PIN) as client:
        client.generate_key(0)
        session = client._session
        with pytest.raises(errors.AccessDenied):
            client.call("logout", session=None)  # without the open session: ends nothing
        client.call("sign", slot=0, message=b"m", session=session)
        client.logout()
        with pytest.raises(errors.AccessDenied):
            client.call("sign", slot=0, message=b"m", session=session)
        client.login(PIN)
        session = client._session
        with pytest.raises(errors.AccessDenied):
            client.call("reset", session=os.urandom(16))
        boots = client.boots_seen
        client.reset()
        try:
            client.info()  # the BOOT comes before its answer: drained first, or it fails it
        except errors.ModuleReset:
            pass
        assert client.boots_seen == boots + 1
        with pytest.raises(errors.AccessDenied):
            client.call("sign", slot=0, message=b"m", session=session)
        assert _counter(emu.store, 0) == 1


def test_hash_contexts_of_another_session_are_refused(emu):
    with Client(emu.port, pin=PIN) as client:
        client.login(PIN)
        first = client._session
        context = client.hash_init()
        client.hash_update(context, b"ab")
        second = client.call("login", pin=PIN)["session"]  # another session
        with pytest.raises(errors.ContextLost):
            client.call("hash_update", context=context, data=b"x", session=second)
        with pytest.raises(errors.AccessDenied):  # the first session is over
            client.call("hash_final", context=context, session=first)
        client.call("logout", session=second)
        # its opener still finishes it, unchanged by the refused update
        client.call("hash_update", context=context, data=b"c", session=first)
        digest = client.call("hash_final", context=context, session=first)["digest"]
        assert digest == sm2.sm3.digest(b"abc")


def test_signing_on_the_default_pin_is_refused(fresh, tmp_path):
    with Client(fresh.port, pin=FACTORY_PIN) as client:
        with pytest.raises(errors.PinDefault) as refused:
            client.generate_key(0)
        assert refused.value.code == 0x01000101
        assert "appliance hsm change-pin" in str(refused.value)
        with pytest.raises(errors.PinDefault):
            client.sign(0, b"m")
        assert client.info()["default_pin"] is True
        client.change_pin(FACTORY_PIN, PIN)
        assert client.info()["default_pin"] is False
        public_key = client.generate_key(0)
        assert sm2.verify(public_key, b"m", client.sign(0, b"m").signature)
        with pytest.raises(errors.InvalidArgument):
            client.change_pin(PIN, FACTORY_PIN)  # never back to the default


def test_a_module_with_keys_still_on_its_default_pin_does_not_sign(tmp_path, runtime):
    """A store from before revision 2: a device key, the factory PIN."""
    from appliance.hsm.firmware import keystore

    private, public_key = sm2.generate_keypair()
    state = keystore.default_state()
    state["keys"][0] = ["sm2", private, public_key]
    state["counters"][0] = 41
    store = tmp_path / "store.bin"
    keystore.KeyStore(str(store)).save(state)
    with start(tmp_path, runtime) as emu, Client(emu.port, pin=FACTORY_PIN) as client:
        for attempt in (lambda: client.sign(0, b"m"),
                        lambda: client.sign_digest(0, bytes(32)),
                        lambda: client.decrypt(0, sm2.encrypt(public_key, b"x"))):
            with pytest.raises(errors.PinDefault):
                attempt()
        assert _counter(store, 0) == 41
        client.change_pin(FACTORY_PIN, PIN)
        assert client.sign(0, b"m").counter == 42


def test_a_second_opener_of_the_tty_is_refused(emu):
    with Client(emu.port) as first:
        first.info()  # opened, exclusively
        with Client(emu.port, reconnect_timeout=5.0) as second:
            started = time.monotonic()
            with pytest.raises(errors.PortBusy) as busy:
                second.info()
            assert "another process" in str(busy.value)
            assert time.monotonic() - started < 5.0  # at once, not after the reconnect wait
        # Any other process (one without CAP_SYS_ADMIN, as the appliance's user) is refused
        # by the kernel: TIOCEXCL, not only the driver's own lock.
        assert _open_without_privileges(emu.port) == "EBUSY"
        assert first.info()["protocol"] == 1
    # closed: the next opener gets it
    assert _open_without_privileges(emu.port) == "ok"
    with Client(emu.port) as again:
        assert again.info()["protocol"] == 1


_OPEN_UNPRIVILEGED = """
import ctypes, errno, os, sys
# drop every capability (root keeps its uid, loses CAP_SYS_ADMIN and CAP_DAC_OVERRIDE)
header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
data = (ctypes.c_uint32 * 6)()
if ctypes.CDLL(None, use_errno=True).capset(header, data) != 0:
    sys.exit("capset failed: %d" % ctypes.get_errno())
try:
    os.close(os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK))
    print("ok")
except OSError as exc:
    print(errno.errorcode[exc.errno])
"""


def _open_without_privileges(path: str) -> str:
    proc = subprocess.run([sys.executable, "-c", _OPEN_UNPRIVILEGED, path],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_failed_pins_slow_down_with_wait_frames(emu, raw):
    """From the 4th failed PIN on, the answer comes after the module's clock has run for a
    second: the module keeps the host waiting with WAIT frames meanwhile (each one means
    100 ms, then 150 ms more, of the module's clock)."""
    waits = []
    for _ in range(5):
        raw.request({"op": "login", "pin": "000000"})
        frames = raw.frames(frame.RSP)
        waits.append(sum(1 for f in frames
                         if isinstance(f, frame.Frame) and f.type == frame.WAIT
                         and f.seq == raw.seq))
        assert mcbor.decode(frames[-1].payload)["ok"] is False
    assert waits[3] >= 2 and waits[4] >= 2, waits
    raw.request({"op": "info"})
    assert raw.response()[1]["pin_retries"] == 0


def test_the_driver_waits_out_the_slow_down(emu):
    with Client(emu.port, response_timeout=0.3) as client:
        for _ in range(3):
            with pytest.raises(errors.AccessDenied):
                client.login("000000")
        client.login(PIN)  # answered after a second; WAIT frames keep the 0.3 s timer alive
        assert client.info()["pin_retries"] == 5


# ------------------------------------------------------------------------- PINs on the CLI


def _env_without_pins(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_HSM_")}
    env.update(extra)
    return env


def test_cli_takes_no_pin_on_the_command_line(emu):
    rc, out = _cli(emu, "--pin", PIN, "login", env=_env_without_pins())
    assert rc == 4 and out["error"] == "usage" and "--pin-file" in out["message"]
    with Client(emu.port) as client:
        assert client.info()["pin_retries"] == 5  # the module was not even asked


def test_cli_reads_the_pin_from_a_file_or_the_environment(emu, tmp_path):
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    rc, out = _cli(emu, "--pin-file", str(pin_file), "keygen", "2", env=_env_without_pins())
    assert rc == 0 and len(bytes.fromhex(out["public_key"])) == 65
    rc, out = _cli(emu, "sign", "2", "-", data=b"m", env=_env_without_pins(APPLIANCE_HSM_PIN=PIN))
    assert rc == 0 and out["counter"] == 1
    # the file wins over the environment
    rc, out = _cli(emu, "--pin-file", str(pin_file), "login",
                   env=_env_without_pins(APPLIANCE_HSM_PIN="99999999"))
    assert rc == 0
    rc, out = _cli(emu, "--pin-file", str(tmp_path / "absent"), "login",
                   env=_env_without_pins())
    assert rc == 4 and str(tmp_path / "absent") in out["message"]


def test_cli_without_a_pin_or_a_terminal_says_where_to_put_it(emu):
    rc, out = _cli(emu, "login", env=_env_without_pins())
    assert rc == 4 and out["error"] == "usage"
    assert "--pin-file" in out["message"] and "APPLIANCE_HSM_PIN" in out["message"]
    rc, out = _cli(emu, "info", env=_env_without_pins())  # a command without a PIN runs
    assert rc == 0 and out["protocol"] == 1


def test_cli_asks_for_the_pins_on_the_terminal(fresh):
    rc, out, screen = _cli_on_a_terminal(
        fresh, "change-pin", answers=[("PIN: ", FACTORY_PIN), ("new PIN: ", PIN),
                                      ("new PIN again: ", PIN)])
    assert rc == 0 and out == {"ok": True}, (out, screen)
    assert PIN not in screen and FACTORY_PIN not in screen  # not echoed
    with Client(fresh.port) as client:
        client.login(PIN)
        assert client.info()["default_pin"] is False


def _cli_on_a_terminal(emu: HsmEmulator, *args: str, answers: list[tuple[str, str]]
                       ) -> tuple[int, dict, str]:
    """The command line run on a terminal of its own (a pty as its controlling tty): each
    answer is typed once its prompt shows. Returns (status, JSON out, what the screen
    showed)."""
    import fcntl
    import select
    import termios

    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "hsm", "--device", emu.port, *args],
        stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env_without_pins(),
        start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    screen = ""
    try:
        for prompt, answer in answers:
            deadline = time.monotonic() + 60
            while not screen.endswith(prompt):
                assert time.monotonic() < deadline, f"no prompt {prompt!r}: {screen!r}"
                if select.select([master], [], [], 0.2)[0]:
                    screen += os.read(master, 1024).decode(errors="replace")
            os.write(master, answer.encode() + b"\n")
        stdout, stderr = proc.communicate(timeout=120)
        with contextlib.suppress(OSError):
            while select.select([master], [], [], 0)[0]:
                screen += os.read(master, 1024).decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert stderr == b"", stderr
    return proc.returncode, json.loads(stdout), screen


def test_cli_factory_reset_with_the_pin_then_with_the_button(emu):
    rc, out = _cli(emu, "factory-reset", "--yes", env=_env_without_pins())
    assert rc == 4 and "--pin-file" in out["message"]
    rc, out = _cli(emu, "factory-reset", "--yes",
                   env=_env_without_pins(APPLIANCE_HSM_PIN="99999999"))
    assert rc == 2 and out["error"] == "PARDENY" and out["retries"] == 4
    with Client(emu.port) as client:
        for _ in range(4):
            with pytest.raises((errors.AccessDenied, errors.PinLocked)):
                client.login("99999999")
    rc, out = _cli(emu, "factory-reset", "--yes", env=_env_without_pins())
    assert rc == 2 and out["error"] == "PIN_LOCKED" and "reset button" in out["advice"]
    with emu.button_held():
        rc, out = _cli(emu, "factory-reset", "--yes", env=_env_without_pins())
    assert rc == 0 and out["erased"] is True
    rc, out = _cli(emu, "keygen", "0", env=_env_without_pins(APPLIANCE_HSM_PIN=FACTORY_PIN))
    assert rc == 2 and out["error"] == "PIN_DEFAULT"
    assert "appliance hsm change-pin" in out["advice"]


def test_cli_reports_a_port_held_by_another_process(emu):
    with Client(emu.port) as holder:
        holder.info()
        rc, out = _cli(emu, "info")
    assert rc == 3 and out["error"] == "busy" and "another process" in out["message"]
