"""The authorization flow (appliance.kiosk.flow), transition by transition.

Every failure must end on the right screen, emit Wipe, and emit no SignAuthorization.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from appliance.gm import sm3
from appliance.kiosk import flow as fl
from appliance.kiosk.capture.events import ChallengeIssued, Failed, Hint, Passed, Progress
from appliance.node import objects as ob
from appliance.node import rules
from appliance.node.model import peer_id
from tests.node.world import T0, make_world

# -- the rig (also used by test_flow_stateful.py) -----------------------------------------------

WORLD = make_world()
TERMINAL = peer_id(WORLD.keys["kiosk"].public_key)
ENROLLMENT = WORLD.enrollments["kiosk"]
SUBJECT = WORLD.matter_body().subject


_MATTER = WORLD.matter()


def matter(**changes: Any) -> ob.Signed[ob.MatterBody]:
    """A signed matter of the world's PAD (expires at T0 + 1 h unless changed); the same one
    each time without changes (an SM2 signature differs at each signing)."""
    return WORLD.matter(**changes) if changes else _MATTER


def qr(m: ob.Signed[ob.MatterBody]) -> str:
    return ob.encode_qr(ob.MATTER_PREFIX, m)


def display(m: ob.Signed[ob.MatterBody]) -> dict[str, Any]:
    """What the runner hands the flow once it verified ``m``."""
    return rules.verify_matter(m, WORLD.lookup, WORLD.anchor_admins, at=T0).display()


def attestation(session: bytes, digest: bytes, result: str = "match",
                m: ob.Signed[ob.MatterBody] | None = None, **changes: Any) -> dict[str, Any]:
    m = m or matter()
    return WORLD.attestation(m, session, digest, result=result,
                             score=900 if result == "match" else 100, issued_at=T0,
                             **changes).to_obj()


def confirmation(session: bytes, m: ob.Signed[ob.MatterBody] | None = None,
                 **changes: Any) -> str:
    return ob.encode_qr(ob.CONFIRMATION_PREFIX,
                        WORLD.confirmation(m or matter(), session, issued_at=T0, **changes))


class Rig:
    """A flow, a clock and the record of every effect."""

    def __init__(self, config: fl.FlowConfig | None = None) -> None:
        counter = itertools.count(1)
        self.flow = fl.AuthorizationFlow(config, terminal_id=TERMINAL, enrollment=ENROLLMENT,
                                         new_session=lambda: next(counter).to_bytes(16, "big"))
        self.now = T0
        self.effects: list[fl.Effect] = []
        self.digest = sm3.digest(b"capture")
        self.tx_id = sm3.digest(b"tx")

    @property
    def screen(self) -> str:
        return self.flow.screen

    @property
    def sid(self) -> bytes:
        assert self.flow.session is not None
        return self.flow.session

    def send(self, ev: fl.Event, dt: int = 10) -> list[fl.Effect]:
        self.now += dt
        out = self.flow.handle(ev, self.now)
        self.effects.extend(out)
        json.dumps(self.flow.view())  # always JSON-safe
        return out

    def at(self, ms: int, ev: fl.Event | None = None) -> list[fl.Effect]:
        """Jump the clock to ``ms`` and send ``ev`` (a Tick by default)."""
        self.now = ms - 0
        out = self.flow.handle(ev or fl.Tick(), self.now)
        self.effects.extend(out)
        return out

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.effects if isinstance(e, kind)]

    def signed(self) -> bool:
        return bool(self.of(fl.SignAuthorization))

    def error(self) -> str | None:
        err = self.flow.view()["error"]
        return None if err is None else err["code"]

    # -- walking the happy path ----------------------------------------------------------------

    def to_scan(self) -> None:
        self.send(fl.Start())
        assert self.screen == "scan"

    def to_checking(self, m: ob.Signed[ob.MatterBody] | None = None) -> None:
        self.to_scan()
        self.send(fl.MatterText(qr(m or matter()), "camera"))
        assert self.screen == "checking"

    def to_consent(self, m: ob.Signed[ob.MatterBody] | None = None) -> None:
        m = m or matter()
        self.to_checking(m)
        self.send(fl.MatterVerified(self.sid, display(m)))
        assert self.screen == "consent"

    def to_clerk(self) -> None:
        self.to_consent()
        self.send(fl.Alternative())
        assert self.screen == "clerk"

    def to_confirming(self) -> None:
        self.to_clerk()
        self.send(fl.ConfirmationText(confirmation(self.sid), "camera"))
        assert self.of(fl.VerifyConfirmation)

    def to_capture(self) -> None:
        self.to_consent()
        self.send(fl.Consent())
        assert self.screen == "capture"

    def to_verifying(self) -> None:
        self.to_capture()
        self.send(fl.CaptureUpdate(self.sid, 1, ChallengeIssued("blink", 0, 2, 3.0)))
        self.send(fl.CaptureUpdate(self.sid, 1, Passed(80.0, 1.0)))
        assert self.screen == "verifying"

    def to_attesting(self) -> None:
        self.to_verifying()
        self.send(fl.CaptureSealed(self.sid, self.digest))
        assert self.of(fl.RequestAttestation)

    def to_signing(self) -> None:
        self.to_attesting()
        self.send(fl.AttestationVerified(self.sid, attestation(self.sid, self.digest),
                                         "match", 900))
        assert self.screen == "signing"

    def to_signed(self) -> None:
        self.to_signing()
        self.send(fl.NodesChecked(self.sid, True))
        assert self.signed()

    def to_submitting(self) -> None:
        self.to_signed()
        self.send(fl.AuthorizationSigned(self.sid, self.tx_id))
        assert self.screen == "submitting"

    def to_waiting(self) -> None:
        self.to_submitting()
        self.send(fl.Submitted(self.sid, self.tx_id))
        assert self.screen == "waiting"

    def to_receipt(self) -> None:
        self.to_waiting()
        self.send(fl.Included(self.sid, self.tx_id, 42, sm3.digest(b"block"), T0 + 5000))
        assert self.screen == "receipt"




def ended(rig: Rig, code: str, screen: str = "error") -> None:
    """The session ended with ``code``: nothing signed, wiped, audited."""
    assert rig.screen == screen
    assert rig.error() == code
    assert not rig.signed()
    assert rig.of(fl.Wipe)
    fails = [a for a in rig.of(fl.Audit) if a.kind == "authorization_failed"]
    assert fails and fails[-1].fields["code"] == code
    view = rig.flow.view()
    assert view["matter"] is None and view["session"] is None  # nothing of it shown


# -- the happy path ------------------------------------------------------------------------------

def test_happy_path_effects_and_data() -> None:
    rig = Rig()
    assert rig.flow.view()["screen"] == "attract" and rig.flow.view()["deadline_ms"] is None
    rig.to_scan()
    assert rig.of(fl.StartScan) == [fl.StartScan(rig.sid, "matter")]
    m = matter()
    rig.send(fl.MatterText(qr(m), "camera"))
    assert rig.of(fl.StopScan) and rig.screen == "checking"
    assert rig.of(fl.VerifyMatter) == [fl.VerifyMatter(rig.sid, m)]
    assert rig.flow.view()["matter"] is None  # nothing shown before it is verified
    rig.send(fl.MatterVerified(rig.sid, display(m)))
    view = rig.flow.view()
    assert view["screen"] == "consent" and view["matter"] == display(m) and view["can_cancel"]
    assert [lic["issuer"] for lic in view["matter"]["licenses"]] == [
        "海淀区公安分局 Haidian PSB", "朝阳区市场监管局"]
    rig.send(fl.Consent())
    assert rig.of(fl.StartCapture) == [fl.StartCapture(rig.sid, 1)]
    sid = rig.sid
    rig.send(fl.CaptureUpdate(sid, 1, Hint(("move_closer",))))
    assert rig.flow.view()["capture"]["hints"][0]["code"] == "move_closer"
    rig.send(fl.CaptureUpdate(sid, 1, ChallengeIssued("turn_left", 0, 2, 4.0)))
    cap = rig.flow.view()["capture"]
    assert cap["challenge"]["action"] == "turn_left" and cap["challenge"]["text_zh"]
    rig.send(fl.CaptureUpdate(sid, 1, Progress("turn_left", 0, 2)))
    assert rig.flow.view()["capture"]["progress"] == {"done": 1, "total": 2}
    rig.send(fl.CaptureUpdate(sid, 1, Passed(80.0, 1.0)))
    assert rig.screen == "verifying" and rig.of(fl.SealCapture) == [fl.SealCapture(sid)]
    assert not rig.flow.view()["can_extend"]
    rig.send(fl.CaptureSealed(sid, rig.digest))
    assert rig.of(fl.RequestAttestation) == [
        fl.RequestAttestation(sid, SUBJECT, rig.digest, m.digest, None, "authorize")]
    signed_att = attestation(sid, rig.digest)
    rig.send(fl.AttestationVerified(sid, signed_att, "match", 900))
    assert rig.screen == "signing" and rig.of(fl.CheckNodes) and not rig.signed()
    rig.send(fl.NodesChecked(sid, True))
    [sign] = rig.of(fl.SignAuthorization)
    assert sign.session == sid and sign.matter == m
    assert sign.data == {"session": sid, "matter": m.to_obj(), "attestation": signed_att,
                         "capture_digest": rig.digest, "terminal": TERMINAL,
                         "enrollment": ENROLLMENT}
    # what is signed embeds the matter whole: the very one the consent screen showed
    assert ob.AuthorizeData.from_obj(sign.data).matter == m
    rig.send(fl.AuthorizationSigned(sid, rig.tx_id))
    assert rig.of(fl.SubmitTx) == [fl.SubmitTx(sid, rig.tx_id)]
    assert not rig.flow.view()["can_cancel"]  # it has left the terminal
    rig.send(fl.Submitted(sid, rig.tx_id))
    assert rig.of(fl.AwaitInclusion) == [fl.AwaitInclusion(sid, rig.tx_id)]
    block = sm3.digest(b"block")
    rig.send(fl.Included(sid, rig.tx_id, 42, block, T0 + 5000))
    receipt = rig.flow.view()["receipt"]
    d = display(m)
    assert receipt == {"tx_id": rig.tx_id.hex(), "height": 42, "block_id": block.hex(),
                       "time_ms": T0 + 5000, "office": d["office"], "agencies": d["agencies"],
                       "title": d["title"], "use_until": d["use_until"], "way": "face",
                       "qr": "GOVTX1:" + rig.tx_id.hex()}
    [audit] = [a for a in rig.of(fl.Audit) if a.kind == "authorization"]
    assert audit.fields == {"session": sid.hex(), "tx_id": rig.tx_id.hex(), "height": 42,
                            "matter_id": m.body.matter_id.hex(), "pad": m.body.pad.hex(),
                            "office": d["office"], "agencies": d["agencies"], "way": "face",
                            "terminal": TERMINAL.hex()}
    assert not rig.of(fl.Wipe)
    rig.send(fl.Done())
    assert rig.screen == "attract" and rig.of(fl.Wipe) == [fl.Wipe(sid)]
    assert rig.flow.view()["receipt"] is None and rig.flow.view()["session"] is None


def test_seq_grows_on_every_change_only() -> None:
    rig = Rig()
    seqs = [rig.flow.view()["seq"]]
    rig.send(fl.Tick())
    assert rig.flow.view()["seq"] == seqs[-1]  # nothing changed
    rig.send(fl.Consent())  # not on consent: ignored
    assert rig.flow.view()["seq"] == seqs[-1]
    rig.to_consent()
    assert rig.flow.view()["seq"] > seqs[-1]
    seq = rig.flow.view()["seq"]
    rig.send(fl.Activity())  # the deadline moves: a change
    assert rig.flow.view()["seq"] == seq + 1


def test_a_clerk_can_start_from_attract() -> None:
    rig = Rig()
    rig.send(fl.MatterText(qr(matter()), "clerk"))
    assert rig.screen == "checking" and rig.flow.session is not None


# -- scan -------------------------------------------------------------------------------------

def test_other_qr_codes_are_ignored_by_the_camera() -> None:
    rig = Rig()
    rig.to_scan()
    rig.send(fl.MatterText("https://example.org/", "camera"))
    assert rig.screen == "scan" and not rig.of(fl.Wipe)


@pytest.mark.parametrize("source", ["camera", "clerk"])
def test_bad_matter_is_refused(source: str) -> None:
    rig = Rig()
    rig.to_scan()
    rig.send(fl.MatterText("GOVAUTH1:@@@", source))
    ended(rig, "matter_invalid")
    assert rig.of(fl.StopScan)


def test_clerk_text_without_prefix_is_refused() -> None:
    rig = Rig()
    rig.to_scan()
    rig.send(fl.MatterText("hello", "clerk"))
    ended(rig, "matter_invalid")


@pytest.mark.parametrize("rule,code", [
    ("matter_signature", "matter_forged"), ("matter_expired", "matter_expired"),
    ("use_until", "matter_terms"), ("enrollment_missing", "pad_not_enrolled"),
    ("enrollment_expired", "pad_expired"), ("enrollment_office", "pad_wrong_office"),
    ("deposit_missing", "license_not_found"), ("deposit_invalid", "license_unverifiable"),
    ("deposit_holder", "license_wrong_holder"),
    ("already_authorized", "matter_already_authorized"),
    ("node_unavailable", "node_unavailable"), ("something_new", "matter_invalid")])
def test_each_refusal_of_the_matter_has_its_screen(rule: str, code: str) -> None:
    rig = Rig()
    rig.to_checking()
    rig.send(fl.StepFailed(rig.sid, "matter", rule, "detail"))
    ended(rig, code)
    assert not rig.of(fl.StartCapture)


def test_the_matter_check_times_out() -> None:
    rig = Rig()
    rig.to_checking()
    rig.at(rig.now + fl.FlowConfig().checking_ms)
    ended(rig, "node_unavailable")


def test_a_verification_for_another_session_is_ignored() -> None:
    rig = Rig()
    rig.to_checking()
    rig.send(fl.MatterVerified(b"\xee" * 16, display(matter())))
    assert rig.screen == "checking"


def test_matter_expiring_on_consent_is_refused() -> None:
    rig = Rig()
    rig.to_consent(matter(expires_at=T0 + 30_000))
    rig.at(T0 + 30_001, fl.Consent())
    ended(rig, "matter_expired")


def test_matter_expiring_before_signing_is_not_signed() -> None:
    rig = Rig(fl.FlowConfig(verifying_ms=600_000, signing_ms=600_000))
    m = matter(expires_at=T0 + 120_000)
    rig.to_consent(m)
    rig.send(fl.Consent())
    rig.send(fl.CaptureUpdate(rig.sid, 1, Passed(80.0, 1.0)))
    rig.send(fl.CaptureSealed(rig.sid, rig.digest))
    rig.send(fl.AttestationVerified(rig.sid, attestation(rig.sid, rig.digest, m=m), "match",
                                    900))
    rig.at(T0 + 120_001, fl.NodesChecked(rig.sid, True))
    ended(rig, "matter_expired")


# -- consent, cancel, decline -------------------------------------------------------------------

def test_decline() -> None:
    rig = Rig()
    rig.to_consent()
    rig.send(fl.Decline())
    ended(rig, "consent_declined")
    rig.send(fl.Done())
    assert rig.screen == "attract" and len(rig.of(fl.Wipe)) == 2


@pytest.mark.parametrize("walk,screen", [
    ("to_scan", "scan"), ("to_checking", "checking"), ("to_consent", "consent"),
    ("to_clerk", "clerk"), ("to_confirming", "clerk"), ("to_capture", "capture"),
    ("to_verifying", "verifying"), ("to_attesting", "verifying"), ("to_signing", "signing")])
def test_cancel_before_signing(walk: str, screen: str) -> None:
    rig = Rig()
    getattr(rig, walk)()
    assert rig.screen == screen and rig.flow.view()["can_cancel"]
    sid = rig.sid
    rig.send(fl.Cancel())
    ended(rig, "cancelled")
    if screen == "capture":
        assert fl.StopCapture(sid) in rig.effects
    # a result of the cancelled session arriving late changes nothing
    rig.send(fl.AttestationVerified(sid, attestation(sid, rig.digest), "match", 900))
    rig.send(fl.NodesChecked(sid, True))
    assert rig.screen == "error" and not rig.signed()


def test_cancel_while_the_module_signs_drops_the_result() -> None:
    rig = Rig()
    rig.to_signed()
    sid = rig.sid
    rig.send(fl.Cancel())
    assert rig.screen == "error" and rig.error() == "cancelled"
    rig.send(fl.AuthorizationSigned(sid, rig.tx_id))
    assert not rig.of(fl.SubmitTx) and rig.screen == "error"


@pytest.mark.parametrize("walk", ["to_submitting", "to_waiting"])
def test_no_cancel_once_submitted(walk: str) -> None:
    rig = Rig()
    getattr(rig, walk)()
    screen = rig.screen
    assert not rig.flow.view()["can_cancel"]
    rig.send(fl.Cancel())
    assert rig.screen == screen and not rig.of(fl.Wipe)


def test_cancel_and_done_leave_receipt_and_error() -> None:
    rig = Rig()
    rig.to_receipt()
    rig.send(fl.Cancel())
    assert rig.screen == "attract" and rig.of(fl.Wipe)


# -- capture ------------------------------------------------------------------------------------

def test_capture_retries_then_liveness_failed() -> None:
    rig = Rig(fl.FlowConfig(capture_attempts=3))
    rig.to_capture()
    sid = rig.sid
    for attempt in (1, 2):
        rig.send(fl.CaptureUpdate(sid, attempt, ChallengeIssued("blink", 0, 2, 3.0)))
        rig.send(fl.CaptureUpdate(sid, attempt, Failed("action_timeout")))
        assert rig.screen == "capture"
        assert rig.of(fl.StartCapture)[-1] == fl.StartCapture(sid, attempt + 1)
        assert rig.flow.view()["capture"]["challenge"] is None  # a fresh attempt
        assert rig.flow.view()["capture"]["attempt"] == attempt + 1
    rig.send(fl.CaptureUpdate(sid, 1, Failed("static_face")))  # a stale attempt: ignored
    assert rig.screen == "capture"
    rig.send(fl.CaptureUpdate(sid, 3, Failed("cancelled")))  # our own cancel: ignored
    assert rig.screen == "capture"
    rig.send(fl.CaptureUpdate(sid, 3, Failed("static_face")))
    ended(rig, "liveness_failed")
    assert fl.StopCapture(sid) in rig.effects


def test_a_stale_pass_does_not_advance() -> None:
    rig = Rig()
    rig.to_capture()
    rig.send(fl.CaptureUpdate(rig.sid, 1, Failed("face_lost")))
    rig.send(fl.CaptureUpdate(rig.sid, 1, Passed(80.0, 1.0)))  # attempt 1 is over
    assert rig.screen == "capture"
    rig.send(fl.CaptureUpdate(b"\x09" * 16, 2, Passed(80.0, 1.0)))  # another session
    assert rig.screen == "capture"


def test_camera_lost() -> None:
    rig = Rig()
    rig.to_capture()
    rig.send(fl.StepFailed(rig.sid, "capture", "camera_unavailable"))
    ended(rig, "camera_unavailable")


def test_seal_failure() -> None:
    rig = Rig()
    rig.to_verifying()
    rig.send(fl.StepFailed(rig.sid, "seal", "camera_unavailable"))
    ended(rig, "camera_unavailable")


# -- attestation ----------------------------------------------------------------------------------

def test_no_match_signs_nothing() -> None:
    rig = Rig()
    rig.to_attesting()
    rig.send(fl.AttestationVerified(rig.sid, attestation(rig.sid, rig.digest, "no_match"),
                                    "no_match", 100))
    ended(rig, "identity_no_match")
    assert not rig.of(fl.CheckNodes)


@pytest.mark.parametrize("change", ["session", "digest", "subject", "result", "shape",
                                    "terminal", "action", "target", "represents"])
def test_an_attestation_for_something_else_is_invalid(change: str) -> None:
    """The runner verified it whole; the flow still refuses one not bound to this session,
    subject, capture, kiosk, action and target (a runner bug must not sign it)."""
    rig = Rig()
    rig.to_attesting()
    sid, digest = rig.sid, rig.digest
    signed = {
        "session": attestation(b"\x07" * 16, digest),
        "digest": attestation(sid, sm3.digest(b"another capture")),
        "subject": attestation(sid, digest, subject=sm3.digest(b"someone else")),
        "result": attestation(sid, digest, "no_match"),
        "shape": {"body": "not a map"},
        "terminal": attestation(sid, digest, terminal=sm3.digest(b"another kiosk")),
        "action": attestation(sid, digest, action="revoke"),
        "target": attestation(sid, digest, target=sm3.digest(b"another matter")),
        "represents": attestation(sid, digest, represents=sm3.digest(b"an enterprise")),
    }[change]
    rig.send(fl.AttestationVerified(sid, signed, "match", 900))
    ended(rig, "attestation_invalid")


@pytest.mark.parametrize("code,expected", [
    ("identity_unavailable", "identity_unavailable"),
    ("attestation_invalid", "attestation_invalid"),
    ("attestation_result", "identity_no_match"),
    ("attestation_target", "attestation_invalid"),
    ("enrollment_role", "attestation_invalid"),  # the service's key is not enrolled for it
    ("node_unavailable", "node_unavailable"),
    ("module_unavailable", "identity_unavailable"),  # not a code this step gives: default
])
def test_attestation_step_failures(code: str, expected: str) -> None:
    rig = Rig()
    rig.to_attesting()
    rig.send(fl.StepFailed(rig.sid, "attest", code))
    ended(rig, expected)


def test_a_failure_for_another_step_is_ignored() -> None:
    rig = Rig()
    rig.to_attesting()
    rig.send(fl.StepFailed(rig.sid, "sign", "module_unavailable"))
    assert rig.screen == "verifying"


# -- after the attestation ----------------------------------------------------------------------

def test_nodes_down_before_signing_signs_nothing() -> None:
    rig = Rig()
    rig.to_signing()
    rig.send(fl.NodesChecked(rig.sid, False, "nobody answered"))
    ended(rig, "node_unavailable")


def test_module_failure() -> None:
    rig = Rig()
    rig.to_signed()
    rig.send(fl.StepFailed(rig.sid, "sign", "module_unavailable", "link down"))
    assert rig.screen == "error" and rig.error() == "module_unavailable"
    assert not rig.of(fl.SubmitTx) and rig.of(fl.Wipe)
    assert rig.flow.view()["error"]["tx_id"] is None


def test_submit_failure_names_the_tx() -> None:
    rig = Rig()
    rig.to_submitting()
    rig.send(fl.StepFailed(rig.sid, "submit", "node_unavailable", "no peers"))
    assert rig.error() == "node_unavailable" and rig.of(fl.Wipe)
    assert rig.flow.view()["error"]["tx_id"] == rig.tx_id.hex()


@pytest.mark.parametrize("code", ["inclusion_timeout", "proof_invalid", "node_unavailable"])
def test_inclusion_failures(code: str) -> None:
    rig = Rig()
    rig.to_waiting()
    rig.send(fl.StepFailed(rig.sid, "include", code))
    assert rig.error() == code and rig.of(fl.Wipe)
    assert not [a for a in rig.of(fl.Audit) if a.kind == "authorization"]


def test_an_inclusion_of_another_tx_is_ignored() -> None:
    rig = Rig()
    rig.to_waiting()
    rig.send(fl.Included(rig.sid, sm3.digest(b"other"), 1, bytes(32), T0))
    assert rig.screen == "waiting"


# -- time -------------------------------------------------------------------------------------

@pytest.mark.parametrize("walk,screen,code", [
    ("to_scan", "scan", "timeout"), ("to_checking", "checking", "node_unavailable"),
    ("to_consent", "consent", "timeout"), ("to_clerk", "clerk", "timeout"),
    ("to_capture", "capture", "timeout"), ("to_attesting", "verifying", "identity_unavailable"),
    ("to_signing", "signing", "module_unavailable"),
    ("to_submitting", "submitting", "node_unavailable"),
    ("to_waiting", "waiting", "inclusion_timeout")])
def test_every_step_times_out(walk: str, screen: str, code: str) -> None:
    rig = Rig()
    getattr(rig, walk)()
    deadline = rig.flow.view()["deadline_ms"]
    assert deadline == rig.flow.next_deadline() and deadline > rig.now
    rig.at(deadline - 1)
    assert rig.screen == screen
    rig.at(deadline)
    assert rig.screen == "error" and rig.error() == code and rig.of(fl.Wipe)
    if screen in ("scan", "consent", "capture", "verifying", "signing") and walk != "to_signing":
        assert not rig.signed()
    err_deadline = rig.flow.view()["deadline_ms"]
    wipes = len(rig.of(fl.Wipe))
    rig.at(err_deadline)
    assert rig.screen == "attract" and len(rig.of(fl.Wipe)) == wipes + 1


def test_receipt_times_out_to_attract() -> None:
    rig = Rig()
    rig.to_receipt()
    rig.at(rig.flow.view()["deadline_ms"])
    assert rig.screen == "attract" and rig.of(fl.Wipe)


def test_a_late_result_loses_to_the_deadline() -> None:
    rig = Rig()
    rig.to_attesting()
    deadline = rig.flow.view()["deadline_ms"]
    rig.at(deadline, fl.AttestationVerified(rig.sid, attestation(rig.sid, rig.digest),
                                            "match", 900))
    assert rig.error() == "identity_unavailable" and not rig.of(fl.CheckNodes)


def test_warning_leaves_twenty_seconds_and_extend_is_bounded() -> None:
    cfg = fl.FlowConfig()
    rig = Rig(cfg)
    rig.to_consent()
    view = rig.flow.view()
    assert view["deadline_ms"] - view["warn_at_ms"] >= 20_000
    assert view["warn_at_ms"] == view["deadline_ms"] - 20_000  # 25 % of 60 s is too short
    long = Rig(fl.FlowConfig(consent_ms=200_000))
    long.to_consent()
    assert long.flow.view()["warn_at_ms"] == long.now + 150_000  # at 75 %
    for i in range(cfg.max_extends):
        assert rig.flow.view()["can_extend"]
        rig.send(fl.Extend(), dt=40_000)  # near the end each time
        assert rig.screen == "consent"
        assert rig.flow.view()["deadline_ms"] == rig.now + cfg.consent_ms
        assert rig.flow.view()["extends_left"] == cfg.max_extends - i - 1
    assert not rig.flow.view()["can_extend"]
    deadline = rig.flow.view()["deadline_ms"]
    rig.send(fl.Extend())
    assert rig.flow.view()["deadline_ms"] == deadline  # no more
    # a touch is not an extension, but it shows somebody is there
    rig.send(fl.Activity(), dt=1000)
    assert rig.flow.view()["deadline_ms"] == rig.now + cfg.consent_ms
    rig.at(rig.flow.view()["deadline_ms"])
    assert rig.error() == "timeout"


def test_capture_warns_twenty_seconds_before_its_end() -> None:
    rig = Rig()
    rig.to_capture()
    v = rig.flow.view()
    assert v["deadline_ms"] - v["warn_at_ms"] == 20_000  # 25 % of 45 s would be too short
    rig.send(fl.Activity(), dt=5000)
    assert rig.flow.view()["deadline_ms"] == v["deadline_ms"]  # touches do not extend capture


def test_processing_screens_cannot_be_extended() -> None:
    rig = Rig()
    rig.to_waiting()
    v = rig.flow.view()
    assert not v["can_extend"] and v["warn_at_ms"] is None
    rig.send(fl.Extend())
    assert rig.flow.view()["deadline_ms"] == v["deadline_ms"]


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        fl.FlowConfig(consent_ms=0)
    with pytest.raises(ValueError):
        fl.FlowConfig(warn_fraction=1.0)
    with pytest.raises(ValueError):
        fl.AuthorizationFlow(terminal_id=b"short", new_session=lambda: bytes(16))


# -- the clerk way -------------------------------------------------------------------------------

def test_clerk_way_ends_on_chain() -> None:
    """Consent -> the session code and QR -> the PAD's confirmation read back -> verified by
    the runner -> signed with the confirmation (no capture, no attestation) -> receipt."""
    rig = Rig()
    rig.to_consent()
    sid, m = rig.sid, matter()
    rig.send(fl.Alternative())
    v = rig.flow.view()
    assert v["screen"] == "clerk" and v["matter"] == display(m)
    clerk = v["clerk"]
    req = ob.decode_session_qr(clerk["qr"])
    assert req == ob.SessionRequest(sid, TERMINAL, "authorize", m.digest)
    assert clerk["code"] == ob.session_code(sid) and not clerk["checking"]
    assert rig.of(fl.StartScan)[-1] == fl.StartScan(sid, "confirmation")
    text = confirmation(sid)
    rig.send(fl.ConfirmationText(text, "camera"))
    [verify] = rig.of(fl.VerifyConfirmation)
    assert verify.confirmation == ob.decode_confirmation_qr(text) and verify.matter == m
    assert rig.flow.view()["clerk"]["checking"] and rig.of(fl.StopScan)
    rig.send(fl.ConfirmationVerified(sid, "S-0042"))
    assert rig.screen == "signing" and rig.of(fl.CheckNodes)
    rig.send(fl.NodesChecked(sid, True))
    [sign] = rig.of(fl.SignAuthorization)
    assert sign.data == {"session": sid, "matter": m.to_obj(), "terminal": TERMINAL,
                         "enrollment": ENROLLMENT,
                         "confirmation": ob.decode_confirmation_qr(text).to_obj()}
    assert ob.AuthorizeData.from_obj(sign.data).way == "clerk"
    assert not rig.of(fl.StartCapture) and not rig.of(fl.RequestAttestation)
    rig.send(fl.AuthorizationSigned(sid, rig.tx_id))
    rig.send(fl.Submitted(sid, rig.tx_id))
    rig.send(fl.Included(sid, rig.tx_id, 7, sm3.digest(b"block"), T0 + 9000))
    assert rig.screen == "receipt" and rig.flow.view()["receipt"]["way"] == "clerk"


def test_clerk_way_from_capture_stops_it() -> None:
    rig = Rig()
    rig.to_capture()
    sid = rig.sid
    rig.send(fl.Alternative())
    assert rig.screen == "clerk" and fl.StopCapture(sid) in rig.effects
    rig.send(fl.CaptureUpdate(sid, 1, Passed(80.0, 1.0)))  # late: ignored
    assert rig.screen == "clerk" and not rig.of(fl.SealCapture)


@pytest.mark.parametrize("change", [{"session": b"\x07" * 16}, {"terminal": b"\x07" * 32},
                                    {"action": "revoke"}, {"target": b"\x07" * 32}])
def test_a_confirmation_for_something_else_is_not_used(change: dict[str, Any]) -> None:
    """Read by the camera (an older code still on the PAD's screen): ignored; typed at the
    kiosk: refused."""
    rig = Rig()
    rig.to_clerk()
    sid = rig.sid
    text = confirmation(change.pop("session", sid), **change)
    rig.send(fl.ConfirmationText(text, "camera"))
    assert rig.screen == "clerk" and not rig.of(fl.VerifyConfirmation)
    rig.send(fl.ConfirmationText(text, "clerk"))
    ended(rig, "confirmation_invalid")


def test_other_qr_codes_are_ignored_while_waiting_for_the_clerk() -> None:
    rig = Rig()
    rig.to_clerk()
    rig.send(fl.ConfirmationText(qr(matter()), "camera"))  # the matter's own QR, still shown
    rig.send(fl.ConfirmationText("https://example.org/", "camera"))
    assert rig.screen == "clerk" and not rig.of(fl.VerifyConfirmation)
    rig.send(fl.ConfirmationText("GOVCONF1:@@", "camera"))  # a broken confirmation
    ended(rig, "confirmation_invalid")


@pytest.mark.parametrize("rule,code", [
    ("confirmation_signature", "confirmation_invalid"),
    ("confirmation_pad_key", "confirmation_invalid"),
    ("confirmation_stale", "confirmation_invalid"),
    ("enrollment_office", "clerk_not_enrolled"), ("enrollment_role", "clerk_not_enrolled"),
    ("enrollment_expired", "clerk_not_enrolled"), ("node_unavailable", "node_unavailable")])
def test_each_refusal_of_the_confirmation_has_its_screen(rule: str, code: str) -> None:
    rig = Rig()
    rig.to_confirming()
    rig.send(fl.StepFailed(rig.sid, "confirm", rule))
    ended(rig, code)


def test_the_clerk_screen_times_out() -> None:
    rig = Rig()
    rig.to_clerk()
    assert rig.flow.view()["can_extend"]
    rig.at(rig.flow.view()["deadline_ms"])
    ended(rig, "timeout")


def test_already_authorized_when_signing() -> None:
    """The kiosk records the matter before the module signs: a second flow of the same matter
    (two touches racing) is refused at signing."""
    rig = Rig()
    rig.to_signed()  # SignAuthorization asked: the runner records the matter first
    rig.send(fl.StepFailed(rig.sid, "sign", "already_authorized"))
    assert rig.screen == "error" and rig.error() == "matter_already_authorized"
    assert not rig.of(fl.SubmitTx) and rig.of(fl.Wipe)


def test_a_kiosk_without_enrollment_is_blocked() -> None:
    flow = fl.AuthorizationFlow(terminal_id=TERMINAL, new_session=lambda: bytes(16))
    v = flow.view()
    assert v["screen"] == "blocked" and v["error"]["code"] == "blocked_not_enrolled"
    flow.handle(fl.Start(), T0)
    flow.handle(fl.MatterText(qr(matter()), "clerk"), T0)
    assert flow.screen == "blocked" and flow.session is None


# -- the equivocation alarm ---------------------------------------------------------------------

def test_alarm_blocks_new_flows_until_cleared() -> None:
    rig = Rig()
    rig.send(fl.AlarmChanged(True, "equivocation at height 7"))
    v = rig.flow.view()
    assert v["screen"] == "blocked" and v["alarm"]["detail"] == "equivocation at height 7"
    assert v["error"]["code"] == "blocked_alarm" and v["error"]["title_zh"]
    rig.send(fl.Start())
    rig.send(fl.MatterText(qr(matter()), "clerk"))
    assert rig.screen == "blocked" and rig.flow.session is None
    assert rig.of(fl.Audit) == []  # the node audits its alarms; no session was started
    rig.send(fl.AlarmChanged(False))
    assert rig.screen == "attract" and rig.of(fl.Wipe) and rig.flow.view()["alarm"] is None
    rig.to_consent()


@pytest.mark.parametrize("walk", ["to_scan", "to_consent", "to_capture", "to_attesting",
                                  "to_signing"])
def test_alarm_aborts_a_flow_not_yet_signed(walk: str) -> None:
    rig = Rig()
    getattr(rig, walk)()
    sid = rig.sid
    rig.send(fl.AlarmChanged(True, "equivocation"))
    ended(rig, "blocked_alarm", screen="blocked")
    rig.send(fl.NodesChecked(sid, True))
    assert not rig.signed()


def test_alarm_while_signing_drops_the_signed_tx() -> None:
    rig = Rig()
    rig.to_signed()
    sid = rig.sid
    rig.send(fl.AlarmChanged(True, "equivocation"))
    assert rig.screen == "blocked"
    rig.send(fl.AuthorizationSigned(sid, rig.tx_id))
    assert not rig.of(fl.SubmitTx)


def test_alarm_after_submission_gives_no_receipt() -> None:
    rig = Rig()
    rig.to_waiting()
    sid = rig.sid
    rig.send(fl.AlarmChanged(True, "equivocation"))
    v = rig.flow.view()
    assert v["screen"] == "blocked" and v["error"]["tx_id"] == rig.tx_id.hex()
    assert "submitted" in v["error"]["message_en"]
    rig.send(fl.Included(sid, rig.tx_id, 42, bytes(32), T0))
    assert rig.screen == "blocked" and v["receipt"] is None


def test_alarm_on_the_receipt_blocks_the_next_flow() -> None:
    rig = Rig()
    rig.to_receipt()
    rig.send(fl.AlarmChanged(True, "equivocation"))
    assert rig.screen == "receipt"  # shown as it was verified
    rig.send(fl.Done())
    assert rig.screen == "blocked" and rig.of(fl.Wipe)


def test_a_failing_audit_log_blocks_new_flows_with_its_own_reason() -> None:
    rig = Rig()
    rig.to_consent()
    rig.send(fl.AlarmChanged(True, "gone: the audit directory vanished", kind="audit"))
    ended(rig, "blocked_audit", screen="blocked")
    v = rig.flow.view()
    assert v["alarm"]["kind"] == "audit" and "audit" in v["error"]["message_en"]
    rig.send(fl.Start())
    assert rig.screen == "blocked" and rig.flow.session is None
    rig.send(fl.AlarmChanged(False, kind="audit"))
    assert rig.screen == "attract"
    rig.to_consent()


def test_an_audit_failure_lets_a_sent_authorization_finish() -> None:
    """Unlike an equivocation, a failing audit log does not put the proof in doubt: the
    transaction already left, so the citizen still gets the verified receipt."""
    rig = Rig()
    rig.to_waiting()
    rig.send(fl.AlarmChanged(True, "append_failed", kind="audit"))
    assert rig.screen == "waiting"
    rig.send(fl.Included(rig.sid, rig.tx_id, 42, bytes(32), T0))
    assert rig.screen == "receipt"
    rig.send(fl.Done())
    assert rig.screen == "blocked" and rig.flow.view()["error"]["code"] == "blocked_audit"


def test_several_reasons_block_until_the_last_is_cleared() -> None:
    rig = Rig()
    rig.send(fl.AlarmChanged(True, "audit failed", kind="audit"))
    rig.send(fl.AlarmChanged(True, "two commits at height 7"))
    v = rig.flow.view()
    assert v["error"]["code"] == "blocked_alarm"  # the most serious is shown
    assert v["alarm"]["kinds"] == ["audit", "equivocation"]
    rig.send(fl.AlarmChanged(False))
    v = rig.flow.view()
    assert v["screen"] == "blocked" and v["error"]["code"] == "blocked_audit"
    rig.send(fl.AlarmChanged(False, kind="something-else"))  # never raised: no change
    assert rig.screen == "blocked"
    rig.send(fl.AlarmChanged(False, kind="audit"))
    assert rig.screen == "attract" and rig.flow.view()["alarm"] is None


def test_an_unknown_blocking_reason_gets_the_generic_screen() -> None:
    rig = Rig()
    rig.send(fl.AlarmChanged(True, "tamper switch", kind="enclosure"))
    v = rig.flow.view()
    assert v["screen"] == "blocked" and v["error"]["code"] == "blocked_unavailable"


# -- the UI's events ------------------------------------------------------------------------------

def test_ui_events() -> None:
    assert fl.ui_event({"type": "start"}) == fl.Start()
    assert fl.ui_event({"type": "matter_text", "text": "x"}) == fl.MatterText("x", "clerk")
    assert fl.ui_event({"type": "confirmation_text", "text": "c"}) == \
        fl.ConfirmationText("c", "clerk")
    for bad in (None, [], {}, {"type": 1}, {"type": "matter_text"},
                {"type": "matter_text", "text": 5}, {"type": "clerk_confirmed_id", "clerk": "c"},
                {"type": "confirmation_verified"}, {"type": "matter_verified"},
                {"type": "included"}, {"type": "signed"}, {"type": "alarm"}):
        assert fl.ui_event(bad) is None  # the UI cannot post results of I/O


def test_every_error_has_both_languages() -> None:
    required = {"consent_declined", "matter_invalid", "matter_expired", "liveness_failed",
                "identity_no_match", "identity_unavailable", "attestation_invalid",
                "module_unavailable", "node_unavailable", "inclusion_timeout", "proof_invalid",
                "blocked_alarm", "blocked_audit", "blocked_unavailable", "timeout",
                "cancelled", *(code for step in fl.REFUSALS.values() for code in step.values())}
    assert required <= set(fl.ERRORS)
    for code, texts in fl.ERRORS.items():
        assert len(texts) == 4 and all(texts), code
    json.dumps(fl.ERRORS, ensure_ascii=False)


def test_timers_run_on_the_monotonic_clock_and_expiry_on_the_wall_clock() -> None:
    """With ``mono_ms`` the timers ignore a step of the wall clock (here back by an hour);
    the view's deadline is the wall clock plus the time that remains; the matter's expiry
    is judged on the wall clock."""
    flow = fl.AuthorizationFlow(fl.FlowConfig(scan_ms=5_000), terminal_id=bytes(32),
                                new_session=lambda: bytes(16), enrollment=ENROLLMENT)
    mono = 1_000
    flow.handle(fl.Start(), T0, mono)
    assert flow.next_deadline() == mono + 5_000
    assert flow.view()["deadline_ms"] == T0 + 5_000
    flow.handle(fl.Cancel(), T0 + 100, mono + 100)
    flow.handle(fl.Done(), T0 + 200, mono + 200)
    stepped = T0 - 3_600_000  # the wall clock stepped back on the attract screen
    flow.handle(fl.Start(), stepped + 300, mono + 300)
    assert flow.next_deadline() == mono + 300 + 5_000  # not stretched by the step
    assert flow.view()["deadline_ms"] == stepped + 300 + 5_000
    flow.handle(fl.Tick(), stepped + 300 + 4_999, mono + 300 + 4_999)
    assert flow.screen == "scan"
    flow.handle(fl.Tick(), stepped, mono + 300 + 5_000)  # the monotonic time decides
    assert flow.screen == "error" and flow.view()["error"]["code"] == "timeout"
    # expiry: a matter valid on the wall clock is accepted though the monotonic time is
    # larger than its expires_at, and one expired on the wall clock is refused at consent
    flow.handle(fl.Done(), T0, T0 * 2)
    m = matter(expires_at=T0 + 1_000)
    flow.handle(fl.MatterText(qr(m), "camera"), T0, T0 * 2)
    flow.handle(fl.MatterVerified(flow.session, display(m)), T0, T0 * 2)
    flow.handle(fl.Consent(), T0, T0 * 2)
    assert flow.screen == "capture"
    flow.handle(fl.Cancel(), T0, T0 * 2)
    flow.handle(fl.Done(), T0, T0 * 2)
    flow.handle(fl.MatterText(qr(m), "camera"), T0, T0 * 2)
    flow.handle(fl.MatterVerified(flow.session, display(m)), T0, T0 * 2)
    flow.handle(fl.Consent(), T0 + 1_001, T0 * 2)
    assert flow.view()["error"]["code"] == "matter_expired"
