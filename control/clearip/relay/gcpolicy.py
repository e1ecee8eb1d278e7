"""Garbage collection for a worker that must not pause: young passes on a clock, old when quiet.

A call leaves no reference cycle behind (tests/test_core_memory.py: reference counting frees
it), so the cycle collector is only for what the asyncio side may leave. But every live call's
state is tracked by it, and CPython's own trigger cannot keep its passes small here: it counts
new objects *minus freed ones*, and a call's objects live ~32 s (64·T1), die in the old
generation and cancel the count of the new ones. So at half the knee the young generation grew
to 100,000-350,000 objects between two automatic passes, and each pass stalled the worker
150-700 ms (issue 12: overload control then answered ~130 calls 503 in a soak, a few times an
hour). So automatic collection is off and the worker runs the passes itself (`Passes`):

* every YOUNG_EVERY the young and middle generations together (`gc.collect(1)`): what came
  since the last pass, its survivors straight to the old generation. A call's objects outlive
  any such pass, so each is traversed once; young-only passes with a middle one every tenth
  (as before) traversed each twice, 9 % of a worker's CPU at the knee against ~5 %;
* the old generation when the worker is quiet (few transactions: a short pass) and at least
  MIN_INTERVAL after the last one, or after MAX_INTERVAL whatever the load (`OldGeneration`).
"""

from __future__ import annotations

import gc
import time

YOUNG_EVERY = 0.1  # seconds between two passes
PASS_GENERATION = 1  # each pass: generations 0 and 1, survivors to the old one
QUIET_TRANSACTIONS = 2_000
MIN_INTERVAL = 600.0
MAX_INTERVAL = 6 * 3600.0


def configure() -> None:
    """After start-up: what it made lives as long as the worker, out of every pass; from now
    on passes run only when `Passes.run` or `OldGeneration.collect` asks."""
    gc.collect()
    gc.freeze()
    gc.disable()


class Passes:
    """One pass per YOUNG_EVERY (the worker's clock calls `run`)."""

    def __init__(self) -> None:
        self.count = 0
        self.longest = 0.0  # seconds, the longest pass since `take_longest`

    def run(self) -> float:
        """One pass; the seconds it took."""
        self.count += 1
        started = time.perf_counter()
        gc.collect(PASS_GENERATION)
        took = time.perf_counter() - started
        self.longest = max(self.longest, took)
        return took

    def take_longest(self) -> float:
        longest, self.longest = self.longest, 0.0
        return longest


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
