"""The §6 (revision 2) transaction rules of the district-node double: sans-I/O.

Written from the ledger protocol page (``ledger-protocol.md`` §3, §5, §6, §8) alone, and never
importing ``appliance.node``: the terminal checks the same rules with its own code, and the
agreement of the two implementations is the interop test. It uses ``appliance.wire``
(canonical CBOR) and ``appliance.gm`` (SM3, SM2, ECDSA P-256) only.

:meth:`LedgerRules.admit` takes a signed_tx (its bytes, or the decoded map), a view of the
chain and the pending pool (:class:`LedgerState`) and the time, and either returns what the
transaction adds to the indexes (:class:`Admitted`) or raises :class:`Refusal`, whose
``code`` is the API error code of ``POST /v1/tx`` and whose ``rule`` names the broken rule
(the message starts with it). Checks run in phases, in this order, so that a transaction
breaking several rules always gets the code of the earliest phase:

1. ``bad_tx``: size, canonical CBOR, shape, types, text, the rules internal to the
   transaction and its embedded objects, and times;
2. ``bad_signature``: the transaction's signature, then every embedded object's;
3. ``unknown_sender``: a ``device.enroll`` not from an admin of the enrollment's district,
   an ``authorization.revoke`` without proofs not from an admin;
4. ``duplicate``: the tx_id, or a ``session`` already on the chain or pending;
5. ``duplicate_matter``: ``(pad, matter_id)`` already authorized;
6. ``bad_reference``: what needs the objects the transaction names (enrollments, deposits,
   the authorization being revoked); an admin revoking in another district than the
   matter's is ``unknown_sender``, found in this phase (it needs the references).

Decisions where the protocol page is silent (the terminal's code takes the same ones):

- Text: UTF-8, NFC, no Unicode Cc or Cf character, compared bytewise, 1..limit bytes
  (title 128, office and each agency 64, purpose 256, staff 32, any other text 1024).
- ``identifier_hash(text) = SM3(b"GOVID1:" + ASCII upper-cased text)``; non-ASCII refused.
- An enrollment E is usable for a key K, a role R at time T when it is a ``device.enroll``
  on the chain or pending, valid by the rules here (admin of its district included), with
  E.public_key == K, E.alg == the object's alg, E.role in R (and the office the rule
  names), and E.not_after > T. T is the admission time for everything a transaction embeds;
  a license deposit's issuer enrollment is judged at the deposit's block timestamp.
- License deposits and the authorization a revoke names must be in a block (not pending).
"""

from __future__ import annotations

import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

from appliance import wire
from appliance.gm import ecdsa, sm2, sm3
from appliance.gm.pure import ec

__all__ = [
    "ALGS", "AUDIT_HEAD", "CODES", "MAX_MATTER_BYTES", "MAX_SKEW_MS", "MAX_TX_BYTES", "ROLES",
    "Admin", "Admitted", "Found", "LedgerRules", "LedgerState", "Refusal", "check_text",
    "decode_tx", "identifier_hash", "parse_admins", "tx_id_of",
]

CODES = ("bad_tx", "bad_signature", "unknown_sender", "duplicate", "duplicate_matter",
         "bad_reference")
ALGS = ("sm2", "ecdsa-p256")
ROLES = ("kiosk", "pad", "issuer", "clerk", "identity")
ACTIONS = ("authorize", "revoke")
RESULTS = ("match", "no_match")
METHODS = ("id_card", "id_card+registration")
AUDIT_HEAD = "audit.head"

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
MAX_SKEW_MS = 60 * SECOND  # §5
MAX_ENROLL_MS = 400 * DAY
MAX_MATTER_LIFE_MS = 24 * HOUR
MAX_USE_MS = 90 * DAY
PROOF_WINDOW_MS = 5 * MINUTE  # attestation / confirmation issued_at before the tx
MAX_SCORE = 1000
MAX_TX_BYTES = 64 * 1024  # §8 signed_tx
MAX_MATTER_BYTES = 1200  # enc(signed_matter)
MAX_TEXT_BYTES = 1024  # §8
LIMIT_TITLE, LIMIT_OFFICE, LIMIT_PURPOSE, LIMIT_STAFF = 128, 64, 256, 32
LIMIT_CHAIN_ID = 64  # §3 header chain_id
MAX_AGENCIES, MAX_LICENSES = 16, 8
_MAX_UINT = 2**64 - 1
_VERIFY = {"sm2": sm2.verify, "ecdsa-p256": ecdsa.verify}
_CURVES = {"sm2": sm2.CURVE, "ecdsa-p256": ecdsa.CURVE}
_CACHE = 4096


