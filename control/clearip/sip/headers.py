"""Header names, compact forms, and the typed values of the headers a proxy reads.

Everything here works on bytes as they came off the wire and returns small dataclasses; nothing
re-serialises a header the relay does not change.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from clearip.sip.errors import SipProtocolError

# RFC 3261 §7.3.3 and later RFCs (3265, 3515, 3892, 4028, 8224 ...): compact form -> full name.
COMPACT_FORMS: dict[str, str] = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1: equivalent to several lines).
# Others (Date, WWW-Authenticate, Identity ...) may contain commas that are not separators.
LIST_HEADERS = frozenset(
    {
        "via", "contact", "route", "record-route", "path", "service-route", "allow",
        "supported", "require", "proxy-require", "unsupported", "accept", "accept-encoding",
        "accept-language", "allow-events", "content-encoding", "content-language",
        "in-reply-to", "alert-info", "call-info", "error-info", "reason", "warning",
        "p-asserted-identity", "p-preferred-identity", "history-info", "diversion",
        "accept-contact", "reject-contact", "security-client", "security-server",
        "security-verify", "privacy",
    }
)

# RFC 3261 §25.1 token characters.
_TOKEN_CHARS = (
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)


def is_token(value: bytes) -> bool:
    """True if `value` is a non-empty RFC 3261 token."""
    return bool(value) and not value.translate(None, _TOKEN_CHARS)


_KEY_CACHE: dict[bytes | str, str] = {}
_KEY_CACHE_MAX = 2048  # hostile peers can send endless distinct names; don't grow forever


def header_key(name: bytes | str) -> str:
    """Canonical lookup key of a header name: lower case, compact forms expanded."""
    key = _KEY_CACHE.get(name)  # type: ignore[call-overload]
    if key is None:
        raw = name.encode("latin-1") if isinstance(name, str) else name
        if not is_token(raw):
            raise SipProtocolError(f"invalid header name {_show(raw)}")
        lowered = raw.decode("ascii").lower()
        key = COMPACT_FORMS.get(lowered, lowered)
        if len(_KEY_CACHE) < _KEY_CACHE_MAX:
            _KEY_CACHE[name] = key  # type: ignore[index]
    return key


def ascii_uint(text: str | bytes, max_value: int) -> int | None:
    """`text` as an unsigned decimal integer of at most `max_value` (< 2**32), else None.

    Only ASCII digits count (str.isdigit() also takes "²" and other digits int() refuses), and
    leading zeros are skipped before the length bound so int() never sees a huge string.
    """
    if not text.isdigit() or not text.isascii():
        return None
    if len(text) > 10:  # more digits than any 32-bit value, unless they are leading zeros
        text = (text.lstrip(b"0") if isinstance(text, bytes) else text.lstrip("0")) or text[-1:]
        if len(text) > 10:
            return None
    value = int(text)
    return value if value <= max_value else None


def _show(value: bytes, limit: int = 40) -> str:
    """A log-safe rendering of peer bytes: bounded and escaped."""
    text = repr(value[:limit])[2:-1]
    return f"'{text}...'" if len(value) > limit else f"'{text}'"


_FOLD = re.compile(rb"\r?\n[ \t]+")


def unfold(value: bytes) -> bytes:
    """Replace RFC 3261 §7.3.1 line folding (CRLF + whitespace) by one space."""
    if b"\n" in value:
        value = _FOLD.sub(b" ", value)
    return value.strip(b" \t")


def _list_commas(value: bytes) -> Iterator[int]:
    """Indexes of the commas that separate list elements: those outside quoted strings and
    <...>. Raises SipProtocolError, once exhausted, if a quote or an angle is left open."""
    in_quote = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if in_quote:
            if c == 0x5C:  # backslash: quoted-pair
                i += 1
            elif c == 0x22:
                in_quote = False
        elif c == 0x22:
            in_quote = True
        elif c == 0x3C:
            in_angle = True
        elif c == 0x3E:
            in_angle = False
        elif c == 0x2C and not in_angle:
            yield i
        i += 1
    if in_quote:
        raise SipProtocolError("unterminated quoted string in header value")
    if in_angle:
        raise SipProtocolError("unterminated <...> in header value")


def split_list(value: bytes) -> list[bytes]:
    """Split a list header value at commas outside quoted strings and <...>."""
    if b"," not in value:
        stripped = value.strip(b" \t")
        return [stripped] if stripped else []
    if b'"' not in value and b"<" not in value:
        return [part.strip(b" \t") for part in value.split(b",") if part.strip(b" \t")]
    parts: list[bytes] = []
    start = 0
    for comma in _list_commas(value):
        part = value[start:comma].strip(b" \t")
        if part:
            parts.append(part)
        start = comma + 1
    part = value[start:].strip(b" \t")
    if part:
        parts.append(part)
    return parts


_LIST_SPACE = b" \t\r\n"


def first_element_end(value: bytes) -> int:
    """Index of the comma that ends the first non-empty element of a list value, or -1.

    `value` may still hold its folds (CRLF + whitespace): this is what lets an edit drop the
    first element of a line and keep every byte of the others as written.
    """
    start = 0
    try:
        for comma in _list_commas(value):
            if value[start:comma].strip(_LIST_SPACE):
                return comma
            start = comma + 1
    except SipProtocolError:
        pass  # the element runs to the end of the value
    return -1


def _decode(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


_PARAM_NAMES: dict[str, str] = {}  # name as written -> lower case, for valid names only
_PARAM_NAMES_MAX = 1024


def parse_params(text: str, where: str) -> dict[str, str | None]:
    """Parse `;name=value;flag` generic parameters (RFC 3261 §25.1 generic-param)."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    names = _PARAM_NAMES
    for item in text.split(";") if '"' not in text else _split_semicolons(text):
        name, eq, val = item.partition("=")
        key = names.get(name)
        if key is None:
            stripped = name.strip(" \t")
            if not stripped:
                if not eq and not val and not item.strip(" \t"):
                    continue  # ";;" — an empty parameter is skipped, as before
                raise SipProtocolError(f"bad parameter in {where}")
            if not is_token(stripped.encode("utf-8", "surrogateescape")):
                raise SipProtocolError(f"bad parameter in {where}")
            key = stripped.lower()
            if len(names) < _PARAM_NAMES_MAX:
                names[name] = key
        params[key] = val.strip(" \t") if eq else None
    return params


