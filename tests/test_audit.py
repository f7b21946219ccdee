"""The audit log (appliance.audit): chain verification, tampering, torn tails, retention,
what may not be logged, concurrent writers.

Tampering is done on the files the way someone with disk access would: lines edited and
written back in canonical form (so only the chain can catch it), swapped, deleted, inserted,
cut out. Each case must be reported with the seq where the chain first breaks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import audit
from appliance.audit import (
    DAY_MS,
    MAX_TEXT,
    AuditCorrupt,
    AuditFieldError,
    AuditLog,
    AuditTornTail,
    entry_hash,
    repair,
    verify,
)
from appliance.gm import sm3

T0 = 1_763_964_000_000  # 2025-11-24T06:00Z: entries 0-16 on one day, 17- on the next
REPO = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self, start: int = T0, step: int = 3_600_000) -> None:
        self.now, self.step = start, step

    def __call__(self) -> int:
        self.now += self.step
        return self.now


def make_log(path: Path, n: int = 30, step: int = 3_600_000, **kw) -> AuditLog:
    """n entries, one an hour: two segments or more (a new one each UTC day)."""
    log = AuditLog(path, clock_ms=Clock(step=step), **kw)
    kinds = ["login", "sign", "authorization", "alarm", "login_failed"]
    for i in range(n):
        log.append(kinds[i % len(kinds)], user=f"clerk{i}", n=i, ok=i % 2 == 0,
                   tx_id=os.urandom(32).hex(), tags=["a", i])
    return log


def segments(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix == ".jsonl")


def all_lines(path: Path) -> list[tuple[Path, int, dict]]:
    """(segment, line index, entry) of every entry in order."""
    out = []
    for seg in segments(path):
        for i, raw in enumerate(seg.read_bytes().splitlines()):
            out.append((seg, i, json.loads(raw)))
    return out


def canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def rewrite(seg: Path, lines: list[bytes]) -> None:
    seg.write_bytes(b"".join(line + b"\n" for line in lines))


def edit_entry(path: Path, seq: int, change) -> None:
    for seg, i, entry in all_lines(path):
        if entry["seq"] == seq:
            lines = seg.read_bytes().splitlines()
            change(entry)
            lines[i] = canonical(entry)
            rewrite(seg, lines)
            return
    raise AssertionError(f"no entry {seq}")


def broken_at(path: Path, index: int, error: str | None = None) -> audit.VerifyReport:
    report = verify(path)
    assert not report.ok, report
    assert report.index == index, report
    if error is not None:
        assert report.error == error, report
    return report


# -- a sound log ----------------------------------------------------------------------------


def test_sound_log_verifies(tmp_path):
    log = make_log(tmp_path)
    report = verify(tmp_path)
    assert report.ok and report.entries == 30 and report.start == "genesis"
    assert (report.first_seq, report.last_seq, report.segments) == (0, 29, 2)
    entries = [e for _, _, e in all_lines(tmp_path)]
    assert [e["seq"] for e in entries] == list(range(30))
    assert entries[0]["prev"] == "00" * 32
    for a, b in zip(entries, entries[1:], strict=False):
        assert b["prev"] == a["hash"]
    last = log.tail(1)[0]
    assert report.head == last.hash.hex() and last.seq == 29
    # the hash is SM3 of the canonical CBOR of the entry without its hash
    e = entries[7]
    assert entry_hash(e["seq"], e["ts"], e["kind"], e["fields"],
                      bytes.fromhex(e["prev"])).hex() == e["hash"]


def test_segments_follow_the_utc_day(tmp_path):
    make_log(tmp_path, n=50)
    for seg in segments(tmp_path):
        days = {e["ts"] // DAY_MS for s, _, e in all_lines(tmp_path) if s == seg}
        assert len(days) == 1
        first = json.loads(seg.read_bytes().splitlines()[0])
        assert int(seg.stem) == first["seq"]


def test_size_bounded_segments(tmp_path):
    make_log(tmp_path, n=40, step=1000, max_segment_bytes=2000)
    segs = segments(tmp_path)
    assert len(segs) > 5 and all(s.stat().st_size <= 2000 for s in segs)
    assert verify(tmp_path).ok


def test_empty_and_missing_log(tmp_path):
    report = verify(tmp_path / "nothing")
    assert report.ok and report.entries == 0 and report.head is None


# -- tampering --------------------------------------------------------------------------------


FIELD_CHANGES = {
    "seq": lambda e: e.update(seq=e["seq"] + 100),
    "ts": lambda e: e.update(ts=e["ts"] + 1),
    "kind": lambda e: e.update(kind="logout"),
    "fields": lambda e: e["fields"].update(user="mallory"),
    "fields_added": lambda e: e["fields"].update(extra=1),
    "fields_removed": lambda e: e["fields"].pop("user"),
    "prev": lambda e: e.update(prev="ab" * 32),
    "hash": lambda e: e.update(hash="cd" * 32),
}


@pytest.mark.parametrize("seq", [0, 5, 16, 17, 29])  # 16/17: last/first of a segment
@pytest.mark.parametrize("what", sorted(FIELD_CHANGES))
def test_any_field_of_any_entry_changed(tmp_path, seq, what):
    make_log(tmp_path)
    edit_entry(tmp_path, seq, FIELD_CHANGES[what])
    broken_at(tmp_path, seq)


def test_segment_boundary_is_where_expected():
    """The parametrised seqs above must straddle a segment boundary."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        make_log(Path(d))
        firsts = [int(s.stem) for s in segments(Path(d))]
    assert firsts == [0, 17]


