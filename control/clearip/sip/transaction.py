"""RFC 3261 §17 transactions with RFC 6026's "Accepted" state, sans-IO.

A transaction takes messages and `now` (seconds on any monotonic clock) and returns a list of
events: bytes to send to its peer, messages for the transaction user (TU, the proxy core), a
timeout, a transport error, and finally `TxTerminated`. It never reads a clock: the caller
sleeps until `deadline` and then calls `on_timer(now)`.

Each machine is a table `{STATE: {EVENT: NEW_STATE}}` (the RFC figures can be drawn from it)
plus the set of timers that may run in each state; leaving a state cancels the timers the new
state does not list. An event with no entry is handled by who caused it:

* input from the peer (a response, a retransmitted request) is absorbed: stray or late
  messages are normal on the wire (RFC 3261 §17.1.1.2, §17.2.1);
* a call by the TU (`start`, `send_response`, `transport_error`, a timer) raises
  `TransactionError`: the TU misused the transaction.

Choices the RFCs leave open:

* A client transaction is in state "init" until `start()`.
* The TU may not send a response after its final one, except a 2xx again in "accepted"
  (RFC 6026) and a final again in non-INVITE "completed", which §17.2.2 says to discard.
* A timer whose value is 0 on a reliable transport (D, I, J, K) fires inside the call that
  arms it, so e.g. a final response over TCP yields `TxTerminated` at once.
* Timers are re-armed from the `now` at which they fire (RFC 3261: "reset the timer"), and each
  due timer fires at most once per `on_timer` call, so a late wake-up never bursts. A due timer
  that ends the transaction (B, D, F, H-M) fires alone, without a last useless retransmission.
* `transport_error()` is accepted in every live state (RFC 3261 §17.1.4 / §17.2.4 ask to inform
  the TU; a stream connection can also drop while nothing is being sent): it always yields
  `TxTransportError, TxTerminated`. After the end it is ignored (a late failure to send the
  last bytes); before a client's `start()` it raises.
* The server transaction never sends 100 Trying by itself: the proxy core answers at once
  (SPEC §3), well within the 200 ms of RFC 3261 §17.2.1.
* An ACK for a 2xx carries a new branch (RFC 3261 §8.1.1.7), so it matches no server
  transaction and the TU handles it as a request of its own. One that does match an INVITE
  server transaction in "accepted" (an RFC 2543 peer) is passed to the TU, as RFC 6026 §8.7
  requires; in "completed" an ACK is absorbed (-> "confirmed"), in "confirmed" ignored.
  A retransmitted INVITE is answered with the last response in "proceeding"/"completed" and
  absorbed silently in "confirmed"/"accepted"; it is never delivered to the TU again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

from clearip.sip.errors import SipProtocolError
from clearip.sip.headers import split_list, unfold
from clearip.sip.message import Request, Response, new_request

# RFC 3261 §17.1.1.1 and Table 4.
T1: Final = 0.5  # RTT estimate
T2: Final = 4.0  # longest retransmit interval for non-INVITE requests and INVITE responses
T4: Final = 5.0  # longest time a message stays in the network
TIMER_64T1: Final = 64 * T1  # B, F, H, J (unreliable); L and M (RFC 6026 §8.4, §8.7)
TIMER_D: Final = 32.0  # "at least 32 seconds" on an unreliable transport (§17.1.1.2)

MAGIC_COOKIE: Final = "z9hG4bK"  # RFC 3261 §8.1.1.7: branch from an RFC 3261 element
ACK_MAX_FORWARDS: Final = b"70"  # RFC 3261 §8.1.1.6, for the ACK and CANCEL we build


# ---------------------------------------------------------------------------------------------
# Events


@dataclass(slots=True, init=False)  # an __init__ of its own: compiled (relay/events.py)
class TxSend:
    """Put these bytes on the wire to the transaction's peer (first send or retransmission)."""

    data: bytes

    def __init__(self, data: bytes) -> None:
        self.data = data


@dataclass(slots=True, init=False)  # an __init__ of its own: compiled (relay/events.py)
class TxDeliver:
    """Hand this message to the TU."""

    msg: Request | Response

    def __init__(self, msg: Request | Response) -> None:
        self.msg = msg


@dataclass(slots=True)
class TxTimeout:
    """Timer B/F (client: no final response) or Timer H (server: no ACK) fired."""


@dataclass(slots=True)
class TxTransportError:
    """The transport failed (reported through `transport_error()`)."""


