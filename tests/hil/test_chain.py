"""The chain generator of the district-node double (hil.chain, hil.merkle, make-chain).

Every check here is written from docs/ledger-protocol (shared design) directly: block_id,
hash links, validator-set hashes, commit signatures and quorum, a naive recursive MTH and a
naive RFC 9162 §2.1.3.2 verifier. They never call hil.merkle to check hil.chain, and neither
side imports appliance.node.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import rfc9162

from appliance import wire
from appliance.gm import ecdsa, sm2, sm3
from hil import chain as hc
from hil import cli, merkle
from hil import ledger_rules as lr

H = sm3.digest
HEADER_KEYS = {"chain_id", "height", "version", "prev_hash", "tx_root", "timestamp",
               "validators_hash", "next_validators_hash"}
VERIFY = {"sm2": sm2.verify, "ecdsa-p256": ecdsa.verify}
DAY_MS = 86_400_000


# -- independent spec code ------------------------------------------------------------------


def check_set(cbor: bytes) -> list[dict]:
    vset = wire.decode(cbor)
    assert 1 <= len(vset) <= 256
    peers = [H(v["public_key"]) for v in vset]
    assert peers == sorted(peers) and len(set(peers)) == len(peers)
    for v in vset:
        assert set(v) == {"alg", "public_key", "power"}
        assert v["alg"] in VERIFY and len(v["public_key"]) == 65 and v["power"] >= 1
    return vset


def commit_is_valid(commit_cbor: bytes, chain_id: str, height: int, block_id: bytes,
                    vset: list[dict]) -> bool:
    commit = wire.decode(commit_cbor)
    assert set(commit) == {"height", "block_id", "signatures"}
    if commit["height"] != height or commit["block_id"] != block_id:
        return False
    vote = wire.encode({"type": "commit", "chain_id": chain_id, "height": height,
                        "block_id": block_id})
    indices = [s["index"] for s in commit["signatures"]]
    if indices != sorted(set(indices)):
        return False
    signed = 0
    for s in commit["signatures"]:
        v = vset[s["index"]]
        if not VERIFY[v["alg"]](v["public_key"], vote, s["signature"]):
            return False
        signed += v["power"]
    return 3 * signed > 2 * sum(v["power"] for v in vset)


def check_chain(path: Path, *, all_commits_from: int | None = None) -> dict:
    """Check a chain directory against the protocol; return facts for further asserts.

    Commits are required on heights h % commit_every == 0, on set changes, on the tip, and
    on every height >= all_commits_from (blocks made by the appender).
    """
    summary = json.loads((path / "chain.json").read_text())
    params = summary["params"]
    chain_id = params["chain_id"]
    facts: dict = {"block_ids": [], "commit_heights": [], "signers": [], "set_changes": [],
                   "enrollments": {}, "deposits": 0}
    with hc.Chain.open(path) as chain:
        anchor = wire.decode((path / "trust.cbor").read_bytes())
        admins = {(a["alg"], a["public_key"], a["district"]) for a in anchor["admins"]}
        tip = chain.tip_height
        prev = None
        for h in range(tip + 1):
            raw = chain.header(h)
            header = wire.decode(raw)  # canonical, or this raises
            assert set(header) == HEADER_KEYS
            block_id = H(raw)
            assert block_id == H(wire.encode(header)) == chain.block_id(h)
            assert header["chain_id"] == chain_id and header["version"] == "1"
            assert header["height"] == h
            vset_cbor = chain.validator_set_for(h)
            vset = check_set(vset_cbor)
            assert header["validators_hash"] == H(vset_cbor)
            assert header["next_validators_hash"] == H(chain.validator_set_for(h + 1))
            if prev is None:
                assert header["prev_hash"] == bytes(32)
            else:
                assert header["prev_hash"] == facts["block_ids"][-1]
                assert header["timestamp"] >= prev["timestamp"]
                assert header["validators_hash"] == prev["next_validators_hash"]
            set_change = header["next_validators_hash"] != header["validators_hash"]
            if set_change:
                facts["set_changes"].append(h)
            # transactions
            ids = chain.tx_ids(h)
            assert header["tx_root"] == rfc9162.mth(ids)
            for index, tx_id in enumerate(ids):
                tx_cbor, tx_height, tx_index = chain.tx(tx_id)
                assert (tx_height, tx_index) == (h, index)
                tx = wire.decode(tx_cbor)
                assert set(tx) == {"body", "alg", "public_key", "signature"}
                body = tx["body"]
                assert H(wire.encode(body)) == tx_id
                assert body["chain_id"] == chain_id and body["sender"] == H(tx["public_key"])
                assert len(body["nonce"]) == 16 and body["timestamp"] <= header["timestamp"]
                assert set(body) - {"memo", "recipient"} == {
                    "chain_id", "type", "timestamp", "sender", "data", "nonce"}
                assert VERIFY[tx["alg"]](tx["public_key"], wire.encode(body), tx["signature"])
                assert abs(body["timestamp"] - header["timestamp"]) <= 60_000  # max_skew
                data = body["data"]
                if body["type"] == "device.enroll":  # §6: by the admin of its district
                    assert (tx["alg"], tx["public_key"], data["district"]) in admins
                    assert set(data) == {"terminal", "alg", "public_key", "district", "hall",
                                         "role", "office", "not_after"}
                    assert data["terminal"] == H(data["public_key"])
                    assert data["role"] == "issuer" and data["office"]
                    assert body["timestamp"] < data["not_after"] <= body["timestamp"] + \
                        400 * DAY_MS
                    facts["enrollments"][tx_id] = data
                else:
                    assert body["type"] == "evidence.deposit"
                    assert set(data) == {"digest", "kind", "holder", "enrollment"}
                    assert len(data["digest"]) == len(data["holder"]) == 32
                    assert tx_id in chain.lookup(data["digest"])
                    # signed by the key its enrollment (in block 0, before the deposits)
                    # enrolls, valid at this block's time
                    enrollment = facts["enrollments"][data["enrollment"]]
                    assert enrollment["public_key"] == tx["public_key"]
                    assert enrollment["alg"] == tx["alg"] and enrollment["role"] == "issuer"
                    assert enrollment["not_after"] > header["timestamp"]
                    facts["deposits"] += 1
                proof = chain.inclusion_proof(tx_id)
                assert set(proof) == {"leaf_index", "tree_size", "path"}
                assert rfc9162.verify(tx_id, proof, header["tx_root"])
                wire.encode(proof)  # fits the wire profile
            # commits
            commit = chain.commit(h)
            required = (h % params["commit_every"] == 0 or set_change or h == tip
                        or (all_commits_from is not None and h >= all_commits_from))
            if required:
                assert commit is not None, f"height {h} needs a commit"
            if commit is not None:
                assert commit_is_valid(commit, chain_id, h, block_id, vset)
                facts["commit_heights"].append(h)
                facts["signers"].append(len(wire.decode(commit)["signatures"]))
            facts["block_ids"].append(block_id)
            prev = header
        # the trust anchor
        assert anchor == wire.decode(chain.trust_anchor())
        assert set(anchor) == {"chain_id", "height", "block_id", "validators", "admins"}
        assert [(a["alg"], a["public_key"], a["district"]) for a in anchor["admins"]] == [
            (k.alg, k.public_key, k.label) for k in chain.keys("admin")]
        assert [a["district"] for a in anchor["admins"]] == list(params["districts"])
        assert anchor["chain_id"] == chain_id and anchor["height"] == 0
        assert anchor["block_id"] == facts["block_ids"][0]
        assert H(wire.encode(anchor["validators"])) == wire.decode(chain.header(0))[
            "validators_hash"]
        assert summary["genesis_id"] == facts["block_ids"][0].hex()
    return facts


def light_client_sync(path: Path) -> int:
    """§5 skipping verification from the trust anchor, segment by segment, ending on commits.

    Returns the height reached; asserts every rule on the way.
    """
    with hc.Chain.open(path) as chain:
        anchor = wire.decode(chain.trust_anchor())
        raw = chain.header(anchor["height"])
        assert H(raw) == anchor["block_id"]
        trusted = wire.decode(raw)
        assert trusted["validators_hash"] == H(wire.encode(anchor["validators"]))
        trusted_id = anchor["block_id"]
        sets = {trusted["validators_hash"]: anchor["validators"]}
        ends = [h for h in chain.commit_heights() if h > trusted["height"]]
        for end in ends:
            start = trusted["height"] + 1
            headers = [wire.decode(x) for x in chain.headers(start, end - start + 1)]
            prev, prev_id = trusted, trusted_id
            for header, raw in zip(headers, chain.headers(start, end - start + 1), strict=True):
                assert header["chain_id"] == anchor["chain_id"] and header["version"] == "1"
                assert header["height"] == prev["height"] + 1 and header["prev_hash"] == prev_id
                assert prev["timestamp"] <= header["timestamp"]
                assert header["validators_hash"] == prev["next_validators_hash"]
                vhash = header["validators_hash"]
                if vhash not in sets:  # served by the node; the client checks its hash
                    served = chain.validator_set_for(header["height"])
                    assert H(served) == vhash
                    sets[vhash] = wire.decode(served)
                block_id = H(raw)
                if header["next_validators_hash"] != vhash or header["height"] == end:
                    commit = chain.commit(header["height"])
                    assert commit is not None
                    assert commit_is_valid(commit, anchor["chain_id"], header["height"],
                                           block_id, sets[vhash])
                prev, prev_id = header, block_id
            trusted, trusted_id = prev, prev_id
        return trusted["height"]


@pytest.fixture(scope="module")
def mixed_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mixed")
    hc.generate(out, hc.ChainParams(validators=4, alg="mixed", set_change_every=7, seed="m"),
                blocks=30, txs_per_block=3)
    return out


# -- hil.merkle -----------------------------------------------------------------------------


def test_merkle_matches_naive_definition_and_verifier() -> None:
    rng = random.Random(1)
    for n in range(0, 40):
        leaves = [rng.randbytes(32) for _ in range(n)]
        root = merkle.root(leaves)
        assert root == rfc9162.mth(leaves)
        for i in range(n):
            path = merkle.inclusion_path(leaves, i)
            proof = {"leaf_index": i, "tree_size": n, "path": path}
            assert rfc9162.verify(leaves[i], proof, root)
            assert merkle.verify_inclusion(leaves[i], i, n, path, root)
            # the protocol's extra rules, on both verifiers
            assert not merkle.verify_inclusion(leaves[i], i, n, [*path, bytes(32)], root)
            assert not rfc9162.verify(leaves[i], {**proof, "path": [*path, bytes(32)]}, root)
            if path:
                assert not merkle.verify_inclusion(leaves[i], i, n, path[:-1], root)
                assert not rfc9162.verify(leaves[i], {**proof, "path": path[:-1]}, root)
            if n > 1:
                assert not merkle.verify_inclusion(leaves[i], (i + 1) % n, n, path, root)
            assert not merkle.verify_inclusion(leaves[i], n, n, path, root)
            assert not merkle.verify_inclusion(rng.randbytes(32), i, n, path, root)
    with pytest.raises(IndexError):
        merkle.inclusion_path([bytes(32)], 1)


# -- generation -----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["sm2", "ecdsa-p256"])
def test_single_alg_chain_is_consistent(tmp_path: Path, alg: str) -> None:
    hc.generate(tmp_path, hc.ChainParams(validators=3, alg=alg, set_change_every=5, seed=alg),
                blocks=17, txs_per_block=2)
    facts = check_chain(tmp_path)
    assert facts["commit_heights"] == list(range(17))
    assert facts["set_changes"] == [4, 9, 14]
    assert set(facts["signers"]) == {3}  # by default every validator signs
    with hc.Chain.open(tmp_path) as chain:
        assert {k.alg for k in chain.keys("validator")} == {alg}
        assert {v["alg"] for v in wire.decode(chain.validator_set_for(0))} == {alg}
    assert light_client_sync(tmp_path) == 16


def test_mixed_chain_is_consistent(mixed_chain: Path) -> None:
    facts = check_chain(mixed_chain)
    assert facts["set_changes"] == [6, 13, 20, 27]
    assert light_client_sync(mixed_chain) == 29
    with hc.Chain.open(mixed_chain) as chain:
        validators = chain.keys("validator")
        # sets 0..4 (the last one signs height 30, the tip's next): keys 0..7
        assert [k.index for k in validators] == list(range(8))
        assert [k.alg for k in validators] == ["sm2", "ecdsa-p256"] * 4
        first = {H(v["public_key"]) for v in wire.decode(chain.validator_set_for(0))}
        second = {H(v["public_key"]) for v in wire.decode(chain.validator_set_for(7))}
        assert len(first & second) == 3  # one validator out, one in
        assert [r[:2] for r in chain.set_ranges()] == [
            (0, 6), (7, 13), (14, 20), (21, 27), (28, None)]
        assert {k.alg for k in chain.keys("issuer")} == {"sm2", "ecdsa-p256"}
        assert [k.label for k in chain.keys("admin")] == ["haidian"]


def test_keys_follow_the_documented_derivation(mixed_chain: Path) -> None:
    with hc.Chain.open(mixed_chain) as chain:
        for role in ("validator", "issuer", "admin"):
            for key in chain.keys(role):
                n = sm2.N if key.alg == "sm2" else ecdsa.N
                h = H(wire.encode(["hil-chain/1 key", "m", role, key.index]))
                assert key.private_key == (int.from_bytes(h, "big") % (n - 2) + 1).to_bytes(
                    32, "big")
                public_key_of = sm2.public_key_of if key.alg == "sm2" else ecdsa.public_key_of
                assert key.public_key == public_key_of(key.private_key)
                assert key.peer_id == H(key.public_key)


def test_lookup_and_reader_edges(mixed_chain: Path) -> None:
    with hc.Chain.open(mixed_chain) as chain:
        tip = chain.tip_height
        assert tip == 29 and chain.chain_id == hc.DEFAULT_CHAIN_ID
        assert chain.tip_id == H(chain.header(tip)) and chain.genesis_id == H(chain.header(0))
        assert len(chain.headers(25, 100)) == 5 and chain.headers(30, 5) == []
        assert chain.headers(3, 0) == []
        assert [wire.decode(x)["height"] for x in chain.headers(10, 3)] == [10, 11, 12]
        with pytest.raises(KeyError):
            chain.header(30)
        with pytest.raises(KeyError):
            chain.validator_set_for(31)
        with pytest.raises(KeyError):
            chain.tx_ids(30)
        with pytest.raises(KeyError):
            chain.tx(bytes(32))
        with pytest.raises(ValueError):
            chain.keys("bogus")
        assert chain.commit(30) is None and chain.lookup(bytes(32)) == []
        tx_id = chain.tx_ids(12)[1]
        digest = wire.decode(chain.tx(tx_id)[0])["body"]["data"]["digest"]
        assert chain.lookup(digest) == [tx_id]
        body = wire.decode(chain.tx(tx_id)[0])["body"]
        enrollment = wire.decode(chain.tx(body["data"]["enrollment"])[0])["body"]["data"]
        assert H(enrollment["public_key"]) == body["sender"]
        assert body["data"]["kind"] in hc.KINDS


def test_sign_quorum_and_seeded_powers(tmp_path: Path) -> None:
    params = hc.ChainParams(validators=7, power_max=5, sign_quorum=True, set_change_every=4,
                            alg="ecdsa-p256", seed="q")
    hc.generate(tmp_path, params, blocks=12, txs_per_block=0)
    facts = check_chain(tmp_path)  # every commit reaches > 2/3 of the power
    with hc.Chain.open(tmp_path) as chain:
        powers = [k.power for k in chain.keys("validator")]
        assert len(set(powers)) > 1 and all(1 <= p <= 5 for p in powers)
        for h in facts["commit_heights"]:
            vset = wire.decode(chain.validator_set_for(h))
            sigs = wire.decode(chain.commit(h))["signatures"]
            assert len(sigs) < len(vset)
            # just enough: without one of its signers (the last one picked) no quorum
            signed = [vset[s["index"]]["power"] for s in sigs]
            total = sum(v["power"] for v in vset)
            assert any(3 * (sum(signed) - p) <= 2 * total for p in signed)
        assert len({tuple(s["index"] for s in wire.decode(chain.commit(h))["signatures"])
                    for h in facts["commit_heights"]}) > 1  # signers vary with the height


def test_commit_every_keeps_what_a_skipping_client_needs(tmp_path: Path) -> None:
    params = hc.ChainParams(validators=4, set_change_every=6, commit_every=10, seed="c")
    hc.generate(tmp_path, params, blocks=25, txs_per_block=1)
    facts = check_chain(tmp_path)
    assert facts["commit_heights"] == [0, 5, 10, 11, 17, 20, 23, 24]
    assert light_client_sync(tmp_path) == 24


def test_determinism_for_a_seed(tmp_path: Path) -> None:
    params = hc.ChainParams(validators=3, set_change_every=4, alg="mixed", seed="d")
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    hc.generate(a, params, blocks=10, txs_per_block=2)
    hc.generate(b, params, blocks=10, txs_per_block=2)
    hc.generate(c, hc.ChainParams(validators=3, set_change_every=4, alg="mixed", seed="e"),
                blocks=10, txs_per_block=2)
    with hc.Chain.open(a) as ca, hc.Chain.open(b) as cb, hc.Chain.open(c) as cc:
        assert ca.headers(0, 10) == cb.headers(0, 10)
        assert [ca.tx_ids(h) for h in range(10)] == [cb.tx_ids(h) for h in range(10)]
        for h in range(10):
            for tx_id in ca.tx_ids(h):
                ta, tb = (wire.decode(x.tx(tx_id)[0]) for x in (ca, cb))
                assert ta["body"] == tb["body"] and ta["public_key"] == tb["public_key"]
            ma, mb = (wire.decode(x.commit(h)) for x in (ca, cb))
            assert [s["index"] for s in ma["signatures"]] == [s["index"] for s in mb["signatures"]]
            assert ma["signatures"] != mb["signatures"]  # real signers: fresh nonces
        assert ca.trust_anchor() == cb.trust_anchor()
        assert [k.private_key for k in ca.keys("validator")] == [
            k.private_key for k in cb.keys("validator")]
        assert ca.genesis_id != cc.genesis_id
    sa, sb = (json.loads((d / "chain.json").read_text()) for d in (a, b))
    sa.pop("generated_in_s"), sb.pop("generated_in_s")
    assert sa == sb


def test_progress_and_refusals(tmp_path: Path) -> None:
    lines: list[str] = []
    hc.generate(tmp_path, hc.ChainParams(validators=1), blocks=200, progress=lines.append,
                progress_interval_s=0)
    assert lines and "blocks/s" in lines[-1] and lines[-1].startswith("make-chain: 200 blocks")
    with pytest.raises(FileExistsError):
        hc.generate(tmp_path, hc.ChainParams(validators=1), blocks=2)
    hc.generate(tmp_path, hc.ChainParams(validators=1), blocks=2, force=True)
    assert hc.Chain.open(tmp_path).tip_height == 1
    assert not (tmp_path / "chain.db.tmp").exists()
    for bad in (dict(validators=0), dict(validators=257), dict(alg="rsa"), dict(chain_id=""),
                dict(commit_every=0), dict(chain_id="x" * 65)):
        with pytest.raises(ValueError):
            hc.generate(tmp_path / "bad", hc.ChainParams(**bad), blocks=2)
    with pytest.raises(FileNotFoundError):
        hc.Chain.open(tmp_path / "nothing")


def test_a_larger_chain_syncs_with_sparse_commits(tmp_path: Path) -> None:
    params = hc.ChainParams(validators=4, set_change_every=5000, commit_every=1000, seed="big")
    summary = hc.generate(tmp_path, params, blocks=20_000)
    assert summary["commits"] == 20 + 4 and summary["tip_height"] == 19_999
    assert light_client_sync(tmp_path) == 19_999


# -- districts, offices, enrollments, builders ----------------------------------------------


def test_districts_offices_and_issuer_enrollments(tmp_path: Path) -> None:
    params = hc.ChainParams(validators=2, issuers=4, seed="offices", alg="mixed",
                            districts=("haidian", "chaoyang", "东城"),
                            offices=("Haidian Tax", "朝阳区公安分局"))
    summary = hc.generate(tmp_path, params, blocks=6, txs_per_block=3)
    facts = check_chain(tmp_path)
    assert facts["deposits"] == 18 and len(facts["enrollments"]) == 4
    assert summary["txs"] == 22
    with hc.Chain.open(tmp_path) as chain:
        assert chain.params == params
        assert [k.label for k in chain.keys("admin")] == ["haidian", "chaoyang", "东城"]
        assert chain.admin_key("东城").index == 2 and chain.admin_key().label == "haidian"
        with pytest.raises(KeyError):
            chain.admin_key("xicheng")
        assert [a["district"] for a in chain.admins()] == ["haidian", "chaoyang", "东城"]
        issuers = chain.keys("issuer")
        assert [k.label for k in issuers] == ["Haidian Tax", "朝阳区公安分局", "office-2",
                                              "office-3"]
        enrollments = chain.enrollments(role="issuer")
        assert [e.height for e in enrollments] == [0] * 4
        assert [(e.data["office"], e.data["district"], e.data["hall"]) for e in enrollments] \
            == [("Haidian Tax", "haidian", "hil"), ("朝阳区公安分局", "chaoyang", "hil"),
                ("office-2", "东城", "hil"), ("office-3", "haidian", "hil")]
        for key, e in zip(issuers, enrollments, strict=True):
            assert e.data["public_key"] == key.public_key and e.data["alg"] == key.alg
            assert e.data["not_after"] == params.start_ms + 400 * DAY_MS
            assert chain.enrollment_of(key.public_key) == e.tx_id
            assert chain.enrollment_of(key.public_key, "issuer") == e.tx_id
            with pytest.raises(KeyError):
                chain.enrollment_of(key.public_key, "kiosk")
        by_key = {e.tx_id: e.data["public_key"] for e in enrollments}
        for h in range(6):
            for tx_id in chain.tx_ids(h):
                tx = wire.decode(chain.tx(tx_id)[0])
                if tx["body"]["type"] == "evidence.deposit":
                    assert by_key[tx["body"]["data"]["enrollment"]] == tx["public_key"]
        assert {e["enrollment"] for e in summary["keys"]["issuer"]} == {
            e.tx_id.hex() for e in enrollments}
        assert chain.timestamp(5) == params.start_ms + 5 * params.interval_ms


def test_every_generated_transaction_passes_the_double_rules(mixed_chain: Path) -> None:
    """The chain the double serves is valid by the double's own §6 rules (hil.ledger_rules),
    every transaction judged at its block's time."""
    with hc.Chain.open(mixed_chain) as chain:
        rules = lr.LedgerRules(chain.chain_id, lr.parse_admins(wire.decode(chain.trust_anchor())))

        class State:
            def find(self, tx_id: bytes) -> lr.Found | None:
                try:
                    raw, height, _ = chain.tx(tx_id)
                except KeyError:
                    return None
                return lr.Found(wire.decode(raw), chain.timestamp(height))

            def session_used(self, session: bytes) -> bool:
                return False

            def matter_used(self, pad: bytes, matter_id: bytes) -> bool:
                return False

        n = 0
        for h in range(chain.tip_height + 1):
            block_ms = chain.timestamp(h)
            for tx_id in chain.tx_ids(h):
                admitted = rules.check_in_block(wire.decode(chain.tx(tx_id)[0]), State(),
                                                block_ms)
                assert admitted.tx_id == tx_id
                n += 1
        assert n == 30 * 3 + 3


