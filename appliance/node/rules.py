"""Ledger-protocol §6 (revision 2) verification: enrollment references, matters, attestations,
confirmations, and the block-validity rule of each transaction type. Sans-I/O.

What a rule needs from the chain comes through ``lookup(tx_id) -> Ref | None``: a
transaction the caller has *proven* to be on chain (its Merkle proof checked against a
verified header, §4-§5) with its block's height and timestamp, or None when the chain does
not hold it. :func:`needs` says which transactions a check will look up, so that an I/O
adapter (:mod:`appliance.node.references`) fetches them, with proofs, before the check runs.

Time (§6 "Time"): every check takes ``at``, the time at which enrollments are judged: the
timestamp of the block that includes the object (for a transaction on chain and everything
embedded in it), or the verifier's ``now`` for an object not yet on chain (a matter at the
kiosk, a confirmation). The enrollment of an issuer is judged at the time of its deposit's
block.

Everything refused raises :class:`RuleError`: ``rule`` names the rule (a stable code the
kiosk maps to its screens, listed in :data:`RULE_CODES`) and ``code`` the district node's
API error of §7 (``bad_tx``, ``bad_signature``, ``unknown_sender``, ``bad_reference``), so
that the same check serves the light node, the kiosk and the tests. Rules that need the whole
chain (a ``session`` or a matter appears at most once) are the validators' (§6): a light
client cannot prove an absence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import LedgerError, VerificationError
from .model import Admin, SignedTx, peer_id
from .objects import (
    AUDIT_HEAD,
    AttestationBody,
    AuthorizeData,
    ConfirmationBody,
    Deposit,
    Enrollment,
    MatterBody,
    RevokeData,
    Signed,
    decode_data,
)
from .verify import verify_tx

__all__ = [
    "DAY_MS", "MAX_SKEW_MS", "RULE_CODES", "Lookup", "Ref", "RuleError", "VerifiedDeposit",
    "VerifiedMatter", "check_enrollment_tx", "check_tx", "check_matter_self", "needs",
    "usable_enrollment", "verified_deposit", "verify_attestation", "verify_authorize",
    "verify_confirmation", "verify_matter",
]

MINUTE_MS = 60_000
DAY_MS = 86_400_000
MAX_SKEW_MS = 60_000  # §5 max_skew
ENROLL_MAX_MS = 400 * DAY_MS
MATTER_MAX_MS = DAY_MS
USE_MAX_MS = 90 * DAY_MS
PROOF_MAX_AGE_MS = 5 * MINUTE_MS  # attestations and confirmations

#: Every rule, and the §7 API error a district node answers when a transaction breaks it.
RULE_CODES: dict[str, str] = {
    # the transaction itself
    "tx_shape": "bad_tx", "tx_time": "bad_tx", "tx_signature": "bad_signature",
    # device.enroll
    "admin": "unknown_sender", "admin_district": "unknown_sender", "enroll_terminal": "bad_tx",
    "enroll_not_after": "bad_tx",
    # enrollment references
    "enrollment_missing": "bad_reference", "enrollment_invalid": "bad_reference",
    "enrollment_key": "bad_reference", "enrollment_role": "bad_reference",
    "enrollment_office": "bad_reference", "enrollment_expired": "bad_reference",
    # deposits
    "deposit_missing": "bad_reference", "deposit_invalid": "bad_reference",
    "deposit_holder": "bad_reference",
    # the matter
    "matter_signature": "bad_signature", "matter_pad": "bad_tx", "matter_times": "bad_tx",
    "matter_future": "bad_tx", "matter_expired": "bad_tx", "use_until": "bad_tx",
    # license.authorize and authorization.revoke
    "authorize_terminal": "bad_tx", "authorization_missing": "bad_reference",
    # the face way
    "attestation_signature": "bad_signature", "attestation_result": "bad_tx",
    "attestation_subject": "bad_tx", "attestation_represents": "bad_tx",
    "attestation_session": "bad_tx", "attestation_capture_digest": "bad_tx",
    "attestation_terminal": "bad_tx", "attestation_action": "bad_tx",
    "attestation_target": "bad_tx", "attestation_stale": "bad_tx",
    "attestation_future": "bad_tx",
    # the clerk way
    "confirmation_signature": "bad_signature", "confirmation_pad_key": "bad_tx",
    "confirmation_method": "bad_tx", "confirmation_session": "bad_tx",
    "confirmation_terminal": "bad_tx", "confirmation_action": "bad_tx",
    "confirmation_target": "bad_tx", "confirmation_stale": "bad_tx",
    "confirmation_future": "bad_tx",
}


class RuleError(VerificationError):
    """A §6 rule failed: ``rule`` (see :data:`RULE_CODES`), ``code`` its §7 API error."""

    def __init__(self, rule: str, detail: str = "") -> None:
        super().__init__(rule, None, detail)
        self.code = RULE_CODES[rule]


@dataclass(frozen=True, slots=True)
class Ref:
    """A transaction proven to be on chain: in block ``height``, whose timestamp is
    ``time_ms``."""

    tx: SignedTx
    height: int
    time_ms: int


Lookup = Callable[[bytes], Ref | None]


def _short(b: bytes) -> str:
    return b.hex()[:16]


# -- enrollments ------------------------------------------------------------------------------


def check_enrollment_tx(tx: SignedTx, admins: Iterable[Admin]) -> Enrollment:
    """A ``device.enroll`` as a transaction (its own signature checked by the caller): its
    data, signed by an admin of its district, the key it enrolls, a not_after within 400 days
    of its timestamp."""
    data = _data(tx, Enrollment)
    admin = next((a for a in admins if a.public_key == tx.public_key and a.alg == tx.alg), None)
    if admin is None:
        raise RuleError("admin", "device.enroll not signed by an admin key of the trust anchor")
    if admin.district != data.district:
        raise RuleError("admin_district", f"an admin of {admin.district[:40]!r} cannot enroll "
                        f"for {data.district[:40]!r}")
    if peer_id(data.public_key) != data.terminal:
        raise RuleError("enroll_terminal", "data.terminal is not H(data.public_key)")
    if not tx.body.timestamp < data.not_after <= tx.body.timestamp + ENROLL_MAX_MS:
        raise RuleError("enroll_not_after", "not_after must be after the timestamp and at most "
                        "400 days later")
    return data


def usable_enrollment(tx_id: bytes, lookup: Lookup, admins: Iterable[Admin], *,
                      public_key: bytes, alg: str, roles: tuple[str, ...], at: int,
                      office: str | None = None, what: str = "signer") -> Enrollment:
    """The enrollment ``tx_id``, checked for the signer ``public_key`` (with ``alg``), one of
    ``roles``, ``office`` when given, and not expired at ``at`` (§6 "Enrollment
    references")."""
    ref = lookup(tx_id)
    if ref is None:
        raise RuleError("enrollment_missing", f"{what}: enrollment {_short(tx_id)} is not on "
                        "chain")
    try:
        verify_tx(ref.tx)
        enrollment = check_enrollment_tx(ref.tx, admins)
    except LedgerError as exc:
        raise RuleError("enrollment_invalid", f"{what}: enrollment {_short(tx_id)}: {exc}"
                        ) from None
    if enrollment.public_key != public_key or enrollment.alg != alg:
        raise RuleError("enrollment_key", f"{what}: enrollment {_short(tx_id)} is of another "
                        "key")
    if enrollment.role not in roles:
        raise RuleError("enrollment_role", f"{what}: enrolled as {enrollment.role!r}, not "
                        f"{' or '.join(roles)}")
    if office is not None and enrollment.office != office:
        raise RuleError("enrollment_office", f"{what}: enrolled for another office")
    if enrollment.not_after <= at:
        raise RuleError("enrollment_expired", f"{what}: enrollment {_short(tx_id)} expired")
    return enrollment


# -- deposits ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedDeposit:
    """A deposit proven on chain, and the enrollment of its issuer (whose ``office`` is the
    issuing office a terminal shows)."""

    tx_id: bytes
    deposit: Deposit
    issuer: Enrollment
    ref: Ref


def _check_deposit(tx: SignedTx, lookup: Lookup, admins: Iterable[Admin], at: int) -> tuple[
        Deposit, Enrollment]:
    data = _data(tx, Deposit)
    roles = ("kiosk", "pad") if data.kind == AUDIT_HEAD else ("issuer",)
    issuer = usable_enrollment(data.enrollment, lookup, admins, public_key=tx.public_key,
                               alg=tx.alg, roles=roles, at=at, what="depositor")
    return data, issuer


def verified_deposit(tx_id: bytes, lookup: Lookup, admins: Iterable[Admin]) -> VerifiedDeposit:
    """The deposit ``tx_id`` (on chain), its issuer's enrollment judged at its block's time."""
    ref = lookup(tx_id)
    if ref is None:
        raise RuleError("deposit_missing", f"deposit {_short(tx_id)} is not on chain")
    try:
        verify_tx(ref.tx)
        if ref.tx.body.type != "evidence.deposit":
            raise RuleError("deposit_invalid", f"{_short(tx_id)} is a {ref.tx.body.type[:30]}")
        deposit, issuer = _check_deposit(ref.tx, lookup, admins, ref.time_ms)
    except RuleError as exc:
        if exc.rule == "deposit_invalid":
            raise
        raise RuleError("deposit_invalid", f"deposit {_short(tx_id)}: {exc}") from None
    except LedgerError as exc:
        raise RuleError("deposit_invalid", f"deposit {_short(tx_id)}: {exc}") from None
    return VerifiedDeposit(tx_id, deposit, issuer, ref)


# -- matters ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedMatter:
    """A matter whose signature, PAD enrollment and license deposits verified: what the
    consent screen may show (:meth:`display`)."""

    matter: Signed[MatterBody]
    pad: Enrollment
    licenses: tuple[VerifiedDeposit, ...]

    @property
    def body(self) -> MatterBody:
        return self.matter.body

    def display(self) -> dict[str, Any]:
        """JSON-safe: the office (from the PAD's enrollment), every agency, title, purpose,
        the enterprise when there is one, each license's kind and issuing office (from the
        verified deposits and their enrollments), and use_until. No subject identifier."""
        b = self.body
        return {
            "matter_id": b.matter_id.hex(), "office": self.pad.office, "hall": self.pad.hall,
            "agencies": list(b.agencies), "title": b.title, "purpose": b.purpose,
            "enterprise": None if b.on_behalf_of is None else b.on_behalf_of.hex()[:12],
            "licenses": [{"tx_id": d.tx_id.hex(), "kind": d.deposit.kind,
                          "issuer": d.issuer.office} for d in self.licenses],
            "use_until": b.use_until, "expires_at": b.expires_at, "issued_at": b.issued_at,
        }


def check_matter_self(matter: Signed[MatterBody], *, at: int, expiry_at: int | None = None,
                      max_skew_ms: int = MAX_SKEW_MS) -> None:
    """What a matter says of itself: its signature, its PAD's identity and its times.
    ``expiry_at`` (default ``at``) is the time it must not have expired by: the
    transaction's timestamp for one on chain."""
    b = matter.body
    if not matter.signature_valid():
        raise RuleError("matter_signature", "the matter's signature does not verify")
    if b.pad != peer_id(matter.public_key):
        raise RuleError("matter_pad", "matter.pad is not H(public_key) of its signer")
    if not b.issued_at <= b.expires_at <= b.issued_at + MATTER_MAX_MS:
        raise RuleError("matter_times", "expires_at must be within 24 h after issued_at")
    if not b.issued_at <= b.use_until <= b.issued_at + USE_MAX_MS:
        raise RuleError("use_until", "use_until must be within 90 days after issued_at")
    if b.issued_at > at + max_skew_ms:
        raise RuleError("matter_future", "the matter is issued in the future")
    if (at if expiry_at is None else expiry_at) > b.expires_at:
        raise RuleError("matter_expired", "the matter has expired")


def verify_matter(matter: Signed[MatterBody], lookup: Lookup, admins: Iterable[Admin], *,
                  at: int, expiry_at: int | None = None, max_skew_ms: int = MAX_SKEW_MS
                  ) -> VerifiedMatter:
    """Everything the kiosk checks before it shows the consent screen (§6 "Matter"), and the
    validators before they commit it."""
    check_matter_self(matter, at=at, expiry_at=expiry_at, max_skew_ms=max_skew_ms)
    b = matter.body
    pad = usable_enrollment(b.enrollment, lookup, admins, public_key=matter.public_key,
                            alg=matter.alg, roles=("pad",), at=at, office=b.office,
                            what="the matter's PAD")
    if b.use_until > pad.not_after:
        raise RuleError("use_until", "use_until is after the PAD's enrollment expires")
    holder = b.on_behalf_of if b.on_behalf_of is not None else b.subject
    licenses = []
    for tx_id in b.licenses:
        dep = verified_deposit(tx_id, lookup, admins)
        if dep.deposit.holder != holder:
            raise RuleError("deposit_holder", f"license {_short(tx_id)} is another holder's")
        licenses.append(dep)
    return VerifiedMatter(matter, pad, tuple(licenses))


# -- the two ways of identity -------------------------------------------------------------------


def _bind(kind: str, body: Any, *, session: bytes, terminal: bytes, action: str,
          target: bytes, tx_time: int, max_skew_ms: int) -> None:
    for name, want in (("session", session), ("terminal", terminal), ("action", action),
                       ("target", target)):
        if getattr(body, name) != want:
            raise RuleError(f"{kind}_{name}", f"the {kind} is for another {name}")
    if body.issued_at < tx_time - PROOF_MAX_AGE_MS:
        raise RuleError(f"{kind}_stale", f"the {kind} is more than 5 minutes old")
    if body.issued_at > tx_time + max_skew_ms:
        raise RuleError(f"{kind}_future", f"the {kind} is issued in the future")


def verify_attestation(att: Signed[AttestationBody], lookup: Lookup, admins: Iterable[Admin],
                       *, subject: bytes, represents: bytes | None, session: bytes,
                       capture_digest: bytes, terminal: bytes, action: str, target: bytes,
                       tx_time: int, at: int, max_skew_ms: int = MAX_SKEW_MS) -> Enrollment:
    """§6 "Face way": an attestation counts only when every one of these holds; returns the
    identity service's enrollment."""
    if not att.signature_valid():
        raise RuleError("attestation_signature", "the attestation's signature does not verify")
    b = att.body
    service = usable_enrollment(b.enrollment, lookup, admins, public_key=att.public_key,
                                alg=att.alg, roles=("identity",), at=at,
                                what="the identity service")
    assert service.min_score is not None  # Enrollment requires it for role identity
    if b.result != "match" or b.score < service.min_score:
        raise RuleError("attestation_result", f"{b.result}, score {b.score} (the service's "
                        f"minimum is {service.min_score})")
    if b.subject != subject:
        raise RuleError("attestation_subject", "the attestation is for another person")
    if b.represents != represents:
        raise RuleError("attestation_represents", "the attestation does not name the "
                        "enterprise the matter is for" if represents is not None else
                        "the attestation names an enterprise the matter is not for")
    if b.capture_digest != capture_digest:
        raise RuleError("attestation_capture_digest", "the attestation is for another capture")
    _bind("attestation", b, session=session, terminal=terminal, action=action, target=target,
          tx_time=tx_time, max_skew_ms=max_skew_ms)
    return service


def verify_confirmation(conf: Signed[ConfirmationBody], lookup: Lookup,
                        admins: Iterable[Admin], *, office: str, pad_key: bytes,
                        enterprise: bool, session: bytes, terminal: bytes, action: str,
                        target: bytes, tx_time: int, at: int,
                        max_skew_ms: int = MAX_SKEW_MS) -> Enrollment:
    """§6 "Clerk way": signed by a clerk of ``office`` (never the PAD's own key), bound to
    the session, the kiosk, the action and its target; returns the clerk's enrollment."""
    if not conf.signature_valid():
        raise RuleError("confirmation_signature", "the confirmation's signature does not "
                        "verify")
    if conf.public_key == pad_key:
        raise RuleError("confirmation_pad_key", "signed by the PAD's device key, not by a "
                        "clerk's own key")
    b = conf.body
    clerk = usable_enrollment(b.enrollment, lookup, admins, public_key=conf.public_key,
                              alg=conf.alg, roles=("clerk",), at=at, office=office,
                              what="the clerk")
    if enterprise and b.method != "id_card+registration":
        raise RuleError("confirmation_method", "an enterprise matter needs the business "
                        "registration checked too (method id_card+registration)")
    _bind("confirmation", b, session=session, terminal=terminal, action=action,
          target=target, tx_time=tx_time, max_skew_ms=max_skew_ms)
    return clerk


# -- transactions -----------------------------------------------------------------------------


def _data(tx: SignedTx, cls: type) -> Any:
    try:
        data = decode_data(tx.body.type, tx.body.data)
    except LedgerError as exc:
        raise RuleError("tx_shape", f"{tx.body.type[:30]}: {exc}") from None
    if type(data) is not cls:
        raise RuleError("tx_shape", f"a {tx.body.type[:30]} where {cls.__name__} data is due")
    return data


def verify_authorize(tx: SignedTx, data: AuthorizeData, lookup: Lookup,
                     admins: Iterable[Admin], *, at: int, max_skew_ms: int = MAX_SKEW_MS
                     ) -> VerifiedMatter:
    """§6 ``license.authorize``: the kiosk's enrollment, the matter, and the one way."""
    sender = tx.body.sender
    if data.terminal != sender:
        raise RuleError("authorize_terminal", "data.terminal is not the sender")
    usable_enrollment(data.enrollment, lookup, admins, public_key=tx.public_key, alg=tx.alg,
                      roles=("kiosk",), at=at, what="the kiosk")
    verified = verify_matter(data.matter, lookup, admins, at=at, expiry_at=tx.body.timestamp,
                             max_skew_ms=max_skew_ms)
    m = data.matter
    bind = {"session": data.session, "terminal": sender, "action": "authorize",
            "target": m.digest, "tx_time": tx.body.timestamp, "at": at,
            "max_skew_ms": max_skew_ms}
    if data.attestation is not None:
        assert data.capture_digest is not None
        verify_attestation(data.attestation, lookup, admins, subject=m.body.subject,
                           represents=m.body.on_behalf_of, capture_digest=data.capture_digest,
                           **bind)
    else:
        assert data.confirmation is not None
        verify_confirmation(data.confirmation, lookup, admins, office=m.body.office,
                            pad_key=m.public_key, enterprise=m.body.on_behalf_of is not None,
                            **bind)
    return verified


def _verify_revoke(tx: SignedTx, data: RevokeData, lookup: Lookup, admins: tuple[Admin, ...],
                   *, at: int, max_skew_ms: int) -> None:
    ref = lookup(data.authorization)
    if ref is None or ref.tx.body.type != "license.authorize":
        raise RuleError("authorization_missing", f"{_short(data.authorization)} is not a "
                        "license.authorize on chain")
    try:
        matter = _data(ref.tx, AuthorizeData).matter
    except RuleError as exc:
        raise RuleError("authorization_missing", f"the authorization is malformed: {exc}"
                        ) from None
    b = matter.body
    if data.by_admin:
        admin = next((a for a in admins if a.public_key == tx.public_key and a.alg == tx.alg),
                     None)
        if admin is None:
            raise RuleError("admin", "a revocation without proofs must be a district admin's")
        pad_ref = lookup(b.enrollment)
        pad = _data(pad_ref.tx, Enrollment) if pad_ref is not None else None
        if pad is None or pad.district != admin.district:
            raise RuleError("admin_district", "the admin is not of the matter's district")
        return
    assert data.enrollment is not None
    usable_enrollment(data.enrollment, lookup, admins, public_key=tx.public_key, alg=tx.alg,
                      roles=("kiosk",), at=at, what="the kiosk")
    bind = {"session": data.session, "terminal": tx.body.sender, "action": "revoke",
            "target": data.authorization, "tx_time": tx.body.timestamp, "at": at,
            "max_skew_ms": max_skew_ms}
    if data.attestation is not None:
        assert data.capture_digest is not None
        verify_attestation(data.attestation, lookup, admins, subject=b.subject,
                           represents=b.on_behalf_of, capture_digest=data.capture_digest,
                           **bind)
    else:
        assert data.confirmation is not None
        verify_confirmation(data.confirmation, lookup, admins, office=b.office,
                            pad_key=matter.public_key, enterprise=b.on_behalf_of is not None,
                            **bind)


def check_tx(tx: SignedTx, lookup: Lookup, admins: Iterable[Admin], *, at: int,
             chain_id: str | None = None, max_skew_ms: int = MAX_SKEW_MS) -> Any:
    """Every §6 rule of ``tx`` as a block-validity rule, at ``at`` (its block's timestamp,
    or a district node's now at admission); returns its typed data."""
    admins = tuple(admins)
    try:
        verify_tx(tx, chain_id)
    except VerificationError as exc:
        raise RuleError("tx_signature" if exc.rule == "tx_signature" else "tx_shape",
                        str(exc)) from None
    if abs(tx.body.timestamp - at) > max_skew_ms:
        raise RuleError("tx_time", "the transaction's timestamp is not within max_skew of "
                        "its block's")
    kind = tx.body.type
    if kind == "device.enroll":
        return check_enrollment_tx(tx, admins)
    if kind == "evidence.deposit":
        return _check_deposit(tx, lookup, admins, at)[0]
    if kind == "license.authorize":
        data = _data(tx, AuthorizeData)
        verify_authorize(tx, data, lookup, admins, at=at, max_skew_ms=max_skew_ms)
        return data
    if kind == "authorization.revoke":
        data = _data(tx, RevokeData)
        _verify_revoke(tx, data, lookup, admins, at=at, max_skew_ms=max_skew_ms)
        return data
    raise RuleError("tx_shape", f"unknown transaction type {kind[:40]!r}")


# -- what a check will look up ----------------------------------------------------------------


def needs(obj: SignedTx | Signed[Any] | MatterBody | bytes, lookup: Lookup) -> set[bytes]:
    """The tx_ids that checking ``obj`` (a transaction, a signed object, a matter body not
    yet signed, or a tx_id alone) will look up and ``lookup`` does not have yet (a deposit's
    issuer enrollment is known only once the deposit is: call again after fetching).
    Malformed data needs nothing: its check fails first."""
    want: list[bytes] = []
    try:
        if isinstance(obj, bytes):
            want.append(obj)
        elif isinstance(obj, MatterBody | Signed):
            _needs_body(obj.body if isinstance(obj, Signed) else obj, lookup, want)
        else:
            kind = obj.body.type
            data = decode_data(kind, obj.body.data)
            if isinstance(data, Deposit):
                want.append(data.enrollment)
            elif isinstance(data, AuthorizeData):
                want.append(data.enrollment)
                for signed in (data.matter, data.attestation, data.confirmation):
                    if signed is not None:
                        _needs_body(signed.body, lookup, want)
            elif isinstance(data, RevokeData):
                want.append(data.authorization)
                if data.enrollment is not None:
                    want.append(data.enrollment)
                for signed in (data.attestation, data.confirmation):
                    if signed is not None:
                        _needs_body(signed.body, lookup, want)
                ref = lookup(data.authorization)
                if ref is not None and ref.tx.body.type == "license.authorize":
                    _needs_body(AuthorizeData.from_obj(ref.tx.body.data).matter.body, lookup,
                                want)
    except LedgerError:
        pass
    return {t for t in want if lookup(t) is None}


def _needs_body(body: Any, lookup: Lookup, want: list[bytes]) -> None:
    want.append(body.enrollment)
    if isinstance(body, MatterBody):
        for tx_id in body.licenses:
            want.append(tx_id)
            ref = lookup(tx_id)
            if ref is not None and ref.tx.body.type == "evidence.deposit":
                try:
                    want.append(Deposit.from_obj(ref.tx.body.data).enrollment)
                except LedgerError:
                    pass
