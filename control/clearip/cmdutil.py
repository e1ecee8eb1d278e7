"""What the `clearipctl` commands share: the config they act on, the one-line error, the
control request, and how a duration reads. Its own module so that `cli`, `capture` and `top`
import it downward instead of importing each other."""

from __future__ import annotations

import argparse
import os
from typing import Any

from clearip.config import DEFAULT_CONFIG_PATH, Config, default_config, load_config
from clearip.ctlsock import request


class CommandError(Exception):
    """A failure to report as one line on stderr."""


def load(args: argparse.Namespace) -> tuple[str | None, Config]:
    """The config named by --config; with no --config, the default file if it exists, else the
    built-in defaults (so `make run` works on a fresh machine). Path None means defaults."""
    path = args.config
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG_PATH):
            return None, default_config()
        path = DEFAULT_CONFIG_PATH
    return path, load_config(path)


def control_request(args: argparse.Namespace, op: str, **kwargs: Any) -> Any:
    _path, config = load(args)
    return request(config.control.socket, op, **kwargs)


def duration(seconds: float) -> str:
    """`3d 4h 05m`, `2h 05m 09s`, `5m 09s` or `9s`: an uptime as operators read it."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"
