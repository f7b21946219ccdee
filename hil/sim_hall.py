"""The simulated service hall (``appliance run --sim``, ``make demo``): every fixture the two
terminals talk to, on this machine, in a temporary directory removed at the end.

TEST FIXTURES, not a deployment: the chain's keys are in the clear, the identity service is
a toy, the cameras play a synthetic face and the codes other screens show.

- a consortium chain (:mod:`hil.chain`, 4 SM2 validators, district admin keys in its trust
  anchor) and two district-node doubles (:mod:`hil.district_node`) announced by mDNS on
  loopback, a block every second. Both serve the *same* chain directory and share one pending
  pool and its indexes: a transaction given to either is in the next block and the two never
  fork (two doubles on copies of one chain, each making its own blocks, would equivocate);
- two terminals, each a daemon of its own with its own crypto-module emulator
  (:mod:`hil.hsm_emulator`, the real firmware behind a pty), set up as a technician would:
  the factory PIN changed, the device key generated inside the module, then enrolled with a
  ``device.enroll`` signed by the district admin key: the **kiosk** (role kiosk) and the
  window's **PAD** (role pad, for :data:`OFFICE`). The PAD's clerk has a **staff card** (a
  third emulator) whose key is enrolled with role clerk for the same office;
- the issuing offices (enrolled by the chain generator, role issuer) and the citizen's
  licenses deposited with ``evidence.deposit`` (holder = the §6 hash of the citizen's ID
  number; one business license held by an enterprise the citizen represents); their bytes
  are kept so that the PAD can verify them (``/api/pad/samples``);
- the identity-service double (:mod:`hil.identity_service`), its key enrolled with role
  identity, with the citizen enrolled from ``synthetic:astronaut``;
- cameras: the kiosk's plays the synthetic citizen, who answers the challenge the flow shows
  (it listens to the runner's guidance), and shows the QR the PAD last made (a matter while
  the kiosk scans, the clerk's confirmation while it waits for one); the PAD's shows the
  kiosk's session QR while the kiosk waits for the clerk.

The daemons' UIs serve at once; the fixtures start in the background and the daemons' tasks
wait for them (:meth:`SimTerminal.wait_chain`, ``wait_hsm``, ``wait_identity``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from appliance.config import Config

log = logging.getLogger("hil.sim_hall")

CITIZEN = "astronaut"  # the synthetic face of the citizen
CITIZEN_ID = "110108198001010015"  # the citizen's (synthetic) ID number
ENTERPRISE_ID = "91110108MA01SIMHAL"  # the enterprise the citizen represents
PIN = "246810"  # the terminals' PIN after set-up (a technician's choice, not the factory's)
CLERK_PIN = "135790"  # the clerk's staff-card PIN (typed on the PAD to confirm)
CLERK_STAFF = "S-0001"
CHAIN_ID = "sim-hall"
SERVICE = "hil-identity"
DISTRICT = "haidian"
HALL = "haidian-hall-1"
OFFICE = "海淀区市场监管局 Haidian SAMR"  # the PAD's office
ISSUERS = ("海淀区公安分局 Haidian PSB", "海淀区户籍科 Haidian Hukou",
           "海淀区不动产登记中心 Haidian Real Estate", "海淀区市场监管局 Haidian SAMR")
DOCUMENTS = (  # name, kind, file name, issuing office index, held by the enterprise
    ("居民身份证 Resident ID card", "resident_id_card", "resident-id-card.txt", 0, False),
    ("户口簿 Household register", "household_register", "household-register.txt", 1, False),
    ("不动产权证书 Real-estate certificate", "real_estate_certificate",
     "real-estate-certificate.txt", 2, False),
    ("营业执照 Business license", "business_license", "business-license.txt", 3, True),
)
ENROLL_DAYS = 300


@dataclass(frozen=True)
class Sample:
    """A license document deposited on the simulated chain."""

    name: str
    kind: str
    issuer: str
    filename: str
    document: bytes
    digest: bytes
    tx_id: bytes
    enterprise: bool

    def to_json(self, index: int) -> dict[str, Any]:
        return {"index": index, "name": self.name, "kind": self.kind, "issuer": self.issuer,
                "filename": self.filename, "digest": self.digest.hex(),
                "tx_id": self.tx_id.hex(), "size": len(self.document),
                "holder": "enterprise" if self.enterprise else "citizen"}


class SimHall:
    """The fixtures of one simulated hall, and its two terminals :attr:`kiosk` and
    :attr:`pad` (:class:`SimTerminal`: what each daemon is given)."""

    def __init__(self, cfg: Config, *, block_interval_ms: int = 1000, fps: float = 15.0,
                 base_dir: str | os.PathLike[str] | None = None, pad_port: int | None = None
                 ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="appliance-sim-", dir=base_dir))
        os.chmod(self.dir, 0o700)
        self.block_interval_ms = block_interval_ms
        self.fps = fps
        self.chain_dir = self.dir / "chain"
        self.trust_path = self.chain_dir / "trust.cbor"
        self.citizen = CITIZEN
        self.citizen_id = CITIZEN_ID
        self.peer_urls: list[str] = []
        self.samples: list[Sample] = []
        self.identity_url = ""
        self.identity_public_key: bytes | None = None
        self.identity_service = SERVICE
        self.timings: dict[str, float] = {}
        kiosk_port = cfg.kiosk.listen_port
        if pad_port is None:
            pad_port = 0 if kiosk_port == 0 else kiosk_port + 1
        self.kiosk = SimTerminal(self, "kiosk", cfg, kiosk_port)
        self.pad = SimTerminal(self, "pad", cfg, pad_port)
        self.clerk_card = str(self.dir / "gmclerk0")
        self.clerk_public_key: bytes | None = None
        self.clerk_enrollment: bytes | None = None
        self.subject: Any = None
        self.last_matter_qr: str | None = None
        self.last_confirmation_qr: str | None = None
        self._nodes: list[Any] = []
        self._emulators: list[Any] = []
        self._identity: Any = None
        self._task: asyncio.Task[None] | None = None
        self._ready: dict[str, asyncio.Event] = {}
        self._failed: BaseException | None = None
        self._t0 = time.monotonic()

    @property
    def terminals(self) -> tuple[SimTerminal, SimTerminal]:
        return self.kiosk, self.pad

    # -- lifecycle -------------------------------------------------------------------------

    def start_background(self) -> None:
        """Start every fixture in a background task of the running loop."""
        self._ready = {k: asyncio.Event() for k in ("chain", "hsm", "identity", "all")}
        self._task = asyncio.create_task(self._start(), name="sim-hall")

    async def start(self) -> None:
        """Start and wait until everything is up."""
        self.start_background()
        await self.wait("all")

    async def wait(self, what: str) -> None:
        event = self._ready[what]
        assert self._task is not None
        while not event.is_set():
            if self._task.done():
                exc = self._failed or (self._task.exception() if not self._task.cancelled()
                                       else None)
                if not event.is_set():
                    raise RuntimeError(f"the simulated hall did not start: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(event.wait()), 0.5)

    async def _start(self) -> None:
        t0 = time.monotonic()
        try:
            modules = asyncio.create_task(asyncio.to_thread(self._start_emulators))
            await asyncio.to_thread(self._make_chain)
            await self._start_nodes()
            self.timings["chain_s"] = time.monotonic() - t0
            self._ready["chain"].set()
            identity_key = await asyncio.to_thread(_keypair)
            await modules
            enrollments = await self._enroll(identity_key[1])
            self.timings["hsm_s"] = time.monotonic() - t0
            self._ready["hsm"].set()
            await self._start_identity(identity_key, enrollments)
            deposits = await self._deposit()
            await self._included([*enrollments, *deposits])
            self._ready["identity"].set()
            self.timings["all_s"] = time.monotonic() - t0
            self._ready["all"].set()
            log.info("simulated hall ready in %.2f s: nodes %s, identity %s, %d samples",
                     self.timings["all_s"], " ".join(self.peer_urls), self.identity_url,
                     len(self.samples))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed = exc
            log.error("simulated hall failed to start: %s", exc)
            raise

    async def stop(self) -> None:
        for t in self.terminals:
            t.stop_watch()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        for node in self._nodes:
            with contextlib.suppress(Exception):
                await node.stop()
        self._nodes.clear()
        if self._identity is not None:
            with contextlib.suppress(Exception):
                await self._identity.stop()
        for emu in self._emulators:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(emu.stop)
        self._emulators.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def info(self) -> dict[str, Any]:
        """For /api/health in sim mode (a test rig reads where the fixtures are)."""
        return {"dir": str(self.dir), "trust": str(self.trust_path), "peers": self.peer_urls,
                "identity": self.identity_url, "samples": len(self.samples),
                "ready": bool(self._ready) and self._ready["all"].is_set(),
                "terminals": {t.role: t.terminal_info() for t in self.terminals},
                "timings_s": self.timings}

    # -- the chain and the district nodes ----------------------------------------------------

    def _make_chain(self) -> None:
        from hil import chain as hc

        now = int(time.time() * 1000)
        params = hc.ChainParams(chain_id=CHAIN_ID, seed="sim-hall", validators=4,
                                issuers=len(ISSUERS), offices=ISSUERS, districts=(DISTRICT,),
                                start_ms=now - 10_000, interval_ms=1000)
        hc.generate(self.chain_dir, params, 2, 0)

    async def _start_nodes(self) -> None:
        from hil.district_node import DistrictNode

        def node_log(name: str) -> Any:
            lg = logging.getLogger(f"hil.sim_hall.{name}")
            return lambda line: lg.debug("%s", line)

        producer = DistrictNode(self.chain_dir, district=DISTRICT, advertise=True,
                                block_interval_ms=self.block_interval_ms, empty_blocks=True,
                                peer_key_seed="sim-hall/a", log=node_log("node-a"))
        follower = DistrictNode(self.chain_dir, district=DISTRICT + "-b", advertise=True,
                                block_interval_ms=0, peer_key_seed="sim-hall/b",
                                log=node_log("node-b"), share_state_with=producer)
        for node in (producer, follower):
            self._nodes.append(node)
            self.peer_urls.append(await node.start())

    async def _post_tx(self, signed_tx: dict[str, Any]) -> bytes:
        import aiohttp

        from appliance import wire
        from appliance.gm import sm3

        body = wire.encode(signed_tx)
        async with aiohttp.ClientSession() as session, session.post(
                self.peer_urls[0] + "/v1/tx", data=body,
                headers={"Content-Type": "application/cbor"}) as resp:
            answer = await resp.read()
            if resp.status != 202:
                raise RuntimeError(f"the district node refused a {signed_tx['body']['type']}: "
                                   f"{resp.status} {answer[:200]!r}")
        return sm3.digest(wire.encode(signed_tx["body"]))

    def _body(self, key: Any, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"chain_id": CHAIN_ID, "type": kind, "timestamp": int(time.time() * 1000),
                "sender": key.peer_id, "data": data, "nonce": os.urandom(16)}

    async def _enroll_key(self, admin: Any, public_key: bytes, role: str, **fields: Any
                          ) -> bytes:
        from appliance.node.model import peer_id
        from appliance.node.objects import Enrollment
        from appliance.node.rules import DAY_MS
        from hil import chain as hc

        now = int(time.time() * 1000)
        data = Enrollment(peer_id(public_key), "sm2", public_key, DISTRICT, HALL, role,
                          now + ENROLL_DAYS * DAY_MS, **fields).to_obj()
        return await self._post_tx(hc.sign_tx(admin, self._body(admin, "device.enroll",
                                                                 data)))

    # -- the crypto modules ----------------------------------------------------------------------

    def _start_emulators(self) -> None:
        from hil.hsm_emulator import HsmEmulator, provision

        for name, device in (("kiosk", self.kiosk.hsm_device), ("pad", self.pad.hsm_device),
                             ("clerk", self.clerk_card)):
            emu = HsmEmulator(device, self.dir / f"{name}-module.bin",
                              log_path=self.dir / f"{name}-module.log")
            emu.start()
            self._emulators.append(emu)
        # set up as a technician sets up a new module: the factory PIN changed, the key made
        self.kiosk.device_public_key, _ = provision(self.kiosk.hsm_device, slot=0, pin=PIN)
        self.pad.device_public_key, _ = provision(self.pad.hsm_device, slot=0, pin=PIN)
        self.clerk_public_key, _ = provision(self.clerk_card, slot=0, pin=CLERK_PIN)

    async def _enroll(self, identity_public_key: bytes) -> list[bytes]:
        from hil import chain as hc

        with hc.Chain.open(self.chain_dir, readonly=True) as chain:
            admin = chain.keys(hc.ROLE_ADMIN)[0]
            # the issuing offices: enrolled in block 0 by the generator, with their offices
            self._issuers = [(key, office, chain.enrollment_of(key.public_key, "issuer"))
                             for key, office in zip(chain.keys(hc.ROLE_ISSUER), ISSUERS,
                                                    strict=True)]
        assert self.kiosk.device_public_key and self.pad.device_public_key
        assert self.clerk_public_key is not None
        self.kiosk.enrollment = await self._enroll_key(admin, self.kiosk.device_public_key,
                                                       "kiosk")
        self.pad.enrollment = await self._enroll_key(admin, self.pad.device_public_key, "pad",
                                                     office=OFFICE)
        self.clerk_enrollment = await self._enroll_key(admin, self.clerk_public_key, "clerk",
                                                       office=OFFICE, staff=CLERK_STAFF)
        self.identity_enrollment = await self._enroll_key(admin, identity_public_key,
                                                          "identity", min_score=600)
        return [self.kiosk.enrollment, self.pad.enrollment, self.clerk_enrollment,
                self.identity_enrollment]

    async def _deposit(self) -> list[bytes]:
        from appliance.gm import sm3
        from appliance.node.objects import Deposit, identifier_hash
        from hil import chain as hc

        citizen, enterprise = identifier_hash(CITIZEN_ID), identifier_hash(ENTERPRISE_ID)
        for name, kind, filename, index, for_enterprise in DOCUMENTS:
            key, office, enrollment = self._issuers[index]
            serial = os.urandom(8).hex()
            holder = ENTERPRISE_ID if for_enterprise else f"{CITIZEN} ({CITIZEN_ID})"
            document = (f"{name}\nserial {serial}\nholder {holder}\nissued by {office}\n"
                        "SIMULATED DOCUMENT, test fixture\n").encode()
            digest = sm3.digest(document)
            data = Deposit(digest, kind, enrollment,
                           enterprise if for_enterprise else citizen).to_obj()
            tx_id = await self._post_tx(hc.sign_tx(key, self._body(
                key, "evidence.deposit", data)))
            self.samples.append(Sample(name, kind, office, filename, document, digest, tx_id,
                                       for_enterprise))
        return [s.tx_id for s in self.samples]

    async def _included(self, tx_ids: list[bytes | None], timeout_s: float = 30.0) -> None:
        """Wait until the producer's chain holds every one of ``tx_ids`` (so that "ready"
        means the samples can be verified and the terminals are enrolled in a block)."""
        chain = self._nodes[0].chain
        deadline = time.monotonic() + timeout_s

        def missing() -> list[bytes]:
            out = []
            for tx_id in tx_ids:
                try:
                    chain.tx(tx_id)
                except KeyError:
                    out.append(tx_id)
            return out

        while await asyncio.to_thread(missing):
            if time.monotonic() > deadline:
                raise RuntimeError("the enrollments and deposits were not included in time")
            await asyncio.sleep(0.1)

    # -- the identity service --------------------------------------------------------------------

    async def _start_identity(self, keypair: tuple[bytes, bytes], enrollments: Any) -> None:
        from hil import identity_service as ids

        private, public = keypair

        def make() -> Any:
            enrolled = ids.parse_enroll([f"{CITIZEN_ID}=synthetic:{CITIZEN}"])
            lg = logging.getLogger("hil.sim_hall.identity")
            return ids.IdentityService(private, enrolled, service=SERVICE,
                                       enrollment=self.identity_enrollment,
                                       represents=[(CITIZEN_ID, ENTERPRISE_ID)],
                                       log=lambda line: lg.info("%s", line))

        self._identity = await asyncio.to_thread(make)
        self.identity_public_key = public
        self.identity_url = await self._identity.start()

    async def set_identity_mode(self, mode: str) -> None:
        """Tell the identity double how to answer (honest, no_match, timeout, ...)."""
        assert self._identity is not None
        self._identity.mode = mode

    # -- what the cameras see ---------------------------------------------------------------------

    def note_matter(self, qr_text: str) -> None:
        """The PAD made a matter: the kiosk's camera shows its QR while the kiosk scans."""
        self.last_matter_qr = qr_text

    def note_confirmation(self, qr_text: str) -> None:
        """The clerk confirmed: the kiosk's camera shows the QR while the kiosk waits."""
        self.last_confirmation_qr = qr_text


