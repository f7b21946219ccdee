"""The audit log: append-only, every entry chained to the one before with SM3, sealed by
checkpoints signed with the terminal's device key.

Layout: a directory of *segments*, ``000000000042.jsonl`` (the seq of its first entry, 12
digits), one JSON object a line::

    {"fields":{...},"hash":"<hex>","kind":"login","prev":"<hex>","seq":42,"ts":1764400000000}

``hash = SM3(enc({"seq", "ts", "kind", "fields", "prev"}))`` with ``enc`` the canonical CBOR
of appliance.wire and ``prev`` as 32 bytes: the hash of the entry before (32 zero bytes for
seq 0). A line must be exactly the canonical JSON of its entry (sorted keys, no spaces, ASCII
escapes), so an entry has one spelling. A new segment starts when the UTC day changes or the
segment would pass ``max_segment_bytes``; the chain runs on across segments. Directories are
0700, files 0600.

Checkpoints: a hash chain alone can be recomputed by anyone who can write the files. With a
signer (the crypto module's device key, :class:`appliance.node.tx.ModuleSigner`), the writer
appends a ``checkpoint`` entry after every ``checkpoint_every`` entries and before the first
entry of a new UTC day: the signature of :func:`checkpoint_message` (the head hash, its seq
and segment, the time) and the module's signature counter. :func:`verify` checks them against
the device public key; nothing before the last checkpoint can then be changed, removed or
inserted without breaking a signature. The entries after it are not protected (verify says
how many), nor is cutting the log back to an earlier point: the daily deposit of the head on
chain (:func:`anchor_head`, ``anchored`` entries) is the outside record for that.

Crash safety: one ``os.write`` of the whole line on an ``O_APPEND`` descriptor, then
``fsync`` (and a directory ``fsync`` when a segment is created or removed) before
:meth:`AuditLog.append` returns. A crash mid-write can leave a *torn tail* after the last
newline of the last segment: a proper prefix of the line of the entry due next (with its seq
and prev), possibly followed by zero bytes (:func:`torn_tail_problem` defines it exactly).
It is reported (``torn_tail``), appending refuses (:class:`AuditTornTail`) until
:func:`repair` truncates exactly those bytes and logs a ``repaired`` entry saying how many
and their SM3 (never the bytes). A torn write was never acknowledged, so nothing that was
logged is lost. Anything else after the last newline (a whole entry without its newline, a
prefix of another entry, garbage) is ``bad_tail``: never cut. (``appliance run`` repairs a
torn tail at start by itself; a log that fails for any other reason is never repaired.)

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
``envelope`` are refused outright. See docs/audit.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import wire
from .gm import sm2, sm3

__all__ = [
    "ANCHOR_KIND", "CHECKPOINT_DOMAIN", "DAY_MS", "DEFAULT_CHECKPOINT_EVERY",
    "DEFAULT_RETENTION_DAYS", "FORBIDDEN_FIELDS", "KEY_FILE", "MAX_ENTRY_BYTES", "MAX_TEXT",
    "ZERO_HASH", "AnchorHead", "AnchorLookup", "AuditCheckpointError", "AuditCorrupt",
    "AuditEntry", "AuditError", "AuditFieldError", "AuditGone", "AuditLog", "AuditTornTail",
    "CheckpointSigner", "RepairResult", "VerifyReport", "anchor_head", "checkpoint_message",
    "ensure_private_dir", "entry_hash", "key_id", "read_key_file", "repair", "tail",
    "torn_tail_problem", "verify",
]

DEFAULT_RETENTION_DAYS = 190
DEFAULT_CHECKPOINT_EVERY = 1000
DAY_MS = 86_400_000
ZERO_HASH = bytes(32)
MAX_ENTRY_BYTES = 4096
MAX_TEXT = 1024
MAX_ITEMS = 64
MAX_DEPTH = 4
MAX_SEGMENT_BYTES = 4 * 1024 * 1024
DIR_MODE, FILE_MODE = 0o700, 0o600
#: The domain tag of the signed checkpoint message (:func:`checkpoint_message`).
CHECKPOINT_DOMAIN = "appliance.audit.checkpoint/1"
#: ``kind`` of the ``evidence.deposit`` that anchors a head on chain (ledger-protocol §6).
ANCHOR_KIND = "audit.head"
#: The device public key (hex, one line) of the newest checkpoints, in the log's directory.
KEY_FILE = "device-key.pub"
_INT_LIMIT = 2**63
_KIND = re.compile(r"[a-z][a-z0-9_.]{0,31}")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,22}")  # fits appliance.wire's 23-byte keys
_SEGMENT = re.compile(r"([0-9]{12})\.jsonl")
_HEX32 = re.compile(r"[0-9a-f]{64}")
_HEX64 = re.compile(r"[0-9a-f]{128}")
_ENTRY_KEYS = frozenset({"seq", "ts", "kind", "fields", "prev", "hash"})
_CHECKPOINT_FIELDS = frozenset({"reason", "segment", "head_seq", "head", "counter",
                                "signature", "signer"})
_CHECKPOINT_REASONS = frozenset({"count", "day", "request"})
_ANCHORED_FIELDS = frozenset({"day", "head_seq", "digest", "tx_id", "height", "block_ms"})
LOCK_NAME = ".lock"
#: Names that would only be used for what must never be logged.
FORBIDDEN_FIELDS = frozenset({"image", "images", "jpeg", "jpg", "png", "frame", "frames",
                              "photo", "picture", "pixels", "face", "envelope", "ciphertext",
                              "plaintext", "key", "private_key", "secret", "pin"})


class CheckpointSigner(Protocol):
    """What signs checkpoints: :class:`appliance.node.tx.ModuleSigner` (the device key in the
    crypto module). ``sign`` signs the message as the module's ``sign`` does (SM2 with SM3 and
    the default distinguishing ID) and leaves the module's signature counter of that
    signature in ``last_counter``. Give the log a signer object of its own (one
    ``ModuleSigner`` on the shared client): ``last_counter`` is per object."""

    public_key: bytes
    last_counter: int | None

    def sign(self, message: bytes) -> bytes: ...


#: ``lookup(digest)``: the ``(tx_id, height, block_time_ms)`` of every ``evidence.deposit``
#: of kind ``audit.head`` with that digest, verified on chain by the caller.
AnchorLookup = Callable[[bytes], Iterable[tuple[bytes, int, int]]]


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


class AuditCheckpointError(AuditError):
    """A checkpoint asked for (:meth:`AuditLog.checkpoint`) could not be signed."""

    code = "checkpoint"


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
    ``unanchored_start``, ``torn_tail``, ``bad_tail`` (bytes after the last entry that are
    not a torn write), ``checkpoint`` (a checkpoint that does not name the entry before it),
    ``checkpoint_key``, ``checkpoint_signature``, ``checkpoint_counter``,
    ``checkpoint_missing`` (asked to require checkpoints), ``anchor`` (an ``anchored`` entry
    whose digest is not the hash it names, or not on chain). ``index`` is the seq expected
    where it was found, ``segment`` and ``line`` (1-based) where.

    ``checkpoints``: how many; ``checkpoint_seq``: the last one's seq; ``sealed_seq``: the
    last entry it covers (its head); ``unanchored``: the entries after the last checkpoint
    (all of them when there is none), which whoever can write the files could remove or
    change without this verification noticing; ``signatures``: ``"verified"`` (against
    the public keys given), ``"unchecked"`` (none given) or None (no checkpoints); ``keys``:
    the SM3 of each key that signed a checkpoint. ``anchors``: ``anchored`` entries;
    ``anchors_checked``: looked up on chain.
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
    checkpoints: int = 0
    checkpoint_seq: int | None = None
    sealed_seq: int | None = None
    unanchored: int = 0
    signatures: str | None = None
    keys: list[str] = field(default_factory=list)
    anchors: int = 0
    anchors_checked: bool = False
    notes: list[str] = field(default_factory=list)

    def fail(self, error: str, index: int | None, segment: str | None, line: int | None,
             detail: str) -> VerifyReport:
        self.ok, self.error, self.index = False, error, index
        self.segment, self.line, self.detail = segment, line, detail
        return self

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "ok", "entries", "segments", "first_seq", "last_seq", "head", "start", "error",
            "index", "segment", "line", "detail", "torn_tail", "torn_bytes", "kinds",
            "checkpoints", "checkpoint_seq", "sealed_seq", "unanchored", "signatures", "keys",
            "anchors", "anchors_checked", "notes")}


@dataclass(frozen=True)
class RepairResult:
    repaired: bool
    truncated_bytes: int
    segment: str | None
    entry: AuditEntry | None
    truncated_sm3: str | None = None  # hex SM3 of the bytes cut (the bytes are not kept)


@dataclass(frozen=True)
class AnchorHead:
    """The head of the log to deposit on chain for one UTC day (ledger-protocol §6:
    ``evidence.deposit``, ``kind`` ``"audit.head"``, ``digest`` = the head).

    ``digest`` is the hash of ``seq``, the day's last entry: it commits to every entry of the
    chain up to it, the day's own (``first_seq`` .. ``seq``) and all before."""

    day: int  # UTC day number: ms // DAY_MS
    seq: int
    digest: bytes
    ts: int
    segment: str
    first_seq: int

    def deposit_data(self, enrollment: bytes) -> dict[str, Any]:
        """The ``data`` of the ``evidence.deposit`` (``enrollment``: the tx_id of this
        terminal's ``device.enroll``)."""
        return {"digest": self.digest, "kind": ANCHOR_KIND, "enrollment": enrollment}


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


