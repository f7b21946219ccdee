"""The asyncio adapter of the authorization flow: it does the I/O the flow asks for.

:class:`FlowRunner` owns the camera, the capture session, the identity client, the signer,
the light node and the audit sink, and executes the effects of
:class:`~appliance.kiosk.flow.AuthorizationFlow`; their results go back to the flow as events.
Every decision is the flow's. The UI talks to it with :meth:`FlowRunner.post` (UI events as
JSON-like dicts) and :meth:`FlowRunner.subscribe` (views, live capture guidance and preview
frames). See docs/authorization-flow.md.

Camera frames: while the flow scans, frames are searched for a matter QR code (throttled to
``scan_interval_s``); while it captures, each frame is fed to the
:class:`~appliance.kiosk.capture.CaptureSession` (in a worker thread: detection takes tens of
ms). Otherwise the camera is not read at all. Frames are overwritten once used; the preview
sent to subscribers is a small JPEG made in memory, at most ``preview_fps`` a second, and
only while somebody is subscribed. Nothing here writes image data anywhere.

Verifying (ledger-protocol §6): the matter a camera reads is verified before the consent
screen (its signature, the PAD's enrollment, each license deposit and its issuer), the
attestation and the clerk's confirmation before anything is signed; what they refer to on the
chain is fetched with proofs through ``references`` (:class:`appliance.node.references.
References`) and checked by :mod:`appliance.node.rules` against the trust anchor's admin keys.
The kiosk's own authorization is checked again against the same rules once it is included.

Signing: ``signer`` is a synchronous :class:`appliance.node.tx.Signer`, in the terminal the
:class:`appliance.node.tx.ModuleSigner` over the crypto module (the device key never leaves
it); :func:`appliance.node.tx.build_tx` calls it in a worker thread and checks the signature
before the transaction is used. The build-and-sign step is shielded: once the module is
asked to sign, the step runs to its end even if the session is cancelled, and every signature
it made gets its ``sign`` audit entry (with the module's counter, ``signer.last_counter``); a
transaction whose session has moved on is dropped unsent.

Time: ``clock`` is the wall clock (ms; the matter's expiry, timestamps, the view's
deadlines), ``monotonic`` a monotonic one (ms): the flow's timers run on it, so a step of the
system clock cannot stretch or cut a screen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import cv2
import numpy as np

from appliance.node.model import SignedTx

from . import flow as fl
from .capture.config import CaptureConfig
from .capture.session import CaptureSession
from .qrcodes import QrReader

__all__ = ["FlowRunner"]

log = logging.getLogger("appliance.kiosk")

Frame = tuple[np.ndarray, float]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class _Capture:
    """One capture attempt: the session, and the rule that it is closed exactly when no
    feed is in flight. :meth:`stop` (loop thread) never blocks: if a frame is being fed in a
    worker thread, the feeding thread closes the session as soon as its feed returns, so a
    feed cannot re-create a buffer (the best frame, the motion anchor) after the wipe."""

    def __init__(self, session: bytes, attempt: int, cs: CaptureSession) -> None:
        self.session, self.attempt, self.cs = session, attempt, cs
        self.stopped = False
        self.closed = threading.Event()
        self._lock = threading.Lock()

    def feed(self, frame: np.ndarray, ts: float) -> list[Any]:
        """In a worker thread."""
        events: list[Any] = []
        with self._lock:
            if not self.stopped:
                events = self.cs.feed(frame, ts)
        if self.stopped:  # stopped while feeding (stop() could not take the lock)
            self._close()
            return []
        return events

    def seal(self, service_public_key: bytes, session_id: bytes) -> Any:
        """In a worker thread; the session is wiped whatever happens."""
        self.stopped = True
        try:
            with self._lock:
                return self.cs.seal(service_public_key, session_id)
        finally:
            self._close()

    def stop(self) -> None:
        """Loop thread: close now, or leave it to the feed in flight."""
        self.stopped = True
        if self._lock.acquire(blocking=False):
            try:
                self._close_locked()
            finally:
                self._lock.release()

    def _close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        self.cs.cancel()
        self.cs.close()
        self.closed.set()


class _Refused(Exception):
    """A refusal of the kiosk's own (not a §6 rule of the chain)."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


