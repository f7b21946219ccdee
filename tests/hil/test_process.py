"""hil/process.py: a fixture started with ``--exit-with-parent`` stops when the process that
started it dies, even by SIGKILL (no double left serving after a crashed test or rig).

Real processes: a parent Python process starts ``appliance-hil identity-service`` (the
lightest double) and prints the double's pid; the test kills the parent with SIGKILL and
waits for the double to be gone. Without the flag the double outlives its parent (the
control), which the test then stops itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hil import identity_service as ids
from hil.process import REPO_ROOT

PARENT = textwrap.dedent("""
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-m", "hil.cli", "identity-service",
                              "--key", sys.argv[1], "--port", "0"] + sys.argv[2:],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = child.stdout.readline()
    assert line.startswith("ready "), line
    print(child.pid, flush=True)
    sys.stdin.read()  # until killed
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def start_parent(key: Path, *flags: str) -> tuple[subprocess.Popen[str], int]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(key), *flags],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=REPO_ROOT)
    assert parent.stdout is not None
    return parent, int(parent.stdout.readline())


@pytest.mark.parametrize("flag", [True, False], ids=["exit-with-parent", "control"])
def test_a_fixture_follows_its_parent_only_when_asked(tmp_path: Path, flag: bool) -> None:
    key = tmp_path / "service.key"
    ids.make_key(key)
    parent, child = start_parent(key, *(["--exit-with-parent"] if flag else []))
    try:
        assert alive(child)
        parent.kill()  # SIGKILL: no chance to stop its child
        parent.wait(timeout=30)
        deadline = time.monotonic() + (30 if flag else 3)
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert alive(child) is not flag
    finally:
        if alive(child):
            os.kill(child, signal.SIGTERM)


LATE_CHILD = textwrap.dedent("""
    import asyncio, os, sys
    from hil import process  # imported first, as hil.cli does before any fixture is ready
    print("ready", flush=True)
    sys.stdin.read()  # EOF: the parent that holds the other end is dead
    while os.getppid() == process.PARENT_AT_START:  # and this process has been re-parented
        pass
    async def serve() -> str:
        try:
            await asyncio.wait_for(process.serve_until_stopped(asyncio.Event(),
                                                               exit_with_parent=True), 20)
        except TimeoutError:
            return "still serving"
        return "returned"
    print(asyncio.run(serve()), flush=True)
""")

LATE_PARENT = textwrap.dedent("""
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE,
                             stdout=open(sys.argv[2], "w"))
    print(child.pid, flush=True)
    sys.stdin.read()  # until killed
""")


def test_a_parent_killed_before_serving_starts_still_stops_the_fixture(tmp_path: Path) -> None:
    """The race behind an old flake: the parent dies between the fixture's "ready" line and the
    start of serving. The fixture must compare with the parent it was started by, not with
    whoever adopted it by then."""
    out = tmp_path / "child.out"
    parent = subprocess.Popen([sys.executable, "-c", LATE_PARENT, LATE_CHILD, str(out)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=REPO_ROOT)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 30
        while "ready" not in out.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        parent.kill()
        parent.wait(timeout=30)
        deadline = time.monotonic() + 60
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert out.read_text().split() == ["ready", "returned"]
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
