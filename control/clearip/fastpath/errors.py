"""The fast path's errors: what every layer of `clearip.fastpath` raises and its callers catch.

A module of its own, importing nothing, so that the map API (`maps`), the loader (`bpf`) and
their callers (`capture`, `checks`, `manager`) share these classes without importing each other.
"""

from __future__ import annotations

__all__ = ["FastPathError", "FastPathUnavailable"]


class FastPathError(Exception):
    """The fast path was asked for something it cannot do; the message says what and where."""


class FastPathUnavailable(FastPathError):
    """The fast path cannot run here: `reason` says why, `fix` what the operator can do."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"{reason} (fix: {fix})")
        self.reason = reason
        self.fix = fix
