"""The flow runner with real parts: from a matter QR on the camera to a verified receipt.

The rig: a generated chain served by two district-node doubles on loopback (one produces a
block every 200 ms, the other serves the same chain directory read-only), the terminal's key
generated inside the crypto-module emulator on a pty and enrolled by the district admin (role
kiosk), a PAD's key enrolled for an office, the identity service's key enrolled (role
identity), the citizen's two licenses deposited by the chain's issuing offices, a NodeSync
synced from the trust anchor, the identity-service double (honest comparison of the capture
with the astronaut reference photo), and an emulated camera that first shows the PAD's signed
matter QR code and then plays the synthetic genuine citizen, who answers each challenge. The
audit log is the real one (appliance.audit).

Failure paths end on their screen with nothing signed: the module's signature counter (read
from the module itself before and after) has not moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance import wire
from appliance.audit import AuditLog
from appliance.gm import sm2
from appliance.hsm.client import Client
from appliance.kiosk import flow as fl
from appliance.kiosk import identity as ident
from appliance.kiosk.capture.config import CaptureConfig
from appliance.kiosk.capture.sources import Camera, EmulatedCamera
from appliance.kiosk.identity import IdentityClient
from appliance.kiosk.runner import FlowRunner
from appliance.node import objects as ob
from appliance.node import sync
from appliance.node.client import NodeSync
from appliance.node.model import peer_id
from appliance.node.store import HeaderStore
from appliance.node.tx import ModuleSigner, SoftwareSigner
from hil import chain as hc
from hil.district_node import DistrictNodeProcess
from hil.hsm_emulator import PROVISIONED_PIN, HsmEmulator, provision
from hil.identity_service import IdentityService, load_reference
from hil.sim_hall import qr_frame
from hil.synthetic_face import StaticPrint, Subject

pytestmark = pytest.mark.timeout(300)

PIN = PROVISIONED_PIN  # set when the module is provisioned (the factory PIN cannot sign)
SLOT = 1
CITIZEN_ID = "110108198001010015"
OFFICE = "朝阳区政务服务中心 Chaoyang hall"
DISTRICT = "haidian"
DAY = 86_400_000
FPS = 15.0
TERMINAL_SCREENS = {"receipt", "error", "blocked"}


# -- the hall ---------------------------------------------------------------------------------

@dataclass
class Hall:
    root: Path
    chain: Path
    anchor: bytes
    terminal_key: bytes
    emulator: HsmEmulator | None = None
    nodes: list[DistrictNodeProcess] = field(default_factory=list)
    enrollment: bytes = b""  # the kiosk's device.enroll
    pad: Any = None  # the PAD's key (a software key: its module is another test's)
    pad_enrollment: bytes = b""
    identity_key: tuple[bytes, bytes] = (b"", b"")
    identity_enrollment: bytes = b""
    licenses: tuple[bytes, ...] = ()

    def start_module(self) -> None:
        self.emulator = HsmEmulator(self.root / "gmcrypto0", self.root / "store.bin").start()

    def stop_module(self) -> None:
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None

    def start_nodes(self, producer_only: bool = False) -> None:
        """The producer, and a read-only second node on the same chain directory (it reads
        the enrollments when it starts: start it after the terminal is enrolled)."""
        if not self.nodes:
            self.nodes = [DistrictNodeProcess(self.chain, block_interval_ms=200).start()]
        if not producer_only:
            self.nodes.append(DistrictNodeProcess(self.chain, block_interval_ms=0,
                                                  peer_key_seed="second node").start())

    def stop_nodes(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes = []

    @property
    def port(self) -> str:
        assert self.emulator is not None
        return self.emulator.port

    def counter(self) -> int:
        """Signatures the slot made before this call (read by signing a probe, which the
        module counts too: two calls with nothing signed between them differ by one)."""
        with Client(self.port, pin=PIN) as c:
            return c.sign(SLOT, b"counter probe").counter - 1


def post_tx(url: str, tx: dict[str, Any]) -> bytes:
    req = urllib.request.Request(url + "/v1/tx", data=wire.encode(tx), method="POST",
                                 headers={"Content-Type": "application/cbor"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return wire.decode(resp.read())["tx_id"]


def wait_included(chain: Path, tx_ids: list[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    with hc.Chain.open(chain, readonly=True) as c:
        for tx_id in tx_ids:
            while True:
                try:
                    c.tx(tx_id)
                    break
                except KeyError:
                    assert time.monotonic() < deadline, "not included in time"
                    time.sleep(0.05)


@pytest.fixture(scope="module")
def hall(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("hall")
    chain = root / "chain"
    now = int(time.time() * 1000)
    hc.generate(chain, hc.ChainParams(seed="kiosk runner", validators=4, districts=(DISTRICT,),
                                      start_ms=now - 60_000), 6)
    h = Hall(root, chain, (chain / "trust.cbor").read_bytes(), b"")
    h.start_module()
    # set up as a technician would: PIN changed, key generated inside the module
    h.terminal_key, _ = provision(h.port, slot=SLOT, pin=PIN)
    h.start_nodes(producer_only=True)
    try:
        with hc.Chain.open(chain, readonly=True) as c:
            admin = c.keys("admin")[0]
            issuers = [(k, c.enrollment_of(k.public_key, "issuer"))
                       for k in c.keys("issuer")[:2]]
        url = h.nodes[0].url
        now = int(time.time() * 1000)

        def enroll(public_key: bytes, role: str, **kw: Any) -> bytes:
            return post_tx(url, hc.enroll_tx(admin, public_key, "sm2", role, district=DISTRICT,
                                             hall="hall-1", not_after=now + 100 * DAY,
                                             timestamp=now, chain_id=hc.DEFAULT_CHAIN_ID, **kw))

        private, public = sm2.generate_keypair()
        h.pad = SoftwareSigner("sm2", private, public)
        h.identity_key = sm2.generate_keypair()
        h.enrollment = enroll(h.terminal_key, "kiosk")
        h.pad_enrollment = enroll(public, "pad", office=OFFICE)
        h.identity_enrollment = enroll(h.identity_key[1], "identity", min_score=600)
        holder = ob.identifier_hash(CITIZEN_ID)
        h.licenses = tuple(post_tx(url, hc.deposit_tx(
            key, digest=os.urandom(32), kind=kind, enrollment=enrollment, holder=holder,
            timestamp=now, chain_id=hc.DEFAULT_CHAIN_ID))
            for (key, enrollment), kind in zip(issuers, ("business_license", "lease"),
                                               strict=True))
        wait_included(chain, [h.enrollment, h.pad_enrollment, h.identity_enrollment,
                              *h.licenses])
        h.start_nodes()
        yield h
    finally:
        h.stop_nodes()
        h.stop_module()


# -- the scene in front of the camera ---------------------------------------------------------

class Scene:
    """What the emulated camera sees: the QR code while ``mode`` is ``qr``, then the citizen
    (who answers the challenges the runner's capture session issues)."""

    def __init__(self, text: str, person: Any) -> None:
        self.qr = qr_frame(text)
        self.person = person
        self.mode = "qr"

    def frame(self, i: int) -> np.ndarray:
        if self.mode == "qr":
            return self.qr.copy()
        return self.person.frame(i / FPS)

    def on_events(self, events: list[Any], ts: float) -> None:
        self.person.on_events(events, ts)


def sample_matter(hall: Hall, **changes: Any) -> ob.Signed[ob.MatterBody]:
    """A matter signed by the hall's PAD, issued now (a new matter_id each time)."""
    now = int(time.time() * 1000)
    body = ob.MatterBody(
        matter_id=os.urandom(16), title="企业开办 business registration", office=OFFICE,
        agencies=("市场监管局 market supervision",), purpose="开办企业 starting a business",
        subject=ob.identifier_hash(CITIZEN_ID), licenses=hall.licenses, issued_at=now,
        expires_at=now + 3_600_000, use_until=now + 30 * DAY, pad=peer_id(hall.pad.public_key),
        enrollment=hall.pad_enrollment)
    body = __import__("dataclasses").replace(body, **changes)
    return ob.Signed.sign(body, hall.pad)


# -- one walk through the flow -----------------------------------------------------------------

@dataclass
class Walk:
    views: list[dict[str, Any]]
    guidance: int
    frames: int
    runner: FlowRunner
    store: HeaderStore
    node: NodeSync
    identity_key: bytes
    audit: AuditLog
    counter_before: int | None = None

    @property
    def last(self) -> dict[str, Any]:
        return self.views[-1]

    def screens(self) -> list[str]:
        out: list[str] = []
        for v in self.views:
            if not out or out[-1] != v["screen"]:
                out.append(v["screen"])
        return out


async def synced_node(hall: Hall, path: Path, urls: list[str] | None = None
                      ) -> tuple[NodeSync, HeaderStore]:
    store = HeaderStore.open(path)
    ns = NodeSync(store, hall.anchor, sync.SyncConfig())
    for url in urls if urls is not None else [n.url for n in hall.nodes]:
        ns.add_peer(url)
    ns.resubmit_after_s = 0.5  # the read-only node never makes a block of what it accepts
    result = await ns.run(stop_at_tip=True, stall_timeout_s=30)
    assert result.ok, result.message
    return ns, store


async def walk(hall: Hall, tmp_path: Path, *, person: Any | None = None,
               matter: ob.Signed[ob.MatterBody] | None = None, identity_mode: str = "honest",
               identity_url: str | None = None,
               on_screen: dict[str, Callable[[FlowRunner, Any], Any]] | None = None,
               config: fl.FlowConfig | None = None, consent: bool = True,
               urls: list[str] | None = None, signer_cls: type = ModuleSigner,
               **runner_kw: Any) -> Walk:
    """Run the runner from attract until a final screen; return what the UI saw."""
    on_screen = dict(on_screen or {})
    matter = matter or sample_matter(hall)
    person = person or Subject(7)
    scene = Scene(ob.encode_qr(ob.MATTER_PREFIX, matter), person)
    ns, store = await synced_node(hall, tmp_path / "headers.sqlite", urls)
    stop = asyncio.Event()
    sync_task = asyncio.create_task(ns.run(stop_at_tip=False, stall_timeout_s=None, stop=stop))
    identity = IdentityService(hall.identity_key[0],
                               {CITIZEN_ID: load_reference("synthetic:astronaut")},
                               mode=identity_mode, enrollment=hall.identity_enrollment,
                               log=lambda _m: None)
    await identity.start()
    client = Client(hall.port, pin=PIN, reconnect_timeout=1.0)
    idc = IdentityClient(identity_url or identity.url, service_public_key=identity.public_key,
                         service_name=identity.service)
    audit = AuditLog(tmp_path / "audit")
    try:
        signer = await asyncio.to_thread(signer_cls, client, SLOT)  # as the daemon does
        flow = fl.AuthorizationFlow(config or fl.FlowConfig(),
                                    terminal_id=peer_id(signer.public_key),
                                    new_session=lambda: os.urandom(16),
                                    enrollment=hall.enrollment)
        camera = Camera(EmulatedCamera(scene.frame, fps=FPS))
        runner = FlowRunner(flow, frames=camera, capture_config=CaptureConfig(),
                            identity=idc, signer=signer, node=ns, audit=audit,
                            capture_listener=scene.on_events,
                            **runner_kw)
        run_task = asyncio.create_task(runner.run())
        views: list[dict[str, Any]] = []
        counts = {"guidance": 0, "frame": 0}

        async def watch() -> None:
            async for msg in runner.subscribe():
                if msg["type"] != "view":
                    counts[msg["type"]] += 1
                    if msg["type"] == "frame":
                        assert msg["jpeg"][:2] == b"\xff\xd8"  # a JPEG, in memory
                    continue
                v = msg["view"]
                views.append(v)
                screen = v["screen"]
                if screen == "consent" and scene.mode == "qr":
                    scene.mode = "face"
                    runner.post({"type": "consent" if consent else "decline"})
                hook = on_screen.pop(screen, None)
                if hook is not None:
                    result = hook(runner, ns)
                    if asyncio.iscoroutine(result):
                        await result
                if screen in TERMINAL_SCREENS and len(views) > 1:
                    return

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        runner.post({"type": "start"})
        await asyncio.wait_for(watcher, 120)
        runner.stop()
        await asyncio.wait_for(run_task, 30)
        return Walk(views, counts["guidance"], counts["frame"], runner, store, ns,
                    identity.public_key, audit)
    finally:
        stop.set()
        await asyncio.wait_for(sync_task, 30)
        await identity.stop()
        await idc.close()
        client.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- the happy path ---------------------------------------------------------------------------

def test_qr_to_verified_receipt(hall: Hall, tmp_path: Path) -> None:
    before = hall.counter()
    m = sample_matter(hall)

    async def scenario() -> None:
        w = await walk(hall, tmp_path, matter=m)
        assert w.last["screen"] == "receipt", (w.screens(), w.last["error"])
        assert w.screens() == ["attract", "scan", "checking", "consent", "capture",
                               "verifying", "signing", "submitting", "waiting", "receipt"]
        assert w.guidance > 0 and w.frames > 0  # live guidance and preview were published
        receipt = w.last["receipt"]
        session = bytes.fromhex(w.last["session"])
        tx_id = bytes.fromhex(receipt["tx_id"])
        assert receipt["qr"] == "GOVTX1:" + receipt["tx_id"]
        assert (receipt["office"], receipt["agencies"], receipt["title"]) == (
            OFFICE, list(m.body.agencies), m.body.title)
        consent = next(v for v in w.views if v["screen"] == "consent")
        shown = consent["matter"]
        assert shown["office"] == OFFICE and shown["use_until"] == m.body.use_until
        assert [lic["kind"] for lic in shown["licenses"]] == ["business_license", "lease"]
        assert all(lic["issuer"].startswith("office-") for lic in shown["licenses"])

        # fetch it again, through a second light node synced from the trust anchor alone
        ns2, store2 = await synced_node(hall, tmp_path / "again.sqlite")
        stop = asyncio.Event()
        task = asyncio.create_task(ns2.run(stop_at_tip=False, stall_timeout_s=None, stop=stop))
        try:
            inc = await ns2.get_inclusion(tx_id, timeout_s=20)
        finally:
            stop.set()
            await task
        assert inc.tx_id == tx_id and inc.height == receipt["height"]
        assert inc.block_id.hex() == receipt["block_id"]
        assert store2.block_id(inc.height) == inc.block_id  # in the verified store
        header = wire.decode(store2.header(inc.height))
        assert header["timestamp"] == receipt["time_ms"] == inc.time_ms
        store2.close()
        # ...and check what was signed, independently of the runner
        tx = inc.tx
        body = tx.body
        assert body.type == "license.authorize" and body.chain_id == hc.DEFAULT_CHAIN_ID
        assert tx.public_key == hall.terminal_key and body.sender == peer_id(hall.terminal_key)
        assert sm2.verify(hall.terminal_key, body.encoded, tx.signature)
        d = ob.AuthorizeData.from_obj(body.data)
        assert d.matter == m  # the very matter the consent screen showed
        assert d.session == session and d.terminal == peer_id(hall.terminal_key)
        assert d.enrollment == hall.enrollment and d.way == "face"
        request = ident.Request(session, m.body.subject, d.capture_digest,
                                peer_id(hall.terminal_key), m.digest)
        att = ident.verify_attestation(d.attestation.to_obj(),
                                       service_public_key=w.identity_key,
                                       service_name="hil-identity", request=request,
                                       now_ms=int(time.time() * 1000))
        assert att.result == "match"
        # the audit log: key use and the authorization, chained and verifiable
        entries = w.audit.tail(20)
        kinds = [e.kind for e in entries]
        assert "sign" in kinds and "authorization" in kinds
        auth = next(e for e in entries if e.kind == "authorization")
        assert auth.fields["tx_id"] == tx_id.hex() and auth.fields["height"] == inc.height
        assert w.audit.verify().ok
        assert w.runner.signatures == 1
        w.store.close()

    run(scenario())
    assert hall.counter() == before + 2  # the first probe and one authorization


# -- failure paths: the right screen, nothing signed ------------------------------------------

def failed_walk(hall: Hall, tmp_path: Path, code: str, screen: str = "error",
                **kw: Any) -> Walk:
    before = hall.counter()

    async def scenario() -> Walk:
        w = await walk(hall, tmp_path, **kw)
        w.store.close()
        return w

    w = run(scenario())
    w.counter_before = before
    assert w.last["screen"] == screen, w.last
    assert w.last["error"]["code"] == code
    assert w.runner.signatures == 0
    assert "signing" not in w.screens() or code in ("module_unavailable", "node_unavailable")
    assert not [e for e in w.audit.tail(50) if e.kind in ("sign", "authorization")]
    fails = [e for e in w.audit.tail(50) if e.kind == "authorization_failed"]
    assert fails and fails[-1].fields["code"] == code
    if hall.emulator is not None:
        assert hall.counter() == before + 1  # only the probe: nothing else was signed
    return w


def test_consent_declined(hall: Hall, tmp_path: Path) -> None:
    w = failed_walk(hall, tmp_path, "consent_declined", consent=False)
    assert "capture" not in w.screens()


def test_liveness_failed(hall: Hall, tmp_path: Path) -> None:
    w = failed_walk(hall, tmp_path, "liveness_failed", person=StaticPrint(3),
                    config=fl.FlowConfig(capture_attempts=1))
    assert "verifying" not in w.screens()


def test_identity_no_match(hall: Hall, tmp_path: Path) -> None:
    failed_walk(hall, tmp_path, "identity_no_match", identity_mode="no_match")


def test_identity_wrong_key(hall: Hall, tmp_path: Path) -> None:
    failed_walk(hall, tmp_path, "attestation_invalid", identity_mode="wrong_key")


def test_identity_down(hall: Hall, tmp_path: Path) -> None:
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
        failed_walk(hall, tmp_path, "identity_unavailable", identity_url=dead)


def test_equivocation_alarm_blocks(hall: Hall, tmp_path: Path) -> None:
    def raise_alarm(runner: FlowRunner, ns: NodeSync) -> None:
        ns.store.raise_alarm("equivocation", "test: two valid commits at one height",
                             at_ms=int(time.time() * 1000))
        # what the daemon's node watcher does when it reads the store's alarms
        alarms = ns.store.alarms()
        runner.alarm_changed(bool(alarms), "; ".join(a.detail for a in alarms))

    w = failed_walk(hall, tmp_path, "blocked_alarm", screen="blocked",
                    on_screen={"capture": raise_alarm})
    assert w.last["alarm"]["detail"].startswith("test: two valid commits")


def test_module_unplugged_mid_flow(hall: Hall, tmp_path: Path) -> None:
    async def unplug(runner: FlowRunner, ns: NodeSync) -> None:
        await asyncio.to_thread(hall.stop_module)

    try:
        w = failed_walk(hall, tmp_path, "module_unavailable", on_screen={"capture": unplug})
    finally:
        if hall.emulator is None:
            hall.start_module()  # plugged back: the same module, the same key store
    assert w.counter_before is not None
    assert hall.counter() == w.counter_before + 1  # no signature but the probe


def test_both_district_nodes_down(hall: Hall, tmp_path: Path) -> None:
    async def down(runner: FlowRunner, ns: NodeSync) -> None:
        await asyncio.to_thread(hall.stop_nodes)

    try:
        w = failed_walk(hall, tmp_path, "node_unavailable", on_screen={"capture": down})
        assert "submitting" not in w.screens()  # stopped before signing
    finally:
        if not hall.nodes:
            hall.start_nodes()


# -- after the signature: the tx left the terminal, but no receipt without a proof ----------

def after_signing_walk(hall: Hall, tmp_path: Path, code: str, **node_kw: Any) -> Walk:
    """The only district node is a copy of the hall's chain served by a double configured
    with ``node_kw``; the flow signs and submits, then must end on ``code``, no receipt."""
    where = tmp_path / "chain"
    shutil.copytree(hall.chain, where)  # the producer is idle: nothing is pending
    with hc.Chain.open(where, readonly=True) as c:
        tip = c.tip_height  # what the matter refers to is below: its proofs are good
    if "misbehave" in node_kw:
        node_kw["misbehave"] = f"{node_kw['misbehave']}@{tip + 1}"

    async def scenario() -> Walk:
        w = await walk(hall, tmp_path, urls=[node.url], inclusion_timeout_s=3.0)
        w.store.close()
        return w

    with DistrictNodeProcess(where, **node_kw) as node:
        w = run(scenario())
    assert w.last["screen"] == "error", w.last
    assert w.last["error"]["code"] == code
    assert w.last["error"]["tx_id"] is not None and w.last["receipt"] is None
    assert "receipt" not in w.screens() and w.runner.signatures == 1
    assert not [e for e in w.audit.tail(50) if e.kind == "authorization"]
    return w


def test_a_bad_proof_gives_no_receipt(hall: Hall, tmp_path: Path) -> None:
    after_signing_walk(hall, tmp_path, "proof_invalid", block_interval_ms=200,
                       misbehave="bad-proof")


def test_a_tx_never_included_times_out(hall: Hall, tmp_path: Path) -> None:
    after_signing_walk(hall, tmp_path, "inclusion_timeout", block_interval_ms=0)


# -- the audit log's daily head on chain ---------------------------------------------------------

def test_the_audit_heads_of_a_day_go_on_chain_and_verify(hall: Hall, tmp_path: Path) -> None:
    """The daemon's daily anchor: the day's head deposited as `audit.head` (signed in the
    module, naming the kiosk's enrollment), included, recorded as `anchored`, and checked by
    `verify(lookup=...)` against what the light node finds on chain; the double admitted it
    by its own §6 rules, ours accept it too."""
    from appliance.audit import DAY_MS
    from appliance.audit_anchor import anchor_day
    from appliance.node import rules
    from appliance.node.references import References

    async def scenario() -> None:
        ns, store = await synced_node(hall, tmp_path / "headers.sqlite")
        stop = asyncio.Event()
        task = asyncio.create_task(ns.run(stop_at_tip=False, stall_timeout_s=None, stop=stop))
        client = Client(hall.port, pin=PIN)
        try:
            signer = await asyncio.to_thread(ModuleSigner, client, SLOT)
            log = AuditLog(tmp_path / "audit", signer=signer)
            for i in range(5):
                log.append("test", n=i)
            assert log.checkpoint() is not None  # signed in the module, as at a day's end
            now = int(time.time() * 1000)
            entry = await anchor_day(log, now // DAY_MS, signer=signer,
                                     enrollment=hall.enrollment, node=ns, now_ms=now)
            assert entry is not None and entry.kind == "anchored"
            tx_id = bytes.fromhex(entry.fields["tx_id"])
            inc = await ns.get_inclusion(tx_id, timeout_s=20)
            deposit = ob.Deposit.from_obj(inc.tx.body.data)
            assert deposit.kind == "audit.head" and deposit.holder is None
            assert deposit.digest.hex() == entry.fields["digest"]
            refs = References(ns)
            lookup = await refs.resolve(inc.tx, timeout_s=20)
            rules.check_tx(inc.tx, lookup, ns.anchor.admins, at=inc.time_ms)

            def on_chain(digest: bytes) -> list[tuple[bytes, int, int]]:
                return [(inc.tx_id, inc.height, inc.time_ms)] if digest == deposit.digest \
                    else []

            report = await asyncio.to_thread(log.verify, public_key=signer.public_key,
                                             lookup=on_chain)
            assert report.ok and report.anchors_checked, report
            # the technician's command: a light node of its own finds the head on chain
            cmd = [sys.executable, "-m", "appliance.cli", "audit", "verify", "--log",
                   str(tmp_path / "audit"), "--public-key", signer.public_key.hex(),
                   "--trust", str(hall.chain / "trust.cbor"), "--require-checkpoints"]
            for n in hall.nodes:
                cmd += ["--node", n.url]
            out = await asyncio.to_thread(subprocess.run, cmd, capture_output=True,
                                          text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            doc = json.loads(out.stdout.strip().splitlines()[-1])
            assert doc["ok"] and doc["anchors_checked"] and doc["checkpoints"] == 1, doc
            # nothing logged that day: nothing to anchor
            assert await anchor_day(log, now // DAY_MS - 3, signer=signer,
                                    enrollment=hall.enrollment, node=ns, now_ms=now) is None
        finally:
            client.close()
            stop.set()
            await task
            store.close()

    run(scenario())


# -- a signature under way when the session ends ------------------------------------------------

class HeldSigner(ModuleSigner):
    """The daemon's module signer, whose request to the module waits until the test lets it
    go: the citizen cancels while the module is signing."""

    asked: Any = None
    go: Any = None

    def sign(self, message: bytes) -> bytes:
        type(self).asked.set()
        assert type(self).go.wait(60)
        return super().sign(message)


def test_a_signature_made_after_a_cancel_is_audited_and_never_sent(hall: Hall,
                                                                   tmp_path: Path) -> None:
    import threading

    before = hall.counter()
    HeldSigner.asked, HeldSigner.go = threading.Event(), threading.Event()

    async def cancel_while_signing(runner: FlowRunner, ns: NodeSync) -> None:
        assert await asyncio.to_thread(HeldSigner.asked.wait, 60)
        runner.post({"type": "cancel"})  # a Wipe: the signing step is cancelled
        HeldSigner.go.set()  # ...and the module signs all the same

    async def scenario() -> Walk:
        w = await walk(hall, tmp_path, signer_cls=HeldSigner,
                       on_screen={"signing": cancel_while_signing})
        w.store.close()
        return w

    w = run(scenario())
    assert w.last["screen"] == "error" and w.last["error"]["code"] == "cancelled"
    assert "submitting" not in w.screens() and w.last["error"]["tx_id"] is None
    signs = [e for e in w.audit.tail(50) if e.kind == "sign"]
    assert len(signs) == 1 and len(signs[0].fields["tx_id"]) == 64
    assert signs[0].fields["counter"] == before + 2  # the module's count: after the probe
    assert not [e for e in w.audit.tail(50) if e.kind == "authorization"]
    assert w.runner.signatures == 1 and not w.runner._txs
    assert hall.counter() == before + 2  # the probe and the signature the audit shows
    assert w.audit.verify().ok
