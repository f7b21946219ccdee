"""Crypto-module soak: 10^6 frames through the HIL fault injector (hil/hsm_campaign.py).

The campaign fails loudly on any wrong result or double execution. The figure printed is the
frame rate of the faulty campaign against the same campaign on a clean line, measured in the
same run (the cost of recovery), plus the outcome counts.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import report  # noqa: E402

from hil.hsm_campaign import run_campaign  # noqa: E402

FRAMES = int(os.environ.get("SOAK_FRAMES", "1000000"))
FAULTS = "flip=0.001,drop=0.001,dup=0.001,delay_ms=0-20,reset_every=500"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as d:
        start = time.perf_counter()
        clean, _ = run_campaign(Path(d) / "clean.bin", "", seed=1, min_frames=FRAMES // 10)
        clean_rate = clean.frames / (time.perf_counter() - start)
        start = time.perf_counter()
        rig, counts = run_campaign(Path(d) / "faulty.bin", FAULTS, seed=20261129,
                                   min_frames=FRAMES)
        rate = rig.frames / (time.perf_counter() - start)
    print(f"soak: {rig.frames} frames, {rig.resets} module resets, outcomes {counts}, "
          f"faults host->module {rig.to_module.stats.summary()}, "
          f"module->host {rig.to_host.stats.summary()}; no wrong result, no double execution")
    report("faulty-line frames/s (simulated)", rate, "fr/s", "clean-line frames/s", clean_rate)


if __name__ == "__main__":
    main()
