"""The runner's own machinery, without the hall: deadlines become Ticks, the QR is read from
frames, the camera's end fails a capture, the UI cannot post I/O results, subscribers get
the current view first and a slow one cannot stall the others, preview frames are JPEGs made
in memory only while scanning or capturing, and no file is written by a whole session.

The identity service, the module and the node are not reached in these tests (the flows end
before): ``identity`` is an object carrying the service key, as the runner reads only that
before the attestation step; the matter is one of a §6 world judged now
(tests/node/world.py), whose references the world holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from appliance.gm import sm2
from appliance.kiosk import flow as fl
from appliance.kiosk.capture.config import CaptureConfig
from appliance.kiosk.capture.session import CaptureSession
from appliance.kiosk.runner import FlowRunner
from appliance.node import objects as ob
from hil.sim_hall import qr_frame
from tests.node.world import make_world

WORLD = make_world(time.time_ns() // 1_000_000)

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]


class KeyOnly:
    """Stands for the identity client up to the seal (the runner reads the key only)."""

    def __init__(self) -> None:
        self.service_public_key = sm2.generate_keypair()[1]
        self.calls = 0

    async def attest(self, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        raise AssertionError("not reached in these tests")


def matter_text(**changes: Any) -> str:
    """A matter QR of the world's PAD (a new matter_id each time: a kiosk signs one once)."""
    return ob.encode_qr(ob.MATTER_PREFIX, WORLD.matter(matter_id=os.urandom(16), **changes))


class Frames:
    """An async iterator of frames: blank ones, or the QR code once ``show`` is set."""

    def __init__(self, text: str | None = None, *, end_after: int | None = None) -> None:
        self.qr = None
        if text is not None:
            self.qr = qr_frame(text)
        self.show = False
        self.end_after = end_after
        self.n = 0

    def __aiter__(self) -> AsyncIterator[tuple[np.ndarray, float]]:
        return self

    async def __anext__(self) -> tuple[np.ndarray, float]:
        await asyncio.sleep(0.01)
        if self.end_after is not None and self.n >= self.end_after:
            raise StopAsyncIteration
        self.n += 1
        if self.show and self.qr is not None:
            return self.qr.copy(), self.n / 15
        return np.full((480, 640, 3), 40, np.uint8), self.n / 15


def make(frames: Any, config: fl.FlowConfig | None = None, **kw: Any) -> FlowRunner:
    flow = fl.AuthorizationFlow(config or fl.FlowConfig(), terminal_id=bytes(32),
                                new_session=lambda: os.urandom(16),
                                enrollment=WORLD.enrollments["kiosk"])
    return FlowRunner(flow, frames=frames, identity=KeyOnly(), signer=None, node=None,
                      references=WORLD, admins=WORLD.anchor_admins, **kw)


async def screens_until(runner: FlowRunner, final: str, actions: dict[str, Any] | None = None,
                        timeout: float = 30) -> list[str]:
    seen: list[str] = []
    actions = dict(actions or {})

    async def watch() -> None:
        async for msg in runner.subscribe():
            if msg["type"] != "view":
                continue
            screen = msg["view"]["screen"]
            if not seen or seen[-1] != screen:
                seen.append(screen)
                act = actions.pop(screen, None)
                if act is not None:
                    act()
            if screen == final and len(seen) > 1:
                return

    await asyncio.wait_for(watch(), timeout)
    return seen


def run_with(runner: FlowRunner, body: Any) -> Any:
    async def main() -> Any:
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(0)
        try:
            return await body()
        finally:
            runner.stop()
            await asyncio.wait_for(task, 10)

    return asyncio.run(main())


def test_deadlines_become_ticks() -> None:
    """Nobody scans: the scan times out to the error screen, which times out to attract."""
    runner = make(Frames(), fl.FlowConfig(scan_ms=300, error_ms=300))

    async def body() -> list[str]:
        return await screens_until(runner, "attract", {
            "attract": lambda: runner.post({"type": "start"})})

    seen = run_with(runner, body)
    assert seen == ["attract", "scan", "error", "attract"]
    assert runner.flow.view()["error"] is None


