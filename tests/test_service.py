"""appliance/service.py: restart policy and supervisor (no I/O), sd_notify over a real unix
datagram socket, one-line logs, and ``appliance run`` as a process (READY, health, SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from uiclient import UiClient

from appliance import service
from appliance.service import Notifier, OneLineFormatter, RestartPolicy, Supervisor

REPO = Path(__file__).resolve().parent.parent


# -- restart policy (sans-I/O) -----------------------------------------------------------------


def test_backoff_doubles_to_a_cap_and_resets_after_a_healthy_run() -> None:
    p = RestartPolicy(base_s=0.5, max_s=4.0, healthy_after_s=60.0)
    delays = []
    now = 0.0
    for _ in range(6):
        p.started(now)
        now += 1.0  # crashes after a second
        delays.append(p.ended(now))
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    p.started(now)
    now += 61.0  # ran long enough: a fresh start
    assert p.ended(now) == 0.5
    p.started(now)
    assert p.ended(now + 0.1) == 1.0


# -- supervisor (plain coroutines, no I/O) ------------------------------------------------------


def test_supervisor_restarts_a_crashing_task_and_logs_one_line(
        caplog: pytest.LogCaptureFixture) -> None:
    runs = {"flaky": 0, "steady": 0}

    async def main() -> Supervisor:
        stop = asyncio.Event()

        async def flaky() -> None:
            runs["flaky"] += 1
            if runs["flaky"] <= 3:
                raise ValueError(f"boom {runs['flaky']}\nsecond line")
            stop.set()

        async def steady() -> None:
            runs["steady"] += 1
            await asyncio.Event().wait()

        crashes: list[str] = []
        sup = Supervisor(policy=lambda: RestartPolicy(base_s=0.001, max_s=0.01),
                         on_crash=lambda name, err: crashes.append(f"{name}:{err}"))
        sup.add("flaky", flaky)
        sup.add("steady", steady)
        await asyncio.wait_for(sup.run(stop), 10)
        assert crashes[:3] == ["flaky:boom 1\nsecond line", "flaky:boom 2\nsecond line",
                               "flaky:boom 3\nsecond line"]
        return sup

    with caplog.at_level(logging.INFO, logger="appliance.service"):
        sup = asyncio.run(main())
    assert runs == {"flaky": 4, "steady": 1}  # the healthy task was never restarted
    st = sup.status()
    assert st["flaky"]["restarts"] == 3 and st["steady"]["restarts"] == 0
    assert all(r["state"] == "stopped" for r in st.values())
    lines = [r.getMessage() for r in caplog.records if "crashed" in r.getMessage()]
    assert len(lines) == 3
    assert all("\n" not in line for line in lines)
    assert "task flaky crashed: ValueError: boom 1 second line; restart 1 in" in lines[0]


def test_supervisor_restarts_a_task_that_returns() -> None:
    count = 0

    async def main() -> None:
        stop = asyncio.Event()

        async def quitter() -> None:
            nonlocal count
            count += 1
            if count == 3:
                stop.set()

        sup = Supervisor(policy=lambda: RestartPolicy(base_s=0.001))
        sup.add("q", quitter)
        await asyncio.wait_for(sup.run(stop), 10)
        assert sup.status()["q"]["last_error"] == "returned"

    asyncio.run(main())
    assert count == 3


def test_supervisor_stop_cancels_running_tasks() -> None:
    cancelled = []

    async def main() -> None:
        stop = asyncio.Event()

        async def forever() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        sup = Supervisor()
        sup.add("f", forever)
        task = asyncio.create_task(sup.run(stop))
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert cancelled == [True]


# -- sd_notify over a real socket ---------------------------------------------------------------


def _listener(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(10)
    return s, path


def test_notify_path_socket(tmp_path: Path) -> None:
    s, path = _listener(tmp_path)
    with s:
        n = Notifier({"NOTIFY_SOCKET": path})
        assert n.enabled and n.watchdog_s is None
        assert n.notify("READY=1\nSTATUS=ok")
        assert s.recv(4096) == b"READY=1\nSTATUS=ok"
        n.close()


def test_notify_abstract_socket() -> None:
    name = f"appliance-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(b"\0" + name.encode())
        s.settimeout(10)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.notify("STOPPING=1")
        assert s.recv(4096) == b"STOPPING=1"
        n.close()


def test_notify_disabled_and_failing(tmp_path: Path) -> None:
    assert not Notifier({}).notify("READY=1")
    assert not Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert n.notify("READY=1") is False  # logged, never raised
    n.close()


def test_watchdog_pings_at_half_the_interval(tmp_path: Path) -> None:
    s, path = _listener(tmp_path)
    with s:
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000",
                      "WATCHDOG_PID": str(os.getpid())})
        assert n.watchdog_s == pytest.approx(0.1)

        async def main() -> None:
            task = asyncio.create_task(n.watchdog())
            await asyncio.sleep(0.35)
            task.cancel()

        asyncio.run(main())
        got = []
        s.settimeout(0.5)
        try:
            while True:
                got.append(s.recv(100))
        except TimeoutError:
            pass
        assert len(got) >= 2 and set(got) == {b"WATCHDOG=1"}
    # another process's watchdog, or none: no pings
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000",
                     "WATCHDOG_PID": "1"}).watchdog_s is None
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "0"}).watchdog_s is None
    for odd in ("²", "١٠٠", "２００"):  # str.isdigit() says yes, int() would not
        assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": odd}).watchdog_s is None


def test_one_line_formatter() -> None:
    fmt = OneLineFormatter("%(levelname)s %(message)s")
    try:
        raise RuntimeError("a\nb")
    except RuntimeError:
        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "bad\nthing", (),
                                sys.exc_info())
    text = fmt.format(rec)
    assert "\n" not in text and "bad\\nthing" in text and "RuntimeError: a\\nb" in text


def test_read_pin(tmp_path: Path) -> None:
    from appliance import config

    cfg = config.parse({}, env={})
    assert service.read_pin(cfg, env={"APPLIANCE_HSM_PIN": "654321"}) == "654321"
    assert service.read_pin(cfg, env={}) is None
    f = tmp_path / "pin"
    f.write_text("112233\n")
    cfg = config.parse({"hsm": {"pin_file": str(f)}}, env={})
    assert service.read_pin(cfg, env={"APPLIANCE_HSM_PIN": "x"}) == "112233"


# -- the daemon as a process ---------------------------------------------------------------------


def _start_daemon(tmp_path: Path, *extra: str, env_extra: dict[str, str] | None = None
                  ) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, **(env_extra or {}))
    env.pop("APPLIANCE_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", *extra],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"UI on (http://\S+)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise AssertionError("no UI line:\n" + "".join(lines))


def test_run_without_trust_anchor_serves_ui_restarts_node_and_stops_on_sigterm(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'state_dir = "{state}"\n[node]\ndiscover = false\n'
                   '[hsm]\ndevice = "/nonexistent/gmcrypto0"\n[log]\nlevel = "info"\n')
    sock, path = _listener(tmp_path)
    with sock:
        proc, url = _start_daemon(tmp_path, "--config", str(cfg), "--port", "0",
                                  env_extra={"NOTIFY_SOCKET": path,
                                             "WATCHDOG_USEC": "2000000"})
        try:
            assert sock.recv(4096).startswith(b"READY=1")
            assert url.startswith("http://127.0.0.1:")
            ui = UiClient.from_state(url, state)
            deadline = time.monotonic() + 30
            while True:  # the node task fails (no trust anchor) and is restarted
                health = ui.get("/api/health")
                if health["tasks"]["node"]["restarts"] >= 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert health["tasks"]["node"]["restarts"] >= 1
            assert "trust anchor" in health["tasks"]["node"]["last_error"]
            assert health["ready"] is False
            state_doc = ui.get("/api/state")
            assert state_doc["view"]["screen"] == "starting"
            seen = set()
            sock.settimeout(5)
            while b"WATCHDOG=1" not in seen:
                seen.add(sock.recv(4096))
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        summary = json.loads(out)  # one JSON object on stdout, as every command
        assert summary["ok"] and summary["reason"] == "stopped" and not summary["sim"]
        assert summary["restarts"]["node"] >= 1
        msgs = set()
        sock.settimeout(1)
        try:
            while True:
                msgs.add(sock.recv(4096))
        except TimeoutError:
            pass
        assert b"STOPPING=1" in msgs
    assert "Traceback" not in err
    crash = [line for line in err.splitlines() if "task node crashed" in line]
    assert crash and "restart 1 in" in crash[0]
    # the audit trail of the run, chained and verified by appliance.audit
    from appliance import audit

    report = audit.verify(state / "audit")
    assert report.ok, report.to_json()
    kinds = [e.kind for e in audit.tail(state / "audit", 10)]
    assert kinds[0] == "service_start" and kinds[-1] == "service_stop"


def test_run_refuses_a_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[kiosk]\nlisten = "0.0.0.0:8080"\n')
    r = subprocess.run([sys.executable, "-m", "appliance.cli", "run", "--config", str(cfg)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2
    assert "kiosk.listen" in r.stderr and "loopback" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "appliance.cli", "run", "--config",
                        str(tmp_path / "missing.toml")], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 2 and "not found" in r.stderr


def test_run_moves_a_damaged_header_store_aside(tmp_path: Path) -> None:
    from hil import chain as hc

    hc.generate(tmp_path / "chain", hc.ChainParams(), 2, 0)
    state = tmp_path / "state"
    (state / "node").mkdir(parents=True)
    damaged = state / "node" / "headers.sqlite"
    damaged.write_bytes(b"this is not an SQLite database" * 100)
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'state_dir = "{state}"\n[node]\ndiscover = false\n'
                   f'trust = "{tmp_path / "chain" / "trust.cbor"}"\n'
                   '[hsm]\ndevice = "/nonexistent/gmcrypto0"\n')
    proc, url = _start_daemon(tmp_path, "--config", str(cfg), "--port", "0")
    try:
        ui = UiClient.from_state(url, state)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            health = ui.get("/api/health")
            if health["tasks"]["node"]["restarts"] >= 1:
                break
            time.sleep(0.1)
        assert "damaged" in health["tasks"]["node"]["last_error"], health
        aside = list((state / "node").glob("headers.sqlite.corrupt-*"))
        assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
        deadline = time.monotonic() + 30
        while not damaged.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        from appliance.node.store import HeaderStore

        HeaderStore.open(damaged).close()  # a fresh, valid store took its place
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_run_with_a_module_on_its_factory_pin_says_what_to_do_once(tmp_path: Path) -> None:
    """The module would refuse every signature (PIN_DEFAULT): the hsm task logs one plain
    line saying what to do, does not crash-loop, and frees the port for the technician."""
    from appliance.hsm.client import Client
    from hil.hsm_emulator import FACTORY_PIN, HsmEmulator

    with HsmEmulator(tmp_path / "gmcrypto0", tmp_path / "module.bin") as emu:
        cfg = tmp_path / "appliance.toml"
        cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n[node]\ndiscover = false\n'
                       f'[hsm]\ndevice = "{emu.port}"\n')
        proc, url = _start_daemon(tmp_path, "--config", str(cfg), "--port", "0",
                                  env_extra={"APPLIANCE_HSM_PIN": FACTORY_PIN})
        try:
            ui = UiClient.from_state(url, tmp_path / "state")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                health = ui.get("/api/health")
                if "factory PIN" in health["detail"].get("hsm", ""):
                    break
                time.sleep(0.2)
            assert "factory PIN" in health["detail"].get("hsm", ""), health
            assert health["parts"]["hsm"] != "ready"
            with Client(emu.port) as technician:  # the port is free for change-pin
                assert technician.info()["default_pin"] is True
            assert health["tasks"]["hsm"]["restarts"] == 0
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
    lines = [line for line in err.splitlines() if "factory PIN" in line]
    assert len(lines) == 1 and "appliance hsm change-pin" in lines[0], err
    assert "Traceback" not in err and "task hsm crashed" not in err
