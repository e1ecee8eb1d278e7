"""The link between the supervisor and each relay worker process: both ends of one socketpair.

Wire format: one JSON object per line (UTF-8, no embedded newlines: `json.dumps` never emits
one). The supervisor sends requests `{"id": n, "op": ..., ...}`; the worker answers each with
`{"id": n, "ok": true, "result": ...}` or `{"id": n, "ok": false, "error": "..."}`, and may send
unsolicited events `{"event": "ready"}` at any time. Ops:

- `stats`    -> the worker's counters, see `WorkerHandler.stats`
- `reload`   `{"config": Config.to_dict()}`: apply this configuration
- `trusted`  `{"cidrs": ["192.0.2.0/24", ...]}`: the complete trusted list, replacing the old one
- `shutdown` `{"grace": seconds}`: stop taking new calls, finish those being set up, exit

The worker side is `WorkerLink` (works under uvloop: plain asyncio streams); the supervisor side
is `WorkerChannel`. JSON, never pickle: a worker is a separate program and may be restarted from
a newer version of the code than the supervisor's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from clearip.config import Config, ConfigError, parse_config

__all__ = [
    "LINE_LIMIT",
    "WorkerChannel",
    "WorkerError",
    "WorkerHandler",
    "WorkerLink",
    "config_from_dict",
    "encode_message",
]

log = logging.getLogger(__name__)

# A stats reply carries one entry per source (up to fastpath.max_sources = 65536 by default,
# ~100 bytes each): far above asyncio's 64 KiB default line limit.
LINE_LIMIT = 64 * 1024 * 1024

# How long a worker whose supervisor vanished may take to wind down before the link gives up.
ORPHAN_SHUTDOWN_TIMEOUT = 10.0


class WorkerError(Exception):
    """A request to a worker failed: an error reply, no reply in time, or the link is gone."""


def encode_message(message: Mapping[str, Any]) -> bytes:
    # allow_nan=False: NaN/Infinity are not JSON and would break the peer's parser.
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def config_from_dict(data: object) -> Config:
    """`Config.to_dict()` back into a checked Config, through the same parser as a file.

    The dict is rendered as TOML (a JSON scalar or array of scalars is valid TOML) so every
    value is validated exactly as `load_config` would; raises ConfigError naming the key.
    """
    if not isinstance(data, dict):
        raise ConfigError("<reload>", "the config must be an object of sections")
    lines: list[str] = []
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(str(section), "must be a table")
        lines.append(f"[{json.dumps(str(section))}]")
        for key, value in table.items():
            try:
                rendered = json.dumps(value, ensure_ascii=False, allow_nan=False)
            except ValueError as e:
                raise ConfigError(f"{section}.{key}", str(e)) from None
            lines.append(f"{json.dumps(str(key))} = {rendered}")
    return parse_config("\n".join(lines) + "\n", "<reload>")


async def _read_messages(
    reader: asyncio.StreamReader, on_message: Callable[[dict[str, Any]], None], peer: str
) -> None:
    """Feed each JSON object read from `reader` to `on_message` until EOF or a broken line."""
    while True:
        try:
            line = await reader.readline()
        except (ValueError, asyncio.LimitOverrunError):
            log.error("link to %s: line longer than %d bytes; closing", peer, LINE_LIMIT)
            return
        except ConnectionError:
            return
        if not line.endswith(b"\n"):  # EOF (possibly after a partial line: the peer died)
            return
        try:
            message = json.loads(line)
        except ValueError:
            log.error("link to %s: not JSON, ignored: %.200r", peer, line)
            continue
        if not isinstance(message, dict):
            log.error("link to %s: not a JSON object, ignored: %.200r", peer, line)
            continue
        on_message(message)


# ---------------------------------------------------------------------------------------------
# Worker side


class WorkerHandler(Protocol):
    """What a relay worker implements for the supervisor. Exceptions become error replies."""

    def stats(self) -> dict[str, Any]:
        """`{"counters": {name: int}, "sources": {ip: {"messages_in": int, "invites": int}},
        "listeners": [{"transport", "address"}],
        "upstream": {"state", "transport", "tls_version", "rtt_ms"}, "latency": {name: ms}}`.
        Counter names are those of SPEC §6 (`messages_in`, `invites`, `clearip_302`, ...);
        extra ones are summed and shown too."""
        ...

    async def reload(self, config: Config) -> None:
        """Apply a new configuration without dropping calls in progress."""
        ...

    def set_trusted(self, cidrs: list[str]) -> None:
        """Replace the relay's own trusted list (its second line behind the fast path)."""
        ...

    def add_tap(self, path: str, transports: list[str]) -> None:
        """Copy every message on these transports to the capture's Unix datagram socket."""
        ...

    def remove_tap(self, path: str) -> None:
        """Stop copying to that socket (unknown paths are fine)."""
        ...

    async def shutdown(self, grace: float) -> None:
        """Stop taking new calls, let calls being set up finish for at most `grace` seconds,
        close the listeners; return when done. The worker process exits after the link's
        `wait_closed()` returns."""
        ...


