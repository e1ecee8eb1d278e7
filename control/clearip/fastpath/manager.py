"""The kernel fast path as the supervisor runs it: nftables and the eBPF classifier together.

`fastpath.enabled` decides (SPEC §5): "off" never loads; "on" must load or the proxy does not
start; "auto" loads when it can and otherwise runs on the relay's own check, saying why in
`status` and the log. Both enforcers always hold the same trusted list and pinholes: a change
goes to nftables first and to the eBPF maps second, and the first is undone if the second
fails.

Pinholes are owned here: the workers report the first and last use of each next hop, a
pinhole closes `PINHOLE_LINGER` after its last use (retransmitted answers still get in), and
every held pinhole is re-armed each quarter of `fastpath.pinhole_ttl`, so it only runs out
when the proxy has died. A worker writes the eBPF pinhole itself before its first send; its
first answer on nftables' side is let in by conntrack (see nft/README.md).

A watchdog (`probe()` off the event loop, then `after_probe()` on it) puts back what someone
else removed -- the nft table (`nft flush ruleset`), a tc filter, a filter missing on an
interface that came up -- within a second or two, counts it and says so once.

This runs in the supervisor (plain asyncio): pyroute2 0.9 does not run under uvloop.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from clearip.config import Config
from clearip.fastpath.bpf import BpfFastPath
from clearip.fastpath.errors import FastPathError, FastPathUnavailable
from clearip.fastpath.layout import PINHOLE_MAPS
from clearip.fastpath.maps import open_pinned
from clearip.fastpath.nft import NftError, NftFastPath
from clearip.fastpath.tc import attach_candidates, netlink, remove_all
from clearip.relay.events import PRIVATE_PORT_OFFSET
from clearip.trust import TrustList

log = logging.getLogger("clearip.fastpath")

# A pinhole outlives its last use by this long: answers retransmitted after the relay is done
# (a 200 to a BYE, 64·T1 of them at most) still reach the relay rather than the drop counter.
PINHOLE_LINGER = 32.0
WATCHDOG_INTERVAL = 1.0


class FastPathRequired(Exception):
    """fastpath.enabled = true, and it could not be loaded: the proxy must not start."""


def sip_ports(config: Config) -> tuple[list[int], list[int]]:
    """(UDP listener ports, TCP ports) the fast path guards: the configured listeners'."""
    listen = config.listen
    udp = sorted({p.port for p in listen.udp})
    tcp = sorted({p.port for p in listen.tcp} | {p.port for p in listen.tls})
    return udp, tcp


def reply_ports(config: Config, workers: int) -> list[int]:
    """The relay workers' own UDP ports (listen port + 10 + i), where next hops answer: every
    port the relay reads SIP on is guarded (SPEC §5)."""
    udp, _ = sip_ports(config)
    ports = {p + PRIVATE_PORT_OFFSET + i for p in udp for i in range(workers)}
    return sorted(ports - set(udp))


def host_addresses() -> set[str]:
    """Every unicast and broadcast address of this network namespace: the destinations the
    classifier judges (a broadcast to 5060 reaches a socket bound to 0.0.0.0 too)."""

    def fn(ipr: Any) -> set[str]:
        out = {"255.255.255.255"}
        for msg in ipr.get_addr():
            for attr in ("IFA_LOCAL", "IFA_ADDRESS", "IFA_BROADCAST"):
                value = msg.get_attr(attr)
                if value:
                    out.add(value.split("%")[0])
        return out

    found: set[str] = netlink(fn)
    return found


