"""How long reading the eBPF fast path's per-source counters takes (issue 10, SPEC §6).

`clearipctl status`, `top` and the metrics read every per-source row of the kernel maps. This
loads the classifier (root, bcc; no network, nothing attached or pinned) with
fastpath.max_sources = --sources, fills the per-source map with that many sources through plain
map updates (every CPU's slot non-zero, as after a spoofed flood spread over all queues), and
prints the time of `read_sources()`, best of --repeat. A figure, not an assertion: the exit
status is non-zero only when the benchmark itself cannot run.

    sudo .venv/bin/python tools/bench_fastpath_read.py --sources 65536 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import time

from clearip.fastpath import syscall
from clearip.fastpath.bpf import BpfFastPath
from clearip.fastpath.errors import FastPathUnavailable


def fill(fp: BpfFastPath, sources: int, admitted: int) -> None:
    """`sources` rows: IPv4 10.x.y.z as the classifier keys them (::ffff:a.b.c.d). The first
    `admitted` go to the admitted sources' map when this version has one."""
    maps = fp.maps._maps  # the raw maps: this tool writes rows the classifier would
    lru = maps["src_stats"]
    admitted_map = maps.get("admitted_stats")
    for i in range(sources):
        key = bytes(10) + b"\xff\xff" + (0x0A000000 + i + 1).to_bytes(4, "big")
        m = admitted_map if admitted_map is not None and i < admitted else lru
        pad = bytes(m.stride - m.value_size)
        row = b"".join(
            (i + 1 + cpu).to_bytes(8, sys.byteorder) * (m.value_size // 8) + pad
            for cpu in range(m.ncpus)
        )
        m.update(key, row)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=65536, help="rows to fill (and max_sources)")
    ap.add_argument("--admitted", type=int, default=0, help="of them, admitted sources' rows")
    ap.add_argument("--repeat", type=int, default=5, help="reads timed; the best is reported")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root: it loads an eBPF program", file=sys.stderr)
        return 2
    fp = BpfFastPath(f"cipb_{secrets.token_hex(3)}", [("udp", 5060)], args.sources)
    try:
        fp.load()
    except FastPathUnavailable as exc:
        print(f"fast path unavailable: {exc.reason} (fix: {exc.fix})", file=sys.stderr)
        return 2
    try:
        t0 = time.perf_counter()
        fill(fp, args.sources, args.admitted)
        fill_s = time.perf_counter() - t0
        times = []
        rows = 0
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            rows = len(fp.read_sources())
            times.append(time.perf_counter() - t0)
    finally:
        fp.close()
    ncpus = fp_ncpus()
    result = {
        "sources": args.sources,
        "admitted": args.admitted,
        "rows_read": rows,
        "possible_cpus": ncpus,
        "best_ms": round(min(times) * 1000, 1),
        "median_ms": round(statistics.median(times) * 1000, 1),
        "fill_s": round(fill_s, 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"read_sources(): {rows} rows, {ncpus} possible CPUs: best {result['best_ms']} ms, "
            f"median {result['median_ms']} ms of {len(times)} (fill {result['fill_s']} s)"
        )
    return 0


def fp_ncpus() -> int:
    return syscall._possible_cpus()


if __name__ == "__main__":
    sys.exit(main())
