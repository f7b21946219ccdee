"""Typed errors of the national-crypto package.

Everything raised for bad input is a :class:`CryptoError` (a ``ValueError``), so callers that
handle untrusted data catch one class; nothing escapes from inside the ctypes binding.
"""


class CryptoError(ValueError):
    """Bad input to a cryptographic operation."""


class InvalidKeyError(CryptoError):
    """A key that is malformed, off the curve or out of range."""


class DecryptionError(CryptoError):
    """A ciphertext that is malformed or fails its integrity check (SM2 C3, HMAC)."""


class PaddingError(DecryptionError):
    """PKCS#7 padding that does not validate after SM4 decryption."""


class BackendError(RuntimeError):
    """The crypto backend itself failed (not the caller's input): a library fault."""
