"""The ``appliance`` command line.

Each subcommand prints one JSON object on stdout so that scripts and the HIL rig can read
it; errors go to stderr with a non-zero exit status, never as a stack trace.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__


def _cmd_version(args: argparse.Namespace) -> int:
    from . import gm
    from .gm import libcrypto

    _print({"appliance": __version__, "crypto_backend": gm.backend.name(),
            "openssl": libcrypto.version(), "python": sys.version.split()[0]})
    return 0


def _cmd_selfcheck(args: argparse.Namespace) -> int:
    from . import gm, wire
    from .gm import selftest

    results = selftest.run()
    sample = {"chain_id": "selfcheck", "height": 1, "data": b"\x00\x01"}
    try:
        results["canonical_cbor"] = wire.decode(wire.encode(sample)) == sample
    except wire.WireError:
        results["canonical_cbor"] = False
    passed = all(results.values())
    _print({"passed": passed, "crypto_backend": gm.backend.name(), "results": results})
    return 0 if passed else 1


def _cmd_run(args: argparse.Namespace) -> int:
    from . import config, service

    try:
        cfg = config.load(args.config)
        if args.port is not None:
            cfg = cfg.with_port(args.port)
    except config.ConfigError as exc:
        print(f"appliance run: {exc}", file=sys.stderr)
        return 2
    try:
        return service.run(cfg, sim=args.sim)
    except (OSError, RuntimeError) as exc:
        print(f"appliance run: {exc}", file=sys.stderr)
        return 1


def _print(obj: dict) -> None:
    print(json.dumps(obj, sort_keys=True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="Service-hall light-node appliance: SPV light node of the municipal "
        "consortium chain, keys in an SM2/SM3/SM4 crypto module.",
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="versions of the appliance and its crypto backend"
                   ).set_defaults(func=_cmd_version)
    sub.add_parser("selfcheck", help="known-answer tests of SM2/SM3/SM4/ECDSA and the codec"
                   ).set_defaults(func=_cmd_selfcheck)
    run = sub.add_parser("run", help="the daemon: light node, crypto module, kiosk UI",
                         description="Run the appliance (node, hsm and kiosk tasks). "
                         "Configuration: --config, $APPLIANCE_CONFIG or "
                         "/etc/appliance/appliance.toml (defaults when that is missing).")
    run.add_argument("--config", metavar="FILE", help="the TOML configuration file")
    run.add_argument("--sim", action="store_true",
                     help="start the simulated service hall (test fixtures) on this machine")
    run.add_argument("--port", type=int, metavar="P", help="UI port (overrides kiosk.listen)")
    run.set_defaults(func=_cmd_run)
    from .hsm import cli as hsm_cli

    hsm_cli.add_parser(sub)
    from .node import cli as node_cli

    node_cli.add_parser(sub)
    from . import audit_cli

    audit_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
