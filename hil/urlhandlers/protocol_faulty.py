"""pyserial ``faulty://`` URL handler: another port behind a noisy line.

Host-driver tests need a line that flips, drops, duplicates and delays bytes without a pty
emulator in the way (for instance ``loop://`` or a socket). This handler opens an inner port
(a device path or any pyserial URL) and runs every byte read and written through
:class:`hil.faults.LineFaults`, one seeded stream per direction, so a run is reproducible::

    hil.urlhandlers.register()
    port = serial.serial_for_url("faulty://?port=/dev/pts/7&flip=0.001&drop=0.001&seed=3",
                                 timeout=0)

URL form: ``faulty://?port=INNER&KEY=VALUE...`` (or ``faulty://INNER_PATH?KEY=VALUE...``)
where INNER is a path or a URL (percent-encode an inner URL that has its own query), KEY is a
line fault of :mod:`hil.faults` (``flip``, ``drop``, ``dup``, ``delay_ms``) or ``seed``
(integer, default 0). ``reset_every`` and ``cut_write`` act on the module, not the line: they
belong to the emulator's ``--faults`` and are refused here.

Delays: a delayed read chunk is held back until its time (``read`` waits for it within its
timeout); a delayed write blocks the writer until the chunk's time, then writes it, which
keeps bytes in order and shows the peer the same arrival times.

Like pyserial's own ``loop://`` (serial/urlhandler/protocol_loop.py) this subclasses
``SerialBase``; port settings are passed on to the inner port, whose own read timeout is a
short poll interval that this class manages.
"""

from __future__ import annotations

import collections
import time
import urllib.parse

import serial
from serial.serialutil import PortNotOpenError, SerialBase, SerialException, Timeout, to_bytes

from hil.faults import FaultSpec, FaultStats, LineFaults

POLL_S = 0.005  # the inner port's read timeout: how long one wait for inner bytes may block
_MODULE_FAULTS = ("reset_every", "cut_write")


