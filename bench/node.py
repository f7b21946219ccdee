"""Light-node benchmark: headers per second verified and stored, the store's size, proofs.

The figures, on a generated chain of 200 000 headers (4 SM2 validators, a set change every
10 000 blocks, a commit every 1000, no transactions):

- **in-process**: the real sync path without HTTP. :class:`~appliance.node.sync.SyncMachine`
  is driven with in-memory answers: each request is answered with the body the district-node
  double serves for it (its own ``/v1/headers`` range code, called without a server), the
  machine decodes and verifies it (skipping mode) and every ``AppendSegment`` goes to a
  :class:`~appliance.node.store.HeaderStore` on disk (default window, ``synchronous=FULL``):
  verified AND stored. The time is the light node's (machine and store); the double's time
  to build the bodies is left out, and printed.
- **end to end**: ``appliance node sync`` as a child process against the district-node double
  as another process on loopback; wall time from spawning the CLI to its exit (interpreter
  start included), and the child's peak RSS (VmHWM, read by bench/_node_sync_child.py, which
  runs the CLI), against the 64 MiB goal and the same child importing the same modules.

Baselines, measured in the same run: strict mode in-process (a commit on every block, every
commit checked) on a 5000-block chain with quorum-signed commits; the same with the SM2
signatures checked by gmssl instead of appliance.gm; and one request per block
(``/v1/headers?from=h&count=1``, sequential on one keep-alive connection, parent-hash checks
only, nothing stored: how FISCO BCOS's own light node syncs) from the same double.
Goals (the issue): >= 100 000 headers/s in-process, >= 50 000 end to end, RSS under 64 MiB.

Also: the store's bytes per header and its projected size after a year at one block a
second; ``verify_inclusion`` on a 4096-transaction block against computing its Merkle root.

The end-to-end part also prints the CPU time the CLI process and the double each spent, per
header: the double splices the header bytes it stored into its answers (about 2.5 µs a header),
so the end-to-end figure measures the light node, on two cores shared with the double.

Environment: ``BENCH_SECONDS`` (2) for the timing loops and the gmssl budget (5x);
``NODE_BENCH_BLOCKS`` (200000) for quick runs (``--quick`` is 20000), which also scales the
smaller chains unless ``NODE_BENCH_STRICT_BLOCKS`` (5000) and ``NODE_BENCH_NAIVE_BLOCKS``
(2000) are given. The goals are about the full run.
Progress goes to stderr. Everything is generated in a temporary directory, removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import aiohttp  # noqa: E402
from _common import rate, report  # noqa: E402
from gmssl import sm2 as gmssl_sm2  # noqa: E402

from appliance import wire  # noqa: E402
from appliance.node import merkle, signatures, sync, verify  # noqa: E402
from appliance.node.client import load_machine  # noqa: E402
from appliance.node.model import decode_trust_anchor  # noqa: E402
from appliance.node.store import (  # noqa: E402
    DEFAULT_CHECKPOINT_EVERY,
    DEFAULT_WINDOW,
    JOURNAL_SIZE_LIMIT,
    HeaderStore,
)
from hil import district_node as dn  # noqa: E402
from hil.chain import Chain, ChainParams, derive_key, generate, sign  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))
if "--quick" in sys.argv[1:]:
    os.environ.setdefault("NODE_BENCH_BLOCKS", "20000")
BLOCKS = int(os.environ.get("NODE_BENCH_BLOCKS", "200000"))
STRICT_BLOCKS = int(os.environ.get("NODE_BENCH_STRICT_BLOCKS",
                                   str(min(5000, max(200, BLOCKS // 40)))))
NAIVE_BLOCKS = int(os.environ.get("NODE_BENCH_NAIVE_BLOCKS", str(min(2000, BLOCKS))))
VALIDATORS = 4
SET_CHANGE_EVERY = 10_000
COMMIT_EVERY = 1000
PROOF_TXS = 4096
GOAL_IN_PROCESS = 100_000  # headers/s
GOAL_E2E = 50_000  # headers/s
GOAL_RSS_MIB = 64.0
GOAL_STORE_MIB = 64.0
YEAR_S = 365 * 86_400  # one block a second
MIB = 1024 * 1024
PEER = "http://district.invalid"  # the in-process "peer": never resolved, never connected


def progress(msg: str) -> None:
    print(f"bench/node: {msg}", file=sys.stderr, flush=True)


def report_at_most(name: str, value: float, unit: str, baseline: str, base: float,
                   goal: float | None = None) -> None:
    """:func:`_common.report` for figures where lower is better (goal: ratio <= goal)."""
    ratio = value / base if base else float("inf")
    # A small ratio reads better as a fraction: "1/790x" rather than "0.00x".
    shown = "%6.2fx" % ratio if ratio >= 0.1 else "1/%.0fx" % (1 / ratio) if ratio else "0x"
    line = "%-38s %12.1f %-6s vs %-34s %12.1f  = %s" % (name, value, unit, baseline, base,
                                                       shown)
    if goal is not None:
        line += "  (goal <= %gx: %s)" % (goal, "met" if ratio <= goal else "NOT met")
    print(line, flush=True)


# --- the district-node double's answers, without a server -----------------------------------


class _Query:
    def __init__(self, qs: str) -> None:
        self._d = urllib.parse.parse_qs(qs, keep_blank_values=True)

    def getall(self, key: str, default: list[str]) -> list[str]:
        return self._d.get(key, default)


class _FakeRequest:
    """What the double's endpoint handlers read of an aiohttp request."""

    def __init__(self, qs: str, match_info: dict[str, str] | None = None) -> None:
        self.query = _Query(qs)
        self.match_info = match_info or {}


