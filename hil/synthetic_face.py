"""Synthetic face-capture data built from skimage.data.astronaut() (public domain, NASA).

A HIL fixture: the face-capture tests and benchmark use it, and so does the simulated service
hall (``appliance run --sim``), whose emulated camera plays a genuine :class:`Subject` that
answers the challenge the authorization flow shows. Needs scikit-image (the dev extra).

No real person's photo other than that one, no network, nothing written to disk. A frame is a
640x480 BGR rendering of the astronaut's face under a :class:`Pose`: translation and zoom
(natural sway), a head turn (a cylinder warp of the head: the inner face slides towards one
cheek while the outline stays, as in a real yaw), eyes closed (eye regions blurred and
darkened), and photometric changes (light, blur, noise).

:class:`Subject` is an interactive genuine user: it answers each challenge the session shows
after a human reaction time. :class:`Replay` is a recording that ignores the challenge.
:func:`run` drives a :class:`CaptureSession` with either at a fixed frame rate.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
from skimage import data as skdata

from appliance.kiosk.capture import session as capture_session

WIDTH, HEIGHT = 640, 480
FACE_SRC = (224.5, 113.5)  # face centre in the 512x512 source (Haar box 177,66,95,95)
FACE_SRC_W = 95.0
EYES_SRC = ((201.5, 100.5), (247.0, 103.5))
BASE_SCALE = 2.1  # face ~200 px wide, eyes ~95 px apart at 640x480
TURN_DEG = 30.0


@dataclass(frozen=True)
class Pose:
    dx: float = 0.0  # face centre offset from the frame centre, px
    dy: float = 0.0
    scale: float = 1.0  # relative to BASE_SCALE
    yaw: float = 0.0  # degrees, + turns the face towards image +x
    eyes_closed: float = 0.0  # 0 open .. 1 closed
    brightness: float = 1.0
    blur: float = 0.0  # Gaussian sigma at 640x480, px
    noise: float = 0.0  # Gaussian sensor noise sigma, grey levels


@functools.cache
def source() -> np.ndarray:
    return cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)


@functools.cache
def _eye_mask() -> np.ndarray:
    mask = np.zeros(source().shape[:2], np.float32)
    for ex, ey in EYES_SRC:
        cv2.ellipse(mask, (round(ex), round(ey)), (13, 8), 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(mask, (0, 0), 2.0)[..., None]


@functools.cache
def _closed_source() -> np.ndarray:
    """The source with both eyes 'closed': eye regions blurred (no iris or sclera left, as
    under an eyelid) and darkened."""
    src = source().astype(np.float32)
    lid = cv2.GaussianBlur(src, (0, 0), 4.0) * 0.6
    m = _eye_mask()
    return (src * (1 - m) + lid * m).astype(np.uint8)


# the head region of the source that the turn warp moves: centre, half-width, half-height
_HEAD = (FACE_SRC[0], FACE_SRC[1] + 5, 0.62 * FACE_SRC_W, 0.95 * FACE_SRC_W)


@functools.lru_cache(maxsize=128)
def _yaw_maps(yaw_deg: float) -> tuple[int, int, np.ndarray, np.ndarray]:
    """remap() maps for a cylinder-model turn of the head, for the head's box in the source."""
    cx, cy, r, ry = _HEAD
    x0, x1 = int(cx - r) - 1, int(cx + r) + 2
    y0, y1 = max(0, int(cy - ry) - 1), int(cy + ry) + 2
    xs = np.arange(x0, x1, dtype=np.float32)
    ys = np.arange(y0, y1, dtype=np.float32)
    gx, gy = np.meshgrid(xs, ys)
    u = np.clip((gx - cx) / r, -1, 1)
    theta = np.arcsin(u) - math.radians(yaw_deg)
    src_u = np.sin(np.clip(theta, -math.pi / 2, math.pi / 2))
    wv = np.sqrt(np.clip(1 - ((gy - cy) / ry) ** 2, 0, 1))
    mx = gx + (cx + src_u * r - gx) * wv
    return x0, y0, mx.astype(np.float32), gy.astype(np.float32)


