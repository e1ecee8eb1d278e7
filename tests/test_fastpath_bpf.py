"""The eBPF half of the kernel fast path (SPEC §5): classifier, maps, attach/pin life cycle.

Three layers, each skipped with its reason when the machine cannot run it:

- plain: clearip.h and layout.py agree; set-up failures say why and what to do.
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
from lab.netlab import Host, NetLab, cleanup_stale, stop_process

from clearip.fastpath import bpf, layout
from clearip.fastpath import maps as mapsmod
from clearip.fastpath import syscall as syscallmod
from clearip.fastpath.bpf import BpfFastPath
from clearip.fastpath.errors import FastPathError, FastPathUnavailable
from clearip.fastpath.layout import SRC_STATS_FIELDS, header_mismatches
from clearip.fastpath.maps import PinnedMaps, open_pinned
from clearip.fastpath.syscall import bpf_syscall
from clearip.fastpath.tc import remove_all
from tests.helpers import wait_until
from tests.netlab import skip_unless_netns

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
    root = Path(mapsmod.DEFAULT_PIN_ROOT)
    removed: list[str] = []
    if mapsmod.fstype(root) != "bpf":
        return removed
    for entry in root.iterdir():
        m = _STALE_PIN_RE.fullmatch(entry.name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            removed += remove_all(entry.name, [])
    return removed


def _wait_for(what: str, cond: Callable[[], Any], timeout: float = 5.0) -> Any:
    """wait_until with the words first."""
    return wait_until(cond, timeout, what)


# =============================================================================================
# No privileges needed


def test_header_and_python_mirror_agree() -> None:
    assert header_mismatches() == []
    consts = layout.header_constants()
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
    if os.geteuid() == 0 and mapsmod.fstype(Path(mapsmod.DEFAULT_PIN_ROOT)) == "bpf":
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


# BPF_PROG_TEST_RUN runs the frame as received on loopback, whose MAC is all zeros: frames to
# it are PACKET_HOST; to another unicast MAC, PACKET_OTHERHOST (never delivered, not ours).
HOST_MAC = bytes(6)
OTHER_MAC = b"\x02\x00\x00\x00\x00\x10"
BROADCAST_MAC = b"\xff" * 6


def _eth(ethertype: int, payload: bytes, dst_mac: bytes = HOST_MAC) -> bytes:
    return dst_mac + b"\x02\x00\x00\x00\x00\x11" + struct.pack("!H", ethertype) + payload


def _ip4(
    src: str,
    proto: int,
    l4: bytes,
    *,
    options: bytes = b"",
    frag_off: int = 0,
    dst: str = PROXY4,
    dst_mac: bytes = HOST_MAC,
) -> bytes:
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
        ipaddress.IPv4Address(dst).packed,
    )
    return _eth(ETH_IP, head + options + l4, dst_mac)


def _ip6(src: str, nexthdr: int, l4: bytes, *, dst: str = PROXY6) -> bytes:
    head = struct.pack("!IHBB", 6 << 28, len(l4), nexthdr, 64)
    head += ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
    return _eth(ETH_IP6, head + l4)


HOP, ROUTING, FRAGMENT, AUTH, DEST = 0, 43, 44, 51, 60  # IPv6 extension headers


def _ext6(
    kind: int, nexthdr: int, *, size: int = 8, frag_off: int = 0, more: bool = False
) -> bytes:
    """One IPv6 extension header of `size` bytes whose next header is `nexthdr`."""
    if kind == FRAGMENT:  # offset in 8-byte units, M flag (RFC 8200 §4.5)
        return struct.pack("!BBHI", nexthdr, 0, frag_off << 3 | more, 7)
    if kind == AUTH:  # length in 4-byte units, less 2 (RFC 4302)
        return bytes([nexthdr, size // 4 - 2]) + bytes(size - 2)
    # hop-by-hop, routing, destination options: 8-byte units, less 1; here one PadN option
    return bytes([nexthdr, size // 8 - 1, 1, size - 4]) + bytes(size - 4)


def _chain6(kinds: list[int], last: int, **frag: Any) -> bytes:
    nexts = [*kinds[1:], last]
    return b"".join(
        _ext6(k, n, **(frag if k == FRAGMENT else {})) for k, n in zip(kinds, nexts, strict=True)
    )


def udp6x(src: str, kinds: list[int], payload: bytes, dport: int = 5060, **kw: Any) -> bytes:
    """IPv6 UDP behind the extension headers `kinds` (in order)."""
    dst = kw.pop("dst", PROXY6)
    first = kinds[0] if kinds else socket.IPPROTO_UDP
    return _ip6(
        src, first, _chain6(kinds, socket.IPPROTO_UDP, **kw) + _udp(dport, payload), dst=dst
    )


def _vlan(tags: list[tuple[int, int]], inner: bytes) -> bytes:
    """The Ethernet frame `inner` with 802.1Q/802.1ad tags (TPID, VLAN ID) after its MAC
    addresses, outermost first."""
    return inner[:12] + b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in tags) + inner[12:]


def _udp(dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload


def _tcp_syn(dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0) + payload


def udp4(src: str, payload: bytes, dport: int = 5060, **kw: Any) -> bytes:
    return _ip4(src, socket.IPPROTO_UDP, _udp(dport, payload), **kw)


def udp6(src: str, payload: bytes, dport: int = 5060, **kw: Any) -> bytes:
    return _ip6(src, socket.IPPROTO_UDP, _udp(dport, payload), **kw)


def stun(
    msg_type: int = 0x0001, attrs: bytes = b"", *, length: int | None = None, **kw: Any
) -> bytes:
    """A STUN message (RFC 5389 §6): type, length, magic cookie, 96-bit transaction id."""
    cookie = kw.get("cookie", 0x2112A442)
    size = len(attrs) if length is None else length
    return struct.pack("!HHI", msg_type, size, cookie) + b"txn-id-12345" + attrs


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
    loaded.set_local_addresses([])
    yield loaded
    for addr in loaded.maps.pinholes():
        loaded.remove_pinhole(addr)
    loaded.set_local_addresses([])


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
    # STUN Binding requests: the keepalive of SIP outbound (RFC 5626 §4.4.2), exactly
    (stun(), True),
    (stun(attrs=b"\x80\x28\x00\x04abcd"), True),  # with an attribute (FINGERPRINT-sized)
    (stun(0x0101), False),  # a Binding success response: the proxy never asks
    (stun(0x0011), False),  # a Binding indication
    (stun(0x4001), False),  # the first two bits must be 0
    (stun(cookie=0x2112A443), False),  # RFC 3489's cookie-less STUN: not a keepalive here
    (stun(length=4), False),  # announces 4 bytes of attributes, has none
    (stun(attrs=b"abcd", length=0), False),  # ... or has some it does not announce
    (stun(attrs=b"abc"), False),  # a length that is not a multiple of 4
    (stun()[:19], False),  # cut short
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
    # an IPv4 header cut short (UDP announced, no UDP header) is left to the stack, which
    # drops it; an IPv6 one is not (its ports may come in a later fragment: see below)
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
        fp.set_trusted([f"10.{i >> 8}.{i & 255}.0/24" for i in range(layout.MAX_TRUSTED + 1)])
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


def _delta(fp: BpfFastPath, addr: str, frames: list[bytes]) -> tuple[list[int], dict[str, int]]:
    """The verdicts of `frames` and how much each counter of `addr` moved meanwhile."""
    before = _src(fp, addr)
    verdicts = [_verdict(fp.prog_fd, f) for f in frames]
    after = _src(fp, addr)
    return verdicts, {k: after[k] - before[k] for k in after if after[k] != before[k]}


def _totals_delta(fp: BpfFastPath, frames: list[bytes]) -> tuple[list[int], dict[str, int]]:
    before = fp.read_totals()
    verdicts = [_verdict(fp.prog_fd, f) for f in frames]
    after = fp.read_totals()
    moved = {k: after[k]["pkts"] - before[k]["pkts"] for k in after}
    return verdicts, {k: n for k, n in moved.items() if n}


EXT_CHAINS = [
    [HOP],
    [DEST],
    [ROUTING],
    [AUTH],
    [FRAGMENT],  # an atomic fragment (offset 0, no more): judged by its ports
    [HOP, DEST, ROUTING, FRAGMENT, AUTH, DEST],
    [HOP] + [DEST] * 7,  # CLEARIP_MAX_EXT_HDRS, the longest walked
]


@pytest.mark.root
@pytest.mark.parametrize("kinds", EXT_CHAINS, ids=["-".join(map(str, k)) for k in EXT_CHAINS])
def test_ipv6_extension_headers_are_walked(fp: BpfFastPath, kinds: list[int]) -> None:
    # a stranger's INVITE behind extension headers is dropped and counted, like any other
    verdicts, moved = _delta(fp, "fd09:2::6", [udp6x("fd09:2::6", kinds, INVITE)])
    assert verdicts == [TC_ACT_SHOT]
    assert moved["dropped_untrusted_pkts"] == 1
    # a trusted source's SIP passes, its junk does not: the payload is found behind them
    frames = [udp6x("fd09:1::6", kinds, OPTIONS), udp6x("fd09:1::6", kinds, b"hello")]
    verdicts, moved = _delta(fp, "fd09:1::6", frames)
    assert verdicts == [TC_ACT_UNSPEC, TC_ACT_SHOT]
    assert (moved["passed_pkts"], moved["dropped_nonsip_pkts"]) == (1, 1)
    # other ports are still not ours; TCP is walked to as well
    assert _verdict(fp.prog_fd, udp6x("fd09:2::6", kinds, INVITE, dport=53)) == TC_ACT_UNSPEC
    syn = _ip6("fd09:2::6", kinds[0], _chain6(kinds, socket.IPPROTO_TCP) + _tcp_syn(5061))
    assert _verdict(fp.prog_fd, syn) == TC_ACT_SHOT


@pytest.mark.root
def test_ipv6_fragments_and_chains_that_cannot_be_walked(fp: BpfFastPath) -> None:
    rogue, switch = "fd09:2::7", "fd09:1::7"
    udp = socket.IPPROTO_UDP
    # a first fragment is judged by its ports; a later one carries none and passes alone
    first = udp6x(rogue, [FRAGMENT], INVITE, more=True)
    later = _ip6(rogue, FRAGMENT, _ext6(FRAGMENT, udp, frag_off=185) + b"junk" * 8)
    verdicts, moved = _delta(fp, rogue, [first, later])
    assert verdicts == [TC_ACT_SHOT, TC_ACT_UNSPEC]
    assert moved == {"dropped_untrusted_pkts": 1, "dropped_untrusted_bytes": len(first)}

    # Without its ports, to a local address: dropped, and counted under its source: untrusted
    # from a stranger, non-SIP from an admitted source (nothing shows it is SIP).
    unreadable = {
        "a chain longer than the bound": lambda src: udp6x(src, [DEST] * 9, INVITE),
        "a chain cut short": lambda src: _ip6(src, DEST, b""),
        "a header cut short": lambda src: _ip6(src, DEST, _ext6(DEST, HOP)[:6]),
        "the UDP header in a later fragment": lambda src: _ip6(
            src, FRAGMENT, _ext6(FRAGMENT, udp, more=True) + _udp(5060, b"")[:4]
        ),
        "no UDP header at all": lambda src: _ip6(src, udp, b""),
    }
    for what, frame in unreadable.items():
        verdicts, moved = _delta(fp, rogue, [frame(rogue)])
        assert (verdicts, moved.get("dropped_untrusted_pkts")) == ([TC_ACT_SHOT], 1), what
        verdicts, moved = _delta(fp, switch, [frame(switch)])
        assert (verdicts, moved.get("dropped_nonsip_pkts")) == ([TC_ACT_SHOT], 1), what
    # whatever its port would have been (it cannot be seen)...
    assert _verdict(fp.prog_fd, udp6x(rogue, [DEST] * 9, INVITE, dport=53)) == TC_ACT_SHOT
    # ... but only to the proxy's own addresses
    fp.set_local_addresses([PROXY6])
    assert _verdict(fp.prog_fd, udp6x(rogue, [DEST] * 9, INVITE, dst="fd09::99")) == -1
    # other protocols behind a walkable chain are not ours, as in IPv4
    icmp6 = _ip6(rogue, DEST, _ext6(DEST, socket.IPPROTO_ICMPV6) + bytes(8))
    assert _verdict(fp.prog_fd, icmp6) == TC_ACT_UNSPEC


@pytest.mark.root
def test_stun_keepalives_pass_from_admitted_sources_only(fp: BpfFastPath) -> None:
    verdicts, moved = _delta(fp, "10.9.1.9", [udp4("10.9.1.9", stun())])
    assert (verdicts, moved["passed_pkts"]) == ([TC_ACT_UNSPEC], 1)
    verdicts, moved = _delta(fp, "10.9.2.9", [udp4("10.9.2.9", stun())])
    assert (verdicts, moved["dropped_untrusted_pkts"]) == ([TC_ACT_SHOT], 1)
    fp.add_pinhole("10.9.2.9", 30)  # a pinholed next hop keeps its NAT binding alive too
    assert _verdict(fp.prog_fd, udp4("10.9.2.9", stun())) == TC_ACT_UNSPEC
    assert _verdict(fp.prog_fd, udp4("10.9.2.9", stun(), dport=5061)) == TC_ACT_UNSPEC  # TCP's


@pytest.mark.root
def test_only_the_proxys_own_destinations_are_judged(fp: BpfFastPath) -> None:
    rogue, rogue6 = "10.9.2.10", "fd09:2::10"
    fp.set_local_addresses([PROXY4, "::ffff:10.9.0.255", PROXY6])
    assert fp.local_addresses() == [PROXY4, "10.9.0.255", PROXY6]  # one normal form
    # traffic to other hosts' 5060 (forwarded, bridged) is left alone and not counted
    others = [udp4(rogue, INVITE, dst="10.9.0.99"), udp6(rogue6, INVITE, dst="fd09::99")]
    assert _totals_delta(fp, others) == ([TC_ACT_UNSPEC] * 2, {})
    # the proxy's own, its subnet's broadcast, and broadcast or multicast of any kind: judged
    ours = [
        udp4(rogue, INVITE),
        udp6(rogue6, INVITE),
        udp4(rogue, INVITE, dst="10.9.0.255"),
        udp4(rogue, INVITE, dst="255.255.255.255"),
        udp4(rogue, INVITE, dst="224.0.1.75"),  # sip.mcast.net
        udp6(rogue6, INVITE, dst="ff02::1"),
        udp4(rogue, INVITE, dst="10.9.7.255", dst_mac=BROADCAST_MAC),  # a link broadcast
    ]
    assert _totals_delta(fp, ours) == ([TC_ACT_SHOT] * 7, {"dropped_untrusted": 7})
    # a frame for another host's MAC (promiscuous mode) is never delivered here: not ours
    other_mac = udp4(rogue, INVITE, dst_mac=OTHER_MAC)
    assert _totals_delta(fp, [other_mac]) == ([TC_ACT_UNSPEC], {})

    # no addresses: nothing is known to be local, so every destination is judged
    fp.set_local_addresses([])
    assert fp.local_addresses() == []
    assert _totals_delta(fp, others) == ([TC_ACT_SHOT] * 2, {"dropped_untrusted": 2})
    with pytest.raises(ValueError, match="unspecified"):
        fp.set_local_addresses(["::"])
    with pytest.raises(ValueError, match="not an IP address"):
        fp.set_local_addresses(["proxy.example.net"])
    with pytest.raises(ValueError, match="holds"):
        fp.set_local_addresses(
            [f"10.{i >> 8}.{i & 255}.1" for i in range(layout.MAX_LOCAL_ADDRS + 1)]
        )
    assert fp.local_addresses() == []  # refused lists change nothing

    # an address judged before and after a change is judged throughout: new in, then old out
    fp.set_local_addresses([PROXY4, "10.9.0.11"])
    fp.set_local_addresses(["10.9.0.11", "10.9.0.12"])
    assert fp.local_addresses() == ["10.9.0.11", "10.9.0.12"]
    assert _verdict(fp.prog_fd, udp4(rogue, INVITE)) == TC_ACT_UNSPEC  # PROXY4 no longer


@pytest.mark.root
def test_vlan_tagged_frames_are_judged_once(fp: BpfFastPath) -> None:
    """BPF_PROG_TEST_RUN leaves every tag in the frame (no hardware untagging): these frames
    are what the classifier sees after the kernel took the outer tag (test_lab_vlan shows
    that one)."""
    dot1q, dot1ad = 0x8100, 0x88A8
    rogue, switch = "10.9.2.11", "10.9.1.11"
    invite, options = udp4(rogue, INVITE), udp4(switch, OPTIONS)
    # a VLAN ID: its VLAN device judges it after untagging, not this one
    assert _totals_delta(fp, [_vlan([(dot1q, 100)], invite)]) == ([TC_ACT_UNSPEC], {})
    assert _totals_delta(fp, [_vlan([(dot1ad, 0), (dot1q, 7)], invite)]) == ([-1], {})
    # priority tags (VLAN ID 0) stay on this device: judged here, behind up to the bound
    for tags in ([(dot1q, 0)], [(dot1ad, 0), (dot1q, 0)], [(dot1q, 0)] * layout.MAX_VLAN_TAGS):
        verdicts, moved = _delta(fp, rogue, [_vlan(tags, invite)])
        assert (verdicts, moved["dropped_untrusted_pkts"]) == ([TC_ACT_SHOT], 1)
        verdicts, moved = _delta(fp, switch, [_vlan(tags, options)])
        assert (verdicts, moved["passed_pkts"]) == ([TC_ACT_UNSPEC], 1)
    v6 = _vlan([(dot1q, 0)], udp6("fd09:2::11", INVITE))
    assert _verdict(fp.prog_fd, v6) == TC_ACT_SHOT
    # more priority tags than the walk's bound hide the IP header: dropped, in totals only
    deep = _vlan([(dot1q, 0)] * (layout.MAX_VLAN_TAGS + 1), invite)
    assert _totals_delta(fp, [deep]) == ([TC_ACT_SHOT], {"dropped_untrusted": 1})


@pytest.mark.root
def test_admitted_sources_keep_their_counters_through_a_spoofed_flood(fp: BpfFastPath) -> None:
    switch, hop, stranger = "10.9.1.12", "10.9.2.12", "10.9.2.13"
    for _ in range(3):
        _verdict(fp.prog_fd, udp4(switch, OPTIONS))
    fp.add_pinhole(hop, 30)
    _verdict(fp.prog_fd, udp4(hop, OPTIONS))
    _verdict(fp.prog_fd, udp4(stranger, INVITE))  # dropped as a stranger...
    fp.add_pinhole(stranger, 30)
    _verdict(fp.prog_fd, udp4(stranger, OPTIONS))  # ... then passed through its pinhole
    switch_row = _src(fp, switch)
    # strangers spoofing three times as many addresses as the LRU holds
    base = int(ipaddress.IPv4Address("10.8.0.0"))
    for i in range(3 * MAX_SOURCES):
        _verdict(fp.prog_fd, udp4(str(ipaddress.IPv4Address(base + i)), INVITE))
    sources = fp.read_sources()
    assert sum(a.startswith("10.8.") for a in sources) <= MAX_SOURCES  # the LRU evicted
    assert sources[switch] == switch_row and switch_row["passed_pkts"] >= 3  # not evicted
    assert sources[hop]["passed_pkts"] == 1
    # an address in both maps reads as one row (the stranger's LRU row may have gone)
    assert sources[stranger]["passed_pkts"] == 1
    assert sources[stranger]["dropped_untrusted_pkts"] in (0, 1)

    # after a deny, the admitted rows of sources no longer admitted go
    assert fp.sweep_admitted(lambda addr: addr != hop) == 1
    assert hop not in fp.read_sources()
    assert fp.read_sources()[switch] == switch_row


def test_percpu_sums_are_exact() -> None:
    """The big-integer lane sum of read_sources() against plain addition, near its limits."""
    rng = __import__("random").Random(5060)
    for ncpus, top in ((1, 64), (2, 63), (3, 62), (16, 60), (16, 64), (300, 40)):
        n, words = 257, 6
        values = [rng.getrandbits(top) for _ in range(n * ncpus * words)]
        raw = struct.pack(f"={len(values)}Q", *values)
        got = list(syscallmod._sum_percpu(raw, n, ncpus, words, words))
        want = [
            tuple(
                sum(values[(i * ncpus + c) * words + f] for c in range(ncpus)) for f in range(words)
            )
            for i in range(n)
        ]
        assert got == want, (ncpus, top)
    assert list(syscallmod._sum_percpu(b"", 0, 4, 6, 6)) == []


@pytest.mark.parametrize(
    "addr",
    ["10.9.0.1", "::", "::1", "::10.9.0.1", "fd09::10", "2001:db8::1:0:0:1", "fe80::1", "ff02::1"],
)
def test_map_keys_read_back_as_the_address_text_status_shows(addr: str) -> None:
    parsed = mapsmod._parse_ip(addr) if addr != "::" else ipaddress.IPv6Address(addr)
    assert mapsmod._addr_text(mapsmod._addr_key(parsed)) == str(parsed)


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("::ffff:192.0.2.1", "192.0.2.1/32"),
        ("::ffff:192.0.2.1/128", "192.0.2.1/32"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("192.0.2.0/24", "192.0.2.0/24"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("::ffff:0:0/96", None),  # every IPv4 address: refused, not 0.0.0.0/0
        ("::/0", None),
        ("0.0.0.0/0", None),
        ("::ffff:0:0/95", None),  # IPv6 and every IPv4 address at once
        ("192.0.2.1/24", None),  # host bits
        ("fe80::1%eth0", None),
    ],
)
def test_trusted_sources_take_the_normal_form_of_every_enforcer(
    text: str, normal: str | None
) -> None:
    if normal is None:
        with pytest.raises(ValueError, match="trusted source"):
            mapsmod._parse_cidr(text)
    else:
        assert str(mapsmod._parse_cidr(text)) == normal
    addr = text.partition("/")[0]
    if "/" not in text and "%" not in text:
        assert str(mapsmod._parse_ip(addr)) == normal.partition("/")[0]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="not an IP address"):
        mapsmod._parse_ip("fe80::1%eth0")


def test_open_pinned_refuses_maps_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="src_stat"):
        open_pinned("cipt_none", only=["src_stat"])


# =============================================================================================
# Root + bcc + namespaces: the classifier on a real interface, maps through the pins

# Runs in the proxy's network namespace (but this mount namespace, so /sys/fs/bpf is ours):
# loads, trusts, attaches and pins from inside a running asyncio loop as the supervisor does,
# prints READY, and on SIGTERM takes it all down (detach + unpin) and prints STOPPED. Between
# the two it takes one JSON command per stdin line, as the supervisor's watchdog would call
# (candidates: attach_candidates(); reconcile: fp.reconcile(interfaces)), and answers with a
# line "REPLY <json>" that also says how many netlink sessions the command opened.
LOADER_PY = """
import asyncio, json, signal, sys
from clearip.fastpath import bpf, tc
from clearip.fastpath.bpf import BpfFastPath
from clearip.fastpath.tc import attach_candidates

