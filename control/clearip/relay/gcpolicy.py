"""Garbage collection for a worker that must not pause: young passes small, old ones when quiet.

A call leaves no reference cycle behind (tests/test_core_memory.py: reference counting frees
it), so the cycle collector is only for what the asyncio side may leave. But every live call's
state is tracked by it: at 1,000 calls/s the transactions of the last 32 s (64·T1) are a few
million objects, and a pass over them stalled the worker 0.5-1 s (issue 12: at twice the knee,
a gen-1 pass over 850,000 objects took 570 ms and every queue behind it overflowed). So:

* the young generations stay small (YOUNG new objects, then at most 2·YOUNG in the middle one):
  a pass costs a few milliseconds;
* the old generation is never collected automatically; `OldGeneration.due()` asks for a full
  pass when the worker is quiet (few transactions: a short pass) and at least MIN_INTERVAL after
  the last one, or after MAX_INTERVAL whatever the load.
"""

from __future__ import annotations

import gc
import time

YOUNG = 10_000
NEVER = 2**31 - 1  # the old generation's threshold: no automatic full pass
QUIET_TRANSACTIONS = 2_000
MIN_INTERVAL = 600.0
MAX_INTERVAL = 6 * 3600.0


def configure() -> None:
    """After start-up: what it made lives as long as the worker, out of every pass."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, 2, NEVER)


class OldGeneration:
    def __init__(self, now: float) -> None:
        self.last = now
        self.runs = 0

    def due(self, now: float, transactions: int) -> bool:
        since = now - self.last
        if since >= MAX_INTERVAL:
            return True
        return since >= MIN_INTERVAL and transactions <= QUIET_TRANSACTIONS

    def collect(self, now: float) -> tuple[int, float]:
        """A full pass: (objects found unreachable, seconds it took)."""
        started = time.perf_counter()
        found = gc.collect()
        self.last = now
        self.runs += 1
        return found, time.perf_counter() - started
