"""The driver's typed errors: every SDR code of the protocol maps to its name and class."""

from __future__ import annotations

import pytest

from appliance.hsm import errors
from appliance.hsm.proto import codes

PROTOCOL_TABLE = {  # crypto-module protocol §3, written out again as the oracle
    "UNKNOWERR": 0x01, "NOTSUPPORT": 0x02, "COMMFAIL": 0x03, "HARDFAIL": 0x04,
    "PARDENY": 0x07, "KEYNOTEXIST": 0x08, "ALGNOTSUPPORT": 0x09, "ALGMODNOTSUPPORT": 0x0A,
    "PKOPERR": 0x0B, "SKOPERR": 0x0C, "SIGNERR": 0x0D, "VERIFYERR": 0x0E, "SYMOPERR": 0x0F,
    "STEPERR": 0x10, "KEYTYPEERR": 0x14, "KEYERR": 0x15, "ENCDATAERR": 0x16, "RANDERR": 0x17,
    "FILEEXISTS": 0x1A, "FILEWERR": 0x1B, "NOBUFFER": 0x1C, "INARGERR": 0x1D,
    "OUTARGERR": 0x1E, "PIN_LOCKED": 0x100, "PIN_DEFAULT": 0x101,
}
SPECIFIC = {"PARDENY": errors.AccessDenied, "PIN_LOCKED": errors.PinLocked,
            "PIN_DEFAULT": errors.PinDefault,
            "KEYNOTEXIST": errors.KeyNotFound, "FILEEXISTS": errors.SlotOccupied,
            "INARGERR": errors.InvalidArgument, "HARDFAIL": errors.HardwareFailure,
            "STEPERR": errors.ContextLost, "NOTSUPPORT": errors.NotSupported,
            "ALGNOTSUPPORT": errors.NotSupported, "ALGMODNOTSUPPORT": errors.NotSupported}


@pytest.mark.parametrize("name", sorted(PROTOCOL_TABLE))
def test_every_protocol_code_maps_to_its_name_and_class(name):
    code = 0x01000000 + PROTOCOL_TABLE[name]
    assert codes.CODES[name] == code and codes.NAMES[code] == name
    error = errors.from_response({"ok": False, "code": code, "error": "ignored",
                                  "message": "m", "retries": 3})
    assert error.code == code and error.error == name
    assert type(error) is SPECIFIC.get(name, errors.ModuleError)
    assert error.details == {"retries": 3} and error.message == "m"


def test_the_code_decides_not_the_text():
    error = errors.from_response({"ok": False, "code": 0x01000008, "error": "PARDENY"})
    assert isinstance(error, errors.KeyNotFound)


@pytest.mark.parametrize("code", [None, "8", 0x01000099, -1])
def test_unknown_or_missing_codes_are_unknowerr(code):
    error = errors.from_response({"ok": False, "code": code})
    assert error.error == "UNKNOWERR" and type(error) is errors.ModuleError


def test_the_pin_errors_say_what_to_do():
    default = errors.from_response({"ok": False, "code": 0x01000101, "message": "m"})
    assert isinstance(default, errors.PinDefault) and default.message == "m"
    assert "appliance hsm change-pin" in str(default) and "\n" not in str(default)
    locked = errors.from_response({"ok": False, "code": 0x01000100, "message": "m"})
    assert "reset button" in str(locked)
    plain = errors.from_response({"ok": False, "code": 0x01000008, "message": "m"})
    assert str(plain) == "KEYNOTEXIST (0x01000008): m"
