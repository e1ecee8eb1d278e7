"""Prometheus metrics (SPEC §6): the collector over a fixed status, the histograms kept by the
workers and merged by the supervisor, and a real scrape over HTTP."""

from __future__ import annotations

import signal
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from clearip.config import default_config
from clearip.ctlsock import request
from clearip.metrics import StatusCollector, start_metrics_server
from clearip.relay.counters import Counters
from clearip.statusreport import aggregate_stats
from tests.helpers import wait_until
from tests.test_supervisor import CLEARIPCTL, child_env, write_config


def _worker(rtts: list[float], setups: list[float]) -> dict[str, Any]:
    counters = Counters()
    for ms in rtts:
        counters.clearip_rtt(ms)
    for ms in setups:
        counters.setup_time(ms)
    return counters.snapshot()


def _status() -> dict[str, Any]:
    # two workers' snapshots merged the way the supervisor does
    one, two = _worker([3.0, 5.0, 40.0], [120.0]), _worker([7000.0], [9.0, 30000.0, 45000.0])
    one["counters"].update(messages_in=10, invites=4, clearip_302=2, clearip_timeout=1)
    two["counters"].update(messages_in=5, invites=1, clearip_unavailable=1, calls_active=2)
    one["finals"], two["finals"] = {"200": 2, "503": 1}, {"503": 1}
    one["attestation"], two["attestation"] = {"A": 1}, {"A": 1, "C": 1}
    one["verstat"] = {"TN-Validation-Passed": 3, "No-TN-Validation": 1}
    one["drops"] = {"indialog_refused": 2}
    two["drops"] = {"indialog_refused": 1, "stun_untrusted": 4}
    one["tap"], two["tap"] = {"captures": 0, "dropped": 1, "hep_sent": 30}, {"hep_sent": 12}
    merged = aggregate_stats([one, two], default_config())
    return {
        **merged,
        "upstream": {"state": "connected", "transport": "tls", "tls_version": None, "rtt_ms": 1},
        "fastpath": {"enabled": True, "reason": None, "interfaces": ["eth0"], "restored": 1},
        "sources": [
            {"address": "10.0.0.1", "kernel": {"passed_pkts": 7, "dropped_untrusted_pkts": 0}},
            {"address": "10.0.0.9", "kernel": {"passed_pkts": 1, "dropped_untrusted_pkts": 90}},
        ],
        "workers": [{"index": 0, "ready": True}, {"index": 1, "ready": False}],
        "workers_restarted": 3,
        "overload": {"active": 1, "admitted_per_s": 640.0, "lag_ms": 52.5, "lag_ms_max": 90.0},
    }


def _exposition(provider: Any) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(provider))
    return generate_latest(registry).decode()


def _samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_histograms_in_counters_are_per_bucket_and_merge_by_sum() -> None:
    snap = _worker([5.0, 5.5, 10.0, 9999.0], [])
    assert snap["hist_clearip_rtt"] == {
        "le_5": 1, "le_10": 2, "le_25": 0, "le_50": 0, "le_100": 0, "le_250": 0, "le_500": 0,
        "le_1000": 0, "le_2500": 0, "le_5000": 0, "le_inf": 1, "sum_us": 10019500, "count": 4,
    }  # fmt: skip
    assert snap["hist_setup"]["count"] == 0 and snap["hist_setup"]["le_30000"] == 0
    merged = aggregate_stats([snap, _worker([4.0], [])], default_config())
    assert merged["hist_clearip_rtt"]["le_5"] == 2
    assert merged["hist_clearip_rtt"]["count"] == 5
    assert merged["hist_clearip_rtt"]["sum_us"] == 10023500