@dataclass(slots=True)
class TxTerminated:
    """The transaction is over: remove it from the table."""


TxEvent: TypeAlias = TxSend | TxDeliver | TxTimeout | TxTransportError | TxTerminated


class TransactionError(Exception):
    """The TU called a transaction in a state that does not allow it (a local bug).

    ``status`` is the response a server could still answer with: 500, the fault is ours.
    """

    def __init__(self, reason: str, status: int = 500) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


# ---------------------------------------------------------------------------------------------
# States, events and tables

INIT: Final = "init"  # client only: built, start() not called yet
CALLING: Final = "calling"
TRYING: Final = "trying"
PROCEEDING: Final = "proceeding"
COMPLETED: Final = "completed"
CONFIRMED: Final = "confirmed"
ACCEPTED: Final = "accepted"
TERMINATED: Final = "terminated"

START: Final = "start"
RECV_1XX: Final = "1xx received"
RECV_2XX: Final = "2xx received"
RECV_3XX_6XX: Final = "300-699 received"
RECV_REQUEST: Final = "request retransmission received"
RECV_ACK: Final = "ACK received"
SEND_1XX: Final = "1xx from TU"
SEND_2XX: Final = "2xx from TU"
SEND_3XX_6XX: Final = "300-699 from TU"
TRANSPORT_ERROR: Final = "transport error"
FIRE_A: Final = "timer A"
FIRE_B: Final = "timer B"
FIRE_D: Final = "timer D"
FIRE_E: Final = "timer E"
FIRE_F: Final = "timer F"
FIRE_G: Final = "timer G"
FIRE_H: Final = "timer H"
FIRE_I: Final = "timer I"
FIRE_J: Final = "timer J"
FIRE_K: Final = "timer K"
FIRE_L: Final = "timer L"
FIRE_M: Final = "timer M"

_Table: TypeAlias = dict[str, dict[str, str]]
_Timers: TypeAlias = dict[str, frozenset[str]]

# RFC 3261 Figure 5 + RFC 6026 Figure 3.
CLIENT_INVITE: Final[_Table] = {
    INIT: {START: CALLING},
    CALLING: {
        FIRE_A: CALLING,
        FIRE_B: TERMINATED,
        RECV_1XX: PROCEEDING,
        RECV_2XX: ACCEPTED,
        RECV_3XX_6XX: COMPLETED,
        TRANSPORT_ERROR: TERMINATED,
    },
    PROCEEDING: {
        RECV_1XX: PROCEEDING,
        RECV_2XX: ACCEPTED,
        RECV_3XX_6XX: COMPLETED,
        TRANSPORT_ERROR: TERMINATED,
    },
    COMPLETED: {RECV_3XX_6XX: COMPLETED, FIRE_D: TERMINATED, TRANSPORT_ERROR: TERMINATED},
    ACCEPTED: {RECV_2XX: ACCEPTED, FIRE_M: TERMINATED, TRANSPORT_ERROR: TERMINATED},
    TERMINATED: {},
}
_CLIENT_INVITE_TIMERS: Final[_Timers] = {
    CALLING: frozenset({FIRE_A, FIRE_B}),
    COMPLETED: frozenset({FIRE_D}),
    ACCEPTED: frozenset({FIRE_M}),
}

# RFC 3261 Figure 6.
CLIENT_NON_INVITE: Final[_Table] = {
    INIT: {START: TRYING},
    TRYING: {
        FIRE_E: TRYING,
        FIRE_F: TERMINATED,
        RECV_1XX: PROCEEDING,
        RECV_2XX: COMPLETED,
        RECV_3XX_6XX: COMPLETED,
        TRANSPORT_ERROR: TERMINATED,
    },
    PROCEEDING: {
        FIRE_E: PROCEEDING,
        FIRE_F: TERMINATED,
        RECV_1XX: PROCEEDING,
        RECV_2XX: COMPLETED,
        RECV_3XX_6XX: COMPLETED,
        TRANSPORT_ERROR: TERMINATED,
    },
    COMPLETED: {FIRE_K: TERMINATED, TRANSPORT_ERROR: TERMINATED},
    TERMINATED: {},
}
_CLIENT_NON_INVITE_TIMERS: Final[_Timers] = {
    TRYING: frozenset({FIRE_E, FIRE_F}),
    PROCEEDING: frozenset({FIRE_E, FIRE_F}),
    COMPLETED: frozenset({FIRE_K}),
}

