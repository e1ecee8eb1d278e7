"""The call flows of SPEC §3 end to end: real SIPp peers, the emulator as ClearIP over TLS, and
`clearipctl run` (two workers, the default fast configuration) in network namespaces.

Each test asserts what the far peer actually received and the counters of `status --json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clearip.stir import load_key, parse_identity, verify_passport
from tests.netlab import Host, NetLab, skip_unless_netns
from tests.sippy_runner import TlsFront, make_tls_files, run_sipp, start_sipp

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python")
PROXY_IP, SWITCH_IP, CLEARIP_IP, PROV_A_IP, PROV_B_IP, ROGUE_IP = (
    "10.77.0.10", "10.77.0.11", "10.77.0.12", "10.77.0.13", "10.77.0.14", "10.77.0.66",
)  # fmt: skip

# dialled numbers (the switch scenarios dial "+<service>") -> what the emulator answers
OUTBOUND = "12025550100"  # 302: A q=1.0, B q=0.5, Identity
IN_CONTACT = "12025550200"  # 302 with the Identity embedded in the Contact URIs
INBOUND = "13035550777"  # 302 to the switch with P-Asserted-Identity (verification)
DECLINE = "19005550603"  # 603 with Reason
OVERLOAD = "14045550503"  # 503 with Reason
NOT_REGISTERED = "15055550404"  # 404
SILENT = "16065550999"  # never answers
RESET = "17075550000"  # resets the TLS connection on every INVITE
SLOW = "18085550000"  # 302 after 1 s (a CANCEL meanwhile gets 200 + 487)
VIA_TCP = "12025550300"  # 302 to provider B over TCP

RULES = f"""
[defaults]
x5u = "https://cr.example.org/cert.pem"
attest = "A"

[[rule]]
match = "^\\\\+?{OUTBOUND}$"
contacts = ["sip:{{number}}@{PROV_A_IP}:5060;q=1.0", "sip:{{number}}@{PROV_B_IP}:5060;q=0.5"]
identity = true

[[rule]]
match = "^\\\\+?{IN_CONTACT}$"
contacts = ["sip:{{number}}@{PROV_A_IP}:5060;q=1.0"]
identity = true
identity_in_contact = true

[[rule]]
match = "^\\\\+?{INBOUND}$"
contacts = ["sip:{{number}}@{SWITCH_IP}:5060"]
pai = "<sip:{{from}}@clearip.example.org;user=phone;verstat=TN-Validation-Passed>"

[[rule]]
match = "^\\\\+?{DECLINE}$"
action = "603"
reason = "Q.850;cause=21;text=\\"Call Rejected\\""

[[rule]]
match = "^\\\\+?{OVERLOAD}$"
action = "503"
reason = "Q.850;cause=41;text=\\"Temporary Failure\\""

[[rule]]
match = "^\\\\+?{NOT_REGISTERED}$"
action = "404"

[[rule]]
match = "^\\\\+?{SILENT}$"
action = "silent"

[[rule]]
match = "^\\\\+?{RESET}$"
action = "reset"

[[rule]]
match = "^\\\\+?{VIA_TCP}$"
contacts = ["sip:{{number}}@{PROV_B_IP}:5060;transport=tcp"]
identity = true

[[rule]]
match = "^\\\\+?{SLOW}$"
contacts = ["sip:{{number}}@{PROV_A_IP}:5060"]
delay = 1.0
"""


class Lab:
    """The lab of this module: switch, proxy, ClearIP, providers A and B, a rogue host."""

    def __init__(self, net: NetLab) -> None:
        self.net = net
        ip = lambda a: f"{a}/24"  # noqa: E731
        self.proxy = net.add_host("proxy", ip(PROXY_IP), None)
        self.switch = net.add_host("switch", ip(SWITCH_IP), None)
        self.clearip = net.add_host("clearip", ip(CLEARIP_IP), None)
        self.prov_a = net.add_host("prova", ip(PROV_A_IP), None)
        self.prov_b = net.add_host("provb", ip(PROV_B_IP), None)
        self.rogue = net.add_host("rogue", ip(ROGUE_IP), None)
        work = net.workdir
        self.tls = make_tls_files(work / "tls", "clearip", ips=[CLEARIP_IP])
        self.proxy_tls = make_tls_files(work / "tls", "proxy", ips=[PROXY_IP])
        self.signing_key = work / "signing.pem"
        self.emu_log = work / "emulator.jsonl"
        (work / "rules.toml").write_text(RULES)
        self.emulator = self.clearip.popen([
            PYTHON, str(REPO / "tools" / "clearip_emulator.py"),
            "--rules", str(work / "rules.toml"), "--listen", f"tls:{CLEARIP_IP}:5061",
            "--cert", str(self.tls.cert), "--key", str(self.tls.key),
            "--signing-key", str(self.signing_key), "--log", str(self.emu_log),
        ])  # fmt: skip
        self.clearip.wait_tcp(5061, ip=CLEARIP_IP, proc=self.emulator)
        self.config = work / "proxy.toml"
        self.config.write_text(f"""
