"""The proxy's configuration (SPEC §4): TOML in, frozen typed sections out.

Every key is optional. An unknown key or a bad value is refused with its key path and the reason,
so an operator learns about a typo when the proxy starts, not from a call that goes wrong later.
Each key is declared once, with its default written exactly as in §4 and the parser that checks
it; the default is run through that parser, so defaults and parsed files cannot drift apart.

Longer than 700 lines: every key of §4 in one table with its default and parser; split by
section, the one list that `check`, the README and the refusals read would scatter.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

from clearip.sip.errors import SipProtocolError
from clearip.sip.uri import SipUri, parse_uri
from clearip.trust import TrustError, parse_cidr

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "Advertise",
    "ClearipConfig",
    "Config",
    "ConfigError",
    "ControlConfig",
    "FastpathConfig",
    "FastpathMode",
    "HostPort",
    "LimitsConfig",
    "ListenConfig",
    "RelayConfig",
    "RoutingConfig",
    "TrustConfig",
    "default_config",
    "load_config",
    "parse_config",
]

T = TypeVar("T")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
FastpathMode = Literal["auto", "on", "off"]

DEFAULT_CONFIG_PATH = "/etc/clearip/proxy.toml"


class ConfigError(Exception):
    """A config the proxy refuses. `key` is the key path ("clearip.timeout", "listen.udp[1]"),
    or the file's name when the file as a whole is at fault (missing, not TOML)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason

    # Relay workers are processes; the default pickling would call __init__ with one argument.
    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str]]:
        return (type(self), (self.key, self.reason))


class HostPort(NamedTuple):
    """An address with a port; `host` is an IP literal (IPv6 without brackets) or a host name."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Advertise(NamedTuple):
    """`listen.advertise`: `port` None means each listener's own port."""

    host: str
    port: int | None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


class _Invalid(Exception):
    """A value's fault, raised before the caller knows which key it came from. `at` is a suffix
    of the key path such as "[2]" for a list element."""

    def __init__(self, reason: str, at: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.at = at


# ---------------------------------------------------------------------------------------------
# Showing values in messages: as they look in TOML, and bounded, since they may be anything.

_SHOW_MAX = 60


def _show(value: object) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, list):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    elif isinstance(value, dict):
        text = "a table"
    else:
        text = str(value)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 1] + "…"


def _kind(value: object) -> str:
    for cls, name in ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string")):
        if isinstance(value, cls):
            return name
    return "array" if isinstance(value, list) else "table" if isinstance(value, dict) else "date"


def _typed(value: object) -> str:
    return f"{_show(value)} ({_kind(value)})"


def _one_of(options: tuple[str, ...]) -> str:
    quoted = [json.dumps(o) for o in options]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


# ---------------------------------------------------------------------------------------------
# Value parsers: raw TOML value in, typed value out, or _Invalid with the reason.


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, got {_typed(value)}")
    return value


def _path(value: object) -> str:
    text = _string(value)
    if "\0" in text:
        raise _Invalid("must not contain a NUL character")
    return text


def _required_path(value: object) -> str:
    text = _path(value)
    if not text:
        raise _Invalid("must not be empty")
    return text


# sockaddr_un.sun_path is 108 bytes on Linux, one of them the terminating NUL.
_SUN_PATH_MAX = 107


def _socket_path(value: object) -> str:
    text = _required_path(value)
    size = len(os.fsencode(text))
    if size > _SUN_PATH_MAX:
        raise _Invalid(
            f"is {size} bytes long; a Unix socket path is limited to {_SUN_PATH_MAX} bytes"
        )
    return text


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, got {_typed(value)}")
    return value


def _int(lo: int, hi: int | None = None, why: str = "") -> Callable[[object], int]:
    bounds = f"at least {lo}" if hi is None else f"between {lo} and {hi}"

    def parse(value: object) -> int:
        # bool is an int subclass in Python, but `true` is never a count in a config file.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"must be an integer, got {_typed(value)}")
        if value < lo or (hi is not None and value > hi):
            raise _Invalid(f"must be {bounds}{why}, got {value}")
        return value

    return parse


