"""Running SIPp (Debian's sip-tester 3.6) in lab hosts, and reading back what happened.

    res = run_sipp(switch, "uac_call.xml", remote=proxy.hostport(), calls=3, service="12025550123")
    assert (res.successful, res.failed) == (3, 0), res
    uas = start_sipp(provider, "uas_provider_ok.xml", calls=3)     # returns once it listens
    ...
    got = uas.stop()                        # or uas.wait() when it ends by itself after -m calls
    assert got.received("INVITE")[0].header("Identity")

Each sipp writes its statistics (-trace_stat, the last CSV row is read), errors (-trace_err),
every message sent and received (-trace_msg) and its <log> actions (-trace_logs) into a
directory of its own in the lab's work directory; SippResult carries them as text.
Every run is bounded: -m calls, sipp's own -timeout, and a wait in Python a little longer.

SIPp here speaks UDP and TCP only. TlsFront puts socat in front of a TCP leg to speak TLS:
TlsFront.client() for a sipp that calls a TLS peer, TlsFront.server() for a sipp that must be
reached over TLS. make_tls_files() makes a CA and a certificate for such tests.

Scenarios are looked up in tests/e2e/scenarios/ (a path with a "/" is taken as it is).
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.netlab import Host, stop_process

SCENARIOS = Path(__file__).resolve().parent.parent / "tests" / "e2e" / "scenarios"
TRANSPORTS = ("u1", "un", "t1", "tn")  # UDP / TCP, one socket or one per call
WAIT_SLACK = 15.0  # seconds the Python wait allows beyond sipp's own -timeout

_counter = itertools.count(1)


def scenario_path(scenario: str | Path) -> Path:
    """`scenario` itself when it names a path, else tests/e2e/scenarios/<name>[.xml]."""
    p = Path(scenario)
    if "/" not in str(scenario):
        p = SCENARIOS / (p.name if p.suffix == ".xml" else f"{p.name}.xml")
    if not p.is_file():
        known = ", ".join(sorted(x.name for x in SCENARIOS.glob("*.xml")))
        raise FileNotFoundError(f"no SIPp scenario {p} (known: {known})")
    return p


# ---------------------------------------------------------------------- message trace


_TRACE_HEAD = re.compile(
    r"^-{20,} [^\n]*\n(?P<tr>\S+) message (?P<dir>sent|received) [^\n]*\n\n", re.M
)


@dataclass(frozen=True)
class TracedMessage:
    """One SIP message from a -trace_msg log: what sipp sent or received, verbatim."""

    direction: str  # "sent" | "received"
    transport: str  # "UDP" | "TCP"
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].rstrip("\r")

    @property
    def code(self) -> int | None:
        """The status code of a response, None for a request."""
        m = re.match(r"SIP/2\.0 (\d{3})", self.first_line)
        return int(m.group(1)) if m else None

    @property
    def reason_phrase(self) -> str | None:
        """The reason phrase of a response ("" if empty), None for a request."""
        m = re.match(r"SIP/2\.0 \d{3} ?(.*)$", self.first_line)
        return m.group(1) if m else None

    @property
    def method(self) -> str | None:
        """The method of a request, None for a response."""
        return None if self.code is not None else self.first_line.split(" ", 1)[0]

    @property
    def headers(self) -> list[tuple[str, str]]:
        """(name, value) of every header line, in order (no unfolding: SIPp sends none)."""
        head = re.split(r"\r?\n\r?\n", self.text, maxsplit=1)[0]
        out = []
        for line in head.splitlines()[1:]:
            name, sep, value = line.partition(":")
            if sep:
                out.append((name.strip(), value.strip()))
        return out

    def header(self, name: str) -> list[str]:
        """Values of every header called `name` (case-insensitive, full name only)."""
        return [v for n, v in self.headers if n.lower() == name.lower()]

    @property
    def body(self) -> str:
        parts = re.split(r"\r?\n\r?\n", self.text, maxsplit=1)
        return parts[1] if len(parts) > 1 else ""


def parse_message_log(text: str) -> list[TracedMessage]:
    """The messages of a SIPp -trace_msg log, in order."""
    heads = list(_TRACE_HEAD.finditer(text))
    out = []
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body = text[m.end() : end]
        body = body[:-1] if body.endswith("\n\n") else body  # sipp adds one blank line
        out.append(TracedMessage(m.group("dir"), m.group("tr"), body))
    return out


# ---------------------------------------------------------------------- results


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _last_stats(path: Path) -> dict[str, str]:
    """The last row of a -trace_stat CSV, by column name ({} if there is none)."""
    lines = [ln for ln in _read(path).splitlines() if ln.strip()]
    if len(lines) < 2:
        return {}
    return dict(zip(lines[0].split(";"), lines[-1].split(";"), strict=False))


def _int(stats: dict[str, str], key: str) -> int:
    try:
        return int(stats.get(key, "0") or 0)
    except ValueError:
        return 0


@dataclass(repr=False)
class SippResult:
    """What one sipp did. `rc`: its exit status (0: every call succeeded, 1: some failed,
    99: ended with no call processed, 255: a fatal error or its -timeout expired, -N: killed
    by signal N); None if Python had to stop it after its time limit (`timed_out`)."""

    rc: int | None
    successful: int
    failed: int
    created: int
    retransmissions: int
    timed_out: bool
    messages: str  # the -trace_msg log
    errors: str  # the -trace_err log
    logs: str  # the output of the scenario's <log> actions
    screen: str  # stdout/stderr (the last screen, or a start-up error)
    stats: dict[str, str]  # last -trace_stat row by column
    argv: list[str]
    workdir: Path
    _traced: list[TracedMessage] | None = field(default=None, repr=False)

    @property
    def traced(self) -> list[TracedMessage]:
        """Every message sent and received, parsed."""
        if self._traced is None:
            self._traced = parse_message_log(self.messages)
        return self._traced

    def _select(self, direction: str, what: int | str | None) -> list[TracedMessage]:
        out = [m for m in self.traced if m.direction == direction]
        if isinstance(what, int):
            return [m for m in out if m.code == what]
        if isinstance(what, str):
            return [m for m in out if m.method == what.upper()]
        return out

    def received(self, what: int | str | None = None) -> list[TracedMessage]:
        """Messages received: all, responses with status `what` (int), requests `what` (str)."""
        return self._select("received", what)

    def sent(self, what: int | str | None = None) -> list[TracedMessage]:
        """Messages sent, filtered like received()."""
        return self._select("sent", what)

    @property
    def failures(self) -> dict[str, int]:
        """The non-zero Failed* counters by cause, e.g. {"FailedTcpClosed(C)": 1}."""
        return {
            k: _int(self.stats, k)
            for k in self.stats
            if k.startswith("Failed") and k.endswith("(C)") and k != "FailedCall(C)"
            if _int(self.stats, k)
        }

    def describe(self, tail: int = 1500) -> str:
        """Counters, then the end of the error log and screen (what assert messages show)."""
        line = (
            f"sipp {Path(self.argv[self.argv.index('-sf') + 1]).name if '-sf' in self.argv else ''}"
            f" rc={self.rc} successful={self.successful} failed={self.failed} "
            f"created={self.created} retrans={self.retransmissions} "
            f"timed_out={self.timed_out} causes={self.failures} dir={self.workdir}"
        )
        if self.errors.strip():
            line += f"\n--- errors ---\n{self.errors[-tail:]}"
        if self.rc not in (0, None) and self.screen.strip():
            line += f"\n--- screen ---\n{self.screen[-tail:]}"
        return line

    __str__ = describe
    __repr__ = describe


# ---------------------------------------------------------------------- running


class SippProc:
    """A sipp running in the background (a UAS usually). stop() or wait() gives the result."""

    def __init__(
        self, host: Host, proc: subprocess.Popen[Any], argv: list[str], workdir: Path, limit: float
    ) -> None:
        self.host = host
        self.proc = proc
        self.argv = argv
        self.workdir = workdir
        self.limit = limit  # seconds: sipp's -timeout plus slack
        self._result: SippResult | None = None
        self._timed_out = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> SippResult:
        """Waits for sipp to end by itself (-m calls done, or its -timeout), at most `timeout`
        seconds (default: its whole time limit); then stops it and marks the result timed out."""
        try:
            self.proc.wait(self.limit if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self._timed_out = True
            stop_process(self.proc, signal.SIGTERM)
        return self.result()

    def stop(self, grace: float = 5.0) -> SippResult:
        """SIGUSR1 (no new calls; exit once the calls in progress end, writing final stats),
        then SIGTERM after `grace` seconds, then SIGKILL."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGUSR1)
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                stop_process(self.proc, signal.SIGTERM)
        return self.result()

    def result(self) -> SippResult:
        if self.proc.poll() is None:
            raise RuntimeError("sipp is still running: wait() or stop() it first")
        if self._result is None:
            d = self.workdir
            stats = _last_stats(d / "stats.csv")
            self._result = SippResult(
                rc=None if self._timed_out else self.proc.returncode,
                successful=_int(stats, "SuccessfulCall(C)"),
                failed=_int(stats, "FailedCall(C)"),
                created=_int(stats, "TotalCallCreated"),
                retransmissions=_int(stats, "Retransmissions(C)"),
                timed_out=self._timed_out,
                messages=_read(d / "messages.log"),
                errors=_read(d / "errors.log"),
                logs=_read(d / "logs.log"),
                screen=_read(d / "screen.log"),
                stats=stats,
                argv=self.argv,
                workdir=d,
            )
        return self._result

    def __enter__(self) -> SippProc:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running:
            self.stop()


