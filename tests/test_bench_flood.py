"""tools/bench_flood.py without a lab: which phases run (Kamailio's when it is installed, skipped
with a note when not), what the table and summary show for the relay and Kamailio side by side,
and the counts of what got past the proxy read from the emulator's log and a SIPp message log."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


@pytest.fixture(scope="module")
def bf() -> ModuleType:
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))  # its `from benchcommon import ...`
    spec = importlib.util.spec_from_file_location("bench_flood", TOOLS / "bench_flood.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_flood"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _args(bf: ModuleType, *argv: str) -> argparse.Namespace:
    args = bf.build_parser().parse_args(list(argv))
    bf.resolve_args(args)
    return args


# ---------------------------------------------------------------------------- phases


def test_default_phases_include_kamailio(bf: ModuleType) -> None:
    args = _args(bf)
    assert args.phase_names == ["baseline", "on", "off", "kamailio-baseline", "kamailio"]
    assert bf.check_args(args) is None


def test_no_baseline_and_no_kamailio(bf: ModuleType) -> None:
    assert _args(bf, "--no-baseline").phase_names == ["on", "off", "kamailio"]
    assert _args(bf, "--no-kamailio").phase_names == ["baseline", "on", "off"]
    assert _args(bf, "--no-kamailio", "--no-baseline").phase_names == ["on", "off"]
    assert _args(bf, "--phases", "kamailio, off").phase_names == ["kamailio", "off"]


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--phases", "on,kamailo"], "--phases: a subset of"),
        (["--phases", "on,on"], "each phase once"),
        (["--phases", "kamailio", "--no-kamailio"], "no phase left"),
        (["--kamailio-children", "0"], "--kamailio-children"),
    ],
)
def test_check_args_refuses(bf: ModuleType, argv: list[str], problem: str) -> None:
    assert problem in (bf.check_args(_args(bf, *argv)) or "")


def test_kamailio_phases_skipped_with_a_note_when_unavailable(bf: ModuleType) -> None:
    names = ["baseline", "on", "kamailio-baseline", "kamailio"]
    assert bf.drop_kamailio(names, None) == (names, [])
    kept, notes = bf.drop_kamailio(names, "kamailio is not on PATH")
    assert kept == ["baseline", "on"]
    assert notes == ["skipped kamailio-baseline, kamailio: kamailio is not on PATH"]
    assert bf.drop_kamailio(["on"], "kamailio is not on PATH") == (["on"], [])
    assert bf.drop_kamailio(["kamailio"], "no cfg") == ([], ["skipped kamailio: no cfg"])


def test_kamailio_unavailable_says_why(
    bf: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bf.shutil, "which", lambda name: None)
    args = _args(bf, "--anchor", str(tmp_path))
    assert "not on PATH" in (bf.kamailio_unavailable(args) or "")
    assert args.kamailio is None
    monkeypatch.setattr(bf.shutil, "which", lambda name: f"/usr/sbin/{name}")
    assert "kamailio.cfg" in (bf.kamailio_unavailable(args) or "")
    (tmp_path / "kamailio.cfg").write_text("#!KAMAILIO\n")
    assert bf.kamailio_unavailable(args) is None
    assert args.kamailio == "/usr/sbin/kamailio"


def test_main_without_kamailio_and_only_kamailio_phases_skips(
    bf: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Never a failure: nothing left to run is a note and exit status 0."""
    import lab.netlab

    monkeypatch.setattr(lab.netlab, "netns_unavailable_reason", lambda: None)
    real_which = bf.shutil.which
    monkeypatch.setattr(
        bf.shutil, "which", lambda name: None if name == "kamailio" else real_which(name)
    )
    for tool in ("sipp", "tc", "nft"):
        if real_which(tool) is None:
            pytest.skip(f"{tool} not installed")
    assert bf.main(["--phases", "kamailio", "--anchor", str(tmp_path)]) == 0


# ---------------------------------------------------------------------------- report


def _phase(bf: ModuleType, name: str, *, ok: int, p50: float, cpu: float) -> object:
    spec = bf.PHASES[name]
    relay = spec.proxy == "relay"
    flood = (
        bf.FloodResult(
            flooders=1,
            sent=5_000_000,
            seconds=10.0,
            pps_sent=500_000.0,
            eth0_rx_pkts=4_000_000,
            eth0_rx_pps=400_000.0,
        )
        if spec.flood
        else None
    )
    calls = bf.CallResult(
        attempted=100,
        created=100,
        successful=ok,
        failed=100 - ok,
        setup_ms={"n": ok, "avg": p50, "p50": p50, "p95": p50 * 2, "p99": p50 * 3, "max": 99.0},
    )
    counters = (
        {
            "messages_in": 700_000,
            "dropped_untrusted": 600_000,
            "flood_messages_in": 650_000,
            "flood_sources_seen": 4096,
        }
        if relay
        else dict.fromkeys(
            ("messages_in", "dropped_untrusted", "flood_messages_in", "flood_sources_seen")
        )
    )
    drops = 3_000_000 if relay and spec.fastpath and spec.flood else (0 if relay else None)
    return bf.PhaseResult(
        phase=name,
        proxy=spec.proxy,
        fastpath=spec.fastpath,
        flood=flood,
        calls=calls,
        relay={
            **counters,
            "cpu_pct": cpu,
            "cpu_seconds": 1.0,
            "window_s": 10.0,
            "processes": 3,
            "processes_gone": 0,
        },
        kernel={
            "fastpath_dropped_untrusted": drops,
            "drops_per_s": None if drops is None else drops / 10,
            "qdisc_drops": None,
            "udp_in_datagrams": 123_456,
            "udp_rcvbuf_errors": 77_000,
            "udp_rcvbuf_errors_per_s": 7_700.0,
        },
        fastpath_status={},
        passed={
            "clearip": {
                "invites": 1100,
                "flood_invites": 1000 if not relay else 0,
                "flood_repeated": 300 if not relay else 0,
                "connections": 1,
            },
            "provider_flood_invites": 900 if not relay else 0,
            "provider_flood_branches": 800 if not relay else 0,
            "provider_calls": 1000,
        },
    )


