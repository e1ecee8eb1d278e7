"""SIP messages over their raw bytes: parsing, typed accessors, edits, errors (exact bytes)."""

from __future__ import annotations

import pytest

from clearip.sip import limits
from clearip.sip.errors import SipProtocolError
from clearip.sip.headers import (
    COMPACT_FORMS,
    STAR,
    CSeq,
    NameAddr,
    Via,
    first_element_end,
    header_key,
    parse_cseq,
    parse_name_addr,
    parse_via,
    split_list,
    unfold,
)
from clearip.sip.message import Request, Response, build_response, parse_message

SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\n\r\nc=IN IP4 192.0.2.10\r\n"

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 60\r\n"
    b"\r\n" + SDP
)
assert len(SDP) == 60

RINGING = (
    b"SIP/2.0 180 Ringing\r\n"
    b"Via: SIP/2.0/UDP proxy.example.net;branch=z9hG4bK-p1;received=192.0.2.7\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def request(data: bytes, **kwargs: object) -> Request:
    msg = parse_message(data, **kwargs)  # type: ignore[arg-type]
    assert isinstance(msg, Request)
    return msg


def response(data: bytes) -> Response:
    msg = parse_message(data)
    assert isinstance(msg, Response)
    return msg


def rejects(data: bytes, status: int = 400, **kwargs: object) -> str:
    """Parse and check `data`, expecting SipProtocolError with `status`; returns its reason."""
    with pytest.raises(SipProtocolError) as info:
        parse_message(data, **kwargs).check()  # type: ignore[arg-type]
    assert info.value.status == status
    assert info.value.reason
    return info.value.reason


def with_header(line: bytes, base: bytes = INVITE) -> bytes:
    """`base` with `line` added just before its Content-Length line."""
    head, sep, rest = base.partition(b"Content-Length:")
    return head + line + b"\r\n" + sep + rest


def replace_line(old: bytes, new: bytes, base: bytes = INVITE) -> bytes:
    assert base.count(old) == 1
    return base.replace(old, new)


# ---------------------------------------------------------------------------------------------
# Parsing: start lines, raw bytes kept


def test_request_fields_and_raw_bytes_kept() -> None:
    msg = request(INVITE)
    assert msg.is_request
    assert msg.method == "INVITE"
    assert msg.uri == b"sip:bob@biloxi.example.com"
    assert msg.first_line == b"INVITE sip:bob@biloxi.example.com SIP/2.0"
    assert msg.body == SDP
    assert msg.header_count == 9
    assert msg.header_lines()[:3] == [
        ("via", b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds"),
        ("max-forwards", b"Max-Forwards: 70"),
        ("to", b"To: Bob <sip:bob@biloxi.example.com>"),
    ]
    msg.check()
    assert msg.to_bytes() == INVITE
    assert bytes(msg) == INVITE
    assert repr(msg) == "<Request INVITE sip:bob@biloxi.example.com>"


def test_response_fields() -> None:
    msg = response(RINGING)
    assert not msg.is_request
    assert msg.status == 180
    assert msg.reason == b"Ringing"
    assert msg.body == b""
    msg.check()
    assert msg.to_bytes() == RINGING
    assert repr(msg) == "<Response 180 Ringing>"


def test_response_reason_kept_as_bytes_with_spaces_and_utf8() -> None:
    raw = RINGING.replace(b"180 Ringing", "183 Session  Progress – früh".encode())
    msg = response(raw)
    assert msg.status == 183
    assert msg.reason == "Session  Progress – früh".encode()
    assert msg.to_bytes() == raw


def test_response_without_reason_phrase() -> None:
    assert response(RINGING.replace(b"180 Ringing", b"180 ")).reason == b""
    assert response(RINGING.replace(b"180 Ringing", b"180")).reason == b""
    assert (
        response(RINGING.replace(b"180 Ringing", b"180 "))
        .to_bytes()
        .startswith(b"SIP/2.0 180 \r\n")
    )


def test_version_is_case_insensitive() -> None:
    msg = request(INVITE.replace(b"SIP/2.0\r\n", b"sip/2.0\r\n", 1))
    assert msg.first_line == b"INVITE sip:bob@biloxi.example.com sip/2.0"
    assert response(RINGING.replace(b"SIP/2.0 180", b"sIp/2.0 180")).status == 180


def test_leading_crlfs_are_skipped() -> None:
    msg = request(b"\r\n\r\n\r\n" + INVITE)
    assert msg.to_bytes() == INVITE


def test_datagram_without_blank_line_has_no_body() -> None:
    raw = RINGING[: -len(b"\r\n")]  # ends "Content-Length: 0\r\n"
    msg = response(raw)
    assert msg.body == b""
    assert msg.to_bytes() == RINGING


def test_extension_method_and_unknown_scheme() -> None:
    raw = INVITE.replace(b"INVITE sip:bob@biloxi.example.com", b"FROBNICATE urn:x-y:z").replace(
        b"314159 INVITE", b"314159 FROBNICATE"
    )
    msg = request(raw)
    assert msg.method == "FROBNICATE"
    assert msg.uri == b"urn:x-y:z"
    msg.check()


def test_bytearray_and_memoryview_input() -> None:
    assert request(bytearray(INVITE)).to_bytes() == INVITE
    assert request(memoryview(INVITE)).to_bytes() == INVITE  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Header lookup


@pytest.mark.parametrize(("compact", "full"), sorted(COMPACT_FORMS.items()))
def test_every_compact_form(compact: str, full: str) -> None:
    if compact == "l":
        value = b"60"
        raw = INVITE.replace(b"Content-Length: 60", b"l: 60")
    else:
        value = b"x-" + compact.encode()
        raw = with_header(compact.encode() + b": " + value)
    msg = parse_message(raw)
    assert header_key(compact) == full
    assert header_key(compact.upper()) == full
    assert msg.has(full)
    assert msg.has(full.upper())
    assert msg.has(compact)
    assert value in msg.get_all(full)
    assert value in msg.get_all(compact.upper())
    assert msg.to_bytes() == raw


def test_lookup_is_case_insensitive_and_first_line_wins() -> None:
    raw = with_header(b"x-CUSTOM: one\r\nX-Custom : two")
    msg = parse_message(raw)
    for name in ("X-Custom", "x-custom", "X-CUSTOM"):
        assert msg.get(name) == b"one"
        assert msg.get_all(name) == [b"one", b"two"]
    assert msg.get("X-Absent") is None
    assert msg.get_all("X-Absent") == []
    assert not msg.has("X-Absent")
    assert msg.to_bytes() == raw


def test_compact_and_full_names_are_one_header() -> None:
    raw = replace_line(
        b"Contact: <sip:alice@pc33.atlanta.example.com>",
        b"m: <sip:a@h1>\r\nCONTACT: <sip:a@h2>, <sip:a@h3>\r\nm: <sip:a@h4>",
    )
    msg = parse_message(raw)
    assert [c.uri for c in msg.contacts] == ["sip:a@h1", "sip:a@h2", "sip:a@h3", "sip:a@h4"]


def test_value_whitespace_and_empty_values() -> None:
    raw = with_header(b"Subject:\t  hello  world \t\r\nX-Empty:\r\nX-Blank:   ")
    msg = parse_message(raw)
    assert msg.get("subject") == b"hello  world"
    assert msg.get("x-empty") == b""
    assert msg.get("x-blank") == b""
    assert msg.to_bytes() == raw


def test_non_list_header_is_not_split() -> None:
    raw = with_header(b"Date: Sat, 13 Nov 2010 23:29:00 GMT\r\nAllow: INVITE, ACK ,BYE")
    msg = parse_message(raw)
    assert msg.get_all("date") == [b"Sat, 13 Nov 2010 23:29:00 GMT"]
    assert msg.get_all("allow") == [b"INVITE", b"ACK", b"BYE"]
    assert msg.get("allow") == b"INVITE, ACK ,BYE"


# ---------------------------------------------------------------------------------------------
# Lists, quoting and folding


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        (b"", []),
        (b"  ", []),
        (b"a", [b"a"]),
        (b" a , b,c ", [b"a", b"b", b"c"]),
        (b"a,,b, ,", [b"a", b"b"]),
        (b'"Doe, John" <sip:j@h>, <sip:k@h>', [b'"Doe, John" <sip:j@h>', b"<sip:k@h>"]),
        (b'"a \\" , b" <sip:x@h>, c', [b'"a \\" , b" <sip:x@h>', b"c"]),
        (b'"a \\\\", <sip:x@h>', [b'"a \\\\"', b"<sip:x@h>"]),
        (b"<sip:x@h;a=1,2>;q=0.5, <sip:y@h?h=a,b>", [b"<sip:x@h;a=1,2>;q=0.5", b"<sip:y@h?h=a,b>"]),
        (b'<sip:x@h>;p="1,2", d', [b'<sip:x@h>;p="1,2"', b"d"]),
    ],
)
def test_split_list(value: bytes, parts: list[bytes]) -> None:
    assert split_list(value) == parts


