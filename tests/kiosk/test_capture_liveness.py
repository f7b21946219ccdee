"""The liveness state machine on hand-made observation streams (no images): challenge
drawing, turns, blinks, reaction time, time limits, passive checks and track continuity."""

from __future__ import annotations

from collections import Counter

import pytest

from appliance.kiosk.capture.config import ACTIONS, CaptureConfig
from appliance.kiosk.capture.events import ChallengeIssued, Failed, Progress
from appliance.kiosk.capture.liveness import Liveness, Observation, draw_challenge

CFG = CaptureConfig()
BOX = (220, 140, 200, 200)
DT = 1 / 15


def obs(t, *, yaw=2.0, ratio=2.0, moved=True, gate=True, face=BOX):
    return Observation(t, face, yaw, ratio, moved, gate)


class Driver:
    """Feeds a Liveness at 15 fps and keeps the events."""

    def __init__(self, challenge, config=CFG):
        self.lv = Liveness(config, challenge)
        self.t = 0.0
        self.events = []

    def step(self, n=1, **kw):
        for _ in range(n):
            self.events += self.lv.observe(obs(self.t, **kw))
            self.t += DT
        return self

    def settle(self):
        self.step(CFG.settle_frames)
        assert isinstance(self.events[-1], ChallengeIssued)
        return self

    def turn(self, sign, peak=25.0, frames=12, **kw):
        base = 2.0
        for i in range(frames):
            k = 1 - abs(2 * i / (frames - 1) - 1)  # 0 .. 1 .. 0
            self.step(yaw=base + sign * peak * k, **kw)
        return self

    def blink(self, closed_frames=2):
        self.step(2, ratio=2.0)
        self.step(closed_frames, ratio=0.8)
        self.step(2, ratio=2.0)
        return self

    @property
    def failure(self):
        return next((e for e in self.events if isinstance(e, Failed)), None)

    @property
    def progress(self):
        return [e.action for e in self.events if isinstance(e, Progress)]


def test_draw_challenge_uses_secrets_never_repeats_and_mixes():
    lengths, actions = Counter(), Counter()
    for _ in range(600):
        ch = draw_challenge(CFG)
        lengths[len(ch)] += 1
        actions.update(ch)
        assert all(a != b for a, b in zip(ch, ch[1:], strict=False))
        assert "blink" in ch and any(a.startswith("turn") for a in ch)
    assert set(lengths) == {2, 3}
    assert set(actions) == set(ACTIONS) and min(actions.values()) > 200


def test_draw_challenge_bounds_and_injection():
    one = CaptureConfig(min_actions=1, max_actions=1)
    assert {len(draw_challenge(one)) for _ in range(50)} == {1}
    assert draw_challenge(CFG, lambda n: 0) == ("blink", "turn_left")
    with pytest.raises(ValueError):
        CaptureConfig(min_actions=0)
    with pytest.raises(ValueError):
        CaptureConfig(max_actions=4)
    with pytest.raises(ValueError):
        Liveness(CFG, ("nod",))


def test_turns_in_the_asked_direction_pass():
    d = Driver(("turn_left", "turn_right")).settle()
    d.step(4).turn(+1).step(2)
    assert d.progress == ["turn_left"]
    assert isinstance(d.events[-1], ChallengeIssued) or d.events[-1].action == "turn_right"
    d.step(4).turn(-1).step(2)
    assert d.progress == ["turn_left", "turn_right"] and d.lv.state == "passed"


def test_turn_the_other_way_fails_at_once():
    d = Driver(("turn_left",)).settle().step(4).turn(-1)
    assert d.failure == Failed("wrong_action", "a turn the other way")


def test_turn_while_a_blink_is_asked_fails():
    d = Driver(("blink",)).settle().step(4).turn(+1)
    assert d.failure.reason == "wrong_action"


def test_blink_during_a_turn_is_tolerated():
    d = Driver(("turn_right",)).settle().step(3).blink().turn(-1).step(2)
    assert d.lv.state == "passed"


