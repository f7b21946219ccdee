"""The §6 (revision 2) rules of the district-node double (hil.ledger_rules) at its HTTP API.

One test per rule: each case builds a valid transaction with :mod:`ledger_world`'s builders,
changes the one field that breaks its rule (before the object holding it is signed, so
that nothing else breaks), posts it to a running double serving a real chain directory, and
asserts the error code and the rule named at the head of the message. The valid
transactions themselves are accepted (the tests at the end), so a refusal comes from the
change. Hypothesis checks that the decoder and the rules turn any input into a typed
refusal.
"""

from __future__ import annotations

import os
import shutil
import sys
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import wire
from appliance.gm import sm3
from hil import chain as hc
from hil import ledger_rules as lr
from hil.district_node import DistrictNode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ledger_world as lw  # noqa: E402
from ledger_world import (  # noqa: E402
    CHAOYANG,
    DAY,
    ENTERPRISE_ID,
    HAIDIAN,
    MINUTE,
    OFFICE_A,
    OFFICE_B,
    SUBJECT,
    World,
)

pytestmark = pytest.mark.timeout(300)

H = sm3.digest


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    w = World(tmp_path_factory.mktemp("rules"))
    yield w
    w.close()


@pytest.fixture(autouse=True)
def no_internal_errors(world: World):
    start = len(world.log_lines)
    yield
    bad = [line for line in world.log_lines[start:]
           if "internal error" in line or "failed" in line]
    assert bad == []


# -- cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    rule: str  # the rule named at the head of the refusal's message
    code: str
    make: Callable[[World], Any]  # a signed_tx (dict) or the raw body
    variant: str = ""

    @property
    def id(self) -> str:
        return self.rule + (f"[{self.variant}]" if self.variant else "")


def setter(**fields: Any) -> Callable[[dict], None]:
    return lambda obj: obj.update(fields)


def dropper(*names: str) -> Callable[[dict], None]:
    def drop(obj: dict) -> None:
        for name in names:
            del obj[name]
    return drop


def flip(signature: bytes) -> bytes:
    return bytes([signature[0] ^ 1]) + signature[1:]


def flip_in(name: str) -> Callable[[dict], None]:
    """A data hook: one bit of the signature of the signed object ``data[name]`` changed."""
    def change(data: dict) -> None:
        data[name]["signature"] = flip(data[name]["signature"])
    return change


def times(w: World, **kw: int) -> Callable[[dict], None]:
    """Matter times relative to the tx timestamp ``ts`` given in kw."""
    ts = kw.pop("ts")
    return setter(**{k: ts + v for k, v in kw.items()})


def nine_licenses(w: World) -> Any:
    return w.authorize(m=setter(licenses=[os.urandom(32) for _ in range(9)]))


def repeated(name: str, value: Any) -> Callable[[dict], None]:
    return lambda body: body.update({name: [value, value]})


def enterprise_matter_by(w: World, via: str, **kw: Any) -> Any:
    return w.authorize(via=via, enterprise=True, **kw)


