"""The district-node double (hil.district_node, appliance-hil district-node).

Responses are checked with code written here from the ledger protocol page (shared design):
block_id = SM3(enc(header)), hash links, validator-set hashes, commit signatures with
appliance.gm and the > 2/3 rule, a naive RFC 9162 §2.1.3.2 verifier and a small §5 segment
verifier. Nothing here imports appliance.node or uses hil.merkle to check the double.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import rfc9162
from hypothesis import given, settings
from hypothesis import strategies as st
from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from appliance import wire
from appliance.gm import ecdsa, sm2, sm3
from hil import chain as hc
from hil import cli
from hil import district_node as dn
from hil.district_node import (
    GARBAGE_BODY,
    MODES,
    OVERSIZE_BYTES,
    SERVICE_TYPE,
    SLOW_CHUNK,
    DistrictNode,
    DistrictNodeProcess,
    Misbehaviour,
    hijack_keys,
)

pytestmark = pytest.mark.timeout(90)

H = sm3.digest
VERIFY = {"sm2": sm2.verify, "ecdsa-p256": ecdsa.verify}
CHAIN_ID = "hil-dn-test"
TIP = 25  # heights 0..25; set changes at 9 and 19; commits on 0,4,8,9,12,16,19,20,24,25
COMMIT_HEIGHTS = [0, 4, 8, 9, 12, 16, 19, 20, 24, 25]
CBOR = "application/cbor"
MAX_BODY = 8 * 1024 * 1024
LIMIT_S = 25


# -- independent spec code ------------------------------------------------------------------


def block_id(header: dict) -> bytes:
    return H(wire.encode(header))


def set_hash(validators: list) -> bytes:
    return H(wire.encode(validators))


def commit_valid(commit: dict, height: int, bid: bytes, vset: list,
                 chain_id: str = CHAIN_ID) -> bool:
    assert set(commit) == {"height", "block_id", "signatures"}
    if commit["height"] != height or commit["block_id"] != bid:
        return False
    vote = wire.encode({"type": "commit", "chain_id": chain_id, "height": height,
                        "block_id": bid})
    indices = [s["index"] for s in commit["signatures"]]
    if indices != sorted(set(indices)) or (indices and indices[-1] >= len(vset)):
        return False
    power = 0
    for s in commit["signatures"]:
        v = vset[s["index"]]
        if not VERIFY[v["alg"]](v["public_key"], vote, s["signature"]):
            return False
        power += v["power"]
    return 3 * power > 2 * sum(v["power"] for v in vset)


class Rejected(Exception):
    def __init__(self, rule: str, height: int) -> None:
        super().__init__(f"{rule} at height {height}")
        self.rule, self.height = rule, height


def verify_segment(trusted: dict, sets: dict[bytes, list], resp: dict) -> dict:
    """§5 on one /v1/headers response after ``trusted``; the new trusted header.

    ``sets`` maps validators_hash -> set for the sets already trusted; it gains the served
    sets whose hashes the headers name (only when the whole segment is accepted).
    """
    headers = resp["headers"]
    if not headers:
        raise Rejected("empty", trusted["height"] + 1)
    commits = {c["height"]: c for c in resp["commits"]}
    offered = {set_hash(v["validators"]): v["validators"] for v in resp["validator_sets"]}
    known = dict(sets)
    prev = trusted
    now_ms = int(time.time() * 1000)
    for hd in headers:
        h = hd["height"]
        if hd["chain_id"] != CHAIN_ID or hd["version"] != "1":
            raise Rejected("rule1", h)
        if h != prev["height"] + 1 or hd["prev_hash"] != block_id(prev):
            raise Rejected("rule2", h)
        if not prev["timestamp"] <= hd["timestamp"] <= now_ms + 60_000:
            raise Rejected("rule3", h)
        if hd["validators_hash"] != prev["next_validators_hash"]:
            raise Rejected("rule4", h)
        for name in ("validators_hash", "next_validators_hash"):
            if hd[name] in offered:
                known.setdefault(hd[name], offered[hd[name]])
        if hd["next_validators_hash"] != hd["validators_hash"]:
            vset = known.get(hd["validators_hash"])
            if vset is None or h not in commits or not commit_valid(
                    commits[h], h, block_id(hd), vset):
                raise Rejected("rule5", h)
        prev = hd
    vset = known.get(prev["validators_hash"])
    h = prev["height"]
    if vset is None or h not in commits or not commit_valid(commits[h], h, block_id(prev), vset):
        raise Rejected("rule6", h)
    sets.update(known)
    return prev


# -- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ends in the recent past: its issuers' enrollments (400 days from genesis) are valid
    now, so the tests can post deposits."""
    out = tmp_path_factory.mktemp("dn-base")
    start = int(time.time() * 1000) - 60_000
    hc.generate(out, hc.ChainParams(chain_id=CHAIN_ID, seed="dn", validators=4, alg="mixed",
                                    set_change_every=10, commit_every=4, start_ms=start),
                blocks=TIP + 1, txs_per_block=2)
    return out


@pytest.fixture(scope="module")
def other_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dn-other")
    hc.generate(out, hc.ChainParams(chain_id="hil-other-chain", seed="other", validators=1,
                                    alg="ecdsa-p256"), blocks=1)
    return out


@pytest.fixture
def chain_dir(base_chain: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "chain"
    shutil.copytree(base_chain, dst)
    return dst


def copy_chain(base: Path, dst: Path) -> Path:
    shutil.copytree(base, dst)
    return dst


def run(coro: Any, timeout: float = LIMIT_S) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Client:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.url + path) as r:
            body = await r.read()
            assert r.content_type == CBOR
            return r.status, wire.decode(body)

    async def raw(self, path: str) -> tuple[int, bytes]:
        async with self.session.get(self.url + path) as r:
            return r.status, await r.read()

    async def post(self, tx: Any, content_type: str = CBOR) -> tuple[int, Any]:
        data = tx if isinstance(tx, bytes) else wire.encode(tx)
        async with self.session.post(self.url + "/v1/tx", data=data,
                                     headers={"Content-Type": content_type}) as r:
            assert r.content_type == CBOR
            return r.status, wire.decode(await r.read())

    async def ok(self, path: str) -> Any:
        status, obj = await self.get(path)
        assert status == 200, (path, obj)
        return obj

    async def error(self, path: str, status: int, code: str) -> None:
        got, obj = await self.get(path)
        assert (got, obj.get("error")) == (status, code), (path, got, obj)
        assert set(obj) == {"error", "message"} and isinstance(obj["message"], str)


INTERNAL_ERRORS: list[str] = []


@pytest.fixture(autouse=True)
def no_internal_errors():
    INTERNAL_ERRORS.clear()
    yield
    assert INTERNAL_ERRORS == []


