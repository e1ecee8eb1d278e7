"""The eBPF half of the kernel fast path (SPEC §5): build, attach, pin, and the maps.

Two ways in:

- ``BpfFastPath`` (the supervisor): compiles ``bpf/clearip_tc.bpf.c`` with bcc, attaches it to
  tc ingress (clsact, direct-action) with pyroute2, pins its maps under
  ``/sys/fs/bpf/<name>/`` and keeps them filled (SIP ports, trusted prefixes, pinholes).
- ``open_pinned(name)`` (clearipctl, tests): opens those pins by path with bpf(2): no bcc, no
  compiler, no kernel headers. It reads the counters and changes the trusted list live.
  ``open_pinned(name, only=PINHOLE_MAPS)`` opens just the pinhole maps: what a relay worker
  needs to open a pinhole itself before it first sends to a new next hop.

Both go through ``PinnedMaps``, a thin layer over plain bpf(2) calls (ctypes), so the supervisor
and clearipctl read and write the maps with the same code; bcc is only the compiler and loader.

Lifetimes: a tc filter holds the program, the program holds its maps, and a pin holds a map.
So the filter keeps filtering after the loading process exits (a crash fails closed for
untrusted sources rather than open), and ``remove_all()`` is how leftovers are cleaned.

pyroute2 0.9's sync ``IPRoute`` runs an event loop of its own and refuses to start inside a
running one; every netlink call here therefore runs on a short-lived worker thread when this
thread has a running asyncio loop (see ``_netlink``), so the supervisor may call ``attach()`` or
``detach()`` from a coroutine (it blocks the loop for the few milliseconds netlink takes).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import ipaddress
import logging
import math
import operator
import os
import platform
import re
import secrets
import socket
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from clearip.trust import TrustError, normal_address, normal_network

if TYPE_CHECKING:
    from pyroute2 import IPRoute

__all__ = [
    "BPF_DIR",
    "DEFAULT_PIN_ROOT",
    "MAP_NAMES",
    "PINHOLE_MAPS",
    "SRC_STATS_FIELDS",
    "TC_PRIO",
    "TOTALS_NAMES",
    "BpfFastPath",
    "FastPathError",
    "FastPathUnavailable",
    "PinnedMaps",
    "attach_candidates",
    "bpf_syscall",
    "ensure_bpffs",
    "header_constants",
    "open_pinned",
    "remove_all",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# control/clearip/fastpath/bpf.py -> the repository's bpf/ (an editable install runs from it).
BPF_DIR = Path(__file__).resolve().parents[3] / "bpf"
SOURCE_NAME = "clearip_tc.bpf.c"
HEADER_NAME = "clearip.h"
PROGRAM_NAME = "clearip_ingress"
DEFAULT_PIN_ROOT = "/sys/fs/bpf"
MODULES_DIR = Path("/lib/modules")  # bcc builds against <MODULES_DIR>/<release>/build
KHEADERS = Path("/sys/kernel/kheaders.tar.xz")  # CONFIG_IKHEADERS: bcc's fallback

# tc placement. Priority 5060 (easy to spot in `tc filter show`) sits below the 49152 the
# kernel gives filters added without a priority, so ours runs before those. The handle is
# derived from fastpath.name, so two instances with different names can share an interface,
# and a restart with the same name lands on the same (prio, handle) and REPLACES the filter.
TC_PRIO = 5060
_CLSACT_INGRESS = 0xFFFFFFF2  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS): `tc ... ingress`
_CLSACT_EGRESS = 0xFFFFFFF3
_ETH_P_ALL = 0x0003

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")  # the config's fastpath.name rule

# ---------------------------------------------------------------------------------------------
# What bpf/clearip.h says, mirrored. header_constants() parses the header; load() refuses to
# build when the two disagree, and the tests check it too, so this copy cannot drift silently.
# (A mirror rather than parsing at import: clearipctl needs no C source to read the pins.)

VERDICT_PASS = 0
VERDICT_DROP_UNTRUSTED = 1
VERDICT_DROP_NONSIP = 2
NR_VERDICTS = 3
PROTO_TCP = 6
PROTO_UDP = 17
MAX_SIP_PORTS = 64
MAX_TRUSTED = 16384
MAX_PINHOLES = 16384
MAX_LOCAL_ADDRS = 1024
MAX_ADMITTED = 32768
MAX_EXT_HDRS = 8
MAX_VLAN_TAGS = 4
METHOD_MIN = 3
METHOD_MAX = 16
PROBE_LEN = 17
STUN_HEADER_LEN = 20
STUN_BINDING_REQUEST = 0x0001
STUN_MAGIC_COOKIE = 0x2112A442

# Map keys and values, field for field as the structs of clearip.h (native byte order, as the
# kernel stores them; addresses stay in network order, as raw bytes).
_PORT_KEY = struct.Struct("=BBH")  # struct clearip_port_key {proto, pad, port}
_LPM_V4 = struct.Struct("=I4s")  # struct clearip_lpm_v4 {prefixlen, addr}
_LPM_V6 = struct.Struct("=I16s")  # struct clearip_lpm_v6 {prefixlen, addr[16]}
_ADDR6 = struct.Struct("=16s")  # struct clearip_addr6
_SRC_STATS = struct.Struct("=6Q")  # struct clearip_src_stats
_VERDICT_STATS = struct.Struct("=2Q")  # struct clearip_verdict_stats {pkts, bytes}
_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")
_ONE = b"\x01"  # the __u8 value of sip_ports, local_addrs and trusted_v4/v6 entries
_LOCAL_MARKER = bytes(16)  # `::` in local_addrs: "the list is in force" (clearip.h)

SRC_STATS_FIELDS = (  # struct clearip_src_stats, in order
    "passed_pkts",
    "passed_bytes",
    "dropped_untrusted_pkts",
    "dropped_untrusted_bytes",
    "dropped_nonsip_pkts",
    "dropped_nonsip_bytes",
)
TOTALS_NAMES = ("passed", "dropped_untrusted", "dropped_nonsip")  # by CLEARIP_VERDICT_* index

_MIRRORED = {
    "CLEARIP_VERDICT_PASS": VERDICT_PASS,
    "CLEARIP_VERDICT_DROP_UNTRUSTED": VERDICT_DROP_UNTRUSTED,
    "CLEARIP_VERDICT_DROP_NONSIP": VERDICT_DROP_NONSIP,
    "CLEARIP_NR_VERDICTS": NR_VERDICTS,
    "CLEARIP_PROTO_TCP": PROTO_TCP,
    "CLEARIP_PROTO_UDP": PROTO_UDP,
    "CLEARIP_MAX_SIP_PORTS": MAX_SIP_PORTS,
    "CLEARIP_MAX_TRUSTED": MAX_TRUSTED,
    "CLEARIP_MAX_PINHOLES": MAX_PINHOLES,
    "CLEARIP_MAX_LOCAL_ADDRS": MAX_LOCAL_ADDRS,
    "CLEARIP_MAX_ADMITTED": MAX_ADMITTED,
    "CLEARIP_MAX_EXT_HDRS": MAX_EXT_HDRS,
    "CLEARIP_MAX_VLAN_TAGS": MAX_VLAN_TAGS,
    "CLEARIP_METHOD_MIN": METHOD_MIN,
    "CLEARIP_METHOD_MAX": METHOD_MAX,
    "CLEARIP_PROBE_LEN": PROBE_LEN,
    "CLEARIP_STUN_HEADER_LEN": STUN_HEADER_LEN,
    "CLEARIP_STUN_BINDING_REQUEST": STUN_BINDING_REQUEST,
    "CLEARIP_STUN_MAGIC_COOKIE": STUN_MAGIC_COOKIE,
    "CLEARIP_PORT_KEY_SIZE": _PORT_KEY.size,
    "CLEARIP_LPM_V4_SIZE": _LPM_V4.size,
    "CLEARIP_LPM_V6_SIZE": _LPM_V6.size,
    "CLEARIP_ADDR6_SIZE": _ADDR6.size,
    "CLEARIP_SRC_STATS_SIZE": _SRC_STATS.size,
    "CLEARIP_VERDICT_STATS_SIZE": _VERDICT_STATS.size,
}

# bpf(2) map types (include/uapi/linux/bpf.h, enum bpf_map_type).
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_LPM_TRIE = 11
_PERCPU_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH}

# Every map the program has: (type, key size, value size). Checked whenever a map is opened,
# so a pin left by another version is refused with a reason instead of being misread.
_LAYOUT: dict[str, tuple[int, int, int]] = {
    "sip_ports": (BPF_MAP_TYPE_HASH, _PORT_KEY.size, 1),
    "local_addrs": (BPF_MAP_TYPE_HASH, _ADDR6.size, 1),
    "trusted_v4": (BPF_MAP_TYPE_LPM_TRIE, _LPM_V4.size, 1),
    "trusted_v6": (BPF_MAP_TYPE_LPM_TRIE, _LPM_V6.size, 1),
    "pinholes_v4": (BPF_MAP_TYPE_HASH, 4, _U64.size),
    "pinholes_v6": (BPF_MAP_TYPE_HASH, _ADDR6.size, _U64.size),
    "src_stats": (BPF_MAP_TYPE_LRU_HASH, _ADDR6.size, _SRC_STATS.size),
    "admitted_stats": (BPF_MAP_TYPE_PERCPU_HASH, _ADDR6.size, _SRC_STATS.size),
    "verdicts": (BPF_MAP_TYPE_PERCPU_ARRAY, 4, _VERDICT_STATS.size),
}
MAP_NAMES = tuple(_LAYOUT)
PINHOLE_MAPS = ("pinholes_v4", "pinholes_v6")  # open_pinned(name, only=PINHOLE_MAPS)

_DEFINE_RE = re.compile(r"^#define\s+(CLEARIP_[A-Z0-9_]+)\s+(0[xX][0-9a-fA-F]+|\d+)\b", re.M)


def header_constants(path: Path | None = None) -> dict[str, int]:
    """Every ``#define CLEARIP_<NAME> <integer>`` of bpf/clearip.h, by name."""
    text = (path or BPF_DIR / HEADER_NAME).read_text()
    return {m.group(1): int(m.group(2), 0) for m in _DEFINE_RE.finditer(text)}


