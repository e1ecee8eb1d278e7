"""Every call ends (issue 11): odd but legal input from ClearIP and providers, and bugs.

Found on main by review and confirmed by driving the core: a folded Identity in the 302 was
copied raw, the header writer refused the CRLF, and the call, its server and client
transactions stayed with no timer -- the switch had a 100 and never a final answer.
"""

from __future__ import annotations

import pytest

from clearip import build
from clearip.relay.call import Call
from clearip.sip.message import Request, Response
from tests.core_rig import (
    IDENTITY,
    PROV_A,
    PROV_B,
    SWITCH,
    Rig,
    invite,
    msgs,
    only,
    redirect,
    response_to,
)
from tests.test_core_flows import CONTACTS, start_call

# A compiled class's methods call each other natively: a patched one is never called. These run
# in the pure leg of `make test` (CLEARIP_BUILD=pure).
patches_methods = pytest.mark.skipif(
    build.BUILD == "compiled", reason="patches a method of a compiled class (pure leg only)"
)

FOLDED_IDENTITY = IDENTITY[:60] + "\r\n   " + IDENTITY[60:]


def finals_to_switch(rig: Rig) -> list[int]:
    """The distinct final responses the switch got (retransmissions of one counted once)."""
    seen: dict[bytes, int] = {}
    for s in rig.sent:
        if (s.target.host, s.target.port) == SWITCH:
            m = msgs([s])[0]
            if isinstance(m, Response) and m.status >= 200:
                seen[s.data] = m.status
    return list(seen.values())


def drained(rig: Rig) -> bool:
    rig.advance(300)
    core = rig.core
    return not (core.calls or core.server_txs or core.client_txs or core.pinholes)


@pytest.mark.parametrize(
    "extra",
    [
        f"Identity: {FOLDED_IDENTITY}",
        "P-Asserted-Identity: <sip:+13035550199@10.0.0.2;user=phone>,\r\n\t<tel:+13035550199>",
        "P-Asserted-Identity:\r\n <sip:+1303@x;verstat=TN-Validation-Passed>",
    ],
)
def test_folded_headers_from_clearip_are_unfolded_onto_the_next_hop(extra: str) -> None:
    rig = Rig()
    to_ci = start_call(rig)
    out = rig.from_clearip(redirect(to_ci, CONTACTS, identity=None, extra=extra))
    prov = only(out, to=PROV_B)
    assert isinstance(prov, Request)
    name = extra.split(":", 1)[0].lower()
    values = prov.get_all(name)
    assert values and all(b"\r" not in v and b"\n" not in v for v in values)
    assert b"\r\n " not in prov.to_bytes() and b"\r\n\t" not in prov.to_bytes()
    ok = response_to(prov, 200, "OK", mirror_rr=True, extra="Contact: <sip:b@10.0.0.14>")
    assert only(rig.feed(ok, PROV_B), to=SWITCH).status == 200


def test_a_contact_with_encoded_crlf_or_nul_is_skipped_for_the_next() -> None:
    rig = Rig()
    to_ci = start_call(rig)
    evil = "<sip:+12025550123@10.0.0.14:5060?Identity=abc%0D%0AX-Evil%3A%201&X-Nul=a%00b>"
    out = rig.from_clearip(redirect(to_ci, f"{evil}, <sip:+12025550123@10.0.0.13:5060>"))
    prov = only(out, to=PROV_A)
    assert isinstance(prov, Request)
    assert not prov.has("x-evil") and not prov.has("x-nul") and not msgs(out, to=PROV_B)


ODD_REDIRECTS = [
    pytest.param("Contact: <sip:a@10.0.0.14>;q=nonsense", id="bad-q"),
    pytest.param("Contact: <mailto:x@y>", id="not-sip"),
    pytest.param("Contact: *", id="star"),
    pytest.param("Identity: " + "A" * 60000, id="huge-identity"),
    pytest.param("Contact: <sip:a@10.0.0.14;transport=sctp>", id="sctp"),
    pytest.param("Contact: <sip:a@10.0.0.14:99999>", id="bad-port"),
]


