"""Passing a message to the worker that owns its call (datagrams between relay workers).

Every worker binds a Unix datagram socket `<index>.sock` in a directory the supervisor made
for this run, mode 0700: only the proxy's own user can send there, so nobody else can hand a
worker a message "from" a trusted switch. (The abstract socket names of before had no
permissions at all: any local user could inject SIP as a trusted source, or bind a name first
and read the hand-offs.) A worker that reads a message belonging to another sends it there
with the flow it came on.
A Unix datagram queue is short (net.unix.max_dgram_qlen, often 10), so a burst must wait in a
local queue until the owner drains its socket: handling the message locally instead would split
a call across workers, and peers that answer to the address a call started from would then
answer the wrong worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from collections.abc import Callable

from clearip.relay.events import Flow

log = logging.getLogger("clearip.handoff")

# Messages one worker may hold for a slow peer before it handles them itself.
MAX_PENDING = 20000
# A worker that died is restarted within about a second: its messages wait this long for it,
# retried every RETRY, before this worker takes them over.
AWAY_WAIT = 3.0
RETRY = 0.05
MAX_PACKET = 70000  # a SIP message (65535) plus the flow header


def socket_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"{index}.sock")


def encode(data: bytes, flow: Flow) -> bytes:
    (rip, rport), (lip, lport) = flow.remote, flow.local
    return f"{flow.transport}\0{rip}\0{rport}\0{lip}\0{lport}\0".encode() + data


def decode(packet: bytes) -> tuple[bytes, Flow]:
    transport, rip, rport, lip, lport, data = packet.split(b"\0", 5)
    flow = Flow(transport.decode(), (rip.decode(), int(rport)), (lip.decode(), int(lport)))
    return data, flow


class Handoff:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        directory: str,
        index: int,
        deliver: Callable[[bytes, Flow], None],
    ) -> None:
        self.loop = loop
        self.directory = directory
        self.index = index
        self.deliver = deliver  # handles a message in this worker
        self.peers: dict[int, socket.socket] = {}
        self.pending: dict[int, deque[bytes]] = {}
        self._retries: dict[int, asyncio.TimerHandle] = {}  # owners away, being waited for
        self.overflow = 0  # handled locally because a peer was gone or far behind
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = socket_path(directory, index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # this worker's previous life
        self.sock.bind(path)
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for handle in self._retries.values():
            handle.cancel()
        for owner in list(self.peers):
            self._drop_socket(owner)

    def send(self, owner: int, data: bytes, flow: Flow) -> None:
        packet = encode(data, flow)
        queue = self.pending.get(owner)
        if queue:  # keep the order: behind what is already waiting
            if len(queue) >= MAX_PENDING:
                self._local(data, flow)
            else:
                queue.append(packet)
            return
        peer = self._peer(owner)
        if peer is None:
            self._away(owner, deque([packet]))
            return
        try:
            peer.send(packet)
        except BlockingIOError:
            self.pending[owner] = deque([packet])
            self.loop.add_writer(peer.fileno(), self._writable, owner)
        except OSError:
            self._away(owner, deque([packet]))

    def _away(self, owner: int, queue: deque[bytes]) -> None:
        """The owner is not there (it died and is being restarted): hold its messages for up to
        AWAY_WAIT rather than handle them here, which would put its calls in this worker's
        tables and leave them there when the next message of the call reaches the owner."""
        self._drop_socket(owner)
        self.pending[owner] = queue
        if owner not in self._retries:
            deadline = self.loop.time() + AWAY_WAIT
            self._retries[owner] = self.loop.call_later(RETRY, self._retry, owner, deadline)

    def _retry(self, owner: int, deadline: float) -> None:
        del self._retries[owner]
        peer = self._peer(owner)
        if peer is not None:
            self.loop.add_writer(peer.fileno(), self._writable, owner)
        elif self.loop.time() >= deadline:
            for packet in self.pending.pop(owner, ()):  # it is not coming back: ours now
                self._local(*decode(packet))
        else:
            self._retries[owner] = self.loop.call_later(RETRY, self._retry, owner, deadline)

    def _peer(self, owner: int) -> socket.socket | None:
        peer = self.peers.get(owner)
        if peer is None:
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            peer.setblocking(False)
            try:
                # connected, so that poll() reports when the owner's queue has room
                peer.connect(socket_path(self.directory, owner))
            except OSError:
                peer.close()
                return None
            self.peers[owner] = peer
        return peer

    def _drop_socket(self, owner: int) -> None:
        peer = self.peers.pop(owner, None)
        if peer is not None:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_writer(peer.fileno())
            peer.close()

    def _writable(self, owner: int) -> None:
        peer = self.peers.get(owner)
        queue = self.pending.get(owner)
        if peer is None:
            return
        while queue:
            try:
                peer.send(queue[0])
            except BlockingIOError:
                return
            except OSError:
                self._away(owner, queue)  # the owner died meanwhile
                return
            queue.popleft()
        self.loop.remove_writer(peer.fileno())

    def _local(self, data: bytes, flow: Flow) -> None:
        self.overflow += 1
        self.deliver(data, flow)

    def _readable(self) -> None:
        for _ in range(256):
            try:
                packet = self.sock.recv(MAX_PACKET)
            except BlockingIOError:
                return
            try:
                data, flow = decode(packet)
            except ValueError:
                log.warning("malformed hand-off packet dropped")
                continue
            self.deliver(data, flow)
