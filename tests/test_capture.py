"""`clearipctl capture` (SPEC §2, §6): the command around clearip.sipcap.

Without root: arguments, default ports, reading saved captures, the synthetic packets of the
tap, the one line a non-root user gets. With root, in network namespaces: a real call through
the shared lab captured live (printed, written, read back by tshark and by `-r --call-id`),
the TLS legs with --decrypted, and the fast-path marks on a proxy whose fast path is on.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lab.netlab import Host, NetLab
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from clearip import capture, cli
from clearip.config import load_config
from clearip.relay.tap import TapRecord
from tests.calllab import (
    CLEARIP_IP,
    OUTBOUND,
    PROV_A_IP,
    PROXY_IP,
    REPO,
    ROGUE_IP,
    SWITCH_IP,
    Lab,
)
from tests.netlab import skip_unless_netns

CTL = str(REPO / ".venv" / "bin" / "clearipctl")
WAIT = 20.0  # seconds any one wait of the live tests may take at most


def sip(first: str, cid: str, cseq: str = "1 INVITE") -> bytes:
    return (
        f"{first}\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-{cid}\r\n"
        f"Call-ID: {cid}\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


HEADER = re.compile(r"^\d\d:\d\d:\d\d\.\d{6} (\S+) → (\S+) (UDP|TCP|TLS \(decrypted\)|TLS), (.*)$")


@dataclass
class Block:
    """One printed item: its header line and the message lines under it."""

    src: str
    dst: str
    transport: str
    summary: str
    lines: list[str]

    @property
    def first(self) -> str:
        return self.lines[0] if self.lines else ""

    @property
    def call_id(self) -> str | None:
        for line in self.lines:
            if line.lower().startswith("call-id:"):
                return line.split(":", 1)[1].strip()
        return None


def blocks(text: str) -> list[Block]:
    out: list[Block] = []
    for line in text.splitlines():
        match = HEADER.match(line)
        if match:
            out.append(Block(*match.groups(), []))
        elif out and line:
            out[-1].lines.append(line)
    return out


def config_file(tmp_path: Path, body: str = "") -> Path:
    path = tmp_path / "proxy.toml"
    path.write_text(
        f'{body}\n[control]\nsocket = "{tmp_path}/ctl.sock"\nstate_dir = "{tmp_path}/state"\n'
    )
    return path


# ---------------------------------------------------------------------------------------------
# Without root


def test_default_ports_are_listeners_worker_ports_and_clearip(tmp_path: Path) -> None:
    config = load_config(
        str(
            config_file(
                tmp_path,
                '[listen]\nudp = ["0.0.0.0:5060", "[::]:5080"]\ntcp = ["0.0.0.0:5060"]\n'
                'tls = ["0.0.0.0:5061"]\n[clearip]\nuri = "sip:ci.example.org:5071;transport=tls"',
            )
        )
    )
    assert capture.default_ports(config, 3) == {
        5060,
        5061,
        5070,
        5071,
        5072,
        5080,
        5090,
        5091,
        5092,
    }


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["capture", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for text in ("-r /tmp/sip.pcap --call-id", "--decrypted", "-d udp.port==5061,sip", "root"):
        assert text in out


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(argv)
    got = capsys.readouterr()
    return rc, got.out, got.err


def test_read_a_saved_capture_with_filters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(config_file(tmp_path))
    ether = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    a, b = "192.0.2.10", "192.0.2.1"
    stream = sip("BYE sip:x@192.0.2.1 SIP/2.0", "call-2", "2 BYE") + sip("SIP/2.0 200 OK", "call-1")
    sip_udp = ether / IP(src=a, dst=b) / UDP(sport=5060, dport=5060)
    sip_tcp = ether / IP(src=a, dst=b) / TCP(sport=40000, dport=5060, flags="PA")
    frames = [
        sip_udp / sip("INVITE sip:x SIP/2.0", "call-1"),
        sip_udp / sip("OPTIONS sip:x SIP/2.0", "ka", "9 OPTIONS"),
        ether / IP(src=a, dst=b) / TCP(sport=40000, dport=5060, flags="S", seq=0),
        sip_tcp.copy() / stream[:70],
        sip_tcp.copy() / stream[70:],
        ether / IP(src=a, dst=b) / UDP(sport=53, dport=53) / b"\x12\x34 not SIP",
    ]
    frames[3][TCP].seq, frames[4][TCP].seq = 1, 71
    for i, frame in enumerate(frames):
        frame.time = 1_700_000_000 + i
    path = tmp_path / "saved.pcap"
    wrpcap(str(path), frames)

    rc, out, err = run_cli(["capture", "--config", cfg, "-r", str(path)], capsys)
    assert (rc, err) == (0, "")
    got = blocks(out)
    assert [(g.transport, g.first) for g in got] == [
        ("UDP", "INVITE sip:x SIP/2.0"),
        ("UDP", "OPTIONS sip:x SIP/2.0"),
        ("TCP", "BYE sip:x@192.0.2.1 SIP/2.0"),
        ("TCP", "SIP/2.0 200 OK"),
    ]  # DNS is not SIP: a whole file is read for SIP only
    rc, out, _ = run_cli(
        ["capture", "--config", cfg, "-r", str(path), "--call-id", "call-1"], capsys
    )
    assert [g.first for g in blocks(out)] == ["INVITE sip:x SIP/2.0", "SIP/2.0 200 OK"]
    rc, out, _ = run_cli(
        ["capture", "--config", cfg, "-r", str(path), "--no-options", "-c", "2"], capsys
    )
    assert [g.first for g in blocks(out)] == ["INVITE sip:x SIP/2.0", "BYE sip:x@192.0.2.1 SIP/2.0"]
    rc, out, _ = run_cli(["capture", "--config", cfg, "-r", str(path), "--port", "53"], capsys)
    assert [g.summary for g in blocks(out)] == ["10 bytes, not SIP"]


def test_one_line_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(config_file(tmp_path))
    cases = {
        ("-r", str(tmp_path / "nope.pcap")): f"{tmp_path}/nope.pcap: no such file",
        ("-r", cfg): "not a pcap or pcapng capture",
        ("-r", cfg, "-w", "x.pcap"): "-r reads a saved capture: -w applies to a live one only",
    }
    for argv, expected in cases.items():
        rc, out, err = run_cli(["capture", "--config", cfg, *argv], capsys)
        assert rc == 1 and out == "" and expected in err and err.count("\n") == 1, err


def test_without_raw_socket_privilege_says_run_as_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.socket

    def refuse(family: int = -1, *args: Any, **kw: Any) -> socket.socket:
        if family == socket.AF_PACKET:
            raise PermissionError(1, "Operation not permitted")
        return real(family, *args, **kw)

    monkeypatch.setattr(capture.socket, "socket", refuse)
    rc, out, err = run_cli(["capture", "--config", str(config_file(tmp_path))], capsys)
    assert rc == 1 and out == ""
    assert err.splitlines()[-1] == capture.NEED_ROOT


def test_decrypted_needs_the_running_proxy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_cli(
        ["capture", "--config", str(config_file(tmp_path)), "--decrypted"], capsys
    )
    assert rc == 1 and out == ""
    assert err.startswith("--decrypted needs the running proxy to decrypt for it: ")
    assert "not running" in err and err.count("\n") == 1


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tap_records_are_written_as_udp_that_wireshark_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tap.pcap"
    out = capture._PcapOut(str(path))
    invite = sip("INVITE sip:+12025550100@192.0.2.12 SIP/2.0", "tls-1")
    moved = sip("SIP/2.0 302 Moved", "tls-1")
    out.write_tap(TapRecord(1e9, "out", "tls", ("192.0.2.1", 41000), ("192.0.2.12", 5061), invite))
    v6 = (("2001:db8::12", 5061), ("2001:db8::1", 41000))
    out.write_tap(TapRecord(1e9 + 0.5, "in", "tls", *v6, moved))
    out.close()
    fields = tshark(path, "-d", "udp.port==5061,sip", "-Y", "sip", "-T", "fields",
                    "-e", "sip.Call-ID", "-e", "sip.Method", "-e", "sip.Status-Code")  # fmt: skip
    assert fields == ["tls-1\tINVITE\t", "tls-1\t\t302"]
    _, text, _ = run_cli(["capture", "--config", str(config_file(tmp_path)), "-r", str(path)],
                         capsys)  # fmt: skip
    assert [(g.src, g.transport, g.first) for g in blocks(text)] == [
        ("192.0.2.1:41000", "TLS (decrypted)", "INVITE sip:+12025550100@192.0.2.12 SIP/2.0"),
        ("[2001:db8::12]:5061", "TLS (decrypted)", "SIP/2.0 302 Moved"),
    ]


def tshark(pcap: Path, *args: str) -> list[str]:
    """`tshark -r PCAP ARGS`, its lines."""
    argv = ["tshark", "-r", str(pcap), *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    return out.splitlines()


# ---------------------------------------------------------------------------------------------
# Live, in network namespaces (root)


class Capture:
    """`clearipctl capture` running in a lab host, its output in files."""

    def __init__(self, host: Host, config: Path, *args: str, shared_mounts: bool = False) -> None:
        work = host.lab.workdir
        n = len(list(work.glob("capture*.out")))
        self.out, self.err = work / f"capture{n}.out", work / f"capture{n}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = host.popen(
                [CTL, "capture", "--config", str(config), *args],
                stdout=out,
                stderr=err,
                shared_mounts=shared_mounts,
            )
        self.host = host
        self.wait_for(lambda: "capturing SIP on" in self.stderr, "the capture never started")

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_for(self, cond: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT
        while not cond():
            if self.proc.poll() is not None:
                raise AssertionError(f"capture exited {self.proc.returncode}: {self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}\n--- stderr ---\n{self.stderr}\n--- stdout ---\n{self.stdout[-4000:]}"
                )
            time.sleep(0.05)

    def wait_blocks(self, cond: Callable[[list[Block]], bool], what: str) -> list[Block]:
        self.wait_for(lambda: cond(blocks(self.stdout)), what)
        return blocks(self.stdout)

    def interrupt(self) -> int:
        """Ctrl-C; the exit status."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(WAIT)
        finally:
            self.host.stop(self.proc)  # a no-op once it exited


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    skip_unless_netns()
    with NetLab() as net:
        yield Lab(net)


