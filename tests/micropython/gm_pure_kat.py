"""Known-answer run of appliance/gm/pure on MicroPython (also runs on CPython).

Usage: micropython gm_pure_kat.py <path to appliance/gm/pure> <path to gm-kat.json>

The pure modules are imported flatly (pure/ on sys.path), as the crypto module's firmware
freezes them. Prints one ``name value`` line per result (hex for bytes); the pytest side
(tests/test_gm_pure_micropython.py) compares them with the vectors and with CPython. Nothing
is asserted here: a mismatch must show up as a wrong value, a crash as a missing line.
"""
# ruff: noqa: UP031  (MicroPython-portable: %-formatting, no f-strings)

import binascii
import json
import sys

sys.path.insert(0, sys.argv[1])

import der  # noqa: E402
import ecdsa  # noqa: E402
import sm2  # noqa: E402
import sm3  # noqa: E402
import sm4  # noqa: E402


def h(b):
    return binascii.hexlify(b).decode()


def uh(s):
    return binascii.unhexlify(s)


def out(name, value):
    if isinstance(value, (bytes, bytearray)):
        value = h(value)
    print(name, value)


with open(sys.argv[2]) as f:
    kat = json.load(f)

out("impl", sys.implementation.name)

for i, v in enumerate(kat["sm3"]):
    out("sm3.%d" % i, sm3.digest(v["message_ascii"].encode()))
hasher = sm3.SM3()
for part in (b"ab", b"c"):
    hasher.update(part)
out("sm3.incremental", hasher.digest())
out("hmac", sm3.hmac(b"key", b"The quick brown fox jumps over the lazy dog"))

v = kat["sm4"][0]
rk = sm4.expand_key(uh(v["key"]))
ct = sm4.encrypt_block(rk, uh(v["plaintext"]))
out("sm4.0", ct)
out("sm4.0.dec", sm4.decrypt_block(rk, ct))
block = uh(v["plaintext"])
for _ in range(1000):
    block = sm4.encrypt_block(rk, block)
out("sm4.iter1000", block)
key = bytes(range(16))
iv = bytes(range(16, 32))
data = bytes(range(40)) + bytes(range(8))
out("sm4.ecb", sm4.encrypt_ecb(key, data))
out("sm4.cbc", sm4.encrypt_cbc(key, iv, data))
out("sm4.cbc.dec", sm4.decrypt_cbc(key, iv, sm4.encrypt_cbc(key, iv, data)))
out("sm4.ctr", sm4.ctr(key, iv, data + b"xyz"))
out("sm4.ctr.wrap", sm4.ctr(key, b"\xff" * 16, data))

v = kat["sm2_sign"][0]
priv = uh(v["private_key"])
pub = sm2.public_key_of(priv)
msg = v["message_ascii"].encode()
ident = v["id_ascii"].encode()
out("sm2.pub", pub)
z = sm2.za(pub, ident)
out("sm2.za", z)
e = sm3.digest(z + msg)
out("sm2.e", e)
sig = sm2.sign_digest(priv, e, int(v["k"], 16))
out("sm2.sig", sig)
out("sm2.verify", int(sm2.verify(pub, msg, sig, ident)))
out("sm2.verify.tampered", int(sm2.verify(pub, msg + b"!", sig, ident)))
sig2 = sm2.sign(priv, msg, ident)
out("sm2.verify.random_k", int(sm2.verify(pub, msg, sig2, ident)))
priv2, pub2 = sm2.generate_keypair()
out("sm2.keypair", int(sm2.public_key_of(priv2) == pub2))

plain = b"SM2 round trip on MicroPython, long enough for two KDF blocks......"
ctext = sm2.encrypt(pub, plain)
out("sm2.decrypt", sm2.decrypt(priv, ctext))
x1, y1, c3, c2 = der.decode_sm2_ciphertext(ctext)
bad = der.encode_sm2_ciphertext(x1, y1, c3, c2[:-1] + bytes((c2[-1] ^ 1,)))
try:
    sm2.decrypt(priv, bad)
    out("sm2.decrypt.tampered", "accepted")
except ValueError:
    out("sm2.decrypt.tampered", "ValueError")
try:
    sm2.verify(pub[1:], msg, sig, ident)
    out("sm2.badkey", "accepted")
except ValueError:
    out("sm2.badkey", "ValueError")

# RFC 6979 A.2.5, P-256 / SHA-256, message "sample"
d = uh("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721")
epub = ecdsa.public_key_of(d)
out("ecdsa.pub", epub)
k = int("A6E3C57DD01ABE90086538398355DD4C3B17AA873382B0F24D6129493D8AAD60", 16)
esig = ecdsa.sign(d, b"sample", None, k)
out("ecdsa.sig", esig)
out("ecdsa.verify", int(ecdsa.verify(epub, b"sample", esig)))
out("ecdsa.verify.tampered", int(ecdsa.verify(epub, b"samplf", esig)))

out("der.sig", der.encode_signature(1, 0x80))
r, s = der.decode_signature(der.encode_signature(2**255 + 7, 127))
out("der.sig.rt", "%x %x" % (r, s))
out("done", 1)