def test_non_canonical_spelling(tmp_path):
    make_log(tmp_path)
    seg = segments(tmp_path)[0]
    lines = seg.read_bytes().splitlines()
    lines[3] = lines[3].replace(b'"seq":3', b'"seq": 3')
    rewrite(seg, lines)
    broken_at(tmp_path, 3, "malformed")


def test_swapped_entries(tmp_path):
    make_log(tmp_path)
    seg = segments(tmp_path)[0]
    lines = seg.read_bytes().splitlines()
    lines[4], lines[5] = lines[5], lines[4]
    rewrite(seg, lines)
    broken_at(tmp_path, 4, "seq")


@pytest.mark.parametrize("seq", [0, 8, 16, 17, 28])
def test_deleted_entry(tmp_path, seq):
    make_log(tmp_path)
    for seg, i, entry in all_lines(tmp_path):
        if entry["seq"] == seq:
            lines = seg.read_bytes().splitlines()
            del lines[i]
            rewrite(seg, lines)
            break
    # a segment's first entry removed: the segment is named for another seq
    broken_at(tmp_path, seq, "segment" if seq in (0, 17) else "seq")


def test_inserted_entry_copied(tmp_path):
    make_log(tmp_path)
    seg = segments(tmp_path)[0]
    lines = seg.read_bytes().splitlines()
    lines.insert(6, lines[2])
    rewrite(seg, lines)
    broken_at(tmp_path, 6, "seq")


def test_inserted_entry_forged_with_a_valid_hash(tmp_path):
    """A new entry linked to its predecessor and correctly hashed still breaks the next."""
    make_log(tmp_path)
    seg = segments(tmp_path)[0]
    lines = seg.read_bytes().splitlines()
    before = json.loads(lines[5])
    forged = {"seq": 6, "ts": before["ts"], "kind": "login", "fields": {"user": "x"},
              "prev": before["hash"]}
    forged["hash"] = entry_hash(6, forged["ts"], "login", forged["fields"],
                                bytes.fromhex(before["hash"])).hex()
    lines.insert(6, canonical(forged))
    rewrite(seg, lines)
    broken_at(tmp_path, 7, "seq")  # the old entry 6 now stands where 7 is due


