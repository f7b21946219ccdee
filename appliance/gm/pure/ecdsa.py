"""ECDSA over NIST P-256 with SHA-256 (FIPS 186-4, SEC 1), the same shape as ``sm2``.

Private keys 32 bytes (d in [1, n-1]); public keys 65 bytes ``04 || X || Y``; signatures 64
bytes ``r || s``, plain ECDSA (no low-s normalisation, as OpenSSL). Errors follow ``sm2``:
malformed keys raise ValueError, bad signatures make ``verify*`` return False.
Portable: runs on CPython and MicroPython (both have ``hashlib.sha256``).
"""

try:
    import hashlib
except ImportError:  # older MicroPython ports name it uhashlib
    import uhashlib as hashlib

try:
    from . import ec
except ImportError:  # flat layout (firmware, MicroPython): pure/ itself is on the path
    import ec

CURVE = ec.P256
N = CURVE.n
KEY_SIZE = 32
SIGNATURE_SIZE = 64

_MAX_TRIES = 64


def _private_scalar(private_key):
    if not isinstance(private_key, (bytes, bytearray)) or len(private_key) != KEY_SIZE:
        raise ValueError("P-256 private key must be 32 bytes")
    d = int.from_bytes(private_key, "big")
    if not 1 <= d < N:
        raise ValueError("P-256 private key out of range [1, n-1]")
    return d


def _digest_int(digest):
    """bits2int: the leftmost 256 bits of the digest as an int (SEC 1 4.1.3 step 5)."""
    if not isinstance(digest, (bytes, bytearray)) or not digest:
        raise ValueError("ECDSA digest must be non-empty bytes")
    return int.from_bytes(digest[:KEY_SIZE], "big")


def _b32(x):
    return x.to_bytes(KEY_SIZE, "big")


def generate_keypair(rand=None):
    """A fresh (private 32 bytes, public 65 bytes) pair; d uniform in [1, n-1]."""
    d = ec.random_scalar(1, N - 1, rand)
    return _b32(d), CURVE.encode_point(CURVE.mul_base(d))


def public_key_of(private_key):
    """The 65-byte public key d*G of a 32-byte private key."""
    return CURVE.encode_point(CURVE.mul_base(_private_scalar(private_key)))


def sign_digest(private_key, digest, k=None, rand=None):
    """64-byte r || s over a digest (normally 32 bytes of SHA-256).

    ``k`` (int or 32 bytes) is only for known-answer tests; otherwise k is uniform in
    [1, n-1] and redrawn when r = 0 or s = 0 (a given k that does so raises ValueError).
    """
    d = _private_scalar(private_key)
    e = _digest_int(digest)
    fixed = k is not None
    if fixed:
        if not isinstance(k, int):
            k = int.from_bytes(k, "big")
        if not 1 <= k < N:
            raise ValueError("ECDSA nonce k out of range [1, n-1]")
    for _ in range(_MAX_TRIES):
        if not fixed:
            k = ec.random_scalar(1, N - 1, rand)
        r = CURVE.mul_base(k)[0] % N
        if r != 0:
            s = ec.inv_mod(k, N) * (e + r * d) % N
            if s != 0:
                return _b32(r) + _b32(s)
        if fixed:
            raise ValueError("ECDSA nonce k gives r = 0 or s = 0")
    raise RuntimeError("ECDSA signing kept failing: broken random source")


def sign(private_key, message, rand=None, k=None):
    """64-byte r || s over SHA-256(message)."""
    return sign_digest(private_key, hashlib.sha256(bytes(message)).digest(), k=k, rand=rand)


def verify_digest(public_key, digest, signature):
    """True when signature (r || s) is valid for digest; False for any bad signature.

    ValueError for a malformed public key or an empty/non-bytes digest.
    """
    Q = CURVE.decode_point(public_key)
    e = _digest_int(digest)
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != SIGNATURE_SIZE:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (1 <= r < N and 1 <= s < N):
        return False
    w = ec.inv_mod(s, N)
    pt = CURVE.mul_add(e * w % N, r * w % N, Q)
    if pt is None:
        return False
    return pt[0] % N == r


def verify(public_key, message, signature):
    """True when signature is valid for SHA-256(message) by public_key."""
    return verify_digest(public_key, hashlib.sha256(bytes(message)).digest(), signature)
