"""The daemon's alarm wiring: an alarm raised in the header store (as the sync does on
equivocation) reaches the flow runner and the audit log, and so does its clearing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from appliance import audit, config
from appliance.node.store import HeaderStore
from appliance.service import Appliance


class Recorder:
    """Stands in for the FlowRunner: records alarm_changed calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool, Any]] = []

    def alarm_changed(self, active: bool, detail: Any = None) -> None:
        self.calls.append((active, detail))


async def _until(cond: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def test_store_alarm_reaches_runner_and_audit(tmp_path: Path) -> None:
    cfg = config.parse({"state_dir": str(tmp_path / "state")}, env={})

    async def main() -> dict[str, Any]:
        app = Appliance(cfg)
        app._open_audit()
        store = HeaderStore.open(tmp_path / "headers.sqlite")
        runner = Recorder()
        app.runner = runner
        stop = asyncio.Event()
        task = asyncio.create_task(app._watch_node(None, store, stop))
        try:
            await _until(lambda: runner.calls, "first state")
            assert runner.calls == [(False, None)]
            store.raise_alarm("equivocation", "two valid commits at height 7", at_ms=1)
            await _until(lambda: runner.calls[-1][0], "alarm raised")
            assert runner.calls[-1] == (True, "two valid commits at height 7")
            during = app.health()["alarm"]
            store.clear_alarm("equivocation", "operator-1", at_ms=2)
            await _until(lambda: not runner.calls[-1][0], "alarm cleared")
            return {"during": during, "calls": list(runner.calls)}
        finally:
            stop.set()
            await task
            store.close()

    out = asyncio.run(main())
    assert out["during"] == "two valid commits at height 7"
    assert out["calls"] == [(False, None), (True, "two valid commits at height 7"),
                            (False, None)]
    entries = audit.tail(cfg.audit_path, 10)
    # raising is audited here; clearing by `appliance node clear-alarm`, which names the operator
    assert [e.kind for e in entries] == ["alarm"]
    assert entries[0].fields["detail"] == "two valid commits at height 7"
    assert audit.verify(cfg.audit_path).ok
