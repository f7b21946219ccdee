"""``appliance run``: the daemon. One asyncio process, three supervised tasks.

- ``node``: the light node (:class:`~appliance.node.client.NodeSync`) with its static and
  discovered peers; the equivocation alarm of its store is watched and handed to the
  authorization flow (``runner.alarm_changed``) and to the audit log. With ``chain.kind =
  "fisco-bcos-3"`` it is the FISCO BCOS 3.x sync (:mod:`appliance.node.fisco`) instead, run
  continuously; authorizations and license lookups need the native ledger's transaction
  types, so the kiosk then shows why they are not available (:class:`ChainUnavailable`);
- ``hsm``: the crypto module: opened, logged in, checked every few seconds; the device key
  signs through :class:`appliance.node.tx.ModuleSigner`;
- ``kiosk``: the local web server (UI and API, loopback only) and the authorization flow.

A task that crashes is logged (one line) and restarted after a backoff
(:class:`RestartPolicy`, sans-I/O); a task that keeps crashing is restarted less and less
often, never given up on (a kiosk with no one to restart it must heal itself). Logs are stdlib
logging to stderr, one event a line, for journald. With ``NOTIFY_SOCKET`` set (systemd
``Type=notify``) the daemon sends ``READY=1`` once the UI serves, ``WATCHDOG=1`` at half of
``WATCHDOG_USEC`` while the event loop runs, and ``STOPPING=1`` on SIGTERM/SIGINT.

The audit log is opened (and verified whole) before anything else: a torn tail (a power cut
mid-append) is repaired at once and logged as ``repaired``; a log that fails for any other
reason is never repaired: nothing more is appended to it and ``/api/health`` says why
(:func:`start_audit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import Config

log = logging.getLogger("appliance.service")

#: How long the FISCO sync may go without a new block before one round ends and the next
#: begins (FISCO seals blocks only when there are transactions, so an idle chain is normal).
FISCO_ROUND_S = 60.0
#: Why authorizations and license lookups are not offered on a FISCO BCOS 3.x chain.
FISCO_UNAVAILABLE = ("chain.kind = fisco-bcos-3: authorizations (license.authorize) and PAD "
                     "license lookups (evidence.deposit) need the native ledger's transaction "
                     "types, which a FISCO BCOS 3.x chain does not carry yet")
FISCO_UNAVAILABLE_VIEW_ERROR = {
    "code": "chain_unsupported",
    "title_zh": "本终端暂不能办理授权",
    "title_en": "Authorizations are not available on this terminal",
    "message_zh": "本终端连接的是 FISCO BCOS 3.x 区块链。刷脸授权和证照查验需要本系统账本的交易类型"
                  "（license.authorize、evidence.deposit），该链上暂不支持。请到窗口办理。",
    "message_en": "This terminal is connected to a FISCO BCOS 3.x chain. Face-verified "
                  "authorizations and license lookups need this system's own ledger "
                  "transactions (license.authorize, evidence.deposit), which that chain does "
                  "not carry yet. Please go to a window.",
    "tx_id": None,
}


# -- the audit log at start -----------------------------------------------------------------


@dataclass
class AuditStart:
    """What :func:`start_audit` found: ``state`` ``ok``, ``repaired`` (a torn tail cut) or
    ``failed`` (the log does not verify: nothing is appended to it)."""

    state: str
    error: str | None = None
    detail: str = ""
    repaired: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "error": self.error, "detail": self.detail,
                "repaired": self.repaired}


def start_audit(path: Any, *, retention_days: int,
                clock_ms: Callable[[], int] | None = None,
                signer: Any = None) -> tuple[Any, AuditStart]:
    """Open the audit log for the daemon and verify it whole (docs/audit.md).

    ``signer`` (an ``appliance.audit.CheckpointSigner``: a ``ModuleSigner`` of the log's own
    on the module client) signs the log's checkpoints; it may also be set later as the
    log's ``signer`` attribute, once the module is logged in.

    - it verifies: appended to as it is;
    - only a torn tail (a crash mid-append; the torn entry was never acknowledged): cut at
      once (``appliance.audit.repair``), logged as ``repaired`` with the byte count and the
      SM3 of the cut bytes, and a warning logged;
    - anything else (an entry edited, removed or inserted, an older segment damaged: possible
      tampering): never repaired; the writer is disabled (every append raises) and the error
      is logged and shown in ``/api/health`` until an operator has looked at it.
    """
    from .audit import AuditCorrupt, AuditError, AuditLog, repair

    audit = AuditLog(path, retention_days=retention_days, clock_ms=clock_ms, signer=signer)
    try:
        report = audit.verify()  # under the log's lock: a concurrent append is not "torn"
        if report.ok:
            return audit, AuditStart("ok")
        if report.error == "torn_tail":
            result = repair(path, operator="appliance run", automatic=True, log=audit,
                            clock_ms=clock_ms)
            if result.repaired and result.entry is not None:
                info = {"segment": result.segment, "truncated_bytes": result.truncated_bytes,
                        "truncated_sm3": result.truncated_sm3, "seq": result.entry.seq}
                log.warning("audit log: a torn tail (a crash mid-append) was repaired at "
                            "start: %d bytes cut from %s (sm3 %s), logged as 'repaired' "
                            "seq %d", result.truncated_bytes, result.segment,
                            result.truncated_sm3, result.entry.seq)
                return audit, AuditStart("repaired", repaired=info)
            return audit, AuditStart("ok")  # another writer repaired it meanwhile
        where = (f"{report.error} at index {report.index}, {report.segment}"
                 f"{'' if report.line is None else f' line {report.line}'}")
        error: AuditError = AuditCorrupt(f"the audit log does not verify ({where}): "
                                         f"{report.detail}")
        code = report.error
    except AuditError as exc:  # repair refused: the log changed between verify and repair
        error, code = exc, exc.code
    except OSError as exc:
        error, code = AuditCorrupt(f"the audit log cannot be read: {exc}"), "io"
    audit.disable(error)
    log.error("AUDIT LOG FAILED VERIFICATION AT START: %s. It is not repaired and nothing "
              "is appended to it; check it with 'appliance audit verify' (possible "
              "tampering)", error)
    return audit, AuditStart("failed", error=code, detail=str(error))


# -- systemd notifications ---------------------------------------------------------------------


class Notifier:
    """sd_notify(3) without libsystemd: datagrams to the unix socket in ``NOTIFY_SOCKET``
    (a path, or ``@name`` for the abstract namespace). Does nothing when it is not set."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET") or ""
        self.address: str | bytes | None = None
        if addr.startswith("@"):
            self.address = b"\0" + addr[1:].encode()
        elif addr.startswith("/"):
            self.address = addr
        self.watchdog_s: float | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        digits = bool(usec) and usec.isascii() and usec.isdigit()  # not "²": int() refuses it
        if digits and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6 / 2  # sd_watchdog_enabled(3): ping at half
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, state: str) -> bool:
        """Send ``state`` (``READY=1``, ``WATCHDOG=1``, ``STATUS=...``); False if not sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(state.encode(), self.address)
            return True
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", state.split("=", 1)[0], exc)
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def watchdog(self) -> None:
        """Ping the watchdog at half its interval for as long as the event loop runs."""
        if self.watchdog_s is None or not self.enabled:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s)


# -- supervision ---------------------------------------------------------------------------------


@dataclass
class RestartPolicy:
    """When to restart a task that ended: ``base_s`` doubling per consecutive crash up to
    ``max_s``; a task that ran ``healthy_after_s`` before it crashed starts over at
    ``base_s``. Sans-I/O: time comes in as arguments."""

    base_s: float = 0.5
    max_s: float = 30.0
    healthy_after_s: float = 60.0
    crashes: int = 0
    started_at: float | None = None

    def started(self, now: float) -> None:
        self.started_at = now

    def ended(self, now: float) -> float:
        """The task ended (crashed or returned); the delay before it is started again."""
        ran = 0.0 if self.started_at is None else now - self.started_at
        self.crashes = 1 if ran >= self.healthy_after_s else self.crashes + 1
        return min(self.max_s, self.base_s * 2 ** (self.crashes - 1))


@dataclass
class TaskRecord:
    name: str
    policy: RestartPolicy
    state: str = "new"  # new, running, restarting, stopped
    restarts: int = 0
    last_error: str | None = None


class Supervisor:
    """Runs named coroutine factories until ``stop`` is set; restarts each after a crash or
    an unexpected return, after :meth:`RestartPolicy.ended`'s delay."""

    def __init__(self, *, policy: Callable[[], RestartPolicy] = RestartPolicy,
                 clock: Callable[[], float] = time.monotonic,
                 on_crash: Callable[[str, BaseException | None], None] | None = None) -> None:
        self._policy = policy
        self._clock = clock
        self._on_crash = on_crash
        self.tasks: dict[str, TaskRecord] = {}
        self._factories: dict[str, Callable[[], Awaitable[Any]]] = {}

    def add(self, name: str, factory: Callable[[], Awaitable[Any]]) -> None:
        self.tasks[name] = TaskRecord(name, self._policy())
        self._factories[name] = factory

    def status(self) -> dict[str, dict[str, Any]]:
        return {n: {"state": r.state, "restarts": r.restarts, "last_error": r.last_error}
                for n, r in self.tasks.items()}

    async def run(self, stop: asyncio.Event) -> None:
        loops = [asyncio.create_task(self._keep(name, stop), name=f"supervise-{name}")
                 for name in self._factories]
        try:
            await stop.wait()
        finally:
            for t in loops:
                t.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            for r in self.tasks.values():
                r.state = "stopped"

    async def _keep(self, name: str, stop: asyncio.Event) -> None:
        rec = self.tasks[name]
        while not stop.is_set():
            rec.state = "running"
            rec.policy.started(self._clock())
            error: BaseException | None = None
            try:
                await self._factories[name]()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any crash is logged and restarted
                error = exc
            if stop.is_set():
                break
            delay = rec.policy.ended(self._clock())
            rec.restarts += 1
            rec.state = "restarting"
            if error is None:
                rec.last_error = "returned"
                log.warning("task %s ended unexpectedly; restart %d in %.1f s", name,
                            rec.restarts, delay)
            else:
                rec.last_error = f"{type(error).__name__}: {error}"
                log.error("task %s crashed: %s; restart %d in %.1f s", name,
                          _one_line(rec.last_error), rec.restarts, delay)
                log.debug("task %s traceback", name, exc_info=error)
            if self._on_crash is not None:
                self._on_crash(name, error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


# -- logging ------------------------------------------------------------------------------------


class OneLineFormatter(logging.Formatter):
    """One event a line (journald): newlines inside a message or a traceback are escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "\\r").replace("\n", "\\n")


def setup_logging(level: str, stream: Any = None) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_appliance", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
    handler._appliance = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    for noisy in ("zeroconf", "asyncio", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- the device key in the crypto module --------------------------------------------------------


class _AuditSink:
    """The daemon's audit log as the runner sees it: the same appends, with failures noted
    for ``/api/health`` (the runner only logs them)."""

    def __init__(self, app: Appliance) -> None:
        self._app = app

    def append(self, kind: str, **fields: Any) -> Any:
        try:
            entry = self._app.audit.append(kind, **fields)
        except Exception as exc:
            self._app._audit_error = f"{kind}: {type(exc).__name__}: {_one_line(str(exc))}"
            raise
        self._app._audit_error = None
        return entry


class ChainUnavailable:
    """Stands in for the flow runner when the chain cannot carry authorizations (a FISCO BCOS
    3.x chain): the web server shows its one view, the blocked screen saying why in Chinese and
    English, and every UI event is refused."""

    def __init__(self, error: Mapping[str, Any]) -> None:
        self._view: dict[str, Any] = {
            "screen": "blocked", "seq": 1, "session": None, "deadline_ms": None,
            "warn_at_ms": None, "can_extend": False, "extends_left": 0, "can_cancel": False,
            "matter": None, "capture": None, "error": dict(error), "receipt": None,
            "alternative": None, "alarm": None, "unavailable": True}
        self._stop = asyncio.Event()

    def view(self) -> dict[str, Any]:
        return dict(self._view)

    def post(self, ui_event: Mapping[str, Any]) -> bool:
        return False  # nothing to start, nothing to cancel

    async def subscribe(self) -> Any:
        yield {"type": "view", "view": self.view()}
        await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()


class _NoLookups:
    """The PAD's light node on a chain without ``evidence.deposit``: every lookup is refused
    with the reason (the web API answers 503 with it)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def lookup_detailed(self, digest: bytes, *, timeout_s: float = 20.0) -> Any:
        from .node.client import TxError

        raise TxError("证照查验在 FISCO BCOS 3.x 链上暂不可用 / license lookups are not "
                      f"available: {FISCO_UNAVAILABLE}", code="not_available")


def read_pin(cfg: Config, env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    if cfg.hsm.pin_file is not None:
        try:
            return cfg.hsm.pin_file.read_text().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise RuntimeError(f"cannot read the PIN from {cfg.hsm.pin_file}: {exc}") from None
    return env.get(cfg.hsm.pin_env) or None


# -- the daemon ---------------------------------------------------------------------------------


@dataclass
class Readiness:
    """What the UI's "starting" screen and /api/health show."""

    started_at: float = field(default_factory=time.monotonic)
    parts: dict[str, str] = field(default_factory=lambda: {
        "node": "starting", "hsm": "starting", "kiosk": "starting"})
    detail: dict[str, str] = field(default_factory=dict)
    changed: asyncio.Event | None = None

    def set(self, part: str, state: str, detail: str = "") -> None:
        if self.parts.get(part) == state and self.detail.get(part, "") == detail:
            return
        self.parts[part] = state
        self.detail[part] = detail
        if self.changed is not None:
            self.changed.set()

    @property
    def ready(self) -> bool:
        return all(v == "ready" for v in self.parts.values())


class Appliance:
    """The daemon's parts. ``sim`` is a simulated hall (hil.sim_hall) whose fixtures stand
    in for the district nodes, the module, the camera and the identity service."""

    def __init__(self, cfg: Config, *, sim: Any = None,
                 notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.sim = sim
        self.notifier = notifier or Notifier()
        self.readiness = Readiness()
        self.supervisor = Supervisor(on_crash=self._on_crash)
        self.node: Any = None  # NodeSync once the node task has started
        self.signer: Any = None  # appliance.node.tx.ModuleSigner once the module is up
        self.runner: Any = None  # FlowRunner once the kiosk task has it
        self.desk: Any = None  # a PAD's kiosk.desk.Desk once its parts are up
        self.anchor: Any = None  # the audit log's DailyAnchor
        self.audit: Any = None
        self.audit_start: AuditStart | None = None
        self._audit_error: str | None = None  # the last append that failed, until one works
        self.web: Any = None
        self.stop = asyncio.Event()
        self._alarm: tuple[bool, str] | None = None
        self._hsm_client: Any = None
        # the simulated hall is a native-ledger hall whatever the file says
        self.fisco = sim is None and cfg.chain.fisco
        self._height: int | None = None
        self._anchor_height: int | None = None

    # -- audit -----------------------------------------------------------------------------

    def _open_audit(self) -> None:
        """:func:`start_audit` (verify, repair a torn tail, or disable a failed log)."""
        self.audit, self.audit_start = start_audit(
            self.cfg.audit_path, retention_days=self.cfg.audit.retention_days,
            clock_ms=lambda: int(time.time() * 1000))

    def audit_event(self, kind: str, **fields: Any) -> None:
        log.info("audit %s %s", kind, " ".join(f"{k}={v}" for k, v in fields.items()))
        if self.audit is None:
            return
        try:
            self.audit.append(kind, **fields)
        except Exception as exc:  # noqa: BLE001 - the audit log failing must be seen, loudly
            self._audit_error = f"{kind}: {type(exc).__name__}: {_one_line(str(exc))}"
            log.error("audit log append failed (%s): %s", kind, exc)
        else:
            self._audit_error = None

    def _check_audit(self) -> None:
        """Read the audit log's tail (:meth:`AuditLog.check`): a log gone, replaced or with
        a broken tail shows in :meth:`audit_health` without waiting for an append."""
        try:
            self.audit.check()
        except Exception as exc:  # noqa: BLE001 - reported through the health document
            if getattr(self.audit, "fault", None) is None:
                self._audit_error = f"check: {type(exc).__name__}: {_one_line(str(exc))}"

    def audit_health(self) -> dict[str, Any]:
        """The audit log's part of ``/api/health``: ``ok`` false (with ``error`` and
        ``detail``) while appends fail or are refused."""
        start = self.audit_start or AuditStart("ok")
        doc: dict[str, Any] = {"ok": start.state != "failed", **start.to_json()}
        if start.state == "failed":
            return doc  # in verify's own words; every append since has been refused
        fault = None if self.audit is None else getattr(self.audit, "fault", None)
        if fault is not None:
            doc.update(ok=False, state="failed", error=getattr(fault, "code", "audit"),
                       detail=_one_line(str(fault)))
        elif self._audit_error is not None:
            doc.update(ok=False, error="append_failed", detail=self._audit_error)
        return doc

    def _on_crash(self, name: str, error: BaseException | None) -> None:
        state = "restarting"
        self.readiness.set(name, state, "" if error is None else _one_line(str(error)))

    # -- run -------------------------------------------------------------------------------

    async def run(self, *, signals: bool = True) -> int:
        """Serve until stopped (SIGTERM/SIGINT, or :meth:`request_stop`). With ``signals``
        False the caller handles the signals (several daemons in one process)."""
        loop = asyncio.get_running_loop()
        self.readiness.changed = asyncio.Event()
        if signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(signum, self.request_stop)
        from .audit import ensure_private_dir

        ensure_private_dir(self.cfg.state_dir)  # 0700, as the audit log (docs/audit.md)
        await asyncio.to_thread(self._open_audit)  # verifies the whole log: not in the loop
        self.audit_event("service_start", sim=self.sim is not None,
                         role=self.cfg.terminal.role,
                         chain="native" if not self.fisco else self.cfg.chain.kind)
        from .kiosk.web.server import WebServer

        self.web = WebServer(self, self.cfg.kiosk.listen_host, self.cfg.kiosk.listen_port,
                             secret_file=self.cfg.state_dir / "ui-secret")
        await self.web.start()
        self.readiness.set("kiosk", "serving")
        url, launch = self.web.url, self.web.launch_url_for_stderr  # with this start's key
        page = "/pad" if self.cfg.terminal.role == "pad" else "/"
        if self.sim is not None:
            self.sim.url = url
        print(f"appliance: {self.cfg.terminal.role} UI on {url}", file=sys.stderr, flush=True)
        if self.sim is None:
            print(f"appliance: open {launch(page)}", file=sys.stderr, flush=True)
        else:
            label = "kiosk" if page == "/" else "clerk PAD"
            print(f"appliance: simulated service hall, {label}: open {launch(page)}",
                  file=sys.stderr, flush=True)
        log.info("UI serving on %s (%.2f s after start)", url,
                 time.monotonic() - self.readiness.started_at)
        log.info("UI launch URL (the terminal's browser opens it): %s", launch(page))
        self.notifier.notify(f"READY=1\nSTATUS=UI on {url}")
        watchdog = asyncio.create_task(self.notifier.watchdog())
        self.supervisor.add("node", self._fisco_node_task if self.fisco else self._node_task)
        self.supervisor.add("hsm", self._hsm_task)
        self.supervisor.add("kiosk", self._kiosk_task)
        if not self.fisco:
            self.supervisor.add("anchor", self._anchor_task)
        try:
            await self.supervisor.run(self.stop)
        finally:
            self.notifier.notify("STOPPING=1")
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            await self.web.stop()
            if self._hsm_client is not None:
                with contextlib.suppress(Exception):
                    self._hsm_client.close()
            self.audit_event("service_stop")
            self.notifier.close()
        return 0

    def request_stop(self) -> None:
        if not self.stop.is_set():
            log.info("stopping")
            self.notifier.notify("STOPPING=1")
            self.stop.set()

    # -- node ------------------------------------------------------------------------------

    async def _node_task(self) -> None:
        from .node.client import NodeSync
        from .node.discovery import Discovery

        if self.sim is not None:
            await self.sim.wait_chain()
        trust = self.cfg.trust_path if self.sim is None else self.sim.trust_path
        try:
            anchor = trust.read_bytes()
        except OSError as exc:
            raise RuntimeError(f"cannot read the trust anchor {trust}: "
                               f"{exc.strerror or exc}") from None
        store = await self._open_store()
        service = self

        class _Node(NodeSync):
            async def _apply(self, events: list[Any]) -> None:  # audit the peer bans
                from .node import sync

                for ev in events:
                    if isinstance(ev, sync.BanPeer):
                        service.audit_event("peer_ban", peer=ev.peer, reason=ev.reason,
                                            strikes=ev.strikes)
                await super()._apply(events)

        discovery = None
        stop = asyncio.Event()
        watcher: asyncio.Task[None] | None = None
        try:
            node = _Node(store, anchor, max_discovered=self.cfg.node.max_discovered_peers)
            for url in self.cfg.node.peers:
                node.add_peer(url, "static")
            for url in ([] if self.sim is None else self.sim.peer_urls):
                node.add_peer(url, "sim")  # mDNS finds them too; one entry per URL
            if self.cfg.node.discover:
                discovery = Discovery(node.anchor.chain_id,
                                      lambda url, name: node.add_peer(url, f"mdns:{name}"),
                                      lambda url, name: node.remove_peer(url, f"mdns:{name}"),
                                      interfaces=list(self.cfg.node.discover_interfaces) or None)
                await discovery.start()
            self.node = node
            watcher = asyncio.create_task(self._watch_node(node, store, stop))
            await node.run(stop_at_tip=False, stall_timeout_s=None, stop=self.stop)
        finally:
            if discovery is not None:
                with contextlib.suppress(Exception):
                    await discovery.stop()
            await self._end_node_task(stop, watcher, store)

    async def _open_store(self) -> Any:
        from .node.store import HeaderStore, StoreCorrupt

        self.cfg.node_dir.mkdir(parents=True, exist_ok=True)
        path = self.cfg.node_dir / "headers.sqlite"
        try:
            return await asyncio.to_thread(HeaderStore.open, path)
        except StoreCorrupt as exc:
            # docs/light-node.md: move a damaged store aside and sync again from the anchor
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{path}{suffix}", f"{aside}{suffix}")
            raise RuntimeError(f"the header store was damaged ({exc}); moved to {aside}, "
                               "syncing again from the trust anchor") from None

    async def _fisco_node_task(self) -> None:
        """The FISCO BCOS 3.x light node (appliance.node.fisco), synced continuously: one
        round to the nodes' tip, then rounds that each end after :data:`FISCO_ROUND_S`
        without a new block (a sealer change raises its alarm when a round ends)."""
        from .node.errors import LedgerError
        from .node.fisco.anchor import decode_anchor
        from .node.fisco.cli import _write_peers
        from .node.fisco.client import FiscoNodeSync, StoreMismatch
        from .node.fisco.sync import BanPeer

        chain = self.cfg.chain
        trust = self.cfg.trust_path
        try:
            anchor = decode_anchor(trust.read_bytes())
        except OSError as exc:
            raise RuntimeError(f"cannot read the trust anchor {trust}: "
                               f"{exc.strerror or exc}") from None
        except LedgerError as exc:
            raise RuntimeError(f"{trust} is not a FISCO trust anchor: {exc}") from None
        if anchor.group != chain.group:
            raise RuntimeError(f"chain.group {chain.group!r} is not the group of the trust "
                               f"anchor {trust} ({anchor.group!r})")
        store = await self._open_store()
        service = self

        class _Node(FiscoNodeSync):
            async def _apply(self, ev: object) -> None:  # audit the peer bans
                if isinstance(ev, BanPeer):
                    service.audit_event("peer_ban", peer=ev.peer, reason=ev.reason,
                                        detail=ev.detail[:500])
                await super()._apply(ev)

        stop = asyncio.Event()
        watcher: asyncio.Task[None] | None = None
        try:
            try:
                node = _Node(store, anchor)
            except StoreMismatch as exc:
                raise RuntimeError(f"{exc}: this terminal's header store is for another chain "
                                   f"or anchor; move {store.path} aside to sync this one"
                                   ) from None
            for url in chain.rpc:
                node.add_peer(url)
            self._anchor_height = anchor.height
            self.node = _NoLookups(store)  # the PAD's lookups: refused with the reason
            watcher = asyncio.create_task(self._watch_node(node, store, stop))
            said = ""
            while not self.stop.is_set():
                result = await node.run(stall_timeout_s=FISCO_ROUND_S, stop=self.stop)
                await asyncio.to_thread(_write_peers, self.cfg.node_dir / "peers.json",
                                        result.peers)
                idle = result.reason == "no_valid_chain" and result.peers and all(
                    p.get("state") == "ok" for p in result.peers)
                say = "" if result.ok or idle or result.reason == "stopped" else \
                    f"{result.reason}: {result.message}"
                if say != said:
                    if say:
                        log.warning("FISCO BCOS sync: %s", _one_line(say))
                    said = say
        finally:
            await self._end_node_task(stop, watcher, store)

    async def _end_node_task(self, stop: asyncio.Event, watcher: asyncio.Task[Any] | None,
                             store: Any) -> None:
        """What every node task does last (native or FISCO): stop its store watcher, forget
        the node, close the store."""
        stop.set()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        self.node = None
        self.readiness.set("node", "starting")
        await asyncio.to_thread(store.close)

    async def _watch_node(self, node: Any, store: Any, stop: asyncio.Event) -> None:
        """Readiness (a verified tip), and the equivocation alarm to the flow and the log."""
        def read() -> tuple[Any, list[Any]]:
            return (store.tip() if store.initialized else None), store.alarms()

        while not stop.is_set():
            tip, alarms = await asyncio.to_thread(read)
            if tip is not None:
                self._height = tip.height
                self.readiness.set("node", "ready", f"height {tip.height}")
            active = bool(alarms)
            detail = "; ".join(a.detail for a in alarms)
            if self._alarm != (active, detail):
                first = self._alarm is None
                self._alarm = (active, detail)
                if active:
                    self.audit_event("alarm", detail=detail[:500])
                elif not first:  # the operator's `appliance node clear-alarm` audits it
                    log.warning("alarm cleared; authorizations resume")
                if self.runner is not None:
                    self.runner.alarm_changed(active, detail or None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    # -- hsm -------------------------------------------------------------------------------

    async def _hsm_task(self) -> None:
        from .hsm.client import AsyncClient, Client
        from .hsm.errors import PinDefault

        if self.sim is not None:
            await self.sim.wait_hsm()
        device = self.cfg.hsm.device if self.sim is None else self.sim.hsm_device
        pin = read_pin(self.cfg) if self.sim is None else self.sim.hsm_pin
        client = Client(device, pin=pin)
        self._hsm_client = client
        try:
            aclient = AsyncClient(client)
            if (await aclient.info()).get("default_pin"):
                # It would refuse every signature (PIN_DEFAULT): say what to do, once, free
                # the port for the technician, and wait (a new PIN takes a restart).
                log.error("the crypto module on %s still has its factory PIN and refuses to "
                          "sign. %s", device, PinDefault.advice)
                self.readiness.set("hsm", "starting", "crypto module on its factory PIN")
                await asyncio.to_thread(client.close)
                await self.stop.wait()
                return
            if pin is not None:
                await aclient.login(pin)
                self.audit_event("login", device=device)
            from .node.tx import ModuleSigner

            # reads the device key's public key from the module (the key never leaves it)
            self.signer = await asyncio.to_thread(ModuleSigner, client, self.cfg.hsm.slot)
            if self.audit is not None:  # its own signer: counters are read per signer
                self.audit.signer = await asyncio.to_thread(ModuleSigner, client,
                                                            self.cfg.hsm.slot)
            self.readiness.set("hsm", "ready")
            log.info("crypto module ready on %s, device key in slot %d", device,
                     self.cfg.hsm.slot)
            while not self.stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 5.0)
                if not self.stop.is_set():
                    await aclient.info()  # raises when the module is gone: restarted
        except Exception as exc:
            if pin is not None and self.signer is None:
                self.audit_event("login_failed", device=device, error=type(exc).__name__)
            raise
        finally:
            self.signer = None
            if self.audit is not None:
                self.audit.signer = None
            self.readiness.set("hsm", "starting")
            self._hsm_client = None
            await asyncio.to_thread(client.close)

    # -- kiosk -----------------------------------------------------------------------------

    async def _kiosk_task(self) -> None:
        """The authorization flow, once its parts are there (the UI serves from the start).
        When the node or the module task restarts, the runner is rebuilt on the new one.
        On a chain that cannot carry authorizations it shows why instead."""
        if self.fisco:
            await self._unavailable_kiosk_task(FISCO_UNAVAILABLE, FISCO_UNAVAILABLE_VIEW_ERROR)
            return
        if self.cfg.terminal.role == "pad":
            await self._pad_task()
            return
        from .kiosk import runner as runner_mod

        while (parts := await self._node_and_signer()) is not None:
            node, signer = parts
            runner = await self._make_runner(runner_mod)
            self.runner = runner
            if self._alarm is not None and self._alarm[0]:
                runner.alarm_changed(True, self._alarm[1])
            if self.web is not None:
                self.web.attach_runner(runner)
            if self.sim is not None:
                self.sim.attach_runner(runner)
            self.readiness.set("kiosk", "ready")

            async def watch(runner: Any = runner, node: Any = node, signer: Any = signer
                            ) -> None:
                audit_ok, rounds = True, 0
                while self.node is node and self.signer is signer and not self.stop.is_set():
                    # an authorization that cannot be audited is not made (principle 9); a
                    # log that vanished or broke is found before the next citizen starts
                    if self.audit is not None and rounds % 4 == 0:
                        await asyncio.to_thread(self._check_audit)
                    rounds += 1
                    health = self.audit_health()
                    if health["ok"] != audit_ok:
                        audit_ok = health["ok"]
                        detail = f"{health.get('error', 'audit')}: {health.get('detail', '')}"
                        if not audit_ok:
                            log.error("audit log failing: authorizations paused (%s)", detail)
                        runner.alarm_changed(not audit_ok, detail, kind="audit")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), 0.5)
                if not self.stop.is_set():
                    log.info("light node or crypto module restarted: rebuilding the flow")
                runner.stop()

            watcher = asyncio.create_task(watch())
            try:
                await runner.run()
            finally:
                watcher.cancel()
                self.runner = None
                self.readiness.set("kiosk", "starting")
                with contextlib.suppress(Exception):
                    await runner.identity.close()

    async def _anchor_task(self) -> None:
        """The audit log's head deposited on chain once a day (appliance.audit_anchor)."""
        from .audit_anchor import DailyAnchor

        def ready() -> tuple[Any, bytes, Any] | None:
            enrollment = self._enrollment()
            if self.signer is None or self.node is None or enrollment is None:
                return None
            return self.signer, enrollment, self.node

        if self.audit is None:
            await self.stop.wait()
            return
        self.anchor = DailyAnchor(self.audit, ready)
        await self.anchor.run(self.stop)

    async def _node_and_signer(self) -> tuple[Any, Any] | None:
        """The light node and the module's signer once both are up; None once stopping."""
        while (self.node is None or self.signer is None) and not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.2)
        return None if self.stop.is_set() else (self.node, self.signer)

    def _enrollment(self) -> bytes | None:
        """This terminal's device.enroll tx_id (the simulated hall enrolls at set-up)."""
        return self.sim.enrollment if self.sim is not None else self.cfg.terminal.enrollment

    async def _pad_task(self) -> None:
        """A PAD: its desk (matters signed with the device key, the clerk way's confirmations
        on the staff card) once the light node and the module are up; rebuilt when either
        restarts."""
        from .kiosk.desk import ClerkCard, Desk
        from .node.references import References

        while (parts := await self._node_and_signer()) is not None:
            node, signer = parts
            enrollment = self._enrollment()
            if enrollment is None:
                self.readiness.set("kiosk", "unavailable", "terminal.enrollment is not set: "
                                   "this PAD cannot issue matters until it is enrolled")
                await self.stop.wait()
                return
            device, slot, clerk_enrollment = (self.sim.clerk if self.sim is not None else
                                              (self.cfg.clerk.device, self.cfg.clerk.slot,
                                               self.cfg.clerk.enrollment))
            card = None if device is None or clerk_enrollment is None else \
                ClerkCard(device, slot, clerk_enrollment)
            self.desk = Desk(signer=signer, enrollment=enrollment, references=References(node),
                             admins=tuple(node.anchor.admins), clerk_card=card)
            self.readiness.set("kiosk", "ready")
            try:
                while self.node is node and self.signer is signer and not self.stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), 0.5)
            finally:
                self.desk = None
                self.readiness.set("kiosk", "starting")

    def camera_frames(self) -> Any:
        """This terminal's camera: frames from the configured device (or the simulated
        hall's)."""
        return self.sim.camera() if self.sim is not None else self._camera()

    async def _unavailable_kiosk_task(self, reason: str, view_error: Mapping[str, Any]) -> None:
        stand_in = ChainUnavailable(view_error)
        if self.web is not None:
            self.web.attach_runner(stand_in)
        self.readiness.set("kiosk", "unavailable", reason)
        try:
            await self.stop.wait()
        finally:
            stand_in.stop()

    async def _make_runner(self, runner_mod: Any) -> Any:
        from .kiosk import flow as flow_mod
        from .kiosk import identity as identity_mod
        from .kiosk.capture.config import CaptureConfig

        cfg = self.cfg
        if self.sim is not None:
            await self.sim.wait_identity()
            key, name, url = (self.sim.identity_public_key, self.sim.identity_service,
                              self.sim.identity_url)
        else:
            key, name, url = cfg.identity.public_key, cfg.identity.service, cfg.identity.url
        if key is None:
            raise RuntimeError("identity.public_key is not configured")
        identity = identity_mod.IdentityClient(url, service_public_key=key, service_name=name)
        assert self.signer is not None
        from .kiosk.signed_matters import SignedMatters
        from .node.model import peer_id
        from .node.references import References

        terminal = peer_id(self.signer.public_key)
        flow = flow_mod.AuthorizationFlow(flow_mod.FlowConfig(), terminal_id=terminal,
                                          new_session=lambda: os.urandom(16),
                                          enrollment=self._enrollment())
        signed = await asyncio.to_thread(SignedMatters, self.cfg.state_dir / "signed-matters.json")
        # The alarm comes from _watch_node (runner.alarm_changed); the runner does not poll.
        return runner_mod.FlowRunner(
            flow, frames=self.camera_frames(), capture_config=CaptureConfig(),
            identity=identity, signer=self.signer, node=self.node, audit=_AuditSink(self),
            references=References(self.node), signed_matters=signed,
            identity_timeout_s=cfg.identity.timeout_s,
            capture_listener=None if self.sim is None else self.sim.capture_listener)

    def _camera(self) -> Any:
        from .kiosk.capture.sources import Camera, VideoCaptureSource

        cam = self.cfg.kiosk.camera
        return Camera(VideoCaptureSource(int(cam) if cam.isascii() and cam.isdigit() else cam))

    # -- for the web -----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {"ready": self.readiness.ready, "parts": dict(self.readiness.parts),
                "detail": {k: v for k, v in self.readiness.detail.items() if v},
                "tasks": self.supervisor.status(), "role": self.cfg.terminal.role,
                "sim": None if self.sim is None else self.sim.info(),
                "alarm": None if not (self._alarm and self._alarm[0]) else self._alarm[1],
                "chain": self._chain_health(), "authorizations": self._authorizations(),
                "audit": self.audit_health(),
                "uptime_s": round(time.monotonic() - self.readiness.started_at, 3)}

    def _chain_health(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": "fisco-bcos-3" if self.fisco else "native",
                               "height": self._height}
        if self.fisco:
            doc.update(group=self.cfg.chain.group, rpc=list(self.cfg.chain.rpc),
                       anchor_height=self._anchor_height)
        return doc

    def _authorizations(self) -> dict[str, Any]:
        if self.fisco:
            return {"available": False, "reason": FISCO_UNAVAILABLE}
        if self.cfg.terminal.role != "kiosk":
            return {"available": False, "reason": "a PAD issues matters; kiosks authorize"}
        if self.sim is None and self.cfg.terminal.enrollment is None:
            return {"available": False, "reason": "terminal.enrollment is not set: this "
                    "kiosk is not enrolled and signs nothing"}
        if self._alarm and self._alarm[0]:
            return {"available": False, "reason": f"alarm: {self._alarm[1]}"}
        audit = self.audit_health()
        if not audit["ok"]:  # the kiosk shows blocked_audit (nothing unaudited is authorized)
            return {"available": False,
                    "reason": f"audit log: {audit.get('error', 'failed')}: "
                              f"{audit.get('detail', '')}"}
        return {"available": self.runner is not None,
                "reason": None if self.runner is not None else "starting"}


