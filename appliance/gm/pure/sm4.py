"""SM4 block cipher (GB/T 32907-2016, GM/T 0002): 128-bit key, 128-bit block, 32 rounds.

Raw modes only (ECB, CBC, CTR) without padding: the caller pads. Each round applies
T = L(tau(x)), the S-box on the four bytes followed by the linear map
L(B) = B ^ (B <<< 2) ^ (B <<< 10) ^ (B <<< 18) ^ (B <<< 24). L is linear over XOR, so
T(x) = T0[x>>24] ^ T1[x>>16 & 255] ^ T2[x>>8 & 255] ^ T3[x & 255], with the four
256-entry tables precomputed at import: a round becomes four look-ups and a few XORs.
Portable: runs on CPython and MicroPython.
"""

import struct

BLOCK_SIZE = 16
KEY_SIZE = 16

_M = 0xFFFFFFFF

_SBOX_HEX = (
    "d690e9fecce13db716b614c228fb2c052b679a762abe04c3aa44132649860699"
    "9c4250f491ef987a33540b43edcfac62e4b31ca9c908e89580df94fa758f3fa6"
    "4707a7fcf37317ba83593c19e6854fa8686b81b27164da8bf8eb0f4b70569d35"
    "1e240e5e6358d1a225227c3b01217887d40046579fd327524c3602e7a0c4c89e"
    "eabf8ad240c738b5a3f7f2cef96115a1e0ae5da49b341a55ad933230f58cb1e3"
    "1df6e22e8266ca60c02923ab0d534e6fd5db3745defd8e2f03ff6a726d6c5b51"
    "8d1baf92bbddbc7f11d95c411f105ad80ac13188a5cd7bbd2d74d012b8e5b4b0"
    "8969974a0c96777e65b9f109c56ec68418f07dec3adc4d2079ee5f3ed7cb3948"
)
# parsed by hand: bytes.fromhex is missing from some MicroPython builds
SBOX = bytes(int(_SBOX_HEX[i:i + 2], 16) for i in range(0, 512, 2))

_FK = (0xA3B1BAC6, 0x56AA3350, 0x677D9197, 0xB27022DC)


def _ck(i):
    # CK_i = (ck_i0, ck_i1, ck_i2, ck_i3) with ck_ij = (4i + j) * 7 mod 256
    x = 0
    for j in range(4):
        x = (x << 8) | (((4 * i + j) * 7) & 0xFF)
    return x


_CK = tuple(_ck(i) for i in range(32))


def _rotl(x, n):
    return ((x << n) | (x >> (32 - n))) & _M


def _tables():
    t0, t1, t2, t3 = [], [], [], []
    for x in range(256):
        b = SBOX[x] << 24
        y = b ^ _rotl(b, 2) ^ _rotl(b, 10) ^ _rotl(b, 18) ^ _rotl(b, 24)
        t0.append(y)
        t1.append(_rotl(y, 24))  # the same byte one position lower: rotate right by 8
        t2.append(_rotl(y, 16))
        t3.append(_rotl(y, 8))
    return tuple(t0), tuple(t1), tuple(t2), tuple(t3)


_T0, _T1, _T2, _T3 = _tables()


def _tau(x):
    s = SBOX
    return (s[x >> 24] << 24) | (s[(x >> 16) & 255] << 16) | (s[(x >> 8) & 255] << 8) | s[x & 255]


def _check_len(name, value, size):
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        raise ValueError("SM4 %s must be %d bytes" % (name, size))


def expand_key(key):
    """The 32 encryption round keys (a tuple of ints) of a 16-byte key."""
    _check_len("key", key, KEY_SIZE)
    k0, k1, k2, k3 = struct.unpack(">4I", bytes(key))
    k = [k0 ^ _FK[0], k1 ^ _FK[1], k2 ^ _FK[2], k3 ^ _FK[3]]
    rk = []
    for i in range(32):
        t = _tau(k[i + 1] ^ k[i + 2] ^ k[i + 3] ^ _CK[i])
        # key schedule uses L'(B) = B ^ (B <<< 13) ^ (B <<< 23)
        nk = k[i] ^ t ^ _rotl(t, 13) ^ _rotl(t, 23)
        k.append(nk)
        rk.append(nk)
    return tuple(rk)


def _decryption_keys(rk):
    return tuple(rk[31 - i] for i in range(32))


def _crypt_words(rk, x0, x1, x2, x3):
    """32 rounds on four words; returns the output words (the final reverse R applied)."""
    t0, t1, t2, t3 = _T0, _T1, _T2, _T3
    for i in range(0, 32, 4):
        x = x1 ^ x2 ^ x3 ^ rk[i]
        x0 ^= t0[x >> 24] ^ t1[(x >> 16) & 255] ^ t2[(x >> 8) & 255] ^ t3[x & 255]
        x = x2 ^ x3 ^ x0 ^ rk[i + 1]
        x1 ^= t0[x >> 24] ^ t1[(x >> 16) & 255] ^ t2[(x >> 8) & 255] ^ t3[x & 255]
        x = x3 ^ x0 ^ x1 ^ rk[i + 2]
        x2 ^= t0[x >> 24] ^ t1[(x >> 16) & 255] ^ t2[(x >> 8) & 255] ^ t3[x & 255]
        x = x0 ^ x1 ^ x2 ^ rk[i + 3]
        x3 ^= t0[x >> 24] ^ t1[(x >> 16) & 255] ^ t2[(x >> 8) & 255] ^ t3[x & 255]
    return x3, x2, x1, x0