# -- results and refusals ---------------------------------------------------------------------


class Refusal(ValueError):
    """A transaction refused: ``code`` (one of :data:`CODES`), ``rule`` (a short name of the
    broken rule, e.g. ``matter.expires_at``) and ``message`` (starts with the rule)."""

    def __init__(self, code: str, rule: str, text: str) -> None:
        self.code, self.rule = code, rule
        self.message = f"{rule}: {text}"
        super().__init__(self.message)


def _refuse(code: str, rule: str, text: str) -> NoReturn:
    raise Refusal(code, rule, text)


def _bad(rule: str, text: str) -> NoReturn:
    _refuse("bad_tx", rule, text)


def _bad_ref(rule: str, text: str) -> NoReturn:
    _refuse("bad_reference", rule, text)


@dataclass(frozen=True)
class Admitted:
    """What an admitted transaction adds to the node's indexes."""

    tx_id: bytes
    type: str
    session: bytes | None = None  # license.authorize, authorization.revoke
    matter: tuple[bytes, bytes] | None = None  # (pad, matter_id) of a license.authorize


@dataclass(frozen=True)
class Found:
    """A transaction the node holds: the decoded signed_tx, and the timestamp of its block
    (None while it is pending)."""

    tx: dict[str, Any]
    block_ms: int | None


class LedgerState(Protocol):
    """What the rules ask of the chain and the pending pool."""

    def find(self, tx_id: bytes) -> Found | None:
        """The transaction ``tx_id`` in a block or pending, else None."""

    def session_used(self, session: bytes) -> bool:
        """Whether a license.authorize or authorization.revoke with this session is on the
        chain or pending."""

    def matter_used(self, pad: bytes, matter_id: bytes) -> bool:
        """Whether a license.authorize of this (pad, matter_id) is on the chain or pending."""


@dataclass(frozen=True)
class Admin:
    """A district admin key of the trust anchor (§5)."""

    alg: str
    public_key: bytes
    district: str


def parse_admins(anchor: Mapping[str, Any]) -> tuple[Admin, ...]:
    """The ``admins`` of a decoded trust anchor (none when it omits them); ValueError for a
    malformed list."""
    admins = anchor.get("admins", [])
    if type(admins) is not list:
        raise ValueError("trust anchor admins must be a list")
    out = []
    for entry in admins:
        if type(entry) is not dict or set(entry) != {"alg", "public_key", "district"}:
            raise ValueError("trust anchor admin must be {alg, public_key, district}")
        try:
            _alg(entry["alg"], "admin.alg")
            _key_on_curve(entry["public_key"], entry["alg"], "admin.public_key")
            check_text(entry["district"], "admin.district")
        except Refusal as exc:
            raise ValueError(f"trust anchor: {exc.message}") from None
        out.append(Admin(entry["alg"], entry["public_key"], entry["district"]))
    return tuple(out)


# -- identifiers, text, values --------------------------------------------------------------


def identifier_hash(identifier: str) -> bytes:
    """``SM3(b"GOVID1:" || identifier in ASCII, letters upper-cased)`` (§6); ValueError for
    an empty or non-ASCII identifier."""
    if type(identifier) is not str or not identifier or not identifier.isascii():
        raise ValueError("an identifier is non-empty ASCII text")
    return sm3.digest(b"GOVID1:" + identifier.upper().encode("ascii"))


def tx_id_of(signed_tx: Mapping[str, Any]) -> bytes:
    """tx_id = SM3(enc(body)) (§3)."""
    return sm3.digest(wire.encode(signed_tx["body"]))


def check_text(value: Any, what: str, limit: int = MAX_TEXT_BYTES) -> str:
    """``value`` if it is text by §6 (UTF-8, NFC, no Cc or Cf, 1..limit bytes), else
    :class:`Refusal` ``bad_tx`` naming ``what``."""
    if type(value) is not str:
        _bad(what, "must be text")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        _bad(what, "is not valid UTF-8 (a lone surrogate)")
    if not 1 <= size <= limit:
        _bad(what, f"must be 1..{limit} UTF-8 bytes, not {size}")
    if not unicodedata.is_normalized("NFC", value):
        _bad(what, "is not in Unicode NFC")
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cf"):
            _bad(what, f"holds the control or format character U+{ord(ch):04X}")
    return value


def _bytes(size: int) -> Callable[[Any, str], Any]:
    def check(value: Any, what: str) -> Any:
        if type(value) is not bytes or len(value) != size:
            _bad(what, f"must be {size} bytes")
        return value
    return check


