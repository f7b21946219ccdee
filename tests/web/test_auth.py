"""The lock on the local web API (appliance/kiosk/web/auth.py and the server's guard), over
real HTTP and real WebSockets on loopback: every route of the app, enumerated from its
router, refused without the session; the launch URL's exchange (wrong keys get nothing; the
cookie HttpOnly, SameSite=Strict, Path=/, not the secret; the key gone from the URL); Origin
required for whatever changes state and for the WebSocket; ``/api/health`` telling a caller
without the session nothing but ok; preview frames only on the kiosk page's socket; the
secret's file; non-ASCII digits in a sample index."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from http.cookies import SimpleCookie
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_api import StandInRunner, authed, run
from uiclient import UiClient

from appliance import config
from appliance.kiosk.web import auth
from appliance.kiosk.web import server as web_server
from appliance.kiosk.web.server import WebServer
from appliance.service import Readiness

LOCKED_TEXT = "Open this terminal's UI from its own browser"
#: A value for each path parameter of the router; a new one must be added here.
PATH_PARAMS = {"name": "app.css", "index": "0"}
#: What each state-changing route is sent (good enough to pass the checks behind the lock).
BODIES: dict[str, dict[str, Any]] = {
    "/api/event": {"json": {"type": "start"}},
    "/api/pad/matter": {"json": {"title": "m"}},
    "/api/pad/session": {"json": {"text": "GOVSESS1:AA"}},
    "/api/pad/confirm": {"json": {"text": "GOVSESS1:AA", "method": "id_card",
                                  "pin": "246810"}},
    "/api/pad/verify": {"json": {}},
}


class Ctx:
    """A daemon whose health has everything the full document may carry (task errors,
    peer URLs, paths), so that a leak would show."""

    def __init__(self, *, mode: str = "kiosk") -> None:
        self.cfg = config.parse({"terminal": {"role": mode}}, env={})
        self.readiness = Readiness()
        self.node = None
        self.desk = None  # a PAD whose light node is not up yet: its routes say "starting"
        self.sim = SimpleNamespace(samples=[SimpleNamespace(document=b"licence", filename="a",
                                                            to_json=lambda i: {"index": i})],
                                   citizen="astronaut", citizen_id="110108198001010015")
        self.audit_ok = True

    def health(self) -> dict[str, Any]:
        return {"ready": self.readiness.ready, "parts": dict(self.readiness.parts),
                "tasks": {"node": {"state": "restarting", "restarts": 3,
                                   "last_error": "RuntimeError: http://10.0.0.5:9000 refused"}},
                "sim": {"dir": "/tmp/secret-dir", "peers": ["http://127.0.0.1:9999"]},
                "audit": {"ok": self.audit_ok, "detail": "segment 0001.jsonl"}}


async def _server(ctx: Ctx | None = None, **kw: Any) -> tuple[WebServer, Ctx]:
    ctx = ctx or Ctx()
    ctx.readiness.changed = asyncio.Event()
    srv = WebServer(ctx, "127.0.0.1", 0, **kw)
    await srv.start()
    return srv, ctx


def _routes(srv: WebServer) -> list[tuple[str, str]]:
    """(method, path) of every route of the app, its path parameters filled in."""
    assert srv.app is not None
    out = []
    for route in srv.app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        names = re.findall(r"{(\w+)[^}]*}", canonical)
        assert set(names) <= set(PATH_PARAMS), f"a new path parameter in {canonical}"
        path = re.sub(r"{(\w+)[^}]*}", lambda m: PATH_PARAMS[m.group(1)], canonical)
        out.append((route.method, path))
    return out


async def _request(s: aiohttp.ClientSession, method: str, url: str, **kw: Any
                   ) -> tuple[int, bytes, Any]:
    path = url.split("?")[0].split("/", 3)[-1]
    body = BODIES.get("/" + path, {}) if method not in ("GET", "HEAD") else {}
    async with s.request(method, url, allow_redirects=False, **body, **kw) as r:
        return r.status, await r.read(), r


KIOSK_ROUTES = {"/", "/api/health", "/api/qr", "/api/state", "/api/event", "/api/ws",
                "/api/hints", "/static/app.css"}
PAD_ROUTES = {"/", "/pad", "/api/health", "/api/qr", "/api/pad/info", "/api/pad/matter",
              "/api/pad/session", "/api/pad/confirm", "/api/pad/verify", "/api/pad/samples",
              "/api/pad/samples/0", "/static/app.css"}


@pytest.mark.parametrize("role", ["kiosk", "pad"])
def test_every_route_is_locked_without_the_session_and_open_with_it(role: str) -> None:
    async def main() -> None:
        srv, _ = await _server(Ctx(mode=role))
        if role == "kiosk":
            srv.attach_runner(StandInRunner())
        try:
            routes = _routes(srv)
            # the enumeration is the router's, and the role decides what is there
            paths = {p for _, p in routes}
            assert paths == (KIOSK_ROUTES if role == "kiosk" else PAD_ROUTES)
            assert {m for m, _ in routes} == {"GET", "HEAD", "POST"}
            # without the session (and with this server's own Origin, so that only the
            # missing cookie can be the reason)
            async with aiohttp.ClientSession(headers={"Origin": srv.url}) as s:
                for method, path in routes:
                    status, body, r = await _request(s, method, srv.url + path)
                    assert "Set-Cookie" not in r.headers, (method, path)
                    if path == "/api/health":
                        assert status == 200, (method, path)
                        if method == "GET":
                            assert json.loads(body) == {"ok": False}
                        continue
                    assert status == 401, (method, path, status, body[:200])
                    assert r.headers["Content-Security-Policy"] == web_server.CSP
                    if method == "HEAD":
                        continue
                    if path in {*srv.pages, "/"}:  # a static page that says where to go
                        text = body.decode()
                        assert LOCKED_TEXT in text and "<script" not in text
                        assert "astronaut" not in text and "starting" not in text
                    else:
                        assert json.loads(body)["error"] == "unauthorized", (method, path)
            # with it: through the lock, to the route's own answer (a PAD's desk routes say
            # they are starting: its light node and module are not there)
            async with authed(srv) as s:
                for method, path in routes:
                    status, body, _ = await _request(s, method, srv.url + path)
                    starting = status == 503 and (
                        method == "HEAD" or json.loads(body)["error"] == "starting")
                    assert status != 401 and (status < 500 or starting), (
                        method, path, status, body[:200])
        finally:
            await srv.stop()

    run(main())


def test_a_session_cookie_of_another_server_or_a_forged_one_is_refused() -> None:
    """Two servers (a kiosk and a PAD daemon on one machine) each have their own secret and
    cookie name; one's cookie opens nothing on the other; the secret itself is no cookie."""
    async def main() -> None:
        a, _ = await _server()
        b, _ = await _server()
        try:
            assert a.auth.secret != b.auth.secret and a.cookie_name != b.cookie_name
            for cookies in ({a.cookie_name: a.auth.session},  # another server's cookie
                            {b.cookie_name: a.auth.session},  # its value under our name
                            {b.cookie_name: b.auth.secret},  # the secret is not the session
                            {b.cookie_name: ""}, {b.cookie_name: "²" * 64}):
                async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                                 cookies=cookies) as s, \
                        s.get(b.url + "/api/state") as r:
                    assert r.status == 401, cookies
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                             cookies={b.cookie_name: b.auth.session}) as s, \
                    s.get(b.url + "/api/state") as r:
                assert r.status == 200  # the control
        finally:
            await a.stop()
            await b.stop()

    run(main())


