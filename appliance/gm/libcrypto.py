"""Thin ctypes binding to OpenSSL 3 libcrypto: the fast path for SM2, SM4 and ECDSA P-256.

We bind the very libcrypto that CPython's own ``_hashlib`` loaded (found through
/proc/self/maps), so the process carries one copy of OpenSSL and SM3 from ``hashlib`` and SM2
from here come from the same build. Only the EVP interface is used for the operations; keys are
imported once with ``EVP_PKEY_fromdata`` and kept, with their initialised contexts, in
:class:`EcKey` objects so that a call costs one OpenSSL operation and no parsing.

Inputs are validated by the callers (``sm2.py``, ``ecdsa.py``, ``sm4.py``) before they reach
this module; every OpenSSL failure here becomes a typed error, and the OpenSSL error queue is
cleared so that failures do not accumulate in it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from ctypes import POINTER, byref, c_char_p, c_int, c_size_t, c_uint, c_ulong, c_void_p

from .errors import BackendError, DecryptionError, InvalidKeyError

# ---------------------------------------------------------------------------------- loading


def _find_library() -> str | None:
    """Path of the libcrypto CPython already uses, else the system's."""
    try:
        import _hashlib  # noqa: F401  (loads libcrypto into the process)

        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1]
                if "/libcrypto.so" in path:
                    return path
    except (ImportError, OSError):
        pass
    return ctypes.util.find_library("crypto")


def _load() -> ctypes.CDLL | None:
    path = _find_library()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
        lib.OpenSSL_version_num.restype = c_ulong
        if lib.OpenSSL_version_num() < 0x30000000:
            return None
        return lib
    except (OSError, AttributeError):
        return None


_lib = _load()


