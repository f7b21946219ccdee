"""Transactions end to end: ``NodeSync.submit_tx`` / ``wait_for_inclusion`` / ``get_inclusion``
/ ``lookup`` and ``appliance node tx|lookup`` against district-node doubles on loopback.

One chain is generated per module (300 blocks, one evidence.deposit each, a commit on every
block). The ``producer`` double serves its own copy and appends a block every 250 ms (empty ones
too, so the chain keeps growing); transactions are posted to it. A double that must see the
same growing chain as another one is started on the same directory with production off (one
writer, any number of readers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from appliance.gm import sm3
from appliance.node import client as client_mod
from appliance.node import signatures, sync
from appliance.node.client import NodeSync, NoPeers, NotVerifiable, TxRejected
from appliance.node.model import SignedTx
from appliance.node.store import HeaderStore
from appliance.node.tx import SoftwareSigner, build_tx
from hil.chain import Chain, ChainParams, generate
from hil.district_node import DistrictNodeProcess

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
BLOCKS = 300
CHAIN_ID = "hil-devnet"


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chain") / "chain"
    # the blocks end now: the issuers' enrollments (block 0) are valid for what is sent now
    start = int(time.time() * 1000) - BLOCKS * 1000
    generate(out, ChainParams(seed="tx-e2e", validators=4, start_ms=start), BLOCKS,
             txs_per_block=1)
    return out


@pytest.fixture(scope="module")
def anchor(chain_dir: Path) -> bytes:
    return (chain_dir / "trust.cbor").read_bytes()


def copy_chain(chain_dir: Path, where: Path) -> Path:
    dst = where / "chain"
    shutil.copytree(chain_dir, dst)
    return dst


@pytest.fixture(scope="module")
def producer(chain_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(node, its chain directory): honest, a block every 250 ms."""
    where = copy_chain(chain_dir, tmp_path_factory.mktemp("producer"))
    with DistrictNodeProcess(where, block_interval_ms=250, empty_blocks=True) as n:
        yield n, where


@pytest.fixture(scope="module")
def issuer(chain_dir: Path) -> SoftwareSigner:
    with Chain.open(chain_dir, readonly=True) as c:
        key = c.keys("issuer")[0]
        ENROLLMENTS[key.public_key] = c.enrollment_of(key.public_key, "issuer")
    return SoftwareSigner(key.alg, key.private_key, key.public_key)


ENROLLMENTS: dict[bytes, bytes] = {}  # an issuer's public key -> its device.enroll


def generated_tx(chain_dir: Path, height: int) -> tuple[bytes, bytes]:
    """(tx_id, data.digest) of the generated transaction at ``height``."""
    from appliance import wire

    with Chain.open(chain_dir, readonly=True) as c:
        for tx_id in c.tx_ids(height):  # block 0 also holds the issuers' enrollments
            body = wire.decode(c.tx(tx_id)[0])["body"]
            if body["type"] == "evidence.deposit":
                return tx_id, body["data"]["digest"]
    raise AssertionError(f"no deposit at height {height}")


def deposit(signer: Any, digest: bytes, **data: Any) -> SignedTx:
    """An evidence.deposit naming the issuer's enrollment (a stranger names the first one)."""
    enrollment = ENROLLMENTS.get(signer.public_key, next(iter(ENROLLMENTS.values()), None))
    fields = {"digest": digest, "kind": "business-licence", "enrollment": enrollment, **data}
    return build_tx(signer, chain_id=CHAIN_ID, type="evidence.deposit",
                    data={k: v for k, v in fields.items() if v is not None},
                    timestamp_ms=int(time.time() * 1000))


def fresh_digest(label: str) -> bytes:
    return sm3.digest(f"{label} {time.time_ns()}".encode())


