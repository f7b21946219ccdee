"""The identity-service double (hil.identity_service, appliance-hil identity-service), over
real HTTP on loopback, at ledger-protocol §6 revision 2.

Captures are synthetic frames of the astronaut (hil.synthetic_face) sealed in memory with
the terminal's own envelope code (appliance.kiosk.capture.envelope), so that these tests
follow it; the other face is skimage's cameraman. Requests are sent and attestations checked
by code written here from §6 (the terminal's client is not used: it speaks to the service
in its own tests). The double runs as the CLI subprocess for the API tests, and in this event
loop for the few that look inside.
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
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from skimage import data as skdata

from appliance import wire
from appliance.gm import sm2, sm3
from appliance.kiosk.capture import envelope as env
from hil import cli as hil_cli
from hil import identity_service as ids
from hil import synthetic_face as synth

pytestmark = pytest.mark.timeout(120)

SERVICE = "hil-identity-test"
CITIZEN = "11010519491231002X"  # the citizen's identifier (synthetic)
OTHER = "110105194912310037"  # enrolled with the cameraman's photo
ENTERPRISE = "91110108MA01ABCD1X"
SUBJECT = sm3.digest(b"GOVID1:" + CITIZEN.encode())
ENTERPRISE_ID = sm3.digest(b"GOVID1:" + ENTERPRISE.encode())
ENROLLMENT = sm3.digest(b"the service key's device.enroll")
TERMINAL = sm3.digest(b"the kiosk's public key")
TARGET = sm3.digest(b"enc(signed_matter)")
CBOR = "application/cbor"
REPO = Path(__file__).resolve().parents[2]
BODY_KEYS = {"session", "capture_digest", "subject", "terminal", "action", "target", "result",
             "score", "issued_at", "service", "enrollment"}


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
                                           f"{OTHER}=synthetic:camera"],
                                    service=SERVICE, enrollment=ENROLLMENT,
                                    represent=[f"{CITIZEN.lower()}={ENTERPRISE}"]) as proc:
        yield proc


@pytest.fixture
def honest(double):
    """The double, in honest mode when the test starts and ends."""
    asyncio.run(_set_mode(double.url, "honest"))
    yield double
    asyncio.run(_set_mode(double.url, "honest"))


async def _post(url: str, path: str, body: bytes, content_type: str = CBOR,
                timeout_s: float = 30.0) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s, \
            s.post(url + path, data=body, headers={"Content-Type": content_type}) as r:
        assert r.content_type == CBOR
        return r.status, wire.decode(await r.read())


async def _set_mode(url: str, mode: str) -> dict:
    status, got = await _post(url, "/hil/mode", wire.encode({"mode": mode}))
    assert status == 200
    return got


def astronaut_sealed(public_key: bytes, session: bytes, pose=None) -> env.Sealed:
    return env.seal_frame(synth.render(pose or synth.Pose(dx=8, dy=-5, brightness=0.9)),
                          public_key, session)


def cameraman_sealed(public_key: bytes, session: bytes) -> env.Sealed:
    frame = cv2.cvtColor(skdata.camera(), cv2.COLOR_GRAY2BGR)
    return env.seal_frame(frame, public_key, session)


def request(sealed: env.Sealed, **over: Any) -> dict:
    body = {"envelope": sealed.envelope, "subject": SUBJECT,
            "capture_digest": sealed.capture_digest, "terminal": TERMINAL,
            "action": "authorize", "target": TARGET}
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


def attest(url: str, body: dict | bytes, **kw: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else wire.encode(body)
    return asyncio.run(_post(url, "/v1/attest", data, **kw))


def check_attestation(signed: dict, public_key: bytes, sent: dict) -> dict:
    """§6: {body, alg, public_key, signature}; SM2 over enc(body) by the service key; every
    field the kiosk sent echoed; the service's enrollment named."""
    assert set(signed) == {"body", "alg", "public_key", "signature"}
    assert signed["alg"] == "sm2" and signed["public_key"] == public_key
    body = signed["body"]
    assert sm2.verify(public_key, wire.encode(body), signed["signature"])
    assert set(body) == BODY_KEYS | ({"represents"} if "represents" in sent else set())
    assert body["session"] == sent["envelope"]["session"]
    for name in ("capture_digest", "subject", "terminal", "action", "target"):
        assert body[name] == sent[name], name
    assert body.get("represents") == sent.get("represents")
    assert body["service"] == SERVICE and body["enrollment"] == ENROLLMENT
    assert body["result"] in ("match", "no_match") and 0 <= body["score"] <= 1000
    assert abs(body["issued_at"] - now_ms()) < 60_000
    return body


