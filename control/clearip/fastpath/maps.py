"""The fast path's maps by name: what clearipctl, the relay workers and the loader read and edit.

``open_pinned(name)`` opens the maps a running proxy pinned under ``/sys/fs/bpf/<name>/`` by
path with bpf(2): no bcc, no compiler, no kernel headers. It reads the counters and changes
the trusted list live. ``open_pinned(name, only=PINHOLE_MAPS)`` opens just the pinhole maps:
what a relay worker needs to open a pinhole itself before it first sends to a new next hop.

``PinnedMaps`` is the API over those maps (the loader wraps the maps bcc just loaded in it
too), so the supervisor and clearipctl read and write them with the same code. Separate from
the loader so that a reader of the maps (``clearipctl capture``, a relay worker) imports
neither pyroute2 nor the loader; the bpffs helpers (mount, pin directory, unpin) live here
because opening the pins needs them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import logging
import math
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from clearip.fastpath.errors import FastPathError, FastPathUnavailable
from clearip.fastpath.layout import (
    ADDR6,
    LAYOUT,
    LOCAL_MARKER,
    LPM_V4,
    LPM_V6,
    MAP_NAMES,
    MAX_SIP_PORTS,
    ONE,
    PINHOLE_MAPS,
    PORT_KEY,
    PROTO_TCP,
    PROTO_UDP,
    SRC_STATS_FIELDS,
    TOTALS_NAMES,
    U32,
    U64,
    VERDICT_STATS,
)
from clearip.fastpath.syscall import BPF_NOEXIST, Map, libc, map_info, obj_get
from clearip.trust import TrustError, normal_address, normal_network

__all__ = ["DEFAULT_PIN_ROOT", "PinnedMaps", "ensure_bpffs", "open_pinned"]

log = logging.getLogger(__name__)

DEFAULT_PIN_ROOT = "/sys/fs/bpf"

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")  # the config's fastpath.name rule

# ---------------------------------------------------------------------------------------------
# Addresses and settings


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_ip(text: str | IPAddress) -> IPAddress:
    """An address in the normal form every enforcer uses (clearip.trust.normal_address):
    ::ffff:a.b.c.d becomes a.b.c.d, which is what the kernel sees on the wire."""
    addr = normal_address(str(text))
    if addr is None:
        raise ValueError(f"{text!r} is not an IP address (without a %zone)")
    return addr


def _parse_cidr(text: str | IPNetwork) -> IPNetwork:
    """A CIDR or a bare address (/32, /128) in the normal form shared with nftables and the
    relay (clearip.trust.normal_network): ::ffff:a.b.c.d/96+n becomes a.b.c.d/n, host bits
    set are refused (as `clearipctl allow` refuses them), and so is what cannot be matched
    alike by all three: /0, ::ffff:0:0/96 (every IPv4 address), a network holding the mapped
    range and IPv6 ones."""
    try:
        return normal_network(text)
    except (TrustError, ValueError) as exc:
        raise ValueError(f"trusted source {text!r}: {exc}") from None


_V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"
_V4_COMPAT_PREFIX = bytes(12)


def _addr_key(addr: IPAddress) -> bytes:
    """The 16-byte map key of an address: IPv4 as ::ffff:a.b.c.d (struct clearip_addr6)."""
    if isinstance(addr, ipaddress.IPv4Address):
        return _V4_MAPPED_PREFIX + addr.packed
    return addr.packed


def _addr_text(key16: bytes) -> str:
    """A map key as the plain address text status shows (IPv4 without ::ffff:)."""
    head = key16[:12]
    if head == _V4_MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, key16[12:])  # fast path: most keys are IPv4
    if head == _V4_COMPAT_PREFIX:  # glibc writes ::a.b.c.d where ipaddress writes ::102:304
        return str(ipaddress.IPv6Address(key16))
    return socket.inet_ntop(socket.AF_INET6, key16)  # RFC 5952, as ipaddress


def normalize_ports(ports: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """[("udp"|"tcp"|"tls", port)] -> sorted unique [("udp"|"tcp", port)] (TLS is TCP here)."""
    out: set[tuple[str, int]] = set()
    for proto, port in ports:
        p = proto.lower()
        if p not in ("udp", "tcp", "tls"):
            raise ValueError(f"SIP port {proto}/{port}: protocol must be udp, tcp or tls")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"SIP port {proto}/{port}: port must be 1-65535")
        out.add(("udp" if p == "udp" else "tcp", port))
    if len(out) > MAX_SIP_PORTS:
        raise ValueError(f"{len(out)} SIP ports: the map holds {MAX_SIP_PORTS}")
    return sorted(out)


def _now_ns() -> int:
    # bpf_ktime_get_ns() is CLOCK_MONOTONIC: pinhole expiries are in that clock, system-wide,
    # so clearipctl computes the same remaining time as the supervisor that set them.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


# ---------------------------------------------------------------------------------------------
# The maps


class PinnedMaps:
    """The fast path's maps, open by fd: reads counters, edits the trusted list and pinholes.

    Made by ``open_pinned()`` (from the pins, in any process) or by ``BpfFastPath.load()``
    (from the program bcc just loaded). Owns its fds: ``close()`` or use as a context manager.
    `only` (map names) opens a subset, e.g. PINHOLE_MAPS in a relay worker; a method needing
    a map left out raises FastPathError.
    """

    def __init__(
        self, maps: Mapping[str, Map], where: str, only: Iterable[str] | None = None
    ) -> None:
        self.where = where  # the pin directory, or "<loaded>"
        self._maps = dict(maps)
        wanted = MAP_NAMES if only is None else tuple(only)
        problems = []
        for name in wanted:
            if name not in LAYOUT:
                problems.append(f"{name}: not a map of the fast path")
                continue
            mtype, ksize, vsize = LAYOUT[name]
            m = self._maps.get(name)
            if m is None:
                problems.append(f"{name}: missing")
            elif (m.type, m.key_size, m.value_size) != (mtype, ksize, vsize):
                problems.append(
                    f"{name}: type {m.type} key {m.key_size} B value {m.value_size} B, "
                    f"expected type {mtype} key {ksize} B value {vsize} B"
                )
        if problems:
            self.close()
            raise FastPathUnavailable(
                f"the maps at {where} are not this version's: " + "; ".join(problems),
                f"stop the proxy that made them and remove {where}; a start pins new ones",
            )

    def __enter__(self) -> PinnedMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for m in self._maps.values():
            m.close()

    def _map(self, name: str) -> Map:
        m = self._maps.get(name)
        if m is None:
            raise FastPathError(f"map {name} was not opened (open_pinned(..., only=...))")
        return m

    def map_ids(self) -> dict[str, int]:
        """Kernel id of each map (what `bpftool map show` lists)."""
        return {name: m.id for name, m in self._maps.items()}

    def fd(self, name: str) -> int:
        return self._map(name).fd

    @property
    def max_sources(self) -> int:
        """Size of src_stats (fastpath.max_sources when it was built)."""
        return self._map("src_stats").max_entries

    # ---------------------------------------------------------------- SIP ports
    def set_sip_ports(self, ports: Iterable[tuple[str, int]]) -> None:
        """Makes the judged (protocol, port) pairs exactly `ports` ("udp"/"tcp"/"tls", port)."""
        want = {
            PORT_KEY.pack(PROTO_UDP if p == "udp" else PROTO_TCP, 0, port)
            for p, port in normalize_ports(ports)
        }
        self._replace_set(self._map("sip_ports"), want)

    def sip_ports(self) -> list[tuple[str, int]]:
        out = []
        for key in self._map("sip_ports").all_keys():
            proto, _pad, port = PORT_KEY.unpack(key)
            out.append(("udp" if proto == PROTO_UDP else "tcp", port))
        return sorted(out)

    # ---------------------------------------------------------------- local addresses
    def set_local_addresses(self, addrs: Iterable[str | IPAddress]) -> None:
        """Makes local_addrs hold exactly `addrs`: the proxy's own addresses, the only
        destinations judged (SPEC §5: traffic the host forwards or bridges is left alone).

        Give every address of the proxy's network namespace, and each interface's IPv4
        broadcast address (a datagram to 10.0.0.255 reaches a socket bound to 0.0.0.0);
        multicast and limited broadcast are always judged. An empty list means nothing is
        known to be local: every destination is judged (fail closed), as before the first
        call. New addresses go in before old ones come out, so an address local before and
        after is judged throughout; the `::` marker (clearip.h) is set once addresses are in,
        and cleared before the last ones go.
        """
        want: set[bytes] = set()
        for text in addrs:
            addr = _parse_ip(text)
            if addr.is_unspecified:
                raise ValueError(f"local address {text!r}: the unspecified address is no one's")
            want.add(_addr_key(addr))
        m = self._map("local_addrs")
        cap = m.max_entries - 1  # one slot is the marker's
        if len(want) > cap:
            raise ValueError(f"{len(want)} local addresses: the map holds {cap}")
        have = set(m.all_keys())
        had_marker = LOCAL_MARKER in have
        have.discard(LOCAL_MARKER)
        if want:
            for key in want - have:
                m.update(key, ONE)
            if not had_marker:
                m.update(LOCAL_MARKER, ONE)
        elif had_marker:
            m.delete(LOCAL_MARKER)
        for key in have - want:
            m.delete(key)

    def local_addresses(self) -> list[str]:
        """The proxy's own addresses the classifier knows, as text (IPv4 first); empty when
        it judges every destination."""
        keys = [k for k in self._map("local_addrs").all_keys() if k != LOCAL_MARKER]
        addrs = [_parse_ip(_addr_text(k)) for k in keys]
        return [str(a) for a in sorted(addrs, key=lambda a: (a.version, a))]

    # ---------------------------------------------------------------- trusted prefixes
    def set_trusted(self, cidrs: Iterable[str | IPNetwork]) -> None:
        """Makes trusted_v4/trusted_v6 hold exactly `cidrs`.

        New prefixes go in before old ones come out, so a source trusted before and after is
        never dropped in between. Everything is parsed and size-checked before any change; if
        the kernel refuses an update half-way, the previous content is put back and the error
        raised (the caller's all-enforcers rollback then starts from a clean map).
        """
        want4: set[bytes] = set()
        want6: set[bytes] = set()
        for text in cidrs:
            net = _parse_cidr(text)
            if isinstance(net, ipaddress.IPv4Network):
                want4.add(LPM_V4.pack(net.prefixlen, net.network_address.packed))
            else:
                want6.add(LPM_V6.pack(net.prefixlen, net.network_address.packed))
        v4, v6 = self._map("trusted_v4"), self._map("trusted_v6")
        for family, want, m in ((4, want4, v4), (6, want6, v6)):
            if len(want) > m.max_entries:
                raise ValueError(
                    f"{len(want)} IPv{family} trusted prefixes: the map holds {m.max_entries}"
                )
        before4 = set(v4.all_keys())
        before6 = set(v6.all_keys())
        try:
            self._replace_set(v4, want4, before4)
            self._replace_set(v6, want6, before6)
        except OSError:
            for m, before in ((v4, before4), (v6, before6)):
                with contextlib.suppress(OSError):
                    self._replace_set(m, before)
            raise

    def trusted(self) -> list[str]:
        """The trusted prefixes in the kernel, as CIDR text (IPv4 first)."""
        nets: list[IPNetwork] = []
        for key in self._map("trusted_v4").all_keys():
            plen, addr = LPM_V4.unpack(key)
            nets.append(ipaddress.IPv4Network((addr, plen)))
        for key in self._map("trusted_v6").all_keys():
            plen, addr = LPM_V6.unpack(key)
            nets.append(ipaddress.IPv6Network((addr, plen)))
        return [str(n) for n in sorted(nets, key=lambda n: (n.version, n))]

    @staticmethod
    def _replace_set(m: Map, want: set[bytes], have: set[bytes] | None = None) -> None:
        current = set(m.all_keys()) if have is None else have
        for key in want - current:
            m.update(key, ONE)
        for key in current - want:
            m.delete(key)

    # ---------------------------------------------------------------- pinholes
    def _pinhole_slot(self, ip: str | IPAddress) -> tuple[Map, bytes, IPAddress]:
        addr = _parse_ip(ip)
        if isinstance(addr, ipaddress.IPv4Address):
            return self._map("pinholes_v4"), addr.packed, addr
        return self._map("pinholes_v6"), addr.packed, addr

    def add_pinhole(self, ip: str | IPAddress, ttl_s: float) -> None:
        """Admits `ip` to the SIP ports for `ttl_s` seconds from now.

        An open pinhole is only ever extended, never shortened: two transactions towards the
        same next hop each keep it open as long as they need (the relay counts references and
        calls remove_pinhole() after the last). One syscall for a new pinhole (an atomic
        create, so a relay worker opening it cannot undo the supervisor's longer one), two
        when it is open long enough already, three to extend it. Two writers extending the
        same pinhole in the same microseconds may leave the shorter extension (there is no
        compare-and-swap on map values) until the next re-arm. When the map is full, expired
        entries are swept and the update tried once more.
        """
        if not (isinstance(ttl_s, int | float) and math.isfinite(ttl_s) and ttl_s > 0):
            raise ValueError(f"pinhole ttl must be a positive number of seconds, got {ttl_s!r}")
        m, key, addr = self._pinhole_slot(ip)
        expiry = _now_ns() + int(ttl_s * 1e9)
        for attempt in range(2):
            try:
                try:
                    m.update(key, U64.pack(expiry), BPF_NOEXIST)
                    return
                except OSError as exc:
                    if exc.errno != errno.EEXIST:
                        raise
                old = m.lookup(key)
                if old is not None and U64.unpack(old)[0] >= expiry:
                    return
                m.update(key, U64.pack(expiry))
                return
            except OSError as exc:
                if exc.errno != errno.E2BIG:
                    raise
                if attempt:
                    raise OSError(
                        exc.errno,
                        f"pinhole for {addr}: {m.max_entries} pinholes open already (map full)",
                    ) from None
                self.sweep_pinholes()

    def remove_pinhole(self, ip: str | IPAddress) -> bool:
        """Closes the pinhole of `ip`; False when there was none."""
        m, key, _addr = self._pinhole_slot(ip)
        return m.delete(key)

    def pinholes(self) -> dict[str, float]:
        """Open pinholes: address -> seconds left (expired ones not listed)."""
        now = _now_ns()
        out: dict[str, float] = {}
        for name, size in (("pinholes_v4", 4), ("pinholes_v6", 16)):
            for key, value in self._map(name).items():
                left = U64.unpack(value)[0] - now
                if left > 0:
                    addr = ipaddress.IPv4Address(key) if size == 4 else ipaddress.IPv6Address(key)
                    out[str(addr)] = left / 1e9
        return out

    def sweep_pinholes(self) -> int:
        """Deletes expired pinholes (the program only compares, never deletes); how many."""
        now = _now_ns()
        removed = 0
        for name in PINHOLE_MAPS:
            m = self._map(name)
            for key, value in m.items():
                if U64.unpack(value)[0] <= now and m.delete(key):
                    removed += 1
        return removed

    # ---------------------------------------------------------------- counters
    def read_sources(self) -> dict[str, dict[str, int]]:
        """Per-source counters: address -> {SRC_STATS_FIELDS: n}, admitted sources'
        (admitted_stats, summed over CPUs) and others' (src_stats) together, added up for an
        address in both (a stranger pinholed later, a source denied since).

        Holds at most max_sources addresses that are not admitted: the least recently seen
        were evicted. One batch lookup per map, unpacked a buffer at a time (~0.1 s for 64K
        sources).
        """
        out = self._read_stats("src_stats")
        for addr, row in self._read_stats("admitted_stats").items():
            have = out.get(addr)
            if have is None:
                out[addr] = row
            else:
                for field, n in row.items():
                    have[field] += n
        return out

    def _read_stats(self, name: str) -> dict[str, dict[str, int]]:
        m = self._map(name)
        n, keys, values = m.dump()
        f0, f1, f2, f3, f4, f5 = SRC_STATS_FIELDS
        text = _addr_text
        # One Python step per row is left: building its dict (the API's shape).
        return {
            text(key): {f0: a, f1: b, f2: c, f3: d, f4: e, f5: f}
            for (key,), (a, b, c, d, e, f) in zip(
                ADDR6.iter_unpack(keys), m.rows_u64(values, n), strict=True
            )
        }

    def sweep_admitted(self, keep: Callable[[str], bool]) -> int:
        """Deletes the admitted sources' rows whose address `keep` rejects (call it after a
        deny, with the new trusted list and the open pinholes, so that a spoofer inside a
        large trusted prefix cannot fill admitted_stats for ever). How many were deleted."""
        m = self._map("admitted_stats")
        _n, keys, _values = m.dump()
        removed = 0
        for (key,) in ADDR6.iter_unpack(keys):
            if not keep(_addr_text(key)) and m.delete(key):
                removed += 1
        return removed

    def read_totals(self) -> dict[str, dict[str, int]]:
        """Totals per verdict summed over CPUs: {"passed"|"dropped_untrusted"|"dropped_nonsip":
        {"pkts": n, "bytes": n}}. Never evicted, unlike the per-source counters."""
        m = self._map("verdicts")
        out = {}
        for index, name in enumerate(TOTALS_NAMES):
            value = m.lookup(U32.pack(index))
            pkts, nbytes = m.percpu_sum(value, VERDICT_STATS) if value else (0, 0)
            out[name] = {"pkts": pkts, "bytes": nbytes}
        return out


def pin_dir(name: str, pin_root: str | os.PathLike[str] = DEFAULT_PIN_ROOT) -> Path:
    """Where the maps of fast path `name` are pinned: <pin_root>/<name>/."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"fast path name {name!r}: a letter then up to 31 of A-Z a-z 0-9 _ -")
    return Path(pin_root) / name


def open_pinned(
    name: str,
    pin_root: str | os.PathLike[str] = DEFAULT_PIN_ROOT,
    *,
    only: Iterable[str] | None = None,
) -> PinnedMaps:
    """Opens the maps a running proxy pinned under <pin_root>/<name>/, without bcc.

    `only`: just these maps (each still layout-checked), e.g. ``only=PINHOLE_MAPS`` in a relay
    worker that opens pinholes itself: two opens, no other map's fd held. FastPathUnavailable
    (with the fix) when they are not there: the proxy is stopped, runs with the fast path off,
    or this process may not open them.
    """
    directory = pin_dir(name, pin_root)
    names = MAP_NAMES if only is None else tuple(dict.fromkeys(only))
    unknown = [n for n in names if n not in LAYOUT]
    if unknown:
        raise ValueError(f"not maps of the fast path: {', '.join(unknown)} (see MAP_NAMES)")
    if fstype(Path(pin_root)) != "bpf":
        raise FastPathUnavailable(
            f"no bpf filesystem at {pin_root}, so no fast path maps are pinned there",
            "start the proxy with the fast path on (it mounts bpffs and pins its maps); "
            "`clearipctl status` says why it is off",
        )
    maps: dict[str, Map] = {}
    missing = []
    try:
        for map_name in names:
            path = directory / map_name
            try:
                fd = obj_get(path)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    missing.append(map_name)
                    continue
                if exc.errno in (errno.EACCES, errno.EPERM):
                    raise FastPathUnavailable(
                        f"not allowed to open {path}: {exc.strerror}",
                        "run clearipctl as root (the maps are root's)",
                    ) from None
                raise FastPathUnavailable(
                    f"cannot open {path}: {exc.strerror}", "check that the proxy is running"
                ) from None
            maps[map_name] = Map(fd, str(path))
    except BaseException:
        for m in maps.values():
            m.close()
        raise
    if missing:
        for m in maps.values():
            m.close()
        what = "no fast path maps" if len(missing) == len(names) else "maps missing"
        raise FastPathUnavailable(
            f"{what} at {directory} ({', '.join(missing)}): the proxy is not running, or runs "
            "with the fast path off",
            "start the proxy (clearipctl run / systemctl start clearip) with fastpath.enabled "
            "= true or auto; `clearipctl status` says why the fast path is off",
        )
    return PinnedMaps(maps, str(directory), names)


# ---------------------------------------------------------------------------------------------
# bpffs


def _unescape_mount(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def fstype(path: Path) -> str | None:
    """Type of the filesystem `path` lives on, from the longest covering /proc/self/mounts
    entry (a path that does not exist yet counts as on its nearest existing parent's)."""
    target = Path(os.path.realpath(path))
    best, best_type = -1, None
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 3:
                continue
            mnt = Path(_unescape_mount(fields[1]))
            if (mnt == target or mnt in target.parents) and len(mnt.parts) >= best:
                best, best_type = len(mnt.parts), fields[2]  # later mounts shadow earlier
    return best_type


def ensure_bpffs(pin_root: str | os.PathLike[str] = DEFAULT_PIN_ROOT) -> None:
    """Mounts a bpf filesystem at `pin_root` unless it already lives on one."""
    root = Path(pin_root)
    if fstype(root) == "bpf":
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FastPathUnavailable(
            f"cannot make {root} to mount bpffs on: {exc.strerror}",
            f"mount -t bpf bpf {root} (or list it in /etc/fstab)",
        ) from None
    if libc.mount(b"bpf", os.fsencode(root), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise FastPathUnavailable(
            f"cannot mount bpffs at {root}: {os.strerror(err)}",
            f"mount -t bpf bpf {root} as root (or list it in /etc/fstab)",
        )
    log.info("mounted bpffs at %s", root)


def unpin_dir(directory: Path, only_ids: Mapping[str, int] | None = None) -> list[str]:
    """Removes our map pins from `directory` (those of `only_ids` when given: a pin replaced by
    a newer instance is left alone), then the directory if nothing else is in it."""
    removed = []
    for name in MAP_NAMES:
        path = directory / name
        if only_ids is not None:
            try:
                fd = obj_get(path)
            except OSError:
                continue
            try:
                if name not in only_ids or int(map_info(fd).id) != only_ids[name]:
                    continue
            finally:
                os.close(fd)
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(str(path))
    with contextlib.suppress(FileNotFoundError, OSError):
        directory.rmdir()  # only when empty: anything else in it is not ours
    return removed
