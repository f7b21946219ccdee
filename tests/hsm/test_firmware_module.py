"""Conformance of the crypto module's command processor (firmware/module.py), sans-I/O.

Every command of protocol v1 §3 and every error code the firmware can produce, one rule per
test, driven through Module.handle with canonical CBOR payloads (no framing). The results are
checked against independent code: appliance.gm (OpenSSL) and gmssl for SM2, appliance.gm.sm4
for SM4, appliance.gm.sm3 (hashlib) for SM3. Both firmware crypto backends run the suite's
core (the "pure" one is what MicroPython runs).
"""

import os

import pytest
from gmssl import sm2 as gmssl_sm2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.gm import sm2 as gm_sm2
from appliance.gm import sm3 as gm_sm3
from appliance.gm import sm4 as gm_sm4
from appliance.hsm.firmware import crypto, kat, keystore, module
from appliance.hsm.proto import codes, mcbor

FACTORY_PIN = module.DEFAULT_PIN
PIN = "11223344"  # what the harness's technician set at provisioning
NEW_PIN = "24680135"
DEFAULT_ID = b"1234567812345678"
AUTO = object()  # the harness's own session, when the op carries one
LOGIN_OPS = ["change_pin", "generate_key", "delete_key", "sign", "sign_digest", "decrypt"]
CARRY_OPS = set(LOGIN_OPS) | {"logout", "reset", "hash_init", "hash_update", "hash_final"}


class Harness:
    """A Module on a store file, with helpers; ``restart()`` is a power cycle.

    The module's clock is ``clock[0]`` (ms); its sleeps advance it, so pauses cost no real
    time. ``button`` is the reset button. ``provision`` (default) does the technician's
    set-up on a new module: the factory PIN is changed to PIN. The harness keeps the session
    of its last login and adds it to the commands that carry one (``_session=`` overrides:
    None sends none).
    """

    def __init__(self, path, backend="openssl", kat_fail=False, rand=os.urandom, store=None,
                 provision=True, **kwargs):
        self.path = path
        self.backend = crypto.load(backend == "openssl")
        self.kat_fail = kat_fail
        self.rand = rand
        self.store = store
        self.kwargs = kwargs
        self.progress_calls = 0
        self.clock = [0]
        self.sleeps = []
        self.button = False
        self.session = None
        self.responses = []  # every response payload, for the secrecy scan
        self.restart()
        if provision:
            self.provision()

    def _progress(self):
        self.progress_calls += 1

    def _sleep(self, ms):
        self.sleeps.append(ms)
        self.clock[0] += ms

    def restart(self):
        store = self.store if self.store is not None else keystore.KeyStore(str(self.path))
        self.m = module.Module(store, self.backend, self.rand, lambda: self.clock[0],
                               progress=self._progress, serial="TEST-0001",
                               kat_fail=self.kat_fail, sleep_ms=self._sleep,
                               presence=lambda: self.button, **self.kwargs)
        self.session = None
        self.boot_info = self.m.boot()
        return self.boot_info

    def provision(self, pin=PIN):
        """What a technician does first: log in with the factory PIN and change it."""
        self.login(FACTORY_PIN)
        self.ok("change_pin", old=FACTORY_PIN, new=pin)
        self.ok("logout")

    def raw(self, payload):
        rsp = self.m.handle(payload)
        self.responses.append(rsp)
        out = mcbor.decode(rsp)
        assert mcbor.encode(out) == rsp  # canonical
        return out

    def __call__(self, op, _session=AUTO, **args):
        if _session is AUTO:
            _session = self.session if op in CARRY_OPS else None
        if _session is not None:
            args["session"] = _session
        rsp = self.raw(mcbor.encode(dict(op=op, **args)))
        if rsp["ok"] and op == "login":
            self.session = rsp["session"]
        elif rsp["ok"] and op in ("logout", "factory_reset"):
            self.session = None
        return rsp

    def ok(self, op, _session=AUTO, **args):
        rsp = self(op, _session, **args)
        assert rsp["ok"] is True, rsp
        return rsp

    def err(self, name, op, _session=AUTO, **args):
        rsp = self(op, _session, **args)
        assert rsp["ok"] is False, rsp
        assert rsp["error"] == name, rsp
        assert rsp["code"] == codes.CODES[name]
        assert isinstance(rsp["message"], str) and rsp["message"]
        return rsp

    def login(self, pin=PIN):
        return self.ok("login", pin=pin)

    def state(self):
        """The persisted state (what a power cut would leave)."""
        return keystore.KeyStore(str(self.path)).load()

    def keygen(self, slot=0, overwrite=False):
        return self.ok("generate_key", slot=slot, alg="sm2", overwrite=overwrite)["public_key"]

    def private_key(self, slot):
        """Read the private key from the store file (test only: nothing else can)."""
        entry = keystore.KeyStore(str(self.path)).load()["keys"][slot]
        return None if entry is None else entry[1]


@pytest.fixture(params=["openssl", "pure"])
def hw(request, tmp_path):
    return Harness(tmp_path / "store.bin", backend=request.param)


@pytest.fixture
def fast(tmp_path):
    return Harness(tmp_path / "store.bin")


def gmssl_for(pub, priv=None):
    # gmssl strips "04" with str.lstrip: give it X || Y (callers avoid an X starting "04")
    return gmssl_sm2.CryptSM2(private_key=priv.hex() if priv else None, public_key=pub[1:].hex())


# -- boot, info, self test ------------------------------------------------------------------


def test_boot_payload_and_count_persist(tmp_path):
    h = Harness(tmp_path / "s.bin", provision=False)
    assert h.boot_info == {"firmware": module.FIRMWARE, "serial": "TEST-0001", "boot_count": 1}
    assert h.restart()["boot_count"] == 2
    assert h.restart()["boot_count"] == 3
    assert kat.passed(h.m.kat_results) and set(h.m.kat_results) == set(kat.NAMES)
    assert h.progress_calls >= len(kat.NAMES)  # between the KATs and around the store write


def test_info(hw):
    info = hw.ok("info")
    assert info == {"ok": True, "model": module.MODEL, "serial": "TEST-0001",
                    "firmware": module.FIRMWARE, "protocol": 1, "algs": ["sm2", "sm3", "sm4"],
                    "slots": 16, "max_payload": 4096, "logged_in": False, "pin_retries": 5,
                    "default_pin": False}
    hw.login()
    assert hw.ok("info")["logged_in"] is True


def test_self_test(hw):
    rsp = hw.ok("self_test")
    assert rsp["passed"] is True
    assert rsp["results"] == {name: True for name in kat.NAMES}


def test_kat_vectors_match_the_data_file():
    import json
    import pathlib

    data = json.loads((pathlib.Path(__file__).parents[1] / "data" / "gm-kat.json").read_text())
    assert kat.SM3_DIGEST.hex() == data["sm3"][0]["digest"]
    v = data["sm4"][0]
    assert (kat.SM4_KEY.hex(), kat.SM4_PLAIN.hex(), kat.SM4_CIPHER.hex()) == (
        v["key"], v["plaintext"], v["ciphertext"])
    s = data["sm2_sign"][0]
    assert kat.SM2_PRIV.hex() == s["private_key"].lower()
    assert kat.SM2_PUB.hex() == s["public_key"].lower()
    assert kat.SM2_ZA.hex() == s["z_a"].lower() and kat.SM2_E.hex() == s["e"].lower()
    assert kat.SM2_SIG.hex() == (s["r"] + s["s"]).lower()
    assert kat.SM2_K.hex() == s["k"].lower()


