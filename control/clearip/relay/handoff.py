"""Passing a message to the worker that owns its call (datagrams between relay workers).

Every worker binds a Unix datagram socket `<index>.sock` in a directory the supervisor made
for this run, mode 0700: only the proxy's own user can send there, so nobody else can hand a
worker a message "from" a trusted switch. (The abstract socket names of before had no
permissions at all: any local user could inject SIP as a trusted source, or bind a name first
and read the hand-offs.) A worker that reads a message belonging to another sends it there
with the flow it came on and when it arrived (the kernel's receive time): the owner judges a
new call by how long it has really waited (relay/overload.py), queues here included.
A Unix datagram queue is short (net.unix.max_dgram_qlen, often 10 datagrams), so the messages
for one owner are sent in batches: all those read in one pass of the event loop go as one
datagram (frames of a 4-byte length and a packet, up to BATCH_BYTES). One message per datagram
capped the hand-off at ten messages per pass of a busy reader's loop: past its knee the owner
idled while its INVITEs waited in the reader (issue 12). A burst that still finds the owner's
queue full waits in a local queue until it drains: handling the message locally instead would
split a call across workers, and peers that answer to the address a call started from would
then answer the wrong worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable

from clearip.relay.events import Flow

log = logging.getLogger("clearip.handoff")

# Batches one worker may hold for a slow peer before it handles their messages itself.
MAX_PENDING = 2000
BATCH_BYTES = 60000
SEND_BUFFER = 2 * 1024 * 1024
# A worker that died is restarted within about a second: its messages wait this long for it,
# retried every RETRY, before this worker takes them over.
AWAY_WAIT = 3.0
RETRY = 0.05
MAX_PACKET = BATCH_BYTES + 70000  # a batch may end with a whole SIP message (65535) and its flow
_LEN = struct.Struct("!I")


def socket_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"{index}.sock")


def encode(data: bytes, flow: Flow, arrived: float) -> bytes:
    """`arrived`: wall-clock time the message reached this host (time.time())."""
    (rip, rport), (lip, lport) = flow.remote, flow.local
    return f"{flow.transport}\0{rip}\0{rport}\0{lip}\0{lport}\0{arrived:.6f}\0".encode() + data


def decode(packet: bytes) -> tuple[bytes, Flow, float]:
    transport, rip, rport, lip, lport, arrived, data = packet.split(b"\0", 6)
    flow = Flow(transport.decode(), (rip.decode(), int(rport)), (lip.decode(), int(lport)))
    return data, flow, float(arrived)


def batches(packets: list[bytes]) -> list[bytes]:
    """Frame `packets` into datagrams of at most BATCH_BYTES (one bigger packet goes alone)."""
    out: list[bytes] = []
    parts: list[bytes] = []
    size = 0
    for packet in packets:
        frame_size = _LEN.size + len(packet)
        if parts and size + frame_size > BATCH_BYTES:
            out.append(b"".join(parts))
            parts, size = [], 0
        parts.append(_LEN.pack(len(packet)))
        parts.append(packet)
        size += frame_size
    if parts:
        out.append(b"".join(parts))
    return out


def unbatch(datagram: bytes) -> list[bytes]:
    """The packets of one datagram; ValueError if its framing is broken."""
    out = []
    at = 0
    while at < len(datagram):
        if at + _LEN.size > len(datagram):
            raise ValueError("truncated frame header")
        (n,) = _LEN.unpack_from(datagram, at)
        at += _LEN.size
        if at + n > len(datagram):
            raise ValueError("truncated frame")
        out.append(datagram[at : at + n])
        at += n
    return out


class Handoff:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        directory: str,
        index: int,
        deliver: Callable[[bytes, Flow, float], None],
    ) -> None:
        self.loop = loop
        self.directory = directory
        self.index = index
        self.deliver = deliver  # handles a message in this worker: (data, flow, seconds waited)
        self.peers: dict[int, socket.socket] = {}
        self.pending: dict[int, deque[bytes]] = {}  # batches the owner's queue had no room for
        self._outgoing: dict[int, list[bytes]] = {}  # packets of this pass, sent at its end
        self._closed = False
        self._retries: dict[int, asyncio.TimerHandle] = {}  # owners away, being waited for
        self.sent = 0  # messages handed to another worker (few when the kernel steers calls)
        self.overflow = 0  # handled locally because a peer was gone or far behind
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = socket_path(directory, index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # this worker's previous life
        self.sock.bind(path)
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        self._closed = True
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for handle in self._retries.values():
            handle.cancel()
        for owner in list(self.peers):
            self._drop_socket(owner)

    def send(self, owner: int, data: bytes, flow: Flow, arrived: float) -> None:
        """Queue a message for `owner`; everything queued in this pass of the loop goes at its
        end, in one datagram per owner (call_soon runs after the callbacks already due)."""
        self.sent += 1
        outgoing = self._outgoing
        if not outgoing:
            self.loop.call_soon(self._send_batches)
        outgoing.setdefault(owner, []).append(encode(data, flow, arrived))

    def _send_batches(self) -> None:
        outgoing, self._outgoing = self._outgoing, {}
        if self._closed:
            return
        for owner, packets in outgoing.items():
            for batch in batches(packets):
                self._send_batch(owner, batch)

    def _send_batch(self, owner: int, batch: bytes) -> None:
        queue = self.pending.get(owner)
        if queue:  # keep the order: behind what is already waiting
            if len(queue) >= MAX_PENDING:
                self._local_batch(batch)
            else:
                queue.append(batch)
            return
        peer = self._peer(owner)
        if peer is None:
            self._away(owner, deque([batch]))
            return
        try:
            peer.send(batch)
        except BlockingIOError:
            self.pending[owner] = deque([batch])
            self.loop.add_writer(peer.fileno(), self._writable, owner)
        except OSError:
            self._away(owner, deque([batch]))

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
            for batch in self.pending.pop(owner, ()):  # it is not coming back: ours now
                self._local_batch(batch)
        else:
            self._retries[owner] = self.loop.call_later(RETRY, self._retry, owner, deadline)

    def _peer(self, owner: int) -> socket.socket | None:
        peer = self.peers.get(owner)
        if peer is None:
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            peer.setblocking(False)
            with contextlib.suppress(OSError):  # room for the owner's queue of batches
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
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

    def _local_batch(self, batch: bytes) -> None:
        for packet in unbatch(batch):
            data, flow, arrived = decode(packet)
            self.overflow += 1
            self.deliver(data, flow, max(0.0, time.time() - arrived))

    def _readable(self) -> None:
        # a batch or two per wake-up (up to ~120 messages): the sockets and timers take turns
        for _ in range(2):
            try:
                datagram = self.sock.recv(MAX_PACKET)
            except BlockingIOError:
                return
            try:
                messages = [decode(packet) for packet in unbatch(datagram)]
            except ValueError:
                log.warning("malformed hand-off batch dropped")
                continue
            for data, flow, arrived in messages:
                self.deliver(data, flow, max(0.0, time.time() - arrived))
