"""Labs of hosts for end-to-end tests: network namespaces on one Linux bridge.

A lab is a set of network namespaces named ``f"{prefix}-{host}"``. One of them, the hub
(``f"{prefix}-hub"``), holds a Linux bridge; every host has a veth pair whose host end is
``eth0`` inside the host's namespace and whose other end is a port of that bridge. Hosts get
10.77.0.N/24 and fd77::N/64 (IPv6 without duplicate address detection, so it works at once).
Everything is made inside namespaces of our own: nothing touches the root namespace, and the
same addresses can be used by several labs at a time.

    with NetLab() as lab:
        switch = lab.add_host("switch")              # 10.77.0.11, fd77::11
        proxy = lab.add_host("proxy")                # 10.77.0.12, fd77::12
        proc = proxy.popen(["clearipctl", "run", "--config", path])   # log: proc.log_path
        proxy.wait_udp(5060, proc=proc)              # fails at once if proc dies first
        assert switch.ping(proxy.ip6)
        switch.run(["ss", "-tn"], timeout=5).stdout

``close()`` (also run by ``with``, by the pytest fixtures and at interpreter exit) stops every
process the lab started, by PID, then deletes every link and namespace it made. A prefix holds
the PID of the process that made the lab (``cipl-<pid>-<hex>``), so ``cleanup_stale()`` removes
the labs of runs that died without cleaning up, and never those of a live run.

Shared by the tests and the benchmarks in tools/; the pytest fixtures (``netlab``,
``netlab_factory``, skipping where namespaces can't be made) are in tests/netlab.py.
"""

from __future__ import annotations

import atexit
import contextlib
import fnmatch
import functools
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

BASE = "cipl"  # every default prefix starts with it: cleanup_stale() only looks at these
DEFAULT_STALE_GLOB = f"{BASE}-*"
HUB = "hub"  # reserved host name: the namespace holding the bridge
BRIDGE = "br0"
IFNAME = "eth0"
AUTO = "auto"  # add_host(ipv4=AUTO): the next free address of the lab's subnet
IP_TIMEOUT = 10.0  # seconds for one `ip` command
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL

_OWNER_RE = re.compile(rf"^{BASE}-(\d+)-[0-9a-f]+-")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,30}$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")


class NetLabError(RuntimeError):
    """A lab could not be built or torn down; the message says which command failed."""


class CommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message carries the command's stderr."""

    def __str__(self) -> str:
        err = self.stderr.strip() if isinstance(self.stderr, str) else ""
        return super().__str__().rstrip(".") + (f": {err}" if err else "")


def _ip(*args: str, ns: str | None = None, stdin: str | None = None) -> str:
    """Runs one `ip` command (in namespace `ns` with -n); raises NetLabError on failure."""
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    try:
        res = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise NetLabError(f"{' '.join(argv)}: timed out after {IP_TIMEOUT}s") from exc
    if res.returncode != 0:
        detail = f" <<< {stdin.strip()!r}" if stdin else ""
        raise NetLabError(f"{' '.join(argv)}{detail}: {res.stderr.strip() or res.returncode}")
    return res.stdout


