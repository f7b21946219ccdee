"""The I/O side of §6 references: fetch, with proofs, what a check refers to, and keep it.

:class:`References` answers ``lookup(tx_id)`` for :mod:`appliance.node.rules` from a cache
of transactions proven on chain (each fetched through :meth:`NodeSync.get_inclusion`: its
Merkle proof checked against a verified header, §4-§5). :meth:`References.resolve` asks
:func:`rules.needs` what a check will look up, fetches what is missing (in parallel), and
repeats once the fetched deposits name their issuers' enrollments, so the check then runs
without I/O. Verified enrollments are reused across checks (a kiosk checks the same PAD,
issuers and identity service again and again); the cache keeps the most recently used.

A transaction every asked node says is in no block is simply absent (the check then fails
with its ``*_missing`` rule); when no node can be asked, or a node serves something that does
not verify, :class:`ReferencesUnavailable` says the chain could not be consulted, which is not
the same answer.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from .client import NotFound, TxError
from .rules import Ref, needs

__all__ = ["References", "ReferencesUnavailable"]

MAX_ROUNDS = 4  # the deepest chain of references is authorization -> matter -> deposit -> issuer


class ReferencesUnavailable(Exception):
    """The chain could not be consulted for a reference (no node, or no verifiable answer)."""


class References:
    """A cache of proven transactions over ``node`` (a running
    :class:`~appliance.node.client.NodeSync`)."""

    def __init__(self, node: Any, *, capacity: int = 512) -> None:
        self.node = node
        self.capacity = capacity
        self._cache: OrderedDict[bytes, Ref] = OrderedDict()
        self.fetched = 0  # transactions fetched from the nodes (for tests and status)

    def lookup(self, tx_id: bytes) -> Ref | None:
        ref = self._cache.get(tx_id)
        if ref is not None:
            self._cache.move_to_end(tx_id)
        return ref

    def add(self, ref: Ref) -> None:
        """Keep a transaction the caller has proven on chain (e.g. its own, once included)."""
        self._cache[ref.tx.tx_id] = ref
        self._cache.move_to_end(ref.tx.tx_id)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)

    async def resolve(self, obj: Any, *, timeout_s: float) -> Any:
        """Fetch everything checking ``obj`` (a SignedTx or a signed object) looks up; return
        :meth:`lookup`. :class:`ReferencesUnavailable` when a reference could not be had."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        tried: set[bytes] = set()
        for _ in range(MAX_ROUNDS):
            missing = needs(obj, self.lookup) - tried
            if not missing:
                break
            tried |= missing
            results = await asyncio.gather(
                *(self._fetch(t, max(0.1, deadline - loop.time())) for t in sorted(missing)),
                return_exceptions=True)  # every fetch ends before this one answers
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return self.lookup

    async def _fetch(self, tx_id: bytes, timeout_s: float) -> None:
        try:
            inc = await self.node.get_inclusion(tx_id, timeout_s=timeout_s)
        except NotFound:
            return  # absent: the check says which reference is missing
        except TxError as exc:
            raise ReferencesUnavailable(f"{tx_id.hex()[:16]}: {exc}") from None
        self.fetched += 1
        self.add(Ref(inc.tx, inc.height, inc.time_ms))
