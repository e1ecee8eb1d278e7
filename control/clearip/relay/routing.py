"""Turning ClearIP's 302 into next hops: Contact order, targets, and the headers to carry.

Pure functions over parsed messages; the call state machine in `call.py` uses them.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from clearip.relay.events import Target
from clearip.sip.errors import SipProtocolError
from clearip.sip.headers import NameAddr, header_key, unfold
from clearip.sip.message import Request, Response
from clearip.sip.uri import SipUri, emergency_match, parse_uri

log = logging.getLogger(__name__)

# Headers the proxy itself owns on the forwarded INVITE: never taken from a 302 or a Contact URI,
# whatever the config or a hostile redirect says (RFC 3261 §19.1.5 lets a URI name any header).
PROTECTED_HEADERS = frozenset(
    {
        "via",
        "from",
        "to",
        "call-id",
        "cseq",
        "max-forwards",
        "contact",
        "route",
        "record-route",
        "content-length",
        "content-type",
        "content-encoding",
        "body",
    }
)


@dataclass(slots=True, init=False)  # an __init__ of its own: compiled (relay/events.py)
class Candidate:
    """One Contact of a 3xx, ready to become a branch."""

    uri: SipUri  # the Contact URI without its embedded headers: the new Request-URI
    target: Target
    headers: list[tuple[str, str]]  # embedded `?name=value` headers that are allowed through
    q: float
    request_uri: str = ""  # `uri` as text (the Contact as written when it had no headers)

    def __init__(
        self,
        uri: SipUri,
        target: Target,
        headers: list[tuple[str, str]],
        q: float,
        request_uri: str = "",
    ) -> None:
        self.uri = uri
        self.target = target
        self.headers = headers
        self.q = q
        self.request_uri = request_uri or str(uri)


_IP_LITERALS: dict[str, bool] = {}  # host text -> is an IP literal (every send asks)


def is_ip_literal(host: str) -> bool:
    """True for an IPv4 or IPv6 address, False for a name that needs resolving."""
    known = _IP_LITERALS.get(host)
    if known is None:
        try:
            ipaddress.ip_address(host)
            known = True
        except ValueError:
            known = False
        if len(_IP_LITERALS) < 65536:
            _IP_LITERALS[host] = known
    return known


def default_port(transport: str) -> int:
    return 5061 if transport == "tls" else 5060


def target_for_uri(uri: SipUri) -> Target:
    """RFC 3263 without DNS SRV/NAPTR: maddr or host, the URI's port, its transport."""
    transport = uri.transport
    if transport not in ("udp", "tcp", "tls"):
        raise SipProtocolError(f"unsupported transport {transport!r}", 416)
    if uri.scheme == "sips":
        transport = "tls"
    host = uri.maddr or uri.host
    return Target(transport, host, uri.port or default_port(transport))


def order_contacts(contacts: list[NameAddr], max_contacts: int) -> list[Candidate]:
    """Contacts by q-value, highest first, ties in the order given (SPEC §3), at most N.

    A Contact that is not a routable SIP URI is skipped and logged: one bad entry in a
    redirect must not lose the call when the others are fine.
    """
    usable: list[Candidate] = []
    for contact in contacts:
        try:
            q = contact.q
            uri = parse_uri(contact.uri)
            if not isinstance(uri, SipUri):
                raise SipProtocolError("not a SIP URI")
            target = target_for_uri(uri)
        except SipProtocolError as e:
            log.warning("skipping unusable Contact in redirect: %s", e.reason)
            continue
        if uri.headers:
            headers = [(name, value) for name, value in uri.headers if _allowed_header(name)]
            bare = uri.without_headers()
            usable.append(Candidate(bare, target, headers, q, str(bare)))
        else:  # nothing to strip: the Contact as written is the Request-URI
            usable.append(Candidate(uri, target, [], q, contact.uri))
    # sorted() is stable, so equal q-values keep the order ClearIP gave
    return sorted(usable, key=lambda c: -c.q)[:max_contacts]


def _allowed_header(name: str) -> bool:
    try:
        return header_key(name) not in PROTECTED_HEADERS
    except SipProtocolError:
        return False


def headers_from_redirect(resp: Response, names: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """Every line of the configured `copy_headers` in the 3xx, values exactly as received."""
    wanted = {header_key(n) for n in names} - PROTECTED_HEADERS
    out: list[tuple[str, bytes]] = []
    for key, line in resp.header_lines():
        if key in wanted:
            colon = line.index(b":")
            # a folded value (legal SIP) is one line once copied: the header writer, rightly,
            # refuses CR and LF in a value
            out.append((_display_name(key, line[:colon]), unfold(line[colon + 1 :])))
    return out


def _display_name(key: str, raw_name: bytes) -> str:
    """Compact forms are expanded when a header is copied to another message."""
    name = raw_name.rstrip(b" \t").decode("ascii")
    return name if len(name) > 1 else "-".join(p.capitalize() for p in key.split("-"))


def apply_headers(msg: Request, headers: list[tuple[str, bytes | str]]) -> None:
    """Replace the request's own instances of each header named in `headers` with these."""
    seen: set[str] = set()
    for name, _ in headers:
        key = header_key(name)
        if key not in seen:
            seen.add(key)
            msg.remove_header(key)
    for name, value in headers:
        msg.append_header(name, value) if msg.has(name) else msg.prepend_header(name, value)


def is_emergency(request: Request, numbers: tuple[str, ...]) -> bool:
    """SPEC §3 emergency calls: the Request-URI dials one of `numbers` or is urn:service:sos."""
    try:
        return emergency_match(parse_uri(request.uri), numbers)
    except SipProtocolError:
        return False
