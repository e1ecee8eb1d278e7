"""The control socket (STYLE "Daemon conventions"): framed JSON, one request per connection,
a timeout, bounded requests, SO_PEERCRED checked, one-line errors for the operator."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from clearip.ctlsock import (
    MAX_REQUEST,
    ControlError,
    ControlServer,
    Handler,
    OpError,
    decode_frame_header,
    encode_frame,
    peer_allowed,
    request,
)


async def _ping(args: dict[str, Any]) -> Any:
    return {"pong": True, "args": args}


async def _refuse(args: dict[str, Any]) -> Any:
    raise OpError("config error: relay.workers: must be an integer,\n got true")


async def _crash(args: dict[str, Any]) -> Any:
    raise RuntimeError("boom")


async def _slow(args: dict[str, Any]) -> Any:
    await asyncio.sleep(10)


HANDLERS: dict[str, Handler] = {"ping": _ping, "refuse": _refuse, "crash": _crash, "slow": _slow}


def serve(
    path: Path,
    scenario: Callable[[ControlServer], Awaitable[None]],
    **options: Any,
) -> None:
    """Run a server at `path` while `scenario` runs; clients run in threads (they block)."""

    async def main() -> None:
        server = ControlServer(str(path), HANDLERS, **options)
        await server.start()
        try:
            await scenario(server)
        finally:
            await server.close()

    asyncio.run(main())


def raw_exchange(path: Path, data: bytes, *, shut_write: bool = False) -> bytes:
    """Send raw bytes, return the raw reply (until EOF)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "control.sock"


def test_frame_is_length_then_json() -> None:
    frame = encode_frame({"op": "ping", "args": {}})
    body = b'{"op":"ping","args":{}}'
    assert frame == struct.pack(">I", len(body)) + body
    assert decode_frame_header(frame[:4]) == len(body)


def test_request_round_trip_and_exact_reply_bytes(sock_path: Path) -> None:
    async def scenario(server: ControlServer) -> None:
        result = await asyncio.to_thread(request, str(sock_path), "ping", note="x")
        assert result == {"pong": True, "args": {"note": "x"}}
        reply = await asyncio.to_thread(
            raw_exchange, sock_path, encode_frame({"op": "ping", "args": {}})
        )
        body = b'{"ok":true,"result":{"pong":true,"args":{}}}'
        assert reply == struct.pack(">I", len(body)) + body  # one reply, then the server closes

    serve(sock_path, scenario)


def test_socket_permissions_and_removal(sock_path: Path) -> None:
    async def scenario(server: ControlServer) -> None:
        assert stat.S_IMODE(os.stat(sock_path.parent).st_mode) == 0o750
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o660
        assert stat.S_ISSOCK(os.stat(sock_path).st_mode)

    serve(sock_path, scenario)
    assert not sock_path.exists()


def test_oversize_request_is_refused_unread(sock_path: Path) -> None:
    async def scenario(server: ControlServer) -> None:
        # Only the header: the server must answer without waiting for the announced body.
        reply = await asyncio.to_thread(raw_exchange, sock_path, struct.pack(">I", MAX_REQUEST + 1))
        assert b"request too large: 65537 bytes (limit 65536)" in reply
        with pytest.raises(ControlError, match="request too large"):
            await asyncio.to_thread(request, str(sock_path), "ping", blob="x" * MAX_REQUEST)

    serve(sock_path, scenario)


def test_incomplete_request_times_out(sock_path: Path) -> None:
    async def scenario(server: ControlServer) -> None:
        reply = await asyncio.to_thread(raw_exchange, sock_path, b"\x00\x00")
        assert b"no complete request within 0.2 s" in reply

    serve(sock_path, scenario, timeout=0.2)


def test_client_timeout_is_one_line(sock_path: Path) -> None:
    async def scenario(server: ControlServer) -> None:
        with pytest.raises(ControlError) as info:
            await asyncio.to_thread(request, str(sock_path), "slow", timeout=0.2)
        assert str(info.value) == f"no answer from the proxy within 0.2 s on {sock_path}"

    serve(sock_path, scenario)


