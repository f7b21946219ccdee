"""The crypto module's command processor (protocol §3 and §4, revision 2), sans-I/O.

``Module(store, crypto, rand, now_ms, progress=None, serial=..., kat_fail=False, slow_ms=0,
sleep_ms=None, presence=None)``:

* ``store``   a ``keystore.KeyStore`` (``load() -> state``, ``save(state)``);
* ``crypto``  a ``crypto.load()`` backend;
* ``rand``    ``rand(n) -> n bytes``, the RNG (``os.urandom``; an MCU's hardware RNG): keys,
  nonces, salts, sessions;
* ``now_ms``/``sleep_ms`` the module's monotonic millisecond clock and how it sleeps; read by
  the PIN slow-down (and the ``slow_ms`` test tooling), which sleeps in small steps calling
  ``progress()``. Tests that drive a Module directly give a clock that ``sleep_ms`` advances;
* ``progress`` called at checkpoints of long operations (between KATs, around key
  generation, before and after every store write, in every pause); the main loop sends WAIT
  frames from it;
* ``kat_fail`` an injected fault: the power-up self test fails, crypto commands answer
  HARDFAIL;
* ``slow_ms`` test tooling: every command first spends ``slow_ms`` ms pausing;
* ``presence`` ``presence() -> bool``: the reset button is held (physical presence, for a
  ``factory_reset`` once the PIN is locked); None: no button, never held.

``boot() -> dict`` runs the power-up KATs, bumps and persists ``boot_count`` (and provisions
the default PIN on a fresh store) and returns the BOOT payload. ``handle(payload) -> payload``
takes a canonical CBOR request and returns a canonical CBOR response; it never raises, except
``keystore.PowerCut`` (the simulated power loss, which must stop the module where it is).
After a ``reset`` request ``reset_requested`` is True: the main loop sends the RSP, then
restarts the module (a new ``Module`` on the same store) and sends BOOT.

Rules worth knowing (see docs/crypto-module.md for the ones marked "ours" there):

* Check order: request decoding and ``op`` (INARGERR / NOTSUPPORT), then HARDFAIL for crypto
  commands after a failed self test, then the session (PARDENY), then the default PIN
  (PIN_DEFAULT), then the arguments (INARGERR for a missing, mistyped, out-of-range or
  unknown argument), then the operation itself.
* Sessions: a successful ``login`` returns ``session``, 16 fresh bytes from the RNG, and only
  a successful login replaces it; ``logout``, ``reset``, ``factory_reset`` and a restart end
  it. Commands that need login carry it; ``logout``, ``reset`` and ``hash_*`` carry it while a
  session is open. A missing or different one is PARDENY and changes nothing. A hash context
  belongs to the session it was opened under (none when no session was open): any other
  caller is answered as if it did not exist (STEPERR).
* PIN: the retry counter is decremented and persisted before the comparison, and reset to 5
  (persisted) on success; the try that uses the last retry and every later one answer
  PIN_LOCKED until ``factory_reset``. After 3 consecutive failures every further comparison
  is answered no sooner than 1 s after it arrived (pausing, so WAIT frames go out). The PIN
  is stored as SM3(salt || PIN), compared in constant time. A PIN argument outside 6..16
  characters is INARGERR and costs no try. While the PIN is the default, ``generate_key``,
  ``sign``, ``sign_digest`` and ``decrypt`` answer PIN_DEFAULT.
* Signature counters: incremented and persisted before the signature is returned; a failed
  write (FILEWERR) returns no signature. Never reset except by ``factory_reset``.
* State changes are all-or-nothing: a new state is built on a copy and becomes current only
  after the store has written it; a failed write leaves the previous state (FILEWERR).
* Nothing private leaves: no response, error message or detail carries key bytes;
  unexpected exceptions answer UNKNOWERR with the exception's type name only.
"""

try:
    from . import kat, keystore
except ImportError:  # flat layout (MicroPython, frozen firmware)
    import kat
    import keystore

try:
    from ..proto import codes, mcbor
except ImportError:
    import codes
    import mcbor

