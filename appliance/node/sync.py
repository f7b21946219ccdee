"""The sync engine's state machine (protocol §5, §7, §8), sans-I/O.

:class:`SyncMachine` decides which HTTP requests to send to which district node, takes the
answers in (status, body bytes, the time) and says what happened as events. It has no sockets,
no clock, no threads and no store: the adapter (:mod:`appliance.node.client`) sends the
requests, reads bodies within the limits each :class:`Request` states, writes the segments the
machine hands it to the header store and keeps the evidence it reports. The model is h11.

The loop an adapter runs::

    machine = SyncMachine(anchor, config, tip=..., next_set=..., lookup_header=..., ...)
    machine.add_peer(url)
    while True:
        for request in machine.requests(now_ms):       # send these
            ...
        # when one completes:  events = machine.receive(request.id, status, body, now_ms)
        # when one fails:      events = machine.fail(request.id, reason, now_ms)
        # sleep at most until machine.next_wakeup(now_ms)
        for event in events: apply it (AppendSegment -> store.append, ...)

What it does:

- **Peers** (:class:`~appliance.node.peers.PeerTable`): ``GET /v1/info`` of every new peer and
  again every ``info_interval_ms``; a peer of another chain or protocol is banned. Any peer that
  serves anything invalid (not canonical, oversize, a bad link, a bad commit, a set change its
  old set did not sign, a header past the clock, a withheld range it claims to have, a bad
  proof, an HTTP error) or that the adapter reports as failed (timeout, slow trickle, oversize,
  unreachable) is banned with exponential backoff and retried when the ban runs out.
- **Batches**: ``GET /v1/headers?from=H&count=N``, N up to ``batch`` (1000), several in flight
  per peer and spread over all usable peers (consecutive batches go to different peers when
  there are several), at most ``lookahead`` batches past the stored tip. Answers may come in any
  order; each is verified as a whole segment (verify.verify_segment) on top of the verified
  chain as soon as the batch before it is verified. The first batch starts at the anchor's
  height: its first header is checked against the trust anchor (verify.check_anchor).
- **Cross-check before storing**: a verified segment is not stored until a second peer vouches
  for its last header, when a second peer that claims that height exists: either a segment
  from another peer verifies on top of it (the hash links make that peer's chain contain ours),
  or ``GET /v1/headers?from=b&count=1`` from another peer returns the same block_id at b. Only
  confirmed segments are emitted as :class:`AppendSegment`. A peer's ``/v1/info`` tip at or
  below our tip is compared with our block_id at that height too.
- **Equivocation** (§5): when another peer's header at a height where we hold a verified header
  differs from ours (its batch does not link to our tip, its info tip or its answer to a check
  differs), the machine asks it for that header with its commit. If that commit is valid under
  the set we trust for the height, and we hold (or can fetch, ``GET /v1/commits/{h}``) a valid
  commit of our own header, that is equivocation: :class:`EquivocationFound` carries the
  evidence (both headers and commits, the double signers), the adapter stores it and raises the
  alarm. We keep our verified chain (nothing tells which branch is real: that is the operator's
  call, see docs/light-node.md) and the peer goes to state ``conflict``: never asked for headers
  again. A conflicting header *without* a valid commit is just bad data: the peer is banned.
- **Done**: :class:`TipReached` when the stored tip reaches ``until_height``, or (without it)
  the best height claimed by the usable peers once every known peer has answered /v1/info.
- **Transactions**: :meth:`SyncMachine.fetch_tx` asks for ``GET /v1/tx/{id}`` and checks the
  signed_tx and its proof against a verified, stored header (verify.verify_proof); a bad proof
  bans the peer and another one is asked. A transaction above the stored tip waits until the
  sync has stored its header (the peer that served it is asked for ``/v1/info`` again at once,
  since it evidently has a higher tip). A transaction below the store's window (its header
  pruned) is checked through checkpoints: the headers between the two known block_ids that
  bracket its height (``lookup_checkpoints``, i.e. ``HeaderStore.checkpoints_around``) are asked
  from one peer (``GET /v1/headers``, continued while the node returns fewer than asked) and
  accepted only if they hash-link from one to the other (tx.verify_link_range); a range that does
  not link bans its server and another peer is asked.

The adapter handles transaction submission, ``/v1/wait`` and ``/v1/lookup`` itself with the pure
helpers here (:func:`judge_submit`, :func:`decode_wait_response`, :func:`decode_lookup_response`,
:func:`check_lookup_hit`) and reports a peer whose answer was wrong with
:meth:`SyncMachine.ban_peer`.

**Strict mode** (a commit on every header) asks for one header per request: every answer then
carries the commit of its (last) header, and the requests are pipelined deeper. A node that
keeps sparse commits cannot serve an audit: it is banned (``strict_no_commit``).

The response decoders (:func:`decode_info`, :func:`decode_headers`, :func:`decode_validators`,
:func:`decode_tx_response`, :func:`decode_error`, :func:`decode_submit_response`,
:func:`decode_wait_response`, :func:`decode_lookup_response` and
:func:`appliance.node.model.decode_commit`) raise :class:`~appliance.node.errors.MalformedError`
only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from appliance import wire

from . import verify
from .errors import LedgerError, MalformedError, VerificationError
from .model import (
    MAX_COMMIT_BYTES,
    MAX_HEADERS_PER_RESPONSE,
    MAX_PROOF_BYTES,
    MAX_RESPONSE_BYTES,
    MAX_SIGNED_TX_BYTES,
    MAX_TEXT,
    MAX_VALIDATOR_SET_BYTES,
    Commit,
    Header,
    Proof,
    SignedTx,
    TrustAnchor,
    ValidatorSet,
    decode_commit,
    decode_limited,
    parse_headers_at,
)
from .peers import BANNED, CONFLICT, NEW, OK, PeerTable
from .tx import verify_link_range

__all__ = [
    "AppendSegment", "BanPeer", "EquivocationFound", "Event", "HeadersResponse", "Info",
    "Initialize", "PeerInfo", "Request", "SubmitVerdict", "SyncConfig", "SyncMachine",
    "TipReached", "TxNotFound", "TxVerified", "VerifiedInclusion", "check_lookup_hit",
    "check_old_header", "decode_error", "decode_headers", "decode_info",
    "decode_lookup_response", "decode_submit_response", "decode_tx_response",
    "decode_validators", "decode_wait_response", "judge_submit",
]

log = logging.getLogger(__name__)

PROTOCOL = 1
# Per-request body limits: the §8 maximum for header batches, the largest well-formed answer
# for the others (so a node cannot make us read 8 MiB for a commit).
MAX_INFO_BYTES = 16 * 1024  # 3 texts of <= 1 KiB, 3 hashes, 2 uints
MAX_VALIDATORS_BYTES = MAX_VALIDATOR_SET_BYTES + 16
MAX_TX_BYTES = MAX_SIGNED_TX_BYTES + MAX_PROOF_BYTES + 64
MAX_ERROR_BYTES = 4 * MAX_TEXT
#: Answers to POST /v1/tx ({tx_id} or an error) and to /v1/wait ({height} or an error).
MAX_SUBMIT_BYTES = MAX_ERROR_BYTES
MAX_WAIT_BYTES = MAX_ERROR_BYTES
#: The protocol does not bound a lookup answer (only the 8 MiB of any body). Every hit costs a
#: GET /v1/tx and a proof check, so an answer with more ids than this is refused as malformed.
MAX_LOOKUP_IDS = 10_000
MAX_LOOKUP_BYTES = len(wire.encode({"tx_ids": [bytes(32)] * MAX_LOOKUP_IDS}))
#: The codes of a 400 to POST /v1/tx that mean "this transaction is refused" (§7); the fourth,
#: ``duplicate``, means it is already there.
SUBMIT_REJECTIONS = frozenset({"bad_tx", "bad_signature", "unknown_sender", "bad_reference",
                               "duplicate_matter"})
#: A commitless range is joined with the next ones from the same node up to this many headers.
MAX_JOINED_HEADERS = 10 * MAX_HEADERS_PER_RESPONSE

# Request kinds.
INFO, HEADERS, CHECK, COMMIT, TX = "info", "headers", "check", "commit", "tx"
RANGE = "range"  # headers between two checkpoints, for an old transaction


# --- configuration, requests, events -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """What the machine is asked to do; every field has the production default."""

    batch: int = MAX_HEADERS_PER_RESPONSE  # headers per request (§8: at most 1000)
    per_peer: int = 2  # header requests in flight per peer
    lookahead: int = 8  # batches requested past the stored tip
    info_interval_ms: int = 10_000  # re-ask /v1/info this often
    cross_check: bool = True  # have a second peer vouch for a segment before storing it
    strict: bool = False  # a valid commit on every header (audit mode)
    max_skew_ms: int = verify.DEFAULT_MAX_SKEW_MS
    until_height: int | None = None  # stop here (None: the peers' best tip)
    ban_base_ms: int = 2_000
    ban_factor: int = 2
    ban_max_ms: int = 300_000

    def __post_init__(self) -> None:
        if not 1 <= self.batch <= MAX_HEADERS_PER_RESPONSE:
            raise ValueError(f"batch must be 1..{MAX_HEADERS_PER_RESPONSE}")
        if self.per_peer < 1 or self.lookahead < 1 or self.info_interval_ms < 1:
            raise ValueError("per_peer, lookahead and info_interval_ms must be >= 1")
        if self.until_height is not None and self.until_height < 0:
            raise ValueError("until_height must be >= 0")


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP GET to send: ``peer + path``. Read at most ``max_bytes`` of body."""

    id: int
    peer: str
    kind: str
    path: str
    max_bytes: int
    height: int = 0  # headers: the first height; check/commit/validators: the height
    count: int = 0  # headers: how many asked
    purpose: str = ""  # check: confirm | link | cross; commit: ours | theirs
    join: int | None = None  # headers: continues the commitless buffered batch starting here
    tx_id: bytes = b""

    @property
    def url(self) -> str:
        return self.peer + self.path