@pytest.mark.parametrize("value", [b'"unterminated, <sip:x@h>', b"<sip:x@h, y", b'a, "b\\"'])
def test_split_list_unterminated(value: bytes) -> None:
    with pytest.raises(SipProtocolError) as info:
        split_list(value)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("value", "end"),
    [
        (b"a, b", 1),
        (b" , ,a ,b", 6),
        (b'"x,y" <sip:a,b@h>, c', 17),
        (b"a\r\n , b", 4),
        (b"a", -1),
        (b" , ", -1),
    ],
)
def test_first_element_end(value: bytes, end: int) -> None:
    assert first_element_end(value) == end


def test_unfold() -> None:
    assert unfold(b" a\r\n b\r\n\t\t c ") == b"a b c"
    assert unfold(b"\ta  b\t") == b"a  b"


def test_folded_headers_read_unfolded_and_written_as_received() -> None:
    raw = (
        b"OPTIONS sip:carol@chicago.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP\r\n  pc33.atlanta.example.com\r\n\t;branch=z9hG4bKhjhs8ass877\r\n"
        b"To:\r\n <sip:carol@chicago.example.com>\r\n"
        b"From: Alice\r\n <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
        b"Call-ID: a84b4c76e66710\r\n"
        b"CSeq: 63104\r\n     OPTIONS\r\n"
        b"Subject: first line\r\n  second line\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    msg = request(raw)
    msg.check()
    assert msg.top_via.host == "pc33.atlanta.example.com"
    assert msg.top_via.branch == "z9hG4bKhjhs8ass877"
    assert msg.to.uri == "sip:carol@chicago.example.com"
    assert msg.from_.display == "Alice"
    assert msg.cseq == CSeq(63104, "OPTIONS")
    assert msg.get("subject") == b"first line second line"
    assert msg.header_lines()[-2] == ("subject", b"Subject: first line\r\n  second line")
    assert msg.to_bytes() == raw


# ---------------------------------------------------------------------------------------------
# Via


def test_via_fields() -> None:
    via = parse_via(
        b"SIP/2.0/udp Proxy.Example.COM:5070;branch=z9hG4bK-1;received=192.0.2.9"
        b";rport=6060;maddr=224.0.1.75;ttl=16;X-Flag"
    )
    assert via == Via(
        "UDP",
        "proxy.example.com",
        5070,
        {
            "branch": "z9hG4bK-1",
            "received": "192.0.2.9",
            "rport": "6060",
            "maddr": "224.0.1.75",
            "ttl": "16",
            "x-flag": None,
        },
    )
    assert via.sent_by == ("proxy.example.com", 5070)
    assert via.branch == "z9hG4bK-1"
    assert via.received == "192.0.2.9"
    assert via.rport == 6060
    assert via.maddr == "224.0.1.75"
    assert via.ttl == 16
    assert str(via) == (
        "SIP/2.0/UDP proxy.example.com:5070;branch=z9hG4bK-1;received=192.0.2.9;rport=6060"
        ";maddr=224.0.1.75;ttl=16;x-flag"
    )


def test_via_rport_states_and_defaults() -> None:
    assert parse_via(b"SIP/2.0/UDP h;branch=z9hG4bK1").rport is None
    assert parse_via(b"SIP/2.0/UDP h;rport;branch=z9hG4bK1").rport is True
    assert parse_via(b"SIP/2.0/UDP h;rport=;branch=z9hG4bK1").rport is True
    via = parse_via(b"SIP/2.0/TLS h")
    assert (via.branch, via.received, via.maddr, via.ttl, via.port) == (None,) * 5
    assert via.transport == "TLS"


def test_via_ipv6_and_spaces() -> None:
    via = parse_via(b"SIP/2.0/TCP [2001:DB8::9:1]:5061;branch=z9hG4bK-v6;received=2001:db8::9:255")
    assert via.sent_by == ("2001:db8::9:1", 5061)
    assert via.received == "2001:db8::9:255"
    assert str(via) == "SIP/2.0/TCP [2001:db8::9:1]:5061;branch=z9hG4bK-v6;received=2001:db8::9:255"
    assert parse_via(b"SIP/2.0/UDP [::ffff:192.0.2.1]").host == "::ffff:192.0.2.1"
    spaced = parse_via(b"  SIP / 2.0 / UDP   host.example.com : 5060 ; branch = z9hG4bK2 ")
    assert spaced.sent_by == ("host.example.com", 5060)
    assert spaced.branch == "z9hG4bK2"


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"SIP/2.0/UDP",
        b"SIP/2.0 UDP host",
        b"SIP/3.0/UDP host",
        b"SIP/2.0/UDPhost.example.com",
        b"SIP/2.0/U DP host.example.com",
        b"SIP/2.0/UDP host:",
        b"SIP/2.0/UDP host:65536",
        b"SIP/2.0/UDP host:50x",
        "SIP/2.0/UDP host:5²".encode(),
        "SIP/2.0/UDP hóst".encode(),
        b"SIP/2.0/UDP ho\x00st",
        b"SIP/2.0/UDP <host>",
        b"SIP/2.0/UDP 2001:db8::1",
        b"SIP/2.0/UDP [2001:db8::1",
        b"SIP/2.0/UDP [2001:db8:::1:2:3:4:5:6]",
        b"SIP/2.0/UDP [fe80::1%eth0]",
        b"SIP/2.0/UDP [192.0.2.1]",
        b"SIP/2.0/UDP [2001:db8::1]x",
        b"SIP/2.0/UDP host;rport=70000",
        "SIP/2.0/UDP host;rport=²".encode(),
        b"SIP/2.0/UDP host;ttl=",
        b"SIP/2.0/UDP host;ttl",
        b"SIP/2.0/UDP host;ttl=256",
        b"SIP/2.0/UDP host;=x",
        b'SIP/2.0/UDP host;a="unterminated',
        "ſIP/2.0/UDP host".encode(),
    ],
)
def test_via_malformed(value: bytes) -> None:
    with pytest.raises(SipProtocolError) as info:
        parse_via(value)
    assert info.value.status == 400


