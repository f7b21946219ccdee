"""QR codes for the screen, rendered on the terminal with ``cv2.QRCodeEncoder`` (no network,
no JavaScript library): the receipt's transaction id and the PAD's matter QR, as PNG."""

from __future__ import annotations

import cv2
import numpy as np

QUIET_MODULES = 4  # ISO/IEC 18004 quiet zone; the encoder's own margin is 2 modules


def qr_image(text: str, *, module_px: int = 8) -> np.ndarray:
    """Greyscale uint8 image of ``text``; ValueError when it cannot be encoded."""
    encoder = cv2.QRCodeEncoder.create(cv2.QRCodeEncoder.Params())
    try:
        small = encoder.encode(text)
    except cv2.error as exc:
        raise ValueError(f"the QR encoder refused the text: {exc.msg}") from None
    if small is None or small.size == 0:
        raise ValueError("the QR encoder could not encode the text")
    big = cv2.resize(small, None, fx=module_px, fy=module_px, interpolation=cv2.INTER_NEAREST)
    m = (QUIET_MODULES - 2) * module_px
    return cv2.copyMakeBorder(big, m, m, m, m, cv2.BORDER_CONSTANT, value=255)


def qr_png(text: str, *, module_px: int = 8) -> bytes:
    """``text`` as a QR code in PNG bytes (in memory)."""
    image = qr_image(text, module_px=module_px if len(text) < 400 else 4)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
