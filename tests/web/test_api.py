"""The web server's API over real HTTP on loopback (aiohttp client): guards, CSP, event
checks, the WebSocket relay, QR rendering, the PAD's matter and upload limit. The flow is a
small recording stand-in here (the runner has its own tests; the browser tests use the real
one in the simulated hall). Every client here has the session, as the terminal's browser
does (:func:`authed`); what happens without it is in test_auth.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance import config
from appliance.kiosk.desk import Desk, DeskError, MatterRequest
from appliance.kiosk.web import server as web_server
from appliance.kiosk.web.server import WebServer
from appliance.node import objects as ob
from appliance.node import rules
from appliance.service import Readiness


class Ctx:
    def __init__(self, role: str = "kiosk") -> None:
        self.cfg = config.parse({"terminal": {"role": role}}, env={})
        self.readiness = Readiness()
        self.node = None
        self.sim = None
        self.desk = None

    def health(self) -> dict[str, Any]:
        return {"ready": self.readiness.ready, "parts": dict(self.readiness.parts)}


class StandInRunner:
    """Records posted events; publishes what the test pushes."""

    def __init__(self) -> None:
        self.posted: list[dict[str, Any]] = []
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def post(self, ev: dict[str, Any]) -> bool:
        self.posted.append(ev)
        return True

    async def subscribe(self):  # noqa: ANN201
        while True:
            yield await self.queue.get()


async def _server(role: str = "kiosk") -> tuple[WebServer, Ctx]:
    ctx = Ctx(role)
    ctx.readiness.changed = asyncio.Event()
    srv = WebServer(ctx, "127.0.0.1", 0)
    await srv.start()
    return srv, ctx


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


@contextlib.asynccontextmanager
async def authed(srv: WebServer, *, origin: bool = True, page: str | None = None
                 ) -> AsyncIterator[aiohttp.ClientSession]:
    """A client that opened the launch URL (the session cookie) and, with ``origin``, sends
    the server's own Origin as a browser on its pages does."""
    jar = aiohttp.CookieJar(unsafe=True)  # aiohttp keeps no cookie of an IP host otherwise
    page = page or next(iter(srv.pages))
    async with aiohttp.ClientSession(cookie_jar=jar,
                                     headers={"Origin": srv.url} if origin else None) as s:
        async with s.get(srv.launch_url(page), allow_redirects=False) as r:
            assert r.status == 303 and srv.cookie_name in r.cookies
        yield s


def test_refuses_a_non_loopback_bind() -> None:
    with pytest.raises(ValueError, match="loopback"):
        WebServer(Ctx(), "0.0.0.0", 0)


def test_pages_headers_and_guards() -> None:
    async def main() -> None:
        srv, _ = await _server()
        try:
            async with authed(srv) as s:
                # a kiosk serves no PAD page and no PAD route
                for path in ("/", "/pad", "/static/kiosk.js", "/api/health", "/api/state",
                             "/static/nope.js", "/api/pad/samples", "/nope"):
                    async with s.get(srv.url + path) as r:
                        assert r.headers["Content-Security-Policy"] == web_server.CSP, path
                        assert r.headers["X-Content-Type-Options"] == "nosniff"
                        missing = "nope" in path or path.startswith(("/pad", "/api/pad"))
                        assert r.status == (404 if missing else 200), path
                        assert r.headers["X-Frame-Options"] == "DENY"
                async with s.get(srv.url + "/") as r:
                    html = await r.text()
                # no inline script or style, nothing fetched from the network
                assert "<script>" not in html and "style=" not in html
                assert "http://" not in html and "https://" not in html
                async with s.get(srv.url + "/api/state") as r:
                    assert (await r.json())["view"]["screen"] == "starting"
                # DNS rebinding: another Host is refused
                async with s.get(srv.url + "/api/health", headers={"Host": "evil.example"}) as r:
                    assert r.status == 421
                # cross-origin POST refused, same origin allowed through to the checks
                async with s.post(srv.url + "/api/event", json={"type": "start"},
                                  headers={"Origin": "http://evil.example"}) as r:
                    assert r.status == 403
                async with s.post(srv.url + "/api/event", json={"type": "start"},
                                  headers={"Origin": srv.url}) as r:
                    assert r.status == 503  # no flow yet
                    assert (await r.json())["error"] == "starting"
                async with s.get(srv.url + "/static/..%2Fserver.py") as r:
                    assert r.status == 404
        finally:
            await srv.stop()

    run(main())