CASES: list[Case] = [
    # -- bad_tx: encoding, shape, types -----------------------------------------------------
    Case("tx.cbor", "bad_tx", lambda w: wire.encode(w.authorize()) + b"\x00", "trailing"),
    Case("tx.cbor", "bad_tx", lambda w: b"\xbf\xff", "indefinite"),
    Case("tx", "bad_tx", lambda w: wire.encode([w.authorize()]), "not a map"),
    Case("tx.shape", "bad_tx", lambda w: {**w.authorize(), "extra": 1}),
    Case("tx.alg", "bad_tx", lambda w: {**w.authorize(), "alg": "rsa"}),
    Case("tx.public_key", "bad_tx", lambda w: {**w.authorize(), "public_key": bytes(64)}),
    Case("body.shape", "bad_tx", lambda w: w.authorize(b=dropper("nonce"))),
    Case("body.shape", "bad_tx", lambda w: w.authorize(b=setter(extra="x")), "extra"),
    Case("body.nonce", "bad_tx", lambda w: w.authorize(b=setter(nonce=bytes(15)))),
    Case("body.timestamp", "bad_tx", lambda w: w.authorize(b=setter(timestamp=-1)), "type"),
    Case("body.chain_id", "bad_tx", lambda w: w.authorize(b=setter(chain_id="another"))),
    Case("body.sender", "bad_tx",
         lambda w: w.deposit(b=setter(sender=w.keys["issuer1"].peer_id))),
    Case("body.type", "bad_tx", lambda w: w.authorize(b=setter(type="coin.transfer"))),
    Case("body.memo", "bad_tx", lambda w: w.authorize(b=setter(memo="two\nlines")), "Cc"),
    # -- bad_tx: times of the transaction -----------------------------------------------------
    Case("body.timestamp", "bad_tx", lambda w: w.deposit(ts=w.now() - 2 * MINUTE), "past"),
    Case("body.timestamp", "bad_tx", lambda w: w.deposit(ts=w.now() + 2 * MINUTE), "future"),
    # -- bad_tx: text rules (on the matter's fields, then the limits) -------------------------
    Case("matter.title", "bad_tx", lambda w: w.authorize(m=setter(title="Cafe\u0301")), "NFC"),
    Case("matter.purpose", "bad_tx", lambda w: w.authorize(m=setter(purpose="a\u200bb")),
         "Cf"),
    Case("matter.purpose", "bad_tx", lambda w: w.authorize(m=setter(purpose="a\x07b")), "Cc"),
    Case("matter.title", "bad_tx", lambda w: w.authorize(m=setter(title="")), "empty"),
    Case("matter.title", "bad_tx", lambda w: w.authorize(m=setter(title="题" * 42 + "xxx")),
         "129 bytes"),
    Case("enroll.office", "bad_tx", lambda w: w.enroll("k9", "kiosk", office="o" * 65),
         "65 bytes"),
    Case("matter.agencies[1]", "bad_tx",
         lambda w: w.authorize(m=setter(agencies=[OFFICE_A, "a" * 65])), "65 bytes"),
    Case("matter.purpose", "bad_tx", lambda w: w.authorize(m=setter(purpose="p" * 257)),
         "257 bytes"),
    Case("enroll.staff", "bad_tx",
         lambda w: w.enroll("clerk9", "clerk", office=OFFICE_A, staff="s" * 33), "33 bytes"),
    Case("enroll.hall", "bad_tx", lambda w: w.enroll("k9", "kiosk", d=setter(hall=""))),
    Case("deposit.kind", "bad_tx", lambda w: w.deposit(kind="k" * 1025), "1025 bytes"),
    Case("attestation.service", "bad_tx",
         lambda w: w.authorize(a=setter(service="s" * 1025)), "1025 bytes"),
    # -- bad_tx: device.enroll ------------------------------------------------------------------
    Case("enroll.shape", "bad_tx", lambda w: w.enroll("k9", "kiosk", d=setter(extra=1))),
    Case("enroll.shape", "bad_tx", lambda w: w.enroll("k9", "kiosk", d=dropper("hall")),
         "missing"),
    Case("enroll.role", "bad_tx", lambda w: w.enroll("k9", "admin")),
    Case("enroll.alg", "bad_tx", lambda w: w.enroll("k9", "kiosk", d=setter(alg="rsa"))),
    Case("enroll.public_key", "bad_tx",
         lambda w: w.enroll("k9", "kiosk", public_key=b"\x04" + bytes(64)), "off curve"),
    Case("enroll.public_key", "bad_tx",
         lambda w: w.enroll("k9", "kiosk", d=setter(alg="sm2"),
                            public_key=lw.key("p256", "ecdsa-p256").public_key), "other curve"),
    Case("enroll.terminal", "bad_tx",
         lambda w: w.enroll("k9", "kiosk", d=setter(terminal=bytes(32)))),
    Case("enroll.office", "bad_tx", lambda w: w.enroll("p9", "pad"), "pad"),
    Case("enroll.office", "bad_tx", lambda w: w.enroll("i9", "issuer"), "issuer"),
    Case("enroll.office", "bad_tx", lambda w: w.enroll("c9", "clerk", staff="C9"), "clerk"),
    Case("enroll.staff", "bad_tx", lambda w: w.enroll("c9", "clerk", office=OFFICE_A),
         "missing"),
    Case("enroll.staff", "bad_tx", lambda w: w.enroll("k9", "kiosk", staff="S1"),
         "forbidden"),
    Case("enroll.min_score", "bad_tx", lambda w: w.enroll("id9", "identity"), "missing"),
    Case("enroll.min_score", "bad_tx", lambda w: w.enroll("k9", "kiosk", min_score=500),
         "forbidden"),
    Case("enroll.min_score", "bad_tx", lambda w: w.enroll("id9", "identity", min_score=1001),
         "range"),
    Case("enroll.not_after", "bad_tx",
         lambda w: w.enroll("k9", "kiosk", not_after=w.now()), "not after ts"),
    Case("enroll.not_after", "bad_tx",
         lambda w: w.enroll("k9", "kiosk", not_after=w.now() + 400 * DAY + 1), "400 days"),
    # -- bad_tx: evidence.deposit ---------------------------------------------------------------
    Case("deposit.shape", "bad_tx", lambda w: w.deposit(d=setter(issuer=OFFICE_A)),
         "free-text issuer"),
    Case("deposit.digest", "bad_tx", lambda w: w.deposit(digest=bytes(31))),
    Case("deposit.holder", "bad_tx",
         lambda w: w.deposit("kiosk", kind="audit.head", enrollment=w.enr["kiosk"])),
    # -- bad_tx: license.authorize data ------------------------------------------------------------
    Case("authorize.shape", "bad_tx",
         lambda w: w.authorize(d=lambda d: d.update(confirmation=w.authorize(via="clerk")[
             "body"]["data"]["confirmation"])), "both ways"),
    Case("authorize.shape", "bad_tx",
         lambda w: w.authorize(d=dropper("attestation", "capture_digest")), "neither"),
    Case("authorize.shape", "bad_tx", lambda w: w.authorize(d=dropper("capture_digest")),
         "attestation without capture_digest"),
    Case("authorize.session", "bad_tx", lambda w: w.authorize(session=bytes(15))),
    Case("authorize.terminal", "bad_tx",
         lambda w: w.authorize(d=setter(terminal=w.keys["kiosk2"].peer_id))),
    # -- bad_tx: the matter ---------------------------------------------------------------------
    Case("matter.shape", "bad_tx", lambda w: w.authorize(m=setter(issuer=OFFICE_A))),
    Case("matter.shape", "bad_tx", lambda w: w.authorize(m=dropper("purpose")), "missing"),
    Case("matter.alg", "bad_tx",
         lambda w: w.authorize(d=lambda d: d["matter"].update(alg="sm9"))),
    Case("matter.matter_id", "bad_tx", lambda w: w.authorize(m=setter(matter_id=bytes(8)))),
    Case("matter.on_behalf_of", "bad_tx",
         lambda w: w.authorize(m=setter(on_behalf_of=b"x"))),
    Case("matter.licenses", "bad_tx", lambda w: w.authorize(m=setter(licenses=[])), "none"),
    Case("matter.licenses", "bad_tx", nine_licenses, "nine"),
    Case("matter.licenses", "bad_tx",
         lambda w: w.authorize(m=repeated("licenses", w.licenses[0])), "repeated"),
    Case("matter.agencies", "bad_tx", lambda w: w.authorize(m=setter(agencies=[])), "none"),
    Case("matter.agencies", "bad_tx",
         lambda w: w.authorize(m=setter(agencies=[f"agency {i}" for i in range(17)])),
         "seventeen"),
    Case("matter.agencies", "bad_tx", lambda w: w.authorize(m=repeated("agencies", OFFICE_B)),
         "repeated"),
    Case("matter.size", "bad_tx",
         lambda w: w.authorize(m=setter(agencies=[f"{i:02d}" + "a" * 62 for i in range(16)]))),
    Case("matter.pad", "bad_tx", lambda w: w.authorize(m=setter(pad=bytes(32)))),
    Case("matter.expires_at", "bad_tx",
         lambda w: w.authorize(ts=(t := w.now()), m=times(
             w, ts=t, issued_at=-MINUTE, expires_at=-MINUTE + 24 * 60 * MINUTE + 1)),
         "over 24 h"),
    Case("matter.expires_at", "bad_tx",
         lambda w: w.authorize(ts=(t := w.now()), m=times(
             w, ts=t, issued_at=30_000, expires_at=10_000, use_until=DAY)),
         "before issued_at"),
    Case("matter.use_until", "bad_tx",
         lambda w: w.authorize(ts=(t := w.now()), m=times(
             w, ts=t, issued_at=-MINUTE, use_until=-MINUTE + 90 * DAY + 1)), "over 90 days"),
    Case("matter.use_until", "bad_tx",
         lambda w: w.authorize(ts=(t := w.now()), m=times(
             w, ts=t, issued_at=-MINUTE, use_until=-MINUTE - 1)), "before issued_at"),
    Case("matter.expired", "bad_tx",
         lambda w: w.authorize(ts=(t := w.now()), m=times(
             w, ts=t, issued_at=-2 * 60 * MINUTE, expires_at=-1))),
    Case("matter.issued_at", "bad_tx",
         lambda w: w.authorize(ts=(t := w.now()), m=times(
             w, ts=t, issued_at=90_000, expires_at=2 * 60 * MINUTE, use_until=DAY)),
         "after now + max_skew"),
    # -- bad_tx: the attestation ----------------------------------------------------------------
    Case("attestation.shape", "bad_tx", lambda w: w.authorize(a=dropper("service"))),
    Case("attestation.shape", "bad_tx", lambda w: w.authorize(a=setter(name="Zhang San")),
         "extra"),
    Case("attestation.score", "bad_tx", lambda w: w.authorize(a=setter(score=1001))),
    Case("attestation.result", "bad_tx",
         lambda w: w.authorize(a=setter(result="no_match")), "no_match"),
    Case("attestation.result", "bad_tx", lambda w: w.authorize(a=setter(result="maybe")),
         "unknown"),
    Case("attestation.subject", "bad_tx", lambda w: w.authorize(a=setter(subject=bytes(32)))),
    Case("attestation.session", "bad_tx",
         lambda w: w.authorize(a=setter(session=os.urandom(16)))),
    Case("attestation.capture_digest", "bad_tx",
         lambda w: w.authorize(a=setter(capture_digest=os.urandom(32)))),
    Case("attestation.terminal", "bad_tx",
         lambda w: w.authorize(a=setter(terminal=w.keys["kiosk2"].peer_id))),
    Case("attestation.action", "bad_tx", lambda w: w.authorize(a=setter(action="revoke"))),
    Case("attestation.action", "bad_tx", lambda w: w.authorize(a=setter(action="grant")),
         "unknown"),
    Case("attestation.target", "bad_tx", lambda w: w.authorize(a=setter(target=bytes(32)))),
    Case("attestation.issued_at", "bad_tx",
         lambda w: w.authorize(ts=(t := w.now()), a=setter(issued_at=t - 5 * MINUTE - 1)),
         "over 5 min before"),
    Case("attestation.issued_at", "bad_tx",
         lambda w: w.authorize(ts=(t := w.now()), a=setter(issued_at=t + MINUTE + 1)),
         "after ts + max_skew"),
    Case("attestation.issued_at.now", "bad_tx",
         lambda w: w.authorize(ts=(t := w.now() + 50_000), a=setter(issued_at=t + 50_000))),
    Case("attestation.represents", "bad_tx",
         lambda w: w.authorize(a=setter(represents=ENTERPRISE_ID)), "without on_behalf_of"),
    Case("attestation.represents", "bad_tx",
         lambda w: enterprise_matter_by(w, "face", a=dropper("represents")), "missing"),
    Case("attestation.represents", "bad_tx",
         lambda w: enterprise_matter_by(w, "face", a=setter(represents=SUBJECT)), "other"),
    # -- bad_tx: the confirmation -----------------------------------------------------------------
    Case("confirmation.shape", "bad_tx",
         lambda w: w.authorize(via="clerk", c=dropper("method"))),
    Case("confirmation.method", "bad_tx",
         lambda w: w.authorize(via="clerk", c=setter(method="face")), "unknown"),
    Case("confirmation.method", "bad_tx",
         lambda w: enterprise_matter_by(w, "clerk", c=setter(method="id_card")),
         "enterprise"),
    Case("confirmation.session", "bad_tx",
         lambda w: w.authorize(via="clerk", c=setter(session=os.urandom(16)))),
    Case("confirmation.terminal", "bad_tx",
         lambda w: w.authorize(via="clerk", c=setter(terminal=w.keys["kiosk2"].peer_id))),
    Case("confirmation.action", "bad_tx",
         lambda w: w.authorize(via="clerk", c=setter(action="revoke"))),
    Case("confirmation.target", "bad_tx",
         lambda w: w.authorize(via="clerk", c=setter(target=bytes(32)))),
    Case("confirmation.issued_at", "bad_tx",
         lambda w: w.authorize(via="clerk", ts=(t := w.now()),
                               c=setter(issued_at=t - 5 * MINUTE - 1))),
    Case("confirmation.issued_at.now", "bad_tx",
         lambda w: w.authorize(via="clerk", ts=(t := w.now() + 50_000),
                               c=setter(issued_at=t + 50_000))),
    Case("confirmation.key", "bad_tx",
         lambda w: w.authorize(via="clerk", clerk="pad_as_clerk")),
    # -- bad_tx: authorization.revoke -------------------------------------------------------------
    Case("revoke.shape", "bad_tx", lambda w: w.revoke(via="admin", d=setter(
        enrollment=w.enr["kiosk"])), "enrollment without proofs"),
    Case("revoke.session", "bad_tx", lambda w: w.revoke(session=bytes(17))),
    Case("attestation.action", "bad_tx", lambda w: w.revoke(a=setter(action="authorize")),
         "revoke"),
    Case("attestation.target", "bad_tx", lambda w: w.revoke(a=setter(target=bytes(32))),
         "revoke"),
    Case("confirmation.target", "bad_tx",
         lambda w: w.revoke(via="clerk", c=setter(target=bytes(32))), "revoke"),
    Case("confirmation.action", "bad_tx",
         lambda w: w.revoke(via="clerk", c=setter(action="authorize")), "revoke"),
    # -- bad_signature -----------------------------------------------------------------------------
    Case("tx.signature", "bad_signature",
         lambda w: with_signature(tx := w.authorize(), flip(tx["signature"]))),
    Case("tx.signature", "bad_signature", lambda w: signed_by_other(w.authorize(), w),
         "another key"),
    Case("matter.signature", "bad_signature",  # before the target hashes it
         lambda w: w.authorize(matter=with_signature(m := w.matter(ts=w.now()),
                                                     flip(m["signature"])))),
    Case("attestation.signature", "bad_signature",
         lambda w: w.authorize(d=flip_in("attestation"))),
    Case("confirmation.signature", "bad_signature",
         lambda w: w.authorize(via="clerk", d=flip_in("confirmation"))),
    Case("matter.signature", "bad_signature",
         lambda w: w.authorize(matter=signed_by_other(w.matter(ts=w.now()), w)),
         "another key"),
    # -- unknown_sender ----------------------------------------------------------------------------
    Case("enroll.sender", "unknown_sender",
         lambda w: w.enroll("k9", "kiosk", admin=w.keys["issuer0"]), "not an admin"),
    Case("enroll.sender", "unknown_sender",
         lambda w: w.enroll("k9", "kiosk", district=HAIDIAN, admin=w.admins[CHAOYANG]),
         "other district"),
    Case("revoke.sender", "unknown_sender",
         lambda w: w.tx(w.keys["kiosk"], "authorization.revoke",
                        {"authorization": w.authorization, "session": os.urandom(16)})),
    Case("revoke.sender.district", "unknown_sender",
         lambda w: w.revoke(via="admin", admin=CHAOYANG)),
    # -- duplicate ---------------------------------------------------------------------------------
    Case("tx.duplicate", "duplicate", lambda w: included(w, w.deposit()), "on chain"),
    Case("tx.duplicate", "duplicate", lambda w: accepted(w, w.deposit()), "pending"),
    Case("session.duplicate", "duplicate",
         lambda w: w.authorize(session=w.authorization_tx["body"]["data"]["session"]),
         "authorize"),
    Case("session.duplicate", "duplicate",
         lambda w: w.revoke(session=accepted(w, w.revoke())["body"]["data"]["session"]),
         "revoke"),
    # -- duplicate_matter --------------------------------------------------------------------------
    Case("matter.duplicate", "duplicate_matter",
         lambda w: w.authorize(matter=w.authorization_tx["body"]["data"]["matter"]),
         "on chain"),
    Case("matter.duplicate", "duplicate_matter",
         lambda w: w.authorize(via="clerk", matter=accepted(w, w.authorize())[
             "body"]["data"]["matter"]), "pending"),
    # -- bad_reference: deposits ---------------------------------------------------------------
    Case("deposit.enrollment", "bad_reference",
         lambda w: w.deposit(enrollment=os.urandom(32)), "missing"),
    Case("deposit.enrollment", "bad_reference",
         lambda w: w.deposit(enrollment=w.licenses[0]), "not an enrollment"),
    Case("deposit.enrollment.key", "bad_reference",
         lambda w: w.deposit("issuer0", enrollment=w.enr["issuer2"])),
    Case("deposit.enrollment.role", "bad_reference",
         lambda w: w.deposit("kiosk", enrollment=w.enr["kiosk"]), "kiosk license"),
    Case("deposit.enrollment.role", "bad_reference",
         lambda w: w.deposit("clerk", kind="audit.head", holder=None,
                             enrollment=w.enr["clerk"]), "clerk audit.head"),
    Case("deposit.enrollment.not_after", "bad_reference", lambda w: w.deposit("issuer_s")),
    # -- bad_reference: license.authorize ------------------------------------------------------
    Case("authorize.enrollment", "bad_reference",
         lambda w: w.authorize(d=setter(enrollment=os.urandom(32))), "missing"),
    Case("authorize.enrollment.key", "bad_reference",
         lambda w: w.authorize(d=setter(enrollment=w.enr["kiosk2"]))),
    Case("authorize.enrollment.role", "bad_reference",
         lambda w: authorize_from(w, "pad_b"), "a PAD as the kiosk"),
    Case("authorize.enrollment.not_after", "bad_reference",
         lambda w: w.authorize(kiosk="kiosk_s")),
    Case("matter.enrollment", "bad_reference",
         lambda w: w.authorize(m=setter(enrollment=os.urandom(32))), "missing"),
    Case("matter.enrollment.key", "bad_reference",
         lambda w: w.authorize(m=setter(enrollment=w.enr["pad2"]))),
    Case("matter.enrollment.role", "bad_reference",
         lambda w: w.authorize(m=setter(enrollment=w.enr["pad_as_clerk"]))),
    Case("matter.enrollment.office", "bad_reference",
         lambda w: w.authorize(m=setter(office=OFFICE_B, agencies=[OFFICE_B]))),
    Case("matter.enrollment.not_after", "bad_reference", lambda w: w.authorize(pad="pad_s")),
    Case("matter.use_until.pad", "bad_reference",
         lambda w: w.authorize(pad="pad_10d", ts=(t := w.now()), m=times(
             w, ts=t, issued_at=-MINUTE, use_until=20 * DAY))),
    Case("matter.licenses", "bad_reference",
         lambda w: w.authorize(m=setter(licenses=[os.urandom(32)])), "missing"),
    Case("matter.licenses", "bad_reference",
         lambda w: w.authorize(m=setter(licenses=[w.enr["kiosk"]])), "not a deposit"),
    Case("matter.licenses", "bad_reference",
         lambda w: w.authorize(m=setter(licenses=[hc.tx_id_of(accepted(w, w.deposit()))])),
         "pending"),
    Case("license.holder", "bad_reference",
         lambda w: w.authorize(m=setter(licenses=w.enterprise_licenses)), "other holder"),
    Case("license.holder", "bad_reference",
         lambda w: w.authorize(enterprise=True, m=setter(licenses=w.licenses)),
         "the person's license for the enterprise"),
    Case("license.holder", "bad_reference",
         lambda w: w.authorize(m=setter(licenses=[w.issuer_audit_head])), "audit.head"),
    Case("license.enrollment.not_after", "bad_reference",
         lambda w: w.authorize(m=setter(licenses=[hc.tx_id_of(w.expired_issuer_license)]))),
    Case("license.enrollment.role", "bad_reference",
         lambda w: w.authorize(m=setter(licenses=[hc.tx_id_of(w.kiosk_license)]))),
    Case("attestation.enrollment", "bad_reference",
         lambda w: w.authorize(a=setter(enrollment=os.urandom(32))), "missing"),
    Case("attestation.enrollment.key", "bad_reference",
         lambda w: w.authorize(a=setter(enrollment=w.enr["identity3"]))),
    Case("attestation.enrollment.role", "bad_reference",
         lambda w: w.authorize(identity="kiosk2")),
    Case("attestation.enrollment.not_after", "bad_reference",
         lambda w: w.authorize(identity="identity_s")),
    Case("attestation.min_score", "bad_reference",
         lambda w: w.authorize(a=setter(score=lw.MIN_SCORE - 1))),
    Case("confirmation.enrollment", "bad_reference",
         lambda w: w.authorize(via="clerk", c=setter(enrollment=os.urandom(32))), "missing"),
    Case("confirmation.enrollment.key", "bad_reference",
         lambda w: w.authorize(via="clerk", c=setter(enrollment=w.enr["clerk2"]))),
    Case("confirmation.enrollment.role", "bad_reference",
         lambda w: w.authorize(via="clerk", clerk="kiosk2")),
    Case("confirmation.enrollment.office", "bad_reference",
         lambda w: w.authorize(via="clerk", clerk="clerk_b")),
    Case("confirmation.enrollment.not_after", "bad_reference",
         lambda w: w.authorize(via="clerk", clerk="clerk_s")),
    # -- bad_reference: authorization.revoke ---------------------------------------------------
    Case("revoke.authorization", "bad_reference",
         lambda w: w.revoke(authorization=os.urandom(32)), "missing"),
    Case("revoke.authorization", "bad_reference",
         lambda w: w.revoke(authorization=w.licenses[0]), "not an authorization"),
    Case("revoke.authorization", "bad_reference",
         lambda w: w.revoke(via="admin", authorization=hc.tx_id_of(accepted(w, w.authorize()))),
         "pending"),
    Case("revoke.enrollment", "bad_reference",
         lambda w: w.revoke(d=setter(enrollment=os.urandom(32))), "missing"),
    Case("revoke.enrollment.role", "bad_reference", lambda w: revoke_from(w, "pad_b")),
    Case("revoke.enrollment.not_after", "bad_reference", lambda w: w.revoke(kiosk="kiosk_s")),
    Case("revoke.subject", "bad_reference",
         lambda w: w.revoke(authorization=w.authorization_b, a=setter(subject=bytes(32)))),
    Case("attestation.min_score", "bad_reference",
         lambda w: w.revoke(a=setter(score=lw.MIN_SCORE - 1)), "revoke"),
    Case("attestation.enrollment.role", "bad_reference",
         lambda w: w.revoke(identity="kiosk2"), "revoke"),
    Case("confirmation.enrollment.office", "bad_reference",
         lambda w: w.revoke(via="clerk", clerk="clerk_b"), "revoke"),
    Case("confirmation.enrollment.not_after", "bad_reference",
         lambda w: w.revoke(via="clerk", clerk="clerk_s"), "revoke"),
    Case("revoke.confirmation.key", "bad_reference",
         lambda w: w.revoke(via="clerk", clerk="pad_as_clerk")),
]


