"""Logging to stderr, readable in a terminal and in the journal (SPEC §6 "journald-friendly").

Under systemd, stderr is a journal stream: journald stamps each line itself, so the line carries
no timestamp, and it starts with a syslog priority `<N>` that journald strips and stores, so
`journalctl -p warning` works. In a terminal or a file, lines carry a timestamp instead.
Workers call `setup_logging` too, with a `tag` ("worker 1") so their lines can be told apart.

Log messages carry what peers sent (a From URI, a Call-ID, a host name): every message is made
printable before it is written (`printable`), whoever logged it, so an ESC or OSC sequence
cannot reach an operator's terminal, a vertical tab or record separator cannot forge a journal
entry (Python and journald both split lines there), and bidi overrides cannot disguise text.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

__all__ = ["LEVELS", "journal_stream", "printable", "set_level", "setup_logging"]

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

# C0 (but tab), DEL, C1, the Unicode line and paragraph separators, and the bidi controls
# (embeddings, overrides, isolates, marks): shown as backslash-x/backslash-u escapes.
_UNPRINTABLE = {
    c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    for c in (
        *range(0x00, 0x09),
        *range(0x0A, 0x20),
        *range(0x7F, 0xA0),
        0x061C,
        0x200E,
        0x200F,
        0x2028,
        0x2029,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    )
}


def printable(text: str) -> str:
    """`text` with every control, separator and bidi character escaped (see above)."""
    return text.translate(_UNPRINTABLE)


class _SafeFormatter(logging.Formatter):
    """Escapes the message (what callers logged, peer bytes included); the traceback of an
    exception, which is ours, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


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


class _JournalFormatter(_SafeFormatter):
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
        formatter = _SafeFormatter(f"%(asctime)s {tag_text}%(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    # Idempotent: `run` and tests may call this more than once in one process.
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    set_level(level)
    # a library's internals are not the operator's debug log (pyroute2 logs every netlink
    # message it parses, each second, from the fast-path watchdog)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)


def set_level(level: str) -> None:
    """Change the level live (on reload); `level` is a `control.log_level` value."""
    logging.getLogger().setLevel(LEVELS.get(level.lower(), logging.INFO))
