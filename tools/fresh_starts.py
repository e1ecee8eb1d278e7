"""Fresh starts: N starts of `clearipctl run` from nothing, each must be ready and stop cleanly.

Issue 12: with a fresh state_dir and the default TLS listener, both workers made the
self-signed certificate at once and one could load the certificate of one file version with
the key of another (`[X509: KEY_VALUES_MISMATCH]`), and the proxy exited: 9 of about 40 fresh
starts failed. This loop shows whether that is gone.

Each start, one after the other:
  * a network namespace of its own (`ip netns add`, loopback up with 127.0.0.1 and
    192.0.2.10/24), so that the default 0.0.0.0 listeners (UDP and TCP 5060, TLS 5061) and
    the metrics port clash with nothing; deleted afterwards, also on failure or Ctrl-C;
  * a new, empty state_dir and a config that sets only the control socket, the state_dir and
    `relay.workers = 0` (one worker per core): every other setting is the default, the
    listeners and TLS certificate (made at first start) included; --fastpath off leaves the
    kernel fast path out (default: its default, auto);
  * `ip netns exec NS clearipctl run --config FILE`, then the control socket is asked for
    `status` every 0.1 s: ready when every worker is alive and ready and the listeners
    include udp, tcp and tls, within --ready-timeout (15 s);
  * the certificate the proxy made must load with its key (Python's ssl, the check that
    failed with KEY_VALUES_MISMATCH);
  * SIGTERM; it must exit with status 0 within --stop-timeout (15 s). Anything left in the
    namespace is then killed by PID (and counted as a failure).

Printed: how many of N were ready (and stopped cleanly), the time to ready (p50/max), and the
log tail of every failed start. Exit status 0 when all N passed, 1 when any failed, 2 when the
loop could not run (not root, no `ip`). Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchcommon import (
    add_output_arguments,
    apply_preset,
    control_request,
    log,
    machine_info,
    percentile,
    positive_int,
    sigterm_as_exit,
    stop_process,
    text_table,
    write_json,
)

CERT = "tls/self-signed.pem"  # certificate and key, in the state_dir (clearip.tlscert)
NS_ADDRESS = "192.0.2.10/24"  # TEST-NET-1, on the namespace's loopback
POLL_S = 0.1
LOG_TAIL = 1500
IP_TIMEOUT_S = 10.0

EPILOG = """\
a start passes when: the control socket answers `status` with every worker alive and ready
  (as many as relay.workers = 0 gives: one per core) and udp, tcp and tls listeners, within
  --ready-timeout; the self-signed certificate loads with its key; after SIGTERM the proxy
  exits with status 0 within --stop-timeout and leaves no process in its namespace.

examples:
  .venv/bin/python tools/fresh_starts.py                 # 50 starts
  .venv/bin/python tools/fresh_starts.py -n 10 --json -
  .venv/bin/python tools/fresh_starts.py -n 100 --fastpath off --out /tmp/fresh