def included(w: World, tx: dict) -> dict:
    """``tx``, once in a block."""
    w.include(tx)
    return tx


def accepted(w: World, tx: dict) -> dict:
    """``tx``, after the node accepted it (it stays pending)."""
    w.accept(tx)
    return tx


def with_signature(obj: dict, signature: bytes) -> dict:
    obj["signature"] = signature
    return obj


def signed_by_other(obj: dict, w: World) -> dict:
    """``obj`` (a signed object) with a signature by another key over the same body; its
    public_key unchanged."""
    obj["signature"] = hc.sign(w.keys["kiosk2"], wire.encode(obj["body"]))
    return obj


def authorize_from(w: World, name: str) -> dict:
    """A license.authorize sent by the (PAD) key ``name`` with its own enrollment."""
    w.keys.setdefault(name, lw.key(name))
    return w.authorize(kiosk=name)


def revoke_from(w: World, name: str) -> dict:
    return w.revoke(kiosk=name)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule(world: World, case: Case) -> None:
    tx = case.make(world)
    status, got = world.post(tx)
    assert (status, got.get("error")) == (400, case.code), got
    assert set(got) == {"error", "message"}
    assert got["message"].startswith(case.rule + ":"), got["message"]


def test_every_case_id_is_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


# -- what the rules accept ------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda w: w.authorize(),
    lambda w: w.authorize(via="clerk"),
    lambda w: w.authorize(enterprise=True),
    lambda w: w.authorize(via="clerk", enterprise=True),
    lambda w: w.authorize(kiosk="kiosk2", a=setter(score=lw.MIN_SCORE)),  # ecdsa kiosk
    lambda w: w.authorize(m=setter(agencies=[f"{i:02d}" + "a" * 62 for i in range(8)])),
    lambda w: w.authorize(ts=(t := w.now()), m=times(
        w, ts=t, issued_at=-MINUTE, expires_at=-MINUTE + 24 * 60 * MINUTE,
        use_until=-MINUTE + 90 * DAY)),  # the limits themselves
    lambda w: w.authorize(ts=(t := w.now()), a=setter(issued_at=t - 5 * MINUTE)),
    lambda w: w.authorize(ts=(t := w.now()), a=setter(issued_at=t + MINUTE)),
    lambda w: w.authorize(m=setter(licenses=[*w.licenses, *w.licenses_more])),
    lambda w: w.revoke(),
    lambda w: w.revoke(via="clerk"),
    lambda w: w.revoke(via="admin"),
    lambda w: w.revoke(via="admin", admin=CHAOYANG, authorization=w.authorization_b),
    lambda w: w.revoke(kiosk="kiosk2"),  # any enrolled kiosk, not only the authorizing one
    lambda w: w.deposit("kiosk", kind="audit.head", holder=None, enrollment=w.enr["kiosk"]),
    lambda w: w.deposit("pad", kind="audit.head", holder=None, enrollment=w.enr["pad"]),
    lambda w: w.deposit("issuer1", holder=None),
    lambda w: w.enroll("k10", "kiosk", office=OFFICE_A, not_after=w.now() + 400 * DAY),
    lambda w: w.enroll("id10", "identity", min_score=0, district=CHAOYANG),
    lambda w: w.enroll("c10", "clerk", office="办事员科", staff="工号-7"),
    lambda w: w.authorize(b=setter(memo="备注 memo")),
], ids=["face", "clerk", "enterprise-face", "enterprise-clerk", "ecdsa-kiosk-min-score",
        "8-agencies-of-64-bytes", "time-limits", "attestation-5-min-before",
        "attestation-skew-after",
        "eight-licenses", "revoke-face", "revoke-clerk", "revoke-admin",
        "revoke-admin-chaoyang", "revoke-other-kiosk", "audit-head-kiosk", "audit-head-pad",
        "deposit-without-holder", "enroll-400-days", "enroll-identity", "enroll-clerk-text",
        "memo"])
