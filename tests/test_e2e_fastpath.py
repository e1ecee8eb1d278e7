"""The kernel fast path with the real proxy (SPEC §5), in network namespaces.

`clearipctl run` with `fastpath.enabled = true` loads its nftables table and eBPF classifier on
the proxy host's eth0. Untrusted and non-SIP traffic must be dropped in the kernel (the relay's
own counters do not move, the kernel's do); a provider outside the trusted list completes a
call through its pinhole but cannot start one; allow/deny act live; a stop leaves nothing.
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

from tests.netlab import NetLab, skip_unless_netns
from tests.sippy_runner import run_sipp, start_sipp

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python")
CTL = str(REPO / ".venv" / "bin" / "clearipctl")
PROXY, SWITCH, CLEARIP, PROVIDER, ROGUE = (
    "10.77.0.10", "10.77.0.11", "10.77.0.12", "10.77.0.40", "10.77.0.66",
)  # fmt: skip
NUMBER = "12025550100"

RULES = f"""
[[rule]]
match = "^\\\\+?{NUMBER}$"
contacts = ["sip:{{number}}@{PROVIDER}:5060"]
identity = true
"""

SEND_UDP = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
"""


def fastpath_name() -> str:
    """Our own nft table and bpffs pins, never a real proxy's."""
    return f"cipt{os.getpid() % 100000}"