def _log(line: str) -> None:
    if "internal error" in line or "failed" in line:
        INTERNAL_ERRORS.append(line)


async def serve(chain_dir: Path, **kw: Any) -> DistrictNode:
    kw.setdefault("block_interval_ms", 0)
    kw.setdefault("log", _log)
    node = DistrictNode(chain_dir, **kw)
    await node.start()
    return node


def anchor_of(chain_dir: Path) -> dict:
    return wire.decode((chain_dir / "trust.cbor").read_bytes())


async def trusted_genesis(c: Client, chain_dir: Path) -> tuple[dict, dict[bytes, list]]:
    anchor = anchor_of(chain_dir)
    resp = await c.ok("/v1/headers?from=0&count=1")
    genesis = resp["headers"][0]
    assert block_id(genesis) == anchor["block_id"]
    assert genesis["validators_hash"] == set_hash(anchor["validators"])
    return genesis, {genesis["validators_hash"]: anchor["validators"]}


async def sync(c: Client, trusted: dict, sets: dict, count: int = 1000) -> dict:
    """Verify segment after segment up to the node's tip; the last trusted header."""
    tip = (await c.ok("/v1/info"))["height"]
    while trusted["height"] < tip:
        resp = await c.ok(f"/v1/headers?from={trusted['height'] + 1}&count={count}")
        trusted = verify_segment(trusted, sets, resp)
    return trusted


def deposit(chain_dir: Path, key: hc.Key, n: int, chain_id: str = CHAIN_ID,
            enrollment: bytes | None = None, kind: str = "tax-clearance") -> dict:
    """An evidence.deposit by the issuing office ``key`` naming its enrollment (or the given
    one); kind audit.head has no holder."""
    if enrollment is None:
        with hc.Chain.open(chain_dir, readonly=True) as chain:
            enrollment = chain.enrollment_of(key.public_key, "issuer")
    return hc.deposit_tx(key, digest=H(b"test document %d" % n), kind=kind,
                         enrollment=enrollment,
                         holder=None if kind == "audit.head" else H(b"holder %d" % n),
                         timestamp=int(time.time() * 1000), chain_id=chain_id,
                         nonce=n.to_bytes(16, "big"))


def enroll(admin: hc.Key, terminal: hc.Key, district: str = "haidian") -> dict:
    now = int(time.time() * 1000)
    return hc.enroll_tx(admin, terminal.public_key, terminal.alg, "kiosk", district=district,
                        hall="hall-1", not_after=now + 86_400_000, timestamp=now,
                        chain_id=CHAIN_ID, nonce=H(terminal.public_key)[:16])


def audit_head(terminal: hc.Key, enrollment: bytes, n: int) -> dict:
    """A kiosk anchoring its audit log: evidence.deposit of kind audit.head."""
    return hc.deposit_tx(terminal, digest=H(b"audit head %d" % n), kind="audit.head",
                         enrollment=enrollment, timestamp=int(time.time() * 1000),
                         chain_id=CHAIN_ID)


def keys(chain_dir: Path, role: str) -> list[hc.Key]:
    with hc.Chain.open(chain_dir, readonly=True) as chain:
        return chain.keys(role)


def terminal_key(n: int = 0) -> hc.Key:
    return hc.derive_key("test terminal", "terminal", n, "sm2")


# -- honest endpoints -----------------------------------------------------------------------


def test_info(chain_dir: Path) -> None:
    async def body() -> None:
        node = await serve(chain_dir, district="east-3", peer_key_seed="p1")
        try:
            async with aiohttp.ClientSession() as s:
                c = Client(s, node.url)
                info = await c.ok("/v1/info")
                assert set(info) == {"chain_id", "protocol", "height", "tip_id", "genesis_id",
                                     "peer_id", "district", "software"}
                assert info["chain_id"] == CHAIN_ID and info["protocol"] == 1
                assert info["height"] == TIP and info["district"] == "east-3"
                assert "TEST FIXTURE" in info["software"]
                assert info["genesis_id"] == anchor_of(chain_dir)["block_id"]
                tip = (await c.ok(f"/v1/headers?from={TIP}&count=1"))["headers"][0]
                assert info["tip_id"] == block_id(tip)
                peer = hc.derive_key("p1", "district-node", 0, "sm2")
                assert info["peer_id"] == H(peer.public_key) == node.peer_id
                await c.error("/v1/nothing", 404, "not_found")
                async with s.post(node.url + "/v1/info") as r:
                    assert r.status == 405
                    assert wire.decode(await r.read())["error"] == "method_not_allowed"
        finally:
            await node.stop()
    run(body())


def test_headers_ranges_sets_and_skipping_sync(chain_dir: Path) -> None:
    async def body() -> None:
        node = await serve(chain_dir)
        try:
            async with aiohttp.ClientSession() as s:
                c = Client(s, node.url)
                # (from, count) -> (heights served, commit heights, set heights)
                cases = {
                    (0, 1000): (range(0, 26), [9, 19, 25], [0, 10, 20]),
                    (5, 20): (range(5, 25), [9, 19, 24], [5, 10, 20]),
                    (1, 3): (range(1, 4), [], [1]),  # no commit in 1..3: never extended
                    (1, 6): (range(1, 5), [4], [1]),  # cut back to the commit at 4
                    (13, 2): (range(13, 15), [], [13]),
                    (19, 1): (range(19, 20), [19], [19, 20]),  # change: the next set too
                    (21, 1000): (range(21, 26), [25], [21]),
                    (25, 1): (range(25, 26), [25], [25]),
                }
                for (first, count), (heights, commit_hs, set_hs) in cases.items():
                    resp = await c.ok(f"/v1/headers?from={first}&count={count}")
                    assert set(resp) == {"headers", "commits", "validator_sets"}
                    got = [h["height"] for h in resp["headers"]]
                    assert got == list(heights), (first, count)
                    assert [x["height"] for x in resp["commits"]] == commit_hs
                    assert [x["height"] for x in resp["validator_sets"]] == set_hs
                    by_height = {h["height"]: h for h in resp["headers"]}
                    for entry in resp["validator_sets"]:
                        vh = set_hash(entry["validators"])
                        h = entry["height"]
                        if h in by_height:
                            assert by_height[h]["validators_hash"] == vh
                        else:  # one past the range: the set after the last header's change
                            assert by_height[h - 1]["next_validators_hash"] == vh
                    # links, block ids and the commits, checked from the spec
                    for a, b in zip(resp["headers"], resp["headers"][1:], strict=False):
                        assert b["prev_hash"] == block_id(a)
                    for commit in resp["commits"]:
                        hd = by_height[commit["height"]]
                        vset = [e for e in resp["validator_sets"]
                                if set_hash(e["validators"]) == hd["validators_hash"]]
                        assert commit_valid(commit, hd["height"], block_id(hd),
                                            vset[0]["validators"])
                # §5 from the trust anchor, in small steps over the sparse commits
                genesis, sets = await trusted_genesis(c, chain_dir)
                tip = await sync(c, genesis, sets, count=7)
                assert tip["height"] == TIP
                assert block_id(tip) == (await c.ok("/v1/info"))["tip_id"]
                assert len(sets) == 3
        finally:
            await node.stop()
    run(body())


