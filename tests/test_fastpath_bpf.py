"""The eBPF half of the kernel fast path (SPEC §5): classifier, maps, attach/pin life cycle.

Three layers, each skipped with its reason when the machine cannot run it:

- plain: clearip.h and bpf.py agree; set-up failures say why and what to do.
- root + bcc: BPF_PROG_TEST_RUN feeds hand-made frames to the loaded classifier, so every
  parsing case has an exact verdict and exact counters, with no network at all.
- root + bcc + namespaces: the classifier on eth0 of a `proxy` namespace, real traffic from
  `client` (trusted) and `rogue` (not), its maps read and changed from this process through
  the pins (as clearipctl does); then replace, detach, crash and clean-up.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from clearip.fastpath import bpf
from clearip.fastpath.bpf import (
    SRC_STATS_FIELDS,
    BpfFastPath,
    FastPathUnavailable,
    PinnedMaps,
    bpf_syscall,
    header_mismatches,
    open_pinned,
    remove_all,
)
from tests.netlab import Host, NetLab, cleanup_stale, skip_unless_netns, stop_process

TC_ACT_UNSPEC = -1  # not ours / passed: the next filter (or the stack) decides
TC_ACT_SHOT = 2
SIP_PORTS = [("udp", 5060), ("tcp", 5060), ("tls", 5061)]
MAX_SOURCES = 1024  # the smallest fastpath.max_sources the config allows


def _unique_name(tag: str) -> str:
    """A fast path name (nft table / pin directory) no other run uses: cipt_<tag>_<pid>_<hex>."""
    return f"cipt_{tag}_{os.getpid()}_{secrets.token_hex(2)}"


_STALE_PIN_RE = re.compile(r"cipt_[a-z]+_(\d+)_[0-9a-f]{4}")


def _cleanup_stale_pins() -> list[str]:
    """Unpins the maps of earlier runs that died before their clean-up (their PID is gone);
    their tc filters went with their namespaces."""
    root = Path(bpf.DEFAULT_PIN_ROOT)
    removed: list[str] = []
    if bpf._fstype(root) != "bpf":
        return removed
    for entry in root.iterdir():
        m = _STALE_PIN_RE.fullmatch(entry.name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            removed += remove_all(entry.name, [])
    return removed


def _wait_for(what: str, cond: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Polls `cond` until it returns something truthy; fails with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


# =============================================================================================
# No privileges needed


def test_header_and_python_mirror_agree() -> None:
    assert header_mismatches() == []
    consts = bpf.header_constants()
    assert consts["CLEARIP_PROBE_LEN"] == consts["CLEARIP_METHOD_MAX"] + 1
    assert len(SRC_STATS_FIELDS) * 8 == consts["CLEARIP_SRC_STATS_SIZE"]


def test_constructor_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="name"):
        BpfFastPath("1bad/name", SIP_PORTS, MAX_SOURCES)
    with pytest.raises(ValueError, match="protocol"):
        BpfFastPath("ok", [("sctp", 5060)], MAX_SOURCES)
    with pytest.raises(ValueError, match="port"):
        BpfFastPath("ok", [("udp", 70000)], MAX_SOURCES)
    with pytest.raises(ValueError, match="max_sources"):
        BpfFastPath("ok", SIP_PORTS, 0)
    fp = BpfFastPath("ok", [("tls", 5061), ("udp", 5060), ("udp", 5060)], MAX_SOURCES)
    assert fp.sip_ports == [("tcp", 5061), ("udp", 5060)]  # TLS is TCP to the kernel
    assert fp.pin_dir == Path("/sys/fs/bpf/ok")
    assert fp.filter_name.startswith("clearip:ok:")


def test_load_without_privileges_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bpf.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(bpf, "_effective_caps", lambda: 0)
    with pytest.raises(FastPathUnavailable) as err:
        BpfFastPath("ok", SIP_PORTS, MAX_SOURCES).load()
    assert "root" in err.value.reason
    assert err.value.fix


def test_load_without_bcc_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bpf, "_check_privileges", lambda: None)
    monkeypatch.setitem(sys.modules, "bcc", None)  # `import bcc` now raises ImportError
    with pytest.raises(FastPathUnavailable) as err:
        BpfFastPath("ok", SIP_PORTS, MAX_SOURCES).load()
    assert "bcc" in err.value.reason
    assert "python3-bpfcc" in err.value.fix


def test_load_without_kernel_headers_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bpf, "_check_privileges", lambda: None)
    monkeypatch.setattr(bpf, "_import_bcc", lambda: object())
    monkeypatch.setattr(bpf, "MODULES_DIR", tmp_path)
    monkeypatch.setattr(bpf, "KHEADERS", tmp_path / "no-kheaders.tar.xz")
    with pytest.raises(FastPathUnavailable) as err:
        BpfFastPath("ok", SIP_PORTS, MAX_SOURCES).load()
    build = tmp_path / os.uname().release / "build"
    assert err.value.reason == f"kernel headers not found at {build}"
    assert "tools/bootstrap.sh" in err.value.fix


def test_open_pinned_when_nothing_is_pinned_says_so(tmp_path: Path) -> None:
    with pytest.raises(FastPathUnavailable) as err:
        open_pinned("cipt_none", pin_root=tmp_path)  # not a bpffs
    assert "no bpf filesystem" in err.value.reason
    assert "start the proxy" in err.value.fix
    if os.geteuid() == 0 and bpf._fstype(Path(bpf.DEFAULT_PIN_ROOT)) == "bpf":
        name = _unique_name("absent")
        with pytest.raises(FastPathUnavailable) as err:
            open_pinned(name)
        assert f"/sys/fs/bpf/{name}" in err.value.reason
        assert "not running" in err.value.reason


# =============================================================================================
# Root + bcc: the classifier against hand-made frames (BPF_PROG_TEST_RUN)


class _TestRunAttr(ctypes.Structure):  # union bpf_attr, BPF_PROG_TEST_RUN (leading fields)
    _fields_ = (
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
    )


_BPF_PROG_TEST_RUN = 10


def _verdict(prog_fd: int, frame: bytes) -> int:
    """The classifier's return value for one Ethernet frame (-1: TC_ACT_UNSPEC)."""
    data = ctypes.create_string_buffer(frame, len(frame))
    out = ctypes.create_string_buffer(len(frame) + 256)
    attr = _TestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(frame),
        data_size_out=len(out),
        data_in=ctypes.addressof(data),
        data_out=ctypes.addressof(out),
        repeat=1,
    )
    bpf_syscall(_BPF_PROG_TEST_RUN, attr)
    return ctypes.c_int32(attr.retval).value


