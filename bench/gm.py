"""National-crypto benchmark: the fast path against `openssl speed`, gmssl and the pure path.

Goals from the foundation issue: SM2 verify >= 0.9x `openssl speed sm2`, >= 40x gmssl.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import openssl_sm2, openssl_throughput, rate, report  # noqa: E402
from gmssl import sm2 as gmssl_sm2  # noqa: E402
from gmssl import sm4 as gmssl_sm4  # noqa: E402

from appliance.gm import backend, sm2, sm3, sm4  # noqa: E402
from appliance.gm.pure import sm3 as pure_sm3  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))


def main() -> None:
    backend.use("openssl")
    message = b"x" * 20  # what `openssl speed sm2` signs
    priv, pub = sm2.generate_keypair()
    while pub[1:].hex().startswith("04"):  # gmssl mangles such keys (docs/decisions.md)
        priv, pub = sm2.generate_keypair()
    sig = sm2.sign(priv, message)

    ossl_sign, ossl_verify = openssl_sm2(int(SECONDS))
    fast_sign = rate(lambda: sm2.sign(priv, message), SECONDS)
    fast_verify = rate(lambda: sm2.verify(pub, message, sig), SECONDS)
    report("sm2 sign/s (fast path)", fast_sign, "op/s", "openssl speed sm2 sign", ossl_sign)
    report("sm2 verify/s (fast path)", fast_verify, "op/s", "openssl speed sm2 verify",
           ossl_verify, goal=0.9)

    g = gmssl_sm2.CryptSM2(private_key=priv.hex(), public_key=pub[1:].hex())
    gsig = g.sign_with_sm3(message, os.urandom(32).hex())
    g_sign = rate(lambda: g.sign_with_sm3(message, os.urandom(32).hex()), SECONDS)
    g_verify = rate(lambda: g.verify_with_sm3(gsig, message), SECONDS)
    report("sm2 sign/s (fast path)", fast_sign, "op/s", "gmssl sign", g_sign, goal=40)
    report("sm2 verify/s (fast path)", fast_verify, "op/s", "gmssl verify", g_verify, goal=40)
    # Context for the 40x goal: how far OpenSSL itself is ahead of gmssl on this machine.
    report("openssl speed sm2 sign/s", ossl_sign, "op/s", "gmssl sign", g_sign)
    report("openssl speed sm2 verify/s", ossl_verify, "op/s", "gmssl verify", g_verify)

    backend.use("pure")
    pure_sign = rate(lambda: sm2.sign(priv, message), SECONDS)
    pure_verify = rate(lambda: sm2.verify(pub, message, sig), SECONDS)
    backend.use("openssl")
    report("sm2 sign/s (pure path)", pure_sign, "op/s", "gmssl sign", g_sign)
    report("sm2 verify/s (pure path)", pure_verify, "op/s", "gmssl verify", g_verify)

    size = 16384
    block = os.urandom(size)
    mb = size / 1e6
    ossl_sm3 = openssl_throughput("sm3", size, int(SECONDS))
    ours_sm3 = rate(lambda: sm3.digest(block), SECONDS) * mb
    hashlib_sm3 = rate(lambda: hashlib.new("sm3", block).digest(), SECONDS) * mb
    report("sm3 MB/s (appliance.gm.sm3)", ours_sm3, "MB/s", "hashlib sm3", hashlib_sm3)
    report("sm3 MB/s (appliance.gm.sm3)", ours_sm3, "MB/s", "openssl speed -evp sm3", ossl_sm3)
    small = block[:1024]
    pure_sm3_rate = rate(lambda: pure_sm3.digest(small), SECONDS) * len(small) / 1e6
    report("sm3 MB/s (pure path)", pure_sm3_rate, "MB/s", "hashlib sm3", hashlib_sm3)

    key, iv = os.urandom(16), os.urandom(16)
    ossl_sm4 = openssl_throughput("sm4-cbc", size, int(SECONDS))
    ours_sm4 = rate(lambda: sm4.encrypt_cbc_raw(key, iv, block), SECONDS) * mb
    report("sm4-cbc MB/s (fast path)", ours_sm4, "MB/s", "openssl speed -evp sm4-cbc", ossl_sm4,
           goal=0.9)
    gcrypt = gmssl_sm4.CryptSM4()
    gcrypt.set_key(key, gmssl_sm4.SM4_ENCRYPT)
    g_sm4 = rate(lambda: gcrypt.crypt_cbc(iv, small), SECONDS) * len(small) / 1e6
    report("sm4-cbc MB/s (fast path)", ours_sm4, "MB/s", "gmssl sm4-cbc", g_sm4)


if __name__ == "__main__":
    main()