@pytest.mark.parametrize("body, status", [
    ({"type": "start"}, 200),
    ({"type": "matter_text", "text": "GOVAUTH1:x"}, 200),
    ({"type": "confirmation_text", "text": "GOVCONF1:x"}, 200),
    ({"type": "clerk_confirmed_id", "clerk": "A-17"}, 400),  # the old form: the clerk signs
    ({"type": "launch"}, 400),
    ({"type": "start", "extra": 1}, 400),
    ({"type": "matter_text"}, 400),
    ({"type": "matter_text", "text": "x" * 3000}, 400),
    ({"type": "confirmation_text", "text": ""}, 400),
    (["start"], 400),
])
def test_events_are_checked_then_posted(body: Any, status: int) -> None:
    async def main() -> None:
        srv, _ = await _server()
        runner = StandInRunner()
        srv.attach_runner(runner)
        try:
            async with authed(srv) as s, \
                    s.post(srv.url + "/api/event", json=body) as r:
                assert r.status == status, await r.text()
            assert runner.posted == ([body] if status == 200 else [])
        finally:
            await srv.stop()

    run(main())


def test_event_size_limit_and_bad_json() -> None:
    async def main() -> None:
        srv, _ = await _server()
        srv.attach_runner(StandInRunner())
        try:
            async with authed(srv) as s:
                big = json.dumps({"type": "start", "pad": "x" * 10000})
                async with s.post(srv.url + "/api/event", data=big) as r:
                    assert r.status == 413
                async with s.post(srv.url + "/api/event", data=b"{not json") as r:
                    assert r.status == 400
        finally:
            await srv.stop()

    run(main())


def test_websocket_relays_views_guidance_and_frames_without_keeping_frames() -> None:
    async def main() -> None:
        srv, _ = await _server()
        runner = StandInRunner()
        srv.attach_runner(runner)
        try:
            async with authed(srv) as s, s.ws_connect(srv.url + "/api/ws?page=kiosk") as ws:
                hello = json.loads((await ws.receive()).data)
                assert hello["type"] == "hello" and hello["view"]["screen"] == "starting"
                await asyncio.sleep(0.05)
                view = dict(web_server.STARTING_VIEW, screen="capture", seq=3)
                await runner.queue.put({"type": "view", "view": view})
                await runner.queue.put({"type": "guidance", "hints": ["move_closer"],
                                        "challenge": {"action": "blink"}})
                await runner.queue.put({"type": "frame", "jpeg": b"\xff\xd8fake\xff\xd9"})
                got: list[Any] = []
                while len(got) < 3:
                    msg = await ws.receive(timeout=10)
                    if msg.type == aiohttp.WSMsgType.TEXT and \
                            json.loads(msg.data)["type"] == "health":
                        continue
                    got.append(msg)
                assert json.loads(got[0].data)["view"]["screen"] == "capture"
                assert json.loads(got[1].data)["hints"] == ["move_closer"]
                assert got[2].type == aiohttp.WSMsgType.BINARY
                assert got[2].data == b"\xff\xd8fake\xff\xd9"
            # the server keeps the view and guidance, never a frame
            assert srv.view["screen"] == "capture" and srv.frames_relayed == 1
            assert "jpeg" not in json.dumps(srv.guidance)
            async with authed(srv) as s, s.get(srv.url + "/api/state") as r:
                st = await r.json()
            assert st["view"]["seq"] == 3 and st["guidance"]["hints"] == ["move_closer"]
        finally:
            await srv.stop()

    run(main())


