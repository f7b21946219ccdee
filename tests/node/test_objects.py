"""§6 objects: strict decoders, the text and identifier rules, the QR texts; every decoder
fuzzed (arbitrary and mutated input only raises MalformedError)."""

from __future__ import annotations

import base64
import dataclasses
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance import wire
from appliance.node import objects as ob
from appliance.node.errors import MalformedError
from appliance.node.merkle import digest
from tests.node.world import CITIZEN_ID, T0, make_world

WORLD = make_world()
MATTER = WORLD.matter()
SESSION = bytes(range(16))
CONF = WORLD.confirmation(MATTER, SESSION)


def test_identifier_hash_upper_cases_and_prefixes() -> None:
    assert ob.identifier_hash("11010819800101001x") == ob.identifier_hash(CITIZEN_ID)
    assert ob.identifier_hash(CITIZEN_ID) == digest(b"GOVID1:" + CITIZEN_ID.encode())
    for bad in ("", "1101 0819", "１１０", "1" * 65, "x-1"):
        with pytest.raises(MalformedError):
            ob.identifier_hash(bad)


@pytest.mark.parametrize("text", [
    "a\u200bb",        # ZERO WIDTH SPACE (Cf)
    "a\u202eb",        # RIGHT-TO-LEFT OVERRIDE (Cf): the display trick
    "a\nb", "\x00",    # Cc
    "e\u0301",         # decomposed: not NFC
    "",                # empty
    "\ud800",          # a lone surrogate
])
def test_text_rule_refuses(text: str) -> None:
    with pytest.raises(MalformedError) as info:
        ob.check_text(text, "title", 128)
    assert info.value.reason in ("text", "utf8")


def test_text_rule_limits_in_bytes() -> None:
    assert ob.check_text("海" * 21, "office", 64)
    with pytest.raises(MalformedError):
        ob.check_text("海" * 22, "office", 64)  # 66 bytes
    assert ob.check_text("\u00e9", "x")  # precomposed é is NFC


def test_a_matter_with_a_format_character_in_its_title_is_refused() -> None:
    with pytest.raises(MalformedError):
        WORLD.matter(title="Library card\u202e")


def test_matter_qr_round_trip_and_one_spelling() -> None:
    text = ob.encode_qr(ob.MATTER_PREFIX, MATTER)
    assert ob.decode_matter_qr(text) == MATTER
    assert ob.decode_matter_qr(text).digest == MATTER.digest
    assert ob.decode_matter_qr("  " + text + "\n") == MATTER
    with pytest.raises(MalformedError):
        ob.decode_matter_qr(text + "=")  # padding
    with pytest.raises(MalformedError):
        ob.decode_matter_qr(ob.CONFIRMATION_PREFIX + text[len(ob.MATTER_PREFIX):])


def test_matter_size_limit_before_decoding() -> None:
    """enc(signed_matter) <= 1200 bytes; a longer text is refused by its length alone."""
    text = ob.MATTER_PREFIX + "A" * 1700
    with pytest.raises(MalformedError) as info:
        ob.decode_matter_qr(text)
    assert info.value.reason == "oversize"
    big = WORLD.matter(purpose="p" * 256, title="t" * 128,
                       agencies=tuple(f"agency {i:02d}" + "x" * 40 for i in range(16)))
    assert len(big.encoded) > ob.MAX_MATTER_BYTES
    with pytest.raises(MalformedError):
        ob.decode_matter_qr(ob.encode_qr(ob.MATTER_PREFIX, big))


def test_matter_needs_distinct_licenses_and_agencies() -> None:
    with pytest.raises(MalformedError):
        WORLD.matter(licenses=(WORLD.licenses[0], WORLD.licenses[0]))
    with pytest.raises(MalformedError):
        WORLD.matter(agencies=("a", "a"))
    with pytest.raises(MalformedError):
        WORLD.matter(licenses=tuple(os.urandom(32) for _ in range(9)))


def test_unknown_and_missing_keys() -> None:
    obj = MATTER.to_obj()
    obj["body"]["note"] = "x"
    with pytest.raises(MalformedError):
        ob.Signed.of(ob.MatterBody, obj, "m")
    obj = MATTER.to_obj()
    del obj["body"]["purpose"]
    with pytest.raises(MalformedError):
        ob.Signed.of(ob.MatterBody, obj, "m")