@pytest.mark.parametrize("seq", [5, 16, 17])  # 16/17: the last/first entry of a segment
def test_an_entry_rewritten_and_rehashed_breaks_its_link(tmp_path, seq):
    """An entry changed and its hash recomputed (so the entry checks on its own): only the
    link check finds it, at the entry whose prev no longer is the hash before it."""
    make_log(tmp_path)
    lines = {e["seq"]: e for _, _, e in all_lines(tmp_path)}

    def rehash(e):
        e["hash"] = entry_hash(e["seq"], e["ts"], e["kind"], e["fields"],
                               bytes.fromhex(e["prev"])).hex()

    # its fields changed: the next entry's prev is the old hash
    edit_entry(tmp_path, seq, lambda e: (e["fields"].update(user="mallory"), rehash(e)))
    broken_at(tmp_path, seq + 1, "prev")
    edit_entry(tmp_path, seq, lambda e: e.update(lines[seq]))  # put back
    assert verify(tmp_path).ok
    # its prev changed (as if the entry before it were another): its own link is broken
    edit_entry(tmp_path, seq, lambda e: (e.update(prev=lines[seq - 2]["hash"]), rehash(e)))
    broken_at(tmp_path, seq, "prev")


def test_truncated_in_the_middle(tmp_path):
    make_log(tmp_path)
    seg = segments(tmp_path)[0]
    data = seg.read_bytes()
    lines = data.splitlines(keepends=True)
    start = sum(len(x) for x in lines[:9]) + 40  # inside entry 9
    end = sum(len(x) for x in lines[:12]) + 10  # inside entry 12
    seg.write_bytes(data[:start] + data[end:])
    broken_at(tmp_path, 9, "malformed")


def test_older_segment_cut_at_a_line_boundary(tmp_path):
    make_log(tmp_path)
    seg = segments(tmp_path)[0]
    lines = seg.read_bytes().splitlines()
    rewrite(seg, lines[:10])
    broken_at(tmp_path, 10, "seq")


def test_middle_segment_removed(tmp_path):
    make_log(tmp_path, n=60)
    segs = segments(tmp_path)
    assert len(segs) >= 3
    segs[1].unlink()
    broken_at(tmp_path, int(segs[1].stem), "seq")


def test_oldest_segment_removed_by_hand(tmp_path):
    make_log(tmp_path)
    segments(tmp_path)[0].unlink()
    broken_at(tmp_path, 17, "unanchored_start")


def test_older_segment_with_a_partial_line(tmp_path):
    make_log(tmp_path)
    seg = segments(tmp_path)[0]
    seg.write_bytes(seg.read_bytes()[:-5])
    assert verify(tmp_path).error == "segment"


def test_garbage_bytes_in_an_entry(tmp_path):
    make_log(tmp_path)
    seg = segments(tmp_path)[1]
    data = bytearray(seg.read_bytes())
    data[30] = 0xFF
    seg.write_bytes(bytes(data))
    broken_at(tmp_path, 17, "malformed")


def test_writer_refuses_a_log_whose_newest_entry_does_not_check(tmp_path):
    make_log(tmp_path)
    edit_entry(tmp_path, 29, FIELD_CHANGES["fields"])
    with pytest.raises(AuditCorrupt):
        AuditLog(tmp_path, clock_ms=Clock()).append("login", user="x")


# -- torn tail and repair ---------------------------------------------------------------------


def due_line(log: AuditLog, kind: str = "sign", **fields) -> bytes:
    """The line the writer would write next (seq and prev of the entry due), unwritten."""
    last = log.tail(1)[0]
    seq, ts = last.seq + 1, last.ts + 1
    return audit.AuditEntry(seq, ts, kind, fields, last.hash,
                            entry_hash(seq, ts, kind, fields, last.hash)).line()