def _uint(value: Any, what: str, high: int = _MAX_UINT) -> int:
    if type(value) is not int or not 0 <= value <= high:
        _bad(what, f"must be an unsigned integer <= {high}")
    return value


def _text(limit: int = MAX_TEXT_BYTES) -> Callable[[Any, str], Any]:
    return lambda value, what: check_text(value, what, limit)


def _alg(value: Any, what: str) -> str:
    if value not in ALGS or type(value) is not str:
        _bad(what, f"must be one of {', '.join(ALGS)}")
    return value


def _key_on_curve(value: Any, alg: str, what: str) -> bytes:
    if type(value) is not bytes or len(value) != 65:
        _bad(what, "must be a 65-byte public key")
    try:
        ec.decode_point(_CURVES[alg], value)
    except ValueError:
        _bad(what, f"is not a point on the {alg} curve")
    return value


def _is_map(value: Any, what: str) -> dict[str, Any]:
    if type(value) is not dict:
        _bad(what, "must be a map")
    return value


_B16, _B32, _B64, _B65 = _bytes(16), _bytes(32), _bytes(64), _bytes(65)


def _fields(obj: Any, what: str, required: Mapping[str, Callable[[Any, str], Any]],
            optional: Mapping[str, Callable[[Any, str], Any]] | None = None) -> dict[str, Any]:
    """``obj`` if it is a map with exactly the required keys (and some optional ones), each
    passing its check; else bad_tx ``what.shape`` or ``what.KEY``."""
    obj = _is_map(obj, what)
    optional = optional or {}
    missing = sorted(set(required) - set(obj))
    if missing:
        _bad(f"{what}.shape", f"lacks {', '.join(missing)}")
    extra = sorted(map(str, set(obj) - set(required) - set(optional)))
    if extra:
        _bad(f"{what}.shape", f"has unknown keys {', '.join(extra)}")
    for key, check in (*required.items(), *optional.items()):
        if key in obj:
            check(obj[key], f"{what}.{key}")
    return obj