def test_headers_bad_requests(chain_dir: Path) -> None:
    async def body() -> None:
        node = await serve(chain_dir)
        try:
            async with aiohttp.ClientSession() as s:
                c = Client(s, node.url)
                for query in ("", "?count=5", "?from=x&count=5", "?from=-1&count=5",
                              "?from=1&count=0", "?from=1&count=1001", "?from=1&count=2.5",
                              "?from=1&from=2&count=3", "?from=%201"):
                    await c.error("/v1/headers" + query, 400, "bad_request")
                await c.error(f"/v1/headers?from={TIP + 1}&count=1", 404, "not_found")
                resp = await c.ok("/v1/headers?from=0")  # count defaults to 1000
                assert len(resp["headers"]) == TIP + 1
        finally:
            await node.stop()
    run(body())


def test_commits_and_validators(chain_dir: Path) -> None:
    async def body() -> None:
        node = await serve(chain_dir)
        try:
            async with aiohttp.ClientSession() as s:
                c = Client(s, node.url)
                headers = (await c.ok("/v1/headers?from=0"))["headers"]
                for h in range(TIP + 1):
                    vals = await c.ok(f"/v1/validators/{h}")
                    assert vals["height"] == h
                    assert set_hash(vals["validators"]) == headers[h]["validators_hash"]
                    if h in COMMIT_HEIGHTS:
                        commit = await c.ok(f"/v1/commits/{h}")
                        assert commit_valid(commit, h, block_id(headers[h]), vals["validators"])
                    else:
                        await c.error(f"/v1/commits/{h}", 404, "not_found")
                nxt = await c.ok(f"/v1/validators/{TIP + 1}")
                assert set_hash(nxt["validators"]) == headers[TIP]["next_validators_hash"]
                await c.error(f"/v1/validators/{TIP + 2}", 404, "not_found")
                await c.error(f"/v1/commits/{TIP + 1}", 404, "not_found")
                await c.error("/v1/commits/x", 400, "bad_request")
                await c.error("/v1/validators/-3", 400, "bad_request")
        finally:
            await node.stop()
    run(body())


def test_tx_proofs_and_lookup(chain_dir: Path) -> None:
    with hc.Chain.open(chain_dir, readonly=True) as chain:
        ids = {h: chain.tx_ids(h) for h in (0, 7, TIP)}

    async def body() -> None:
        node = await serve(chain_dir)
        try:
            async with aiohttp.ClientSession() as s:
                c = Client(s, node.url)
                for h, tx_ids in ids.items():
                    header = (await c.ok(f"/v1/headers?from={h}&count=1"))["headers"][0]
                    assert header["height"] == h  # heights 0, 7, 25: 7 extends to 8
                    for i, tx_id in enumerate(tx_ids):
                        got = await c.ok(f"/v1/tx/{tx_id.hex()}")
                        assert set(got) == {"tx", "height", "proof"}
                        assert got["height"] == h
                        assert H(wire.encode(got["tx"]["body"])) == tx_id
                        proof = got["proof"]
                        assert set(proof) == {"leaf_index", "tree_size", "path"}
                        assert (proof["leaf_index"], proof["tree_size"]) == (i, len(tx_ids))
                        assert rfc9162.verify(tx_id, proof, header["tx_root"])
                        if got["tx"]["body"]["type"] == "device.enroll":
                            assert h == 0  # the issuers' enrollments
                            continue
                        digest = got["tx"]["body"]["data"]["digest"]
                        found = await c.ok(f"/v1/lookup/{digest.hex()}")
                        assert found == {"tx_ids": [tx_id]}
                await c.error(f"/v1/tx/{bytes(32).hex()}", 404, "not_found")
                await c.error("/v1/tx/abc", 400, "bad_request")
                await c.error(f"/v1/lookup/{bytes(31).hex()}", 400, "bad_request")
                assert await c.ok(f"/v1/lookup/{bytes(32).hex()}") == {"tx_ids": []}
        finally:
            await node.stop()
    run(body())


# -- transactions, blocks, wait -------------------------------------------------------------


def test_post_tx_included_in_later_blocks(chain_dir: Path) -> None:
    issuer = keys(chain_dir, "issuer")[1]  # office-1: ecdsa-p256 in a mixed chain
    admin = keys(chain_dir, "admin")[0]
    terminal = terminal_key()
    enrollment = enroll(admin, terminal)
    enrollment_id = H(wire.encode(enrollment["body"]))

    async def body() -> None:
        node = await serve(chain_dir, block_interval_ms=150)
        try:
            async with aiohttp.ClientSession() as s:
                c = Client(s, node.url)
                tx = deposit(chain_dir, issuer, 1)
                tx_id = H(wire.encode(tx["body"]))
                assert await c.post(tx) == (202, {"tx_id": tx_id})
                assert (await c.post(tx))[1]["error"] == "duplicate"
                # an audit head before the terminal's enrollment, an enrollment by a non-admin
                assert (await c.post(audit_head(terminal, enrollment_id, 1)))[1]["error"] == \
                    "bad_reference"
                assert (await c.post(enroll(issuer, terminal)))[1]["error"] == "unknown_sender"
                status, got = await c.post(enrollment)
                assert status == 202
                # the enrollment is pending: it counts already
                head = audit_head(terminal, enrollment_id, 1)
                status, got = await c.post(head)
                assert status == 202 and got["tx_id"] == H(wire.encode(head["body"]))
                accepted = [tx_id, enrollment_id, got["tx_id"]]
                # the wait answers when the block is there (within a few intervals)
                started = time.monotonic()
                waited = await c.ok(f"/v1/wait?height={TIP + 1}&timeout_ms=10000")
                assert waited["height"] >= TIP + 1 and time.monotonic() - started < 5
                for _ in range(50):  # the txs may straddle two blocks
                    if not node.pending:
                        break
                    await asyncio.sleep(0.1)
                assert node.pending == []
                genesis, sets = await trusted_genesis(c, chain_dir)
                tip = await sync(c, genesis, sets)
                for i in accepted:
                    got = await c.ok(f"/v1/tx/{i.hex()}")
                    h = got["height"]
                    assert h > TIP
                    header = (await c.ok(f"/v1/headers?from={h}&count=1"))["headers"][0]
                    assert header["height"] == h and h <= tip["height"]
                    assert rfc9162.verify(i, got["proof"], header["tx_root"])
                    commit = await c.ok(f"/v1/commits/{h}")  # appended blocks: all committed
                    vset = (await c.ok(f"/v1/validators/{h}"))["validators"]
                    assert commit_valid(commit, h, block_id(header), vset)
                    # a tx's timestamp is within max_skew of its block's
                    assert abs(got["tx"]["body"]["timestamp"] - header["timestamp"]) <= 60_000
                assert (await c.post(tx))[1]["error"] == "duplicate"  # now in the chain
                found = await c.ok(f"/v1/lookup/{tx['body']['data']['digest'].hex()}")
                assert found == {"tx_ids": [tx_id]}
        finally:
            await node.stop()
        # a restarted node knows the enrollment from the chain
        node = await serve(chain_dir)
        try:
            async with aiohttp.ClientSession() as s:
                c = Client(s, node.url)
                assert (await c.post(audit_head(terminal, enrollment_id, 2)))[0] == 202
                stranger = terminal_key(1)
                assert (await c.post(audit_head(stranger, enrollment_id, 3)))[1]["error"] == \
                    "bad_reference"
        finally:
            await node.stop()
    run(body())


