"""JSON-RPC over real HTTP on loopback, both ends: the client's transport rules (the native
light node's ``Limits`` and body reader) against the FISCO double, and the double's reading of
request bodies that arrive in pieces or too large."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from appliance.node.fisco.anchor import decode_anchor
from appliance.node.fisco.client import FiscoNodeSync, Limits, _Fail, post
from appliance.node.fisco.sync import FiscoSyncConfig
from appliance.node.store import HeaderStore
from hil.fisco_node import MAX_REQUEST, FiscoChain, FiscoNode

QUIET = lambda line: None  # noqa: E731
NUMBER = b'{"jsonrpc":"2.0","id":7,"method":"getBlockNumber","params":["group0",""]}'
#: A short grace: an answer that came only after the node's think time (longer than this)
#: would fail it if the rate were counted from sending the request.
TIGHT = Limits(rate_grace_s=0.3, idle_timeout_s=10.0, headers_timeout_s=20.0,
               total_timeout_s=30.0)
THINK_S = 1.0


@pytest.fixture(scope="module")
def chain() -> FiscoChain:
    c = FiscoChain(21, 4, seed="http")
    for n in range(1, c.tip + 1):  # sign before the clock matters
        c.sign(c.hashes[n], n, c.keys)
    return c


def test_a_node_that_thinks_before_a_small_answer_is_not_slow(chain, tmp_path) -> None:
    """Every answer (40 bytes for getBlockNumber) comes after THINK_S > the grace: the rate
    clock starts with the headers, so the node is not banned and the tip is reached."""

    async def main():
        node = FiscoNode(chain, think_s=THINK_S, log=QUIET)
        url = await node.start()
        try:
            ns = FiscoNodeSync(HeaderStore.open(tmp_path / "h.sqlite"),
                               decode_anchor(json.dumps(chain.anchor(0)).encode()),
                               FiscoSyncConfig(batch=10), TIGHT)
            ns.add_peer(url)
            return await ns.run(stall_timeout_s=60)
        finally:
            await node.stop()

    result = asyncio.run(main())
    assert result.ok and result.height == chain.tip, result.message
    assert result.peers[0]["bans"] == 0


@pytest.mark.parametrize("think_s", [0.0, THINK_S])
def test_a_trickle_is_still_slow(chain, think_s) -> None:
    async def main():
        node = FiscoNode(chain, misbehave="slow", think_s=think_s, log=QUIET)
        url = await node.start()
        try:
            async with aiohttp.ClientSession() as s:
                with pytest.raises(_Fail) as got:
                    await post(s, url, NUMBER, 4096, TIGHT)
                return got.value.reason
        finally:
            await node.stop()

    assert asyncio.run(main()) == "slow"


async def _ask(data, node: FiscoNode) -> dict:
    url = await node.start()
    try:
        async with aiohttp.ClientSession() as s, s.post(url, data=data) as r:
            assert r.status == 200
            return await r.json()
    finally:
        await node.stop()


def test_the_double_reads_a_request_that_arrives_in_pieces(chain) -> None:
    async def pieces():
        for i in range(0, len(NUMBER), 20):
            yield NUMBER[i:i + 20]
            await asyncio.sleep(0.05)  # each piece its own chunk on the wire

    got = asyncio.run(_ask(pieces(), FiscoNode(chain, log=QUIET)))
    assert got == {"jsonrpc": "2.0", "id": 7, "result": chain.tip}


def test_the_double_answers_an_oversize_request_with_a_parse_error(chain) -> None:
    pad = b" " * (MAX_REQUEST - len(NUMBER))
    got = asyncio.run(_ask(NUMBER + pad, FiscoNode(chain, log=QUIET)))  # at the limit
    assert got["result"] == chain.tip
    got = asyncio.run(_ask(NUMBER + pad + b" ", FiscoNode(chain, log=QUIET)))
    assert got["error"]["code"] == -32700 and "result" not in got

    async def endless():
        yield NUMBER  # valid JSON so far: the double must not answer it
        for _ in range(40):  # 2.5 MiB, chunked: no length to refuse it by
            yield b" " * 65536
            await asyncio.sleep(0)

    try:
        got = asyncio.run(_ask(endless(), FiscoNode(chain, log=QUIET)))
    except aiohttp.ClientError:
        pass  # the double may close while the client still sends
    else:
        assert got["error"]["code"] == -32700
