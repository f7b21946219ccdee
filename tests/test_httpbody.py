"""appliance.httpbody.read_capped over real HTTP on loopback, both sides of aiohttp: a body
at the limit is read whole; one that declares more is refused before any of it is read; a
chunked one that streams past the limit is dropped at the first chunk over (the sender is
still sending when the reader gives up)."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from appliance.httpbody import read_capped

LIMIT = 100_000


async def serve(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/", handler)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/"


def test_server_side() -> None:
    seen: list[int | None] = []

    async def handler(request: web.Request) -> web.Response:
        body = await read_capped(request, LIMIT, chunk=4096)
        seen.append(None if body is None else len(body))
        resp = web.Response(status=413 if body is None else 200)
        if body is None:
            resp.force_close()  # do not drain what the client still sends
        return resp

    async def endless():
        for _ in range(200):  # 13 MB, far over the limit
            yield b"x" * 65536

    async def main() -> None:
        runner, url = await serve(handler)
        try:
            async with aiohttp.ClientSession() as s:
                async with s.post(url, data=b"x" * LIMIT) as r:
                    assert r.status == 200
                async with s.post(url, data=b"x" * (LIMIT + 1)) as r:
                    assert r.status == 413
                try:
                    async with s.post(url, data=endless()) as r:
                        assert r.status == 413
                except aiohttp.ClientError:
                    pass  # the server may close while the client still sends
        finally:
            await runner.cleanup()

    asyncio.run(main())
    assert seen == [LIMIT, None, None]


def test_client_side() -> None:
    sent: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        if request.query.get("chunked"):
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            n = 0
            try:
                while n < size:
                    await resp.write(b"y" * 65536)
                    n += 65536
                    sent.append(n)
            except (ConnectionError, RuntimeError):
                pass
            return resp
        return web.Response(body=b"y" * size)

    async def main() -> list[int | None]:
        runner, url = await serve(handler)
        out: list[int | None] = []
        try:
            async with aiohttp.ClientSession() as s:
                for q in ("size=100000", "size=100001", "size=500000000&chunked=1"):
                    async with s.get(url + "?" + q) as r:
                        body = await read_capped(r, LIMIT)
                        out.append(None if body is None else len(body))
        finally:
            await runner.cleanup()
        return out

    assert asyncio.run(main()) == [LIMIT, None, None]
    assert max(sent) < 500_000_000  # the reader gave up long before the end
