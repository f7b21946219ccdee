"""``appliance audit verify|tail|repair`` and ``appliance node clear-alarm``, run as the
installed command line would be (a subprocess of ``python -m appliance.cli``): one JSON
object on stdout, a message on stderr, the documented exit statuses, no stack traces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.audit import AuditLog, verify
from appliance.gm import sm2, sm3
from appliance.node.store import HeaderStore

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


def cli(*args: str, state: Path | None = None) -> tuple[int, dict, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("APPLIANCE_STATE", None)
    if state is not None:
        env["APPLIANCE_STATE"] = str(state)
    out = subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True,
                         text=True, env=env, timeout=60, cwd=REPO)
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout
    return out.returncode, json.loads(lines[0]), out.stderr


def filled(path: Path, n: int = 12) -> AuditLog:
    log = AuditLog(path)
    for i in range(n):
        log.append("login", user=f"clerk{i}", ok=True)
    return log


def newest(path: Path) -> Path:
    return sorted(path.glob("*.jsonl"))[-1]


def test_verify_ok_by_log_and_by_state(tmp_path):
    filled(tmp_path / "audit")
    code, doc, _ = cli("audit", "verify", "--log", str(tmp_path / "audit"))
    assert code == 0 and doc["ok"] and doc["entries"] == 12 and doc["error"] is None
    code, doc2, _ = cli("audit", "verify", "--state", str(tmp_path))
    assert code == 0 and doc2["head"] == doc["head"]
    code, doc3, _ = cli("audit", "verify", state=tmp_path)  # $APPLIANCE_STATE
    assert code == 0 and doc3["head"] == doc["head"]


def test_verify_reports_tampering_with_its_index(tmp_path):
    log_dir = tmp_path / "audit"
    filled(log_dir)
    seg = newest(log_dir)
    lines = seg.read_bytes().splitlines()
    lines[5] = lines[5].replace(b"clerk5", b"clerk9")
    seg.write_bytes(b"\n".join(lines) + b"\n")
    code, doc, err = cli("audit", "verify", "--log", str(log_dir))
    assert code == 1 and not doc["ok"]
    assert (doc["error"], doc["index"], doc["line"]) == ("hash", 5, 6)
    assert "hash at index 5" in err


def test_torn_tail_verify_repair_verify(tmp_path):
    log_dir = tmp_path / "audit"
    filled(log_dir)
    seg = newest(log_dir)
    seg.write_bytes(seg.read_bytes() + b'{"fields":{"us')
    code, doc, err = cli("audit", "verify", "--log", str(log_dir))
    assert code == 3 and doc["error"] == "torn_tail" and doc["torn_bytes"] == 14
    assert "appliance audit repair" in err
    code, doc, _ = cli("audit", "repair", "--operator", "tech 1", "--log", str(log_dir))
    assert code == 0 and doc["repaired"] and doc["truncated_bytes"] == 14
    assert doc["entry"]["kind"] == "repaired" and doc["entry"]["fields"]["operator"] == "tech 1"
    digest = sm3.digest(b'{"fields":{"us').hex()  # what was cut, by its hash only
    assert doc["truncated_sm3"] == doc["entry"]["fields"]["truncated_sm3"] == digest
    code, doc, _ = cli("audit", "verify", "--log", str(log_dir))
    assert code == 0 and doc["entries"] == 13
    code, doc, _ = cli("audit", "repair", "--operator", "tech 1", "--log", str(log_dir))
    assert code == 0 and not doc["repaired"]


def test_repair_refuses_tampering(tmp_path):
    log_dir = tmp_path / "audit"
    filled(log_dir)
    seg = newest(log_dir)
    data = seg.read_bytes().replace(b"clerk3", b"clerkX") + b"{torn"
    seg.write_bytes(data)
    code, doc, _ = cli("audit", "repair", "--operator", "x", "--log", str(log_dir))
    assert code == 1 and doc["error"] == "corrupt"
    assert seg.read_bytes() == data


def test_tail(tmp_path):
    log = filled(tmp_path / "audit")
    code, doc, _ = cli("audit", "tail", "-n", "3", "--state", str(tmp_path))
    assert code == 0 and [e["seq"] for e in doc["entries"]] == [9, 10, 11]
    assert doc["head"] == log.tail(1)[0].hash.hex() and doc["head_seq"] == 11


def test_usage_errors(tmp_path):
    code, doc, err = cli("audit", "verify", "--log", str(tmp_path / "missing"))
    assert code == 2 and doc["error"] == "no_log" and "no audit log" in err
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "audit", "tail", "-n", "0"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr


# -- checkpoints and anchors -------------------------------------------------------------------


class DeviceKey:
    """SM2 key with a signature counter (the module's own is used in
    tests/test_audit_checkpoint.py)."""

    def __init__(self) -> None:
        self._private, self.public_key = sm2.generate_keypair()
        self.last_counter = 0

    def sign(self, message: bytes) -> bytes:
        self.last_counter += 1
        return sm2.sign(self._private, message)


def signed(path: Path, n: int = 25) -> DeviceKey:
    key = DeviceKey()
    log = AuditLog(path, signer=key, checkpoint_every=10)
    for i in range(n):
        log.append("login", user=f"clerk{i}")
    return key


def test_verify_checks_the_checkpoints_with_the_public_key(tmp_path):
    log_dir = tmp_path / "audit"
    key = signed(log_dir)
    code, doc, err = cli("audit", "verify", "--log", str(log_dir), "--public-key",
                         key.public_key.hex(), "--require-checkpoints")
    assert code == 0 and doc["ok"] and doc["public_key_source"] == "given"
    assert (doc["checkpoints"], doc["signatures"], doc["unanchored"]) == (2, "verified", 5)
    assert "note: 5 entries after the last checkpoint are not yet anchored" in err
    code, doc, err = cli("audit", "verify", "--log", str(log_dir), "--public-key",
                         DeviceKey().public_key.hex())
    assert code == 1 and doc["error"] == "checkpoint_key" and doc["index"] == 10
    code, doc, _ = cli("audit", "verify", "--log", str(log_dir), "--public-key",
                       DeviceKey().public_key.hex(), "--public-key", key.public_key.hex())
    assert code == 0 and doc["keys"] == [sm3.digest(key.public_key).hex()]
    # without --public-key: the log's own copy of the key, said to be only that
    code, doc, err = cli("audit", "verify", "--state", str(tmp_path))
    assert code == 0 and doc["public_key_source"] == "log_file"
    assert doc["signatures"] == "verified" and "--public-key" in err


def test_verify_requires_checkpoints_when_asked(tmp_path):
    log_dir = tmp_path / "audit"
    filled(log_dir)  # no signer: no checkpoints
    code, doc, err = cli("audit", "verify", "--log", str(log_dir))
    assert code == 0 and doc["checkpoints"] == 0 and doc["unanchored"] == 12
    assert "no checkpoint" in err
    code, doc, _ = cli("audit", "verify", "--log", str(log_dir), "--require-checkpoints")
    assert code == 1 and doc["error"] == "checkpoint_key"  # no key to check them with
    code, doc, _ = cli("audit", "verify", "--log", str(log_dir), "--require-checkpoints",
                       "--public-key", DeviceKey().public_key.hex())
    assert code == 1 and doc["error"] == "checkpoint_missing"


@pytest.mark.parametrize("key", ["zz", "04" + "00" * 64, "00" * 65, "04" * 10])
def test_verify_refuses_a_bad_public_key(tmp_path, key):
    filled(tmp_path / "audit")
    code, doc, err = cli("audit", "verify", "--log", str(tmp_path / "audit"),
                         "--public-key", key)
    assert code == 2 and doc["error"] == "bad_key" and "--public-key" in err


def test_verify_on_chain_needs_a_trust_anchor(tmp_path):
    """--node runs a light node of its own: without a trust anchor it says so plainly. (The
    heads found on chain and verified: tests/kiosk/test_runner.py, against the doubles.)"""
    filled(tmp_path / "audit")
    code, doc, err = cli("audit", "verify", "--log", str(tmp_path / "audit"), "--node",
                         "http://127.0.0.1:1", "--trust", str(tmp_path / "none.cbor"))
    assert code == 2 and doc["error"] == "no_trust" and "--trust" in err


def test_a_whole_entry_without_its_newline_is_never_repaired(tmp_path):
    log_dir = tmp_path / "audit"
    filled(log_dir)
    seg = newest(log_dir)
    data = seg.read_bytes()[:-1]
    seg.write_bytes(data)
    code, doc, err = cli("audit", "verify", "--log", str(log_dir))
    assert code == 1 and doc["error"] == "bad_tail" and doc["index"] == 11
    code, doc, _ = cli("audit", "repair", "--operator", "x", "--log", str(log_dir))
    assert code == 1 and doc["error"] == "corrupt" and seg.read_bytes() == data


# -- appliance node clear-alarm ---------------------------------------------------------------


def store_with_alarm(state: Path) -> None:
    (state / "node").mkdir(parents=True)
    store = HeaderStore.open(state / "node" / "headers.sqlite")
    try:
        store.raise_alarm("equivocation", "two commits for height 7", at_ms=1_700_000_000_000)
        store.raise_alarm("other", "kept", at_ms=1_700_000_000_001)
    finally:
        store.close()


def alarms(state: Path) -> tuple[list, list]:
    store = HeaderStore.open(state / "node" / "headers.sqlite")
    try:
        return store.alarms(), store.alarm_history()
    finally:
        store.close()


def test_clear_alarm_clears_and_audits(tmp_path):
    store_with_alarm(tmp_path)
    filled(tmp_path / "audit", 2)
    code, doc, _ = cli("node", "clear-alarm", "equivocation", "--operator", "Wang Wu",
                       "--state", str(tmp_path))
    assert code == 0 and doc["ok"] and doc["cleared"] == 1 and doc["audit_seq"] == 2
    active, history = alarms(tmp_path)
    assert [a.kind for a in active] == ["other"]
    cleared = [a for a in history if a.kind == "equivocation"][0]
    assert cleared.cleared_by == "Wang Wu" and cleared.cleared_at_ms == doc["cleared_at_ms"]
    report = verify(tmp_path / "audit")
    assert report.ok and report.kinds.get("alarm_cleared") == 1
    entry = AuditLog(tmp_path / "audit").tail(1)[0]
    assert entry.kind == "alarm_cleared"
    assert entry.fields == {"alarm": "equivocation", "operator": "Wang Wu",
                            "alarm_ids": [cleared.id], "cleared": 1}
    # nothing left to clear: exit 1, no audit entry
    code, doc, err = cli("node", "clear-alarm", "equivocation", "--operator", "Wang Wu",
                         "--state", str(tmp_path))
    assert code == 1 and doc["error"] == "no_alarm" and "no active alarm" in err
    assert verify(tmp_path / "audit").entries == 3


def test_clear_alarm_creates_the_audit_log(tmp_path):
    store_with_alarm(tmp_path)
    code, doc, _ = cli("node", "clear-alarm", "other", "--operator", "Li", state=tmp_path)
    assert code == 0 and doc["audit_seq"] == 0
    assert verify(tmp_path / "audit").ok


def test_clear_alarm_refused_while_the_audit_log_is_torn(tmp_path):
    store_with_alarm(tmp_path)
    filled(tmp_path / "audit", 3)
    seg = newest(tmp_path / "audit")
    seg.write_bytes(seg.read_bytes() + b'{"fie')
    code, doc, err = cli("node", "clear-alarm", "equivocation", "--operator", "Wang",
                         "--state", str(tmp_path))
    assert code == 3 and doc["error"] == "audit" and "repair" in err
    assert {a.kind for a in alarms(tmp_path)[0]} == {"equivocation", "other"}  # intact


def test_clear_alarm_without_a_store(tmp_path):
    code, doc, _ = cli("node", "clear-alarm", "equivocation", "--operator", "Wang",
                       "--state", str(tmp_path))
    assert code == 2 and doc["error"] == "usage"