def header_mismatches(path: Path | None = None) -> list[str]:
    """Where this module's mirror of clearip.h differs from the header (empty when in step)."""
    found = header_constants(path)
    return [
        f"{name}: clearip.h says {found.get(name)}, bpf.py says {value}"
        for name, value in _MIRRORED.items()
        if found.get(name) != value
    ]


# ---------------------------------------------------------------------------------------------
# Errors


class FastPathError(Exception):
    """The fast path was asked for something it cannot do; the message says what and where."""


class FastPathUnavailable(FastPathError):
    """The fast path cannot run here: `reason` says why, `fix` what the operator can do."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"{reason} (fix: {fix})")
        self.reason = reason
        self.fix = fix


# ---------------------------------------------------------------------------------------------
# bpf(2) through ctypes: the few commands needed to use maps by fd or by pinned path.

_BPF_MAP_LOOKUP_ELEM = 1
_BPF_MAP_UPDATE_ELEM = 2
_BPF_MAP_DELETE_ELEM = 3
_BPF_MAP_GET_NEXT_KEY = 4
_BPF_OBJ_PIN = 6
_BPF_OBJ_GET = 7
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_MAP_LOOKUP_BATCH = 24
_BPF_ANY = 0
_BPF_NOEXIST = 1
_ENOTSUPP = 524  # the kernel-internal "not supported" some map types return

# __NR_bpf per architecture (the generic table's 280 for the newer ones).
_NR_BPF = {
    "x86_64": 321,
    "i386": 357,
    "i686": 357,
    "aarch64": 280,
    "riscv64": 280,
    "loongarch64": 280,
    "armv7l": 386,
    "ppc64le": 361,
    "ppc64": 361,
    "s390x": 351,
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]


class _MapElemAttr(ctypes.Structure):  # union bpf_attr, BPF_MAP_*_ELEM / GET_NEXT_KEY
    _fields_ = (
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # or next_key
        ("flags", ctypes.c_uint64),
    )


class _BatchAttr(ctypes.Structure):  # union bpf_attr, BPF_MAP_*_BATCH
    _fields_ = (
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    )


class _ObjAttr(ctypes.Structure):  # union bpf_attr, BPF_OBJ_PIN / BPF_OBJ_GET
    _fields_ = (
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    )


class _InfoAttr(ctypes.Structure):  # union bpf_attr, BPF_OBJ_GET_INFO_BY_FD
    _fields_ = (
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    )


class _MapInfo(ctypes.Structure):  # struct bpf_map_info, the leading fields we use
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    )


_CMD_NAMES = {
    _BPF_MAP_LOOKUP_ELEM: "MAP_LOOKUP_ELEM",
    _BPF_MAP_UPDATE_ELEM: "MAP_UPDATE_ELEM",
    _BPF_MAP_DELETE_ELEM: "MAP_DELETE_ELEM",
    _BPF_MAP_GET_NEXT_KEY: "MAP_GET_NEXT_KEY",
    _BPF_OBJ_PIN: "OBJ_PIN",
    _BPF_OBJ_GET: "OBJ_GET",
    _BPF_OBJ_GET_INFO_BY_FD: "OBJ_GET_INFO_BY_FD",
    _BPF_MAP_LOOKUP_BATCH: "MAP_LOOKUP_BATCH",
}


def bpf_syscall(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(cmd, &attr, sizeof attr); the result, or OSError with the errno and the command."""
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf(2): syscall number unknown on {platform.machine()}")
    ret = _libc.syscall(
        ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr))
    )
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({_CMD_NAMES.get(cmd, cmd)}): {os.strerror(err)}")
    return int(ret)