@pytest.mark.parametrize("broken", kat.NAMES)
def test_each_kat_detects_a_broken_primitive(broken):
    """A KAT that cannot fail is no test: break one primitive, exactly its KAT must fail."""
    c = crypto.load(False)
    if broken == "sm3":
        c.sm3 = lambda data: bytes(32)
    elif broken == "sm4":
        c.sm4_ecb = lambda key, data, enc: bytes(len(data))
    elif broken == "sm2_za":
        c.sm2_za = lambda pub, uid: bytes(32)
    elif broken == "sm2_verify":
        c.sm2_verify_digest = lambda pub, e, sig: True
    elif broken == "sm2_sign":
        orig = c.sm2_sign_digest
        c.sm2_sign_digest = lambda d, e, rand, k=None: orig(d, e, rand, k)[:63] + b"\x00"
    else:
        c.sm2_decrypt = lambda d, ct: b"nope"
    results = kat.run(c, os.urandom)
    expected = ["sm3", "sm2_za"] if broken == "sm3" else [broken]  # e = SM3(Z_A || M) too
    assert [n for n in kat.NAMES if not results[n]] == expected


# -- HARDFAIL after a failed power-up self test ---------------------------------------------

CRYPTO_REQUESTS = [
    ("change_pin", {"old": PIN, "new": NEW_PIN}),
    ("generate_key", {"slot": 0, "alg": "sm2"}),
    ("public_key", {"slot": 0}),
    ("delete_key", {"slot": 0}),
    ("sign", {"slot": 0, "message": b"m"}),
    ("sign_digest", {"slot": 0, "digest": bytes(32)}),
    ("verify", {"alg": "sm2", "public_key": kat.SM2_PUB, "message": b"m",
                "signature": bytes(64)}),
    ("hash_init", {"alg": "sm3"}),
    ("hash_update", {"context": 1, "data": b"x"}),
    ("hash_final", {"context": 1}),
    ("encrypt", {"alg": "sm2", "public_key": kat.SM2_PUB, "data": b"x"}),
    ("decrypt", {"slot": 0, "ciphertext": b"x"}),
    ("sm4", {"mode": "ecb", "encrypt": True, "key": bytes(16), "data": bytes(16)}),
    ("random", {"length": 8}),
]


def test_kat_fail_answers_hardfail_on_crypto_commands(tmp_path):
    h = Harness(tmp_path / "s.bin", kat_fail=True, provision=False)  # change_pin: HARDFAIL
    assert h.m.kat_results["sm3"] is False
    h.login(FACTORY_PIN)  # still answers
    for op, args in CRYPTO_REQUESTS:
        h.err("HARDFAIL", op, **args)
    assert h.ok("info")["pin_retries"] == 5
    rsp = h.ok("self_test")
    assert rsp["passed"] is False and rsp["results"]["sm3"] is False
    assert rsp["results"]["sm4"] is True
    h.ok("logout")
    h.ok("factory_reset", confirm="erase", pin=FACTORY_PIN)
    h.ok("reset")
    assert h.m.reset_requested
    # a healthy restart clears it
    h.kat_fail = False
    h.restart()
    h.ok("random", length=8)


# -- PIN ------------------------------------------------------------------------------------


def test_wrong_pin_counts_down_then_locks_and_survives_restart(hw):
    for left in (4, 3, 2, 1):
        rsp = hw.err("PARDENY", "login", pin="000000")
        assert rsp["retries"] == left
        assert hw.ok("info")["pin_retries"] == left
    assert hw.err("PIN_LOCKED", "login", pin="000000")["retries"] == 0
    hw.err("PIN_LOCKED", "login", pin=PIN)  # even the right PIN
    hw.restart()
    assert hw.ok("info")["pin_retries"] == 0
    hw.err("PIN_LOCKED", "login", pin=PIN)
    hw.button = True
    hw.ok("factory_reset", confirm="erase")
    assert hw.ok("info")["pin_retries"] == 5
    hw.login(FACTORY_PIN)


def test_right_pin_resets_the_retries(hw):
    hw.err("PARDENY", "login", pin="000000")
    hw.err("PARDENY", "login", pin="000000")
    hw.login()
    assert hw.ok("info")["pin_retries"] == 5
    hw.restart()
    assert hw.ok("info")["pin_retries"] == 5


@pytest.mark.parametrize("op, args", [
    ("login", {"pin": PIN}),
    ("login", {"pin": "000000"}),
    ("change_pin", {"old": PIN, "new": NEW_PIN}),
    ("factory_reset", {"confirm": "erase", "pin": PIN}),
])
def test_retry_counter_is_persisted_before_the_comparison(tmp_path, monkeypatch, op, args):
    """The power goes while the PIN is being compared: after the restart the try is spent
    (it was written before the comparison), whatever the PIN was."""
    h = Harness(tmp_path / "s.bin")
    if op == "change_pin":
        h.login()

    def power_cut(self, salt, pin):  # hashing the PIN given, to compare it with the stored
        raise keystore.PowerCut("power lost during the PIN comparison")

    monkeypatch.setattr(module.Module, "_pin_hash", power_cut)
    with pytest.raises(keystore.PowerCut):
        h(op, **args)
    monkeypatch.undo()
    assert h.state()["pin_retries"] == 4
    h.restart()
    assert h.ok("info")["pin_retries"] == 4


def test_a_store_that_cannot_record_the_try_compares_nothing(tmp_path):
    """With a store that cannot be written, even the right PIN is not accepted."""
    path = tmp_path / "s.bin"
    h = Harness(path)
    h.store = FailingStore(str(path))
    h.restart()
    h.store.fail = True
    h.err("FILEWERR", "login", pin=PIN)
    assert h.ok("info")["logged_in"] is False
    h.err("PARDENY", "sign", slot=0, message=b"m")


def test_pin_is_stored_salted_and_hashed(tmp_path):
    Harness(tmp_path / "s.bin")
    raw = (tmp_path / "s.bin").read_bytes()
    assert PIN.encode() not in raw
    state = keystore.KeyStore(str(tmp_path / "s.bin")).load()
    assert len(state["pin_salt"]) == 16
    assert state["pin_hash"] == gm_sm3.digest(state["pin_salt"] + PIN.encode())
    Harness(tmp_path / "t.bin", provision=False)
    fresh = keystore.KeyStore(str(tmp_path / "t.bin")).load()
    assert fresh["pin_salt"] != state["pin_salt"]
    assert fresh["pin_hash"] == gm_sm3.digest(fresh["pin_salt"] + FACTORY_PIN.encode())


@pytest.mark.parametrize("pin", [123456, b"123456", None, "12345", "x" * 17, ""])
def test_malformed_pin_is_inargerr_and_costs_no_try(fast, pin):
    fast.err("INARGERR", "login", pin=pin)
    assert fast.ok("info")["pin_retries"] == 5


def test_login_missing_pin(fast):
    fast.err("INARGERR", "login")


def test_failed_login_keeps_the_session(fast):
    fast.login()
    fast.keygen(0)
    session = fast.session
    fast.err("PARDENY", "login", pin="000000")
    assert fast.ok("info")["logged_in"] is True
    assert fast.ok("sign", slot=0, message=b"m", _session=session)["counter"] == 1
    fast.err("INARGERR", "login", pin="12345")  # malformed: no try, no change either
    assert fast.ok("sign", slot=0, message=b"m", _session=session)["counter"] == 2