def test_valid_transactions_are_accepted(world: World, make: Callable[[World], dict]) -> None:
    tx = make(world)
    assert world.post(tx) == (202, {"tx_id": hc.tx_id_of(tx)})


def test_accepted_transactions_reach_the_chain(world: World) -> None:
    """What was accepted is in the next block, and references to it then resolve."""
    auth = world.authorize(via="clerk")
    deposit = world.deposit()
    ids = world.include(auth, deposit)
    revoke = world.revoke(authorization=ids[0])
    assert world.post(revoke)[0] == 202
    matter = world.authorize(m=setter(licenses=[ids[1]]))
    assert world.post(matter)[0] == 202
    world.produce()
    with hc.Chain.open(world.chain_dir, readonly=True) as chain:
        for tx in (revoke, matter):
            raw, _, _ = chain.tx(hc.tx_id_of(tx))
            assert wire.decode(raw) == tx


# -- the indexes: shared, read from the chain, after a restart -------------------------------


def test_shared_state_and_a_second_node_reading_the_chain(world: World) -> None:
    """A node sharing the world node's state sees its pool at once; an independent node on
    the same directory learns sessions and matters from the chain only."""
    async def start(**kw: Any) -> DistrictNode:
        node = DistrictNode(world.chain_dir, block_interval_ms=0, clock_ms=world.now,
                            log=world.log_lines.append, **kw)
        await node.start()
        return node

    shared = world.call(start(share_state_with=world.node, peer_key_seed="shared"))
    alone = world.call(start(peer_key_seed="alone"))
    try:
        tx = world.authorize()
        world.accept(tx, shared.url)
        assert hc.tx_id_of(tx) in world.node.pending and shared.pending == world.node.pending
        # the world node holds it already: the same session, the same matter
        again = world.authorize(session=tx["body"]["data"]["session"])
        assert world.post(again)[1]["error"] == "duplicate"
        same_matter = world.authorize(matter=tx["body"]["data"]["matter"])
        assert world.post(same_matter)[1]["error"] == "duplicate_matter"
        # the independent node has its own pool: it does not see the pending tx ...
        assert world.post(same_matter, alone.url)[0] == 202  # (never produced: dropped)
        # ... until the world node puts it in a block
        world.produce()
        third = world.authorize(via="clerk", matter=tx["body"]["data"]["matter"])
        assert world.post(third, alone.url)[1]["error"] == "duplicate_matter"
        other = world.authorize(session=tx["body"]["data"]["session"])
        assert world.post(other, alone.url)[1]["error"] == "duplicate"
        copy = world.chain_dir.parent / "another"
        shutil.copytree(world.chain_dir, copy, dirs_exist_ok=True)
        with pytest.raises(ValueError, match="another chain directory"):
            DistrictNode(copy, share_state_with=world.node)
    finally:
        world.call(alone.stop())
        world.call(shared.stop())


