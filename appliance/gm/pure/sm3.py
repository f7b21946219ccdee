"""SM3 hash (GB/T 32905-2016, GM/T 0004): 256-bit digest, 64-byte blocks, Merkle-Damgard.

Portable: runs on CPython and MicroPython (ints, bytes and ``struct`` only).
"""

import struct

DIGEST_SIZE = 32
BLOCK_SIZE = 64

_M = 0xFFFFFFFF
_IV = (0x7380166F, 0x4914B2B9, 0x172442D7, 0xDA8A0600,
       0xA96F30BC, 0x163138AA, 0xE38DEE4D, 0xB0FB0E4E)


def _rotl(x, n):
    n %= 32
    return ((x << n) | (x >> (32 - n))) & _M


# T_j <<< (j mod 32), precomputed for the 64 rounds (T_j = 79CC4519 for j < 16, else 7A879D8A)
_TJ = tuple(_rotl(0x79CC4519 if j < 16 else 0x7A879D8A, j) for j in range(64))


def _compress(v, block, off):
    """One compression CF(V, B) of the 64 bytes at block[off:off+64]; returns the new V."""
    w = list(struct.unpack_from(">16I", block, off))
    # message expansion: W16..W67, then W'j = Wj ^ Wj+4 is computed inline in the rounds
    for j in range(16, 68):
        x = w[j - 16] ^ w[j - 9] ^ (((w[j - 3] << 15) | (w[j - 3] >> 17)) & _M)
        x ^= (((x << 15) | (x >> 17)) ^ ((x << 23) | (x >> 9))) & _M  # P1
        w.append(x ^ (((w[j - 13] << 7) | (w[j - 13] >> 25)) & _M) ^ w[j - 6])
    a, b, c, d, e, f, g, h = v
    tj = _TJ
    for j in range(64):
        a12 = ((a << 12) | (a >> 20)) & _M
        ss1 = (a12 + e + tj[j]) & _M
        ss1 = ((ss1 << 7) | (ss1 >> 25)) & _M
        ss2 = ss1 ^ a12
        if j < 16:
            ff = a ^ b ^ c
            gg = e ^ f ^ g
        else:
            ff = (a & b) | (a & c) | (b & c)
            gg = g ^ (e & (f ^ g))  # (E & F) | (~E & G) without Python's negative ~
        tt1 = (ff + d + ss2 + (w[j] ^ w[j + 4])) & _M
        tt2 = (gg + h + ss1 + w[j]) & _M
        d = c
        c = ((b << 9) | (b >> 23)) & _M
        b = a
        a = tt1
        h = g
        g = ((f << 19) | (f >> 13)) & _M
        f = e
        e = tt2 ^ (((tt2 << 9) | (tt2 >> 23)) ^ ((tt2 << 17) | (tt2 >> 15))) & _M  # P0
    return (v[0] ^ a, v[1] ^ b, v[2] ^ c, v[3] ^ d,
            v[4] ^ e, v[5] ^ f, v[6] ^ g, v[7] ^ h)


class SM3:
    """Incremental SM3 with the hashlib-like ``update``/``digest``/``hexdigest``/``copy``."""

    digest_size = DIGEST_SIZE
    block_size = BLOCK_SIZE
    name = "sm3"

    def __init__(self, data=b""):
        self._v = _IV
        self._buf = b""  # < 64 pending bytes
        self._len = 0  # total bytes hashed so far
        if data:
            self.update(data)

    def update(self, data):
        data = bytes(data)
        self._len += len(data)
        if self._buf:
            need = BLOCK_SIZE - len(self._buf)
            if len(data) < need:
                self._buf += data
                return
            self._v = _compress(self._v, self._buf + data[:need], 0)
            data = data[need:]
            self._buf = b""
        v = self._v
        off = 0
        end = len(data) - BLOCK_SIZE
        while off <= end:  # whole blocks straight from the input, no copying
            v = _compress(v, data, off)
            off += BLOCK_SIZE
        self._v = v
        self._buf = data[off:]

    def digest(self):
        """The 32-byte digest of everything so far; the hasher stays usable."""
        # padding: 0x80, zeros to 56 mod 64, then the bit length as 64-bit big-endian
        buf = self._buf
        pad = b"\x80" + bytes((55 - len(buf)) % 64)
        tail = buf + pad + ((self._len * 8) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
        v = self._v
        for off in range(0, len(tail), BLOCK_SIZE):
            v = _compress(v, tail, off)
        return struct.pack(">8I", v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7])

    def hexdigest(self):
        return "".join("%02x" % x for x in self.digest())

    def copy(self):
        other = SM3()
        other._v = self._v
        other._buf = self._buf
        other._len = self._len
        return other


def digest(data):
    """SM3(data): 32 bytes."""
    h = SM3()
    h.update(data)
    return h.digest()


def hmac(key, data):
    """HMAC-SM3 per RFC 2104 (block 64 bytes): SM3((K^opad) || SM3((K^ipad) || data))."""
    key = bytes(key)
    if len(key) > BLOCK_SIZE:
        key = digest(key)
    key = key + bytes(BLOCK_SIZE - len(key))
    inner = SM3(bytes(x ^ 0x36 for x in key))
    inner.update(data)
    outer = SM3(bytes(x ^ 0x5C for x in key))
    outer.update(inner.digest())
    return outer.digest()
