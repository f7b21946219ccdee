"""§6 revision 2, rule by rule: a valid world, then one rule broken at a time (and only that
one), each refused with that rule's code and its §7 API error."""

from __future__ import annotations

import dataclasses
import os

import pytest

from appliance.node import objects as ob
from appliance.node import rules
from appliance.node.model import peer_id
from tests.node.world import (
    CITIZEN_ID,
    DAY,
    ENTERPRISE,
    MIN,
    OTHER_OFFICE,
    T0,
    World,
    make_world,
    signer,
)


@pytest.fixture(scope="module")
def world() -> World:
    return make_world()


def refused(rule: str, fn, *args, **kw) -> rules.RuleError:
    with pytest.raises(rules.RuleError) as info:
        fn(*args, **kw)
    assert info.value.rule == rule, str(info.value)
    assert info.value.code == rules.RULE_CODES[rule]
    return info.value


def test_the_valid_world_passes_both_ways(world: World) -> None:
    m = world.matter()
    v = rules.verify_matter(m, world.lookup, world.anchor_admins, at=T0)
    assert [d.deposit.kind for d in v.licenses] == ["resident_id_card", "household_register"]
    assert [d.issuer.office for d in v.licenses] == ["海淀区公安分局 Haidian PSB",
                                                      "朝阳区市场监管局"]
    assert v.pad.office == m.body.office
    for way in ("face", "clerk"):
        data = world.check(world.authorize(m, way=way))
        assert isinstance(data, ob.AuthorizeData) and data.way == way


def test_every_rule_has_an_api_code() -> None:
    assert set(rules.RULE_CODES.values()) == {"bad_tx", "bad_signature", "unknown_sender",
                                              "bad_reference"}


# -- the exploit of the security review ------------------------------------------------------


def test_a_forged_matter_for_anothers_license_is_refused(world: World) -> None:
    """A QR that claims an office but is signed by no enrolled PAD, naming the victim's
    license for FraudCo: refused (its signer is not the enrolled PAD)."""
    mallory = signer()
    body = world.matter_body(agencies=("FraudCo",), pad=peer_id(mallory.public_key))
    forged = ob.Signed.sign(body, mallory)
    refused("enrollment_key", rules.verify_matter, forged, world.lookup, world.anchor_admins,
            at=T0)
    # and a copy of a genuine matter with the agencies changed no longer verifies
    genuine = world.matter()
    edited = ob.Signed(dataclasses.replace(genuine.body, agencies=("FraudCo",)), genuine.alg,
                       genuine.public_key, genuine.signature)
    refused("matter_signature", rules.verify_matter, edited, world.lookup,
            world.anchor_admins, at=T0)


# -- the matter -----------------------------------------------------------------------------


def test_matter_signature(world: World) -> None:
    m = world.matter()
    bad = ob.Signed(m.body, m.alg, m.public_key, bytes(64))
    refused("matter_signature", rules.verify_matter, bad, world.lookup, world.anchor_admins,
            at=T0)


def test_matter_pad_must_be_its_signer(world: World) -> None:
    m = world.matter(pad=peer_id(world.keys["kiosk"].public_key))
    refused("matter_pad", rules.verify_matter, m, world.lookup, world.anchor_admins, at=T0)


def test_pad_enrollment_role(world: World) -> None:
    """Signed by the kiosk's key, naming the kiosk's enrollment: not a PAD."""
    kiosk = world.keys["kiosk"]
    m = world.matter(key="kiosk", pad=peer_id(kiosk.public_key),
                     enrollment=world.enrollments["kiosk"])
    refused("enrollment_role", rules.verify_matter, m, world.lookup, world.anchor_admins,
            at=T0)


def test_pad_enrollment_office(world: World) -> None:
    m = world.matter(office=OTHER_OFFICE)
    refused("enrollment_office", rules.verify_matter, m, world.lookup, world.anchor_admins,
            at=T0)


def test_pad_enrollment_expired(world: World) -> None:
    w = make_world()
    w.enroll("pad", "pad", office=world.matter_body().office, not_after=T0 - 1)
    m = w.matter(use_until=T0 - 2, issued_at=T0 - 10 * MIN, expires_at=T0 + MIN)
    refused("enrollment_expired", rules.verify_matter, m, w.lookup, w.anchor_admins, at=T0)


