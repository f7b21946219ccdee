"""``appliance hsm ...``: the crypto module from the command line, for technicians and rigs.

Every call prints one JSON object on stdout. Exit status: 0 success, 1 a signature that does
not verify, 2 the module refused (its SDR code is in the output), 3 the link failed, 4 bad
usage or input file.

PINs never come from the command line (any user can read another's argv in /proc): the PIN
is read from ``--pin-file PATH`` (its first line), else ``APPLIANCE_HSM_PIN``, else asked for
on the terminal (getpass); with none of these the command fails with a usage error. The new
PIN of ``change-pin`` likewise: ``--new-pin-file``, ``APPLIANCE_HSM_NEW_PIN``, or asked twice.
Only the commands that need a PIN read one.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..gm import sm2
from . import errors
from .client import MAX_CHUNK, Client
from .transport import default_device

EXIT_INVALID, EXIT_MODULE, EXIT_LINK, EXIT_USAGE = 1, 2, 3, 4
PIN_ENV, NEW_PIN_ENV = "APPLIANCE_HSM_PIN", "APPLIANCE_HSM_NEW_PIN"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hsm", help="talk to the crypto module",
                       description="Commands of the SM2/SM3/SM4 crypto module. The PIN comes "
                       f"from --pin-file, {PIN_ENV} or a prompt on the terminal, never from "
                       "the command line; the device from --device, APPLIANCE_HSM_DEVICE or "
                       "/dev/gmcrypto0.")
    p.add_argument("--device", default=None, help="tty path or pyserial URL")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--pin-file", default=None, metavar="PATH",
                   help=f"read the PIN from the first line of PATH (else ${PIN_ENV}, else a "
                   "prompt)")
    p.add_argument("--pin", default=None, help=argparse.SUPPRESS)  # refused: see run()
    p.add_argument("--timeout", type=float, default=0.5, help="response timeout, seconds")
    cmds = p.add_subparsers(dest="hsm_command", metavar="COMMAND", required=True)
    cmds.add_parser("info", help="model, firmware, slots, login state, PIN tries left")
    cmds.add_parser("login", help="check the PIN by logging in")
    c = cmds.add_parser("change-pin", help="set a new PIN (6-16 characters, not 123456)")
    c.add_argument("--new-pin-file", default=None, metavar="PATH",
                   help=f"read the new PIN from the first line of PATH (else ${NEW_PIN_ENV}, "
                   "else a prompt, twice)")
    c = cmds.add_parser("keygen", help="generate an SM2 key in a slot")
    c.add_argument("slot", type=int)
    c.add_argument("--overwrite", action="store_true", help="replace a key already there")
    c = cmds.add_parser("pubkey", help="the public key of a slot")
    c.add_argument("slot", type=int)
    c = cmds.add_parser("sign", help="SM2-sign a file with a slot's key")
    c.add_argument("slot", type=int)
    c.add_argument("file", help="file to sign, - for stdin")
    c = cmds.add_parser("verify", help="verify an SM2 signature on the module")
    c.add_argument("pubhex", help="65-byte public key, hex")
    c.add_argument("file", help="signed file, - for stdin")
    c.add_argument("sighex", help="64-byte r||s signature, hex")
    cmds.add_parser("selftest", help="run the module's known-answer tests")
    c = cmds.add_parser("factory-reset", help="erase every key, restore the default PIN (the "
                        "PIN is needed; once it is locked, hold the module's reset button "
                        "instead)")
    c.add_argument("--yes", action="store_true", help="really erase (required)")
    p.set_defaults(func=run)


class Pins:
    """Where the PINs come from; each is read once, when a command first needs it."""

    def __init__(self, args: argparse.Namespace, env: Mapping[str, str] | None = None,
                 prompt: Callable[[str], str | None] | None = None) -> None:
        self._args = args
        self._env = os.environ if env is None else env
        self._prompt = prompt or _prompt
        self._pin: str | None = None

    def pin(self) -> str:
        if self._pin is None:
            self._pin = _pin_from(self._args.pin_file, self._env.get(PIN_ENV), self._prompt,
                                  "PIN", f"--pin-file or {PIN_ENV}")
        return self._pin

    def new_pin(self) -> str:
        new = _pin_from(getattr(self._args, "new_pin_file", None), self._env.get(NEW_PIN_ENV),
                        self._prompt, "new PIN", f"--new-pin-file or {NEW_PIN_ENV}", twice=True)
        return new


def _pin_from(path: str | None, env_value: str | None, prompt: Callable[[str], str | None],
              what: str, sources: str, twice: bool = False) -> str:
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the {what} from {path}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        value = lines[0].strip() if lines else ""
        if not value:
            raise ValueError(f"{path} holds no {what} (its first line is empty)")
        return value
    if env_value:
        return env_value
    value = prompt(f"crypto module {what}: ")
    if value is None:
        raise ValueError(f"this command needs the {what} and there is no terminal to ask for "
                         f"it on: give {sources}")
    if twice and prompt(f"crypto module {what} again: ") != value:
        raise ValueError(f"the two {what}s typed differ")
    if not value:
        raise ValueError(f"no {what} given")
    return value


def _prompt(text: str) -> str | None:
    """What is typed on the controlling terminal, not echoed; None without a terminal."""
    try:
        with open("/dev/tty", "rb"):
            pass
    except OSError:
        return None
    try:
        return getpass.getpass(text)
    except (EOFError, KeyboardInterrupt):
        return ""


def run(args: argparse.Namespace) -> int:
    if args.pin is not None:
        _out({"ok": False, "error": "usage", "message": "the PIN is not taken on the command "
              "line (other users can read it there): give --pin-file PATH, set "
              f"{PIN_ENV}, or type it when asked"})
        return EXIT_USAGE
    pins = Pins(args)
    try:
        with Client(args.device or default_device(), baudrate=args.baud,
                    response_timeout=args.timeout, reconnect_timeout=1.0) as client:
            return _COMMANDS[args.hsm_command](client, args, pins)
    except errors.ModuleError as exc:
        out = {"ok": False, "error": exc.error, "code": exc.code, "message": exc.message,
               **_jsonable(exc.details)}
        if exc.advice:
            out["advice"] = exc.advice
        _out(out)
        return EXIT_MODULE
    except errors.PortBusy as exc:
        _out({"ok": False, "error": "busy", "message": str(exc)})
        return EXIT_LINK
    except errors.LinkError as exc:
        _out({"ok": False, "error": "link", "message": str(exc)})
        return EXIT_LINK
    except (OSError, ValueError) as exc:
        _out({"ok": False, "error": "usage", "message": str(exc)})
        return EXIT_USAGE


def _info(client: Client, args: argparse.Namespace, pins: Pins) -> int:
    _out({"ok": True, **_jsonable(client.info())})
    return 0


def _login(client: Client, args: argparse.Namespace, pins: Pins) -> int:
    client.login(pins.pin())
    _out({"ok": True, "logged_in": True})
    return 0


def _change_pin(client: Client, args: argparse.Namespace, pins: Pins) -> int:
    pin = pins.pin()
    new = pins.new_pin()
    client.login(pin)
    client.change_pin(pin, new)
    _out({"ok": True})
    return 0


def _keygen(client: Client, args: argparse.Namespace, pins: Pins) -> int:
    client.login(pins.pin())
    public_key = client.generate_key(args.slot, overwrite=args.overwrite)
    _out({"ok": True, "slot": args.slot, "alg": "sm2", "public_key": public_key.hex()})
    return 0


def _pubkey(client: Client, args: argparse.Namespace, pins: Pins) -> int:
    key = client.public_key(args.slot)
    _out({"ok": True, "slot": args.slot, "alg": key.alg, "public_key": key.public_key.hex()})
    return 0


def _sign(client: Client, args: argparse.Namespace, pins: Pins) -> int:
    message = _read(args.file)
    client.login(pins.pin())
    if len(message) <= MAX_CHUNK:
        result = client.sign(args.slot, message)
    else:  # the module takes 3 KiB messages: hash larger files here, e = SM3(Z_A || M)
        public_key = client.public_key(args.slot).public_key
        result = client.sign_digest(args.slot, sm2.message_digest(public_key, message))
    _out({"ok": True, "slot": args.slot, "signature": result.signature.hex(),
          "der": sm2.signature_to_der(result.signature).hex(), "counter": result.counter})
    return 0


def _verify(client: Client, args: argparse.Namespace, pins: Pins) -> int:
    public_key, signature = bytes.fromhex(args.pubhex), bytes.fromhex(args.sighex)
    message = _read(args.file)
    if len(message) <= MAX_CHUNK:
        valid = client.verify(public_key, signature, message=message)
    else:
        valid = client.verify(public_key, signature,
                              digest=sm2.message_digest(public_key, message))
    _out({"ok": True, "valid": valid})
    return 0 if valid else EXIT_INVALID


def _selftest(client: Client, args: argparse.Namespace, pins: Pins) -> int:
    result = client.self_test()
    _out({"ok": True, **_jsonable(result)})
    return 0 if result.get("passed") else EXIT_MODULE


def _factory_reset(client: Client, args: argparse.Namespace, pins: Pins) -> int:
    if not args.yes:
        raise ValueError("factory-reset erases every key on the module: add --yes")
    if client.info().get("pin_retries") == 0:
        client.factory_reset()  # locked: the module wants its reset button held instead
    else:
        client.factory_reset(pins.pin())
    _out({"ok": True, "erased": True})
    return 0


_COMMANDS = {"info": _info, "login": _login, "change-pin": _change_pin, "keygen": _keygen,
             "pubkey": _pubkey, "sign": _sign, "verify": _verify, "selftest": _selftest,
             "factory-reset": _factory_reset}


def _read(path: str) -> bytes:
    return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _out(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)
