"""Call-rate benchmark: the relay against Kamailio on the SIPp anchor (SPEC §7).

Run by `make bench` (arguments through `BENCH_ARGS=...`). The anchor harness in
`../shared/bench/anchor/` (`run_anchor.sh`) plays the switch, ClearIP and two providers with
SIPp; this script only drives it and reads its one-line summaries:

* the relay: `clearipctl run` is started here, as a child in this session (the README's CFS
  autogroup note), with `tools/bench_configs/anchor.toml`, and driven through the harness's own
  `PROXY=external` mode, with `PROXY_PID` so that its CPU (supervisor and workers) is measured;
* Kamailio (when it is installed): the harness starts it itself for every step (`PROXY` unset).

For each flow a step search finds the knee: the highest offered rate whose steps all PASS
(every call completes, nothing fails at the switch or any UAS, retransmissions within the
harness's 0.01 % noise allowance, or none at all with --zero-retrans). One more step at half
the knee gives the latency the relay adds per message: p50/p99 from the relay's own timestamps
(read from its socket to sent), from the control socket's `status` reply. The result is a table
(stdout) and JSON (`<out>/results.json`, and `--json FILE|-`); every step's summary line is in
the JSON, parsed, with the directory of its logs.

Figures, not assertions: the exit status is 0 whether or not the relay keeps up, non-zero only
when the benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchcommon import (
    add_output_arguments,
    apply_preset,
    control_request,
    log,
    loopback_net,
    machine_info,
    port_in_use,
    positive_int,
    sigterm_as_exit,
    stop_process,
    text_table,
    write_json,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ANCHOR = REPO.parent / "shared" / "bench" / "anchor"
CONFIG_TEMPLATE = REPO / "tools" / "bench_configs" / "anchor.toml"
TEMPLATE_DIR = "/tmp/anchor-proxy"  # what the template's paths start with

ANCHOR_NET = "127.0.0"  # the anchor's addresses: proxy .10, switch .11, ClearIP .12, A .13, B .14
FLOWS = ("ok", "failover", "decline")
MESSAGES_PER_CALL = {"ok": 17, "failover": 20, "decline": 7}  # the README's counts

STEP_OVERHEAD_S = 15.0  # sipp start, the relay's reconnect to ClearIP, drain, pause
PAUSE_BETWEEN_STEPS_S = 2.0  # as sweep.sh
HARNESS_SLACK_S = 150.0  # run_anchor.sh bounds every process by DUR + 40..90 s itself
RELAY_READY_TIMEOUT_S = 30.0
RELAY_STOP_TIMEOUT_S = 15.0
LATENCY_WINDOW = 65536  # each relay worker keeps its last 65536 per-message timings

QUICK = {"seconds": 4, "repeats": 1, "start": 100, "budget_min": 8.0}
DEFAULTS = {"seconds": 10, "repeats": 2, "start": 250, "budget_min": 30.0}

EPILOG = f"""\
step search (per flow, per proxy):
  1. coarse: one step at --start, then doubling (capped at --max) until a step FAILs;
  2. refine: bisection between the last PASS and the first FAIL, on multiples of
     --resolution, until they are --resolution apart;
  3. confirm: the candidate knee is run until it has --repeats steps, all PASS; if one
     FAILs, it becomes the upper bound and the search goes on below it.
  The knee is the highest rate confirmed this way with every lower tried rate passing.
  No FAIL up to --max: the knee is reported as ">= max". Out of --budget-min: the best
  rate so far is reported as provisional ("~").
  Then one step at knee/2 (rounded down to a multiple of 10) for the latency figures.
  Each step offers RATE calls/s for --seconds s (RATE*seconds calls). The relay is
  restarted after a FAILed step (an overloaded relay keeps a backlog); before the
  half-load step its latency window is emptied (the `latency_reset` control op when the
  relay has it, else a restart). Kamailio is started fresh by the harness every step.
  Budget: a step is started only if --seconds + 15 s fit in what is left of --budget-min.

verdict: the harness's PASS (all calls completed, failed=0, uas_failed=0, all sipps'
  retransmissions <= 0.01 % of the calls); --zero-retrans also fails a step on any
  retransmission.

output: progress on stderr; the table on stdout (on stderr with --json -, so that stdout
  is JSON only); everything under --out (default bench-results/<time>/): results.json,
  table.txt, the harness's results.tsv and runs/<step>/ logs, the relay's config and log.

examples:
  .venv/bin/python tools/bench_calls.py --quick --flows ok --no-kamailio --max 400
  .venv/bin/python tools/bench_calls.py --flows ok,failover --seconds 20 --repeats 3
  make bench BENCH_ARGS="--flows ok --json -"

defaults: --seconds {DEFAULTS["seconds"]} --repeats {DEFAULTS["repeats"]} \
--start {DEFAULTS["start"]} --budget-min {DEFAULTS["budget_min"]:g}
  --quick: --seconds {QUICK["seconds"]} --repeats {QUICK["repeats"]} --start {QUICK["start"]} \
