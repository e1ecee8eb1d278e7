"""Copies of every SIP message a worker reads or sends, for `clearipctl capture --decrypted`
(socket sinks added and removed by the supervisor) and HEP3 export (`control.hep`). Empty, it
costs one truth test per message; a copy never costs the message itself."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

from clearip.config import Config
from clearip.hep import HepSink
from clearip.relay.events import Address
from clearip.relay.localaddr import LocalAddresses, wildcard
from clearip.relay.tap import SocketSink, TapRecord

log = logging.getLogger("clearip.worker")

HEP_RESOLVE_INTERVAL = 60.0


class Copies:
    def __init__(
        self,
        local: LocalAddresses,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        index: int,
    ) -> None:
        self.sinks: list[Any] = []  # SocketSink and HepSink; emit(), wants(), dead, dropped
        self.hep: HepSink | None = None
        self.hep_configured: tuple[str, int] | None = None
        self._hep_task: asyncio.Task[None] | None = None
        self._local = local
        self._spawn = spawn
        self._index = index  # worker 0 logs what all of them do

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def emit(
        self,
        direction: str,
        transport: str,
        src: Address,
        dst: Address,
        data: bytes,
        upstream: bool = False,
    ) -> None:
        # a socket bound to a wildcard has no address of its own: name the one the peer sees
        if wildcard(src[0]):
            src = (self._local.toward(dst[0]), src[1])
        elif wildcard(dst[0]):
            dst = (self._local.toward(src[0]), dst[1])
        record = TapRecord(time.time(), direction, transport, src, dst, data, upstream)
        dead = False
        for sink in self.sinks:
            if sink.wants(transport):
                try:
                    sink.emit(record)
                except Exception:  # a copy is never worth the message itself
                    sink.dropped += 1
                    log.debug("tap copy failed", exc_info=True)
                dead = dead or sink.dead
        if dead:
            for sink in [s for s in self.sinks if s.dead]:
                log.info("capture tap %s has gone; stopped copying to it", sink.path)
                self.remove_tap(sink.path)

    def add_tap(self, path: str, transports: list[str]) -> None:
        self.remove_tap(path)
        self.sinks.append(SocketSink(path, transports))

    def remove_tap(self, path: str) -> None:
        for sink in [s for s in self.sinks if getattr(s, "path", None) == path]:
            self.sinks.remove(sink)
            sink.close()

    def set_hep(self, config: Config) -> None:
        """Start, move or stop HEP3 export to match `control.hep` (at start and on reload)."""
        want = config.control.hep
        target = (want.host, want.port) if want is not None else None
        if target == self.hep_configured:
            return
        self.hep_configured = target
        if self._hep_task is not None:
            self._hep_task.cancel()
            self._hep_task = None
        if self.hep is not None:
            self.sinks.remove(self.hep)
            self.hep.close()
            self.hep = None
        if target is not None:
            self._hep_task = self._spawn(self._follow_collector(*target))

    async def _follow_collector(self, host: str, port: int) -> None:
        """Resolve the collector without blocking, now and every HEP_RESOLVE_INTERVAL, and
        point the export at whatever it resolves to (a collector that moves is followed)."""
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
                address = (str(infos[0][4][0]), int(infos[0][4][1]))
                if self.hep is None:
                    self.hep = HepSink(address)
                    self.sinks.append(self.hep)
                    if self._index == 0:
                        log.info("HEP3 export to %s:%d", *address)
                elif self.hep.address != address:
                    self.hep.retarget(address)
                    if self._index == 0:
                        log.info("HEP3 collector %s now at %s:%d", host, *address)
                failing = False
            except OSError as e:
                if not failing and self._index == 0:
                    log.error("HEP export: cannot resolve collector %s:%d: %s", host, port, e)
                failing = True
            await asyncio.sleep(HEP_RESOLVE_INTERVAL)

    def stats(self) -> dict[str, int]:
        return {
            "captures": sum(1 for s in self.sinks if s is not self.hep),
            "dropped": sum(s.dropped for s in self.sinks),
            "hep_sent": self.hep.sent if self.hep is not None else 0,
        }
