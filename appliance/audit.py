"""The audit log: append-only, every entry chained to the one before with SM3.

Layout: a directory of *segments*, ``000000000042.jsonl`` (the seq of its first entry, 12
digits), one JSON object a line::

    {"fields":{...},"hash":"<hex>","kind":"login","prev":"<hex>","seq":42,"ts":1764400000000}

``hash = SM3(enc({"seq", "ts", "kind", "fields", "prev"}))`` with ``enc`` the canonical CBOR
of appliance.wire and ``prev`` as 32 bytes: the hash of the entry before (32 zero bytes for
seq 0). A line must be exactly the canonical JSON of its entry (sorted keys, no spaces, ASCII
escapes), so an entry has one spelling. A new segment starts when the UTC day changes or the
segment would pass ``max_segment_bytes``; the chain runs on across segments.

Crash safety: one ``os.write`` of the whole line on an ``O_APPEND`` descriptor, then
``fsync`` (and a directory ``fsync`` when a segment is created or removed) before
:meth:`AuditLog.append` returns. A crash mid-write can leave a *torn tail*: bytes after the
last newline of the last segment. It is reported (``torn_tail``), appending refuses
(:class:`AuditTornTail`) until :func:`repair` truncates exactly those bytes and logs a
``repaired`` entry saying how many and their SM3 (never the bytes). A torn write was never
acknowledged, so nothing that was logged is lost. (``appliance run`` repairs a torn tail at
start by itself; a log that fails for any other reason is never repaired.)

A writer remembers where its last entry went (the segment's device and inode, the size after
the entry, its seq and hash). If that segment later is gone, another file, shorter, or holds
another entry at that place (the directory removed or replaced under a running daemon), the
next append raises :class:`AuditGone` instead of starting a new chain at seq 0, and every
append after it too: only a new writer (a restart) starts over.

Retention (default 190 days): when a new segment starts, the oldest segments whose every
entry is older than the window are removed, oldest first, each after a ``pruned`` entry that
records its last seq and hash. The remaining chain then starts at an entry whose ``prev`` is
the hash in such a ``pruned`` entry (the anchor); a verifier accepts a start only at seq 0
with a zero ``prev`` or at an anchor. Removing old segments by hand is detected
(``unanchored_start``).

Several processes may append (the daemon, ``appliance node clear-alarm``): each append takes
an ``flock`` on ``DIR/.lock`` and re-reads the tail if another writer moved it.

Never logged: bytes of any kind (a caller gives digests and ids as hex), and anything over
:data:`MAX_ENTRY_BYTES` a line or :data:`MAX_TEXT` characters a string, so a face image,
a JPEG or an envelope cannot go in even hex-encoded; field names like ``image`` or
``envelope`` are refused outright.

What the chain does not do alone: someone who can rewrite the files can recompute every
hash after the entries they change, and cutting whole entries off the end of the newest
segment leaves a valid shorter chain. Record the head hash (``appliance audit tail``)
elsewhere to pin a prefix; see docs/audit.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import wire
from .gm import sm3

__all__ = [
    "DAY_MS", "DEFAULT_RETENTION_DAYS", "FORBIDDEN_FIELDS", "MAX_ENTRY_BYTES", "MAX_TEXT",
    "ZERO_HASH", "AuditCorrupt", "AuditEntry", "AuditError", "AuditFieldError", "AuditGone",
    "AuditLog", "AuditTornTail", "RepairResult", "VerifyReport", "entry_hash", "repair", "tail",
    "verify",
]

DEFAULT_RETENTION_DAYS = 190
DAY_MS = 86_400_000
ZERO_HASH = bytes(32)
MAX_ENTRY_BYTES = 4096
MAX_TEXT = 1024
MAX_ITEMS = 64
MAX_DEPTH = 4
MAX_SEGMENT_BYTES = 4 * 1024 * 1024
_INT_LIMIT = 2**63
_KIND = re.compile(r"[a-z][a-z0-9_.]{0,31}")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,22}")  # fits appliance.wire's 23-byte keys
_SEGMENT = re.compile(r"([0-9]{12})\.jsonl")
_HEX32 = re.compile(r"[0-9a-f]{64}")
_ENTRY_KEYS = frozenset({"seq", "ts", "kind", "fields", "prev", "hash"})
LOCK_NAME = ".lock"
#: Names that would only be used for what must never be logged.
FORBIDDEN_FIELDS = frozenset({"image", "images", "jpeg", "jpg", "png", "frame", "frames",
                              "photo", "picture", "pixels", "face", "envelope", "ciphertext",
                              "plaintext", "key", "private_key", "secret", "pin"})


class AuditError(Exception):
    """Base of the audit log's errors; ``code`` names the kind."""

    code = "audit"


