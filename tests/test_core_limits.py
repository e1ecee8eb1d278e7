"""Limits that limit (issue 11): max_transactions holds, and when it is reached the proxy stops
taking new calls but still lets calls already admitted end, and still answers health checks.

On main CANCEL was handled before the check (50 transactions held with a limit of 10), and once
full every request -- BYE and OPTIONS included -- got 503, so switches marked the proxy down.
"""

from __future__ import annotations

from clearip.relay.events import Send
from clearip.sip.message import Response
from tests.core_rig import PROV_B, SWITCH, Rig, invite, msgs, only, redirect, response_to
from tests.test_core_flows import CONTACTS, start_call
from tests.test_core_indialog import request

LIMIT = 10


def full_rig() -> Rig:
    rig = Rig(extra_config=f"[limits]\nmax_transactions = {LIMIT}\n")
    for i in range(LIMIT):  # ClearIP is slow: every call holds its server transaction
        rig.feed(invite(call_id=f"held-{i}", branch=f"z9hG4bK-held-{i}"), SWITCH)
    assert len(rig.core.server_txs) == LIMIT
    return rig


def cancel(i: int) -> bytes:
    return (
        f"CANCEL sip:+12025550123@10.0.0.1:5060;user=phone SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.11:5060;branch=z9hG4bK-held-{i};rport\r\n"
        f"From: <sip:+13035550199@10.0.0.11;user=phone>;tag=sw-tag\r\n"
        f"To: <sip:+12025550123@10.0.0.1;user=phone>\r\n"
        f"Call-ID: held-{i}\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def statuses(sends: list[Send]) -> list[int]:
    return [m.status for m in msgs(sends) if isinstance(m, Response)]


def test_new_calls_get_503_when_full() -> None:
    rig = full_rig()
    resp = only(rig.feed(invite(call_id="one-too-many", branch="z9hG4bK-x"), SWITCH), to=SWITCH)
    assert resp.status == 503 and resp.get("retry-after") == b"5"
    assert rig.counters.drops["transaction_limit"] == 1
    assert len(rig.core.server_txs) == LIMIT


def test_cancels_for_nothing_hold_nothing_when_full() -> None:
    rig = full_rig()
    for i in range(50):
        out = rig.feed(cancel(1000 + i), SWITCH)
        assert statuses(out) == [481]
    assert len(rig.core.server_txs) == LIMIT


def test_a_cancel_of_an_admitted_call_still_works_when_full() -> None:
    rig = full_rig()
    out = rig.feed(cancel(3), SWITCH)
    assert sorted(statuses(out)) == [200, 487]


def test_health_checks_still_pass_when_full() -> None:
    rig = full_rig()
    options = (
        b"OPTIONS sip:10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.11:5060;branch=z9hG4bK-o\r\n"
        b"From: <sip:ping@10.0.0.11>;tag=p\r\nTo: <sip:10.0.0.1>\r\nCall-ID: ping\r\n"
        b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    assert only(rig.feed(options, SWITCH), to=SWITCH).status == 200
    assert len(rig.core.server_txs) == LIMIT


def test_an_answered_call_can_still_hang_up_when_full() -> None:
    rig = Rig(extra_config=f"[limits]\nmax_transactions = {LIMIT}\n")
    to_b = only(rig.from_clearip(redirect(start_call(rig), CONTACTS)), to=PROV_B)
    ok = response_to(to_b, 200, "OK", mirror_rr=True, extra="Contact: <sip:b@10.0.0.14:5060>")
    only(rig.feed(ok, PROV_B), to=SWITCH)
    for i in range(LIMIT):
        rig.feed(invite(call_id=f"held-{i}", branch=f"z9hG4bK-held-{i}"), SWITCH)
    assert len(rig.core.server_txs) >= LIMIT
    bye = request(
        "BYE", uri="sip:b@10.0.0.14:5060", from_tag="sw-tag", to_tag="uas-tag", src=SWITCH
    )
    assert only(rig.feed(bye, SWITCH), to=PROV_B).method == "BYE"


def fall_behind(rig: Rig) -> None:
    """The loop half a second late, beat after beat, until the worker is behind (up to now);
    its token bucket left wide open (the bucket is tested in test_overload.py)."""
    control = rig.core.overload
    for n in range(300):
        if control.beat(rig.now - 3.0 + n * 0.01, 0.5) == "on":
            break
    assert control.active
    control.rate = 1e9


def test_overloaded_worker_refuses_new_calls_at_once_but_not_emergencies() -> None:
    """Overload control (issue 12): past its knee the relay answers new calls 503 with
    Retry-After, statelessly, and keeps serving what it admitted."""
    rig = Rig()
    to_b = only(rig.from_clearip(redirect(start_call(rig), CONTACTS)), to=PROV_B)
    for n in range(200):  # the loop stays a second late: admission control starts
        if rig.core.overload.beat(rig.now + n * 0.01, 1.0) == "on":
            break
    assert rig.core.overload.active
    resp = only(rig.feed(invite(call_id="late", branch="z9hG4bK-late"), SWITCH), to=SWITCH)
    assert resp.status == 503 and resp.get("retry-after") == b"1"
    assert rig.counters.drops["overload"] == 1
    asked = [m for m in msgs(rig.sent, upstream=True) if getattr(m, "method", "") == "INVITE"]
    assert len(asked) == 1  # only the admitted call ever reached ClearIP
    # the admitted call goes on
    ok = response_to(to_b, 200, "OK", mirror_rr=True, extra="Contact: <sip:b@10.0.0.14:5060>")
    assert only(rig.feed(ok, PROV_B), to=SWITCH).status == 200
    # an emergency call is never refused for overload (here: 503 by emergency_action)
    sos = rig.feed(invite(number="911", call_id="sos", branch="z9hG4bK-sos"), SWITCH)
    assert [m.status for m in msgs(sos, to=SWITCH)] == [100, 503]
    assert rig.counters.values["emergency_bypass"] == 1


def test_behind_an_invite_that_waited_past_the_bound_in_the_socket_is_refused_at_once() -> None:
    """A datagram that sat in the kernel's queue longer than limits.overload_lag, while the
    worker is behind, is a new call it is too late for: 503 before any work."""
    rig = Rig()
    stale = invite(call_id="hiccup", branch="z9hG4bK-hiccup")
    out = rig.feed(stale, SWITCH, waited=0.5)  # one late datagram while keeping up: a call
    assert [m.status for m in msgs(out, to=SWITCH)] == [100]
    fall_behind(rig)  # the queues stay that late
    stale = invite(call_id="stale", branch="z9hG4bK-stale")
    resp = only(rig.feed(stale, SWITCH, waited=0.5), to=SWITCH)
    assert resp.status == 503 and resp.reason == b"Overloaded"
    out = rig.feed(invite(call_id="fresh", branch="z9hG4bK-fresh"), SWITCH, waited=0.01)
    assert [m.status for m in msgs(out, to=SWITCH)] == [100]


def test_a_refused_invite_retransmitted_gets_the_same_answer_and_its_ack_is_absorbed() -> None:
    """A switch may retransmit an INVITE before our stateless 503 reaches it. Judged again,
    the copy could be admitted: a call the switch already gave up on would ring at a provider.
    The copy gets the same 503 (same To tag: SIPp aborts on a second, different final), and
    the ACK of the 503 is absorbed, never forwarded as if it were a 2xx ACK."""
    rig = Rig()
    fall_behind(rig)  # behind: stale INVITEs are refused
    first = invite(call_id="again", branch="z9hG4bK-again")
    refused = only(rig.feed(first, SWITCH, waited=0.5), to=SWITCH)
    assert refused.status == 503
    rig.advance(0.5)
    out = rig.feed(first, SWITCH, waited=0.0)  # on time now: would be admitted
    again = only(out, to=SWITCH)
    assert again.status == 503 and again.to_bytes() == refused.to_bytes()
    assert not msgs(out, upstream=True) and not rig.core.calls
    ack = (
        "ACK sip:+12025550123@10.0.0.1:5060;user=phone SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.11:5060;branch=z9hG4bK-again;rport\r\n"
        "From: <sip:+13035550199@10.0.0.11;user=phone>;tag=sw-tag\r\n"
        f"To: <sip:+12025550123@10.0.0.1;user=phone>;tag={refused.to.tag}\r\n"
        "Call-ID: again\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    assert rig.feed(ack, SWITCH) == []
    rig.advance(40)  # past Timer B: forgotten
    out = rig.feed(first, SWITCH, waited=0.0)
    assert [m.status for m in msgs(out, to=SWITCH)] == [100]
