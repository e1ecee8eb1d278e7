"""Logging to stderr, readable in a terminal and in the journal (SPEC §6 "journald-friendly").

Under systemd, stderr is a journal stream: journald stamps each line itself, so the line carries
no timestamp, and it starts with a syslog priority `<N>` that journald strips and stores, so
`journalctl -p warning` works. In a terminal or a file, lines carry a timestamp instead.
Workers call `setup_logging` too, with a `tag` ("worker 1") so their lines can be told apart.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

__all__ = ["LEVELS", "journal_stream", "set_level", "setup_logging"]

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# sd-daemon(3) priorities, as journald reads them from the start of a stderr line.
_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

_HANDLER_NAME = "clearip-stderr"


def journal_stream(stream: TextIO) -> bool:
    """True when `stream` is the journal stream systemd connected us to.

    JOURNAL_STREAM is "device:inode" of that stream (systemd.exec(5)); comparing it with the
    stream's own fstat tells a redirect (`clearipctl run 2>file`) from the journal itself.
    """
    value = os.environ.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        if stream.isatty():
            return False
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    dev, _, ino = value.partition(":")
    try:
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except ValueError:
        return False


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6 if record.levelno < 30 else 3)
        # Multi-line text (tracebacks) would be one journal entry per line: keep each marked.
        prefix = f"<{priority}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def setup_logging(level: str = "info", *, tag: str = "", stream: TextIO | None = None) -> None:
    """Configure the root logger for this process: one stderr handler, `level` by name."""
    stream = stream if stream is not None else sys.stderr
    tag_text = f"[{tag.replace('%', '%%')}] " if tag else ""
    formatter: logging.Formatter
    if journal_stream(stream):
        formatter = _JournalFormatter(f"{tag_text}%(levelname)s %(name)s: %(message)s")
    else:
        formatter = logging.Formatter(f"%(asctime)s {tag_text}%(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    # Idempotent: `run` and tests may call this more than once in one process.
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    """Change the level live (on reload); `level` is a `control.log_level` value."""
    logging.getLogger().setLevel(LEVELS.get(level.lower(), logging.INFO))