def test_pad_enrollment_missing(world: World) -> None:
    m = world.matter(enrollment=os.urandom(32))
    refused("enrollment_missing", rules.verify_matter, m, world.lookup, world.anchor_admins,
            at=T0)


def test_pad_enrollment_by_an_admin_of_another_district() -> None:
    """An enrollment signed by the chaoyang admin for a haidian PAD is not an enrollment."""
    w = make_world()
    w.enroll("pad", "pad", office=w.matter_body().office, district="haidian",
             admin="chaoyang")
    refused("enrollment_invalid", rules.verify_matter, w.matter(), w.lookup, w.anchor_admins,
            at=T0)


def test_matter_expired(world: World) -> None:
    m = world.matter(expires_at=T0 - 1)
    refused("matter_expired", rules.verify_matter, m, world.lookup, world.anchor_admins,
            at=T0)


def test_matter_lifetime_over_24_h(world: World) -> None:
    m = world.matter(expires_at=T0 - 10 * MIN + DAY + 1)
    refused("matter_times", rules.verify_matter, m, world.lookup, world.anchor_admins, at=T0)


def test_matter_issued_in_the_future(world: World) -> None:
    m = world.matter(issued_at=T0 + 2 * MIN, expires_at=T0 + 3 * MIN, use_until=T0 + DAY)
    refused("matter_future", rules.verify_matter, m, world.lookup, world.anchor_admins, at=T0)


def test_use_until_over_90_days(world: World) -> None:
    m = world.matter(use_until=T0 - 10 * MIN + 90 * DAY + 1)
    refused("use_until", rules.verify_matter, m, world.lookup, world.anchor_admins, at=T0)


def test_use_until_after_the_pad_enrollment() -> None:
    w = make_world()
    w.enroll("pad", "pad", office=w.matter_body().office, not_after=T0 + 10 * DAY)
    m = w.matter(use_until=T0 + 20 * DAY)
    refused("use_until", rules.verify_matter, m, w.lookup, w.anchor_admins, at=T0)


def test_license_not_found(world: World) -> None:
    m = world.matter(licenses=(world.licenses[0], os.urandom(32)))
    refused("deposit_missing", rules.verify_matter, m, world.lookup, world.anchor_admins,
            at=T0)


def test_license_of_another_holder(world: World) -> None:
    other = world.deposit("issuer", ob.identifier_hash("110108199001010011"))
    m = world.matter(licenses=(world.licenses[0], other))
    refused("deposit_holder", rules.verify_matter, m, world.lookup, world.anchor_admins,
            at=T0)


def test_license_that_is_not_a_deposit(world: World) -> None:
    m = world.matter(licenses=(world.enrollments["issuer"],))
    refused("deposit_invalid", rules.verify_matter, m, world.lookup, world.anchor_admins,
            at=T0)


def test_license_deposited_by_a_key_that_is_not_an_issuer(world: World) -> None:
    w = make_world()
    holder = ob.identifier_hash(CITIZEN_ID)
    d = ob.Deposit(os.urandom(32), "resident_id_card", w.enrollments["pad"], holder)
    tx_id = w.put(w.tx(w.keys["pad"], "evidence.deposit", d.to_obj(), T0 - DAY), T0 - DAY)
    m = w.matter(licenses=(tx_id,))
    refused("deposit_invalid", rules.verify_matter, m, w.lookup, w.anchor_admins, at=T0)


def test_license_judged_at_its_deposit_time() -> None:
    """An issuer whose enrollment has expired since: its earlier deposits stay good."""
    w = make_world()
    w.enroll("old", "issuer", office="旧机构", at=T0 - 20 * DAY, not_after=T0 - 5 * DAY)
    holder = ob.identifier_hash(CITIZEN_ID)
    early = w.deposit("old", holder, at=T0 - 10 * DAY)
    late = w.deposit("old", holder, at=T0 - 4 * DAY)
    rules.verify_matter(w.matter(licenses=(early,)), w.lookup, w.anchor_admins, at=T0)
    refused("deposit_invalid", rules.verify_matter, w.matter(licenses=(late,)), w.lookup,
            w.anchor_admins, at=T0)