# RFC 3261 Figure 7 + RFC 6026 Figure 5.
SERVER_INVITE: Final[_Table] = {
    PROCEEDING: {
        RECV_REQUEST: PROCEEDING,
        SEND_1XX: PROCEEDING,
        SEND_2XX: ACCEPTED,
        SEND_3XX_6XX: COMPLETED,
        TRANSPORT_ERROR: TERMINATED,
    },
    COMPLETED: {
        RECV_REQUEST: COMPLETED,
        RECV_ACK: CONFIRMED,
        FIRE_G: COMPLETED,
        FIRE_H: TERMINATED,
        TRANSPORT_ERROR: TERMINATED,
    },
    CONFIRMED: {FIRE_I: TERMINATED, TRANSPORT_ERROR: TERMINATED},
    ACCEPTED: {
        RECV_ACK: ACCEPTED,
        SEND_2XX: ACCEPTED,
        FIRE_L: TERMINATED,
        TRANSPORT_ERROR: TERMINATED,
    },
    TERMINATED: {},
}
_SERVER_INVITE_TIMERS: Final[_Timers] = {
    COMPLETED: frozenset({FIRE_G, FIRE_H}),
    CONFIRMED: frozenset({FIRE_I}),
    ACCEPTED: frozenset({FIRE_L}),
}

# RFC 3261 Figure 8.
SERVER_NON_INVITE: Final[_Table] = {
    TRYING: {
        SEND_1XX: PROCEEDING,
        SEND_2XX: COMPLETED,
        SEND_3XX_6XX: COMPLETED,
        TRANSPORT_ERROR: TERMINATED,
    },
    PROCEEDING: {
        RECV_REQUEST: PROCEEDING,
        SEND_1XX: PROCEEDING,
        SEND_2XX: COMPLETED,
        SEND_3XX_6XX: COMPLETED,
        TRANSPORT_ERROR: TERMINATED,
    },
    COMPLETED: {
        RECV_REQUEST: COMPLETED,
        # §17.2.2: further final responses from the TU "MUST be discarded"
        SEND_2XX: COMPLETED,
        SEND_3XX_6XX: COMPLETED,
        FIRE_J: TERMINATED,
        TRANSPORT_ERROR: TERMINATED,
    },
    TERMINATED: {},
}
_SERVER_NON_INVITE_TIMERS: Final[_Timers] = {COMPLETED: frozenset({FIRE_J})}

_RETRANSMIT_TIMERS: Final = frozenset({FIRE_A, FIRE_E, FIRE_G})
_FAILURE_TIMERS: Final = frozenset({FIRE_B, FIRE_F, FIRE_H})


def _response_event(status: int, recv: bool) -> str:
    if 100 <= status <= 199:
        return RECV_1XX if recv else SEND_1XX
    if 200 <= status <= 299:
        return RECV_2XX if recv else SEND_2XX
    if 300 <= status <= 699:
        return RECV_3XX_6XX if recv else SEND_3XX_6XX
    raise TransactionError(f"status {status} is not a SIP response code")


# ---------------------------------------------------------------------------------------------
# Common machinery


