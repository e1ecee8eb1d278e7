"""The kernel fast path as the supervisor runs it: nftables and the eBPF classifier together.

`fastpath.enabled` decides (SPEC §5): "off" never loads; "on" must load or the proxy does not
start; "auto" loads when it can and otherwise runs on the relay's own check, saying why in
`status` and the log. Both enforcers always hold the same trusted list and pinholes: a change
goes to nftables first and to the eBPF maps second, and the first is undone if the second
fails.

This runs in the supervisor (plain asyncio): pyroute2 0.9 does not run under uvloop.
"""

from __future__ import annotations

import logging
from typing import Any

from clearip.config import Config
from clearip.fastpath.bpf import (
    BpfFastPath,
    FastPathError,
    FastPathUnavailable,
    remove_all,
    up_interfaces,
)
from clearip.fastpath.nft import NftError, NftFastPath

log = logging.getLogger("clearip.fastpath")

# A pinhole outlives its call only if the relay never says it is done (a crash): then the
# kernel forgets it after this long. Longer than any call the relay keeps (12 h).
PINHOLE_TTL = 13 * 3600.0


class FastPathRequired(Exception):
    """fastpath.enabled = true, and it could not be loaded: the proxy must not start."""


def sip_ports(config: Config) -> tuple[list[int], list[int]]:
    """(UDP ports, TCP ports) the fast path guards: the configured listeners' (SPEC §5).

    Not the relay workers' own ports (listen port + 10 + i): only answers to the requests a
    worker sent come there, they must not wait for a pinhole, and the relay itself refuses a
    request there from an untrusted source.
    """
    listen = config.listen
    udp = sorted({p.port for p in listen.udp})
    tcp = sorted({p.port for p in listen.tcp} | {p.port for p in listen.tls})
    return udp, tcp


class FastPathManager:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = config.fastpath.name
        self.mode = config.fastpath.enabled
        self.udp_ports, self.tcp_ports = sip_ports(config)
        self.enabled = False
        self.reason = ""
        self.interfaces: list[str] = []
        self.nft: NftFastPath | None = None
        self.bpf: BpfFastPath | None = None
        self.holes: dict[str, int] = {}  # pinholed IP -> how many calls/dialogs hold it

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
        log.info(
            "fast path on: %s (udp %s, tcp %s)",
            ", ".join(self.interfaces),
            self.udp_ports,
            self.tcp_ports,
        )

    def _load(self, trusted: list[str]) -> None:
        cfg = self.config.fastpath
        interfaces = list(cfg.interfaces) or up_interfaces()
        if not interfaces:
            raise FastPathUnavailable(
                "no network interface is up besides loopback",
                "bring one up or set fastpath.interfaces",
            )
        # a previous run that died leaves filters and pins: never two of ours at once
        remove_all(self.name, interfaces)
        nft = NftFastPath(self.name, self.udp_ports, self.tcp_ports)
        self.nft = nft
        nft.load(trusted)
        ports = [("udp", p) for p in self.udp_ports] + [("tcp", p) for p in self.tcp_ports]
        bpf = BpfFastPath(self.name, ports, cfg.max_sources)
        self.bpf = bpf
        bpf.load()
        bpf.set_trusted(trusted)  # before attach: from then on an empty list drops everyone
        bpf.attach(interfaces)
        bpf.pin()
        self.interfaces = list(bpf.attached)

    def stop(self) -> None:
        """Detach, unpin, remove the table: nothing of ours is left in the kernel."""
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
        assert self.nft is not None and self.bpf is not None
        before = [str(n) for n in self.nft.trusted]
        self.nft.set_trusted(cidrs)
        try:
            self.bpf.set_trusted(cidrs)
        except Exception:
            self.nft.set_trusted(before)
            raise

    def pinhole(self, ip: str, is_open: bool) -> None:
        """A relay worker opened or closed its use of next hop `ip` (SPEC §5 pinholes)."""
        n = self.holes.get(ip, 0) + (1 if is_open else -1)
        if n > 0:
            first = ip not in self.holes
            self.holes[ip] = n
            if first and self.enabled:
                self._apply_pinhole(ip, True)
        else:
            if self.holes.pop(ip, None) is not None and self.enabled:
                self._apply_pinhole(ip, False)

    def _apply_pinhole(self, ip: str, is_open: bool) -> None:
        assert self.nft is not None and self.bpf is not None
        try:
            if is_open:
                self.nft.add_pinhole(ip, PINHOLE_TTL)
                self.bpf.add_pinhole(ip, PINHOLE_TTL)
            else:
                self.nft.remove_pinhole(ip)
                self.bpf.remove_pinhole(ip)
        except (NftError, FastPathError, OSError, ValueError) as e:
            log.error(
                "fast path: pinhole %s for %s failed: %s", "open" if is_open else "close", ip, e
            )

    # -- reading ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "reason": self.reason,
            "interfaces": list(self.interfaces),
            "mode": self.mode,
            "udp_ports": self.udp_ports,
            "tcp_ports": self.tcp_ports,
            "pinholes": len(self.holes),
        }

    def sources(self) -> dict[str, dict[str, int]]:
        """Kernel counters per source address (eBPF), empty when the fast path is off."""
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


def _explain(e: BaseException) -> str:
    if isinstance(e, FastPathUnavailable):
        return f"{e.reason}; fix: {e.fix}"
    if isinstance(e, NftError):
        return f"nftables: {e.message}"
    return str(e) or type(e).__name__
