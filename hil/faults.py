"""Seeded line faults for the crypto-module link: bit flips, drops, duplicates, delays, resets.

The host driver claims to survive a noisy UART (NAK, retransmission, resync on 0x00, exactly
once on the module). That claim is only testable if the noise is reproducible: every fault
here comes from a ``random.Random`` seeded by the caller, so a failing soak run is replayed by
its seed. The code is sans-I/O (bytes and timestamps in, scheduled bytes out) so that the same
fault model serves the pty emulator (``hil.hsm_emulator``) and the pyserial ``faulty://`` URL
handler (``hil.urlhandlers.protocol_faulty``), and can be property-tested without any port.

Spec syntax (``--faults`` on the command line, query options of ``faulty://``)::

    flip=0.001,drop=0.001,dup=0.001,delay_ms=0-50,reset_every=500,cut_write=0.01

- ``flip``, ``drop``, ``dup``: per-byte probabilities in [0, 1]. A flipped byte has one random
  bit inverted; a dropped byte is lost; a duplicated byte arrives twice.
- ``delay_ms=LO-HI`` (or ``delay_ms=N``): each chunk handed to :meth:`LineFaults.apply` is
  delayed by a uniform draw from [LO, HI] milliseconds, but never overtakes an earlier chunk.
- ``reset_every=N``: the emulator power-resets the module every N host-to-module frames
  (:class:`FrameCounter`); 0 = never.
- ``cut_write=P``: handed to the firmware as ``--cut-write P``: each key-store write is cut
  short by a simulated power failure with probability P.

Every key is optional; an empty spec injects nothing.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields

__all__ = ["FaultSpec", "FaultStats", "FrameCounter", "LineFaults"]

_PROBABILITIES = ("flip", "drop", "dup", "cut_write")
_KNOWN = ("flip", "drop", "dup", "delay_ms", "reset_every", "cut_write")


@dataclass(frozen=True)
class FaultSpec:
    """What to inject; parse one from text with :meth:`parse`."""

    flip: float = 0.0
    drop: float = 0.0
    dup: float = 0.0
    delay_ms: tuple[float, float] = (0.0, 0.0)
    reset_every: int = 0
    cut_write: float = 0.0

    def __post_init__(self) -> None:
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"fault {name}={value!r}: a probability must be in [0, 1]")
        lo, hi = self.delay_ms
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
            raise ValueError(f"fault delay_ms={lo!r}-{hi!r}: need 0 <= LO <= HI milliseconds")
        if isinstance(self.reset_every, bool) or not isinstance(self.reset_every, int) or \
                self.reset_every < 0:
            raise ValueError(f"fault reset_every={self.reset_every!r}: need an integer >= 0")

    @classmethod
    def parse(cls, text: str | None) -> FaultSpec:
        """``"flip=0.001,delay_ms=0-50"`` -> FaultSpec; ValueError naming the bad item."""
        if text is None or not text.strip():
            return cls()
        items = []
        for item in text.split(","):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"fault spec {text!r}: item {item.strip()!r} is not KEY=VALUE")
            items.append((key, value))
        return cls.from_items(items, context=text)

    @classmethod
    def from_items(cls, items: list[tuple[str, str]], context: str = "") -> FaultSpec:
        """A spec from (key, value) text pairs, e.g. the query options of a URL."""
        where = f"fault spec {context!r}: " if context else ""
        kwargs: dict[str, object] = {}
        for raw_key, raw_value in items:
            key, value = raw_key.strip(), raw_value.strip()
            if key not in _KNOWN:
                raise ValueError(f"{where}unknown fault {key!r} (known: {', '.join(_KNOWN)})")
            if key in kwargs:
                raise ValueError(f"{where}fault {key!r} given twice")
            try:
                kwargs[key] = _convert(key, value)
            except ValueError as exc:
                raise ValueError(f"{where}{exc}") from None
        try:
            return cls(**kwargs)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"{where}{exc}") from None

    @property
    def line_active(self) -> bool:
        """True when the spec alters bytes or their timing (flip, drop, dup or delay)."""
        return bool(self.flip or self.drop or self.dup or self.delay_ms[1])

    def __str__(self) -> str:
        """The canonical text form; ``FaultSpec.parse(str(spec)) == spec``."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            if f.name == "delay_ms":
                value = "%s-%s" % (_num(value[0]), _num(value[1]))
            elif isinstance(value, float):
                value = _num(value)
            parts.append(f"{f.name}={value}")
        return ",".join(parts)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _convert(key: str, value: str) -> object:
    if key == "reset_every":
        try:
            n = int(value, 10)
        except ValueError:
            raise ValueError(f"fault reset_every={value!r}: need an integer >= 0") from None
        return n
    if key == "delay_ms":
        lo_text, sep, hi_text = value.partition("-")
        try:
            lo = float(lo_text)
            hi = float(hi_text) if sep else lo
        except ValueError:
            raise ValueError(f"fault delay_ms={value!r}: need LO-HI or N milliseconds, "
                             "e.g. delay_ms=0-50") from None
        return (lo, hi)
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"fault {key}={value!r}: a probability must be a number in [0, 1]"
                         ) from None


