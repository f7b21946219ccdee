"""The two DER structures SM2 and ECDSA need, encoded and strictly decoded.

* ECDSA-Sig-Value (RFC 3279, also SM2 signatures): ``SEQUENCE { INTEGER r, INTEGER s }``
* SM2Cipher (GM/T 0009-2012 7.2): ``SEQUENCE { INTEGER x, INTEGER y, OCTET STRING hash (32),
  OCTET STRING ciphertext }`` -- C1, C3, C2 in that order, as OpenSSL 3 writes and reads it.

Decoders accept only DER: definite minimal lengths (long form only from 128 on), minimal
non-negative INTEGERs, no trailing bytes at any level. Anything else raises ValueError (never
IndexError or the like), because they parse data straight off the network. A non-bytes
argument is a programming error and raises TypeError.
Portable: runs on CPython and MicroPython.
"""

_INTEGER = 0x02
_OCTET_STRING = 0x04
_SEQUENCE = 0x30
_HASH_SIZE = 32  # SM3 digest in SM2Cipher
_MAX_LEN_OCTETS = 4  # lengths up to 4 GiB: far beyond anything we parse


# -- encoding ----------------------------------------------------------------------------


def _len_bytes(n):
    if n < 0x80:
        return bytes((n,))
    out = b""
    while n:
        out = bytes((n & 0xFF,)) + out
        n >>= 8
    return bytes((0x80 | len(out),)) + out


def _tlv(tag, content):
    return bytes((tag,)) + _len_bytes(len(content)) + content


def _integer(x):
    """Minimal two's-complement INTEGER of a non-negative int."""
    if not isinstance(x, int) or x < 0:
        raise ValueError("DER INTEGER here must be a non-negative int")
    n = 1
    while x >> (8 * n):
        n += 1
    content = x.to_bytes(n, "big")
    if content[0] & 0x80:  # keep it non-negative: a leading 1 bit would make it negative
        content = b"\x00" + content
    return _tlv(_INTEGER, content)


def _octets(data):
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError("DER OCTET STRING content must be bytes")
    return _tlv(_OCTET_STRING, bytes(data))


def encode_signature(r, s):
    """DER ``SEQUENCE { INTEGER r, INTEGER s }``."""
    return _tlv(_SEQUENCE, _integer(r) + _integer(s))


def encode_sm2_ciphertext(x1, y1, c3, c2):
    """DER SM2Cipher of C1 = (x1, y1), C3 (32-byte SM3 hash) and C2 (the masked data)."""
    if not isinstance(c3, (bytes, bytearray)) or len(c3) != _HASH_SIZE:
        raise ValueError("SM2 C3 must be 32 bytes")
    return _tlv(_SEQUENCE, _integer(x1) + _integer(y1) + _octets(c3) + _octets(c2))


# -- strict decoding ---------------------------------------------------------------------


def _as_bytes(der):
    if isinstance(der, bytes):
        return der
    if isinstance(der, (bytearray, memoryview)):
        return bytes(der)
    raise TypeError("DER input must be bytes")


def _read_tlv(buf, pos, tag):
    """Parse one element with the expected tag at buf[pos:]; returns (content, next_pos)."""
    end = len(buf)
    if pos >= end:
        raise ValueError("DER: truncated (missing element)")
    if buf[pos] != tag:
        raise ValueError("DER: unexpected tag 0x%02x (wanted 0x%02x)" % (buf[pos], tag))
    pos += 1
    if pos >= end:
        raise ValueError("DER: truncated (missing length)")
    first = buf[pos]
    pos += 1
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise ValueError("DER: indefinite length")
    else:
        count = first & 0x7F
        if count > _MAX_LEN_OCTETS:
            raise ValueError("DER: length field too long")
        if pos + count > end:
            raise ValueError("DER: truncated (length field)")
        if buf[pos] == 0:
            raise ValueError("DER: non-minimal length (leading zero)")
        length = 0
        for i in range(count):
            length = (length << 8) | buf[pos + i]
        pos += count
        if length < 0x80:
            raise ValueError("DER: non-minimal length (long form below 128)")
    if length > end - pos:
        raise ValueError("DER: truncated (content shorter than its length)")
    return buf[pos:pos + length], pos + length


def _read_integer(buf, pos):
    content, pos = _read_tlv(buf, pos, _INTEGER)
    if not content:
        raise ValueError("DER: empty INTEGER")
    if content[0] & 0x80:
        raise ValueError("DER: negative INTEGER")
    if len(content) > 1 and content[0] == 0 and not content[1] & 0x80:
        raise ValueError("DER: non-minimal INTEGER (redundant leading zero)")
    return int.from_bytes(content, "big"), pos


def _read_sequence(der):
    """Content of the single top-level SEQUENCE that must fill the whole input."""
    buf = _as_bytes(der)
    content, pos = _read_tlv(buf, 0, _SEQUENCE)
    if pos != len(buf):
        raise ValueError("DER: trailing bytes after the SEQUENCE")
    return content


def decode_signature(der):
    """(r, s) from a DER ECDSA-Sig-Value. Ranges (1 <= r, s < n) are the verifier's job."""
    body = _read_sequence(der)
    r, pos = _read_integer(body, 0)
    s, pos = _read_integer(body, pos)
    if pos != len(body):
        raise ValueError("DER: extra elements in the signature SEQUENCE")
    return r, s


def decode_sm2_ciphertext(der):
    """(x1, y1, c3, c2) from a DER SM2Cipher; C3 must be 32 bytes.

    x1, y1 are returned as ints (C1 on-curve checks belong to the decryptor).
    """
    body = _read_sequence(der)
    x1, pos = _read_integer(body, 0)
    y1, pos = _read_integer(body, pos)
    c3, pos = _read_tlv(body, pos, _OCTET_STRING)
    c2, pos = _read_tlv(body, pos, _OCTET_STRING)
    if pos != len(body):
        raise ValueError("DER: extra elements in the SM2Cipher SEQUENCE")
    if len(c3) != _HASH_SIZE:
        raise ValueError("DER: SM2Cipher hash must be 32 bytes")
    return x1, y1, c3, c2