def test_a_half_turn_is_not_a_turn():
    d = Driver(("turn_left",)).settle().step(4).turn(+1, peak=10.0)
    assert d.progress == []
    d.step(round(CFG.turn_time_limit_s / DT))
    assert d.failure == Failed("action_timeout", "turn_left")


def test_turn_must_come_back():
    d = Driver(("turn_left",)).settle().step(4)
    d.step(round(CFG.turn_time_limit_s / DT) + 2, yaw=30.0)  # turned and stays there
    assert d.progress == [] and d.failure.reason == "action_timeout"


def test_yaw_is_relative_to_the_frontal_reading():
    """Hair or light may offset the proxy; turns are measured from the settled reading."""
    d = Driver(("turn_right",))
    d.step(CFG.settle_frames, yaw=12.0)  # the frontal pose reads 12
    d.step(3, yaw=12.0)
    for y in (12, 6, 0, -5, -6, 0, 6, 12, 12):  # a 17-degree turn to image -x
        d.step(yaw=float(y))
    assert d.lv.state == "passed"


def test_blink_passes_and_long_closure_does_not():
    assert Driver(("blink",)).settle().step(4).blink().lv.state == "passed"
    d = Driver(("blink",)).settle().step(4).blink(closed_frames=20)  # 1.3 s shut
    assert d.lv.state == "challenge" and d.progress == []


def test_eyes_already_closing_before_the_prompt_do_not_count():
    d = Driver(("blink",))
    d.step(CFG.settle_frames)
    d.step(1, ratio=0.8)  # closed at the prompt, reopened at once
    d.step(1, ratio=2.0)
    assert d.progress == []
    d.step(3).blink()
    assert d.progress == ["blink"]


def test_nothing_counts_before_the_reaction_time():
    cfg = CaptureConfig(min_reaction_s=0.5)
    d = Driver(("turn_left",), cfg)
    d.step(CFG.settle_frames)
    d.turn(+1, frames=7)  # over within 0.47 s of the prompt
    assert d.progress == []


def test_mirrored_camera_flips_directions():
    d = Driver(("turn_left",), CaptureConfig(mirrored=True)).settle().step(4).turn(-1).step(2)
    assert d.lv.state == "passed"


def test_static_face_fails():
    d = Driver(("blink",))
    d.step(round(CFG.static_window_s / DT) + 2, moved=False)
    assert d.failure.reason == "static_face"


def test_some_motion_keeps_the_face_alive():
    d = Driver(("blink",))
    for _ in range(6):
        d.step(15, moved=False).step(1, moved=True)
    assert d.failure is None or d.failure.reason != "static_face"


def test_positioning_times_out_without_a_good_frame():
    d = Driver(("blink",)).step(round(CFG.positioning_timeout_s / DT) + 2, gate=False)
    assert d.failure.reason == "no_good_face"


def test_face_lost_during_the_challenge_fails():
    d = Driver(("blink",)).settle().step(2)
    d.step(round(CFG.max_face_lost_s / DT) + 2, face=None, yaw=None, ratio=None)
    assert d.failure.reason == "face_lost"


def test_face_jump_during_the_challenge_fails():
    d = Driver(("blink",)).settle().step(2)
    d.step(1, face=(20, 140, 200, 200))
    assert d.failure.reason == "face_changed"


def test_face_jump_while_positioning_restarts_the_track():
    d = Driver(("blink",)).step(2)
    d.step(1, face=(20, 140, 200, 200))
    assert d.lv.track_reset and d.failure is None
    d.step(CFG.settle_frames, face=(20, 140, 200, 200))
    assert isinstance(d.events[-1], ChallengeIssued)


def test_done_machine_ignores_more_frames():
    d = Driver(("blink",)).settle().step(4).blink()
    assert d.lv.done
    n = len(d.events)
    d.step(5, face=None)
    assert len(d.events) == n
