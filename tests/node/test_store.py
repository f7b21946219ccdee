"""The verified header store (appliance.node.store): contents, pruning, atomicity, crash safety.

The crash test runs tests/node/store_writer.py as a subprocess, kills it with SIGKILL at
seeded random instants, and after each kill reopens the store and checks it against what the
writer's deterministic chain says must be there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from appliance.node import store as store_mod
from appliance.node.store import HASH_LEN, HeaderStore, StoreCorrupt, StoreError, Tip

WRITER_PATH = Path(__file__).with_name("store_writer.py")
_spec = importlib.util.spec_from_file_location("store_writer", WRITER_PATH)
writer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(writer)

SEED = 7


def bid(h: int, fork: bytes = b"") -> bytes:
    return hashlib.sha256(b"id%d" % h + fork).digest()


def hdr(h: int, fork: bytes = b"") -> bytes:
    return b"header %d " % h + fork + bid(h - 1, fork) + b"." * 180


def seg(first: int, last: int) -> list[tuple[int, bytes, bytes]]:
    return [(h, bid(h), hdr(h)) for h in range(first, last + 1)]


SET_A = (hashlib.sha256(b"set A").digest(), b"set A bytes")
SET_B = (hashlib.sha256(b"set B").digest(), b"set B bytes")
ANCHOR_H = 100
ANCHOR = b"\xa4anchor-cbor"


def new_store(tmp_path: Path, name: str = "h.db", **kw) -> HeaderStore:
    s = HeaderStore.open(tmp_path / name, **kw)
    s.initialize("bj-gov", ANCHOR, ANCHOR_H, bid(ANCHOR_H), hdr(ANCHOR_H), SET_A[0], [SET_A])
    return s


def snapshot(s: HeaderStore) -> tuple:
    """Everything observable, for 'nothing changed' checks."""
    lo = s.window_start()
    tip = s.tip()
    return (tip, s.headers(0, tip.height + 10), lo,
            [s.block_id(h) for h in range(0, tip.height + 10)],
            {k: s.stats()[k] for k in ("headers", "checkpoints", "validator_sets", "evidence",
                                       "alarms")},
            s.validator_set(SET_A[0]), s.validator_set(SET_B[0]))


# -- contents --------------------------------------------------------------------------------


def test_append_and_read_back(tmp_path):
    with new_store(tmp_path) as s:
        assert s.initialized and s.chain_id == "bj-gov" and s.anchor == ANCHOR
        assert s.anchor_height == ANCHOR_H
        assert s.tip() == Tip(ANCHOR_H, bid(ANCHOR_H), hdr(ANCHOR_H), SET_A[0])
        assert s.validator_set(SET_A[0]) == SET_A[1]
        new_tip = s.append(seg(101, 150), SET_B[0], [SET_B])
        assert new_tip == Tip(150, bid(150), hdr(150), SET_B[0]) == s.tip()
        for h in range(ANCHOR_H, 151):
            assert s.header(h) == hdr(h) and s.block_id(h) == bid(h)
        assert s.header(99) is None and s.block_id(99) is None and s.header(151) is None
        assert s.headers(120, 123) == seg(120, 122)
        assert s.window_start() == ANCHOR_H
        st_ = s.stats()
        assert st_["headers"] == 51 and st_["validator_sets"] == 2
        assert st_["file_bytes"] == st_["db_bytes"] + st_["wal_bytes"] > 0
        assert st_["bytes_per_header"] == st_["file_bytes"] / 51


def test_pruning_keeps_exactly_window_and_checkpoints(tmp_path):
    with new_store(tmp_path, window=50, checkpoint_every=16) as s:
        tip = ANCHOR_H
        for size in (1, 7, 30, 64, 3, 200, 1, 45):
            s.append(seg(tip + 1, tip + size), SET_A[0])
            tip += size
            first = max(ANCHOR_H, tip - 49)
            assert s.window_start() == first
            assert [r[0] for r in s.headers(0, tip + 1)] == list(range(first, tip + 1))
            for h in range(0, tip + 2):
                held = first <= h <= tip
                checkpoint = h == ANCHOR_H or (ANCHOR_H < h <= tip and h % 16 == 0)
                assert s.header(h) == (hdr(h) if held else None), h
                assert s.block_id(h) == (bid(h) if held or checkpoint else None), h
        n_cp = 1 + len([h for h in range(ANCHOR_H + 1, tip + 1) if h % 16 == 0])
        assert s.stats()["checkpoints"] == n_cp
        assert s.stats()["headers"] == 50


def test_checkpoints_around(tmp_path):
    with new_store(tmp_path, window=100, checkpoint_every=64) as s:
        s.append(seg(101, 1000), SET_A[0])  # window 901..1000; checkpoints 100 (anchor), 128..960
        assert s.checkpoints_around(100) == ((100, bid(100)), (100, bid(100)))
        assert s.checkpoints_around(101) == ((100, bid(100)), (128, bid(128)))
        assert s.checkpoints_around(127) == ((100, bid(100)), (128, bid(128)))
        assert s.checkpoints_around(128) == ((128, bid(128)), (128, bid(128)))
        assert s.checkpoints_around(500) == ((448, bid(448)), (512, bid(512)))
        # between the last checkpoint below the window and the window's first header
        assert s.checkpoints_around(899) == ((896, bid(896)), (901, bid(901)))
        assert s.checkpoints_around(950) == ((950, bid(950)), (950, bid(950)))
        assert s.checkpoints_around(1000) == ((1000, bid(1000)), (1000, bid(1000)))
        for bad in (99, 0, 1001):
            with pytest.raises(StoreError, match="outside"):
                s.checkpoints_around(bad)
        # the bracket really verifies: walk the links of a "fetched" range
        (lo, lo_id), (hi, hi_id) = s.checkpoints_around(700)
        fetched = [hdr(h) for h in range(lo + 1, hi + 1)]
        prev = lo_id
        for h, raw in zip(range(lo + 1, hi + 1), fetched, strict=True):
            assert raw[len(b"header %d " % h):][:HASH_LEN] == prev
            prev = bid(h)
        assert prev == hi_id and hi - lo == 64


BAD_SEGMENTS = {
    "gap": lambda t: seg(t + 1, t + 3) + seg(t + 5, t + 6),
    "repeat": lambda t: seg(t + 1, t + 3) + seg(t + 3, t + 4),
    "descending": lambda t: list(reversed(seg(t + 1, t + 3))),
    "starts after tip+1": lambda t: seg(t + 2, t + 10),
    "starts at tip": lambda t: seg(t, t + 10),
    "starts below tip": lambda t: seg(t - 5, t + 10),
    "empty": lambda t: [],
    "short block_id": lambda t: [(t + 1, bid(t + 1)[:31], hdr(t + 1))],
    "block_id not bytes": lambda t: [(t + 1, bytearray(bid(t + 1)), hdr(t + 1))],
    "empty header": lambda t: seg(t + 1, t + 2) + [(t + 3, bid(t + 3), b"")],
    "header not bytes": lambda t: [(t + 1, bid(t + 1), "text")],
    "bool height": lambda t: [(True, bid(1), hdr(1))],
    "float height": lambda t: [(float(t + 1), bid(t + 1), hdr(t + 1))],
    "not a tuple": lambda t: [[t + 1, bid(t + 1), hdr(t + 1)]],
    "two fields": lambda t: [(t + 1, bid(t + 1))],
    "not a sequence": lambda t: iter(seg(t + 1, t + 2)),
}


@pytest.mark.parametrize("case", sorted(BAD_SEGMENTS))
def test_bad_segment_rejected_and_store_unchanged(tmp_path, case):
    with new_store(tmp_path, window=20, checkpoint_every=8) as s:
        s.append(seg(101, 140), SET_A[0])
        before = snapshot(s)
        with pytest.raises(StoreError):
            s.append(BAD_SEGMENTS[case](140), SET_B[0], [SET_B])
        assert snapshot(s) == before
        s.append(seg(141, 141), SET_A[0])  # still usable
        assert s.tip().height == 141


def test_failure_inside_the_transaction_rolls_back_everything(tmp_path):
    """A validator set that conflicts with a stored one is found after the headers, the
    checkpoints and the new tip are written, and the pruning done: all of it must go."""
    with new_store(tmp_path, window=20, checkpoint_every=8) as s:
        s.append(seg(101, 140), SET_A[0])
        before = snapshot(s)
        with pytest.raises(StoreError, match="other bytes"):
            s.append(seg(141, 200), SET_B[0], [SET_B, (SET_A[0], b"forged")])
        assert snapshot(s) == before
        with pytest.raises(StoreError):
            s.append(seg(141, 142), b"\x00" * 31)
        assert snapshot(s) == before


def test_append_before_initialize(tmp_path):
    with HeaderStore.open(tmp_path / "h.db") as s:
        assert not s.initialized
        with pytest.raises(StoreError, match="not initialized"):
            s.append(seg(1, 2), SET_A[0])
        for call in (s.tip, s.window_start, lambda: s.chain_id, lambda: s.anchor,
                     lambda: s.checkpoints_around(1)):
            with pytest.raises(StoreError, match="not initialized"):
                call()
        assert s.header(1) is None and s.block_id(1) is None


def test_initialize_once(tmp_path):
    with new_store(tmp_path) as s:
        s.append(seg(101, 110), SET_A[0])
        # the same anchor again: a no-op, the tip stays
        s.initialize("bj-gov", ANCHOR, ANCHOR_H, bid(ANCHOR_H), hdr(ANCHOR_H), SET_A[0], [SET_A])
        assert s.tip().height == 110
        before = snapshot(s)
        others = [
            ("other-chain", ANCHOR, ANCHOR_H, bid(ANCHOR_H)),
            ("bj-gov", ANCHOR + b"x", ANCHOR_H, bid(ANCHOR_H)),
            ("bj-gov", ANCHOR, ANCHOR_H + 1, bid(ANCHOR_H + 1)),
            ("bj-gov", ANCHOR, ANCHOR_H, bid(ANCHOR_H, b"fork")),
        ]
        for chain_id, anchor, height, block_id in others:
            with pytest.raises(StoreError, match="another anchor"):
                s.initialize(chain_id, anchor, height, block_id, hdr(height), SET_A[0], [SET_A])
        assert snapshot(s) == before
        assert s.chain_id == "bj-gov" and s.anchor == ANCHOR


@pytest.mark.parametrize("args", [
    ("", ANCHOR, 1, bid(1), hdr(1), SET_A[0]),
    ("c", b"", 1, bid(1), hdr(1), SET_A[0]),
    ("c", ANCHOR, -1, bid(1), hdr(1), SET_A[0]),
    ("c", ANCHOR, 1, bid(1)[:8], hdr(1), SET_A[0]),
    ("c", ANCHOR, 1, bid(1), b"", SET_A[0]),
    ("c", ANCHOR, 1, bid(1), hdr(1), b"short"),
])
def test_initialize_checks_its_arguments(tmp_path, args):
    with HeaderStore.open(tmp_path / "h.db") as s:
        with pytest.raises(StoreError):
            s.initialize(*args)
        assert not s.initialized


def test_validator_sets(tmp_path):
    with new_store(tmp_path) as s:
        assert s.validator_set(SET_B[0]) is None
        s.append(seg(101, 101), SET_B[0], [SET_B, SET_A])  # a known set again: fine
        assert s.validator_set(SET_B[0]) == SET_B[1]
        c = (hashlib.sha256(b"C").digest(), b"C bytes")
        s.add_validator_sets([c, SET_B])
        assert s.validator_set(c[0]) == c[1] and s.stats()["validator_sets"] == 3
        with pytest.raises(StoreError, match="other bytes"):
            s.add_validator_sets([(c[0], b"else")])
        with pytest.raises(StoreError):
            s.add_validator_sets([(b"short", b"x")])
        with pytest.raises(StoreError):
            s.add_validator_sets([(c[0],)])
        assert s.validator_set(c[0]) == c[1]


def test_evidence_and_alarms(tmp_path):
    with new_store(tmp_path) as s:
        assert s.alarms() == [] and s.evidence() == []
        e1 = s.add_evidence(120, "equivocation", b"commit A | commit B", at_ms=1000,
                            alarm="two commits at 120")
        assert s.add_evidence(120, "equivocation", b"commit A | commit B", at_ms=2000) == e1
        e2 = s.add_evidence(121, "equivocation", b"commit C | commit D", at_ms=3000)
        assert e2 != e1
        ev = s.evidence()
        assert [(e.id, e.height, e.kind, e.blob, e.at_ms) for e in ev] == [
            (e1, 120, "equivocation", b"commit A | commit B", 1000),
            (e2, 121, "equivocation", b"commit C | commit D", 3000)]
        assert s.evidence("other") == []
        (a,) = s.alarms()
        assert (a.kind, a.detail, a.raised_at_ms, a.evidence_id, a.active) == (
            "equivocation", "two commits at 120", 1000, e1, True)
        # the same active alarm is not duplicated; another one is
        assert s.raise_alarm("equivocation", "two commits at 120", at_ms=5,
                             evidence_id=e1) == a.id
        b_id = s.raise_alarm("peer", "peer 3 misbehaves", at_ms=4000)
        assert [x.id for x in s.alarms()] == [a.id, b_id]
        with pytest.raises(StoreError, match="no evidence"):
            s.raise_alarm("x", "y", at_ms=1, evidence_id=999)

        assert s.clear_alarm("equivocation", "operator wang", at_ms=9000) == 1
        assert s.clear_alarm("equivocation", "operator wang", at_ms=9001) == 0
        assert [x.id for x in s.alarms()] == [b_id]
        hist = {x.id: x for x in s.alarm_history()}
        assert hist[a.id].cleared_at_ms == 9000 and hist[a.id].cleared_by == "operator wang"
        assert not hist[a.id].active and hist[b_id].active
        # raised again after clearing: a new alarm, the history keeps the old one
        again = s.raise_alarm("equivocation", "two commits at 120", at_ms=9500, evidence_id=e1)
        assert again != a.id and len(s.alarm_history()) == 3
        for bad in (lambda: s.clear_alarm("peer", "", at_ms=1),
                    lambda: s.raise_alarm("", "d", at_ms=1),
                    lambda: s.raise_alarm("k", "d", at_ms=-1),
                    lambda: s.add_evidence(1, "k", b"", at_ms=1),
                    lambda: s.add_evidence(1, "k", b"x", at_ms=1, alarm="")):
            with pytest.raises(StoreError):
                bad()
        assert len(s.evidence()) == 2 and len(s.alarm_history()) == 3


def test_reopen_after_close(tmp_path):
    s = new_store(tmp_path, window=30, checkpoint_every=10)
    s.append(seg(101, 200), SET_B[0], [SET_B])
    eid = s.add_evidence(150, "equivocation", b"ev", at_ms=1, alarm="alarm")
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.tip()
    with HeaderStore.open(tmp_path / "h.db", window=30, checkpoint_every=10) as r:
        assert r.tip() == Tip(200, bid(200), hdr(200), SET_B[0])
        assert r.chain_id == "bj-gov" and r.anchor == ANCHOR
        assert r.headers(0, 300) == seg(171, 200)
        assert r.block_id(110) == bid(110) and r.block_id(111) is None
        assert r.validator_set(SET_B[0]) == SET_B[1]
        assert [e.id for e in r.evidence()] == [eid] and r.alarms()[0].detail == "alarm"
        r.append(seg(201, 205), SET_B[0])
    # the WAL is folded in and removed on the last close
    assert not Path(str(tmp_path / "h.db") + "-wal").exists()
    # a smaller window at reopen prunes at the next append; a larger one keeps what is left
    with HeaderStore.open(tmp_path / "h.db", window=5, checkpoint_every=10) as r:
        r.append(seg(206, 206), SET_B[0])
        assert r.window_start() == 202
    with HeaderStore.open(tmp_path / "h.db", window=1000) as r:
        assert r.window_start() == 202 and r.tip().height == 206


def test_wal_mode_synchronous_full_and_foreign_keys(tmp_path):
    with new_store(tmp_path) as s:
        db = s._conn()  # white-box: the connection's settings are the point of this test
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert db.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert db.execute("PRAGMA user_version").fetchone() == (store_mod.SCHEMA_VERSION,)
        assert db.execute("PRAGMA application_id").fetchone() == (store_mod.APPLICATION_ID,)


def test_wal_and_file_stay_bounded(tmp_path):
    """Pruned pages are reused: once the window is full the file stops growing, and the WAL
    never stays above the autocheckpoint size plus one transaction."""
    with new_store(tmp_path, window=5000, checkpoint_every=1024) as s:
        tip, sizes, wal_max = ANCHOR_H, [], 0
        for i in range(60):
            s.append(seg(tip + 1, tip + 500), SET_A[0])
            tip += 500
            st_ = s.stats()
            wal_max = max(wal_max, st_["wal_bytes"])
            if i in (19, 59):
                sizes.append(st_["db_bytes"])
        assert s.stats()["headers"] == 5000
        assert sizes[1] <= sizes[0] * 1.05, sizes  # 10 000 vs 30 000 headers appended
        limit = (store_mod.WAL_AUTOCHECKPOINT_PAGES + 200) * st_["page_size"]
        assert wal_max <= limit, (wal_max, limit)
        s.checkpoint_wal()
        assert s.stats()["wal_bytes"] == 0


def test_invalid_open_parameters(tmp_path):
    for kw in ({"window": 0}, {"window": 1.5}, {"checkpoint_every": 0},
               {"checkpoint_every": True}):
        with pytest.raises(StoreError):
            HeaderStore.open(tmp_path / "h.db", **kw)


def test_busy_database_is_a_store_error(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_S", 0.05)
    with new_store(tmp_path) as s:
        other = sqlite3.connect(tmp_path / "h.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError) as exc:
                s.append(seg(101, 102), SET_A[0])
            assert isinstance(exc.value.__cause__, sqlite3.Error)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert s.tip().height == ANCHOR_H
        s.append(seg(101, 102), SET_A[0])


def test_sqlite_error_inside_a_write_rolls_back_and_is_a_store_error(tmp_path):
    """Another connection planted a checkpoint where the segment will write one: the
    IntegrityError comes mid-transaction; it must surface as a StoreError, all undone."""
    with new_store(tmp_path, window=20, checkpoint_every=8) as s:
        s.append(seg(101, 140), SET_A[0])
        other = sqlite3.connect(tmp_path / "h.db", isolation_level=None)
        other.execute("INSERT INTO checkpoints VALUES (152, ?)", (bid(152),))
        other.close()
        before = snapshot(s)
        with pytest.raises(StoreError) as exc:
            s.append(seg(141, 160), SET_B[0], [SET_B])
        assert isinstance(exc.value.__cause__, sqlite3.IntegrityError)
        assert snapshot(s) == before


# -- corrupt files ---------------------------------------------------------------------------


def _closed_store(tmp_path: Path, n: int = 3000) -> Path:
    with new_store(tmp_path, window=n) as s:
        s.append(seg(101, 100 + n), SET_A[0])
    return tmp_path / "h.db"


def test_segment_is_stored_as_given_in_one_row(tmp_path):
    """White-box: an append is one row holding the header bytes exactly as given."""
    with new_store(tmp_path) as s:
        s.append(seg(101, 150), SET_A[0])
        db = s._conn()
        rows = db.execute("SELECT first, count, block_ids, headers FROM segments "
                          "ORDER BY first").fetchall()
        assert [(r[0], r[1]) for r in rows] == [(100, 1), (101, 50)]
        assert rows[1][2] == b"".join(bid(h) for h in range(101, 151))
        assert rows[1][3] == b"".join(hdr(h) for h in range(101, 151))


def test_damaged_segment_row_is_store_corrupt_on_read(tmp_path):
    """A segment row whose offsets do not fit its headers (not the tip's, so open() does not
    read it) is reported when read, never returned as header bytes."""
    with new_store(tmp_path) as s:
        s.append(seg(101, 150), SET_A[0])
        s.append(seg(151, 160), SET_A[0])
    db = sqlite3.connect(tmp_path / "h.db", isolation_level=None)
    db.execute("UPDATE segments SET headers = substr(headers, 1, length(headers) - 1) "
               "WHERE first = 101")
    db.close()
    with HeaderStore.open(tmp_path / "h.db") as s:
        assert s.header(155) == hdr(155)
        for read in (lambda: s.header(120), lambda: s.block_id(120),
                     lambda: s.headers(140, 152), lambda: s.checkpoints_around(120)):
            with pytest.raises(StoreCorrupt, match="malformed"):
                read()


_SCHEMA_V1 = (
    "CREATE TABLE anchor (id INTEGER PRIMARY KEY CHECK (id = 0), chain_id TEXT NOT NULL, "
    "anchor BLOB NOT NULL, height INTEGER NOT NULL, block_id BLOB NOT NULL)",
    "CREATE TABLE headers (height INTEGER PRIMARY KEY, block_id BLOB NOT NULL, "
    "header BLOB NOT NULL)",
    "CREATE TABLE checkpoints (height INTEGER PRIMARY KEY, block_id BLOB NOT NULL)",
    "CREATE TABLE state (id INTEGER PRIMARY KEY CHECK (id = 0), tip_height INTEGER NOT NULL "
    "REFERENCES headers (height), next_set_hash BLOB NOT NULL)",
    "CREATE TABLE validator_sets (id INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE, "
    "body BLOB NOT NULL)",
    "CREATE TABLE evidence (id INTEGER PRIMARY KEY, height INTEGER NOT NULL, kind TEXT NOT "
    "NULL, blob BLOB NOT NULL, digest BLOB NOT NULL, at_ms INTEGER NOT NULL, "
    "UNIQUE (kind, height, digest))",
    "CREATE TABLE alarms (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, detail TEXT NOT NULL, "
    "raised_at_ms INTEGER NOT NULL, evidence_id INTEGER REFERENCES evidence (id), "
    "cleared_at_ms INTEGER, cleared_by TEXT, "
    "CHECK ((cleared_at_ms IS NULL) = (cleared_by IS NULL)))",
)


def _v1_store(path: Path, low: int, tip: int, hole: int | None = None) -> None:
    """A store as schema version 1 wrote it: one row per header, low..tip held."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("BEGIN")
    for stmt in _SCHEMA_V1:
        db.execute(stmt)
    db.execute(f"PRAGMA application_id={store_mod.APPLICATION_ID}")
    db.execute("PRAGMA user_version=1")
    db.execute("INSERT INTO anchor VALUES (0, 'bj-gov', ?, ?, ?)", (ANCHOR, ANCHOR_H,
                                                                  bid(ANCHOR_H)))
    db.executemany("INSERT INTO headers VALUES (?, ?, ?)",
                   [r for r in seg(low, tip) if r[0] != hole])
    db.executemany("INSERT INTO checkpoints VALUES (?, ?)",
                   [(h, bid(h)) for h in range(ANCHOR_H, tip + 1)
                    if h == ANCHOR_H or h % 64 == 0])
    db.execute("INSERT INTO state VALUES (0, ?, ?)", (tip, SET_B[0]))
    db.execute("INSERT INTO validator_sets (hash, body) VALUES (?, ?)", SET_A)
    db.execute("INSERT INTO evidence (height, kind, blob, digest, at_ms) "
               "VALUES (5, 'equivocation', x'01', x'02', 7)")
    db.execute("COMMIT")
    db.close()


