"""Flood benchmark: trusted calls through the relay under an untrusted UDP flood (SPEC §5, §7).

Run by `make bench` (arguments through `BENCH_FLOOD_ARGS=...`; `BENCH_FLOOD=0` skips it).
SPEC §7: "Under a flood from untrusted sources, trusted calls complete with unchanged latency,
and the relay process sees none of the flood (fast path on), compared with the fast path off."

Everything happens in a lab of network namespaces of our own (lab/netlab.py) on one bridge:

    proxy    10.77.0.10  `clearipctl run` (UDP+TCP 5060), trust = switch + clearip only
    switch   10.77.0.11  SIPp uac_call.xml: the trusted calls (INVITE/200/ACK/BYE)
    clearip  10.77.0.12  tools/clearip_emulator.py over TCP (302 to the provider)
    provider 10.77.0.13  SIPp uas_provider_ok.xml
    flooder  10.77.0.66  Python flooders: prebuilt Ethernet frames (IPv4/UDP, SIP INVITEs from
                         spoofed sources in --spoof-net) sent on an AF_PACKET socket to the
                         proxy's MAC; the proxy routes --spoof-net back via the flooder, so
                         its reverse-path check lets them in when the fast path is off

Phases, each with a fresh proxy (same config but `fastpath.enabled`):
    baseline  fast path on, no flood (the reference latency; --no-baseline skips it)
    on        fast path on, flood
    off       fast path off, flood (the relay itself drops the untrusted INVITEs)

In a flood phase the flooders start first; once they send, the switch places
--call-rate x --seconds trusted calls; when SIPp ends the flood is stopped. Measured:
  * flood: packets the flooders sent / their sending time (pps sent), and what reached the
    proxy's eth0 (its rx counter, pps at the proxy);
  * kernel: fast-path drops of untrusted packets (sum of `status --json`
    sources[].kernel.dropped_untrusted_pkts; the map holds every spoofed source, max_sources
    is set above --sources) per second of flood, the clsact qdisc's drop counter (the eBPF
    verdicts, never evicted), and UDP receive-buffer overflows in the proxy's namespace;
  * relay: `counters` deltas (messages_in, dropped_untrusted) and the SIP messages it counted
    from the spoofed sources, and its CPU (utime+stime of the supervisor and workers, its
    process group, from /proc) over the calls, as % of one core;
  * trusted calls: successful/failed/retransmissions at the switch, and the setup latency
    INVITE -> 200 (SIPp rtd 1, every call from -trace_rtt): avg, p50, p95, p99, max.

Bounds: every flooder stops after its packet cap or its time cap (--seconds + 60 s) and is
stopped as soon as the calls end; SIPp runs -m calls with its own -timeout; every wait is
bounded; the lab stops every process it started (by PID) and deletes its namespaces, also on
failure or Ctrl-C.

Figures, not assertions: the exit status is 0 whatever the figures say, 2 when the benchmark
could not run. Without root (no namespaces) it says why and exits 0, so that `make bench`
goes on with the other benchmarks.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchcommon import (
    add_output_arguments,
    apply_preset,
    log,
    machine_info,
    percentile,
    sigterm_as_exit,
    sipp_rtts,
    sipp_time_ms,
    text_table,
    write_json,
)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # lab.netlab, lab.sippy_runner

if TYPE_CHECKING:
    from lab.netlab import Host, NetLab
    from lab.sippy_runner import SippProc

PYTHON = sys.executable
PROXY, SWITCH, CLEARIP, PROVIDER, FLOODER = (
    "10.77.0.10", "10.77.0.11", "10.77.0.12", "10.77.0.13", "10.77.0.66",
)  # fmt: skip
NUMBER = "12025550100"
SIP_PORT = 5060

QUICK = {"seconds": 5.0, "call_rate": 20.0}
DEFAULTS = {"seconds": 15.0, "call_rate": 50.0}

UPSTREAM_TIMEOUT_S = 30.0  # the proxy's ClearIP link up (the eBPF compile comes before it)
PROXY_READY_TIMEOUT_S = 60.0
PROXY_STOP_GRACE_S = 15.0
FLOOD_START_TIMEOUT_S = 20.0  # a flooder builds its frames and says "started"
FLOOD_SLACK_S = 60.0  # a flooder's own time cap: --seconds + this
SIPP_SLACK_S = 30.0  # sipp -timeout: --seconds + this
RECV_TIMEOUT_S = 10.0  # a trusted call fails when an expected message is this late
DRAIN_S = 1.0  # after the flood, before the last counters
CTL_TIMEOUT_S = 30.0

EPILOG = """\
examples:
  make bench                                  # all benchmarks, this one included
  make bench BENCH_FLOOD_ARGS="--quick"       # this one short (BENCH_FLOOD=0 skips it)
  .venv/bin/python tools/bench_flood.py --quick --json -
  .venv/bin/python tools/bench_flood.py --flood-pps 100000 --seconds 30 --call-rate 100

