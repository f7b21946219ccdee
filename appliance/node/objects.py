"""Ledger-protocol §6 (revision 2): the data of each transaction type and the signed objects
terminals exchange, as strict decoders and builders. Sans-I/O; the rules that relate them to
each other and to the chain are in :mod:`appliance.node.rules`.

=====================  ==========================================================
``device.enroll``       :class:`Enrollment`: a key, its role (kiosk, pad, issuer, clerk,
                        identity), the office it acts for, its expiry
``evidence.deposit``    :class:`Deposit`: a document's SM3, its kind, its holder, the
                        issuer's enrollment
``license.authorize``   :class:`AuthorizeData`: the PAD-signed matter, and the face
                        attestation or the clerk's confirmation
``authorization.revoke`` :class:`RevokeData`
signed objects          :class:`Signed` over :class:`MatterBody`,
                        :class:`AttestationBody`, :class:`ConfirmationBody`
QR texts                ``GOVAUTH1:`` (a signed matter), ``GOVCONF1:`` (a signed
                        confirmation), ``GOVSESS1:`` (:class:`SessionRequest`, the kiosk's
                        session for the clerk)
=====================  ==========================================================

Every decoder accepts exactly the shape of §6: the required keys, the optional keys the
protocol allows and no other key, exact types (``bool`` is not an ``int``), byte lengths, and
the §6 text rule: UTF-8 in NFC without control or format characters (Unicode Cc, Cf), within
the field's byte limit, never truncated. What it refuses raises
:class:`~appliance.node.errors.MalformedError` (``reason`` ``text`` for the text rule). A
decoder that takes bytes or a QR text checks the size before it decodes anything.

Where §6 is silent this module decides, and docs/ledger-objects.md says so: a required text
field is at least one byte; the licenses of a matter, and its agencies, are distinct.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from . import signatures
from .errors import MalformedError
from .merkle import digest
from .model import (  # the one set of field checks of the ledger objects
    MAX_TEXT,
    MAX_UINT,
    _array,
    _bytes,
    _map,
    decode_limited,
    enc,
    peer_id,
)
from .model import _uint as _model_uint

__all__ = [
    "ACTIONS", "ADMIN_REVOKE_KEYS", "AUDIT_HEAD", "AuthorizeData", "AttestationBody",
    "CONFIRMATION_PREFIX", "ConfirmationBody", "Deposit", "Enrollment", "MATTER_PREFIX",
    "MAX_MATTER_BYTES", "METHODS", "MatterBody", "ROLES", "RevokeData", "SESSION_PREFIX",
    "SessionRequest", "Signed", "TX_TYPES", "check_text", "decode_confirmation_qr",
    "decode_data", "decode_matter_qr", "decode_session_qr", "encode_qr", "identifier_hash",
    "session_code",
]

ROLES = ("kiosk", "pad", "issuer", "clerk", "identity")
ACTIONS = ("authorize", "revoke")
METHODS = ("id_card", "id_card+registration")
AUDIT_HEAD = "audit.head"

MAX_TITLE = 128
MAX_OFFICE = 64
MAX_AGENCY = 64
MAX_PURPOSE = 256
MAX_STAFF = 32
MAX_SCORE = 1000
MAX_LICENSES = 8
MAX_AGENCIES = 16
#: enc(signed_matter): its QR text then fits a version-30 code at level L.
MAX_MATTER_BYTES = 1200
#: A signed confirmation is about 330 bytes; anything near this is not one.
MAX_CONFIRMATION_BYTES = 1024
MAX_SESSION_REQUEST_BYTES = 256
MAX_IDENTIFIER = 64

HASH = 32
SESSION = 16
KEY = 65
SIGNATURE = 64

MATTER_PREFIX = "GOVAUTH1:"
CONFIRMATION_PREFIX = "GOVCONF1:"
SESSION_PREFIX = "GOVSESS1:"

_FORBIDDEN = frozenset({"Cc", "Cf", "Cs"})
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_IDENTIFIER = re.compile(r"[0-9A-Za-z]+")


# -- fields ----------------------------------------------------------------------------------


def check_text(value: object, what: str, limit: int = MAX_TEXT) -> str:
    """The §6 text rule: 1..``limit`` bytes of UTF-8 in NFC, no Cc or Cf characters."""
    if type(value) is not str:
        raise MalformedError("type", f"{what}: expected a text string")
    if len(value) > limit:  # every character is at least one byte
        raise MalformedError("text", f"{what}: longer than {limit} bytes")
    if any(unicodedata.category(c) in _FORBIDDEN for c in value):
        raise MalformedError("text", f"{what}: holds a control or format character")
    size = len(value.encode())
    if not 1 <= size <= limit:
        raise MalformedError("text", f"{what}: {size} bytes, allowed 1..{limit}")
    if not unicodedata.is_normalized("NFC", value):
        raise MalformedError("text", f"{what}: not in Unicode normal form C")
    return value


def _uint(value: object, what: str, high: int = MAX_UINT) -> int:
    _model_uint(value, what)
    if value > high:  # type: ignore[operator]
        raise MalformedError("range", f"{what}: outside [0, {high}]")
    return value  # type: ignore[return-value]


def _choice(value: object, options: tuple[str, ...], what: str) -> str:
    if type(value) is not str:
        raise MalformedError("type", f"{what}: expected a text string")
    if value not in options:
        raise MalformedError("value", f"{what}: {value[:40]!r} is not one of {list(options)}")
    return value


def _list(obj: object, what: str, low: int, high: int) -> list[Any]:
    return _array(obj, what, high, low)


def _distinct(items: tuple[Any, ...], what: str) -> None:
    if len(set(items)) != len(items):
        raise MalformedError("duplicate", f"{what}: an entry appears twice")


def identifier_hash(identifier: str) -> bytes:
    """``H("GOVID1:" || identifier)``, letters in upper case (§6): an ID-card number ending
    in x and in X is one identifier. Such hashes are pseudonyms, not secrets."""
    if type(identifier) is not str or not _IDENTIFIER.fullmatch(identifier) \
            or len(identifier) > MAX_IDENTIFIER:
        raise MalformedError("identifier", f"an identifier is 1..{MAX_IDENTIFIER} ASCII "
                             "letters and digits")
    return digest(b"GOVID1:" + identifier.upper().encode("ascii"))


def session_code(session: bytes) -> str:
    """The 6 digits a clerk compares: ``uint32_be(session[0:4]) mod 10^6`` (§6)."""
    _bytes(session, SESSION, "session")
    return "%06d" % (int.from_bytes(session[:4], "big") % 1_000_000)


# -- transaction data ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enrollment:
    """``device.enroll`` data: ``public_key`` may act as ``role`` until ``not_after``."""

    terminal: bytes
    alg: str
    public_key: bytes
    district: str
    hall: str
    role: str
    not_after: int
    office: str | None = None
    staff: str | None = None
    min_score: int | None = None

    def __post_init__(self) -> None:
        _bytes(self.terminal, HASH, "enroll.terminal")
        _choice(self.alg, signatures.ALGORITHMS, "enroll.alg")
        _bytes(self.public_key, KEY, "enroll.public_key")
        check_text(self.district, "enroll.district")
        check_text(self.hall, "enroll.hall")
        _choice(self.role, ROLES, "enroll.role")
        _uint(self.not_after, "enroll.not_after")
        if self.office is not None:
            check_text(self.office, "enroll.office", MAX_OFFICE)
        elif self.role in ("pad", "issuer", "clerk"):
            raise MalformedError("keys", f"enroll: role {self.role!r} needs an office")
        if (self.staff is not None) != (self.role == "clerk"):
            raise MalformedError("keys", "enroll: staff is required for a clerk, and only there")
        if self.staff is not None:
            check_text(self.staff, "enroll.staff", MAX_STAFF)
        if (self.min_score is not None) != (self.role == "identity"):
            raise MalformedError("keys", "enroll: min_score is required for an identity "
                                 "service, and only there")
        if self.min_score is not None:
            _uint(self.min_score, "enroll.min_score", MAX_SCORE)

    def to_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "terminal": self.terminal, "alg": self.alg, "public_key": self.public_key,
            "district": self.district, "hall": self.hall, "role": self.role,
            "not_after": self.not_after}
        for key in ("office", "staff", "min_score"):
            if getattr(self, key) is not None:
                obj[key] = getattr(self, key)
        return obj

    @classmethod
    def from_obj(cls, obj: object) -> Enrollment:
        m = _map(obj, _ENROLL_KEYS, _ENROLL_OPTIONAL, "enroll")
        return cls(m["terminal"], m["alg"], m["public_key"], m["district"], m["hall"],
                   m["role"], m["not_after"], m.get("office"), m.get("staff"),
                   m.get("min_score"))


@dataclass(frozen=True, slots=True)
class Deposit:
    """``evidence.deposit`` data: a document's SM3 deposited by its issuer (or, kind
    ``audit.head``, a terminal's audit-log head)."""

    digest: bytes
    kind: str
    enrollment: bytes
    holder: bytes | None = None

    def __post_init__(self) -> None:
        _bytes(self.digest, HASH, "deposit.digest")
        check_text(self.kind, "deposit.kind")
        _bytes(self.enrollment, HASH, "deposit.enrollment")
        if self.holder is not None:
            _bytes(self.holder, HASH, "deposit.holder")
        if self.kind == AUDIT_HEAD and self.holder is not None:
            raise MalformedError("keys", "deposit: an audit.head has no holder")

    def to_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"digest": self.digest, "kind": self.kind,
                               "enrollment": self.enrollment}
        if self.holder is not None:
            obj["holder"] = self.holder
        return obj

    @classmethod
    def from_obj(cls, obj: object) -> Deposit:
        m = _map(obj, _DEPOSIT_KEYS, _DEPOSIT_OPTIONAL, "deposit")
        return cls(m["digest"], m["kind"], m["enrollment"], m.get("holder"))


