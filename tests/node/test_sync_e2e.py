"""The sync engine end to end: ``appliance node sync`` and NodeSync against district-node
doubles (hil/district_node.py) running as subprocesses on loopback.

One chain is generated per module (1500 blocks, a set change every 400, commits every 50, one
evidence.deposit per block). Every node gets its own copy of the chain directory (the double
opens it for writing) and produces no blocks, so honest copies stay identical.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from appliance import wire
from appliance.node import sync, verify
from appliance.node.client import Limits, NodeSync
from appliance.node.model import Commit, Header, decode_trust_anchor, decode_validator_set
from appliance.node.store import HeaderStore
from hil.chain import Chain, ChainParams, generate
from hil.district_node import DistrictNodeProcess

REPO = Path(__file__).resolve().parents[2]
BLOCKS = 1500
BATCH = "200"


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chain") / "chain"
    generate(out, ChainParams(seed="sync-e2e", validators=4, set_change_every=400,
                              commit_every=50), BLOCKS, txs_per_block=1)
    return out


@pytest.fixture(scope="module")
def tip(chain_dir: Path) -> tuple[int, str]:
    with Chain.open(chain_dir, readonly=True) as c:
        return c.tip_height, c.tip_id.hex()


def copy_chain(chain_dir: Path, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    n = len(list(where.iterdir()))
    dst = where / f"node{n}"
    shutil.copytree(chain_dir, dst)
    return dst


def node(chain_dir: Path, where: Path, **kw: Any) -> DistrictNodeProcess:
    kw.setdefault("block_interval_ms", 0)
    return DistrictNodeProcess(copy_chain(chain_dir, where), **kw)


@pytest.fixture(scope="module")
def honest(chain_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with node(chain_dir, tmp_path_factory.mktemp("honest")) as n:
        yield n


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def cli_sync(state: Path, trust: Path, *peers: str, extra: tuple[str, ...] = (),
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    args = ["node", "sync", "--trust", str(trust), "--state", str(state), "--batch", BATCH]
    for p in peers:
        args += ["--peer", p]
    return cli(*args, *extra, timeout=timeout)


def out(r: subprocess.CompletedProcess[str]) -> dict:
    assert "Traceback" not in r.stderr, r.stderr
    return json.loads(r.stdout)


def peers_of(doc: dict) -> dict[str, dict]:
    return {p["url"]: p for p in doc["peers"]}


def check_store(state: Path, chain_dir: Path) -> HeaderStore:
    """The store holds exactly the chain's headers from its window up to its tip."""
    store = HeaderStore.open(state / "node" / "headers.sqlite")
    with Chain.open(chain_dir, readonly=True) as c:
        t = store.tip()
        assert t.block_id == c.block_id(t.height)
        for h, block_id, raw in store.headers(store.window_start(), t.height + 1):
            assert block_id == c.block_id(h) and raw == c.header(h)
        assert t.next_set_hash == c.validator_set_hash_for(t.height + 1)
    return store


def check_evidence(store: HeaderStore) -> list[dict]:
    """Every evidence row holds two valid commits for different blocks under one set."""
    rows = store.evidence("equivocation")
    docs = []
    for e in rows:
        ev = wire.decode(e.blob)
        a, b = Header.from_obj(ev["header_a"]), Header.from_obj(ev["header_b"])
        assert a.height == b.height == e.height and a.block_id != b.block_id
        vset = decode_validator_set(store.validator_set(ev["validators_hash"]))
        for h, c in ((a, ev["commit_a"]), (b, ev["commit_b"])):
            verify.verify_commit(Commit.from_obj(c), h, vset, ev["chain_id"])
        docs.append(ev)
    return docs


# --- honest ---------------------------------------------------------------------------------


