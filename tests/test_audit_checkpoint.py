"""Checkpoints signed with the device key, and the heads anchored on chain (appliance.audit,
docs/audit.md "Checkpoints" and "Anchoring on chain").

Tampering is done as someone who can write the files but has no device key would do it:
entries removed or changed, then every later entry renumbered, relinked and re-hashed
(:func:`rechain`), checkpoint fields included, so that the hash chain checks again and only
a signature, the counter rule or an outside record can tell.
"""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
import pytest

from appliance import audit, wire
from appliance.audit import (
    CHECKPOINT_DOMAIN,
    DAY_MS,
    AnchorHead,
    AuditCheckpointError,
    AuditCorrupt,
    AuditLog,
    anchor_head,
    checkpoint_message,
    entry_hash,
    key_id,
    verify,
)
from appliance.gm import sm2, sm3

T0 = 1_763_964_000_000  # 2025-11-24T06:00Z


class Clock:
    def __init__(self, start: int = T0, step: int = 60_000) -> None:
        self.now, self.step = start, step

    def __call__(self) -> int:
        self.now += self.step
        return self.now


class DeviceKey:
    """The device key as the log sees it (``CheckpointSigner``): SM2 signatures with a
    signature counter that only goes up, as the crypto module's. The real module signs in
    :func:`test_checkpoints_signed_inside_the_crypto_module`."""

    def __init__(self, counter: int = 100) -> None:
        self._private, self.public_key = sm2.generate_keypair()
        self.counter = counter
        self.last_counter: int | None = None
        self.fail: Exception | None = None

    def sign(self, message: bytes) -> bytes:
        if self.fail is not None:
            raise self.fail
        self.counter += 1
        self.last_counter = self.counter
        return sm2.sign(self._private, message)


def segments(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix == ".jsonl")


def entries(path: Path) -> list[dict]:
    return [json.loads(raw) for seg in segments(path) for raw in seg.read_bytes().splitlines()]


def canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def rechain(path: Path, change, *, each=None) -> None:
    """Apply ``change`` to the list of entries (per segment), then renumber, relink and
    re-hash everything, fix every checkpoint's head, head_seq and segment, and rename the
    segments: what an attacker without the device key can do. ``each(entry)`` runs on
    every entry once relinked, before it is hashed."""
    segs = [[json.loads(raw) for raw in seg.read_bytes().splitlines()] for seg in segments(path)]
    seq, prev = segs[0][0]["seq"], segs[0][0]["prev"]
    change(segs)
    for seg in segments(path):
        seg.unlink()
    prev_segment = None
    for seg_entries in segs:
        if not seg_entries:
            continue
        name = f"{seq:012d}.jsonl"
        for e in seg_entries:
            e["seq"], e["prev"] = seq, prev
            if e["kind"] == "checkpoint":
                e["fields"].update(head_seq=seq - 1, head=prev, segment=prev_segment)
            if each is not None:
                each(e)
            e["hash"] = entry_hash(seq, e["ts"], e["kind"], e["fields"],
                                   bytes.fromhex(prev)).hex()
            prev, seq, prev_segment = e["hash"], seq + 1, name
        (path / name).write_bytes(b"".join(canonical(e) + b"\n" for e in seg_entries))


def where(segs: list[list[dict]], pred) -> list[tuple[int, int]]:
    return [(i, j) for i, s in enumerate(segs) for j, e in enumerate(s) if pred(e)]


def signed_log(path: Path, n: int = 35, every: int = 10, step: int = 60_000,
               key: DeviceKey | None = None) -> tuple[AuditLog, DeviceKey]:
    key = key or DeviceKey()
    log = AuditLog(path, clock_ms=Clock(step=step), signer=key, checkpoint_every=every)
    for i in range(n):
        log.append("login", user=f"clerk{i}", n=i)
    return log, key


def refused(path: Path, key: DeviceKey, error: str, index: int) -> audit.VerifyReport:
    report = verify(path, public_key=key.public_key)
    assert (report.ok, report.error, report.index) == (False, error, index), report
    return report


