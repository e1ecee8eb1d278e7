"""clearip.sipcap: captured bytes in, SIP messages and printed lines out (no sockets)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Dot1Q, Ether

from clearip.relay.tap import TapRecord
from clearip.sipcap import (
    ARPHRD_NONE,
    DECRYPTED,
    DROP_NONSIP,
    DROP_UNTRUSTED,
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    PACKET_HOST,
    PACKET_OUTGOING,
    TAP_ADDRESS,
    Decoder,
    Display,
    FastPathRules,
    Filter,
    Packet,
    Reorder,
    Shown,
    bpf_expression,
    call_id,
    format_shown,
    is_options,
    looks_like_sip,
    packet_from_frame,
    render_text,
    shown_from_tap,
    sll_header,
)

SWITCH, PROXY, ROGUE = "192.0.2.10", "192.0.2.1", "203.0.113.66"
T0 = 1_700_000_000.25  # 22:13:20.250000 UTC


def sip(
    first: str, cid: str = "call-1@192.0.2.10", cseq: str = "1 INVITE", body: str = ""
) -> bytes:
    head = (
        f"{first}\r\nVia: SIP/2.0/UDP {SWITCH}:5060;branch=z9hG4bK-1\r\n"
        f"Call-ID: {cid}\r\nCSeq: {cseq}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body.encode()


INVITE = sip("INVITE sip:+12025550100@192.0.2.1 SIP/2.0", body="v=0\r\ns=-\r\n")
TRYING = sip("SIP/2.0 100 Trying")
OK = sip("SIP/2.0 200 OK", body="v=0\r\n")
OPTIONS = sip("OPTIONS sip:192.0.2.1 SIP/2.0", cid="ka-1", cseq="7 OPTIONS")
OPTIONS_OK = sip("SIP/2.0 200 OK", cid="ka-1", cseq="7 OPTIONS")


def udp(
    payload: bytes,
    src: str = SWITCH,
    dst: str = PROXY,
    sport: int = 5060,
    dport: int = 5060,
    *,
    iface: str = "",
    incoming: bool | None = None,
) -> Packet:
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return Packet(T0, bytes(ip / UDP(sport=sport, dport=dport) / payload), iface, incoming)


def tcp(
    payload: bytes,
    seq: int,
    flags: str = "PA",
    src: str = SWITCH,
    dst: str = PROXY,
    sport: int = 40000,
    dport: int = 5060,
    *,
    iface: str = "",
    incoming: bool | None = None,
) -> Packet:
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    segment = TCP(sport=sport, dport=dport, seq=seq, flags=flags) / payload
    return Packet(T0, bytes(ip / segment), iface, incoming)


# what the sniffer says of a packet coming in on an interface the classifier is attached to
SEEN: dict[str, Any] = {"iface": "eth0", "incoming": True}


def messages(items: list[Shown]) -> list[bytes]:
    return [i.data for i in items if i.kind == "sip"]


# ---------------------------------------------------------------------------------------------
# Printing


def test_a_udp_message_prints_like_tcpdump_a() -> None:
    [item] = Decoder().feed(udp(INVITE, sport=5062))
    assert (item.src, item.dst, item.transport, item.kind) == (
        (SWITCH, 5062), (PROXY, 5060), "UDP", "sip",
    )  # fmt: skip
    assert format_shown(item, UTC) == (
        f"22:13:20.250000 192.0.2.10:5062 → 192.0.2.1:5060 UDP, {len(INVITE)} bytes\n"
        "INVITE sip:+12025550100@192.0.2.1 SIP/2.0\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-1\n"
        "Call-ID: call-1@192.0.2.10\n"
        "CSeq: 1 INVITE\n"
        "Content-Length: 10\n"
        "\n"
        "v=0\n"
        "s=-\n"
    )


def test_ipv6_addresses_are_bracketed() -> None:
    [item] = Decoder().feed(udp(TRYING, src="2001:db8::1", dst="2001:db8::2"))
    assert format_shown(item, UTC).startswith(
        "22:13:20.250000 [2001:db8::1]:5060 → [2001:db8::2]:5060 UDP, "
    )


def test_control_bytes_are_dots_and_crlf_newlines() -> None:
    assert render_text(b"A\x00B\r\nC\x1b\tD\r\n\r\n") == "A.B\nC.\tD"
    assert render_text("é".encode()) == "é"
    # C1 (\x9b is CSI to a terminal) and bidi overrides cannot reach the operator's screen
    assert render_text("A\x9b2J\u202eB\u2028C\u2066D".encode()) == "A.2J.B.C.D"


def test_non_sip_and_keepalives() -> None:
    dec = Decoder()
    [junk] = dec.feed(udp(b"hello, not SIP"))
    assert junk.kind == "payload"
    assert format_shown(junk, UTC).splitlines()[0].endswith("UDP, 14 bytes, not SIP")
    assert dec.feed(udp(b"\r\n\r\n")) == []  # keepalives: only with verbose
    [note] = Decoder(verbose=True).feed(udp(b"\r\n\r\n"))
    assert format_shown(note, UTC).endswith("UDP, keepalive")
    assert Decoder(non_sip=False).feed(udp(b"hello, not SIP")) == []


# ---------------------------------------------------------------------------------------------
# TCP reassembly


def test_several_messages_in_one_segment() -> None:
    dec = Decoder()
    assert dec.feed(tcp(b"", 999, "S")) == []
    items = dec.feed(tcp(INVITE + b"\r\n\r\n" + TRYING + OK, 1000))
    assert messages(items) == [INVITE, TRYING, OK]
    assert {i.transport for i in items} == {"TCP"}


def test_one_message_across_segments_byte_by_byte() -> None:
    dec = Decoder()
    dec.feed(tcp(b"", 4294967290, "S"))  # the sequence number wraps mid-message
    seq, out = 4294967291, []
    for i in range(len(INVITE)):
        out += dec.feed(tcp(INVITE[i : i + 1], (seq + i) % 2**32))
    assert messages(out) == [INVITE]


def test_out_of_order_and_retransmitted_segments() -> None:
    dec = Decoder()
    dec.feed(tcp(b"", 99, "S"))
    data = INVITE + OK
    a, c = data[:50], data[200:]
    assert dec.feed(tcp(c, 100 + 200)) == []  # held until the gap fills
    assert dec.feed(tcp(a, 100)) == []
    assert dec.feed(tcp(a, 100)) == []  # a retransmission: nothing new
    assert messages(dec.feed(tcp(data[40:200], 140))) == [INVITE, OK]  # overlaps what we had
    assert dec.feed(tcp(c, 300)) == []  # late duplicate of what was held


def test_stream_joined_midway_resyncs_at_a_message_start() -> None:
    dec = Decoder()
    # no SYN seen: the tail of a message, then the next message
    assert dec.feed(tcp(INVITE[30:], 5000)) == []
    start = 5000 + len(INVITE) - 30
    assert messages(dec.feed(tcp(OK, start))) == [OK]


def test_garbage_in_a_stream_skips_to_the_next_message() -> None:
    dec = Decoder(verbose=True)
    dec.feed(tcp(b"", 0, "S"))
    items = dec.feed(tcp(b"INVITE sip:x SIP/2.0\r\nContent-Length: x\r\n\r\n", 1))
    assert [i.kind for i in items] == ["note"] and "not SIP" in items[0].summary
    assert messages(dec.feed(tcp(OK, 1000))) == [OK]


def test_ipv6_tcp_and_fin_forgets_the_flow() -> None:
    dec = Decoder()
    v6 = ("2001:db8::1", "2001:db8::2")
    dec.feed(tcp(b"", 0, "S", *v6))
    assert messages(dec.feed(tcp(INVITE, 1, "FPA", *v6))) == [INVITE]
    # a new connection on the same ports starts clean
    assert messages(dec.feed(tcp(OK, 777, "PA", *v6))) == [OK]


def test_tls_streams_show_nothing_or_one_line_per_record() -> None:
    hello = bytes([22, 3, 1, 0, 4]) + b"\x01\x00\x00\x00"
    data = bytes([23, 3, 3, 0, 3]) + b"xyz"
    assert Decoder().feed(tcp(hello + data, 1, sport=5061)) == []
    dec = Decoder(verbose=True)
    dec.feed(tcp(b"", 0, "S"))
    items = dec.feed(tcp(hello + data[:6], 1)) + dec.feed(tcp(data[6:], 1 + len(hello) + 6))
    assert [format_shown(i, UTC).split(" TLS, ")[1] for i in items] == [
        "handshake, 4 bytes (encrypted)",
        "application data, 3 bytes (encrypted)",
    ]


# ---------------------------------------------------------------------------------------------
# IP fragments


def test_fragmented_udp_is_reassembled_in_any_order() -> None:
    big = sip("INVITE sip:x@192.0.2.1 SIP/2.0", body="a=x\r\n" * 600)
    frags = fragment(IP(src=SWITCH, dst=PROXY) / UDP(sport=5060, dport=5060) / big, 1000)
    assert len(frags) > 2
    dec, out = Decoder(), []
    for f in reversed(frags):
        out += dec.feed(Packet(T0, bytes(f)))
    assert messages(out) == [big]


def test_fragmented_ipv6_udp_is_reassembled() -> None:
    big = sip("INVITE sip:x@[2001:db8::2] SIP/2.0", body="a=x\r\n" * 600)
    pkt = IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrFragment()
    frags = fragment6(pkt / UDP(sport=5060, dport=5060) / big, 1280)
    dec, out = Decoder(), []
    for f in frags:
        out += dec.feed(Packet(T0, bytes(f)))
    assert messages(out) == [big]


# ---------------------------------------------------------------------------------------------
# Filters


def test_call_id_filter_with_the_compact_form() -> None:
    compact = INVITE.replace(b"Call-ID: call-1@192.0.2.10", b"i:call-2")
    assert call_id(INVITE) == "call-1@192.0.2.10" and call_id(compact) == "call-2"
    assert call_id(b"INVITE x SIP/2.0\r\n\r\nCall-ID: in-the-body") is None
    items = Decoder().feed(udp(INVITE)) + Decoder().feed(udp(compact))
    items += Decoder().feed(udp(b"not SIP"))
    shown = Display(Filter(call_id="call-2"), tz=UTC).render(items)
    assert len(shown) == 1 and "i:call-2" in shown[0]


def test_no_options_hides_requests_and_their_responses() -> None:
    assert is_options(OPTIONS) and is_options(OPTIONS_OK)
    assert not is_options(OK) and not is_options(INVITE)
    items = [Decoder().feed(udp(m))[0] for m in (OPTIONS, OPTIONS_OK, INVITE, OK)]
    shown = Display(Filter(no_options=True), tz=UTC).render(items)
    assert [s.splitlines()[1] for s in shown] == [
        "INVITE sip:+12025550100@192.0.2.1 SIP/2.0",
        "SIP/2.0 200 OK",
    ]


def test_port_filter_and_count() -> None:
    items = [Decoder().feed(udp(INVITE, sport=p, dport=p))[0] for p in (5060, 5080, 5061, 5060)]
    display = Display(Filter(ports=frozenset({5060, 5061})), limit=2, tz=UTC)
    assert len(display.render(items[:2])) == 1 and not display.done
    assert len(display.render(items[2:])) == 1 and display.done
    assert display.render(items) == []


# ---------------------------------------------------------------------------------------------
# Fast-path marks (SPEC §5; the same rules as bpf/clearip_tc.bpf.c)


def rules(trusted: set[str]) -> FastPathRules:
    return FastPathRules(
        udp_ports=frozenset({5060}),
        tcp_ports=frozenset({5060, 5061}),
        interfaces=frozenset({"eth0"}),
        admitted=lambda ip: ip in trusted,
    )


def marks(pkt: Packet, trusted: set[str] | None = None) -> list[str]:
    fp = rules({SWITCH} if trusted is None else trusted)
    return [i.mark for i in Decoder(verdict=fp.verdict).feed(pkt)]


def test_untrusted_source_to_a_listener_is_marked() -> None:
    assert marks(udp(INVITE, src=ROGUE, **SEEN)) == [DROP_UNTRUSTED]
    assert marks(udp(INVITE, **SEEN)) == [""]  # trusted
    assert marks(udp(INVITE, src=ROGUE, **SEEN), trusted={SWITCH, ROGUE}) == [""]  # pinholed
    # answers to a worker's own port (5070) are not filtered: the relay checks them
    assert marks(udp(TRYING, src=ROGUE, dport=5070, **SEEN)) == [""]
    # only ingress on an interface the classifier is attached to
    assert marks(udp(INVITE, src=ROGUE, iface="eth0", incoming=False)) == [""]
    assert marks(udp(INVITE, src=ROGUE, iface="lo", incoming=True)) == [""]
    assert marks(udp(INVITE, src=ROGUE)) == [""]  # a saved capture: not known


def test_untrusted_tcp_is_marked_per_segment_and_not_reassembled() -> None:
    fp = rules({SWITCH})
    dec = Decoder(verdict=fp.verdict)
    [syn] = dec.feed(tcp(b"", 0, "S", src=ROGUE, **SEEN))
    assert (syn.kind, syn.summary, syn.mark) == ("note", "SYN", DROP_UNTRUSTED)
    assert format_shown(syn, UTC) == (
        "22:13:20.250000 203.0.113.66:40000 → 192.0.2.1:5060 TCP, SYN [fast path: drop untrusted]"
    )
    [seg] = dec.feed(tcp(INVITE, 1, src=ROGUE, dport=5061, **SEEN))
    assert (seg.kind, seg.summary) == ("note", f"{len(INVITE)} bytes")


def test_only_the_proxys_own_destinations_are_marked() -> None:
    fp = FastPathRules(
        udp_ports=frozenset({5060}),
        tcp_ports=frozenset({5060}),
        interfaces=frozenset({"eth0"}),
        admitted=lambda ip: ip == SWITCH,
        local=lambda ip: ip == PROXY,
    )
    dec = Decoder(verdict=fp.verdict)
    [item] = dec.feed(udp(INVITE, src=ROGUE, **SEEN))
    assert item.mark == DROP_UNTRUSTED
    [item] = dec.feed(udp(INVITE, src=ROGUE, dst="198.51.100.9", **SEEN))
    assert item.mark == ""  # forwarded to another host: the kernel leaves it alone


def test_ipv6_extension_headers_are_judged_as_the_kernel_walks_them() -> None:
    def v6(payload: bytes, src: str, options: int) -> Packet:
        ip = IPv6(src=src, dst="2001:db8::1")
        for _ in range(options):
            ip = ip / IPv6ExtHdrDestOpt()
        return Packet(T0, bytes(ip / UDP(sport=5060, dport=5060) / payload), "eth0", True)

    fp = rules({"2001:db8::10"})
    dec = Decoder(verdict=fp.verdict)
    assert [i.mark for i in dec.feed(v6(b"junk, not SIP", "2001:db8::10", 1))] == [DROP_NONSIP]
    assert [i.mark for i in dec.feed(v6(INVITE, "2001:db8::66", 1))] == [DROP_UNTRUSTED]
    assert [i.mark for i in dec.feed(v6(INVITE, "2001:db8::10", 8))] == [""]
    # more than the kernel walks: its ports unseen there, dropped even when SIP and trusted
    assert [i.mark for i in dec.feed(v6(INVITE, "2001:db8::10", 9))] == [DROP_NONSIP]


def test_non_sip_udp_from_a_trusted_source_is_marked() -> None:
    assert marks(udp(b"hello, this is not SIP at all", **SEEN)) == [DROP_NONSIP]
    assert marks(udp(b"\r\n\r\n", **SEEN)) == []  # a keepalive passes (and is not shown)
    [item] = Decoder(verdict=rules(set()).verdict).feed(udp(b"junk", src=ROGUE, **SEEN))
    assert item.mark == DROP_UNTRUSTED and item.kind == "payload"  # untrusted comes first


@pytest.mark.parametrize(
    ("payload", "sip"),
    [
        (b"\r\n", True),
        (b"\r\n\r\n", True),
        (b"\r\nab", False),
        (b"INVITE sip:a@b SIP/2.0\r\n", True),
        (b"SIP/2.0 200 OK\r\n\r\n", True),
        (b"SIP/2.0 200", False),  # shorter than the probe's 17 bytes
        (b"invite sip:a@b SIP/2.0\r\n", False),  # methods are capitals
        (b"AB sip:a@b SIP/2.0\r\n", False),  # 3 letters at least
        (b"ABCDEFGHIJKLMNOPQ sip:x\r\n", False),  # more than 16
        (b"ABCDEFGHIJKLMNOP sip:x\r\n", True),
        (b"GET / HTTP/1.1\r\n\r\n", True),  # the kernel's probe is only that loose
        # STUN Binding requests, the other keepalive (RFC 5626 §4.4.2)
        (b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"txn-id-12345", True),
        (b"\x00\x01\x00\x08\x21\x12\xa4\x42" + b"txn-id-12345" + bytes(8), True),
        (b"\x01\x01\x00\x00\x21\x12\xa4\x42" + b"txn-id-12345", False),  # a response
        (b"\x00\x01\x00\x04\x21\x12\xa4\x42" + b"txn-id-12345", False),  # length lies
        (b"\x00\x01\x00\x00\x21\x12\xa4\x43" + b"txn-id-12345", False),  # no cookie
    ],
)
def test_looks_like_sip_mirrors_the_kernel_probe(payload: bytes, sip: bool) -> None:
    assert looks_like_sip(payload) is sip


# ---------------------------------------------------------------------------------------------
# Capture files, the tap, time order


def test_frames_of_the_usual_link_types() -> None:
    l3 = bytes(IP(src=SWITCH, dst=PROXY) / UDP(sport=5060, dport=5060) / INVITE)
    sll = sll_header(PACKET_OUTGOING, 1, b"\x02\x00\x00\x00\x00\x01", 0x0800) + l3
    assert packet_from_frame(LINKTYPE_LINUX_SLL, sll, T0) == Packet(T0, l3, incoming=False)
    eth = bytes(Ether() / Dot1Q(vlan=7) / IP(l3))
    assert packet_from_frame(LINKTYPE_ETHERNET, eth, T0) == Packet(T0, l3)
    sll2 = b"\x08\x00\x00\x00" + b"\x00\x00\x00\x02" + b"\x00\x01" + bytes([PACKET_HOST, 6])
    got = packet_from_frame(LINKTYPE_LINUX_SLL2, sll2 + b"\0" * 8 + l3, T0)
    assert got == Packet(T0, l3, incoming=True)
    assert packet_from_frame(LINKTYPE_RAW, l3, T0) == Packet(T0, l3)
    assert packet_from_frame(LINKTYPE_ETHERNET, bytes(Ether(type=0x0806) / b"arp"), T0) is None
    with pytest.raises(ValueError, match="link type 147"):
        packet_from_frame(147, l3, T0)


def test_tap_records_show_and_read_back_as_decrypted_tls() -> None:
    rec = TapRecord(T0, "out", "tls", (PROXY, 41000), ("192.0.2.12", 5061), INVITE, True)
    item = shown_from_tap(rec)
    assert format_shown(item, UTC).splitlines()[0] == (
        f"22:13:20.250000 192.0.2.1:41000 → 192.0.2.12:5061 TLS (decrypted), {len(INVITE)} bytes"
    )
    # what capture -w writes for it: UDP behind a "cooked" header with the tap's address
    l3 = bytes(IP(src=PROXY, dst="192.0.2.12") / UDP(sport=41000, dport=5061) / INVITE)
    frame = sll_header(PACKET_OUTGOING, ARPHRD_NONE, TAP_ADDRESS, 0x0800) + l3
    pkt = packet_from_frame(LINKTYPE_LINUX_SLL, frame, T0)
    assert pkt is not None and pkt.decrypted
    [back] = Decoder().feed(pkt)
    assert (back.transport, back.data, back.src, back.dst) == (DECRYPTED, INVITE, *rec_ends(rec))


def rec_ends(rec: TapRecord) -> tuple[tuple[str, int], tuple[str, int]]:
    return rec.src, rec.dst


def test_reorder_releases_in_time_order_after_the_window() -> None:
    def at(ts: float) -> Shown:
        return Shown(ts, (SWITCH, 1), (PROXY, 2), "UDP", b"x")

    merge = Reorder(0.25)
    merge.push([at(10.0), at(10.3)])
    merge.push([at(10.1)])
    assert [i.ts for i in merge.pop_ready(10.2)] == []
    assert [i.ts for i in merge.pop_ready(10.4)] == [10.0, 10.1]
    assert [i.ts for i in merge.flush()] == [10.3]
    assert len(merge) == 0


def test_the_kernel_filter_compiles_for_raw_ip() -> None:
    compile_filter = pytest.importorskip("scapy.arch.common").compile_filter
    expression = bpf_expression([5061, 5060, 5070, 5060])
    assert expression.startswith("((udp or tcp) and (port 5060 or port 5061 or port 5070))")
    try:
        program = compile_filter(expression, linktype=12)
    except ImportError:
        pytest.skip("libpcap is not installed")
    assert program.bf_len > 10