_FIELD = re.compile(r"\{\{(\w+)\}\}")


def _filled(path: Path, fill: dict[str, str], workdir: Path) -> Path:
    """`path`, or a copy in `workdir` with its {{NAME}} fields filled from `fill`."""
    text = path.read_text(encoding="latin-1")  # byte for byte, whatever the file holds
    fields = set(_FIELD.findall(text))
    if not fields and not fill:
        return path
    if fields != set(fill):
        raise ValueError(
            f"{path.name}: fields {sorted(fields)} must be filled exactly, got {sorted(fill)}"
        )
    text = _FIELD.sub(lambda m: fill[m.group(1)], text)
    out = workdir / path.name
    out.write_text(text, encoding="latin-1")
    return out


def _local_ip(host: Host, remote: str | None, local_ip: str | None) -> str:
    if local_ip:
        return local_ip
    ip = host.ip6 if remote and remote.startswith("[") else host.ip
    if ip is None:
        raise ValueError(f"{host.name} has no address of the family of {remote!r}")
    return ip


def start_sipp(
    host: Host,
    scenario: str | Path,
    *,
    remote: str | None = None,
    transport: str = "u1",
    calls: int = 1,
    rate: float = 10,
    local_port: int = 5060,
    local_ip: str | None = None,
    timeout: float = 30,
    keys: dict[str, str] | None = None,
    sets: dict[str, str] | None = None,
    service: str | None = None,
    recv_timeout: float | None = None,
    extra: list[str] | None = None,
    fill: dict[str, str] | None = None,
    wait_ready: bool | None = None,
    name: str | None = None,
) -> SippProc:
    """Starts sipp in `host` and returns at once (a UAS: once it listens on local_port).

    `remote`: "ip:port" / "[ip6]:port" to call (a UAC); None for a UAS. `local_ip`: default the
    host's address of the remote's family (IPv4 for a UAS; pass host.ip6 for an IPv6 UAS).
    `transport`: u1 (UDP) or t1 (TCP) (also un / tn). `calls`: -m, sipp ends after that many
    calls. `rate`: calls per second (-r). `timeout`: sipp's global -timeout in seconds (it
    fails with -timeout_error); `recv_timeout`: seconds sipp waits for an expected message
    before failing the call (default: none, the scenario decides). `keys`: -key NAME VALUE,
    for [NAME] in messages. `sets`: -set NAME VALUE, for scenario globals [$NAME].
    `service`: -s (the user part of the Request-URI). `extra`: more sipp arguments.
    `fill`: values for the {{NAME}} fields of a template scenario (uas_reject.xml), for what
    sipp reads at load time (a status code): sipp gets a filled copy. `wait_ready`: wait
    until sipp listens (default: for a UAS). `name`: names the run's directory.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport {transport!r}: one of {TRANSPORTS} (TLS: use TlsFront)")
    path = scenario_path(scenario)
    ip = _local_ip(host, remote, local_ip)
    label = name or f"{host.name}.{path.stem}"
    workdir = host.lab.workdir / f"sipp{next(_counter):03d}.{label}"
    workdir.mkdir(parents=True)
    path = _filled(path, fill or {}, workdir)
    argv = ["sipp"]
    if remote:
        argv.append(remote)
    argv += [
        "-sf", str(path), "-i", ip, "-p", str(local_port), "-t", transport,
        "-m", str(calls), "-r", f"{rate:g}", "-rp", "1000",
        "-nostdin", "-timeout", f"{timeout:g}s", "-timeout_error",
        "-trace_stat", "-stf", str(workdir / "stats.csv"), "-fd", "1",
        "-trace_err", "-error_file", str(workdir / "errors.log"),
        "-trace_msg", "-message_file", str(workdir / "messages.log"),
        "-trace_logs", "-log_file", str(workdir / "logs.log"),
    ]  # fmt: skip
    if service is not None:
        argv += ["-s", service]
    if recv_timeout is not None:
        argv += ["-recv_timeout", str(round(recv_timeout * 1000))]
    for k, v in (keys or {}).items():
        argv += ["-key", k, str(v)]
    for k, v in (sets or {}).items():
        argv += ["-set", k, str(v)]
    argv += list(extra or [])
    screen = open(workdir / "screen.log", "wb")  # noqa: SIM115 - handed to the child
    try:
        # cwd: sipp drops files of its own (e.g. a -trace_stat CSV) where it runs
        proc = host.popen(argv, stdout=screen, stderr=subprocess.STDOUT, cwd=workdir)
    finally:
        screen.close()
    proc.log_path = workdir / "screen.log"  # type: ignore[attr-defined]
    sp = SippProc(host, proc, argv, workdir, timeout + WAIT_SLACK)
    if wait_ready if wait_ready is not None else remote is None:
        try:
            if transport.startswith("t"):
                host.wait_tcp(local_port, ip=ip, proc=proc)
            else:
                host.wait_udp(local_port, ip=ip, proc=proc)
        except BaseException:
            stop_process(proc)
            raise
    return sp


def run_sipp(host: Host, scenario: str | Path, **kw: Any) -> SippResult:
    """start_sipp() (same arguments) and wait for it to end by itself; the result."""
    kw.setdefault("wait_ready", False)
    return start_sipp(host, scenario, **kw).wait()


# ---------------------------------------------------------------------- TLS in front of sipp


def _addr(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _split_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class TlsFront:
    """socat in a lab host turning a plain-TCP SIPp leg into TLS (SIPp has no TLS here).

    client(): a sipp UAC sends TCP to `front.listen` (in the same host); socat carries each
    connection over TLS to `target` (the proxy's TLS port). The peer sees the host's address.
    server(): the proxy connects with TLS to `front.listen`; socat carries each connection
    over TCP to a sipp UAS listening on `target` in the same host.

    SIPp still writes ;transport=tcp / SIP/2.0/TCP in its own Via and Contact: tests of the
    proxy's TLS legs must not depend on what the far end claims there.
    """

    def __init__(self, host: Host, proc: subprocess.Popen[Any], listen: str, argv: list[str]):
        self.host = host
        self.proc = proc
        self.listen = listen  # "ip:port" the front accepts on
        self.argv = argv

    @classmethod
    def client(
        cls,
        host: Host,
        target: str,
        *,
        listen_port: int = 15061,
        listen_ip: str | None = None,
        cafile: str | Path | None = None,
        servername: str | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        min_version: str = "TLS1.2",
    ) -> TlsFront:
        """TCP in on listen_ip:listen_port, TLS out to `target` ("ip:port").

        With `cafile` the server certificate is verified (name: `servername`, else the target
        IP); without it, not. `servername` is also sent as SNI. `cert`/`key`: a client
        certificate to present.
        """
        ip = listen_ip or host.ip or "127.0.0.1"
        tip, tport = _split_hostport(target)
        listen = f"TCP{'6' if ':' in ip else ''}-LISTEN:{listen_port},bind={_bracket(ip)},"
        listen += "reuseaddr,fork"
        opts = [f"min-version={min_version}"]
        if cafile:
            opts += ["verify=1", f"cafile={cafile}", f"cn={servername or tip}"]
        else:
            opts.append("verify=0")
        if servername:
            opts.append(f"snihost={servername}")
        if cert:
            opts.append(f"cert={cert}")
        if key:
            opts.append(f"key={key}")
        out = f"OPENSSL:{_bracket(tip)}:{tport}," + ",".join(opts)
        return cls._start(host, ["socat", "-d", "-d", listen, out], ip, listen_port)

    @classmethod
    def server(
        cls,
        host: Host,
        target_port: int,
        *,
        cert: str | Path,
        key: str | Path,
        listen_port: int = 5061,
        listen_ip: str | None = None,
        target_ip: str | None = None,
        cafile: str | Path | None = None,
        min_version: str = "TLS1.2",
    ) -> TlsFront:
        """TLS in on listen_ip:listen_port (certificate `cert`/`key`), TCP out to the sipp
        listening on target_ip:target_port in the same host. With `cafile`, client
        certificates are required and verified against it."""
        ip = listen_ip or host.ip or "127.0.0.1"
        tip = target_ip or ip
        opts = [f"cert={cert}", f"key={key}", f"min-version={min_version}"]
        opts += [f"cafile={cafile}", "verify=1"] if cafile else ["verify=0"]
        pf = ",pf=ip6" if ":" in ip else ""
        listen = f"OPENSSL-LISTEN:{listen_port},bind={_bracket(ip)}{pf},reuseaddr,fork,"
        listen += ",".join(opts)
        out = f"TCP:{_bracket(tip)}:{target_port}"
        return cls._start(host, ["socat", "-d", "-d", listen, out], ip, listen_port)

    @classmethod
    def _start(cls, host: Host, argv: list[str], ip: str, port: int) -> TlsFront:
        proc = host.popen(argv)
        try:
            host.wait_tcp(port, ip=ip, proc=proc)
        except BaseException:
            stop_process(proc)
            raise
        return cls(host, proc, _addr(ip, port), argv)

    def stop(self) -> int | None:
        """Stops socat and the connections it forked (SIGTERM to its process group)."""
        return stop_process(self.proc)

    @property
    def log(self) -> str:
        """socat's -d -d log (connections, TLS errors)."""
        return _read(Path(self.proc.log_path))  # type: ignore[attr-defined]

    def __enter__(self) -> TlsFront:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bracket(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # PEM of the CA that signed `cert` (a verifier's cafile)
    cert: Path  # PEM: the leaf certificate
    key: Path  # PEM: its private key (unencrypted)


def make_tls_files(
    directory: str | Path,
    name: str = "server",
    *,
    ips: list[str] | tuple[str, ...] = (),
    dns: list[str] | tuple[str, ...] = (),
    days: int = 2,
) -> TlsFiles:
    """A throw-away CA and a certificate for `name` (CN) with the given SANs (P-256 keys),
    written as <name>-ca.pem, <name>.pem and <name>.key in `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"netlab test CA {name}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    files = TlsFiles(d / f"{name}-ca.pem", d / f"{name}.pem", d / f"{name}.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files
