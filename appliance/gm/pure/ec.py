"""Prime-curve arithmetic for SM2 and ECDSA: y^2 = x^3 + ax + b over GF(p), ints only.

Affine points are ``(x, y)`` tuples and ``None`` is the point at infinity. Internally the
arithmetic runs in Jacobian coordinates (X, Y, Z) ~ (X/Z^2, Y/Z^3), which trades the costly
field inversion of every addition for a few multiplications; one inversion at the end brings
the result back to affine.

* ``k*G`` uses a Lim-Lee comb over a table of ``2^teeth - 1`` affine points built on first
  use (``Curve.comb_teeth``: 6 -> 63 points, about 43 doublings + 43 additions per product;
  firmware short of RAM may lower it before the first multiplication).
* ``k*P`` for other points uses a width-5 NAF with 8 precomputed odd multiples.

Both supported curves have cofactor 1, so any point on the curve other than infinity lies in
the prime-order group: ``decode_point`` needs no extra subgroup check.
Runs unchanged on CPython and MicroPython (no annotations, no f-strings, no int.bit_length).
"""

import os

_INF = (1, 1, 0)  # Jacobian infinity: any triple with Z == 0
_MAX_TRIES = 128  # rejection-sampling rounds before declaring the random source broken


def bit_len(x):
    """Number of bits of a non-negative int (MicroPython has no int.bit_length)."""
    n = 0
    while x >= 1 << 64:
        x >>= 64
        n += 64
    while x:
        x >>= 1
        n += 1
    return n


def byte_len(x):
    """Number of bytes needed for a non-negative int (0 for 0)."""
    return (bit_len(x) + 7) // 8


def inv_mod(x, m):
    """x^-1 mod a prime m by Fermat (pow(x, -1, m) is CPython-only)."""
    x %= m
    if x == 0:
        raise ValueError("zero has no inverse")
    return pow(x, m - 2, m)


def ct_equal(a, b):
    """Byte-string equality whose run time does not depend on where the first difference is."""
    if len(a) != len(b):
        return False
    acc = 0
    for i in range(len(a)):  # no zip(strict=): MicroPython's zip takes no keywords
        acc |= a[i] ^ b[i]
    return acc == 0


def random_scalar(lo, hi, rand=None):
    """Uniform int in [lo, hi] by rejection sampling (no modulo bias).

    ``rand(n) -> n bytes`` is the random source (default ``os.urandom``); firmware passes the
    module's RNG. Candidates are masked to the bit length of ``hi``, so each draw is accepted
    with probability >= 1/2; a source that fails _MAX_TRIES times in a row is broken.
    """
    if rand is None:
        rand = os.urandom
    nbytes = byte_len(hi)
    mask = (1 << bit_len(hi)) - 1
    for _ in range(_MAX_TRIES):
        buf = rand(nbytes)
        if len(buf) != nbytes:
            raise ValueError("random source returned the wrong number of bytes")
        x = int.from_bytes(buf, "big") & mask
        if lo <= x <= hi:
            return x
    raise RuntimeError("random source keeps returning out-of-range values")


# -- Jacobian arithmetic -----------------------------------------------------------------
# All functions take the curve's p (and a) explicitly: local names are faster than attribute
# lookups on both interpreters.


def _double(p, a, minus3, X1, Y1, Z1):
    """2*(X1, Y1, Z1). dbl-2001-b when a = -3 (both supported curves), else dbl-2007-bl."""
    if Z1 == 0 or Y1 == 0:
        return _INF
    delta = Z1 * Z1 % p
    gamma = Y1 * Y1 % p
    beta = X1 * gamma % p
    if minus3:
        alpha = 3 * (X1 - delta) * (X1 + delta) % p
    else:
        alpha = (3 * X1 * X1 + a * delta * delta) % p
    X3 = (alpha * alpha - 8 * beta) % p
    Z3 = 2 * Y1 * Z1 % p
    Y3 = (alpha * (4 * beta - X3) - 8 * gamma * gamma) % p
    return (X3, Y3, Z3)


def _add_affine(p, a, minus3, X1, Y1, Z1, x2, y2):
    """(X1, Y1, Z1) + (x2, y2) with the second point affine (mixed addition)."""
    if Z1 == 0:
        return (x2, y2, 1)
    Z1Z1 = Z1 * Z1 % p
    H = (x2 * Z1Z1 - X1) % p
    R = (y2 * Z1 * Z1Z1 - Y1) % p
    if H == 0:
        if R == 0:  # same point: the addition formula degenerates, double instead
            return _double(p, a, minus3, x2, y2, 1)
        return _INF  # P + (-P)
    HH = H * H % p
    HHH = H * HH % p
    V = X1 * HH % p
    X3 = (R * R - HHH - 2 * V) % p
    Y3 = (R * (V - X3) - Y1 * HHH) % p
    Z3 = Z1 * H % p
    return (X3, Y3, Z3)