def _keypair() -> tuple[bytes, bytes]:
    from appliance.gm import sm2

    return sm2.generate_keypair()


class SimTerminal:
    """One terminal of the hall, as its daemon sees the fixtures (``Appliance(sim=...)``)."""

    def __init__(self, hall: SimHall, role: str, cfg: Config, port: int) -> None:
        from appliance.config import TerminalConfig

        self.hall = hall
        self.role = role
        self.dir = hall.dir
        self.config = replace(
            cfg, state_dir=hall.dir / f"{role}-state",
            terminal=TerminalConfig(role=role),
            node=replace(cfg.node, discover=True, discover_interfaces=("127.0.0.1",)),
            kiosk=replace(cfg.kiosk, listen_port=port),
            audit=replace(cfg.audit, path=None))
        self.hsm_device = str(hall.dir / f"gm{role}0")
        self.hsm_pin = PIN
        self.device_public_key: bytes | None = None
        self.enrollment: bytes | None = None
        self.url = ""
        self._watch: asyncio.Task[None] | None = None
        self.screen: str | None = None
        self.view: dict[str, Any] = {}

    # what the daemon reads of the hall
    @property
    def trust_path(self) -> Path:
        return self.hall.trust_path

    @property
    def peer_urls(self) -> list[str]:
        return self.hall.peer_urls

    @property
    def samples(self) -> list[Sample]:
        return self.hall.samples

    @property
    def citizen(self) -> str:
        return self.hall.citizen

    @property
    def citizen_id(self) -> str:
        return self.hall.citizen_id

    @property
    def identity_public_key(self) -> bytes | None:
        return self.hall.identity_public_key

    @property
    def identity_service(self) -> str:
        return self.hall.identity_service

    @property
    def identity_url(self) -> str:
        return self.hall.identity_url

    @property
    def clerk(self) -> tuple[str, int, bytes | None]:
        """The PAD's staff card: (device, slot, enrollment)."""
        return self.hall.clerk_card, 0, self.hall.clerk_enrollment

    async def wait_chain(self) -> None:
        await self.hall.wait("chain")

    async def wait_hsm(self) -> None:
        await self.hall.wait("hsm")

    async def wait_identity(self) -> None:
        await self.hall.wait("identity")

    def info(self) -> dict[str, Any]:
        """The hall's :meth:`SimHall.info` and which terminal this is (for /api/health)."""
        return {**self.hall.info(), "role": self.role}

    def terminal_info(self) -> dict[str, Any]:
        return {"url": self.url, "enrollment": None if self.enrollment is None
                else self.enrollment.hex(), "device_public_key": None if
                self.device_public_key is None else self.device_public_key.hex()}

    def note_matter(self, qr_text: str) -> None:
        self.hall.note_matter(qr_text)

    def note_confirmation(self, qr_text: str) -> None:
        self.hall.note_confirmation(qr_text)

    # -- the camera -------------------------------------------------------------------------------

    def camera(self) -> AsyncIterator[tuple[Any, float]]:
        """Frames at the hall's fps in real time: the kiosk's shows the codes the PAD made
        (as the citizen holds the PAD up) and otherwise the synthetic citizen; the PAD's
        shows the kiosk's session code while the kiosk waits for the clerk."""
        from hil import synthetic_face as sf

        hall = self.hall
        if self.role == "kiosk":
            hall.subject = sf.Subject(int.from_bytes(os.urandom(2), "big"), blink_every=0.0)
            hall._t0 = time.monotonic()
        return self._frames()

    def _what_to_show(self) -> str | None:
        hall = self.hall
        if self.role == "pad":
            clerk = hall.kiosk.view.get("clerk") if hall.kiosk.screen == "clerk" else None
            return clerk.get("qr") if isinstance(clerk, dict) else ""
        if self.screen == "scan":
            return hall.last_matter_qr
        if self.screen == "clerk":
            return hall.last_confirmation_qr
        return None

    async def _frames(self) -> AsyncIterator[tuple[Any, float]]:
        period = 1.0 / self.hall.fps
        next_at = time.monotonic()
        while True:
            now = time.monotonic()
            if next_at > now:
                await asyncio.sleep(next_at - now)
            next_at = max(next_at + period, time.monotonic() - period)
            t = time.monotonic()
            text = self._what_to_show()
            if text:
                frame = await asyncio.to_thread(qr_frame, text)
            elif text == "" or self.hall.subject is None:
                frame = await asyncio.to_thread(blank_frame)
            else:
                frame = await asyncio.to_thread(self.hall.subject.frame, t - self.hall._t0)
            yield frame, t

    def attach_runner(self, runner: Any) -> None:
        """Follow the kiosk runner's views: the screen (for the QR), the session code."""
        self.stop_watch()
        self._watch = asyncio.create_task(self._follow(runner))

    def stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    async def _follow(self, runner: Any) -> None:
        async for msg in runner.subscribe():
            if isinstance(msg, dict) and msg.get("type") == "view":
                self.view = msg.get("view") or {}
                self.screen = self.view.get("screen")

    def capture_listener(self, events: list[Any], ts: float) -> None:
        """The runner's capture events with their frame time (our camera's clock): the
        synthetic subject answers each challenge as it is issued."""
        from appliance.kiosk.capture.events import ChallengeIssued

        subject = self.hall.subject
        if subject is None:
            return
        subject.on_events(events, ts - self.hall._t0)
        for ev in events:
            if isinstance(ev, ChallengeIssued):
                log.info("synthetic subject answers challenge %d/%d: %s", ev.index + 1,
                         ev.total, ev.action)


def qr_frame(text: str) -> Any:
    """A 640x480 BGR camera frame of a QR code held up to the camera (~4 px a module)."""
    import cv2
    import numpy as np

    from appliance.kiosk.qrcodes import render_qr

    code = render_qr(text, module_px=4)
    side = min(440, code.shape[0])
    code = cv2.resize(code, (side, side), interpolation=cv2.INTER_NEAREST)
    frame = np.full((480, 640), 200, np.uint8)
    y, x = (480 - side) // 2, (640 - side) // 2
    frame[y:y + side, x:x + side] = code
    return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)


def blank_frame() -> Any:
    """A 640x480 BGR frame of nothing in particular (a desk)."""
    import numpy as np

    return np.full((480, 640, 3), 180, np.uint8)
