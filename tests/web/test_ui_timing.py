"""The kiosk page's countdown, time warning, "extend time" and cancel, in headless Chromium
against the real web server, with the flow's views pushed by a small stand-in (the flow's
own timers are tested with the flow; waiting 40 s for a real warning has no place here); and
a page whose session is gone when its WebSocket drops turning into the locked page."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from appliance import config
from appliance.kiosk.web.server import STARTING_VIEW, WebServer
from appliance.service import Readiness


class Ctx:
    def __init__(self) -> None:
        self.cfg = config.parse({}, env={})
        self.readiness = Readiness()
        self.node = None
        self.sim = None

    def health(self) -> dict[str, Any]:
        return {"ready": True, "parts": dict(self.readiness.parts)}


class StandInRunner:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.posted: list[dict[str, Any]] = []
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def post(self, ev: dict[str, Any]) -> bool:
        self.posted.append(ev)
        return True

    async def subscribe(self):  # noqa: ANN201
        while True:
            yield await self.queue.get()

    def push(self, view: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, {"type": "view", "view": view})

    def drop_sockets(self, srv: WebServer) -> None:
        """Close every WebSocket from the server's side, as a daemon restarting does."""
        async def close() -> None:
            for c in list(srv.clients):
                await c.ws.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(30)


@pytest.fixture
def served() -> Iterator[tuple[str, StandInRunner]]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def start() -> None:
        ctx = Ctx()
        ctx.readiness.changed = asyncio.Event()
        srv = WebServer(ctx, "127.0.0.1", 0)
        await srv.start()
        runner = StandInRunner(loop)
        srv.attach_runner(runner)
        runner.srv = srv  # type: ignore[attr-defined]
        box.update(srv=srv, runner=runner)
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    ready.wait(30)
    try:
        yield box["srv"].launch_url("/"), box["runner"]
    finally:
        asyncio.run_coroutine_threadsafe(box["srv"].stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_countdown_warning_extend_and_cancel(served: tuple[str, StandInRunner], browser: Any
                                             ) -> None:
    launch_url, runner = served
    page = browser.new_page()
    page.goto(launch_url)
    page.wait_for_selector('[data-screen="starting"].active')
    now = int(time.time() * 1000)
    consent = dict(STARTING_VIEW, screen="consent", seq=1, session="00" * 16,
                   deadline_ms=now + 600_000, warn_at_ms=now + 500_000, can_extend=True,
                   can_cancel=True,
                   matter={"matter": "m", "agency": "a", "office": "o", "not_after": now,
                           "licenses": [{"id": "11" * 32, "name": "ID card"}]})
    runner.push(consent)
    page.wait_for_selector('[data-screen="consent"].active')
    assert page.is_visible("#clock") and not page.is_visible("#warn")
    left = int(page.inner_text("#clock").split()[0])
    assert 500 < left <= 600  # seconds to the deadline (a page this slow would be a bug)
    assert page.is_visible("#cancel")
    # the warning time has come: the banner with "extend time"
    runner.push(dict(consent, seq=2, warn_at_ms=now - 1))
    page.wait_for_selector("#warn:not([hidden])")
    assert "延长时间" in page.inner_text("#extend") and "Extend time" in page.inner_text("#extend")
    page.click("#extend")
    deadline = time.monotonic() + 10
    while {"type": "extend"} not in runner.posted and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert {"type": "extend"} in runner.posted
    # extended: the flow moves the deadline and the warning goes
    runner.push(dict(consent, seq=3, deadline_ms=now + 1_200_000, warn_at_ms=now + 1_100_000))
    page.wait_for_selector("#warn", state="hidden")
    # no more extensions allowed: the banner shows without the button
    runner.push(dict(consent, seq=4, warn_at_ms=now - 1, can_extend=False))
    page.wait_for_selector("#warn:not([hidden])")
    assert not page.is_visible("#extend")
    page.click("#cancel")
    deadline = time.monotonic() + 10
    while {"type": "cancel"} not in runner.posted and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert {"type": "cancel"} in runner.posted
    # screens without a deadline or cancel hide both
    runner.push(dict(STARTING_VIEW, screen="attract", seq=5))
    page.wait_for_selector('[data-screen="attract"].active')
    assert not page.is_visible("#clock") and not page.is_visible("#cancel")
    page.close()


def test_a_page_whose_session_is_gone_turns_into_the_locked_page(
        served: tuple[str, StandInRunner], browser: Any) -> None:
    """Its socket dropped and the session unknown (a daemon restarted with a new key): the
    page asks, gets 401, and shows where the UI opens instead of a screen that no longer
    works."""
    launch_url, runner = served
    page = browser.new_page()
    page.goto(launch_url)
    page.wait_for_selector('[data-screen="starting"].active')
    browser.clear_cookies()
    runner.drop_sockets(runner.srv)  # type: ignore[attr-defined]
    page.wait_for_selector("main#locked")
    assert page.query_selector("[data-screen]") is None
    page.close()