def checkpoint_message(segment: str, seq: int, head: bytes, ts: int) -> bytes:
    """The bytes a checkpoint's signature covers: the canonical CBOR (appliance.wire) of
    ``{"domain": "appliance.audit.checkpoint/1", "segment": segment, "seq": seq,
    "head": head, "ts": ts}``: ``head`` (32 bytes) the hash of entry ``seq``, the last entry
    the checkpoint covers, held in ``segment``; ``ts`` the checkpoint entry's own time."""
    return wire.encode({"domain": CHECKPOINT_DOMAIN, "segment": segment, "seq": seq,
                        "head": bytes(head), "ts": ts})


def key_id(public_key: bytes) -> str:
    """How a checkpoint names its key: the hex SM3 of the 65-byte public key."""
    return sm3.digest(bytes(public_key)).hex()


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


# -- torn tails -------------------------------------------------------------------------------

_LINE_HEAD = '{"fields":'
_HEX_CHARS = frozenset("0123456789abcdef")
_KIND_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.")
_DIGITS = frozenset("0123456789")


def _proper_prefix(text: str, pieces: list[Any]) -> bool:
    """``text`` is a proper prefix of a string made of ``pieces``: literals (str) and runs
    (allowed characters, min, max). What would follow the last piece (the line's closing
    brace) must not be there."""
    pos = 0
    for piece in pieces:
        if pos == len(text):
            return True
        if isinstance(piece, str):
            n = min(len(piece), len(text) - pos)
            if text[pos:pos + n] != piece[:n]:
                return False
            pos += n
            continue
        chars, low, high = piece
        start = pos
        while pos < len(text) and pos - start < high and text[pos] in chars:
            pos += 1
        if pos == len(text):
            return True
        if pos - start < low:
            return False
    return pos == len(text)


