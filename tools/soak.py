"""Soak: the relay for --minutes (30) at half its knee, ok, failover and 603 calls at once.

Issue 12. Run by `make soak` (arguments through `SOAK_ARGS=...`); not part of `make test`. On
loopback, the anchor's addresses (`../shared/bench/anchor/`, --net to move them):

    relay        .10  `clearipctl run`, tools/bench_configs/anchor.toml (fast path off,
                      relay.workers = 0: one worker per core), started as bench_calls.py does
    switch       .11  three SIPp UACs at once, one a flow, on ports 5060, 5062, 5064:
                      ok (uac_switch.xml, dials +12025550121), failover (uac_switch.xml,
                      +12025550122), decline (uac_switch_decline.xml, +12025550123)
    ClearIP      .12  SIPp over TCP, tools/bench_configs/uas_clearip_mix.xml: by the number
                      dialled, 302 to A then B, 302 to F then B, or 603
    provider A   .13  uas_provider_ok.xml          provider B  .14  uas_provider_ok.xml
    provider F   .15  uas_provider_503.xml (the failover flow's first provider)

Why three UACs at once rather than the harness's variants in turn: the three flows then share
the relay's workers, tables and timers the whole time, as a carrier's mix does, with one
ClearIP link that stays up (the harness starts a new ClearIP for each step) and no pause
between steps. --rate is split evenly between them.

Every --interval (60 s) one row: each worker's RSS (/proc/<pid>/status VmRSS, the PIDs from
`status` "workers") and open fds (/proc/<pid>/fd), the supervisor's too, the relay's CPU, its
`transactions` tables, and from the sipps' statistics the calls completed per flow, the calls
failed at every peer (each switch UAC, ClearIP, A, F, B) and the retransmissions, in that
minute. When the calls end, the tables are polled for up to --drain (40 s) until they are all 0.

Verdict, each part said to hold or not: every worker's RSS flat after warm-up (at most
--growth % more at the last loaded minute than at the warm-up minute: 3, or 10 % of the run
when that is less, at least 1); zero failed calls at every peer and every call completed; the
tables back to 0 after the load stopped. The table and JSON go to
bench-results/soak-<time>/ (table.txt, soak.json) with the relay's log and every sipp's CSV
and error log. Exit status: 0 when the verdict holds, 1 when it does not, 2 when the soak
could not run; every process started here is stopped by PID, also on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
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
from typing import Any

from bench_calls import DEFAULT_ANCHOR, BenchError, Relay, add_anchor_arguments, versions
from benchcommon import (
    add_output_arguments,
    apply_preset,
    log,
    machine_info,
    port_in_use,
    positive_int,
    sigterm_as_exit,
    sipp_int,
    sipp_rows,
    stop_process,
    text_table,
    write_json,
)

REPO = Path(__file__).resolve().parent.parent
CLEARIP_SCENARIO = REPO / "tools" / "bench_configs" / "uas_clearip_mix.xml"

# name -> (scenario in the anchor dir, host byte, port, number dialled); switch UACs first
FLOWS = {
    "ok": ("uac_switch.xml", 11, 5060, "12025550121"),
    "failover": ("uac_switch.xml", 11, 5062, "12025550122"),
    "decline": ("uac_switch_decline.xml", 11, 5064, "12025550123"),
}
PROVIDERS = {  # name -> (scenario in the anchor dir, host byte); ClearIP is apart (TCP)
    "prov_a": ("uas_provider_ok.xml", 13),
    "prov_f": ("uas_provider_503.xml", 15),
    "prov_b": ("uas_provider_ok.xml", 14),
}
PEERS = ("uac_ok", "uac_failover", "uac_decline", "clearip", "prov_a", "prov_f", "prov_b")

DEFAULTS = {"minutes": 30.0, "knee": 800}
SIPP_BUF = 4194304  # as the harness
RECV_TIMEOUT_MS = 10000  # as the harness: a call fails when an expected message is this late
UAS_LISTEN_TIMEOUT_S = 10.0
LINK_TIMEOUT_S = 30.0  # the relay's ClearIP link up, before the calls start
UAC_SLACK_S = 60.0  # sipp -timeout beyond the calls' time
END_SLACK_S = 90.0  # the sampling loop's bound beyond the calls' time
SIPP_STOP_S = 5.0
MAX_LOG_BYTES = 1048576  # each sipp's error log stops there
CLK_TCK = os.sysconf("SC_CLK_TCK")

EPILOG = f"""\
rows: minute (since the calls started), calls completed in that minute per flow
  (ok/failover/decline), calls failed in it (the three switch UACs together / ClearIP / A /
  F / B), retransmissions of all sipps, the relay's CPU (supervisor and workers, 100 % =
  one core), RSS and open fds of each worker, the tables (server/client transactions,
  calls, dialogs). The last row, "end", is after the drain.

