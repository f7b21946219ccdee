"""SM2 (GB/T 32918-2016, GM/T 0003) on the recommended curve: signatures and encryption.

Formats: private keys 32 bytes (d in [1, n-2]); public keys 65 bytes ``04 || X || Y``;
signatures 64 bytes ``r || s``; ciphertexts the GM/T 0009 DER SM2Cipher (C1, C3, C2) that
OpenSSL 3 produces and accepts.

Errors, by design:
* a malformed private or public key (wrong length or prefix, out of range, off the curve)
  raises ValueError everywhere -- keys are configuration, and the wrapper maps the error;
* ``verify``/``verify_digest`` return False, never raise, for any bad *signature* (not 64
  bytes, r or s outside [1, n-1], t = 0, wrong value);
* ``decrypt`` raises ValueError for malformed DER, C1 off the curve or a C3 mismatch.

Randomness comes from ``rand(n) -> n bytes`` when given (the crypto module's RNG on the
firmware), else ``os.urandom``. Portable: runs on CPython and MicroPython.
"""

try:
    from . import der, ec, sm3
except ImportError:  # flat layout (firmware, MicroPython): pure/ itself is on the path
    import der
    import ec
    import sm3

CURVE = ec.SM2
N = CURVE.n
DEFAULT_ID = b"1234567812345678"
KEY_SIZE = 32
SIGNATURE_SIZE = 64

_MAX_TRIES = 64  # nonce retries before blaming the random source (each is ~2^-256 likely)
# a || b || xG || yG, the curve part of Z_A
_CURVE_BYTES = b"".join(v.to_bytes(KEY_SIZE, "big") for v in (CURVE.a, CURVE.b, CURVE.gx,
                                                                CURVE.gy))


def _private_scalar(private_key):
    if not isinstance(private_key, (bytes, bytearray)) or len(private_key) != KEY_SIZE:
        raise ValueError("SM2 private key must be 32 bytes")
    d = int.from_bytes(private_key, "big")
    if not 1 <= d <= N - 2:  # d = n-1 would make 1+d = n, which has no inverse mod n
        raise ValueError("SM2 private key out of range [1, n-2]")
    return d


def _digest_int(e):
    if not isinstance(e, (bytes, bytearray)) or len(e) != 32:
        raise ValueError("SM2 digest e must be 32 bytes")
    return int.from_bytes(e, "big")


def _b32(x):
    return x.to_bytes(KEY_SIZE, "big")


def generate_keypair(rand=None):
    """A fresh (private 32 bytes, public 65 bytes) pair; d uniform in [1, n-2]."""
    d = ec.random_scalar(1, N - 2, rand)
    return _b32(d), CURVE.encode_point(CURVE.mul_base(d))


def public_key_of(private_key):
    """The 65-byte public key d*G of a 32-byte private key."""
    return CURVE.encode_point(CURVE.mul_base(_private_scalar(private_key)))


def za(public_key, id=DEFAULT_ID):
    """Z_A = SM3(ENTL || ID || a || b || xG || yG || xA || yA), GB/T 32918.2 5.5.

    ENTL is the bit length of the ID as two big-endian bytes, so the ID is < 8192 bytes.
    """
    CURVE.decode_point(public_key)  # ValueError for a malformed key
    id = bytes(id)
    if len(id) >= 8192:
        raise ValueError("SM2 distinguishing ID must be shorter than 8192 bytes")
    entl = (len(id) * 8).to_bytes(2, "big")
    return sm3.digest(entl + id + _CURVE_BYTES + bytes(public_key[1:]))


def message_digest(public_key, message, id=DEFAULT_ID):
    """e = SM3(Z_A || M), what an SM2 signature actually signs."""
    return sm3.digest(za(public_key, id) + bytes(message))


def sign_digest(private_key, e, k=None, rand=None):
    """64-byte r || s over the 32-byte e (GB/T 32918.2 6.1).

    ``k`` (int or 32 bytes) is only for known-answer tests; normally the nonce is drawn
    uniformly from [1, n-1] and redrawn whenever r = 0, r + k = n or s = 0. A given k that
    hits one of those cases raises ValueError.
    """
    d = _private_scalar(private_key)
    ei = _digest_int(e)
    dinv = ec.inv_mod(1 + d, N)
    fixed = k is not None
    if fixed:
        if not isinstance(k, int):
            k = int.from_bytes(k, "big")
        if not 1 <= k < N:
            raise ValueError("SM2 nonce k out of range [1, n-1]")
    for _ in range(_MAX_TRIES):
        if not fixed:
            k = ec.random_scalar(1, N - 1, rand)
        x1 = CURVE.mul_base(k)[0]
        r = (ei + x1) % N
        if r != 0 and r + k != N:
            s = dinv * (k - r * d) % N
            if s != 0:
                return _b32(r) + _b32(s)
        if fixed:
            raise ValueError("SM2 nonce k gives r = 0, r + k = n or s = 0")
    raise RuntimeError("SM2 signing kept failing: broken random source")


