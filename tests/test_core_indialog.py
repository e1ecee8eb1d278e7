"""What a pinholed provider may send (SPEC §5): requests within its own dialog, to the caller.

Only the switch is trusted here. Provider B answers a call, so the proxy holds a dialog with it
and its address is pinholed; everything it sends outside that dialog -- a made-up dialog, a
real dialog's Call-ID with other tags, a method it has no business sending, a Route to anywhere
else -- is refused (481 or a counted drop), never forwarded anywhere.
"""

from __future__ import annotations

import pytest

from clearip.config import parse_config
from clearip.sip.message import Request
from tests.core_rig import BASE_CONFIG, PROV_B, SWITCH, UNTRUSTED, Rig, only, redirect, response_to
from tests.test_core_flows import CONTACTS, start_call

ELSEWHERE = "198.51.100.99"


def answered_call(untrusted: str = "drop") -> Rig:
    """A call from the switch answered by provider B (untrusted), dialog up."""
    rig = Rig()
    rig.core.env.trusted_prefix = "10.0.0.11"  # only the switch
    if untrusted != "drop":
        trusted = 'sources = ["10.0.0.0/24"]'
        rig.core.config = parse_config(
            BASE_CONFIG.replace(trusted, f'{trusted}\nuntrusted = "{untrusted}"')
        )
    to_ci = start_call(rig)
    to_b = only(rig.from_clearip(redirect(to_ci, CONTACTS)), to=PROV_B)
    ok = response_to(to_b, 200, "OK", mirror_rr=True, extra="Contact: <sip:b@10.0.0.14:5060>")
    only(rig.feed(ok, PROV_B), to=SWITCH)
    assert rig.core.is_pinholed(PROV_B[0])
    return rig


def request(
    method: str,
    *,
    uri: str = "sip:+13035550199@10.0.0.11:5060",
    call_id: str = "call-1@10.0.0.11",
    from_tag: str = "uas-tag",
    to_tag: str = "sw-tag",
    route: str = "<sip:10.0.0.1:5060;lr>",
    src: tuple[str, int] = PROV_B,
    branch: str = "",
) -> bytes:
    route_line = f"Route: {route}\r\n" if route else ""
    branch = branch or f"z9hG4bK-{method.lower()}-rogue"
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {src[0]}:{src[1]};branch={branch}\r\n"
        f"{route_line}"
        f"From: <sip:+12025550123@10.0.0.1;user=phone>;tag={from_tag}\r\n"
        f"To: <sip:+18005550199@{ELSEWHERE}>;tag={to_tag}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 7 {method}\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:b@{src[0]}:{src[1]}>\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def refused(rig: Rig, data: bytes, src: tuple[str, int] = PROV_B) -> list:
    before = rig.counters.drops.get("indialog_refused", 0)
    out = rig.feed(data, src)
    assert all(s.target.host == src[0] for s in out), f"forwarded: {out}"
    assert rig.counters.drops.get("indialog_refused", 0) == before + 1
    return out


def test_the_open_relay_of_issue_10_is_closed() -> None:
    """The reproduced attack: an INVITE with a made-up To tag and Call-ID, routed through us
    to any host, from the pinholed provider's address."""
    rig = answered_call()
    rogue = request(
        "INVITE", uri=f"sip:+18005550199@{ELSEWHERE}:5099", call_id="never-seen", to_tag="made-up"
    )
    assert refused(rig, rogue) == []  # drop mode: silent
    assert not rig.core.client_txs or all(
        r.target.host != ELSEWHERE for r in rig.core.client_txs.values()
    )


@pytest.mark.parametrize("method", ["INVITE", "MESSAGE", "BYE", "REFER", "OPTIONS"])
def test_made_up_dialog_gets_481_in_403_mode(method: str) -> None:
    rig = answered_call(untrusted="403")
    out = refused(rig, request(method, call_id="never-seen", to_tag="made-up"))
    assert [m.status for m in (only(out, to=PROV_B),)] == [481]


def test_real_call_id_with_other_tags_is_refused() -> None:
    rig = answered_call()
    refused(rig, request("BYE", to_tag="guessed"))
    refused(rig, request("BYE", from_tag="not-the-callee"))