# -- signed objects ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MatterBody:
    """A matter (§6): what a PAD asks a citizen to authorize, for which offices, until when."""

    matter_id: bytes
    title: str
    office: str
    agencies: tuple[str, ...]
    purpose: str
    subject: bytes
    licenses: tuple[bytes, ...]
    issued_at: int
    expires_at: int
    use_until: int
    pad: bytes
    enrollment: bytes
    on_behalf_of: bytes | None = None

    def __post_init__(self) -> None:
        _bytes(self.matter_id, SESSION, "matter.matter_id")
        check_text(self.title, "matter.title", MAX_TITLE)
        check_text(self.office, "matter.office", MAX_OFFICE)
        if type(self.agencies) is not tuple or not 1 <= len(self.agencies) <= MAX_AGENCIES:
            raise MalformedError("count", f"matter.agencies: 1..{MAX_AGENCIES} entries")
        for a in self.agencies:
            check_text(a, "matter.agencies entry", MAX_AGENCY)
        _distinct(self.agencies, "matter.agencies")
        check_text(self.purpose, "matter.purpose", MAX_PURPOSE)
        _bytes(self.subject, HASH, "matter.subject")
        if type(self.licenses) is not tuple or not 1 <= len(self.licenses) <= MAX_LICENSES:
            raise MalformedError("count", f"matter.licenses: 1..{MAX_LICENSES} entries")
        for lic in self.licenses:
            _bytes(lic, HASH, "matter.licenses entry")
        _distinct(self.licenses, "matter.licenses")
        for key in ("issued_at", "expires_at", "use_until"):
            _uint(getattr(self, key), f"matter.{key}")
        _bytes(self.pad, HASH, "matter.pad")
        _bytes(self.enrollment, HASH, "matter.enrollment")
        if self.on_behalf_of is not None:
            _bytes(self.on_behalf_of, HASH, "matter.on_behalf_of")

    def to_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "matter_id": self.matter_id, "title": self.title, "office": self.office,
            "agencies": list(self.agencies), "purpose": self.purpose, "subject": self.subject,
            "licenses": list(self.licenses), "issued_at": self.issued_at,
            "expires_at": self.expires_at, "use_until": self.use_until, "pad": self.pad,
            "enrollment": self.enrollment}
        if self.on_behalf_of is not None:
            obj["on_behalf_of"] = self.on_behalf_of
        return obj

    @classmethod
    def from_obj(cls, obj: object) -> MatterBody:
        m = _map(obj, _MATTER_KEYS, _MATTER_OPTIONAL, "matter")
        agencies = _list(m["agencies"], "matter.agencies", 1, MAX_AGENCIES)
        licenses = _list(m["licenses"], "matter.licenses", 1, MAX_LICENSES)
        return cls(m["matter_id"], m["title"], m["office"], tuple(agencies), m["purpose"],
                   m["subject"], tuple(licenses), m["issued_at"], m["expires_at"],
                   m["use_until"], m["pad"], m["enrollment"], m.get("on_behalf_of"))


