"""SIP-family URIs: ``sip:``/``sips:`` (RFC 3261 §19.1, §25.1), ``tel:`` (RFC 3966) and ``urn:``
(RFC 8141, service URNs of RFC 5031), plus the emergency-number test of SPEC §3.

Sans-IO and allocation-light: the parser cuts with ``str.partition``/``split`` and checks
characters against frozensets, so there is no regex to backtrack on hostile input. Anything
malformed raises :class:`SipProtocolError` and nothing else, whatever the input string.
"""

from __future__ import annotations

import ipaddress
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes

from .errors import SipProtocolError
from .limits import MAX_LINE_BYTES

__all__ = [
    "SipUri",
    "TelUri",
    "UrnUri",
    "emergency_match",
    "parse_uri",
    "user_number",
]

# A URI never outgrows the header line that carries it (Contact with an embedded Identity is the
# long case); refusing earlier bounds the work per URI. 414 = Request-URI Too Long (§21.4.12).
MAX_URI_CHARS = MAX_LINE_BYTES

_DIGITS = frozenset(string.digits)
_HEX = frozenset(string.hexdigits)
_ALNUM = frozenset(string.ascii_letters + string.digits)
# RFC 3261 §25.1 character classes; "%" is admitted here and its escapes checked separately.
_UNRESERVED = _ALNUM | frozenset("-_.!~*'()")
# "#" is not in RFC 3261's user-unreserved, but switches send "*67#..." unescaped everywhere;
# it is harmless inside a URI (SIP has no fragments), so refusing it would only drop calls.
_USER = _UNRESERVED | frozenset("&=+$,;?/%#")
_PASSWORD = _UNRESERVED | frozenset("&=+$,%")
_PARAM = _UNRESERVED | frozenset("[]/:&+$%")
# pname is both a token (RFC 3261 §25.1) and paramchar: keep only what both allow.
_PNAME = _ALNUM | frozenset("-.!*_+'~%")
_HEADER = _UNRESERVED | frozenset("[]/?:+$%")
_TOKEN = _ALNUM | frozenset("-.!%*_+`'~")
_HOST = _ALNUM | frozenset("-.")
_DOTTED = _DIGITS | frozenset(".")
_IPV6 = _HEX | frozenset(":.")
# Characters an hvalue may carry unescaped: unreserved + hnv-unreserved, minus "?", escaped anyway
# so that no lax reader takes it for the header separator. `quote` already keeps alnum + "_.-~".
_HVALUE_SAFE = "!*'()[]/:+$"

# RFC 3966 §3.
_VISUAL = frozenset("-.()")
_TEL_GLOBAL = _DIGITS | _VISUAL
_TEL_LOCAL = _HEX | _VISUAL | frozenset("*#")
_TEL_PNAME = _ALNUM | frozenset("-")
# uric minus ";" (which separates parameters) for isdn-subaddress.
_TEL_URIC = _UNRESERVED | frozenset("/?:@&=+$,[]%")

# RFC 8141 NSS: pchar / "/" (RFC 3986). "?" and "#" would start r/q/f-components: unsupported.
_URN_NSS = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%")
_LDH = _ALNUM | frozenset("-")

# Dialled-number separators: RFC 3966 visual-separator plus the space some UIs put in.
_NUMBER_JUNK = str.maketrans("", "", "-.() ")

Params = dict[str, str | None]


def _fail(reason: str, status: int = 400) -> SipProtocolError:
    return SipProtocolError(reason, status)


def _check_chars(text: str, allowed: frozenset[str], what: str) -> None:
    """Refuse any character outside ``allowed`` and any "%" not followed by two hex digits."""
    if not allowed.issuperset(text):
        raise _fail(f"invalid character in {what}")
    i = text.find("%")
    while i != -1:
        if len(text) < i + 3 or not _HEX.issuperset(text[i + 1 : i + 3]):
            raise _fail(f"bad %-escape in {what}")
        i = text.find("%", i + 3)


def _unescape(text: str, what: str) -> str:
    """%-decode ``text`` (escapes already checked) as UTF-8; a non-UTF-8 escape is an error."""
    if "%" not in text:
        return text
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeError:
        raise _fail(f"%-escapes in {what} are not UTF-8") from None


def _escape_header(text: str) -> str:
    return quote(text, safe=_HVALUE_SAFE)