ETH_IP, ETH_IP6, ETH_ARP = 0x0800, 0x86DD, 0x0806
PROXY4, PROXY6 = "10.9.0.10", "fd09::10"


def _eth(ethertype: int, payload: bytes) -> bytes:
    return (
        b"\x02\x00\x00\x00\x00\x10"
        + b"\x02\x00\x00\x00\x00\x11"
        + struct.pack("!H", ethertype)
        + payload
    )


def _ip4(src: str, proto: int, l4: bytes, *, options: bytes = b"", frag_off: int = 0) -> bytes:
    ihl = 5 + len(options) // 4
    head = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        ihl * 4 + len(l4),
        1,
        frag_off,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(PROXY4).packed,
    )
    return _eth(ETH_IP, head + options + l4)


def _ip6(src: str, nexthdr: int, l4: bytes) -> bytes:
    head = struct.pack("!IHBB", 6 << 28, len(l4), nexthdr, 64)
    head += ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(PROXY6).packed
    return _eth(ETH_IP6, head + l4)


def _udp(dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload


def _tcp_syn(dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0) + payload


def udp4(src: str, payload: bytes, dport: int = 5060, **kw: Any) -> bytes:
    return _ip4(src, socket.IPPROTO_UDP, _udp(dport, payload), **kw)


def udp6(src: str, payload: bytes, dport: int = 5060) -> bytes:
    return _ip6(src, socket.IPPROTO_UDP, _udp(dport, payload))


OPTIONS = b"OPTIONS sip:proxy@10.9.0.10 SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.0.1\r\n\r\n"
INVITE = b"INVITE sip:+12025550123@10.9.0.10 SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.0.1\r\n\r\n"


@pytest.fixture(scope="module")
def loaded() -> Iterator[BpfFastPath]:
    """The classifier compiled and loaded (not attached, not pinned), with its own maps."""
    if os.geteuid() != 0:
        pytest.skip("needs root: loads an eBPF program")
    fp = BpfFastPath(_unique_name("unit"), SIP_PORTS, MAX_SOURCES)
    try:
        fp.load()
    except FastPathUnavailable as exc:
        pytest.skip(f"eBPF fast path unavailable here: {exc.reason} (fix: {exc.fix})")
    try:
        yield fp
    finally:
        fp.close()


@pytest.fixture
def fp(loaded: BpfFastPath) -> Iterator[BpfFastPath]:
    """`loaded` with 10.9.1.0/24 and fd09:1::/64 trusted, default ports, no pinholes."""
    loaded.set_trusted(["10.9.1.0/24", "fd09:1::/64"])
    loaded.set_sip_ports(SIP_PORTS)
    yield loaded
    for addr in loaded.maps.pinholes():
        loaded.remove_pinhole(addr)


def _src(fp: BpfFastPath, addr: str) -> dict[str, int]:
    return fp.read_sources().get(addr, dict.fromkeys(SRC_STATS_FIELDS, 0))


# A trusted source's UDP payloads: the SIP-or-not check, byte by byte of its rule.
PAYLOADS = [
    (OPTIONS, True),
    (INVITE, True),
    (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.9.0.1\r\n\r\n", True),
    (b"\r\n\r\n", True),  # RFC 5626 keepalive
    (b"\r\n", True),  # its pong
    (b"ACK sip:x SIP/2.0\r\n", True),  # shortest method (3)
    (b"ABCDEFGHIJKLMNOP sip:x SIP/2.0\r\n", True),  # longest accepted (16)
    (b"ABCDEFGHIJKLMNOPQ sip:x SIP/2.0\r\n", False),  # 17 letters
    (b"AB sip:x SIP/2.0\r\n", False),  # 2 letters
    (b"invite sip:x SIP/2.0\r\n", False),  # methods are case-sensitive
    (b"INVITE\tsip:x SIP/2.0\r\n", False),
    (b"SIP/2.0\r\n", False),
    (b"ACK x SIP/2.0\r\n", False),  # 15 bytes: shorter than any SIP message can be
    (b"REGISTER sip:x", False),
    (b"ABC ", False),  # 4 bytes, and not a keepalive
    (b"SIP/1.0 200 OK\r\n", False),
    (b"hello", False),
    (b"", False),
    (b"\r\n\r\n\r\n", False),  # not exactly a keepalive
    (b"\r\nINVITE sip:x SIP/2.0\r\n", False),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32), False),  # TLS on UDP
    (b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12), False),  # STUN binding request
]


