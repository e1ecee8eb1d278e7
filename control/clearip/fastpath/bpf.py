"""The eBPF half of the kernel fast path (SPEC §5): build, attach, pin, and keep the maps filled.

``BpfFastPath`` (the supervisor) compiles ``bpf/clearip_tc.bpf.c`` with bcc, attaches it to tc
ingress (clsact, direct-action) with pyroute2, pins its maps under ``/sys/fs/bpf/<name>/`` and
keeps them filled (SIP ports, trusted prefixes, pinholes). This module is the loader only; the
layers under it, each importing only the ones above it in this list:

- ``errors``: ``FastPathError`` and ``FastPathUnavailable``;
- ``layout``: the constants and map layouts mirrored from ``bpf/clearip.h``;
- ``syscall``: bpf(2) through ctypes (``bpf_syscall``, one map by fd);
- ``maps``: ``PinnedMaps`` and ``open_pinned(name)``, the maps by name without bcc (clearipctl,
  relay workers);
- ``tc``: netlink and tc filters (pyroute2), ``attach_candidates`` and ``remove_all``.

Lifetimes: a tc filter holds the program, the program holds its maps, and a pin holds a map.
So the filter keeps filtering after the loading process exits (a crash fails closed for
untrusted sources rather than open), and ``tc.remove_all()`` is how leftovers are cleaned.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from clearip.fastpath.errors import FastPathError, FastPathUnavailable
from clearip.fastpath.layout import BPF_DIR, HEADER_NAME, MAP_NAMES, SOURCE_NAME, header_mismatches
from clearip.fastpath.maps import (
    DEFAULT_PIN_ROOT,
    IPAddress,
    IPNetwork,
    PinnedMaps,
    ensure_bpffs,
    normalize_ports,
    pin_dir,
    unpin_dir,
)
from clearip.fastpath.syscall import Map, obj_pin
from clearip.fastpath.tc import (
    CLSACT_EGRESS,
    CLSACT_INGRESS,
    ETH_P_ALL,
    TC_PRIO,
    NetlinkEvents,
    del_filter,
    filter_prefix,
    ifindex_of,
    ingress_filters,
    netlink,
    our_prio_filters,
    tc_handle,
)

if TYPE_CHECKING:
    from pyroute2 import IPRoute

__all__ = ["BpfFastPath"]

log = logging.getLogger(__name__)

PROGRAM_NAME = "clearip_ingress"
MODULES_DIR = Path("/lib/modules")  # bcc builds against <MODULES_DIR>/<release>/build
KHEADERS = Path("/sys/kernel/kheaders.tar.xz")  # CONFIG_IKHEADERS: bcc's fallback

# reconcile() looks at every attachment at least this often even without a notification.
FULL_CHECK_S = 60.0

# ---------------------------------------------------------------------------------------------
# Building and loading


class _StderrCapture:
    """Catches what bcc and clang print on fd 2 (compile errors, the verifier log) so a
    failure can say why. Process-wide for its duration: used once, at start."""

    def __init__(self) -> None:
        self.text = ""
        self._saved = -1
        self._tmp: Any = None

    def __enter__(self) -> _StderrCapture:
        sys.stderr.flush()
        self._tmp = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._tmp.fileno(), 2)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._tmp.seek(0)
        self.text = self._tmp.read().decode(errors="replace")
        self._tmp.close()

    def tail(self, lines: int = 12) -> str:
        kept = [ln for ln in self.text.strip().splitlines() if ln.strip()][-lines:]
        return "\n".join(kept)


def _effective_caps() -> int:
    """This process's effective capability set (CapEff of /proc/self/status), 0 if unknown."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _check_privileges() -> None:
    if os.geteuid() == 0:
        return
    caps = _effective_caps()
    cap_net_admin, cap_sys_admin, cap_bpf = 12, 21, 39
    if caps >> cap_net_admin & 1 and (caps >> cap_bpf & 1 or caps >> cap_sys_admin & 1):
        return
    raise FastPathUnavailable(
        "loading eBPF and adding tc filters needs root (CAP_BPF and CAP_NET_ADMIN)",
        "run the proxy as root (the systemd unit does), or set fastpath.enabled = false",
    )


def _import_bcc() -> Any:
    try:
        import bcc  # type: ignore[import-not-found]
    except ImportError as exc:
        raise FastPathUnavailable(
            f"bcc is not importable ({exc})",
            "apt-get install python3-bpfcc (make run / tools/bootstrap.sh does), and use a "
            "venv made with --system-site-packages",
        ) from None
    return bcc