output: progress on stderr; the table on stdout (on stderr with --json -, so that stdout is
  JSON only). Needs root (network namespaces, nftables, eBPF), sipp (sip-tester) and tc.
"""



# ---------------------------------------------------------------------------- the flooder

# Runs in the flooder's namespace: one JSON argument (see Flooders.start); prints a JSON line
# {"started": ...} once it sends and {"sent", "errors", "seconds"} when it ends (packet cap,
# time cap, SIGTERM or SIGINT).
FLOODER_PY = r"""
import json, signal, socket, struct, sys, time
cfg = json.loads(sys.argv[1])
stop = False
def on_signal(signum, frame):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)

def csum(header):
    s = sum(struct.unpack("!10H", header))
    s = (s & 0xFFFF) + (s >> 16)
    s += s >> 16
    return ~s & 0xFFFF

eth = bytes.fromhex(cfg["dst_mac"].replace(":", "")) + bytes.fromhex(
    cfg["src_mac"].replace(":", "")) + b"\x08\x00"
dst = socket.inet_aton(cfg["dst_ip"])
frames = []
for k, src_ip in enumerate(cfg["sources"]):
    sport = 10000 + (k * 7 + cfg["index"] * 1009) % 50000
    payload = (
        f"INVITE sip:+{cfg['number']}@{cfg['dst_ip']}:{cfg['dst_port']};user=phone SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {src_ip}:{sport};branch=z9hG4bK-flood-{cfg['index']}-{k}\r\n"
        f"From: <sip:+13035550666@{src_ip};user=phone>;tag=flood{k}\r\n"
        f"To: <sip:+{cfg['number']}@{cfg['dst_ip']};user=phone>\r\n"
        f"Call-ID: flood-{cfg['index']}-{k}@{src_ip}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:+13035550666@{src_ip}:{sport}>\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    udp = struct.pack("!HHHH", sport, cfg["dst_port"], 8 + len(payload), 0)  # no checksum
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), k & 0xFFFF, 0x4000, 64, 17,
                     0, socket.inet_aton(src_ip), dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    frames.append(eth + ip + udp + payload)
size = cfg["chunk"]
chunks = [frames[i:i + size] for i in range(0, len(frames), size)]

s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: receives nothing
try:
    s.setsockopt(263, 20, 1)  # SOL_PACKET, PACKET_QDISC_BYPASS
except OSError:
    pass
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
s.bind((cfg["ifname"], 0))
send = s.send
pps, cap = cfg["pps"], cfg["max_packets"]
print(json.dumps({"started": time.time(), "frames": len(frames)}), flush=True)
t0 = time.monotonic()
deadline = t0 + cfg["max_seconds"]
sent = errors = i = 0
nchunks = len(chunks)
while not stop and sent < cap:
    now = time.monotonic()
    if now >= deadline:
        break
    if pps:
        ahead = sent - (now - t0) * pps
        if ahead > 0:
            time.sleep(min(0.05, ahead / pps))
            continue
    chunk = chunks[i]
    i = (i + 1) % nchunks
    if sent + len(chunk) > cap:
        chunk = chunk[:cap - sent]
    try:
        sum(map(send, chunk))
        sent += len(chunk)
    except OSError:  # ENOBUFS: that chunk is not counted (an undercount of < one chunk)
        errors += 1
print(json.dumps({"sent": sent, "errors": errors, "seconds": time.monotonic() - t0}),
      flush=True)