def test_collector_exposes_every_metric() -> None:
    samples = _samples(_exposition(_status))
    expected = {
        "clearip_status_up": 1,
        "clearip_messages_in_total": 15,
        "clearip_invites_total": 5,
        'clearip_clearip_verdicts_total{verdict="302"}': 2,
        'clearip_clearip_verdicts_total{verdict="404"}': 0,
        'clearip_clearip_verdicts_total{verdict="503"}': 0,
        'clearip_clearip_verdicts_total{verdict="603"}': 0,
        'clearip_clearip_verdicts_total{verdict="other"}': 0,
        'clearip_clearip_verdicts_total{verdict="timeout"}': 1,
        'clearip_clearip_verdicts_total{verdict="unavailable"}': 1,
        "clearip_failovers_total": 0,
        "clearip_emergency_bypass_total": 0,
        "clearip_malformed_total": 0,
        "clearip_dropped_untrusted_total": 0,
        "clearip_internal_errors_total": 0,
        "clearip_calls_active": 2,
        'clearip_final_responses_total{code="200"}': 2,
        'clearip_final_responses_total{code="503"}': 2,
        'clearip_attestation_total{level="A"}': 2,
        'clearip_attestation_total{level="C"}': 1,
        'clearip_verstat_total{status="No-TN-Validation"}': 1,
        'clearip_verstat_total{status="TN-Validation-Passed"}': 3,
        "clearip_upstream_up": 1,
        "clearip_fastpath_enabled": 1,
        "clearip_fastpath_restored_total": 1,
        'clearip_relay_dropped_total{reason="indialog_refused"}': 3,
        'clearip_relay_dropped_total{reason="stun_untrusted"}': 4,
        "clearip_indialog_unknown_total": 0,
        "clearip_kernel_passed_packets_total": 8,
        "clearip_kernel_dropped_untrusted_packets_total": 90,
        "clearip_kernel_dropped_nonsip_packets_total": 0,
        "clearip_workers": 1,
        "clearip_workers_restarted_total": 3,
        "clearip_calls_lost_total": 0,
        "clearip_overload_active": 1,
        "clearip_overload_lag_seconds": 0.0525,
        "clearip_hep_messages_total": 42,
        "clearip_tap_dropped_total": 1,
        # ClearIP round trips 3, 5, 40, 7000 ms: cumulative, in seconds
        'clearip_clearip_rtt_seconds_bucket{le="0.005"}': 2,
        'clearip_clearip_rtt_seconds_bucket{le="0.01"}': 2,
        'clearip_clearip_rtt_seconds_bucket{le="0.025"}': 2,
        'clearip_clearip_rtt_seconds_bucket{le="0.05"}': 3,
        'clearip_clearip_rtt_seconds_bucket{le="0.1"}': 3,
        'clearip_clearip_rtt_seconds_bucket{le="0.25"}': 3,
        'clearip_clearip_rtt_seconds_bucket{le="0.5"}': 3,
        'clearip_clearip_rtt_seconds_bucket{le="1.0"}': 3,
        'clearip_clearip_rtt_seconds_bucket{le="2.5"}': 3,
        'clearip_clearip_rtt_seconds_bucket{le="5.0"}': 3,
        'clearip_clearip_rtt_seconds_bucket{le="+Inf"}': 4,
        "clearip_clearip_rtt_seconds_count": 4,
        "clearip_clearip_rtt_seconds_sum": 7.048,
        # set-up times 9, 120, 30000, 45000 ms
        'clearip_call_setup_seconds_bucket{le="0.01"}': 1,
        'clearip_call_setup_seconds_bucket{le="0.05"}': 1,
        'clearip_call_setup_seconds_bucket{le="0.1"}': 1,
        'clearip_call_setup_seconds_bucket{le="0.25"}': 2,
        'clearip_call_setup_seconds_bucket{le="0.5"}': 2,
        'clearip_call_setup_seconds_bucket{le="1.0"}': 2,
        'clearip_call_setup_seconds_bucket{le="2.5"}': 2,
        'clearip_call_setup_seconds_bucket{le="5.0"}': 2,
        'clearip_call_setup_seconds_bucket{le="10.0"}': 2,
        'clearip_call_setup_seconds_bucket{le="30.0"}': 3,
        'clearip_call_setup_seconds_bucket{le="+Inf"}': 4,
        "clearip_call_setup_seconds_count": 4,
        "clearip_call_setup_seconds_sum": 75.129,
    }
    for name, value in expected.items():
        assert samples.get(name) == pytest.approx(value), name
    # nothing unexpected, apart from prometheus-client's *_created samples (none here)
    assert set(samples) == set(expected)


