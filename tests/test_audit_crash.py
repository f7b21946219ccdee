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
from appliance.gm import sm2

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)

WRITER = r"""
import sys
from appliance.audit import AuditLog, tail
from appliance.gm import sm2
path = sys.argv[1]
last = tail(path, 1)
state = {"now": last[0].ts if last else 1_764_000_000_000}
def clock():
    state["now"] += 2 * 3_600_000
    return state["now"]
class DeviceKey:  # a persisted counter, as the module's: each run starts above the last
    def __init__(self, private, run):
        self.private, self.public_key = private, sm2.public_key_of(private)
        self.last_counter, self.counter = None, run * 1_000_000
    def sign(self, message):
        self.counter += 1
        self.last_counter = self.counter
        return sm2.sign(self.private, message)
signer = DeviceKey(bytes.fromhex(sys.argv[3]), int(sys.argv[2]))
log = AuditLog(path, retention_days=2, clock_ms=clock, signer=signer, checkpoint_every=7)
i = 0
while True:
    entry = log.append("sign", n=i, note="x" * (i % 900), run=sys.argv[2])
    # acknowledged: fsynced before append returned
    sys.stdout.write(f"{entry.seq}\n")
    sys.stdout.flush()
    i += 1
"""


def test_kill_9_at_many_points(tmp_path):
    """Also with checkpoints (every 7 entries and at each new day) signed as they go: a
    kill in the middle of one leaves a torn checkpoint line, repaired like any other."""
    rng = random.Random(6)
    private, public = sm2.generate_keypair()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    acknowledged: list[int] = []
    torn = 0
    for run in range(16):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(run),
                                 private.hex()],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # one entry written: appending is under way
        assert first, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(rng.uniform(0, 0.15))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        acknowledged += [int(first)] + [int(x) for x in out.split()]
        report = verify(tmp_path, public_key=public)
        if not report.ok:
            assert report.error == "torn_tail", report
            torn += 1
            assert repair(tmp_path, operator="test").repaired
            report = verify(tmp_path, public_key=public)
        assert report.ok, report
        assert report.signatures == ("verified" if report.checkpoints else None)
    # every acknowledged entry that retention has not pruned is in the log
    kept = {e.seq for e in tail(tmp_path, 100_000)}
    first_kept = min(kept)
    assert {s for s in acknowledged if s >= first_kept} <= kept
    assert verify(tmp_path).start == "anchor"  # retention ran during the kills
    kinds = verify(tmp_path).kinds
    assert kinds["checkpoint"] > 0  # >= 16 entries: one after the 7th at least
    print(f"16 kills, {len(acknowledged)} acknowledged entries, {torn} torn tails repaired, "
          f"{kinds['checkpoint']} checkpoints kept")