def list_namespaces() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(ns: str) -> list[int]:
    """PIDs of the processes living in namespace `ns` (``ip netns pids``)."""
    res = subprocess.run(
        ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
    )
    return [int(tok) for tok in res.stdout.split() if tok.isdigit()]


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _kill_pids(pids: Sequence[int], grace: float = STOP_GRACE) -> None:
    """SIGTERM to each PID, up to `grace` seconds to go, then SIGKILL (only these PIDs)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    """Signals the process group the lab gave `proc` (its PID) while `proc` is alive.

    Processes are started in a session of their own, so the group holds `proc` and what it
    forked (socat children, proxy workers) and nothing else.
    """
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # not a group leader after all: the process alone
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


def stop_process(
    proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = STOP_GRACE
) -> int | None:
    """Sends `sig` to `proc` (and its group), waits up to `grace` s, then SIGKILL; returns rc."""
    _signal_group(proc, sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_GRACE)
    return proc.returncode


def _owner_pid(ns: str) -> int | None:
    m = _OWNER_RE.match(ns)
    return int(m.group(1)) if m else None


def cleanup_stale(prefix_glob: str = DEFAULT_STALE_GLOB) -> list[str]:
    """Deletes leftover namespaces matching `prefix_glob` whose making process is gone.

    A namespace named by a default prefix (``cipl-<pid>-...``) is left alone while that PID is
    alive (a lab of this or a parallel run). The processes still inside a stale namespace are
    ones an earlier run of ours started: they are stopped by PID before it is deleted.
    Returns the names deleted.
    """
    removed = []
    for ns in list_namespaces():
        if not fnmatch.fnmatchcase(ns, prefix_glob):
            continue
        owner = _owner_pid(ns)
        if owner is not None and _alive(owner):
            continue
        _kill_pids(namespace_pids(ns), grace=2.0)
        with contextlib.suppress(NetLabError):
            _ip("netns", "del", ns)
            removed.append(ns)
    return removed


def new_prefix() -> str:
    """A prefix unique to this process and lab: ``cipl-<pid>-<4 hex>``."""
    return f"{BASE}-{os.getpid()}-{secrets.token_hex(2)}"


@functools.cache
def netns_unavailable_reason() -> str | None:
    """Why this machine can't build labs (not root, no `ip`, no netns/veth/bridge), or None."""
    if os.geteuid() != 0:
        return "needs root: network-namespace labs (run the tests as root)"
    if shutil.which("ip") is None:
        return "needs iproute2: `ip` not found"
    probe = f"{new_prefix()}-probe"
    try:
        _ip("netns", "add", probe)
    except NetLabError as exc:
        return f"`ip netns add` does not work here: {exc}"
    try:
        _ip("link", "add", BRIDGE, "type", "bridge", ns=probe)
        _ip("link", "add", "p0", "type", "veth", "peer", "name", "p1", ns=probe)
    except NetLabError as exc:
        return f"bridge or veth links can't be made in a namespace: {exc}"
    finally:
        with contextlib.suppress(NetLabError):
            _ip("netns", "del", probe)
    return None


