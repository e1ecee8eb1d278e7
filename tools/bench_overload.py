"""Overload benchmark: the relay and Kamailio offered twice their knee, then the knee (issue 12).

Run by `make bench-overload` (arguments through `OVERLOAD_ARGS=...`); not part of `make test`
or `make bench`. The knee is not measured here: give it with --knee (tools/bench_calls.py
finds it: the "relay knee cps" of its ok flow).

The anchor harness (`../shared/bench/anchor/`, read-only) is copied to a temp dir and given one
more variant, `overload`: its ok flow (ClearIP 302 -> provider A 200 -> ACK -> BYE) with the
switch scenario tools/bench_configs/uac_switch_overload.xml, for which a 503 is a successful
end too (the switch ACKs it and would route-advance), with its own response-time counter, and
a line per call event in a log of its own (SIPp -trace_logs: INVITE sent, 200, BYE's 200,
503, with the call's number and time), so that every call's fate and response times are known.
Each proxy gets one harness run:

  * for --seconds (30) the switch offers --factor (2) x --knee calls/s;
  * then the switch's rate is set to the knee (SIPp's control socket, `cset rate`) for
    --recovery-seconds (5), to see the proxy come back.

The relay is `clearipctl run` with tools/bench_configs/anchor.toml (as bench_calls.py runs it,
fast path off, overload control at its default `limits.overload_lag`); Kamailio is started by
the harness with the anchor's kamailio.cfg (skipped, with a line saying so, when it is not
installed: `make bench-overload` installs it as `make bench` does).

Figures per proxy: calls offered; completed with 200 during the overload (calls/s and % of the
knee); refused with 503 (count and the 503's latency from the INVITE sent, p50/p99/max);
failed otherwise at any peer (timeouts, unexpected messages), with SIPp's causes;
retransmissions at each peer; the recovery step (503s or failures among the calls started after
the load dropped, the first 200 after it, and from when on every call was normal); and the
issue's targets, each said to hold or not: >= 90 % of the knee's rate completes, every excess
INVITE gets its 503 within 50 ms, normal again within 5 s after the load drops.

Figures, not assertions: the exit status is 0 whatever they say, 2 when the benchmark could not
run. Everything listens on loopback; every process started here (the relay, the harness and,
through the harness, the sipps and Kamailio) is stopped by PID, also on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench_calls import (
    DEFAULT_ANCHOR,
    HARNESS_SLACK_S,
    BenchError,
    Harness,
    Relay,
    add_anchor_arguments,
    add_proxy_arguments,
    versions,
)
from benchcommon import (
    add_output_arguments,
    apply_preset,
    log,
    machine_info,
    percentile,
    port_in_use,
    positive_int,
    sigterm_as_exit,
    sipp_epoch,
    sipp_int,
    sipp_rows,
    text_table,
    write_json,
)

REPO = Path(__file__).resolve().parent.parent
UAC_SCENARIO = REPO / "tools" / "bench_configs" / "uac_switch_overload.xml"
VARIANT = "overload"
PEERS = ("uac", "clearip", "prov_a", "prov_b")  # the harness's CSV names: switch, ClearIP, A, B
CALL_LOG = "uac_calls.log"  # the switch's per-call lines (the scenario's <log> actions)

TARGET_COMPLETED = 0.90  # of the knee's rate, during the overload
TARGET_503_MS = 50.0
TARGET_NORMAL_S = 5.0
TARGETS = ("completed >= 90% of knee", "every excess INVITE: 503 within 50 ms",
           "normal within 5 s")  # fmt: skip
NORMAL_MS = 500.0  # a normal call: 200 within T1, before the switch retransmits its INVITE

DEFAULTS = {"knee": 800, "seconds": 30, "recovery_seconds": 5}
SWITCH_WAIT_S = 60.0  # for the switch's first statistics row, once the harness started it
STATUS_SETTLE_S = 2.0  # after the run, before the relay's figures

# The `overload` variant, patched into the copy of run_anchor.sh: (what is there, what it
# becomes); each must be found exactly once, or the harness has changed and we stop.
PATCHES = (
    (
        '\t*) echo "unknown variant $VARIANT" >&2; exit 2 ;;\n',
        "\toverload) UAC_XML=uac_switch_overload.xml; CI_XML=uas_clearip_302.xml; "
        "A_XML=uas_provider_ok.xml ;;\n"
        '\t*) echo "unknown variant $VARIANT" >&2; exit 2 ;;\n',
    ),
    (
        'logcmd "${UAC_CMD[@]}"\n',
        '[ "$VARIANT" = overload ] && UAC_CMD+=(-trace_logs -log_file "$OUTDIR/uac_calls.log" '
        '-ci "$SWITCH_IP" -cp "${UAC_CTRL_PORT:?}")\n'
        'logcmd "${UAC_CMD[@]}"\n',
    ),
)

EPILOG = f"""\
the run, per proxy (the relay, then Kamailio):
  one harness run of the `overload` variant: --factor x --knee calls/s for --seconds s,
  then --knee calls/s for --recovery-seconds s (SIPp's rate changed through its control
  socket at --seconds after the switch started). The knee is taken as given: measure it
  first with tools/bench_calls.py (its "relay knee cps", ok flow). --kamailio-knee gives
  Kamailio a knee of its own (default: the same offered load as the relay).