@pytest.mark.parametrize("extra", ODD_REDIRECTS)
def test_odd_redirects_still_end_the_call(extra: str) -> None:
    rig = Rig()
    to_ci = start_call(rig)
    resp = redirect(to_ci, "<sip:+12025550123@10.0.0.14:5060>", identity=None)
    if extra.startswith("Contact"):
        resp = resp.replace(b"Contact: <sip:+12025550123@10.0.0.14:5060>", extra.encode())
    else:
        resp = resp.replace(b"Content-Length: 0", extra.encode() + b"\r\nContent-Length: 0")
    rig.from_clearip(resp)
    for s in list(rig.sent):
        if (s.target.host, s.target.port) == PROV_B:
            prov = msgs([s])[0]
            if isinstance(prov, Request) and prov.method == "INVITE":
                rig.feed(response_to(prov, 503, "Down"), PROV_B)
    rig.advance(10)
    assert len(finals_to_switch(rig)) == 1, finals_to_switch(rig)
    assert drained(rig)


@patches_methods
@pytest.mark.parametrize(
    "step",
    ["_start_providers", "_next_branch", "_ringing", "_clearip_answered"],
)
def test_a_bug_in_any_step_ends_the_call_with_500_and_clean_tables(
    step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kw: object) -> None:
        raise RuntimeError(f"injected bug in {step}")

    rig = Rig()
    to_ci = start_call(rig)
    if step == "_ringing":
        to_b = only(rig.from_clearip(redirect(to_ci, CONTACTS)), to=PROV_B)
        monkeypatch.setattr(Call, step, broken)
        rig.feed(response_to(to_b, 180, "Ringing"), PROV_B)
    else:
        monkeypatch.setattr(Call, step, broken)
        rig.from_clearip(redirect(to_ci, CONTACTS))
    assert finals_to_switch(rig) == [500]
    assert rig.counters.values["internal_errors"] == 1
    assert drained(rig)


@patches_methods
def test_a_bug_when_a_call_starts_still_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Call, "_ask_clearip", lambda *a: 1 / 0)
    rig = Rig()
    rig.feed(invite(), SWITCH)
    assert finals_to_switch(rig) == [500]
    assert drained(rig)


def options(extra: str = "", uri: str = "sip:10.0.0.1:5060") -> bytes:
    return (
        f"OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.11:5060;branch=z9hG4bK-opt\r\n"
        f"From: <sip:ping@10.0.0.11>;tag=p\r\nTo: <sip:10.0.0.1>\r\nCall-ID: ping\r\n"
        f"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(options("X-Note: a\x00b\r\n"), id="nul-in-value"),
        pytest.param(options("X-Note: a\x1b[2Jb\r\n"), id="escape-in-value"),
        pytest.param(options("User-Agent: x\x7f\r\n"), id="del-in-value"),
        pytest.param(options(uri="sip:@@@:abc;;;>"), id="unparsable-request-uri"),
    ],
)
def test_bad_input_gets_400_even_for_options(data: bytes) -> None:
    """Issue 12: both got 200 OK on main (downstream C parsers truncate at NUL)."""
    rig = Rig()
    resp = only(rig.feed(data, SWITCH), to=SWITCH)
    assert isinstance(resp, Response) and resp.status == 400
    assert rig.counters.values["malformed"] == 1


def test_every_drop_is_counted_with_its_reason() -> None:
    """Issue 12: these dropped silently on main."""
    from tests.test_core_indialog import request

    rig = Rig()
    rig.from_clearip(request("BYE", src=("10.0.0.2", 5061)))
    ack = request("ACK", uri="sip:b@10.0.0.14:5060", to_tag="", src=SWITCH)
    rig.feed(ack.replace(b";tag=\r\n", b"\r\n"), SWITCH)
    dead = request("ACK", uri="sip:b@10.0.0.14:5060", to_tag="t", src=SWITCH)
    rig.feed(dead.replace(b"Max-Forwards: 70", b"Max-Forwards: 0"), SWITCH)
    assert rig.counters.drops == {"upstream_request": 1, "ack_unmatched": 1, "max_forwards": 1}
    assert rig.sent == []


def test_not_registered_hint_is_throttled() -> None:
    rig = Rig()
    for n in range(3):
        to_ci = start_call(rig, call_id=f"nr-{n}", branch=f"z9hG4bK-nr-{n}")
        rig.from_clearip(response_to(to_ci, 404, "Not Found", to_tag="ci"))
        rig.advance(10)
    assert rig.core.env.notices == [("not_registered", {"status": 404})]
    rig.advance(60)
    to_ci = start_call(rig, call_id="nr-late", branch="z9hG4bK-nr-late")
    rig.from_clearip(response_to(to_ci, 403, "Forbidden", to_tag="ci"))
    assert rig.core.env.notices[-1] == ("not_registered", {"status": 403})
