"""mDNS discovery (appliance/node/discovery.py): the TXT filter, and on loopback against
district-node doubles that announce themselves (``--advertise``, 127.0.0.1 only) and against an
attacker on the LAN (a zeroconf instance of this test that sends goodbyes and announcements for
instances it does not own, and announces bogus nodes).

Other processes on the machine may advertise ``_gov-ledger._tcp.local.`` on loopback at the
same time (a simulated hall, another run of these tests): the chains here get ids unique to
this run, and the assertions are about the instances this test registered only. Every wait is
on a condition (what the discovery, the peer table or the probes say), never on a delay.
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

from appliance.kiosk.web import pad
from appliance.node import sync
from appliance.node.client import NodeSync
from appliance.node.discovery import SERVICE_TYPE, Discovery, url_for_service
from appliance.node.peers import BANNED, OK
from appliance.node.store import HeaderStore
from hil.chain import ChainParams, generate
from hil.district_node import DistrictNodeProcess

pytestmark = pytest.mark.timeout(300)

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


def advertised(chain: Path, where: Path, district: str, *,
               advertise: bool = True) -> DistrictNodeProcess:
    dst = where / district
    shutil.copytree(chain, dst)
    return DistrictNodeProcess(dst, district=district, advertise=advertise, block_interval_ms=0)


async def _until(cond, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def until(cond, timeout: float = 60.0, what: str = "") -> None:
    """Wait for ``cond()``; fail (naming ``what``) if it does not come in ``timeout``."""
    await _until(cond, timeout)
    assert cond(), f"not in {timeout:g} s: {what or cond}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def attacker() -> AsyncIterator[Any]:
    """Another host on the LAN, as far as mDNS can tell: its own zeroconf on loopback."""
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncZeroconf

    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        yield zc
    finally:
        await zc.async_close()  # the bogus services it registered say goodbye


async def records_of(zc: Any, name: str) -> Any:
    """What an instance announces (read over mDNS, as anyone on the LAN can)."""
    from zeroconf.asyncio import AsyncServiceInfo

    info = AsyncServiceInfo(SERVICE_TYPE, name)
    assert await info.async_request(zc.zeroconf, 5000), name
    return info


async def spoof_goodbye(zc: Any, info: Any) -> None:
    """The goodbye packets (TTL 0) of an instance this host does not own."""
    await (await zc.async_unregister_service(info))


def spoof_announcement(zc: Any, info: Any, **change: Any) -> None:
    """Records of an instance this host does not own, with ``change`` (``port``,
    ``properties``) applied, sent as the instance's own announcement would be."""
    from zeroconf.asyncio import AsyncServiceInfo

    forged = AsyncServiceInfo(SERVICE_TYPE, info.name, port=change.get("port", info.port),
                              properties=change.get("properties", info.properties),
                              addresses=info.addresses, server=info.server)
    zc.zeroconf.async_send(zc.zeroconf.generate_service_broadcast(forged, None))


async def announce_bogus(zc: Any, label: str) -> str:
    """A node of our chain at an address where nothing listens; its URL."""
    from zeroconf.asyncio import AsyncServiceInfo

    port = free_port()
    info = AsyncServiceInfo(SERVICE_TYPE, f"bogus {label} {_RUN}.{SERVICE_TYPE}",
                            addresses=[socket.inet_aton("127.0.0.1")], port=port,
                            properties={"chain": CHAIN, "proto": "1"},
                            server=f"bogus-{label}-{_RUN}.local.")
    await (await zc.async_register_service(info))
    return f"http://127.0.0.1:{port}"


def alive_probes(d: Discovery, url: str) -> int:
    return sum(1 for _, u, alive in d.probes if u == url and alive)


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


# --- goodbyes and changes are not authenticated: a peer goes only when it no longer answers ---


