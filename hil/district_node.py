"""The district-node double of the HIL rig: a TEST FIXTURE that serves a generated chain.

It serves a chain directory written by ``appliance-hil make-chain`` (:mod:`hil.chain`) over
the HTTP API of ledger protocol v1 §7 (canonical CBOR bodies, ``application/cbor``),
appends blocks with the transactions posted to it, optionally announces itself by mDNS on
loopback, and can misbehave in the ways a light client must survive. It is written from the
protocol page alone and never imports ``appliance.node``: the light node and this double are
two independent implementations, and their agreement is the interop test. It uses
``appliance.wire`` (canonical CBOR), ``appliance.gm`` (hashes), ``hil.chain`` and
``hil.ledger_rules`` (the §6 rules).

**It is not a ledger node**: no consensus, no persistence of the pending pool, the
validators' private keys are read from ``chain.db`` in the clear, and it signs whatever the
misbehaviour needs. Never expose it outside a test rig.

Responses (§7; every body canonical CBOR; errors ``{"error": code, "message": text}``):

- ``GET /v1/info`` -> ``{chain_id, protocol: 1, height, tip_id, genesis_id, peer_id,
  district, software}``; ``peer_id`` = SM3 of this node's own SM2 public key (derived from
  ``peer_key_seed``), ``software`` says TEST FIXTURE (and names an active misbehaviour).
- ``GET /v1/headers?from=H&count=N`` (``from`` required, ``count`` 1..1000, default 1000;
  decimal digits only, else 400 ``bad_request``; 404 ``not_found`` when H > tip) ->
  ``{headers, commits, validator_sets}``. The range is H .. min(H+N-1, tip), then made to end
  on a height that has a commit (commits may be sparse, ``--commit-every``):

  * if the range holds a commit height, it is cut back to the last one (fewer headers);
  * if it holds none, it is served as requested, without a commit for its last header: a
    client has to join it with the next response. It is never extended past ``count``.

  ``commits``: for every set-change header in the range (``next_validators_hash !=
  validators_hash``) and for the last header, ascending, no duplicates. ``validator_sets``
  ascending by height, each ``{"height": h, "validators": set}`` meaning "this set signs
  height h" (as ``/v1/validators/h``): one entry at ``from`` (the set that signs the first
  header), and one at ``c + 1`` for each set-change header c in the range (the new set; for
  c = the last header this entry lies one past the range). Each entry's set signs every
  height from its own up to the next entry's, so together they cover the signer of every
  header in the range, in particular of each set-change header and of the last header.
- ``GET /v1/commits/{h}`` -> commit; 404 ``not_found`` if h has none (sparse) or h > tip.
- ``GET /v1/validators/{h}`` -> ``{height, validators}`` for 0 <= h <= tip + 1 (tip + 1:
  the set named by the tip's ``next_validators_hash``); else 404.
- ``GET /v1/tx/{tx_id hex}`` -> ``{tx, height, proof: {leaf_index, tree_size, path}}``;
  404 ``not_found`` (also for a tx still pending); 400 for a malformed id.
- ``GET /v1/lookup/{digest hex}`` -> ``{tx_ids}`` in chain order (empty list when none).
- ``POST /v1/tx`` (signed_tx, <= 64 KiB, ``Content-Type: application/cbor``) -> 202
  ``{tx_id}``; 413 ``too_large``, 415 ``unsupported_media_type``, 400 with the code of the
  first §6 rule the transaction breaks (:mod:`hil.ledger_rules`, checked in the order
  ``bad_tx``, ``bad_signature``, ``unknown_sender``, ``duplicate``, ``duplicate_matter``,
  ``bad_reference``; the message starts with the rule's name), 503 ``busy`` (pending pool
  full). ``now`` is the node's clock (``clock_ms``); the admins are those of the chain
  directory's trust anchor. References resolve to the chain and the pending pool (license
  deposits and revoked authorizations must be in a block); sessions and ``(pad,
  matter_id)`` pairs are indexed from the chain, read incrementally before each check (so a
  node serving another node's chain directory sees what that node appends), and from the
  pending pool. ``share_state_with`` makes nodes on one chain directory share the pool and
  the indexes.
- ``GET /v1/wait?height=H&timeout_ms=T`` (T 0..30000, default 30000) -> ``{height}`` (the
  tip) as soon as the tip is >= H, or when T ms have passed.

Bodies: the stored header, commit, validator-set and signed-tx bytes are canonical CBOR
(:mod:`hil.chain` writes them with ``wire.encode``) and are spliced into the response as they
are (:class:`_Raw`, :func:`_encode`), not decoded and re-encoded: the same bytes, at a small
fraction of the CPU (it bounded the end-to-end header sync benchmark).

Block production: every ``block_interval_ms`` (default 1000; 0 disables production) the
pending transactions (at most 1000, in arrival order) become block tip+1 through
:meth:`hil.chain.Chain.append_block`, which signs its commit; the block's timestamp is the
node's clock (never below the tip's). With ``empty_blocks`` an empty
block is appended when nothing is pending, so the chain keeps growing; without it (the
default) the chain only grows when something was posted.

Misbehaviours (``MODE[@HEIGHT]``; HEIGHT defaults to 1 for ``wrong-link``, ``set-hijack``
and ``equivocate``, whose height 0 is the trust anchor, and to 0 for the others). Signature
bytes aside (SM2 and ECDSA signing is randomised), each is deterministic:

- ``forge-commit``: every commit served for a height >= HEIGHT keeps its height, block_id and
  indices but each signature is ``d || SM3(d)`` with ``d = SM3(enc(["hil forge-commit",
  height, index]))``.
- ``wrong-link``: a forked chain from HEIGHT on. Header HEIGHT gets ``prev_hash =
  SM3(b"hil wrong-link" || true prev_hash)``; each later header is re-linked to the forked
  one before it; every commit for a height >= HEIGHT is re-signed by the real validators
  over the forked block_id (and HEIGHT gets one even if the chain has none there). So the
  one defect is the link at HEIGHT.
- ``set-hijack``: a forked chain from HEIGHT on in which a set E of fresh keys takes over:
  header HEIGHT keeps ``validators_hash`` but announces ``next_validators_hash = H(enc(E))``
  (a set change), later headers carry E as both hashes, headers are re-linked, and every
  commit for a height >= HEIGHT (HEIGHT always gets one) is signed by E only, so the change
  is certified only by the new set. E has the chain's validator count and algs, power 1,
  keys ``derive_key("hil district-node set-hijack/" + seed, "validator", i, alg)``.
  ``/v1/validators/h`` and ``validator_sets`` give E for h > HEIGHT.
- ``equivocate``: a forked chain from HEIGHT on: header HEIGHT has ``timestamp + 1``
  (a conflicting block at that height, linked to the real HEIGHT-1), later headers are
  re-linked (timestamps kept monotonic), and every commit for a height >= HEIGHT (HEIGHT
  always gets one) is signed by the real validators of that height over the forked block_id.
  Together with an honest node this gives two valid commits for different block_ids.
- ``bad-proof``: ``/v1/tx`` for a tx at a height >= HEIGHT serves ``path[0]`` replaced by
  ``SM3(b"hil bad-proof" || path[0])``, or, for a one-tx block (empty path), the path
  ``[SM3(b"hil bad-proof" || tx_id)]`` (an extra element).
- ``garbage``: the body becomes :data:`GARBAGE_BODY` (starts with 0xff: not CBOR), same
  status and content type.
- ``oversize``: status 200, ``application/cbor``, no Content-Length (chunked), a body of
  :data:`OVERSIZE_BYTES` (a CBOR byte-string head announcing 9 MiB, then zeros), written in
  64 KiB chunks; it stops when the client goes away.
- ``slow``: the honest body, with an honest Content-Length, written :data:`SLOW_CHUNK` bytes
  every :data:`SLOW_PERIOD_S` seconds (8 bytes/s).
- ``withhold``: ``/v1/info`` and ``/v1/wait`` report the real tip, but nothing past HEIGHT
  is served: ``/v1/headers`` ranges stop at HEIGHT (and ``from`` > HEIGHT gets 200 with
  three empty lists), ``/v1/commits`` and ``/v1/validators`` of a height > HEIGHT and
  ``/v1/tx`` of a tx above HEIGHT are 404, ``/v1/lookup`` leaves such txs out.

``garbage``, ``oversize`` and ``slow`` affect every response (errors included) without
``@HEIGHT``; with it, only responses whose data reaches HEIGHT: ``/v1/info`` (its tip),
``/v1/headers`` (its last header), ``/v1/commits|validators/h`` (h), ``/v1/tx`` (the tx's
height), ``/v1/lookup`` (the highest matching tx), ``/v1/wait`` (the height answered).

Python API: :class:`DistrictNode` (in this event loop) and :class:`DistrictNodeProcess`
(the CLI as a subprocess, for tests). The CLI is ``appliance-hil district-node``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import re
import signal
import socket
import sqlite3
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from appliance import wire
from appliance.gm import sm3
from appliance.httpbody import read_capped
from hil import chain as hc
from hil import ledger_rules as lr
from hil.process import FixtureProcess, serve_until_stopped

__all__ = [
    "DEFAULT_DISTRICT", "DistrictNode", "DistrictNodeProcess", "GARBAGE_BODY", "MODES",
    "Misbehaviour", "OVERSIZE_BYTES", "PROTOCOL", "SERVICE_TYPE", "SLOW_CHUNK", "SLOW_PERIOD_S",
    "SOFTWARE", "hijack_keys",
]

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVICE_TYPE = "_gov-ledger._tcp.local."
PROTOCOL = 1
SOFTWARE = "appliance-hil district-node/1 (TEST FIXTURE, not a ledger node)"
DEFAULT_DISTRICT = "hil-district"
MAX_HEADERS = 1000  # §8 headers per response
MAX_TX_BYTES = lr.MAX_TX_BYTES  # §8 signed_tx
MAX_WAIT_MS = 30_000
MAX_PENDING = 10_000
MAX_TXS_PER_BLOCK = 1000
CBOR = "application/cbor"

MODES = ("forge-commit", "wrong-link", "set-hijack", "equivocate", "bad-proof", "garbage",
         "oversize", "slow", "withhold")
_FORK_MODES = ("wrong-link", "set-hijack", "equivocate")
_TRANSPORT_MODES = ("garbage", "oversize", "slow")
GARBAGE_BODY = b"\xff\xfe hil district-node misbehave=garbage: this body is not CBOR \x00\xff"
OVERSIZE_BYTES = 9 * 1024 * 1024
_OVERSIZE_HEAD = b"\x5a" + OVERSIZE_BYTES.to_bytes(4, "big")  # bytes(9 MiB) head
_OVERSIZE_CHUNK = 64 * 1024
SLOW_CHUNK = 4
SLOW_PERIOD_S = 0.5
_SHUTDOWN_TIMEOUT_S = 2.0

_UINT = re.compile(r"[0-9]{1,19}")
_HEX32 = re.compile(r"[0-9a-fA-F]{64}")


# -- misbehaviour spec ----------------------------------------------------------------------


@dataclass(frozen=True)
class Misbehaviour:
    """``MODE[@HEIGHT]``; ``height`` None means "from the start" (see :attr:`start`)."""

    mode: str
    height: int | None = None

    @classmethod
    def parse(cls, text: str) -> Misbehaviour:
        mode, sep, rest = text.strip().partition("@")
        if mode not in MODES:
            raise ValueError(f"misbehaviour {mode!r}: choose one of {', '.join(MODES)}")
        if not sep:
            return cls(mode)
        if not _UINT.fullmatch(rest):
            raise ValueError(f"misbehaviour height {rest!r} is not a non-negative integer")
        return cls(mode, int(rest))

    @property
    def start(self) -> int:
        """The first height affected."""
        if self.height is not None:
            return self.height
        return 1 if self.mode in _FORK_MODES else 0

    def __str__(self) -> str:
        return self.mode if self.height is None else f"{self.mode}@{self.height}"


# -- views of the chain: honest, forged commits, forks ----------------------------------------


class _View:
    """What the node serves, read from the chain (the honest view)."""

    def __init__(self, chain: hc.Chain) -> None:
        self.chain = chain

    @property
    def tip(self) -> int:
        return self.chain.tip_height

    def header(self, height: int) -> bytes:
        return self.chain.header(height)

    def headers(self, start: int, count: int) -> list[bytes]:
        return self.chain.headers(start, count)

    def block_id(self, height: int) -> bytes:
        return self.chain.block_id(height)

    def commit(self, height: int) -> bytes | None:
        return self.chain.commit(height)

    def commit_heights(self, start: int, end: int) -> list[int]:
        return self.chain.commit_heights(start, end)

    def validator_set(self, height: int) -> bytes:
        """enc(set that signs ``height``), 0 <= height <= tip + 1; KeyError otherwise."""
        return self.chain.validator_set_for(height)


def _forged_signature(height: int, index: int) -> bytes:
    d = sm3.digest(wire.encode(["hil forge-commit", height, index]))
    return d + sm3.digest(d)


class _ForgedCommits(_View):
    def __init__(self, chain: hc.Chain, start: int) -> None:
        super().__init__(chain)
        self.start = start

    def commit(self, height: int) -> bytes | None:
        raw = super().commit(height)
        if raw is None or height < self.start:
            return raw
        commit = wire.decode(raw)
        commit["signatures"] = [{"index": s["index"],
                                 "signature": _forged_signature(height, s["index"])}
                                for s in commit["signatures"]]
        return wire.encode(commit)


def _vote(chain_id: str, height: int, block_id: bytes) -> bytes:
    return wire.encode({"type": "commit", "chain_id": chain_id, "height": height,
                        "block_id": block_id})


def _set_cbor(keys: list[hc.Key]) -> bytes:
    return wire.encode([{"alg": k.alg, "public_key": k.public_key, "power": k.power or 1}
                        for k in keys])


def hijack_keys(params: hc.ChainParams) -> list[hc.Key]:
    """The fresh validator set E of ``set-hijack`` for a chain, in set order (by peer_id)."""
    seed = "hil district-node set-hijack/" + params.seed
    keys = []
    for i in range(params.validators):
        alg = hc.ALGS[i % 2] if params.alg == "mixed" else params.alg
        keys.append(hc.derive_key(seed, hc.ROLE_VALIDATOR, i, alg, label=f"hijacker-{i}",
                                  power=1))
    return sorted(keys, key=lambda k: k.peer_id)


class _Fork(_View):
    """A forked chain from ``start`` on: headers transformed and re-linked, commits re-signed.

    Forked headers are computed lazily in height order and cached (the real header of a
    height never changes once written); commits are signed on first request and cached.
    """

    def __init__(self, chain: hc.Chain, mode: str, start: int) -> None:
        super().__init__(chain)
        self.mode = mode
        self.start = start
        self._headers: dict[int, bytes] = {}
        self._ids: dict[int, bytes] = {}
        self._timestamps: dict[int, int] = {}
        self._commits: dict[int, bytes] = {}
        self._keys: dict[bytes, hc.Key] = {}
        self.hijack: list[hc.Key] = hijack_keys(chain.params) if mode == "set-hijack" else []
        self.hijack_cbor = _set_cbor(self.hijack) if self.hijack else b""
        self.hijack_hash = sm3.digest(self.hijack_cbor) if self.hijack else b""

    def _extend(self, height: int) -> None:
        if height < self.start or height in self._headers:
            return
        if height > self.chain.tip_height:
            raise KeyError(height)
        k = max(self._headers, default=self.start - 1) + 1
        for h in range(k, height + 1):
            d = wire.decode(self.chain.header(h))
            if h > 0:
                d["prev_hash"] = self.block_id(h - 1)
            if h > self.start:
                d["timestamp"] = max(d["timestamp"], self._timestamps[h - 1])
            if h == self.start:
                if self.mode == "wrong-link":
                    d["prev_hash"] = sm3.digest(b"hil wrong-link" + d["prev_hash"])
                elif self.mode == "equivocate":
                    d["timestamp"] += 1
                elif self.mode == "set-hijack":
                    d["next_validators_hash"] = self.hijack_hash
            elif self.mode == "set-hijack":
                d["validators_hash"] = d["next_validators_hash"] = self.hijack_hash
            raw = wire.encode(d)
            self._headers[h] = raw
            self._ids[h] = sm3.digest(raw)
            self._timestamps[h] = d["timestamp"]

    def header(self, height: int) -> bytes:
        if height < self.start:
            return self.chain.header(height)
        self._extend(height)
        return self._headers[height]

    def headers(self, start: int, count: int) -> list[bytes]:
        end = min(start + count - 1, self.chain.tip_height)
        return [self.header(h) for h in range(max(start, 0), end + 1)]

    def block_id(self, height: int) -> bytes:
        if height < self.start:
            return self.chain.block_id(height)
        self._extend(height)
        return self._ids[height]

    def commit_heights(self, start: int, end: int) -> list[int]:
        heights = set(self.chain.commit_heights(start, end))
        if self.mode != "wrong-link" and start <= self.start <= min(end, self.chain.tip_height):
            heights.add(self.start)
        return sorted(heights)

    def _signers(self, height: int) -> list[hc.Key]:
        if self.mode == "set-hijack":
            return self.hijack
        members = wire.decode(self.chain.validator_set_for(height))
        if any(m["public_key"] not in self._keys for m in members):
            self._keys = {k.public_key: k for k in self.chain.keys(hc.ROLE_VALIDATOR)}
        return [self._keys[m["public_key"]] for m in members]

    def commit(self, height: int) -> bytes | None:
        # wrong-link: the validators never signed the fork, so the commits served are the real
        # chain's, which certify other block_ids (re-signing would make it an equivocation).
        if height < self.start or self.mode == "wrong-link":
            return self.chain.commit(height)
        if height > self.chain.tip_height:
            return None
        if height != self.start and self.chain.commit(height) is None:
            return None
        cached = self._commits.get(height)
        if cached is None:
            block_id = self.block_id(height)
            vote = _vote(self.chain.chain_id, height, block_id)
            sigs = [{"index": i, "signature": hc.sign(key, vote)}
                    for i, key in enumerate(self._signers(height))]
            cached = wire.encode({"height": height, "block_id": block_id, "signatures": sigs})
            self._commits[height] = cached
        return cached

    def validator_set(self, height: int) -> bytes:
        if self.mode == "set-hijack" and height > self.start:
            if height > self.chain.tip_height + 1:
                raise KeyError(height)
            return self.hijack_cbor
        return self.chain.validator_set_for(height)


def _make_view(chain: hc.Chain, misbehave: Misbehaviour | None) -> _View:
    if misbehave is None:
        return _View(chain)
    if misbehave.mode == "forge-commit":
        return _ForgedCommits(chain, misbehave.start)
    if misbehave.mode in _FORK_MODES:
        return _Fork(chain, misbehave.mode, misbehave.start)
    return _View(chain)


# -- transaction checks: the rules, the pool and the indexes --------------------------------


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


_INDEX_TAGS = (wire.encode("license.authorize"), wire.encode("authorization.revoke"))


class _SharedState:
    """What nodes serving one chain directory share (:class:`DistrictNode`'s
    ``share_state_with``): the pending pool, the batch being appended, the session and
    matter indexes, the rules (with their cache) and the block-production lock.

    The indexes cover the chain (read incrementally: rows of chain.db are only appended) and
    the pending pool (entries added on admission, removed if their batch is dropped).
    """

    def __init__(self, chain: hc.Chain, rules: lr.LedgerRules) -> None:
        self.chain_dir = chain.path.resolve()
        self.chain_id = chain.chain_id
        self.rules = rules
        self.pending: dict[bytes, tuple[bytes, dict]] = {}  # tx_id -> (CBOR, signed_tx)
        self.inflight: dict[bytes, tuple[bytes, dict]] = {}  # the batch being appended
        self.sessions: dict[bytes, bytes] = {}  # session -> tx_id
        self.matters: dict[tuple[bytes, bytes], bytes] = {}  # (pad, matter_id) -> tx_id
        self.read_to = 0  # chain.db txs rowid up to which the indexes are read
        self.produce_lock = asyncio.Lock()

    def held(self, tx_id: bytes) -> tuple[bytes, dict] | None:
        return self.pending.get(tx_id) or self.inflight.get(tx_id)

    def refresh(self, chain: hc.Chain) -> None:
        """Index the license.authorize and authorization.revoke txs stored since last time
        (by whichever node appended them)."""
        self.read_to, rows = chain.txs_after(self.read_to, _INDEX_TAGS)
        for cbor in rows:
            with contextlib.suppress(wire.WireError, KeyError, TypeError, AttributeError):
                tx = wire.decode(cbor)
                self.index(lr.tx_id_of(tx), tx)

    def index(self, tx_id: bytes, tx: dict) -> None:
        body = tx["body"]
        if body["type"] not in ("license.authorize", "authorization.revoke"):
            return
        data = body["data"]
        self.sessions.setdefault(data["session"], tx_id)
        if body["type"] == "license.authorize":
            matter = data["matter"]["body"]
            self.matters.setdefault((matter["pad"], matter["matter_id"]), tx_id)

    def admit(self, admitted: lr.Admitted, raw: bytes, tx: dict) -> None:
        self.pending[admitted.tx_id] = (raw, tx)
        if admitted.session is not None:
            self.sessions.setdefault(admitted.session, admitted.tx_id)
        if admitted.matter is not None:
            self.matters.setdefault(admitted.matter, admitted.tx_id)

    def forget(self, tx_ids: set[bytes]) -> None:
        """Drop the index entries of txs that will never be in a block."""
        for index in (self.sessions, self.matters):
            for key in [k for k, v in index.items() if v in tx_ids]:
                del index[key]


class _LedgerView:
    """The rules' view (:class:`hil.ledger_rules.LedgerState`) of one node's chain and the
    shared pool."""

    def __init__(self, state: _SharedState, chain: hc.Chain) -> None:
        self.state, self.chain = state, chain

    def find(self, tx_id: bytes) -> lr.Found | None:
        held = self.state.held(tx_id)
        if held is not None:
            return lr.Found(held[1], None)
        try:
            raw, height, _ = self.chain.tx(tx_id)
        except KeyError:
            return None
        return lr.Found(wire.decode(raw), self.chain.timestamp(height))

    def session_used(self, session: bytes) -> bool:
        return session in self.state.sessions

    def matter_used(self, pad: bytes, matter_id: bytes) -> bool:
        return (pad, matter_id) in self.state.matters


# -- the server -------------------------------------------------------------------------------


class _Raw(bytes):
    """The canonical CBOR of one item, spliced into a response body as it is.

    For items read from the chain store (headers, commits, validator sets, signed txs):
    :mod:`hil.chain` writes every one of them with ``wire.encode``, so they are canonical,
    and decoding and re-encoding them would give the same bytes at a high CPU cost (it
    capped the end-to-end header sync benchmark). ``wire.encode`` refuses this subclass, so
    a tree holding one can only be encoded by :func:`_encode`.
    """

    __slots__ = ()


_HEAD_MAX = ((24, 0, 0), (256, 24, 1), (65536, 25, 2), (2**32, 26, 4), (2**64, 27, 8))


def _head(major: int, n: int) -> bytes:
    """The shortest-form CBOR head (RFC 8949 §4.2.1) of major type ``major``, argument n."""
    for bound, info, size in _HEAD_MAX:
        if n < bound:
            if size == 0:
                return bytes((major << 5 | n,))
            return bytes((major << 5 | info,)) + n.to_bytes(size, "big")
    raise wire.WireError("int_range", "length beyond 2**64 - 1")


def _encode(obj: Any) -> bytes:
    """Canonical CBOR of ``obj``, whose tree may hold :class:`_Raw` items (spliced as they
    are): the same bytes as ``wire.encode`` of the tree with each _Raw replaced by its
    decoded item. Containers are written here, every other leaf by ``wire.encode``."""
    out = bytearray()
    _encode_into(obj, out)
    return bytes(out)


def _encode_into(obj: Any, out: bytearray) -> None:
    kind = type(obj)
    if kind is _Raw:
        out += obj
    elif kind is list or kind is tuple:
        out += _head(4, len(obj))
        for item in obj:
            _encode_into(item, out)
    elif kind is dict:
        # Keys are text of at most 23 bytes (checked by wire.encode): the one-byte head
        # carries the length, so bytewise order of the encoded keys is canonical order.
        keys = sorted(((wire.encode(key), key) for key in obj), key=lambda pair: pair[0])
        for encoded, key in keys:
            if type(key) is not str or len(encoded) > 1 + wire.MAX_KEY_BYTES:
                raise wire.WireError("bad_key", f"map key {key!r}")
        out += _head(5, len(keys))
        for encoded, key in keys:
            out += encoded
            _encode_into(obj[key], out)
    else:
        out += wire.encode(obj)


def _plain(obj: Any) -> Any:
    """``obj`` with every :class:`_Raw` item decoded (the tree ``wire.encode`` accepts)."""
    kind = type(obj)
    if kind is _Raw:
        return wire.decode(obj)
    if kind is list or kind is tuple:
        return [_plain(item) for item in obj]
    if kind is dict:
        return {key: _plain(value) for key, value in obj.items()}
    return obj


# A header (§2) is a canonical map whose two longest keys sort last: its encoding ends with
# validators_hash and next_validators_hash, each a 32-byte string.
_VH_KEY = wire.encode("validators_hash") + b"\x58\x20"
_NVH_KEY = wire.encode("next_validators_hash") + b"\x58\x20"
_NVH_AT = -32 - len(_NVH_KEY)
_VH_AT = _NVH_AT - 32 - len(_VH_KEY)


def _set_hashes(header: bytes) -> tuple[bytes, bytes]:
    """(validators_hash, next_validators_hash) of a header's canonical CBOR, sliced from its
    tail; decoded instead if the tail is not the expected one (then not a §2 header)."""
    if header[_NVH_AT:-32] == _NVH_KEY and header[_VH_AT:_NVH_AT - 32] == _VH_KEY \
            and header[:1] == b"\xa8":
        return header[_VH_AT + len(_VH_KEY):_NVH_AT], header[-32:]
    decoded = wire.decode(header)
    return decoded["validators_hash"], decoded["next_validators_hash"]


class _Reply:
    """A response: status, body tree (may hold :class:`_Raw` items), and for ``@HEIGHT``
    the highest height the data reaches."""

    __slots__ = ("_body", "height", "status", "tree")

    def __init__(self, status: int, tree: Any, height: int | None = None) -> None:
        self.status = status
        self.tree = tree
        self.height = height
        self._body: bytes | None = None

    @property
    def body(self) -> bytes:
        """The canonical CBOR body (stored items spliced, not re-encoded)."""
        if self._body is None:
            self._body = _encode(self.tree)
        return self._body

    @property
    def obj(self) -> Any:
        """The body as plain objects (slow: decodes the spliced items)."""
        return _plain(self.tree)


def _stderr_log(line: str) -> None:
    print(f"district-node: {line}", file=sys.stderr, flush=True)


def _uint_param(query: Any, name: str, default: int | None = None) -> int:
    values = query.getall(name, [])
    if not values:
        if default is None:
            raise _ApiError(400, "bad_request", f"missing query parameter {name!r}")
        return default
    if len(values) > 1:
        raise _ApiError(400, "bad_request", f"query parameter {name!r} given twice")
    if not _UINT.fullmatch(values[0]):
        raise _ApiError(400, "bad_request", f"{name} must be a non-negative decimal integer")
    return int(values[0])


def _path_uint(text: str, name: str) -> int:
    if not _UINT.fullmatch(text):
        raise _ApiError(400, "bad_request", f"{name} must be a non-negative decimal integer")
    return int(text)


def _path_hex32(text: str, name: str) -> bytes:
    if not _HEX32.fullmatch(text):
        raise _ApiError(400, "bad_request", f"{name} must be 64 hex digits")
    return bytes.fromhex(text)


class DistrictNode:
    """The district-node double in the running event loop::

        node = DistrictNode(chain_dir, port=0, block_interval_ms=200)
        url = await node.start()      # "http://127.0.0.1:PORT"
        ...
        await node.stop()

    or ``async with DistrictNode(...) as node:``. ``misbehave`` is a
    :class:`Misbehaviour` or its text (``"withhold@10"``). ``log`` gets one line per request
    and per event (default: stderr). The chain directory is opened for writing (blocks are
    appended to it): give each node its own copy, or share one between nodes with
    ``share_state_with``.

    ``share_state_with=other``: this node serves ``other``'s chain directory (the same
    directory is required) and shares its pending pool, its session and matter indexes and
    its block-production lock: a transaction accepted by either is pending in both and in
    the next block either produces, and neither accepts what the other already holds. Make
    blocks with one of them (``block_interval_ms=0`` on the others): two doubles each making
    blocks from copies of one chain would fork it.

    ``clock_ms``: the node's time in ms (default: the system clock), the ``now`` of the §6
    rules at ``POST /v1/tx``.
    """

    def __init__(self, chain_dir: str | os.PathLike[str], *, host: str = "127.0.0.1",
                 port: int = 0, district: str = DEFAULT_DISTRICT, block_interval_ms: int = 1000,
                 empty_blocks: bool = False, misbehave: Misbehaviour | str | None = None,
                 peer_key_seed: str | None = None, advertise: bool = False,
                 log: Callable[[str], None] | None = None,
                 share_state_with: DistrictNode | None = None,
                 clock_ms: Callable[[], int] | None = None) -> None:
        if not 1 <= len(district.encode("utf-8")) <= 64:
            raise ValueError("district must be 1..64 UTF-8 bytes")
        if block_interval_ms < 0:
            raise ValueError("block_interval_ms must be >= 0")
        self.chain_dir = pathlib.Path(chain_dir)
        self.host = host
        self.requested_port = port
        self.district = district
        self.block_interval_ms = block_interval_ms
        self.empty_blocks = empty_blocks
        self.misbehave = (Misbehaviour.parse(misbehave) if isinstance(misbehave, str)
                          else misbehave)
        self.advertise = advertise
        self.log = log or _stderr_log
        self.chain = hc.Chain.open(self.chain_dir)
        try:
            self._state = self._shared_state(share_state_with)
        except BaseException:
            self.chain.close()
            raise
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.chain_id = self.chain.chain_id
        self.peer_key = hc.derive_key(peer_key_seed if peer_key_seed is not None
                                      else f"{self.chain_id}/{district}",
                                      "district-node", 0, "sm2", label="district-node")
        self.peer_id = self.peer_key.peer_id
        self.view = _make_view(self.chain, self.misbehave)
        self.software = SOFTWARE if self.misbehave is None else \
            f"{SOFTWARE} misbehave={self.misbehave}"
        self.port = 0
        self.url = ""
        self.blocks_produced = 0
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping: asyncio.Event | None = None
        self._tip_changed: asyncio.Event | None = None
        self._zeroconf: Any = None
        self._service: Any = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        """Serve; return the URL. With ``advertise``, registers the mDNS service first."""
        self._stopping = asyncio.Event()
        self._tip_changed = asyncio.Event()
        app = web.Application(middlewares=[self._middleware])
        routes = [
            ("GET", "/v1/info", self._info),
            ("GET", "/v1/headers", self._headers),
            ("GET", "/v1/commits/{height}", self._commit),
            ("GET", "/v1/validators/{height}", self._validators),
            ("GET", "/v1/tx/{tx_id}", self._tx),
            ("GET", "/v1/lookup/{digest}", self._lookup),
            ("POST", "/v1/tx", self._post_tx),
            ("GET", "/v1/wait", self._wait),
        ]
        for method, path, fn in routes:
            app.router.add_route(method, path, self._wrap(fn))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        if self.block_interval_ms:
            self._tasks.append(asyncio.create_task(self._produce_loop()))
        if self.advertise:
            await self._register_mdns()
        self.log(f"serving {self.chain_dir} (chain {self.chain_id!r}, tip "
                 f"{self.chain.tip_height}) at {self.url}; peer_id {self.peer_id.hex()}; "
                 f"misbehave {self.misbehave or 'none'}; block interval "
                 f"{self.block_interval_ms} ms; TEST FIXTURE")
        return self.url

    async def stop(self) -> None:
        """Unregister mDNS, stop producing, end waits and trickles, close the server."""
        if self._stopping is not None:
            self._stopping.set()
        await self._unregister_mdns()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.chain.close()
        self.log("stopped")

    async def __aenter__(self) -> DistrictNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def pending(self) -> list[bytes]:
        """tx_ids accepted and not yet in a block, in arrival order (shared with the nodes of
        ``share_state_with``)."""
        return [*self._state.inflight, *self._state.pending]

    @property
    def rules(self) -> lr.LedgerRules:
        """The §6 rules this node admits transactions by (trust anchor of the chain dir)."""
        return self._state.rules

    def _shared_state(self, other: DistrictNode | None) -> _SharedState:
        if other is None:
            anchor = wire.decode(self.chain.trust_anchor())
            rules = lr.LedgerRules(self.chain.chain_id, lr.parse_admins(anchor))
            state = _SharedState(self.chain, rules)
            state.refresh(self.chain)
            return state
        if other._state.chain_dir != self.chain_dir.resolve():
            raise ValueError(f"share_state_with: {other.chain_dir} is another chain directory "
                             f"than {self.chain_dir}")
        return other._state

    # -- mDNS --------------------------------------------------------------------------------

    async def _register_mdns(self) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        peer_hex = self.peer_id.hex()
        instance = f"hil {self.district} {peer_hex[:8]}".encode()[:63].decode(
            "utf-8", errors="ignore")
        self._service = AsyncServiceInfo(
            SERVICE_TYPE, f"{instance}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton("127.0.0.1")], port=self.port,
            properties={"chain": self.chain_id, "proto": str(PROTOCOL),
                        "district": self.district, "peer": peer_hex},
            server=f"hil-district-{peer_hex[:12]}.local.")
        self._zeroconf = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        # Each call returns the broadcast as a second awaitable: wait for it too, so that
        # "ready" means announced and a goodbye is sent before the sockets close.
        await (await self._zeroconf.async_register_service(self._service,
                                                           allow_name_change=True))
        self.log(f"advertising {self._service.name} on 127.0.0.1 (chain={self.chain_id}, "
                 f"proto={PROTOCOL}, district={self.district}, peer={peer_hex})")

    async def _unregister_mdns(self) -> None:
        zc, self._zeroconf = self._zeroconf, None
        if zc is None:
            return
        try:
            if self._service is not None:
                await (await zc.async_unregister_service(self._service))
                self.log(f"unregistered {self._service.name}")
        finally:
            await zc.async_close()

    # -- block production --------------------------------------------------------------------

    async def _produce_loop(self) -> None:
        assert self._stopping is not None
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.block_interval_ms / 1000)
            if self._stopping.is_set():
                return
            if self._state.pending or self.empty_blocks:
                try:
                    await self.produce_block()
                except Exception as exc:  # keep serving; the log says why
                    self.log(f"block production failed: {exc!r}")

    async def produce_block(self) -> hc.AppendedBlock | None:
        """Append a block with (up to 1000 of) the pending txs now; None if nothing pending
        and not ``empty_blocks``. Used by the production loop; tests may call it directly."""
        assert self._tip_changed is not None
        state = self._state
        async with state.produce_lock:
            if not state.pending and not self.empty_blocks:
                return None
            ids = list(state.pending)[:MAX_TXS_PER_BLOCK]
            state.inflight = {i: state.pending.pop(i) for i in ids}
            timestamp = max(self.clock_ms(), self.chain.timestamp(self.chain.tip_height))
            try:
                block = await asyncio.to_thread(
                    self.chain.append_block, [state.inflight[i][0] for i in ids], timestamp)
            except ValueError as exc:  # not expected: every tx was checked; drop the batch
                self.log(f"append_block refused {len(ids)} txs, dropped: {exc}")
                state.forget(set(ids))
                return None
            finally:
                state.inflight = {}
            self.blocks_produced += 1
            self.log(f"block {block.height} {block.block_id.hex()[:16]} with "
                     f"{len(block.tx_ids)} txs")
            event, self._tip_changed = self._tip_changed, asyncio.Event()
            event.set()
            return block

    # -- HTTP plumbing -----------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]
                          ) -> web.StreamResponse:
        started = time.monotonic()
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # routing: unknown path or method
            code = {404: "not_found", 405: "method_not_allowed"}.get(
                exc.status, "bad_request" if exc.status < 500 else "internal")
            response = await self._respond(request, _Reply(
                exc.status, {"error": code, "message": exc.reason}))
        except Exception as exc:
            self.log("internal error: " + "".join(traceback.format_exception(exc)).strip())
            response = await self._respond(request, _Reply(
                500, {"error": "internal", "message": type(exc).__name__}))
        ms = (time.monotonic() - started) * 1000
        size = response.body_length if response.prepared else response.content_length
        self.log(f"{request.remote} {request.method} {request.path_qs} {response.status} "
                 f"{size or 0}B {ms:.0f}ms")
        return response

    def _wrap(self, fn: Callable[[web.Request], Any]) -> Callable[..., Any]:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                reply = await fn(request)
            except _ApiError as exc:
                reply = _Reply(exc.status, {"error": exc.code, "message": exc.message})
            return await self._respond(request, reply)
        return handler

    def _affected(self, reply: _Reply) -> str | None:
        m = self.misbehave
        if m is None or m.mode not in _TRANSPORT_MODES:
            return None
        if m.height is None or (reply.height is not None and reply.height >= m.height):
            return m.mode
        return None

    async def _respond(self, request: web.Request, reply: _Reply) -> web.StreamResponse:
        body = reply.body
        mode = self._affected(reply)
        if mode is None:
            return web.Response(status=reply.status, body=body, content_type=CBOR)
        if mode == "garbage":
            return web.Response(status=reply.status, body=GARBAGE_BODY, content_type=CBOR)
        response = web.StreamResponse(status=200 if mode == "oversize" else reply.status)
        response.content_type = CBOR
        if mode == "oversize":
            response.enable_chunked_encoding()
            chunks = self._oversize_chunks()
        else:
            response.content_length = len(body)
            chunks = self._slow_chunks(body)
        await response.prepare(request)
        sent = 0
        try:
            async for chunk in chunks:
                await response.write(chunk)
                sent += len(chunk)
            await response.write_eof()
        except ConnectionError as exc:
            # The client went away (or we are stopping): drop the connection, half-sent.
            self.log(f"{mode} response to {request.method} {request.path_qs} cut after "
                     f"{sent} bytes: {exc or type(exc).__name__}")
            if request.transport is not None:
                request.transport.close()
        return response

    async def _oversize_chunks(self) -> AsyncIterator[bytes]:
        yield _OVERSIZE_HEAD
        left = OVERSIZE_BYTES
        zeros = bytes(_OVERSIZE_CHUNK)
        while left > 0:
            if self._stopping is not None and self._stopping.is_set():
                raise ConnectionResetError("stopping")
            n = min(left, _OVERSIZE_CHUNK)
            yield zeros[:n]
            left -= n

    async def _slow_chunks(self, body: bytes) -> AsyncIterator[bytes]:
        assert self._stopping is not None
        for i in range(0, len(body), SLOW_CHUNK):
            if i:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), SLOW_PERIOD_S)
                if self._stopping.is_set():
                    raise ConnectionResetError("stopping")
            yield body[i:i + SLOW_CHUNK]

    # -- endpoints ---------------------------------------------------------------------------

    @property
    def _limit(self) -> int | None:
        """The highest height served under withhold, else None."""
        m = self.misbehave
        return m.start if m is not None and m.mode == "withhold" else None

    def _withheld(self, height: int) -> bool:
        limit = self._limit
        return limit is not None and height > limit

    async def _info(self, request: web.Request) -> _Reply:
        tip = self.view.tip
        return _Reply(200, {
            "chain_id": self.chain_id, "protocol": PROTOCOL, "height": tip,
            "tip_id": self.view.block_id(tip), "genesis_id": self.view.block_id(0),
            "peer_id": self.peer_id, "district": self.district, "software": self.software,
        }, tip)

    async def _headers(self, request: web.Request) -> _Reply:
        first = _uint_param(request.query, "from")
        count = _uint_param(request.query, "count", MAX_HEADERS)
        if not 1 <= count <= MAX_HEADERS:
            raise _ApiError(400, "bad_request", f"count must be 1..{MAX_HEADERS}")
        return self.headers_reply(first, count)

    def headers_reply(self, first: int, count: int) -> _Reply:
        """The ``/v1/headers?from=first&count=count`` reply (count already checked).

        The stored header, commit and validator-set bytes are spliced into the body as
        they are (:class:`_Raw`); the set changes are read from each header's last two
        fields (:func:`_set_hashes`), so no header is decoded on this path.
        """
        view = self.view
        tip = view.tip
        if first > tip:
            raise _ApiError(404, "not_found", f"from {first} is past the tip {tip}")
        limit = tip if self._limit is None else min(tip, self._limit)
        if first > limit:
            return _Reply(200, {"headers": [], "commits": [], "validator_sets": []}, None)
        last = min(first + count - 1, limit)
        in_range = view.commit_heights(first, last)
        if in_range:  # never more than asked (§7: "may return fewer")
            last = in_range[-1]
        raw = view.headers(first, last - first + 1)
        changes = []
        for height, header in enumerate(raw, first):
            validators_hash, next_validators_hash = _set_hashes(header)
            if next_validators_hash != validators_hash:
                changes.append(height)
        with_commit = set(in_range)  # every height in it is <= last
        commits = [_Raw(view.commit(h)) for h in sorted({*changes, last}) if h in with_commit]
        sets = [{"height": h, "validators": _Raw(view.validator_set(h))}
                for h in [first, *(c + 1 for c in changes)]]
        return _Reply(200, {"headers": [_Raw(h) for h in raw], "commits": commits,
                            "validator_sets": sets}, last)

    async def _commit(self, request: web.Request) -> _Reply:
        height = _path_uint(request.match_info["height"], "height")
        raw = None
        if height <= self.view.tip and not self._withheld(height):
            raw = self.view.commit(height)
        if raw is None:
            raise _ApiError(404, "not_found", f"no commit for height {height}")
        return _Reply(200, _Raw(raw), height)

    async def _validators(self, request: web.Request) -> _Reply:
        height = _path_uint(request.match_info["height"], "height")
        if height > self.view.tip + 1 or self._withheld(height):
            raise _ApiError(404, "not_found", f"no validator set for height {height}")
        return _Reply(200, {"height": height,
                            "validators": _Raw(self.view.validator_set(height))}, height)

    async def _tx(self, request: web.Request) -> _Reply:
        tx_id = _path_hex32(request.match_info["tx_id"], "tx_id")
        try:
            raw, height, _ = self.chain.tx(tx_id)
        except KeyError:
            raise _ApiError(404, "not_found", "no such transaction in the chain") from None
        if self._withheld(height):
            raise _ApiError(404, "not_found", "no such transaction in the chain")
        proof = self.chain.inclusion_proof(tx_id)
        m = self.misbehave
        if m is not None and m.mode == "bad-proof" and height >= m.start:
            path = list(proof["path"])
            if path:
                path[0] = sm3.digest(b"hil bad-proof" + path[0])
            else:
                path = [sm3.digest(b"hil bad-proof" + tx_id)]
            proof["path"] = path
        return _Reply(200, {"tx": _Raw(raw), "height": height, "proof": proof}, height)

    async def _lookup(self, request: web.Request) -> _Reply:
        digest = _path_hex32(request.match_info["digest"], "digest")
        found = [(tx_id, self.chain.tx(tx_id)[1]) for tx_id in self.chain.lookup(digest)]
        found = [(i, h) for i, h in found if not self._withheld(h)]
        return _Reply(200, {"tx_ids": [i for i, _ in found]},
                      max((h for _, h in found), default=None))

    async def _wait(self, request: web.Request) -> _Reply:
        height = _uint_param(request.query, "height")
        timeout_ms = _uint_param(request.query, "timeout_ms", MAX_WAIT_MS)
        if timeout_ms > MAX_WAIT_MS:
            raise _ApiError(400, "bad_request", f"timeout_ms must be 0..{MAX_WAIT_MS}")
        assert self._stopping is not None
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            tip = self.view.tip
            left = deadline - time.monotonic()
            if tip >= height or left <= 0 or self._stopping.is_set():
                return _Reply(200, {"height": tip}, tip)
            assert self._tip_changed is not None
            changed = asyncio.ensure_future(self._tip_changed.wait())
            stopping = asyncio.ensure_future(self._stopping.wait())
            try:
                # Woken by our own blocks at once; 0.5 s polls catch another appender.
                await asyncio.wait({changed, stopping}, timeout=min(left, 0.5),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                stopping.cancel()

    async def _post_tx(self, request: web.Request) -> _Reply:
        if request.content_type != CBOR:
            raise _ApiError(415, "unsupported_media_type", f"Content-Type must be {CBOR}")
        data = await read_capped(request, MAX_TX_BYTES)
        if data is None:
            raise _ApiError(413, "too_large", f"a signed_tx is at most {MAX_TX_BYTES} bytes")
        state = self._state
        raw = bytes(data)
        try:
            state.refresh(self.chain)
            admitted = state.rules.admit(raw, _LedgerView(state, self.chain), self.clock_ms())
        except lr.Refusal as exc:
            self.log(f"refused: {exc.code} {exc.message}")
            raise _ApiError(400, exc.code, exc.message) from None
        if len(state.pending) >= MAX_PENDING:
            raise _ApiError(503, "busy", "the pending pool is full")
        state.admit(admitted, raw, wire.decode(raw))
        self.log(f"accepted {admitted.type} {admitted.tx_id.hex()[:16]} "
                 f"({len(state.pending)} pending)")
        return _Reply(202, {"tx_id": admitted.tx_id}, None)


# -- the CLI ----------------------------------------------------------------------------------


def run_cli(chain_dir: str, *, host: str, port: int, district: str, block_interval_ms: int,
            empty_blocks: bool, misbehave: Misbehaviour | None, peer_key_seed: str | None,
            advertise: bool, exit_with_parent: bool = False) -> int:
    """``appliance-hil district-node``: serve until SIGTERM/SIGINT; exit status."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals: list[int] = []

        def on_signal(signum: int) -> None:
            signals.append(signum)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            node = DistrictNode(chain_dir, host=host, port=port, district=district,
                                block_interval_ms=block_interval_ms, empty_blocks=empty_blocks,
                                misbehave=misbehave, peer_key_seed=peer_key_seed,
                                advertise=advertise)
        except (OSError, ValueError, sqlite3.Error) as exc:
            _stderr_log(f"cannot start on {chain_dir}: {exc}")
            return 2
        try:
            url = await node.start()
        except Exception as exc:  # a busy port, mDNS sockets refused, ...
            _stderr_log(f"cannot serve on {host}:{port}: {exc!r}")
            await node.stop()
            return 1
        print(f"ready {url}", flush=True)
        await serve_until_stopped(stop, exit_with_parent=exit_with_parent, log=_stderr_log)
        if signals:
            _stderr_log(f"{signal.Signals(signals[0]).name}: stopping")
        await node.stop()
        return 0

    return asyncio.run(main())


