"""`make run` on the built-in defaults: with no ClearIP reachable the proxy keeps serving and
answers 503 at once, saying so in `status` (SPEC §3, issue "relay" item 6).

Runs in a network namespace so the default 0.0.0.0:5060/5061 listeners bind there, not on the
host. Only the control paths and the trusted list differ from the defaults.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from lab.netlab import NetLab

from clearip import build
from tests.calllab import status_of
from tests.helpers import wait_until
from tests.netlab import skip_unless_netns

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
        status = status_of(config)
        assert status["upstream"]["state"] in ("down", "connecting")
        assert status["counters"]["clearip_unavailable"] == 1
        # one worker per core, and the kernel steers each call's datagrams to its worker
        assert status["steering"]["mode"] == ("ebpf" if len(status["workers"]) > 1 else "off")
        # the build this checkout runs (make test: compiled; its pure leg: pure)
        assert status["build"]["build"] == build.BUILD
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
        status = status_of(config)
        fastpath = status["fastpath"]
        assert fastpath["enabled"] is False and fastpath["interfaces"] == []
        assert "nope0" in fastpath["reason"]
        assert "ciptnope" not in proxy.run(["nft", "list", "tables"]).stdout  # rolled back
        assert proxy.stop(proc, grace=15) == 0


INJECT = r"""
import socket, sys
from glob import glob
msg = (
    "udp\0" "10.77.0.11\0" "5060\0" "10.77.0.10\0" "5060\0"  # "from the trusted switch"
    "INVITE sip:+19005550100@10.77.0.10 SIP/2.0\r\nVia: SIP/2.0/UDP 10.77.0.11;branch=z9hG4bK-x\r\n"
    "From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: injected\r\nCSeq: 1 INVITE\r\n"
    "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
).encode()
targets = glob(sys.argv[1] + "/handoff-*/*.sock") or [sys.argv[1] + "/handoff-x/0.sock"]
targets += ["\0clearip-%s-0" % sys.argv[2], "\0clearip-%s-1" % sys.argv[2]]  # the old names
for path in targets:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.sendto(msg, path)
        print("SENT", repr(path))
    except OSError as e:
        print("refused", repr(path), e.errno)
"""


TCP_PROBE = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    s.sendall(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
    print("closed" if s.recv(100) == b"" else "answered")
except (ConnectionResetError, BrokenPipeError):
    print("reset")
except TimeoutError:
    print("held open")
"""


def test_a_local_user_cannot_inject_through_the_workers_hand_off(tmp_path: Path) -> None:
    """Issue 11: with two workers the hand-off socket was abstract (no permissions) and the
    receiver believed the claimed source: any local user could place calls as a trusted switch.
    Now it lives in a 0700 directory of the proxy's user; `nobody` cannot even reach it."""
    skip_unless_netns()
    run = Path(f"/run/clearip-test-{tmp_path.name}")
    run.mkdir(mode=0o755)
    try:
        config = tmp_path / "proxy.toml"
        config.write_text(f"""
[listen]
tls = []
[relay]
workers = 2
[trust]
sources = ["10.77.0.11/32"]
[fastpath]
enabled = false
[control]
socket = "{run}/ctl.sock"
state_dir = "{tmp_path}/state"
metrics = ""
""")
        with NetLab(workdir=tmp_path / "lab") as lab:
            proxy = lab.add_host("proxy", "10.77.0.10/24", None)
            proc = proxy.popen([CTL, "run", "--config", str(config)])
            proxy.wait_udp(5060, proc=proc)
            (handoff,) = run.glob("handoff-*")
            assert handoff.stat().st_mode & 0o777 == 0o700
            wait_until(lambda: len(list(handoff.iterdir())) == 2, 15, "both workers' sockets")
            assert sorted(p.name for p in handoff.iterdir()) == ["0.sock", "1.sock"]
            out = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                 "python3", "-c", INJECT, str(run), str(proc.pid)],
                capture_output=True, text=True, timeout=10,
            )  # fmt: skip
            assert "SENT" not in out.stdout, out.stdout + out.stderr
            status = status_of(config)
            assert status["counters"]["invites"] == 0
            # and a stranger's TCP connection is refused at accept, before anything is read
            rogue = lab.add_host("rogue", "10.77.0.66/24", None)
            out = rogue.run(["python3", "-c", TCP_PROBE, "10.77.0.10", "5060"], timeout=10)
            assert out.stdout.strip() in ("reset", "closed"), out.stdout
            status = status_of(config)
            assert status["counters"]["dropped_untrusted"] >= 1
            assert proxy.stop(proc, grace=15) == 0
        assert not list(run.glob("handoff-*"))  # removed at stop
    finally:
        import shutil

        shutil.rmtree(run, ignore_errors=True)
