"""QR codes on screens and in camera frames (appliance.kiosk.qrcodes): what the PAD shows is
what the kiosk's camera reads, up to the largest matter §6 allows."""

from __future__ import annotations

import base64
import os

import cv2
import numpy as np
import pytest

from appliance.kiosk.qrcodes import BROKEN_VERSION, QrError, QrReader, read_qr, render_qr
from appliance.node import objects as ob
from tests.node.world import make_world

WORLD = make_world()


def largest_matter() -> ob.Signed[ob.MatterBody]:
    """A matter as close to 1,200 bytes (§6) as the field limits let it get."""
    agencies = tuple(f"海淀区第{i:02d}政务服务机构" for i in range(16))
    m = WORLD.matter(agencies=agencies, title="开" * 40, purpose="用" * 50,
                     licenses=tuple(WORLD.licenses))
    while len(m.encoded) > ob.MAX_MATTER_BYTES:
        agencies = agencies[:-1]
        m = WORLD.matter(agencies=agencies, title="开" * 40, purpose="用" * 50,
                         licenses=tuple(WORLD.licenses))
    return m


def camera_frame(code: np.ndarray, size: tuple[int, int], side: int) -> np.ndarray:
    """The code held up to the camera: ``side`` px wide in a ``size`` colour frame, in
    perspective, blurred and noisy."""
    w, h = size
    code = cv2.resize(code, (side, side), interpolation=cv2.INTER_AREA)
    src = np.float32([[0, 0], [side, 0], [side, side], [0, side]])
    x0, y0 = (w - side) // 2, (h - side) // 2
    d = side // 30
    dst = np.float32([[x0 + d, y0], [x0 + side, y0 + d], [x0 + side - d, y0 + side],
                      [x0, y0 + side - d]])
    m = cv2.getPerspectiveTransform(src, dst)
    frame = np.full((h, w, 3), 90, np.uint8)
    warped = cv2.warpPerspective(cv2.cvtColor(code, cv2.COLOR_GRAY2BGR), m, (w, h))
    mask = cv2.warpPerspective(np.full((side, side), 255, np.uint8), m, (w, h))
    frame[mask > 0] = warped[mask > 0]
    frame = cv2.GaussianBlur(frame, (0, 0), 0.8)
    rng = np.random.default_rng(1)
    return np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8)


def test_render_and_read_back() -> None:
    text = ob.encode_qr(ob.MATTER_PREFIX, WORLD.matter())
    image = render_qr(text)
    assert image.dtype == np.uint8 and image.ndim == 2
    assert read_qr(image) == text
    assert ob.decode_matter_qr(read_qr(image)).body == WORLD.matter().body


def test_the_largest_matter_on_a_pad_screen_is_read_by_the_kiosk_camera() -> None:
    """§6: enc(signed_matter) <= 1,200 bytes, so its QR text fits a version-30 code at level
    L; shown at the size a PAD shows it (the page's 360 CSS px on a 2x tablet screen) and
    held up to a 1280x720 kiosk camera at a third of the frame's height."""
    m = largest_matter()
    assert ob.MAX_MATTER_BYTES - 100 < len(m.encoded) <= ob.MAX_MATTER_BYTES
    text = ob.encode_qr(ob.MATTER_PREFIX, m)
    code = render_qr(text, module_px=4)
    modules = code.shape[0] // 4 - 8
    assert modules <= 17 + 4 * 30  # version 30 or less
    frame = camera_frame(render_qr(text, module_px=6), (1280, 720), 560)
    reader = QrReader()
    assert ob.decode_matter_qr(reader.read(frame)) == m
    assert reader.read(np.full((720, 1280, 3), 90, np.uint8)) is None  # nothing there


def test_a_confirmation_and_a_session_request_are_read_at_640x480() -> None:
    conf = WORLD.confirmation(WORLD.matter(), bytes(16))
    req = ob.SessionRequest(bytes(16), bytes(32), "authorize", bytes(32))
    reader = QrReader()
    for text in (ob.encode_qr(ob.CONFIRMATION_PREFIX, conf), ob.encode_qr(ob.SESSION_PREFIX,
                                                                             req)):
        frame = camera_frame(render_qr(text, module_px=4), (640, 480), 400)
        assert reader.read(frame) == text


def test_codes_of_every_size_a_matter_takes_are_read_back() -> None:
    """From a short confirmation to the largest matter, every 37 characters, twice each with
    other data (OpenCV's own detectors missed one in thirteen of these)."""
    reader = QrReader()
    versions = set()
    for n in range(50, 1700, 37):
        for _ in range(2):
            text = "GOVAUTH1:" + base64.urlsafe_b64encode(os.urandom(n)).decode()[:n]
            image = render_qr(text, module_px=3)
            versions.add((image.shape[0] // 3 - 8 - 17) // 4)
            assert reader.read(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)) == text, n
    # the encoder's unreadable version is never made; texts of its size are one larger
    assert BROKEN_VERSION not in versions and BROKEN_VERSION + 1 in versions


def test_too_long_for_any_code() -> None:
    with pytest.raises(QrError):
        render_qr("x" * 8000)
