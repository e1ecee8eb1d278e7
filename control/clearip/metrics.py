"""Prometheus exposition of the proxy's status (SPEC §6 "Metrics", on `control.metrics`).

The supervisor serves `/metrics` from a thread; each scrape reads the same merged status that
`clearipctl status` shows (the workers' counters summed), so the two never disagree. Nothing is
kept here between scrapes. Counters are the sums over the current workers: a restarted worker
starts from 0 again, which Prometheus' `rate()`/`increase()` treat as a counter reset.

Metrics (all prefixed `clearip_`; `_total` are counters, the rest gauges unless said):

Scrape health
- `clearip_status_up` (gauge): 1 when the supervisor answered this scrape's status request,
  0 when it did not in time (then only this metric is exposed).
- `clearip_workers` (gauge): relay worker processes that are ready (`relay.workers` when healthy).
- `clearip_workers_restarted_total`: relay workers restarted after dying.
- `clearip_calls_lost_total`: calls being set up in a worker when it died (their callers got
  no answer from the proxy; a retransmitted INVITE starts afresh on the restarted worker).
- `clearip_overload_active` (gauge): 1 while a worker is behind and answers new calls 503
  (`limits.overload_lag`); `clearip_overload_lag_seconds` (gauge): how late the latest worker
  runs, smoothed (its event loop, or the longest a datagram waited in a socket's queue).

SIP relay (the relay's own counters, `status --json` `counters`)
- `clearip_messages_in_total`: SIP messages received on the listeners (not on the ClearIP link).
- `clearip_invites_total`: INVITEs received (new calls).
- `clearip_clearip_verdicts_total{verdict}`: ClearIP answers by verdict, `verdict` one of
  "302" (route), "404", "503", "603", "other" (any other answer), "timeout" (no answer in
  `clearip.timeout`), "unavailable" (no ClearIP link at all: answered 503 at once).
- `clearip_failovers_total`: moves to the next provider after one failed or timed out.
- `clearip_emergency_bypass_total`: emergency calls sent on without asking ClearIP.
- `clearip_malformed_total`: messages that could not be parsed.
- `clearip_dropped_untrusted_total`: messages the relay itself dropped from untrusted sources.
- `clearip_internal_errors_total`: bugs caught at a worker's edge; should stay 0.
- `clearip_relay_dropped_total{reason}`: messages the relay dropped or refused besides the
  above, by reason: "indialog_refused" (an untrusted source's in-dialog request outside a
  dialog of its own, or routed elsewhere), "stun_untrusted" (a STUN keepalive from an
  untrusted source), "response_forged" (a response from somewhere its request did not go),
  "response_unmatched" (a response for no transaction).
- `clearip_indialog_unknown_total`: in-dialog INVITEs from trusted sources for a dialog this
  proxy does not hold (relayed, as after a restart; a rise means something skips ClearIP).
- `clearip_calls_active` (gauge): calls in progress (set up, or answered and not yet ended).
- `clearip_final_responses_total{code}`: final responses sent to callers, by status code.
- `clearip_attestation_total{level}`: STIR/SHAKEN attestation of routed calls ("A", "B", "C",
  or whatever level the PASSporT carried).
- `clearip_verstat_total{status}`: verification status ClearIP gave inbound calls (the
  `verstat` of P-Asserted-Identity: "TN-Validation-Passed", "TN-Validation-Failed",
  "No-TN-Validation").

ClearIP link and fast path
- `clearip_upstream_up` (gauge): 1 when every worker's ClearIP link is connected, else 0.
- `clearip_fastpath_enabled` (gauge): 1 when the kernel fast path (nftables + eBPF) is loaded.
- `clearip_fastpath_restored_total`: times the watchdog put back the nft table or a tc filter
  that someone else removed (`nft flush ruleset`, `tc qdisc del`); should stay 0.
- `clearip_kernel_passed_packets_total`: packets the fast path passed to the relay, all sources.
- `clearip_kernel_dropped_untrusted_packets_total`: packets the fast path dropped from untrusted
  sources, all sources.
- `clearip_kernel_dropped_nonsip_packets_total`: packets the fast path dropped as not SIP.
  (The three kernel counters stay 0 while the fast path is off.)

Message copies (`clearipctl capture --decrypted` and HEP3 export, `control.hep`)
- `clearip_hep_messages_total`: SIP messages sent to the HEP3 collector.
- `clearip_tap_dropped_total`: copies lost because a capture or the collector's socket was full
  (the calls themselves are never held up by a copy).

Histograms (seconds; `_bucket{le}` cumulative, `_sum`, `_count`)
- `clearip_clearip_rtt_seconds`: ClearIP round trip, request sent to final answer read; buckets
  0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 +Inf.
- `clearip_call_setup_seconds`: call set-up, INVITE received to the final answer relayed to the
  caller (2xx or failure); buckets 0.01 0.05 0.1 0.25 0.5 1 2.5 5 10 30 +Inf.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from clearip.relay.counters import CLEARIP_RTT_BUCKETS_MS, SETUP_BUCKETS_MS

__all__ = ["MetricsServer", "StatusCollector", "start_metrics_server"]

log = logging.getLogger(__name__)

StatusProvider = Callable[[], Mapping[str, Any]]

# counter key in `status["counters"]` -> (metric name without `_total`, help)
_PLAIN_COUNTERS = (
    ("messages_in", "clearip_messages_in", "SIP messages received on the listeners"),
    ("invites", "clearip_invites", "INVITEs received"),
    ("failovers", "clearip_failovers", "Failovers to the next provider"),
    ("emergency_bypass", "clearip_emergency_bypass", "Emergency calls sent on without ClearIP"),
    ("malformed", "clearip_malformed", "SIP messages that could not be parsed"),
    (
        "dropped_untrusted",
        "clearip_dropped_untrusted",
        "Messages dropped by the relay as untrusted",
    ),
    ("internal_errors", "clearip_internal_errors", "Internal errors caught in the relay workers"),
)
VERDICTS = ("302", "404", "503", "603", "other", "timeout", "unavailable")
# kernel counter in `sources[].kernel` -> (metric name without `_total`, help)
_KERNEL_COUNTERS = (
    ("passed_pkts", "clearip_kernel_passed_packets", "Packets the fast path passed"),
    (
        "dropped_untrusted_pkts",
        "clearip_kernel_dropped_untrusted_packets",
        "Packets the fast path dropped from untrusted sources",
    ),
    (
        "dropped_nonsip_pkts",
        "clearip_kernel_dropped_nonsip_packets",
        "Packets the fast path dropped as not SIP",
    ),
)
# status table -> (metric name, help, default bounds in ms)
_HISTOGRAMS = (
    (
        "hist_clearip_rtt",
        "clearip_clearip_rtt_seconds",
        "ClearIP round trip, request sent to final answer",
        CLEARIP_RTT_BUCKETS_MS,
    ),
    (
        "hist_setup",
        "clearip_call_setup_seconds",
        "Call set-up time, INVITE received to final answer relayed",
        SETUP_BUCKETS_MS,
    ),
)


def _num(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def _labelled(
    name: str, doc: str, label: str, status: Mapping[str, Any], key: str
) -> CounterMetricFamily:
    """One counter per entry of the status table `key`, labelled by the entry's name."""
    metric = CounterMetricFamily(name, doc, labels=[label])
    for value, n in sorted(_table(status.get(key)).items(), key=lambda kv: str(kv[0])):
        metric.add_metric([str(value)], _num(n))
    return metric


