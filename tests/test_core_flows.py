"""The call flows of SPEC §3 through the sans-IO proxy core: exact messages in and out."""

from __future__ import annotations

from clearip.sip.message import Request, Response
from tests.core_rig import (
    CLEARIP,
    IDENTITY,
    PROV_A,
    PROV_B,
    SWITCH,
    UNTRUSTED,
    Rig,
    invite,
    msgs,
    only,
    redirect,
    response_to,
)

CONTACTS = (
    "<sip:+12025550123@10.0.0.13:5060;user=phone>;q=0.5, "
    "<sip:+12025550123@10.0.0.14:5060;user=phone>;q=1.0"
)


def start_call(rig: Rig, **kw) -> Request:
    """Switch INVITE -> 100 Trying + INVITE to ClearIP; returns what ClearIP received."""
    out = rig.feed(invite(**kw), SWITCH)
    trying = only(out, to=SWITCH)
    assert isinstance(trying, Response) and trying.status == 100
    to_ci = only(out, upstream=True)
    assert isinstance(to_ci, Request) and to_ci.method == "INVITE"
    return to_ci


def test_outbound_302_identity_to_highest_q_contact() -> None:
    rig = Rig()
    to_ci = start_call(rig)
    assert to_ci.max_forwards == 69
    assert to_ci.top_via.host == "10.0.0.1" and to_ci.top_via.transport == "TLS"
    assert len(to_ci.vias) == 2
    out = rig.from_clearip(redirect(to_ci, CONTACTS))
    ack = only(out, upstream=True)
    assert isinstance(ack, Request) and ack.method == "ACK"
    prov = only(out, to=PROV_B)  # q=1.0 first, whatever the order given
    assert isinstance(prov, Request)
    assert prov.uri == b"sip:+12025550123@10.0.0.14:5060;user=phone"
    assert prov.get_all("identity") == [IDENTITY.encode()]
    assert prov.max_forwards == 69
    assert prov.get("p-asserted-identity") == b"<sip:+13035550199@10.0.0.11;user=phone>"
    assert [r.uri for r in prov.record_routes] == ["sip:10.0.0.1:5060;lr"]
    assert not msgs(out, to=SWITCH)  # the 302 is never relayed
    assert rig.counters.values["clearip_302"] == 1


def test_failover_on_503_then_200_relayed() -> None:
    rig = Rig()
    to_ci = start_call(rig)
    out = rig.from_clearip(redirect(to_ci, CONTACTS))
    to_b = only(out, to=PROV_B)
    out = rig.feed(response_to(to_b, 503, "Service Unavailable"), PROV_B)
    ack_b = only(out, to=PROV_B)
    assert ack_b.method == "ACK"
    to_a = only(out, to=PROV_A)
    assert to_a.method == "INVITE" and to_a.get("identity") == IDENTITY.encode()
    assert to_a.max_forwards == 69
    assert to_a.top_via.branch != to_b.top_via.branch
    out = rig.feed(response_to(to_a, 180, "Ringing"), PROV_A)
    ringing = only(out, to=SWITCH)
    assert ringing.status == 180 and len(ringing.vias) == 1
    out = rig.feed(response_to(to_a, 200, "OK", mirror_rr=True), PROV_A)
    ok = only(out, to=SWITCH)
    assert ok.status == 200
    assert ok.top_via.branch == "z9hG4bK-sw-1"
    assert rig.counters.values["failovers"] == 1
    assert rig.counters.values["calls_active"] == 1


def test_486_relayed_without_failover() -> None:
    rig = Rig()
    to_ci = start_call(rig)
    to_b = only(rig.from_clearip(redirect(to_ci, CONTACTS)), to=PROV_B)
    out = rig.feed(response_to(to_b, 486, "Busy Here", extra="Reason: Q.850;cause=17"), PROV_B)
    busy = only(out, to=SWITCH)
    assert busy.status == 486 and busy.reason == b"Busy Here"
    assert busy.get("reason") == b"Q.850;cause=17"
    assert not msgs(out, to=PROV_A)
    assert rig.counters.values["calls_active"] == 0


def test_clearip_603_relayed_intact() -> None:
    rig = Rig()
    to_ci = start_call(rig)
    reason = 'Q.850;cause=21;text="Call Rejected"'
    out = rig.from_clearip(response_to(to_ci, 603, "Decline", extra=f"Reason: {reason}"))
    decline = only(out, to=SWITCH)
    assert decline.status == 603 and decline.reason == b"Decline"
    assert decline.get("reason") == reason.encode()
    assert len(decline.vias) == 1
    assert rig.counters.values["clearip_603"] == 1


