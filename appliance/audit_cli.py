"""``appliance audit ...``: verify, read and repair the audit log (appliance.audit).

Every call prints one JSON object on stdout; errors are one line on stderr.

``appliance audit verify [--log DIR | --state DIR] [--public-key HEX]
[--require-checkpoints] [--node URL ...]`` checks the whole chain and its checkpoints (their
signatures against the device public key: ``--public-key``, else the key file the log keeps,
which only guards against accidents) and says how many entries after the last checkpoint are
not yet anchored. ``--node`` (checking the heads anchored on chain) is not yet available.
Exit status: 0 it verifies; 1 it does not (``error``, ``index``, ``segment``, ``line`` say
where); 2 bad usage, no log there, or ``--node``; 3 only a torn tail (a crash mid-write:
``appliance audit repair``).

``appliance audit tail [-n N]`` prints the last N entries (default 20) and the head hash.

``appliance audit repair --operator NAME`` truncates a torn tail and logs ``repaired`` (with the
byte count and the SM3 of the bytes cut, never the bytes);
exit 0 (also when there was nothing to repair), 1 when the log fails for another reason
(repair never rewrites entries).

The log is DIR/audit/ of the state directory (``--state``, ``$APPLIANCE_STATE``,
``/var/lib/appliance``), or the directory given with ``--log``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .audit import AnchorLookup

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TORN, EXIT_INTERNAL = 0, 1, 2, 3, 4
DEFAULT_STATE = "/var/lib/appliance"
AUDIT_DIR = "audit"


def audit_dir(log: str | None, state: str | None) -> Path:
    if log:
        return Path(log)
    return Path(state or os.environ.get("APPLIANCE_STATE") or DEFAULT_STATE) / AUDIT_DIR


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="the SM3-chained audit log: verify, tail, repair",
                       description="The append-only audit log (logins, key use, "
                       "authorizations, alarms). See docs/audit.md.")
    cmds = p.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    v = cmds.add_parser("verify", help="check the whole chain and its checkpoints",
                        description="Verify every entry's SM3 hash and link, and the "
                        "checkpoints signed with the device key. Exit 0 when it verifies, 1 "
                        "when it does not, 3 when only a torn tail (crash mid-write) is found.")
    v.add_argument("--public-key", action="append", default=[], metavar="HEX",
                   help="the device's SM2 public key (65 bytes, hex), from its enrollment; "
                   "repeat for each key the device had; default: the copy the log keeps "
                   "(docs/audit.md)")
    v.add_argument("--require-checkpoints", action="store_true",
                   help="fail when the log has no checkpoint or no key to check them")
    v.add_argument("--node", action="append", default=[], metavar="URL",
                   help="check the heads anchored on chain through these district nodes "
                   "(a light node of its own, synced from the trust anchor: never the "
                   "daemon's store)")
    v.add_argument("--trust", metavar="FILE",
                   help="the trust anchor for --node (default: STATE/trust.cbor)")
    v.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="for --node: how long to wait for the chain (default 60)")
    _where(v)
    v.set_defaults(func=run_verify)
    t = cmds.add_parser("tail", help="the newest entries and the head hash")
    t.add_argument("-n", type=_count, default=20, metavar="N",
                   help="how many entries (default 20)")
    _where(t)
    t.set_defaults(func=run_tail)
    r = cmds.add_parser("repair", help="truncate a torn tail after a crash",
                        description="Truncate only the partial entry a crash left at the end "
                        "of the newest segment, and log a 'repaired' entry. Refuses when the "
                        "log fails for any other reason.")
    r.add_argument("--operator", required=True, metavar="NAME",
                   help="who repairs (recorded in the log)")
    _where(r)
    r.set_defaults(func=run_repair)


def _where(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--log", default=None, metavar="DIR", help="the audit log directory")
    g.add_argument("--state", default=None, metavar="DIR",
                   help="state directory (the log is DIR/audit)")


def _count(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError("N must be 1..100000")
    return value


def _out(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


def _fail(code: int, error: str, message: str, **extra: Any) -> int:
    print(f"appliance audit: {message}", file=sys.stderr, flush=True)
    _out({"ok": False, "error": error, "message": message, **extra})
    return code


def _existing(args: argparse.Namespace) -> Path | int:
    directory = audit_dir(args.log, args.state)
    if not directory.is_dir():
        return _fail(EXIT_USAGE, "no_log", f"no audit log in {directory}")
    return directory


def chain_lookup(nodes: list[str], log: Path, anchor: bytes, *, timeout_s: float = 60.0
                 ) -> AnchorLookup:
    """How ``--node`` looks up the log's anchored heads on chain: a light node of its own (a
    temporary header store synced from ``anchor``, so a running daemon's store is never
    touched) asks ``nodes`` for the ``audit.head`` deposits of every digest the log's
    ``anchored`` entries name, each verified with its proof (``lookup_detailed``) and by the
    §6 rules (an enrolled terminal deposited it). Raises what the light node raises."""
    from .audit import tail

    digests = {bytes.fromhex(e.fields["digest"]) for e in tail(log, 10**9)
               if e.kind == "anchored" and isinstance(e.fields.get("digest"), str)}
    found = asyncio.run(_heads_on_chain(nodes, digests, anchor, timeout_s))
    return lambda digest: found.get(bytes(digest), [])


async def _heads_on_chain(nodes: list[str], digests: set[bytes], anchor: bytes,
                          timeout_s: float) -> dict[bytes, list[tuple[bytes, int, int]]]:
    import tempfile

    from .node import rules
    from .node.client import NodeSync
    from .node.references import References
    from .node.store import HeaderStore

    found: dict[bytes, list[tuple[bytes, int, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="appliance-audit-") as tmp:
        store = HeaderStore.open(Path(tmp) / "headers.sqlite")
        try:
            node = NodeSync(store, anchor)
            for url in nodes:
                node.add_peer(url)
            stop = asyncio.Event()
            task = asyncio.create_task(node.run(stop_at_tip=False, stall_timeout_s=None,
                                                stop=stop))
            try:
                refs = References(node)
                for digest in sorted(digests):
                    result = await node.lookup_detailed(digest, timeout_s=timeout_s)
                    heads = []
                    for inc in result.hits:
                        refs.add(rules.Ref(inc.tx, inc.height, inc.time_ms))
                        lookup = await refs.resolve(inc.tx, timeout_s=timeout_s)
                        try:
                            dep = rules.check_tx(inc.tx, lookup, node.anchor.admins,
                                                 at=inc.time_ms)
                        except rules.RuleError:
                            continue  # not a valid deposit: not an anchor
                        if getattr(dep, "kind", None) == "audit.head":
                            heads.append((inc.tx_id, inc.height, inc.time_ms))
                    found[digest] = heads
            finally:
                stop.set()
                await task
        finally:
            store.close()
    return found


def _public_keys(args: argparse.Namespace,
                 directory: Path) -> tuple[list[bytes] | None, str | None]:
    """(keys, where from); ValueError for a key that is not an SM2 public key."""
    from .audit import KEY_FILE, read_key_file
    from .gm import sm2

    if args.public_key:
        try:
            keys, source = [bytes.fromhex(k) for k in args.public_key], "given"
        except ValueError:
            raise ValueError("--public-key: not hex") from None
    else:
        key, source = read_key_file(directory), "log_file"
        if key is None:
            return None, None
        keys = [key]
    for key in keys:
        try:
            sm2.za(key)  # checks it is a point on the curve
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{'--public-key' if source == 'given' else KEY_FILE}: not an "
                             f"SM2 public key ({exc})") from None
    return keys, source


def run_verify(args: argparse.Namespace) -> int:
    from .audit import verify

    directory = _existing(args)
    if isinstance(directory, int):
        return directory
    lookup = None
    if args.node:
        trust = Path(args.trust) if args.trust else \
            Path(args.state or os.environ.get("APPLIANCE_STATE") or DEFAULT_STATE) / \
            "trust.cbor"
        try:
            anchor = trust.read_bytes()
        except OSError as exc:
            return _fail(EXIT_USAGE, "no_trust", f"cannot read the trust anchor {trust}: "
                         f"{exc.strerror or exc} (give --trust FILE)")
        try:
            lookup = chain_lookup(args.node, directory, anchor, timeout_s=args.timeout)
        except Exception as exc:  # the chain could not be asked: say so, no stack trace
            return _fail(EXIT_USAGE, "unavailable", "the anchored heads could not be checked "
                         f"on chain: {type(exc).__name__}: {exc}")
    try:
        keys, source = _public_keys(args, directory)
    except ValueError as exc:
        return _fail(EXIT_USAGE, "bad_key", str(exc))
    try:
        report = verify(directory, public_key=keys,
                        require_checkpoints=args.require_checkpoints, lookup=lookup)
    except Exception as exc:  # a bug or the lookup: say what, no stack trace
        return _fail(EXIT_INTERNAL, "internal", f"internal error: {type(exc).__name__}: {exc}")
    if source == "log_file":
        report.notes.append("the public key was read from the log's own copy: against "
                            "someone who can write the files, give --public-key from the "
                            "device's enrollment")
    doc = {"log": str(directory), "public_key_source": source, **report.to_json()}
    for note in report.notes:
        print(f"appliance audit: note: {note}", file=sys.stderr, flush=True)
    if report.ok:
        _out(doc)
        return EXIT_OK
    where = f" at index {report.index}" if report.index is not None else ""
    print(f"appliance audit: {report.error}{where} ({report.segment}"
          f"{'' if report.line is None else f' line {report.line}'}): {report.detail}",
          file=sys.stderr, flush=True)
    _out(doc)
    return EXIT_TORN if report.error == "torn_tail" else EXIT_FAILED


def run_tail(args: argparse.Namespace) -> int:
    from .audit import tail

    directory = _existing(args)
    if isinstance(directory, int):
        return directory
    try:
        entries = tail(directory, args.n)
    except OSError as exc:
        return _fail(EXIT_USAGE, "io", f"cannot read {directory}: {exc.strerror or exc}")
    _out({"ok": True, "log": str(directory), "entries": [e.to_json() for e in entries],
          "head": entries[-1].hash.hex() if entries else None,
          "head_seq": entries[-1].seq if entries else None})
    return EXIT_OK


def run_repair(args: argparse.Namespace) -> int:
    from .audit import AuditError, repair

    directory = _existing(args)
    if isinstance(directory, int):
        return directory
    try:
        result = repair(directory, operator=args.operator)
    except AuditError as exc:
        return _fail(EXIT_FAILED, exc.code, str(exc))
    except OSError as exc:
        return _fail(EXIT_FAILED, "io", f"cannot repair {directory}: {exc.strerror or exc}")
    _out({"ok": True, "log": str(directory), "repaired": result.repaired,
          "truncated_bytes": result.truncated_bytes, "truncated_sm3": result.truncated_sm3,
          "segment": result.segment,
          "entry": result.entry.to_json() if result.entry else None})
    return EXIT_OK