def test_the_login_that_locks_keeps_the_session_too(fast):
    """Only a successful login replaces the session; logout, reset, factory_reset and a
    restart end it. A lock is none of these (ours: the holder of the session keeps it)."""
    fast.login()
    fast.keygen(0)
    for _ in range(4):
        fast.err("PARDENY", "login", pin="000000")
    fast.err("PIN_LOCKED", "login", pin="000000")
    fast.ok("sign", slot=0, message=b"m")
    fast.restart()
    fast.err("PIN_LOCKED", "login", pin=PIN)


def test_login_returns_a_fresh_session_from_the_rng(tmp_path):
    drawn = []

    def rand(n):
        out = os.urandom(n)
        drawn.append(out)
        return out

    h = Harness(tmp_path / "s.bin", rand=rand)
    first = h.login()["session"]
    assert isinstance(first, bytes) and len(first) == 16 and first in drawn
    second = h.login()["session"]
    assert second != first and second in drawn


def test_only_a_successful_login_replaces_the_session(fast):
    fast.login()
    fast.keygen(0)
    old = fast.session
    fast.login()
    fast.err("PARDENY", "sign", slot=0, message=b"m", _session=old)
    fast.ok("sign", slot=0, message=b"m")


def test_a_login_without_randomness_spends_no_try_and_changes_nothing(fast):
    fast.login()
    session = fast.session
    fast.err("PARDENY", "login", pin="000000")
    before = fast.state()
    fast.m.rand = lambda n: b""
    fast.err("RANDERR", "login", pin=PIN)  # the session is drawn before the PIN is checked
    assert fast.state() == before and fast.m.session == session


def test_logout(fast):
    fast.login()
    fast.keygen(0)
    session = fast.session
    fast.ok("logout")
    assert fast.ok("info")["logged_in"] is False
    fast.err("PARDENY", "sign", slot=0, message=b"m", _session=session)
    fast.ok("logout")  # idempotent


def test_logout_without_the_open_session_is_refused_and_ends_nothing(fast):
    fast.login()
    fast.keygen(0)
    session = fast.session
    fast.err("PARDENY", "logout", _session=None)
    fast.err("PARDENY", "logout", _session=os.urandom(16))
    assert fast.ok("info")["logged_in"] is True
    fast.ok("sign", slot=0, message=b"m", _session=session)


def test_reset_without_the_open_session_is_refused(fast):
    fast.login()
    fast.err("PARDENY", "reset", _session=None)
    fast.err("PARDENY", "reset", _session=b"x" * 16)
    assert fast.m.reset_requested is False
    fast.ok("reset")
    assert fast.m.reset_requested is True


def test_no_session_needed_while_none_is_open(fast):
    fast.ok("reset", _session=None)  # anybody may restart a module nobody is logged in to
    assert fast.m.reset_requested is True


def test_a_restart_ends_the_session(fast):
    fast.login()
    fast.keygen(0)
    session = fast.session
    fast.restart()
    assert fast.ok("info")["logged_in"] is False
    fast.err("PARDENY", "sign", slot=0, message=b"m", _session=session)


@pytest.mark.parametrize("op", LOGIN_OPS)
@pytest.mark.parametrize("how", ["missing", "other", "mistyped", "not_logged_in"])
def test_login_commands_without_the_session_are_refused_and_change_nothing(tmp_path, op, how):
    h = Harness(tmp_path / "s.bin")
    h.login()
    pub = h.keygen(0)
    h.ok("sign", slot=0, message=b"m")
    args = {
        "change_pin": {"old": PIN, "new": NEW_PIN},
        "generate_key": {"slot": 0, "alg": "sm2", "overwrite": True},
        "delete_key": {"slot": 0},
        "sign": {"slot": 0, "message": b"m"},
        "sign_digest": {"slot": 0, "digest": bytes(32)},
        "decrypt": {"slot": 0, "ciphertext": gm_sm2.encrypt(pub, b"secret")},
    }[op]
    before = h.state()
    session = h.session
    if how == "not_logged_in":
        h.ok("logout")
        h.err("PARDENY", op, _session=session, **args)
    else:
        sent = {"missing": None, "other": os.urandom(16), "mistyped": session.hex()}[how]
        rsp = h.err("PARDENY", op, _session=sent, **args)
        assert set(rsp) == {"ok", "code", "error", "message"}  # no data of any kind
    assert h.state() == before  # not a key, not a counter, not the PIN
    if how != "not_logged_in":
        assert h.ok("sign", slot=0, message=b"m", _session=session)["counter"] == 2


def test_change_pin(hw):
    hw.err("PARDENY", "change_pin", old=PIN, new=NEW_PIN)
    hw.login()
    hw.err("INARGERR", "change_pin", old=PIN, new=FACTORY_PIN)  # the default is refused
    hw.err("INARGERR", "change_pin", old=PIN, new="12345")  # too short
    hw.err("INARGERR", "change_pin", old=PIN, new="1" * 17)  # too long
    hw.err("INARGERR", "change_pin", old=PIN)
    hw.err("INARGERR", "change_pin", old=PIN, new=24680135)
    assert hw.ok("info")["pin_retries"] == 5  # none of those cost a try
    assert hw.err("PARDENY", "change_pin", old="999999", new=NEW_PIN)["retries"] == 4
    hw.ok("change_pin", old=PIN, new=NEW_PIN)
    assert hw.ok("info")["pin_retries"] == 5
    hw.restart()
    hw.err("PARDENY", "login", pin=PIN)
    hw.login(NEW_PIN)
    # a non-ASCII PIN of 6 characters is fine
    hw.ok("change_pin", old=NEW_PIN, new="密码密码密码")
    hw.restart()
    hw.login("密码密码密码")


def test_change_pin_wrong_old_locks(fast):
    fast.login()
    for left in (4, 3, 2, 1):
        assert fast.err("PARDENY", "change_pin", old="999999", new=NEW_PIN)["retries"] == left
    fast.err("PIN_LOCKED", "change_pin", old="999999", new=NEW_PIN)
    assert fast.ok("info")["pin_retries"] == 0
    fast.err("PIN_LOCKED", "login", pin=PIN)


def test_factory_reset(hw):
    hw.login()
    hw.keygen(3)
    hw.ok("sign", slot=3, message=b"m")
    hw.ok("change_pin", old=PIN, new=NEW_PIN)
    ctx = hw.ok("hash_init", alg="sm3")["context"]
    session = hw.session
    hw.err("INARGERR", "factory_reset", pin=NEW_PIN)
    hw.err("INARGERR", "factory_reset", confirm="yes", pin=NEW_PIN)
    hw.err("INARGERR", "factory_reset", confirm=b"erase", pin=NEW_PIN)
    hw.err("INARGERR", "factory_reset", confirm="erase", pin="12345")
    assert hw.ok("info")["pin_retries"] == 5  # none of those cost a try
    hw.ok("factory_reset", confirm="erase", pin=NEW_PIN)  # no login needed: the PIN is
    info = hw.ok("info")
    assert info["logged_in"] is False and info["pin_retries"] == 5 and info["default_pin"]
    hw.err("PARDENY", "sign", slot=3, message=b"m", _session=session)  # the session ended
    hw.err("STEPERR", "hash_final", context=ctx, _session=session)
    hw.restart()
    hw.provision()
    hw.login(PIN)
    hw.err("KEYNOTEXIST", "public_key", slot=3)
    hw.keygen(3)
    assert hw.ok("sign", slot=3, message=b"m")["counter"] == 1  # counters cleared
    assert hw.boot_info["boot_count"] == 2  # boot_count is not a secret to wipe


