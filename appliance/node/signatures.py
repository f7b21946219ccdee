"""Signature algorithms by name (protocol §2).

Every signed ledger object names its algorithm in ``alg``. ``sm2`` is SM2 with SM3 over
``Z_A || M`` with the default distinguishing ID ``1234567812345678``; ``ecdsa-p256`` is ECDSA
over P-256 with SHA-256. Both take 65-byte uncompressed public keys and 64-byte ``r || s``
signatures. :func:`verify` is fed network data: it returns False for an unknown algorithm and
for any malformed key or signature (the primitives in appliance.gm never raise on those), and
it never raises.
"""

from __future__ import annotations

from appliance.gm import ecdsa, sm2

__all__ = ["ALGORITHMS", "DEFAULT_ALG", "generate_keypair", "public_key_of", "sign", "verify"]

DEFAULT_ALG = "sm2"
ALGORITHMS = ("sm2", "ecdsa-p256")


def verify(alg: object, public_key: object, message: bytes, signature: object) -> bool:
    """True when ``signature`` is a valid ``alg`` signature of ``message`` by ``public_key``."""
    try:
        if alg == "sm2":
            return sm2.verify(public_key, message, signature) is True  # type: ignore[arg-type]
        if alg == "ecdsa-p256":
            return ecdsa.verify(public_key, message, signature) is True  # type: ignore[arg-type]
    except Exception:  # belt and braces: a verifier must not raise on hostile input
        return False
    return False


def sign(alg: str, private_key: bytes, message: bytes) -> bytes:
    """64-byte ``r || s`` over ``message`` (tests, the chain generator, the HIL test double).

    Raises ValueError for an unknown ``alg``; appliance.gm errors for a bad key.
    """
    if alg == "sm2":
        return sm2.sign(private_key, message)
    if alg == "ecdsa-p256":
        return ecdsa.sign(private_key, message)
    raise ValueError(f"unknown signature algorithm {alg!r}")


def generate_keypair(alg: str = DEFAULT_ALG) -> tuple[bytes, bytes]:
    """(32-byte private key, 65-byte public key) for ``alg``."""
    if alg == "sm2":
        return sm2.generate_keypair()
    if alg == "ecdsa-p256":
        return ecdsa.generate_keypair()
    raise ValueError(f"unknown signature algorithm {alg!r}")


def public_key_of(alg: str, private_key: bytes) -> bytes:
    """The 65-byte public key of ``private_key`` for ``alg``."""
    if alg == "sm2":
        return sm2.public_key_of(private_key)
    if alg == "ecdsa-p256":
        return ecdsa.public_key_of(private_key)
    raise ValueError(f"unknown signature algorithm {alg!r}")
