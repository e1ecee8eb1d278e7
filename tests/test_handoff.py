"""Hand-off between workers (relay/handoff.py) over real Unix sockets: everything one pass of
the loop hands to an owner goes as one datagram (the kernel queues only ~10 per socket), in
order, and each message keeps the time it reached the host, so the owner sees how long a new
call has really waited."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time

import pytest

from clearip.relay.events import Flow
from clearip.relay.handoff import BATCH_BYTES, Handoff, batches, unbatch


def test_batches_frame_packets_and_split_past_the_size() -> None:
    packets = [bytes([i % 256]) * 1000 for i in range(150)]
    out = batches(packets)
    assert len(out) == 3 and all(len(b) <= BATCH_BYTES for b in out)
    assert [p for b in out for p in unbatch(b)] == packets
    big = b"x" * (BATCH_BYTES + 10)  # one SIP message bigger than a batch still goes, alone
    assert batches([b"a", big, b"b"]) and [p for b in batches([b"a", big, b"b"]) for p in
                                           unbatch(b)] == [b"a", big, b"b"]  # fmt: skip
    with pytest.raises(ValueError):
        unbatch(out[0][:-1])


def test_a_burst_reaches_the_owner_in_order_with_its_arrival_time() -> None:
    async def run() -> list[tuple[bytes, Flow, float]]:
        loop = asyncio.get_running_loop()
        got: list[tuple[bytes, Flow, float]] = []
        with tempfile.TemporaryDirectory() as directory:
            os.chmod(directory, 0o700)
            owner = Handoff(loop, directory, 1, lambda d, f, w: got.append((d, f, w)))
            sender = Handoff(loop, directory, 0, lambda d, f, w: None)
            try:
                flow = Flow("udp", ("10.0.0.11", 5060), ("10.0.0.1", 5060))
                arrived = time.time() - 0.3  # it sat 300 ms in the kernel before it was read
                for i in range(2000):  # 200 times the owner's socket queue, in one pass
                    sender.send(1, f"INVITE {i}".encode(), flow, arrived)
                for _ in range(200):
                    await asyncio.sleep(0.01)
                    if len(got) == 2000:
                        break
                assert sender.overflow == 0  # nothing was handled by the wrong worker
                return got
            finally:
                sender.close()
                owner.close()

    got = asyncio.run(run())
    assert [d for d, _, _ in got] == [f"INVITE {i}".encode() for i in range(2000)]
    assert got[0][1] == Flow("udp", ("10.0.0.11", 5060), ("10.0.0.1", 5060))
    assert all(0.3 <= waited < 5 for _, _, waited in got)
