"""The audit log's daily anchor on chain (docs/audit.md, ledger-protocol §6).

Once a day each terminal deposits the head of its audit log for the day before: an
``evidence.deposit`` of kind ``audit.head`` whose ``digest`` is the hash of that day's last
entry, signed with the terminal's device key in its crypto module and naming the terminal's
enrollment. Once the light node has verified the deposit's inclusion, the log records it
(``anchored``). From then on nobody who can write the log's files can rewrite that day or
anything before it without the chain showing it (``appliance audit verify --node``).

:func:`anchor_day` does one day; :class:`DailyAnchor` runs it at start (for yesterday, if
this run has not anchored it yet) and a little after each UTC midnight (a random delay of up
to ten minutes, so that a hall's terminals do not all submit at once).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from .audit import DAY_MS

__all__ = ["DailyAnchor", "anchor_day"]

log = logging.getLogger("appliance.audit")

MAX_SPREAD_S = 600.0
RETRY_S = 300.0


async def anchor_day(audit: Any, day: int, *, signer: Any, enrollment: bytes, node: Any,
                     now_ms: int, timeout_s: float = 60.0) -> Any:
    """Deposit the head of ``day`` (UTC day number) and record it; the ``anchored`` entry,
    or None when nothing was logged that day. Raises what the log, the module or the node
    raise (the caller retries later)."""
    from .node.tx import build_tx

    head = await asyncio.to_thread(audit.anchor_head, day)
    if head is None:
        return None
    tx = await asyncio.to_thread(
        build_tx, signer, chain_id=node.anchor.chain_id, type="evidence.deposit",
        data=head.deposit_data(enrollment), timestamp_ms=now_ms)
    await node.submit_tx(tx, timeout_s=timeout_s)
    inc = await node.wait_for_inclusion(tx.tx_id, timeout_s=timeout_s)
    return await asyncio.to_thread(audit.record_anchor, head, inc.tx_id, inc.height,
                                   inc.time_ms)


class DailyAnchor:
    """Anchors yesterday's head now and after every UTC midnight while ``ready()`` gives
    (signer, enrollment, node); waits while it gives None."""

    def __init__(self, audit: Any, ready: Callable[[], tuple[Any, bytes, Any] | None], *,
                 clock_ms: Callable[[], int] | None = None,
                 spread_s: float = MAX_SPREAD_S) -> None:
        self.audit = audit
        self.ready = ready
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.spread_s = spread_s
        self.anchored: set[int] = set()
        self.last_error: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            parts = self.ready()
            day = self.clock_ms() // DAY_MS - 1
            if parts is None:
                wait = 1.0
            elif day in self.anchored:
                wait = self._until_next_day()
            else:
                wait = await self._try(day, *parts)
            try:
                async with asyncio.timeout(wait):
                    await stop.wait()
            except TimeoutError:
                pass

    async def _try(self, day: int, signer: Any, enrollment: bytes, node: Any) -> float:
        try:
            entry = await anchor_day(self.audit, day, signer=signer, enrollment=enrollment,
                                     node=node, now_ms=self.clock_ms())
        except Exception as exc:  # noqa: BLE001 - logged, retried; never takes the daemon down
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("audit head of day %d not anchored yet (%s); retrying in %.0f s", day,
                        self.last_error, RETRY_S)
            return RETRY_S
        self.anchored.add(day)
        self.last_error = None
        if entry is not None:
            log.info("audit head of day %d anchored on chain (seq %d)", day, entry.seq)
        return self._until_next_day()

    def _until_next_day(self) -> float:
        now = self.clock_ms()
        midnight = (now // DAY_MS + 1) * DAY_MS
        spread = int.from_bytes(os.urandom(2), "big") / 0xFFFF * self.spread_s
        return (midnight - now) / 1000 + spread
