"""The identity-service double of the HIL rig: a TEST FIXTURE, not a biometric matcher.

It speaks the identity-service HTTP API the terminal uses (``appliance.kiosk.identity``),
ledger-protocol §6 revision 2:

- ``POST /v1/attest`` (``application/cbor``, body ``{envelope, subject, capture_digest,
  terminal, action, target}`` and optionally ``represents``, at most 4 MiB, counted while
  reading) -> 200 ``signed_attestation`` (§6): ``{session (the envelope's), capture_digest,
  subject, terminal, action, target, result, score, issued_at, service, enrollment}`` and
  ``represents`` when asked, signed with SM2 over ``enc(body)``. Errors ``{"error": code,
  "message": text}``, checked in this order: 413 ``too_large`` (the connection is then
  closed, the rest not read), 503 ``unavailable`` (mode ``down``), 503 ``not_enrolled`` (the
  service key's enrollment is not set yet), 400 ``bad_request`` (wrong content type, not
  canonical CBOR, wrong fields or types, an action other than ``authorize``/``revoke``),
  404 ``unknown_subject``, 403 ``not_representative`` (``represents`` given and the registry
  does not say the subject is that enterprise's legal representative), 400 ``bad_envelope``
  (shape of the envelope, the key does not open, MAC over session || iv || ciphertext,
  padding), 400 ``digest_mismatch``, 400 ``bad_request`` (an image that does not decode).
- ``GET /v1/info`` -> ``{"service", "alg": "sm2", "public_key", "enrollment"}``
  (``enrollment`` null until set).
- ``POST /hil/mode`` (fixture only) body ``{"mode": M}`` -> ``{"mode": M}``; ``GET /hil/mode``.
- ``POST /hil/enrollment`` (fixture only) body ``{"enrollment": bytes(32)}`` -> the same: the
  tx_id of the service key's ``device.enroll`` (role ``identity``), once it is on chain.

Subjects and enterprises are identifier hashes (§6): an enrolled NAME is the citizen's
identifier (ASCII, e.g. an ID-card number), subject = ``SM3("GOVID1:" || NAME upper-cased)``;
``represents`` pairs ``SUBJECT_NAME=CREDIT_CODE`` are kept as the two hashes.

How it "compares" (an honest toy, good enough to tell the astronaut from the cameraman, and
nothing more): the largest Haar frontal face in each image (OpenCV's bundled cascade; fewer
neighbours are tried when none is found), its inner part cropped, resized to 64x64 grey,
histogram-equalised; score = 1000 x the normalised cross-correlation of the two crops,
clipped to 0..1000; ``match`` when score >= the threshold (600). A capture without a face
scores 0. Enrolled references are kept as these 64x64 crops only.

Modes: ``honest`` (the comparison decides), ``no_match`` (always ``no_match``, score 0,
still honestly signed), ``timeout`` (accepts the request and never answers; the handler
waits until the client gives up or the double stops), ``wrong_key`` (signs with a fresh key
generated at start and puts that key in ``public_key``), ``down`` (``/v1/attest`` answers 503
``unavailable``; ``/hil/mode`` still works, so a test can bring it back).

Captures are decrypted in memory only; the JPEG bytes and decoded pixel arrays are dropped
(arrays overwritten) after the comparison; nothing is written to disk, and the log carries
decisions and scores, never pixels.

Python API: :class:`IdentityService` (in this event loop) and
:class:`IdentityServiceProcess` (the CLI as a subprocess). CLI: ``appliance-hil
identity-service``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from aiohttp import web

from appliance import wire
from appliance.gm import sm2
from appliance.httpbody import read_capped
from appliance.kiosk.capture import envelope as env
from hil.ledger_rules import identifier_hash
from hil.process import FixtureProcess, serve_until_stopped

__all__ = [
    "ACTIONS", "DEFAULT_SERVICE", "DEFAULT_THRESHOLD", "MAX_BODY", "MODES", "IdentityService",
    "IdentityServiceProcess", "face_template", "load_key", "load_reference", "make_key",
    "parse_enroll", "parse_represent", "score", "subject_of",
]

MODES = ("honest", "no_match", "timeout", "wrong_key", "down")
DEFAULT_SERVICE = "hil-identity"
DEFAULT_THRESHOLD = 600
MAX_BODY = 4 * 1024 * 1024
CBOR = "application/cbor"
TEMPLATE_SIZE = 64
ACTIONS = ("authorize", "revoke")
_REQUEST_FIELDS = frozenset({"envelope", "subject", "capture_digest", "terminal", "action",
                             "target"})
_REQUEST_OPTIONAL = frozenset({"represents"})
_SYNTHETIC = ("astronaut", "camera")
_TIMEOUT_HOLD_S = 3600.0
_SHUTDOWN_TIMEOUT_S = 2.0


def _log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    print(f"{stamp} identity-service: {message}", file=sys.stderr, flush=True)


# -- keys -----------------------------------------------------------------------------------


def make_key(path: str | os.PathLike[str]) -> bytes:
    """Write a fresh SM2 private key to ``path`` (64 hex digits and a newline, mode 0600;
    refuses to overwrite) and return its 65-byte public key."""
    private, public = sm2.generate_keypair()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private.hex() + "\n")
    return public


def load_key(path: str | os.PathLike[str]) -> bytes:
    """The 32-byte SM2 private key in ``path`` (see :func:`make_key`); ValueError if not."""
    text = Path(path).read_text(encoding="ascii", errors="replace").strip()
    if len(text) != 64:
        raise ValueError(f"{path}: expected 64 hex digits (an SM2 private key)")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path}: not hex") from None
    sm2.public_key_of(key)  # raises for a scalar out of range
    return key


def subject_of(name: str) -> bytes:
    """The subject of an enrolled NAME (the citizen's identifier): its identifier hash,
    ``SM3("GOVID1:" || NAME upper-cased)`` (§6); ValueError for a non-ASCII NAME."""
    return identifier_hash(name)


# -- the toy comparison ---------------------------------------------------------------------


def load_reference(spec: str) -> np.ndarray:
    """A BGR reference image: ``synthetic:astronaut`` / ``synthetic:camera`` (skimage.data,
    in memory) or an image file path."""
    if spec.startswith("synthetic:"):
        name = spec.split(":", 1)[1]
        if name not in _SYNTHETIC:
            raise ValueError(f"{spec!r}: choose synthetic:astronaut or synthetic:camera")
        from skimage import data as skdata

        image = getattr(skdata, name)()
        code = cv2.COLOR_RGB2BGR if image.ndim == 3 else cv2.COLOR_GRAY2BGR
        return cv2.cvtColor(image, code)
    image = cv2.imread(spec, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{spec!r}: not a readable image file")
    return image


def face_template(image: np.ndarray) -> np.ndarray | None:
    """The 64x64 equalised grey crop of the largest frontal face, or None without a face."""
    from appliance.kiosk.capture.detect import FRONTAL, cascade

    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    try:
        faces: Sequence[Sequence[int]] = ()
        for neighbours in (4, 3, 2, 1):
            faces = cascade(FRONTAL).detectMultiScale(grey, 1.1, neighbours, minSize=(40, 40))
            if len(faces):
                break
        if not len(faces):
            return None
        x, y, w, h = (int(v) for v in max(faces, key=lambda b: int(b[2]) * int(b[3])))
        m = w // 10  # the inner face: less background and hair
        crop = grey[y + m:y + h - m // 2, x + m:x + w - m]
        small = cv2.resize(crop, (TEMPLATE_SIZE, TEMPLATE_SIZE), interpolation=cv2.INTER_AREA)
        return cv2.equalizeHist(small)
    finally:
        if grey is not image:
            grey.fill(0)


def score(reference: np.ndarray, capture: np.ndarray | None) -> int:
    """0..1000: normalised cross-correlation of two templates (0 without a capture face)."""
    if capture is None:
        return 0
    a = reference.astype(np.float64) - reference.mean()
    b = capture.astype(np.float64) - capture.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if denom == 0.0:
        return 0
    return int(round(min(1.0, max(0.0, float((a * b).sum()) / denom)) * 1000))


# -- the service ----------------------------------------------------------------------------


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _reply(status: int, obj: Mapping[str, Any], *, close: bool = False) -> web.Response:
    response = web.Response(status=status, body=wire.encode(dict(obj)), content_type=CBOR)
    if close:
        response.force_close()
    return response


class IdentityService:
    """The double in this event loop: ``await start()`` -> URL; ``await stop()``."""

    def __init__(self, private_key: bytes, enrolled: Mapping[str, np.ndarray], *,
                 host: str = "127.0.0.1", port: int = 0, mode: str = "honest",
                 service: str = DEFAULT_SERVICE, threshold: int = DEFAULT_THRESHOLD,
                 enrollment: bytes | None = None,
                 represents: Iterable[tuple[str, str]] = (),
                 clock_ms: Callable[[], int] | None = None,
                 log: Callable[[str], None] = _log) -> None:
        """``enrollment``: the tx_id of the service key's device.enroll (role identity); until
        it is set (here, :meth:`set_enrollment` or ``POST /hil/enrollment``) ``/v1/attest``
        answers 503 ``not_enrolled``. ``represents``: (subject NAME, enterprise CREDIT_CODE)
        pairs of the registry of legal representatives."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
        self.enrollment: bytes | None = None
        if enrollment is not None:
            self.set_enrollment(enrollment)
        self.representatives: set[tuple[bytes, bytes]] = {
            (identifier_hash(name), identifier_hash(code)) for name, code in represents}
        self.private_key = private_key
        self.public_key = sm2.public_key_of(private_key)
        self._wrong_private, self.wrong_public_key = sm2.generate_keypair()
        self.templates: dict[bytes, np.ndarray] = {}
        for name, image in enrolled.items():
            template = face_template(image)
            if template is None:
                raise ValueError(f"no face found in the reference image of {name!r}")
            self.templates[subject_of(name)] = template
        self.names = sorted(enrolled)
        self.host, self.requested_port = host, port
        self.mode = mode
        self.service = service
        self.threshold = threshold
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.log = log
        self.url = ""
        self.port = 0
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    def set_enrollment(self, enrollment: bytes) -> None:
        """The tx_id of the service key's device.enroll, named in every attestation."""
        if type(enrollment) is not bytes or len(enrollment) != 32:
            raise ValueError("an enrollment is a 32-byte tx_id")
        self.enrollment = enrollment

    async def start(self) -> str:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/attest", self._attest)
        app.router.add_get("/v1/info", self._info)
        app.router.add_post("/hil/mode", self._set_mode)
        app.router.add_get("/hil/mode", self._get_mode)
        app.router.add_post("/hil/enrollment", self._set_enrollment)
        # lingering_time=0: a refused oversize body is not drained, the connection is closed.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=_SHUTDOWN_TIMEOUT_S, lingering_time=0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        self.log(f"serving at {self.url}; service {self.service!r}; public key "
                 f"{self.public_key.hex()}; key enrollment "
                 f"{self.enrollment.hex() if self.enrollment else 'not set'}; enrolled "
                 f"{', '.join(self.names) or 'nobody'}; {len(self.representatives)} "
                 f"representatives; mode {self.mode}; TEST FIXTURE, not a biometric matcher")
        return self.url

    async def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> IdentityService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- endpoints ---------------------------------------------------------------------------

    async def _info(self, request: web.Request) -> web.Response:
        return _reply(200, {"service": self.service, "alg": "sm2",
                            "public_key": self.public_key, "enrollment": self.enrollment})

    async def _get_mode(self, request: web.Request) -> web.Response:
        return _reply(200, {"mode": self.mode})

    async def _set_enrollment(self, request: web.Request) -> web.Response:
        try:
            obj = wire.decode(await request.content.read(1024 + 1), 1024)
        except wire.WireError as exc:
            return _reply(400, {"error": "bad_request", "message": f"not CBOR: {exc}"})
        value = obj.get("enrollment") if type(obj) is dict and len(obj) == 1 else None
        if type(value) is not bytes or len(value) != 32:
            return _reply(400, {"error": "bad_request",
                                "message": "body must be {enrollment: bytes(32)}"})
        self.set_enrollment(value)
        self.log(f"key enrollment {value.hex()}")
        return _reply(200, {"enrollment": value})

    async def _set_mode(self, request: web.Request) -> web.Response:
        try:
            obj = wire.decode(await request.content.read(1024 + 1), 1024)
        except wire.WireError as exc:
            return _reply(400, {"error": "bad_request", "message": f"not CBOR: {exc}"})
        mode = obj.get("mode") if type(obj) is dict else None
        if mode not in MODES:
            return _reply(400, {"error": "bad_request",
                                "message": f"mode must be one of {', '.join(MODES)}"})
        self.mode = mode
        self.log(f"mode {mode}")
        return _reply(200, {"mode": mode})

    async def _attest(self, request: web.Request) -> web.Response:
        self.requests += 1
        started = time.monotonic()
        try:
            response = await self._handle(request)
        except _ApiError as exc:
            response = _reply(exc.status, {"error": exc.code, "message": exc.message},
                              close=exc.status == 413)
        self.log(f"POST /v1/attest {response.status} {time.monotonic() - started:.3f}s")
        return response

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_type != CBOR:
            raise _ApiError(400, "bad_request", f"Content-Type must be {CBOR}")
        data = await read_capped(request, MAX_BODY)
        if data is None:
            raise _ApiError(413, "too_large", f"body over {MAX_BODY} bytes")
        return data

    async def _handle(self, request: web.Request) -> web.Response:
        body = await self._read_body(request)
        if self.mode == "down":
            return _reply(503, {"error": "unavailable", "message": "mode down (TEST FIXTURE)"})
        enrollment = self.enrollment
        if enrollment is None:
            return _reply(503, {"error": "not_enrolled", "message": "the service key's "
                                "enrollment is not set (--enrollment, POST /hil/enrollment)"})
        try:
            obj = wire.decode(body, MAX_BODY)
        except wire.WireError as exc:
            raise _ApiError(400, "bad_request", f"not canonical CBOR: {exc.reason}") from None
        if type(obj) is not dict or not _REQUEST_FIELDS <= set(obj) <= \
                _REQUEST_FIELDS | _REQUEST_OPTIONAL:
            raise _ApiError(400, "bad_request", "body must have exactly envelope, subject, "
                            "capture_digest, terminal, action, target and optionally "
                            "represents")
        subject, digest, envelope = obj["subject"], obj["capture_digest"], obj["envelope"]
        for key in ("subject", "capture_digest", "terminal", "target", "represents"):
            value = obj.get(key, bytes(32))
            if type(value) is not bytes or len(value) != 32:
                raise _ApiError(400, "bad_request", f"{key} must be 32 bytes")
        if obj["action"] not in ACTIONS or type(obj["action"]) is not str:
            raise _ApiError(400, "bad_request", f"action must be one of {', '.join(ACTIONS)}")
        if type(envelope) is not dict:
            raise _ApiError(400, "bad_request", "envelope must be a map")
        reference = self.templates.get(subject)
        if reference is None:
            raise _ApiError(404, "unknown_subject", "no reference photo for this subject")
        represents = obj.get("represents")
        if represents is not None and (subject, represents) not in self.representatives:
            raise _ApiError(403, "not_representative", "the registry does not name this "
                            "subject the enterprise's legal representative")
        try:
            image = env.open_envelope(self.private_key, envelope)
        except env.EnvelopeError as exc:
            raise _ApiError(400, "bad_envelope", f"{type(exc).__name__}: {exc}") from None
        try:
            env.check_digest(image, digest)
        except env.DigestMismatchError as exc:
            raise _ApiError(400, "digest_mismatch", str(exc)) from None
        value = await asyncio.to_thread(self._compare, reference, image)
        del image
        if value is None:
            raise _ApiError(400, "bad_request", "the capture is not a decodable image")
        result = "match" if value >= self.threshold else "no_match"
        if self.mode == "no_match":
            result, value = "no_match", 0
        if self.mode == "timeout":
            assert self._stopping is not None
            self.log("mode timeout: holding the answer")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), _TIMEOUT_HOLD_S)
            raise _ApiError(503, "unavailable", "stopping")
        attestation_body = {"session": envelope["session"], "capture_digest": digest,
                            "subject": subject, "terminal": obj["terminal"],
                            "action": obj["action"], "target": obj["target"],
                            "result": result, "score": value, "issued_at": self.clock_ms(),
                            "service": self.service, "enrollment": enrollment}
        if represents is not None:
            attestation_body["represents"] = represents
        key, public = self.private_key, self.public_key
        if self.mode == "wrong_key":
            key, public = self._wrong_private, self.wrong_public_key
        signature = sm2.sign(key, wire.encode(attestation_body))
        self.log(f"attestation {result} score {value} mode {self.mode}")
        return _reply(200, {"body": attestation_body, "alg": "sm2", "public_key": public,
                            "signature": signature})

    @staticmethod
    def _compare(reference: np.ndarray, jpeg: bytes) -> int | None:
        pixels = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if pixels is None:
            return None
        try:
            template = face_template(pixels)
            return score(reference, template)
        finally:
            pixels.fill(0)