def _run(coro: Any) -> Any:
    """Run a coroutine that never suspends (the double's GET handlers) to its result."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a district-node handler suspended; cannot answer in-process")


class InProcessDouble:
    """Answers a :class:`~appliance.node.sync.Request` as the district-node double would:
    its own handlers (range rules, commits, validator_sets) and body encoding, no HTTP."""

    def __init__(self, chain_dir: Path) -> None:
        self.node = dn.DistrictNode(chain_dir, block_interval_ms=0, log=lambda line: None)

    def answer(self, req: sync.Request) -> tuple[int, bytes]:
        path, _, qs = req.path.partition("?")
        node = self.node
        try:
            if path == "/v1/info":
                reply = _run(node._info(_FakeRequest(qs)))
            elif path == "/v1/headers":
                reply = _run(node._headers(_FakeRequest(qs)))
            elif path.startswith("/v1/commits/"):
                reply = _run(node._commit(_FakeRequest(qs, {"height": path.rsplit("/", 1)[1]})))
            else:
                raise RuntimeError(f"the benchmark does not answer {req.path}")
        except dn._ApiError as exc:
            return exc.status, wire.encode({"error": exc.code, "message": exc.message})
        return reply.status, reply.body

    def close(self) -> None:
        self.node.chain.close()


# --- in-process sync: SyncMachine + HeaderStore, answers from the double --------------------


@dataclasses.dataclass
class InProcess:
    headers: int  # verified and stored, the anchor's included
    client_s: float  # machine + store (what the figure measures)
    server_s: float  # the double building the bodies (left out of the figure)
    requests: int
    stages: dict[str, float]  # decode_headers / verify_segment / store.append, seconds

    @property
    def rate(self) -> float:
        return self.headers / self.client_s


@contextlib.contextmanager
def _stage_timers(store: HeaderStore) -> Iterator[dict[str, float]]:
    """Time the three big stages inside the machine and the store (a few hundred calls each:
    the wrappers cost microseconds)."""
    stages = {"decode_headers": 0.0, "verify_segment": 0.0, "store.append": 0.0}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                stages[name] += time.perf_counter() - t
        return wrapper

    saved = (sync.decode_headers, verify.verify_segment)
    sync.decode_headers = timed("decode_headers", sync.decode_headers)
    verify.verify_segment = timed("verify_segment", verify.verify_segment)
    store.append = timed("store.append", store.append)  # type: ignore[method-assign]
    try:
        yield stages
    finally:
        sync.decode_headers, verify.verify_segment = saved
        del store.append


def sync_in_process(chain_dir: Path, store_path: Path, config: sync.SyncConfig,
                    what: str) -> tuple[InProcess, HeaderStore]:
    """Sync ``chain_dir`` into a new store at ``store_path``; the store is returned open."""
    double = InProcessDouble(chain_dir)
    anchor_bytes = double.node.chain.trust_anchor()
    anchor = decode_trust_anchor(anchor_bytes)
    store = HeaderStore.open(store_path)
    machine = load_machine(store, anchor, anchor_bytes, config)
    machine.add_peer(PEER)
    answers: deque[tuple[int, int, bytes]] = deque()
    client = server = 0.0
    requests = 0
    reached = False
    last_report = time.monotonic()

    def apply(events: list[sync.Event]) -> None:
        nonlocal reached
        for ev in events:
            if isinstance(ev, sync.AppendSegment):
                store.append([(h.height, h.block_id, h.encoded) for h in ev.headers],
                             ev.next_set_hash, [(s.hash, s.encoded) for s in ev.sets])
            elif isinstance(ev, sync.Initialize):
                h = ev.header
                store.initialize(anchor.chain_id, anchor_bytes, h.height, h.block_id, h.encoded,
                                 ev.next_set.hash, [(s.hash, s.encoded) for s in ev.sets])
            elif isinstance(ev, sync.TipReached):
                reached = True
            elif isinstance(ev, sync.BanPeer):
                raise RuntimeError(f"{what}: the machine banned the double: {ev}")

    try:
        with _stage_timers(store) as stages:
            while not reached:
                t0 = time.perf_counter()
                reqs = machine.requests(int(time.time() * 1000))
                apply(machine.events())
                t1 = time.perf_counter()
                for req in reqs:
                    answers.append((req.id, *double.answer(req)))
                t2 = time.perf_counter()
                client += t1 - t0
                server += t2 - t1
                requests += len(reqs)
                if not answers and not reached:
                    raise RuntimeError(f"{what}: stuck: {machine.status()}")
                t0 = time.perf_counter()
                while answers and not reached:
                    rid, status, body = answers.popleft()
                    apply(machine.receive(rid, status, body, int(time.time() * 1000)))
                client += time.perf_counter() - t0
                if time.monotonic() - last_report >= 2.0:
                    last_report = time.monotonic()
                    progress(f"{what}: {machine.verified_height + 1} headers verified")
    finally:
        double.close()
    stored = store.tip().height - store.anchor_height + 1
    return InProcess(stored, client, server, requests, stages), store


# --- gmssl in place of appliance.gm for the commit signatures -------------------------------


def gmssl_safe(public_key: bytes) -> bool:
    """gmssl's CryptSM2 strips a leading "04" from the key hex with str.lstrip, which eats the
    X coordinate's first digits when its 128-hex form starts with "04" (docs/decisions.md)."""
    return not public_key[1:].hex().startswith("04")


