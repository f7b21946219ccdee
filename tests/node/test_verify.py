"""Light-client verification (protocol §5) on small chains with real SM2 and ECDSA keys.

Each rule has a test where a header breaking only that rule is rejected with the rule's code
and the offending height.
"""

from __future__ import annotations

import copy
from typing import Any

import chainutil as cu
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance import wire
from appliance.node import merkle, signatures
from appliance.node.errors import RULES, VerificationError
from appliance.node.model import (
    Block,
    Commit,
    Header,
    Proof,
    SignedTx,
    TrustAnchor,
    TxBody,
    Validator,
    ValidatorSet,
    peer_id,
    vote_bytes,
)
from appliance.node.verify import (
    DEFAULT_MAX_SKEW_MS,
    SetChange,
    check_anchor,
    check_block,
    check_equivocation,
    commit_is_valid,
    verify_commit,
    verify_proof,
    verify_segment,
    verify_tx,
)

SM2 = cu.keys(4)
ECDSA = cu.keys(4, "ecdsa-p256", offset=10)
MIXED = cu.keys(2, offset=20) + cu.keys(2, "ecdsa-p256", offset=22)
ATTACKER = cu.keys(4, offset=30)
LENGTH = 8  # headers 0..7
LAST = LENGTH - 1


def failure(**segment: Any) -> tuple[str, int | None]:
    with pytest.raises(VerificationError) as err:
        verify_segment(**segment)
    assert err.value.rule in RULES
    return err.value.rule, err.value.height


def tweaked(at: int, /, **changes: Any) -> cu.Chain:
    """The base chain with header ``at`` altered (later headers link to the altered one)."""

    def tweak(h: int, fields: dict[str, Any]) -> dict[str, Any]:
        return {**fields, **changes} if h == at else fields

    return cu.build_chain(LENGTH, SM2, tweak=tweak)


BASE = cu.build_chain(LENGTH, SM2)


# --- the happy paths -----------------------------------------------------------------------------


def test_valid_segment_skipping_and_strict() -> None:
    seg = BASE.segment(0, LAST)
    assert set(seg["commits"]) == {LAST}  # skipping: one commit for the whole segment
    result = verify_segment(**seg)
    assert result.tip == BASE.headers[LAST]
    assert result.next_set == BASE.sets[LENGTH]
    assert result.changes == ()
    assert result.commit_heights == (LAST,)
    strict = verify_segment(**BASE.segment(0, LAST, all_commits=True), strict=True)
    assert strict.tip == result.tip
    assert strict.commit_heights == tuple(range(1, LENGTH))


def test_segments_chain_from_one_result_to_the_next() -> None:
    first = verify_segment(**BASE.segment(0, 3))
    seg = BASE.segment(3, LAST)
    seg.update(trusted=first.tip, next_set=first.next_set)
    assert verify_segment(**seg).tip.height == LAST


def test_single_header_segment() -> None:
    assert verify_segment(**BASE.segment(4, 5)).tip == BASE.headers[5]


def test_empty_segment_changes_nothing() -> None:
    seg = BASE.segment(2, 3)
    seg.update(headers=[], commits={})
    result = verify_segment(**seg)
    assert (result.tip, result.next_set, result.changes) == (BASE.headers[2], BASE.sets[3], ())


def test_pure_function_mutates_nothing() -> None:
    chain = cu.build_chain(LENGTH, SM2, changes={4: ECDSA})
    seg = chain.segment(0, LAST)
    snapshot = copy.deepcopy(seg)
    verify_segment(**seg)
    assert seg == snapshot
    bad = tweaked(5, version="2").segment(0, LAST)
    snapshot = copy.deepcopy(bad)
    with pytest.raises(VerificationError):
        verify_segment(**bad)
    assert bad == snapshot


