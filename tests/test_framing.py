"""Stream framing (RFC 3261 §18.3, RFC 5626 keepalives), with exact bytes."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearip.sip.errors import SipProtocolError
from clearip.sip.framing import (
    PING,
    PING_BYTES,
    PONG,
    PONG_BYTES,
    FramingEvent,
    KeepalivePing,
    KeepalivePong,
    StreamFramer,
)
from clearip.sip.limits import MAX_LEADING_CRLF

OPTIONS = (
    b"OPTIONS sip:proxy.example.net SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:proxy.example.net>\r\n"
    b"From: <sip:alice@example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 63104 OPTIONS\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n\r\nc=IN IP4 192.0.2.1\r\n"  # has a CRLFCRLF
INVITE = (
    b"INVITE sip:bob@example.net SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKnashds8\r\n"
    b"Call-ID: 3848276298220188511\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)
RESPONSE = b"SIP/2.0 100 Trying\r\nCSeq: 1 INVITE\r\nl: 3\r\n\r\nabc"


def drain(framer: StreamFramer) -> list[FramingEvent]:
    events: list[FramingEvent] = []
    while (event := framer.next_event()) is not None:
        events.append(event)
    return events


def feed_all(chunks: Iterable[bytes], framer: StreamFramer | None = None) -> list[FramingEvent]:
    framer = framer or StreamFramer()
    events: list[FramingEvent] = []
    for chunk in chunks:
        framer.feed(chunk)
        events += drain(framer)
    return events


def one_by_one(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def head(content_length_line: bytes, body: bytes = b"") -> bytes:
    return (
        b"MESSAGE sip:bob@example.net SIP/2.0\r\nCSeq: 2 MESSAGE\r\n"
        + content_length_line
        + (b"\r\n\r\n" + body)
    )


def test_sentinels() -> None:
    assert isinstance(PING, KeepalivePing) and isinstance(PONG, KeepalivePong)
    assert (repr(PING), repr(PONG)) == ("PING", "PONG")
    assert (PING_BYTES, PONG_BYTES) == (b"\r\n\r\n", b"\r\n")


def test_single_message() -> None:
    framer = StreamFramer()
    assert framer.next_event() is None
    framer.feed(OPTIONS)
    assert framer.buffered == len(OPTIONS)
    assert framer.next_event() == OPTIONS
    assert framer.next_event() is None
    assert framer.buffered == 0


def test_body_is_content_length_bytes() -> None:
    framer = StreamFramer()
    framer.feed(INVITE + b"SIP/2.0")
    assert framer.next_event() == INVITE
    assert framer.next_event() is None
    assert framer.buffered == len(b"SIP/2.0")


def test_two_messages_in_one_read() -> None:
    assert feed_all([INVITE + RESPONSE]) == [INVITE, RESPONSE]


@pytest.mark.parametrize("message", [OPTIONS, INVITE, RESPONSE])
def test_split_at_every_position(message: bytes) -> None:
    for split in range(len(message) + 1):
        chunks = [message[:split], message[split:]]
        assert feed_all(chunks) == [message], split


def test_byte_by_byte_with_keepalives() -> None:
    stream = PING_BYTES + OPTIONS + PING_BYTES + PING_BYTES + INVITE + PONG_BYTES + RESPONSE
    expected = [PING, OPTIONS, PING, PING, INVITE, PONG, RESPONSE]
    assert feed_all(one_by_one(stream)) == expected
    assert feed_all([stream]) == expected


@pytest.mark.parametrize(
    "line",
    [
        b"l: 5",
        b"L:5",
        b"content-length :  5 ",
        b"CONTENT-LENGTH\t:\t5",
        b"Content-Length:\r\n 5",
        b"Content-Length: \r\n\t 5\t",
        b"Content-Length: 005",
    ],
)
def test_content_length_forms(line: bytes) -> None:
    message = head(line, b"hello")
    assert feed_all([message + OPTIONS]) == [message, OPTIONS]
    assert feed_all(one_by_one(message + OPTIONS)) == [message, OPTIONS]


def test_lookalike_headers_are_not_content_length() -> None:
    # A folded line that happens to read "l: 9" belongs to the header above it.
    message = b"SIP/2.0 200 OK\r\nX-Note: a\r\n l: 9\r\nLocation: x\r\nl: 0\r\n\r\n"
    assert feed_all([message + OPTIONS]) == [message, OPTIONS]


def test_missing_content_length_means_empty_body() -> None:
    message = b"ACK sip:bob@example.net SIP/2.0\r\nCSeq: 1 ACK\r\n\r\n"
    assert feed_all([message + OPTIONS]) == [message, OPTIONS]


def test_identical_duplicate_content_length_is_tolerated() -> None:
    message = head(b"l: 2\r\nContent-Length: 02", b"ok")
    assert feed_all([message]) == [message]


def test_ping() -> None:
    assert feed_all([PING_BYTES]) == [PING]
    assert feed_all([PING_BYTES * 3]) == [PING, PING, PING]


def test_pong_then_message() -> None:
    assert feed_all([PONG_BYTES + OPTIONS]) == [PONG, OPTIONS]


def test_ping_split_over_reads_is_one_ping() -> None:
    framer = StreamFramer()
    framer.feed(b"\r\n")
    assert framer.next_event() is None  # held: a second CRLF may follow
    assert framer.buffered == 2
    framer.feed(b"\r\n")
    assert framer.next_event() is PING
    assert framer.next_event() is None
    assert feed_all(one_by_one(PING_BYTES)) == [PING]


def test_lone_crlf_after_ping_waits_for_the_next_byte() -> None:
    framer = StreamFramer()
    framer.feed(b"\r\n\r\n\r\n")
    assert drain(framer) == [PING]
    framer.feed(b"O")
    assert drain(framer) == [PONG]
    framer.feed(OPTIONS[1:])
    assert drain(framer) == [OPTIONS]


def test_crlf_then_bare_cr_is_a_pong_and_the_cr_goes_to_the_parser() -> None:
    garbage = b"\rX\r\n\r\n"
    assert feed_all([PONG_BYTES + garbage]) == [PONG, garbage]


def test_flush_pong() -> None:
    framer = StreamFramer()
    assert framer.flush_pong() is False
    framer.feed(PONG_BYTES)
    assert framer.next_event() is None
    assert framer.flush_pong() is True
    assert framer.buffered == 0
    framer.feed(b"\r\n\r")  # could still be a ping: not a pong to flush
    assert framer.flush_pong() is False
    framer.feed(b"\n")
    assert framer.next_event() is PING


def test_crlf_inside_a_message_is_not_a_keepalive() -> None:
    framer = StreamFramer()
    framer.feed(OPTIONS[:10])
    assert framer.next_event() is None
    framer.feed(b"\r\n")  # ends nothing: the request line was not finished
    assert framer.next_event() is None


def test_exact_size_limit() -> None:
    message = head(b"Content-Length: 10", b"0123456789")
    assert feed_all([message], StreamFramer(len(message))) == [message]
    with pytest.raises(SipProtocolError) as info:
        feed_all([message], StreamFramer(len(message) - 1))
    assert info.value.status == 513


def test_head_exactly_at_the_limit() -> None:
    message = head(b"l: 0")
    assert feed_all(one_by_one(message), StreamFramer(len(message))) == [message]
    with pytest.raises(SipProtocolError) as info:
        feed_all(one_by_one(message), StreamFramer(len(message) - 1))
    assert info.value.status == 513


def test_unterminated_head_is_refused_within_one_read() -> None:
    limit, read = 1000, 100
    framer = StreamFramer(limit)
    framer.feed(b"INVITE sip:x SIP/2.0\r\n")
    fed = framer.buffered
    with pytest.raises(SipProtocolError) as info:
        while True:
            assert framer.next_event() is None
            assert fed <= limit
            framer.feed(b"X-Pad: " + b"a" * (read - 9) + b"\r\n")
            fed += read
    assert info.value.status == 513
    assert fed <= limit + read
    assert framer.buffered == 0  # the buffer is released on error


def test_declared_oversize_body_is_refused_before_it_arrives() -> None:
    framer = StreamFramer(1000)
    framer.feed(head(b"Content-Length: 1000"))
    with pytest.raises(SipProtocolError) as info:
        framer.next_event()
    assert info.value.status == 513


def test_absurdly_long_content_length_is_oversize() -> None:
    framer = StreamFramer()
    framer.feed(head(b"l: " + b"9" * 5000))
    with pytest.raises(SipProtocolError) as info:
        framer.next_event()
    assert info.value.status == 513


@pytest.mark.parametrize(
    "line",
    [
        b"Content-Length: -1",
        b"Content-Length: +1",
        b"Content-Length: 1_0",
        b"Content-Length: 1 0",
        b"Content-Length: ten",
        b"Content-Length: 0x10",
        b"Content-Length:",
        b"Content-Length: \r\n ",
        b"Content-Length: 5\rX",
        b"l: 3\r\nContent-Length: 4",
        b"Content-Length: 3\r\nl: 03\r\nl: 4",
    ],
)
def test_bad_content_length_is_400(line: bytes) -> None:
    framer = StreamFramer()
    framer.feed(head(line, b"abcd"))
    with pytest.raises(SipProtocolError) as info:
        framer.next_event()
    assert info.value.status == 400


def test_endless_crlfs_are_400() -> None:
    framer = StreamFramer()
    framer.feed(PONG_BYTES * 10 * MAX_LEADING_CRLF)
    with pytest.raises(SipProtocolError) as info:
        drain(framer)
    assert info.value.status == 400


def test_crlf_bound_allows_the_maximum_and_resets_per_message() -> None:
    burst = PONG_BYTES * MAX_LEADING_CRLF
    events = feed_all([burst + OPTIONS + burst + b"I"])
    assert events == [PING] * (MAX_LEADING_CRLF // 2) + [OPTIONS] + [PING] * (MAX_LEADING_CRLF // 2)


def test_idle_flow_may_ping_forever() -> None:
    # One ping per read, as a client pinging every 30-120 s produces: never cut off.
    framer = StreamFramer()
    for _ in range(MAX_LEADING_CRLF * 2):
        framer.feed(PING_BYTES)
        assert drain(framer) == [PING]


def test_error_is_sticky() -> None:
    framer = StreamFramer()
    framer.feed(head(b"l: -1"))
    with pytest.raises(SipProtocolError) as first:
        framer.next_event()
    for call in (framer.next_event, lambda: framer.feed(OPTIONS), framer.flush_pong):
        with pytest.raises(SipProtocolError) as again:
            call()
        assert (again.value.reason, again.value.status) == (first.value.reason, 400)


def test_many_coalesced_messages_compact_the_buffer() -> None:
    framer = StreamFramer()
    framer.feed(OPTIONS * 500 + OPTIONS[:7])
    assert drain(framer) == [OPTIONS] * 500
    assert framer.buffered == 7
    framer.feed(OPTIONS[7:])
    assert drain(framer) == [OPTIONS]


# --- property: any messages, any chunking -----------------------------------------------------

_token = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1).map(
    str.encode
)


@st.composite
def sip_messages(draw: st.DrawFn) -> bytes:
    start = draw(
        st.sampled_from(
            [b"INVITE sip:bob@example.net SIP/2.0", b"SIP/2.0 180 Ringing", b"BYE sip:a SIP/2.0"]
        )
    )
    body = draw(st.binary(max_size=300))
    headers = [
        name + b": " + value
        for name, value in draw(st.lists(st.tuples(_token, _token), max_size=6))
        if name.lower() not in (b"l", b"content-length")
    ]
    forms = [b"Content-Length: %d", b"l:%d", b"content-length :\r\n %d", b"L: 000%d"]
    if not body:
        forms.append(b"")  # missing Content-Length is 0
    form = draw(st.sampled_from(forms))
    if form:
        headers.insert(draw(st.integers(0, len(headers))), form % len(body))
    return start + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


# Pings, then at most one pong: a pong before a ping would read as a ping then a pong.
_keepalives = st.tuples(st.integers(0, 3), st.booleans())


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_keepalives, sip_messages()), max_size=6),
    st.lists(st.integers(0, 5000), max_size=20),
)
def test_any_chunking_yields_the_messages(
    items: list[tuple[tuple[int, bool], bytes]], cuts: list[int]
) -> None:
    stream = b""
    expected: list[FramingEvent] = []
    for (pings, pong), message in items:
        stream += PING_BYTES * pings + PONG_BYTES * pong + message
        expected += [PING] * pings + [PONG] * pong + [message]
    points = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    chunks = [stream[a:b] for a, b in pairwise(points)]
    framer = StreamFramer()
    assert feed_all(chunks, framer) == expected
    assert framer.buffered == 0