def test_torn_tail_at_every_byte_of_the_last_entry(tmp_path):
    """A crash (power loss) can leave any proper prefix of the line being written."""
    log = make_log(tmp_path, n=3)
    newest = segments(tmp_path)[-1]
    sound = newest.read_bytes()
    line = due_line(log, slot=1, note="x" * 40)
    assert verify(tmp_path).ok
    for cut in range(1, len(line) - 1):  # every prefix short of the whole entry
        newest.write_bytes(sound + line[:cut])
        report = verify(tmp_path)
        assert (report.ok, report.error, report.torn_tail) == (False, "torn_tail", True)
        assert report.torn_bytes == cut and report.index == 3
        assert report.entries == 3  # everything before the torn line verified
        with pytest.raises(AuditTornTail):
            log.append("login", user="after-crash")
    newest.write_bytes(sound + b"\x00" * 700)  # zero-filled blocks after a power cut
    assert verify(tmp_path).error == "torn_tail"
    newest.write_bytes(sound + line[:200] + b"\x00" * 300)  # written, then unwritten blocks
    assert verify(tmp_path).error == "torn_tail"


def test_repair_truncates_only_the_torn_tail(tmp_path):
    log = make_log(tmp_path, n=20)
    newest = segments(tmp_path)[-1]
    before = newest.read_bytes()
    newest.write_bytes(before + b'{"fields":{"user":"half')
    result = repair(tmp_path, operator="technician 7", clock_ms=Clock(T0 + 99 * DAY_MS))
    assert result.repaired and result.truncated_bytes == 23
    assert newest.read_bytes().startswith(before)
    report = verify(tmp_path)
    assert report.ok and report.entries == 21
    last = log.tail(1)[0]
    assert last.kind == "repaired"
    # what was cut is named by its size and SM3, never its bytes
    assert last.fields == {"segment": newest.name, "truncated_bytes": 23,
                           "truncated_sm3": sm3.digest(b'{"fields":{"user":"half').hex(),
                           "operator": "technician 7"}
    assert result.truncated_sm3 == last.fields["truncated_sm3"]
    log.append("login", user="back")  # the writer goes on
    assert verify(tmp_path).ok
    assert not repair(tmp_path, operator="x").repaired  # nothing to do


def test_repair_refuses_a_tampered_log(tmp_path):
    make_log(tmp_path, n=20)
    edit_entry(tmp_path, 3, FIELD_CHANGES["fields"])
    newest = segments(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes() + b'{"torn')
    snapshot = {p.name: p.read_bytes() for p in segments(tmp_path)}
    with pytest.raises(AuditCorrupt, match="hash"):
        repair(tmp_path, operator="x")
    assert {p.name: p.read_bytes() for p in segments(tmp_path)} == snapshot


def test_torn_tail_in_a_fresh_segment(tmp_path):
    """A crash right after a new day's segment was created: the empty/torn segment is
    repaired and reused."""
    clock = Clock()
    log = make_log(tmp_path, n=10)
    log.clock_ms = clock
    clock.now = T0 + 5 * DAY_MS
    seq = 10
    fresh = tmp_path / f"{seq:012d}.jsonl"
    fresh.write_bytes(b'{"fields":')
    assert verify(tmp_path).error == "torn_tail"
    repair(tmp_path, operator="x", clock_ms=clock)
    assert verify(tmp_path).ok
    assert json.loads(fresh.read_bytes().splitlines()[0])["kind"] == "repaired"
    fresh2 = tmp_path / f"{11:012d}.jsonl"
    clock.now += 3 * DAY_MS
    log.append("login", user="y")
    assert fresh2.exists() and verify(tmp_path).ok
    # an empty newest segment (created, nothing written) is reused
    clock.now += 3 * DAY_MS
    empty = tmp_path / f"{12:012d}.jsonl"
    empty.touch()
    log.append("login", user="z")
    assert json.loads(empty.read_bytes())["seq"] == 12
    assert verify(tmp_path).ok


def test_an_empty_newest_segment_named_for_another_seq(tmp_path):
    make_log(tmp_path, n=20)
    (tmp_path / f"{25:012d}.jsonl").touch()
    broken_at(tmp_path, 20, "segment")
    (tmp_path / f"{25:012d}.jsonl").write_bytes(b'{"fields":{')
    broken_at(tmp_path, 20, "segment")