@dataclass(frozen=True, slots=True)
class AttestationBody:
    """The identity service's word that a capture matches a subject (§6, face way)."""

    session: bytes
    capture_digest: bytes
    subject: bytes
    terminal: bytes
    action: str
    target: bytes
    result: str
    score: int
    issued_at: int
    service: str
    enrollment: bytes
    represents: bytes | None = None

    def __post_init__(self) -> None:
        _bytes(self.session, SESSION, "attestation.session")
        _bytes(self.capture_digest, HASH, "attestation.capture_digest")
        _bytes(self.subject, HASH, "attestation.subject")
        _bytes(self.terminal, HASH, "attestation.terminal")
        _choice(self.action, ACTIONS, "attestation.action")
        _bytes(self.target, HASH, "attestation.target")
        _choice(self.result, ("match", "no_match"), "attestation.result")
        _uint(self.score, "attestation.score", MAX_SCORE)
        _uint(self.issued_at, "attestation.issued_at")
        check_text(self.service, "attestation.service")
        _bytes(self.enrollment, HASH, "attestation.enrollment")
        if self.represents is not None:
            _bytes(self.represents, HASH, "attestation.represents")

    def to_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "session": self.session, "capture_digest": self.capture_digest,
            "subject": self.subject, "terminal": self.terminal, "action": self.action,
            "target": self.target, "result": self.result, "score": self.score,
            "issued_at": self.issued_at, "service": self.service,
            "enrollment": self.enrollment}
        if self.represents is not None:
            obj["represents"] = self.represents
        return obj

    @classmethod
    def from_obj(cls, obj: object) -> AttestationBody:
        m = _map(obj, _ATTESTATION_KEYS, _ATTESTATION_OPTIONAL, "attestation")
        return cls(m["session"], m["capture_digest"], m["subject"], m["terminal"], m["action"],
                   m["target"], m["result"], m["score"], m["issued_at"], m["service"],
                   m["enrollment"], m.get("represents"))