def test_a_restarted_node_reads_its_indexes_from_the_chain(world: World,
                                                          tmp_path: Path) -> None:
    tx = world.authorize()
    world.include(tx)
    copy = tmp_path / "copy"
    shutil.copytree(world.chain_dir, copy)

    async def start() -> DistrictNode:
        node = DistrictNode(copy, block_interval_ms=0, clock_ms=world.now,
                            log=world.log_lines.append)
        await node.start()
        return node

    node = world.call(start())
    try:
        for again, code in ((world.authorize(matter=tx["body"]["data"]["matter"]),
                             "duplicate_matter"),
                            (world.authorize(session=tx["body"]["data"]["session"]),
                             "duplicate"),
                            (tx, "duplicate")):
            status, got = world.post(again, node.url)
            assert (status, got["error"]) == (400, code)
        assert world.post(world.authorize(), node.url)[0] == 202
    finally:
        world.call(node.stop())


# -- units: text, identifiers, anchors ----------------------------------------------------------


def test_text_rules() -> None:
    assert lr.check_text("北京 Beijing", "t") == "北京 Beijing"
    for bad in ("", "x" * 1025, "a\u0301", "\ufeffa", "a\u200db", "tab\t", "\x00",
                "a\ud800b", "\u202eevil", 5, b"bytes", None):
        with pytest.raises(lr.Refusal) as info:
            lr.check_text(bad, "t")
        assert info.value.code == "bad_tx" and info.value.rule == "t"
    assert lr.check_text("题" * 21 + "x", "t", 64)  # 64 bytes exactly
    with pytest.raises(lr.Refusal):
        lr.check_text("题" * 21 + "xy", "t", 64)
    # the NFC form of a decomposed text is accepted; the check is unicodedata's
    assert lr.check_text(unicodedata.normalize("NFC", "a\u0301"), "t")


