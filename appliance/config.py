"""The appliance's configuration: one TOML file, typed, every key with a documented default.

Where it comes from (first that applies): ``--config FILE``, ``$APPLIANCE_CONFIG``, the
default ``/etc/appliance/appliance.toml``. A missing *default* file means "all defaults" (so
``appliance run --sim`` works on a laptop); a missing file that was asked for is an error.

Validation is strict: an unknown section or key, a wrong type or a value out of range raises
:class:`ConfigError` naming the key (``node.peers[1]: ...``), so a typo never silently falls
back to a default. The kiosk's HTTP server may listen on a loopback address only: the UI is
for the Chromium on the same terminal, never the hall's network.

The reference with every default is docs/operations.md; :data:`DEFAULTS_TOML` is the same
file as text (``appliance run --print-config``-style output and the tests use it).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("/etc/appliance/appliance.toml")
DEFAULT_STATE = Path("/var/lib/appliance")
MAX_CONFIG_BYTES = 1 << 20
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
NATIVE, FISCO = "native", "fisco-bcos-3"
CHAIN_KINDS = (NATIVE, FISCO)
MAX_RPC_URLS = 64
MAX_DISCOVERED_PEERS = 256
_GROUP = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # as a FISCO anchor's group


class ConfigError(ValueError):
    """A configuration that cannot be used; ``key`` is the dotted key at fault (or None)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class NodeConfig:
    trust: Path | None = None  # the trust anchor (canonical CBOR); None: STATE/trust.cbor
    peers: tuple[str, ...] = ()  # static district-node URLs
    discover: bool = True  # mDNS discovery of district nodes
    discover_interfaces: tuple[str, ...] = ()  # empty: every interface
    max_discovered_peers: int = 16  # discovered peers held at most (static ones not counted)


@dataclass(frozen=True, slots=True)
class ChainConfig:
    """Which chain the light node follows: this project's ledger (``native``, its district
    nodes in ``[node]``) or a FISCO BCOS 3.x chain in gm mode (``fisco-bcos-3``: its nodes'
    JSON-RPC URLs and group here). The trust anchor is ``node.trust`` for both."""

    kind: str = NATIVE
    rpc: tuple[str, ...] = ()  # fisco-bcos-3: JSON-RPC URLs of the chain's nodes
    group: str = "group0"  # fisco-bcos-3: the group (must be the anchor's)

    @property
    def fisco(self) -> bool:
        return self.kind == FISCO


@dataclass(frozen=True, slots=True)
class HsmConfig:
    device: str = "/dev/gmcrypto0"  # a tty path or a pyserial URL
    slot: int = 0  # the device key's slot (0..15)
    pin_file: Path | None = None  # the PIN, read from this file (first line) ...
    pin_env: str = "APPLIANCE_HSM_PIN"  # ... else from this environment variable
    vendor_id: str = "1209"  # udev match for hotplug
    model_id: str = "a5e1"


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    url: str = "http://127.0.0.1:8090"
    public_key: bytes | None = None  # 65-byte SM2 key of the service; None: not configured
    service: str = "identity-service"  # the name its attestations carry
    timeout_s: float = 15.0


@dataclass(frozen=True, slots=True)
class TerminalConfig:
    """What this terminal is: its ``role`` decides which pages and API routes the daemon
    serves (the citizen's kiosk, or the clerk's PAD), and ``enrollment`` is the tx_id of its
    ``device.enroll`` (written at enrollment; until then nothing is signed)."""

    role: str = "kiosk"  # kiosk (citizen) or pad (clerk)
    enrollment: bytes | None = None


@dataclass(frozen=True, slots=True)
class ClerkConfig:
    """PAD only: the clerks' key is on a staff card (a crypto module of its own, never the
    PAD's device key), unlocked by the clerk's PIN at each confirmation."""

    device: str | None = None  # the staff card's tty or pyserial URL; None: no clerk way
    slot: int = 0
    enrollment: bytes | None = None  # tx_id of the clerk key's device.enroll (role clerk)


