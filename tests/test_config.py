"""appliance/config.py: defaults, file resolution, strict validation with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance import config
from appliance.config import ConfigError

KEY = "04" + "11" * 64


def test_documented_defaults_are_the_built_in_ones() -> None:
    # DEFAULTS_TOML (copied into docs/operations.md) must say what the code does.
    assert config.parse_text(config.DEFAULTS_TOML, env={}) == config.parse({}, env={})
    c = config.parse({}, env={})
    assert c.state_dir == Path("/var/lib/appliance")
    assert c.kiosk.listen == "127.0.0.1:8080" and c.terminal.role == "kiosk"
    assert c.terminal.enrollment is None and c.clerk.device is None
    assert c.audit.retention_days == 190
    assert c.trust_path == Path("/var/lib/appliance/trust.cbor")
    assert c.audit_path == Path("/var/lib/appliance/audit")  # as `appliance audit` reads
    assert c.identity.public_key is None and c.log.level == "info"


def test_docs_carry_the_defaults() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    for line in config.DEFAULTS_TOML.splitlines():
        assert line in doc, line


def test_full_file(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text(f"""
state_dir = "{tmp_path}/state"
[node]
trust = "/etc/appliance/trust.cbor"
peers = ["http://10.0.0.1:8080/", "https://node.example:443"]
discover = false
discover_interfaces = ["127.0.0.1"]
max_discovered_peers = 4
[hsm]
device = "faulty://?port=/tmp/x"
slot = 3
pin_file = "/etc/appliance/pin"
[identity]
url = "http://127.0.0.1:9000"
public_key = "{KEY}"
service = "beijing-id"
timeout_s = 2
[terminal]
role = "pad"
[kiosk]
listen = "[::1]:0"
elder_mode = true
[audit]
retention_days = 400
[log]
level = "DEBUG"
""")
    c = config.load(f, env={})
    assert c.source == f and c.state_dir == tmp_path / "state"
    assert c.node.peers == ("http://10.0.0.1:8080", "https://node.example:443")
    assert not c.node.discover and c.node.discover_interfaces == ("127.0.0.1",)
    assert c.node.max_discovered_peers == 4
    assert config.parse({}, env={}).node.max_discovered_peers == 16
    assert c.hsm.slot == 3 and c.hsm.pin_file == Path("/etc/appliance/pin")
    assert c.identity.public_key == bytes.fromhex(KEY) and c.identity.timeout_s == 2.0
    assert c.terminal.role == "pad" and c.kiosk.listen == "[::1]:0" and c.kiosk.elder_mode
    assert c.audit.retention_days == 400 and c.log.level == "debug"
    assert c.to_json()["identity"]["public_key"] == KEY


def test_chain_defaults_and_the_fisco_form(tmp_path: Path) -> None:
    c = config.parse({}, env={})
    assert c.chain == config.ChainConfig(kind="native", rpc=(), group="group0")
    assert not c.chain.fisco and c.trust_path.name == "trust.cbor"
    f = tmp_path / "fisco.toml"
    f.write_text("""