"""


@dataclass
class FloodResult:
    flooders: int = 0
    pps_limit: int | None = None  # None: as fast as they can
    sent: int = 0
    errors: int = 0
    seconds: float = 0.0  # the longest sending time of a flooder
    pps_sent: float = 0.0
    eth0_rx_pkts: int = 0  # what reached the proxy's eth0 during the flood
    eth0_rx_pps: float = 0.0
    per_flooder: list[dict[str, Any]] = field(default_factory=list)


class Flooders:
    """`count` flooder processes in the flooder host, each with its slice of the sources."""

    def __init__(
        self,
        host: Host,
        *,
        count: int,
        sources: list[str],
        dst_mac: str,
        src_mac: str,
        pps: int | None,
        max_packets: int,
        max_seconds: float,
    ) -> None:
        self.host = host
        self.count = count
        self.pps = pps
        self.procs: list[subprocess.Popen[Any]] = []
        self.paths: list[Path] = []
        per_pps = 0 if pps is None else max(1, math.ceil(pps / count))
        chunk = 256 if not per_pps else max(1, min(256, per_pps // 200))
        for index in range(count):
            cfg = {
                "index": index,
                "ifname": host.ifname,
                "dst_mac": dst_mac,
                "src_mac": src_mac,
                "dst_ip": PROXY,
                "dst_port": SIP_PORT,
                "number": NUMBER,
                "sources": sources[index::count],
                "pps": per_pps,
                "chunk": chunk,
                "max_packets": max(1, max_packets // count),
                "max_seconds": max_seconds,
            }
            path = host.lab.workdir / f"flooder{index}.{os.getpid()}.{time.monotonic_ns()}.out"
            with open(path, "wb") as out:
                proc = host.popen([PYTHON, "-c", FLOODER_PY, json.dumps(cfg)], stdout=out,
                                  stderr=subprocess.STDOUT)  # fmt: skip
            proc.log_path = path  # type: ignore[attr-defined]
            self.procs.append(proc)
            self.paths.append(path)

    def _lines(self, index: int) -> list[dict[str, Any]]:
        out = []
        with contextlib.suppress(OSError):
            for line in self.paths[index].read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    item = json.loads(line)
                    if isinstance(item, dict):
                        out.append(item)
        return out

    def wait_started(self, timeout: float = FLOOD_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        for index, proc in enumerate(self.procs):
            while not any("started" in item for item in self._lines(index)):
                if proc.poll() is not None:
                    text = self.paths[index].read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"flooder {index} exited (rc={proc.returncode}): {text}")
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"flooder {index} did not start in {timeout:g} s")
                time.sleep(0.05)

    def stop(self) -> FloodResult:
        """SIGTERM to every flooder (they print their counts and exit), bounded waits."""
        from lab.netlab import stop_process

        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        result = FloodResult(flooders=self.count, pps_limit=self.pps)
        for index, proc in enumerate(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                stop_process(proc)
            final = [item for item in self._lines(index) if "sent" in item]
            item = final[-1] if final else {"sent": 0, "errors": 0, "seconds": 0.0, "lost": True}
            result.per_flooder.append(item)
            result.sent += int(item.get("sent", 0))
            result.errors += int(item.get("errors", 0))
            result.seconds = max(result.seconds, float(item.get("seconds", 0.0)))
        if result.seconds > 0:
            result.pps_sent = result.sent / result.seconds
        return result


# ---------------------------------------------------------------------------- measurements


def _tree_cpu_ticks(root: int) -> tuple[int, list[int]]:
    """utime+stime (clock ticks) summed over `root` and its live descendants (the relay
    workers run in process groups of their own, so the tree it is), and their PIDs."""
    stats: dict[int, tuple[int, int]] = {}  # pid -> (ppid, ticks)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 12:
            stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    pids, todo = [], [root] if root in stats else []
    while todo and len(pids) < 10_000:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return sum(stats[p][1] for p in pids), sorted(pids)


def _rtt_values(workdir: Path, rtd: str = "1") -> list[float]:
    """INVITE -> 200 times (ms) of every call, from sipp's -trace_rtt file(s) in `workdir`."""
    rtts = sipp_rtts(sorted(workdir.glob("*_rtt.csv")))
    return sorted(ms for _, ms, name in rtts if name in (rtd, f"rtd{rtd}"))


@dataclass
class CallResult:
    attempted: int = 0
    created: int = 0
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    sipp_rc: int | None = None
    timed_out: bool = False
    seconds: float = 0.0
    setup_ms: dict[str, float | int | None] = field(default_factory=dict)
    provider_successful: int = 0
    workdir: str = ""


def _call_result(sp: SippProc, attempted: int, seconds: float) -> CallResult:
    res = sp.result()
    values = _rtt_values(res.workdir)
    avg = (
        sum(values) / len(values)
        if values
        else sipp_time_ms(res.stats.get("ResponseTime1(C)", ""))
    )
    setup: dict[str, float | int | None] = {
        "n": len(values),
        "avg": avg,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": values[-1] if values else None,
    }
    return CallResult(
        attempted=attempted,
        created=res.created,
        successful=res.successful,
        failed=res.failed,
        retransmissions=res.retransmissions,
        sipp_rc=res.rc,
        timed_out=res.timed_out,
        seconds=round(seconds, 3),
        setup_ms={k: round(v, 3) if isinstance(v, float) else v for k, v in setup.items()},
        workdir=str(res.workdir),
    )


@dataclass
class PhaseResult:
    phase: str
    fastpath: bool
    flood: FloodResult | None
    calls: CallResult
    relay: dict[str, Any]
    kernel: dict[str, Any]
    fastpath_status: dict[str, Any]
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- the lab


