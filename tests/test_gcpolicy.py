"""When a worker runs a full garbage collection (relay/gcpolicy.py): only when quiet, at most
every MIN_INTERVAL, and after MAX_INTERVAL whatever the load."""

from __future__ import annotations

import gc

from clearip.relay import gcpolicy
from clearip.relay.gcpolicy import MAX_INTERVAL, MIN_INTERVAL, QUIET_TRANSACTIONS, OldGeneration


def test_a_full_pass_waits_for_a_quiet_worker() -> None:
    old = OldGeneration(0.0)
    assert not old.due(MIN_INTERVAL - 1, 0)  # too soon after the last
    assert old.due(MIN_INTERVAL, QUIET_TRANSACTIONS)
    assert not old.due(MIN_INTERVAL, QUIET_TRANSACTIONS + 1)  # busy: it would stall calls
    assert old.due(MAX_INTERVAL, 10**6)  # but not for ever
    found, took = old.collect(MAX_INTERVAL)
    assert found >= 0 and took >= 0 and old.runs == 1
    assert not old.due(MAX_INTERVAL + 1, 0)


def test_configure_keeps_young_passes_small_and_never_runs_a_full_one_by_itself() -> None:
    before = gc.get_threshold()
    try:
        gcpolicy.configure()
        young, middle, old = gc.get_threshold()
        assert young == gcpolicy.YOUNG and middle <= 2 and old == gcpolicy.NEVER
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