@dataclass
class FaultStats:
    """Counts of what a :class:`LineFaults` did, for log lines and tests."""

    bytes_in: int = 0
    bytes_out: int = 0
    flipped: int = 0
    dropped: int = 0
    duplicated: int = 0
    chunks: int = 0
    delay_total_s: float = field(default=0.0)

    def summary(self) -> str:
        return ("in=%d out=%d flipped=%d dropped=%d duplicated=%d chunks=%d delay_avg_ms=%.1f"
                % (self.bytes_in, self.bytes_out, self.flipped, self.dropped, self.duplicated,
                   self.chunks, 1000 * self.delay_total_s / self.chunks if self.chunks else 0))


class LineFaults:
    """One direction of a faulty line: bytes in, scheduled (possibly damaged) bytes out.

    Deterministic for a given (spec, seed, stream); use a different ``stream`` name for each
    direction so that the two directions draw independent faults from one seed. Bytes keep
    their order: the ``deliver_at`` times returned are non-decreasing across calls, so a FIFO
    consumer that waits for each item's time delivers them in order.
    """

    def __init__(self, spec: FaultSpec, seed: int | None = 0, stream: str = "") -> None:
        self.spec = spec
        # A str seed is hashed with SHA-512 by random.seed: stable across runs and processes.
        self._rng = random.Random(None if seed is None else f"{seed}/{stream}")
        self._last_at = -math.inf
        self.stats = FaultStats()

    def apply(self, data: bytes, now: float) -> list[tuple[float, bytes]]:
        """The faulted form of ``data`` (read or written at ``now``) with its delivery time.

        Returns ``[]`` when every byte was dropped, else one ``(deliver_at, bytes)`` item.
        """
        spec, rng, stats = self.spec, self._rng, self.stats
        stats.bytes_in += len(data)
        if not data:
            return []
        if spec.flip or spec.drop or spec.dup:
            out = bytearray()
            for b in data:
                if spec.drop and rng.random() < spec.drop:
                    stats.dropped += 1
                    continue
                if spec.flip and rng.random() < spec.flip:
                    b ^= 1 << rng.randrange(8)
                    stats.flipped += 1
                out.append(b)
                if spec.dup and rng.random() < spec.dup:
                    out.append(b)
                    stats.duplicated += 1
            result = bytes(out)
        else:
            result = bytes(data)
        lo, hi = spec.delay_ms
        delay = rng.uniform(lo, hi) / 1000.0 if hi else 0.0
        at = max(now + delay, self._last_at)
        self._last_at = at
        if not result:
            return []
        stats.chunks += 1
        stats.delay_total_s += at - now
        stats.bytes_out += len(result)
        return [(at, result)]


class FrameCounter:
    """Counts host-to-module frames for ``reset_every``.

    A frame is a non-empty run of bytes ended by its 0x00 delimiter; a run of 0x00 (the host's
    resync) counts as no frame. :meth:`feed` returns the offset just past the delimiter of the
    ``every``-th frame since the last :meth:`reset`; from then on :meth:`should_reset` is True
    and nothing more is counted until :meth:`reset` (the module restarted).
    """

    def __init__(self, every: int) -> None:
        if every < 0:
            raise ValueError("reset_every must be >= 0")
        self.every = every
        self.count = 0
        self._in_frame = False
        self._due = False

    def feed(self, data: bytes) -> int | None:
        if not self.every or self._due:
            return None
        for i, b in enumerate(data):
            if b:
                self._in_frame = True
            elif self._in_frame:
                self._in_frame = False
                self.count += 1
                if self.count >= self.every:
                    self._due = True
                    return i + 1
        return None

    def should_reset(self) -> bool:
        return self._due

    def reset(self) -> None:
        """The module restarted: count afresh (a frame cut in half by the reset is gone)."""
        self.count = 0
        self._in_frame = False
        self._due = False
