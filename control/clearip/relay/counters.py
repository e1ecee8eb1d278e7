"""The relay's own counters (SPEC §6), kept per worker and summed by the supervisor."""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from typing import Any

# What ClearIP answered a call (or that it could not be asked), in the §6 order.
VERDICT_NAMES = (
    "clearip_302",
    "clearip_404",
    "clearip_503",
    "clearip_603",
    "clearip_other",
    "clearip_timeout",
    "clearip_unavailable",
)

# The `counters` keys of the `status --json` contract, in that order.
COUNTER_NAMES = (
    "messages_in",
    "invites",
    *VERDICT_NAMES,
    "failovers",
    "emergency_bypass",
    "malformed",
    "dropped_untrusted",
    "calls_active",
)

# Why the relay dropped or refused a message (`status --json` "drops", metric
# clearip_relay_dropped_total{reason}); counted besides the §6 totals above.
DROP_REASONS = (
    "indialog_refused",  # from an untrusted source: no dialog of its own, or routed elsewhere
    "stun_untrusted",  # a STUN keepalive from an untrusted source
    "response_forged",  # a response from somewhere its request did not go
    "response_unmatched",  # a response for no transaction of ours (never forwarded blindly)
    "transaction_limit",  # a request answered 503: limits.max_transactions reached
    "upstream_request",  # a request from ClearIP, which only ever answers
    "ack_unmatched",  # an ACK with no To tag and no INVITE transaction to absorb it
    "max_forwards",  # an ACK with Max-Forwards 0 (a request would get 483)
    "hangup_impossible",  # a late 2xx we cannot ACK and BYE (no usable Contact or route)
    "max_tcp_per_source",  # TCP/TLS refused at accept: the source holds its limit
    "max_tcp_connections",  # TCP/TLS refused at accept: the relay holds its limit
    "tls_handshake",  # a TLS client that did not finish its handshake in time
    "tcp_write_overflow",  # a peer that stopped reading: connection aborted
    "tcp_stuck",  # a message begun and never finished: connection aborted
    "framing",  # a stream that could not be framed: connection closed
    "overload",  # a new call answered 503 at once: the worker was behind (limits.overload_lag)
    "udp_queue_full",  # datagrams the kernel dropped: a worker's UDP receive buffer was full
    "udp_send_backlog",  # a datagram not sent: the kernel's send buffer and our backlog were full
)

# A spoofed flood must not grow the per-source table without bound; sources past this many are
# summed under one "other" entry.
MAX_SOURCES = 65536
OTHER_SOURCE = "other"

# The `sources[].sip` keys of `status --json`: what each source sent and what became of its
# calls. A worker creates a key only when it first counts it (a flood of spoofed sources costs
# one small dict each); the supervisor fills in the zeros.
SOURCE_COUNTER_NAMES = ("messages_in", "invites", *VERDICT_NAMES, "calls_active")

# Histogram bucket upper bounds, ms (Prometheus `le`). Counted per bucket, not cumulatively, so
# the supervisor's key-by-key sum merges the workers' tables exactly.
CLEARIP_RTT_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
SETUP_BUCKETS_MS = (10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)


class Histogram:
    """Per-bucket counts over fixed bounds (ms), plus the sum and the count of the samples.

    `table()` is flat and all integers: `{"le_5": n, ..., "le_inf": n, "sum_us": n, "count": n}`
    where `le_X` counts the samples in (previous bound, X] and `sum_us` is the sum in whole
    microseconds (integers, because the supervisor sums tables of counts as integers)."""

    __slots__ = ("bounds", "count", "counts", "total_ms")

    def __init__(self, bounds_ms: tuple[float, ...]) -> None:
        self.bounds = bounds_ms
        self.counts = [0] * (len(bounds_ms) + 1)  # the last one: above every bound (+Inf)
        self.count = 0
        self.total_ms = 0.0

    def observe(self, ms: float) -> None:
        index = bisect_left(self.bounds, ms)  # the first bound >= ms: `le` is inclusive
        self.counts[index] += 1
        self.count += 1
        self.total_ms += ms

    def table(self) -> dict[str, int]:
        out = {f"le_{bound:g}": n for bound, n in zip(self.bounds, self.counts, strict=False)}
        out["le_inf"] = self.counts[-1]
        out["sum_us"] = round(self.total_ms * 1000.0)
        out["count"] = self.count
        return out


