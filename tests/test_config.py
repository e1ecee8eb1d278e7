"""The configuration contract of SPEC §4: defaults, parsing, and refusals that name the key."""

from __future__ import annotations

import ipaddress
import json
import os
import pickle
import tomllib
from pathlib import Path

import pytest

from clearip.config import (
    Advertise,
    ClearipConfig,
    Config,
    ConfigError,
    HostPort,
    ListenConfig,
    RelayConfig,
    default_config,
    load_config,
    parse_config,
)

# SPEC §4 as published (one comment shortened): the defaults must be exactly these.
SPEC_DEFAULTS = """
[listen]
udp = ["0.0.0.0:5060"]
tcp = ["0.0.0.0:5060"]
tls = ["0.0.0.0:5061"]
advertise = ""            # public address for 1:1 NAT
tls_cert = ""             # empty: a self-signed certificate is made in state_dir at first start
tls_key = ""

[clearip]
uri = "sip:sip.clearip.com:5061;transport=tls"
timeout = 5.0
on_failure = 503
ca_file = ""              # empty: system CA store
tls_verify = true
connections = 1
keepalive = 30.0

[routing]
provider_timeout = 5.0
ring_timeout = 120.0
failover_codes = ["408", "480", "5xx"]
max_contacts = 5
copy_headers = ["Identity", "P-Asserted-Identity"]
emergency_numbers = ["911", "933"]
emergency_action = "reject"
tls_ca_file = ""          # added beyond §4 (issue 11): CA bundle for TLS to next hops
tls_verify_exempt = []    # added beyond §4 (issue 11): next hops whose certificate is not checked

[trust]
sources = []              # CIDRs; `clearipctl allow` adds to the state file, not to this file
untrusted = "drop"

[fastpath]
enabled = "auto"          # auto: on when it can load, else off; true: required; false
interfaces = []           # empty: every interface that is up, loopback excluded
name = "clearip"          # nft table `inet <name>`, pins under /sys/fs/bpf/<name>/
max_sources = 65536       # size of the per-source counter map (LRU)
pinhole_ttl = 600.0       # added beyond §4 (issue 10): a pinhole outlives a crash this long

[relay]
workers = 0               # relay processes; 0: one per core
steering = "auto"         # added beyond §4 (issue 14): calls steered to their worker in the kernel

[limits]
max_message_bytes = 65535
max_headers = 256
max_transactions = 100000
max_tcp_per_source = 256
max_tcp_connections = 8192  # added beyond §4 (issue 11): accepted TCP/TLS, all workers
tcp_idle_timeout = 600.0
overload_lag = 0.04       # added beyond §4 (issue 12): a worker this late refuses new calls

[control]
socket = "/run/clearip/control.sock"
state_dir = "/var/lib/clearip"
metrics = "127.0.0.1:9095"   # Prometheus text exposition; "" disables
hep = ""                  # HOMER collector host:port for HEP3 export; "" disables
log_level = "info"        # debug | info | warning | error
"""

ANCHOR = """
[listen]
udp = ["127.0.0.10:5060"]
tcp = ["127.0.0.10:5060"]
tls = []
[clearip]
uri = "sip:127.0.0.12:5060;transport=tcp"
timeout = 5.0
[trust]
sources = ["127.0.0.0/8"]
[fastpath]
enabled = false
[control]
socket = "/tmp/anchor-proxy/ctl.sock"
state_dir = "/tmp/anchor-proxy/state"
metrics = ""
log_level = "warning"
"""

