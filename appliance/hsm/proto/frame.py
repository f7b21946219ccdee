"""Frames of the crypto-module link (protocol §2): encoding and a streaming decoder.

    wire = COBS(body) || 0x00
    body = ver(1)=1  type(1)  seq(1)  len(2, big-endian)  payload(len)  crc(4, big-endian)
    crc  = CRC-32 (zlib) over ver..payload;  len <= 4096

``FrameDecoder`` turns an arbitrary byte stream (chunks of any size, line noise included) into
``Frame`` and ``FrameError`` items and never raises, so both link ends can feed it whatever the
port delivered. Checks run in the order cobs, length, crc, version: the seq of a FrameError is
only trusted (and reported) once the CRC has passed, i.e. for version errors; otherwise it is 0,
which is what the NAK carries when the seq is unknown.
"""

import struct

try:
    from . import cobs
except ImportError:
    import cobs

VERSION = 1
REQ, RSP, WAIT, NAK, BOOT = 1, 2, 3, 4, 5
MAX_PAYLOAD = 4096
HEADER = 5  # ver, type, seq, len
OVERHEAD = HEADER + 4  # + crc
MAX_BODY = OVERHEAD + MAX_PAYLOAD
# COBS adds one code byte per 254 bytes plus one; a longer run without 0x00 cannot be a frame.
MAX_ENCODED = MAX_BODY + MAX_BODY // 254 + 1


def _crc32_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = None


def crc32_py(data, crc=0):
    """Table-driven CRC-32 (IEEE 802.3, reflected, as zlib.crc32), for ports without binascii."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _crc32_table()
    table = _TABLE
    c = crc ^ 0xFFFFFFFF
    for byte in data:
        c = table[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


try:
    from binascii import crc32 as _crc32
except ImportError:  # a MicroPython port built without binascii
    _crc32 = None
if _crc32 is None:
    crc32 = crc32_py
else:

    def crc32(data, crc=0):
        """CRC-32 as zlib.crc32, as an unsigned 32-bit int."""
        return _crc32(data, crc) & 0xFFFFFFFF


class Frame:
    """A frame that passed every check: .type, .seq (0..255) and .payload (bytes)."""

    def __init__(self, ftype, seq, payload=b""):
        self.type = ftype
        self.seq = seq
        self.payload = payload

    def __eq__(self, other):
        return (isinstance(other, Frame) and self.type == other.type and self.seq == other.seq
                and self.payload == other.payload)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "Frame(%d, %d, %r)" % (self.type, self.seq, self.payload)


class FrameError(ValueError):
    """A dropped frame: .reason is "cobs", "length", "version" or "crc"; .seq is 0 if unknown."""

    def __init__(self, reason, seq=0):
        super().__init__(reason)
        self.reason = reason
        self.seq = seq

    def __repr__(self):
        return "FrameError(%r, %d)" % (self.reason, self.seq)


def encode_frame(ftype, seq, payload=b""):
    """Return the wire bytes of one frame: COBS(body) followed by the 0x00 delimiter."""
    if not 0 <= ftype <= 255 or not 0 <= seq <= 255:
        raise ValueError("frame type and seq must be bytes")
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("payload of %d bytes > %d" % (len(payload), MAX_PAYLOAD))
    body = struct.pack(">BBBH", VERSION, ftype, seq, len(payload)) + payload
    body += struct.pack(">I", crc32(body))
    return cobs.encode(body) + b"\x00"


def decode_body(encoded):
    """Check one delimited run (COBS-encoded, without the 0x00); return a Frame or FrameError."""
    try:
        body = cobs.decode(encoded)
    except ValueError:
        return FrameError("cobs")
    if len(body) < OVERHEAD:
        return FrameError("length")
    ver, ftype, seq, length = struct.unpack(">BBBH", body[:HEADER])
    if length > MAX_PAYLOAD or length != len(body) - OVERHEAD:
        return FrameError("length")
    (crc,) = struct.unpack(">I", body[-4:])
    if crc != crc32(body[:-4]):
        return FrameError("crc")
    if ver != VERSION:
        return FrameError("version", seq)
    return Frame(ftype, seq, body[HEADER:-4])


class FrameDecoder:
    """Streaming decoder: feed(data) -> list of Frame / FrameError items, in order; never raises.

    Empty runs (0x00 0x00) are ignored. A run that grows past MAX_ENCODED bytes without a 0x00
    yields one FrameError("length") and is discarded up to the next 0x00, so a babbling line
    cannot grow the buffer. Feeding byte by byte gives the same items as feeding all at once.
    """

    def __init__(self):
        self._buf = bytearray()
        self._discarding = False

    def reset(self):
        """Forget any partial frame (e.g. after the peer restarted)."""
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data):
        items = []
        data = bytes(data)
        n = len(data)
        start = 0
        while start < n:
            zero = data.find(b"\x00", start)
            end = n if zero < 0 else zero
            if not self._discarding:
                if len(self._buf) + (end - start) > MAX_ENCODED:
                    items.append(FrameError("length"))
                    self._buf = bytearray()
                    self._discarding = True
                else:
                    self._buf += data[start:end]
            if zero < 0:
                break
            if self._discarding:
                self._discarding = False
            elif self._buf:
                items.append(decode_body(bytes(self._buf)))
                self._buf = bytearray()
            start = zero + 1
        return items
