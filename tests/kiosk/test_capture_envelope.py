"""The sealed capture envelope (ledger-protocol §6): it opens with the identity service's
private key, its MAC and capture_digest check, and any tampering fails with a typed error."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import synth
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import wire
from appliance.gm import hmac_sm3, sm2, sm3, sm4
from appliance.kiosk.capture import envelope as env_mod
from appliance.kiosk.capture.envelope import (
    DigestMismatchError,
    EnvelopeError,
    EnvelopeFormatError,
    EnvelopeKeyError,
    EnvelopeMacError,
    EnvelopePaddingError,
    EnvelopeSessionError,
    check_digest,
    decode_envelope,
    open_envelope,
    seal,
    seal_frame,
)

SERVICE_SK, SERVICE_PK = sm2.generate_keypair()
SESSION = bytes(range(16))


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return synth.render(synth.Pose(noise=1.5))


@pytest.fixture(scope="module")
def small_sealed():
    """A small capture (a face thumbnail), so that every byte can be tampered with."""
    thumb = cv2.resize(synth.render(), (64, 48), interpolation=cv2.INTER_AREA)
    return seal_frame(thumb, SERVICE_PK, SESSION, quality=60)


def test_frame_round_trip_with_digest(frame):
    sealed = seal_frame(frame, SERVICE_PK, SESSION)
    assert set(sealed.envelope) == {"session", "key", "iv", "ciphertext", "mac"}
    assert sealed.envelope["session"] == SESSION
    assert len(sealed.envelope["iv"]) == 16 and len(sealed.envelope["mac"]) == 32
    image = open_envelope(SERVICE_SK, sealed.encode(), session=SESSION)
    assert image[:3] == b"\xff\xd8\xff"  # a JPEG
    assert sm3.digest(image) == sealed.capture_digest
    check_digest(image, sealed.capture_digest)
    decoded = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == frame.shape
    # lossy, but the same picture
    assert float(np.abs(decoded.astype(np.int16) - frame).mean()) < 4.0


def test_envelope_is_exactly_protocol_6(frame):
    """Rebuild the §6 computation by hand from the parts the service would see."""
    sealed = seal_frame(frame, SERVICE_PK, SESSION)
    e = sealed.envelope
    secret = sm2.decrypt(SERVICE_SK, e["key"])
    assert len(secret) == 48
    assert hmac_sm3(secret[16:], e["session"] + e["iv"] + e["ciphertext"]) == e["mac"]
    jpeg = sm4.decrypt_cbc(secret[:16], e["iv"], e["ciphertext"])
    assert sm3.digest(jpeg) == sealed.capture_digest
    assert wire.decode(sealed.encode()) == e


def test_fresh_secret_and_iv_each_time():
    a = seal(b"same image", SERVICE_PK, SESSION)
    b = seal(b"same image", SERVICE_PK, SESSION)
    assert a.envelope["iv"] != b.envelope["iv"]
    assert a.envelope["key"] != b.envelope["key"]
    assert a.envelope["ciphertext"] != b.envelope["ciphertext"]
    assert sm2.decrypt(SERVICE_SK, a.envelope["key"]) != sm2.decrypt(SERVICE_SK,
                                                                     b.envelope["key"])
    assert a.capture_digest == b.capture_digest == sm3.digest(b"same image")


def test_tampering_with_any_byte_fails(small_sealed):
    data = small_sealed.encode()
    assert open_envelope(SERVICE_SK, data, session=SESSION)  # untouched: opens
    kinds: dict[str, int] = {}
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01 if i % 2 else 0x80
        with pytest.raises(EnvelopeError) as info:
            open_envelope(SERVICE_SK, bytes(bad), session=SESSION)
        kinds[type(info.value).__name__] = kinds.get(type(info.value).__name__, 0) + 1
    # every layer was reached: CBOR shape, session, SM2 key, MAC
    assert {"EnvelopeFormatError", "EnvelopeSessionError", "EnvelopeKeyError",
            "EnvelopeMacError"} <= set(kinds), kinds


@pytest.mark.parametrize("field", ["key", "iv", "ciphertext", "mac"])
def test_tampered_field_of_full_frame(frame, field):
    sealed = seal_frame(frame, SERVICE_PK, SESSION)
    n = len(sealed.envelope[field])
    for i in sorted({0, 1, n // 3, n // 2, n - 17, n - 1} & set(range(n))):
        e = dict(sealed.envelope)
        b = bytearray(e[field])
        b[i] ^= 0x40
        e[field] = bytes(b)
        expected = EnvelopeKeyError if field == "key" else EnvelopeMacError
        with pytest.raises(expected):
            open_envelope(SERVICE_SK, e)


def test_session_swap_breaks_the_mac(small_sealed):
    """Revision 2: the MAC covers the session, so a relabelled envelope fails even when the
    opener does not say which session it expects; told, it refuses before opening the key."""
    assert open_envelope(SERVICE_SK, small_sealed.envelope)
    e = dict(small_sealed.envelope)
    e["session"] = bytes(16)
    with pytest.raises(EnvelopeMacError):
        open_envelope(SERVICE_SK, e)
    with pytest.raises(EnvelopeSessionError):
        open_envelope(SERVICE_SK, e, session=SESSION)



def test_wrong_private_key(small_sealed):
    other_sk, _ = sm2.generate_keypair()
    with pytest.raises(EnvelopeKeyError):
        open_envelope(other_sk, small_sealed.envelope)


def test_enveloped_secret_of_wrong_length(small_sealed):
    e = dict(small_sealed.envelope)
    e["key"] = sm2.encrypt(SERVICE_PK, bytes(32))
    with pytest.raises(EnvelopeKeyError):
        open_envelope(SERVICE_SK, e)


def test_bad_padding_under_a_valid_mac():
    """A faulty sealer: correct MAC over a plaintext whose PKCS#7 pad is wrong."""
    secret = os.urandom(48)
    iv = os.urandom(16)
    ciphertext = sm4.encrypt_cbc_raw(secret[:16], iv, b"jpeg" + bytes(11) + b"\x05")
    e = {"session": SESSION, "key": sm2.encrypt(SERVICE_PK, secret), "iv": iv,
         "ciphertext": ciphertext, "mac": hmac_sm3(secret[16:], SESSION + iv + ciphertext)}
    with pytest.raises(EnvelopePaddingError):
        open_envelope(SERVICE_SK, e)


