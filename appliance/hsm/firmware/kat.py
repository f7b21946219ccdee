"""Power-up known-answer tests (GM/T 0002 SM4, GM/T 0003 SM2, GM/T 0004 SM3).

``run(crypto, rand, progress=None, fail=False)`` returns ``{name: bool}`` for

* ``sm3``         SM3("abc") (GB/T 32905 Annex A.1);
* ``sm4``         one block encrypted and decrypted (GB/T 32907 Annex A.1);
* ``sm2_za``      Z_A and e = SM3(Z_A || M) of the GB/T 32918 example signer;
* ``sm2_verify``  the standard's signature verifies, and with one bit flipped it does not;
* ``sm2_sign``    the standard's signature from its fixed k, the key pair's consistency, and a
                  sign/verify round trip with a fresh nonce through the active backend;
* ``sm2_encrypt`` an encrypt/decrypt round trip with the example key pair.

The vectors are embedded (tests/data/gm-kat.json has the same values). ``fail=True`` is the
injected fault of ``--kat-fail``: the SM3 test hashes a wrong message, so it really fails.
``progress()`` is called between tests (the main loop sends WAIT frames from it).
"""

import binascii


def _h(s):
    return binascii.unhexlify(s)


SM3_MSG = b"abc"
SM3_DIGEST = _h("66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0")
SM4_KEY = _h("0123456789abcdeffedcba9876543210")
SM4_PLAIN = _h("0123456789abcdeffedcba9876543210")
SM4_CIPHER = _h("681edf34d206965e86b3e94f536e4246")
SM2_PRIV = _h("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")
SM2_PUB = _h("0409F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020"
             "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13")
SM2_ID = b"1234567812345678"
SM2_MSG = b"message digest"
SM2_K = _h("59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21")
SM2_ZA = _h("B2E14C5C79C6DF5B85F4FE7ED8DB7A262B9DA7E07CCB0EA9F4747B8CCDA8A4F3")
SM2_E = _h("F0B43E94BA45ACCAACE692ED534382EB17E6AB5A19CE7B31F4486FDFC0D28640")
SM2_SIG = _h("F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3"
             "B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA")

NAMES = ("sm3", "sm4", "sm2_za", "sm2_verify", "sm2_sign", "sm2_encrypt")


def _flip(data):
    return bytes([data[0] ^ 1]) + bytes(data[1:])


def _sm3(c, rand, fail):
    return c.sm3(b"abd" if fail else SM3_MSG) == SM3_DIGEST


def _sm4(c, rand, fail):
    ct = c.sm4_ecb(SM4_KEY, SM4_PLAIN, True)
    return ct == SM4_CIPHER and c.sm4_ecb(SM4_KEY, ct, False) == SM4_PLAIN


def _sm2_za(c, rand, fail):
    za = c.sm2_za(SM2_PUB, SM2_ID)
    return za == SM2_ZA and c.sm3(za + SM2_MSG) == SM2_E


def _sm2_verify(c, rand, fail):
    good = c.sm2_verify_digest(SM2_PUB, SM2_E, SM2_SIG)
    bad = c.sm2_verify_digest(SM2_PUB, SM2_E, _flip(SM2_SIG))
    return good is True and bad is False


def _sm2_sign(c, rand, fail):
    if c.sm2_sign_digest(SM2_PRIV, SM2_E, rand, k=SM2_K) != SM2_SIG:
        return False
    if c.sm2_public_key_of(SM2_PRIV) != SM2_PUB:
        return False
    sig = c.sm2_sign_digest(SM2_PRIV, SM2_E, rand)
    return len(sig) == 64 and c.sm2_verify_digest(SM2_PUB, SM2_E, sig) is True


def _sm2_encrypt(c, rand, fail):
    ct = c.sm2_encrypt(SM2_PUB, SM2_MSG, rand)
    return c.sm2_decrypt(SM2_PRIV, ct) == SM2_MSG


_TESTS = (_sm3, _sm4, _sm2_za, _sm2_verify, _sm2_sign, _sm2_encrypt)


def run(crypto, rand, progress=None, fail=False):
    """Run every KAT; ``{name: passed}``. An exception inside a test counts as a failure."""
    results = {}
    for i in range(len(NAMES)):
        if progress is not None:
            progress()
        try:
            ok = _TESTS[i](crypto, rand, fail) is True
        except Exception:  # a crashing primitive is a failed self test, not a crashed module
            ok = False
        results[NAMES[i]] = ok
    if progress is not None:
        progress()
    return results


def passed(results):
    """True when every test in ``results`` passed."""
    for name in results:
        if not results[name]:
            return False
    return True