@dataclass(frozen=True, slots=True)
class ConfirmationBody:
    """A clerk's word that they checked the citizen's ID card in person (§6, clerk way)."""

    session: bytes
    terminal: bytes
    action: str
    target: bytes
    method: str
    issued_at: int
    enrollment: bytes

    def __post_init__(self) -> None:
        _bytes(self.session, SESSION, "confirmation.session")
        _bytes(self.terminal, HASH, "confirmation.terminal")
        _choice(self.action, ACTIONS, "confirmation.action")
        _bytes(self.target, HASH, "confirmation.target")
        _choice(self.method, METHODS, "confirmation.method")
        _uint(self.issued_at, "confirmation.issued_at")
        _bytes(self.enrollment, HASH, "confirmation.enrollment")

    def to_obj(self) -> dict[str, Any]:
        return {"session": self.session, "terminal": self.terminal, "action": self.action,
                "target": self.target, "method": self.method, "issued_at": self.issued_at,
                "enrollment": self.enrollment}

    @classmethod
    def from_obj(cls, obj: object) -> ConfirmationBody:
        m = _map(obj, _CONFIRMATION_KEYS, frozenset(), "confirmation")
        return cls(m["session"], m["terminal"], m["action"], m["target"], m["method"],
                   m["issued_at"], m["enrollment"])


B = TypeVar("B", MatterBody, AttestationBody, ConfirmationBody)