class Host:
    """One host of a lab: a network namespace with `eth0` on the lab's bridge."""

    def __init__(
        self, lab: NetLab, name: str, ns: str, cidr: str | None, cidr6: str | None
    ) -> None:
        self.lab = lab
        self.name = name
        self.ns = ns
        self.ifname = IFNAME
        self.cidr = cidr  # "10.77.0.11/24"
        self.cidr6 = cidr6  # "fd77::11/64"
        self.ip = cidr.split("/")[0] if cidr else None  # "10.77.0.11"
        self.ip6 = cidr6.split("/")[0] if cidr6 else None  # "fd77::11"
        self.extra_addresses: list[str] = []

    def __repr__(self) -> str:
        return f"Host({self.name!r}, ns={self.ns!r}, ip={self.ip!r}, ip6={self.ip6!r})"

    def hostport(self, port: int = 5060, *, v6: bool = False) -> str:
        """``"10.77.0.11:5060"``, or ``"[fd77::11]:5060"`` with v6=True."""
        return f"[{self.ip6}]:{port}" if v6 else f"{self.ip}:{port}"

    def argv(self, argv: Sequence[str], *, shared_mounts: bool = False) -> list[str]:
        """`argv` wrapped to run inside this host's namespace.

        `ip netns exec` also gives the process a fresh /sys, which hides the host's bpffs;
        shared_mounts=True enters the network namespace only (nsenter), so eBPF pins made
        there are the real /sys/fs/bpf ones that other processes and tests can see.
        """
        if shared_mounts:
            return ["nsenter", f"--net=/run/netns/{self.ns}", *map(str, argv)]
        return ["ip", "netns", "exec", self.ns, *map(str, argv)]

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Starts `argv` in this host's namespace; the lab stops it at close().

        Without stdout/stderr arguments, both go to a log file in the lab's work directory
        (its path is ``proc.log_path``). stdin is /dev/null unless given. The process gets a
        session (and process group) of its own, so it and its children can be signalled together.
        """
        return self.lab._popen(self, argv, **kw)

    def run(
        self, argv: Sequence[str], timeout: float = 10.0, check: bool = True, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Runs `argv` in this host's namespace to completion (text output captured)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        res = subprocess.run(self.argv(argv), timeout=timeout, text=True, check=False, **kw)
        if check and res.returncode != 0:
            raise CommandError(res.returncode, res.args, res.stdout, res.stderr)
        return res

    def ping(self, addr: str, timeout: float = 1.0) -> bool:
        """One ICMP (or ICMPv6, for an IPv6 `addr`) echo from this host; True if answered.

        Uses `ping` (iputils) when installed, else a raw-socket echo in Python.
        """
        v6 = ":" in addr
        if shutil.which("ping"):
            argv = ["ping", *(["-6"] if v6 else []), "-c1", f"-W{max(1, round(timeout))}", addr]
        else:
            argv = [sys.executable, "-c", _PING_PY, addr, str(timeout)]
        res = self.run(argv, timeout=timeout + 5, check=False)
        return res.returncode == 0

    def stop(
        self, proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = STOP_GRACE
    ) -> int | None:
        """Stops one process started by popen(): `sig`, up to `grace` s, then SIGKILL."""
        return stop_process(proc, sig, grace)

    def add_address(self, cidr: str) -> None:
        """Adds another address to eth0 (see NetLab.add_address)."""
        self.lab.add_address(self, cidr)

    def add_route(self, dest: str, via: str | None = None) -> None:
        """Adds a route (e.g. to another host's extra range via that host)."""
        args = ["route", "add", dest]
        args += ["via", via] if via else ["dev", self.ifname]
        if ipaddress.ip_network(dest, strict=False).version == 6:
            args.insert(0, "-6")
        _ip(*args, ns=self.ns)

    def _listening(self, proto: str, port: int, ip: str | None) -> bool:
        flt = f"sport = :{port}"
        if ip:
            flt = f"src {'[' + ip + ']' if ':' in ip else ip}:{port}"
        res = subprocess.run(
            ["ss", "-N", self.ns, "-Hn", "-l", "-u" if proto == "udp" else "-t", flt],
            capture_output=True,
            text=True,
            timeout=IP_TIMEOUT,
            check=False,
        )
        return res.returncode == 0 and bool(res.stdout.strip())

    def _wait_listen(
        self,
        proto: str,
        port: int,
        ip: str | None,
        timeout: float,
        proc: subprocess.Popen[Any] | None,
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._listening(proto, port, ip):
                return
            if proc is not None and proc.poll() is not None:
                raise NetLabError(
                    f"{self.name}: process {proc.pid} exited (rc={proc.returncode}) before "
                    f"listening on {proto} {ip or '*'}:{port}{_log_tail(proc)}"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.name}: nothing listens on {proto} {ip or '*'}:{port} "
                    f"after {timeout}s{_log_tail(proc) if proc else ''}"
                )
            time.sleep(0.05)

    def wait_udp(
        self,
        port: int,
        ip: str | None = None,
        timeout: float = 10.0,
        proc: subprocess.Popen[Any] | None = None,
    ) -> None:
        """Polls `ss` in the namespace until a UDP socket is bound to (ip or any):port.

        With `proc`, fails at once (with the end of its log) if that process exits first.
        """
        self._wait_listen("udp", port, ip, timeout, proc)

    def wait_tcp(
        self,
        port: int,
        ip: str | None = None,
        timeout: float = 10.0,
        proc: subprocess.Popen[Any] | None = None,
    ) -> None:
        """Polls `ss` in the namespace until a TCP socket listens on (ip or any):port."""
        self._wait_listen("tcp", port, ip, timeout, proc)


# One echo request over a raw socket; exit status 0 when the matching reply came in time.
_PING_PY = r"""
import os, socket, struct, sys, time
addr, timeout = sys.argv[1], float(sys.argv[2])
v6 = ":" in addr
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                  socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
ident = os.getpid() & 0xFFFF
def csum(b):
    b += b"\0" * (len(b) % 2)
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xFFFF); t += t >> 16
    return ~t & 0xFFFF
msg = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, ident, 1) + b"netlab-ping"
if not v6:  # the kernel fills the ICMPv6 checksum itself
    msg = msg[:2] + struct.pack("!H", csum(msg)) + msg[4:]
s.sendto(msg, (addr, 0))
deadline = time.monotonic() + timeout
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        data, _ = s.recvfrom(4096)
    except socket.timeout:
        break
    icmp = data if v6 else data[(data[0] & 15) * 4:]
    reply = 129 if v6 else 0
    if len(icmp) >= 8 and icmp[0] == reply and struct.unpack("!H", icmp[4:6])[0] == ident:
        sys.exit(0)
sys.exit(1)
"""


def _log_tail(proc: subprocess.Popen[Any] | None, size: int = 2000) -> str:
    path = getattr(proc, "log_path", None)
    if not path:
        return ""
    try:
        text = Path(path).read_text(errors="replace")[-size:]
    except OSError:
        return ""
    return f"\n--- end of {path} ---\n{text}"


class NetLab:
    """A lab of hosts (network namespaces) joined by one bridge; see the module docstring.

    `prefix`: names every namespace of the lab (default: ``cipl-<pid>-<4 hex>``).
    `workdir`: where process logs go (default: a temporary directory removed at close();
    set NETLAB_KEEP=1 to keep it). `subnet4`/`subnet6`: where automatic addresses come from.
    """

    def __init__(
        self,
        prefix: str | None = None,
        *,
        workdir: str | os.PathLike[str] | None = None,
        subnet4: str = "10.77.0.0/24",
        subnet6: str = "fd77::/64",
    ) -> None:
        self.prefix = prefix or new_prefix()
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(f"bad lab prefix {self.prefix!r}: letters, digits, '_.-' only")
        self.subnet4 = ipaddress.ip_network(subnet4)
        self.subnet6 = ipaddress.ip_network(subnet6)
        self.hosts: dict[str, Host] = {}
        self.processes: list[subprocess.Popen[Any]] = []
        self.namespaces: list[str] = []  # made by this lab, in order
        self.hub = f"{self.prefix}-{HUB}"
        self._next_auto = 11
        self._used: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        self._seq = 0
        self._closed = False
        self._own_workdir = workdir is None
        if workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        else:
            self.workdir = Path(workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.close)
        try:
            self._add_namespace(self.hub)
            _ip("link", "add", BRIDGE, "type", "bridge", "stp_state", "0", ns=self.hub)
            # no STP delay, and no multicast snooping that could hold back IPv6 ND
            _ip(
                *f"link set {BRIDGE} type bridge forward_delay 0 mcast_snooping 0".split(),
                ns=self.hub,
            )
            _ip("link", "set", BRIDGE, "up", ns=self.hub)
            # the bridge ports must not chatter (RS, MLD) into the hosts' captures
            self._sysctl(
                self.hub,
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            )
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __repr__(self) -> str:
        return f"NetLab({self.prefix!r}, hosts={list(self.hosts)})"

    # ------------------------------------------------------------------ building
    def _add_namespace(self, ns: str) -> None:
        if ns in list_namespaces():
            raise NetLabError(f"namespace {ns} already exists: pick another prefix")
        _ip("netns", "add", ns)
        self.namespaces.append(ns)

    def _sysctl(self, ns: str, *settings: str) -> None:
        res = subprocess.run(
            ["ip", "netns", "exec", ns, "sysctl", "-qw", *settings],
            capture_output=True,
            text=True,
            timeout=IP_TIMEOUT,
            check=False,
        )
        if res.returncode != 0:
            raise NetLabError(f"sysctl {' '.join(settings)} in {ns}: {res.stderr.strip()}")

    def _auto_n(self, v4: bool, v6: bool) -> int:
        """The first N (from the last one up) with .N and ::N free in the families asked for."""
        n = self._next_auto
        while True:
            addrs = []
            if v4:
                addrs.append(self._nth(self.subnet4, n))
            if v6:
                addrs.append(self._nth(self.subnet6, n))
            if not any(a in self._used for a in addrs):
                return n
            n += 1

    @staticmethod
    def _nth(
        net: ipaddress.IPv4Network | ipaddress.IPv6Network, n: int
    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        # .11 <-> ::11: the same digits in both families, easy to read in captures
        addr = net.network_address + (n if net.version == 4 else int(str(n), 16))
        if addr not in net or addr == net.broadcast_address:
            raise NetLabError(f"no free address left in {net}")
        return addr

    def _claim(self, cidr: str) -> str:
        iface = ipaddress.ip_interface(cidr)
        if iface.ip in self._used:
            raise ValueError(f"address {iface.ip} is already used in this lab")
        self._used.add(iface.ip)
        return str(iface)

    def add_host(self, name: str, ipv4: str | None = AUTO, ipv6: str | None = AUTO) -> Host:
        """Makes host `name`: namespace ``{prefix}-{name}``, eth0 on the bridge, lo up.

        `ipv4`/`ipv6`: a CIDR ("10.77.0.11/24", "fd77::11/64"), AUTO (default: the next free
        .N / ::N of the lab's subnets, from 11 up, the same N in both) or None (no address).
        """
        if self._closed:
            raise NetLabError("lab is closed")
        if not _NAME_RE.match(name) or name == HUB or name in self.hosts:
            raise ValueError(f"bad or duplicate host name {name!r} (a-z, 0-9, _; not {HUB!r})")
        n = self._auto_n(ipv4 == AUTO, ipv6 == AUTO)
        if ipv4 == AUTO:
            ipv4 = f"{self._nth(self.subnet4, n)}/{self.subnet4.prefixlen}"
        if ipv6 == AUTO:
            ipv6 = f"{self._nth(self.subnet6, n)}/{self.subnet6.prefixlen}"
        cidr = self._claim(ipv4) if ipv4 else None
        cidr6 = self._claim(ipv6) if ipv6 else None
        self._next_auto = n + 1
        ns = f"{self.prefix}-{name}"
        peer = f"v{len(self.hosts)}{name}"[:15]  # bridge port in the hub, unique there
        self._add_namespace(ns)
        host = Host(self, name, ns, cidr, cidr6)
        self.hosts[name] = host
        # addresses usable at once: no DAD on the link-local and global IPv6 addresses
        self._sysctl(ns, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        _ip(*f"link add {IFNAME} netns {ns} type veth peer name {peer} netns {self.hub}".split())
        cmds = ["link set lo up"]
        if cidr:
            cmds.append(f"addr add {cidr} dev {IFNAME}")
        if cidr6:
            cmds.append(f"addr add {cidr6} dev {IFNAME} nodad")
        cmds.append(f"link set {IFNAME} up")
        _ip("-batch", "-", ns=ns, stdin="\n".join(cmds) + "\n")
        _ip("link", "set", peer, "master", BRIDGE, "up", ns=self.hub)
        return host

    def add_address(self, host: Host | str, cidr: str) -> None:
        """Adds `cidr` to the host's eth0 (IPv6 with nodad), e.g. a range to spoof sources from.

        Other hosts reach an address outside the lab subnet only with a route (Host.add_route).
        """
        h = self.hosts[host] if isinstance(host, str) else host
        iface = ipaddress.ip_interface(cidr)
        args = ["addr", "add", str(iface), "dev", h.ifname]
        if iface.version == 6:
            args.append("nodad")
        _ip(*args, ns=h.ns)
        h.extra_addresses.append(str(iface))

    # ------------------------------------------------------------------ processes
    def _popen(self, host: Host, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        if self._closed:
            raise NetLabError("lab is closed")
        self._seq += 1
        log: IO[bytes] | None = None
        log_path = None
        if "stdout" not in kw:
            stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(str(argv[0])).name)
            log_path = self.workdir / f"{host.name}.{self._seq}.{stem}.log"
            log = open(log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
            kw["stdout"] = log
            kw.setdefault("stderr", subprocess.STDOUT)
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        shared_mounts = bool(kw.pop("shared_mounts", False))
        try:
            proc = subprocess.Popen(host.argv(argv, shared_mounts=shared_mounts), **kw)
        finally:
            if log is not None:
                log.close()
        proc.log_path = log_path  # type: ignore[attr-defined]
        proc.host = host  # type: ignore[attr-defined]
        self.processes.append(proc)
        return proc

    def _stop_all(self) -> None:
        live = [p for p in self.processes if p.poll() is None]
        for p in live:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for p in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
        for p in live:
            if p.poll() is None:
                _signal_group(p, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(STOP_GRACE)

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Stops the lab's processes, deletes its links and namespaces. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        errors: list[str] = []
        self._stop_all()
        # whatever still lives in our namespaces was forked by our processes: stop it too
        leftovers = [pid for ns in self.namespaces for pid in namespace_pids(ns)]
        if leftovers:
            _kill_pids(leftovers)
        for host in self.hosts.values():
            with contextlib.suppress(NetLabError):  # gone already if the ns went first
                _ip("link", "del", host.ifname, ns=host.ns)
        with contextlib.suppress(NetLabError):
            _ip("link", "del", BRIDGE, ns=self.hub)
        for ns in reversed(self.namespaces):
            try:
                _ip("netns", "del", ns)
            except NetLabError as exc:
                if ns in list_namespaces():
                    errors.append(str(exc))
        if self._own_workdir and not os.environ.get("NETLAB_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise NetLabError("lab teardown incomplete: " + "; ".join(errors))
