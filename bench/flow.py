"""Benchmark of the daemon and the authorization flow in the simulated hall (1 s blocks).

1. ``appliance run --sim``: from starting the process to the UI answering ``/api/health``
   (goal <= 2 s), against a bare aiohttp hello-world server process started and asked the
   same way, in the same run.
2. From "face passed" (the kiosk's view leaves ``capture`` for ``verifying``: the liveness
   check passed and the capture is sealed) to the verified receipt on the screen (the
   ``receipt`` view arriving on the UI's WebSocket), goal <= 3 s, against the block interval
   of the simulated district node measured in the same run (most of the wait is the block).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
REPO = HERE.parent

from _common import report  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
HELLO = """
import sys
from aiohttp import web
async def hello(request):
    return web.Response(text="hello")
app = web.Application()
app.router.add_get("/api/health", hello)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _time_to_serve(argv: list[str], port: int, env: dict[str, str] | None = None
                   ) -> tuple[float, subprocess.Popen[bytes]]:
    url = f"http://127.0.0.1:{port}/api/health"
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=REPO, env=env)
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                r.read()
            return time.perf_counter() - start, proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"bench: {argv} exited with {proc.returncode}") from None
            time.sleep(0.005)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench_start() -> None:
    daemon, hello = [], []
    for _ in range(RUNS):
        port = _free_port()
        t, proc = _time_to_serve([sys.executable, "-c", HELLO, str(port)], port)
        _stop(proc)
        hello.append(t)
        port = _free_port()
        t, proc = _time_to_serve([sys.executable, "-m", "appliance.cli", "run", "--sim",
                                  "--port", str(port), "--config", os.devnull], port)
        _stop(proc)
        daemon.append(t)
    d, h = statistics.median(daemon), statistics.median(hello)
    print(f"# daemon start to serving the UI, median of {RUNS} (runs: "
          + ", ".join(f"{x:.2f}" for x in daemon) + " s); goal <= 2 s: "
          + ("met" if d <= 2.0 else "NOT met"))
    report("appliance run --sim: start -> UI", d * 1000, "ms", "aiohttp hello-world start",
           h * 1000)


async def _walk(kiosk: Any, pad: Any, kiosk_url: str, pad_url: str) -> float:
    """One authorization through the two terminals' APIs (each with its session cookie);
    seconds from 'face passed' to the receipt view."""
    import aiohttp

    async with pad.get(pad_url + "/api/pad/samples") as r:
        got = await r.json()
    samples, citizen_id = got["samples"], got["citizen_id"]
    doc = {"title": "bench", "agencies": ["bench agency"], "purpose": "bench",
           "citizen_id": citizen_id,
           "licenses": [s["tx_id"] for s in samples if s["holder"] == "citizen"][:2]}
    async with pad.post(pad_url + "/api/pad/matter", json=doc) as r:
        qr = (await r.json())["qr_text"]
    passed = received = None
    async with kiosk.ws_connect(kiosk_url + "/api/ws?page=kiosk") as ws:
        async with kiosk.post(kiosk_url + "/api/event", json={"type": "start"}):
            pass
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            m = json.loads(msg.data)
            view = m.get("view") if m.get("type") in ("view", "hello") else None
            if view is None:
                continue
            screen = view["screen"]
            if screen == "scan":
                async with kiosk.post(kiosk_url + "/api/event",
                                      json={"type": "matter_text", "text": qr}):
                    pass
            elif screen == "consent":
                async with kiosk.post(kiosk_url + "/api/event", json={"type": "consent"}):
                    pass
            elif screen == "verifying" and passed is None:
                passed = time.perf_counter()
            elif screen == "receipt":
                received = time.perf_counter()
                break
            elif screen == "error":
                raise SystemExit(f"bench: the flow ended on an error: {view['error']}")
        async with kiosk.post(kiosk_url + "/api/event", json={"type": "done"}):
            pass
    assert passed is not None and received is not None
    return received - passed


async def _session(launch: str) -> Any:
    """An aiohttp session with the UI's cookie (from its launch URL) and its Origin."""
    from urllib.parse import urlsplit

    import aiohttp

    parts = urlsplit(launch)
    base = f"{parts.scheme}://{parts.netloc}"
    s = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                              headers={"Origin": base})
    async with s.get(launch) as r:
        await r.read()
    return s, base


async def _block_interval(peer: str, session: Any, blocks: int = 4) -> float:
    """Mean time between blocks of the producing district node, seen through /v1/wait."""
    from appliance import wire

    async with session.get(peer + "/v1/info") as r:
        h = wire.decode(await r.read())["height"]
    async with session.get(f"{peer}/v1/wait?height={h + 1}&timeout_ms=5000") as r:
        await r.read()
    start = time.perf_counter()
    async with session.get(f"{peer}/v1/wait?height={h + 1 + blocks}&timeout_ms=30000") as r:
        await r.read()
    return (time.perf_counter() - start) / blocks


def bench_flow() -> None:
    import re

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--sim", "--port",
                             str(port), "--config", os.devnull], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        assert proc.stderr is not None
        urls: dict[str, str] = {}
        while len(urls) < 2:
            line = proc.stderr.readline()
            if not line:
                raise SystemExit("bench: appliance run --sim printed no launch URLs")
            if m := re.search(r"hall, (kiosk|clerk PAD): open (http://\S+)", line):
                urls[m.group(1)] = m.group(2)

        async def main() -> tuple[list[float], float]:
            (kiosk, kiosk_url), (pad, pad_url) = (await _session(urls["kiosk"]),
                                                  await _session(urls["clerk PAD"]))
            try:
                while True:
                    async with kiosk.get(kiosk_url + "/api/health") as r:
                        health = await r.json()
                    async with pad.get(pad_url + "/api/health") as r:
                        ready = health["ready"] and (await r.json())["ready"]
                    if ready:
                        break
                    await asyncio.sleep(0.2)
                times = [await asyncio.wait_for(_walk(kiosk, pad, kiosk_url, pad_url), 120)
                         for _ in range(RUNS)]
                interval = await _block_interval(health["sim"]["peers"][0], kiosk)
            finally:
                await kiosk.close()
                await pad.close()
            return times, interval

        times, interval = asyncio.run(main())
    finally:
        _stop(proc)
    t = statistics.median(times)
    print(f"# face passed -> verified receipt on screen, median of {RUNS} (runs: "
          + ", ".join(f"{x:.2f}" for x in times) + " s); goal <= 3 s: "
          + ("met" if t <= 3.0 else "NOT met"))
    report("face passed -> receipt on screen", t * 1000, "ms", "block interval (same run)",
           interval * 1000)


def main() -> None:
    print("# authorization flow and daemon, simulated hall (1 s blocks), loopback")
    bench_start()
    bench_flow()


if __name__ == "__main__":
    main()
