"""What the benchmark scripts in tools/ share: progress logging, SIGTERM handling, the machine
they ran on, which clearipctl to start, and the options and JSON output they have alike."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import sys
from collections.abc import Iterator, Mapping
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
