"""``appliance run --sim`` as a process: the hall comes up (chain, two nodes found by mDNS,
two terminals each with its module and enrollment, deposits, identity double), the PAD's
verification API finds every deposited sample through its light node, with the issuing office
of each deposit's verified enrollment, each UI's key is on no process's command line or
environment and in no line of the log but the launch URLs, and Ctrl-C (SIGINT) stops it
cleanly and removes its files."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from conftest import Hall, start_hall, stop_hall

from appliance.gm import sm3


def _verify(hall: Hall, index: int) -> dict:
    boundary = "----simhalltest"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"sample\"\r\n\r\n"
            f"{index}\r\n--{boundary}--\r\n").encode()
    status, doc = hall.pad.post("/api/pad/verify", body,
                                f"multipart/form-data; boundary={boundary}")
    assert status == 200, doc
    return doc


def _discovered(peers_json: Path, urls: list[str], timeout: float = 60.0) -> dict[str, dict]:
    """The light node's peer table (``node/peers.json``) once each of ``urls`` has an mDNS
    source. Discovery runs beside the hall's readiness, not before it (the sim gives the node
    its peers directly too; right after the doubles register, RFC 6762 keeps them from
    answering again for a second): so wait for it, never race it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            table = {p["url"]: p for p in json.loads(peers_json.read_text())["peers"]}
        except (OSError, ValueError, KeyError):
            table = {}  # not written yet (it is replaced atomically)
        if all(any(s.startswith("mdns:") for s in table.get(u, {}).get("sources", ()))
               for u in urls):
            return table
        assert time.monotonic() < deadline, f"not discovered by mDNS: {urls}; table {table}"
        time.sleep(0.2)


def test_sim_hall_comes_up_serves_samples_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    hall = start_hall(tmp_path)
    try:
        health = hall.wait_ready()
        sim = health["sim"]
        assert sim["ready"] and len(sim["peers"]) == 2 and sim["samples"] == 4
        assert health["role"] == "kiosk" and sim["role"] == "kiosk"
        assert health["parts"] == {"node": "ready", "hsm": "ready", "kiosk": "ready"}
        pad_health = hall.pad.get("/api/health")
        assert pad_health["role"] == "pad" and pad_health["ready"]
        kiosk, pad = sim["terminals"]["kiosk"], sim["terminals"]["pad"]
        assert kiosk["enrollment"] and pad["enrollment"] and \
            kiosk["device_public_key"] != pad["device_public_key"]  # each its own module
        sim_dir = Path(sim["dir"])
        assert sim_dir.is_dir() and hall.tmp in sim_dir.parents
        samples = hall.pad.get("/api/pad/samples")["samples"]
        for s in samples:
            document = hall.pad.read(f"/api/pad/samples/{s['index']}")
            assert sm3.digest(document).hex() == s["digest"]
            got = _verify(hall, s["index"])
            assert got["found"] and got["digest"] == s["digest"]
            assert [h["tx_id"] for h in got["hits"]] == [s["tx_id"]]
            assert got["hits"][0]["issuer"] == s["issuer"]
            assert got["hits"][0]["kind"] == s["kind"]
            assert got["verified_height"] >= got["hits"][0]["height"]
            assert len(got["peers"]) == 2  # both nodes were asked
        # Both nodes are found by mDNS on loopback too, not only given by the sim: one peer
        # each, with both sources.
        for role in ("kiosk", "pad"):
            table = _discovered(sim_dir / f"{role}-state" / "node" / "peers.json",
                                sim["peers"])
            for url in sim["peers"]:
                assert "sim" in table[url]["sources"] and table[url]["state"] == "ok", table
        # each UI's key: in its daemon's 0600 file, on no process's command line or
        # environment (the hall's fixtures run as processes of their own)
        secrets = {}
        for role, url in (("kiosk", hall.kiosk_url), ("pad", hall.pad_url)):
            secrets[role] = parse_qs(urlsplit(url).query)["k"][0]
            secret_file = sim_dir / f"{role}-state" / "ui-secret"
            assert secret_file.read_text().strip() == secrets[role]
            assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert secrets["kiosk"] != secrets["pad"]  # one key per terminal
        looked = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            for what in ("cmdline", "environ"):
                with contextlib.suppress(OSError):
                    data = Path(f"/proc/{pid}/{what}").read_bytes()
                    looked += int(pid) == hall.proc.pid
                    for secret in secrets.values():
                        assert secret.encode() not in data, (pid, what)
        assert looked == 2  # the daemon's own were read
    finally:
        hall.proc.send_signal(signal.SIGINT)  # what Ctrl-C in `make demo` sends
        try:
            code = hall.proc.wait(timeout=30)
        finally:
            stop_hall(hall)  # only if SIGINT did not stop it
    assert code == 0, "".join(hall.log)
    assert not sim_dir.exists()
    assert "Traceback" not in "".join(hall.log)
    # each key is printed once, as its launch URL, and logged once as the launch URL
    for secret in secrets.values():
        with_key = [x for x in hall.log if secret in x]
        assert len(with_key) == 2, with_key
        assert with_key[0].startswith("appliance: simulated service hall")
        assert with_key[1].startswith("INFO appliance.service: UI launch URL")