def test_qr_png_decodes_to_the_text() -> None:
    async def main() -> None:
        srv, _ = await _server()
        text = "GOVTX1:" + "ab" * 32
        try:
            async with authed(srv) as s:
                async with s.get(srv.url + "/api/qr?text=" + quote(text)) as r:
                    assert r.status == 200 and r.content_type == "image/png"
                    png = await r.read()
                async with s.get(srv.url + "/api/qr?text=") as r:
                    assert r.status == 400
                async with s.get(srv.url + "/api/qr?text=" + "x" * 2049) as r:
                    assert r.status == 400
        finally:
            await srv.stop()
        image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert cv2.QRCodeDetector().detectAndDecode(image)[0] == text

    run(main())


def test_pad_matter_is_signed_by_the_pad_and_verifies_as_a_kiosk_would() -> None:
    """The PAD's desk over the API: the matter is signed with the PAD's key, names the office
    of its enrollment, and passes every §6 check a kiosk makes; a license of another holder
    is refused at the PAD, with a message the clerk can act on."""
    import time

    from tests.node.world import CITIZEN_ID, make_world

    world = make_world(time.time_ns() // 1_000_000)
    other = world.deposit("issuer", ob.identifier_hash("110108199001010011"))

    async def main() -> tuple[dict[str, Any], list[tuple[int, dict[str, Any]]]]:
        srv, ctx = await _server("pad")
        ctx.desk = Desk(signer=world.keys["pad"], enrollment=world.enrollments["pad"],
                        references=world, admins=world.anchor_admins)
        try:
            async with authed(srv) as s:
                async with s.get(srv.url + "/api/pad/info") as r:
                    assert (await r.json())["office"] == world.matter_body().office
                doc = {"title": "户籍迁入", "agencies": "北京市公安局\n海淀区公安分局",
                       "purpose": "迁入 move in", "citizen_id": CITIZEN_ID.lower(),
                       "licenses": [t.hex() for t in world.licenses], "valid_minutes": 10}
                async with s.post(srv.url + "/api/pad/matter", json=doc) as r:
                    assert r.status == 200, await r.text()
                    out = await r.json()
                refusals = []
                for bad in (dict(doc, licenses=[]), dict(doc, citizen_id=""),
                            dict(doc, licenses=[other.hex()]), dict(doc, use_days=91),
                            dict(doc, title="x\u202e"), dict(doc, extra=1)):
                    async with s.post(srv.url + "/api/pad/matter", json=bad) as r:
                        refusals.append((r.status, await r.json()))
                return out, refusals
        finally:
            await srv.stop()

    out, refusals = run(main())
    m = ob.decode_matter_qr(out["qr_text"])
    assert m.public_key == world.keys["pad"].public_key and m.body.title == "户籍迁入"
    assert m.body.agencies == ("北京市公安局", "海淀区公安分局")
    assert m.body.subject == ob.identifier_hash(CITIZEN_ID)  # x and X: one identifier
    v = rules.verify_matter(m, world.lookup, world.anchor_admins, at=world.t0)
    assert v.pad.office == m.body.office
    assert out["qr_png"].startswith("/api/qr?text=GOVAUTH1")
    assert [status for status, _ in refusals] == [400] * 6
    assert all(body["error"] == "bad_matter" for _, body in refusals)
    assert "not the citizen" in refusals[2][1]["message"]


def test_pad_verify_limits_and_refusals() -> None:
    async def main() -> None:
        srv, _ = await _server("pad")
        try:
            async with authed(srv) as s:
                # over the limit, sent chunked (no Content-Length): refused while reading
                async def body():  # noqa: ANN202
                    chunk = b"\0" * (1 << 20)
                    for _ in range(17):
                        yield chunk

                form = aiohttp.FormData()
                form.add_field("file", body(), filename="big.bin",
                               content_type="application/octet-stream")
                async with s.post(srv.url + "/api/pad/verify", data=form) as r:
                    assert r.status == 413, await r.text()
                form = aiohttp.FormData()
                form.add_field("file", b"small", filename="a.txt")
                async with s.post(srv.url + "/api/pad/verify", data=form) as r:
                    assert r.status == 503  # read fine; no light node to ask
                    assert (await r.json())["error"] == "node_unavailable"
                form = aiohttp.FormData(default_to_multipart=True)
                form.add_field("sample", "0")
                async with s.post(srv.url + "/api/pad/verify", data=form) as r:
                    assert r.status == 404  # no simulated hall, no samples
                async with s.post(srv.url + "/api/pad/verify", json={"file": "x"}) as r:
                    assert r.status == 400
        finally:
            await srv.stop()

    run(main())


def test_pad_sample_index_is_read_a_few_bytes_at_most() -> None:
    """The ``sample`` part is an index: a part longer than a few digits is refused without
    being read (it would otherwise be buffered whole, past every upload limit)."""
    from types import SimpleNamespace

    async def main() -> None:
        srv, ctx = await _server("pad")
        ctx.sim = SimpleNamespace(samples=[SimpleNamespace(document=b"licence", filename="a")],
                                  citizen="astronaut")
        try:
            async with authed(srv) as s:
                form = aiohttp.FormData(default_to_multipart=True)
                form.add_field("sample", "0")
                async with s.post(srv.url + "/api/pad/verify", data=form) as r:
                    # found the sample; then no light node to ask
                    assert r.status == 503 and (await r.json())["error"] == "node_unavailable"

                async def digits():  # noqa: ANN202 - 17 MiB of "0": over every limit
                    for _ in range(17):
                        yield b"0" * (1 << 20)

                form = aiohttp.FormData()
                form.add_field("sample", digits(), filename="index",
                               content_type="text/plain")
                async with s.post(srv.url + "/api/pad/verify", data=form) as r:
                    assert r.status == 404, await r.text()
        finally:
            await srv.stop()

    run(main())


def test_a_pad_opens_on_the_pad_page() -> None:
    async def main() -> None:
        srv, ctx = await _server("pad")
        try:
            async with authed(srv) as s:
                async with s.get(srv.url + "/", allow_redirects=False) as r:
                    assert r.status == 302 and r.headers["Location"] == "/pad"
                    assert r.headers["Content-Security-Policy"] == web_server.CSP
                async with s.get(srv.url + "/pad") as r:
                    assert r.status == 200 and "Window clerk PAD" in await r.text()
        finally:
            await srv.stop()

    run(main())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids,
                                                              max_size=4),
    max_leaves=12)