def test_clearip_silent_gives_on_failure_after_timeout() -> None:
    rig = Rig()
    start_call(rig)
    assert not msgs(rig.advance(1.9), to=SWITCH)
    final = only(rig.advance(0.2), to=SWITCH)
    assert final.status == 503 and final.reason == b"ClearIP unavailable"
    assert rig.counters.values["clearip_timeout"] == 1


def test_link_down_answers_at_once() -> None:
    rig = Rig()
    rig.core.link_down(1, rig.now)
    out = rig.feed(invite(), SWITCH)
    codes = [m.status for m in msgs(out, to=SWITCH)]
    assert codes == [100, 503]
    assert rig.counters.values["clearip_unavailable"] == 1


def test_reset_while_waiting_resends_once_on_fresh_connection() -> None:
    rig = Rig()
    first = start_call(rig)
    rig.core.link_down(1, rig.now)
    assert not rig.drain()
    rig.core.link_up(2, rig.now)
    again = only(rig.drain(), upstream=True)
    assert again.method == "INVITE" and again.top_via.branch != first.top_via.branch
    rig.core.link_down(2, rig.now)
    final = only(rig.drain(), to=SWITCH)
    assert final.status == 503


def test_emergency_never_reaches_clearip() -> None:
    rig = Rig()
    for n, number in enumerate(["911", "+1911", "1-911", "933"]):
        out = rig.feed(invite(number=number, call_id=f"e{n}", branch=f"z9hG4bK-e{n}"), SWITCH)
        assert not msgs(out, upstream=True)
        assert [m.status for m in msgs(out, to=SWITCH)] == [100, 503]
    out = rig.feed(invite(uri="urn:service:sos", call_id="sos", branch="z9hG4bK-sos"), SWITCH)
    assert not msgs(out, upstream=True)
    assert rig.counters.values["emergency_bypass"] == 5


def test_options_200_and_other_methods_405() -> None:
    rig = Rig()
    options = invite().replace(b"INVITE sip", b"OPTIONS sip", 1).replace(b"1 INVITE", b"1 OPTIONS")
    assert only(rig.feed(options, SWITCH), to=SWITCH).status == 200
    sub = (
        invite(branch="z9hG4bK-2")
        .replace(b"INVITE sip", b"SUBSCRIBE sip", 1)
        .replace(b"1 INVITE", b"1 SUBSCRIBE")
    )
    resp = only(rig.feed(sub, SWITCH), to=SWITCH)
    assert resp.status == 405 and resp.get("allow")


def test_max_forwards_zero_gets_483() -> None:
    rig = Rig()
    out = rig.feed(invite(max_forwards=0), SWITCH)
    assert only(out, to=SWITCH).status == 483
    assert not msgs(out, upstream=True)


def test_untrusted_dropped_and_counted() -> None:
    rig = Rig()
    assert rig.feed(invite(src=UNTRUSTED), UNTRUSTED) == []
    assert rig.counters.values["dropped_untrusted"] == 1


def test_retransmitted_invite_absorbed() -> None:
    rig = Rig()
    start_call(rig)
    out = rig.feed(invite(), SWITCH)
    assert [m.status for m in msgs(out, to=SWITCH)] == [100]
    assert not msgs(out, upstream=True)


def test_cancel_at_clearip_stage() -> None:
    _cancel_at_clearip_stage(Rig())