def _obj_get(path: Path) -> int:
    """A new fd for the object pinned at `path` (OSError: ENOENT when nothing is pinned)."""
    raw = os.fsencode(path)
    buf = ctypes.create_string_buffer(raw)
    attr = _ObjAttr(pathname=ctypes.addressof(buf))
    try:
        return bpf_syscall(_BPF_OBJ_GET, attr)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror}: {path}") from None


def _obj_pin(fd: int, path: Path) -> None:
    buf = ctypes.create_string_buffer(os.fsencode(path))
    try:
        bpf_syscall(_BPF_OBJ_PIN, _ObjAttr(pathname=ctypes.addressof(buf), bpf_fd=fd))
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror}: {path}") from None


def _map_info(fd: int) -> _MapInfo:
    info = _MapInfo()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf_syscall(_BPF_OBJ_GET_INFO_BY_FD, attr)
    return info


def _possible_cpus() -> int:
    """How many per-CPU slots the kernel copies out: the CPUs in .../cpu/possible ("0-3,6")."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def _buf(data: bytes | int) -> ctypes.Array[ctypes.c_char]:
    """A C buffer holding `data`, or `data` zero bytes when given an int."""
    if isinstance(data, int):
        return ctypes.create_string_buffer(max(data, 1))
    return ctypes.create_string_buffer(data, len(data))


class _Map:
    """One bpf map, by fd (owned: closed by close()). Keys and values are raw bytes."""

    def __init__(self, fd: int, label: str) -> None:
        self.fd = fd
        self.label = label  # for messages: the pin path, or the map name
        info = _map_info(fd)
        self.type = int(info.type)
        self.id = int(info.id)
        self.key_size = int(info.key_size)
        self.value_size = int(info.value_size)
        self.max_entries = int(info.max_entries)
        percpu = self.type in _PERCPU_TYPES
        # per-CPU maps copy one 8-byte-aligned slot per possible CPU
        self.ncpus = _possible_cpus() if percpu else 1
        self.stride = (self.value_size + 7) & ~7 if percpu else self.value_size
        self.buf_size = self.stride * self.ncpus
        self._batch_ok = True

    def __repr__(self) -> str:
        return f"_Map({self.label!r}, id={self.id}, type={self.type}, fd={self.fd})"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _elem(self, cmd: int, key: bytes | None, value: Any = None, flags: int = 0) -> int:
        kbuf = _buf(key) if key is not None else None
        attr = _MapElemAttr(
            map_fd=self.fd,
            key=ctypes.addressof(kbuf) if kbuf is not None else 0,
            value=ctypes.addressof(value) if value is not None else 0,
            flags=flags,
        )
        return bpf_syscall(cmd, attr)

    def lookup(self, key: bytes) -> bytes | None:
        out = _buf(self.buf_size)
        try:
            self._elem(_BPF_MAP_LOOKUP_ELEM, key, out)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return out.raw[: self.buf_size]

    def update(self, key: bytes, value: bytes, flags: int = _BPF_ANY) -> None:
        self._elem(_BPF_MAP_UPDATE_ELEM, key, _buf(value), flags)

    def delete(self, key: bytes) -> bool:
        try:
            self._elem(_BPF_MAP_DELETE_ELEM, key)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def all_keys(self) -> list[bytes]:
        """Every key (GET_NEXT_KEY walk). Bounded: on a map whose entries churn (an LRU under
        a flood) a vanished key restarts the walk, so it stops after 2 x max_entries steps."""
        seen: dict[bytes, None] = {}
        key: bytes | None = None
        for _ in range(2 * self.max_entries + 1):
            nxt = _buf(self.key_size)
            try:
                self._elem(_BPF_MAP_GET_NEXT_KEY, key, nxt)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    break
                raise
            key = nxt.raw[: self.key_size]
            if key in seen:
                break
            seen[key] = None
        return list(seen)

    def items(self) -> list[tuple[bytes, bytes]]:
        """Every (key, value), values as the kernel copies them (per-CPU maps: every slot)."""
        n, keys, values = self.dump()
        ks, vs = self.key_size, self.buf_size
        return [(keys[i * ks : (i + 1) * ks], values[i * vs : (i + 1) * vs]) for i in range(n)]

    def dump(self) -> tuple[int, bytes, bytes]:
        """Every entry at once: (n, the n keys end to end, the n values end to end, each
        buf_size bytes). BPF_MAP_LOOKUP_BATCH (one call for the whole map, or a few on a large
        per-CPU one) where the kernel has it for this map type, else a key walk and a lookup
        per key."""
        if self._batch_ok:
            try:
                return self._dump_batch()
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, _ENOTSUPP, errno.ENOSYS):
                    raise
                self._batch_ok = False
        keys, values = [], []
        for key in self.all_keys():
            value = self.lookup(key)
            if value is not None:
                keys.append(key)
                values.append(value)
        return len(keys), b"".join(keys), b"".join(values)

    def _dump_batch(self) -> tuple[int, bytes, bytes]:
        # As many entries per call as fit in _BATCH_BYTES of values: the whole map in one call
        # unless it is per-CPU on many CPUs (64K sources x 16 CPUs x 48 B would be 50 MB).
        chunk = max(1, min(self.max_entries, max(256, _BATCH_BYTES // self.buf_size)))
        token_in, token_out = _buf(max(self.key_size, 8)), _buf(max(self.key_size, 8))
        key_parts: list[bytes] = []
        value_parts: list[bytes] = []
        total = 0
        first = True
        while True:
            keys = _buf(chunk * self.key_size)
            values = _buf(chunk * self.buf_size)
            attr = _BatchAttr(
                in_batch=0 if first else ctypes.addressof(token_in),
                out_batch=ctypes.addressof(token_out),
                keys=ctypes.addressof(keys),
                values=ctypes.addressof(values),
                count=chunk,
                map_fd=self.fd,
            )
            done = False
            try:
                bpf_syscall(_BPF_MAP_LOOKUP_BATCH, attr)
            except OSError as exc:
                if exc.errno == errno.ENOSPC and attr.count == 0 and chunk < self.max_entries:
                    chunk = min(self.max_entries, chunk * 2)  # one hash bucket holds more
                    continue
                if exc.errno != errno.ENOENT:  # ENOENT: the end (attr.count may be > 0)
                    raise
                done = True
            n = attr.count
            key_parts.append(ctypes.string_at(keys, n * self.key_size))
            value_parts.append(ctypes.string_at(values, n * self.buf_size))
            total += n
            if done:
                if len(key_parts) == 1:
                    return total, key_parts[0], value_parts[0]
                return total, b"".join(key_parts), b"".join(value_parts)
            ctypes.memmove(token_in, token_out, ctypes.sizeof(token_out))
            first = False

    def percpu_sum(self, value: bytes, layout: struct.Struct) -> list[int]:
        """The per-CPU slots of `value` added up field by field."""
        rows = [layout.unpack_from(value, cpu * self.stride) for cpu in range(self.ncpus)]
        return [sum(col) for col in zip(*rows, strict=True)]

    def rows_u64(self, values: bytes, n: int) -> Iterable[tuple[int, ...]]:
        """The n values of a dump() whose value is all u64 fields, as tuples of ints; per-CPU
        ones summed over the CPUs."""
        words = self.value_size // 8
        if self.type not in _PERCPU_TYPES:
            return struct.iter_unpack(f"={words}Q", values)
        return _sum_percpu(values, n, self.ncpus, self.stride // 8, words)


_BATCH_BYTES = 8 << 20  # values copied out per BPF_MAP_LOOKUP_BATCH call, at most


def _sum_percpu(
    values: bytes, n: int, ncpus: int, slot_words: int, words: int
) -> Iterable[tuple[int, ...]]:
    """n per-CPU values (ncpus slots of slot_words u64 each, the first `words` used) summed
    over the CPUs: one tuple of `words` ints per entry.

    Adding 64K x 16 CPUs x 6 counters one by one is 6M Python operations (~0.3 s). Instead
    each CPU's slots are gathered into one buffer (strided memoryview copies) and the buffers
    added as big integers, whose 64-bit lanes are the counters: C loops only. Exact as long as
    no lane carries into the next, which holds when every counter is below 2**(64 - log2
    ncpus): checked on the top byte of every word first, else summed one by one.
    """
    if n == 0:
        return iter(())
    flat = memoryview(values).cast("Q")
    step = ncpus * slot_words
    bits = max(1, (ncpus - 1).bit_length())
    top = values[7::8] if sys.byteorder == "little" else values[0::8]  # each word's top byte
    safe = bits <= 8 and not top.translate(None, bytes(range(1 << (8 - bits))))
    if not safe:  # a counter near 2**64 (never seen in practice): exact, slowly
        cols = []
        for f in range(words):
            acc = flat[f::step].tolist()
            for cpu in range(1, ncpus):
                acc = list(map(operator.add, acc, flat[cpu * slot_words + f :: step].tolist()))
            cols.append(acc)
        return zip(*cols, strict=True)
    lanes = bytearray(n * words * 8)
    lane_words = memoryview(lanes).cast("Q")
    total = 0
    for cpu in range(ncpus):
        for f in range(words):
            lane_words[f::words] = flat[cpu * slot_words + f :: step]
        total += int.from_bytes(lanes, sys.byteorder)
    return struct.iter_unpack(f"={words}Q", total.to_bytes(len(lanes), sys.byteorder))


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


def _normalize_ports(ports: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
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
        self, maps: Mapping[str, _Map], where: str, only: Iterable[str] | None = None
    ) -> None:
        self.where = where  # the pin directory, or "<loaded>"
        self._maps = dict(maps)
        wanted = MAP_NAMES if only is None else tuple(only)
        problems = []
        for name in wanted:
            if name not in _LAYOUT:
                problems.append(f"{name}: not a map of the fast path")
                continue
            mtype, ksize, vsize = _LAYOUT[name]
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

    def _map(self, name: str) -> _Map:
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
            _PORT_KEY.pack(PROTO_UDP if p == "udp" else PROTO_TCP, 0, port)
            for p, port in _normalize_ports(ports)
        }
        self._replace_set(self._map("sip_ports"), want)

    def sip_ports(self) -> list[tuple[str, int]]:
        out = []
        for key in self._map("sip_ports").all_keys():
            proto, _pad, port = _PORT_KEY.unpack(key)
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
        had_marker = _LOCAL_MARKER in have
        have.discard(_LOCAL_MARKER)
        if want:
            for key in want - have:
                m.update(key, _ONE)
            if not had_marker:
                m.update(_LOCAL_MARKER, _ONE)
        elif had_marker:
            m.delete(_LOCAL_MARKER)
        for key in have - want:
            m.delete(key)

    def local_addresses(self) -> list[str]:
        """The proxy's own addresses the classifier knows, as text (IPv4 first); empty when
        it judges every destination."""
        keys = [k for k in self._map("local_addrs").all_keys() if k != _LOCAL_MARKER]
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
                want4.add(_LPM_V4.pack(net.prefixlen, net.network_address.packed))
            else:
                want6.add(_LPM_V6.pack(net.prefixlen, net.network_address.packed))
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
            plen, addr = _LPM_V4.unpack(key)
            nets.append(ipaddress.IPv4Network((addr, plen)))
        for key in self._map("trusted_v6").all_keys():
            plen, addr = _LPM_V6.unpack(key)
            nets.append(ipaddress.IPv6Network((addr, plen)))
        return [str(n) for n in sorted(nets, key=lambda n: (n.version, n))]

    @staticmethod
    def _replace_set(m: _Map, want: set[bytes], have: set[bytes] | None = None) -> None:
        current = set(m.all_keys()) if have is None else have
        for key in want - current:
            m.update(key, _ONE)
        for key in current - want:
            m.delete(key)

    # ---------------------------------------------------------------- pinholes
    def _pinhole_slot(self, ip: str | IPAddress) -> tuple[_Map, bytes, IPAddress]:
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
                    m.update(key, _U64.pack(expiry), _BPF_NOEXIST)
                    return
                except OSError as exc:
                    if exc.errno != errno.EEXIST:
                        raise
                old = m.lookup(key)
                if old is not None and _U64.unpack(old)[0] >= expiry:
                    return
                m.update(key, _U64.pack(expiry))
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
                left = _U64.unpack(value)[0] - now
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
                if _U64.unpack(value)[0] <= now and m.delete(key):
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
                _ADDR6.iter_unpack(keys), m.rows_u64(values, n), strict=True
            )
        }

    def sweep_admitted(self, keep: Callable[[str], bool]) -> int:
        """Deletes the admitted sources' rows whose address `keep` rejects (call it after a
        deny, with the new trusted list and the open pinholes, so that a spoofer inside a
        large trusted prefix cannot fill admitted_stats for ever). How many were deleted."""
        m = self._map("admitted_stats")
        _n, keys, _values = m.dump()
        removed = 0
        for (key,) in _ADDR6.iter_unpack(keys):
            if not keep(_addr_text(key)) and m.delete(key):
                removed += 1
        return removed

    def read_totals(self) -> dict[str, dict[str, int]]:
        """Totals per verdict summed over CPUs: {"passed"|"dropped_untrusted"|"dropped_nonsip":
        {"pkts": n, "bytes": n}}. Never evicted, unlike the per-source counters."""
        m = self._map("verdicts")
        out = {}
        for index, name in enumerate(TOTALS_NAMES):
            value = m.lookup(_U32.pack(index))
            pkts, nbytes = m.percpu_sum(value, _VERDICT_STATS) if value else (0, 0)
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
    unknown = [n for n in names if n not in _LAYOUT]
    if unknown:
        raise ValueError(f"not maps of the fast path: {', '.join(unknown)} (see MAP_NAMES)")
    if _fstype(Path(pin_root)) != "bpf":
        raise FastPathUnavailable(
            f"no bpf filesystem at {pin_root}, so no fast path maps are pinned there",
            "start the proxy with the fast path on (it mounts bpffs and pins its maps); "
            "`clearipctl status` says why it is off",
        )
    maps: dict[str, _Map] = {}
    missing = []
    try:
        for map_name in names:
            path = directory / map_name
            try:
                fd = _obj_get(path)
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
            maps[map_name] = _Map(fd, str(path))
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


def _fstype(path: Path) -> str | None:
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
    if _fstype(root) == "bpf":
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FastPathUnavailable(
            f"cannot make {root} to mount bpffs on: {exc.strerror}",
            f"mount -t bpf bpf {root} (or list it in /etc/fstab)",
        ) from None
    if _libc.mount(b"bpf", os.fsencode(root), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise FastPathUnavailable(
            f"cannot mount bpffs at {root}: {os.strerror(err)}",
            f"mount -t bpf bpf {root} as root (or list it in /etc/fstab)",
        )
    log.info("mounted bpffs at %s", root)


def _unpin_dir(directory: Path, only_ids: Mapping[str, int] | None = None) -> list[str]:
    """Removes our map pins from `directory` (those of `only_ids` when given: a pin replaced by
    a newer instance is left alone), then the directory if nothing else is in it."""
    removed = []
    for name in MAP_NAMES:
        path = directory / name
        if only_ids is not None:
            try:
                fd = _obj_get(path)
            except OSError:
                continue
            try:
                if name not in only_ids or int(_map_info(fd).id) != only_ids[name]:
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


# ---------------------------------------------------------------------------------------------
# netlink (pyroute2)


def _netlink(fn: Callable[[IPRoute], T]) -> T:
    """Runs `fn(ipr)` with a sync pyroute2 IPRoute of its own, in this network namespace.

    pyroute2 0.9's sync API drives a private asyncio loop and fails inside a running one, so
    when this thread runs a loop the call moves to a worker thread (same netns: namespaces
    are per process). Its loop is a plain SelectorEventLoop even if uvloop is the policy.
    """

    def call() -> T:
        from pyroute2 import IPRoute

        loop = asyncio.SelectorEventLoop()
        try:
            with IPRoute(use_event_loop=loop) as ipr:
                return fn(ipr)
        finally:
            loop.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return call()
    with ThreadPoolExecutor(1, thread_name_prefix="clearip-netlink") as pool:
        return pool.submit(call).result()


def _netlink_errno(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


@dataclass(frozen=True, slots=True)
class _Filter:
    handle: int
    name: str  # TCA_BPF_NAME


def _ifindex(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _ingress_filters(ipr: IPRoute, ifindex: int, parent: int = _CLSACT_INGRESS) -> list[Any]:
    """The filter messages on a clsact hook ([] when there is no clsact qdisc)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        return [m for m in ipr.get_filters(index=ifindex, parent=parent) if m["handle"] != 0]
    except NetlinkError as exc:
        if exc.code in (errno.EINVAL, errno.ENOENT, errno.EOPNOTSUPP):
            return []
        raise