@dataclass(frozen=True, slots=True)
class Signed(Generic[B]):
    """``{ "body", "alg", "public_key", "signature" }``, the signature over enc(body).

    ``encoded`` = enc(whole object) and ``digest`` = H(encoded) are cached: the digest of a
    signed matter is the ``target`` that attestations and confirmations name. Structure only;
    :meth:`signature_valid` checks the signature, the rules module the signer's enrollment.
    """

    body: B
    alg: str
    public_key: bytes
    signature: bytes
    encoded: bytes = field(init=False, repr=False, compare=False)
    digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.body, MatterBody | AttestationBody | ConfirmationBody):
            raise MalformedError("type", "signed object: unknown body")
        _choice(self.alg, signatures.ALGORITHMS, "signed.alg")
        _bytes(self.public_key, KEY, "signed.public_key")
        _bytes(self.signature, SIGNATURE, "signed.signature")
        encoded = enc(self.to_obj())
        object.__setattr__(self, "encoded", encoded)
        object.__setattr__(self, "digest", digest(encoded))

    @property
    def signer(self) -> bytes:
        """peer_id of the signing key."""
        return peer_id(self.public_key)

    def signature_valid(self) -> bool:
        return signatures.verify(self.alg, self.public_key, enc(self.body.to_obj()),
                                 self.signature)

    def to_obj(self) -> dict[str, Any]:
        return {"body": self.body.to_obj(), "alg": self.alg, "public_key": self.public_key,
                "signature": self.signature}

    @classmethod
    def of(cls, body_type: type[B], obj: object, what: str) -> Signed[B]:
        m = _map(obj, _SIGNED_KEYS, frozenset(), what)
        return cls(body_type.from_obj(m["body"]), m["alg"], m["public_key"], m["signature"])

    @classmethod
    def sign(cls, body: B, signer: Any) -> Signed[B]:
        """Sign ``body`` with ``signer`` (:class:`appliance.node.tx.Signer`: a crypto module
        or a software key); the signature is checked before it is returned."""
        message = enc(body.to_obj())
        signature = signer.sign(message)
        if not signatures.verify(signer.alg, signer.public_key, message, signature):
            raise MalformedError("signature", "the signer produced a bad signature")
        return cls(body, signer.alg, signer.public_key, signature)


def _matter(obj: object) -> Signed[MatterBody]:
    m = Signed.of(MatterBody, obj, "signed_matter")
    if len(m.encoded) > MAX_MATTER_BYTES:
        raise MalformedError("oversize", f"signed_matter: {len(m.encoded)} bytes > "
                             f"{MAX_MATTER_BYTES}")
    return m


@dataclass(frozen=True, slots=True)
class AuthorizeData:
    """``license.authorize`` data: the signed matter whole, and exactly one way of identity:
    ``capture_digest`` + ``attestation`` (face) or ``confirmation`` (clerk)."""

    matter: Signed[MatterBody]
    session: bytes
    terminal: bytes
    enrollment: bytes
    capture_digest: bytes | None = None
    attestation: Signed[AttestationBody] | None = None
    confirmation: Signed[ConfirmationBody] | None = None

    def __post_init__(self) -> None:
        _bytes(self.session, SESSION, "authorize.session")
        _bytes(self.terminal, HASH, "authorize.terminal")
        _bytes(self.enrollment, HASH, "authorize.enrollment")
        _one_way(self.capture_digest, self.attestation, self.confirmation, "authorize")

    @property
    def way(self) -> str:
        return "face" if self.attestation is not None else "clerk"

    def to_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"matter": self.matter.to_obj(), "session": self.session,
                               "terminal": self.terminal, "enrollment": self.enrollment}
        _way_obj(obj, self.capture_digest, self.attestation, self.confirmation)
        return obj

    @classmethod
    def from_obj(cls, obj: object) -> AuthorizeData:
        m = _map(obj, _AUTHORIZE_KEYS, _WAY_KEYS, "authorize")
        att, conf = _way_from(m)
        return cls(_matter(m["matter"]), m["session"], m["terminal"], m["enrollment"],
                   m.get("capture_digest"), att, conf)


