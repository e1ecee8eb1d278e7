"""URI parsing and serialising (RFC 3261 §19.1/§25.1, RFC 3966, RFC 5031) and SPEC §3's
emergency-number test."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from clearip.sip.errors import SipProtocolError
from clearip.sip.uri import (
    MAX_URI_CHARS,
    SipUri,
    TelUri,
    UrnUri,
    emergency_match,
    parse_uri,
    user_number,
)

EMERGENCY = ("911", "933")


def sip(text: str | bytes) -> SipUri:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    return uri


# --- sip: / sips: -------------------------------------------------------------------------


def test_typical_request_uri() -> None:
    uri = sip("sip:+12025550123@127.0.0.13:5060;user=phone")
    assert uri == SipUri("sip", "+12025550123", None, "127.0.0.13", 5060, {"user": "phone"}, [])
    assert uri.transport == "udp"
    assert uri.host_port == "127.0.0.13:5060"
    assert not uri.is_ipv6


def test_escaped_user_is_kept_as_written() -> None:
    # RFC 4475 §3.1.1.1 style: "%61lice" is "alice", but the URI keeps what the peer wrote.
    uri = sip("sip:%61lice@example.com")
    assert uri.user == "%61lice"
    assert uri.user_unescaped == "alice"
    assert str(uri) == "sip:%61lice@example.com"


def test_ipv6_reference() -> None:
    uri = sip("sip:[2001:db8::10]:5070;transport=tcp")
    assert uri.user is None
    assert uri.host == "2001:db8::10"
    assert uri.port == 5070
    assert uri.is_ipv6
    assert uri.host_port == "[2001:db8::10]:5070"
    assert uri.transport == "tcp"
    assert str(uri) == "sip:[2001:db8::10]:5070;transport=tcp"


def test_ipv6_without_port_and_uppercase() -> None:
    uri = sip("sip:bob@[2001:DB8::A]")
    assert uri.host == "2001:db8::a"
    assert uri.port is None
    assert uri.host_port == "[2001:db8::a]"
    assert str(uri) == "sip:bob@[2001:db8::a]"


def test_sips_defaults_to_tls() -> None:
    uri = sip("SIPS:Alice@Example.COM")
    assert uri.scheme == "sips"
    assert uri.user == "Alice"  # user part is case-sensitive (RFC 3261 §19.1.4)
    assert uri.host == "example.com"
    assert uri.transport == "tls"
    assert str(uri) == "sips:Alice@example.com"


def test_transport_param_is_lowercased() -> None:
    assert sip("sip:h;transport=TCP").transport == "tcp"
    assert sip("sips:h;transport=WS").transport == "ws"


def test_flag_params_and_maddr() -> None:
    uri = sip("sip:proxy.example.com;LR;Maddr=192.0.2.7;ttl=15")
    assert uri.params == {"lr": None, "maddr": "192.0.2.7", "ttl": "15"}
    assert list(uri.params) == ["lr", "maddr", "ttl"]
    assert uri.maddr == "192.0.2.7"
    assert str(uri) == "sip:proxy.example.com;lr;maddr=192.0.2.7;ttl=15"
    assert sip("sip:h").maddr is None


def test_user_password_port() -> None:
    uri = sip("sip:alice:secret@host.example:0")
    assert (uri.user, uri.password, uri.port) == ("alice", "secret", 0)
    assert str(uri) == "sip:alice:secret@host.example:0"
    assert sip("sip:alice:@h").password == ""
    assert str(sip("sip:alice:@h")) == "sip:alice:@h"
    assert sip("sip:h:65535").port == 65535


def test_user_may_hold_semicolon_and_question_mark() -> None:
    # RFC 3261 user-unreserved: ";" and "?" belong to the user when they come before "@".
    uri = sip("sip:alice;day=tue@host")
    assert uri.user == "alice;day=tue"
    assert uri.params == {}
    uri = sip("sip:+12025550123;npdi;rn=+12025550000@h;user=phone")
    assert uri.user == "+12025550123;npdi;rn=+12025550000"
    assert uri.params == {"user": "phone"}
    assert sip("sip:a?b@h").user == "a?b"
    # RFC 4475 §3.1.1.13: an escaped "@" inside a user parameter.
    uri = sip("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u%40example.net"
    assert uri.host == "example.com"


def test_embedded_headers_are_unescaped() -> None:
    # The Contact was <sip:+1202@h?Identity=...>; the caller stripped the <>.
    uri = sip("sip:+1202@h?Identity=eyJ%3Bx%3D1&Foo=a%20b")
    assert uri.headers == [("Identity", "eyJ;x=1"), ("Foo", "a b")]
    assert uri.params == {}
    assert str(uri) == "sip:+1202@h?Identity=eyJ%3Bx%3D1&Foo=a%20b"


def test_embedded_identity_header_round_trip() -> None:
    identity = "eyJhbGc.eyJhdHRlc3Q.c2ln;info=<https://cert.example/a.pem>;alg=ES256;ppt=shaken"
    uri = SipUri("sip", "+12025550123", None, "10.0.0.1", 5060, {"transport": "tcp"})
    uri.headers.append(("Identity", identity))
    text = str(uri)
    assert text == (
        "sip:+12025550123@10.0.0.1:5060;transport=tcp?Identity=eyJhbGc.eyJhdHRlc3Q.c2ln"
        "%3Binfo%3D%3Chttps://cert.example/a.pem%3E%3Balg%3DES256%3Bppt%3Dshaken"
    )
    assert sip(text).headers == [("Identity", identity)]


def test_header_escaping_covers_hvalue_specials() -> None:
    uri = SipUri("sip", None, None, "h", headers=[("X", '%&=?<>" ;,\r\n\x00é')])
    assert str(uri) == "sip:h?X=%25%26%3D%3F%3C%3E%22%20%3B%2C%0D%0A%00%C3%A9"
    assert sip(str(uri).replace("%0D%0A%00", "")).headers == [("X", '%&=?<>" ;,é')]


def test_header_with_empty_value() -> None:
    uri = sip("sip:h?Subject=")
    assert uri.headers == [("Subject", "")]
    assert str(uri) == "sip:h?Subject="


def test_without_headers_and_copy() -> None:
    uri = sip("sip:+1202@h:5080;transport=tcp;maddr=10.1.1.1?Identity=abc&P-Asserted-Identity=x")
    bare = uri.without_headers()
    assert str(bare) == "sip:+1202@h:5080;transport=tcp;maddr=10.1.1.1"
    assert bare.headers == []
    assert uri.headers == [("Identity", "abc"), ("P-Asserted-Identity", "x")]
    bare.params["lr"] = None
    assert "lr" not in uri.params

    twin = uri.copy()
    assert twin == uri and twin is not uri
    twin.params["transport"] = "udp"
    twin.headers.clear()
    assert uri.transport == "tcp"
    assert len(uri.headers) == 2


def test_whitespace_stripped_and_bytes_accepted() -> None:
    assert str(parse_uri("  sip:bob@h \r\n")) == "sip:bob@h"
    assert str(parse_uri(b"sip:bob@h;lr")) == "sip:bob@h;lr"
    assert str(parse_uri(bytearray(b"tel:+1-202"))) == "tel:+1-202"


def test_hash_allowed_in_user() -> None:
    # Not RFC 3261, but universal in switch-generated URIs ("*67#...").
    assert sip("sip:*67#2025550123@h").user == "*67#2025550123"


@pytest.mark.parametrize(
    "text",
    [
        "sip:+12025550123@127.0.0.13:5060;user=phone",
        "sip:%61lice@example.com",
        "sip:[2001:db8::10]:5070;transport=tcp",
        "sips:alice@example.com",
        "sip:alice:pw@example.com:5061;transport=tls;lr",
        "sip:proxy.example.com;lr;maddr=192.0.2.7",
        "sip:+1202@h?Identity=eyJ%3Bx%3D1&Foo=a%20b",
        "sip:alice;day=tue@host",
        "sip:example.com.",
        "sip:a-b.c-d.example",
        "sip:h;x=[::1]",
        "tel:+1-202-555-0123;ext=12",
        "tel:+1-202-555-0123;isub=1411",
        "tel:7042;phone-context=example.com",
        "tel:863-1234;phone-context=+1-914-555",
        "tel:*67#",
        "urn:service:sos",
        "urn:service:sos.police",
        "urn:service:counseling.mental-health",
        "urn:ietf:rfc:3261",
        "urn:example:A/b%20c",
    ],
)
def test_canonical_round_trip(text: str) -> None:
    assert str(parse_uri(text)) == text


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("", 400),
        ("   ", 400),
        ("alice@example.com", 400),
        ("http://example.com/", 416),
        ("mailto:alice@example.com", 416),
        ("sip:", 400),
        ("sip:alice@", 400),
        ("sip:@h", 400),
        ("sip::pw@h", 400),
        ("sip:alice@host name", 400),
        ("sip:ali ce@host", 400),
        ("sip:alice@host:", 400),
        ("sip:alice@host:65536", 400),
        ("sip:alice@host:-1", 400),
        ("sip:alice@host:+5", 400),
        ("sip:alice@host:5_0", 400),
        ("sip:alice@host:１２", 400),
        ("sip:alice@host:" + "9" * 5000, 400),
        ("sip:alice@host:50:60", 400),
        ("sip:[2001:db8::1", 400),
        ("sip:[2001:db8::1]x", 400),
        ("sip:[2001:db8::1]:", 400),
        ("sip:[]", 400),
        ("sip:[fe80::1%eth0]", 400),
        ("sip:[2001:db8::1::2]", 400),
        ("sip:[192.0.2.1]", 400),
        ("sip:2001:db8::1", 400),
        ("sip:256.1.1.1", 400),
        ("sip:1.2.3", 400),
        ("sip:1.2.3.4.", 400),
        ("sip:example.3com", 400),
        ("sip:-example.com", 400),
        ("sip:example-.com", 400),
        ("sip:a..b", 400),
        ("sip:ex%61mple.com", 400),
        ("sip:exämple.com", 400),
        ("sip:h;", 400),
        ("sip:h;;lr", 400),
        ("sip:h;=x", 400),
        ("sip:h;transport=udp;transport=tcp", 400),
        ("sip:h;TRANSPORT=udp;transport=tcp", 400),
        ("sip:h;a=b=c", 400),
        ("sip:h;a=<x>", 400),
        ("sip:%zzlice@h", 400),
        ("sip:%6@h", 400),
        ("sip:%ff@h", 400),
        ("sip:a<b@h", 400),
        ("sip:h?", 400),
        ("sip:h?X", 400),
        ("sip:h?=x", 400),
        ("sip:h?X=1&", 400),
        ("sip:h?X=a%0D%0AVia:%20evil", 400),
        ("sip:h?X=%00", 400),
        ("sip:h?X%3A=1", 400),
        ("sip:h?X=%C3", 400),
        ("sip:h?X=a b", 400),
        ('sip:h?X=a"b', 400),
        ("sip:bob@h>", 400),
        ("tel:", 400),
        ("tel:+", 400),
        ("tel:+-", 400),
        ("tel:+1 202", 400),
        ("tel:---", 400),
        ("tel:+1202;ext=", 400),
        ("tel:+1202;ext=ab", 400),
        ("tel:+1202;phone-context=", 400),
        ("tel:1234;phone-context=+", 400),
        ("tel:1234;phone-context=1.2.3.4", 400),
        ("tel:+1202;isub=", 400),
        ("tel:+1202;a_b=1", 400),
        ("tel:+1202;ext=1;EXT=2", 400),
        ("tel:+1202?x=y", 400),
        ("urn:", 400),
        ("urn:service", 400),
        ("urn:service:", 400),
        ("urn:service:sos..fire", 400),
        ("urn:service:sos.", 400),
        ("urn:service:sos;x", 400),
        ("urn:x:abc", 400),
        ("urn:-ab:abc", 400),
        ("urn:ietf:", 400),
        ("urn:ietf:a?b", 400),
        ("urn:ietf:a b", 400),
    ],
)
def test_malformed(text: str, status: int) -> None:
    with pytest.raises(SipProtocolError) as info:
        parse_uri(text)
    assert info.value.status == status


def test_invalid_utf8_bytes() -> None:
    with pytest.raises(SipProtocolError):
        parse_uri(b"sip:\xffalice@h")


def test_too_long() -> None:
    long_user = "a" * MAX_URI_CHARS
    with pytest.raises(SipProtocolError) as info:
        parse_uri(f"sip:{long_user}@h")
    assert info.value.status == 414
    with pytest.raises(SipProtocolError):
        parse_uri(f"sip:{long_user}@h".encode())


def test_not_a_string_is_a_caller_bug() -> None:
    with pytest.raises(TypeError):
        parse_uri(42)  # type: ignore[arg-type]


# --- tel: and urn: ------------------------------------------------------------------------


def test_tel_global_with_extension() -> None:
    uri = parse_uri("tel:+1-202-555-0123;ext=12")
    assert uri == TelUri("+1-202-555-0123", {"ext": "12"})
    assert isinstance(uri, TelUri) and uri.is_global
    assert user_number(uri) == "+12025550123"


def test_tel_local_with_phone_context() -> None:
    uri = parse_uri("TEL:7042;Phone-Context=example.com")
    assert uri == TelUri("7042", {"phone-context": "example.com"})
    assert isinstance(uri, TelUri) and not uri.is_global
    assert str(uri) == "tel:7042;phone-context=example.com"
    assert parse_uri("tel:863-1234;phone-context=+1-914-555") == TelUri(
        "863-1234", {"phone-context": "+1-914-555"}
    )


def test_tel_local_without_context_is_accepted() -> None:
    # RFC 3966 wants phone-context, but "tel:911" must not be refused.
    assert parse_uri("tel:911") == TelUri("911", {})


def test_tel_params() -> None:
    uri = parse_uri("tel:+1(202)555.0123;isub=AB12;npdi;rn=+1-202-555-0000")
    assert uri == TelUri("+1(202)555.0123", {"isub": "AB12", "npdi": None, "rn": "+1-202-555-0000"})
    assert user_number(uri) == "+12025550123"


def test_service_urns() -> None:
    sos = parse_uri("urn:service:sos")
    assert sos == UrnUri("service", "sos")
    assert isinstance(sos, UrnUri) and sos.is_sos
    police = parse_uri("URN:Service:SOS.Police")
    assert police == UrnUri("service", "sos.police")
    assert str(police) == "urn:service:sos.police"
    assert isinstance(police, UrnUri) and police.is_sos
    assert not UrnUri("service", "counseling").is_sos
    assert not UrnUri("service", "sosx").is_sos
    assert not UrnUri("example", "sos").is_sos


def test_other_urn_keeps_nss_case() -> None:
    assert parse_uri("urn:IETF:RFC:3261") == UrnUri("ietf", "RFC:3261")


# --- user_number and emergency_match ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("sip:+12025550123@h;user=phone", "+12025550123"),
        ("sip:+1-202-555-0123;isub=12@h", "+12025550123"),
        ("sip:+12025550123;npdi;rn=+12025550000@h", "+12025550123"),
        ("sip:%2B1%20(202)%20555.0123@h", "+12025550123"),
        ("sips:911@h", "911"),
        ("sip:alice@h", "alice"),
        ("tel:9-1-1", "911"),
        ("tel:+1-202-555-0123;ext=12", "+12025550123"),
        ("sip:h", None),
        ("urn:service:sos", None),
    ],
)
def test_user_number(text: str, number: str | None) -> None:
    assert user_number(parse_uri(text)) == number


@pytest.mark.parametrize(
    "text",
    [
        "sip:911@h",
        "sip:+1911@h",
        "sip:1911@h",
        "sip:+1-911@h",
        "sip:9-1-1@h",
        "sip:933@h;user=phone",
        "sips:911@h",
        "sip:911;phone-context=+1@h;user=phone",
        "sip:%39%31%31@h",
        "sip:+1%20911@h",
        "tel:911",
        "tel:+1911",
        "tel:+1-911",
        "tel:1-933",
        "tel:9.1.1;phone-context=example.com",
        "urn:service:sos",
        "urn:service:sos.fire",
        "urn:service:sos.police",
        "URN:SERVICE:SOS.ambulance",
    ],
)
def test_emergency_matches(text: str) -> None:
    assert emergency_match(parse_uri(text), EMERGENCY)


@pytest.mark.parametrize(
    "text",
    [
        "sip:19110@h",
        "sip:9110@h",
        "sip:91@h",
        "sip:11@h",
        "sip:1@h",
        "sip:+1@h",
        "sip:+911@h",
        "sip:+44911@h",
        "sip:2911@h",
        "sip:+12025550123@h",
        "sip:alice@h",
        "sip:911.example.com",
        "sip:h;user=911",
        "tel:+1-202-555-0911",
        "tel:19110",
        "urn:service:counseling",
        "urn:service:sosx",
    ],
)
def test_emergency_non_matches(text: str) -> None:
    assert not emergency_match(parse_uri(text), EMERGENCY)


def test_emergency_numbers_are_normalised() -> None:
    uri = parse_uri("sip:+1911@h")
    assert emergency_match(uri, ["9-1-1"])
    assert emergency_match(uri, ["+1 911"])
    assert not emergency_match(uri, [])


def test_emergency_prefix_is_not_stripped_from_configured_numbers() -> None:
    # "112" configured: dialling 112 or +1112 matches, dialling 12 must not.
    assert emergency_match(parse_uri("sip:112@h"), ["112"])
    assert emergency_match(parse_uri("tel:+1112"), ["112"])
    assert not emergency_match(parse_uri("sip:12@h"), ["112"])


def test_emergency_numbers_iterable_consumed_once() -> None:
    assert emergency_match(parse_uri("tel:933"), iter(["911", "933"]))


# --- properties: any string gives a URI or SipProtocolError, never anything else ---------

VALID = [
    "sip:+12025550123@127.0.0.13:5060;user=phone",
    "sip:%61lice:pw@example.com",
    "sips:[2001:db8::10]:5070;transport=tcp;lr",
    "sip:+1202;npdi@h?Identity=eyJ%3Bx%3D1&Foo=a%20b",
    "tel:+1-202-555-0123;ext=12;isub=1",
    "tel:7042;phone-context=example.com",
    "urn:service:sos.police",
    "urn:ietf:rfc:3261",
]
SIP_CHARS = "sipteurn:@[]%;?=&+-.()/#*<>\"' \t\r\n\x00aAfF019é€"


def _parse_or_error(text: str | bytes) -> SipUri | TelUri | UrnUri | None:
    try:
        uri = parse_uri(text)
    except SipProtocolError as exc:
        assert 100 <= exc.status <= 699
        assert len(exc.reason) < 80  # never echoes the input
        return None
    _check_serialises(uri)
    return uri


def _check_serialises(uri: SipUri | TelUri | UrnUri) -> None:
    text = str(uri)
    # Safe to drop into a header between <>: printable ASCII, no space, quote or angle bracket.
    assert text.isascii() and text.isprintable()
    assert not set(text) & set(' <>"')
    # Serialising is stable: the output parses back to an equal object.
    assert parse_uri(text) == uri
    if isinstance(uri, SipUri | TelUri):
        user_number(uri)
        emergency_match(uri, EMERGENCY)
    if isinstance(uri, SipUri):
        assert uri.user_unescaped is not None or uri.user is None
        bare = uri.without_headers()
        assert bare.headers == [] and parse_uri(str(bare)) == bare


@given(st.text())
def test_any_text(text: str) -> None:
    _parse_or_error(text)


@given(st.binary())
def test_any_bytes(data: bytes) -> None:
    _parse_or_error(data)


@given(
    st.sampled_from(["sip:", "sips:", "tel:", "urn:", "urn:service:", "SIP:"]), st.text(SIP_CHARS)
)
def test_scheme_and_sip_alphabet(scheme: str, rest: str) -> None:
    _parse_or_error(scheme + rest)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        char = draw(st.sampled_from(SIP_CHARS) | st.characters())
        if kind == "insert":
            text = text[:pos] + char + text[pos:]
        elif kind == "delete":
            text = text[:pos] + text[pos + 1 :]
        elif kind == "replace":
            text = text[:pos] + char + text[pos + 1 :]
        else:
            end = draw(st.integers(pos, len(text)))
            text = text[:pos] + text[pos:end] * 2 + text[end:]
    return text


@given(mutated())
@example("sip:h?X=%0A")
@example("sip:[::1")
@example("sip:h:" + "9" * 5000)
def test_mutated_valid_uris(text: str) -> None:
    _parse_or_error(text)


@pytest.mark.parametrize("text", VALID)
def test_valid_seeds_parse(text: str) -> None:
    uri = parse_uri(text)
    _check_serialises(uri)
    assert str(uri) == text


@given(
    st.lists(
        st.tuples(
            st.text(st.sampled_from("abcXYZ-._!*+~%`'"), min_size=1),
            st.text(st.characters(exclude_categories=["Cs", "Cc"])),
        ),
        max_size=4,
    )
)
def test_any_header_values_round_trip(headers: list[tuple[str, str]]) -> None:
    uri = SipUri("sip", "bob", None, "example.com", None, {}, headers)
    assert parse_uri(str(uri)) == uri
