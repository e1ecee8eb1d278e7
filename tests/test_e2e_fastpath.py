"""The kernel fast path with the real proxy (SPEC §5), in network namespaces: `clearipctl run`
with its defaults (a worker per core) and `fastpath.enabled = true` loads its nftables table and
eBPF classifier on the proxy host's eth0. Untrusted and non-SIP traffic must be dropped in the
kernel (the relay's own counters do not move, the kernel's do); a provider outside the trusted
list completes a call through its pinhole but can neither start one nor use its pinhole for
anything outside its own dialog (issue 10's open relay and blind spots, each tried as an attacker
would); allow/deny/reload act live; a stop leaves nothing.

Only the switch is trusted. The provider is not: it answers calls through its pinhole. A rogue
host and an "elsewhere" host (where a hijacked call would land) stand by. The proxy resolves
`gw.provider.test` to the provider through a hosts file of its own mount namespace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lab.netlab import Host, NetLab
from lab.sippy_runner import run_sipp, start_sipp

from clearip.fastpath.maps import open_pinned
from tests.helpers import wait_until
from tests.netlab import skip_unless_netns


def wait_for(what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """wait_until with the words first: these waits read as sentences."""
    return wait_until(check, timeout, what, interval=0.1)

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python")
CTL = str(REPO / ".venv" / "bin" / "clearipctl")
PEER = str(REPO / "tests" / "sip_peer.py")
PROXY, SWITCH, CLEARIP, PROVIDER, ROGUE, ELSEWHERE = (
    "10.77.0.10", "10.77.0.11", "10.77.0.12", "10.77.0.40", "10.77.0.66", "10.77.0.77",
)  # fmt: skip
PROXY6, ROGUE6 = "fd77::10", "fd77::66"
NUMBER = "12025550100"  # ClearIP routes it to the provider by address
BY_NAME = "12025550111"  # ... and this one to gw.provider.test
PINHOLE_TTL = 2.0  # short, so a call held for 3 TTLs shows the re-arming

RULES = f"""
[[rule]]
match = "^\\\\+?{NUMBER}$"
contacts = ["sip:{{number}}@{PROVIDER}:5060"]
identity = true

[[rule]]
match = "^\\\\+?{BY_NAME}$"
contacts = ["sip:{{number}}@gw.provider.test:5060"]
identity = true
"""

# Sends UDP datagrams: host port payload [count] [source port]
SEND_UDP = r"""
import socket, sys, time
host, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
count = int(sys.argv[4]) if len(sys.argv) > 4 else 1
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
if len(sys.argv) > 5:
    s.bind(("", int(sys.argv[5])))
for i in range(count):
    s.sendto(payload, (host, port))
    if i % 200 == 199:
        time.sleep(0.01)  # bounded and paced: a flood, not a burst the veth queue drops
"""

# Listens on UDP and prints how many datagrams arrived before the file `stop` appears.
COUNT_UDP = r"""
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(0.2)
n = 0
while not os.path.exists(sys.argv[3]):
    try:
        s.recv(65535)
        n += 1
    except TimeoutError:
        pass
print(n)
"""

# A STUN Binding request; prints the XOR-MAPPED-ADDRESS of the answer, or "none".
STUN = r"""
import os, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[3], 0))
txid = os.urandom(12)
s.sendto(struct.pack("!HHI12s", 1, 0, 0x2112A442, txid), (sys.argv[1], int(sys.argv[2])))
s.settimeout(1.5)
try:
    data = s.recv(2048)
except TimeoutError:
    print("none"); sys.exit(0)