# Every key set to something other than its default, written the way to_dict() writes it.
FULL = """
[listen]
udp = ["192.0.2.10:5060", "[2001:db8::10]:5060"]
tcp = ["192.0.2.10:5060"]
tls = ["192.0.2.10:5061", "[::]:5061"]
advertise = "203.0.113.10:5080"
tls_cert = "/etc/clearip/cert.pem"
tls_key = "/etc/clearip/key.pem"

[clearip]
uri = "sips:clearip.example.net;transport=tcp"
timeout = 2.5
on_failure = 480
ca_file = "/etc/ssl/clearip-ca.pem"
tls_verify = false
connections = 4
keepalive = 15.0

[routing]
provider_timeout = 3.0
ring_timeout = 90.0
failover_codes = ["408", "480", "486", "5xx", "6xx"]
max_contacts = 3
copy_headers = ["Identity", "P-Asserted-Identity", "X-Attestation"]
emergency_numbers = ["911", "933", "112"]
emergency_action = "sip:psap.example.net:5060;transport=tcp"
tls_ca_file = "/etc/clearip/providers-ca.pem"
tls_verify_exempt = ["10.9.8.7", "sbc.private.example"]

[trust]
sources = ["192.0.2.0/24", "198.51.100.7/32", "2001:db8::/32"]
untrusted = "403"

[fastpath]
enabled = true
interfaces = ["eth0", "bond0.100"]
name = "clearip-b"
max_sources = 262144
pinhole_ttl = 900.0

[relay]
workers = 2
steering = "off"

[limits]
max_message_bytes = 16384
max_headers = 128
max_transactions = 5000
max_tcp_per_source = 32
max_tcp_connections = 1000
tcp_idle_timeout = 120.0
overload_lag = 0.1

[control]
socket = "/run/clearip-b/control.sock"
state_dir = "/var/lib/clearip-b"
metrics = "[::1]:9096"
hep = "homer.example.net:9060"
log_level = "debug"
"""