class WorkerLink:
    """The worker's end: answers the supervisor's requests by calling `handler`.

    Usage in the worker's main coroutine:

        link = WorkerLink(args.ctl_fd, relay)
        await link.start()
        await relay.start_listeners()
        link.send_event({"event": "ready"})
        await link.wait_closed()     # after a `shutdown` op, or when the supervisor is gone

    Workers never outlive the supervisor: when its end closes, the link calls
    `handler.shutdown(0)` and then closes itself.
    """

    def __init__(self, fd: int, handler: WorkerHandler) -> None:
        self._fd = fd
        self._handler = handler
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Task[None]] = set()
        self._shutting_down = False
        self._closed = asyncio.Event()
        self._ops: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "stats": self._op_stats,
            "reload": self._op_reload,
            "trusted": self._op_trusted,
            "tap": self._op_tap,
            "untap": self._op_untap,
            "shutdown": self._op_shutdown,
        }

    async def start(self) -> None:
        sock = socket.socket(fileno=self._fd)  # family and type are read from the fd
        reader, self._writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        self._reader_task = asyncio.create_task(self._run(reader), name="workerlink-reader")

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def send_event(self, event: Mapping[str, Any]) -> None:
        """Send an unsolicited message such as `{"event": "ready"}` (once the listeners are up)."""
        if "event" not in event:
            raise ValueError("an event needs an 'event' key")
        self._write(event)

    def _write(self, message: Mapping[str, Any]) -> None:
        # Small messages; the socketpair's buffer absorbs them, so no drain() and no await:
        # send_event can then be called from synchronous relay code.
        if self._writer is None or self._writer.is_closing():
            return
        self._writer.write(encode_message(message))

    async def _run(self, reader: asyncio.StreamReader) -> None:
        await _read_messages(reader, self._on_message, "supervisor")
        if not self._shutting_down:
            # The supervisor died (or was killed): stop now rather than serve on unsupervised.
            log.warning("supervisor link closed; shutting down")
            self._shutting_down = True
            try:
                await asyncio.wait_for(self._handler.shutdown(0), ORPHAN_SHUTDOWN_TIMEOUT)
            except Exception:
                log.exception("shutdown after losing the supervisor failed")
        else:
            # A shutdown op is running: let it finish (it closes the link when done).
            await asyncio.gather(*self._requests, return_exceptions=True)
        await self._close()

    def _on_message(self, message: dict[str, Any]) -> None:
        # One task per request: a slow reload must not hold up a stats request behind it.
        task = asyncio.create_task(self._serve(message))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _serve(self, message: dict[str, Any]) -> None:
        rid = message.get("id")
        op = message.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            self._write({"id": rid, "ok": False, "error": f"unknown op {op!r}"})
            return
        try:
            result = await handler(message)
        except ConfigError as e:
            self._write({"id": rid, "ok": False, "error": f"config error: {e}"})
        except Exception as e:
            log.exception("op %s failed", op)
            self._write({"id": rid, "ok": False, "error": f"{type(e).__name__}: {e}"})
        else:
            try:
                self._write({"id": rid, "ok": True, "result": result})
            except (TypeError, ValueError) as e:
                log.error("op %s: result is not JSON: %s", op, e)
                self._write({"id": rid, "ok": False, "error": f"result is not JSON: {e}"})
        if op == "shutdown":
            await self._close()

    async def _op_stats(self, message: dict[str, Any]) -> Any:
        return self._handler.stats()

    async def _op_reload(self, message: dict[str, Any]) -> Any:
        await self._handler.reload(config_from_dict(message.get("config")))
        return None

    async def _op_trusted(self, message: dict[str, Any]) -> Any:
        cidrs = message.get("cidrs")
        if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
            raise ValueError("'cidrs' must be a list of strings")
        self._handler.set_trusted(cidrs)
        return None

    async def _op_tap(self, message: dict[str, Any]) -> Any:
        path, transports = message.get("path"), message.get("transports")
        if not isinstance(path, str) or not path:
            raise ValueError("'path' must be a socket path")
        if not isinstance(transports, list) or not all(isinstance(t, str) for t in transports):
            raise ValueError("'transports' must be a list of strings")
        self._handler.add_tap(path, transports)
        return None

    async def _op_untap(self, message: dict[str, Any]) -> Any:
        path = message.get("path")
        if not isinstance(path, str):
            raise ValueError("'path' must be a socket path")
        self._handler.remove_tap(path)
        return None

    async def _op_shutdown(self, message: dict[str, Any]) -> Any:
        grace = message.get("grace", 0.0)
        if isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0:
            raise ValueError("'grace' must be a number of seconds >= 0")
        self._shutting_down = True
        await self._handler.shutdown(float(grace))
        return None

    async def _close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        current = asyncio.current_task()
        for task in (*self._requests, self._reader_task):
            if task is not None and task is not current and not task.done():
                task.cancel()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()