def test_a_goodbye_removes_a_peer_only_when_it_no_longer_answers(chains: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    ours, _ = chains
    with advertised(ours, tmp_path, "east") as east, advertised(ours, tmp_path, "west") as west:

        async def scenario() -> None:
            added: list[tuple[str, str]] = []
            removed: list[tuple[str, str]] = []
            d = Discovery(CHAIN, lambda u, n: added.append((u, n)),
                          lambda u, n: removed.append((u, n)), interfaces=["127.0.0.1"],
                          recheck_s=0.3)
            async with d, attacker() as zc:
                await until(lambda: {east.url, west.url} <= set(d.found.values()), 30,
                            "both nodes found")
                name = {u: n for n, u in d.found.items()}
                east_info = await records_of(zc, name[east.url])
                west_info = await records_of(zc, name[west.url])

                # A goodbye for a node that is up: probed (twice), kept.
                await spoof_goodbye(zc, east_info)
                await until(lambda: alive_probes(d, east.url) >= 2, 60, "east probed twice")
                assert removed == [] and d.found[name[east.url]] == east.url

                # Its announcement, changed to name another chain: probed, kept.
                other = {**east_info.properties, b"chain": OTHER_CHAIN.encode()}
                spoof_announcement(zc, east_info, properties=other)
                await until(lambda: alive_probes(d, east.url) >= 4, 60, "east probed again")
                assert removed == [] and d.found[name[east.url]] == east.url

                # Moved to another port: the new address is only another place to ask (the
                # sync verifies what it serves); the old one, still answering, stays.
                moved = free_port()
                spoof_announcement(zc, east_info, port=moved)
                await until(lambda: alive_probes(d, east.url) >= 6, 60, "east probed again")
                assert (f"http://127.0.0.1:{moved}", name[east.url]) in added
                assert removed == []

                # A node that is gone: its goodbye (sent after it died) removes it.
                west.proc.kill()
                west.proc.wait()
                await spoof_goodbye(zc, west_info)
                await until(lambda: removed, 60, "west removed")
                assert removed == [(west.url, name[west.url])]
                assert (name[west.url], west.url, False) in d.probes
                assert name[west.url] not in d.found
                assert (east.url, name[east.url]) not in removed

        asyncio.run(scenario())


# --- the bound on discovered peers, against a flood of announcements --------------------------


def test_discovered_peers_are_bounded_and_a_flood_displaces_no_working_peer(
        chains: tuple[Path, Path], tmp_path: Path) -> None:
    ours, _ = chains
    anchor = (ours / "trust.cbor").read_bytes()
    with advertised(ours, tmp_path, "east") as east, \
            advertised(ours, tmp_path, "configured", advertise=False) as static:

        async def scenario() -> None:
            # Bans that outlast the test: a failing peer stays failing.
            config = sync.SyncConfig(ban_base_ms=600_000, ban_max_ms=600_000)
            with HeaderStore.open(tmp_path / "headers.sqlite") as store:
                ns = NodeSync(store, anchor, config, max_discovered=2)
                peers = ns.machine.peers

                def state(url: str) -> str | None:
                    p = peers.get(url)
                    return None if p is None else p.state

                ns.add_peer(static.url, "static")
                d = Discovery(CHAIN, lambda u, n: ns.add_peer(u, f"mdns:{n}"),
                              lambda u, n: ns.remove_peer(u, f"mdns:{n}"),
                              interfaces=["127.0.0.1"], reoffer_s=0.3, recheck_s=0.3)
                stop = asyncio.Event()
                task = asyncio.create_task(ns.run(stop_at_tip=False, stall_timeout_s=None,
                                                  stop=stop))
                try:
                    async with d, attacker() as zc:
                        await until(lambda: state(east.url) == OK and state(static.url) == OK,
                                    60, "east and the configured node usable")
                        # A bogus node takes the free place, fails, and is banned.
                        bogus = await announce_bogus(zc, "first")
                        await until(lambda: state(bogus) == BANNED, 60, "the bogus node banned")
                        assert peers.discovered_count() == 2
                        # A working node announced now takes the failing one's place.
                        west = advertised(ours, tmp_path, "west")
                        await asyncio.to_thread(west.start)
                        try:
                            await until(lambda: state(west.url) == OK and bogus not in peers,
                                        60, "west in place of the bogus node")
                            # A flood of announcements: refused; the working peers stay.
                            flood = await asyncio.gather(*(announce_bogus(zc, f"flood-{i}")
                                                           for i in range(6)))
                            await until(lambda: set(flood) <= set(ns.refused), 60,
                                        "the flood offered and refused")
                            assert [p.url for p in peers] == [static.url,
                                                              *sorted([east.url, west.url])]
                            assert all(p.state == OK and p.bans == 0 for p in peers)
                        finally:
                            await asyncio.to_thread(west.stop)
                        # West leaves (its goodbye, and it no longer answers): the free place
                        # goes to one of the bogus nodes offered again (each fails and gives
                        # way to the next); the working and the configured peers stay.
                        await until(lambda: west.url not in peers, 60, "west removed")
                        await until(lambda: any(p.url in flood or p.url == bogus
                                                for p in peers), 60, "a bogus node let in")
                        assert peers.discovered_count() == 2
                        assert state(east.url) == OK and state(static.url) == OK
                        assert next(iter(peers)).url == static.url
                finally:
                    stop.set()
                    await asyncio.wait_for(task, 30)

        asyncio.run(scenario())


# --- the PAD's negative answer names the nodes that gave it ----------------------------------


def test_the_negative_answer_names_the_nodes_asked(chains: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    ours, _ = chains
    anchor = (ours / "trust.cbor").read_bytes()
    dead = f"http://127.0.0.1:{free_port()}"  # configured, never up
    never = b"a document nobody deposited " + os.urandom(8)
    with advertised(ours, tmp_path, "east") as east, advertised(ours, tmp_path, "west") as west:

        async def scenario() -> None:
            # /v1/info is not asked again during the test: a peer that dies is found out by the
            # lookup itself.
            config = sync.SyncConfig(ban_base_ms=600_000, ban_max_ms=600_000,
                                     info_interval_ms=600_000)
            with HeaderStore.open(tmp_path / "headers.sqlite") as store:
                ns = NodeSync(store, anchor, config)
                ns.add_peer(dead, "static")
                d = Discovery(CHAIN, lambda u, n: ns.add_peer(u, f"mdns:{n}"),
                              lambda u, n: ns.remove_peer(u, f"mdns:{n}"),
                              interfaces=["127.0.0.1"])
                stop = asyncio.Event()
                task = asyncio.create_task(ns.run(stop_at_tip=False, stall_timeout_s=None,
                                                  stop=stop))
                peers = ns.machine.peers
                try:
                    async with d:
                        await until(lambda: all(getattr(peers.get(u), "state", None) == OK
                                                for u in (east.url, west.url))
                                    and getattr(peers.get(dead), "state", None) == BANNED,
                                    60, "east and west usable, the dead node banned")
                        # Two nodes answer: not found by 2 of the 3 known, the third named.
                        r = await pad.verify_document(ns, never, timeout_s=20)
                        assert (r["verdict"], r["found"], r["hits"]) == ("not_found", False, [])
                        assert (r["known"], r["asked"], r["answered"]) == (3, 2, 2)
                        assert sorted(r["peers"]) == sorted([east.url, west.url])
                        assert r["nodes"][0] == {"url": dead, "outcome": "not_asked",
                                                 "asked": False,
                                                 "reason": "banned: unreachable"}
                        assert sorted((n["url"], n["outcome"]) for n in r["nodes"][1:]) == \
                            sorted([(east.url, "answered"), (west.url, "answered")])
                        # West dies: it is asked, fails, and is named; east alone answered.
                        await asyncio.to_thread(west.proc.kill)
                        await asyncio.to_thread(west.proc.wait)
                        r = await pad.verify_document(ns, never, timeout_s=20)
                        assert r["verdict"] == "not_found"
                        assert (r["known"], r["asked"], r["answered"]) == (3, 2, 1)
                        assert r["peers"] == [east.url]
                        [w] = [n for n in r["nodes"] if n["url"] == west.url]
                        assert (w["outcome"], w["asked"]) == ("failed", True)
                        assert w["reason"] in ("unreachable", "disconnected"), w
                        # No node answers: no verdict, "could not be checked", nodes named.
                        await asyncio.to_thread(east.proc.kill)
                        await asyncio.to_thread(east.proc.wait)
                        with pytest.raises(pad.PadError) as e:
                            await pad.verify_document(ns, never, timeout_s=3)
                        assert e.value.status == 503 and e.value.code == "no_peers"
                        msg = str(e.value)
                        assert "could not be checked" in msg and "无法核验" in msg
                        assert all(u in msg for u in (dead, east.url, west.url)), msg
                finally:
                    stop.set()
                    await asyncio.wait_for(task, 30)

        asyncio.run(scenario())
