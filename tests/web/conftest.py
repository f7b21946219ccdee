"""Fixtures of the browser tests: the simulated hall (``appliance run --sim`` as a process,
its own TMPDIR and working directory; its launch URLs, with the key, read from the line it
prints) and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from uiclient import UiClient

REPO = Path(__file__).resolve().parent.parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@dataclass
class Hall:
    proc: subprocess.Popen[str]
    url: str  # the kiosk's UI address, no key: a request to it alone is refused
    kiosk_url: str  # the launch URLs the two daemons printed (with this start's keys)
    pad_url: str
    tmp: Path  # the daemon's TMPDIR (the simulated hall's directory is inside)
    cwd: Path
    log: list[str] = field(default_factory=list)
    _ui: UiClient | None = None
    _pad: UiClient | None = None

    @property
    def ui(self) -> UiClient:
        """The kiosk's UI with the session cookie, as the kiosk's browser has it."""
        if self._ui is None:
            self._ui = UiClient(self.kiosk_url)
        return self._ui

    @property
    def pad(self) -> UiClient:
        """The PAD's UI with its session cookie (another daemon, another key)."""
        if self._pad is None:
            self._pad = UiClient(self.pad_url)
        return self._pad

    def get(self, path: str) -> Any:
        return self.ui.get(path)

    def health(self) -> dict[str, Any]:
        return self.get("/api/health")

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        """Both terminals ready; the kiosk's health."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = self.health()
            if h["ready"] and self.pad.get("/api/health")["ready"]:
                return h
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError("the simulated hall did not get ready:\n" + "".join(self.log))


def start_hall(base: Path, *, record_writes: Path | None = None) -> Hall:
    """``appliance run --sim`` with its own TMPDIR and HOME; with ``record_writes``, every
    process of it records the paths it writes (tests/web/writehook/sitecustomize.py)."""
    tmp, cwd = base / "daemon-tmp", base / "daemon-cwd"
    tmp.mkdir(parents=True)
    cwd.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), HOME=str(cwd))
    env.pop("APPLIANCE_CONFIG", None)
    paths = [str(REPO), env.get("PYTHONPATH")]
    if record_writes is not None:
        paths.insert(0, str(REPO / "tests" / "web" / "writehook"))
        env["APPLIANCE_TEST_WRITES"] = str(record_writes)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--sim", "--port",
                             "0", "--config", str(REPO / "tests" / "web" / "sim.toml")],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd, start_new_session=True)
    assert proc.stderr is not None
    log: list[str] = []
    deadline = time.monotonic() + 60
    url = kiosk = pad = None
    while (url is None or kiosk is None or pad is None) and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        log.append(line)
        if m := re.search(r"kiosk UI on (http://\S+)", line):
            url = m.group(1)
        if m := re.search(r"hall, kiosk: open (http://\S+)", line):
            kiosk = m.group(1)
        if m := re.search(r"hall, clerk PAD: open (http://\S+)", line):
            pad = m.group(1)
    if url is None or kiosk is None or pad is None:
        proc.kill()
        raise AssertionError("appliance run --sim printed no UI lines:\n" + "".join(log))
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
    return Hall(proc, url, kiosk, pad, tmp, cwd, log)


def stop_hall(hall: Hall) -> int:
    if hall.proc.poll() is None:
        hall.proc.send_signal(signal.SIGTERM)
        try:
            hall.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(hall.proc.pid, signal.SIGKILL)
            hall.proc.wait(timeout=10)
    return hall.proc.returncode


@pytest.fixture(scope="module")
def hall(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hall]:
    h = start_hall(tmp_path_factory.mktemp("hall"))
    try:
        h.wait_ready()
        yield h
    finally:
        stop_hall(h)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} missing: `make test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM,
            headless=True, args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900},
            locale="zh-CN", timezone_id="Asia/Shanghai")
        try:
            yield ctx
        finally:
            ctx.close()
