"""``appliance run`` with ``[chain] kind = "fisco-bcos-3"`` (appliance/service.py) against
``appliance-hil fisco-node`` subprocesses on loopback.

- the node task syncs the FISCO chain from the configured anchor (height 10) to the double's
  tip: ``/api/health`` shows the height past the anchor, and ``appliance node status
  --chain-kind fisco-bcos-3`` on the daemon's store gives the tip hash the double's chain has
  (computed here from the same seed);
- beside the honest node, one answering garbage is banned (audited ``peer_ban``);
- authorizations and license lookups are not offered: ``/api/health`` says why, the kiosk's
  view is the "not available" screen in Chinese and English (checked in Chromium too), UI
  events are refused, the PAD's verify answers 503 ``not_available``;
- an anchor of another group than ``chain.group`` stops the node task naming both.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from uiclient import UiClient

from appliance import audit, config
from appliance.service import Appliance
from hil.fisco_node import FiscoChain, FiscoNodeProcess

REPO = Path(__file__).resolve().parent.parent
BLOCKS = 40
ANCHOR_AT = 10
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def nodes() -> Iterator[tuple[Any, Any]]:
    with FiscoNodeProcess(blocks=BLOCKS) as honest, \
            FiscoNodeProcess(blocks=BLOCKS, misbehave="garbage") as liar:
        yield honest, liar


def anchor_file(path: Path, height: int = ANCHOR_AT, group: str = "group0") -> Path:
    doc = FiscoChain(BLOCKS, 4, seed="0").anchor(height)  # the double's chain, made here
    doc["group"] = group
    path.write_text(json.dumps(doc))
    return path


def start(cfg: Path) -> tuple[subprocess.Popen[str], str, list[str]]:
    env = dict(os.environ)
    env.pop("APPLIANCE_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--config",
                             str(cfg), "--port", "0"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=REPO)
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"UI on (http://\S+)", line)
        if m:
            return proc, m.group(1), lines
    proc.kill()
    raise AssertionError("no UI line:\n" + "".join(lines))


def kiosk_text_in_chromium(launch_url: str, profile: Path) -> tuple[str, str]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = ctx.new_page()
            page.goto(launch_url)
            # (the page's CSP forbids eval: wait with a locator, not a JS predicate)
            page.locator("#b-title", has_text="not available").wait_for(timeout=30_000)
            return page.inner_text("#b-title"), page.inner_text("#b-message")
        finally:
            ctx.close()


def test_daemon_syncs_a_fisco_chain_and_offers_no_authorizations(nodes, tmp_path) -> None:
    honest, liar = nodes
    state = tmp_path / "state"
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'state_dir = "{state}"\n'
                   f'[chain]\nkind = "fisco-bcos-3"\nrpc = ["{liar.url}", "{honest.url}"]\n'
                   f'group = "group0"\n'
                   f'[node]\ntrust = "{anchor_file(tmp_path / "anchor.json")}"\n'
                   '[hsm]\ndevice = "/nonexistent/gmcrypto0"\n')
    proc, url, _ = start(cfg)
    heights = []
    try:
        ui = UiClient.from_state(url, state)
        deadline = time.monotonic() + 90
        while True:
            h = ui.get("/api/health")
            heights.append(h["chain"]["height"])
            if h["chain"]["height"] == BLOCKS - 1 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert h["chain"] == {"kind": "fisco-bcos-3", "height": BLOCKS - 1,
                              "anchor_height": ANCHOR_AT, "group": "group0",
                              "rpc": [liar.url, honest.url]}, h
        seen = [x for x in heights if x is not None]
        assert seen == sorted(seen) and all(x >= ANCHOR_AT for x in seen)
        assert h["parts"]["node"] == "ready" and h["tasks"]["node"]["restarts"] == 0
        # what the daemon stored is the double's chain: its status, read from the store
        st = subprocess.run([sys.executable, "-m", "appliance.cli", "node", "status",
                             "--chain-kind", "fisco-bcos-3", "--state", str(state)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
        doc = json.loads(st.stdout)
        chain = FiscoChain(BLOCKS, 4, seed="0")
        assert (doc["height"], doc["anchor_height"]) == (BLOCKS - 1, ANCHOR_AT)
        assert doc["tip_hash"] == "0x" + chain.hashes[-1].hex()
        # authorizations: not available, and why
        assert h["parts"]["kiosk"] == "unavailable" and not h["ready"]
        assert h["authorizations"]["available"] is False
        assert "license.authorize" in h["authorizations"]["reason"]
        assert "evidence.deposit" in h["authorizations"]["reason"]
        view = ui.get("/api/state")["view"]
        assert view["screen"] == "blocked" and view["error"]["code"] == "chain_unsupported"
        e = view["error"]
        assert "FISCO BCOS" in e["message_zh"] and "FISCO BCOS" in e["message_en"]
        assert "授权" in e["title_zh"] and "not available" in e["title_en"]
        assert ui.post("/api/event", b'{"type": "start"}', "application/json") == \
            (200, {"ok": False})
        # a kiosk has no PAD routes; a PAD on this chain refuses lookups, saying why
        body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.pdf\"\r\n"
                b"Content-Type: application/octet-stream\r\n\r\n%PDF-1.4 license\r\n--XyZ--\r\n")
        with pytest.raises(urllib.error.HTTPError) as missing:
            ui.open("/api/pad/verify", body, {"Content-Type": "multipart/form-data; boundary=XyZ"})
        assert missing.value.code == 404
        from appliance.node.client import TxError
        from appliance.service import _NoLookups

        with pytest.raises(TxError) as refused:
            asyncio.run(_NoLookups(None).lookup_detailed(bytes(32)))
        assert refused.value.code == "not_available"
        assert "evidence.deposit" in refused.value.message
        if os.path.exists(CHROMIUM) or os.environ.get("CI"):
            launch = f"{url}/?k={(state / 'ui-secret').read_text().strip()}"
            title, message = kiosk_text_in_chromium(launch, tmp_path / "chromium")
            assert "本终端暂不能办理授权" in title and "not available" in title
            assert "FISCO BCOS 3.x" in message and "window" in message
        # the liar was banned, and that is in the audit log; the honest node is not
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            bans = [e for e in audit.tail(state / "audit", 50) if e.kind == "peer_ban"]
            if bans:
                break
            time.sleep(0.1)
        assert bans and {b.fields["peer"] for b in bans} == {liar.url}
        assert bans[0].fields["reason"].startswith("malformed")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out)["restarts"]["node"] == 0
    assert "Traceback" not in err
    report = audit.verify(state / "audit")
    assert report.ok, report.to_json()
    entries = audit.tail(state / "audit", 100)
    assert entries[0].kind == "service_start" and entries[0].fields["chain"] == "fisco-bcos-3"
    assert entries[-1].kind == "service_stop"
    peers = json.loads((state / "node" / "peers.json").read_text())["peers"]
    assert {p["url"]: p["state"] for p in peers}[honest.url] == "ok"


def test_an_anchor_of_another_group_stops_the_node_task(tmp_path) -> None:
    anchor = anchor_file(tmp_path / "anchor.json", group="group7")
    cfg = config.parse({"state_dir": str(tmp_path / "state"),
                        "chain": {"kind": "fisco-bcos-3", "rpc": ["http://127.0.0.1:9"]},
                        "node": {"trust": str(anchor)}}, env={})
    app = Appliance(cfg)
    with pytest.raises(RuntimeError) as e:
        asyncio.run(app._fisco_node_task())
    assert "'group0'" in str(e.value) and "'group7'" in str(e.value)
    assert not (tmp_path / "state" / "node" / "headers.sqlite").exists()


def test_a_native_anchor_is_not_taken_for_a_fisco_one(tmp_path) -> None:
    from hil import chain as hc

    hc.generate(tmp_path / "chain", hc.ChainParams(), 2, 0)
    cfg = config.parse({"state_dir": str(tmp_path / "state"),
                        "chain": {"kind": "fisco-bcos-3", "rpc": ["http://127.0.0.1:9"]},
                        "node": {"trust": str(tmp_path / "chain" / "trust.cbor")}}, env={})
    with pytest.raises(RuntimeError, match="is not a FISCO trust anchor"):
        asyncio.run(Appliance(cfg)._fisco_node_task())
    # and the default anchor path of a FISCO terminal is trust.json
    assert cfg.trust_path.name == "trust.cbor"  # node.trust given
    dflt = config.parse({"chain": {"kind": "fisco-bcos-3", "rpc": ["http://a"]}}, env={})
    assert dflt.trust_path == dflt.state_dir / "trust.json"