@dataclass(frozen=True, slots=True)
class RevokeData:
    """``authorization.revoke`` data. From an enrolled kiosk: ``enrollment`` and one way of
    identity, as for an authorization; from a district admin: neither."""

    authorization: bytes
    session: bytes
    enrollment: bytes | None = None
    capture_digest: bytes | None = None
    attestation: Signed[AttestationBody] | None = None
    confirmation: Signed[ConfirmationBody] | None = None

    def __post_init__(self) -> None:
        _bytes(self.authorization, HASH, "revoke.authorization")
        _bytes(self.session, SESSION, "revoke.session")
        if self.enrollment is None:
            if (self.capture_digest, self.attestation, self.confirmation) != (None,) * 3:
                raise MalformedError("keys", "revoke: proofs come with a kiosk's enrollment")
        else:
            _bytes(self.enrollment, HASH, "revoke.enrollment")
            _one_way(self.capture_digest, self.attestation, self.confirmation, "revoke")

    @property
    def by_admin(self) -> bool:
        return self.enrollment is None

    def to_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"authorization": self.authorization, "session": self.session}
        if self.enrollment is not None:
            obj["enrollment"] = self.enrollment
            _way_obj(obj, self.capture_digest, self.attestation, self.confirmation)
        return obj

    @classmethod
    def from_obj(cls, obj: object) -> RevokeData:
        m = _map(obj, _REVOKE_KEYS, _WAY_KEYS | {"enrollment"}, "revoke")
        att, conf = _way_from(m)
        return cls(m["authorization"], m["session"], m.get("enrollment"),
                   m.get("capture_digest"), att, conf)


def _one_way(capture_digest: Any, attestation: Any, confirmation: Any, what: str) -> None:
    face = capture_digest is not None and attestation is not None and confirmation is None
    clerk = confirmation is not None and capture_digest is None and attestation is None
    if not (face or clerk):
        raise MalformedError("keys", f"{what}: exactly one of capture_digest + attestation, "
                             "or confirmation")
    if face:
        _bytes(capture_digest, HASH, f"{what}.capture_digest")
        if type(attestation) is not Signed or type(attestation.body) is not AttestationBody:
            raise MalformedError("type", f"{what}.attestation: expected a signed attestation")
    elif type(confirmation) is not Signed or type(confirmation.body) is not ConfirmationBody:
        raise MalformedError("type", f"{what}.confirmation: expected a signed confirmation")


def _way_obj(obj: dict[str, Any], capture_digest: bytes | None, attestation: Any,
             confirmation: Any) -> None:
    if attestation is not None:
        obj["capture_digest"] = capture_digest
        obj["attestation"] = attestation.to_obj()
    else:
        obj["confirmation"] = confirmation.to_obj()


def _way_from(m: dict[str, Any]) -> tuple[Any, Any]:
    att = Signed.of(AttestationBody, m["attestation"], "signed_attestation") \
        if "attestation" in m else None
    conf = Signed.of(ConfirmationBody, m["confirmation"], "signed_confirmation") \
        if "confirmation" in m else None
    return att, conf


#: The §6 data class of each transaction type.
TX_TYPES: dict[str, Any] = {
    "device.enroll": Enrollment,
    "evidence.deposit": Deposit,
    "license.authorize": AuthorizeData,
    "authorization.revoke": RevokeData,
}


def decode_data(tx_type: str, data: object) -> Any:
    """The typed §6 data of a transaction of ``tx_type``; MalformedError for an unknown type
    or a data map that breaks §6's shape."""
    cls = TX_TYPES.get(tx_type)
    if cls is None:
        raise MalformedError("type", f"unknown transaction type {str(tx_type)[:40]!r}")
    return cls.from_obj(data)