figures: the switch's per-call log says when each call was sent, answered 200 or 503, and
  ended; a call "of the overload" was sent before the rate change, "of the recovery" after.
  A call with neither the BYE's 200 nor a 503 failed (the switch's Failed* counters say why).
  200s received during overload: the proxy's throughput, 200s that came back before the
  rate change, per second of overload. Failures at ClearIP, A and B cannot be tied to a
  switch call: they count by when SIPp recorded them. A normal call: answered 200 within
  --normal-ms and completed. Recovery clean: no 503 and no failed call among the recovery's
  calls, and no failure recorded at ClearIP, A or B after the change. Times come from SIPp's
  clock (CLOCK_MONOTONIC_COARSE: a few ms a step), hence latencies such as 0.0 or 4.0 ms.

targets (issue 12), each printed as holds / DOES NOT HOLD:
  {TARGETS[0]:<38} 200s received during overload >= {TARGET_COMPLETED:.0%} of the
  {"":<38} knee's rate
  {TARGETS[1]:<38} no failed call at any peer, and no 503 later than
  {"":<38} {TARGET_503_MS:g} ms after its INVITE
  {TARGETS[2]:<38} the last call of the recovery that was not normal
  {"":<38} was sent within {TARGET_NORMAL_S:g} s of the change, and normal calls
  {"":<38} followed it ("every call normal from": when it was sent)

output: progress on stderr; the table on stdout (on stderr with --json -); under --out
  (default bench-results/overload-<time>/): results.json, table.txt, the relay's config and
  log, runs/<step>/ with every sipp's CSV and error log and the switch's per-call log
  (uac_calls.log), and the patched harness (anchor/).

examples:
  make bench-overload OVERLOAD_ARGS="--knee 900"
  .venv/bin/python tools/bench_overload.py --knee 300 --seconds 8 --no-kamailio
  .venv/bin/python tools/bench_overload.py --knee 900 --kamailio-knee 1500 --json -

