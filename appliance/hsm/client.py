"""Host driver of the crypto module: one method per command, over any serial port.

The protocol logic is :class:`~appliance.hsm.proto.hostlink.HostLink` (sans-I/O); this module
is the thin adapter that owns the port, feeds it bytes and time, and turns its events into
return values and typed errors. One lock serialises commands, so a :class:`Client` can be
shared between threads; :class:`AsyncClient` runs the same calls off the event loop.

Sessions (protocol revision 2): ``login`` returns a session, a 16-byte bearer value, which
the driver keeps and sends with every command that needs it (those that need login, and
``logout``, ``reset`` and ``hash_*`` while it has one); callers never see it. A tty is opened
exclusively (:mod:`.transport`), so no other process shares the link.

Recovery: NAKs, timeouts and line noise are handled by HostLink's retransmissions; a module
reset (BOOT) fails the request in flight with :class:`ModuleReset` and the driver drops its
session and logs in again, with the PIN it was given, before the next command that needs it;
a port that fails (unplugged) is closed and reopened by the next call, waiting up to
``reconnect_timeout``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import serial

from .. import wire
from . import errors
from .proto.hostlink import HostLink
from .transport import DEFAULT_BAUDRATE, default_device, open_port

MAX_CHUNK = 3072  # the largest message / data argument the module takes
SESSION_SIZE = 16
_NEEDS_LOGIN = frozenset({"change_pin", "generate_key", "delete_key", "sign", "sign_digest",
                          "decrypt"})
# commands that carry the session while one is open
_CARRY_SESSION = _NEEDS_LOGIN | {"logout", "reset", "hash_init", "hash_update", "hash_final"}
_FAILURES: dict[str, type[errors.LinkError]] = {
    "module_reset": errors.ModuleReset,
    "timeout": errors.LinkTimeout,
    "link_down": errors.LinkDown,
}


class ProtocolError(errors.LinkError):
    """A frame that passed its CRC but whose payload is not a valid response."""


@dataclass(frozen=True)
class Signature:
    signature: bytes  # 64 bytes r || s
    counter: int  # the slot's signature count after this one


@dataclass(frozen=True)
class PublicKey:
    alg: str
    public_key: bytes  # 65 bytes 04 || X || Y


class Client:
    """A session with one crypto module. Use as a context manager or call :meth:`close`."""

    def __init__(self, port: str | None = None, *, baudrate: int = DEFAULT_BAUDRATE,
                 pin: str | None = None, response_timeout: float = 0.5, max_retries: int = 3,
                 reconnect_timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.port_name = port or default_device()
        self.baudrate = baudrate
        self.reconnect_timeout = reconnect_timeout
        self.boot_info: dict[str, Any] | None = None
        self.boots_seen = 0
        self._clock = clock
        self._link = HostLink(response_timeout, max_retries)
        self._lock = threading.RLock()
        self._port: serial.SerialBase | None = None
        self._pin = pin
        self._session: bytes | None = None  # what the last successful login returned

    # -- session ---------------------------------------------------------------------------

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._drop_port()

    @property
    def logged_in(self) -> bool:
        """The driver holds a session (the module may have lost it since: a restart)."""
        return self._session is not None

    # -- commands --------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return self.call("info")

    def login(self, pin: str) -> None:
        """Log in; a wrong PIN raises and leaves the session the driver had (as the module
        does)."""
        with self._lock:
            self._login(pin)
            self._pin = pin

    def logout(self) -> None:
        with self._lock:
            try:
                self._call("logout", self._with_session("logout", {}))
            except errors.AccessDenied:
                pass  # the open session is not ours (the module restarted): nothing to end
            finally:
                self._pin = None
                self._session = None

    def change_pin(self, old: str, new: str) -> None:
        with self._lock:
            self.call("change_pin", old=old, new=new)
            self._pin = new

    def generate_key(self, slot: int, alg: str = "sm2", overwrite: bool = False) -> bytes:
        return _bytes(self.call("generate_key", slot=slot, alg=alg, overwrite=overwrite),
                      "public_key", 65)

    def public_key(self, slot: int) -> PublicKey:
        r = self.call("public_key", slot=slot)
        return PublicKey(_str(r, "alg"), _bytes(r, "public_key", 65))

    def delete_key(self, slot: int) -> None:
        self.call("delete_key", slot=slot)

    def sign(self, slot: int, message: bytes, id: bytes | None = None) -> Signature:
        args: dict[str, Any] = {"slot": slot, "message": bytes(message)}
        if id is not None:
            args["id"] = bytes(id)
        r = self.call("sign", **args)
        return Signature(_bytes(r, "signature", 64), _uint(r, "counter"))

    def sign_digest(self, slot: int, digest: bytes) -> Signature:
        r = self.call("sign_digest", slot=slot, digest=bytes(digest))
        return Signature(_bytes(r, "signature", 64), _uint(r, "counter"))

    def verify(self, public_key: bytes, signature: bytes, *, message: bytes | None = None,
               digest: bytes | None = None, id: bytes | None = None, alg: str = "sm2") -> bool:
        args: dict[str, Any] = {"alg": alg, "public_key": bytes(public_key),
                                "signature": bytes(signature)}
        if message is not None:
            args["message"] = bytes(message)
        if digest is not None:
            args["digest"] = bytes(digest)
        if id is not None:
            args["id"] = bytes(id)
        r = self.call("verify", **args)
        if not isinstance(r.get("valid"), bool):
            raise ProtocolError("verify response without a boolean 'valid'")
        return r["valid"]

    def hash_init(self, public_key: bytes | None = None, id: bytes | None = None) -> int:
        args: dict[str, Any] = {"alg": "sm3"}
        if public_key is not None:
            args["public_key"] = bytes(public_key)
        if id is not None:
            args["id"] = bytes(id)
        return _uint(self.call("hash_init", **args), "context")

    def hash_update(self, context: int, data: bytes) -> None:
        self.call("hash_update", context=context, data=bytes(data))

    def hash_final(self, context: int) -> bytes:
        return _bytes(self.call("hash_final", context=context), "digest", 32)

    def sm3(self, data: bytes, public_key: bytes | None = None, id: bytes | None = None) -> bytes:
        """SM3 of ``data`` of any length (with Z_A in front when ``public_key`` is given).

        Hashing has no side effects, so when the module restarts mid-stream (its contexts die
        with it) the whole stream is hashed again, up to three times.
        """
        for attempt in range(3):
            try:
                context = self.hash_init(public_key, id)
                for i in range(0, len(data), MAX_CHUNK):
                    self.hash_update(context, data[i:i + MAX_CHUNK])
                return self.hash_final(context)
            except (errors.ModuleReset, errors.ContextLost):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def encrypt(self, public_key: bytes, data: bytes) -> bytes:
        r = self.call("encrypt", alg="sm2", public_key=bytes(public_key), data=bytes(data))
        return _bytes(r, "ciphertext")

    def decrypt(self, slot: int, ciphertext: bytes) -> bytes:
        return _bytes(self.call("decrypt", slot=slot, ciphertext=bytes(ciphertext)), "data")

    def sm4(self, mode: str, encrypt: bool, key: bytes, iv: bytes, data: bytes) -> bytes:
        r = self.call("sm4", mode=mode, encrypt=encrypt, key=bytes(key), iv=bytes(iv),
                      data=bytes(data))
        return _bytes(r, "data", len(data))

    def random(self, length: int) -> bytes:
        return _bytes(self.call("random", length=length), "data", length)

    def self_test(self) -> dict[str, Any]:
        return self.call("self_test")

    def reset(self) -> None:
        """Restart the module; the BOOT that follows is consumed by the next call."""
        with self._lock:
            self.call("reset")
            self._session = None

    def factory_reset(self, pin: str | None = None) -> None:
        """Erase every key and restore the factory PIN. The module wants the PIN (``pin``,
        else the one this client was given) while it is not locked, and its reset button
        held once it is; a wrong PIN costs a try."""
        with self._lock:
            args: dict[str, Any] = {"confirm": "erase"}
            pin = pin if pin is not None else self._pin
            if pin is not None:
                args["pin"] = pin
            self.call("factory_reset", **args)
            self._session = None
            self._pin = None

    # -- the generic call --------------------------------------------------------------------

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send ``{op, **args}``; the ``ok: true`` response, or a typed error.

        The driver adds its session where the command carries one. An explicit ``session``
        argument is sent as given (``None``: no session), with no login or retry around it
        (tools and tests).
        """
        with self._lock:
            if "session" in args:
                if args["session"] is None:
                    args = {k: v for k, v in args.items() if k != "session"}
                return self._call(op, args)
            if op in _NEEDS_LOGIN and self._session is None and self._pin is not None:
                self._login_again()
            try:
                return self._call(op, self._with_session(op, args))
            except errors.AccessDenied as exc:
                if "retries" in exc.details:
                    raise  # a wrong PIN (change_pin's old one), not a session: never again
                # The module does not know our session: it restarted without us seeing its
                # BOOT (a BOOT can be lost on the line, or when the port is reopened), or
                # another login replaced it. The copy refused with PARDENY did not execute;
                # but if the REQ was retransmitted, an earlier copy may have run before the
                # module restarted, so only a request sent once is retried.
                if op not in _CARRY_SESSION or self._pin is None:
                    raise
                if self._link.sends > 1:
                    raise errors.ModuleReset(
                        f"{op}: the module restarted while the request was being retransmitted;"
                        " it may have executed") from None
                self._login_again()
                return self._call(op, self._with_session(op, args))

    def _with_session(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op in _CARRY_SESSION and self._session is not None:
            return {**args, "session": self._session}
        return args

    def _call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        payload = wire.encode({"op": op, **args})
        try:
            response = wire.decode(self._exchange(payload), max_size=8192)
        except wire.WireError as exc:
            raise ProtocolError(f"response to {op} is not canonical CBOR: {exc}") from None
        if not isinstance(response, dict) or not isinstance(response.get("ok"), bool):
            raise ProtocolError(f"response to {op} is not a result map")
        if not response["ok"]:
            error = errors.from_response(response)
            if isinstance(error, errors.AccessDenied) and "retries" not in error.details \
                    and op in _CARRY_SESSION and args.get("session") == self._session:
                self._session = None  # the module does not know it (any more)
            raise error
        return response

    def _login(self, pin: str) -> None:
        session = self._call("login", {"pin": pin}).get("session")
        if not isinstance(session, bytes) or len(session) != SESSION_SIZE:
            raise ProtocolError(f"login response without a {SESSION_SIZE}-byte session")
        self._session = session

    def _login_again(self) -> None:
        assert self._pin is not None
        self._login(self._pin)

    # -- I/O ---------------------------------------------------------------------------------

    def _exchange(self, payload: bytes) -> bytes:
        self._ensure_open()
        try:
            self._drain()
            return self._run(payload)
        except (serial.SerialException, OSError) as exc:
            self._drop_port()
            raise errors.LinkDown(f"port {self.port_name} failed: {exc}") from None

    def _ensure_open(self) -> None:
        if self._port is not None:
            return
        deadline = self._clock() + self.reconnect_timeout
        while True:
            try:
                self._port = open_port(self.port_name, self.baudrate)
                return
            except errors.PortBusy:
                raise  # another process holds it: waiting would not help this call
            except (serial.SerialException, OSError) as exc:
                if self._clock() >= deadline:
                    raise errors.LinkDown(f"cannot open {self.port_name}: {exc}") from None
                time.sleep(0.1)

    def _drop_port(self) -> None:
        port, self._port = self._port, None
        self._link.abort()
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass

    def _drain(self) -> None:
        """Consume what arrived while idle (a BOOT after a reset) before the next request."""
        port = self._port
        while port.in_waiting:
            self._handle(self._link.feed(port.read(port.in_waiting), self._clock()))

    def _run(self, payload: bytes) -> bytes:
        port = self._port
        port.write(self._link.request(payload, self._clock()))
        while True:
            now = self._clock()
            deadline = self._link.deadline()
            if deadline is not None and now >= deadline:
                events = self._link.poll(now)
            else:
                port.timeout = 0.5 if deadline is None else deadline - now
                data = port.read(1)
                if data and port.in_waiting:
                    data += port.read(port.in_waiting)
                events = self._link.feed(data, self._clock()) if data else []
            result = self._handle(events)
            if result is not None:
                return result

    def _handle(self, events: list[tuple]) -> bytes | None:
        for event in events:
            kind = event[0]
            if kind == "send":
                self._port.write(event[1])
            elif kind == "response":
                return event[1]
            elif kind == "boot":
                self._on_boot(event[1])
            elif kind == "failed":
                raise _FAILURES.get(event[1], errors.LinkDown)(
                    f"request failed: {event[1]} on {self.port_name}")
        return None

    def _on_boot(self, payload: bytes) -> None:
        self._session = None  # the module forgot the session
        self.boots_seen += 1
        try:
            info = wire.decode(payload, max_size=4096)
        except wire.WireError:
            info = None
        self.boot_info = info if isinstance(info, dict) else None


class AsyncClient:
    """The same commands as :class:`Client`, awaited; each runs in a worker thread."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def close(self) -> None:
        self.client.close()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(attr, *args, **kwargs)

        call.__name__ = name
        call.__doc__ = attr.__doc__
        return call


def _bytes(r: dict[str, Any], key: str, size: int | None = None) -> bytes:
    value = r.get(key)
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        raise ProtocolError(f"response field {key!r} is not {size or 'some'} bytes")
    return value


def _uint(r: dict[str, Any], key: str) -> int:
    value = r.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"response field {key!r} is not an unsigned integer")
    return value


def _str(r: dict[str, Any], key: str) -> str:
    value = r.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"response field {key!r} is not text")
    return value