verdict: RSS flat: each worker's RSS at the last loaded minute at most --growth % above the
  warm-up minute (--warmup-min, default min(3, 10 % of the run), at least 1), its PID
  unchanged (no restart); no failed call: every sipp's FailedCall 0 and every UAC completed
  all its calls; tables drained: status transactions all 0 within --drain s of the end.

examples:
  make soak                                   # 30 minutes at 400 calls/s (knee 800)
  make soak SOAK_ARGS="--knee 900"            # 30 minutes at 450 calls/s
  .venv/bin/python tools/soak.py --minutes 2 --rate 100
  .venv/bin/python tools/soak.py --minutes 60 --rate 450 --json -

defaults: --minutes {DEFAULTS["minutes"]:g} --knee {DEFAULTS["knee"]} --rate knee/2, split
  evenly over the three flows (the remainder to ok)
"""


# ---------------------------------------------------------------------------------------------
# SIPp


class Sipp:
    """One sipp, a child of this script (same session: same CFS autogroup as the relay), its
    statistics and error log in `out/<name>.*`."""

    def __init__(self, name: str, argv: list[str], out: Path) -> None:
        self.name = name
        self.csv = out / f"{name}.csv"
        self.argv = [
            *argv, "-nostdin", "-buff_size", str(SIPP_BUF),
            "-trace_stat", "-stf", str(self.csv), "-fd", "1",
            "-trace_err", "-error_file", str(out / f"{name}_err.log"),
            "-max_log_size", str(MAX_LOG_BYTES),
        ]  # fmt: skip
        with open(out / f"{name}.screen", "wb") as screen:
            # its own process group: a terminal's Ctrl-C reaches this script, which stops it
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=screen, stderr=subprocess.STDOUT,
                cwd=out, process_group=0,
            )  # fmt: skip
        with open(out / "commands.txt", "a") as f:
            f.write(" ".join(self.argv) + "\n")

    def running(self) -> bool:
        return self.proc.poll() is None

    def last(self) -> dict[str, str]:
        rows = sipp_rows(self.csv, last_only=True)
        return rows[0] if rows else {}

    def stop(self) -> int | None:
        """SIGUSR1: no new calls, exit once the calls in progress end (final statistics
        written); SIGKILL after a grace."""
        return stop_process(self.proc, SIPP_STOP_S, signal.SIGUSR1)


def wait_listening(address: tuple[str, int], sipp: Sipp, tcp: bool) -> None:
    deadline = time.monotonic() + UAS_LISTEN_TIMEOUT_S
    while time.monotonic() < deadline:
        busy = port_in_use(address)
        if busy and (not tcp or busy.startswith("tcp")):
            return
        if not sipp.running():
            break
        time.sleep(0.1)
    tail = (Path(sipp.csv).with_suffix(".screen")).read_text(errors="replace")[-800:]
    raise BenchError(f"{sipp.name} does not listen on {address[0]}:{address[1]}:\n{tail}")


# ---------------------------------------------------------------------------------------------
# One row


@dataclass
class Sample:
    minute: str  # "1", "2" ... under load; "end" after the drain
    elapsed_s: float
    workers: list[dict[str, Any]] = field(default_factory=list)  # index, pid, rss_kb, fds
    supervisor: dict[str, Any] = field(default_factory=dict)
    relay_cpu_pct: float | None = None
    transactions: dict[str, int] | None = None
    workers_restarted: int | None = None
    calls_lost: int | None = None
    drops: dict[str, int] = field(default_factory=dict)
    completed: dict[str, int] = field(default_factory=dict)  # per flow, in this minute
    failed: dict[str, int] = field(default_factory=dict)  # per peer, in this minute
    retransmissions: dict[str, int] = field(default_factory=dict)  # per peer, in this minute
    totals: dict[str, dict[str, int]] = field(default_factory=dict)  # per peer, cumulated


def _proc_status_kb(pid: int, key: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def _fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total


class Soak:
    def __init__(self, args: argparse.Namespace, out: Path, anchor: Path) -> None:
        self.args = args
        self.out = out
        self.anchor = anchor
        self.net = args.net
        self.relay: Relay | None = None
        self.uas: dict[str, Sipp] = {}
        self.uacs: dict[str, Sipp] = {}
        self.samples: list[Sample] = []
        self.rates = split_rate(args.rate)
        self.drain: dict[str, Any] = {}
        self.notes: list[str] = []
        self._totals: dict[str, dict[str, int]] = {}
        self._ticks: tuple[float, int] | None = None
        self.t0 = 0.0

    def ip(self, host: int) -> str:
        return f"{self.net}.{host}"

    # -- processes

    def start(self) -> None:
        args = self.args
        for host, port in [(11, p) for _, _, p, _ in FLOWS.values()] + [
            (12, 5060), *((h, 5060) for _, h in PROVIDERS.values())
        ]:
            busy = port_in_use((self.ip(host), port))
            if busy:
                raise BenchError(f"{busy}: another run? (--net moves every address)")
        self.relay = Relay(
            args.clearipctl, self.out, args.workers, net=self.net, steering=args.steering
        )
        self.relay.start()
        log(f"relay ready: pid {self.relay.pid}, workers {self.relay.worker_pids}")
        uas_timeout = f"{round(args.minutes * 60 + UAC_SLACK_S + 2 * args.drain)}s"
        keys = [
            "-key", "provider_a", f"{self.ip(13)}:5060",
            "-key", "provider_b", f"{self.ip(14)}:5060",
            "-key", "provider_f", f"{self.ip(15)}:5060",
        ]  # fmt: skip
        self.uas["clearip"] = Sipp(
            "clearip",
            ["sipp", "-sf", str(CLEARIP_SCENARIO), "-i", self.ip(12), "-p", "5060", "-t", "t1",
             "-timeout", uas_timeout, *keys],
            self.out,
        )  # fmt: skip
        for name, (scenario, host) in PROVIDERS.items():
            self.uas[name] = Sipp(
                name,
                ["sipp", "-sf", str(self.anchor / scenario), "-i", self.ip(host), "-p", "5060",
                 "-timeout", uas_timeout],
                self.out,
            )  # fmt: skip
        wait_listening((self.ip(12), 5060), self.uas["clearip"], tcp=True)
        for name, (_, host) in PROVIDERS.items():
            wait_listening((self.ip(host), 5060), self.uas[name], tcp=False)
        self.wait_link()
        seconds = round(args.minutes * 60)
        for flow, (scenario, host, port, number) in FLOWS.items():
            rate = self.rates[flow]
            self.uacs[flow] = Sipp(
                f"uac_{flow}",
                ["sipp", f"{self.ip(10)}:5060", "-sf", str(self.anchor / scenario),
                 "-i", self.ip(host), "-p", str(port), "-s", number,
                 "-r", str(rate), "-rp", "1000", "-m", str(rate * seconds),
                 "-l", str(max(200, rate * 5)), "-recv_timeout", str(RECV_TIMEOUT_MS),
                 "-timeout", f"{seconds + round(UAC_SLACK_S)}s"],
                self.out,
            )  # fmt: skip
        self.t0 = time.monotonic()
        self._ticks = (self.t0, _cpu_ticks(self.relay_pids()))
        log(
            f"calls: {args.rate}/s for {args.minutes:g} min "
            f"({', '.join(f'{f} {r}/s' for f, r in self.rates.items())})"
        )
        log("  ".join(HEADER))

    def wait_link(self) -> None:
        assert self.relay is not None
        deadline = time.monotonic() + LINK_TIMEOUT_S
        state = None
        while time.monotonic() < deadline:
            state = ((self.relay.status() or {}).get("upstream") or {}).get("state")
            if state == "connected":
                return
            time.sleep(0.2)
        raise BenchError(f"the relay's ClearIP link is {state!r} after {LINK_TIMEOUT_S:g} s")

    def relay_pids(self, status: dict[str, Any] | None = None) -> list[int]:
        assert self.relay is not None
        pids = [self.relay.pid] if self.relay.pid else []
        workers = (status or {}).get("workers")
        pids += [int(w["pid"]) for w in workers] if workers else self.relay.worker_pids
        return pids

    def stop(self) -> None:
        """The switches first (no new calls), then the UASs, then the relay; by PID."""
        for sipp in [*self.uacs.values(), *self.uas.values()]:
            rc = sipp.stop()
            if rc not in (0, 1):  # 1: some calls failed, counted already
                screen = self.out / f"{sipp.name}.screen"
                with contextlib.suppress(OSError):
                    tail = " ".join(screen.read_text(errors="replace")[-300:].split())
                    self.notes.append(f"{sipp.name} exited with status {rc}: ...{tail}")
        if self.relay is not None:
            self.relay.cleanup()
            self.relay = None

    # -- sampling

    def sample(self, minute: str) -> Sample:
        assert self.relay is not None
        now = time.monotonic()
        status = self.relay.status() if self.relay.alive() else None
        s = Sample(minute, round(now - self.t0, 1))
        if status:
            s.transactions = status.get("transactions")
            s.workers_restarted = status.get("workers_restarted")
            s.calls_lost = status.get("calls_lost")
            s.drops = {k: v for k, v in (status.get("drops") or {}).items() if v}
            for w in status.get("workers") or []:
                pid = int(w["pid"])
                s.workers.append({
                    "index": w.get("index"), "pid": pid, "alive": w.get("alive"),
                    "rss_kb": _proc_status_kb(pid, "VmRSS"), "fds": _fds(pid),
                })  # fmt: skip
        if self.relay.pid:
            s.supervisor = {
                "pid": self.relay.pid,
                "rss_kb": _proc_status_kb(self.relay.pid, "VmRSS"),
                "fds": _fds(self.relay.pid),
            }
        ticks = _cpu_ticks(self.relay_pids(status))
        if self._ticks is not None and now > self._ticks[0]:
            s.relay_cpu_pct = round(
                100.0 * (ticks - self._ticks[1]) / CLK_TCK / (now - self._ticks[0]), 1
            )
        self._ticks = (now, ticks)
        sipps = {f"uac_{f}": p for f, p in self.uacs.items()} | self.uas
        for peer in PEERS:
            row = sipps[peer].last() if peer in sipps else {}
            total = {
                "created": sipp_int(row, "TotalCallCreated"),
                "successful": sipp_int(row, "SuccessfulCall(C)"),
                "failed": sipp_int(row, "FailedCall(C)"),
                "retransmissions": sipp_int(row, "Retransmissions(C)"),
            }
            before = self._totals.get(peer, dict.fromkeys(total, 0))
            s.failed[peer] = total["failed"] - before["failed"]
            s.retransmissions[peer] = total["retransmissions"] - before["retransmissions"]
            if peer.startswith("uac_"):
                s.completed[peer.removeprefix("uac_")] = total["successful"] - before["successful"]
            s.totals[peer] = total
            self._totals[peer] = total
        self.samples.append(s)
        log(format_row(s))
        return s

    def run(self) -> None:
        args = self.args
        interval = args.interval
        end = self.t0 + args.minutes * 60 + END_SLACK_S
        minute = 0
        while time.monotonic() < end:
            minute += 1
            mark = self.t0 + minute * interval
            while time.monotonic() < min(mark, end):
                if not any(u.running() for u in self.uacs.values()):
                    break
                if self.relay is None or not self.relay.alive():
                    self.notes.append(f"the relay exited during minute {minute}")
                    log(f"soak: {self.notes[-1]}: stopping the calls")
                    return
                time.sleep(min(0.5, max(0.0, mark - time.monotonic())))
            calls_over = not any(u.running() for u in self.uacs.values())
            if calls_over and time.monotonic() < mark - interval / 2:
                break  # the calls ended early in this minute: its partial row is "end" below
            self.sample(str(minute))
            if calls_over:
                break
        else:
            self.notes.append(f"the calls were still running {END_SLACK_S:g} s after their time")
        self.wait_drained()
        self.sample("end")

    def wait_drained(self) -> None:
        """Poll the tables once a second until all are 0, at most --drain s."""
        assert self.relay is not None
        t0 = time.monotonic()
        tables: dict[str, int] | None = None
        while time.monotonic() - t0 < self.args.drain:
            status = self.relay.status() if self.relay.alive() else None
            tables = (status or {}).get("transactions")
            if tables is not None and not any(tables.values()):
                break
            time.sleep(1.0)
        drained = tables is not None and not any(tables.values())
        self.drain = {
            "drained": drained,
            "seconds": round(time.monotonic() - t0, 1),
            "tables": tables,
        }
        log(f"tables {'at 0' if drained else 'NOT at 0'} after {self.drain['seconds']} s: {tables}")


def split_rate(rate: int) -> dict[str, int]:
    """--rate over the three flows, evenly; what does not divide goes to ok."""
    share = rate // len(FLOWS)
    rates = dict.fromkeys(FLOWS, share)
    rates["ok"] += rate - share * len(FLOWS)
    return rates


def warmup_minute(minutes: float) -> int:
    """Minute 3, or 10 % of the run when that is less; at least minute 1."""
    return max(1, min(3, math.floor(minutes * 0.1)))


# ---------------------------------------------------------------------------------------------
# Report


def _mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


HEADER = [
    "min", "calls ok/fo/dec", "failed sw/ci/A/F/B", "retrans", "relay CPU",
    "RSS MB per worker", "fds per worker", "tables srv/cli/calls/dlg",
]  # fmt: skip


def row_cells(s: Sample) -> list[str]:
    failed = s.failed
    switch = sum(failed.get(f"uac_{f}", 0) for f in FLOWS)
    t = s.transactions or {}
    return [
        s.minute,
        "/".join(str(s.completed.get(f, 0)) for f in FLOWS),
        "/".join(str(v) for v in (switch, *(failed.get(p, 0) for p in PEERS[3:]))),
        str(sum(s.retransmissions.values())),
        "-" if s.relay_cpu_pct is None else f"{s.relay_cpu_pct:.0f}%",
        " ".join(_mb(w.get("rss_kb")) for w in s.workers) or "-",
        " ".join(str(w.get("fds", "-")) for w in s.workers) or "-",
        "/".join(str(t.get(k, "-")) for k in ("server", "client", "calls", "dialogs")),
    ]


def format_row(s: Sample) -> str:
    return "  ".join(row_cells(s))


def verdict(
    samples: list[Sample],
    warmup: int,
    growth_pct: float,
    drain: dict[str, Any],
    expected: dict[str, int],
) -> dict[str, Any]:
    """The three parts of the verdict, each with its figures and whether it holds."""
    loaded = [s for s in samples if s.minute != "end"]
    warm = next((s for s in loaded if s.minute == str(warmup)), None)
    last = loaded[-1] if loaded else None
    rss: dict[str, Any] = {"warmup_minute": warmup, "limit_pct": growth_pct, "workers": []}
    holds = warm is not None and last is not None and last is not warm
    if warm is not None and last is not None:
        at_end = {w["index"]: w for w in last.workers}
        for w in warm.workers:
            e = at_end.get(w["index"])
            entry: dict[str, Any] = {"index": w["index"], "rss_kb_warmup": w.get("rss_kb")}
            if e is None or e["pid"] != w["pid"] or not w.get("rss_kb") or not e.get("rss_kb"):
                entry["note"] = "restarted or gone" if e is None or e["pid"] != w["pid"] else "n/a"
                holds = False
            else:
                pct = 100.0 * (e["rss_kb"] - w["rss_kb"]) / w["rss_kb"]
                entry |= {"rss_kb_end": e["rss_kb"], "growth_pct": round(pct, 2)}
                holds = holds and pct <= growth_pct
            rss["workers"].append(entry)
        holds = holds and len(at_end) == len(warm.workers)
    rss["holds"] = holds
    if last is not None and last is warm:
        rss["note"] = "the run has no minute after the warm-up one"
    end = samples[-1] if samples else None
    totals = end.totals if end else {}
    completed = {f: totals.get(f"uac_{f}", {}).get("successful", 0) for f in FLOWS}
    failed = {p: t.get("failed", 0) for p, t in totals.items()}
    calls = {
        "failed": failed,
        "completed": completed,
        "expected": expected,
        "retransmissions": {p: t.get("retransmissions", 0) for p, t in totals.items()},
        "holds": bool(totals) and not any(failed.values()) and completed == expected,
    }
    tables = dict(drain) | {"holds": bool(drain.get("drained"))}
    return {
        "rss_flat": rss,
        "no_failed_calls": calls,
        "tables_drained": tables,
        "holds": rss["holds"] and calls["holds"] and tables["holds"],
    }


def format_report(samples: list[Sample], result: dict[str, Any]) -> str:
    lines = [text_table([HEADER, *(row_cells(s) for s in samples)])]
    rss = result["rss_flat"]
    parts = [
        f"worker {w['index']}: {_mb(w.get('rss_kb_warmup'))} -> {_mb(w.get('rss_kb_end'))} MB"
        + (f" ({w['growth_pct']:+.1f} %)" if "growth_pct" in w else f" ({w.get('note')})")
        for w in rss["workers"]
    ]
    lines.append(
        f"RSS flat after warm-up (minute {rss['warmup_minute']} to the last, "
        f"<= {rss['limit_pct']:g} %): {_holds(rss['holds'])}; " + ("; ".join(parts) or "no data")
        + (f" [{rss['note']}]" if rss.get("note") else "")
    )
    calls = result["no_failed_calls"]
    lines.append(
        "zero failed calls at every peer: " + _holds(calls["holds"]) + "; failed "
        + ", ".join(f"{p} {n}" for p, n in calls["failed"].items())
        + "; completed " + ", ".join(
            f"{f} {n} of {calls['expected'][f]}" for f, n in calls["completed"].items())
    )  # fmt: skip
    tables = result["tables_drained"]
    lines.append(
        f"tables back to 0 after the load: {_holds(tables['holds'])} "
        f"({tables.get('seconds')} s: {tables.get('tables')})"
    )
    lines.append(f"verdict: {_holds(result['holds'])}")
    return "\n".join(lines)


def _holds(value: bool) -> str:
    return "holds" if value else "DOES NOT HOLD"


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soak.py",
        description=(
            "Soak of the relay on loopback: ok, failover and 603 calls at once for --minutes "
            "at --rate; each minute the workers' RSS and fds, the tables, the calls failed at "
            "every peer and the retransmissions; a verdict at the end."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, metavar="N", help="length of the load [30]")
    parser.add_argument(
        "--knee", type=positive_int, metavar="CPS",
        help="the relay's knee, calls/s (tools/bench_calls.py) [800]",
    )  # fmt: skip
    parser.add_argument(
        "--rate", type=positive_int, metavar="CPS", help="calls/s offered in all [knee/2]"
    )
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="relay.workers [the config's 0: one per core]",
    )  # fmt: skip
    parser.add_argument(
        "--steering", choices=("auto", "on", "off"), default=None,
        help="relay.steering [the config's auto]",
    )  # fmt: skip
    parser.add_argument(
        "--interval", type=positive_int, default=60, metavar="S",
        help="seconds between two rows [60]",
    )  # fmt: skip
    parser.add_argument(
        "--warmup-min", type=positive_int, metavar="N",
        help="the minute RSS growth is measured from [3, or 10 %% of the run if less]",
    )  # fmt: skip
    parser.add_argument(
        "--growth", type=float, default=5.0, metavar="PCT",
        help="RSS growth allowed after the warm-up, %% [5]",
    )  # fmt: skip
    parser.add_argument(
        "--drain", type=positive_int, default=40, metavar="S",
        help="seconds the tables have to get back to 0 after the load [40]",
    )  # fmt: skip
    add_anchor_arguments(parser, "soak", "relay .10, switch .11, ClearIP .12, providers .13-.15")
    add_output_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_preset(args, DEFAULTS)
    if args.rate is None:
        args.rate = max(len(FLOWS), args.knee // 2)
    if args.rate < len(FLOWS):
        log(f"soak: --rate must be at least {len(FLOWS)} (one call/s a flow)")
        return 2
    anchor = (args.anchor or DEFAULT_ANCHOR).resolve()
    missing = [s for s, *_ in [*FLOWS.values(), *PROVIDERS.values()] if not (anchor / s).is_file()]
    if missing:
        log(f"soak: no {', '.join(sorted(set(missing)))} in {anchor}: give --anchor DIR")
        return 2
    if shutil.which("sipp") is None:
        log("soak: sipp not found: apt-get install sip-tester (make bootstrap does)")
        return 2
    if not args.clearipctl.exists():
        log(f"soak: no {args.clearipctl}: run `make bootstrap`")
        return 2
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = (args.out or REPO / "bench-results" / f"soak-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    warmup = args.warmup_min or warmup_minute(args.minutes)
    log(f"machine: {machine['nproc']} cpu, load {machine['loadavg_at_start'][0]:.2f}; "
        f"output: {out}")  # fmt: skip
    started = datetime.now(UTC).isoformat(timespec="seconds")
    soak = Soak(args, out, anchor)
    interrupted = None
    with sigterm_as_exit():
        try:
            soak.start()
            soak.run()
        except (KeyboardInterrupt, SystemExit) as e:
            interrupted = "interrupted" if isinstance(e, KeyboardInterrupt) else f"exit {e.code}"
        except BenchError as e:
            log(f"soak: {e}")
            interrupted = str(e)
        finally:
            soak.stop()
    expected = {f: r * round(args.minutes * 60) for f, r in soak.rates.items()}
    result = verdict(soak.samples, warmup, args.growth, soak.drain, expected)
    report = {
        "tool": "tools/soak.py",
        "started": started,
        "interrupted": interrupted,
        "machine": machine,
        "versions": versions(args.clearipctl, None),
        "output_dir": str(out),
        "settings": {
            "minutes": args.minutes,
            "rate": args.rate,
            "rates": soak.rates,
            "knee": args.knee,
            "workers": args.workers,
            "interval_s": args.interval,
            "warmup_minute": warmup,
            "growth_pct": args.growth,
            "drain_s": args.drain,
            "net": args.net,
        },
        "verdict": result,
        "samples": [asdict(s) for s in soak.samples],
        "notes": soak.notes,
    }
    text = json.dumps(report, indent=2)
    (out / "soak.json").write_text(text + "\n")
    table = format_report(soak.samples, result)
    (out / "table.txt").write_text(table + "\n")
    stream = sys.stderr if args.json == "-" else sys.stdout
    print("", file=stream)
    print(f"soak: {args.rate} calls/s ({', '.join(f'{f} {r}' for f, r in soak.rates.items())}) "
          f"for {args.minutes:g} min, {machine['nproc']} cpu, kernel {machine['kernel']}",
          file=stream)  # fmt: skip
    print(table, file=stream)
    for note in soak.notes + ([f"stopped early: {interrupted}"] if interrupted else []):
        print(f"note: {note}", file=stream)
    print(f"results: {out / 'soak.json'}", file=stream)
    write_json(args.json, text)
    if interrupted == "interrupted":
        return 130
    if interrupted and interrupted.startswith("exit "):
        return 143
    if interrupted:
        return 2
    return 0 if result["holds"] else 1


if __name__ == "__main__":
    sys.exit(main())