class _Transaction:
    __slots__ = ("_table", "_timer_sets", "_timers", "is_invite", "reliable", "request", "state")

    def __init__(self, request: Request, reliable: bool, table: _Table, timers: _Timers,
                 state: str) -> None:
        self.request = request
        self.reliable = reliable
        self.is_invite = request.method == "INVITE"
        self.state = state
        self._table = table
        self._timer_sets = timers
        self._timers: dict[str, tuple[float, float]] = {}  # name -> (deadline, interval)

    @property
    def deadline(self) -> float | None:
        """The earliest pending timer (absolute time), None when none is armed."""
        timers = self._timers
        if not timers:
            return None
        if len(timers) == 1:
            for due, _ in timers.values():
                return due
        return min(due for due, _ in timers.values())

    def _next(self, event: str, *, local: bool) -> str | None:
        """The state `event` leads to; None (absorb) for peer input with no entry."""
        new = self._table[self.state].get(event)
        if new is None and local:
            raise TransactionError(f"{event!r} is not allowed in state {self.state!r}")
        return new

    def _goto(self, new: str, out: list[TxEvent]) -> None:
        if new == self.state:
            return
        self.state = new
        keep = self._timer_sets.get(new, frozenset())
        for name in [n for n in self._timers if n not in keep]:
            del self._timers[name]
        if new == TERMINATED:
            out.append(TxTerminated())

    def _arm(self, name: str, delay: float, now: float, out: list[TxEvent]) -> None:
        assert name in self._timer_sets.get(self.state, ()), (name, self.state)
        if delay <= 0:  # reliable transport: D, I, J, K are zero
            self._fire(name, delay, now, out)
        else:
            self._timers[name] = (now + delay, delay)

    def on_timer(self, now: float) -> list[TxEvent]:
        """Fire the timers due at `now`; call when now >= deadline (earlier returns [])."""
        if self.state == TERMINATED:
            raise TransactionError("on_timer() on a terminated transaction")
        pending = sorted((at, name) for name, (at, _) in self._timers.items())
        due = [name for at, name in pending if at <= now]
        # Every timer other than A, E, G ends the transaction: when one is due, a
        # retransmission due in the same call would be wasted, so it alone fires.
        ending = [name for name in due if name not in _RETRANSMIT_TIMERS]
        out: list[TxEvent] = []
        for name in ending[:1] or due:
            self._fire(name, self._timers.pop(name)[1], now, out)
        return out

    def _fire(self, name: str, interval: float, now: float, out: list[TxEvent]) -> None:
        new = self._next(name, local=True)
        assert new is not None
        if name in _RETRANSMIT_TIMERS:
            out.append(TxSend(self._retransmission()))
            interval = self._backoff(name, interval)
            self._timers[name] = (now + interval, interval)
        elif name in _FAILURE_TIMERS:
            out.append(TxTimeout())
        self._goto(new, out)

    def _backoff(self, name: str, interval: float) -> float:
        if name == FIRE_A:
            return 2 * interval  # §17.1.1.2: doubles, no cap (Timer B ends it)
        if name == FIRE_E and self.state == PROCEEDING:
            return T2  # §17.1.2.2: after a provisional, every T2
        return min(2 * interval, T2)  # E in "trying", G

    def _retransmission(self) -> bytes:
        raise NotImplementedError

    def transport_error(self, now: float) -> list[TxEvent]:
        """The transport failed sending for this transaction: tell the TU, terminate.

        A report arriving after the end is ignored: an adapter may fail to send the last bytes
        (a final over TCP, an ACK) after the transaction already terminated.
        """
        if self.state == TERMINATED:
            return []
        new = self._next(TRANSPORT_ERROR, local=True)
        assert new is not None
        out: list[TxEvent] = [TxTransportError()]
        self._goto(new, out)
        return out


# ---------------------------------------------------------------------------------------------
# Client transactions (RFC 3261 §17.1, RFC 6026 §8.4)