[listen]
udp = ["{PROXY_IP}:5060"]
tcp = ["{PROXY_IP}:5060"]
tls = ["{PROXY_IP}:5061"]
tls_cert = "{self.proxy_tls.cert}"
tls_key = "{self.proxy_tls.key}"
[clearip]
uri = "sip:{CLEARIP_IP}:5061;transport=tls"
ca_file = "{self.tls.ca}"
timeout = 1.5
[routing]
provider_timeout = 2.0
[trust]
sources = ["10.77.0.0/28"]
[fastpath]
enabled = false
[control]
socket = "{work}/ctl.sock"
state_dir = "{work}/state"
metrics = ""
log_level = "info"
""")
        env = {**os.environ, "PYTHONPATH": str(REPO / "control")}
        self.proxy_proc = self.proxy.popen(
            [str(REPO / ".venv" / "bin" / "clearipctl"), "run", "--config", str(self.config)],
            env=env,
        )
        self.proxy.wait_udp(5060, ip=PROXY_IP, proc=self.proxy_proc)
        self.wait_upstream()

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [str(REPO / ".venv" / "bin" / "clearipctl"), "status", "--json",
             "--config", str(self.config)],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return json.loads(out.stdout)

    def wait_upstream(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status()["upstream"]["state"] == "connected":
                return
            time.sleep(0.1)
        raise AssertionError(f"ClearIP link never came up: {self.status()['upstream']}")

    def counters(self) -> dict[str, int]:
        return self.status()["counters"]

    def emulator_requests(self) -> list[dict[str, Any]]:
        lines = self.emu_log.read_text().splitlines() if self.emu_log.exists() else []
        return [r for r in map(json.loads, lines) if r.get("event") == "request"]

    def call(self, scenario: str, service: str, host: Host | None = None, **kw: Any):
        return run_sipp(
            host or self.switch, scenario, remote=f"{PROXY_IP}:5060", service=service,
            timeout=20, **kw,
        )  # fmt: skip

    def provider(self, host: Host, scenario: str, **kw: Any):
        return start_sipp(host, scenario, timeout=30, **kw)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    skip_unless_netns()
    with NetLab() as net:
        yield Lab(net)


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def test_outbound_302_identity_over_udp(lab: Lab) -> None:
    before = lab.counters()
    uas = lab.provider(lab.prov_a, "uas_provider_ok.xml")
    res = lab.call("uac_call.xml", OUTBOUND)
    got = uas.wait()
    assert (res.successful, res.failed) == (1, 0), res
    assert got.successful == 1, got
    invite = got.received("INVITE")[0]
    [identity] = invite.header("Identity")
    passport = parse_identity(identity)
    assert passport.attest == "A"
    assert verify_passport(passport, load_key(lab.signing_key).public_key())
    assert invite.header("Record-Route")
    assert invite.first_line.startswith(f"INVITE sip:+{OUTBOUND}@{PROV_A_IP}:5060")
    d = delta(before, lab.counters())
    assert d["invites"] == 1 and d["clearip_302"] == 1
    assert "failovers" not in d
    asked = [r for r in lab.emulator_requests() if r.get("method") == "INVITE"]
    assert asked and asked[-1]["number"] == f"+{OUTBOUND}" and asked[-1]["transport"] == "tls"


def test_failover_503_to_second_contact_over_tcp(lab: Lab) -> None:
    before = lab.counters()
    a = lab.provider(lab.prov_a, "uas_provider_503.xml")
    b = lab.provider(lab.prov_b, "uas_provider_ok.xml")
    res = lab.call("uac_call.xml", OUTBOUND, transport="t1")
    assert (res.successful, res.failed) == (1, 0), res
    assert a.wait().successful == 1
    got = b.wait()
    assert got.successful == 1
    assert delta(before, lab.counters())["failovers"] == 1
    # TCP toward the switch, UDP toward the provider: RFC 5658 double Record-Route
    rr = got.received("INVITE")[0].header("Record-Route")
    assert rr == [f"<sip:{PROXY_IP}:5060;lr>", f"<sip:{PROXY_IP}:5060;transport=tcp;lr>"]


def test_full_call_over_tls_switch_leg(lab: Lab) -> None:
    uas = lab.provider(lab.prov_a, "uas_provider_ok.xml")
    with TlsFront.client(lab.switch, f"{PROXY_IP}:5061", cafile=lab.proxy_tls.ca) as front:
        res = run_sipp(
            lab.switch, "uac_call.xml", remote=front.listen, transport="t1", service=OUTBOUND,
            timeout=20, local_port=5070,
        )  # fmt: skip
    assert (res.successful, res.failed) == (1, 0), res
    assert uas.wait().successful == 1


def test_provider_over_tcp_from_udp_switch(lab: Lab) -> None:
    """Contact ;transport=tcp: the proxy opens TCP to the provider; ACK and BYE reuse it.

    One call: SIPp as a TCP server answers only on the first connection it accepted, and
    each relay worker opens a connection of its own.
    """
    uas = lab.provider(lab.prov_b, "uas_provider_ok.xml", transport="t1")
    res = lab.call("uac_call.xml", VIA_TCP)
    got = uas.wait()
    assert (res.successful, res.failed) == (1, 0), res
    assert got.successful == 1, got
    rr = got.received("INVITE")[0].header("Record-Route")
    assert rr == [f"<sip:{PROXY_IP}:5060;transport=tcp;lr>", f"<sip:{PROXY_IP}:5060;lr>"]


def test_identity_embedded_in_contact(lab: Lab) -> None:
    uas = lab.provider(lab.prov_a, "uas_provider_ok.xml")
    res = lab.call("uac_call.xml", IN_CONTACT)
    got = uas.wait()
    assert (res.successful, got.successful) == (1, 1), res
    invite = got.received("INVITE")[0]
    assert "?" not in invite.first_line  # the embedded headers are not in the Request-URI
    assert parse_identity(invite.header("Identity")[0]).attest == "A"


def test_inbound_302_with_p_asserted_identity(lab: Lab) -> None:
    switch_uas = lab.provider(lab.switch, "uas_provider_pai_ok.xml")
    res = lab.call("uac_call.xml", INBOUND, host=lab.prov_a)
    got = switch_uas.wait()
    assert (res.successful, got.successful) == (1, 1), res
    [pai] = got.received("INVITE")[0].header("P-Asserted-Identity")
    assert "verstat=TN-Validation-Passed" in pai


def test_486_relayed_without_failover(lab: Lab) -> None:
    a = lab.provider(lab.prov_a, "uas_provider_486.xml")
    res = lab.call("uac_expect_486.xml", OUTBOUND)
    assert (res.successful, res.failed) == (1, 0), res
    assert a.wait().successful == 1


@pytest.mark.parametrize(
    ("service", "scenario", "phrase", "reason", "counter"),
    [
        (DECLINE, "uac_expect_603.xml", "Decline", 'Q.850;cause=21;text="Call Rejected"',
         "clearip_603"),
        (OVERLOAD, "uac_expect_503.xml", "Service Unavailable",
         'Q.850;cause=41;text="Temporary Failure"', "clearip_503"),
        (NOT_REGISTERED, "uac_expect_404.xml", "Not Found", "", "clearip_404"),
        (SILENT, "uac_expect_503.xml", "ClearIP unavailable", "", "clearip_timeout"),
    ],
)  # fmt: skip
def test_clearip_verdicts_relayed(
    lab: Lab, service: str, scenario: str, phrase: str, reason: str, counter: str
) -> None:
    before = lab.counters()
    res = lab.call(scenario, service, sets={"expect_phrase": phrase, "expect_reason": reason})
    assert (res.successful, res.failed) == (1, 0), res
    assert delta(before, lab.counters())[counter] == 1


def test_emergency_never_reaches_clearip(lab: Lab) -> None:
    before = lab.counters()
    seen = len(lab.emulator_requests())
    res = lab.call("uac_expect_503.xml", "1911")  # dials +1911
    assert (res.successful, res.failed) == (1, 0), res
    assert len(lab.emulator_requests()) == seen
    assert delta(before, lab.counters())["emergency_bypass"] == 1


def test_cancel_at_provider_stage(lab: Lab) -> None:
    a = lab.provider(lab.prov_a, "uas_provider_ring_then_cancel.xml")
    res = lab.call("uac_cancel.xml", OUTBOUND)
    assert (res.successful, res.failed) == (1, 0), res
    assert a.wait().successful == 1


def test_provider_silent_fails_over_after_provider_timeout(lab: Lab) -> None:
    a = lab.provider(lab.prov_a, "uas_provider_silent.xml")
    b = lab.provider(lab.prov_b, "uas_provider_ok.xml")
    res = lab.call("uac_call.xml", OUTBOUND)
    assert (res.successful, res.failed) == (1, 0), res
    assert b.wait().successful == 1
    a.stop()


def test_options_answered_locally(lab: Lab) -> None:
    res = lab.call("uac_options.xml", OUTBOUND)
    assert (res.successful, res.failed) == (1, 0), res


def test_max_forwards_zero_gets_483(lab: Lab) -> None:
    res = lab.call("uac_expect_483.xml", OUTBOUND)
    assert (res.successful, res.failed) == (1, 0), res


def test_untrusted_source_is_dropped(lab: Lab) -> None:
    before = lab.counters()
    res = run_sipp(
        lab.rogue, "uac_expect_403.xml", remote=f"{PROXY_IP}:5060", service=OUTBOUND,
        timeout=3,
    )  # fmt: skip
    assert res.successful == 0 and not res.received(), res  # not even a 100 Trying
    assert delta(before, lab.counters())["dropped_untrusted"] >= 1


def ctl(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "clearipctl"), *args, "--config", str(lab.config)],
        capture_output=True, text=True, timeout=15,
    )  # fmt: skip


def test_allow_and_deny_act_live(lab: Lab) -> None:
    def options_answered() -> bool:
        res = run_sipp(lab.rogue, "uac_options.xml", remote=f"{PROXY_IP}:5060",
                       service=OUTBOUND, timeout=3)  # fmt: skip
        return res.successful == 1

    assert not options_answered()
    done = ctl(lab, "allow", ROGUE_IP, "--note", "lab rogue")
    assert done.returncode == 0, done.stderr
    assert "applied to the running proxy" in done.stdout
    assert options_answered()
    listed = json.loads(ctl(lab, "trusted", "--json").stdout)
    entry = next(e for e in listed if e["cidr"] == f"{ROGUE_IP}/32")
    assert entry["origin"] == "state" and entry["note"] == "lab rogue"
    assert entry["counters"]["messages_in"] >= 1
    assert ctl(lab, "deny", ROGUE_IP).returncode == 0
    assert not options_answered()
    refused = ctl(lab, "deny", ROGUE_IP)
    assert refused.returncode == 1
    expected = f"{ROGUE_IP}/32 is not in the trusted list (see `clearipctl trusted`)"
    assert refused.stderr.strip() == expected


def test_cancel_at_clearip_stage(lab: Lab) -> None:
    res = lab.call("uac_cancel_early.xml", SLOW)
    assert (res.successful, res.failed) == (1, 0), res
    time.sleep(1.2)  # ClearIP's late answer is absorbed: nothing goes to a provider
    asked = [r for r in lab.emulator_requests() if r.get("number") == f"+{SLOW}"]
    assert [r["method"] for r in asked] == ["INVITE", "CANCEL"]


def test_reset_while_waiting_resent_once_then_on_failure(lab: Lab) -> None:
    res = lab.call("uac_expect_503.xml", RESET, sets={"expect_phrase": "ClearIP unavailable"})
    assert (res.successful, res.failed) == (1, 0), res
    asked = [r for r in lab.emulator_requests() if r.get("number") == f"+{RESET}"]
    assert len(asked) == 2, asked  # once, then once more on a fresh connection
    assert asked[0]["conn"] != asked[1]["conn"]
    lab.wait_upstream()


def test_clearip_unreachable_answers_at_once(lab: Lab) -> None:
    """Second to last: ClearIP goes away; the switch gets on_failure without any wait."""
    lab.clearip.stop(lab.emulator)
    deadline = time.monotonic() + 10
    while lab.status()["upstream"]["state"] == "connected" and time.monotonic() < deadline:
        time.sleep(0.1)
    before = lab.counters()
    res = lab.call("uac_expect_503.xml", OUTBOUND, sets={"expect_phrase": "ClearIP unavailable"})
    assert (res.successful, res.failed) == (1, 0), res
    assert delta(before, lab.counters())["clearip_unavailable"] == 1


def test_proxy_stops_cleanly(lab: Lab) -> None:
    """Last: SIGTERM ends the supervisor and both workers, and removes the control socket."""
    code = lab.proxy.stop(lab.proxy_proc, grace=15)
    assert code == 0, lab.proxy_proc
    assert not (lab.net.workdir / "ctl.sock").exists()