# -- the CLI --------------------------------------------------------------------------------


def parse_enroll(items: Sequence[str]) -> dict[str, np.ndarray]:
    """``NAME=IMAGE`` items -> {name: BGR image}; ValueError with a clear message."""
    enrolled: dict[str, np.ndarray] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise ValueError(f"--enroll {item!r}: expected NAME=IMAGE")
        if not name.isascii():
            raise ValueError(f"--enroll {item!r}: NAME is the citizen's identifier (ASCII)")
        if name in enrolled:
            raise ValueError(f"--enroll: {name!r} given twice")
        enrolled[name] = load_reference(spec)
    return enrolled


def parse_represent(items: Sequence[str]) -> list[tuple[str, str]]:
    """``SUBJECT_NAME=CREDIT_CODE`` items -> pairs; ValueError with a clear message."""
    pairs = []
    for item in items:
        name, sep, code = item.partition("=")
        if not sep or not name or not code or not (name.isascii() and code.isascii()):
            raise ValueError(f"--represent {item!r}: expected SUBJECT_NAME=CREDIT_CODE (ASCII "
                             "identifiers)")
        pairs.append((name, code))
    return pairs


def parse_enrollment(text: str | None) -> bytes | None:
    """``--enrollment HEX`` (64 hex digits) -> 32 bytes; ValueError otherwise."""
    if text is None:
        return None
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != 32:
        raise ValueError(f"--enrollment {text!r}: expected 64 hex digits (a tx_id)")
    return value


