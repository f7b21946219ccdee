"""A small §6 world for the rule tests: admin keys of two districts, enrolled keys of every
role, license deposits, a signed matter, an attestation and a confirmation, all valid, with a
dict-backed ``lookup``. Tests break one rule at a time with :meth:`World.replace` and the
``make_*`` builders."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from appliance.node import objects as ob
from appliance.node import rules
from appliance.node.model import Admin, SignedTx, peer_id
from appliance.node.signatures import generate_keypair
from appliance.node.tx import SoftwareSigner, build_tx

CHAIN = "world"
T0 = 1_800_000_000_000  # the time the world is judged at (ms)
MIN = 60_000
DAY = rules.DAY_MS
OFFICE = "海淀区市场监管局 Haidian SAMR"
OTHER_OFFICE = "朝阳区税务局 Chaoyang Tax"
CITIZEN_ID = "11010819800101001X"
ENTERPRISE = "91110108MA01ABCDEF"


def signer(alg: str = "sm2") -> SoftwareSigner:
    private, public = generate_keypair(alg)
    return SoftwareSigner(alg, private, public)


@dataclass
class World:
    admins: dict[str, SoftwareSigner] = field(default_factory=dict)
    keys: dict[str, SoftwareSigner] = field(default_factory=dict)
    refs: dict[bytes, rules.Ref] = field(default_factory=dict)
    enrollments: dict[str, bytes] = field(default_factory=dict)  # name -> tx_id
    licenses: list[bytes] = field(default_factory=list)
    height: int = 0
    t0: int = T0  # the time the world is judged at

    @property
    def anchor_admins(self) -> tuple[Admin, ...]:
        return tuple(Admin(s.alg, s.public_key, d) for d, s in self.admins.items())

    def lookup(self, tx_id: bytes) -> rules.Ref | None:
        return self.refs.get(tx_id)

    def put(self, tx: SignedTx, time_ms: int) -> bytes:
        self.height += 1
        self.refs[tx.tx_id] = rules.Ref(tx, self.height, time_ms)
        return tx.tx_id

    def tx(self, key: Any, kind: str, data: dict[str, Any], timestamp: int | None = None
           ) -> SignedTx:
        return build_tx(key, chain_id=CHAIN, type=kind, data=data,
                        timestamp_ms=self.t0 if timestamp is None else timestamp)

    def enroll(self, name: str, role: str, *, district: str = "haidian", office: str | None
               = None, staff: str | None = None, min_score: int | None = None,
               at: int | None = None, not_after: int | None = None, key: Any = None,
               admin: str | None = None) -> bytes:
        at = self.t0 - DAY if at is None else at
        key = key or self.keys.get(name) or signer()
        self.keys[name] = key
        e = ob.Enrollment(peer_id(key.public_key), key.alg, key.public_key, district,
                          "hall-1", role, not_after if not_after is not None else at + 300 * DAY,
                          office, staff, min_score)
        tx = self.tx(self.admins[admin or district], "device.enroll", e.to_obj(), at)
        tx_id = self.put(tx, at)
        self.enrollments[name] = tx_id
        return tx_id

    def deposit(self, issuer: str, holder: bytes | None, kind: str = "business_license",
                at: int | None = None) -> bytes:
        at = self.t0 - DAY // 2 if at is None else at
        d = ob.Deposit(os.urandom(32), kind, self.enrollments[issuer], holder)
        return self.put(self.tx(self.keys[issuer], "evidence.deposit", d.to_obj(), at), at)

    def matter_body(self, **changes: Any) -> ob.MatterBody:
        pad = self.keys["pad"]
        body = ob.MatterBody(
            matter_id=b"\x01" * 16, title="开办餐饮店 Open a restaurant", office=OFFICE,
            agencies=("海淀区市场监管局", "海淀区卫生健康委"), purpose="食品经营许可 Food licence",
            subject=ob.identifier_hash(CITIZEN_ID), licenses=tuple(self.licenses),
            issued_at=self.t0 - 10 * MIN, expires_at=self.t0 + 60 * MIN,
            use_until=self.t0 + 30 * DAY,
            pad=peer_id(pad.public_key), enrollment=self.enrollments["pad"])
        return dataclasses.replace(body, **changes)

    def matter(self, key: str = "pad", **changes: Any) -> ob.Signed[ob.MatterBody]:
        return ob.Signed.sign(self.matter_body(**changes), self.keys[key])

    def attestation(self, matter: ob.Signed[Any], session: bytes, capture: bytes, /, *,
                    key: str = "identity", **changes: Any) -> ob.Signed[ob.AttestationBody]:
        body = ob.AttestationBody(
            session=session, capture_digest=capture, subject=matter.body.subject,
            terminal=peer_id(self.keys["kiosk"].public_key), action="authorize",
            target=matter.digest, result="match", score=800, issued_at=self.t0 - MIN,
            service="identity", enrollment=self.enrollments["identity"],
            represents=matter.body.on_behalf_of)
        return ob.Signed.sign(dataclasses.replace(body, **changes), self.keys[key])

    def confirmation(self, matter: ob.Signed[Any], session: bytes, /, *, key: str = "clerk",
                     **changes: Any) -> ob.Signed[ob.ConfirmationBody]:
        body = ob.ConfirmationBody(
            session=session, terminal=peer_id(self.keys["kiosk"].public_key),
            action="authorize", target=matter.digest,
            method="id_card+registration" if matter.body.on_behalf_of else "id_card",
            issued_at=self.t0 - MIN, enrollment=self.enrollments[key])
        return ob.Signed.sign(dataclasses.replace(body, **changes), self.keys[key])

    def authorize(self, matter: ob.Signed[Any], *, way: str = "face", session: bytes = None,
                  timestamp: int | None = None, kiosk: str = "kiosk", **proof: Any
                  ) -> SignedTx:
        session = session or os.urandom(16)
        capture = proof.get("capture") or os.urandom(32)
        terminal = peer_id(self.keys[kiosk].public_key)
        if way == "face":
            att = proof.get("attestation") or self.attestation(matter, session, capture)
            data = ob.AuthorizeData(matter, session, terminal, self.enrollments[kiosk],
                                    capture_digest=capture, attestation=att)
        else:
            conf = proof.get("confirmation") or self.confirmation(matter, session)
            data = ob.AuthorizeData(matter, session, terminal, self.enrollments[kiosk],
                                    confirmation=conf)
        return self.tx(self.keys[kiosk], "license.authorize", data.to_obj(), timestamp)

    def check(self, tx: SignedTx, at: int | None = None) -> Any:
        return rules.check_tx(tx, self.lookup, self.anchor_admins,
                              at=self.t0 if at is None else at, chain_id=CHAIN)

    async def resolve(self, obj: Any, *, timeout_s: float) -> Any:
        """As appliance.node.references.References.resolve: here everything is at hand."""
        return self.lookup


def make_world(t0: int = T0) -> World:
    w = World(t0=t0)
    w.admins = {"haidian": signer(), "chaoyang": signer("ecdsa-p256")}
    w.enroll("kiosk", "kiosk")
    w.enroll("pad", "pad", office=OFFICE)
    w.enroll("clerk", "clerk", office=OFFICE, staff="S-0042")
    w.enroll("identity", "identity", min_score=600)
    w.enroll("issuer", "issuer", office="海淀区公安分局 Haidian PSB")
    w.enroll("issuer2", "issuer", office="朝阳区市场监管局", district="chaoyang")
    holder = ob.identifier_hash(CITIZEN_ID)
    w.licenses = [w.deposit("issuer", holder, "resident_id_card"),
                  w.deposit("issuer2", holder, "household_register")]
    return w