def test_enterprise_matter_needs_the_enterprise_licenses() -> None:
    w = make_world()
    credit = ob.identifier_hash(ENTERPRISE)
    biz = w.deposit("issuer2", credit, "business_license")
    m = w.matter(on_behalf_of=credit, licenses=(biz,))
    rules.verify_matter(m, w.lookup, w.anchor_admins, at=T0)
    # the person's own license is not the enterprise's
    m2 = w.matter(on_behalf_of=credit, licenses=(w.licenses[0],))
    refused("deposit_holder", rules.verify_matter, m2, w.lookup, w.anchor_admins, at=T0)


# -- the transactions ---------------------------------------------------------------------------


def test_tx_timestamp_far_from_its_block(world: World) -> None:
    tx = world.authorize(world.matter(), timestamp=T0 - 2 * MIN)
    refused("tx_time", world.check, tx)


def test_authorize_from_an_unenrolled_kiosk(world: World) -> None:
    w = make_world()
    mallory = signer()
    w.keys["mallory"] = mallory
    w.enrollments["mallory"] = w.enrollments["kiosk"]
    tx = w.authorize(w.matter(), kiosk="mallory", attestation=None)
    refused("enrollment_key", w.check, tx)


def test_authorize_by_a_pad(world: World) -> None:
    """A PAD cannot sign license.authorize: its enrollment's role is pad."""
    w = make_world()
    w.keys["kiosk2"] = w.keys["pad"]
    w.enrollments["kiosk2"] = w.enrollments["pad"]
    m = w.matter()
    session, capture = os.urandom(16), os.urandom(32)
    att = w.attestation(m, session, capture, terminal=peer_id(w.keys["pad"].public_key))
    tx = w.authorize(m, kiosk="kiosk2", session=session, attestation=att, capture=capture)
    refused("enrollment_role", w.check, tx)


def test_authorize_data_terminal_is_the_sender(world: World) -> None:
    tx = world.authorize(world.matter())
    data = dict(tx.body.data)
    data["terminal"] = os.urandom(32)
    refused("authorize_terminal", world.check,
            world.tx(world.keys["kiosk"], "license.authorize", data))


def test_matter_expired_by_the_tx_timestamp(world: World) -> None:
    """On chain, a matter must not have expired by its authorization's timestamp."""
    m = world.matter(expires_at=T0 - 30_000)
    tx = world.authorize(m, timestamp=T0 - 20_000)
    refused("matter_expired", world.check, tx, at=T0)


@pytest.mark.parametrize("field,value,rule", [
    ("session", os.urandom(16), "attestation_session"),
    ("terminal", os.urandom(32), "attestation_terminal"),
    ("action", "revoke", "attestation_action"),
    ("target", os.urandom(32), "attestation_target"),
    ("subject", ob.identifier_hash("110108199001010011"), "attestation_subject"),
    ("capture_digest", os.urandom(32), "attestation_capture_digest"),
    ("issued_at", T0 - 5 * MIN - 1, "attestation_stale"),
    ("issued_at", T0 + 61_000, "attestation_future"),
    ("result", "no_match", "attestation_result"),
    ("score", 599, "attestation_result"),
    ("represents", ob.identifier_hash(ENTERPRISE), "attestation_represents"),
])
def test_attestation_bound_to_kiosk_session_action_target(world: World, field, value,
                                                          rule) -> None:
    m = world.matter()
    session, capture = os.urandom(16), os.urandom(32)
    att = world.attestation(m, session, capture, **{field: value})
    tx = world.authorize(m, session=session, attestation=att, capture=capture)
    refused(rule, world.check, tx)


def test_attestation_for_another_kiosk() -> None:
    """An attestation a second, genuinely enrolled kiosk obtained: not for this one."""
    w = make_world()
    w.enroll("kiosk2", "kiosk")
    m = w.matter()
    session, capture = os.urandom(16), os.urandom(32)
    att = w.attestation(m, session, capture, terminal=peer_id(w.keys["kiosk2"].public_key))
    refused("attestation_terminal", w.check,
            w.authorize(m, session=session, attestation=att, capture=capture))


def test_attestation_signature(world: World) -> None:
    m = world.matter()
    session, capture = os.urandom(16), os.urandom(32)
    att = world.attestation(m, session, capture)
    bad = ob.Signed(att.body, att.alg, att.public_key, bytes(64))
    refused("attestation_signature", world.check,
            world.authorize(m, session=session, attestation=bad, capture=capture))