def _our_prio_filters(ipr: IPRoute, ifindex: int) -> list[_Filter]:
    """bpf filters at TC_PRIO on ingress, whoever made them (handle 0 entries are the chain
    heads the dump lists for each priority, not filters)."""
    out = []
    for msg in _ingress_filters(ipr, ifindex):
        if (msg["info"] >> 16) != TC_PRIO or msg.get_attr("TCA_KIND") != "bpf":
            continue
        opts = msg.get_attr("TCA_OPTIONS")
        name = opts.get_attr("TCA_BPF_NAME") if opts is not None else None
        out.append(_Filter(int(msg["handle"]), name or ""))
    return out


def _del_filter(ipr: IPRoute, ifindex: int, handle: int) -> None:
    ipr.tc(
        "del-filter",
        "bpf",
        ifindex,
        handle=handle,
        parent=_CLSACT_INGRESS,
        prio=TC_PRIO,
        protocol=_ETH_P_ALL,
    )


def tc_handle(name: str) -> int:
    """The tc filter handle of fast path `name` (stable across restarts, never 0)."""
    return zlib.crc32(name.encode()) or 1


def _filter_prefix(name: str) -> str:
    return f"clearip:{name}:"


# Masters that receive their ports' frames again as their own (rx_handler -> another round
# of __netif_receive_skb, tc ingress included): their ports are left to them. A VRF or Open
# vSwitch port is not: its packets never pass the master's tc ingress, so it stays a candidate.
_REINJECTING_MASTERS = frozenset({"bond", "team", "bridge"})
_IFF_UP, _IFF_LOOPBACK = 0x1, 0x8


