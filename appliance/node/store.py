"""The verified header store: the light node's crash-safe memory of the chain (protocol §5).

One SQLite file (stdlib ``sqlite3``) in WAL mode with ``synchronous=FULL``: a committed write
survives a kill or a power cut, an interrupted one leaves no trace. Every mutating method is one
``BEGIN IMMEDIATE ... COMMIT`` transaction, so a segment of headers is stored whole or not at
all, and the file reopens consistent after a kill at any instant (tests/node/test_store.py kills
a writer at random points and checks).

The store is decoupled from the object model: it keeps primitives (ints, bytes, text) that the
caller (the verifier and the sync engine) has already verified. It checks only what is its own
business: heights are consecutive and continue the tip, hashes are 32 bytes, and nothing is
overwritten with something else.

What is kept, so that the file stays bounded (a simulated year at one block a second with the
defaults and ~257-byte headers: about 30 MiB of database plus about 4 MiB of WAL; about 300
bytes per header in the window and 42 per checkpoint, so checkpoints add ~1.2 MiB a year):

- the full header and block_id of the last ``window`` heights (default 100 000), plus at most
  one segment of headers below them that are no longer returned (see the schema);
- the block_id of every height that is a multiple of ``checkpoint_every`` (default 1024) and of
  the anchor height, forever. An old transaction is verified by fetching from a peer the headers
  between the two known block_ids that bracket its height (:meth:`HeaderStore.checkpoints_around`)
  and checking the hash links; at most ``checkpoint_every`` headers;
- the tip and the hash of the validator set that signs the next header;
- every validator set learnt (few: one per set change), every piece of evidence, every alarm and
  who cleared it.

Nothing here reads a clock: times (``at_ms``, ms since 1970 UTC) are passed in by the caller.

Schema (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`, ``application_id`` =
:data:`APPLICATION_ID`): one row per appended segment, keyed by its first height (the rowid),
holding the header bytes as given, concatenated, their offsets and their block_ids: an append
is one B-tree insert, not one per header (the per-header inserts were half the cost of an
append). The window is ``state.low_height .. tip``; pruning deletes the segments wholly below
it, one range delete at the table's start; freed pages go to the freelist and are reused by the
next appends, so the file does not grow once the window is full. A version-1 file (one row per
header) is migrated on open, in one transaction.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

__all__ = [
    "APPLICATION_ID",
    "HASH_LEN",
    "SCHEMA_VERSION",
    "Alarm",
    "Evidence",
    "HeaderStore",
    "StoreCorrupt",
    "StoreError",
    "Tip",
]

#: ``PRAGMA application_id``: b"SPVh", so that another SQLite file is never taken for a store.
APPLICATION_ID = 0x53505668
SCHEMA_VERSION = 2
#: block_ids and validator-set hashes are SM3 digests (protocol §1).
HASH_LEN = 32

DEFAULT_WINDOW = 100_000
DEFAULT_CHECKPOINT_EVERY = 1024
#: WAL pages after which SQLite checkpoints into the database (its default, stated here).
WAL_AUTOCHECKPOINT_PAGES = 1000
#: After a checkpoint the WAL file is truncated to this size, so it never stays larger.
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024
#: How long a write waits for another connection's write lock (an operator's CLI, say).
BUSY_TIMEOUT_S = 5.0

_SCHEMA = (
    # The provisioned trust anchor; one row, written once by initialize().
    """CREATE TABLE anchor (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        chain_id TEXT NOT NULL,
        anchor BLOB NOT NULL,
        height INTEGER NOT NULL,
        block_id BLOB NOT NULL
    )""",
    # Full headers of the recent window, one row per appended segment, keyed by the height of
    # its first header (the rowid): the headers' bytes as given, concatenated; the offsets
    # where each starts and the last ends (count + 1 big-endian uint32); the block_ids
    # (count x 32 bytes). One B-tree insert per segment instead of one per header.
    """CREATE TABLE segments (
        first INTEGER PRIMARY KEY,
        count INTEGER NOT NULL CHECK (count >= 1),
        block_ids BLOB NOT NULL,
        offsets BLOB NOT NULL,
        headers BLOB NOT NULL
    )""",
    # block_ids kept forever: the anchor height and every multiple of checkpoint_every.
    """CREATE TABLE checkpoints (
        height INTEGER PRIMARY KEY,
        block_id BLOB NOT NULL
    )""",
    # The tip (its block_id and header too, so that tip() reads no segment) and the lowest
    # height whose full header is held: the window is low_height..tip_height. A segment row is
    # deleted once all its headers are below low_height, so up to one segment's worth of
    # headers below it may still be on disk; they are never returned.
    """CREATE TABLE state (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        tip_height INTEGER NOT NULL,
        low_height INTEGER NOT NULL,
        next_set_hash BLOB NOT NULL,
        tip_block_id BLOB NOT NULL,
        tip_header BLOB NOT NULL
    )""",
    # A rowid table, not WITHOUT ROWID: a set of 256 validators is about 23 KB.
    """CREATE TABLE validator_sets (
        id INTEGER PRIMARY KEY,
        hash BLOB NOT NULL UNIQUE,
        body BLOB NOT NULL
    )""",
    """CREATE TABLE evidence (
        id INTEGER PRIMARY KEY,
        height INTEGER NOT NULL,
        kind TEXT NOT NULL,
        blob BLOB NOT NULL,
        digest BLOB NOT NULL,
        at_ms INTEGER NOT NULL,
        UNIQUE (kind, height, digest)
    )""",
    """CREATE TABLE alarms (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        raised_at_ms INTEGER NOT NULL,
        evidence_id INTEGER REFERENCES evidence (id),
        cleared_at_ms INTEGER,
        cleared_by TEXT,
        CHECK ((cleared_at_ms IS NULL) = (cleared_by IS NULL))
    )""",
)
_TABLES = frozenset({"anchor", "segments", "checkpoints", "state", "validator_sets", "evidence",
                     "alarms"})
#: The tables of schema version 1 (one row per header), which open() migrates.
_TABLES_V1 = frozenset({"anchor", "headers", "checkpoints", "state", "validator_sets",
                        "evidence", "alarms"})


class StoreError(Exception):
    """Misuse of the store, or a database it cannot use. No ``sqlite3`` error escapes raw:
    one is chained as ``__cause__``."""


class StoreCorrupt(StoreError):
    """The file is not a usable header store: not SQLite, another application's database, an
    unknown schema version, a failed integrity check or broken invariants. The caller may
    move it aside and sync again from the anchor."""


@dataclass(frozen=True, slots=True)
class Tip:
    """The last verified header and the hash of the validator set that signs the next one."""

    height: int
    block_id: bytes
    header: bytes
    next_set_hash: bytes


@dataclass(frozen=True, slots=True)
class Evidence:
    id: int
    height: int
    kind: str
    blob: bytes
    at_ms: int


@dataclass(frozen=True, slots=True)
class Alarm:
    """An alarm; active while ``cleared_at_ms`` is None. Cleared alarms stay as history."""

    id: int
    kind: str
    detail: str
    raised_at_ms: int
    evidence_id: int | None
    cleared_at_ms: int | None
    cleared_by: str | None

    @property
    def active(self) -> bool:
        return self.cleared_at_ms is None


_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
#: What reading or writing the file may raise: SQLite's errors, and a TEXT value (a name in
#: the schema, a chain_id, a kind) that a damaged page made invalid UTF-8.
_DB_ERRORS = (sqlite3.Error, UnicodeDecodeError)


def _wrap(e: Exception, message: str) -> StoreError:
    """A StoreError for a database error: StoreCorrupt when SQLite says the file is damaged or
    not a database, or when stored text does not decode."""
    if isinstance(e, UnicodeDecodeError):
        return StoreCorrupt(f"{message}: damaged text ({e})")
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StoreCorrupt(f"{message}: {e}")
    return StoreError(f"{message}: {e}")


def _is_int(x: object) -> bool:
    return type(x) is int  # not bool, not a float


def _check_uint(name: str, x: object) -> int:
    if not _is_int(x) or x < 0:
        raise StoreError(f"{name} must be an int >= 0, got {x!r}")
    return x


def _check_hash(name: str, x: object) -> bytes:
    if not isinstance(x, bytes) or len(x) != HASH_LEN:
        raise StoreError(f"{name} must be {HASH_LEN} bytes, got {type(x).__name__}"
                         f"{f' of {len(x)}' if isinstance(x, bytes) else ''}")
    return x


def _check_blob(name: str, x: object) -> bytes:
    if not isinstance(x, bytes) or not x:
        raise StoreError(f"{name} must be non-empty bytes, got {type(x).__name__}")
    return x


def _check_text(name: str, x: object) -> str:
    if not isinstance(x, str) or not x:
        raise StoreError(f"{name} must be a non-empty str, got {x!r}")
    return x


def _check_sets(validator_sets: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    out = []
    for item in validator_sets:
        if not isinstance(item, tuple) or len(item) != 2:
            raise StoreError(f"a validator set is a (hash, bytes) tuple, got {type(item)}")
        out.append((_check_hash("validator set hash", item[0]),
                    _check_blob("validator set", item[1])))
    return out


class HeaderStore:
    """A header store on one SQLite file. Make one with :meth:`open`; close it (or use it as a
    context manager). Safe to share between threads (one lock serialises the calls); another
    process may open the same file (SQLite's locks serialise the writes)."""

    def __init__(self, db: sqlite3.Connection, path: str, window: int,
                 checkpoint_every: int) -> None:
        self._db: sqlite3.Connection | None = db
        self._lock = threading.Lock()
        self.path = path
        self.window = window
        self.checkpoint_every = checkpoint_every

    # -- opening and closing ---------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, window: int = DEFAULT_WINDOW,
             checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
             integrity_check: bool = True) -> HeaderStore:
        """Create or open the store at ``path``.

        ``window`` and ``checkpoint_every`` are policies for the appends to come, not properties
        of the file: reopening with other values is allowed (a smaller window prunes at the next
        append; a larger one does not bring pruned headers back). ``integrity_check`` runs
        ``PRAGMA quick_check`` (under 0.1 s for a year of chain with the defaults) and the
        store's own invariants; :class:`StoreCorrupt` if either fails.
        """
        if not _is_int(window) or window < 1:
            raise StoreError(f"window must be an int >= 1, got {window!r}")
        if not _is_int(checkpoint_every) or checkpoint_every < 1:
            raise StoreError(f"checkpoint_every must be an int >= 1, got {checkpoint_every!r}")
        path = os.fspath(path)
        try:
            # created here with mode 0600, not from the umask: SQLite gives its -wal and -shm
            # files the database file's mode
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                 check_same_thread=False)
        except (*_DB_ERRORS, OSError) as e:
            raise _wrap(e, f"cannot open {path}") from e
        store = cls(db, path, window, checkpoint_every)
        try:
            store._setup(integrity_check)
        except BaseException:
            db.close()
            raise
        return store

    def _setup(self, integrity_check: bool) -> None:
        db = self._conn()
        try:
            # Any read of a file that is not SQLite fails here ("file is not a database").
            # Another application's file is refused before anything (WAL mode) is changed.
            self._check_ours(db)
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: WAL mode refused (journal_mode={mode})")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        except _DB_ERRORS as e:
            raise _wrap(e, self.path) from e
        with self._write() as db:
            # again under the write lock: another process may have created it meanwhile
            found = self._check_ours(db)
            if found == "new":
                # A new file: the schema, version and id commit together or not at all.
                for stmt in _SCHEMA:
                    db.execute(stmt)
                db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif found == "v1":
                _migrate_v1(db)
        if integrity_check:
            self._check_integrity()

    def _check_ours(self, db: sqlite3.Connection) -> str:
        """StoreCorrupt unless the file is an empty database or a store of this schema version
        or of version 1; "new" when it is empty (to be created), "v1" for a version-1 store (to
        be migrated), else "ok"."""
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
        if app_id == 0 and not names and version == 0:
            return "new"
        if app_id != APPLICATION_ID:
            raise StoreCorrupt(f"{self.path} is another application's database "
                               f"(application_id {app_id:#x}, tables {sorted(names)[:5]})")
        if version == 1 and _TABLES_V1 <= names:
            return "v1"
        if version != SCHEMA_VERSION:
            raise StoreCorrupt(f"{self.path} has schema version {version}, "
                               f"this code reads {SCHEMA_VERSION}")
        if not _TABLES <= names:
            raise StoreCorrupt(f"{self.path} lacks tables {sorted(_TABLES - names)}")
        return "ok"

    def _check_integrity(self) -> None:
        with self._read() as db:
            try:
                rows = db.execute("PRAGMA quick_check(5)").fetchall()
                if rows != [("ok",)]:
                    raise StoreCorrupt(f"{self.path}: integrity check failed: {rows}")
                if db.execute("PRAGMA foreign_key_check").fetchone() is not None:
                    raise StoreCorrupt(f"{self.path}: foreign key check failed")
                self._check_invariants(db)
            except _DB_ERRORS as e:
                raise _wrap(e, self.path) from e

    def _check_invariants(self, db: sqlite3.Connection) -> None:
        """The store's own invariants (types included: the tables are not STRICT, so that
        SQLite older than 3.37 reads them)."""
        anchor = db.execute("SELECT height, block_id, chain_id, anchor FROM anchor").fetchall()
        state = db.execute("SELECT tip_height, low_height, next_set_hash, tip_block_id, "
                           "tip_header FROM state").fetchall()
        segments = db.execute("SELECT first, count, length(block_ids), length(offsets), "
                              "length(headers), typeof(block_ids) || typeof(offsets) || "
                              "typeof(headers) FROM segments ORDER BY first").fetchall()
        if not anchor:
            if state or segments or db.execute("SELECT 1 FROM checkpoints").fetchone():
                raise StoreCorrupt(f"{self.path}: headers without an anchor")
            return
        (a_height, a_id, chain_id, anchor_blob), = anchor
        if len(state) != 1:
            raise StoreCorrupt(f"{self.path}: anchor without a tip")
        (tip, low, next_set, tip_id, tip_header), = state
        if not (_is_int(a_height) and _is_int(tip) and _is_int(low)
                and isinstance(chain_id, str) and isinstance(anchor_blob, bytes)
                and isinstance(a_id, bytes) and len(a_id) == HASH_LEN
                and isinstance(next_set, bytes) and len(next_set) == HASH_LEN
                and isinstance(tip_id, bytes) and len(tip_id) == HASH_LEN
                and isinstance(tip_header, bytes) and tip_header):
            raise StoreCorrupt(f"{self.path}: the anchor or tip row has wrong types")
        # The segments are contiguous, well-formed, end at the tip and hold low..tip.
        expect = None
        for first, count, n_ids, n_offsets, n_headers, types in segments:
            if (types != "blobblobblob" or not _is_int(count) or count < 1
                    or n_ids != HASH_LEN * count or n_offsets != 4 * (count + 1)
                    or n_headers < count or (expect is not None and first != expect)):
                raise StoreCorrupt(f"{self.path}: the segment at {first} is malformed or does "
                                   f"not follow the one before it")
            expect = first + count
        if (not segments or expect != tip + 1 or not segments[0][0] <= low <= tip
                or low < a_height or low >= segments[0][0] + segments[0][1]):
            raise StoreCorrupt(f"{self.path}: the held headers do not run from {low} "
                               f"contiguously to the tip {tip}")
        last = self._segment_rows(db, tip, tip)
        if last != [(tip, tip_id, tip_header)]:
            raise StoreCorrupt(f"{self.path}: the tip row is not the last stored header")
        if db.execute("SELECT block_id FROM checkpoints WHERE height = ?",
                      (a_height,)).fetchone() != (a_id,):
            raise StoreCorrupt(f"{self.path}: the anchor's checkpoint is missing")

    def close(self) -> None:
        """Close the file (idempotent). SQLite checkpoints and removes the WAL on the last
        close."""
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except _DB_ERRORS as e:
                raise _wrap(e, f"closing {self.path}") from e

    def __enter__(self) -> HeaderStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"HeaderStore({self.path!r}, window={self.window}, "
                f"checkpoint_every={self.checkpoint_every}"
                f"{', closed' if self._db is None else ''})")

    # -- transactions ----------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is closed")
        return self._db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed if the body returns, rolled back if it raises.
        sqlite3 errors become StoreError."""
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
            except _DB_ERRORS as e:
                raise _wrap(e, f"{self.path}: cannot begin a write") from e
            try:
                yield db
                db.execute("COMMIT")
            except BaseException as e:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # no transaction left to roll back (COMMIT failed and ended it)
                if isinstance(e, _DB_ERRORS):
                    raise _wrap(e, f"{self.path}: write failed, nothing written") from e
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs (another process may be writing)."""
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN")
                try:
                    yield db
                finally:
                    db.execute("COMMIT")
            except _DB_ERRORS as e:
                raise _wrap(e, f"{self.path}: read failed") from e

    def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple | None:
        with self._lock:
            db = self._conn()
            try:
                return db.execute(sql, args).fetchone()
            except _DB_ERRORS as e:
                raise _wrap(e, f"{self.path}: read failed") from e

    # -- anchor and tip --------------------------------------------------------------------

    def initialize(self, chain_id: str, anchor: bytes, anchor_height: int, anchor_block_id: bytes,
                   anchor_header: bytes, next_set_hash: bytes,
                   validator_sets: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """Store the trust anchor and its verified header as the first tip.

        ``anchor`` is the provisioned anchor as opaque bytes (its CBOR); ``next_set_hash`` the
        anchor header's next_validators_hash; ``validator_sets`` the (hash, set bytes) the
        caller has checked (the anchor's set, the next set). Doing it again with the same
        chain_id, anchor, height and block_id is a no-op (whatever the tip is now); with any
        other, StoreError.
        """
        _check_text("chain_id", chain_id)
        _check_blob("anchor", anchor)
        _check_uint("anchor_height", anchor_height)
        _check_hash("anchor_block_id", anchor_block_id)
        _check_blob("anchor_header", anchor_header)
        _check_hash("next_set_hash", next_set_hash)
        sets = _check_sets(validator_sets)
        with self._write() as db:
            row = db.execute("SELECT chain_id, anchor, height, block_id FROM anchor").fetchone()
            if row is not None:
                if row != (chain_id, anchor, anchor_height, anchor_block_id):
                    raise StoreError(f"already initialized with another anchor "
                                     f"({row[0]!r} at height {row[2]})")
                return
            db.execute("INSERT INTO anchor VALUES (0, ?, ?, ?, ?)",
                       (chain_id, anchor, anchor_height, anchor_block_id))
            db.execute("INSERT INTO segments VALUES (?, 1, ?, ?, ?)",
                       (anchor_height, anchor_block_id, _offsets((anchor_header,)),
                        anchor_header))
            db.execute("INSERT INTO checkpoints VALUES (?, ?)", (anchor_height, anchor_block_id))
            db.execute("INSERT INTO state VALUES (0, ?, ?, ?, ?, ?)",
                       (anchor_height, anchor_height, next_set_hash, anchor_block_id,
                        anchor_header))
            self._put_sets(db, sets)

    @property
    def initialized(self) -> bool:
        return self._one("SELECT 1 FROM anchor") is not None

    def _anchor_row(self) -> tuple:
        row = self._one("SELECT chain_id, anchor, height, block_id FROM anchor")
        if row is None:
            raise StoreError("the store is not initialized")
        return row

    @property
    def chain_id(self) -> str:
        return self._anchor_row()[0]

    @property
    def anchor(self) -> bytes:
        """The provisioned trust anchor, as given to :meth:`initialize`."""
        return self._anchor_row()[1]

    @property
    def anchor_height(self) -> int:
        return self._anchor_row()[2]

    def tip(self) -> Tip:
        row = self._one("SELECT tip_height, tip_block_id, tip_header, next_set_hash "
                        "FROM state")
        if row is None:
            raise StoreError("the store is not initialized")
        return Tip(*row)

    # -- appending -------------------------------------------------------------------------

    def append(self, headers: Sequence[tuple[int, bytes, bytes]], next_set_hash: bytes,
               validator_sets: Iterable[tuple[bytes, bytes]] = ()) -> Tip:
        """Store a verified segment and make its last header the tip, in ONE transaction.

        ``headers``: (height, block_id, header bytes), consecutive, the first at tip + 1.
        ``next_set_hash``: the hash of the set that signs the header after the new tip.
        ``validator_sets``: (hash, set bytes) learnt with this segment (a hash already stored
        must come with the same bytes).

        The same transaction prunes the full headers below ``new tip - window + 1`` (their
        block_ids at checkpoint heights stay). On any error (StoreError) nothing is written.
        Returns the new tip.
        """
        if not isinstance(headers, Sequence) or isinstance(headers, (bytes, str)):
            raise StoreError("headers must be a sequence of (height, block_id, header)")
        if not headers:
            raise StoreError("an empty segment")
        _check_hash("next_set_hash", next_set_hash)
        sets = _check_sets(validator_sets)
        every = self.checkpoint_every
        segment = _segment_of(headers, every)
        if segment is None:  # something is wrong: find it, header by header, and say what
            _check_segment(headers, every)
            # It passed: only bytes subclasses were in the way (allowed, stored as bytes).
            segment = _segment_of([(h, bytes(b), bytes(x)) for h, b, x in headers], every)
            if segment is None:
                raise StoreError("a malformed segment")
        start, checkpoints, ids, blobs = segment
        last_height, last_id, last_header = headers[-1]
        row = (start, len(blobs), b"".join(ids), _offsets(blobs), b"".join(blobs))
        with self._write() as db:
            state = db.execute("SELECT tip_height, low_height FROM state").fetchone()
            if state is None:
                raise StoreError("the store is not initialized")
            if start != state[0] + 1:
                raise StoreError(f"the segment starts at {start}, the tip is {state[0]}")
            low = max(state[1], last_height - self.window + 1)
            db.execute("INSERT INTO segments VALUES (?, ?, ?, ?, ?)", row)
            if checkpoints:
                db.executemany("INSERT INTO checkpoints VALUES (?, ?)", checkpoints)
            db.execute("UPDATE state SET tip_height = ?, low_height = ?, next_set_hash = ?, "
                       "tip_block_id = ?, tip_header = ?",
                       (last_height, low, next_set_hash, last_id, last_header))
            self._put_sets(db, sets)
            # Segments wholly below the window; the one that straddles its start stays.
            db.execute("DELETE FROM segments WHERE first < ? AND first + count <= ?",
                       (low, low))
        return Tip(last_height, last_id, last_header, next_set_hash)

    def _put_sets(self, db: sqlite3.Connection, sets: list[tuple[bytes, bytes]]) -> None:
        for set_hash, body in sets:
            row = db.execute("SELECT body FROM validator_sets WHERE hash = ?",
                             (set_hash,)).fetchone()
            if row is None:
                db.execute("INSERT INTO validator_sets (hash, body) VALUES (?, ?)",
                           (set_hash, body))
            elif row[0] != body:
                raise StoreError(f"validator set {set_hash.hex()} already stored with "
                                 f"other bytes")

    def add_validator_sets(self, validator_sets: Iterable[tuple[bytes, bytes]]) -> None:
        """Store sets learnt outside a segment (e.g. the next set fetched after a set change)."""
        sets = _check_sets(validator_sets)
        with self._write() as db:
            self._put_sets(db, sets)

    # -- reading ---------------------------------------------------------------------------

    def header(self, height: int) -> bytes | None:
        """The full header at ``height`` if it is held (inside the window), else None."""
        if not _is_int(height):
            return None
        with self._read() as db:
            rows = self._segment_rows(db, height, height)
        return rows[0][2] if rows else None

    def block_id(self, height: int) -> bytes | None:
        """The block_id at ``height`` if known: inside the window, or a checkpoint (a multiple
        of checkpoint_every, or the anchor height). Else None."""
        if not _is_int(height):
            return None
        with self._read() as db:
            row = db.execute("SELECT block_id FROM checkpoints WHERE height = ?",
                             (height,)).fetchone()
            if row is None:
                rows = self._segment_rows(db, height, height)
                row = (rows[0][1],) if rows else None
        return None if row is None else row[0]

    def headers(self, start: int, stop: int) -> list[tuple[int, bytes, bytes]]:
        """The held (height, block_id, header) with start <= height < stop, in order."""
        if not (_is_int(start) and _is_int(stop)):
            raise StoreError(f"start and stop must be ints, got {start!r}, {stop!r}")
        with self._read() as db:
            return self._segment_rows(db, start, stop - 1)

    def _segment_rows(self, db: sqlite3.Connection, start: int,
                      stop: int) -> list[tuple[int, bytes, bytes]]:
        """(height, block_id, header) of the held headers with start <= height <= stop."""
        state = db.execute("SELECT low_height, tip_height FROM state").fetchone()
        if state is None:
            return []
        start, stop = max(start, state[0]), min(stop, state[1])
        if start > stop:
            return []
        out: list[tuple[int, bytes, bytes]] = []
        for first, count, ids, offsets, blob in db.execute(
                "SELECT first, count, block_ids, offsets, headers FROM segments "
                "WHERE first >= (SELECT max(first) FROM segments WHERE first <= ?) "
                "AND first <= ? ORDER BY first", (start, stop)):
            ends = _unpack_offsets(offsets, count, blob)
            if ends is None or type(ids) is not bytes or len(ids) != HASH_LEN * count:
                raise StoreCorrupt(f"{self.path}: the segment at {first} is malformed")
            for k in range(max(start - first, 0), min(stop - first + 1, count)):
                out.append((first + k, ids[HASH_LEN * k : HASH_LEN * (k + 1)],
                            blob[ends[k] : ends[k + 1]]))
        if len(out) != stop - start + 1 or out[0][0] != start:
            raise StoreCorrupt(f"{self.path}: headers {start}..{stop} are not all stored")
        return out

    def window_start(self) -> int:
        """The lowest height whose full header is held."""
        row = self._one("SELECT low_height FROM state")
        if row is None:
            raise StoreError("the store is not initialized")
        return row[0]

    def checkpoints_around(self, height: int) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        """The known block_ids that bracket ``height``, for verifying an old header on demand.

        Returns ``((lo, id_lo), (hi, id_hi))`` with lo <= height <= hi: lo the highest height
        <= ``height`` and hi the lowest height >= ``height`` whose block_id is known (a
        checkpoint, the anchor, or a header in the window); both are ``height`` itself when its
        block_id is known. To verify, fetch headers lo+1 .. hi from a peer and check that each
        one's prev_hash is the block_id of the one before (starting from id_lo) and that the
        block_id of header hi is id_hi. hi - lo <= checkpoint_every (when the policy has not
        changed). StoreError if ``height`` is below the anchor or above the tip.
        """
        _check_uint("height", height)
        with self._read() as db:
            row = db.execute("SELECT a.height, s.tip_height, s.low_height "
                             "FROM anchor a, state s").fetchone()
            if row is None:
                raise StoreError("the store is not initialized")
            if not row[0] <= height <= row[1]:
                raise StoreError(f"height {height} is outside the verified range "
                                 f"{row[0]}..{row[1]}")
            low = row[2]
            below = [db.execute("SELECT height, block_id FROM checkpoints WHERE height <= ? "
                                "ORDER BY height DESC LIMIT 1", (height,)).fetchone()]
            above = [db.execute("SELECT height, block_id FROM checkpoints WHERE height >= ? "
                                "ORDER BY height LIMIT 1", (height,)).fetchone()]
            # In the window: the height itself; below it: the window's first header.
            if height >= low:
                below.append(self._segment_rows(db, height, height)[0][:2])
            above.append(self._segment_rows(db, max(height, low), max(height, low))[0][:2])
        below = [r for r in below if r is not None]
        above = [r for r in above if r is not None]
        if not below:  # the anchor's checkpoint is always there
            raise StoreCorrupt(f"{self.path}: no known block_id around {height}")
        lower = max(below, key=lambda r: r[0])
        upper = min(above, key=lambda r: r[0])
        return (lower[0], lower[1]), (upper[0], upper[1])

    def validator_set(self, set_hash: bytes) -> bytes | None:
        row = self._one("SELECT body FROM validator_sets WHERE hash = ?", (set_hash,))
        return None if row is None else row[0]

    # -- evidence and alarms ---------------------------------------------------------------

    def add_evidence(self, height: int, kind: str, blob: bytes, *, at_ms: int,
                     alarm: str | None = None) -> int:
        """Keep a piece of evidence (e.g. kind "equivocation": the two conflicting commits,
        encoded by the caller) and return its id. The same (kind, height, blob) is kept once:
        its existing id is returned. With ``alarm`` (a detail text), an alarm of the same kind
        that refers to the evidence is raised in the same transaction (see
        :meth:`raise_alarm`), so evidence and alarm are on disk together or not at all."""
        _check_uint("height", height)
        _check_text("kind", kind)
        _check_blob("blob", blob)
        _check_uint("at_ms", at_ms)
        if alarm is not None:
            _check_text("alarm", alarm)
        digest = hashlib.sha256(blob).digest()
        with self._write() as db:
            row = db.execute("SELECT id FROM evidence WHERE kind = ? AND height = ? "
                             "AND digest = ?", (kind, height, digest)).fetchone()
            if row is None:
                evidence_id = db.execute(
                    "INSERT INTO evidence (height, kind, blob, digest, at_ms) "
                    "VALUES (?, ?, ?, ?, ?)", (height, kind, blob, digest, at_ms)).lastrowid
            else:
                evidence_id = row[0]
            if alarm is not None:
                self._raise(db, kind, alarm, at_ms, evidence_id)
        return evidence_id

    def evidence(self, kind: str | None = None) -> list[Evidence]:
        """All evidence kept (of one kind if given), oldest first."""
        sql = "SELECT id, height, kind, blob, at_ms FROM evidence"
        with self._read() as db:
            rows = (db.execute(sql + " ORDER BY id") if kind is None
                    else db.execute(sql + " WHERE kind = ? ORDER BY id", (kind,))).fetchall()
        return [Evidence(*r) for r in rows]

    def raise_alarm(self, kind: str, detail: str, *, at_ms: int,
                    evidence_id: int | None = None) -> int:
        """Raise an alarm; it stays active (and new authorizations stay blocked, by the
        caller's policy) until :meth:`clear_alarm`. An identical active alarm (same kind,
        detail and evidence) is not duplicated: its id is returned."""
        _check_text("kind", kind)
        _check_text("detail", detail)
        _check_uint("at_ms", at_ms)
        if evidence_id is not None:
            _check_uint("evidence_id", evidence_id)
        with self._write() as db:
            return self._raise(db, kind, detail, at_ms, evidence_id)

    def _raise(self, db: sqlite3.Connection, kind: str, detail: str, at_ms: int,
               evidence_id: int | None) -> int:
        row = db.execute("SELECT id FROM alarms WHERE cleared_at_ms IS NULL AND kind = ? "
                         "AND detail = ? AND evidence_id IS ?",
                         (kind, detail, evidence_id)).fetchone()
        if row is not None:
            return row[0]
        if evidence_id is not None and db.execute(
                "SELECT 1 FROM evidence WHERE id = ?", (evidence_id,)).fetchone() is None:
            raise StoreError(f"no evidence with id {evidence_id}")
        return db.execute("INSERT INTO alarms (kind, detail, raised_at_ms, evidence_id) "
                          "VALUES (?, ?, ?, ?)", (kind, detail, at_ms, evidence_id)).lastrowid

    def alarms(self) -> list[Alarm]:
        """The active alarms, oldest first. Non-empty means: refuse new authorizations."""
        return self._alarms("WHERE cleared_at_ms IS NULL")

    def alarm_history(self) -> list[Alarm]:
        """Every alarm ever raised, active or cleared, oldest first."""
        return self._alarms("")

    def _alarms(self, where: str) -> list[Alarm]:
        with self._read() as db:
            rows = db.execute("SELECT id, kind, detail, raised_at_ms, evidence_id, "
                              f"cleared_at_ms, cleared_by FROM alarms {where} "
                              "ORDER BY id").fetchall()
        return [Alarm(*r) for r in rows]

    def clear_alarm(self, kind: str, operator: str, *, at_ms: int) -> int:
        """Clear every active alarm of ``kind``, recording who and when (the rows stay, see
        :meth:`alarm_history`). Returns how many were cleared (0 if none was active)."""
        _check_text("kind", kind)
        _check_text("operator", operator)
        _check_uint("at_ms", at_ms)
        with self._write() as db:
            return db.execute("UPDATE alarms SET cleared_at_ms = ?, cleared_by = ? "
                              "WHERE cleared_at_ms IS NULL AND kind = ?",
                              (at_ms, operator, kind)).rowcount

    # -- size ------------------------------------------------------------------------------

    def stats(self) -> dict[str, int | float]:
        """Row counts and sizes: ``headers`` (full headers held), ``checkpoints``,
        ``validator_sets``, ``evidence``, ``alarms``; ``page_size``, ``pages``, ``free_pages``;
        ``db_bytes``, ``wal_bytes`` and ``file_bytes`` (their sum) on disk;
        ``bytes_per_header`` = file_bytes / headers (0.0 when empty)."""
        with self._read() as db:
            row = db.execute("SELECT low_height, tip_height FROM state").fetchone()
            counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                      for t in ("checkpoints", "validator_sets", "evidence", "alarms")}
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            free = db.execute("PRAGMA freelist_count").fetchone()[0]
        n = 0 if row is None else row[1] - row[0] + 1  # the window low..tip, all held
        db_bytes = _size(self.path)
        wal_bytes = _size(self.path + "-wal")
        return {"headers": n, **counts, "page_size": page_size, "pages": pages,
                "free_pages": free, "db_bytes": db_bytes, "wal_bytes": wal_bytes,
                "file_bytes": db_bytes + wal_bytes,
                "bytes_per_header": (db_bytes + wal_bytes) / n if n else 0.0}

    def checkpoint_wal(self) -> None:
        """Copy the WAL into the database and truncate it to zero bytes (``PRAGMA
        wal_checkpoint(TRUNCATE)``). Not needed for safety or boundedness (automatic
        checkpoints and ``journal_size_limit`` see to that); useful before measuring."""
        with self._lock:
            db = self._conn()
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except _DB_ERRORS as e:
                raise _wrap(e, f"{self.path}: checkpoint failed") from e


