"""Flood benchmark: trusted calls through the relay under an untrusted UDP flood (SPEC §5, §7).

Run by `make bench` (arguments through `BENCH_FLOOD_ARGS=...`; `BENCH_FLOOD=0` skips it).
SPEC §7: "Under a flood from untrusted sources, trusted calls complete with unchanged latency,
and the relay process sees none of the flood (fast path on), compared with the fast path off."

Everything happens in a lab of network namespaces of our own (lab/netlab.py) on one bridge:

    proxy    10.77.0.10  `clearipctl run` (UDP+TCP 5060), trust = switch + clearip only;
                         in the Kamailio phases Kamailio with the anchor's kamailio.cfg instead
    switch   10.77.0.11  SIPp uac_call.xml: the trusted calls (INVITE/200/ACK/BYE)
    clearip  10.77.0.12  tools/clearip_emulator.py over TCP (302 to the provider)
    provider 10.77.0.13  SIPp uas_provider_ok.xml
    flooder  10.77.0.66  Python flooders: prebuilt Ethernet frames (IPv4/UDP, SIP INVITEs from
                         spoofed sources in --spoof-net) sent on an AF_PACKET socket to the
                         proxy's MAC; the proxy routes --spoof-net back via the flooder, so
                         its reverse-path check lets them in when the fast path is off

Phases, each with a fresh proxy (the relay: same config but `fastpath.enabled`):
    baseline           fast path on, no flood (the reference latency; --no-baseline skips it)
    on                 fast path on, flood
    off                fast path off, flood (the relay itself drops the untrusted INVITEs)
    kamailio-baseline  Kamailio, no flood (its reference latency; --no-baseline skips it too)
    kamailio           Kamailio, flood: the performance anchor under the same flood (issue 14)

Kamailio (the anchor's kamailio.cfg, read from --anchor, unchanged: -A WITH_TCP, the ClearIP
link over TCP from 10.77.0.10, the anchor's 4 UDP workers) runs in the foreground (-DD -E) in
the proxy's namespace, started and stopped by PID like the relay. That config trusts every
source: a spoofed INVITE is a call like any other, sent to ClearIP and, after its 302, to the
provider (whose answers go back towards the spoofed source, into the flooder's namespace, which
drops them). The Kamailio phases are in the default list when `kamailio` is on PATH and the
anchor's kamailio.cfg is there; otherwise they are skipped with a note (never a failure).

In a flood phase the flooders start first; once they send, the switch places
--call-rate x --seconds trusted calls; when SIPp ends the flood is stopped. Measured:
  * flood: packets the flooders sent / their sending time (pps sent), and what reached the
    proxy's eth0 (its rx counter, pps at the proxy);
  * kernel: fast-path drops of untrusted packets (sum of `status --json`
    sources[].kernel.dropped_untrusted_pkts; the map holds every spoofed source, max_sources
    is set above --sources) per second of flood, the clsact qdisc's drop counter (the eBPF
    verdicts, never evicted), and UDP receive-buffer overflows in the proxy's namespace;
  * relay: `counters` deltas (messages_in, dropped_untrusted) and the SIP messages it counted
    from the spoofed sources (none for Kamailio, which has no such counters);
  * proxy CPU: utime+stime of the process tree (the relay's supervisor and workers, or
    Kamailio's main process and children, from /proc) over the calls, as % of one core;
  * what got past the proxy: new INVITE transactions the ClearIP emulator received (its --log),
    those of the flood's Call-IDs apart, and the flood INVITEs the provider received (distinct
    Via branches in its SIPp message log); the provider takes any number of calls, so a flood
    a proxy forwards does not end it before the trusted calls;
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
import re
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
PROVIDER_B = "10.77.0.14"  # the 302's second Contact (q=0.5), no host of the lab
NUMBER = "12025550100"
SIP_PORT = 5060

QUICK = {"seconds": 5.0, "call_rate": 20.0}
DEFAULTS = {"seconds": 15.0, "call_rate": 50.0}

UPSTREAM_TIMEOUT_S = 30.0  # the proxy's ClearIP link up (the eBPF compile comes before it)
PROXY_READY_TIMEOUT_S = 60.0
KAMAILIO_READY_TIMEOUT_S = 20.0
KAMAILIO_SETTLE_S = 1.0  # after its sockets listen: its workers fork (the anchor waits 0.5 s)
KAMAILIO_SHM_MB, KAMAILIO_PKG_MB = 2048, 16  # the anchor's sizes (run_anchor.sh)
PROVIDER_SPARE_CALLS = 1_000_000  # sipp -m beyond the trusted calls: flood calls don't end it
PROXY_STOP_GRACE_S = 15.0
FLOOD_START_TIMEOUT_S = 20.0  # a flooder builds its frames and says "started"
FLOOD_SLACK_S = 60.0  # a flooder's own time cap: --seconds + this
SIPP_SLACK_S = 30.0  # sipp -timeout: --seconds + this
RECV_TIMEOUT_S = 10.0  # a trusted call fails when an expected message is this late
DRAIN_S = 1.0  # after the flood, before the last counters
CTL_TIMEOUT_S = 30.0

DEFAULT_ANCHOR = REPO.parent / "shared" / "bench" / "anchor"  # as in bench_calls.py
FLOOD_CALL_ID = "flood-"  # how every Call-ID of the flood starts (FLOODER_PY)


@dataclass(frozen=True)
class PhaseSpec:
    proxy: str  # "relay" | "kamailio"
    fastpath: bool  # the relay's fast path (False for Kamailio: it has none)
    flood: bool


# The phases in the order of the default run.
PHASES: dict[str, PhaseSpec] = {
    "baseline": PhaseSpec("relay", fastpath=True, flood=False),
    "on": PhaseSpec("relay", fastpath=True, flood=True),
    "off": PhaseSpec("relay", fastpath=False, flood=True),
    "kamailio-baseline": PhaseSpec("kamailio", fastpath=False, flood=False),
    "kamailio": PhaseSpec("kamailio", fastpath=False, flood=True),
}

EPILOG = """\
examples:
  make bench                                  # all benchmarks, this one included
  make bench BENCH_FLOOD_ARGS="--quick"       # this one short (BENCH_FLOOD=0 skips it)
  .venv/bin/python tools/bench_flood.py --quick --json -
  .venv/bin/python tools/bench_flood.py --flood-pps 100000 --seconds 30 --call-rate 100
  .venv/bin/python tools/bench_flood.py --quick --phases off,kamailio   # relay vs Kamailio

