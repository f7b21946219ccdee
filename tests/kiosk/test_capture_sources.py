"""Frame sources: cv2.VideoCapture and the emulated camera behind one interface, and the
camera that detects an unplug and recovers on replug (fake clock: no real waiting)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import skimage

from appliance.kiosk.capture.sources import Camera, EmulatedCamera, VideoCaptureSource

ASTRONAUT = os.path.join(os.path.dirname(skimage.__file__), "data", "astronaut.png")


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self):
        return self.now

    def sleep(self, d):
        self.sleeps.append(d)
        self.now += d


def numbered(n):
    return [np.full((6, 8, 3), i, np.uint8) for i in range(n)]


def ids(frames):
    return [int(f[0, 0, 0]) for f, _ in frames]


def test_unplug_detected_and_recovered():
    ft = FakeTime()
    statuses = []
    cam = Camera(EmulatedCamera(numbered(60), fps=10, unplugged=[(15, 30)]),
                 clock=ft.clock, sleep=ft.sleep, on_status=statuses.append)
    got = list(cam.frames())
    assert statuses == ["streaming", "lost", "restored", "ended"]
    assert cam.reconnects == 1
    frames = ids(got)
    before = [i for i in frames if i < 15]
    after = [i for i in frames if i >= 15]
    assert before == list(range(15))  # every frame until the unplug
    assert after[0] >= 30 and after == list(range(after[0], 60))  # the scene went on meanwhile
    # timestamps are the camera's, in order
    ts = [t for _, t in got]
    assert ts == sorted(ts) and ts[0] == 0.0 and ts[-1] == pytest.approx(5.9)
    # reopen attempts back off exponentially, capped
    assert ft.sleeps[:4] == [0.1, 0.2, 0.4, 0.8]
    assert max(ft.sleeps) <= 2.0


def test_manual_unplug_and_replug():
    ft = FakeTime()
    emu = EmulatedCamera(numbered(100), fps=10)
    cam = Camera(emu, clock=ft.clock, sleep=ft.sleep, max_failures=2)
    first = [cam.read() for _ in range(5)]
    assert all(f is not None for f in first)
    emu.unplug()
    assert cam.read(timeout=1.0) is None  # gives up for now, keeps the state
    assert cam.status == "lost"
    emu.replug()
    frame, t = cam.read(timeout=1.0)
    assert cam.status == "streaming" and cam.reconnects == 1
    assert int(frame[0, 0, 0]) > 5 and t > first[-1][1]


def test_lost_camera_that_never_returns_times_out():
    ft = FakeTime()
    cam = Camera(VideoCaptureSource("/nonexistent/video0.mp4"), clock=ft.clock,
                 sleep=ft.sleep)
    assert cam.read(timeout=5.0) is None
    assert cam.status == "lost" and ft.now >= 5.0


def test_videocapture_reads_a_file_then_ends():
    src = VideoCaptureSource(ASTRONAUT)
    cam = Camera(src)
    got = list(cam.frames())
    assert len(got) == 1 and got[0][0].shape == (512, 512, 3)
    assert cam.status == "ended"
    cam.close()


def test_videocapture_device_index_that_is_absent():
    src = VideoCaptureSource("97")  # a digit string means a device index
    assert src.spec == 97
    assert VideoCaptureSource("²").spec == "²"  # not a digit string to int(): a path
    assert src.open() is False
    assert src.read() is None
    src.close()


def test_emulated_camera_plays_files_and_loops():
    emu = EmulatedCamera([ASTRONAUT] * 2, fps=5, loop=True)
    cam = Camera(emu)
    frames = [cam.read() for _ in range(5)]
    assert all(f[0].shape == (512, 512, 3) for f in frames)
    assert [round(t, 2) for _, t in frames] == [0.0, 0.2, 0.4, 0.6, 0.8]
    globbed = EmulatedCamera(os.path.join(os.path.dirname(ASTRONAUT), "astro*.png"))
    assert globbed.open() and globbed.read()[0].shape == (512, 512, 3)
    video = EmulatedCamera(ASTRONAUT, as_video=True)  # decoded by cv2.VideoCapture
    assert video.open() and video.read()[0].shape == (512, 512, 3)
    assert video.read() is None and video.ended
    video.close()
    with pytest.raises(ValueError):
        EmulatedCamera(os.path.join(os.path.dirname(ASTRONAUT), "none-such-*.png"))


def test_emulated_camera_from_a_callable_and_paced_to_a_clock():
    ft = FakeTime()
    emu = EmulatedCamera(lambda i: np.full((2, 2, 3), i % 256, np.uint8) if i < 50 else None,
                         fps=20, clock=ft.clock, sleep=ft.sleep)
    assert emu.open()
    a = emu.read()
    ft.now += 0.26  # a slow reader: the camera drops the frames it missed
    b = emu.read()
    assert int(b[0][0, 0, 0]) - int(a[0][0, 0, 0]) >= 5
    c = emu.read()  # due 1/20 s after b: the camera waits for it
    assert ft.sleeps and ft.now == pytest.approx(c[1])
    assert c[1] - b[1] == pytest.approx(0.05)
    while emu.read() is not None:
        pass
    assert emu.ended


def test_bad_arguments():
    with pytest.raises(ValueError):
        EmulatedCamera(numbered(2), fps=0)