@contextlib.contextmanager
def gmssl_signatures() -> Iterator[list[int]]:
    """appliance.node.signatures.verify checks SM2 with gmssl (one CryptSM2 per key, reused:
    the key import is not what is measured). Yields [calls]."""
    original = signatures.verify
    cache: dict[bytes, Any] = {}
    calls = [0]

    def verify_with_gmssl(alg: object, public_key: object, message: bytes,
                          signature: object) -> bool:
        if alg != "sm2" or type(public_key) is not bytes or type(signature) is not bytes:
            return original(alg, public_key, message, signature)
        c = cache.get(public_key)
        if c is None:
            if not gmssl_safe(public_key):
                raise RuntimeError("a validator key that gmssl mangles; pick another seed")
            c = cache[public_key] = gmssl_sm2.CryptSM2(private_key=None,
                                                       public_key=public_key[1:].hex())
        calls[0] += 1
        return c.verify_with_sm3(signature.hex(), message) is True

    signatures.verify = verify_with_gmssl
    try:
        yield calls
    finally:
        signatures.verify = original


def gmssl_safe_seed(blocks: int) -> str:
    """A chain seed whose validator keys (all sets up to ``blocks``) gmssl takes as they are."""
    keys = VALIDATORS + blocks // SET_CHANGE_EVERY
    for i in range(1000):
        seed = f"bench-node-strict-{i}"
        if all(gmssl_safe(derive_key(seed, "validator", k, "sm2").public_key)
               for k in range(keys)):
            return seed
    raise RuntimeError("no gmssl-safe seed found")


