"""QR codes on screens and in camera frames: render a text as a QR image, read the texts of
QR codes a camera sees. Used for the matter (``GOVAUTH1:``), the clerk's confirmation
(``GOVCONF1:``), the kiosk's session request (``GOVSESS1:``) and the receipt (``GOVTX1:``);
their formats are :mod:`appliance.node.objects`.

:func:`render_qr` uses ``cv2.QRCodeEncoder`` (quiet zone of four modules, as ISO/IEC 18004
asks); :class:`QrReader` reads camera frames with ZXing (the ``zxing-cpp`` package):
OpenCV's own detectors failed on about one code in thirteen of the sizes a matter takes,
depending on the data (docs/decisions.md). Nothing
here writes an image anywhere.
"""

from __future__ import annotations

import cv2
import numpy as np
import zxingcpp

__all__ = ["QrError", "QrReader", "read_qr", "render_qr"]


class QrError(ValueError):
    """A text the QR encoder cannot encode (too long for the largest code)."""


# -- the image ----------------------------------------------------------------------------------

QUIET_MODULES = 4


def render_qr(text: str, *, module_px: int = 6) -> np.ndarray:
    """A greyscale uint8 image of ``text`` (a matter, a receipt's tx id, any text) as a QR
    code, ``module_px`` pixels per module, with a quiet zone of four modules (the encoder's
    own margin is two). :class:`QrError` when it cannot be encoded."""
    small = _encode(text)
    if small.shape[0] == 17 + 4 * BROKEN_VERSION + 4:  # the encoder's 2-module margin
        small = _encode(text, BROKEN_VERSION + 1)
    margin = (QUIET_MODULES - 2) * module_px
    big = cv2.resize(small, None, fx=module_px, fy=module_px, interpolation=cv2.INTER_NEAREST)
    return cv2.copyMakeBorder(big, margin, margin, margin, margin, cv2.BORDER_CONSTANT,
                              value=255)


#: OpenCV 4.x's encoder makes version-21 codes that no reader decodes (neither ZXing nor
#: OpenCV's own detectors; every other version from 1 to 40 reads back): :func:`render_qr`
#: makes such a text one version larger.
BROKEN_VERSION = 21


def _encode(text: str, version: int | None = None) -> np.ndarray:
    params = cv2.QRCodeEncoder.Params()
    if version is not None:
        params.version = version
    try:
        small = cv2.QRCodeEncoder.create(params).encode(text)
    except cv2.error as exc:
        raise QrError(f"the QR encoder refused the text: {exc.msg}") from None
    if small is None or small.size == 0:
        raise QrError("the QR encoder could not encode the text")
    return small


class QrReader:
    """Reads the QR texts of camera frames (BGR or greyscale)."""

    def read(self, frame: np.ndarray) -> str | None:
        """The text of the first QR code found in ``frame``, or None."""
        grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        try:
            found = zxingcpp.read_barcodes(grey, formats=zxingcpp.BarcodeFormat.QRCode)
        finally:
            if grey is not frame:
                grey.fill(0)
        for code in found:
            if code.valid and code.text:
                return code.text
        return None


def read_qr(frame: np.ndarray) -> str | None:
    """The text of a QR code seen in ``frame`` (BGR or greyscale), or None."""
    return QrReader().read(frame)