# --- one test per rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "rule", "height"),
    [
        ({"chain_id": "bj-gov-other"}, "chain_id", 4),
        ({"version": "2"}, "version", 4),
        ({"version": ""}, "version", 4),
        ({"height": 40}, "height", 40),
        ({"height": 3}, "height", 3),
        ({"prev_hash": bytes(32)}, "prev_hash", 4),
        ({"timestamp": cu.T0 + cu.STEP * 3 - 1}, "timestamp", 4),
        ({"validators_hash": cu.vset(ATTACKER).hash}, "validators_hash", 4),
    ],
)
def test_each_rule_rejects_a_middle_header(changes: dict[str, Any], rule: str, height: int) -> None:
    assert failure(**tweaked(4, **changes).segment(0, LAST)) == (rule, height)


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"chain_id": "bj-gov-other"}, "chain_id"),
        ({"version": "1.0"}, "version"),
        ({"prev_hash": bytes(32)}, "prev_hash"),
        ({"validators_hash": cu.vset(ATTACKER).hash}, "validators_hash"),
    ],
)
def test_each_rule_rejects_the_last_header_even_with_its_commit(
    changes: dict[str, Any], rule: str
) -> None:
    chain = tweaked(LAST, **changes)  # the commit for the bad header is validly signed
    assert commit_is_valid(chain.commits[LAST], chain.headers[LAST], BASE.sets[LAST],
                           chain.headers[LAST].chain_id) is (rule not in {"validators_hash"})
    assert failure(**chain.segment(0, LAST)) == (rule, LAST)


def test_timestamp_equal_to_previous_is_accepted() -> None:
    chain = tweaked(4, timestamp=cu.T0 + cu.STEP * 3)
    assert verify_segment(**chain.segment(0, LAST)).tip.height == LAST


def test_timestamp_skew_bound() -> None:
    now = cu.T0 + cu.STEP * LENGTH
    at_limit = tweaked(LAST, timestamp=now + DEFAULT_MAX_SKEW_MS)
    seg = at_limit.segment(0, LAST)
    seg["now_ms"] = now
    assert verify_segment(**seg).tip.timestamp == now + DEFAULT_MAX_SKEW_MS
    assert failure(**{**seg, "max_skew_ms": DEFAULT_MAX_SKEW_MS - 1}) == ("timestamp", LAST)
    beyond = tweaked(LAST, timestamp=now + DEFAULT_MAX_SKEW_MS + 1).segment(0, LAST)
    beyond["now_ms"] = now
    assert failure(**beyond) == ("timestamp", LAST)
    # a middle header from the future is caught too, though later headers are older
    future = tweaked(4, timestamp=now + DEFAULT_MAX_SKEW_MS + 1).segment(0, LAST)
    future["now_ms"] = now
    assert failure(**future) == ("timestamp", 4)


def test_trusted_next_set_must_hash_to_the_trusted_header() -> None:
    seg = BASE.segment(0, LAST)
    seg["next_set"] = cu.vset(ATTACKER)
    assert failure(**seg) == ("validator_set_hash", 0)


# --- rules 5 and 6: commits -----------------------------------------------------------------------

CHANGE = 5  # the set of ECDSA signs from height 5 on; header 4 announces it
CHANGED = cu.build_chain(LENGTH, SM2, changes={CHANGE: ECDSA})


def test_set_change_chain_verifies_skipping_and_strict() -> None:
    seg = CHANGED.segment(0, LAST)
    assert set(seg["commits"]) == {CHANGE - 1, LAST}
    result = verify_segment(**seg)
    assert result.changes == (SetChange(CHANGE - 1, cu.vset(ECDSA)),)
    assert result.next_set == cu.vset(ECDSA)
    assert result.commit_heights == (CHANGE - 1, LAST)
    strict = verify_segment(**CHANGED.segment(0, LAST, all_commits=True), strict=True)
    assert strict.changes == result.changes and strict.tip == result.tip


def test_several_set_changes_and_mixed_algorithms() -> None:
    chain = cu.build_chain(10, SM2, changes={3: ECDSA, 6: MIXED, 8: SM2[:3]})
    result = verify_segment(**chain.segment(0, 9))
    assert [c.height for c in result.changes] == [2, 5, 7]
    assert result.next_set == cu.vset(SM2[:3])
    assert verify_segment(**chain.segment(0, 9, all_commits=True), strict=True).tip.height == 9


