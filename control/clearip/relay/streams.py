"""TCP and TLS connections for the relay: framing, keepalive pongs, limits, reuse.

Thin asyncio protocols: bytes in are framed into messages (sip.framing) and handed to a
callback with the connection's id; bytes out are written as they come. Which connection a
response or request uses is the worker's decision (`ConnectionTable`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Callable

from clearip.sip.errors import SipProtocolError
from clearip.sip.framing import PING, PONG_BYTES, StreamFramer

log = logging.getLogger("clearip.streams")

_conn_ids = itertools.count(1)

MessageCallback = Callable[["StreamConnection", bytes], None]


class StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection carrying SIP, accepted or opened by us."""

    def __init__(
        self,
        transport_name: str,
        on_message: MessageCallback,
        on_close: Callable[[StreamConnection], None],
        max_message_bytes: int,
        *,
        answer_pings: bool = True,
        on_pong: Callable[[StreamConnection], None] | None = None,
    ) -> None:
        self.id = next(_conn_ids)
        self.name = transport_name  # "tcp" | "tls"
        self.on_message = on_message
        self.on_close = on_close
        self.on_pong = on_pong
        self.answer_pings = answer_pings
        self.framer = StreamFramer(max_message_bytes)
        self.transport: asyncio.Transport | None = None
        self.remote: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)
        self.last_activity = 0.0
        self.closed = False
        self.tls_version: str | None = None
        self.counted = False  # accepted and counted against its source's limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] - uvloop's is only alike
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.remote = (_plain_ip(peer[0]), peer[1]) if peer else ("", 0)
        self.local = (_plain_ip(sock[0]), sock[1]) if sock else ("", 0)
        ssl_obj = transport.get_extra_info("ssl_object")
        self.tls_version = ssl_obj.version() if ssl_obj is not None else None
        self.last_activity = asyncio.get_running_loop().time()
        raw = transport.get_extra_info("socket")
        if raw is not None:
            try:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        self.last_activity = asyncio.get_running_loop().time()
        framer = self.framer
        framer.feed(data)
        while True:
            try:
                event = framer.next_event()
            except SipProtocolError as e:
                # a stream that cannot be framed cannot be resynchronised: close it
                log.info("closing %s connection from %s:%d: %s", self.name, *self.remote, e.reason)
                self.close()
                return
            if event is None:
                # the side that pings takes a lone CRLF held at the end as the pong
                if self.on_pong is not None and framer.flush_pong():
                    self.on_pong(self)
                return
            if isinstance(event, bytes):
                self.on_message(self, event)
            elif event is PING:
                if self.answer_pings:
                    self.write(PONG_BYTES)
            elif self.on_pong is not None:
                self.on_pong(self)
            if self.closed:
                return

    def write(self, data: bytes) -> bool:
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.on_close(self)


def _plain_ip(host: str) -> str:
    # IPv4-mapped IPv6 from dual-stack sockets: report the IPv4 address operators know
    return host[7:] if host.startswith("::ffff:") and "." in host else host


class ConnectionTable:
    """Open stream connections by id and by (transport, remote address), for reuse."""

    def __init__(self, max_per_source: int) -> None:
        self.by_id: dict[int, StreamConnection] = {}
        self.by_addr: dict[tuple[str, str, int], StreamConnection] = {}
        self.per_source: dict[str, int] = {}
        self.max_per_source = max_per_source

    def admit(self, conn: StreamConnection) -> bool:
        """Count an accepted connection against its source's limit (SPEC §3 limits)."""
        ip = conn.remote[0]
        n = self.per_source.get(ip, 0)
        if n >= self.max_per_source:
            return False
        self.per_source[ip] = n + 1
        conn.counted = True
        self.add(conn)
        return True

    def add(self, conn: StreamConnection) -> None:
        self.by_id[conn.id] = conn
        self.by_addr[(conn.name, *conn.remote)] = conn

    def remove(self, conn: StreamConnection) -> None:
        self.by_id.pop(conn.id, None)
        key = (conn.name, *conn.remote)
        if self.by_addr.get(key) is conn:
            del self.by_addr[key]
        ip = conn.remote[0]
        if conn.counted and ip in self.per_source:
            self.per_source[ip] -= 1
            if self.per_source[ip] <= 0:
                del self.per_source[ip]

    def find(self, transport: str, host: str, port: int) -> StreamConnection | None:
        conn = self.by_addr.get((transport, host, port))
        return conn if conn is not None and not conn.closed else None

    def close_idle(self, now: float, idle: float) -> int:
        stale = [c for c in self.by_id.values() if now - c.last_activity > idle]
        for conn in stale:
            conn.close()
        return len(stale)