# -- writing ----------------------------------------------------------------------------------


def test_a_checkpoint_after_every_n_entries(tmp_path):
    log, key = signed_log(tmp_path, n=35, every=10)
    es = entries(tmp_path)
    kinds = [e["kind"] for e in es]
    # one checkpoint right after each 10th entry
    assert [i for i, k in enumerate(kinds) if k == "checkpoint"] == [10, 21, 32]
    assert len(es) == 38
    counters = []
    for e in es:
        if e["kind"] != "checkpoint":
            continue
        f = e["fields"]
        assert f["reason"] == "count" and f["head_seq"] == e["seq"] - 1 and f["head"] == e["prev"]
        assert f["segment"] == segments(tmp_path)[0].name and f["signer"] == key_id(key.public_key)
        # the signed bytes, built here from the documented map (canonical CBOR, RFC 8949
        # deterministic: cbor2 as an independent encoder)
        message = cbor2.dumps({"domain": "appliance.audit.checkpoint/1",
                               "segment": f["segment"], "seq": f["head_seq"],
                               "head": bytes.fromhex(f["head"]), "ts": e["ts"]}, canonical=True)
        assert message == checkpoint_message(f["segment"], f["head_seq"],
                                             bytes.fromhex(f["head"]), e["ts"])
        assert sm2.verify(key.public_key, message, bytes.fromhex(f["signature"]))
        counters.append(f["counter"])
    assert counters == [101, 102, 103]
    report = verify(tmp_path, public_key=key.public_key, require_checkpoints=True)
    assert report.ok and report.signatures == "verified" and report.checkpoints == 3
    assert (report.checkpoint_seq, report.sealed_seq, report.unanchored) == (32, 31, 5)
    assert "5 entries after the last checkpoint are not yet anchored" in report.notes[0]
    assert log.checkpoint_error is None


def test_default_every_1000(tmp_path):
    assert AuditLog(tmp_path).checkpoint_every == audit.DEFAULT_CHECKPOINT_EVERY == 1000
    assert CHECKPOINT_DOMAIN == "appliance.audit.checkpoint/1"
    with pytest.raises(ValueError):
        AuditLog(tmp_path, checkpoint_every=0)