defaults: --knee {DEFAULTS["knee"]} --seconds {DEFAULTS["seconds"]} \
--recovery-seconds {DEFAULTS["recovery_seconds"]} --factor 2
"""


# ---------------------------------------------------------------------------------------------
# The harness copy


def prepare_anchor(source: Path, dest: Path) -> Path:
    """A private copy of the anchor with the overload variant and its switch scenario."""
    anchor = dest / "anchor"
    shutil.copytree(source, anchor, ignore=shutil.ignore_patterns("runs", "results.tsv"))
    for path in anchor.iterdir():  # the source is read-only, so is the copy
        path.chmod(0o755 if path.suffix == ".sh" else 0o644)
    shutil.copy(UAC_SCENARIO, anchor / UAC_SCENARIO.name)
    script = anchor / "run_anchor.sh"
    text = script.read_text()
    for before, after in PATCHES:
        if text.count(before) != 1:
            raise BenchError(
                f"{source / 'run_anchor.sh'}: expected one {before.strip()!r}, found "
                f"{text.count(before)}: the harness changed; update PATCHES in bench_overload.py"
            )
        text = text.replace(before, after)
    script.write_text(text)
    return anchor


class RateSwitch(threading.Thread):
    """Sets the switch's rate to the knee --seconds after it started: waits for the harness to
    start the step, then for the first row of the switch's statistics (its StartTime), then
    sends `cset rate N` to its control socket. Every wait is bounded and ends on `cancel`."""

    def __init__(
        self, harness: Harness, steps_before: int, control: tuple[str, int], at_s: float,
        rate: int, bound_s: float,
    ) -> None:  # fmt: skip
        super().__init__(name="rate-switch", daemon=True)
        self.harness = harness
        self.steps_before = steps_before
        self.control = control
        self.at_s = at_s
        self.rate = rate
        self.deadline = time.monotonic() + bound_s
        self.cancel = threading.Event()
        self.started_epoch: float | None = None  # the switch's StartTime
        self.sent_epoch: float | None = None
        self.error = ""

    def _wait_for(self, what: str, ready: Any) -> Any:
        while not self.cancel.is_set() and time.monotonic() < self.deadline:
            value = ready()
            if value:
                return value
            self.cancel.wait(0.02)
        self.error = self.error or f"gave up waiting for {what}"
        return None

    def run(self) -> None:
        harness = self.harness
        outdir = self._wait_for(
            "the harness step",
            lambda: harness.steps[-1].outdir if len(harness.steps) > self.steps_before else None,
        )
        if outdir is None:
            return
        row = self._wait_for(
            "the switch's statistics", lambda: sipp_rows(Path(outdir) / "uac.csv", True)
        )
        if not row or (start := sipp_epoch(row[0])) is None:
            return
        self.started_epoch = start
        while not self.cancel.is_set() and (left := start + self.at_s - time.time()) > 0:
            self.cancel.wait(min(left, 0.5))
        if self.cancel.is_set():
            self.error = "the step ended before the rate change"
            return
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(f"cset rate {self.rate}".encode(), self.control)
        self.sent_epoch = time.time()


# ---------------------------------------------------------------------------------------------
# Figures of one run


@dataclass
class Figures:
    proxy: str
    knee: int
    overload_rate: int
    outdir: str = ""
    error: str = ""
    summary_line: str = ""
    overload_s: float | None = None  # switch start -> rate change
    switch_started: float | None = None  # Unix time: the switch's StartTime
    rate_changed: float | None = None  # Unix time the `cset rate` was sent
    offered: int = 0
    offered_overload: int | None = None
    offered_recovery: int | None = None
    completed_overload: int = 0  # 200s received during the overload (its throughput)
    completed_of_overload_calls: int = 0  # calls sent during it that got a 200, even later
    completed_per_s: float | None = None
    completed_pct_of_knee: float | None = None
    refused_overload: int = 0
    refused_ms: dict[str, float | None] = field(default_factory=dict)  # p50/p99/max, n over 50
    refused_over_50ms: int = 0
    failed_overload: int = 0  # the switch's calls sent during the overload that failed
    answered_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)  # per peer
    failure_causes: dict[str, int] = field(default_factory=dict)  # the switch's Failed*(C)
    retransmissions: dict[str, int] = field(default_factory=dict)
    recovery: dict[str, Any] = field(default_factory=dict)
    relay: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, bool | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _pcts(values: list[float]) -> dict[str, float | None]:
    values = sorted(values)
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": values[-1] if values else None,
    }


@dataclass
class Call:
    """One call of the switch, from its log lines: times in ms since the switch started."""

    sent: float
    answered: float | None = None  # the 200
    ended: float | None = None  # the BYE's 200
    refused: float | None = None  # the 503

    @property
    def failed(self) -> bool:
        return self.ended is None and self.refused is None

    def normal(self, normal_ms: float) -> bool:
        return (
            self.ended is not None
            and self.answered is not None
            and self.answered - self.sent <= normal_ms
        )


def read_calls(path: Path) -> list[Call]:
    """The switch's calls, in the order they were sent, from its -trace_logs lines
    (S, A, E, R;call number;clock tick)."""
    events: dict[int, dict[str, float]] = {}
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        for line in f:
            parts = line.strip().split(";")
            if len(parts) == 3 and parts[0] in ("S", "A", "E", "R"):
                with contextlib.suppress(ValueError):
                    events.setdefault(int(parts[1]), {})[parts[0]] = float(parts[2])
    return [
        Call(e["S"], e.get("A"), e.get("E"), e.get("R"))
        for _, e in sorted(events.items())
        if "S" in e
    ]


def analyse(fig: Figures, outdir: Path, switch: RateSwitch, normal_ms: float) -> None:
    """Fill `fig` from the step's files (the sipps' CSVs, the switch's per-call log) and the
    time of the rate change (`switch`)."""
    rows = {peer: sipp_rows(outdir / f"{peer}.csv") for peer in PEERS}
    uac = rows["uac"]
    if not uac:
        fig.error = fig.error or "the switch wrote no statistics"
        return
    last = {peer: (r[-1] if r else {}) for peer, r in rows.items()}
    fig.offered = sipp_int(last["uac"], "TotalCallCreated")
    fig.failed = {peer: sipp_int(last[peer], "FailedCall(C)") for peer in PEERS}
    fig.retransmissions = {peer: sipp_int(last[peer], "Retransmissions(C)") for peer in PEERS}
    fig.failure_causes = {
        k.removesuffix("(C)"): sipp_int(last["uac"], k)
        for k in last["uac"]
        if k.startswith("Failed") and k.endswith("(C)") and k != "FailedCall(C)"
        if sipp_int(last["uac"], k)
    }
    start = sipp_epoch(uac[0])
    fig.switch_started, fig.rate_changed = start, switch.sent_epoch
    if switch.sent_epoch is None or start is None:
        fig.notes.append(f"no rate change ({switch.error or 'not sent'}): no recovery figures")
        change_ms = float("inf")  # every call is of the overload
        overload_s = _elapsed_s(uac, start)
    else:
        change_ms = (switch.sent_epoch - start) * 1000.0
        overload_s = fig.overload_s = round(change_ms / 1000.0, 2)
    calls = read_calls(outdir / CALL_LOG)
    if len(calls) != fig.offered:
        fig.notes.append(f"the switch's call log has {len(calls)} calls of {fig.offered}")
    overload = [c for c in calls if c.sent < change_ms]
    recovery = [c for c in calls if c.sent >= change_ms]
    fig.offered_overload, fig.offered_recovery = len(overload), len(recovery)
    busy = sorted(c.refused - c.sent for c in overload if c.refused is not None)
    fig.completed_overload = sum(
        1 for c in calls if c.answered is not None and c.answered < change_ms
    )  # answered before the change, whenever sent: the proxy's throughput
    fig.completed_of_overload_calls = sum(1 for c in overload if c.ended is not None)
    fig.refused_overload = len(busy)
    fig.refused_ms = _pcts(busy)
    fig.refused_over_50ms = sum(1 for ms in busy if ms > TARGET_503_MS)
    fig.failed_overload = sum(1 for c in overload if c.failed)
    fig.answered_ms = {
        phase: _pcts([c.answered - c.sent for c in group if c.answered is not None])
        for phase, group in (("overload", overload), ("recovery", recovery))
    }
    if overload_s:
        fig.completed_per_s = round(fig.completed_overload / overload_s, 1)
        fig.completed_pct_of_knee = round(100.0 * fig.completed_per_s / fig.knee, 1)
    fig.targets[TARGETS[0]] = (
        None if fig.completed_pct_of_knee is None
        else fig.completed_pct_of_knee >= 100.0 * TARGET_COMPLETED
    )  # fmt: skip
    fig.targets[TARGETS[1]] = (
        bool(overload) and sum(fig.failed.values()) == 0 and fig.refused_over_50ms == 0
    )
    fig.targets[TARGETS[2]] = None
    if overload and not busy and not fig.failed_overload:
        fig.notes.append("no call of the overload was refused or failed: the proxy took them "
                         "all (is the knee given below its real one?)")  # fmt: skip
    if fig.overload_s is None or start is None:
        return
    uas_after = {
        peer: sum(
            sipp_int(r, "FailedCall(P)")
            for r in rows[peer]
            if (t := sipp_epoch(r, "CurrentTime")) is not None and (t - start) * 1e3 > change_ms
        )
        for peer in PEERS[1:]
    }
    refused = [c for c in recovery if c.refused is not None]
    failed = [c for c in recovery if c.failed]
    # the last recovery call that was not normal (503, failed, or a 200 later than normal_ms)
    normal_from = max((c.sent for c in recovery if not c.normal(normal_ms)), default=change_ms)
    followed = [c for c in recovery if c.sent > normal_from]
    first_ok = min((c.answered for c in recovery if c.answered is not None), default=None)
    fig.recovery = {
        "offered": len(recovery),
        "refused_503": len(refused),
        "failed": len(failed),
        "completed": sum(1 for c in recovery if c.ended is not None),
        "slow_200": sum(
            1 for c in recovery if c.answered is not None and c.answered - c.sent > normal_ms
        ),
        "uas_failed_after_change": uas_after,
        "clean": bool(recovery) and not refused and not failed and not any(uas_after.values()),
        "first_200_after_s": None if first_ok is None else round((first_ok - change_ms) / 1e3, 3),
        "normal_after_s": round((normal_from - change_ms) / 1e3, 3) if followed else None,
    }
    fig.targets[TARGETS[2]] = (
        bool(followed) and normal_from - change_ms <= TARGET_NORMAL_S * 1000.0
    )


def _elapsed_s(rows: list[dict[str, str]], start: float | None) -> float | None:
    end = sipp_epoch(rows[-1], "CurrentTime") if rows else None
    return None if end is None or start is None else end - start


# ---------------------------------------------------------------------------------------------
# The run


class Overload:
    def __init__(self, args: argparse.Namespace, out: Path, anchor: Path) -> None:
        self.args = args
        self.out = out
        net = args.net
        self.switch_ip = f"{net}.11"
        env = {
            "PROXY_IP": f"{net}.10", "SWITCH_IP": self.switch_ip, "CLEARIP_IP": f"{net}.12",
            "PROV_A_IP": f"{net}.13", "PROV_B_IP": f"{net}.14",
            "UAC_CTRL_PORT": str(args.ctl_port),
        }  # fmt: skip
        self.harness = Harness(anchor, out, env, zero_retrans=False)
        self.relay: Relay | None = None
        self.results: dict[str, dict[str, Any]] = {}

    def run_one(self, proxy: str, knee: int) -> Figures:
        args = self.args
        high = round(knee * args.factor)
        fig = Figures(proxy, knee, high)
        busy = port_in_use((self.switch_ip, args.ctl_port))
        if busy:
            fig.error = f"the switch's control port is taken ({busy}): give --ctl-port"
            return fig
        calls = high * args.seconds + knee * args.recovery_seconds
        seconds = args.seconds + args.recovery_seconds
        before: dict[str, Any] = {}
        if proxy == "relay":
            assert self.relay is not None
            before = self.relay.status() or {}  # also zeroes the workers' lag_ms_max
        switch = RateSwitch(
            self.harness, len(self.harness.steps), (self.switch_ip, args.ctl_port),
            float(args.seconds), knee, seconds + HARNESS_SLACK_S,
        )  # fmt: skip
        log(
            f"[{proxy}] {high} calls/s for {args.seconds} s, then {knee} calls/s for "
            f"{args.recovery_seconds} s ({calls} calls) ..."
        )
        switch.start()
        try:
            step = self.harness.run(
                proxy, VARIANT, "overload", high, seconds,
                self.relay.pid if self.relay else None, calls=calls,
            )  # fmt: skip
        finally:
            switch.cancel.set()
            switch.join(timeout=5.0)
        outdir = Path(step.outdir)
        fig.outdir = str(outdir)
        fig.summary_line = step.line
        if not step.line:
            fig.error = step.error or f"run_anchor.sh exit status {step.rc}"
        if proxy == "relay" and self.relay is not None and self.relay.alive():
            time.sleep(STATUS_SETTLE_S)
            fig.relay = relay_figures(before, self.relay.status() or {})
        elif proxy == "relay":
            fig.notes.append("the relay was not running after the step")
        analyse(fig, outdir, switch, args.normal_ms)
        log(f"  {step.line or fig.error}")
        return fig

    def run(self, kamailio: str | None) -> None:
        args = self.args
        if not args.kamailio_only:
            self.relay = Relay(
                args.clearipctl, self.out, args.workers, net=args.net, steering=args.steering
            )
            try:
                self.relay.start()
                self.results["relay"] = asdict(self.run_one("relay", args.knee))
            except BenchError as e:
                self.results["relay"] = {"proxy": "relay", "error": str(e)}
                log(f"[relay] aborted: {e}")
            finally:
                self.relay.cleanup()
                self.relay = None
        if kamailio:
            knee = args.kamailio_knee or args.knee
            self.results["kamailio"] = asdict(self.run_one("kamailio", knee))


def relay_figures(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the relay says of the run: 503s of its overload control, the times it fell behind,
    its worst event-loop lag, the tables after the run, worker restarts."""

    def delta(table: str, key: str) -> int | None:  # a table or key not there yet: 0
        b, a = (before.get(table) or {}).get(key), (after.get(table) or {}).get(key)
        return None if not after else int(a or 0) - int(b or 0)

    overload = after.get("overload") or {}
    return {
        "refused_overload": delta("drops", "overload"),
        "refused_transaction_limit": delta("drops", "transaction_limit"),
        "overload_periods": delta("counters", "overload_periods"),
        "lag_ms_max": overload.get("lag_ms_max"),
        "overload_active_after": overload.get("active"),
        "transactions_after": after.get("transactions"),
        "workers_restarted": after.get("workers_restarted"),
        "calls_lost": after.get("calls_lost"),
    }


