"""The UI in real headless Chromium (Debian's chromium, driven by Playwright) against the
simulated hall run as ``appliance run --sim``: a kiosk walk-through from the clerk's matter
to a receipt whose transaction is then verified independently, the PAD's license
verification, and that no image is left behind. Screenshots of every step go to the test's
tmp_path."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from conftest import Hall
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from appliance.gm import sm3
from appliance.node import objects as ob
from hil import sim_hall

TIMEOUT_MS = 90_000
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF87a", b"GIF89a", b"BM", b"II*\x00",
               b"MM\x00*", b"P5\n", b"P6\n")
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif",
             ".tiff"}


def shot(page: Any, shots: Path, name: str) -> None:
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / f"{name}.png"))


def active(page: Any, screen: str) -> None:
    page.wait_for_selector(f'[data-screen="{screen}"].active', timeout=TIMEOUT_MS)


def walk(hall: Hall, browser: Any, shots: Path) -> dict[str, Any]:
    """A clerk makes a matter on the PAD (signed in the PAD's module), a citizen reads it at
    the kiosk, sees what the kiosk verified (the office, each license's kind and issuing
    office) and authorizes it with their face."""
    samples = hall.pad.get("/api/pad/samples")["samples"]
    citizen = [s for s in samples if s["holder"] == "citizen"]
    pad = browser.new_page()
    pad.goto(hall.pad_url)
    pad.wait_for_function("() => document.querySelectorAll('#m-licenses input').length >= 4")
    assert pad.input_value("#m-citizen") == sim_hall.CITIZEN_ID
    pad.wait_for_function("() => document.getElementById('m-office').innerText.length > 0")
    assert sim_hall.OFFICE in pad.inner_text("#m-office")
    kiosk = browser.new_page()
    kiosk.goto(hall.kiosk_url)
    active(kiosk, "attract")
    shot(kiosk, shots, "01-attract")
    # elder mode: larger type, higher contrast, and back
    normal = kiosk.evaluate("getComputedStyle(document.body).fontSize")
    kiosk.click("#elder")
    assert kiosk.evaluate("document.body.classList.contains('elder')")
    assert float(kiosk.evaluate("getComputedStyle(document.body).fontSize")[:-2]) > \
        float(normal[:-2])
    assert kiosk.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(0, 0, 0)"
    shot(kiosk, shots, "01b-attract-elder")
    kiosk.click("#elder")
    # every touch target is at least 64 px
    small = kiosk.evaluate("""[...document.querySelectorAll('button')]
        .filter(b => b.offsetParent !== null)
        .filter(b => b.getBoundingClientRect().height < 64).map(b => b.id)""")
    assert small == []

    pad.click("#m-create")
    pad.wait_for_selector("#m-result:not([hidden])", timeout=TIMEOUT_MS)
    qr_text = pad.input_value("#m-text")
    assert qr_text.startswith("GOVAUTH1:")
    pad.wait_for_function("() => document.getElementById('m-qr').complete && "
                          "document.getElementById('m-qr').naturalWidth > 0")
    shot(pad, shots, "02-pad-matter")

    to_consent(kiosk, qr_text, shots)
    assert kiosk.inner_text("#c-office") == sim_hall.OFFICE
    licenses = kiosk.inner_text("#c-licenses")
    # the verified kinds, in both languages, and the issuing offices of their enrollments
    for s in citizen[:3]:
        assert s["issuer"] in licenses, licenses
    assert "居民身份证" in licenses and "Resident ID card" in licenses
    assert "户口簿" in licenses and "Household register" in licenses
    assert kiosk.inner_text("#c-use-until").strip()
    shot(kiosk, shots, "04-consent")

    kiosk.click("#consent")
    active(kiosk, "capture")
    kiosk.wait_for_function("() => document.querySelector('#challenge').innerText.length > 0")
    # live preview frames reach the canvas (drawn, never stored)
    kiosk.wait_for_function("""() => {
        const c = document.getElementById('preview');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let s = 0; for (let i = 0; i < d.length; i += 4096) s += d[i];
        return s > 0; }""", timeout=TIMEOUT_MS)
    shot(kiosk, shots, "05-capture")
    receipt = to_receipt(hall, kiosk, shots)
    assert "刷脸" in kiosk.inner_text("#r-way")
    receipt["licenses"] = [bytes.fromhex(s["tx_id"]) for s in citizen]
    receipt["qr_text"] = qr_text
    kiosk.click("#done")
    active(kiosk, "attract")
    kiosk.close()
    pad.close()
    return receipt


def to_consent(kiosk: Any, qr_text: str, shots: Path | None = None) -> None:
    """From attract to the consent screen: the simulated camera shows the PAD's last QR; a
    clerk may also paste it (whichever is first moves the kiosk on)."""
    active(kiosk, "attract")
    kiosk.click("#start")
    kiosk.wait_for_selector('[data-screen="scan"].active, [data-screen="checking"].active, '
                            '[data-screen="consent"].active', timeout=TIMEOUT_MS)
    if kiosk.is_visible('[data-screen="scan"].active'):
        if shots is not None:
            shot(kiosk, shots, "03-scan")
        try:
            kiosk.fill("#matter-text", qr_text, timeout=3000)
            kiosk.click('#matter-form button[type="submit"]', timeout=3000)
        except PlaywrightTimeout:
            pass
    kiosk.wait_for_selector('[data-screen="consent"].active, [data-screen="error"].active',
                            timeout=TIMEOUT_MS)
    if kiosk.is_visible('[data-screen="error"].active'):
        raise AssertionError("error screen: " + kiosk.inner_text('[data-screen="error"]'))


def to_receipt(hall: Hall, kiosk: Any, shots: Path) -> dict[str, Any]:
    kiosk.wait_for_selector('[data-screen="receipt"].active, [data-screen="error"].active',
                            timeout=TIMEOUT_MS)
    if kiosk.is_visible('[data-screen="error"].active'):
        raise AssertionError("error screen: " + kiosk.inner_text('[data-screen="error"]')
                             + "\n" + "".join(hall.log[-60:]))
    kiosk.wait_for_function("() => document.getElementById('r-qr').complete && "
                            "document.getElementById('r-qr').naturalWidth > 0")
    shot(kiosk, shots, "06-receipt")
    assert kiosk.inner_text("#r-office") == sim_hall.OFFICE
    return {"tx_id": kiosk.inner_text("#r-tx").strip(),
            "height": int(kiosk.inner_text("#r-height"))}


async def _inclusion(hall: Hall, tx_id: bytes, where: Path) -> Any:
    """The transaction fetched again by a fresh light node of our own, with its own store:
    the proof checked against headers it verified itself from the trust anchor."""
    from appliance.node.client import NodeSync
    from appliance.node.store import HeaderStore

    info = hall.health()["sim"]
    anchor = Path(info["trust"]).read_bytes()
    where.mkdir(parents=True, exist_ok=True)
    store = HeaderStore.open(where / "headers.sqlite")
    node = NodeSync(store, anchor)
    for url in info["peers"]:
        node.add_peer(url)
    stop = asyncio.Event()
    task = asyncio.create_task(node.run(stop_at_tip=False, stall_timeout_s=None, stop=stop))
    try:
        return await node.get_inclusion(tx_id, timeout_s=60), info
    finally:
        stop.set()
        await task
        store.close()


def test_kiosk_walk_through(hall: Hall, browser: Any, tmp_path: Path) -> None:
    receipt = walk(hall, browser, tmp_path / "screenshots")
    tx_id = bytes.fromhex(receipt["tx_id"])
    # Playwright's sync API holds this thread's event loop: our light node runs in another.
    with ThreadPoolExecutor(1) as pool:
        inc, info = pool.submit(asyncio.run, _inclusion(hall, tx_id, tmp_path / "verifier")
                                ).result(timeout=120)
    assert inc.tx_id == tx_id and inc.height == receipt["height"]
    body = inc.tx.body
    assert body.type == "license.authorize"
    data = ob.AuthorizeData.from_obj(body.data)
    assert data.matter == ob.decode_matter_qr(receipt["qr_text"])  # what was shown, signed
    assert list(data.matter.body.licenses) == receipt["licenses"]
    assert data.matter.body.subject == ob.identifier_hash(sim_hall.CITIZEN_ID)
    device = bytes.fromhex(info["terminals"]["kiosk"]["device_public_key"])
    assert inc.tx.public_key == device  # signed by the key generated inside the module
    assert data.terminal == sm3.digest(device) == body.sender
    assert data.attestation is not None and data.attestation.body.result == "match"
    # the daemon audited the signature with the module's own counter, and the authorization
    from appliance import audit

    state = Path(info["dir"]) / "kiosk-state"
    entries = audit.tail(state / "audit", 50)
    signs = [e.fields for e in entries if e.kind == "sign"
             and e.fields.get("tx_id") == receipt["tx_id"]]
    assert len(signs) == 1 and isinstance(signs[0].get("counter"), int), signs
    assert any(e.kind == "authorization" and e.fields.get("tx_id") == receipt["tx_id"]
               for e in entries)


def test_pad_license_verification(hall: Hall, browser: Any, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    samples = hall.pad.get("/api/pad/samples")["samples"]
    pad = browser.new_page()
    pad.goto(hall.pad_url)
    pad.wait_for_function("() => document.querySelectorAll('#v-sample option').length >= 4")

    pad.select_option("#v-sample", "0")
    pad.click("#v-go")
    pad.wait_for_selector("#v-result.found, #v-result.missing", timeout=TIMEOUT_MS)
    text = pad.inner_text("#v-result")
    assert "链上已存证" in text and "On chain" in text, text
    assert samples[0]["issuer"] in text and samples[0]["kind"] in text
    assert samples[0]["tx_id"] in text and samples[0]["digest"] in text
    shot(pad, shots, "01-verified-sample")

    # the same kind of check with a file uploaded from the PAD's disk
    document = hall.pad.read("/api/pad/samples/1")
    pad.set_input_files("#v-file", files=[{"name": "household.txt", "mimeType": "text/plain",
                                           "buffer": document}])
    pad.select_option("#v-sample", "")
    pad.click("#v-go")
    pad.wait_for_function("() => document.getElementById('v-digest').innerText.includes('"
                          + sm3.digest(document).hex() + "')", timeout=TIMEOUT_MS)
    text = pad.inner_text("#v-result")
    assert "On chain" in text and samples[1]["issuer"] in text, text
    shot(pad, shots, "02-verified-upload")

    # a document never deposited
    pad.set_input_files("#v-file", files=[{"name": "forged.txt", "mimeType": "text/plain",
                                           "buffer": os.urandom(2048)}])
    pad.click("#v-go")
    pad.wait_for_selector("#v-result.missing", timeout=TIMEOUT_MS)
    text = pad.inner_text("#v-result")
    assert "链上未找到" in text and "Not on chain" in text, text
    # ... on the word of the nodes named, in both languages
    assert "已询问" in text and "not found by 2 of" in text, text
    assert all(url in text for url in hall.health()["sim"]["peers"]), text
    shot(pad, shots, "03-not-on-chain")
    pad.close()


def _images_under(root: Path) -> list[str]:
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.suffix.lower() in IMAGE_EXT:
                found.append(str(p))
                continue
            try:
                with open(p, "rb") as f:
                    head = f.read(16)
            except OSError:
                continue
            if head.startswith(IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
                found.append(str(p))
    return found


def test_no_image_left_behind(browser: Any, tmp_path: Path) -> None:
    """A walk-through in a hall of its own whose every process records what it writes: no
    image file anywhere under its temporary tree or working directory while it runs, every
    path written inside that tree (or /dev/null), none an image, and no JPEG in the log."""
    from conftest import start_hall, stop_hall

    writes = tmp_path / "writes" / "w"
    writes.parent.mkdir()
    hall = start_hall(tmp_path / "nt", record_writes=writes)
    try:
        hall.wait_ready()
        walk(hall, browser, tmp_path / "screenshots")
        sim_dir = Path(hall.health()["sim"]["dir"])
        assert sim_dir.is_dir() and hall.tmp in sim_dir.parents
        # the hall's whole temporary tree (state, header store, audit log, module store,
        # chain) and the daemon's working directory: no image file of any kind
        assert _images_under(hall.tmp) == []
        assert _images_under(hall.cwd) == []
        assert (sim_dir / "kiosk-state" / "audit").is_dir()
        # the control: the scan sees an image where there is one
        (hall.cwd / "control.bin").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 64)
        assert _images_under(hall.cwd) == [str(hall.cwd / "control.bin")]
        (hall.cwd / "control.bin").unlink()
    finally:
        assert stop_hall(hall) == 0
    dumps = sorted(writes.parent.glob("w.*"))
    assert len(dumps) >= 2, dumps  # the daemon and its children (the module emulator)
    written = {line for d in dumps for line in d.read_text().splitlines() if line}
    assert any(p.endswith("headers.sqlite") for p in written), written  # the hook works
    outside = {p for p in written if p not in ("/dev/null", ":memory:")
               and hall.tmp not in Path(p).parents and hall.cwd not in Path(p).parents}
    assert outside == set(), outside
    assert not {p for p in written if Path(p).suffix.lower() in IMAGE_EXT}
    log = "".join(hall.log)
    assert "ffd8ff" not in log.lower() and "\\xff\\xd8" not in log


def _make_matter(hall: Hall) -> str:
    import json

    samples = hall.pad.get("/api/pad/samples")["samples"]
    doc = {"title": "查询 Lookup", "agencies": ["Agency"], "purpose": "p",
           "citizen_id": sim_hall.CITIZEN_ID, "licenses": [samples[2]["tx_id"]]}
    status, out = hall.pad.post("/api/pad/matter", json.dumps(doc).encode(),
                                "application/json")
    assert status == 200, out
    return out["qr_text"]


def _to_consent(kiosk: Any, qr_text: str) -> None:
    to_consent(kiosk, qr_text)


def test_the_clerk_way_from_the_kiosks_session_qr_to_a_verified_receipt(
        hall: Hall, browser: Any, tmp_path: Path) -> None:
    """The citizen chooses the clerk way; the kiosk shows its session code and QR; the clerk
    scans it with the PAD's camera, compares the number, types the staff card's PIN and
    signs; the kiosk's camera reads the PAD's confirmation and the authorization ends on
    chain with the clerk's confirmation in it."""
    shots = tmp_path / "screenshots"
    pad = browser.new_page()
    pad.goto(hall.pad_url)
    pad.wait_for_function("() => document.querySelectorAll('#m-licenses input').length >= 4")
    pad.click("#m-create")
    pad.wait_for_selector("#m-result:not([hidden])", timeout=TIMEOUT_MS)
    qr_text = pad.input_value("#m-text")
    kiosk = browser.new_page()
    kiosk.goto(hall.kiosk_url)
    to_consent(kiosk, qr_text)
    kiosk.click("#alternative")
    active(kiosk, "clerk")
    kiosk.wait_for_function("() => document.getElementById('k-qr').complete && "
                            "document.getElementById('k-qr').naturalWidth > 0")
    code = kiosk.inner_text("#k-code").strip()
    assert len(code) == 6 and code.isdigit()
    shot(kiosk, shots, "01-kiosk-session")
    pad.click("#c-scan")  # the PAD's camera reads the kiosk's screen
    pad.wait_for_selector("#c-details:not([hidden])", timeout=TIMEOUT_MS)
    assert pad.inner_text("#c-code").strip() == code  # the number the clerk compares
    assert sim_hall.CITIZEN_ID[-4:] in pad.inner_text("#c-title")
    shot(pad, shots, "02-pad-session")
    pad.fill("#c-pin", sim_hall.CLERK_PIN)
    pad.click("#c-go")
    pad.wait_for_selector("#c-result:not([hidden])", timeout=TIMEOUT_MS)
    confirmation = ob.decode_confirmation_qr(pad.input_value("#c-text"))
    assert pad.input_value("#c-pin") == ""  # the PIN does not stay on the page
    shot(pad, shots, "03-pad-confirmation")
    receipt = to_receipt(hall, kiosk, shots)  # the kiosk's camera read the confirmation
    assert "工作人员" in kiosk.inner_text("#r-way")
    kiosk.close()
    pad.close()
    tx_id = bytes.fromhex(receipt["tx_id"])
    with ThreadPoolExecutor(1) as pool:
        inc, info = pool.submit(asyncio.run, _inclusion(hall, tx_id, tmp_path / "verifier")
                                ).result(timeout=120)
    data = ob.AuthorizeData.from_obj(inc.tx.body.data)
    assert data.way == "clerk" and data.confirmation == confirmation
    assert data.matter == ob.decode_matter_qr(qr_text)
    assert confirmation.public_key != data.matter.public_key  # the clerk's key, not the PAD's


def test_decline_and_cancel_end_on_error_screens_with_nothing_signed(
        hall: Hall, browser: Any, tmp_path: Path) -> None:
    from appliance import audit

    shots = tmp_path / "screenshots"
    log_dir = Path(hall.health()["sim"]["dir"]) / "kiosk-state" / "audit"
    signs_before = sum(e.kind == "sign" for e in audit.tail(log_dir, 10_000))
    qr_text = _make_matter(hall)
    kiosk = browser.new_page()
    kiosk.goto(hall.kiosk_url)

    _to_consent(kiosk, qr_text)
    kiosk.click("#decline")
    active(kiosk, "error")
    assert "已取消授权" in kiosk.inner_text("#e-title")
    assert "Authorization declined" in kiosk.inner_text("#e-title")
    shot(kiosk, shots, "01-declined")
    kiosk.click("#error-done")

    _to_consent(kiosk, qr_text)
    assert kiosk.is_visible("#cancel")
    kiosk.click("#cancel")
    active(kiosk, "error")
    shot(kiosk, shots, "02-cancelled")
    kiosk.click("#error-done")
    active(kiosk, "attract")
    assert not kiosk.is_visible("#cancel")
    kiosk.close()

    entries = audit.tail(log_dir, 10_000)
    assert sum(e.kind == "sign" for e in entries) == signs_before  # nothing signed
    failed = [e.fields for e in entries if e.kind == "authorization_failed"][-2:]
    assert [f.get("code") for f in failed] == ["consent_declined", "cancelled"], failed
    assert audit.verify(log_dir).ok


def test_equivocation_alarm_blocks_the_kiosk_until_the_operator_clears_it(
        hall: Hall, browser: Any, tmp_path: Path) -> None:
    """An alarm in the daemon's header store (what the sync writes on equivocation) puts the
    kiosk on the blocked screen; `appliance node clear-alarm` brings it back."""
    import subprocess
    import sys
    import time

    from appliance import audit
    from appliance.node.store import HeaderStore

    state = Path(hall.health()["sim"]["dir"]) / "kiosk-state"
    kiosk = browser.new_page()
    kiosk.goto(hall.kiosk_url)
    active(kiosk, "attract")
    store = HeaderStore.open(state / "node" / "headers.sqlite")
    try:
        store.raise_alarm("equivocation", "test: two valid commits at one height",
                          at_ms=int(time.time() * 1000))
    finally:
        store.close()
    active(kiosk, "blocked")
    # the flow's own words for this reason, not the page's fallback
    assert "区块链数据冲突" in kiosk.inner_text('[data-screen="blocked"]')
    assert "conflicting ledger data" in kiosk.inner_text('[data-screen="blocked"]')
    assert hall.health()["alarm"] is not None
    shot(kiosk, tmp_path / "screenshots", "01-blocked")
    r = subprocess.run([sys.executable, "-m", "appliance.cli", "node", "clear-alarm",
                        "equivocation", "--operator", "duty-officer", "--state", str(state)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    active(kiosk, "attract")
    kiosk.close()
    kinds = [(e.kind, e.fields.get("operator")) for e in audit.tail(state / "audit", 50)]
    assert ("alarm", None) in kinds and ("alarm_cleared", "duty-officer") in kinds


def test_the_ui_opens_from_its_launch_url_only(hall: Hall, browser: Any, tmp_path: Path
                                               ) -> None:
    """Without the session the pages show where the UI opens and nothing else; the launch
    URL gives a cookie the page's scripts cannot read and leaves the key out of the address
    bar; a page whose session is gone (a daemon restarted with a new key) says so rather than
    go on looking alive."""
    shots = tmp_path / "screenshots"
    browser.clear_cookies()
    page = browser.new_page()
    pad_base = hall.pad_url.split("/pad?")[0]
    for url in (hall.url + "/", pad_base + "/pad"):
        resp = page.goto(url)
        assert resp is not None and resp.status == 401
        assert "Open this terminal's UI from its own browser" in page.inner_text("#locked")
        assert page.query_selector("[data-screen]") is None  # no UI, no data
    shot(page, shots, "01-locked")
    page.goto(hall.kiosk_url)
    active(page, "attract")
    assert page.url == hall.url + "/"  # the key is gone from the address bar
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads the session
    (cookie,) = [c for c in browser.cookies() if c["name"] == "appliance_ui_"
                 + hall.url.rsplit(":", 1)[1]]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert cookie["value"] not in hall.kiosk_url
    page.goto(hall.pad_url)
    page.wait_for_selector("#m-create")
    assert page.url == pad_base + "/pad"
    page.goto(hall.kiosk_url)
    active(page, "attract")
    browser.clear_cookies()  # as a restarted daemon would not know this session
    page.click("#start")  # its POST is refused (401): the page turns into the locked page
    page.wait_for_selector("main#locked", timeout=TIMEOUT_MS)
    assert page.query_selector("[data-screen]") is None and page.url == hall.url + "/"
    shot(page, shots, "02-session-gone")
    page.close()
    page = browser.new_page()
    page.goto(hall.kiosk_url)  # and the launch URL opens it again
    active(page, "attract")
    page.close()


def test_an_audit_log_gone_pauses_authorizations(hall: Hall, browser: Any, tmp_path: Path
                                                 ) -> None:
    """Nothing is authorized that cannot be audited: once the daemon's audit log vanishes the
    kiosk shows the blocked screen in the audit's words, before any citizen starts. (Last in
    this module: the daemon refuses to start a new chain until it restarts.)"""
    import shutil

    state = Path(hall.health()["sim"]["dir"]) / "kiosk-state"
    kiosk = browser.new_page()
    kiosk.goto(hall.kiosk_url)
    active(kiosk, "attract")
    shutil.rmtree(state / "audit")
    active(kiosk, "blocked")
    text = kiosk.inner_text('[data-screen="blocked"]')
    assert "审计日志" in text and "audit log" in text
    assert hall.get("/api/state")["view"]["error"]["code"] == "blocked_audit"
    health = hall.health()
    assert health["audit"]["error"] == "gone"
    assert health["authorizations"]["available"] is False
    assert "audit log" in health["authorizations"]["reason"]
    shot(kiosk, tmp_path / "screenshots", "01-blocked-audit")
    kiosk.close()
