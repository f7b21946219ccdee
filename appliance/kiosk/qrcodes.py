"""QR codes on screens and in camera frames: render a text as a QR image, read the texts of
QR codes a camera sees. Used for the matter (``GOVAUTH1:``), the clerk's confirmation
(``GOVCONF1:``), the kiosk's session request (``GOVSESS1:``) and the receipt (``GOVTX1:``);
their formats are :mod:`appliance.node.objects`.

:func:`render_qr` uses ``cv2.QRCodeEncoder`` (quiet zone of four modules, as ISO/IEC 18004
asks); :class:`QrReader` uses ``cv2.QRCodeDetector`` on camera frames, falling back to
OpenCV's ``QRCodeDetectorAruco``, which finds the dense high-version codes that the first one
misses. Nothing here writes an image anywhere.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["QrError", "QrReader", "read_qr", "render_qr"]


class QrError(ValueError):
    """A text the QR encoder cannot encode (too long for the largest code)."""


# -- the image ----------------------------------------------------------------------------------

QUIET_MODULES = 4


def render_qr(text: str, *, module_px: int = 6) -> np.ndarray:
    """A greyscale uint8 image of ``text`` (a matter, a receipt's tx id, any text) as a QR
    code, ``module_px`` pixels per module, with a quiet zone of four modules (the encoder's
    own margin is two). :class:`QrError` when it cannot be encoded."""
    encoder = cv2.QRCodeEncoder.create(cv2.QRCodeEncoder.Params())
    try:
        small = encoder.encode(text)
    except cv2.error as exc:
        raise QrError(f"the QR encoder refused the text: {exc.msg}") from None
    if small is None or small.size == 0:
        raise QrError("the QR encoder could not encode the text")
    margin = (QUIET_MODULES - 2) * module_px
    big = cv2.resize(small, None, fx=module_px, fy=module_px, interpolation=cv2.INTER_NEAREST)
    return cv2.copyMakeBorder(big, margin, margin, margin, margin, cv2.BORDER_CONSTANT,
                              value=255)


class QrReader:
    """Reads QR texts from camera frames; keeps its two OpenCV detectors between frames."""

    def __init__(self) -> None:
        self._plain = cv2.QRCodeDetector()
        self._aruco = cv2.QRCodeDetectorAruco()

    def read(self, frame: np.ndarray) -> str | None:
        for detector in (self._plain, self._aruco):
            try:
                text, _points, _straight = detector.detectAndDecode(frame)
            except cv2.error:
                continue
            if text:
                return text
        return None


def read_qr(frame: np.ndarray) -> str | None:
    """The text of a QR code seen in ``frame`` (BGR or greyscale), or None."""
    return QrReader().read(frame)
