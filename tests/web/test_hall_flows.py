"""The two terminals of the simulated hall, through their APIs (``appliance run --sim`` as a
process): the PAD signs a matter, the kiosk reads it with its camera, verifies it, shows the
verified office, agencies, kinds and issuers, and the citizen authorizes it each way (face,
and the clerk way through the kiosk's session QR, the PAD's camera, the staff card and the
kiosk's camera). The authorizations are then read back from a district node and checked:
what the kiosk showed is what is on chain."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest
from conftest import Hall

from appliance import wire
from appliance.node import objects as ob
from appliance.node.model import decode_signed_tx, peer_id
from hil import sim_hall

LICENSES = 2  # the citizen's own: resident ID card, household register


def _post(client: Any, path: str, doc: dict[str, Any]) -> tuple[int, Any]:
    return client.post(path, json.dumps(doc).encode(), "application/json")


def _event(hall: Hall, kind: str, **extra: Any) -> None:
    status, body = _post(hall.ui, "/api/event", {"type": kind, **extra})
    assert status == 200 and body["ok"], body


def _wait_screen(hall: Hall, *screens: str, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = hall.get("/api/state")["view"]
        if view["screen"] in screens:
            return view
        if view["screen"] in ("error", "blocked") and view["screen"] not in screens:
            raise AssertionError(f"ended on {view['screen']}: {view.get('error')}")
        time.sleep(0.2)
    raise AssertionError(f"not on {screens} within {timeout} s: {view.get('screen')}")


def _to_attract(hall: Hall) -> None:
    view = hall.get("/api/state")["view"]
    if view["screen"] in ("receipt", "error"):
        _event(hall, "done")
    elif view["screen"] not in ("attract", "starting"):
        _event(hall, "cancel")
        _event(hall, "done")
    _wait_screen(hall, "attract")


def _matter(hall: Hall, **changes: Any) -> str:
    samples = hall.pad.get("/api/pad/samples")["samples"]
    doc = {"title": "开办餐饮店 Open a restaurant",
           "agencies": ["海淀区市场监管局", "海淀区卫生健康委"],
           "purpose": "食品经营许可 Food licence", "citizen_id": sim_hall.CITIZEN_ID,
           "licenses": [s["tx_id"] for s in samples if s["holder"] == "citizen"][:LICENSES],
           "valid_minutes": 10, "use_days": 30}
    doc.update(changes)
    status, body = _post(hall.pad, "/api/pad/matter", doc)
    assert status == 200, body
    return body["qr_text"]


def _on_chain(hall: Hall, tx_id: str) -> Any:
    peer = hall.health()["sim"]["peers"][0]
    with urllib.request.urlopen(f"{peer}/v1/tx/{tx_id}", timeout=30) as r:
        return decode_signed_tx(wire.encode(wire.decode(r.read())["tx"]))


@pytest.fixture(scope="module")
def ready(hall: Hall) -> Hall:
    hall.wait_ready()
    return hall


def test_the_pad_signs_a_matter_the_kiosk_verifies_and_the_face_way_ends_on_chain(
        ready: Hall) -> None:
    hall = ready
    _to_attract(hall)
    qr_text = _matter(hall)
    matter = ob.decode_matter_qr(qr_text)
    pad = hall.health()["sim"]["terminals"]["pad"]
    assert matter.public_key.hex() == pad["device_public_key"]
    assert matter.body.office == sim_hall.OFFICE  # from the PAD's enrollment
    _event(hall, "start")  # the simulated camera shows the PAD's last QR
    view = _wait_screen(hall, "consent")
    m = view["matter"]
    assert m["office"] == sim_hall.OFFICE and m["title"] == matter.body.title
    assert m["agencies"] == list(matter.body.agencies)
    assert [(lic["kind"], lic["issuer"]) for lic in m["licenses"]] == [
        ("resident_id_card", sim_hall.ISSUERS[0]), ("household_register", sim_hall.ISSUERS[1])]
    assert m["use_until"] == matter.body.use_until
    _event(hall, "consent")
    view = _wait_screen(hall, "receipt", timeout=120)
    receipt = view["receipt"]
    assert receipt["way"] == "face" and receipt["office"] == sim_hall.OFFICE
    tx = _on_chain(hall, receipt["tx_id"])
    data = ob.decode_data(tx.body.type, tx.body.data)
    assert tx.body.type == "license.authorize" and data.way == "face"
    assert data.matter == matter  # what the citizen saw is what is on chain
    kiosk = hall.health()["sim"]["terminals"]["kiosk"]
    assert tx.public_key.hex() == kiosk["device_public_key"]
    assert data.attestation.body.target == matter.digest
    assert data.attestation.body.terminal == peer_id(tx.public_key)
    _event(hall, "done")
    _wait_screen(hall, "attract")

    # the same matter again: this kiosk signed it before
    _event(hall, "matter_text", text=qr_text)
    view = _wait_screen(hall, "error")
    assert view["error"]["code"] == "matter_already_authorized"
    _to_attract(hall)


def test_the_clerk_way_from_the_kiosks_session_qr_to_a_receipt(ready: Hall) -> None:
    hall = ready
    _to_attract(hall)
    qr_text = _matter(hall)
    matter = ob.decode_matter_qr(qr_text)
    _event(hall, "start")
    _wait_screen(hall, "consent")
    _event(hall, "alternative")
    view = _wait_screen(hall, "clerk")
    clerk = view["clerk"]
    request = ob.decode_session_qr(clerk["qr"])
    assert request.target == matter.digest and request.code == clerk["code"]
    # the PAD reads the kiosk's screen with its camera
    status, session = _post(hall.pad, "/api/pad/session", {})
    assert status == 200, session
    assert session["code"] == clerk["code"] and session["title"] == matter.body.title
    assert session["citizen_hint"].endswith(sim_hall.CITIZEN_ID[-4:])
    # a wrong PIN: the staff card refuses, nothing is signed
    status, body = _post(hall.pad, "/api/pad/confirm",
                         {"text": session["text"], "method": "id_card", "pin": "000000"})
    assert status == 403, body
    status, conf = _post(hall.pad, "/api/pad/confirm", {
        "text": session["text"], "method": "id_card", "pin": sim_hall.CLERK_PIN})
    assert status == 200, conf
    confirmation = ob.decode_confirmation_qr(conf["qr_text"])
    assert confirmation.public_key != matter.public_key  # the clerk's own key
    view = _wait_screen(hall, "receipt", timeout=120)  # the kiosk's camera read it
    assert view["receipt"]["way"] == "clerk"
    tx = _on_chain(hall, view["receipt"]["tx_id"])
    data = ob.decode_data(tx.body.type, tx.body.data)
    assert data.way == "clerk" and data.confirmation == confirmation
    assert data.matter == matter and data.session == request.session
    _to_attract(hall)


def test_an_enterprise_matter_by_its_legal_representative(ready: Hall) -> None:
    """A matter for an enterprise (its business license, held by the enterprise): the
    identity service confirms the citizen represents it, the attestation names it, and the
    chain has it."""
    hall = ready
    _to_attract(hall)
    samples = hall.pad.get("/api/pad/samples")["samples"]
    business = [s["tx_id"] for s in samples if s["holder"] == "enterprise"]
    qr_text = _matter(hall, licenses=business, enterprise_id=sim_hall.ENTERPRISE_ID)
    matter = ob.decode_matter_qr(qr_text)
    credit = ob.identifier_hash(sim_hall.ENTERPRISE_ID)
    assert matter.body.on_behalf_of == credit
    _event(hall, "start")
    view = _wait_screen(hall, "consent")
    assert view["matter"]["enterprise"] == credit.hex()[:12]
    assert [lic["kind"] for lic in view["matter"]["licenses"]] == ["business_license"]
    _event(hall, "consent")
    view = _wait_screen(hall, "receipt", timeout=120)
    data = ob.decode_data("license.authorize", _on_chain(hall, view["receipt"]["tx_id"]
                                                         ).body.data)
    assert data.matter == matter and data.attestation.body.represents == credit
    _to_attract(hall)


def test_a_forged_matter_is_refused_before_consent(ready: Hall) -> None:
    """The exploit of the review: a genuine matter whose agencies were changed to "FraudCo"
    (what the citizen would see) no longer carries the PAD's signature. (A PAD will not sign
    a matter listing another holder's license at all: its desk refuses; the rules tests cover
    every other forgery.)"""
    import dataclasses

    hall = ready
    _to_attract(hall)
    genuine = ob.decode_matter_qr(_matter(hall))
    body = dataclasses.replace(genuine.body, agencies=("FraudCo",))
    forged = ob.Signed(body, genuine.alg, genuine.public_key, genuine.signature)
    _event(hall, "matter_text", text=ob.encode_qr(ob.MATTER_PREFIX, forged))
    view = _wait_screen(hall, "error")
    assert view["error"]["code"] == "matter_forged"
    _to_attract(hall)


def test_the_pad_refuses_a_license_of_another_holder(ready: Hall) -> None:
    samples = ready.pad.get("/api/pad/samples")["samples"]
    business = [s["tx_id"] for s in samples if s["holder"] == "enterprise"]
    status, body = _post(ready.pad, "/api/pad/matter", {
        "title": "t", "agencies": ["a"], "purpose": "p", "citizen_id": sim_hall.CITIZEN_ID,
        "licenses": business})
    assert status == 400 and "not the citizen" in body["message"], body
    # for the enterprise, with its credit code, the same license is fine
    status, body = _post(ready.pad, "/api/pad/matter", {
        "title": "t", "agencies": ["a"], "purpose": "p", "citizen_id": sim_hall.CITIZEN_ID,
        "enterprise_id": sim_hall.ENTERPRISE_ID, "licenses": business})
    assert status == 200, body
    assert ob.decode_matter_qr(body["qr_text"]).body.on_behalf_of == \
        ob.identifier_hash(sim_hall.ENTERPRISE_ID)
