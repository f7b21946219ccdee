"""SDR error codes (appliance.hsm.proto.codes) against the protocol's table (§3)."""

from appliance.hsm.proto import codes

TABLE = {  # name: offset from SDR_BASE, as in the protocol
    "UNKNOWERR": 0x01, "NOTSUPPORT": 0x02, "COMMFAIL": 0x03, "HARDFAIL": 0x04,
    "PARDENY": 0x07, "KEYNOTEXIST": 0x08, "ALGNOTSUPPORT": 0x09, "ALGMODNOTSUPPORT": 0x0A,
    "PKOPERR": 0x0B, "SKOPERR": 0x0C, "SIGNERR": 0x0D, "VERIFYERR": 0x0E, "SYMOPERR": 0x0F,
    "STEPERR": 0x10, "KEYTYPEERR": 0x14, "KEYERR": 0x15, "ENCDATAERR": 0x16, "RANDERR": 0x17,
    "FILEEXISTS": 0x1A, "FILEWERR": 0x1B, "NOBUFFER": 0x1C, "INARGERR": 0x1D,
    "OUTARGERR": 0x1E, "PIN_LOCKED": 0x100, "PIN_DEFAULT": 0x101,
}


def test_codes_match_the_protocol():
    assert codes.SDR_BASE == 0x01000000
    for name, offset in TABLE.items():
        assert getattr(codes, name) == codes.SDR_BASE + offset, name
    assert codes.CODES == {name: codes.SDR_BASE + off for name, off in TABLE.items()}


def test_names_is_the_inverse():
    assert codes.NAMES == {code: name for name, code in codes.CODES.items()}
    assert codes.NAMES[codes.PARDENY] == "PARDENY"
    assert len(set(codes.CODES.values())) == len(codes.CODES)
