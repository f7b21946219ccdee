"""``appliance hsm ...``: the crypto module from the command line, for technicians and rigs.

Every call prints one JSON object on stdout. Exit status: 0 success, 1 a signature that does
not verify, 2 the module refused (its SDR code is in the output), 3 the link failed, 4 bad
usage or input file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..gm import sm2
from . import errors
from .client import MAX_CHUNK, Client
from .transport import default_device

EXIT_INVALID, EXIT_MODULE, EXIT_LINK, EXIT_USAGE = 1, 2, 3, 4


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hsm", help="talk to the crypto module",
                       description="Commands of the SM2/SM3/SM4 crypto module. The PIN comes "
                       "from --pin or APPLIANCE_HSM_PIN; the device from --device, "
                       "APPLIANCE_HSM_DEVICE or /dev/gmcrypto0.")
    p.add_argument("--device", default=None, help="tty path or pyserial URL")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--pin", default=None, help="PIN (default: $APPLIANCE_HSM_PIN)")
    p.add_argument("--timeout", type=float, default=0.5, help="response timeout, seconds")
    cmds = p.add_subparsers(dest="hsm_command", metavar="COMMAND", required=True)
    cmds.add_parser("info", help="model, firmware, slots, login state, PIN tries left")
    cmds.add_parser("login", help="log in with the PIN")
    c = cmds.add_parser("change-pin", help="set a new PIN (6-16 characters, not 123456)")
    c.add_argument("--new", default=None, help="new PIN (default: $APPLIANCE_HSM_NEW_PIN)")
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
    c = cmds.add_parser("factory-reset", help="erase every key, restore the default PIN")
    c.add_argument("--yes", action="store_true", help="really erase (required)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    pin = args.pin if args.pin is not None else os.environ.get("APPLIANCE_HSM_PIN")
    try:
        with Client(args.device or default_device(), baudrate=args.baud, pin=pin,
                    response_timeout=args.timeout, reconnect_timeout=1.0) as client:
            return _COMMANDS[args.hsm_command](client, args, pin)
    except errors.ModuleError as exc:
        _out({"ok": False, "error": exc.error, "code": exc.code, "message": exc.message,
              **_jsonable(exc.details)})
        return EXIT_MODULE
    except errors.LinkError as exc:
        _out({"ok": False, "error": "link", "message": str(exc)})
        return EXIT_LINK
    except (OSError, ValueError) as exc:
        _out({"ok": False, "error": "usage", "message": str(exc)})
        return EXIT_USAGE


def _info(client: Client, args: argparse.Namespace, pin: str | None) -> int:
    _out({"ok": True, **_jsonable(client.info())})
    return 0


def _login(client: Client, args: argparse.Namespace, pin: str | None) -> int:
    client.login(_need(pin, "a PIN (--pin or APPLIANCE_HSM_PIN)"))
    _out({"ok": True, "logged_in": True})
    return 0


def _change_pin(client: Client, args: argparse.Namespace, pin: str | None) -> int:
    new = args.new if args.new is not None else os.environ.get("APPLIANCE_HSM_NEW_PIN")
    client.login(_need(pin, "the current PIN (--pin or APPLIANCE_HSM_PIN)"))
    client.change_pin(pin, _need(new, "a new PIN (--new or APPLIANCE_HSM_NEW_PIN)"))
    _out({"ok": True})
    return 0


def _keygen(client: Client, args: argparse.Namespace, pin: str | None) -> int:
    public_key = client.generate_key(args.slot, overwrite=args.overwrite)
    _out({"ok": True, "slot": args.slot, "alg": "sm2", "public_key": public_key.hex()})
    return 0


def _pubkey(client: Client, args: argparse.Namespace, pin: str | None) -> int:
    key = client.public_key(args.slot)
    _out({"ok": True, "slot": args.slot, "alg": key.alg, "public_key": key.public_key.hex()})
    return 0


def _sign(client: Client, args: argparse.Namespace, pin: str | None) -> int:
    message = _read(args.file)
    if len(message) <= MAX_CHUNK:
        result = client.sign(args.slot, message)
    else:  # the module takes 3 KiB messages: hash larger files here, e = SM3(Z_A || M)
        public_key = client.public_key(args.slot).public_key
        result = client.sign_digest(args.slot, sm2.message_digest(public_key, message))
    _out({"ok": True, "slot": args.slot, "signature": result.signature.hex(),
          "der": sm2.signature_to_der(result.signature).hex(), "counter": result.counter})
    return 0


def _verify(client: Client, args: argparse.Namespace, pin: str | None) -> int:
    public_key, signature = bytes.fromhex(args.pubhex), bytes.fromhex(args.sighex)
    message = _read(args.file)
    if len(message) <= MAX_CHUNK:
        valid = client.verify(public_key, signature, message=message)
    else:
        valid = client.verify(public_key, signature,
                              digest=sm2.message_digest(public_key, message))
    _out({"ok": True, "valid": valid})
    return 0 if valid else EXIT_INVALID


def _selftest(client: Client, args: argparse.Namespace, pin: str | None) -> int:
    result = client.self_test()
    _out({"ok": True, **_jsonable(result)})
    return 0 if result.get("passed") else EXIT_MODULE


def _factory_reset(client: Client, args: argparse.Namespace, pin: str | None) -> int:
    if not args.yes:
        raise ValueError("factory-reset erases every key on the module: add --yes")
    client.factory_reset()
    _out({"ok": True, "erased": True})
    return 0


_COMMANDS = {"info": _info, "login": _login, "change-pin": _change_pin, "keygen": _keygen,
             "pubkey": _pubkey, "sign": _sign, "verify": _verify, "selftest": _selftest,
             "factory-reset": _factory_reset}


def _need(value: str | None, what: str) -> str:
    if not value:
        raise ValueError(f"this command needs {what}")
    return value


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