def test_a_whole_last_entry_without_its_newline_is_not_a_torn_tail(tmp_path):
    """Cutting the newline off the last acknowledged entry (or leaving zero bytes after it)
    must not make the repair cut the entry: it is not a torn write, it is never cut."""
    log = make_log(tmp_path, n=20)
    newest = segments(tmp_path)[-1]
    for after in (b"", b"\x00" * 5):
        data = newest.read_bytes()
        newest.write_bytes(data[:-1] + after)
        tampered = newest.read_bytes()
        report = broken_at(tmp_path, 19, "bad_tail")
        assert not report.torn_tail and "whole entry" in report.detail
        with pytest.raises(AuditCorrupt):
            repair(tmp_path, operator="x")
        with pytest.raises(AuditCorrupt):  # not AuditTornTail: nothing to repair
            AuditLog(tmp_path, clock_ms=Clock()).append("login", user="x")
        from appliance.service import start_audit

        writer, start = start_audit(tmp_path, retention_days=190)
        assert start.state == "failed" and start.error == "bad_tail"
        assert newest.read_bytes() == tampered  # the entry is still there, byte for byte
        newest.write_bytes(data)
        assert verify(tmp_path).ok and log.tail(1)[0].seq == 19


def test_a_line_cut_inside_an_acknowledged_entry_before_the_last_is_not_torn(tmp_path):
    """Bytes removed from the middle of entry 17's line (its newline with them): the line
    runs into the next one and is malformed, whatever follows; never repaired."""
    make_log(tmp_path, n=20)
    newest = segments(tmp_path)[-1]  # entries 17..19
    data = newest.read_bytes()
    lines = data.splitlines(keepends=True)
    for cut_from, cut_to in [(30, len(lines[0])), (30, len(lines[0]) + 40),
                             (30, len(lines[0]) + len(lines[1]))]:
        newest.write_bytes(data[:cut_from] + data[cut_to:])
        tampered = newest.read_bytes()
        assert verify(tmp_path).error == "malformed"
        with pytest.raises(AuditCorrupt):
            repair(tmp_path, operator="x")
        assert newest.read_bytes() == tampered
    newest.write_bytes(data)


@pytest.mark.parametrize("cut_in", ["prev", "seq", "ts"])
def test_the_cut_line_of_an_entry_that_is_not_the_one_due(tmp_path, cut_in):
    """Entry 18 removed and entry 19 cut mid-line: the partial line shows a prev or seq
    that is not the due entry's, so it is not a torn write of that entry."""
    make_log(tmp_path, n=20)
    newest = segments(tmp_path)[-1]
    lines = newest.read_bytes().splitlines(keepends=True)
    last = lines[2]
    at = {"prev": last.index(b'"prev":"') + 20, "seq": last.index(b'"seq":') + 8,
          "ts": len(last) - 5}[cut_in]
    newest.write_bytes(lines[0] + last[:at])
    assert broken_at(tmp_path, 18, "bad_tail").detail.startswith("the newest segment ends")
    with pytest.raises(AuditCorrupt):
        repair(tmp_path, operator="x")
    assert newest.read_bytes() == lines[0] + last[:at]


@pytest.mark.parametrize("tail", [
    b'{"fields":{"a":' + b"\x00" * 10 + b"1",  # written bytes after unwritten ones
    b"\x00" * audit.MAX_ENTRY_BYTES,  # longer than any line
    b'{"fields":{"a":1}}garbage',
    b'["not an entry"',
    b'{"fields":{"n":"caf\xc3\xa9',  # not ASCII: no line is
])
def test_bytes_that_no_crash_leaves_are_not_torn(tmp_path, tail):
    make_log(tmp_path, n=3)
    newest = segments(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes() + tail)
    broken_at(tmp_path, 3, "bad_tail")
    with pytest.raises(AuditCorrupt):
        repair(tmp_path, operator="x")
    assert newest.read_bytes().endswith(tail)