def _link_kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def attach_candidates() -> list[str]:
    """The interfaces to filter when fastpath.interfaces = []: up, not loopback, and not a
    port of a bond, team or bridge (the master judges what they receive, once). A VLAN device
    and its lower device are both candidates: the classifier leaves the lower device's tagged
    frames to the VLAN device."""

    def fn(ipr: IPRoute) -> list[str]:
        links = ipr.get_links()
        kinds = {int(lk["index"]): _link_kind(lk) for lk in links}
        out = []
        for link in links:
            if not link["flags"] & _IFF_UP or link["flags"] & _IFF_LOOPBACK:
                continue
            master = link.get_attr("IFLA_MASTER")
            if master and kinds.get(int(master)) in _REINJECTING_MASTERS:
                continue
            out.append(link.get_attr("IFLA_IFNAME"))
        return out

    return _netlink(fn)




# reconcile() looks at every attachment at least this often even without a notification.
FULL_CHECK_S = 60.0

_RTMGRP_LINK = 0x1
_RTMGRP_TC = 0x8


class _NetlinkEvents:
    """A netlink socket subscribed to this network namespace's link and tc notifications:
    tells reconcile() whether anything may have changed since it last looked, without a
    dump. Non-blocking; a notification lost to a full socket buffer (ENOBUFS) counts as a
    change."""

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK,
            socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
            socket.NETLINK_ROUTE,
        )
        try:
            self._sock.bind((0, _RTMGRP_LINK | _RTMGRP_TC))
        except BaseException:
            self._sock.close()
            raise

    def changed(self) -> bool:
        """Drains what arrived; True if anything did."""
        seen = False
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return seen
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                seen = True
                continue
            seen = seen or bool(data)

    def close(self) -> None:
        self._sock.close()