def test_digest_mismatch(small_sealed):
    image = open_envelope(SERVICE_SK, small_sealed.envelope)
    with pytest.raises(DigestMismatchError):
        check_digest(image + b"\x00", small_sealed.capture_digest)
    with pytest.raises(DigestMismatchError):
        check_digest(image, bytes(32))


@pytest.mark.parametrize("mutate", [
    lambda e: e.pop("mac"),
    lambda e: e.update(extra=b""),
    lambda e: e.update(iv=b"short"),
    lambda e: e.update(mac=bytes(31)),
    lambda e: e.update(session=bytes(15)),
    lambda e: e.update(ciphertext=bytes(15)),
    lambda e: e.update(ciphertext=b""),
    lambda e: e.update(key=b""),
    lambda e: e.update(key=bytes(300)),
    lambda e: e.update(iv="text, not bytes"),
])
def test_shape_errors(small_sealed, mutate):
    e = dict(small_sealed.envelope)
    mutate(e)
    with pytest.raises(EnvelopeFormatError):
        open_envelope(SERVICE_SK, e)
    try:
        data = wire.encode(e)
    except wire.WireError:
        return
    with pytest.raises(EnvelopeFormatError):
        decode_envelope(data)


def test_decoder_limits():
    with pytest.raises(EnvelopeFormatError):
        decode_envelope(bytes(env_mod.MAX_ENCODED + 1))
    with pytest.raises(EnvelopeFormatError):
        decode_envelope(wire.encode([1, 2]))
    with pytest.raises(EnvelopeFormatError):
        decode_envelope(b"\xa5")  # truncated map


def test_seal_input_checks():
    with pytest.raises(ValueError):
        seal(b"x", SERVICE_PK, bytes(15))
    with pytest.raises(ValueError):
        seal(b"", SERVICE_PK, SESSION)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_decoder_raises_only_its_typed_error(data):
    try:
        decode_envelope(data)
    except EnvelopeFormatError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(st.data())
def test_mutated_envelopes_raise_only_typed_errors(small_sealed, data):
    raw = bytearray(small_sealed.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        i = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[i] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del raw[i:i + data.draw(st.integers(1, 8))]
        else:
            del raw[i:]
        if not raw:
            raw = bytearray(b"\x00")
    try:
        open_envelope(SERVICE_SK, bytes(raw), session=SESSION)
    except EnvelopeError:
        pass
