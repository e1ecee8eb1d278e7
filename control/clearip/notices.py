"""Warnings every relay worker may raise, logged once a minute for the whole proxy.

A 404 from ClearIP reaches each worker that sent an INVITE; the hint it calls for must be one
log line a minute (README), not one per worker. A worker reports a notice to the supervisor
(at most once a minute itself), and the supervisor logs it at most once a minute.
"""

from __future__ import annotations

import logging

INTERVAL = 60.0

TEXTS = {
    "not_registered": (
        "ClearIP answered {status}: this proxy's public address may not be registered as an "
        "SBC in the ClearIP portal (check listen.advertise and the ClearIP account)"
    ),
}


class Throttle:
    """Says whether a notice of each kind may go out now (at most once per INTERVAL)."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def allow(self, kind: str, now: float) -> bool:
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            return False
        self._last[kind] = now
        return True


def log_notice(logger: logging.Logger, kind: str, detail: dict[str, object]) -> None:
    text = TEXTS.get(kind)
    if text is None:
        logger.warning("notice %s: %s", kind, detail)
        return
    try:
        logger.warning(text.format(**detail))
    except (KeyError, IndexError, ValueError):
        logger.warning("%s (%s)", text, detail)