def decode_tx(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """A signed_tx's bytes decoded: at most 64 KiB, canonical CBOR, a map; else bad_tx."""
    if len(data) > MAX_TX_BYTES:
        _bad("tx.size", f"a signed_tx is at most {MAX_TX_BYTES} bytes")
    try:
        tx = wire.decode(bytes(data), MAX_TX_BYTES)
    except wire.WireError as exc:
        _bad("tx.cbor", f"not canonical CBOR ({exc.reason})")
    return _is_map(tx, "tx")


# -- the parsed transaction -------------------------------------------------------------------


@dataclass(frozen=True)
class _Signed:
    """A signed object (or the signed_tx): what it names, and its signature to check."""

    what: str
    body: dict[str, Any]
    alg: str
    public_key: bytes
    signature: bytes
    message: bytes  # enc(body)

    def verifies(self) -> bool:
        return _VERIFY[self.alg](self.public_key, self.message, self.signature)


@dataclass
class _Parsed:
    """A transaction after phase 1."""

    tx_id: bytes
    kind: str
    tx: _Signed
    data: dict[str, Any]
    signed: list[_Signed] = field(default_factory=list)  # embedded objects, in order
    matter: _Signed | None = None
    matter_digest: bytes = b""  # SM3(enc(signed_matter))
    proof: _Signed | None = None  # the attestation or the confirmation
    admin_form: bool = False  # authorization.revoke without proofs

    @property
    def timestamp(self) -> int:
        return self.tx.body["timestamp"]

    @property
    def sender(self) -> bytes:
        return self.tx.body["sender"]

    @property
    def session(self) -> bytes | None:
        """The session of a license.authorize or authorization.revoke (unique on chain)."""
        if self.kind in ("license.authorize", "authorization.revoke"):
            return self.data["session"]
        return None

    @property
    def matter_key(self) -> tuple[bytes, bytes] | None:
        """(pad, matter_id) of a license.authorize (unique on chain)."""
        if self.matter is None:
            return None
        return self.matter.body["pad"], self.matter.body["matter_id"]


def _signed(obj: Any, what: str) -> _Signed:
    obj = _fields(obj, what, {"body": _is_map, "alg": _alg, "public_key": _B65,
                              "signature": _B64})
    return _Signed(what, obj["body"], obj["alg"], obj["public_key"], obj["signature"],
                   wire.encode(obj["body"]))


_TX_BODY = {"chain_id": _text(LIMIT_CHAIN_ID), "type": _text(), "timestamp": _uint,
            "sender": _B32, "data": _is_map, "nonce": _B16}
_TX_BODY_OPTIONAL = {"recipient": _text(), "memo": _text()}

_ENROLL = {"terminal": _B32, "alg": _alg, "public_key": _B65, "district": _text(),
           "hall": _text(), "role": _text(), "not_after": _uint}
_ENROLL_OPTIONAL = {"office": _text(LIMIT_OFFICE), "staff": _text(LIMIT_STAFF),
                    "min_score": lambda v, w: _uint(v, w, MAX_SCORE)}
_OFFICE_REQUIRED = ("pad", "issuer", "clerk")  # optional for kiosk and identity

_DEPOSIT = {"digest": _B32, "kind": _text(), "enrollment": _B32}
_DEPOSIT_OPTIONAL = {"holder": _B32}


def _list_of(check: Callable[[Any, str], Any], low: int, high: int
             ) -> Callable[[Any, str], Any]:
    def checked(value: Any, what: str) -> Any:
        if type(value) is not list or not low <= len(value) <= high:
            _bad(what, f"must be a list of {low}..{high} items")
        for i, item in enumerate(value):
            check(item, f"{what}[{i}]")
        if len({wire.encode(item) for item in value}) != len(value):
            _bad(what, "must not repeat an item")
        return value
    return checked


_MATTER = {"matter_id": _B16, "title": _text(LIMIT_TITLE), "office": _text(LIMIT_OFFICE),
           "agencies": _list_of(_text(LIMIT_OFFICE), 1, MAX_AGENCIES),
           "purpose": _text(LIMIT_PURPOSE), "subject": _B32,
           "licenses": _list_of(_B32, 1, MAX_LICENSES), "issued_at": _uint,
           "expires_at": _uint, "use_until": _uint, "pad": _B32, "enrollment": _B32}
_MATTER_OPTIONAL = {"on_behalf_of": _B32}

_ATTESTATION = {"session": _B16, "capture_digest": _B32, "subject": _B32, "terminal": _B32,
                "action": _text(), "target": _B32, "result": _text(),
                "score": lambda v, w: _uint(v, w, MAX_SCORE), "issued_at": _uint,
                "service": _text(), "enrollment": _B32}
_ATTESTATION_OPTIONAL = {"represents": _B32}

_CONFIRMATION = {"session": _B16, "terminal": _B32, "action": _text(), "target": _B32,
                 "method": _text(), "issued_at": _uint, "enrollment": _B32}

_AUTHORIZE_BASE = {"matter": _is_map, "session": _B16, "terminal": _B32, "enrollment": _B32}
_REVOKE_BASE = {"authorization": _B32, "session": _B16}
_BY_FACE = {"capture_digest": _B32, "attestation": _is_map}
_BY_CLERK = {"confirmation": _is_map}


def _one_of(data: dict[str, Any], what: str, base: Mapping[str, Any],
            forms: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Check ``data`` against the form (base + extra keys) its keys select."""
    forms = list(forms)
    for extra in forms:
        if set(data) == set(base) | set(extra):
            return _fields(data, what, {**base, **extra})
    names = " or ".join("{" + ", ".join(sorted({*base, *extra})) + "}" for extra in forms)
    _bad(f"{what}.shape", f"must be exactly one of {names}")


# -- the rules --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Enrollment:
    tx_id: bytes
    data: dict[str, Any]


class LedgerRules:
    """The §6 rules for one chain::

        rules = LedgerRules(chain_id, parse_admins(anchor))
        admitted = rules.admit(signed_tx_bytes, state, now_ms)   # or raises Refusal

    Keeps a bounded cache of stored transactions it has found valid (by tx_id: a tx_id fixes
    the body, and a stored transaction never changes), so references are checked once.
    """

    def __init__(self, chain_id: str, admins: Iterable[Admin], *,
                 max_skew_ms: int = MAX_SKEW_MS) -> None:
        self.chain_id = chain_id
        self.admins = tuple(admins)
        self.max_skew_ms = max_skew_ms
        self._valid: OrderedDict[bytes, _Parsed] = OrderedDict()

    # -- entry point ---------------------------------------------------------------------------

    def admit(self, tx: bytes | bytearray | Mapping[str, Any], state: LedgerState,
              now_ms: int) -> Admitted:
        """Check ``tx`` at time ``now_ms`` against ``state``; :class:`Refusal` if refused."""
        if isinstance(tx, Mapping):
            try:
                tx = wire.encode(dict(tx))
            except (wire.WireError, TypeError) as exc:
                _bad("tx.cbor", f"not encodable as canonical CBOR ({exc})")
        p = self.parse(decode_tx(tx), now_ms)
        self._check_signatures(p)
        self._check_sender(p)
        if state.find(p.tx_id) is not None:
            _refuse("duplicate", "tx.duplicate", "the transaction is already on the chain or "
                    "pending")
        if p.session is not None and state.session_used(p.session):
            _refuse("duplicate", "session.duplicate", "this session is already on the chain "
                    "or pending (a session appears at most once)")
        if p.matter_key is not None and state.matter_used(*p.matter_key):
            _refuse("duplicate_matter", "matter.duplicate", "(pad, matter_id) is already in a "
                    "license.authorize (a matter is authorized at most once)")
        self._check_references(p, state, now_ms)
        return Admitted(p.tx_id, p.kind, p.session, p.matter_key)

    def check_in_block(self, tx: Mapping[str, Any], state: LedgerState,
                       block_ms: int) -> Admitted:
        """Every rule but the uniqueness ones (duplicate, duplicate_matter: they depend on
        what came before) on a decoded signed_tx in a block of timestamp ``block_ms``: what a
        verifier checks of a transaction it fetches. :class:`Refusal` if it breaks one."""
        p = self.parse(tx, block_ms)
        self._check_signatures(p)
        self._check_sender(p)
        self._check_references(p, state, block_ms)
        return Admitted(p.tx_id, p.kind, p.session, p.matter_key)

    # -- phase 1: shape, text, internal rules, times -------------------------------------------

    def parse(self, tx: Any, now_ms: int | None) -> _Parsed:
        """Phase 1 (bad_tx) on a decoded signed_tx. ``now_ms`` None skips the checks against
        the admission time (for a transaction stored pending)."""
        signed = _signed(tx, "tx")
        body = _fields(signed.body, "body", _TX_BODY, _TX_BODY_OPTIONAL)
        if body["chain_id"] != self.chain_id:
            _bad("body.chain_id", f"is not this chain's ({self.chain_id!r})")
        if sm3.digest(signed.public_key) != body["sender"]:
            _bad("body.sender", "is not SM3(public_key)")
        ts = body["timestamp"]
        if now_ms is not None and abs(ts - now_ms) > self.max_skew_ms:
            _bad("body.timestamp", f"is more than {self.max_skew_ms} ms from the node's time "
                 "(max_skew)")
        kind = body["type"]
        parse = {"device.enroll": self._parse_enroll,
                 "evidence.deposit": self._parse_deposit,
                 "license.authorize": self._parse_authorize,
                 "authorization.revoke": self._parse_revoke}.get(kind)
        if parse is None:
            _bad("body.type", f"unknown transaction type {kind!r}")
        p = _Parsed(sm3.digest(signed.message), kind, signed, body["data"])
        parse(p, now_ms)
        return p

    def _parse_enroll(self, p: _Parsed, now_ms: int | None) -> None:
        d = _fields(p.data, "enroll", _ENROLL, _ENROLL_OPTIONAL)
        role = d["role"]
        if role not in ROLES:
            _bad("enroll.role", f"must be one of {', '.join(ROLES)}")
        _key_on_curve(d["public_key"], d["alg"], "enroll.public_key")
        if d["terminal"] != sm3.digest(d["public_key"]):
            _bad("enroll.terminal", "is not SM3(public_key)")
        if role in _OFFICE_REQUIRED and "office" not in d:
            _bad("enroll.office", f"is required for role {role!r}")
        if (role == "clerk") != ("staff" in d):
            _bad("enroll.staff", "is required for role 'clerk' and allowed for no other")
        if (role == "identity") != ("min_score" in d):
            _bad("enroll.min_score", "is required for role 'identity' and allowed for no "
                 "other")
        if not p.timestamp < d["not_after"] <= p.timestamp + MAX_ENROLL_MS:
            _bad("enroll.not_after", "must be after the tx timestamp and at most 400 days "
                 "later")

    def _parse_deposit(self, p: _Parsed, now_ms: int | None) -> None:
        d = _fields(p.data, "deposit", _DEPOSIT, _DEPOSIT_OPTIONAL)
        if d["kind"] == AUDIT_HEAD and "holder" in d:
            _bad("deposit.holder", "an audit.head deposit has no holder")

    def _parse_authorize(self, p: _Parsed, now_ms: int | None) -> None:
        d = _one_of(p.data, "authorize", _AUTHORIZE_BASE, (_BY_FACE, _BY_CLERK))
        if d["terminal"] != p.sender:
            _bad("authorize.terminal", "is not the sender")
        matter = self._parse_matter(p, d["matter"], now_ms)
        m = matter.body
        if "attestation" in d:
            att = self._parse_attestation(p, d["attestation"], now_ms, action="authorize",
                                          target=p.matter_digest,
                                          capture_digest=d["capture_digest"])
            if att.body["subject"] != m["subject"]:
                _bad("attestation.subject", "is not the matter's subject")
            if "on_behalf_of" in m:
                if att.body.get("represents") != m["on_behalf_of"]:
                    _bad("attestation.represents", "must equal the matter's on_behalf_of")
            elif "represents" in att.body:
                _bad("attestation.represents", "must be absent: the matter has no "
                     "on_behalf_of")
        else:
            conf = self._parse_confirmation(p, d["confirmation"], now_ms, action="authorize",
                                            target=p.matter_digest)
            if "on_behalf_of" in m and conf.body["method"] != "id_card+registration":
                _bad("confirmation.method", "must be 'id_card+registration' for a matter "
                     "with on_behalf_of")
            if conf.public_key == matter.public_key:
                _bad("confirmation.key", "is signed with the matter's (the PAD's) key, not a "
                     "clerk's own")

    def _parse_matter(self, p: _Parsed, obj: Any, now_ms: int | None) -> _Signed:
        matter = _signed(obj, "matter")
        m = _fields(matter.body, "matter", _MATTER, _MATTER_OPTIONAL)
        encoded = wire.encode(obj)
        if len(encoded) > MAX_MATTER_BYTES:
            _bad("matter.size", f"enc(signed_matter) is {len(encoded)} bytes, over "
                 f"{MAX_MATTER_BYTES}")
        if m["pad"] != sm3.digest(matter.public_key):
            _bad("matter.pad", "is not SM3(public_key) of the matter's signer")
        if not m["issued_at"] <= m["expires_at"] <= m["issued_at"] + MAX_MATTER_LIFE_MS:
            _bad("matter.expires_at", "must be within 24 h after issued_at")
        if not m["issued_at"] <= m["use_until"] <= m["issued_at"] + MAX_USE_MS:
            _bad("matter.use_until", "must be within 90 days after issued_at")
        if p.timestamp > m["expires_at"]:
            _bad("matter.expired", "the matter expired before the tx timestamp")
        if now_ms is not None and m["issued_at"] > now_ms + self.max_skew_ms:
            _bad("matter.issued_at", "is later than the node's time + max_skew")
        p.matter = matter
        p.matter_digest = sm3.digest(encoded)
        p.signed.append(matter)
        return matter

    def _check_proof_time(self, p: _Parsed, what: str, issued_at: int,
                          now_ms: int | None) -> None:
        if not p.timestamp - PROOF_WINDOW_MS <= issued_at <= p.timestamp + self.max_skew_ms:
            _bad(f"{what}.issued_at", "must be at most 5 minutes before the tx timestamp and "
                 "at most max_skew after it")
        if now_ms is not None and issued_at > now_ms + self.max_skew_ms:
            _bad(f"{what}.issued_at.now", "is later than the node's time + max_skew")

    def _parse_attestation(self, p: _Parsed, obj: Any, now_ms: int | None, *, action: str,
                           target: bytes, capture_digest: bytes) -> _Signed:
        att = _signed(obj, "attestation")
        a = _fields(att.body, "attestation", _ATTESTATION, _ATTESTATION_OPTIONAL)
        if a["action"] not in ACTIONS:
            _bad("attestation.action", f"must be one of {', '.join(ACTIONS)}")
        if a["result"] not in RESULTS:
            _bad("attestation.result", f"must be one of {', '.join(RESULTS)}")
        if a["result"] != "match":
            _bad("attestation.result", "is not a match")
        if a["session"] != p.data["session"]:
            _bad("attestation.session", "is not the transaction's session")
        if a["capture_digest"] != capture_digest:
            _bad("attestation.capture_digest", "is not the transaction's capture_digest")
        if a["terminal"] != p.sender:
            _bad("attestation.terminal", "is not the sender")
        if a["action"] != action:
            _bad("attestation.action", f"must be {action!r} in a {p.kind}")
        if a["target"] != target:
            _bad("attestation.target", "does not name this transaction's purpose")
        self._check_proof_time(p, "attestation", a["issued_at"], now_ms)
        p.proof = att
        p.signed.append(att)
        return att

    def _parse_confirmation(self, p: _Parsed, obj: Any, now_ms: int | None, *, action: str,
                            target: bytes) -> _Signed:
        conf = _signed(obj, "confirmation")
        c = _fields(conf.body, "confirmation", _CONFIRMATION)
        if c["action"] not in ACTIONS:
            _bad("confirmation.action", f"must be one of {', '.join(ACTIONS)}")
        if c["method"] not in METHODS:
            _bad("confirmation.method", f"must be one of {', '.join(METHODS)}")
        if c["session"] != p.data["session"]:
            _bad("confirmation.session", "is not the transaction's session")
        if c["terminal"] != p.sender:
            _bad("confirmation.terminal", "is not the sender")
        if c["action"] != action:
            _bad("confirmation.action", f"must be {action!r} in a {p.kind}")
        if c["target"] != target:
            _bad("confirmation.target", "does not name this transaction's purpose")
        self._check_proof_time(p, "confirmation", c["issued_at"], now_ms)
        p.proof = conf
        p.signed.append(conf)
        return conf

    def _parse_revoke(self, p: _Parsed, now_ms: int | None) -> None:
        forms = ({}, {"enrollment": _B32, **_BY_FACE}, {"enrollment": _B32, **_BY_CLERK})
        d = _one_of(p.data, "revoke", _REVOKE_BASE, forms)
        target = d["authorization"]
        if "attestation" in d:
            self._parse_attestation(p, d["attestation"], now_ms, action="revoke",
                                    target=target, capture_digest=d["capture_digest"])
        elif "confirmation" in d:
            self._parse_confirmation(p, d["confirmation"], now_ms, action="revoke",
                                     target=target)
        else:
            p.admin_form = True

    # -- phase 2: signatures ---------------------------------------------------------------------

    @staticmethod
    def _check_signatures(p: _Parsed) -> None:
        if not p.tx.verifies():
            _refuse("bad_signature", "tx.signature", "the signature does not verify")
        for obj in p.signed:
            if not obj.verifies():
                _refuse("bad_signature", f"{obj.what}.signature", "the signature does not "
                        "verify")

    # -- phase 3: sender ---------------------------------------------------------------------------

    def _admins_of(self, alg: str, public_key: bytes) -> list[Admin]:
        return [a for a in self.admins if a.alg == alg and a.public_key == public_key]

    def _check_sender(self, p: _Parsed) -> None:
        admins = self._admins_of(p.tx.alg, p.tx.public_key)
        if p.kind == "device.enroll":
            district = p.data["district"]
            if not any(a.district == district for a in admins):
                _refuse("unknown_sender", "enroll.sender", "not signed by an admin key of the "
                        f"trust anchor for district {district!r}")
        elif p.admin_form and not admins:
            _refuse("unknown_sender", "revoke.sender", "a revoke without proofs must come "
                    "from an admin key of the trust anchor")

    # -- phase 6: references -----------------------------------------------------------------------

    def _stored(self, state: LedgerState, tx_id: bytes, kind: str, what: str, *,
                in_block: bool) -> tuple[_Parsed, Found]:
        """The valid stored transaction ``tx_id`` of type ``kind``, else bad_reference."""
        found = state.find(tx_id)
        if found is None:
            _bad_ref(what, f"{kind} {tx_id.hex()} is not on the chain")
        if in_block and found.block_ms is None:
            _bad_ref(what, f"{kind} {tx_id.hex()} is pending, not yet in a block")
        parsed = self._valid.get(tx_id)
        if parsed is None:
            try:
                parsed = self.parse(found.tx, found.block_ms)
                self._check_signatures(parsed)
                self._check_sender(parsed)
            except Refusal as exc:
                _bad_ref(what, f"{tx_id.hex()} is not a valid transaction ({exc.message})")
            if parsed.tx_id != tx_id:
                _bad_ref(what, f"{tx_id.hex()} is stored under another tx_id")
            self._valid[tx_id] = parsed
            if len(self._valid) > _CACHE:
                self._valid.popitem(last=False)
        else:
            self._valid.move_to_end(tx_id)
        if parsed.kind != kind:
            _bad_ref(what, f"{tx_id.hex()} is a {parsed.kind}, not a {kind}")
        return parsed, found

    def _enrollment(self, state: LedgerState, ref: bytes, what: str) -> _Enrollment:
        parsed, _ = self._stored(state, ref, "device.enroll", f"{what}.enrollment",
                                 in_block=False)
        return _Enrollment(ref, parsed.data)

    def _usable(self, state: LedgerState, ref: bytes, what: str, signer: _Signed,
                roles: tuple[str, ...], at_ms: int, office: str | None = None) -> _Enrollment:
        """The enrollment ``ref`` if usable by ``signer`` in one of ``roles`` at ``at_ms``."""
        rule = f"{what}.enrollment"
        e = self._enrollment(state, ref, what)
        d = e.data
        if d["public_key"] != signer.public_key or d["alg"] != signer.alg:
            _bad_ref(f"{rule}.key", f"enrolls another key than the {what}'s signer")
        if d["role"] not in roles:
            _bad_ref(f"{rule}.role", f"is for role {d['role']!r}, not "
                     f"{' or '.join(map(repr, roles))}")
        if office is not None and d.get("office") != office:
            _bad_ref(f"{rule}.office", f"is for another office than {office!r}")
        if not d["not_after"] > at_ms:
            _bad_ref(f"{rule}.not_after", "has expired (not_after is not after the time the "
                     "rule names)")
        return e

    def _check_references(self, p: _Parsed, state: LedgerState, now_ms: int) -> None:
        if p.kind == "evidence.deposit":
            roles = ("issuer", "kiosk", "pad") if p.data["kind"] == AUDIT_HEAD else ("issuer",)
            self._usable(state, p.data["enrollment"], "deposit", p.tx, roles, now_ms)
        elif p.kind == "license.authorize":
            self._check_authorize(p, state, now_ms)
        elif p.kind == "authorization.revoke":
            self._check_revoke(p, state, now_ms)

    def _check_license(self, state: LedgerState, license_id: bytes, holder: bytes,
                       i: int) -> None:
        deposit, found = self._stored(state, license_id, "evidence.deposit", "matter.licenses",
                                      in_block=True)
        if deposit.data.get("holder") != holder:
            _bad_ref("license.holder", f"licenses[{i}]: the deposit's holder is not the "
                     "matter's on_behalf_of (or, without one, its subject)")
        assert found.block_ms is not None
        self._usable(state, deposit.data["enrollment"], "license", deposit.tx, ("issuer",),
                     found.block_ms)

    def _check_authorize(self, p: _Parsed, state: LedgerState, now_ms: int) -> None:
        assert p.matter is not None and p.proof is not None
        m = p.matter.body
        self._usable(state, p.data["enrollment"], "authorize", p.tx, ("kiosk",), now_ms)
        pad = self._usable(state, m["enrollment"], "matter", p.matter, ("pad",), now_ms,
                           office=m["office"])
        if m["use_until"] > pad.data["not_after"]:
            _bad_ref("matter.use_until.pad", "is later than the PAD enrollment's not_after")
        holder = m.get("on_behalf_of", m["subject"])
        for i, license_id in enumerate(m["licenses"]):
            self._check_license(state, license_id, holder, i)
        self._check_proof_refs(p, state, now_ms, office=m["office"])

    def _check_proof_refs(self, p: _Parsed, state: LedgerState, now_ms: int, *,
                          office: str) -> None:
        proof = p.proof
        assert proof is not None
        if proof.what == "attestation":
            identity = self._usable(state, proof.body["enrollment"], "attestation", proof,
                                    ("identity",), now_ms)
            if proof.body["score"] < identity.data["min_score"]:
                _bad_ref("attestation.min_score", "the score is below the identity "
                         "enrollment's min_score")
            # attestation.terminal == sender (phase 1) == SM3(the kiosk enrollment's key)
            # == that enrollment's terminal (enroll.terminal): nothing more to check.
        else:
            self._usable(state, proof.body["enrollment"], "confirmation", proof, ("clerk",),
                         now_ms, office=office)

    def _check_revoke(self, p: _Parsed, state: LedgerState, now_ms: int) -> None:
        auth, _ = self._stored(state, p.data["authorization"], "license.authorize",
                               "revoke.authorization", in_block=True)
        assert auth.matter is not None
        m = auth.matter.body
        if p.admin_form:
            pad = self._enrollment(state, m["enrollment"], "revoke.matter")
            districts = {a.district for a in self._admins_of(p.tx.alg, p.tx.public_key)}
            if pad.data["district"] not in districts:
                _refuse("unknown_sender", "revoke.sender.district", "the admin is not of the "
                        f"district of the matter's PAD ({pad.data['district']!r})")
            return
        self._usable(state, p.data["enrollment"], "revoke", p.tx, ("kiosk",), now_ms)
        proof = p.proof
        assert proof is not None
        if proof.what == "attestation":
            if proof.body["subject"] != m["subject"]:
                _bad_ref("revoke.subject", "the attestation's subject is not the "
                         "authorization's")
        elif proof.public_key == auth.matter.public_key:
            _bad_ref("revoke.confirmation.key", "is signed with the matter's (the PAD's) key, "
                     "not a clerk's own")
        self._check_proof_refs(p, state, now_ms, office=m["office"])
