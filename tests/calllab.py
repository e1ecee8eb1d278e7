"""The lab the end-to-end tests share: switch, proxy (`clearipctl run`, two workers), the
ClearIP emulator over TLS, providers A and B and a rogue host, each in its own namespace.

The dialled numbers below pick what the emulator answers (see RULES).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from lab.netlab import Host, NetLab
from lab.sippy_runner import make_tls_files, run_sipp, start_sipp

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
FOLDED = "12025550400"  # 302 to A, Identity and P-Asserted-Identity folded over two lines
VIA_TLS = "12025550500"  # 302 to provider B over TLS (port 5061)
JUST_UNDER = "12025550601"  # 302 to A after 1.1 s: inside clearip.timeout (1.5 s)
JUST_OVER = "12025550602"  # 302 to A after 1.9 s: past it

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
match = "^\\\\+?{JUST_UNDER}$"
contacts = ["sip:{{number}}@{PROV_A_IP}:5060"]
identity = true
delay = 1.1

[[rule]]
match = "^\\\\+?{JUST_OVER}$"
contacts = ["sip:{{number}}@{PROV_A_IP}:5060"]
identity = true
delay = 1.9

[[rule]]
match = "^\\\\+?{VIA_TLS}$"
contacts = ["sip:{{number}}@{PROV_B_IP}:5061;transport=tls"]
identity = true

[[rule]]
match = "^\\\\+?{FOLDED}$"
contacts = ["sip:{{number}}@{PROV_A_IP}:5060"]
identity = true
pai = "<sip:{{from}}@clearip.example.org;user=phone;verstat=TN-Validation-Passed>"
fold = true

[[rule]]
match = "^\\\\+?{SLOW}$"
contacts = ["sip:{{number}}@{PROV_A_IP}:5060"]
identity = true
delay = 1.0
"""


def status_of(config: Path) -> dict[str, Any]:
    """`clearipctl status --json` of the proxy running with `config`."""
    out = subprocess.run(
        [str(REPO / ".venv" / "bin" / "clearipctl"), "status", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


class Lab:
    """The lab of this module: switch, proxy, ClearIP, providers A and B, a rogue host."""

    def __init__(self, net: NetLab, *, control_extra: str = "", clearip_extra: str = "") -> None:
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
        self.start_emulator()
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
{clearip_extra}
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
{control_extra}
""")
        env = {**os.environ, "PYTHONPATH": str(REPO / "control")}
        self.proxy_proc = self.proxy.popen(
            [str(REPO / ".venv" / "bin" / "clearipctl"), "run", "--config", str(self.config)],
            env=env,
        )
        self.proxy.wait_udp(5060, ip=PROXY_IP, proc=self.proxy_proc)
        self.wait_upstream()

    def start_emulator(self) -> None:
        """ClearIP over TLS (again, after a test stopped it)."""
        work = self.net.workdir
        self.emulator = self.clearip.popen([
            PYTHON, str(REPO / "tools" / "clearip_emulator.py"),
            "--rules", str(work / "rules.toml"), "--listen", f"tls:{CLEARIP_IP}:5061",
            "--cert", str(self.tls.cert), "--key", str(self.tls.key),
            "--signing-key", str(self.signing_key), "--log", str(self.emu_log),
        ])  # fmt: skip
        self.clearip.wait_tcp(5061, ip=CLEARIP_IP, proc=self.emulator)

    def status(self) -> dict[str, Any]:
        return status_of(self.config)

    def wait_upstream(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status()["upstream"]["state"] == "connected":
                return
            time.sleep(0.1)
        raise AssertionError(f"ClearIP link never came up: {self.status()['upstream']}")

    def counters(self) -> dict[str, int]:
        return self.status()["counters"]

    def emulator_records(self) -> list[dict[str, Any]]:
        """Everything the emulator logged: connections, requests, the responses it sent."""
        lines = self.emu_log.read_text().splitlines() if self.emu_log.exists() else []
        return [json.loads(line) for line in lines]

    def emulator_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.emulator_records() if r.get("event") == "request"]

    def call(self, scenario: str, service: str, host: Host | None = None, **kw: Any):
        return run_sipp(
            host or self.switch, scenario, remote=f"{PROXY_IP}:5060", service=service,
            timeout=20, **kw,
        )  # fmt: skip

    def provider(self, host: Host, scenario: str, **kw: Any):
        return start_sipp(host, scenario, timeout=30, **kw)
