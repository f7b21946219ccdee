"""National cryptographic algorithms (SM2, SM3, SM4) and ECDSA P-256.

``sm3`` runs on hashlib; ``sm2``, ``sm4`` and ``ecdsa`` run on OpenSSL 3's libcrypto through
:mod:`appliance.gm.libcrypto` (the fast path) and fall back to the pure-Python code in
:mod:`appliance.gm.pure` (the portable path, also frozen into the crypto module's firmware)
when libcrypto lacks SM2 or ``APPLIANCE_GM_BACKEND=pure`` is set. Both paths are checked
against the national-standard vectors, the OpenSSL command line and gmssl.
"""

from . import backend, ecdsa, errors, sm2, sm3, sm4
from .errors import CryptoError, DecryptionError, InvalidKeyError, PaddingError
from .sm3 import hmac_sm3

__all__ = [
    "backend", "CryptoError", "DecryptionError", "InvalidKeyError", "PaddingError",
    "ecdsa", "errors", "hmac_sm3", "sm2", "sm3", "sm4",
]
