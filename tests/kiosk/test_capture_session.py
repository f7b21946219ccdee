"""The sans-I/O capture session: events, the best frame, sealing, and wiping its buffers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import synth

from appliance.gm import sm2, sm3
from appliance.kiosk.capture import (
    CaptureConfig,
    CaptureSession,
    ChallengeIssued,
    Failed,
    Hint,
    Passed,
    Progress,
    check_digest,
    open_envelope,
)

SK, PK = sm2.generate_keypair()
SESSION_ID = bytes.fromhex("00112233445566778899aabbccddeeff")


@pytest.fixture(scope="module")
def passed():
    """A genuine session that passed, not yet sealed, and copies of the frames it was fed."""
    case = synth.genuine_cases()[1]
    session = CaptureSession(CaptureConfig(), randbelow=synth.seeded_randbelow(case.seed))
    fed: dict[float, np.ndarray] = {}

    def keep(frame):
        fed[round(100.0 + len(fed) / case.fps, 6)] = frame.copy()

    run = synth.run(session, case.make(session.challenge), fps=case.fps, frame_hook=keep)
    assert run.result.passed, run.result
    yield session, run, fed
    session.close()
    for f in fed.values():
        f.fill(0)


def test_event_order(passed):
    _, run, _ = passed
    kinds = [type(e) for _, e in run.events]
    assert kinds[0] is Hint
    assert kinds[-1] is Passed
    issued = [e for _, e in run.events if isinstance(e, ChallengeIssued)]
    done = [e for _, e in run.events if isinstance(e, Progress)]
    assert [e.action for e in issued] == [e.action for e in done] == list(run.result.challenge)
    assert [e.index for e in issued] == list(range(len(issued)))
    # a hint is sent when the advice changes, not every frame
    hints = [e.codes for _, e in run.events if isinstance(e, Hint)]
    assert all(a != b for a, b in zip(hints, hints[1:], strict=False))


def test_best_frame_is_sealed_and_opens(passed):
    session, run, fed = passed
    res = session.result
    assert res.passed and res.best_timestamp in fed
    assert res.first_timestamp == 100.0 and res.duration == pytest.approx(run.duration)
    sealed = session.seal(PK, SESSION_ID)
    jpeg = open_envelope(SK, sealed.encode(), session=SESSION_ID)
    check_digest(jpeg, sealed.capture_digest)
    assert sm3.digest(jpeg) == sealed.capture_digest
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    best = fed[res.best_timestamp]
    assert float(np.abs(image.astype(np.int16) - best).mean()) < 4.0
    # the frame that was sealed is the best-scoring one that passed the gate
    others = [abs(image.astype(np.int16) - f).mean() for t, f in fed.items()
              if t != res.best_timestamp]
    assert float(np.abs(image.astype(np.int16) - best).mean()) < min(others)
    # after sealing every buffer is overwritten and the session cannot seal again
    assert all(not b.any() for b in session.held_buffers())
    with pytest.raises(RuntimeError):
        session.seal(PK, SESSION_ID)


def test_failed_session_wipes_at_once_and_cannot_seal():
    case = synth.attack_cases()["replay_wrong_action"][0]
    session = CaptureSession(CaptureConfig(), randbelow=synth.seeded_randbelow(case.seed))
    run = synth.run(session, case.make(session.challenge), fps=case.fps)
    assert not run.result.passed
    assert isinstance(run.events[-1][1], Failed)
    assert session.held_buffers() and all(not b.any() for b in session.held_buffers())
    with pytest.raises(RuntimeError):
        session.seal(PK, SESSION_ID)
    assert session.feed(synth.render(), 1000.0) == []  # done: frames are ignored


def test_close_wipes_mid_session():
    session = CaptureSession(challenge=("blink", "turn_left"))
    subject = synth.Subject(3)
    for i in range(6):
        frame = subject.frame(i / 15)
        session.feed(frame, i / 15)
    assert any(b.any() for b in session.held_buffers())
    with session:
        pass
    assert all(not b.any() for b in session.held_buffers())


def test_cancel():
    session = CaptureSession(challenge=("blink", "turn_left"))
    session.feed(synth.render(), 5.0)
    assert session.cancel() == [Failed("cancelled")]
    assert session.result.reason == "cancelled" and session.done
    assert session.cancel() == []


def test_input_checks():
    session = CaptureSession(challenge=("blink", "turn_left"))
    frame = synth.render()
    session.feed(frame, 2.0)
    with pytest.raises(ValueError):
        session.feed(frame, 1.0)  # time goes forward
    with pytest.raises(ValueError):
        session.feed(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), 3.0)  # colour needed
    with pytest.raises(ValueError):
        session.feed(frame.astype(np.float32), 3.0)


def test_challenge_drawn_per_session():
    drawn = {CaptureSession().challenge for _ in range(40)}
    assert len(drawn) > 3
    assert all(2 <= len(c) <= 3 for c in drawn)


def test_hints_guide_then_clear():
    """Too far, then in place: the hint says so, then clears."""
    session = CaptureSession(challenge=("blink", "turn_left"))
    far = synth.Subject(1, base=synth.Pose(scale=0.6))
    near = synth.Subject(1)
    hints = []
    for i in range(20):
        subject = far if i < 10 else near
        for e in session.feed(subject.frame(i / 15), i / 15):
            if isinstance(e, Hint):
                hints.append(e.codes)
    assert ("move_closer",) in hints
    assert hints[-1] == ()
    session.close()
