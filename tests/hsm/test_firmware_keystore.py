"""The module's key store (firmware/keystore.py) and power cuts at any byte of any write.

The A/B layout must give, after a cut anywhere: the old state or the new one, never a mix.
The Module-level test cuts key-store writes (key generation, deletion, signature counters)
and PIN-counter writes at seeded random points, restarts (new KeyStore + Module on the same
file) and checks every slot holds the old or the new key pair (never torn), counters never go
back, and the PIN retry counter never goes back up.
"""

import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.gm import sm2 as gm_sm2
from appliance.hsm.firmware import crypto, keystore, module
from appliance.hsm.proto import mcbor

PIN = "11223344"  # set by provisioning: the factory PIN cannot generate keys or sign
CARRY = ("generate_key", "delete_key", "sign", "change_pin")


class Clock:
    """The module's clock: its sleeps advance it (the PIN slow-down costs no real time)."""

    def __init__(self):
        self.ms = 0

    def now(self):
        return self.ms

    def sleep(self, ms):
        self.ms += ms


def _host():
    """call(m, op, **args) with the host's session added where the op carries one."""
    sessions = {}

    def call(m, op, **args):
        if op in CARRY and sessions.get(m) is not None:
            args["session"] = sessions[m]
        rsp = mcbor.decode(m.handle(mcbor.encode(dict(op=op, **args))))
        if rsp["ok"] and op == "login":
            sessions[m] = rsp["session"]
        return rsp

    return call


def _provision(path):
    """The technician's set-up: the factory PIN changed to PIN."""
    call = _host()
    m = module.Module(keystore.KeyStore(str(path)), crypto.load(True), os.urandom, lambda: 0)
    m.boot()
    assert call(m, "login", pin=module.DEFAULT_PIN)["ok"]
    assert call(m, "change_pin", old=module.DEFAULT_PIN, new=PIN)["ok"]


def _state(boot_count=0, slot=None, seed=0):
    s = keystore.default_state()
    s["boot_count"] = boot_count
    s["pin_salt"] = bytes([seed]) * 16
    s["pin_hash"] = bytes([seed + 1]) * 32
    if slot is not None:
        priv, pub = gm_sm2.generate_keypair()
        s["keys"][slot] = ["sm2", priv, pub]
        s["counters"][slot] = seed
    return s


def test_fresh_file_gives_defaults(tmp_path):
    store = keystore.KeyStore(str(tmp_path / "none.bin"))
    assert store.load() == keystore.default_state()
    assert not (tmp_path / "none.bin").exists()  # loading writes nothing


def test_save_load_alternates_regions(tmp_path):
    path = tmp_path / "s.bin"
    store = keystore.KeyStore(str(path))
    states = [_state(i, slot=i % 16, seed=i) for i in range(5)]
    for i, s in enumerate(states):
        store.save(s)
        raw = path.read_bytes()
        region = i % 2  # first record in A, then B, A, ...
        rec = raw[region * keystore.REGION:(region + 1) * keystore.REGION]
        assert rec[:4] == keystore.MAGIC
        assert struct.unpack(">I", rec[4:8])[0] == i + 1
        assert keystore.KeyStore(str(path)).load() == s
    assert store.writes == 5


def test_corrupt_newest_region_falls_back_to_previous(tmp_path):
    path = tmp_path / "s.bin"
    store = keystore.KeyStore(str(path))
    old, new = _state(1, slot=0), _state(2, slot=1)
    store.save(old)
    store.save(new)  # in region B
    raw = bytearray(path.read_bytes())
    raw[keystore.REGION + 40] ^= 0x01
    path.write_bytes(bytes(raw))
    fresh = keystore.KeyStore(str(path))
    assert fresh.load() == old
    fresh.save(new)  # goes to the region not holding the newest valid record: B again
    assert path.read_bytes()[:keystore.REGION] == bytes(raw[:keystore.REGION])
    assert keystore.KeyStore(str(path)).load() == new


