"""SM4 (GB/T 32907) in ECB, CBC and CTR modes, with PKCS#7 padding for ECB and CBC.

Fast path: OpenSSL's EVP ciphers through :mod:`appliance.gm.libcrypto` (padding turned off
there and done here, so that a bad pad is our typed :class:`PaddingError`, not an OpenSSL
failure). Portable path: ``appliance.gm.pure.sm4``.

``*_raw`` functions take block-aligned data and do no padding (the crypto module's ``sm4``
command works that way).
"""

from __future__ import annotations

import hmac

from . import libcrypto
from .backend import state
from .errors import CryptoError, InvalidKeyError, PaddingError
from .pure import sm4 as _pure

KEY_SIZE = 16
BLOCK_SIZE = 16

if libcrypto.AVAILABLE:
    _ECB = libcrypto.Cipher(b"SM4-ECB")
    _CBC = libcrypto.Cipher(b"SM4-CBC")
    _CTR = libcrypto.Cipher(b"SM4-CTR")


def _check(key: bytes, iv: bytes | None = None) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise InvalidKeyError("SM4 key must be 16 bytes")
    if iv is not None and (not isinstance(iv, bytes | bytearray) or len(iv) != BLOCK_SIZE):
        raise CryptoError("SM4 IV must be 16 bytes")


def _aligned(data: bytes) -> bytes:
    if len(data) % BLOCK_SIZE:
        raise CryptoError("SM4 data must be a multiple of 16 bytes")
    return bytes(data)


def pad(data: bytes) -> bytes:
    """PKCS#7 padding to the 16-byte block (always 1..16 bytes added)."""
    n = BLOCK_SIZE - len(data) % BLOCK_SIZE
    return bytes(data) + bytes([n]) * n


def unpad(data: bytes) -> bytes:
    """Remove PKCS#7 padding, checking every pad byte; :class:`PaddingError` otherwise."""
    if not data or len(data) % BLOCK_SIZE:
        raise PaddingError("padded data must be a non-empty multiple of 16 bytes")
    n = data[-1]
    if not 1 <= n <= BLOCK_SIZE or not hmac.compare_digest(data[-n:], bytes([n]) * n):
        raise PaddingError("bad PKCS#7 padding")
    return data[:-n]


def encrypt_ecb_raw(key: bytes, data: bytes) -> bytes:
    _check(key)
    data = _aligned(data)
    return _ECB.run(bytes(key), None, data, True) if state.fast else _pure.encrypt_ecb(key, data)


def decrypt_ecb_raw(key: bytes, data: bytes) -> bytes:
    _check(key)
    data = _aligned(data)
    return _ECB.run(bytes(key), None, data, False) if state.fast else _pure.decrypt_ecb(key, data)


def encrypt_cbc_raw(key: bytes, iv: bytes, data: bytes) -> bytes:
    _check(key, iv)
    data = _aligned(data)
    if state.fast:
        return _CBC.run(bytes(key), bytes(iv), data, True)
    return _pure.encrypt_cbc(key, iv, data)


def decrypt_cbc_raw(key: bytes, iv: bytes, data: bytes) -> bytes:
    _check(key, iv)
    data = _aligned(data)
    if state.fast:
        return _CBC.run(bytes(key), bytes(iv), data, False)
    return _pure.decrypt_cbc(key, iv, data)


def encrypt_ecb(key: bytes, data: bytes) -> bytes:
    """SM4-ECB with PKCS#7 padding (for single blocks and tests; prefer CBC or CTR)."""
    return encrypt_ecb_raw(key, pad(data))


def decrypt_ecb(key: bytes, data: bytes) -> bytes:
    return unpad(decrypt_ecb_raw(key, data))


def encrypt_cbc(key: bytes, iv: bytes, data: bytes) -> bytes:
    """SM4-CBC with PKCS#7 padding, as ``openssl enc -sm4-cbc`` produces."""
    return encrypt_cbc_raw(key, iv, pad(data))


def decrypt_cbc(key: bytes, iv: bytes, data: bytes) -> bytes:
    """Inverse of :func:`encrypt_cbc`; raises :class:`PaddingError` on a bad pad."""
    return unpad(decrypt_cbc_raw(key, iv, data))


def ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    """SM4-CTR (128-bit big-endian counter from ``iv``); encryption and decryption alike."""
    _check(key, iv)
    if state.fast:
        return _CTR.run(bytes(key), bytes(iv), bytes(data), True)
    return _pure.ctr(key, iv, data)


encrypt_ctr = decrypt_ctr = ctr
