"""Known-answer self test of the active backends (GM/T 0002/0003/0004 vectors).

Run at start-up by ``appliance selfcheck``; a terminal whose crypto fails its known answers
must not sign or verify anything.
"""

from __future__ import annotations

from . import ecdsa, sm2, sm3, sm4

_SM3_ABC = "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
_SM4_KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")
_SM4_CT = "681edf34d206965e86b3e94f536e4246"
_SM2_PRIV = bytes.fromhex("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")
_SM2_PUB = bytes.fromhex(
    "0409F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020"
    "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13")
_SM2_ZA = "b2e14c5c79c6df5b85f4fe7ed8db7a262b9da7e07ccb0ea9f4747b8ccda8a4f3"
_SM2_SIG = bytes.fromhex(
    "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3"
    "B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA")
_MSG = b"message digest"


def run() -> dict[str, bool]:
    """Each check's name and whether it passed; never raises for a failed check."""
    checks = {
        "sm3": lambda: sm3.digest(b"abc").hex() == _SM3_ABC,
        "sm4": lambda: sm4.encrypt_ecb_raw(_SM4_KEY, _SM4_KEY).hex() == _SM4_CT
        and sm4.decrypt_ecb_raw(_SM4_KEY, bytes.fromhex(_SM4_CT)) == _SM4_KEY,
        "sm2_public_key": lambda: sm2.public_key_of(_SM2_PRIV) == _SM2_PUB,
        "sm2_za": lambda: sm2.za(_SM2_PUB).hex() == _SM2_ZA,
        "sm2_verify": lambda: sm2.verify(_SM2_PUB, _MSG, _SM2_SIG)
        and not sm2.verify(_SM2_PUB, _MSG + b".", _SM2_SIG),
        "sm2_sign": lambda: sm2.verify(_SM2_PUB, _MSG, sm2.sign(_SM2_PRIV, _MSG)),
        "sm2_encrypt": lambda: sm2.decrypt(_SM2_PRIV, sm2.encrypt(_SM2_PUB, _MSG)) == _MSG,
        "ecdsa_p256": lambda: _ecdsa_round_trip(),
    }
    results = {}
    for name, check in checks.items():
        try:
            results[name] = bool(check())
        except Exception:  # a self test reports failure, it does not crash the caller
            results[name] = False
    return results


def _ecdsa_round_trip() -> bool:
    priv, pub = ecdsa.generate_keypair()
    sig = ecdsa.sign(priv, _MSG)
    return ecdsa.verify(pub, _MSG, sig) and not ecdsa.verify(pub, _MSG + b".", sig)
