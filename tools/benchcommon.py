"""What the benchmark scripts in tools/ share: progress logging, SIGTERM handling, the machine
they ran on, which clearipctl to start, the options and JSON output they have alike, the
control-socket request, stopping a child by PID, reading SIPp's CSV files, and a text table."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (make's or CI's) unwinds like Ctrl-C, so that what a benchmark started (relay,
    harness, lab) is stopped by PID and cleaned up on the way out."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    autogroup = None
    with contextlib.suppress(OSError):
        autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "hostname": platform.node(),
        "loadavg_at_start": list(os.getloadavg()),
        "sched_autogroup": autogroup,
    }


def default_clearipctl() -> Path:
    """The clearipctl next to the running Python (a venv), else this checkout's .venv one."""
    beside = Path(sys.executable).parent / "clearipctl"
    return beside if beside.exists() else REPO / ".venv" / "bin" / "clearipctl"


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--json FILE and --clearipctl PATH, the same in every benchmark."""
    parser.add_argument(
        "--json", metavar="FILE",
        help="also write the JSON there; '-': print it on stdout (the table goes to stderr)",
    )  # fmt: skip
    parser.add_argument(
        "--clearipctl", type=Path, default=None, metavar="PATH",
        help="the clearipctl to run [next to this Python, else .venv/bin/clearipctl]",
    )  # fmt: skip


def positive_int(text: str) -> int:
    """argparse type: a whole number above 0."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def loopback_net(text: str) -> str:
    """argparse type: the first three bytes of loopback addresses, as 127.0.0 (a /24 of 127/8)."""
    parts = text.split(".")
    if len(parts) != 3 or parts[0] != "127" or not all(p.isdigit() and int(p) < 256 for p in parts):
        raise argparse.ArgumentTypeError("three bytes of a loopback address, as 127.0.0")
    return text


def apply_preset(args: argparse.Namespace, preset: Mapping[str, Any]) -> None:
    """Options left unset take the preset's value (--quick or the defaults); explicit win."""
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.clearipctl is None:
        args.clearipctl = default_clearipctl()


def write_json(destination: str | None, text: str) -> None:
    """--json: '-' prints it on stdout, a path gets the file, None does nothing."""
    if destination == "-":
        print(text)
    elif destination:
        Path(destination).write_text(text + "\n")


def control_request(socket_path: str, op: str, timeout: float = 10.0) -> Any:
    """The same request `clearipctl` makes (length-prefixed JSON on the control socket)."""
    from clearip.ctlsock import request  # the product's client; the tools run in its venv

    return request(socket_path, op, timeout=timeout)


def port_in_use(address: tuple[str, int]) -> str | None:
    """Why `address` cannot be bound over UDP or TCP (someone listens there), or None."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:  # TIME_WAIT left by the last run is no obstacle
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as e:
                proto = "udp" if kind == socket.SOCK_DGRAM else "tcp"
                return f"{proto} {address[0]}:{address[1]}: {e.strerror or e}"
    return None


def stop_process(
    proc: subprocess.Popen[Any], grace_s: float, first: int = signal.SIGTERM
) -> int | None:
    """`first` (SIGTERM; SIGUSR1 for a sipp), up to `grace_s` to exit, then SIGKILL; by PID,
    never by name. Returns the exit status (None if it could not be reaped)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(first)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log(f"pid {proc.pid} still running {grace_s:g} s after signal {first}: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
    return proc.poll()


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of sorted `values`, nearest rank."""
    if not values:
        return None
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


def sipp_time_ms(text: str) -> float | None:
    """A -trace_stat duration ("HH:MM:SS:mmmmmm" or "HH:MM:SS:mmm") in ms."""
    parts = text.strip().split(":")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return None
    h, m, s, frac = parts
    sub = int(frac) / (10 ** len(frac))
    return ((int(h) * 60 + int(m)) * 60 + int(s) + sub) * 1000.0


def sipp_rows(path: Path, last_only: bool = False) -> list[dict[str, str]]:
    """The rows of a SIPp -trace_stat CSV (`;`-separated, a header line first) by column name;
    with `last_only` just the last complete row, read from the end of a file still growing."""
    try:
        with open(path, "rb") as f:
            header = f.readline().decode(errors="replace").rstrip("\r\n").split(";")
            start = f.tell()
            if last_only:  # a row is a few kB: the last 64 kB hold the last complete one
                f.seek(max(f.seek(0, os.SEEK_END) - 65536, start))
            lines = f.read().decode(errors="replace").split("\n")
    except OSError:
        return []
    rows = [ln for ln in lines[:-1] if ln.strip()]  # the last piece: "" or a row being written
    if last_only:
        rows = rows[-1:]
    return [dict(zip(header, row.split(";"), strict=False)) for row in rows]


def sipp_rtts(paths: Iterable[Path]) -> list[tuple[float, float, str]]:
    """Every response time in sipp's -trace_rtt file(s) ("Date_ms;response_time_ms;rtd_no",
    one line a stopped timer): (when it stopped, ms since that sipp started; the response
    time, ms; the rtd's name), in file order."""
    out: list[tuple[float, float, str]] = []
    for path in paths:
        with contextlib.suppress(OSError), open(path, errors="replace") as f:
            for line in f:
                parts = line.strip().split(";")
                if len(parts) >= 3:
                    with contextlib.suppress(ValueError):
                        out.append((float(parts[0]), float(parts[1]), parts[2].strip()))
    return out


def sipp_int(row: Mapping[str, str], column: str) -> int:
    """A counter of a -trace_stat row; 0 when absent or not a number."""
    try:
        return int(row.get(column) or 0)
    except ValueError:
        return 0


def sipp_epoch(row: Mapping[str, str], column: str = "StartTime") -> float | None:
    """The Unix time in a -trace_stat date column ("2026-12-04\t17:37:50.129\t1796405870.129")."""
    try:
        return float((row.get(column) or "").split("\t")[-1])
    except ValueError:
        return None


def text_table(rows: Sequence[Sequence[str]], sep: str = " | ") -> str:
    """Rows of cells (the first is the header) as aligned columns, a rule under the header."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = [sep.join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, ("-+-" if "|" in sep else sep).join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)