def test_repair_cuts_a_prefix_and_the_zero_bytes_after_it(tmp_path):
    log = make_log(tmp_path, n=3)
    newest = segments(tmp_path)[-1]
    sound = newest.read_bytes()
    torn = due_line(log, user="x" * 300)[:250] + b"\x00" * 100
    newest.write_bytes(sound + torn)
    result = repair(tmp_path, operator="t", clock_ms=Clock(T0 + DAY_MS))
    assert result.truncated_bytes == 350 and result.truncated_sm3 == sm3.digest(torn).hex()
    assert newest.read_bytes().startswith(sound) and verify(tmp_path).ok


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True),
                       st.one_of(st.integers(-10**6, 10**6), st.text(max_size=30),
                                 st.booleans(), st.none()), max_size=5),
       st.integers(0, 10**6), st.data())
def test_fuzz_torn_tail_rule(fields, seq, data):
    """Every proper prefix of the due line is torn, the whole line (with or without zero
    bytes after it) never is, and any bytes give an answer, never an exception."""
    prev = sm3.digest(seq.to_bytes(8, "big"))
    line = audit.AuditEntry(seq, T0, "sign", fields, prev,
                            entry_hash(seq, T0, "sign", fields, prev)).line()[:-1]
    cut = data.draw(st.integers(1, len(line) - 1))
    assert audit.torn_tail_problem(line[:cut], seq, prev) is None
    zeros = data.draw(st.integers(0, 20))
    assert audit.torn_tail_problem(line[:cut] + b"\x00" * zeros, seq, prev) is None
    assert audit.torn_tail_problem(line + b"\x00" * zeros, seq, prev) is not None
    assert audit.torn_tail_problem(line, seq + 1, prev) is not None  # another entry's line
    up_to_ts = line[:line.rindex(b',"ts":') + 6]  # everything of the line but its time
    assert audit.torn_tail_problem(up_to_ts, seq, prev) is None
    assert audit.torn_tail_problem(up_to_ts, seq + 1, prev) is not None
    assert audit.torn_tail_problem(up_to_ts, seq, sm3.digest(prev)) is not None
    junk = data.draw(st.binary(max_size=200))
    assert audit.torn_tail_problem(junk, seq, prev) is None or \
        isinstance(audit.torn_tail_problem(junk, seq, prev), str)


# -- what may not be logged -------------------------------------------------------------------


def _jpeg_hex() -> str:
    face = np.random.default_rng(1).integers(0, 255, (48, 48, 3), np.uint8)
    ok, buf = cv2.imencode(".jpg", face)
    assert ok
    return buf.tobytes().hex()


@pytest.mark.parametrize("fields", [
    {"digest": b"\x00" * 32},
    {"digest": bytearray(32)},
    {"digest": memoryview(b"abc")},
    {"pixels_": np.zeros((4, 4), np.uint8)},
    {"nested": {"inner": b"x"}},
    {"items": ["ok", b"x"]},
    {"score": 1.5},
    {"text": "x" * (MAX_TEXT + 1)},
    {"image": "not even bytes"},
    {"envelope": {"session": "00"}},
    {"jpeg": "ffd8"},
    {"BadName": 1},
    {"a" * 24: 1},
    {"big": 2**64},
    {"obj": object()},
    {"a": "x" * 1000, "b": "x" * 1000, "c": "x" * 1000, "d": "x" * 1000, "e": "x" * 100},
])
def test_refused_fields_leave_the_log_intact(tmp_path, fields):
    log = make_log(tmp_path, n=3)
    snapshot = {p.name: p.read_bytes() for p in segments(tmp_path)}
    with pytest.raises(AuditFieldError):
        log.append("authorization", **fields)
    assert {p.name: p.read_bytes() for p in segments(tmp_path)} == snapshot
    log.append("login", user="next")
    assert verify(tmp_path).ok and verify(tmp_path).last_seq == 3


def test_an_image_does_not_fit_even_as_hex(tmp_path):
    log = AuditLog(tmp_path, clock_ms=Clock())
    jpeg = _jpeg_hex()
    with pytest.raises(AuditFieldError):
        log.append("authorization", capture=jpeg)
    with pytest.raises(AuditFieldError):  # nor cut into pieces
        log.append("authorization", parts=[jpeg[i:i + 1000] for i in range(0, len(jpeg), 1000)])
    assert verify(tmp_path).entries == 0