def test_torn_write_at_every_byte_keeps_the_old_state(tmp_path):
    path = tmp_path / "s.bin"
    old = _state(1, slot=0, seed=1)
    new = _state(2, slot=0, seed=2)
    keystore.KeyStore(str(path)).save(old)
    keystore.KeyStore(str(path)).save(_state(0))  # so the next save overwrites a real record
    keystore.KeyStore(str(path)).save(old)
    base = path.read_bytes()
    n = len(keystore.encode_record(4, new))
    for m in range(n):
        path.write_bytes(base)
        store = keystore.KeyStore(str(path), cut=lambda size, m=m: m)
        with pytest.raises(keystore.PowerCut):
            store.save(new)
        assert keystore.KeyStore(str(path)).load() == old, m
    path.write_bytes(base)
    keystore.KeyStore(str(path), cut=lambda size: None).save(new)  # None: no cut
    assert keystore.KeyStore(str(path)).load() == new
    path.write_bytes(base)
    keystore.KeyStore(str(path), cut=lambda size: size).save(new)  # m == n: whole record
    assert keystore.KeyStore(str(path)).load() == new


def test_sequence_numbers_wrap(tmp_path):
    path = tmp_path / "s.bin"
    a, b = _state(1), _state(2)
    with open(path, "wb") as f:
        f.write(keystore.encode_record(0xFFFFFFFF, a))
        f.seek(keystore.REGION)
        f.write(keystore.encode_record(0, b))
    store = keystore.KeyStore(str(path))
    assert store.load() == b
    store.save(a)
    assert struct.unpack(">I", path.read_bytes()[4:8])[0] == 1
    assert keystore.KeyStore(str(path)).load() == a


def test_valid_crc_but_bad_schema_is_ignored(tmp_path):
    path = tmp_path / "s.bin"
    good = _state(1)
    bad = dict(good, pin_retries=9)
    with open(path, "wb") as f:
        f.write(keystore.encode_record(1, good))
        f.seek(keystore.REGION)
        f.write(keystore.encode_record(2, bad))
    assert keystore.KeyStore(str(path)).load() == good
    assert keystore.decode_record(keystore.encode_record(3, {"x": 1})) is None


def test_oversized_state_is_an_oserror(tmp_path):
    s = _state(1)
    s["pin_salt"] = bytes(keystore.REGION)
    with pytest.raises(OSError):
        keystore.KeyStore(str(tmp_path / "s.bin")).save(s)


def test_full_store_fits_a_region():
    s = keystore.default_state()
    for i in range(keystore.SLOTS):
        s["keys"][i] = ["sm2", b"\xff" * 32, b"\x04" + b"\xff" * 64]
        s["counters"][i] = 2**64 - 1
    s["boot_count"] = 2**64 - 1
    s["pin_salt"], s["pin_hash"] = bytes(16), bytes(32)
    assert len(keystore.encode_record(1, s)) <= keystore.REGION


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 15), st.one_of(st.none(), st.integers(0, 3000))),
                    min_size=1, max_size=12))
def test_random_cut_sequences(tmp_path_factory, ops):
    """Any sequence of saves, some cut: load() is always the last state whose save finished
    or the state being saved when a cut hit at the very last byte count (never happens here,
    m < n), i.e. exactly the last completed one."""
    path = tmp_path_factory.mktemp("ks") / "s.bin"
    committed = keystore.default_state()
    for i, (slot, cut_at) in enumerate(ops):
        new = keystore.copy_state(committed)
        new["boot_count"] = i + 1
        new["keys"][slot] = ["sm2", bytes([i]) * 32, b"\x04" + bytes([i]) * 64]
        store = keystore.KeyStore(str(path), cut=lambda n, c=cut_at: None if c is None else c % n)
        if cut_at is None:
            store.save(new)
            committed = new
        else:
            with pytest.raises(keystore.PowerCut):
                store.save(new)
        assert keystore.KeyStore(str(path)).load() == committed


def test_copy_state_is_deep_enough():
    s = _state(1, slot=2)
    c = keystore.copy_state(s)
    c["keys"][2][0] = "x"
    c["keys"][3] = ["sm2", bytes(32), bytes(65)]
    c["counters"][0] = 99
    assert s["keys"][2][0] == "sm2" and s["keys"][3] is None and s["counters"][0] == 0


# -- power cuts through the Module ----------------------------------------------------------


class CutPlan:
    """Cut the k-th store write from now at a random byte (seeded), or never."""

    def __init__(self, rng):
        self.rng = rng
        self.countdown = None
        self.cuts = 0

    def arm(self, k):
        self.countdown = k

    def __call__(self, n):
        if self.countdown is None:
            return None
        if self.countdown > 0:
            self.countdown -= 1
            return None
        self.countdown = None
        self.cuts += 1
        return self.rng.randrange(n)


def _consistent(entry):
    return entry is None or (entry[0] == "sm2" and gm_sm2.public_key_of(entry[1]) == entry[2])