def test_second_node_on_the_chain_dir_sees_later_enrollments(chain_dir: Path) -> None:
    """A node serving the producer's chain directory on its own learns enrollments made
    after it started from the chain; one made with share_state_with sees the producer's
    pending pool at once (the simulated hall's pair of nodes)."""
    admin = keys(chain_dir, "admin")[0]
    early, late = terminal_key(0), terminal_key(1)

    async def body() -> None:
        producer = await serve(chain_dir)
        second = await serve(chain_dir, peer_key_seed="second node")  # started before
        follower = await serve(chain_dir, peer_key_seed="follower", share_state_with=producer)
        try:
            async with aiohttp.ClientSession() as s:
                p, c = Client(s, producer.url), Client(s, second.url)
                f = Client(s, follower.url)
                e_early, e_late = enroll(admin, early), enroll(admin, late)
                id_early, id_late = (H(wire.encode(e["body"])) for e in (e_early, e_late))
                assert (await p.post(e_early))[0] == 202
                assert await producer.produce_block() is not None
                # accepted by the producer and pending there: not in the chain yet
                assert (await p.post(e_late))[0] == 202
                assert (await c.post(audit_head(late, id_late, 1)))[1]["error"] == \
                    "bad_reference"
                assert (await c.post(audit_head(early, id_early, 2)))[0] == 202
                # the follower shares the producer's pool: the pending enrollment counts,
                # and what it accepts is pending at the producer (one pool)
                head = audit_head(late, id_late, 3)
                assert (await f.post(head))[0] == 202
                assert H(wire.encode(head["body"])) in producer.pending
                assert follower.pending == producer.pending
                assert (await p.post(head))[1]["error"] == "duplicate"
                block = await producer.produce_block()
                assert block is not None and H(wire.encode(head["body"])) in block.tx_ids
                assert follower.pending == [] and second.pending != []
                assert (await c.post(audit_head(late, id_late, 4)))[0] == 202
        finally:
            await follower.stop()
            await second.stop()
            await producer.stop()
    run(body())


def test_post_tx_rejections(chain_dir: Path) -> None:
    """The generic refusals at POST /v1/tx (each §6 rule has its own test in
    test_ledger_rules.py)."""
    issuer = keys(chain_dir, "issuer")[0]
    other = keys(chain_dir, "issuer")[2]
    admin = keys(chain_dir, "admin")[0]
    terminal = terminal_key()

    def resigned(body: dict, key: hc.Key = issuer, **over: Any) -> dict:
        tx = {"body": body, "alg": key.alg, "public_key": key.public_key,
              "signature": hc.sign(key, wire.encode(body))}
        tx.update(over)
        return tx

    good = deposit(chain_dir, issuer, 7)
    bad_sig = dict(good, signature=bytes([good["signature"][0] ^ 1]) + good["signature"][1:])
    enrollment = enroll(admin, terminal)
    cases: list[tuple[Any, int, str]] = [
        (b"\xff", 400, "bad_tx"),  # not CBOR
        (wire.encode(good) + b"\x00", 400, "bad_tx"),  # trailing byte
        (wire.encode([good]), 400, "bad_tx"),  # not a map
        (deposit(chain_dir, issuer, 7, chain_id="another-chain"), 400, "bad_tx"),
        (resigned({**good["body"], "sender": other.peer_id}), 400, "bad_tx"),  # key != sender
        (resigned({**good["body"], "extra": 1}), 400, "bad_tx"),
        (resigned({**good["body"], "type": "coin.transfer"}), 400, "bad_tx"),
        (resigned({**good["body"], "data": {**good["body"]["data"], "digest": b"short"}}),
         400, "bad_tx"),
        (resigned({**good["body"], "nonce": bytes(15)}), 400, "bad_tx"),
        (resigned({**good["body"], "timestamp": good["body"]["timestamp"] - 120_000}),
         400, "bad_tx"),  # more than max_skew from the node's time
        (dict(good, alg="rsa"), 400, "bad_tx"),
        (bad_sig, 400, "bad_signature"),
        (dict(good, signature=hc.sign(other, wire.encode(good["body"]))), 400, "bad_signature"),
        # deposits only by a key its enrollment enrolls as an issuer
        (deposit(chain_dir, terminal, 8, enrollment=good["body"]["data"]["enrollment"]),
         400, "bad_reference"),
        (enroll(issuer, terminal), 400, "unknown_sender"),
        (resigned({**enrollment["body"], "data": {
            **enrollment["body"]["data"], "terminal": bytes(32)}}, admin),
         400, "bad_tx"),  # terminal is not SM3(public_key)
    ]

    async def body() -> None:
        node = await serve(chain_dir)
        try:
            async with aiohttp.ClientSession() as s:
                c = Client(s, node.url)
                for i, (tx, status, code) in enumerate(cases):
                    got = await c.post(tx)
                    assert (got[0], got[1].get("error")) == (status, code), (i, got)
                assert (await c.post(good, content_type="application/json"))[0] == 415
                status, got = await c.post(b"\x00" * (64 * 1024 + 1))
                assert (status, got["error"]) == (413, "too_large")
                assert (await c.post(good))[0] == 202
                assert node.pending == [H(wire.encode(good["body"]))]
                # block production disabled: nothing is appended
                assert await c.ok("/v1/wait?height=26&timeout_ms=300") == {"height": TIP}
                assert await node.produce_block() is not None
                assert (await c.post(good))[1]["error"] == "duplicate"  # in the chain
        finally:
            await node.stop()
    run(body())


