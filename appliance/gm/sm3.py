"""SM3 (GB/T 32905), the hash of the ledger and of captures.

Fast path: ``hashlib`` (OpenSSL). Portable path: ``appliance.gm.pure.sm3``, used only when the
interpreter's OpenSSL has no SM3.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac

DIGEST_SIZE = 32
BLOCK_SIZE = 64

try:
    hashlib.new("sm3")
    FAST = True
except ValueError:  # an OpenSSL built without SM3
    FAST = False


def new(data: bytes = b""):
    """An incremental SM3 hasher with ``update``, ``digest``, ``hexdigest`` and ``copy``."""
    if FAST:
        return hashlib.new("sm3", data)
    from .pure.sm3 import SM3

    h = SM3()
    h.update(data)
    return h


def digest(data: bytes) -> bytes:
    """SM3 of ``data``: 32 bytes."""
    return new(data).digest()


def hmac_sm3(key: bytes, data: bytes) -> bytes:
    """HMAC-SM3 (RFC 2104 with SM3, 64-byte block)."""
    if FAST:
        return _hmac.new(key, data, "sm3").digest()
    from .pure.sm3 import hmac

    return hmac(key, data)
