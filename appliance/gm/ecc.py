"""What SM2 and ECDSA P-256 share: key checks, key caches, backend choice, r||s signatures.

A :class:`Scheme` validates every input in Python first (so both backends reject the same
things with the same typed errors), then runs the operation on OpenSSL when the fast path is
available, else on the portable code in ``appliance.gm.pure``. Parsed OpenSSL keys are cached
by their bytes, so verifying with a validator's key again costs no parsing.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

from . import libcrypto
from .backend import state
from .errors import InvalidKeyError
from .pure import der, ec

SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 65
PRIVATE_KEY_SIZE = 32


class Scheme:
    """One elliptic-curve signature scheme bound to its curve and its two backends."""

    def __init__(self, name: str, curve: ec.Curve, ossl_curve: libcrypto.Curve,
                 pure_impl: ModuleType) -> None:
        self.name = name
        self.curve = curve
        self.ossl_curve = ossl_curve
        self.pure = pure_impl
        self._public_key = functools.lru_cache(maxsize=512)(self._import_public)
        self._private_key = functools.lru_cache(maxsize=16)(self._import_private)

    # -- checks ---------------------------------------------------------------------------

    def private_scalar(self, private_key: bytes) -> int:
        """The private key as an int, checked to be 32 bytes in [1, n-2]."""
        if not isinstance(private_key, bytes | bytearray) or \
                len(private_key) != PRIVATE_KEY_SIZE:
            raise InvalidKeyError(f"{self.name} private key must be 32 bytes")
        d = int.from_bytes(private_key, "big")
        # SM2 needs d <= n-2 (it inverts 1+d); the same bound is harmless for ECDSA.
        if not 1 <= d <= self.curve.n - 2:
            raise InvalidKeyError(f"{self.name} private key out of range")
        return d

    def check_public_key(self, public_key: bytes) -> tuple[int, int]:
        """(x, y) of a 65-byte uncompressed point on the curve; InvalidKeyError otherwise."""
        if not isinstance(public_key, bytes | bytearray) or \
                len(public_key) != PUBLIC_KEY_SIZE:
            raise InvalidKeyError(f"{self.name} public key must be 65 bytes (04 || X || Y)")
        try:
            return ec.decode_point(self.curve, bytes(public_key))
        except ValueError as exc:
            raise InvalidKeyError(f"{self.name} public key: {exc}") from None

    def split_signature(self, signature: bytes) -> tuple[int, int] | None:
        """(r, s) when the signature is 64 bytes with r, s in [1, n-1]; else None."""
        if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_SIZE:
            return None
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if not (1 <= r < self.curve.n and 1 <= s < self.curve.n):
            return None
        return r, s

    # -- keys -----------------------------------------------------------------------------

    def _import_public(self, public_key: bytes) -> libcrypto.EcKey:
        return libcrypto.EcKey(self.ossl_curve, public_key)

    def _import_private(self, private_key: bytes) -> libcrypto.EcKey:
        public_key = libcrypto.public_point(self.ossl_curve, private_key)
        return libcrypto.EcKey(self.ossl_curve, public_key, private_key)

    def generate_keypair(self) -> tuple[bytes, bytes]:
        """A fresh (private 32 bytes, public 65 bytes) pair; the scalar from os.urandom."""
        while True:  # rejection sampling: uniform in [1, n-2], no modulo bias
            d = int.from_bytes(os.urandom(PRIVATE_KEY_SIZE), "big")
            if 1 <= d <= self.curve.n - 2:
                private_key = d.to_bytes(PRIVATE_KEY_SIZE, "big")
                return private_key, self.public_key_of(private_key)

    def public_key_of(self, private_key: bytes) -> bytes:
        self.private_scalar(private_key)
        if state.fast:  # cached with the imported key: signing needs it for Z_A every time
            return self._private_key(bytes(private_key)).public_key
        return self.pure.public_key_of(bytes(private_key))

    # -- signatures -----------------------------------------------------------------------

    def sign_digest(self, private_key: bytes, digest: bytes) -> bytes:
        """64-byte r||s over a 32-byte digest; the nonce comes from a CSPRNG."""
        self.private_scalar(private_key)
        if len(digest) != 32:
            raise ValueError("digest must be 32 bytes")
        if not state.fast:
            return self.pure.sign_digest(bytes(private_key), bytes(digest))
        r, s = der.decode_signature(self._private_key(bytes(private_key)).sign_digest(digest))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def verify_digest(self, public_key: bytes, digest: bytes, signature: bytes) -> bool:
        """True only for a well-formed signature by a valid key; never raises on bad input."""
        rs = self.split_signature(signature)
        if rs is None or not isinstance(digest, bytes | bytearray) or len(digest) != 32:
            return False
        try:
            self.check_public_key(public_key)
        except InvalidKeyError:
            return False
        if not state.fast:
            return self.pure.verify_digest(bytes(public_key), bytes(digest), bytes(signature))
        key = self._public_key(bytes(public_key))
        return key.verify_digest(bytes(digest), der.encode_signature(*rs))


def signature_to_der(signature: bytes) -> bytes:
    """64-byte r||s to the DER ``SEQUENCE { INTEGER r, INTEGER s }`` that OpenSSL uses."""
    if len(signature) != SIGNATURE_SIZE:
        raise ValueError("signature must be 64 bytes")
    return der.encode_signature(int.from_bytes(signature[:32], "big"),
                                int.from_bytes(signature[32:], "big"))


def signature_from_der(der_signature: bytes) -> bytes:
    """DER signature to 64-byte r||s; ValueError when malformed or r, s exceed 32 bytes."""
    r, s = der.decode_signature(der_signature)
    if r >= 1 << 256 or s >= 1 << 256:
        raise ValueError("signature integer longer than 32 bytes")
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")
