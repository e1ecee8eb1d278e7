"""tools/bench_calls.py --runs: the table of every run's knees, without a harness."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


@pytest.fixture(scope="module")
def bc() -> ModuleType:
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))  # its `from benchcommon import ...`
    spec = importlib.util.spec_from_file_location("bench_calls", TOOLS / "bench_calls.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_calls"] = module
    spec.loader.exec_module(module)
    return module


def _search(knee: int, ms: float, complete: bool = True) -> dict[str, object]:
    return {"knee_cps": knee, "cpu_ms_per_call": ms, "complete": complete}


def test_runs_table_has_a_row_per_run_and_flow(bc: ModuleType) -> None:
    reports = [
        {"flows": {
            "ok": {"relay": _search(2500, 0.53), "kamailio": _search(2000, 0.66), "ratio": 1.25},
            "failover": {"relay": _search(1600, 0.76), "kamailio": None, "ratio": None},
        }},
        {"flows": {
            "ok": {"relay": _search(2300, 0.571, complete=False), "kamailio": _search(2100, 0.64),
                   "ratio": 1.0952},
            "failover": {"relay": {"error": "no relay"}, "kamailio": _search(1700, 0.74),
                         "ratio": None},
        }},
    ]  # fmt: skip
    lines = bc.format_runs(reports).splitlines()
    assert lines[0].split(" | ") == [
        "run", "flow    ", "relay knee", "relay ms/call", "Kamailio knee", "Kamailio ms/call",
        "ratio",
    ]  # fmt: skip
    assert set(lines[1]) <= {"-", "+"}
    rows = [[cell.strip() for cell in line.split("|")] for line in lines[2:]]
    assert rows == [
        ["1", "ok", "2500", "0.53", "2000", "0.66", "1.25"],
        ["1", "failover", "1600", "0.76", "-", "-", "n/a"],
        ["2", "ok", "~2300", "0.57", "2100", "0.64", "1.10"],
        ["2", "failover", "error", "-", "1700", "0.74", "n/a"],
    ]
    assert len({len(line) for line in lines[:2]}) == 1  # the rule spans the header