@pytest.mark.parametrize("kind", ["", "Login", "login attempt", "x" * 33, "1login"])
def test_bad_kind(tmp_path, kind):
    with pytest.raises(AuditFieldError):
        AuditLog(tmp_path, clock_ms=Clock()).append(kind)


# -- retention --------------------------------------------------------------------------------


def test_retention_prunes_only_what_is_older_than_the_window(tmp_path):
    clock = Clock(step=6 * 3_600_000)  # four entries a day, 400 days
    log = AuditLog(tmp_path, clock_ms=clock)
    appended = {}
    for i in range(1600):
        e = log.append("sign", n=i)
        appended[e.seq] = e.ts
    now = clock.now
    cutoff = now - 190 * DAY_MS
    report = verify(tmp_path)
    assert report.ok and report.start == "anchor"
    kept = {e["seq"]: e for _, _, e in all_lines(tmp_path)}
    for seq, ts in appended.items():
        if ts >= cutoff:
            assert seq in kept, f"entry {seq} inside the window was pruned"
        elif seq not in kept:
            pass  # pruned: allowed only because it is older than the window
    removed = [s for s in appended if s not in kept]
    assert removed and max(appended[s] for s in removed) < cutoff
    # at most the day that straddles the cutoff is kept beyond the window
    oldest_kept = min(e["ts"] for s, e in kept.items() if s in appended)
    assert oldest_kept >= cutoff - DAY_MS
    pruned = [e for e in kept.values() if e["kind"] == "pruned"]
    assert pruned and all(e["fields"]["retention_days"] == 190 for e in pruned)


def test_explicit_prune_and_a_crash_between_record_and_removal(tmp_path):
    log = make_log(tmp_path, n=60, retention_days=5)
    log.clock_ms = Clock(T0 + 10 * DAY_MS)
    first, second, newest = segments(tmp_path)
    saved = {p: p.read_bytes() for p in (first, second)}
    removed = log.prune()
    assert removed == [first.name, second.name]  # never the newest segment
    report = verify(tmp_path)
    assert report.ok and report.start == "anchor" and report.first_seq == int(newest.stem)
    # Each segment goes after its own 'pruned' entry. A crash after the second entry but
    # before its unlink leaves the second segment, anchored by the first's entry:
    second.write_bytes(saved[second])
    report = verify(tmp_path)
    assert report.ok and report.start == "anchor" and report.first_seq == int(second.stem)
    # and one before the first unlink leaves the whole chain from genesis
    first.write_bytes(saved[first])
    report = verify(tmp_path)
    assert report.ok and report.start == "genesis"
    # removing the second by hand while the first stays is a gap
    second.unlink()
    broken_at(tmp_path, int(second.stem), "seq")


def test_retention_days_configurable(tmp_path):
    log = make_log(tmp_path, n=30, retention_days=400)
    log.clock_ms = Clock(T0 + 100 * DAY_MS)
    assert log.prune() == []
    with pytest.raises(ValueError):
        AuditLog(tmp_path, retention_days=0)


# -- file modes -------------------------------------------------------------------------------


def mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_directories_0700_and_files_0600_whatever_the_umask(tmp_path, umask):
    state = tmp_path / "state"
    old = os.umask(umask)
    try:
        log = AuditLog(state / "audit", clock_ms=Clock(step=3_600_000))
        for i in range(20):  # two segments
            log.append("login", n=i)
    finally:
        os.umask(old)
    assert mode(state) == mode(state / "audit") == 0o700
    files = [*segments(state / "audit"), state / "audit" / ".lock"]
    assert len(files) == 3 and all(mode(f) == 0o600 for f in files)