def test_the_launch_url_exchanges_the_secret_for_a_strict_httponly_cookie() -> None:
    async def main() -> None:
        srv, _ = await _server()
        secret = srv.auth.secret
        try:
            assert len(secret) == 43  # 32 bytes, URL-safe base64
            async with aiohttp.ClientSession() as s:
                for wrong in ("", "x", secret[:-1], secret + "A", secret.upper(),
                              "²" * 43, secret[:-1] + "²"):
                    for page in ("/",):
                        async with s.get(srv.url + page, params={"k": wrong},
                                         allow_redirects=False) as r:
                            assert r.status == 401, wrong
                            assert "Set-Cookie" not in r.headers
                            assert LOCKED_TEXT in await r.text()
                # the key on an API route is no way in
                async with s.get(srv.url + "/api/state", params={"k": secret}) as r:
                    assert r.status == 401 and "Set-Cookie" not in r.headers
                with pytest.raises(ValueError):
                    srv.launch_url("/pad")  # a kiosk has no PAD page
                for page in ("/",):
                    async with s.get(srv.launch_url(page), allow_redirects=False) as r:
                        assert r.status == 303
                        assert r.headers["Location"] == page  # the key gone from the URL
                        assert r.headers["Referrer-Policy"] == "no-referrer"
                        (raw,) = r.headers.getall("Set-Cookie")
                    jar = SimpleCookie()
                    jar.load(raw)
                    morsel = jar[srv.cookie_name]
                    assert morsel.value == srv.auth.session and secret not in raw
                    assert morsel["httponly"] is True and morsel["path"] == "/"
                    assert morsel["samesite"] == "Strict"
                    assert not morsel["expires"] and not morsel["max-age"]  # gone with it
                    assert not morsel["domain"]  # this host only
            # the whole walk as a browser makes it: launch URL -> page, cookie kept
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
                async with s.get(srv.launch_url("/")) as r:
                    assert r.status == 200 and str(r.url) == srv.url + "/"
                    assert "Self-service terminal" in await r.text()
                async with s.get(srv.url + "/api/state") as r:
                    assert r.status == 200
        finally:
            await srv.stop()

    run(main())