def test_collector_on_an_empty_status_and_on_no_status() -> None:
    samples = _samples(_exposition(lambda: {}))
    assert samples["clearip_status_up"] == 1
    assert samples["clearip_messages_in_total"] == 0
    assert samples["clearip_upstream_up"] == 0
    assert samples['clearip_call_setup_seconds_bucket{le="30.0"}'] == 0
    assert samples['clearip_clearip_rtt_seconds_bucket{le="+Inf"}'] == 0

    def no_answer() -> dict[str, Any]:
        raise TimeoutError

    assert _samples(_exposition(no_answer)) == {"clearip_status_up": 0}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_scrape_over_http() -> None:
    server = start_metrics_server("127.0.0.1", _free_port(), _status)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            assert reply.status == 200
            text = reply.read().decode()
        lines = text.splitlines()
        assert "# TYPE clearip_invites_total counter" in lines
        assert "clearip_invites_total 5.0" in lines
        assert 'clearip_clearip_verdicts_total{verdict="302"} 2.0' in lines
        assert 'clearip_clearip_rtt_seconds_bucket{le="0.05"} 3.0' in lines
        assert "# TYPE clearip_call_setup_seconds histogram" in lines
        assert "clearip_upstream_up 1.0" in lines
        assert not any(line.startswith(("python_", "process_")) for line in lines)
        # a second server on the same address: OSError, which the supervisor only logs
        with pytest.raises(OSError):
            start_metrics_server("127.0.0.1", server.port, _status).stop()
    finally:
        server.stop()
    server.stop()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


# ---------------------------------------------------------------------------------------------
# `clearipctl run` (fake workers, see tests/test_supervisor.py) serving its own metrics


def _run_proxy(tmp_path: Path, port: int) -> tuple[subprocess.Popen[bytes], Path, Path]:
    config, run_dir, log = tmp_path / "proxy.toml", tmp_path / "run", tmp_path / "proxy.log"
    write_config(config, run_dir, f'metrics = "127.0.0.1:{port}"\n')
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [*CLEARIPCTL, "run", "--config", str(config)],
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    return proc, run_dir / "control.sock", log


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())
    except OSError:
        return None


def test_running_proxy_serves_its_status(tmp_path: Path) -> None:
    port = _free_port()
    proc, _, log = _run_proxy(tmp_path, port)
    try:
        # ready workers answer with the fake worker's fixed counters, two workers summed
        text = wait_until(
            lambda: (
                proc.poll() is not None
                or ((t := _scrape(port)) and "clearip_workers 2.0" in t.splitlines() and t)
            ),
            30,
            "the proxy's metrics",
        )
        assert proc.poll() is None, log.read_text()
        samples = _samples(text)
        assert samples["clearip_status_up"] == 1
        assert samples["clearip_messages_in_total"] == 10
        assert samples['clearip_clearip_verdicts_total{verdict="302"}'] == 2
        assert samples['clearip_final_responses_total{code="200"}'] == 2
        assert samples["clearip_upstream_up"] == 1
        assert samples["clearip_fastpath_enabled"] == 0
        assert samples['clearip_call_setup_seconds_bucket{le="+Inf"}'] == 0
    finally:
        assert _stop(proc) == 0
    assert f"metrics on http://127.0.0.1:{port}/metrics" in log.read_text()
    assert _scrape(port) is None  # closed at stop


def test_a_taken_metrics_port_is_logged_not_fatal(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        proc, sock, log = _run_proxy(tmp_path, port)
        try:
            wait_until(
                lambda: proc.poll() is not None or "cannot serve metrics" in log.read_text(),
                30,
                "the metrics error",
            )
            assert proc.poll() is None, log.read_text()
            status = request(str(sock), "status")
            assert isinstance(status, dict) and status["counters"]["messages_in"] == 10
        finally:
            assert _stop(proc) == 0
