"""Portable (pure-Python) SM2, SM3, SM4, ECDSA P-256 and DER.

The fallback when OpenSSL lacks SM2, and the code frozen into the crypto module's MicroPython
firmware: every module here runs unchanged on CPython 3.11+ and on MicroPython, so it uses
ints and bytes only (no f-strings, annotations, typing or dataclasses). The modules import
each other flatly when ``pure/`` itself is on the path, as on the firmware.

Python big-int arithmetic is not constant-time: this path is for portability and for the
module's firmware (whose secrets stay inside the module), not for side-channel resistance.
"""