class Event:
    """Base of what :class:`SyncMachine` reports."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Initialize(Event):
    """Store the trust anchor's header as the first tip (HeaderStore.initialize)."""

    anchor: TrustAnchor
    header: Header
    next_set: ValidatorSet
    sets: tuple[ValidatorSet, ...]


@dataclass(frozen=True, slots=True)
class AppendSegment(Event):
    """A verified, cross-checked segment: store it in one transaction (HeaderStore.append)."""

    headers: tuple[Header, ...]
    next_set_hash: bytes
    sets: tuple[ValidatorSet, ...]  # sets learnt with it (the new sets of its set changes)
    peer: str  # who served it
    confirmed_by: str | None  # who vouched for it (None: no second peer claimed that height)


@dataclass(frozen=True, slots=True)
class BanPeer(Event):
    peer: str
    reason: str
    until_ms: int
    strikes: int
    detail: str = ""  # for people: what exactly was wrong


@dataclass(frozen=True, slots=True)
class PeerInfo(Event):
    """A peer answered /v1/info for our chain (its claims are untrusted); at every poll."""

    peer: str
    height: int
    tip_id: bytes


@dataclass(frozen=True, slots=True)
class EquivocationFound(Event):
    """Two valid commits for different blocks at one height (§5): keep, alarm, stop authorizing.

    ``evidence.header_a``/``commit_a`` are ours (the verified chain), ``_b`` the other peer's.
    """

    evidence: verify.Equivocation
    ours_from: str | None
    theirs_from: str


@dataclass(frozen=True, slots=True)
class TipReached(Event):
    height: int
    block_id: bytes
    target: int


@dataclass(frozen=True, slots=True)
class VerifiedInclusion:
    """A transaction proven (§4, §5) to be in block ``height`` of the verified chain:
    ``block_id`` is that header's, verified (in the store, or linked to a stored checkpoint), and
    the proof of leaf ``leaf_index`` leads to its tx_root. ``time_ms`` is that header's
    timestamp (§6 judges what the transaction refers to at that time).

    The proof establishes membership only: ``leaf_index`` is not bound by the header (no
    transaction count is hashed), so nothing may depend on it but display."""

    tx: SignedTx
    tx_id: bytes
    height: int
    block_id: bytes
    leaf_index: int
    time_ms: int

    def to_json(self) -> dict[str, Any]:
        """JSON-able: bytes as hex, ``data`` converted recursively."""
        body = self.tx.body
        doc: dict[str, Any] = {
            "tx_id": self.tx_id.hex(), "height": self.height, "block_id": self.block_id.hex(),
            "leaf_index": self.leaf_index, "time_ms": self.time_ms, "chain_id": body.chain_id,
            "type": body.type,
            "timestamp": body.timestamp, "sender": body.sender.hex(), "data": _json(body.data),
            "nonce": body.nonce.hex(), "alg": self.tx.alg, "public_key": self.tx.public_key.hex(),
        }
        if body.recipient is not None:
            doc["recipient"] = body.recipient
        if body.memo is not None:
            doc["memo"] = body.memo
        return doc


