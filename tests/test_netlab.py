"""The end-to-end harness itself: labs of network namespaces (lab/netlab.py), SIPp runs
(lab/sippy_runner.py) and every scenario of tests/e2e/scenarios/ proven against a SIPp
counterpart directly, with no proxy in between, so a later proxy test that fails points at
the proxy and not at the harness."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from lab.netlab import NetLab, cleanup_stale, list_namespaces, namespace_pids
from lab.sippy_runner import (
    SCENARIOS,
    TlsFront,
    make_tls_files,
    run_sipp,
    start_sipp,
)

from tests.netlab import skip_unless_netns

pytestmark = pytest.mark.root

CALLED = "12025550123"


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


# ---------------------------------------------------------------------- the lab


def test_lab_builds_hosts_and_leaves_nothing(netlab_factory):
    lab: NetLab = netlab_factory()
    switch = lab.add_host("switch")
    provider = lab.add_host("provider", ipv4="10.77.0.50/24", ipv6="fd77::50/64")
    assert (switch.ip, switch.ip6, switch.ifname) == ("10.77.0.11", "fd77::11", "eth0")
    assert (provider.ip, provider.ip6) == ("10.77.0.50", "fd77::50")
    assert lab.add_host("extra", ipv6=None).ip6 is None

    ours = {ns for ns in list_namespaces() if ns.startswith(lab.prefix + "-")}
    assert ours == {f"{lab.prefix}-{n}" for n in ("hub", "switch", "provider", "extra")}
    addrs = switch.run(["ip", "-br", "addr", "show", "dev", "eth0"]).stdout
    assert "10.77.0.11/24" in addrs and "fd77::11/64" in addrs

    # both families, both ways, usable at once (no DAD wait)
    assert switch.ping(provider.ip)
    assert switch.ping(provider.ip6)
    assert provider.ping(switch.ip6)
    assert not switch.ping("10.77.0.99", timeout=0.3)  # nobody there: the check can fail

    provider.add_address("10.78.0.5/32")
    switch.add_route("10.78.0.0/24", via=provider.ip)
    assert switch.ping("10.78.0.5")

    # processes, one of which forks a child the lab never saw
    sleeper = provider.popen(["sleep", "60"])
    forker = switch.popen(["sh", "-c", "sleep 61 & sleep 62; wait"])
    deadline = time.monotonic() + 5
    while len(namespace_pids(switch.ns)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    inside = namespace_pids(switch.ns) + namespace_pids(provider.ns)
    assert sleeper.pid in inside and forker.pid in inside and len(inside) >= 4

    lab.close()
    assert not [ns for ns in list_namespaces() if ns.startswith(lab.prefix)]
    assert sleeper.returncode == -signal.SIGTERM and forker.returncode is not None
    assert all(_gone(pid) for pid in inside)
    lab.close()  # idempotent


def test_cleanup_stale_takes_only_dead_runs(netlab):
    dead_pid = 4_000_000  # above any pid_max in use here: a run that is gone
    assert _gone(dead_pid)
    tag = secrets.token_hex(2)  # parallel runs of this test don't meet
    stale = f"cipl-{dead_pid}-{tag}-switch"
    live = f"cipl-{os.getpid()}-{tag}-switch"
    for ns in (stale, live):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        removed = cleanup_stale(f"cipl-*-{tag}-*")
        names = list_namespaces()
        assert stale not in names and live in names and live not in removed
        assert netlab.hub in list_namespaces()  # the fixture's own lab is alive: untouched
    finally:
        for ns in (stale, live):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


# ---------------------------------------------------------------------- SIPp through the lab


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_three_calls_switch_to_provider(netlab, transport):
    switch, provider = netlab.add_host("switch"), netlab.add_host("provider")
    uas = start_sipp(provider, "uas_provider_ok.xml", transport=transport, calls=3, timeout=20)
    uac = run_sipp(
        switch,
        "uac_direct_call.xml",
        remote=provider.hostport(5060),
        transport=transport,
        calls=3,
        rate=20,
        service=CALLED,
        timeout=15,
        recv_timeout=5,
    )
    got = uas.wait(timeout=10)
    assert (uac.rc, uac.successful, uac.failed) == (0, 3, 0), uac
    assert (got.rc, got.successful, got.failed) == (0, 3, 0), got
    assert uac.retransmissions == 0 and got.retransmissions == 0

    invites = got.received("INVITE")
    assert len(invites) == 3
    assert all(m.transport == ("UDP" if transport == "u1" else "TCP") for m in invites)
    assert invites[0].header("Identity")[0].startswith("eyJ")
    assert invites[0].first_line == f"INVITE sip:+{CALLED}@{provider.ip}:5060;user=phone SIP/2.0"
    assert "INVITE ok:" in got.logs  # the scenario's <log>, -trace_logs
    oks = uac.received(200)
    assert len(oks) == 6 and oks[0].header("Record-Route")  # 3 x INVITE 200 + 3 x BYE 200
    sent = [m.method for m in uac.sent()]
    assert sorted(sent) == ["ACK"] * 3 + ["BYE"] * 3 + ["INVITE"] * 3


def test_call_over_ipv6(netlab):
    switch, provider = netlab.add_host("switch"), netlab.add_host("provider")
    uas = start_sipp(provider, "uas_provider_ok.xml", local_ip=provider.ip6, timeout=15)
    uac = run_sipp(
        switch,
        "uac_direct_call.xml",
        remote=provider.hostport(5060, v6=True),
        service=CALLED,
        timeout=10,
        recv_timeout=5,
    )
    got = uas.wait(timeout=10)
    assert (uac.successful, uac.failed) == (1, 0), uac
    assert (got.successful, got.failed) == (1, 0), got
    assert f"@[{provider.ip6}]:5060" in got.received("INVITE")[0].first_line


def test_tls_fronts_carry_a_call(netlab):
    """switch sipp --TCP--> socat --TLS (verified)--> socat --TCP--> provider sipp."""
    switch, provider = netlab.add_host("switch"), netlab.add_host("provider")
    tls = make_tls_files(netlab.workdir / "pki", "provider", ips=[provider.ip])
    uas = start_sipp(provider, "uas_provider_ok.xml", transport="t1", local_port=5062, timeout=15)
    with (
        TlsFront.server(provider, 5062, cert=tls.cert, key=tls.key, listen_port=5061) as back,
        TlsFront.client(switch, provider.hostport(5061), cafile=tls.ca, listen_port=15061) as front,
    ):
        assert front.listen == f"{switch.ip}:15061"
        uac = run_sipp(
            switch,
            "uac_direct_call.xml",
            remote=front.listen,
            transport="t1",
            service=CALLED,
            timeout=10,
            recv_timeout=5,
        )
        got = uas.wait(timeout=10)
    assert (uac.successful, uac.failed) == (1, 0), f"{uac}\n{front.log}\n{back.log}"
    assert (got.successful, got.failed) == (1, 0), got
    assert "SSL connection using" in front.log and "SSL connection using" in back.log

    # a client front that checks the certificate against the wrong name refuses the peer
    with TlsFront.client(
        switch, provider.hostport(5061), cafile=tls.ca, servername="x.example", listen_port=15062
    ) as bad:
        uac = run_sipp(
            switch,
            "uac_direct_call.xml",
            remote=bad.listen,
            transport="t1",
            service=CALLED,
            timeout=5,
            recv_timeout=2,
        )
    assert uac.successful == 0


# ---------------------------------------------------------------------- every scenario, in pairs


@pytest.fixture(scope="module")
def pair_lab(tmp_path_factory) -> Iterator[NetLab]:
    skip_unless_netns()
    with NetLab(workdir=tmp_path_factory.mktemp("pairs")) as lab:
        lab.add_host("switch")
        lab.add_host("provider")
        yield lab


REJECT = {  # uas_reject.xml keys per code
    403: ("Forbidden", 'SIP;cause=403;text="SBC not registered"'),
    404: ("Not Found", 'SIP;cause=404;text="Unknown SBC"'),
    483: ("Too Many Hops", 'SIP;cause=483;text="Max-Forwards exhausted"'),
    603: ("Decline", 'SIP;cause=603;text="Robocall blocked"'),
}

# (id, UAC scenario, UAS scenario, UAC -set, UAS fill/-set, (UAC ok, UAS ok))
PAIRS = [
    ("pai", "uac_direct_call", "uas_provider_pai_ok", {}, {}, (True, True)),
    # the switch's own INVITE lacks Identity, verstat, Max-Forwards 69 and Record-Route:
    # the provider's checks fail the call there, and the switch misses its Record-Route
    ("checks-bite", "uac_call", "uas_provider_ok", {}, {}, (False, False)),
    ("checks-bite-pai", "uac_call", "uas_provider_pai_ok", {}, {}, (False, False)),
    ("486", "uac_expect_486", "uas_provider_486",
     {"expect_phrase": "Busy Here", "expect_reason": 'Q.850;cause=17;text="User busy"'},
     {}, (True, True)),
    ("486-phrase-mismatch", "uac_expect_486", "uas_provider_486",
     {"expect_phrase": "Busy Somewhere"}, {}, (False, True)),
    ("486-reason-mismatch", "uac_expect_486", "uas_provider_486",
     {"expect_reason": "Q.850;cause=17"}, {}, (False, True)),
    ("486-wrong-code", "uac_expect_603", "uas_provider_486", {}, {}, (False, True)),
    ("503", "uac_expect_503", "uas_provider_503",
     {"expect_phrase": "Service Unavailable",
      "expect_reason": 'Q.850;cause=34;text="No circuit/channel available"'},
     {}, (True, True)),
    # the fault suite's switch: a 503 is an answer it accepts (and ACKs), a 486 is not
    ("or-503", "uac_call_or_503", "uas_provider_503", {}, {}, (True, True)),
    ("or-503-not-486", "uac_call_or_503", "uas_provider_486", {}, {}, (False, True)),
    ("480", "uac_expect_480", "uas_provider_480",
     {"expect_phrase": "Temporarily Unavailable"}, {}, (True, True)),
    *[
        (f"{code}", f"uac_expect_{code}", "uas_reject",
         {"expect_phrase": phrase, "expect_reason": reason},
         {"fill": {"code": str(code), "phrase": phrase, "reason": reason}}, (True, True))
        for code, (phrase, reason) in REJECT.items()
    ],
    ("cancel", "uac_cancel", "uas_provider_ring_then_cancel", {}, {}, (True, True)),
    ("cancel-late-180", "uac_cancel", "uas_provider_late_180", {},
     {"set": {"hold_ms": "300"}}, (True, True)),
    ("cancel-early", "uac_cancel_early", "uas_trying_then_cancel", {}, {}, (True, True)),
    ("late-200", "uac_direct_call", "uas_provider_late_200", {},
     {"set": {"hold_ms": "300"}}, (True, True)),
    ("silent", "uac_direct_call", "uas_provider_silent", {},
     {"set": {"hold_ms": "700"}}, (False, True)),
    ("options", "uac_options", "uas_options", {}, {}, (True, True)),
]  # fmt: skip


TCP_TOO = {"486", "cancel", "cancel-early", "late-200", "options"}

# why the failing side fails, per pair: (UAC cause, UAS cause)
REGEXP, UNEXPECTED = "FailedRegexpDoesntMatch(C)", "FailedUnexpectedMessage(C)"
CAUSES = {
    "checks-bite": (REGEXP, REGEXP),
    "checks-bite-pai": (REGEXP, REGEXP),
    "486-phrase-mismatch": (REGEXP, None),
    "486-reason-mismatch": (REGEXP, None),
    "486-wrong-code": (UNEXPECTED, None),
    "or-503-not-486": (UNEXPECTED, None),
    "silent": ("FailedTimeoutOnRecv(C)", None),
}


@pytest.mark.parametrize(
    ("pair", "transport", "uac_xml", "uas_xml", "uac_sets", "uas_args", "expected"),
    [pytest.param(p[0], "u1", *p[1:], id=p[0]) for p in PAIRS]
    + [pytest.param(p[0], "t1", *p[1:], id=f"{p[0]}-tcp") for p in PAIRS if p[0] in TCP_TOO],
)
def test_scenario_pair(pair_lab, pair, transport, uac_xml, uas_xml, uac_sets, uas_args, expected):
    switch, provider = pair_lab["switch"], pair_lab["provider"]
    uas = start_sipp(
        provider,
        uas_xml,
        transport=transport,
        timeout=15,
        fill=uas_args.get("fill"),
        sets=uas_args.get("set"),
        name=f"{uas_xml}-for-{uac_xml}",
    )
    try:
        uac = run_sipp(
            switch,
            uac_xml,
            remote=provider.hostport(5060),
            transport=transport,
            service=CALLED,
            sets=uac_sets,
            timeout=10,
            recv_timeout=1.0,
        )
    finally:
        got = uas.wait(timeout=10) if uas.running else uas.result()
    uac_ok, uas_ok = expected
    assert (uac.successful, uac.failed) == ((1, 0) if uac_ok else (0, 1)), uac
    assert (got.successful, got.failed) == ((1, 0) if uas_ok else (0, 1)), got
    uac_cause, uas_cause = CAUSES.get(pair, (None, None))
    assert uac.failures == ({uac_cause: 1} if uac_cause else {}), uac
    assert got.failures == ({uas_cause: 1} if uas_cause else {}), got
    if uac_ok and uas_ok:
        assert uac.rc == 0 and got.rc == 0, (uac, got)


# An INVITE, then a CANCEL 300 ms later without waiting for any response: what a proxy must
# never do to a branch that sent no provisional (RFC 3261 §9.1). No SIPp UAC can send it.
_BLIND_CANCEL = r"""
import socket, sys, time
dst, src = (sys.argv[1], 5060), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 5099))
def msg(method):
    return (f"{method} sip:+1@{dst[0]}:5060 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {src}:5099;branch=z9hG4bK-blind1\r\n"
            f"From: <sip:a@{src}>;tag=t1\r\nTo: <sip:+1@{dst[0]}>\r\n"
            f"Call-ID: blind-1@{src}\r\nCSeq: 1 {method}\r\n"
            f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
s.sendto(msg("INVITE"), dst)
time.sleep(0.3)
s.sendto(msg("CANCEL"), dst)
"""


@pytest.mark.parametrize(
    "uas_xml", ["uas_provider_silent", "uas_provider_late_200", "uas_provider_late_180"]
)
def test_cancel_before_any_provisional_fails_the_quiet_providers(pair_lab, uas_xml):
    switch, provider = pair_lab["switch"], pair_lab["provider"]
    uas = start_sipp(provider, uas_xml, sets={"hold_ms": "2000"}, timeout=10)
    switch.run([sys.executable, "-c", _BLIND_CANCEL, provider.ip, switch.ip], timeout=10)
    got = uas.wait(timeout=10)
    assert (got.successful, got.failed) == (0, 1), got
    assert got.failures == {"FailedUnexpectedMessage(C)": 1}, got


def test_every_scenario_is_exercised():
    used = {p[1] for p in PAIRS} | {p[2] for p in PAIRS} | {"uac_call", "uas_provider_ok"}
    assert {p.stem for p in SCENARIOS.glob("*.xml")} <= used