def test_params_refused(tmp_path: Path) -> None:
    for bad in (dict(districts=()), dict(districts=("a", "a")), dict(districts=("",)),
                dict(districts=("tab\there",)), dict(offices=("o",) * 4),
                dict(offices=("o" * 65,)), dict(offices=("e\u0301",)), dict(issuers=0)):
        with pytest.raises(ValueError):
            hc.generate(tmp_path / "bad", hc.ChainParams(**bad), blocks=1)
    assert not (tmp_path / "bad" / "chain.db").exists()


def test_a_chain_of_another_format_is_refused(mixed_chain: Path, tmp_path: Path) -> None:
    out = tmp_path / "old"
    shutil.copytree(mixed_chain, out)
    con = sqlite3.connect(out / "chain.db")
    with con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'format'", ('"hil-chain/1"',))
    con.close()
    with pytest.raises(ValueError, match="hil-chain/1"):
        hc.Chain.open(out)


def test_builders_make_what_the_spec_says() -> None:
    admin = hc.derive_key("b", "admin", 0, "sm2")
    device = hc.derive_key("b", "device", 0, "ecdsa-p256")
    tx = hc.enroll_tx(admin, device.public_key, device.alg, "clerk", district="haidian",
                      hall="h1", office="Tax", staff="007", not_after=2000, timestamp=1000,
                      chain_id="c", nonce=bytes(16))
    body = tx["body"]
    assert body == {"chain_id": "c", "type": "device.enroll", "timestamp": 1000,
                    "sender": H(admin.public_key), "nonce": bytes(16),
                    "data": {"terminal": H(device.public_key), "alg": "ecdsa-p256",
                             "public_key": device.public_key, "district": "haidian",
                             "hall": "h1", "role": "clerk", "office": "Tax", "staff": "007",
                             "not_after": 2000}}
    assert sm2.verify(admin.public_key, wire.encode(body), tx["signature"])
    assert hc.tx_id_of(tx) == H(wire.encode(body))
    identity = hc.enroll_tx(admin, device.public_key, device.alg, "identity",
                            district="d", hall="h", min_score=0, not_after=2, timestamp=1,
                            chain_id="c")
    assert identity["body"]["data"]["min_score"] == 0 and len(identity["body"]["nonce"]) == 16
    assert "office" not in identity["body"]["data"]
    deposit = hc.deposit_tx(device, digest=bytes(32), kind="k", enrollment=b"e" * 32,
                            timestamp=5, chain_id="c", memo="m")
    assert deposit["body"]["data"] == {"digest": bytes(32), "kind": "k",
                                       "enrollment": b"e" * 32}
    assert deposit["body"]["memo"] == "m" and deposit["public_key"] == device.public_key
    assert ecdsa.verify(device.public_key, wire.encode(deposit["body"]),
                        deposit["signature"])
    matter = hc.matter_body(pad=H(device.public_key), enrollment=b"p" * 32, office="Tax",
                            subject=hc.identifier_hash("110105194912310037"),
                            licenses=[b"l" * 32], issued_at=10_000)
    assert set(matter) == {"matter_id", "title", "office", "agencies", "purpose", "subject",
                           "licenses", "issued_at", "expires_at", "use_until", "pad",
                           "enrollment"}
    assert matter["agencies"] == ["Tax"] and len(matter["matter_id"]) == 16
    assert matter["expires_at"] == 10_000 + 3_600_000
    assert matter["use_until"] == 10_000 + 30 * DAY_MS
    assert "on_behalf_of" in hc.matter_body(
        pad=b"p" * 32, enrollment=b"e" * 32, office="o", subject=b"s" * 32, licenses=[],
        issued_at=0, on_behalf_of=b"b" * 32)
    signed = hc.signed_object(device, matter)
    assert set(signed) == {"body", "alg", "public_key", "signature"}
    assert ecdsa.verify(device.public_key, wire.encode(matter), signed["signature"])
    with pytest.raises(ValueError):
        hc.sign_tx(device, body)  # sender is the admin's