def test_vias_across_lines_and_commas() -> None:
    raw = replace_line(
        b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n",
        b"Via: SIP/2.0/UDP p1.example.net;branch=z9hG4bK-a, SIP/2.0/TCP p2.example.net;"
        b"branch=z9hG4bK-b\r\nv: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n",
    )
    msg = request(raw)
    assert [v.host for v in msg.vias] == [
        "p1.example.net",
        "p2.example.net",
        "pc33.atlanta.example.com",
    ]
    assert msg.top_via.branch == "z9hG4bK-a"


# ---------------------------------------------------------------------------------------------
# CSeq, Call-ID, Max-Forwards, Content-Length


@pytest.mark.parametrize(
    ("value", "cseq"),
    [
        (b"1 INVITE", CSeq(1, "INVITE")),
        (b"0 ACK", CSeq(0, "ACK")),
        (b" 4294967295\t \tBYE ", CSeq(4294967295, "BYE")),
        (b"000000000000042 OPTIONS", CSeq(42, "OPTIONS")),
        (b"7 x-Custom.Method!", CSeq(7, "x-Custom.Method!")),
    ],
)
def test_cseq(value: bytes, cseq: CSeq) -> None:
    assert parse_cseq(value) == cseq


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"1",
        b"INVITE",
        b"4294967296 INVITE",
        b"-1 INVITE",
        b"1 INVITE x",
        b"1.0 INVITE",
        b"1 INV<ITE",
        "١ INVITE".encode(),
        b"99999999999999999999999999 INVITE",
        b"+1 INVITE",
    ],
)
def test_cseq_malformed(value: bytes) -> None:
    with pytest.raises(SipProtocolError):
        parse_cseq(value)


def test_cseq_str() -> None:
    assert str(CSeq(5, "BYE")) == "5 BYE"


def test_call_id_word_characters() -> None:
    word = b"f81d4fae-7dec!%*_+`'~()<>:\\\"/[]?{}.x@host.example"
    msg = request(replace_line(b"a84b4c76e66710@pc33.atlanta.example.com\r\n", word + b"\r\n"))
    assert msg.call_id == word.decode()
    msg.check()


@pytest.mark.parametrize("value", [b"", b"a b", "ü@h".encode()])
def test_call_id_malformed(value: bytes) -> None:
    raw = replace_line(b"a84b4c76e66710@pc33.atlanta.example.com", value)
    assert "Call-ID" in rejects(raw)


@pytest.mark.parametrize("value", [b"a\x00b", b"a\x7fb", b"a\x1bb", b"a\x0bb"])
def test_control_characters_anywhere_in_the_header_section_are_refused(value: bytes) -> None:
    """Not only in Call-ID: a NUL in any header value would be truncated by the C parsers of
    the elements we pass it to (issue 12: such an OPTIONS got 200)."""
    raw = replace_line(b"a84b4c76e66710@pc33.atlanta.example.com", value)
    assert "control character" in rejects(raw)
    raw = replace_line(b"Max-Forwards: 70", b"Max-Forwards: 70\r\nX-Note: " + value)
    assert "control character" in rejects(raw)


def test_call_id_compact() -> None:
    raw = replace_line(b"Call-ID: a84b", b"i: a84b")
    assert request(raw).call_id == "a84b4c76e66710@pc33.atlanta.example.com"


@pytest.mark.parametrize(
    ("value", "hops"),
    [(b"0", 0), (b"70", 70), (b"255", 255), (b"0068", 68), (b"000000000000001", 1)],
)
def test_max_forwards(value: bytes, hops: int) -> None:
    assert (
        request(replace_line(b"Max-Forwards: 70", b"Max-Forwards: " + value)).max_forwards == hops
    )


@pytest.mark.parametrize("value", [b"256", b"-1", b"", b"7 0", b"0x10", b"1e2", "٧".encode()])
def test_max_forwards_malformed(value: bytes) -> None:
    msg = request(replace_line(b"Max-Forwards: 70", b"Max-Forwards: " + value))
    with pytest.raises(SipProtocolError) as info:
        msg.max_forwards  # noqa: B018
    assert info.value.status == 400
    assert "Max-Forwards" in rejects(msg.to_bytes())


def test_max_forwards_absent() -> None:
    msg = request(replace_line(b"Max-Forwards: 70\r\n", b""))
    assert msg.max_forwards is None
    msg.check()


def test_content_length_compact_absent_and_leading_zeros() -> None:
    assert request(INVITE).content_length == 60
    assert request(INVITE.replace(b"Content-Length: 60", b"l: 0060")).content_length == 60
    no_cl = INVITE.replace(b"Content-Length: 60\r\n", b"")
    msg = request(no_cl)
    assert msg.content_length is None
    assert msg.body == SDP