@dataclass
class Probe:
    """What the watchdog found, off the event loop."""

    nft_restored: bool = False
    changes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class FastPathManager:
    def __init__(self, config: Config, workers: int = 1) -> None:
        self.config = config
        self.name = config.fastpath.name
        self.mode = config.fastpath.enabled
        self.udp_ports, self.tcp_ports = sip_ports(config)
        self.reply_ports = reply_ports(config, workers)
        self.pinhole_ttl = config.fastpath.pinhole_ttl
        self.enabled = False
        self.reason = ""
        self.interfaces: list[str] = []
        self.nft: NftFastPath | None = None
        self.bpf: BpfFastPath | None = None
        self.trusted: list[str] = []
        self.holes: dict[str, set[int]] = {}  # pinholed IP -> the workers whose calls use it
        self.closing: dict[str, float] = {}  # released IP -> when to close it (monotonic)
        self._rearmed = 0.0
        self._local: set[str] = set()
        self.restored = 0  # times the watchdog put something back
        self.last_restored: float | None = None  # wall-clock time of the last one
        self.last_restored_what = ""
        # the watchdog's probe runs on a thread: it and every change made on the loop take
        # turns, so a table it reloads never misses a change made meanwhile
        self._lock = threading.Lock()

    def start(self, trusted: list[str]) -> None:
        """Load both enforcers with `trusted`; raises FastPathRequired only in mode "on"."""
        if self.mode == "off":
            self.reason = "disabled in the config (fastpath.enabled = false)"
            return
        try:
            self._load(trusted)
        except (FastPathUnavailable, FastPathError, NftError, OSError, ValueError) as e:
            self._unload()
            reason = _explain(e)
            if self.mode == "on":
                raise FastPathRequired(f"the fast path could not be loaded: {reason}") from None
            self.reason = reason
            log.warning("fast path off, the relay's own check only: %s", reason)
            return
        self.enabled = True
        self.reason = ""
        self._rearmed = time.monotonic()
        log.info(
            "fast path on: %s (udp %s, tcp %s, worker ports %s)",
            ", ".join(self.interfaces) or "no interface yet",
            self.udp_ports,
            self.tcp_ports,
            self.reply_ports,
        )

    def _wanted_interfaces(self) -> list[str]:
        return list(self.config.fastpath.interfaces) or attach_candidates()

    def _load(self, trusted: list[str]) -> None:
        cfg = self.config.fastpath
        interfaces = self._wanted_interfaces()
        # A previous run that died (supervisor killed) left its table, filters and pins in
        # force: untrusted sources stay dropped until this run replaces each atomically (table
        # in one batch, filter by replace, pins by re-pinning). Its open pinholes are carried
        # over for what is left of their lifetime.
        adopted = _pinholes_left(self.name)
        nft = NftFastPath(self.name, self.udp_ports, self.tcp_ports, self.reply_ports)
        self.nft = nft
        nft.load(trusted)
        _carry_over(adopted, nft.add_pinhole)
        ports = [("udp", p) for p in (*self.udp_ports, *self.reply_ports)]
        ports += [("tcp", p) for p in self.tcp_ports]
        bpf = BpfFastPath(self.name, ports, cfg.max_sources)
        self.bpf = bpf
        bpf.load()
        bpf.set_trusted(trusted)  # before attach: from then on an empty list drops everyone
        _carry_over(adopted, bpf.add_pinhole)
        self._local = host_addresses()
        bpf.set_local_addresses(self._local)
        bpf.attach(interfaces)
        bpf.pin()
        # what the predecessor left elsewhere (an interface down now, one not wanted any more)
        for line in remove_all(self.name, None, keep_filter=bpf.filter_name, filters_only=True):
            log.info("fast path: removed a filter of a previous run: %s", line)
        self.interfaces = list(bpf.attached)
        self.trusted = list(trusted)
        if adopted:
            log.info("fast path: %d pinholes of the previous run carried over", len(adopted))

    def stop(self) -> None:
        """Detach, unpin, remove the table: nothing of ours is left in the kernel."""
        with self._lock:  # after a watchdog probe still running on its thread
            if self.enabled or self.nft is not None or self.bpf is not None:
                self._unload()
                log.info("fast path removed")
            self.enabled = False

    def _unload(self) -> None:
        if self.bpf is not None:
            try:
                self.bpf.stop()
            except (FastPathError, OSError) as e:
                log.error("fast path: detaching the classifier: %s", e)
            self.bpf = None
        if self.nft is not None:
            try:
                self.nft.unload()
            except NftError as e:
                log.error("fast path: removing table inet %s: %s", self.name, e.message)
            self.nft = None
        self.interfaces = []

    # -- changes, applied to both enforcers or neither -------------------------------------------

    def set_trusted(self, cidrs: list[str]) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._set_trusted(cidrs)

    def _set_trusted(self, cidrs: list[str]) -> None:
        assert self.nft is not None and self.bpf is not None
        before = list(self.trusted)
        self.nft.set_trusted(cidrs)
        try:
            self.bpf.set_trusted(cidrs)
        except Exception:
            self.nft.set_trusted(before)
            raise
        self.trusted = list(cidrs)
        # a source no longer trusted keeps no row among the admitted sources' counters
        admitted = TrustList(cidrs)
        try:
            self.bpf.sweep_admitted(lambda ip: ip in admitted or ip in self.holes)
        except (FastPathError, OSError) as e:
            log.warning("fast path: sweeping the admitted sources' counters: %s", e)

    def pinhole(self, worker: int, ip: str, is_open: bool) -> None:
        """Worker `worker`'s first call to next hop `ip` began, or its last one ended (SPEC §5
        pinholes). The one count of who holds a pinhole; said twice, nothing changes."""
        users = self.holes.get(ip)
        if is_open:
            if users is not None:
                users.add(worker)
                return
            self.holes[ip] = {worker}
            if self.closing.pop(ip, None) is None and self.enabled:
                self._apply_pinholes([ip], True)
        elif users is not None and worker in users:
            users.discard(worker)
            if not users:
                del self.holes[ip]
                self.closing[ip] = time.monotonic() + PINHOLE_LINGER

    def release(self, worker: int) -> None:
        """A worker is gone, and its calls with it: its pinholes linger, then close."""
        for ip in [ip for ip, users in self.holes.items() if worker in users]:
            self.pinhole(worker, ip, False)

    def tick(self, now: float | None = None) -> None:
        """Once a second, on the loop: close pinholes past their linger, re-arm held ones."""
        now = time.monotonic() if now is None else now
        due = [ip for ip, when in self.closing.items() if when <= now]
        for ip in due:
            del self.closing[ip]
        if due and self.enabled:
            self._apply_pinholes(due, False)
        if self.enabled and now - self._rearmed >= self.pinhole_ttl / 4:
            self._rearmed = now
            self.rearm()

    def rearm(self) -> None:
        """Every pinhole in use (or lingering) gets a full `pinhole_ttl` again, both sides."""
        held = [*self.holes, *self.closing]
        if held:
            self._apply_pinholes(held, True)
        if self.bpf is not None:
            try:
                self.bpf.sweep_pinholes()  # the classifier only compares expiries
            except (FastPathError, OSError) as e:
                log.warning("fast path: sweeping expired pinholes: %s", e)

    def _apply_pinholes(self, ips: list[str], is_open: bool) -> None:
        with self._lock:
            self._apply_pinholes_locked(ips, is_open)

    def _apply_pinholes_locked(self, ips: list[str], is_open: bool) -> None:
        assert self.nft is not None and self.bpf is not None
        try:
            if is_open:
                self.nft.add_pinholes(ips, self.pinhole_ttl)
                for ip in ips:
                    self.bpf.add_pinhole(ip, self.pinhole_ttl)
            else:
                for ip in ips:
                    self.nft.remove_pinhole(ip)
                    self.bpf.remove_pinhole(ip)
        except (NftError, FastPathError, OSError, ValueError) as e:
            log.error(
                "fast path: pinhole %s for %s failed: %s",
                "open" if is_open else "close",
                ", ".join(ips[:5]) + (" ..." if len(ips) > 5 else ""),
                e,
            )

    # -- the watchdog ----------------------------------------------------------------------------

    def probe(self) -> Probe:
        """Off the event loop: put back a missing nft table or tc filter, follow interfaces
        and addresses as they come and go. What changed, for `after_probe()`."""
        found = Probe()
        if not self.enabled or self.nft is None or self.bpf is None:
            return found
        with self._lock:
            self._probe(found)
        return found

    def _probe(self, found: Probe) -> None:
        assert self.nft is not None and self.bpf is not None
        try:
            if not self.nft.exists():
                self.nft.load(self.trusted)
                found.nft_restored = True
                found.changes.append(f"nft table inet {self.name} was gone: put back")
        except NftError as e:
            found.errors.append(f"nftables: {e.message}")
        try:
            found.changes += self.bpf.reconcile(self._wanted_interfaces())
            local = host_addresses()
            if local != self._local:
                self.bpf.set_local_addresses(local)
                self._local = local
        except (FastPathError, OSError, ValueError) as e:
            found.errors.append(f"eBPF: {e}")

    def after_probe(self, found: Probe) -> None:
        """On the loop: pinholes into a reloaded table, the count, one warning per event."""
        if self.bpf is not None:
            self.interfaces = list(self.bpf.attached)
        if found.nft_restored and (self.holes or self.closing):
            self._apply_pinholes([*self.holes, *self.closing], True)
        # (the classifier's own lines are logged by reconcile(); the table's here)
        restored = [c for c in found.changes if "put back" in c or c.startswith("nft table")]
        for change in found.changes:
            if change.startswith("nft table"):
                log.warning("fast path: %s", change)
        if restored:
            self.restored += 1
            self.last_restored = time.time()
            self.last_restored_what = "; ".join(restored)
        for error in found.errors:
            log.error("fast path watchdog: %s", error)

    # -- reading ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "reason": self.reason,
            "interfaces": list(self.interfaces),
            "mode": self.mode,
            "udp_ports": self.udp_ports,
            "tcp_ports": self.tcp_ports,
            "reply_ports": self.reply_ports,
            "pinholes": len(self.holes) + len(self.closing),
            "restored": self.restored,
            "last_restored": self.last_restored,
            "last_restored_what": self.last_restored_what,
        }

    def sources(self) -> dict[str, dict[str, int]]:
        """Kernel counters per source address (eBPF), empty when the fast path is off. Reads
        a map of up to max_sources rows: call it off the event loop."""
        if not self.enabled or self.bpf is None:
            return {}
        try:
            return self.bpf.read_sources()
        except (FastPathError, OSError) as e:
            log.warning("fast path: reading per-source counters: %s", e)
            return {}

    def totals(self) -> dict[str, Any]:
        if not self.enabled or self.bpf is None or self.nft is None:
            return {}
        try:
            return {"bpf": self.bpf.read_totals(), "nft": self.nft.counters()}
        except (FastPathError, NftError, OSError) as e:
            log.warning("fast path: reading totals: %s", e)
            return {}


def _pinholes_left(name: str) -> dict[str, float]:
    """The open pinholes a previous run of fast path `name` pinned, with their seconds left."""
    try:
        with open_pinned(name, only=PINHOLE_MAPS) as maps:
            return maps.pinholes()
    except (FastPathError, OSError):
        return {}


def _carry_over(pinholes: dict[str, float], add: Any) -> None:
    for ip, left in pinholes.items():
        try:
            add(ip, left)
        except (NftError, FastPathError, OSError, ValueError) as e:
            log.warning("fast path: could not carry pinhole %s over: %s", ip, e)


def _explain(e: BaseException) -> str:
    if isinstance(e, FastPathUnavailable):
        return f"{e.reason}; fix: {e.fix}"
    if isinstance(e, NftError):
        return f"nftables: {e.message}"
    return str(e) or type(e).__name__

