"""The worker's own UDP socket (relay/udp.py) on loopback: each datagram comes with how long it
waited in the kernel's queue, the kernel's drops on a full buffer are counted, and sends the
kernel cannot take now wait in order instead of being lost."""

from __future__ import annotations

import asyncio
import socket
import time

from clearip.relay.events import Address
from clearip.relay.udp import UdpEndpoint


def _bound(rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", 0))
    return sock


def test_each_datagram_says_how_long_it_waited_in_the_kernel() -> None:
    async def run() -> list[tuple[bytes, Address, float]]:
        loop = asyncio.get_running_loop()
        got: list[tuple[bytes, Address, float]] = []
        drops: list[tuple[str, int]] = []
        sock = _bound()
        peer = _bound()
        try:
            ep = UdpEndpoint(
                loop, sock, sock.getsockname(), True,
                lambda _ep, data, src, waited: got.append((data, src, waited)),
                lambda reason, n: drops.append((reason, n)),
            )  # fmt: skip
            # the kernel turns receive timestamps on a moment later (a deferred static key) when
            # no other socket has them: a proxy's sockets live long, a test's do not
            await asyncio.sleep(0.1)
            peer.sendto(b"first", sock.getsockname())
            time.sleep(0.2)  # the loop is busy: the datagram waits in the socket's queue
            await asyncio.sleep(0.05)
            peer.sendto(b"second", sock.getsockname())
            await asyncio.sleep(0.05)
            ep.close()
            assert not drops
            return got
        finally:
            peer.close()

    got = asyncio.run(run())
    assert [g[0] for g in got] == [b"first", b"second"]
    assert 0.2 <= got[0][2] < 5  # waited through the busy loop
    assert got[1][2] < 0.05  # read as it came
    assert got[0][1][0] == "127.0.0.1"


def test_the_kernels_drops_on_a_full_buffer_are_counted() -> None:
    async def run() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        received: list[bytes] = []
        drops: list[tuple[str, int]] = []
        sock = _bound(rcvbuf=4096)  # the kernel doubles it: room for a handful of datagrams
        peer = _bound()
        try:
            ep = UdpEndpoint(
                loop, sock, sock.getsockname(), True,
                lambda _ep, data, src, waited: received.append(data),
                lambda reason, n: drops.append((reason, n)),
            )  # fmt: skip
            for _ in range(200):  # no await: nothing is read meanwhile
                peer.sendto(b"x" * 200, sock.getsockname())
            await asyncio.sleep(0.1)
            peer.sendto(b"last", sock.getsockname())  # its cmsg carries the drop count
            await asyncio.sleep(0.1)
            ep.close()
            assert {reason for reason, _ in drops} == {"udp_queue_full"}
            return len(received), sum(n for _, n in drops)
        finally:
            peer.close()

    received, dropped = asyncio.run(run())
    assert dropped > 0 and received + dropped == 201


def test_sends_the_kernel_cannot_take_now_go_out_later_in_order() -> None:
    async def run() -> list[bytes]:
        loop = asyncio.get_running_loop()
        sock = _bound()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sink = _bound(rcvbuf=4 * 1024 * 1024)
        sink.setblocking(False)
        out: list[bytes] = []
        drops: list[tuple[str, int]] = []
        ep = UdpEndpoint(loop, sock, sock.getsockname(), False, lambda *a: None,
                         lambda reason, n: drops.append((reason, n)))  # fmt: skip
        try:
            sent = [f"{i:05d}".encode() * 200 for i in range(300)]  # 1 KB each
            assert all(ep.sendto(data, sink.getsockname()) for data in sent)
            for _ in range(100):
                await asyncio.sleep(0.01)
                while True:
                    try:
                        out.append(sink.recv(65536))
                    except BlockingIOError:
                        break
                if len(out) == len(sent):
                    break
            assert not drops
            assert out == sent
            return out
        finally:
            ep.close()
            sink.close()

    asyncio.run(run())


def test_closed_endpoint_refuses_to_send() -> None:
    async def run() -> bool:
        loop = asyncio.get_running_loop()
        sock = _bound()
        ep = UdpEndpoint(loop, sock, sock.getsockname(), False, lambda *a: None, lambda *a: None)
        ep.close()
        return ep.sendto(b"x", ("127.0.0.1", 9))

    assert asyncio.run(run()) is False
