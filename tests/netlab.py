"""pytest glue for the network-namespace lab (`lab.netlab`): skip where labs cannot be built,
and the `netlab` / `netlab_factory` fixtures."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lab.netlab import NetLab, NetLabError, cleanup_stale, netns_unavailable_reason


def skip_unless_netns() -> None:
    """pytest.skip() with the reason when labs can't be built on this machine."""
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)


@functools.cache
def _cleanup_stale_once() -> None:
    cleanup_stale()


@pytest.fixture
def netlab(tmp_path: Path) -> Iterator[NetLab]:
    """A fresh lab for one test (skipped when namespaces can't be made); closed afterwards."""
    skip_unless_netns()
    _cleanup_stale_once()
    with NetLab(workdir=tmp_path / "netlab") as lab:
        yield lab


@pytest.fixture
def netlab_factory(tmp_path: Path) -> Iterator[Callable[..., NetLab]]:
    """``make(prefix=None, **kw) -> NetLab`` for tests needing several labs; all closed after."""
    skip_unless_netns()
    _cleanup_stale_once()
    labs: list[NetLab] = []

    def make(prefix: str | None = None, **kw: Any) -> NetLab:
        kw.setdefault("workdir", tmp_path / f"netlab{len(labs)}")
        lab = NetLab(prefix, **kw)
        labs.append(lab)
        return lab

    yield make
    errors = []
    for lab in reversed(labs):
        try:
            lab.close()
        except NetLabError as exc:
            errors.append(str(exc))
    if errors:
        raise NetLabError("; ".join(errors))
