"""Presentation-attack evaluation on the synthetic set (ISO/IEC 30107-3 terms).

BPCER: share of genuine sessions wrongly rejected. APCER: share of attack sessions of one
class wrongly accepted (goal 0 %). Both are printed; the test asserts the goals. Genuine users
answer the challenge the session draws (seeded per case); replays and prints do not.
"""

from __future__ import annotations

import pytest
import synth

from appliance.kiosk.capture import Hint
from appliance.kiosk.capture.events import REASONS

GENUINE = synth.genuine_cases()
ATTACKS = synth.attack_cases()

# the reasons each attack class may fail with (anything else would be luck, not the check)
EXPECTED = {
    "print_static": {"static_face"},
    "print_turned_on_cue": {"action_timeout"},
    "replay_no_action": {"action_timeout"},
    "replay_wrong_action": {"wrong_action"},
    "replay_other_session": {"wrong_action", "action_timeout"},
    "face_too_small": {"no_good_face"},
    "too_dark": {"no_good_face"},
    "blurred": {"no_good_face"},
    "two_faces": {"no_good_face"},
}
HINT = {"face_too_small": "move_closer", "too_dark": "more_light", "blurred": "hold_still",
        "two_faces": "one_person"}


def report(capsys, line: str) -> None:
    with capsys.disabled():
        print("\n" + line, flush=True)


def test_genuine_sessions_pass(capsys):
    runs = [(case, synth.run_case(case)) for case in GENUINE]
    rejected = [(c.name, r.result.reason, r.result.detail) for c, r in runs
                if not r.result.passed]
    bpcer = len(rejected) / len(runs)
    durations = sorted(r.duration for _, r in runs)
    report(capsys, "face capture BPCER: %d/%d genuine sessions rejected = %.1f %% "
           "(decision after %.1f-%.1f s of frames, median %.1f s)"
           % (len(rejected), len(runs), 100 * bpcer, durations[0], durations[-1],
              durations[len(durations) // 2]))
    assert not rejected, rejected
    for case, run in runs:
        res = run.result
        assert res.actions_done == len(res.challenge)
        assert res.score is not None and res.best_timestamp is not None
        issued = [e.action for _, e in run.events if type(e).__name__ == "ChallengeIssued"]
        assert tuple(issued) == res.challenge, case.name


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_class_fails(capsys, attack):
    runs = [(case, synth.run_case(case)) for case in ATTACKS[attack]]
    accepted = [c.name for c, r in runs if r.result.passed]
    reasons = sorted({r.result.reason + (f"[{r.result.detail}]" if r.result.reason ==
                                         "action_timeout" else "") for _, r in runs})
    report(capsys, "face capture APCER %-22s %d/%d accepted = %.1f %%  (failed with: %s)"
           % (attack, len(accepted), len(runs), 100 * len(accepted) / len(runs),
              ", ".join(reasons)))
    assert not accepted, accepted
    for case, run in runs:
        assert run.result.reason in EXPECTED[attack], (case.name, run.result)
        assert run.result.reason in REASONS
        if attack in HINT:
            shown = {h for _, e in run.events if isinstance(e, Hint) for h in e.codes}
            assert HINT[attack] in shown, (case.name, shown)