def dump_toml(document: dict[str, dict[str, object]]) -> str:
    """Just enough TOML writing for what to_dict() returns."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string is a valid TOML basic string
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"not TOML-able: {v!r}")

    lines: list[str] = []
    for section, table in document.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value(v)}" for key, v in table.items()]
    return "\n".join(lines) + "\n"


def section(name: str, body: str) -> str:
    return f"[{name}]\n{body}\n"


# --- defaults ---


def test_defaults_are_spec_section_4() -> None:
    assert default_config().to_dict() == tomllib.loads(SPEC_DEFAULTS)


def test_empty_file_spec_file_and_none_all_give_the_defaults() -> None:
    defaults = default_config()
    assert parse_config("") == defaults
    assert parse_config(SPEC_DEFAULTS) == defaults
    assert load_config(None) == defaults
    assert Config() == defaults


def test_default_values_are_typed() -> None:
    config = default_config()
    assert config.listen.udp == (("0.0.0.0", 5060),)
    assert config.listen.tls == (HostPort("0.0.0.0", 5061),)
    assert config.listen.advertise is None
    assert (config.clearip.transport, config.clearip.host, config.clearip.port) == (
        "tls",
        "sip.clearip.com",
        5061,
    )
    assert isinstance(config.clearip.timeout, float)
    assert config.routing.failover_codes == ("408", "480", "5xx")
    assert config.trust.sources == ()
    assert config.fastpath.enabled == "auto"
    assert config.control.metrics == HostPort("127.0.0.1", 9095)
    assert config.control.hep is None


def test_sections_are_frozen() -> None:
    config = default_config()
    with pytest.raises(AttributeError):
        config.clearip.timeout = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.listen = ListenConfig()  # type: ignore[misc]


# --- the anchor config and a full file ---


def test_anchor_config_parses() -> None:
    config = parse_config(ANCHOR)
    assert config.listen.udp == (("127.0.0.10", 5060),)
    assert config.listen.tcp == (("127.0.0.10", 5060),)
    assert config.listen.tls == ()
    assert config.clearip.transport == "tcp"
    assert config.clearip.host == "127.0.0.12"
    assert config.clearip.port == 5060
    assert config.clearip.timeout == 5.0
    assert config.trust.sources == (ipaddress.ip_network("127.0.0.0/8"),)
    assert config.fastpath.enabled == "off"
    assert config.control.socket == "/tmp/anchor-proxy/ctl.sock"
    assert config.control.state_dir == "/tmp/anchor-proxy/state"
    assert config.control.metrics is None
    assert config.control.log_level == "warning"
    # Keys it does not set keep their defaults.
    assert config.routing == default_config().routing
    assert config.limits == default_config().limits


def test_full_file_round_trips() -> None:
    config = parse_config(FULL)
    assert config.to_dict() == tomllib.loads(FULL)
    assert parse_config(dump_toml(config.to_dict())) == config
    assert config.listen.udp[1] == HostPort("2001:db8::10", 5060)
    assert config.listen.advertise == Advertise("203.0.113.10", 5080)
    # sips: with transport=tcp is TLS over TCP (RFC 5630).
    assert (config.clearip.transport, config.clearip.port) == ("tls", 5061)
    assert config.fastpath.enabled == "on"
    assert config.control.hep == HostPort("homer.example.net", 9060)
    assert config.control.metrics == HostPort("::1", 9096)


def test_defaults_round_trip() -> None:
    assert parse_config(dump_toml(default_config().to_dict())) == default_config()


def test_config_pickles_for_worker_processes() -> None:
    config = parse_config(FULL)
    copy = pickle.loads(pickle.dumps(config))
    assert copy == config
    assert copy.clearip.host == "clearip.example.net"
    assert copy.routing.is_failover(486)


# --- values that are accepted, and what they become ---


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:5060", ("0.0.0.0", 5060)),
        ("[::]:5060", ("::", 5060)),
        ("[::1]:65535", ("::1", 65535)),
        ("[2001:DB8:0:0::1]:1", ("2001:db8::1", 1)),  # normalised
        ("192.0.2.1:5080", ("192.0.2.1", 5080)),
    ],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    config = parse_config(section("listen", f"udp = [{json.dumps(text)}]"))
    assert config.listen.udp == (expected,)
    assert isinstance(config.listen.udp[0], HostPort)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("203.0.113.5", Advertise("203.0.113.5", None)),
        ("203.0.113.5:5070", Advertise("203.0.113.5", 5070)),
        ("sbc.example.com", Advertise("sbc.example.com", None)),
        ("sbc.example.com:5080", Advertise("sbc.example.com", 5080)),
        ("[2001:db8::5]", Advertise("2001:db8::5", None)),
        ("[2001:db8::5]:5060", Advertise("2001:db8::5", 5060)),
    ],
)
def test_advertise(text: str, expected: Advertise | None) -> None:
    config = parse_config(section("listen", f"advertise = {json.dumps(text)}"))
    assert config.listen.advertise == expected
    assert config.to_dict()["listen"]["advertise"] == text


@pytest.mark.parametrize(
    ("uri", "transport", "host", "port"),
    [
        ("sip:sip.clearip.com:5061;transport=tls", "tls", "sip.clearip.com", 5061),
        ("sip:clearip.example;transport=TLS", "tls", "clearip.example", 5061),
        ("sip:clearip.example;transport=tcp", "tcp", "clearip.example", 5060),
        ("sip:10.0.0.1:5070;transport=tcp", "tcp", "10.0.0.1", 5070),
        ("sips:clearip.example", "tls", "clearip.example", 5061),
        ("sips:clearip.example:5071;transport=tcp", "tls", "clearip.example", 5071),
        ("sip:[2001:db8::c]:5061;transport=tls", "tls", "2001:db8::c", 5061),
    ],
)
def test_clearip_uri_gives_transport_host_port(
    uri: str, transport: str, host: str, port: int
) -> None:
    clearip = parse_config(section("clearip", f"uri = {json.dumps(uri)}")).clearip
    assert (clearip.transport, clearip.host, clearip.port) == (transport, host, port)
    assert clearip.uri == uri


def test_clearip_direct_construction_derives_too() -> None:
    clearip = ClearipConfig(uri="sip:up.example;transport=tcp")
    assert (clearip.transport, clearip.host, clearip.port) == ("tcp", "up.example", 5060)
    with pytest.raises(ConfigError, match=r"^clearip\.uri: .*UDP"):
        ClearipConfig(uri="sip:up.example")


def test_integers_are_accepted_where_seconds_are_expected() -> None:
    config = parse_config(section("clearip", "timeout = 3\nkeepalive = 10"))
    assert config.clearip.timeout == 3.0
    assert isinstance(config.clearip.timeout, float)
    assert isinstance(config.clearip.keepalive, float)


def test_failover_codes() -> None:
    routing = parse_config(section("routing", 'failover_codes = ["486", "6XX", "302"]')).routing
    assert routing.failover_codes == ("486", "6xx", "302")
    assert routing.is_failover(486)
    assert routing.is_failover(600) and routing.is_failover(699)
    assert routing.is_failover(302)
    assert not routing.is_failover(408)
    assert not routing.is_failover(503)


def test_default_failover_codes() -> None:
    routing = default_config().routing
    for code in (408, 480, 500, 503, 599):
        assert routing.is_failover(code)
    for code in (200, 302, 404, 486, 487, 600, 603):
        assert not routing.is_failover(code)


def test_failover_codes_may_be_empty() -> None:
    routing = parse_config(section("routing", "failover_codes = []")).routing
    assert not routing.is_failover(503)


@pytest.mark.parametrize(
    ("raw", "mode", "dumped"),
    [
        ('"auto"', "auto", "auto"),
        ('"AUTO"', "auto", "auto"),
        ("true", "on", True),
        ("false", "off", False),
        ('"true"', "on", True),
        ('"false"', "off", False),
        ('"on"', "on", True),
        ('"off"', "off", False),
    ],
)
def test_fastpath_enabled(raw: str, mode: str, dumped: object) -> None:
    config = parse_config(section("fastpath", f"enabled = {raw}"))
    assert config.fastpath.enabled == mode
    assert config.to_dict()["fastpath"]["enabled"] == dumped


def test_trust_sources_are_networks() -> None:
    sources = parse_config(
        section("trust", 'sources = ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32", "::1"]')
    ).trust.sources
    assert sources == (
        ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv4Network("192.0.2.1/32"),
        ipaddress.IPv6Network("2001:db8::/32"),
        ipaddress.IPv6Network("::1/128"),
    )


def test_emergency_action_uri_and_reject() -> None:
    uri = "sip:psap.example.net;transport=udp"  # UDP is fine for a next hop
    assert (
        parse_config(section("routing", f'emergency_action = "{uri}"')).routing.emergency_action
        == uri
    )
    assert (
        parse_config(section("routing", 'emergency_action = "REJECT"')).routing.emergency_action
        == "reject"
    )


def test_log_level_is_case_insensitive() -> None:
    assert parse_config(section("control", 'log_level = "WARNING"')).control.log_level == "warning"


def test_hep_and_metrics() -> None:
    control = parse_config(
        section("control", 'metrics = "0.0.0.0:9100"\nhep = "[2001:db8::9]:9060"')
    ).control
    assert control.metrics == HostPort("0.0.0.0", 9100)
    assert control.hep == HostPort("2001:db8::9", 9060)
    assert str(control.hep) == "[2001:db8::9]:9060"


def test_effective_workers() -> None:
    assert RelayConfig(workers=3).effective_workers() == 3
    automatic = RelayConfig().effective_workers()
    assert 1 <= automatic <= (os.cpu_count() or 1)


def test_tls_cert_and_key_together() -> None:
    config = parse_config(section("listen", 'tls_cert = "/c.pem"\ntls_key = "/k.pem"'))
    assert (config.listen.tls_cert, config.listen.tls_key) == ("/c.pem", "/k.pem")


# --- refusals: each names the key path ---

BAD = [
    # unknown sections and keys
    ("[bogus]\nx = 1", "bogus", "unknown section"),
    ("timeout = 5", "timeout", "unknown section"),
    ("[listn]", "listn", "did you mean 'listen'?"),
    ("listen = 5", "listen", "must be a table"),
    (section("listen", "udpp = []"), "listen.udpp", "unknown key (did you mean 'udp'?)"),
    (section("clearip", "password = 'x'"), "clearip.password", "unknown key"),
    ("[listen.extra]\na = 1", "listen.extra", "unknown key"),
    # listen
    (section("listen", 'udp = "0.0.0.0:5060"'), "listen.udp", "must be a list"),
    (section("listen", "udp = [5060]"), "listen.udp[0]", "must be a string"),
    (section("listen", 'udp = ["localhost:5060"]'), "listen.udp[0]", "not a host name"),
    (section("listen", 'tcp = ["0.0.0.0"]'), "listen.tcp[0]", "port is missing"),
    (section("listen", 'tcp = ["0.0.0.0:"]'), "listen.tcp[0]", "port must be"),
    (section("listen", 'tls = ["0.0.0.0:0"]'), "listen.tls[0]", "port must be"),
    (section("listen", 'tls = ["0.0.0.0:65536"]'), "listen.tls[0]", "port must be"),
    (section("listen", 'tls = ["0.0.0.0:50x"]'), "listen.tls[0]", "port must be"),
    (section("listen", 'tls = ["0.0.0.0:+5060"]'), "listen.tls[0]", "port must be"),
    (section("listen", 'udp = [":5060"]'), "listen.udp[0]", "host is missing"),
    (section("listen", 'udp = ["::1:5060"]'), "listen.udp[0]", "must be in brackets"),
    (section("listen", 'udp = ["[127.0.0.1]:5060"]'), "listen.udp[0]", "only an IPv6"),
    (section("listen", 'udp = ["[::1:5060"]'), "listen.udp[0]", "no closing"),
    (section("listen", 'udp = ["256.0.0.1:5060"]'), "listen.udp[0]", "IP address"),
    (
        section("listen", 'udp = ["127.0.0.1:5060", "127.0.0.1:5060"]'),
        "listen.udp[1]",
        "listed twice",
    ),
    (section("listen", "udp = []\ntcp = []\ntls = []"), "listen", "no listener"),
    (section("listen", 'advertise = "bad_host!"'), "listen.advertise", "not an IP address"),
    (section("listen", 'advertise = "10.0.0.300"'), "listen.advertise", "not an IP address"),
    (section("listen", 'advertise = "host:0"'), "listen.advertise", "port must be"),
    (section("listen", "advertise = 1"), "listen.advertise", "must be a string"),
    (section("listen", 'tls_cert = "/c.pem"'), "listen.tls_key", "together with listen.tls_cert"),
    (section("listen", 'tls_key = "/k.pem"'), "listen.tls_cert", "together with listen.tls_key"),
    (section("listen", "tls_cert = false"), "listen.tls_cert", "must be a string"),
    # clearip
    (section("clearip", 'uri = "sip:clearip.example"'), "clearip.uri", "UDP to ClearIP"),
    (
        section("clearip", 'uri = "sip:clearip.example;transport=udp"'),
        "clearip.uri",
        "persistent stream",
    ),
    (section("clearip", 'uri = "sips:clearip.example;transport=udp"'), "clearip.uri", "UDP"),
    (section("clearip", 'uri = "sip:clearip.example;transport=ws"'), "clearip.uri", "tls or tcp"),
    (section("clearip", 'uri = "tel:+15551234567"'), "clearip.uri", "sip: or sips:"),
    (section("clearip", 'uri = "urn:service:sos"'), "clearip.uri", "sip: or sips:"),
    (section("clearip", 'uri = "http://clearip.example"'), "clearip.uri", "not a valid URI"),
    (section("clearip", 'uri = "clearip.example"'), "clearip.uri", "not a valid URI"),
    (section("clearip", 'uri = "sip:"'), "clearip.uri", "not a valid URI"),
    (section("clearip", "uri = 5"), "clearip.uri", "must be a string"),
    (section("clearip", "timeout = 0"), "clearip.timeout", "positive"),
    (section("clearip", "timeout = inf"), "clearip.timeout", "positive"),
    (section("clearip", "timeout = nan"), "clearip.timeout", "positive"),
    (section("clearip", "timeout = true"), "clearip.timeout", "got true (boolean)"),
    (section("clearip", 'timeout = "5"'), "clearip.timeout", "must be a number"),
    (section("clearip", "keepalive = -30.0"), "clearip.keepalive", "positive"),
    (section("clearip", "on_failure = 200"), "clearip.on_failure", "between 300 and 699"),
    (section("clearip", "on_failure = 700"), "clearip.on_failure", "between 300 and 699"),
    (section("clearip", "on_failure = 503.0"), "clearip.on_failure", "must be an integer"),
    (section("clearip", 'on_failure = "503"'), "clearip.on_failure", "must be an integer"),
    (section("clearip", "on_failure = true"), "clearip.on_failure", "got true (boolean)"),
    (section("clearip", "connections = 0"), "clearip.connections", "between 1 and 64"),
    (section("clearip", "connections = 65"), "clearip.connections", "between 1 and 64"),
    (section("clearip", "connections = true"), "clearip.connections", "must be an integer"),
    (section("clearip", 'tls_verify = "yes"'), "clearip.tls_verify", "true or false"),
    (section("clearip", "tls_verify = 1"), "clearip.tls_verify", "true or false"),
    (section("clearip", "ca_file = 1"), "clearip.ca_file", "must be a string"),
    # routing
    (section("routing", "provider_timeout = -5"), "routing.provider_timeout", "positive"),
    (section("routing", "ring_timeout = 0.0"), "routing.ring_timeout", "positive"),
    (section("routing", 'failover_codes = "5xx"'), "routing.failover_codes", "must be a list"),
    (section("routing", 'failover_codes = ["200"]'), "routing.failover_codes[0]", "300-699"),
    (section("routing", 'failover_codes = ["408", "2xx"]'), "routing.failover_codes[1]", "5xx"),
    (section("routing", 'failover_codes = ["700"]'), "routing.failover_codes[0]", "status code"),
    (section("routing", 'failover_codes = ["5x"]'), "routing.failover_codes[0]", "status code"),
    (section("routing", 'failover_codes = ["4080"]'), "routing.failover_codes[0]", "status code"),
    (section("routing", "failover_codes = [408]"), "routing.failover_codes[0]", "must be a string"),
    (section("routing", "max_contacts = 0"), "routing.max_contacts", "between 1 and 32"),
    (section("routing", "max_contacts = 33"), "routing.max_contacts", "between 1 and 32"),
    (section("routing", 'copy_headers = [""]'), "routing.copy_headers[0]", "not a header name"),
    (section("routing", 'copy_headers = ["X Y"]'), "routing.copy_headers[0]", "header name"),
    (section("routing", 'copy_headers = ["X:"]'), "routing.copy_headers[0]", "header name"),
    (section("routing", 'copy_headers = ["Identity", "Via"]'), "routing.copy_headers[1]", "proxy"),
    (section("routing", 'copy_headers = ["call-id"]'), "routing.copy_headers[0]", "proxy"),
    (section("routing", "copy_headers = [1]"), "routing.copy_headers[0]", "must be a string"),
    (section("routing", 'emergency_numbers = ["+911"]'), "routing.emergency_numbers[0]", "digits"),
    (section("routing", 'emergency_numbers = [""]'), "routing.emergency_numbers[0]", "digits"),
    (section("routing", 'emergency_numbers = ["9 1 1"]'), "routing.emergency_numbers[0]", "911"),
    (section("routing", "emergency_numbers = [911]"), "routing.emergency_numbers[0]", "string"),
    (section("routing", 'emergency_action = "drop"'), "routing.emergency_action", '"reject"'),
    (section("routing", 'emergency_action = "tel:911"'), "routing.emergency_action", "sips:"),
    (section("routing", "emergency_action = 503"), "routing.emergency_action", "string"),
    # trust
    (
        section("trust", 'sources = ["10.0.0.1/8"]'),
        "trust.sources[0]",
        "host bits set; did you mean 10.0.0.0/8?",
    ),
    (
        section("trust", 'sources = ["10.0.0.0/8", "2001:db8::1/32"]'),
        "trust.sources[1]",
        "host bits",
    ),
    (section("trust", 'sources = ["nonsense"]'), "trust.sources[0]", "not an IP address or CIDR"),
    (section("trust", 'sources = ["10.0.0.0/33"]'), "trust.sources[0]", "not an IP address"),
    (section("trust", 'sources = "10.0.0.0/8"'), "trust.sources", "must be a list"),
    (section("trust", "sources = [167772160]"), "trust.sources[0]", "must be a string"),
    (section("trust", 'untrusted = "reject"'), "trust.untrusted", '"drop" or "403"'),
    (section("trust", "untrusted = 403"), "trust.untrusted", '"drop" or "403"'),
    # fastpath
    (section("fastpath", 'enabled = "yes"'), "fastpath.enabled", '"auto", true or false'),
    (section("fastpath", "enabled = 1"), "fastpath.enabled", '"auto", true or false'),
    (section("fastpath", f'interfaces = ["{"e" * 16}"]'), "fastpath.interfaces[0]", "interface"),
    (section("fastpath", 'interfaces = ["eth/0"]'), "fastpath.interfaces[0]", "interface name"),
    (section("fastpath", 'interfaces = ["eth 0"]'), "fastpath.interfaces[0]", "interface name"),
    (section("fastpath", 'interfaces = [""]'), "fastpath.interfaces[0]", "interface name"),
    (section("fastpath", 'interfaces = "eth0"'), "fastpath.interfaces", "must be a list"),
    (section("fastpath", 'name = "1clearip"'), "fastpath.name", "a letter"),
    (section("fastpath", f'name = "{"a" * 33}"'), "fastpath.name", "up to 31"),
    (section("fastpath", 'name = "clear ip"'), "fastpath.name", "letters, digits"),
    (section("fastpath", 'name = "../etc"'), "fastpath.name", "letters, digits"),
    (section("fastpath", 'name = ""'), "fastpath.name", "a letter"),
    (section("fastpath", "max_sources = 1023"), "fastpath.max_sources", "between 1024 and"),
    (section("fastpath", "max_sources = 16777217"), "fastpath.max_sources", "16777216"),
    # relay
    (section("relay", "workers = -1"), "relay.workers", "between 0 and 64"),
    (section("relay", "workers = 65"), "relay.workers", "between 0 and 64"),
    (section("relay", "workers = 1.5"), "relay.workers", "must be an integer"),
    # limits
    (section("limits", "max_message_bytes = 1023"), "limits.max_message_bytes", "1024"),
    (section("limits", "max_message_bytes = 65536"), "limits.max_message_bytes", "RFC 3261"),
    (section("limits", "max_headers = 15"), "limits.max_headers", "between 16 and 1024"),
    (section("limits", "max_headers = 1025"), "limits.max_headers", "between 16 and 1024"),
    (section("limits", "max_transactions = 0"), "limits.max_transactions", "at least 1"),
    (section("limits", "max_transactions = true"), "limits.max_transactions", "integer"),
    (section("limits", "max_tcp_per_source = 0"), "limits.max_tcp_per_source", "at least 1"),
    (section("limits", "tcp_idle_timeout = 0"), "limits.tcp_idle_timeout", "positive"),
    # control
    (section("control", 'socket = ""'), "control.socket", "must not be empty"),
    (section("control", f'socket = "/{"s" * 120}"'), "control.socket", "Unix socket path"),
    (section("control", "socket = 5"), "control.socket", "must be a string"),
    (section("control", 'state_dir = ""'), "control.state_dir", "must not be empty"),
    (section("control", 'state_dir = "/var/\\u0000x"'), "control.state_dir", "NUL"),
    (section("control", 'metrics = "localhost:9095"'), "control.metrics", "IP address"),
    (section("control", 'metrics = "127.0.0.1"'), "control.metrics", "port is missing"),
    (section("control", "metrics = 9095"), "control.metrics", "must be a string"),
    (section("control", 'hep = "homer.example"'), "control.hep", "port is missing"),
    (section("control", 'hep = "bad host:9060"'), "control.hep", "not an IP address"),
    (section("control", 'log_level = "verbose"'), "control.log_level", '"debug", "info"'),
    (section("control", "log_level = 10"), "control.log_level", "warning"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), BAD, ids=[f"{k}:{f}" for _, k, f in BAD])
def test_bad_values_are_refused_with_the_key(text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (section("clearip", "timeout = -1"), "clearip.timeout: must be a positive number, got -1"),
        (section("listen", "udpp = []"), "listen.udpp: unknown key (did you mean 'udp'?)"),
        ("[bogus]", "bogus: unknown section"),
        (
            section("clearip", "connections = true"),
            "clearip.connections: must be an integer, got true (boolean)",
        ),
    ],
)
def test_exact_messages(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert str(caught.value) == message


def test_long_values_are_not_echoed_whole() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(section("control", f'log_level = "{"x" * 10000}"'))
    assert len(str(caught.value)) < 200


def test_config_error_pickles() -> None:
    error = ConfigError("limits.max_headers", "must be between 16 and 1024, got 1")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.key, copy.reason, str(copy)) == (error.key, error.reason, str(error))


# --- files ---


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(ANCHOR)
    assert load_config(path) == parse_config(ANCHOR)
    assert load_config(str(path)) == parse_config(ANCHOR)


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: no such file"


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)  # a directory
    assert str(caught.value).startswith(f"{tmp_path}: cannot read")


def test_toml_syntax_error_names_the_file_and_the_place(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text("[listen]\nudp = \n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line" in message


def test_toml_syntax_error_in_a_string() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("[clearip\n", source="test.toml")
    assert caught.value.key == "test.toml"
    try:
        tomllib.loads("[clearip\n")
    except tomllib.TOMLDecodeError as e:
        assert str(e) in str(caught.value)


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_bytes(b'[control]\nstate_dir = "/var/\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_duplicate_key_is_a_toml_error() -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        parse_config("[relay]\nworkers = 1\nworkers = 2\n")
