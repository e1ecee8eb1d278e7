"""What peers send cannot reach an operator's terminal or forge journal entries (issue 11).

On main the per-call log line wrote the From URI raw: ESC/OSC sequences reached the terminal
of whoever tailed the log, and \\x0b or \\x1e (line breaks to Python's splitlines and to
journald) forged entries.
"""

from __future__ import annotations

import io
import logging

from clearip.logsetup import printable, setup_logging

HOSTILE = "sip:\x1b]0;owned\x07\x1b[2J@evil\x0b<4>fake entry\x1eINFO call ok\u202egnp.exe\x85"


def test_printable_escapes_controls_separators_and_bidi() -> None:
    out = printable(HOSTILE)
    assert out == (
        "sip:\\x1b]0;owned\\x07\\x1b[2J@evil\\x0b<4>fake entry\\x1eINFO call ok"
        "\\u202egnp.exe\\x85"
    )
    assert out.isprintable()
    assert printable("plain text\twith a tab") == "plain text\twith a tab"


def test_every_log_line_is_printable_and_one_line(monkeypatch) -> None:
    stream = io.StringIO()
    setup_logging("info", stream=stream)
    try:
        logging.getLogger("clearip.calls").info("call from caller=%s", HOSTILE)
        try:
            raise ValueError("ours")
        except ValueError:
            logging.getLogger("clearip.relay").exception("internal error")
    finally:
        for h in [h for h in logging.getLogger().handlers if h.get_name() == "clearip-stderr"]:
            logging.getLogger().removeHandler(h)
    text = stream.getvalue()
    first, *rest = text.splitlines()
    assert "caller=sip:\\x1b]0;owned" in first and first.isprintable()
    assert rest[0].endswith("internal error")  # the traceback keeps its own lines
    assert any(line.startswith("Traceback") for line in rest)


def test_journal_lines_cannot_forge_a_priority(monkeypatch) -> None:
    class Journal(io.StringIO):
        def isatty(self) -> bool:
            return False

        def fileno(self) -> int:
            return 2

    import os

    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    stream = Journal()
    setup_logging("info", stream=stream)
    try:
        logging.getLogger("clearip.calls").info("caller=%s", HOSTILE)
    finally:
        for h in [h for h in logging.getLogger().handlers if h.get_name() == "clearip-stderr"]:
            logging.getLogger().removeHandler(h)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("<6>") and "\\x0b<4>fake" in lines[0]
