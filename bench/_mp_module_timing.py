"""Module compute time per request, measured inside the firmware's own interpreter.

Usage: (micropython|python) _mp_module_timing.py <firmware> <proto> <gm/pure> <store> <n>
Prints ``sign_us <mean>`` and ``sm3_update_us <mean>`` (3072-byte hash_update).
Run by bench/hsm.py; MicroPython-portable.
"""
# ruff: noqa: UP031, E402

import os
import sys
import time

for _p in sys.argv[1:4]:
    sys.path.insert(0, _p)

import crypto
import keystore
import mcbor
import module


def now_us():
    if hasattr(time, "ticks_us"):
        return time.ticks_us()
    return int(time.monotonic() * 1000000)


def took(t0):
    if hasattr(time, "ticks_diff"):
        return time.ticks_diff(now_us(), t0)
    return now_us() - t0


def main():
    n = int(sys.argv[5])
    mod = module.Module(keystore.KeyStore(sys.argv[4]), crypto.load(None), os.urandom,
                        lambda: now_us() // 1000)
    mod.boot()
    session = mcbor.decode(mod.handle(mcbor.encode({"op": "login", "pin": "123456"})))["session"]
    mod.handle(mcbor.encode({"op": "change_pin", "old": "123456", "new": "20240917",
                             "session": session}))  # the factory PIN cannot sign
    mod.handle(mcbor.encode({"op": "generate_key", "slot": 0, "alg": "sm2", "overwrite": True,
                             "session": session}))
    sign = mcbor.encode({"op": "sign", "slot": 0, "message": b"m" * 32, "session": session})
    t0 = now_us()
    for _ in range(n):
        mod.handle(sign)
    print("sign_us %d" % (took(t0) // n))
    rsp = mcbor.decode(mod.handle(mcbor.encode({"op": "hash_init", "alg": "sm3",
                                                "session": session})))
    update = mcbor.encode({"op": "hash_update", "context": rsp["context"], "data": b"x" * 3072,
                           "session": session})
    t0 = now_us()
    for _ in range(n):
        mod.handle(update)
    print("sm3_update_us %d" % (took(t0) // n))


main()