def _cancel_at_clearip_stage(rig: Rig) -> Request:
    """The caller's CANCEL before ClearIP sent anything: 200 and 487 to the caller at once."""
    to_ci = start_call(rig)
    cancel = (
        b"CANCEL sip:+12025550123@10.0.0.1:5060;user=phone SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.11:5060;branch=z9hG4bK-sw-1;rport\r\n"
        b"From: <sip:+13035550199@10.0.0.11;user=phone>;tag=sw-tag\r\n"
        b"To: <sip:+12025550123@10.0.0.1;user=phone>\r\n"
        b"Call-ID: call-1@10.0.0.11\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    out = rig.feed(cancel, SWITCH)
    codes = sorted((m.status, m.cseq.method) for m in msgs(out, to=SWITCH))
    assert codes == [(200, "CANCEL"), (487, "INVITE")]
    return to_ci


def test_cancel_owed_to_clearip_goes_once_it_sends_a_provisional() -> None:
    """RFC 3261 §9.1: no CANCEL before a provisional; the one owed goes when it comes."""
    rig = Rig()
    to_ci = _cancel_at_clearip_stage(rig)
    out = rig.from_clearip(response_to(to_ci, 100, "Trying", to_tag=None))
    cancel = only(out, upstream=True)
    assert isinstance(cancel, Request) and cancel.method == "CANCEL"
    assert cancel.top_via.branch == to_ci.top_via.branch
    assert not msgs(rig.from_clearip(response_to(to_ci, 180, "Ringing")), upstream=True)


def test_all_contacts_fail_last_final_relayed() -> None:
    rig = Rig()
    to_ci = start_call(rig)
    to_b = only(rig.from_clearip(redirect(to_ci, CONTACTS)), to=PROV_B)
    to_a = only(rig.feed(response_to(to_b, 500, "Server Error"), PROV_B), to=PROV_A)
    out = rig.feed(response_to(to_a, 480, "Temporarily Unavailable"), PROV_A)
    final = only(out, to=SWITCH)
    assert final.status == 480 and final.reason == b"Temporarily Unavailable"


def test_no_answer_moves_on_and_late_200_is_hung_up() -> None:
    rig = Rig()
    to_ci = start_call(rig)
    to_b = only(rig.from_clearip(redirect(to_ci, CONTACTS)), to=PROV_B)
    out = rig.advance(5.01)
    to_a = only(out, to=PROV_A)
    assert to_a.method == "INVITE"
    late = rig.feed(
        response_to(to_b, 200, "OK", mirror_rr=True, extra="Contact: <sip:b@10.0.0.14:5060>"),
        PROV_B,
    )
    assert not msgs(late, to=SWITCH)
    methods = sorted(m.method for m in msgs(late, to=PROV_B))
    assert methods == ["ACK", "BYE"]


def test_in_dialog_bye_loose_routed() -> None:
    rig = Rig()
    to_ci = start_call(rig)
    to_b = only(rig.from_clearip(redirect(to_ci, CONTACTS)), to=PROV_B)
    ok = response_to(to_b, 200, "OK", mirror_rr=True, extra="Contact: <sip:b@10.0.0.14:5060>")
    only(rig.feed(ok, PROV_B), to=SWITCH)
    bye = (
        b"BYE sip:b@10.0.0.14:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.11:5060;branch=z9hG4bK-sw-bye;rport\r\n"
        b"Route: <sip:10.0.0.1:5060;lr>\r\n"
        b"From: <sip:+13035550199@10.0.0.11;user=phone>;tag=sw-tag\r\n"
        b"To: <sip:+12025550123@10.0.0.1;user=phone>;tag=uas-tag\r\n"
        b"Call-ID: call-1@10.0.0.11\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    fwd = only(rig.feed(bye, SWITCH), to=PROV_B)
    assert fwd.method == "BYE" and not fwd.has("route") and len(fwd.vias) == 2
    out = rig.feed(response_to(fwd, 200, "OK", to_tag=None), PROV_B)
    assert only(out, to=SWITCH).status == 200
    assert rig.counters.values["calls_active"] == 0
    # the provider's pinhole: opened with the branch, closed once branch and dialog are over
    rig.advance(40)
    assert rig.core.env.pinholes == [("10.0.0.14", True), ("10.0.0.14", False)]
    assert not rig.core.server_txs and not rig.core.client_txs and not rig.core.dialogs


_ = CLEARIP


def test_untrusted_answered_403_when_configured() -> None:
    from clearip.config import parse_config
    from tests.core_rig import BASE_CONFIG

    rig = Rig()
    trusted = 'sources = ["10.0.0.0/24"]'
    rig.core.config = parse_config(BASE_CONFIG.replace(trusted, f'{trusted}\nuntrusted = "403"'))
    resp = only(rig.feed(invite(src=UNTRUSTED), UNTRUSTED), to=UNTRUSTED)
    assert resp.status == 403
    assert rig.counters.values["dropped_untrusted"] == 1


def bye_from_callee(to_b: Request) -> bytes:
    """The provider hangs up: BYE to the proxy's Record-Route, toward the switch's Contact."""
    return (
        b"BYE sip:+13035550199@10.0.0.11:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.14:5060;branch=z9hG4bK-b-bye\r\n"
        b"Route: <sip:10.0.0.1:5060;lr>\r\n"
        b"From: <sip:+12025550123@10.0.0.1;user=phone>;tag=uas-tag\r\n"
        b"To: <sip:+13035550199@10.0.0.11;user=phone>;tag=sw-tag\r\n"
        b"Call-ID: call-1@10.0.0.11\r\nCSeq: 1 BYE\r\nMax-Forwards: 70\r\n"
        b"Content-Length: 0\r\n\r\n"
    )


def test_callee_bye_from_untrusted_provider_passes_via_pinhole() -> None:
    rig = Rig()
    rig.core.env.trusted_prefix = "10.0.0.11"  # only the switch is trusted
    to_ci = start_call(rig)
    to_b = only(rig.from_clearip(redirect(to_ci, CONTACTS)), to=PROV_B)
    ok = response_to(to_b, 200, "OK", mirror_rr=True, extra="Contact: <sip:b@10.0.0.14:5060>")
    only(rig.feed(ok, PROV_B), to=SWITCH)
    fwd = only(rig.feed(bye_from_callee(to_b), PROV_B), to=SWITCH)
    assert fwd.method == "BYE" and not fwd.has("route")
    # but the same provider cannot start a call of its own (SPEC §5 pinholes)
    assert rig.feed(invite(src=PROV_B, call_id="own", branch="z9hG4bK-own"), PROV_B) == []


def test_re_invite_in_dialog_is_relayed() -> None:
    rig = Rig()
    to_ci = start_call(rig)
    to_b = only(rig.from_clearip(redirect(to_ci, CONTACTS)), to=PROV_B)
    ok = response_to(to_b, 200, "OK", mirror_rr=True, extra="Contact: <sip:b@10.0.0.14:5060>")
    only(rig.feed(ok, PROV_B), to=SWITCH)
    reinvite = (
        invite(
            uri="sip:b@10.0.0.14:5060",
            branch="z9hG4bK-re",
            extra="Route: <sip:10.0.0.1:5060;lr>\r\n",
        )
        .replace(b"CSeq: 1 INVITE", b"CSeq: 2 INVITE")
        .replace(
            b"To: <sip:+12025550123@10.0.0.1;user=phone>",
            b"To: <sip:+12025550123@10.0.0.1;user=phone>;tag=uas-tag",
        )
    )
    out = rig.feed(reinvite, SWITCH)
    assert [m.status for m in msgs(out, to=SWITCH)] == [100]
    fwd = only(out, to=PROV_B)
    assert fwd.method == "INVITE" and fwd.cseq.number == 2 and not msgs(out, upstream=True)
    final = only(rig.feed(response_to(fwd, 200, "OK", to_tag=None), PROV_B), to=SWITCH)
    assert final.status == 200 and final.cseq.number == 2


def test_advertise_in_via_and_record_route() -> None:
    from clearip.config import parse_config
    from clearip.relay.worker import Worker
    from tests.core_rig import BASE_CONFIG

    config = parse_config(BASE_CONFIG.replace("[clearip]", 'advertise = "203.0.113.7"\n[clearip]'))
    worker = Worker(config, index=1, workers=2, config_path=None)
    assert worker.via_address("tcp", "10.0.0.13") == ("203.0.113.7", 5060)
    assert worker.via_address("udp", "10.0.0.13") == ("203.0.113.7", 5060 + 10 + 1)
    assert worker.rr_address("udp", "10.0.0.13") == ("203.0.113.7", 5060)
    assert worker.rr_address("tls", "10.0.0.13") == ("203.0.113.7", 5061)


def test_failover_on_408_and_on_a_connection_error() -> None:
    rig = Rig()
    to_ci = start_call(rig)
    three = CONTACTS + ", <sip:+12025550123@10.0.0.15:5060;transport=tcp>;q=0.1"
    out = rig.from_clearip(redirect(to_ci, three))
    to_b = only(out, to=PROV_B)
    to_a = only(rig.feed(response_to(to_b, 408, "Request Timeout"), PROV_B), to=PROV_A)
    # the transport cannot reach A (connect refused): the adapter reports it for that send
    [send] = [s for s in rig.sent if s.target.host == PROV_A[0] and s.data.startswith(b"INVITE")]
    rig.core.send_failed(send.token, rig.now)
    to_c = only(rig.drain(), to=("10.0.0.15", 5060))
    assert to_c.method == "INVITE" and to_c.top_via.transport == "TCP"
    assert to_a.top_via.branch != to_c.top_via.branch
    assert rig.counters.values["failovers"] == 2


def test_stray_in_dialog_request_for_us_is_not_forwarded_to_ourselves() -> None:
    """A BYE or ACK whose Request-URI names the proxy and that carries no Route: 481 / drop."""
    rig = Rig()
    bye = (
        b"BYE sip:+12025550123@10.0.0.1:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.11:5060;branch=z9hG4bK-stray;rport\r\n"
        b"From: <sip:+13035550199@10.0.0.11>;tag=a\r\nTo: <sip:+12025550123@10.0.0.1>;tag=b\r\n"
        b"Call-ID: stray@10.0.0.11\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    resp = only(rig.feed(bye, SWITCH))
    assert resp.status == 481
    ack = (
        bye.replace(b"BYE sip", b"ACK sip")
        .replace(b"2 BYE", b"2 ACK")
        .replace(b"z9hG4bK-stray", b"z9hG4bK-stray-ack")
    )
    assert rig.feed(ack, SWITCH) == []
    assert not rig.core.client_txs


# -- per-source counters and the verification mix (SPEC §6) ---------------------------------------


def test_verdicts_and_calls_active_counted_per_source() -> None:
    rig = Rig()
    to_ci = start_call(rig)
    assert rig.counters.sources[SWITCH[0]]["calls_active"] == 1
    to_b = only(rig.from_clearip(redirect(to_ci, CONTACTS)), to=PROV_B)
    ok = response_to(to_b, 200, "OK", mirror_rr=True, extra="Contact: <sip:b@10.0.0.14:5060>")
    only(rig.feed(ok, PROV_B), to=SWITCH)
    # answered: still in progress, as a dialog, until its BYE
    assert rig.counters.sources[SWITCH[0]]["calls_active"] == 1
    fwd = only(rig.feed(bye_from_callee(to_b), PROV_B), to=SWITCH)
    rig.feed(response_to(fwd, 200, "OK", to_tag=None), SWITCH)
    # a second caller: ClearIP declines
    other = ("10.0.0.12", 5060)
    to_ci = only(
        rig.feed(invite(call_id="c2", branch="z9hG4bK-c2", src=other), other), upstream=True
    )
    rig.from_clearip(response_to(to_ci, 603, "Decline"))
    # and a third call from the switch finds no ClearIP link
    rig.core.link_down(1, rig.now)
    rig.feed(invite(call_id="c3", branch="z9hG4bK-c3"), SWITCH)
    switch = rig.counters.sources[SWITCH[0]]
    assert switch == {
        "messages_in": 3,  # INVITE, the 200 to the BYE, INVITE
        "invites": 2,
        "clearip_302": 1,
        "clearip_unavailable": 1,
        "calls_active": 0,
    }
    assert rig.counters.sources[other[0]] == {
        "messages_in": 1,
        "invites": 1,
        "clearip_603": 1,
        "calls_active": 0,
    }
    assert rig.counters.sources[PROV_B[0]] == {"messages_in": 2}  # its 200 and its BYE
    assert rig.counters.values["calls_active"] == 0


def test_timeout_counted_per_source() -> None:
    rig = Rig()
    start_call(rig)
    rig.advance(2.1)
    assert rig.counters.sources[SWITCH[0]]["clearip_timeout"] == 1
    assert rig.counters.sources[SWITCH[0]]["calls_active"] == 0


def test_sources_past_the_limit_share_one_entry() -> None:
    from clearip.relay.counters import OTHER_SOURCE, Counters

    counters = Counters(max_sources=2)
    for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"):
        counters.count("calls_active", ip)
    counters.count("calls_active", "192.0.2.4", -1)
    assert counters.sources == {
        "192.0.2.1": {"calls_active": 1},
        "192.0.2.2": {"calls_active": 1},
        OTHER_SOURCE: {"calls_active": 1},
    }
    assert counters.values["calls_active"] == 3


def test_verstat_counted_from_p_asserted_identity() -> None:
    rig = Rig()
    pai = (
        "P-Asserted-Identity: <sip:+13035550199@ci.example;user=phone;verstat=TN-Validation-Passed>"
    )
    to_ci = start_call(rig)
    out = rig.from_clearip(redirect(to_ci, CONTACTS, identity=None, extra=pai))
    prov = only(out, to=PROV_B)
    assert b"verstat=TN-Validation-Passed" in (prov.get("p-asserted-identity") or b"")
    # in the first Contact's embedded headers, tel URI form
    to_ci = start_call(rig, call_id="c2", branch="z9hG4bK-c2")
    embedded = (
        "<sip:+12025550123@10.0.0.13:5060;user=phone"
        "?P-Asserted-Identity=%3Ctel:%2B13035550199%3Bverstat%3DTN-Validation-Failed%3E>"
    )
    rig.from_clearip(redirect(to_ci, embedded, identity=None))
    # no verstat at all: nothing counted
    to_ci = start_call(rig, call_id="c3", branch="z9hG4bK-c3")
    rig.from_clearip(redirect(to_ci, CONTACTS))
    assert rig.counters.verstat == {"TN-Validation-Passed": 1, "TN-Validation-Failed": 1}
    assert rig.counters.attestation == {"A": 1}
    snap = rig.counters.snapshot()
    assert snap["verstat"] == {"TN-Validation-Passed": 1, "TN-Validation-Failed": 1}
