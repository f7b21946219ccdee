"""Small canonical CBOR codec for the crypto module (MicroPython has no cbor2).

Same profile as ``appliance.wire`` (RFC 8949 core deterministic encoding, narrowed), so a
payload encodes to the same bytes on the host and in the firmware, and both reject the same
inputs: definite lengths, shortest-form heads, no floats, no tags, no simple values other than
false/true/null, integers in [-2**64, 2**64 - 1], byte and text strings, arrays, and maps whose
keys are text strings of at most 23 UTF-8 bytes, sorted shorter first then bytewise, unique.

The decoder parses in one pass and checks canonicity as it goes (instead of re-encoding and
comparing, as wire does). It is written for untrusted serial input on a small device: the size
limit is checked before anything else, a declared length or item count larger than what is
left of the input fails before any allocation, nesting is limited, and UTF-8 is validated here
because MicroPython's str decoding accepts surrogates and overlong forms.

Exact types only, as in wire (``type(x) is int``): MicroPython's bool is not an int subclass,
and on CPython an int subclass such as IntEnum is refused rather than reinterpreted.
"""

import struct

MAX_SIZE = 4096  # the largest frame payload
MAX_DEPTH = 16  # nested arrays/maps, empty ones counted; the parser recurses, keep it small
MAX_KEY_BYTES = 23  # keys fit the one-byte text-string head
_INT_MAX = 0xFFFFFFFFFFFFFFFF
_INT_MIN = -0x10000000000000000


class CborError(ValueError):
    """Data that is not canonical CBOR of the profile, or an object that cannot be encoded."""


# ---------------------------------------------------------------------------------------------
# encoding


def encode(obj, max_depth=MAX_DEPTH):
    """Return the canonical CBOR encoding of obj (byte-identical to appliance.wire.encode)."""
    out = bytearray()
    _encode(out, obj, 0, max_depth)
    return bytes(out)


def _head(out, major, n):
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(mt | 25)
        out += struct.pack(">H", n)
    elif n < 0x100000000:
        out.append(mt | 26)
        out += struct.pack(">I", n)
    else:
        out.append(mt | 27)
        out += n.to_bytes(8, "big")


def _text_bytes(text):
    try:
        raw = text.encode("utf-8")
    except UnicodeError:  # CPython: lone surrogates
        raise CborError("text string is not encodable as UTF-8") from None
    if not utf8_valid(raw):  # MicroPython encodes lone surrogates instead of raising
        raise CborError("text string is not encodable as UTF-8")
    return raw


def _encode(out, obj, depth, max_depth):
    kind = type(obj)
    if kind is bool:
        out.append(0xF5 if obj else 0xF4)
    elif obj is None:
        out.append(0xF6)
    elif kind is int:
        if obj >= 0:
            if obj > _INT_MAX:
                raise CborError("integer outside [-2**64, 2**64 - 1]")
            _head(out, 0, obj)
        else:
            if obj < _INT_MIN:
                raise CborError("integer outside [-2**64, 2**64 - 1]")
            _head(out, 1, -1 - obj)
    elif kind is bytes or kind is bytearray or kind is memoryview:
        raw = bytes(obj)
        _head(out, 2, len(raw))
        out += raw
    elif kind is str:
        raw = _text_bytes(obj)
        _head(out, 3, len(raw))
        out += raw
    elif kind is list or kind is tuple or kind is dict:
        if depth >= max_depth:  # also stops cyclic structures
            raise CborError("nesting deeper than %d" % max_depth)
        if kind is dict:
            items = []
            for key in obj:
                if type(key) is not str:
                    raise CborError("map key is not a text string")
                raw = _text_bytes(key)
                if len(raw) > MAX_KEY_BYTES:
                    raise CborError("map key of %d bytes > %d" % (len(raw), MAX_KEY_BYTES))
                items.append((len(raw), raw, key))
            items.sort()  # keys are unique, so the tuples never tie on (len, raw)
            _head(out, 5, len(items))
            for n, raw, key in items:
                out.append(0x60 | n)
                out += raw
                _encode(out, obj[key], depth + 1, max_depth)
        else:
            _head(out, 4, len(obj))
            for item in obj:
                _encode(out, item, depth + 1, max_depth)
    else:
        raise CborError("unsupported type %s" % kind.__name__)


# ---------------------------------------------------------------------------------------------
# decoding


def decode(data, max_size=MAX_SIZE, max_depth=MAX_DEPTH):
    """Decode exactly one canonical CBOR item of the profile; raise CborError otherwise."""
    kind = type(data)
    if kind is not bytes and kind is not bytearray and kind is not memoryview:
        raise CborError("expected bytes, got %s" % kind.__name__)
    size = getattr(data, "nbytes", None)  # CPython memoryview; MicroPython's has only len()
    if size is None:
        size = len(data)
    if size > max_size:
        raise CborError("%d bytes > %d" % (size, max_size))
    data = bytes(data)
    if not data:
        raise CborError("truncated: empty input")
    obj, pos = _item(data, 0, 0, max_depth)
    if pos != len(data):
        raise CborError("%d bytes after the item" % (len(data) - pos))
    return obj