cfg = json.loads(sys.argv[1])
sessions = 0
netlink = tc.netlink

def counted(fn):
    global sessions
    sessions += 1
    return netlink(fn)

bpf.netlink = counted  # what BpfFastPath calls (attach, reconcile, detach)
tc.netlink = counted  # what attach_candidates() calls

async def main():
    fp = BpfFastPath(cfg["name"], [tuple(p) for p in cfg["ports"]], cfg["max_sources"])
    fp.load()
    fp.set_trusted(cfg["trusted"])
    fp.attach(cfg["interfaces"])
    fp.pin()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def command():
        line = sys.stdin.readline()
        if not line:
            loop.remove_reader(sys.stdin.fileno())
            return
        cmd = json.loads(line)
        before = sessions
        try:
            if cmd["op"] == "candidates":
                reply = {"result": attach_candidates()}
            else:
                reply = {"result": fp.reconcile(cmd["interfaces"]), "attached": fp.attached}
        except Exception as e:
            reply = {"error": repr(e)}
        reply["netlink"] = sessions - before
        print("REPLY", json.dumps(reply), flush=True)

    loop.add_reader(sys.stdin.fileno(), command)
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

# send.py DST PORT HEX [dst|hop]: one UDP datagram; over IPv6 optionally behind a destination
# options or hop-by-hop header the kernel adds itself (8 bytes: one PadN option, RFC 8200 §4.2).
SEND_PY = """
import socket, sys
dst, port, payload = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
ext = sys.argv[4] if len(sys.argv) > 4 else ""
pad8 = bytes([0, 0, 1, 4, 0, 0, 0, 0])
if ext == "dst":
    s.setsockopt(socket.IPPROTO_IPV6, getattr(socket, "IPV6_DSTOPTS", 59), pad8)
elif ext == "hop":
    s.setsockopt(socket.IPPROTO_IPV6, getattr(socket, "IPV6_HOPOPTS", 54), pad8)
s.sendto(payload, (dst, port))
"""