def test_set_change_at_the_tip() -> None:
    result = verify_segment(**CHANGED.segment(0, CHANGE - 1))
    assert result.tip.height == CHANGE - 1
    assert result.next_set == cu.vset(ECDSA)
    assert result.commit_heights == (CHANGE - 1,)
    after = CHANGED.segment(CHANGE - 1, LAST)
    after.update(trusted=result.tip, next_set=result.next_set)
    assert verify_segment(**after).tip.height == LAST


def test_set_change_without_commit_is_rejected() -> None:
    seg = CHANGED.segment(0, LAST)
    del seg["commits"][CHANGE - 1]
    assert failure(**seg) == ("set_change_commit", CHANGE - 1)


def test_set_change_with_a_minority_commit_is_rejected() -> None:
    seg = CHANGED.segment(0, LAST)
    header = CHANGED.headers[CHANGE - 1]
    seg["commits"][CHANGE - 1] = cu.sign_commit(header, CHANGED.sets[CHANGE - 1], SM2[:2])
    assert failure(**seg) == ("set_change_commit", CHANGE - 1)


def test_set_hijack_certified_only_by_the_new_set_is_rejected() -> None:
    """An attacker announces its own set and signs the change with that set alone."""
    hijack = cu.build_chain(LENGTH, SM2, changes={CHANGE: ATTACKER})
    header = hijack.headers[CHANGE - 1]
    seg = hijack.segment(0, LAST)
    seg["commits"][CHANGE - 1] = cu.sign_commit(header, cu.vset(ATTACKER), ATTACKER)
    assert failure(**seg) == ("set_change_commit", CHANGE - 1)
    # ...while the same chain with the change signed by the old set is fine (control).
    assert verify_segment(**hijack.segment(0, LAST)).next_set == cu.vset(ATTACKER)


def test_set_named_without_announcement_is_rejected() -> None:
    """The attacker's set signs a header that names it without the old set announcing it."""
    attacked = cu.build_chain(LENGTH, SM2, changes={CHANGE: ATTACKER},
                              tweak=lambda h, f: {**f, "validators_hash": cu.vset(ATTACKER).hash,
                                                  "next_validators_hash": cu.vset(ATTACKER).hash}
                              if h >= CHANGE - 1 else f)
    assert failure(**attacked.segment(0, LAST)) == ("validators_hash", CHANGE - 1)


def test_next_set_must_be_supplied_and_match() -> None:
    seg = CHANGED.segment(0, LAST)
    seg["sets"] = {k: v for k, v in seg["sets"].items() if v != cu.vset(ECDSA)}
    assert failure(**seg) == ("validator_set_hash", CHANGE - 1)
    seg["sets"][cu.vset(ECDSA).hash] = cu.vset(ATTACKER)  # a set filed under another's hash
    assert failure(**seg) == ("validator_set_hash", CHANGE - 1)


def test_last_header_needs_a_valid_commit() -> None:
    seg = BASE.segment(0, LAST)
    seg["commits"] = {}
    assert failure(**seg) == ("last_commit", LAST)
    seg["commits"] = {LAST: cu.sign_commit(BASE.headers[LAST], BASE.sets[LAST], SM2[:2])}
    assert failure(**seg) == ("last_commit", LAST)
    seg["commits"] = {LAST: BASE.commits[LAST - 1]}  # a commit of another height
    assert failure(**seg) == ("last_commit", LAST)
    seg["commits"] = {LAST: BASE.commits[LAST]}
    assert verify_segment(**seg).tip.height == LAST


def test_strict_mode_needs_every_commit() -> None:
    seg = BASE.segment(0, LAST, all_commits=True)
    del seg["commits"][3]
    assert verify_segment(**seg).tip.height == LAST  # skipping mode does not look
    assert failure(**seg, strict=True) == ("commit", 3)
    seg["commits"][3] = cu.sign_commit(BASE.headers[3], BASE.sets[3], SM2, height=4)
    assert verify_segment(**seg).tip.height == LAST
    assert failure(**seg, strict=True) == ("commit", 3)