def _split_semicolons(text: str) -> list[str]:
    """Split at ';' outside quoted strings (a quoted param value may contain ';')."""
    if '"' not in text:
        return [p for p in text.split(";") if p.strip(" \t")]
    out: list[str] = []
    buf: list[str] = []
    in_quote = False
    escaped = False
    for ch in text:
        if in_quote:
            buf.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
            buf.append(ch)
        elif ch == ";":
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    if in_quote:
        raise SipProtocolError("unterminated quoted string in parameters")
    out.append("".join(buf))
    return [p for p in out if p.strip(" \t")]


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


# ---------------------------------------------------------------------------------------------
# Via (RFC 3261 §20.42, RFC 3581 rport)


@dataclass(slots=True, init=False)  # an __init__ of its own: compiled (relay/events.py)
class Via:
    transport: str  # upper case: UDP, TCP, TLS, SCTP, WS, WSS
    host: str  # IPv6 without brackets
    port: int | None
    params: dict[str, str | None] = field(default_factory=dict)

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None,
        params: dict[str, str | None] | None = None,
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params = {} if params is None else params

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | bool | None:
        """None: no rport; True: requested (no value yet); int: filled in by a server."""
        if "rport" not in self.params:
            return None
        val = self.params["rport"]
        if val is None or val == "":
            return True
        port = ascii_uint(val, 65535)
        if port is None:
            raise SipProtocolError("malformed Via rport parameter")
        return port

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def ttl(self) -> int | None:
        if "ttl" not in self.params:
            return None
        ttl = ascii_uint(self.params["ttl"] or "", 255)
        if ttl is None:
            raise SipProtocolError("malformed Via ttl parameter")
        return ttl

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host, self.port

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {host}{port}{format_params(self.params)}"


# ASCII: without it \s takes Unicode spaces and IGNORECASE lets "ſ" (U+017F) match "S".
_VIA_PROTO = re.compile(
    r"\s*SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9-]+)\s+", re.IGNORECASE | re.ASCII
)