def _offsets(blobs: Sequence[bytes]) -> bytes:
    """Where each of ``blobs`` starts in their concatenation, and where the last ends."""
    return struct.pack(f">{len(blobs) + 1}I", *accumulate(map(len, blobs), initial=0))


def _unpack_offsets(offsets: object, count: int, blob: object) -> tuple[int, ...] | None:
    """The count + 1 offsets of a segment row, or None unless they are well-formed: strictly
    increasing from 0 (no empty header) to the length of the headers blob."""
    if (type(offsets) is not bytes or type(blob) is not bytes or not _is_int(count)
            or count < 1 or len(offsets) != 4 * (count + 1)):
        return None
    ends = struct.unpack(f">{count + 1}I", offsets)
    if ends[0] != 0 or ends[-1] != len(blob):
        return None
    if any(a >= b for a, b in zip(ends, ends[1:], strict=False)):
        return None
    return ends


def _migrate_v1(db: sqlite3.Connection) -> None:
    """Rewrite a schema-1 store (one row per header) as schema 2, in the caller's write
    transaction: the held headers become segments of up to 1000, the tip row gains the window
    start and the tip header. StoreCorrupt if the old rows are not what version 1 wrote."""
    for stmt in _SCHEMA:
        if "TABLE segments" in stmt:
            db.execute(stmt)
        elif "TABLE state" in stmt:
            db.execute(stmt.replace("TABLE state", "TABLE state_v2"))
    cursor = db.execute("SELECT height, block_id, header FROM headers ORDER BY height")
    first = expect = None
    last = None
    while rows := cursor.fetchmany(1000):
        start = rows[0][0]
        if first is None:
            first = expect = start
        segment = _segment_of(rows, 2**62) if start == expect else None
        if segment is None:
            raise StoreCorrupt("a version-1 store whose headers are not contiguous rows")
        _, _, ids, blobs = segment
        db.execute("INSERT INTO segments VALUES (?, ?, ?, ?, ?)",
                   (start, len(rows), b"".join(ids), _offsets(blobs), b"".join(blobs)))
        expect = start + len(rows)
        last = rows[-1]
    state = db.execute("SELECT tip_height, next_set_hash FROM state").fetchone()
    if state is not None:
        if last is None or last[0] != state[0]:
            raise StoreCorrupt("a version-1 store whose tip is not its last header")
        db.execute("INSERT INTO state_v2 VALUES (0, ?, ?, ?, ?, ?)",
                   (state[0], first, state[1], last[1], last[2]))
    db.execute("DROP TABLE state")
    db.execute("DROP TABLE headers")
    db.execute("ALTER TABLE state_v2 RENAME TO state")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


