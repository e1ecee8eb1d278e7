"""A stand-in relay worker for the supervisor tests: the real link, fixed counters, no SIP.

Started by the supervisor as `python -m tests.fake_worker --config ... --index I --workers N
--ctl-fd FD` (CLEARIP_WORKER_MODULE=tests.fake_worker). FAKE_WORKER_MODE picks a misbehaviour:
  normal    ready at once, counts reloads, exits on shutdown
  crash     exits with status 3 before it is ready
  noready   never says ready
  stubborn  ignores the shutdown request (the supervisor must SIGKILL it)
It runs on uvloop, as the real worker does, so the link is exercised there too.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

import uvloop

from clearip.config import Config, load_config
from clearip.logsetup import setup_logging
from clearip.workerlink import WorkerLink

log = logging.getLogger("fake_worker")

# Per worker; the test expects twice these with two workers.
COUNTERS = {"messages_in": 5, "invites": 2, "clearip_302": 1, "calls_active": 1}
SHARED_SOURCE = "192.0.2.1"


class FakeWorker:
    def __init__(self, config: Config, index: int, mode: str) -> None:
        self.config = config
        self.index = index
        self.mode = mode
        self.reloads = 0
        self.trusted: list[str] = []
        self.stopped = asyncio.Event()

    def stats(self) -> dict[str, Any]:
        listen = self.config.listen
        listeners = [
            {"transport": transport, "address": str(address)}
            for transport, addresses in (
                ("udp", listen.udp),
                ("tcp", listen.tcp),
                ("tls", listen.tls),
            )
            for address in addresses
        ]
        return {
            "counters": {**COUNTERS, "fake_reloads": self.reloads},
            "sources": {
                SHARED_SOURCE: {"messages_in": 3, "invites": 1},
                f"198.51.100.{self.index + 1}": {"messages_in": 2, "invites": 1},
            },
            "listeners": listeners,
            "upstream": {
                "state": "connected",
                "transport": self.config.clearip.transport,
                "tls_version": "TLSv1.3",
                "rtt_ms": 10.0 + self.index,
            },
            "latency": {"p50": 1.0 + self.index, "p99": 5.0},
            "finals": {"200": 1},
        }

    async def reload(self, config: Config) -> None:
        self.config = config
        self.reloads += 1
        log.info("worker %d reloaded: clearip.timeout=%g", self.index, config.clearip.timeout)

    def set_trusted(self, cidrs: list[str]) -> None:
        self.trusted = cidrs

    async def shutdown(self, grace: float) -> None:
        if self.mode == "stubborn":
            await asyncio.Event().wait()  # never returns: only SIGKILL ends this worker
        log.info("worker %d shutting down (grace %g s)", self.index, grace)
        self.stopped.set()


async def amain(args: argparse.Namespace) -> int:
    mode = os.environ.get("FAKE_WORKER_MODE", "normal")
    if mode == "crash":
        log.error("worker %d: crashing on purpose", args.index)
        return 3
    config = load_config(args.config or None)
    worker = FakeWorker(config, args.index, mode)
    link = WorkerLink(args.ctl_fd, worker)
    await link.start()
    if mode != "noready":
        link.send_event({"event": "ready"})
    await link.wait_closed()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--ctl-fd", type=int, required=True)
    parser.add_argument("--instance", default="")
    parser.add_argument("--handoff-dir", default="")
    parser.add_argument("--conncount-fd", type=int, default=None)
    parser.add_argument("--steering-fds", default="")
    args = parser.parse_args()
    setup_logging("info", tag=f"fake worker {args.index}")
    return uvloop.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
