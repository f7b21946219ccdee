"""The sealed capture envelope of ledger-protocol §6, and its opening (identity-service side).

Sealing (the terminal)::

    secret     = 48 fresh random bytes = SM4 key (16) || HMAC-SM3 key (32)
    key        = SM2-encrypt(identity service public key, secret)     GM/T 0009 DER
    iv         = 16 fresh random bytes
    ciphertext = SM4-CBC(SM4 key, iv, PKCS#7(jpeg))
    mac        = HMAC-SM3(HMAC key, session || iv || ciphertext)   (revision 2: the session
                 is bound, so an envelope cannot be replayed under another session)
    envelope   = {"session": bytes(16), "key", "iv", "ciphertext", "mac"}
    capture_digest = SM3(jpeg)

The JPEG is encoded in memory (``cv2.imencode``, never a file). The buffers this module owns
(the JPEG, the padded plaintext, the secret) are overwritten once the envelope is built. What
it cannot overwrite: the immutable ``bytes`` copies that the crypto layer makes of key and
plaintext on their way into OpenSSL; CPython frees them without clearing (docs/face-capture.md).

Opening (:func:`open_envelope`, used by the identity-service double) checks in this order and
raises one typed :class:`EnvelopeError` subclass for each failure: the envelope's shape
(:class:`EnvelopeFormatError`), the SM2 key (:class:`EnvelopeKeyError`), the MAC before any
decryption (:class:`EnvelopeMacError`), then the padding (:class:`EnvelopePaddingError`);
given the session it expects, the session field too (:class:`EnvelopeSessionError`).
:func:`check_digest` compares an image with its ``capture_digest``
(:class:`DigestMismatchError`).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from appliance import wire
from appliance.gm import errors as gm_errors
from appliance.gm import hmac_sm3, sm2, sm3, sm4

__all__ = [
    "DigestMismatchError", "EnvelopeError", "EnvelopeFormatError", "EnvelopeKeyError",
    "EnvelopeMacError", "EnvelopePaddingError", "EnvelopeSessionError", "FIELDS",
    "MAX_CIPHERTEXT", "Sealed", "check_digest", "decode_envelope", "encode_envelope",
    "open_envelope", "seal", "seal_frame",
]

FIELDS = ("session", "key", "iv", "ciphertext", "mac")
SESSION_SIZE = 16
SECRET_SIZE = 48  # SM4 key 16 || HMAC-SM3 key 32
IV_SIZE = 16
MAC_SIZE = 32
MAX_KEY = 256  # DER SM2Cipher of 48 bytes is ~150 bytes
MAX_CIPHERTEXT = 4 * 1024 * 1024  # a 1080p JPEG at high quality fits with room to spare
MAX_ENCODED = MAX_CIPHERTEXT + 1024


class EnvelopeError(ValueError):
    """An envelope that cannot be opened; every failure is one of the subclasses."""


class EnvelopeFormatError(EnvelopeError):
    """Not canonical CBOR, wrong fields, wrong types or sizes."""


class EnvelopeKeyError(EnvelopeError):
    """The SM2-enveloped secret does not open with this private key (or is not 48 bytes)."""


class EnvelopeMacError(EnvelopeError):
    """HMAC-SM3 over session || iv || ciphertext does not match: tampered, relabelled with
    another session, or not ours."""


class EnvelopePaddingError(EnvelopeError):
    """The MAC held but the PKCS#7 padding is wrong: a faulty sealer."""


class EnvelopeSessionError(EnvelopeError):
    """The envelope names another session than the one the opener expects (checked before
    the key is opened; a relabelled session also breaks the MAC)."""


class DigestMismatchError(EnvelopeError):
    """The image's SM3 differs from the capture_digest it came with."""


@dataclass(frozen=True)
class Sealed:
    envelope: dict[str, bytes]
    capture_digest: bytes

    def encode(self) -> bytes:
        return encode_envelope(self.envelope)


def _check_session(session_id: bytes) -> bytes:
    if not isinstance(session_id, bytes | bytearray) or len(session_id) != SESSION_SIZE:
        raise ValueError("session id must be 16 bytes")
    return bytes(session_id)