# -- answers --------------------------------------------------------------------------------


def test_matching_capture_gets_a_valid_match_attestation(honest, key_file):
    _, public = key_file
    session = os.urandom(16)
    sent = request(astronaut_sealed(public, session))
    status, got = attest(honest.url, sent)
    assert status == 200, got
    body = check_attestation(got, public, sent)
    assert body["session"] == session
    assert body["result"] == "match" and body["score"] >= ids.DEFAULT_THRESHOLD


def test_revoke_action_and_target_are_echoed(honest, key_file):
    _, public = key_file
    authorization = sm3.digest(b"a license.authorize tx_id")
    sent = request(astronaut_sealed(public, os.urandom(16)), action="revoke",
                   target=authorization)
    status, got = attest(honest.url, sent)
    assert status == 200
    body = check_attestation(got, public, sent)
    assert (body["action"], body["target"]) == ("revoke", authorization)


def test_another_face_gets_no_match(honest, key_file):
    _, public = key_file
    sent = request(cameraman_sealed(public, os.urandom(16)))
    status, got = attest(honest.url, sent)
    body = check_attestation(got, public, sent)
    assert body["result"] == "no_match" and body["score"] < ids.DEFAULT_THRESHOLD


def test_the_reference_decides(honest, key_file):
    """The cameraman's capture matches the citizen enrolled with the cameraman's photo."""
    _, public = key_file
    other = ids.subject_of(OTHER)
    _, got = attest(honest.url, request(cameraman_sealed(public, os.urandom(16)),
                                        subject=other))
    assert got["body"]["result"] == "match"
    _, got = attest(honest.url, request(astronaut_sealed(public, os.urandom(16)),
                                        subject=other))
    assert got["body"]["result"] == "no_match"


def test_a_registered_representative_gets_represents(honest, key_file):
    _, public = key_file
    sent = request(astronaut_sealed(public, os.urandom(16)), represents=ENTERPRISE_ID)
    status, got = attest(honest.url, sent)
    assert status == 200
    assert check_attestation(got, public, sent)["represents"] == ENTERPRISE_ID


def test_represents_refused_unless_the_registry_says_so(honest, key_file):
    _, public = key_file
    for subject, enterprise in ((SUBJECT, sm3.digest(b"GOVID1:ANOTHER ENTERPRISE")),
                                (ids.subject_of(OTHER), ENTERPRISE_ID)):
        status, got = attest(honest.url, request(astronaut_sealed(public, os.urandom(16)),
                                                 subject=subject, represents=enterprise))
        assert (status, got["error"]) == (403, "not_representative")


def test_subject_is_the_identifier_hash():
    assert ids.subject_of(CITIZEN) == ids.subject_of(CITIZEN.lower()) == SUBJECT
    with pytest.raises(ValueError):
        ids.subject_of("张三")


def test_tampered_mac_is_bad_envelope(honest, key_file):
    _, public = key_file
    sealed = astronaut_sealed(public, os.urandom(16))
    mac = bytearray(sealed.envelope["mac"])
    mac[0] ^= 1
    sealed.envelope["mac"] = bytes(mac)
    status, got = attest(honest.url, request(sealed))
    assert (status, got["error"]) == (400, "bad_envelope")


def _envelope_binds_session() -> bool:
    """Whether appliance.kiosk.capture.envelope is at revision 2 (MAC over session || iv ||
    ciphertext)."""
    private, public = sm2.generate_keypair()
    sealed = env.seal(b"capture", public, bytes(16))
    try:
        env.open_envelope(private, {**sealed.envelope, "session": b"\x01" * 16})
    except env.EnvelopeMacError:
        return True
    return False


def test_an_envelope_moved_to_another_session_is_bad_envelope(honest, key_file):
    """Revision 2: the MAC covers the session, so the envelope of one session cannot be
    replayed under another (and the attestation's session is the sealed one)."""
    if not _envelope_binds_session():
        pytest.skip("appliance.kiosk.capture.envelope is at revision 1 (MAC without session)")
    _, public = key_file
    sealed = astronaut_sealed(public, os.urandom(16))
    moved = dict(sealed.envelope, session=os.urandom(16))
    status, got = attest(honest.url, request(sealed, envelope=moved))
    assert (status, got["error"]) == (400, "bad_envelope")


