"""The simulated service hall (``appliance run --sim``, ``make demo``): every fixture the
daemon talks to, on this machine, in a temporary directory removed at the end.

TEST FIXTURES, not a deployment: the chain's keys are in the clear, the identity service is
a toy, the camera plays a synthetic face.

- a consortium chain (:mod:`hil.chain`, 4 SM2 validators) and two district-node doubles
  (:mod:`hil.district_node`) announced by mDNS on loopback, a block every second. Both serve
  the *same* chain directory: one produces the blocks, the other shares its pending pool, so
  a transaction given to either is in the next block and the two never fork (two doubles on
  copies of one chain, each making its own blocks, would be an equivocation);
- the crypto-module emulator (:mod:`hil.hsm_emulator`, the real firmware behind a pty): the
  terminal's device key is generated inside it, then enrolled with a ``device.enroll``
  transaction signed by the chain's district admin key;
- three license documents deposited with ``evidence.deposit`` by the chain's issuing
  offices; their bytes are kept so that the PAD can verify them (``/api/pad/samples``);
- the identity-service double (:mod:`hil.identity_service`) with :data:`CITIZEN` enrolled
  from ``synthetic:astronaut`` (subject = SM3(UTF-8 name));
- an emulated camera playing a genuine synthetic subject (:mod:`hil.synthetic_face`) that
  answers the challenge the flow shows (it listens to the runner's guidance), and, while the
  kiosk waits for a matter, shows the QR of the last matter the PAD made.

The daemon's UI serves at once; the fixtures start in the background and the daemon's tasks
wait for them (:meth:`SimHall.wait_chain`, ``wait_hsm``, ``wait_identity``).
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

CITIZEN = "astronaut"  # enrolled with the identity double; subject = SM3(b"astronaut")
PIN = "20240917"  # the PIN the hall's technician sets on its crypto module (not the factory's)
CHAIN_ID = "sim-hall"
SERVICE = "hil-identity"
DISTRICT = "haidian"
DOCUMENTS = (  # name, kind, file name, issuing office index
    ("居民身份证 Resident ID card", "resident_id_card", "resident-id-card.txt", 0),
    ("户口簿 Household register", "household_register", "household-register.txt", 1),
    ("不动产权证书 Real-estate certificate", "real_estate_certificate",
     "real-estate-certificate.txt", 2),
)


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

    def to_json(self, index: int) -> dict[str, Any]:
        return {"index": index, "name": self.name, "kind": self.kind, "issuer": self.issuer,
                "filename": self.filename, "digest": self.digest.hex(),
                "tx_id": self.tx_id.hex(), "size": len(self.document)}


class SimHall:
    """The fixtures of one simulated hall; ``config`` is the daemon's configuration for it
    (state in the temporary directory, discovery on loopback)."""

    def __init__(self, cfg: Config, *, block_interval_ms: int = 1000, fps: float = 15.0,
                 base_dir: str | os.PathLike[str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="appliance-sim-", dir=base_dir))
        self.block_interval_ms = block_interval_ms
        self.fps = fps
        self.config = replace(
            cfg, state_dir=self.dir / "state",
            node=replace(cfg.node, discover=True, discover_interfaces=("127.0.0.1",)),
            audit=replace(cfg.audit, path=None))
        self.chain_dir = self.dir / "chain"
        self.trust_path = self.chain_dir / "trust.cbor"
        self.hsm_device = str(self.dir / "gmcrypto0")
        self.hsm_pin = PIN
        self.citizen = CITIZEN
        self.peer_urls: list[str] = []
        self.samples: list[Sample] = []
        self.identity_url = ""
        self.identity_public_key: bytes | None = None
        self.identity_service = SERVICE
        self.device_public_key: bytes | None = None
        self.enroll_tx_id: bytes | None = None
        self.last_matter_qr: str | None = None
        self.subject: Any = None
        self.timings: dict[str, float] = {}
        self._nodes: list[Any] = []
        self._emulator: Any = None
        self._identity: Any = None
        self._task: asyncio.Task[None] | None = None
        self._ready: dict[str, asyncio.Event] = {}
        self._failed: BaseException | None = None
        self._watch: asyncio.Task[None] | None = None
        self._screen: str | None = None
        self._t0 = time.monotonic()

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

    async def wait_chain(self) -> None:
        await self.wait("chain")

    async def wait_hsm(self) -> None:
        await self.wait("hsm")

    async def wait_identity(self) -> None:
        await self.wait("identity")

    async def _start(self) -> None:
        t0 = time.monotonic()
        try:
            emulator = asyncio.create_task(asyncio.to_thread(self._start_emulator))
            await asyncio.to_thread(self._make_chain)
            await self._start_nodes()
            self.timings["chain_s"] = time.monotonic() - t0
            self._ready["chain"].set()
            identity = asyncio.create_task(self._start_identity())
            await emulator
            await self._enroll()
            self.timings["hsm_s"] = time.monotonic() - t0
            self._ready["hsm"].set()
            await self._deposit()
            await self._included([s.tx_id for s in self.samples] + [self.enroll_tx_id])
            await identity
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
        if self._watch is not None:
            self._watch.cancel()
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
        if self._emulator is not None:
            await asyncio.to_thread(self._emulator.stop)
            self._emulator = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def info(self) -> dict[str, Any]:
        """For /api/health in sim mode (a test rig reads where the fixtures are)."""
        return {"dir": str(self.dir), "trust": str(self.trust_path), "peers": self.peer_urls,
                "identity": self.identity_url, "samples": len(self.samples),
                "ready": bool(self._ready) and self._ready["all"].is_set(),
                "device_public_key": None if self.device_public_key is None
                else self.device_public_key.hex(), "timings_s": self.timings}

    # -- the chain and the district nodes ----------------------------------------------------

    def _make_chain(self) -> None:
        from hil import chain as hc

        now = int(time.time() * 1000)
        params = hc.ChainParams(chain_id=CHAIN_ID, seed="sim-hall", validators=4,
                                issuers=3, start_ms=now - 10_000, interval_ms=1000)
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
                                log=node_log("node-b"))
        # One pending pool, one enrollment list: what either accepts is in the producer's
        # next block (see the module docstring).
        follower._pending = producer._pending
        follower._enrolled = producer._enrolled
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

    # -- the crypto module ---------------------------------------------------------------------

    def _start_emulator(self) -> None:
        from hil.hsm_emulator import HsmEmulator, provision

        emu = HsmEmulator(self.hsm_device, self.dir / "module.bin",
                          log_path=self.dir / "hsm-emulator.log")
        emu.start()
        self._emulator = emu
        # as a technician sets up a new module: the factory PIN changed, the device key made
        self.device_public_key, _ = provision(emu.port, slot=self.config.hsm.slot, pin=PIN)

    async def _enroll(self) -> None:
        from appliance.gm import sm3
        from hil import chain as hc

        assert self.device_public_key is not None
        with hc.Chain.open(self.chain_dir, readonly=True) as chain:
            admin = chain.keys(hc.ROLE_ADMIN)[0]
        data = {"terminal": sm3.digest(self.device_public_key), "alg": "sm2",
                "public_key": self.device_public_key, "district": DISTRICT,
                "hall": self.config.kiosk.hall, "role": self.config.kiosk.mode}
        self.enroll_tx_id = await self._post_tx(hc.sign_tx(admin, self._body(
            admin, "device.enroll", data)))

    async def _deposit(self) -> None:
        from appliance.gm import sm3
        from hil import chain as hc

        with hc.Chain.open(self.chain_dir, readonly=True) as chain:
            issuers = chain.keys(hc.ROLE_ISSUER)
        for name, kind, filename, office in DOCUMENTS:
            key = issuers[office % len(issuers)]
            serial = os.urandom(8).hex()
            document = (f"{name}\nserial {serial}\nholder {CITIZEN}\nissued by {key.label}\n"
                        "SIMULATED DOCUMENT, test fixture\n").encode()
            digest = sm3.digest(document)
            tx_id = await self._post_tx(hc.sign_tx(key, self._body(
                key, "evidence.deposit", {"digest": digest, "kind": kind,
                                          "issuer": key.label})))
            self.samples.append(Sample(name, kind, key.label, filename, document, digest,
                                       tx_id))

    async def _included(self, tx_ids: list[bytes | None], timeout_s: float = 30.0) -> None:
        """Wait until the producer's chain holds every one of ``tx_ids`` (so that "ready"
        means the samples can be verified and the terminal is enrolled in a block)."""
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
                raise RuntimeError("the deposits were not included in a block in time")
            await asyncio.sleep(0.1)

    # -- the identity service --------------------------------------------------------------------

    async def _start_identity(self) -> None:
        from appliance.gm import sm2
        from hil import identity_service as ids

        def make() -> Any:
            private, public = sm2.generate_keypair()
            enrolled = ids.parse_enroll([f"{CITIZEN}=synthetic:astronaut"])
            lg = logging.getLogger("hil.sim_hall.identity")
            return ids.IdentityService(private, enrolled, service=SERVICE,
                                       log=lambda line: lg.info("%s", line)), public

        self._identity, self.identity_public_key = await asyncio.to_thread(make)
        self.identity_url = await self._identity.start()

    async def set_identity_mode(self, mode: str) -> None:
        """Tell the identity double how to answer (honest, no_match, timeout, ...)."""
        assert self._identity is not None
        self._identity.mode = mode

    # -- the camera ------------------------------------------------------------------------------

    def camera(self) -> AsyncIterator[tuple[Any, float]]:
        """Frames at ``fps`` in real time: the matter QR while the kiosk scans (when the PAD
        made one), else the synthetic subject, who answers each challenge shown."""
        from hil import synthetic_face as sf

        self.subject = sf.Subject(int.from_bytes(os.urandom(2), "big"), blink_every=0.0)
        self._t0 = time.monotonic()
        return self._frames()

    async def _frames(self) -> AsyncIterator[tuple[Any, float]]:
        period = 1.0 / self.fps
        next_at = time.monotonic()
        while True:
            now = time.monotonic()
            if next_at > now:
                await asyncio.sleep(next_at - now)
            next_at = max(next_at + period, time.monotonic() - period)
            t = time.monotonic()
            if self._screen == "scan" and self.last_matter_qr:
                frame = await asyncio.to_thread(qr_frame, self.last_matter_qr)
            else:
                frame = await asyncio.to_thread(self.subject.frame, t - self._t0)
            yield frame, t

    def attach_runner(self, runner: Any) -> None:
        """Follow the runner's messages: the screen (for the QR) and the challenge (for the
        subject to answer)."""
        if self._watch is not None:
            self._watch.cancel()
        self._watch = asyncio.create_task(self._follow(runner))

    async def _follow(self, runner: Any) -> None:
        async for msg in runner.subscribe():
            if isinstance(msg, dict) and msg.get("type") == "view":
                self._screen = (msg.get("view") or {}).get("screen")

    def capture_listener(self, events: list[Any], ts: float) -> None:
        """The runner's capture events with their frame time (our camera's clock): the
        synthetic subject answers each challenge as it is issued."""
        from appliance.kiosk.capture.events import ChallengeIssued

        if self.subject is None:
            return
        self.subject.on_events(events, ts - self._t0)
        for ev in events:
            if isinstance(ev, ChallengeIssued):
                log.info("synthetic subject answers challenge %d/%d: %s", ev.index + 1,
                         ev.total, ev.action)

    def note_matter(self, qr_text: str) -> None:
        """The PAD made a matter: the camera shows its QR while the kiosk scans."""
        self.last_matter_qr = qr_text


def qr_frame(text: str) -> Any:
    """A 640x480 BGR camera frame of a QR code held up to the camera (~4 px a module)."""
    import cv2
    import numpy as np

    from appliance.kiosk.matter import render_qr

    code = render_qr(text, module_px=4)
    side = min(440, code.shape[0])
    code = cv2.resize(code, (side, side), interpolation=cv2.INTER_NEAREST)
    frame = np.full((480, 640), 200, np.uint8)
    y, x = (480 - side) // 2, (640 - side) // 2
    frame[y:y + side, x:x + side] = code
    return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
