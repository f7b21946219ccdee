"""The quality gate: each component a number, a threshold from :class:`CaptureConfig`, a hint.

Component names follow ISO/IEC 29794-5 (OFIQ). All are measured on the full-resolution frame
in the face box found by :mod:`.detect`:

==================== ================================================ ==============
component            value                                            hint on fail
==================== ================================================ ==============
single_face_present  number of frontal faces (must be 1)              no_face /
                                                                      one_person
face_size            inter-eye distance in px (>= 90) when both eyes  move_closer /
                     are found, else face width (>= 190); face box    move_back
                     at most 75 % of the frame height
centring             largest offset of the face centre from the       center_face
                     frame centre, as a fraction of width/height
sharpness            variance of the Laplacian of the face at 128 px, hold_still
                     contrast-normalised
luminance_mean       mean grey level of the face                      more_light /
                                                                      less_light
under_exposure       fraction of face pixels <= 25                    more_light
over_exposure        fraction of face pixels >= 247                   less_light
eyes_visible         1 when two eyes are found where eyes belong      open_eyes
head_pose_yaw        yaw proxy in degrees (see :func:`yaw_proxy`)     look_at_camera
==================== ================================================ ==============
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .config import CaptureConfig
from .detect import Box, Detection

HINTS: dict[str, tuple[str, str]] = {
    # code: (English, Simplified Chinese), for the UI
    "no_face": ("Please face the camera", "请正对摄像头"),
    "one_person": ("One person at a time, please", "请确保画面中只有一人"),
    "move_closer": ("Move closer", "请靠近一些"),
    "move_back": ("Move back a little", "请稍微后退"),
    "center_face": ("Move your face to the middle of the frame", "请将面部移到画面中央"),
    "hold_still": ("Hold still", "请保持不动"),
    "more_light": ("More light needed", "光线太暗"),
    "less_light": ("Too bright: avoid direct light", "光线太强"),
    "open_eyes": ("Keep your eyes open and uncovered", "请睁开眼睛，勿遮挡"),
    "look_at_camera": ("Look at the camera", "请直视摄像头"),
}


@dataclass(frozen=True)
class Component:
    name: str
    value: float
    passed: bool
    hint: str | None = None  # set when failed
    measure: str = ""  # how value was obtained, when there is a choice


@dataclass(frozen=True)
class Quality:
    components: tuple[Component, ...]
    passed: bool
    score: float  # 0..100; ranks the frames that passed
    yaw_deg: float | None
    face: Box | None

    @property
    def hints(self) -> tuple[str, ...]:
        seen: list[str] = []
        for c in self.components:
            if c.hint and c.hint not in seen:
                seen.append(c.hint)
        return tuple(seen)

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)


def yaw_proxy(frame: np.ndarray, face: Box) -> float | None:
    """Signed head yaw in degrees from face geometry; positive = face turned to image +x.

    A frontal cascade's box follows the inner face (eyes, nose, mouth); when the head turns
    those move towards one cheek's edge while the outline of the head stays. The proxy finds,
    at cheek height, how far skin extends to each side of the box centre: p = (left - right)
    / (left + right) is ~0.5 sin(yaw) on a cylinder model of the head, so yaw ~ asin(2p). A
    photo turned in front of the camera compresses inner face and outline alike and does not
    move p.

    Skin is what matches the face centre in rg chromaticity (R/(R+G+B), G/(R+G+B): does not
    change with the light level) and lies within 0.6-1.6x its brightness; pixels with a
    clipped channel (no true chroma) are left out of the vote. Needs colour: None for a grey
    frame, for a face mostly blown out, or when no extent can be measured. Coarse: +-5-10
    degrees, and offset by hair and lighting, which is why liveness judges turns against the
    session's own frontal reading.
    """
    if frame.ndim != 3:
        return None
    h_img, w_img = frame.shape[:2]
    x, y, w, h = face
    x0, x1 = max(0, int(x - 0.5 * w)), min(w_img, int(x + 1.5 * w))
    y0, y1 = max(0, int(y + 0.45 * h)), min(h_img, int(y + 0.80 * h))
    step = max(1, w // 100)
    roi = frame[y0:y1:step, x0:x1:step].astype(np.float32)
    if roi.shape[0] < 2 or roi.shape[1] < 8:
        return None
    # a clipped channel distorts chroma: such pixels neither vote for skin nor against it
    clipped = roi.max(axis=2) >= 250
    fx0, fx1 = (x - x0) // step, (x + w - x0) // step
    if clipped[:, fx0:fx1].mean() > 0.5:
        return None
    valid = ~clipped
    total = roi.sum(axis=2) + 1.0
    r, g = roi[..., 2] / total, roi[..., 1] / total
    cx = (x + w // 2 - x0) // step
    half = max(1, int(0.1 * w) // step)
    centre = (slice(None), slice(cx - half, cx + half + 1))
    ok = valid[centre]
    if ok.sum() < 4:
        return None
    ref_r, ref_g = np.median(r[centre][ok]), np.median(g[centre][ok])
    ref_sum = float(np.median(total[centre][ok]))
    skin = ((np.hypot(r - ref_r, g - ref_g) < 0.03)
            & (total > 0.6 * ref_sum) & (total < 1.6 * ref_sum) & valid)
    roi.fill(0)
    n_valid = valid.sum(axis=0)
    cols = (skin.sum(axis=0) > 0.5 * n_valid) | (n_valid < 0.5 * valid.shape[0])
    gap = max(1, int(0.04 * w) // step)
    n = len(cols)
    left = cx
    while left > 0 and cols[max(0, left - gap):left].any():
        left -= 1
    right = cx
    while right < n - 1 and cols[right + 1:right + 1 + gap].any():
        right += 1
    if min(cx - left, right - cx) * step < 0.05 * w:
        return None  # no skin on one side of the centre: nothing to compare
    p = ((cx - left) - (right - cx)) / (right - left)
    return math.degrees(math.asin(max(-1.0, min(1.0, 2.0 * p))))


def assess(frame: np.ndarray, det: Detection, config: CaptureConfig) -> Quality:
    """Every gate component for one frame, with hints for those that fail."""
    cfg = config
    w_img, h_img = det.frame_size
    n_faces = len(det.faces)
    if det.face is None or det.profile != 0:
        hint = "look_at_camera" if det.face is not None else "no_face"
        comp = Component("single_face_present", float(n_faces), False, hint)
        yaw = None if det.profile == 0 else 60.0 * det.profile
        return Quality((comp,), False, 0.0, yaw, det.face)
    x, y, w, h = det.face
    comps: list[Component] = [Component(
        "single_face_present", float(n_faces), n_faces == 1,
        None if n_faces == 1 else "one_person")]
    scores: list[float] = []

    # face_size: inter-eye distance when the eyes are found, else the face width
    if det.eyes is not None:
        (lx, ly), (rx, ry) = det.eyes
        size, low, measure = math.hypot(rx - lx, ry - ly), cfg.min_inter_eye_px, "inter_eye"
    else:
        size, low, measure = float(w), cfg.min_face_width_px, "face_width"
    too_big = h > cfg.max_face_height_fraction * h_img
    ok = size >= low and not too_big
    comps.append(Component("face_size", size, ok,
                           None if ok else ("move_back" if too_big else "move_closer"), measure))
    scores.append(min(1.0, size / (1.5 * low)))

    # centring
    off = max(abs(x + w / 2 - w_img / 2) / w_img, abs(y + h / 2 - h_img / 2) / h_img)
    ok = off <= cfg.max_centre_offset
    comps.append(Component("centring", off, ok, None if ok else "center_face"))
    scores.append(1.0 - min(1.0, off / max(cfg.max_centre_offset, 1e-9)) * 0.5)

    # the inner face (no hair or background at the box edges), full resolution
    inner = det.gray[y + h // 10:y + h - h // 10, x + w // 10:x + w - w // 10]
    sw = cfg.sharpness_width
    sh = max(8, round(inner.shape[0] * sw / max(1, inner.shape[1])))
    interp = cv2.INTER_AREA if inner.shape[1] >= sw else cv2.INTER_LINEAR
    sized = cv2.resize(inner, (sw, sh), interpolation=interp)
    lap = cv2.Laplacian(sized, cv2.CV_32F)
    # contrast-normalised: as if the face's grey levels had a standard deviation of 50, so
    # that dim light (which scales the Laplacian down) is judged by luminance, not here
    sharp = float(lap.var()) * (50.0 / max(5.0, float(sized.std()))) ** 2
    sized.fill(0)
    lap.fill(0)
    ok = sharp >= cfg.min_sharpness
    comps.append(Component("sharpness", sharp, ok, None if ok else "hold_still"))
    scores.append(min(1.0, sharp / (3 * cfg.min_sharpness)))

    # luminance and exposure
    mean = float(inner.mean())
    ok = cfg.min_luminance <= mean <= cfg.max_luminance
    comps.append(Component("luminance_mean", mean, ok, None if ok else (
        "more_light" if mean < cfg.min_luminance else "less_light")))
    mid = (cfg.min_luminance + cfg.max_luminance) / 2
    scores.append(1.0 - 0.5 * min(1.0, abs(mean - mid) / max(1.0, mid - cfg.min_luminance)))
    total = max(1, inner.size)
    under = np.count_nonzero(inner <= cfg.under_exposure_level) / total
    over = np.count_nonzero(inner >= cfg.over_exposure_level) / total
    ok = under <= cfg.max_under_exposure
    comps.append(Component("under_exposure", under, ok, None if ok else "more_light"))
    ok = over <= cfg.max_over_exposure
    comps.append(Component("over_exposure", over, ok, None if ok else "less_light"))

    # eyes visible
    ok = det.eyes is not None
    comps.append(Component("eyes_visible", 1.0 if ok else 0.0, ok, None if ok else "open_eyes"))

    # head pose, yaw
    yaw = yaw_proxy(frame, det.face)
    ok = yaw is not None and abs(yaw) <= cfg.max_yaw_deg
    comps.append(Component("head_pose_yaw", float("nan") if yaw is None else yaw, ok,
                           None if ok else "look_at_camera"))
    if yaw is not None:
        scores.append(1.0 - 0.5 * min(1.0, abs(yaw) / max(cfg.max_yaw_deg, 1e-9)))

    passed = all(c.passed for c in comps)
    score = 100.0 * math.prod(max(0.05, s) for s in scores) ** (1.0 / len(scores))
    return Quality(tuple(comps), passed, round(score, 3), yaw, det.face)