output: a line per start on stderr; the summary (and failures' log tails) on stdout, on
  stderr with --json -. With --out DIR every start's config and log are kept there.
"""


@dataclass
class Start:
    index: int
    namespace: str
    ready: bool = False
    ready_s: float | None = None
    workers: int | None = None
    listeners: list[str] = field(default_factory=list)
    cert_ok: bool | None = None
    exit_status: int | None = None
    stop_s: float | None = None
    leftovers: list[int] = field(default_factory=list)
    error: str = ""
    log_tail: str = ""

    @property
    def passed(self) -> bool:
        return (
            self.ready and bool(self.cert_ok) and self.exit_status == 0 and not self.leftovers
        )


def _ip(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *argv], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
    )


def netns_pids(namespace: str) -> list[int]:
    done = _ip("netns", "pids", namespace)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def make_netns(namespace: str) -> None:
    for argv in (
        ("netns", "add", namespace),
        ("-n", namespace, "link", "set", "lo", "up"),
        ("-n", namespace, "addr", "add", NS_ADDRESS, "dev", "lo"),
    ):
        done = _ip(*argv)
        if done.returncode != 0:
            raise RuntimeError(f"ip {' '.join(argv)}: {done.stderr.strip()}")


def delete_netns(namespace: str) -> list[int]:
    """Kill what is left in the namespace (our processes, by PID), then delete it. Returns
    the PIDs that were left."""
    left = netns_pids(namespace)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while netns_pids(namespace) and time.monotonic() < deadline:
        time.sleep(0.05)
    done = _ip("netns", "del", namespace)
    if done.returncode != 0:
        log(f"fresh_starts: ip netns del {namespace}: {done.stderr.strip()}")
    return left


def write_config(root: Path, workers: int, fastpath: str | None) -> Path:
    (root / "state").mkdir(mode=0o750)
    lines = [
        "[relay]",
        f"workers = {workers}",
        "",
        "[control]",
        f'socket = "{root / "ctl.sock"}"',
        f'state_dir = "{root / "state"}"',
    ]
    if fastpath is not None:
        lines += ["", "[fastpath]", f'enabled = "{fastpath}"']
    config = root / "proxy.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def readiness(status: Any, expected_workers: int) -> tuple[bool, int, list[str]]:
    workers = status.get("workers") or [] if isinstance(status, dict) else []
    listeners = sorted(
        {str(lst.get("transport")) for lst in (status.get("listeners") or [])}
        if isinstance(status, dict)
        else set()
    )
    ready = (
        len(workers) == expected_workers
        and all(w.get("alive") and w.get("ready") for w in workers)
        and {"udp", "tcp", "tls"} <= set(listeners)
    )
    return ready, len(workers), listeners


def cert_loads(path: Path) -> tuple[bool, str]:
    """The proxy's self-signed certificate and its key, loaded together as a TLS server does."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(path))
    except (OSError, ssl.SSLError) as e:
        return False, f"{path}: {e}"
    return True, ""


def one_start(index: int, args: argparse.Namespace, root: Path, expected: int) -> Start:
    namespace = f"cip-fresh-{os.getpid()}-{index}"
    start = Start(index, namespace)
    config = write_config(root, args.workers, None if args.fastpath == "auto" else "off")
    logfile = root / "clearip.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        make_netns(namespace)
        t0 = time.monotonic()
        with open(logfile, "wb") as stream:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", namespace, str(args.clearipctl), "run",
                 "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=stream, stderr=subprocess.STDOUT,
                process_group=0,
            )  # fmt: skip
        last = "no answer yet"
        while time.monotonic() - t0 < args.ready_timeout:
            if proc.poll() is not None:
                last = f"exited with status {proc.returncode} before it was ready"
                break
            try:
                status = control_request(str(root / "ctl.sock"), "status", timeout=2.0)
            except Exception as e:  # ControlError until the socket answers
                last = str(e) or type(e).__name__
            else:
                ready, start.workers, start.listeners = readiness(status, expected)
                if ready:
                    start.ready, start.ready_s = True, round(time.monotonic() - t0, 3)
                    break
                last = f"{start.workers} workers, listeners {start.listeners}: not ready"
            time.sleep(POLL_S)
        if not start.ready:
            start.error = f"not ready within {args.ready_timeout:g} s: {last}"
        start.cert_ok, why = cert_loads(root / "state" / CERT)
        if not start.cert_ok and start.ready:
            start.error = why
        t1 = time.monotonic()
        start.exit_status = stop_process(proc, args.stop_timeout)
        start.stop_s = round(time.monotonic() - t1, 3)
        if start.exit_status != 0 and not start.error:
            start.error = f"exit status {start.exit_status} after SIGTERM"
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        start.error = str(e)
    finally:
        if proc is not None:
            stop_process(proc, args.stop_timeout)
        start.leftovers = delete_netns(namespace)
        if start.leftovers and not start.error:
            start.error = f"processes left in the namespace after the stop: {start.leftovers}"
        if not start.passed:
            with contextlib.suppress(OSError):
                start.log_tail = logfile.read_text(errors="replace")[-LOG_TAIL:]
    return start


def summary(starts: list[Start], n: int) -> dict[str, Any]:
    times = sorted(s.ready_s for s in starts if s.ready_s is not None)
    return {
        "starts": n,
        "run": len(starts),
        "ready": sum(1 for s in starts if s.ready),
        "passed": sum(1 for s in starts if s.passed),
        "ready_s": {
            "p50": percentile(times, 50),
            "max": times[-1] if times else None,
            "min": times[0] if times else None,
        },
        "stop_s_max": max((s.stop_s for s in starts if s.stop_s is not None), default=None),
        "failed": [s.index for s in starts if not s.passed],
    }


