"""`clearipctl check` (SPEC §2): is this config, on this host, ready to run the proxy?

Each check is a small function returning one or more `Check`s; `run_checks` runs them all and
turns an unexpected exception into a failed check with its message, so one broken probe never
hides the others. Nothing here changes the kernel: the fast path is probed with a dry run, and
the only things written are the state and control socket directories (created as the proxy
would) and a temporary file inside the state directory, removed at once.

A failed check stops the proxy from starting (or from working); a warning does not: the proxy
runs, without what was asked for (in `fastpath.enabled = "auto"`, without the fast path).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from clearip import trust
from clearip.config import Config, ConfigError, HostPort
from clearip.ctlsock import ControlError, request
from clearip.relay.events import PRIVATE_PORT_OFFSET

__all__ = [
    "NETWORK_TIMEOUT",
    "Check",
    "config_failure",
    "failed",
    "format_checklist",
    "format_json",
    "run_checks",
]

NETWORK_TIMEOUT = 3.0  # each of: DNS lookup, TCP connect, TLS handshake
PING_TIMEOUT = 1.0

Status = Literal["ok", "warn", "fail"]


@dataclass
class Check:
    """One line of the checklist. `warning`: not ok, but the proxy runs anyway."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False

    @property
    def status(self) -> Status:
        if self.ok:
            return "ok"
        return "warn" if self.warning else "fail"


def failed(checks: Iterable[Check]) -> list[Check]:
    """The checks that make `clearipctl check` exit non-zero (warnings do not)."""
    return [c for c in checks if c.status == "fail"]


def config_failure(path: str | None, error: ConfigError) -> Check:
    where = path or "the config file"
    return Check(
        "config",
        False,
        f"config error: {error}",
        f"correct {error.key} in {where} (SPEC §4 lists every key)",
    )


# ---------------------------------------------------------------------------------------------
# Output

_LABEL: dict[Status, str] = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]"}


def format_checklist(checks: list[Check]) -> str:
    width = max((len(c.name) for c in checks), default=0)
    lines: list[str] = []
    for c in checks:
        lines.append(f"{_LABEL[c.status]} {c.name:<{width}}  {c.detail}")
        if c.status != "ok" and c.fix:
            lines.append(f"       fix: {c.fix}")
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("ok", "warn", "fail")}
    verdict = "not ready: fix the failures above" if counts["fail"] else "ready to run"
    warnings = f"{counts['warn']} warning{'' if counts['warn'] == 1 else 's'}"
    lines.append(f"{counts['ok']} ok, {warnings}, {counts['fail']} failed: {verdict}")
    return "\n".join(lines)


def format_json(checks: list[Check]) -> str:
    return json.dumps([{**asdict(c), "status": c.status} for c in checks], indent=2)


# ---------------------------------------------------------------------------------------------
# The checks


def check_privileges(config: Config) -> Check:
    from clearip.fastpath.bpf import _check_privileges
    from clearip.fastpath.errors import FastPathUnavailable

    try:
        _check_privileges()
    except FastPathUnavailable as e:
        # Only the fast path needs them; a relay on ports >= 1024 runs without.
        return Check(
            "privileges",
            False,
            e.reason,
            "run as root (the systemd unit does), or grant CAP_NET_ADMIN and CAP_BPF",
            warning=config.fastpath.enabled != "on",
        )
    who = "root" if os.geteuid() == 0 else "CAP_NET_ADMIN + CAP_BPF"
    return Check("privileges", True, who)


class _ProxyProbe:
    """Asks the control socket once whether the proxy is running (only if a port is busy)."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._answer: bool | None = None

    def running(self) -> bool:
        if self._answer is None:
            try:
                request(self.socket_path, "ping", timeout=PING_TIMEOUT)
                self._answer = True
            except (ControlError, OSError):
                self._answer = False
        return self._answer


def _bind_error(kind: str, address: HostPort) -> OSError | None:
    """Binds and closes a socket like the relay's on `address`; the error, or None."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    with socket.socket(family, sock_type) as sock:
        # TCP: SO_REUSEADDR, so a connection in TIME_WAIT is not taken for a busy port (a
        # listener still is). Not for UDP, where it would let two sockets share the port and
        # hide a program already bound with SO_REUSEADDR. Never SO_REUSEPORT (it hides the relay).
        if kind != "udp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.host, address.port))
        except OSError as e:
            return e
    return None


