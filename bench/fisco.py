"""FISCO BCOS 3.x light-node benchmark: blocks per second verified and stored.

Against ``appliance-hil fisco-node`` as a subprocess on loopback (4 SM2 sealers, a bare
quorum of 3 signatures on every block, FISCO's hash and proof layout), on a chain of
``FISCO_BENCH_BLOCKS`` (10 001) blocks:

- **figure**: :class:`FiscoNodeSync` from the genesis anchor to the tip: JSON-RPC batches of
  100 ``getBlockByNumber(n, onlyHeader=true, onlyTxHash=true)``, 2 in flight, every block's
  hash recomputed from its fields, parent links, sealer list, the quorum of each batch's last
  block (SM2), stored in a HeaderStore on disk (``synchronous=FULL``). Wall time.
- **baseline**: how FISCO BCOS's own light node syncs: one ``getBlockByNumber`` request per
  block, sequential on one keep-alive connection, checking only that ``parentInfo`` names the
  ``hash`` field of the block before (no hash recomputed, no signature, nothing stored).
- also: the same sync in strict mode (every block's quorum: 3 SM2 checks per block).

The double's signatures are made before the clock starts (signing is the slow part of the
double, not of the client) and handed to it in a signature cache.
Environment: ``FISCO_BENCH_BLOCKS``. Progress on stderr; everything in a temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
from _common import report  # noqa: E402

from appliance.node.fisco.anchor import decode_anchor  # noqa: E402
from appliance.node.fisco.client import FiscoNodeSync  # noqa: E402
from appliance.node.fisco.sync import FiscoSyncConfig  # noqa: E402
from appliance.node.store import HeaderStore  # noqa: E402
from hil.fisco_node import FiscoChain, FiscoNodeProcess  # noqa: E402

BLOCKS = int(os.environ.get("FISCO_BENCH_BLOCKS", "10001"))
SEED = "bench"


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def ours(url: str, anchor_path: Path, db: Path, strict: bool) -> float:
    store = HeaderStore.open(db)
    try:
        ns = FiscoNodeSync(store, decode_anchor(anchor_path.read_bytes()),
                           FiscoSyncConfig(strict=strict))
        ns.add_peer(url)
        t0 = time.perf_counter()
        result = await ns.run(stall_timeout_s=30)
        elapsed = time.perf_counter() - t0
        if not result.ok or result.height != BLOCKS - 1:
            raise SystemExit(f"bench: the sync did not reach the tip: {result.to_json()}")
        return (BLOCKS - 1) / elapsed
    finally:
        store.close()


async def baseline(url: str) -> float:
    """One request per block, parent-hash checks only (FISCO's light node)."""
    async with aiohttp.ClientSession() as session:
        async def get(n: int) -> dict:
            body = {"jsonrpc": "2.0", "id": n, "method": "getBlockByNumber",
                    "params": ["group0", "", n, True, True]}
            async with session.post(url, json=body) as resp:
                return json.loads(await resp.read())["result"]

        prev = (await get(0))["hash"]
        t0 = time.perf_counter()
        for n in range(1, BLOCKS):
            block = await get(n)
            if block["parentInfo"][0]["blockHash"] != prev:
                raise SystemExit(f"bench: the baseline saw a broken link at {n}")
            prev = block["hash"]
        return (BLOCKS - 1) / (time.perf_counter() - t0)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="fisco-bench-") as tmp:
        d = Path(tmp)
        cache = d / "sigs.bin"
        t0 = time.perf_counter()
        chain = FiscoChain(BLOCKS, 4, seed=SEED, sig_cache=cache)
        for n in range(1, BLOCKS):
            chain.sign(chain.hashes[n], n, chain.keys)
        chain.save_cache()
        progress(f"chain of {BLOCKS} blocks signed in {time.perf_counter() - t0:.1f} s "
                 "(not measured)")
        anchor = d / "anchor.json"
        with FiscoNodeProcess(blocks=BLOCKS, seed=SEED, sig_cache=cache,
                              anchor_out=anchor) as node:
            base = asyncio.run(baseline(node.url))
            progress(f"baseline: {base:.0f} blocks/s")
            fig = asyncio.run(ours(node.url, anchor, d / "a.sqlite", strict=False))
            progress(f"ours: {fig:.0f} blocks/s")
            strict = asyncio.run(ours(node.url, anchor, d / "b.sqlite", strict=True))
            progress(f"ours, strict: {strict:.0f} blocks/s")
    report("fisco sync verified+stored (blocks/s)", fig, "blk/s",
           "1 req/block, parent hash only", base)
    report("fisco sync strict (every quorum)", strict, "blk/s",
           "1 req/block, parent hash only", base)


if __name__ == "__main__":
    main()
