"""Pinhole lifetimes in the fast-path manager: who holds a pinhole is counted once (by worker),
it lingers after its last use, and every held one is re-armed each quarter of the TTL. The
kernel writes are recorded here; the e2e fast-path tests check them in a namespace."""

from __future__ import annotations

import time

import pytest

from clearip.config import parse_config
from clearip.fastpath.manager import PINHOLE_LINGER, FastPathManager


class Recorded(FastPathManager):
    def __init__(self) -> None:
        super().__init__(parse_config(""), workers=2)
        self.enabled = True
        self.writes: list[tuple[list[str], bool]] = []

    def _apply_pinholes(self, ips: list[str], is_open: bool) -> None:
        self.writes.append((sorted(ips), is_open))


@pytest.fixture
def manager() -> Recorded:
    return Recorded()


def test_opened_once_for_all_workers_closed_after_the_last_and_its_linger(
    manager: Recorded,
) -> None:
    manager.pinhole(0, "192.0.2.7", True)
    manager.pinhole(1, "192.0.2.7", True)
    manager.pinhole(0, "192.0.2.7", True)  # said twice: nothing changes
    assert manager.writes == [(["192.0.2.7"], True)]
    manager.pinhole(0, "192.0.2.7", False)
    manager.pinhole(0, "192.0.2.7", False)  # worker 0 is not counted down twice
    assert "192.0.2.7" in manager.holes and not manager.closing
    manager.pinhole(1, "192.0.2.7", False)
    now = time.monotonic()
    manager._rearmed = now  # no re-arm in this test
    manager.tick(now + PINHOLE_LINGER - 1)
    assert manager.writes == [(["192.0.2.7"], True)]  # still lingering
    manager.tick(now + PINHOLE_LINGER + 1)
    assert manager.writes[-1] == (["192.0.2.7"], False) and not manager.closing


def test_reused_while_lingering_it_is_never_closed(manager: Recorded) -> None:
    manager.pinhole(0, "192.0.2.7", True)
    manager.pinhole(0, "192.0.2.7", False)
    manager.pinhole(1, "192.0.2.7", True)  # a new call before the linger ran out
    now = time.monotonic()
    manager._rearmed = now
    manager.tick(now + PINHOLE_LINGER + 1)
    assert manager.writes == [(["192.0.2.7"], True)]


def test_a_dead_workers_pinholes_are_released_not_the_others(manager: Recorded) -> None:
    manager.pinhole(0, "192.0.2.7", True)
    manager.pinhole(0, "192.0.2.8", True)
    manager.pinhole(1, "192.0.2.8", True)
    manager.release(0)
    assert set(manager.holes) == {"192.0.2.8"} and set(manager.closing) == {"192.0.2.7"}


def test_held_and_lingering_pinholes_are_rearmed_each_quarter_ttl(manager: Recorded) -> None:
    """Issue 10, finding 2: a provider that always has a call up keeps its pinhole."""
    manager.pinhole_ttl = 100.0  # a quarter (25 s) inside the linger (32 s)
    manager.pinhole(0, "192.0.2.7", True)
    manager.pinhole(0, "192.0.2.8", True)
    manager.pinhole(0, "192.0.2.8", False)
    manager.writes.clear()
    now = time.monotonic()
    manager._rearmed = now
    quarter = manager.pinhole_ttl / 4
    manager.tick(now + quarter - 1)
    assert manager.writes == []
    manager.tick(now + quarter)
    assert manager.writes == [(["192.0.2.7", "192.0.2.8"], True)]
