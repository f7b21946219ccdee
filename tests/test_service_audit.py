"""The daemon and its audit log (appliance/service.py ``start_audit``, docs/audit.md):

- a torn tail (a power cut mid-append) is repaired when ``appliance run`` starts: a
  ``repaired`` entry with the byte count and the SM3 of the bytes cut (never the bytes), a
  warning line, ``/api/health`` saying so, and the whole log verifying after the run;
- a log that fails for any other reason (an entry edited: tampering) is not repaired and not
  appended to, byte for byte, and ``/api/health`` says why, loudly;
- the log's directory removed under a running daemon (a process, over HTTP; and in process
  for the runner's appends): appends are refused (``AuditGone``), no new chain starts at
  seq 0, and ``/api/health`` says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from uiclient import UiClient

from appliance import audit, config
from appliance.audit import AuditGone, AuditLog
from appliance.gm import sm3
from appliance.service import Appliance, _AuditSink, start_audit

REPO = Path(__file__).resolve().parent.parent
TORN = b'{"fields":{"device":"/dev/ttyACM-half-writ'


def daemon(state: Path, tmp_path: Path, **env_extra: str
           ) -> tuple[subprocess.Popen[str], str]:
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'state_dir = "{state}"\n[node]\ndiscover = false\n'
                   '[hsm]\ndevice = "/nonexistent/gmcrypto0"\n')
    env = dict(os.environ, **env_extra)
    env.pop("APPLIANCE_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--config",
                             str(cfg), "--port", "0"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=REPO)
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"UI on (http://\S+)", line)
        if m:
            proc.early_stderr = "".join(lines)  # type: ignore[attr-defined]
            return proc, m.group(1)
    proc.kill()
    raise AssertionError("no UI line:\n" + "".join(lines))


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out, proc.early_stderr + err  # type: ignore[attr-defined]


def health(url: str, state: Path) -> dict[str, Any]:
    return UiClient.from_state(url, state).get("/api/health")


def seed_log(path: Path, n: int = 4) -> AuditLog:
    log = AuditLog(path)
    for i in range(n):
        log.append("login", device=f"/dev/gmcrypto{i}")
    return log


def segment_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.glob("*.jsonl"))}


def test_daemon_repairs_a_torn_tail_at_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    log_dir = state / "audit"
    seed_log(log_dir)
    (newest,) = sorted(log_dir.glob("*.jsonl"))
    sound = newest.read_bytes()
    newest.write_bytes(sound + TORN)  # the power went while the fifth entry was written
    assert audit.verify(log_dir).error == "torn_tail"
    proc, url = daemon(state, tmp_path)
    try:
        h = health(url, state)  # the repair happens before the UI serves
    finally:
        out, err = stop(proc)
    assert h["audit"]["ok"] and h["audit"]["state"] == "repaired", h["audit"]
    repaired = h["audit"]["repaired"]
    assert repaired["truncated_bytes"] == len(TORN)
    assert repaired["truncated_sm3"] == sm3.digest(TORN).hex()
    assert repaired["segment"] == newest.name and repaired["seq"] == 4
    warn = [x for x in err.splitlines() if x.startswith("WARNING appliance.service: audit log")]
    assert len(warn) == 1 and f"{len(TORN)} bytes" in warn[0] and "repaired" in warn[0], err
    report = audit.verify(log_dir)
    assert report.ok, report.to_json()
    entries = audit.tail(log_dir, 100)
    assert [e.kind for e in entries[:6]] == ["login"] * 4 + ["repaired", "service_start"]
    assert entries[-1].kind == "service_stop"
    assert entries[4].fields == {"segment": newest.name, "truncated_bytes": len(TORN),
                                 "truncated_sm3": sm3.digest(TORN).hex(),
                                 "operator": "appliance run", "automatic": True}
    assert newest.read_bytes().startswith(sound)
    # the cut bytes are named by their hash only: they are nowhere in the log
    assert all(TORN not in data for data in segment_bytes(log_dir).values())
    assert "Traceback" not in err


def _tamper(log_dir: Path) -> None:
    """Change one field of entry 1 and write the line back in canonical form."""
    (seg,) = sorted(log_dir.glob("*.jsonl"))
    lines = seg.read_bytes().splitlines()
    entry = json.loads(lines[1])
    entry["fields"]["device"] = "/dev/other"
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    seg.write_bytes(b"".join(x + b"\n" for x in lines))


def test_daemon_never_repairs_or_appends_to_a_tampered_log(tmp_path: Path) -> None:
    state = tmp_path / "state"
    log_dir = state / "audit"
    seed_log(log_dir)
    _tamper(log_dir)
    before = segment_bytes(log_dir)
    proc, url = daemon(state, tmp_path)
    try:
        h = health(url, state)
    finally:
        out, err = stop(proc)
    a = h["audit"]
    assert not a["ok"] and a["state"] == "failed" and a["error"] == "hash", a
    assert "index 1" in a["detail"] and "does not verify" in a["detail"]
    assert "AUDIT LOG FAILED VERIFICATION AT START" in err
    # nothing appended (no service_start, no service_stop), nothing cut: byte for byte
    assert segment_bytes(log_dir) == before
    assert "audit log append failed (service_stop)" in err
    assert json.loads(out)["ok"]  # the daemon itself ran and stopped normally


def test_a_torn_tail_on_a_tampered_log_is_not_repaired(tmp_path: Path) -> None:
    log_dir = tmp_path / "audit"
    seed_log(log_dir)
    _tamper(log_dir)
    (seg,) = sorted(log_dir.glob("*.jsonl"))
    seg.write_bytes(seg.read_bytes() + TORN)
    before = segment_bytes(log_dir)
    log, start = start_audit(log_dir, retention_days=190)
    assert start.state == "failed" and start.error == "hash" and start.repaired is None
    assert segment_bytes(log_dir) == before  # the torn bytes stay: evidence, untouched
    with pytest.raises(audit.AuditCorrupt):
        log.append("service_start")
    assert segment_bytes(log_dir) == before


def test_start_audit_on_a_sound_and_on_an_absent_log(tmp_path: Path) -> None:
    seed_log(tmp_path / "a")
    log, start = start_audit(tmp_path / "a", retention_days=190)
    assert start.state == "ok" and log.append("service_start").seq == 4
    log, start = start_audit(tmp_path / "b", retention_days=190)
    assert start.state == "ok" and log.append("service_start").seq == 0


def test_daemon_reports_an_audit_directory_removed_under_it(tmp_path: Path) -> None:
    cfg = config.parse({"state_dir": str(tmp_path / "state")}, env={})
    app = Appliance(cfg)
    app._open_audit()
    app.audit_event("service_start", sim=False)
    sink = _AuditSink(app)  # what the flow runner appends through
    sink.append("sign", session="00", tx_id="11", purpose="license.authorize")
    assert app.health()["audit"]["ok"]
    shutil.rmtree(cfg.audit_path)
    app.audit_event("alarm", detail="x")
    h = app.health()["audit"]
    assert not h["ok"] and h["state"] == "failed" and h["error"] == "gone", h
    assert "gone" in h["detail"] and "seq 1" in h["detail"]
    with pytest.raises(AuditGone):
        sink.append("sign", session="00", tx_id="22", purpose="license.authorize")
    assert not cfg.audit_path.exists()  # no new chain at seq 0


def test_health_shows_a_failed_append_until_one_succeeds(tmp_path: Path) -> None:
    cfg = config.parse({"state_dir": str(tmp_path / "state")}, env={})
    app = Appliance(cfg)
    app._open_audit()
    app.audit_event("service_start", sim=False)
    (seg,) = sorted(cfg.audit_path.glob("*.jsonl"))
    with open(seg, "ab") as f:  # another process crashed mid-append
        f.write(TORN)
    app.audit_event("login", device="d")
    h = app.health()["audit"]
    assert not h["ok"] and h["error"] == "append_failed" and "AuditTornTail" in h["detail"]
    audit.repair(cfg.audit_path, operator="tech")
    app.audit_event("login", device="d")
    assert app.health()["audit"]["ok"]


def test_running_daemon_reports_its_audit_directory_removed(tmp_path: Path) -> None:
    # a PIN and no module: every start of the hsm task fails and is audited (login_failed),
    # so the running daemon keeps appending
    state = tmp_path / "state"
    log_dir = state / "audit"
    proc, url = daemon(state, tmp_path, APPLIANCE_HSM_PIN="123456")
    try:
        deadline = time.monotonic() + 30
        while not any(e.kind == "login_failed" for e in audit.tail(log_dir, 20)):
            assert time.monotonic() < deadline, "no login_failed entry"
            time.sleep(0.1)
        assert health(url, state)["audit"]["ok"]
        shutil.rmtree(log_dir)
        deadline = time.monotonic() + 30
        while (h := health(url, state)["audit"])["ok"]:
            assert time.monotonic() < deadline, h
            time.sleep(0.1)
        assert h["state"] == "failed" and h["error"] == "gone", h
        assert not log_dir.exists()  # not recreated: no new chain at seq 0
    finally:
        out, err = stop(proc)
    assert not log_dir.exists()
    assert "Traceback" not in err
    assert "audit log append failed (service_stop)" in err