def test_schema_1_store_is_migrated(tmp_path):
    p = tmp_path / "v1.db"
    _v1_store(p, 900, 3456)
    with HeaderStore.open(p, window=3000, checkpoint_every=64) as s:
        assert s._conn().execute("PRAGMA user_version").fetchone() == (store_mod.SCHEMA_VERSION,)
        assert s.tip() == Tip(3456, bid(3456), hdr(3456), SET_B[0])
        assert s.window_start() == 900 and s.stats()["headers"] == 3456 - 900 + 1
        assert s.headers(0, 5000) == seg(900, 3456)
        assert s.block_id(64 * 5) == bid(64 * 5) and s.header(899) is None
        assert s.checkpoints_around(850) == ((832, bid(832)), (896, bid(896)))
        assert s.validator_set(SET_A[0]) == SET_A[1] and len(s.evidence()) == 1
        s.window = 2000
        s.append(seg(3457, 3500), SET_A[0])
        assert s.window_start() == 3500 - 1999
    with HeaderStore.open(p) as s:  # reopens as version 2
        assert s.tip().height == 3500 and s.header(1501) == hdr(1501)
        assert s.header(1500) is None


def test_schema_1_store_with_a_hole_is_store_corrupt_and_left_as_it_was(tmp_path):
    p = tmp_path / "v1.db"
    _v1_store(p, 900, 3456, hole=2000)

    def contents() -> dict[str, list[tuple]]:
        db = sqlite3.connect(p)
        try:
            tables = [r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            out = {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}
            out["user_version"] = db.execute("PRAGMA user_version").fetchall()
            return out
        finally:
            db.close()

    before = contents()
    assert before["user_version"] == [(1,)] and len(before["headers"]) == 3456 - 900
    with pytest.raises(StoreCorrupt, match="not contiguous"):
        HeaderStore.open(p)
    assert contents() == before  # the migration rolled back: every table, row and the version


def test_garbage_file_is_store_corrupt(tmp_path):
    p = tmp_path / "h.db"
    p.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(StoreCorrupt):
        HeaderStore.open(p)


def test_overwritten_page_is_store_corrupt(tmp_path):
    p = _closed_store(tmp_path)
    data = bytearray(p.read_bytes())
    page = 4096
    assert len(data) > 40 * page
    data[20 * page:22 * page] = random.Random(1).randbytes(2 * page)
    p.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt):
        HeaderStore.open(p)


