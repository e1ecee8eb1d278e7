"""The worker's flush: what several messages make the core send to ClearIP goes in one write.

A real Worker (not started) over a real loopback TCP connection as its ClearIP link; the
kernel's own count of data segments sent (TCP_INFO) says how many writes reached it.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from clearip.config import parse_config
from clearip.relay import worker as worker_module
from clearip.relay.events import Flow, Target
from clearip.relay.streams import StreamConnection
from clearip.relay.upstream import UpstreamLink
from clearip.relay.worker import HOLD_MAX, Worker
from tests.core_rig import BASE_CONFIG, PROXY, SWITCH, invite

TCPI_DATA_SEGS_OUT = 156  # struct tcp_info: __u32 tcpi_data_segs_out


def data_segments_sent(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, TCPI_DATA_SEGS_OUT)[0])


async def linked_worker() -> tuple[Worker, StreamConnection, socket.socket, socket.socket]:
    loop = asyncio.get_running_loop()
    config = parse_config(BASE_CONFIG)
    worker = Worker(config, index=0, workers=1, config_path=None)
    worker.loop = loop
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    link = UpstreamLink(config.clearip, 65536, worker._on_link_message, lambda c: None,
                        lambda c: None)
    _, conn = await loop.create_connection(
        lambda: StreamConnection("tcp", link.on_message, lambda c: None, 65536),
        *server.getsockname(),
    )
    link.conns[conn.id] = conn
    worker.link = link
    peer, _ = server.accept()
    server.close()
    return worker, conn, peer, conn.transport.get_extra_info("socket")


def read_all(peer: socket.socket, size: int) -> bytes:
    peer.settimeout(2.0)
    got = b""
    while len(got) < size:
        got += peer.recv(65536)
    return got


async def sends_in_one_flush(count: int) -> tuple[int, bytes]:
    worker, conn, peer, sock = await linked_worker()
    try:
        await asyncio.sleep(0.05)
        before = data_segments_sent(sock)
        messages = [b"OPTIONS sip:ci %d\r\n\r\n" % i for i in range(count)]
        for data in messages:
            worker.core.send(data, Target("tcp", "127.0.0.1", 5060, conn=conn.id, upstream=True))
        worker._flush()
        got = read_all(peer, sum(map(len, messages)))
        return data_segments_sent(sock) - before, got
    finally:
        conn.abort()
        peer.close()


def test_messages_for_the_link_in_one_flush_are_one_write() -> None:
    segments, got = asyncio.run(sends_in_one_flush(5))
    assert got == b"".join(b"OPTIONS sip:ci %d\r\n\r\n" % i for i in range(5))  # in order
    assert segments == 1


async def invites_received_in_one_pass() -> tuple[int, int, int, int]:
    """HOLD_MAX + 2 INVITEs read in one pass of the loop: (segments to ClearIP right after the
    reads, after the loop's next turn, INVITEs ClearIP got, latency samples recorded)."""
    worker, conn, peer, sock = await linked_worker()
    loop = asyncio.get_running_loop()
    try:
        worker.core.link_up(conn.id, loop.time())
        await asyncio.sleep(0.05)
        before = data_segments_sent(sock)
        count = HOLD_MAX + 2
        for i in range(count):
            flow = Flow("udp", SWITCH, PROXY)
            worker._receive(invite(call_id=f"held-{i}@10.0.0.11", branch=f"z9hG4bK-h{i}"), flow)
        during = data_segments_sent(sock) - before
        await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        after = data_segments_sent(sock) - before
        peer.settimeout(0.5)
        got = b""
        while got.count(b"INVITE sip:") < count:
            got += peer.recv(65536)
        return during, after, got.count(b"INVITE sip:"), len(worker.counters.latency)
    finally:
        conn.abort()
        peer.close()


def test_what_a_pass_of_the_loop_read_is_flushed_after_it_and_at_most_hold_max_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_module, "HOLD_TIME", 60.0)  # the count bound alone
    during, after, invites, samples = asyncio.run(invites_received_in_one_pass())
    assert during == 1  # the first HOLD_MAX INVITEs to ClearIP, one write, while still reading
    assert after == 2  # the last two once the loop turned
    assert invites == HOLD_MAX + 2
    assert samples == HOLD_MAX + 2  # each message's read-to-flush time


def test_a_message_is_held_no_longer_than_hold_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """HOLD_TIME 0: each message waits for at most one more (the first of a pair is not held
    past the second's reading)."""
    monkeypatch.setattr(worker_module, "HOLD_TIME", 0.0)
    during, after, invites, samples = asyncio.run(invites_received_in_one_pass())
    assert during == after == (HOLD_MAX + 2) // 2
    assert invites == samples == HOLD_MAX + 2
