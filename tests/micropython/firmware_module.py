"""The crypto module's command processor on a real MicroPython (also runs on CPython).

Usage: micropython firmware_module.py <firmware dir> <proto dir> <gm/pure dir> <scratch dir>

Imports firmware/, proto/ and appliance/gm/pure/ flatly, as the frozen firmware does, drives
Module directly (no framing) through a conformance subset -- PIN counting and lock, sessions,
the default PIN, the slow-down after failed PINs, factory_reset with the PIN or the reset
button, key generation, signing, hashing with Z_A, SM2 encryption, SM4, error codes -- and
power cuts at seeded random bytes of key-store writes (and during the PIN comparison) with
restarts. The module's clock is simulated: its sleeps advance it. Prints one ``name value`` line per
result (hex for bytes); tests/hsm/test_firmware_micropython.py checks them against
appliance.gm and against the same script run by CPython. Nothing is asserted here.
"""
# ruff: noqa: UP031, E402  (MicroPython-portable: %-formatting, no f-strings; path set first)

import binascii
import os
import sys
import time

for _p in sys.argv[1:4]:
    sys.path.insert(0, _p)
SCRATCH = sys.argv[4]

import crypto
import kat
import keystore
import mcbor
import module

FACTORY_PIN = "123456"
PIN = "11223344"
CARRY = ("change_pin", "generate_key", "delete_key", "sign", "sign_digest", "decrypt",
         "logout", "reset", "hash_init", "hash_update", "hash_final")
SESSIONS = {}  # id(module) -> the session its last login returned
CLOCK = [0]
BUTTON = [False]


def fake_ms():
    return CLOCK[0]


def fake_sleep(n):
    CLOCK[0] += n


def ms():
    if hasattr(time, "ticks_ms"):
        return time.ticks_ms()
    return int(time.monotonic() * 1000)


def elapsed(t0):
    if hasattr(time, "ticks_diff"):
        return time.ticks_diff(ms(), t0)
    return ms() - t0


def out(name, value):
    if isinstance(value, (bytes, bytearray)):
        value = binascii.hexlify(value).decode()
    print(name, value)


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


BACKEND = crypto.load()


def start(path, cut=None, kat_fail=False):
    m = module.Module(keystore.KeyStore(path, cut), BACKEND, os.urandom, fake_ms,
                      kat_fail=kat_fail, sleep_ms=fake_sleep, presence=lambda: BUTTON[0])
    m.boot()
    return m


def call(m, op, **args):
    """One command; the module's session is added where the op carries one (session=None
    sends none, session=x sends x)."""
    if "session" in args:
        if args["session"] is None:
            del args["session"]
    elif op in CARRY and SESSIONS.get(id(m)) is not None:
        args["session"] = SESSIONS[id(m)]
    args["op"] = op
    rsp = mcbor.decode(m.handle(mcbor.encode(args)))
    if rsp["ok"] and op == "login":
        SESSIONS[id(m)] = rsp["session"]
    elif rsp["ok"] and op in ("logout", "factory_reset"):
        SESSIONS[id(m)] = None
    return rsp


def err(m, op, **args):
    rsp = call(m, op, **args)
    if rsp["ok"]:
        return "ok"
    return rsp["error"]


out("impl", sys.implementation.name)
out("backend", BACKEND.name)

path = SCRATCH + "/mp-store.bin"
remove(path)
t0 = ms()
m = module.Module(keystore.KeyStore(path), BACKEND, os.urandom, ms)
boot = m.boot()
out("boot.ms", elapsed(t0))
out("boot.count", boot["boot_count"])
out("boot.firmware", boot["firmware"])
out("kat.passed", kat.passed(m.kat_results))
info = call(m, "info")
out("info.slots", info["slots"])
out("info.retries", info["pin_retries"])
out("info.algs", ",".join(info["algs"]))
out("info.default_pin", info["default_pin"])

# PIN: 4 x PARDENY, then PIN_LOCKED; the lock survives a restart; factory_reset clears it
m = start(path)
for i in range(5):
    CLOCK[0] = 0
    rsp = call(m, "login", pin="000000")
    out("pin.bad.%d" % i, "%s:%s:%d" % (rsp["error"], rsp.get("retries"), CLOCK[0] >= 1000))
m = start(path)
out("pin.locked.restart", err(m, "login", pin=FACTORY_PIN))
out("pin.factory_reset.nobutton", err(m, "factory_reset", confirm="erase"))
BUTTON[0] = True
out("pin.factory_reset", err(m, "factory_reset", confirm="erase"))
BUTTON[0] = False
out("pin.login", err(m, "login", pin=FACTORY_PIN))
out("pin.session.len", len(SESSIONS[id(m)]))
out("pin.default.keygen", err(m, "generate_key", slot=0, alg="sm2"))
out("pin.change.default", err(m, "change_pin", old=FACTORY_PIN, new=FACTORY_PIN))
out("pin.change.unicode", err(m, "change_pin", old=FACTORY_PIN,
                              new="\u5bc6\u7801\u5bc6\u7801\u5bc6\u7801"))