class Lab:
    def __init__(self, net: NetLab) -> None:
        self.net = net
        self.proxy = net.add_host("proxy", f"{PROXY}/24", None)
        self.switch = net.add_host("switch", f"{SWITCH}/24", None)
        self.clearip = net.add_host("clearip", f"{CLEARIP}/24", None)
        self.provider = net.add_host("provider", f"{PROVIDER}/24", None)
        self.rogue = net.add_host("rogue", f"{ROGUE}/24", None)
        work = net.workdir
        (work / "rules.toml").write_text(RULES)
        emulator = self.clearip.popen([
            PYTHON, str(REPO / "tools" / "clearip_emulator.py"), "--rules",
            str(work / "rules.toml"), "--listen", f"tcp:{CLEARIP}:5060",
        ])  # fmt: skip
        self.clearip.wait_tcp(5060, ip=CLEARIP, proc=emulator)
        self.name = fastpath_name()
        self.config = work / "proxy.toml"
        self.config.write_text(f"""
[listen]
udp = ["{PROXY}:5060"]
tcp = ["{PROXY}:5060"]
tls = []
[clearip]
uri = "sip:{CLEARIP}:5060;transport=tcp"
timeout = 2.0
[trust]
sources = ["{SWITCH}/32", "{CLEARIP}/32"]
[fastpath]
enabled = true
name = "{self.name}"
max_sources = 4096
[control]
socket = "{work}/ctl.sock"
state_dir = "{work}/state"
metrics = ""
""")
        self.start()

    def start(self) -> None:
        # network namespace only: its eBPF pins land in the host's /sys/fs/bpf, where the
        # last test checks they are gone
        self.proc = self.proxy.popen([CTL, "run", "--config", str(self.config)],
                                     shared_mounts=True)  # fmt: skip
        self.proxy.wait_udp(5060, ip=PROXY, proc=self.proc)
        deadline = time.monotonic() + 15
        while self.status()["upstream"]["state"] != "connected":
            assert time.monotonic() < deadline, "ClearIP link never came up"
            time.sleep(0.1)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CTL, *args, "--config", str(self.config)],
                              capture_output=True, text=True, timeout=15)  # fmt: skip

    def status(self) -> dict[str, Any]:
        out = self.ctl("status", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def source(self, address: str) -> dict[str, Any]:
        for src in self.status()["sources"]:
            if src["address"] == address:
                return src
        return {"kernel": {}, "sip": {"messages_in": 0, "invites": 0}}

    def send_udp(self, host: Any, payload: str, port: int = 5060) -> None:
        host.run(["python3", "-c", SEND_UDP, PROXY, str(port), payload], timeout=10)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    skip_unless_netns()
    try:
        with NetLab() as net:
            yield Lab(net)
    finally:  # a proxy killed before its own clean-up leaves its pins behind
        from clearip.fastpath.bpf import remove_all

        remove_all(fastpath_name(), interfaces=[])


def test_fast_path_is_on(lab: Lab) -> None:
    fastpath = lab.status()["fastpath"]
    assert fastpath["enabled"] is True, fastpath
    assert fastpath["interfaces"] == ["eth0"]
    assert (Path("/sys/fs/bpf") / lab.name / "src_stats").exists()  # clearipctl reads these
    tables = lab.proxy.run(["nft", "-j", "list", "tables"]).stdout
    assert lab.name in tables
    filters = lab.proxy.run(["tc", "filter", "show", "dev", "eth0", "ingress"]).stdout
    assert filters.count("direct-action") == 1


def test_untrusted_dropped_in_the_kernel_not_by_the_relay(lab: Lab) -> None:
    before = lab.status()["counters"]
    res = run_sipp(lab.rogue, "uac_expect_403.xml", remote=f"{PROXY}:5060", service=NUMBER,
                   timeout=3)  # fmt: skip
    assert res.successful == 0 and not res.received()
    after = lab.status()["counters"]
    assert after["messages_in"] == before["messages_in"]  # the relay never saw it
    assert after["dropped_untrusted"] == before["dropped_untrusted"]
    rogue = lab.source(ROGUE)
    assert rogue["trusted"] is False
    assert rogue["kernel"]["dropped_untrusted_pkts"] >= 1


def test_non_sip_payload_from_a_trusted_source_dropped_and_counted(lab: Lab) -> None:
    before = lab.source(SWITCH)["kernel"].get("dropped_nonsip_pkts", 0)
    lab.send_udp(lab.switch, "hello, this is not SIP at all")
    deadline = time.monotonic() + 5
    while lab.source(SWITCH)["kernel"].get("dropped_nonsip_pkts", 0) <= before:
        assert time.monotonic() < deadline, lab.source(SWITCH)
        time.sleep(0.1)


def test_untrusted_provider_completes_a_call_via_its_pinhole(lab: Lab) -> None:
    uas = start_sipp(lab.provider, "uas_provider_ok.xml", timeout=30)
    res = run_sipp(lab.switch, "uac_call.xml", remote=f"{PROXY}:5060", service=NUMBER,
                   timeout=20)  # fmt: skip
    assert (res.successful, res.failed) == (1, 0), res
    assert uas.wait().successful == 1
    # the provider's answers came to the worker's own port, which the fast path leaves to the
    # relay; its in-dialog requests (a BYE) would come to 5060, open to it by a pinhole
    assert lab.status()["fastpath"]["pinholes"] >= 1
    holes = lab.proxy.run(["nft", "list", "set", "inet", lab.name, "pinhole4"]).stdout
    assert PROVIDER in holes
    assert lab.source(PROVIDER)["kernel"].get("dropped_untrusted_pkts", 0) == 0
    # ... but it cannot start a call of its own: the relay refuses it even through the hole
    before = lab.status()["counters"]["dropped_untrusted"]
    own = run_sipp(lab.provider, "uac_expect_403.xml", remote=f"{PROXY}:5060",
                   service=NUMBER, timeout=3)  # fmt: skip
    assert own.successful == 0 and not own.received("INVITE")
    assert lab.status()["counters"]["dropped_untrusted"] > before


def test_allow_and_deny_reach_the_kernel(lab: Lab) -> None:
    def answered() -> bool:
        res = run_sipp(lab.rogue, "uac_options.xml", remote=f"{PROXY}:5060", service=NUMBER,
                       timeout=3)  # fmt: skip
        return res.successful == 1

    assert not answered()
    assert lab.ctl("allow", ROGUE, "--note", "test").returncode == 0
    assert ROGUE in lab.proxy.run(["nft", "list", "table", "inet", lab.name]).stdout
    assert answered()
    assert lab.ctl("deny", ROGUE).returncode == 0
    dropped = lab.source(ROGUE)["kernel"]["dropped_untrusted_pkts"]
    assert not answered()
    assert lab.source(ROGUE)["kernel"]["dropped_untrusted_pkts"] > dropped


def test_allowed_source_survives_a_restart(lab: Lab) -> None:
    assert lab.ctl("allow", ROGUE, "--note", "kept").returncode == 0
    assert lab.proxy.stop(lab.proc, grace=15) == 0
    listed = json.loads(lab.ctl("trusted", "--json").stdout)  # stopped: from the state file
    assert any(e["cidr"] == f"{ROGUE}/32" and e["note"] == "kept" for e in listed)
    lab.start()
    assert ROGUE in lab.proxy.run(["nft", "list", "set", "inet", lab.name, "trusted4"]).stdout
    res = run_sipp(lab.rogue, "uac_options.xml", remote=f"{PROXY}:5060", service=NUMBER,
                   timeout=3)  # fmt: skip
    assert res.successful == 1
    assert lab.ctl("deny", ROGUE).returncode == 0


def test_stop_leaves_no_table_filter_or_pin(lab: Lab) -> None:
    assert lab.proxy.stop(lab.proc, grace=15) == 0
    assert lab.name not in lab.proxy.run(["nft", "list", "tables"]).stdout
    filters = lab.proxy.run(["tc", "filter", "show", "dev", "eth0", "ingress"]).stdout
    assert "direct-action" not in filters
    assert not Path(f"/sys/fs/bpf/{lab.name}").exists()