SEND_UDP = (
    "import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
    ".sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))"
)


def send_udp(host: Host, payload: bytes, port: int = 5060) -> None:
    host.run(["python3", "-c", SEND_UDP, PROXY_IP, str(port), payload.decode()], timeout=10)


def call(lab: Lab) -> str:
    """One complete call switch -> proxy -> ClearIP -> provider A; its Call-ID."""
    uas = lab.provider(lab.prov_a, "uas_provider_ok.xml")
    res = lab.call("uac_call.xml", OUTBOUND)
    assert (res.successful, res.failed) == (1, 0), res
    assert uas.wait().successful == 1
    [invite] = res.sent("INVITE")
    [cid] = invite.header("Call-ID")
    return cid


def path_of(got: list[Block], cid: str) -> list[tuple[str, str, str]]:
    """(from, to, first line) of every message of a call, hosts by name."""
    names = {PROXY_IP: "proxy", SWITCH_IP: "switch", PROV_A_IP: "prova", CLEARIP_IP: "clearip"}

    def name(hostport: str) -> str:
        return names.get(hostport.rsplit(":", 1)[0], hostport)

    return [(name(b.src), name(b.dst), b.first) for b in got if b.call_id == cid]


# The call as the relay runs it (uac_call.xml, uas_provider_ok.xml), all over UDP. Its ClearIP
# leg is TLS: only --decrypted shows it.
CALL = [
    ("switch", "proxy", f"INVITE sip:+{OUTBOUND}@{PROXY_IP}:5060;user=phone"),
    ("proxy", "switch", "SIP/2.0 100"),
    ("proxy", "prova", f"INVITE sip:+{OUTBOUND}@{PROV_A_IP}:5060"),
    ("prova", "proxy", "SIP/2.0 100"),
    ("prova", "proxy", "SIP/2.0 180"),
    ("proxy", "switch", "SIP/2.0 180"),
    ("prova", "proxy", "SIP/2.0 200"),
    ("proxy", "switch", "SIP/2.0 200"),
    ("switch", "proxy", "ACK"),
    ("proxy", "prova", "ACK"),
    ("switch", "proxy", "BYE"),
    ("proxy", "prova", "BYE"),
    ("prova", "proxy", "SIP/2.0 200"),
    ("proxy", "switch", "SIP/2.0 200"),
]


