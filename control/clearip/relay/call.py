"""One call from INVITE to its final answer: ask ClearIP, then try its Contacts one by one.

The call flow of SPEC §3 is a table, FLOW (at the end of this module): for each state, the
events it handles and the handler that runs, as sip/transaction.py does for RFC 3261's
machines. `Call`'s public methods only turn what the core and the transactions report into
those events. Every caller gets exactly one final response; branches we gave up on are cleaned
up when they answer late (1xx → CANCEL, 2xx → ACK + BYE), never relayed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clearip.relay.routing import (
    Candidate,
    apply_headers,
    headers_from_redirect,
    is_emergency,
    order_contacts,
    target_for_uri,
)
from clearip.sip.errors import SipProtocolError
from clearip.sip.message import Request, Response, build_response
from clearip.sip.transaction import ClientTransaction
from clearip.sip.uri import SipUri, parse_uri, user_number
from clearip.stir import attest_level

if TYPE_CHECKING:
    from clearip.relay.core import ProxyCore, TxRecord
    from clearip.relay.events import Flow, Target

log = logging.getLogger("clearip.calls")
warn_log = logging.getLogger("clearip.relay")

# The verification status ClearIP puts in P-Asserted-Identity for inbound calls (ATIS-1000074
# `verstat` URI parameter, e.g. TN-Validation-Passed), counted for SPEC §6's mix; a token of
# bounded length, so odd input cannot grow the table with junk keys.
_VERSTAT = re.compile(rb";\s*verstat\s*=\s*([\w.-]{1,64})", re.IGNORECASE)


@dataclass(slots=True, init=False)  # an __init__ of its own: compiled (relay/events.py)
class Branch:
    """One attempt at a next hop (a 302 Contact, or the emergency route)."""

    candidate: Candidate | None
    target: Target
    rec: TxRecord | None = None
    provisional: bool = False
    abandoned: bool = False  # we moved on; a late answer is cleaned up, never relayed
    cancel_sent: bool = False
    answered: bool = False  # got a final response

    def __init__(
        self, candidate: Candidate | None, target: Target, rec: TxRecord | None = None
    ) -> None:
        self.candidate = candidate
        self.target = target
        self.rec = rec
        self.provisional = False
        self.abandoned = False
        self.cancel_sent = False
        self.answered = False


@dataclass(slots=True, init=False)  # an __init__ of its own: compiled (relay/events.py)
class CallLog:
    """What the one-line call log (SPEC §6) reports."""

    verdict: str = ""
    attest: str = ""
    next_hops: list[str] = field(default_factory=list)
    clearip_ms: float | None = None

    def __init__(self) -> None:
        self.verdict = ""
        self.attest = ""
        self.next_hops = []
        self.clearip_ms = None


class Call:
    __slots__ = (
        "branch",
        "cancel_owed",
        "candidates",
        "clearip",
        "clearip_conn",
        "clearip_sent",
        "copy_headers",
        "core",
        "deadline",
        "failovers",
        "flow",
        "index",
        "invite",
        "last_final",
        "log",
        "resent",
        "server",
        "source",
        "started",
        "state",
        "timer",
    )

    def __init__(self, core: ProxyCore, server: TxRecord, invite: Request, flow: Flow, now: float):
        self.core = core
        self.server = server  # the caller's INVITE server transaction
        self.invite = invite  # as received, minus the Route entries naming us
        self.flow = flow
        self.source = flow.remote[0]  # the caller's IP: per-source verdicts and calls_active
        self.started = now
        self.state = "new"  # a row of FLOW
        self.deadline: float | None = None  # the state's timer (see FLOW's "timer" events)
        self.timer: Any = None  # its place in the core's timer heap (ProxyCore.arm)
        self.clearip: TxRecord | None = None
        self.clearip_conn: int | None = None
        self.clearip_sent = 0.0
        self.resent = False  # our INVITE to ClearIP went out a second time (a link failed)
        self.cancel_owed = False  # CANCEL owed to ClearIP once it sends a provisional
        self.candidates: list[Candidate] = []
        self.copy_headers: list[tuple[str, bytes | str]] = []
        self.index = 0
        self.branch: Branch | None = None
        self.last_final: Response | None = None
        self.failovers = 0
        self.log = CallLog()

    @property
    def answered(self) -> bool:
        """The caller has its final answer."""
        return self.state == "done"

    def _set_deadline(self, when: float | None) -> None:
        """The call's own timer (ClearIP, provider, ring, CANCEL guard): set and (re)armed."""
        self.deadline = when
        self.core.arm(self)

    # -- events: what the core and the transactions tell a call, turned into FLOW's events --

    def start(self, now: float) -> None:
        core = self.core
        core.counters.count("calls_active", self.source)
        core.respond(self.server, build_response(self.invite, 100, "Trying"), now)
        core.strip_own_routes(self.invite)
        if is_emergency(self.invite, core.config.routing.emergency_numbers):
            self._emergency(now)
        else:
            self._ask_clearip(now)

    def cancel(self, now: float) -> None:
        """CANCEL from the caller (already answered 200): stop the call wherever it is."""
        self._on("cancel", None, now)

    def on_timer(self, now: float) -> None:
        self._set_deadline(None)
        self._on("timer", None, now)

    def on_link_down(self, conn: int, now: float) -> None:
        if self.clearip_conn == conn:
            self._on("clearip_lost", None, now)

    def on_link_up(self, now: float) -> None:
        self._on("link_up", None, now)

    def on_tx_message(self, rec: TxRecord, msg: Request | Response, now: float) -> None:
        if not isinstance(msg, Response):
            return
        status = msg.status
        if rec.role == "clearip":
            if rec is self.clearip:
                self._on("clearip_1xx" if status < 200 else "clearip_final", msg, now)
            return  # a late answer after we gave up: its transaction has ACKed it
        if rec.role != "branch":
            return
        branch: Branch = rec.data
        if branch.abandoned or branch is not self.branch:
            self._late_answer(rec, branch, msg, now)
        elif status < 200:
            self._on("branch_1xx", msg, now)
        else:
            self._on("branch_2xx" if status < 300 else "branch_final", msg, now)

    def on_tx_timeout(self, rec: TxRecord, now: float) -> None:
        self._tx_failed(rec, "clearip_timeout", now)

    def on_tx_error(self, rec: TxRecord, now: float) -> None:
        self._tx_failed(rec, "clearip_lost", now)

    def _tx_failed(self, rec: TxRecord, clearip_event: str, now: float) -> None:
        """A transaction of this call timed out or lost its transport."""
        if rec.role == "clearip":
            if rec is self.clearip:
                self._on(clearip_event, None, now)
        elif rec.role == "branch":
            branch = self.branch
            if branch is not None and rec.data is branch and not branch.abandoned:
                self._on("branch_lost", None, now)

    def _on(self, event: str, resp: Response | None, now: float) -> None:
        handler = FLOW[self.state].get(event)
        if handler is not None:
            getattr(self, handler)(resp, now)

    # -- ClearIP -----------------------------------------------------------------------------------

    def _emergency(self, now: float) -> None:
        core = self.core
        core.counters.inc("emergency_bypass")
        self.log.verdict = "emergency"
        action = core.config.routing.emergency_action
        if action == "reject":
            # the switch route-advances to its own emergency route at once (SPEC §3)
            self._final(
                503,
                "Service Unavailable",
                now,
                [("Reason", 'SIP;cause=503;text="emergency call not routed via ClearIP"')],
            )
            return
        uri = parse_uri(action)
        assert isinstance(uri, SipUri)  # the config loader only accepts SIP URIs here
        self.candidates = [Candidate(uri, target_for_uri(uri), [], 1.0)]
        self._next_branch(now, retarget=False)

    def _ask_clearip(self, now: float) -> None:
        core = self.core
        cfg = core.config.clearip
        target = core.upstream_target()
        if target is None:
            # the link is down: answer at once so the switch route-advances (SPEC §3)
            core.counters.count("clearip_unavailable", self.source)
            self.log.verdict = "unavailable"
            self._final(cfg.on_failure, "ClearIP unavailable", now)
            return
        self._set_deadline(now + cfg.timeout)
        self._send_to_clearip(target, now)

    def _send_to_clearip(self, target: Target, now: float) -> None:
        core = self.core
        req = self.invite.copy()
        assert isinstance(req, Request)
        req.decrement_max_forwards()
        core.add_via(req, target)
        self.state = "asking"
        self.clearip_sent = now
        self.clearip_conn = target.conn
        self.clearip = core.start_client_tx(
            req, target, self, "clearip", now, timeout=core.config.clearip.timeout
        )

    def _clearip_lost(self, _resp: Response | None, now: float) -> None:
        """The connection carrying our INVITE failed before ClearIP answered (SPEC §3): sent
        once more, at once or when the link is back, within the same timeout."""
        core = self.core
        if self.clearip is not None:
            core.abandon(self.clearip)
            self.clearip = None
        if self.resent:
            self._clearip_failed("unavailable", "clearip_unavailable", now)
            return
        self.resent = True
        target = core.upstream_target()
        if target is None:
            self.state = "waiting_link"
        else:
            self._send_to_clearip(target, now)

    def _link_up(self, _resp: Response | None, now: float) -> None:
        target = self.core.upstream_target()
        if target is not None:
            self._send_to_clearip(target, now)

    def _clearip_timeout(self, _resp: Response | None, now: float) -> None:
        self._set_deadline(None)
        rec = self.clearip
        if rec is not None and isinstance(rec.tx, ClientTransaction) and rec.tx.got_provisional:
            self.core.cancel_branch(rec, now)
        self.clearip = None
        self._clearip_failed("timeout", "clearip_timeout", now)

    def _clearip_failed(self, verdict: str, counter: str, now: float) -> None:
        self.core.counters.count(counter, self.source)
        self.log.verdict = verdict
        self._final(self.core.config.clearip.on_failure, "ClearIP unavailable", now)

    def _clearip_answered(self, resp: Response | None, now: float) -> None:
        assert resp is not None
        core = self.core
        rtt = (now - self.clearip_sent) * 1000.0
        self.log.clearip_ms = rtt
        core.counters.clearip_rtt(rtt)
        self._set_deadline(None)
        status = resp.status
        contacts = resp.contacts if 300 <= status < 400 else []
        if isinstance(contacts, list) and contacts:
            core.counters.count("clearip_302", self.source)
            self.log.verdict = str(status)
            self._start_providers(resp, contacts, now)
            return
        name = f"clearip_{status}" if status in (404, 503, 603) else "clearip_other"
        core.counters.count(name, self.source)
        self.log.verdict = str(status)
        if status in (403, 404) and core.notices.allow("not_registered", now):
            core.env.notice("not_registered", {"status": status})
        if 200 <= status < 300:
            # ClearIP is a redirect server: a 2xx would open a dialog with it. Not a route.
            warn_log.warning("ClearIP answered %d to an INVITE; treating it as a failure", status)
            self._final(core.config.clearip.on_failure, "ClearIP unavailable", now)
            return
        self._relay(resp, now)

    def _cancel_asking(self, _resp: Response | None, now: float) -> None:
        rec = self.clearip
        if rec is not None and isinstance(rec.tx, ClientTransaction) and rec.tx.got_provisional:
            self.core.cancel_branch(rec, now)
        else:
            self.cancel_owed = True  # RFC 3261 §9.1: not before a provisional
        self._final(487, "Request Terminated", now)

    def _clearip_provisional_after_cancel(self, _resp: Response | None, now: float) -> None:
        if self.cancel_owed and self.clearip is not None:
            self.cancel_owed = False
            self.core.cancel_branch(self.clearip, now)

    # -- providers ---------------------------------------------------------------------------------

    def _start_providers(self, resp: Response, contacts: list, now: float) -> None:
        routing = self.core.config.routing
        self.candidates = order_contacts(contacts, routing.max_contacts)
        self.copy_headers = list(headers_from_redirect(resp, routing.copy_headers))
        self._note_attestation(resp)
        if not self.candidates:
            self._final(503, "No Usable Route", now)
            return
        self._next_branch(now, retarget=True)

    def _note_attestation(self, resp: Response) -> None:
        """Count the STIR/SHAKEN attestation (Identity) and verification status (verstat in
        P-Asserted-Identity) ClearIP gave the call: in the 302, or in its first Contact."""
        embedded = self.candidates[0].headers if self.candidates else []
        identity = resp.get("identity")
        if identity is None:
            for name, value in embedded:
                if name.lower() in ("identity", "y"):
                    identity = value.encode()
                    break
        if identity is not None:
            level = attest_level(identity) or "?"
            self.log.attest = level
            self.core.counters.attest(level)
        pais = resp.get_all("p-asserted-identity")
        pais += [v.encode() for n, v in embedded if n.lower() == "p-asserted-identity"]
        for pai in pais:
            found = _VERSTAT.search(pai)
            if found is not None:
                self.core.counters.note_verstat(found.group(1).decode("ascii"))
                break

    def _next_branch(self, now: float, *, retarget: bool = True) -> None:
        core = self.core
        if self.index >= len(self.candidates):
            if self.last_final is not None:
                self._relay(self.last_final, now)
            else:
                self._final(503, "No Route Answered", now)
            return
        cand = self.candidates[self.index]
        self.index += 1
        if self.index > 1:
            self.failovers += 1
            core.counters.inc("failovers")
        target = cand.target
        req = self.invite.copy()
        assert isinstance(req, Request)
        if retarget:
            req.set_uri(cand.request_uri)
            apply_headers(req, [*self.copy_headers, *cand.headers])
        req.decrement_max_forwards()
        rr_in = core.rr_uri(self.flow.transport, self.flow.remote[0])
        rr_out = core.rr_uri(target.transport, target.host)
        req.prepend_header("Record-Route", rr_in)
        if rr_out != rr_in:  # RFC 5658 double Record-Route across transports/addresses
            req.prepend_header("Record-Route", rr_out)
        core.add_via(req, target)
        branch = Branch(cand, target)
        self.branch = branch
        self.state = "trying"
        self.log.next_hops.append(f"{target.host}:{target.port}")
        self._set_deadline(now + core.config.routing.provider_timeout)
        branch.rec = core.start_client_tx(req, target, self, "branch", now, data=branch)

    def _ringing(self, resp: Response | None, now: float) -> None:
        """The branch's first provisional: it gets the ring timeout instead."""
        assert self.branch is not None
        self.branch.provisional = True
        self.state = "ringing"
        self._set_deadline(now + self.core.config.routing.ring_timeout)
        self._relay_provisional(resp, now)

    def _relay_provisional(self, resp: Response | None, now: float) -> None:
        assert resp is not None
        if resp.status > 100:  # 100 Trying is hop-by-hop
            self._relay(resp, now, final=False)

    def _branch_answered(self, resp: Response | None, now: float) -> None:
        assert resp is not None and self.branch is not None
        branch = self.branch
        if not branch.answered:
            assert branch.rec is not None  # a branch answers through its transaction
            branch.answered = True
            self._set_deadline(None)
            self.core.dialog_started(self, resp, branch.rec)
        self._relay(resp, now)  # retransmitted 2xx are relayed too (RFC 6026)

    def _branch_failed(self, resp: Response | None, now: float) -> None:
        assert resp is not None and self.branch is not None
        self.branch.answered = True
        self._set_deadline(None)
        self.last_final = resp
        if self.state != "cancelling" and self.core.config.routing.is_failover(resp.status):
            self._next_branch(now)
        else:
            self._relay(resp, now)

    def _no_answer(self, _resp: Response | None, now: float) -> None:
        """No answer in time, or ringing too long: CANCEL it if it rang, then the next one."""
        branch = self.branch
        assert branch is not None
        branch.abandoned = True
        if branch.provisional:
            self._cancel(branch, now)
        self._next_branch(now)

    def _branch_lost(self, _resp: Response | None, now: float) -> None:
        """The branch's transaction timed out or its transport failed: the next one."""
        assert self.branch is not None
        self.branch.abandoned = True
        self._next_branch(now)

    def _cancel_trying(self, _resp: Response | None, now: float) -> None:
        assert self.branch is not None
        self.branch.abandoned = True  # a provisional later gets its CANCEL (_late_answer)
        self._final(487, "Request Terminated", now)

    def _cancel_ringing(self, _resp: Response | None, now: float) -> None:
        """The provider answers the INVITE with 487, which is relayed; a guard timer answers
        it ourselves if that never comes."""
        assert self.branch is not None
        self.state = "cancelling"
        self._cancel(self.branch, now)
        self._set_deadline(now + 64 * 0.5)

    def _cancelled_unanswered(self, _resp: Response | None, now: float) -> None:
        if self.branch is not None:
            self.branch.abandoned = True
        self._final(487, "Request Terminated", now)

    def _cancel_current(self, _resp: Response | None, now: float) -> None:
        """A provisional on the branch after the call ended (it had no provisional yet)."""
        branch = self.branch
        if branch is not None and not branch.provisional:
            branch.provisional = True
            self._cancel(branch, now)

    def _late_answer(self, rec: TxRecord, branch: Branch, resp: Response, now: float) -> None:
        """A branch we gave up on answered after all: cancel it or hang it up, never relay."""
        if resp.status < 200:
            branch.provisional = True
            self._cancel(branch, now)
        elif resp.status < 300 and not branch.answered:
            branch.answered = True
            self.core.hang_up_late_2xx(rec, resp, now)
        else:
            branch.answered = True

    def _cancel(self, branch: Branch, now: float) -> None:
        if branch.cancel_sent or branch.rec is None or branch.answered:
            return
        branch.cancel_sent = True
        self.core.cancel_branch(branch.rec, now)

    # -- internal errors -----------------------------------------------------------------------

    def abort(self, now: float) -> None:
        """An internal error: end the call here. The caller gets 500 unless it has its final
        answer already; every transaction of the call leaves the tables (SPEC §3: nothing
        hangs or leaks)."""
        core = self.core
        branch = self.branch
        for rec in (self.clearip, branch.rec if branch is not None else None):
            if rec is None:
                continue
            if isinstance(rec.tx, ClientTransaction) and rec.tx.got_provisional:
                try:
                    core.cancel_branch(rec, now)
                except Exception:  # the same fault again: leave the far end to its timers
                    pass
            core.abandon(rec)
        self.clearip = None
        self._set_deadline(None)
        try:
            if not self.answered:
                self._final(500, "Server Internal Error", now)
        finally:
            core.forget_call(self)
            if self.server.tx.deadline is None:  # no final went out: nothing will end it
                core.abandon(self.server)

    # -- answers ----------------------------------------------------------------------------------

    def _relay(self, resp: Response, now: float, *, final: bool = True) -> None:
        """Pass a response to the caller without our Via; reason phrase and Reason untouched."""
        # each response object is relayed at most once, so it is edited in place
        resp.pop_first_value("via")
        out = resp
        if final and resp.status >= 200:
            self._finish(resp.status, now)
        self.core.respond(self.server, out, now)

    def _final(
        self,
        status: int,
        reason: str,
        now: float,
        headers: list[tuple[str, bytes | str]] | None = None,
    ) -> None:
        self._finish(status, now)
        self.core.reply(self.server, status, reason, now, headers)

    def _finish(self, status: int, now: float) -> None:
        if self.state == "done":
            return
        self.state = "done"
        self._set_deadline(None)
        core = self.core
        core.counters.setup_time((now - self.started) * 1000.0)
        if not 200 <= status < 300:  # an answered call stays active as a dialog until BYE
            core.counters.count("calls_active", self.source, -1)
        core.forget_call(self)
        if log.isEnabledFor(logging.INFO):
            self._log_line(status, now)

    def _log_line(self, status: int, now: float) -> None:
        invite = self.invite
        try:
            caller = invite.from_.uri
            dialled = user_number(parse_uri(invite.uri)) or "-"
        except SipProtocolError:
            caller, dialled = "-", "-"
        entry = self.log
        log.info(
            "call %s from %s:%d caller=%s dialled=%s verdict=%s attest=%s next=%s "
            "failovers=%d final=%d clearip_ms=%s setup_ms=%.1f",
            invite.call_id,
            *self.flow.remote,
            caller,
            dialled,
            entry.verdict or "-",
            entry.attest or "-",
            ",".join(entry.next_hops) or "-",
            self.failovers,
            status,
            f"{entry.clearip_ms:.1f}" if entry.clearip_ms is not None else "-",
            (now - self.started) * 1000.0,
        )


