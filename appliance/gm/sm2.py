"""SM2 (GB/T 32918): signatures with SM3 and the distinguishing ID, and public-key encryption.

Signatures are 64 bytes ``r || s``; public keys are 65-byte uncompressed points; private keys
are 32 bytes. Ciphertexts are the GM/T 0009 DER ``SM2Cipher`` form that OpenSSL produces.
``verify`` returns False for anything that is not a valid signature (bad key, bad length, r or
s out of range) and never raises on such input: it is fed network data.
"""

from __future__ import annotations

from . import libcrypto, sm3
from .backend import state
from .ecc import Scheme, signature_from_der, signature_to_der
from .errors import DecryptionError, InvalidKeyError
from .pure import der, ec
from .pure import sm2 as _pure

__all__ = [
    "DEFAULT_ID", "N", "generate_keypair", "public_key_of", "za", "sign", "sign_digest",
    "verify", "verify_digest", "encrypt", "decrypt", "signature_to_der", "signature_from_der",
]

DEFAULT_ID = b"1234567812345678"
CURVE = ec.SM2
N = CURVE.n
MAX_PLAINTEXT = 1 << 20  # SM2 encryption carries key envelopes, not bulk data

_scheme = Scheme("sm2", CURVE, libcrypto.SM2_CURVE, _pure)
_CURVE_PARAMS = b"".join(v.to_bytes(32, "big") for v in (CURVE.a, CURVE.b, CURVE.gx, CURVE.gy))

generate_keypair = _scheme.generate_keypair
public_key_of = _scheme.public_key_of
sign_digest = _scheme.sign_digest
verify_digest = _scheme.verify_digest


def za(public_key: bytes, id: bytes = DEFAULT_ID) -> bytes:
    """Z_A = SM3(ENTL || ID || a || b || xG || yG || xA || yA), GB/T 32918.2 §5.5."""
    _scheme.check_public_key(public_key)
    if len(id) >= 8192:
        raise ValueError("SM2 distinguishing ID longer than 8191 bytes")
    entl = (len(id) * 8).to_bytes(2, "big")
    return sm3.digest(entl + bytes(id) + _CURVE_PARAMS + bytes(public_key[1:]))


def message_digest(public_key: bytes, message: bytes, id: bytes = DEFAULT_ID) -> bytes:
    """e = SM3(Z_A || M), the value an SM2 signature actually signs."""
    return sm3.digest(za(public_key, id) + bytes(message))


def sign(private_key: bytes, message: bytes, id: bytes = DEFAULT_ID) -> bytes:
    """64-byte r||s over ``message`` with the distinguishing ``id``."""
    return sign_digest(private_key, message_digest(public_key_of(private_key), message, id))


def verify(public_key: bytes, message: bytes, signature: bytes, id: bytes = DEFAULT_ID) -> bool:
    """True when ``signature`` is a valid SM2 signature of ``message`` by ``public_key``."""
    try:
        e = message_digest(public_key, message, id)
    except (InvalidKeyError, ValueError, TypeError):
        return False
    return verify_digest(public_key, e, signature)


def encrypt(public_key: bytes, data: bytes) -> bytes:
    """SM2 public-key encryption (C1, C3, C2 in GM/T 0009 DER), SM3 in the KDF and C3."""
    _scheme.check_public_key(public_key)
    if len(data) < 1 or len(data) > MAX_PLAINTEXT:
        raise ValueError("SM2 plaintext must be 1 byte to 1 MiB")
    if not state.fast:
        return _pure.encrypt(bytes(public_key), bytes(data))
    return _scheme._public_key(bytes(public_key)).encrypt(bytes(data))


def decrypt(private_key: bytes, ciphertext: bytes) -> bytes:
    """Inverse of :func:`encrypt`; :class:`DecryptionError` when malformed or C3 mismatches."""
    _scheme.private_scalar(private_key)
    try:  # parse it ourselves first: the same strict DER rules on both backends
        x1, y1, c3, c2 = der.decode_sm2_ciphertext(bytes(ciphertext))
    except ValueError as exc:
        raise DecryptionError(f"malformed SM2 ciphertext: {exc}") from None
    if len(c3) != 32 or not c2 or len(c2) > MAX_PLAINTEXT or x1 >= CURVE.p or y1 >= CURVE.p:
        raise DecryptionError("malformed SM2 ciphertext")
    if not state.fast:
        try:
            return _pure.decrypt(bytes(private_key), bytes(ciphertext))
        except ValueError as exc:
            raise DecryptionError(str(exc)) from None
    return _scheme._private_key(bytes(private_key)).decrypt(bytes(ciphertext))
