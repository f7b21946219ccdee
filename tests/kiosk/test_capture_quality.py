"""The quality gate: every component passes on a good frame and fails, with its hint, on a
frame made to fail it. Frames are synthetic renderings of skimage's astronaut (synth.py)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import synth
from synth import Pose, render

from appliance.kiosk.capture.config import CaptureConfig
from appliance.kiosk.capture.detect import Detector
from appliance.kiosk.capture.quality import HINTS, assess, yaw_proxy

CFG = CaptureConfig()


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(CFG)


def gate(detector: Detector, frame: np.ndarray):
    return assess(frame, detector.detect(frame), CFG)


def crushed(frame: np.ndarray, gamma: float) -> np.ndarray:
    lut = (255 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8)
    return cv2.LUT(frame, lut)


def test_good_frame_passes_every_component(detector):
    q = gate(detector, render(Pose(noise=1.5)))
    assert q.passed, q.components
    assert [c.name for c in q.components] == [
        "single_face_present", "face_size", "centring", "sharpness", "luminance_mean",
        "under_exposure", "over_exposure", "eyes_visible", "head_pose_yaw"]
    assert q.hints == ()
    assert q.component("face_size").measure == "inter_eye"
    assert q.component("face_size").value >= CFG.min_inter_eye_px
    assert 0 < q.score <= 100


# (case, frame maker, failing component, hint, components that must still pass)
CASES = [
    ("no face", lambda: np.full((480, 640, 3), 128, np.uint8),
     "single_face_present", "no_face", []),
    ("two faces", lambda: synth.two_faces(),
     "single_face_present", "one_person", ["face_size", "sharpness", "eyes_visible"]),
    ("too far", lambda: render(Pose(scale=0.6)),
     "face_size", "move_closer", ["centring", "sharpness", "luminance_mean", "eyes_visible"]),
    ("too far, eyes shut", lambda: render(Pose(scale=0.7, eyes_closed=1.0)),
     "face_size", "move_closer", ["centring", "luminance_mean"]),
    ("too close", lambda: render(Pose(scale=2.3)),
     "face_size", "move_back", ["sharpness", "luminance_mean", "eyes_visible"]),
    ("off to the side", lambda: render(Pose(dx=150)),
     "centring", "center_face", ["face_size", "sharpness", "eyes_visible", "head_pose_yaw"]),
    ("too low", lambda: render(Pose(dy=110)),
     "centring", "center_face", ["face_size", "sharpness", "eyes_visible"]),
    ("blurred", lambda: render(Pose(blur=2.5)),
     "sharpness", "hold_still", ["face_size", "centring", "luminance_mean", "eyes_visible"]),
    ("too dark", lambda: render(Pose(brightness=0.2)),
     "luminance_mean", "more_light", ["centring"]),
    ("too bright", lambda: render(Pose(brightness=1.5)),
     "luminance_mean", "less_light", ["face_size", "centring", "eyes_visible"]),
    ("crushed shadows", lambda: crushed(render(), 4.0),
     "under_exposure", "more_light", ["luminance_mean", "face_size", "sharpness"]),
    ("blown highlights", lambda: render(Pose(brightness=1.3)),
     "over_exposure", "less_light", ["luminance_mean", "face_size", "sharpness"]),
    ("eyes closed", lambda: render(Pose(eyes_closed=1.0)),
     "eyes_visible", "open_eyes", ["centring", "sharpness", "luminance_mean"]),
    ("looking aside", lambda: render(Pose(yaw=30)),
     "head_pose_yaw", "look_at_camera", ["sharpness", "luminance_mean", "eyes_visible"]),
    ("looking the other way", lambda: render(Pose(yaw=-35)),
     "head_pose_yaw", "look_at_camera", ["sharpness", "luminance_mean", "eyes_visible"]),
]


@pytest.mark.parametrize("case,make,component,hint,still_pass", CASES,
                         ids=[c[0] for c in CASES])
def test_component_fails_with_its_hint(detector, case, make, component, hint, still_pass):
    q = gate(detector, make())
    assert not q.passed
    c = q.component(component)
    assert not c.passed and c.hint == hint, c
    assert hint in q.hints and hint in HINTS
    for name in still_pass:
        assert q.component(name).passed, (name, q.component(name))


def test_face_width_stands_in_when_eyes_are_not_found(detector):
    q = gate(detector, render(Pose(eyes_closed=1.0)))
    c = q.component("face_size")
    assert c.measure == "face_width" and c.value >= CFG.min_face_width_px and c.passed


def test_thresholds_are_the_config(detector):
    frame = render(Pose(scale=0.9))  # inter-eye distance ~87 px
    assert not gate(detector, frame).component("face_size").passed
    lenient = CaptureConfig(min_inter_eye_px=80)
    assert assess(frame, detector.detect(frame), lenient).component("face_size").passed
    dark = render(Pose(brightness=0.3))  # face mean ~50
    assert gate(detector, dark).component("luminance_mean").passed
    strict = CaptureConfig(min_luminance=60)
    q = assess(dark, detector.detect(dark), strict)
    assert not q.component("luminance_mean").passed


def test_sharpness_falls_with_blur_and_ignores_light(detector):
    values = [gate(detector, render(Pose(blur=b))).component("sharpness").value
              for b in (0, 1, 2, 3)]
    assert values == sorted(values, reverse=True)
    dim = gate(detector, render(Pose(brightness=0.5))).component("sharpness").value
    assert dim == pytest.approx(values[0], rel=0.25)  # contrast-normalised


def test_yaw_proxy_is_monotonic_signed_and_shift_invariant(detector):
    for dx in (-60, 0, 60):
        readings = []
        for yaw in (-35, -20, 0, 20, 35):
            frame = render(Pose(yaw=yaw, dx=dx))
            readings.append(yaw_proxy(frame, detector.detect(frame).face))
        assert all(r is not None for r in readings)
        assert readings == sorted(readings), (dx, readings)
        assert readings[0] < -15 and readings[-1] > 15 and abs(readings[2]) < 8


def test_yaw_proxy_gives_up_rather_than_guess(detector):
    frame = render()
    face = detector.detect(frame).face
    assert yaw_proxy(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), face) is None  # no colour
    blown = render(Pose(brightness=1.35))
    assert yaw_proxy(blown, face) is None  # clipped face: no chroma


def test_score_prefers_the_better_frame(detector):
    best = gate(detector, render(Pose(noise=1.0)))
    softer = gate(detector, render(Pose(blur=0.6, dx=60)))
    assert best.passed and softer.passed
    assert best.score > softer.score
    assert math.isfinite(best.score)


def test_profile_cascade_keeps_a_large_turn_and_its_direction(detector):
    looking_left = detector.detect(render(Pose(yaw=-70)))  # towards image -x
    assert looking_left.faces == [] and looking_left.face is not None
    assert looking_left.profile == -1
    looking_right = detector.detect(render(Pose(yaw=60)))
    assert looking_right.profile == +1
    q = assess(render(Pose(yaw=60)), looking_right, CFG)
    assert not q.passed and q.yaw_deg == 60.0 and q.hints == ("look_at_camera",)


def test_detector_buffers_are_wiped(detector):
    detector.detect(render())
    assert any(b.any() for b in detector.buffers())
    detector.wipe()
    assert all(not b.any() for b in detector.buffers())


def test_a_turned_print_moves_the_yaw_proxy_less_than_a_turned_head(detector):
    def yaw(frame):
        return yaw_proxy(frame, detector.detect(frame).face)

    frontal = yaw(render())
    for deg in (-30, 30):
        paper = yaw(synth.turned_paper(render(), deg)) - frontal
        head = yaw(render(Pose(yaw=deg))) - frontal
        assert abs(paper) < 8 < 15 < abs(head), (deg, paper, head)