class FloodLab:
    """The hosts, and one proxy run per phase."""

    def __init__(self, net: NetLab, args: argparse.Namespace) -> None:
        self.net = net
        self.args = args
        self.proxy = net.add_host("proxy", f"{PROXY}/24", None)
        self.switch = net.add_host("switch", f"{SWITCH}/24", None)
        self.clearip = net.add_host("clearip", f"{CLEARIP}/24", None)
        self.provider = net.add_host("provider", f"{PROVIDER}/24", None)
        self.flooder = net.add_host("flooder", f"{FLOODER}/24", None)
        # replies to the spoofed sources (there are none: untrusted = drop) would go to the
        # flooder; with the route, the proxy's reverse-path check accepts the flood
        self.proxy.add_route(str(args.spoof_net), via=FLOODER)
        self.rules = net.workdir / "rules.toml"
        self.rules.write_text(
            f'[[rule]]\nmatch = "^\\\\+?{NUMBER}$"\n'
            f'contacts = ["sip:{{number}}@{PROVIDER}:5060"]\nidentity = true\n'
        )
        self.name = f"cipf{os.getpid() % 100000}"  # our own table and pins, never a real one's
        hosts = args.spoof_net.hosts()
        self.sources = [str(next(hosts)) for _ in range(args.sources)]
        self.config: Path | None = None
        self.proc: subprocess.Popen[Any] | None = None

    def mac(self, host: Host) -> str:
        out = host.run(["cat", f"/sys/class/net/{host.ifname}/address"]).stdout.strip()
        return out

    # -- the proxy

    def start_proxy(self, phase: str, fastpath: bool) -> subprocess.Popen[Any]:
        work = self.net.workdir / phase
        (work / "state").mkdir(parents=True, exist_ok=True)
        config = work / "proxy.toml"
        workers = f"\n[relay]\nworkers = {self.args.workers}\n" if self.args.workers else ""
        config.write_text(f"""
[listen]
udp = ["{PROXY}:5060"]
tcp = ["{PROXY}:5060"]
tls = []
[clearip]
uri = "sip:{CLEARIP}:5060;transport=tcp"
timeout = 2.0
[trust]
sources = ["{SWITCH}/32", "{CLEARIP}/32"]
untrusted = "drop"
[fastpath]
enabled = {"true" if fastpath else "false"}
name = "{self.name}"
max_sources = {max(4096, 2 ** math.ceil(math.log2(self.args.sources + 1024)))}
[control]
socket = "{work}/ctl.sock"
state_dir = "{work}/state"
metrics = ""
log_level = "warning"
{workers}""")
        self.config = config
        ctl = str(self.args.clearipctl)
        proc = self.proxy.popen([ctl, "run", "--config", str(config)])
        self.proc = proc
        self.proxy.wait_udp(SIP_PORT, ip=PROXY, proc=proc, timeout=PROXY_READY_TIMEOUT_S)
        deadline = time.monotonic() + UPSTREAM_TIMEOUT_S
        while (self.status().get("upstream") or {}).get("state") != "connected":
            if proc.poll() is not None:
                raise RuntimeError(f"the proxy exited (rc={proc.returncode}): {_tail(proc)}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"ClearIP link not up after {UPSTREAM_TIMEOUT_S:g} s")
            time.sleep(0.2)
        return proc

    def stop_proxy(self) -> int | None:
        if self.proc is None:
            return None
        rc = self.proxy.stop(self.proc, grace=PROXY_STOP_GRACE_S)
        self.proc = None
        return rc

    def status(self) -> dict[str, Any]:
        assert self.config is not None
        res = subprocess.run(
            [str(self.args.clearipctl), "status", "--json", "--config", str(self.config)],
            capture_output=True, text=True, timeout=CTL_TIMEOUT_S, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"clearipctl status: rc={res.returncode}: {res.stderr.strip()}")
        data: dict[str, Any] = json.loads(res.stdout)
        return data

    # -- kernel counters in the proxy's namespace

    def eth0_rx(self) -> int:
        res = subprocess.run(
            ["ip", "-n", self.proxy.ns, "-j", "-s", "link", "show", self.proxy.ifname],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        link = json.loads(res.stdout)[0]
        stats = link.get("stats64") or link.get("stats") or {}
        return int((stats.get("rx") or {}).get("packets", 0))

    def qdisc_drops(self) -> int | None:
        """Drops counted by the clsact/ingress qdisc (TC_ACT_SHOT verdicts), None without one."""
        res = subprocess.run(
            ["tc", "-n", self.proxy.ns, "-s", "-j", "qdisc", "show", "dev", self.proxy.ifname],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if res.returncode != 0 or not res.stdout.strip():
            return None
        with contextlib.suppress(ValueError):
            for q in json.loads(res.stdout):
                if q.get("kind") in ("clsact", "ingress"):
                    return int(q.get("drops", 0))
        return None

    def udp_snmp(self) -> dict[str, int]:
        text = self.proxy.run(["cat", "/proc/net/snmp"], timeout=10).stdout
        rows = [line.split() for line in text.splitlines() if line.startswith("Udp:")]
        if len(rows) < 2:
            return {}
        out = {}
        for k, v in zip(rows[0][1:], rows[1][1:], strict=False):
            with contextlib.suppress(ValueError):
                out[k] = int(v)
        return out

    def kernel_snapshot(self) -> dict[str, Any]:
        return {"eth0_rx": self.eth0_rx(), "qdisc_drops": self.qdisc_drops(),
                "udp": self.udp_snmp()}  # fmt: skip

    # -- a phase

    def run_phase(self, phase: str, fastpath: bool, flood: bool) -> PhaseResult:
        from lab.netlab import stop_process
        from lab.sippy_runner import start_sipp

        args = self.args
        calls = max(1, round(args.call_rate * args.seconds))
        log(f"[{phase}] proxy with fastpath.enabled = {str(fastpath).lower()} ...")
        emulator = self.clearip.popen([
            PYTHON, str(REPO / "tools" / "clearip_emulator.py"), "--rules", str(self.rules),
            "--listen", f"tcp:{CLEARIP}:5060",
        ])  # fmt: skip
        notes: list[str] = []
        flooders: Flooders | None = None
        uas: SippProc | None = None
        try:
            self.clearip.wait_tcp(5060, ip=CLEARIP, proc=emulator, timeout=20)
            proxy = self.start_proxy(phase, fastpath)
            fp = self.status().get("fastpath") or {}
            if bool(fp.get("enabled")) != fastpath:
                raise RuntimeError(f"fast path should be {fastpath}, status says {fp}")
            uas = start_sipp(
                self.provider, "uas_provider_ok.xml", calls=calls,
                timeout=args.seconds + SIPP_SLACK_S + 10, name=f"{phase}.provider",
            )  # fmt: skip
            st0 = self.status()
            k0 = self.kernel_snapshot()
            flood_t0 = time.monotonic()
            if flood:
                flooders = Flooders(
                    self.flooder,
                    count=args.flooders,
                    sources=self.sources,
                    dst_mac=self.mac(self.proxy),
                    src_mac=self.mac(self.flooder),
                    pps=args.flood_pps,
                    max_packets=args.flood_max_packets,
                    max_seconds=args.seconds + FLOOD_SLACK_S,
                )
                flooders.wait_started()
                time.sleep(0.5)  # let it reach full speed before the calls
                log(f"[{phase}] flood running ({args.flooders} flooder(s)); {calls} calls at "
                    f"{args.call_rate:g}/s ...")  # fmt: skip
            else:
                log(f"[{phase}] no flood; {calls} calls at {args.call_rate:g}/s ...")
            cpu0, pids0 = _tree_cpu_ticks(proxy.pid)
            t0 = time.monotonic()
            uac = start_sipp(
                self.switch, "uac_call.xml", remote=f"{PROXY}:5060", service=NUMBER,
                calls=calls, rate=args.call_rate, timeout=args.seconds + SIPP_SLACK_S,
                recv_timeout=RECV_TIMEOUT_S, extra=["-trace_rtt", "-rtt_freq", "1"],
                name=f"{phase}.switch",
            )  # fmt: skip
            uac.wait()
            t1 = time.monotonic()
            cpu1, pids = _tree_cpu_ticks(proxy.pid)
            flood_res = flooders.stop() if flooders is not None else None
            flood_t1 = time.monotonic()
            time.sleep(DRAIN_S)
            k1 = self.kernel_snapshot()
            st1 = self.status()
            call_res = _call_result(uac, calls, t1 - t0)
            prov = uas.stop(grace=5)
            call_res.provider_successful = prov.successful
            uas = None
        finally:
            if flooders is not None:
                for p in flooders.procs:
                    stop_process(p, grace=2)
            if uas is not None:
                stop_process(uas.proc, grace=2)
            rc = self.stop_proxy()
            stop_process(emulator, grace=5)
        if rc not in (0, None):
            notes.append(f"the proxy exited with rc={rc} at stop")
        if fastpath:
            tables = self.proxy.run(["nft", "list", "tables"], check=False).stdout
            if self.name in tables:
                notes.append(f"nft table {self.name} left behind after stop")

        window = max(t1 - t0, 1e-6)
        flood_window = max(flood_t1 - flood_t0, 1e-6)
        flood_seconds = flood_res.seconds if flood_res and flood_res.seconds > 0 else flood_window
        if flood_res is not None:
            flood_res.eth0_rx_pkts = k1["eth0_rx"] - k0["eth0_rx"]
            flood_res.eth0_rx_pps = round(flood_res.eth0_rx_pkts / flood_seconds, 1)
            flood_res.pps_sent = round(flood_res.pps_sent, 1)
            flood_res.seconds = round(flood_res.seconds, 3)
            if flood_res.errors:
                notes.append(f"{flood_res.errors} flood chunk(s) failed to send (ENOBUFS)")

        relay = self._relay_figures(st0, st1, cpu1 - cpu0, window, pids0, pids)
        kernel = self._kernel_figures(st0, st1, k0, k1, flood_seconds if flood_res else window)
        if relay["processes_gone"]:
            notes.append(
                f"{relay['processes_gone']} relay process(es) ended during the calls (a worker "
                "restart?): their CPU is not counted"
            )
        return PhaseResult(
            phase=phase,
            fastpath=fastpath,
            flood=flood_res,
            calls=call_res,
            relay=relay,
            kernel=kernel,
            fastpath_status=st1.get("fastpath") or {},
            notes=notes,
        )

    def _in_flood(self, address: str) -> bool:
        with contextlib.suppress(ValueError):
            return ipaddress.ip_address(address) in self.args.spoof_net
        return False

    def _source_sum(self, status: dict[str, Any], part: str, key: str, flood: bool) -> int:
        total = 0
        for src in status.get("sources") or []:
            if not flood or self._in_flood(str(src.get("address", ""))):
                total += int((src.get(part) or {}).get(key, 0) or 0)
        return total

    def _relay_figures(
        self,
        st0: dict[str, Any],
        st1: dict[str, Any],
        ticks: int,
        window: float,
        pids0: list[int],
        pids1: list[int],
    ) -> dict[str, Any]:
        c0, c1 = st0.get("counters") or {}, st1.get("counters") or {}
        hz = os.sysconf("SC_CLK_TCK")
        flood_sources_seen = sum(
            1
            for s in st1.get("sources") or []
            if self._in_flood(str(s.get("address", "")))
            and int((s.get("sip") or {}).get("messages_in", 0) or 0) > 0
        )
        return {
            "messages_in": int(c1.get("messages_in", 0)) - int(c0.get("messages_in", 0)),
            "dropped_untrusted": int(c1.get("dropped_untrusted", 0))
            - int(c0.get("dropped_untrusted", 0)),
            "flood_messages_in": self._source_sum(st1, "sip", "messages_in", True)
            - self._source_sum(st0, "sip", "messages_in", True),
            "flood_sources_seen": flood_sources_seen,
            "cpu_pct": round(100.0 * ticks / hz / window, 1),
            "cpu_seconds": round(ticks / hz, 2),
            "window_s": round(window, 3),
            "processes": len(pids1),
            "processes_gone": len(set(pids0) - set(pids1)),
        }

    def _kernel_figures(
        self,
        st0: dict[str, Any],
        st1: dict[str, Any],
        k0: dict[str, Any],
        k1: dict[str, Any],
        seconds: float,
    ) -> dict[str, Any]:
        drops = self._source_sum(st1, "kernel", "dropped_untrusted_pkts", True) - self._source_sum(
            st0, "kernel", "dropped_untrusted_pkts", True
        )
        all_drops = self._source_sum(st1, "kernel", "dropped_untrusted_pkts", False)
        all_drops -= self._source_sum(st0, "kernel", "dropped_untrusted_pkts", False)
        q0, q1 = k0.get("qdisc_drops"), k1.get("qdisc_drops")
        qdrops = q1 - q0 if isinstance(q0, int) and isinstance(q1, int) else None
        u0, u1 = k0.get("udp") or {}, k1.get("udp") or {}

        def udp(key: str) -> int:
            return int(u1.get(key, 0)) - int(u0.get(key, 0))

        return {
            "fastpath_dropped_untrusted": drops,
            "fastpath_dropped_untrusted_all_sources": all_drops,
            "drops_per_s": round(drops / seconds, 1),
            "qdisc_drops": qdrops,
            "qdisc_drops_per_s": round(qdrops / seconds, 1) if qdrops is not None else None,
            "udp_in_datagrams": udp("InDatagrams"),
            "udp_rcvbuf_errors": udp("RcvbufErrors"),
            "udp_rcvbuf_errors_per_s": round(udp("RcvbufErrors") / seconds, 1),
            "seconds": round(seconds, 3),
        }


def _tail(proc: subprocess.Popen[Any], size: int = 2000) -> str:
    path = getattr(proc, "log_path", None)
    if not path:
        return ""
    with contextlib.suppress(OSError):
        return Path(path).read_text(errors="replace")[-size:]
    return ""


# ---------------------------------------------------------------------------- report


def _fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float):
        return format(value, spec)
    return str(value)


def render_table(phases: list[PhaseResult]) -> str:
    head = (
        "phase", "flood pps sent", "pps at proxy", "kernel drops/s", "sockbuf drops/s",
        "relay saw msgs", "relay dropped", "relay CPU", "calls ok/failed", "retrans",
        "setup avg/p50/p95/p99 ms",
    )  # fmt: skip
    rows = [head]
    for p in phases:
        f, k, r, c = p.flood, p.kernel, p.relay, p.calls
        s = c.setup_ms
        lat = "/".join(_fmt(s.get(q), ".1f") for q in ("avg", "p50", "p95", "p99"))
        lat += f" (n={s.get('n', 0)})"
        rows.append((
            f"{p.phase} (fast path {'on' if p.fastpath else 'off'})",
            _fmt(f.pps_sent if f else None),
            _fmt(f.eth0_rx_pps if f else None),
            _fmt(k["drops_per_s"] if p.fastpath else None),
            _fmt(k["udp_rcvbuf_errors_per_s"]),
            f"{r['messages_in']:,} ({r['flood_messages_in']:,} flood)",
            _fmt(r["dropped_untrusted"], ","),
            f"{r['cpu_pct']:.1f}%",
            f"{c.successful}/{c.failed} of {c.attempted}",
            _fmt(c.retransmissions, ","),
            lat,
        ))  # fmt: skip
    return text_table(rows, sep="  ")


def summary(phases: list[PhaseResult]) -> list[str]:
    by = {p.phase: p for p in phases}
    out = []
    on, off, base = by.get("on"), by.get("off"), by.get("baseline")
    if on is not None:
        out.append(
            f"fast path on: the relay counted {on.relay['flood_messages_in']:,} flood messages "
            f"and dropped {on.relay['dropped_untrusted']:,} untrusted; the kernel dropped "
            f"{on.kernel['fastpath_dropped_untrusted']:,} "
            f"({on.kernel['drops_per_s']:,.0f}/s) of "
            f"{on.flood.sent if on.flood else 0:,} sent"
        )
    if off is not None:
        out.append(
            f"fast path off: the relay counted {off.relay['flood_messages_in']:,} flood "
            f"messages, dropped {off.relay['dropped_untrusted']:,}; "
            f"{off.kernel['udp_rcvbuf_errors']:,} overflowed its UDP socket buffers"
        )
    for p in (on, off):
        if p is None or base is None:
            continue
        a, b = p.calls.setup_ms.get("p50"), base.calls.setup_ms.get("p50")
        if isinstance(a, int | float) and isinstance(b, int | float) and b > 0:
            out.append(f"{p.phase}: setup p50 {a:.1f} ms vs {b:.1f} ms without flood "
                       f"(x{a / b:.2f})")  # fmt: skip
    return out



# ---------------------------------------------------------------------------- CLI


def _pps(text: str) -> int | None:
    if text.strip().lower() == "max":
        return None
    value = int(float(text))
    if value <= 0:
        raise argparse.ArgumentTypeError("a positive packets/s, or 'max'")
    return value


def _net(text: str) -> ipaddress.IPv4Network:
    net = ipaddress.ip_network(text, strict=False)
    if not isinstance(net, ipaddress.IPv4Network):
        raise argparse.ArgumentTypeError("an IPv4 network")
    if net.overlaps(ipaddress.ip_network("10.77.0.0/24")):
        raise argparse.ArgumentTypeError("must not overlap the lab's 10.77.0.0/24")
    return net


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_flood",
        description=(
            "Trusted SIPp calls through the relay under an untrusted UDP flood (spoofed "
            "sources), with the kernel fast path on and off, in network namespaces: relay "
            "CPU, what the relay saw, trusted call success and setup latency, kernel drops."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=None, metavar="N",
                        help="seconds of trusted calls per phase [15; --quick 5]")  # fmt: skip
    parser.add_argument("--call-rate", type=float, default=None, metavar="R",
                        help="trusted calls per second [50; --quick 20]")  # fmt: skip
    parser.add_argument(
        "--flood-pps", type=_pps, default=None, metavar="PPS|max",
        help="flood rate limit, all flooders together, or 'max' [max]",
    )  # fmt: skip
    parser.add_argument(
        "--flooders", type=int, default=None, metavar="N",
        help="flooder processes [half the CPUs, at least 1: the rest is for the relay]",
    )  # fmt: skip
    parser.add_argument(
        "--flood-max-packets", type=int, default=200_000_000, metavar="N",
        help="cap on the packets of the flood per phase, all flooders together [200M]",
    )  # fmt: skip
    parser.add_argument("--sources", type=int, default=4096, metavar="N",
                        help="spoofed source addresses [4096]")  # fmt: skip
    parser.add_argument("--spoof-net", type=_net, default=_net("10.78.0.0/16"), metavar="CIDR",
                        help="where the spoofed sources come from [10.78.0.0/16]")  # fmt: skip
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="relay.workers [0: one per core]")  # fmt: skip
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the phase without flood (the reference latency)")  # fmt: skip
    parser.add_argument(
        "--phases", default=None, metavar="LIST",
        help="comma-separated subset of baseline,on,off, run in that order [all]",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="short run: 5 s of calls at 20/s per phase "
                             "(explicit options win)")  # fmt: skip
    parser.add_argument(
        "--workdir", type=Path, default=None, metavar="DIR",
        help="keep the lab's logs there (proxy, emulator, sipp, flooders) [a temp dir, removed]",
    )  # fmt: skip
    add_output_arguments(parser)
    return parser


def resolve_args(args: argparse.Namespace) -> None:
    apply_preset(args, QUICK if args.quick else DEFAULTS)
    if args.flooders is None:
        args.flooders = max(1, (os.cpu_count() or 2) // 2)
    names = ["baseline", "on", "off"]
    if args.phases:
        names = [p.strip() for p in args.phases.split(",") if p.strip()]
    if args.no_baseline:
        names = [p for p in names if p != "baseline"]
    args.phase_names = names


def check_args(args: argparse.Namespace) -> str | None:
    if not args.phase_names or any(p not in ("baseline", "on", "off") for p in args.phase_names):
        return f"--phases: a subset of baseline,on,off, got {args.phases!r}"
    if not 0 < args.seconds <= 600:
        return "--seconds: more than 0, at most 600"
    if not 0 < args.call_rate <= 5000:
        return "--call-rate: more than 0, at most 5000"
    if not 1 <= args.flooders <= 16:
        return "--flooders: 1 to 16"
    if not 1 <= args.sources <= min(65_000, args.spoof_net.num_addresses - 2):
        return "--sources: at least 1, fewer than --spoof-net holds, at most 65000"
    if not 1 <= args.flood_max_packets <= 10**10:
        return "--flood-max-packets: 1 to 1e10"
    return None



def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resolve_args(args)
    problem = check_args(args)
    if problem:
        log(f"bench_flood: {problem}")
        return 2

    from lab.netlab import NetLab, cleanup_stale, netns_unavailable_reason

    reason = netns_unavailable_reason()
    if reason:
        log(f"bench_flood: skipped: {reason}")
        return 0
    for tool in ("sipp", "tc", "nft"):
        if shutil.which(tool) is None:
            log(f"bench_flood: {tool} not found: run `make bootstrap`")
            return 2
    if not Path(args.clearipctl).exists():
        log(f"bench_flood: no {args.clearipctl}: run `make bootstrap`")
        return 2
    cleanup_stale()

    started = datetime.now(UTC)
    machine = machine_info()
    log(
        f"bench_flood: {machine['nproc']} cpu ({machine['cpu_model']}), kernel "
        f"{machine['kernel']}; phases {','.join(args.phase_names)}; {args.seconds:g} s of "
        f"calls at {args.call_rate:g}/s; flood {args.flood_pps or 'max'} pps from "
        f"{args.flooders} flooder(s), {args.sources} spoofed sources in {args.spoof_net}"
    )
    phases: list[PhaseResult] = []
    error = None
    with sigterm_as_exit():
        try:
            with NetLab(workdir=args.workdir) as net:
                lab = FloodLab(net, args)
                for name in args.phase_names:
                    phases.append(
                        lab.run_phase(name, fastpath=name != "off", flood=name != "baseline")
                    )
                    p = phases[-1]
                    log(f"[{name}] calls {p.calls.successful}/{p.calls.attempted} ok, relay CPU "
                        f"{p.relay['cpu_pct']:.1f}%"
                        + (f", flood {p.flood.pps_sent:,.0f} pps" if p.flood else ""))  # fmt: skip
        except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            log(f"bench_flood: failed: {error}")

    result = {
        "benchmark": "flood",
        "started": started.isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {
            "seconds": args.seconds,
            "call_rate": args.call_rate,
            "flood_pps": args.flood_pps or "max",
            "flooders": args.flooders,
            "flood_max_packets": args.flood_max_packets,
            "sources": args.sources,
            "spoof_net": str(args.spoof_net),
            "workers": args.workers,
            "phases": args.phase_names,
            "quick": args.quick,
        },
        "phases": [asdict(p) for p in phases],
        "summary": summary(phases),
        "error": error,
    }
    out = sys.stderr if args.json == "-" else sys.stdout
    if phases:
        print(render_table(phases), file=out)
        for line in result["summary"]:
            print(f"  {line}", file=out)
    write_json(args.json, json.dumps(result, indent=2))
    return 2 if error else 0


if __name__ == "__main__":
    sys.exit(main())
