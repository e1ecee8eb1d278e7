"""TCP/TLS connection counts shared by the relay workers, for limits that hold across them.

SO_REUSEPORT spreads one source's connections over every worker, so a per-worker count lets a
source hold `max_tcp_per_source` × workers. The supervisor makes one small shared memory file
(memfd) and hands it to every worker: a row of counters per worker, each worker writing only
its own row (plain aligned stores: no lock), every worker reading all rows to decide.

A row is a total and a table of per-source buckets (a hash of the address): two sources that
share a bucket share its limit, which at a few thousand sources in 65,536 buckets is rare, and
only ever errs toward refusing. Two workers admitting at the same instant may overshoot a limit
by one connection each: a bound, not an exact count.
"""

from __future__ import annotations

import mmap
import os
import zlib

BUCKETS = 1 << 16
_ROW = BUCKETS + 1  # the total, then the buckets
_ITEM = 4  # unsigned 32-bit counters


def shared_size(workers: int) -> int:
    return workers * _ROW * _ITEM


def make_shared(workers: int) -> int:
    """The supervisor's side: a zeroed memfd for `workers` rows (the fd, to pass on)."""
    fd = os.memfd_create("clearip-conncount", os.MFD_CLOEXEC)
    os.ftruncate(fd, shared_size(workers))
    return fd


class ConnCounts:
    """One worker's view: its own row to write, every row to read."""

    def __init__(self, fd: int | None, workers: int, index: int) -> None:
        size = shared_size(workers)
        if fd is None:  # one worker on its own (tests, or no supervisor): private memory
            self._map = mmap.mmap(-1, size)
        else:
            self._map = mmap.mmap(fd, size)
        self._cells = memoryview(self._map).cast("I")
        self.workers = workers
        self._own = index * _ROW
        self._cells[self._own : self._own + _ROW] = memoryview(bytes(_ROW * _ITEM)).cast("I")

    def _bucket(self, ip: str) -> int:
        return 1 + (zlib.crc32(ip.encode()) & (BUCKETS - 1))

    def total(self) -> int:
        cells = self._cells
        return sum(cells[w * _ROW] for w in range(self.workers))

    def of_source(self, ip: str) -> int:
        cells, b = self._cells, self._bucket(ip)
        return sum(cells[w * _ROW + b] for w in range(self.workers))

    def add(self, ip: str, n: int) -> None:
        cells, own = self._cells, self._own
        b = own + self._bucket(ip)
        cells[b] = max(0, cells[b] + n)
        cells[own] = max(0, cells[own] + n)

    def close(self) -> None:
        self._cells.release()
        self._map.close()