def missing(seen: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The steps of CALL not in `seen`."""
    return [
        step
        for step in CALL
        if not any(s[:2] == step[:2] and s[2].startswith(step[2]) for s in seen)
    ]


@pytest.mark.root
@pytest.mark.slow
def test_live_capture_of_a_call(lab: Lab) -> None:
    pcap = lab.net.workdir / "call.pcap"
    cap = Capture(lab.proxy, lab.config, "-i", "eth0", "-w", str(pcap))
    try:
        assert "fast-path marks off: the fast path is off: disabled in the config" in cap.stderr
        cid = call(lab)
        send_udp(lab.rogue, sip(f"OPTIONS sip:{PROXY_IP} SIP/2.0", "rogue-1", "1 OPTIONS"))
        got = cap.wait_blocks(
            lambda got: not missing(path_of(got, cid)) and any(b.call_id == "rogue-1" for b in got),
            "the call and the rogue's OPTIONS were not all printed",
        )
    finally:
        rc = cap.interrupt()
    assert rc == 0, cap.stderr
    assert not [b for b in got if CLEARIP_IP in b.src + b.dst], "TLS is not printable"
    # the fast path is off in this lab: the rogue's packet reaches the relay, and is not marked
    [rogue] = [b for b in got if b.call_id == "rogue-1"]
    assert rogue.src.startswith(ROGUE_IP + ":") and "[fast path" not in rogue.summary
    assert f"written to {pcap}" in cap.stderr

    # what tshark makes of the file: the same messages
    fields = tshark(pcap, "-Y", "sip", "-T", "fields", "-e", "sip.Call-ID", "-e", "sip.Method",
                    "-e", "sip.Status-Code")  # fmt: skip
    calls = [f.split("\t") for f in fields if f.startswith(cid + "\t")]
    assert {m or s for _cid, m, s in calls} >= {"INVITE", "ACK", "BYE", "100", "180", "200"}
    assert len(calls) == len(path_of(got, cid)), fields

    # and read back: that call alone, the same messages as live
    argv = [CTL, "capture", "--config", str(lab.config), "-r", str(pcap), "--call-id", cid]
    again = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert path_of(blocks(again.stdout), cid) == path_of(got, cid)
    assert {b.call_id for b in blocks(again.stdout)} == {cid}


def clearip_leg(got: list[Block]) -> list[Block]:
    return [b for b in got if b.transport == "TLS (decrypted)" and CLEARIP_IP in b.src + b.dst]


@pytest.mark.root
@pytest.mark.slow
def test_decrypted_shows_the_clearip_leg_in_clear(lab: Lab) -> None:
    pcap = lab.net.workdir / "decrypted.pcap"
    cap = Capture(lab.proxy, lab.config, "--decrypted", "-w", str(pcap))  # every interface
    try:
        assert "TLS in clear from 2 relay workers" in cap.stderr
        cid = call(lab)
        got = cap.wait_blocks(
            lambda got: (
                not missing(path_of(got, cid))
                and any(b.first.startswith("SIP/2.0 302") for b in clearip_leg(got))
            ),
            "the call and its ClearIP leg were not all printed",
        )
    finally:
        rc = cap.interrupt()
    assert rc == 0, cap.stderr
    leg = [(b.src.rsplit(":", 1)[0], b.dst, b.first.split()[:2]) for b in clearip_leg(got)]
    assert any(s == PROXY_IP and d == f"{CLEARIP_IP}:5061" and f[0] == "INVITE" for s, d, f in leg)
    assert any(
        s == CLEARIP_IP and d.startswith(PROXY_IP) and f == ["SIP/2.0", "302"] for s, d, f in leg
    ), leg
    # the tap socket is gone and the relay stopped copying
    assert not list(Path(lab.config.parent).glob("capture-*.sock"))
    assert lab.status().get("tap", {}).get("captures", 0) == 0

    # in the file, as UDP with the same addresses and ports
    shark = f"sip && udp && ip.addr == {CLEARIP_IP}"
    fields = tshark(pcap, "-d", "udp.port==5061,sip", "-Y", shark, "-T", "fields",
                    "-e", "sip.Method", "-e", "sip.Status-Code")  # fmt: skip
    assert {"INVITE\t", "\t302"} <= set(fields), fields
    argv = [CTL, "capture", "--config", str(lab.config), "-r", str(pcap)]
    again = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert any(b.first.startswith("SIP/2.0 302") for b in clearip_leg(blocks(again.stdout)))


@pytest.fixture
def fastpath_lab() -> Iterator[Any]:
    """The lab of test_e2e_fastpath: a proxy with its fast path on, a provider outside the
    trusted list (reached through its pinhole), a rogue host. Started for one test only."""
    from clearip.fastpath.tc import remove_all
    from tests.test_e2e_fastpath import Lab as FastPathLab
    from tests.test_e2e_fastpath import fastpath_name

    skip_unless_netns()
    try:
        with NetLab() as net:
            yield FastPathLab(net)
    finally:  # a proxy killed before its own clean-up leaves its pins behind
        remove_all(fastpath_name(), interfaces=[])


TCP_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 5060), timeout=1.5)
except OSError:
    pass
"""


@pytest.mark.root
@pytest.mark.slow
def test_fast_path_drops_are_marked(fastpath_lab: Any) -> None:
    """What the kernel drops is marked; what it passes (trusted, or a provider through its
    pinhole) is not."""
    from lab.sippy_runner import run_sipp, start_sipp

    from tests.test_e2e_fastpath import NUMBER, PROVIDER, ROGUE, SWITCH

    lab = fastpath_lab
    # the network namespace only (as the proxy): the capture reads its pins in /sys/fs/bpf
    cap = Capture(lab.proxy, lab.config, "-i", "eth0", shared_mounts=True)
    try:
        assert "fast-path marks off" not in cap.stderr
        lab.send_udp(lab.rogue, sip("OPTIONS sip:x SIP/2.0", "rogue-2", "1 OPTIONS").decode())
        lab.send_udp(lab.switch, "hello, this is not SIP at all")
        lab.rogue.run(["python3", "-c", TCP_CONNECT, lab.proxy.ip], timeout=10)
        uas = start_sipp(lab.provider, "uas_provider_ok.xml", timeout=30)
        remote = f"{lab.proxy.ip}:5060"
        res = run_sipp(lab.switch, "uac_call.xml", remote=remote, service=NUMBER, timeout=20)
        assert (res.successful, res.failed) == (1, 0), res
        assert uas.wait().successful == 1

        def bye_answered(got: list[Block]) -> bool:
            return any(
                b.src.startswith(PROVIDER) and b.first.startswith("SIP/2.0 200") and
                any(line.startswith("CSeq: 2 BYE") for line in b.lines) for b in got
            )  # fmt: skip

        got = cap.wait_blocks(bye_answered, "the call was not printed to its end")
    finally:
        rc = cap.interrupt()
    assert rc == 0, cap.stderr
    [dropped] = [b for b in got if b.call_id == "rogue-2"]
    assert dropped.src.startswith(ROGUE + ":")
    assert dropped.summary.endswith("bytes [fast path: drop untrusted]")
    [junk] = [b for b in got if b.first == "hello, this is not SIP at all"]
    assert junk.src.startswith(SWITCH + ":")
    assert junk.summary.endswith("bytes, not SIP [fast path: drop non-SIP]")
    syns = [b for b in got if b.transport == "TCP" and b.summary.startswith("SYN")]
    assert syns and all(b.src.startswith(ROGUE + ":") for b in syns)
    assert all(b.summary == "SYN [fast path: drop untrusted]" for b in syns)
    # the call: the switch is trusted, the provider answers through its pinhole
    calls = [b for b in got if b.src.startswith((SWITCH, PROVIDER)) and b.call_id]
    assert len(calls) >= 7 and not [b for b in calls if "[fast path" in b.summary], calls


def test_sockets_of_dead_captures_are_swept(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its PID names no process now
    stale = tmp_path / f"capture-{dead.pid}.sock"
    alive = tmp_path / "capture-1.sock"  # PID 1 is always there
    other = tmp_path / "control.sock"
    for path in (stale, alive, other):
        path.touch()
    capture._remove_stale_sockets(str(tmp_path))
    assert not stale.exists() and alive.exists() and other.exists()
