"""TCP/TLS connections that a peer cannot make hold the relay's memory or slots (issue 11).

On main: no write bound (a zero-window peer grew our buffer without end), close() never
aborted (that peer kept its socket and per-source slot for ever), one byte every 599 s kept a
connection alive, framing errors closed without a counter, and the per-source limit was per
worker (× workers, with no global cap at all).
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from clearip.relay import streams
from clearip.relay.conncount import ConnCounts, make_shared
from clearip.relay.streams import ConnectionTable, StreamConnection

INVITE_HEAD = b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/TCP a;branch=z9hG4bK1\r\n"


def conn_with(drops: list[str]) -> StreamConnection:
    conn = StreamConnection("tcp", lambda c, m: None, lambda c: None, 65535)
    conn.on_drop = drops.append
    return conn


def test_limits_hold_across_workers() -> None:
    fd = make_shared(2)
    w0, w1 = ConnCounts(fd, 2, 0), ConnCounts(fd, 2, 1)
    t0 = ConnectionTable(max_per_source=3, max_total=5, counts=w0)
    t1 = ConnectionTable(max_per_source=3, max_total=5, counts=w1)

    def accepted(table: ConnectionTable, ip: str) -> str | None:
        conn = conn_with([])
        conn.remote = (ip, 40000 + len(table.by_id))
        return table.admit(conn)

    # one source, spread over both workers as SO_REUSEPORT would: 3 in all, not 3 each
    assert [accepted(t0, "192.0.2.1"), accepted(t1, "192.0.2.1"), accepted(t0, "192.0.2.1")] == [
        None,
        None,
        None,
    ]
    assert accepted(t1, "192.0.2.1") == "max_tcp_per_source"
    assert accepted(t1, "192.0.2.2") is None
    assert accepted(t0, "192.0.2.3") is None
    assert accepted(t1, "192.0.2.4") == "max_tcp_connections"  # 5 over both workers
    # a connection that ends frees its slot for everyone
    t0.remove(next(iter(t0.by_id.values())))
    assert w1.total() == 4 and accepted(t1, "192.0.2.4") is None
    # a restarted worker starts its row from zero: its connections died with it
    assert ConnCounts(fd, 2, 0).total() == 3  # worker 1's three


def test_a_trickle_of_bytes_is_not_activity_and_a_stuck_message_is_aborted() -> None:
    async def main() -> None:
        drops: list[str] = []
        conn = conn_with(drops)
        loop = asyncio.get_running_loop()
        conn.last_activity = loop.time() - 500
        conn.data_received(INVITE_HEAD[:10])  # a byte now and then ...
        assert loop.time() - conn.last_activity > 400  # ... is not a message
        assert conn.stuck(loop.time())
        table = ConnectionTable(10, 10, ConnCounts(None, 1, 0))
        conn.remote = ("192.0.2.9", 5060)
        table.add(conn)
        aborted: list[bool] = []
        conn.abort = lambda: aborted.append(True)  # type: ignore[method-assign]
        assert table.close_idle(loop.time(), 600.0) == 1
        assert aborted == [True] and drops == ["tcp_stuck"]

    asyncio.run(main())


def test_framing_errors_are_counted() -> None:
    async def main() -> None:
        drops: list[str] = []
        conn = conn_with(drops)
        conn.abort = lambda: None  # type: ignore[method-assign]
        conn.data_received(b"INVITE sip:x@y SIP/2.0\r\nContent-Length: -5\r\n\r\n")
        assert drops == ["framing"]

    asyncio.run(main())


def test_a_peer_that_never_reads_is_aborted_not_buffered_for_ever() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, server.getsockname())
        peer, _ = server.accept()  # accepted, never read: a zero window
        drops: list[str] = []
        closed = loop.create_future()
        _, conn = await loop.create_connection(
            lambda: StreamConnection(
                "tcp", lambda c, m: None, lambda c: closed.set_result(True), 65535
            ),
            sock=sock,
        )
        conn.on_drop = drops.append
        chunk = b"x" * 65536
        written = 0
        while conn.write(chunk):
            written += len(chunk)
            assert written < 64 * streams.MAX_WRITE_BUFFER, "never aborted"
            await asyncio.sleep(0)
        await asyncio.wait_for(closed, 5)
        assert drops == ["tcp_write_overflow"]
        assert written <= streams.MAX_WRITE_BUFFER + 8 * 1024 * 1024  # kernel buffers aside
        peer.close()
        server.close()

    asyncio.run(main())


def test_a_close_the_peer_does_not_finish_becomes_an_abort(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "CLOSE_GRACE", 0.05)

    async def main() -> None:
        conn = conn_with([])

        class Stuck:
            closing = False
            aborted = False

            def is_closing(self) -> bool:
                return self.closing

            def close(self) -> None:
                self.closing = True  # ... and connection_lost never comes

            def abort(self) -> None:
                self.aborted = True

        transport = Stuck()
        conn.transport = transport  # type: ignore[assignment]
        conn.close()
        await asyncio.sleep(0.1)
        assert transport.aborted

    asyncio.run(main())