def test_attestation_by_a_key_not_enrolled_as_identity(world: World) -> None:
    m = world.matter()
    session, capture = os.urandom(16), os.urandom(32)
    att = world.attestation(m, session, capture, key="clerk",
                            enrollment=world.enrollments["clerk"])
    refused("enrollment_role", world.check,
            world.authorize(m, session=session, attestation=att, capture=capture))


def test_enterprise_attestation_must_name_the_enterprise() -> None:
    w = make_world()
    credit = ob.identifier_hash(ENTERPRISE)
    m = w.matter(on_behalf_of=credit, licenses=(w.deposit("issuer2", credit),))
    session, capture = os.urandom(16), os.urandom(32)
    good = w.attestation(m, session, capture)
    assert good.body.represents == credit
    w.check(w.authorize(m, session=session, attestation=good, capture=capture))
    att = w.attestation(m, session, capture, represents=None)
    refused("attestation_represents", w.check,
            w.authorize(m, session=session, attestation=att, capture=capture))


@pytest.mark.parametrize("field,value,rule", [
    ("session", os.urandom(16), "confirmation_session"),
    ("terminal", os.urandom(32), "confirmation_terminal"),
    ("action", "revoke", "confirmation_action"),
    ("target", os.urandom(32), "confirmation_target"),
    ("issued_at", T0 - 5 * MIN - 1, "confirmation_stale"),
    ("issued_at", T0 + 61_000, "confirmation_future"),
])
def test_confirmation_bound_to_kiosk_session_action_target(world: World, field, value,
                                                           rule) -> None:
    m = world.matter()
    session = os.urandom(16)
    conf = world.confirmation(m, session, **{field: value})
    refused(rule, world.check, world.authorize(m, way="clerk", session=session,
                                               confirmation=conf))


def test_confirmation_signed_by_the_pads_own_key(world: World) -> None:
    """Even if the PAD's key were also enrolled as a clerk, it may not confirm."""
    w = make_world()
    w.keys["padclerk"] = w.keys["pad"]
    w.enroll("padclerk", "clerk", office=w.matter_body().office, staff="S-1")
    m = w.matter()
    session = os.urandom(16)
    conf = w.confirmation(m, session, key="padclerk")
    refused("confirmation_pad_key", w.check,
            w.authorize(m, way="clerk", session=session, confirmation=conf))


def test_confirmation_by_a_clerk_of_another_office() -> None:
    w = make_world()
    w.enroll("clerk", "clerk", office=OTHER_OFFICE, staff="S-0042")
    m = w.matter()
    session = os.urandom(16)
    refused("enrollment_office", w.check,
            w.authorize(m, way="clerk", session=session,
                        confirmation=w.confirmation(m, session)))


def test_confirmation_signature(world: World) -> None:
    m = world.matter()
    session = os.urandom(16)
    conf = world.confirmation(m, session)
    bad = ob.Signed(conf.body, conf.alg, conf.public_key, bytes(64))
    refused("confirmation_signature", world.check,
            world.authorize(m, way="clerk", session=session, confirmation=bad))


def test_enterprise_confirmation_needs_the_registration_checked() -> None:
    w = make_world()
    credit = ob.identifier_hash(ENTERPRISE)
    m = w.matter(on_behalf_of=credit, licenses=(w.deposit("issuer2", credit),))
    session = os.urandom(16)
    conf = w.confirmation(m, session, method="id_card")
    refused("confirmation_method", w.check,
            w.authorize(m, way="clerk", session=session, confirmation=conf))


# -- enrollments and deposits as transactions ---------------------------------------------------


def _enroll_tx(w: World, admin: str, **changes):
    key = signer()
    e = ob.Enrollment(peer_id(key.public_key), key.alg, key.public_key, "haidian", "hall-1",
                      "kiosk", T0 + 10 * DAY)
    e = dataclasses.replace(e, **changes)
    return w.tx(w.admins[admin] if admin in w.admins else signer(), "device.enroll",
                e.to_obj())


def test_enroll_by_an_admin(world: World) -> None:
    assert world.check(_enroll_tx(world, "haidian")).role == "kiosk"