def test_origin_is_required_to_change_state_even_with_the_session() -> None:
    async def main() -> None:
        srv, _ = await _server()
        runner = StandInRunner()
        srv.attach_runner(runner)
        try:
            async with authed(srv, origin=False) as s:
                for origin in (None, "http://evil.example", "null", srv.url + ".evil",
                               srv.url.replace("http:", "https:")):
                    headers = {} if origin is None else {"Origin": origin}
                    async with s.post(srv.url + "/api/event", json={"type": "start"},
                                      headers=headers) as r:
                        assert r.status == 403, origin
                        assert (await r.json())["error"] == "bad_origin"
                    form = aiohttp.FormData(default_to_multipart=True)
                    form.add_field("sample", "0")
                    async with s.post(srv.url + "/api/pad/verify", data=form,
                                      headers=headers) as r:
                        assert r.status == 403, origin
                    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                        await s.ws_connect(srv.url + "/api/ws?page=kiosk", headers=headers)
                    assert e.value.status == 403, origin
                assert runner.posted == []
                # a GET changes nothing: no Origin needed (a page load sends none)
                async with s.get(srv.url + "/api/state") as r:
                    assert r.status == 200
                # the same session with its own Origin: through
                async with s.post(srv.url + "/api/event", json={"type": "start"},
                                  headers={"Origin": srv.url}) as r:
                    assert r.status == 200
                async with s.ws_connect(srv.url + "/api/ws?page=kiosk",
                                        headers={"Origin": srv.url}) as ws:
                    assert json.loads((await ws.receive(timeout=10)).data)["type"] == "hello"
            assert runner.posted == [{"type": "start"}]
        finally:
            await srv.stop()

    run(main())


def test_a_websocket_without_the_session_is_refused() -> None:
    async def main() -> None:
        srv, _ = await _server()
        try:
            for cookies in ({}, {srv.cookie_name: "wrong"}):
                async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                                 cookies=cookies) as s:
                    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                        await s.ws_connect(srv.url + "/api/ws?page=kiosk",
                                           headers={"Origin": srv.url})
                    assert e.value.status == 401, cookies
            assert srv.clients == set()
        finally:
            await srv.stop()

    run(main())


def test_health_without_the_session_says_only_ok() -> None:
    async def main() -> None:
        srv, ctx = await _server()
        try:
            async with aiohttp.ClientSession() as s:
                async def anonymous() -> tuple[int, bytes]:
                    async with s.get(srv.url + "/api/health") as r:
                        return r.status, await r.read()

                assert await anonymous() == (200, b'{"ok": false}')  # starting
                for part in ("node", "hsm", "kiosk"):
                    ctx.readiness.set(part, "ready")
                assert await anonymous() == (200, b'{"ok": true}')
                ctx.audit_ok = False  # ready, but nothing can be audited: not ok
                assert await anonymous() == (200, b'{"ok": false}')
            async with authed(srv) as s, s.get(srv.url + "/api/health") as r:
                full = await r.json()  # the control: the session sees all of it
            assert full["tasks"]["node"]["last_error"].startswith("RuntimeError")
            assert full["sim"]["dir"] == "/tmp/secret-dir"
        finally:
            await srv.stop()

    run(main())


