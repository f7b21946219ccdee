"""Face and eye detection with OpenCV's bundled Haar cascades.

The face cascade runs on a copy of the frame downscaled to ``detect_width`` (160 px by
default): at 640x480 a full-resolution pass costs ~40 ms on one core here, the downscaled one
~1/5 of that. Eyes are searched in the upper face only, resized to ``eye_roi_width``; their
centres, the face box and every measurement downstream are in full-resolution pixels.

The detector owns its work buffers (grey frame, downscaled frame, normalised face) and reuses
them frame after frame, so a face image exists in a known, small set of arrays that
:meth:`Detector.wipe` overwrites.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

from .config import CaptureConfig

Box = tuple[int, int, int, int]  # x, y, w, h in full-resolution pixels
Point = tuple[float, float]

FRONTAL = "haarcascade_frontalface_default.xml"
EYE = "haarcascade_eye.xml"
PROFILE = "haarcascade_profileface.xml"

_cascades: dict[str, cv2.CascadeClassifier] = {}
_lock = threading.Lock()


def cascade(name: str) -> cv2.CascadeClassifier:
    """One loaded classifier per cascade file, shared (loading parses ~1 MB of XML)."""
    with _lock:
        clf = _cascades.get(name)
        if clf is None:
            clf = cv2.CascadeClassifier(cv2.data.haarcascades + name)
            if clf.empty():
                raise RuntimeError(f"OpenCV cascade {name} is missing from cv2.data.haarcascades")
            _cascades[name] = clf
        return clf


@dataclass
class Detection:
    """What one frame shows. ``gray`` and ``face_norm`` are views of the detector's buffers:
    valid until the next :meth:`Detector.detect` or :meth:`Detector.wipe`."""

    frame_size: tuple[int, int]  # width, height
    faces: list[Box]  # frontal faces, largest first
    face: Box | None  # the face measured: largest frontal, else a profile
    eyes: tuple[Point, Point] | None  # eye centres, image-left first
    eye_candidates: int
    profile: int  # 0 frontal (or none); +1 profile facing image right; -1 facing image left
    gray: np.ndarray
    face_norm: np.ndarray | None  # the face box, grey, resized to eye_roi_width square


class Detector:
    def __init__(self, config: CaptureConfig | None = None) -> None:
        self.config = config or CaptureConfig()
        self._frontal = cascade(FRONTAL)
        self._eye = cascade(EYE)
        self._profile = cascade(PROFILE) if self.config.profile_fallback else None
        self._gray: np.ndarray | None = None
        self._small: np.ndarray | None = None
        self._small_flip: np.ndarray | None = None
        n = self.config.eye_roi_width
        self._face_norm = np.zeros((n, n), np.uint8)

    # -- buffers ---------------------------------------------------------------------------

    def _buffers(self, h: int, w: int) -> None:
        if self._gray is not None and self._gray.shape == (h, w):
            return
        self.wipe()
        dw = min(self.config.detect_width, w)
        dh = max(1, round(h * dw / w))
        self._gray = np.zeros((h, w), np.uint8)
        self._small = np.zeros((dh, dw), np.uint8)
        self._small_flip = np.zeros((dh, dw), np.uint8)

    def buffers(self) -> list[np.ndarray]:
        return [b for b in (self._gray, self._small, self._small_flip, self._face_norm)
                if b is not None]

    def wipe(self) -> None:
        """Overwrite every work buffer that held image data."""
        for buf in self.buffers():
            buf.fill(0)

    # -- detection -------------------------------------------------------------------------

    def detect(self, frame: np.ndarray) -> Detection:
        """Detect in ``frame`` (BGR uint8 HxWx3, or grey HxW)."""
        if frame.dtype != np.uint8 or frame.ndim not in (2, 3):
            raise ValueError("frame must be uint8 BGR (HxWx3) or grey (HxW)")
        h, w = frame.shape[:2]
        self._buffers(h, w)
        assert self._gray is not None and self._small is not None
        if frame.ndim == 3:
            cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY, dst=self._gray)
        else:
            np.copyto(self._gray, frame)
        gray = self._gray
        small = self._small
        cv2.resize(gray, (small.shape[1], small.shape[0]), dst=small,
                   interpolation=cv2.INTER_AREA)
        scale = w / small.shape[1]
        cfg = self.config
        found = self._frontal.detectMultiScale(
            small, cfg.face_scale_factor, cfg.face_min_neighbors, minSize=(24, 24))
        faces = sorted((_scaled(b, scale, w, h) for b in found),
                       key=lambda b: b[2] * b[3], reverse=True)
        face: Box | None = faces[0] if faces else None
        profile = 0
        if face is None and self._profile is not None:
            face, profile = self._find_profile(scale, w, h)
        eyes, candidates, face_norm = None, 0, None
        if face is not None:
            face_norm = self._normalise(face)
            if profile == 0:
                eyes, candidates = self._find_eyes(face, face_norm)
        return Detection((w, h), faces, face, eyes, candidates, profile, gray, face_norm)

    def _find_profile(self, scale: float, w: int, h: int) -> tuple[Box | None, int]:
        assert self._profile is not None and self._small is not None
        cfg = self.config
        found = self._profile.detectMultiScale(
            self._small, cfg.face_scale_factor, cfg.face_min_neighbors, minSize=(24, 24))
        if len(found):
            best = max(found, key=lambda b: b[2] * b[3])
            return _scaled(best, scale, w, h), -1  # the cascade finds faces looking image-left
        assert self._small_flip is not None
        cv2.flip(self._small, 1, dst=self._small_flip)
        found = self._profile.detectMultiScale(
            self._small_flip, cfg.face_scale_factor, cfg.face_min_neighbors, minSize=(24, 24))
        if len(found):
            x, y, bw, bh = max(found, key=lambda b: b[2] * b[3])
            sw = self._small.shape[1]
            return _scaled((sw - x - bw, y, bw, bh), scale, w, h), +1
        return None, 0

    def _normalise(self, face: Box) -> np.ndarray:
        x, y, bw, bh = face
        assert self._gray is not None
        roi = self._gray[y:y + bh, x:x + bw]
        n = self._face_norm.shape[0]
        interp = cv2.INTER_AREA if bw >= n else cv2.INTER_LINEAR
        cv2.resize(roi, (n, n), dst=self._face_norm, interpolation=interp)
        return self._face_norm

    def _find_eyes(self, face: Box, face_norm: np.ndarray) -> tuple[tuple[Point, Point] | None,
                                                                     int]:
        """The two eye detections that sit where eyes sit in a frontal face box."""
        n = face_norm.shape[0]
        top, bottom = int(0.15 * n), int(0.60 * n)
        band = face_norm[top:bottom]
        found = self._eye.detectMultiScale(
            band, self.config.eye_scale_factor, self.config.eye_min_neighbors,
            minSize=(max(8, n // 7),) * 2, maxSize=(int(n / 2.5),) * 2)
        centres = [(ex + ew / 2, top + ey + eh / 2) for ex, ey, ew, eh in found]
        x, y, bw, bh = face
        best: tuple[Point, Point] | None = None
        best_cost = float("inf")
        for i, a in enumerate(centres):
            for b in centres[i + 1:]:
                left, right = (a, b) if a[0] < b[0] else (b, a)
                dx, dy = right[0] - left[0], abs(right[1] - left[1])
                if not (0.25 * n <= dx <= 0.70 * n and dy <= 0.25 * dx
                        and left[0] < 0.5 * n < right[0]):
                    continue
                cost = (abs(left[0] - 0.3 * n) + abs(right[0] - 0.7 * n)
                        + abs(left[1] - 0.4 * n) + abs(right[1] - 0.4 * n))
                if cost < best_cost:
                    best_cost = cost
                    best = left, right
        if best is None:
            return None, len(centres)
        sx, sy = bw / n, bh / n
        eyes = ((x + best[0][0] * sx, y + best[0][1] * sy),
                (x + best[1][0] * sx, y + best[1][1] * sy))
        return eyes, len(centres)


def _scaled(box, scale: float, w: int, h: int) -> Box:
    x, y, bw, bh = (float(v) * scale for v in box)
    x0, y0 = max(0, round(x)), max(0, round(y))
    x1, y1 = min(w, round(x + bw)), min(h, round(y + bh))
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)
