"""The light node's peer table: district nodes it may ask, their state, bans with backoff.

Pure bookkeeping, no I/O and no clock: every method that depends on time takes ``now_ms``.
The sync machine (:mod:`appliance.node.sync`) owns one table; the adapter and discovery feed it.

- **No duplicates.** A peer is keyed by its *normalised* base URL (:func:`normalize_url`):
  ``HTTP://Node-1.local:80/`` and ``http://node-1.local`` are one peer. A peer found both by
  mDNS and in the static configuration is one entry with two sources; it leaves the table when
  its last source goes.
- **Configured and discovered.** A source that starts with :data:`DISCOVERED` (``mdns:``) is a
  discovery; any other (``static``, ``sim``) is configuration. A peer is *discovered* when all
  its sources are discoveries. Configured peers are always admitted, never displaced, and come
  first wherever peers are listed (then URL order).
- **A bound on discovered peers** (``max_discovered``, default 16): an announcement costs an
  attacker on the LAN nothing, so the table admits at most that many discovered peers. A new
  one while the bound is reached raises :class:`PeerTableFull`; the caller may then drop
  :meth:`PeerTable.eviction_candidate` (the worst *failing* discovered peer: banned, or back
  from a ban without having served verified data since) and add it again. A working (``ok``),
  never-asked (``new``) or ``conflict`` peer is never a candidate, so a flood of announcements
  cannot push out a node that works. A peer keeps at most :data:`MAX_SOURCES` discovery
  sources (more instance names for one URL are not recorded).
- **States.** ``new`` (never asked, or back from a ban: its ``/v1/info`` is due), ``ok`` (it
  answered ``/v1/info`` for our chain), ``banned`` (until ``banned_until_ms``), ``conflict``
  (it serves a branch that conflicts with our verified chain under valid commits: an
  equivocation, see sync.py; never asked again for headers, kept for the operator to see).
- **Bans.** A peer that serves anything invalid, or that times out or is unreachable, is banned
  for ``min(base_ms * factor ** (strikes - 1), max_ms)``; ``strikes`` counts the bans since it
  last served verified data. The schedule has no jitter, so it is a function of ``now_ms`` and
  the history (tests replay it exactly); a light node has few peers and no thundering herd to
  spread. When the ban expires the peer goes back to ``new`` and is retried.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = [
    "BANNED", "CONFLICT", "DEFAULT_BAN_BASE_MS", "DEFAULT_BAN_FACTOR", "DEFAULT_BAN_MAX_MS",
    "DEFAULT_MAX_DISCOVERED", "DISCOVERED", "MAX_SOURCES", "NEW", "OK", "STATES", "Peer",
    "PeerTable", "PeerTableFull", "is_discovery", "normalize_url",
]

NEW, OK, BANNED, CONFLICT = "new", "ok", "banned", "conflict"
STATES = (NEW, OK, BANNED, CONFLICT)

DEFAULT_BAN_BASE_MS = 2_000
DEFAULT_BAN_FACTOR = 2
DEFAULT_BAN_MAX_MS = 300_000
#: Sources that start with this are discoveries (``mdns:<instance name>``).
DISCOVERED = "mdns:"
DEFAULT_MAX_DISCOVERED = 16
#: Discovery sources recorded per peer: one URL announced under many names is still one peer.
MAX_SOURCES = 8
_MAX_URL = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_url(url: str) -> str:
    """The canonical form of a district node's base URL; ValueError if it is not one.

    ``http`` or ``https`` only; the host is lowercased (an IPv6 literal compressed and
    bracketed, a trailing dot dropped); the default port is dropped; the path keeps its case
    and loses its trailing slashes; user info, query and fragment are refused.
    """
    if not isinstance(url, str) or not url or len(url) > _MAX_URL:
        raise ValueError(f"not a peer URL: {url!r:.80}")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a peer URL: {url!r:.80} ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"peer URL must be http:// or https://: {url!r:.80}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"peer URL must not carry credentials: {url!r:.80}")
    if parts.query or parts.fragment:
        raise ValueError(f"peer URL must not have a query or fragment: {url!r:.80}")
    host = parts.hostname
    if not host:
        raise ValueError(f"peer URL without a host: {url!r:.80}")
    host = host.rstrip(".")
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        if not host or any(c in host for c in " /\\@[]"):
            raise ValueError(f"bad host in peer URL: {url!r:.80}") from None
    else:
        host = f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = parts.path.rstrip("/")
    return f"{scheme}://{netloc}{path}"


def is_discovery(source: str) -> bool:
    """Whether ``source`` is a discovery (as opposed to configuration)."""
    return source.startswith(DISCOVERED)


class PeerTableFull(Exception):
    """A discovered peer was not admitted: the table holds ``limit`` discovered peers."""

    def __init__(self, url: str, limit: int) -> None:
        super().__init__(f"{url}: the table already holds {limit} discovered peers")
        self.url = url
        self.limit = limit


@dataclass
class Peer:
    """One district node. ``height``/``tip_id``/... are its last ``/v1/info`` claims (untrusted)."""

    url: str
    sources: set[str] = field(default_factory=set)
    state: str = NEW
    strikes: int = 0
    bans: int = 0
    banned_until_ms: int | None = None
    last_reason: str | None = None
    height: int | None = None
    tip_id: bytes | None = None
    peer_id: bytes | None = None
    district: str | None = None
    software: str | None = None
    info_at_ms: int | None = None
    verified_headers: int = 0

    @property
    def discovered(self) -> bool:
        """Known only through discovery (no configured source)."""
        return bool(self.sources) and all(is_discovery(s) for s in self.sources)

    @property
    def failing(self) -> bool:
        """Banned now, or back from a ban without having served verified data since."""
        return self.state == BANNED or (self.state == NEW and self.strikes > 0)

    def to_json(self) -> dict:
        """A JSON-able summary (for ``appliance node status`` and logs)."""
        return {
            "url": self.url, "sources": sorted(self.sources), "state": self.state,
            "strikes": self.strikes, "bans": self.bans, "banned_until_ms": self.banned_until_ms,
            "last_reason": self.last_reason, "height": self.height,
            "tip_id": None if self.tip_id is None else self.tip_id.hex(),
            "peer_id": None if self.peer_id is None else self.peer_id.hex(),
            "district": self.district, "software": self.software,
            "info_at_ms": self.info_at_ms, "verified_headers": self.verified_headers,
        }  # fmt: skip


class PeerTable:
    """Peers keyed by normalised URL, with the ban schedule. See the module docstring."""

    def __init__(self, *, ban_base_ms: int = DEFAULT_BAN_BASE_MS,
                 ban_factor: int = DEFAULT_BAN_FACTOR,
                 ban_max_ms: int = DEFAULT_BAN_MAX_MS,
                 max_discovered: int = DEFAULT_MAX_DISCOVERED) -> None:
        if ban_base_ms < 1 or ban_factor < 1 or ban_max_ms < ban_base_ms:
            raise ValueError("need ban_base_ms >= 1, ban_factor >= 1, ban_max_ms >= ban_base_ms")
        self.max_discovered = max_discovered
        self.ban_base_ms = ban_base_ms
        self.ban_factor = ban_factor
        self.ban_max_ms = ban_max_ms
        self._peers: dict[str, Peer] = {}

    # -- membership -------------------------------------------------------------------------

    @property
    def max_discovered(self) -> int:
        return self._max_discovered

    @max_discovered.setter
    def max_discovered(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("max_discovered must be an integer >= 1")
        self._max_discovered = value

    def add(self, url: str, source: str = "static") -> tuple[Peer, bool]:
        """Add a peer (or a source to a known one); returns (peer, True if it is new).

        ValueError for a bad URL; :class:`PeerTableFull` for a new discovered peer while
        :attr:`max_discovered` are held (nothing changes then)."""
        key = normalize_url(url)
        peer = self._peers.get(key)
        if peer is not None:
            if is_discovery(source) and source not in peer.sources and \
                    sum(map(is_discovery, peer.sources)) >= MAX_SOURCES:
                return peer, False
            peer.sources.add(source)
            return peer, False
        if is_discovery(source) and self.discovered_count() >= self.max_discovered:
            raise PeerTableFull(key, self.max_discovered)
        peer = Peer(key, {source})
        self._peers[key] = peer
        return peer, True

    def remove(self, url: str, source: str | None = None) -> bool:
        """Drop ``source`` from the peer (every source if None); the peer leaves the table when
        none is left. True if it left."""
        key = normalize_url(url)
        peer = self._peers.get(key)
        if peer is None:
            return False
        if source is None:
            peer.sources.clear()
        else:
            peer.sources.discard(source)
        if peer.sources:
            return False
        del self._peers[key]
        return True

    def get(self, url: str) -> Peer | None:
        try:
            return self._peers.get(normalize_url(url))
        except ValueError:
            return None

    def __contains__(self, url: object) -> bool:
        return isinstance(url, str) and self.get(url) is not None

    def __iter__(self) -> Iterator[Peer]:
        """Configured peers first, then discovered ones; each in URL order."""
        return iter(sorted(self._peers.values(), key=_order))

    def discovered_count(self) -> int:
        return sum(1 for p in self._peers.values() if p.discovered)

    def eviction_candidate(self) -> Peer | None:
        """The discovered peer to drop for a new discovery when the bound is reached: the
        failing one with the most strikes (then the most bans, then the last URL); None when
        no discovered peer is failing (then the new one is refused)."""
        failing = [p for p in self._peers.values() if p.discovered and p.failing]
        return max(failing, key=lambda p: (p.strikes, p.bans, p.url), default=None)

    def __len__(self) -> int:
        return len(self._peers)

    # -- bans -------------------------------------------------------------------------------

    def backoff_ms(self, strikes: int) -> int:
        """Length of the ``strikes``-th consecutive ban (strikes >= 1)."""
        if strikes < 1:
            raise ValueError("strikes must be >= 1")
        # Cap the exponent: the product is compared with the max anyway.
        exponent = min(strikes - 1, 64)
        return min(self.ban_base_ms * self.ban_factor ** exponent, self.ban_max_ms)

    def ban(self, url: str, reason: str, now_ms: int) -> Peer:
        """Ban the peer for its next backoff. A peer already banned stays banned until its
        current deadline (a late answer to an old request is not a new strike)."""
        peer = self._need(url)
        if peer.state == BANNED and peer.banned_until_ms is not None \
                and peer.banned_until_ms > now_ms:
            return peer
        peer.strikes += 1
        peer.bans += 1
        peer.state = BANNED
        peer.banned_until_ms = now_ms + self.backoff_ms(peer.strikes)
        peer.last_reason = reason
        return peer

    def mark_conflict(self, url: str, reason: str) -> Peer:
        peer = self._need(url)
        peer.state = CONFLICT
        peer.last_reason = reason
        peer.banned_until_ms = None
        return peer

    def good(self, url: str, headers: int = 0) -> None:
        """The peer served data that verified: its strikes are forgiven."""
        peer = self._peers.get(url)
        if peer is not None:
            peer.strikes = 0
            peer.verified_headers += headers

    def expire(self, now_ms: int) -> list[Peer]:
        """Peers whose ban has run out go back to ``new`` (to be retried); returns them."""
        back = []
        for peer in self._peers.values():
            if peer.state == BANNED and peer.banned_until_ms is not None \
                    and peer.banned_until_ms <= now_ms:
                peer.state = NEW
                peer.banned_until_ms = None
                peer.height = peer.tip_id = None
                peer.info_at_ms = None
                back.append(peer)
        return back

    def next_expiry(self) -> int | None:
        """The earliest ban deadline, or None."""
        times = [p.banned_until_ms for p in self._peers.values()
                 if p.state == BANNED and p.banned_until_ms is not None]
        return min(times) if times else None

    def usable(self) -> list[Peer]:
        """Peers that answered /v1/info for our chain and are neither banned nor in conflict:
        configured first, then discovered; each in URL order."""
        return [p for p in self if p.state == OK]

    def snapshot(self) -> list[dict]:
        return [p.to_json() for p in self]

    def _need(self, url: str) -> Peer:
        peer = self.get(url)
        if peer is None:
            raise KeyError(url)
        return peer


def _order(peer: Peer) -> tuple[bool, str]:
    return peer.discovered, peer.url
