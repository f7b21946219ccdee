"""IdentityClient against a hostile or broken server (real HTTP on loopback).

The server here is a small aiohttp app written for these tests: it answers what each test
tells it to (oversize bodies, garbage, 4xx/5xx, silence, a reset), so that every failure path
of the client is exercised; the honest double is tested in tests/hil/test_identity_service.py.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from aiohttp import web

from appliance import wire
from appliance.gm import sm2
from appliance.kiosk.identity import (
    MAX_ATTESTATION_BYTES,
    AttestationInvalid,
    IdentityClient,
    IdentityRejected,
    IdentityUnavailable,
    Request,
)

pytestmark = pytest.mark.timeout(60)

PRIV, PUB = sm2.generate_keypair()
NAME = "svc"
SESSION = os.urandom(16)
SUBJECT = os.urandom(32)
DIGEST = os.urandom(32)
TERMINAL = os.urandom(32)
TARGET = os.urandom(32)
ENROLLMENT = os.urandom(32)
REQUEST = Request(SESSION, SUBJECT, DIGEST, TERMINAL, TARGET)
ENVELOPE = {"session": SESSION, "key": b"k" * 100, "iv": b"i" * 16, "ciphertext": b"c" * 32,
            "mac": b"m" * 32}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def attestation(request_body: dict) -> bytes:
    body = {"session": request_body["envelope"]["session"],
            "capture_digest": request_body["capture_digest"],
            "subject": request_body["subject"], "terminal": request_body["terminal"],
            "action": request_body["action"], "target": request_body["target"],
            "result": "match", "score": 800, "issued_at": now_ms(), "service": NAME,
            "enrollment": ENROLLMENT}
    return wire.encode({"body": body, "alg": "sm2", "public_key": PUB,
                        "signature": sm2.sign(PRIV, wire.encode(body))})


class Server:
    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.requests: list[dict] = []
        self.sent = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert request.content_type == "application/cbor"
        obj = wire.decode(await request.read())  # canonical CBOR or this raises
        self.requests.append(obj)
        return await self.behaviour(self, request, obj)

    async def __aenter__(self) -> str:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/v1/attest", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}/"

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()


async def call(behaviour, *, timeout_s: float = 10.0, envelope=ENVELOPE):
    server = Server(behaviour)
    async with server as url, IdentityClient(url, service_public_key=PUB,
                                             service_name=NAME) as client:
        result = await client.attest(envelope, REQUEST, now_ms=now_ms(), timeout_s=timeout_s)
    return result, server


async def ok(server, request, obj):
    return web.Response(body=attestation(obj), content_type="application/cbor")


def test_sends_the_contract_body_and_verifies_the_answer():
    a, server = asyncio.run(call(ok))
    assert (a.result, a.score) == ("match", 800)
    assert server.requests == [{"envelope": ENVELOPE, "subject": SUBJECT,
                                "capture_digest": DIGEST, "terminal": TERMINAL,
                                "action": "authorize", "target": TARGET}]


def test_envelope_of_another_session_is_not_sent():
    with pytest.raises(ValueError):
        asyncio.run(call(ok, envelope={**ENVELOPE, "session": bytes(16)}))


async def huge_chunked(server, request, obj):
    response = web.StreamResponse()
    response.content_type = "application/cbor"
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        for _ in range(1024):  # 64 MiB offered
            await response.write(b"\x00" * 65536)
            server.sent += 65536
    except (ConnectionError, RuntimeError):
        pass
    SENT.append(server.sent)
    return response


SENT: list[int] = []


def test_oversize_answer_stops_reading():
    with pytest.raises(AttestationInvalid) as info:
        asyncio.run(call(huge_chunked))
    assert info.value.reason == "oversize"
    assert SENT and SENT[-1] < 64 * 1024 * 1024  # the client hung up before the end


async def declared_huge(server, request, obj):
    response = web.StreamResponse(headers={"Content-Length": str(50 * 1024 * 1024)})
    response.content_type = "application/cbor"
    await response.prepare(request)
    try:
        await response.write(b"\x00" * 1024)
    except ConnectionError:
        pass
    return response


def test_declared_oversize_refused_before_reading():
    with pytest.raises(AttestationInvalid) as info:
        asyncio.run(call(declared_huge))
    assert info.value.reason == "oversize" and MAX_ATTESTATION_BYTES < 50 * 1024 * 1024


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_unavailable(status):
    async def fail(server, request, obj):
        return web.Response(status=status, body=wire.encode({"error": "x", "message": "y"}))
    with pytest.raises(IdentityUnavailable) as info:
        asyncio.run(call(fail))
    assert info.value.status == status and info.value.code == "unavailable"


def test_4xx_carries_the_service_code():
    async def reject(server, request, obj):
        return web.Response(status=404, body=wire.encode(
            {"error": "unknown_subject", "message": "no reference"}))
    with pytest.raises(IdentityRejected) as info:
        asyncio.run(call(reject))
    assert (info.value.code, info.value.status, info.value.message) == (
        "unknown_subject", 404, "no reference")


@pytest.mark.parametrize("body", [b"\xff garbage", wire.encode([1]),
                                  wire.encode({"error": "Bad Code!"}), b""])
def test_4xx_with_an_unusable_body(body):
    async def reject(server, request, obj):
        return web.Response(status=400, body=body)
    with pytest.raises(IdentityRejected) as info:
        asyncio.run(call(reject))
    assert info.value.code == "http_400"


def test_garbage_200_is_invalid():
    async def garbage(server, request, obj):
        return web.Response(body=b"\xff\x00 not cbor")
    with pytest.raises(AttestationInvalid) as info:
        asyncio.run(call(garbage))
    assert info.value.reason == "not_canonical"


def test_silence_is_a_timeout():
    async def silent(server, request, obj):
        await asyncio.sleep(30)
        return web.Response()
    # (had the client waited the 30 s out, it would get an empty 200: not_canonical)
    with pytest.raises(IdentityUnavailable, match="no answer"):
        asyncio.run(call(silent, timeout_s=0.5))


def test_reset_is_unavailable():
    async def reset(server, request, obj):
        request.transport.close()
        await asyncio.sleep(1)
        return web.Response()
    with pytest.raises(IdentityUnavailable):
        asyncio.run(call(reset))


def test_answer_for_another_request_is_invalid():
    async def replay(server, request, obj):
        other = dict(obj, subject=os.urandom(32))
        return web.Response(body=attestation(other), content_type="application/cbor")
    with pytest.raises(AttestationInvalid) as info:
        asyncio.run(call(replay))
    assert info.value.reason == "subject"
