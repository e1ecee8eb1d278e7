"""Fuzz target for the SIP message parser (atheris; run by `make fuzz`).

    .venv/bin/python tests/fuzz_parser.py -max_total_time=60 [corpus_dir ...]

Without a corpus directory it starts from SEEDS (written to a temporary directory) and, unless
`-dict=` is given, a dictionary of SIP tokens: from nothing, libFuzzer rarely builds a message
that gets past the start line in a short run.

Any input must give a message or SipProtocolError, and so must everything done to a parsed
message: check(), every typed accessor, the relay's edits and to_bytes(). Anything else escaping
is a crash. Beyond "no other exception" it checks a few invariants: what to_bytes() writes parses
back to the same bytes, and popping the first value of a list header leaves the others.

pytest does not collect this file (it is not test_*.py); tests/test_properties.py imports
`exercise` from it and feeds it hypothesis-mutated messages, so atheris is only needed to fuzz.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports():
        from clearip.sip.errors import SipProtocolError
        from clearip.sip.headers import LIST_HEADERS, NameAddr, split_list
        from clearip.sip.message import Request, SipMessage, build_response, parse_message
else:
    from clearip.sip.errors import SipProtocolError
    from clearip.sip.headers import LIST_HEADERS, NameAddr, split_list
    from clearip.sip.message import Request, SipMessage, build_response, parse_message


def attempt(fn: Callable[[], Any]) -> Any:
    """Call `fn`; SipProtocolError is an allowed outcome (returns None), anything else is not."""
    try:
        return fn()
    except SipProtocolError as exc:
        assert isinstance(exc.reason, str) and exc.reason
        assert 400 <= exc.status <= 699
        return None


def reparse(msg: SipMessage) -> bytes:
    """`msg.to_bytes()`, checked to parse back to exactly the same bytes."""
    out = msg.to_bytes()
    # to_bytes() may add a Content-Length line: allow for it in the limits
    again = parse_message(out, max_bytes=len(out), max_headers=msg.header_count + 1)
    assert again.to_bytes() == out, (out, again.to_bytes())
    assert again.content_length == len(msg.body)
    return out


def _name_addr(na: NameAddr) -> None:
    str(na)
    attempt(lambda: na.q)
    _ = na.tag, na.expires, na.display, na.uri, na.params


def read_everything(msg: SipMessage) -> None:
    """Every reading accessor; each may raise only SipProtocolError."""
    repr(msg)
    msg.header_lines()
    for key, _line in msg.header_lines():
        msg.has(key)
        msg.get(key)
        attempt(lambda key=key: msg.get_all(key))
    attempt(msg.check)
    vias = attempt(lambda: msg.vias) or []
    for via in vias:
        str(via)
        attempt(lambda via=via: via.rport)
        attempt(lambda via=via: via.ttl)
        _ = via.branch, via.received, via.maddr, via.sent_by, via.transport
    attempt(lambda: msg.top_via)
    cseq = attempt(lambda: msg.cseq)
    if cseq is not None:
        str(cseq)
    attempt(lambda: msg.call_id)
    for getter in (lambda: msg.from_, lambda: msg.to):
        na = attempt(getter)
        if na is not None:
            _name_addr(na)
    contacts = attempt(lambda: msg.contacts)
    if isinstance(contacts, list):
        for na in contacts:
            _name_addr(na)
    elif contacts is not None:
        str(contacts)
    for getter in (lambda: msg.routes, lambda: msg.record_routes):
        for na in attempt(getter) or []:
            _name_addr(na)
    attempt(lambda: msg.max_forwards)
    attempt(lambda: msg.content_length)


def edit_everything(msg: SipMessage) -> None:
    """The relay's edits, each on a fresh copy; the result must still parse back exactly."""
    for key in ("via", "route", "record-route"):
        clone = msg.copy()
        before = attempt(lambda clone=clone, key=key: clone.get_all(key))
        popped = attempt(lambda clone=clone, key=key: clone.pop_first_value(key))
        if before is not None and popped is not None:
            # the first line's first value goes (an empty line goes whole), the rest stays
            after = clone.get_all(key)
            if popped:
                assert (before[0], after) == (popped, before[1:]), (before, popped, after)
            else:
                assert after == before, (before, after)
        reparse(clone)

    clone = msg.copy()
    clone.prepend_header("Via", b"SIP/2.0/UDP fuzz.invalid;branch=z9hG4bK-fuzz")
    clone.prepend_header("Record-Route", b"<sip:fuzz.invalid;lr>")
    top = attempt(lambda: clone.top_via)  # the peer's own Vias may still be malformed
    assert top is None or top.host == "fuzz.invalid"
    reparse(clone)

    clone = msg.copy()
    clone.set_body(b"fuzz\r\n\r\nbody", "text/plain")
    clone.replace_header("Max-Forwards", b"70")
    clone.remove_header("route")
    assert clone.max_forwards == 70
    assert reparse(clone).endswith(b"\r\n\r\nfuzz\r\n\r\nbody")

    clone = msg.copy()
    clone.set_body(b"")
    clone.append_header("X-Fuzz", b"1")
    reparse(clone)

    if isinstance(msg, Request):
        clone = msg.copy()
        attempt(clone.decrement_max_forwards)
        clone.set_uri(b"sip:fuzz.invalid;lr")
        assert reparse(clone).startswith(b"%s sip:fuzz.invalid;lr " % msg.method.encode())
        response = attempt(lambda: build_response(msg, 400, "Bad Request", to_tag="fz"))
        if response is not None:
            reparse(response)