@pytest.mark.root
@pytest.mark.parametrize(("payload", "is_sip"), PAYLOADS, ids=[repr(p[:20]) for p, _ in PAYLOADS])
def test_udp_payload_check(fp: BpfFastPath, payload: bytes, is_sip: bool) -> None:
    expect = TC_ACT_UNSPEC if is_sip else TC_ACT_SHOT
    assert _verdict(fp.prog_fd, udp4("10.9.1.1", payload)) == expect
    assert _verdict(fp.prog_fd, udp6("fd09:1::1", payload)) == expect


@pytest.mark.root
def test_verdicts_are_counted_per_source_and_in_total(fp: BpfFastPath) -> None:
    before = fp.read_totals()
    ok, nonsip = udp4("10.9.1.2", OPTIONS), udp4("10.9.1.2", b"hello")
    rogue = udp4("10.9.2.2", INVITE)
    rogue6 = udp6("fd09:2::2", INVITE)
    for frame in (ok, ok, nonsip):
        _verdict(fp.prog_fd, frame)
    assert _verdict(fp.prog_fd, rogue) == TC_ACT_SHOT
    assert _verdict(fp.prog_fd, rogue6) == TC_ACT_SHOT

    # bytes are the whole frame: at tc ingress skb->len includes the link-layer header
    assert _src(fp, "10.9.1.2") == {
        "passed_pkts": 2,
        "passed_bytes": 2 * len(ok),
        "dropped_untrusted_pkts": 0,
        "dropped_untrusted_bytes": 0,
        "dropped_nonsip_pkts": 1,
        "dropped_nonsip_bytes": len(nonsip),
    }
    assert _src(fp, "10.9.2.2")["dropped_untrusted_pkts"] == 1
    assert _src(fp, "10.9.2.2")["dropped_untrusted_bytes"] == len(rogue)
    assert _src(fp, "fd09:2::2")["dropped_untrusted_pkts"] == 1  # IPv6 keyed as itself
    after = fp.read_totals()
    delta = {k: {f: after[k][f] - before[k][f] for f in ("pkts", "bytes")} for k in after}
    assert delta == {
        "passed": {"pkts": 2, "bytes": 2 * len(ok)},
        "dropped_untrusted": {"pkts": 2, "bytes": len(rogue) + len(rogue6)},
        "dropped_nonsip": {"pkts": 1, "bytes": len(nonsip)},
    }
    # the key-walk fallback (kernels without batch lookups) reads the same
    m = fp.maps._maps["src_stats"]
    m._batch_ok = False
    try:
        assert fp.read_sources() == PinnedMaps.read_sources(fp.maps)
    finally:
        m._batch_ok = True


