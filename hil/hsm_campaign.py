"""A simulated crypto-module rig for fault campaigns: HIL fault injection in simulated time.

Everything is the production code except the wire: :class:`HostLink` (the driver's protocol
core), ``ModuleLink`` + ``Module`` + ``KeyStore`` (the firmware, on CPython with the fast
crypto), and :class:`hil.faults.LineFaults` damaging both directions (bit flips, drops,
duplicates, delays) plus module resets every N frames. Because the cores are sans-I/O, time
is simulated: 10^5 frames take seconds. ``tests/hsm/test_fault_campaign.py`` runs it in CI and
``bench/hsm_soak.py`` runs 10^6 frames.

The property checked by :func:`run_campaign`: every command ends in a correct result or a
typed failure, no wrong result is accepted, and no command is executed twice (the slot's
signature counter advances by exactly one per signature the host received, except across
failures whose outcome is unknown).

The simulated host does what the driver does with sessions: it keeps the session its last
successful login returned, sends it with every command that carries one, and logs in again
when the module refuses it (the module restarted: a BOOT it may not have seen). The module is
provisioned first, as a technician does (its factory PIN changed), on a clean line.
"""

from __future__ import annotations

import heapq
import os
from pathlib import Path

from appliance import wire
from appliance.gm import sm2, sm4
from appliance.hsm.firmware import crypto as fw_crypto
from appliance.hsm.firmware.keystore import KeyStore
from appliance.hsm.firmware.module import Module
from appliance.hsm.proto.hostlink import HostLink
from appliance.hsm.proto.modlink import ModuleLink
from hil.faults import FaultSpec, LineFaults
from hil.hsm_emulator import provision_store