class AuditFieldError(AuditError, ValueError):
    """A kind or field that may not be logged (type, name, size)."""

    code = "bad_field"


class AuditTornTail(AuditError):
    """The newest segment ends in a partial line (a crash mid-write): run repair."""

    code = "torn_tail"


class AuditCorrupt(AuditError):
    """The log does not verify where the writer needs it to (its newest entry)."""

    code = "corrupt"


class AuditGone(AuditError):
    """The log this writer was appending to is gone or was replaced under it; ``reason``:
    ``missing`` (its segment or the directory removed), ``replaced`` (another file in its
    place), ``truncated`` (shorter than after its last entry) or ``rewritten`` (another entry
    where its last one was). Sticky: the writer refuses every later append with it."""

    code = "gone"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    ts: int
    kind: str
    fields: dict[str, Any]
    prev: bytes
    hash: bytes

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "kind": self.kind, "fields": self.fields,
                "prev": self.prev.hex(), "hash": self.hash.hex()}

    def line(self) -> bytes:
        return _canonical_json(self.to_json()) + b"\n"


@dataclass
class VerifyReport:
    """What :func:`verify` found. ``ok`` only if the whole chain verifies with no torn tail.

    ``error`` (None when ok): ``malformed``, ``seq``, ``prev``, ``hash``, ``segment``
    (a segment named for another seq, an empty or unterminated older segment),
    ``unanchored_start`` or ``torn_tail``. ``index`` is the seq expected where it was found,
    ``segment`` and ``line`` (1-based) where.
    """

    ok: bool = True
    entries: int = 0
    segments: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head: str | None = None
    start: str | None = None  # "genesis" or "anchor" (after pruning)
    error: str | None = None
    index: int | None = None
    segment: str | None = None
    line: int | None = None
    detail: str = ""
    torn_tail: bool = False
    torn_bytes: int = 0
    kinds: dict[str, int] = field(default_factory=dict)

    def fail(self, error: str, index: int | None, segment: str | None, line: int | None,
             detail: str) -> VerifyReport:
        self.ok, self.error, self.index = False, error, index
        self.segment, self.line, self.detail = segment, line, detail
        return self

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "ok", "entries", "segments", "first_seq", "last_seq", "head", "start", "error",
            "index", "segment", "line", "detail", "torn_tail", "torn_bytes", "kinds")}


@dataclass(frozen=True)
class RepairResult:
    repaired: bool
    truncated_bytes: int
    segment: str | None
    entry: AuditEntry | None
    truncated_sm3: str | None = None  # hex SM3 of the bytes cut (the bytes are not kept)


@dataclass(frozen=True)
class _Mark:
    """Where this writer's newest known entry is: the segment (path, device, inode), the
    segment's size just after that entry and its ctime then (which nobody can set back: any
    change since sends the next append through the full check), and the entry's seq and
    hash."""

    path: Path
    dev: int
    ino: int
    size: int
    ctime_ns: int
    seq: int
    hash: bytes

    def same_file(self, path: Path, st: os.stat_result) -> bool:
        """``path`` is this segment, unchanged since (the fast path of every append)."""
        return (path, st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns) == \
            (self.path, self.dev, self.ino, self.size, self.ctime_ns)


# -- encoding ---------------------------------------------------------------------------------


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def entry_hash(seq: int, ts: int, kind: str, fields: dict[str, Any], prev: bytes) -> bytes:
    """SM3 of the canonical CBOR of the entry without its hash."""
    return sm3.digest(wire.encode({"seq": seq, "ts": ts, "kind": kind, "fields": fields,
                                   "prev": prev}))


