"""The ``appliance-hil`` command: tools of the hardware-in-the-loop rig.

One subcommand per emulated part of a terminal (today the crypto module). Each subcommand is
added by its own ``_add_*`` function and runs through ``args.func``, so a new emulator is one
more function here and one line in :func:`build_parser`. Long-running emulators print one
``ready ...`` line on stdout when they can be used and log on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

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
                        micropython=args.micropython, exit_with_parent=args.exit_with_parent,
                        presence=args.presence)
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
    p.add_argument("--presence", default=None, metavar="FILE",
                   help="the module's reset button: held while FILE exists (create it to "
                   "press, remove it to release); default: no button")
    p.add_argument("--firmware", default=None, metavar="MAIN_PY",
                   help="firmware entry point (default: appliance/hsm/firmware/main.py)")
    p.add_argument("--micropython", default=None, metavar="EXE",
                   help="MicroPython binary (default: $MICROPYTHON, next to python, or PATH)")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="stop when the parent process exits (used by hil.hsm_emulator."
                   "HsmEmulator)")
    p.set_defaults(func=_cmd_hsm_emulator)


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _cmd_make_chain(args: argparse.Namespace) -> int:
    import json

    from hil.chain import ChainParams, generate

    params = ChainParams(chain_id=args.chain_id, seed=args.seed, validators=args.validators,
                         alg=args.alg, power_max=args.power_max,
                         set_change_every=args.set_change_every, commit_every=args.commit_every,
                         sign_quorum=args.sign_quorum, issuers=args.issuers,
                         start_ms=args.start_ms, interval_ms=args.interval_ms,
                         districts=tuple(args.district or _CHAIN_DEFAULT_DISTRICTS),
                         offices=tuple(args.office))
    try:
        summary = generate(args.out, params, args.blocks, args.txs_per_block, force=args.force,
                           progress=lambda line: print(line, file=sys.stderr, flush=True))
    except (ValueError, FileExistsError) as exc:
        print(f"make-chain: {exc}", file=sys.stderr)
        return 2
    summary.pop("keys", None)
    summary.pop("validator_sets", None)
    summary.pop("validator_sets_omitted", None)
    print(json.dumps({"out": str(args.out), **summary}))
    return 0


# Defaults of make-chain, equal to hil.chain's (a test checks): importing hil.chain here would
# load the crypto backend for every subcommand.
_CHAIN_ALG_MODES = ("sm2", "ecdsa-p256", "mixed")
_CHAIN_DEFAULT_ID = "hil-devnet"
_CHAIN_DEFAULT_SEED = "0"
_CHAIN_DEFAULT_START_MS = 1_700_000_000_000
_CHAIN_DEFAULT_INTERVAL_MS = 1000
_CHAIN_DEFAULT_DISTRICTS = ("haidian",)


def _add_make_chain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-chain", help="TEST FIXTURE: generate a seeded consortium chain for the "
        "district-node double (private keys stored in the clear)",
        description="TEST FIXTURE. Generate a chain of the ledger protocol v1 into DIR: "
        "chain.db (SQLite: headers, commits, txs, validator sets, and the validators', "
        "issuing offices' and district admins' PRIVATE KEYS in the clear), trust.cbor (the "
        "trust anchor at height 0, with the admins) and chain.json (a summary). Everything "
        "but signature bytes is a function of the options and --seed. Progress on stderr; a "
        "JSON summary on stdout. Never use the chain or its keys outside tests and benchmarks.")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    p.add_argument("--validators", required=True, type=_positive_int, metavar="N",
                   help="validators per set (1..256)")
    p.add_argument("--blocks", required=True, type=_positive_int, metavar="N",
                   help="blocks to generate: heights 0 .. N-1")
    p.add_argument("--txs-per-block", required=True, type=_non_negative_int, metavar="K",
                   help="evidence.deposit transactions per block")
    p.add_argument("--set-change-every", type=_non_negative_int, default=0, metavar="M",
                   help="every M blocks the oldest validator leaves and a new one joins "
                   "(0 = never; default)")
    p.add_argument("--alg", choices=_CHAIN_ALG_MODES, default="sm2",
                   help="validator and issuer key alg; mixed alternates sm2 and ecdsa-p256 "
                   "(default sm2)")
    p.add_argument("--seed", default=_CHAIN_DEFAULT_SEED, metavar="S",
                   help=f"text seed of keys and contents (default {_CHAIN_DEFAULT_SEED!r})")
    p.add_argument("--chain-id", default=_CHAIN_DEFAULT_ID, metavar="ID",
                   help=f"chain_id (default {_CHAIN_DEFAULT_ID})")
    p.add_argument("--start-ms", type=_non_negative_int, default=_CHAIN_DEFAULT_START_MS,
                   metavar="T",
                   help=f"timestamp of genesis, ms since 1970 (default {_CHAIN_DEFAULT_START_MS})")
    p.add_argument("--interval-ms", type=_non_negative_int, default=_CHAIN_DEFAULT_INTERVAL_MS,
                   metavar="I", help=f"ms between blocks (default {_CHAIN_DEFAULT_INTERVAL_MS})")
    p.add_argument("--commit-every", type=_positive_int, default=1, metavar="C",
                   help="commit only heights h %% C == 0, set-change heights and the last "
                   "block (default 1: every block)")
    p.add_argument("--sign-quorum", action="store_true",
                   help="sign commits with just over 2/3 of the power instead of every "
                   "validator")
    p.add_argument("--power-max", type=_positive_int, default=1, metavar="P",
                   help="1: every validator has power 1 (default); P > 1: seeded powers in "
                   "[1, P]")
    p.add_argument("--issuers", type=_positive_int, default=3, metavar="N",
                   help="issuing-office keys that sign the deposits, each enrolled in block 0 "
                   "(default 3)")
    p.add_argument("--district", action="append", default=[], metavar="NAME",
                   help="a district with its admin key in the trust anchor (repeatable; "
                   f"default {', '.join(_CHAIN_DEFAULT_DISTRICTS)}); issuer i is enrolled in "
                   "district i mod their number")
    p.add_argument("--office", action="append", default=[], metavar="NAME",
                   help="the office of the next issuer (repeatable, at most --issuers; the "
                   "others are office-i)")
    p.add_argument("--force", action="store_true", help="replace an existing DIR/chain.db")
    p.set_defaults(func=_cmd_make_chain)


# Misbehaviours of district-node, equal to hil.district_node.MODES (a test checks): importing
# hil.district_node here would load aiohttp and the crypto backend for every subcommand.
_DISTRICT_MODES = ("forge-commit", "wrong-link", "set-hijack", "equivocate", "bad-proof",
                   "garbage", "oversize", "slow", "withhold")


def _misbehave_parser(modes: tuple[str, ...]) -> Callable[[str], str]:
    """An argparse type for ``MODE[@HEIGHT]`` with MODE one of ``modes``."""

    def parse(text: str) -> str:
        mode, sep, height = text.partition("@")
        if mode not in modes:
            raise argparse.ArgumentTypeError(
                f"{mode!r}: choose one of {', '.join(modes)} (optionally @HEIGHT)")
        if sep and not (height.isascii() and height.isdigit()):
            raise argparse.ArgumentTypeError(f"height {height!r} is not a non-negative integer")
        return text

    return parse


_misbehave_spec = _misbehave_parser(_DISTRICT_MODES)


def _cmd_district_node(args: argparse.Namespace) -> int:
    from hil.district_node import Misbehaviour, run_cli

    return run_cli(args.chain, host=args.host, port=args.port, district=args.district,
                   block_interval_ms=args.block_interval_ms, empty_blocks=args.empty_blocks,
                   misbehave=Misbehaviour.parse(args.misbehave) if args.misbehave else None,
                   peer_key_seed=args.peer_key_seed, advertise=args.advertise,
                   exit_with_parent=args.exit_with_parent)


def _add_district_node(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "district-node", help="TEST FIXTURE: serve a make-chain chain over the ledger "
        "protocol's HTTP API (mDNS, block production, misbehaviours)",
        description="TEST FIXTURE, not a ledger node: serve the chain in DIR (written by "
        "make-chain; its private keys are used to sign blocks and misbehaviours) over the "
        "district-node HTTP API of ledger protocol v1 section 7, bodies canonical CBOR. "
        "Appends a block with the posted transactions every --block-interval-ms. Prints "
        "'ready http://HOST:PORT' on stdout when serving, one line per request on stderr; "
        "stops on SIGTERM/SIGINT (unregistering mDNS). See docs/hil.md.")
    p.add_argument("--chain", required=True, metavar="DIR",
                   help="chain directory from make-chain (opened for writing: blocks are "
                   "appended to it)")
    p.add_argument("--port", required=True, type=_non_negative_int, metavar="P",
                   help="TCP port; 0 picks a free one (printed in the ready line)")
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1)")
    p.add_argument("--advertise", action="store_true",
                   help="announce _gov-ledger._tcp.local. by mDNS on 127.0.0.1 only, TXT "
                   "chain, proto, district, peer")
    p.add_argument("--district", default="hil-district", metavar="NAME",
                   help="district name in /v1/info and mDNS (default hil-district)")
    p.add_argument("--block-interval-ms", type=_non_negative_int, default=1000, metavar="T",
                   help="append pending transactions as a block every T ms (default 1000; "
                   "0 = never produce blocks)")
    p.add_argument("--empty-blocks", action="store_true",
                   help="also append an empty block every interval when nothing is pending")
    p.add_argument("--misbehave", type=_misbehave_spec, default=None, metavar="MODE[@HEIGHT]",
                   help=f"one of {', '.join(_DISTRICT_MODES)}; from HEIGHT on (default: "
                   "from the start); see docs/hil.md for each mode's exact effect")
    p.add_argument("--peer-key-seed", default=None, metavar="S",
                   help="seed of this node's own key, whose SM3 is peer_id (default: "
                   "CHAIN_ID/DISTRICT)")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="stop when the parent process exits (used by hil.district_node."
                   "DistrictNodeProcess)")
    p.set_defaults(func=_cmd_district_node)


# Modes of identity-service, equal to hil.identity_service.MODES (a test checks): importing it
# here would load OpenCV and the crypto backend for every subcommand.
_IDENTITY_MODES = ("honest", "no_match", "timeout", "wrong_key", "down")


def _cmd_identity_service(args: argparse.Namespace) -> int:
    import json

    if args.make_key is not None:
        from hil.identity_service import make_key

        try:
            public_key = make_key(args.make_key)
        except OSError as exc:
            print(f"identity-service: cannot write {args.make_key}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 2
        print(json.dumps({"key_file": args.make_key, "alg": "sm2",
                          "public_key": public_key.hex()}))
        return 0
    if args.key is None or args.port is None:
        print("identity-service: --key FILE and --port P are required (or --make-key FILE)",
              file=sys.stderr)
        return 2
    from hil.identity_service import run_cli

    return run_cli(key_file=args.key, enroll=args.enroll, host=args.host, port=args.port,
                   mode=args.mode, service=args.service, threshold=args.threshold,
                   enrollment=args.enrollment, represent=args.represent,
                   exit_with_parent=args.exit_with_parent)


def _add_identity_service(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "identity-service", help="TEST FIXTURE: the identity-service double (opens capture "
        "envelopes, toy face comparison, signed attestations, ledger-protocol rev 2)",
        description="TEST FIXTURE, not a biometric matcher: serve the identity-service API "
        "(POST /v1/attest, GET /v1/info, POST /hil/mode). Opens the capture envelope with "
        "the --key private key, checks MAC and digest, compares the capture with the "
        "enrolled reference by a toy method (Haar face crop, 64x64 grey, equalised, "
        "normalised cross-correlation) and answers an SM2-signed attestation. Captures stay "
        "in memory. Prints 'ready http://HOST:PORT' when serving; logs on stderr; stops on "
        "SIGTERM/SIGINT. See docs/hil.md.")
    p.add_argument("--make-key", default=None, metavar="FILE",
                   help="write a fresh SM2 private key (64 hex digits, mode 0600) to FILE, "
                   "print its public key as JSON and exit")
    p.add_argument("--key", default=None, metavar="FILE",
                   help="the service's SM2 private key (written by --make-key)")
    p.add_argument("--port", type=_non_negative_int, default=None, metavar="P",
                   help="TCP port; 0 picks a free one (printed in the ready line)")
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1)")
    p.add_argument("--enroll", action="append", default=[], metavar="NAME=IMAGE",
                   help="a citizen by identifier (ASCII; subject = SM3(\"GOVID1:\" || NAME "
                   "upper-cased)) and the reference photo: an image file or "
                   "synthetic:astronaut / synthetic:camera (repeatable)")
    p.add_argument("--represent", action="append", default=[],
                   metavar="SUBJECT_NAME=CREDIT_CODE",
                   help="the registry: SUBJECT_NAME is the legal representative of the "
                   "enterprise CREDIT_CODE, so attestations may carry represents (repeatable)")
    p.add_argument("--enrollment", default=None, metavar="HEX",
                   help="tx_id of the service key's device.enroll (role identity), named in "
                   "every attestation; until set (here or POST /hil/enrollment) /v1/attest "
                   "answers 503 not_enrolled")
    p.add_argument("--mode", choices=_IDENTITY_MODES, default="honest",
                   help="honest (default), no_match, timeout, wrong_key or down; changeable "
                   "at runtime with POST /hil/mode")
    p.add_argument("--service", default="hil-identity", metavar="NAME",
                   help="the service name put in attestations (default hil-identity)")
    p.add_argument("--threshold", type=_non_negative_int, default=600, metavar="T",
                   help="score (0..1000) from which the answer is match (default 600)")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="stop when the parent process exits (used by hil.identity_service."
                   "IdentityServiceProcess)")
    p.set_defaults(func=_cmd_identity_service)


# Misbehaviours of fisco-node, equal to hil.fisco_node.MODES (a test checks).
_FISCO_MODES = ("forge-commit", "wrong-link", "set-hijack", "bad-proof", "swap-receipt",
                "shift-receipt", "empty-forged", "withhold", "garbage", "oversize", "slow")


_fisco_misbehave = _misbehave_parser(_FISCO_MODES)


def _cmd_fisco_node(args: argparse.Namespace) -> int:
    from hil.fisco_node import run_cli

    return run_cli(blocks=args.blocks, sealers=args.sealers, host=args.host, port=args.port,
                   seed=args.seed, misbehave=args.misbehave, sig_cache=args.sig_cache,
                   anchor_out=args.anchor_out, chain_id=args.chain_id, group=args.group,
                   exit_with_parent=args.exit_with_parent)


def _add_fisco_node(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fisco-node", help="TEST FIXTURE: a FISCO BCOS 3.x-shaped JSON-RPC node serving a "
        "generated gm chain (misbehaviours)",
        description="TEST FIXTURE, not a FISCO BCOS node: generate a gm-mode chain of N blocks "
        "sealed by its own SM2 keys (derived from --seed, in the clear) in FISCO 3.x's hash "
        "and proof layout, and serve getBlockNumber, getBlockByNumber, getBlockHashByNumber, "
        "getTransaction and getTransactionReceipt (withProof) and batches over JSON-RPC "
        "(HTTP POST /). Prints 'ready http://HOST:PORT' when serving; one line per request "
        "on stderr; stops on SIGTERM/SIGINT. See docs/hil.md.")
    p.add_argument("--blocks", required=True, type=_positive_int, metavar="N",
                   help="blocks 0 .. N-1 (block 0 is the genesis block)")
    p.add_argument("--sealers", type=_positive_int, default=4, metavar="K",
                   help="sealers, weight 1 each (default 4)")
    p.add_argument("--port", required=True, type=_non_negative_int, metavar="P",
                   help="TCP port; 0 picks a free one (printed in the ready line)")
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1)")
    p.add_argument("--seed", default="0", metavar="S", help="seed of keys and contents")
    p.add_argument("--chain-id", default="chain0", metavar="ID", help="default chain0")
    p.add_argument("--group", default="group0", metavar="G", help="default group0")
    p.add_argument("--misbehave", type=_fisco_misbehave, default=None, metavar="MODE[@H]",
                   help=f"one of {', '.join(_FISCO_MODES)}; from block H on (default 1; 0 "
                   "for garbage, oversize, slow)")
    p.add_argument("--sig-cache", default=None, metavar="FILE",
                   help="keep the sealers' signatures in FILE across runs (signing is slow)")
    p.add_argument("--anchor-out", default=None, metavar="FILE",
                   help="write the trust anchor (genesis hash, sealers) as JSON to FILE")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="stop when the parent process exits (hil.fisco_node.FiscoNodeProcess)")
    p.set_defaults(func=_cmd_fisco_node)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance-hil",
        description="Hardware-in-the-loop rig tools: emulated parts of a service-hall "
        "terminal for tests and benchmarks (not terminal firmware).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_hsm_emulator(sub)
    _add_make_chain(sub)
    _add_district_node(sub)
    _add_identity_service(sub)
    _add_fisco_node(sub)
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