class _Subscription:
    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(size)

    def put(self, msg: dict[str, Any] | None) -> None:
        while True:
            try:
                self.queue.put_nowait(msg)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.queue.get_nowait()  # the slowest reader loses the oldest message


class FlowRunner:
    """Drives ``flow`` with real I/O; see the module docstring.

    ``frames``: a :class:`~appliance.kiosk.capture.Camera` (or any object with a blocking
    ``read(timeout) -> (frame, ts) | None``), or an async iterator of ``(frame, ts)``.
    ``identity``: an :class:`~appliance.kiosk.identity.IdentityClient` (its
    ``service_public_key`` seals the capture unless ``service_public_key`` is given).
    ``node``: a :class:`~appliance.node.client.NodeSync` whose ``run()`` is going in the same
    loop. ``audit``: anything with ``append(kind, **fields)`` (appended in order, in a
    thread). ``clock``: wall time in ms; ``monotonic``: monotonic time in ms (the timers).
    Call :meth:`post` and :meth:`alarm_changed` (the daemon's node watcher calls it when the
    light node's alarm changes; the runner does not poll) from the loop's thread.
    ``capture_session``: makes the capture session of an attempt (default
    :class:`CaptureSession`). ``capture_listener(events, ts)`` sees
    every capture event with its frame time (the HIL rig's synthetic citizen answers the
    challenge with it).
    """

    def __init__(self, flow: fl.AuthorizationFlow, *, frames: Any,
                 capture_config: CaptureConfig | None = None, identity: Any, signer: Any,
                 node: Any, audit: Any | None = None, references: Any | None = None,
                 signed_matters: Any | None = None, verify_timeout_s: float | None = None,
                 admins: tuple[Any, ...] | None = None,
                 clock: Callable[[], int] = wall_clock_ms,
                 monotonic: Callable[[], int] = monotonic_ms,
                 service_public_key: bytes | None = None,
                 identity_timeout_s: float | None = None, submit_timeout_s: float | None = None,
                 inclusion_timeout_s: float | None = None, node_probe_timeout_s: float = 3.0,
                 scan_interval_s: float = 0.2, preview_fps: float = 5.0,
                 preview_width: int = 320, guidance_hz: float = 10.0,
                 frame_timeout_s: float = 5.0,
                 capture_listener: Callable[[list[Any], float], None] | None = None,
                 capture_session: Callable[[CaptureConfig], CaptureSession] = CaptureSession
                 ) -> None:
        self.flow = flow
        self.frames = frames
        self.capture_config = capture_config or CaptureConfig()
        self.identity = identity
        self.signer = signer
        self.node = node
        self.audit = audit
        if references is None:
            from appliance.node.references import References

            references = References(node)
        self.references = references
        self._admins = admins
        if signed_matters is None:
            from .signed_matters import SignedMatters

            signed_matters = SignedMatters(None)
        self.signed_matters = signed_matters
        self.clock = clock
        self.monotonic = monotonic
        self.capture_session = capture_session
        self.service_public_key = service_public_key or identity.service_public_key
        cfg = flow.config
        # each I/O step gets a little less than the flow's screen time, so the step's own,
        # precise error arrives before the flow's timeout
        self.identity_timeout_s = identity_timeout_s or max(1.0, cfg.verifying_ms / 1000 - 2)
        self.verify_timeout_s = verify_timeout_s or max(1.0, cfg.checking_ms / 1000 - 2)
        self.submit_timeout_s = submit_timeout_s or max(1.0, cfg.submitting_ms / 1000 - 2)
        self.inclusion_timeout_s = inclusion_timeout_s or max(1.0, cfg.waiting_ms / 1000 - 2)
        # the "signing" screen covers the node probe and the signature: both fit in it
        self.node_probe_timeout_s = node_probe_timeout_s
        self.sign_timeout_s = max(1.0, cfg.signing_ms / 1000 - 2 - node_probe_timeout_s)
        self.scan_interval_s = scan_interval_s
        self.preview_period_s = 1.0 / preview_fps if preview_fps > 0 else None
        self.preview_width = preview_width
        self.guidance_period_s = 1.0 / guidance_hz
        self.frame_timeout_s = frame_timeout_s
        self.capture_listener = capture_listener
        self.signatures = 0  # transactions signed by this runner (for tests and status)
        self._subs: set[_Subscription] = set()
        self._seq_published = -1
        self._scanning = False
        self._scan_kind = "matter"
        self._capture: _Capture | None = None
        self._captures: set[_Capture] = set()  # not yet known to be closed
        self._sign_jobs: set[asyncio.Task] = set()  # shielded: they outlive a cancel
        self._sign_lock = threading.Lock()
        self._envelope: dict[str, bytes] | None = None
        self._txs: dict[bytes, SignedTx] = {}
        self._tasks: dict[bytes | None, set[asyncio.Task]] = {}
        # (asyncio primitives bind to the loop on first use, so they can be made here: the
        # UI may post before run() has started)
        self._audit_queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._frames_wanted = asyncio.Event()
        self._stop = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._qr = QrReader()
        self._last_scan = 0.0
        self._last_preview = 0.0
        self._last_guidance = 0.0

    # -- the UI side ----------------------------------------------------------------------------

    def post(self, ui_event: dict[str, Any]) -> bool:
        """A UI event (``{"type": ...}``); False if it is not one (it is then ignored)."""
        ev = fl.ui_event(ui_event)
        if ev is None:
            return False
        self._handle(ev)
        return True

    def alarm_changed(self, active: bool, detail: str = "", kind: str = "equivocation"
                      ) -> None:
        """A reason to refuse authorizations was raised or cleared: the light node's alarm
        (from the daemon's node watcher), or another ``kind`` (flow.BLOCK_CODES)."""
        self._handle(fl.AlarmChanged(bool(active), detail or "", kind))

    async def subscribe(self, *, queue_size: int = 64) -> AsyncIterator[dict[str, Any]]:
        """Messages for one UI client: the current view first, then every change."""
        sub = _Subscription(queue_size)
        self._subs.add(sub)
        try:
            yield {"type": "view", "view": self.flow.view()}
            while True:
                msg = await sub.queue.get()
                if msg is None:
                    return
                yield msg
        finally:
            self._subs.discard(sub)

    def view(self) -> dict[str, Any]:
        return self.flow.view()

    def _publish(self, msg: dict[str, Any]) -> None:
        for sub in list(self._subs):
            sub.put(msg)

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`stop`; then stop everything and wipe."""
        self._loop = asyncio.get_running_loop()
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.node_probe_timeout_s))
        writer = asyncio.create_task(self._audit_writer())
        workers = [asyncio.create_task(self._ticker()), asyncio.create_task(self._pump())]
        self._publish_view()
        self._want_frames()
        self._wake.set()
        try:
            await self._stop.wait()
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self._cancel_tasks(None, everything=True)
            self._wipe()
            # a frame fed when the pump was cancelled: its thread closes the session
            for cap in list(self._captures):
                await asyncio.to_thread(cap.closed.wait, 30)
            # a signature under way is finished and audited before the audit log closes
            if self._sign_jobs:
                await asyncio.gather(*self._sign_jobs, return_exceptions=True)
            await self._http.close()
            self._audit_queue.put_nowait(None)  # what was queued is written, in order
            await asyncio.gather(writer, return_exceptions=True)
            for sub in list(self._subs):
                sub.put(None)

    def stop(self) -> None:
        self._stop.set()

    async def _ticker(self) -> None:
        assert self._wake is not None
        while True:
            deadline = self.flow.next_deadline()
            timeout = None if deadline is None else max(0.0, (deadline - self.monotonic()) / 1000)
            self._wake.clear()
            # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancellation that
            # arrives as the wait ends, and the runner would never stop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            deadline = self.flow.next_deadline()
            if deadline is not None and self.monotonic() >= deadline:
                self._handle(fl.Tick())

    # -- events in, effects out -----------------------------------------------------------------

    def _handle(self, ev: fl.Event) -> None:
        if isinstance(ev, fl.StepFailed):
            log.warning("step %s failed (%s): %s", ev.step, ev.code, ev.detail)
        effects = self.flow.handle(ev, self.clock(), self.monotonic())
        for effect in effects:
            try:
                self._execute(effect)
            except Exception:  # an effect must never take the runner down
                log.exception("effect %s failed", type(effect).__name__)
        self._publish_view()
        self._wake.set()
        self._want_frames()

    def _publish_view(self) -> None:
        view = self.flow.view()
        if view["seq"] != self._seq_published:
            self._seq_published = view["seq"]
            self._publish({"type": "view", "view": view})

    def _want_frames(self) -> None:
        if self._scanning or self._capture is not None:
            self._frames_wanted.set()
        else:
            self._frames_wanted.clear()

    def _spawn(self, session: bytes, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.setdefault(session, set()).add(task)
        task.add_done_callback(lambda t: self._tasks.get(session, set()).discard(t))

    def _execute(self, e: fl.Effect) -> None:
        if isinstance(e, fl.StartScan):
            self._scanning = True
            self._scan_kind = e.kind
        elif isinstance(e, fl.VerifyMatter):
            self._spawn(e.session, self._verify_matter(e))
        elif isinstance(e, fl.VerifyConfirmation):
            self._spawn(e.session, self._verify_confirmation(e))
        elif isinstance(e, fl.StopScan):
            self._scanning = False
        elif isinstance(e, fl.StartCapture):
            self._close_capture()
            cap = _Capture(e.session, e.attempt, self.capture_session(self.capture_config))
            self._capture = cap
            self._captures.add(cap)
        elif isinstance(e, fl.StopCapture):
            self._close_capture()
        elif isinstance(e, fl.SealCapture):
            self._spawn(e.session, self._seal(e.session))
        elif isinstance(e, fl.RequestAttestation):
            self._spawn(e.session, self._attest(e))
        elif isinstance(e, fl.CheckNodes):
            self._spawn(e.session, self._check_nodes(e.session))
        elif isinstance(e, fl.SignAuthorization):
            self._spawn(e.session, self._sign(e))
        elif isinstance(e, fl.SubmitTx):
            self._spawn(e.session, self._submit(e))
        elif isinstance(e, fl.AwaitInclusion):
            self._spawn(e.session, self._await_inclusion(e))
        elif isinstance(e, fl.Wipe):
            self._wipe(e.session)
        elif isinstance(e, fl.Audit):
            if self.audit is not None:
                self._audit_queue.put_nowait((e.kind, dict(e.fields)))

    # -- wiping ---------------------------------------------------------------------------------

    def _close_capture(self) -> None:
        cap, self._capture = self._capture, None
        if cap is not None:
            cap.stop()  # closed now, or by the feed in flight as soon as it returns
        for c in [c for c in self._captures if c.closed.is_set()]:
            self._captures.discard(c)

    def _wipe(self, session: bytes | None = None) -> None:
        """Drop everything of the session: capture buffers (overwritten), the envelope, the
        signed transaction; the session's I/O tasks are cancelled."""
        self._scanning = False
        self._close_capture()
        env, self._envelope = self._envelope, None
        if env is not None:
            for value in env.values():
                if isinstance(value, bytearray):
                    value[:] = bytes(len(value))
        self._txs.clear()
        if session is not None:
            for task in list(self._tasks.pop(session, ())):
                task.cancel()

    async def _cancel_tasks(self, session: bytes | None, *, everything: bool = False) -> None:
        keys = list(self._tasks) if everything else [session]
        tasks = [t for k in keys for t in self._tasks.pop(k, ())]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- frames: scan and capture ---------------------------------------------------------------

    async def _next_frame(self) -> Frame | None:
        src = self.frames
        if hasattr(src, "__anext__"):
            try:
                async with asyncio.timeout(self.frame_timeout_s):
                    return await src.__anext__()
            except (StopAsyncIteration, TimeoutError):
                return None
        return await asyncio.to_thread(src.read, self.frame_timeout_s)

    async def _pump(self) -> None:
        assert self._frames_wanted is not None
        while True:
            await self._frames_wanted.wait()
            got = await self._next_frame()
            if got is None:
                self._camera_lost()
                await asyncio.sleep(0.2)
                continue
            frame, ts = got
            try:
                await self._use_frame(frame, float(ts))
            except Exception as exc:  # a bad frame must not stop the camera loop
                log.warning("frame not usable: %s", exc)
                cap = self._capture
                if cap is not None:
                    self._handle(fl.StepFailed(cap.session, "capture", "camera_unavailable",
                                               f"frame not usable: {exc}"))
            finally:
                with contextlib.suppress(ValueError):
                    frame.fill(0)  # the frame is ours now: nothing of it stays

    def _camera_lost(self) -> None:
        cap = self._capture
        if cap is not None:
            self._handle(fl.StepFailed(cap.session, "capture", "camera_unavailable",
                                       "no frame from the camera"))

    async def _use_frame(self, frame: np.ndarray, ts: float) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        cap = self._capture
        if cap is not None:
            session, attempt, cs = cap.session, cap.attempt, cap.cs
            events = await asyncio.to_thread(cap.feed, frame, ts)
            if self._capture is not cap:  # stopped while the frame was being processed
                return  # (and closed by cap.feed)
            if self.capture_listener is not None and events:
                self.capture_listener(list(events), ts)
            for event in events:
                self._handle(fl.CaptureUpdate(session, attempt, event))
            if events or now - self._last_guidance >= self.guidance_period_s:
                self._last_guidance = now
                self._publish_guidance(cs, frame.shape)
        elif self._scanning and now - self._last_scan >= self.scan_interval_s:
            self._last_scan = now
            text = await asyncio.to_thread(self._qr.read, frame)
            if text and self._scanning:
                self._handle(fl.MatterText(text, "camera") if self._scan_kind == "matter"
                             else fl.ConfirmationText(text, "camera"))
        if self._subs and self.preview_period_s is not None \
                and now - self._last_preview >= self.preview_period_s \
                and (self._capture is not None or self._scanning):
            self._last_preview = now
            jpeg = await asyncio.to_thread(self._preview_jpeg, frame)
            if jpeg is not None:
                self._publish({"type": "frame", "jpeg": jpeg})

    def _preview_jpeg(self, frame: np.ndarray) -> bytes | None:
        """A small JPEG of the frame, in memory only."""
        h, w = frame.shape[:2]
        scale = min(1.0, self.preview_width / w)
        small = cv2.resize(frame, (max(1, int(w * scale)), max(1, int(h * scale))),
                           interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 70])
        small.fill(0)
        if not ok:
            return None
        data = buf.tobytes()
        buf.fill(0)
        return data

    def _publish_guidance(self, cs: CaptureSession, shape: tuple[int, ...]) -> None:
        if not self._subs:
            return
        view = self.flow.view()
        cap = view.get("capture") or {}
        h, w = shape[:2]
        face = None
        q = cs.last_quality
        if q is not None and q.face is not None:
            x, y, fw, fh = q.face
            face = {"x": x / w, "y": y / h, "w": fw / w, "h": fh / h}
        cfg = self.capture_config
        # the oval the face should fill: centred, as wide as the gate's minimum face width
        oval = {"cx": 0.5, "cy": 0.5, "rx": min(0.45, cfg.min_face_width_px / w * 0.6),
                "ry": min(0.45, cfg.max_face_height_fraction * 0.55), "face": face}
        self._publish({"type": "guidance", "oval": oval, "hints": cap.get("hints", []),
                       "challenge": cap.get("challenge"), "progress": cap.get("progress")})

    # -- the steps ------------------------------------------------------------------------------

    async def _seal(self, session: bytes) -> None:
        cap = self._capture
        if cap is None or cap.session != session:
            self._handle(fl.StepFailed(session, "seal", "camera_unavailable", "no capture"))
            return
        self._capture = None  # seal() wipes the session's buffers
        try:
            sealed = await asyncio.to_thread(cap.seal, self.service_public_key, session)
        except Exception as exc:
            self._handle(fl.StepFailed(session, "seal", "camera_unavailable",
                                       f"sealing failed: {exc}"))
            return
        if self.flow.session != session:
            return
        self._envelope = sealed.envelope
        self._handle(fl.CaptureSealed(session, sealed.capture_digest))

    @property
    def admins(self) -> tuple[Any, ...]:
        """The district admin keys of the trust anchor (who may enroll keys, §5-§6)."""
        if self._admins is not None:
            return self._admins
        return tuple(self.node.anchor.admins)

    async def _verify_matter(self, e: fl.VerifyMatter) -> None:
        """§6 "Matter": everything the kiosk checks before it shows the consent screen."""
        from appliance.node import rules
        from appliance.node.references import ReferencesUnavailable

        now = self.clock()
        m = e.matter
        try:
            rules.check_matter_self(m, at=now)  # a forged or expired QR costs no lookup
            if self.signed_matters.seen(m.body.pad, m.body.matter_id):
                raise _Refused("already_authorized", "this kiosk signed the matter before")
            lookup = await self.references.resolve(m, timeout_s=self.verify_timeout_s)
            verified = rules.verify_matter(m, lookup, self.admins, at=now)
        except (rules.RuleError, _Refused) as exc:
            self._handle(fl.StepFailed(e.session, "matter", exc.rule, str(exc)))
            return
        except (ReferencesUnavailable, TimeoutError) as exc:
            self._handle(fl.StepFailed(e.session, "matter", "node_unavailable", str(exc)))
            return
        self._handle(fl.MatterVerified(e.session, verified.display()))

    async def _verify_confirmation(self, e: fl.VerifyConfirmation) -> None:
        """§6 "Clerk way", for this session, this kiosk and this matter."""
        from appliance.node import rules
        from appliance.node.references import ReferencesUnavailable

        now = self.clock()
        b = e.matter.body
        try:
            lookup = await self.references.resolve(e.confirmation,
                                                   timeout_s=self.verify_timeout_s)
            clerk = rules.verify_confirmation(
                e.confirmation, lookup, self.admins, office=b.office,
                pad_key=e.matter.public_key, enterprise=b.on_behalf_of is not None,
                session=e.session, terminal=self.flow.terminal_id, action="authorize",
                target=e.matter.digest, tx_time=now, at=now)
        except rules.RuleError as exc:
            self._handle(fl.StepFailed(e.session, "confirm", exc.rule, str(exc)))
            return
        except (ReferencesUnavailable, TimeoutError) as exc:
            self._handle(fl.StepFailed(e.session, "confirm", "node_unavailable", str(exc)))
            return
        self._handle(fl.ConfirmationVerified(e.session, clerk.staff or ""))

    async def _attest(self, e: fl.RequestAttestation) -> None:
        from appliance.node import rules
        from appliance.node.references import ReferencesUnavailable

        from . import identity as ident

        envelope, self._envelope = self._envelope, None  # sent once, then dropped
        if envelope is None:
            self._handle(fl.StepFailed(e.session, "attest", "identity_unavailable",
                                       "no sealed capture"))
            return
        request = ident.Request(e.session, e.subject, e.capture_digest, self.flow.terminal_id,
                                e.target, e.action, e.represents)
        try:
            att = await self.identity.attest(envelope, request, now_ms=self.clock(),
                                             timeout_s=self.identity_timeout_s)
            if att.matched:  # what the chain requires too: an enrolled service, its minimum
                now = self.clock()
                lookup = await self.references.resolve(att.obj, timeout_s=self.verify_timeout_s)
                rules.verify_attestation(
                    att.obj, lookup, self.admins, subject=e.subject, represents=e.represents,
                    session=e.session, capture_digest=e.capture_digest,
                    terminal=self.flow.terminal_id, action=e.action, target=e.target,
                    tx_time=now, at=now)
        except ident.AttestationInvalid as exc:
            self._handle(fl.StepFailed(e.session, "attest", "attestation_invalid", str(exc)))
            return
        except rules.RuleError as exc:
            self._handle(fl.StepFailed(e.session, "attest", exc.rule, str(exc)))
            return
        except (ReferencesUnavailable, TimeoutError) as exc:
            self._handle(fl.StepFailed(e.session, "attest", "node_unavailable", str(exc)))
            return
        except ident.IdentityError as exc:
            self._handle(fl.StepFailed(e.session, "attest", "identity_unavailable", str(exc)))
            return
        except Exception as exc:
            log.warning("identity service call failed: %r", exc)
            self._handle(fl.StepFailed(e.session, "attest", "identity_unavailable", str(exc)))
            return
        self._handle(fl.AttestationVerified(e.session, att.signed, att.result, att.score))

    async def _check_nodes(self, session: bytes) -> None:
        """Before anything is signed: does any usable district node answer /v1/info now?
        (Only a go/no-go: nothing it says is used.)"""
        urls = [p.url for p in self.node.machine.peers.usable()]
        assert self._http is not None
        http = self._http

        async def probe(url: str) -> bool:
            try:
                async with http.get(url.rstrip("/") + "/v1/info") as resp:
                    await resp.content.read(64 * 1024)
                    return resp.status == 200
            except (aiohttp.ClientError, OSError, TimeoutError):
                return False

        ok = any(await asyncio.gather(*(probe(u) for u in urls))) if urls else False
        self._handle(fl.NodesChecked(session, ok, "" if ok else
                                     f"no district node answered ({len(urls)} usable)"))

    async def _sign(self, e: fl.SignAuthorization) -> None:
        m = e.matter.body
        try:
            fresh = await asyncio.to_thread(self.signed_matters.record, m.pad, m.matter_id,
                                            m.expires_at, self.clock())
        except Exception as exc:  # the memory cannot be written: nothing is signed
            log.error("signed-matters memory: %s", exc)
            self._handle(fl.StepFailed(e.session, "sign", "module_unavailable", str(exc)))
            return
        if not fresh:
            self._handle(fl.StepFailed(e.session, "sign", "already_authorized",
                                       "this kiosk signed the matter before"))
            return
        # The signing job is shielded: cancelling this step (cancel, timeout, alarm: a Wipe)
        # or giving up on it leaves the job running to its end, so a signature the module
        # makes is always audited; the tx is then dropped if the session moved on.
        job = asyncio.get_running_loop().create_task(self._sign_job(e))
        self._sign_jobs.add(job)
        job.add_done_callback(self._sign_jobs.discard)
        try:
            async with asyncio.timeout(self.sign_timeout_s):
                tx = await asyncio.shield(job)
        except TimeoutError:
            self._handle(fl.StepFailed(e.session, "sign", "module_unavailable",
                                       "the crypto module did not answer in time"))
            return
        except Exception as exc:
            log.warning("signing failed: %s", exc)
            self._handle(fl.StepFailed(e.session, "sign", "module_unavailable", str(exc)))
            return
        if self.flow.session != e.session:
            return  # the flow moved on (cancel, alarm, timeout): the tx is dropped unsent
        self._txs[e.session] = tx
        self._handle(fl.AuthorizationSigned(e.session, tx.tx_id))

    def _build_and_sign(self, e: fl.SignAuthorization, timestamp_ms: int
                        ) -> tuple[SignedTx | None, bool, int | None, Exception | None]:
        """In a worker thread: (tx, signed, module counter, error). ``signed`` is True when
        the signer made a signature (also when build_tx then refused it)."""
        from appliance.node.tx import build_tx

        signer = self.signer
        with self._sign_lock:  # one signature at a time: last_counter is this one's
            has_counter = hasattr(signer, "last_counter")
            if has_counter:
                signer.last_counter = None
            try:
                tx = build_tx(signer, chain_id=self.node.anchor.chain_id,
                              type="license.authorize", data=e.data,
                              timestamp_ms=timestamp_ms)
            except Exception as exc:
                counter = getattr(signer, "last_counter", None)
                return None, counter is not None, counter, exc
            return tx, True, getattr(signer, "last_counter", None), None

    async def _sign_job(self, e: fl.SignAuthorization) -> SignedTx:
        tx, signed, counter, error = await asyncio.to_thread(self._build_and_sign, e,
                                                             self.clock())
        if signed:
            self.signatures += 1
            if self.audit is not None:
                fields: dict[str, Any] = {"session": e.session.hex(),
                                          "purpose": "license.authorize"}
                if tx is not None:
                    fields["tx_id"] = tx.tx_id.hex()
                else:
                    fields["error"] = str(error)[:200]
                if counter is not None:
                    fields["counter"] = counter
                self._audit_queue.put_nowait(("sign", fields))
        if error is not None:
            raise error
        assert tx is not None
        return tx

    async def _submit(self, e: fl.SubmitTx) -> None:
        from appliance.node.client import TxError

        tx = self._txs.get(e.session)
        if tx is None or tx.tx_id != e.tx_id:
            self._handle(fl.StepFailed(e.session, "submit", "node_unavailable", "no tx"))
            return
        try:
            await self.node.submit_tx(tx, timeout_s=self.submit_timeout_s)
        except TxError as exc:  # the chain's duplicate_matter has its own screen
            code = exc.code if exc.code == "duplicate_matter" else "node_unavailable"
            self._handle(fl.StepFailed(e.session, "submit", code, f"{exc.code}: {exc}"))
            return
        self._handle(fl.Submitted(e.session, e.tx_id))

    async def _await_inclusion(self, e: fl.AwaitInclusion) -> None:
        from appliance.node.client import InclusionTimeout, NoPeers, NotVerifiable, TxError

        try:
            inc = await self.node.wait_for_inclusion(e.tx_id, timeout_s=self.inclusion_timeout_s)
        except NotVerifiable as exc:
            self._handle(fl.StepFailed(e.session, "include", "proof_invalid", str(exc)))
            return
        except NoPeers as exc:
            self._handle(fl.StepFailed(e.session, "include", "node_unavailable", str(exc)))
            return
        except (InclusionTimeout, TxError) as exc:
            self._handle(fl.StepFailed(e.session, "include", "inclusion_timeout", str(exc)))
            return
        from appliance.node import rules
        from appliance.node.references import ReferencesUnavailable

        try:  # the light node checks every §6 rule again on what it fetches
            lookup = await self.references.resolve(inc.tx, timeout_s=self.verify_timeout_s)
            rules.check_tx(inc.tx, lookup, self.admins, at=inc.time_ms,
                           chain_id=self.node.anchor.chain_id)
        except (rules.RuleError, ReferencesUnavailable, TimeoutError) as exc:
            self._handle(fl.StepFailed(e.session, "include", "proof_invalid",
                                       f"the included authorization does not verify: {exc}"))
            return
        self._txs.pop(e.session, None)
        self._handle(fl.Included(e.session, inc.tx_id, inc.height, inc.block_id, inc.time_ms))

    # -- audit ----------------------------------------------------------------------------------

    async def _audit_writer(self) -> None:
        assert self._audit_queue is not None
        while True:
            item = await self._audit_queue.get()
            if item is None:
                return
            await self._append(*item)

    async def _append(self, kind: str, fields: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(self.audit.append, kind, **fields)
        except Exception as exc:  # the audit sink failing must be loud, never silent
            log.error("audit append %s failed: %s", kind, exc)
