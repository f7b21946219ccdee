"""kill -9 of ``appliance node sync`` at random points: the store reopens consistent and the
next run resumes from its tip.

Two honest district-node doubles serve a 20 000-header chain; the sync runs with 50-header
batches (hundreds of store transactions per run). Each round starts the CLI, waits until it has
opened the store and said where it starts from, lets it run a random 0-350 ms (one round in
ten instead kills at a random point from spawn, which may land before the store is open), then
SIGKILLs it. After every kill the store must open (SQLite quick_check and the store's own
invariants), hold exactly the chain's headers up to its tip, the hash and the body of the set
that signs the next header (without which it could not resume), and a tip no lower than
before. The next run must say it resumes from that tip. When a run reaches the chain's tip the
state is wiped, so that kills keep landing in the middle of a sync, the anchor's first write
included. Set ``SYNC_CRASH_SEED`` to replay a sequence.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.node.store import HeaderStore
from hil.chain import Chain, ChainParams, generate
from hil.district_node import DistrictNodeProcess

REPO = Path(__file__).resolve().parents[2]
BLOCKS = 20_000
KILLS = 55


def _wait_for(path: Path, needles: tuple[str, ...], proc: subprocess.Popen, timeout: float
              ) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines():
            if any(n in line for n in needles):
                return line
        if proc.poll() is not None:
            return None
        time.sleep(0.005)
    raise AssertionError(f"the sync did not start in {timeout} s:\n{path.read_text()}")


def test_kill_9_during_sync(tmp_path: Path) -> None:
    seed = int(os.environ.get("SYNC_CRASH_SEED", "0")) or random.randrange(1, 10**9)
    rng = random.Random(seed)
    print(f"SYNC_CRASH_SEED={seed}")
    chain_dir = tmp_path / "chain"
    generate(chain_dir, ChainParams(seed="crash", validators=4, set_change_every=3000,
                                    commit_every=100), BLOCKS)
    copies = []
    for i in range(2):
        copies.append(tmp_path / f"node{i}")
        shutil.copytree(chain_dir, copies[-1])
    with Chain.open(chain_dir, readonly=True) as chain:
        ids = {h: chain.block_id(h) for h in range(BLOCKS)}
        tip_height = chain.tip_height
        next_hash = {h: chain.validator_set_hash_for(h + 1) for h in range(BLOCKS)}
        raw = {h: chain.header(h) for h in range(BLOCKS)}
    state = tmp_path / "state"
    db = state / "node" / "headers.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with DistrictNodeProcess(copies[0], block_interval_ms=0) as a, \
            DistrictNodeProcess(copies[1], block_interval_ms=0) as b:
        argv = [sys.executable, "-m", "appliance.cli", "node", "sync", "--trust",
                str(chain_dir / "trust.cbor"), "--state", str(state), "--peer", a.url,
                "--peer", b.url, "--batch", "50", "--timeout", "30"]
        kills = completed = resets = rounds = 0
        kill_tips: list[int | None] = []
        before: int | None = None  # the tip the store had before this round
        while kills < KILLS:
            rounds += 1
            assert rounds < 4 * KILLS, "runs keep finishing before they can be killed"
            log = tmp_path / f"sync{rounds}.log"
            with open(log, "w") as err:
                proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
            try:
                if rng.random() < 0.1:
                    time.sleep(rng.uniform(0.05, 0.6))  # anywhere from spawn on
                else:
                    line = _wait_for(log, ("starting from the trust anchor", "resuming from"),
                                     proc, 30)
                    if before is not None and line is not None:
                        assert f"resuming from the stored tip {before} " in line, line
                    time.sleep(rng.uniform(0, 0.35))
            finally:
                if proc.poll() is None:
                    proc.kill()
                    kills += 1
                    killed = True
                else:
                    killed = False
                proc.wait()
            if not killed:
                assert proc.returncode == 0, log.read_text()
                completed += 1
            tip = None
            if db.exists():
                with HeaderStore.open(db) as store:  # quick_check + the store's invariants
                    if store.initialized:
                        t = store.tip()
                        tip = t.height
                        assert t.block_id == ids[tip]
                        assert t.next_set_hash == next_hash[tip]
                        assert store.validator_set(t.next_set_hash) is not None
                        for h, block_id, header in store.headers(store.window_start(), tip + 1):
                            assert (block_id, header) == (ids[h], raw[h]), h
                        assert store.alarms() == [] and store.evidence() == []
            if before is not None:
                assert tip is not None and tip >= before, (before, tip)
            if killed:
                kill_tips.append(tip)
            before = tip
            if tip == tip_height:
                shutil.rmtree(state)  # start over, so that kills keep landing mid-sync
                before = None
                resets += 1
        # Finally a run without a kill resumes and completes.
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    with HeaderStore.open(db) as store:
        assert store.tip().height == tip_height and store.tip().block_id == ids[tip_height]
    mid = [t for t in kill_tips if t is not None and 0 < t < tip_height]
    print(f"{kills} kills in {rounds} rounds ({completed} runs finished, {resets} resets), "
          f"{len(mid)} with a partial chain stored")
    assert kills >= 50
    assert len(mid) >= 25  # most kills landed in the middle of a sync, not before or after


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s"]))