_Segment = tuple[int, list[tuple[int, bytes]], tuple[bytes, ...], tuple[bytes, ...]]


def _segment_of(headers: Sequence[Any], every: int) -> _Segment | None:
    """(first height, checkpoint rows, block_ids, header bytes) of a well-formed segment, or
    None if anything in it is not as :meth:`HeaderStore.append` requires. The checks of
    :func:`_check_segment`, run as C-level passes over the whole segment (no Python code per
    header)."""
    if set(map(type, headers)) != {tuple} or set(map(len, headers)) != {3}:
        return None
    heights, ids, blobs = zip(*headers, strict=True)
    start = heights[0]
    if (set(map(type, heights)) != {int} or set(map(type, ids)) != {bytes}
            or set(map(type, blobs)) != {bytes} or set(map(len, ids)) != {HASH_LEN}
            or not all(blobs) or heights != tuple(range(start, start + len(heights)))):
        return None
    first = -(-start // every) * every  # the first multiple of every >= start
    checkpoints = [(h, ids[h - start]) for h in range(first, start + len(heights), every)]
    return start, checkpoints, ids, blobs


def _check_segment(headers: Sequence[Any], every: int) -> tuple[int, list[tuple[int, bytes]]]:
    """(first height, checkpoint rows) of a segment, or StoreError saying what is wrong."""
    checkpoints = []
    start = expect = None
    for item in headers:
        if type(item) is not tuple or len(item) != 3:
            raise StoreError(f"a header is a (height, block_id, header) tuple: {item!r:.80}")
        height, block_id, header = item
        if expect is None and _is_int(height):
            start = expect = height
        if not _is_int(height):
            raise StoreError(f"a height must be an int, got {height!r}")
        if height != expect:
            raise StoreError(f"heights not consecutive: {height} where {expect} was due")
        if type(block_id) is not bytes or len(block_id) != HASH_LEN:
            _check_hash(f"block_id at {height}", block_id)
        if type(header) is not bytes or not header:
            _check_blob(f"header at {height}", header)
        if height % every == 0:
            checkpoints.append((height, block_id))
        expect += 1
    return start, checkpoints


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0