def parse_via(value: bytes) -> Via:
    # the common spelling, "SIP/2.0/UDP host...", without the regex
    sp = value.find(b" ", 8)
    if value[:8] == b"SIP/2.0/" and sp > 8 and value[8:sp].replace(b"-", b"").isalnum():
        transport = value[8:sp].decode("ascii").upper()
        rest = _decode(value[sp + 1 :]).lstrip(" \t")
    else:
        text = _decode(value)
        m = _VIA_PROTO.match(text)
        if m is None:
            raise SipProtocolError("malformed Via: expected SIP/2.0/<transport> <sent-by>")
        transport = m.group(1).upper()
        rest = text[m.end() :]
    sent_by, _, params_text = rest.partition(";")
    host, port = parse_host_port(sent_by.strip(" \t"), "Via sent-by")
    params = parse_params(params_text, "Via")
    # RFC 3581: `rport` alone or `rport=port`; RFC 3261 §20.42: ttl = 1*3DIGIT (0-255)
    rport = params.get("rport")
    if rport and ascii_uint(rport, 65535) is None:
        raise SipProtocolError("malformed Via rport parameter")
    if "ttl" in params and ascii_uint(params["ttl"] or "", 255) is None:
        raise SipProtocolError("malformed Via ttl parameter")
    return Via(transport, host, port, params)


# RFC 3261 §25.1 hostname / IPv4address characters; "_" is not in the grammar but common in
# DNS names of real equipment, and harmless.
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")