def _check_value(name: str, value: Any, depth: int) -> Any:
    kind = type(value)
    if kind is str:
        if len(value) > MAX_TEXT:
            raise AuditFieldError(f"{name}: text over {MAX_TEXT} characters is not logged")
        return value
    if kind is bool or value is None:
        return value
    if kind is int:
        if not -_INT_LIMIT <= value < _INT_LIMIT:
            raise AuditFieldError(f"{name}: integer out of range")
        return value
    if isinstance(value, bytes | bytearray | memoryview) or hasattr(value, "__array__"):
        raise AuditFieldError(f"{name}: bytes and arrays are never logged (give a digest or "
                              "id as hex)")
    if depth >= MAX_DEPTH:
        raise AuditFieldError(f"{name}: nested deeper than {MAX_DEPTH}")
    if kind in (list, tuple):
        if len(value) > MAX_ITEMS:
            raise AuditFieldError(f"{name}: more than {MAX_ITEMS} items")
        return [_check_value(name, v, depth + 1) for v in value]
    if kind is dict:
        return _check_fields(value, depth + 1, name + ".")
    raise AuditFieldError(f"{name}: {kind.__name__} is not loggable (text, int, bool, null, "
                          "list, map)")


def _check_fields(fields: dict[str, Any], depth: int = 0, prefix: str = "") -> dict[str, Any]:
    if len(fields) > MAX_ITEMS:
        raise AuditFieldError(f"{prefix or 'fields'}: more than {MAX_ITEMS} fields")
    out = {}
    for name, value in fields.items():
        if type(name) is not str or not _NAME.fullmatch(name):
            raise AuditFieldError(f"field name {prefix}{str(name)[:40]!r}: lower-case "
                                  "letters, digits, _; at most 23")
        if name in FORBIDDEN_FIELDS:
            raise AuditFieldError(f"field {prefix}{name!r} is never logged")
        out[name] = _check_value(prefix + name, value, depth)
    return out


def _parse_line(raw: bytes) -> AuditEntry:
    """An entry from one line (without its newline); ValueError with the reason code."""
    try:
        obj = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("malformed", "not a JSON line") from None
    if type(obj) is not dict or set(obj) != _ENTRY_KEYS:
        raise ValueError("malformed", "not an entry (fields seq, ts, kind, fields, prev, hash)")
    if _canonical_json(obj) != raw:
        raise ValueError("malformed", "not the canonical spelling of the entry")
    seq, ts, kind, fields, prev, hsh = (obj[k] for k in ("seq", "ts", "kind", "fields",
                                                         "prev", "hash"))
    if type(seq) is not int or seq < 0 or type(ts) is not int or ts < 0:
        raise ValueError("malformed", "seq and ts must be non-negative integers")
    if type(kind) is not str or not _KIND.fullmatch(kind) or type(fields) is not dict:
        raise ValueError("malformed", "bad kind or fields")
    if type(prev) is not str or not _HEX32.fullmatch(prev) or type(hsh) is not str \
            or not _HEX32.fullmatch(hsh):
        raise ValueError("malformed", "prev and hash must be 64 lower-case hex digits")
    try:
        _check_fields(fields)
    except AuditFieldError as exc:
        raise ValueError("malformed", str(exc)) from None
    return AuditEntry(seq, ts, kind, fields, bytes.fromhex(prev), bytes.fromhex(hsh))


def _utc_day(ms: int) -> int:
    return ms // DAY_MS


# -- segments ---------------------------------------------------------------------------------


def _segments(directory: Path) -> list[tuple[int, Path]]:
    """(first seq, path) of every segment, in order."""
    found = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        m = _SEGMENT.fullmatch(name)
        if m:
            found.append((int(m.group(1)), directory / name))
    return sorted(found)


def _segment_name(seq: int) -> str:
    return f"{seq:012d}.jsonl"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lines(data: bytes) -> tuple[list[bytes], int]:
    """Complete lines of a segment and the length of a torn tail after the last newline."""
    end = data.rfind(b"\n") + 1
    return (data[:end].split(b"\n")[:-1] if end else []), len(data) - end