def test_qr_read_from_frames_then_extend_and_cancel() -> None:
    frames = Frames(matter_text())
    runner = make(frames)
    views: list[dict[str, Any]] = []

    def on_scan() -> None:
        frames.show = True  # the citizen holds the code up

    def on_consent() -> None:
        views.append(runner.flow.view())
        assert runner.post({"type": "extend"})
        views.append(runner.flow.view())
        runner.post({"type": "cancel"})

    async def body() -> list[str]:
        return await screens_until(runner, "error", {
            "attract": lambda: runner.post({"type": "start"}), "scan": on_scan,
            "consent": on_consent})

    seen = run_with(runner, body)
    assert seen == ["attract", "scan", "checking", "consent", "error"]
    assert views[0]["matter"]["title"] == WORLD.matter_body().title
    assert views[1]["extends_left"] == views[0]["extends_left"] - 1
    assert runner.flow.view()["error"]["code"] == "cancelled"


def test_the_camera_ending_fails_the_capture() -> None:
    text = matter_text()
    runner = make(Frames(end_after=3))

    async def body() -> list[str]:
        return await screens_until(runner, "error", {
            "attract": lambda: runner.post({"type": "matter_text", "text": text}),
            "consent": lambda: runner.post({"type": "consent"})})

    seen = run_with(runner, body)
    assert seen == ["attract", "checking", "consent", "capture", "error"]
    assert runner.flow.view()["error"]["code"] == "camera_unavailable"
    assert runner.signatures == 0 and runner.identity.calls == 0


class GreyFrames(Frames):
    """A camera that delivers frames the capture cannot use (greyscale)."""

    async def __anext__(self) -> tuple[np.ndarray, float]:
        frame, ts = await super().__anext__()
        return np.ascontiguousarray(frame[:, :, 0]), ts


def test_an_unusable_frame_fails_the_capture_and_the_runner_goes_on() -> None:
    text = matter_text()
    runner = make(GreyFrames())

    async def body() -> list[str]:
        first = await screens_until(runner, "error", {
            "attract": lambda: runner.post({"type": "matter_text", "text": text}),
            "consent": lambda: runner.post({"type": "consent"})})
        assert runner.flow.view()["error"]["code"] == "camera_unavailable"
        runner.post({"type": "done"})
        again = await screens_until(runner, "consent", {
            "attract": lambda: runner.post({"type": "matter_text", "text": text})})
        return first + again

    seen = run_with(runner, body)
    assert seen == ["attract", "checking", "consent", "capture", "error", "attract", "checking",
                    "consent"]


def test_the_ui_cannot_post_results() -> None:
    runner = make(Frames())
    for bad in ({"type": "included", "tx_id": "00"}, {"type": "signed"}, {"type": 3}, [],
                {"type": "alarm", "active": False}, {"type": "matter_text"}):
        assert runner.post(bad) is False  # type: ignore[arg-type]
    assert runner.flow.view()["seq"] == 0
    assert runner.post({"type": "start"}) is True
    assert runner.flow.screen == "scan"