async def _read_until_marker(ws: aiohttp.ClientWebSocketResponse, marker: int) -> list[Any]:
    """Every message up to the view whose ``seq`` is ``marker``: frames as bytes."""
    got: list[Any] = []
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type == aiohttp.WSMsgType.BINARY:
            got.append(msg.data)
            continue
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        doc = json.loads(msg.data)
        got.append(doc)
        if doc.get("type") == "view" and doc["view"].get("seq") == marker:
            return got


def test_preview_frames_reach_the_kiosk_page_only() -> None:
    """The kiosk page's socket gets the preview frames; no other socket can be opened (the
    only page a socket may serve is the kiosk's), and a PAD terminal has no socket at all."""
    frame = b"\xff\xd8\xff\xe0preview\xff\xd9"

    async def main() -> tuple[list[Any], int]:
        srv, _ = await _server(Ctx(mode="kiosk"))
        runner = StandInRunner()
        srv.attach_runner(runner)
        try:
            async with authed(srv) as s, \
                    s.ws_connect(srv.url + "/api/ws?page=kiosk") as kiosk:
                assert json.loads((await kiosk.receive(timeout=10)).data)["type"] == "hello"
                for other in ("pad", "clerk"):
                    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                        await s.ws_connect(srv.url + f"/api/ws?page={other}")
                    assert e.value.status == 400
                while len(srv.clients) < 1:
                    await asyncio.sleep(0.01)
                view = dict(web_server.STARTING_VIEW, screen="capture", seq=1)
                await runner.queue.put({"type": "view", "view": view})
                await runner.queue.put({"type": "frame", "jpeg": frame})
                await runner.queue.put({"type": "view", "view": dict(view, seq=2)})
                return await _read_until_marker(kiosk, 2), srv.frames_relayed
        finally:
            await srv.stop()

    kiosk, relayed = run(main())
    assert frame in kiosk and relayed == 1

    async def pad() -> int:
        srv, _ = await _server(Ctx(mode="pad"))
        try:
            async with authed(srv, page="/pad") as s:
                with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                    await s.ws_connect(srv.url + "/api/ws?page=kiosk")
                return e.value.status
        finally:
            await srv.stop()

    assert run(pad()) == 404


def test_a_websocket_must_say_which_page_it_serves() -> None:
    async def main() -> None:
        srv, _ = await _server()
        try:
            async with authed(srv) as s:
                for query in ("", "?page=", "?page=admin", "?page=KIOSK"):
                    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                        await s.ws_connect(srv.url + "/api/ws" + query)
                    assert e.value.status == 400, query
        finally:
            await srv.stop()

    run(main())


@pytest.mark.parametrize("index", ["²", "١", "٠", "0²", "１", "-0", "+0", "3"])
def test_a_sample_index_is_ascii_digits_else_404(index: str) -> None:
    async def main() -> tuple[int, int]:
        srv, _ = await _server(Ctx(mode="pad"))
        try:
            async with authed(srv, page="/pad") as s:
                async with s.get(srv.url + "/api/pad/samples/" + index) as r:
                    route = r.status
                form = aiohttp.FormData(default_to_multipart=True)
                form.add_field("sample", index)
                async with s.post(srv.url + "/api/pad/verify", data=form) as r:
                    upload = r.status
                async with s.get(srv.url + "/api/pad/samples/0") as r:
                    assert r.status == 200 and await r.read() == b"licence"  # the control
                return route, upload
        finally:
            await srv.stop()

    assert run(main()) == (404, 404)


def test_the_secret_file_is_the_daemons_own_and_goes_with_the_server(tmp_path: Path) -> None:
    path = tmp_path / "ui-secret"
    old = os.umask(0)  # the file is 0600 whatever the umask says
    try:
        async def main() -> None:
            srv, _ = await _server(secret_file=path)
            try:
                st = os.stat(path)
                assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
                assert path.read_text() == srv.auth.secret + "\n"
                assert [p.name for p in tmp_path.iterdir()] == ["ui-secret"]  # no temp left
                async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)
                                                 ) as s, \
                        s.get(f"{srv.url}/?k={path.read_text().strip()}") as r:
                    assert r.status == 200
                    assert srv.cookie_name in {c.key for c in s.cookie_jar}
            finally:
                await srv.stop()
            assert not path.exists()  # the secret dies with the server

        run(main())
    finally:
        os.umask(old)
    # a newer daemon's file is not removed by an older one stopping
    path.write_text("another\n")
    auth.remove_secret(path, "mine")
    assert path.read_text() == "another\n"