def _proto(name: str, restype, *argtypes) -> None:
    fn = getattr(_lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


if _lib is not None:
    _P = c_void_p
    _proto("ERR_clear_error", None)
    _proto("ERR_get_error", c_ulong)
    _proto("OpenSSL_version", c_char_p, c_int)
    # keys
    _proto("EVP_PKEY_CTX_new_from_name", _P, _P, c_char_p, c_char_p)
    _proto("EVP_PKEY_CTX_new_from_pkey", _P, _P, _P, c_char_p)
    _proto("EVP_PKEY_CTX_free", None, _P)
    _proto("EVP_PKEY_fromdata_init", c_int, _P)
    _proto("EVP_PKEY_fromdata", c_int, _P, POINTER(_P), c_int, _P)
    _proto("EVP_PKEY_free", None, _P)
    _proto("EVP_PKEY_is_a", c_int, _P, c_char_p)
    # operations
    _proto("EVP_PKEY_sign_init", c_int, _P)
    _proto("EVP_PKEY_sign", c_int, _P, c_char_p, POINTER(c_size_t), c_char_p, c_size_t)
    _proto("EVP_PKEY_verify_init", c_int, _P)
    _proto("EVP_PKEY_verify", c_int, _P, c_char_p, c_size_t, c_char_p, c_size_t)
    _proto("EVP_PKEY_encrypt_init", c_int, _P)
    _proto("EVP_PKEY_encrypt", c_int, _P, c_char_p, POINTER(c_size_t), c_char_p, c_size_t)
    _proto("EVP_PKEY_decrypt_init", c_int, _P)
    _proto("EVP_PKEY_decrypt", c_int, _P, c_char_p, POINTER(c_size_t), c_char_p, c_size_t)
    # scalar multiplication of the generator (public key from private key)
    _proto("EC_GROUP_new_by_curve_name", _P, c_int)
    _proto("EC_POINT_new", _P, _P)
    _proto("EC_POINT_free", None, _P)
    _proto("EC_POINT_mul", c_int, _P, _P, _P, _P, _P, _P)
    _proto("EC_POINT_point2oct", c_size_t, _P, _P, c_int, c_char_p, c_size_t, _P)
    _proto("BN_bin2bn", _P, c_char_p, c_int, _P)
    _proto("BN_clear_free", None, _P)
    # symmetric ciphers
    _proto("EVP_CIPHER_fetch", _P, _P, c_char_p, c_char_p)
    _proto("EVP_CIPHER_CTX_new", _P)
    _proto("EVP_CIPHER_CTX_free", None, _P)
    _proto("EVP_CIPHER_CTX_set_padding", c_int, _P, c_int)
    _proto("EVP_CipherInit_ex2", c_int, _P, _P, c_char_p, c_char_p, c_int, _P)
    _proto("EVP_CipherUpdate", c_int, _P, c_char_p, POINTER(c_int), c_char_p, c_int)
    _proto("EVP_CipherFinal_ex", c_int, _P, _P, POINTER(c_int))


def version() -> str:
    """OpenSSL's version string, or ``"unavailable"``."""
    return _lib.OpenSSL_version(0).decode() if _lib is not None else "unavailable"


def _fail(exc_type: type[Exception], what: str) -> Exception:
    """Build the typed error for a failed call and drop OpenSSL's queued errors."""
    code = _lib.ERR_get_error()
    _lib.ERR_clear_error()
    return exc_type(f"{what} failed (openssl error {code:#x})")


# ---------------------------------------------------------------------------------- keys


class _Param(ctypes.Structure):
    """``OSSL_PARAM``: OpenSSL's self-describing parameter record."""

    _fields_ = [
        ("key", c_char_p),
        ("data_type", c_uint),
        ("data", c_void_p),
        ("data_size", c_size_t),
        ("return_size", c_size_t),
    ]


_UNSIGNED_INTEGER, _UTF8_STRING, _OCTET_STRING = 2, 4, 5
_SELECT_PUBLIC_KEY, _SELECT_KEYPAIR = 0x86, 0x87
_UNCOMPRESSED = 4


class Curve:
    """An EC curve as OpenSSL names it: key-manager name, group name and NID."""

    def __init__(self, keytype: bytes, group: bytes, nid: int) -> None:
        self.keytype = keytype
        self.group = group
        self.nid = nid


SM2_CURVE = Curve(b"SM2", b"SM2", 1172)
P256_CURVE = Curve(b"EC", b"prime256v1", 415)


def _import_key(curve: Curve, public_key: bytes, private_key: bytes | None) -> int:
    """EVP_PKEY from raw parts; OpenSSL checks that the point lies on the curve."""
    group = ctypes.create_string_buffer(curve.group)
    pub = ctypes.create_string_buffer(public_key, len(public_key))
    params = (_Param * 4)()
    params[0] = _Param(b"group", _UTF8_STRING, ctypes.cast(group, c_void_p), len(curve.group), 0)
    params[1] = _Param(b"pub", _OCTET_STRING, ctypes.cast(pub, c_void_p), len(public_key), 0)
    selection = _SELECT_PUBLIC_KEY
    priv = None
    if private_key is not None:
        # OSSL_PARAM unsigned integers are native-endian.
        priv = ctypes.create_string_buffer(
            int.from_bytes(private_key, "big").to_bytes(len(private_key), sys.byteorder),
            len(private_key),
        )
        params[2] = _Param(b"priv", _UNSIGNED_INTEGER, ctypes.cast(priv, c_void_p),
                           len(private_key), 0)
        selection = _SELECT_KEYPAIR
    ctx = _lib.EVP_PKEY_CTX_new_from_name(None, curve.keytype, None)
    if not ctx:
        raise _fail(BackendError, "EVP_PKEY_CTX_new_from_name")
    pkey = c_void_p()
    try:
        if _lib.EVP_PKEY_fromdata_init(ctx) != 1 or \
                _lib.EVP_PKEY_fromdata(ctx, byref(pkey), selection, params) != 1:
            raise _fail(InvalidKeyError, "key import")
    finally:
        _lib.EVP_PKEY_CTX_free(ctx)
        if priv is not None:
            ctypes.memset(priv, 0, len(private_key))
    return pkey.value


_groups: dict[int, int] = {}
_groups_lock = threading.Lock()


def _group(nid: int) -> int:
    """The EC_GROUP of a curve, built once: building one costs more than a multiplication."""
    with _groups_lock:
        group = _groups.get(nid)
        if group is None:
            group = _lib.EC_GROUP_new_by_curve_name(nid)
            if not group:
                raise _fail(BackendError, "EC_GROUP_new_by_curve_name")
            _groups[nid] = group
        return group


def public_point(curve: Curve, private_key: bytes) -> bytes:
    """``d * G`` as the 65-byte uncompressed point (the caller checked d's range)."""
    group = _group(curve.nid)
    point = _lib.EC_POINT_new(group)
    scalar = _lib.BN_bin2bn(private_key, len(private_key), None)
    out = ctypes.create_string_buffer(65)
    try:
        if not (point and scalar) or \
                _lib.EC_POINT_mul(group, point, scalar, None, None, None) != 1 or \
                _lib.EC_POINT_point2oct(group, point, _UNCOMPRESSED, out, 65, None) != 65:
            raise _fail(BackendError, "EC_POINT_mul")
    finally:
        _lib.BN_clear_free(scalar)
        _lib.EC_POINT_free(point)
    return out.raw


class EcKey:
    """An imported EC key with contexts initialised once for each operation it does.

    A context is not safe for concurrent use, so each operation holds the key's lock; the
    OpenSSL work dominates, so the lock costs nothing measurable.
    """

    def __init__(self, curve: Curve, public_key: bytes, private_key: bytes | None = None):
        self._pkey = _import_key(curve, public_key, private_key)
        self._ctx: dict[str, int] = {}
        self._lock = threading.Lock()
        self.public_key = public_key

    def __del__(self) -> None:
        lib = _lib  # module globals may be gone at interpreter exit
        if lib is None:
            return
        for ctx in getattr(self, "_ctx", {}).values():
            lib.EVP_PKEY_CTX_free(ctx)
        if getattr(self, "_pkey", None):
            lib.EVP_PKEY_free(self._pkey)

    def _context(self, op: str) -> int:
        ctx = self._ctx.get(op)
        if ctx is None:
            ctx = _lib.EVP_PKEY_CTX_new_from_pkey(None, self._pkey, None)
            init = getattr(_lib, f"EVP_PKEY_{op}_init")
            if not ctx or init(ctx) != 1:
                _lib.EVP_PKEY_CTX_free(ctx)
                raise _fail(BackendError, f"EVP_PKEY_{op}_init")
            self._ctx[op] = ctx
        return ctx

    def sign_digest(self, digest: bytes) -> bytes:
        """DER signature of a precomputed digest (SM2: e = SM3(Z_A || M); nonce by OpenSSL)."""
        out = ctypes.create_string_buffer(80)
        size = c_size_t(len(out))
        with self._lock:
            if _lib.EVP_PKEY_sign(self._context("sign"), out, byref(size), digest,
                                  len(digest)) != 1:
                raise _fail(BackendError, "EVP_PKEY_sign")
        return out.raw[: size.value]

    def verify_digest(self, digest: bytes, der_signature: bytes) -> bool:
        with self._lock:
            rc = _lib.EVP_PKEY_verify(self._context("verify"), der_signature,
                                      len(der_signature), digest, len(digest))
        if rc != 1:
            _lib.ERR_clear_error()
        return rc == 1

    def _crypt(self, op: str, data: bytes, error: type[Exception]) -> bytes:
        fn = getattr(_lib, f"EVP_PKEY_{op}")
        size = c_size_t()
        with self._lock:
            ctx = self._context(op)
            if fn(ctx, None, byref(size), data, len(data)) != 1:
                raise _fail(error, f"SM2 {op}")
            out = ctypes.create_string_buffer(size.value)
            if fn(ctx, out, byref(size), data, len(data)) != 1:
                raise _fail(error, f"SM2 {op}")
        return out.raw[: size.value]

    def encrypt(self, data: bytes) -> bytes:
        """SM2 public-key encryption; OpenSSL emits the GM/T 0009 DER form."""
        return self._crypt("encrypt", data, BackendError)

    def decrypt(self, ciphertext: bytes) -> bytes:
        """SM2 decryption; OpenSSL checks C1 on the curve and C3 in constant time."""
        return self._crypt("decrypt", ciphertext, DecryptionError)


# ---------------------------------------------------------------------------------- ciphers


class _CipherContext:
    """An EVP_CIPHER_CTX freed when its thread's local storage goes."""

    def __init__(self) -> None:
        self.ctx = _lib.EVP_CIPHER_CTX_new()
        if not self.ctx:
            raise _fail(BackendError, "EVP_CIPHER_CTX_new")

    def __del__(self) -> None:
        if _lib is not None and getattr(self, "ctx", None):
            _lib.EVP_CIPHER_CTX_free(self.ctx)


class Cipher:
    """One fetched EVP_CIPHER (e.g. ``SM4-CBC``) with a context per thread, padding off."""

    def __init__(self, name: bytes) -> None:
        self._cipher = _lib.EVP_CIPHER_fetch(None, name, None)
        if not self._cipher:
            raise _fail(BackendError, f"EVP_CIPHER_fetch({name.decode()})")
        self._local = threading.local()

    def _ctx(self) -> int:
        holder = getattr(self._local, "ctx", None)
        if holder is None:
            holder = self._local.ctx = _CipherContext()
        return holder.ctx

    def run(self, key: bytes, iv: bytes | None, data: bytes, encrypt: bool) -> bytes:
        ctx = self._ctx()
        out = ctypes.create_string_buffer(len(data) + 32)
        n1, n2 = c_int(), c_int()
        if _lib.EVP_CipherInit_ex2(ctx, self._cipher, key, iv, 1 if encrypt else 0, None) != 1 \
                or _lib.EVP_CIPHER_CTX_set_padding(ctx, 0) != 1 \
                or _lib.EVP_CipherUpdate(ctx, out, byref(n1), data, len(data)) != 1 \
                or _lib.EVP_CipherFinal_ex(ctx, ctypes.addressof(out) + n1.value, byref(n2)) != 1:
            raise _fail(BackendError, "EVP_Cipher")
        return out.raw[: n1.value + n2.value]


def _probe() -> bool:
    """True when this libcrypto can do SM2 (signing with a throwaway key) and SM4."""
    if _lib is None:
        return False
    try:
        d = bytes(31) + b"\x01"
        key = EcKey(SM2_CURVE, public_point(SM2_CURVE, d), d)
        key.sign_digest(bytes(32))
        Cipher(b"SM4-ECB")
        return True
    except (BackendError, InvalidKeyError, AttributeError):
        if _lib is not None:
            _lib.ERR_clear_error()
        return False


AVAILABLE = _probe()