@pytest.mark.root
def test_only_sip_ports_are_judged(fp: BpfFastPath) -> None:
    untrusted = "10.9.2.3"
    # other ports, protocols and families pass untouched, uncounted, even from strangers
    assert _verdict(fp.prog_fd, udp4(untrusted, b"hello", dport=53)) == TC_ACT_UNSPEC
    assert _verdict(fp.prog_fd, udp4(untrusted, b"hello", dport=5061)) == TC_ACT_UNSPEC  # TLS
    assert _verdict(fp.prog_fd, _ip4(untrusted, socket.IPPROTO_TCP, _tcp_syn(22))) == -1
    assert _verdict(fp.prog_fd, _ip4(untrusted, socket.IPPROTO_ICMP, bytes(8))) == -1
    assert _verdict(fp.prog_fd, _eth(ETH_ARP, bytes(28))) == TC_ACT_UNSPEC
    assert untrusted not in fp.read_sources()
    # TCP 5060 and 5061 (TLS): the source is judged, the payload is not
    tcp = socket.IPPROTO_TCP
    assert _verdict(fp.prog_fd, _ip4(untrusted, tcp, _tcp_syn(5060))) == TC_ACT_SHOT
    assert _verdict(fp.prog_fd, _ip4(untrusted, tcp, _tcp_syn(5061))) == TC_ACT_SHOT
    assert _verdict(fp.prog_fd, _ip4("10.9.1.3", tcp, _tcp_syn(5061, b"hello"))) == -1
    assert _verdict(fp.prog_fd, _ip6("fd09:2::3", tcp, _tcp_syn(5060))) == TC_ACT_SHOT
    assert _verdict(fp.prog_fd, _ip6("fd09:1::3", tcp, _tcp_syn(5060))) == TC_ACT_UNSPEC
    assert _src(fp, untrusted)["dropped_untrusted_pkts"] == 2

    # the port set is a map: changed live, no rebuild
    fp.set_sip_ports([("udp", 5070)])
    assert fp.maps.sip_ports() == [("udp", 5070)]
    assert _verdict(fp.prog_fd, udp4(untrusted, INVITE, dport=5060)) == TC_ACT_UNSPEC
    assert _verdict(fp.prog_fd, udp4(untrusted, INVITE, dport=5070)) == TC_ACT_SHOT


@pytest.mark.root
def test_ip_header_variants(fp: BpfFastPath) -> None:
    # IPv4 options move the UDP header; the payload is still found
    opts = b"\x01\x01\x01\x00"  # NOP NOP NOP EOL
    assert _verdict(fp.prog_fd, udp4("10.9.1.4", OPTIONS, options=opts)) == TC_ACT_UNSPEC
    assert _verdict(fp.prog_fd, udp4("10.9.1.4", b"hello", options=opts)) == TC_ACT_SHOT
    # a first fragment (MF, offset 0) is judged; later ones carry no ports and are passed
    mf = 0x2000
    assert _verdict(fp.prog_fd, udp4("10.9.2.4", INVITE, frag_off=mf)) == TC_ACT_SHOT
    assert _verdict(fp.prog_fd, udp4("10.9.2.4", b"junk", frag_off=185)) == TC_ACT_UNSPEC
    # IPv6 with an extension header (here a fragment header) is not ours
    frag_hdr = struct.pack("!BBHI", socket.IPPROTO_UDP, 0, 1, 7)
    ext = _ip6("fd09:2::4", 44, frag_hdr + _udp(5060, INVITE))
    assert _verdict(fp.prog_fd, ext) == TC_ACT_UNSPEC
    # a header cut short (UDP announced, no UDP header) is left to the stack, which drops it
    assert _verdict(fp.prog_fd, _ip4("10.9.2.4", socket.IPPROTO_UDP, b"")) == TC_ACT_UNSPEC


@pytest.mark.root
def test_trusted_list_is_replaced_exactly(fp: BpfFastPath) -> None:
    fp.set_trusted(["10.9.3.0/24", "10.9.4.4", "::ffff:10.9.5.0/120", "fd09:3::/48"])
    assert fp.trusted() == ["10.9.3.0/24", "10.9.4.4/32", "10.9.5.0/24", "fd09:3::/48"]
    assert _verdict(fp.prog_fd, udp4("10.9.3.200", OPTIONS)) == TC_ACT_UNSPEC  # longest prefix
    assert _verdict(fp.prog_fd, udp4("10.9.5.1", OPTIONS)) == TC_ACT_UNSPEC  # mapped -> v4
    assert _verdict(fp.prog_fd, udp4("10.9.4.5", OPTIONS)) == TC_ACT_SHOT
    assert _verdict(fp.prog_fd, udp6("fd09:3:0:1::9", OPTIONS)) == TC_ACT_UNSPEC
    assert _verdict(fp.prog_fd, udp4("10.9.1.1", OPTIONS)) == TC_ACT_SHOT  # no longer trusted

    fp.set_trusted(["10.9.4.4/32"])
    assert fp.trusted() == ["10.9.4.4/32"]
    assert _verdict(fp.prog_fd, udp4("10.9.3.200", OPTIONS)) == TC_ACT_SHOT
    with pytest.raises(ValueError, match="host bits"):
        fp.set_trusted(["10.9.4.4/24"])
    with pytest.raises(ValueError, match="holds"):
        fp.set_trusted([f"10.{i >> 8}.{i & 255}.0/24" for i in range(bpf.MAX_TRUSTED + 1)])
    assert fp.trusted() == ["10.9.4.4/32"]  # refused lists change nothing
    fp.set_trusted([])
    assert fp.trusted() == []


