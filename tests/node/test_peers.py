"""The peer table's policy (appliance/node/peers.py) and how NodeSync applies it when discovery
offers a peer (appliance/node/client.py): configured peers first and always kept, at most
``max_discovered`` discovered ones, and a new discovery displaces only a failing one."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.node.client import NodeSync
from appliance.node.peers import (
    BANNED,
    CONFLICT,
    MAX_SOURCES,
    NEW,
    OK,
    PeerTable,
    PeerTableFull,
)
from appliance.node.store import HeaderStore
from hil.chain import ChainParams, generate


def table(n: int = 2) -> PeerTable:
    return PeerTable(ban_base_ms=1000, ban_max_ms=10_000, max_discovered=n)


def test_configured_peers_are_not_counted_and_come_first() -> None:
    t = table(2)
    t.add("http://d1", "mdns:one")
    t.add("http://d2", "mdns:two")
    for i in range(5):  # configured ones are always admitted, bound or not
        t.add(f"http://s{i}", "static" if i % 2 else "sim")
    assert t.discovered_count() == 2 and len(t) == 7
    order = [p.url for p in t]
    assert order == [f"http://s{i}" for i in range(5)] + ["http://d1", "http://d2"]
    for p in t:
        p.state = OK
    assert [p.url for p in t.usable()] == order
    assert [p["url"] for p in t.snapshot()] == order
    # A configured URL that is also discovered is configured: it is first and not counted.
    t.add("http://a-static", "static")
    t.add("http://a-static", "mdns:three")
    assert t.discovered_count() == 2 and next(iter(t)).url == "http://a-static"


def test_a_new_discovery_over_the_bound_is_refused_and_changes_nothing() -> None:
    t = table(2)
    t.add("http://d1", "mdns:one")
    t.add("http://d2", "mdns:two")
    before = t.snapshot()
    with pytest.raises(PeerTableFull) as e:
        t.add("http://D3:80/", "mdns:three")
    assert e.value.url == "http://d3" and e.value.limit == 2
    assert t.snapshot() == before and "http://d3" not in t
    # Known URLs still take new sources; configured ones still come in.
    t.add("http://d1", "mdns:one-again")
    assert t.get("http://d1").sources == {"mdns:one", "mdns:one-again"}
    t.add("http://s", "static")
    assert len(t) == 3 and t.discovered_count() == 2
    # A place frees up when a discovered peer leaves.
    assert t.remove("http://d2", "mdns:two")
    t.add("http://d3", "mdns:three")
    assert t.discovered_count() == 2


def test_a_configured_peer_that_loses_its_configuration_counts_again() -> None:
    t = table(1)
    t.add("http://both", "static")
    t.add("http://both", "mdns:b")
    t.add("http://d", "mdns:d")
    assert t.discovered_count() == 1
    assert not t.remove("http://both", "static")  # still discovered
    assert t.discovered_count() == 2  # over the bound: nothing is dropped for it ...
    with pytest.raises(PeerTableFull):  # ... but nothing new comes in
        t.add("http://e", "mdns:e")


def test_eviction_candidate_is_the_worst_failing_discovered_peer() -> None:
    t = table(8)
    now = 0
    for url in ("http://ok", "http://new", "http://conflict", "http://banned1", "http://back"):
        t.add(url, f"mdns:{url[7:]}")
    t.add("http://static-banned", "static")
    t.get("http://ok").state = OK
    t.mark_conflict("http://conflict", "conflicting valid commit at 7")
    # Nothing failing yet: working, new and conflict peers are never candidates.
    assert t.eviction_candidate() is None
    t.ban("http://static-banned", "timeout", now)  # configured: never a candidate
    assert t.eviction_candidate() is None
    t.ban("http://banned1", "timeout", now)
    assert t.eviction_candidate().url == "http://banned1"
    # "back": banned twice, the ban ran out, not served since: failing, with more strikes.
    t.ban("http://back", "proof", now)
    t.expire(now + 1000)
    t.ban("http://back", "proof", now + 1000)
    t.expire(now + 10_000)
    assert t.get("http://back").state == NEW and t.get("http://back").strikes == 2
    assert t.get("http://banned1").state == NEW  # its ban ran out too: still failing
    assert t.eviction_candidate().url == "http://back"
    # Serving verified data forgives the strikes: it is no longer failing.
    t.good("http://back")
    assert t.eviction_candidate().url == "http://banned1"
    t.good("http://banned1")
    assert t.eviction_candidate() is None
    assert t.get("http://ok").state == OK and t.get("http://conflict").state == CONFLICT


def test_one_url_keeps_a_bounded_number_of_discovery_sources() -> None:
    t = table(1)
    for i in range(MAX_SOURCES + 20):
        t.add("http://n", f"mdns:name-{i}")
    assert len(t.get("http://n").sources) == MAX_SOURCES
    t.add("http://n", "static")  # configuration is always recorded
    assert "static" in t.get("http://n").sources


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_the_bound_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ValueError):
        PeerTable(max_discovered=bad)  # type: ignore[arg-type]


# --- NodeSync.add_peer: the policy applied (no network: the table and the machine only) ------


@pytest.fixture(scope="module")
def anchor(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("chain") / "chain"
    generate(out, ChainParams(chain_id="peers-test", seed="peers", validators=1), 3)
    return (out / "trust.cbor").read_bytes()


def test_node_sync_displaces_only_a_failing_discovered_peer(anchor: bytes,
                                                            tmp_path: Path) -> None:
    with HeaderStore.open(tmp_path / "headers.sqlite") as store:
        ns = NodeSync(store, anchor, max_discovered=2)
        peers = ns.machine.peers
        assert ns.add_peer("http://static-1/", "static") == "http://static-1"
        ns.add_peer("http://a", "mdns:a")
        ns.add_peer("http://b", "mdns:b")
        for p in peers:
            p.state = OK
        # Full of working peers: a new discovery is refused, once logged, nothing changes.
        assert ns.add_peer("http://c", "mdns:c") is None
        assert ns.add_peer("http://c", "mdns:c") is None
        assert ns.refused == ("http://c",)
        assert [p.url for p in peers] == ["http://static-1", "http://a", "http://b"]
        # Configured peers come in whatever the bound.
        assert ns.add_peer("http://static-2", "static") == "http://static-2"
        # "b" fails: the next discovery takes its place, and the machine forgets "b".
        ns.machine.ban_peer("http://b", "unreachable", ns.now_ms())
        assert ns.add_peer("http://c", "mdns:c") == "http://c"
        assert "http://b" not in peers and ns.refused == ()
        assert [p.url for p in peers] == ["http://static-1", "http://static-2", "http://a",
                                          "http://c"]
        assert peers.get("http://a").state == OK
        # A failing configured peer is never displaced.
        ns.machine.ban_peer("http://static-1", "timeout", ns.now_ms())
        peers.get("http://c").state = OK
        assert ns.add_peer("http://d", "mdns:d") is None
        assert "http://static-1" in peers and peers.get("http://static-1").state == BANNED
        # Offering a known peer again changes nothing.
        assert ns.add_peer("http://a", "mdns:a") == "http://a"
        assert [p.url for p in peers] == ["http://static-1", "http://static-2", "http://a",
                                          "http://c"]
