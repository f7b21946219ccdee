"""One crypto facade for the module: SM3 hashing, SM2 keys/signatures/encryption, raw SM4.

Two backends with the same methods:

* ``"openssl"`` -- ``appliance.gm`` (OpenSSL through ctypes, CPython only). Used by the
  emulator on CPython, where it makes the module as fast as the host. OpenSSL draws its own
  nonces and keys from its CSPRNG, so ``rand`` is ignored by keygen/sign/encrypt there.
* ``"pure"`` -- ``appliance.gm.pure`` (MicroPython-compatible, imported flatly on the
  firmware: ``import sm2``). Nonces and keys come from the ``rand`` the module passes (its RNG:
  ``os.urandom`` on the unix port, the hardware RNG on an MCU).

``load(fast=None)`` picks: ``None`` = OpenSSL when ``appliance.gm`` imports (CPython with the
repo importable), else pure; ``True`` = OpenSSL or ImportError; ``False`` = pure.

Errors: a malformed public key raises ValueError (``check_public_key``, ``za``,
``verify*``, ``encrypt``); ``sm2_decrypt`` raises ValueError for any undecryptable
ciphertext; ``verify*`` return False for any bad signature.
"""

import sys

_MICROPYTHON = sys.implementation.name == "micropython"


def _pure_modules():
    if not _MICROPYTHON:
        try:
            from appliance.gm.pure import ec, sm2, sm3, sm4
            return ec, sm2, sm3, sm4
        except ImportError:
            pass
    import ec  # flat layout: appliance/gm/pure on the path
    import sm2
    import sm3
    import sm4
    return ec, sm2, sm3, sm4


class PureCrypto:
    """The portable backend (appliance.gm.pure)."""

    name = "pure"

    def __init__(self):
        self.ec, self._sm2, self._sm3, self._sm4 = _pure_modules()
        self.curve = self.ec.SM2

    # SM3
    def sm3_new(self):
        return self._sm3.SM3()

    def sm3(self, data):
        h = self.sm3_new()
        h.update(data)
        return h.digest()

    # SM2
    def check_public_key(self, public_key):
        """ValueError unless public_key is a 65-byte uncompressed point on the curve."""
        if not isinstance(public_key, (bytes, bytearray)) or len(public_key) != 65:
            raise ValueError("SM2 public key must be 65 bytes")
        self.curve.decode_point(bytes(public_key))

    def sm2_keypair(self, rand):
        return self._sm2.generate_keypair(rand)

    def sm2_public_key_of(self, private_key):
        return self._sm2.public_key_of(private_key)

    def sm2_za(self, public_key, id):
        self.check_public_key(public_key)
        return self._sm2.za(public_key, id)

    def sm2_sign_digest(self, private_key, e, rand, k=None):
        return self._sm2.sign_digest(private_key, e, k=k, rand=rand)

    def sm2_verify_digest(self, public_key, e, signature):
        self.check_public_key(public_key)
        return self._sm2.verify_digest(public_key, e, signature)

    def sm2_encrypt(self, public_key, data, rand):
        self.check_public_key(public_key)
        return self._sm2.encrypt(public_key, data, rand)

    def sm2_decrypt(self, private_key, ciphertext):
        return self._sm2.decrypt(private_key, ciphertext)

    # SM4, raw (no padding; ECB/CBC data a multiple of 16 bytes)
    def sm4_ecb(self, key, data, encrypt):
        if encrypt:
            return self._sm4.encrypt_ecb(key, data)
        return self._sm4.decrypt_ecb(key, data)

    def sm4_cbc(self, key, iv, data, encrypt):
        if encrypt:
            return self._sm4.encrypt_cbc(key, iv, data)
        return self._sm4.decrypt_cbc(key, iv, data)

    def sm4_ctr(self, key, iv, data):
        return self._sm4.ctr(key, iv, data)


class OpenSSLCrypto(PureCrypto):
    """The fast backend (appliance.gm on OpenSSL); CPython only."""

    name = "openssl"

    def __init__(self):
        PureCrypto.__init__(self)
        from appliance.gm import sm2, sm3, sm4

        self._fsm2, self._fsm3, self._fsm4 = sm2, sm3, sm4

    def sm3_new(self):
        return self._fsm3.new()

    def sm2_keypair(self, rand):
        return self._fsm2.generate_keypair()

    def sm2_public_key_of(self, private_key):
        return self._fsm2.public_key_of(private_key)

    def sm2_za(self, public_key, id):
        self.check_public_key(public_key)
        return self._fsm2.za(public_key, id)

    def sm2_sign_digest(self, private_key, e, rand, k=None):
        if k is not None:  # known-answer test with a fixed nonce: only the pure code takes k
            return PureCrypto.sm2_sign_digest(self, private_key, e, rand, k)
        return self._fsm2.sign_digest(private_key, e)

    def sm2_verify_digest(self, public_key, e, signature):
        self.check_public_key(public_key)
        return self._fsm2.verify_digest(public_key, e, signature)

    def sm2_encrypt(self, public_key, data, rand):
        self.check_public_key(public_key)
        return self._fsm2.encrypt(public_key, data)

    def sm2_decrypt(self, private_key, ciphertext):
        return self._fsm2.decrypt(private_key, ciphertext)  # DecryptionError is a ValueError

    def sm4_ecb(self, key, data, encrypt):
        if encrypt:
            return self._fsm4.encrypt_ecb_raw(key, data)
        return self._fsm4.decrypt_ecb_raw(key, data)

    def sm4_cbc(self, key, iv, data, encrypt):
        if encrypt:
            return self._fsm4.encrypt_cbc_raw(key, iv, data)
        return self._fsm4.decrypt_cbc_raw(key, iv, data)

    def sm4_ctr(self, key, iv, data):
        return self._fsm4.ctr(key, iv, data)


def load(fast=None):
    """The backend: see the module docstring for ``fast``."""
    if fast is False or _MICROPYTHON:
        if fast:
            raise ImportError("the OpenSSL backend needs CPython")
        return PureCrypto()
    try:
        return OpenSSLCrypto()
    except ImportError:
        if fast:
            raise
        return PureCrypto()
