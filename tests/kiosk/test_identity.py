"""verify_attestation: every rule of the attestation check broken alone, and the decoder fuzzed.

A valid attestation is built here from the §6 text (signed with appliance.gm.sm2 over the
canonical CBOR of the body); each test changes one thing and re-signs with the service key
where the change would otherwise also break the signature, so the rule under test is the
only one broken.
"""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import wire
from appliance.gm import sm2
from appliance.kiosk.identity import (
    MAX_ATTESTATION_BYTES,
    REASONS,
    Attestation,
    AttestationInvalid,
    Request,
    decode_attestation,
    verify_attestation,
)

SERVICE_PRIV, SERVICE_PUB = sm2.generate_keypair()
OTHER_PRIV, OTHER_PUB = sm2.generate_keypair()
SESSION = bytes(range(16))
SUBJECT = b"\x11" * 32
DIGEST = b"\x22" * 32
TERMINAL = b"\x33" * 32
TARGET = b"\x44" * 32
ENROLLMENT = b"\x55" * 32
NOW = 1_800_000_000_000
NAME = "hil-identity"
REQUEST = Request(SESSION, SUBJECT, DIGEST, TERMINAL, TARGET)


def body(**changes):
    b = {"session": SESSION, "capture_digest": DIGEST, "subject": SUBJECT, "result": "match",
         "score": 912, "issued_at": NOW - 1500, "service": NAME, "terminal": TERMINAL,
         "action": "authorize", "target": TARGET, "enrollment": ENROLLMENT}
    b.update(changes)
    return {k: v for k, v in b.items() if v is not None}


def signed(b=None, *, key=SERVICE_PRIV, public=SERVICE_PUB, **outer):
    b = body() if b is None else b
    obj = {"body": b, "alg": "sm2", "public_key": public,
           "signature": sm2.sign(key, wire.encode(b))}
    obj.update(outer)
    return obj


def check(obj, **kw):
    args = dict(service_public_key=SERVICE_PUB, service_name=NAME, request=REQUEST,
                now_ms=NOW)
    args.update(kw)
    return verify_attestation(obj, **args)


def rejected(obj, reason, **kw):
    with pytest.raises(AttestationInvalid) as info:
        check(obj, **kw)
    assert info.value.reason == reason, info.value
    assert info.value.code == "attestation_invalid"
    return info.value


def test_valid_attestation_as_map_and_as_bytes():
    obj = signed()
    for given_ in (obj, wire.encode(obj)):
        a = check(given_)
        assert isinstance(a, Attestation)
        assert (a.result, a.score, a.service, a.matched) == ("match", 912, NAME, True)
        assert a.signed == obj
        assert a.issued_at == NOW - 1500


def test_no_match_is_a_valid_answer():
    a = check(signed(body(result="no_match", score=12)))
    assert (a.result, a.score, a.matched) == ("no_match", 12, False)


def test_bad_signature():
    obj = signed()
    sig = bytearray(obj["signature"])
    sig[5] ^= 1
    rejected({**obj, "signature": bytes(sig)}, "bad_signature")


def test_signature_over_another_body():
    obj = signed()
    obj["body"] = body(score=913)  # body changed after signing
    rejected(obj, "bad_signature")


def test_signed_by_another_key_claiming_the_configured_key():
    rejected(signed(key=OTHER_PRIV, public=SERVICE_PUB), "bad_signature")


def test_public_key_not_the_configured_one():
    # Validly signed by OTHER, which it names: still not the terminal's configured service key.
    rejected(signed(key=OTHER_PRIV, public=OTHER_PUB), "wrong_key")


@pytest.mark.parametrize("field,value", [
    ("session", bytes(16)), ("subject", b"\x12" * 32), ("capture_digest", b"\x23" * 32),
    ("terminal", b"\x34" * 32), ("action", "revoke"), ("target", b"\x45" * 32),
    ("represents", b"\x66" * 32)])
def test_body_field_not_what_was_sent(field, value):
    rejected(signed(body(**{field: value})), field)


def test_an_enterprise_attestation_must_name_the_enterprise_asked():
    import dataclasses

    enterprise = b"\x66" * 32
    asked = dataclasses.replace(REQUEST, represents=enterprise)
    assert check(signed(body(represents=enterprise)), request=asked).matched
    rejected(signed(body()), "represents", request=asked)


def test_service_name_mismatch():
    rejected(signed(body(service="another-service")), "service")


def test_stale_and_future_issued_at():
    check(signed(body(issued_at=NOW - 300_000)))
    check(signed(body(issued_at=NOW + 300_000)))
    rejected(signed(body(issued_at=NOW - 300_001)), "stale")
    rejected(signed(body(issued_at=NOW + 300_001)), "future")
    check(signed(body(issued_at=NOW - 10_000)), max_skew_ms=10_000)
    rejected(signed(body(issued_at=NOW - 10_001)), "stale", max_skew_ms=10_000)


@pytest.mark.parametrize("alg", ["SM2", "none", ""])
def test_unknown_alg(alg):
    rejected(signed(alg=alg), "malformed")