# ---------------------------------------------------------------------------------------------
# From, To, Contact, Route, Record-Route


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"<sip:a@h>", NameAddr(None, "sip:a@h", {}, True)),
        (b"sip:a@h;tag=x", NameAddr(None, "sip:a@h", {"tag": "x"}, False)),
        (b"Alice <sip:a@h>;tag=1", NameAddr("Alice", "sip:a@h", {"tag": "1"})),
        (b"Alice  Liddell<sip:a@h>", NameAddr("Alice  Liddell", "sip:a@h", {})),
        (b'"Alice" <sip:a@h;lr>;tag=1', NameAddr("Alice", "sip:a@h;lr", {"tag": "1"})),
        (b'""<sip:a@h>', NameAddr("", "sip:a@h", {})),
        (b'"Doe, \\"J\\" \\\\ <x>" <sip:j@h>', NameAddr('Doe, "J" \\ <x>', "sip:j@h", {})),
        ('"Zoë Ærø 大" <sip:z@h>'.encode(), NameAddr("Zoë Ærø 大", "sip:z@h", {})),
        (
            b'<tel:+1-202-555-0123>;tag=Ab;X="a;b"',
            NameAddr(None, "tel:+1-202-555-0123", {"tag": "Ab", "x": '"a;b"'}),
        ),
        (
            b"<sip:u@h?Route=%3Csip:p%3E&Subject=x>",
            NameAddr(None, "sip:u@h?Route=%3Csip:p%3E&Subject=x", {}),
        ),
        (b"urn:service:sos", NameAddr(None, "urn:service:sos", {}, False)),
        (b"<sip:a@h> ; tag = 7 ", NameAddr(None, "sip:a@h", {"tag": "7"})),
    ],
)
def test_name_addr(value: bytes, expected: NameAddr) -> None:
    assert parse_name_addr(value, "To") == expected


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"   ",
        b'"Alice <sip:a@h>',
        b'"Alice" sip:a@h',
        b"<sip:a@h",
        b"<sip:a@h> junk",
        b"<nocolon>",
        b"<>",
        b"< sip:a@h >",
        b"<sip:a@h\t>",
        b"Bell, Alexander <sip:a@h>",
        b"J@Watson <sip:w@h>",
        "Zoë <sip:z@h>".encode(),
        b"sip:a@h?Route=%3Csip:p%3E",
        b"sip:a,b@h",
        b"sip:a@h;=x",
        b"justtext",
    ],
)
def test_name_addr_malformed(value: bytes) -> None:
    with pytest.raises(SipProtocolError) as info:
        parse_name_addr(value, "To")
    assert info.value.status == 400


def test_name_addr_str() -> None:
    assert str(parse_name_addr(b'"A, B" <sip:a@h>;tag=1', "From")) == '"A, B" <sip:a@h>;tag=1'
    assert str(parse_name_addr(b"Alice <sip:a@h>", "From")) == "Alice <sip:a@h>"
    assert str(parse_name_addr(b"sip:a@h;tag=1", "From")) == "sip:a@h;tag=1"
    assert str(NameAddr(None, "sip:a@h;lr", {}, False)) == "<sip:a@h;lr>"
    assert str(STAR) == "*"


def test_from_to_accessors() -> None:
    msg = request(INVITE)
    assert msg.from_ == NameAddr("Alice", "sip:alice@atlanta.example.com", {"tag": "1928301774"})
    assert msg.from_.tag == "1928301774"
    assert msg.to.tag is None
    assert msg.to.display == "Bob"
    raw = INVITE.replace(b"From: ", b"f: ").replace(b"To: ", b"t: ")
    assert request(raw).to.uri == "sip:bob@biloxi.example.com"


def test_contacts_q_expires() -> None:
    raw = replace_line(
        b"Contact: <sip:alice@pc33.atlanta.example.com>",
        b'Contact: "Desk, 1" <sip:a@192.0.2.1>;q=0.7;expires=3600, <sip:a@192.0.2.2>;q=1\r\n'
        b"m: sip:a@192.0.2.3;q=0.001;expires=4294967296, <sip:a@192.0.2.4;transport=tcp>;q=0."
        b"\r\nContact: <sip:a@192.0.2.5>;q=1.000;expires=0",
    )
    contacts = request(raw).contacts
    assert isinstance(contacts, list)
    assert [(c.display, c.uri, c.q, c.expires) for c in contacts] == [
        ("Desk, 1", "sip:a@192.0.2.1", 0.7, 3600),
        (None, "sip:a@192.0.2.2", 1.0, None),
        (None, "sip:a@192.0.2.3", 0.001, None),  # 2^32 is no delta-seconds: as if absent
        (None, "sip:a@192.0.2.4;transport=tcp", 0.0, None),
        (None, "sip:a@192.0.2.5", 1.0, 0),
    ]


@pytest.mark.parametrize(
    "q",
    [b"1.5", b"2", b"-0.5", b"nan", b"inf", b"1e-1", b"0_5", b".5", b"", "٠.5".encode(), b"0.x"],
)
def test_contact_q_malformed(q: bytes) -> None:
    raw = replace_line(
        b"pc33.atlanta.example.com>\r\nContent-Type",
        b"pc33.atlanta.example.com>;q=" + q + b"\r\nContent-Type",
    )
    contacts = request(raw).contacts
    assert isinstance(contacts, list)
    with pytest.raises(SipProtocolError):
        contacts[0].q  # noqa: B018