def format_report(result: dict[str, Any], starts: list[Start]) -> str:
    t = result["ready_s"]

    def sec(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    rows = [
        ["starts", "ready", "passed (ready, cert, exit 0)", "ready p50", "ready max",
         "stop max"],
        [str(result["starts"]), f"{result['ready']} of {result['starts']}",
         f"{result['passed']} of {result['starts']}", sec(t["p50"]), sec(t["max"]),
         sec(result["stop_s_max"])],
    ]  # fmt: skip
    lines = [text_table(rows)]
    if result["run"] < result["starts"]:
        lines.append(f"only {result['run']} of {result['starts']} starts were run")
    for s in starts:
        if not s.passed:
            lines.append(f"\nstart {s.index} FAILED: {s.error}")
            if s.log_tail:
                lines.append("--- log tail ---\n" + s.log_tail.rstrip())
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fresh_starts.py",
        description=(
            "N starts of `clearipctl run` with a fresh state_dir and the default listeners "
            "(TLS with its self-signed certificate made at first start), each in a network "
            "namespace of its own: how many became ready, how fast, and stopped cleanly."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-n", "--starts", type=positive_int, default=50, metavar="N", help="starts [50]"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=15.0, metavar="S",
        help="a start must be ready within this [15]",
    )  # fmt: skip
    parser.add_argument(
        "--stop-timeout", type=float, default=15.0, metavar="S",
        help="and exit 0 this long after SIGTERM [15]",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=0, metavar="N",
        help="relay.workers [0: one per core, the default]",
    )  # fmt: skip
    parser.add_argument(
        "--fastpath", choices=("auto", "off"), default="auto",
        help="fastpath.enabled [auto: the default]",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR",
        help="keep every start's config and log there [a temp dir, removed]",
    )  # fmt: skip
    add_output_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_preset(args, {})
    if os.geteuid() != 0:
        log("fresh_starts: needs root (network namespaces)")
        return 2
    if shutil.which("ip") is None:
        log("fresh_starts: no `ip` (iproute2)")
        return 2
    if not args.clearipctl.exists():
        log(f"fresh_starts: no {args.clearipctl}: run `make bootstrap`")
        return 2
    expected = args.workers or len(os.sched_getaffinity(0))
    keep = args.out.resolve() if args.out else None
    base = keep or Path(tempfile.mkdtemp(prefix="clearip-fresh-"))
    base.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    log(f"{args.starts} fresh starts, {expected} workers each, fast path {args.fastpath}")
    starts: list[Start] = []
    interrupted = None
    with sigterm_as_exit():
        try:
            for i in range(1, args.starts + 1):
                root = base / f"start-{i:03d}"
                root.mkdir()
                s = one_start(i, args, root, expected)
                starts.append(s)
                log(
                    f"start {i}: "
                    + (f"ready in {s.ready_s:.2f} s" if s.ready else "NOT ready")
                    + f", exit {s.exit_status}" + ("" if s.passed else f": {s.error}")
                )  # fmt: skip
                if keep is None and s.passed:
                    shutil.rmtree(root, ignore_errors=True)
        except (KeyboardInterrupt, SystemExit) as e:
            interrupted = "interrupted" if isinstance(e, KeyboardInterrupt) else f"exit {e.code}"
        finally:
            if keep is None:
                shutil.rmtree(base, ignore_errors=True)
    result = summary(starts, args.starts)
    report = {
        "tool": "tools/fresh_starts.py",
        "started": started,
        "interrupted": interrupted,
        "machine": machine,
        "settings": {
            "starts": args.starts,
            "workers": args.workers,
            "expected_workers": expected,
            "fastpath": args.fastpath,
            "ready_timeout_s": args.ready_timeout,
            "stop_timeout_s": args.stop_timeout,
        },
        "summary": result,
        "starts": [asdict(s) | {"passed": s.passed} for s in starts],
    }
    stream = sys.stderr if args.json == "-" else sys.stdout
    print(format_report(result, starts), file=stream)
    if interrupted:
        print(f"note: stopped early: {interrupted}", file=stream)
    write_json(args.json, json.dumps(report, indent=2))
    if interrupted == "interrupted":
        return 130
    if interrupted:
        return 143
    return 0 if result["passed"] == args.starts else 1


if __name__ == "__main__":
    sys.exit(main())