def test_skipping_mode_ignores_middle_commits_and_strict_checks_them() -> None:
    """The difference strict mode makes: a bad commit in the middle of a good chain."""
    seg = BASE.segment(0, LAST, all_commits=True)
    seg["commits"][5] = Commit(5, BASE.headers[5].block_id, ((0, bytes(64)),))
    assert verify_segment(**seg).tip.height == LAST
    assert failure(**seg, strict=True) == ("commit", 5)


# --- verify_commit -----------------------------------------------------------------------------


def commit_fixture(ks: list[cu.Key]) -> tuple[Header, ValidatorSet]:
    s = cu.vset(ks)
    header = Header(**cu.header_fields(9, None, s.hash, s.hash))
    return header, s


def by_index(s: ValidatorSet, ks: list[cu.Key]) -> list[cu.Key]:
    return [k for _, k in cu.signer_keys(s, ks)]


@pytest.mark.parametrize(
    ("powers", "signers", "ok"),
    [
        ([1, 1, 1], 2, False),  # exactly two thirds
        ([1, 1, 1], 3, True),
        ([1, 1, 1, 1], 3, True),  # 3/4
        ([100, 100, 100], 2, False),  # 200 of 300: exactly two thirds
        ([101, 100, 99], 2, True),  # 201 of 300: just above
        ([99, 100, 101], 2, False),  # the two smallest by index: 199 of 300
        ([2, 1], 1, False),  # 2 of 3
        ([3, 1], 1, True),  # 3 of 4
    ],
)
def test_quorum_threshold(powers: list[int], signers: int, ok: bool) -> None:
    base = cu.keys(len(powers), offset=40)
    s0 = cu.vset(base)
    ordered = by_index(s0, base)  # assign powers in index order, so "first n signers" is exact
    ks = [k.with_power(p) for k, p in zip(ordered, powers, strict=True)]
    header, s = commit_fixture(ks)
    commit = cu.sign_commit(header, s, by_index(s, ks)[:signers])
    if ok:
        assert verify_commit(commit, header, s, cu.CHAIN_ID) == sum(powers[:signers])
        assert commit_is_valid(commit, header, s, cu.CHAIN_ID)
    else:
        with pytest.raises(VerificationError) as err:
            verify_commit(commit, header, s, cu.CHAIN_ID)
        assert err.value.rule == "commit" and "two thirds" in err.value.detail
        assert not commit_is_valid(commit, header, s, cu.CHAIN_ID)


@settings(max_examples=25, deadline=None)
@given(powers=st.lists(st.integers(1, 10**6), min_size=1, max_size=5), data=st.data())
def test_quorum_property(powers: list[int], data: st.DataObject) -> None:
    base = cu.keys(len(powers), offset=50)
    ks = [k.with_power(p) for k, p in zip(base, powers, strict=True)]
    header, s = commit_fixture(ks)
    chosen = data.draw(st.lists(st.sampled_from(ks), unique=True))
    commit = cu.sign_commit(header, s, chosen)
    signed = sum(k.power for k in chosen)
    assert commit_is_valid(commit, header, s, cu.CHAIN_ID) is (3 * signed > 2 * sum(powers))


def commit_error(commit: Commit, header: Header, s: ValidatorSet, chain_id: str = cu.CHAIN_ID,
                 ) -> tuple[str, str]:
    with pytest.raises(VerificationError) as err:
        verify_commit(commit, header, s, chain_id)
    assert not commit_is_valid(commit, header, s, chain_id)
    return err.value.rule, err.value.detail


HEADER, SET = commit_fixture(SM2)
GOOD = cu.sign_commit(HEADER, SET, SM2)
SIGS = GOOD.signatures


def test_good_commit() -> None:
    assert verify_commit(GOOD, HEADER, SET, cu.CHAIN_ID) == 4


