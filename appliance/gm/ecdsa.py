"""ECDSA over NIST P-256 with SHA-256, the international algorithm the platform also accepts.

Same shape as :mod:`appliance.gm.sm2` without the distinguishing ID: 32-byte private keys,
65-byte uncompressed public keys, 64-byte ``r || s`` signatures over SHA-256(M).
"""

from __future__ import annotations

import hashlib

from . import libcrypto
from .ecc import Scheme, signature_from_der, signature_to_der
from .pure import ec
from .pure import ecdsa as _pure

__all__ = [
    "N", "generate_keypair", "public_key_of", "sign", "sign_digest", "verify",
    "verify_digest", "signature_to_der", "signature_from_der",
]

CURVE = ec.P256
N = CURVE.n

_scheme = Scheme("ecdsa-p256", CURVE, libcrypto.P256_CURVE, _pure)

generate_keypair = _scheme.generate_keypair
public_key_of = _scheme.public_key_of
sign_digest = _scheme.sign_digest
verify_digest = _scheme.verify_digest


def sign(private_key: bytes, message: bytes) -> bytes:
    """64-byte r||s over SHA-256(message)."""
    return sign_digest(private_key, hashlib.sha256(message).digest())


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is valid for ``message``; False for any bad input."""
    try:
        digest = hashlib.sha256(message).digest()
    except TypeError:
        return False
    return verify_digest(public_key, digest, signature)