def test_table_shows_kamailio_beside_the_relay(bf: ModuleType) -> None:
    phases = [
        _phase(bf, "baseline", ok=100, p50=4.0, cpu=7.0),
        _phase(bf, "off", ok=2, p50=2000.0, cpu=97.0),
        _phase(bf, "kamailio-baseline", ok=100, p50=2.0, cpu=3.0),
        _phase(bf, "kamailio", ok=10, p50=900.0, cpu=150.0),
    ]
    lines = bf.render_table(phases).splitlines()
    assert "proxy CPU" in lines[0] and "flood to ClearIP/prov" in lines[0]
    rows = {line.split()[0]: line for line in lines[1:] if not line.startswith("-")}
    assert set(rows) == {"baseline", "off", "kamailio-baseline", "kamailio"}
    assert "(fast path off)" in rows["off"] and "700,000 (650,000 flood)" in rows["off"]
    kam = rows["kamailio"]
    assert "(Kamailio)" in kam and "150.0%" in kam and "10/90 of 100" in kam
    assert "1,000/900" in kam  # flood INVITEs on to ClearIP / the provider
    # no relay counters, no fast path: "-" in those columns
    cells = re.split(r" {2,}", kam.strip())
    assert cells[3:7] == ["-", "7,700", "-", "-"], kam
    assert "0/0" in rows["off"]


def test_summary_compares_the_flood_phases(bf: ModuleType) -> None:
    phases = [
        _phase(bf, "baseline", ok=100, p50=4.0, cpu=7.0),
        _phase(bf, "on", ok=100, p50=4.0, cpu=7.0),
        _phase(bf, "off", ok=2, p50=2000.0, cpu=97.0),
        _phase(bf, "kamailio-baseline", ok=100, p50=2.0, cpu=3.0),
        _phase(bf, "kamailio", ok=10, p50=900.0, cpu=150.0),
    ]
    text = "\n".join(bf.summary(phases))
    assert "sent 1,000 flood INVITEs to ClearIP (300 of them one sent before, again)" in text
    assert "provider got 900 (800 distinct branches)" in text
    assert "kamailio 10/100 / 900.0, 2700.0 ms / 150.0%" in text
    assert "on 100/100" in text and "off 2/100" in text
    assert "kamailio: setup p50 900.0 ms vs 2.0 ms without flood (x450.00)" in text
    assert "off: setup p50 2000.0 ms vs 4.0 ms without flood" in text
    # Kamailio alone: no relay lines, no error
    alone = bf.summary([_phase(bf, "kamailio", ok=10, p50=900.0, cpu=150.0)])
    assert len(alone) == 1 and alone[0].startswith("Kamailio")


# ---------------------------------------------------------------------------- passed counts


def test_clearip_invites_from_the_emulator_log(bf: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "clearip.jsonl"
    records = [
        {"event": "connect"},
        {"event": "request", "method": "INVITE", "call_id": "abc@10.77.0.11"},
        {"event": "request", "method": "INVITE", "call_id": "flood-0-1@10.78.0.2"},
        {
            "event": "request",
            "method": "INVITE",
            "call_id": "flood-0-1@10.78.0.2",
            "retransmission": True,
        },
        {"event": "request", "method": "ACK", "call_id": "flood-0-1@10.78.0.2"},
        {"event": "response", "status": 302, "call_id": "flood-0-1@10.78.0.2"},
    ]
    log.write_text("\n".join(json.dumps(r) for r in records) + '\n{"event": "requ')
    # over TCP nothing is retransmitted: a repeated Call-ID + branch is a new query (Kamailio)
    assert bf._clearip_invites(log) == {
        "invites": 3,
        "flood_invites": 2,
        "flood_repeated": 1,
        "connections": 1,
    }
    assert bf._clearip_invites(tmp_path / "missing.jsonl")["invites"] == 0


def _traced(direction: str, text: str) -> str:
    head = "-" * 30 + " 2024-01-01 00:00:00.000000\n"
    return f"{head}UDP message {direction} [{len(text)}] bytes :\n\n{text}\n\n"


def test_flood_invites_received_by_the_provider(bf: ModuleType, tmp_path: Path) -> None:
    def invite(call_id: str, branch: str) -> str:
        return (
            "INVITE sip:+12025550100@10.77.0.13:5060 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 10.77.0.10;branch={branch}\r\n"
            "Via: SIP/2.0/UDP 10.78.0.2:10000;branch=z9hG4bK-flood-0-1\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )

    log = tmp_path / "messages.log"
    log.write_text(
        _traced("received", invite("flood-0-1@10.78.0.2", "z9hG4bKa.1"))
        + _traced("received", invite("flood-0-1@10.78.0.2", "z9hG4bKa.1"))  # retransmission
        + _traced("received", invite("flood-0-2@10.78.0.3", "z9hG4bKb.1"))
        + _traced("received", invite("trusted-1@10.77.0.11", "z9hG4bKc.1"))
        + _traced("sent", invite("flood-0-9@10.78.0.9", "z9hG4bKd.1"))
        + _traced("received", "SIP/2.0 200 OK\r\nCall-ID: flood-0-3@x\r\nVia: x;branch=e\r\n")
    )
    assert bf._flood_invites_received(log) == {"invites": 3, "branches": 2}
    assert bf._flood_invites_received(tmp_path / "missing.log") == {"invites": 0, "branches": 0}
