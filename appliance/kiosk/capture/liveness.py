"""Challenge-response liveness with passive checks alongside; sans-I/O.

:class:`Liveness` is fed one :class:`Observation` per frame (the session measures it) and
returns events. It never reads a clock: time is the frame's timestamp.

* **Challenge.** 1-3 actions drawn per session (:func:`draw_challenge`, from ``secrets``),
  never the same action twice in a row, a blink and a turn in every challenge of two or
  more; each must start after the prompt plus a reaction time and finish within its limit.
  A turn is the yaw proxy (:func:`.quality.yaw_proxy`, or the profile cascade for a large
  turn), taken relative to its frontal reading while settling, passing ``turn_min_yaw_deg``
  in the asked direction and coming back within ``turn_return_yaw_deg``; a turn the other
  way fails at once (``wrong_action``), and so does any turn while a blink is asked. A blink
  is the eye texture (:func:`eye_texture_ratio`) falling below ``blink_closed_ratio`` of its
  open-eye baseline and recovering above ``blink_open_ratio`` within ``blink_max_closed_s``.
  Blinks during a turn are ignored (people blink every few seconds).
* **Passive.** The face image must change beyond camera noise at least once every
  ``static_window_s`` (:class:`MotionMeter`), the face may not be missing for more than
  ``max_face_lost_s`` once the challenge runs, and may not jump by more than
  ``max_jump_fraction`` of its width between frames: the frames the best capture is taken
  from belong to the same continuous track as the actions.
"""

from __future__ import annotations

import secrets
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .config import ACTIONS, CaptureConfig
from .detect import Box
from .events import ChallengeIssued, Event, Failed, Progress


def draw_challenge(config: CaptureConfig,
                   randbelow: Callable[[int], int] = secrets.randbelow) -> tuple[str, ...]:
    """A fresh random challenge: ``min_actions``..``max_actions`` actions, never the same
    action twice in a row, and - from two actions on - at least one blink and one turn: a
    print can be turned but cannot blink, a natural-blink replay blinks but does not turn.
    Uniform over the sequences that qualify (rejection sampling). ``randbelow`` is
    ``secrets.randbelow`` unless a test injects its own."""
    n = config.min_actions + randbelow(config.max_actions - config.min_actions + 1)
    while True:
        out: list[str] = []
        for _ in range(n):
            choices = [a for a in ACTIONS if not out or a != out[-1]]
            out.append(choices[randbelow(len(choices))])
        if n == 1 or ("blink" in out and any(a != "blink" for a in out)):
            return tuple(out)


DEFAULT_EYES = ((0.30, 0.37), (0.70, 0.37))  # eye centres in a frontal Haar box, relative


def eye_texture_ratio(face_norm: np.ndarray,
                      eyes: tuple[tuple[float, float], tuple[float, float]] = DEFAULT_EYES,
                      ) -> float:
    """Gradient energy around the two eyes over that of the whole inner face.

    ``face_norm`` is the face box, grey, resized square; ``eyes`` are the eye centres relative
    to the box (the session learns them while the eyes are detected, and keeps using them
    while they are closed, when the eye cascade no longer finds them). An open eye is the
    face's strongest texture (iris against sclera, lid edges); a closed lid is smooth skin.
    Dividing by the face's own energy cancels light level, contrast and focus, which change
    both alike.
    """
    n = face_norm.shape[0]
    gx = cv2.Sobel(face_norm, cv2.CV_16S, 1, 0, ksize=3)
    gy = cv2.Sobel(face_norm, cv2.CV_16S, 0, 1, ksize=3)
    energy = cv2.add(cv2.convertScaleAbs(gx), cv2.convertScaleAbs(gy))
    gx.fill(0)
    gy.fill(0)
    lo, hi = int(0.1 * n), int(0.9 * n)
    face = float(energy[lo:hi, lo:hi].mean())
    dx, dy = max(2, round(0.10 * n)), max(2, round(0.06 * n))
    total = 0.0
    for u, v in eyes:
        cx, cy = round(u * n), round(v * n)
        patch = energy[max(0, cy - dy):cy + dy, max(0, cx - dx):cx + dx]
        total += float(patch.mean()) if patch.size else 0.0
    energy.fill(0)
    return total / 2 / face if face > 1e-6 else 0.0


