"""HEP3 encoding checked against an independent reading of the HEP3 chunk layout."""

from __future__ import annotations

import socket
import struct

import pytest

from clearip import hep
from clearip.relay.tap import TapRecord

INVITE = b"INVITE sip:+12025550100@10.0.0.2 SIP/2.0\r\nCall-ID: abc\r\nContent-Length: 0\r\n\r\n"


def chunks(packet: bytes) -> dict[int, bytes]:
    """The HEP3 chunks by type, read straight from the spec's layout (not via clearip.hep)."""
    assert packet[:4] == b"HEP3"
    assert int.from_bytes(packet[4:6], "big") == len(packet)
    out, pos = {}, 6
    while pos < len(packet):
        vendor, kind, length = struct.unpack_from("!HHH", packet, pos)
        assert vendor == 0 and length >= 6
        out[kind] = packet[pos + 6 : pos + length]
        pos += length
    assert pos == len(packet)
    return out


def test_ipv4_udp_message_has_every_chunk_homer_reads() -> None:
    rec = TapRecord(1700000000.25, "in", "udp", ("10.0.0.1", 5062), ("10.0.0.2", 5060), INVITE)
    got = chunks(hep.encode(rec))
    assert got[1] == bytes([socket.AF_INET]) and got[2] == bytes([17])
    assert got[3] == socket.inet_aton("10.0.0.1") and got[4] == socket.inet_aton("10.0.0.2")
    assert got[7] == struct.pack("!H", 5062) and got[8] == struct.pack("!H", 5060)
    assert got[9] == struct.pack("!I", 1700000000) and got[10] == struct.pack("!I", 250000)
    assert got[11] == bytes([1])  # SIP
    assert got[12] == struct.pack("!I", hep.CAPTURE_ID)
    assert got[15] == INVITE


def test_tls_leg_goes_out_in_clear_as_tcp_over_ipv6() -> None:
    rec = TapRecord(5.9999999, "out", "tls", ("2001:db8::1", 40000), ("2001:db8::2", 5061),
                    INVITE, upstream=True)  # fmt: skip
    packet = hep.encode(rec)
    got = chunks(packet)
    assert got[1] == bytes([socket.AF_INET6]) and got[2] == bytes([6])
    assert got[5] == socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert got[6] == socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    assert got[9] == struct.pack("!I", 6) and got[10] == struct.pack("!I", 0)  # rounding carry
    assert got[15] == INVITE
    decoded = hep.decode(packet)
    assert decoded["src_ip"] == "2001:db8::1" and decoded["dst_port"] == 5061
    assert decoded["payload"] == INVITE and decoded["ip_proto"] == 6


@pytest.mark.parametrize(
    "packet",
    [b"", b"HEP2\x00\x06", b"HEP3\x00\x07", b"HEP3\x00\x0a\x00\x00\x00\x01\x00\x02"],
)
def test_decode_refuses_what_is_not_hep3(packet: bytes) -> None:
    with pytest.raises(ValueError):
        hep.decode(packet)


def test_sink_sends_to_the_collector_and_counts() -> None:
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(5)
    sink = hep.HepSink(collector.getsockname())
    try:
        sink.emit(TapRecord(1.0, "in", "tcp", ("127.0.0.1", 1), ("127.0.0.1", 2), INVITE))
        assert hep.decode(collector.recv(70000))["payload"] == INVITE
        assert (sink.sent, sink.dropped) == (1, 0)
    finally:
        sink.close()
        collector.close()


def test_sink_survives_a_collector_that_is_down() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    address = probe.getsockname()
    probe.close()  # nobody listens there now: ICMP port unreachable comes back
    sink = hep.HepSink(address)
    try:
        for _ in range(3):
            sink.emit(TapRecord(1.0, "in", "udp", ("127.0.0.1", 1), ("127.0.0.1", 2), INVITE))
        assert sink.sent + sink.dropped == 3 and not sink.dead
    finally:
        sink.close()


def test_a_message_too_big_for_hep3_costs_a_copy_never_the_message() -> None:
    """Issue 11: a 65,437-65,535-byte message made the encoder raise outside any guard, and
    the SIP message itself was lost. Now it is a ValueError the sink counts as dropped."""
    big = TapRecord(1.0, "in", "udp", ("192.0.2.1", 5060), ("192.0.2.2", 5060), b"x" * 65500)
    with pytest.raises(ValueError, match="does not fit"):
        hep.encode(big)
    sink = hep.HepSink(("127.0.0.1", 9))
    try:
        sink.emit(big)
        assert (sink.sent, sink.dropped) == (0, 1)
        sink.retarget(("127.0.0.1", 10))
        assert sink.address == ("127.0.0.1", 10)
    finally:
        sink.close()
