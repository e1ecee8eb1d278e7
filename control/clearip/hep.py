"""HEP3 (HOMER Encapsulation Protocol v3) export of the relay's messages, TLS legs in clear.

A HEP3 packet is "HEP3", its total length (u16), then chunks: vendor id (u16, 0 = generic),
type (u16), length of the whole chunk (u16) and the value. The generic chunk types used here
are the ones HOMER and heplify read for SIP (HEP3 draft, "Generic chunk types"):

    1 IP family (u8)     2 IP protocol (u8)   3/4 IPv4 src/dst   5/6 IPv6 src/dst
    7/8 src/dst port     9/10 time s / µs     11 protocol type (1 = SIP)
    12 capture agent id (u32)                 15 payload

TLS legs go out as IP protocol 6 (TCP), as heplify reports them: HEP has no TLS marker.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from typing import Any

from clearip.relay.tap import TRANSPORTS, TapRecord

log = logging.getLogger("clearip.hep")

MAGIC = b"HEP3"
PROTO_SIP = 1
CAPTURE_ID = 2001  # the capture agent id HOMER shows for this proxy
_IPPROTO = {"udp": 17, "tcp": 6, "tls": 6}
MAX_PACKET = 0xFFFF  # HEP3's total length is a u16

_U8, _U16, _U32 = struct.Struct("!HHHB"), struct.Struct("!HHHH"), struct.Struct("!HHHI")


def _chunk(kind: int, value: bytes) -> bytes:
    return struct.pack("!HHH", 0, kind, 6 + len(value)) + value


def encode(rec: TapRecord, capture_id: int = CAPTURE_ID) -> bytes:
    src = ipaddress.ip_address(rec.src[0])
    dst = ipaddress.ip_address(rec.dst[0])
    v6 = src.version == 6
    seconds = int(rec.ts)
    micros = round((rec.ts - seconds) * 1_000_000)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    body = b"".join(
        (
            _U8.pack(0, 1, 7, socket.AF_INET6 if v6 else socket.AF_INET),
            _U8.pack(0, 2, 7, _IPPROTO[rec.transport]),
            _chunk(5 if v6 else 3, src.packed),
            _chunk(6 if v6 else 4, dst.packed),
            _U16.pack(0, 7, 8, rec.src[1]),
            _U16.pack(0, 8, 8, rec.dst[1]),
            _U32.pack(0, 9, 10, seconds),
            _U32.pack(0, 10, 10, micros),
            _U8.pack(0, 11, 7, PROTO_SIP),
            _U32.pack(0, 12, 10, capture_id),
            _chunk(15, rec.data),
        )
    )
    if 6 + len(body) > MAX_PACKET:
        # the length field is 16 bits: a message this big cannot be copied, only counted
        raise ValueError(f"a {len(rec.data)}-byte message does not fit in one HEP3 packet")
    return MAGIC + struct.pack("!H", 6 + len(body)) + body


def decode(packet: bytes) -> dict[str, Any]:
    """The generic chunks of one HEP3 packet by name; ValueError if it is not one.

    What a collector reads; used by the tests and handy at a Python prompt when troubleshooting.
    """
    if len(packet) < 6 or packet[:4] != MAGIC:
        raise ValueError("not a HEP3 packet")
    (total,) = struct.unpack_from("!H", packet, 4)
    if total != len(packet):
        raise ValueError(f"HEP3 length {total} but the packet has {len(packet)} bytes")
    out: dict[str, Any] = {}
    pos = 6
    while pos < total:
        if pos + 6 > total:
            raise ValueError("truncated HEP3 chunk header")
        vendor, kind, length = struct.unpack_from("!HHH", packet, pos)
        if length < 6 or pos + length > total:
            raise ValueError(f"bad HEP3 chunk length {length} (type {kind})")
        value = packet[pos + 6 : pos + length]
        pos += length
        if vendor != 0:
            continue
        if kind in (1, 2, 11):
            out[{1: "family", 2: "ip_proto", 11: "proto_type"}[kind]] = value[0]
        elif kind in (3, 4, 5, 6):
            out["src_ip" if kind in (3, 5) else "dst_ip"] = str(ipaddress.ip_address(value))
        elif kind in (7, 8):
            out["src_port" if kind == 7 else "dst_port"] = struct.unpack("!H", value)[0]
        elif kind in (9, 10, 12):
            key = {9: "ts_sec", 10: "ts_usec", 12: "capture_id"}[kind]
            out[key] = struct.unpack("!I", value)[0]
        elif kind == 15:
            out["payload"] = value
    return out


class HepSink:
    """Sends a copy of every message to the collector over UDP; never blocks the relay."""

    def __init__(self, address: tuple[str, int], capture_id: int = CAPTURE_ID) -> None:
        self.capture_id = capture_id
        self.sent = 0
        self.dropped = 0
        self.dead = False  # a collector may come and go: never given up on
        self._sock = self._connect(address)
        self.address = address

    @staticmethod
    def _connect(address: tuple[str, int]) -> socket.socket:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(address)
        return sock

    def retarget(self, address: tuple[str, int]) -> None:
        """The collector's name now resolves elsewhere: send there from now on."""
        sock = self._connect(address)
        self._sock.close()
        self._sock, self.address = sock, address

    def wants(self, transport: str) -> bool:
        return transport in TRANSPORTS

    def emit(self, rec: TapRecord) -> None:
        try:
            self._sock.send(encode(rec, self.capture_id))
            self.sent += 1
        except ValueError:  # a v4/v6 mix cannot be one packet: not worth a crash
            self.dropped += 1
        except OSError:  # full buffer, or ICMP unreachable from a collector that is down
            self.dropped += 1

    def close(self) -> None:
        self._sock.close()