def test_synthetic_identifiers_carry_a_valid_check_character() -> None:
    rng = random.Random(5)
    weights = [2 ** (17 - i) % 11 for i in range(17)]  # ISO 7064 MOD 11-2
    seen_x = False
    for _ in range(300):
        ident = hc.synthetic_identifier(rng)
        assert len(ident) == 18 and ident[:17].isdigit()
        check = (12 - sum(int(c) * w for c, w in zip(ident, weights, strict=False)) % 11) % 11
        assert ident[17] == ("X" if check == 10 else str(check))
        seen_x |= ident[17] == "X"
    assert seen_x


# -- the appender ---------------------------------------------------------------------------


def _deposit(key: hc.Key, chain_id: str, digest: bytes, ts: int, nonce: bytes,
             enrollment: bytes) -> dict:
    """An evidence.deposit signed_tx built from the spec (not with hil.chain.sign_tx)."""
    body = {"chain_id": chain_id, "type": "evidence.deposit", "timestamp": ts,
            "sender": H(key.public_key), "nonce": nonce,
            "data": {"digest": digest, "kind": "business-license", "holder": H(b"holder"),
                     "enrollment": enrollment}}
    sign = sm2.sign if key.alg == "sm2" else ecdsa.sign
    return {"body": body, "alg": key.alg, "public_key": key.public_key,
            "signature": sign(key.private_key, wire.encode(body))}