def test_a_log_made_with_looser_modes_is_tightened(tmp_path):
    log_dir = tmp_path / "audit"
    make_log(log_dir, n=20)
    log_dir.chmod(0o755)
    for f in segments(log_dir):
        f.chmod(0o644)
    AuditLog(log_dir, clock_ms=Clock(T0 + DAY_MS)).append("login", user="x")
    assert mode(log_dir) == 0o700
    assert all(mode(f) == 0o600 for f in segments(log_dir))


def test_ensure_private_dir(tmp_path):
    tmp_path.chmod(0o755)
    deep = tmp_path / "a" / "b" / "c"
    old = os.umask(0o022)
    try:
        audit.ensure_private_dir(deep)
    finally:
        os.umask(old)
    assert mode(tmp_path / "a") == mode(tmp_path / "a" / "b") == mode(deep) == 0o700
    (tmp_path / "loose").mkdir(mode=0o777)
    (tmp_path / "loose").chmod(0o777)
    audit.ensure_private_dir(tmp_path / "loose")
    assert mode(tmp_path / "loose") == 0o700
    assert mode(tmp_path) == 0o755  # an existing parent is left as it is


# -- concurrent writers -----------------------------------------------------------------------


def test_threads_append_one_chain(tmp_path):
    log = AuditLog(tmp_path)
    errors = []

    def work(t):
        try:
            for i in range(40):
                log.append("sign", thread=t, n=i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    report = verify(tmp_path)
    assert report.ok and report.entries == 160


def test_processes_append_one_chain(tmp_path):
    code = ("import sys; from appliance.audit import AuditLog\n"
            "log = AuditLog(sys.argv[1])\n"
            "for i in range(40): log.append('login', who=sys.argv[2], n=i)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), f"p{i}"], env=env)
             for i in range(3)]
    log = AuditLog(tmp_path)
    for i in range(40):
        log.append("login", who="parent", n=i)
    assert all(p.wait(timeout=120) == 0 for p in procs)
    report = verify(tmp_path)
    assert report.ok and report.entries == 160


def test_append_survives_a_prune_that_meets_a_damaged_segment(tmp_path):
    log = make_log(tmp_path, n=30, retention_days=1)
    oldest = segments(tmp_path)[0]
    lines = oldest.read_bytes().splitlines()
    lines[2] = b"garbage"
    rewrite(oldest, lines)
    log.clock_ms = Clock(T0 + 30 * DAY_MS)
    entry = log.append("login", user="after")  # a new day: prune runs and stops at the damage
    assert oldest.exists() and entry.seq == 30
    broken_at(tmp_path, 2, "malformed")


# -- the line decoder, fuzzed -------------------------------------------------------------

ERRORS = {"malformed", "seq", "prev", "hash", "segment", "unanchored_start", "torn_tail",
          "bad_tail"}


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.integers(0, 5))
def test_fuzz_verify_never_raises(tmp_path, junk, where):
    d = tmp_path / f"f{abs(hash((junk, where)))}"
    make_log(d, n=6)
    seg = segments(d)[0]
    lines = seg.read_bytes().splitlines(keepends=True)
    lines.insert(where, junk)
    seg.write_bytes(b"".join(lines))
    report = verify(d)
    assert report.ok or report.error in ERRORS
    assert report.ok == (junk == b"")  # any inserted byte is found


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_line_parser_typed_errors(data):
    try:
        audit._parse_line(data)
    except ValueError as exc:
        assert exc.args[0] == "malformed"


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 150), st.integers(0, 255))
def test_fuzz_mutated_line(pos, value):
    entry = audit.AuditEntry(3, T0, "login", {"user": "a", "n": 1}, bytes(32),
                             entry_hash(3, T0, "login", {"user": "a", "n": 1}, bytes(32)))
    raw = bytearray(entry.line()[:-1])
    pos %= len(raw)
    raw[pos] = value
    try:
        parsed = audit._parse_line(bytes(raw))
    except ValueError as exc:
        assert exc.args[0] == "malformed"
        return
    if bytes(raw) != entry.line()[:-1]:  # it parsed: then its hash cannot check
        assert entry_hash(parsed.seq, parsed.ts, parsed.kind, parsed.fields,
                          parsed.prev) != parsed.hash