@contextlib.asynccontextmanager
async def running(store: HeaderStore, anchor: bytes, peers: list[str],
                  **config: Any) -> AsyncIterator[NodeSync]:
    """A NodeSync with its run() going in the background."""
    ns = NodeSync(store, anchor, sync.SyncConfig(**config))
    for url in peers:
        ns.add_peer(url)
    stop = asyncio.Event()
    task = asyncio.create_task(ns.run(stop_at_tip=False, stall_timeout_s=None, stop=stop))
    try:
        yield ns
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def run(coro: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def in_a_block(where: Path, tx_id: bytes, timeout_s: float = 15) -> int:
    """The height of ``tx_id`` once the double has put it in a block (read from its chain)."""
    deadline = time.monotonic() + timeout_s
    with Chain.open(where, readonly=True) as c:
        while True:
            with contextlib.suppress(KeyError):
                return c.tx(tx_id)[1]
            assert time.monotonic() < deadline, "the double made no block with it"
            await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- submit, wait, verify, look up ----------------------------------------------------------


def test_submit_wait_and_lookup(producer: tuple[DistrictNodeProcess, Path], anchor: bytes,
                                issuer: SoftwareSigner, tmp_path: Path) -> None:
    node, where = producer
    digest = fresh_digest("a business licence")
    tx = deposit(issuer, digest)

    async def scenario() -> None:
        with HeaderStore.open(tmp_path / "headers.sqlite") as store:
            async with running(store, anchor, [node.url]) as ns:
                tx_id = await ns.submit_tx(tx, timeout_s=15)
                assert tx_id == tx.tx_id
                inc = await ns.wait_for_inclusion(tx_id, timeout_s=20)
                assert (inc.tx, inc.tx_id) == (tx, tx_id)
                with Chain.open(where, readonly=True) as c:
                    _, height, index = c.tx(tx_id)
                    assert (inc.height, inc.leaf_index) == (height, index)
                    assert inc.block_id == c.block_id(height)
                assert store.block_id(inc.height) == inc.block_id  # the verified store has it
                # Submitting it again: the node says duplicate, which is "submitted".
                assert await ns.submit_tx(tx, timeout_s=15) == tx_id
                # Its digest finds it, verified.
                assert await ns.lookup(digest, timeout_s=15) == [inc]
                result = await ns.lookup_detailed(digest, timeout_s=15)
                assert result.peers == (node.url,) and result.dropped == ()
                assert await ns.lookup(fresh_digest("never deposited"), timeout_s=15) == []
                assert (await ns.get_inclusion(tx_id, timeout_s=15)) == inc
                assert not [p for p in ns.machine.peers if p.bans]

    run(scenario())


def test_submission_errors_are_typed(producer: tuple[DistrictNodeProcess, Path], anchor: bytes,
                                     issuer: SoftwareSigner, tmp_path: Path) -> None:
    node, _ = producer
    good = deposit(issuer, fresh_digest("forged"))
    forged = SignedTx(good.body, good.alg, good.public_key, bytes(reversed(good.signature)))
    stranger = SoftwareSigner("sm2", signatures.generate_keypair("sm2")[0])
    unknown = deposit(stranger, fresh_digest("from nobody"))
    no_issuer = deposit(issuer, fresh_digest("no issuer"), enrollment=None)  # §6: incomplete
    other_chain = build_tx(issuer, chain_id="another-chain", type="evidence.deposit",
                           data={"digest": bytes(32), "kind": "k", "enrollment": bytes(32)},
                           timestamp_ms=1)

    async def scenario() -> None:
        with HeaderStore.open(tmp_path / "headers.sqlite") as store:
            async with running(store, anchor, [node.url]) as ns:
                for tx, code, peer in ((forged, "bad_signature", None),
                                       (other_chain, "bad_tx", None),
                                       # another's enrollment: not the stranger's key
                                       (unknown, "bad_reference", node.url),
                                       (no_issuer, "bad_tx", node.url)):
                    with pytest.raises(TxRejected) as e:
                        await ns.submit_tx(tx, timeout_s=15)
                    assert (e.value.code, e.value.peer, e.value.tx_id) == (code, peer, tx.tx_id)
                    assert code in str(e.value)
                assert ns.machine.peers.get(node.url).state == "ok"  # no fault of the node
        with HeaderStore.open(tmp_path / "other.sqlite") as store:
            dead = f"http://127.0.0.1:{free_port()}"
            async with running(store, anchor, [dead]) as ns:
                t = time.monotonic()
                with pytest.raises(NoPeers) as e:
                    await ns.submit_tx(good, timeout_s=1.5)
                assert time.monotonic() - t < 5
                assert e.value.code == "no_peers" and dead in str(e.value)

    run(scenario())


def test_a_transaction_a_node_keeps_to_itself_is_offered_again(
        chain_dir: Path, anchor: bytes, issuer: SoftwareSigner, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    where = copy_chain(chain_dir, tmp_path)
    tx = deposit(issuer, fresh_digest("offered again"))
    # No block is made while nothing is pending at the producer, and the long poll on
    # /v1/wait outlasts the whole wait: the offer to the producer must not wait for it.
    monkeypatch.setattr(client_mod, "WAIT_POLL_MS", 60_000)

    async def scenario(quiet: str, producer: str) -> None:
        with HeaderStore.open(tmp_path / "headers.sqlite") as store:
            async with running(store, anchor, [quiet]) as ns:
                ns.resubmit_after_s = 0.5
                # Accepted by a node that makes no blocks and relays nothing...
                assert await ns.submit_tx(tx, timeout_s=15) == tx.tx_id
                # ... so while waiting it is offered to the next peer that comes.
                ns.add_peer(producer)
                inc = await ns.wait_for_inclusion(tx.tx_id, timeout_s=20)
                assert inc.tx == tx

    # The quiet node reads the producer's chain (it sees its blocks) and writes nothing.
    with DistrictNodeProcess(where, block_interval_ms=250) as node, \
            DistrictNodeProcess(where, block_interval_ms=0, peer_key_seed="quiet") as quiet:
        run(scenario(quiet.url, node.url))
        assert f"accepted evidence.deposit {tx.tx_id.hex()[:16]}" in quiet.log_text()
        assert f"accepted evidence.deposit {tx.tx_id.hex()[:16]}" in node.log_text()


# --- a node that serves bad proofs ----------------------------------------------------------------


def test_bad_proof_node_alone_then_an_honest_one(chain_dir: Path, anchor: bytes,
                                                 issuer: SoftwareSigner, tmp_path: Path) -> None:
    where = copy_chain(chain_dir, tmp_path)
    digest = fresh_digest("a residence permit")
    tx = deposit(issuer, digest)

    async def scenario(bad: str, honest: str) -> None:
        with HeaderStore.open(tmp_path / "headers.sqlite") as store:
            async with running(store, anchor, [bad]) as ns:
                assert await ns.submit_tx(tx, timeout_s=15) == tx.tx_id
                await in_a_block(where, tx.tx_id)
                with pytest.raises(NotVerifiable) as e:
                    await ns.wait_for_inclusion(tx.tx_id, timeout_s=4)
                assert e.value.code == "not_verifiable" and bad in str(e.value)
                peer = ns.machine.peers.get(bad)
                assert peer.bans >= 1 and peer.last_reason == "proof"
                # An honest node of the same chain comes: the inclusion verifies through it.
                ns.add_peer(honest)
                inc = await ns.wait_for_inclusion(tx.tx_id, timeout_s=20)
                with Chain.open(where, readonly=True) as c:
                    assert inc.block_id == c.block_id(c.tx(tx.tx_id)[1])
                assert ns.machine.peers.get(honest).bans == 0
                hits = await ns.lookup(digest, timeout_s=15)
                assert hits == [inc]

    with DistrictNodeProcess(where, misbehave="bad-proof", block_interval_ms=250) as bad, \
            DistrictNodeProcess(where, block_interval_ms=0) as honest:
        run(scenario(bad.url, honest.url))


# --- a transaction older than the store's window -------------------------------------------


def test_old_transactions_verify_through_checkpoints(
        producer: tuple[DistrictNodeProcess, Path], chain_dir: Path, anchor: bytes,
        tmp_path: Path) -> None:
    node, _ = producer
    wanted = {h: generated_tx(chain_dir, h)[0] for h in (0, 64, 100)}

    async def scenario() -> None:
        with HeaderStore.open(tmp_path / "headers.sqlite", window=50,
                              checkpoint_every=64) as store:
            async with running(store, anchor, [node.url]) as ns:
                for _ in range(200):
                    if ns.machine.tip is not None and ns.machine.tip.height >= BLOCKS - 1:
                        break
                    await asyncio.sleep(0.05)
                assert store.window_start() > 100
                for height, tx_id in wanted.items():
                    assert store.header(height) is None  # pruned: only checkpoints remain
                    inc = await ns.get_inclusion(tx_id, timeout_s=15)
                    assert (inc.height, inc.tx_id) == (height, tx_id)
                    with Chain.open(chain_dir, readonly=True) as c:
                        assert inc.block_id == c.block_id(height)
                assert not [p for p in ns.machine.peers if p.bans]

    run(scenario())
    log = node.log_text()
    # The two kinds of checkpoint checks: the range 65..128 (for 100), and the one header of a
    # height whose block_id is itself known (the anchor, a checkpoint).
    assert "/v1/headers?from=65&count=64 200" in log
    assert "/v1/headers?from=64&count=1 200" in log


# --- the command line ----------------------------------------------------------------------


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def out(r: subprocess.CompletedProcess[str]) -> dict:
    assert "Traceback" not in r.stderr, r.stderr
    return json.loads(r.stdout)


def test_cli_tx_and_lookup(producer: tuple[DistrictNodeProcess, Path], chain_dir: Path,
                           tmp_path: Path) -> None:
    node, _ = producer
    trust = str(chain_dir / "trust.cbor")
    state = str(tmp_path / "state")
    tx_id, digest = generated_tx(chain_dir, 150)
    peer = ("--peer", node.url, "--state", state, "--timeout", "30")

    r = cli("node", "tx", tx_id.hex(), "--trust", trust, *peer)
    assert r.returncode == 0, r.stderr
    doc = out(r)
    assert doc["ok"] is True and doc["tx_id"] == tx_id.hex()
    assert (doc["height"], doc["leaf_index"], doc["type"]) == (150, 0, "evidence.deposit")
    with Chain.open(chain_dir, readonly=True) as c:
        assert doc["block_id"] == c.block_id(150).hex()
        sender = c.keys("issuer")
    assert doc["sender"] in {k.peer_id.hex() for k in sender}
    assert doc["data"]["digest"] == digest.hex() and doc["verified_height"] >= 150
    inclusion = {k: doc[k] for k in ("tx_id", "height", "block_id", "leaf_index", "type",
                                     "sender", "data")}

    # The store is initialized now: its anchor is used without --trust.
    r = cli("node", "lookup", digest.hex(), *peer)
    assert r.returncode == 0, r.stderr
    doc = out(r)
    assert doc["digest"] == digest.hex() and doc["dropped"] == [] and doc["asked"] == [node.url]
    [hit] = doc["hits"]
    assert {k: hit[k] for k in inclusion} == inclusion

    r = cli("node", "lookup", sm3.digest(b"not on chain").hex(), *peer)
    assert r.returncode == 0 and out(r)["hits"] == []  # not on chain is an answer

    r = cli("node", "tx", "ab" * 32, *peer)
    assert r.returncode == 1
    doc = out(r)
    assert (doc["ok"], doc["error"]) == (False, "not_found") and "ab" * 32 in doc["message"]
    assert "not in a block" in r.stderr

    # Usage and peers.
    for bad_id in ("xyz", "ab" * 31, "zz" * 32):
        r = cli("node", "tx", bad_id, *peer)
        assert r.returncode == 2 and out(r)["error"] == "usage"
    r = cli("node", "tx", tx_id.hex(), "--peer", node.url, "--state", str(tmp_path / "empty"))
    assert r.returncode == 2 and "give --trust" in out(r)["message"]
    assert not (tmp_path / "empty").exists()  # nothing created for a usage error
    r = cli("node", "lookup", digest.hex(), "--state", state)
    assert r.returncode == 2 and "no peers" in out(r)["message"]
    dead = f"http://127.0.0.1:{free_port()}"
    r = cli("node", "tx", tx_id.hex(), "--peer", dead, "--state", state, "--timeout", "2")
    assert r.returncode == 1
    doc = out(r)
    assert doc["error"] == "no_peers" and "unreachable" in doc["message"]


def test_cli_against_a_bad_proof_node(chain_dir: Path, tmp_path: Path) -> None:
    tx_id, digest = generated_tx(chain_dir, 150)
    trust = str(chain_dir / "trust.cbor")
    with DistrictNodeProcess(copy_chain(chain_dir, tmp_path), misbehave="bad-proof",
                             block_interval_ms=0) as bad:
        peer = ("--trust", trust, "--peer", bad.url, "--state", str(tmp_path / "state"),
                "--timeout", "20")
        r = cli("node", "tx", tx_id.hex(), *peer)
        assert r.returncode == 1
        doc = out(r)
        assert doc["error"] == "not_verifiable" and "not accepted" in doc["message"]
        [p] = doc["peers"]
        assert (p["state"], p["last_reason"]) == ("banned", "proof")
        # A listed hit that does not verify is no answer, never "not on chain".
        r = cli("node", "lookup", digest.hex(), *peer)
        assert r.returncode == 1, r.stderr
        doc = out(r)
        assert doc["error"] == "not_verifiable" and "not 'not on chain'" in doc["message"]