def _check_hostname(host: str, what: str, *, allow_ipv4: bool = True) -> None:
    """RFC 3261 hostname or IPv4address (``host`` is known non-empty)."""
    if _DOTTED.issuperset(host):
        # A toplabel must start with a letter, so digits and dots can only be a dotted quad.
        parts = host.split(".")
        if not allow_ipv4 or len(parts) != 4:
            raise _fail(f"malformed {what}")
        for part in parts:
            # Equal-length digit strings compare like their values: no int() needed.
            if not 0 < len(part) <= 3 or (len(part) == 3 and part > "255"):
                raise _fail(f"malformed IPv4 address in {what}")
        return
    if not _HOST.issuperset(host):
        raise _fail(f"invalid character in {what}")
    labels = (host[:-1] if host[-1] == "." else host).split(".")
    for label in labels:
        if not label or label[0] == "-" or label[-1] == "-":
            raise _fail(f"malformed {what}")
    if labels[-1][0] in _DIGITS:
        raise _fail(f"malformed {what}")


def _parse_port(text: str) -> int:
    # Length first: int() of a huge digit string is slow and raises ValueError past 4300 digits.
    if not 0 < len(text) <= 5 or not _DIGITS.issuperset(text):
        raise _fail("malformed port in SIP URI")
    port = int(text)
    if port > 65535:
        raise _fail("port out of range in SIP URI")
    return port


def _params(items: list[str], pname: frozenset[str], pvalue: frozenset[str], what: str) -> Params:
    params: Params = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not name:
            raise _fail(f"empty parameter in {what}")
        _check_chars(name, pname, what)
        if eq:
            _check_chars(value, pvalue, what)
        name = name.lower()
        # A repeated parameter (";transport=udp;transport=tcp") has no single meaning and two
        # hops may each pick a different one: refuse it rather than guess.
        if name in params:
            raise _fail(f"repeated parameter in {what}")
        params[name] = value if eq else None
    return params


