"""The identity-service double (hil.identity_service, appliance-hil identity-service), over
real HTTP on loopback, with the terminal's client (appliance.kiosk.identity) on the other end.

Captures are synthetic frames of the astronaut (tests/kiosk/synth.py) sealed with
appliance.kiosk.capture.envelope.seal_frame, in memory; the other face is skimage's
cameraman. The double runs as the CLI subprocess (the path the simulated hall uses) for the
API tests, and in this event loop for the few that look inside.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
from skimage import data as skdata

from appliance import wire
from appliance.gm import sm2, sm3
from appliance.kiosk.capture.envelope import seal_frame
from appliance.kiosk.identity import (
    AttestationInvalid,
    IdentityClient,
    IdentityRejected,
    IdentityUnavailable,
    verify_attestation,
)
from hil import cli as hil_cli
from hil import identity_service as ids

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "kiosk"))
import synth  # noqa: E402

pytestmark = pytest.mark.timeout(120)

SERVICE = "hil-identity-test"
CITIZEN = "Zhang San"
SUBJECT = sm3.digest(CITIZEN.encode())
CBOR = "application/cbor"
REPO = Path(__file__).resolve().parents[2]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("idkey") / "service.key"
    out = subprocess.run([sys.executable, "-m", "hil.cli", "identity-service", "--make-key",
                          str(path)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    public = bytes.fromhex(doc["public_key"])
    assert sm2.public_key_of(ids.load_key(path)) == public
    return path, public


@pytest.fixture(scope="module")
def double(key_file):
    path, _ = key_file
    with ids.IdentityServiceProcess(path, [f"{CITIZEN}=synthetic:astronaut",
                                           "Li Si=synthetic:camera"],
                                    service=SERVICE) as proc:
        yield proc


@pytest.fixture
def honest(double):
    """The double, in honest mode when the test starts and ends."""
    asyncio.run(_set_mode(double.url, "honest"))
    yield double
    asyncio.run(_set_mode(double.url, "honest"))


async def _set_mode(url: str, mode: str) -> dict:
    async with aiohttp.ClientSession() as s, s.post(
            url + "/hil/mode", data=wire.encode({"mode": mode}),
            headers={"Content-Type": CBOR}) as r:
        assert r.status == 200
        return wire.decode(await r.read())


def astronaut_sealed(public_key: bytes, session: bytes, pose=None):
    return seal_frame(synth.render(pose or synth.Pose(dx=8, dy=-5, brightness=0.9)),
                      public_key, session)


def cameraman_sealed(public_key: bytes, session: bytes):
    frame = cv2.cvtColor(skdata.camera(), cv2.COLOR_GRAY2BGR)
    return seal_frame(frame, public_key, session)


async def attest(url, public_key, sealed, *, subject=SUBJECT, session=None, timeout_s=20.0,
                 name=SERVICE):
    session = session or sealed.envelope["session"]
    async with IdentityClient(url, service_public_key=public_key, service_name=name) as c:
        return await c.attest(sealed.envelope, subject=subject,
                              capture_digest=sealed.capture_digest, session_id=session,
                              now_ms=now_ms(), timeout_s=timeout_s)


async def post_raw(url: str, body: bytes, content_type: str = CBOR) -> tuple[int, object]:
    async with aiohttp.ClientSession() as s, s.post(
            url + "/v1/attest", data=body, headers={"Content-Type": content_type}) as r:
        return r.status, wire.decode(await r.read())


# -- answers --------------------------------------------------------------------------------


def test_matching_capture_gets_a_valid_match_attestation(honest, key_file):
    _, public = key_file
    session = os.urandom(16)
    sealed = astronaut_sealed(public, session)
    a = asyncio.run(attest(honest.url, public, sealed))
    assert a.result == "match" and a.score >= ids.DEFAULT_THRESHOLD
    body = a.signed["body"]
    assert body["session"] == session and body["subject"] == SUBJECT
    assert body["capture_digest"] == sealed.capture_digest and body["service"] == SERVICE
    assert abs(body["issued_at"] - now_ms()) < 60_000
    # what goes into license.authorize verifies on its own, from its bytes
    again = verify_attestation(wire.encode(a.signed), service_public_key=public,
                               service_name=SERVICE, session_id=session, subject=SUBJECT,
                               capture_digest=sealed.capture_digest, now_ms=now_ms())
    assert again.score == a.score
    assert sm2.verify(public, wire.encode(body), a.signed["signature"])


def test_another_face_gets_no_match(honest, key_file):
    _, public = key_file
    a = asyncio.run(attest(honest.url, public, cameraman_sealed(public, os.urandom(16))))
    assert a.result == "no_match" and a.score < ids.DEFAULT_THRESHOLD


def test_the_reference_decides(honest, key_file):
    """The cameraman's capture matches the citizen enrolled with the cameraman's photo."""
    _, public = key_file
    a = asyncio.run(attest(honest.url, public, cameraman_sealed(public, os.urandom(16)),
                           subject=sm3.digest(b"Li Si")))
    assert a.result == "match"
    b = asyncio.run(attest(honest.url, public, astronaut_sealed(public, os.urandom(16)),
                           subject=sm3.digest(b"Li Si")))
    assert b.result == "no_match"


def test_tampered_mac_is_bad_envelope(honest, key_file):
    _, public = key_file
    sealed = astronaut_sealed(public, os.urandom(16))
    mac = bytearray(sealed.envelope["mac"])
    mac[0] ^= 1
    sealed.envelope["mac"] = bytes(mac)
    with pytest.raises(IdentityRejected) as info:
        asyncio.run(attest(honest.url, public, sealed))
    assert (info.value.code, info.value.status) == ("bad_envelope", 400)


def test_envelope_for_another_service_key_is_bad_envelope(honest, key_file):
    _, public = key_file
    _, other = sm2.generate_keypair()
    with pytest.raises(IdentityRejected) as info:
        asyncio.run(attest(honest.url, public, astronaut_sealed(other, os.urandom(16))))
    assert info.value.code == "bad_envelope"


def test_digest_mismatch(honest, key_file):
    _, public = key_file
    sealed = astronaut_sealed(public, os.urandom(16))
    other = astronaut_sealed(public, os.urandom(16), synth.Pose(dx=-10))
    object.__setattr__(sealed, "capture_digest", other.capture_digest)
    with pytest.raises(IdentityRejected) as info:
        asyncio.run(attest(honest.url, public, sealed))
    assert (info.value.code, info.value.status) == ("digest_mismatch", 400)


def test_unknown_subject(honest, key_file):
    _, public = key_file
    with pytest.raises(IdentityRejected) as info:
        asyncio.run(attest(honest.url, public, astronaut_sealed(public, os.urandom(16)),
                           subject=sm3.digest(b"nobody")))
    assert (info.value.code, info.value.status) == ("unknown_subject", 404)


def test_service_name_is_checked_by_the_client(honest, key_file):
    _, public = key_file
    with pytest.raises(AttestationInvalid) as info:
        asyncio.run(attest(honest.url, public, astronaut_sealed(public, os.urandom(16)),
                           name="another-name"))
    assert info.value.reason == "service"


# -- modes ----------------------------------------------------------------------------------


def test_mode_no_match(honest, key_file):
    _, public = key_file
    assert asyncio.run(_set_mode(honest.url, "no_match")) == {"mode": "no_match"}
    a = asyncio.run(attest(honest.url, public, astronaut_sealed(public, os.urandom(16))))
    assert (a.result, a.score) == ("no_match", 0)


def test_mode_timeout_is_unavailable(honest, key_file):
    _, public = key_file
    asyncio.run(_set_mode(honest.url, "timeout"))
    with pytest.raises(IdentityUnavailable) as info:
        asyncio.run(attest(honest.url, public, astronaut_sealed(public, os.urandom(16)),
                           timeout_s=1.0))
    assert info.value.code == "unavailable"


def test_mode_wrong_key_is_attestation_invalid(honest, key_file):
    _, public = key_file
    asyncio.run(_set_mode(honest.url, "wrong_key"))
    with pytest.raises(AttestationInvalid) as info:
        asyncio.run(attest(honest.url, public, astronaut_sealed(public, os.urandom(16))))
    assert info.value.reason == "wrong_key"


def test_mode_down_and_back(honest, key_file):
    _, public = key_file
    asyncio.run(_set_mode(honest.url, "down"))
    with pytest.raises(IdentityUnavailable) as info:
        asyncio.run(attest(honest.url, public, astronaut_sealed(public, os.urandom(16))))
    assert info.value.status == 503
    asyncio.run(_set_mode(honest.url, "honest"))
    a = asyncio.run(attest(honest.url, public, astronaut_sealed(public, os.urandom(16))))
    assert a.result == "match"


def test_connection_refused_is_unavailable(key_file):
    _, public = key_file
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sealed = astronaut_sealed(public, os.urandom(16))
    with pytest.raises(IdentityUnavailable):
        asyncio.run(attest(f"http://127.0.0.1:{port}", public, sealed))


def test_bad_mode_refused(double):
    async def go():
        async with aiohttp.ClientSession() as s, s.post(
                double.url + "/hil/mode", data=wire.encode({"mode": "evil"}),
                headers={"Content-Type": CBOR}) as r:
            return r.status, wire.decode(await r.read())
    status, body = asyncio.run(go())
    assert status == 400 and body["error"] == "bad_request"


# -- requests the double refuses ------------------------------------------------------------


def test_info(double, key_file):
    _, public = key_file

    async def go():
        async with aiohttp.ClientSession() as s, s.get(double.url + "/v1/info") as r:
            return wire.decode(await r.read())
    assert asyncio.run(go()) == {"service": SERVICE, "alg": "sm2", "public_key": public}


@pytest.mark.parametrize("body,ctype", [
    (b"\xff not cbor", CBOR),
    (wire.encode({"envelope": {}, "subject": SUBJECT}), CBOR),
    (wire.encode({"envelope": {}, "subject": b"x", "capture_digest": bytes(32)}), CBOR),
    (wire.encode({"envelope": [], "subject": SUBJECT, "capture_digest": bytes(32)}), CBOR),
    (wire.encode({"envelope": {}, "subject": SUBJECT, "capture_digest": bytes(32)}),
     "application/json"),
])
def test_bad_request(honest, body, ctype):
    status, answer = asyncio.run(post_raw(honest.url, body, ctype))
    assert status == 400 and answer["error"] == "bad_request"


def test_malformed_envelope_is_bad_envelope(honest):
    body = wire.encode({"envelope": {"session": bytes(16)}, "subject": SUBJECT,
                        "capture_digest": bytes(32)})
    status, answer = asyncio.run(post_raw(honest.url, body))
    assert status == 400 and answer["error"] == "bad_envelope"


def _http_head(port: int, length: int | None) -> bytes:
    head = (f"POST /v1/attest HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: {CBOR}\r\n")
    head += f"Content-Length: {length}\r\n" if length is not None else \
        "Transfer-Encoding: chunked\r\n"
    return (head + "\r\n").encode()


def _read_response(sock: socket.socket) -> bytes:
    sock.settimeout(20)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return data


def test_oversize_declared_length_refused_without_reading(honest):
    port = int(honest.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_http_head(port, 512 * 1024 * 1024) + b"\x00" * 1024)
        answer = _read_response(sock)  # the server answers and closes: 1 KiB of 512 MiB sent
    assert answer.startswith(b"HTTP/1.1 413")
    assert wire.decode(answer.split(b"\r\n\r\n", 1)[1])["error"] == "too_large"


def test_oversize_chunked_body_refused_after_the_limit(honest):
    port = int(honest.url.rsplit(":", 1)[1])
    chunk = b"\x00" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_http_head(port, None))
        sock.settimeout(20)
        try:
            while sent < 64 * 1024 * 1024:  # far more than the double may read
                sock.sendall(frame)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    # it stopped reading soon after 4 MiB (the rest sat in socket buffers or was refused)
    assert sent < 32 * 1024 * 1024


# -- in this event loop: state and the CLI ----------------------------------------------------


def test_modes_listed_in_the_cli_match():
    assert hil_cli._IDENTITY_MODES == ids.MODES


def test_make_key_refuses_to_overwrite(tmp_path):
    path = tmp_path / "k"
    ids.make_key(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    with pytest.raises(FileExistsError):
        ids.make_key(path)
    out = subprocess.run([sys.executable, "-m", "hil.cli", "identity-service", "--make-key",
                          str(path)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 2 and "cannot write" in out.stderr and out.stdout == ""


def test_bad_key_file_and_enrolment_fail_cleanly(tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    for args in (["--key", str(bad), "--port", "0"],
                 ["--key", str(tmp_path / "missing"), "--port", "0"]):
        out = subprocess.run([sys.executable, "-m", "hil.cli", "identity-service", *args],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
        assert out.returncode == 2 and "cannot start" in out.stderr
        assert "Traceback" not in out.stderr
    good = tmp_path / "good.key"
    ids.make_key(good)
    for enroll in ("noequals", "x=synthetic:nothing", f"x={tmp_path / 'missing.png'}"):
        out = subprocess.run([sys.executable, "-m", "hil.cli", "identity-service", "--key",
                              str(good), "--port", "0", "--enroll", enroll],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr


def test_reference_without_a_face_is_refused():
    priv, _ = sm2.generate_keypair()
    with pytest.raises(ValueError, match="no face"):
        ids.IdentityService(priv, {"grey": np.full((200, 200, 3), 128, np.uint8)})


def test_scores_separate_the_faces():
    ref = ids.face_template(ids.load_reference("synthetic:astronaut"))
    cam = ids.face_template(ids.load_reference("synthetic:camera"))
    for pose in (synth.Pose(), synth.Pose(yaw=10), synth.Pose(brightness=0.6, noise=4),
                 synth.Pose(dx=30, dy=-20, scale=0.9), synth.Pose(blur=1.5)):
        capture = ids.face_template(synth.render(pose))
        assert ids.score(ref, capture) >= ids.DEFAULT_THRESHOLD > ids.score(cam, capture)
    assert ids.score(ref, None) == 0


def test_the_double_writes_no_file(tmp_path, key_file):
    """A run with captures leaves its working directory and TMPDIR empty."""
    path, public = key_file
    work, tmp = tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "hil.cli", "identity-service", "--key",
                             str(path), "--port", "0", "--enroll", f"{CITIZEN}=synthetic:"
                             "astronaut", "--service", SERVICE], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("ready "), proc.stderr.read().decode()
        url = line.split()[1]
        for _ in range(2):
            a = asyncio.run(attest(url, public, astronaut_sealed(public, os.urandom(16))))
            assert a.result == "match"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert list(work.iterdir()) == [] and list(tmp.iterdir()) == []
    assert b"attestation match" in err and b"Traceback" not in err
