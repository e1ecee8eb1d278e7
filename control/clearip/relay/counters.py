"""The relay's own counters (SPEC §6), kept per worker and summed by the supervisor."""

from __future__ import annotations

from collections import deque
from typing import Any

# The `counters` keys of the `status --json` contract, in that order.
COUNTER_NAMES = (
    "messages_in",
    "invites",
    "clearip_302",
    "clearip_404",
    "clearip_503",
    "clearip_603",
    "clearip_other",
    "clearip_timeout",
    "clearip_unavailable",
    "failovers",
    "emergency_bypass",
    "malformed",
    "dropped_untrusted",
    "calls_active",
)

# A spoofed flood must not grow the per-source table without bound; sources past this many are
# summed under one "other" entry.
MAX_SOURCES = 65536
OTHER_SOURCE = "other"


class Counters:
    __slots__ = ("_rtt", "attestation", "finals", "latency", "sources", "values")

    def __init__(self, max_sources: int = MAX_SOURCES) -> None:
        self.values: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.values["internal_errors"] = 0  # bugs caught at the worker's edge; should stay 0
        self.sources: dict[str, dict[str, int]] = {}
        self.finals: dict[int, int] = {}  # final response codes sent to callers
        self.attestation: dict[str, int] = {}  # STIR/SHAKEN attest level -> calls
        self._rtt: deque[float] = deque(maxlen=4096)  # recent ClearIP round trips, ms
        # time from reading a message to having sent what it caused, seconds: the delay the
        # relay itself adds (the last ~10 s at a few thousand messages a second)
        self.latency: deque[float] = deque(maxlen=65536)

    def inc(self, name: str, n: int = 1) -> None:
        self.values[name] += n

    def source(self, ip: str, name: str) -> None:
        entry = self.sources.get(ip)
        if entry is None:
            if len(self.sources) >= MAX_SOURCES:
                ip = OTHER_SOURCE
                entry = self.sources.get(ip)
            if entry is None:
                entry = self.sources[ip] = {"messages_in": 0, "invites": 0}
        entry[name] += 1

    def final_code(self, status: int) -> None:
        self.finals[status] = self.finals.get(status, 0) + 1

    def attest(self, level: str) -> None:
        self.attestation[level] = self.attestation.get(level, 0) + 1

    def clearip_rtt(self, ms: float) -> None:
        self._rtt.append(ms)

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
            "attestation": dict(self.attestation),
            "clearip_rtt_ms": self.rtt_percentiles(),
            "latency": self.latency_percentiles(),
        }
