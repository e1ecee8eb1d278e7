"""tools/bench_core.py drives whole calls through the core: it must keep working, and every
call it runs must leave no transaction, call or dialog behind once the timers have run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "bench_core.py"


@pytest.fixture(scope="module")
def bench_core():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_core", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_core"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("failover", [False, True])
def test_calls_complete_and_leave_nothing_behind(bench_core, failover: bool) -> None:  # type: ignore[no-untyped-def]
    per_call, bench = bench_core.run(50, failover)  # run() asserts the tables are empty
    counters = bench.core.counters.values
    assert counters["invites"] == 50 and counters["clearip_302"] == 50
    assert counters["failovers"] == (50 if failover else 0)
    assert counters["calls_active"] == 0
    assert bench.core.counters.finals == {200: 100}  # the INVITE's and the BYE's
    assert per_call > 0