# -- verification -----------------------------------------------------------------------------


def verify(path: str | os.PathLike[str]) -> VerifyReport:
    """Verify the whole log in directory ``path``; never raises for bad content."""
    directory = Path(path)
    report = VerifyReport()
    segments = _segments(directory)
    report.segments = len(segments)
    expected: int | None = None
    last_hash: bytes | None = None
    first_prev: bytes | None = None
    anchors: set[tuple[int, str]] = set()  # (first seq after the cut, hash before it)
    for i, (first, seg) in enumerate(segments):
        newest = i == len(segments) - 1
        try:
            data = seg.read_bytes()
        except OSError as exc:
            return report.fail("segment", expected, seg.name, None, f"unreadable: {exc}")
        lines, torn = _lines(data)
        if torn:
            if not newest:
                return report.fail("segment", expected, seg.name, len(lines) + 1,
                                   "an older segment ends in a partial line")
            report.torn_tail, report.torn_bytes = True, torn
        if not lines and not newest:
            return report.fail("segment", expected, seg.name, None, "empty older segment")
        for n, raw in enumerate(lines, start=1):
            index = expected if expected is not None else first
            try:
                entry = _parse_line(raw)
            except ValueError as exc:
                return report.fail(exc.args[0], index, seg.name, n, exc.args[1])
            if n == 1 and entry.seq != first:
                return report.fail("segment", index, seg.name, n,
                                   f"segment named for seq {first} starts at {entry.seq}")
            if expected is None:
                expected, last_hash, first_prev = entry.seq, entry.prev, entry.prev
                report.first_seq = entry.seq
            if entry.seq != expected:
                return report.fail("seq", expected, seg.name, n,
                                   f"found seq {entry.seq} where {expected} was due")
            if entry.prev != last_hash:
                return report.fail("prev", expected, seg.name, n,
                                   "prev is not the hash of the entry before")
            if entry_hash(entry.seq, entry.ts, entry.kind, entry.fields, entry.prev) \
                    != entry.hash:
                return report.fail("hash", expected, seg.name, n,
                                   "the entry's hash does not match its content")
            if entry.kind == "pruned":
                f = entry.fields
                if type(f.get("last_seq")) is int and type(f.get("last_hash")) is str:
                    anchors.add((f["last_seq"] + 1, f["last_hash"]))
            report.kinds[entry.kind] = report.kinds.get(entry.kind, 0) + 1
            report.entries += 1
            report.last_seq = entry.seq
            last_hash = entry.hash
            expected = entry.seq + 1
    if report.first_seq is not None:
        assert first_prev is not None
        if report.first_seq == 0 and first_prev == ZERO_HASH:
            report.start = "genesis"
        elif (report.first_seq, first_prev.hex()) in anchors:
            report.start = "anchor"
        else:
            return report.fail("unanchored_start", report.first_seq, segments[0][1].name, 1,
                               "the chain starts at an entry no pruned record accounts for "
                               "(older segments removed by hand?)")
        report.head = last_hash.hex() if last_hash is not None else None
    if report.torn_tail:
        return report.fail("torn_tail", expected, segments[-1][1].name, None,
                           f"{report.torn_bytes} bytes after the last complete entry (a "
                           "crash mid-write); run 'appliance audit repair'")
    return report


def tail(path: str | os.PathLike[str], n: int) -> list[AuditEntry]:
    """The last ``n`` complete entries (not verified: use :func:`verify`)."""
    out: list[AuditEntry] = []
    for _, seg in reversed(_segments(Path(path))):
        lines, _ = _lines(seg.read_bytes())
        for raw in reversed(lines):
            if len(out) >= n:
                return out[::-1]
            try:
                out.append(_parse_line(raw))
            except ValueError:
                continue
    return out[::-1]


# -- the writer -------------------------------------------------------------------------------