events = st.fixed_dictionaries({"type": st.sampled_from(sorted(web_server.EVENT_TYPES))},
                               optional={"text": json_values, "x": json_values})


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, events))
def test_check_event_never_raises_and_passes_only_contract_events(event: Any) -> None:
    problem = web_server.check_event(event)
    assert problem is None or isinstance(problem, str)
    if problem is None:
        assert isinstance(event, dict) and event["type"] in web_server.EVENT_TYPES
        assert set(event) <= {"type", "text"}
        if "text" in event:
            assert event["type"] in ("matter_text", "confirmation_text")
            assert isinstance(event["text"], str)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "title": json_values, "agencies": json_values, "purpose": json_values,
    "citizen_id": json_values, "enterprise_id": json_values, "valid_minutes": json_values,
    "use_days": json_values,
    "licenses": st.lists(st.one_of(json_values, st.binary(min_size=32, max_size=32).map(
        bytes.hex)), max_size=3)})))
def test_a_matter_request_is_parsed_or_refused_with_a_desk_error(doc: Any) -> None:
    try:
        req = MatterRequest.from_json(doc)
    except DeskError as exc:
        assert exc.status == 400 and exc.code == "bad_matter"
        return
    assert req.title and req.citizen_id and all(len(x) == 32 for x in req.licenses)
    assert 1 <= req.valid_minutes <= 1440 and 1 <= req.use_days <= 90