def test_power_cuts_at_random_points_of_module_writes(tmp_path):
    rng = random.Random(20240611)
    path = tmp_path / "s.bin"
    plan = CutPlan(rng)
    backend = crypto.load(True)
    clock = Clock()
    _provision(path)
    call = _host()

    def start():
        store = keystore.KeyStore(str(path), cut=plan)
        m = module.Module(store, backend, os.urandom, clock.now, sleep_ms=clock.sleep)
        m.boot()
        return m

    m = start()
    assert call(m, "login", pin=PIN)["ok"]
    for slot in range(4):
        assert call(m, "generate_key", slot=slot, alg="sm2")["ok"]
    ops = ("keygen", "keygen", "delete", "sign", "sign", "bad_pin", "bad_pin", "good_pin",
           "boot")
    cuts_by_kind = dict.fromkeys(ops, 0)
    rounds = 0
    while plan.cuts < 240:
        rounds += 1
        assert rounds < 2000
        before = keystore.KeyStore(str(path)).load()
        kind = rng.choice(ops)
        slot = rng.randrange(4)
        # cut the first or (for two-write operations) the second write
        plan.arm(rng.randrange(2) if kind in ("good_pin", "bad_pin") else 0)
        try:
            if kind == "keygen":
                rsp = call(m, "generate_key", slot=slot, alg="sm2", overwrite=True)
            elif kind == "delete":
                rsp = call(m, "delete_key", slot=slot)
            elif kind == "sign":
                rsp = call(m, "sign", slot=slot, message=b"m")
            elif kind == "bad_pin":
                rsp = call(m, "login", pin="999999")
            elif kind == "good_pin":
                rsp = call(m, "login", pin=PIN)
            else:
                m = start()
                rsp = None
            cut = False
        except keystore.PowerCut:
            cut = True
            cuts_by_kind[kind] += 1
        plan.arm(None)
        if not cut:
            if rsp is not None and not rsp["ok"]:
                assert rsp["error"] in ("KEYNOTEXIST", "PARDENY", "PIN_LOCKED"), rsp
        after = keystore.KeyStore(str(path)).load()
        for s in range(keystore.SLOTS):
            assert _consistent(after["keys"][s]), (kind, s)
            if s != slot or kind not in ("keygen", "delete"):
                assert after["keys"][s] == before["keys"][s], (kind, s)
        if kind == "delete":
            assert after["keys"][slot] in (before["keys"][slot], None)
        for s in range(keystore.SLOTS):  # a cut sign leaves the old or the new count
            assert after["counters"][s] in (before["counters"][s], before["counters"][s] + 1)
        if kind == "good_pin":  # the try's write cut, the reset's write cut, or both done
            assert after["pin_retries"] in (before["pin_retries"], before["pin_retries"] - 1, 5)
        else:
            assert before["pin_retries"] - 1 <= after["pin_retries"] <= before["pin_retries"]
        assert after["boot_count"] in (before["boot_count"], before["boot_count"] + 1)
        if cut:
            m = start()  # the emulator restarts the firmware after exit status 75
        if after["pin_retries"] <= 1 or not m.logged_in:  # keep the PIN and session usable
            assert call(m, "login", pin=PIN)["ok"]
    assert plan.cuts >= 240
    assert all(cuts_by_kind[k] > 0 for k in ops), cuts_by_kind


def test_pin_counter_never_goes_up_under_cuts(tmp_path):
    """Only wrong PINs, each attempt's write cut at a random byte: the count only goes down."""
    rng = random.Random(7)
    path = tmp_path / "s.bin"
    plan = CutPlan(rng)
    backend = crypto.load(True)
    clock = Clock()
    last = 5
    cuts = 0
    for _ in range(60):
        store = keystore.KeyStore(str(path), cut=plan)
        m = module.Module(store, backend, os.urandom, clock.now, sleep_ms=clock.sleep)
        m.boot()
        plan.arm(0 if rng.random() < 0.6 else None)
        try:
            rsp = mcbor.decode(m.handle(mcbor.encode({"op": "login", "pin": "000000"})))
            assert rsp["error"] in ("PARDENY", "PIN_LOCKED")
        except keystore.PowerCut:
            cuts += 1
        plan.arm(None)
        now = keystore.KeyStore(str(path)).load()["pin_retries"]
        assert now <= last
        last = now
    assert last == 0 and cuts > 0