def test_a_checkpoint_closes_each_day(tmp_path):
    """The first entry of a new UTC day is preceded by a checkpoint of the day before: the
    first entry of the new segment, naming the closed segment and its last entry."""
    log, key = signed_log(tmp_path, n=50, every=1000, step=3_600_000)
    segs = segments(tmp_path)
    assert len(segs) == 3
    for older, newer in zip(segs, segs[1:], strict=False):
        last = json.loads(older.read_bytes().splitlines()[-1])
        first = json.loads(newer.read_bytes().splitlines()[0])
        assert first["kind"] == "checkpoint" and first["fields"]["reason"] == "day"
        assert first["fields"]["segment"] == older.name
        assert (first["fields"]["head_seq"], first["fields"]["head"]) == (last["seq"],
                                                                         last["hash"])
        assert first["ts"] // DAY_MS == last["ts"] // DAY_MS + 1  # in the new day
    for seg in segs:  # segments still follow the UTC day
        assert len({json.loads(x)["ts"] // DAY_MS for x in seg.read_bytes().splitlines()}) == 1
    assert verify(tmp_path, public_key=key.public_key).ok


def test_a_writer_without_a_signer_writes_as_before(tmp_path):
    log = AuditLog(tmp_path, clock_ms=Clock(step=3_600_000), checkpoint_every=3)
    for i in range(30):
        log.append("login", n=i)
    assert all(e["kind"] == "login" for e in entries(tmp_path))
    report = verify(tmp_path)
    assert report.ok and report.checkpoints == 0 and report.unanchored == 30
    assert report.signatures is None and "no checkpoint" in report.notes[0]
    key = DeviceKey()
    missing = verify(tmp_path, public_key=key.public_key, require_checkpoints=True)
    assert (missing.ok, missing.error) == (False, "checkpoint_missing")
    no_key = verify(tmp_path, require_checkpoints=True)
    assert (no_key.ok, no_key.error) == (False, "checkpoint_key")


def test_a_signer_given_later_checkpoints_at_once(tmp_path):
    log = AuditLog(tmp_path, clock_ms=Clock(), checkpoint_every=10)
    for i in range(25):  # before the module is logged in
        log.append("login", n=i)
    log.signer = key = DeviceKey()
    log.append("login", n=25)
    es = entries(tmp_path)
    assert es[-1]["kind"] == "checkpoint" and es[-1]["fields"]["head_seq"] == 25
    assert verify(tmp_path, public_key=key.public_key).unanchored == 0


def test_a_new_writer_counts_from_the_files(tmp_path):
    log, key = signed_log(tmp_path, n=14, every=10)  # checkpoint at seq 10, then 4 entries
    other = AuditLog(tmp_path, clock_ms=Clock(T0 + 3_600_000), signer=key,
                     checkpoint_every=10)
    for i in range(6):
        other.append("sign", n=i)
    kinds = [e["kind"] for e in entries(tmp_path)]
    assert [i for i, k in enumerate(kinds) if k == "checkpoint"] == [10, 21]
    assert verify(tmp_path, public_key=key.public_key).ok


def test_a_failing_signer_does_not_fail_the_append(tmp_path):
    key = DeviceKey()
    key.fail = OSError("module unplugged")
    log = AuditLog(tmp_path, clock_ms=Clock(), signer=key, checkpoint_every=20)
    for i in range(20):
        log.append("login", n=i)  # the 20th entry's checkpoint fails: the entry is written
    assert "module unplugged" in (log.checkpoint_error or "")
    assert verify(tmp_path).entries == 20
    key.fail = None
    log.append("login", n=20)  # no new try before checkpoint_every // 10 more entries
    assert entries(tmp_path)[-1]["kind"] == "login"
    log.append("login", n=21)
    assert entries(tmp_path)[-1]["kind"] == "checkpoint" and log.checkpoint_error is None
    assert verify(tmp_path, public_key=key.public_key).unanchored == 0


@pytest.mark.parametrize("fault", ["counter_back", "no_counter", "bad_signature"])
def test_the_writer_refuses_what_would_not_verify(tmp_path, fault):
    key = DeviceKey()
    log = AuditLog(tmp_path, clock_ms=Clock(), signer=key, checkpoint_every=5)
    for i in range(5):
        log.append("login", n=i)
    assert entries(tmp_path)[-1]["kind"] == "checkpoint"
    sign = key.sign
    if fault == "counter_back":
        key.counter = 50
    elif fault == "no_counter":
        key.sign = lambda m: (sign(m), setattr(key, "last_counter", None))[0]
    else:
        key.sign = lambda m: (sign(m), bytes(64))[1]
    for i in range(5):
        log.append("login", n=5 + i)
    assert entries(tmp_path)[-1]["kind"] == "login" and log.checkpoint_error
    with pytest.raises(AuditCheckpointError):
        log.checkpoint()
    assert verify(tmp_path, public_key=key.public_key).ok


def test_a_signer_without_a_counter_signs_no_checkpoint(tmp_path):
    from appliance.node.tx import SoftwareSigner

    class NoCounter(DeviceKey):
        def sign(self, message: bytes) -> bytes:
            signature = super().sign(message)
            self.last_counter = None
            return signature

    for signer in (NoCounter(), SoftwareSigner("sm2", sm2.generate_keypair()[0])):
        log = AuditLog(tmp_path / type(signer).__name__, clock_ms=Clock(), signer=signer,
                       checkpoint_every=3)
        for i in range(5):
            log.append("login", n=i)
        assert "counter" in (log.checkpoint_error or "")
        report = verify(log.path, public_key=signer.public_key)
        assert report.ok and report.checkpoints == 0 and report.entries == 5


def test_checkpoint_on_request(tmp_path):
    log, key = signed_log(tmp_path, n=3, every=10)
    entry = log.checkpoint()
    assert entry is not None and entry.fields["reason"] == "request"
    assert log.checkpoint() is None  # nothing after it
    assert verify(tmp_path, public_key=key.public_key).unanchored == 0
    with pytest.raises(AuditCheckpointError):
        AuditLog(tmp_path / "x").checkpoint()


def test_the_key_file(tmp_path):
    log, key = signed_log(tmp_path, n=10, every=10)
    assert audit.read_key_file(tmp_path) == key.public_key
    assert ((tmp_path / audit.KEY_FILE).stat().st_mode & 0o777) == 0o600
    assert audit.read_key_file(tmp_path / "nowhere") is None


def test_checkpoints_signed_inside_the_crypto_module(tmp_path):
    """The real signer: the device key in the (emulated) module, its persisted counter."""
    from appliance.hsm.client import Client
    from appliance.node.tx import ModuleSigner
    from hil.hsm_emulator import PROVISIONED_PIN, HsmEmulator, provision

    with HsmEmulator(tmp_path / "gm0", tmp_path / "module.bin") as emu:
        public, _ = provision(emu.port, slot=0)  # the factory PIN cannot sign
        client = Client(emu.port, pin=PROVISIONED_PIN)
        signer = ModuleSigner(client, 0)
        log = AuditLog(tmp_path / "audit", clock_ms=Clock(), signer=signer,
                       checkpoint_every=4)
        for i in range(9):
            log.append("login", n=i)
        client.sign(0, b"another use of the key: the counter moves on")
        log.append("login", n=9)
        log.checkpoint()
        client.close()
    counters = [e["fields"]["counter"] for e in entries(tmp_path / "audit")
                if e["kind"] == "checkpoint"]
    assert len(counters) == 3 and counters[1] == counters[0] + 1 and counters[2] == counters[1] + 2
    report = verify(tmp_path / "audit", public_key=public, require_checkpoints=True)
    assert report.ok and report.checkpoints == 3 and report.unanchored == 0


def test_a_new_device_key(tmp_path):
    """The module replaced (a new key, its counter starting low again): the log verifies
    with both keys; the counter rule holds per key; one key alone refuses the other's."""
    old, new = DeviceKey(counter=500), DeviceKey(counter=0)
    log = AuditLog(tmp_path, clock_ms=Clock(), signer=old, checkpoint_every=5)
    for i in range(12):
        log.append("login", n=i)
    log.signer = new
    for i in range(12):
        log.append("login", n=12 + i)
    signers = [(e["fields"]["signer"], e["fields"]["counter"]) for e in entries(tmp_path)
               if e["kind"] == "checkpoint"]
    assert [s for s, _ in signers] == [key_id(old.public_key)] * 2 + [key_id(new.public_key)] * 2
    assert [c for _, c in signers] == [501, 502, 1, 2]
    report = verify(tmp_path, public_key=[old.public_key, new.public_key])
    assert report.ok and report.keys == sorted([key_id(old.public_key),
                                                key_id(new.public_key)])
    refused(tmp_path, old, "checkpoint_key", 17)
    refused(tmp_path, new, "checkpoint_key", 5)
    assert audit.read_key_file(tmp_path) == new.public_key  # the newest checkpoints' key


# -- tampering that only checkpoints catch ------------------------------------------------------


def test_deleting_the_last_entries_before_the_latest_checkpoint_is_detected(tmp_path):
    log, key = signed_log(tmp_path)
    assert verify(tmp_path, public_key=key.public_key).ok

    def drop(segs):
        (i, j), = where(segs, lambda e: e["seq"] == 32)  # the latest checkpoint
        del segs[i][j - 3:j]  # the three entries before it

    rechain(tmp_path, drop)
    assert verify(tmp_path).ok  # the chain alone checks again: that is the defect
    report = refused(tmp_path, key, "checkpoint_signature", 29)
    assert report.entries == 29  # everything before the checkpoint verified


def test_deleting_entries_before_an_earlier_checkpoint_is_detected(tmp_path):
    log, key = signed_log(tmp_path)
    rechain(tmp_path, lambda segs: segs[0].pop(4))
    refused(tmp_path, key, "checkpoint_signature", 9)


def test_an_entry_changed_before_a_checkpoint_is_detected(tmp_path):
    log, key = signed_log(tmp_path)
    rechain(tmp_path, lambda segs: segs[0][15]["fields"].update(user="mallory"))
    refused(tmp_path, key, "checkpoint_signature", 21)


def test_deleting_the_entries_after_the_last_checkpoint_cannot_be_and_verify_says_so(tmp_path):
    log, key = signed_log(tmp_path)
    rechain(tmp_path, lambda segs: segs[-1].__delitem__(slice(-2, None)))
    report = verify(tmp_path, public_key=key.public_key, require_checkpoints=True)
    assert report.ok and report.unanchored == 3 and report.last_seq == 35
    assert report.notes[0].startswith("3 entries after the last checkpoint are not yet "
                                      "anchored")


def test_a_checkpoint_with_a_bad_signature(tmp_path):
    log, key = signed_log(tmp_path)

    def flip(segs):
        (i, j), = where(segs, lambda e: e["seq"] == 21)
        sig = segs[i][j]["fields"]["signature"]
        segs[i][j]["fields"]["signature"] = sig[:10] + ("0" if sig[10] != "0" else "1") + \
            sig[11:]

    rechain(tmp_path, flip)
    refused(tmp_path, key, "checkpoint_signature", 21)


def test_a_checkpoint_with_a_wrong_key(tmp_path):
    log, key = signed_log(tmp_path)
    refused(tmp_path, DeviceKey(), "checkpoint_key", 10)  # another device's key given
    # checkpoints re-signed by another key (naming it) are refused against the device's
    other = DeviceKey(counter=1000)

    def resign(e):
        if e["kind"] == "checkpoint":
            f = e["fields"]
            f["signer"] = key_id(other.public_key)
            f["signature"] = other.sign(checkpoint_message(
                f["segment"], f["head_seq"], bytes.fromhex(f["head"]), e["ts"])).hex()

    rechain(tmp_path, lambda segs: None, each=resign)
    assert verify(tmp_path, public_key=other.public_key).ok
    refused(tmp_path, key, "checkpoint_key", 10)


@pytest.mark.parametrize("counter", ["equal", "lower"])
def test_a_checkpoint_whose_counter_does_not_increase(tmp_path, counter):
    """The counter is not part of the signed bytes (the module gives it with the
    signature): rewriting it leaves every signature valid; only the counter rule breaks."""
    log, key = signed_log(tmp_path)

    def lower(segs):
        (i, j), = where(segs, lambda e: e["seq"] == 21)
        segs[i][j]["fields"]["counter"] = 101 if counter == "equal" else 7

    rechain(tmp_path, lower)
    report = refused(tmp_path, key, "checkpoint_counter", 21)
    assert "must increase" in report.detail


@pytest.mark.parametrize("what", ["head_seq", "head", "segment", "reason", "extra"])
def test_a_checkpoint_that_does_not_name_its_head(tmp_path, what):
    log, key = signed_log(tmp_path)
    change = {"head_seq": {"head_seq": 8}, "head": {"head": "ab" * 32},
              "segment": {"segment": "000000000099.jsonl"}, "reason": {"reason": "whim"},
              "extra": {"note": "x"}}[what]
    rechain(tmp_path, lambda segs: None,
            each=lambda e: e["fields"].update(change) if e["seq"] == 10 else None)
    report = verify(tmp_path)  # a structural rule: no key needed
    assert (report.error, report.index) == ("checkpoint", 10), report


# -- anchoring on chain -----------------------------------------------------------------------


def three_days(path: Path) -> tuple[AuditLog, DeviceKey]:
    return signed_log(path, n=50, every=1000, step=3_600_000)


def test_the_head_to_anchor_for_a_day(tmp_path):
    log, key = three_days(tmp_path)
    day = T0 // DAY_MS
    head = log.anchor_head(day + 1)
    es = entries(tmp_path)
    of_day = [e for e in es if e["ts"] // DAY_MS == day + 1]
    assert head == AnchorHead(day + 1, of_day[-1]["seq"], bytes.fromhex(of_day[-1]["hash"]),
                              of_day[-1]["ts"], segments(tmp_path)[1].name, of_day[0]["seq"])
    # the next day's closing checkpoint names the same head
    close = next(e for e in es if e["kind"] == "checkpoint" and e["ts"] // DAY_MS == day + 2)
    assert close["fields"]["head"] == head.digest.hex()
    enrollment = sm3.digest(b"enrollment tx")
    data = head.deposit_data(enrollment)
    assert data == {"digest": head.digest, "kind": "audit.head", "enrollment": enrollment}
    wire.encode(data)  # a §6 data map
    assert log.anchor_head(day + 10) is None
    assert anchor_head(tmp_path, day) is not None and anchor_head(tmp_path, day).first_seq == 0


def test_no_head_is_taken_from_a_log_that_does_not_verify(tmp_path):
    log, key = three_days(tmp_path)
    rechain(tmp_path, lambda segs: segs[0].pop(3))
    assert verify(tmp_path).ok
    with pytest.raises(AuditCorrupt, match="checkpoint_signature"):
        log.anchor_head(T0 // DAY_MS + 1)  # the writer checks with its signer's key


class Chain:
    """What the light node's lookup gives: deposits of kind audit.head by digest (verified
    on chain by the caller; the chain side is not part of the audit log)."""

    def __init__(self) -> None:
        self.deposits: dict[bytes, list[tuple[bytes, int, int]]] = {}
        self.asked: list[bytes] = []

    def lookup(self, digest: bytes) -> list[tuple[bytes, int, int]]:
        self.asked.append(digest)
        return self.deposits.get(digest, [])


def test_anchored_heads_checked_through_the_lookup(tmp_path):
    log, key = three_days(tmp_path)
    chain = Chain()
    for day in (T0 // DAY_MS, T0 // DAY_MS + 1):
        head = log.anchor_head(day)
        tx_id = sm3.digest(b"tx" + head.digest)
        chain.deposits[head.digest] = [(tx_id, 1000 + day, (day + 1) * DAY_MS + 5000)]
        log.record_anchor(head, tx_id, 1000 + day, (day + 1) * DAY_MS + 5000)
    report = verify(tmp_path, public_key=key.public_key, lookup=chain.lookup)
    assert report.ok and report.anchors == 2 and report.anchors_checked
    assert len(chain.asked) == 2
    assert verify(tmp_path).anchors_checked is False  # no lookup given
    # a deposit the chain does not have (or at another height) is refused
    missing = next(iter(chain.deposits))
    chain.deposits[missing] = [(chain.deposits[missing][0][0], 1, 2)]
    report = verify(tmp_path, lookup=chain.lookup)
    assert (report.ok, report.error) == (False, "anchor")
    del chain.deposits[missing]
    assert verify(tmp_path, lookup=chain.lookup).error == "anchor"


def test_an_anchored_entry_must_name_the_hash_of_its_head(tmp_path):
    log, key = three_days(tmp_path)
    head = log.anchor_head(T0 // DAY_MS)
    wrong = AnchorHead(head.day, head.seq - 1, head.digest, head.ts, head.segment,
                       head.first_seq)
    log.record_anchor(wrong, bytes(32), 1, 2)
    report = verify(tmp_path)
    assert (report.ok, report.error) == (False, "anchor")
    assert "not the hash of entry" in report.detail