def test_cli_sync_two_honest_nodes_then_status(chain_dir: Path, honest: DistrictNodeProcess,
                                               tip: tuple[int, str], tmp_path: Path) -> None:
    with node(chain_dir, tmp_path) as second:
        r = cli_sync(tmp_path / "state", chain_dir / "trust.cbor", honest.url, second.url)
        assert r.returncode == 0, r.stderr
        doc = out(r)
        assert doc["ok"] and doc["reason"] == "reached"
        assert (doc["height"], doc["tip_id"]) == tip and doc["target"] == tip[0]
        assert doc["appended"] == tip[0] and doc["alarms"] == []
        peers = peers_of(doc)
        assert set(peers) == {honest.url, second.url}
        assert all(p["state"] == "ok" and p["bans"] == 0 for p in peers.values()), peers
        # Every stored header was served and verified; which peer served which of the two
        # batches is a race, but each segment was vouched for by the other peer first.
        assert sum(p["verified_headers"] for p in peers.values()) >= tip[0], peers
        assert "vouched for by" in r.stderr  # segments cross-checked before storing
        check_store(tmp_path / "state", chain_dir).close()

        st = cli("node", "status", "--state", str(tmp_path / "state"))
        assert st.returncode == 0
        status = out(st)
        assert (status["height"], status["tip_id"]) == tip
        assert status["initialized"] and status["chain_id"] == "hil-devnet"
        assert status["alarms"] == [] and status["authorizations_blocked"] is False
        assert {p["url"]: p["state"] for p in status["peers"]} == {
            honest.url: "ok", second.url: "ok"}

        again = cli_sync(tmp_path / "state", chain_dir / "trust.cbor", honest.url)
        assert again.returncode == 0 and out(again)["appended"] == 0
        assert f"resuming from the stored tip {tip[0]}" in again.stderr


def test_cli_until_height_stops_there_and_resumes(chain_dir: Path, honest: DistrictNodeProcess,
                                                  tip: tuple[int, str], tmp_path: Path) -> None:
    state = tmp_path / "state"
    r = cli_sync(state, chain_dir / "trust.cbor", honest.url, extra=("--until-height", "777"))
    assert r.returncode == 0, r.stderr
    assert out(r)["height"] == 777
    check_store(state, chain_dir).close()
    r = cli_sync(state, chain_dir / "trust.cbor", honest.url)
    assert r.returncode == 0 and out(r)["height"] == tip[0]
    assert "resuming from the stored tip 777" in r.stderr


# --- one honest node and one misbehaving -----------------------------------------------------

# What the misbehaving node may end as; reasons are the machine's ban reasons.
EXPECT: dict[str, tuple[set[str], set[str | None]]] = {
    "forge-commit": ({"banned"}, {"last_commit", "set_change_commit"}),
    # Its fork never links to the anchor (a bad link), and its commits, the real chain's,
    # do not certify its headers: banned either way, never an equivocation.
    "wrong-link": ({"banned"}, {"prev_hash", "last_commit", "set_change_commit", "commit"}),
    "set-hijack": ({"banned"}, {"set_change_commit", "validator_set_hash", "validators_hash"}),
    "bad-proof": ({"ok"}, {None}),  # headers are honest; see test_bad_proof_peer_is_banned
    "garbage": ({"banned"}, {"malformed"}),
    "oversize": ({"banned"}, {"oversize"}),
    "slow": ({"banned"}, {"slow"}),
    "withhold@700": ({"banned"}, {"withhold"}),
}


