"""The control socket: how `clearipctl` talks to the running proxy.

One request per connection, framed both ways as a 4-byte big-endian length then that many bytes
of UTF-8 JSON. Request `{"op": "status", "args": {...}}`; reply `{"ok": true, "result": ...}`
or `{"ok": false, "error": "one line"}`. JSON only, never pickle: a peer must not be able to
make the proxy run code by sending it bytes. The peer's uid is read with SO_PEERCRED and only
root or the proxy's own user is served; the 0750 directory and 0660 socket are the first fence.

The server takes a dispatch table `{op: async handler(args) -> result}`, so `allow`, `deny`,
`trusted` and `tap` are one entry each when they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

__all__ = [
    "MAX_REPLY",
    "MAX_REQUEST",
    "TIMEOUT",
    "ControlError",
    "ControlServer",
    "Handler",
    "OpError",
    "decode_frame_header",
    "encode_frame",
    "peer_allowed",
    "request",
]

log = logging.getLogger(__name__)

TIMEOUT = 5.0  # seconds to receive a whole request, and to send the reply
MAX_REQUEST = 64 * 1024  # requests are small: an op and a few arguments
# Replies carry status with one entry per source (fastpath.max_sources, 65536 by default).
MAX_REPLY = 64 * 1024 * 1024
# A backstop for a handler that hangs; handlers bound their own waits well below this.
HANDLER_TIMEOUT = 120.0
_HEADER = struct.Struct(">I")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlError(Exception):
    """The client could not get an answer, or the proxy answered with an error. One line."""


class NotRunning(ControlError):
    """Nobody serves the control socket: the proxy is stopped."""


class OpError(Exception):
    """Raised by an op handler: the request failed for a reason the operator should read."""


def encode_frame(message: Mapping[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    return _HEADER.pack(len(body)) + body


def decode_frame_header(header: bytes) -> int:
    return int(_HEADER.unpack(header)[0])


def peer_allowed(uid: int, own_uid: int) -> bool:
    """Root may always operate the proxy; otherwise only the user the proxy runs as."""
    return uid in (0, own_uid)


def _peer_uid(sock: Any) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# Server


class ControlServer:
    """Serves `handlers` on a Unix socket at `path`.

    `allow_uid` decides from the peer's uid (SO_PEERCRED); by default `peer_allowed` against
    this process's uid. Tests inject it to exercise the refusal.
    """

    def __init__(
        self,
        path: str,
        handlers: Mapping[str, Handler],
        *,
        timeout: float = TIMEOUT,
        max_request: int = MAX_REQUEST,
        allow_uid: Callable[[int], bool] | None = None,
    ) -> None:
        self.path = path
        self._handlers = handlers
        self._timeout = timeout
        self._max_request = max_request
        own_uid = os.getuid()
        self._allow_uid = allow_uid or (lambda uid: peer_allowed(uid, own_uid))
        self._server: asyncio.Server | None = None
        self._inode: tuple[int, int] | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Bind the socket; ControlError if another proxy already answers on it."""
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            try:
                os.makedirs(directory, mode=0o750)
                os.chmod(directory, 0o750)  # makedirs' mode is filtered by the umask
            except OSError as e:
                raise ControlError(
                    f"cannot create the control socket directory {directory}: {e.strerror or e}"
                ) from None
        await self._clear_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            # Between bind and chmod the socket has umask permissions; the 0750 directory
            # already keeps other users out in that moment.
            os.chmod(self.path, 0o660)
            st = os.stat(self.path)
            self._inode = (st.st_dev, st.st_ino)
            sock.listen(64)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        except OSError as e:
            sock.close()
            raise ControlError(
                f"cannot listen on the control socket {self.path}: {e.strerror or e}"
            ) from None

    async def _clear_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(
                f"{self.path} exists and is not a socket; remove it or fix control.socket"
            )
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path), 1.0)
        except (ConnectionRefusedError, FileNotFoundError, TimeoutError):
            # Left behind by a proxy that was killed: nobody listens, so it is safe to replace.
            log.info("removing stale control socket %s", self.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        writer.close()
        raise ControlError(
            f"another proxy is already running: its control socket {self.path} answers"
        )

    async def close(self) -> None:
        """Stop serving and remove the socket file, if it is still ours."""
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        if self._inode is not None:
            with contextlib.suppress(OSError):
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(self.path)
            self._inode = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            reply = await self._answer(reader, writer)
            if reply is not None:
                await self._send(writer, reply)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> dict[str, Any] | None:
        uid = _peer_uid(writer.get_extra_info("socket"))
        if uid is None or not self._allow_uid(uid):
            log.warning("control socket: refused a request from uid %s", uid)
            return {"ok": False, "error": "permission denied"}
        try:
            async with asyncio.timeout(self._timeout):
                size = decode_frame_header(await reader.readexactly(_HEADER.size))
                if size > self._max_request:
                    # Not read: a client that sends megabytes gets no buffer to fill.
                    return {
                        "ok": False,
                        "error": f"request too large: {size} bytes (limit {self._max_request})",
                    }
                body = await reader.readexactly(size)
        except TimeoutError:
            log.debug("control socket: no complete request within %g s", self._timeout)
            return {"ok": False, "error": f"no complete request within {self._timeout:g} s"}
        try:
            message = json.loads(body)
        except ValueError:
            return {"ok": False, "error": "bad request: not JSON"}
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            return {"ok": False, "error": 'bad request: expected {"op": ..., "args": {...}}'}
        args = message.get("args", {})
        if not isinstance(args, dict):
            return {"ok": False, "error": "bad request: 'args' must be an object"}
        op = message["op"]
        handler = self._handlers.get(op)
        if handler is None:
            known = ", ".join(sorted(self._handlers))
            return {"ok": False, "error": f"unknown op {op!r} (known: {known})"}
        try:
            result = await asyncio.wait_for(handler(args), HANDLER_TIMEOUT)
        except OpError as e:
            return {"ok": False, "error": _one_line(str(e))}
        except TimeoutError:
            log.error("control op %s took longer than %g s", op, HANDLER_TIMEOUT)
            return {"ok": False, "error": f"{op}: no result within {HANDLER_TIMEOUT:g} s"}
        except Exception as e:
            log.exception("control op %s failed", op)
            return {"ok": False, "error": _one_line(f"internal error in {op}: {e}")}
        return {"ok": True, "result": result}

    async def _send(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        try:
            frame = encode_frame(reply)
        except (TypeError, ValueError) as e:
            log.error("control socket: reply is not JSON: %s", e)
            frame = encode_frame({"ok": False, "error": f"internal error: reply is not JSON: {e}"})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout):
                writer.write(frame)
                await writer.drain()


# ---------------------------------------------------------------------------------------------
# Client (synchronous: clearipctl is a short-lived command, not an event loop)


def request(socket_path: str, op: str, *, timeout: float = TIMEOUT, **args: Any) -> Any:
    """Send one request and return its result; ControlError with a one-line reason otherwise."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
        except FileNotFoundError:
            raise NotRunning(
                f"proxy not running: no control socket at {socket_path} "
                "(start it with `clearipctl run`)"
            ) from None
        except ConnectionRefusedError:
            raise NotRunning(
                f"proxy not running: nothing listens on {socket_path} "
                "(start it with `clearipctl run`)"
            ) from None
        except PermissionError:
            raise ControlError(
                f"permission denied on {socket_path}: run as root or as the proxy's user"
            ) from None
        except OSError as e:
            raise ControlError(f"cannot connect to {socket_path}: {e.strerror or e}") from None
        try:
            # The server may answer (too large, permission denied) and close before reading
            # the whole request: the reply is still readable, so a failed send is not final.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(encode_frame({"op": op, "args": args}))
            size = decode_frame_header(_recv_exactly(sock, _HEADER.size, deadline))
            if size > MAX_REPLY:
                raise ControlError(f"bad reply from the proxy: {size} bytes (limit {MAX_REPLY})")
            body = _recv_exactly(sock, size, deadline)
        except TimeoutError:
            raise ControlError(
                f"no answer from the proxy within {timeout:g} s on {socket_path}"
            ) from None
        except OSError as e:
            if e.errno == errno.EPIPE or isinstance(e, ConnectionError):
                raise ControlError("the proxy closed the connection without answering") from None
            raise ControlError(f"control socket {socket_path}: {e.strerror or e}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(body)
    except ValueError:
        raise ControlError("bad reply from the proxy: not JSON") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ControlError("bad reply from the proxy: no 'ok' field")
    if not reply["ok"]:
        raise ControlError(_one_line(str(reply.get("error") or f"{op} failed")))
    return reply.get("result")


def _recv_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise ConnectionResetError
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
