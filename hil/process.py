"""A HIL fixture run as a subprocess: start, wait for its ``ready ...`` line, stop cleanly.

The emulators and doubles of the rig (``appliance-hil hsm-emulator``, ``district-node``) print
one ``ready WHAT`` line on stdout once they serve, log to stderr, and stop on SIGTERM.
:class:`FixtureProcess` is what tests and benchmarks use to run one: stderr goes to a log file
(a temporary one unless given; removed on exit, kept after a failed start), a failed start
raises RuntimeError with that log, and stop() sends SIGTERM, then SIGKILL after a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
#: The process that started this one, read when this module is first imported: before any
#: fixture says it is ready. Read later (when serving starts), a parent killed right after
#: the "ready" line would already be gone, its successor taken for the parent, and the
#: fixture would serve on forever.
PARENT_AT_START = os.getppid()


async def serve_until_stopped(stop: asyncio.Event, *, exit_with_parent: bool,
                              log: Callable[[str], None] | None = None) -> None:
    """The fixture side of the contract: return when ``stop`` is set (a signal handler sets it)
    or, with ``exit_with_parent``, when the process that started this one has exited (a test
    killed with -9 must not leave its doubles serving)."""
    while not stop.is_set():
        if exit_with_parent and os.getppid() != PARENT_AT_START:
            if log is not None:
                log("parent exited")
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


class FixtureProcess:
    """``python -m hil.cli SUBCOMMAND ARGS`` as a subprocess (see the module docstring)."""

    name = "fixture"  # for messages and the log file's name

    def __init__(self, args: Sequence[str], *, ready_timeout: float,
                 log_path: str | os.PathLike[str] | None = None) -> None:
        self.argv = [sys.executable, "-m", "hil.cli", *args, "--exit-with-parent"]
        self.ready_timeout = ready_timeout
        self._own_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = pathlib.Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_line = ""  # what the fixture printed: "ready WHAT"

    def start(self) -> FixtureProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")] if p)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=log, env=env)
        assert self.proc.stdout is not None
        line = read_line(self.proc.stdout.fileno(), self.ready_timeout,
                         lambda: self.proc is not None and self.proc.poll() is not None)
        if line is None or not line.startswith(b"ready "):
            with contextlib.suppress(subprocess.TimeoutExpired):  # stdout closed: exiting
                self.proc.wait(timeout=5)
            status = self.proc.poll()
            what = (f"exited with status {status}" if status is not None
                    else f"not ready after {self.ready_timeout:.0f} s")
            self.stop()
            self._own_log = False  # keep the log of a failed start
            raise RuntimeError(f"{self.name} {what}; its log:\n{self.log_text()}")
        self.ready_line = line.decode(errors="replace")
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait (SIGKILL after ``timeout``); the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self):  # noqa: ANN204 - returns the subclass
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()


def read_line(fd: int, timeout: float, dead: Callable[[], bool]) -> bytes | None:
    """One line from ``fd`` within ``timeout`` seconds; None on timeout or end of file."""
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if sel.select(min(left, 0.2)):
                chunk = os.read(fd, 4096)
                if not chunk:
                    return None
                buf += chunk
            elif dead():
                return None
    return buf.split(b"\n", 1)[0]
