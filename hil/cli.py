"""The ``appliance-hil`` command: tools of the hardware-in-the-loop rig.

One subcommand per emulated part of a terminal (today the crypto module). Each subcommand is
added by its own ``_add_*`` function and runs through ``args.func``, so a new emulator is one
more function here and one line in :func:`build_parser`. Long-running emulators print one
``ready ...`` line on stdout when they can be used and log on stderr.
"""

from __future__ import annotations

import argparse
import sys

from hil.faults import FaultSpec


def _fault_spec(text: str) -> FaultSpec:
    try:
        return FaultSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_negative_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _cmd_hsm_emulator(args: argparse.Namespace) -> int:
    from hil.hsm_emulator import Emulator

    emulator = Emulator(args.link, args.store, runtime=args.runtime, baud=args.baud,
                        faults=args.faults, seed=args.seed, serial=args.serial,
                        slow_ms=args.slow_ms, kat_fail=args.kat_fail, firmware=args.firmware,
                        micropython=args.micropython, exit_with_parent=args.exit_with_parent)
    return emulator.run()


def _add_hsm_emulator(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hsm-emulator", help="the crypto module on a pty: its firmware, line faults, UART pacing",
        description="Run the crypto-module firmware behind a pseudo-terminal reached through "
        "--link. Prints 'ready PATH' once the module has sent its first BOOT frame; stops "
        "on SIGTERM/SIGINT (removing the link). Logs one line per event on stderr.")
    p.add_argument("--link", required=True, metavar="PATH",
                   help="symlink to create to the pty's slave (the port the host opens)")
    p.add_argument("--store", required=True, metavar="FILE",
                   help="the module's persistent key store (survives restarts)")
    p.add_argument("--runtime", choices=("cpython", "micropython"), default="cpython",
                   help="run the firmware on CPython (fast crypto; default) or MicroPython "
                   "(the portable code as on the MCU)")
    p.add_argument("--baud", type=_non_negative_int, default=0, metavar="N",
                   help="pace both directions as an 8N1 UART at N baud (10 bits per byte); "
                   "0 = unpaced (default)")
    p.add_argument("--faults", type=_fault_spec, default=FaultSpec(), metavar="SPEC",
                   help="e.g. flip=0.001,drop=0.001,dup=0.001,delay_ms=0-50,reset_every=500,"
                   "cut_write=0.01 (all optional)")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="seed of the faults and of the firmware (default: picked and logged)")
    p.add_argument("--serial", default=None, metavar="S", help="the module's serial number")
    p.add_argument("--slow-ms", type=_non_negative_int, default=None, metavar="N",
                   help="passed to the firmware: make operations take N ms longer")
    p.add_argument("--kat-fail", action="store_true",
                   help="passed to the firmware: fail the power-up self test")
    p.add_argument("--firmware", default=None, metavar="MAIN_PY",
                   help="firmware entry point (default: appliance/hsm/firmware/main.py)")
    p.add_argument("--micropython", default=None, metavar="EXE",
                   help="MicroPython binary (default: $MICROPYTHON, next to python, or PATH)")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="stop when the parent process exits (used by hil.hsm_emulator."
                   "HsmEmulator)")
    p.set_defaults(func=_cmd_hsm_emulator)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance-hil",
        description="Hardware-in-the-loop rig tools: emulated parts of a service-hall "
        "terminal for tests and benchmarks (not terminal firmware).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_hsm_emulator(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