@dataclass(frozen=True, slots=True)
class KioskConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    elder_mode: bool = False  # start in elder mode (larger type, higher contrast)
    camera: str = "0"  # a device index, /dev/v4l/by-id/... path, file or URL

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


@dataclass(frozen=True, slots=True)
class AuditConfig:
    retention_days: int = 190  # the municipal platform asks for more than six months
    path: Path | None = None  # the log's directory; None: STATE/audit


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"


@dataclass(frozen=True, slots=True)
class Config:
    state_dir: Path = DEFAULT_STATE
    chain: ChainConfig = field(default_factory=ChainConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    hsm: HsmConfig = field(default_factory=HsmConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    terminal: TerminalConfig = field(default_factory=TerminalConfig)
    clerk: ClerkConfig = field(default_factory=ClerkConfig)
    kiosk: KioskConfig = field(default_factory=KioskConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: Path | None = None  # the file read, None for built-in defaults

    @property
    def trust_path(self) -> Path:
        """``node.trust``; by default STATE/trust.cbor (native, canonical CBOR) or
        STATE/trust.json (fisco-bcos-3, the FISCO anchor's JSON)."""
        default = "trust.json" if self.chain.fisco else "trust.cbor"
        return self.node.trust or self.state_dir / default

    @property
    def audit_path(self) -> Path:
        return self.audit.path or self.state_dir / "audit"

    @property
    def node_dir(self) -> Path:
        return self.state_dir / "node"

    def with_port(self, port: int) -> Config:
        """The same configuration listening on ``port`` (``appliance run --port``)."""
        _check_port(port, "kiosk.listen")
        return replace(self, kiosk=replace(self.kiosk, listen_port=port))

    def to_json(self) -> dict[str, Any]:
        """JSON-safe (paths as text, key as hex); no secret is held here to leak."""
        def conv(v: Any) -> Any:
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, bytes):
                return v.hex()
            if isinstance(v, tuple):
                return [conv(x) for x in v]
            return v

        out: dict[str, Any] = {"state_dir": str(self.state_dir),
                               "source": str(self.source) if self.source else None}
        for name in _SECTIONS:
            sect = getattr(self, name)
            out[name] = {f.name: conv(getattr(sect, f.name)) for f in fields(sect)}
        return out


# -- loading ----------------------------------------------------------------------------------


def config_path(arg: str | os.PathLike[str] | None,
                env: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """The file to read and whether it was asked for (``--config`` or ``$APPLIANCE_CONFIG``)."""
    env = os.environ if env is None else env
    if arg:
        return Path(arg), True
    if env.get("APPLIANCE_CONFIG"):
        return Path(env["APPLIANCE_CONFIG"]), True
    return DEFAULT_CONFIG, False


def load(arg: str | os.PathLike[str] | None = None,
         env: Mapping[str, str] | None = None) -> Config:
    """Read and check the configuration (see the module docstring). Raises ConfigError."""
    env = os.environ if env is None else env
    path, asked = config_path(arg, env)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        if asked:
            raise ConfigError(f"configuration file {path} not found") from None
        return parse({}, env=env)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    return replace(parse_text(data, env=env, where=str(path)), source=path)


def parse_text(data: bytes | str, *, env: Mapping[str, str] | None = None,
               where: str = "configuration") -> Config:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where} is not UTF-8 ({exc.reason} at byte {exc.start})") \
                from None
    try:
        doc = tomllib.loads(data)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None
    return parse(doc, env=env)


_SECTIONS = ("chain", "node", "hsm", "identity", "terminal", "clerk", "kiosk", "audit", "log")


def parse(doc: Mapping[str, Any], *, env: Mapping[str, str] | None = None) -> Config:
    """A Config from a decoded TOML document; defaults for what is left out."""
    env = os.environ if env is None else env
    for key in doc:
        if key != "state_dir" and key not in _SECTIONS:
            raise ConfigError("unknown key (sections: state_dir, " + ", ".join(_SECTIONS)
                              + ")", key)
    for name in _SECTIONS:
        if name in doc and not isinstance(doc[name], dict):
            raise ConfigError("must be a table", name)
    state = _path(doc["state_dir"], "state_dir") if "state_dir" in doc else \
        Path(env.get("APPLIANCE_STATE") or DEFAULT_STATE)
    r = _Reader(doc)
    r.check_unknown()
    chain = _chain(r)
    node = NodeConfig(
        trust=r.opt_path("node", "trust"),
        peers=tuple(_peer(u, f"node.peers[{i}]")
                    for i, u in enumerate(r.get("node", "peers", list, []))),
        discover=r.get("node", "discover", bool, True),
        discover_interfaces=tuple(_text(a, f"node.discover_interfaces[{i}]") for i, a in
                                  enumerate(r.get("node", "discover_interfaces", list, []))),
        max_discovered_peers=r.get("node", "max_discovered_peers", int, 16),
    )
    if not 1 <= node.max_discovered_peers <= MAX_DISCOVERED_PEERS:
        raise ConfigError(f"must be 1..{MAX_DISCOVERED_PEERS}", "node.max_discovered_peers")
    if chain.fisco and node.peers:
        raise ConfigError("district-node URLs are for the native chain; the nodes of a "
                          "fisco-bcos-3 chain go in chain.rpc", "node.peers")
    slot = r.get("hsm", "slot", int, 0)
    if not 0 <= slot <= 15:
        raise ConfigError("must be 0..15", "hsm.slot")
    hsm = HsmConfig(
        device=_nonempty(r.get("hsm", "device", str, "/dev/gmcrypto0"), "hsm.device"),
        slot=slot,
        pin_file=r.opt_path("hsm", "pin_file"),
        pin_env=_nonempty(r.get("hsm", "pin_env", str, "APPLIANCE_HSM_PIN"), "hsm.pin_env"),
        vendor_id=_hex4(r.get("hsm", "vendor_id", str, "1209"), "hsm.vendor_id"),
        model_id=_hex4(r.get("hsm", "model_id", str, "a5e1"), "hsm.model_id"),
    )
    key_hex = r.get("identity", "public_key", str, None)
    identity = IdentityConfig(
        url=_http_url(r.get("identity", "url", str, "http://127.0.0.1:8090"), "identity.url"),
        public_key=None if key_hex is None else _sm2_key(key_hex, "identity.public_key"),
        service=_nonempty(r.get("identity", "service", str, "identity-service"),
                          "identity.service"),
        timeout_s=_positive(r.get("identity", "timeout_s", (int, float), 15.0),
                            "identity.timeout_s"),
    )
    role = r.get("terminal", "role", str, "kiosk")
    if role not in ("kiosk", "pad"):
        raise ConfigError("must be 'kiosk' or 'pad'", "terminal.role")
    terminal = TerminalConfig(role=role, enrollment=_tx_id(
        r.get("terminal", "enrollment", str, None), "terminal.enrollment"))
    clerk_slot = r.get("clerk", "slot", int, 0)
    if not 0 <= clerk_slot <= 15:
        raise ConfigError("must be 0..15", "clerk.slot")
    clerk_device = r.get("clerk", "device", str, None)
    clerk = ClerkConfig(
        device=None if clerk_device is None else _nonempty(clerk_device, "clerk.device"),
        slot=clerk_slot,
        enrollment=_tx_id(r.get("clerk", "enrollment", str, None), "clerk.enrollment"))
    host, port = parse_listen(r.get("kiosk", "listen", str, "127.0.0.1:8080"), "kiosk.listen")
    kiosk = KioskConfig(
        listen_host=host, listen_port=port,
        elder_mode=r.get("kiosk", "elder_mode", bool, False),
        camera=_nonempty(r.get("kiosk", "camera", str, "0"), "kiosk.camera"),
    )
    days = r.get("audit", "retention_days", int, 190)
    if not 1 <= days <= 36500:
        raise ConfigError("must be 1..36500 days", "audit.retention_days")
    audit = AuditConfig(retention_days=days, path=r.opt_path("audit", "path"))
    level = r.get("log", "level", str, "info").lower()
    if level not in LOG_LEVELS:
        raise ConfigError("must be one of " + ", ".join(LOG_LEVELS), "log.level")
    return Config(state_dir=state, chain=chain, node=node, hsm=hsm, identity=identity,
                  terminal=terminal, clerk=clerk, kiosk=kiosk, audit=audit,
                  log=LogConfig(level))


def _chain(r: _Reader) -> ChainConfig:
    kind = r.get("chain", "kind", str, NATIVE)
    if kind not in CHAIN_KINDS:
        raise ConfigError("must be " + " or ".join(repr(k) for k in CHAIN_KINDS), "chain.kind")
    table = r.doc.get("chain", {})
    if kind == NATIVE:
        for key in ("rpc", "group"):
            if key in table:
                raise ConfigError(f"only for kind = {FISCO!r} (the native chain's district "
                                  "nodes are node.peers)", f"chain.{key}")
        return ChainConfig()
    urls = r.get("chain", "rpc", list, [])
    if not urls:
        raise ConfigError(f"kind = {FISCO!r} needs the JSON-RPC URL of at least one of the "
                          "chain's nodes (rpc = [\"http://HOST:20200\"])", "chain.rpc")
    if len(urls) > MAX_RPC_URLS:
        raise ConfigError(f"at most {MAX_RPC_URLS} URLs", "chain.rpc")
    rpc: list[str] = []
    for i, url in enumerate(urls):
        norm = _rpc_url(url, f"chain.rpc[{i}]")
        if norm in rpc:
            raise ConfigError(f"{norm} is listed twice", f"chain.rpc[{i}]")
        rpc.append(norm)
    group = r.get("chain", "group", str, "group0")
    if not _GROUP.fullmatch(group):
        raise ConfigError("must be 1..64 of A-Z a-z 0-9 _ . -", "chain.group")
    return ChainConfig(kind=kind, rpc=tuple(rpc), group=group)


def _rpc_url(value: Any, key: str) -> str:
    """A FISCO node's JSON-RPC URL in the form the light node keys its peers by."""
    from .node.peers import normalize_url

    text = _text(value, key)
    _http_url(text, key)  # the same wording as every other URL key
    try:
        return normalize_url(text)
    except ValueError as exc:
        raise ConfigError(str(exc), key) from None


_KNOWN = {
    "chain": {"kind", "rpc", "group"},
    "node": {"trust", "peers", "discover", "discover_interfaces", "max_discovered_peers"},
    "hsm": {"device", "slot", "pin_file", "pin_env", "vendor_id", "model_id"},
    "identity": {"url", "public_key", "service", "timeout_s"},
    "kiosk": {"mode", "listen", "elder_mode", "camera", "district", "hall"},
    "audit": {"retention_days", "path"},
    "log": {"level"},
}


class _Reader:
    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc

    def check_unknown(self) -> None:
        for sect, known in _KNOWN.items():
            for key in self.doc.get(sect, {}):
                if key not in known:
                    raise ConfigError("unknown key (known: " + ", ".join(sorted(known)) + ")",
                                      f"{sect}.{key}")

    def get(self, sect: str, key: str, kind: Any, default: Any) -> Any:
        table = self.doc.get(sect, {})
        if key not in table:
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; TOML keeps them apart, and so do we.
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join({str: "text", int: "an integer", float: "a number",
                                 bool: "true or false", list: "an array"}[k] for k in kinds)
            raise ConfigError(f"must be {names}, not {type(value).__name__}", f"{sect}.{key}")
        return value

    def opt_path(self, sect: str, key: str) -> Path | None:
        value = self.get(sect, key, str, None)
        return None if value is None else _path(value, f"{sect}.{key}")


def _path(value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError("must be a non-empty path", key)
    return Path(value)


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError("must be non-empty text", key)
    return value


def _nonempty(value: str, key: str) -> str:
    if not value:
        raise ConfigError("must not be empty", key)
    return value


def _positive(value: float, key: str) -> float:
    if not 0 < value <= 3600:
        raise ConfigError("must be > 0 and <= 3600", key)
    return float(value)


def _hex4(value: str, key: str) -> str:
    if len(value) != 4 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise ConfigError("must be 4 hex digits", key)
    return value.lower()


def _http_url(value: str, key: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ConfigError(f"not a URL: {exc}", key) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("must be an http:// or https:// URL with a host", key)
    return value.rstrip("/")


def _peer(value: Any, key: str) -> str:
    return _http_url(_text(value, key), key)


def _tx_id(text: str | None, key: str) -> bytes | None:
    if text is None:
        return None
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise ConfigError("must be a tx_id: 64 hex digits", key)
    return bytes.fromhex(text)


def _sm2_key(text: str, key: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ConfigError("must be hex", key) from None
    if len(raw) != 65 or raw[0] != 4:
        raise ConfigError("must be a 65-byte uncompressed SM2 public key (04 || x || y)", key)
    return raw


def _check_port(port: Any, key: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError("port must be 0..65535", key)
    return port


def parse_listen(text: str, key: str = "kiosk.listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) with a loopback host only; (host, port)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError("must be HOST:PORT", key)
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ConfigError("must be HOST:PORT", key)
    if not (port_text.isascii() and port_text.isdigit()):
        raise ConfigError("port must be 0..65535", key)
    port = _check_port(int(port_text), key)
    if host == "localhost":
        host = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"host {host!r} must be a loopback IP address (the UI is served "
                          "to this terminal only)", key) from None
    if not addr.is_loopback:
        raise ConfigError(f"refusing to listen on {host}: the UI is served on a loopback "
                          "address only (127.0.0.1 or ::1)", key)
    return str(addr), port


DEFAULTS_TOML = """\
# /etc/appliance/appliance.toml: every key, with its default.
state_dir = "/var/lib/appliance"        # or $APPLIANCE_STATE when the key is left out

[chain]
kind = "native"                         # native | fisco-bcos-3
# rpc = ["http://10.0.0.5:20200"]       # fisco-bcos-3: the nodes' JSON-RPC URLs (required)
# group = "group0"                      # fisco-bcos-3: the group (the anchor's)

[node]
# trust = "/var/lib/appliance/trust.cbor"  # default: STATE_DIR/trust.cbor (fisco: trust.json)
peers = []                              # static district-node URLs
discover = true                         # mDNS (_gov-ledger._tcp.local.)
discover_interfaces = []                # empty: all; ["127.0.0.1"] on a HIL rig
max_discovered_peers = 16               # 1..256; static peers are not counted

[hsm]
device = "/dev/gmcrypto0"               # tty path or pyserial URL
slot = 0                                # the device key's slot
# pin_file = "/etc/appliance/hsm.pin"   # first line; else the variable below
pin_env = "APPLIANCE_HSM_PIN"
vendor_id = "1209"                      # udev match for hotplug
model_id = "a5e1"

[identity]
url = "http://127.0.0.1:8090"
# public_key = "04..."                  # 65-byte SM2 key, hex; required to authorize
service = "identity-service"
timeout_s = 15.0

[terminal]
role = "kiosk"                          # kiosk (citizen) | pad (clerk): pages and routes served
# enrollment = "..."                    # tx_id (hex) of this terminal's device.enroll

[clerk]                                 # pad only: the clerk way's staff card
# device = "/dev/gmclerk0"              # a crypto module of the clerk's own
slot = 0
# enrollment = "..."                    # tx_id (hex) of the clerk key's device.enroll

[kiosk]
listen = "127.0.0.1:8080"               # loopback only
elder_mode = false
camera = "0"

[audit]
retention_days = 190
# path = "/var/lib/appliance/audit"     # a directory; default: STATE_DIR/audit

[log]
level = "info"                          # debug | info | warning | error | critical
"""
