"""``appliance node sync|status|tx --chain-kind fisco-bcos-3`` end to end against
``appliance-hil fisco-node`` subprocesses on loopback: an honest chain of 10 001 blocks, a
receipt served as another reading of its bytes, a set hijack (alarm naming both lists), usage
errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from hil import cli as hil_cli
from hil.fisco_node import MODES, FiscoChain, FiscoNodeProcess

REPO = Path(__file__).resolve().parents[2]
BLOCKS = 10_001
KIND = ("--chain-kind", "fisco-bcos-3")


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def out(r: subprocess.CompletedProcess[str]) -> dict:
    assert "Traceback" not in r.stderr, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def sig_cache(request: pytest.FixtureRequest) -> Path:
    # Signing 10 000 blocks with SM2 takes seconds: keep the signatures across runs.
    return Path(request.config.cache.mkdir("fisco-sigs")) / "seed0.bin"


@pytest.fixture(scope="module")
def honest(tmp_path_factory, sig_cache):
    anchor = tmp_path_factory.mktemp("fisco") / "anchor.json"
    with FiscoNodeProcess(blocks=BLOCKS, sig_cache=sig_cache, anchor_out=anchor) as node:
        node.anchor = anchor
        yield node


def test_modes_listed_in_the_cli_are_the_doubles() -> None:
    assert hil_cli._FISCO_MODES == MODES


def test_honest_chain_of_10001_blocks(honest, tmp_path) -> None:
    state = tmp_path / "state"
    r = cli("node", "sync", *KIND, "--rpc", honest.url, "--trust", str(honest.anchor),
            "--state", str(state), "--timeout", "30", "--log-level", "warning")
    doc = out(r)
    assert r.returncode == 0, r.stderr
    chain = FiscoChain(BLOCKS, 4, seed="0")  # the same seed: the same hashes, computed here
    assert doc["height"] == BLOCKS - 1 and doc["appended"] == BLOCKS - 1
    assert doc["tip_hash"] == "0x" + chain.hashes[-1].hex()
    st = out(cli("node", "status", *KIND, "--state", str(state)))
    assert st["height"] == BLOCKS - 1 and st["chain_id"] == "chain0" and st["group"] == "group0"
    assert st["alarms"] == [] and len(st["sealers"]) == 4
    assert [p["url"] for p in st["peers"]] == [honest.url]
    assert st["peers"][0]["verified_headers"] == BLOCKS  # the anchor block and the rest
    n = 9_998  # 9998 % 3 == 2: two transactions, the second one
    tx = chain.blocks[n].tx_hashes[1]
    r = cli("node", "tx", "0x" + tx.hex(), *KIND, "--rpc", honest.url, "--state", str(state),
            "--timeout", "10")
    doc = out(r)
    assert r.returncode == 0, r.stderr
    assert (doc["height"], doc["index"], doc["tree_size"]) == (n, 1, 2)
    assert doc["block_hash"] == "0x" + chain.hashes[n].hex()
    receipt = chain.blocks[n].receipts[1]  # a call that logged: its split unverified
    assert doc["receipt"]["receipt_hash"] == "0x" + receipt.hash.hex()
    assert (doc["receipt"]["status"], doc["receipt"]["status_name"]) == (0, "None")
    assert doc["receipt"]["gas_used"] == receipt.gas and doc["receipt"]["contract_address"] == ""
    assert doc["receipt"]["unverified"]["output"] == "0x" + receipt.output.hex()
    assert "output" not in doc["receipt"] and "logs" not in doc["receipt"]
    r = cli("node", "tx", "0x" + "00" * 32, *KIND, "--rpc", honest.url, "--state", str(state),
            "--timeout", "5")
    assert r.returncode == 1 and out(r)["error"] == "not_found"


def test_a_receipt_served_as_another_reading_is_not_verified(tmp_path) -> None:
    anchor = tmp_path / "anchor.json"
    chain = FiscoChain(12, 4, seed="shift")
    with FiscoNodeProcess(blocks=12, seed="shift", misbehave="shift-receipt",
                          anchor_out=anchor) as node:
        for tx in (chain.blocks[2].tx_hashes[0], chain.blocks[5].tx_hashes[1]):
            r = cli("node", "tx", "0x" + tx.hex(), *KIND, "--rpc", node.url, "--trust",
                    str(anchor), "--state", str(tmp_path / "state"), "--timeout", "10")
            doc = out(r)
            assert r.returncode == 1 and doc["error"] == "not_verifiable", doc
            assert doc["answers"] == {node.url: "malformed_receipt_status"}
            assert doc["verified_height"] == 11  # its headers are honest: synced


def test_set_hijack_stops_with_an_alarm_naming_both_lists(tmp_path) -> None:
    anchor = tmp_path / "anchor.json"
    state = tmp_path / "state"
    with FiscoNodeProcess(blocks=120, seed="hijack", misbehave="set-hijack@50",
                          anchor_out=anchor) as node:
        r = cli("node", "sync", *KIND, "--rpc", node.url, "--trust", str(anchor), "--state",
                str(state), "--timeout", "2", "--batch", "20")
    doc = out(r)
    assert r.returncode == 1 and doc["error"] == "sealer_change"
    assert doc["height"] == 40  # ranges 1..40 verified; 41..60 holds the change
    sealers = json.loads(anchor.read_text())["sealers"]
    st = out(cli("node", "status", *KIND, "--state", str(state)))
    assert st["authorizations_blocked"] and st["alarms"][0]["kind"] == "sealer_change"
    detail = st["alarms"][0]["detail"]
    assert all(s[2:] in detail for s in sealers) and "block 50 names sealers" in detail


def test_usage_errors(honest, tmp_path) -> None:
    r = cli("node", "sync", *KIND, "--trust", str(honest.anchor), "--state", str(tmp_path))
    assert r.returncode == 2 and "--rpc" in out(r)["message"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "fisco-bcos-3"}')
    r = cli("node", "sync", *KIND, "--rpc", honest.url, "--trust", str(bad), "--state",
            str(tmp_path))
    assert r.returncode == 2 and "not a FISCO trust anchor" in out(r)["message"]
    r = cli("node", "sync", *KIND, "--rpc", honest.url, "--trust", str(honest.anchor),
            "--group", "group9", "--state", str(tmp_path))
    assert r.returncode == 2
    r = cli("node", "tx", "12", *KIND, "--rpc", honest.url, "--state", str(tmp_path))
    assert r.returncode == 2


def test_the_double_says_it_is_a_test_fixture_and_stops_cleanly(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "hil.cli", "fisco-node", "--help"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0 and "TEST FIXTURE" in r.stdout
    r = subprocess.run([sys.executable, "-m", "hil.cli", "fisco-node", "--blocks", "3",
                        "--port", "0", "--misbehave", "nonsense"], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2 and "choose one of" in r.stderr
    node = FiscoNodeProcess(blocks=5, sig_cache=tmp_path / "c.bin").start()
    try:
        assert node.ready_line.startswith("ready http://127.0.0.1:")
        body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "getBlockByNumber",
                           "params": ["group0", "", 2, True, True]}).encode()
        with urllib.request.urlopen(urllib.request.Request(node.url, body)) as resp:
            block = json.loads(resp.read())["result"]
        assert block["number"] == 2 and len(block["signatureList"]) == 3
    finally:
        assert node.stop() == 0
    assert "TEST FIXTURE" in node.log_text()
    # one block signed: one record in the cache (key, count, 3 x (index, signature))
    assert (tmp_path / "c.bin").stat().st_size == 32 + 1 + 3 * 65
