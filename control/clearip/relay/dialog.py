"""Requests inside a dialog (ACK for 2xx, BYE, re-INVITE, UPDATE ...) and the dialog table.

The proxy Record-Routes every call it sets up, so both ends send their in-dialog requests
through it; they are loose-routed (RFC 3261 §16.12): our own Route entries are removed and the
request goes to the next Route or, with none left, to the Request-URI.

Trusted sources (the operator's switches) keep plain loose routing: a restarted proxy has lost
its table and must still route their BYEs. An untrusted source -- a provider we sent a call to,
reaching us through its pinhole -- may only send CALLEE_METHODS within a dialog we hold with it,
from that dialog's far end, and they go only to the dialog's other end (SPEC §5): otherwise a
pinhole would make the proxy an open relay to anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clearip.relay.events import Flow, Target
from clearip.relay.routing import target_for_uri
from clearip.sip.errors import SipProtocolError
from clearip.sip.message import Request, Response, build_response, new_request
from clearip.sip.uri import SipUri, parse_uri, parse_uri_shared

if TYPE_CHECKING:
    from clearip.relay.core import ProxyCore, TxRecord

_PHRASES = {481: "Call/Transaction Does Not Exist", 416: "Unsupported URI Scheme"}

# What the far end of a dialog may send us from an untrusted address: hanging up, re-INVITE,
# session refreshes and mid-call signalling. Not REFER (it would make the caller's switch place
# a new call wherever the provider says), not MESSAGE, SUBSCRIBE or OPTIONS.
CALLEE_METHODS = frozenset({"ACK", "BYE", "INVITE", "UPDATE", "INFO", "NOTIFY", "PRACK"})

# A dialog whose BYE we never see (it went through another proxy, or was lost) is forgotten once
# no request has come in it for this long, so the table and the pinhole cannot leak. A call that
# still talks (a session refresh, RFC 4028, is every 30 minutes or so) is kept however long it
# lasts; one silent for 12 hours is taken for dead.
DIALOG_IDLE = 12 * 3600.0


@dataclass(slots=True)
class Dialog:
    call_id: str
    caller_tag: str  # From tag of the caller's INVITE
    callee_tag: str  # To tag of the 2xx that set the dialog up
    peer: str  # the next hop's IP, pinholed while the dialog lives
    caller_hop: Target | None  # where the callee's requests must go: the caller's side
    deadline: float | None
    source: str  # the caller's IP: its calls_active is counted down when the dialog ends
    last_seen: float  # when a request in it last came (from either end)
    timer: Any = None  # its place in the core's timer heap (ProxyCore.arm)


def caller_hop(invite: Request) -> Target | None:
    """Where the callee's in-dialog requests go after our Route entries: the nearest
    Record-Route the caller's side added before us, else the caller's Contact."""
    try:
        rrs = invite.record_routes
        if rrs:
            text = rrs[0].uri
        else:
            contacts = invite.contacts
            if not isinstance(contacts, list) or not contacts:
                return None
            text = contacts[0].uri
        uri = parse_uri_shared(text)
        return target_for_uri(uri) if isinstance(uri, SipUri) else None
    except SipProtocolError:
        return None


def refusal(dialog: Dialog | None, req: Request, ip: str) -> str | None:
    """Why an in-dialog request from untrusted `ip` is refused, or None when it may pass."""
    if dialog is None:
        return "no such dialog"
    if ip != dialog.peer:
        return f"not the far end of dialog {dialog.call_id!r}"
    if req.from_.tag != dialog.callee_tag or req.to.tag != dialog.caller_tag:
        return "tags do not match the dialog"
    if req.method not in CALLEE_METHODS:
        return f"{req.method} is not allowed from a next hop"
    return None


def same_hop(a: Target, b: Target) -> bool:
    return (a.transport, a.host.lower(), a.port) == (b.transport, b.host.lower(), b.port)


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
    def start(
        cls, core: ProxyCore, req: Request, flow: Flow, now: float, only_to: Target | None = None
    ) -> None:
        """Relay `req`; with `only_to`, only if it routes there (else 481 or a counted drop)."""
        fwd = req.copy()
        assert isinstance(fwd, Request)
        try:
            target = next_hop(core, fwd)
        except SipProtocolError as e:
            if only_to is not None:
                core._refuse_in_dialog(req, flow, e.reason)
                return
            relay = cls(core, core.new_server_tx(req, flow), req)
            status = e.status if 400 <= e.status < 700 else 400
            relay.answer(status, _PHRASES.get(status, "Bad Route"), now)
            return
        if only_to is not None and not same_hop(target, only_to):
            core._refuse_in_dialog(req, flow, f"routed to {target.host}:{target.port}")
            return
        server = core.new_server_tx(req, flow)
        relay = cls(core, server, req)
        fwd.decrement_max_forwards()
        core.add_via(fwd, target)
        if req.method == "INVITE":
            core.respond(server, build_response(req, 100, "Trying"), now)
        core.start_client_tx(fwd, target, relay, "relay", now)

    @staticmethod
    def forward_ack(
        core: ProxyCore, req: Request, flow: Flow, now: float, only_to: Target | None = None
    ) -> None:
        """ACK for a 2xx: its own transaction end to end, forwarded without state."""
        fwd = req.copy()
        assert isinstance(fwd, Request)
        try:
            target = next_hop(core, fwd)
        except SipProtocolError:
            core.counters.inc("malformed")
            return
        if only_to is not None and not same_hop(target, only_to):
            core._refuse_in_dialog(req, flow, f"ACK routed to {target.host}:{target.port}")
            return
        if fwd.max_forwards == 0:
            core.counters.drop("max_forwards")  # an ACK gets no 483: it is dropped, counted
            return
        fwd.decrement_max_forwards()
        core.add_via(fwd, target)
        core.send(fwd.to_bytes(), target)

    def abort(self, now: float) -> None:
        """An internal error relaying this request: 500 to its sender."""
        self.answer(500, "Server Internal Error", now)

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
        core.counters.drop("hangup_impossible")  # a 2xx with no Contact to send the BYE to
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
            raise SipProtocolError("not a SIP URI")
        target = target_for_uri(uri)
    except SipProtocolError:
        core.counters.drop("hangup_impossible")
        return
    if any(c in remote for c in " \t\r\n"):
        core.counters.drop("hangup_impossible")
        return
    to_line = b"To: " + (resp.get("to") or b"")
    from_line = b"From: " + (invite.get("from") or b"")
    call_id = b"Call-ID: " + invite.call_id.encode()
    cseq = invite.cseq.number
    for method, number in (("ACK", cseq), ("BYE", cseq + 1)):
        req = new_request(
            method,
            remote.encode(),
            [
                ("via", f"Via: {core.via_for(target)}".encode()),
                ("max-forwards", b"Max-Forwards: 70"),
                *[("route", f"Route: {r}".encode()) for r in route_set],
                ("from", from_line),
                ("to", to_line),
                ("call-id", call_id),
                ("cseq", f"CSeq: {number} {method}".encode()),
                ("content-length", b"Content-Length: 0"),
            ],
        )
        if method == "ACK":
            core.send(req.to_bytes(), target)
        else:
            core.start_client_tx(req, target, None, "hangup", now)
