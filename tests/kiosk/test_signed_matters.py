"""The kiosk's memory of the matters it signed: once, across restarts, private, pruned."""

from __future__ import annotations

import json
import os
import stat

import pytest

from appliance.kiosk.signed_matters import SignedMatters

PAD, OTHER_PAD = b"\x01" * 32, b"\x02" * 32
MID = b"\x10" * 16


def test_a_matter_is_recorded_once_and_remembered_after_a_restart(tmp_path) -> None:
    path = tmp_path / "signed-matters.json"
    old = os.umask(0o002)
    try:
        m = SignedMatters(path)
        assert not m.seen(PAD, MID)
        assert m.record(PAD, MID, expires_at=2_000, now_ms=1_000)
        assert not m.record(PAD, MID, expires_at=2_000, now_ms=1_001)  # a second time: no
        assert m.record(OTHER_PAD, MID, expires_at=2_000, now_ms=1_002)  # another PAD's id
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # whatever the umask
    again = SignedMatters(path)  # the daemon restarted
    assert again.seen(PAD, MID) and not again.record(PAD, MID, 2_000, 1_500)


def test_expired_matters_are_forgotten(tmp_path) -> None:
    path = tmp_path / "m.json"
    m = SignedMatters(path)
    m.record(PAD, MID, expires_at=2_000, now_ms=1_000)
    m.record(PAD, b"\x11" * 16, expires_at=9_000, now_ms=1_000)
    m.record(PAD, b"\x12" * 16, expires_at=9_000, now_ms=2_001)  # prunes the expired one
    assert not m.seen(PAD, MID)
    assert len(json.loads(path.read_text())) == 2


def test_a_damaged_memory_is_refused_not_reset(tmp_path) -> None:
    """Starting over with an empty memory would let a matter be signed twice: a memory that
    does not read stops the runner from being built (the daemon says why)."""
    path = tmp_path / "m.json"
    for content in ("{not json", '["a list"]', '{"k": "not an int"}'):
        path.write_text(content)
        with pytest.raises(RuntimeError):
            SignedMatters(path)