class ClientTransaction(_Transaction):
    """Sends one request and matches its responses: INVITE or non-INVITE by the method."""

    __slots__ = ("_ack", "_timer_b", "_wire", "got_provisional", "key")

    def __init__(self, request: Request, *, reliable: bool, timer_b: float | None = None) -> None:
        if request.method == "ACK":
            raise TransactionError("an ACK has no client transaction (RFC 3261 §17)")
        invite = request.method == "INVITE"
        super().__init__(
            request,
            reliable,
            CLIENT_INVITE if invite else CLIENT_NON_INVITE,
            _CLIENT_INVITE_TIMERS if invite else _CLIENT_NON_INVITE_TIMERS,
            INIT,
        )
        self.key: tuple[str, str] = (request.top_via.branch or "", request.method)
        self._timer_b = TIMER_64T1 if timer_b is None else timer_b  # B, or F for non-INVITE
        self._wire = b""
        self._ack: bytes | None = None
        self.got_provisional = False  # a 1xx came: CANCEL now allowed (§9.1)

    def start(self, now: float) -> list[TxEvent]:
        """First transmission of the request."""
        new = self._next(START, local=True)
        assert new is not None
        self._wire = self.request.to_bytes()
        out: list[TxEvent] = [TxSend(self._wire)]
        self._goto(new, out)
        retransmit, give_up = (FIRE_A, FIRE_B) if self.is_invite else (FIRE_E, FIRE_F)
        if not self.reliable:
            self._arm(retransmit, T1, now, out)
        self._arm(give_up, self._timer_b, now, out)
        return out

    def receive(self, resp: Response, now: float) -> list[TxEvent]:
        """A response matched to this transaction by `client_key`."""
        if self.state == INIT:
            raise TransactionError("response received before start()")
        if client_key(resp) != self.key:
            raise TransactionError(f"response {client_key(resp)} does not match {self.key}")
        event = _response_event(resp.status, recv=True)
        new = self._next(event, local=False)
        if new is None:
            return []  # wrong state: absorbed
        old = self.state
        out: list[TxEvent] = []
        if event == RECV_1XX:
            self.got_provisional = True
            out.append(TxDeliver(resp))
            self._goto(new, out)
        elif self.is_invite and event == RECV_3XX_6XX:
            if old == COMPLETED:  # a retransmitted final: ACK it again, TU already has it
                assert self._ack is not None
                return [TxSend(self._ack)]
            self._ack = make_ack(self.request, resp).to_bytes()
            out += [TxSend(self._ack), TxDeliver(resp)]
            self._goto(new, out)
            self._arm(FIRE_D, 0.0 if self.reliable else TIMER_D, now, out)
        else:  # INVITE 2xx (each one, also in "accepted"), or a non-INVITE final
            out.append(TxDeliver(resp))
            if old != new:
                self._goto(new, out)
                if self.is_invite:
                    self._arm(FIRE_M, TIMER_64T1, now, out)
                else:
                    self._arm(FIRE_K, 0.0 if self.reliable else T4, now, out)
        return out

    def _retransmission(self) -> bytes:
        return self._wire

    def make_cancel(self) -> Request:
        """The CANCEL for this INVITE (RFC 3261 §9.1); send it on its own client transaction.

        Whether a CANCEL may be sent yet (`got_provisional`, no final) is the TU's decision.
        """
        if not self.is_invite:
            raise TransactionError("only an INVITE can be cancelled")
        return make_cancel(self.request)


# ---------------------------------------------------------------------------------------------
# Server transactions (RFC 3261 §17.2, RFC 6026 §8.7)


class ServerTransaction(_Transaction):
    """Absorbs retransmissions of one received request and sends the TU's responses."""

    __slots__ = ("_final_to_tag", "_rfc2543", "key", "last_response")

    def __init__(self, request: Request, *, reliable: bool) -> None:
        if request.method == "ACK":
            raise TransactionError("an ACK creates no server transaction (RFC 3261 §17.2.1)")
        invite = request.method == "INVITE"
        super().__init__(
            request,
            reliable,
            SERVER_INVITE if invite else SERVER_NON_INVITE,
            _SERVER_INVITE_TIMERS if invite else _SERVER_NON_INVITE_TIMERS,
            PROCEEDING if invite else TRYING,
        )
        self.key = server_key(request)
        self._rfc2543 = not _has_cookie(request)
        self.last_response: bytes | None = None
        self._final_to_tag: str | None = None

    def receive(self, req: Request, now: float) -> list[TxEvent]:
        """A retransmission of the request, or the ACK of an INVITE, matched by `server_key`."""
        if server_key(req) != self.key:
            raise TransactionError("request does not match this server transaction")
        is_ack = req.method == "ACK"
        if is_ack and self._rfc2543 and req.to.tag != self._final_to_tag:
            return []  # RFC 2543 matching: the ACK's To tag must be our final response's
        new = self._next(RECV_ACK if is_ack else RECV_REQUEST, local=False)
        if new is None:
            return []  # absorbed
        out: list[TxEvent] = []
        if not is_ack:
            if self.last_response is not None:  # §17.2.1 / §17.2.2: answer with the last one
                out.append(TxSend(self.last_response))
        elif self.state == ACCEPTED:
            out.append(TxDeliver(req))  # RFC 6026 §8.7
        else:  # completed -> confirmed: stop G and H, absorb further ACKs for Timer I
            self._goto(new, out)
            self._arm(FIRE_I, 0.0 if self.reliable else T4, now, out)
        return out

    def send_response(self, resp: Response, now: float) -> list[TxEvent]:
        """Send a response from the TU (a 2xx again in "accepted" is the TU's retransmission)."""
        event = _response_event(resp.status, recv=False)
        new = self._next(event, local=True)
        assert new is not None
        old = self.state
        if old == COMPLETED:  # non-INVITE: a second final from the TU is discarded (§17.2.2)
            return []
        data = resp.to_bytes()
        self.last_response = data
        out: list[TxEvent] = [TxSend(data)]
        if new == old:
            return out
        if event != SEND_1XX:
            self._final_to_tag = resp.to.tag
        self._goto(new, out)
        if new == ACCEPTED:
            self._arm(FIRE_L, TIMER_64T1, now, out)
        elif new == COMPLETED and self.is_invite:
            if not self.reliable:
                self._arm(FIRE_G, T1, now, out)
            self._arm(FIRE_H, TIMER_64T1, now, out)
        elif new == COMPLETED:
            self._arm(FIRE_J, 0.0 if self.reliable else TIMER_64T1, now, out)
        return out

    def _retransmission(self) -> bytes:
        assert self.last_response is not None
        return self.last_response


