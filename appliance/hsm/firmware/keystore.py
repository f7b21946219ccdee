"""The module's whole persistent state, stored as one record in two alternating regions.

File layout: region A at offset 0 and region B at offset ``REGION``. A record is

    magic(4) = b"GMKS" | seq(4, BE) | len(4, BE) | payload(len, canonical CBOR) | crc32(4, BE)

with the CRC-32 over magic..payload. ``save`` writes the region that does NOT hold the newest
valid record, with seq + 1, so the newest valid record is never touched: a power cut in the
middle of a write leaves a torn region that ``load`` ignores (bad magic, length or CRC), and
the previous state wins. ``load`` takes the valid record with the highest seq (sequence
numbers compare modulo 2**32, so wrapping is harmless); with no valid record (fresh file) it
returns ``default_state()``.

The state (a dict, encoded with mcbor)::

    boot_count   uint
    pin_salt     bytes(16) or None     (None: not yet provisioned; the module sets the
    pin_hash     bytes(32) or None      default PIN on its first boot)
    pin_retries  uint (5 .. 0)
    keys         list of SLOTS entries: None or [alg, private(32), public(65)]
    counters     list of SLOTS uints: signatures made per slot (monotonic)

Power-cut simulation: ``KeyStore(path, cut=f)`` calls ``f(n)`` before writing an n-byte
record; when it returns an int m with 0 <= m < n only the first m bytes are written, then
``PowerCut`` is raised (the process is expected to die, as the module would).
"""

import binascii
import os
import struct

try:
    from ..proto import mcbor
except ImportError:  # flat layout (MicroPython, frozen firmware)
    import mcbor

MAGIC = b"GMKS"
REGION = 4096  # bytes per region; the record must fit (16 keys take about 1.8 KiB)
HEADER = 12  # magic, seq, len
SLOTS = 16
PIN_TRIES = 5
_MAX_PAYLOAD = REGION - HEADER - 4


class PowerCut(BaseException):
    """Simulated power loss in the middle of a store write (test tooling).

    A BaseException so that no ``except Exception`` on the way up can swallow it: the module
    must stop exactly where the power went.
    """


class StoreError(OSError):
    """The state cannot be written (too large for a region)."""


def default_state():
    """The state of a module fresh from the factory (PIN not yet provisioned)."""
    return {
        "boot_count": 0,
        "pin_salt": None,
        "pin_hash": None,
        "pin_retries": PIN_TRIES,
        "keys": [None] * SLOTS,
        "counters": [0] * SLOTS,
    }


def copy_state(state):
    """A copy deep enough that changing the copy never changes ``state``."""
    out = {}
    for k in state:
        v = state[k]
        if isinstance(v, list):
            v = [list(x) if isinstance(x, list) else x for x in v]
        out[k] = v
    return out


def _valid_state(obj):
    if not isinstance(obj, dict):
        return False
    ref = default_state()
    for k in ref:
        if k not in obj:
            return False
    keys, counters = obj["keys"], obj["counters"]
    if not isinstance(keys, list) or len(keys) != SLOTS:
        return False
    if not isinstance(counters, list) or len(counters) != SLOTS:
        return False
    for c in counters:
        if not isinstance(c, int) or isinstance(c, bool) or c < 0:
            return False
    for entry in keys:
        if entry is None:
            continue
        if not isinstance(entry, list) or len(entry) != 3:
            return False
        if not isinstance(entry[1], bytes) or len(entry[1]) != 32:
            return False
        if not isinstance(entry[2], bytes) or len(entry[2]) != 65:
            return False
    r = obj["pin_retries"]
    return isinstance(r, int) and not isinstance(r, bool) and 0 <= r <= PIN_TRIES


def encode_record(seq, state):
    """The bytes of one record (header, payload, CRC)."""
    payload = mcbor.encode(state)
    if len(payload) > _MAX_PAYLOAD:
        raise StoreError("key store record too large")
    body = MAGIC + struct.pack(">II", seq & 0xFFFFFFFF, len(payload)) + payload
    return body + struct.pack(">I", binascii.crc32(body) & 0xFFFFFFFF)


def decode_record(raw):
    """(seq, state) of a region's bytes, or None when it holds no valid record."""
    if len(raw) < HEADER + 4 or raw[:4] != MAGIC:
        return None
    seq, n = struct.unpack(">II", raw[4:HEADER])
    if n > _MAX_PAYLOAD or len(raw) < HEADER + n + 4:
        return None
    body = raw[:HEADER + n]
    (crc,) = struct.unpack(">I", raw[HEADER + n:HEADER + n + 4])
    if binascii.crc32(body) & 0xFFFFFFFF != crc:
        return None
    try:
        state = mcbor.decode(bytes(raw[HEADER:HEADER + n]), REGION)
    except ValueError:
        return None
    if not _valid_state(state):
        return None
    return seq, state


def _newer(a, b):
    """True when sequence number a is after b (mod 2**32)."""
    return a != b and ((a - b) & 0xFFFFFFFF) < 0x80000000


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _create(path):
    """An empty store file, readable by its owner only where the OS has file modes."""
    opener = getattr(os, "open", None)
    if opener is None:  # MicroPython: no modes (on the MCU the store is internal flash)
        with open(path, "wb"):
            pass
        return
    os.close(opener(path, os.O_WRONLY | os.O_CREAT, 0o600))


class KeyStore:
    """The A/B record file at ``path``; ``cut`` is the power-cut hook (see module doc)."""

    def __init__(self, path, cut=None):
        self.path = path
        self.cut = cut
        self._seq = None  # seq of the newest valid record, None when there is none
        self._region = None  # 0 or 1: where that record is
        self._loaded = False
        self.writes = 0  # completed saves (diagnostics)

    def _read_regions(self):
        if not _exists(self.path):
            return [b"", b""]
        out = []
        with open(self.path, "rb") as f:
            for i in range(2):
                f.seek(i * REGION)
                out.append(f.read(REGION))
        return out

    def load(self):
        """The newest valid state, or the defaults when the file holds none."""
        self._loaded = True
        best = None
        regions = self._read_regions()
        for i in range(2):
            rec = decode_record(regions[i])
            if rec is None:
                continue
            if best is None or _newer(rec[0], best[0]):
                best = (rec[0], i, rec[1])
        if best is None:
            self._seq, self._region = None, None
            return default_state()
        self._seq, self._region = best[0], best[1]
        return best[2]

    def save(self, state):
        """Write ``state`` as the new newest record (into the other region)."""
        if not self._loaded:
            self.load()  # learn which region holds the newest record
        if self._seq is None:
            seq, region = 1, 0
        else:
            seq, region = (self._seq + 1) & 0xFFFFFFFF, 1 - self._region
        record = encode_record(seq, state)
        if not _exists(self.path):
            _create(self.path)
        n = len(record)
        m = self.cut(n) if self.cut is not None else None
        torn = isinstance(m, int) and not isinstance(m, bool) and 0 <= m < n
        with open(self.path, "r+b") as f:
            f.seek(region * REGION)
            f.write(record[:m] if torn else record)
            f.flush()
            if torn:
                raise PowerCut("power cut after %d of %d bytes" % (m, n))
            fsync = getattr(os, "fsync", None)  # MicroPython has none: flush is all there is
            if fsync is not None:
                fsync(f.fileno())
        self._seq, self._region = seq, region
        self.writes += 1