def test_subscribers_and_previews() -> None:
    runner = make(Frames(), preview_fps=50)

    async def body() -> tuple[list[dict], list[dict]]:
        fast: list[dict] = []
        first = runner.subscribe()
        msg = await first.__anext__()
        assert msg == {"type": "view", "view": runner.flow.view()}  # the current view first
        slow = runner.subscribe(queue_size=2)
        assert (await slow.__anext__())["type"] == "view"
        runner.post({"type": "start"})

        async def read_fast() -> None:
            async for m in first:
                fast.append(m)
                if sum(1 for x in fast if x["type"] == "frame") >= 5:
                    return

        await asyncio.wait_for(read_fast(), 20)
        # the slow subscriber never read: it holds the newest two messages, nothing stalled
        held = [await slow.__anext__(), await slow.__anext__()]
        await first.aclose()
        await slow.aclose()
        return fast, held

    fast, held = run_with(runner, body)
    frames = [m for m in fast if m["type"] == "frame"]
    assert frames and all(isinstance(m["jpeg"], bytes) and m["jpeg"][:2] == b"\xff\xd8"
                          for m in frames)
    img = cv2.imdecode(np.frombuffer(frames[0]["jpeg"], np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[1] == 320  # a small preview, not the camera frame
    assert any(m["type"] == "view" and m["view"]["screen"] == "scan" for m in fast)
    assert len(held) == 2


def test_no_preview_outside_scan_and_capture() -> None:
    frames = Frames()
    runner = make(frames, preview_fps=50)

    async def body() -> int:
        got: list[dict] = []
        sub = runner.subscribe()

        async def read() -> None:
            async for m in sub:
                got.append(m)

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.5)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        return sum(1 for m in got if m["type"] == "frame")

    assert run_with(runner, body) == 0
    assert frames.n == 0  # on the attract screen the camera is not even read


# -- a frame in flight when the capture is stopped ---------------------------------------------

class SlowSession(CaptureSession):
    """A real capture session whose feed, about to keep the best frame so far, waits until
    the test releases it: a frame still being processed in the worker thread when the loop
    stops the capture."""

    def __init__(self, config: CaptureConfig) -> None:
        super().__init__(config)
        self.inside = threading.Event()
        self.release = threading.Event()
        self.fed = threading.Event()

    def _keep_best(self, frame: np.ndarray, score: float, t: float) -> None:
        self.inside.set()
        assert self.release.wait(60)
        super()._keep_best(frame, score, t)

    def feed(self, frame: np.ndarray, timestamp: float) -> list[Any]:
        try:
            return super().feed(frame, timestamp)
        finally:
            self.fed.set()


class FaceFrames:
    """The synthetic citizen in front of the camera."""

    def __init__(self) -> None:
        from hil.synthetic_face import Subject

        self.person = Subject(5)
        self.n = 0

    def __aiter__(self) -> AsyncIterator[tuple[np.ndarray, float]]:
        return self

    async def __anext__(self) -> tuple[np.ndarray, float]:
        await asyncio.sleep(0.01)
        self.n += 1
        return self.person.frame(self.n / 15), self.n / 15


@pytest.mark.parametrize("how", ["cancel", "shutdown"])
def test_a_frame_in_flight_cannot_keep_pixels_after_the_wipe(how: str) -> None:
    """The capture is stopped (the citizen cancels; the runner shuts down) while a frame is
    inside the session's feed: once that feed returns, every buffer of the session is
    overwritten, and run() returns only then."""
    sessions: list[SlowSession] = []

    def new_session(config: CaptureConfig) -> CaptureSession:
        sessions.append(SlowSession(config))
        return sessions[-1]

    runner = make(FaceFrames(), capture_session=new_session)
    text = matter_text()

    async def main() -> None:
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(0)
        runner.post({"type": "matter_text", "text": text})
        while runner.flow.screen == "checking":  # the runner verifies the matter
            await asyncio.sleep(0.01)
        runner.post({"type": "consent"})
        assert runner.flow.screen == "capture" and len(sessions) == 1
        s = sessions[0]
        assert await asyncio.to_thread(s.inside.wait, 60)
        if how == "cancel":
            runner.post({"type": "cancel"})
            assert runner.flow.screen == "error"
            s.release.set()
            assert await asyncio.to_thread(s.fed.wait, 60)
            await asyncio.sleep(0.05)  # the pump's await of the feed ends on the loop
            runner.stop()
            await asyncio.wait_for(task, 30)
        else:
            asyncio.get_running_loop().call_later(0.3, s.release.set)
            runner.stop()
            await asyncio.wait_for(task, 30)
        assert await asyncio.to_thread(s.fed.wait, 60)

    asyncio.run(main())
    s = sessions[0]
    held = s.held_buffers()
    assert held and not any(b.any() for b in held)


# -- time: the timers run on the monotonic clock ---------------------------------------------

def test_a_backward_wall_clock_step_does_not_stretch_a_screen() -> None:
    """The wall clock is stepped back an hour on the attract screen (NTP, an operator): the
    scan screen still times out after its own time, and its deadline in the view is the
    stepped wall clock plus that time."""
    step = {"ms": 0}

    def wall() -> int:
        return time.time_ns() // 1_000_000 - step["ms"]

    runner = make(Frames(), fl.FlowConfig(scan_ms=400, error_ms=60_000), clock=wall)

    async def body() -> list[str]:
        runner.post({"type": "start"})
        assert runner.flow.screen == "scan"
        runner.post({"type": "cancel"})
        runner.post({"type": "done"})
        assert runner.flow.screen == "attract"
        step["ms"] = 3_600_000
        before = wall()
        runner.post({"type": "start"})
        deadline = runner.view()["deadline_ms"]
        assert before + 400 <= deadline <= wall() + 400
        return await screens_until(runner, "error", timeout=20)

    assert run_with(runner, body) == ["scan", "error"]
    assert runner.flow.view()["error"]["code"] == "timeout"


@pytest.mark.parametrize("signing_ms", [20_000, 12_000])
def test_the_signing_steps_fit_in_the_signing_screen(signing_ms: int) -> None:
    """The "signing" screen's timer starts at the node probe and covers the signature too:
    both step limits end before it, so the step's own error comes first."""
    runner = make(Frames(), fl.FlowConfig(signing_ms=signing_ms))
    assert runner.node_probe_timeout_s + runner.sign_timeout_s < signing_ms / 1000


CHILD = r"""
import asyncio, json, os, sys
writes = []
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def hook(event, args):
    if event == "open":
        path, mode, flags = args
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE):
            writes.append(str(path))
    elif event in ("os.mkdir", "os.rename", "os.replace", "shutil.copyfile"):
        writes.append(f"{event} {args[0]}")

import numpy as np
from hil.synthetic_face import Subject
from appliance.gm import sm2
from appliance.kiosk import flow as fl
from appliance.kiosk.capture.sources import Camera, EmulatedCamera
from appliance.kiosk.runner import FlowRunner
from appliance.node import objects as ob
from tests.node.world import make_world
import time
WORLD = make_world(time.time_ns() // 1_000_000)

class Identity:
    def __init__(self):
        self.service_public_key = sm2.generate_keypair()[1]
        self.envelopes = 0
    async def attest(self, envelope, request, **kw):
        self.envelopes += 1
        from appliance.kiosk.identity import IdentityUnavailable
        raise IdentityUnavailable("the double stops here")

async def main():
    person = Subject(5)
    camera = Camera(EmulatedCamera(lambda i: person.frame(i / 15), fps=15))
    flow = fl.AuthorizationFlow(fl.FlowConfig(capture_attempts=1), terminal_id=bytes(32),
                                new_session=lambda: os.urandom(16),
                                enrollment=WORLD.enrollments["kiosk"])
    identity = Identity()
    def listener(evs, ts):
        person.on_events(evs, ts)
        if os.environ.get("LEAK"):  # the check of the check: a write must be seen
            with open("leak.jpg", "wb") as f:
                f.write(b"\xff\xd8")

    runner = FlowRunner(flow, frames=camera, identity=identity, signer=None, node=None,
                        preview_fps=30, capture_listener=listener, references=WORLD,
                        admins=WORLD.anchor_admins)
    task = asyncio.create_task(runner.run())
    m = ob.encode_qr(ob.MATTER_PREFIX, WORLD.matter())
    seen, frames = [], 0
    sys.addaudithook(hook)
    async for msg in runner.subscribe():
        if msg["type"] == "frame":
            frames += 1
            continue
        if msg["type"] != "view":
            continue
        screen = msg["view"]["screen"]
        if not seen or seen[-1] != screen:
            seen.append(screen)
        if screen == "attract" and len(seen) == 1:
            runner.post({"type": "matter_text", "text": m})
        elif screen == "consent":
            runner.post({"type": "consent"})
        elif screen == "error":
            break
    runner.stop()
    await task
    print(json.dumps({"screens": seen, "writes": writes, "frames": frames,
                      "envelopes": identity.envelopes,
                      "error": runner.flow.view()["error"]["code"]}))

asyncio.run(main())
"""


def child(tmp_path: Path, **env_vars: str) -> dict[str, Any]:
    env = dict(os.environ, HOME=str(tmp_path), TMPDIR=str(tmp_path),
               PYTHONPATH=str(REPO), **env_vars)
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=tmp_path, env=env,
                         capture_output=True, timeout=110)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def test_a_session_writes_no_file(tmp_path: Path) -> None:
    """Capture with previews, seal, send: the process opens nothing for writing."""
    result = child(tmp_path)
    assert result["screens"] == ["attract", "checking", "consent", "capture", "verifying",
                                 "error"]
    assert result["error"] == "identity_unavailable"
    assert result["envelopes"] == 1 and result["frames"] > 0
    assert result["writes"] == []
    assert sorted(os.listdir(tmp_path)) == []


def test_the_check_would_see_a_leak(tmp_path: Path) -> None:
    result = child(tmp_path, LEAK="1")
    assert result["writes"] and result["writes"][0].endswith("leak.jpg")