def test_factory_reset_needs_the_pin_while_it_is_not_locked(fast):
    fast.login()
    fast.keygen(0)
    before = fast.state()
    fast.button = True  # presence does not replace the PIN while there is one
    rsp = fast.err("PARDENY", "factory_reset", confirm="erase")
    assert "retries" not in rsp and fast.state() == before  # no try spent, nothing erased
    assert fast.err("PARDENY", "factory_reset", confirm="erase",
                    pin="999999")["retries"] == 4  # a wrong PIN is a failed login
    after = fast.state()
    assert after["pin_retries"] == 4 and after["keys"] == before["keys"]
    fast.ok("sign", slot=0, message=b"m")  # the session lives on


def test_factory_reset_once_locked_needs_the_button(fast):
    fast.login()
    fast.keygen(0)
    for _ in range(4):
        fast.err("PARDENY", "login", pin="000000")
    fast.err("PIN_LOCKED", "login", pin="000000")
    before, session = fast.state(), fast.session
    fast.err("PIN_LOCKED", "factory_reset", confirm="erase")
    fast.err("PIN_LOCKED", "factory_reset", confirm="erase", pin=PIN)  # the PIN cannot help
    assert fast.state() == before
    fast.ok("sign", slot=0, message=b"m")  # nothing changed, the session neither
    fast.button = True
    fast.ok("factory_reset", confirm="erase")
    state = fast.state()
    assert state["pin_retries"] == 5 and state["keys"] == [None] * 16
    fast.err("PARDENY", "sign", slot=0, message=b"m", _session=session)  # it ended
    assert fast.ok("info")["default_pin"] is True


def test_factory_reset_reads_the_button_as_the_command_arrives(tmp_path):
    reads = []
    h = Harness(tmp_path / "s.bin")
    for _ in range(4):
        h.err("PARDENY", "login", pin="000000")
    h.err("PIN_LOCKED", "login", pin="000000")
    h.m.presence = lambda: reads.append(1) or True
    h.ok("info")
    assert reads == []
    h.ok("factory_reset", confirm="erase")
    assert reads == [1]

    def broken():
        raise OSError("GPIO")

    for _ in range(4):
        h.err("PARDENY", "login", pin="000000")
    h.err("PIN_LOCKED", "login", pin="000000")
    h.m.presence = broken
    h.err("PIN_LOCKED", "factory_reset", confirm="erase")  # a button that cannot be read


# -- default PIN ----------------------------------------------------------------------------


def test_info_says_default_pin_until_it_is_changed(tmp_path):
    h = Harness(tmp_path / "s.bin", provision=False)
    assert h.ok("info")["default_pin"] is True
    h.provision()
    assert h.ok("info")["default_pin"] is False
    h.restart()
    assert h.ok("info")["default_pin"] is False


@pytest.mark.parametrize("op", ["generate_key", "sign", "sign_digest", "decrypt"])
def test_the_default_pin_refuses_keys_and_signatures(tmp_path, op):
    # A module on its default PIN with a key in slot 0 (a store from before revision 2).
    path = tmp_path / "s.bin"
    priv, pub = gm_sm2.generate_keypair()
    store = keystore.KeyStore(str(path))
    state = keystore.default_state()
    state["keys"][0] = ["sm2", priv, pub]
    state["counters"][0] = 7
    store.save(state)
    h = Harness(path, provision=False)
    h.login(FACTORY_PIN)
    before = h.state()
    args = {
        "generate_key": {"slot": 1, "alg": "sm2"},
        "sign": {"slot": 0, "message": b"m"},
        "sign_digest": {"slot": 0, "digest": bytes(32)},
        "decrypt": {"slot": 0, "ciphertext": gm_sm2.encrypt(pub, b"secret")},
    }[op]
    rsp = h.err("PIN_DEFAULT", op, **args)
    assert rsp["code"] == 0x01000101 and set(rsp) == {"ok", "code", "error", "message"}
    assert h.state() == before
    # change_pin works on the default PIN; then the same command does
    h.ok("change_pin", old=FACTORY_PIN, new=NEW_PIN)
    h.ok(op, **args)
    if op.startswith("sign"):
        assert h.state()["counters"][0] == 8


def test_the_default_pin_does_not_refuse_what_the_protocol_allows(tmp_path):
    h = Harness(tmp_path / "s.bin", provision=False)
    h.login(FACTORY_PIN)
    h.err("KEYNOTEXIST", "delete_key", slot=0)  # not on the refused list
    h.ok("hash_init", alg="sm3")
    h.ok("random", length=8)


def test_the_default_pin_is_checked_before_the_arguments(tmp_path):
    h = Harness(tmp_path / "s.bin", provision=False)
    h.err("PARDENY", "sign", slot=99)  # the session first
    h.login(FACTORY_PIN)
    h.err("PIN_DEFAULT", "sign", slot=99)


# -- PIN attempts: the slow-down ------------------------------------------------------------


def _timed(h, op, **args):
    """(response, module-clock ms the command took, progress calls meanwhile)."""
    t0, p0 = h.clock[0], h.progress_calls
    rsp = h(op, **args)
    return rsp, h.clock[0] - t0, h.progress_calls - p0


def test_after_three_failures_each_attempt_waits_a_second(fast):
    took = [_timed(fast, "login", pin="000000")[1] for _ in range(3)]
    assert took == [0, 0, 0]
    rsp, ms, progress = _timed(fast, "login", pin="000000")
    assert rsp["error"] == "PARDENY" and rsp["retries"] == 1
    assert ms >= module.SLOWDOWN_MS and progress >= module.SLOWDOWN_MS // module.SLOW_STEP_MS
    assert max(fast.sleeps) <= module.SLOW_STEP_MS  # small steps: WAIT frames meanwhile
    rsp, ms, _ = _timed(fast, "login", pin=PIN)  # the right PIN waits too
    assert rsp["ok"] and ms >= module.SLOWDOWN_MS
    assert [_timed(fast, "login", pin="000000")[1] for _ in range(3)] == [0, 0, 0]


def test_the_slow_down_counts_failures_across_restarts(fast):
    for _ in range(3):
        fast.err("PARDENY", "login", pin="000000")
    fast.restart()  # power-cycling does not buy fast guesses
    assert _timed(fast, "login", pin="000000")[1] >= module.SLOWDOWN_MS


def test_the_slow_down_covers_every_pin_check(fast):
    fast.login()
    for _ in range(3):
        fast.err("PARDENY", "change_pin", old="999999", new=NEW_PIN)
    assert _timed(fast, "change_pin", old="999999", new=NEW_PIN)[1] >= module.SLOWDOWN_MS
    rsp, ms, _ = _timed(fast, "factory_reset", confirm="erase", pin="999999")
    assert rsp["error"] == "PIN_LOCKED" and ms >= module.SLOWDOWN_MS
    rsp, ms, _ = _timed(fast, "login", pin=PIN)  # locked: nothing to compare, no pause
    assert rsp["error"] == "PIN_LOCKED" and ms == 0


# -- keys -----------------------------------------------------------------------------------


def test_generate_key_rules(hw):
    hw.err("PARDENY", "generate_key", slot=0, alg="sm2")
    hw.login()
    pub = hw.keygen(0)
    assert len(pub) == 65 and pub[0] == 4
    assert gm_sm2.public_key_of(hw.private_key(0)) == pub
    hw.err("FILEEXISTS", "generate_key", slot=0, alg="sm2")
    hw.err("FILEEXISTS", "generate_key", slot=0, alg="sm2", overwrite=False)
    pub2 = hw.keygen(0, overwrite=True)
    assert pub2 != pub
    assert hw.ok("public_key", slot=0) == {"ok": True, "alg": "sm2", "public_key": pub2}
    hw.keygen(15)


