"""The firmware as the module runs it: on real MicroPython, compiled by mpy-cross, frozen.

* tests/micropython/firmware_module.py drives Module on the MicroPython unix port (flat
  imports, pure crypto) and on CPython (OpenSSL backend); the results are compared with each
  other and checked against appliance.gm.
* Every firmware file (and every file the manifest freezes) compiles with mpy-cross.
* manifest.py lists existing files and every module main.py imports, transitively.

The binaries come from the dev extra (``micropython`` and ``mpy-cross`` next to the venv's
python), from $MICROPYTHON / $MPY_CROSS, or from PATH.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

from appliance.gm import sm2 as gm_sm2
from appliance.gm import sm4 as gm_sm4
from hil.tools import require_tool, run_results_script

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "appliance" / "hsm" / "firmware"
PROTO = ROOT / "appliance" / "hsm" / "proto"
PURE = ROOT / "appliance" / "gm" / "pure"
SCRIPT = ROOT / "tests" / "micropython" / "firmware_module.py"
MESSAGE = b"evidence.deposit on micropython"


def _run_script(interpreter, scratch):
    return run_results_script([interpreter, str(SCRIPT), str(FIRMWARE), str(PROTO), str(PURE),
                               str(scratch)], cwd=scratch)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    mp = _run_script(require_tool("micropython"), tmp_path_factory.mktemp("mp"))
    cp = _run_script(sys.executable, tmp_path_factory.mktemp("cp"))
    assert (mp["impl"], mp["backend"]) == ("micropython", "pure")
    assert (cp["impl"], cp["backend"]) == ("cpython", "openssl")
    return mp, cp


RANDOM_OR_TIMED = {"impl", "backend", "keygen.pub", "sign.sig", "sign_digest.sig", "hash.za",
                   "encrypt.ct"}


def test_micropython_and_cpython_agree(runs):
    mp, cp = runs
    assert set(mp) == set(cp)
    differ = {k for k in mp if mp[k] != cp[k] and k not in RANDOM_OR_TIMED
              and not k.endswith(".ms")}
    assert differ == set()


def test_micropython_conformance_subset(runs):
    mp, _ = runs
    expected = {
        "boot.count": "1", "kat.passed": "True", "info.slots": "16", "info.retries": "5",
        "info.algs": "sm2,sm3,sm4", "info.default_pin": "True",
        # the 4th and 5th failed PINs are answered a second later (module clock)
        "pin.bad.0": "PARDENY:4:0", "pin.bad.1": "PARDENY:3:0", "pin.bad.2": "PARDENY:2:0",
        "pin.bad.3": "PARDENY:1:1", "pin.bad.4": "PIN_LOCKED:0:1",
        "pin.locked.restart": "PIN_LOCKED", "pin.factory_reset.nobutton": "PIN_LOCKED",
        "pin.factory_reset": "ok", "pin.login": "ok", "pin.session.len": "16",
        "pin.default.keygen": "PIN_DEFAULT", "pin.change.default": "INARGERR",
        "pin.change.unicode": "ok", "pin.default.after": "False",
        "pin.login.unicode": "ok", "pin.factory_reset.nopin": "PARDENY",
        "pin.factory_reset.wrong": "PARDENY:4", "pin.factory_reset2": "ok",
        "pin.login2": "ok", "pin.change.work": "ok",
        "sign.nologin": "PARDENY", "sign.empty": "KEYNOTEXIST", "sign.nosession": "PARDENY",
        "keygen.exists": "FILEEXISTS", "keygen.rsa": "ALGNOTSUPPORT",
        "keygen.slot16": "INARGERR", "sign.counter": "1", "sign.counter2": "2",
        "verify.valid": "True", "verify.kat": "True", "verify.badkey": "KEYERR",
        "sign.counter.restart": "4",
        "session.missing": "PARDENY", "session.other": "PARDENY", "session.counter": "5",
        "session.badlogin": "PARDENY", "session.kept": "6",
        "session.logout.missing": "PARDENY", "session.reset.other": "PARDENY",
        "session.reset.flag": "False", "session.hash.missing": "PARDENY",
        "session.replaced": "PARDENY", "session.hash.other": "STEPERR",
        "session.hash.owner": "PARDENY", "session.logout": "PARDENY",
        "slow.took": "0,0,0,1", "slow.right": "ok", "slow.right.took": "True",
        "cut.comparison": "cut", "cut.comparison.retries": "4",
        "hash.fifth": "NOBUFFER", "hash.unknown": "STEPERR",
        "decrypt.data": b"session key".hex(), "decrypt.tampered": "ENCDATAERR",
        "sm4.gcm": "ALGMODNOTSUPPORT", "sm4.unaligned": "INARGERR",
        "op.unknown": "NOTSUPPORT", "cbor.noncanonical": "INARGERR", "random.len": "1024",
        "random.zero": "INARGERR", "self_test": "True:6", "katfail.sign": "HARDFAIL",
        "katfail.info": "ok",
        "cut.count": "24", "cut.torn": "0", "cut.counter_back": "0", "cut.pin_up": "0",
        "cut.key0": "True",
    }
    assert {k: mp.get(k) for k in expected} == expected


def test_micropython_crypto_results_check_with_openssl(runs):
    mp, _ = runs
    pub = bytes.fromhex(mp["keygen.pub"])
    assert gm_sm2.verify(pub, MESSAGE, bytes.fromhex(mp["sign.sig"]))
    assert gm_sm2.verify(pub, MESSAGE, bytes.fromhex(mp["sign_digest.sig"]))
    assert bytes.fromhex(mp["hash.za"]) == gm_sm2.message_digest(pub, MESSAGE)
    key, iv, data = bytes(range(16)), bytes(range(16, 32)), bytes(range(48))
    assert bytes.fromhex(mp["sm4.cbc"]) == gm_sm4.encrypt_cbc_raw(key, iv, data)
    assert bytes.fromhex(mp["sm4.ctr"]) == gm_sm4.ctr(key, iv, data[:37])


def test_micropython_timings_are_reported(runs, record_property):
    mp, _ = runs
    for name in ("boot.ms", "keygen.ms", "sign.ms", "verify.ms"):
        record_property("micropython." + name, mp[name])
        assert int(mp[name]) >= 0


# -- manifest and mpy-cross ----------------------------------------------------------------


def manifest_entries():
    entries = []

    def module(name, base_path="."):
        entries.append((FIRMWARE / base_path / name).resolve())

    def unexpected(*args, **kwargs):
        raise AssertionError("the manifest should only use module()")

    source = (FIRMWARE / "manifest.py").read_text()
    exec(compile(source, "manifest.py", "exec"),
         {"module": module, "require": unexpected, "package": unexpected, "include": unexpected})
    return entries


def _flat_imports(path):
    """Names a firmware file imports, as the flat layout resolves them."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.name for alias in node.names)
            if node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_manifest_lists_existing_files_and_every_imported_module():
    entries = manifest_entries()
    assert entries and len(entries) == len(set(entries))
    for path in entries:
        assert path.is_file(), path
    listed = {p.stem: p for p in entries}
    assert len(listed) == len(entries)  # flat: no two modules with the same name
    search = (FIRMWARE, PROTO, PURE)
    seen, todo = set(), ["main"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        files = [d / (name + ".py") for d in search if (d / (name + ".py")).is_file()]
        if not files:
            continue  # a built-in (os, sys, struct, select, termios) or CPython-only package
        assert name in listed, "main.py needs %s but the manifest does not freeze it" % name
        assert listed[name] == files[0].resolve()
        todo.extend(_flat_imports(files[0]))
    assert {"main", "module", "keystore", "crypto", "kat", "mcbor", "codes", "modlink",
            "frame", "cobs", "sm2", "sm3", "sm4", "ec", "der"} <= seen


def test_every_firmware_file_compiles_with_mpy_cross(tmp_path):
    exe = require_tool("mpy-cross")
    files = sorted(set(FIRMWARE.glob("*.py")) | set(manifest_entries()))
    for src in files:
        out = tmp_path / (src.stem + ".mpy")
        proc = subprocess.run([exe, "-o", str(out), str(src)], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, "%s: %s" % (src, proc.stderr)
        assert out.stat().st_size > 0