def test_wait(chain_dir: Path) -> None:
    async def body() -> None:
        node = await serve(chain_dir, block_interval_ms=100, empty_blocks=True)
        try:
            async with aiohttp.ClientSession() as s:
                c = Client(s, node.url)
                started = time.monotonic()
                assert (await c.ok("/v1/wait?height=3&timeout_ms=30000"))["height"] >= TIP
                assert time.monotonic() - started < 1
                got = await c.ok(f"/v1/wait?height={TIP + 6}&timeout_ms=10000")
                assert got["height"] >= TIP + 6  # past the set change at 29
                started = time.monotonic()
                got = await c.ok("/v1/wait?height=100000&timeout_ms=400")
                assert 0.35 < time.monotonic() - started < 3 and got["height"] < 100000
                await c.error("/v1/wait?height=1&timeout_ms=30001", 400, "bad_request")
                await c.error("/v1/wait?timeout_ms=10", 400, "bad_request")
                # the grown chain (empty blocks, a set change) verifies from the anchor
                genesis, sets = await trusted_genesis(c, chain_dir)
                tip = await sync(c, genesis, sets, count=10)
                assert tip["height"] >= TIP + 6 and len(sets) == 4
        finally:
            await node.stop()
    run(body(), timeout=30)


# -- misbehaviours --------------------------------------------------------------------------


def test_misbehaviour_parsing() -> None:
    assert Misbehaviour.parse("withhold@10") == Misbehaviour("withhold", 10)
    assert Misbehaviour.parse("slow").start == 0
    assert Misbehaviour.parse("equivocate").start == 1
    for bad in ("fly", "slow@", "slow@-1", "slow@x"):
        with pytest.raises(ValueError):
            Misbehaviour.parse(bad)
    assert cli._DISTRICT_MODES == MODES


def test_forge_commit(chain_dir: Path) -> None:
    with hc.Chain.open(chain_dir, readonly=True) as chain:
        honest = {h: wire.decode(chain.commit(h)) for h in (16, 20, 25)}

    async def body() -> None:
        node = await serve(chain_dir, misbehave="forge-commit@20")
        try:
            async with aiohttp.ClientSession() as s:
                c = Client(s, node.url)
                headers = (await c.ok("/v1/headers?from=0"))["headers"]
                for h in (16, 20, 25):
                    commit = await c.ok(f"/v1/commits/{h}")
                    vset = (await c.ok(f"/v1/validators/{h}"))["validators"]
                    valid = commit_valid(commit, h, block_id(headers[h]), vset)
                    assert valid == (h < 20)
                    assert commit["block_id"] == honest[h]["block_id"]
                    assert [x["index"] for x in commit["signatures"]] == \
                        [x["index"] for x in honest[h]["signatures"]]
                genesis, sets = await trusted_genesis(c, chain_dir)
                trusted = verify_segment(genesis, sets,
                                         await c.ok("/v1/headers?from=1&count=19"))
                assert trusted["height"] == 19
                with pytest.raises(Rejected) as exc:
                    verify_segment(trusted, sets, await c.ok("/v1/headers?from=20"))
                assert (exc.value.rule, exc.value.height) == ("rule6", TIP)
        finally:
            await node.stop()
    run(body())


def test_wrong_link(chain_dir: Path, base_chain: Path) -> None:
    with hc.Chain.open(base_chain, readonly=True) as chain:
        real = [wire.decode(x) for x in chain.headers(0, TIP + 1)]

    async def body() -> None:
        node = await serve(chain_dir, misbehave="wrong-link@5")
        try:
            async with aiohttp.ClientSession() as s:
                c = Client(s, node.url)
                resp = await c.ok("/v1/headers?from=1&count=8")
                hs = {h["height"]: h for h in resp["headers"]}
                assert sorted(hs) == list(range(1, 9))
                assert hs[4] == real[4]
                assert hs[5]["prev_hash"] != block_id(real[4])  # the one bad link
                assert {k: v for k, v in hs[5].items() if k != "prev_hash"} == \
                    {k: v for k, v in real[5].items() if k != "prev_hash"}
                for h in (6, 7, 8):
                    assert hs[h]["prev_hash"] == block_id(hs[h - 1])
                vset = (await c.ok("/v1/validators/5"))["validators"]
                # The validators never signed the fork: the commit at 8 is the real chain's,
                # valid for the real block only; 5 has none.
                commit = await c.ok("/v1/commits/8")
                assert commit_valid(commit, 8, block_id(real[8]), vset)
                assert commit["block_id"] != block_id(hs[8])
                async with s.get(node.url + "/v1/commits/5") as r404:
                    assert r404.status == 404
                genesis, sets = await trusted_genesis(c, chain_dir)
                with pytest.raises(Rejected) as exc:
                    verify_segment(genesis, sets, resp)
                assert (exc.value.rule, exc.value.height) == ("rule2", 5)
                info = await c.ok("/v1/info")
                tip = (await c.ok(f"/v1/headers?from={TIP}"))["headers"][0]
                assert info["tip_id"] == block_id(tip) != block_id(real[TIP])
        finally:
            await node.stop()
    run(body())


def test_set_hijack(chain_dir: Path) -> None:
    with hc.Chain.open(chain_dir, readonly=True) as chain:
        params = chain.params
    evil = [{"alg": k.alg, "public_key": k.public_key, "power": 1}
            for k in hijack_keys(params)]

    async def body() -> None:
        node = await serve(chain_dir, misbehave="set-hijack@12")
        try:
            async with aiohttp.ClientSession() as s:
                c = Client(s, node.url)
                resp = await c.ok("/v1/headers?from=10&count=10")
                hs = {h["height"]: h for h in resp["headers"]}
                assert sorted(hs) == list(range(10, 20))
                assert [x["height"] for x in resp["commits"]] == [12, 19]
                assert [x["height"] for x in resp["validator_sets"]] == [10, 13]
                real_set = resp["validator_sets"][0]["validators"]
                assert resp["validator_sets"][1]["validators"] == evil
                assert hs[12]["validators_hash"] == set_hash(real_set)
                assert hs[12]["next_validators_hash"] == set_hash(evil)
                for h in range(13, 20):
                    assert hs[h]["validators_hash"] == hs[h]["next_validators_hash"] == \
                        set_hash(evil)
                    assert hs[h]["prev_hash"] == block_id(hs[h - 1])
                change = resp["commits"][0]
                assert not commit_valid(change, 12, block_id(hs[12]), real_set)
                assert commit_valid(change, 12, block_id(hs[12]), evil)  # self-certified
                assert commit_valid(resp["commits"][1], 19, block_id(hs[19]), evil)
                assert (await c.ok("/v1/validators/13"))["validators"] == evil
                assert (await c.ok("/v1/validators/12"))["validators"] == real_set
                genesis, sets = await trusted_genesis(c, chain_dir)
                trusted = verify_segment(genesis, sets, await c.ok("/v1/headers?from=1&count=9"))
                assert trusted["height"] == 9
                with pytest.raises(Rejected) as exc:
                    verify_segment(trusted, sets, resp)
                assert (exc.value.rule, exc.value.height) == ("rule5", 12)
        finally:
            await node.stop()
    run(body())