def parse_host_port(text: str, where: str) -> tuple[str, int | None]:
    """`host[:port]` with IPv6 in brackets; the host comes back lower case, unbracketed.

    Whitespace around the colon is allowed (RFC 3261 §25.1: COLON = SWS ":" SWS).
    """
    if not text:
        raise SipProtocolError(f"empty host in {where}")
    if text[0] == "[":
        end = text.find("]")
        if end < 0:
            raise SipProtocolError(f"unterminated IPv6 reference in {where}")
        host = text[1:end]
        if ":" not in host or not _IPV6_CHARS.issuperset(host):  # no "%zone" either
            raise SipProtocolError(f"bad IPv6 reference in {where}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise SipProtocolError(f"bad IPv6 reference in {where}") from None
        tail = text[end + 1 :].lstrip(" \t")
    else:
        host, colon, port_text = text.partition(":")
        host = host.rstrip(" \t")
        tail = colon + port_text
        if not host or not _HOST_CHARS.issuperset(host):
            raise SipProtocolError(f"bad host in {where}")
    port: int | None = None
    if tail:
        port = ascii_uint(tail[1:].lstrip(" \t"), 65535) if tail[0] == ":" else None
        if port is None:
            raise SipProtocolError(f"bad port in {where}")
    return host.lower(), port


# ---------------------------------------------------------------------------------------------
# CSeq (RFC 3261 §20.16)


@dataclass(slots=True, init=False)  # an __init__ of its own: compiled (relay/events.py)
class CSeq:
    number: int
    method: str

    def __init__(self, number: int, method: str) -> None:
        self.number = number
        self.method = method

    def __hash__(self) -> int:
        return hash((self.number, self.method))

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(value: bytes) -> CSeq:
    parts = value.split()
    if len(parts) != 2:
        raise SipProtocolError("malformed CSeq: expected '<number> <method>'")
    num, method = parts
    # RFC 3261 §8.1.1.5: the sequence number MUST be expressible as a 32-bit unsigned integer
    number = ascii_uint(num, 0xFFFFFFFF)
    if number is None:
        raise SipProtocolError("malformed CSeq number")
    if not is_token(method):
        raise SipProtocolError("malformed CSeq method")
    return CSeq(number, method.decode("ascii"))


# ---------------------------------------------------------------------------------------------
# name-addr / addr-spec headers: From, To, Contact, Route, Record-Route, P-Asserted-Identity


@dataclass(slots=True, init=False)  # an __init__ of its own: compiled (relay/events.py)
class NameAddr:
    display: str | None  # as written, quotes removed from a quoted-string
    uri: str  # the URI text, without <>
    params: dict[str, str | None] = field(default_factory=dict)
    bracketed: bool = True

    def __init__(
        self,
        display: str | None,
        uri: str,
        params: dict[str, str | None] | None = None,
        bracketed: bool = True,
    ) -> None:
        self.display = display
        self.uri = uri
        self.params = {} if params is None else params
        self.bracketed = bracketed

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def q(self) -> float:
        """Contact q-value (RFC 3261 §20.10); 1.0 when absent, as every proxy treats it."""
        val = self.params.get("q")
        if val is None:
            return 1.0
        # qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ): ASCII digits and one dot
        # only, which keeps float() from taking "nan", "1e-1", "1_0" or non-ASCII digits
        whole, _, frac = val.partition(".")
        if not whole or ascii_uint(whole, 1) is None or (frac and ascii_uint(frac, 10**9) is None):
            raise SipProtocolError("malformed q-value in Contact")
        q = float(val)
        if q > 1.0:
            raise SipProtocolError("q-value out of range 0..1 in Contact")
        return q

    @property
    def expires(self) -> int | None:
        """The `expires` parameter; None when absent or not a 32-bit delta-seconds.

        RFC 4475 §3.1.2.4: an overlarge expiry may be treated like a missing one.
        """
        val = self.params.get("expires")
        return ascii_uint(val, 0xFFFFFFFF) if val is not None else None

    def __str__(self) -> str:
        if self.display is not None:
            display = self.display
            if display and not all(
                is_token(w.encode("utf-8", "surrogateescape")) for w in display.split()
            ):
                display = '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'
            head = f"{display} <{self.uri}>" if display else f"<{self.uri}>"
        elif self.bracketed or any(c in self.uri for c in ",;?"):
            head = f"<{self.uri}>"
        else:
            head = self.uri
        return head + format_params(self.params)


@dataclass(slots=True, frozen=True)
class StarContact:
    """`Contact: *` (RFC 3261 §10.2.2, only in REGISTER with Expires: 0)."""

    def __str__(self) -> str:
        return "*"


STAR = StarContact()


def parse_name_addr(value: bytes, where: str) -> NameAddr:
    text = _decode(value).strip(" \t")
    if not text:
        raise SipProtocolError(f"empty {where}")
    display: str | None = None
    if text[0] == '"':
        i = 1
        chars: list[str] = []
        while i < len(text):
            ch = text[i]
            if ch == "\\" and i + 1 < len(text):
                chars.append(text[i + 1])
                i += 2
                continue
            if ch == '"':
                break
            chars.append(ch)
            i += 1
        else:
            raise SipProtocolError(f"unterminated display name in {where}")
        display = "".join(chars)
        text = text[i + 1 :].lstrip(" \t")
        if not text.startswith("<"):
            raise SipProtocolError(f"expected <URI> after display name in {where}")
    lt = text.find("<")
    if lt >= 0 and (display is not None or lt == 0 or _is_display_tokens(text[:lt])):
        if display is None:
            display = text[:lt].strip(" \t") or None
        gt = text.find(">", lt)
        if gt < 0:
            raise SipProtocolError(f"unterminated <URI> in {where}")
        uri = text[lt + 1 : gt]
        if " " in uri or "\t" in uri:
            # RFC 3261 §25.1: LAQUOT/RAQUOT allow whitespace only outside the brackets
            # (RFC 4475 §3.1.2.14)
            raise SipProtocolError(f"whitespace inside <URI> in {where}")
        rest = text[gt + 1 :].strip(" \t")
        if rest and rest[0] != ";":
            raise SipProtocolError(f"unexpected text after <URI> in {where}")
        bracketed = True
    else:
        # addr-spec form: the URI cannot carry ;params or ?headers, so ';' starts header params
        uri, semi, rest = text.partition(";")
        uri = uri.strip(" \t")
        rest = semi + rest
        # RFC 3261 §20.10: a URI with a comma, semicolon or question mark (escaped headers)
        # must be in <> (RFC 4475 §3.1.2.13)
        if any(c in uri for c in " \t<>\",?"):
            raise SipProtocolError(f"malformed URI in {where}")
        bracketed = False
    if not uri or ":" not in uri:
        raise SipProtocolError(f"missing URI scheme in {where}")
    return NameAddr(display, uri, parse_params(rest[1:], where), bracketed)


def _is_display_tokens(text: str) -> bool:
    words = text.split()
    return all(is_token(w.encode("utf-8", "surrogateescape")) for w in words)


def parse_contact_list(values: list[bytes]) -> list[NameAddr] | StarContact:
    if len(values) == 1 and values[0].strip(b" \t") == b"*":
        return STAR
    out: list[NameAddr] = []
    for v in values:
        if v.strip(b" \t") == b"*":
            raise SipProtocolError("Contact: * mixed with other contacts")
        out.append(parse_name_addr(v, "Contact"))
    return out