def test_contact_star_and_absent() -> None:
    raw = replace_line(b"Contact: <sip:alice@pc33.atlanta.example.com>", b"Contact:  * ")
    assert request(raw).contacts is STAR
    assert (
        request(replace_line(b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n", b"")).contacts
        == []
    )
    mixed = replace_line(b"Contact: <sip:alice@pc33.atlanta.example.com>", b"Contact: *, <sip:a@h>")
    with pytest.raises(SipProtocolError):
        request(mixed).contacts  # noqa: B018


def test_routes_and_record_routes() -> None:
    raw = with_header(
        b"Route: <sip:p1.example.net;lr>, <sip:p2.example.net;lr;transport=tcp>\r\n"
        b"Route: <sip:[2001:db8::5]:5061;lr>\r\n"
        b"Record-Route: <sip:rr.example.net;lr>;x=1"
    )
    msg = request(raw)
    assert [r.uri for r in msg.routes] == [
        "sip:p1.example.net;lr",
        "sip:p2.example.net;lr;transport=tcp",
        "sip:[2001:db8::5]:5061;lr",
    ]
    assert msg.record_routes == [NameAddr(None, "sip:rr.example.net;lr", {"x": "1"})]
    assert request(INVITE).routes == []
    assert request(INVITE).record_routes == []


# ---------------------------------------------------------------------------------------------
# check(): the mandatory headers


@pytest.mark.parametrize("name", [b"Call-ID", b"CSeq", b"From", b"To"])
def test_check_missing_mandatory(name: bytes) -> None:
    start = INVITE.index(b"\r\n" + name + b":") + 2
    end = INVITE.index(b"\r\n", start) + 2
    raw = INVITE[:start] + INVITE[end:]
    parse_message(raw)  # parsing alone does not need them
    assert rejects(raw) == f"missing {name.decode().lower().title()} header"


@pytest.mark.parametrize(
    "line",
    [
        b"Call-ID: other",
        b"i: other",
        b"CSeq: 1 INVITE",
        b"From: <sip:x@h>;tag=2",
        b"f: <sip:x@h>;tag=2",
        b"To: <sip:y@h>",
        b"t: <sip:y@h>",
        b"Max-Forwards: 70",
    ],
)
def test_check_duplicate_single_headers(line: bytes) -> None:
    assert rejects(with_header(line)).startswith("duplicate ")


def test_check_missing_via() -> None:
    raw = replace_line(
        b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n", b""
    )
    assert rejects(raw) == "missing Via header"


@pytest.mark.parametrize(
    ("method", "cseq_method"),
    [
        (b"OPTIONS", b"INVITE"),
        (b"INVITE", b"invite"),
        (b"ACK", b"INVITE"),
        (b"CANCEL", b"INVITE"),
        (b"NEWMETHOD", b"INVITE"),
    ],
)
def test_check_cseq_method_must_match(method: bytes, cseq_method: bytes) -> None:
    raw = INVITE.replace(b"INVITE sip:", method + b" sip:").replace(
        b"314159 INVITE", b"314159 " + cseq_method
    )
    assert rejects(raw) == "CSeq method does not match the request method"


@pytest.mark.parametrize("method", [b"ACK", b"CANCEL", b"BYE", b"NEWMETHOD"])
def test_check_cseq_method_matching(method: bytes) -> None:
    raw = INVITE.replace(b"INVITE", method)
    msg = request(raw)
    msg.check()
    assert msg.cseq == CSeq(314159, method.decode())


def test_check_response_cseq_method_is_free() -> None:
    response(RINGING.replace(b"314159 INVITE", b"2 BYE")).check()


# ---------------------------------------------------------------------------------------------
# Errors from the parser, with their status hints


def test_message_too_large_513() -> None:
    assert rejects(INVITE, 513, max_bytes=len(INVITE) - 1)
    request(INVITE, max_bytes=len(INVITE))
    big = INVITE.replace(b"Content-Length: 60", b"Content-Length: 70060") + b"x" * 70000
    assert rejects(big, 513)


def test_start_line_too_long_414() -> None:
    uri = b"sip:" + b"a" * (limits.MAX_START_LINE_BYTES - len(b"INVITE sip: SIP/2.0")) + b"@h"
    fits = INVITE.replace(b"sip:bob@biloxi.example.com SIP", uri[:-2] + b" SIP", 1)
    assert len(request(fits).first_line) == limits.MAX_START_LINE_BYTES
    too_long = INVITE.replace(b"sip:bob@biloxi.example.com SIP", uri[:-1] + b" SIP", 1)
    assert rejects(too_long, 414) == "start line too long"
    reason = b"x" * limits.MAX_START_LINE_BYTES
    assert rejects(RINGING.replace(b"Ringing", reason), 414)


@pytest.mark.parametrize("version", [b"SIP/2.1", b"SIP/3.0", b"SIP/10.0", b"sip/7.0"])
def test_unsupported_version_505(version: bytes) -> None:
    assert rejects(INVITE.replace(b"SIP/2.0\r\n", version + b"\r\n", 1), 505) == (
        "SIP version not supported"
    )
    assert rejects(RINGING.replace(b"SIP/2.0 180", version + b" 180"), 505)


@pytest.mark.parametrize(
    "start",
    [
        b"INVITE sip:bob@biloxi.example.com HTTP/1.1",
        b"INVITE sip:bob@biloxi.example.com",
        b"INVITE sip:bob@biloxi.example.com SIP/2.0 ",
        b"INVITE sip:bob@biloxi.example.com SIP/2.0\t",
        b"INVITE sip:bob@biloxi.example.com SIP/20",
        b"INVITE sip:bob@biloxi.example.com SIP/",
        b"INVITE sip:bob@biloxi.example.com SIP/2.0.0",
        b"INVITE sip:bob@biloxi.example.com SIP/2.x",
        b"INVITE sip:bob@biloxi.example.com SIP2.0",
        b"INVITE sip:bob@biloxi.example.com;\tlr SIP/2.0",
        b"INVITE sip:bob@biloxi.example.com;\x00 SIP/2.0",
        b"INVITE sip:bob@biloxi.example.com\x7f SIP/2.0",
        b"SIP/2.0\t200 OK",
        b"SIP/2.x 200 OK",
        b"INVITE  sip:bob@biloxi.example.com SIP/2.0",
        b"INVITE\tsip:bob@biloxi.example.com\tSIP/2.0",
        b" INVITE sip:bob@biloxi.example.com SIP/2.0",
        b"INVITE <sip:bob@biloxi.example.com> SIP/2.0",
        b"INVITE bob@biloxi.example.com SIP/2.0",
        b"INVITE :bob SIP/2.0",
        b"IN(VITE sip:bob@biloxi.example.com SIP/2.0",
        b"INVITE sip:bob@biloxi.example.com; lr SIP/2.0",
        b"SIP/2.0",
        b"SIP/2.0 2000 OK",
        b"SIP/2.0 20 OK",
        b"SIP/2.0 099 Low",
        b"SIP/2.0 700 High",
        b"SIP/2.0 2x0 OK",
        b"SIP/2.0 +20 OK",
        b"SIP/2.0 4294967301 Big",
        b"",
    ],
)
def test_malformed_start_line_400(start: bytes) -> None:
    first_end = INVITE.index(b"\r\n")
    assert rejects(start + INVITE[first_end:])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n",
        b"\r\n\r\n",
        b"INVITE sip:a@h SIP/2.0",
        b"INVITE sip:a@h SIP/2.0\r\nVia: x",
        INVITE.replace(b"\r\n\r\n", b"\n\n"),
        INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\n"),
        INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\r\n"),
        INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards:\r70"),
        INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards 70"),
        INVITE.replace(b"Max-Forwards: 70", b": 70"),
        INVITE.replace(b"Max-Forwards: 70", b"Max Forwards: 70"),
        INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards{}: 70"),
        INVITE.replace(b"Max-Forwards: 70", "Mäx-Forwards: 70".encode()),
        INVITE.replace(b"SIP/2.0\r\nVia", b"SIP/2.0\r\n Via"),
        INVITE.replace(b"Content-Length: 60", b"Content-Length: 61"),
        INVITE.replace(b"Content-Length: 60", b"Content-Length: -60"),
        INVITE.replace(b"Content-Length: 60", b"Content-Length: 5 6"),
        INVITE.replace(b"Content-Length: 60", b"Content-Length: +60"),
        INVITE.replace(b"Content-Length: 60", b"Content-Length: 0x38"),
        INVITE.replace(b"Content-Length: 60", "Content-Length: ٥٦".encode()),
        INVITE.replace(b"Content-Length: 60", b"Content-Length: " + b"9" * 30),
        INVITE.replace(b"Content-Length: 60", b"Content-Length: 60\r\nl: 55"),
        INVITE.replace(b"Content-Length: 60", b"Content-Length:"),
    ],
)
def test_malformed_framing_and_header_section_400(data: bytes) -> None:
    assert rejects(data)


