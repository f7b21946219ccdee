"""What a :class:`~.session.CaptureSession` tells its driver (the UI, the HIL rig)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hint:
    """The gate's current advice; emitted when it changes (an empty tuple: all good).
    Codes are keys of :data:`.quality.HINTS`, which gives the texts."""

    codes: tuple[str, ...]


@dataclass(frozen=True)
class ChallengeIssued:
    """Ask the citizen for ``action`` (``blink``, ``turn_left``, ``turn_right``) now."""

    action: str
    index: int  # 0-based
    total: int
    time_limit_s: float


@dataclass(frozen=True)
class Progress:
    """Action ``index`` of ``total`` was seen."""

    action: str
    index: int
    total: int


@dataclass(frozen=True)
class Passed:
    """Liveness passed; the best frame is held for :meth:`CaptureSession.seal`."""

    score: float
    best_timestamp: float


@dataclass(frozen=True)
class Failed:
    """The session is over without a capture. ``reason`` is one of :data:`REASONS`."""

    reason: str
    detail: str = ""


REASONS = {
    "no_good_face": "no frame passed the quality gate in time",
    "action_timeout": "an asked action was not seen within its time limit",
    "wrong_action": "a different action than the one asked was seen",
    "static_face": "the face did not move at all (photo on a stand, frozen video)",
    "face_lost": "the face left the camera during the challenge",
    "face_changed": "the face jumped to another place (a cut, another face)",
    "cancelled": "the driver cancelled the session",
}

Event = Hint | ChallengeIssued | Progress | Passed | Failed