def sign(private_key, message, id=DEFAULT_ID, rand=None, k=None):
    """64-byte r || s over SM3(Z_A || message) with the signer's distinguishing ID."""
    e = message_digest(public_key_of(private_key), message, id)
    return sign_digest(private_key, e, k=k, rand=rand)


def verify_digest(public_key, e, signature):
    """True when signature (r || s) is valid for the 32-byte e (GB/T 32918.2 7.1).

    False for any bad signature; ValueError for a malformed public key or an e that is not
    32 bytes (those are the caller's inputs, not the peer's).
    """
    P = CURVE.decode_point(public_key)
    ei = _digest_int(e)
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != SIGNATURE_SIZE:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (1 <= r < N and 1 <= s < N):
        return False
    t = (r + s) % N
    if t == 0:
        return False
    pt = CURVE.mul_add(s, t, P)  # (x1, y1) = s*G + t*P_A
    if pt is None:
        return False
    return (ei + pt[0]) % N == r


def verify(public_key, message, signature, id=DEFAULT_ID):
    """True when signature is valid for message by public_key under id (see verify_digest)."""
    return verify_digest(public_key, message_digest(public_key, message, id), signature)


def kdf(z, klen):
    """GB/T 32918.4 5.4.3 KDF with SM3: SM3(Z || ct) for ct = 1, 2, ... truncated to klen."""
    base = sm3.SM3(z)  # Z = x2 || y2 is exactly one block: hash it once, copy per counter
    out = []
    ct = 1
    while 32 * (ct - 1) < klen:
        h = base.copy()
        h.update(ct.to_bytes(4, "big"))
        out.append(h.digest())
        ct += 1
    return b"".join(out)[:klen]


def _xor(a, b):
    n = len(a)
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(n, "big")


def encrypt(public_key, data, rand=None):
    """SM2 encryption (GB/T 32918.4 6.1) to DER SM2Cipher(C1, C3, C2).

    Empty data is refused (ValueError), as OpenSSL does. An all-zero KDF output makes it
    draw a new k, per the standard.
    """
    P = CURVE.decode_point(public_key)  # cofactor 1: a valid P is never infinity after [h]
    data = bytes(data)
    if not data:
        raise ValueError("SM2 cannot encrypt empty data")
    for _ in range(_MAX_TRIES):
        k = ec.random_scalar(1, N - 1, rand)
        x1, y1 = CURVE.mul_base(k)
        x2, y2 = CURVE.mul(k, P)
        x2b, y2b = _b32(x2), _b32(y2)
        t = kdf(x2b + y2b, len(data))
        if t == bytes(len(t)):
            continue
        c2 = _xor(data, t)
        c3 = sm3.digest(x2b + data + y2b)
        return der.encode_sm2_ciphertext(x1, y1, c3, c2)
    raise RuntimeError("SM2 encryption kept failing: broken random source")


def decrypt(private_key, ciphertext):
    """Inverse of encrypt (GB/T 32918.4 7.1); ValueError when malformed or C3 mismatches."""
    d = _private_scalar(private_key)
    x1, y1, c3, c2 = der.decode_sm2_ciphertext(ciphertext)
    if not c2:
        raise ValueError("SM2 ciphertext carries no data")
    if not CURVE.is_on_curve(x1, y1):  # also rejects coordinates >= p
        raise ValueError("SM2 C1 is not a point on the curve")
    x2, y2 = CURVE.mul(d, (x1, y1))  # never infinity: d in [1, n-2], C1 of prime order n
    x2b, y2b = _b32(x2), _b32(y2)
    t = kdf(x2b + y2b, len(c2))
    if t == bytes(len(t)):
        raise ValueError("SM2 KDF output is all zero")
    m = _xor(c2, t)
    if not ec.ct_equal(sm3.digest(x2b + m + y2b), c3):
        raise ValueError("SM2 C3 mismatch: corrupted ciphertext or wrong key")
    return m
