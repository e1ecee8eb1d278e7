"""`clearipctl`: the one entry point for running and operating the proxy."""

from __future__ import annotations

import argparse
import sys

from clearip import __version__

DEFAULT_CONFIG = "/etc/clearip/proxy.toml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clearipctl",
        description="ClearIP In-Line Proxy: run the SIP relay and operate its fast path.",
    )
    parser.add_argument("--version", action="version", version=f"clearipctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="run the proxy in the foreground (what systemd starts)")
    run.add_argument("--config", default=DEFAULT_CONFIG, help=f"TOML config (default {DEFAULT_CONFIG})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        print("clearipctl run: the relay is not built yet", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