@pytest.mark.root
def test_pinholes_admit_until_removed_or_expired(fp: BpfFastPath) -> None:
    hop, hop6 = "10.9.2.5", "fd09:2::5"
    assert _verdict(fp.prog_fd, udp4(hop, OPTIONS)) == TC_ACT_SHOT
    fp.add_pinhole(hop, 30)
    fp.add_pinhole(hop6, 30)
    assert _verdict(fp.prog_fd, udp4(hop, b"SIP/2.0 180 Ringing\r\n\r\n")) == TC_ACT_UNSPEC
    assert _verdict(fp.prog_fd, udp6(hop6, b"BYE sip:x SIP/2.0\r\n")) == TC_ACT_UNSPEC
    assert _verdict(fp.prog_fd, udp4(hop, b"hello")) == TC_ACT_SHOT  # still SIP only
    left = fp.maps.pinholes()
    assert set(left) == {hop, hop6} and 29 < left[hop] <= 30

    fp.add_pinhole(hop, 1)  # a shorter second user never shortens an open pinhole
    assert fp.maps.pinholes()[hop] > 29
    assert fp.remove_pinhole(hop) is True
    assert fp.remove_pinhole(hop) is False
    assert _verdict(fp.prog_fd, udp4(hop, OPTIONS)) == TC_ACT_SHOT

    fp.add_pinhole("::ffff:" + hop, 0.2)  # a mapped address is its IPv4 one
    assert _verdict(fp.prog_fd, udp4(hop, OPTIONS)) == TC_ACT_UNSPEC
    time.sleep(0.3)
    assert _verdict(fp.prog_fd, udp4(hop, OPTIONS)) == TC_ACT_SHOT  # expired in the kernel
    assert hop not in fp.maps.pinholes()
    assert fp.sweep_pinholes() == 1  # and swept from the map by user space
    with pytest.raises(ValueError, match="ttl"):
        fp.add_pinhole(hop, 0)


# =============================================================================================
# Root + bcc + namespaces: the classifier on a real interface, maps through the pins

# Runs in the proxy's network namespace (but this mount namespace, so /sys/fs/bpf is ours):
# loads, trusts, attaches and pins from inside a running asyncio loop as the supervisor does,
# prints READY, and on SIGTERM takes it all down (detach + unpin) and prints STOPPED.
LOADER_PY = """
import asyncio, json, signal, sys
from clearip.fastpath.bpf import BpfFastPath

cfg = json.loads(sys.argv[1])

async def main():
    fp = BpfFastPath(cfg["name"], [tuple(p) for p in cfg["ports"]], cfg["max_sources"])
    fp.load()
    fp.set_trusted(cfg["trusted"])
    fp.attach(cfg["interfaces"])
    fp.pin()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print("READY", fp.filter_name, flush=True)
    await stop.wait()
    fp.stop()
    print("STOPPED", flush=True)

asyncio.run(main())
"""

# The proxy's stand-in: one dual-stack UDP socket and one TCP listener on 5060; logs every
# datagram ("udp <src> <hex>") and connection ("tcp <src>").
LISTENER_PY = """
import select, socket, sys
def plain(host):
    return host[7:] if host.startswith("::ffff:") else host
port = int(sys.argv[1])
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
u.bind(("::", port))
t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("::", port))
t.listen(64)
while True:
    for s in select.select([u, t], [], [])[0]:
        if s is u:
            data, addr = u.recvfrom(65535)
            print("udp", plain(addr[0]), data.hex(), flush=True)
        else:
            conn, addr = t.accept()
            print("tcp", plain(addr[0]), flush=True)
            conn.close()
"""

# send.py DST PORT HEX: one UDP datagram.
SEND_PY = """
import socket, sys
dst, port, payload = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
socket.socket(fam, socket.SOCK_DGRAM).sendto(payload, (dst, port))
"""

# connect.py DST PORT TIMEOUT: exit 0 connected, 3 timed out, 4 refused or unreachable.
CONNECT_PY = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
except TimeoutError:
    sys.exit(3)
except OSError:
    sys.exit(4)
"""

# flood.py DST PORT COUNT FIRST_SRC: COUNT UDP INVITEs, each from the next address after
# FIRST_SRC (spoofed with IP_HDRINCL; the kernel fills in length and checksum).
FLOOD_PY = """
import ipaddress, socket, struct, sys
dst, port, count, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
payload = b"INVITE sip:flood@" + dst.encode() + b" SIP/2.0\\r\\n\\r\\n"
udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
base, daddr = int(ipaddress.IPv4Address(first)), socket.inet_aton(dst)
for i in range(count):
    src = ipaddress.IPv4Address(base + i).packed
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, daddr)
    s.sendto(ip + udp, (dst, 0))
"""

# remove_all.py NAME IFACE...: crash clean-up; prints what it removed as JSON.
REMOVE_ALL_PY = """
import json, sys
from clearip.fastpath.bpf import remove_all
print(json.dumps(remove_all(sys.argv[1], sys.argv[2:])))
"""


@dataclass
class Loader:
    """One loader process in the proxy's network namespace (via nsenter: same mount ns)."""

    proc: subprocess.Popen[bytes]
    log: Path
    filter_name: str = ""

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        return stop_process(self.proc, sig, grace=10.0)