def test_truncated_file_is_store_corrupt(tmp_path):
    p = _closed_store(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreCorrupt):
        HeaderStore.open(p)


def test_another_sqlite_database_is_store_corrupt(tmp_path):
    p = tmp_path / "other.db"
    db = sqlite3.connect(p)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(StoreCorrupt, match="another application"):
        HeaderStore.open(p)
    db = sqlite3.connect(p)
    db.execute("PRAGMA application_id = 42")
    db.close()
    with pytest.raises(StoreCorrupt, match="another application"):
        HeaderStore.open(p)
    # refused without being touched: still in its rollback-journal mode, its data intact
    db = sqlite3.connect(p)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)
    db.close()
    # an empty database with only a user_version set is not ours either
    q = tmp_path / "versioned.db"
    db = sqlite3.connect(q)
    db.execute("PRAGMA user_version = 3")
    db.close()
    with pytest.raises(StoreCorrupt):
        HeaderStore.open(q)


def test_unknown_schema_version_is_store_corrupt(tmp_path):
    p = _closed_store(tmp_path, 10)
    db = sqlite3.connect(p)
    db.execute(f"PRAGMA user_version = {store_mod.SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreCorrupt, match="schema version"):
        HeaderStore.open(p)


@pytest.mark.parametrize("sql", [
    # segments: the anchor's (100), 101..110, 111..200
    "DELETE FROM segments WHERE first = 101",          # a hole in the window
    "DELETE FROM segments WHERE first = 111",          # the tip is left dangling
    "UPDATE segments SET count = 9 WHERE first = 101",  # a gap between two segments
    "UPDATE segments SET block_ids = substr(block_ids, 33) WHERE first = 101",
    "UPDATE segments SET offsets = zeroblob(length(offsets)) WHERE first = 111",
    "UPDATE segments SET headers = substr(headers, 2) WHERE first = 111",
    "UPDATE segments SET headers = 'text' WHERE first = 101",
    "UPDATE state SET low_height = 99",                # the window below the anchor
    "UPDATE state SET low_height = 201",               # past the tip
    "UPDATE state SET tip_height = 199",               # the tip is not the last header
    "UPDATE state SET tip_header = X'00'",             # the tip row is not that header
    "UPDATE state SET tip_block_id = zeroblob(32)",
    "DELETE FROM checkpoints WHERE height = 100",      # the anchor's checkpoint
    "DELETE FROM state",                               # anchor without tip
    "DELETE FROM anchor",                              # headers without anchor
])
def test_broken_invariants_are_store_corrupt(tmp_path, sql):
    with new_store(tmp_path) as s:
        s.append(seg(101, 110), SET_A[0])
        s.append(seg(111, 200), SET_A[0])
    db = sqlite3.connect(tmp_path / "h.db", isolation_level=None)
    db.execute(sql)
    db.close()
    with pytest.raises(StoreCorrupt):
        HeaderStore.open(tmp_path / "h.db")


def test_unopenable_path_is_store_error(tmp_path):
    with pytest.raises(StoreError):
        HeaderStore.open(tmp_path / "no such dir" / "h.db")
    with pytest.raises(StoreError):
        HeaderStore.open(tmp_path)  # a directory


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_file_raises_only_store_errors(tmp_path_factory, data):
    """Flipped bytes anywhere in a store: open and every read either work or raise a
    StoreError; no sqlite3 (or other) exception escapes."""
    base = tmp_path_factory.getbasetemp() / "mutation-source.db"
    if not base.exists():
        d = tmp_path_factory.mktemp("src")
        base.write_bytes(_closed_store(d, 400).read_bytes())
    raw = bytearray(base.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    d = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    (d / "h.db").write_bytes(bytes(raw))
    try:
        s = HeaderStore.open(d / "h.db", integrity_check=data.draw(st.booleans()))
    except StoreError:
        return
    with s:
        for call in (s.tip, s.stats, s.window_start, s.alarms, s.evidence,
                     lambda: s.header(250), lambda: s.block_id(64),
                     lambda: s.checkpoints_around(150),
                     lambda: s.append(seg(501, 502), SET_A[0])):
            try:
                call()
            except StoreError:
                pass


# -- model-based ------------------------------------------------------------------------------


class StoreMachine(RuleBasedStateMachine):
    """The store against a dict model, with random windows, spacings, reopens and bad input."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.path = Path(self.dir) / "h.db"
        self.store: HeaderStore | None = None

    @initialize(window=st.integers(1, 40), every=st.integers(1, 12), anchor=st.integers(0, 30))
    def start(self, window, every, anchor):
        self.window, self.every, self.anchor = window, every, anchor
        self.store = HeaderStore.open(self.path, window=window, checkpoint_every=every)
        self.store.initialize("m", b"a", anchor, bid(anchor), hdr(anchor), SET_A[0], [SET_A])
        self.tip = anchor
        self.next_set = SET_A[0]
        self.held = {anchor}
        self.checkpoints = {anchor}

    @rule(n=st.integers(1, 20), change=st.booleans())
    def append(self, n, change):
        nxt = SET_B[0] if change else SET_A[0]
        self.store.append(seg(self.tip + 1, self.tip + n), nxt, [SET_B] if change else [])
        for h in range(self.tip + 1, self.tip + n + 1):
            self.held.add(h)
            if h % self.every == 0:
                self.checkpoints.add(h)
        self.tip += n
        self.next_set = nxt
        self.held = {h for h in self.held if h > self.tip - self.window}

    @rule(offset=st.integers(-3, 3), n=st.integers(0, 5),
          gap=st.integers(0, 4))
    def bad_append(self, offset, n, gap):
        if offset == 1 and (gap == 0 or n == 0):
            offset = 0  # that one would be valid
        headers = seg(self.tip + offset, self.tip + offset + n)
        if gap and len(headers) > 1:
            headers = headers[:1] + seg(self.tip + offset + 1 + gap, self.tip + offset + gap + n)
        with pytest.raises(StoreError):
            self.store.append(headers, SET_B[0], [SET_B])

    @rule(window=st.one_of(st.none(), st.integers(1, 40)))
    def reopen(self, window):
        self.store.close()
        if window is not None:
            self.window = window  # takes effect at the next append
        self.store = HeaderStore.open(self.path, window=self.window,
                                      checkpoint_every=self.every)

    @invariant()
    def agrees_with_model(self):
        s = self.store
        if s is None:
            return
        assert s.tip() == Tip(self.tip, bid(self.tip), hdr(self.tip), self.next_set)
        assert s.window_start() == min(self.held)
        for h in range(0, self.tip + 3):
            assert s.header(h) == (hdr(h) if h in self.held else None)
            known = h in self.held or h in self.checkpoints
            assert s.block_id(h) == (bid(h) if known else None)
        known = sorted(self.held | self.checkpoints)
        for h in range(self.anchor, self.tip + 1):
            lo = max(k for k in known if k <= h)
            hi = min(k for k in known if k >= h)
            assert s.checkpoints_around(h) == ((lo, bid(lo)), (hi, bid(hi)))

    def teardown(self):
        if self.store is not None:
            self.store.close()
        for p in Path(self.dir).iterdir():
            p.unlink()
        os.rmdir(self.dir)


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)


# -- crash safety ----------------------------------------------------------------------------

KILLS = 60
WINDOW, EVERY = 2000, 64


def _start_writer(db: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WRITER_PATH), str(db), str(SEED), "--window", str(WINDOW),
         "--every", str(EVERY), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_store(db: Path, reported_tip: int | None) -> int:
    """Reopen after a kill; everything must be exactly what the writer's chain says."""
    w = writer
    with HeaderStore.open(db, window=WINDOW, checkpoint_every=EVERY) as s:
        if not s.initialized:  # killed before initialize committed
            assert reported_tip is None
            assert s.stats()["headers"] == 0 and s.stats()["checkpoints"] == 0
            return -1
        assert s.chain_id == w.CHAIN_ID and s.anchor == w.anchor_bytes(SEED)
        tip = s.tip()
        t = tip.height
        # atomic: the tip is the end of a segment; durable: every reported commit is there
        assert w.is_segment_end(SEED, t), t
        assert reported_tip is None or t >= reported_tip, (t, reported_tip)
        assert tip == Tip(t, w.block_id(SEED, t), w.header(SEED, t),
                          w.set_hash(SEED, w.epoch(t + 1)))
        assert s.validator_set(tip.next_set_hash) == w.set_bytes(SEED, w.epoch(t + 1))
        first = max(w.ANCHOR, t - WINDOW + 1)
        assert s.window_start() == first
        assert s.headers(0, t + 100) == [(h, w.block_id(SEED, h), w.header(SEED, h))
                                         for h in range(first, t + 1)]
        assert s.header(first - 1) is None
        cps = [w.ANCHOR] + [h for h in range(w.ANCHOR + 1, t + 1) if h % EVERY == 0]
        assert s.stats()["checkpoints"] == len(cps)
        for h in cps:
            assert s.block_id(h) == w.block_id(SEED, h), h
        for h in range(w.ANCHOR + 1, first, 97):  # pruned, not checkpoints: gone
            if h % EVERY:
                assert s.block_id(h) is None
        return t


def test_kill_9_during_sync_at_random_points(tmp_path):
    db = tmp_path / "kill.db"
    rnd = random.Random(20240601)
    tips, in_flight, rolled_back = [], 0, 0
    for _ in range(KILLS):
        proc = _start_writer(db)
        seen = ""
        mode = rnd.random()
        if mode < 0.5:
            # at a random instant: during start-up, open and initialize (delays under about
            # 0.1 s), or anywhere in the sync loop
            delay = rnd.uniform(0.0, 0.1) if mode < 0.15 else rnd.uniform(0.1, 0.3)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                pass
        else:
            # aimed: a few milliseconds after the writer announced its k-th append
            for _ in range(rnd.randint(1, 40)):
                while not (line := proc.stdout.readline()).startswith("begin"):
                    assert line, proc.stderr.read()
                    seen += line
                seen += line
            time.sleep(rnd.uniform(0.0, 0.004))
        assert proc.returncode is None, proc.stderr.read()  # the writer must not finish alone
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # read through the file objects: readline() above may have buffered more than a line
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        text = seen + out
        # only whole lines count: the kill may cut the writer's last line short
        complete = text.splitlines()[: text.count("\n")]
        words = [tuple(line.split()) for line in complete]
        assert all(len(w) == 2 for w in words), (words, err)
        assert all(word in ("open", "begin", "tip") for word, _ in words), (words, err)
        reported = [int(v) for word, v in words if word in ("open", "tip")]
        tip = _check_store(db, reported[-1] if reported else None)
        if words and words[-1][0] == "begin":
            # killed with an append in flight: rolled back, or committed but not yet reported
            # (the commit record was in the WAL, the fsync or the checkpoint after it was not
            # finished)
            in_flight += 1
            rolled_back += tip == reported[-1]
        tips.append(tip)
    print(f"{KILLS} kills: {in_flight} with an append in flight, {rolled_back} of them rolled "
          f"back; final tip {tips[-1]}")
    # the kills did land mid-append, and the chain made progress across them
    assert in_flight >= KILLS // 4, in_flight
    assert rolled_back >= 5, rolled_back
    assert tips[-1] > writer.ANCHOR + 10 * WINDOW, tips[-1]
    assert tips == sorted(tips)
    # resume: a writer left alone carries on from the tip to the target and exits cleanly
    target = tips[-1] + 5000
    proc = _start_writer(db, "--until", str(target))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == f"open {tips[-1]}"
    assert lines[1] == f"begin {writer.segment_after(SEED, tips[-1])[-1][0]}"
    final = _check_store(db, int(lines[-1].split()[1]))
    assert lines[-1] == f"done {final}" and final >= target


def test_store_files_are_private_whatever_the_umask(tmp_path) -> None:
    """The header store and its WAL are mode 0600 even under a permissive umask."""
    import stat

    old = os.umask(0o002)
    try:
        path = tmp_path / "headers.sqlite"
        store = HeaderStore.open(path)
        try:
            store._conn().execute("CREATE TABLE IF NOT EXISTS t (x)")  # a write: the WAL
        finally:
            store.close()
    finally:
        os.umask(old)
    for f in tmp_path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
