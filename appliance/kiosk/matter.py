"""The matter QR: what a window clerk hands the kiosk to start an authorization.

Text payload (docs/authorization-flow.md)::

    GOVAUTH1:<base64url, no padding, of canonical CBOR of>
    { "matter":   text 1..64 bytes     what the citizen is asked to authorize
      "agency":   text 1..64 bytes     the agency that will use the licenses
      "office":   text 1..128 bytes    display name of the office (shown on consent)
      "licenses": [ { "id": bytes(32), "name": text 1..64 bytes } ]   1..16, ids distinct
      "subject":  bytes(32)            the citizen identifier
      "not_after": uint ms             the authorization expires then }

A license ``id`` is the SM3 digest of the license document, the one its issuing office
deposited with ``evidence.deposit``. The whole payload is at most :data:`MAX_PAYLOAD`
characters, checked before anything is decoded. Decoding is strict: one canonical
encoding per matter (base64url without padding and with zero trailing bits, canonical CBOR,
exactly these keys), so the same matter always has the same QR text. Display texts may not
hold control characters (they are shown to the citizen as they are).

The QR image: :func:`render_qr` with ``cv2.QRCodeEncoder`` (quiet zone of four modules, as
ISO/IEC 18004 asks), :func:`read_qr` with ``cv2.QRCodeDetector`` on camera frames, falling
back to OpenCV's ``QRCodeDetectorAruco``, which finds the dense high-version codes that the
first one misses. Nothing here writes an image anywhere.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from appliance import wire

__all__ = [
    "MAX_LICENSES", "MAX_PAYLOAD", "PREFIX", "License", "Matter", "MatterError",
    "decode_qr", "encode_qr", "read_qr", "render_qr",
]

PREFIX = "GOVAUTH1:"
MAX_PAYLOAD = 2048  # characters of the whole QR text, prefix included
MAX_LICENSES = 16
MAX_MATTER = 64
MAX_AGENCY = 64
MAX_OFFICE = 128
MAX_LICENSE_NAME = 64
MAX_UINT = 2**64 - 1
_KEYS = frozenset({"matter", "agency", "office", "licenses", "subject", "not_after"})
_LICENSE_KEYS = frozenset({"id", "name"})
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class MatterError(ValueError):
    """A matter QR that cannot be used. ``reason`` is a stable code: ``type``, ``oversize``,
    ``prefix``, ``base64``, ``cbor``, ``fields``, ``field`` (``detail`` names it),
    ``licenses``, ``duplicate_license``, ``expired``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class License:
    id: bytes  # SM3 of the license document
    name: str


@dataclass(frozen=True)
class Matter:
    matter: str
    agency: str
    office: str
    licenses: tuple[License, ...]
    subject: bytes
    not_after: int  # ms since 1970 UTC

    def __post_init__(self) -> None:
        _check(self)

    def expired(self, now_ms: int) -> bool:
        """True once ``not_after`` has passed (``not_after`` itself is still valid)."""
        return now_ms > self.not_after

    def to_obj(self) -> dict[str, Any]:
        return {"matter": self.matter, "agency": self.agency, "office": self.office,
                "licenses": [{"id": lic.id, "name": lic.name} for lic in self.licenses],
                "subject": self.subject, "not_after": self.not_after}

    def display(self) -> dict[str, Any]:
        """JSON-safe, for the consent screen (the subject identifier is not shown)."""
        return {"matter": self.matter, "agency": self.agency, "office": self.office,
                "licenses": [{"id": lic.id.hex(), "name": lic.name} for lic in self.licenses],
                "not_after": self.not_after}


