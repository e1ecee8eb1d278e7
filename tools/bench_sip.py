"""Micro-benchmark of the SIP message core: parses and edits per second.

Run by `make bench`. Prints a table and, with --json, one JSON object. Figures, not assertions:
the relay's budget per message is what these numbers are compared against.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

from clearip.sip.message import Request, Response, parse_message

INVITE = (
    b"INVITE sip:+12025550123@127.0.0.10:5060;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.11:5060;branch=z9hG4bK-4711-1-0\r\n"
    b"From: <sip:+13035550199@127.0.0.11:5060;user=phone>;tag=4711SW1\r\n"
    b"To: <sip:+12025550123@127.0.0.10:5060;user=phone>\r\n"
    b"Call-ID: 1-4711@127.0.0.11\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:+13035550199@127.0.0.11:5060;transport=UDP>\r\n"
    b"Max-Forwards: 70\r\n"
    b"P-Asserted-Identity: <sip:+13035550199@127.0.0.11;user=phone>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 170\r\n"
    b"\r\n"
    b"v=0\r\no=switch 53655765 2353687637 IN IP4 127.0.0.11\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 6000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
)

_JWS = (
    "eyJhbGciOiJFUzI1NiIsInBwdCI6InNoYWtlbiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly9jci5l"
    "eGFtcGxlLm9yZy9jZXJ0LnBlbSJ9.eyJhdHRlc3QiOiJBIiwiZGVzdCI6eyJ0biI6WyIxMjAyNTU1MDEyMyJdLCJ1"
    "cmkiOlsic2lwOisxMjAyNTU1MDEyM0BzYmMuY2Fycmllci1iLmV4YW1wbGUubmV0Il19LCJpYXQiOjE3MzI3ODA4"
    "MDAsIm9yaWciOnsidG4iOiIxMzAzNTU1MDE5OSJ9LCJvcmlnaWQiOiI0NDM3YzdlYi04ZjdhLTRmMGUtYTg2My1m"
    "NTNhMGU2MDI1MWEifQ.rAzr16LXDK38gMTDoty1ia_JcoSJ3IOtbtodzC7tTqHyJBpuOE73LgrkuEzX23qPUCHdEN7"
    "LlealGy9z7h5vhAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
)
IDENTITY = f"{_JWS};info=<https://cr.example.org/cert.pem>;alg=ES256;ppt=shaken".encode()

REDIRECT_302 = (
    b"SIP/2.0 302 Moved Temporarily\r\n"
    b"Via: SIP/2.0/TCP 127.0.0.10:5060;branch=z9hG4bK-proxy-1;rport=5060\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.11:5060;branch=z9hG4bK-4711-1-0\r\n"
    b"From: <sip:+13035550199@127.0.0.11:5060;user=phone>;tag=4711SW1\r\n"
    b"To: <sip:+12025550123@127.0.0.10:5060;user=phone>;tag=4711CI1\r\n"
    b"Call-ID: 1-4711@127.0.0.11\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:+12025550123@127.0.0.13:5060;user=phone>;q=1.0, "
    b"<sip:+12025550123@127.0.0.14:5060;user=phone>;q=0.5\r\n"
    b"Contact: <sip:+12025550123@127.0.0.15:5060;transport=tcp;user=phone>;q=0.2\r\n"
    b"Identity: " + IDENTITY + b"\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def _rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of `fn`, measured over about `seconds` after a short warm-up."""
    for _ in range(200):
        fn()
    n = 0
    batch = 500
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            fn()
        n += batch
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def _edit_invite(raw: bytes) -> bytes:
    """What the relay does to the switch's INVITE on its way to ClearIP."""
    msg = parse_message(raw)
    assert isinstance(msg, Request)
    msg.check()
    msg.prepend_header("Via", "SIP/2.0/TCP 127.0.0.10:5060;branch=z9hG4bK-proxy-1;rport")
    msg.decrement_max_forwards()
    msg.prepend_header("Record-Route", "<sip:127.0.0.10:5060;lr>")
    return msg.to_bytes()


def _apply_302(invite: Request, raw_302: bytes) -> bytes:
    """What the relay does with ClearIP's 302: order Contacts, copy Identity, retarget."""
    resp = parse_message(raw_302)
    assert isinstance(resp, Response)
    contacts = resp.contacts
    assert isinstance(contacts, list)
    first = sorted(contacts, key=lambda c: -c.q)[0]
    identity = resp.get("identity")
    assert identity is not None
    out = invite.copy()
    assert isinstance(out, Request)
    out.set_uri(first.uri)
    out.replace_header("Identity", identity)
    out.prepend_header("Via", "SIP/2.0/UDP 127.0.0.10:5060;branch=z9hG4bK-proxy-2;rport")
    out.decrement_max_forwards()
    out.prepend_header("Record-Route", "<sip:127.0.0.10:5060;lr>")
    return out.to_bytes()


def run(seconds: float) -> dict[str, float]:
    invite = parse_message(INVITE)
    assert isinstance(invite, Request)
    return {
        "parse_invite": _rate(lambda: parse_message(INVITE), seconds),
        "parse_check_invite": _rate(lambda: parse_message(INVITE).check(), seconds),
        "edit_invite": _rate(lambda: _edit_invite(INVITE), seconds),
        "parse_302": _rate(lambda: parse_message(REDIRECT_302), seconds),
        "parse_302_contacts_identity": _rate(
            lambda: (m := parse_message(REDIRECT_302)).contacts and m.get("identity"), seconds
        ),
        "apply_302": _rate(lambda: _apply_302(invite, REDIRECT_302), seconds),
    }


LABELS = {
    "parse_invite": "parse INVITE (start line + header lines)",
    "parse_check_invite": "parse INVITE + check (Via, CSeq, From, To ...)",
    "edit_invite": "parse + check + edit INVITE (Via, Max-Forwards, RR) + bytes",
    "parse_302": f"parse 302 ({len(REDIRECT_302)} B, Identity {len(IDENTITY)} B, 3 Contacts)",
    "parse_302_contacts_identity": "parse 302 + Contacts + Identity",
    "apply_302": "parse 302 + build provider INVITE (Identity, R-URI, Via, RR)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args()
    results = run(args.seconds)
    if args.json:
        print(json.dumps({"python": platform.python_version(), "ops_per_s": results}))
        return
    print(f"SIP core benchmark: Python {platform.python_version()}, {platform.machine()}")
    print(f"{'operation':<66} {'ops/s':>10} {'us/op':>8}")
    for key, rate in results.items():
        print(f"{LABELS[key]:<66} {rate:>10,.0f} {1e6 / rate:>8.1f}")


if __name__ == "__main__":
    main()