def test_equivocate_gives_evidence(chain_dir: Path, base_chain: Path, tmp_path: Path) -> None:
    honest_dir = copy_chain(base_chain, tmp_path / "honest")

    async def body() -> None:
        honest = await serve(honest_dir)
        liar = await serve(chain_dir, misbehave="equivocate@8")
        try:
            async with aiohttp.ClientSession() as s:
                a, b = Client(s, honest.url), Client(s, liar.url)
                ca, cb = await a.ok("/v1/commits/8"), await b.ok("/v1/commits/8")
                vset = (await a.ok("/v1/validators/8"))["validators"]
                assert (await b.ok("/v1/validators/8"))["validators"] == vset
                ha = (await a.ok("/v1/headers?from=8&count=1"))["headers"][0]
                hb = (await b.ok("/v1/headers?from=8&count=1"))["headers"][0]
                assert block_id(ha) != block_id(hb) and hb["timestamp"] == ha["timestamp"] + 1
                assert hb["prev_hash"] == ha["prev_hash"]  # both extend the real 7
                assert commit_valid(ca, 8, block_id(ha), vset)
                assert commit_valid(cb, 8, block_id(hb), vset)  # two valid commits: evidence
                # each node serves a consistent chain: both sync from the anchor
                ga, sa = await trusted_genesis(a, honest_dir)
                gb, sb = await trusted_genesis(b, chain_dir)
                tip_a = await sync(a, ga, sa, count=6)
                tip_b = await sync(b, gb, sb, count=6)
                assert tip_a["height"] == tip_b["height"] == TIP
                assert block_id(tip_a) != block_id(tip_b)
                below = await b.ok("/v1/headers?from=0&count=8")
                assert below["headers"] == (await a.ok("/v1/headers?from=0&count=8"))["headers"]
        finally:
            await liar.stop()
            await honest.stop()
    run(body())


def test_bad_proof(chain_dir: Path) -> None:
    with hc.Chain.open(chain_dir, readonly=True) as chain:
        low, high = chain.tx_ids(5)[0], chain.tx_ids(12)[1]
    issuer = keys(chain_dir, "issuer")[0]

    async def body() -> None:
        node = await serve(chain_dir, misbehave="bad-proof@10", block_interval_ms=100)
        try:
            async with aiohttp.ClientSession() as s:
                c = Client(s, node.url)
                headers = (await c.ok("/v1/headers?from=0"))["headers"]
                for tx_id, h, good in ((low, 5, True), (high, 12, False)):
                    got = await c.ok(f"/v1/tx/{tx_id.hex()}")
                    assert got["height"] == h and len(got["proof"]["path"]) == 1
                    assert rfc9162.verify(tx_id, got["proof"], headers[h]["tx_root"]) == good
                # a one-tx block: an empty path gets an extra element
                tx = deposit(chain_dir, issuer, 11)
                tx_id = (await c.post(tx))[1]["tx_id"]
                await c.ok(f"/v1/wait?height={TIP + 1}&timeout_ms=5000")
                got = await c.ok(f"/v1/tx/{tx_id.hex()}")
                header = (await c.ok(f"/v1/headers?from={got['height']}&count=1"))["headers"][0]
                assert header["tx_root"] == H(b"\x00" + tx_id)  # the tree of one leaf
                assert got["proof"]["tree_size"] == 1 and len(got["proof"]["path"]) == 1
                assert not rfc9162.verify(tx_id, got["proof"], header["tx_root"])
                assert rfc9162.verify(tx_id, dict(got["proof"], path=[]), header["tx_root"])
        finally:
            await node.stop()
    run(body())


def test_garbage(chain_dir: Path, base_chain: Path, tmp_path: Path) -> None:
    other_dir = copy_chain(base_chain, tmp_path / "all")

    async def body() -> None:
        node = await serve(chain_dir, misbehave="garbage@20")
        always = await serve(other_dir, misbehave="garbage")
        try:
            async with aiohttp.ClientSession() as s:
                c, g = Client(s, node.url), Client(s, always.url)
                assert (await c.get("/v1/commits/16"))[0] == 200  # below 20: honest
                assert (await c.get("/v1/headers?from=0&count=10"))[0] == 200
                for path in ("/v1/commits/20", "/v1/info", "/v1/headers?from=15"):
                    status, raw = await c.raw(path)
                    assert status == 200 and raw == GARBAGE_BODY
                    with pytest.raises(wire.WireError):
                        wire.decode(raw)
                assert (await c.get("/v1/commits/21"))[0] == 404  # errors: no height
                for path in ("/v1/commits/0", "/v1/commits/21", "/v1/info"):
                    status, raw = await g.raw(path)
                    assert raw == GARBAGE_BODY and status in (200, 404)
        finally:
            await always.stop()
            await node.stop()
    run(body())


def test_oversize(chain_dir: Path) -> None:
    async def body() -> None:
        node = await serve(chain_dir, misbehave="oversize")
        try:
            async with aiohttp.ClientSession() as s, s.get(node.url + "/v1/info") as r:
                assert r.status == 200 and r.content_type == CBOR
                assert r.content_length is None  # streamed, chunked
                got = 0
                while got <= MAX_BODY:
                    chunk = await r.content.read(1 << 16)
                    if not chunk:
                        break
                    got += len(chunk)
                assert got > MAX_BODY  # the client has to stop counting by itself
            async with aiohttp.ClientSession() as s, s.get(node.url + "/v1/info") as r:
                assert len(await r.read()) == OVERSIZE_BYTES + 5
        finally:
            await node.stop()
    run(body())


def test_slow(chain_dir: Path) -> None:
    async def body() -> None:
        node = await serve(chain_dir, misbehave="slow")
        try:
            async with aiohttp.ClientSession() as s, s.get(node.url + "/v1/info") as r:
                assert r.status == 200 and r.content_length > 100
                received = b""
                deadline = time.monotonic() + 1.2
                with pytest.raises(TimeoutError):
                    while True:
                        left = deadline - time.monotonic()
                        received += await asyncio.wait_for(r.content.read(1024), left)
                # about 8 bytes per second: 4 at once, 4 more every 0.5 s
                assert SLOW_CHUNK <= len(received) <= 4 * SLOW_CHUNK
                assert r.content_length > len(received)
        finally:
            await node.stop()  # ends the trickle of the abandoned response too
    run(body())