--budget-min {QUICK["budget_min"]:g} (explicit options win)
"""


class BenchError(Exception):
    """The benchmark cannot go on (not: the proxy under test failed a step)."""


class OutOfBudget(Exception):
    """The next step would pass the --budget-min deadline."""



# ---------------------------------------------------------------------------------------------
# The harness's summary line


# key: word, optionally with a parenthesised part (`retrans(uac/ci/a/b)`); value: up to the
# next blank, where a parenthesised part may hold blanks (`sipp_cpu=45.4%(uac:15.3 ci:9.3 ...)`)
_FIELD = re.compile(r"([A-Za-z_]+(?:\([^)\s]*\))?)=([^\s(]*(?:\([^)]*\))?\S*)")


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    text = text.strip().rstrip("%")
    try:
        return float(text)
    except ValueError:
        return None  # NA, n/a, -


def _integer(text: str | None) -> int | None:
    number = _number(text)
    return None if number is None else int(number)


def _inner(value: str) -> tuple[str, dict[str, str]]:
    """`0(proxy:0,ci:tcp)` -> ("0", {"proxy": "0", "ci": "tcp"}); ':' or '=' pairs, ',' or ' '."""
    head, _, rest = value.partition("(")
    pairs: dict[str, str] = {}
    for item in re.split(r"[,\s]+", rest.rstrip(")")):
        key, sep, val = item.partition(":") if ":" in item else item.partition("=")
        if sep:
            pairs[key] = val
    return head, pairs


def parse_summary(line: str) -> dict[str, Any]:
    """One run_anchor.sh summary line, as typed fields (None where the harness printed NA)."""
    line = line.strip()
    verdict = line.split(None, 1)[0] if line else ""
    raw = dict(_FIELD.findall(line))
    out: dict[str, Any] = {"verdict": verdict, "fields": raw}
    for key in ("variant", "proxy", "children"):
        out[key] = raw.get(key)
    for key in ("rate", "calls", "created", "ok", "failed", "uas_failed", "uac_rc", "cps"):
        out[key] = _integer(raw.get(key))
    out["provA_ok"] = _integer(raw.get("provA_ok"))
    out["provB_ok"] = _integer(raw.get("provB_ok"))
    out["kam_errors"] = _integer(raw.get("kam_errors"))
    out["inv_rt_ms"] = _number(raw.get("inv_rt_ms"))
    out["proxy_cpu_pct"] = _number(raw.get("proxy_cpu"))
    retrans = raw.get("retrans(uac/ci/a/b)", "")
    parts = retrans.split("/") if retrans else []
    out["retrans"] = {
        name: _integer(parts[i]) if i < len(parts) else None
        for i, name in enumerate(("uac", "ci", "a", "b"))
    }
    out["retrans_total"] = sum(v for v in out["retrans"].values() if v is not None)
    total, sipps = _inner(raw.get("sipp_cpu", ""))
    out["sipp_cpu_pct"] = _number(total)
    out["sipp_cpu_parts_pct"] = {k: _number(v) for k, v in sipps.items()}
    busy, _, capacity = raw.get("host_busy", "").partition("/")
    out["host_busy_pct"] = _number(busy)
    out["host_capacity_pct"] = _number(capacity)
    drops, sockets = _inner(raw.get("udp_rcvbuf_drops", ""))
    out["udp_rcvbuf_drops"] = _integer(drops)
    out["udp_rcvbuf_drops_sockets"] = {
        k: _integer(v) if v != "tcp" else v for k, v in sockets.items()
    }
    link, link_fields = _inner(raw.get("clearip_link", ""))
    out["clearip_link"] = {
        "transport": link or None,
        "conns_seen": _integer(link_fields.get("conns_seen")),
        "accepted": _integer(link_fields.get("accepted")),
        "wait": link_fields.get("wait"),
    }
    return out


# ---------------------------------------------------------------------------------------------
# Steps


@dataclass
class Step:
    proxy: str  # "relay" | "kamailio"
    flow: str
    phase: str  # coarse | refine | confirm | half-load
    rate: int
    calls: int
    seconds: int
    outdir: str
    started: str = ""
    duration_s: float = 0.0
    rc: int | None = None
    verdict: str = "ERROR"
    passed: bool = False
    line: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    relay_restarted: bool = False
    latency: dict[str, Any] | None = None


class Budget:
    def __init__(self, minutes: float) -> None:
        self.deadline = time.monotonic() + minutes * 60.0

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, cost_s: float) -> None:
        if cost_s > self.left_s():
            raise OutOfBudget(
                f"{self.left_s():.0f} s of the budget left, a step takes ~{cost_s:.0f} s"
            )


class Harness:
    """run_anchor.sh, one step at a time; every step's logs under `out/runs/`."""

    def __init__(
        self, anchor: Path, out: Path, extra_env: dict[str, str], zero_retrans: bool
    ) -> None:
        self.script = anchor / "run_anchor.sh"
        self.out = out
        self.runs = out / "runs"
        self.results = out / "results.tsv"
        self.extra_env = extra_env
        self.zero_retrans = zero_retrans
        self.steps: list[Step] = []
        self._child: subprocess.Popen[str] | None = None

    def run(
        self,
        proxy: str,
        flow: str,
        phase: str,
        rate: int,
        seconds: int,
        proxy_pid: int | None,
        calls: int | None = None,
    ) -> Step:
        """One run_anchor.sh step: `calls` calls (default rate x seconds) offered at `rate`."""
        calls = rate * seconds if calls is None else calls
        name = f"{proxy}_{flow}_r{rate}_{len(self.steps) + 1:03d}"
        step = Step(proxy, flow, phase, rate, calls, seconds, str(self.runs / name))
        env = dict(os.environ)
        env.update(self.extra_env)
        env.update(RESULTS=str(self.results), RUNS=str(self.runs), OUTDIR=step.outdir)
        if proxy == "relay":
            env["PROXY"] = "external"
            env["PROXY_PID"] = str(proxy_pid)
        else:
            env.pop("PROXY", None)
            env.pop("PROXY_PID", None)
        step.started = datetime.now(UTC).isoformat(timespec="seconds")
        t0 = time.monotonic()
        self.steps.append(step)
        # Same session and process group as this script: a terminal's Ctrl-C reaches the
        # harness too, and it stops its sipps (and Kamailio) by PID.
        self._child = subprocess.Popen(
            [str(self.script), flow, str(rate), str(calls)],
            env=env,
            cwd=self.out,  # sipp writes stray files into its working directory
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            stdout, stderr = self._child.communicate(timeout=seconds + HARNESS_SLACK_S)
        except subprocess.TimeoutExpired:
            self.stop_child()
            stdout, stderr = (
                "",
                f"run_anchor.sh still running after {seconds + HARNESS_SLACK_S:.0f} s",
            )
        except BaseException:  # Ctrl-C, SIGTERM: the harness first, while the proxy still runs
            step.error = "interrupted"
            self.stop_child()
            raise
        step.rc = self._child.returncode
        self._child = None
        step.duration_s = round(time.monotonic() - t0, 1)
        lines = [ln for ln in stdout.splitlines() if ln.startswith(("PASS ", "FAIL "))]
        if lines:
            step.line = lines[-1]
            step.summary = parse_summary(step.line)
            step.verdict = step.summary["verdict"]
            if step.verdict == "PASS" and self.zero_retrans and step.summary["retrans_total"]:
                step.verdict = "FAIL"
                step.error = "retransmissions (--zero-retrans)"
            step.passed = step.verdict == "PASS"
        else:
            step.error = (stderr.strip() or stdout.strip() or f"exit status {step.rc}")[-500:]
        if stderr.strip():
            with contextlib.suppress(OSError):
                Path(step.outdir).mkdir(parents=True, exist_ok=True)
                (Path(step.outdir) / "harness.stderr").write_text(stderr)
        return step

    def stop_child(self) -> None:
        """On Ctrl-C, SIGTERM or a timeout: the harness traps TERM and stops its processes."""
        if self._child is not None:
            stop_process(self._child, 15.0)


# ---------------------------------------------------------------------------------------------
# The relay under test


def _autogroup(pid: str) -> str | None:
    """`/autogroup-123`: the CFS autogroup (one per session) of a process."""
    try:
        return Path(f"/proc/{pid}/autogroup").read_text().split()[0]
    except (OSError, IndexError):
        return None


class Relay:
    """`clearipctl run` as a child of this script: same session, so same CFS autogroup as the
    harness's sipps (the anchor README's note). `net`: the first three bytes of the anchor's
    loopback addresses (the harness's PROXY_IP, CLEARIP_IP ... must say the same)."""

    def __init__(
        self,
        clearipctl: Path,
        out: Path,
        workers: int | None,
        net: str = ANCHOR_NET,
        steering: str | None = None,
    ) -> None:
        self.clearipctl = clearipctl
        self.out = out
        self.address = (f"{net}.10", 5060)
        self.tmp = Path(tempfile.mkdtemp(prefix="clearip-bench-"))
        self.socket = str(self.tmp / "ctl.sock")
        self.config = self.tmp / "proxy.toml"
        text = CONFIG_TEMPLATE.read_text().replace(TEMPLATE_DIR, str(self.tmp))
        for host in (".10:", ".12:"):  # the proxy's listeners, ClearIP's URI
            text = text.replace(ANCHOR_NET + host, net + host)
        if workers is not None:
            text, n = re.subn(r"(?m)^workers\s*=\s*\d+", f"workers = {workers}", text)
            if n != 1:
                raise BenchError(f"{CONFIG_TEMPLATE}: no `workers = N` line under [relay]")
        if steering is not None:  # relay.steering, after the workers line
            text = re.sub(r"(?m)^(workers\s*=.*)$", rf'\1\nsteering = "{steering}"', text, count=1)
        self.config.write_text(text)
        (self.tmp / "state").mkdir()
        shutil.copy(self.config, out / "proxy.toml")
        self.proc: subprocess.Popen[bytes] | None = None
        self.worker_pids: list[int] = []
        self.starts = 0
        self.status_at_start: dict[str, Any] = {}

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        busy = port_in_use(self.address)
        if busy:
            raise BenchError(f"the anchor's proxy address is in use ({busy}): another run?")
        self.starts += 1
        logfile = self.out / f"relay-{self.starts}.log"
        with open(logfile, "wb") as stream:
            # Same session (the autogroup), own process group: a terminal's Ctrl-C reaches this
            # script and the harness, and the relay is then stopped here, by PID, last.
            self.proc = subprocess.Popen(
                [str(self.clearipctl), "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=stream,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        deadline = time.monotonic() + RELAY_READY_TIMEOUT_S
        last_error = "no control socket yet"
        while time.monotonic() < deadline:
            if not self.alive():
                tail = logfile.read_text(errors="replace")[-1500:]
                raise BenchError(f"the relay exited at start ({self.proc.returncode}):\n{tail}")
            try:
                status = control_request(self.socket, "status")
            except Exception as e:  # ControlError until the socket answers
                last_error = str(e)
            else:
                workers = status.get("workers") or []
                listening = any(
                    lst.get("transport") == "udp" for lst in status.get("listeners") or []
                )
                if workers and all(w.get("ready") for w in workers) and listening:
                    self.worker_pids = [int(w["pid"]) for w in workers]
                    self.status_at_start = status
                    return
                last_error = "workers not ready"
            time.sleep(0.1)
        self.stop()
        raise BenchError(
            f"the relay was not ready within {RELAY_READY_TIMEOUT_S:g} s: {last_error}"
        )

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL; then any worker left over, by PID."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, RELAY_STOP_TIMEOUT_S)
        for pid in self.worker_pids:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if str(self.config).encode() in cmdline:  # still ours, not a reused PID
                    os.kill(pid, signal.SIGKILL)
        self.worker_pids = []

    def restart(self) -> None:
        self.stop()
        self.start()

    def status(self) -> dict[str, Any] | None:
        try:
            reply = control_request(self.socket, "status")
        except Exception as e:
            log(f"relay status: {e}")
            return None
        return reply if isinstance(reply, dict) else None

    def reset_latency(self) -> str:
        """A fresh latency window: the `latency_reset` op when the relay has it, else a
        restart (the timings live in the workers' memory)."""
        try:
            control_request(self.socket, "latency_reset")
        except Exception:
            self.restart()
            return "relay restarted (no latency_reset op)"
        return "latency_reset op"

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Step search


@dataclass
class Search:
    proxy: str
    flow: str
    knee_cps: int | None = None
    capped: bool = False  # no FAIL up to --max
    complete: bool = True  # False: out of budget or aborted; knee_cps is provisional
    first_fail_rate: int | None = None
    cpu_at_knee_pct: float | None = None
    cpu_ms_per_call: float | None = None
    host_busy_at_knee_pct: float | None = None
    inv_rt_ms_at_knee: float | None = None
    tried: dict[str, str] = field(default_factory=dict)  # rate -> "PPF"
    steps: list[int] = field(default_factory=list)  # indexes into the JSON "steps"
    half_load: dict[str, Any] | None = None
    note: str = ""


def midpoint(lo: int, hi: int, resolution: int) -> int | None:
    """A rate strictly between lo and hi on a multiple of `resolution`; None when they are
    `resolution` or less apart."""
    if hi - lo <= resolution:
        return None
    mid = round((lo + hi) / 2 / resolution) * resolution
    if mid <= lo:
        mid = lo + resolution
    if mid >= hi:
        mid = hi - resolution
    return mid if lo < mid < hi else None


def find_knee(
    attempt: Callable[[int, str], bool],
    start: int,
    maximum: int,
    resolution: int,
    repeats: int,
    history: dict[int, list[bool]],
) -> tuple[int, int | None, bool]:
    """The step search (see EPILOG). `attempt(rate, phase)` runs one step and says whether it
    passed, recording it in `history`. Returns (knee, first failing rate, capped)."""
    lo, hi = 0, None
    rate = min(start, maximum)
    while True:  # coarse
        if attempt(rate, "coarse"):
            lo = rate
            if rate >= maximum:
                break
            rate = min(rate * 2, maximum)
        else:
            hi = rate
            break
    first_fail = hi
    while True:
        while hi is not None and (mid := midpoint(lo, hi, resolution)) is not None:  # refine
            if attempt(mid, "refine"):
                lo = mid
            else:
                hi = mid
                first_fail = mid if first_fail is None else min(first_fail, mid)
        if lo == 0:
            return 0, first_fail, False
        while all(history[lo]) and len(history[lo]) < repeats:  # confirm
            attempt(lo, "confirm")
        if all(history[lo]):
            return lo, first_fail, hi is None
        hi = lo  # a repeat failed: search below it, from the highest rate that held
        first_fail = lo if first_fail is None else min(first_fail, lo)
        lo = 0
        for r in sorted(history):
            if r >= hi or not all(history[r]):
                break
            lo = r


def provisional_knee(history: dict[int, list[bool]]) -> int:
    """The highest tried rate below which every tried step passed (an unfinished search)."""
    knee = 0
    for rate in sorted(history):
        if not all(history[rate]):
            break
        knee = rate
    return knee


# ---------------------------------------------------------------------------------------------
# Machine and versions


def _run_text(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return f"n/a ({e})"
    return (done.stdout + done.stderr).strip()



def versions(clearipctl: Path, kamailio: str | None) -> dict[str, str | None]:
    sipp = _run_text(["sipp", "-v"])
    sipp_version = next((ln.strip() for ln in sipp.splitlines() if "SIPp" in ln), sipp[:80])
    kam = None
    if kamailio:  # "version: kamailio 5.6.3 (x86_64/linux)"
        kam = (_run_text([kamailio, "-v"]).splitlines() or ["?"])[0].removeprefix("version: ")
    return {
        "clearip": _run_text([str(clearipctl), "--version"]),
        "kamailio": kam,
        "sipp": sipp_version,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------------------------
# The run


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


class Bench:
    def __init__(self, args: argparse.Namespace, out: Path, anchor: Path) -> None:
        self.args = args
        self.out = out
        self.harness = Harness(anchor, out, args.env, args.zero_retrans)
        self.budget = Budget(args.budget_min)
        self.relay: Relay | None = None
        self.notes: list[str] = []
        self.meta: dict[str, Any] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.relay_needs_restart = False

    def _step_cost(self) -> float:
        return float(self.args.seconds) + STEP_OVERHEAD_S

    def run_step(self, proxy: str, flow: str, phase: str, rate: int, search: Search) -> Step:
        self.budget.check(self._step_cost())
        restarted = False
        if proxy == "relay":
            assert self.relay is not None
            if self.relay_needs_restart or not self.relay.alive():
                if not self.relay.alive():
                    log("  the relay is not running: starting it again")
                self.relay.restart()
                restarted = True
                self.relay_needs_restart = False
        log(f"[{proxy} {flow}] {phase:<9} {rate:>5} cps x {self.args.seconds} s ...")
        step = self.harness.run(
            proxy, flow, phase, rate, self.args.seconds, self.relay.pid if self.relay else None
        )
        step.relay_restarted = restarted
        search.steps.append(len(self.harness.steps) - 1)
        if phase != "half-load":
            search.tried[str(rate)] = search.tried.get(str(rate), "") + (
                "P" if step.passed else "F"
            )
        s = step.summary
        if step.line:
            log(
                f"  {step.verdict} cps={s.get('cps')} proxy_cpu={_fmt(s.get('proxy_cpu_pct'), '%')}"
                f" inv_rt={_fmt(s.get('inv_rt_ms'), 'ms', 2)} ok={s.get('ok')}/{step.calls}"
                f" failed={s.get('failed')}/{s.get('uas_failed')}"
                f" retrans={s['fields'].get('retrans(uac/ci/a/b)')}"
                f" drops={s.get('udp_rcvbuf_drops')} host={_fmt(s.get('host_busy_pct'), '%', 0)}"
                f" link={s['fields'].get('clearip_link', '-')} ({step.duration_s:.0f} s)"
                + (f" [{step.error}]" if step.error else "")
            )
        else:
            log(f"  ERROR (rc={step.rc}): {step.error}")
            if step.rc in (2, 3, 4):  # usage, address in use, nothing listening: won't heal
                if proxy == "relay" and self.relay is not None and not self.relay.alive():
                    self.relay_needs_restart = True
                else:
                    raise BenchError(f"run_anchor.sh: {step.error}")
        if proxy == "relay" and not step.passed:
            self.relay_needs_restart = True
        time.sleep(PAUSE_BETWEEN_STEPS_S)
        return step

    def search(self, proxy: str, flow: str) -> Search:
        args = self.args
        result = Search(proxy, flow)
        history: dict[int, list[bool]] = {}

        def attempt(rate: int, phase: str) -> bool:
            step = self.run_step(proxy, flow, phase, rate, result)
            history.setdefault(rate, []).append(step.passed)
            return step.passed

        try:
            knee, first_fail, capped = find_knee(
                attempt, args.start, args.max, args.resolution, args.repeats, history
            )
        except (OutOfBudget, KeyboardInterrupt, SystemExit) as e:
            result.complete = False
            result.note = f"out of budget: {e}" if isinstance(e, OutOfBudget) else "interrupted"
            knee, first_fail, capped = provisional_knee(history), None, False
            fails = [r for r, runs in history.items() if not all(runs)]
            first_fail = min(fails) if fails else None
            log(f"[{proxy} {flow}] {result.note}; provisional knee {knee}")
            if not isinstance(e, OutOfBudget):
                result.knee_cps, result.first_fail_rate = knee, first_fail
                self.results[flow][proxy] = asdict(result)
                raise
        result.knee_cps, result.first_fail_rate, result.capped = knee, first_fail, capped
        at_knee = [
            self.harness.steps[i]
            for i in result.steps
            if self.harness.steps[i].rate == knee and self.harness.steps[i].passed
        ]
        cpu = [s.summary["proxy_cpu_pct"] for s in at_knee if s.summary.get("proxy_cpu_pct")]
        result.cpu_at_knee_pct = _mean(cpu)
        cps = [s.summary["cps"] for s in at_knee if s.summary.get("cps")]
        if result.cpu_at_knee_pct is not None and cps:
            result.cpu_ms_per_call = round(
                result.cpu_at_knee_pct / 100.0 / (sum(cps) / len(cps)) * 1000.0, 3
            )
        result.host_busy_at_knee_pct = _mean(
            [s.summary["host_busy_pct"] for s in at_knee if s.summary.get("host_busy_pct")]
        )
        result.inv_rt_ms_at_knee = _mean(
            [s.summary["inv_rt_ms"] for s in at_knee if s.summary.get("inv_rt_ms") is not None]
        )
        if knee > 0:
            self.half_load(proxy, flow, knee, result)
        return result

    def half_load(self, proxy: str, flow: str, knee: int, result: Search) -> None:
        rate = max(10, knee // 2 // 10 * 10) if knee >= 20 else max(1, knee // 2)
        how = ""
        try:
            self.budget.check(self._step_cost())
            if proxy == "relay":
                assert self.relay is not None
                if self.relay_needs_restart or not self.relay.alive():
                    self.relay.restart()
                    self.relay_needs_restart = False
                    how = "relay restarted"
                else:
                    how = self.relay.reset_latency()
            step = self.run_step(proxy, flow, "half-load", rate, result)
            step.relay_restarted = step.relay_restarted or how.startswith("relay restarted")
        except OutOfBudget as e:
            result.half_load = {"rate": rate, "skipped": f"out of budget: {e}"}
            log(f"[{proxy} {flow}] half-load step skipped: {e}")
            return
        half: dict[str, Any] = {
            "rate": rate,
            "verdict": step.verdict,
            "step": len(self.harness.steps) - 1,
            "inv_rt_ms": step.summary.get("inv_rt_ms"),
            "proxy_cpu_pct": step.summary.get("proxy_cpu_pct"),
        }
        if proxy == "relay":
            assert self.relay is not None
            half["latency"] = self.relay_latency(flow, step, how)
            step.latency = lat = half["latency"]
            log(
                f"  relay latency per message: p50 {_fmt(lat['p50_ms'], ' ms', 3)}, "
                f"p99 {_fmt(lat['p99_ms'], ' ms', 3)} ({lat['samples']} samples; {how})"
                + (f" - {lat['note']}" if lat.get("note") else "")
            )
        result.half_load = half

    def relay_latency(self, flow: str, step: Step, how: str) -> dict[str, Any]:
        assert self.relay is not None
        status = self.relay.status() if self.relay.alive() else None
        latency = status.get("latency") if status else None
        workers = len((status or {}).get("workers") or []) or 1
        out: dict[str, Any] = {
            "p50_ms": None,
            "p99_ms": None,
            "samples": None,
            "source": "relay control socket `status` -> latency (read from the socket to sent; "
            "worst of the workers' percentiles; samples: the largest worker's count)",
            "window": how,
        }
        if not isinstance(latency, dict) or latency.get("p50_ms") is None:
            out["note"] = (
                "the relay reports no per-message latency (status has no `latency` with p50_ms)"
                if status
                else "the relay did not answer `status`"
            )
            return out
        out["p50_ms"] = _number(str(latency.get("p50_ms")))
        out["p99_ms"] = _number(str(latency.get("p99_ms")))
        out["samples"] = _integer(str(latency.get("samples")))
        # about half of a call's messages are received by the relay (the rest it sends)
        per_worker = step.calls * MESSAGES_PER_CALL.get(flow, 17) / 2 / workers
        if per_worker > LATENCY_WINDOW:
            out["note"] = (
                f"the last {LATENCY_WINDOW} messages of each worker (of ~{per_worker:.0f})"
            )
        return out

    def run(self, flows: list[str], kamailio: str | None) -> dict[str, dict[str, Any]]:
        results = self.results = {flow: {} for flow in flows}
        if not self.args.kamailio_only:
            self.relay = Relay(
                self.args.clearipctl, self.out, self.args.workers, steering=self.args.steering
            )
            try:
                self.relay.start()
                mine = _autogroup("self")
                theirs = _autogroup(str(self.relay.pid))
                self.meta = {"autogroup": {"bench": mine, "relay": theirs}}
                if theirs != mine:
                    self.notes.append(
                        f"WARNING: the relay is in CFS autogroup {theirs}, the harness in {mine}"
                    )
                for flow in flows:
                    try:
                        results[flow]["relay"] = asdict(self.search("relay", flow))
                    except BenchError as e:
                        results[flow]["relay"] = {"error": str(e)}
                        log(f"[relay {flow}] aborted: {e}")
            finally:
                self.relay.cleanup()
        if kamailio:
            for flow in flows:
                try:
                    results[flow]["kamailio"] = asdict(self.search("kamailio", flow))
                except BenchError as e:
                    results[flow]["kamailio"] = {"error": str(e)}
                    log(f"[kamailio {flow}] aborted: {e}")
        for flow in flows:
            relay_knee = (results[flow].get("relay") or {}).get("knee_cps")
            kam = results[flow].get("kamailio")
            kam_knee = (kam or {}).get("knee_cps")
            results[flow]["ratio"] = (
                round(relay_knee / kam_knee, 3) if relay_knee is not None and kam_knee else None
            )
            bounds = [
                f"{name} knee is {'a lower bound (--max)' if s.get('capped') else 'provisional'}"
                for name, s in (("relay", results[flow].get("relay")), ("Kamailio", kam))
                if s and (s.get("capped") or not s.get("complete", True))
            ]
            if results[flow]["ratio"] is not None and bounds:
                results[flow]["ratio_note"] = "; ".join(bounds)
        return results


def _knee_text(search: dict[str, Any] | None) -> str:
    if not search:
        return "-"
    if "error" in search:
        return "error"
    knee = search.get("knee_cps")
    if knee is None:
        return "n/a"
    prefix = ">=" if search.get("capped") else ("~" if not search.get("complete") else "")
    return f"{prefix}{knee}"


def _cpu_text(search: dict[str, Any] | None) -> str:
    if not search or search.get("cpu_at_knee_pct") is None:
        return "-" if not search else "n/a"
    per_call = search.get("cpu_ms_per_call")
    extra = f" ({per_call:.2f} ms/call)" if per_call is not None else ""
    return f"{search['cpu_at_knee_pct']:.1f}%{extra}"


def format_table(results: dict[str, dict[str, Any]], machine: dict[str, Any]) -> str:
    header = [
        "flow",
        "relay knee cps",
        "relay CPU at knee",
        "Kamailio knee",
        "Kamailio CPU",
        "ratio",
        "added latency p50/p99 at half",
        "inv_rt at half relay/kam",
        "machine",
    ]
    short_machine = f"{machine['nproc']} cpu, {machine['kernel']}"
    rows = [header]
    for flow, result in results.items():
        relay = result.get("relay")
        kam = result.get("kamailio")
        lat = ((relay or {}).get("half_load") or {}).get("latency") or {}
        if lat.get("p50_ms") is not None:
            latency = f"{lat['p50_ms']:.3f}/{lat['p99_ms']:.3f} ms"
        else:
            latency = "n/a" if relay and relay.get("half_load") else "-"
        half_rt = [
            _fmt(s["half_load"].get("inv_rt_ms"), "", 2) if s and s.get("half_load") else "-"
            for s in (relay, kam)
        ]
        ratio = result.get("ratio")
        rows.append(
            [
                flow,
                _knee_text(relay),
                _cpu_text(relay),
                _knee_text(kam),
                _cpu_text(kam),
                "n/a" if ratio is None else f"{ratio:.2f}",
                latency,
                f"{half_rt[0]}/{half_rt[1]} ms",
                short_machine,
            ]
        )
    return text_table(rows)


def format_runs(reports: list[dict[str, Any]]) -> str:
    """The knees of every run side by side: how much a run-to-run difference is noise."""
    flows = list((reports[0].get("flows") or {}).keys()) if reports else []
    rows = [["run", "flow", "relay knee", "relay ms/call", "Kamailio knee", "Kamailio ms/call",
             "ratio"]]  # fmt: skip
    for number, report in enumerate(reports, 1):
        for flow in flows:
            result = (report.get("flows") or {}).get(flow) or {}
            relay, kam = result.get("relay"), result.get("kamailio")
            ratio = result.get("ratio")
            rows.append(
                [
                    str(number),
                    flow,
                    _knee_text(relay),
                    _ms_per_call(relay),
                    _knee_text(kam),
                    _ms_per_call(kam),
                    "n/a" if ratio is None else f"{ratio:.2f}",
                ]
            )
    return text_table(rows)


def _ms_per_call(search: dict[str, Any] | None) -> str:
    per_call = (search or {}).get("cpu_ms_per_call")
    return "-" if per_call is None else f"{per_call:.2f}"


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if key in ("PROXY", "PROXY_PID", "RESULTS", "RUNS", "OUTDIR"):
        raise argparse.ArgumentTypeError(f"{key} is set by this script")
    return key, value


def _flows(text: str) -> list[str]:
    flows = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in flows if f not in FLOWS]
    if not flows or bad:
        raise argparse.ArgumentTypeError(f"flows are a comma list of {', '.join(FLOWS)}")
    return flows


def add_proxy_arguments(parser: argparse.ArgumentParser) -> None:
    """--workers, and --no-kamailio / --kamailio-only: which proxies, the same in the tools
    that run both on the anchor."""
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="relay.workers of the relay under test [the config's 0: one per core]",
    )  # fmt: skip
    who = parser.add_mutually_exclusive_group()
    parser.add_argument(
        "--steering", choices=("auto", "on", "off"), default=None,
        help="relay.steering of the relay under test: off compares with the hand-off [auto]",
    )  # fmt: skip
    who.add_argument("--no-kamailio", action="store_true", help="the relay only")
    who.add_argument("--kamailio-only", action="store_true", help="Kamailio only")


def add_anchor_arguments(parser: argparse.ArgumentParser, results: str, hosts: str) -> None:
    """--net, --anchor and --out of the tools that run the anchor's peers apart from
    bench_calls.py: `results` names the directory under bench-results/, `hosts` the addresses
    --net moves."""
    parser.add_argument(
        "--net", type=loopback_net, default=ANCHOR_NET, metavar="A.B.C",
        help=f"the loopback /24 of the addresses ({hosts}), when {ANCHOR_NET}.10 is "
        f"taken [{ANCHOR_NET}]",
    )  # fmt: skip
    parser.add_argument(
        "--anchor", type=Path, default=None, metavar="DIR",
        help=f"the anchor harness directory (read, never written) [{DEFAULT_ANCHOR}]",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR",
        help=f"where logs and results go [bench-results/{results}-<time>/ in the repo]",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_calls.py",
        description=(
            "Call-rate benchmark of the relay on the SIPp anchor (../shared/bench/anchor/): "
            "the highest sustained calls/s with no failed call, per flow, the relay's CPU "
            "there, the per-message latency it adds at half that rate, and the ratio to "
            "Kamailio on the same machine in the same run."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--flows", type=_flows, default=["ok", "failover"],
        help="comma list of anchor flows: ok, failover (decline also works) [ok,failover]",
    )  # fmt: skip
    parser.add_argument(
        "--seconds", type=positive_int, metavar="N", help="length of each step, s [10]"
    )
    parser.add_argument(
        "--start", type=positive_int, metavar="CPS", help="first rate of the search, calls/s [250]"
    )
    parser.add_argument(
        "--max", type=positive_int, default=6000, metavar="CPS", help="highest rate tried [6000]"
    )
    parser.add_argument(
        "--resolution", type=positive_int, default=100, metavar="CPS",
        help="the refinement stops when the last PASS and first FAIL are this close [100]",
    )  # fmt: skip
    parser.add_argument(
        "--repeats", type=positive_int, metavar="N", help="steps that must all PASS at the knee [2]"
    )
    parser.add_argument(
        "--runs", type=positive_int, default=1, metavar="N",
        help="whole runs (every flow, relay and Kamailio each), one table per run and a "
        "table of the knees of all [1]",
    )  # fmt: skip
    parser.add_argument(
        "--zero-retrans", action="store_true",
        help="a step with any retransmission fails (the harness allows 0.01 %% of the calls)",
    )  # fmt: skip
    add_proxy_arguments(parser)
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: 4 s steps, 1 repeat, start 100, 8 min budget (explicit options win)",
    )  # fmt: skip
    parser.add_argument(
        "--budget-min",
        type=float,
        metavar="MIN",
        help="stop starting steps after this many minutes [30]",
    )
    parser.add_argument(
        "--anchor", type=Path, default=None, metavar="DIR",
        help=f"the anchor harness directory [{DEFAULT_ANCHOR}]",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR",
        help="where logs and results go [bench-results/<time>/ in the repo]",
    )  # fmt: skip
    parser.add_argument(
        "--env", type=_env_pair, action="append", default=[], metavar="KEY=VALUE",
        help="extra environment for run_anchor.sh (e.g. CHILDREN=4, UPSTREAM_WAIT=10)",
    )  # fmt: skip
    add_output_arguments(parser)
    return parser


def resolve_args(args: argparse.Namespace) -> None:
    apply_preset(args, QUICK if args.quick else DEFAULTS)
    args.start = min(args.start, args.max)
    args.env = dict(args.env)



def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resolve_args(args)
    anchor = (args.anchor or DEFAULT_ANCHOR).resolve()
    if not (anchor / "run_anchor.sh").is_file():
        message = f"bench_calls: no anchor harness at {anchor} (run_anchor.sh)"
        if args.anchor is not None:
            log(message)
            return 2
        log(message + ": skipped (give --anchor DIR)")
        return 0
    if shutil.which("sipp") is None:
        log("bench_calls: sipp not found: apt-get install sip-tester (make bootstrap does)")
        return 2
    kamailio = None if args.no_kamailio else shutil.which("kamailio")
    skip_note = ""
    if not args.no_kamailio and kamailio is None:
        skip_note = "kamailio not on PATH: no ratio (install it: apt-get install kamailio)"
        log(f"bench_calls: {skip_note}")
        if args.kamailio_only:
            return 2
    if not args.kamailio_only and not args.clearipctl.exists():
        log(f"bench_calls: no {args.clearipctl}: run `make bootstrap`")
        return 2

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = (args.out or REPO / "bench-results" / stamp).resolve()
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    vers = versions(args.clearipctl, kamailio)
    log(
        f"machine: {machine['nproc']} cpu ({machine['cpu_model']}), kernel {machine['kernel']}, "
        f"load {machine['loadavg_at_start'][0]:.2f}"
    )
    log("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items() if v))
    log(f"output: {out}")
    if machine["loadavg_at_start"][0] > 0.5 * machine["nproc"]:
        log("note: the machine is busy already; knees will be lower than on an idle one")

    reports: list[dict[str, Any]] = []
    interrupted = None
    for run in range(1, args.runs + 1):
        run_out = out if args.runs == 1 else out / f"run-{run}"
        run_out.mkdir(parents=True, exist_ok=True)
        if args.runs > 1:
            log(f"=== run {run} of {args.runs}: {run_out}")
        report, interrupted = one_run(args, run_out, anchor, kamailio, machine, vers, skip_note)
        reports.append(report)
        if interrupted:
            break
    if args.runs > 1:
        text = json.dumps({"tool": "tools/bench_calls.py", "runs": reports}, indent=2)
        (out / "results.json").write_text(text + "\n")
        table = format_runs(reports)
        (out / "runs.txt").write_text(table + "\n")
        stream = sys.stderr if args.json == "-" else sys.stdout
        print("", file=stream)
        print(table, file=stream)
        print(f"results: {out / 'results.json'}", file=stream)
    else:
        text = json.dumps(reports[0], indent=2)
    write_json(args.json, text)
    if interrupted == "interrupted":
        return 130
    if interrupted and interrupted.startswith("exit "):
        return 143  # SIGTERM
    return 1 if interrupted else 0


def one_run(
    args: argparse.Namespace,
    out: Path,
    anchor: Path,
    kamailio: str | None,
    machine: dict[str, Any],
    vers: dict[str, str | None],
    skip_note: str,
) -> tuple[dict[str, Any], str | None]:
    """One search per flow and proxy (the relay, then Kamailio): its report and whether it was
    cut short."""
    bench = Bench(args, out, anchor)
    if skip_note:
        bench.notes.append(skip_note)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    interrupted = None
    with sigterm_as_exit():
        try:
            bench.run(args.flows, kamailio)
        except (KeyboardInterrupt, SystemExit) as e:
            interrupted = "interrupted" if isinstance(e, KeyboardInterrupt) else f"exit {e.code}"
            bench.harness.stop_child()
            if bench.relay is not None:
                bench.relay.cleanup()
        except BenchError as e:
            log(f"bench_calls: {e}")
            bench.notes.append(f"aborted: {e}")
            interrupted = str(e)
    results = bench.results

    bench.notes.append(
        "latency: the relay's own timings, from reading a message off its socket to having "
        "sent what it caused; time queued in the kernel socket buffer is not included"
    )
    report = {
        "tool": "tools/bench_calls.py",
        "started": started,
        "duration_s": round(time.monotonic() - t0, 1),
        "interrupted": interrupted,
        "machine": machine,
        "versions": vers,
        "anchor": str(anchor),
        "output_dir": str(out),
        "settings": {
            "flows": args.flows,
            "seconds": args.seconds,
            "start": args.start,
            "max": args.max,
            "resolution": args.resolution,
            "repeats": args.repeats,
            "zero_retrans": args.zero_retrans,
            "workers": args.workers,
            "steering": args.steering,
            "budget_min": args.budget_min,
            "quick": args.quick,
            "harness_env": args.env,
            "policy": "coarse doubling from start to the first FAIL, bisection on multiples "
            "of resolution, knee confirmed by `repeats` passing steps; one step at knee/2",
        },
        **bench.meta,
        "flows": results,
        "notes": bench.notes,
        "steps": [asdict(s) for s in bench.harness.steps],
    }
    text = json.dumps(report, indent=2)
    (out / "results.json").write_text(text + "\n")
    table = format_table(results, machine) if results else "(no results)"
    (out / "table.txt").write_text(table + "\n")
    stream = sys.stderr if args.json == "-" else sys.stdout
    print("", file=stream)
    print(
        f"machine: {machine['nproc']} cpu, {machine['cpu_model']}, kernel {machine['kernel']}",
        file=stream,
    )
    print("versions: " + "; ".join(f"{k}: {v or 'n/a'}" for k, v in vers.items()), file=stream)
    print(table, file=stream)
    for note in bench.notes:
        print(f"note: {note}", file=stream)
    print(f"results: {out / 'results.json'}", file=stream)
    return report, interrupted


if __name__ == "__main__":
    sys.exit(main())
