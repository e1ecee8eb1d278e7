"""The relay's message tap: each SIP message a worker receives or sends, TLS legs in clear.

Two consumers read it. `clearipctl capture --decrypted` asks the supervisor (control op `tap`)
to have every worker copy messages to a Unix datagram socket the capture owns; HEP3 export
(`control.hep`) sends them to a HOMER collector. A sink never blocks the relay: a full socket
drops the copy (counted), and a capture that went away is forgotten on the first failed send.

Wire format of a record on the capture socket (all integers network order):

    magic "CTAP" | ts f64 | direction u8 (0 in, 1 out) | transport u8 (0 udp, 1 tcp, 2 tls)
    | upstream u8 | family u8 (4 or 6) | src ip 16 bytes | src port u16 | dst ip 16 bytes
    | dst port u16 | the SIP message

IPv4 addresses sit in the first 4 of their 16 bytes.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

Address = tuple[str, int]

MAGIC = b"CTAP"
TRANSPORTS = ("udp", "tcp", "tls")
DIRECTIONS = ("in", "out")
_HEAD = struct.Struct("!4sdBBBB16sH16sH")
HEADER_SIZE = _HEAD.size
SOCKET_BUFFER = 4 * 1024 * 1024  # a burst of a few hundred messages before copies are dropped


@dataclass(frozen=True, slots=True)
class TapRecord:
    ts: float  # wall clock (time.time()), as in a pcap
    direction: str  # "in" (received by the relay) or "out" (sent by it)
    transport: str  # "udp", "tcp" or "tls"
    src: Address
    dst: Address
    data: bytes
    upstream: bool = False  # on the ClearIP link


def _pack_ip(ip: str) -> tuple[int, bytes]:
    addr = ipaddress.ip_address(ip)
    return addr.version, addr.packed.ljust(16, b"\0")


def _unpack_ip(family: int, raw: bytes) -> str:
    if family == 4:
        return str(ipaddress.IPv4Address(raw[:4]))
    return str(ipaddress.IPv6Address(raw))


def encode_record(rec: TapRecord) -> bytes:
    family, src = _pack_ip(rec.src[0])
    dst_family, dst = _pack_ip(rec.dst[0])
    if dst_family != family:
        raise ValueError(f"mixed address families: {rec.src[0]} -> {rec.dst[0]}")
    head = _HEAD.pack(
        MAGIC,
        rec.ts,
        DIRECTIONS.index(rec.direction),
        TRANSPORTS.index(rec.transport),
        1 if rec.upstream else 0,
        family,
        src,
        rec.src[1],
        dst,
        rec.dst[1],
    )
    return head + rec.data


def decode_record(raw: bytes) -> TapRecord:
    """The record in one datagram; ValueError if it is not one."""
    if len(raw) < HEADER_SIZE:
        raise ValueError("short tap record")
    magic, ts, direction, transport, upstream, family, src, sport, dst, dport = _HEAD.unpack_from(
        raw
    )
    if magic != MAGIC or direction > 1 or transport > 2 or family not in (4, 6):
        raise ValueError("not a tap record")
    return TapRecord(
        ts=ts,
        direction=DIRECTIONS[direction],
        transport=TRANSPORTS[transport],
        src=(_unpack_ip(family, src), sport),
        dst=(_unpack_ip(family, dst), dport),
        data=raw[HEADER_SIZE:],
        upstream=bool(upstream),
    )


def check_transports(transports: Iterable[object]) -> tuple[str, ...]:
    out = tuple(transports)
    for t in out:
        if t not in TRANSPORTS:
            raise ValueError(f"unknown transport {t!r}: expected one of {', '.join(TRANSPORTS)}")
    return out


class SocketSink:
    """Copies records to a capture's Unix datagram socket (worker side)."""

    def __init__(self, path: str, transports: Iterable[str] = TRANSPORTS) -> None:
        self.path = path
        self.transports = frozenset(check_transports(transports))
        self.dropped = 0
        self.dead = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        except OSError:
            pass

    def wants(self, transport: str) -> bool:
        return transport in self.transports

    def emit(self, rec: TapRecord) -> None:
        try:
            self._sock.sendto(encode_record(rec), self.path)
        except ValueError:  # addresses of two families: the copy is lost, never the message
            self.dropped += 1
        except (BlockingIOError, InterruptedError):
            self.dropped += 1  # the capture is behind: lose a copy, never delay a call
        except OSError as e:
            if e.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                self.dead = True  # the capture has gone
            else:
                self.dropped += 1

    def close(self) -> None:
        self._sock.close()


class TapReader:
    """The capture's end: binds a Unix datagram socket the workers send records to."""

    def __init__(self, path: str) -> None:
        self.path = path
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        except OSError:
            pass
        self.sock.bind(path)
        os.chmod(path, 0o600)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, timeout: float | None = None) -> TapRecord | None:
        """The next record, or None after `timeout` seconds (or a datagram that is not one)."""
        self.sock.settimeout(timeout)
        try:
            raw = self.sock.recv(70000)
        except (TimeoutError, BlockingIOError):
            return None
        try:
            return decode_record(raw)
        except ValueError:
            return None

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