@dataclass(slots=True, init=False)  # an __init__ of its own: compiled (relay/events.py)
class SipUri:
    """A ``sip:`` or ``sips:`` URI. ``user``/``password``/param values are kept %-escaped, as
    written; ``headers`` are decoded (names and values) and re-escaped by ``str()``."""

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None = None
    params: Params = field(default_factory=dict)
    headers: list[tuple[str, str]] = field(default_factory=list)

    def __init__(
        self,
        scheme: str,
        user: str | None,
        password: str | None,
        host: str,
        port: int | None = None,
        params: Params | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = {} if params is None else params
        self.headers = [] if headers is None else headers

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += (":", self.password)
            out.append("@")
        out.append(self.host_port)
        for name, value in self.params.items():
            out += (";", name) if value is None else (";", name, "=", value)
        sep = "?"
        for name, value in self.headers:
            out += (sep, _escape_header(name), "=", _escape_header(value))
            sep = "&"
        return "".join(out)

    def copy(self) -> SipUri:
        return SipUri(
            self.scheme,
            self.user,
            self.password,
            self.host,
            self.port,
            dict(self.params),
            list(self.headers),
        )

    def without_headers(self) -> SipUri:
        """The URI to send a request to: embedded headers belong in the message, not the
        Request-URI (RFC 3261 §19.1.5)."""
        return SipUri(
            self.scheme, self.user, self.password, self.host, self.port, dict(self.params), []
        )

    @property
    def transport(self) -> str:
        value = self.params.get("transport")
        if value:
            return value.lower()
        # RFC 3261 §19.1.2 / §26.2: sips implies TLS; plain sip defaults to UDP.
        return "tls" if self.scheme == "sips" else "udp"

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    @property
    def host_port(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else _unescape(self.user, "SIP URI user part")


@dataclass(slots=True)
class TelUri:
    """A ``tel:`` URI (RFC 3966); ``number`` as written, separators included."""

    number: str
    params: Params = field(default_factory=dict)

    def __str__(self) -> str:
        out = ["tel:", self.number]
        for name, value in self.params.items():
            out += (";", name) if value is None else (";", name, "=", value)
        return "".join(out)

    @property
    def is_global(self) -> bool:
        return self.number.startswith("+")


@dataclass(slots=True)
class UrnUri:
    """A ``urn:`` URI (RFC 8141); ``nid`` lowercased, ``nss`` lowercased for service URNs."""

    nid: str
    nss: str

    def __str__(self) -> str:
        return f"urn:{self.nid}:{self.nss}"

    @property
    def is_sos(self) -> bool:
        # RFC 5031 §4.2: "sos" and every sub-service of it ("sos.fire", "sos.police", ...).
        return self.nid == "service" and (self.nss == "sos" or self.nss.startswith("sos."))


def _parse_sip(scheme: str, rest: str) -> SipUri:
    # "@" may not appear unescaped anywhere but at the end of userinfo, so the first one is it;
    # the user part itself may hold ";" and "?" (telephone-subscriber, user-unreserved).
    userinfo, at, rest = rest.partition("@")
    user: str | None = None
    password: str | None = None
    if at:
        user, colon, pw = userinfo.partition(":")
        if not user:
            raise _fail("empty user part in SIP URI")
        _check_chars(user, _USER, "SIP URI user part")
        # Decoded once here so that user_unescaped/user_number cannot fail later.
        _unescape(user, "SIP URI user part")
        if colon:
            _check_chars(pw, _PASSWORD, "SIP URI password")
            password = pw
    else:
        rest = userinfo

    rest, qmark, header_text = rest.partition("?")
    hostport, *param_items = rest.split(";")

    port: int | None = None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end == -1:
            raise _fail("unterminated IPv6 reference in SIP URI")
        host = hostport[1:end]
        after = hostport[end + 1 :]
        if after:
            if after[0] != ":":
                raise _fail("junk after IPv6 reference in SIP URI")
            port = _parse_port(after[1:])
        # Zone ids ("%eth0") have no meaning to the far end: refused by the character check.
        if not host or not _IPV6.issuperset(host):
            raise _fail("malformed IPv6 address in SIP URI")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _fail("malformed IPv6 address in SIP URI") from None
    else:
        host, colon, port_text = hostport.partition(":")
        if not host:
            raise _fail("empty host in SIP URI")
        _check_hostname(host, "SIP URI host")
        if colon:
            port = _parse_port(port_text)

    params = _params(param_items, _PNAME, _PARAM, "SIP URI parameter") if param_items else {}

    headers: list[tuple[str, str]] = []
    if qmark:
        for item in header_text.split("&"):
            name, eq, value = item.partition("=")
            if not name or not eq:
                raise _fail("malformed header in SIP URI")
            _check_chars(name, _HEADER, "SIP URI header")
            _check_chars(value, _HEADER, "SIP URI header")
            name = _unescape(name, "SIP URI header")
            value = _unescape(value, "SIP URI header")
            if not _TOKEN.issuperset(name):
                raise _fail("invalid header name in SIP URI")
            # The value is copied into a request: an escaped CR/LF would smuggle in headers.
            if not value.isprintable() and any(
                (c < " " and c != "\t") or c == "\x7f" for c in value
            ):
                raise _fail("control character in SIP URI header")
            headers.append((name, value))

    return SipUri(scheme, user, password, host.lower(), port, params, headers)


def _check_global_digits(text: str, what: str) -> None:
    # global-number-digits = "+" *phonedigit DIGIT *phonedigit
    if len(text) < 2 or text[0] != "+" or not _TEL_GLOBAL.issuperset(text[1:]):
        raise _fail(f"malformed {what}")
    if _DIGITS.isdisjoint(text):
        raise _fail(f"malformed {what}")


def _parse_tel(rest: str) -> TelUri:
    number, *items = rest.split(";")
    if number.startswith("+"):
        _check_global_digits(number, "tel URI number")
    elif not number or not _TEL_LOCAL.issuperset(number) or _VISUAL.issuperset(number):
        raise _fail("malformed tel URI number")
    params = _params(items, _TEL_PNAME, _PARAM, "tel URI parameter") if items else {}
    # RFC 3966 requires phone-context on a local number; "tel:911" is accepted anyway because
    # refusing it would fail exactly the calls that must not fail.
    context = params.get("phone-context", "")
    if "phone-context" in params:
        if not context:
            raise _fail("empty phone-context in tel URI")
        if context.startswith("+"):
            _check_global_digits(context, "tel URI phone-context")
        else:
            _check_hostname(context, "tel URI phone-context", allow_ipv4=False)
    ext = params.get("ext", "")
    if "ext" in params and (not ext or not _TEL_GLOBAL.issuperset(ext) or _DIGITS.isdisjoint(ext)):
        raise _fail("malformed tel URI extension")
    isub = params.get("isub", "")
    if "isub" in params and (not isub or not _TEL_URIC.issuperset(isub)):
        raise _fail("malformed tel URI isdn-subaddress")
    return TelUri(number, params)


def _parse_urn(rest: str) -> UrnUri:
    nid, colon, nss = rest.partition(":")
    # RFC 8141 §2: NID = alphanum 0*30ldh alphanum (2 to 32 characters).
    if (
        not colon
        or not 2 <= len(nid) <= 32
        or not _LDH.issuperset(nid)
        or nid[0] == "-"
        or nid[-1] == "-"
    ):
        raise _fail("malformed URN namespace")
    nid = nid.lower()
    if nid == "service":
        # RFC 5031 §4.2: dot-separated let-dig-hyp labels; case-insensitive.
        for label in nss.split("."):
            if not label or not _LDH.issuperset(label) or label[0] == "-" or label[-1] == "-":
                raise _fail("malformed service URN")
        return UrnUri(nid, nss.lower())
    if not nss:
        raise _fail("empty URN namespace-specific string")
    _check_chars(nss, _URN_NSS, "URN")
    return UrnUri(nid, nss)


def parse_uri(text: str | bytes | bytearray) -> SipUri | TelUri | UrnUri:
    """Parse a sip/sips/tel/urn URI (without surrounding ``<>``); raise SipProtocolError."""
    if isinstance(text, bytes | bytearray):
        if len(text) > MAX_URI_CHARS:
            raise _fail("URI too long", 414)
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise _fail("URI is not valid UTF-8") from None
    elif not isinstance(text, str):
        # A caller bug, not bad peer input.
        raise TypeError(f"parse_uri() wants str or bytes, not {type(text).__name__}")
    if len(text) > MAX_URI_CHARS:
        raise _fail("URI too long", 414)
    text = text.strip()
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon:
        raise _fail("URI has no scheme")
    if scheme == "sip" or scheme == "sips":
        return _parse_sip(scheme, rest)
    if scheme == "tel":
        return _parse_tel(rest)
    if scheme == "urn":
        return _parse_urn(rest)
    # 416 Unsupported URI Scheme (RFC 3261 §21.4.14).
    raise _fail("unsupported URI scheme", 416)


_CACHE: dict[str, SipUri | TelUri | UrnUri | SipProtocolError] = {}
_CACHE_MAX = 4096  # a proxy sees the same few hundred URIs (its own, next hops) over and over


def parse_uri_shared(text: str) -> SipUri | TelUri | UrnUri:
    """parse_uri() for hot read-only paths: results are shared, so callers MUST NOT mutate
    them (copy() first). Errors are remembered too, so a hostile URI costs one parse."""
    hit = _CACHE.get(text)
    if hit is None:
        try:
            hit = parse_uri(text)
        except SipProtocolError as e:
            hit = e
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()  # crude, bounded, and rare: a new set of URIs fills it again
        _CACHE[text] = hit
    if isinstance(hit, SipProtocolError):
        raise SipProtocolError(hit.reason, hit.status)
    return hit


def user_number(uri: SipUri | TelUri | UrnUri) -> str | None:
    """The dialled digits: user part of a sip/sips URI (its ";" parameters dropped, %-decoded)
    or the number of a tel URI, visual separators removed and any leading "+" kept. No check
    is made that what remains is digits."""
    if isinstance(uri, TelUri):
        return uri.number.translate(_NUMBER_JUNK)
    if isinstance(uri, SipUri) and uri.user is not None:
        user = uri.user.partition(";")[0]
        return _unescape(user, "SIP URI user part").translate(_NUMBER_JUNK)
    return None


def _clean_number(number: str) -> str:
    number = number.translate(_NUMBER_JUNK)
    return number[2:] if number.startswith("+1") and len(number) > 2 else number


def emergency_match(uri: SipUri | TelUri | UrnUri, numbers: Iterable[str]) -> bool:
    """SPEC §3: an SOS service URN, or a user number equal to one of ``numbers`` once visual
    separators and a leading "+1" or "1" are ignored ("+1-911", "1911", "9-1-1" match "911";
    "19110" does not)."""
    if isinstance(uri, UrnUri):
        return uri.is_sos
    dialled = user_number(uri)
    if not dialled:
        return False
    wanted = {_clean_number(n) for n in numbers} - {""}
    if dialled in wanted:
        return True
    # The prefix is tried as an alternative, not stripped from both sides: stripping "1" from
    # a configured "112" too would make a dialled "12" an emergency call.
    if dialled.startswith("+1"):
        return dialled[2:] in wanted
    return dialled.startswith("1") and dialled[1:] in wanted