out("pin.default.after", call(m, "info")["default_pin"])
m = start(path)
out("pin.login.unicode", err(m, "login", pin="\u5bc6\u7801\u5bc6\u7801\u5bc6\u7801"))
out("pin.factory_reset.nopin", err(m, "factory_reset", confirm="erase"))
rsp = call(m, "factory_reset", confirm="erase", pin="999999")
out("pin.factory_reset.wrong", "%s:%s" % (rsp["error"], rsp["retries"]))
out("pin.factory_reset2", err(m, "factory_reset", confirm="erase",
                              pin="\u5bc6\u7801\u5bc6\u7801\u5bc6\u7801"))
out("pin.login2", err(m, "login", pin=FACTORY_PIN))
out("pin.change.work", err(m, "change_pin", old=FACTORY_PIN, new=PIN))

# keys and signatures
out("sign.nologin", err(start(path), "sign", slot=0, message=b"m"))
out("sign.empty", err(m, "sign", slot=0, message=b"m"))
out("sign.nosession", err(m, "sign", slot=0, message=b"m", session=None))
t0 = ms()
pub = call(m, "generate_key", slot=0, alg="sm2")["public_key"]
out("keygen.ms", elapsed(t0))
out("keygen.pub", pub)
out("keygen.exists", err(m, "generate_key", slot=0, alg="sm2"))
out("keygen.rsa", err(m, "generate_key", slot=1, alg="rsa"))
out("keygen.slot16", err(m, "generate_key", slot=16, alg="sm2"))
message = b"evidence.deposit on micropython"
t0 = ms()
rsp = call(m, "sign", slot=0, message=message)
out("sign.ms", elapsed(t0))
sig = rsp["signature"]
out("sign.sig", sig)
out("sign.counter", rsp["counter"])
out("sign.counter2", call(m, "sign", slot=0, message=message)["counter"])
e = BACKEND.sm3(BACKEND.sm2_za(pub, module.DEFAULT_ID) + message)
out("sign_digest.sig", call(m, "sign_digest", slot=0, digest=e)["signature"])
t0 = ms()
out("verify.valid", call(m, "verify", alg="sm2", public_key=pub, message=message,
                         signature=sig)["valid"])
out("verify.ms", elapsed(t0))
out("verify.kat", call(m, "verify", alg="sm2", public_key=kat.SM2_PUB, message=kat.SM2_MSG,
                       signature=kat.SM2_SIG)["valid"])
out("verify.badkey", err(m, "verify", alg="sm2", public_key=b"\x04" + bytes(64),
                         message=b"m", signature=bytes(64)))
m = start(path)
call(m, "login", pin=PIN)
out("sign.counter.restart", call(m, "sign", slot=0, message=b"x")["counter"])

# sessions: refused without it or with another; a failed login keeps it; only a successful
# one replaces it; logout and reset carry it while it is open
session = SESSIONS[id(m)]
out("session.missing", err(m, "sign", slot=0, message=b"x", session=None))
out("session.other", err(m, "sign", slot=0, message=b"x", session=bytes(16)))
out("session.counter", call(m, "sign", slot=0, message=b"x")["counter"])
out("session.badlogin", err(m, "login", pin="000000"))
out("session.kept", call(m, "sign", slot=0, message=b"x", session=session)["counter"])
out("session.logout.missing", err(m, "logout", session=None))
out("session.reset.other", err(m, "reset", session=bytes(16)))
out("session.reset.flag", m.reset_requested)
ctx = call(m, "hash_init", alg="sm3")["context"]
out("session.hash.missing", err(m, "hash_update", context=ctx, data=b"x", session=None))
call(m, "login", pin=PIN)
out("session.replaced", err(m, "sign", slot=0, message=b"x", session=session))
out("session.hash.other", err(m, "hash_final", context=ctx))
out("session.hash.owner", err(m, "hash_final", context=ctx, session=session))
call(m, "logout")
out("session.logout", err(m, "sign", slot=0, message=b"x", session=session))

# slow-down: after 3 failed PINs every comparison is answered 1 s (module clock) later
took = []
for _ in range(4):
    CLOCK[0] = 0
    call(m, "login", pin="000000")
    took.append(CLOCK[0])
