"""Shared by the benchmarks: timing loops, `openssl speed` parsing, ratio lines.

Each benchmark prints ``figure  <value> <unit>  vs <baseline name> <value>  = <ratio>x``; the
baseline is always measured in the same run, because the machines are shared and noisy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable


def rate(fn: Callable[[], object], seconds: float = 2.0, min_calls: int = 3) -> float:
    """Calls per second of ``fn`` over about ``seconds`` of wall time."""
    fn()  # warm caches (key import, context init) outside the measurement
    calls, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        calls += 1
        now = time.perf_counter()
        if now >= deadline and calls >= min_calls:
            return calls / (now - start)


def openssl_speed(*args: str) -> str:
    """Output of ``openssl speed ARGS`` (raises when the command line is missing)."""
    exe = shutil.which("openssl")
    if exe is None:
        raise SystemExit("bench: the openssl command line is needed for its baselines")
    return subprocess.run([exe, "speed", *args], capture_output=True, text=True,
                          check=True, timeout=120).stdout


def openssl_sm2(seconds: int = 2) -> tuple[float, float]:
    """(sign/s, verify/s) from ``openssl speed -seconds N sm2``."""
    out = openssl_speed("-seconds", str(seconds), "sm2")
    m = re.search(r"SM2 \(CurveSM2\)\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)", out)
    if not m:
        raise SystemExit("bench: cannot read `openssl speed sm2` output:\n" + out)
    return float(m.group(1)), float(m.group(2))


def openssl_throughput(evp: str, size: int, seconds: int = 2) -> float:
    """MB/s (10^6 bytes) of ``openssl speed -evp NAME`` on ``size``-byte buffers."""
    out = openssl_speed("-seconds", str(seconds), "-bytes", str(size), "-evp", evp)
    m = re.search(r"^%s\s+([\d.]+)k" % re.escape(evp), out, re.M | re.I)
    if not m:
        raise SystemExit("bench: cannot read `openssl speed -evp %s` output:\n%s" % (evp, out))
    return float(m.group(1)) / 1000.0


def report(name: str, value: float, unit: str, baseline: str, base: float,
           goal: float | None = None) -> None:
    ratio = value / base if base else float("inf")
    line = "%-38s %12.1f %-6s vs %-34s %12.1f  = %6.2fx" % (name, value, unit, baseline, base,
                                                           ratio)
    if goal is not None:
        line += "  (goal >= %gx: %s)" % (goal, "met" if ratio >= goal else "NOT met")
    print(line, flush=True)