async def _until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not in {timeout:g} s: {what}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("mode", list(EXPECT))
def test_honest_and_misbehaving_node(mode: str, chain_dir: Path, honest: DistrictNodeProcess,
                                     tip: tuple[int, str], tmp_path: Path) -> None:
    """The misbehaving node is the light node's only peer until it has been judged (banned, or
    it served the whole chain), so it is certainly asked: with both from the start, which peer
    gets the batches is a race it may never enter. Then the honest node joins; the sync ends
    on the honest chain, the honest node never banned, the misbehaving one as EXPECT says.
    Bans outlast the test, so a ban cannot run out and leave the peer in another state."""
    states, reasons = EXPECT[mode]
    anchor = (chain_dir / "trust.cbor").read_bytes()
    state = tmp_path / "state" / "node"
    state.mkdir(parents=True)

    async def scenario(bad_url: str) -> list[dict]:
        config = sync.SyncConfig(batch=int(BATCH), ban_base_ms=600_000, ban_max_ms=600_000)
        with HeaderStore.open(state / "headers.sqlite") as store:
            ns = NodeSync(store, anchor, config)
            ns.add_peer(bad_url)
            stop = asyncio.Event()
            task = asyncio.create_task(ns.run(stop_at_tip=False, stall_timeout_s=None,
                                              stop=stop))
            try:
                bad = ns.machine.peers.get(bad_url)

                def at_tip() -> bool:
                    t = ns.machine.tip
                    return t is not None and (t.height, t.block_id.hex()) == tip

                await _until(lambda: bad.bans > 0 or at_tip(), 60, f"{mode} node judged")
                ns.add_peer(honest.url)
                await _until(lambda: at_tip() and
                             ns.machine.peers.get(honest.url).state == "ok", 60,
                             "the honest tip")
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)
            return ns.machine.peers.snapshot()

    with node(chain_dir, tmp_path, misbehave=mode) as bad:
        peers = {p["url"]: p for p in asyncio.run(scenario(bad.url))}
    assert peers[honest.url]["state"] == "ok" and peers[honest.url]["bans"] == 0
    b = peers[bad.url]
    assert b["state"] in states, b
    if b["state"] == "banned":
        assert b["last_reason"] in reasons, b
    store = check_store(tmp_path / "state", chain_dir)
    try:
        assert (store.tip().height, store.tip().block_id.hex()) == tip  # the honest tip
        evidence = check_evidence(store)
        if b["state"] == "conflict":
            assert evidence and store.alarms()
        else:
            assert not evidence and not store.alarms()
    finally:
        store.close()