def _crypt_block(rk, block):
    _check_len("block", block, BLOCK_SIZE)
    x0, x1, x2, x3 = struct.unpack(">4I", bytes(block))
    y0, y1, y2, y3 = _crypt_words(rk, x0, x1, x2, x3)
    return struct.pack(">4I", y0, y1, y2, y3)


def encrypt_block(rk, block):
    """Encrypt one 16-byte block with round keys from :func:`expand_key`."""
    return _crypt_block(rk, block)


def decrypt_block(rk, block):
    """Decrypt one 16-byte block with the same (encryption) round keys as encrypt_block."""
    return _crypt_block(_decryption_keys(rk), block)


def _check_blocks(data):
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError("SM4 data must be bytes")
    if len(data) % BLOCK_SIZE:
        raise ValueError("SM4 ECB/CBC data must be a multiple of 16 bytes (pad it first)")
    return bytes(data)


def _ecb(rk, data):
    out = []
    unpack, pack = struct.unpack_from, struct.pack
    for off in range(0, len(data), BLOCK_SIZE):
        x0, x1, x2, x3 = unpack(">4I", data, off)
        y0, y1, y2, y3 = _crypt_words(rk, x0, x1, x2, x3)
        out.append(pack(">4I", y0, y1, y2, y3))
    return b"".join(out)


def encrypt_ecb(key, data):
    """ECB encryption of data (a multiple of 16 bytes, no padding added)."""
    data = _check_blocks(data)
    return _ecb(expand_key(key), data)


def decrypt_ecb(key, data):
    """ECB decryption of data (a multiple of 16 bytes, no padding removed)."""
    data = _check_blocks(data)
    return _ecb(_decryption_keys(expand_key(key)), data)


def encrypt_cbc(key, iv, data):
    """CBC encryption, C_i = E(P_i ^ C_{i-1}) with C_0 = iv; no padding added."""
    rk = expand_key(key)
    _check_len("IV", iv, BLOCK_SIZE)
    data = _check_blocks(data)
    c0, c1, c2, c3 = struct.unpack(">4I", bytes(iv))
    out = []
    for off in range(0, len(data), BLOCK_SIZE):
        p0, p1, p2, p3 = struct.unpack_from(">4I", data, off)
        c0, c1, c2, c3 = _crypt_words(rk, p0 ^ c0, p1 ^ c1, p2 ^ c2, p3 ^ c3)
        out.append(struct.pack(">4I", c0, c1, c2, c3))
    return b"".join(out)


def decrypt_cbc(key, iv, data):
    """CBC decryption, P_i = D(C_i) ^ C_{i-1}; no padding removed."""
    rk = _decryption_keys(expand_key(key))
    _check_len("IV", iv, BLOCK_SIZE)
    data = _check_blocks(data)
    v0, v1, v2, v3 = struct.unpack(">4I", bytes(iv))
    out = []
    for off in range(0, len(data), BLOCK_SIZE):
        c0, c1, c2, c3 = struct.unpack_from(">4I", data, off)
        y0, y1, y2, y3 = _crypt_words(rk, c0, c1, c2, c3)
        out.append(struct.pack(">4I", y0 ^ v0, y1 ^ v1, y2 ^ v2, y3 ^ v3))
        v0, v1, v2, v3 = c0, c1, c2, c3
    return b"".join(out)


def ctr(key, iv, data):
    """CTR mode (encryption = decryption) for data of any length.

    The 16-byte iv is the initial counter block, incremented as one 128-bit big-endian
    integer per block and wrapping mod 2^128, as OpenSSL's SM4-CTR does. The counter is kept
    as four 32-bit words so firmware needs no 128-bit integers here.
    """
    rk = expand_key(key)
    _check_len("IV", iv, BLOCK_SIZE)
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError("SM4 data must be bytes")
    data = bytes(data)
    n0, n1, n2, n3 = struct.unpack(">4I", bytes(iv))
    out = []
    full = len(data) - len(data) % BLOCK_SIZE
    for off in range(0, len(data), BLOCK_SIZE):
        k0, k1, k2, k3 = _crypt_words(rk, n0, n1, n2, n3)
        if off < full:
            d0, d1, d2, d3 = struct.unpack_from(">4I", data, off)
            out.append(struct.pack(">4I", d0 ^ k0, d1 ^ k1, d2 ^ k2, d3 ^ k3))
        else:  # final partial block: use the leading bytes of the key stream
            ks = struct.pack(">4I", k0, k1, k2, k3)
            out.append(bytes(data[off + i] ^ ks[i] for i in range(len(data) - off)))
        # counter += 1 with carry across the four words
        n3 = (n3 + 1) & _M
        if n3 == 0:
            n2 = (n2 + 1) & _M
            if n2 == 0:
                n1 = (n1 + 1) & _M
                if n1 == 0:
                    n0 = (n0 + 1) & _M
    return b"".join(out)