assert data[:2] == b"\x01\x01" and data[8:20] == txid, data
port = struct.unpack("!H", data[26:28])[0] ^ 0x2112
addr = ".".join(str(b ^ m) for b, m in zip(data[28:32], b"\x21\x12\xa4\x42"))
print(f"{addr}:{port} {s.getsockname()[1]}")
"""

# An IPv6 UDP packet with a destination options header (scapy), to the proxy's SIP port.
DSTOPT = r"""
import sys
from scapy.all import IPv6, IPv6ExtHdrDestOpt, UDP, send
pkt = IPv6(src=sys.argv[1], dst=sys.argv[2]) / IPv6ExtHdrDestOpt() / UDP(sport=5060, dport=5060)
pkt = pkt / (b"OPTIONS sip:x@[" + sys.argv[2].encode() + b"] SIP/2.0\r\n" + b"X" * 64)
send(pkt, iface="eth0", count=int(sys.argv[3]), verbose=False)
"""


def fastpath_name() -> str:
    return f"cips{os.getpid() % 100000}"


class Lab:
    def __init__(self, net: NetLab) -> None:
        self.net = net
        self.proxy = net.add_host("proxy", f"{PROXY}/24", f"{PROXY6}/64")
        self.switch = net.add_host("switch", f"{SWITCH}/24", None)
        self.clearip = net.add_host("clearip", f"{CLEARIP}/24", None)
        self.provider = net.add_host("provider", f"{PROVIDER}/24", None)
        self.rogue = net.add_host("rogue", f"{ROGUE}/24", f"{ROGUE6}/64")
        self.elsewhere = net.add_host("elsewhere", f"{ELSEWHERE}/24", None)
        work = net.workdir
        (work / "rules.toml").write_text(RULES)
        emulator = self.clearip.popen([
            PYTHON, str(REPO / "tools" / "clearip_emulator.py"), "--rules",
            str(work / "rules.toml"), "--listen", f"tcp:{CLEARIP}:5060",
        ])  # fmt: skip
        self.clearip.wait_tcp(5060, ip=CLEARIP, proc=emulator)
        self.hosts_file = work / "hosts"
        self.hosts_file.write_text(f"127.0.0.1 localhost\n{PROVIDER} gw.provider.test\n")
        self.name = fastpath_name()
        self.config = work / "proxy.toml"
        self.write_config()
        self.start()

    def write_config(self, extra_trusted: str = "") -> None:
        work = self.net.workdir
        self.config.write_text(f"""