@pytest.mark.parametrize("args, code", [
    ({"slot": 16, "alg": "sm2"}, "INARGERR"),
    ({"slot": -1, "alg": "sm2"}, "INARGERR"),
    ({"slot": "1", "alg": "sm2"}, "INARGERR"),
    ({"slot": True, "alg": "sm2"}, "INARGERR"),
    ({"alg": "sm2"}, "INARGERR"),
    ({"slot": 1}, "INARGERR"),
    ({"slot": 1, "alg": 2}, "INARGERR"),
    ({"slot": 1, "alg": "sm2", "overwrite": 1}, "INARGERR"),
    ({"slot": 1, "alg": "sm2", "overwrite": None}, "INARGERR"),
    ({"slot": 1, "alg": "sm2", "extra": 1}, "INARGERR"),
    ({"slot": 1, "alg": "rsa"}, "ALGNOTSUPPORT"),
    ({"slot": 1, "alg": "SM2"}, "ALGNOTSUPPORT"),
])
def test_generate_key_bad_arguments(fast, args, code):
    fast.login()
    fast.err(code, "generate_key", **args)
    fast.err("KEYNOTEXIST", "public_key", slot=1)


def test_public_key(hw):
    hw.err("KEYNOTEXIST", "public_key", slot=5)
    hw.err("INARGERR", "public_key", slot=16)
    hw.err("INARGERR", "public_key")
    hw.login()
    pub = hw.keygen(5)
    hw.ok("logout")
    hw.restart()
    assert hw.ok("public_key", slot=5)["public_key"] == pub  # no login needed; persisted


def test_delete_key(hw):
    hw.err("PARDENY", "delete_key", slot=0)
    hw.login()
    hw.err("KEYNOTEXIST", "delete_key", slot=0)
    hw.keygen(0)
    hw.ok("sign", slot=0, message=b"m")
    hw.ok("delete_key", slot=0)
    hw.err("KEYNOTEXIST", "public_key", slot=0)
    hw.err("KEYNOTEXIST", "sign", slot=0, message=b"m")
    hw.restart()
    hw.err("KEYNOTEXIST", "public_key", slot=0)
    hw.login()
    hw.keygen(0)
    assert hw.ok("sign", slot=0, message=b"m")["counter"] == 2  # counter survives delete


# -- signatures -----------------------------------------------------------------------------


def _gmssl_safe_key(h, slot):
    pub = h.keygen(slot, overwrite=True)
    while pub[1:].hex().startswith("04"):
        pub = h.keygen(slot, overwrite=True)
    return pub


def test_sign_verifies_with_openssl_and_gmssl(hw):
    hw.login()
    pub = _gmssl_safe_key(hw, 2)
    for message in (b"", b"evidence.deposit", bytes(range(256)) * 12):
        sig = hw.ok("sign", slot=2, message=message)["signature"]
        assert len(sig) == 64
        assert gm_sm2.verify(pub, message, sig)
        assert gmssl_for(pub).verify_with_sm3(sig.hex(), message)
        assert not gm_sm2.verify(pub, message + b"x", sig)
    sig = hw.ok("sign", slot=2, message=b"m", id=b"ALICE123@YAHOO.COM")["signature"]
    assert gm_sm2.verify(pub, b"m", sig, id=b"ALICE123@YAHOO.COM")
    assert not gm_sm2.verify(pub, b"m", sig)


def test_sign_rules(hw):
    hw.err("PARDENY", "sign", slot=0, message=b"m")
    hw.login()
    hw.err("KEYNOTEXIST", "sign", slot=0, message=b"m")
    hw.keygen(0)
    hw.ok("sign", slot=0, message=bytes(3072))
    hw.err("INARGERR", "sign", slot=0, message=bytes(3073))
    hw.err("INARGERR", "sign", slot=0, message="text")
    hw.err("INARGERR", "sign", slot=0)
    hw.err("INARGERR", "sign", message=b"m")
    hw.err("INARGERR", "sign", slot=0, message=b"m", id="1234567812345678")
    hw.err("INARGERR", "sign", slot=0, message=b"m", id=bytes(1025))
    hw.err("INARGERR", "sign", slot=0, message=b"m", digest=bytes(32))


def test_sign_counters_are_monotonic_per_slot_and_persisted(hw):
    hw.login()
    hw.keygen(0)
    hw.keygen(1)
    assert [hw.ok("sign", slot=0, message=b"a")["counter"] for _ in range(3)] == [1, 2, 3]
    assert hw.ok("sign_digest", slot=1, digest=bytes(32))["counter"] == 1
    assert hw.ok("sign_digest", slot=0, digest=bytes(32))["counter"] == 4
    hw.keygen(0, overwrite=True)  # a new key does not restart the count
    assert hw.ok("sign", slot=0, message=b"a")["counter"] == 5
    hw.restart()
    hw.login()
    assert hw.ok("sign", slot=0, message=b"a")["counter"] == 6
    assert hw.ok("sign", slot=1, message=b"a")["counter"] == 2
    state = keystore.KeyStore(str(hw.path)).load()
    assert state["counters"][:3] == [6, 2, 0]


def test_sign_digest(hw):
    hw.err("PARDENY", "sign_digest", slot=0, digest=bytes(32))
    hw.login()
    pub = hw.keygen(0)
    e = gm_sm2.message_digest(pub, b"host hashed this")
    sig = hw.ok("sign_digest", slot=0, digest=e)["signature"]
    assert gm_sm2.verify(pub, b"host hashed this", sig)
    assert gm_sm2.verify_digest(pub, e, sig)
    hw.err("INARGERR", "sign_digest", slot=0, digest=bytes(31))
    hw.err("INARGERR", "sign_digest", slot=0, digest=bytes(33))
    hw.err("INARGERR", "sign_digest", slot=0)
    hw.err("KEYNOTEXIST", "sign_digest", slot=9, digest=e)


def test_verify(hw):
    priv, pub = gm_sm2.generate_keypair()
    sig = gm_sm2.sign(priv, b"msg")
    ok = {"alg": "sm2", "public_key": pub, "signature": sig}
    assert hw.ok("verify", message=b"msg", **ok)["valid"] is True  # no login needed
    assert hw.ok("verify", message=b"msh", **ok)["valid"] is False
    e = gm_sm2.message_digest(pub, b"msg")
    assert hw.ok("verify", digest=e, **ok)["valid"] is True
    sig_id = gm_sm2.sign(priv, b"msg", id=b"bob")
    assert hw.ok("verify", message=b"msg", id=b"bob", alg="sm2", public_key=pub,
                 signature=sig_id)["valid"] is True
    for bad_sig in (b"", sig[:63], sig + b"\x00", bytes(64), b"\xff" * 64):
        assert hw.ok("verify", message=b"msg", alg="sm2", public_key=pub,
                     signature=bad_sig)["valid"] is False
    hw.err("INARGERR", "verify", **ok)  # neither message nor digest
    hw.err("INARGERR", "verify", message=b"msg", digest=e, **ok)  # both
    hw.err("INARGERR", "verify", digest=e, id=b"bob", **ok)
    hw.err("INARGERR", "verify", digest=e[:31], **ok)
    hw.err("INARGERR", "verify", message=b"msg", alg="sm2", public_key=pub)
    hw.err("INARGERR", "verify", message=b"msg", alg="sm2", public_key=pub, signature="s")
    hw.err("INARGERR", "verify", message=bytes(3073), **ok)
    hw.err("ALGNOTSUPPORT", "verify", message=b"msg", alg="rsa", public_key=pub, signature=sig)
    hw.err("INARGERR", "verify", message=b"msg", public_key=pub, signature=sig)


