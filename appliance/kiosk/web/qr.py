"""QR codes for the screen as PNG, rendered on the terminal (``cv2.QRCodeEncoder`` through
:func:`appliance.kiosk.qrcodes.render_qr`; no network, no JavaScript library): the receipt's
transaction id and the PAD's matter QR."""

from __future__ import annotations

import cv2

from ..qrcodes import render_qr


def qr_png(text: str, *, module_px: int = 8) -> bytes:
    """``text`` as a QR code in PNG bytes (in memory); ValueError when it cannot be encoded."""
    image = render_qr(text, module_px=module_px if len(text) < 400 else 4)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