[listen]
udp = ["{PROXY}:5060", "[{PROXY6}]:5060"]
tcp = ["{PROXY}:5060"]
tls = []
[clearip]
uri = "sip:{CLEARIP}:5060;transport=tcp"
timeout = 2.0
[trust]
sources = ["{SWITCH}/32"{extra_trusted}]
[fastpath]
enabled = true
name = "{self.name}"
max_sources = 4096
pinhole_ttl = {PINHOLE_TTL}
[control]
socket = "{work}/ctl.sock"
state_dir = "{work}/state"
metrics = ""
""")

    def start(self) -> None:
        from clearip.fastpath.maps import ensure_bpffs

        ensure_bpffs()  # the proxy's pins must land in the bpffs this process sees
        # its own mount namespace for the hosts file; the network namespace's, not the host's
        script = f"mount --bind {self.hosts_file} /etc/hosts && exec {CTL} run --config "
        script += str(self.config)
        self.proc = self.proxy.popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script], shared_mounts=True
        )
        self.proxy.wait_udp(5060, ip=PROXY, proc=self.proc)
        wait_for("the ClearIP link", lambda: self.status()["upstream"]["state"] == "connected", 15)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CTL, *args, "--config", str(self.config)], capture_output=True, text=True, timeout=15
        )

    def status(self) -> dict[str, Any]:
        out = self.ctl("status", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def kernel(self, address: str) -> dict[str, int]:
        for src in self.status()["sources"]:
            if src["address"] == address:
                return src["kernel"]
        return {}

    def source(self, address: str) -> dict[str, Any]:
        for src in self.status()["sources"]:
            if src["address"] == address:
                return src
        return {"kernel": {}, "sip": {"messages_in": 0, "invites": 0}}

    def drops(self, reason: str) -> int:
        return int((self.status().get("drops") or {}).get(reason, 0))

    def send_udp(self, host: Host, payload: str, port: int = 5060) -> None:
        self.udp(host, PROXY, port, payload)

    def udp(self, host: Host, to: str, port: int, payload: str, count: int = 1) -> None:
        host.run([PYTHON, "-c", SEND_UDP, to, str(port), payload, str(count)], timeout=60)

    def call(self, number: str, call_id: str, hold: float) -> tuple[Any, Any]:
        """The switch calls `number`; the provider answers, holds `hold` s, hangs up."""
        uas = self.provider.popen(
            [PYTHON, PEER, "uas", "--local", PROVIDER, "--hold", str(hold), "--timeout", "30"]
        )
        self.provider.wait_udp(5060, ip=PROVIDER, proc=uas)
        uac = self.switch.popen([
            PYTHON, PEER, "uac", "--local", SWITCH, "--proxy", f"{PROXY}:5060",
            "--number", number, "--call-id", call_id, "--timeout", "30",
        ])  # fmt: skip
        return uac, uas

    def options_answered(self, host: Host) -> bool:
        res = run_sipp(host, "uac_options.xml", remote=f"{PROXY}:5060", service=NUMBER, timeout=3)
        return res.successful == 1


def finished(proc: Any, timeout: float = 30.0) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    skip_unless_netns()
    try:
        with NetLab() as net:
            yield Lab(net)
    finally:
        from clearip.fastpath.tc import remove_all

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
    lab.udp(lab.switch, PROXY, 5060, "hello, this is not SIP at all")
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
    # its answers came to the worker's own port, its in-dialog requests (a BYE) would come to
    # 5060: both open to it by its pinhole
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


def test_worker_ports_are_guarded_and_the_pinhole_is_rearmed_while_in_use(lab: Lab) -> None:
    """The provider's answers come to a worker port, now judged in the kernel: its pinhole is
    written before the INVITE leaves. Held for 3 pinhole lifetimes, its BYE still gets in."""
    status = lab.status()
    assert status["fastpath"]["enabled"] is True
    assert len(status["fastpath"]["reply_ports"]) == len(status["workers"]) >= 1
    uac, uas = lab.call(NUMBER, "held-call@switch", hold=3 * PINHOLE_TTL)
    assert finished(uas) == 0, Path(uas.log_path).read_text()
    assert finished(uac) == 0, Path(uac.log_path).read_text()
    assert lab.kernel(PROVIDER).get("dropped_untrusted_pkts", 0) == 0


def test_a_next_hop_named_by_host_gets_its_pinhole(lab: Lab) -> None:
    uac, uas = lab.call(BY_NAME, "by-name@switch", hold=0.5)
    assert finished(uas) == 0, Path(uas.log_path).read_text()
    assert finished(uac) == 0, Path(uac.log_path).read_text()
    holes = lab.proxy.run(["nft", "list", "set", "inet", lab.name, "pinhole4"]).stdout
    assert PROVIDER in holes  # lingering after the call, by the address actually used


def test_rogue_in_dialog_requests_from_a_pinholed_provider_go_nowhere(lab: Lab) -> None:
    """Issue 10's open relay: while the provider holds a call (so it is pinholed), it sends an
    INVITE and a MESSAGE with a made-up dialog routed through us to another host, and a MESSAGE
    inside its real dialog. None of them reaches anyone; each is counted."""
    stop = lab.net.workdir / "stop-listening"
    listener = lab.elsewhere.popen([PYTHON, "-c", COUNT_UDP, ELSEWHERE, "5099", str(stop)])
    lab.elsewhere.wait_udp(5099, ip=ELSEWHERE, proc=listener)
    uac, uas = lab.call(NUMBER, "real-dialog@switch", hold=4.0)
    wait_for("the call up", lambda: lab.status()["transactions"].get("dialogs", 0) >= 1)
    before = lab.drops("indialog_refused")

    def rogue(method: str, call_id: str, from_tag: str, to_tag: str, uri: str) -> str:
        return (
            f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {PROVIDER}:5062;branch=z9hG4bK-rogue-{method}-{call_id}\r\n"
            f"Route: <sip:{PROXY}:5060;lr>\r\n"
            f"From: <sip:attacker@{PROVIDER}>;tag={from_tag}\r\n"
            f"To: <sip:+18005550199@{ELSEWHERE}>;tag={to_tag}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n"
            f"Contact: <sip:attacker@{PROVIDER}:5062>\r\nContent-Length: 0\r\n\r\n"
        )

    elsewhere = f"sip:+18005550199@{ELSEWHERE}:5099"
    for method in ("INVITE", "MESSAGE"):
        lab.udp(lab.provider, PROXY, 5060, rogue(method, "never-seen", "x", "made-up", elsewhere))
    # the real dialog's Call-ID and tags, but a method a provider has no business sending
    real = rogue("MESSAGE", "real-dialog@switch", "uas-5060", "uac-5060", elsewhere)
    lab.udp(lab.provider, PROXY, 5060, real)
    wait_for("3 refusals", lambda: lab.drops("indialog_refused") >= before + 3)
    assert finished(uas) == 0, Path(uas.log_path).read_text()  # the real call is unharmed
    assert finished(uac) == 0, Path(uac.log_path).read_text()
    stop.touch()
    listener.wait(10)
    assert Path(listener.log_path).read_text().strip() == "0"  # type: ignore[attr-defined]


def test_a_flood_to_the_worker_ports_never_reaches_the_relay(lab: Lab) -> None:
    count = 2000
    ports = lab.status()["fastpath"]["reply_ports"]
    relay_before = lab.status()["counters"]["messages_in"]
    kernel_before = lab.kernel(ROGUE).get("dropped_untrusted_pkts", 0)
    invite = f"INVITE sip:+{NUMBER}@{PROXY} SIP/2.0\r\nVia: SIP/2.0/UDP {ROGUE}\r\n\r\n"
    for port in ports:
        lab.udp(lab.rogue, PROXY, port, invite, count)
    sent = count * len(ports)
    wait_for(
        "the kernel's count of the flood",
        lambda: lab.kernel(ROGUE).get("dropped_untrusted_pkts", 0) - kernel_before >= sent,
    )
    moved = lab.status()["counters"]["messages_in"] - relay_before
    assert moved < sent // 100, f"{moved} of {sent} flood datagrams reached the relay"


def test_stun_keepalives_are_answered_for_trusted_sources_only(lab: Lab) -> None:
    out = lab.switch.run([PYTHON, "-c", STUN, PROXY, "5060", SWITCH]).stdout.split()
    assert out[0] == f"{SWITCH}:{out[1]}"  # XOR-MAPPED-ADDRESS: where the proxy saw it
    before = lab.kernel(ROGUE).get("dropped_untrusted_pkts", 0)
    assert lab.rogue.run([PYTHON, "-c", STUN, PROXY, "5060", ROGUE]).stdout.strip() == "none"
    assert lab.kernel(ROGUE)["dropped_untrusted_pkts"] > before


def test_ipv6_destination_options_from_an_untrusted_source_is_dropped_and_counted(
    lab: Lab,
) -> None:
    relay_before = lab.status()["counters"]["messages_in"]
    lab.rogue.run([PYTHON, "-c", DSTOPT, ROGUE6, PROXY6, "5"], timeout=60)
    wait_for(
        "the kernel's count of the IPv6 packets",
        lambda: lab.kernel(ROGUE6).get("dropped_untrusted_pkts", 0) >= 5,
    )
    assert lab.status()["counters"]["messages_in"] == relay_before


def test_reload_applies_trust_to_the_kernel(lab: Lab) -> None:
    from clearip.fastpath.maps import open_pinned

    def kernel_trusts_rogue() -> tuple[bool, bool]:
        nft = lab.proxy.run(["nft", "list", "set", "inet", lab.name, "trusted4"]).stdout
        with open_pinned(lab.name) as maps:
            return ROGUE in nft, f"{ROGUE}/32" in maps.trusted()

    assert kernel_trusts_rogue() == (False, False)
    lab.write_config(extra_trusted=f', "{ROGUE}/32"')
    assert lab.ctl("reload").returncode == 0
    assert kernel_trusts_rogue() == (True, True)
    assert lab.options_answered(lab.rogue)
    lab.write_config()
    assert lab.ctl("reload").returncode == 0
    assert kernel_trusts_rogue() == (False, False)
    dropped = lab.kernel(ROGUE).get("dropped_untrusted_pkts", 0)
    assert not lab.options_answered(lab.rogue)
    assert lab.kernel(ROGUE)["dropped_untrusted_pkts"] > dropped


def test_a_flushed_ruleset_and_a_deleted_filter_are_put_back(lab: Lab) -> None:
    restored = lab.status()["fastpath"]["restored"]
    lab.proxy.run(["nft", "flush", "ruleset"])
    started = time.monotonic()
    wait_for(
        "the nft table back",
        lambda: lab.name in lab.proxy.run(["nft", "list", "tables"]).stdout,
        timeout=5,
    )
    print(f"nft table restored after {time.monotonic() - started:.2f} s")
    fastpath = wait_for(
        "the restore counted", lambda: (f := lab.status()["fastpath"])["restored"] > restored and f
    )
    assert fastpath["last_restored"] and "nft" in fastpath["last_restored_what"]
    lab.proxy.run(["tc", "qdisc", "del", "dev", "eth0", "clsact"])
    wait_for(
        "the tc filter back",
        lambda: "direct-action"
        in lab.proxy.run(["tc", "filter", "show", "dev", "eth0", "ingress"]).stdout,
        timeout=5,
    )
    assert not lab.options_answered(lab.rogue)  # and it still judges


def test_an_interface_that_comes_up_later_is_guarded(lab: Lab) -> None:
    lab.proxy.run(["ip", "link", "add", "late0", "type", "veth", "peer", "name", "late1"])
    try:
        lab.proxy.run(["ip", "link", "set", "late0", "up"])
        wait_for(
            "a filter on late0",
            lambda: "direct-action"
            in lab.proxy.run(["tc", "filter", "show", "dev", "late0", "ingress"]).stdout,
            timeout=5,
        )
        wait_for("late0 in status", lambda: "late0" in lab.status()["fastpath"]["interfaces"])
    finally:
        lab.proxy.run(["ip", "link", "del", "late0"], check=False)
    wait_for("late0 gone", lambda: "late0" not in lab.status()["fastpath"]["interfaces"])


def test_a_killed_supervisor_leaves_the_ports_closed_and_a_restart_takes_over(lab: Lab) -> None:
    """SIGKILL to the supervisor (issue 12's fault suite): its workers exit, the kernel keeps
    dropping untrusted sources (filters, table and pins outlive it), and the next start
    replaces them atomically and serves again."""
    workers = [w["pid"] for w in lab.status()["workers"]]
    os.kill(lab.proc.pid, signal.SIGKILL)
    lab.proc.wait(10)
    wait_for("the workers gone", lambda: not any(Path(f"/proc/{p}").exists() for p in workers))
    assert lab.name in lab.proxy.run(["nft", "list", "tables"]).stdout
    filters = lab.proxy.run(["tc", "filter", "show", "dev", "eth0", "ingress"]).stdout
    assert "direct-action" in filters
    with open_pinned(lab.name) as maps:
        dropped = maps.read_sources().get(ROGUE, {}).get("dropped_untrusted_pkts", 0)
    assert not lab.options_answered(lab.rogue)
    with open_pinned(lab.name) as maps:
        assert maps.read_sources()[ROGUE]["dropped_untrusted_pkts"] > dropped  # still judged
    lab.start()
    assert lab.options_answered(lab.switch)
    assert not lab.options_answered(lab.rogue)
    filters = lab.proxy.run(["tc", "filter", "show", "dev", "eth0", "ingress"]).stdout
    assert filters.count("direct-action") == 1


def test_stop_leaves_no_table_filter_or_pin(lab: Lab) -> None:
    assert lab.proxy.stop(lab.proc, grace=15) == 0
    assert lab.name not in lab.proxy.run(["nft", "list", "tables"]).stdout
    assert "direct-action" not in lab.proxy.run(
        ["tc", "filter", "show", "dev", "eth0", "ingress"]
    ).stdout
    assert not Path(f"/sys/fs/bpf/{lab.name}").exists()
