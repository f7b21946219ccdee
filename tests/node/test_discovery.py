"""mDNS discovery (appliance/node/discovery.py): the TXT filter, and on loopback against
district-node doubles that announce themselves (``--advertise``, 127.0.0.1 only).

Other processes on the machine may advertise ``_gov-ledger._tcp.local.`` on loopback at the
same time (a simulated hall, another run of these tests): the chains here get ids unique to
this run, and the assertions are about the instances this test registered only.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.node.discovery import Discovery, url_for_service
from hil.chain import ChainParams, generate
from hil.district_node import DistrictNodeProcess

REPO = Path(__file__).resolve().parents[2]
_RUN = os.urandom(4).hex()  # no other advertiser serves these chains
CHAIN = f"hil-disc-{_RUN}"
OTHER_CHAIN = f"hil-disc-other-{_RUN}"
OTHER_WHY = f"chain {OTHER_CHAIN!r}"


# --- the filter ---------------------------------------------------------------------------------


@pytest.mark.parametrize("props, addrs, port, url", [
    ({b"chain": CHAIN.encode(), b"proto": b"1"}, ["10.0.0.7"], 8080, "http://10.0.0.7:8080"),
    ({"chain": CHAIN, "proto": "1"}, ["fe80::1%eth0", "fd00::5", "10.0.0.7"], 80,
     "http://10.0.0.7:80"),
    ({b"chain": CHAIN.encode(), b"proto": b"1"}, ["fe80::1", "fd00::5"], 9000,
     "http://[fd00::5]:9000"),
])
def test_kept(props: dict, addrs: list[str], port: int, url: str) -> None:
    assert url_for_service(props, addrs, port, CHAIN) == (url, "")


@pytest.mark.parametrize("props, addrs, port, why", [
    ({b"chain": b"other", b"proto": b"1"}, ["10.0.0.7"], 80, "chain 'other'"),
    ({b"proto": b"1"}, ["10.0.0.7"], 80, "chain None"),
    ({b"chain": CHAIN.encode(), b"proto": b"2"}, ["10.0.0.7"], 80, "protocol '2'"),
    ({b"chain": CHAIN.encode()}, ["10.0.0.7"], 80, "protocol None"),
    ({b"chain": b"\xff\xfe", b"proto": b"1"}, ["10.0.0.7"], 80, "chain None"),
    ({b"chain": CHAIN.encode(), b"proto": b"1"}, [], 80, "no address"),
    ({b"chain": CHAIN.encode(), b"proto": b"1"}, ["not-an-ip"], 80, "no address"),
    ({b"chain": CHAIN.encode(), b"proto": b"1"}, ["10.0.0.7"], 0, "no port"),
    ({b"chain": CHAIN.encode(), b"proto": b"1"}, ["10.0.0.7"], None, "no port"),
])
def test_ignored(props: dict, addrs: list[str], port: int | None, why: str) -> None:
    assert url_for_service(props, addrs, port, CHAIN) == (None, why)


# --- on loopback --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("chains")
    ours, other = base / "ours", base / "other"
    generate(ours, ChainParams(chain_id=CHAIN, seed="disc", validators=4), 120)
    generate(other, ChainParams(chain_id=OTHER_CHAIN, seed="disc", validators=2), 10)
    return ours, other


def advertised(chain: Path, where: Path, district: str) -> DistrictNodeProcess:
    dst = where / district
    shutil.copytree(chain, dst)
    return DistrictNodeProcess(dst, district=district, advertise=True, block_interval_ms=0)


async def _until(cond, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def test_finds_two_nodes_of_our_chain_and_ignores_another(chains: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    ours, other = chains
    with advertised(ours, tmp_path, "east") as east, advertised(ours, tmp_path, "west") as west, \
            advertised(other, tmp_path, "elsewhere"):

        async def browse() -> None:
            added: list[tuple[str, str]] = []
            removed: list[tuple[str, str]] = []
            d = Discovery(CHAIN, lambda u, n: added.append((u, n)),
                          lambda u, n: removed.append((u, n)), interfaces=["127.0.0.1"])
            async with d:
                await _until(lambda: len(added) >= 2 and OTHER_WHY in d.ignored.values(), 15)
                await asyncio.sleep(0.5)  # nothing else comes
                assert sorted(u for u, _ in added) == sorted([east.url, west.url])
                assert sorted(d.found.values()) == sorted([east.url, west.url])
                # The other chain's node is seen and ignored, once; instances of unrelated
                # advertisers may be ignored too, but none of ours is.
                assert list(d.ignored.values()).count(OTHER_WHY) == 1
                assert not set(d.ignored) & set(d.found)
                # A node that leaves (its goodbye packet) is removed.
                east.stop()
                await _until(lambda: removed, 15)
                assert [u for u, _ in removed] == [east.url]
                assert list(d.found.values()) == [west.url]

        asyncio.run(browse())


def test_cli_sync_with_discovery(chains: tuple[Path, Path], tmp_path: Path) -> None:
    ours, other = chains
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with advertised(ours, tmp_path, "east") as east, advertised(ours, tmp_path, "west") as west, \
            advertised(other, tmp_path, "elsewhere"):
        r = subprocess.run(
            [sys.executable, "-m", "appliance.cli", "node", "sync", "--trust",
             str(ours / "trust.cbor"), "--state", str(tmp_path / "state"), "--discover",
             "--discover-interface", "127.0.0.1", "--discover-wait", "3",
             "--peer", east.url + "/"],  # also configured statically: still one peer
            capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["height"] == 119
    peers = {p["url"]: p for p in doc["peers"]}
    assert set(peers) == {east.url, west.url}
    assert "static" in peers[east.url]["sources"]
    assert any(s.startswith("mdns:") for s in peers[east.url]["sources"])
    assert all(s.startswith("mdns:") for s in peers[west.url]["sources"])
    assert all(p["state"] == "ok" for p in peers.values())
    assert any("ignoring" in line and OTHER_WHY in line for line in r.stderr.splitlines())
