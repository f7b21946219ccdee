"""The capture session: feed ``(frame, timestamp)``, read events; sans-I/O.

The UI and the HIL rig drive it the same way::

    with CaptureSession() as s:
        for frame, t in camera.frames():
            for event in s.feed(frame, t):
                ui.show(event)          # Hint, ChallengeIssued, Progress, Passed, Failed
            if s.done:
                break
        if s.result.passed:
            sealed = s.seal(identity_service_public_key, session_id)

Per frame: detect (:mod:`.detect`), measure the gate (:mod:`.quality`), observe liveness
(:mod:`.liveness`), and keep a copy of the frame if it is the best so far (highest quality
score among frames that passed the gate, on the current face track). The session reads no
clock and draws its challenge from ``secrets`` when it starts.

Data does not fall to the ground: the session writes nothing anywhere and logs no pixels; it
holds image data only in its own buffers (the best frame, the detector's work buffers, the
motion anchor), which it overwrites as soon as the session fails, after :meth:`seal`, and on
:meth:`close`. The caller owns the frames it feeds and wipes them.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import envelope
from .config import CaptureConfig
from .detect import Box, Detector, Point
from .events import REASONS, ChallengeIssued, Event, Failed, Hint, Passed, Progress
from .liveness import (
    DEFAULT_EYES,
    Liveness,
    MotionMeter,
    Observation,
    draw_challenge,
    eye_texture_ratio,
)
from .quality import Quality, assess

__all__ = [
    "CaptureResult", "CaptureSession", "ChallengeIssued", "Failed", "Hint", "Passed",
    "Progress", "REASONS",
]

log = logging.getLogger(__name__)

# while the challenge runs, the actions themselves fail the gate (a turn shortens the
# inter-eye distance and breaks the pose, a blink hides the eyes, both blur): show only these
_CHALLENGE_HINTS = frozenset({"no_face", "one_person", "more_light", "less_light", "move_back"})


@dataclass(frozen=True)
class CaptureResult:
    passed: bool
    reason: str  # "passed" or a key of events.REASONS
    detail: str
    challenge: tuple[str, ...]
    actions_done: int
    score: float | None  # quality score of the best frame (passed only)
    best_timestamp: float | None
    first_timestamp: float
    decided_timestamp: float

    @property
    def duration(self) -> float:
        return self.decided_timestamp - self.first_timestamp


class CaptureSession:
    def __init__(self, config: CaptureConfig | None = None, *,
                 challenge: Sequence[str] | None = None,
                 randbelow: Callable[[int], int] = secrets.randbelow,
                 detector: Detector | None = None) -> None:
        self.config = config or CaptureConfig()
        self.challenge = (tuple(challenge) if challenge is not None
                          else draw_challenge(self.config, randbelow))
        self._detector = detector or Detector(self.config)
        self._liveness = Liveness(self.config, self.challenge)
        self._motion = MotionMeter()
        self._best: np.ndarray | None = None
        self._best_score = -1.0
        self._best_t: float | None = None
        self._hints: tuple[str, ...] | None = None
        self._eyes_rel = DEFAULT_EYES
        self._first: float | None = None
        self._last: float | None = None
        self.result: CaptureResult | None = None
        self.last_quality: Quality | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    # -- the per-frame pipeline ------------------------------------------------------------

    def feed(self, frame: np.ndarray, timestamp: float) -> list[Event]:
        """Process one frame taken at ``timestamp`` (seconds, any origin, non-decreasing)."""
        if self.done:
            return []
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError("frames must be BGR uint8 HxWx3 (the yaw proxy needs colour)")
        t = float(timestamp)
        if self._last is not None and t < self._last:
            raise ValueError("timestamps must not go backwards")
        if self._first is None:
            self._first = t
        self._last = t
        cfg = self.config
        det = self._detector.detect(frame)
        q = assess(frame, det, cfg)
        self.last_quality = q
        moved, ratio = False, None
        if det.face is not None:
            level = self._motion.update(det.gray, det.face)
            moved = level >= cfg.static_level
            if moved and level != float("inf"):
                self._motion.reanchor()
            if det.profile == 0 and det.face_norm is not None:
                if det.eyes is not None and q.passed:
                    self._learn_eyes(det.face, det.eyes)
                ratio = eye_texture_ratio(det.face_norm, self._eyes_rel)
        obs = Observation(t, det.face, q.yaw_deg, ratio, moved, q.passed)
        events = self._liveness.observe(obs)
        if self._liveness.track_reset:
            self._drop_best()
            self._motion.reset()
        if q.passed and not self._liveness.done and q.score > self._best_score:
            self._keep_best(frame, q.score, t)
        self._detector.wipe()
        out: list[Event] = []
        hints = q.hints
        if self._liveness.state == "challenge" or any(
                isinstance(e, ChallengeIssued) for e in events):
            hints = tuple(h for h in hints if h in _CHALLENGE_HINTS)
        if hints != self._hints and not self._liveness.done:
            self._hints = hints
            out.append(Hint(hints))
        out.extend(events)
        if self._liveness.state == "passed":
            out.append(self._finish_passed(t))
        elif self._liveness.state == "failed":
            self._finish_failed(t)
        return out

    def _learn_eyes(self, face: Box, eyes: tuple[Point, Point]) -> None:
        """Follow where the eyes sit in the face box (the blink measure looks there)."""
        x, y, w, h = face
        seen = tuple(((ex - x) / w, (ey - y) / h) for ex, ey in eyes)
        if self._eyes_rel is DEFAULT_EYES:
            self._eyes_rel = seen  # type: ignore[assignment]
        else:
            self._eyes_rel = tuple(  # type: ignore[assignment]
                (0.8 * a[0] + 0.2 * b[0], 0.8 * a[1] + 0.2 * b[1])
                for a, b in zip(self._eyes_rel, seen, strict=True))

    def _keep_best(self, frame: np.ndarray, score: float, t: float) -> None:
        if self._best is None or self._best.shape != frame.shape:
            self._drop_best()
            self._best = np.empty_like(frame)
        np.copyto(self._best, frame)
        self._best_score, self._best_t = score, t

    def _drop_best(self) -> None:
        if self._best is not None:
            self._best.fill(0)
        self._best_score, self._best_t = -1.0, None

    def _finish_passed(self, t: float) -> Event:
        assert self._first is not None and self._best_t is not None
        self.result = CaptureResult(True, "passed", "", self.challenge, len(self.challenge),
                                    self._best_score, self._best_t, self._first, t)
        log.info("capture passed: challenge=%s score=%.1f after %.2f s",
                 ",".join(self.challenge), self._best_score, t - self._first)
        return Passed(self._best_score, self._best_t)

    def _finish_failed(self, t: float) -> None:
        failure = self._liveness.failure
        assert failure is not None and self._first is not None
        self.result = CaptureResult(False, failure.reason, failure.detail, self.challenge,
                                    self._liveness.index, None, None, self._first, t)
        log.info("capture failed: %s (%s) challenge=%s after %.2f s", failure.reason,
                 failure.detail, ",".join(self.challenge), t - self._first)
        self.close()

    def cancel(self, timestamp: float | None = None) -> list[Event]:
        """End the session now (the citizen walked away, the matter was cancelled)."""
        if self.done:
            return []
        t = self._last if timestamp is None else float(timestamp)
        first = self._first if self._first is not None else (t or 0.0)
        self.result = CaptureResult(False, "cancelled", "", self.challenge,
                                    self._liveness.index, None, None, first, t or first)
        self.close()
        return [Failed("cancelled")]

    # -- output ----------------------------------------------------------------------------

    def seal(self, service_public_key: bytes, session_id: bytes) -> envelope.Sealed:
        """Seal the best frame for the identity service (protocol §6), then wipe it all."""
        if self.result is None or not self.result.passed or self._best is None:
            raise RuntimeError("no capture to seal: the session has not passed")
        try:
            return envelope.seal_frame(self._best, service_public_key, session_id,
                                       quality=self.config.jpeg_quality)
        finally:
            self.close()

    def held_buffers(self) -> list[np.ndarray]:
        """The arrays the session holds image data in (for audits and tests of the wipe)."""
        held = [b for b in (self._best,) if b is not None]
        held += self._detector.buffers()
        held += self._motion.buffers()
        return held

    def close(self) -> None:
        """Overwrite every buffer that held image data. Idempotent."""
        if self._best is not None:
            self._best.fill(0)
            self._best = None
        self._detector.wipe()
        self._motion.wipe()

    def __enter__(self) -> CaptureSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
