"""The proxy core: SIP in, SIP out, no sockets and no clock (SPEC §3).

`ProxyCore.receive()` takes one message's bytes with the `Flow` it came on; `on_timer()` runs
what is due; `data_to_send()` hands over the `Send` records the adapter must put on the wire.
Transactions (RFC 3261 §17) absorb retransmissions; `Call` (call.py) runs the ClearIP and
provider stages of each INVITE; in-dialog requests are loose-routed (§16.12) by `Relay`.

Longer than 700 lines: the dispatch of every request and response with its trust, limit,
loop and overload checks, and the timer heap. The call flow proper is a table in call.py and
the dialogs are in dialog.py; what is left here is what every message goes through.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from clearip.config import Config, HostPort
from clearip.notices import Throttle
from clearip.relay.call import Call
from clearip.relay.counters import Counters
from clearip.relay.dialog import DIALOG_IDLE, Dialog, Relay, caller_hop, hang_up, refusal
from clearip.relay.events import Address, Flow, Send, Target
from clearip.relay.ids import Ids
from clearip.relay.overload import OverloadControl
from clearip.relay.refusals import Refusals
from clearip.relay.routing import default_port, is_emergency, is_ip_literal
from clearip.sip.errors import SipProtocolError
from clearip.sip.headers import Via
from clearip.sip.message import Request, Response, build_response, parse_message
from clearip.sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    TransactionError,
    TxDeliver,
    TxEvent,
    TxSend,
    TxTerminated,
    TxTimeout,
    TxTransportError,
    client_key,
    server_key,
)
from clearip.sip.uri import SipUri, parse_uri_shared

log = logging.getLogger("clearip.relay")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, PRACK, INFO, REFER, NOTIFY"
IN_DIALOG_METHODS = frozenset(
    {"ACK", "BYE", "INVITE", "UPDATE", "PRACK", "INFO", "REFER", "NOTIFY", "OPTIONS", "MESSAGE"}
)


class Environment(Protocol):
    """What the core needs to know about the host; the adapter answers from its sockets."""

    def via_address(self, transport: str, dest_host: str) -> Address:
        """Sent-by for our Via toward `dest_host` (this worker's own port for UDP)."""
        ...

    def rr_address(self, transport: str, peer_host: str) -> Address:
        """Our address for a Record-Route entry facing `peer_host` (advertise applied)."""
        ...

    def is_local(self, host: str, port: int | None) -> bool:
        """True if host:port reaches this proxy (a Route or Request-URI naming us)."""
        ...

    def is_trusted(self, ip: str) -> bool:
        """The trusted list (trust.sources ∪ state file)."""
        ...

    def pinhole(self, host: str, is_open: bool) -> None:
        """This worker's first call to next hop `host` began, or its last one ended."""
        ...

    def notice(self, kind: str, detail: dict[str, object]) -> None:
        """A warning for the operator (clearip.notices), throttled for the whole proxy."""
        ...


@dataclass(slots=True, init=False)  # an __init__ of its own: compiled (relay/events.py)
class TxRecord:
    """A transaction with where its messages go and who gets its results."""

    tx: ClientTransaction | ServerTransaction
    target: Target
    owner: Any = None  # Call, Relay, or None (fire-and-forget ACK/BYE/CANCEL we originate)
    role: str = ""  # what the transaction is to its owner: "clearip", "branch", "cancel" ...
    data: Any = None  # the owner's per-transaction state (e.g. the Branch)
    # client transactions: the IP the adapter sent to (resolved when the target is a name);
    # `hole` when that address holds a pinhole for the transaction's life (its answers)
    dest: str | None = None
    hole: bool = False
    timer: _Ticket | None = None  # its place in the timer heap (ProxyCore.arm)

    def __init__(
        self,
        tx: ClientTransaction | ServerTransaction,
        target: Target,
        owner: Any = None,
        role: str = "",
        data: Any = None,
    ) -> None:
        self.tx = tx
        self.target = target
        self.owner = owner
        self.role = role
        self.data = data
        self.dest = None
        self.hole = False
        self.timer = None


TIMER_SWEEP_MIN = 1024  # fewer cancelled tickets than this are not worth a sweep


@dataclass(slots=True, init=False)  # an __init__ of its own: compiled (relay/events.py)
class _Ticket:
    """A scheduled object's place in the timer heap; `obj` None once cancelled."""

    when: float
    obj: Any

    def __init__(self, when: float, obj: Any) -> None:
        self.when = when
        self.obj = obj


# A timer heap entry: (when, sequence, ticket). A plain tuple, so the heap compares in C (the
# sequence breaks ties before the object would be compared).
_Timer = tuple[float, int, Any]


class ProxyCore:
    def __init__(
        self,
        config: Config,
        env: Environment,
        counters: Counters,
        worker: int = 0,
        *,
        instance: str | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ):
        self.config = config
        self.env = env
        self.counters = counters
        self.worker = worker
        # Branches and tags are unguessable (64 random bits each): every provider sees our Via,
        # and a branch that can be predicted is a response that can be forged. `instance`
        # names this proxy (all its workers): a Via of ours in a request is a loop, a twin
        # proxy's is not. Tests inject `random_bytes` to assert exact bytes.
        self.ids = Ids(worker, instance or random_bytes(4).hex(), random_bytes)
        self._outbox: list[Send] = []
        self._timers: list[_Timer] = []
        self._cancelled = 0  # cancelled tickets still in the heap
        self._seq = itertools.count()
        self.server_txs: dict[tuple[Any, ...], TxRecord] = {}
        self.client_txs: dict[tuple[str, str], TxRecord] = {}
        self.calls: dict[tuple[Any, ...], Any] = {}  # INVITE server key -> Call
        self.link_conns: list[int] = []  # ClearIP link connections that are up
        self._link_rr = 0
        self.draining = False  # shutting down: no new calls
        # past the knee: new calls beyond what the worker keeps up with get 503 at once
        self.overload = OverloadControl(config.limits.overload_lag)
        self.refusals = Refusals()  # INVITEs answered statelessly, until Timer B
        self.notices = Throttle()  # warnings for the operator, at most once a minute each
        self.pinholes: dict[str, int] = {}  # next-hop IP -> calls/dialogs using it
        self.dialogs: dict[str, Dialog] = {}  # Call-ID -> Dialog, for calls this worker set up

    # -- adapter interface ---------------------------------------------------------------------

    def data_to_send(self) -> list[Send]:
        out, self._outbox = self._outbox, []
        return out

    def next_deadline(self) -> float | None:
        timers = self._timers
        while timers:
            when, _, ticket = timers[0]
            if ticket.obj is not None:
                return when
            heapq.heappop(timers)  # cancelled: the object moved or dropped its timer
            self._cancelled -= 1
        return None

    def on_timer(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, ticket = heapq.heappop(timers)
            obj = ticket.obj
            if obj is None:
                self._cancelled -= 1
                continue
            ticket.obj = None
            obj.timer = None
            if isinstance(obj, TxRecord):
                self._tx_events(obj, obj.tx.on_timer(now), now)
            elif hasattr(obj, "on_timer"):
                self._guarded(obj, now, obj.on_timer, now)
            else:  # a Dialog: forgotten once idle for DIALOG_IDLE
                self._dialog_timer(obj, now)

    def arm(self, obj: Any) -> None:
        """(Re)schedule `obj` at its current deadline, or unschedule it (deadline None).

        The heap holds a ticket per scheduled object, never the object itself once the
        ticket is cancelled: a call answered long before its 120 s ring timer is freed at once,
        not when that timer comes up (on main every call of the last two minutes stayed alive
        that way: 17 KB a call, issue 12). Cancelled tickets are swept out of the heap once
        they make up half of it.
        """
        when = _deadline(obj)
        ticket = obj.timer
        if ticket is not None:
            if ticket.when == when:
                return
            ticket.obj = None
            self._cancelled += 1
        if when is None:
            obj.timer = None
            return
        ticket = _Ticket(when, obj)
        obj.timer = ticket
        timers = self._timers
        heapq.heappush(timers, (when, next(self._seq), ticket))
        if self._cancelled > TIMER_SWEEP_MIN and 2 * self._cancelled > len(timers):
            self._timers = [entry for entry in timers if entry[2].obj is not None]
            heapq.heapify(self._timers)
            self._cancelled = 0

    def receive(self, data: bytes, flow: Flow, now: float, waited: float = 0.0) -> None:
        """One complete SIP message (a datagram, or one framed from a stream); `waited`: the
        seconds it sat in a socket queue before the adapter read it (0 when unknown)."""
        counters = self.counters
        if not flow.upstream:
            counters.inc("messages_in")
            counters.source(flow.remote[0], "messages_in")
        try:
            msg = parse_message(
                data,
                max_bytes=self.config.limits.max_message_bytes,
                max_headers=self.config.limits.max_headers,
                framed=flow.transport != "udp",
            )
            if isinstance(msg, Response):
                msg.check_response_routing()
            else:
                msg.check()
                # whatever the method (an OPTIONS is answered by us, but what it names must
                # still be a URI): an unparsable Request-URI is a 400 (RFC 3261 §16.3)
                parse_uri_shared(msg.uri.decode("utf-8", "surrogateescape"))
        except SipProtocolError as e:
            self._malformed(data, flow, e)
            return
        if isinstance(msg, Response):
            self._on_response(msg, flow, now)
        else:
            assert isinstance(msg, Request)
            self._on_request(msg, flow, now, waited)

    def send_failed(self, token: object, now: float) -> None:
        """The adapter could not send (connect refused, no route, TLS failure ...)."""
        if isinstance(token, TxRecord):
            self._tx_events(token, token.tx.transport_error(now), now)

    def link_up(self, conn: int, now: float) -> None:
        if conn not in self.link_conns:
            self.link_conns.append(conn)
        for call in list(self.calls.values()):
            self._guarded(call, now, call.on_link_up, now)

    def link_down(self, conn: int, now: float) -> None:
        """A ClearIP connection closed: INVITEs waiting on it are sent once more (SPEC §3)."""
        if conn in self.link_conns:
            self.link_conns.remove(conn)
        for call in list(self.calls.values()):
            self._guarded(call, now, call.on_link_down, conn, now)

    def upstream_target(self) -> Target | None:
        if not self.link_conns:
            return None
        self._link_rr = (self._link_rr + 1) % len(self.link_conns)
        cfg = self.config.clearip
        return Target(cfg.transport, cfg.host, cfg.port, self.link_conns[self._link_rr], True)

    # -- helpers for Call and Relay ------------------------------------------------------------

    def via_for(self, target: Target) -> str:
        return str(self._new_via(target))

    def _new_via(self, target: Target) -> Via:
        host, port = self.env.via_address(target.transport, target.host)
        params: dict[str, str | None] = {"branch": self.ids.branch(), "rport": None}
        return Via(target.transport.upper(), host.lower(), port, params)

    def add_via(self, req: Request, target: Target) -> None:
        """Our Via on top of a request we forward; its parsed form is kept, not parsed back."""
        via = self._new_via(target)
        req.prepend_header("Via", str(via))
        req.seed_top_via(via)

    def rr_uri(self, transport: str, peer_host: str) -> str:
        host, port = self.env.rr_address(transport, peer_host)
        tparam = "" if transport == "udp" else f";transport={transport}"
        return f"<sip:{HostPort(host, port)}{tparam};lr>"

    def send(self, data: bytes, target: Target, token: object = None) -> None:
        if (
            type(token) is TxRecord
            and token.dest is None
            and not target.upstream
            and type(token.tx) is ClientTransaction
            and is_ip_literal(target.host)
        ):
            self.resolved(token, target.host)  # before the send: its answers must get in
        self._outbox.append(Send(data, target, token))

    def resolved(self, token: object, ip: str) -> None:
        """The adapter is about to send a client transaction's request to `ip` (a target named
        by host resolved to it): that address may answer, and is pinholed until the
        transaction ends unless it is trusted anyway (SPEC §5)."""
        if type(token) is not TxRecord or token.dest is not None:
            return
        token.dest = ip
        if not self.env.is_trusted(ip):
            token.hole = True
            self.open_pinhole(ip)

    def start_client_tx(
        self,
        request: Request,
        target: Target,
        owner: Any,
        role: str,
        now: float,
        *,
        timeout: float | None = None,
        data: Any = None,
    ) -> TxRecord:
        tx = ClientTransaction(request, reliable=target.transport != "udp", timer_b=timeout)
        rec = TxRecord(tx, target, owner, role, data)
        self.client_txs[tx.key] = rec
        self._tx_events(rec, tx.start(now), now)
        return rec

    def respond(self, rec: TxRecord, resp: Response, now: float) -> None:
        """Send a response through a server transaction (retransmitted as RFC 3261 says)."""
        assert isinstance(rec.tx, ServerTransaction)
        try:
            events = rec.tx.send_response(resp, now)
        except TransactionError as e:
            # e.g. a provisional racing a final we already sent: the caller must not see it
            log.debug("response %d not sent: %s", resp.status, e)
            return
        if resp.status >= 200:
            self.counters.final_code(resp.status)
        self._tx_events(rec, events, now)

    def reply(
        self,
        rec: TxRecord,
        status: int,
        reason: str,
        now: float,
        headers: list[tuple[str, bytes | str]] | None = None,
    ) -> None:
        """A locally generated response to the request of server transaction `rec`."""
        request = rec.tx.request
        tag = self.ids.tag() if status > 100 else None
        self.respond(
            rec, build_response(request, status, reason, to_tag=tag, headers=headers or ()), now
        )

    def reply_stateless(
        self,
        request: Request,
        flow: Flow,
        status: int,
        reason: str,
        headers: list[tuple[str, bytes | str]] | None = None,
        *,
        now: float | None = None,
    ) -> None:
        """An answer that holds no transaction. Given `now`, a refused INVITE is remembered
        (relay/refusals.py): a retransmission gets the same answer, its ACK is absorbed."""
        tag = self.ids.tag()
        resp = build_response(request, status, reason, to_tag=tag, headers=headers or ())
        self.counters.final_code(status)
        self.send(resp.to_bytes(), response_target(request, flow))
        if now is not None and request.method == "INVITE":
            self.refusals.remember(server_key(request), now, tag, status, reason, headers or ())

    def cancel_branch(self, rec: TxRecord, now: float) -> None:
        """CANCEL a client INVITE transaction (RFC 3261 §9.1: only after a provisional)."""
        tx = rec.tx
        assert isinstance(tx, ClientTransaction)
        cancel = tx.make_cancel()
        self.start_client_tx(cancel, rec.target, None, "cancel", now)

    def _guarded(self, owner: Any, now: float, fn: Callable[..., None], *args: Any) -> None:
        """Run one step of a call (or an in-dialog relay). A bug must cost that call, never
        leave it hanging: the caller gets a final answer and the tables are cleaned."""
        try:
            fn(*args)
        except Exception:
            self.counters.inc("internal_errors")
            log.exception("internal error in %s; ending it", type(owner).__name__)
            abort = getattr(owner, "abort", None)
            if abort is None:
                return
            try:
                abort(now)
            except Exception:
                log.exception("internal error ending %s", type(owner).__name__)

    # -- transactions ----------------------------------------------------------------------------

    def _tx_events(self, rec: TxRecord, events: list[TxEvent], now: float) -> None:
        for ev in events:
            if isinstance(ev, TxSend):
                self.send(ev.data, rec.target, rec)
            elif isinstance(ev, TxDeliver):
                if rec.owner is not None:
                    self._guarded(rec.owner, now, rec.owner.on_tx_message, rec, ev.msg, now)
            elif isinstance(ev, TxTimeout):
                if rec.owner is not None:
                    self._guarded(rec.owner, now, rec.owner.on_tx_timeout, rec, now)
            elif isinstance(ev, TxTransportError):
                if rec.owner is not None:
                    self._guarded(rec.owner, now, rec.owner.on_tx_error, rec, now)
            elif isinstance(ev, TxTerminated):
                self._drop_tx(rec)
        self.arm(rec)

    def _drop_tx(self, rec: TxRecord) -> None:
        if rec.hole:
            rec.hole = False
            assert rec.dest is not None
            self.close_pinhole(rec.dest)
        key = rec.tx.key
        if isinstance(rec.tx, ClientTransaction):
            if self.client_txs.get(key) is rec:  # type: ignore[arg-type]
                del self.client_txs[key]  # type: ignore[arg-type]
        elif self.server_txs.get(key) is rec:
            del self.server_txs[key]
        # the owner (a Call, a Relay) and its state point back at this record: break the cycle
        # here, so refcounting frees a finished call at once instead of the cyclic collector
        rec.owner = None
        rec.data = None

    # -- requests --------------------------------------------------------------------------------

    def _on_request(self, req: Request, flow: Flow, now: float, waited: float = 0.0) -> None:
        if flow.upstream:
            self.counters.drop("upstream_request")  # ClearIP never sends us requests
            return
        key = server_key(req)
        rec = self.server_txs.get(key)
        if rec is not None:  # a retransmission, or the ACK of a non-2xx final
            assert isinstance(rec.tx, ServerTransaction)
            self._tx_events(rec, rec.tx.receive(req, now), now)
            return
        method = req.method
        in_dialog = req.to.tag is not None
        only_to = None  # where an untrusted source's in-dialog request may go
        if not self._trusted(flow):
            admitted = self._admit_untrusted(req, flow)
            if admitted is None:
                return
            only_to = admitted
        if in_dialog:
            dialog = self.dialogs.get(req.call_id)
            if dialog is not None:
                dialog.last_seen = now  # a call that still talks is never forgotten
            elif method == "INVITE" and only_to is None:
                # relayed (a restarted proxy must still route its switches' requests), but
                # seen: a trusted element re-INVITEing a dialog we never set up skips ClearIP
                self.counters.inc("indialog_unknown")
        if method in ("INVITE", "ACK") and len(self.refusals):
            refusal = self.refusals.get(key, now)
            if refusal is not None:  # an INVITE refused statelessly: the same answer again
                if method == "INVITE":
                    resp = build_response(
                        req,
                        refusal.status,
                        refusal.reason,
                        to_tag=refusal.to_tag,
                        headers=refusal.headers,
                    )
                    self.send(resp.to_bytes(), response_target(req, flow))
                return
        if method == "ACK":
            # an ACK matching no transaction is for a 2xx: end-to-end, forwarded statelessly
            if in_dialog:
                Relay.forward_ack(self, req, flow, now, only_to)
            else:
                self.counters.drop("ack_unmatched")  # for no INVITE of ours: nowhere to go
            return
        # Transaction limit (SPEC §3 limits): new calls stop at max_transactions; what ends or
        # keeps up calls already admitted (CANCEL of a call, in-dialog requests) has a tenth
        # more, so switches can still hang up and health checks still pass when it is full.
        held = len(self.server_txs)
        limit = self.config.limits.max_transactions
        full = held >= limit
        if method == "CANCEL":
            self._on_cancel(req, flow, now, stateless=full)
            return
        mf = req.max_forwards
        if mf == 0 and method != "OPTIONS":
            self.reply_stateless(req, flow, 483, "Too Many Hops", now=now)
            return
        if full and method == "OPTIONS" and not in_dialog:
            self.reply_stateless(req, flow, 200, "OK", self._options_headers())
            return
        if full and (not in_dialog or held >= limit + limit // 10 + 1):
            self.counters.drop("transaction_limit")
            self.reply_stateless(
                req, flow, 503, "Too Many Transactions", [("Retry-After", "5")], now=now
            )
            return
        if in_dialog:
            if self._is_for_us(req):
                Relay.start(self, req, flow, now, only_to)
            elif method == "OPTIONS":
                self._server_reply(req, flow, 200, "OK", now, self._options_headers())
            else:
                self.reply_stateless(req, flow, 404, "Not Here", now=now)
            return
        if method == "INVITE":
            if self.draining:
                self.reply_stateless(
                    req, flow, 503, "Shutting Down", [("Retry-After", "2")], now=now
                )
                return
            if not self.overload.admit(now, waited) and not is_emergency(
                req, self.config.routing.emergency_numbers
            ):
                # behind: a new call gets its 503 now, statelessly, so the switch
                # route-advances at once; calls already admitted keep the relay's time
                self.counters.drop("overload")
                self.reply_stateless(
                    req, flow, 503, "Overloaded", [("Retry-After", "1")], now=now
                )
                return
            if self._is_loop(req):
                self.reply_stateless(req, flow, 482, "Loop Detected", now=now)
                return
            self.counters.inc("invites")
            self.counters.source(flow.remote[0], "invites")
            rec = self.new_server_tx(req, flow)
            call = Call(self, rec, req, flow, now)
            self.calls[key] = call
            self._guarded(call, now, call.start, now)
        elif method == "OPTIONS":
            self._server_reply(req, flow, 200, "OK", now, self._options_headers())
        else:
            self._server_reply(req, flow, 405, "Method Not Allowed", now, [("Allow", ALLOW)])

    def _admit_untrusted(self, req: Request, flow: Flow) -> Target | None:
        """SPEC §5: an untrusted source may only send requests within a dialog the proxy holds
        with it, as that dialog's far end; they may go only to the dialog's other end. The
        target they must resolve to, or None when refused (counted, 481 or dropped)."""
        ip = flow.remote[0]
        if req.to.tag is None:
            self._untrusted(req, flow)  # a new call or request: only trusted sources start one
            return None
        dialog = self.dialogs.get(req.call_id)
        if dialog is None and not self.is_pinholed(ip):
            self._untrusted(req, flow)  # a stranger: nothing of ours to talk about
            return None
        why = refusal(dialog, req, ip)
        if why is not None or dialog is None or dialog.caller_hop is None:
            self._refuse_in_dialog(req, flow, why or "no route back to the caller")
            return None
        return dialog.caller_hop

    def _refuse_in_dialog(self, req: Request, flow: Flow, why: str) -> None:
        self.counters.drop("indialog_refused")
        log.debug(
            "refused %s from untrusted %s:%d: %s", req.method, *flow.remote, why
        )
        if self.config.trust.untrusted == "403" and req.method != "ACK":
            self.reply_stateless(req, flow, 481, "Call/Transaction Does Not Exist")

    def _options_headers(self) -> list[tuple[str, bytes | str]]:
        return [("Allow", ALLOW), ("Accept", "application/sdp")]

    def _server_reply(
        self,
        req: Request,
        flow: Flow,
        status: int,
        reason: str,
        now: float,
        headers: list[tuple[str, bytes | str]],
    ) -> None:
        rec = self.new_server_tx(req, flow)
        self.reply(rec, status, reason, now, headers)

    def new_server_tx(self, req: Request, flow: Flow) -> TxRecord:
        tx = ServerTransaction(req, reliable=flow.transport != "udp")
        rec = TxRecord(tx, response_target(req, flow))
        self.server_txs[tx.key] = rec
        return rec

    def strip_own_routes(self, req: Request) -> None:
        """RFC 3261 §16.4: remove the Route entries naming this proxy (two after double RR)."""
        while req.routes and self.uri_is_local(req.routes[0].uri):
            req.pop_first_value("route")

    def abandon(self, rec: TxRecord) -> None:
        """Forget a transaction without further events (its connection is gone, or its call
        ended on an internal error)."""
        rec.owner = None
        self._drop_tx(rec)

    def dialog_started(self, call: Call, resp: Response, rec: TxRecord) -> None:
        call_id = resp.call_id
        if call_id in self.dialogs:
            return
        peer = rec.dest or rec.target.host
        dialog = Dialog(
            call_id,
            call.invite.from_.tag or "",
            resp.to.tag or "",
            peer,
            caller_hop(call.invite),
            call.started + DIALOG_IDLE,
            call.source,
            call.started,
        )
        self.dialogs[call_id] = dialog
        self.open_pinhole(peer)
        self.arm(dialog)

    def _dialog_timer(self, dialog: Dialog, now: float) -> None:
        idle_until = dialog.last_seen + DIALOG_IDLE
        if idle_until > now:  # requests came since it was armed: look again then
            dialog.deadline = idle_until
            self.arm(dialog)
        else:
            self.dialog_ended(dialog.call_id)

    def dialog_ended(self, call_id: str) -> None:
        dialog = self.dialogs.pop(call_id, None)
        if dialog is not None:
            dialog.deadline = None
            self.arm(dialog)
            self.close_pinhole(dialog.peer)
            self.counters.count("calls_active", dialog.source, -1)

    def hang_up_late_2xx(self, rec: TxRecord, resp: Response, now: float) -> None:
        hang_up(self, rec, resp, now)

    def forget_call(self, call: Any) -> None:
        key = call.server.tx.key
        if self.calls.get(key) is call:
            del self.calls[key]

    def _on_cancel(self, req: Request, flow: Flow, now: float, *, stateless: bool) -> None:
        key = server_key(req)
        invite_key = (*key[:-1], "INVITE")  # RFC 3261 §9.2: the CANCEL matches its INVITE
        call = self.calls.get(invite_key)
        if call is None:
            if stateless:  # past the limit, a CANCEL for nothing holds nothing
                self.reply_stateless(req, flow, 481, "Call/Transaction Does Not Exist")
            else:
                self._server_reply(req, flow, 481, "Call/Transaction Does Not Exist", now, [])
            return
        self._server_reply(req, flow, 200, "OK", now, [])
        self._guarded(call, now, call.cancel, now)

    def _trusted(self, flow: Flow) -> bool:
        return self.env.is_trusted(flow.remote[0])

    def is_pinholed(self, ip: str) -> bool:
        return ip in self.pinholes

    def open_pinhole(self, host: str) -> None:
        """Admit in-dialog traffic from a next hop we sent a call to, while the call lives."""
        n = self.pinholes.get(host, 0)
        self.pinholes[host] = n + 1
        if n == 0:
            self.env.pinhole(host, True)  # the kernel fast path opens it too

    def close_pinhole(self, host: str) -> None:
        n = self.pinholes.get(host, 0) - 1
        if n <= 0:
            if self.pinholes.pop(host, None) is not None:
                self.env.pinhole(host, False)
        else:
            self.pinholes[host] = n

    def _untrusted(self, req: Request, flow: Flow) -> None:
        self.counters.inc("dropped_untrusted")
        if self.config.trust.untrusted == "403" and req.method != "ACK":
            self.reply_stateless(req, flow, 403, "Forbidden")

    def _is_for_us(self, req: Request) -> bool:
        routes = req.routes
        if routes:
            return self.uri_is_local(routes[0].uri)
        return self.uri_is_local(req.uri.decode("utf-8", "surrogateescape"))

    def uri_is_local(self, text: str) -> bool:
        try:
            uri = parse_uri_shared(text)
        except SipProtocolError:
            return False
        return isinstance(uri, SipUri) and self.env.is_local(
            uri.host, uri.port or default_port(uri.transport)
        )

    def _is_loop(self, req: Request) -> bool:
        """RFC 3261 §16.3 step 4, simplified: one of our own branches is already in the Vias."""
        return any(self.ids.is_ours(v.branch) for v in req.vias)

    def _malformed(self, data: bytes, flow: Flow, err: SipProtocolError) -> None:
        """SPEC §3 bad input: 400 with the reason when the Via can be read, else a counted drop."""
        self.counters.inc("malformed")
        log.debug("malformed message from %s:%d: %s", *flow.remote, err.reason)
        if flow.upstream or not self.env.is_trusted(flow.remote[0]):
            return
        try:
            msg = parse_message(data, framed=flow.transport != "udp", check_controls=False)
        except SipProtocolError:
            return
        if not isinstance(msg, Request) or msg.method == "ACK":
            return
        try:
            msg.top_via  # noqa: B018 - can we route a response at all?
            status = err.status if 400 <= err.status < 600 else 400
            resp = build_response(msg, status, _reason_for(status, err))
            self.counters.final_code(status)
            self.send(resp.to_bytes(), response_target(msg, flow))
        except SipProtocolError:
            return

    # -- responses -------------------------------------------------------------------------------

    def _on_response(self, resp: Response, flow: Flow, now: float) -> None:
        try:
            key = client_key(resp)
        except SipProtocolError:
            self.counters.inc("malformed")
            return
        rec = self.client_txs.get(key)
        if rec is None:
            # A response for no transaction (a 2xx retransmitted after Timer M): dropped. A
            # stateless forward toward the Via below ours would let anyone make the proxy
            # deliver bytes to any host:port (RFC 3261 §16.7 allows dropping it).
            self.counters.drop("response_unmatched")
            log.debug("worker %d: %d %s from %s:%d matches no transaction", self.worker,
                      resp.status, resp.cseq.method, *flow.remote)
            return
        if not self._from_next_hop(rec, flow):
            # the right branch from the wrong place: someone who saw our Via forging an answer
            self.counters.drop("response_forged")
            log.info("dropped a %d %s from %s:%d over %s: not where the request went",
                     resp.status, resp.cseq.method, *flow.remote, flow.transport)
            return
        assert isinstance(rec.tx, ClientTransaction)
        self._tx_events(rec, rec.tx.receive(resp, now), now)

    @staticmethod
    def _from_next_hop(rec: TxRecord, flow: Flow) -> bool:
        """A response is accepted only from where its request went: over the ClearIP link for
        ClearIP, from the same address and port over UDP (we always send `rport`, so an RFC
        3581 server answers from there), from the same address over a TCP/TLS connection."""
        target = rec.target
        if target.upstream:
            return flow.upstream and flow.conn == target.conn
        if flow.upstream:
            return False
        if target.transport == "udp" or flow.transport == "udp":  # a UDP source is spoofable
            return flow.transport == target.transport and flow.remote == (rec.dest, target.port)
        # TCP or TLS: only the host itself can complete a handshake from its address (a peer
        # may answer over another connection of its own, even a TLS one for a TCP request)
        return flow.remote[0] == rec.dest


# -------------------------------------------------------------------------------------------------


def response_target(request: Request, flow: Flow) -> Target:
    """RFC 3261 §18.2.2 + RFC 3581: back on the connection, or to the source address and port."""
    if flow.conn is not None:
        return Target(flow.transport, flow.remote[0], flow.remote[1], flow.conn)
    via = request.top_via
    port = flow.remote[1] if via.rport is not None else (via.port or 5060)
    return Target(flow.transport, flow.remote[0], port, local=flow.local)


def _deadline(obj: Any) -> float | None:
    if isinstance(obj, TxRecord):
        return obj.tx.deadline
    return obj.deadline


_REASONS = {
    400: "Bad Request",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    416: "Unsupported URI Scheme",
    505: "Version Not Supported",
    513: "Message Too Large",
}


def _reason_for(status: int, err: SipProtocolError) -> str:
    # the phrase is fixed text plus our own short reason: never echo raw peer bytes
    base = _REASONS.get(status, "Bad Request")
    return f"{base} ({err.reason})"[:120]

