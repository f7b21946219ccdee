"""The public national-crypto API (appliance.gm) on both backends, against independent oracles.

Oracles: the national-standard vectors (tests/data/gm-kat.json), the OpenSSL command line
(never our ctypes binding), and the gmssl package. The pure path's own known-answer tests,
including SM2 signing with the standard's fixed k, are in test_gm_pure.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import oracles
import pytest
from gmssl import sm2 as gmssl_sm2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.gm import backend, ecdsa, hmac_sm3, libcrypto, sm2, sm3, sm4
from appliance.gm.errors import CryptoError, DecryptionError, InvalidKeyError, PaddingError
from appliance.gm.pure import der

KAT = json.loads((Path(__file__).parent / "data" / "gm-kat.json").read_text())
SIGN_KAT = KAT["sm2_sign"][0]
KAT_PRIV = bytes.fromhex(SIGN_KAT["private_key"])
KAT_PUB = bytes.fromhex(SIGN_KAT["public_key"])
KAT_MSG = SIGN_KAT["message_ascii"].encode()
KAT_SIG = bytes.fromhex(SIGN_KAT["r"] + SIGN_KAT["s"])
SM2_P = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF", 16)


@pytest.fixture(params=[backend.OPENSSL, backend.PURE])
def path(request):
    """Run the test on the OpenSSL fast path and on the portable pure-Python path."""
    previous = backend.name()
    backend.use(request.param)
    yield request.param
    backend.use(previous)


@pytest.fixture()
def both():
    """For agreement tests: a function that runs a callable on a named backend."""
    previous = backend.name()

    def on(name, fn, *args):
        backend.use(name)
        try:
            return fn(*args)
        finally:
            backend.use(previous)

    return on


def test_fast_path_is_available_here():
    # The terminal's OpenSSL 3 has SM2/SM4: if this fails, the fast path silently fell back.
    assert libcrypto.AVAILABLE, libcrypto.version()
    assert os.environ.get("APPLIANCE_GM_BACKEND") == "pure" or backend.name() == "openssl"


# ---------------------------------------------------------------------------------- SM3


@pytest.mark.parametrize("vector", KAT["sm3"], ids=lambda v: v["message_ascii"][:8])
def test_sm3_vectors(vector):
    message = vector["message_ascii"].encode()
    assert sm3.digest(message).hex() == vector["digest"]
    hasher = sm3.new()
    for i in range(len(message)):  # byte by byte through the incremental hasher
        hasher.update(message[i:i + 1])
    assert hasher.copy().digest().hex() == vector["digest"]
    assert hasher.digest().hex() == vector["digest"]


def test_hmac_sm3_matches_openssl(tmp_path):
    key = bytes(range(70))  # longer than the block: exercises the key hashing step
    data = b"capture bytes" * 10
    (tmp_path / "d").write_bytes(data)
    for k in (key, key[:16]):
        out = oracles.run("mac", "-digest", "SM3", "-macopt", "hexkey:" + k.hex(),
                          "-in", str(tmp_path / "d"), "HMAC").decode().strip()
        assert hmac_sm3(k, data).hex() == out.lower()


# ---------------------------------------------------------------------------------- SM4


@pytest.mark.parametrize("vector", [v for v in KAT["sm4"] if "iterations" not in v])
def test_sm4_block_vector(path, vector):
    key = bytes.fromhex(vector["key"])
    pt = bytes.fromhex(vector["plaintext"])
    assert sm4.encrypt_ecb_raw(key, pt).hex() == vector["ciphertext"]
    assert sm4.decrypt_ecb_raw(key, bytes.fromhex(vector["ciphertext"])) == pt


@pytest.mark.slow
def test_sm4_million_iterations_fast_path():
    vector = next(v for v in KAT["sm4"] if "iterations" in v)
    key = bytes.fromhex(vector["key"])
    block = bytes.fromhex(vector["plaintext"])
    for _ in range(vector["iterations"]):
        block = sm4.encrypt_ecb_raw(key, block)
    assert block.hex() == vector["ciphertext"]


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1000])
def test_sm4_cbc_interop_with_openssl_both_ways(path, tmp_path, size):
    key, iv, data = os.urandom(16), os.urandom(16), os.urandom(size)
    ours = sm4.encrypt_cbc(key, iv, data)
    (tmp_path / "pt").write_bytes(data)
    theirs = oracles.run("enc", "-sm4-cbc", "-K", key.hex(), "-iv", iv.hex(),
                         "-in", str(tmp_path / "pt"))
    assert ours == theirs
    (tmp_path / "ct").write_bytes(ours)
    assert oracles.run("enc", "-d", "-sm4-cbc", "-K", key.hex(), "-iv", iv.hex(),
                       "-in", str(tmp_path / "ct")) == data
    assert sm4.decrypt_cbc(key, iv, theirs) == data


@pytest.mark.parametrize("mode", ["ecb", "ctr"])
def test_sm4_ecb_and_ctr_match_openssl(path, tmp_path, mode):
    key = os.urandom(16)
    iv = b"\x00" * 8 + b"\xff" * 8  # the counter carries across the low 64 bits
    data = os.urandom(100)
    (tmp_path / "pt").write_bytes(data)
    args = ["enc", "-sm4-" + mode, "-K", key.hex(), "-in", str(tmp_path / "pt")]
    if mode == "ctr":
        args += ["-iv", iv.hex()]
        assert sm4.ctr(key, iv, data) == oracles.run(*args)
        assert sm4.ctr(key, iv, sm4.ctr(key, iv, data)) == data
    else:
        assert sm4.encrypt_ecb(key, data) == oracles.run(*args)


@pytest.mark.parametrize("last_block", [
    bytes(15) + b"\x00",                 # pad length 0
    bytes(15) + b"\x11",                 # pad length 17
    bytes(12) + b"\x03\x01\x03\x03",     # first pad byte differs
    bytes(14) + b"\x01\x02",             # last pad byte alone is right, the one before is not
], ids=["zero", "seventeen", "inconsistent", "short"])
def test_sm4_bad_padding_is_a_typed_error(path, last_block):
    key, iv = os.urandom(16), os.urandom(16)
    forged = sm4.encrypt_cbc_raw(key, iv, os.urandom(16) + last_block)
    with pytest.raises(PaddingError):
        sm4.decrypt_cbc(key, iv, forged)


def test_sm4_rejects_bad_sizes(path):
    with pytest.raises(InvalidKeyError):
        sm4.encrypt_cbc(bytes(15), bytes(16), b"x")
    with pytest.raises(CryptoError):
        sm4.encrypt_cbc(bytes(16), bytes(15), b"x")
    with pytest.raises(CryptoError):
        sm4.decrypt_cbc(bytes(16), bytes(16), bytes(17))
    with pytest.raises(PaddingError):
        sm4.decrypt_cbc(bytes(16), bytes(16), b"")
    with pytest.raises(CryptoError):
        sm4.encrypt_ecb_raw(bytes(16), bytes(5))


# ---------------------------------------------------------------------------------- SM2


def test_sm2_vector(path):
    assert sm2.public_key_of(KAT_PRIV) == KAT_PUB
    assert sm2.za(KAT_PUB, SIGN_KAT["id_ascii"].encode()).hex() == SIGN_KAT["z_a"].lower()
    assert sm2.message_digest(KAT_PUB, KAT_MSG).hex() == SIGN_KAT["e"].lower()
    assert sm2.verify(KAT_PUB, KAT_MSG, KAT_SIG)
    assert sm2.verify_digest(KAT_PUB, bytes.fromhex(SIGN_KAT["e"]), KAT_SIG)


def test_sm2_sign_round_trip_and_fresh_nonces(path):
    priv, pub = sm2.generate_keypair()
    assert len(priv) == 32 and len(pub) == 65 and pub[0] == 4
    assert sm2.public_key_of(priv) == pub
    a, b = sm2.sign(priv, b"authorize"), sm2.sign(priv, b"authorize")
    assert a[:32] != b[:32], "two signatures share r: the nonce repeated"
    assert sm2.verify(pub, b"authorize", a) and sm2.verify(pub, b"authorize", b)
    assert not sm2.verify(pub, b"authorizE", a)
    assert not sm2.verify(pub, b"authorize", a, id=b"another id")
    other = sm2.generate_keypair()[1]
    assert not sm2.verify(other, b"authorize", a)


def test_sm2_signature_verifies_with_openssl_cli(path, tmp_path):
    message = b"license.authorize " + os.urandom(8)
    pem, priv, pub = oracles.generate_key(tmp_path)
    (tmp_path / "m").write_bytes(message)
    (tmp_path / "pub.pem").write_bytes(oracles.public_pem(pub))
    (tmp_path / "sig").write_bytes(sm2.signature_to_der(sm2.sign(priv, message)))
    out = oracles.run("pkeyutl", "-verify", "-rawin", "-digest", "sm3", "-pubin",
                      "-inkey", str(tmp_path / "pub.pem"), "-in", str(tmp_path / "m"),
                      "-sigfile", str(tmp_path / "sig"), "-pkeyopt", oracles.DISTID)
    assert b"Verified Successfully" in out


def test_sm2_accepts_openssl_cli_signatures(path, tmp_path):
    message = os.urandom(300)
    pem, priv, pub = oracles.generate_key(tmp_path)
    assert sm2.public_key_of(priv) == pub
    (tmp_path / "m").write_bytes(message)
    der_sig = oracles.run("pkeyutl", "-sign", "-rawin", "-digest", "sm3", "-inkey", str(pem),
                          "-in", str(tmp_path / "m"), "-pkeyopt", oracles.DISTID)
    signature = sm2.signature_from_der(der_sig)
    assert sm2.verify(pub, message, signature)
    assert not sm2.verify(pub, message + b"\x00", signature)


def test_our_key_encoding_signs_with_openssl_cli(path, tmp_path):
    priv, pub = sm2.generate_keypair()
    (tmp_path / "k.pem").write_bytes(oracles.private_pem(priv, pub))
    (tmp_path / "m").write_bytes(b"hello")
    der_sig = oracles.run("pkeyutl", "-sign", "-rawin", "-digest", "sm3",
                          "-inkey", str(tmp_path / "k.pem"), "-in", str(tmp_path / "m"),
                          "-pkeyopt", oracles.DISTID)
    assert sm2.verify(pub, b"hello", sm2.signature_from_der(der_sig))


def test_sm2_encryption_interop_with_openssl_cli(path, tmp_path):
    pem, priv, pub = oracles.generate_key(tmp_path)
    secret = os.urandom(48)  # the envelope's SM4 key || HMAC key
    (tmp_path / "ct").write_bytes(sm2.encrypt(pub, secret))
    assert oracles.run("pkeyutl", "-decrypt", "-inkey", str(pem),
                       "-in", str(tmp_path / "ct")) == secret
    (tmp_path / "pt").write_bytes(secret)
    (tmp_path / "pub.pem").write_bytes(oracles.public_pem(pub))
    theirs = oracles.run("pkeyutl", "-encrypt", "-pubin", "-inkey", str(tmp_path / "pub.pem"),
                         "-in", str(tmp_path / "pt"))
    assert sm2.decrypt(priv, theirs) == secret


def _gmssl(pub: bytes, priv: bytes | None = None) -> gmssl_sm2.CryptSM2:
    # gmssl strips a leading "04" with str.lstrip, which also eats a 0 or 4 starting X:
    # hand it the 128-hex-digit form and only keys whose X does not start with "04".
    return gmssl_sm2.CryptSM2(private_key=priv.hex() if priv else None, public_key=pub[1:].hex())


def _gmssl_safe_keypair() -> tuple[bytes, bytes]:
    while True:
        priv, pub = sm2.generate_keypair()
        if not pub[1:].hex().startswith("04"):
            return priv, pub


def test_sm2_gmssl_oracle_both_ways(path):
    priv, pub = _gmssl_safe_keypair()
    message = b"evidence.deposit"
    assert _gmssl(pub).verify_with_sm3(sm2.sign(priv, message).hex(), message)
    theirs = _gmssl(pub, priv).sign_with_sm3(message, os.urandom(32).hex())
    assert sm2.verify(pub, message, bytes.fromhex(theirs))


@pytest.mark.parametrize("mutate", [
    lambda k: k[:64],                                  # 64 bytes
    lambda k: k + b"\x00",                             # 66 bytes
    lambda k: b"\x02" + k[1:],                         # compressed prefix on 64 bytes
    lambda k: k[:-1] + bytes([k[-1] ^ 1]),             # off the curve
    lambda k: b"\x04" + bytes(64),                     # (0, 0): not on the curve
    lambda k: b"\x04" + SM2_P.to_bytes(32, "big") + k[33:],  # x >= p
    lambda k: "04" + k[1:].hex(),                      # not bytes at all
], ids=["64", "66", "prefix", "off-curve", "zero", "x>=p", "str"])
def test_sm2_bad_public_keys(path, mutate):
    bad = mutate(KAT_PUB)
    assert sm2.verify(bad, KAT_MSG, KAT_SIG) is False
    with pytest.raises(InvalidKeyError):
        sm2.za(bad)
    with pytest.raises(InvalidKeyError):
        sm2.encrypt(bad, b"secret")


N = sm2.N


@pytest.mark.parametrize("signature", [
    KAT_SIG[:63], KAT_SIG + b"\x00", b"",
    bytes(32) + KAT_SIG[32:],                          # r = 0
    KAT_SIG[:32] + bytes(32),                          # s = 0
    N.to_bytes(32, "big") + KAT_SIG[32:],              # r = n
    KAT_SIG[:32] + N.to_bytes(32, "big"),              # s = n
    (int(SIGN_KAT["r"], 16) + N).to_bytes(33, "big")[-32:] + KAT_SIG[32:],  # r + n, wrapped
    b"\xff" * 64,
], ids=["63", "65", "empty", "r=0", "s=0", "r=n", "s=n", "r+n", "ff"])
def test_sm2_bad_signatures_are_false(path, signature):
    assert sm2.verify(KAT_PUB, KAT_MSG, signature) is False


def test_sm2_verify_never_raises_on_wrong_types(path):
    for args in [(None, KAT_MSG, KAT_SIG), (KAT_PUB, None, KAT_SIG), (KAT_PUB, KAT_MSG, None),
                 (KAT_PUB, KAT_MSG, KAT_SIG.hex())]:
        assert sm2.verify(*args) is False


@pytest.mark.parametrize("private_key", [
    bytes(32), N.to_bytes(32, "big"), (N - 1).to_bytes(32, "big"), b"\xff" * 32, b"\x01" * 31,
], ids=["0", "n", "n-1", "ff", "31-bytes"])
def test_sm2_bad_private_keys(path, private_key):
    with pytest.raises(InvalidKeyError):
        sm2.public_key_of(private_key)
    with pytest.raises(InvalidKeyError):
        sm2.sign(private_key, b"m")


def _tamper_der(ciphertext: bytes, part: str) -> bytes:
    x, y, c3, c2 = der.decode_sm2_ciphertext(ciphertext)
    if part == "c3":
        c3 = bytes([c3[0] ^ 1]) + c3[1:]
    elif part == "c2":
        c2 = c2[:-1] + bytes([c2[-1] ^ 0x80])
    elif part == "c1":
        x ^= 1
    elif part == "c3-short":  # our encoder refuses this, so build the DER by hand
        ints = oracles.der_integer(x) + oracles.der_integer(y)
        return oracles.tlv(0x30, ints + oracles.tlv(0x04, c3[:31]) + oracles.tlv(0x04, c2))
    return der.encode_sm2_ciphertext(x, y, c3, c2)


@pytest.mark.parametrize("part", ["c3", "c2", "c1", "c3-short", "truncated", "trailing"])
def test_sm2_tampered_ciphertext(path, part):
    priv, pub = sm2.generate_keypair()
    ciphertext = sm2.encrypt(pub, b"the envelope secret")
    if part == "truncated":
        bad = ciphertext[:-1]
    elif part == "trailing":
        bad = ciphertext + b"\x00"
    else:
        bad = _tamper_der(ciphertext, part)
    with pytest.raises(DecryptionError):
        sm2.decrypt(priv, bad)
    assert sm2.decrypt(priv, ciphertext) == b"the envelope secret"


def test_sm2_ciphertext_to_another_key_fails(path):
    priv, pub = sm2.generate_keypair()
    other = sm2.generate_keypair()[0]
    with pytest.raises(DecryptionError):
        sm2.decrypt(other, sm2.encrypt(pub, b"x" * 48))


# ---------------------------------------------------------------------------------- ECDSA


def test_ecdsa_round_trip_and_rejections(path):
    priv, pub = ecdsa.generate_keypair()
    assert ecdsa.public_key_of(priv) == pub
    sig = ecdsa.sign(priv, b"vote")
    assert ecdsa.verify(pub, b"vote", sig)
    assert not ecdsa.verify(pub, b"votE", sig)
    assert not ecdsa.verify(pub[:64], b"vote", sig)
    assert not ecdsa.verify(pub, b"vote", sig[:63])
    assert not ecdsa.verify(pub, b"vote", bytes(32) + sig[32:])
    assert not ecdsa.verify(pub, b"vote", sig[:32] + ecdsa.N.to_bytes(32, "big"))
    # An SM2 key is not a P-256 key: off this curve.
    assert not ecdsa.verify(KAT_PUB, b"vote", sig)


def test_ecdsa_interop_with_openssl_cli(path, tmp_path):
    pem, priv, pub = oracles.generate_key(tmp_path, "EC")
    (tmp_path / "m").write_bytes(b"vote")
    theirs = oracles.run("dgst", "-sha256", "-sign", str(pem), str(tmp_path / "m"))
    assert ecdsa.verify(pub, b"vote", ecdsa.signature_from_der(theirs))
    (tmp_path / "sig").write_bytes(ecdsa.signature_to_der(ecdsa.sign(priv, b"vote")))
    (tmp_path / "pub.pem").write_bytes(oracles.public_pem(pub, oracles.P256_OID))
    out = oracles.run("dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"),
                      "-signature", str(tmp_path / "sig"), str(tmp_path / "m"))
    assert b"Verified OK" in out


# ---------------------------------------------------------------------------------- agreement

_slow = settings(max_examples=25, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


@_slow
@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=200))
def test_fast_and_pure_sm2_agree(both, seed, message):
    d = int.from_bytes(seed, "big") % (N - 2) + 1
    priv = d.to_bytes(32, "big")
    pub = both("openssl", sm2.public_key_of, priv)
    assert both("pure", sm2.public_key_of, priv) == pub
    assert both("pure", sm2.za, pub) == both("openssl", sm2.za, pub)
    assert both("pure", sm2.verify, pub, message, both("openssl", sm2.sign, priv, message))
    assert both("openssl", sm2.verify, pub, message, both("pure", sm2.sign, priv, message))
    if message:
        ct = both("openssl", sm2.encrypt, pub, message)
        assert both("pure", sm2.decrypt, priv, ct) == message
        assert both("openssl", sm2.decrypt, priv, both("pure", sm2.encrypt, pub, message)) \
            == message


@_slow
@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=200))
def test_fast_and_pure_ecdsa_agree(both, seed, message):
    d = int.from_bytes(seed, "big") % (ecdsa.N - 2) + 1
    priv = d.to_bytes(32, "big")
    pub = both("openssl", ecdsa.public_key_of, priv)
    assert both("pure", ecdsa.public_key_of, priv) == pub
    assert both("pure", ecdsa.verify, pub, message, both("openssl", ecdsa.sign, priv, message))
    assert both("openssl", ecdsa.verify, pub, message, both("pure", ecdsa.sign, priv, message))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.binary(min_size=16, max_size=16), iv=st.binary(min_size=16, max_size=16),
       data=st.binary(max_size=300))
def test_fast_and_pure_sm4_agree(both, key, iv, data):
    ct = both("openssl", sm4.encrypt_cbc, key, iv, data)
    assert both("pure", sm4.encrypt_cbc, key, iv, data) == ct
    assert both("pure", sm4.decrypt_cbc, key, iv, ct) == data
    assert both("pure", sm4.ctr, key, iv, data) == both("openssl", sm4.ctr, key, iv, data)
    assert both("pure", sm4.encrypt_ecb, key, data) == both("openssl", sm4.encrypt_ecb, key, data)


# ---------------------------------------------------------------------------------- hygiene


def test_no_weak_randomness_in_the_package():
    root = Path(__file__).parent.parent / "appliance"
    offenders = [str(p) for p in root.rglob("*.py")
                 if re.search(r"^\s*(import random|from random import)", p.read_text(), re.M)]
    assert offenders == []


@pytest.mark.parametrize("forced", ["", "pure"])
def test_selfcheck_command_passes_on_each_backend(forced):
    env = dict(os.environ, APPLIANCE_GM_BACKEND=forced)
    proc = subprocess.run([sys.executable, "-m", "appliance.cli", "selfcheck"], env=env,
                          capture_output=True, text=True, timeout=120)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, report
    assert report["passed"] and all(report["results"].values())
    assert report["crypto_backend"] == (forced or "openssl")