def _port_check(
    name: str, kind: str, addresses: list[HostPort], key: str, probe: _ProxyProbe
) -> Check:
    shown = ", ".join(str(a) for a in addresses)
    busy: list[str] = []
    for address in addresses:
        error = _bind_error(kind, address)
        if error is None:
            continue
        if error.errno == errno.EADDRINUSE:
            busy.append(str(address))
        elif error.errno == errno.EACCES:
            return Check(
                name,
                False,
                f"{kind} {address}: permission denied (a port below 1024 needs privileges)",
                "run as root (the systemd unit does) or grant CAP_NET_BIND_SERVICE",
            )
        elif error.errno == errno.EADDRNOTAVAIL:
            return Check(
                name,
                False,
                f"{kind} {address}: no interface of this host has address {address.host}",
                f"use an address of this host (or 0.0.0.0 / [::]) in {key}",
            )
        else:
            return Check(
                name, False, f"{kind} {address}: {error.strerror or error}", f"check {key}"
            )
    if not busy:
        return Check(name, True, "free" if len(addresses) == 1 else f"all free ({shown})")
    if probe.running():
        return Check(name, True, f"{kind} {', '.join(busy)} in use by the running proxy")
    return Check(
        name,
        False,
        f"{kind} {', '.join(busy)} already in use by another program",
        f"stop the other program (see `ss -lnup` / `ss -lntp`) or change {key}",
    )


def check_ports(config: Config) -> list[Check]:
    listen = config.listen
    probe = _ProxyProbe(config.control.socket)
    out: list[Check] = []
    for kind, addresses in (("udp", listen.udp), ("tcp", listen.tcp), ("tls", listen.tls)):
        for address in addresses:
            out.append(
                _port_check(f"port {kind} {address}", kind, [address], f"listen.{kind}", probe)
            )
    workers = config.relay.effective_workers()
    for address in listen.udp:
        own = [
            HostPort(address.host, address.port + PRIVATE_PORT_OFFSET + i)
            for i in range(workers)
            if address.port + PRIVATE_PORT_OFFSET + i <= 65535
        ]
        if not own:
            continue
        last = own[-1].port
        span = f"{own[0].port}" if len(own) == 1 else f"{own[0].port}-{last}"
        out.append(
            _port_check(
                f"worker ports udp {address.host} {span}",
                "udp",
                own,
                "listen.udp (workers send from its port + 10 + i) or relay.workers",
                probe,
            )
        )
    return out


def check_fastpath(config: Config) -> list[Check]:
    mode = config.fastpath.enabled
    if mode == "off":
        return [Check("fast path", True, "disabled in the config (fastpath.enabled = false)")]
    from clearip.fastpath.bpf import _check_kernel_headers, _import_bcc, kernel_build_dir
    from clearip.fastpath.errors import FastPathUnavailable

    warning = mode == "auto"
    out: list[Check] = []
    for name, probe, good in (
        ("bcc", _import_bcc, "importable"),
        ("kernel headers", _check_kernel_headers, f"found ({kernel_build_dir()})"),
    ):
        try:
            probe()
        except FastPathUnavailable as e:
            out.append(Check(name, False, e.reason, e.fix, warning=warning))
        else:
            out.append(Check(name, True, good))
    out.append(check_nftables(config))
    return out