def _table(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def histogram_buckets(
    table: Mapping[str, Any], default_bounds_ms: Iterable[float]
) -> tuple[list[tuple[str, float]], float]:
    """A per-bucket (not cumulative) ms table from `Counters` -> cumulative Prometheus buckets
    in seconds (ending with +Inf = the count) and the sum in seconds."""
    per_bucket: dict[float, float] = {float(b): 0.0 for b in default_bounds_ms}
    for key, value in table.items():
        if not (isinstance(key, str) and key.startswith("le_")) or key == "le_inf":
            continue
        try:
            bound = float(key[3:])
        except ValueError:
            continue
        per_bucket[bound] = per_bucket.get(bound, 0.0) + _num(value)
    buckets: list[tuple[str, float]] = []
    running = 0.0
    for bound in sorted(per_bucket):
        running += per_bucket[bound]
        buckets.append((floatToGoString(bound / 1000.0), running))
    count = max(_num(table.get("count")), running + _num(table.get("le_inf")))
    buckets.append(("+Inf", count))
    return buckets, _num(table.get("sum_us")) / 1e6


class StatusCollector(Collector):
    """Turns the supervisor's merged status into metrics at each scrape."""

    def __init__(self, status_provider: StatusProvider) -> None:
        self._provider = status_provider

    def collect(self) -> Iterator[Metric]:
        try:
            status = self._provider()
        except Exception as e:  # a timeout, a stopping supervisor: say so, expose nothing stale
            log.warning("metrics: no status from the supervisor: %s", e or type(e).__name__)
            status = None
        up = GaugeMetricFamily("clearip_status_up", "1 when the proxy's status could be read")
        up.add_metric([], 1.0 if isinstance(status, Mapping) else 0.0)
        yield up
        if isinstance(status, Mapping):
            yield from self._from_status(status)

    def _from_status(self, status: Mapping[str, Any]) -> Iterator[Metric]:
        counters = _table(status.get("counters"))
        for key, name, doc in _PLAIN_COUNTERS:
            metric = CounterMetricFamily(name, doc)
            metric.add_metric([], _num(counters.get(key)))
            yield metric

        verdicts = CounterMetricFamily(
            "clearip_clearip_verdicts", "ClearIP verdicts by kind", labels=["verdict"]
        )
        for verdict in VERDICTS:
            verdicts.add_metric([verdict], _num(counters.get(f"clearip_{verdict}")))
        yield verdicts

        active = GaugeMetricFamily("clearip_calls_active", "Calls in progress")
        active.add_metric([], _num(counters.get("calls_active")))
        yield active

        yield _labelled(
            "clearip_final_responses", "Final responses sent to callers", "code", status, "finals"
        )
        yield _labelled(
            "clearip_attestation",
            "STIR/SHAKEN attestation levels of calls",
            "level",
            status,
            "attestation",
        )
        yield _labelled(
            "clearip_verstat",
            "STIR/SHAKEN verification status of inbound calls",
            "status",
            status,
            "verstat",
        )

        upstream = GaugeMetricFamily("clearip_upstream_up", "1 when the ClearIP link is connected")
        state = _table(status.get("upstream")).get("state")
        upstream.add_metric([], 1.0 if state == "connected" else 0.0)
        yield upstream

        fastpath = GaugeMetricFamily("clearip_fastpath_enabled", "1 when the fast path is loaded")
        fastpath.add_metric([], 1.0 if _table(status.get("fastpath")).get("enabled") else 0.0)
        yield fastpath
        restored = CounterMetricFamily(
            "clearip_fastpath_restored",
            "Times the fast path watchdog put back an nft table or tc filter someone removed",
        )
        restored.add_metric([], _num(_table(status.get("fastpath")).get("restored")))
        yield restored

        yield _labelled(
            "clearip_relay_dropped",
            "Messages the relay dropped or refused",
            "reason",
            status,
            "drops",
        )
        indialog = CounterMetricFamily(
            "clearip_indialog_unknown",
            "Trusted in-dialog INVITEs for a dialog the proxy does not hold (relayed)",
        )
        indialog.add_metric([], _num(counters.get("indialog_unknown")))
        yield indialog

        sources = status.get("sources")
        kernels = [
            _table(s.get("kernel"))
            for s in (sources if isinstance(sources, list) else ())
            if isinstance(s, Mapping)
        ]
        for key, name, doc in _KERNEL_COUNTERS:
            metric = CounterMetricFamily(name, doc)
            metric.add_metric([], sum(_num(k.get(key)) for k in kernels))
            yield metric

        for key, name, doc, bounds in _HISTOGRAMS:
            buckets, total = histogram_buckets(_table(status.get(key)), bounds)
            histogram = HistogramMetricFamily(name, doc)
            histogram.add_metric([], buckets, total)
            yield histogram

        tap = _table(status.get("tap"))
        hep = CounterMetricFamily("clearip_hep_messages", "SIP messages sent to the HEP collector")
        hep.add_metric([], _num(tap.get("hep_sent")))
        yield hep
        dropped = CounterMetricFamily(
            "clearip_tap_dropped", "Message copies lost to a full capture or collector socket"
        )
        dropped.add_metric([], _num(tap.get("dropped")))
        yield dropped

        workers = status.get("workers")
        ready = GaugeMetricFamily("clearip_workers", "Relay worker processes ready")
        ready.add_metric(
            [],
            float(
                sum(1 for w in workers if isinstance(w, Mapping) and w.get("ready"))
                if isinstance(workers, list)
                else 0
            ),
        )
        yield ready
        restarted = CounterMetricFamily(
            "clearip_workers_restarted", "Relay workers restarted after dying"
        )
        restarted.add_metric([], _num(status.get("workers_restarted")))
        yield restarted
        lost = CounterMetricFamily(
            "clearip_calls_lost", "Calls being set up in relay workers that died"
        )
        lost.add_metric([], _num(status.get("calls_lost")))
        yield lost
        overload = _table(status.get("overload"))
        active = GaugeMetricFamily(
            "clearip_overload_active", "1 while a worker is behind and refuses new calls (503)"
        )
        active.add_metric([], 1.0 if _num(overload.get("active")) else 0.0)
        yield active
        lag = GaugeMetricFamily(
            "clearip_overload_lag_seconds",
            "How late the latest worker runs, smoothed: event loop or socket queue",
        )
        lag.add_metric([], _num(overload.get("lag_ms")) / 1000.0)
        yield lag


class MetricsServer:
    """A running `/metrics` HTTP server; `stop()` closes it (idempotent)."""

    def __init__(self, httpd: Any, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host, self.port = httpd.server_address[:2]

    def stop(self) -> None:
        if self._httpd is None:
            return
        httpd, self._httpd = self._httpd, None
        httpd.shutdown()  # waits for serve_forever to return (up to its 0.5 s poll)
        httpd.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(host: str, port: int, status_provider: StatusProvider) -> MetricsServer:
    """Serve `/metrics` on host:port (port 0: any free one, see `.port`) from a daemon thread.
    Raises OSError when it cannot bind."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status_provider))
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(httpd, thread)