def gmssl_verify_seconds() -> float:
    """Seconds per gmssl SM2 verify (to size the gmssl baseline to the time budget)."""
    key = derive_key("bench-node-probe", "validator", 0, "sm2")
    while not gmssl_safe(key.public_key):
        key = derive_key("bench-node-probe", "validator", key.index + 1, "sm2")
    message = b"x" * 100
    sig = sign(key, message).hex()
    c = gmssl_sm2.CryptSM2(private_key=None, public_key=key.public_key[1:].hex())
    return 1.0 / rate(lambda: c.verify_with_sm3(sig, message), min(1.0, SECONDS))


# --- end to end: the CLI against the double, both as processes -------------------------------


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}


CHILD = Path(__file__).with_name("_node_sync_child.py")


def run_child(args: list[str], tmp: Path, name: str) -> tuple[int, float, float]:
    """``appliance ARGS`` (or ``--imports-only``) in a child via bench/_node_sync_child.py;
    (exit status, wall seconds from spawn to exit, the child's peak RSS in MiB)."""
    rss_file = tmp / f"{name}.rss"
    with open(tmp / f"{name}.out", "wb") as o, open(tmp / f"{name}.err", "wb") as e:
        t = time.perf_counter()
        status = subprocess.run([sys.executable, str(CHILD), str(rss_file), *args],
                                stdin=subprocess.DEVNULL, stdout=o, stderr=e, env=_child_env(),
                                timeout=600).returncode
        wall = time.perf_counter() - t
    try:
        rss = int(rss_file.read_text()) / 1024  # VmHWM, kB
    except (OSError, ValueError):
        rss = float("nan")
    return status, wall, rss


