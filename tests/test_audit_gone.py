"""A writer whose log disappears or is replaced under it (appliance.audit.AuditGone).

Before this check, an ``AuditLog`` whose directory had been removed recreated it and started
a new chain at seq 0, silently. Each way the log can go away is done here to real files:
the directory removed, the current segment removed, the directory replaced by a copy of
itself (same bytes, other files), the segment cut short, the writer's last entry rewritten in
place. Each must raise ``AuditGone`` (with its reason), write nothing, and keep refusing. The
same writer must go on undisturbed by what other writers legitimately do: append, start a new
segment, prune the segment it last wrote to.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from appliance.audit import DAY_MS, AuditGone, AuditLog, entry_hash, repair, verify

T0 = 1_763_964_000_000


class Clock:
    def __init__(self, start: int = T0, step: int = 60_000) -> None:
        self.now, self.step = start, step

    def __call__(self) -> int:
        self.now += self.step
        return self.now


def seg_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix == ".jsonl") if path.is_dir() else []


def written(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in seg_files(path)}


def started(path: Path, n: int = 5) -> AuditLog:
    log = AuditLog(path, clock_ms=Clock())
    for i in range(n):
        log.append("login", user=f"clerk{i}")
    return log


def refused(log: AuditLog, reason: str) -> AuditGone:
    with pytest.raises(AuditGone) as e:
        log.append("sign", n=1)
    assert e.value.reason == reason, e.value
    assert e.value.code == "gone" and "seq 4" in str(e.value)  # names its last entry
    assert log.fault is e.value
    return e.value


def test_directory_removed(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    log = started(d)
    shutil.rmtree(d)
    refused(log, "missing")
    assert not d.exists()  # not recreated, no new chain at seq 0
    d.mkdir()  # someone makes an empty directory: still refused (sticky)
    with pytest.raises(AuditGone):
        log.append("sign", n=2)
    with pytest.raises(AuditGone):
        log.check()
    assert seg_files(d) == []
    # a new writer (the daemon restarted) starts a chain of its own, and says so: seq 0
    assert AuditLog(d, clock_ms=Clock()).append("service_start").seq == 0


def test_directory_emptied(tmp_path: Path) -> None:
    log = started(tmp_path)
    for p in seg_files(tmp_path):
        p.unlink()
    refused(log, "missing")
    assert seg_files(tmp_path) == []


def test_current_segment_removed(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, clock_ms=Clock(step=6 * 3_600_000))
    for i in range(8):  # two UTC days or more: two segments or more
        log.append("login", user=f"c{i}")
    *older, newest = seg_files(tmp_path)
    assert older
    newest.unlink()
    before = written(tmp_path)
    # without the check it would continue from the older segment's end, forking the chain
    with pytest.raises(AuditGone) as e:
        log.append("sign", n=1)
    assert e.value.reason == "missing"
    assert written(tmp_path) == before


def test_directory_replaced_by_a_copy(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    log = started(d)
    shutil.copytree(d, tmp_path / "copy")  # made while the originals exist: other inodes
    shutil.rmtree(d)
    os.rename(tmp_path / "copy", d)  # the same bytes in other files
    before = written(d)
    refused(log, "replaced")
    assert written(d) == before and verify(d).ok


def test_segment_cut_short(tmp_path: Path) -> None:
    log = started(tmp_path)
    (seg,) = seg_files(tmp_path)
    lines = seg.read_bytes().splitlines(keepends=True)
    with open(seg, "r+b") as f:  # the same file, its last entry cut off at a line boundary
        f.truncate(sum(len(x) for x in lines[:-1]))
    before = written(tmp_path)
    refused(log, "truncated")
    assert written(tmp_path) == before


def test_last_entry_rewritten_in_place(tmp_path: Path) -> None:
    log = started(tmp_path)
    (seg,) = seg_files(tmp_path)
    data = bytearray(seg.read_bytes())
    # the same length, the same file: another valid entry (its hash recomputed) where the
    # writer's was, the file's times set back
    st = os.stat(seg)
    last = json.loads(data.splitlines()[-1])
    last["fields"]["user"] = "clerkX"
    last["hash"] = entry_hash(last["seq"], last["ts"], last["kind"], last["fields"],
                              bytes.fromhex(last["prev"])).hex()
    new = json.dumps(last, sort_keys=True, separators=(",", ":")).encode()
    start = len(data) - len(new) - 1
    data[start:-1] = new
    with open(seg, "r+b") as f:
        f.write(data)
    os.utime(seg, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert verify(tmp_path).ok  # the chain alone cannot tell
    refused(log, "rewritten")


@pytest.mark.parametrize("roll", [False, True])
def test_other_writers_are_not_mistaken_for_a_replacement(tmp_path: Path, roll: bool) -> None:
    clock = Clock()
    a = AuditLog(tmp_path, clock_ms=clock)
    b = AuditLog(tmp_path, clock_ms=clock)
    a.append("login", user="a0")
    b.append("login", user="b0")
    if roll:
        clock.now += DAY_MS  # b starts a new segment after a's last entry
    b.append("login", user="b1")
    assert a.append("sign", n=1).seq == 3
    assert b.append("sign", n=2).seq == 4
    assert verify(tmp_path).ok and verify(tmp_path).entries == 5
    assert len(seg_files(tmp_path)) == (2 if roll else 1)


def test_the_segment_it_wrote_pruned_by_another_writer(tmp_path: Path) -> None:
    clock = Clock()
    a = AuditLog(tmp_path, clock_ms=clock, retention_days=1)
    b = AuditLog(tmp_path, clock_ms=clock, retention_days=1)
    last_a = a.append("login", user="a0")
    first_seg = seg_files(tmp_path)[0]
    clock.now += 2 * DAY_MS
    b.append("login", user="b0")  # a new day: a new segment, and b prunes a's
    assert not first_seg.exists()
    pruned = [json.loads(x) for p in seg_files(tmp_path) for x in p.read_bytes().splitlines()
              if b'"pruned"' in x]
    assert any(e["fields"]["last_hash"] == last_a.hash.hex() for e in pruned)
    a.append("sign", n=1)  # the pruned record accounts for it: a goes on
    report = verify(tmp_path)
    assert report.ok and report.start == "anchor"


def test_a_segment_removed_without_a_pruned_record_is_not_taken_for_pruning(
        tmp_path: Path) -> None:
    clock = Clock()
    a = AuditLog(tmp_path, clock_ms=clock)
    a.append("login", user="a0")
    first_seg = seg_files(tmp_path)[0]
    clock.now += DAY_MS
    AuditLog(tmp_path, clock_ms=clock).append("login", user="b0")  # a new segment
    first_seg.unlink()  # by hand: no pruned entry names it
    with pytest.raises(AuditGone) as e:
        a.append("sign", n=1)
    assert e.value.reason == "missing"


@pytest.mark.parametrize("days_later", [0, 2])
def test_a_torn_tail_after_its_entry_repaired_by_an_operator(tmp_path: Path,
                                                               days_later: int) -> None:
    # another process crashed mid-append after this writer's last entry; the operator's
    # repair cuts exactly those bytes (the segment is back to this writer's size, changed)
    # and logs 'repaired' (in the same segment, or a new day's)
    clock = Clock()
    log = AuditLog(tmp_path, clock_ms=clock)
    for i in range(3):
        log.append("login", user=f"c{i}")
    (seg,) = seg_files(tmp_path)
    with open(seg, "ab") as f:
        f.write(b'{"fields":{"us')
    clock.now += days_later * DAY_MS
    assert repair(tmp_path, operator="tech", clock_ms=clock).repaired
    assert log.append("sign", n=1).seq == 4
    assert verify(tmp_path).ok