def exercise(data: bytes) -> None:
    """Parse `data` as a datagram and as a framed message, then use the message every way."""
    for framed in (False, True):
        msg = attempt(lambda framed=framed: parse_message(data, framed=framed))
        if msg is None:
            continue
        reparse(msg)
        read_everything(msg)
        edit_everything(msg)
        # split_list on every list header value, the way get_all would
        for key, line in msg.header_lines():
            if key in LIST_HEADERS:
                attempt(lambda line=line: split_list(line[line.index(b":") + 1 :]))


def TestOneInput(data: bytes) -> None:
    exercise(data)


SEEDS = (
    b"INVITE sip:bob@example.org SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport, SIP/2.0/TCP [2001:db8::1]\r\n"
    b'From: "A \\"q\\"" <sip:a@example.net>;tag=1\r\n'
    b"To: Bob <sip:bob@example.org>\r\n"
    b"Call-ID: c@h\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
    b"Contact: <sip:a@192.0.2.1>;q=0.5;expires=60, sip:b@h\r\n"
    b"Route: <sip:p1;lr>,<sip:p2;lr>\r\nl: 4\r\n\r\nbody",
    b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP h;received=192.0.2.9;ttl=1\r\nm: *\r\n"
    b"f: <sip:a@h>;tag=1\r\nt: sip:b@h\r\ni: x\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
)


DICTIONARY = (
    b"\r\n",
    b"\r\n\r\n",
    b"\r\n ",
    b"SIP/2.0",
    b"SIP/2.0/UDP ",
    b"INVITE",
    b"ACK",
    b"sip:",
    b"Via:",
    b"v:",
    b"From:",
    b"To:",
    b"Call-ID:",
    b"CSeq:",
    b"Contact:",
    b"m:",
    b"Route:",
    b"Record-Route:",
    b"Max-Forwards:",
    b"Content-Length:",
    b"l:",
    b";branch=z9hG4bK",
    b";tag=",
    b";rport",
    b";received=",
    b";ttl=",
    b";q=",
    b";expires=",
    b"<sip:",
    b">",
    b'"',
    b"\\",
    b"[2001:db8::1]",
    b":5060",
    b"4294967295",
    b"4294967296",
    b"255",
    b"256",
    b"*",
)


def _default_args(argv: list[str]) -> list[str]:
    """argv plus a seeded corpus directory and a dictionary when none was given."""
    args = list(argv)
    work = Path(tempfile.mkdtemp(prefix="fuzz_parser."))
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = work / "corpus"
        corpus.mkdir()
        for i, seed in enumerate(SEEDS):
            (corpus / f"seed{i}").write_bytes(seed)
        args.append(str(corpus))
    if not any(a.startswith("-dict=") for a in args[1:]):
        entries = ('"' + "".join(f"\\x{b:02x}" for b in tok) + '"' for tok in DICTIONARY)
        (work / "sip.dict").write_text("\n".join(entries) + "\n")
        args.append(f"-dict={work / 'sip.dict'}")
    return args


if __name__ == "__main__":
    for seed in SEEDS:
        exercise(seed)
    atheris.Setup(_default_args(sys.argv), TestOneInput)
    atheris.Fuzz()