class AuditLog:
    """Appends to the log in directory ``path`` (created if missing); see the module doc.

    ``clock_ms`` gives entry timestamps (ms since 1970); retention is checked against it.
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 retention_days: int = DEFAULT_RETENTION_DAYS,
                 clock_ms: Callable[[], int] | None = None,
                 max_segment_bytes: int = MAX_SEGMENT_BYTES) -> None:
        if retention_days < 1:
            raise ValueError("retention_days must be at least 1")
        self.path = Path(path)
        self.retention_days = retention_days
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.max_segment_bytes = max_segment_bytes
        self._lock = threading.Lock()
        # the tail as last seen or written, and the chain state after it
        self._mark: _Mark | None = None
        self._next_seq = 0
        self._last_hash = ZERO_HASH
        self._segment_day: int | None = None
        self._fault: AuditError | None = None

    @property
    def fault(self) -> AuditError | None:
        """The error every append now raises (:class:`AuditGone`, or what :meth:`disable`
        was given), or None."""
        return self._fault

    def disable(self, error: AuditError) -> None:
        """Refuse every later append with ``error`` (the daemon, for a log that failed
        verification at start: nothing is appended to a log that may have been tampered
        with)."""
        self._fault = error

    # -- public -----------------------------------------------------------------------------

    def append(self, kind: str, **fields: Any) -> AuditEntry:
        """Append one entry (fsynced before returning) and return it.

        Raises :class:`AuditFieldError` for what may not be logged, :class:`AuditTornTail` /
        :class:`AuditCorrupt` when the log's tail needs repair, :class:`AuditGone` when the
        log this writer appended to is gone or was replaced (and on every call after that, as
        after :meth:`disable`), OSError for the disk.
        """
        if type(kind) is not str or not _KIND.fullmatch(kind):
            raise AuditFieldError(f"kind {str(kind)[:40]!r}: lower-case letters, digits, _ .")
        checked = _check_fields(fields)
        with self._lock:
            if self._fault is not None:
                raise self._fault
            with self._flock():
                return self._append_locked(kind, checked)

    def _append_locked(self, kind: str, checked: dict[str, Any]) -> AuditEntry:
        self._load_tail()
        entry, rolled = self._write(kind, checked)
        if rolled:
            # The entry is written: a pruning failure (disk, an older segment that does
            # not parse, which verify reports) must not make append look failed.
            with contextlib.suppress(AuditError, OSError):
                self._prune_locked(entry.ts)
        return entry

    def check(self) -> None:
        """Raise :class:`AuditTornTail` or :class:`AuditCorrupt` unless appending can go on
        (reads only the tail; :func:`verify` checks the whole chain)."""
        with self._lock:
            if self._fault is not None:
                raise self._fault
            with self._flock():
                self._load_tail(force=True)

    def prune(self, now_ms: int | None = None) -> list[str]:
        """Remove segments older than the retention window now; their names."""
        with self._lock, self._flock():
            self._load_tail()
            return self._prune_locked(self.clock_ms() if now_ms is None else now_ms)

    def verify(self) -> VerifyReport:
        """:func:`verify` under the log's lock: no other writer appends, starts or prunes a
        segment meanwhile (so a line being written is not taken for a torn tail)."""
        with self._lock, self._flock():
            return verify(self.path)

    def tail(self, n: int) -> list[AuditEntry]:
        return tail(self.path, n)

    # -- internals --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        if self._mark is None:
            self.path.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_dir():  # never recreate a log this writer was appending to
            raise self._gone("missing", f"the audit log directory {self.path} is gone")
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _gone(self, reason: str, message: str) -> AuditGone:
        m = self._mark
        where = "" if m is None or m.seq < 0 else f" (this writer's last entry: seq {m.seq})"
        self._fault = AuditGone(reason, f"{message}{where}; not starting a new chain: "
                                "restart the writer once the log is accounted for")
        return self._fault

    def _check_mark(self, segments: list[tuple[int, Path]]) -> None:
        """The log still holds this writer's last entry where it wrote it (other writers may
        have appended after it); raises :class:`AuditGone` otherwise."""
        m = self._mark
        assert m is not None
        try:
            st = os.stat(m.path)
        except FileNotFoundError:
            if segments and self._pruned_since(segments, m):
                return  # another writer pruned it (retention): the chain went on
            raise self._gone("missing", f"{m.path.name} of the audit log is gone") from None
        if (st.st_dev, st.st_ino) != (m.dev, m.ino):
            raise self._gone("replaced", f"{m.path.name} of the audit log was replaced by "
                             "another file")
        if st.st_size < m.size:
            raise self._gone("truncated", f"{m.path.name} of the audit log is shorter "
                             f"({st.st_size} bytes) than after this writer's last entry "
                             f"({m.size})")
        if m.size == 0:
            return
        with open(m.path, "rb") as f:
            start = max(0, m.size - MAX_ENTRY_BYTES - 1)
            f.seek(start)
            window = f.read(m.size - start)
        raw = window[window.rfind(b"\n", 0, len(window) - 1) + 1:-1]
        try:
            entry = _parse_line(raw) if window.endswith(b"\n") else None
        except ValueError:
            entry = None
        if entry is None or entry.seq != m.seq or entry.hash != m.hash:
            raise self._gone("rewritten", f"{m.path.name} of the audit log no longer holds "
                             "this writer's last entry where it wrote it")

    @staticmethod
    def _pruned_since(segments: list[tuple[int, Path]], m: _Mark) -> bool:
        for _, seg in reversed(segments):
            with contextlib.suppress(OSError):
                for raw in reversed(_lines(seg.read_bytes())[0]):
                    with contextlib.suppress(ValueError):
                        e = _parse_line(raw)
                        if e.kind == "pruned" and e.fields.get("segment") == m.path.name \
                                and e.fields.get("last_hash") == m.hash.hex():
                            return True
        return False

    def _set_mark(self, path: Path, st: os.stat_result, seq: int, hash_: bytes) -> None:
        self._mark = _Mark(path, st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns, seq, hash_)

    def _load_tail(self, *, force: bool = False) -> None:
        """Bring the chain state up to date with the files (another writer may have moved
        them); raises if the newest segment is torn or its last entry does not check, and
        :class:`AuditGone` if this writer's last entry is no longer where it was."""
        segments = _segments(self.path)
        m = self._mark
        if segments and m is not None and not force:
            newest = segments[-1][1]
            if m.same_file(newest, os.stat(newest)):
                return  # nothing moved since this writer's last look
        if m is not None:
            self._check_mark(segments)
        if not segments:
            self._mark, self._next_seq, self._last_hash = None, 0, ZERO_HASH
            self._segment_day = None
            return
        newest = segments[-1][1]
        st = os.stat(newest)
        self._next_seq, self._last_hash, self._segment_day = 0, ZERO_HASH, None
        for first, seg in reversed(segments):
            data = seg.read_bytes()
            lines, torn = _lines(data)
            if torn:
                if seg == newest:
                    raise AuditTornTail(f"{seg.name} ends in {torn} bytes of a partial entry "
                                        "(a crash mid-write): run 'appliance audit repair'")
                raise AuditCorrupt(f"{seg.name}: an older segment ends in a partial line")
            if not lines:
                if seg != newest:
                    raise AuditCorrupt(f"{seg.name}: empty older segment")
                self._next_seq = first
                continue
            try:
                last = _parse_line(lines[-1])
                head = _parse_line(lines[0])
            except ValueError as exc:
                raise AuditCorrupt(f"{seg.name}: {exc.args[1]}") from None
            if entry_hash(last.seq, last.ts, last.kind, last.fields, last.prev) != last.hash:
                raise AuditCorrupt(f"{seg.name}: the newest entry's hash does not match")
            if seg == newest:
                self._segment_day = _utc_day(head.ts)
            elif self._next_seq != last.seq + 1:  # the newest segment is empty
                raise AuditCorrupt(f"{newest.name} does not follow {seg.name}")
            self._next_seq, self._last_hash = last.seq + 1, last.hash
            break
        self._set_mark(newest, st, self._next_seq - 1, self._last_hash)

    def _write(self, kind: str, fields: dict[str, Any]) -> tuple[AuditEntry, bool]:
        ts = self.clock_ms()
        seq, prev = self._next_seq, self._last_hash
        entry = AuditEntry(seq, ts, kind, fields, prev, entry_hash(seq, ts, kind, fields, prev))
        line = entry.line()
        if len(line) > MAX_ENTRY_BYTES:
            raise AuditFieldError(f"entry of {len(line)} bytes > {MAX_ENTRY_BYTES}")
        segments = _segments(self.path)
        rolled = False
        if not segments:
            target = self.path / _segment_name(seq)
        else:
            target = segments[-1][1]
            size = self._mark.size if self._mark is not None else 0
            if size == 0:  # an empty newest segment (a crash right after creating it)
                if target.name != _segment_name(seq):
                    raise AuditCorrupt(f"{target.name} is empty but named for another seq "
                                       f"than {seq}")
            elif self._segment_day != _utc_day(ts) or size + len(line) > self.max_segment_bytes:
                target, rolled = self.path / _segment_name(seq), True
        created = not target.exists()
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            if created:
                _fsync_dir(self.path)
            view = memoryview(line)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if created or self._segment_day is None:
            self._segment_day = _utc_day(ts)
        self._set_mark(target, st, seq, entry.hash)
        self._next_seq, self._last_hash = seq + 1, entry.hash
        return entry, rolled

    def _prune_locked(self, now_ms: int) -> list[str]:
        cutoff = now_ms - self.retention_days * DAY_MS
        removed = []
        segments = _segments(self.path)
        for _, seg in segments[:-1]:  # never the newest
            lines, torn = _lines(seg.read_bytes())
            if torn or not lines:
                break  # verify reports it; pruning must not hide it
            try:
                parsed = [_parse_line(raw) for raw in lines]
            except ValueError:
                break
            first, last = parsed[0], parsed[-1]
            if max(e.ts for e in parsed) >= cutoff:
                break  # contiguous from the oldest: the chain keeps one start
            self._write("pruned", {"segment": seg.name, "first_seq": first.seq,
                                   "last_seq": last.seq, "last_hash": last.hash.hex(),
                                   "last_ts": last.ts, "entries": len(lines),
                                   "retention_days": self.retention_days})
            seg.unlink()
            _fsync_dir(self.path)
            removed.append(seg.name)
        return removed