def kernel_build_dir() -> Path:
    return MODULES_DIR / os.uname().release / "build"


def _check_kernel_headers() -> None:
    build = kernel_build_dir()
    if (build / "include").is_dir() or KHEADERS.exists():
        return
    raise FastPathUnavailable(
        f"kernel headers not found at {build}",
        "run make run / tools/bootstrap.sh (installs linux-headers-amd64 and links it there)",
    )


@dataclass(slots=True)
class _Attachment:
    ifname: str
    ifindex: int
    made_clsact: bool  # we added the clsact qdisc, so detach() may remove it when left empty


class BpfFastPath:
    """The eBPF classifier of one proxy: compile, attach, pin, fill, read.

    Typical life (the supervisor)::

        remove_all("clearip")          # what a crashed run left, on every interface
        fp = BpfFastPath("clearip", [("udp", 5060), ("tcp", 5060), ("tls", 5061)], 65536)
        fp.load()                      # FastPathUnavailable(reason, fix) when it cannot
        fp.set_trusted(["192.0.2.10/32"])
        fp.set_local_addresses(["192.0.2.1", "192.0.2.255", "2001:db8::1"])
        fp.attach(attach_candidates()) # replaces a filter a previous run left
        fp.pin()                       # /sys/fs/bpf/clearip/<map> for clearipctl
        ...
        fp.reconcile(attach_candidates())  # a watchdog, every few seconds: lines to log
        ...
        fp.detach(); fp.unpin(); fp.close()

    Fill the trusted list before attach(): from the moment the filter is in, an empty list
    drops every source. Until set_local_addresses() every destination is judged.
    """

    def __init__(
        self,
        name: str,
        sip_ports: Sequence[tuple[str, int]],
        max_sources: int,
        pin_root: str | os.PathLike[str] = DEFAULT_PIN_ROOT,
        *,
        src_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.pin_dir = pin_dir(name, pin_root)  # also validates the name
        self.pin_root = Path(pin_root)
        self.sip_ports = normalize_ports(sip_ports)
        if isinstance(max_sources, bool) or not isinstance(max_sources, int):
            raise ValueError(f"max_sources must be an integer, got {max_sources!r}")
        if not 1 <= max_sources <= 1 << 24:
            raise ValueError(f"max_sources must be 1..16777216, got {max_sources}")
        self.max_sources = max_sources
        self.src_dir = Path(src_dir) if src_dir is not None else BPF_DIR
        self.tc_handle = tc_handle(name)
        # TCA_BPF_NAME of our filter: "clearip:<name>:" finds this fast path's filters (for
        # remove_all), the random tail this instance's (detach() leaves a successor's alone).
        self.filter_name = f"{filter_prefix(name)}{secrets.token_hex(4)}"
        self._bpf: Any = None
        self._prog_fd = -1
        self._maps: PinnedMaps | None = None
        self._attached: dict[str, _Attachment] = {}
        self._pinned: dict[str, int] = {}  # map name -> id we pinned
        # reconcile(): link/tc notifications, problems told once, interfaces left to a successor
        self._events: NetlinkEvents | None = None
        self._problems: dict[str, str] = {}
        self._yielded: set[str] = set()
        self._checked_at = -math.inf

    def __repr__(self) -> str:
        state = "loaded" if self._bpf is not None else "not loaded"
        return f"BpfFastPath({self.name!r}, {state}, attached={self.attached})"

    def __enter__(self) -> BpfFastPath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- build and load
    def load(self) -> None:
        """Compiles and loads the classifier and its (empty) maps, then fills sip_ports.

        FastPathUnavailable (reason, fix) when this machine cannot: no privileges, no bcc, no
        kernel headers, or a compiler/verifier error (its last lines in the reason).
        """
        if self._bpf is not None:
            raise FastPathError("already loaded")
        _check_privileges()
        bcc = _import_bcc()
        _check_kernel_headers()
        src = self.src_dir / SOURCE_NAME
        header = self.src_dir / HEADER_NAME
        if not src.is_file() or not header.is_file():
            raise FastPathUnavailable(
                f"eBPF source not found: {src} and {header}",
                "run from the repository checkout (make run installs it editable)",
            )
        mismatch = header_mismatches(header)
        if mismatch:
            raise FastPathUnavailable(
                f"{header} and fastpath/layout.py disagree: " + "; ".join(mismatch),
                "change both sides of the shared header together",
            )
        cflags = [f"-I{self.src_dir}", f"-DMAX_SOURCES={self.max_sources}"]
        failure: str | None = None
        with _StderrCapture() as cap:
            try:
                b = bcc.BPF(src_file=os.fsencode(src), cflags=cflags)
                try:
                    fn = b.load_func(PROGRAM_NAME.encode(), bcc.BPF.SCHED_CLS)
                except BaseException:
                    b.cleanup()
                    raise
            except Exception as exc:  # bcc raises plain Exception for both stages
                failure = str(exc)
        if failure is not None:
            detail = cap.tail()
            raise FastPathUnavailable(
                f"bcc could not build {src.name}: {failure}" + (f"\n{detail}" if detail else ""),
                f"check the kernel headers at {kernel_build_dir()} match a kernel bcc can "
                "build for (make run / tools/bootstrap.sh), or set fastpath.enabled = false",
            )
        if cap.text.strip():
            log.info("bcc: %s", cap.tail())
        try:
            # Our own fd per map (dup): PinnedMaps owns them, independent of bcc's objects.
            maps = {n: Map(os.dup(b[n.encode()].map_fd), n) for n in MAP_NAMES}
            self._maps = PinnedMaps(maps, "<loaded>")
            self._maps.set_sip_ports(self.sip_ports)
        except BaseException:
            if self._maps is not None:
                self._maps.close()
                self._maps = None
            b.cleanup()
            raise
        self._bpf = b
        self._prog_fd = int(fn.fd)
        log.info(
            "eBPF fast path %s loaded: ports %s, max_sources %d",
            self.name,
            ", ".join(f"{p}/{n}" for p, n in self.sip_ports),
            self.max_sources,
        )

    @property
    def loaded(self) -> bool:
        return self._bpf is not None

    @property
    def prog_fd(self) -> int:
        """fd of the loaded classifier (for BPF_PROG_TEST_RUN in tests)."""
        self._require_maps()
        return self._prog_fd

    @property
    def maps(self) -> PinnedMaps:
        return self._require_maps()

    def _require_maps(self) -> PinnedMaps:
        if self._maps is None:
            raise FastPathError("fast path not loaded: call load() first")
        return self._maps

    def close(self) -> None:
        """Releases this process's handles (fds, bcc). Filters and pins keep what they hold:
        call detach() and unpin() first to take the fast path down."""
        if self._events is not None:
            self._events.close()
            self._events = None
        if self._maps is not None:
            self._maps.close()
            self._maps = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
            self._prog_fd = -1

    def stop(self) -> None:
        """detach(), unpin() and close(): the fast path off, as on proxy stop (SPEC §5)."""
        try:
            self.detach()
        finally:
            try:
                self.unpin()
            finally:
                self.close()

    # ---------------------------------------------------------------- tc attach
    @property
    def attached(self) -> list[str]:
        return list(self._attached)

    def attach(self, interfaces: Sequence[str]) -> None:
        """Puts the classifier on tc ingress of each interface (in this network namespace).

        Adds a clsact qdisc where there is none, removes stale filters of this fast path name
        at our priority (an older version's handle), then REPLACES the filter at (TC_PRIO,
        tc_handle): a restart swaps the program atomically, no window without a filter and
        no duplicate. All-or-nothing: on failure the interfaces done by this call are undone.
        """
        self._require_maps()
        self._watch()
        todo = [i for i in dict.fromkeys(interfaces) if i not in self._attached]

        def fn(ipr: IPRoute) -> list[_Attachment]:
            done: list[_Attachment] = []
            try:
                for ifname in todo:
                    ifindex = ifindex_of(ipr, ifname)
                    if ifindex is None:
                        raise FastPathError(f"attach to {ifname}: no such interface")
                    done.append(self._attach_one(ipr, ifname, ifindex))
            except BaseException:
                for att in reversed(done):
                    with contextlib.suppress(Exception):
                        self._detach_one(ipr, att)
                raise
            return done

        for att in netlink(fn):
            self._attached[att.ifname] = att
            log.info("eBPF fast path %s attached to %s ingress", self.name, att.ifname)

    def _attach_one(self, ipr: IPRoute, ifname: str, ifindex: int) -> _Attachment:
        """clsact (when missing), stale filters of ours out, our filter in (replace)."""
        from pyroute2.netlink.exceptions import NetlinkError

        made = False
        try:
            ipr.tc("add", "clsact", ifindex)
            made = True
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise FastPathError(f"{ifname}: cannot add clsact: {exc}") from None
        att = _Attachment(ifname, ifindex, made)
        try:
            prefix = filter_prefix(self.name)
            for flt in our_prio_filters(ipr, ifindex):
                if flt.handle == self.tc_handle and not flt.name.startswith(prefix):
                    raise FastPathError(
                        f"{ifname}: tc ingress prio {TC_PRIO} handle {self.tc_handle:#x} holds "
                        f"a filter we did not make ({flt.name or 'unnamed'}); remove it or "
                        "rename fastpath.name"
                    )
                if flt.handle != self.tc_handle and flt.name.startswith(prefix):
                    del_filter(ipr, ifindex, flt.handle)
            try:
                ipr.tc(
                    "replace-filter",
                    "bpf",
                    ifindex,
                    handle=self.tc_handle,
                    parent=CLSACT_INGRESS,
                    prio=TC_PRIO,
                    protocol=ETH_P_ALL,
                    fd=self._prog_fd,
                    name=self.filter_name,
                    direct_action=True,
                )
            except NetlinkError as exc:
                raise FastPathError(
                    f"{ifname}: cannot add the tc filter (prio {TC_PRIO}): {exc}"
                ) from None
        except BaseException:
            if made:
                with contextlib.suppress(Exception):
                    self._detach_one(ipr, att)
            raise
        return att

    def reconcile(self, interfaces: Sequence[str]) -> list[str]:
        """Makes the attachments match `interfaces` (e.g. attach_candidates(), polled by a
        watchdog): attaches to new ones, detaches from ones no longer listed, forgets ones
        that disappeared, and puts our filter back where it has gone (`tc filter del`, `tc
        qdisc del dev X clsact`). One line per change, for the log; a problem (no such
        interface, a filter someone else holds at our handle) is told once, not every call.

        Cheap when nothing changed: a socket subscribed to this namespace's link and tc
        notifications (opened by attach() or the first call) says whether anything did, so a
        call with the same interfaces and no notification makes no netlink request at all;
        otherwise one link dump and one filter dump per attached interface. Every
        FULL_CHECK_S it looks anyway, in case a notification was lost.
        """
        self._require_maps()
        want = list(dict.fromkeys(interfaces))
        fresh = self._watch()
        assert self._events is not None
        changed = self._events.changed() or fresh
        now = time.monotonic()
        settled = set(want) == set(self._attached) | set(self._problems)
        if not changed and settled and now - self._checked_at < FULL_CHECK_S:
            return []
        lines = netlink(lambda ipr: self._reconcile(ipr, want))
        self._checked_at = now
        for line in lines:
            log.warning("eBPF fast path %s: %s", self.name, line)
        return lines

    def _reconcile(self, ipr: IPRoute, want: list[str]) -> list[str]:
        lines: list[str] = []
        links = {lk.get_attr("IFLA_IFNAME"): int(lk["index"]) for lk in ipr.get_links()}
        for name, att in list(self._attached.items()):
            ifindex = links.get(name)
            if ifindex != att.ifindex:
                del self._attached[name]
                lines.append(
                    f"{name}: gone, forgotten"
                    if ifindex is None
                    else f"{name}: a new interface of that name, attaching afresh"
                )
            elif name not in want:
                del self._attached[name]
                try:
                    self._detach_one(ipr, att)
                    lines.append(f"{name}: no longer to be filtered, detached")
                except Exception as exc:
                    lines.append(f"{name}: no longer to be filtered, detach failed: {exc}")
        for name in list(self._problems):
            if name not in want:
                del self._problems[name]
                self._yielded.discard(name)
        for name in want:
            if name in self._yielded:
                continue  # a successor of ours filters it now: never fight it
            ifindex = links.get(name)
            if ifindex is None:
                self._problem(lines, name, "no such interface, not filtered")
                continue
            try:
                self._reconcile_one(ipr, name, ifindex, lines)
            except Exception as exc:  # one interface's trouble must not stop the others
                self._problem(lines, name, str(exc).removeprefix(f"{name}: "))
        return lines

    def _reconcile_one(self, ipr: IPRoute, name: str, ifindex: int, lines: list[str]) -> None:
        att = self._attached.get(name)
        if att is not None:
            held = [f for f in our_prio_filters(ipr, ifindex) if f.handle == self.tc_handle]
            if any(f.name == self.filter_name for f in held):
                return  # in place: the common case
            if held and held[0].name.startswith(filter_prefix(self.name)):
                del self._attached[name]
                self._yielded.add(name)
                self._problem(lines, name, f"our filter was replaced by {held[0].name}")
                return
        new = self._attach_one(ipr, name, ifindex)
        self._problems.pop(name, None)
        if att is None:
            lines.append(f"{name}: attached")
        else:
            gone = "tc filter and the clsact qdisc" if new.made_clsact else "tc filter"
            lines.append(f"{name}: our {gone} had been removed, put back")
            new.made_clsact = new.made_clsact or att.made_clsact
        self._attached[name] = new

    def _problem(self, lines: list[str], name: str, what: str) -> None:
        if self._problems.get(name) != what:
            self._problems[name] = what
            lines.append(f"{name}: {what}")

    def _watch(self) -> bool:
        """Opens the link/tc notification socket if it is not open yet; True if it just was
        (nothing seen yet, so the caller must look)."""
        if self._events is not None:
            return False
        self._events = NetlinkEvents()
        return True

    def _detach_one(self, ipr: IPRoute, att: _Attachment) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        ifindex = ifindex_of(ipr, att.ifname)
        if ifindex is None:
            return  # the interface went away, and our filter with it
        for flt in our_prio_filters(ipr, ifindex):
            if flt.handle == self.tc_handle and flt.name == self.filter_name:
                del_filter(ipr, ifindex, flt.handle)
            elif flt.handle == self.tc_handle:
                log.info("%s: the tc filter is now %s's, left in place", att.ifname, flt.name)
        if att.made_clsact and not (
            ingress_filters(ipr, ifindex) or ingress_filters(ipr, ifindex, CLSACT_EGRESS)
        ):
            with contextlib.suppress(NetlinkError):
                ipr.tc("del", "clsact", ifindex)

    def detach(self) -> None:
        """Removes this instance's filters (and a clsact qdisc it added, if left empty). A
        filter another instance has since replaced is left alone."""
        if not self._attached:
            return
        todo = list(self._attached.values())

        def fn(ipr: IPRoute) -> None:
            errors = []
            for att in todo:
                try:
                    self._detach_one(ipr, att)
                except Exception as exc:
                    errors.append(f"{att.ifname}: {exc}")
            if errors:
                raise FastPathError("detach: " + "; ".join(errors))

        try:
            netlink(fn)
        finally:
            self._attached.clear()
            self._problems.clear()
            self._yielded.clear()
        log.info("eBPF fast path %s detached", self.name)

    # ---------------------------------------------------------------- pins
    def pin(self) -> None:
        """Pins every map as <pin_root>/<name>/<map> (mounting bpffs when needed), replacing
        the pins of a previous run so clearipctl always opens the live maps."""
        maps = self._require_maps()
        ensure_bpffs(self.pin_root)
        self.pin_dir.mkdir(mode=0o700, exist_ok=True)
        for name, map_id in maps.map_ids().items():
            path = self.pin_dir / name
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            obj_pin(maps.fd(name), path)
            self._pinned[name] = map_id

    def unpin(self) -> None:
        """Removes the pins this instance made (not ones a successor has since replaced)."""
        if self._pinned:
            unpin_dir(self.pin_dir, self._pinned)
            self._pinned.clear()

    # ---------------------------------------------------------------- maps
    def set_sip_ports(self, sip_ports: Sequence[tuple[str, int]]) -> None:
        """New listener ports (reload): the judged set becomes exactly these."""
        ports = normalize_ports(sip_ports)
        self._require_maps().set_sip_ports(ports)
        self.sip_ports = ports

    def set_trusted(self, cidrs: Iterable[str | IPNetwork]) -> None:
        self._require_maps().set_trusted(cidrs)

    def trusted(self) -> list[str]:
        return self._require_maps().trusted()

    def set_local_addresses(self, addrs: Iterable[str | IPAddress]) -> None:
        """The proxy's own addresses: the only destinations judged (PinnedMaps docs)."""
        self._require_maps().set_local_addresses(addrs)

    def local_addresses(self) -> list[str]:
        return self._require_maps().local_addresses()

    def add_pinhole(self, ip: str | IPAddress, ttl_s: float) -> None:
        self._require_maps().add_pinhole(ip, ttl_s)

    def remove_pinhole(self, ip: str | IPAddress) -> bool:
        return self._require_maps().remove_pinhole(ip)

    def sweep_pinholes(self) -> int:
        return self._require_maps().sweep_pinholes()

    def read_sources(self) -> dict[str, dict[str, int]]:
        return self._require_maps().read_sources()

    def sweep_admitted(self, keep: Callable[[str], bool]) -> int:
        return self._require_maps().sweep_admitted(keep)

    def read_totals(self) -> dict[str, dict[str, int]]:
        return self._require_maps().read_totals()
