"""Frame sources (the I/O side of capture) and the camera that survives unplug/replug.

Every source has the same three calls: ``open() -> bool``, ``read() -> (frame, timestamp) |
None`` (None: this read failed) and ``close()``, plus ``ended`` (a finite stream ran out):

* :class:`VideoCaptureSource` wraps ``cv2.VideoCapture``: a device index, a ``/dev/video*``
  path (prefer the stable ``/dev/v4l/by-id/...`` link: after a replug the kernel may give the
  camera another number), a video file or a URL.
* :class:`EmulatedCamera` is the HIL rig's camera: it plays frames (arrays, a callable, image
  files or a video file) at a set frame rate on a virtual clock, and can be unplugged and
  replugged, by call or on a schedule.

:class:`Camera` wraps a source: consecutive read failures (``max_failures``) mean the camera
is lost; it closes the source and reopens it with exponential backoff until frames flow again,
reporting ``lost``/``restored`` to ``on_status``. Clock and sleep are injectable, so tests run
an unplug in no time.

Sources only read. Nothing here writes a frame anywhere.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

import cv2
import numpy as np

log = logging.getLogger(__name__)

Read = tuple[np.ndarray, float | None]


class FrameSource(Protocol):
    ended: bool

    def open(self) -> bool: ...

    def read(self) -> Read | None: ...

    def close(self) -> None: ...


class VideoCaptureSource:
    """``cv2.VideoCapture`` on a device index, a /dev/video path, a file or a URL.

    Frames come as BGR uint8. For a file the timestamp is the stream position; for live
    sources it is None and :class:`Camera` stamps the frame with its clock on arrival.
    """

    def __init__(self, spec: int | str, *, width: int | None = 640, height: int | None = 480,
                 fps: float | None = None, api: int = cv2.CAP_ANY) -> None:
        if isinstance(spec, str) and spec.isascii() and spec.isdigit():
            spec = int(spec)
        self.spec = spec
        self.width, self.height, self.fps, self.api = width, height, fps, api
        self.ended = False
        self._cap: cv2.VideoCapture | None = None
        self._buf: np.ndarray | None = None
        self._is_file = isinstance(spec, str) and os.path.isfile(spec)

    def open(self) -> bool:
        self.close()
        cap = cv2.VideoCapture(self.spec, self.api)
        if not cap.isOpened():
            cap.release()
            return False
        if not self._is_file:
            if self.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            if self.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            if self.fps:
                cap.set(cv2.CAP_PROP_FPS, self.fps)
        self._cap = cap
        return True

    def read(self) -> Read | None:
        if self._cap is None:
            return None
        ok, frame = self._cap.read(self._buf)  # decode into the same buffer frame after frame
        if not ok or frame is None:
            if self._is_file:
                self.ended = True
            return None
        self._buf = frame
        if self._is_file:
            return frame, self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        return frame, None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        if self._buf is not None:
            self._buf.fill(0)
            self._buf = None


FrameSpec = Sequence[np.ndarray] | Callable[[int], "np.ndarray | None"] | str | Sequence[str]


class EmulatedCamera:
    """A camera for the HIL rig: plays ``frames`` at ``fps``, and can be unplugged.

    ``frames`` is a sequence of arrays, a callable ``index -> frame`` (None ends the stream),
    a directory or glob of image files (sorted), a list of image paths, or a video file
    (``as_video`` forces a file to be read as a video, decoded by ``cv2.VideoCapture``).

    Time: with ``clock=None`` the camera runs free, on a virtual clock that advances one frame
    period on every ``read()`` and every failed ``open()`` (an attempt takes time, too); with
    a clock (``time.monotonic``) it keeps to that clock like a real camera, sleeping until the
    next frame is due and dropping frames a slow reader missed. Frame ``i`` of the scene shows
    at period ``i`` either way, and is stamped ``start + i / fps``.

    Unplugging: ``unplugged`` lists half-open ranges of frame periods during which the camera
    is out; :meth:`unplug` and :meth:`replug` do it by hand. While out, reads and opens fail,
    and a camera that was out must be opened again, as a real device must.
    """

    def __init__(self, frames: FrameSpec, *, fps: float = 15.0, loop: bool = False,
                 start: float = 0.0, unplugged: Iterable[tuple[int, int]] = (),
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 as_video: bool | None = None) -> None:
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.fps, self.loop, self.start = fps, loop, start
        self.schedule = [(int(a), int(b)) for a, b in unplugged]
        self._clock, self._sleep = clock, sleep
        self._t0: float | None = None
        self.plugged = True
        self.ended = False
        self.tick = -1  # the last frame period used
        self.delivered = 0
        self._opened = False
        self._video: cv2.VideoCapture | None = None
        self._video_path: str | None = None
        self._video_pos = 0
        self._paths: list[str] | None = None
        self._frames: Sequence[np.ndarray] | None = None
        self._fn: Callable[[int], np.ndarray | None] | None = None
        if callable(frames):
            self._fn = frames
        elif isinstance(frames, str):
            if os.path.isdir(frames):
                self._paths = sorted(p for p in glob.glob(os.path.join(frames, "*"))
                                     if os.path.isfile(p) and cv2.haveImageReader(p))
            elif os.path.isfile(frames) and (
                    as_video if as_video is not None else not cv2.haveImageReader(frames)):
                self._video_path = frames
            else:
                self._paths = sorted(glob.glob(frames))
            if self._paths is not None and not self._paths:
                raise ValueError(f"no image files at {frames!r}")
        elif len(frames) and isinstance(frames[0], str):
            self._paths = [str(p) for p in frames]
        else:
            self._frames = frames  # type: ignore[assignment]

    # -- plugging ----------------------------------------------------------------------------

    def unplug(self) -> None:
        self.plugged = False
        self._opened = False

    def replug(self) -> None:
        self.plugged = True

    def _out(self, tick: int) -> bool:
        return not self.plugged or any(a <= tick < b for a, b in self.schedule)

    def _advance(self) -> int:
        """Move to the next frame period (sleeping until it is due on a real clock)."""
        if self._clock is None:
            self.tick += 1
            return self.tick
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        tick = max(self.tick + 1, int((now - self._t0) * self.fps))
        due = self._t0 + tick / self.fps
        if due > now:
            self._sleep(due - now)
        self.tick = tick
        return tick

    # -- the source interface ------------------------------------------------------------------

    def _current(self) -> int:
        """The frame period an open() attempt happens in."""
        if self._clock is None:
            return self.tick + 1
        if self._t0 is None:
            self._t0 = self._clock()
        return max(self.tick, int((self._clock() - self._t0) * self.fps))

    def open(self) -> bool:
        if self._out(self._current()):
            if self._clock is None:
                self.tick += 1  # a failed attempt takes a frame period on the virtual clock
            return False
        if self._video_path is not None and self._video is None:
            self._video = cv2.VideoCapture(self._video_path)
            self._video_pos = 0
            if not self._video.isOpened():
                self._video = None
                return False
        self._opened = True
        return True

    def _frame(self, i: int) -> np.ndarray | None:
        if self._fn is not None:
            return self._fn(i)
        items = self._frames if self._frames is not None else self._paths
        if items is not None:
            if i >= len(items):
                if not self.loop:
                    return None
                i %= len(items)
            if self._frames is not None:
                return self._frames[i].copy()
            return cv2.imread(items[i], cv2.IMREAD_COLOR)  # type: ignore[arg-type]
        assert self._video is not None
        frame = None
        while self._video_pos <= i:  # a video plays on while nobody reads it
            ok, frame = self._video.read()
            self._video_pos += 1
            if not ok:
                if not self.loop or self._video_pos == 1:
                    return None
                self._video.set(cv2.CAP_PROP_POS_FRAMES, 0)
                i -= self._video_pos - 1
                self._video_pos = 0
                frame = None
        return frame

    def read(self) -> Read | None:
        tick = self._advance()
        if self.ended:
            return None
        if self._out(tick):
            self._opened = False  # an unplugged device must be opened again
            return None
        if not self._opened:
            return None
        frame = self._frame(tick)
        if frame is None:
            self.ended = True
            return None
        self.delivered += 1
        return frame, self.start + tick / self.fps

    def close(self) -> None:
        self._opened = False
        if self._video is not None:
            self._video.release()
            self._video = None


class Camera:
    """A frame source that recovers from unplug/replug (reopen with backoff)."""

    def __init__(self, source: FrameSource, *, max_failures: int = 3,
                 backoff_initial: float = 0.1, backoff_max: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 on_status: Callable[[str], None] | None = None) -> None:
        self.source = source
        self.max_failures = max_failures
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self._clock, self._sleep = clock, sleep
        self._on_status = on_status
        self.status = "closed"  # -> streaming <-> lost; ended
        self.reconnects = 0
        self._failures = 0
        self._backoff = backoff_initial

    def _set(self, status: str) -> None:
        if status == self.status:
            return
        previous, self.status = self.status, status
        if status == "lost":
            log.warning("camera lost after %d failed reads; reopening with backoff",
                        self._failures)
        elif status == "streaming" and previous == "lost":
            self.reconnects += 1
            log.info("camera restored (reconnect %d)", self.reconnects)
        if self._on_status is not None:
            self._on_status("restored" if previous == "lost" and status == "streaming"
                            else status)

    def read(self, timeout: float | None = None) -> tuple[np.ndarray, float] | None:
        """The next frame and its timestamp. None when the stream has ended, or when
        ``timeout`` seconds pass with the camera lost (it keeps trying on the next call)."""
        deadline = None if timeout is None else self._clock() + timeout
        while True:
            if self.status == "ended":
                return None
            if self.status != "streaming":
                if self.source.open():
                    self._failures = 0
                    self._backoff = self.backoff_initial
                    self._set("streaming")
                else:
                    if self.status == "closed":
                        self._set("lost")
                    if deadline is not None and self._clock() >= deadline:
                        return None
                    self._sleep(self._backoff)
                    self._backoff = min(self.backoff_max, self._backoff * 2)
                    continue
            got = self.source.read()
            if got is not None:
                self._failures = 0
                frame, ts = got
                return frame, (self._clock() if ts is None else ts)
            if self.source.ended:
                self._set("ended")
                return None
            self._failures += 1
            if self._failures >= self.max_failures:
                self.source.close()
                self._set("lost")
            if deadline is not None and self._clock() >= deadline:
                return None

    def frames(self) -> Iterator[tuple[np.ndarray, float]]:
        while True:
            got = self.read()
            if got is None:
                return
            yield got

    def close(self) -> None:
        self.source.close()
        self.status = "closed"