def test_withhold(chain_dir: Path) -> None:
    with hc.Chain.open(chain_dir, readonly=True) as chain:
        tx_low, tx_high = chain.tx_ids(5)[0], chain.tx_ids(12)[0]
        digest_high = wire.decode(chain.tx(tx_high)[0])["body"]["data"]["digest"]

    async def body() -> None:
        node = await serve(chain_dir, misbehave="withhold@10")
        try:
            async with aiohttp.ClientSession() as s:
                c = Client(s, node.url)
                assert (await c.ok("/v1/info"))["height"] == TIP  # claims the real tip
                empty = {"headers": [], "commits": [], "validator_sets": []}
                assert await c.ok("/v1/headers?from=11") == empty
                resp = await c.ok("/v1/headers?from=5&count=100")
                assert [h["height"] for h in resp["headers"]] == [5, 6, 7, 8, 9]
                assert [x["height"] for x in resp["commits"]] == [9]
                await c.ok("/v1/commits/8")
                await c.error("/v1/commits/12", 404, "not_found")
                await c.ok("/v1/validators/10")
                await c.error("/v1/validators/11", 404, "not_found")
                await c.ok(f"/v1/tx/{tx_low.hex()}")
                await c.error(f"/v1/tx/{tx_high.hex()}", 404, "not_found")
                assert await c.ok(f"/v1/lookup/{digest_high.hex()}") == {"tx_ids": []}
                assert await c.ok("/v1/wait?height=20&timeout_ms=0") == {"height": TIP}
                await c.error(f"/v1/headers?from={TIP + 1}", 404, "not_found")
        finally:
            await node.stop()
    run(body())


# -- mDNS and the process ---------------------------------------------------------------------


def test_mdns_advertisement(chain_dir: Path, other_chain: Path, tmp_path: Path) -> None:
    other_dir = copy_chain(other_chain, tmp_path / "other")

    async def body() -> None:
        zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        events: list[tuple[str, ServiceStateChange]] = []
        changed = asyncio.Event()

        def on_change(zeroconf: Any, service_type: str, name: str,
                      state_change: ServiceStateChange) -> None:
            events.append((name, state_change))
            changed.set()

        async def until(pred: Any, timeout: float = 10) -> None:
            deadline = time.monotonic() + timeout
            while not pred():
                changed.clear()
                left = deadline - time.monotonic()
                assert left > 0, events
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), left)

        browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE, handlers=[on_change])
        ours = theirs = None
        try:
            ours, theirs = await asyncio.gather(
                serve(chain_dir, advertise=True, district="east-3"),
                serve(other_dir, advertise=True, district="west-1"))
            added = lambda: {n for n, st in events if st is ServiceStateChange.Added}  # noqa: E731
            # Other fixtures on this machine may advertise on loopback too: keep our two
            # nodes' instances (by peer id), whatever else comes and goes.
            peers = {ours.peer_id.hex(), theirs.peer_id.hex()}
            txt: dict[str, tuple[dict, int, str]] = {}
            seen: set[str] = set()
            while {entry[0]["peer"] for entry in txt.values()} != peers:
                await until(lambda: bool(added() - seen))
                for name in added() - seen:
                    seen.add(name)
                    info = AsyncServiceInfo(SERVICE_TYPE, name)
                    if not await info.async_request(zc.zeroconf, 3000):
                        continue  # a stranger gone already
                    props = {k.decode(): v.decode() for k, v in info.properties.items()}
                    if props.get("peer") in peers:
                        assert info.parsed_addresses() == ["127.0.0.1"]
                        txt[props["chain"]] = (props, info.port, name)
            assert set(txt) == {CHAIN_ID, "hil-other-chain"}
            props, port, our_name = txt[CHAIN_ID]
            assert props == {"chain": CHAIN_ID, "proto": "1", "district": "east-3",
                             "peer": ours.peer_id.hex()}
            assert port == ours.port
            assert txt["hil-other-chain"][0]["peer"] == theirs.peer_id.hex()
            # a client keeps only its chain: the other one is there to be ignored
            mine = [p for p in txt.values() if p[0]["chain"] == CHAIN_ID and p[0]["proto"] == "1"]
            assert len(mine) == 1
            await ours.stop()
            ours = None
            await until(lambda: (our_name, ServiceStateChange.Removed) in events)
        finally:
            for node in (ours, theirs):
                if node is not None:
                    await node.stop()
            await browser.async_cancel()
            await zc.async_close()
    run(body(), timeout=40)