FIRMWARE = "gmcm-fw 1.0.0"
MODEL = "GMCM-1"
PROTOCOL = 1
ALGS = ["sm2", "sm3", "sm4"]
SLOTS = keystore.SLOTS
PIN_TRIES = keystore.PIN_TRIES
MAX_PAYLOAD = 4096
DEFAULT_PIN = "123456"
DEFAULT_ID = b"1234567812345678"
PIN_MIN, PIN_MAX = 6, 16
MAX_DATA = 3072  # sign message, hash_update data, sm4 data
MAX_PLAINTEXT = 1024  # SM2 encrypt
MAX_CIPHERTEXT = 2048  # SM2 decrypt input (1024 bytes of data need about 1.14 KiB)
MAX_ID = 1024  # SM2 distinguishing ID (ENTL allows 8191; the payload could not carry that)
MAX_SIGNATURE = 1024  # verify: longer is an argument error, shorter but wrong is valid: False
MAX_RANDOM = 1024
MAX_CONTEXTS = 4
SALT_SIZE = 16
SESSION_SIZE = 16
SLOW_STEP_MS = 20
SLOWDOWN_AFTER = 3  # consecutive failed PIN checks after which every further one pauses
SLOWDOWN_MS = 1000

# the commands that still answer after a failed self test (everything else: HARDFAIL)
_NO_CRYPTO = ("info", "login", "logout", "factory_reset", "self_test", "reset")
# the commands a module on its default PIN refuses (PIN_DEFAULT)
_NOT_ON_DEFAULT_PIN = ("generate_key", "sign", "sign_digest", "decrypt")
# how a command relates to the session
_OPEN = 0  # carries no session
_LOGIN = 1  # needs login: carries the open session
_WHILE_OPEN = 2  # carries the session while one is open