class Serial(SerialBase):
    """A port whose bytes pass through seeded line faults on their way in and out."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self._inner: serial.SerialBase | None = None
        self._rx: LineFaults | None = None
        self._tx: LineFaults | None = None
        self._pending: collections.deque[list] = collections.deque()  # [deliver_at, bytes]
        self._cancel_read = False
        self.spec = FaultSpec()
        self.seed = 0
        super().__init__(*args, **kwargs)

    # -- opening ---------------------------------------------------------------------------

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        inner_url, self.spec, self.seed = self.from_url(self._port)
        self._rx = LineFaults(self.spec, self.seed, "rx")
        self._tx = LineFaults(self.spec, self.seed, "tx")
        self._pending.clear()
        inner = serial.serial_for_url(inner_url, do_not_open=True)
        self._inner = inner
        self._apply_settings()
        inner.timeout = POLL_S
        inner.write_timeout = self._write_timeout
        inner.exclusive = self._exclusive
        try:
            inner.open()
        except Exception:
            self._inner = None
            raise
        self.is_open = True

    def from_url(self, url: str) -> tuple[str, FaultSpec, int]:
        """(inner port, fault spec, seed) from a ``faulty://`` URL; SerialException if bad."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() != "faulty":
            raise SerialException(f"expected a faulty:// URL, got {url!r}")
        try:
            options = urllib.parse.parse_qs(parts.query, keep_blank_values=True,
                                            strict_parsing=bool(parts.query))
        except ValueError as exc:
            raise SerialException(f"faulty:// URL {url!r}: bad query: {exc}") from None
        for key, values in options.items():
            if len(values) > 1:
                raise SerialException(f"faulty:// URL {url!r}: option {key!r} given twice")
        inner = options.pop("port", [""])[0] or (parts.netloc + parts.path)
        if not inner:
            raise SerialException(f"faulty:// URL {url!r}: no inner port; add ?port=PATH_OR_URL")
        seed_text = options.pop("seed", ["0"])[0]
        try:
            seed = int(seed_text, 10)
        except ValueError:
            raise SerialException(f"faulty:// URL {url!r}: seed={seed_text!r} is not an "
                                  "integer") from None
        for key in _MODULE_FAULTS:
            if key in options:
                raise SerialException(f"faulty:// URL {url!r}: {key} acts on the module, not "
                                      "the line; use the HSM emulator's --faults for it")
        try:
            spec = FaultSpec.from_items([(k, v[0]) for k, v in options.items()])
        except ValueError as exc:
            raise SerialException(f"faulty:// URL {url!r}: {exc}") from None
        return inner, spec, seed

    def close(self) -> None:
        self.is_open = False
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.close()
        self._pending.clear()

    def _apply_settings(self) -> None:
        inner = self._inner
        if inner is None:
            return
        inner.baudrate = self._baudrate
        inner.bytesize = self._bytesize
        inner.parity = self._parity
        inner.stopbits = self._stopbits
        inner.xonxoff = self._xonxoff
        inner.rtscts = self._rtscts
        inner.dsrdtr = self._dsrdtr

    def _reconfigure_port(self) -> None:
        if self._inner is not None and self._inner.is_open:
            self._apply_settings()
            self._inner.write_timeout = self._write_timeout

    @property
    def inner(self) -> serial.SerialBase:
        """The wrapped port (open while this one is)."""
        if self._inner is None:
            raise PortNotOpenError()
        return self._inner

    @property
    def fault_stats(self) -> dict[str, FaultStats]:
        """What the faults did so far: ``{"rx": ..., "tx": ...}``."""
        if self._rx is None or self._tx is None:
            raise PortNotOpenError()
        return {"rx": self._rx.stats, "tx": self._tx.stats}

    # -- reading ---------------------------------------------------------------------------

    def _pull(self, block: bool) -> None:
        """Move bytes from the inner port through the rx faults into the pending queue.

        With ``block`` it waits up to the inner port's poll timeout for a first byte.
        """
        inner, rx = self.inner, self._rx
        assert rx is not None
        n = inner.in_waiting
        if n == 0 and not block:
            return
        data = inner.read(n or 1)
        if data:
            for at, chunk in rx.apply(data, time.monotonic()):
                self._pending.append([at, chunk])

    def _take_due(self, limit: int) -> bytes:
        now = time.monotonic()
        out = bytearray()
        while self._pending and len(out) < limit and self._pending[0][0] <= now:
            item = self._pending[0]
            room = limit - len(out)
            if len(item[1]) <= room:
                out += item[1]
                self._pending.popleft()
            else:
                out += item[1][:room]
                item[1] = item[1][room:]
        return bytes(out)

    def _due_count(self) -> int:
        now = time.monotonic()
        total = 0
        for at, chunk in self._pending:
            if at > now:
                break
            total += len(chunk)
        return total

    @property
    def in_waiting(self) -> int:
        """Bytes that have arrived through the faulty line and can be read now."""
        if not self.is_open:
            raise PortNotOpenError()
        self._pull(block=False)
        return self._due_count()

    def read(self, size: int = 1) -> bytes:
        if not self.is_open:
            raise PortNotOpenError()
        self._cancel_read = False
        timeout = Timeout(self._timeout)
        out = bytearray()
        while True:
            self._pull(block=False)
            out += self._take_due(size - len(out))
            if len(out) >= size or timeout.expired() or self._cancel_read or not self.is_open:
                break
            if self._pending and self._pending[0][0] - time.monotonic() < POLL_S:
                time.sleep(max(0.0, self._pending[0][0] - time.monotonic()))
            else:
                self._pull(block=True)
        return bytes(out)

    def cancel_read(self) -> None:
        self._cancel_read = True
        if self._inner is not None:
            self._inner.cancel_read()

    def reset_input_buffer(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()
        self.inner.reset_input_buffer()
        self._pending.clear()

    # -- writing ---------------------------------------------------------------------------

    def write(self, data: bytes) -> int:
        """Sends ``data`` through the tx faults; returns ``len(data)`` (what was handed over)."""
        if not self.is_open:
            raise PortNotOpenError()
        data = to_bytes(data)
        tx = self._tx
        assert tx is not None
        for at, chunk in tx.apply(data, time.monotonic()):
            wait = at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.inner.write(chunk)
        return len(data)

    def flush(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()
        self.inner.flush()

    def cancel_write(self) -> None:
        if self._inner is not None:
            self._inner.cancel_write()

    def reset_output_buffer(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()
        self.inner.reset_output_buffer()

    @property
    def out_waiting(self) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        return self.inner.out_waiting

    # -- modem lines: passed through -------------------------------------------------------

    def _update_break_state(self) -> None:
        if self._inner is not None:
            self._inner.break_condition = self._break_state

    def _update_rts_state(self) -> None:
        if self._inner is not None:
            self._inner.rts = self._rts_state

    def _update_dtr_state(self) -> None:
        if self._inner is not None:
            self._inner.dtr = self._dtr_state

    @property
    def cts(self) -> bool:
        return self.inner.cts

    @property
    def dsr(self) -> bool:
        return self.inner.dsr

    @property
    def ri(self) -> bool:
        return self.inner.ri

    @property
    def cd(self) -> bool:
        return self.inner.cd