@pytest.mark.parametrize(
    ("sigs", "detail"),
    [
        ((SIGS[0], SIGS[0], SIGS[1], SIGS[2]), "strictly increasing"),
        ((SIGS[1], SIGS[0], SIGS[2], SIGS[3]), "strictly increasing"),
        ((SIGS[0], SIGS[1], SIGS[2], (4, SIGS[3][1])), "index 4"),
        ((SIGS[0], SIGS[1], SIGS[2], (2**64 - 1, SIGS[3][1])), "index"),
        ((SIGS[0], SIGS[1], SIGS[2], (3, SIGS[2][1])), "signature 3"),  # wrong key for 3
        ((SIGS[0], SIGS[1], SIGS[2], (3, bytes(64))), "signature 3"),
    ],
)
def test_bad_signature_lists(sigs: tuple[tuple[int, bytes], ...], detail: str) -> None:
    rule, message = commit_error(Commit(HEADER.height, HEADER.block_id, sigs), HEADER, SET)
    assert rule == "commit" and detail in message


def test_one_bad_signature_spoils_a_quorum() -> None:
    """Three good signatures are a quorum; a fourth, bad one still invalidates the commit."""
    three = Commit(HEADER.height, HEADER.block_id, SIGS[:3])
    assert verify_commit(three, HEADER, SET, cu.CHAIN_ID) == 3
    s3 = SIGS[3][1]
    flipped = bytes([s3[0] ^ 1]) + s3[1:]
    bad = Commit(HEADER.height, HEADER.block_id, (*SIGS[:3], (3, flipped)))
    assert commit_error(bad, HEADER, SET) == ("commit", "signature 3 does not verify")


@pytest.mark.parametrize(
    "override",
    [{"height": HEADER.height + 1}, {"block_id": bytes(32)}, {"chain_id": "bj-gov-other"}],
)
def test_signatures_over_another_vote(override: dict[str, Any]) -> None:
    commit = cu.sign_commit(HEADER, SET, SM2, **override)
    assert commit_error(commit, HEADER, SET)[0] == "commit"


def test_commit_for_another_block() -> None:
    wrong_height = Commit(HEADER.height + 1, HEADER.block_id, SIGS)
    assert commit_error(wrong_height, HEADER, SET)[0] == "commit"
    assert commit_error(Commit(HEADER.height, bytes(32), SIGS), HEADER, SET)[0] == "commit"
    assert commit_error(GOOD, HEADER, cu.vset(ECDSA))[0] == "validator_set_hash"
    assert commit_error(GOOD, HEADER, SET, "bj-gov-other")[0] == "chain_id"


def test_mixed_algorithm_set() -> None:
    header, s = commit_fixture(MIXED)
    assert sorted(v.alg for v in s.validators) == ["ecdsa-p256"] * 2 + ["sm2"] * 2
    commit = cu.sign_commit(header, s, MIXED)
    assert verify_commit(commit, header, s, cu.CHAIN_ID) == 4
    # An ECDSA validator's slot holding an SM2 signature over the same vote does not verify.
    message = vote_bytes(cu.CHAIN_ID, header.height, header.block_id)
    i = next(i for i, v in enumerate(s.validators) if v.alg == "ecdsa-p256")
    key = next(k for k in MIXED if k.public == s[i].public_key)
    wrong_alg = signatures.sign("sm2", key.private, message)  # same scalar, other curve and hash
    sigs = tuple((j, wrong_alg if j == i else sig) for j, sig in commit.signatures)
    assert commit_error(Commit(header.height, header.block_id, sigs), header, s)[0] == "commit"


def test_unknown_algorithm_validator_cannot_sign() -> None:
    strange = [cu.Key("rsa-2048", k.private, k.public) for k in cu.keys(1, offset=60)]
    ks = SM2 + strange  # 5 validators of power 1: quorum needs 4
    header, s = commit_fixture(ks)
    message = vote_bytes(cu.CHAIN_ID, header.height, header.block_id)
    sigs = []
    for i, v in enumerate(s.validators):
        key = next(k for k in ks if k.public == v.public_key)
        sigs.append((i, signatures.sign("sm2", key.private, message)))  # rsa slot: an sm2 sig
    assert commit_error(Commit(header.height, header.block_id, tuple(sigs)), header, s)[0] == (
        "commit"
    )
    without = tuple(sig for sig in sigs if s[sig[0]].alg == "sm2")
    assert verify_commit(Commit(header.height, header.block_id, without), header, s,
                         cu.CHAIN_ID) == 4