def _arg(data, pos, ai):
    """Parse the argument of a head whose additional info is ai; return (value, next pos)."""
    if ai < 24:
        return ai, pos
    if ai == 24:
        width, low = 1, 24
    elif ai == 25:
        width, low = 2, 0x100
    elif ai == 26:
        width, low = 4, 0x10000
    elif ai == 27:
        width, low = 8, 0x100000000
    elif ai == 31:
        raise CborError("indefinite length or break")
    else:
        raise CborError("reserved additional information %d" % ai)
    end = pos + width
    if end > len(data):
        raise CborError("truncated head")
    value = int.from_bytes(data[pos:end], "big")
    if value < low:
        raise CborError("head is not in shortest form")
    return value, end


def _item(data, pos, depth, max_depth):
    """Parse the item at pos (depth = number of enclosing containers); return (obj, next pos)."""
    if pos >= len(data):
        raise CborError("truncated")
    ib = data[pos]
    major = ib >> 5
    ai = ib & 0x1F
    pos += 1
    if major == 7:
        if ai == 20:
            return False, pos
        if ai == 21:
            return True, pos
        if ai == 22:
            return None, pos
        if 25 <= ai <= 27:
            raise CborError("floats are not allowed")
        raise CborError("simple value or break 0x%02x" % ib)
    if major == 6:
        raise CborError("tags are not allowed")
    n, pos = _arg(data, pos, ai)
    left = len(data) - pos
    if major == 0:
        return n, pos
    if major == 1:
        return -1 - n, pos
    if major == 2 or major == 3:
        if n > left:
            raise CborError("string of %d bytes, %d left" % (n, left))
        raw = data[pos:pos + n]
        if major == 2:
            return raw, pos + n
        return _text(raw), pos + n
    if depth >= max_depth:
        raise CborError("nesting deeper than %d" % max_depth)
    if major == 4:
        if n > left:  # every item takes at least one byte
            raise CborError("array of %d items, %d bytes left" % (n, left))
        items = []
        for _ in range(n):
            item, pos = _item(data, pos, depth + 1, max_depth)
            items.append(item)
        return items, pos
    # major 5: a map; every entry takes at least two bytes
    if n > left // 2:
        raise CborError("map of %d entries, %d bytes left" % (n, left))
    result = {}
    prev_len = -1
    prev = b""
    for _ in range(n):
        if pos >= len(data):
            raise CborError("truncated")
        kb = data[pos]
        if kb >> 5 != 3:
            raise CborError("map key is not a text string")
        klen = kb & 0x1F
        if klen > MAX_KEY_BYTES:  # 24+: longer than 23 bytes, non-shortest or indefinite
            raise CborError("map key longer than %d bytes or malformed" % MAX_KEY_BYTES)
        pos += 1
        if pos + klen > len(data):
            raise CborError("truncated map key")
        raw = data[pos:pos + klen]
        pos += klen
        if klen < prev_len or (klen == prev_len and raw <= prev):
            raise CborError("map keys not in canonical order or duplicated")
        prev_len = klen
        prev = raw
        value, pos = _item(data, pos, depth + 1, max_depth)
        result[_text(raw)] = value
    return result, pos


def _text(raw):
    if not utf8_valid(raw):
        raise CborError("text string is not valid UTF-8")
    return raw.decode("utf-8")


def utf8_valid(raw):
    """True if raw is well-formed UTF-8 (Unicode table 3-7: no overlong, surrogate, > U+10FFFF)."""
    n = len(raw)
    i = 0
    while i < n:
        c = raw[i]
        if c < 0x80:
            i += 1
            continue
        lo, hi = 0x80, 0xBF
        if 0xC2 <= c <= 0xDF:
            k = 1
        elif c == 0xE0:
            k, lo = 2, 0xA0
        elif c == 0xED:
            k, hi = 2, 0x9F
        elif 0xE1 <= c <= 0xEF:
            k = 2
        elif c == 0xF0:
            k, lo = 3, 0x90
        elif 0xF1 <= c <= 0xF3:
            k = 3
        elif c == 0xF4:
            k, hi = 3, 0x8F
        else:
            return False
        if i + k >= n:
            return False
        if not lo <= raw[i + 1] <= hi:
            return False
        for j in range(i + 2, i + k + 1):
            if not 0x80 <= raw[j] <= 0xBF:
                return False
        i += k + 1
    return True