def _add(p, a, minus3, X1, Y1, Z1, X2, Y2, Z2):
    """(X1, Y1, Z1) + (X2, Y2, Z2), both Jacobian (add-1998-cmo-2)."""
    if Z1 == 0:
        return (X2, Y2, Z2)
    if Z2 == 0:
        return (X1, Y1, Z1)
    Z1Z1 = Z1 * Z1 % p
    Z2Z2 = Z2 * Z2 % p
    U1 = X1 * Z2Z2 % p
    S1 = Y1 * Z2 * Z2Z2 % p
    H = (X2 * Z1Z1 - U1) % p
    R = (Y2 * Z1 * Z1Z1 - S1) % p
    if H == 0:
        if R == 0:
            return _double(p, a, minus3, X1, Y1, Z1)
        return _INF
    HH = H * H % p
    HHH = H * HH % p
    V = U1 * HH % p
    X3 = (R * R - HHH - 2 * V) % p
    Y3 = (R * (V - X3) - S1 * HHH) % p
    Z3 = Z1 * Z2 * H % p
    return (X3, Y3, Z3)


def _to_affine(p, P):
    X, Y, Z = P
    if Z == 0:
        return None
    zi = pow(Z, p - 2, p)
    zi2 = zi * zi % p
    return (X * zi2 % p, Y * zi2 * zi % p)


def _batch_to_affine(p, points):
    """Affine forms of many finite Jacobian points with a single inversion (Montgomery)."""
    prefix = []
    acc = 1
    for P in points:
        prefix.append(acc)
        acc = acc * P[2] % p
    inv = pow(acc, p - 2, p)  # 1 / (Z0 * Z1 * ... * Zm)
    out = [None] * len(points)
    for i in range(len(points) - 1, -1, -1):
        X, Y, Z = points[i]
        zi = inv * prefix[i] % p  # 1 / Zi
        inv = inv * Z % p
        zi2 = zi * zi % p
        out[i] = (X * zi2 % p, Y * zi2 * zi % p)
    return out


def _wnaf(k, w):
    """Width-w NAF digits of k >= 0, least significant first (odd digits in +-[1, 2^(w-1))."""
    digits = []
    full = 1 << w
    half = full >> 1
    while k:
        if k & 1:
            d = k & (full - 1)
            if d >= half:
                d -= full
            k -= d
        else:
            d = 0
        digits.append(d)
        k >>= 1
    return digits


