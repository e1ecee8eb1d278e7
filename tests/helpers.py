"""Small helpers every kind of test uses: waiting for a condition with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    what: str | Callable[[], str] = "",
    interval: float = 0.02,
) -> Any:
    """predicate()'s first true value, polled every `interval` s; AssertionError after
    `timeout` s, saying `what` (a callable: its text at that moment, such as a screen)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what or predicate
            raise AssertionError(f"timed out after {timeout} s waiting for {said}")
        time.sleep(interval)
