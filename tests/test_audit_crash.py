"""kill -9 of a process writing the audit log, at many points: the log always verifies
(after an explicit repair when the kill left a torn tail), and nothing acknowledged is lost.

The writer's clock runs two hours per entry with a two-day retention, so kills also land
while a new segment is created and while old ones are pruned. The kill times are random
(seeded) after the writer said it was appending; the test does not depend on where they land.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.audit import repair, tail, verify

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)

WRITER = r"""
import sys
from appliance.audit import AuditLog, tail
path = sys.argv[1]
last = tail(path, 1)
state = {"now": last[0].ts if last else 1_764_000_000_000}
def clock():
    state["now"] += 2 * 3_600_000
    return state["now"]
log = AuditLog(path, retention_days=2, clock_ms=clock)
i = 0
while True:
    entry = log.append("sign", n=i, note="x" * (i % 900), run=sys.argv[2])
    # acknowledged: fsynced before append returned
    sys.stdout.write(f"{entry.seq}\n")
    sys.stdout.flush()
    i += 1
"""


def test_kill_9_at_many_points(tmp_path):
    rng = random.Random(6)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    acknowledged: list[int] = []
    torn = 0
    for run in range(16):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(run)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # one entry written: appending is under way
        assert first, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(rng.uniform(0, 0.15))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        acknowledged += [int(first)] + [int(x) for x in out.split()]
        report = verify(tmp_path)
        if not report.ok:
            assert report.error == "torn_tail", report
            torn += 1
            assert repair(tmp_path, operator="test").repaired
            report = verify(tmp_path)
        assert report.ok, report
    # every acknowledged entry that retention has not pruned is in the log
    kept = {e.seq for e in tail(tmp_path, 100_000)}
    first_kept = min(kept)
    assert {s for s in acknowledged if s >= first_kept} <= kept
    assert verify(tmp_path).start == "anchor"  # retention ran during the kills
    print(f"16 kills, {len(acknowledged)} acknowledged entries, {torn} torn tails repaired")