def test_confirmation_and_session_qr_round_trip() -> None:
    assert ob.decode_confirmation_qr(ob.encode_qr(ob.CONFIRMATION_PREFIX, CONF)) == CONF
    req = ob.SessionRequest(SESSION, os.urandom(32), "authorize", MATTER.digest)
    assert ob.decode_session_qr(ob.encode_qr(ob.SESSION_PREFIX, req)) == req
    assert req.code == "%06d" % (int.from_bytes(SESSION[:4], "big") % 10**6)
    assert ob.session_code(b"\xff" * 16) == "967295"


def test_enrollment_role_fields() -> None:
    key = WORLD.keys["pad"]
    base = ob.Enrollment(digest(key.public_key), "sm2", key.public_key, "haidian", "h", "kiosk",
                         T0)
    with pytest.raises(MalformedError):
        dataclasses.replace(base, role="pad")  # a PAD needs an office
    with pytest.raises(MalformedError):
        dataclasses.replace(base, role="clerk", office="o")  # and a clerk a staff number
    with pytest.raises(MalformedError):
        dataclasses.replace(base, staff="S1")  # a kiosk has none
    with pytest.raises(MalformedError):
        dataclasses.replace(base, role="identity")  # needs min_score
    with pytest.raises(MalformedError):
        dataclasses.replace(base, role="identity", min_score=1001)
    assert dataclasses.replace(base, role="identity", min_score=600).min_score == 600
    with pytest.raises(MalformedError):
        dataclasses.replace(base, role="admin")


def test_one_way_only() -> None:
    tx = WORLD.authorize(MATTER)
    data = dict(tx.body.data)
    data["confirmation"] = CONF.to_obj()
    with pytest.raises(MalformedError):
        ob.decode_data("license.authorize", data)
    del data["attestation"]
    with pytest.raises(MalformedError):  # capture_digest without an attestation
        ob.decode_data("license.authorize", data)
    del data["capture_digest"]
    assert ob.decode_data("license.authorize", data).way == "clerk"


def test_admin_revoke_carries_no_proofs() -> None:
    data = {"authorization": os.urandom(32), "session": SESSION,
            "confirmation": CONF.to_obj()}
    with pytest.raises(MalformedError):
        ob.decode_data("authorization.revoke", data)
    del data["confirmation"]
    assert ob.decode_data("authorization.revoke", data).by_admin


def test_audit_head_has_no_holder() -> None:
    with pytest.raises(MalformedError):
        ob.Deposit(os.urandom(32), ob.AUDIT_HEAD, os.urandom(32), os.urandom(32))


DECODERS = [ob.decode_matter_qr, ob.decode_confirmation_qr, ob.decode_session_qr]
SAMPLES = [ob.encode_qr(ob.MATTER_PREFIX, MATTER), ob.encode_qr(ob.CONFIRMATION_PREFIX, CONF),
           ob.encode_qr(ob.SESSION_PREFIX, ob.SessionRequest(SESSION, bytes(32), "revoke",
                                                             bytes(32)))]


@given(st.text(max_size=3000))
def test_qr_decoders_on_arbitrary_text(text: str) -> None:
    for decode in DECODERS:
        try:
            decode(text)
        except MalformedError:
            pass


@given(st.sampled_from(range(3)), st.data())
def test_qr_decoders_on_mutated_codes(i: int, data: st.DataObject) -> None:
    text = SAMPLES[i]
    prefix = text[:9]
    raw = bytearray(base64.urlsafe_b64decode(text[9:] + "=" * (-len(text[9:]) % 4)))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    mutated = prefix + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    try:
        DECODERS[i](mutated)
    except MalformedError:
        pass


@given(st.sampled_from(sorted(ob.TX_TYPES)), st.binary(max_size=600))
def test_decode_data_on_arbitrary_cbor(kind: str, raw: bytes) -> None:
    try:
        obj = wire.decode(raw)
    except wire.WireError:
        return
    try:
        ob.decode_data(kind, obj)
    except MalformedError:
        pass


@given(st.data())
def test_decode_data_on_mutated_authorizations(data: st.DataObject) -> None:
    tx = WORLD.authorize(MATTER)
    raw = bytearray(wire.encode(tx.body.data))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    try:
        obj = wire.decode(bytes(raw))
    except wire.WireError:
        return
    try:
        ob.decode_data("license.authorize", obj)
    except MalformedError:
        pass