class Fail(Exception):
    """An error response: SDR code, message, extra fields."""

    def __init__(self, code, message, details=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def _ct_equal(a, b):
    if len(a) != len(b):
        return False
    acc = 0
    for i in range(len(a)):
        acc |= a[i] ^ b[i]
    return acc == 0


def _is_uint(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _default_sleep(ms):
    import time

    sleep_ms = getattr(time, "sleep_ms", None)
    if sleep_ms is not None:
        sleep_ms(ms)
    else:
        time.sleep(ms / 1000)


class _Args:
    """Typed access to a request's arguments; every problem is INARGERR."""

    def __init__(self, req, allowed):
        self.req = req
        for k in req:
            if k != "op" and k not in allowed:
                raise Fail(codes.INARGERR, "unknown argument: %s" % k, {"argument": k})

    def has(self, name):
        return name in self.req

    def _get(self, name, required):
        """(present, value); a missing required argument is INARGERR."""
        if name not in self.req:
            if required:
                raise Fail(codes.INARGERR, "missing argument: %s" % name, {"argument": name})
            return False, None
        return True, self.req[name]

    def _range(self, name, lo, hi, unit=""):
        if hi is None:
            self._bad(name, "at least %d%s" % (lo, unit))
        self._bad(name, "in %d..%d%s" % (lo, hi, unit))

    def _bad(self, name, what):
        raise Fail(codes.INARGERR, "%s must be %s" % (name, what), {"argument": name})

    def uint(self, name, lo=0, hi=None, required=True, default=None):
        present, v = self._get(name, required)
        if not present:
            return default
        if not _is_uint(v):
            self._bad(name, "an unsigned integer")
        if v < lo or (hi is not None and v > hi):
            self._range(name, lo, hi)
        return v

    def slot(self):
        return self.uint("slot", 0, SLOTS - 1)

    def bytes_(self, name, lo=0, hi=None, required=True, default=None, exact=None):
        present, v = self._get(name, required)
        if not present:
            return default
        if not isinstance(v, bytes):
            self._bad(name, "bytes")
        if exact is not None and len(v) != exact:
            self._bad(name, "%d bytes" % exact)
        if len(v) < lo or (hi is not None and len(v) > hi):
            self._range(name, lo, hi, " bytes")
        return v

    def text(self, name, required=True, default=None):
        present, v = self._get(name, required)
        if not present:
            return default
        if not isinstance(v, str):
            self._bad(name, "text")
        return v

    def boolean(self, name, required=True, default=None):
        present, v = self._get(name, required)
        if not present:
            return default
        if not isinstance(v, bool):
            self._bad(name, "a boolean")
        return v

    def pin(self, name):
        v = self.text(name)
        if not PIN_MIN <= len(v) <= PIN_MAX:
            self._bad(name, "%d..%d characters" % (PIN_MIN, PIN_MAX))
        return v


class Module:
    """The command processor; see the module docstring."""

    def __init__(self, store, crypto, rand, now_ms, progress=None, serial="GMCM-EMU-000001",
                 kat_fail=False, slow_ms=0, sleep_ms=None, presence=None):
        self.store = store
        self.crypto = crypto
        self.rand = rand
        self.now_ms = now_ms
        self.progress = progress
        self.serial = serial
        self.kat_fail = kat_fail
        self.slow_ms = slow_ms
        self.sleep_ms = sleep_ms if sleep_ms is not None else _default_sleep
        self.presence = presence
        self.state = store.load()
        self.session = None  # bytes(16) while a session is open
        self.contexts = {}  # context -> [hash object, owner session or None]
        self._default_pin = None  # (pin_hash, is the default PIN) of the last check
        self.kat_results = None  # None until boot() ran the self test
        self.failed = True  # crypto commands answer HARDFAIL until a passed self test
        self.reset_requested = False
        self._next_context = 1
        # name -> (method, allowed arguments, session rule); "session" is allowed where the
        # rule is not _OPEN
        self._ops = {
            "info": (self._info, (), _OPEN),
            "login": (self._login, ("pin",), _OPEN),
            "logout": (self._logout, (), _WHILE_OPEN),
            "change_pin": (self._change_pin, ("old", "new"), _LOGIN),
            "generate_key": (self._generate_key, ("slot", "alg", "overwrite"), _LOGIN),
            "public_key": (self._public_key, ("slot",), _OPEN),
            "delete_key": (self._delete_key, ("slot",), _LOGIN),
            "sign": (self._sign, ("slot", "message", "id"), _LOGIN),
            "sign_digest": (self._sign_digest, ("slot", "digest"), _LOGIN),
            "verify": (self._verify,
                       ("alg", "public_key", "message", "digest", "signature", "id"), _OPEN),
            "hash_init": (self._hash_init, ("alg", "public_key", "id"), _WHILE_OPEN),
            "hash_update": (self._hash_update, ("context", "data"), _WHILE_OPEN),
            "hash_final": (self._hash_final, ("context",), _WHILE_OPEN),
            "encrypt": (self._encrypt, ("alg", "public_key", "data"), _OPEN),
            "decrypt": (self._decrypt, ("slot", "ciphertext"), _LOGIN),
            "sm4": (self._sm4, ("mode", "encrypt", "key", "iv", "data"), _OPEN),
            "random": (self._random, ("length",), _OPEN),
            "self_test": (self._self_test, (), _OPEN),
            "reset": (self._reset, (), _WHILE_OPEN),
            "factory_reset": (self._factory_reset, ("confirm", "pin"), _OPEN),
        }

    @property
    def logged_in(self):
        return self.session is not None

    # -- plumbing ---------------------------------------------------------------------------

    def _progress(self):
        if self.progress is not None:
            self.progress()

    def _rand(self, n):
        try:
            out = self.rand(n)
        except Exception:
            out = None
        if not isinstance(out, (bytes, bytearray)) or len(out) != n:
            raise Fail(codes.RANDERR, "random source failed")
        return bytes(out)

    def _save(self, new):
        """Persist ``new`` and make it current; FILEWERR (state unchanged) when that fails."""
        self._progress()
        try:
            self.store.save(new)
        except OSError:
            raise Fail(codes.FILEWERR, "key store write failed") from None
        self.state = new
        self._progress()

    def _pause(self, ms):
        """Let ``ms`` pass, sleeping in small steps, calling progress() after each.

        Time passed is the clock's, or the sum of the sleeps when that is more (a sleep
        never returns early), so a clock that does not move cannot stall the module.
        """
        if ms <= 0:
            return
        start = self.now_ms()
        slept = 0
        while True:
            passed = self.now_ms() - start
            left = ms - (passed if passed > slept else slept)
            if left <= 0:
                break
            step = left if left < SLOW_STEP_MS else SLOW_STEP_MS
            self.sleep_ms(step)
            slept += step
            self._progress()

    def _held(self):
        """The reset button is held (physical presence)."""
        if self.presence is None:
            return False
        try:
            return self.presence() is True
        except Exception:  # a button that cannot be read is not held
            return False

    def _pin_hash(self, salt, pin):
        return self.crypto.sm3(salt + pin.encode())

    def _set_pin(self, state, pin):
        salt = self._rand(SALT_SIZE)
        state["pin_salt"] = salt
        state["pin_hash"] = self._pin_hash(salt, pin)
        state["pin_retries"] = PIN_TRIES

    def _key(self, slot):
        entry = self.state["keys"][slot]
        if entry is None:
            raise Fail(codes.KEYNOTEXIST, "slot %d holds no key" % slot, {"slot": slot})
        return entry  # [alg, private, public]

    def _public_key_arg(self, args, name="public_key"):
        pub = args.bytes_(name)
        try:
            self.crypto.check_public_key(pub)
        except ValueError:
            raise Fail(codes.KEYERR, "%s is not a valid SM2 public key" % name) from None
        return pub

    def _alg(self, args, accepted):
        alg = args.text("alg")
        if alg != accepted:
            raise Fail(codes.ALGNOTSUPPORT, "algorithm not supported here (only %s)" % accepted,
                       {"alg": alg[:16]})
        return alg

    # -- lifecycle --------------------------------------------------------------------------

    def boot(self):
        """Power-up: KATs, boot_count + 1 (persisted), default PIN on a fresh store."""
        self.kat_results = kat.run(self.crypto, self.rand, self._progress, self.kat_fail)
        self.failed = not kat.passed(self.kat_results)
        new = keystore.copy_state(self.state)
        new["boot_count"] = new["boot_count"] + 1
        if new["pin_hash"] is None or new["pin_salt"] is None:
            try:
                self._set_pin(new, DEFAULT_PIN)
            except Fail:  # no randomness: an unsalted default PIN until the next boot
                new["pin_salt"] = b""
                new["pin_hash"] = self._pin_hash(b"", DEFAULT_PIN)
        try:
            self._save(new)
        except Fail:  # the store cannot be written: run on, from memory
            self.state = new
        return {"firmware": FIRMWARE, "serial": self.serial, "boot_count": new["boot_count"]}

    def handle(self, payload):
        """One request payload (canonical CBOR) in, one response payload out."""
        try:
            result = self._dispatch(payload)
            rsp = {"ok": True}
            for k in result:
                rsp[k] = result[k]
        except Fail as exc:
            rsp = self._error(exc.code, exc.message, exc.details)
        except MemoryError:
            rsp = self._error(codes.NOBUFFER, "out of memory")
        except Exception as exc:  # never echo str(exc): it could quote an argument or a key
            rsp = self._error(codes.UNKNOWERR, "internal error (%s)" % type(exc).__name__)
        return mcbor.encode(rsp)

    def _error(self, code, message, details=None):
        rsp = {"ok": False, "code": code, "error": codes.NAMES[code], "message": message}
        if details:
            for k in details:
                rsp[k] = details[k]
        return rsp

    def _dispatch(self, payload):
        try:
            req = mcbor.decode(bytes(payload), MAX_PAYLOAD)
        except Exception:  # mcbor.CborError (a ValueError), or anything a decoder bug raises
            raise Fail(codes.INARGERR, "request is not canonical CBOR") from None
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            raise Fail(codes.INARGERR, "request must be a map with a text op")
        op = req["op"]
        entry = self._ops.get(op)
        if entry is None:
            raise Fail(codes.NOTSUPPORT, "unknown op", {"op": op[:23]})
        method, allowed, rule = entry
        self._pause(self.slow_ms)
        if self.failed and op not in _NO_CRYPTO:
            raise Fail(codes.HARDFAIL, "self test failed: crypto commands are disabled")
        if rule == _LOGIN:
            if self.session is None:
                raise Fail(codes.PARDENY, "login required")
            if not self._is_session(req.get("session")):
                raise Fail(codes.PARDENY, "missing or wrong session")
        elif rule == _WHILE_OPEN and self.session is not None:
            if not self._is_session(req.get("session")):
                raise Fail(codes.PARDENY, "a session is open: this command must carry it")
        if op in _NOT_ON_DEFAULT_PIN and self._pin_is_default():
            raise Fail(codes.PIN_DEFAULT, "the PIN is still the default: change it first")
        if rule != _OPEN:
            allowed = allowed + ("session",)
        return method(_Args(req, allowed))

    def _is_session(self, value):
        """``value`` is the open session (constant-time comparison)."""
        session = self.session
        return (session is not None and isinstance(value, bytes)
                and _ct_equal(value, session))

    def _caller(self, args):
        """Who asks, for hash contexts: the session the request carries, or None."""
        return args.bytes_("session", exact=SESSION_SIZE, required=False)

    # -- PIN --------------------------------------------------------------------------------

    def _check_pin(self, pin, on_success=None):
        """Spend a try (persisted), pause after 3 failures, compare; if right, reset the
        tries (and apply on_success to the state written with them)."""
        retries = self.state["pin_retries"]
        if retries <= 0:
            raise Fail(codes.PIN_LOCKED, "PIN locked: factory_reset required", {"retries": 0})
        spent = keystore.copy_state(self.state)
        spent["pin_retries"] = retries - 1
        self._save(spent)  # persisted before the comparison decides anything
        if PIN_TRIES - retries >= SLOWDOWN_AFTER:
            self._pause(SLOWDOWN_MS)  # guessing cannot race the lockout
        salt, stored = spent["pin_salt"], spent["pin_hash"]
        if salt is None or stored is None:  # not provisioned (boot() always does): default
            salt, stored = b"", self._pin_hash(b"", DEFAULT_PIN)
        if _ct_equal(self._pin_hash(salt, pin), stored):
            new = keystore.copy_state(spent)
            new["pin_retries"] = PIN_TRIES
            if on_success is not None:
                on_success(new)
            self._save(new)
            return
        left = spent["pin_retries"]
        if left <= 0:
            raise Fail(codes.PIN_LOCKED, "wrong PIN; PIN now locked", {"retries": 0})
        raise Fail(codes.PARDENY, "wrong PIN", {"retries": left})

    def _pin_is_default(self):
        """The stored PIN is the factory default (cached per stored hash)."""
        salt, stored = self.state["pin_salt"], self.state["pin_hash"]
        if salt is None or stored is None:
            return True
        cached = self._default_pin
        if cached is None or cached[0] != stored:
            cached = (stored, _ct_equal(self._pin_hash(salt, DEFAULT_PIN), stored))
            self._default_pin = cached
        return cached[1]

    def _info(self, args):
        return {
            "model": MODEL,
            "serial": self.serial,
            "firmware": FIRMWARE,
            "protocol": PROTOCOL,
            "algs": list(ALGS),
            "slots": SLOTS,
            "max_payload": MAX_PAYLOAD,
            "logged_in": self.session is not None,
            "pin_retries": self.state["pin_retries"],
            "default_pin": self._pin_is_default(),
        }

    def _login(self, args):
        pin = args.pin("pin")
        session = self._rand(SESSION_SIZE)  # before a try is spent: RANDERR costs none
        self._check_pin(pin)  # a failed login leaves the open session as it was
        self.session = session
        return {"session": session}

    def _logout(self, args):
        self.session = None  # hash contexts stay open (§4), still their opener's
        return {}

    def _change_pin(self, args):
        new_pin = args.pin("new")
        old = args.pin("old")
        if new_pin == DEFAULT_PIN:
            raise Fail(codes.INARGERR, "the default PIN cannot be the new PIN",
                       {"argument": "new"})
        module = self

        def apply(state):
            module._set_pin(state, new_pin)

        self._check_pin(old, apply)
        return {}

    # -- keys -------------------------------------------------------------------------------

    def _generate_key(self, args):
        slot = args.slot()
        self._alg(args, "sm2")
        overwrite = args.boolean("overwrite", False, False)
        if self.state["keys"][slot] is not None and not overwrite:
            raise Fail(codes.FILEEXISTS, "slot %d holds a key (overwrite not set)" % slot,
                       {"slot": slot})
        self._progress()
        priv, pub = self.crypto.sm2_keypair(self._rand)
        self._progress()
        new = keystore.copy_state(self.state)
        new["keys"][slot] = ["sm2", priv, pub]
        self._save(new)
        return {"public_key": pub}

    def _public_key(self, args):
        entry = self._key(args.slot())
        return {"alg": entry[0], "public_key": entry[2]}

    def _delete_key(self, args):
        slot = args.slot()
        self._key(slot)
        new = keystore.copy_state(self.state)
        new["keys"][slot] = None  # the counter stays: monotonic per slot
        self._save(new)
        return {}

    def _sign_e(self, slot, e):
        entry = self._key(slot)
        self._progress()
        try:
            sig = self.crypto.sm2_sign_digest(entry[1], e, self._rand)
        except Fail:
            raise
        except Exception:
            raise Fail(codes.SIGNERR, "signing failed") from None
        self._progress()
        new = keystore.copy_state(self.state)
        count = new["counters"][slot] + 1
        new["counters"][slot] = count
        self._save(new)  # the counter is on flash before the signature leaves
        return {"signature": sig, "counter": count}

    def _sign(self, args):
        slot = args.slot()
        message = args.bytes_("message", 0, MAX_DATA)
        uid = args.bytes_("id", 0, MAX_ID, False, DEFAULT_ID)
        entry = self._key(slot)
        e = self.crypto.sm3(self.crypto.sm2_za(entry[2], uid) + message)
        return self._sign_e(slot, e)

    def _sign_digest(self, args):
        slot = args.slot()
        digest = args.bytes_("digest", exact=32)
        return self._sign_e(slot, digest)

    def _verify(self, args):
        self._alg(args, "sm2")
        pub = self._public_key_arg(args)
        signature = args.bytes_("signature", 0, MAX_SIGNATURE)
        if args.has("message") == args.has("digest"):
            raise Fail(codes.INARGERR, "give exactly one of message and digest")
        if args.has("digest"):
            if args.has("id"):
                raise Fail(codes.INARGERR, "id goes with message, not digest",
                           {"argument": "id"})
            e = args.bytes_("digest", exact=32)
        else:
            message = args.bytes_("message", 0, MAX_DATA)
            uid = args.bytes_("id", 0, MAX_ID, False, DEFAULT_ID)
            e = self.crypto.sm3(self.crypto.sm2_za(pub, uid) + message)
        return {"valid": self.crypto.sm2_verify_digest(pub, e, signature) is True}

    # -- hashing ----------------------------------------------------------------------------

    def _hash_init(self, args):
        self._alg(args, "sm3")
        if args.has("id") and not args.has("public_key"):
            raise Fail(codes.INARGERR, "id needs public_key", {"argument": "id"})
        za = None
        if args.has("public_key"):
            pub = self._public_key_arg(args)
            uid = args.bytes_("id", 0, MAX_ID, False, DEFAULT_ID)
            za = self.crypto.sm2_za(pub, uid)
        owner = self._caller(args)
        if len(self.contexts) >= MAX_CONTEXTS:
            raise Fail(codes.NOBUFFER, "%d hash contexts already open" % MAX_CONTEXTS)
        h = self.crypto.sm3_new()
        if za is not None:
            h.update(za)
        ctx = self._next_context
        self._next_context = ctx + 1 if ctx < 0xFFFFFFFF else 1
        self.contexts[ctx] = [h, owner]
        return {"context": ctx}

    def _context(self, args):
        """(context, hash) of the caller's context; another session's does not exist for it."""
        ctx = args.uint("context")
        caller = self._caller(args)
        entry = self.contexts.get(ctx)
        if entry is None or not _same_owner(entry[1], caller):
            raise Fail(codes.STEPERR, "no such hash context", {"context": ctx})
        return ctx, entry[0]

    def _hash_update(self, args):
        ctx, h = self._context(args)
        h.update(args.bytes_("data", 0, MAX_DATA))
        return {}

    def _hash_final(self, args):
        ctx, h = self._context(args)
        del self.contexts[ctx]
        return {"digest": h.digest()}

    # -- encryption -------------------------------------------------------------------------

    def _encrypt(self, args):
        self._alg(args, "sm2")
        pub = self._public_key_arg(args)
        data = args.bytes_("data", 1, MAX_PLAINTEXT)
        self._progress()
        try:
            ct = self.crypto.sm2_encrypt(pub, data, self._rand)
        except Fail:
            raise
        except Exception:
            raise Fail(codes.PKOPERR, "SM2 encryption failed") from None
        self._progress()
        return {"ciphertext": ct}

    def _decrypt(self, args):
        slot = args.slot()
        ciphertext = args.bytes_("ciphertext", 1, MAX_CIPHERTEXT)
        entry = self._key(slot)
        self._progress()
        try:
            data = self.crypto.sm2_decrypt(entry[1], ciphertext)
        except Exception:
            raise Fail(codes.ENCDATAERR, "ciphertext does not decrypt with this key") from None
        self._progress()
        return {"data": data}

    def _sm4(self, args):
        mode = args.text("mode")
        if mode not in ("ecb", "cbc", "ctr"):
            raise Fail(codes.ALGMODNOTSUPPORT, "SM4 mode not supported (ecb, cbc, ctr)",
                       {"mode": mode[:16]})
        encrypt = args.boolean("encrypt")
        key = args.bytes_("key", exact=16)
        iv = args.bytes_("iv", exact=16, required=mode != "ecb")
        data = args.bytes_("data", 0, MAX_DATA)
        if mode != "ctr" and len(data) % 16:
            raise Fail(codes.INARGERR, "data must be a multiple of 16 bytes for ecb and cbc",
                       {"argument": "data"})
        if not data:
            return {"data": b""}
        try:
            if mode == "ecb":
                out = self.crypto.sm4_ecb(key, data, encrypt)
            elif mode == "cbc":
                out = self.crypto.sm4_cbc(key, iv, data, encrypt)
            else:
                out = self.crypto.sm4_ctr(key, iv, data)
        except Exception:
            raise Fail(codes.SYMOPERR, "SM4 operation failed") from None
        return {"data": out}

    # -- misc -------------------------------------------------------------------------------

    def _random(self, args):
        return {"data": self._rand(args.uint("length", 1, MAX_RANDOM))}

    def _self_test(self, args):
        results = kat.run(self.crypto, self.rand, self._progress, self.kat_fail)
        ok = kat.passed(results)
        self.kat_results = results
        if not ok:
            self.failed = True  # sticky: only a restart with a passing self test clears it
        return {"passed": ok, "results": results}

    def _reset(self, args):
        self.reset_requested = True  # the restart ends the session and the contexts
        return {}

    def _factory_reset(self, args):
        """Erase: with the PIN while it is not locked (a wrong one is a failed login), with
        the reset button held once it is."""
        if args.text("confirm") != "erase":
            raise Fail(codes.INARGERR, 'confirm must be "erase"', {"argument": "confirm"})
        pin = args.pin("pin") if args.has("pin") else None
        boot_count = self.state["boot_count"]
        module = self

        def erase(state):
            fresh = keystore.default_state()
            for k in fresh:
                state[k] = fresh[k]
            state["boot_count"] = boot_count
            module._set_pin(state, DEFAULT_PIN)

        if self.state["pin_retries"] <= 0:
            if not self._held():
                raise Fail(codes.PIN_LOCKED, "PIN locked: hold the reset button to erase",
                           {"retries": 0})
            new = keystore.copy_state(self.state)
            erase(new)
            self._save(new)
        elif pin is None:
            raise Fail(codes.PARDENY, "factory_reset needs the PIN while it is not locked")
        else:
            self._check_pin(pin, erase)  # one write: the tries and the erased state
        self.session = None
        self.contexts = {}
        return {}


def _same_owner(a, b):
    if a is None or b is None:
        return a is None and b is None
    return _ct_equal(a, b)
