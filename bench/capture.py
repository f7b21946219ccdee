"""Face-capture benchmark: the per-frame pipeline at 640x480 on one core, and the time from
the first frame to the decision on the synthetic genuine sessions.

Goal from the issue: >= 25 frames/s for the full per-frame pipeline (detection on a 160 px
frame, eyes in the face, the quality gate, liveness, best-frame copy). Baselines, measured in
the same run: the face cascade alone at full resolution, first scanning every window size
(the naive way the downscaling replaces), then told the smallest face the pipeline looks for
(96 px), which makes OpenCV's own pyramid skip the same work. Frames are synthetic
(hil/synthetic_face.py, skimage's public-domain astronaut).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import cv2  # noqa: E402
from _common import rate, report  # noqa: E402

from appliance.kiosk.capture import CaptureConfig, CaptureSession  # noqa: E402
from appliance.kiosk.capture.detect import FRONTAL, Detector, cascade  # noqa: E402
from appliance.kiosk.capture.quality import assess  # noqa: E402
from hil import synthetic_face as synth  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
GOAL_FPS = 25.0


def one_core() -> str:
    cv2.setNumThreads(1)
    try:
        cpu = sorted(os.sched_getaffinity(0))[0]
        os.sched_setaffinity(0, {cpu})
        return f"cpu {cpu}"
    except (AttributeError, OSError):
        return "affinity not set"


def genuine_stream(n: int = 90) -> list:
    """A genuine user's frames (sway, turns, blinks) rendered up front."""
    subject = synth.Subject(7, blink_every=2.0)
    subject.actions += [(0.8, "turn_left"), (2.6, "turn_right"), (4.4, "blink")]
    return [subject.frame(i / 15) for i in range(n)]


def main() -> None:
    where = one_core()
    print(f"# face capture, 640x480, OpenCV {cv2.__version__}, one thread, {where}")
    frames = genuine_stream()
    grays = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames]
    frontal = cascade(FRONTAL)
    cfg = CaptureConfig()

    i = 0

    # the same faces as the pipeline finds: >= 24 px at 160 wide = 96 px at 640
    min_face = round(24 * 640 / cfg.detect_width)

    def full_res_haar():  # the naive way: every window size from the cascade's 24 px up
        nonlocal i
        frontal.detectMultiScale(grays[i % len(grays)], cfg.face_scale_factor,
                                 cfg.face_min_neighbors)
        i += 1

    def full_res_haar_min():  # full resolution, told the smallest face the pipeline finds
        nonlocal i
        frontal.detectMultiScale(grays[i % len(grays)], cfg.face_scale_factor,
                                 cfg.face_min_neighbors, minSize=(min_face, min_face))
        i += 1

    detector = Detector(cfg)

    def detect_and_gate():
        nonlocal i
        f = frames[i % len(frames)]
        assess(f, detector.detect(f), cfg)
        i += 1

    state = {"session": CaptureSession(cfg, challenge=("turn_left", "turn_right", "blink")),
             "t": 0.0}

    def pipeline():
        nonlocal i
        s = state["session"]
        if s.done:
            s.close()
            s = state["session"] = CaptureSession(cfg,
                                                  challenge=("turn_left", "turn_right", "blink"))
        state["t"] += 1 / 15
        s.feed(frames[i % len(frames)], state["t"])
        i += 1

    # interleaved, best of three: the machines are shared and their load drifts
    fns = {"base": full_res_haar, "base_min": full_res_haar_min, "detect": detect_and_gate,
           "pipeline": pipeline}
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(3):
        for k, fn in fns.items():
            runs[k].append(rate(fn, SECONDS / 4))
    state["session"].close()
    base, base_min, detect, fps = (max(runs[k]) for k in fns)
    full_haar_ms = 1000 / base
    naive = "Haar face, 640x480, all sizes"
    same = "Haar face, 640x480, faces >= %d px" % min_face
    report("detection + quality gate", detect, "fps", naive, base)
    report("full per-frame pipeline", fps, "fps", naive, base)
    report("full per-frame pipeline", fps, "fps", same, base_min)
    print("%-38s %12.1f ms (baseline %.1f ms)  goal >= %g fps: %s" % (
        "full per-frame pipeline, per frame", 1000 / fps, full_haar_ms, GOAL_FPS,
        "met" if fps >= GOAL_FPS else "NOT met"), flush=True)

    # time from the first frame to the decision, genuine sessions
    decided, acted, walls = [], [], []
    for case in synth.genuine_cases():
        session = CaptureSession(CaptureConfig(mirrored=case.mirrored),
                                 randbelow=synth.seeded_randbelow(case.seed))
        subject = case.make(session.challenge)
        start = time.perf_counter()
        run = synth.run(session, subject, fps=case.fps)
        walls.append(time.perf_counter() - start)
        session.close()
        if not run.result.passed:
            print(f"  {case.name}: {run.result.reason} ({run.result.detail})")
            continue
        decided.append(run.duration)
        acted.append(subject.answered_by())
    n = len(synth.genuine_cases())
    print(f"# {len(decided)}/{n} genuine sessions passed")
    if decided:
        report("first frame to decision (median)", statistics.median(decided), "s",
               "end of the user's last action", statistics.median(acted))
        report("session processing, wall (median)", statistics.median(walls), "s",
               "the session's stream time", statistics.median(decided))


if __name__ == "__main__":
    main()
