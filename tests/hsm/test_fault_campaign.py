"""Fault campaign: 10^5+ frames through the HIL fault injector between the real host link and
the real firmware, in simulated time.

Everything here is the production code except the wire: HostLink (the driver's protocol
core), ModuleLink + Module + KeyStore (the firmware, on CPython with the fast crypto), and
hil.faults.LineFaults damaging both directions (bit flips, drops, duplicates, delays) plus
module resets every N frames. Because the cores are sans-I/O, time is simulated and the
campaign runs in seconds; the same injector runs over a real pty in test_module_over_pty.py.

The property: every command ends in a correct result or a typed failure, zero wrong results
are accepted, and no command is executed twice (the slot's signature counter advances by
exactly one per signature the host received, except across failures whose outcome is unknown).
"""

from __future__ import annotations

import heapq
import os

import pytest

from appliance import wire
from appliance.gm import sm2, sm4
from appliance.hsm.firmware import crypto as fw_crypto
from appliance.hsm.firmware.keystore import KeyStore
from appliance.hsm.firmware.module import Module
from appliance.hsm.proto.hostlink import HostLink
from appliance.hsm.proto.modlink import ModuleLink
from hil.faults import FaultSpec, LineFaults

SM4_KEY = bytes(range(16))
SM4_IV = bytes(16)


class SimulatedRig:
    """Host and module joined by two faulty one-way lines, driven by a simulated clock."""

    def __init__(self, store_path, spec: FaultSpec, seed: int, response_timeout=0.05) -> None:
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
        self._boot()

    def _boot(self) -> None:
        self.module = Module(KeyStore(str(self.store_path)), self.crypto, os.urandom,
                             lambda: int(self.now * 1000))
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

    def call(self, op: str, **args) -> tuple[str, object]:
        """("ok", response) or ("failed", reason) for one command."""
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
                assert deadline is not None, "no request running and nothing in flight"
                self.now = max(self.now, deadline)
                events = self.host.poll(self.now)
            for event in events:
                if event[0] == "send":
                    self._send("h", event[1])
                elif event[0] == "response":
                    return "ok", wire.decode(event[1], max_size=8192)
                elif event[0] == "failed":
                    return "failed", event[1]


def run_campaign(tmp_path, spec: str, seed: int, min_frames: int):
    rig = SimulatedRig(tmp_path / "store.bin", FaultSpec.parse(spec), seed)
    counts = {"ok": 0, "failed": 0, "refused": 0}
    public_key = None
    last_counter = None  # counter of the last signature, None after an unknown outcome
    step = 0
    while rig.frames < min_frames:
        step += 1
        kind = step % 5
        if public_key is None:
            status, r = rig.call("login", pin="123456")
            if status == "ok" and r["ok"]:
                status, r = rig.call("generate_key", slot=0, alg="sm2", overwrite=True)
                if status == "ok" and r["ok"]:
                    public_key = r["public_key"]
            continue
        if kind == 0:
            message = step.to_bytes(4, "big")
            status, r = rig.call("sign", slot=0, message=message)
            if status == "ok" and r["ok"]:
                assert sm2.verify(public_key, message, r["signature"]), "wrong signature accepted"
                if last_counter is not None:
                    assert r["counter"] == last_counter + 1, "a sign executed twice or skipped"
                last_counter = r["counter"]
            elif status == "ok" and r["error"] == "PARDENY":
                # The module restarted unseen (its BOOT lost): a copy of an earlier sign may
                # have run before it, so the count goes on from an unknown value.
                rig.call("login", pin="123456")
                last_counter = None
            else:
                last_counter = None
        elif kind == 1:
            status, r = rig.call("random", length=24)
            if status == "ok":
                assert r["ok"] and len(r["data"]) == 24
        elif kind == 2:
            status, r = rig.call("public_key", slot=0)
            if status == "ok":
                assert r["ok"] and r["public_key"] == public_key, "wrong key accepted"
        elif kind == 3:
            data = step.to_bytes(16, "big")
            status, r = rig.call("sm4", mode="cbc", encrypt=True, key=SM4_KEY, iv=SM4_IV,
                                 data=data)
            if status == "ok":
                assert r["ok"] and r["data"] == sm4.encrypt_cbc_raw(SM4_KEY, SM4_IV, data)
        else:
            status, r = rig.call("info")
            if status == "ok":
                assert r["ok"] and r["protocol"] == 1
        if status == "failed":
            assert r in ("module_reset", "timeout", "link_down")
            counts["failed"] += 1
            if kind == 0:
                last_counter = None
        elif not r["ok"]:
            counts["refused"] += 1
        else:
            counts["ok"] += 1
    return rig, counts


@pytest.mark.slow
def test_fault_campaign_100k_frames(tmp_path):
    spec = "flip=0.001,drop=0.001,dup=0.001,delay_ms=0-20,reset_every=500"
    rig, counts = run_campaign(tmp_path, spec, seed=20261129, min_frames=100_000)
    assert rig.frames >= 100_000
    assert rig.resets >= 100
    assert rig.to_module.stats.flipped and rig.to_host.stats.dropped
    assert rig.to_module.stats.duplicated and rig.to_host.stats.duplicated
    # Most commands get through; every failure above was a typed one.
    assert counts["ok"] > 10 * counts["failed"], counts


def test_clean_line_has_no_failures(tmp_path):
    rig, counts = run_campaign(tmp_path, "", seed=1, min_frames=2_000)
    assert counts["failed"] == 0 and counts["refused"] == 0
    assert rig.resets == 0


def test_campaign_would_catch_double_execution(tmp_path, monkeypatch):
    # The property has teeth: with the module's duplicate cache disabled, retransmitted signs
    # run twice and the counter check fires.
    original = ModuleLink.respond

    def respond_and_forget(self, seq, request_payload, response_payload):
        wire_bytes = original(self, seq, request_payload, response_payload)
        self._cache = None
        return wire_bytes

    monkeypatch.setattr(ModuleLink, "respond", respond_and_forget)
    with pytest.raises(AssertionError, match="executed twice"):
        run_campaign(tmp_path, "drop=0.02", seed=7, min_frames=20_000)