# rawsend.py IFACE HEX: one Ethernet frame as given (AF_PACKET), e.g. with VLAN tags.
RAWSEND_PY = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
s.send(bytes.fromhex(sys.argv[2]))
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

# remove_all.py NAME [IFACE...]: crash clean-up (no IFACE: every interface, up or down);
# prints what it removed as JSON.
REMOVE_ALL_PY = """
import json, sys
from clearip.fastpath.tc import remove_all
print(json.dumps(remove_all(sys.argv[1], sys.argv[2:] or None)))
"""


@dataclass
class Loader:
    """One loader process in the proxy's network namespace (via nsenter: same mount ns)."""

    proc: subprocess.Popen[bytes]
    log: Path
    filter_name: str = ""
    replies: int = 0

    def command(self, op: str, **args: Any) -> dict[str, Any]:
        """One command to the loader (see LOADER_PY) and its reply."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        self.proc.stdin.flush()
        self.replies += 1

        def reply() -> dict[str, Any] | None:
            lines = [ln for ln in self.text().splitlines() if ln.startswith("REPLY ")]
            if len(lines) >= self.replies:
                return json.loads(lines[self.replies - 1][6:])  # type: ignore[no-any-return]
            if self.proc.poll() is not None:
                pytest.fail(f"loader exited rc={self.proc.returncode}:\n{self.text()}")
            return None

        got: dict[str, Any] = _wait_for(f"the loader to answer {op}", reply, timeout=30)
        assert "error" not in got, got
        return got

    def reconcile(self, interfaces: list[str]) -> tuple[list[str], int]:
        """fp.reconcile(interfaces) in the loader: the lines, and netlink sessions opened."""
        got = self.command("reconcile", interfaces=interfaces)
        return got["result"], got["netlink"]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        rc = stop_process(self.proc, sig, grace=10.0)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        return rc


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
                stdin=subprocess.PIPE,
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
    def send(
        self,
        host: Host,
        payload: bytes,
        *,
        v6: bool = False,
        port: int = 5060,
        dst: str | None = None,
        ext: str = "",
    ) -> None:
        """One UDP datagram from `host` to the proxy (or `dst`); `ext`: see SEND_PY."""
        to = dst or (self.proxy.ip6 if v6 else self.proxy.ip)
        assert to is not None
        argv = [sys.executable, self.script("send.py"), to, str(port), payload.hex()]
        host.run([*argv, *([ext] if ext else [])])

    def send_frame(self, host: Host, frame: bytes) -> None:
        host.run([sys.executable, self.script("rawsend.py"), host.ifname, frame.hex()])

    def mac(self, host: Host, ifname: str = "eth0") -> bytes:
        text = host.run(["cat", f"/sys/class/net/{ifname}/address"]).stdout.strip()
        return bytes.fromhex(text.replace(":", ""))

    def ip(self, host: Host, *args: str) -> None:
        host.run(["ip", *args])

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

    def assert_dropped(
        self,
        host: Host,
        payload: bytes,
        reason: str,
        *,
        v6: bool = False,
        ext: str = "",
        frame: bytes | None = None,
    ) -> None:
        """`payload` from `host` is dropped by the kernel for `reason` ("untrusted"/"nonsip"),
        counted for its source, and never reaches the listener (checked behind a marker that
        the trusted client sends afterwards and the listener does get). `frame`: send that
        Ethernet frame (carrying `payload`) instead of a datagram."""
        src = host.ip6 if v6 else host.ip
        assert src is not None
        counter = f"dropped_{reason}_pkts"
        before = self.counter(src, counter)
        if frame is not None:
            self.send_frame(host, frame)
        else:
            self.send(host, payload, v6=v6, ext=ext)
        self.wait_counter(src, counter, before)
        marker = _sip(b"OPTIONS", "marker")
        self.send(self.client, marker, v6=v6)
        self.wait_received(marker)
        assert not self.got(payload)

    def assert_passes(
        self,
        host: Host,
        payload: bytes,
        *,
        v6: bool = False,
        ext: str = "",
        frame: bytes | None = None,
    ) -> None:
        src = host.ip6 if v6 else host.ip
        assert src is not None
        before = self.counter(src, "passed_pkts")
        if frame is not None:
            self.send_frame(host, frame)
        else:
            self.send(host, payload, v6=v6, ext=ext)
        self.wait_received(payload)
        self.wait_counter(src, "passed_pkts", before)

    def tc_filters(self) -> list[str]:
        """Lines of `tc filter show dev eth0 ingress` in the proxy naming this fast path."""
        res = self.proxy.run(["tc", "filter", "show", "dev", "eth0", "ingress"], check=False)
        return [ln for ln in res.stdout.splitlines() if f"clearip:{self.name}:" in ln]

    def pins(self) -> list[str]:
        d = Path(mapsmod.DEFAULT_PIN_ROOT) / self.name
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
    mapsmod.ensure_bpffs()
    cleanup_stale()
    _cleanup_stale_pins()
    workdir = tmp_path_factory.mktemp("fastpath")
    scripts = {
        "loader.py": LOADER_PY,
        "listener.py": LISTENER_PY,
        "send.py": SEND_PY,
        "connect.py": CONNECT_PY,
        "rawsend.py": RAWSEND_PY,
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

    rig.maps.add_pinhole(rig.rogue.ip, 30)
    rig.assert_passes(rig.rogue, _sip(b"ACK", "open"))
    # 30 s later, as the classifier finds it: the deadline written in the past (no sleeping)
    table, key, _addr = rig.maps._pinhole_slot(rig.rogue.ip)
    table.update(key, layout.U64.pack(mapsmod._now_ns() - 1_000_000))
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


def _frame4(
    dst_mac: bytes, src_mac: bytes, src: str, dst: str, payload: bytes, tags: list[tuple[int, int]]
) -> bytes:
    """An Ethernet frame with VLAN tags carrying an IPv4 UDP datagram to port 5060 (header
    checksum computed: the stack checks it; UDP checksum 0: none)."""
    udp = struct.pack("!HHHH", 40000, 5060, 8 + len(payload), 0) + payload
    head = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        1,
        0,
        64,
        socket.IPPROTO_UDP,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    total = sum(struct.unpack("!10H", head))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    head = head[:10] + struct.pack("!H", ~total & 0xFFFF) + head[12:]
    return _vlan(tags, dst_mac + src_mac + struct.pack("!H", ETH_IP) + head + udp)


@pytest.mark.root
def test_lab_ipv6_extension_headers_and_fragments(rig: Rig) -> None:
    # headers the senders' kernels add themselves (IPV6_DSTOPTS, IPV6_HOPOPTS)
    rig.assert_dropped(rig.rogue, _sip(b"INVITE", "dstopts"), "untrusted", v6=True, ext="dst")
    rig.assert_dropped(rig.rogue, _sip(b"INVITE", "hopopts"), "untrusted", v6=True, ext="hop")
    rig.assert_passes(rig.client, _sip(b"OPTIONS", "dstopts-ok"), v6=True, ext="dst")
    rig.assert_dropped(rig.client, b"no SIP behind options", "nonsip", v6=True, ext="dst")
    # larger than the MTU: sent as fragments, the first one judged by its ports
    rig.assert_dropped(rig.rogue, _sip(b"INVITE", "big") + b"x" * 3000, "untrusted", v6=True)
    rig.assert_passes(rig.client, _sip(b"OPTIONS", "big-ok") + b"x" * 3000, v6=True)


@pytest.mark.root
def test_lab_traffic_forwarded_to_other_hosts_is_left_alone(rig: Rig) -> None:
    assert rig.maps is not None
    # the rogue routes a far network through the proxy: its packets reach the proxy's eth0,
    # but are not for the proxy (which does not forward them either)
    rig.rogue.add_route("10.99.0.0/24", via=rig.proxy.ip)
    rig.maps.set_local_addresses([rig.proxy.ip, rig.proxy.ip6, "10.77.0.255"])
    try:
        before = rig.counter(rig.rogue.ip, "dropped_untrusted_pkts")
        rig.send(rig.rogue, _sip(b"INVITE", "far"), dst="10.99.0.1")
        # then one to the proxy: once it is counted, the far one went through tc before it
        rig.assert_dropped(rig.rogue, _sip(b"INVITE", "near"), "untrusted")
        assert rig.counter(rig.rogue.ip, "dropped_untrusted_pkts") == before + 1
        # not told its addresses, the fast path judges every destination (fails closed)
        rig.maps.set_local_addresses([])
        rig.send(rig.rogue, _sip(b"INVITE", "far-closed"), dst="10.99.0.1")
        rig.wait_counter(rig.rogue.ip, "dropped_untrusted_pkts", before + 1)
    finally:
        rig.maps.set_local_addresses([])


@pytest.mark.root
def test_lab_tagged_frames_are_left_to_their_vlan_or_judged_here(rig: Rig) -> None:
    """The kernel takes a frame's first tag out (skb->vlan_*) before tc: a VLAN ID there is
    its VLAN device's to judge; a priority tag (VLAN ID 0) keeps the frame on eth0."""
    assert rig.maps is not None and rig.rogue.ip and rig.client.ip and rig.proxy.ip
    proxy_mac = rig.mac(rig.proxy)
    rogue, client = rig.rogue, rig.client

    def tagged(host: Host, payload: bytes, vid: int) -> bytes:
        assert host.ip and rig.proxy.ip
        return _frame4(proxy_mac, rig.mac(host), host.ip, rig.proxy.ip, payload, [(0x8100, vid)])

    bad = _sip(b"INVITE", "priority")
    rig.assert_dropped(rogue, bad, "untrusted", frame=tagged(rogue, bad, 0))
    good = _sip(b"OPTIONS", "priority-ok")
    rig.assert_passes(client, good, frame=tagged(client, good, 0))
    # VLAN 100, which the proxy has no device for: not ours (uncounted), the stack drops it
    before = rig.counter(rogue.ip, "dropped_untrusted_pkts")
    rig.send_frame(rogue, tagged(rogue, _sip(b"INVITE", "vlan-100"), 100))
    rig.assert_dropped(rogue, _sip(b"INVITE", "untagged"), "untrusted")
    assert rig.counter(rogue.ip, "dropped_untrusted_pkts") == before + 1


