"""Per-call memory (issue 12): a finished call leaves nothing behind in the proxy core.

On main every call of the last two minutes stayed alive: a call that rang set a 120 s
ring-timeout entry in the timer heap, the 200 made it stale, and a stale entry was dropped only
when it reached the top of the heap, holding the call, its transactions and every message they
carried (about 17 KB a call: 2.5 GB after 10 minutes at 500 calls/s). Calls also formed
reference cycles (call ↔ transaction records), so even unreferenced they waited for the cyclic
collector, which the worker runs rarely.
"""

from __future__ import annotations

import gc
import tracemalloc

from clearip.relay.call import Call
from clearip.relay.core import TxRecord
from tests.core_rig import PROV_B, SWITCH, Rig, invite, only, redirect, response_to
from tests.test_core_flows import CONTACTS
from tests.test_core_indialog import request


def one_call(rig: Rig, i: int) -> None:
    """INVITE → 302 → 180, 200 from B → ACK → BYE from the switch → 200, then 10 ms on."""
    to_ci = only(rig.feed(invite(call_id=f"mem-{i}", branch=f"z9hG4bK-mem-{i}"), SWITCH),
                 upstream=True)  # fmt: skip
    to_b = only(rig.from_clearip(redirect(to_ci, CONTACTS)), to=PROV_B)
    rig.feed(response_to(to_b, 180, "Ringing", mirror_rr=True), PROV_B)
    ok = response_to(to_b, 200, "OK", mirror_rr=True, extra="Contact: <sip:b@10.0.0.14:5060>")
    only(rig.feed(ok, PROV_B), to=SWITCH)
    dialog = {"uri": "sip:b@10.0.0.14:5060", "call_id": f"mem-{i}", "from_tag": "sw-tag",
              "to_tag": "uas-tag", "src": SWITCH}  # fmt: skip
    rig.feed(request("ACK", branch=f"z9hG4bK-ack-{i}", **dialog), SWITCH)  # type: ignore[arg-type]
    bye = request("BYE", branch=f"z9hG4bK-bye-{i}", **dialog)  # type: ignore[arg-type]
    fwd = only(rig.feed(bye, SWITCH), to=PROV_B)
    only(rig.feed(response_to(fwd, 200, "OK", to_tag=None), PROV_B), to=SWITCH)
    rig.sent.clear()  # the rig's own record of what was sent is not the core's memory


def live(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is kind)


def test_finished_calls_leave_nothing_behind() -> None:
    gc.collect()
    gc.disable()  # what refcounting alone frees: the cyclic collector is not to be relied on
    try:
        rig = Rig()
        for i in range(300):
            one_call(rig, i)
            rig.advance(0.01)
        rig.advance(40)  # past every transaction's linger (64·T1), far short of 120 s
        rig.sent.clear()
        assert rig.counters.values["calls_active"] == 0
        assert not (rig.core.calls or rig.core.client_txs or rig.core.server_txs)
        assert not rig.core.dialogs
        assert live(Call) == 0 and live(TxRecord) == 0
        assert len(rig.core._timers) < 16
    finally:
        gc.enable()


def test_memory_is_flat_under_steady_load() -> None:
    """25 calls a second of simulated time: after the warm-up (longer than any timer a
    finished call keeps, 64·T1), another stretch of the same load adds no live calls and no
    memory beyond the jitter of what is live. On main the 120 s ring timer kept each call
    alive four times as long: memory doubled from one stretch to the next."""
    rig = Rig()

    def load(first: int, seconds: float) -> None:
        for i in range(first, first + int(seconds * 25)):
            one_call(rig, i)
            rig.advance(0.04)
            rig.core.env.pinholes.clear()  # the rig's record, not the core's memory

    tracemalloc.start()
    try:
        load(0, 45)
        gc.collect()
        calls_before = live(Call)
        before = tracemalloc.get_traced_memory()[0]
        load(100_000, 45)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert live(Call) <= calls_before * 1.1, (calls_before, live(Call))
    assert grown < before * 0.03, f"{grown} bytes more after another 45 s, from {before}"