def repair(path: str | os.PathLike[str], *, operator: str,
           clock_ms: Callable[[], int] | None = None, automatic: bool = False,
           log: AuditLog | None = None) -> RepairResult:
    """Truncate a torn tail (only the bytes after the last complete entry) and log a
    ``repaired`` entry (``segment``, ``truncated_bytes``, ``truncated_sm3``: the hex SM3 of
    the bytes cut, never the bytes; ``operator``; ``automatic`` when the daemon did it at
    start). Nothing to do when the log verifies; :class:`AuditCorrupt` when it fails for any
    other reason than a torn tail (repair never hides tampering). ``log``: the writer to
    repair through (the daemon's), else a new one."""
    directory = Path(path)
    log = log or AuditLog(directory, clock_ms=clock_ms)
    with log._lock, log._flock():
        report = verify(directory)
        if report.ok:
            return RepairResult(False, 0, None, None)
        if report.error != "torn_tail":
            raise AuditCorrupt(f"the log does not verify ({report.error} at index "
                               f"{report.index}, {report.segment} line {report.line}): "
                               f"{report.detail}; repair only truncates a torn tail")
        seg = _segments(directory)[-1][1]
        fd = os.open(seg, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            keep = size - report.torn_bytes
            cut = os.pread(fd, report.torn_bytes, keep)
            os.ftruncate(fd, keep)
            os.fsync(fd)
        finally:
            os.close(fd)
        digest = sm3.digest(cut).hex()
        del cut
        log._mark = None  # the segment changed under any earlier look: read it afresh
        log._load_tail()
        fields: dict[str, Any] = {"segment": seg.name, "truncated_bytes": report.torn_bytes,
                                  "truncated_sm3": digest,
                                  "operator": _check_value("operator", operator, 0)}
        if automatic:
            fields["automatic"] = True
        entry, _ = log._write("repaired", fields)
        return RepairResult(True, report.torn_bytes, seg.name, entry, digest)