def run_cli(*, key_file: str, enroll: Sequence[str], host: str, port: int, mode: str,
            service: str, threshold: int, enrollment: str | None = None,
            represent: Sequence[str] = (), exit_with_parent: bool = False) -> int:
    """``appliance-hil identity-service``: serve until SIGTERM/SIGINT; exit status."""
    try:
        private_key = load_key(key_file)
        enrolled = parse_enroll(enroll)
        double = IdentityService(private_key, enrolled, host=host, port=port, mode=mode,
                                 service=service, threshold=threshold,
                                 enrollment=parse_enrollment(enrollment),
                                 represents=parse_represent(represent))
    except (OSError, ValueError) as exc:
        _log(f"cannot start: {exc}")
        return 2

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            url = await double.start()
        except OSError as exc:
            _log(f"cannot serve on {host}:{port}: {exc}")
            await double.stop()
            return 1
        print(f"ready {url}", flush=True)
        await serve_until_stopped(stop, exit_with_parent=exit_with_parent, log=_log)
        await double.stop()
        _log("stopped")
        return 0

    return asyncio.run(main())


class IdentityServiceProcess(FixtureProcess):
    """``appliance-hil identity-service`` as a subprocess, for tests; ``.url`` once ready."""

    name = "identity-service"

    def __init__(self, key_file: str | os.PathLike[str], enroll: Sequence[str], *,
                 mode: str | None = None, service: str | None = None,
                 threshold: int | None = None, enrollment: bytes | None = None,
                 represent: Sequence[str] = (), port: int = 0, ready_timeout: float = 30.0,
                 log_path: str | os.PathLike[str] | None = None) -> None:
        args = ["identity-service", "--key", str(key_file), "--port", str(port)]
        for item in enroll:
            args += ["--enroll", item]
        for item in represent:
            args += ["--represent", item]
        for flag, value in (("--mode", mode), ("--service", service),
                            ("--threshold", threshold),
                            ("--enrollment", enrollment.hex() if enrollment else None)):
            if value is not None:
                args += [flag, str(value)]
        super().__init__(args, ready_timeout=ready_timeout, log_path=log_path)
        self.url = ""

    def start(self) -> IdentityServiceProcess:
        super().start()
        self.url = self.ready_line.split(None, 1)[1].strip()
        return self
