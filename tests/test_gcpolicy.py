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


def test_configure_turns_automatic_passes_off() -> None:
    """CPython's trigger counts new objects minus freed ones: objects of calls that die old cancel
    the new ones' count, and the young generation grew to 350,000 objects (a 700 ms pass) in a
    soak. After configure() no pass runs by itself, however much is made and freed."""
    passes: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            passes.append(info["generation"])

    try:
        gcpolicy.configure()
        gc.callbacks.append(seen)
        old = [[i] for i in range(50_000)]  # a call's state, made earlier ...
        young = [[i] for i in range(50_000)]  # ... and the new calls'
        del old  # the old die: the net count stays low, the young generation is large
        assert not gc.isenabled() and passes == []
        assert len(gc.get_objects(0)) >= 50_000
        del young
    finally:
        gc.callbacks.remove(seen)
        gc.unfreeze()
        gc.enable()


def test_each_pass_takes_young_and_middle_and_promotes_to_old() -> None:
    """Survivors of one pass are in the old generation, never traversed by the next pass."""
    passes: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            passes.append(info["generation"])

    runner = gcpolicy.Passes()
    gc.callbacks.append(seen)
    gc.disable()
    try:
        survivors = [[] for _ in range(1000)]  # tracked lists, alive across the pass
        assert runner.run() >= 0
        young = {id(x) for x in gc.get_objects(0)} | {id(x) for x in gc.get_objects(1)}
        assert not any(id(x) in young for x in survivors)
        assert any(x is survivors[0] for x in gc.get_objects(2))
        for _ in range(5):
            assert runner.run() >= 0
    finally:
        gc.callbacks.remove(seen)
        gc.enable()
    assert passes == [gcpolicy.PASS_GENERATION] * 6 == [1] * 6
    assert runner.take_longest() > 0 and runner.take_longest() == 0
    del survivors