def test_stderr_is_journal_compares_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "log", "w") as f:
        st = os.fstat(f.fileno())
        fd = f.fileno()
        assert auth.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fd)
        for value in ("", f"{st.st_dev}:{st.st_ino + 1}", f"{st.st_dev}", "²:1", "a:b",
                      f"{st.st_dev}:{st.st_ino}:x"):
            assert not auth.stderr_is_journal({"JOURNAL_STREAM": value}, fd), value
        assert not auth.stderr_is_journal({}, fd)


_AUTH = auth.UiAuth()


@settings(max_examples=300)
@given(st.one_of(st.text(), st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                             "0123456789-_", min_size=43, max_size=43)))
def test_any_presented_text_is_checked_without_raising(text: str) -> None:
    """Keys and cookies come from any local process: any text (lone surrogates, non-ASCII,
    the right length and alphabet) is a plain no, never an exception."""
    assert _AUTH.secret_ok(text) is (text == _AUTH.secret)
    assert _AUTH.session_ok(text) is (text == _AUTH.session)


def test_the_auth_object_never_prints_its_secret() -> None:
    a = auth.UiAuth()
    assert a.secret not in repr(a) and a.secret not in str(a) and a.session not in repr(a)
    assert a.secret_ok(a.secret) and not a.secret_ok(a.session) and not a.secret_ok(None)
    assert a.session_ok(a.session) and not a.session_ok(a.secret) and not a.session_ok(None)
    assert auth.UiAuth().secret != a.secret


# -- the daemon: where the launch URL is written, and where it is not ----------------------------


def _daemon(tmp_path: Path, stderr: Any, env_extra: dict[str, str] | None = None
            ) -> tuple[subprocess.Popen[str], Path]:
    state = tmp_path / "state"
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'state_dir = "{state}"\n[node]\ndiscover = false\n'
                   '[hsm]\ndevice = "/nonexistent/gmcrypto0"\n[log]\nlevel = "info"\n')
    env = dict(os.environ)
    env.pop("APPLIANCE_CONFIG", None)
    env.pop("JOURNAL_STREAM", None)
    env.update(env_extra or {})
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--config", str(cfg),
                             "--port", "0"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=stderr, text=True, env=env, cwd=tmp_path)
    return proc, state


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err or ""


def test_the_daemon_prints_and_logs_its_launch_url_once(tmp_path: Path) -> None:
    proc, state = _daemon(tmp_path, subprocess.PIPE)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while not any("UI launch URL" in x for x in lines) and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
        secret = (state / "ui-secret").read_text().strip()
        assert stat.S_IMODE(os.stat(state / "ui-secret").st_mode) == 0o600
        base = re.search(r"appliance: kiosk UI on (http://\S+)", "".join(lines)).group(1)
        launch = f"{base}/?k={secret}"
        # the operator's terminal: one line to open, one log line naming it the launch URL
        assert f"appliance: open {launch}\n" in lines, lines
        assert f"INFO appliance.service: UI launch URL (the terminal's browser opens it): " \
               f"{launch}\n" in lines, lines
        ui = UiClient(launch)  # what it printed works as it is
        assert "tasks" in ui.get("/api/health")
    finally:
        err = "".join(lines) + _stop(proc)
    assert [x for x in err.splitlines() if secret in x] == [
        f"appliance: open {launch}",
        f"INFO appliance.service: UI launch URL (the terminal's browser opens it): {launch}"]
    assert not (state / "ui-secret").exists()  # gone with the daemon


def test_the_key_stays_out_of_the_journal(tmp_path: Path) -> None:
    """With stderr going to the journal (``JOURNAL_STREAM`` naming it, as systemd sets it) the
    launch URL is printed without the key: the journal is read by more than this user."""
    log = tmp_path / "journal"
    with open(log, "w") as f:
        st = os.fstat(f.fileno())
        proc, state = _daemon(tmp_path, f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    try:
        deadline = time.monotonic() + 60
        while "UI launch URL" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        secret = (state / "ui-secret").read_text().strip()
        text = log.read_text()
        assert secret not in text
        assert f"?k=<the key in {state / 'ui-secret'}>" in text
        base = re.search(r"appliance: kiosk UI on (http://\S+)", text).group(1)
        UiClient.from_state(base, state)  # the file has it, for the launcher
    finally:
        _stop(proc)
    assert secret not in log.read_text()