def torn_tail_problem(tail: bytes, seq: int, prev: bytes | None) -> str | None:
    """None when ``tail`` (the bytes after the last newline of the newest segment) is what a
    crash in the middle of writing entry ``seq`` (linked to ``prev``; None: not known) can
    leave, and why not otherwise.

    A torn tail is shorter than any line (< MAX_ENTRY_BYTES), and is what was written of the
    line, possibly followed by zero bytes (blocks the file's size covered but whose data
    never reached the disk): the written part is a proper prefix of a canonical entry line
    of that seq and prev. It starts as every line does; up to the end of the entry's fields
    it is not checked further; after them every byte must fit ``,"hash":"<64 hex>","kind":
    "<kind>","prev":"<prev>","seq":<seq>,"ts":<digits>`` and the closing ``}`` must not be
    there. So a whole entry (with or without zero bytes after it) is never a torn tail, nor
    the cut-off line of an entry with another seq or prev, nor bytes that are not ASCII."""
    if len(tail) >= MAX_ENTRY_BYTES:
        return f"{len(tail)} bytes, more than any entry's line"
    written = tail.rstrip(b"\0")
    if b"\0" in written:
        return "zero bytes between written ones"
    try:
        text = written.decode("ascii")
    except UnicodeDecodeError:
        return "not ASCII: not part of an entry's line"
    if len(text) <= len(_LINE_HEAD):
        return None if _LINE_HEAD.startswith(text) else "not the start of an entry's line"
    if not text.startswith(_LINE_HEAD):
        return "not the start of an entry's line"
    try:
        fields, end = json.JSONDecoder().raw_decode(text, len(_LINE_HEAD))
    except ValueError:
        return None  # it ends inside the entry's fields
    if type(fields) is not dict:
        return "not an entry's fields"
    prev_piece: Any = (_HEX_CHARS, 64, 64) if prev is None else prev.hex()
    pieces = [',"hash":"', (_HEX_CHARS, 64, 64), '","kind":"', (_KIND_CHARS, 1, 32),
              '","prev":"', prev_piece, f'","seq":{seq},"ts":', (_DIGITS, 1, 19)]
    if _proper_prefix(text[end:], pieces):
        return None
    if _LINE_HEAD in text[1:] or text.endswith("}"):
        return "a whole entry (without its newline) is never a torn write"
    return f"not the line of entry {seq} following the last entry"