def check_nftables(config: Config) -> Check:
    from clearip.fastpath.manager import sip_ports
    from clearip.fastpath.nft import NftError, NftFastPath

    udp, tcp = sip_ports(config)
    trusted = [e.cidr for e in trust.entries(config.trust.sources, config.control.state_dir)]
    try:
        NftFastPath(config.fastpath.name, udp, tcp).check(trusted)
    except NftError as e:
        return Check(
            "nftables",
            False,
            e.message,
            "apt install nftables python3-nftables (venv with --system-site-packages), run as "
            "root; or set fastpath.enabled = false",
            warning=config.fastpath.enabled == "auto",
        )
    return Check("nftables", True, f"dry run of table inet {config.fastpath.name} accepted")


def check_state_dir(config: Config) -> Check:
    state_dir = Path(config.control.state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=state_dir, prefix=".clearip-check-"):
            pass
    except OSError as e:
        return Check(
            "state_dir",
            False,
            f"{state_dir}: {e.strerror or e}",
            "run as root, or set control.state_dir to a directory this user can write",
        )
    return Check("state_dir", True, f"{state_dir} writable")


def check_control_socket(config: Config) -> Check:
    directory = Path(config.control.socket).parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return Check(
            "control socket",
            False,
            f"{directory}: {e.strerror or e}",
            "run as root, or set control.socket in a directory this user can write",
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        return Check(
            "control socket",
            False,
            f"{directory} is not writable",
            "run as root, or set control.socket in a directory this user can write",
        )
    return Check("control socket", True, f"{directory} usable")


def check_tls_certificate(config: Config) -> Check:
    listen = config.listen
    if not listen.tls:
        return Check("tls certificate", True, "no TLS listener")
    if not listen.tls_cert:
        return Check(
            "tls certificate",
            True,
            f"not set: a self-signed one will be made in {config.control.state_dir}",
        )
    fix = "set listen.tls_cert / listen.tls_key to a readable PEM certificate and its key"
    for path in (listen.tls_cert, listen.tls_key):
        if not os.path.isfile(path):
            return Check("tls certificate", False, f"{path}: no such file", fix)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(listen.tls_cert, listen.tls_key)
    except (ssl.SSLError, OSError) as e:
        return Check("tls certificate", False, f"{listen.tls_cert}: cannot load: {e}", fix)
    return Check("tls certificate", True, f"{listen.tls_cert} loads")


def check_trusted(config: Config) -> Check:
    entries = trust.entries(config.trust.sources, config.control.state_dir)
    if not entries:
        return Check(
            "trusted sources",
            False,
            "none: every SIP request will be refused",
            "add sources with `clearipctl allow CIDR` (or trust.sources in the config)",
            warning=True,
        )
    return Check("trusted sources", True, f"{len(entries)} trusted")


def _resolve(host: str, port: int, timeout: float) -> list[tuple[str, int]]:
    """getaddrinfo with a deadline: it has none of its own (the resolver may retry for long).
    The lookup runs on a daemon thread, so a stuck one does not hold up the exit."""
    result: list[list[tuple[str, int]] | BaseException] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            result.append([(str(info[4][0]), int(info[4][1])) for info in infos])
        except BaseException as e:  # handed to the caller
            result.append(e)

    thread = threading.Thread(target=lookup, name="clearip-check-dns", daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        raise TimeoutError(f"no answer within {timeout:g} s")
    answer = result[0]
    if isinstance(answer, BaseException):
        raise answer
    return answer


def check_clearip(config: Config, timeout: float = NETWORK_TIMEOUT) -> list[Check]:
    from clearip.relay.upstream import client_tls_context

    cfg = config.clearip
    target = HostPort(cfg.host, cfg.port)
    try:
        addresses = _resolve(cfg.host, cfg.port, timeout)
    except (OSError, UnicodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return [
            Check(
                "clearip dns",
                False,
                f"{cfg.host} does not resolve: {reason}",
                "check this host's DNS (/etc/resolv.conf) and its route to the internet, and "
                "the host in clearip.uri",
            )
        ]
    out = [Check("clearip dns", True, f"{cfg.host} -> {', '.join(a for a, _ in addresses)}")]
    sock: socket.socket | None = None
    errors: list[str] = []
    for address in dict.fromkeys(addresses):  # each address once, in the resolver's order
        try:
            sock = socket.create_connection(address, timeout=timeout)
            break
        except OSError as e:
            errors.append(f"{address[0]}: {e.strerror or e}")
    if sock is None:
        out.append(
            Check(
                "clearip connect",
                False,
                f"tcp to {target} failed: {'; '.join(errors)}",
                f"allow outbound tcp to port {cfg.port} in the firewall, and check the route",
            )
        )
        return out
    with sock:
        peer = sock.getpeername()[0]
        out.append(Check("clearip connect", True, f"tcp to {target} ({peer}) connected"))
        if cfg.transport != "tls":
            return out
        try:
            with client_tls_context(cfg).wrap_socket(sock, server_hostname=cfg.host) as tls:
                version = tls.version() or "TLS"
        except ssl.SSLCertVerificationError as e:
            out.append(
                Check(
                    "clearip tls",
                    False,
                    f"certificate not verified: {e.verify_message or e}",
                    "set clearip.ca_file to the CA that signs ClearIP's certificate, or check "
                    "the system CA store (apt install ca-certificates)",
                )
            )
        except (ssl.SSLError, OSError) as e:
            out.append(
                Check(
                    "clearip tls",
                    False,
                    f"handshake with {target} failed: {e}",
                    "check that clearip.uri names ClearIP's TLS port (5061), or use "
                    "transport=tcp if ClearIP told you so",
                )
            )
        else:
            verified = "verified" if cfg.tls_verify else "NOT verified (clearip.tls_verify)"
            out.append(Check("clearip tls", True, f"{version} handshake, certificate {verified}"))
    return out


def check_hep(config: Config, timeout: float = NETWORK_TIMEOUT) -> Check:
    hep = config.control.hep
    if hep is None:
        return Check("hep export", True, "off (control.hep is empty)")
    try:
        addresses = _resolve(hep.host, hep.port, timeout)
    except (OSError, TimeoutError) as e:
        return Check(
            "hep export",
            False,
            f"collector {hep.host}:{hep.port} does not resolve: {e}",
            "fix control.hep (host:port of the HOMER/heplify collector) or its DNS name; "
            "calls are relayed anyway, only the HEP copies are lost",
            warning=True,
        )
    return Check("hep export", True, f"HEP3 over UDP to {addresses[0][0]}:{hep.port}")


# ---------------------------------------------------------------------------------------------


def _guarded(name: str, fn: Callable[[], Check | list[Check]]) -> list[Check]:
    try:
        result = fn()
    except Exception as e:  # a probe's bug or a surprise of the host: report, don't crash
        return [
            Check(
                name,
                False,
                f"the check itself failed: {type(e).__name__}: {e}",
                "look at the message above; if it makes no sense, report it as a bug",
            )
        ]
    return result if isinstance(result, list) else [result]


def run_checks(config_path: str | None, config: Config, *, network: bool = True) -> list[Check]:
    """Every check, in checklist order. Never raises."""
    source = config_path or "built-in defaults (no config file)"
    checks = [Check("config", True, f"{source} loaded")]
    probes: list[tuple[str, Callable[[], Check | list[Check]]]] = [
        ("privileges", lambda: check_privileges(config)),
        ("ports", lambda: check_ports(config)),
        ("fast path", lambda: check_fastpath(config)),
        ("state_dir", lambda: check_state_dir(config)),
        ("control socket", lambda: check_control_socket(config)),
        ("tls certificate", lambda: check_tls_certificate(config)),
        ("trusted sources", lambda: check_trusted(config)),
    ]
    if network:
        probes.append(("clearip", lambda: check_clearip(config)))
        probes.append(("hep export", lambda: check_hep(config)))
    for name, probe in probes:
        checks += _guarded(name, probe)
    if not network:
        checks.append(Check("clearip", True, "not checked (--no-network)"))
    return checks
