"""Finding district nodes on the hall's LAN by mDNS/DNS-SD (protocol §7 "Discovery").

District nodes announce ``_gov-ledger._tcp.local.`` with TXT keys ``chain=<chain_id>``,
``proto=1``, ``district=<name>``, ``peer=<peer_id hex>``. :class:`Discovery` browses for that
type with python-zeroconf (``AsyncServiceBrowser``), resolves each instance, keeps those of our
chain and protocol and hands their base URL (``http://address:port``) to a callback; when an
instance goes away (or moves) the callback for removal is called. Instances of another chain
or protocol, or without an address, are ignored (and logged once).

Discovery is untrusted (§7): it only says where to ask. A spoofed announcement can at worst add
a peer, which the sync machine verifies like any other and bans if it serves anything invalid.
The peer table deduplicates URLs, so a node that is both configured and announced is one peer.

``interfaces`` is passed to zeroconf: ``["127.0.0.1"]`` keeps everything on loopback (tests,
the HIL rig); the default is every interface.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["PROTOCOL", "SERVICE_TYPE", "Discovery", "url_for_service"]

log = logging.getLogger("appliance.node.discovery")

SERVICE_TYPE = "_gov-ledger._tcp.local."
PROTOCOL = "1"
RESOLVE_TIMEOUT_MS = 3000


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
    name)`` are called in the event loop that called :meth:`start`."""

    def __init__(self, chain_id: str, on_add: Callable[[str, str], None],
                 on_remove: Callable[[str, str], None], *,
                 interfaces: list[str] | None = None) -> None:
        self.chain_id = chain_id
        self.on_add = on_add
        self.on_remove = on_remove
        self.interfaces = interfaces
        self.found: dict[str, str] = {}  # instance name -> URL
        self.ignored: dict[str, str] = {}  # instance name -> why
        self._aiozc: Any = None
        self._browser: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        from zeroconf import InterfaceChoice, IPVersion
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

        self._loop = asyncio.get_running_loop()
        if self.interfaces is None:
            self._aiozc = AsyncZeroconf(interfaces=InterfaceChoice.All)
        else:
            v4 = all(":" not in i for i in self.interfaces)
            self._aiozc = AsyncZeroconf(interfaces=self.interfaces,
                                        ip_version=IPVersion.V4Only if v4 else None)
        self._browser = AsyncServiceBrowser(self._aiozc.zeroconf, SERVICE_TYPE,
                                            handlers=[self._on_change])
        log.info("browsing for %s (chain %s) on %s", SERVICE_TYPE, self.chain_id,
                 "all interfaces" if self.interfaces is None else ", ".join(self.interfaces))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._aiozc is not None:
            await self._aiozc.async_close()
            self._aiozc = None

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
            self._forget(name)
            return
        task = asyncio.ensure_future(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        if self._aiozc is None:
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        try:
            ok = await info.async_request(self._aiozc.zeroconf, RESOLVE_TIMEOUT_MS)
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
            self.ignored[name] = why
            self._forget(name)
            return
        old = self.found.get(name)
        if old == url:
            return
        if old is not None:
            self._forget(name)
        self.found[name] = url
        log.info("found %s at %s", name, url)
        self.on_add(url, name)

    def _forget(self, name: str) -> None:
        url = self.found.pop(name, None)
        if url is not None:
            log.info("%s at %s went away", name, url)
            self.on_remove(url, name)
