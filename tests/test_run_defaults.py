"""`make run` on the built-in defaults: with no ClearIP reachable the proxy keeps serving and
answers 503 at once, saying so in `status` (SPEC §3, issue "relay" item 6).

Runs in a network namespace so the default 0.0.0.0:5060/5061 listeners bind there, not on the
host. Only the control paths and the trusted list differ from the defaults.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.netlab import NetLab, skip_unless_netns

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
CTL = str(REPO / ".venv" / "bin" / "clearipctl")

SEND_INVITE = r"""
import socket, sys
proxy = sys.argv[1]
msg = (
    f"INVITE sip:+12025550123@{proxy}:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 10.77.0.11:5060;branch=z9hG4bK-defaults-1;rport\r\n"
    "From: <sip:+13035550199@10.77.0.11>;tag=a\r\n"
    f"To: <sip:+12025550123@{proxy}>\r\n"
    "Call-ID: defaults-1@10.77.0.11\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
).encode()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.77.0.11", 5060))
s.settimeout(3)
s.sendto(msg, (proxy, 5060))
for _ in range(2):
    print(s.recv(65535).split(b"\r\n")[0].decode())
"""


def test_defaults_answer_503_without_clearip(tmp_path: Path) -> None:
    skip_unless_netns()
    config = tmp_path / "proxy.toml"
    config.write_text(f"""
[trust]
sources = ["10.77.0.11/32"]
[control]
socket = "{tmp_path}/ctl.sock"
state_dir = "{tmp_path}/state"
metrics = ""
""")
    with NetLab(workdir=tmp_path / "lab") as lab:
        proxy = lab.add_host("proxy", "10.77.0.10/24", None)
        switch = lab.add_host("switch", "10.77.0.11/24", None)
        proc = proxy.popen([CTL, "run", "--config", str(config)])
        proxy.wait_udp(5060, proc=proc)
        proxy.wait_tcp(5061, proc=proc)  # TLS listener up with a self-signed certificate
        assert (tmp_path / "state" / "tls" / "self-signed.pem").exists()
        out = switch.run(["python3", "-c", SEND_INVITE, "10.77.0.10"], timeout=10).stdout
        assert out.splitlines() == ["SIP/2.0 100 Trying", "SIP/2.0 503 ClearIP unavailable"]
        status = json.loads(
            subprocess.run([CTL, "status", "--json", "--config", str(config)],
                           capture_output=True, text=True, timeout=10, check=True).stdout
        )  # fmt: skip
        assert status["upstream"]["state"] in ("down", "connecting")
        assert status["counters"]["clearip_unavailable"] == 1
        assert {(x["transport"], x["address"]) for x in status["listeners"]} == {
            ("udp", "0.0.0.0:5060"), ("tcp", "0.0.0.0:5060"), ("tls", "0.0.0.0:5061"),
        }  # fmt: skip
        assert proxy.stop(proc, grace=15) == 0  # 0: stopped by SIGTERM, not killed


def _config_for(tmp_path: Path, enabled: str) -> Path:
    label = enabled.strip('"')
    config = tmp_path / f"proxy-{label}.toml"
    config.write_text(f"""
[listen]
tls = []
[trust]
sources = ["10.77.0.11/32"]
[fastpath]
enabled = {enabled}
interfaces = ["nope0"]
name = "ciptnope"
[control]
socket = "{tmp_path}/ctl-{label}.sock"
state_dir = "{tmp_path}/state"
metrics = ""
""")
    return config


@pytest.mark.parametrize("enabled", ['"auto"', "true"])
def test_fast_path_that_cannot_load(tmp_path: Path, enabled: str) -> None:
    """auto: runs on the relay's own check and says why; true: refuses to start (SPEC §5)."""
    skip_unless_netns()
    config = _config_for(tmp_path, enabled)
    with NetLab(workdir=tmp_path / "lab") as lab:
        proxy = lab.add_host("proxy", "10.77.0.10/24", None)
        proc = proxy.popen([CTL, "run", "--config", str(config)])
        if enabled == "true":
            assert proc.wait(timeout=60) == 1
            log = Path(proc.log_path).read_text()  # type: ignore[attr-defined]
            assert "the fast path could not be loaded" in log and "nope0" in log
            assert "ciptnope" not in proxy.run(["nft", "list", "tables"]).stdout
            return
        proxy.wait_udp(5060, proc=proc, timeout=60)
        status = json.loads(
            subprocess.run([CTL, "status", "--json", "--config", str(config)],
                           capture_output=True, text=True, timeout=10, check=True).stdout
        )  # fmt: skip
        fastpath = status["fastpath"]
        assert fastpath["enabled"] is False and fastpath["interfaces"] == []
        assert "nope0" in fastpath["reason"]
        assert "ciptnope" not in proxy.run(["nft", "list", "tables"]).stdout  # rolled back
        assert proxy.stop(proc, grace=15) == 0
