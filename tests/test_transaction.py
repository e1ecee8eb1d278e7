"""RFC 3261 §17 / RFC 6026 transactions: timers with an injected clock, exact wire bytes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from clearip.sip.message import Request, Response, build_response, parse_message
from clearip.sip.transaction import (
    T1,
    T2,
    T4,
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
    make_ack,
    make_cancel,
    server_key,
)

SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
RURI = b"sip:+12025550123@carrier.example.net;user=phone"
INVITE = (
    b"INVITE " + RURI + b" SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKproxy.1\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKswitch.1;received=192.0.2.10\r\n"
    b"Route: <sip:edge1.carrier.example.net;lr>\r\n"
    b"Route: <sip:edge2.carrier.example.net;lr>\r\n"
    b"Max-Forwards: 69\r\n"
    b'From: "Alice" <sip:+12025550100@switch.example.com>;tag=1928301774\r\n'
    b"To: <sip:+12025550123@carrier.example.net;user=phone>\r\n"
    b"Call-ID: a84b4c76e66710@192.0.2.10\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.10:5060>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)
OPTIONS = (
    b"OPTIONS sip:carrier.example.net SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKopt.1\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:proxy@198.51.100.7>;tag=77\r\n"
    b"To: <sip:carrier.example.net>\r\n"
    b"Call-ID: opt-1@198.51.100.7\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
TO_TAG = "8321234356"


def req(data: bytes = INVITE) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def resp_to(request: Request, status: int, reason: str, to_tag: str | None = TO_TAG) -> Response:
    """The response as it comes back over the wire (parsed from bytes)."""
    msg = parse_message(build_response(request, status, reason, to_tag=to_tag).to_bytes())
    assert isinstance(msg, Response)
    return msg


def run_timers(tx: ClientTransaction | ServerTransaction) -> list[tuple[float, list[TxEvent]]]:
    """Fire every timer at its exact deadline until none is left."""
    log: list[tuple[float, list[TxEvent]]] = []
    while (now := tx.deadline) is not None:
        log.append((now, tx.on_timer(now)))
    return log


def sends_at(log: list[tuple[float, list[TxEvent]]]) -> list[float]:
    return [now for now, events in log if any(isinstance(e, TxSend) for e in events)]


# --- client INVITE (RFC 3261 §17.1.1, RFC 6026 §8.4) ----------------------------------------------


def test_invite_timer_a_doubles_without_cap_until_timer_b() -> None:
    invite = req()
    tx = ClientTransaction(invite, reliable=False)
    assert tx.key == ("z9hG4bKproxy.1", "INVITE")
    assert tx.state == "init" and tx.deadline is None
    assert tx.start(0.0) == [TxSend(INVITE)]
    assert tx.state == "calling" and tx.deadline == T1
    log = run_timers(tx)
    assert [now for now, _ in log] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 32.0]
    assert all(events == [TxSend(INVITE)] for _, events in log[:-1])
    assert log[-1] == (32.0, [TxTimeout(), TxTerminated()])
    assert tx.state == "terminated" and tx.deadline is None


def test_invite_timer_b_override() -> None:
    tx = ClientTransaction(req(), reliable=False, timer_b=4.0)
    tx.start(10.0)
    log = run_timers(tx)
    assert sends_at(log) == [10.5, 11.5, 13.5]
    assert log[-1] == (14.0, [TxTimeout(), TxTerminated()])


def test_ending_timer_preempts_a_retransmission_due_at_the_same_time() -> None:
    tx = ClientTransaction(req(), reliable=False, timer_b=1.5)  # A and B both due at 1.5
    tx.start(0.0)
    assert tx.on_timer(0.5) == [TxSend(INVITE)]
    assert tx.on_timer(1.5) == [TxTimeout(), TxTerminated()]
    tx = ClientTransaction(req(), reliable=False)
    tx.start(0.0)
    assert tx.on_timer(100.0) == [TxTimeout(), TxTerminated()]  # woke up far too late


def test_invite_reliable_sends_once() -> None:
    tx = ClientTransaction(req(), reliable=True)
    assert tx.start(0.0) == [TxSend(INVITE)]
    assert tx.deadline == 64 * T1
    assert run_timers(tx) == [(32.0, [TxTimeout(), TxTerminated()])]


def test_timer_fires_only_when_due_and_once_per_call() -> None:
    tx = ClientTransaction(req(), reliable=False)
    tx.start(0.0)
    assert tx.on_timer(0.4) == []  # early wake-up: nothing
    assert tx.on_timer(3.0) == [TxSend(INVITE)]  # late wake-up: one retransmission, no burst
    assert tx.deadline == 3.0 + 2 * T1  # re-armed from the firing time


def test_invite_provisional_stops_timers_a_and_b() -> None:
    invite = req()
    tx = ClientTransaction(invite, reliable=False)
    tx.start(0.0)
    assert not tx.got_provisional
    ringing = resp_to(invite, 180, "Ringing")
    assert tx.receive(ringing, 0.7) == [TxDeliver(ringing)]
    assert tx.state == "proceeding" and tx.got_provisional
    assert tx.deadline is None  # Timer B applies to "calling" only; the TU's Timer C takes over
    assert tx.receive(ringing, 60.0) == [TxDeliver(ringing)]  # every 1xx goes up


ACK = (
    b"ACK " + RURI + b" SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKproxy.1\r\n"
    b"Route: <sip:edge1.carrier.example.net;lr>\r\n"
    b"Route: <sip:edge2.carrier.example.net;lr>\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice" <sip:+12025550100@switch.example.com>;tag=1928301774\r\n'
    b"To: <sip:+12025550123@carrier.example.net;user=phone>;tag=8321234356\r\n"
    b"Call-ID: a84b4c76e66710@192.0.2.10\r\n"
    b"CSeq: 314159 ACK\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


@pytest.mark.parametrize("after_1xx", [False, True])
def test_invite_non_2xx_final_acked_then_timer_d(after_1xx: bool) -> None:
    invite = req()
    tx = ClientTransaction(invite, reliable=False)
    tx.start(0.0)
    if after_1xx:
        tx.receive(resp_to(invite, 100, "Trying", None), 0.1)
    busy = resp_to(invite, 486, "Busy Here")
    assert tx.receive(busy, 2.0) == [TxSend(ACK), TxDeliver(busy)]
    assert tx.state == "completed" and tx.deadline == 2.0 + 32.0  # Timer D
    # a retransmitted final: ACK again, not delivered again
    assert tx.receive(busy, 3.0) == [TxSend(ACK)]
    # anything else in "completed" is absorbed
    assert tx.receive(resp_to(invite, 180, "Ringing"), 3.1) == []
    assert tx.receive(resp_to(invite, 200, "OK"), 3.2) == []
    assert run_timers(tx) == [(34.0, [TxTerminated()])]


def test_invite_non_2xx_final_reliable_timer_d_is_zero() -> None:
    invite = req()
    tx = ClientTransaction(invite, reliable=True)
    tx.start(0.0)
    busy = resp_to(invite, 486, "Busy Here")
    assert tx.receive(busy, 2.0) == [TxSend(ACK), TxDeliver(busy), TxTerminated()]
    assert tx.state == "terminated" and tx.deadline is None
    assert tx.receive(busy, 2.1) == []  # late retransmission on a dead tx: absorbed


@pytest.mark.parametrize("reliable", [False, True])
def test_invite_2xx_accepted_delivers_each_2xx_until_timer_m(reliable: bool) -> None:
    invite = req()
    tx = ClientTransaction(invite, reliable=reliable)
    tx.start(0.0)
    ok = resp_to(invite, 200, "OK")
    assert tx.receive(ok, 1.0) == [TxDeliver(ok)]
    assert tx.state == "accepted"
    assert tx.deadline == 1.0 + 64 * T1  # Timer M on every transport
    forked = resp_to(invite, 200, "OK", to_tag="other-branch")
    assert tx.receive(ok, 2.0) == [TxDeliver(ok)]  # retransmission: forwarded statelessly
    assert tx.receive(forked, 2.5) == [TxDeliver(forked)]
    assert tx.receive(resp_to(invite, 486, "Busy Here"), 3.0) == []
    assert tx.receive(resp_to(invite, 180, "Ringing"), 3.0) == []
    assert tx.deadline == 33.0  # 2xx do not restart Timer M
    assert run_timers(tx) == [(33.0, [TxTerminated()])]


def test_response_of_another_transaction_is_refused() -> None:
    invite = req()
    tx = ClientTransaction(invite, reliable=False)
    with pytest.raises(TransactionError):
        tx.receive(resp_to(invite, 180, "Ringing"), 0.0)  # before start()
    tx.start(0.0)
    cancel = make_cancel(invite)
    with pytest.raises(TransactionError):
        tx.receive(resp_to(cancel, 200, "OK"), 0.1)  # CSeq CANCEL: the CANCEL's own tx


# --- client non-INVITE (RFC 3261 §17.1.2) ---------------------------------------------------------


def test_non_invite_timer_e_capped_at_t2_until_timer_f() -> None:
    tx = ClientTransaction(req(OPTIONS), reliable=False)
    assert tx.key == ("z9hG4bKopt.1", "OPTIONS")
    assert tx.start(0.0) == [TxSend(OPTIONS)]
    assert tx.state == "trying"
    log = run_timers(tx)
    # intervals 0.5, 1, 2, then T2 = 4 s
    assert sends_at(log) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(events == [TxSend(OPTIONS)] for _, events in log[:-1])
    assert log[-1] == (32.0, [TxTimeout(), TxTerminated()])


def test_non_invite_timer_e_is_t2_after_provisional() -> None:
    options = req(OPTIONS)
    tx = ClientTransaction(options, reliable=False)
    tx.start(0.0)
    assert tx.on_timer(0.5) == [TxSend(OPTIONS)]  # next E at 1.5
    trying = resp_to(options, 100, "Trying", None)
    assert tx.receive(trying, 0.7) == [TxDeliver(trying)]
    assert tx.state == "proceeding" and tx.deadline == 1.5  # E and F keep running
    log = run_timers(tx)
    assert sends_at(log) == [1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert log[-1] == (32.0, [TxTimeout(), TxTerminated()])


@pytest.mark.parametrize("status", [200, 404])
def test_non_invite_final_then_timer_k(status: int) -> None:
    options = req(OPTIONS)
    tx = ClientTransaction(options, reliable=False)
    tx.start(0.0)
    final = resp_to(options, status, "whatever")
    assert tx.receive(final, 1.0) == [TxDeliver(final)]
    assert tx.state == "completed" and tx.deadline == 1.0 + T4
    assert tx.receive(final, 1.5) == []  # retransmissions absorbed
    assert run_timers(tx) == [(6.0, [TxTerminated()])]


def test_non_invite_reliable_sends_once_and_timer_k_is_zero() -> None:
    options = req(OPTIONS)
    tx = ClientTransaction(options, reliable=True, timer_b=10.0)
    assert tx.start(0.0) == [TxSend(OPTIONS)]
    assert tx.deadline == 10.0  # Timer F only
    ok = resp_to(options, 200, "OK")
    assert tx.receive(ok, 1.0) == [TxDeliver(ok), TxTerminated()]
    assert tx.deadline is None


# --- server INVITE (RFC 3261 §17.2.1, RFC 6026 §8.7) ----------------------------------------------


def test_invite_server_retransmission_answered_with_last_response_never_delivered() -> None:
    invite = req()
    tx = ServerTransaction(invite, reliable=False)
    assert tx.state == "proceeding" and tx.last_response is None and tx.deadline is None
    assert tx.receive(req(), 0.1) == []  # nothing sent yet: absorbed
    trying = build_response(invite, 100, "Trying")
    assert tx.send_response(trying, 0.2) == [TxSend(trying.to_bytes())]
    assert tx.receive(req(), 0.6) == [TxSend(trying.to_bytes())]
    ringing = build_response(invite, 180, "Ringing", to_tag=TO_TAG)
    assert tx.send_response(ringing, 1.0) == [TxSend(ringing.to_bytes())]
    assert tx.receive(req(), 1.1) == [TxSend(ringing.to_bytes())]
    assert tx.last_response == ringing.to_bytes()
    assert tx.deadline is None  # provisional responses are not retransmitted


def test_invite_server_timer_g_capped_at_t2_and_timer_h() -> None:
    invite = req()
    tx = ServerTransaction(invite, reliable=False)
    busy = build_response(invite, 486, "Busy Here", to_tag=TO_TAG).to_bytes()
    assert tx.send_response(resp_to(invite, 486, "Busy Here"), 1.0) == [TxSend(busy)]
    assert tx.state == "completed" and tx.deadline == 1.5
    assert tx.receive(req(), 1.2) == [TxSend(busy)]  # retransmitted INVITE
    log = run_timers(tx)
    assert sends_at(log) == [1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5]
    assert all(events == [TxSend(busy)] for _, events in log[:-1])
    assert log[-1] == (33.0, [TxTimeout(), TxTerminated()])  # H = 64*T1: no ACK came


def test_invite_server_ack_absorbed_in_completed_then_timer_i() -> None:
    invite = req()
    tx = ServerTransaction(invite, reliable=False)
    busy = resp_to(invite, 486, "Busy Here")
    tx.send_response(busy, 1.0)
    ack = req(ACK)
    assert server_key(ack) == tx.key
    assert tx.receive(ack, 2.0) == []  # absorbed, not delivered
    assert tx.state == "confirmed" and tx.deadline == 2.0 + T4  # G and H stopped
    assert tx.receive(ack, 3.0) == []
    assert tx.receive(req(), 3.0) == []
    assert run_timers(tx) == [(7.0, [TxTerminated()])]


def test_invite_server_reliable_no_timer_g_and_timer_i_is_zero() -> None:
    invite = req()
    tx = ServerTransaction(invite, reliable=True)
    tx.send_response(resp_to(invite, 503, "Service Unavailable"), 1.0)
    assert tx.deadline == 1.0 + 64 * T1  # Timer H only
    assert tx.receive(req(ACK), 2.0) == [TxTerminated()]
    assert tx.deadline is None


def test_invite_server_reliable_timer_h() -> None:
    invite = req()
    tx = ServerTransaction(invite, reliable=True)
    tx.send_response(resp_to(invite, 486, "Busy Here"), 0.0)
    assert run_timers(tx) == [(32.0, [TxTimeout(), TxTerminated()])]


def test_invite_server_2xx_accepted_until_timer_l() -> None:
    invite = req()
    tx = ServerTransaction(invite, reliable=False)
    ok = resp_to(invite, 200, "OK")
    assert tx.send_response(ok, 1.0) == [TxSend(ok.to_bytes())]
    assert tx.state == "accepted" and tx.deadline == 1.0 + 64 * T1
    assert tx.receive(req(), 1.5) == []  # INVITE retransmission absorbed, no 2xx resent
    assert tx.send_response(ok, 1.5) == [TxSend(ok.to_bytes())]  # the TU retransmits the 2xx
    # an ACK for the 2xx normally has a new branch: not this transaction's
    ack_2xx = req(ACK.replace(b"z9hG4bKproxy.1", b"z9hG4bKack.2"))
    assert server_key(ack_2xx) != tx.key
    with pytest.raises(TransactionError):
        tx.receive(ack_2xx, 2.0)
    # one that does match is passed up (RFC 6026 §8.7)
    ack = req(ACK)
    assert tx.receive(ack, 2.0) == [TxDeliver(ack)]
    for status in (180, 486):
        with pytest.raises(TransactionError):
            tx.send_response(resp_to(invite, status, "x"), 2.0)
    assert run_timers(tx) == [(33.0, [TxTerminated()])]


def test_invite_server_no_response_after_final() -> None:
    invite = req()
    tx = ServerTransaction(invite, reliable=False)
    tx.send_response(resp_to(invite, 486, "Busy Here"), 0.0)
    for status in (180, 200, 487):
        with pytest.raises(TransactionError):
            tx.send_response(resp_to(invite, status, "x"), 0.1)
    tx.receive(req(ACK), 0.2)
    with pytest.raises(TransactionError):
        tx.send_response(resp_to(invite, 487, "x"), 0.3)


# --- server non-INVITE (RFC 3261 §17.2.2) ---------------------------------------------------------


def test_non_invite_server_states_and_timer_j() -> None:
    options = req(OPTIONS)
    tx = ServerTransaction(options, reliable=False)
    assert tx.state == "trying"
    assert tx.receive(req(OPTIONS), 0.1) == []  # nothing to answer with yet
    trying = resp_to(options, 100, "Trying", None)
    assert tx.send_response(trying, 0.2) == [TxSend(trying.to_bytes())]
    assert tx.state == "proceeding"
    assert tx.receive(req(OPTIONS), 0.3) == [TxSend(trying.to_bytes())]
    ok = resp_to(options, 200, "OK")
    assert tx.send_response(ok, 1.0) == [TxSend(ok.to_bytes())]
    assert tx.state == "completed" and tx.deadline == 1.0 + 64 * T1
    assert tx.receive(req(OPTIONS), 2.0) == [TxSend(ok.to_bytes())]
    assert tx.send_response(resp_to(options, 500, "x"), 2.0) == []  # discarded (§17.2.2)
    with pytest.raises(TransactionError):
        tx.send_response(trying, 2.0)
    assert run_timers(tx) == [(33.0, [TxTerminated()])]


def test_non_invite_server_reliable_timer_j_is_zero() -> None:
    options = req(OPTIONS)
    tx = ServerTransaction(options, reliable=True)
    ok = resp_to(options, 200, "OK")
    assert tx.send_response(ok, 1.0) == [TxSend(ok.to_bytes()), TxTerminated()]
    assert tx.state == "terminated" and tx.deadline is None


# --- transport errors in every state, illegal calls -----------------------------------------------


def _client_invite(state: str, reliable: bool = False) -> ClientTransaction:
    invite = req()
    tx = ClientTransaction(invite, reliable=reliable)
    if state != "init":
        tx.start(0.0)
    status = {"proceeding": 180, "completed": 486, "accepted": 200}.get(state)
    if status is not None:
        tx.receive(resp_to(invite, status, "x"), 1.0)
    if state == "terminated":
        tx.on_timer(32.0)
    assert tx.state == state
    return tx


def _client_options(state: str) -> ClientTransaction:
    options = req(OPTIONS)
    tx = ClientTransaction(options, reliable=False)
    if state != "init":
        tx.start(0.0)
    status = {"proceeding": 100, "completed": 200}.get(state)
    if status is not None:
        tx.receive(resp_to(options, status, "x"), 1.0)
    if state == "terminated":
        tx.on_timer(32.0)
    assert tx.state == state
    return tx


def _server_invite(state: str) -> ServerTransaction:
    invite = req()
    tx = ServerTransaction(invite, reliable=False)
    status = {"completed": 486, "confirmed": 486, "accepted": 200, "terminated": 486}.get(state)
    if status is not None:
        tx.send_response(resp_to(invite, status, "x"), 0.0)
    if state == "confirmed":
        tx.receive(req(ACK), 0.1)
    if state == "terminated":
        run_timers(tx)
    assert tx.state == state
    return tx


def _server_options(state: str) -> ServerTransaction:
    options = req(OPTIONS)
    tx = ServerTransaction(options, reliable=False)
    status = {"proceeding": 100, "completed": 200, "terminated": 200}.get(state)
    if status is not None:
        tx.send_response(resp_to(options, status, "x"), 0.0)
    if state == "terminated":
        run_timers(tx)
    assert tx.state == state
    return tx


LIVE_STATES: list[tuple[Callable[[str], ClientTransaction | ServerTransaction], str]] = [
    *((_client_invite, s) for s in ("calling", "proceeding", "completed", "accepted")),
    *((_client_options, s) for s in ("trying", "proceeding", "completed")),
    *((_server_invite, s) for s in ("proceeding", "completed", "confirmed", "accepted")),
    *((_server_options, s) for s in ("trying", "proceeding", "completed")),
]
DEAD_STATES: list[tuple[Callable[[str], ClientTransaction | ServerTransaction], str]] = [
    (_client_invite, "init"),
    (_client_invite, "terminated"),
    (_client_options, "init"),
    (_client_options, "terminated"),
    (_server_invite, "terminated"),
    (_server_options, "terminated"),
]


@pytest.mark.parametrize(("make", "state"), LIVE_STATES)
def test_transport_error_in_every_live_state(
    make: Callable[[str], ClientTransaction | ServerTransaction], state: str
) -> None:
    tx = make(state)
    assert tx.transport_error(5.0) == [TxTransportError(), TxTerminated()]
    assert tx.state == "terminated" and tx.deadline is None


@pytest.mark.parametrize(("make", "state"), DEAD_STATES)
def test_transport_error_before_start_and_after_end(
    make: Callable[[str], ClientTransaction | ServerTransaction], state: str
) -> None:
    tx = make(state)
    if state == "init":  # nothing was sent
        with pytest.raises(TransactionError):
            tx.transport_error(50.0)
    else:  # a late failure to send the last bytes
        assert tx.transport_error(50.0) == []
        with pytest.raises(TransactionError):
            tx.on_timer(50.0)  # deadline is None: nobody should call this
    assert tx.deadline is None


def test_late_send_failure_after_reliable_final() -> None:
    options = req(OPTIONS)
    tx = ServerTransaction(options, reliable=True)
    events = tx.send_response(resp_to(options, 200, "OK"), 0.0)
    assert events[-1] == TxTerminated()
    assert tx.transport_error(0.1) == []


def test_illegal_calls_raise() -> None:
    with pytest.raises(TransactionError):
        _server_invite("terminated").send_response(resp_to(req(), 200, "OK"), 40.0)
    with pytest.raises(TransactionError):
        _server_options("terminated").send_response(resp_to(req(OPTIONS), 200, "OK"), 40.0)
    with pytest.raises(TransactionError):
        _client_invite("calling").start(1.0)  # started twice
    with pytest.raises(TransactionError):
        ClientTransaction(req(ACK), reliable=False)
    with pytest.raises(TransactionError):
        ServerTransaction(req(ACK), reliable=False)
    with pytest.raises(TransactionError):
        _client_options("trying").make_cancel()
    with pytest.raises(TransactionError):
        make_ack(req(OPTIONS), resp_to(req(OPTIONS), 404, "Not Found"))
    with pytest.raises(TransactionError) as err:  # the TU routed a request to the wrong tx
        ServerTransaction(req(), reliable=False).receive(req(OPTIONS), 0.0)
    assert err.value.status == 500


def test_terminated_transactions_absorb_peer_input() -> None:
    assert _client_invite("terminated").receive(resp_to(req(), 200, "OK"), 40.0) == []
    assert _server_invite("terminated").receive(req(), 40.0) == []
    assert _server_options("terminated").receive(req(OPTIONS), 40.0) == []


# --- ACK and CANCEL bytes -------------------------------------------------------------------------


def test_make_ack_exact_bytes() -> None:
    invite = req()
    ack = make_ack(invite, resp_to(invite, 486, "Busy Here"))
    assert ack.method == "ACK" and ack.uri == RURI
    assert ack.to_bytes() == ACK
    assert parse_message(ACK).to_bytes() == ACK  # and it parses back the same


def test_make_cancel_exact_bytes() -> None:
    expected = (
        b"CANCEL " + RURI + b" SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKproxy.1\r\n"
        b"Route: <sip:edge1.carrier.example.net;lr>\r\n"
        b"Route: <sip:edge2.carrier.example.net;lr>\r\n"
        b"Max-Forwards: 70\r\n"
        b'From: "Alice" <sip:+12025550100@switch.example.com>;tag=1928301774\r\n'
        b"To: <sip:+12025550123@carrier.example.net;user=phone>\r\n"
        b"Call-ID: a84b4c76e66710@192.0.2.10\r\n"
        b"CSeq: 314159 CANCEL\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    invite = req()
    assert make_cancel(invite).to_bytes() == expected
    tx = ClientTransaction(invite, reliable=False)
    assert tx.make_cancel().to_bytes() == expected


def test_ack_and_cancel_copy_compact_lines_and_keep_only_the_top_via() -> None:
    invite = req(
        b"INVITE sip:bob@example.net SIP/2.0\r\n"
        b"v: SIP/2.0/TCP a.example.com;branch=z9hG4bK1, SIP/2.0/UDP b.example.com;branch=z9hG4bK2"
        b"\r\n"
        b"f: <sip:alice@example.com>;tag=1\r\n"
        b"t: <sip:bob@example.net>\r\n"
        b"i: cid-1\r\n"
        b"CSeq:   7 INVITE\r\n"
        b"l: 0\r\n"
        b"\r\n"
    )
    resp = parse_message(
        b"SIP/2.0 404 Not Found\r\n"
        b"v: SIP/2.0/TCP a.example.com;branch=z9hG4bK1\r\n"
        b"t: <sip:bob@example.net>;tag=x9\r\n"
        b"CSeq: 7 INVITE\r\n"
        b"\r\n"
    )
    assert isinstance(resp, Response)
    tail = b"i: cid-1\r\nCSeq: 7 ACK\r\nContent-Length: 0\r\n\r\n"
    assert make_ack(invite, resp).to_bytes() == (
        b"ACK sip:bob@example.net SIP/2.0\r\n"
        b"v: SIP/2.0/TCP a.example.com;branch=z9hG4bK1\r\n"
        b"Max-Forwards: 70\r\n"
        b"f: <sip:alice@example.com>;tag=1\r\n"
        b"t: <sip:bob@example.net>;tag=x9\r\n" + tail
    )
    assert make_cancel(invite).to_bytes().endswith(
        b"t: <sip:bob@example.net>\r\ni: cid-1\r\nCSeq: 7 CANCEL\r\nContent-Length: 0\r\n\r\n"
    )


# --- matching (RFC 3261 §17.1.3, §17.2.3) ---------------------------------------------------------


def test_server_key_with_magic_cookie() -> None:
    invite = req()
    key = server_key(invite)
    assert key == ("z9hG4bKproxy.1", "198.51.100.7", 5060, "INVITE")
    assert server_key(req(ACK)) == key  # ACK -> INVITE
    assert server_key(make_cancel(invite)) == ("z9hG4bKproxy.1", "198.51.100.7", 5060, "CANCEL")
    other_port = req(INVITE.replace(b"198.51.100.7:5060;", b"198.51.100.7:5070;", 1))
    assert server_key(other_port) != key
    assert server_key(req(INVITE.replace(b"198.51.100.7:5060;", b"198.51.100.7;", 1)))[2] is None


RFC2543_INVITE = (
    b"INVITE sip:bob@example.net SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP old.example.com:5060\r\n"
    b"From: <sip:alice@example.com>;tag=a1\r\n"
    b"To: <sip:bob@example.net>\r\n"
    b"Call-ID: legacy-1@old.example.com\r\n"
    b"CSeq: 5 INVITE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def test_server_key_rfc2543_fallback() -> None:
    invite = req(RFC2543_INVITE)
    key = server_key(invite)
    assert key == (
        b"sip:bob@example.net", None, "a1", "legacy-1@old.example.com", 5,
        "SIP/2.0/UDP old.example.com:5060", "INVITE",
    )
    assert server_key(req(RFC2543_INVITE)) == key  # a retransmission
    # the ACK carries our To tag and method ACK, and still matches
    ack = make_ack(invite, resp_to(invite, 486, "Busy Here"))
    assert server_key(ack) == key
    # a branch without the magic cookie is not trusted either
    odd_branch = req(RFC2543_INVITE.replace(b":5060\r\n", b":5060;branch=1234\r\n"))
    assert len(server_key(odd_branch)) == 7
    # the CANCEL's key is the INVITE's with its own method (RFC 3261 §9.2)
    cancel_key = server_key(make_cancel(invite))
    assert cancel_key[-1] == "CANCEL" and (*cancel_key[:-1], "INVITE") == key
    # other methods keep the To tag in the key
    bye = req(
        RFC2543_INVITE.replace(b"INVITE", b"BYE").replace(b"example.net>", b"example.net>;tag=b2")
    )
    assert server_key(bye)[1] == "b2" and server_key(bye)[-1] == "BYE"
    for change in (b"CSeq: 6 INVITE", b"Call-ID: legacy-2@old.example.com"):
        field = change.split(b":")[0]
        start = RFC2543_INVITE.index(field)
        end = RFC2543_INVITE.index(b"\r\n", start)
        assert server_key(req(RFC2543_INVITE[:start] + change + RFC2543_INVITE[end:])) != key


def test_rfc2543_ack_must_carry_our_to_tag() -> None:
    invite = req(RFC2543_INVITE)
    tx = ServerTransaction(invite, reliable=False)
    busy = resp_to(invite, 486, "Busy Here")
    tx.send_response(busy, 0.0)
    wrong = make_ack(invite, resp_to(invite, 486, "Busy Here", to_tag="not-ours"))
    assert tx.receive(wrong, 0.1) == [] and tx.state == "completed"
    assert tx.receive(make_ack(invite, busy), 0.2) == [] and tx.state == "confirmed"


def test_client_key() -> None:
    invite = req()
    tx = ClientTransaction(invite, reliable=False)
    assert client_key(resp_to(invite, 180, "Ringing")) == tx.key
    cancel = make_cancel(invite)
    cancel_tx = ClientTransaction(cancel, reliable=False)
    assert cancel_tx.key == ("z9hG4bKproxy.1", "CANCEL")
    assert client_key(resp_to(cancel, 200, "OK")) == cancel_tx.key != tx.key


# --- both ends joined by a lossy link -------------------------------------------------------------


def test_invite_rejected_over_lossy_link() -> None:
    """Client and server ends exchange bytes; the first 486 and the first ACK are lost."""
    client = ClientTransaction(req(), reliable=False)
    server_req = req(wire(client.start(0.0)))
    server = ServerTransaction(server_req, reliable=False)
    trying = parse_message(wire(server.send_response(resp_to(server_req, 100, "Trying"), 0.1)))
    assert isinstance(trying, Response)
    assert client.receive(trying, 0.1) == [TxDeliver(trying)] and client.deadline is None
    wire(server.send_response(resp_to(server_req, 486, "Busy Here"), 1.0))  # lost
    busy = parse_message(wire(server.on_timer(1.5)))  # Timer G retransmits it
    assert isinstance(busy, Response)
    ack_send, deliver = client.receive(busy, 1.5)
    assert deliver == TxDeliver(busy) and isinstance(ack_send, TxSend)  # this ACK is lost
    again = parse_message(wire(server.on_timer(2.5)))
    assert isinstance(again, Response)
    assert client.receive(again, 2.5) == [ack_send]  # the same ACK bytes, no second delivery
    ack = req(ack_send.data)
    assert server_key(ack) == server.key
    assert server.receive(ack, 2.6) == [] and server.state == "confirmed"
    assert run_timers(server) == [(2.6 + T4, [TxTerminated()])]
    assert run_timers(client) == [(1.5 + 32.0, [TxTerminated()])]


def wire(events: list[TxEvent]) -> bytes:
    """The bytes of the one TxSend in `events`."""
    (event,) = events
    assert isinstance(event, TxSend)
    return event.data


def test_timer_constants() -> None:
    assert (T1, T2, T4) == (0.5, 4.0, 5.0)