@dataclass
class Rig:
    lab: NetLab
    proxy: Host
    client: Host
    rogue: Host
    name: str
    workdir: Path
    listener: subprocess.Popen[bytes]
    loaders: list[Loader] = field(default_factory=list)
    maps: PinnedMaps | None = None
    _seq: int = 0

    # ------------------------------------------------------------------ processes
    def script(self, name: str) -> str:
        return str(self.workdir / name)

    def in_proxy_ns(self, argv: list[str]) -> list[str]:
        # nsenter, not `ip netns exec`: that one also mounts a fresh /sys, hiding /sys/fs/bpf
        return ["nsenter", f"--net=/run/netns/{self.proxy.ns}", *argv]

    def start_loader(self, max_sources: int = MAX_SOURCES) -> Loader:
        self._seq += 1
        log = self.workdir / f"loader{self._seq}.log"
        cfg = {
            "name": self.name,
            "ports": SIP_PORTS,
            "max_sources": max_sources,
            "trusted": [f"{self.client.ip}/32", f"{self.client.ip6}/128"],
            "interfaces": ["eth0"],
        }
        argv = [sys.executable, self.script("loader.py"), json.dumps(cfg)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                self.in_proxy_ns(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        loader = Loader(proc, log)
        self.loaders.append(loader)

        def ready() -> str | None:
            if proc.poll() is not None:
                pytest.fail(f"loader exited rc={proc.returncode}:\n{loader.text()}")
            for line in loader.text().splitlines():
                if line.startswith("READY "):
                    return line.split()[1]
            return None

        loader.filter_name = _wait_for("the loader to attach", ready, timeout=30)
        return loader

    def reopen_maps(self) -> PinnedMaps:
        if self.maps is not None:
            self.maps.close()
        self.maps = open_pinned(self.name)
        return self.maps

    # ------------------------------------------------------------------ traffic
    def send(self, host: Host, payload: bytes, *, v6: bool = False, port: int = 5060) -> None:
        dst = self.proxy.ip6 if v6 else self.proxy.ip
        host.run([sys.executable, self.script("send.py"), dst, str(port), payload.hex()])

    def connect(self, host: Host, timeout: float, *, v6: bool = False) -> int:
        dst = self.proxy.ip6 if v6 else self.proxy.ip
        argv = [sys.executable, self.script("connect.py"), dst, "5060", str(timeout)]
        return host.run(argv, timeout=timeout + 10, check=False).returncode

    def received(self) -> list[tuple[str, str, bytes]]:
        """What the listener got: (proto, source, payload)."""
        out = []
        log = Path(self.listener.log_path)  # type: ignore[attr-defined]
        for line in log.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] in ("udp", "tcp"):
                out.append((parts[0], parts[1], bytes.fromhex(parts[2]) if len(parts) > 2 else b""))
        return out

    def got(self, payload: bytes) -> bool:
        return any(p == payload for _proto, _src, p in self.received())

    def wait_received(self, payload: bytes) -> None:
        _wait_for(f"the listener to get {payload[:40]!r}", lambda: self.got(payload))

    def counter(self, addr: str, name: str) -> int:
        assert self.maps is not None
        return self.maps.read_sources().get(addr, {}).get(name, 0)

    def wait_counter(self, addr: str, name: str, above: int) -> int:
        return _wait_for(
            f"{name} of {addr} to pass {above}",
            lambda: (n := self.counter(addr, name)) > above and n,
        )

    def assert_dropped(self, host: Host, payload: bytes, reason: str, *, v6: bool = False) -> None:
        """`payload` from `host` is dropped by the kernel for `reason` ("untrusted"/"nonsip"),
        counted for its source, and never reaches the listener (checked behind a marker that
        the trusted client sends afterwards and the listener does get)."""
        src = host.ip6 if v6 else host.ip
        assert src is not None
        counter = f"dropped_{reason}_pkts"
        before = self.counter(src, counter)
        self.send(host, payload, v6=v6)
        self.wait_counter(src, counter, before)
        marker = _sip(b"OPTIONS", "marker")
        self.send(self.client, marker, v6=v6)
        self.wait_received(marker)
        assert not self.got(payload)

    def assert_passes(self, host: Host, payload: bytes, *, v6: bool = False) -> None:
        src = host.ip6 if v6 else host.ip
        assert src is not None
        before = self.counter(src, "passed_pkts")
        self.send(host, payload, v6=v6)
        self.wait_received(payload)
        self.wait_counter(src, "passed_pkts", before)

    def tc_filters(self) -> list[str]:
        """Lines of `tc filter show dev eth0 ingress` in the proxy naming this fast path."""
        res = self.proxy.run(["tc", "filter", "show", "dev", "eth0", "ingress"], check=False)
        return [ln for ln in res.stdout.splitlines() if f"clearip:{self.name}:" in ln]

    def pins(self) -> list[str]:
        d = Path(bpf.DEFAULT_PIN_ROOT) / self.name
        return sorted(os.listdir(d)) if d.exists() else []


def _sip(method: bytes, tag: str) -> bytes:
    """A small SIP request with a unique Call-ID, so each send is told apart in the log."""
    call_id = f"{tag}-{secrets.token_hex(4)}".encode()
    return method + b" sip:proxy@10.77.0.10 SIP/2.0\r\nCall-ID: " + call_id + b"\r\n\r\n"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces and eBPF")
    skip_unless_netns()
    if shutil.which("nsenter") is None:
        pytest.skip("needs nsenter (util-linux) to run the loader in the proxy's netns")
    probe = BpfFastPath(_unique_name("probe"), SIP_PORTS, MAX_SOURCES)
    try:
        probe.load()  # the same compile the loader will do: skip here, with the reason
    except FastPathUnavailable as exc:
        pytest.skip(f"eBPF fast path unavailable here: {exc.reason} (fix: {exc.fix})")
    finally:
        probe.close()
    bpf.ensure_bpffs()
    cleanup_stale()
    _cleanup_stale_pins()
    workdir = tmp_path_factory.mktemp("fastpath")
    scripts = {
        "loader.py": LOADER_PY,
        "listener.py": LISTENER_PY,
        "send.py": SEND_PY,
        "connect.py": CONNECT_PY,
        "flood.py": FLOOD_PY,
        "remove_all.py": REMOVE_ALL_PY,
    }
    for fname, text in scripts.items():
        (workdir / fname).write_text(textwrap.dedent(text))
    name = _unique_name("lab")
    lab = NetLab(workdir=workdir / "lab")
    rig: Rig | None = None
    try:
        proxy = lab.add_host("proxy", "10.77.0.10/24", "fd77::10/64")
        client = lab.add_host("client", "10.77.0.11/24", "fd77::11/64")
        rogue = lab.add_host("rogue", "10.77.0.66/24", "fd77::66/64")
        listener = proxy.popen([sys.executable, str(workdir / "listener.py"), "5060"])
        proxy.wait_udp(5060, proc=listener)
        proxy.wait_tcp(5060, proc=listener)
        rig = Rig(lab, proxy, client, rogue, name, workdir, listener)
        rig.start_loader()
        rig.reopen_maps()
        yield rig
    finally:
        if rig is not None:
            if rig.maps is not None:
                rig.maps.close()
            for loader in rig.loaders:
                loader.stop()
        # whatever a failed test left: filters go with the namespace, pins must go by name
        with contextlib.suppress(Exception):
            remove_all(name, [])
        lab.close()


@pytest.mark.root
def test_lab_trusted_client_passes_untrusted_rogue_dropped(rig: Rig) -> None:
    rig.assert_passes(rig.client, _sip(b"OPTIONS", "client"))
    rig.assert_dropped(rig.rogue, _sip(b"INVITE", "rogue"), "untrusted")
    assert rig.counter(rig.rogue.ip, "dropped_untrusted_bytes") > 0
    assert rig.counter(rig.rogue.ip, "passed_pkts") == 0
    # non-SIP bytes from a trusted source are dropped too; keepalives are not
    rig.assert_dropped(rig.client, b"hello", "nonsip")
    rig.assert_passes(rig.client, b"\r\n\r\n")
    rig.assert_passes(rig.client, b"\r\n")
    assert rig.maps is not None
    totals = rig.maps.read_totals()
    assert totals["passed"]["pkts"] >= 3 and totals["dropped_untrusted"]["pkts"] >= 1


@pytest.mark.root
def test_lab_pinhole_admits_rogue_until_removed_or_expired(rig: Rig) -> None:
    assert rig.maps is not None
    rig.maps.add_pinhole(rig.rogue.ip, 30)  # from this process, through the pins
    rig.assert_passes(rig.rogue, _sip(b"SIP/2.0 200 OK\r\nX:", "pinhole"))
    rig.maps.remove_pinhole(rig.rogue.ip)
    rig.assert_dropped(rig.rogue, _sip(b"BYE", "closed"), "untrusted")

    rig.maps.add_pinhole(rig.rogue.ip, 1.5)
    rig.assert_passes(rig.rogue, _sip(b"ACK", "short"))
    time.sleep(1.6)
    rig.assert_dropped(rig.rogue, _sip(b"ACK", "expired"), "untrusted")


@pytest.mark.root
def test_lab_tcp_syn_from_rogue_dropped_client_connects(rig: Rig) -> None:
    assert rig.connect(rig.client, timeout=5) == 0
    before = rig.counter(rig.rogue.ip, "dropped_untrusted_pkts")
    assert rig.connect(rig.rogue, timeout=0.5) == 3  # SYN dropped: no RST, a timeout
    assert rig.counter(rig.rogue.ip, "dropped_untrusted_pkts") > before
    assert ("tcp", rig.client.ip, b"") in rig.received()
    assert not any(proto == "tcp" and src == rig.rogue.ip for proto, src, _ in rig.received())


@pytest.mark.root
def test_lab_ipv6(rig: Rig) -> None:
    rig.assert_passes(rig.client, _sip(b"OPTIONS", "client6"), v6=True)
    rig.assert_dropped(rig.rogue, _sip(b"INVITE", "rogue6"), "untrusted", v6=True)
    rig.assert_dropped(rig.client, b"hello", "nonsip", v6=True)
    assert rig.connect(rig.client, timeout=5, v6=True) == 0
    assert rig.connect(rig.rogue, timeout=0.5, v6=True) == 3
    sources = rig.maps.read_sources() if rig.maps else {}
    assert sources["fd77::11"]["passed_pkts"] >= 2
    assert sources["fd77::66"]["dropped_untrusted_pkts"] >= 2


@pytest.mark.root
def test_lab_spoofed_flood_only_evicts(rig: Rig) -> None:
    assert rig.maps is not None
    assert rig.maps.max_sources == MAX_SOURCES
    count = 20000
    before = rig.maps.read_totals()["dropped_untrusted"]["pkts"]
    assert rig.rogue.ping(rig.proxy.ip)  # ARP resolved first, so no packet waits for it
    argv = [sys.executable, rig.script("flood.py"), rig.proxy.ip, "5060", str(count), "10.78.0.1"]
    rig.rogue.run(argv, timeout=30)
    dropped = _wait_for(
        "the flood to be counted",
        lambda: (
            (n := rig.maps.read_totals()["dropped_untrusted"]["pkts"] - before) >= count * 0.9 and n
        ),  # veth backlogs may drop a few before tc sees them
        timeout=10,
    )
    sources = rig.maps.read_sources()
    flooders = [a for a in sources if a.startswith("10.78.")]
    assert len(sources) <= MAX_SOURCES < dropped  # more sources than slots, map still bounded
    assert flooders  # recent flood sources are there: the LRU evicted, it did not refuse
    # the trusted client is untouched by the flood: passes, and is counted again
    rig.assert_passes(rig.client, _sip(b"OPTIONS", "after-flood"))
    assert rig.counter(rig.client.ip, "passed_pkts") >= 1
    assert len(rig.maps.read_sources()) <= MAX_SOURCES


@pytest.mark.root
def test_lab_replace_detach_crash_and_cleanup(rig: Rig) -> None:
    """Runs last: it stops the module's loader."""
    first = rig.loaders[0]
    old_ids = rig.reopen_maps().map_ids()
    assert rig.tc_filters() and first.filter_name in rig.tc_filters()[0]

    # a second load + attach (a restart) REPLACES the filter and the pins
    second = rig.start_loader()
    filters = rig.tc_filters()
    assert len(filters) == 1 and second.filter_name in filters[0]
    new_ids = rig.reopen_maps().map_ids()
    assert set(new_ids.values()).isdisjoint(old_ids.values())
    assert rig.maps is not None and rig.maps.trusted() == ["10.77.0.11/32", "fd77::11/128"]

    # the first one stopping late takes neither the successor's filter nor its pins
    assert first.stop() == 0 and "STOPPED" in first.text()
    assert len(rig.tc_filters()) == 1 and rig.pins() == sorted(bpf.MAP_NAMES)
    rig.assert_dropped(rig.rogue, _sip(b"INVITE", "after-first-stop"), "untrusted")

    # a clean stop: detach + unpin leave no filter and no pin, and the port is open again
    rig.maps.close()
    rig.maps = None
    assert second.stop() == 0 and "STOPPED" in second.text()
    assert rig.tc_filters() == [] and rig.pins() == []
    open_payload = _sip(b"INVITE", "no-filter")
    rig.send(rig.rogue, open_payload)
    rig.wait_received(open_payload)

    # a crash (SIGKILL) leaves filter and pins, still enforcing; remove_all() cleans them
    third = rig.start_loader()
    third.stop(signal.SIGKILL)
    assert len(rig.tc_filters()) == 1 and rig.pins() == sorted(bpf.MAP_NAMES)
    rig.reopen_maps()
    rig.assert_dropped(rig.rogue, _sip(b"INVITE", "after-crash"), "untrusted")
    rig.maps.close()
    rig.maps = None
    argv = [sys.executable, rig.script("remove_all.py"), rig.name, "eth0"]
    out = subprocess.run(
        rig.in_proxy_ns(argv), capture_output=True, text=True, timeout=30, check=True
    )
    removed = json.loads(out.stdout)
    assert sum("tc filter" in r for r in removed) == 1
    assert sum(r.startswith("pin ") for r in removed) == len(bpf.MAP_NAMES)
    assert rig.tc_filters() == [] and rig.pins() == []