def test_quorum_is_counted_before_any_signature_is_checked() -> None:
    garbage = Commit(HEADER.height, HEADER.block_id, ((0, bytes(64)), (1, bytes(64))))
    rule, detail = commit_error(garbage, HEADER, SET)
    assert rule == "commit" and "two thirds" in detail


# --- anchor ----------------------------------------------------------------------------------


def test_check_anchor() -> None:
    anchor = CHANGED.anchor
    h0 = CHANGED.headers[0]
    check_anchor(anchor, h0)
    check_anchor(anchor, h0, next_set=CHANGED.sets[1])
    assert TrustAnchor.from_obj(wire.decode(wire.encode(anchor.to_obj()))) == anchor

    def anchor_error(a: TrustAnchor, header: Header, **kw: Any) -> str:
        with pytest.raises(VerificationError) as err:
            check_anchor(a, header, **kw)
        return err.value.rule

    assert anchor_error(anchor, CHANGED.headers[1]) == "anchor"
    wrong_set = TrustAnchor(anchor.chain_id, 0, anchor.block_id, cu.vset(ATTACKER))
    assert anchor_error(wrong_set, h0) == "anchor"
    wrong_height = TrustAnchor(anchor.chain_id, 1, anchor.block_id, anchor.validators)
    assert anchor_error(wrong_height, h0) == "anchor"
    wrong_chain = TrustAnchor("bj-gov-other", 0, anchor.block_id, anchor.validators)
    assert anchor_error(wrong_chain, h0) == "anchor"
    assert anchor_error(anchor, h0, next_set=cu.vset(ATTACKER)) == "validator_set_hash"
    with pytest.raises(TypeError):  # the set is keyword-only: no confusing it with the anchor's
        check_anchor(anchor, h0, CHANGED.sets[1])  # type: ignore[misc]


def test_anchor_then_segment() -> None:
    anchor = CHANGED.anchor
    check_anchor(anchor, CHANGED.headers[0], next_set=CHANGED.sets[1])
    assert verify_segment(**CHANGED.segment(0, LAST)).tip.height == LAST


# --- equivocation ----------------------------------------------------------------------------


def test_equivocation_detected() -> None:
    fork = tweaked(5, tx_root=bytes(32))
    a, b = BASE.headers[5], fork.headers[5]
    assert a.height == b.height and a.block_id != b.block_id
    s = BASE.sets[5]
    evidence = check_equivocation(BASE.commits[5], a, fork.commits[5], b, s, cu.CHAIN_ID)
    assert evidence is not None
    assert evidence.height == 5 and evidence.validators_hash == s.hash
    assert evidence.double_signers == (0, 1, 2, 3) and evidence.double_signed_power == 4
    assert wire.decode(wire.encode(evidence.to_obj()))["header_b"] == b.to_obj()
    # the minimum: two quorums of 3 out of 4 overlap in 2 validators (> a third of the power)
    three_a = cu.sign_commit(a, s, SM2[:3])
    three_b = cu.sign_commit(b, s, SM2[1:])
    evidence = check_equivocation(three_a, a, three_b, b, s, cu.CHAIN_ID)
    assert evidence is not None and evidence.double_signed_power == 2


def test_no_equivocation() -> None:
    fork = tweaked(5, tx_root=bytes(32))
    a, b = BASE.headers[5], fork.headers[5]
    s = BASE.sets[5]
    ca, cb = BASE.commits[5], fork.commits[5]
    assert check_equivocation(ca, a, ca, a, s, cu.CHAIN_ID) is None  # same block
    minority = cu.sign_commit(b, s, SM2[:2])
    assert check_equivocation(ca, a, minority, b, s, cu.CHAIN_ID) is None
    assert check_equivocation(ca, a, BASE.commits[6], BASE.headers[6], s, cu.CHAIN_ID) is None
    assert check_equivocation(ca, a, cb, b, cu.vset(ATTACKER), cu.CHAIN_ID) is None
    assert check_equivocation(ca, a, cb, b, s, "bj-gov-other") is None
    forged = Commit(5, b.block_id, tuple((i, bytes(64)) for i in range(4)))
    assert check_equivocation(ca, a, forged, b, s, cu.CHAIN_ID) is None