class Counters:
    __slots__ = (
        "_rtt",
        "attestation",
        "drops",
        "finals",
        "hist_clearip_rtt",
        "hist_setup",
        "latency",
        "max_sources",
        "sources",
        "values",
        "verstat",
    )

    def __init__(self, max_sources: int = MAX_SOURCES) -> None:
        self.values: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.values["internal_errors"] = 0  # bugs caught at the worker's edge; should stay 0
        # trusted in-dialog INVITEs for a dialog this proxy does not hold (relayed: a restart
        # loses the table), shown so an operator sees attempts to skip ClearIP
        self.values["indialog_unknown"] = 0
        self.values["overload_periods"] = 0  # times a worker fell behind (overload control)
        self.drops: dict[str, int] = {}  # messages the relay dropped or refused, by reason
        self.max_sources = max_sources
        self.sources: dict[str, dict[str, int]] = {}
        self.finals: dict[int, int] = {}  # final response codes sent to callers
        self.attestation: dict[str, int] = {}  # STIR/SHAKEN attest level -> calls
        self.verstat: dict[str, int] = {}  # P-Asserted-Identity verstat (inbound calls) -> calls
        self._rtt: deque[float] = deque(maxlen=4096)  # recent ClearIP round trips, ms
        # time from reading a message to having sent what it caused, seconds: the delay the
        # relay itself adds (the last ~10 s at a few thousand messages a second)
        self.latency: deque[float] = deque(maxlen=65536)
        self.hist_clearip_rtt = Histogram(CLEARIP_RTT_BUCKETS_MS)  # ClearIP round trips
        self.hist_setup = Histogram(SETUP_BUCKETS_MS)  # INVITE in to final answer out

    def inc(self, name: str, n: int = 1) -> None:
        self.values[name] += n

    def source(self, ip: str, name: str, n: int = 1) -> None:
        entry = self.sources.get(ip)
        if entry is None:
            if len(self.sources) >= self.max_sources:
                ip = OTHER_SOURCE
                entry = self.sources.get(ip)
            if entry is None:
                entry = self.sources[ip] = {}
        entry[name] = entry.get(name, 0) + n

    def count(self, name: str, ip: str, n: int = 1) -> None:
        """Bump counter `name` in total and for source `ip` (a call's verdict, calls_active)."""
        self.values[name] += n
        self.source(ip, name, n)

    def drop(self, reason: str, n: int = 1) -> None:
        """A message dropped or refused, by reason (DROP_REASONS)."""
        self.drops[reason] = self.drops.get(reason, 0) + n

    def final_code(self, status: int) -> None:
        self.finals[status] = self.finals.get(status, 0) + 1

    def attest(self, level: str) -> None:
        self.attestation[level] = self.attestation.get(level, 0) + 1

    def note_verstat(self, value: str) -> None:
        self.verstat[value] = self.verstat.get(value, 0) + 1

    def clearip_rtt(self, ms: float) -> None:
        self._rtt.append(ms)
        self.hist_clearip_rtt.observe(ms)

    def setup_time(self, ms: float) -> None:
        """A call's set-up time: from its INVITE to the final answer relayed to the caller."""
        self.hist_setup.observe(ms)

    def rtt_percentiles(self) -> dict[str, float | None]:
        samples = sorted(self._rtt)
        if not samples:
            return {"p50": None, "p99": None}
        return {
            "p50": round(samples[len(samples) // 2], 3),
            "p99": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 3),
        }

    def latency_percentiles(self) -> dict[str, float | int | None]:
        samples = sorted(self.latency)
        if not samples:
            return {"p50_ms": None, "p99_ms": None, "samples": 0}
        n = len(samples)
        return {
            "p50_ms": round(samples[n // 2] * 1000.0, 3),
            "p99_ms": round(samples[min(n - 1, int(n * 0.99))] * 1000.0, 3),
            "samples": n,
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            "counters": dict(self.values),
            "sources": {ip: dict(v) for ip, v in self.sources.items()},
            "finals": {str(k): v for k, v in sorted(self.finals.items())},
            "drops": dict(self.drops),
            "attestation": dict(self.attestation),
            "verstat": dict(self.verstat),
            "clearip_rtt_ms": self.rtt_percentiles(),
            "latency": self.latency_percentiles(),
            "hist_clearip_rtt": self.hist_clearip_rtt.table(),
            "hist_setup": self.hist_setup.table(),
        }