BAD_PUBLIC_KEYS = [
    kat.SM2_PUB[:64],
    kat.SM2_PUB + b"\x00",
    b"\x02" + kat.SM2_PUB[1:],
    kat.SM2_PUB[:-1] + bytes([kat.SM2_PUB[-1] ^ 1]),
    b"\x04" + bytes(64),
    b"",
]


@pytest.mark.parametrize("bad", BAD_PUBLIC_KEYS, ids=["64", "66", "prefix", "off-curve",
                                                      "zero", "empty"])
def test_malformed_public_key_is_keyerr(hw, bad):
    hw.err("KEYERR", "verify", alg="sm2", public_key=bad, message=b"m", signature=bytes(64))
    hw.err("KEYERR", "encrypt", alg="sm2", public_key=bad, data=b"m")
    hw.err("KEYERR", "hash_init", alg="sm3", public_key=bad)


def test_public_key_not_bytes_is_inargerr(fast):
    fast.err("INARGERR", "encrypt", alg="sm2", public_key=kat.SM2_PUB.hex(), data=b"m")


# -- hashing --------------------------------------------------------------------------------


def test_hash_plain_and_with_za(hw):
    ctx = hw.ok("hash_init", alg="sm3")["context"]
    hw.ok("hash_update", context=ctx, data=b"ab")
    hw.ok("hash_update", context=ctx, data=b"")
    hw.ok("hash_update", context=ctx, data=b"c")
    assert hw.ok("hash_final", context=ctx)["digest"] == gm_sm3.digest(b"abc")
    hw.err("STEPERR", "hash_final", context=ctx)  # final closes it
    hw.err("STEPERR", "hash_update", context=ctx, data=b"x")

    _, pub = gm_sm2.generate_keypair()
    message = bytes(range(200)) * 20
    ctx = hw.ok("hash_init", alg="sm3", public_key=pub)["context"]
    for i in range(0, len(message), 3000):
        hw.ok("hash_update", context=ctx, data=message[i:i + 3000])
    assert hw.ok("hash_final", context=ctx)["digest"] == gm_sm2.message_digest(pub, message)
    ctx = hw.ok("hash_init", alg="sm3", public_key=pub, id=b"ALICE")["context"]
    hw.ok("hash_update", context=ctx, data=b"m")
    assert hw.ok("hash_final", context=ctx)["digest"] == gm_sm2.message_digest(pub, b"m",
                                                                               id=b"ALICE")


def test_hash_context_limits(fast):
    ctxs = [fast.ok("hash_init", alg="sm3")["context"] for _ in range(4)]
    assert len(set(ctxs)) == 4
    fast.err("NOBUFFER", "hash_init", alg="sm3")
    fast.ok("hash_final", context=ctxs[0])
    fast.ok("hash_init", alg="sm3")
    fast.err("STEPERR", "hash_update", context=999999, data=b"x")
    fast.err("STEPERR", "hash_final", context=0)


def test_hash_contexts_survive_logout_and_die_on_reset(fast):
    fast.login()
    session = fast.session
    ctx = fast.ok("hash_init", alg="sm3")["context"]
    fast.ok("hash_update", context=ctx, data=b"abc")
    fast.ok("logout")
    assert fast.ok("hash_final", context=ctx,
                   _session=session)["digest"] == gm_sm3.digest(b"abc")
    ctx = fast.ok("hash_init", alg="sm3")["context"]
    fast.ok("reset")
    assert fast.m.reset_requested is True
    fast.restart()  # what the main loop does after sending the RSP
    fast.err("STEPERR", "hash_update", context=ctx, data=b"x")


def test_hash_commands_carry_the_open_session(fast):
    ctx = fast.ok("hash_init", alg="sm3")["context"]  # no session open: none needed
    fast.login()
    session = fast.session
    for sent in (None, os.urandom(16)):
        fast.err("PARDENY", "hash_init", alg="sm3", _session=sent)
        fast.err("PARDENY", "hash_update", context=ctx, data=b"x", _session=sent)
        fast.err("PARDENY", "hash_final", context=ctx, _session=sent)
    assert len(fast.m.contexts) == 1
    mine = fast.ok("hash_init", alg="sm3", _session=session)["context"]
    fast.ok("hash_update", context=mine, data=b"abc", _session=session)
    assert fast.ok("hash_final", context=mine)["digest"] == gm_sm3.digest(b"abc")


def test_hash_contexts_of_another_session_do_not_exist_for_the_caller(fast):
    fast.login()
    first = fast.session
    ctx = fast.ok("hash_init", alg="sm3")["context"]
    fast.ok("hash_update", context=ctx, data=b"ab")
    fast.login()  # a new session: the context stays the first one's
    fast.err("STEPERR", "hash_update", context=ctx, data=b"x")
    fast.err("STEPERR", "hash_final", context=ctx)
    fast.ok("logout")
    fast.err("STEPERR", "hash_update", context=ctx, data=b"x", _session=None)
    fast.err("STEPERR", "hash_final", context=ctx, _session=os.urandom(16))
    # untouched: its opener finishes it
    fast.ok("hash_update", context=ctx, data=b"c", _session=first)
    assert fast.ok("hash_final", context=ctx,
                   _session=first)["digest"] == gm_sm3.digest(b"abc")
    # and one opened with no session open is nobody's session's
    anon = fast.ok("hash_init", alg="sm3")["context"]
    fast.login()
    fast.err("STEPERR", "hash_final", context=anon)
    fast.ok("logout")
    fast.err("INARGERR", "hash_init", alg="sm3", _session=b"short")  # none open: checked


def test_hash_bad_arguments(fast):
    fast.err("ALGNOTSUPPORT", "hash_init", alg="sha256")
    fast.err("INARGERR", "hash_init")
    fast.err("INARGERR", "hash_init", alg="sm3", id=b"x")  # id without public_key
    ctx = fast.ok("hash_init", alg="sm3")["context"]
    fast.err("INARGERR", "hash_update", context=ctx, data=bytes(3073))
    fast.err("INARGERR", "hash_update", context=ctx, data="text")
    fast.err("INARGERR", "hash_update", context=ctx)
    fast.err("INARGERR", "hash_update", context="1", data=b"")
    fast.err("INARGERR", "hash_final", context=-1)


# -- SM2 encryption -------------------------------------------------------------------------


def test_encrypt_decrypt(hw):
    hw.login()
    pub = hw.keygen(4)
    for data in (b"k", bytes(range(256)) * 4):
        ct = hw.ok("encrypt", alg="sm2", public_key=pub, data=data)["ciphertext"]
        assert gm_sm2.decrypt(hw.private_key(4), ct) == data  # GM/T 0009 DER, OpenSSL reads it
        assert hw.ok("decrypt", slot=4, ciphertext=ct)["data"] == data
    host_ct = gm_sm2.encrypt(pub, b"session key")
    assert hw.ok("decrypt", slot=4, ciphertext=host_ct)["data"] == b"session key"


