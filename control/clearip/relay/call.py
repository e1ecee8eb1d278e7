"""One call from INVITE to its final answer: ask ClearIP, then try its Contacts one by one.

The stages of SPEC §3 as a small state machine driven by the proxy core:

    clearip ──302──▶ providers ──2xx / non-failover final / all failed──▶ done
       │ 503/603/404/timeout/unavailable ─────────────────────────────────▶ done
    (emergency: straight to reject, or to providers with the emergency next hop)

Every caller gets exactly one final response; branches we gave up on are cleaned up when they
answer late (1xx → CANCEL, 2xx → ACK + BYE), never relayed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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


@dataclass(slots=True)
class Branch:
    """One attempt at a next hop (a 302 Contact, or the emergency route)."""

    candidate: Candidate | None
    target: Target
    rec: TxRecord | None = None
    provisional: bool = False
    abandoned: bool = False  # we moved on; a late answer is cleaned up, never relayed
    cancel_sent: bool = False
    answered: bool = False  # got a final response


@dataclass(slots=True)
class CallLog:
    """What the one-line call log (SPEC §6) reports."""

    verdict: str = ""
    attest: str = ""
    next_hops: list[str] = field(default_factory=list)
    clearip_ms: float | None = None


class Call:
    __slots__ = (
        "answered",
        "branch",
        "cancel_pending",
        "cancelled",
        "candidates",
        "clearip",
        "clearip_conn",
        "clearip_sent",
        "copy_headers",
        "core",
        "deadline",
        "emergency",
        "failovers",
        "flow",
        "index",
        "invite",
        "last_final",
        "log",
        "resent",
        "server",
        "source",
        "stage",
        "started",
        "timer",
        "waiting_for_link",
    )

    def __init__(self, core: ProxyCore, server: TxRecord, invite: Request, flow: Flow, now: float):
        self.core = core
        self.server = server  # the caller's INVITE server transaction
        self.invite = invite  # as received, minus the Route entries naming us
        self.flow = flow
        self.source = flow.remote[0]  # the caller's IP: per-source verdicts and calls_active
        self.started = now
        self.stage = "new"
        self.deadline: float | None = None
        self.timer = None  # its place in the core's timer heap (ProxyCore.arm)
        self.answered = False
        self.cancelled = False
        self.cancel_pending = False  # CANCEL owed to ClearIP once it sends a provisional
        self.clearip: TxRecord | None = None
        self.clearip_conn: int | None = None
        self.clearip_sent = 0.0
        self.resent = False
        self.waiting_for_link = False
        self.candidates: list[Candidate] = []
        self.copy_headers: list[tuple[str, bytes | str]] = []
        self.index = 0
        self.branch: Branch | None = None
        self.last_final: Response | None = None
        self.failovers = 0
        self.emergency = False
        self.log = CallLog()

    def _set_deadline(self, when: float | None) -> None:
        """The call's own timer (ClearIP, provider, ring, CANCEL guard): set and (re)armed."""
        self.deadline = when
        self.core.arm(self)

    # -- start ---------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        core = self.core
        core.counters.count("calls_active", self.source)
        core.respond(self.server, build_response(self.invite, 100, "Trying"), now)
        core.strip_own_routes(self.invite)
        routing = core.config.routing
        if is_emergency(self.invite, routing.emergency_numbers):
            self._emergency(now)
            return
        self._ask_clearip(now)

    def _emergency(self, now: float) -> None:
        core = self.core
        self.emergency = True
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
        self.stage = "providers"
        self.candidates = [Candidate(uri, target_for_uri(uri), [], 1.0)]
        self._next_branch(now, retarget=False)

    # -- ClearIP stage ---------------------------------------------------------------------------

    def _ask_clearip(self, now: float) -> None:
        core = self.core
        cfg = core.config.clearip
        self.stage = "clearip"
        target = core.upstream_target()
        if target is None:
            # the link is down: answer at once so the switch route-advances (SPEC §3)
            core.counters.count("clearip_unavailable", self.source)
            self.log.verdict = "unavailable"
            self._final(cfg.on_failure, "ClearIP unavailable", now)
            return
        if self.deadline is None:
            self._set_deadline(now + cfg.timeout)
        self._send_to_clearip(target, now)

    def _send_to_clearip(self, target: Target, now: float) -> None:
        core = self.core
        req = self.invite.copy()
        assert isinstance(req, Request)
        req.decrement_max_forwards()
        core.add_via(req, target)
        self.clearip_sent = now
        self.clearip_conn = target.conn
        self.clearip = core.start_client_tx(
            req, target, self, "clearip", now, timeout=core.config.clearip.timeout
        )

    def _clearip_lost(self, now: float) -> None:
        """The connection carrying our INVITE failed before ClearIP answered (SPEC §3)."""
        core = self.core
        if self.clearip is not None:
            core.abandon(self.clearip)
            self.clearip = None
        if self.resent:
            core.counters.count("clearip_unavailable", self.source)
            self.log.verdict = "unavailable"
            self._final(core.config.clearip.on_failure, "ClearIP unavailable", now)
            return
        self.resent = True
        target = core.upstream_target()
        if target is None:
            self.waiting_for_link = True  # resent when the link is back, within the timeout
            return
        self._send_to_clearip(target, now)

    def on_link_down(self, conn: int, now: float) -> None:
        if self.stage == "clearip" and not self.answered and self.clearip_conn == conn:
            self._clearip_lost(now)

    def on_link_up(self, now: float) -> None:
        if self.waiting_for_link and self.stage == "clearip" and not self.answered:
            self.waiting_for_link = False
            target = self.core.upstream_target()
            if target is not None:
                self._send_to_clearip(target, now)

    def _on_clearip_response(self, rec: TxRecord, resp: Response, now: float) -> None:
        core = self.core
        if rec is not self.clearip or self.stage != "clearip":
            return  # a late answer after we gave up: the transaction has ACKed it
        if resp.status < 200:
            if self.cancel_pending:
                self.cancel_pending = False
                core.cancel_branch(rec, now)
            return
        rtt = (now - self.clearip_sent) * 1000.0
        self.log.clearip_ms = rtt
        core.counters.clearip_rtt(rtt)
        if self.cancelled:
            return  # the caller already has its 487
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
        if status in (403, 404):
            self._registration_hint(status, now)
        if 200 <= status < 300:
            # ClearIP is a redirect server: a 2xx would open a dialog with it. Not a route.
            warn_log.warning("ClearIP answered %d to an INVITE; treating it as a failure", status)
            self._final(core.config.clearip.on_failure, "ClearIP unavailable", now)
            return
        self._relay(resp, now)

    def _registration_hint(self, status: int, now: float) -> None:
        core = self.core
        if core.notices.allow("not_registered", now):
            core.env.notice("not_registered", {"status": status})

    # -- provider stage --------------------------------------------------------------------------

    def _start_providers(self, resp: Response, contacts: list, now: float) -> None:
        core = self.core
        routing = core.config.routing
        self.candidates = order_contacts(contacts, routing.max_contacts)
        self.copy_headers = list(headers_from_redirect(resp, routing.copy_headers))
        self._note_attestation(resp)
        self.stage = "providers"
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
        if self.cancelled:
            self._final(487, "Request Terminated", now)
            return
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
        self.log.next_hops.append(f"{target.host}:{target.port}")
        self._set_deadline(now + core.config.routing.provider_timeout)
        branch.rec = core.start_client_tx(req, target, self, "branch", now, data=branch)

    def _on_branch_response(self, rec: TxRecord, resp: Response, now: float) -> None:
        core = self.core
        branch: Branch = rec.data
        status = resp.status
        if branch.abandoned or branch is not self.branch:
            self._late_answer(rec, branch, resp, now)
            return
        if status < 200:
            if not branch.provisional:
                branch.provisional = True
                if self.cancelled or self.answered:
                    self._cancel(branch, now)
                    return
                self._set_deadline(now + core.config.routing.ring_timeout)
            if status > 100:
                self._relay(resp, now, final=False)
            return
        if status < 300:
            if not branch.answered:
                branch.answered = True
                self._set_deadline(None)
                core.dialog_started(self, resp, rec)
            self._relay(resp, now)  # retransmitted 2xx are relayed too (RFC 6026)
            return
        branch.answered = True
        self._set_deadline(None)
        self.last_final = resp
        if not self.cancelled and core.config.routing.is_failover(status):
            self._next_branch(now)
        else:
            self._relay(resp, now)

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

    def _abandon_branch(self, now: float) -> None:
        """Give up on the current branch: CANCEL it after a provisional, else just leave it."""
        branch = self.branch
        if branch is None:
            return
        branch.abandoned = True
        if branch.provisional:
            self._cancel(branch, now)

    # -- caller's CANCEL and timers ------------------------------------------------------------

    def cancel(self, now: float) -> None:
        """CANCEL from the caller (already answered 200): stop the call wherever it is."""
        if self.answered or self.cancelled:
            return
        self.cancelled = True
        if self.stage == "clearip":
            rec = self.clearip
            if rec is not None and rec.tx.got_provisional:
                self.core.cancel_branch(rec, now)
            else:
                self.cancel_pending = True
            self._final(487, "Request Terminated", now)
        elif self.stage == "providers" and self.branch is not None:
            branch = self.branch
            if branch.provisional:
                # the provider answers the INVITE with 487, which is relayed; a guard timer
                # answers it ourselves if that never comes
                self._cancel(branch, now)
                self._set_deadline(now + 64 * 0.5)
            else:
                branch.abandoned = True
                self._final(487, "Request Terminated", now)

    def on_timer(self, now: float) -> None:
        self._set_deadline(None)
        if self.answered:
            return
        core = self.core
        if self.stage == "clearip":
            core.counters.count("clearip_timeout", self.source)
            self.log.verdict = "timeout"
            rec = self.clearip
            if rec is not None and rec.tx.got_provisional:
                core.cancel_branch(rec, now)
            self.clearip = None
            self._final(core.config.clearip.on_failure, "ClearIP unavailable", now)
        elif self.stage == "providers":
            if self.cancelled:
                self._final(487, "Request Terminated", now)
                return
            self._abandon_branch(now)  # no answer, or ringing too long: next Contact
            self._next_branch(now)

    # -- transaction callbacks -------------------------------------------------------------------

    def on_tx_message(self, rec: TxRecord, msg: Request | Response, now: float) -> None:
        if not isinstance(msg, Response):
            return
        if rec.role == "clearip":
            self._on_clearip_response(rec, msg, now)
        elif rec.role == "branch":
            self._on_branch_response(rec, msg, now)

    def on_tx_timeout(self, rec: TxRecord, now: float) -> None:
        if rec.role == "clearip":
            if rec is self.clearip and self.stage == "clearip" and not self.answered:
                self.on_timer(now)
        elif rec.role == "branch":
            branch: Branch = rec.data
            if branch is self.branch and not branch.abandoned and not self.answered:
                branch.abandoned = True
                self._next_branch(now)

    def on_tx_error(self, rec: TxRecord, now: float) -> None:
        if rec.role == "clearip":
            if rec is self.clearip and self.stage == "clearip" and not self.answered:
                self._clearip_lost(now)
        elif rec.role == "branch":
            branch: Branch = rec.data
            if branch is self.branch and not branch.abandoned and not self.answered:
                branch.abandoned = True
                self._next_branch(now)

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
        if self.answered:
            return
        self.answered = True
        self.stage = "done"
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
