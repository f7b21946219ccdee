"""Consistent Overhead Byte Stuffing (Cheshire & Baker, 1999).

COBS rewrites a byte string so that it contains no 0x00, at a cost of at most one byte per 254
plus one; the link then uses 0x00 as the frame delimiter, and a receiver that lost sync waits for
the next 0x00. Each block is a code byte n (1..255) followed by n - 1 non-zero bytes; a block
with n < 255 stands for those bytes and a zero, except that the zero of the last block is
implicit (it is the delimiter's). A 255 block carries 254 bytes and no zero.

``encode`` follows the paper's reference code, which ends every encoding with a block of its own
(so 254 non-zero bytes encode as FF ... 01). ``decode`` also accepts the shorter form that omits
that final 01 block, as some implementations produce it; both decode to the same bytes, and the
frame CRC, not COBS, is what authenticates a frame.
"""


def encode(data):
    """COBS-encode bytes-like data; the result has no 0x00 and no trailing delimiter."""
    data = bytes(data)
    n = len(data)
    out = bytearray()
    start = 0
    while True:  # one zero-free segment (and the zero after it, if any) per pass
        zero = data.find(b"\x00", start)
        end = n if zero < 0 else zero
        while end - start >= 254:  # full blocks: code 0xFF, 254 bytes, no implied zero
            out.append(0xFF)
            out += data[start:start + 254]
            start += 254
        out.append(end - start + 1)
        out += data[start:end]
        if zero < 0:
            return bytes(out)
        start = zero + 1


def decode(data):
    """Decode one COBS block sequence (without the 0x00 delimiter); raise ValueError if invalid.

    Invalid: empty input, a 0x00 anywhere, or a code byte that points past the end.
    """
    data = bytes(data)
    n = len(data)
    if n == 0:
        raise ValueError("cobs: empty input")
    zero = data.find(b"\x00")
    if zero >= 0:
        raise ValueError("cobs: zero byte at %d" % zero)
    out = bytearray()
    pos = 0
    while pos < n:
        code = data[pos]
        end = pos + code
        if end > n:
            raise ValueError("cobs: block at %d overruns the input" % pos)
        out += data[pos + 1:end]
        pos = end
        if code != 0xFF and pos < n:
            out.append(0)
    return bytes(out)