def test_identifier_hash() -> None:
    assert hc.identifier_hash is lr.identifier_hash
    assert lr.identifier_hash("11010519491231002x") == lr.identifier_hash(
        "11010519491231002X") == H(b"GOVID1:11010519491231002X")
    assert lr.identifier_hash("91110108ma01abcd1x") == H(b"GOVID1:91110108MA01ABCD1X")
    for bad in ("", "１１０", "身份证"):
        with pytest.raises(ValueError):
            lr.identifier_hash(bad)


def test_parse_admins(world: World) -> None:
    with hc.Chain.open(world.chain_dir, readonly=True) as chain:
        anchor = wire.decode(chain.trust_anchor())
    admins = lr.parse_admins(anchor)
    assert [a.district for a in admins] == [HAIDIAN, CHAOYANG]
    assert lr.parse_admins({}) == ()
    for bad in ({"admins": {}}, {"admins": [{"alg": "sm2"}]},
                {"admins": [{**anchor["admins"][0], "public_key": b"\x04" + bytes(64)}]},
                {"admins": [{**anchor["admins"][0], "district": ""}]}):
        with pytest.raises(ValueError):
            lr.parse_admins(bad)


# -- hypothesis: the decoder and the rules only ever refuse with a typed error -------------------


class _Empty:
    def find(self, tx_id: bytes) -> lr.Found | None:
        return None

    def session_used(self, session: bytes) -> bool:
        return False

    def matter_used(self, pad: bytes, matter_id: bytes) -> bool:
        return False