def test_cli_process_ready_log_and_sigterm(chain_dir: Path) -> None:
    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    events: list[tuple[str, ServiceStateChange]] = []
    seen = threading.Condition()

    def on_change(zeroconf: Any, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        with seen:
            events.append((name, state_change))
            seen.notify_all()

    def ours(name: str) -> bool:  # other fixtures may advertise on loopback too
        return name.startswith("hil proc-test ")

    def wait_for(state: ServiceStateChange, timeout: float = 10) -> str:
        with seen:
            assert seen.wait_for(lambda: any(st is state and ours(n) for n, st in events),
                                 timeout), events
            return next(n for n, st in events if st is state and ours(n))

    browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
    try:
        proc = DistrictNodeProcess(chain_dir, advertise=True, district="proc-test",
                                   peer_key_seed="proc", block_interval_ms=100)
        with proc:
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", proc.url)
            with urllib.request.urlopen(proc.url + "/v1/info", timeout=10) as r:
                assert r.headers["Content-Type"] == CBOR
                info = wire.decode(r.read())
            assert info["chain_id"] == CHAIN_ID and info["district"] == "proc-test"
            assert "TEST FIXTURE" in info["software"]
            name = wait_for(ServiceStateChange.Added)
            assert name.endswith("." + SERVICE_TYPE)
            assert proc.stop() == 0
            assert wait_for(ServiceStateChange.Removed) == name  # unregistered on SIGTERM
            log = proc.log_text()
        assert "GET /v1/info 200" in log
        assert "SIGTERM: stopping" in log and "unregistered" in log
        assert log.rstrip().endswith("stopped")
    finally:
        browser.cancel()
        zc.close()


def test_cli_help_and_bad_options(chain_dir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["district-node", "--help"])
    assert exc.value.code == 0
    assert "TEST FIXTURE" in capsys.readouterr().out
    for argv in (["--misbehave", "fly"], ["--misbehave", "slow@x"], ["--port", "-1"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(["district-node", "--chain", str(chain_dir), "--port", "0", *argv])
        assert exc.value.code == 2
    missing = DistrictNodeProcess(chain_dir / "nothing-here", ready_timeout=20)
    with pytest.raises(RuntimeError, match="exited with status 2"):
        missing.start()
    missing.log_path.unlink()


# -- spliced bodies: byte-identical to decoding and re-encoding --------------------------------


def old_headers_body(node: DistrictNode, first: int, count: int) -> bytes | None:
    """The /v1/headers body as the double built it before splicing: every stored header,
    commit and validator set decoded, the response object encoded by wire.encode. None for
    from > tip (404)."""
    view = node.view
    tip = view.tip
    if first > tip:
        return None
    m = node.misbehave
    limit = min(tip, m.start) if m is not None and m.mode == "withhold" else tip
    if first > limit:
        return wire.encode({"headers": [], "commits": [], "validator_sets": []})
    last = min(first + count - 1, limit)
    in_range = view.commit_heights(first, last)
    if in_range:
        last = in_range[-1]
    headers = [wire.decode(h) for h in view.headers(first, last - first + 1)]
    changes = [h["height"] for h in headers
               if h["next_validators_hash"] != h["validators_hash"]]
    with_commit = set(view.commit_heights(first, last))
    commits = [wire.decode(view.commit(h)) for h in sorted({*changes, last})
               if h in with_commit]
    sets = [{"height": h, "validators": wire.decode(view.validator_set(h))}
            for h in [first, *(c + 1 for c in changes)]]
    return wire.encode({"headers": headers, "commits": commits, "validator_sets": sets})


SPLICE_MODES = [None, *MODES, "forge-commit@9", "wrong-link@9", "wrong-link@10",
                "set-hijack@9", "set-hijack@10", "set-hijack@19", "equivocate@9",
                "equivocate@20", "withhold@9", "withhold@10", "withhold@25", "garbage@12"]


@pytest.fixture(scope="module")
def quorum_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Set changes every 3 blocks, seeded powers, quorum-signed commits on every block."""
    out = tmp_path_factory.mktemp("dn-quorum")
    hc.generate(out, hc.ChainParams(chain_id=CHAIN_ID, seed="q", validators=3,
                                    alg="ecdsa-p256", power_max=5, set_change_every=3,
                                    sign_quorum=True), blocks=14, txs_per_block=1)
    return out


@pytest.mark.parametrize("chain_name", ["base_chain", "quorum_chain"])
def test_spliced_headers_equal_the_decoded_encoding(chain_name: str, tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:
    chain_dir = copy_chain(request.getfixturevalue(chain_name), tmp_path / "chain")
    tip = hc.Chain.open(chain_dir, readonly=True).tip_height
    counts = (1, 2, 3, 4, 5, 9, 10, 11, 20, 1000)
    for mode in SPLICE_MODES:
        node = DistrictNode(chain_dir, block_interval_ms=0, misbehave=mode, log=_log)
        try:
            compared = 0
            for first in range(tip + 2):
                for count in counts:
                    old = old_headers_body(node, first, count)
                    if old is None:
                        with pytest.raises(Exception, match="past the tip"):
                            node.headers_reply(first, count)
                        continue
                    reply = node.headers_reply(first, count)
                    assert reply.body == old, (mode, first, count)
                    assert wire.encode(reply.obj) == old
                    compared += 1
            assert compared == (tip + 1) * len(counts)
        finally:
            node.chain.close()


@pytest.mark.parametrize("mode", [None, "set-hijack@12", "forge-commit@4", "equivocate@9",
                                  "withhold@16"])
def test_spliced_bodies_over_http(chain_dir: Path, mode: str | None) -> None:
    """/v1/headers, /v1/commits, /v1/validators and /v1/tx bodies on the wire equal
    wire.encode of the decoded stored items."""
    with hc.Chain.open(chain_dir, readonly=True) as chain:
        tx_ids = [t for h in range(TIP + 1) for t in chain.tx_ids(h)]

    async def body() -> None:
        node = await serve(chain_dir, misbehave=mode)
        view = node.view
        try:
            async with aiohttp.ClientSession() as s:
                c = Client(s, node.url)
                for first, count in ((0, 1000), (5, 7), (9, 1), (10, 10), (17, 3)):
                    status, raw = await c.raw(f"/v1/headers?from={first}&count={count}")
                    assert (status, raw) == (200, old_headers_body(node, first, count))
                for h in range(TIP + 2):
                    status, raw = await c.raw(f"/v1/commits/{h}")
                    stored = view.commit(h) if h <= TIP and not node._withheld(h) else None
                    if stored is None:
                        assert status == 404
                    else:
                        assert (status, raw) == (200, wire.encode(wire.decode(stored)))
                    status, raw = await c.raw(f"/v1/validators/{h}")
                    if node._withheld(h):
                        assert status == 404
                        continue
                    assert (status, raw) == (200, wire.encode({
                        "height": h, "validators": wire.decode(view.validator_set(h))}))
                for tx_id in tx_ids[::7]:
                    status, raw = await c.raw(f"/v1/tx/{tx_id.hex()}")
                    stored, height, _ = node.chain.tx(tx_id)
                    if node._withheld(height):
                        assert status == 404
                        continue
                    assert status == 200
                    got = wire.decode(raw)
                    assert got["tx"] == wire.decode(stored)
                    assert raw == wire.encode(got)
        finally:
            await node.stop()
    run(body())


_leaves = (st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1)
           | st.binary(max_size=40) | st.text(max_size=30))
_trees = st.recursive(_leaves, lambda inner: st.lists(inner, max_size=30)
                      | st.dictionaries(st.text(max_size=23).filter(
                          lambda k: len(k.encode()) <= 23), inner, max_size=8),
                      max_leaves=60)


def _splice(tree: Any, rng: Any) -> Any:
    """``tree`` with random subtrees replaced by their canonical CBOR as _Raw."""
    if rng.random() < 0.3:
        return dn._Raw(wire.encode(tree))
    if type(tree) is list:
        return [_splice(x, rng) for x in tree]
    if type(tree) is dict:
        return {k: _splice(v, rng) for k, v in tree.items()}
    return tree


@settings(max_examples=300, deadline=None)
@given(_trees, st.randoms(use_true_random=False))
def test_encode_with_spliced_items_is_wire_encode(tree: Any, rng: Any) -> None:
    spliced = _splice(tree, rng)
    assert dn._encode(spliced) == wire.encode(tree)
    assert dn._plain(spliced) == tree
    with pytest.raises(wire.WireError):
        wire.encode(dn._Raw(wire.encode(tree)))  # a _Raw only goes through _encode


def test_encode_refuses_what_wire_encode_refuses() -> None:
    raw = dn._Raw(wire.encode(1))
    for bad in ({"k" * 24: raw}, {1: raw}, {"k": 1.5, "r": raw}, [raw, object()]):
        with pytest.raises(wire.WireError):
            dn._encode(bad)


def test_set_hashes_from_the_tail_or_decoded(base_chain: Path) -> None:
    with hc.Chain.open(base_chain, readonly=True) as chain:
        for raw in chain.headers(0, TIP + 1):
            header = wire.decode(raw)
            assert dn._set_hashes(raw) == (header["validators_hash"],
                                           header["next_validators_hash"])
    a, b = H(b"a"), H(b"b")
    odd = wire.encode({"validators_hash": a, "next_validators_hash": b, "z" * 21: 0})
    assert dn._set_hashes(odd) == (a, b)  # tail not a header's: decoded