output: progress on stderr; the table on stdout (on stderr with --json -, so that stdout is
  JSON only). Needs root (network namespaces, nftables, eBPF), sipp (sip-tester) and tc; the
  Kamailio phases need kamailio (apt-get install kamailio) and the anchor's kamailio.cfg.
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
    pids: list[int] = []
    todo = [root] if root in stats else []
    while todo and len(pids) < 10_000:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return sum(stats[p][1] for p in pids), sorted(pids)


def _rtt_values(workdir: Path, rtd: str = "1") -> list[float]:
    """INVITE -> 200 times (ms) of every call, from sipp's -trace_rtt file(s) in `workdir`."""
    rtts = sipp_rtts(sorted(workdir.glob("*_rtt.csv")))
    return sorted(ms for _, ms, name in rtts if name in (rtd, f"rtd{rtd}"))


def _clearip_invites(path: Path) -> dict[str, int]:
    """The INVITEs the ClearIP emulator logged (--log), those of the flood's Call-IDs apart, and
    the connections it accepted. Over TCP a proxy never retransmits, so each is a query; the
    emulator's "retransmission" mark (same Call-ID and branch as an earlier one) is counted
    apart: Kamailio sends the same spoofed INVITE again once its last transaction has ended."""
    out = {"invites": 0, "flood_invites": 0, "flood_repeated": 0, "connections": 0}
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by the stop
            if not isinstance(rec, dict):
                continue
            if rec.get("event") == "connect":
                out["connections"] += 1
            elif rec.get("event") == "request" and rec.get("method") == "INVITE":
                out["invites"] += 1
                if str(rec.get("call_id", "")).startswith(FLOOD_CALL_ID):
                    out["flood_invites"] += 1
                    out["flood_repeated"] += bool(rec.get("retransmission"))
    return out