# ---------------------------------------------------------------------------------------------
# Matching (RFC 3261 §17.1.3, §17.2.3)

ServerKey: TypeAlias = tuple[object, ...]


def server_key(req: Request) -> ServerKey:
    """The key of the server transaction `req` belongs to (§17.2.3); an ACK maps to its INVITE.

    With a magic-cookie branch: (branch, sent-by host, sent-by port, method). Otherwise the
    RFC 2543 rule: (Request-URI, To tag, From tag, Call-ID, CSeq number, top Via, method), with
    the To tag left out for INVITE, ACK and CANCEL: the ACK carries the tag of our response
    (`ServerTransaction.receive` checks that one), and the key of the INVITE a CANCEL targets
    is then the CANCEL's key with the method replaced (RFC 3261 §9.2).
    """
    via = req.top_via
    method = "INVITE" if req.method == "ACK" else req.method
    if _has_cookie(req):
        return (via.branch, via.host, via.port, method)
    to_tag = None if method in ("INVITE", "CANCEL") else req.to.tag
    return (req.uri, to_tag, req.from_.tag, req.call_id, req.cseq.number, str(via), method)


def _has_cookie(req: Request) -> bool:
    branch = req.top_via.branch
    return branch is not None and branch.startswith(MAGIC_COOKIE)


def client_key(resp: Response) -> tuple[str, str]:
    """The key of the client transaction `resp` answers (§17.1.3): (top Via branch, CSeq method).

    The response to a CANCEL has CSeq method CANCEL, so it never matches the INVITE.
    """
    return (resp.top_via.branch or "", resp.cseq.method)


# ---------------------------------------------------------------------------------------------
# ACK for a non-2xx final, CANCEL


def make_ack(invite: Request, resp: Response) -> Request:
    """The ACK for a 300-699 response to `invite` (RFC 3261 §17.1.1.3).

    Request-URI, Call-ID, From and CSeq number of the INVITE, To of the response (with its
    tag), the INVITE's top Via only, its Route headers, Max-Forwards 70, Content-Length 0.
    """
    return _hop_request(invite, "ACK", _raw_line(resp, "to"))


def make_cancel(invite: Request) -> Request:
    """The CANCEL for `invite` (RFC 3261 §9.1): like the ACK, with the INVITE's own To."""
    return _hop_request(invite, "CANCEL", _raw_line(invite, "to"))


def _raw_line(msg: Request | Response, key: str) -> bytes:
    for k, line in msg.header_lines():
        if k == key:
            return line
    raise SipProtocolError(f"missing {key.title()} header")


def _hop_request(invite: Request, method: str, to_line: bytes) -> Request:
    """A request that shares the INVITE's transaction identity; raw lines copied as they are.

    Order: Via, Route..., Max-Forwards, From, To, Call-ID, CSeq, Content-Length.
    """
    if invite.method != "INVITE":
        raise TransactionError(f"{method} is only built for an INVITE")
    via = _raw_line(invite, "via")
    colon = via.index(b":")
    values = split_list(unfold(via[colon + 1 :]))
    if len(values) > 1:  # several Via values on one line: keep the top one only
        via = via[:colon] + b": " + values[0]
    cseq = _raw_line(invite, "cseq")
    number = b": %d %s" % (invite.cseq.number, method.encode("ascii"))
    return new_request(
        method,
        invite.uri,
        [
            ("via", via),
            *[(k, line) for k, line in invite.header_lines() if k == "route"],
            ("max-forwards", b"Max-Forwards: " + ACK_MAX_FORWARDS),
            ("from", _raw_line(invite, "from")),
            ("to", to_line),
            ("call-id", _raw_line(invite, "call-id")),
            ("cseq", cseq[: cseq.index(b":")] + number),
            ("content-length", b"Content-Length: 0"),
        ],
    )