def test_appender_extends_the_chain_across_a_set_change(tmp_path: Path) -> None:
    params = hc.ChainParams(validators=4, set_change_every=5, commit_every=3, alg="mixed",
                            seed="app")
    hc.generate(tmp_path, params, blocks=4, txs_per_block=1)
    digests = [H(b"document %d" % i) for i in range(5)]
    with hc.Chain.open(tmp_path) as chain:
        issuer = chain.keys("issuer")[0]
        enrollment = chain.enrollment_of(issuer.public_key, "issuer")
        tip_ts = wire.decode(chain.header(3))["timestamp"]
        tx = _deposit(issuer, chain.chain_id, digests[0], tip_ts, b"n" * 16, enrollment)
        got = chain.append_block([wire.encode(tx)], timestamp=tip_ts + 5)
        assert got.height == 4 and got.block_id == chain.tip_id == H(got.header)
        assert got.tx_ids == [H(wire.encode(tx["body"]))]
        assert chain.lookup(digests[0]) == got.tx_ids and chain.commit(4) == got.commit
        assert chain.validator_set_for(5) != chain.validator_set_for(4)  # 4 was a set change
        chain.append_block(timestamp=tip_ts + 10)  # empty
        txs = [_deposit(issuer, chain.chain_id, d, tip_ts + 20, bytes([i]) * 16, enrollment)
               for i, d in enumerate(digests[1:])]
        chain.append_block(txs, timestamp=tip_ts + 20)  # dicts are accepted too
        for _ in range(5):
            chain.append_block()  # timestamp now (after the chain's start in 2023)
        assert chain.tip_height == 11
        # refusals leave the chain unchanged
        with pytest.raises(ValueError, match="already"):
            chain.append_block([tx])
        with pytest.raises(ValueError, match="duplicate"):
            chain.append_block([txs[0], txs[0]])
        with pytest.raises(ValueError, match="before"):
            chain.append_block(timestamp=tip_ts)
        with pytest.raises(wire.WireError):
            chain.append_block([b"\xff"])
        assert chain.tip_height == 11
    # after reopening: the whole chain is valid, appended blocks carry commits, sets rotated
    facts = check_chain(tmp_path, all_commits_from=4)
    assert facts["set_changes"] == [4, 9]
    assert light_client_sync(tmp_path) == 11
    with hc.Chain.open(tmp_path) as chain:
        assert wire.decode(chain.header(6))["tx_root"] == rfc9162.mth(chain.tx_ids(6))
        assert len(chain.tx_ids(6)) == 4
        assert [r[:2] for r in chain.set_ranges()] == [(0, 4), (5, 9), (10, None)]
        assert [k.index for k in chain.keys("validator")] == list(range(6))