def test_enroll_by_an_admin_of_another_district(world: World) -> None:
    refused("admin_district", world.check, _enroll_tx(world, "chaoyang"))


def test_enroll_by_a_key_that_is_not_an_admin(world: World) -> None:
    refused("admin", world.check, _enroll_tx(world, "nobody"))


def test_enroll_not_after_over_400_days(world: World) -> None:
    refused("enroll_not_after", world.check,
            _enroll_tx(world, "haidian", not_after=T0 + 400 * DAY + 1))
    world.check(_enroll_tx(world, "haidian", not_after=T0 + 400 * DAY))


def test_enroll_terminal_is_the_key_hash(world: World) -> None:
    refused("enroll_terminal", world.check, _enroll_tx(world, "haidian",
                                                       terminal=os.urandom(32)))


def test_audit_head_by_a_terminal(world: World) -> None:
    d = ob.Deposit(os.urandom(32), ob.AUDIT_HEAD, world.enrollments["kiosk"])
    world.check(world.tx(world.keys["kiosk"], "evidence.deposit", d.to_obj()))
    d2 = ob.Deposit(os.urandom(32), "business_license", world.enrollments["kiosk"],
                    os.urandom(32))
    refused("enrollment_role", world.check,
            world.tx(world.keys["kiosk"], "evidence.deposit", d2.to_obj()))


def test_tx_signature(world: World) -> None:
    tx = world.authorize(world.matter())
    bad = dataclasses.replace(tx, signature=bytes(64))
    refused("tx_signature", world.check, bad)


# -- revocation ---------------------------------------------------------------------------------


def _authorized(w: World) -> bytes:
    tx = w.authorize(w.matter(matter_id=os.urandom(16)))
    w.check(tx)
    return w.put(tx, T0)


def test_revoke_by_the_citizen_at_a_kiosk() -> None:
    w = make_world()
    auth = _authorized(w)
    session, capture = os.urandom(16), os.urandom(32)
    m = ob.AuthorizeData.from_obj(w.refs[auth].tx.body.data).matter
    att = w.attestation(m, session, capture, action="revoke", target=auth)
    data = ob.RevokeData(auth, session, w.enrollments["kiosk"], capture, att)
    w.check(w.tx(w.keys["kiosk"], "authorization.revoke", data.to_obj()))
    att2 = w.attestation(m, session, capture, action="authorize", target=auth)
    data2 = ob.RevokeData(auth, session, w.enrollments["kiosk"], capture, att2)
    refused("attestation_action", w.check,
            w.tx(w.keys["kiosk"], "authorization.revoke", data2.to_obj()))


def test_revoke_by_an_admin_of_the_matters_district() -> None:
    w = make_world()
    auth = _authorized(w)
    data = ob.RevokeData(auth, os.urandom(16))
    w.check(w.tx(w.admins["haidian"], "authorization.revoke", data.to_obj()))
    refused("admin_district", w.check,
            w.tx(w.admins["chaoyang"], "authorization.revoke", data.to_obj()))
    refused("admin", w.check, w.tx(signer(), "authorization.revoke", data.to_obj()))


def test_revoke_of_something_that_is_not_an_authorization() -> None:
    w = make_world()
    data = ob.RevokeData(w.licenses[0], os.urandom(16))
    refused("authorization_missing", w.check,
            w.tx(w.admins["haidian"], "authorization.revoke", data.to_obj()))


# -- references ------------------------------------------------------------------------------


def test_needs_lists_every_reference_in_two_rounds(world: World) -> None:
    """What a check looks up: first the direct references, then (once the deposits are
    known) their issuers' enrollments; nothing once everything is known."""
    tx = world.authorize(world.matter())
    known: dict[bytes, rules.Ref] = {}
    first = rules.needs(tx, known.get)
    e = world.enrollments
    assert first == {e["kiosk"], e["pad"], e["identity"], *world.licenses}
    known.update({t: world.refs[t] for t in first})
    second = rules.needs(tx, known.get)
    assert second == {e["issuer"], e["issuer2"]}
    known.update({t: world.refs[t] for t in second})
    assert rules.needs(tx, known.get) == set()
    world.check(tx) and rules.check_tx(tx, known.get, world.anchor_admins, at=T0)