def test_duplicate_equal_content_length_agrees() -> None:
    raw = INVITE.replace(b"Content-Length: 60", b"Content-Length: 60\r\nl: 060")
    msg = request(raw)
    assert msg.content_length == 60
    assert msg.to_bytes() == raw


def test_header_count_limit() -> None:
    extra = b"".join(b"X-H%d: v\r\n" % i for i in range(limits.MAX_HEADERS - 9))
    raw = with_header(extra.rstrip(b"\r\n"))
    assert request(raw).header_count == limits.MAX_HEADERS
    assert "header lines" in rejects(with_header(b"X-One-Too-Many: 1", raw))
    assert rejects(INVITE, max_headers=8) == "more than 8 header lines"
    assert request(INVITE, max_headers=9).header_count == 9


def test_header_line_length_limit() -> None:
    room = limits.MAX_LINE_BYTES - len(b"Subject: ")
    fits = with_header(b"Subject: " + b"s" * room)
    assert len(request(fits).get("subject") or b"") == room
    assert rejects(with_header(b"Subject: " + b"s" * (room + 1))) == "header line too long"
    folded = b"Subject: " + b"\r\n ".join([b"s" * 1000] * (limits.MAX_LINE_BYTES // 1000 + 1))
    assert rejects(with_header(folded)) == "header line too long"


def test_framed_body_must_match_content_length() -> None:
    assert request(INVITE, framed=True).body == SDP
    assert rejects(INVITE + b"extra", framed=True)
    assert rejects(INVITE[:-1], framed=True)
    no_cl = INVITE.replace(b"Content-Length: 60\r\n", b"")
    assert request(no_cl, framed=True).body == SDP


def test_datagram_bytes_after_content_length_are_dropped() -> None:
    msg = request(INVITE + b"GARBAGE AFTER THE BODY")
    assert msg.body == SDP
    assert msg.to_bytes() == INVITE


def test_error_repr() -> None:
    assert repr(SipProtocolError("bad", 505)) == "SipProtocolError('bad', status=505)"
    assert SipProtocolError("bad").status == 400


# ---------------------------------------------------------------------------------------------
# Edits: untouched bytes unchanged, Content-Length right

OPTIONS = (
    b"OPTIONS sip:carol@chicago.example.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP  pc33.atlanta.example.com ;branch=z9hG4bKhjhs8ass877\r\n"
    b"Max-Forwards:70\r\n"
    b"To: <sip:carol@chicago.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 63104 OPTIONS\r\n"
    b"Accept: application/sdp\r\n"
    b"l: 0\r\n"
    b"\r\n"
)


def test_add_via_and_record_route() -> None:
    msg = request(OPTIONS)
    msg.prepend_header("Via", "SIP/2.0/TCP proxy.example.net:5060;branch=z9hG4bK-px1")
    msg.prepend_header("Record-Route", b"<sip:proxy.example.net;lr>")
    assert msg.to_bytes() == (
        b"OPTIONS sip:carol@chicago.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP proxy.example.net:5060;branch=z9hG4bK-px1\r\n"
        b"v: SIP/2.0/UDP  pc33.atlanta.example.com ;branch=z9hG4bKhjhs8ass877\r\n"
        b"Record-Route: <sip:proxy.example.net;lr>\r\n"
        b"Max-Forwards:70\r\n"
        b"To: <sip:carol@chicago.example.com>\r\n"
        b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
        b"Call-ID: a84b4c76e66710\r\n"
        b"CSeq: 63104 OPTIONS\r\n"
        b"Accept: application/sdp\r\n"
        b"l: 0\r\n"
        b"\r\n"
    )
    assert msg.top_via.host == "proxy.example.net"
    assert len(msg.vias) == 2
    assert msg.record_routes[0].uri == "sip:proxy.example.net;lr"
    msg.prepend_header("Record-Route", b"<sip:second.example.net;lr>")
    assert [r.uri for r in msg.record_routes] == [
        "sip:second.example.net;lr",
        "sip:proxy.example.net;lr",
    ]


def test_prepend_header_without_via_goes_on_top() -> None:
    raw = OPTIONS.replace(
        b"v: SIP/2.0/UDP  pc33.atlanta.example.com ;branch=z9hG4bKhjhs8ass877\r\n", b""
    )
    msg = request(raw)
    msg.prepend_header("Record-Route", "<sip:p;lr>")
    assert msg.to_bytes() == raw.replace(b"SIP/2.0\r\n", b"SIP/2.0\r\nRecord-Route: <sip:p;lr>\r\n")


def test_remove_top_via_line() -> None:
    msg = response(RINGING)
    assert msg.pop_first_value("via") == (
        b"SIP/2.0/UDP proxy.example.net;branch=z9hG4bK-p1;received=192.0.2.7"
    )
    assert msg.to_bytes() == RINGING.replace(
        b"Via: SIP/2.0/UDP proxy.example.net;branch=z9hG4bK-p1;received=192.0.2.7\r\n", b""
    )
    assert msg.top_via.branch == "z9hG4bK776asdhds"


RINGING_VIAS = (
    b"Via: SIP/2.0/UDP proxy.example.net;branch=z9hG4bK-p1;received=192.0.2.7\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
)


def ringing_with_vias(vias: bytes) -> bytes:
    return RINGING.replace(RINGING_VIAS, vias)


def test_remove_top_via_from_a_comma_list_keeps_the_rest_as_written() -> None:
    msg = response(
        ringing_with_vias(
            b"Via: SIP/2.0/UDP proxy.example.net;branch=z9hG4bK-p1;received=192.0.2.7 ,\r\n"
            b"  SIP/2.0/UDP  mid.example.net;branch=z9hG4bK-m,SIP/2.0/UDP\r\n"
            b"\tpc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
        )
    )
    assert len(msg.vias) == 3
    assert msg.pop_first_value("Via") == (
        b"SIP/2.0/UDP proxy.example.net;branch=z9hG4bK-p1;received=192.0.2.7"
    )
    assert msg.to_bytes() == ringing_with_vias(
        b"Via: SIP/2.0/UDP  mid.example.net;branch=z9hG4bK-m,SIP/2.0/UDP\r\n"
        b"\tpc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    )
    assert msg.pop_first_value("v") == b"SIP/2.0/UDP  mid.example.net;branch=z9hG4bK-m"
    assert msg.to_bytes() == ringing_with_vias(
        b"Via: SIP/2.0/UDP\r\n\tpc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    )
    assert [v.host for v in msg.vias] == ["pc33.atlanta.example.com"]
    assert msg.pop_first_value("Via") == (
        b"SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds"
    )
    assert msg.vias == []
    assert msg.to_bytes() == ringing_with_vias(b"")
    assert msg.pop_first_value("Via") is None


def test_remove_top_via_skips_empty_elements() -> None:
    msg = response(
        ringing_with_vias(
            b"v: , SIP/2.0/UDP a.example.net;branch=z9hG4bK-a,, ,SIP/2.0/UDP b.example.net\r\n"
        )
    )
    assert msg.pop_first_value("via") == b"SIP/2.0/UDP a.example.net;branch=z9hG4bK-a"
    assert msg.to_bytes() == ringing_with_vias(b"v: SIP/2.0/UDP b.example.net\r\n")


def test_pop_first_route() -> None:
    def with_route(line: bytes) -> bytes:
        return OPTIONS.replace(b"l: 0\r\n", line + b"\r\nl: 0\r\n")

    msg = request(with_route(b"Route: <sip:p1.example.net;lr>,<sip:p2.example.net;lr>"))
    assert msg.pop_first_value("route") == b"<sip:p1.example.net;lr>"
    assert msg.to_bytes() == with_route(b"Route: <sip:p2.example.net;lr>")
    assert msg.pop_first_value("route") == b"<sip:p2.example.net;lr>"
    assert msg.to_bytes() == OPTIONS


def test_decrement_max_forwards() -> None:
    msg = request(OPTIONS)
    assert msg.decrement_max_forwards() == 69
    assert msg.max_forwards == 69
    assert msg.to_bytes() == OPTIONS.replace(b"Max-Forwards:70", b"Max-Forwards: 69")
    zero = request(OPTIONS.replace(b"Max-Forwards:70", b"Max-Forwards: 0"))
    assert zero.decrement_max_forwards() == 0
    assert zero.to_bytes() == OPTIONS.replace(b"Max-Forwards:70", b"Max-Forwards: 0")


def test_decrement_max_forwards_absent_adds_70() -> None:
    msg = request(OPTIONS.replace(b"Max-Forwards:70\r\n", b""))
    assert msg.decrement_max_forwards() == 70
    assert msg.to_bytes() == OPTIONS.replace(b"Max-Forwards:70\r\n", b"").replace(
        b"l: 0\r\n", b"l: 0\r\nMax-Forwards: 70\r\n"
    )


def test_decrement_max_forwards_malformed() -> None:
    msg = request(OPTIONS.replace(b"Max-Forwards:70", b"Max-Forwards: many"))
    with pytest.raises(SipProtocolError):
        msg.decrement_max_forwards()
    assert msg.to_bytes() == OPTIONS.replace(b"Max-Forwards:70", b"Max-Forwards: many")


def test_insert_append_replace_remove() -> None:
    msg = request(OPTIONS)
    msg.insert_header(1, "X-First", b"1")
    msg.append_header("Accept", "text/plain")
    msg.append_header("X-Last", "z")
    assert msg.to_bytes() == (
        b"OPTIONS sip:carol@chicago.example.com SIP/2.0\r\n"
        b"v: SIP/2.0/UDP  pc33.atlanta.example.com ;branch=z9hG4bKhjhs8ass877\r\n"
        b"X-First: 1\r\n"
        b"Max-Forwards:70\r\n"
        b"To: <sip:carol@chicago.example.com>\r\n"
        b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
        b"Call-ID: a84b4c76e66710\r\n"
        b"CSeq: 63104 OPTIONS\r\n"
        b"Accept: application/sdp\r\n"
        b"Accept: text/plain\r\n"
        b"l: 0\r\n"
        b"X-Last: z\r\n"
        b"\r\n"
    )
    assert msg.get_all("accept") == [b"application/sdp", b"text/plain"]
    msg.replace_header("accept", "*/*")
    msg.replace_header("Subject", "new")  # absent: appended
    assert msg.remove_header("x-first") == 1
    assert msg.remove_header("X-Absent") == 0
    assert msg.to_bytes() == (
        b"OPTIONS sip:carol@chicago.example.com SIP/2.0\r\n"
        b"v: SIP/2.0/UDP  pc33.atlanta.example.com ;branch=z9hG4bKhjhs8ass877\r\n"
        b"Max-Forwards:70\r\n"
        b"To: <sip:carol@chicago.example.com>\r\n"
        b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
        b"Call-ID: a84b4c76e66710\r\n"
        b"CSeq: 63104 OPTIONS\r\n"
        b"accept: */*\r\n"
        b"l: 0\r\n"
        b"X-Last: z\r\n"
        b"Subject: new\r\n"
        b"\r\n"
    )


def test_edits_refresh_typed_values() -> None:
    msg = request(OPTIONS)
    assert msg.cseq == CSeq(63104, "OPTIONS")
    msg.replace_header("CSeq", "63105 OPTIONS")
    assert msg.cseq == CSeq(63105, "OPTIONS")
    msg.replace_header("f", '"Al" <sip:al@h>;tag=9')
    assert msg.from_.display == "Al"
    assert msg.header_lines()[3] == ("from", b'f: "Al" <sip:al@h>;tag=9')
    msg.remove_header("Via")
    with pytest.raises(SipProtocolError):
        msg.top_via  # noqa: B018


def test_edit_rejects_bad_local_input() -> None:
    msg = request(OPTIONS)
    with pytest.raises(ValueError):
        msg.append_header("X-Bad", b"a\r\nInjected: 1")
    with pytest.raises(ValueError):
        msg.set_uri(b"sip:a b")
    with pytest.raises(SipProtocolError):
        msg.append_header("Bad Name", b"1")
    assert msg.to_bytes() == OPTIONS


def test_set_request_uri() -> None:
    msg = request(OPTIONS.replace(b"SIP/2.0\r\n", b"sip/2.0\r\n", 1))
    msg.set_uri("sip:carol@192.0.2.44:5070;transport=tcp")
    assert msg.uri == b"sip:carol@192.0.2.44:5070;transport=tcp"
    assert msg.to_bytes() == OPTIONS.replace(
        b"OPTIONS sip:carol@chicago.example.com SIP/2.0",
        b"OPTIONS sip:carol@192.0.2.44:5070;transport=tcp sip/2.0",
    )


def test_set_body_keeps_content_length_right() -> None:
    msg = request(INVITE)
    msg.set_body(b"v=0\r\n")
    assert msg.to_bytes() == INVITE.replace(b"Content-Length: 60", b"Content-Length: 5").replace(
        SDP, b"v=0\r\n"
    )
    msg.set_body(b"")
    assert msg.to_bytes() == INVITE.replace(b"Content-Length: 60", b"Content-Length: 0").replace(
        b"Content-Type: application/sdp\r\n", b""
    ).replace(SDP, b"")
    msg.set_body(b"{}", "application/json")
    assert (
        msg.to_bytes()
        == INVITE.replace(b"Content-Length: 60", b"Content-Length: 2")
        .replace(b"Content-Type: application/sdp\r\n", b"")
        .replace(SDP, b"")
        .replace(
            b"Content-Length: 2\r\n", b"Content-Length: 2\r\nContent-Type: application/json\r\n"
        )
        + b"{}"
    )


def test_set_body_replaces_content_type_in_place() -> None:
    msg = request(INVITE)
    msg.set_body(b"x", "text/plain")
    assert msg.to_bytes() == INVITE.replace(b"application/sdp", b"text/plain").replace(
        b"Content-Length: 60", b"Content-Length: 1"
    ).replace(SDP, b"x")


def test_content_length_added_or_repaired_on_output() -> None:
    no_cl = OPTIONS.replace(b"l: 0\r\n", b"")
    msg = request(no_cl)
    assert msg.to_bytes() == no_cl.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n")
    msg = request(OPTIONS)
    msg.body = b"abc"
    assert msg.to_bytes() == OPTIONS.replace(b"l: 0", b"l: 3") + b"abc"
    msg.append_header("Content-Length", "7")  # conflicting edit: the first line is rewritten
    assert msg.to_bytes() == OPTIONS.replace(b"l: 0", b"l: 3") + b"abc"
    msg = request(OPTIONS)
    msg.replace_header("l", "garbage")
    assert msg.to_bytes() == OPTIONS
    empty = Request("OPTIONS", b"sip:h", b"OPTIONS sip:h SIP/2.0", [], [], b"")
    assert empty.to_bytes() == b"OPTIONS sip:h SIP/2.0\r\nContent-Length: 0\r\n\r\n"


def test_copy_is_independent() -> None:
    original = request(OPTIONS)
    clone = original.copy()
    assert isinstance(clone, Request)
    assert (clone.method, clone.uri) == ("OPTIONS", b"sip:carol@chicago.example.com")
    clone.decrement_max_forwards()
    clone.set_uri("sip:x@y")
    clone.prepend_header("Via", "SIP/2.0/UDP p;branch=z9hG4bK9")
    assert original.to_bytes() == OPTIONS
    assert original.max_forwards == 70
    assert clone.max_forwards == 69
    copied = response(RINGING).copy()
    assert isinstance(copied, Response)
    assert (copied.status, copied.reason, copied.to_bytes()) == (180, b"Ringing", RINGING)


# ---------------------------------------------------------------------------------------------
# Local responses


def test_build_response_copies_raw_lines_and_adds_to_tag() -> None:
    req = request(INVITE.replace(b"Call-ID: ", b"i:  ").replace(b"CSeq: ", b"CSeq:"))
    resp = build_response(req, 486, "Busy Here", to_tag="b7", headers=[("Retry-After", "60")])
    assert resp.to_bytes() == (
        b"SIP/2.0 486 Busy Here\r\n"
        b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
        b"To: Bob <sip:bob@biloxi.example.com>;tag=b7\r\n"
        b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
        b"i:  a84b4c76e66710@pc33.atlanta.example.com\r\n"
        b"CSeq:314159 INVITE\r\n"
        b"Retry-After: 60\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    assert (resp.status, resp.reason) == (486, b"Busy Here")
    resp.check()
    assert parse_message(resp.to_bytes()).to_bytes() == resp.to_bytes()


def test_build_response_keeps_existing_to_tag_and_body() -> None:
    req = request(
        INVITE.replace(
            b"To: Bob <sip:bob@biloxi.example.com>",
            b"To: Bob <sip:bob@biloxi.example.com>;tag=known",
        )
    )
    resp = build_response(req, 100, "Trying", to_tag="new", body=b"hi")
    assert resp.to.tag == "known"
    assert resp.to_bytes().endswith(b"CSeq: 314159 INVITE\r\nContent-Length: 2\r\n\r\nhi")
    trying = build_response(request(INVITE), 100, "Trying")
    assert trying.to.tag is None


_TYPED = ("vias", "top_via", "cseq", "call_id", "from_", "to", "contacts", "routes",
          "record_routes", "max_forwards")  # fmt: skip
_EDITS = [
    (
        "prepend Via",
        lambda m: m.prepend_header("Via", "SIP/2.0/UDP 10.9.9.9:5070;branch=z9hG4bK-x"),
    ),
    ("pop Via", lambda m: m.pop_first_value("v")),
    ("Record-Route", lambda m: m.prepend_header("Record-Route", "<sip:10.9.9.9;lr>")),
    ("pop Route", lambda m: m.pop_first_value("route")),
    ("remove Contact", lambda m: m.remove_header("m")),
    ("replace To", lambda m: m.replace_header("To", "<sip:other@example.org>;tag=t2")),
    ("append Contact", lambda m: m.append_header("Contact", "<sip:c2@10.9.9.9>")),
    ("Max-Forwards", lambda m: m.decrement_max_forwards()),
    ("body", lambda m: m.set_body(b"x=1\r\n", "application/x")),
]


@pytest.mark.parametrize("name,edit", _EDITS, ids=[n for n, _ in _EDITS])
def test_parsed_values_follow_every_edit_and_every_copy(name: str, edit) -> None:  # type: ignore[no-untyped-def]
    """What a message (or its copy) answers after an edit equals a fresh parse of its bytes:
    each edit forgets exactly the parsed values of the header it touched."""
    original = parse_message(
        b"INVITE sip:a@10.0.0.1 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK-1, SIP/2.0/TCP 10.0.0.3;branch=z9hG4bK-2"
        b"\r\n"
        b"Route: <sip:10.0.0.1;lr>, <sip:10.0.0.8;lr>\r\nRecord-Route: <sip:10.0.0.7;lr>\r\n"
        b"From: <sip:b@10.0.0.2>;tag=f\r\nTo: <sip:a@10.0.0.1>\r\nCall-ID: c1\r\n"
        b"CSeq: 1 INVITE\r\nContact: <sip:b@10.0.0.2>\r\nMax-Forwards: 70\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    for attr in _TYPED:
        getattr(original, attr)  # everything parsed and cached before the edits
    copy = original.copy()
    edit(copy)
    for msg in (copy, original):
        fresh = parse_message(msg.to_bytes())
        for attr in _TYPED:
            assert getattr(msg, attr) == getattr(fresh, attr), (name, attr)