_TRACE_HEAD = re.compile(r"^\S+ message (sent|received) ")
_BRANCH = re.compile(r"branch=([^;,\s]+)")


def _flood_invites_received(path: Path) -> dict[str, int]:
    """The flood INVITEs (Call-ID starting "flood-") a sipp received, retransmissions included,
    and their distinct top Via branches, from its -trace_msg log read line by line (a provider
    that got the flood has a large one)."""
    invites = 0
    branches: set[str] = set()
    state = "out"  # "start": the start line is next; "invite": in an INVITE's headers
    branch = call_id = None
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        for line in f:
            if head := _TRACE_HEAD.match(line):
                state = "start" if head.group(1) == "received" else "out"
                branch = call_id = None
            elif state == "start" and line.strip():
                state = "invite" if line.startswith("INVITE ") else "out"
            elif state == "invite" and not line.strip():  # end of the headers
                if call_id and call_id.startswith(FLOOD_CALL_ID):
                    invites += 1
                    branches.add(branch or "")
                state = "out"
            elif state == "invite":
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name in ("via", "v") and branch is None:
                    m = _BRANCH.search(value)
                    branch = m.group(1) if m else None
                elif name in ("call-id", "i"):
                    call_id = value.strip()
    return {"invites": invites, "branches": len(branches)}


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
        sum(values) / len(values) if values else sipp_time_ms(res.stats.get("ResponseTime1(C)", ""))
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
    proxy: str  # "relay" | "kamailio"
    fastpath: bool
    flood: FloodResult | None
    calls: CallResult
    # the proxy under test: its CPU, and the relay's own counters (None for Kamailio)
    relay: dict[str, Any]
    kernel: dict[str, Any]
    fastpath_status: dict[str, Any]
    # what got past the proxy: ClearIP's INVITEs and the provider's flood INVITEs
    passed: dict[str, Any] = field(default_factory=dict)
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
        # Two Contacts like the anchor's 302 (A q=1.0, B q=0.5): its kamailio.cfg forks on the
        # q values (t_load_contacts does nothing with a single Contact: Kamailio then answers
        # 500 "No redirect contacts"). B is not in the lab: a failover there gets no answer.
        self.rules = net.workdir / "rules.toml"
        self.rules.write_text(
            f'[[rule]]\nmatch = "^\\\\+?{NUMBER}$"\n'
            f'contacts = ["sip:{{number}}@{PROVIDER}:5060;q=1.0", '
            f'"sip:{{number}}@{PROVIDER_B}:5060;q=0.5"]\nidentity = true\n'
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

    def start_proxy(self, phase: str, spec: PhaseSpec) -> subprocess.Popen[Any]:
        if spec.proxy == "kamailio":
            return self.start_kamailio(phase)
        return self.start_relay(phase, spec.fastpath)

    def start_kamailio(self, phase: str) -> subprocess.Popen[Any]:
        """Kamailio in the foreground in the proxy's namespace, as run_anchor.sh starts it
        (TCP leg to ClearIP from the proxy's address); it connects on the first INVITE."""
        args = self.args
        assert args.kamailio is not None
        argv = [
            args.kamailio, "-f", str(args.anchor / "kamailio.cfg"), "-DD", "-E",
            "-m", str(KAMAILIO_SHM_MB), "-M", str(KAMAILIO_PKG_MB),
            "-l", f"udp:{PROXY}:{SIP_PORT}", "-l", f"tcp:{PROXY}:{SIP_PORT}",
            "-A", "WITH_TCP", "-A", "TCP_CHILDREN=2", "-A", f"TCP_SRC={PROXY}",
            "-A", f"NCHILDREN={args.kamailio_children}",
            "-A", f'CLEARIP_URI="sip:{CLEARIP}:{SIP_PORT};transport=tcp"',
        ]  # fmt: skip
        (self.net.workdir / phase / "kamailio.argv").write_text(json.dumps(argv) + "\n")
        self.config = None
        proc = self.proxy.popen(argv)  # `ip netns exec` execs: proc.pid is Kamailio's
        self.proc = proc
        self.proxy.wait_udp(SIP_PORT, ip=PROXY, proc=proc, timeout=KAMAILIO_READY_TIMEOUT_S)
        self.proxy.wait_tcp(SIP_PORT, ip=PROXY, proc=proc, timeout=KAMAILIO_READY_TIMEOUT_S)
        time.sleep(KAMAILIO_SETTLE_S)
        if proc.poll() is not None:
            raise RuntimeError(f"kamailio exited (rc={proc.returncode}): {_tail(proc)}")
        return proc

    def start_relay(self, phase: str, fastpath: bool) -> subprocess.Popen[Any]:
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

    def run_phase(self, phase: str) -> PhaseResult:
        from lab.netlab import stop_process
        from lab.sippy_runner import start_sipp

        args = self.args
        spec = PHASES[phase]
        relay = spec.proxy == "relay"
        calls = max(1, round(args.call_rate * args.seconds))
        work = self.net.workdir / phase
        work.mkdir(parents=True, exist_ok=True)
        clearip_log = work / "clearip.jsonl"
        if relay:
            log(f"[{phase}] proxy with fastpath.enabled = {str(spec.fastpath).lower()} ...")
        else:
            log(f"[{phase}] Kamailio with {args.anchor / 'kamailio.cfg'} ...")
        emulator = self.clearip.popen([
            PYTHON, str(REPO / "tools" / "clearip_emulator.py"), "--rules", str(self.rules),
            "--listen", f"tcp:{CLEARIP}:5060", "--log", str(clearip_log),
        ])  # fmt: skip
        notes: list[str] = []
        flooders: Flooders | None = None
        uas: SippProc | None = None
        proxy_log: Path | None = None
        st0: dict[str, Any] | None = None
        st1: dict[str, Any] | None = None
        try:
            self.clearip.wait_tcp(5060, ip=CLEARIP, proc=emulator, timeout=20)
            proxy = self.start_proxy(phase, spec)
            proxy_log = getattr(proxy, "log_path", None)
            if relay:
                fp = self.status().get("fastpath") or {}
                if bool(fp.get("enabled")) != spec.fastpath:
                    raise RuntimeError(f"fast path should be {spec.fastpath}, status says {fp}")
            uas = start_sipp(
                self.provider, "uas_provider_ok.xml", calls=calls + PROVIDER_SPARE_CALLS,
                timeout=args.seconds + SIPP_SLACK_S + 10, name=f"{phase}.provider",
            )  # fmt: skip
            st0 = self.status() if relay else None
            k0 = self.kernel_snapshot()
            flood_t0 = time.monotonic()
            if spec.flood:
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
            st1 = self.status() if relay else None
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
        if relay and spec.fastpath:
            tables = self.proxy.run(["nft", "list", "tables"], check=False).stdout
            if self.name in tables:
                notes.append(f"nft table {self.name} left behind after stop")
        if not relay and proxy_log is not None:
            notes.extend(_kamailio_log_notes(Path(proxy_log)))

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

        figures = self._proxy_figures(st0, st1, cpu1 - cpu0, window, pids0, pids)
        kernel = self._kernel_figures(st0, st1, k0, k1, flood_seconds if flood_res else window)
        if figures["processes_gone"]:
            notes.append(
                f"{figures['processes_gone']} {spec.proxy} process(es) ended during the calls "
                "(a worker restart?): their CPU is not counted"
            )
        provider = _flood_invites_received(prov.workdir / "messages.log")
        passed = {
            "clearip": _clearip_invites(clearip_log),
            "provider_flood_invites": provider["invites"],
            "provider_flood_branches": provider["branches"],
            "provider_calls": prov.created,
        }
        return PhaseResult(
            phase=phase,
            proxy=spec.proxy,
            fastpath=spec.fastpath,
            flood=flood_res,
            calls=call_res,
            relay=figures,
            kernel=kernel,
            fastpath_status=(st1 or {}).get("fastpath") or {},
            passed=passed,
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

    def _proxy_figures(
        self,
        st0: dict[str, Any] | None,
        st1: dict[str, Any] | None,
        ticks: int,
        window: float,
        pids0: list[int],
        pids1: list[int],
    ) -> dict[str, Any]:
        """The proxy's CPU; the relay's counters from its status (None without: Kamailio)."""
        hz = os.sysconf("SC_CLK_TCK")
        counters: dict[str, int | None] = dict.fromkeys(
            ("messages_in", "dropped_untrusted", "flood_messages_in", "flood_sources_seen")
        )
        if st0 is not None and st1 is not None:
            c0, c1 = st0.get("counters") or {}, st1.get("counters") or {}
            for key in ("messages_in", "dropped_untrusted"):
                counters[key] = int(c1.get(key, 0)) - int(c0.get(key, 0))
            counters["flood_messages_in"] = self._source_sum(
                st1, "sip", "messages_in", True
            ) - self._source_sum(st0, "sip", "messages_in", True)
            counters["flood_sources_seen"] = sum(
                1
                for s in st1.get("sources") or []
                if self._in_flood(str(s.get("address", "")))
                and int((s.get("sip") or {}).get("messages_in", 0) or 0) > 0
            )
        return {
            **counters,
            "cpu_pct": round(100.0 * ticks / hz / window, 1),
            "cpu_seconds": round(ticks / hz, 2),
            "window_s": round(window, 3),
            "processes": len(pids1),
            "processes_gone": len(set(pids0) - set(pids1)),
        }

    def _kernel_figures(
        self,
        st0: dict[str, Any] | None,
        st1: dict[str, Any] | None,
        k0: dict[str, Any],
        k1: dict[str, Any],
        seconds: float,
    ) -> dict[str, Any]:
        """Kernel counters in the proxy's namespace; the fast path's drops from the relay's
        status (None without one: Kamailio)."""
        drops = all_drops = None
        if st0 is not None and st1 is not None:
            drops = self._source_sum(st1, "kernel", "dropped_untrusted_pkts", True)
            drops -= self._source_sum(st0, "kernel", "dropped_untrusted_pkts", True)
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
            "drops_per_s": round(drops / seconds, 1) if drops is not None else None,
            "qdisc_drops": qdrops,
            "qdisc_drops_per_s": round(qdrops / seconds, 1) if qdrops is not None else None,
            "udp_in_datagrams": udp("InDatagrams"),
            "udp_rcvbuf_errors": udp("RcvbufErrors"),
            "udp_rcvbuf_errors_per_s": round(udp("RcvbufErrors") / seconds, 1),
            "seconds": round(seconds, 3),
        }


def _kamailio_log_notes(path: Path, limit: int = 3) -> list[str]:
    """How many ERROR lines Kamailio logged (debug=0: warnings and errors only), and the first
    few distinct ones, without their per-process prefix."""
    count = 0
    seen: list[str] = []
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        for line in f:
            if "ERROR" not in line and "CRITICAL" not in line:
                continue
            count += 1
            text = re.sub(r"^\s*\d+\([0-9]+\)\s*", "", line.strip())[:200]
            if len(seen) < limit and text not in seen:
                seen.append(text)
    if not count:
        return []
    return [f"kamailio logged {count:,} ERROR line(s), e.g.: " + " | ".join(seen)]


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


def _label(p: PhaseResult) -> str:
    if p.proxy == "relay":
        return f"{p.phase} (fast path {'on' if p.fastpath else 'off'})"
    return f"{p.phase} ({p.proxy.capitalize()})"


def _passed(p: PhaseResult) -> str:
    """Flood INVITEs that got past the proxy: to ClearIP / to the provider."""
    clearip = (p.passed.get("clearip") or {}).get("flood_invites")
    return f"{_fmt(clearip, ',')}/{_fmt(p.passed.get('provider_flood_invites'), ',')}"


def render_table(phases: list[PhaseResult]) -> str:
    head = (
        "phase", "flood pps sent", "pps at proxy", "kernel drops/s", "sockbuf drops/s",
        "relay saw msgs", "relay dropped", "flood to ClearIP/prov", "proxy CPU",
        "calls ok/failed", "retrans", "setup avg/p50/p95/p99 ms",
    )  # fmt: skip
    rows = [head]
    for p in phases:
        f, k, r, c = p.flood, p.kernel, p.relay, p.calls
        s = c.setup_ms
        lat = "/".join(_fmt(s.get(q), ".1f") for q in ("avg", "p50", "p95", "p99"))
        lat += f" (n={s.get('n', 0)})"
        saw = "-"
        if r.get("messages_in") is not None:
            saw = f"{r['messages_in']:,} ({r['flood_messages_in']:,} flood)"
        rows.append((
            _label(p),
            _fmt(f.pps_sent if f else None),
            _fmt(f.eth0_rx_pps if f else None),
            _fmt(k.get("drops_per_s") if p.fastpath else None),
            _fmt(k["udp_rcvbuf_errors_per_s"]),
            saw,
            _fmt(r.get("dropped_untrusted"), ","),
            _passed(p) if f else "-",
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
    kam, kam_base = by.get("kamailio"), by.get("kamailio-baseline")
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
    if kam is not None:
        clearip = kam.passed.get("clearip") or {}
        out.append(
            f"Kamailio (anchor kamailio.cfg: every source trusted) took "
            f"{kam.kernel['udp_in_datagrams']:,} UDP datagrams "
            f"({kam.kernel['udp_rcvbuf_errors']:,} more overflowed its socket buffers) while "
            f"{kam.flood.sent if kam.flood else 0:,} flood packets were sent; it sent "
            f"{clearip.get('flood_invites', 0):,} flood INVITEs to ClearIP "
            f"({clearip.get('flood_repeated', 0):,} of them one sent before, again) and the "
            f"provider got {kam.passed.get('provider_flood_invites', 0):,} "
            f"({kam.passed.get('provider_flood_branches', 0):,} distinct branches)"
        )
    flooded = [p for p in (on, off, kam) if p is not None]
    if len(flooded) > 1:
        out.append(
            "same flood, trusted calls ok / setup p50, p99 / proxy CPU: "
            + "; ".join(
                f"{p.phase} {p.calls.successful}/{p.calls.attempted} / "
                f"{_fmt(p.calls.setup_ms.get('p50'), '.1f')}, "
                f"{_fmt(p.calls.setup_ms.get('p99'), '.1f')} ms / {p.relay['cpu_pct']:.1f}%"
                for p in flooded
            )
        )
    for p, ref in ((on, base), (off, base), (kam, kam_base)):
        if p is None or ref is None:
            continue
        a, b = p.calls.setup_ms.get("p50"), ref.calls.setup_ms.get("p50")
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
                        help="skip the phases without flood (the reference latencies)")  # fmt: skip
    parser.add_argument("--no-kamailio", action="store_true",
                        help="skip the Kamailio phases")  # fmt: skip
    parser.add_argument(
        "--phases", default=None, metavar="LIST",
        help=f"comma-separated subset of {','.join(PHASES)}, run in the order given [all; "
        "the Kamailio ones when kamailio is installed]",
    )  # fmt: skip
    parser.add_argument(
        "--anchor", type=Path, default=DEFAULT_ANCHOR, metavar="DIR",
        help=f"the anchor directory whose kamailio.cfg Kamailio runs (read only) "
        f"[{DEFAULT_ANCHOR}]",
    )  # fmt: skip
    parser.add_argument(
        "--kamailio-children", type=int, default=4, metavar="N",
        help="Kamailio UDP workers (-A NCHILDREN) [4: the anchor's, best on 2 cores]",
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
    names = list(PHASES)
    if args.phases:
        names = [p.strip() for p in args.phases.split(",") if p.strip()]
    if args.no_baseline:
        names = [p for p in names if p not in PHASES or PHASES[p].flood]
    if args.no_kamailio:
        names = [p for p in names if p not in PHASES or PHASES[p].proxy != "kamailio"]
    args.phase_names = names


def kamailio_unavailable(args: argparse.Namespace) -> str | None:
    """Why the Kamailio phases can't run here (sets args.kamailio to its path), or None."""
    args.kamailio = shutil.which("kamailio")
    if args.kamailio is None:
        return "kamailio is not on PATH (apt-get install kamailio)"
    if not (args.anchor / "kamailio.cfg").is_file():
        return f"no {args.anchor / 'kamailio.cfg'} (--anchor)"
    return None


def drop_kamailio(names: list[str], reason: str | None) -> tuple[list[str], list[str]]:
    """The phases that can run, and a note for the Kamailio ones skipped (when `reason`)."""
    if reason is None:
        return names, []
    skipped = [p for p in names if PHASES[p].proxy == "kamailio"]
    if not skipped:
        return names, []
    kept = [p for p in names if p not in skipped]
    return kept, [f"skipped {', '.join(skipped)}: {reason}"]


def check_args(args: argparse.Namespace) -> str | None:
    if any(p not in PHASES for p in args.phase_names):
        return f"--phases: a subset of {','.join(PHASES)}, got {args.phases!r}"
    if not args.phase_names:
        return "no phase left to run (--phases, --no-baseline, --no-kamailio)"
    if len(set(args.phase_names)) != len(args.phase_names):
        return f"--phases: each phase once, got {args.phases!r}"
    if not 1 <= args.kamailio_children <= 64:
        return "--kamailio-children: 1 to 64"
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
    relay_phases = any(PHASES[p].proxy == "relay" for p in args.phase_names)
    if relay_phases and not Path(args.clearipctl).exists():
        log(f"bench_flood: no {args.clearipctl}: run `make bootstrap`")
        return 2
    args.phase_names, notes = drop_kamailio(args.phase_names, kamailio_unavailable(args))
    for note in notes:
        log(f"bench_flood: {note}")
    if not args.phase_names:
        log("bench_flood: no phase left to run")
        return 0
    kamailio_version = None
    if args.kamailio and any(PHASES[p].proxy == "kamailio" for p in args.phase_names):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            res = subprocess.run([args.kamailio, "-v"], capture_output=True, text=True,
                                 timeout=10, check=False)  # fmt: skip
            first = (res.stdout.splitlines() or [""])[0]  # "version: kamailio 5.6.3 (...)"
            kamailio_version = first.removeprefix("version: ").strip()
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
                    phases.append(lab.run_phase(name))
                    p = phases[-1]
                    log(f"[{name}] calls {p.calls.successful}/{p.calls.attempted} ok, {p.proxy} "
                        f"CPU {p.relay['cpu_pct']:.1f}%"
                        + (f", flood {p.flood.pps_sent:,.0f} pps" if p.flood else ""))  # fmt: skip
        except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            log(f"bench_flood: failed: {error}")

    lines = summary(phases)
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
            "kamailio": kamailio_version,
            "kamailio_cfg": str(args.anchor / "kamailio.cfg") if kamailio_version else None,
            "kamailio_children": args.kamailio_children if kamailio_version else None,
        },
        "phases": [asdict(p) for p in phases],
        "summary": lines,
        "notes": notes,
        "error": error,
    }
    out = sys.stderr if args.json == "-" else sys.stdout
    if phases:
        print(render_table(phases), file=out)
        for line in [*lines, *notes]:
            print(f"  {line}", file=out)
        for p in phases:
            for line in p.notes:
                print(f"  [{p.phase}] {line}", file=out)
    write_json(args.json, json.dumps(result, indent=2))
    return 2 if error else 0


if __name__ == "__main__":
    sys.exit(main())
