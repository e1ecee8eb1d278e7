"""A UDP socket the worker reads and writes itself, not through the event loop's transport.

Reading with recvmsg gives every datagram's kernel receive time (SO_TIMESTAMPNS): how long it
waited in the socket's queue before the worker got to it. Overload control needs that wait: a
worker past its knee can look on time to its own event loop while seconds of INVITEs pile up
in a 4 MB receive buffer, where the loop never sees them (issue 12). The kernel's count of
datagrams it dropped on a full buffer (SO_RXQ_OVFL) comes along: counted as `udp_queue_full`.

Reads are batched (BATCH per wake-up) so one busy socket cannot starve the others or the
timers. A send the kernel cannot take now (EAGAIN on a full send buffer) waits in an ordered
backlog, flushed when the socket is writable; past SEND_BACKLOG datagrams it is refused.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable

from clearip.relay.events import Address

log = logging.getLogger(__name__)

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # also the cmsg type (SCM_TIMESTAMPNS)
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
BATCH = 64
MAX_DATAGRAM = 65535
CMSG_ROOM = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(4)
SEND_BACKLOG = 4096
_TIMESPEC = struct.Struct("qq")
_U32 = struct.Struct("I")

# (endpoint, datagram, source, seconds it waited in the kernel's queue)
OnDatagram = Callable[["UdpEndpoint", bytes, Address, float], None]
OnDrop = Callable[[str, int], None]  # (drop reason, how many)


class UdpEndpoint:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        local: Address,
        shared: bool,
        on_datagram: OnDatagram,
        on_drop: OnDrop,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.local = local
        self.shared = shared  # the listener port all workers share (vs. a worker's private one)
        self.on_datagram = on_datagram
        self.on_drop = on_drop
        self._kernel_drops = 0  # the kernel's count, as last reported (it wraps at 2**32)
        self._backlog: deque[tuple[bytes, Address]] = deque()
        self._closed = False
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        except OSError:
            pass
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        recv = self.sock.recvmsg
        deliver = self.on_datagram
        clock = time.time
        for _ in range(BATCH):
            try:
                data, ancdata, _flags, addr = recv(MAX_DATAGRAM, CMSG_ROOM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # an ICMP error queued on the socket: it says no more
                log.debug("UDP receive error on %s:%d: %s", *self.local, e)
                continue
            waited = 0.0
            for level, kind, payload in ancdata:
                if level != socket.SOL_SOCKET:
                    continue
                if kind == SO_TIMESTAMPNS and len(payload) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(payload)
                    waited = max(0.0, clock() - (sec + nsec * 1e-9))
                elif kind == SO_RXQ_OVFL and len(payload) >= _U32.size:
                    total = _U32.unpack_from(payload)[0]
                    if total != self._kernel_drops:
                        self.on_drop("udp_queue_full", (total - self._kernel_drops) % 2**32)
                        self._kernel_drops = total
            if self._closed:
                return
            deliver(self, data, (addr[0], addr[1]), waited)

    def sendto(self, data: bytes, addr: Address) -> bool:
        """Send or queue one datagram; False when it cannot go (no route, backlog full)."""
        if self._closed:
            return False
        backlog = self._backlog
        if backlog:
            if len(backlog) >= SEND_BACKLOG:
                self.on_drop("udp_send_backlog", 1)
                return False
            backlog.append((data, addr))
            return True
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            backlog.append((data, addr))
            self.loop.add_writer(self.sock.fileno(), self._writable)
        except OSError as e:  # no route, refused by the local firewall ...
            log.debug("UDP send from %s:%d to %s:%d failed: %s", *self.local, *addr, e)
            return False
        return True

    def _writable(self) -> None:
        backlog = self._backlog
        while backlog:
            data, addr = backlog[0]
            try:
                self.sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("UDP send from %s:%d to %s:%d failed: %s", *self.local, *addr, e)
            backlog.popleft()
        self.loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        fd = self.sock.fileno()
        self.loop.remove_reader(fd)
        if self._backlog:
            self.loop.remove_writer(fd)
            self._backlog.clear()
        self.sock.close()