class Curve:
    """A short-Weierstrass curve of prime order n (cofactor 1) and its generator (gx, gy)."""

    def __init__(self, name, p, a, b, n, gx, gy, comb_teeth=6):
        self.name = name
        self.p = p
        self.a = a
        self.b = b
        self.n = n
        self.gx = gx
        self.gy = gy
        self.size = byte_len(p)  # bytes per coordinate / scalar
        self.comb_teeth = comb_teeth
        self._minus3 = (a % p) == p - 3
        self._comb = None  # (columns, table) built lazily by _comb_table()

    def __repr__(self):
        return "<Curve %s>" % self.name

    # -- points as bytes ------------------------------------------------------------------

    def is_on_curve(self, x, y):
        """True for an affine point with coordinates in [0, p) satisfying the equation."""
        p = self.p
        if not (0 <= x < p and 0 <= y < p):
            return False
        return (y * y - (x * x * x + self.a * x + self.b)) % p == 0

    def decode_point(self, data):
        """(x, y) of an uncompressed ``04 || X || Y`` point; ValueError if it is not one.

        Rejects the wrong length (including the 1-byte infinity encoding and 64-byte
        prefix-less keys), any other prefix (compressed, hybrid), coordinates >= p, and
        points off the curve. With cofactor 1 that leaves exactly the valid group elements.
        """
        if not isinstance(data, (bytes, bytearray)):
            raise ValueError("point must be bytes")
        size = self.size
        if len(data) != 1 + 2 * size:
            raise ValueError("point must be %d bytes (04 || X || Y)" % (1 + 2 * size))
        if data[0] != 4:
            raise ValueError("point must be in uncompressed form (prefix 04)")
        x = int.from_bytes(data[1:1 + size], "big")
        y = int.from_bytes(data[1 + size:], "big")
        if x >= self.p or y >= self.p:
            raise ValueError("point coordinate is not below p")
        if not self.is_on_curve(x, y):
            raise ValueError("point is not on the curve")
        return (x, y)

    def encode_point(self, point):
        """``04 || X || Y`` of an affine point (not infinity)."""
        if point is None:
            raise ValueError("the point at infinity has no uncompressed encoding")
        size = self.size
        return b"\x04" + point[0].to_bytes(size, "big") + point[1].to_bytes(size, "big")

    # -- scalar multiplication ------------------------------------------------------------

    def _comb_table(self):
        """Lim-Lee comb: table[i] = sum of 2^(j*d) * G over the bits j set in i."""
        if self._comb is not None:
            return self._comb
        p, a, m3 = self.p, self.a, self._minus3
        w = self.comb_teeth
        d = (bit_len(self.n) + w - 1) // w  # columns
        # tooth bases 2^(j*d) * G, made affine so the table is built with mixed additions
        bases = [(self.gx, self.gy)]
        P = (self.gx, self.gy, 1)
        for _ in range(1, w):
            for _ in range(d):
                P = _double(p, a, m3, P[0], P[1], P[2])
            bases.append(_to_affine(p, P))
        jac = [_INF]
        for i in range(1, 1 << w):
            top = 0
            while (2 << top) <= i:
                top += 1
            Q = jac[i - (1 << top)]
            x2, y2 = bases[top]
            jac.append(_add_affine(p, a, m3, Q[0], Q[1], Q[2], x2, y2))
        # every entry is a non-zero multiple of G below 2^(w*d - d + 1) < n: none is infinity
        table = [None] + _batch_to_affine(p, jac[1:])
        self._comb = (d, table)
        return self._comb

    def _mul_base_jacobian(self, k):
        d, table = self._comb_table()
        p, a, m3 = self.p, self.a, self._minus3
        w = self.comb_teeth
        mask = (1 << d) - 1
        # split k into w chunks of d bits; column i takes bit i of every chunk
        chunks = []
        for j in range(w):
            chunks.append((k >> (j * d)) & mask)
        Q = _INF
        for i in range(d - 1, -1, -1):
            Q = _double(p, a, m3, Q[0], Q[1], Q[2])
            idx = 0
            for j in range(w - 1, -1, -1):
                idx = (idx << 1) | ((chunks[j] >> i) & 1)
            if idx:
                x2, y2 = table[idx]
                Q = _add_affine(p, a, m3, Q[0], Q[1], Q[2], x2, y2)
        return Q

    def _mul_jacobian(self, k, point):
        p, a, m3 = self.p, self.a, self._minus3
        x, y = point
        # odd multiples P, 3P, ..., 15P for width-5 NAF digits, made affine in one inversion
        twice = _to_affine(p, _double(p, a, m3, x, y, 1))
        odd = [(x, y, 1)]
        for _ in range(7):
            Q = odd[-1]
            odd.append(_add_affine(p, a, m3, Q[0], Q[1], Q[2], twice[0], twice[1]))
        if any(Q[2] == 0 for Q in odd):  # only for points of tiny order: not on our curves
            raise ValueError("point of small order")
        odd = _batch_to_affine(p, odd)
        Q = _INF
        digits = _wnaf(k, 5)
        for i in range(len(digits) - 1, -1, -1):
            Q = _double(p, a, m3, Q[0], Q[1], Q[2])
            dgt = digits[i]
            if dgt > 0:
                x2, y2 = odd[dgt >> 1]
                Q = _add_affine(p, a, m3, Q[0], Q[1], Q[2], x2, y2)
            elif dgt < 0:
                x2, y2 = odd[(-dgt) >> 1]
                Q = _add_affine(p, a, m3, Q[0], Q[1], Q[2], x2, p - y2)
        return Q

    def mul_base(self, k):
        """k*G as an affine point (None for k = 0 mod n)."""
        k %= self.n
        if k == 0:
            return None
        return _to_affine(self.p, self._mul_base_jacobian(k))

    def mul(self, k, point):
        """k*point for an affine point of order n (None if k = 0 mod n or point is None)."""
        k %= self.n
        if k == 0 or point is None:
            return None
        return _to_affine(self.p, self._mul_jacobian(k, point))

    def mul_add(self, u1, u2, point):
        """u1*G + u2*point, the verification equation of SM2 and ECDSA (None if infinity)."""
        A = self._mul_base_jacobian(u1 % self.n)
        u2 %= self.n
        if u2 == 0 or point is None:
            return _to_affine(self.p, A)
        B = self._mul_jacobian(u2, point)
        S = _add(self.p, self.a, self._minus3, A[0], A[1], A[2], B[0], B[1], B[2])
        return _to_affine(self.p, S)

    def add(self, P, Q):
        """Affine P + Q (either may be None)."""
        if P is None:
            return Q
        if Q is None:
            return P
        R = _add_affine(self.p, self.a, self._minus3, P[0], P[1], 1, Q[0], Q[1])
        return _to_affine(self.p, R)


def decode_point(curve, data):
    """Module-level form of :meth:`Curve.decode_point`."""
    return curve.decode_point(data)


def encode_point(curve, point):
    """Module-level form of :meth:`Curve.encode_point`."""
    return curve.encode_point(point)


# SM2 recommended curve, GB/T 32918.5-2017 (also GM/T 0003.5).
SM2 = Curve(
    "sm2p256v1",
    p=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF,
    a=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC,
    b=0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93,
    n=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123,
    gx=0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7,
    gy=0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0,
)

# NIST P-256 (FIPS 186-4 D.1.2.3, SEC 2 secp256r1, OpenSSL prime256v1).
P256 = Curve(
    "prime256v1",
    p=0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
    a=0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFC,
    b=0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
    n=0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    gx=0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    gy=0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)