# -- files ------------------------------------------------------------------------------------


def ensure_private_dir(path: str | os.PathLike[str]) -> None:
    """``path`` as a directory only its owner can enter (0700): created with any missing
    parents (each 0700, whatever the umask), or tightened to 0700 if it has group or other
    permissions."""
    path = Path(path)
    missing = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, DIR_MODE)
        os.chmod(d, DIR_MODE)
    if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
        os.chmod(path, DIR_MODE)


def _private_fd(fd: int) -> None:
    """Files of the log are 0600 whatever the umask or an older version made them."""
    if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
        os.fchmod(fd, FILE_MODE)


def read_key_file(path: str | os.PathLike[str]) -> bytes | None:
    """The device public key of the log in directory ``path`` (:data:`KEY_FILE`), or None.

    It is a convenience: the file is on the terminal's disk, so it proves nothing to someone
    checking the terminal; verify against the key from the device's enrollment."""
    try:
        text = (Path(path) / KEY_FILE).read_text("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


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


class _Seals:
    """The checkpoints and ``anchored`` entries :func:`verify` meets, in chain order."""

    def __init__(self, public_keys: list[bytes] | None) -> None:
        self.keys = None if public_keys is None else {key_id(k): k for k in public_keys}
        self.count = 0
        self.last_seq: int | None = None  # the last checkpoint entry
        self.sealed_seq: int | None = None  # the last entry it covers
        self.counters: dict[str, int] = {}  # the last counter of each key
        self.prev_segment: str | None = None  # the segment of the entry before
        self.first_seq: int | None = None
        self.hashes = bytearray()  # 32 bytes an entry from first_seq on
        self.anchored: list[tuple[AuditEntry, str, int]] = []

    def see(self, e: AuditEntry, segment: str, line: int) -> tuple[str, str] | None:
        if self.first_seq is None:
            self.first_seq = e.seq
        problem = None
        if e.kind == "checkpoint":
            problem = self._checkpoint(e)
        elif e.kind == "anchored":
            problem = self._anchored(e)
            if problem is None:
                self.anchored.append((e, segment, line))
        self.hashes += e.hash
        self.prev_segment = segment
        return problem

    def hash_of(self, seq: int) -> bytes | None:
        i = seq - (self.first_seq or 0)
        return bytes(self.hashes[32 * i:32 * i + 32]) if 0 <= i < len(self.hashes) // 32 \
            else None

    def _checkpoint(self, e: AuditEntry) -> tuple[str, str] | None:
        f = e.fields
        if set(f) != _CHECKPOINT_FIELDS or f["reason"] not in _CHECKPOINT_REASONS \
                or type(f["segment"]) is not str or not _SEGMENT.fullmatch(f["segment"]) \
                or type(f["head_seq"]) is not int or type(f["head"]) is not str \
                or type(f["counter"]) is not int or f["counter"] < 0 \
                or type(f["signature"]) is not str or not _HEX64.fullmatch(f["signature"]) \
                or type(f["signer"]) is not str or not _HEX32.fullmatch(f["signer"]):
            return "checkpoint", "not a checkpoint's fields"
        if f["head_seq"] != e.seq - 1 or f["head"] != e.prev.hex():
            return "checkpoint", "the checkpoint does not name the entry before it as its head"
        if self.prev_segment is not None and f["segment"] != self.prev_segment:
            return "checkpoint", (f"the checkpoint names segment {f['segment']}, its head is "
                                  f"in {self.prev_segment}")
        if self.keys is not None:
            key = self.keys.get(f["signer"])
            if key is None:
                return "checkpoint_key", (f"signed by another key (SM3 {f['signer'][:16]}…) "
                                          "than the device key given")
            message = checkpoint_message(f["segment"], f["head_seq"], e.prev, e.ts)
            if not sm2.verify(key, message, bytes.fromhex(f["signature"])):
                return "checkpoint_signature", "the checkpoint's signature does not verify"
        before = self.counters.get(f["signer"])  # a module's counter, per key
        if before is not None and f["counter"] <= before:
            return "checkpoint_counter", (f"signature counter {f['counter']} after {before}: "
                                          "it must increase")
        self.count += 1
        self.last_seq, self.sealed_seq = e.seq, e.seq - 1
        self.counters[f["signer"]] = f["counter"]
        return None

    def _anchored(self, e: AuditEntry) -> tuple[str, str] | None:
        f = e.fields
        if set(f) != _ANCHORED_FIELDS or any(type(f[k]) is not int or f[k] < 0 for k in (
                "day", "head_seq", "height", "block_ms")) \
                or any(type(f[k]) is not str or not _HEX32.fullmatch(f[k])
                       for k in ("digest", "tx_id")):
            return "anchor", "not an anchored entry's fields"
        if f["head_seq"] >= e.seq:
            return "anchor", "an anchored head after the entry that records it"
        known = self.hash_of(f["head_seq"])
        if known is not None and known.hex() != f["digest"]:
            return "anchor", f"the anchored digest is not the hash of entry {f['head_seq']}"
        return None

    def finish(self, report: VerifyReport, require: bool) -> VerifyReport:
        report.checkpoints, report.checkpoint_seq = self.count, self.last_seq
        report.sealed_seq = self.sealed_seq
        report.anchors = len(self.anchored)
        if report.last_seq is None:
            return report
        report.unanchored = report.entries if self.last_seq is None \
            else report.last_seq - self.last_seq
        if self.count:
            report.signatures = "verified" if self.keys is not None else "unchecked"
            report.keys = sorted(self.counters)
        if self.count == 0:
            report.notes.append(f"no checkpoint: none of the {report.entries} entries is "
                                "anchored (whoever can write the files can rewrite them all)")
        elif report.unanchored:
            report.notes.append(f"{report.unanchored} entries after the last checkpoint are "
                                "not yet anchored (whoever can write the files could remove "
                                "or change them undetected)")
        if self.count and self.keys is None:
            report.notes.append("checkpoint signatures not checked: no device public key "
                                "given")
        if self.count:
            report.notes.append("cutting the log back before a checkpoint (checkpoints "
                                "included) shows only against a head recorded elsewhere: "
                                "the daily deposit on chain")
        if require:
            if self.keys is None:
                return report.fail("checkpoint_key", None, None, None,
                                   "checkpoints required but no device public key given")
            if self.count == 0:
                return report.fail("checkpoint_missing", None, None, None,
                                   f"checkpoints required: none among {report.entries} "
                                   "entries (unsigned log)")
        return report


def verify(path: str | os.PathLike[str], *,
           public_key: bytes | Iterable[bytes] | None = None,
           require_checkpoints: bool = False,
           lookup: AnchorLookup | None = None) -> VerifyReport:
    """Verify the whole log in directory ``path``; never raises for bad content.

    ``public_key`` (65 bytes, SM2), or several (the device's keys over time): every
    checkpoint must be signed by one of them, its counter higher than the last of that key.
    ``require_checkpoints``: fail without a key or when the log has no checkpoint.
    ``lookup``: check every ``anchored`` entry's deposit on chain (see
    :data:`AnchorLookup`; its own errors propagate)."""
    directory = Path(path)
    report = VerifyReport()
    seals = _Seals(None if public_key is None else
                   [bytes(public_key)] if isinstance(public_key, bytes | bytearray)
                   else [bytes(k) for k in public_key])
    segments = _segments(directory)
    report.segments = len(segments)
    expected: int | None = None
    last_hash: bytes | None = None
    first_prev: bytes | None = None
    tail = b""
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
            tail = data[len(data) - torn:]
        if not lines and not newest:
            return report.fail("segment", expected, seg.name, None, "empty older segment")
        if not lines and expected is not None and first != expected:
            return report.fail("segment", expected, seg.name, None,
                               f"the newest segment is named for seq {first}")
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
            problem = seals.see(entry, seg.name, n)
            if problem is not None:
                return report.fail(problem[0], expected, seg.name, n, problem[1])
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
    if tail:
        due = expected if expected is not None else segments[-1][0]
        prev = last_hash if last_hash is not None else (ZERO_HASH if due == 0 else None)
        problem = torn_tail_problem(tail, due, prev)
        report.torn_bytes = len(tail)
        if problem is not None:
            return report.fail("bad_tail", due, segments[-1][1].name, None,
                               f"the newest segment ends in {len(tail)} bytes that are not a "
                               f"torn write ({problem}): never cut, check it by hand")
        report.torn_tail = True
        return report.fail("torn_tail", due, segments[-1][1].name, None,
                           f"{len(tail)} bytes after the last complete entry (a crash "
                           "mid-write); run 'appliance audit repair'")
    seals.finish(report, require_checkpoints)
    if not report.ok or lookup is None:
        return report
    for e, seg_name, n in seals.anchored:
        digest = bytes.fromhex(e.fields["digest"])
        wanted = (bytes.fromhex(e.fields["tx_id"]), e.fields["height"], e.fields["block_ms"])
        found = [(bytes(t), h, b) for t, h, b in lookup(digest)]
        if wanted not in found:
            return report.fail("anchor", e.seq, seg_name, n,
                               f"the head of seq {e.fields['head_seq']} is not on chain in "
                               f"tx {e.fields['tx_id'][:16]}… at height {e.fields['height']}")
    report.anchors_checked = True
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


def anchor_head(path: str | os.PathLike[str], day: int, *,
                public_key: bytes | Iterable[bytes] | None = None) -> AnchorHead | None:
    """The head to deposit on chain for UTC day ``day`` (ms // DAY_MS): the hash of the
    day's last entry, or None when nothing was logged that day (or it was pruned).

    The whole log is verified first (with ``public_key``, the checkpoints too):
    :class:`AuditCorrupt` if it does not verify, :class:`AuditTornTail` for a torn tail; a
    head is never taken from a log that may have been tampered with."""
    directory = Path(path)
    report = verify(directory, public_key=public_key)
    if not report.ok:
        error = AuditTornTail if report.error == "torn_tail" else AuditCorrupt
        raise error(f"the log does not verify ({report.error} at index {report.index}): "
                    f"{report.detail}")
    found: list[tuple[Path, list[bytes]]] = []
    for _, seg in _segments(directory):  # a segment's entries share its first entry's day
        lines, _ = _lines(seg.read_bytes())
        if lines and _utc_day(_parse_line(lines[0]).ts) == day:
            found.append((seg, lines))
    if not found:
        return None
    first = _parse_line(found[0][1][0])
    seg, lines = found[-1]
    last = _parse_line(lines[-1])
    return AnchorHead(day, last.seq, last.hash, last.ts, seg.name, first.seq)


# -- the writer -------------------------------------------------------------------------------


class AuditLog:
    """Appends to the log in directory ``path`` (created 0700 if missing); see the module doc.

    ``clock_ms`` gives entry timestamps (ms since 1970); retention is checked against it.
    ``signer`` (:class:`CheckpointSigner`, may be set later as the attribute ``signer``, e.g.
    once the crypto module is logged in) signs a ``checkpoint`` after every
    ``checkpoint_every`` entries and before the first entry of each new UTC day. Without one
    the log is only hash-chained.
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 retention_days: int = DEFAULT_RETENTION_DAYS,
                 clock_ms: Callable[[], int] | None = None,
                 max_segment_bytes: int = MAX_SEGMENT_BYTES,
                 signer: CheckpointSigner | None = None,
                 checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY) -> None:
        if retention_days < 1:
            raise ValueError("retention_days must be at least 1")
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self.path = Path(path)
        self.retention_days = retention_days
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.max_segment_bytes = max_segment_bytes
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        #: why the last checkpoint due could not be written (None once one is)
        self.checkpoint_error: str | None = None
        self._lock = threading.Lock()
        self._private = False  # directory and files made private once by this writer
        # the tail as last seen or written, and the chain state after it
        self._mark: _Mark | None = None
        self._next_seq = 0
        self._last_hash = ZERO_HASH
        self._head_segment: str | None = None  # the segment holding entry _next_seq - 1
        self._segment_day: int | None = None
        self._fault: AuditError | None = None
        # checkpoints: entries since the last one and its counter (None: read them back)
        self._since: int | None = None
        self._last_counter: tuple[str, int] | None = None  # (signer, counter)
        self._day_closed = False  # a day's segment closed with no checkpoint after it
        self._retry_at = 0  # after a signing failure, no new try before this seq
        self._published_key: bytes | None = None

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
        """Append one entry (fsynced before returning) and return it, and a checkpoint
        before or after it when one is due (a checkpoint that cannot be signed is left for
        a later append: ``checkpoint_error`` says why).

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
        before = self._mark.path if self._mark is not None else None
        ts = self.clock_ms()
        if self.signer is not None and self._next_seq > 0 \
                and self._segment_day not in (None, _utc_day(ts)):
            self._day_closed = True  # this entry starts a new day: seal the day before
        if self._day_closed:
            self._seal(ts, "day")  # the first entry of the new segment
        entry, _ = self._write(kind, checked, ts)
        rolled = before is not None and self._mark is not None and self._mark.path != before
        # The entry is written: a failure after it (disk, an older segment that does not
        # parse, which verify reports) must not make append look failed.
        with contextlib.suppress(AuditError, OSError):
            if self._checkpoint_due():
                self._seal(ts, "count")
        if rolled:
            with contextlib.suppress(AuditError, OSError):
                self._prune_locked(entry.ts)
        return entry

    def checkpoint(self) -> AuditEntry | None:
        """Append a checkpoint now (reason ``request``) if any entry follows the last one;
        :class:`AuditCheckpointError` without a signer or when signing fails."""
        with self._lock:
            if self._fault is not None:
                raise self._fault
            with self._flock():
                self._load_tail()
                if self.signer is None:
                    raise AuditCheckpointError("no signer: the log cannot sign a checkpoint")
                if self._since_checkpoint() == 0:
                    return None
                return self._seal(self.clock_ms(), "request", strict=True)

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

    def verify(self, **kwargs: Any) -> VerifyReport:
        """:func:`verify` under the log's lock: no other writer appends, starts or prunes a
        segment meanwhile (so a line being written is not taken for a torn tail)."""
        with self._lock, self._flock():
            return verify(self.path, **kwargs)

    def tail(self, n: int) -> list[AuditEntry]:
        return tail(self.path, n)

    def anchor_head(self, day: int) -> AnchorHead | None:
        """:func:`anchor_head` under the log's lock, checking the checkpoints with the
        signer's public key when there is a signer."""
        signer = self.signer
        with self._lock, self._flock():
            return anchor_head(self.path, day,
                               public_key=signer.public_key if signer is not None else None)

    def record_anchor(self, head: AnchorHead, tx_id: bytes, height: int,
                      block_ms: int) -> AuditEntry:
        """Append ``anchored``: ``head`` was deposited on chain in ``tx_id``, included at
        ``height`` in a block of time ``block_ms`` (as the light node verified it)."""
        if len(tx_id) != 32:
            raise AuditFieldError("tx_id must be 32 bytes")
        return self.append("anchored", day=head.day, head_seq=head.seq,
                           digest=head.digest.hex(), tx_id=bytes(tx_id).hex(), height=height,
                           block_ms=block_ms)

    # -- internals --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        if self._mark is None:
            ensure_private_dir(self.path)
        elif not self.path.is_dir():  # never recreate a log this writer was appending to
            raise self._gone("missing", f"the audit log directory {self.path} is gone")
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            _private_fd(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not self._private:
                self._make_private()
            yield
        finally:
            os.close(fd)  # releases the lock

    def _make_private(self) -> None:
        """Once a writer: the directory 0700 and its files 0600 (a log an older version
        made with looser modes is tightened)."""
        if stat.S_IMODE(os.stat(self.path).st_mode) != DIR_MODE:
            os.chmod(self.path, DIR_MODE)
        for name in os.listdir(self.path):
            if _SEGMENT.fullmatch(name) or name == KEY_FILE:
                p = self.path / name
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_IMODE(os.lstat(p).st_mode) != FILE_MODE:
                        os.chmod(p, FILE_MODE)
        self._private = True

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
        self._since = None  # another writer may have appended: count again when needed
        if not segments:
            self._mark, self._next_seq, self._last_hash = None, 0, ZERO_HASH
            self._segment_day, self._head_segment = None, None
            return
        newest = segments[-1][1]
        st = os.stat(newest)
        self._next_seq, self._last_hash, self._segment_day = 0, ZERO_HASH, None
        self._head_segment = None
        torn_tail = b""
        for first, seg in reversed(segments):
            data = seg.read_bytes()
            lines, torn = _lines(data)
            if torn:
                if seg != newest:
                    raise AuditCorrupt(f"{seg.name}: an older segment ends in a partial line")
                torn_tail = data[len(data) - torn:]
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
            self._head_segment = seg.name
            break
        if torn_tail:
            prev = self._last_hash if self._head_segment is not None or self._next_seq == 0 \
                else None
            problem = torn_tail_problem(torn_tail, self._next_seq, prev)
            if problem is not None:
                raise AuditCorrupt(f"{newest.name} ends in {len(torn_tail)} bytes that are "
                                   f"not a torn write ({problem})")
            raise AuditTornTail(f"{newest.name} ends in {len(torn_tail)} bytes of a partial "
                                "entry (a crash mid-write): run 'appliance audit repair'")
        self._set_mark(newest, st, self._next_seq - 1, self._last_hash)

    def _write(self, kind: str, fields: dict[str, Any],
               ts: int | None = None) -> tuple[AuditEntry, bool]:
        """Write one entry; (it, whether it started a segment after another)."""
        ts = self.clock_ms() if ts is None else ts
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
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            if created:
                _private_fd(fd)
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
        self._next_seq, self._last_hash, self._head_segment = seq + 1, entry.hash, target.name
        if kind == "checkpoint":
            self._since, self._day_closed = 0, False
        elif self._since is not None:
            self._since += 1
        return entry, rolled

    # -- checkpoints ------------------------------------------------------------------------

    def _since_checkpoint(self) -> int:
        """Entries after the last checkpoint (counted up to ``checkpoint_every``), read back
        from the files when not known; also the last checkpoint's signer and counter."""
        if self._since is None:
            since, counter = 0, None
            for _, seg in reversed(_segments(self.path)):
                for raw in reversed(_lines(seg.read_bytes())[0]):
                    try:
                        e = _parse_line(raw)
                    except ValueError:
                        e = None
                    if e is not None and e.kind == "checkpoint":
                        c, k = e.fields.get("counter"), e.fields.get("signer")
                        counter = (k, c) if type(c) is int and type(k) is str else None
                        break
                    since += 1
                    if since >= self.checkpoint_every:
                        break
                else:
                    continue
                break
            self._since, self._last_counter = since, counter
        return self._since

    def _checkpoint_due(self) -> bool:
        return self.signer is not None and self._next_seq >= self._retry_at \
            and self._since_checkpoint() >= self.checkpoint_every

    def _seal(self, ts: int, reason: str, *, strict: bool = False) -> AuditEntry | None:
        """Sign and append a checkpoint of the current head. A signing failure is noted in
        ``checkpoint_error`` (raised as :class:`AuditCheckpointError` when ``strict``) and
        not tried again before ``checkpoint_every // 10`` more entries; a write failure
        raises."""
        signer = self.signer
        if signer is None or self._next_seq == 0 or self._head_segment is None \
                or self._since_checkpoint() == 0:
            self._day_closed = False
            return None
        if not strict and self._next_seq < self._retry_at:
            return None
        head_seq, head, segment = self._next_seq - 1, self._last_hash, self._head_segment
        message = checkpoint_message(segment, head_seq, head, ts)
        try:
            public_key = bytes(signer.public_key)
            signer_id = key_id(public_key)
            signature = bytes(signer.sign(message))
            counter = signer.last_counter
            if type(counter) is not int or counter < 0:
                raise ValueError("the signer gave no signature counter")
            last = self._last_counter
            if last is not None and last[0] == signer_id and counter <= last[1]:
                raise ValueError(f"the signature counter went from {last[1]} to {counter}: "
                                 "it must increase")
            if not sm2.verify(public_key, message, signature):
                raise ValueError("the signer produced a bad signature")
        except Exception as exc:  # noqa: BLE001 - the module may fail in any way; noted
            self.checkpoint_error = f"{type(exc).__name__}: {exc}"
            self._retry_at = self._next_seq + max(1, self.checkpoint_every // 10)
            if strict:
                raise AuditCheckpointError(f"checkpoint not signed: {exc}") from exc
            return None
        entry, _ = self._write("checkpoint", {
            "reason": reason, "segment": segment, "head_seq": head_seq, "head": head.hex(),
            "counter": counter, "signature": signature.hex(), "signer": signer_id}, ts)
        self._last_counter = (signer_id, counter)
        self.checkpoint_error, self._retry_at = None, 0
        with contextlib.suppress(OSError):
            self._publish_key(public_key)
        return entry

    def _publish_key(self, public_key: bytes) -> None:
        """Keep :data:`KEY_FILE` the key of the newest checkpoints (written atomically)."""
        if self._published_key == public_key:
            return
        target = self.path / KEY_FILE
        if read_key_file(self.path) != public_key:
            tmp = self.path / (KEY_FILE + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            try:
                _private_fd(fd)
                os.write(fd, public_key.hex().encode("ascii") + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            _fsync_dir(self.path)
        self._published_key = public_key

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
    """Truncate a torn tail (only the bytes after the last complete entry, and only when
    they are a torn write: :func:`torn_tail_problem`) and log a ``repaired`` entry
    (``segment``, ``truncated_bytes``, ``truncated_sm3``: the hex SM3 of the bytes cut, never
    the bytes; ``operator``; ``automatic`` when the daemon did it at start). Nothing to do
    when the log verifies; :class:`AuditCorrupt` when it fails for any other reason than a
    torn tail (repair never hides tampering, never cuts a whole entry). ``log``: the writer
    to repair through (the daemon's), else a new one."""
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