class MotionMeter:
    """Did the face image change beyond camera noise since the last change?

    Compares a fixed window (the face box when the anchor was taken, so that the detector's
    box jitter on a still image does not count as motion) at 48x48, blurred and mean-removed
    (so that noise and flicker do not count either), with the anchor. The level is scaled to
    a face contrast of 50 grey levels (a standard deviation), so that the same sway counts
    the same in dim light.
    """

    SIZE = 48

    def __init__(self) -> None:
        self._anchor = np.zeros((self.SIZE, self.SIZE), np.float32)
        self._current = np.zeros((self.SIZE, self.SIZE), np.float32)
        self._box: Box | None = None

    def _sample(self, gray: np.ndarray, box: Box, out: np.ndarray) -> float:
        """Fill ``out`` with the window's blurred, mean-removed image; return its contrast."""
        x, y, w, h = box
        roi = gray[y:y + h, x:x + w]
        small = cv2.resize(roi, (self.SIZE, self.SIZE), interpolation=cv2.INTER_AREA)
        cv2.GaussianBlur(small.astype(np.float32), (5, 5), 1.0, dst=out)
        small.fill(0)
        mean, std = cv2.meanStdDev(out)
        out -= float(mean[0, 0])
        return float(std[0, 0])

    def update(self, gray: np.ndarray, face: Box) -> float:
        """Change level against the anchor (grey levels); re-anchors on change."""
        if self._box is None or _centre_shift(self._box, face) > 0.15:
            self._box = face
            self._sample(gray, face, self._anchor)
            return float("inf")
        contrast = self._sample(gray, self._box, self._current)
        level = float(cv2.absdiff(self._current, self._anchor).mean())
        return level * 50.0 / max(10.0, contrast)

    def reanchor(self) -> None:
        self._anchor, self._current = self._current, self._anchor

    def buffers(self) -> list[np.ndarray]:
        return [self._anchor, self._current]

    def reset(self) -> None:
        self._box = None
        self.wipe()

    def wipe(self) -> None:
        self._anchor.fill(0)
        self._current.fill(0)


def _centre_shift(a: Box, b: Box) -> float:
    """Distance between box centres in units of a's width."""
    ax, ay = a[0] + a[2] / 2, a[1] + a[3] / 2
    bx, by = b[0] + b[2] / 2, b[1] + b[3] / 2
    return float(np.hypot(bx - ax, by - ay) / max(1, a[2]))


@dataclass(frozen=True)
class Observation:
    t: float
    face: Box | None
    yaw: float | None  # degrees, image sign (+ = face turned to image +x)
    eye_ratio: float | None  # eye_texture_ratio when a frontal face is measured
    moved: bool  # the MotionMeter saw a change beyond noise
    gate_passed: bool


