"""Forged answers (issue 11): a response counts only from where its request went.

Reproduced on main: while ClearIP was slow, another host that knew the branch sent a 302 over
UDP from its own address with its own Contact and a fake Identity, and the proxy took it as
ClearIP's verdict, sending the call to the forger. Branches were guessable besides.
"""

from __future__ import annotations

from clearip.relay.core import ProxyCore
from clearip.relay.counters import Counters
from clearip.sip.message import Request
from tests.core_rig import PROV_A, PROV_B, SWITCH, Rig, invite, msgs, only, redirect, response_to
from tests.test_core_flows import CONTACTS, start_call

FORGER = ("10.0.0.66", 5060)
EVIL_CONTACT = "<sip:+12025550123@10.0.0.66:5060>"


def test_a_forged_302_over_udp_is_ignored_and_clearips_own_is_taken() -> None:
    rig = Rig()
    to_ci = start_call(rig)
    forged = redirect(to_ci, EVIL_CONTACT, identity="forged.identity.sig;info=<x>")
    assert rig.feed(forged, FORGER) == []
    assert rig.counters.drops["response_forged"] == 1
    # ... also when it comes in on a stream that is not the ClearIP link
    assert rig.feed(forged, FORGER, transport="tls", conn=77) == []
    assert rig.counters.drops["response_forged"] == 2
    out = rig.from_clearip(redirect(to_ci, CONTACTS))
    assert only(out, to=PROV_B).method == "INVITE"
    assert not msgs(out, to=FORGER)


def test_a_302_on_another_clearip_connection_is_not_this_transactions() -> None:
    rig = Rig()
    rig.core.link_up(2, rig.now)
    to_ci = start_call(rig)
    sent_on = next(s for s in rig.sent if s.target.upstream).target.conn
    other = 2 if sent_on == 1 else 1
    forged = redirect(to_ci, EVIL_CONTACT)
    assert rig.feed(forged, ("10.0.0.2", 5061), "tls", other, upstream=True) == []
    assert rig.counters.drops["response_forged"] == 1


def test_a_providers_answer_counts_only_from_its_address_and_port() -> None:
    rig = Rig()
    to_ci = start_call(rig)
    to_b = only(rig.from_clearip(redirect(to_ci, CONTACTS)), to=PROV_B)
    ok = response_to(to_b, 200, "OK", mirror_rr=True, extra="Contact: <sip:b@10.0.0.14:5060>")
    assert rig.feed(ok, (PROV_B[0], 5999)) == []  # same host, another port
    assert rig.feed(ok, PROV_A) == []  # the other provider
    assert rig.counters.drops["response_forged"] == 2
    assert only(rig.feed(ok, PROV_B), to=SWITCH).status == 200


def test_an_unmatched_2xx_is_never_forwarded_statelessly() -> None:
    """Our branch on top and any address below it: main forwarded the body there, even over a
    new TCP connection to any host:port."""
    rig = Rig()
    fake = (
        f"SIP/2.0 200 OK\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.1:5070;branch={rig.core.ids.branch()}\r\n"
        f"Via: SIP/2.0/TCP 203.0.113.9:25;branch=z9hG4bK-victim\r\n"
        f"From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n"
        f"Content-Length: 12\r\n\r\nHELO victim\n"
    ).encode()
    assert rig.feed(fake, FORGER) == []
    assert rig.counters.drops["response_unmatched"] == 1


def test_branches_and_tags_carry_64_random_bits() -> None:
    core = ProxyCore(Rig().core.config, Rig().core.env, Counters(), worker=1, instance="abcd1234")
    branches = {core.ids.branch() for _ in range(1000)}
    assert len(branches) == 1000
    for b in branches:
        magic, worker, instance, rnd = b.split(".")
        assert (magic, worker, instance, len(rnd)) == ("z9hG4bK", "cip1", "abcd1234", 16)
    assert len({core.ids.tag() for _ in range(1000)}) == 1000


def test_injected_randomness_gives_exact_ids() -> None:
    rig = Rig()
    core = ProxyCore(
        rig.core.config, rig.core.env, Counters(), instance="0badcafe",
        random_bytes=lambda n: b"\x11" * n,
    )  # fmt: skip
    assert core.ids.branch() == "z9hG4bK.cip0.0badcafe.1111111111111111"
    assert core.ids.tag() == "cip1111111111111111"


def test_loop_detection_by_instance_a_twin_proxys_via_is_no_loop() -> None:
    rig = Rig()
    twin = "Via: SIP/2.0/UDP 10.0.0.9:5070;branch=z9hG4bK.cip0.feedf00d.0123456789abcdef\r\n"
    out = rig.feed(invite(extra=twin), SWITCH)
    assert only(out, to=SWITCH).status == 100  # routed, not 482
    ours = f"Via: SIP/2.0/UDP 10.0.0.1:5070;branch={rig.core.ids.branch()}\r\n"
    looped = rig.feed(invite(call_id="loop", branch="z9hG4bK-l", extra=ours), SWITCH)
    resp = only(looped, to=SWITCH)
    assert not isinstance(resp, Request) and resp.status == 482
