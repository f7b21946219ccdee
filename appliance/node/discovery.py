"""Finding district nodes on the hall's LAN by mDNS/DNS-SD (protocol §7 "Discovery").

District nodes announce ``_gov-ledger._tcp.local.`` with TXT keys ``chain=<chain_id>``,
``proto=1``, ``district=<name>``, ``peer=<peer_id hex>``. :class:`Discovery` browses for that
type with python-zeroconf (``AsyncServiceBrowser``), resolves each instance, keeps those of our
chain and protocol and hands their base URL (``http://address:port``) to a callback. Instances
of another chain or protocol, or without an address, are ignored (and logged once).

Discovery is untrusted (§7): it only says where to ask. A spoofed announcement can at worst add
a peer, which the sync machine verifies like any other and bans if it serves anything invalid;
the peer table bounds how many discovered peers it holds (:mod:`appliance.node.peers`). The
peer table deduplicates URLs, so a node that is both configured and announced is one peer.

**Nothing unauthenticated takes a peer away.** mDNS has no authentication: anyone on the LAN
can send a goodbye (a record with TTL 0) for any instance, or re-announce it with another chain,
protocol or address. So when an instance is removed (a goodbye, or its records expired), or its
announcement stops naming our chain, or it moves to another URL, the URL it had is *probed*
(``GET /v1/info``, :data:`PROBE_LIMITS`): ``on_remove(url, name)`` is called only if the probe
fails (no answer, not 200, not an info of our chain). A URL that answers is probed once more
:data:`RECHECK_S` later (a node that says goodbye as it shuts down may still be closing), and
stays a peer if it answers again; if it dies later it fails and is banned like any peer, and
then gives way to new discoveries.

The instances found are offered to ``on_add`` again every ``reoffer_s`` seconds (the callback
must be idempotent): a node the peer table refused while full gets in once a place frees up.
At most :data:`MAX_INSTANCES` instances are remembered, found or ignored, and at most
:data:`MAX_PENDING` resolutions and probes run at once: a flood of announcements costs bounded
memory.

``interfaces`` is passed to zeroconf: ``["127.0.0.1"]`` keeps everything on loopback (tests,
the HIL rig); the default is every interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import sync
from .client import FetchError, Limits, fetch, new_session
from .errors import MalformedError

__all__ = ["MAX_INSTANCES", "PROBE_LIMITS", "PROTOCOL", "SERVICE_TYPE", "Discovery",
           "url_for_service"]

log = logging.getLogger("appliance.node.discovery")

SERVICE_TYPE = "_gov-ledger._tcp.local."
PROTOCOL = "1"
RESOLVE_TIMEOUT_MS = 3000
#: Instances remembered (found, and ignored, each) and tasks (resolutions, probes) at once.
MAX_INSTANCES = 256
MAX_PENDING = 64
#: How often the instances found are offered to ``on_add`` again.
REOFFER_S = 10.0
#: A URL that still answers the probe after a goodbye is probed once more this much later.
RECHECK_S = 5.0


#: Transport limits of a probe: a node that does not answer /v1/info in 5 s is gone.
PROBE_LIMITS = Limits(connect_timeout_s=2.0, headers_timeout_s=3.0, total_timeout_s=5.0,
                      idle_timeout_s=2.0, connections_per_peer=1)


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def url_for_service(properties: Mapping[Any, Any], addresses: Iterable[str], port: int | None,
                    chain_id: str) -> tuple[str | None, str]:
    """The base URL of an announced instance, or (None, why it is ignored).

    ``properties`` are the TXT keys (bytes or text), ``addresses`` textual IP addresses. An
    IPv4 address is preferred (a link-local IPv6 one needs a scope the URL cannot carry).
    """
    props = {_text(k): _text(v) for k, v in properties.items()}
    chain = props.get("chain")
    if chain != chain_id:
        return None, f"chain {chain!r}"
    if props.get("proto") != PROTOCOL:
        return None, f"protocol {props.get('proto')!r}"
    if not port or not 0 < port < 65536:
        return None, "no port"
    ips = []
    for a in addresses:
        try:
            ips.append(ipaddress.ip_address(a.split("%", 1)[0]))
        except ValueError:
            continue
    ips.sort(key=lambda ip: (ip.version, ip.is_link_local))
    if not ips:
        return None, "no address"
    ip = ips[0]
    host = ip.compressed if ip.version == 4 else f"[{ip.compressed}]"
    return f"http://{host}:{port}", ""


class Discovery:
    """Browse for district nodes of ``chain_id``; ``on_add(url, name)`` / ``on_remove(url,
    name)`` are called in the event loop that called :meth:`start`.

    ``found`` maps instance names to the URL last announced; ``ignored`` the names ignored to
    why; ``probes`` keeps the last probes as ``(name, url, alive)``, newest last.
    """

    def __init__(self, chain_id: str, on_add: Callable[[str, str], object],
                 on_remove: Callable[[str, str], object], *,
                 interfaces: list[str] | None = None, reoffer_s: float = REOFFER_S,
                 recheck_s: float = RECHECK_S) -> None:
        self.chain_id = chain_id
        self.on_add = on_add
        self.on_remove = on_remove
        self.interfaces = interfaces
        self.reoffer_s = reoffer_s
        self.recheck_s = recheck_s
        self.found: dict[str, str] = {}  # instance name -> URL
        self.ignored: dict[str, str] = {}  # instance name -> why
        self.probes: deque[tuple[str, str, bool]] = deque(maxlen=MAX_INSTANCES)
        self._aiozc: Any = None
        self._browser: Any = None
        self._session: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()
        self._probing: set[tuple[str, str]] = set()
        self._reoffer: asyncio.Task | None = None

    async def start(self) -> None:
        """Start browsing; on failure nothing is left open (the error is raised)."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        from zeroconf import DNSQuestionType, InterfaceChoice, IPVersion
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

        self._loop = asyncio.get_running_loop()
        if self.interfaces is None:
            self._aiozc = AsyncZeroconf(interfaces=InterfaceChoice.All)
        else:
            v4 = all(":" not in i for i in self.interfaces)
            self._aiozc = AsyncZeroconf(interfaces=self.interfaces,
                                        ip_version=IPVersion.V4Only if v4 else None)
        self._session = new_session(PROBE_LIMITS)
        # Multicast questions only (QM): a unicast answer to a first QU question goes to
        # whichever socket holds port 5353 on this host, which is not always ours (another
        # mDNS stack, another browser), and the next question comes a second later.
        self._browser = AsyncServiceBrowser(self._aiozc.zeroconf, SERVICE_TYPE,
                                            handlers=[self._on_change],
                                            question_type=DNSQuestionType.QM)
        self._reoffer = asyncio.create_task(self._offer_again())
        log.info("browsing for %s (chain %s) on %s", SERVICE_TYPE, self.chain_id,
                 "all interfaces" if self.interfaces is None else ", ".join(self.interfaces))

    async def stop(self) -> None:
        for task in [self._reoffer, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [self._reoffer, *self._tasks] if t is not None],
                             return_exceptions=True)
        self._reoffer = None
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._aiozc is not None:
            await self._aiozc.async_close()
            self._aiozc = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Discovery:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # zeroconf calls handlers with keyword arguments, from its own loop: hop to ours.
    def _on_change(self, zeroconf: Any, service_type: str, name: str, state_change: Any
                   ) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._schedule, name, state_change.name)

    def _schedule(self, name: str, change: str) -> None:
        if change == "Removed":
            url = self.found.get(name)
            if url is not None:
                log.info("%s at %s said goodbye (or expired): probing it", name, url)
                self._retire(name, url)
            return
        self._spawn(self._resolve(name), f"resolve {name}")

    def _spawn(self, coro: Any, what: str) -> bool:
        """Run ``coro`` as a task unless :data:`MAX_PENDING` are running; whether it runs."""
        if len(self._tasks) >= MAX_PENDING:
            coro.close()
            log.warning("discovery busy (%d tasks): %s skipped", len(self._tasks), what)
            return False
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _resolve(self, name: str) -> None:
        from zeroconf import DNSQuestionType
        from zeroconf.asyncio import AsyncServiceInfo

        if self._aiozc is None:
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        try:
            ok = await info.async_request(self._aiozc.zeroconf, RESOLVE_TIMEOUT_MS,
                                          question_type=DNSQuestionType.QM)
        except Exception as exc:  # a malformed record, a closing socket: nothing to add
            log.info("could not resolve %s: %s", name, exc)
            return
        if not ok:
            log.info("could not resolve %s in %d ms", name, RESOLVE_TIMEOUT_MS)
            return
        url, why = url_for_service(info.properties or {}, info.parsed_scoped_addresses(),
                                   info.port, self.chain_id)
        if url is None:
            if self.ignored.get(name) != why:
                log.info("ignoring %s: %s", name, why)
            self._remember(self.ignored, name, why)
            old = self.found.get(name)
            if old is not None:  # it says it is no longer ours: believe it once it is gone
                self._retire(name, old)
            return
        self.ignored.pop(name, None)
        old = self.found.get(name)
        if old == url:
            return
        if old is None and len(self.found) >= MAX_INSTANCES:
            log.warning("not following %s at %s: %d instances already", name, url,
                        MAX_INSTANCES)
            return
        self.found[name] = url
        log.info("found %s at %s", name, url)
        self.on_add(url, name)
        if old is not None:  # it moved: the old address goes when it no longer answers
            self._retire(name, old)

    @staticmethod
    def _remember(table: dict[str, str], name: str, value: str) -> None:
        table.pop(name, None)
        table[name] = value
        while len(table) > MAX_INSTANCES:
            del table[next(iter(table))]

    def _retire(self, name: str, url: str) -> None:
        """Probe ``url``; forget it (``on_remove``) only if it does not answer."""
        if (name, url) in self._probing:
            return
        self._probing.add((name, url))
        if not self._spawn(self._probe_then_forget(name, url), f"probe of {url}"):
            self._probing.discard((name, url))  # kept; the next goodbye or change probes it

    async def _probe_then_forget(self, name: str, url: str) -> None:
        alive, why = True, ""
        try:
            for attempt in range(2):
                if attempt:  # a node that says goodbye may take a moment to close
                    await asyncio.sleep(self.recheck_s)
                alive, why = await self.probe(url)
                self.probes.append((name, url, alive))
                if not alive:
                    break
        finally:
            self._probing.discard((name, url))
        if alive:
            log.warning("%s at %s still answers /v1/info for chain %s: kept (an mDNS goodbye "
                        "or change is not authenticated)", name, url, self.chain_id)
            return
        if self.found.get(name) == url:
            del self.found[name]
        log.info("%s at %s went away (%s)", name, url, why)
        self.on_remove(url, name)

    async def probe(self, url: str) -> tuple[bool, str]:
        """Whether ``url`` answers ``GET /v1/info`` with an info of our chain; and if not,
        why."""
        if self._session is None:
            return False, "discovery stopped"
        req = sync.Request(0, url, "info", "/v1/info", sync.MAX_INFO_BYTES)
        try:
            status, body = await fetch(self._session, req, PROBE_LIMITS)
        except FetchError as exc:
            return False, str(exc)
        if status != 200:
            return False, f"HTTP {status}"
        try:
            info = sync.decode_info(body)
        except MalformedError as exc:
            return False, f"/v1/info: {exc}"
        if info.chain_id != self.chain_id:
            return False, f"it serves chain {info.chain_id!r}"
        return True, ""

    async def _offer_again(self) -> None:
        while True:
            await asyncio.sleep(self.reoffer_s)
            for name, url in list(self.found.items()):
                with contextlib.suppress(ValueError):
                    self.on_add(url, name)
