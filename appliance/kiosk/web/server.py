"""The local web server: the kiosk UI, the PAD UI and their JSON/WebSocket API (aiohttp).

Bound to a loopback address only (the Chromium of the same terminal shows it; the
configuration refuses anything else, and so does :class:`WebServer`), and locked by a secret
of its own (:mod:`.auth`): the terminal's browser opens :meth:`WebServer.launch_url` once and
gets a session cookie; without it every route answers 401 (the pages a static "open this
terminal's UI from its own browser" page, the API ``{"error": "unauthorized"}``), except
``/api/health``, which then says ``{"ok": true|false}`` and nothing more. Requests whose
``Host`` is not that loopback address are refused (DNS rebinding); state-changing requests and
WebSockets must carry this server's own ``Origin`` (cross-origin or none: 403). Every answer
carries a strict Content-Security-Policy: no inline script, nothing from the network.

The terminal's role (``[terminal] role``) decides which pages and routes exist: a kiosk
serves the citizen's page and the flow's API, a PAD the clerk's page and the desk's API.

| route | role | what |
| --- | --- | --- |
| ``GET /`` (kiosk), ``GET /pad`` (pad) | | the page; ``/static/*``; with ``?k=SECRET``: the |
| | | session cookie and a redirect to the page without the key |
| ``GET /api/health`` | both | readiness of the parts (without the cookie: ``ok``) |
| ``GET /api/qr?text=T`` | both | a QR code of T as PNG (cv2.QRCodeEncoder), rendered here |
| ``GET /api/state`` | kiosk | the flow's current view (``screen: starting`` until it runs) |
| ``POST /api/event`` | kiosk | ``{"type": ...}`` from the UI -> ``runner.post`` |
| ``WS /api/ws?page=kiosk`` | kiosk | view, guidance and health messages as JSON; preview |
| | | frames (binary JPEG) |
| ``GET /api/hints`` | kiosk | the quality gate's hint texts (English, Chinese) |
| ``GET /api/pad/info`` | pad | this PAD's office, from its verified enrollment |
| ``POST /api/pad/matter`` | pad | the clerk's matter -> signed in the PAD's module -> QR |
| ``POST /api/pad/session`` | pad | the kiosk's session code (typed, or read by the camera) |
| ``POST /api/pad/confirm`` | pad | the clerk's confirmation, signed on the staff card -> QR |
| ``POST /api/pad/verify`` | pad | multipart ``file`` (<= 16 MiB, counted while reading) or |
| | | ``sample`` -> the verified deposits of its SM3 digest |
| ``GET /api/pad/samples[/{i}]`` | pad | the simulated hall's deposited documents |

Preview frames are relayed from the runner to the kiosk page's open WebSockets and dropped:
never stored, never logged, not even kept for a late subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from appliance.httpbody import read_capped

from . import auth

log = logging.getLogger("appliance.kiosk.web")

STATIC = Path(__file__).resolve().parent / "static"
MAX_EVENT_BYTES = 8192
MAX_UPLOAD = 16 * 1024 * 1024
MAX_QR_TEXT = 2048
EVENT_TYPES = frozenset({"start", "matter_text", "confirmation_text", "consent", "decline",
                         "alternative", "extend", "cancel", "done", "activity"})
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
#: The page of each role, by path; opened with ``?k=SECRET`` it sets the session cookie.
ROLE_PAGES = {"kiosk": {"/": "kiosk.html"}, "pad": {"/pad": "pad.html"}}
PAGES = {path: name for pages in ROLE_PAGES.values() for path, name in pages.items()}
#: What a WebSocket says it serves (``/api/ws?page=...``): the kiosk page, which gets the
#: preview frames of the kiosk's camera.
WS_PAGES = frozenset({"kiosk"})
SAFE_METHODS = frozenset({"GET", "HEAD"})
LOCKED_PAGE = "locked.html"  # the page without the cookie: no data, no script
STARTING_VIEW: dict[str, Any] = {
    "screen": "starting", "seq": 0, "session": None, "deadline_ms": None, "warn_at_ms": None,
    "can_extend": False, "can_cancel": False, "matter": None, "capture": None, "error": None,
    "receipt": None, "alarm": None,
}


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


class _Client:
    """One WebSocket: a bounded queue; frames are dropped rather than queued when it lags.
    ``frames``: whether preview frames go to it at all (the kiosk page's sockets only)."""

    def __init__(self, ws: web.WebSocketResponse, *, frames: bool) -> None:
        self.ws = ws
        self.frames = frames
        self.queue: asyncio.Queue[str | bytes] = asyncio.Queue(maxsize=32)

    def offer(self, item: str | bytes) -> None:
        if isinstance(item, bytes) and (not self.frames or self.queue.qsize() > 2):
            return  # a preview frame: only for the kiosk page, and only the newest matter
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(item)


class WebServer:
    """Serves the UI for ``ctx`` (the daemon: ``cfg``, ``health()``, ``node``, ``sim``,
    ``readiness``) on ``host:port``; :meth:`attach_runner` when the flow is up.

    Each server makes its own secret (:class:`.auth.UiAuth`); with ``secret_file`` it is
    written there (0600) while the server runs, for a launcher of the same user."""

    def __init__(self, ctx: Any, host: str, port: int, *,
                 secret_file: Path | None = None) -> None:
        addr = ipaddress.ip_address(host)
        if not addr.is_loopback:
            raise ValueError(f"the UI listens on a loopback address only, not {host}")
        self.ctx = ctx
        self.host = host
        self.requested_port = port
        self.port = 0
        self.url = ""
        self.view: dict[str, Any] = dict(STARTING_VIEW)
        self.guidance: dict[str, Any] | None = None
        self.runner: Any = None
        self.clients: set[_Client] = set()
        self._runner_app: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._static = {p.name: p for p in STATIC.iterdir() if p.is_file()}
        self.frames_relayed = 0
        self.auth = auth.UiAuth()
        self.secret_file = secret_file
        self.cookie_name = ""
        self.app: web.Application | None = None
        self.role = ctx.cfg.terminal.role
        self.pages = ROLE_PAGES[self.role]

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_UPLOAD + 65536)
        self.app = app
        r = app.router
        for path, name in self.pages.items():
            r.add_get(path, self._page(name))
        if self.role == "pad":
            r.add_get("/", self._to_pad)  # the PAD's browser may open the root
        r.add_get("/static/{name}", self._static_file)
        r.add_get("/api/health", self._health)
        r.add_get("/api/qr", self._qr)
        if self.role == "kiosk":
            r.add_get("/api/state", self._state)
            r.add_post("/api/event", self._event)
            r.add_get("/api/ws", self._ws)
            r.add_get("/api/hints", self._hints)
        else:
            r.add_get("/api/pad/info", self._pad_info)
            r.add_post("/api/pad/matter", self._pad_call("make_matter"))
            r.add_post("/api/pad/session", self._pad_call("session"))
            r.add_post("/api/pad/confirm", self._pad_call("confirm"))
            r.add_post("/api/pad/verify", self._pad_verify)
            r.add_get("/api/pad/samples", self._samples)
            r.add_get("/api/pad/samples/{index}", self._sample)
        self._runner_app = web.AppRunner(app, access_log=None, handle_signals=False,
                                         shutdown_timeout=1.0)
        await self._runner_app.setup()
        site = web.TCPSite(self._runner_app, self.host, self.requested_port)
        await site.start()
        self.port = self._runner_app.addresses[0][1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        self.cookie_name = auth.cookie_name(self.port)
        if self.secret_file is not None:
            await asyncio.to_thread(auth.write_secret, self.secret_file, self.auth.secret)
        self._tasks.append(asyncio.create_task(self._health_pump()))
        return self.url

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for c in list(self.clients):
            with contextlib.suppress(Exception):
                await c.ws.close()
        if self._runner_app is not None:
            await self._runner_app.cleanup()
            self._runner_app = None
        if self.secret_file is not None:
            await asyncio.to_thread(auth.remove_secret, self.secret_file, self.auth.secret)

    def launch_url(self, page: str = "/") -> str:
        """The URL the terminal's browser opens: ``page`` with this server's secret. Only for
        that browser and the operator's own terminal: it unlocks the UI."""
        if page not in self.pages:
            raise ValueError(f"no page {page!r} on a {self.role}")
        return f"{self.url}{page}?{auth.PARAM}={self.auth.secret}"

    def launch_url_for_stderr(self, page: str = "/") -> str:
        """:meth:`launch_url` for the daemon's stderr: the operator's own terminal. When
        stderr is the systemd journal (read by more than this user) the key is not written:
        the URL says where it is instead."""
        if not auth.stderr_is_journal():
            return self.launch_url(page)
        where = self.secret_file if self.secret_file is not None else "the daemon"
        return f"{self.url}{page}?{auth.PARAM}=<the key in {where}>"

    def attach_runner(self, runner: Any) -> None:
        """Relay ``runner.subscribe()`` to the WebSockets; events go to ``runner.post``."""
        self.runner = runner
        self._tasks = [t for t in self._tasks if not t.done()]  # earlier runners' pumps
        self._tasks.append(asyncio.create_task(self._pump(runner)))

    # -- relaying --------------------------------------------------------------------------

    def _broadcast(self, item: str | bytes) -> None:
        for c in list(self.clients):
            c.offer(item)

    def _message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "frame":
            jpeg = msg.get("jpeg")
            if isinstance(jpeg, bytes | bytearray | memoryview) and \
                    any(c.frames for c in self.clients):
                self.frames_relayed += 1
                self._broadcast(bytes(jpeg))  # _Client.offer keeps it from other pages
            return
        if kind == "view" and isinstance(msg.get("view"), dict):
            self.view = msg["view"]
            if self.view.get("screen") != "capture":
                self.guidance = None
        elif kind == "guidance":
            self.guidance = msg
        else:
            return
        self._broadcast(json.dumps(_jsonable(msg)))

    async def _pump(self, runner: Any) -> None:
        try:
            current = getattr(runner, "view", None)
            if callable(current):
                with contextlib.suppress(Exception):
                    self._message({"type": "view", "view": current()})
            async for msg in runner.subscribe():
                if isinstance(msg, dict):
                    self._message(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged; the UI shows the health
            log.error("runner subscription ended: %s", exc)
        finally:
            if self.runner is runner:
                self.runner = None
                self.view = dict(STARTING_VIEW)
                self._broadcast(json.dumps({"type": "view", "view": self.view}))

    async def _health_pump(self) -> None:
        readiness = getattr(self.ctx, "readiness", None)
        changed = getattr(readiness, "changed", None)
        while True:
            if changed is None:
                await asyncio.sleep(1.0)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), 2.0)
                changed.clear()
            self._broadcast(json.dumps({"type": "health", "health": self.ctx.health()}))

    # -- guard -----------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        """Host (DNS rebinding), then the session cookie (or the key of a launch URL), then
        Origin for anything that changes state or opens a socket; the headers on every
        answer."""
        host = request.headers.get("Host", "")
        allowed = {f"{self.host}:{self.port}", f"localhost:{self.port}",
                   f"[{self.host}]:{self.port}"}
        if host not in allowed:
            resp: web.StreamResponse = _error(421, "bad_host", "this server answers for "
                                              f"{self.url} only")
        elif request.method in SAFE_METHODS and request.path in self.pages and \
                auth.PARAM in request.query:
            resp = self._exchange(request)
        elif not self.auth.session_ok(request.cookies.get(self.cookie_name)):
            resp = self._locked(request)
        elif request.method not in SAFE_METHODS or request.path == "/api/ws":
            origin = request.headers.get("Origin")
            if origin not in {f"http://{h}" for h in allowed}:
                resp = _error(403, "bad_origin", "a request that changes state must come "
                              "from this server's own pages (Origin)")
            else:
                resp = await self._handle(request, handler)
        else:
            resp = await self._handle(request, handler)
        if not isinstance(resp, web.WebSocketResponse) and not resp.prepared:
            _headers(resp)
        return resp

    @staticmethod
    async def _handle(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:  # as a plain response, so it gets our headers
            return web.Response(status=exc.status, reason=exc.reason, text=exc.text,
                                headers={k: v for k, v in exc.headers.items()
                                         if k.lower() != "content-length"})

    def _exchange(self, request: web.Request) -> web.StreamResponse:
        """A launch URL: the right key gets the session cookie and a redirect to the page
        without the key (out of the address bar); a wrong one gets the locked page."""
        if not self.auth.secret_ok(request.query.get(auth.PARAM)):
            return self._locked(request)
        resp = web.Response(status=303, headers={"Location": request.path})
        resp.set_cookie(self.cookie_name, self.auth.session, path="/", httponly=True,
                        samesite="Strict")
        return resp

    def _locked(self, request: web.Request) -> web.StreamResponse:
        """401 without the session: the pages a static page that says where the UI opens,
        ``/api/health`` only whether the terminal is ok, everything else a JSON error."""
        if request.path == "/api/health" and request.method in SAFE_METHODS:
            return web.json_response({"ok": _health_ok(self.ctx.health())})
        if request.path in {*self.pages, "/"} and request.method in SAFE_METHODS:
            return web.FileResponse(STATIC / LOCKED_PAGE, status=401,
                                    headers={"Cache-Control": "no-store"})
        return _error(401, "unauthorized", "open this terminal's UI from its own browser "
                      "(the launch URL the terminal printed); no session")

    # -- pages -----------------------------------------------------------------------------

    def _page(self, name: str) -> Callable[[web.Request], Any]:
        async def page(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-store"})

        return page

    async def _to_pad(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/pad")

    async def _static_file(self, request: web.Request) -> web.StreamResponse:
        path = self._static.get(request.match_info["name"])
        if path is None:
            return _error(404, "not_found", "no such file")
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})

    # -- API -------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(self.ctx.health())

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(_jsonable({
            "view": self.view, "guidance": self.guidance, "health": self.ctx.health(),
            "role": self.role, "elder_mode": self.ctx.cfg.kiosk.elder_mode}))

    async def _event(self, request: web.Request) -> web.Response:
        body = await read_capped(request, MAX_EVENT_BYTES)
        if body is None:
            return _error(413, "too_large", f"an event is at most {MAX_EVENT_BYTES} bytes")
        try:
            event = json.loads(body)
        except ValueError:
            return _error(400, "bad_request", "the body is not JSON")
        problem = check_event(event)
        if problem:
            return _error(400, "bad_event", problem)
        runner = self.runner
        if runner is None:
            return _error(503, "starting", "the authorization flow is not running yet")
        result = runner.post(event)
        if inspect.isawaitable(result):
            result = await result
        return web.json_response({"ok": result is not False})

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        page = request.query.get("page")
        if page not in WS_PAGES:
            return _error(400, "bad_request", "open /api/ws?page=kiosk")
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096)
        await ws.prepare(request)
        # the live face preview goes to the citizen's screen only, never to the clerk's
        client = _Client(ws, frames=page == "kiosk")
        client.offer(json.dumps(_jsonable({
            "type": "hello", "view": self.view, "guidance": self.guidance,
            "health": self.ctx.health(), "role": self.role,
            "elder_mode": self.ctx.cfg.kiosk.elder_mode})))
        self.clients.add(client)

        async def reader() -> None:
            async for msg in ws:  # nothing is accepted over the socket; read to see closes
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break

        read_task = asyncio.create_task(reader())
        try:
            while not ws.closed:
                get = asyncio.create_task(client.queue.get())
                done, _ = await asyncio.wait({get, read_task},
                                             return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    break
                item = get.result()
                if isinstance(item, bytes):
                    await ws.send_bytes(item)
                else:
                    await ws.send_str(item)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.clients.discard(client)
            read_task.cancel()
            while not client.queue.empty():  # drop queued frames now, not at collection
                client.queue.get_nowait()
            with contextlib.suppress(Exception):
                await ws.close()
        return ws

    async def _qr(self, request: web.Request) -> web.Response:
        text = request.query.get("text", "")
        if not 1 <= len(text) <= MAX_QR_TEXT:
            return _error(400, "bad_request", f"text must be 1..{MAX_QR_TEXT} characters")
        from .qr import qr_png

        try:
            png = await asyncio.to_thread(qr_png, text)
        except ValueError as exc:
            return _error(400, "bad_request", str(exc))
        return web.Response(body=png, content_type="image/png",
                            headers={"Cache-Control": "no-store"})

    async def _hints(self, request: web.Request) -> web.Response:
        from ..capture.quality import HINTS

        return web.json_response({k: {"en": en, "zh": zh} for k, (en, zh) in HINTS.items()})

    # -- PAD -------------------------------------------------------------------------------

    async def _pad_info(self, request: web.Request) -> web.Response:
        from . import pad

        try:
            return web.json_response(await pad.info(self.ctx))
        except pad.PadError as exc:
            return _error(exc.status, exc.code, str(exc))

    def _pad_call(self, name: str) -> Callable[[web.Request], Any]:
        """A desk route of :mod:`.pad` (the function ``name``), its PadError as an answer."""
        async def call(request: web.Request) -> web.Response:
            from . import pad

            try:
                return web.json_response(await getattr(pad, name)(self.ctx, request))
            except pad.PadError as exc:
                return _error(exc.status, exc.code, str(exc))

        return call

    async def _pad_verify(self, request: web.Request) -> web.Response:
        from . import pad

        if request.content_length is not None and request.content_length > MAX_UPLOAD + 65536:
            return _error(413, "too_large", f"a document is at most {MAX_UPLOAD} bytes")
        try:
            document, name = await pad.read_upload(request, self._sample_bytes, MAX_UPLOAD)
        except pad.PadError as exc:
            return _error(exc.status, exc.code, str(exc))
        node = getattr(self.ctx, "node", None)
        if node is None:
            return _error(503, "node_unavailable", "the light node is not running yet")
        desk = getattr(self.ctx, "desk", None)
        try:
            result = await pad.verify_document(node, document, name=name,
                                               references=getattr(desk, "references", None))
        except pad.PadError as exc:
            return _error(exc.status, exc.code, str(exc))
        finally:
            del document
        return web.json_response(result)

    def _sample_bytes(self, index: int) -> tuple[bytes, str] | None:
        sim = getattr(self.ctx, "sim", None)
        samples = [] if sim is None else sim.samples
        if not 0 <= index < len(samples):
            return None
        s = samples[index]
        return s.document, s.filename

    async def _samples(self, request: web.Request) -> web.Response:
        sim = getattr(self.ctx, "sim", None)
        samples = [] if sim is None else sim.samples
        return web.json_response({"samples": [s.to_json(i) for i, s in enumerate(samples)],
                                  "citizen_id": None if sim is None else sim.citizen_id})

    async def _sample(self, request: web.Request) -> web.Response:
        text = request.match_info["index"]
        digits = text.isascii() and text.isdigit() and len(text) < 4  # not "²" nor "١"
        got = self._sample_bytes(int(text)) if digits else None
        if got is None:
            return _error(404, "not_found", "no such sample")
        data, name = got
        return web.Response(body=data, content_type="application/octet-stream", headers={
            "Content-Disposition": f'attachment; filename="{name}"'})


def _health_ok(health: dict[str, Any]) -> bool:
    """The whole of what ``/api/health`` tells a caller without the session: every part
    ready and the audit log sound."""
    audit_doc = health.get("audit")
    audit_ok = not isinstance(audit_doc, dict) or audit_doc.get("ok") is not False
    return health.get("ready") is True and audit_ok


def _headers(resp: web.StreamResponse) -> None:
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers.setdefault("Cache-Control", "no-store")


def check_event(event: Any) -> str | None:
    """Why a UI event is refused, or None. Only the contract's types and fields pass."""
    if not isinstance(event, dict):
        return "an event is a JSON object"
    kind = event.get("type")
    if kind not in EVENT_TYPES:
        return f"unknown event type {kind!r}"
    allowed = {"type"}
    if kind in ("matter_text", "confirmation_text"):
        allowed.add("text")
        text = event.get("text")
        if not isinstance(text, str) or not 1 <= len(text) <= MAX_QR_TEXT + 64:
            return f"{kind} needs text of 1..{MAX_QR_TEXT + 64} characters"
    extra = set(event) - allowed
    if extra:
        return f"unexpected fields {sorted(extra)}"
    return None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if k != "jpeg"}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bytes | bytearray):
        return bytes(obj).hex()
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return str(obj)