def test_an_ecdsa_key_is_not_the_configured_sm2_key():
    from appliance.gm import ecdsa

    priv, pub = ecdsa.generate_keypair()
    b = body()
    obj = {"body": b, "alg": "ecdsa-p256", "public_key": pub,
           "signature": ecdsa.sign(priv, wire.encode(b))}
    rejected(obj, "wrong_key")


@pytest.mark.parametrize("value", [1001, 2**32])
def test_score_out_of_range(value):
    rejected(signed(body(score=value)), "malformed")


def test_score_bounds_accepted():
    check(signed(body(score=0)))
    check(signed(body(score=1000)))


@pytest.mark.parametrize("value", ["MATCH", "matched", "", "no-match"])
def test_result_not_match_or_no_match(value):
    rejected(signed(body(result=value)), "malformed")


def test_non_canonical_cbor():
    obj = signed()
    good = wire.encode(obj)
    # the same map with keys in the wrong order: what cbor2 writes without canonical=True
    unsorted = cbor2.dumps({"signature": obj["signature"], "public_key": obj["public_key"],
                            "alg": "sm2", "body": obj["body"]})
    assert unsorted != good
    rejected(unsorted, "not_canonical")
    # a non-shortest integer head for score (912 as a 4-byte head instead of 2)
    score_enc = cbor2.dumps(912)
    assert score_enc in good
    longer = good.replace(score_enc, b"\x1a" + (912).to_bytes(4, "big"))
    rejected(longer, "not_canonical")
    rejected(good + b"\x00", "not_canonical")  # trailing bytes
    rejected(good[:-1], "not_canonical")  # truncated


def test_map_with_non_wire_value():
    obj = signed()
    obj["body"]["score"] = 1.5  # a map in memory that has no canonical encoding
    rejected(obj, "not_canonical")


@pytest.mark.parametrize("mutate", [
    lambda o: o.pop("alg"),
    lambda o: o.update(extra=1),
    lambda o: o["body"].pop("score"),
    lambda o: o["body"].update(extra="x"),
    lambda o: o.update(public_key=o["public_key"][:64]),
    lambda o: o.update(signature=o["signature"] + b"\x00"),
    lambda o: o["body"].update(session=SESSION[:15]),
    lambda o: o["body"].update(score=-1),
    lambda o: o["body"].update(score=True),
    lambda o: o["body"].update(issued_at="now"),
    lambda o: o["body"].update(service=b"hil"),
    lambda o: o["body"].update(service="x" * 1025),
    lambda o: o.update(body=[1, 2]),
])
def test_malformed(mutate):
    obj = signed()
    mutate(obj)
    rejected(obj, "malformed")


def test_oversize_before_decoding():
    big = b"\x00" * (MAX_ATTESTATION_BYTES + 1)
    rejected(big, "oversize")


def test_reasons_documented():
    assert set(REASONS) >= {"bad_signature", "wrong_key", "session", "subject",
                            "capture_digest", "terminal", "action", "target", "represents",
                            "service", "stale", "future", "not_canonical", "malformed",
                            "oversize"}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    try:
        check(data)
    except AttestationInvalid as exc:
        assert exc.reason in REASONS


_good = wire.encode(signed())


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.integers(0, len(_good) - 1), st.integers(0, 255), st.integers(0, 3))
def test_fuzz_mutated_attestation(pos, value, op):
    data = bytearray(_good)
    if op == 0:
        data[pos] = value
    elif op == 1:
        del data[pos]
    elif op == 2:
        data.insert(pos, value)
    else:
        data = data[:pos]
    try:
        a = check(bytes(data))
    except AttestationInvalid as exc:
        assert exc.reason in REASONS
    else:  # only an unchanged encoding can pass (a byte rewritten to itself)
        assert bytes(data) == _good and a.score == 912


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=20)
    | st.binary(max_size=70),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["body", "alg", "public_key", "signature", "session",
                                       "score", "result", "x"]), inner, max_size=5),
    max_leaves=20)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(json_like)
def test_fuzz_structures(obj):
    for given_ in (obj, _try_encode(obj)):
        if given_ is None:
            continue
        try:
            decode_attestation(given_)
        except AttestationInvalid as exc:
            assert exc.reason in REASONS


def _try_encode(obj):
    try:
        return wire.encode(obj)
    except wire.WireError:
        return None


def test_every_field_of_a_real_attestation_matters():
    """Flip one byte of each bytes field: never accepted."""
    obj = signed()
    for path in (("public_key",), ("signature",), ("body", "session"), ("body", "subject"),
                 ("body", "capture_digest")):
        o = signed(obj["body"])
        target = o if len(path) == 1 else o["body"]
        raw = bytearray(target[path[-1]])
        raw[-1] ^= 0x40
        target[path[-1]] = bytes(raw)
        with pytest.raises(AttestationInvalid):
            check(o)


def test_random_keys_never_verify():
    for _ in range(5):
        priv, pub = sm2.generate_keypair()
        rejected(signed(key=priv, public=SERVICE_PUB), "bad_signature")
