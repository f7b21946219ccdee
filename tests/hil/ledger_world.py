"""A district-node double with a populated chain, for the §6 rule tests (real HTTP, a real
chain directory): enrolled terminals of every role, license deposits in blocks, an
authorization on chain, and builders of valid transactions with hooks that change one
field before the object holding it is signed.

The node runs in a thread with its own event loop (so that tests stay plain functions and
share one node) and with a clock the tests move forward (``World.advance``): enrollments made
short-lived at set-up have expired by the time the tests run, without anyone sleeping.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance import wire
from appliance.gm import sm3
from hil import chain as hc
from hil.district_node import DistrictNode

H = sm3.digest
CBOR = "application/cbor"
SEED = "ledger rules test"
CHAIN_ID = "hil-rules-test"
HAIDIAN, CHAOYANG = "haidian", "chaoyang"
OFFICE_A = "Haidian Market Supervision"  # issuer 0 (sm2), district haidian
OFFICE_B = "Chaoyang Tax"  # issuer 1 (ecdsa-p256), district chaoyang
OFFICE_C = "Haidian Public Security"  # issuer 2 (sm2), district haidian
HEALTH = "北京市卫生健康委员会"  # an agency of the joint matter
MINUTE = 60_000
DAY = 86_400_000
PERSON = "11010519491231002X"  # a synthetic ID number (the check character is X)
ENTERPRISE = "91110108MA01ABCD1X"  # a synthetic unified social credit code
SUBJECT = hc.identifier_hash(PERSON)
ENTERPRISE_ID = hc.identifier_hash(ENTERPRISE)
SERVICE = "hil-identity"
MIN_SCORE = 700

Mut = Callable[[dict], Any] | None


def key(name: str, alg: str = "sm2") -> hc.Key:
    """A test key (derived, so runs are reproducible)."""
    return hc.derive_key(SEED, name, 0, alg, label=name)


def apply(mut: Mut, obj: dict) -> dict:
    if mut is not None:
        mut(obj)
    return obj


class World:
    """The chain, the node and the enrolled keys. ``enr[name]`` is the enrollment tx_id of
    key ``name``; ``keys[name]`` the key."""

    def __init__(self, base: Path, *, log: Callable[[str], None] | None = None) -> None:
        self.offset = 0
        self.log_lines: list[str] = []
        t0 = self.now()
        self.chain_dir = base / "chain"
        hc.generate(self.chain_dir, hc.ChainParams(
            chain_id=CHAIN_ID, seed=SEED, validators=1, alg="mixed", issuers=3,
            districts=(HAIDIAN, CHAOYANG), offices=(OFFICE_A, OFFICE_B, OFFICE_C),
            start_ms=t0 - 10_000, interval_ms=1000), blocks=1)
        with hc.Chain.open(self.chain_dir, readonly=True) as chain:
            self.admins = {d: chain.admin_key(d) for d in (HAIDIAN, CHAOYANG)}
            self.issuers = chain.keys(hc.ROLE_ISSUER)
            self.enr = {f"issuer{i}": chain.enrollment_of(k.public_key, "issuer")
                        for i, k in enumerate(self.issuers)}
        self.keys: dict[str, hc.Key] = {f"issuer{i}": k for i, k in enumerate(self.issuers)}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.node = DistrictNode(self.chain_dir, block_interval_ms=0, clock_ms=self.now,
                                 log=log or self.log_lines.append)
        self.url = self.call(self.node.start())
        self._populate(t0)

    # -- plumbing ------------------------------------------------------------------------------

    def now(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset

    def advance(self, ms: int) -> None:
        self.offset += ms

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.call(self.node.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def post(self, tx: dict | bytes, url: str | None = None) -> tuple[int, dict]:
        data = tx if isinstance(tx, bytes) else wire.encode(tx)
        request = urllib.request.Request((url or self.url) + "/v1/tx", data=data,
                                         headers={"Content-Type": CBOR}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, wire.decode(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, wire.decode(exc.read())

    def accept(self, tx: dict, url: str | None = None) -> bytes:
        status, got = self.post(tx, url)
        assert status == 202, got
        assert got == {"tx_id": hc.tx_id_of(tx)}
        return got["tx_id"]

    def produce(self) -> hc.AppendedBlock | None:
        return self.call(self.node.produce_block())

    def include(self, *txs: dict) -> list[bytes]:
        """Post ``txs`` (each must be accepted) and put them in a block."""
        ids = [self.accept(tx) for tx in txs]
        block = self.produce()
        assert block is not None and set(ids) <= set(block.tx_ids)
        return ids

    def append_raw(self, txs: list[dict]) -> None:
        """Store a block with ``txs`` as given, bypassing the rules (what a faulty chain
        holds), under the node's production lock, with the node's time."""
        async def append() -> None:
            async with self.node._state.produce_lock:
                ts = max(self.now(), self.node.chain.timestamp(self.node.chain.tip_height))
                await asyncio.to_thread(self.node.chain.append_block, txs, ts)
        self.call(append())

    # -- builders ------------------------------------------------------------------------------

    def tx(self, signer: hc.Key, kind: str, data: dict, *, ts: int | None = None,
           b: Mut = None, sign_with: hc.Key | None = None) -> dict:
        body = hc.tx_body(signer, kind, data, chain_id=CHAIN_ID,
                          timestamp=self.now() if ts is None else ts)
        return hc.signed_object(sign_with or signer, apply(b, body))

    def enroll(self, name: str, role: str, *, alg: str = "sm2", district: str = HAIDIAN,
               admin: hc.Key | None = None, office: str | None = None,
               staff: str | None = None, min_score: int | None = None,
               not_after: int | None = None, ts: int | None = None, d: Mut = None,
               b: Mut = None, public_key: bytes | None = None) -> dict:
        ts = self.now() if ts is None else ts
        k = self.keys.setdefault(name, key(name, alg))
        data = {"terminal": k.peer_id if public_key is None else H(public_key),
                "alg": k.alg, "public_key": public_key or k.public_key,
                "district": district, "hall": "hall-1", "role": role,
                "not_after": ts + 300 * DAY if not_after is None else not_after}
        for name_, value in (("office", office), ("staff", staff), ("min_score", min_score)):
            if value is not None:
                data[name_] = value
        admin = admin or self.admins[district]
        return self.tx(admin, "device.enroll", apply(d, data), ts=ts, b=b)

    def deposit(self, issuer: str = "issuer0", *, holder: bytes | None = SUBJECT,
                kind: str = "business-license", enrollment: bytes | None = None,
                digest: bytes | None = None, ts: int | None = None, d: Mut = None,
                b: Mut = None) -> dict:
        data: dict[str, Any] = {"digest": digest or os.urandom(32), "kind": kind,
                                "enrollment": enrollment or self.enr[issuer]}
        if holder is not None:
            data["holder"] = holder
        return self.tx(self.keys[issuer], "evidence.deposit", apply(d, data), ts=ts, b=b)

    def matter(self, *, ts: int, pad: str = "pad", office: str = OFFICE_A,
               licenses: list[bytes] | None = None, enterprise: bool = False,
               enrollment: bytes | None = None, m: Mut = None,
               sign_with: hc.Key | None = None) -> dict:
        k = self.keys[pad]
        body = hc.matter_body(
            pad=k.peer_id, enrollment=enrollment or self.enr[pad], office=office,
            subject=SUBJECT, issued_at=ts - MINUTE, agencies=[office, HEALTH],
            title="开办餐饮店 Open a restaurant", purpose="食品经营许可 Food business permit",
            licenses=licenses if licenses is not None else
            (self.enterprise_licenses if enterprise else self.licenses),
            on_behalf_of=ENTERPRISE_ID if enterprise else None)
        return hc.signed_object(sign_with or k, apply(m, body))

    def attestation(self, *, session: bytes, capture: bytes, terminal: bytes, action: str,
                    target: bytes, ts: int, represents: bytes | None = None,
                    identity: str = "identity", a: Mut = None,
                    sign_with: hc.Key | None = None) -> dict:
        body = {"session": session, "capture_digest": capture, "subject": SUBJECT,
                "terminal": terminal, "action": action, "target": target, "result": "match",
                "score": 900, "issued_at": ts, "service": SERVICE,
                "enrollment": self.enr[identity]}
        if represents is not None:
            body["represents"] = represents
        return hc.signed_object(sign_with or self.keys[identity], apply(a, body))

    def confirmation(self, *, session: bytes, terminal: bytes, action: str, target: bytes,
                     ts: int, method: str = "id_card", clerk: str = "clerk", c: Mut = None,
                     sign_with: hc.Key | None = None) -> dict:
        body = {"session": session, "terminal": terminal, "action": action, "target": target,
                "method": method, "issued_at": ts, "enrollment": self.enr[clerk]}
        return hc.signed_object(sign_with or self.keys[clerk], apply(c, body))

    def authorize(self, *, via: str = "face", kiosk: str = "kiosk", ts: int | None = None,
                  enterprise: bool = False, matter: dict | None = None, m: Mut = None,
                  a: Mut = None, c: Mut = None, d: Mut = None, b: Mut = None,
                  pad: str = "pad", clerk: str = "clerk", identity: str = "identity",
                  session: bytes | None = None, sign_with: hc.Key | None = None,
                  matter_kw: dict | None = None, proof_key: hc.Key | None = None) -> dict:
        """A valid license.authorize (face or clerk way), then the hooks."""
        ts = self.now() if ts is None else ts
        k = self.keys[kiosk]
        matter = matter or self.matter(ts=ts, pad=pad, enterprise=enterprise, m=m,
                                       **(matter_kw or {}))
        target = H(wire.encode(matter))
        session = session or os.urandom(16)
        data: dict[str, Any] = {"matter": matter, "session": session, "terminal": k.peer_id,
                                "enrollment": self.enr[kiosk]}
        if via == "face":
            capture = os.urandom(32)
            data["capture_digest"] = capture
            data["attestation"] = self.attestation(
                session=session, capture=capture, terminal=k.peer_id, action="authorize",
                target=target, ts=ts, represents=ENTERPRISE_ID if enterprise else None,
                identity=identity, a=a, sign_with=proof_key)
        else:
            data["confirmation"] = self.confirmation(
                session=session, terminal=k.peer_id, action="authorize", target=target, ts=ts,
                method="id_card+registration" if enterprise else "id_card", clerk=clerk, c=c,
                sign_with=proof_key)
        return self.tx(k, "license.authorize", apply(d, data), ts=ts, b=b, sign_with=sign_with)

    def revoke(self, *, via: str = "face", authorization: bytes | None = None,
               kiosk: str = "kiosk", admin: str = HAIDIAN, ts: int | None = None,
               a: Mut = None, c: Mut = None, d: Mut = None, b: Mut = None,
               clerk: str = "clerk", identity: str = "identity",
               session: bytes | None = None, sign_with: hc.Key | None = None,
               proof_key: hc.Key | None = None) -> dict:
        """A valid authorization.revoke (face, clerk or admin way) of ``authorization``."""
        ts = self.now() if ts is None else ts
        target = authorization or self.authorization
        session = session or os.urandom(16)
        data: dict[str, Any] = {"authorization": target, "session": session}
        if via == "admin":
            return self.tx(self.admins[admin], "authorization.revoke", apply(d, data), ts=ts,
                           b=b, sign_with=sign_with)
        k = self.keys[kiosk]
        data["enrollment"] = self.enr[kiosk]
        if via == "face":
            capture = os.urandom(32)
            data["capture_digest"] = capture
            data["attestation"] = self.attestation(
                session=session, capture=capture, terminal=k.peer_id, action="revoke",
                target=target, ts=ts, identity=identity, a=a, sign_with=proof_key)
        else:
            data["confirmation"] = self.confirmation(
                session=session, terminal=k.peer_id, action="revoke", target=target, ts=ts,
                clerk=clerk, c=c, sign_with=proof_key)
        return self.tx(k, "authorization.revoke", apply(d, data), ts=ts, b=b,
                       sign_with=sign_with)

    # -- the populated chain -------------------------------------------------------------------

    def _populate(self, t0: int) -> None:
        short = t0 + MINUTE  # expired once the clock is advanced below
        enrollments = {
            "kiosk": self.enroll("kiosk", "kiosk"),
            "kiosk2": self.enroll("kiosk2", "kiosk", alg="ecdsa-p256", office=OFFICE_A),
            "pad": self.enroll("pad", "pad", office=OFFICE_A),
            "pad_b": self.enroll("pad_b", "pad", office=OFFICE_B, district=CHAOYANG),
            "pad2": self.enroll("pad2", "pad", office=OFFICE_A),
            "pad_10d": self.enroll("pad_10d", "pad", office=OFFICE_A, not_after=t0 + 10 * DAY),
            "clerk": self.enroll("clerk", "clerk", office=OFFICE_A, staff="A0001"),
            "clerk2": self.enroll("clerk2", "clerk", office=OFFICE_A, staff="A0009"),
            "clerk_b": self.enroll("clerk_b", "clerk", office=OFFICE_B, staff="B0001",
                                   district=CHAOYANG),
            "identity": self.enroll("identity", "identity", min_score=MIN_SCORE),
            "identity3": self.enroll("identity3", "identity", min_score=MIN_SCORE),
            "identity2": self.enroll("identity2", "identity", alg="ecdsa-p256",
                                     min_score=950, office=OFFICE_C),
            "kiosk_s": self.enroll("kiosk_s", "kiosk", not_after=short),
            "pad_s": self.enroll("pad_s", "pad", office=OFFICE_A, not_after=short),
            "clerk_s": self.enroll("clerk_s", "clerk", office=OFFICE_A, staff="A0002",
                                   not_after=short),
            "identity_s": self.enroll("identity_s", "identity", min_score=0, not_after=short),
            "issuer_s": self.enroll("issuer_s", "issuer", office=OFFICE_A, not_after=short),
        }
        # the PAD's own key, enrolled as a clerk too: only "the clerk's own key" refuses it
        pad_as_clerk = self.enroll("pad", "clerk", office=OFFICE_A, staff="A0003")
        ids = self.include(*enrollments.values(), pad_as_clerk)
        self.enr.update(dict(zip(enrollments, ids, strict=False)))
        self.enr["pad_as_clerk"] = ids[-1]
        self.keys["pad_as_clerk"] = self.keys["pad"]
        self.licenses = self.include(self.deposit("issuer0"), self.deposit("issuer2"))
        self.licenses_more = self.include(*(self.deposit(f"issuer{i % 3}")
                                            for i in range(6)))
        self.enterprise_licenses = self.include(self.deposit("issuer1", holder=ENTERPRISE_ID))
        self.audit_head, self.issuer_audit_head = self.include(
            self.deposit("kiosk", kind="audit.head", holder=None, enrollment=self.enr["kiosk"]),
            self.deposit("issuer0", kind="audit.head", holder=None))
        auth = self.authorize()
        self.authorization = self.include(auth)[0]
        self.authorization_tx = auth
        self.authorization_b = self.include(self.authorize(pad="pad_b", matter_kw={
            "office": OFFICE_B}))[0]
        self.advance(2 * MINUTE)  # the "_s" enrollments have expired from here on
        # On chain despite the rules (a faulty chain): a license by an issuer whose
        # enrollment had expired when its block was made, and one deposited by a kiosk.
        self.expired_issuer_license = self.deposit("issuer_s")
        self.kiosk_license = self.deposit("kiosk", enrollment=self.enr["kiosk"])
        self.append_raw([self.expired_issuer_license, self.kiosk_license])