def _json(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class TxVerified(Event):
    """The transaction and its proof verified against the header at ``height``."""

    tx_id: bytes
    tx: SignedTx
    height: int
    peer: str
    block_id: bytes
    leaf_index: int
    time_ms: int

    @property
    def inclusion(self) -> VerifiedInclusion:
        return VerifiedInclusion(self.tx, self.tx_id, self.height, self.block_id, self.leaf_index,
                                 self.time_ms)


@dataclass(frozen=True, slots=True)
class TxNotFound(Event):
    """No usable peer served the transaction with a proof that verified.

    ``absent``: peers that answered 404 (they do not have it in a block). ``served_by``: peers
    that served it but whose answer could not be verified (a bad proof, a header that could not
    be had). Both empty: no peer gave an answer (none usable, or each failed).
    """

    tx_id: bytes
    reason: str
    absent: tuple[str, ...] = ()
    served_by: tuple[str, ...] = ()


# --- response decoders -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Info:
    """``GET /v1/info`` (§7). Claims of the peer: untrusted."""

    chain_id: str
    protocol: int
    height: int
    tip_id: bytes
    genesis_id: bytes
    peer_id: bytes
    district: str
    software: str


@dataclass(frozen=True, slots=True)
class HeadersResponse:
    """``GET /v1/headers``: headers in order, commits by height, sets by hash."""

    headers: tuple[Header, ...]
    commits: dict[int, Commit]
    sets: dict[bytes, ValidatorSet]


_INFO_KEYS = frozenset({"chain_id", "protocol", "height", "tip_id", "genesis_id", "peer_id",
                        "district", "software"})
_HEADERS_KEYS = frozenset({"headers", "commits", "validator_sets"})
_SET_ENTRY_KEYS = frozenset({"height", "validators"})
_TX_KEYS = frozenset({"tx", "height", "proof"})
_ERROR_KEYS = frozenset({"error", "message"})
_SUBMIT_KEYS = frozenset({"tx_id"})
_WAIT_KEYS = frozenset({"height"})
_LOOKUP_KEYS = frozenset({"tx_ids"})
_MAX_UINT = 2**64 - 1


def _exact(obj: object, keys: frozenset[str], what: str) -> dict:
    if type(obj) is not dict:
        raise MalformedError("type", f"{what}: expected a map")
    if obj.keys() != keys:
        missing = sorted(keys - obj.keys())
        extra = sorted(repr(k)[:30] for k in obj.keys() - keys)[:4]
        raise MalformedError("keys", f"{what}: missing {missing}, unknown {extra}")
    return obj


def _uint(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_UINT:
        raise MalformedError("type", f"{what}: expected an unsigned integer")
    return value


def _hash(value: object, what: str) -> bytes:
    if type(value) is not bytes or len(value) != 32:
        raise MalformedError("type", f"{what}: expected 32 bytes")
    return value


def _text(value: object, what: str, low: int = 0, high: int = MAX_TEXT) -> str:
    if type(value) is not str:
        raise MalformedError("type", f"{what}: expected text")
    if not low <= len(value.encode("utf-8", "surrogatepass")) <= high:
        raise MalformedError("text", f"{what}: length outside {low}..{high} bytes")
    return value


def decode_info(data: bytes) -> Info:
    """``{chain_id, protocol, height, tip_id, genesis_id, peer_id, district, software}``."""
    m = _exact(decode_limited(data, MAX_INFO_BYTES, "info"), _INFO_KEYS, "info")
    return Info(
        chain_id=_text(m["chain_id"], "info.chain_id", 1, 64),
        protocol=_uint(m["protocol"], "info.protocol"),
        height=_uint(m["height"], "info.height"),
        tip_id=_hash(m["tip_id"], "info.tip_id"),
        genesis_id=_hash(m["genesis_id"], "info.genesis_id"),
        peer_id=_hash(m["peer_id"], "info.peer_id"),
        district=_text(m["district"], "info.district"),
        software=_text(m["software"], "info.software"),
    )


_HR_START = b"\xa3\x67commits"  # {commits, headers, validator_sets}: canonical key order
_HR_HEADERS = b"\x67headers"
_HR_SETS = b"\x6evalidator_sets"


def _fast_headers(data: object, limit: int) -> tuple[tuple[Header, ...], list, list] | None:
    """The headers, commits and validator sets of a well-formed headers response, or None.

    The fast path of :func:`decode_headers`: the header array is read straight from the bytes
    (:func:`~appliance.node.model.parse_headers_at`, which accepts only canonical spans),
    the rest of the body, with an empty header array in its place, goes through the generic
    canonical decoder. It returns only what the generic path would return for the same bytes
    (canonical encoding is compositional and unique); anything unusual, invalid or not
    canonical gives None, and the caller takes the generic path, which gives the typed error.
    """
    if type(data) is not bytes or len(data) > limit or not data.startswith(_HR_START):
        return None
    p = data.find(_HR_HEADERS, 9)  # the first candidate; checked below to be the real key
    if p < 0:
        return None
    i = p + 8
    if i >= len(data):
        return None
    b = data[i]
    if 0x80 <= b <= 0x97:
        n, i = b - 0x80, i + 1
    elif b == 0x98 and i + 1 < len(data) and data[i + 1] >= 24:
        n, i = data[i + 1], i + 2
    elif b == 0x99 and i + 2 < len(data) and data[i + 1] != 0:
        n, i = int.from_bytes(data[i + 1 : i + 3], "big"), i + 3
    else:
        return None
    if n > MAX_HEADERS_PER_RESPONSE:
        return None
    parsed = parse_headers_at(data, i, n)
    if parsed is None:
        return None
    headers, i = parsed
    if not data.startswith(_HR_SETS, i):
        return None
    rest = data[:p] + b"\x67headers\x80" + data[i:]
    try:
        m = wire.decode(rest, limit)
        if type(m) is not dict or m.keys() != _HEADERS_KEYS or m["headers"] != []:
            return None
        raw_commits, raw_sets = m["commits"], m["validator_sets"]
        if type(raw_commits) is not list or type(raw_sets) is not list:
            return None
        # rest is canonical, so this holds iff the commits array ends exactly at p, i.e. the
        # key found above is the map's "headers" key and not bytes inside a commit.
        if len(wire.encode(raw_commits)) != p - 9:
            return None
    except wire.WireError:
        return None
    return tuple(headers), raw_commits, raw_sets


def decode_headers(data: bytes, limit: int = MAX_RESPONSE_BYTES) -> HeadersResponse:
    """``{headers: [header], commits: [commit], validator_sets: [{height, validators}]}``.

    At most 1000 headers; at most one commit per height, each between the first and the last
    header's height (that the heights are consecutive is rule 2, checked by the machine); sets
    keyed by their hash (what a node says about their heights is not used: each set is checked
    against the hash a header names when it is used).
    """
    fast = _fast_headers(data, limit)
    if fast is not None:
        headers, raw_commits, raw_sets = fast
    else:
        m = _exact(decode_limited(data, limit, "headers response"), _HEADERS_KEYS,
                   "headers response")
        raw_headers, raw_commits, raw_sets = m["headers"], m["commits"], m["validator_sets"]
        for value, name in ((raw_headers, "headers"), (raw_commits, "commits"),
                            (raw_sets, "validator_sets")):
            if type(value) is not list:
                raise MalformedError("type", f"headers response.{name}: expected an array")
        if len(raw_headers) > MAX_HEADERS_PER_RESPONSE:
            raise MalformedError("count",
                                 f"{len(raw_headers)} headers > {MAX_HEADERS_PER_RESPONSE}")
        headers = tuple(Header.from_obj(h) for h in raw_headers)
    if len(raw_commits) > len(headers):
        raise MalformedError("count", "headers response: more commits than headers")
    commits: dict[int, Commit] = {}
    low = headers[0].height if headers else 0
    high = headers[-1].height if headers else -1
    for raw in raw_commits:
        c = Commit.from_obj(raw)
        if c.height in commits:
            raise MalformedError("duplicate", f"headers response: two commits at {c.height}")
        if not low <= c.height <= high:
            raise MalformedError("range", f"headers response: commit at {c.height} out of range")
        commits[c.height] = c
    if len(raw_sets) > 2 * len(headers) + 1:
        raise MalformedError("count", "headers response: more validator sets than it can need")
    sets: dict[bytes, ValidatorSet] = {}
    for raw in raw_sets:
        entry = _exact(raw, _SET_ENTRY_KEYS, "headers response.validator_sets entry")
        _uint(entry["height"], "validator_sets entry.height")
        s = ValidatorSet.from_obj(entry["validators"])
        sets[s.hash] = s
    return HeadersResponse(headers, commits, sets)


def decode_validators(data: bytes) -> tuple[int, ValidatorSet]:
    """``{height, validators}``."""
    m = _exact(decode_limited(data, MAX_VALIDATORS_BYTES, "validators"), _SET_ENTRY_KEYS,
               "validators")
    return _uint(m["height"], "validators.height"), ValidatorSet.from_obj(m["validators"])


def decode_tx_response(data: bytes) -> tuple[SignedTx, int, Proof]:
    """``{tx: signed_tx, height, proof}``."""
    m = _exact(decode_limited(data, MAX_TX_BYTES, "tx response"), _TX_KEYS, "tx response")
    return (SignedTx.from_obj(m["tx"]), _uint(m["height"], "tx response.height"),
            Proof.from_obj(m["proof"]))


def decode_error(data: bytes) -> tuple[str, str]:
    """``{error, message}`` of a 4xx/5xx answer (for logs only; never trusted)."""
    m = _exact(decode_limited(data, MAX_ERROR_BYTES, "error"), _ERROR_KEYS, "error")
    return _text(m["error"], "error.error"), _text(m["message"], "error.message")


def decode_submit_response(data: bytes) -> bytes:
    """``{tx_id}``, the 202 answer to ``POST /v1/tx``."""
    m = _exact(decode_limited(data, MAX_SUBMIT_BYTES, "submit response"), _SUBMIT_KEYS,
               "submit response")
    return _hash(m["tx_id"], "submit response.tx_id")


def decode_wait_response(data: bytes) -> int:
    """``{height}``, the answer to ``GET /v1/wait`` (the node's claim: untrusted)."""
    m = _exact(decode_limited(data, MAX_WAIT_BYTES, "wait response"), _WAIT_KEYS, "wait response")
    return _uint(m["height"], "wait response.height")


def decode_lookup_response(data: bytes) -> tuple[bytes, ...]:
    """``{tx_ids: [bytes(32)]}``, the answer to ``GET /v1/lookup/{digest}``: at most
    :data:`MAX_LOOKUP_IDS`, no id twice (claims of the node: each is fetched and verified)."""
    m = _exact(decode_limited(data, MAX_LOOKUP_BYTES, "lookup response"), _LOOKUP_KEYS,
               "lookup response")
    raw = m["tx_ids"]
    if type(raw) is not list:
        raise MalformedError("type", "lookup response.tx_ids: expected an array")
    if len(raw) > MAX_LOOKUP_IDS:
        raise MalformedError("count", f"lookup response: {len(raw)} ids > {MAX_LOOKUP_IDS}")
    ids = tuple(_hash(i, "lookup response.tx_ids entry") for i in raw)
    if len(set(ids)) != len(ids):
        raise MalformedError("duplicate", "lookup response: an id listed twice")
    return ids


# --- pure decisions for what the adapter sends itself ----------------------------------------

ACCEPTED, REJECTED, RETRY, BAN = "accepted", "rejected", "retry", "ban"


@dataclass(frozen=True, slots=True)
class SubmitVerdict:
    """What one peer's answer to ``POST /v1/tx`` means (:func:`judge_submit`).

    ``outcome``: ``accepted`` (202, or 400 ``duplicate``: it is already there; ``code`` is then
    ``duplicate``), ``rejected`` (400 ``bad_tx``/``bad_signature``/``unknown_sender``/
    ``bad_reference``/``duplicate_matter``: ``code``
    names it; the transaction itself is refused, asking another node will not help), ``retry``
    (503: the node is busy; try another, no fault) or ``ban`` (anything else: ``code`` is the
    ban reason, as the machine words them). ``message`` is the node's text, for people.
    """

    outcome: str
    code: str = ""
    message: str = ""


def judge_submit(status: int, body: bytes, tx_id: bytes) -> SubmitVerdict:
    """The meaning of a peer's answer (``status``, ``body``) to ``POST /v1/tx`` of ``tx_id``.

    A 202 must carry our tx_id (a node that says it accepted another transaction is banned:
    ``tx_id``). Never raises for anything a peer can send.
    """
    if status == 202:
        try:
            got = decode_submit_response(body)
        except MalformedError as exc:
            return SubmitVerdict(BAN, _reason(exc), str(exc))
        if got != tx_id:
            return SubmitVerdict(BAN, "tx_id", f"it accepted {got.hex()[:16]}..., not ours")
        return SubmitVerdict(ACCEPTED)
    try:
        code, message = decode_error(body)
    except MalformedError:
        code, message = "", ""
    if status == 400 and code == "duplicate":
        return SubmitVerdict(ACCEPTED, code, message)
    if status == 400 and code in SUBMIT_REJECTIONS:
        return SubmitVerdict(REJECTED, code, message)
    reason = http_reason(status, body)
    if status == 503:
        return SubmitVerdict(RETRY, reason, message)
    return SubmitVerdict(BAN, reason, message)


def check_lookup_hit(tx: SignedTx, digest: bytes) -> str | None:
    """None if a verified transaction is what ``GET /v1/lookup/{digest}`` promised: an
    ``evidence.deposit`` whose ``data.digest`` is ``digest``; else the ban reason for the peers
    that listed it (``lookup_type``, ``lookup_digest``)."""
    if tx.body.type != "evidence.deposit":
        return "lookup_type"
    got = tx.body.data.get("digest")
    if type(got) is not bytes or got != digest:
        return "lookup_digest"
    return None


def check_old_header(lower: tuple[int, bytes], upper: tuple[int, bytes],
                     headers: list[Header] | tuple[Header, ...], height: int) -> Header:
    """The header at ``height`` (below the store's window), from ``headers`` fetched between the
    known block_ids ``lower`` and ``upper`` (``HeaderStore.checkpoints_around(height)``).

    When the block_id at ``height`` itself is known (``lower[0] == height``: a checkpoint, the
    anchor), ``headers`` is that one header and must hash to it; otherwise ``headers`` are
    ``lower+1 .. upper`` and must hash-link from one known block_id to the other
    (:func:`~appliance.node.tx.verify_link_range`). Raises VerificationError.
    """
    low, low_id = lower
    if not low <= height <= upper[0]:
        raise VerificationError("height", height, f"not between {low} and {upper[0]}")
    if low == height:
        if len(headers) != 1 or headers[0].height != height:
            raise VerificationError("height", height, "expected the one header at the height")
        if headers[0].block_id != low_id:
            raise VerificationError("prev_hash", height, "not the block_id the store knows")
        return headers[0]
    return verify_link_range(lower, upper, headers)[height]


# --- the machine -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Batch:
    """A decoded /v1/headers answer not verified yet."""

    start: int
    response: HeadersResponse
    peer: str
    partial: bool = False  # its last header has no commit: waiting to be joined

    @property
    def end(self) -> int:
        return self.start + len(self.response.headers) - 1


@dataclass(slots=True)
class _Segment:
    """A verified segment not stored yet."""

    headers: tuple[Header, ...]
    result: verify.SegmentResult
    learnt: tuple[ValidatorSet, ...]
    peer: str
    confirmed: bool = False
    confirmed_by: str | None = None

    @property
    def tip(self) -> Header:
        return self.result.tip


@dataclass(slots=True)
class _Conflict:
    """A validly committed header of another peer at a height where we hold another one."""

    height: int
    theirs: Header
    their_commit: Commit
    peer: str
    asked: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _OldRange:
    """Fetching the headers that check an old transaction's header (below the store's window)
    against the two known block_ids around it, from one peer at a time."""

    tx: SignedTx
    height: int
    proof: Proof
    tx_peer: str  # who served the transaction and its proof
    lower: tuple[int, bytes]
    upper: tuple[int, bytes]
    peer: str | None = None  # who serves the headers now
    headers: list[Header] = field(default_factory=list)
    tried: set[str] = field(default_factory=set)

    @property
    def first(self) -> int:
        return self.height if self.lower[0] == self.height else self.lower[0] + 1

    @property
    def last(self) -> int:
        return self.height if self.lower[0] == self.height else self.upper[0]

    @property
    def next(self) -> int:
        return self.first + len(self.headers)


@dataclass(slots=True)
class _TxQuery:
    tx_id: bytes
    tried: set[str] = field(default_factory=set)
    waiting: tuple[SignedTx, int, Proof, str] | None = None  # proof for a height not stored yet
    old: _OldRange | None = None
    absent: list[str] = field(default_factory=list)  # peers that answered 404
    served_by: list[str] = field(default_factory=list)  # peers whose answer did not verify
    notes: list[str] = field(default_factory=list)  # why, for people


class SyncMachine:
    """The sync state machine. See the module docstring.

    ``tip``/``next_set``: the stored verified state (None for an empty store: the machine then
    starts from the anchor and emits :class:`Initialize`). ``lookup_header(h)`` and
    ``lookup_set(hash)`` read the store's verified headers and sets (deterministic local reads;
    None when not held); without them only what this machine verified itself is known.
    ``lookup_checkpoints(h)`` gives the known (height, block_id) pairs that bracket a height whose
    header is no longer held (``HeaderStore.checkpoints_around``), or None: old transactions are
    checked through them.
    """

    def __init__(
        self,
        anchor: TrustAnchor,
        config: SyncConfig | None = None,
        *,
        tip: Header | None = None,
        next_set: ValidatorSet | None = None,
        sets: Iterable[ValidatorSet] = (),
        lookup_header: Callable[[int], Header | None] | None = None,
        lookup_set: Callable[[bytes], ValidatorSet | None] | None = None,
        lookup_checkpoints: Callable[[int], tuple[tuple[int, bytes], tuple[int, bytes]] | None]
        | None = None,
    ) -> None:
        self.anchor = anchor
        self.config = config = config or SyncConfig()
        self.peers = PeerTable(ban_base_ms=config.ban_base_ms, ban_factor=config.ban_factor,
                               ban_max_ms=config.ban_max_ms)
        self._batch = 1 if config.strict else config.batch
        self._per_peer = max(config.per_peer, 8) if config.strict else config.per_peer
        self._lookahead = max(config.lookahead, 64) if config.strict else config.lookahead
        self._lookup_header = lookup_header
        self._lookup_set = lookup_set
        self._lookup_checkpoints = lookup_checkpoints
        self._sets: dict[bytes, ValidatorSet] = {anchor.validators.hash: anchor.validators}
        for s in sets:
            self._sets[s.hash] = s
        if (tip is None) != (next_set is None):
            raise ValueError("give both tip and next_set, or neither")
        if tip is not None:
            assert next_set is not None
            if tip.chain_id != anchor.chain_id or tip.height < anchor.height:
                raise ValueError("the stored tip is not of the anchor's chain")
            verify.check_validator_set(next_set, tip.next_validators_hash, tip.height)
            self._sets[next_set.hash] = next_set
        self._trusted: Header | None = tip
        self._trusted_next: ValidatorSet | None = next_set
        self._pending: list[_Segment] = []
        # Headers handed out in AppendSegment since the adapter last called in: it may not have
        # written them yet, so they are looked up here, not in the store.
        self._unstored: dict[int, Header] = {}
        self._buffer: dict[int, _Batch] = {}
        self._inflight: dict[int, Request] = {}
        self._commits: dict[int, Commit] = {}  # verified commits of our own chain (recent)
        self._recent: dict[int, Header] = {}  # verified headers of recent segment tips
        self._conflicts: dict[tuple[str, int], _Conflict] = {}
        self._probing: set[str] = set()  # peers whose link failure is being checked
        self._outbox: list[Request] = []  # made while handling answers; sent by requests()
        self._theirs: dict[tuple[str, int], Header] = {}  # conflicting headers, commit asked
        self._reported: set[tuple[int, bytes, bytes]] = set()  # evidence already emitted
        self._txs: dict[bytes, _TxQuery] = {}
        self._info_due: dict[str, int] = {}
        self._next_id = 1
        self._rotation = 0
        self._reached: int | None = None
        self._events: list[Event] = []
        self.appended = 0  # headers emitted in AppendSegment

    # -- public state -----------------------------------------------------------------------

    @property
    def tip(self) -> Header | None:
        """The stored tip (what the adapter has been told to write), or None before the anchor."""
        return self._trusted

    @property
    def verified_height(self) -> int:
        """Height of the last verified header (stored or pending); anchor height - 1 before."""
        if self._pending:
            return self._pending[-1].tip.height
        return self._trusted.height if self._trusted is not None else self.anchor.height - 1

    @property
    def target(self) -> int | None:
        """The height to reach: until_height, else the best claim of a usable peer."""
        if self.config.until_height is not None:
            return self.config.until_height
        heights = [p.height for p in self.peers.usable() if p.height is not None]
        return max(heights) if heights else None

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot."""
        t = self._trusted
        return {
            "height": None if t is None else t.height,
            "tip_id": None if t is None else t.block_id.hex(),
            "verified_height": self.verified_height,
            "pending_segments": len(self._pending),
            "buffered_batches": len(self._buffer),
            "in_flight": len(self._inflight),
            "target": self.target,
            "peers": self.peers.snapshot(),
        }

    # -- peers ------------------------------------------------------------------------------

    def add_peer(self, url: str, source: str = "static") -> str:
        """Add a peer (ValueError for a bad URL); returns its normalised URL."""
        peer, _ = self.peers.add(url, source)
        return peer.url

    def remove_peer(self, url: str, source: str | None = None) -> None:
        """Remove a peer's source; when it leaves the table its requests are abandoned."""
        peer = self.peers.get(url)
        if peer is None or not self.peers.remove(url, source):
            return
        for rid in [rid for rid, r in self._inflight.items() if r.peer == peer.url]:
            del self._inflight[rid]
        self._drop_peer_work(peer.url)
        self._probing.discard(peer.url)
        self._info_due.pop(peer.url, None)

    # -- driving ----------------------------------------------------------------------------

    def requests(self, now_ms: int) -> list[Request]:
        """The requests to send now (they count as in flight until receive()/fail())."""
        self._unstored.clear()
        out: list[Request] = []
        for peer in self.peers.expire(now_ms):
            log.debug("peer %s: ban over, retrying", peer.url)
        busy_info = {r.peer for r in self._inflight.values() if r.kind == INFO}
        for peer in self.peers:
            if peer.url in busy_info:
                continue
            if peer.state == NEW or (peer.state == OK and self._info_due.get(peer.url, 0)
                                     <= now_ms):
                out.append(self._new(peer.url, INFO, "/v1/info", MAX_INFO_BYTES))
        queued, self._outbox = self._outbox, []
        out.extend(r for r in queued if r.id in self._inflight)
        out.extend(self._conflict_requests())
        out.extend(self._tx_requests())
        out.extend(self._confirm_requests())
        out.extend(self._header_requests())
        self._flush()
        self._check_reached()
        return out

    def events(self) -> list[Event]:
        """Events that arose outside receive()/fail() (in requests(): a transaction no peer
        has). Call after requests()."""
        return self._take()

    def next_wakeup(self, now_ms: int) -> int | None:
        """When requests() may have something new without any answer coming in (a ban runs
        out, a /v1/info poll is due), or None."""
        times = [t for t in (self.peers.next_expiry(),) if t is not None]
        asking = {r.peer for r in self._inflight.values() if r.kind == INFO}
        times += [self._info_due.get(p.url, now_ms) for p in self.peers
                  if p.state == OK and p.url not in asking]
        return min(times) if times else None

    def receive(self, request_id: int, status: int, body: bytes, now_ms: int) -> list[Event]:
        """An answer came: HTTP ``status`` and the whole ``body``."""
        self._unstored.clear()
        req = self._inflight.pop(request_id, None)
        if req is None:
            return self._take()
        peer = self.peers.get(req.peer)
        if peer is None or peer.state in (BANNED, CONFLICT):
            self._after(now_ms)
            return self._take()  # late answer of a peer we no longer ask
        if len(body) > req.max_bytes:
            self._ban(req.peer, "oversize", now_ms, detail=f"{req.path}: {len(body)} bytes")
        elif status != 200:
            self._on_status(req, status, body, now_ms)
        else:
            try:
                self._HANDLERS[req.kind](self, req, body, now_ms)
            except LedgerError as exc:
                self._ban(req.peer, _reason(exc), now_ms, detail=str(exc))
        self._after(now_ms)
        return self._take()

    def fail(self, request_id: int, reason: str, now_ms: int, detail: str = "") -> list[Event]:
        """The request failed in transport: ``timeout``, ``slow``, ``oversize``,
        ``unreachable``, ``disconnected``... The peer is banned."""
        self._unstored.clear()
        req = self._inflight.pop(request_id, None)
        if req is not None and req.peer in self.peers:
            peer = self.peers.get(req.peer)
            if peer is not None and peer.state not in (BANNED, CONFLICT):
                self._ban(req.peer, reason, now_ms, detail=detail)
        self._after(now_ms)
        return self._take()

    def fetch_tx(self, tx_id: bytes) -> None:
        """Look a transaction up (GET /v1/tx/{id}) and verify it against a stored header: a
        :class:`TxVerified` or :class:`TxNotFound` event follows."""
        if type(tx_id) is not bytes or len(tx_id) != 32:
            raise ValueError("tx_id must be 32 bytes")
        self._txs.setdefault(tx_id, _TxQuery(tx_id))

    def cancel_tx(self, tx_id: bytes) -> None:
        """Forget a :meth:`fetch_tx` nobody waits for any more (no event follows)."""
        self._txs.pop(tx_id, None)
        for rid in [rid for rid, r in self._inflight.items()
                    if r.tx_id == tx_id and r.kind in (TX, RANGE)]:
            del self._inflight[rid]

    def ban_peer(self, url: str, reason: str, now_ms: int, detail: str = "") -> None:
        """Ban a peer for an answer the adapter handled itself (a submission, a wait, a lookup
        that did not verify); the :class:`BanPeer` comes with the next :meth:`events`."""
        self._ban(url, reason, now_ms, detail=detail)

    def poll_info(self, url: str | None = None) -> None:
        """Ask ``/v1/info`` of the usable peers (or of ``url``) at the next :meth:`requests`:
        the chain has grown (``/v1/wait`` said so), so the sync goes on without waiting for the
        next ``info_interval_ms``."""
        peer = None if url is None else self.peers.get(url)
        for p in self.peers:
            if p.state == OK and (peer is None or p is peer):
                self._info_due[p.url] = 0

    # -- internals: requests ----------------------------------------------------------------

    def _new(self, peer: str, kind: str, path: str, max_bytes: int, **kw: Any) -> Request:
        req = Request(self._next_id, peer, kind, path, max_bytes, **kw)
        self._next_id += 1
        self._inflight[req.id] = req
        return req

    def _covered(self) -> list[tuple[int, int]]:
        spans = [(r.height, r.height + r.count - 1) for r in self._inflight.values()
                 if r.kind == HEADERS]
        spans += [(b.start, b.end) for b in self._buffer.values()]
        return sorted(spans)

    def _header_peers(self) -> list:
        return [p for p in self.peers.usable() if p.url not in self._probing]

    def _header_requests(self) -> list[Request]:
        target = self.target
        peers = self._header_peers()
        if target is None or not peers:
            return []
        base = self._trusted.height if self._trusted is not None else self.anchor.height - 1
        limit = min(target, base + self._lookahead * self._batch)
        load = {p.url: 0 for p in peers}
        for r in self._inflight.values():
            if r.kind == HEADERS and r.peer in load:
                load[r.peer] += 1
        out = []
        covered = self._covered()
        h = self.verified_height + 1
        while h <= limit:
            span = next(((a, b) for a, b in covered if a <= h <= b), None)
            if span is not None:
                h = span[1] + 1
                continue
            nxt = min((a for a, _ in covered if a > h), default=limit + 1)
            candidates = [p for p in peers if load[p.url] < self._per_peer
                          and p.height is not None and p.height >= h]
            if not candidates:
                break
            # Least loaded first; among equals, rotate so consecutive batches change peer.
            self._rotation += 1
            n = len(candidates)
            candidates = [candidates[(i + self._rotation) % n] for i in range(n)]
            peer = min(candidates, key=lambda p: load[p.url])
            assert peer.height is not None
            count = min(self._batch, peer.height - h + 1, limit - h + 1, nxt - h)
            out.append(self._new(peer.url, HEADERS, f"/v1/headers?from={h}&count={count}",
                                 MAX_RESPONSE_BYTES, height=h, count=count))
            load[peer.url] += 1
            covered.append((h, h + count - 1))
            covered.sort()
            h += count
        return out

    def _confirmers(self, height: int, server: str) -> list:
        return [p for p in self._header_peers()
                if p.url != server and p.height is not None and p.height >= height]

    def _waiting_for_info(self) -> bool:
        """A peer whose /v1/info is due or in flight may yet claim any height."""
        return any(p.state == NEW for p in self.peers)

    def _confirm_requests(self) -> list[Request]:
        """A check at the highest unconfirmed pending tip that a second peer can vouch for."""
        if not self.config.cross_check:
            return []
        for i in range(len(self._pending) - 1, -1, -1):
            seg = self._pending[i]
            if seg.confirmed:
                return []
            h = seg.tip.height
            peers = self._confirmers(h, seg.peer)
            if not peers:
                continue
            for r in self._inflight.values():
                if r.kind == CHECK and r.purpose == "confirm" and r.height >= h:
                    return []
            if i == len(self._pending) - 1:
                # The next batch, from another peer, will vouch when it verifies.
                if any(r.kind == HEADERS and r.height == h + 1 and r.peer != seg.peer
                       for r in self._inflight.values()):
                    return []
                b = self._buffer.get(h + 1)
                if b is not None and b.peer != seg.peer:
                    return []
            self._rotation += 1
            peer = peers[self._rotation % len(peers)]
            return [self._check(peer.url, h, "confirm")]
        return []

    def _check(self, peer: str, height: int, purpose: str) -> Request:
        return self._new(peer, CHECK, f"/v1/headers?from={height}&count=1", MAX_RESPONSE_BYTES,
                         height=height, count=1, purpose=purpose)

    def _conflict_requests(self) -> list[Request]:
        out = []
        asking = {(r.height, r.peer) for r in self._inflight.values()
                  if r.kind == COMMIT and r.purpose == "ours"}
        for c in list(self._conflicts.values()):
            if any(h == c.height for h, _ in asking):
                continue
            ours = self._our_header(c.height)
            if ours is None:
                del self._conflicts[(c.peer, c.height)]
                continue
            choices = [p for p in self.peers.usable()
                       if p.url != c.peer and p.url not in c.asked
                       and p.height is not None and p.height >= c.height]
            if not choices:
                continue  # kept: a peer that comes back may have our commit
            peer = choices[0]
            c.asked.add(peer.url)
            out.append(self._new(peer.url, COMMIT, f"/v1/commits/{c.height}", MAX_COMMIT_BYTES,
                                 height=c.height, purpose="ours"))
        return out

    def _tx_requests(self) -> list[Request]:
        out = []
        busy = {r.tx_id for r in self._inflight.values() if r.kind in (TX, RANGE)}
        for q in list(self._txs.values()):
            if q.tx_id in busy or q.waiting is not None:
                continue
            if q.old is not None:
                req = self._range_request(q)
                if req is not None:
                    out.append(req)
                continue
            choices = [p for p in self._header_peers() if p.url not in q.tried]
            if not choices:
                if not self._waiting_for_info():
                    self._tx_not_found(q, f"none of {len(q.tried)} peers served it with a "
                                          "valid proof")
                continue
            peer = choices[0]
            q.tried.add(peer.url)
            out.append(self._new(peer.url, TX, f"/v1/tx/{q.tx_id.hex()}", MAX_TX_BYTES,
                                 tx_id=q.tx_id))
        return out

    def _range_request(self, q: _TxQuery) -> Request | None:
        """The next piece of an old transaction's checkpoint range, from the peer serving it,
        or from another one when that one is gone (the range then starts again)."""
        o = q.old
        assert o is not None
        current = self.peers.get(o.peer) if o.peer is not None else None
        if current is None or current.state != OK or current.url in self._probing:
            choices = [p for p in self._header_peers() if p.url not in o.tried
                       and p.height is not None and p.height >= o.last]
            if not choices:
                if not self._waiting_for_info():
                    q.served_by.append(o.tx_peer)
                    self._tx_not_found(q, f"no peer served the headers {o.first}..{o.last} "
                                          f"that link block {o.height} to known block_ids")
                return None
            o.peer, o.headers = choices[0].url, []
            o.tried.add(o.peer)
        count = min(MAX_HEADERS_PER_RESPONSE, o.last - o.next + 1)
        return self._new(o.peer, RANGE, f"/v1/headers?from={o.next}&count={count}",
                         MAX_RESPONSE_BYTES, height=o.next, count=count, tx_id=q.tx_id)

    def _tx_not_found(self, q: _TxQuery, reason: str) -> None:
        del self._txs[q.tx_id]
        if q.notes:
            reason += "; " + "; ".join(q.notes[-4:])
        self._events.append(TxNotFound(q.tx_id, reason, tuple(dict.fromkeys(q.absent)),
                                       tuple(dict.fromkeys(q.served_by))))

    # -- internals: answers -----------------------------------------------------------------

    def _on_status(self, req: Request, status: int, body: bytes, now_ms: int) -> None:
        if status == 404 and req.kind == COMMIT and req.purpose == "theirs":
            self._theirs.pop((req.peer, req.height), None)
            self._ban(req.peer, "commit", now_ms,
                      detail=f"no commit for the conflicting header it served at {req.height}")
            return
        if status == 404 and req.kind in (COMMIT, TX):
            # A commit it does not keep (nodes may keep sparse commits) or a tx it does not
            # know: not a fault; the next requests() asks another peer.
            q = self._txs.get(req.tx_id) if req.kind == TX else None
            if q is not None:
                q.absent.append(req.peer)
            return
        code = ""
        try:
            code = decode_error(body)[0]
        except MalformedError:
            pass
        reason = f"http_{status}" + (f"_{code[:40]}" if code else "")
        if req.kind in (HEADERS, CHECK, RANGE) and status == 404:
            reason = "withhold"
        self._ban(req.peer, reason, now_ms, detail=f"{req.path}: HTTP {status}")

    def _on_info(self, req: Request, body: bytes, now_ms: int) -> None:
        info = decode_info(body)
        peer = self.peers.get(req.peer)
        assert peer is not None
        if info.chain_id != self.anchor.chain_id:
            self._ban(req.peer, "wrong_chain", now_ms, detail=f"chain {info.chain_id[:64]!r}")
            return
        if info.protocol != PROTOCOL:
            self._ban(req.peer, "protocol", now_ms, detail=f"protocol {info.protocol}")
            return
        if self.anchor.height == 0 and info.genesis_id != self.anchor.block_id:
            self._ban(req.peer, "genesis", now_ms, detail="genesis_id is not the anchor's")
            return
        peer.state = OK
        peer.height, peer.tip_id, peer.peer_id = info.height, info.tip_id, info.peer_id
        peer.district, peer.software, peer.info_at_ms = info.district, info.software, now_ms
        self._info_due[peer.url] = now_ms + self.config.info_interval_ms
        self._events.append(PeerInfo(peer.url, info.height, info.tip_id))
        # Cross-check its tip against ours when we hold that height.
        if info.height <= self.verified_height:
            ours = self._our_header(info.height)
            if ours is not None and ours.block_id != info.tip_id:
                self._probing.add(peer.url)
                self._outbox.append(self._check(peer.url, info.height, "cross"))

    def _on_headers(self, req: Request, body: bytes, now_ms: int) -> None:
        resp = decode_headers(body)
        peer = self.peers.get(req.peer)
        assert peer is not None
        n = len(resp.headers)
        if n == 0:
            if peer.height is not None and peer.height >= req.height:
                self._ban(req.peer, "withhold", now_ms,
                          detail=f"no headers from {req.height}, claims {peer.height}")
            return
        if self.config.strict and req.join is None:
            # Strict mode asks one header at a time, with its commit. A node with sparse
            # commits extends the range to its next commit: keep the first header only.
            first = resp.headers[0]
            if first.height not in resp.commits:
                self._ban(req.peer, "strict_no_commit", now_ms,
                          detail=f"no commit for {first.height}: it cannot serve an audit")
                return
            resp = HeadersResponse(resp.headers[:1], {first.height: resp.commits[first.height]},
                                   resp.sets)
        # A node may return more than asked (up to 1000, to end on a commit), or fewer.
        for i, h in enumerate(resp.headers):
            if h.height != req.height + i:  # rule 2, checked early: the batch is placed by it
                raise VerificationError("height", h.height, f"expected {req.height + i}")
        if req.join is not None:
            head = self._buffer.get(req.join)
            if head is None or head.peer != req.peer or head.end + 1 != req.height:
                return  # the batch it continues was dropped meanwhile
            resp = HeadersResponse(
                head.response.headers + resp.headers,
                {**head.response.commits, **resp.commits},
                {**head.response.sets, **resp.sets})
            start = req.join
        else:
            start = req.height
        batch = _Batch(start, resp, req.peer)
        last = batch.end
        if last <= self.verified_height:
            if req.join is None:
                return  # overtaken (another peer's batch covered it); nothing to learn
        if last not in resp.commits:
            # Commits may be sparse: a node then serves a range without a commit on its last
            # header, to be joined with the next one from the same node (never with another
            # node's: unauthenticated headers are only as good as their server).
            if peer.height is not None and last >= peer.height:
                raise VerificationError("last_commit", last, "its tip has no commit")
            if len(resp.headers) >= MAX_JOINED_HEADERS:
                raise VerificationError("last_commit", last,
                                        f"no commit in {len(resp.headers)} headers")
            batch.partial = True
            self._buffer[start] = batch
            count = min(MAX_HEADERS_PER_RESPONSE, peer.height - last) \
                if peer.height is not None else MAX_HEADERS_PER_RESPONSE
            self._outbox.append(self._new(
                req.peer, HEADERS, f"/v1/headers?from={last + 1}&count={count}",
                MAX_RESPONSE_BYTES, height=last + 1, count=count, join=start))
            return
        self._buffer[start] = batch

    def _on_check(self, req: Request, body: bytes, now_ms: int) -> None:
        resp = decode_headers(body)
        peer = self.peers.get(req.peer)
        assert peer is not None
        h = req.height
        if not resp.headers:
            self._probing.discard(req.peer)
            if peer.height is not None and peer.height >= h:
                self._ban(req.peer, "withhold", now_ms, detail=f"no header at {h}")
            return
        # With sparse commits a node extends even a one-header range to its next commit.
        theirs = resp.headers[0]
        if theirs.height != h:
            raise VerificationError("height", theirs.height, f"asked {h}")
        ours = self._our_header(h)
        if ours is None:
            self._probing.discard(req.peer)
            return  # no longer held (cannot happen within the window); nothing to compare
        if theirs.block_id == ours.block_id:
            self._probing.discard(req.peer)
            if req.purpose == "link":
                # It agrees with our header at h, yet its batch did not link to it.
                self._ban(req.peer, "prev_hash", now_ms,
                          detail=f"its header {h + 1} does not link to its own {h}")
                return
            self._confirm_through(h, req.peer)
            self.peers.good(req.peer)
            return
        # A different header at a height we hold: equivocation, or just bad data.
        commit = resp.commits.get(h)
        if commit is None:
            # Its answer has no commit at h (sparse commits): ask for it; the peer stays out
            # of the header schedule meanwhile.
            self._probing.add(req.peer)
            self._theirs[(req.peer, h)] = theirs
            self._outbox.append(self._new(req.peer, COMMIT, f"/v1/commits/{h}",
                                          MAX_COMMIT_BYTES, height=h, purpose="theirs"))
            return
        self._judge(req.peer, ours, theirs, commit)

    def _judge(self, peer: str, ours: Header, theirs: Header, commit: Commit) -> None:
        """``theirs`` (from ``peer``) conflicts with our verified header at that height:
        equivocation when its commit is valid under the set we trust there, else bad data
        (VerificationError: the caller bans)."""
        h = ours.height
        self._probing.discard(peer)
        vset = self._set(ours.validators_hash)
        if vset is None:
            log.warning("cannot judge a conflict at %d: the set that signs it is unknown", h)
            return
        verify.verify_commit(commit, theirs, vset, self.anchor.chain_id)  # raises: ban
        self.peers.mark_conflict(peer, f"conflicting valid commit at {h}")
        self._drop_peer_work(peer)
        for rid in [rid for rid, r in self._inflight.items() if r.peer == peer]:
            del self._inflight[rid]
        mine = self._commits.get(h)
        conflict = _Conflict(h, theirs, commit, peer)
        if mine is not None and verify.commit_is_valid(mine, ours, vset, self.anchor.chain_id):
            self._report(conflict, mine, ours, self._server_of(h))
        else:
            self._conflicts[(peer, h)] = conflict  # our commit at h is fetched from a peer

    def _on_commit(self, req: Request, body: bytes, now_ms: int) -> None:
        commit = decode_commit(body)
        h = req.height
        ours = self._our_header(h)
        if req.purpose == "theirs":
            theirs = self._theirs.pop((req.peer, h), None)
            if theirs is None or ours is None:
                self._probing.discard(req.peer)
                return
            if commit.height != h or commit.block_id != theirs.block_id:
                raise VerificationError("commit", h, "commit is not for the header it served")
            self._judge(req.peer, ours, theirs, commit)
            return
        todo = [c for c in self._conflicts.values() if c.height == h]
        if ours is None or not todo:
            return
        vset = self._set(ours.validators_hash)
        if vset is None:
            return
        # We asked a peer on our branch for the commit of our header: anything else is bad.
        verify.verify_commit(commit, ours, vset, self.anchor.chain_id)  # raises: ban
        self._commits[h] = commit
        for c in todo:
            self._report(c, commit, ours, req.peer)

    def _on_tx(self, req: Request, body: bytes, now_ms: int) -> None:
        q = self._txs.get(req.tx_id)
        if q is None:
            return
        try:
            tx, height, proof = decode_tx_response(body)
            if tx.tx_id != req.tx_id:
                raise VerificationError("proof", height, "the node served another transaction")
            verify.verify_tx(tx, self.anchor.chain_id)
        except LedgerError:
            q.served_by.append(req.peer)
            raise  # receive() bans
        if self._trusted is None or height > self._trusted.height:
            q.waiting = (tx, height, proof, req.peer)
            peer = self.peers.get(req.peer)
            if peer is not None and (peer.height is None or peer.height < height):
                # It has a block above what it told us: its tip has grown, ask it now.
                self._info_due[peer.url] = 0
            return
        self._finish_tx(q, tx, height, proof, req.peer, now_ms)

    def _finish_tx(self, q: _TxQuery, tx: SignedTx, height: int, proof: Proof, peer: str,
                   now_ms: int) -> None:
        header = self._our_header(height)
        if header is not None:
            self._check_proof(q, tx, height, proof, peer, header, now_ms)
            return
        around = None
        if self._lookup_checkpoints is not None and height >= self.anchor.height:
            around = self._lookup_checkpoints(height)
        q.waiting = None
        if around is None:
            # Below the trust anchor (or no store to read): nothing here can prove it. Not the
            # peer's fault; the next requests() asks another one.
            q.served_by.append(peer)
            q.notes.append(f"{peer} served it at height {height}, where no verified header or "
                           "checkpoint is known")
            return
        q.old = _OldRange(tx, height, proof, peer, around[0], around[1])

    def _check_proof(self, q: _TxQuery, tx: SignedTx, height: int, proof: Proof, peer: str,
                     header: Header, now_ms: int) -> None:
        try:
            verify.verify_proof(tx.tx_id, proof, header)
        except VerificationError as exc:
            q.waiting = None
            q.served_by.append(peer)
            q.notes.append(f"{peer} served a proof that does not verify")
            self._ban(peer, "proof", now_ms, detail=str(exc))
            return
        del self._txs[q.tx_id]
        self.peers.good(peer)
        self._events.append(TxVerified(q.tx_id, tx, height, peer, header.block_id,
                                       proof.leaf_index, header.timestamp))

    def _on_range(self, req: Request, body: bytes, now_ms: int) -> None:
        q = self._txs.get(req.tx_id)
        o = q.old if q is not None else None
        if o is None or req.peer != o.peer or req.height != o.next:
            return  # abandoned meanwhile
        resp = decode_headers(body)
        if not resp.headers:
            self._ban(req.peer, "withhold", now_ms,
                      detail=f"no headers from {req.height} (checkpoint range)")
            return
        for i, h in enumerate(resp.headers):
            if h.height != req.height + i:
                raise VerificationError("height", h.height, f"expected {req.height + i}")
        o.headers.extend(resp.headers[:o.last - o.next + 1])  # a node may send more
        if o.next <= o.last:
            return  # fewer than asked: the next requests() asks for the rest
        header = check_old_header(o.lower, o.upper, o.headers, o.height)  # raises: ban
        self.peers.good(req.peer, len(o.headers))
        assert q is not None
        q.old = None
        self._check_proof(q, o.tx, o.height, o.proof, o.tx_peer, header, now_ms)

    _HANDLERS: dict[str, Callable[[SyncMachine, Request, bytes, int], None]] = {
        INFO: _on_info, HEADERS: _on_headers, CHECK: _on_check, COMMIT: _on_commit,
        TX: _on_tx, RANGE: _on_range,
    }

    # -- internals: verification, confirmation, storing -------------------------------------

    def _after(self, now_ms: int) -> None:
        self._advance(now_ms)
        self._flush()
        self._waiting_txs(now_ms)
        self._check_reached()

    def _advance(self, now_ms: int) -> None:
        """Verify the buffered batches that continue the verified chain, in order."""
        while True:
            start = self.verified_height + 1
            for s in [s for s in self._buffer if s < start]:
                b = self._buffer[s]
                if b.end < start:
                    del self._buffer[s]  # overtaken
            batch = self._buffer.get(start)
            if batch is not None and batch.partial:
                return  # its continuation is on the way
            self._buffer.pop(start, None)
            if batch is None:
                # A batch that starts inside the verified range but runs past it: trim it.
                over = [b for b in self._buffer.values()
                        if b.start < start <= b.end and not b.partial]
                if not over:
                    return
                b = over[0]
                del self._buffer[b.start]
                keep = tuple(h for h in b.response.headers if h.height >= start)
                batch = _Batch(start, HeadersResponse(keep, b.response.commits,
                                                      b.response.sets), b.peer)
            peer = self.peers.get(batch.peer)
            if peer is None or peer.state in (BANNED, CONFLICT):
                continue
            try:
                self._verify_batch(batch, now_ms)
            except LedgerError as exc:
                if (isinstance(exc, VerificationError) and exc.rule == "prev_hash"
                        and exc.height == start and self._trusted is not None):
                    # Its chain does not continue ours: a liar, or a fork. Ask it for its
                    # header at our tip height to tell.
                    self._probing.add(batch.peer)
                    self._drop_peer_work(batch.peer)
                    self._outbox.append(self._check(batch.peer, start - 1, "link"))
                else:
                    self._ban(batch.peer, _reason(exc), now_ms, detail=str(exc))

    def _verify_batch(self, batch: _Batch, now_ms: int) -> None:
        resp = batch.response
        headers = resp.headers
        learnt: list[ValidatorSet] = []
        if self._trusted is None:
            first = headers[0]
            anchor = self.anchor
            if first.next_validators_hash == anchor.validators.hash:
                nxt = anchor.validators
            else:
                nxt = resp.sets.get(first.next_validators_hash)
                if nxt is None:
                    raise VerificationError("validator_set_hash", first.height,
                                            "the set after the anchor was not supplied")
            verify.check_anchor(anchor, first, next_set=nxt)
            self._trusted, self._trusted_next = first, nxt
            self._sets[nxt.hash] = nxt
            if first.height in resp.commits:
                self._remember(first, resp.commits[first.height])
            sets = (anchor.validators,) if nxt is anchor.validators else (anchor.validators, nxt)
            self._events.append(Initialize(anchor, first, nxt, sets))
            headers = headers[1:]
            if not headers:
                return
        trusted = self._pending[-1].tip if self._pending else self._trusted
        next_set = self._pending[-1].result.next_set if self._pending else self._trusted_next
        assert trusted is not None and next_set is not None
        until = self.config.until_height
        if until is not None and headers[0].height > until:
            return  # nothing wanted here (not asked for: a node's extension)
        result = verify.verify_segment(
            trusted, next_set, headers, resp.commits, resp.sets, now_ms,
            max_skew_ms=self.config.max_skew_ms, strict=self.config.strict)
        if until is not None and result.tip.height > until:
            # Nodes extend ranges to their next commit. Every header of a verified segment
            # is authenticated (by the hash links to its committed last one): keep those up
            # to until_height.
            headers = headers[:until - headers[0].height + 1]
            result = _prefix(result, headers, next_set)
        for change in result.changes:
            if change.next_set.hash not in self._sets:
                learnt.append(change.next_set)
            self._sets[change.next_set.hash] = change.next_set
        for h in result.commit_heights:
            self._remember(headers[h - headers[0].height], resp.commits[h])
        self.peers.good(batch.peer, len(headers))
        # A segment from another peer on top of ours vouches for everything below it.
        if self._pending and self._pending[-1].peer != batch.peer:
            self._confirm_through(self._pending[-1].tip.height, batch.peer)
        seg = _Segment(tuple(headers), result, tuple(learnt), batch.peer)
        self._pending.append(seg)

    def _remember(self, header: Header, commit: Commit) -> None:
        self._commits[header.height] = commit
        self._recent[header.height] = header
        if len(self._commits) > 4096:  # bounded: only recent tips matter for cross-checks
            for h in sorted(self._commits)[:1024]:
                del self._commits[h]
                self._recent.pop(h, None)

    def _confirm_through(self, height: int, by: str) -> None:
        for seg in self._pending:
            if seg.tip.height > height:
                break
            if not seg.confirmed:
                seg.confirmed, seg.confirmed_by = True, by

    def _flush(self) -> None:
        """Emit the confirmed prefix of the pending segments (or those no second peer can
        confirm) as AppendSegment."""
        while self._pending:
            seg = self._pending[0]
            if not seg.confirmed:
                if not self.config.cross_check:
                    seg.confirmed = True
                elif not self._confirmers(seg.tip.height, seg.peer) \
                        and not self._waiting_for_info():
                    seg.confirmed = True  # no second peer claims that height
                else:
                    return
            self._pending.pop(0)
            for h in seg.headers:
                self._unstored[h.height] = h
            self._trusted, self._trusted_next = seg.tip, seg.result.next_set
            self.appended += len(seg.headers)
            self._events.append(AppendSegment(
                seg.headers, seg.result.next_set.hash, seg.learnt, seg.peer, seg.confirmed_by))

    def _waiting_txs(self, now_ms: int) -> None:
        for q in list(self._txs.values()):
            if q.waiting is not None and self._trusted is not None \
                    and q.waiting[1] <= self._trusted.height:
                tx, height, proof, peer = q.waiting
                q.waiting = None
                self._finish_tx(q, tx, height, proof, peer, now_ms)

    def _check_reached(self) -> None:
        t = self._trusted
        if t is None or self._pending:
            return
        until = self.config.until_height
        if until is not None:
            if t.height >= until and self._reached != until:
                self._reached = until
                self._events.append(TipReached(t.height, t.block_id, until))
            return
        # The peers' tip: only once every peer has told its height and no check is open.
        target = self.target
        if target is None or self._waiting_for_info() or self._probing:
            return
        if any(r.kind == CHECK for r in self._inflight.values()):
            return
        if t.height >= target and self._reached != target:
            self._reached = target
            self._events.append(TipReached(t.height, t.block_id, target))

    # -- internals: helpers -----------------------------------------------------------------

    def _our_header(self, height: int) -> Header | None:
        for seg in self._pending:
            first = seg.headers[0].height
            if first <= height <= seg.tip.height:
                return seg.headers[height - first]
        t = self._trusted
        if t is not None and t.height == height:
            return t
        h = self._recent.get(height) or self._unstored.get(height)
        if h is not None:
            return h
        if self._lookup_header is not None and t is not None and height <= t.height:
            return self._lookup_header(height)
        return None

    def _set(self, set_hash: bytes) -> ValidatorSet | None:
        s = self._sets.get(set_hash)
        if s is None and self._lookup_set is not None:
            s = self._lookup_set(set_hash)
            if s is not None and s.hash == set_hash:
                self._sets[set_hash] = s
            else:
                s = None
        return s

    def _report(self, c: _Conflict, mine: Commit, ours: Header, ours_from: str | None) -> None:
        vset = self._set(ours.validators_hash)
        assert vset is not None
        ev = verify.check_equivocation(mine, ours, c.their_commit, c.theirs, vset,
                                       self.anchor.chain_id)
        self._conflicts.pop((c.peer, c.height), None)
        if ev is None:
            return
        key = (ev.height, ours.block_id, c.theirs.block_id)
        if key in self._reported:
            return
        self._reported.add(key)
        self._events.append(EquivocationFound(ev, ours_from, c.peer))

    def _server_of(self, height: int) -> str | None:
        for seg in self._pending:
            if seg.headers[0].height <= height <= seg.tip.height:
                return seg.peer
        return None

    def _drop_peer_work(self, url: str) -> None:
        """Forget the unverified batches of a peer we stop trusting."""
        for s in [s for s, b in self._buffer.items() if b.peer == url]:
            del self._buffer[s]

    def _ban(self, url: str, reason: str, now_ms: int, detail: str = "") -> None:
        peer = self.peers.get(url)
        if peer is None or peer.state == CONFLICT:
            return
        was = peer.banned_until_ms if peer.state == BANNED else None
        peer = self.peers.ban(url, reason, now_ms)
        self._probing.discard(url)
        self._drop_peer_work(url)
        for rid in [rid for rid, r in self._inflight.items() if r.peer == url]:
            del self._inflight[rid]  # their answers are not wanted any more
        if was is None:
            assert peer.banned_until_ms is not None
            self._events.append(BanPeer(url, reason, peer.banned_until_ms, peer.strikes,
                                        detail[:200]))

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return events


def _prefix(result: verify.SegmentResult, headers: tuple[Header, ...],
            next_set: ValidatorSet) -> verify.SegmentResult:
    """The state after the first ``len(headers)`` headers of a verified segment."""
    last = headers[-1].height
    changes = tuple(c for c in result.changes if c.height <= last)
    after = changes[-1].next_set if changes else next_set
    return verify.SegmentResult(headers[-1], after, changes,
                                tuple(h for h in result.commit_heights if h <= last))


def http_reason(status: int, body: bytes) -> str:
    """The ban reason for an HTTP error answer: ``http_<status>[_<code>]``."""
    try:
        code = decode_error(body)[0]
    except MalformedError:
        code = ""
    return f"http_{status}" + (f"_{code[:40]}" if code else "")


def ban_reason(exc: LedgerError) -> str:
    """The ban reason for data that failed: the rule, or ``malformed[_<reason>]``."""
    return _reason(exc)


def _reason(exc: LedgerError) -> str:
    if isinstance(exc, VerificationError):
        return exc.rule
    if isinstance(exc, MalformedError):
        return "malformed" if exc.reason == "malformed" else f"malformed_{exc.reason}"
    return "invalid"
