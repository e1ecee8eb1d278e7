"""TCP and TLS connections for the relay: framing, keepalive pongs, limits, reuse.

Thin asyncio protocols: bytes in are framed into messages (sip.framing) and handed to a
callback with the connection's id; bytes out are written as they come. Which connection a
response or request uses is the worker's decision (`ConnectionTable`).

A peer cannot make a connection hold the relay's memory or its slot for ever: what it will not
read is bounded (`MAX_WRITE_BUFFER`, then the connection is aborted and the sends fail like
any transport error), a close it does not complete becomes an abort after `CLOSE_GRACE`, and
idleness is measured from its last whole message, so a byte now and then keeps nothing open.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Callable

from clearip.relay.conncount import ConnCounts
from clearip.sip.errors import SipProtocolError
from clearip.sip.framing import PING, PONG_BYTES, StreamFramer

log = logging.getLogger("clearip.streams")

_conn_ids = itertools.count(1)

MessageCallback = Callable[["StreamConnection", bytes], None]

# Bytes waiting for a peer that does not read (a zero window): past this the connection is
# aborted. Many messages' worth, so a burst toward a slow but live peer passes.
MAX_WRITE_BUFFER = 1024 * 1024
CLOSE_GRACE = 5.0  # a close() the peer does not let finish becomes an abort after this
PARTIAL_TIMEOUT = 32.0  # a message begun and not completed for this long: the peer is stuck


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
        self.on_drop: Callable[[str], None] | None = None  # counts why it was cut (a reason)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] - uvloop's is only alike
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.remote = (plain_ip(peer[0]), peer[1]) if peer else ("", 0)
        self.local = (plain_ip(sock[0]), sock[1]) if sock else ("", 0)
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
        framer = self.framer
        framer.feed(data)
        while True:
            try:
                event = framer.next_event()
            except SipProtocolError as e:
                # a stream that cannot be framed cannot be resynchronised: close it
                log.info("closing %s connection from %s:%d: %s", self.name, *self.remote, e.reason)
                self._dropped("framing")
                self.abort()
                return
            if event is None:
                # the side that pings takes a lone CRLF held at the end as the pong
                if self.on_pong is not None and framer.flush_pong():
                    self.last_activity = asyncio.get_running_loop().time()
                    self.on_pong(self)
                return
            # activity is a whole message or keepalive, not a byte: a trickle keeps nothing
            self.last_activity = asyncio.get_running_loop().time()
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
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() + len(data) > MAX_WRITE_BUFFER:
            log.info(
                "aborting %s connection to %s:%d: it has not read %d bytes",
                self.name,
                *self.remote,
                transport.get_write_buffer_size(),
            )
            self._dropped("tcp_write_overflow")
            self.abort()
            return False
        transport.write(data)
        return True

    def close(self) -> None:
        """Close gracefully, and abort if the peer has not let it finish in CLOSE_GRACE."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
            asyncio.get_running_loop().call_later(CLOSE_GRACE, self.abort)

    def abort(self) -> None:
        """Drop the connection now, unsent bytes and all (RST)."""
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def stuck(self, now: float) -> bool:
        """A message begun and not finished for PARTIAL_TIMEOUT."""
        return self.framer.buffered > 0 and now - self.last_activity > PARTIAL_TIMEOUT

    def _dropped(self, reason: str) -> None:
        if self.on_drop is not None:
            self.on_drop(reason)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.on_close(self)


def plain_ip(host: str) -> str:
    # IPv4-mapped IPv6 from dual-stack sockets: report the IPv4 address operators know
    return host[7:] if host.startswith("::ffff:") and "." in host else host


class ConnectionTable:
    """Open stream connections by id and by (transport, remote address), for reuse.

    Accepted connections count against `max_per_source` and `max_total` over every worker
    (`ConnCounts`); the ones we open toward next hops do not.
    """

    def __init__(self, max_per_source: int, max_total: int, counts: ConnCounts) -> None:
        self.by_id: dict[int, StreamConnection] = {}
        self.by_addr: dict[tuple[str, str, int], StreamConnection] = {}
        self.max_per_source = max_per_source
        self.max_total = max_total
        self.counts = counts

    def reserve(self, ip: str) -> str | None:
        """Count a connection from `ip` being accepted (SPEC §3 limits), before its TLS
        handshake; the limit it would break, or None. Its StreamConnection carries
        `counted`, and remove() gives the slot back."""
        if self.counts.total() >= self.max_total:
            return "max_tcp_connections"
        if self.counts.of_source(ip) >= self.max_per_source:
            return "max_tcp_per_source"
        self.counts.add(ip, 1)
        return None

    def admit(self, conn: StreamConnection) -> str | None:
        """reserve() and add() in one step."""
        limit = self.reserve(conn.remote[0])
        if limit is None:
            conn.counted = True
            self.add(conn)
        return limit

    def add(self, conn: StreamConnection) -> None:
        self.by_id[conn.id] = conn
        self.by_addr[(conn.name, *conn.remote)] = conn

    def remove(self, conn: StreamConnection) -> None:
        self.by_id.pop(conn.id, None)
        key = (conn.name, *conn.remote)
        if self.by_addr.get(key) is conn:
            del self.by_addr[key]
        if conn.counted:
            conn.counted = False
            self.counts.add(conn.remote[0], -1)

    def find(self, transport: str, host: str, port: int) -> StreamConnection | None:
        conn = self.by_addr.get((transport, host, port))
        return conn if conn is not None and not conn.closed else None

    def close_idle(self, now: float, idle: float) -> int:
        """Close connections idle for `idle` seconds (no whole message); abort the stuck."""
        stale = [c for c in self.by_id.values() if now - c.last_activity > idle or c.stuck(now)]
        for conn in stale:
            if conn.stuck(now):
                conn._dropped("tcp_stuck")
                conn.abort()
            else:
                conn.close()
        return len(stale)
