"""The persistent link to ClearIP (SPEC §3 "Upstream link").

`clearip.connections` TCP or TLS connections per worker, opened at start and kept: RFC 5626
CRLF pings every `clearip.keepalive` seconds plus TCP keepalive; only a failed write, the
kernel's keepalive timeout or data unacknowledged for `clearip.timeout` (TCP_USER_TIMEOUT)
closes a connection (a missing pong is logged). A closed connection is re-resolved and
reconnected with capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable

from clearip.config import ClearipConfig
from clearip.relay.streams import StreamConnection
from clearip.sip.framing import PING_BYTES

log = logging.getLogger("clearip.upstream")

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0  # ClearIP back within seconds means calls flow again within seconds
FAILURE_LOG_INTERVAL = 60.0
CONNECT_TIMEOUT = 5.0


def client_tls_context(cfg: ClearipConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cfg.ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not cfg.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def set_keepalive(sock: socket.socket, idle: float) -> None:
    """TCP keepalive: the kernel closes a link whose peer vanished without a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(idle)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(idle / 3)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


class UpstreamLink:
    def __init__(
        self,
        cfg: ClearipConfig,
        max_message_bytes: int,
        on_message: Callable[[StreamConnection, bytes], None],
        on_up: Callable[[StreamConnection], None],
        on_down: Callable[[StreamConnection], None],
        source_ip: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.max_message_bytes = max_message_bytes
        self.on_message = on_message
        self.on_up = on_up
        self.on_down = on_down
        self.source_ip = source_ip
        self.conns: dict[int, StreamConnection] = {}
        self.state = "connecting"
        self.last_error = ""
        self.tls_version: str | None = None
        self.ping_sent: dict[int, float] = {}
        self.rtt_ms: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._last_failure_log = -FAILURE_LOG_INTERVAL
        self._tls = client_tls_context(cfg) if cfg.transport == "tls" else None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for slot in range(self.cfg.connections):
            self._tasks.append(loop.create_task(self._keep(slot), name=f"clearip-link-{slot}"))

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        for conn in list(self.conns.values()):
            conn.close()

    def get(self, conn_id: int) -> StreamConnection | None:
        return self.conns.get(conn_id)

    async def _keep(self, slot: int) -> None:
        """Keep one connection up for as long as the worker runs."""
        delay = BACKOFF_FIRST
        loop = asyncio.get_running_loop()
        while not self._stopping:
            closed = loop.create_future()
            try:
                conn = await self._connect(closed)
            except (TimeoutError, OSError, ssl.SSLError) as e:
                self.last_error = str(e) or type(e).__name__
                if not self.conns:
                    self.state = "down"
                now = loop.time()
                if now - self._last_failure_log >= FAILURE_LOG_INTERVAL:
                    self._last_failure_log = now  # one line a minute, not one per retry
                    log.warning(
                        "ClearIP link %s:%d: connect failed: %s (retrying, at most every %.0fs)",
                        self.cfg.host,
                        self.cfg.port,
                        self.last_error,
                        BACKOFF_MAX,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            delay = BACKOFF_FIRST
            self._last_failure_log = -FAILURE_LOG_INTERVAL
            self.conns[conn.id] = conn
            self.state = "connected"
            self.tls_version = conn.tls_version
            log.info(
                "ClearIP link up: %s:%d over %s%s",
                self.cfg.host,
                self.cfg.port,
                self.cfg.transport.upper(),
                f" ({conn.tls_version})" if conn.tls_version else "",
            )
            self.on_up(conn)
            pinger = loop.create_task(self._ping(conn))
            try:
                await closed
            finally:
                pinger.cancel()
            self.conns.pop(conn.id, None)
            self.ping_sent.pop(conn.id, None)
            if not self.conns:
                self.state = "connecting"
            if not self._stopping:
                log.warning("ClearIP link down: %s:%d (reconnecting)", self.cfg.host, self.cfg.port)
            self.on_down(conn)

    async def _connect(self, closed: asyncio.Future[None]) -> StreamConnection:
        loop = asyncio.get_running_loop()
        cfg = self.cfg

        def lost(c: StreamConnection) -> None:
            if not closed.done():
                closed.set_result(None)

        # re-resolved on every attempt: ClearIP may move its service address
        infos = await loop.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM)
        last: Exception | None = None
        for family, stype, proto, _, addr in infos:
            sock = socket.socket(family, stype, proto)
            sock.setblocking(False)
            try:
                if self.source_ip and (":" in self.source_ip) == (family == socket.AF_INET6):
                    sock.bind((self.source_ip, 0))
                set_keepalive(sock, cfg.keepalive)
                # A black-holed ClearIP (no RST, nothing acked) would look connected for the
                # ~15 minutes of TCP's retransmissions, every call waiting the full timeout:
                # unacknowledged data (a keepalive ping, an INVITE) now ends the link after
                # `timeout`, so a black hole is seen within keepalive + timeout.
                sock.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, int(cfg.timeout * 1000))
                )
                await asyncio.wait_for(loop.sock_connect(sock, addr), CONNECT_TIMEOUT)
                _, conn = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: StreamConnection(
                            cfg.transport,
                            self.on_message,
                            lost,
                            self.max_message_bytes,
                            on_pong=self._pong,
                        ),
                        sock=sock,
                        ssl=self._tls,
                        server_hostname=cfg.host if self._tls else None,
                    ),
                    CONNECT_TIMEOUT,
                )
                return conn
            except (TimeoutError, OSError, ssl.SSLError) as e:
                sock.close()
                last = e
        raise last or OSError(f"no address for {cfg.host}")

    async def _ping(self, conn: StreamConnection) -> None:
        """RFC 5626 §4.4.1 keepalive: CRLFCRLF, expecting a CRLF pong (absence is only logged)."""
        loop = asyncio.get_running_loop()
        while not conn.closed:
            await asyncio.sleep(self.cfg.keepalive)
            if conn.id in self.ping_sent:
                log.info("ClearIP link: no pong to the last keepalive (link kept)")
            self.ping_sent[conn.id] = loop.time()
            if not conn.write(PING_BYTES):
                return

    def _pong(self, conn: StreamConnection) -> None:
        sent = self.ping_sent.pop(conn.id, None)
        if sent is not None:
            self.rtt_ms = (asyncio.get_running_loop().time() - sent) * 1000.0

    def status(self) -> dict[str, object]:
        return {
            "state": self.state,
            "transport": self.cfg.transport,
            "tls_version": self.tls_version,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 3),
            "connections": len(self.conns),
            "last_error": self.last_error,
        }
