"""Sync against the FISCO-shaped double on loopback (in this event loop): every misbehaviour
alone is rejected with its peer banned and the store left as it was; beside an honest node
the client reaches the honest tip; inclusions with the leaf's position checked, and a receipt
served as another reading of its hashed bytes refused (the honest node's reading shown).

The double shares this event loop, so its signatures are made before any run (the fixture),
and runs that should reach the tip have generous timeouts: only the ``slow`` case has a tight
rate grace, because that is what it tests. A run whose only node is banned ends when the sync
has seen no progress for ``ALONE_STALL_S``; the ban comes within one range after the anchor."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest

from appliance.gm import sm3
from appliance.node.fisco.anchor import FiscoAnchor, decode_anchor
from appliance.node.fisco.client import FiscoNodeSync, Limits, fetch_inclusion
from appliance.node.fisco.sync import FiscoSyncConfig
from appliance.node.store import HeaderStore
from hil.fisco_node import FiscoChain, FiscoNode

H = 60  # the misbehaviour starts inside the first range (1..100): nothing may be stored
QUIET = lambda line: None  # noqa: E731


ALONE_STALL_S = 2.0
HONEST_STALL_S = 60.0
#: the slow node must be caught well within ALONE_STALL_S (the default grace is 2 s)
SLOW_LIMITS = Limits(rate_grace_s=0.3)


@pytest.fixture(scope="module")
def chain() -> FiscoChain:
    c = FiscoChain(150, 4, seed="sync-test")
    # Sign every block the doubles will serve (SM2 signing is the slow part of the double,
    # done on first serve in the event loop the client shares): the honest chain and the
    # re-signed forks of wrong-link and set-hijack land in the chain's signature cache.
    for mode in (None, f"wrong-link@{H}", f"set-hijack@{H}"):
        node = FiscoNode(c, misbehave=mode, log=QUIET)
        for n in range(1, c.tip + 1):
            node._view(n)
    return c


def _anchor(chain: FiscoChain) -> FiscoAnchor:
    return decode_anchor(json.dumps(chain.anchor(0)).encode())


async def _sync(chain: FiscoChain, store: HeaderStore, modes: list[str | None],
                stall_s: float = HONEST_STALL_S, limits: Limits | None = None,
                **config) -> tuple:
    nodes = [FiscoNode(chain, misbehave=m, log=QUIET) for m in modes]
    urls = [await n.start() for n in nodes]
    try:
        ns = FiscoNodeSync(store, _anchor(chain),
                           FiscoSyncConfig(ban_base_ms=60_000, ban_max_ms=60_000, **config),
                           limits)
        for u in urls:
            ns.add_peer(u)
        result = await ns.run(stall_timeout_s=stall_s)
        return result, urls
    finally:
        for n in nodes:
            await n.stop()


def _stored(store: HeaderStore) -> list[tuple[int, bytes]]:
    tip = store.tip().height
    return [(h, store.block_id(h)) for h in range(0, tip + 1)]


@pytest.mark.parametrize("mode,reason", [
    ("forge-commit", "signature"), ("wrong-link", "parent"), ("set-hijack", "sealer_change"),
    ("empty-forged", "signature"), ("withhold", "withhold"), ("garbage", "malformed_utf8"),
    ("oversize", "oversize"), ("slow", "slow"),
])
def test_each_misbehaviour_alone_is_rejected(chain, tmp_path, mode, reason) -> None:
    store = HeaderStore.open(tmp_path / "h.sqlite")
    limits = SLOW_LIMITS if mode == "slow" else None
    result, (url,) = asyncio.run(_sync(chain, store, [f"{mode}@{H}"], ALONE_STALL_S, limits))
    assert not result.ok
    peer = result.peers[0]
    assert peer["state"] == "banned" and peer["last_reason"] == reason, peer
    # nothing from the misbehaving range was stored: only the anchor block
    assert _stored(store) == [(0, chain.hashes[0])]
    if mode == "set-hijack":
        assert result.reason == "sealer_change"
        (alarm,) = store.alarms()
        assert alarm.kind == "sealer_change"
        for key in chain.keys:  # the trusted list is named ...
            assert key[1].hex() in alarm.detail
        hijacker = FiscoNode(chain, misbehave=f"set-hijack@{H}", log=QUIET)._hijack
        for key in hijacker:  # ... and the one the block names
            assert key[1].hex() in alarm.detail
    else:
        assert result.reason == "no_valid_chain" and store.alarms() == []
    store.close()


def test_the_forged_empty_block_is_empty_and_rejected(chain, tmp_path) -> None:
    node = FiscoNode(chain, misbehave=f"empty-forged@{H}", log=QUIET)
    block = node._block_json(H, False, True)
    assert block["transactions"] == [] and block["txsRoot"] == "0x" + "00" * 32
    assert node.tip == H
    store = HeaderStore.open(tmp_path / "h.sqlite")
    result, _ = asyncio.run(_sync(chain, store, [f"empty-forged@{H}"], ALONE_STALL_S,
                                  strict=True))
    assert result.peers[0]["last_reason"] == "signature" and store.tip().height == 0
    store.close()


@pytest.mark.parametrize("mode", ["forge-commit", "wrong-link", "set-hijack", "empty-forged",
                                  "withhold", "garbage"])
def test_beside_an_honest_node_the_honest_tip_is_reached(chain, tmp_path, mode) -> None:
    store = HeaderStore.open(tmp_path / "h.sqlite")
    result, urls = asyncio.run(_sync(chain, store, [None, f"{mode}@{H}"], batch=20))
    assert result.ok and result.height == chain.tip
    assert _stored(store) == list(enumerate(chain.hashes))
    assert store.alarms() == []
    store.close()


def test_resume_strict_and_until_height(chain, tmp_path) -> None:
    store = HeaderStore.open(tmp_path / "h.sqlite")
    result, _ = asyncio.run(_sync(chain, store, [None], until_height=37, batch=7))
    assert result.ok and result.height == 37 and store.tip().height == 37
    result, _ = asyncio.run(_sync(chain, store, [None], strict=True))
    assert result.ok and result.height == chain.tip and result.appended == chain.tip - 37
    assert _stored(store) == list(enumerate(chain.hashes))
    store.close()
    other = FiscoChain(3, 4, seed="another")
    with pytest.raises(Exception, match="another anchor"):
        FiscoNodeSync(HeaderStore.open(tmp_path / "h.sqlite"), _anchor(other))


async def _inclusion_from(chain: FiscoChain, store: HeaderStore, modes: list[str | None],
                          tx: bytes):
    """(the doubles' URLs, fetch_inclusion's answer), the doubles asked in order."""
    nodes = [FiscoNode(chain, misbehave=m, log=QUIET) for m in modes]
    urls = [await n.start() for n in nodes]
    try:
        return urls, await fetch_inclusion(store, _anchor(chain), urls, tx)
    finally:
        for n in nodes:
            await n.stop()


async def _inclusion(chain: FiscoChain, store: HeaderStore, mode: str | None, tx: bytes):
    return (await _inclusion_from(chain, store, [mode], tx))[1]


def test_inclusions_and_their_positions(chain, tmp_path) -> None:
    store = HeaderStore.open(tmp_path / "h.sqlite")
    asyncio.run(_sync(chain, store, [None]))
    for n in (1, 2, 5, 149):  # one tx (a one-leaf tree) and two txs, both positions
        for i, tx in enumerate(chain.blocks[n].tx_hashes):
            inc, why = asyncio.run(_inclusion(chain, store, None, tx))
            assert inc is not None, why
            assert (inc.number, inc.index, inc.tree_size) == (n, i, len(chain.blocks[n].tx_hashes))
            assert inc.block_hash == chain.hashes[n]
            assert inc.receipt.hash == chain.blocks[n].receipts[i].hash
    for mode, tx, reason in (
            (f"bad-proof@{H}", chain.blocks[62].tx_hashes[1], "proof"),
            (f"bad-proof@{H}", chain.blocks[61].tx_hashes[0], "proof"),
            (f"swap-receipt@{H}", chain.blocks[62].tx_hashes[0], "receipt_proof"),
            (f"swap-receipt@{H}", chain.blocks[62].tx_hashes[1], "receipt_proof")):
        inc, why = asyncio.run(_inclusion(chain, store, mode, tx))
        assert inc is None and list(why.values()) == [reason], (mode, why)
    inc, why = asyncio.run(_inclusion(chain, store, None, bytes(32)))
    assert inc is None and list(why.values()) == ["not_found"]
    store.close()


def _receipt_preimage(j: dict) -> bytes:
    """The receipt hash's preimage of a served receipt (FISCO's layout, written here)."""
    out = [struct.pack(">i", j["version"]), j["gasUsed"].encode(),
           j["contractAddress"].removeprefix("0x").encode(), struct.pack(">i", j["status"]),
           bytes.fromhex(j["output"][2:])]
    for log in j["logEntries"]:
        out += [log["address"].encode(), *(bytes.fromhex(t[2:]) for t in log["topics"]),
                bytes.fromhex(log["data"][2:])]
    return b"".join([*out, struct.pack(">q", j["blockNumber"])])


def test_a_shifted_receipt_reading_is_refused_and_the_honest_one_shown(chain, tmp_path) -> None:
    store = HeaderStore.open(tmp_path / "h.sqlite")
    asyncio.run(_sync(chain, store, [None]))
    liar = FiscoNode(chain, misbehave=f"shift-receipt@{H}", log=QUIET)
    honest = FiscoNode(chain, log=QUIET)
    # a deployment, a call with a log, a reverted call: each served as another reading of
    # its own hashed bytes, with its true hash and proof, every field value refused but one
    for n, i in ((61, 0), (62, 0), (62, 1), (65, 1)):
        tx = chain.blocks[n].tx_hashes[i]
        params = ["group0", "", "0x" + tx.hex(), True]
        true, served = (x._call("getTransactionReceipt", params)[0] for x in (honest, liar))
        assert served != true and served["txReceiptProof"] == true["txReceiptProof"]
        assert sm3.digest(_receipt_preimage(served)) == sm3.digest(_receipt_preimage(true)) \
            == chain.blocks[n].receipts[i].hash
        assert served["status"] not in (0, 16)
        inc, why = asyncio.run(_inclusion(chain, store, f"shift-receipt@{H}", tx))
        assert inc is None and list(why.values()) == ["malformed_receipt_status"], why
    # beside an honest node the honest reading is the one shown; the liar's is named
    deploy = chain.blocks[62].receipts[0]
    for n, i in ((62, 0), (62, 1)):
        (liar_url, _), (inc, why) = asyncio.run(_inclusion_from(
            chain, store, [f"shift-receipt@{H}", None], chain.blocks[n].tx_hashes[i]))
        assert why == {liar_url: "malformed_receipt_status"}
        assert inc is not None and inc.receipt.hash == chain.blocks[n].receipts[i].hash
        shown = inc.to_json()["receipt"]
        if i == 0:  # the deployment: every field fixed by the hash
            assert shown["status"] == 0 and shown["gas_used"] == deploy.gas
            assert shown["contract_address"] == "0x" + deploy.address
            assert shown["output"] == "0x" and shown["logs"] == []
        else:  # the call with a log: the output/log split is the node's word
            assert shown["contract_address"] == "" and "output" not in shown
            assert len(shown["unverified"]["logs"]) == 1
    store.close()


def test_inclusions_below_the_store_window_through_checkpoints(chain, tmp_path) -> None:
    store = HeaderStore.open(tmp_path / "h.sqlite", window=20, checkpoint_every=32)
    asyncio.run(_sync(chain, store, [None]))
    assert store.block_id(5) is None and store.block_id(64) == chain.hashes[64]
    for n in (1, 5, 62, 64, 95):  # between checkpoints, next to one, on one
        for i, tx in enumerate(chain.blocks[n].tx_hashes):
            inc, why = asyncio.run(_inclusion(chain, store, None, tx))
            assert inc is not None, why
            assert (inc.number, inc.index, inc.block_hash) == (n, i, chain.hashes[n])
    # a node whose blocks between the checkpoints do not link is not believed
    for mode, n in ((f"wrong-link@{H}", 62), (f"set-hijack@{H}", 62)):
        inc, why = asyncio.run(_inclusion(chain, store, mode, chain.blocks[n].tx_hashes[0]))
        assert inc is None and list(why.values()) == ["parent"], why
    store.close()