@pytest.mark.root
def test_lab_vlan_device_judges_its_frames_once(rig: Rig) -> None:
    """With a VLAN device on both sides: eth0 leaves the tagged frame to eth0.100, which
    judges and counts it, once."""
    assert rig.maps is not None
    client = rig.client
    loader = rig.loaders[0]
    made: list[Host] = []
    trusted = rig.maps.trusted()
    try:
        for host, addr in ((rig.proxy, "10.77.100.10/24"), (client, "10.77.100.11/24")):
            try:
                rig.ip(host, "link", "add", "link", "eth0", "eth0.100", "type", "vlan", "id", "100")
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"no VLAN devices here (8021q): {exc.stderr.strip()}")
            made.append(host)
            rig.ip(host, "addr", "add", addr, "dev", "eth0.100")
            rig.ip(host, "link", "set", "eth0.100", "up")
        rig.maps.set_trusted([*trusted, "10.77.100.11/32"])
        assert "eth0.100" in loader.command("candidates")["result"]
        assert loader.reconcile(["eth0", "eth0.100"])[0] == ["eth0.100: attached"]
        payload = _sip(b"OPTIONS", "vlan")
        rig.send(client, payload, dst="10.77.100.10")
        rig.wait_received(payload)  # after both tc hooks ran
        assert rig.counter("10.77.100.11", "passed_pkts") == 1
    finally:
        rig.maps.set_trusted(trusted)
        loader.reconcile(["eth0"])
        for host in made:
            rig.ip(host, "link", "del", "eth0.100")