def _text(value: object, name: str, limit: int) -> str:
    if type(value) is not str:
        raise MatterError("field", f"{name} must be text")
    size = len(value.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= limit:
        raise MatterError("field", f"{name} must be 1..{limit} UTF-8 bytes, got {size}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MatterError("field", f"{name} is not valid UTF-8 text") from None
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
           for c in value):
        raise MatterError("field", f"{name} holds control or unassigned characters")
    return value


def _bytes32(value: object, name: str) -> bytes:
    if type(value) is not bytes or len(value) != 32:
        raise MatterError("field", f"{name} must be 32 bytes")
    return value


def _check(m: Matter) -> None:
    _text(m.matter, "matter", MAX_MATTER)
    _text(m.agency, "agency", MAX_AGENCY)
    _text(m.office, "office", MAX_OFFICE)
    _bytes32(m.subject, "subject")
    if type(m.not_after) is not int or not 0 <= m.not_after <= MAX_UINT:
        raise MatterError("field", "not_after must be an unsigned integer (ms)")
    if type(m.licenses) is not tuple or not 1 <= len(m.licenses) <= MAX_LICENSES:
        raise MatterError("licenses", f"1..{MAX_LICENSES} licenses required")
    seen: set[bytes] = set()
    for i, lic in enumerate(m.licenses):
        if not isinstance(lic, License):
            raise MatterError("licenses", f"licenses[{i}] is not a License")
        _bytes32(lic.id, f"licenses[{i}].id")
        _text(lic.name, f"licenses[{i}].name", MAX_LICENSE_NAME)
        if lic.id in seen:
            raise MatterError("duplicate_license", f"licenses[{i}].id appears twice")
        seen.add(lic.id)


def encode_qr(m: Matter) -> str:
    """The QR text of ``m``; MatterError ``oversize`` when it would not fit the limit."""
    raw = wire.encode(m.to_obj())
    text = PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    if len(text) > MAX_PAYLOAD:
        raise MatterError("oversize", f"{len(text)} characters > {MAX_PAYLOAD}")
    return text


def decode_qr(text: object) -> Matter:
    """The matter in a QR text (surrounding whitespace ignored), or MatterError."""
    if not isinstance(text, str):
        raise MatterError("type", f"expected text, got {type(text).__name__}")
    if len(text) > MAX_PAYLOAD:
        raise MatterError("oversize", f"{len(text)} characters > {MAX_PAYLOAD}")
    text = text.strip(" \t\r\n")
    if not text.startswith(PREFIX):
        raise MatterError("prefix", f"not a matter code (no {PREFIX})")
    b64 = text[len(PREFIX):]
    if not _B64URL.fullmatch(b64) or len(b64) % 4 == 1:
        raise MatterError("base64", "not base64url without padding")
    try:
        raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    except (binascii.Error, ValueError):
        raise MatterError("base64", "not base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != b64:
        raise MatterError("base64", "not the canonical base64url of its bytes")
    try:
        obj = wire.decode(raw, max_size=MAX_PAYLOAD, max_depth=4)
    except wire.WireError as exc:
        raise MatterError("cbor", exc.reason) from None
    if not isinstance(obj, dict) or set(obj) != _KEYS:
        raise MatterError("fields", f"expected exactly the keys {sorted(_KEYS)}")
    lics = obj["licenses"]
    if not isinstance(lics, list) or not 1 <= len(lics) <= MAX_LICENSES:
        raise MatterError("licenses", f"1..{MAX_LICENSES} licenses required")
    licenses = []
    for i, lic in enumerate(lics):
        if not isinstance(lic, dict) or set(lic) != _LICENSE_KEYS:
            raise MatterError("licenses", f"licenses[{i}] must be {{id, name}}")
        licenses.append(License(_bytes32(lic["id"], f"licenses[{i}].id"),
                                _text(lic["name"], f"licenses[{i}].name", MAX_LICENSE_NAME)))
    not_after = obj["not_after"]
    if type(not_after) is not int or not_after < 0:
        raise MatterError("field", "not_after must be an unsigned integer (ms)")
    return Matter(obj["matter"], obj["agency"], obj["office"], tuple(licenses),
                  obj["subject"], not_after)


# -- the image ----------------------------------------------------------------------------------

QUIET_MODULES = 4


def render_qr(text: str, *, module_px: int = 6) -> np.ndarray:
    """A greyscale uint8 image of ``text`` (a matter, a receipt's tx id, any text) as a QR
    code, ``module_px`` pixels per module, with a quiet zone of four modules (the encoder's
    own margin is two). :class:`MatterError` ``oversize`` when it cannot be encoded."""
    encoder = cv2.QRCodeEncoder.create(cv2.QRCodeEncoder.Params())
    try:
        small = encoder.encode(text)
    except cv2.error as exc:
        raise MatterError("oversize", f"the QR encoder refused the text: {exc.msg}") from None
    if small is None or small.size == 0:
        raise MatterError("oversize", "the QR encoder could not encode the text")
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
