"""A relay worker process: sockets, the ClearIP link and timers around one ProxyCore.

Several workers share the SIP ports with SO_REUSEPORT (one per core by default). A call belongs
to one worker: a datagram that lands on another worker's socket is handed over by Call-ID hash
(responses by the worker id in our Via branch), and each worker sends its requests from a
private UDP port of its own, so responses come straight back to it.

Started by the supervisor as `python -m clearip.relay.worker --config FILE --index I
--workers N --ctl-fd FD`.

Longer than 700 lines: the byte pump for UDP, TCP/TLS (accept with its limits, connect,
write) and the ClearIP link around one event loop. Its other jobs have modules of their own:
udp, streams, upstream, handoff, resolver, localaddr, copies, gcpolicy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import struct
import sys
import time
from time import perf_counter
from typing import Any

from clearip.config import Config, ConfigError, HostPort, load_config
from clearip.fastpath import steering
from clearip.notices import log_notice
from clearip.relay import gcpolicy
from clearip.relay.conncount import ConnCounts
from clearip.relay.copies import Copies
from clearip.relay.core import ProxyCore
from clearip.relay.counters import Counters
from clearip.relay.events import PRIVATE_PORT_OFFSET, Address, Flow, Send
from clearip.relay.handoff import Handoff
from clearip.relay.ids import owner_of
from clearip.relay.localaddr import LocalAddresses, wildcard
from clearip.relay.resolver import Resolver
from clearip.relay.routing import is_ip_literal
from clearip.relay.streams import ConnectionTable, StreamConnection, plain_ip
from clearip.relay.udp import UdpEndpoint
from clearip.relay.upstream import UpstreamLink
from clearip.sip.stun import binding_request, binding_success
from clearip.trust import TrustList, load_state

log = logging.getLogger("clearip.worker")

IDLE_SWEEP_INTERVAL = 10.0
TLS_HANDSHAKE_TIMEOUT = 10.0
REFUSAL_LOG_INTERVAL = 60.0
OVERLOAD_TICK = 0.01  # the event-loop heartbeat of overload control
# What the core has to send after a message waits until the loop has read what is ready now
# (one UDP batch, one TCP read), at most HOLD_MAX messages and HOLD_TIME seconds from the first:
# the ClearIP link then gets one write for several calls' requests, and timers are re-armed once,
# not per message, while no message waits on more than a few others.
HOLD_MAX = 8
HOLD_TIME = 0.0002

class Worker:
    """Implements the core's Environment and moves bytes between sockets and the core."""

    def __init__(
        self,
        config: Config,
        index: int,
        workers: int,
        config_path: str | None,
        instance: str | None = None,
        handoff_dir: str = "",
        conncount_fd: int | None = None,
        steering_fds: list[tuple[int, int]] | None = None,
    ):
        self.config = config
        # (socket array fd, program fd) per shared UDP listener: fastpath/steering.py
        self.steering_fds = steering_fds or []
        self.config_path = config_path
        self.index = index
        self.workers = workers
        self.counters = Counters()
        self.core = ProxyCore(config, self, self.counters, worker=index, instance=instance)
        self.trust = TrustList()
        self.udp: dict[Address, UdpEndpoint] = {}  # by local address
        self.private: dict[int, UdpEndpoint] = {}  # address family -> this worker's own socket
        self.streams = ConnectionTable(
            config.limits.max_tcp_per_source,
            config.limits.max_tcp_connections,
            ConnCounts(conncount_fd, workers, index),
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lag_max = 0.0
        self.gc_passes = gcpolicy.Passes()
        self._wait_max = 0.0  # the longest a datagram waited in the kernel since the last beat
        self._last_refusal_log = -REFUSAL_LOG_INTERVAL
        self._refusals_suppressed = 0
        self.listen_socks: list[socket.socket] = []  # TCP/TLS listeners (accepted by hand)
        self.link: UpstreamLink | None = None
        self.listeners: list[dict[str, str]] = []
        self.local = LocalAddresses()
        self._pending_connects: dict[tuple[str, str, int], list[Send]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.handoff: Handoff | None = None
        self.handoff_dir = handoff_dir  # the supervisor's private directory for hand-offs
        self.link_to_supervisor: Any = None  # WorkerLink, once the supervisor is connected
        self.resolver = Resolver()
        self._tls_clients: dict[tuple[bool, str], ssl.SSLContext] = {}
        self._tls_server: ssl.SSLContext | None = None
        self._stop = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._latency = self.counters.latency.append
        self._held: list[float] = []  # when each message not yet flushed began (perf_counter)
        # copies of every message for `capture --decrypted` and HEP3; empty: no cost
        self.copies = Copies(self.local, self._spawn, index)
        # the sockets this worker binds at start; a reload keeps them (and so these)
        listen = config.listen
        self._listen_by_transport = {"udp": listen.udp, "tcp": listen.tcp, "tls": listen.tls}
        self.apply_trust()
        self.pinhole_maps: Any = None  # the fast path's pinned pinhole maps, when it is on

    # -- Environment -------------------------------------------------------------------------------

    def _listeners_for(self, transport: str) -> tuple[Any, ...]:
        return self._listen_by_transport.get(transport, ())

    def via_address(self, transport: str, dest_host: str) -> Address:
        listeners = self._listeners_for(transport) or self.config.listen.udp
        adv = self.config.listen.advertise
        port = listeners[0].port if listeners else 5060
        if adv is not None and adv.port:
            port = adv.port
        if transport == "udp":
            port += PRIVATE_PORT_OFFSET + self.index  # responses come back to this worker
        host = adv.host if adv is not None else self.local.toward(dest_host, listeners)
        return host, port

    def rr_address(self, transport: str, peer_host: str) -> Address:
        listeners = self._listeners_for(transport) or self.config.listen.udp
        port = listeners[0].port if listeners else 5060
        adv = self.config.listen.advertise
        if adv is not None:
            return adv.host, adv.port or port
        return self.local.toward(peer_host, listeners), port

    def is_local(self, host: str, port: int | None) -> bool:
        return self.local.is_local(host, port)

    def is_trusted(self, ip: str) -> bool:
        return ip in self.trust

    def pinhole(self, host: str, is_open: bool) -> None:
        """The core's first use of next hop `host` (an IP) began, or its last one ended.

        Opening writes the eBPF pinhole here, before the request that needs it is sent, so the
        next hop's first answer is never dropped in the kernel; the supervisor owns the
        lifetime from then on (nftables, re-arming, closing)."""
        if is_open and self.pinhole_maps is not None:
            try:
                self.pinhole_maps.add_pinhole(host, self.config.fastpath.pinhole_ttl)
            except (OSError, ValueError) as e:
                log.warning("fast path: cannot open the pinhole for %s: %s", host, e)
        if self.link_to_supervisor is not None:
            self.link_to_supervisor.send_event({"event": "pinhole", "ip": host, "open": is_open})

    def notice(self, kind: str, detail: dict[str, object]) -> None:
        if self.link_to_supervisor is not None:  # the supervisor logs it once for all workers
            self.link_to_supervisor.send_event({"event": "notice", "kind": kind, **detail})
        else:
            log_notice(log, kind, detail)

    def apply_trust(self) -> None:
        nets = list(self.config.trust.sources)
        try:
            nets += [e.cidr for e in load_state(self.config.control.state_dir)]
        except ValueError as e:  # TrustError: unreadable or corrupt
            if self.trust.networks:  # running: keep the list in force
                log.error("%s; the running trusted list is kept", e)
                return
            log.error("%s; only trust.sources is trusted", e)
        self.trust.set(nets)

    # -- start / stop ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        cfg = self.config
        self.pinhole_maps = open_pinhole_maps(cfg)  # before any listener: accept asks it
        self.local.discover(cfg, self.workers)
        if self.workers > 1 and self.handoff_dir:
            # before any shared socket: a message landing here for another worker's call must
            # be handed over from the first one (a restarted worker joins a running proxy)
            self.handoff = Handoff(self.loop, self.handoff_dir, self.index, self._receive)
        for group, lst in enumerate(cfg.listen.udp):
            shared = self._open_udp((lst.host, lst.port), shared=True)
            if group < len(self.steering_fds):
                self._join_steering(shared, *self.steering_fds[group])
            # requests go out from a port of this worker's own, even when it is the only one:
            # their answers come straight back to it, and need no pinhole in the fast path
            port = lst.port + PRIVATE_PORT_OFFSET + self.index
            ep = self._open_udp((lst.host, port), shared=False)
            family = socket.AF_INET6 if ":" in lst.host else socket.AF_INET
            self.private.setdefault(family, ep)
        for lst in cfg.listen.tcp:
            await self._open_stream_server("tcp", (lst.host, lst.port), None)
        if cfg.listen.tls:
            self._tls_server = server_tls_context(cfg)
            for lst in cfg.listen.tls:
                await self._open_stream_server("tls", (lst.host, lst.port), self._tls_server)
        source = next((t.host for t in cfg.listen.tcp if not wildcard(t.host)), None)
        self.link = UpstreamLink(
            cfg.clearip,
            cfg.limits.max_message_bytes,
            self._on_link_message,
            self._on_link_up,
            self._on_link_down,
            source_ip=source,
        )
        self.link.start()
        self.copies.set_hep(cfg)
        self._spawn(self._sweep_idle())
        self._spawn(self._watch_lag())
        self._spawn(self._collect_young())

    def _join_steering(self, ep: UdpEndpoint, array_fd: int, prog_fd: int) -> None:
        """The kernel hands this socket the datagrams of this worker's calls (steering.py);
        if it refuses, they come by hand-off as before."""
        try:
            steering.join(ep.sock, array_fd, prog_fd, self.index)
        except OSError as e:
            log.warning(
                "worker %d: calls to %s not steered in the kernel (%s): handed off instead",
                self.index,
                HostPort(*ep.local),
                e,
            )

    def _open_udp(self, local: Address, *, shared: bool) -> UdpEndpoint:
        assert self.loop is not None
        family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
            except OSError:
                pass
        sock.bind(local)
        ep = UdpEndpoint(self.loop, sock, local, shared, self.on_datagram, self.counters.drop)
        self.udp[local] = ep
        if shared:
            self.listeners.append({"transport": "udp", "address": str(HostPort(*local))})
        return ep

    async def _open_stream_server(
        self, name: str, local: Address, tls: ssl.SSLContext | None
    ) -> None:
        assert self.loop is not None
        family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(local)
        sock.listen(1024)
        sock.setblocking(False)
        self.listen_socks.append(sock)
        self._spawn(self._accept_loop(name, sock, tls))
        self.listeners.append({"transport": name, "address": str(HostPort(*local))})

    async def _accept_loop(
        self, name: str, sock: socket.socket, tls: ssl.SSLContext | None
    ) -> None:
        """Accept by hand rather than with a server: each connection is checked and counted
        the moment it is accepted, before any TLS handshake (which is work a refused source
        must not get, and which must count against the limits while it runs)."""
        assert self.loop is not None
        while True:
            try:
                client, addr = await self.loop.sock_accept(sock)
            except OSError as e:  # out of fds (EMFILE) and the like: breathe, go on
                log.warning("accepting %s connections: %s", name, e)
                await asyncio.sleep(0.1)
                continue
            self._accepted(name, client, (plain_ip(addr[0]), addr[1]), tls)

    def _accepted(
        self,
        name: str,
        client: socket.socket,
        remote: Address,
        tls: ssl.SSLContext | None,
    ) -> None:
        ip = remote[0]
        # With the fast path on, the kernel has judged this source already (trusted, or a
        # pinhole the supervisor holds); without it, the relay's own list and pinholes decide.
        if self.pinhole_maps is None and not (self.is_trusted(ip) or self.core.is_pinholed(ip)):
            self.counters.inc("dropped_untrusted")
            self._refused_log(f"refusing {name} connection from untrusted {ip}")
            _reset(client)
            return
        limit = self.streams.reserve(ip)
        if limit is not None:
            self.counters.drop(limit)
            self._refused_log(f"refusing {name} connection from {ip}: {limit} reached")
            _reset(client)
            return
        conn = StreamConnection(
            name,
            self._on_stream_message,
            self._on_stream_closed,
            self.config.limits.max_message_bytes,
        )
        conn.on_drop = self.counters.drop
        conn.counted = True
        conn.remote = remote
        self._spawn(self._start_stream(conn, client, tls))

    async def _start_stream(
        self, conn: StreamConnection, client: socket.socket, tls: ssl.SSLContext | None
    ) -> None:
        assert self.loop is not None
        try:
            await self.loop.connect_accepted_socket(
                lambda: conn,
                client,
                ssl=tls,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if tls is not None else None,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as e:
            log.debug("%s connection from %s:%d failed to start: %s", conn.name, *conn.remote, e)
            if tls is not None:
                self.counters.drop("tls_handshake")
            self.streams.remove(conn)  # frees its reserved slot
            client.close()
            return
        self.streams.add(conn)

    def _refused_log(self, line: str) -> None:
        """Refusals are logged at most once a minute (a flood must not drown the call log)."""
        now = time.monotonic()
        if now - self._last_refusal_log >= REFUSAL_LOG_INTERVAL:
            suppressed = self._refusals_suppressed
            self._last_refusal_log = now
            self._refusals_suppressed = 0
            more = f" (and {suppressed} more refusals in the last minute)" if suppressed else ""
            log.warning("%s%s", line, more)
        else:
            self._refusals_suppressed += 1

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        """A task this worker keeps until it ends, and cancels when it stops."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self, grace: float) -> None:
        """Graceful stop: no new calls; calls being set up get their answers, then exit."""
        core = self.core
        core.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while core.calls and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for sock in self.listen_socks:
            sock.close()
        if self.link is not None:
            await self.link.stop()
        for conn in list(self.streams.by_id.values()):
            conn.close()
        for ep in self.udp.values():
            ep.close()
        if self.handoff is not None:
            self.handoff.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def _sweep_idle(self) -> None:
        """Idle connections closed; the old generation collected when quiet (gcpolicy)."""
        assert self.loop is not None
        old = gcpolicy.OldGeneration(self.loop.time())
        while True:
            await asyncio.sleep(IDLE_SWEEP_INTERVAL)
            now = self.loop.time()
            self.streams.close_idle(now, self.config.limits.tcp_idle_timeout)
            core = self.core
            if old.due(now, len(core.server_txs) + len(core.client_txs)):
                found, took = old.collect(now)
                log.info(
                    "worker %d: full garbage collection, %d objects freed, %.0f ms",
                    self.index,
                    found,
                    took * 1000,
                )

    async def _collect_young(self) -> None:
        """The young and middle collector passes on a clock (gcpolicy: CPython's own trigger let
        them grow to 700 ms stalls)."""
        while True:
            await asyncio.sleep(gcpolicy.YOUNG_EVERY)
            self.gc_passes.run()

    # -- receiving ---------------------------------------------------------------------------------

    def on_datagram(self, ep: UdpEndpoint, data: bytes, remote: Address, waited: float) -> None:
        if data in (b"\r\n\r\n", b"\r\n"):
            return  # a keepalive over UDP: nothing to do
        if data[0] < 2:  # no SIP message starts with a control byte: STUN's first bits are 0
            self._stun(ep, data, remote)
            return
        flow = Flow("udp", remote, ep.local)
        # On the shared port anything may belong to another worker; on our own port only a
        # response can (peers that answer to where the call started rather than to our Via).
        if self.handoff is not None and (ep.shared or data.startswith(b"SIP/2.0 ")):
            owner = owner_of(data, self.workers)
            if owner is not None and owner != self.index:
                self.handoff.send(owner, data, flow, time.time() - waited)
                return
        self._receive(data, flow, waited)

    def _stun(self, ep: UdpEndpoint, data: bytes, remote: Address) -> None:
        """RFC 5626 §4.4.2 keepalive: a Binding success to trusted sources, else a counted drop."""
        request = binding_request(data)
        if request is None:
            self.counters.inc("malformed")
            return
        if not self.is_trusted(remote[0]):
            self.counters.drop("stun_untrusted")
            return
        ep.sendto(binding_success(request[0], remote, request[1]), remote)

    def _on_stream_message(self, conn: StreamConnection, data: bytes) -> None:
        flow = Flow(conn.name, conn.remote, conn.local, conn.id)
        if self.handoff is not None and data.startswith(b"SIP/2.0 "):
            # a peer may answer over a connection another worker holds (one socket for all,
            # like SIPp -t t1): the response goes to the worker named in our Via branch
            owner = owner_of(data, self.workers)
            if owner is not None and owner != self.index:
                self.handoff.send(owner, data, flow, time.time())
                return
        self._receive(data, flow)

    def _on_stream_closed(self, conn: StreamConnection) -> None:
        self.streams.remove(conn)

    def _on_link_message(self, conn: StreamConnection, data: bytes) -> None:
        self._receive(data, Flow(conn.name, conn.remote, conn.local, conn.id, upstream=True))

    def _on_link_up(self, conn: StreamConnection) -> None:
        assert self.loop is not None
        self.core.link_up(conn.id, self.loop.time())
        self._flush()

    def _on_link_down(self, conn: StreamConnection) -> None:
        assert self.loop is not None
        self.core.link_down(conn.id, self.loop.time())
        self._flush()

    def _receive(self, data: bytes, flow: Flow, waited: float = 0.0) -> None:
        """`waited`: seconds the message sat in the kernel's queue (UDP; 0 when unknown).

        What the message makes the core send goes out at the next `_flush`: after the rest of
        what the loop has ready now (`call_soon` runs once every ready socket was read), or
        sooner once HOLD_MAX messages or HOLD_TIME wait. The latency window gets each message's
        time from its read to that flush."""
        started = perf_counter()
        if waited > self._wait_max:
            self._wait_max = waited
        if self.copies:
            self.copies.emit("in", flow.transport, flow.remote, flow.local, data, flow.upstream)
        try:
            self.core.receive(data, flow, self._now(), waited)
        except Exception:  # a bug must cost one message, never the worker or its timers
            log.exception("internal error handling a message from %s:%d", *flow.remote)
            self.counters.inc("internal_errors")
        held = self._held
        held.append(started)
        if len(held) == 1:
            assert self.loop is not None
            self.loop.call_soon(self._flush_held)
        elif len(held) >= HOLD_MAX or perf_counter() - held[0] >= HOLD_TIME:
            self._flush()

    def _flush_held(self) -> None:
        if self._held:
            self._flush()

    def _now(self) -> float:
        assert self.loop is not None
        return self.loop.time()

    async def _watch_lag(self) -> None:
        """Overload control (relay/overload.py): a heartbeat every OVERLOAD_TICK tells the
        core how late the worker runs: its event loop, or the datagrams it read meanwhile."""
        assert self.loop is not None
        loop = self.loop
        control = self.core.overload
        next_report = 0.0
        while True:
            expected = loop.time() + OVERLOAD_TICK
            await asyncio.sleep(OVERLOAD_TICK)
            now = loop.time()
            # late is late, in the loop or in a socket's queue before the loop read it
            lag = max(0.0, now - expected, self._wait_max)
            self._wait_max = 0.0
            self._lag_max = max(self._lag_max, lag)
            change = control.beat(now, lag)
            if now >= next_report and self.link_to_supervisor is not None:
                # what dies with this worker if it is killed: the supervisor counts it then
                next_report = now + 1.0
                self.link_to_supervisor.send_event({"event": "load", "calls": len(self.core.calls)})
            if change == "on":
                self.counters.inc("overload_periods")
                log.warning(
                    "worker %d behind (event loop %.0f ms late): new calls beyond %.0f/s "
                    "get 503 until it catches up",
                    self.index,
                    control.lag * 1000,
                    control.rate or 0,
                )
            elif change == "off":
                log.warning("worker %d caught up: taking every new call again", self.index)

    def _on_timer(self) -> None:
        assert self.loop is not None
        self._timer = None
        self._timer_at = None
        try:
            self.core.on_timer(self.loop.time())
        except Exception:
            log.exception("internal error running timers")
            self.counters.inc("internal_errors")
        self._flush()

    # -- sending -----------------------------------------------------------------------------------

    def _flush(self) -> None:
        core = self.core
        while True:  # a failed send may make the core send again (the next provider)
            items = core.data_to_send()
            if not items:
                break
            if len(items) == 1:
                self._send(items[0])
                continue
            links: dict[int, list[Send]] = {}
            for item in items:
                target = item.target
                if target.upstream and target.conn is not None:
                    links.setdefault(target.conn, []).append(item)
                else:
                    self._send(item)
            for conn_id, group in links.items():
                self._send_upstream(conn_id, group)
        held = self._held
        if held:
            done = perf_counter()
            record = self._latency
            for started in held:
                record(done - started)
            held.clear()
        when = core.next_deadline()
        if when is not None and (self._timer_at is None or when < self._timer_at):
            assert self.loop is not None
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = when
            self._timer = self.loop.call_at(when, self._on_timer)

    def _send_upstream(self, conn_id: int, items: list[Send]) -> None:
        """Several messages for one ClearIP connection: one write."""
        conn = self.link.get(conn_id) if self.link else None
        data = items[0].data if len(items) == 1 else b"".join([i.data for i in items])
        if conn is None or not conn.write(data):
            for item in items:
                self._failed(item)
        elif self.copies:
            for item in items:
                self.copies.emit("out", conn.name, conn.local, conn.remote, item.data, True)

    def _send(self, item: Send) -> None:
        target = item.target
        if target.upstream:
            if target.conn is None:
                self._failed(item)
            else:
                self._send_upstream(target.conn, [item])
            return
        if target.transport == "udp":
            self._send_udp(item)
        else:
            self._send_stream(item)

    def _send_udp(self, item: Send) -> None:
        target = item.target
        host = target.host
        if not is_ip_literal(host):
            resolved = self.resolver.cached(host)
            if resolved is None:
                self._spawn(self._resolve_and_send(item))
                return
            host = resolved
            self.core.resolved(item.token, host)  # pinholed before the send (SPEC §5)
        ep = self.udp.get(target.local) if target.local is not None else None
        if ep is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            ep = self.private.get(family) or next(
                (e for a, e in self.udp.items() if (":" in a[0]) == (family == socket.AF_INET6)),
                None,
            )
        if ep is None or not ep.sendto(item.data, (host, target.port)):
            self._failed(item)
            return
        if self.copies:
            self.copies.emit("out", "udp", ep.local, (host, target.port), item.data)

    async def _resolve_and_send(self, item: Send) -> None:
        try:
            await self.resolver.resolve(item.target.host, item.target.port)
        except OSError as e:
            log.info("cannot resolve next hop %s: %s", item.target.host, e)
            self._failed(item)
            self._flush()
            return
        self._send(item)
        self._flush()

    def _send_stream(self, item: Send) -> None:
        target = item.target
        conn = None
        if target.conn is not None:
            conn = self.streams.by_id.get(target.conn)
        if conn is None or conn.closed:
            # a connection is found by the address it goes to, so a next hop named by host
            # reuses one connection instead of opening one per request
            host = target.host
            if not is_ip_literal(host):
                host = self.resolver.cached(host) or host
            conn = self.streams.find(target.transport, host, target.port)
            if conn is not None:
                self.core.resolved(item.token, conn.remote[0])
        if conn is not None and conn.write(item.data):
            if self.copies:
                self.copies.emit("out", conn.name, conn.local, conn.remote, item.data)
            return
        key = (target.transport, target.host, target.port)
        pending = self._pending_connects.get(key)
        if pending is not None:
            pending.append(item)
            return
        self._pending_connects[key] = [item]
        self._spawn(self._connect(key))

    async def _connect(self, key: tuple[str, str, int]) -> None:
        assert self.loop is not None
        transport, host, port = key
        try:
            address = host
            if not is_ip_literal(host):
                address = await self.resolver.resolve(host, port, socket.SOCK_STREAM)
            conn = self.streams.find(transport, address, port)  # made while we resolved
            if conn is None:
                tls = self._next_hop_tls(host) if transport == "tls" else None
                _, conn = await asyncio.wait_for(
                    self.loop.create_connection(
                        lambda: StreamConnection(
                            transport,
                            self._on_stream_message,
                            self._on_stream_closed,
                            self.config.limits.max_message_bytes,
                        ),
                        address,
                        port,
                        ssl=tls,
                        server_hostname=host if tls is not None else None,
                    ),
                    5.0,
                )
                conn.on_drop = self.counters.drop
                self.streams.add(conn)
        except (TimeoutError, OSError, ssl.SSLError) as e:
            log.info("cannot connect to %s:%s over %s: %s", host, port, transport, e)
            for item in self._pending_connects.pop(key, []):
                self._failed(item)
            self._flush()
            return
        for item in self._pending_connects.pop(key, []):
            self.core.resolved(item.token, conn.remote[0])
            if not conn.write(item.data):
                self._failed(item)
            elif self.copies:
                self.copies.emit("out", conn.name, conn.local, conn.remote, item.data)
        self._flush()

    def _next_hop_tls(self, host: str) -> ssl.SSLContext:
        """TLS toward a next hop: verified against the system store (or routing.tls_ca_file),
        its name or address checked, unless the config exempts that host (a private link)."""
        routing = self.config.routing
        exempt = host in routing.tls_verify_exempt
        key = (exempt, routing.tls_ca_file)
        ctx = self._tls_clients.get(key)
        if ctx is None:
            ctx = ssl.create_default_context(cafile=routing.tls_ca_file or None)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if exempt:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._tls_clients[key] = ctx
        return ctx

    def add_tap(self, path: str, transports: list[str]) -> None:
        self.copies.add_tap(path, transports)

    def remove_tap(self, path: str) -> None:
        self.copies.remove_tap(path)

    def _failed(self, item: Send) -> None:
        if item.token is not None:
            assert self.loop is not None
            self.core.send_failed(item.token, self.loop.time())

    # -- supervisor requests -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        snap = self.counters.snapshot()
        snap["listeners"] = self.listeners
        snap["upstream"] = self.link.status() if self.link else {"state": "down"}
        snap["handoff"] = {
            "sent": self.handoff.sent if self.handoff else 0,
            "local": self.handoff.overflow if self.handoff else 0,
        }
        snap["tap"] = self.copies.stats()
        control = self.core.overload
        snap["overload"] = {
            "active": int(control.active),
            "admitted_per_s": round(control.rate or 0.0, 1),  # 0: no limit
            "lag_ms": round(control.lag * 1000.0, 1),  # smoothed
            "lag_ms_max": round(self._lag_max * 1000.0, 1),  # since the last stats
            "gc_ms_max": round(self.gc_passes.take_longest() * 1000.0, 1),  # likewise
        }
        self._lag_max = 0.0
        snap["transactions"] = {
            "server": len(self.core.server_txs),
            "client": len(self.core.client_txs),
            "calls": len(self.core.calls),
            "dialogs": len(self.core.dialogs),
        }
        return snap

    async def reload(self, config: Config) -> None:
        """New routing, trust, timeouts and limits apply to new calls; sockets stay as they are."""
        self.config = config
        self.core.config = config
        self.core.overload.bound = config.limits.overload_lag
        self.apply_trust()
        self.copies.set_hep(config)

    def set_trusted(self, cidrs: list[str]) -> None:
        self.trust.set(cidrs)

    async def shutdown(self, grace: float) -> None:
        await self.stop(grace)


def _reset(sock: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0): a refused peer holds nothing of ours, not even TIME_WAIT."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def open_pinhole_maps(cfg: Config) -> Any:
    """The pinhole maps the supervisor's fast path pinned, or None when it is off (the
    supervisor loads it before starting any worker)."""
    if cfg.fastpath.enabled == "off":
        return None
    from clearip.fastpath.maps import open_pinned

    try:
        return open_pinned(cfg.fastpath.name, only=("pinholes_v4", "pinholes_v6"))
    except Exception as e:  # off, or not this version's: the supervisor's writes still stand
        log.debug("no fast path pinhole maps to write: %s", e)
        return None


def server_tls_context(cfg: Config) -> ssl.SSLContext:
    from clearip.tlscert import ensure_self_signed

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION  # a client-driven CPU sink, and never needed
    if cfg.listen.tls_cert:
        ctx.load_cert_chain(cfg.listen.tls_cert, cfg.listen.tls_key)
    else:
        ctx.load_cert_chain(ensure_self_signed(cfg.control.state_dir))
    return ctx


async def _amain(args: argparse.Namespace) -> int:
    from clearip.workerlink import WorkerLink

    try:
        config = load_config(args.config or None)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    worker = Worker(
        config,
        args.index,
        args.workers,
        args.config or None,
        args.instance or None,
        args.handoff_dir,
        args.conncount_fd,
        steering.parse_fds(args.steering_fds),
    )
    try:
        await worker.start()
    except OSError as e:
        log.error("worker %d cannot open its sockets: %s", args.index, e)
        return 1
    gcpolicy.configure()  # young passes small, old ones only when quiet (relay/gcpolicy.py)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []  # kept: a task nobody holds may be collected

    def on_signal() -> None:
        if not stopping:
            stopping.append(loop.create_task(worker.stop(0.0)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    link = None
    if args.ctl_fd is not None:
        link = WorkerLink(args.ctl_fd, worker)
        await link.start()
        worker.link_to_supervisor = link
        link.send_event({"event": "ready", "index": args.index})
    await worker.wait_stopped()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ClearIP relay worker (started by clearipctl run)")
    parser.add_argument("--config", default="")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--ctl-fd", type=int, default=None)
    parser.add_argument("--instance", default="", help="this proxy's id in our Via branches")
    parser.add_argument("--handoff-dir", default="", help="private directory of hand-off sockets")
    parser.add_argument("--conncount-fd", type=int, default=None, help="shared connection counts")
    parser.add_argument("--steering-fds", default="", help="call steering: array,program;...")
    args = parser.parse_args(argv)
    from clearip.logsetup import setup_logging

    try:
        level = load_config(args.config or None).control.log_level
    except ConfigError:
        level = "info"
    setup_logging(level)
    try:
        import uvloop

        return uvloop.run(_amain(args))
    except ImportError:
        return asyncio.run(_amain(args))


if __name__ == "__main__":
    sys.exit(main())