# --- transactions, proofs, blocks ----------------------------------------------------------------


def signed_tx(key: cu.Key, chain_id: str = cu.CHAIN_ID, n: int = 0) -> SignedTx:
    body = TxBody(chain_id, "evidence.deposit", cu.T0, peer_id(key.public),
                  {"digest": merkle.digest(b"doc %d" % n), "kind": "license", "issuer": "x"},
                  n.to_bytes(16, "big"))
    return SignedTx(body, key.alg, key.public, key.sign(body.encoded))


def test_verify_tx() -> None:
    for key in (SM2[0], ECDSA[0]):
        tx = signed_tx(key)
        verify_tx(tx)
        verify_tx(tx, cu.CHAIN_ID)
    tx = signed_tx(SM2[0])

    def tx_error(t: SignedTx, chain_id: str | None = None) -> str:
        with pytest.raises(VerificationError) as err:
            verify_tx(t, chain_id)
        return err.value.rule

    assert tx_error(tx, "bj-gov-other") == "chain_id"
    assert tx_error(SignedTx(tx.body, "sm2", SM2[1].public, tx.signature)) == "sender"
    assert tx_error(SignedTx(tx.body, "ecdsa-p256", tx.public_key, tx.signature)) == "tx_signature"
    assert tx_error(SignedTx(tx.body, "rsa", tx.public_key, tx.signature)) == "tx_signature"
    other = signed_tx(SM2[0], n=1)
    assert tx_error(SignedTx(tx.body, "sm2", tx.public_key, other.signature)) == "tx_signature"


def test_verify_proof_and_check_block() -> None:
    txs = tuple(signed_tx(SM2[i % 4], n=i) for i in range(5))
    ids = [t.tx_id for t in txs]
    s = BASE.sets[0]
    header = Header(**{**cu.header_fields(3, None, s.hash, s.hash), "tx_root": merkle.root(ids)})
    check_block(Block(header, txs))
    for i, tx_id in enumerate(ids):
        verify_proof(tx_id, Proof(i, 5, tuple(merkle.inclusion_proof(ids, i))), header)
    bad_proofs = [
        (ids[0], Proof(1, 5, tuple(merkle.inclusion_proof(ids, 0)))),
        (ids[0], Proof(0, 4, tuple(merkle.inclusion_proof(ids, 0)))),  # path too long
        (ids[0], Proof(5, 5, tuple(merkle.inclusion_proof(ids, 4)))),
        (merkle.digest(b"x"), Proof(0, 5, tuple(merkle.inclusion_proof(ids, 0)))),
        (ids[0], Proof(0, 5, (*merkle.inclusion_proof(ids, 0), bytes(32)))),
    ]
    for tx_id, proof in bad_proofs:
        with pytest.raises(VerificationError) as err:
            verify_proof(tx_id, proof, header)
        assert (err.value.rule, err.value.height) == ("proof", 3)
    # A proof authenticates membership, not the position or the tree size: with the same
    # path shape, another size verifies too (the header does not carry the tx count).
    verify_proof(ids[0], Proof(0, 8, tuple(merkle.inclusion_proof(ids, 0))), header)
    with pytest.raises(VerificationError) as err:
        check_block(Block(header, txs[:4]))
    assert err.value.rule == "tx_root"
    with pytest.raises(VerificationError):
        check_block(Block(header, (txs[1], txs[0], *txs[2:])))


def test_validator_objects_in_sets_are_checked_by_hash() -> None:
    """A set served for a hash is only used when it hashes to that value (power matters)."""
    heavier = ValidatorSet.of(Validator(v.alg, v.public_key, v.power + 1) for v in SET.validators)
    assert heavier.hash != SET.hash
    assert commit_error(GOOD, HEADER, heavier)[0] == "validator_set_hash"