def test_envelope_for_another_service_key_is_bad_envelope(honest, key_file):
    _, public = key_file
    _, other = sm2.generate_keypair()
    status, got = attest(honest.url, request(astronaut_sealed(other, os.urandom(16))))
    assert (status, got["error"]) == (400, "bad_envelope")


def test_digest_mismatch(honest, key_file):
    _, public = key_file
    sealed = astronaut_sealed(public, os.urandom(16))
    other = astronaut_sealed(public, os.urandom(16), synth.Pose(dx=-10))
    status, got = attest(honest.url, request(sealed, capture_digest=other.capture_digest))
    assert (status, got["error"]) == (400, "digest_mismatch")


def test_unknown_subject(honest, key_file):
    _, public = key_file
    status, got = attest(honest.url, request(astronaut_sealed(public, os.urandom(16)),
                                             subject=sm3.digest(b"GOVID1:NOBODY")))
    assert (status, got["error"]) == (404, "unknown_subject")


# -- the service key's enrollment -------------------------------------------------------------


def test_not_enrolled_until_the_enrollment_is_set(key_file, tmp_path):
    path, public = key_file
    with ids.IdentityServiceProcess(path, [f"{CITIZEN}=synthetic:astronaut"],
                                    service=SERVICE) as proc:
        sent = request(astronaut_sealed(public, os.urandom(16)))
        status, got = attest(proc.url, sent)
        assert (status, got["error"]) == (503, "not_enrolled")
        info = asyncio.run(_get(proc.url + "/v1/info"))
        assert info["enrollment"] is None
        for bad in (wire.encode({"enrollment": bytes(31)}), wire.encode([1]), b"\xff"):
            status, got = asyncio.run(_post(proc.url, "/hil/enrollment", bad))
            assert (status, got["error"]) == (400, "bad_request")
        status, got = asyncio.run(_post(proc.url, "/hil/enrollment",
                                        wire.encode({"enrollment": ENROLLMENT})))
        assert (status, got) == (200, {"enrollment": ENROLLMENT})
        status, got = attest(proc.url, sent)
        assert status == 200
        check_attestation(got, public, sent)
        assert asyncio.run(_get(proc.url + "/v1/info"))["enrollment"] == ENROLLMENT


# -- modes ----------------------------------------------------------------------------------


def test_mode_no_match(honest, key_file):
    _, public = key_file
    assert asyncio.run(_set_mode(honest.url, "no_match")) == {"mode": "no_match"}
    sent = request(astronaut_sealed(public, os.urandom(16)))
    _, got = attest(honest.url, sent)
    body = check_attestation(got, public, sent)
    assert (body["result"], body["score"]) == ("no_match", 0)


def test_mode_timeout_holds_the_answer(honest, key_file):
    _, public = key_file
    asyncio.run(_set_mode(honest.url, "timeout"))
    with pytest.raises(TimeoutError):
        attest(honest.url, request(astronaut_sealed(public, os.urandom(16))), timeout_s=1.0)


def test_mode_wrong_key_signs_with_another_key(honest, key_file):
    _, public = key_file
    asyncio.run(_set_mode(honest.url, "wrong_key"))
    sent = request(astronaut_sealed(public, os.urandom(16)))
    status, got = attest(honest.url, sent)
    assert status == 200 and got["public_key"] != public
    assert sm2.verify(got["public_key"], wire.encode(got["body"]), got["signature"])
    assert not sm2.verify(public, wire.encode(got["body"]), got["signature"])


def test_mode_down_and_back(honest, key_file):
    _, public = key_file
    asyncio.run(_set_mode(honest.url, "down"))
    status, got = attest(honest.url, request(astronaut_sealed(public, os.urandom(16))))
    assert (status, got["error"]) == (503, "unavailable")
    asyncio.run(_set_mode(honest.url, "honest"))
    _, got = attest(honest.url, request(astronaut_sealed(public, os.urandom(16))))
    assert got["body"]["result"] == "match"


