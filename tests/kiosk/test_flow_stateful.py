"""The flow under random event sequences (hypothesis RuleBasedStateMachine).

Events come from the UI, from the runner (right or wrong session, attempt, digest, tx), and
time jumps. Whatever the order, these hold:

- SignAuthorization only in a session whose matter the runner verified (MatterVerified), and
  either (face) after an accepted CaptureSealed(D) and a later AttestationVerified(match) for
  that session whose body names that session, subject and D, its data embedding exactly that
  attestation; or (clerk) after a ConfirmationVerified for that session, its data embedding
  exactly the confirmation the flow asked the runner to verify; with the signed matter whole;
  never while a blocking reason is active; once per session;
- SubmitTx only for the tx the runner said it signed for that session, never while blocked;
- every return to attract, and every entry into error or blocked from a session, emits Wipe;
- view() is JSON-serialisable, seq never goes down and grows when the view changes.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from test_flow import SUBJECT, T0, Rig, attestation, confirmation, display, matter, qr

from appliance.gm import sm3
from appliance.kiosk import flow as fl
from appliance.kiosk.capture.events import ChallengeIssued, Failed, Hint, Passed, Progress
from appliance.node import objects as ob

MATTER = matter()

DIGESTS = [sm3.digest(b"capture %d" % i) for i in range(2)]
TXS = [sm3.digest(b"tx %d" % i) for i in range(2)]
STALE = b"\xee" * 16
REACHED: set[str] = set()  # screens the happy steps were taken from (checked below)


class FlowMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.rig = Rig(fl.FlowConfig(capture_attempts=2, max_extends=2))
        self.blocks: set[str] = set()  # active reasons to refuse authorizations
        self.sealed: set[tuple[bytes, bytes]] = set()  # (session, digest) the flow sealed
        self.matches: list[fl.AttestationVerified] = []  # sent after a seal of that digest
        self.signed_sessions: set[bytes] = set()
        self.signed_txs: set[tuple[bytes, bytes]] = set()
        self.verified: set[bytes] = set()  # sessions whose matter the runner verified
        self.asked: dict[bytes, ob.Signed[ob.ConfirmationBody]] = {}  # VerifyConfirmation
        self.confirmed: set[bytes] = set()  # ConfirmationVerified sent while asked
        self.last_view = self.rig.flow.view()

    # -- plumbing ----------------------------------------------------------------------------------

    def session(self, which: str) -> bytes:
        if which == "current" and self.rig.flow.session is not None:
            return self.rig.flow.session
        return STALE

    def send(self, ev: fl.Event, dt: int = 10) -> None:
        before = self.rig.screen
        if isinstance(ev, fl.AttestationVerified) and ev.result == "match":
            self.matches.append(ev)
        if isinstance(ev, fl.AuthorizationSigned):
            self.signed_txs.add((ev.session, ev.tx_id))
        if isinstance(ev, fl.MatterVerified) and ev.session == self.rig.flow.session \
                and self.rig.screen == "checking":
            self.verified.add(ev.session)
        if isinstance(ev, fl.ConfirmationVerified) and ev.session in self.asked:
            self.confirmed.add(ev.session)
        out = self.rig.send(ev, dt)
        if isinstance(ev, fl.AlarmChanged):
            (self.blocks.add if ev.active else self.blocks.discard)(ev.kind)
        self.check(before, out)

    def check(self, before: str, out: list[fl.Effect]) -> None:
        after = self.rig.screen
        for e in out:
            if isinstance(e, fl.RequestAttestation):  # the digest the flow took as sealed
                self.sealed.add((e.session, e.capture_digest))
            if isinstance(e, fl.VerifyConfirmation):
                self.asked[e.session] = e.confirmation
            if isinstance(e, fl.SignAuthorization):
                assert not self.blocks
                assert e.session not in self.signed_sessions, "signed twice in a session"
                assert e.session in self.verified, "signed a matter not verified"
                self.signed_sessions.add(e.session)
                d = e.data
                assert d["session"] == e.session and d["matter"] == MATTER.to_obj()
                if "confirmation" in d:
                    assert e.session in self.confirmed, "signed without a confirmation"
                    assert d["confirmation"] == self.asked[e.session].to_obj()
                    assert "attestation" not in d and "capture_digest" not in d
                    continue
                assert (e.session, d["capture_digest"]) in self.sealed
                ok = [m for m in self.matches
                      if m.session == e.session and m.signed is d["attestation"]]
                assert ok, "signed without a verified match for this session"
                body = ok[-1].signed["body"]
                assert body["session"] == e.session and body["result"] == "match"
                assert body["capture_digest"] == d["capture_digest"]
                assert body["subject"] == SUBJECT and body["target"] == MATTER.digest
            if isinstance(e, fl.SubmitTx):
                assert not self.blocks
                assert (e.session, e.tx_id) in self.signed_txs
                assert e.session in self.signed_sessions
        wiped = any(isinstance(e, fl.Wipe) for e in out)
        if after == "attract" and before != "attract":
            assert wiped, f"{before} -> attract without Wipe"
        if after in ("error", "blocked") and before not in (after, "attract"):
            assert wiped, f"{before} -> {after} without Wipe"

    # -- UI ---------------------------------------------------------------------------------------

    @rule(kind=st.sampled_from(["start", "consent", "decline", "alternative", "extend",
                                "cancel", "done", "activity"]))
    def ui(self, kind: str) -> None:
        ev = fl.ui_event({"type": kind})
        assert ev is not None
        self.send(ev)

    @rule(kind=st.sampled_from(["good", "stale", "garbage", "matter"]),
          source=st.sampled_from(["camera", "clerk"]))
    def confirmation_text(self, kind: str, source: str) -> None:
        sid = self.rig.flow.session or STALE
        text = {"good": confirmation(sid, MATTER), "stale": confirmation(STALE, MATTER),
                "garbage": "GOVCONF1:%%%", "matter": qr(MATTER)}[kind]
        self.send(fl.ConfirmationText(text, source))

    @rule(which=st.sampled_from(["current", "current", "stale"]))
    def confirmation_verified(self, which: str) -> None:
        self.send(fl.ConfirmationVerified(self.session(which), "S-1"))

    @rule(kind=st.sampled_from(["good", "garbage", "other"]),
          source=st.sampled_from(["camera", "clerk"]))
    def matter_text(self, kind: str, source: str) -> None:
        text = {"good": qr(MATTER), "garbage": "GOVAUTH1:%%%",
                "other": "https://example.org"}[kind]
        self.send(fl.MatterText(text, source))

    @rule(which=st.sampled_from(["current", "current", "stale"]))
    def matter_verified(self, which: str) -> None:
        self.send(fl.MatterVerified(self.session(which), display(MATTER)))

    @rule(dt=st.sampled_from([1, 1000, 15_000, 40_000, 200_000]))
    def time_passes(self, dt: int) -> None:
        self.send(fl.Tick(), dt)

    @rule(active=st.booleans(), kind=st.sampled_from(["equivocation", "audit"]))
    def alarm_changes(self, active: bool, kind: str) -> None:
        self.send(fl.AlarmChanged(active, kind, kind=kind))

    # -- the runner's results -----------------------------------------------------------------

    @rule(which=st.sampled_from(["current", "current", "stale"]),
          attempt=st.sampled_from([1, 1, 2, 3]),
          event=st.sampled_from([Hint(("move_closer",)), ChallengeIssued("blink", 0, 2, 3.0),
                                 Progress("blink", 0, 2), Passed(80.0, 1.0),
                                 Failed("action_timeout"), Failed("cancelled")]))
    def capture(self, which: str, attempt: int, event: Any) -> None:
        self.send(fl.CaptureUpdate(self.session(which), attempt, event))

    @rule(which=st.sampled_from(["current", "current", "stale"]), d=st.sampled_from([0, 1]))
    def sealed_capture(self, which: str, d: int) -> None:
        self.send(fl.CaptureSealed(self.session(which), DIGESTS[d]))

    @rule(which=st.sampled_from(["current", "current", "stale"]),
          body_session=st.sampled_from(["same", "other"]), d=st.sampled_from([0, 1]),
          result=st.sampled_from(["match", "match", "no_match"]),
          claimed=st.sampled_from(["same", "match"]))
    def attested(self, which: str, body_session: str, d: int, result: str,
                 claimed: str) -> None:
        sid = self.session(which)
        signed = attestation(sid if body_session == "same" else STALE, DIGESTS[d], result,
                             MATTER)
        self.send(fl.AttestationVerified(sid, signed, result if claimed == "same" else "match",
                                         500))

    @rule(which=st.sampled_from(["current", "stale"]), ok=st.booleans())
    def nodes(self, which: str, ok: bool) -> None:
        self.send(fl.NodesChecked(self.session(which), ok))

    @rule(which=st.sampled_from(["current", "stale"]), t=st.sampled_from([0, 1]),
          kind=st.sampled_from(["signed", "submitted", "included"]))
    def tx_result(self, which: str, t: int, kind: str) -> None:
        sid = self.session(which)
        if kind == "signed":
            self.send(fl.AuthorizationSigned(sid, TXS[t]))
        elif kind == "submitted":
            self.send(fl.Submitted(sid, TXS[t]))
        else:
            self.send(fl.Included(sid, TXS[t], 9, bytes(32), T0))

    @rule(which=st.sampled_from(["current", "stale"]),
          step=st.sampled_from(["matter", "confirm", "capture", "seal", "attest", "nodes",
                                "sign", "submit", "include"]),
          code=st.sampled_from(sorted(fl.ERRORS)))
    def step_failed(self, which: str, step: str, code: str) -> None:
        self.send(fl.StepFailed(self.session(which), step, code))

    @rule(n=st.integers(1, 10), d=st.sampled_from([0, 1]), t=st.sampled_from([0, 1]),
          wrong=st.sampled_from(["none", "none", "none", "digest", "subject", "session",
                                 "no_match", "clerk", "clerk"]))
    def happy_run(self, n: int, d: int, t: int, wrong: str) -> None:
        """Up to ``n`` events that move the current session on (so deep states are reached
        often); ``wrong``: the attestation names another digest, subject or session, or
        says no_match."""
        for _ in range(n):
            self.happy_step(d, t, wrong)

    def happy_step(self, d: int, t: int, wrong: str) -> None:
        f, rig = self.rig.flow, self.rig
        screen = f.screen
        sid = f.session
        if screen == "attract":
            self.send(fl.Start())
        elif screen == "scan":
            self.send(fl.MatterText(qr(MATTER), "camera"))
        elif screen == "checking" and sid is not None:
            self.send(fl.MatterVerified(sid, display(MATTER)))
        elif screen == "consent":
            self.send(fl.Alternative() if wrong == "clerk" else fl.Consent())
        elif screen == "clerk" and sid is not None:
            if sid in self.asked:
                self.send(fl.ConfirmationVerified(sid, "S-1"))
            else:
                self.send(fl.ConfirmationText(confirmation(sid, MATTER), "camera"))
        elif screen == "capture" and sid is not None:
            attempt = rig.flow.view()["capture"]["attempt"]
            self.send(fl.CaptureUpdate(sid, attempt, Passed(80.0, 1.0)))
        elif screen == "verifying" and sid is not None:
            sealed = [dg for s_, dg in self.sealed if s_ == sid]
            if not sealed:
                self.send(fl.CaptureSealed(sid, DIGESTS[d]))
            else:
                digest = sealed[0]
                if wrong == "digest":
                    digest = DIGESTS[1 - DIGESTS.index(digest)]
                result = "no_match" if wrong == "no_match" else "match"
                signed = attestation(STALE if wrong == "session" else sid, digest, result,
                                     MATTER, subject=sm3.digest(b"x") if wrong == "subject"
                                     else SUBJECT)
                self.send(fl.AttestationVerified(sid, signed, result, 9))
        elif screen == "signing" and sid is not None:
            if sid in self.signed_sessions:
                self.send(fl.AuthorizationSigned(sid, TXS[t]))
            else:
                self.send(fl.NodesChecked(sid, True))
        elif screen == "submitting" and sid is not None:
            self.send(fl.Submitted(sid, TXS[t]))
        elif screen == "waiting" and sid is not None:
            self.send(fl.Included(sid, TXS[t], 9, bytes(32), T0))
        else:
            self.send(fl.Done())
        REACHED.add(screen)

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def view_is_json_and_seq_monotonic(self) -> None:
        view = self.rig.flow.view()
        json.dumps(view)
        assert view["screen"] in fl.SCREENS
        assert view["seq"] >= self.last_view["seq"]
        strip = lambda v: {k: x for k, x in v.items() if k != "seq"}  # noqa: E731
        if strip(view) != strip(self.last_view):
            assert view["seq"] > self.last_view["seq"]
        self.last_view = view

    @invariant()
    def screens_agree_with_state(self) -> None:
        view = self.rig.flow.view()
        if self.blocks and view["screen"] == "attract":
            raise AssertionError("attract while the alarm is active")
        if view["screen"] in ("attract", "error", "blocked"):
            assert view["matter"] is None and view["session"] is None
        if view["screen"] == "receipt":
            assert view["receipt"] is not None
        if view["warn_at_ms"] is not None:
            assert view["deadline_ms"] - view["warn_at_ms"] >= min(
                20_000, view["deadline_ms"] - view["warn_at_ms"] + 1) - 1


FlowMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_flow_state_machine = FlowMachine.TestCase


def test_the_machine_reaches_every_screen() -> None:
    """The random walks above must have gone through every step (else they prove little)."""
    if not REACHED:
        test_flow_state_machine().runTest()
    assert set(fl.SCREENS) - {"error", "blocked"} <= REACHED