def _seconds(value: object) -> float:
    # `timeout = 5` is as natural to write as `timeout = 5.0`.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"must be a number of seconds, got {_typed(value)}")
    if not (math.isfinite(value) and value > 0):
        raise _Invalid(f"must be a positive number, got {_show(value)}")
    return float(value)


def _choice(*options: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value.lower() not in options:
            raise _Invalid(f"must be {_one_of(options)}, got {_show(value)}")
        return value.lower()

    return parse


def _list_of(item: Callable[[object], T], what: str) -> Callable[[object], tuple[T, ...]]:
    def parse(value: object) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise _Invalid(f"must be a list of {what}, got {_typed(value)}")
        out: list[T] = []
        for i, element in enumerate(value):
            try:
                out.append(item(element))
            except _Invalid as e:
                raise _Invalid(e.reason, f"[{i}]{e.at}") from None
        return tuple(out)

    return parse


def _optional(parse: Callable[[object], T]) -> Callable[[object], T | None]:
    """An empty string turns the setting off."""

    def parse_optional(value: object) -> T | None:
        return None if value == "" else parse(value)

    return parse_optional


# --- addresses ---

_BRACKETED = re.compile(r"\[([^\]]*)\](?::(.*))?", re.DOTALL)
_PORT = re.compile(r"[0-9]{1,5}")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _is_hostname(name: str) -> bool:
    labels = name.removesuffix(".").split(".")
    # An all-digit last label is a mistyped IPv4 address ("10.0.0.300"), not a name (RFC 3696 §2).
    return (
        len(name) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


def _ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _split_hostport(text: str) -> tuple[str, str | None]:
    """Split host, host:port, [v6] or [v6]:port into (host, port text or None)."""
    if text.startswith("["):
        match = _BRACKETED.fullmatch(text)
        if match is None:
            raise _Invalid(f"{_show(text)}: no closing ']'")
        if ":" not in match[1] or _ip_literal(match[1]) is None:
            raise _Invalid(f"{_show(text)}: only an IPv6 address goes in brackets")
        return match[1], match[2]
    if text.count(":") > 1:
        # Unbracketed, "2001:db8::1:5060" could be an address with or without a port.
        raise _Invalid(f'{_show(text)}: an IPv6 address must be in brackets, as in "[::1]:5060"')
    host, sep, port = text.partition(":")
    return host, port if sep else None


def _port(port: str, text: str) -> int:
    if _PORT.fullmatch(port) and 1 <= int(port) <= 65535:
        return int(port)
    raise _Invalid(f"{_show(text)}: the port must be a number from 1 to 65535")


def _hostport(value: object, *, ip_only: bool, port_required: bool) -> tuple[str, int | None]:
    if not isinstance(value, str):
        raise _Invalid(f'must be a string "host:port", got {_typed(value)}')
    host, port = _split_hostport(value)
    if not host:
        raise _Invalid(f"{_show(value)}: the host is missing")
    ip = _ip_literal(host)
    if ip is None and ip_only:
        raise _Invalid(
            f"{_show(value)}: must be an IP address (such as 0.0.0.0 or [::]); "
            "a listener binds an address, not a host name"
        )
    if ip is None and not _is_hostname(host):
        what = _show(value) if host == value else f"{_show(value)}: {_show(host)}"
        raise _Invalid(f"{what} is not an IP address or a host name")
    if port is None:
        if port_required:
            raise _Invalid(f'{_show(value)}: the port is missing, as in "{host}:5060"')
        return ip or host, None
    return ip or host, _port(port, value)


def _bind_address(value: object) -> HostPort:
    host, port = _hostport(value, ip_only=True, port_required=True)
    assert port is not None
    return HostPort(host, port)


def _peer_address(value: object) -> HostPort:
    host, port = _hostport(value, ip_only=False, port_required=True)
    assert port is not None
    return HostPort(host, port)


def _advertise(value: object) -> Advertise:
    return Advertise(*_hostport(value, ip_only=False, port_required=False))


def _listeners(value: object) -> tuple[HostPort, ...]:
    addresses = _list_of(_bind_address, 'addresses "host:port"')(value)
    seen: set[HostPort] = set()
    for i, address in enumerate(addresses):
        if address in seen:
            raise _Invalid(f"{_show(str(address))} is listed twice", f"[{i}]")
        seen.add(address)
    return addresses


def _cidr(value: object) -> IPNetwork:
    # the same rule and words as `clearipctl allow` (host bits set: refused, not masked)
    try:
        return parse_cidr(_string(value))
    except TrustError as e:
        raise _Invalid(str(e)) from None


# --- SIP ---


def _sip_uri(text: str) -> SipUri:
    try:
        uri = parse_uri(text)
    except SipProtocolError as e:
        raise _Invalid(f"{_show(text)} is not a valid URI: {e.reason}") from None
    if not isinstance(uri, SipUri) or not uri.host:
        raise _Invalid(f"{_show(text)} is not a sip: or sips: URI with a host")
    return uri


def _upstream(text: str) -> tuple[str, str, int]:
    """`clearip.uri` -> (transport, host, port) of the link to ClearIP."""
    uri = _sip_uri(text)
    transport = uri.transport
    # RFC 5630: sips: with transport=tcp means TLS over TCP; transport=tls is its deprecated form.
    if uri.scheme == "sips" and transport == "tcp":
        transport = "tls"
    if transport == "udp":
        raise _Invalid(
            f"{_show(text)}: UDP to ClearIP is refused: the link is a persistent stream "
            'connection; add ";transport=tls" (or ";transport=tcp")'
        )
    if transport not in ("tls", "tcp"):
        raise _Invalid(f"{_show(text)}: transport must be tls or tcp, got {_show(transport)}")
    return transport, uri.host, uri.port or (5061 if transport == "tls" else 5060)


_FAILOVER_CODE = re.compile(r"[3-6](?:[0-9]{2}|xx)")


def _failover_code(value: object) -> str:
    text = _string(value).lower()
    if not _FAILOVER_CODE.fullmatch(text):
        raise _Invalid(
            f'must be a status code such as "408" or a class such as "5xx" (300-699), '
            f"got {_show(value)}"
        )
    return text


def _expand_codes(codes: tuple[str, ...]) -> frozenset[int]:
    out: set[int] = set()
    for code in codes:
        if code.endswith("xx"):
            base = int(code[0]) * 100
            out.update(range(base, base + 100))
        else:
            out.add(int(code))
    return frozenset(out)


# RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# Headers the proxy writes itself: copying them from a 302 would break the transaction or body.
_OWN_HEADERS = frozenset(
    {"via", "v", "from", "f", "to", "t", "call-id", "i", "cseq", "max-forwards", "contact", "m"}
    | {"route", "record-route", "content-length", "l", "content-type", "c"}
)


def _header_name(value: object) -> str:
    text = _string(value)
    if not _TOKEN.fullmatch(text):
        raise _Invalid(f"{_show(text)} is not a header name")
    if text.lower() in _OWN_HEADERS:
        raise _Invalid(f"{_show(text)} is managed by the proxy itself and cannot be copied")
    return text


_DIGITS = re.compile(r"[0-9]{1,15}")


def _emergency_number(value: object) -> str:
    text = _string(value)
    if not _DIGITS.fullmatch(text):
        raise _Invalid(f'must be 1 to 15 digits, such as "911", got {_show(text)}')
    return text


def _emergency_action(value: object) -> str:
    text = _string(value)
    if text.lower() == "reject":
        return "reject"
    try:
        _sip_uri(text)
    except _Invalid as e:
        raise _Invalid(f'must be "reject" or a sip:/sips: URI; {e.reason}') from None
    return text


# --- fast path ---


_FASTPATH_MODES: dict[str, FastpathMode] = {
    "auto": "auto",
    "true": "on",
    "on": "on",
    "false": "off",
    "off": "off",
}


def _exempt_host(value: object) -> str:
    text = _string(value).strip().lower()
    address = _ip_literal(text)
    if address is not None:
        return address
    if not _is_hostname(text):
        raise _Invalid(f"{_show(text)} is not a host name or an IP address")
    return text


def _fastpath_mode(value: object) -> FastpathMode:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str) and value.lower() in _FASTPATH_MODES:
        return _FASTPATH_MODES[value.lower()]
    raise _Invalid(f'must be "auto", true or false, got {_show(value)}')


def _dump_fastpath_mode(mode: FastpathMode) -> str | bool:
    return "auto" if mode == "auto" else mode == "on"


def _ifname(value: object) -> str:
    text = _string(value)
    # Linux dev_valid_name(): shorter than IFNAMSIZ (16), no '/', ':' or whitespace.
    size = len(text.encode())
    if not 0 < size < 16 or text in (".", "..") or any(c in "/:\0" or c.isspace() for c in text):
        raise _Invalid(f"{_show(text)} is not a valid interface name")
    return text


# Both an nft table name and a directory under /sys/fs/bpf.
_FASTPATH_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")


def _fastpath_name(value: object) -> str:
    text = _string(value)
    if not _FASTPATH_NAME.fullmatch(text):
        raise _Invalid(
            f"must be a letter then up to 31 letters, digits, '_' or '-', got {_show(text)}"
        )
    return text


# ---------------------------------------------------------------------------------------------
# Sections


def _key(
    default: object,
    parse: Callable[[object], T],
    dump: Callable[[T], object] | None = None,
) -> T:
    """A config key: its §4 default, written as in the file, and the parser that checks it.
    `dump` turns the value back into TOML when the generic way does not fit. The result is a
    dataclasses.field (immutable default), hence the `noqa: RUF009` on some keys below."""
    metadata: dict[str, object] = {"parse": parse}
    if dump is not None:
        metadata["dump"] = dump
    return field(default=parse(default), metadata=metadata)


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """[listen]: the addresses the relay accepts SIP on."""

    udp: tuple[HostPort, ...] = _key(["0.0.0.0:5060"], _listeners)
    tcp: tuple[HostPort, ...] = _key(["0.0.0.0:5060"], _listeners)
    tls: tuple[HostPort, ...] = _key(["0.0.0.0:5061"], _listeners)
    # 1:1 NAT: Via, Record-Route and Contact carry this instead of the bound address.
    advertise: Advertise | None = _key("", _optional(_advertise))  # noqa: RUF009
    # Both empty: a self-signed certificate is made in state_dir at first start.
    tls_cert: str = _key("", _path)
    tls_key: str = _key("", _path)

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            unset, given = ("tls_key", "tls_cert") if self.tls_cert else ("tls_cert", "tls_key")
            raise ConfigError(f"listen.{unset}", f"must be set together with listen.{given}")
        if not (self.udp or self.tcp or self.tls):
            raise ConfigError("listen", "no listener: udp, tcp and tls are all empty")


@dataclass(frozen=True, slots=True)
class ClearipConfig:
    """[clearip]: the upstream link. `transport`, `host` and `port` are derived from `uri`."""

    uri: str = _key("sip:sip.clearip.com:5061;transport=tls", _string)
    timeout: float = _key(5.0, _seconds)
    on_failure: int = _key(503, _int(300, 699, " (a SIP final response code)"))
    ca_file: str = _key("", _path)  # empty: the system CA store
    tls_verify: bool = _key(True, _bool)
    connections: int = _key(1, _int(1, 64))
    keepalive: float = _key(30.0, _seconds)
    transport: Literal["tls", "tcp"] = field(init=False, compare=False)
    host: str = field(init=False, compare=False)
    port: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        try:
            transport, host, port = _upstream(self.uri)
        except _Invalid as e:
            raise ConfigError("clearip.uri", e.reason) from None
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """[routing]: what the relay does with ClearIP's verdicts and the providers' answers."""

    provider_timeout: float = _key(5.0, _seconds)
    ring_timeout: float = _key(120.0, _seconds)
    failover_codes: tuple[str, ...] = _key(
        ["408", "480", "5xx"], _list_of(_failover_code, 'codes such as "408" or "5xx"')
    )
    max_contacts: int = _key(5, _int(1, 32))
    copy_headers: tuple[str, ...] = _key(
        ["Identity", "P-Asserted-Identity"], _list_of(_header_name, "header names")
    )
    emergency_numbers: tuple[str, ...] = _key(
        ["911", "933"], _list_of(_emergency_number, "digit strings")
    )
    emergency_action: str = _key("reject", _emergency_action)  # "reject" or a next-hop URI
    # TLS toward next hops: verified against the system store (or this CA bundle), except
    # toward the hosts listed (names or addresses as the Contact writes them: private links)
    tls_ca_file: str = _key("", _path)
    tls_verify_exempt: tuple[str, ...] = _key([], _list_of(_exempt_host, "host names or IPs"))
    _failover: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Expanded once: is_failover() runs for every final response from a provider.
        object.__setattr__(self, "_failover", _expand_codes(self.failover_codes))

    def is_failover(self, code: int) -> bool:
        """True when a provider's final response `code` means: try the next Contact."""
        return code in self._failover


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """[trust]: sources from the config file (`clearipctl allow` adds to the state file)."""

    sources: tuple[IPNetwork, ...] = _key([], _list_of(_cidr, "CIDRs"))
    untrusted: str = _key("drop", _choice("drop", "403"))  # "403": answer instead of dropping


@dataclass(frozen=True, slots=True)
class FastpathConfig:
    """[fastpath]: the nftables + eBPF filter in front of the relay."""

    # auto: on when it can load, else off with a warning; on: required; off: never.
    enabled: FastpathMode = _key("auto", _fastpath_mode, _dump_fastpath_mode)  # noqa: RUF009
    interfaces: tuple[str, ...] = _key([], _list_of(_ifname, "interface names"))  # []: all up
    name: str = _key("clearip", _fastpath_name)
    max_sources: int = _key(65536, _int(1024, 16777216))
    # How long a pinhole outlives the proxy's last word about it: re-armed every quarter of
    # this while a call uses it, so it only runs out after a crash (SPEC §5).
    pinhole_ttl: float = _key(600.0, _seconds)


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """[relay]: the userspace SIP relay processes."""

    workers: int = _key(0, _int(0, 64))
    # Which worker reads a datagram on a shared UDP port. "auto": an eBPF program picks its
    # call's worker (fastpath/steering.py) when it loads, else the kernel spreads datagrams by
    # address and workers hand each other their calls; "on": required; "off": never.
    steering: str = _key("auto", _choice("auto", "on", "off"))

    def effective_workers(self) -> int:
        """How many relay processes to run: `workers`, or one per usable core when 0."""
        if self.workers:
            return self.workers
        # Honour taskset/cpuset pinning: a pinned proxy should not fork one worker per host core.
        try:
            return len(os.sched_getaffinity(0)) or 1
        except (AttributeError, OSError):
            return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """[limits]: bounds on what one peer can make the relay hold."""

    max_message_bytes: int = _key(
        65535, _int(1024, 65535, " (a UDP datagram's limit, RFC 3261 §18.1.1)")
    )
    max_headers: int = _key(256, _int(16, 1024))
    max_transactions: int = _key(100000, _int(1))
    max_tcp_per_source: int = _key(256, _int(1))
    max_tcp_connections: int = _key(8192, _int(1))  # accepted TCP/TLS, all sources and workers
    tcp_idle_timeout: float = _key(600.0, _seconds)
    # a new call that waited this long (socket queue, hand-off, event loop) gets 503 at once;
    # past half of it, smoothed, new calls are admitted at the rate the worker keeps up with
    overload_lag: float = _key(0.04, _seconds)


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """[control]: how `clearipctl` and monitoring reach the running proxy."""

    socket: str = _key("/run/clearip/control.sock", _socket_path)
    state_dir: str = _key("/var/lib/clearip", _required_path)
    # Prometheus exposition, and the HOMER collector for HEP3 export; None: off.
    metrics: HostPort | None = _key("127.0.0.1:9095", _optional(_bind_address))  # noqa: RUF009
    hep: HostPort | None = _key("", _optional(_peer_address))  # noqa: RUF009
    log_level: str = _key("info", _choice("debug", "info", "warning", "error"))


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; every section defaults to §4."""

    listen: ListenConfig = field(default_factory=ListenConfig)
    clearip: ClearipConfig = field(default_factory=ClearipConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    fastpath: FastpathConfig = field(default_factory=FastpathConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The effective config as plain TOML types; parsing it back gives an equal Config."""
        return {f.name: _section_dict(getattr(self, f.name)) for f in fields(self)}


_SECTIONS: dict[str, type[Any]] = {
    "listen": ListenConfig,
    "clearip": ClearipConfig,
    "routing": RoutingConfig,
    "trust": TrustConfig,
    "fastpath": FastpathConfig,
    "relay": RelayConfig,
    "limits": LimitsConfig,
    "control": ControlConfig,
}


def _plain(value: object) -> object:
    if value is None:  # an optional address that is off: "" in the file
        return ""
    if isinstance(value, HostPort | Advertise | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _section_dict(section: Any) -> dict[str, Any]:
    return {
        f.name: f.metadata.get("dump", _plain)(getattr(section, f.name))
        for f in fields(section)
        if f.init
    }


def _unknown(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build_section(name: str, cls: type[Any], table: dict[str, Any]) -> Any:
    parsers = {f.name: f.metadata["parse"] for f in fields(cls) if f.init}
    values: dict[str, Any] = {}
    for key, raw in table.items():
        parse = parsers.get(key)
        if parse is None:
            raise ConfigError(f"{name}.{key}", "unknown key" + _unknown(key, list(parsers)))
        try:
            values[key] = parse(raw)
        except _Invalid as e:
            raise ConfigError(f"{name}.{key}{e.at}", e.reason) from None
    return cls(**values)


def _build(document: dict[str, Any]) -> Config:
    sections: dict[str, Any] = {}
    for name, table in document.items():
        cls = _SECTIONS.get(name)
        if cls is None:
            raise ConfigError(name, "unknown section" + _unknown(name, list(_SECTIONS)))
        if not isinstance(table, dict):
            raise ConfigError(name, f"must be a table [{name}], got {_typed(table)}")
        sections[name] = _build_section(name, cls, table)
    return Config(**sections)


def default_config() -> Config:
    """The §4 defaults, as running with no config file."""
    return Config()


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse TOML text; `source` names it in a syntax error."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, f"invalid TOML: {e}") from None
    return _build(document)


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and check the config file; None gives the defaults."""
    if path is None:
        return default_config()
    source = os.fspath(path)
    try:
        data = Path(source).read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, "no such file") from None
    except OSError as e:
        raise ConfigError(source, f"cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")  # TOML 1.0 §1: a TOML file must be valid UTF-8
    except UnicodeDecodeError as e:
        raise ConfigError(source, f"not UTF-8 text (bad byte at offset {e.start})") from None
    return parse_config(text, source)