def test_connection_refused(key_file):
    _, public = key_file
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(aiohttp.ClientConnectionError):
        attest(f"http://127.0.0.1:{port}", request(astronaut_sealed(public, os.urandom(16))))


def test_bad_mode_refused(double):
    status, body = asyncio.run(_post(double.url, "/hil/mode", wire.encode({"mode": "evil"})))
    assert status == 400 and body["error"] == "bad_request"


# -- requests the double refuses ------------------------------------------------------------


async def _get(url: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return wire.decode(await r.read())


def test_info(double, key_file):
    _, public = key_file
    assert asyncio.run(_get(double.url + "/v1/info")) == {
        "service": SERVICE, "alg": "sm2", "public_key": public, "enrollment": ENROLLMENT}


_GOOD = {"envelope": {}, "subject": SUBJECT, "capture_digest": bytes(32), "terminal": TERMINAL,
         "action": "authorize", "target": TARGET}


@pytest.mark.parametrize("body,ctype", [
    (b"\xff not cbor", CBOR),
    (wire.encode({k: v for k, v in _GOOD.items() if k != "capture_digest"}), CBOR),
    (wire.encode({k: v for k, v in _GOOD.items() if k != "terminal"}), CBOR),
    (wire.encode({**_GOOD, "extra": 1}), CBOR),
    (wire.encode({**_GOOD, "subject": b"x"}), CBOR),
    (wire.encode({**_GOOD, "terminal": bytes(31)}), CBOR),
    (wire.encode({**_GOOD, "target": "text"}), CBOR),
    (wire.encode({**_GOOD, "represents": bytes(33)}), CBOR),
    (wire.encode({**_GOOD, "action": "grant"}), CBOR),
    (wire.encode({**_GOOD, "action": 1}), CBOR),
    (wire.encode({**_GOOD, "envelope": []}), CBOR),
    (wire.encode(_GOOD), "application/json"),
], ids=["not-cbor", "no-capture-digest", "no-terminal", "extra", "subject-size",
        "terminal-size", "target-type", "represents-size", "action-unknown", "action-type",
        "envelope-type", "content-type"])
def test_bad_request(honest, body, ctype):
    status, answer = attest(honest.url, body, content_type=ctype)
    assert status == 400 and answer["error"] == "bad_request"


def test_malformed_envelope_is_bad_envelope(honest):
    body = wire.encode({**_GOOD, "envelope": {"session": bytes(16)}})
    status, answer = attest(honest.url, body)
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


def test_bad_key_file_and_options_fail_cleanly(tmp_path):
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
    for extra in (["--enroll", "noequals"], ["--enroll", "x=synthetic:nothing"],
                  ["--enroll", f"x={tmp_path / 'missing.png'}"],
                  ["--enroll", "张三=synthetic:astronaut"],
                  ["--enrollment", "abcd"], ["--enrollment", "zz" * 32],
                  ["--represent", "noequals"], ["--represent", "张三=913"]):
        out = subprocess.run([sys.executable, "-m", "hil.cli", "identity-service", "--key",
                              str(good), "--port", "0", *extra],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
        assert out.returncode == 2 and "cannot start" in out.stderr, (extra, out.stderr)
        assert "Traceback" not in out.stderr


def test_reference_without_a_face_is_refused():
    priv, _ = sm2.generate_keypair()
    with pytest.raises(ValueError, match="no face"):
        ids.IdentityService(priv, {"GREY": np.full((200, 200, 3), 128, np.uint8)})


def test_enrollment_must_be_a_tx_id():
    priv, _ = sm2.generate_keypair()
    with pytest.raises(ValueError):
        ids.IdentityService(priv, {}, enrollment=bytes(31))


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
    env_vars = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "hil.cli", "identity-service", "--key",
                             str(path), "--port", "0", "--enroll", f"{CITIZEN}=synthetic:"
                             "astronaut", "--service", SERVICE, "--enrollment",
                             ENROLLMENT.hex()], cwd=work, env=env_vars,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("ready "), proc.stderr.read().decode()
        url = line.split()[1]
        for _ in range(2):
            _, got = attest(url, request(astronaut_sealed(public, os.urandom(16))))
            assert got["body"]["result"] == "match"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert list(work.iterdir()) == [] and list(tmp.iterdir()) == []
    assert b"attestation match" in err and b"Traceback" not in err