# -- the command line -----------------------------------------------------------------------


def test_cli_defaults_match_the_module() -> None:
    assert cli._CHAIN_ALG_MODES == hc.ALG_MODES
    assert cli._CHAIN_DEFAULT_ID == hc.DEFAULT_CHAIN_ID
    assert cli._CHAIN_DEFAULT_SEED == hc.DEFAULT_SEED
    assert cli._CHAIN_DEFAULT_START_MS == hc.DEFAULT_START_MS
    assert cli._CHAIN_DEFAULT_INTERVAL_MS == hc.DEFAULT_INTERVAL_MS
    assert cli._CHAIN_DEFAULT_DISTRICTS == hc.DEFAULT_DISTRICTS == hc.ChainParams().districts
    defaults = cli.build_parser().parse_args(
        ["make-chain", "--out", "x", "--validators", "1", "--blocks", "1",
         "--txs-per-block", "0"])
    p = hc.ChainParams()
    assert (defaults.commit_every, defaults.sign_quorum, defaults.issuers, defaults.power_max,
            defaults.set_change_every) == (p.commit_every, p.sign_quorum, p.issuers,
                                           p.power_max, p.set_change_every)


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("appliance-hil")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hil.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_cli_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "chain"
    args = ["make-chain", "--out", str(out), "--validators", "4", "--blocks", "12",
            "--txs-per-block", "2", "--set-change-every", "5", "--alg", "mixed", "--seed", "cli",
            "--chain-id", "district-7", "--start-ms", "1000", "--interval-ms", "10",
            "--commit-every", "4", "--sign-quorum", "--district", "haidian", "--district",
            "chaoyang", "--office", "海淀区市场监督管理局"]
    done = _run_cli(*args)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["tip_height"] == 11 and summary["out"] == str(out)
    assert "TEST FIXTURE" in summary["notice"]
    assert "make-chain: 12 blocks, 27 txs" in done.stderr  # 3 enrollments, 24 deposits
    facts = check_chain(out)
    assert facts["commit_heights"] == [0, 4, 8, 9, 11]
    assert set(facts["signers"]) == {3}
    assert sorted((e["office"], e["district"]) for e in facts["enrollments"].values()) == [
        ("office-1", "chaoyang"), ("office-2", "haidian"), ("海淀区市场监督管理局", "haidian")]
    with hc.Chain.open(out) as chain:
        assert wire.decode(chain.header(3))["timestamp"] == 1030
        assert chain.chain_id == "district-7"
    assert _run_cli(*args).returncode == 2  # chain.db exists
    assert _run_cli(*args, "--force").returncode == 0
    bad = _run_cli("make-chain", "--out", str(tmp_path / "x"), "--validators", "300",
                   "--blocks", "1", "--txs-per-block", "0")
    assert bad.returncode == 2 and "validators" in bad.stderr
    helped = _run_cli("make-chain", "--help")
    assert helped.returncode == 0 and "TEST FIXTURE" in helped.stdout