def run(cfg: Config, *, sim: bool = False) -> int:
    """``appliance run``: blocks until SIGTERM/SIGINT; the exit status. With ``sim`` the
    simulated hall (hil.sim_hall) runs two daemons in this process: its kiosk and its PAD."""
    setup_logging(cfg.log.level)

    async def main() -> int:
        hall = None
        if sim:
            from hil.sim_hall import SimHall

            if cfg.chain.fisco:
                log.warning("--sim: the simulated hall runs a native-ledger chain; chain.kind "
                            "= %s is not used", cfg.chain.kind)
            hall = SimHall(cfg)
            apps = [Appliance(t.config, sim=t) for t in hall.terminals]
        else:
            apps = [Appliance(cfg)]
        loop = asyncio.get_running_loop()

        def stop_all() -> None:
            for app in apps:
                app.request_stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop_all)
        if hall is not None:
            hall.start_background()
            print(f"appliance: simulated service hall (test fixtures, files in {hall.dir}); "
                  "Ctrl-C stops it", file=sys.stderr, flush=True)
        try:
            codes = await asyncio.gather(*(app.run(signals=False) for app in apps))
        finally:
            if hall is not None:
                await hall.stop()
        code = max(codes)
        # the CLI's one JSON object: how the run ended
        print(json.dumps({"ok": code == 0, "reason": "stopped", "sim": sim,
                          "uptime_s": round(time.monotonic() - apps[0].readiness.started_at, 3),
                          "restarts": {f"{app.cfg.terminal.role}.{n}" if sim else n:
                                       r["restarts"] for app in apps
                                       for n, r in app.supervisor.status().items()}},
                         sort_keys=True), flush=True)
        return code

    return asyncio.run(main())