def test_encrypt_decrypt_errors(hw):
    _, other = gm_sm2.generate_keypair()
    hw.err("INARGERR", "encrypt", alg="sm2", public_key=other, data=b"")
    hw.err("INARGERR", "encrypt", alg="sm2", public_key=other, data=bytes(1025))
    hw.ok("encrypt", alg="sm2", public_key=other, data=bytes(1024))
    hw.err("ALGNOTSUPPORT", "encrypt", alg="rsa", public_key=other, data=b"x")
    hw.err("INARGERR", "encrypt", public_key=other, data=b"x")
    hw.err("PARDENY", "decrypt", slot=4, ciphertext=b"x")
    hw.login()
    hw.err("KEYNOTEXIST", "decrypt", slot=4, ciphertext=gm_sm2.encrypt(other, b"x"))
    pub = hw.keygen(4)
    ct = bytearray(gm_sm2.encrypt(pub, b"secret data"))
    ct[-1] ^= 1  # C2 tampered: C3 no longer matches
    hw.err("ENCDATAERR", "decrypt", slot=4, ciphertext=bytes(ct))
    hw.err("ENCDATAERR", "decrypt", slot=4, ciphertext=gm_sm2.encrypt(other, b"x"))  # wrong key
    hw.err("ENCDATAERR", "decrypt", slot=4, ciphertext=b"\x30\x03\x02\x01\x01")
    hw.err("INARGERR", "decrypt", slot=4, ciphertext=b"")
    hw.err("INARGERR", "decrypt", slot=4, ciphertext=bytes(2049))
    hw.err("INARGERR", "decrypt", slot=4)


# -- SM4 ------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.binary(min_size=16, max_size=16), iv=st.binary(min_size=16, max_size=16),
       blocks=st.integers(0, 20), tail=st.binary(max_size=15), encrypt=st.booleans())
def test_sm4_equals_appliance_gm(fast, key, iv, blocks, tail, encrypt):
    data = os.urandom(16 * blocks)
    ecb = fast.ok("sm4", mode="ecb", encrypt=encrypt, key=key, data=data)["data"]
    cbc = fast.ok("sm4", mode="cbc", encrypt=encrypt, key=key, iv=iv, data=data)["data"]
    ctr = fast.ok("sm4", mode="ctr", encrypt=encrypt, key=key, iv=iv, data=data + tail)["data"]
    if data:
        if encrypt:
            assert ecb == gm_sm4.encrypt_ecb_raw(key, data)
            assert cbc == gm_sm4.encrypt_cbc_raw(key, iv, data)
        else:
            assert ecb == gm_sm4.decrypt_ecb_raw(key, data)
            assert cbc == gm_sm4.decrypt_cbc_raw(key, iv, data)
    else:
        assert ecb == cbc == b""
    assert ctr == (gm_sm4.ctr(key, iv, data + tail) if data + tail else b"")


def test_sm4_pure_backend_matches(tmp_path):
    h = Harness(tmp_path / "s.bin", backend="pure")
    key, iv, data = os.urandom(16), os.urandom(16), os.urandom(64)
    assert h.ok("sm4", mode="cbc", encrypt=True, key=key, iv=iv,
                data=data)["data"] == gm_sm4.encrypt_cbc_raw(key, iv, data)
    assert h.ok("sm4", mode="ecb", encrypt=False, key=key,
                data=data)["data"] == gm_sm4.decrypt_ecb_raw(key, data)
    assert h.ok("sm4", mode="ctr", encrypt=True, key=key, iv=iv,
                data=data[:33])["data"] == gm_sm4.ctr(key, iv, data[:33])
    assert h.ok("sm4", mode="ecb", encrypt=True, key=kat.SM4_KEY,
                data=kat.SM4_PLAIN)["data"] == kat.SM4_CIPHER


@pytest.mark.parametrize("args, code", [
    ({"mode": "gcm"}, "ALGMODNOTSUPPORT"),
    ({"mode": "ECB"}, "ALGMODNOTSUPPORT"),
    ({"mode": 1}, "INARGERR"),
    ({"mode": "ecb", "data": bytes(15)}, "INARGERR"),
    ({"mode": "cbc", "data": bytes(17)}, "INARGERR"),
    ({"mode": "cbc", "iv": None}, "INARGERR"),
    ({"mode": "ctr", "iv": None}, "INARGERR"),
    ({"mode": "cbc", "iv": bytes(15)}, "INARGERR"),
    ({"mode": "ecb", "key": bytes(15)}, "INARGERR"),
    ({"mode": "ecb", "key": bytes(32)}, "INARGERR"),
    ({"mode": "ecb", "encrypt": 1}, "INARGERR"),
    ({"mode": "ecb", "encrypt": None}, "INARGERR"),
    ({"mode": "ctr", "data": bytes(3073)}, "INARGERR"),
    ({"mode": "ctr", "data": "text"}, "INARGERR"),
])
def test_sm4_bad_arguments(fast, args, code):
    req = {"mode": "cbc", "encrypt": True, "key": bytes(16), "iv": bytes(16), "data": bytes(32)}
    req.update(args)
    req = {k: v for k, v in req.items() if v is not None}
    fast.err(code, "sm4", **req)


def test_sm4_ecb_without_iv_and_ctr_unaligned(fast):
    assert len(fast.ok("sm4", mode="ecb", encrypt=True, key=bytes(16),
                       data=bytes(32))["data"]) == 32
    assert len(fast.ok("sm4", mode="ctr", encrypt=True, key=bytes(16), iv=bytes(16),
                       data=bytes(3071))["data"]) == 3071


# -- random, reset, dispatch ----------------------------------------------------------------


def test_random(hw):
    a = hw.ok("random", length=1024)["data"]
    b = hw.ok("random", length=1024)["data"]
    assert len(a) == len(b) == 1024 and a != b
    assert len(hw.ok("random", length=1)["data"]) == 1
    for bad in (0, 1025, -1, "8", None):
        hw.err("INARGERR", "random", length=bad)
    hw.err("INARGERR", "random")


def test_broken_rng_is_randerr(tmp_path):
    h = Harness(tmp_path / "s.bin")
    h.m.rand = lambda n: b""
    h.err("RANDERR", "random", length=8)

    def boom(n):
        raise OSError("no entropy")

    h.m.rand = boom
    h.err("RANDERR", "random", length=8)
    h2 = Harness(tmp_path / "t.bin", backend="pure")
    h2.login()
    h2.m.rand = boom
    h2.err("RANDERR", "generate_key", slot=0, alg="sm2")


def test_reset_answers_then_flags(fast):
    assert fast.ok("reset") == {"ok": True}
    assert fast.m.reset_requested is True
    fast.err("INARGERR", "reset", now=True)


def test_unknown_op_is_notsupport(fast):
    rsp = fast.err("NOTSUPPORT", "export_key", slot=0)
    assert rsp["op"] == "export_key"


@pytest.mark.parametrize("payload", [
    b"",
    b"\xff",
    b"\xa1\x62op\x64info\x00",  # trailing byte
    b"\xa1\x62op\x78\x04info",  # text length in a non-shortest head
    b"\xa2\x62op\x64info\x61a\x01",  # keys out of order ("a" sorts before "op")
    b"\xa2\x62op\x64info\x62op\x64info",  # duplicate key
    b"\xbf\x62op\x64info\xff",  # indefinite-length map
    b"\xa1\x62op\x18\x01",  # op not text
    b"\x82\x62op\x64info",  # an array, not a map
    b"\xa1\x61x\x01",  # no op
    b"\x64info",  # a bare text
    b"\xa1\x62op\xfb\x3f\xf0\x00\x00\x00\x00\x00\x00",  # a float
    bytes(4097),
])
def test_undecodable_or_malformed_request_is_inargerr(fast, payload):
    rsp = fast.raw(payload)
    assert rsp["ok"] is False and rsp["error"] == "INARGERR", rsp