out("slow.took", ",".join(["%d" % (t >= 1000) for t in took]))
CLOCK[0] = 0
out("slow.right", err(m, "login", pin=PIN))
out("slow.right.took", CLOCK[0] >= 1000)

# a power cut while the PIN is compared: the try is already spent
real_pin_hash = module.Module._pin_hash


def cut_in_comparison(self, salt, pin):
    raise keystore.PowerCut("cut")


module.Module._pin_hash = cut_in_comparison
try:
    call(m, "login", pin=PIN)
    out("cut.comparison", "no cut")
except keystore.PowerCut:
    out("cut.comparison", "cut")
module.Module._pin_hash = real_pin_hash
m = start(path)
out("cut.comparison.retries", call(m, "info")["pin_retries"])
call(m, "login", pin=PIN)

# hashing with Z_A, contexts
ctx = call(m, "hash_init", alg="sm3", public_key=pub)["context"]
call(m, "hash_update", context=ctx, data=message)
out("hash.za", call(m, "hash_final", context=ctx)["digest"])
ctxs = [call(m, "hash_init", alg="sm3")["context"] for _ in range(4)]
out("hash.fifth", err(m, "hash_init", alg="sm3"))
out("hash.unknown", err(m, "hash_final", context=123456))

# SM2 encryption and SM4
ct = call(m, "encrypt", alg="sm2", public_key=pub, data=b"session key")["ciphertext"]
out("encrypt.ct", ct)
out("decrypt.data", call(m, "decrypt", slot=0, ciphertext=ct)["data"])
tampered = ct[:-1] + bytes([ct[-1] ^ 1])
out("decrypt.tampered", err(m, "decrypt", slot=0, ciphertext=tampered))
key = bytes(range(16))
iv = bytes(range(16, 32))
data = bytes(range(48))
out("sm4.cbc", call(m, "sm4", mode="cbc", encrypt=True, key=key, iv=iv, data=data)["data"])
out("sm4.ctr", call(m, "sm4", mode="ctr", encrypt=True, key=key, iv=iv, data=data[:37])["data"])
out("sm4.gcm", err(m, "sm4", mode="gcm", encrypt=True, key=key, iv=iv, data=data))
out("sm4.unaligned", err(m, "sm4", mode="ecb", encrypt=True, key=key, data=data[:17]))

# dispatch
out("op.unknown", err(m, "export_key", slot=0))
out("cbor.noncanonical", mcbor.decode(m.handle(b"\xa1\x62op\x78\x04info"))["error"])
out("random.len", len(call(m, "random", length=1024)["data"]))
out("random.zero", err(m, "random", length=0))
rsp = call(m, "self_test")
out("self_test", "%s:%d" % (rsp["passed"], len(rsp["results"])))
km = start(SCRATCH + "/mp-katfail.bin", kat_fail=True)
out("katfail.sign", err(km, "sign", slot=0, message=b"m"))
out("katfail.info", err(km, "info"))


# power cuts: seeded xorshift picks the byte; restart after each; keys never torn
class Cut:
    def __init__(self, seed):
        self.x = seed
        self.armed = False
        self.count = 0

    def rnd(self):
        x = self.x
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.x = x
        return x

    def __call__(self, n):
        if not self.armed:
            return None
        self.armed = False
        self.count += 1
        return self.rnd() % n


cut = Cut(2463534242)
torn = 0
counter_back = 0
pin_up = 0
rounds = 0
m = start(path, cut)
call(m, "login", pin=PIN)
while cut.count < 24 and rounds < 200:
    rounds += 1
    before = keystore.KeyStore(path).load()
    kind = cut.rnd() % 3
    cut.armed = True
    try:
        if kind == 0:
            call(m, "generate_key", slot=1, alg="sm2", overwrite=True)
        elif kind == 1:
            call(m, "sign", slot=0, message=b"m")
        else:
            call(m, "login", pin="999999")
        cut.armed = False
    except keystore.PowerCut:
        m = start(path, cut)
    after = keystore.KeyStore(path).load()
    for entry in after["keys"]:
        if entry is not None and BACKEND.sm2_public_key_of(entry[1]) != entry[2]:
            torn += 1
    if after["counters"][0] < before["counters"][0]:
        counter_back += 1
    if kind == 2 and after["pin_retries"] > before["pin_retries"]:
        pin_up += 1
    if after["pin_retries"] < 3 or not m.logged_in:
        call(m, "login", pin=PIN)
out("cut.count", cut.count)
out("cut.torn", torn)
out("cut.counter_back", counter_back)
out("cut.pin_up", pin_up)
out("cut.key0", keystore.KeyStore(path).load()["keys"][0][2] == pub)
remove(path)
remove(SCRATCH + "/mp-katfail.bin")
out("done", 1)