def seal(image: bytes | bytearray | memoryview | np.ndarray, service_public_key: bytes,
         session_id: bytes) -> Sealed:
    """Envelope ``image`` (JPEG bytes) to the identity service's SM2 public key."""
    session = _check_session(session_id)
    view = memoryview(image).cast("B")
    n = view.nbytes
    if n == 0 or n > MAX_CIPHERTEXT - IV_SIZE:
        raise ValueError("image must be 1 byte to ~4 MiB")
    secret = bytearray(os.urandom(SECRET_SIZE))
    enc_key, mac_key = secret[:16], secret[16:]  # bytearray copies, wiped below
    pad = sm4.BLOCK_SIZE - n % sm4.BLOCK_SIZE
    padded = bytearray(n + pad)
    try:
        digest = sm3.digest(view)
        key = sm2.encrypt(service_public_key, secret)
        iv = os.urandom(IV_SIZE)
        padded[:n] = view
        padded[n:] = bytes([pad]) * pad
        ciphertext = sm4.encrypt_cbc_raw(enc_key, iv, padded)
        mac = hmac_sm3(mac_key, session + iv + ciphertext)
    finally:
        for buf in (secret, enc_key, mac_key, padded):
            buf[:] = bytes(len(buf))
    env = {"session": session, "key": key, "iv": iv, "ciphertext": ciphertext, "mac": mac}
    return Sealed(env, digest)


def seal_frame(frame: np.ndarray, service_public_key: bytes, session_id: bytes, *,
               quality: int = 92) -> Sealed:
    """JPEG-encode ``frame`` in memory, seal it, overwrite the JPEG."""
    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    try:
        return seal(jpeg, service_public_key, session_id)
    finally:
        jpeg.fill(0)


def encode_envelope(envelope: Mapping[str, bytes]) -> bytes:
    """Canonical CBOR of the envelope (appliance.wire)."""
    return wire.encode({k: bytes(envelope[k]) for k in FIELDS})


def _validate(obj: Any) -> dict[str, bytes]:
    if type(obj) is not dict:
        raise EnvelopeFormatError("envelope must be a map")
    if set(obj) != set(FIELDS):
        raise EnvelopeFormatError("envelope fields must be exactly " + ", ".join(FIELDS))
    for k in FIELDS:
        if type(obj[k]) is not bytes:
            raise EnvelopeFormatError(f"{k} must be bytes")
    if len(obj["session"]) != SESSION_SIZE:
        raise EnvelopeFormatError("session must be 16 bytes")
    if len(obj["iv"]) != IV_SIZE:
        raise EnvelopeFormatError("iv must be 16 bytes")
    if len(obj["mac"]) != MAC_SIZE:
        raise EnvelopeFormatError("mac must be 32 bytes")
    if not 0 < len(obj["key"]) <= MAX_KEY:
        raise EnvelopeFormatError(f"key must be 1..{MAX_KEY} bytes")
    ct = obj["ciphertext"]
    if not ct or len(ct) % sm4.BLOCK_SIZE or len(ct) > MAX_CIPHERTEXT:
        raise EnvelopeFormatError("ciphertext must be a non-empty multiple of 16 bytes, <= 4 MiB")
    return obj


def decode_envelope(data: bytes | bytearray | memoryview) -> dict[str, bytes]:
    """Parse and check an encoded envelope; :class:`EnvelopeFormatError` for anything else."""
    try:
        obj = wire.decode(data, max_size=MAX_ENCODED)
    except wire.WireError as exc:
        raise EnvelopeFormatError(f"not canonical CBOR: {exc.reason}") from None
    return _validate(obj)


def open_envelope(private_key: bytes, envelope: Mapping[str, Any] | bytes, *,
                  session: bytes | None = None) -> bytes:
    """The image inside ``envelope`` (a map or its CBOR), for the identity service.

    With ``session``, the envelope must name that session (:class:`EnvelopeSessionError`).
    """
    if isinstance(envelope, bytes | bytearray | memoryview):
        env = decode_envelope(envelope)
    else:
        env = _validate(dict(envelope) if isinstance(envelope, Mapping) else envelope)
    if session is not None and not hmac.compare_digest(env["session"], bytes(session)):
        raise EnvelopeSessionError("the envelope is for another session")
    try:
        secret = bytearray(sm2.decrypt(private_key, env["key"]))
    except gm_errors.CryptoError as exc:
        raise EnvelopeKeyError(f"the key does not open: {exc}") from None
    try:
        if len(secret) != SECRET_SIZE:
            raise EnvelopeKeyError("the enveloped secret is not 48 bytes")
        mac = hmac_sm3(bytes(secret[16:]), env["session"] + env["iv"] + env["ciphertext"])
        if not hmac.compare_digest(mac, env["mac"]):
            raise EnvelopeMacError("HMAC-SM3 over session || iv || ciphertext does not match")
        try:
            return sm4.decrypt_cbc(bytes(secret[:16]), env["iv"], env["ciphertext"])
        except gm_errors.PaddingError:
            raise EnvelopePaddingError("bad PKCS#7 padding under a valid MAC") from None
    finally:
        secret[:] = bytes(len(secret))


def check_digest(image: bytes | bytearray | memoryview, capture_digest: bytes) -> None:
    """Raise :class:`DigestMismatchError` unless SM3(image) == capture_digest."""
    if not hmac.compare_digest(sm3.digest(image), bytes(capture_digest)):
        raise DigestMismatchError("SM3 of the image differs from capture_digest")