def test_check_order_hardfail_before_login_before_arguments(tmp_path):
    h = Harness(tmp_path / "s.bin", kat_fail=True, provision=False)
    h.err("HARDFAIL", "sign", slot=99)
    h2 = Harness(tmp_path / "t.bin")
    h2.err("PARDENY", "sign", slot=99)
    h2.err("NOTSUPPORT", "bogus", slot=99)


# -- store failures -------------------------------------------------------------------------


class FailingStore(keystore.KeyStore):
    """A KeyStore whose writes fail with OSError while ``fail`` is set."""

    fail = False

    def save(self, state):
        if self.fail:
            raise OSError(28, "no space left on device")
        keystore.KeyStore.save(self, state)


def test_store_write_failure_is_filewerr_and_changes_nothing(tmp_path):
    path = tmp_path / "s.bin"
    h = Harness(path)
    h.store = FailingStore(str(path))
    h.restart()
    h.login()
    pub = h.keygen(0)
    h.ok("sign", slot=0, message=b"m")
    h.store.fail = True
    before_session = h.session
    h.err("FILEWERR", "generate_key", slot=1, alg="sm2")
    h.err("KEYNOTEXIST", "public_key", slot=1)
    rsp = h.err("FILEWERR", "sign", slot=0, message=b"m")
    assert "signature" not in rsp  # no signature without its counter on flash
    h.err("FILEWERR", "delete_key", slot=0)
    assert h.ok("public_key", slot=0)["public_key"] == pub
    h.err("FILEWERR", "change_pin", old=PIN, new=NEW_PIN)
    h.err("FILEWERR", "factory_reset", confirm="erase", pin=PIN)
    h.err("FILEWERR", "login", pin=PIN)
    assert h.m.session == before_session  # none of those ended or replaced it
    h.store.fail = False
    assert h.ok("sign", slot=0, message=b"m")["counter"] == 2
    h.restart()
    h.login(PIN)


def test_boot_survives_an_unwritable_store(tmp_path):
    path = tmp_path / "s.bin"
    store = FailingStore(str(path))
    store.fail = True
    h = Harness(path, store=store, provision=False)
    assert h.boot_info["boot_count"] == 1
    h.ok("info")
    h.err("FILEWERR", "login", pin=FACTORY_PIN)


# -- progress and the slow-down loop --------------------------------------------------------


def test_progress_is_called_around_long_operations(fast):
    fast.login()
    before = fast.progress_calls
    fast.keygen(0)
    assert fast.progress_calls - before >= 4  # around keygen, before/after the store write
    before = fast.progress_calls
    fast.ok("self_test")
    assert fast.progress_calls - before >= len(kat.NAMES)


def test_slow_ms_sleeps_in_small_steps_calling_progress(tmp_path):
    clock = [0]
    sleeps = []

    def sleep_ms(ms):
        sleeps.append(ms)
        clock[0] += ms

    store = keystore.KeyStore(str(tmp_path / "s.bin"))
    calls = []
    m = module.Module(store, crypto.load(True), os.urandom, lambda: clock[0],
                      progress=lambda: calls.append(clock[0]), slow_ms=250, sleep_ms=sleep_ms)
    m.boot()
    calls.clear()
    rsp = mcbor.decode(m.handle(mcbor.encode({"op": "info"})))
    assert rsp["ok"] is True
    assert sum(sleeps) == 250 and max(sleeps) <= module.SLOW_STEP_MS
    assert len(calls) >= 250 // module.SLOW_STEP_MS
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert max(gaps) <= module.SLOW_STEP_MS


# -- secrecy and robustness -----------------------------------------------------------------


def _occurs(secret, blobs):
    forms = (secret, secret.hex().encode(), secret.hex().upper().encode())
    return [b for b in blobs for f in forms if f in b]


def test_no_private_key_bytes_in_any_response(tmp_path):
    h = Harness(tmp_path / "s.bin")
    h.login()
    pub = h.keygen(0)
    priv = h.private_key(0)
    assert priv is not None and len(priv) == 32
    e = gm_sm2.message_digest(pub, b"m")
    session = [
        ("info", {}), ("public_key", {"slot": 0}), ("sign", {"slot": 0, "message": b"m"}),
        ("sign_digest", {"slot": 0, "digest": e}),
        ("sign", {"slot": 0, "message": priv}),  # echo bait: the message is never returned
        ("generate_key", {"slot": 0, "alg": "sm2"}),  # FILEEXISTS
        ("encrypt", {"alg": "sm2", "public_key": pub, "data": b"secret"}),
        ("decrypt", {"slot": 0, "ciphertext": b"junk"}),
        ("decrypt", {"slot": 0, "ciphertext": gm_sm2.encrypt(pub, b"x")}),
        ("hash_init", {"alg": "sm3", "public_key": pub}),
        ("verify", {"alg": "sm2", "public_key": pub, "message": b"m", "signature": bytes(64)}),
        ("sm4", {"mode": "ecb", "encrypt": True, "key": priv[:16], "data": bytes(16)}),
        ("self_test", {}), ("random", {"length": 1024}),
        ("change_pin", {"old": "000000", "new": NEW_PIN}),
        ("sign", {"slot": 0, "message": b"m", "id": 5}), ("export", {"slot": 0}),
        ("delete_key", {"slot": 0}),
    ]
    h.responses.clear()
    for op, args in session:
        h(op, **args)
    assert _occurs(priv, h.responses) == []
    for r in h.responses:
        rsp = mcbor.decode(r)
        assert priv.hex() not in str(rsp).lower()


REQUEST_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**64, 2**64 - 1) | st.binary(max_size=80)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),  # keys <= 23 UTF-8 bytes
    max_leaves=8)
ARG_NAMES = st.sampled_from(["slot", "alg", "overwrite", "message", "digest", "id", "pin",
                             "old", "new", "public_key", "signature", "context", "data",
                             "ciphertext", "mode", "encrypt", "key", "iv", "length", "confirm",
                             "session", "x"])


@pytest.fixture(scope="module")
def fuzz_harness(tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp("fuzz") / "s.bin")
    h.login()
    h.keygen(0)
    return h


OPS = ["info", "login", "logout", "change_pin", "generate_key", "public_key", "delete_key",
       "sign", "sign_digest", "verify", "hash_init", "hash_update", "hash_final", "encrypt",
       "decrypt", "sm4", "random", "self_test", "reset", "factory_reset", "nope"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(OPS), args=st.dictionaries(ARG_NAMES, REQUEST_VALUES, max_size=5))
def test_fuzzed_requests_always_get_a_wellformed_answer(fuzz_harness, op, args):
    """Any mix of ops and (mostly wrong) arguments: a well-formed answer, never UNKNOWERR."""
    h = fuzz_harness
    rsp = h(op, **args)
    assert isinstance(rsp["ok"], bool)
    if not rsp["ok"]:
        assert rsp["error"] == codes.NAMES[rsp["code"]]
        assert rsp["error"] != "UNKNOWERR", rsp
    if not h.m.logged_in or h.m.session != h.session or h.m.state["pin_retries"] < 5:
        # keep the session usable: start over as a technician would
        h.button = h.m.state["pin_retries"] == 0
        h.ok("factory_reset", confirm="erase", **({} if h.button else {"pin": PIN}))
        h.button = False
        h.provision()
        h.login()
        h.keygen(0, overwrite=True)
