"""Build small valid chains with real keys, for the light-node tests.

A chain is a list of headers 0..n, a commit for every height signed by every validator of the
signing set, and the validator sets; ``changes`` schedules set changes, and ``tweak`` lets a
test alter one header's fields before it is hashed (later headers link to the altered one),
so that a test can break exactly one rule at one height.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.node import merkle, signatures
from appliance.node.model import (
    ZERO_HASH,
    Commit,
    Header,
    TrustAnchor,
    Validator,
    ValidatorSet,
    vote_bytes,
)

CHAIN_ID = "bj-gov-test"
T0 = 1_700_000_000_000  # ms; header h has timestamp T0 + STEP * h
STEP = 1_000


@dataclass(frozen=True)
class Key:
    alg: str
    private: bytes
    public: bytes
    power: int = 1

    @property
    def validator(self) -> Validator:
        return Validator(self.alg, self.public, self.power)

    def with_power(self, power: int) -> Key:
        return Key(self.alg, self.private, self.public, power)

    def sign(self, message: bytes) -> bytes:
        return signatures.sign(self.alg, self.private, message)


@functools.cache
def _keypair(alg: str, n: int) -> tuple[bytes, bytes]:
    """The n-th test key of ``alg`` (cached: key generation is the slow part of chain building)."""
    return signatures.generate_keypair(alg)


def keys(count: int, alg: str | Sequence[str] = "sm2", *, offset: int = 0,
         powers: Sequence[int] | None = None) -> list[Key]:
    """``count`` distinct keys; ``alg`` one name or one per key; ``offset`` picks other keys."""
    algs = [alg] * count if isinstance(alg, str) else list(alg)
    result = []
    for i in range(count):
        private, public = _keypair(algs[i], offset + i)
        result.append(Key(algs[i], private, public, 1 if powers is None else powers[i]))
    return result


def vset(ks: Iterable[Key]) -> ValidatorSet:
    return ValidatorSet.of(k.validator for k in ks)


def signer_keys(s: ValidatorSet, ks: Iterable[Key]) -> list[tuple[int, Key]]:
    """(index in s, key) for the keys of ``ks`` that are in ``s``, by index."""
    by_pub = {k.public: k for k in ks}
    return [(i, by_pub[v.public_key]) for i, v in enumerate(s.validators) if v.public_key in by_pub]


def sign_commit(header: Header, s: ValidatorSet, ks: Iterable[Key], *,
                chain_id: str | None = None, height: int | None = None,
                block_id: bytes | None = None) -> Commit:
    """A commit for ``header`` by the keys of ``ks`` that belong to ``s``.

    chain_id/height/block_id override what the votes say (to make wrong signatures).
    """
    message = vote_bytes(
        chain_id if chain_id is not None else header.chain_id,
        height if height is not None else header.height,
        block_id if block_id is not None else header.block_id,
    )
    sigs = tuple((i, k.sign(message)) for i, k in signer_keys(s, ks))
    return Commit(header.height, header.block_id, sigs)


def header_fields(height: int, prev: Header | None, vh: bytes, nvh: bytes,
                  chain_id: str = CHAIN_ID) -> dict[str, Any]:
    return {
        "chain_id": chain_id,
        "height": height,
        "version": "1",
        "prev_hash": prev.block_id if prev is not None else ZERO_HASH,
        "tx_root": merkle.root([merkle.digest(b"tx %d" % height)]),
        "timestamp": T0 + STEP * height,
        "validators_hash": vh,
        "next_validators_hash": nvh,
    }


Tweak = Callable[[int, dict[str, Any]], dict[str, Any]]


@dataclass
class Chain:
    chain_id: str
    headers: list[Header]
    sets: list[ValidatorSet]  # sets[h] signs header h; sets[len] signs the next block
    keys: list[Key]  # every key that appears in any set
    commits: dict[int, Commit] = field(default_factory=dict)

    @property
    def by_hash(self) -> dict[bytes, ValidatorSet]:
        return {s.hash: s for s in self.sets}

    @property
    def anchor(self) -> TrustAnchor:
        h0 = self.headers[0]
        return TrustAnchor(self.chain_id, 0, h0.block_id, self.sets[0])

    def segment(self, a: int, b: int, *, all_commits: bool = False) -> dict[str, Any]:
        """Arguments of verify_segment for headers a+1..b after trusted a.

        Commits of the set changes and of b only (what a node serves), or all of them.
        """
        hs = self.headers[a + 1:b + 1]
        if all_commits:
            commits = {h.height: self.commits[h.height] for h in hs}
        else:
            commits = {h.height: self.commits[h.height] for h in hs
                       if h.next_validators_hash != h.validators_hash}
            commits[b] = self.commits[b]
        return {
            "trusted": self.headers[a],
            "next_set": self.sets[a + 1],
            "headers": hs,
            "commits": commits,
            "sets": self.by_hash,
            "now_ms": T0 + STEP * (b + 1),
        }


def build_chain(length: int, initial: Sequence[Key], *,
                changes: dict[int, Sequence[Key]] | None = None,
                tweak: Tweak | None = None, chain_id: str = CHAIN_ID) -> Chain:
    """Headers 0..length-1; ``changes[h]`` is the key list of the set that signs from h on.

    Every commit is signed by the whole signing set. ``tweak(height, fields)`` may return
    altered fields for a header before it is hashed.
    """
    changes = changes or {}
    sets = [vset(initial)]
    all_keys = {k.public: k for k in initial}
    for h in range(1, length + 1):
        if h in changes:
            sets.append(vset(changes[h]))
            all_keys.update({k.public: k for k in changes[h]})
        else:
            sets.append(sets[-1])
    headers: list[Header] = []
    for h in range(length):
        fields = header_fields(h, headers[-1] if headers else None, sets[h].hash,
                               sets[h + 1].hash, chain_id)
        if tweak is not None:
            fields = tweak(h, dict(fields))
        headers.append(Header(**fields))
    ks = list(all_keys.values())
    chain = Chain(chain_id, headers, sets, ks)
    for h, header in enumerate(headers):
        chain.commits[h] = sign_commit(header, sets[h], ks)
    return chain