# The call flow (SPEC §3): FLOW[state][event] names the Call method a call runs (given the
# response, if the event has one). The handler sets the next state, which may depend on what it
# finds: a 302 with no usable Contact ends the call; a failover status tries the next Contact,
# or ends the call when none is left.
#
#   new ──▶ asking ──302──▶ trying ──1xx──▶ ringing ──2xx / final / none left──▶ done
#            │  ▲ link lost (once)  ▲  no answer, failover status, lost: next Contact   │
#            ▼  │                   └──────────────────────────────────────────────────┘
#        waiting_link               ringing ──caller's CANCEL──▶ cancelling ──487 / guard──▶ done
#   (503/603/404/timeout/unavailable, the caller's CANCEL before a provider rang: done at once)
#   (emergency: straight to done with 503, or to trying with the emergency next hop)
#
# An event a state does not list is ignored: a late or stray answer, which its transaction has
# already absorbed or ACKed. Answers from a branch we gave up on never reach the table: they
# are cancelled or hung up (Call._late_answer).
FLOW: dict[str, dict[str, str]] = {
    "new": {},
    "asking": {
        "clearip_final": "_clearip_answered",
        "clearip_lost": "_clearip_lost",
        "clearip_timeout": "_clearip_timeout",
        "timer": "_clearip_timeout",
        "cancel": "_cancel_asking",
    },
    "waiting_link": {
        "link_up": "_link_up",
        "timer": "_clearip_timeout",
        "cancel": "_cancel_asking",
    },
    "trying": {
        "branch_1xx": "_ringing",
        "branch_2xx": "_branch_answered",
        "branch_final": "_branch_failed",
        "branch_lost": "_branch_lost",
        "timer": "_no_answer",
        "cancel": "_cancel_trying",
    },
    "ringing": {
        "branch_1xx": "_relay_provisional",
        "branch_2xx": "_branch_answered",
        "branch_final": "_branch_failed",
        "branch_lost": "_branch_lost",
        "timer": "_no_answer",
        "cancel": "_cancel_ringing",
    },
    "cancelling": {
        "branch_1xx": "_relay_provisional",
        "branch_2xx": "_branch_answered",  # a 2xx crossing the CANCEL wins (RFC 3261 §9.1)
        "branch_final": "_branch_failed",  # the 487, relayed
        "branch_lost": "_cancelled_unanswered",
        "timer": "_cancelled_unanswered",
    },
    "done": {
        "clearip_1xx": "_clearip_provisional_after_cancel",
        "branch_1xx": "_cancel_current",
        "branch_2xx": "_branch_answered",  # retransmissions, relayed (RFC 6026)
    },
}
