"""Independent oracles for the crypto tests: the OpenSSL command line and key encodings.

Tests reach OpenSSL only through its command-line tool here, never through our ctypes
binding, so a bug in the binding cannot hide in the oracle.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

SM2_OID = bytes.fromhex("06082a811ccf5501822d")  # 1.2.156.10197.1.301
P256_OID = bytes.fromhex("06082a8648ce3d030107")  # 1.2.840.10045.3.1.7
EC_PUBLIC_KEY_OID = bytes.fromhex("06072a8648ce3d0201")  # 1.2.840.10045.2.1
DISTID = "distid:1234567812345678"


def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("the openssl command line is not installed")
    return path


def run(*args: str, data: bytes | None = None) -> bytes:
    proc = subprocess.run([openssl(), *args], input=data, capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, args, proc.stdout, proc.stderr)
    return proc.stdout


def tlv(tag: int, body: bytes) -> bytes:
    """One DER tag-length-value."""
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def der_integer(value: int) -> bytes:
    """A non-negative DER INTEGER (a 0x00 in front when the top bit is set)."""
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return tlv(0x02, body[1:] if len(body) > 1 and body[0] == 0 and body[1] < 0x80 else body)


def _pem(label: str, der: bytes) -> bytes:
    b64 = base64.encodebytes(der).decode().replace("\n", "")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return ("-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label, "\n".join(lines), label)
            ).encode()


def public_pem(public_key: bytes, curve_oid: bytes = SM2_OID) -> bytes:
    """SubjectPublicKeyInfo (RFC 5480) PEM for a 65-byte uncompressed point."""
    algorithm = tlv(0x30, EC_PUBLIC_KEY_OID + curve_oid)
    return _pem("PUBLIC KEY", tlv(0x30, algorithm + tlv(0x03, b"\x00" + public_key)))


def private_pem(private_key: bytes, public_key: bytes, curve_oid: bytes = SM2_OID) -> bytes:
    """SEC1 ECPrivateKey (RFC 5915) PEM."""
    body = (bytes.fromhex("020101") + tlv(0x04, private_key) + tlv(0xA0, curve_oid)
            + tlv(0xA1, tlv(0x03, b"\x00" + public_key)))
    return _pem("EC PRIVATE KEY", tlv(0x30, body))


def generate_key(tmp: Path, algorithm: str = "SM2") -> tuple[Path, bytes, bytes]:
    """A key made by OpenSSL: (PEM path, raw private 32 bytes, raw public 65 bytes)."""
    pem = tmp / ("openssl-%s.pem" % algorithm.lower())
    if algorithm == "SM2":
        run("genpkey", "-algorithm", "SM2", "-out", str(pem))
    else:
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", str(pem))
    text = run("pkey", "-in", str(pem), "-text", "-noout").decode()
    fields: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            current = line[:-1]
            fields[current] = ""
        elif current and line.startswith(" "):
            fields[current] += line.strip().replace(":", "")
    private_key = int(fields["priv"], 16).to_bytes(32, "big")
    public_key = bytes.fromhex(fields["pub"])
    return pem, private_key, public_key