def remove_all(
    name: str,
    interfaces: Iterable[str] | None = None,
    pin_root: str | os.PathLike[str] = DEFAULT_PIN_ROOT,
    *,
    keep_filter: str | None = None,
    filters_only: bool = False,
) -> list[str]:
    """Cleans what a crashed run of fast path `name` left: its tc filters (on `interfaces`, or
    every interface when None) and its pins. Other filters, and clsact, stay. What was removed,
    one line each. `keep_filter` (a filter name) and `filters_only` let a successor that has
    already attached and pinned sweep what its predecessor left elsewhere, without a moment
    with no filter where one was."""
    directory = pin_dir(name, pin_root)
    prefix = _filter_prefix(name)
    wanted = None if interfaces is None else list(interfaces)

    def fn(ipr: IPRoute) -> list[str]:
        done = []
        if wanted is None:
            links = [(lk.get_attr("IFLA_IFNAME"), lk["index"]) for lk in ipr.get_links()]
        else:
            links = [(ifname, _ifindex(ipr, ifname)) for ifname in wanted]
        for ifname, ifindex in links:
            if ifindex is None:
                continue
            for flt in _our_prio_filters(ipr, ifindex):
                if flt.name.startswith(prefix) and flt.name != keep_filter:
                    _del_filter(ipr, ifindex, flt.handle)
                    done.append(f"{ifname}: tc filter {flt.name} (prio {TC_PRIO})")
        return done

    removed = _netlink(fn)
    if not filters_only and _fstype(Path(pin_root)) == "bpf":
        removed += [f"pin {p}" for p in _unpin_dir(directory)]
    return removed


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
        self.sip_ports = _normalize_ports(sip_ports)
        if isinstance(max_sources, bool) or not isinstance(max_sources, int):
            raise ValueError(f"max_sources must be an integer, got {max_sources!r}")
        if not 1 <= max_sources <= 1 << 24:
            raise ValueError(f"max_sources must be 1..16777216, got {max_sources}")
        self.max_sources = max_sources
        self.src_dir = Path(src_dir) if src_dir is not None else BPF_DIR
        self.tc_handle = tc_handle(name)
        # TCA_BPF_NAME of our filter: "clearip:<name>:" finds this fast path's filters (for
        # remove_all), the random tail this instance's (detach() leaves a successor's alone).
        self.filter_name = f"{_filter_prefix(name)}{secrets.token_hex(4)}"
        self._bpf: Any = None
        self._prog_fd = -1
        self._maps: PinnedMaps | None = None
        self._attached: dict[str, _Attachment] = {}
        self._pinned: dict[str, int] = {}  # map name -> id we pinned
        # reconcile(): link/tc notifications, problems told once, interfaces left to a successor
        self._events: _NetlinkEvents | None = None
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
                f"{header} and fastpath/bpf.py disagree: " + "; ".join(mismatch),
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
            maps = {n: _Map(os.dup(b[n.encode()].map_fd), n) for n in MAP_NAMES}
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
                    ifindex = _ifindex(ipr, ifname)
                    if ifindex is None:
                        raise FastPathError(f"attach to {ifname}: no such interface")
                    done.append(self._attach_one(ipr, ifname, ifindex))
            except BaseException:
                for att in reversed(done):
                    with contextlib.suppress(Exception):
                        self._detach_one(ipr, att)
                raise
            return done

        for att in _netlink(fn):
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
            prefix = _filter_prefix(self.name)
            for flt in _our_prio_filters(ipr, ifindex):
                if flt.handle == self.tc_handle and not flt.name.startswith(prefix):
                    raise FastPathError(
                        f"{ifname}: tc ingress prio {TC_PRIO} handle {self.tc_handle:#x} holds "
                        f"a filter we did not make ({flt.name or 'unnamed'}); remove it or "
                        "rename fastpath.name"
                    )
                if flt.handle != self.tc_handle and flt.name.startswith(prefix):
                    _del_filter(ipr, ifindex, flt.handle)
            try:
                ipr.tc(
                    "replace-filter",
                    "bpf",
                    ifindex,
                    handle=self.tc_handle,
                    parent=_CLSACT_INGRESS,
                    prio=TC_PRIO,
                    protocol=_ETH_P_ALL,
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
        lines = _netlink(lambda ipr: self._reconcile(ipr, want))
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
            held = [f for f in _our_prio_filters(ipr, ifindex) if f.handle == self.tc_handle]
            if any(f.name == self.filter_name for f in held):
                return  # in place: the common case
            if held and held[0].name.startswith(_filter_prefix(self.name)):
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
        self._events = _NetlinkEvents()
        return True

    def _detach_one(self, ipr: IPRoute, att: _Attachment) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        ifindex = _ifindex(ipr, att.ifname)
        if ifindex is None:
            return  # the interface went away, and our filter with it
        for flt in _our_prio_filters(ipr, ifindex):
            if flt.handle == self.tc_handle and flt.name == self.filter_name:
                _del_filter(ipr, ifindex, flt.handle)
            elif flt.handle == self.tc_handle:
                log.info("%s: the tc filter is now %s's, left in place", att.ifname, flt.name)
        if att.made_clsact and not (
            _ingress_filters(ipr, ifindex) or _ingress_filters(ipr, ifindex, _CLSACT_EGRESS)
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
            _netlink(fn)
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
            _obj_pin(maps.fd(name), path)
            self._pinned[name] = map_id

    def unpin(self) -> None:
        """Removes the pins this instance made (not ones a successor has since replaced)."""
        if self._pinned:
            _unpin_dir(self.pin_dir, self._pinned)
            self._pinned.clear()

    # ---------------------------------------------------------------- maps
    def set_sip_ports(self, sip_ports: Sequence[tuple[str, int]]) -> None:
        """New listener ports (reload): the judged set becomes exactly these."""
        ports = _normalize_ports(sip_ports)
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
