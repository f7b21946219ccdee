"""A header-store writer for the kill tests: syncs a deterministic chain into a store.

    python store_writer.py DB SEED [--until H] [--window W] [--every C]

Everything it writes is a function of SEED and the height, so a checker (tests/node/
test_store.py imports this file) can recompute what must be on disk after a kill:

- ``block_id(seed, h)`` and ``header(seed, h)``: the header holds h and the previous block_id;
- segments end at the heights where ``is_segment_end(seed, h)`` (a few hundred headers each,
  of varying length), so a tip that is not a segment end means a torn append;
- the validator set changes every ``EPOCH`` heights; the tip's next_set_hash is the hash of
  the set of epoch(tip + 1), and each append brings the sets its segment needs.

It opens the store (creating and initializing it at ``ANCHOR`` if needed), resumes from the
tip, and prints one line per step, flushed, so the killer can tell where it was:
``open <tip>``, then ``begin <end>`` before each append and ``tip <end>`` after its commit,
then ``done <tip>`` when it reaches ``--until``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys

from appliance.node.store import HeaderStore

ANCHOR = 777  # deliberately not a multiple of the checkpoint spacing
EPOCH = 1500
MAX_SEGMENT = 1200
CHAIN_ID = "kill-test"


def _d(seed: int, tag: str, h: int) -> bytes:
    return hashlib.sha256(f"{seed}:{tag}:{h}".encode()).digest()


def block_id(seed: int, h: int) -> bytes:
    return _d(seed, "id", h)


def header(seed: int, h: int) -> bytes:
    """About 250 bytes, like a canonical CBOR header: height, prev block_id, body hashes."""
    return b"hdr1" + h.to_bytes(8, "big") + block_id(seed, h - 1) + _d(seed, "body", h) * 6


def is_segment_end(seed: int, h: int) -> bool:
    if h <= ANCHOR:
        return h == ANCHOR
    return (h - ANCHOR) % MAX_SEGMENT == 0 or int.from_bytes(_d(seed, "end", h)[:2]) % 300 == 0


def epoch(h: int) -> int:
    return h // EPOCH


def set_bytes(seed: int, e: int) -> bytes:
    return f"validator set {seed}/{e}".encode() * 4


def set_hash(seed: int, e: int) -> bytes:
    return hashlib.sha256(set_bytes(seed, e)).digest()


def anchor_bytes(seed: int) -> bytes:
    return f"anchor {seed} at {ANCHOR}".encode()


def segment_after(seed: int, tip: int) -> list[tuple[int, bytes, bytes]]:
    """The segment that follows ``tip`` (a segment end)."""
    out = []
    h = tip + 1
    while True:
        out.append((h, block_id(seed, h), header(seed, h)))
        if is_segment_end(seed, h):
            return out
        h += 1


def sets_for(seed: int, first: int, last: int) -> list[tuple[bytes, bytes]]:
    """The sets that sign first .. last + 1 (the one after the tip included)."""
    epochs = range(epoch(first), epoch(last + 1) + 1)
    return [(set_hash(seed, e), set_bytes(seed, e)) for e in epochs]


def say(*words: object) -> None:
    print(*words, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("seed", type=int)
    ap.add_argument("--until", type=int, default=None)
    ap.add_argument("--window", type=int, default=2000)
    ap.add_argument("--every", type=int, default=64)
    args = ap.parse_args(argv)
    seed = args.seed
    with HeaderStore.open(args.db, window=args.window, checkpoint_every=args.every) as store:
        store.initialize(CHAIN_ID, anchor_bytes(seed), ANCHOR, block_id(seed, ANCHOR),
                         header(seed, ANCHOR), set_hash(seed, epoch(ANCHOR + 1)),
                         sets_for(seed, ANCHOR, ANCHOR))
        tip = store.tip().height
        say("open", tip)
        while args.until is None or tip < args.until:
            segment = segment_after(seed, tip)
            end = segment[-1][0]
            say("begin", end)
            store.append(segment, set_hash(seed, epoch(end + 1)), sets_for(seed, tip + 1, end))
            tip = end
            say("tip", tip)
        say("done", tip)
    return 0


if __name__ == "__main__":
    sys.exit(main())
