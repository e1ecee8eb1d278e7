"""Requests inside a dialog (ACK for 2xx, BYE, re-INVITE, UPDATE ...) and the dialog table.

The proxy Record-Routes every call it sets up, so both ends send their in-dialog requests
through it; they are loose-routed (RFC 3261 §16.12): our own Route entries are removed and the
request goes to the next Route or, with none left, to the Request-URI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from clearip.relay.events import Flow, Target
from clearip.relay.routing import target_for_uri
from clearip.sip.errors import SipProtocolError
from clearip.sip.message import Request, Response, build_response, parse_message
from clearip.sip.uri import SipUri, parse_uri, parse_uri_shared

if TYPE_CHECKING:
    from clearip.relay.core import ProxyCore, TxRecord

_PHRASES = {481: "Call/Transaction Does Not Exist", 416: "Unsupported URI Scheme"}

# A dialog whose BYE we never see (it went through another proxy, or was lost) is forgotten after
# this long, so the table and the pinhole cannot leak.
DIALOG_MAX_AGE = 12 * 3600.0


@dataclass(slots=True)
class Dialog:
    call_id: str
    peer: str  # the next hop's IP, pinholed while the dialog lives
    deadline: float | None
    source: str  # the caller's IP: its calls_active is counted down when the dialog ends


def next_hop(core: ProxyCore, req: Request) -> Target:
    """Remove our Route entries, then route by the next Route or the Request-URI."""
    core.strip_own_routes(req)
    routes = req.routes
    text = routes[0].uri if routes else req.uri.decode("utf-8", "surrogateescape")
    uri = parse_uri_shared(text)
    if not isinstance(uri, SipUri):
        raise SipProtocolError("next hop is not a SIP URI", 416)
    target = target_for_uri(uri)
    if core.env.is_local(target.host, target.port):
        # a request for a dialog that does not run through us (a stray ACK or BYE whose
        # Request-URI names the proxy): forwarding it would send it to ourselves, 70 times
        raise SipProtocolError("no dialog here", 481)
    return target


class Relay:
    """Proxies one in-dialog request statefully and relays its responses back."""

    __slots__ = ("answered", "core", "request", "server")

    def __init__(self, core: ProxyCore, server: TxRecord, request: Request):
        self.core = core
        self.server = server
        self.request = request
        self.answered = False

    @classmethod
    def start(cls, core: ProxyCore, req: Request, flow: Flow, now: float) -> None:
        server = core.new_server_tx(req, flow)
        relay = cls(core, server, req)
        fwd = req.copy()
        assert isinstance(fwd, Request)
        try:
            target = next_hop(core, fwd)
        except SipProtocolError as e:
            status = e.status if 400 <= e.status < 700 else 400
            relay.answer(status, _PHRASES.get(status, "Bad Route"), now)
            return
        fwd.decrement_max_forwards()
        core.add_via(fwd, target)
        if req.method == "INVITE":
            core.respond(server, build_response(req, 100, "Trying"), now)
        core.start_client_tx(fwd, target, relay, "relay", now)

    @staticmethod
    def forward_ack(core: ProxyCore, req: Request, flow: Flow, now: float) -> None:
        """ACK for a 2xx: its own transaction end to end, forwarded without state."""
        fwd = req.copy()
        assert isinstance(fwd, Request)
        try:
            target = next_hop(core, fwd)
        except SipProtocolError:
            core.counters.inc("malformed")
            return
        if fwd.max_forwards == 0:
            return
        fwd.decrement_max_forwards()
        core.add_via(fwd, target)
        core.send(fwd.to_bytes(), target)

    def answer(self, status: int, reason: str, now: float) -> None:
        if not self.answered:
            self.answered = True
            self.core.reply(self.server, status, reason, now)

    def on_tx_message(self, rec: TxRecord, msg: Request | Response, now: float) -> None:
        if not isinstance(msg, Response) or msg.status == 100:
            return  # 100 Trying is hop-by-hop
        out = msg  # relayed once: edited in place
        out.pop_first_value("via")
        if msg.status >= 200:
            self.answered = True
            if self.request.method == "BYE":
                self.core.dialog_ended(self.request.call_id)
        self.core.respond(self.server, out, now)

    def on_tx_timeout(self, rec: TxRecord, now: float) -> None:
        self.answer(408, "Request Timeout", now)
        if self.request.method == "BYE":
            self.core.dialog_ended(self.request.call_id)

    def on_tx_error(self, rec: TxRecord, now: float) -> None:
        # RFC 3261 §16.9: a transport error toward the next hop is a 503 to the previous one
        self.answer(503, "Service Unavailable", now)


def hang_up(core: ProxyCore, rec: TxRecord, resp: Response, now: float) -> None:
    """ACK and BYE a 2xx from a branch we had given up on (SPEC §3): never relayed."""
    invite = rec.tx.request
    contacts = resp.contacts
    if not isinstance(contacts, list) or not contacts:
        return
    # our route set toward the callee: the Record-Route entries it added after ours, reversed
    route_set: list[str] = []
    for rr in resp.record_routes:
        if core.uri_is_local(rr.uri):
            break
        route_set.append(f"<{rr.uri}>")
    route_set.reverse()
    remote = contacts[0].uri
    hop_uri = route_set[0][1:-1] if route_set else remote
    try:
        uri = parse_uri(hop_uri)
        if not isinstance(uri, SipUri):
            return
        target = target_for_uri(uri)
    except SipProtocolError:
        return
    to_line = resp.get("to") or b""
    from_line = invite.get("from") or b""
    cseq = invite.cseq.number
    for method, number in (("ACK", cseq), ("BYE", cseq + 1)):
        lines = [
            f"{method} {remote} SIP/2.0".encode(),
            f"Via: {core.via_for(target)}".encode(),
            b"Max-Forwards: 70",
            *(f"Route: {r}".encode() for r in route_set),
            b"From: " + from_line,
            b"To: " + to_line,
            b"Call-ID: " + invite.call_id.encode(),
            f"CSeq: {number} {method}".encode(),
            b"Content-Length: 0",
        ]
        data = b"\r\n".join(lines) + b"\r\n\r\n"
        if method == "ACK":
            core.send(data, target)
        else:
            bye = parse_message(data)
            assert isinstance(bye, Request)
            core.start_client_tx(bye, target, None, "hangup", now)