class CampaignFailure(AssertionError):
    """The campaign saw a wrong result, a double execution or an untyped failure."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise CampaignFailure(what)


SM4_KEY = bytes(range(16))
SM4_IV = bytes(16)
PIN = "13572468"  # set at provisioning
_CARRY_SESSION = ("change_pin", "generate_key", "delete_key", "sign", "sign_digest", "decrypt",
                  "logout", "reset", "hash_init", "hash_update", "hash_final")


class SimulatedRig:
    """Host and module joined by two faulty one-way lines, driven by a simulated clock."""

    def __init__(self, store_path: Path, spec: FaultSpec, seed: int,
                 response_timeout: float = 0.05) -> None:
        self.now = 0.0
        self.spec = spec
        self.store_path = store_path
        self.to_module = LineFaults(spec, seed, "host->module")
        self.to_host = LineFaults(spec, seed, "module->host")
        self.queue: list[tuple[float, int, str, bytes]] = []  # (at, order, direction, bytes)
        self.order = 0
        self.frames = 0
        self.frames_since_reset = 0
        self.resets = 0
        self.host = HostLink(response_timeout=response_timeout, max_retries=3)
        self.crypto = fw_crypto.load(fast=True)
        self.session: bytes | None = None  # the host's: what its last login returned
        provision_store(store_path, PIN)
        self._boot()

    def _sleep_ms(self, ms: int) -> None:
        self.now += ms / 1000  # the module pauses in simulated time too

    def _boot(self) -> None:
        self.module = Module(KeyStore(str(self.store_path)), self.crypto, os.urandom,
                             lambda: int(self.now * 1000), sleep_ms=self._sleep_ms)
        self.mlink = ModuleLink()
        info = self.module.boot()
        self._send("m", self.mlink.boot(wire.encode(info)))

    def _send(self, direction: str, data: bytes) -> None:
        self.frames += data.count(0)
        line = self.to_module if direction == "h" else self.to_host
        for at, chunk in line.apply(data, self.now):
            heapq.heappush(self.queue, (at, self.order, direction, chunk))
            self.order += 1

    def _module_receives(self, data: bytes) -> None:
        frames = data.count(0)
        self.frames_since_reset += frames
        if self.spec.reset_every and self.frames_since_reset >= self.spec.reset_every:
            self.frames_since_reset = 0
            self.resets += 1
            # Power reset: bytes in flight towards the module are lost with it.
            self.queue = [item for item in self.queue if item[2] != "h"]
            heapq.heapify(self.queue)
            self._boot()
            return
        for action in self.mlink.feed(data):
            if action[0] == "send":
                self._send("m", action[1])
            else:
                _, seq, payload = action
                response = self.module.handle(payload)
                self._send("m", self.mlink.respond(seq, payload, response))

    def login(self, pin: str = PIN) -> tuple[str, object]:
        """Log in; the session is kept only when the login succeeded."""
        status, r = self.call("login", pin=pin)
        if status == "ok" and r["ok"]:
            check(isinstance(r["session"], bytes) and len(r["session"]) == 16, "bad session")
            self.session = r["session"]
        return status, r

    def call(self, op: str, **args) -> tuple[str, object]:
        """("ok", response) or ("failed", reason) for one command; the host's session goes
        with the commands that carry one."""
        if op in _CARRY_SESSION and self.session is not None:
            args["session"] = self.session
        self._send("h", self.host.request(wire.encode({"op": op, **args}), self.now))
        while True:
            deadline = self.host.deadline()
            if self.queue and (deadline is None or self.queue[0][0] <= deadline):
                at, _, direction, data = heapq.heappop(self.queue)
                self.now = max(self.now, at)
                if direction == "h":
                    self._module_receives(data)
                    continue
                events = self.host.feed(data, self.now)
            else:
                check(deadline is not None, "no request running and nothing in flight")
                self.now = max(self.now, deadline)
                events = self.host.poll(self.now)
            for event in events:
                if event[0] == "send":
                    self._send("h", event[1])
                elif event[0] == "boot":
                    self.session = None  # the module forgot it
                elif event[0] == "response":
                    return "ok", wire.decode(event[1], max_size=8192)
                elif event[0] == "failed":
                    return "failed", event[1]


def run_campaign(store_path, spec: str, seed: int, min_frames: int):
    """Drive a mix of commands until ``min_frames`` frames passed; CampaignFailure on a wrong
    result, a double execution or an untyped failure. Returns (rig, outcome counts)."""
    rig = SimulatedRig(store_path, FaultSpec.parse(spec), seed)
    counts = {"ok": 0, "failed": 0, "refused": 0}
    public_key = None
    last_counter = None  # counter of the last signature, None after an unknown outcome
    step = 0
    while rig.frames < min_frames:
        step += 1
        kind = step % 5
        if public_key is None:
            status, r = rig.login()
            if status == "ok" and r["ok"]:
                status, r = rig.call("generate_key", slot=0, alg="sm2", overwrite=True)
                if status == "ok" and r["ok"]:
                    public_key = r["public_key"]
            continue
        if kind == 0:
            message = step.to_bytes(4, "big")
            status, r = rig.call("sign", slot=0, message=message)
            if status == "ok" and r["ok"]:
                check(sm2.verify(public_key, message, r["signature"]), "wrong signature accepted")
                if last_counter is not None:
                    check(r["counter"] == last_counter + 1, "a sign executed twice or skipped")
                last_counter = r["counter"]
            elif status == "ok" and r["error"] == "PARDENY":
                # The module restarted unseen (its BOOT lost) and forgot the session: a copy
                # of an earlier sign may have run before it, so the count goes on from an
                # unknown value.
                rig.login()
                last_counter = None
            else:
                last_counter = None
        elif kind == 1:
            status, r = rig.call("random", length=24)
            if status == "ok":
                check(r["ok"] and len(r["data"]) == 24, "wrong random")
        elif kind == 2:
            status, r = rig.call("public_key", slot=0)
            if status == "ok":
                check(r["ok"] and r["public_key"] == public_key, "wrong key accepted")
        elif kind == 3:
            data = step.to_bytes(16, "big")
            status, r = rig.call("sm4", mode="cbc", encrypt=True, key=SM4_KEY, iv=SM4_IV,
                                 data=data)
            if status == "ok":
                check(r["ok"] and r["data"] == sm4.encrypt_cbc_raw(SM4_KEY, SM4_IV, data),
                      "wrong SM4 result")
        else:
            status, r = rig.call("info")
            if status == "ok":
                check(r["ok"] and r["protocol"] == 1, "wrong info")
        if status == "failed":
            check(r in ("module_reset", "timeout", "link_down"), "untyped failure")
            counts["failed"] += 1
            if kind == 0:
                last_counter = None
        elif not r["ok"]:
            counts["refused"] += 1
        else:
            counts["ok"] += 1
    return rig, counts