# -- QR texts ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """What the kiosk shows the clerk (``GOVSESS1:``): the session to confirm, the kiosk, the
    action and its target. Not signed: the clerk compares the 6-digit code, and the
    confirmation the PAD signs names all four, which the kiosk and the chain check."""

    session: bytes
    terminal: bytes
    action: str
    target: bytes

    def __post_init__(self) -> None:
        _bytes(self.session, SESSION, "session_request.session")
        _bytes(self.terminal, HASH, "session_request.terminal")
        _choice(self.action, ACTIONS, "session_request.action")
        _bytes(self.target, HASH, "session_request.target")

    @property
    def code(self) -> str:
        return session_code(self.session)

    def to_obj(self) -> dict[str, Any]:
        return {"session": self.session, "terminal": self.terminal, "action": self.action,
                "target": self.target}

    @classmethod
    def from_obj(cls, obj: object) -> SessionRequest:
        m = _map(obj, _SESSION_KEYS, frozenset(), "session_request")
        return cls(m["session"], m["terminal"], m["action"], m["target"])


def encode_qr(prefix: str, obj: Signed[Any] | SessionRequest) -> str:
    """``prefix || base64url(enc(obj))``, no padding."""
    raw = obj.encoded if isinstance(obj, Signed) else enc(obj.to_obj())
    return prefix + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _qr_bytes(text: object, prefix: str, max_bytes: int) -> bytes:
    """The CBOR bytes of a QR text: size checked first; one spelling (no padding, zero
    trailing bits) per byte string, so one object has one QR text."""
    if type(text) is not str:
        raise MalformedError("type", "a QR text is text")
    limit = len(prefix) + (max_bytes * 4 + 2) // 3 + 4  # + surrounding whitespace
    if len(text) > limit:
        raise MalformedError("oversize", f"{len(text)} characters > {limit}")
    text = text.strip(" \t\r\n")
    if not text.startswith(prefix):
        raise MalformedError("prefix", f"not a {prefix} code")
    b64 = text[len(prefix):]
    if not _B64URL.fullmatch(b64) or len(b64) % 4 == 1:
        raise MalformedError("base64", "not base64url without padding")
    try:
        raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    except (binascii.Error, ValueError):
        raise MalformedError("base64", "not base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != b64:
        raise MalformedError("base64", "not the canonical base64url of its bytes")
    return raw


def decode_matter_qr(text: object) -> Signed[MatterBody]:
    """The signed matter of a ``GOVAUTH1:`` text (structure only; see rules.verify_matter)."""
    raw = _qr_bytes(text, MATTER_PREFIX, MAX_MATTER_BYTES)
    return _matter(decode_limited(raw, MAX_MATTER_BYTES, "signed_matter"))


def decode_confirmation_qr(text: object) -> Signed[ConfirmationBody]:
    """The signed confirmation of a ``GOVCONF1:`` text (structure only)."""
    raw = _qr_bytes(text, CONFIRMATION_PREFIX, MAX_CONFIRMATION_BYTES)
    obj = decode_limited(raw, MAX_CONFIRMATION_BYTES, "signed_confirmation")
    return Signed.of(ConfirmationBody, obj, "signed_confirmation")


def decode_session_qr(text: object) -> SessionRequest:
    """The session request of a ``GOVSESS1:`` text."""
    raw = _qr_bytes(text, SESSION_PREFIX, MAX_SESSION_REQUEST_BYTES)
    return SessionRequest.from_obj(decode_limited(raw, MAX_SESSION_REQUEST_BYTES,
                                                  "session_request"))


_ENROLL_KEYS = frozenset({"terminal", "alg", "public_key", "district", "hall", "role",
                          "not_after"})
_ENROLL_OPTIONAL = frozenset({"office", "staff", "min_score"})
_DEPOSIT_KEYS = frozenset({"digest", "kind", "enrollment"})
_DEPOSIT_OPTIONAL = frozenset({"holder"})
_MATTER_KEYS = frozenset({"matter_id", "title", "office", "agencies", "purpose", "subject",
                          "licenses", "issued_at", "expires_at", "use_until", "pad",
                          "enrollment"})
_MATTER_OPTIONAL = frozenset({"on_behalf_of"})
_ATTESTATION_KEYS = frozenset({"session", "capture_digest", "subject", "terminal", "action",
                               "target", "result", "score", "issued_at", "service",
                               "enrollment"})
_ATTESTATION_OPTIONAL = frozenset({"represents"})
_CONFIRMATION_KEYS = frozenset({"session", "terminal", "action", "target", "method",
                                "issued_at", "enrollment"})
_SIGNED_KEYS = frozenset({"body", "alg", "public_key", "signature"})
_AUTHORIZE_KEYS = frozenset({"matter", "session", "terminal", "enrollment"})
_REVOKE_KEYS = frozenset({"authorization", "session"})
_WAY_KEYS = frozenset({"capture_digest", "attestation", "confirmation"})
ADMIN_REVOKE_KEYS = _REVOKE_KEYS
_SESSION_KEYS = frozenset({"session", "terminal", "action", "target"})