def test_errors_come_back_as_one_line(sock_path: Path) -> None:
    async def scenario(server: ControlServer) -> None:
        async def error_of(op: str) -> str:
            with pytest.raises(ControlError) as info:
                await asyncio.to_thread(request, str(sock_path), op)
            return str(info.value)

        assert await error_of("nope") == "unknown op 'nope' (known: crash, ping, refuse, slow)"
        assert await error_of("refuse") == (
            "config error: relay.workers: must be an integer, got true"
        )
        assert await error_of("crash") == "internal error in crash: boom"

    serve(sock_path, scenario)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", b"bad request: not JSON"),
        (b"[1, 2]", b"bad request: expected"),
        (b'{"op": 3}', b"bad request: expected"),
        (b'{"op": "ping", "args": [1]}', b"'args' must be an object"),
    ],
)
def test_bad_requests(sock_path: Path, body: bytes, error: bytes) -> None:
    async def scenario(server: ControlServer) -> None:
        reply = await asyncio.to_thread(
            raw_exchange, sock_path, struct.pack(">I", len(body)) + body
        )
        assert error in reply
        assert b'"ok":false' in reply

    serve(sock_path, scenario)


def test_peer_allowed() -> None:
    assert peer_allowed(0, 1000)  # root
    assert peer_allowed(1000, 1000)  # the proxy's own user
    assert not peer_allowed(1001, 1000)
    assert peer_allowed(0, 0)
    assert not peer_allowed(65534, 0)


def test_refused_peer_gets_permission_denied(sock_path: Path) -> None:
    seen: list[int] = []

    def deny(uid: int) -> bool:
        seen.append(uid)
        return False

    async def scenario(server: ControlServer) -> None:
        with pytest.raises(ControlError, match=r"^permission denied$"):
            await asyncio.to_thread(request, str(sock_path), "ping")

    serve(sock_path, scenario, allow_uid=deny)
    assert seen == [os.getuid()]  # the uid came from SO_PEERCRED


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
def test_other_user_is_refused_by_peercred() -> None:
    client = (
        "import socket, struct, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        'body = b\'{"op":"ping","args":{}}\'\n'
        "try:\n"
        "    s.sendall(struct.pack('>I', len(body)) + body)\n"
        "except BrokenPipeError:\n"
        "    pass  # refused before reading: the answer is already waiting\n"
        "sys.stdout.buffer.write(s.recv(4096))\n"
    )

    # A directory "nobody" can reach (pytest's tmp_path is private to root).
    base = Path(tempfile.mkdtemp(prefix="clearip-ctl-"))
    os.chmod(base, 0o755)
    sock_path = base / "run" / "control.sock"

    async def scenario(server: ControlServer) -> None:
        # Open the file-system fence so only SO_PEERCRED stands in the way.
        os.chmod(sock_path.parent, 0o755)
        os.chmod(sock_path, 0o666)
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-I", "-S", "-c", client, str(sock_path)],
            user=65534,
            capture_output=True,
            timeout=10,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.endswith(b'{"ok":false,"error":"permission denied"}')

    try:
        serve(sock_path, scenario)
    finally:
        shutil.rmtree(base)


def test_not_running_messages(tmp_path: Path) -> None:
    missing = tmp_path / "control.sock"
    with pytest.raises(ControlError) as info:
        request(str(missing), "status")
    assert str(info.value) == (
        f"proxy not running: no control socket at {missing} (start it with `clearipctl run`)"
    )
    # A socket file nobody listens on: left by a proxy that was killed.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(missing))
    stale.close()
    with pytest.raises(ControlError, match=r"^proxy not running: nothing listens on"):
        request(str(missing), "status")


def test_stale_socket_is_replaced_and_a_live_one_is_not(sock_path: Path) -> None:
    sock_path.parent.mkdir(mode=0o750)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_path))
    stale.close()

    async def scenario(server: ControlServer) -> None:
        assert await asyncio.to_thread(request, str(sock_path), "ping")
        second = ControlServer(str(sock_path), HANDLERS)
        with pytest.raises(ControlError, match="another proxy is already running"):
            await second.start()
        await second.close()  # must not remove the first server's socket
        assert sock_path.exists()

    serve(sock_path, scenario)


def test_refuses_a_path_that_is_not_a_socket(sock_path: Path) -> None:
    sock_path.parent.mkdir()
    sock_path.write_text("not a socket")

    async def main() -> None:
        with pytest.raises(ControlError, match="exists and is not a socket"):
            await ControlServer(str(sock_path), HANDLERS).start()

    asyncio.run(main())
    assert sock_path.read_text() == "not a socket"