def _source_for(pose: Pose) -> np.ndarray:
    if pose.eyes_closed <= 0 and abs(pose.yaw) < 0.25:
        return source()
    if pose.eyes_closed >= 1:
        src = _closed_source().copy()
    elif pose.eyes_closed > 0:
        a = float(pose.eyes_closed)
        src = cv2.addWeighted(source(), 1 - a, _closed_source(), a, 0)
    else:
        src = source().copy()
    if abs(pose.yaw) >= 0.25:
        x0, y0, mx, my = _yaw_maps(round(pose.yaw * 2) / 2)
        warped = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        src[y0:y0 + warped.shape[0], x0:x0 + warped.shape[1]] = warped
    return src


def render(pose: Pose = Pose(), rng: np.random.Generator | None = None) -> np.ndarray:
    """One 640x480 BGR frame."""
    s = BASE_SCALE * pose.scale
    m = np.float32([[s, 0, WIDTH / 2 + pose.dx - s * FACE_SRC[0]],
                    [0, s, HEIGHT / 2 + pose.dy - s * FACE_SRC[1]]])
    frame = cv2.warpAffine(_source_for(pose), m, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
    return photometric(frame, pose, rng)


def photometric(frame: np.ndarray, pose: Pose, rng: np.random.Generator | None) -> np.ndarray:
    if pose.blur > 0:
        frame = cv2.GaussianBlur(frame, (0, 0), pose.blur)
    if pose.brightness != 1.0:
        frame = cv2.convertScaleAbs(frame, alpha=pose.brightness)
    if pose.noise > 0:
        rng = rng or np.random.default_rng(0)
        bank = _noise_bank(frame.shape)
        field = bank[int(rng.integers(len(bank)))]
        shift = int(rng.integers(field.shape[1]))
        noise = np.roll(field, shift, axis=1).astype(np.float32) * (pose.noise / 8.0)
        frame = cv2.add(frame.astype(np.float32), noise)
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    return frame


@functools.cache
def _noise_bank(shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Gaussian noise fields (sigma 8, int8), drawn once: per-frame draws dominate the cost."""
    r = np.random.default_rng(11)
    return tuple(np.clip(r.normal(0, 8, shape), -127, 127).astype(np.int8) for _ in range(8))


def two_faces(pose: Pose = Pose(), second_scale: float = 0.8) -> np.ndarray:
    """The main face shifted left and a second, smaller face to its right."""
    frame = render(replace(pose, dx=pose.dx - 150))
    s = BASE_SCALE * pose.scale * second_scale
    m = np.float32([[s, 0, 480 - s * FACE_SRC[0]], [0, s, 250 - s * FACE_SRC[1]]])
    other = cv2.warpAffine(source(), m, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
    frame[:, 380:] = other[:, 380:]
    return frame


@functools.cache
def _print_pattern() -> np.ndarray:
    """A printed photo's look: a fixed halftone screen and paper grain (same every frame)."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    screen = np.sin(xx * 2.1) * np.sin(yy * 2.1)
    grain = np.random.default_rng(7).normal(0, 1, (HEIGHT, WIDTH)).astype(np.float32)
    return (1.0 + 0.06 * screen + 0.03 * grain)[..., None]


def printed(pose: Pose = Pose()) -> np.ndarray:
    """A print of the face: lower contrast, halftone and grain."""
    frame = render(pose).astype(np.float32)
    frame = (frame * 0.85 + 18) * _print_pattern()
    return np.clip(frame, 0, 255).astype(np.uint8)


# --- behaviour over time --------------------------------------------------------------------

def _ease(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return 0.5 - 0.5 * math.cos(math.pi * x)


BLINK_S = 0.34
TURN_S = 1.35


def action_pose(kind: str, dt: float, turn_deg: float = TURN_DEG,
                mirrored: bool = False) -> dict[str, float]:
    """Pose offsets ``dt`` seconds into an action (empty when outside it)."""
    if kind == "blink":
        if 0 <= dt < BLINK_S:
            a = dt / 0.08 if dt < 0.08 else (1.0 if dt < 0.22 else 1 - (dt - 0.22) / 0.12)
            return {"eyes_closed": min(1.0, max(0.0, a))}
        return {}
    sign = 1.0 if kind == "turn_left" else -1.0
    if mirrored:
        sign = -sign
    if 0 <= dt < TURN_S:
        if dt < 0.5:
            k = _ease(dt / 0.5)
        elif dt < 0.85:
            k = 1.0
        else:
            k = 1.0 - _ease((dt - 0.85) / 0.5)
        return {"yaw": sign * turn_deg * k}
    return {}


class Motion:
    """Natural sway: a few slow sinusoids per axis (0.2-1.2 Hz, a few px), seeded."""

    def __init__(self, seed: int, amplitude: float = 3.0) -> None:
        r = np.random.default_rng(seed)
        self.terms = [(r.uniform(0.2, 1.2), r.uniform(0, 2 * math.pi), r.uniform(0.4, 1.0))
                      for _ in range(9)]
        self.amplitude = amplitude

    def __call__(self, t: float) -> tuple[float, float, float]:
        v = [sum(a * math.sin(2 * math.pi * f * t + p) for f, p, a in self.terms[i::3])
             for i in range(3)]
        return self.amplitude * v[0], 0.6 * self.amplitude * v[1], 1 + 0.004 * v[2]


class Subject:
    """A genuine user: sways, answers each challenge after a reaction time, blinks now and
    then of their own accord (``blink_every`` s, none when 0)."""

    def __init__(self, seed: int, *, base: Pose = Pose(), reaction: tuple[float, float] = (
            0.35, 0.8), blink_every: float = 0.0, turn_deg: float = TURN_DEG,
            mirrored: bool = False, noise: float = 1.5) -> None:
        self.rng = np.random.default_rng(seed)
        self.motion = Motion(seed)
        self.base = base
        self.reaction = reaction
        self.turn_deg = turn_deg
        self.mirrored = mirrored
        self.noise = noise
        self.actions: list[tuple[float, str]] = []
        self.answers: list[tuple[float, str]] = []
        if blink_every > 0:
            t = float(self.rng.uniform(0.5, blink_every))
            while t < 60:
                self.actions.append((t, "blink"))
                t += float(self.rng.uniform(0.6, 1.4)) * blink_every

    def on_events(self, events: Sequence[object], t: float) -> None:
        for ev in events:
            if isinstance(ev, capture_session.ChallengeIssued):
                answer = (t + float(self.rng.uniform(*self.reaction)), ev.action)
                self.actions.append(answer)
                self.answers.append(answer)

    def answered_by(self) -> float | None:
        """When the answer to the last challenge shown was complete (stream time)."""
        if not self.answers:
            return None
        t, kind = self.answers[-1]
        return t + (BLINK_S if kind == "blink" else TURN_S)

    def pose(self, t: float) -> Pose:
        dx, dy, sc = self.motion(t)
        fields: dict[str, float] = {"dx": self.base.dx + dx, "dy": self.base.dy + dy,
                                    "scale": self.base.scale * sc}
        for start, kind in self.actions:
            fields.update(action_pose(kind, t - start, self.turn_deg, self.mirrored))
        return replace(self.base, **fields)

    def frame(self, t: float) -> np.ndarray:
        return render(replace(self.pose(t), noise=self.noise), self.rng)

    def frame_at_index(self, i: int, fps: float = 15.0) -> np.ndarray | None:
        """For EmulatedCamera: frame ``i`` at ``fps`` (30 s at most)."""
        return self.frame(i / fps) if i < 30 * fps else None


class Replay(Subject):
    """A recording: the same behaviour, scripted in advance; challenges are ignored."""

    def __init__(self, seed: int, script: Sequence[tuple[float, str]] = (), **kw) -> None:
        super().__init__(seed, **kw)
        self.actions.extend(script)

    def on_events(self, events: Sequence[object], t: float) -> None:
        pass


class StaticPrint:
    """A printed photo on a stand: the same print every frame, only sensor noise changes."""

    def __init__(self, seed: int, pose: Pose = Pose()) -> None:
        self.rng = np.random.default_rng(seed)
        self.image = printed(pose)

    def on_events(self, events: Sequence[object], t: float) -> None:
        pass

    def frame(self, t: float) -> np.ndarray:
        return photometric(self.image, Pose(noise=2.0), self.rng)


def turned_paper(frame: np.ndarray, deg: float, focal: float = 600.0) -> np.ndarray:
    """``frame`` as a flat print turned ``deg`` about its vertical axis in front of a camera
    of ``focal`` px (perspective: the receding side shrinks)."""
    h, w = frame.shape[:2]
    cx, cy, t = w / 2, h / 2, math.radians(deg)
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = []
    for x, y in src:
        u, v = x - cx, y - cy
        s = focal / (focal + u * math.sin(t))
        dst.append([cx + u * math.cos(t) * s, cy + v * s])
    m = cv2.getPerspectiveTransform(src, np.float32(dst))
    return cv2.warpPerspective(frame, m, (w, h), borderMode=cv2.BORDER_REFLECT)


class PrintOnCue(Subject):
    """An attacker holding a print: the hand sways, and on each turn prompt the print is
    turned ``paper_deg`` the way asked and back. Turned that far, the print's perspective can
    pass for a head turn; it cannot blink."""

    def __init__(self, seed: int, paper_deg: float = 55.0) -> None:
        super().__init__(seed, reaction=(0.3, 0.6))
        self.paper_deg = paper_deg

    def frame(self, t: float) -> np.ndarray:
        pose = self.pose(t)
        turn = pose.yaw / self.turn_deg * self.paper_deg  # the answer, played by the print
        image = printed(replace(pose, yaw=0.0, eyes_closed=0.0))
        if abs(turn) >= 0.25:
            image = turned_paper(image, turn)
        return photometric(image, Pose(noise=2.0), self.rng)


@dataclass
class Run:
    result: capture_session.CaptureResult
    events: list[tuple[float, object]]
    frames: int
    duration: float  # stream time from the first frame to the decision


def run(session: capture_session.CaptureSession, subject, *, fps: float = 15.0,
        max_s: float = 30.0, t0: float = 100.0,
        frame_hook: Callable[[np.ndarray], None] | None = None) -> Run:
    """Feed ``subject``'s frames at ``fps`` until the session decides (or ``max_s``)."""
    events: list[tuple[float, object]] = []
    i = 0
    while not session.done and i / fps <= max_s:
        t = t0 + i / fps
        frame = subject.frame(t - t0)
        if frame_hook is not None:
            frame_hook(frame)
        new = session.feed(frame, t)
        events.extend((t - t0, e) for e in new)
        subject.on_events(new, t - t0)
        frame.fill(0)
        i += 1
    assert session.done, "session undecided after %.1f s" % max_s
    result = session.result
    assert result is not None
    return Run(result, events, i, (i - 1) / fps)


# --- the evaluation sets ----------------------------------------------------------------------

def seeded_randbelow(seed: int) -> Callable[[int], int]:
    r = np.random.default_rng(10_000 + seed)
    return lambda n: int(r.integers(n))


@dataclass(frozen=True)
class Case:
    name: str
    seed: int
    make: Callable[[tuple[str, ...]], object]  # challenge -> subject or replay
    mirrored: bool = False
    fps: float = 15.0


def genuine_cases(n: int = 8) -> list[Case]:
    """Genuine users under varied conditions: position, distance, light, noise, reaction
    time, turn size, spontaneous blinks; one behind a mirroring camera."""
    cases = []
    for i in range(n):
        r = np.random.default_rng(500 + i)
        base = Pose(dx=float(r.uniform(-45, 45)), dy=float(r.uniform(-25, 25)),
                    scale=float(r.uniform(0.98, 1.35)), brightness=float(r.uniform(0.6, 1.1)))
        kw = {"base": base, "noise": float(r.uniform(1.0, 3.0)),
              "reaction": (float(r.uniform(0.25, 0.5)), float(r.uniform(0.6, 1.0))),
              "turn_deg": float(r.uniform(28, 38)),
              "blink_every": float(r.choice([0.0, 2.5, 4.0]))}
        mirrored = i == n - 1
        kw["mirrored"] = mirrored

        def make(challenge, seed=i, kw=kw):
            return Subject(seed, **kw)

        cases.append(Case(f"genuine-{i}", i, make, mirrored))
    return cases


_OPPOSITE = {"turn_left": "turn_right", "turn_right": "turn_left", "blink": "turn_left"}


class _TwoFaces(Subject):
    def frame(self, t: float) -> np.ndarray:
        p = self.pose(t)
        return photometric(two_faces(replace(p, noise=0)), Pose(noise=self.noise), self.rng)


def attack_cases(per_class: int = 3) -> dict[str, list[Case]]:
    """Presentation attacks by class. Replays are recordings of the same face that ignore the
    challenge; the quality attacks are live but unusable faces (fed at 8 fps: they run to
    the positioning timeout)."""

    def other_challenge(challenge, seed):
        rand = seeded_randbelow(900 + seed)
        while True:  # a recording made for a different challenge
            other = tuple(
                ["blink", "turn_left", "turn_right"][rand(3)] for _ in range(3))
            if other[:len(challenge)] != challenge:
                return other

    classes: dict[str, Callable[[int], Callable[[tuple[str, ...]], object]]] = {
        "print_static": lambda s: lambda ch: StaticPrint(s),
        "print_turned_on_cue": lambda s: lambda ch: PrintOnCue(s),
        "replay_no_action": lambda s: lambda ch: Replay(s, blink_every=3.0),
        "replay_wrong_action": lambda s: lambda ch: Replay(
            s, [(0.7 + 1.8 * i, _OPPOSITE[a]) for i, a in enumerate(ch)]),
        "replay_other_session": lambda s: lambda ch: Replay(
            s, [(0.6 + 1.8 * i, a) for i, a in enumerate(other_challenge(ch, s))],
            blink_every=3.0),
        "face_too_small": lambda s: lambda ch: Subject(s, base=Pose(scale=0.6)),
        "too_dark": lambda s: lambda ch: Subject(s, base=Pose(brightness=0.2)),
        "blurred": lambda s: lambda ch: Subject(s, base=Pose(blur=2.5)),
        "two_faces": lambda s: lambda ch: _TwoFaces(s),
    }
    slow = {"face_too_small", "too_dark", "blurred", "two_faces"}
    out = {}
    for name, maker in classes.items():
        k = min(per_class, 2) if name in slow else per_class
        out[name] = [Case(f"{name}-{s}", s, maker(s), fps=8.0 if name in slow else 15.0)
                     for s in range(k)]
    return out


def run_case(case: Case, config=None, **session_kw) -> Run:
    from appliance.kiosk.capture.config import CaptureConfig

    cfg = config or CaptureConfig(mirrored=case.mirrored)
    session = capture_session.CaptureSession(cfg, randbelow=seeded_randbelow(case.seed),
                                             **session_kw)
    try:
        return run(session, case.make(session.challenge), fps=case.fps)
    finally:
        session.close()