# ---------------------------------------------------------------------------------------------
# Report


def _num(value: Any, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _holds(value: bool | None) -> str:
    return "n/a" if value is None else ("holds" if value else "DOES NOT HOLD")


def _lat(table: dict[str, Any] | None) -> str:
    t = table or {}
    return " / ".join(_num(t.get(q), ".1f") for q in ("p50", "p99", "max"))


def _peers(counts: dict[str, int]) -> str:
    return "/".join(str(counts.get(p, "-")) for p in PEERS)


# (label, the cell of one proxy's figures); a KeyError or a missing table shows "-"
ROWS: tuple[tuple[str, Any], ...] = (
    ("knee given / offered at", lambda f: f"{f['knee']} / {f['overload_rate']} calls/s"),
    ("overload lasted", lambda f: f"{_num(f['overload_s'], '.1f')} s"),
    ("calls offered (overload + recovery)", lambda f: (
        f"{f['offered']} ({_num(f['offered_overload'])} + {_num(f['offered_recovery'])})")),
    ("200s received during overload", lambda f: (
        f"{f['completed_overload']} ({_num(f['completed_per_s'])}/s, "
        f"{_num(f['completed_pct_of_knee'], '.1f')} % of knee)")),
    ("its calls completed (200, BYE) in the end", lambda f: (
        str(f["completed_of_overload_calls"]))),
    ("its calls refused 503 / failed", lambda f: (
        f"{f['refused_overload']} / {f['failed_overload']}")),
    ("503 latency p50 / p99 / max ms", lambda f: _lat(f["refused_ms"])),
    ("503 later than 50 ms", lambda f: str(f["refused_over_50ms"])),
    ("200 latency p50 / p99 / max ms, overload", lambda f: _lat(f["answered_ms"]["overload"])),
    ("200 latency p50 / p99 / max ms, recovery", lambda f: _lat(f["answered_ms"]["recovery"])),
    ("failed otherwise switch/ClearIP/A/B", lambda f: _peers(f["failed"])),
    ("switch's failure causes", lambda f: ", ".join(
        f"{k.removeprefix('Failed')} {v}" for k, v in f["failure_causes"].items()) or "-"),
    ("retransmissions switch/ClearIP/A/B", lambda f: _peers(f["retransmissions"])),
    ("recovery: calls / 503 / failed / slow 200", lambda f: " / ".join(
        str(f["recovery"][k]) for k in ("offered", "refused_503", "failed", "slow_200"))),
    ("recovery: failed at ClearIP/A/B after", lambda f: "/".join(
        str(v) for v in f["recovery"]["uas_failed_after_change"].values())),
    ("recovery clean", lambda f: "yes" if f["recovery"]["clean"] else "NO"),
    ("first 200 after the load dropped", lambda f: (
        f"{_num(f['recovery']['first_200_after_s'], '.2f')} s")),
    ("every call normal from", lambda f: "never" if f["recovery"]["normal_after_s"] is None
        else f"{f['recovery']['normal_after_s']:.2f} s after"),
    ("relay: 503 Overloaded / periods / max lag", lambda f: (
        f"{_num(f['relay']['refused_overload'])} / {_num(f['relay']['overload_periods'])} / "
        f"{_num(f['relay']['lag_ms_max'])} ms")),
    *((f"target: {t}", lambda f, t=t: _holds(f["targets"].get(t))) for t in TARGETS),
)  # fmt: skip


def format_table(results: dict[str, dict[str, Any]]) -> str:
    proxies = [p for p in ("relay", "kamailio") if p in results]
    rows = [["", *proxies]]
    for label, cell in ROWS:
        cells = []
        for proxy in proxies:
            try:
                cells.append(cell(results[proxy]))
            except (KeyError, TypeError):
                cells.append("-")
        rows.append([label, *cells])
    errors = [f"{p}: {results[p]['error']}" for p in proxies if results[p].get("error")]
    return text_table(rows) + "".join(f"\nerror ({e.splitlines()[0]})" for e in errors)


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_overload.py",
        description=(
            "Overload benchmark on the SIPp anchor: the relay (and Kamailio) offered --factor "
            "x --knee calls/s for --seconds, then the knee for --recovery-seconds; what "
            "completes, what gets its 503 and how fast, what fails, and how soon calls are "
            "normal again."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--knee", type=positive_int, metavar="CPS",
        help="the relay's knee, calls/s, as tools/bench_calls.py measures it (ok flow) "
        f"[{DEFAULTS['knee']}]",
    )  # fmt: skip
    parser.add_argument(
        "--kamailio-knee", type=positive_int, metavar="CPS",
        help="Kamailio's own knee [the same offered load as the relay: --knee]",
    )  # fmt: skip
    parser.add_argument(
        "--factor", type=float, default=2.0, metavar="X",
        help="the overload: X times the knee [2]",
    )  # fmt: skip
    parser.add_argument(
        "--seconds", type=positive_int, metavar="N", help="length of the overload, s [30]"
    )
    parser.add_argument(
        "--recovery-seconds", type=positive_int, metavar="N",
        help="then the knee's rate for this long, s [5]",
    )  # fmt: skip
    parser.add_argument(
        "--normal-ms", type=float, default=NORMAL_MS, metavar="MS",
        help="a normal call is answered 200 within this [500: T1, before the switch "
        "retransmits its INVITE]",
    )  # fmt: skip
    add_proxy_arguments(parser)
    parser.add_argument(
        "--ctl-port", type=positive_int, default=8887, metavar="PORT",
        help="UDP port of the switch sipp's control socket, on the switch's address [8887]",
    )  # fmt: skip
    add_anchor_arguments(
        parser, "overload", "proxy .10, switch .11, ClearIP .12, A .13, B .14"
    )
    add_output_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_preset(args, DEFAULTS)
    source = (args.anchor or DEFAULT_ANCHOR).resolve()
    if not (source / "run_anchor.sh").is_file():
        log(f"bench_overload: no anchor harness at {source} (run_anchor.sh): give --anchor DIR")
        return 2
    if shutil.which("sipp") is None:
        log("bench_overload: sipp not found: apt-get install sip-tester (make bootstrap does)")
        return 2
    kamailio = None if args.no_kamailio else shutil.which("kamailio")
    notes: list[str] = []
    if not args.no_kamailio and kamailio is None:
        notes.append("Kamailio skipped: kamailio is not installed (make bench-overload "
                     "installs it: apt-get install kamailio)")  # fmt: skip
        log(f"bench_overload: {notes[-1]}")
        if args.kamailio_only:
            return 2
    if not args.kamailio_only and not args.clearipctl.exists():
        log(f"bench_overload: no {args.clearipctl}: run `make bootstrap`")
        return 2
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = (args.out or REPO / "bench-results" / f"overload-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    vers = versions(args.clearipctl, kamailio)
    log(f"machine: {machine['nproc']} cpu, load {machine['loadavg_at_start'][0]:.2f}; "
        f"output: {out}")  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="clearip-overload-"))
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    interrupted = None
    bench: Overload | None = None
    with sigterm_as_exit():
        try:
            anchor = prepare_anchor(source, tmp)
            shutil.copytree(anchor, out / "anchor", dirs_exist_ok=True)
            bench = Overload(args, out, anchor)
            bench.run(kamailio)
        except (KeyboardInterrupt, SystemExit) as e:
            interrupted = "interrupted" if isinstance(e, KeyboardInterrupt) else f"exit {e.code}"
        except BenchError as e:
            log(f"bench_overload: {e}")
            interrupted = str(e)
        finally:
            if bench is not None:
                bench.harness.stop_child()
                if bench.relay is not None:
                    bench.relay.cleanup()
            shutil.rmtree(tmp, ignore_errors=True)
    results = bench.results if bench is not None else {}
    if any("in use" in (r.get("error") or "") for r in results.values()):
        notes.append("an address of the run is taken: --net A.B.C (e.g. 127.0.1) moves them all")
    report = {
        "tool": "tools/bench_overload.py",
        "started": started,
        "duration_s": round(time.monotonic() - t0, 1),
        "interrupted": interrupted,
        "machine": machine,
        "versions": vers,
        "anchor": str(source),
        "output_dir": str(out),
        "settings": {
            "knee": args.knee,
            "kamailio_knee": args.kamailio_knee or args.knee,
            "factor": args.factor,
            "seconds": args.seconds,
            "recovery_seconds": args.recovery_seconds,
            "workers": args.workers,
            "net": args.net,
        },
        "targets": {
            "normal_ms": args.normal_ms,
            "completed_fraction_of_knee": TARGET_COMPLETED,
            "refused_within_ms": TARGET_503_MS,
            "normal_within_s": TARGET_NORMAL_S,
        },
        "proxies": results,
        "notes": notes,
    }
    text = json.dumps(report, indent=2)
    (out / "results.json").write_text(text + "\n")
    table = format_table(results) if results else "(no results)"
    (out / "table.txt").write_text(table + "\n")
    stream = sys.stderr if args.json == "-" else sys.stdout
    print("", file=stream)
    print(f"machine: {machine['nproc']} cpu, {machine['cpu_model']}, kernel {machine['kernel']}",
          file=stream)  # fmt: skip
    print("versions: " + "; ".join(f"{k}: {v or 'n/a'}" for k, v in vers.items()), file=stream)
    print(table, file=stream)
    for figures in results.values():
        for note in figures.get("notes") or []:
            print(f"note ({figures['proxy']}): {note}", file=stream)
    for note in notes:
        print(f"note: {note}", file=stream)
    print(f"results: {out / 'results.json'}", file=stream)
    write_json(args.json, text)
    if interrupted == "interrupted":
        return 130
    if interrupted and interrupted.startswith("exit "):
        return 143
    return 2 if interrupted else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