class Liveness:
    """The challenge and passive checks for one session."""

    def __init__(self, config: CaptureConfig, challenge: Sequence[str]) -> None:
        if not challenge or any(a not in ACTIONS for a in challenge):
            raise ValueError(f"challenge must be 1+ actions out of {ACTIONS}")
        self.config = config
        self.challenge = tuple(challenge)
        self.state = "positioning"  # -> challenge -> passed | failed
        self.index = 0
        self.failure: Failed | None = None
        self.track_reset = False  # set for the frame on which the track restarted
        self._t0: float | None = None
        self._last_face: Box | None = None
        self._last_seen: float | None = None
        self._last_motion: float | None = None
        self._settle: list[tuple[float, float]] = []
        self._baseline = 1.0  # open-eye texture ratio
        self._yaw0 = 0.0  # the frontal reading of the yaw proxy
        self._issued = 0.0
        self._phase = ""
        self._closed_at = 0.0

    @property
    def done(self) -> bool:
        return self.state in ("passed", "failed")

    def _fail(self, reason: str, detail: str = "") -> list[Event]:
        self.state = "failed"
        self.failure = Failed(reason, detail)
        return [self.failure]

    def _issue(self, t: float) -> list[Event]:
        self._issued = t
        self._phase = "wait"
        action = self.challenge[self.index]
        return [ChallengeIssued(action, self.index, len(self.challenge),
                                self.config.time_limit(action))]

    def observe(self, obs: Observation) -> list[Event]:
        if self.done:
            return []
        cfg = self.config
        self.track_reset = False
        if self._t0 is None:
            self._t0 = obs.t
        t = obs.t
        # --- track continuity ------------------------------------------------------------
        if obs.face is None:
            if self._last_seen is not None and t - self._last_seen > cfg.max_face_lost_s:
                if self.state == "challenge":
                    return self._fail("face_lost", f"no face for {t - self._last_seen:.2f} s")
                self._restart_track()
        else:
            if self._last_face is not None and (
                    _centre_shift(self._last_face, obs.face) > cfg.max_jump_fraction):
                if self.state == "challenge":
                    return self._fail("face_changed", "the face jumped between frames")
                self._restart_track()
            if self._last_seen is None:
                self._last_motion = t
            self._last_face, self._last_seen = obs.face, t
            # --- passive: the face must not be perfectly still ---------------------------
            if obs.moved:
                self._last_motion = t
            elif self._last_motion is not None and t - self._last_motion >= cfg.static_window_s:
                return self._fail("static_face",
                                  f"no change beyond camera noise for {cfg.static_window_s} s")
        if self.state == "positioning":
            return self._positioning(obs)
        return self._challenge(obs)

    def _restart_track(self) -> None:
        self.track_reset = True
        self._last_face = self._last_seen = self._last_motion = None
        self._settle.clear()

    def _positioning(self, obs: Observation) -> list[Event]:
        cfg = self.config
        assert self._t0 is not None
        if obs.gate_passed and obs.eye_ratio is not None and obs.yaw is not None:
            self._settle.append((obs.eye_ratio, obs.yaw))
        else:
            self._settle.clear()
        if len(self._settle) >= cfg.settle_frames:
            self._baseline = statistics.median(r for r, _ in self._settle)
            self._yaw0 = statistics.median(y for _, y in self._settle)
            self.state = "challenge"
            return self._issue(obs.t)
        if obs.t - self._t0 > cfg.positioning_timeout_s:
            return self._fail("no_good_face", "no frame passed the quality gate")
        return []

    def _challenge(self, obs: Observation) -> list[Event]:
        cfg = self.config
        action = self.challenge[self.index]
        t = obs.t
        if t - self._issued > cfg.time_limit(action):
            return self._fail("action_timeout", action)
        if t - self._issued < cfg.min_reaction_s:
            return []  # nothing before a human could have reacted counts
        yaw = None if obs.yaw is None else obs.yaw - self._yaw0
        if yaw is not None and cfg.mirrored:
            yaw = -yaw
        done = False
        if action == "blink":
            if yaw is not None and abs(yaw) >= cfg.turn_min_yaw_deg:
                return self._fail("wrong_action", "a turn while a blink was asked")
            done = self._blink(obs)
        else:
            want = 1.0 if action == "turn_left" else -1.0
            if yaw is not None:
                if yaw * want <= -cfg.turn_min_yaw_deg:
                    return self._fail("wrong_action", "a turn the other way")
                if self._phase == "wait" and yaw * want >= cfg.turn_min_yaw_deg:
                    self._phase = "turned"
                elif self._phase == "turned" and abs(yaw) <= cfg.turn_return_yaw_deg:
                    done = True
        if not done:
            return []
        events: list[Event] = [Progress(action, self.index, len(self.challenge))]
        self.index += 1
        if self.index == len(self.challenge):
            self.state = "passed"
            return events
        return events + self._issue(t)

    def _blink(self, obs: Observation) -> bool:
        cfg = self.config
        r = obs.eye_ratio
        if r is None:
            return False
        rel = r / self._baseline if self._baseline > 0 else 1.0
        if self._phase == "wait":  # first the eyes must be seen open after the prompt
            if rel >= cfg.blink_open_ratio:
                self._phase = "open"
        elif self._phase == "open":
            if rel <= cfg.blink_closed_ratio:
                self._phase, self._closed_at = "closed", obs.t
            elif rel < 1.25:  # follow slow drift of the open-eye level (light, distance)
                self._baseline = 0.9 * self._baseline + 0.1 * r
        elif self._phase == "closed" and rel >= cfg.blink_open_ratio:
            if obs.t - self._closed_at <= cfg.blink_max_closed_s:
                return True
            self._phase = "open"  # eyes shut too long: not a blink; wait for another
        return False