@pytest.mark.root
def test_lab_reconcile_follows_interfaces_and_puts_filters_back(rig: Rig) -> None:
    loader, proxy = rig.loaders[0], rig.proxy
    made: list[str] = []

    def veth(name: str, *settings: str) -> None:
        """A veth pair in the proxy: `name` (with `settings`), its peer `name`p left down."""
        rig.ip(proxy, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        made.append(name)
        if settings:
            rig.ip(proxy, "link", "set", name, *settings)

    def ours(ifname: str) -> list[str]:
        res = proxy.run(["tc", "filter", "show", "dev", ifname, "ingress"], check=False)
        return [ln for ln in res.stdout.splitlines() if f"clearip:{rig.name}:" in ln]

    try:
        veth("vx0", "up")
        rig.ip(proxy, "link", "add", "br9", "type", "bridge")
        made.append("br9")
        rig.ip(proxy, "link", "set", "br9", "up")
        veth("vb0", "master", "br9", "up")  # a bridge port: the bridge judges its frames
        veth("vd0")  # down
        cands = loader.command("candidates")["result"]
        assert sorted(cands) == ["br9", "eth0", "vx0"]
        lines, sessions = loader.reconcile(cands)
        assert (sorted(lines), sessions) == (["br9: attached", "vx0: attached"], 1)
        assert loader.reconcile(cands)[0] == []  # our own changes' notifications: looked
        assert loader.reconcile(cands) == ([], 0)  # nothing changed: no netlink request

        # someone deletes our filter, or the whole clsact qdisc: put back at the next call
        proxy.run(["tc", "filter", "del", "dev", "eth0", "ingress"])
        assert not rig.tc_filters()
        lines, _ = loader.reconcile(cands)
        assert lines == ["eth0: our tc filter had been removed, put back"]
        assert len(rig.tc_filters()) == 1
        rig.assert_dropped(rig.rogue, _sip(b"INVITE", "put-back"), "untrusted")
        proxy.run(["tc", "qdisc", "del", "dev", "vx0", "clsact"])
        lines, _ = loader.reconcile(cands)
        assert lines == ["vx0: our tc filter and the clsact qdisc had been removed, put back"]
        assert ours("vx0")

        # interfaces come and go
        rig.ip(proxy, "link", "del", "vx0")
        made.remove("vx0")
        cands = loader.command("candidates")["result"]
        assert loader.reconcile(cands)[0] == ["vx0: gone, forgotten"]
        assert loader.reconcile(["eth0"])[0] == ["br9: no longer to be filtered, detached"]
        assert not ours("br9")
        # a problem is told once, not at every call
        lines, _ = loader.reconcile(["eth0", "nosuch0"])
        assert lines == ["nosuch0: no such interface, not filtered"]
        assert loader.reconcile(["eth0", "nosuch0"]) == ([], 0)
        assert loader.reconcile(["eth0"])[0] == []  # a new list: looked, nothing to say
        assert len(rig.tc_filters()) == 1
    finally:
        for name in reversed(made):
            with contextlib.suppress(subprocess.CalledProcessError):
                rig.ip(proxy, "link", "del", name)
        loader.reconcile(["eth0"])


@pytest.mark.root
def test_lab_worker_opens_a_pinhole_through_its_own_two_maps(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert rig.rogue.ip6 is not None
    with open_pinned(rig.name, only=layout.PINHOLE_MAPS) as holes:
        assert sorted(holes.map_ids()) == ["pinholes_v4", "pinholes_v6"]
        calls: list[int] = []
        syscall = syscallmod.bpf_syscall

        def counted(cmd: int, attr: ctypes.Structure) -> int:
            calls.append(cmd)
            return syscall(cmd, attr)

        monkeypatch.setattr(syscallmod, "bpf_syscall", counted)
        holes.add_pinhole(rig.rogue.ip6, 30)
        assert len(calls) == 1  # a new pinhole: one atomic create
        holes.add_pinhole(rig.rogue.ip6, 10)
        assert len(calls) == 3  # open long enough already: the create fails, one lookup
        monkeypatch.undo()
        rig.assert_passes(rig.rogue, _sip(b"SIP/2.0 200 OK\r\nX:", "worker-hole"), v6=True)
        with pytest.raises(FastPathError, match="not opened"):
            holes.read_sources()
        assert holes.remove_pinhole(rig.rogue.ip6)
    rig.assert_dropped(rig.rogue, _sip(b"BYE", "worker-closed"), "untrusted", v6=True)


@pytest.mark.root
def test_lab_spoofed_flood_only_evicts(rig: Rig) -> None:
    assert rig.maps is not None
    assert rig.maps.max_sources == MAX_SOURCES
    count = 20000
    rig.assert_passes(rig.client, _sip(b"OPTIONS", "before-flood"))
    client_row = rig.maps.read_sources()[rig.client.ip]
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
    assert len(flooders) <= MAX_SOURCES < dropped  # more sources than slots, map still bounded
    assert flooders  # recent flood sources are there: the LRU evicted, it did not refuse
    # the trusted client is untouched by the flood: its counters were not evicted (nor reset
    # for Prometheus), and it passes and is counted on
    assert sources[rig.client.ip] == client_row
    rig.assert_passes(rig.client, _sip(b"OPTIONS", "after-flood"))
    assert rig.counter(rig.client.ip, "passed_pkts") == client_row["passed_pkts"] + 1
    assert sum(a.startswith("10.78.") for a in rig.maps.read_sources()) <= MAX_SOURCES


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
    # the first one's watchdog does not fight its successor for eth0
    lines, _ = first.reconcile(["eth0"])
    assert lines == [f"eth0: our filter was replaced by {second.filter_name}"]
    assert len(rig.tc_filters()) == 1 and second.filter_name in rig.tc_filters()[0]
    assert first.reconcile(["eth0"]) == ([], 0)

    # the first one stopping late takes neither the successor's filter nor its pins
    assert first.stop() == 0 and "STOPPED" in first.text()
    assert len(rig.tc_filters()) == 1 and rig.pins() == sorted(layout.MAP_NAMES)
    rig.assert_dropped(rig.rogue, _sip(b"INVITE", "after-first-stop"), "untrusted")

    # a clean stop: detach + unpin leave no filter and no pin, and the port is open again
    rig.maps.close()
    rig.maps = None
    assert second.stop() == 0 and "STOPPED" in second.text()
    assert rig.tc_filters() == [] and rig.pins() == []
    open_payload = _sip(b"INVITE", "no-filter")
    rig.send(rig.rogue, open_payload)
    rig.wait_received(open_payload)

    # a crash (SIGKILL) leaves filters and pins, still enforcing, also on an interface that
    # is down by the next start; remove_all() without a list cleans every interface
    third = rig.start_loader()
    rig.ip(rig.proxy, "link", "add", "vd7", "type", "veth", "peer", "name", "vd7p")
    try:
        rig.ip(rig.proxy, "link", "set", "vd7", "up")
        assert third.reconcile(["eth0", "vd7"])[0] == ["vd7: attached"]
        rig.ip(rig.proxy, "link", "set", "vd7", "down")
        third.stop(signal.SIGKILL)
        assert len(rig.tc_filters()) == 1 and rig.pins() == sorted(layout.MAP_NAMES)
        rig.reopen_maps()
        rig.assert_dropped(rig.rogue, _sip(b"INVITE", "after-crash"), "untrusted")
        rig.maps.close()
        rig.maps = None
        argv = [sys.executable, rig.script("remove_all.py"), rig.name]
        out = subprocess.run(
            rig.in_proxy_ns(argv), capture_output=True, text=True, timeout=30, check=True
        )
        removed = json.loads(out.stdout)
        assert sorted(r.split(":")[0] for r in removed if "tc filter" in r) == ["eth0", "vd7"]
        assert sum(r.startswith("pin ") for r in removed) == len(layout.MAP_NAMES)
        assert rig.tc_filters() == [] and rig.pins() == []
    finally:
        rig.ip(rig.proxy, "link", "del", "vd7")
