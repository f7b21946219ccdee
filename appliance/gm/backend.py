"""Which implementation runs the EC and SM4 operations: OpenSSL (fast) or pure Python.

The choice is made once at import: OpenSSL when its libcrypto can do SM2 and SM4, unless
``APPLIANCE_GM_BACKEND=pure`` is set. :func:`use` switches it at run time for tests and
benchmarks that compare the two paths. SM3 always comes from hashlib when OpenSSL has it.
"""

from __future__ import annotations

import os

from . import libcrypto

OPENSSL = "openssl"
PURE = "pure"


class _State:
    __slots__ = ("fast",)

    def __init__(self, fast: bool) -> None:
        self.fast = fast


state = _State(libcrypto.AVAILABLE and os.environ.get("APPLIANCE_GM_BACKEND", "") != PURE)


def name() -> str:
    """``"openssl"`` or ``"pure"``."""
    return OPENSSL if state.fast else PURE


def use(backend: str) -> None:
    """Select the backend; RuntimeError when OpenSSL is asked for but cannot do SM2/SM4."""
    if backend == OPENSSL and not libcrypto.AVAILABLE:
        raise RuntimeError("this libcrypto lacks SM2/SM4; only the pure backend is available")
    if backend not in (OPENSSL, PURE):
        raise ValueError(f"unknown backend {backend!r}")
    state.fast = backend == OPENSSL