RULES = lr.LedgerRules(lw.CHAIN_ID, ())
_leaves = (st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1)
           | st.binary(max_size=70) | st.text(max_size=40))
_keys = st.sampled_from(["body", "alg", "public_key", "signature", "chain_id", "type",
                         "timestamp", "sender", "data", "nonce", "matter", "session",
                         "terminal", "enrollment", "attestation", "confirmation",
                         "capture_digest", "digest", "kind", "holder", "x"])
_trees = st.recursive(_leaves, lambda children: st.lists(children, max_size=4)
                      | st.dictionaries(_keys, children, max_size=6), max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_refuses_any_bytes_with_a_typed_error(data: bytes) -> None:
    try:
        lr.decode_tx(data)
    except lr.Refusal as exc:
        assert exc.code == "bad_tx"
    try:
        RULES.admit(data, _Empty(), 0)
    except lr.Refusal as exc:
        assert exc.code in lr.CODES


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_trees)
def test_rules_refuse_any_tree_with_a_typed_error(tree: Any) -> None:
    for obj in (tree, {"body": tree, "alg": "sm2", "public_key": bytes(65),
                       "signature": bytes(64)}):
        with pytest.raises(lr.Refusal) as info:
            RULES.admit(wire.encode(obj), _Empty(), 0)
        assert info.value.code in lr.CODES


MAKERS = [
    lambda w: w.authorize(), lambda w: w.authorize(via="clerk", enterprise=True),
    lambda w: w.revoke(), lambda w: w.revoke(via="clerk"), lambda w: w.revoke(via="admin"),
    lambda w: w.deposit(), lambda w: w.enroll("k11", "identity", min_score=1),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_valid_transactions_get_a_typed_answer(world: World,
                                                        data: st.DataObject) -> None:
    """A valid transaction with any one value in it replaced gets 202 or a 400 with a code
    of §7, never anything else (no internal error: see the autouse fixture)."""
    tx = data.draw(st.sampled_from(MAKERS))(world)
    paths = list(_paths(tx))
    path = data.draw(st.sampled_from(paths))
    parent = tx
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = data.draw(_leaves)
    status, got = world.post(wire.encode(tx))
    assert status == 202 or (status == 400 and got["error"] in lr.CODES), got


def _paths(obj: Any, prefix: tuple = ()) -> Any:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))