state_dir = "/srv/st"
[chain]
kind = "fisco-bcos-3"
rpc = ["HTTP://10.20.0.11:20200/", "https://fisco-2.example:443", "http://[::1]:20200"]
group = "group_1.a"
""")
    c = config.load(f, env={})
    assert c.chain.fisco and c.chain.group == "group_1.a"
    # the form the light node keys its peers by (appliance.node.peers.normalize_url)
    assert c.chain.rpc == ("http://10.20.0.11:20200", "https://fisco-2.example",
                           "http://[::1]:20200")
    assert c.trust_path == Path("/srv/st/trust.json")  # the FISCO anchor is JSON
    assert c.node.peers == () and c.node.trust is None
    assert c.to_json()["chain"] == {"kind": "fisco-bcos-3", "rpc": list(c.chain.rpc),
                                    "group": "group_1.a"}
    f.write_text(f.read_text() + '[node]\ntrust = "/etc/appliance/fisco.json"\n')
    assert config.load(f, env={}).trust_path == Path("/etc/appliance/fisco.json")
    assert config.parse_text("[chain]\nkind = 'native'", env={}) == config.parse({}, env={})


def test_resolution_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text("[log]\nlevel = 'error'\n")
    b.write_text("[log]\nlevel = 'warning'\n")
    assert config.load(a, env={"APPLIANCE_CONFIG": str(b)}).log.level == "error"
    assert config.load(None, env={"APPLIANCE_CONFIG": str(b)}).log.level == "warning"
    # an asked-for file that is missing is an error; the missing default file is not
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="not found"):
        config.load(None, env={"APPLIANCE_CONFIG": str(tmp_path / "nope.toml")})
    if not config.DEFAULT_CONFIG.exists():
        assert config.load(None, env={}).source is None
    # APPLIANCE_STATE is the default state dir; the file's key wins over it
    assert config.load(a, env={"APPLIANCE_STATE": "/srv/s"}).state_dir == Path("/srv/s")
    a.write_text("state_dir = '/srv/t'\n")
    assert config.load(a, env={"APPLIANCE_STATE": "/srv/s"}).state_dir == Path("/srv/t")


@pytest.mark.parametrize("text, key", [
    ("colour = 1", "colour"),
    ("[nodes]\npeers = []", "nodes"),
    ("[node]\npeerz = []", "node.peerz"),
    ("[kiosk]\nlisten_addr = '127.0.0.1:1'", "kiosk.listen_addr"),
    ("[log]\nlevel = 'info'\nformat = 'json'", "log.format"),
    ("[chain]\nkind = 'fisco-bcos-3'\nrpc = ['http://a']\nnodes = []", "chain.nodes"),
    ("[chain]\nchain_kind = 'native'", "chain.chain_kind"),
])
def test_unknown_keys_are_named(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse_text(text, env={})
    assert e.value.key == key and key in str(e.value)


@pytest.mark.parametrize("text, key", [
    ("node = 3", "node"),
    ("[node]\npeers = 'http://a'", "node.peers"),
    ("[node]\npeers = ['ftp://a']", "node.peers[0]"),
    ("[node]\npeers = ['http://a', 5]", "node.peers[1]"),
    ("[node]\ndiscover = 1", "node.discover"),
    ("[node]\nmax_discovered_peers = 0", "node.max_discovered_peers"),
    ("[node]\nmax_discovered_peers = 257", "node.max_discovered_peers"),
    ("[node]\nmax_discovered_peers = true", "node.max_discovered_peers"),
    ("[node]\nmax_discovered_peers = 4.0", "node.max_discovered_peers"),
    ("[hsm]\nslot = 16", "hsm.slot"),
    ("[hsm]\nslot = true", "hsm.slot"),
    ("[hsm]\nvendor_id = '12g9'", "hsm.vendor_id"),
    ("[identity]\npublic_key = 'zz'", "identity.public_key"),
    ("[identity]\npublic_key = '02" + "11" * 32 + "'", "identity.public_key"),
    ("[identity]\ntimeout_s = 0", "identity.timeout_s"),
    ("[identity]\nurl = 'localhost:80'", "identity.url"),
    ("[terminal]\nrole = 'tv'", "terminal.role"),
    ("[kiosk]\nlisten = '8080'", "kiosk.listen"),
    ("[kiosk]\nlisten = '127.0.0.1:65536'", "kiosk.listen"),
    ("[kiosk]\nlisten = '127.0.0.1:http'", "kiosk.listen"),
    ("[audit]\nretention_days = 0", "audit.retention_days"),
    ("[audit]\nretention_days = 190.5", "audit.retention_days"),
    ("[log]\nlevel = 'loud'", "log.level"),
    ("chain = 'fisco-bcos-3'", "chain"),
    ("[chain]\nkind = 'fisco'", "chain.kind"),
    ("[chain]\nkind = 3", "chain.kind"),
    ("[chain]\nkind = 'fisco-bcos-3'", "chain.rpc"),  # required
    ("[chain]\nkind = 'fisco-bcos-3'\nrpc = []", "chain.rpc"),
    ("[chain]\nkind = 'fisco-bcos-3'\nrpc = 'http://a:20200'", "chain.rpc"),
    ("[chain]\nkind = 'fisco-bcos-3'\nrpc = ['ws://a:20200']", "chain.rpc[0]"),
    ("[chain]\nkind = 'fisco-bcos-3'\nrpc = ['http://a', 'a:20200']", "chain.rpc[1]"),
    ("[chain]\nkind = 'fisco-bcos-3'\nrpc = ['http://a', 7]", "chain.rpc[1]"),
    ("[chain]\nkind = 'fisco-bcos-3'\nrpc = ['http://u:p@a:20200']", "chain.rpc[0]"),
    ("[chain]\nkind = 'fisco-bcos-3'\nrpc = ['http://a:20200/?x=1']", "chain.rpc[0]"),
    ("[chain]\nkind = 'fisco-bcos-3'\nrpc = ['http://a/', 'HTTP://A:80']", "chain.rpc[1]"),
    ("[chain]\nkind = 'fisco-bcos-3'\nrpc = ['http://a']\ngroup = ''", "chain.group"),
    ("[chain]\nkind = 'fisco-bcos-3'\nrpc = ['http://a']\ngroup = 'g 1'", "chain.group"),
    ("[chain]\nkind = 'fisco-bcos-3'\nrpc = ['http://a']\ngroup = 0", "chain.group"),
    ("[chain]\nrpc = ['http://a']", "chain.rpc"),  # a native chain has district nodes
    ("[chain]\nkind = 'native'\ngroup = 'group0'", "chain.group"),
    ("[chain]\nkind = 'fisco-bcos-3'\nrpc = ['http://a']\n[node]\npeers = ['http://b']",
     "node.peers"),
])
def test_bad_values_are_named(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse_text(text, env={})
    assert e.value.key == key, str(e.value)


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:8080", "10.1.2.3:8080",
                                    "192.168.1.5:80", "kiosk.local:8080", "[fe80::1]:80"])
def test_refuses_non_loopback_binds(listen: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse_text(f"[kiosk]\nlisten = '{listen}'", env={})
    assert e.value.key == "kiosk.listen" and "loopback" in str(e.value)


@pytest.mark.parametrize("listen, host, port", [
    ("127.0.0.1:8080", "127.0.0.1", 8080), ("localhost:1", "127.0.0.1", 1),
    ("127.9.9.9:0", "127.9.9.9", 0), ("[::1]:8443", "::1", 8443)])
def test_loopback_binds(listen: str, host: str, port: int) -> None:
    assert config.parse_listen(listen) == (host, port)


@pytest.mark.parametrize("listen", ["127.0.0.1:²", "127.0.0.1:١٢", "127.0.0.1:８０"])
def test_a_port_in_other_digits_is_a_config_error(listen: str) -> None:
    """str.isdigit() says yes to these, int() does not: the error must still name the key."""
    with pytest.raises(ConfigError) as e:
        config.parse_text(f"[kiosk]\nlisten = '{listen}'", env={})
    assert e.value.key == "kiosk.listen"


def test_terminal_and_clerk_sections() -> None:
    c = config.parse_text("[terminal]\nrole = 'pad'\nenrollment = '" + "ab" * 32 + "'\n"
                          "[clerk]\ndevice = '/dev/gmclerk0'\nslot = 3\n"
                          "enrollment = '" + "cd" * 32 + "'", env={})
    assert c.terminal.role == "pad" and c.terminal.enrollment == bytes.fromhex("ab" * 32)
    assert (c.clerk.device, c.clerk.slot, c.clerk.enrollment) == (
        "/dev/gmclerk0", 3, bytes.fromhex("cd" * 32))
    for text, key in (("[terminal]\nrole = 'tv'", "terminal.role"),
                      ("[terminal]\nenrollment = 'xyz'", "terminal.enrollment"),
                      ("[clerk]\nslot = 16", "clerk.slot"),
                      ("[clerk]\nenrollment = '" + "ab" * 31 + "'", "clerk.enrollment")):
        with pytest.raises(ConfigError) as e:
            config.parse_text(text, env={})
        assert e.value.key == key


def test_with_port() -> None:
    c = config.parse({}, env={})
    assert c.with_port(9999).kiosk.listen_port == 9999
    with pytest.raises(ConfigError):
        c.with_port(70000)


def test_bad_files(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_bytes(b"[node\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(f, env={})
    f.write_bytes(b"\xff\xfe = 1")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(f, env={})
    f.write_bytes(b"#" * (config.MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        config.load(f, env={})


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_a_config_or_config_error(text: str) -> None:
    try:
        c = config.parse_text(text, env={})
    except ConfigError:
        return
    assert isinstance(c, config.Config)
    assert config.parse_listen(c.kiosk.listen)  # whatever was accepted is loopback


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=40), st.from_regex(
    r"(https?|HTTP|ftp)://[a-z0-9.\[\]:@]{0,20}(:[0-9]{1,6})?/?[a-z?#=]{0,5}", fullmatch=True),
    st.integers()), max_size=4),
    st.text(max_size=70))
def test_any_chain_table_gives_a_config_or_config_error(rpc: list, group: str) -> None:
    doc = {"chain": {"kind": "fisco-bcos-3", "rpc": rpc, "group": group}}
    try:
        c = config.parse(doc, env={})
    except ConfigError as exc:
        assert exc.key is not None and exc.key.startswith("chain.")
        return
    assert c.chain.rpc and len(set(c.chain.rpc)) == len(c.chain.rpc)
    for url in c.chain.rpc:
        assert url.split("://", 1)[0] in ("http", "https") and "@" not in url