def test_the_checks_above_catch_tampering(mixed_chain: Path, tmp_path: Path) -> None:
    """The oracle can fail: a chain missing a set-change commit, or with a forged signature or
    an edited header, is rejected by the spec checks of this file."""
    def tampered(name: str, sql: str, args: tuple = ()) -> Path:
        out = tmp_path / name
        shutil.copytree(mixed_chain, out)
        con = sqlite3.connect(out / "chain.db")
        with con:
            con.execute(sql, args)
        con.close()
        return out

    no_commit = tampered("no_commit", "DELETE FROM commits WHERE height = 13")
    with pytest.raises(AssertionError):
        light_client_sync(no_commit)
    with pytest.raises(AssertionError, match="needs a commit"):
        check_chain(no_commit)

    with hc.Chain.open(mixed_chain) as chain:
        commit = wire.decode(chain.commit(20))
        header = wire.decode(chain.header(8))
    sig = commit["signatures"][1]["signature"]
    commit["signatures"][1]["signature"] = sig[:40] + bytes([sig[40] ^ 1]) + sig[41:]
    forged = tampered("forged", "UPDATE commits SET cbor = ? WHERE height = 20",
                      (wire.encode(commit),))
    with pytest.raises(AssertionError):
        light_client_sync(forged)

    header["timestamp"] += 1
    edited = tampered("edited", "UPDATE headers SET cbor = ? WHERE height = 8",
                      (wire.encode(header),))
    with pytest.raises(AssertionError):
        light_client_sync(edited)
    with pytest.raises(AssertionError):
        check_chain(edited)