class DistrictNodeProcess(FixtureProcess):
    """``appliance-hil district-node`` as a subprocess, for tests::

        with DistrictNodeProcess(chain_dir, misbehave="withhold@10") as node:
            urllib.request.urlopen(node.url + "/v1/info")

    Starts ``python -m hil.cli district-node --port 0 ...``, waits for its ``ready URL`` line
    and on exit stops it (:class:`hil.process.FixtureProcess`); its stderr (one line per
    request) is in :meth:`log_text`.
    """

    name = "district-node"

    def __init__(self, chain_dir: str | os.PathLike[str], *, host: str = "127.0.0.1",
                 port: int = 0, district: str | None = None,
                 block_interval_ms: int | None = None, empty_blocks: bool = False,
                 misbehave: Misbehaviour | str | None = None, peer_key_seed: str | None = None,
                 advertise: bool = False, ready_timeout: float = 30.0,
                 log_path: str | os.PathLike[str] | None = None) -> None:
        args = ["district-node", "--chain", str(chain_dir), "--host", host, "--port", str(port)]
        for flag, value in (("--district", district), ("--block-interval-ms", block_interval_ms),
                            ("--misbehave", misbehave), ("--peer-key-seed", peer_key_seed)):
            if value is not None:
                args += [flag, str(value)]
        if empty_blocks:
            args.append("--empty-blocks")
        if advertise:
            args.append("--advertise")
        super().__init__(args, ready_timeout=ready_timeout, log_path=log_path)
        self.url = ""

    def start(self) -> DistrictNodeProcess:
        super().start()
        self.url = self.ready_line.split(None, 1)[1].strip()
        return self