@dataclasses.dataclass
class EndToEnd:
    headers: int
    wall_s: float  # CLI spawn to exit
    sync_s: float  # the CLI's own elapsed_s (NodeSync.run)
    rss_mib: float
    client_cpu_s: float = math.nan  # the CLI process, user + system, interpreter start included
    server_cpu_s: float = math.nan  # the district-node double, during the same run


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (/proc/PID/stat, utime and stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of the waited-for children of this process so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def sync_end_to_end(url: str, trust: Path, state: Path, tip: int, tmp: Path) -> EndToEnd:
    args = ["node", "sync", "--trust", str(trust), "--peer", url, "--state", str(state),
            "--log-level", "warning"]
    status, wall, rss = run_child(args, tmp, "sync")
    text = (tmp / "sync.out").read_text()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = {}
    if status != 0 or not doc.get("ok") or doc.get("height") != tip or math.isnan(rss):
        raise RuntimeError(f"appliance node sync failed (exit {status}): {text[-2000:]}\n"
                           f"{(tmp / 'sync.err').read_text()[-4000:]}")
    return EndToEnd(tip + 1, wall, float(doc["elapsed_s"]), rss)


def imports_rss(tmp: Path) -> float:
    """Peak RSS (MiB) of the same child importing what the sync CLI imports, then exiting."""
    status, _, rss = run_child(["--imports-only"], tmp, "imports")
    if status != 0 or math.isnan(rss):
        raise RuntimeError(f"import baseline failed: {(tmp / 'imports.err').read_text()}")
    return rss


async def _one_request_per_block(url: str, count: int) -> float:
    """Headers/s fetching ``/v1/headers?from=h&count=1`` for h = 0..count-1 one after the
    other on one keep-alive connection, checking only each header's link to its parent."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        prev = None
        start = time.perf_counter()
        for h in range(count):
            async with session.get(f"{url}/v1/headers?from={h}&count=1") as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"/v1/headers?from={h}: HTTP {resp.status}")
            header = sync.decode_headers(body).headers[0]
            if header.height != h or (prev is not None and header.prev_hash != prev.block_id):
                raise RuntimeError(f"one-request-per-block: header {h} does not link")
            prev = header
        return count / (time.perf_counter() - start)


# --- the store's size -------------------------------------------------------------------------


def checkpoint_row_bytes(tmp: Path, count: int) -> float:
    """Bytes a checkpoint costs on disk: the same ``count`` appends to two stores with a
    one-header window, one with a checkpoint at every height and one with none (but the
    anchor's), compared after the WAL is folded in."""
    sizes = []
    for every in (1, 2**62):
        path = tmp / f"checkpoints-{every}.sqlite"
        with HeaderStore.open(path, window=1, checkpoint_every=every) as st:
            st.initialize("bench", b"anchor", 0, bytes(32), b"h" * 257, bytes(32))
            for first in range(1, count + 1, 1000):
                rows = [(h, hashlib.sha256(h.to_bytes(8, "big")).digest(), b"h" * 257)
                        for h in range(first, min(first + 1000, count + 1))]
                st.append(rows, bytes(32))
            st.checkpoint_wal()
            sizes.append(st.stats()["db_bytes"])
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    return (sizes[0] - sizes[1]) / count


# --- proofs ----------------------------------------------------------------------------------


def proof_figures() -> tuple[float, float]:
    """(µs per verify_inclusion, µs per merkle.root) for a block of PROOF_TXS random tx_ids."""
    rng = random.Random(4096)
    leaves = [rng.randbytes(32) for _ in range(PROOF_TXS)]
    root = merkle.root(leaves)
    cases = [(i, merkle.inclusion_proof(leaves, i)) for i in
             (0, 1, PROOF_TXS // 2 - 1, PROOF_TXS - 1, *rng.sample(range(PROOF_TXS), 4))]
    for i, path in cases:
        assert merkle.verify_inclusion(leaves[i], i, PROOF_TXS, path, root)
    n = len(cases)

    def verify_all() -> None:
        for i, path in cases:
            merkle.verify_inclusion(leaves[i], i, PROOF_TXS, path, root)

    per_proof = 1e6 / (rate(verify_all, SECONDS) * n)
    per_root = 1e6 / rate(lambda: merkle.root(leaves), SECONDS)
    return per_proof, per_root


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp_name:
        run(Path(tmp_name))


def run(tmp: Path) -> None:
    started = time.perf_counter()
    sparse_dir, strict_dir = tmp / "chain", tmp / "strict-chain"
    progress(f"generating {BLOCKS} blocks ({VALIDATORS} validators, a set change every "
             f"{SET_CHANGE_EVERY}, a commit every {COMMIT_EVERY})")
    generate(sparse_dir, ChainParams(seed="bench-node", validators=VALIDATORS,
                                     set_change_every=SET_CHANGE_EVERY,
                                     commit_every=COMMIT_EVERY), BLOCKS, progress=progress)
    seed = gmssl_safe_seed(STRICT_BLOCKS)
    progress(f"generating the strict chain: {STRICT_BLOCKS} blocks, a quorum-signed commit on "
             "every block (seed chosen so that gmssl takes the validator keys)")
    generate(strict_dir, ChainParams(seed=seed, validators=VALIDATORS,
                                     set_change_every=SET_CHANGE_EVERY, commit_every=1,
                                     sign_quorum=True), STRICT_BLOCKS, progress=progress)
    with Chain.open(sparse_dir, readonly=True) as c:
        tip = c.tip_height

    # In-process: the figure, then strict mode, then strict mode with gmssl.
    progress("in-process sync (SyncMachine + HeaderStore, skipping mode)")
    fast, store = sync_in_process(sparse_dir, tmp / "inproc.sqlite", sync.SyncConfig(),
                                  "in-process")
    try:
        stats_after_sync = store.stats()
        lo = store.window_start()
        raw_header = sum(len(r[2]) for r in store.headers(lo, lo + 999)) / \
            len(store.headers(lo, lo + 999))
        store.checkpoint_wal()
        stats_folded = store.stats()
    finally:
        store.close()
    progress(f"in-process: {fast.headers} headers in {fast.client_s:.2f} s "
             f"(+{fast.server_s:.2f} s in the double)")

    progress("strict mode in-process")
    strict, st = sync_in_process(strict_dir, tmp / "strict.sqlite", sync.SyncConfig(strict=True),
                                 "strict")
    st.close()
    t_gmssl = gmssl_verify_seconds()
    sigs_per_header = math.floor(2 * VALIDATORS / 3) + 1  # a quorum-signed commit
    budget = 5 * SECONDS
    gm_until = max(20, min(STRICT_BLOCKS - 1, int(budget / (t_gmssl * sigs_per_header))))
    progress(f"strict mode with gmssl ({t_gmssl * 1e3:.1f} ms a verify): headers 0..{gm_until}")
    with gmssl_signatures() as calls:
        gm, st = sync_in_process(strict_dir, tmp / "gmssl.sqlite",
                                 sync.SyncConfig(strict=True, until_height=gm_until), "gmssl")
    st.close()
    if calls[0] < gm_until:
        raise RuntimeError(f"gmssl checked {calls[0]} signatures for {gm_until} headers")

    # End to end, and one request per block, from one double as a process.
    progress("end to end: appliance node sync <- district-node double, loopback")
    base_rss = imports_rss(tmp)
    with dn.DistrictNodeProcess(sparse_dir, block_interval_ms=0,
                                log_path=tmp / "district-node.log") as node:
        server0, client0 = process_cpu_s(node.proc.pid), children_cpu_s()
        e2e = sync_end_to_end(node.url, sparse_dir / "trust.cbor", tmp / "state", tip, tmp)
        e2e.server_cpu_s = process_cpu_s(node.proc.pid) - server0
        e2e.client_cpu_s = children_cpu_s() - client0
        progress(f"end to end: {e2e.headers} headers in {e2e.wall_s:.2f} s, "
                 f"max RSS {e2e.rss_mib:.1f} MiB")
        progress(f"one request per block: {NAIVE_BLOCKS} headers")
        naive = asyncio.run(_one_request_per_block(node.url, NAIVE_BLOCKS))

    # Store size. After a year at one block a second the window (DEFAULT_WINDOW headers) has
    # long been full: pruned pages are reused, so the database is the window's headers as
    # measured here (db bytes with the WAL folded in, minus the checkpoints it holds) plus one
    # checkpoint row per DEFAULT_CHECKPOINT_EVERY heights of the year, plus the WAL, which
    # SQLite truncates back to JOURNAL_SIZE_LIMIT after each automatic checkpoint:
    #   year = W * b_header + (YEAR_S / 1024) * b_checkpoint + JOURNAL_SIZE_LIMIT
    # with W = min(window, headers held), b_header = (db - checkpoints * b_checkpoint) / held
    # and b_checkpoint measured on its own (checkpoint_row_bytes). Once the window is full
    # the file grows by the checkpoints only: (YEAR_S / 1024) * b_checkpoint a year.
    progress("store: cost of a checkpoint row")
    year_checkpoints = math.ceil(YEAR_S / DEFAULT_CHECKPOINT_EVERY)
    b_checkpoint = checkpoint_row_bytes(tmp, year_checkpoints)
    held = int(stats_folded["headers"])
    b_header = (stats_folded["db_bytes"] - stats_folded["checkpoints"] * b_checkpoint) / held
    window_bytes = min(DEFAULT_WINDOW, YEAR_S) * b_header
    year_bytes = window_bytes + year_checkpoints * b_checkpoint + JOURNAL_SIZE_LIMIT
    growth_bytes = year_checkpoints * b_checkpoint
    all_kept = YEAR_S * b_header + JOURNAL_SIZE_LIMIT

    progress("proofs")
    us_proof, us_root = proof_figures()

    # -- the figures ---------------------------------------------------------------------
    print(f"# chain: {BLOCKS} headers, "
          f"{VALIDATORS} sm2 validators, a set change every {SET_CHANGE_EVERY}, a commit every "
          f"{COMMIT_EVERY}; strict chain: {STRICT_BLOCKS} headers with a quorum-signed commit "
          "each", flush=True)
    print(f"# in-process: {fast.headers} headers verified and stored in {fast.client_s:.2f} s "
          f"of light-node time ({fast.requests} requests; the double took {fast.server_s:.2f} "
          f"s more to build the bodies, not counted)", flush=True)
    print(f"# end to end: {e2e.headers} headers in {e2e.wall_s:.2f} s from CLI spawn to exit "
          f"({e2e.sync_s:.2f} s in the sync loop, elapsed_s)", flush=True)
    baselines = [
        ("strict mode, in-process", strict.rate),
        ("strict mode, gmssl verifying", gm.rate),
        ("1 request/block, loopback", naive),
    ]
    for name, base in baselines:
        report("in-process headers/s (skipping)", fast.rate, "hdr/s", name, base)
    report("in-process headers/s (skipping)", fast.rate, "hdr/s", "goal: 100 000 headers/s",
           GOAL_IN_PROCESS, goal=1)
    e2e_rate = e2e.headers / e2e.wall_s
    for name, base in baselines:
        report("end-to-end headers/s (CLI wall)", e2e_rate, "hdr/s", name, base)
    report("end-to-end headers/s (CLI wall)", e2e_rate, "hdr/s", "goal: 50 000 headers/s",
           GOAL_E2E, goal=1)
    report("end-to-end headers/s (sync loop)", e2e.headers / e2e.sync_s, "hdr/s",
           "goal: 50 000 headers/s", GOAL_E2E, goal=1)
    # Who the end-to-end figure waits for: the CPU each process spent on it, per header. The
    # double answering at 1e6 / server us a header is a ceiling the light node cannot pass.
    report_at_most("end-to-end: light-node CPU/header", 1e6 * e2e.client_cpu_s / e2e.headers,
                   "us", "district-node double CPU/header", 1e6 * e2e.server_cpu_s / e2e.headers)
    report("strict mode headers/s, in-process", strict.rate, "hdr/s",
           "strict mode, gmssl verifying", gm.rate)
    for label, r in (("in-process", fast), ("strict", strict)):
        for stage, seconds in r.stages.items():
            report_at_most(f"{label}: {stage} (s)", seconds, "s", f"{label} light-node time",
                           r.client_s)
    report_at_most("end-to-end sync max RSS", e2e.rss_mib, "MiB", "goal: under 64 MiB",
                   GOAL_RSS_MIB, goal=1)
    report_at_most("end-to-end sync max RSS", e2e.rss_mib, "MiB", "same imports, no sync",
                   base_rss)
    report_at_most("store bytes/header (stats())", stats_after_sync["bytes_per_header"], "B",
                   "header CBOR bytes", raw_header)
    report_at_most("store MiB after a year (1 block/s)", year_bytes / MIB, "MiB",
                   "goal: at most 64 MiB", GOAL_STORE_MIB, goal=1)
    report_at_most("store MiB after a year (1 block/s)", year_bytes / MIB, "MiB",
                   "every header kept (no window)", all_kept / MIB)
    report_at_most("store growth MiB/year, window full", growth_bytes / MIB, "MiB/yr",
                   "the window's headers, MiB", window_bytes / MIB)
    report_at_most("verify_inclusion, 4096-tx block", us_proof, "us",
                   "merkle.root of the block", us_root)
    progress(f"store: {stats_after_sync['headers']} headers held, "
             f"{stats_after_sync['file_bytes']} bytes with the WAL; b_header {b_header:.1f} B, "
             f"b_checkpoint {b_checkpoint:.1f} B")
    progress(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