# ---------------------------------------------------------------------------------------------
# Supervisor side


class WorkerChannel:
    """The supervisor's end of one worker's link: `call()` an op, get events via `on_event`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_event: Callable[[dict[str, Any]], None],
        name: str,
    ) -> None:
        self._writer = writer
        self._on_event = on_event
        self._name = name
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._closed = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None
        self._reader_task = asyncio.create_task(self._run(reader), name=f"channel-{name}")

    @classmethod
    async def open(
        cls, sock: socket.socket, on_event: Callable[[dict[str, Any]], None], name: str
    ) -> WorkerChannel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        return cls(reader, writer, on_event, name)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def call(self, op: str, *, timeout: float, **args: Any) -> Any:
        """Send `op` and return the worker's result; WorkerError on failure or timeout."""
        if self._closed.is_set():
            raise WorkerError(f"{self._name}: link closed")
        rid = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            self._writer.write(encode_message({"id": rid, "op": op, **args}))
            await self._writer.drain()
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise WorkerError(f"{self._name}: no answer to {op!r} within {timeout:g} s") from None
        except ConnectionError as e:
            raise WorkerError(f"{self._name}: link closed ({e})") from None
        finally:
            self._pending.pop(rid, None)
        if reply.get("ok") is True:
            return reply.get("result")
        raise WorkerError(f"{self._name}: {reply.get('error') or 'failed without a reason'}")

    async def _run(self, reader: asyncio.StreamReader) -> None:
        try:
            await _read_messages(reader, self._on_message, self._name)
        finally:
            self._closed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(WorkerError(f"{self._name}: link closed"))

    def _on_message(self, message: dict[str, Any]) -> None:
        rid = message.get("id")
        if isinstance(rid, int) and "ok" in message:
            future = self._pending.get(rid)
            if future is not None and not future.done():
                future.set_result(message)
            return  # a late reply to a request that timed out: nobody waits any more
        if isinstance(message.get("event"), str):
            self._on_event(message)
            return
        log.error("link to %s: neither a reply nor an event, ignored: %.200r", self._name, message)

    async def close(self) -> None:
        """Close the link and end its reader. Idempotent; the watcher and `_stop` may both close,
        and the watcher may be cancelled meanwhile: every caller awaits one shielded closing task,
        because a cancelled `wait_closed()` cancels the stream's shared close future and every
        later `wait_closed()` would raise CancelledError in a caller nobody cancelled."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(), name=f"close-{self._name}")
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        if not self._reader_task.done():
            self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader_task