@pytest.mark.parametrize("method", ["MESSAGE", "REFER", "SUBSCRIBE", "OPTIONS"])
def test_methods_a_provider_has_no_business_sending(method: str) -> None:
    refused(answered_call(), request(method))


def test_in_dialog_request_routed_anywhere_but_the_caller_is_refused() -> None:
    rig = answered_call()
    refused(rig, request("BYE", uri=f"sip:x@{ELSEWHERE}:5060"))
    refused(rig, request("INVITE", route=f"<sip:10.0.0.1:5060;lr>, <sip:{ELSEWHERE};lr>"))
    refused(rig, request("ACK", uri=f"sip:x@{ELSEWHERE}:5060"))


def test_the_dialogs_own_bye_still_reaches_the_switch() -> None:
    rig = answered_call()
    fwd = only(rig.feed(request("BYE"), PROV_B), to=SWITCH)
    assert isinstance(fwd, Request) and fwd.method == "BYE"
    assert rig.counters.drops.get("indialog_refused", 0) == 0


def test_re_invite_from_the_callee_reaches_the_switch() -> None:
    rig = answered_call()
    out = rig.feed(request("INVITE"), PROV_B)
    fwd = only(out, to=SWITCH)
    assert isinstance(fwd, Request) and fwd.method == "INVITE"


def test_a_stranger_is_never_the_far_end() -> None:
    rig = answered_call()
    assert refused(rig, request("BYE", src=UNTRUSTED), UNTRUSTED) == []  # the dialog's tags
    out = rig.feed(request("BYE", src=UNTRUSTED, call_id="other"), UNTRUSTED)
    assert out == [] and rig.counters.values["dropped_untrusted"] == 1  # no dialog: a stranger


def test_trusted_in_dialog_invite_for_unknown_dialog_is_relayed_and_counted() -> None:
    rig = Rig()
    reinvite = request(
        "INVITE",
        uri="sip:b@10.0.0.14:5060",
        call_id="lost-in-a-restart",
        from_tag="sw-tag",
        to_tag="uas-tag",
        src=SWITCH,
    )
    out = rig.feed(reinvite, SWITCH)
    assert only(out, to=PROV_B).method == "INVITE"
    assert rig.counters.values["indialog_unknown"] == 1


def test_a_next_hop_named_by_host_is_pinholed_by_the_address_used() -> None:
    rig = Rig()
    rig.core.env.trusted_prefix = "10.0.0.11"
    to_ci = start_call(rig)
    out = rig.from_clearip(redirect(to_ci, "<sip:+12025550123@gw.provider.example:5060>"))
    branch = [s for s in out if s.target.host == "gw.provider.example"]
    assert len(branch) == 1 and rig.core.env.pinholes == []  # not resolved yet: no address
    rig.core.resolved(branch[0].token, "10.0.0.14")  # what the adapter does before sending
    assert rig.core.env.pinholes == [("10.0.0.14", True)]
    assert rig.core.is_pinholed("10.0.0.14")


def test_a_silent_dialog_is_forgotten_after_twelve_hours() -> None:
    """A dialog whose BYE never comes (lost, or sent through another proxy) must not hold its
    table entry and pinhole for ever."""
    rig = answered_call()
    rig.advance(12 * 3600 + 1)
    assert rig.core.dialogs == {} and not rig.core.is_pinholed(PROV_B[0])


def test_a_call_that_still_talks_outlives_twelve_hours() -> None:
    """Issue 10, finding 2 at the dialog level: the age counts from the last request in the
    dialog, not from the call's start, so a long call's BYE still reaches the switch."""
    rig = answered_call()
    for refresh in range(1, 5):  # a session refresh from the callee every 6 hours
        rig.advance(6 * 3600)
        cseq = f"CSeq: {10 + refresh} UPDATE"
        update = request("UPDATE", branch=f"z9hG4bK-refresh-{refresh}")
        only(rig.feed(update.replace(b"CSeq: 7 UPDATE", cseq.encode()), PROV_B), to=SWITCH)
    assert rig.core.is_pinholed(PROV_B[0])  # 24 h into the call
    fwd = only(rig.feed(request("BYE"), PROV_B), to=SWITCH)
    assert isinstance(fwd, Request) and fwd.method == "BYE"