def test_equivocation_raises_the_alarm_and_keeps_both_commits(
        chain_dir: Path, honest: DistrictNodeProcess, tip: tuple[int, str],
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    trust = chain_dir / "trust.cbor"
    # The kiosk has been following the honest nodes past height 1000...
    r = cli_sync(state, trust, honest.url, extra=("--until-height", "1100"))
    assert r.returncode == 0, r.stderr
    # ... when a node that equivocates from height 1000 on shows up.
    with node(chain_dir, tmp_path, misbehave="equivocate@1000") as bad:
        r = cli_sync(state, trust, honest.url, bad.url)
    assert r.returncode == 0, r.stderr
    doc = out(r)
    assert (doc["height"], doc["tip_id"]) == tip  # still the honest chain
    assert peers_of(doc)[bad.url]["state"] == "conflict"
    assert peers_of(doc)[honest.url]["state"] == "ok"
    assert [a["kind"] for a in doc["alarms"]] == ["equivocation"]
    assert "ALARM equivocation at height" in r.stderr
    store = check_store(state, chain_dir)
    try:
        [ev] = check_evidence(store)
        assert ev["height"] >= 1100
        with Chain.open(chain_dir, readonly=True) as c:
            assert Header.from_obj(ev["header_a"]).block_id == c.block_id(ev["height"])
        assert store.alarms()[0].evidence_id == store.evidence()[0].id
    finally:
        store.close()
    st = out(cli("node", "status", "--state", str(state)))
    assert st["authorizations_blocked"] is True
    assert [a["kind"] for a in st["alarms"]] == ["equivocation"]
    assert len(st["evidence"]) == 1
    # A second run keeps the alarm (cleared only by an operator) and adds no duplicate.
    with node(chain_dir, tmp_path, misbehave="equivocate@1000") as bad:
        r = cli_sync(state, trust, honest.url, bad.url)
    assert r.returncode == 0
    store = HeaderStore.open(state / "node" / "headers.sqlite")
    try:
        assert len(store.alarms()) == 1
    finally:
        store.close()


def test_equivocation_from_a_fresh_start(chain_dir: Path, honest: DistrictNodeProcess,
                                         tip: tuple[int, str], tmp_path: Path) -> None:
    """Both nodes at once, from nothing: the alarm goes up and both commits are kept, but no
    client can tell which branch is real; it keeps the one it verified first."""
    with node(chain_dir, tmp_path, misbehave="equivocate@1000") as bad:
        r = cli_sync(tmp_path / "state", chain_dir / "trust.cbor", honest.url, bad.url)
    assert r.returncode == 0, r.stderr
    doc = out(r)
    assert doc["height"] == tip[0]
    assert [a["kind"] for a in doc["alarms"]] == ["equivocation"]
    states = sorted(p["state"] for p in doc["peers"])
    assert states == ["conflict", "ok"]
    ok_peer = next(p for p in doc["peers"] if p["state"] == "ok")
    assert doc["tip_id"] == ok_peer["tip_id"]  # we follow the peer that agrees with us
    if ok_peer["url"] == honest.url:
        assert doc["tip_id"] == tip[1]
    store = HeaderStore.open(tmp_path / "state" / "node" / "headers.sqlite")
    try:
        assert len(check_evidence(store)) == 1
    finally:
        store.close()


def test_bad_proof_peer_is_banned(chain_dir: Path, honest: DistrictNodeProcess,
                                  tip: tuple[int, str], tmp_path: Path) -> None:
    with Chain.open(chain_dir, readonly=True) as c:
        [tx_id] = c.tx_ids(1234)
    anchor = (chain_dir / "trust.cbor").read_bytes()

    async def scenario(bad_url: str) -> None:
        store = HeaderStore.open(tmp_path / "headers.sqlite")
        ns = NodeSync(store, anchor, sync.SyncConfig(batch=200))
        ns.add_peer(bad_url)
        stop = asyncio.Event()
        task = asyncio.create_task(ns.run(stop_at_tip=False, stall_timeout_s=None, stop=stop))
        try:
            for _ in range(200):
                if ns.machine.tip is not None and ns.machine.tip.height == tip[0]:
                    break
                await asyncio.sleep(0.05)
            res = await asyncio.wait_for(ns.fetch_tx(tx_id), 20)
            assert isinstance(res, sync.TxNotFound)
            peer = ns.machine.peers.get(bad_url)
            assert (peer.state, peer.last_reason) == ("banned", "proof")
            ns.add_peer(honest.url)
            res = await asyncio.wait_for(ns.fetch_tx(tx_id), 20)
            assert isinstance(res, sync.TxVerified)
            assert res.peer == honest.url and res.height == 1234 and res.tx.tx_id == tx_id
        finally:
            stop.set()
            await task
            store.close()

    with node(chain_dir, tmp_path, misbehave="bad-proof") as bad:
        asyncio.run(scenario(bad.url))


# --- failover --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_banned_peer_restarted_honest_is_retried(chain_dir: Path, tip: tuple[int, str],
                                                 tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with node(chain_dir, tmp_path, port=port, misbehave="garbage"):
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "node", "sync", "--trust",
             str(chain_dir / "trust.cbor"), "--state", str(tmp_path / "state"), "--peer", url,
             "--ban-base-ms", "300", "--timeout", "30"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            time.sleep(1.5)  # banned at least once meanwhile
        except BaseException:
            proc.kill()
            raise
    # The same address comes back, restarted and honest.
    try:
        with node(chain_dir, tmp_path, port=port):
            stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    doc = json.loads(stdout)
    assert (doc["height"], doc["tip_id"]) == tip
    [p] = doc["peers"]
    assert p["state"] == "ok" and p["bans"] >= 1
    assert "banned: malformed" in stderr


def test_failover_when_a_peer_is_killed_mid_sync(chain_dir: Path, tip: tuple[int, str],
                                                 tmp_path: Path) -> None:
    anchor = (chain_dir / "trust.cbor").read_bytes()
    with node(chain_dir, tmp_path) as a, node(chain_dir, tmp_path) as b:

        class KillAfterFirstSegment(NodeSync):
            async def _apply(self, events: list[sync.Event]) -> None:
                await super()._apply(events)
                if any(isinstance(e, sync.AppendSegment) for e in events) and \
                        a.proc.poll() is None:
                    a.proc.send_signal(signal.SIGKILL)
                    a.proc.wait()

        async def scenario() -> None:
            store = HeaderStore.open(tmp_path / "headers.sqlite")
            try:
                ns = KillAfterFirstSegment(store, anchor, sync.SyncConfig(batch=50),
                                           limits=Limits(connect_timeout_s=1.0))
                ns.add_peer(a.url)
                ns.add_peer(b.url)
                res = await ns.run(stall_timeout_s=30)
                assert res.ok and (res.height, res.tip_id) == tip
                assert ns.machine.peers.get(a.url).state == "banned"
                assert ns.machine.peers.get(a.url).last_reason in (
                    "unreachable", "disconnected", "timeout")
                assert ns.machine.peers.get(b.url).state == "ok"
            finally:
                store.close()

        asyncio.run(scenario())


# --- the CLI's errors -------------------------------------------------------------------------


def test_cli_no_valid_chain_is_a_clear_failure(chain_dir: Path, tmp_path: Path) -> None:
    with node(chain_dir, tmp_path, misbehave="forge-commit") as bad:
        r = cli_sync(tmp_path / "state", chain_dir / "trust.cbor", bad.url,
                     extra=("--timeout", "2"))
    assert r.returncode == 1
    doc = out(r)
    assert doc["ok"] is False and doc["error"] == "no_valid_chain"
    assert "no valid chain" in doc["message"] and "last_commit" in doc["message"]
    assert "no valid chain" in r.stderr.splitlines()[-1]


def test_cli_unreachable_peer_and_unreachable_height(chain_dir: Path,
                                                     honest: DistrictNodeProcess,
                                                     tmp_path: Path) -> None:
    r = cli_sync(tmp_path / "s1", chain_dir / "trust.cbor", f"http://127.0.0.1:{free_port()}",
                 extra=("--timeout", "1.5"))
    assert r.returncode == 1 and "unreachable" in out(r)["message"]
    r = cli_sync(tmp_path / "s2", chain_dir / "trust.cbor", honest.url,
                 extra=("--timeout", "1.5", "--until-height", "999999"))
    assert r.returncode == 1
    assert "peers' best claim is 1499" in out(r)["message"]


def test_cli_usage_and_store_errors(chain_dir: Path, honest: DistrictNodeProcess,
                                    tmp_path: Path) -> None:
    trust = chain_dir / "trust.cbor"
    r = cli_sync(tmp_path / "s", tmp_path / "missing.cbor", honest.url)
    assert r.returncode == 2 and "cannot read the trust anchor" in out(r)["message"]
    (tmp_path / "junk.cbor").write_bytes(b"\xa0")
    r = cli_sync(tmp_path / "s", tmp_path / "junk.cbor", honest.url)
    assert r.returncode == 2 and "is not a trust anchor" in out(r)["message"]
    r = cli("node", "sync", "--trust", str(trust), "--state", str(tmp_path / "s"))
    assert r.returncode == 2 and "no peers" in out(r)["message"]
    r = cli_sync(tmp_path / "s", trust, "ftp://x")
    assert r.returncode == 2 and "http" in out(r)["message"]
    # A store that holds another anchor's chain is refused, not mixed.
    r = cli_sync(tmp_path / "s", trust, honest.url, extra=("--until-height", "10"))
    assert r.returncode == 0
    other = tmp_path / "other"
    generate(other, ChainParams(chain_id="another-chain", validators=1), 5)
    r = cli_sync(tmp_path / "s", other / "trust.cbor", honest.url)
    assert r.returncode == 3 and "another trust anchor" in out(r)["message"]
    # A file that is not a store.
    bad = tmp_path / "bad" / "node"
    bad.mkdir(parents=True)
    (bad / "headers.sqlite").write_bytes(b"not sqlite" * 100)
    r = cli_sync(tmp_path / "bad", trust, honest.url)
    assert r.returncode == 3 and out(r)["error"] in ("store_corrupt", "store")
    st = cli("node", "status", "--state", str(tmp_path / "bad"))
    assert st.returncode == 3 and "Traceback" not in st.stderr


def test_state_dir_from_the_environment(chain_dir: Path, honest: DistrictNodeProcess,
                                        tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "APPLIANCE_STATE": str(tmp_path / "env")}
    r = subprocess.run([sys.executable, "-m", "appliance.cli", "node", "sync", "--trust",
                        str(chain_dir / "trust.cbor"), "--peer", honest.url, "--until-height",
                        "5"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "env" / "node" / "headers.sqlite").is_file()
    r = subprocess.run([sys.executable, "-m", "appliance.cli", "node", "status"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert json.loads(r.stdout)["height"] == 5


# --- strict mode -------------------------------------------------------------------------------


def test_strict_mode(tmp_path: Path, chain_dir: Path) -> None:
    dense = tmp_path / "dense"
    generate(dense, ChainParams(seed="strict", validators=4, alg="ecdsa-p256",
                                set_change_every=60), 150)
    with node(dense, tmp_path) as a, node(dense, tmp_path) as b:
        r = cli_sync(tmp_path / "s1", dense / "trust.cbor", a.url, b.url,
                     extra=("--strict",))
        assert r.returncode == 0, r.stderr
        assert out(r)["height"] == 149
    # A node with sparse commits cannot serve an audit.
    with node(chain_dir, tmp_path) as sparse:
        r = cli_sync(tmp_path / "s2", chain_dir / "trust.cbor", sparse.url,
                     extra=("--strict", "--timeout", "1.5"))
    assert r.returncode == 1 and "strict_no_commit" in out(r)["message"]


def test_trust_anchor_is_what_the_chain_says(chain_dir: Path) -> None:
    anchor = decode_trust_anchor((chain_dir / "trust.cbor").read_bytes())
    with Chain.open(chain_dir, readonly=True) as c:
        assert anchor.block_id == c.genesis_id and anchor.chain_id == c.chain_id


# --- the adapter's transport limits, against a local aiohttp server -----------------------------


def test_fetch_enforces_limits_while_reading() -> None:
    from aiohttp import web

    from appliance.node.client import FetchError, fetch, new_session

    sent: dict[str, int] = {}

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        sent["chunked"] = 0
        try:
            for _ in range(800):  # 50 MiB if nobody stops it
                await resp.write(bytes(64 * 1024))
                sent["chunked"] += 64 * 1024
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def declared(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 9 * 1024 * 1024
        await resp.prepare(request)
        sent["declared"] = 0
        try:
            for _ in range(144):
                await resp.write(bytes(64 * 1024))
                sent["declared"] += 64 * 1024
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 1000
        await resp.prepare(request)
        try:
            for _ in range(100):
                await resp.write(b"x" * 10)
                await asyncio.sleep(0.05)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 100
        await resp.prepare(request)
        await resp.write(b"x" * 10)
        await asyncio.sleep(5)
        return resp

    async def late(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(body=b"late")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(body=b"\xa0", status=503)

    async def main() -> None:
        app = web.Application()
        for path, fn in (("/chunked", chunked), ("/declared", declared), ("/trickle", trickle),
                         ("/stall", stall), ("/late", late), ("/ok", ok)):
            app.router.add_get(path, fn)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        limits = Limits(headers_timeout_s=0.5, idle_timeout_s=0.5, rate_grace_s=0.3,
                        min_rate_bps=2000, total_timeout_s=3)

        def req(path: str, max_bytes: int = 1024 * 1024) -> sync.Request:
            return sync.Request(1, base, "headers", path, max_bytes)

        async def reason(path: str, max_bytes: int = 1024 * 1024) -> str:
            with pytest.raises(FetchError) as e:
                await fetch(session, req(path, max_bytes), limits)
            return e.value.reason

        async with new_session(limits) as session:
            t = time.monotonic()
            assert await reason("/chunked") == "oversize"
            await asyncio.sleep(0.2)
            # Stopped near the limit: far below the 50 MiB the server would send.
            assert sent["chunked"] < 8 * 1024 * 1024, sent
            assert await reason("/declared") == "oversize"  # before reading the body
            await asyncio.sleep(0.2)
            assert sent["declared"] < 9 * 1024 * 1024, sent
            assert await reason("/trickle") == "slow"
            assert await reason("/stall") in ("slow", "timeout")
            assert await reason("/late") == "timeout"
            assert time.monotonic() - t < 5
            assert await fetch(session, req("/ok"), limits) == (503, b"\xa0")
            dead = sync.Request(2, f"http://127.0.0.1:{free_port()}", "info", "/v1/info", 10)
            with pytest.raises(FetchError) as e:
                await fetch(session, dead, limits)
            assert e.value.reason == "unreachable"
        await runner.cleanup()

    asyncio.run(main())
