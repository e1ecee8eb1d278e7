"""bpf(2) through ctypes: the few commands needed to use maps by fd or by pinned path.

``bpf_syscall`` and the ``union bpf_attr`` layouts it is called with, pinning and opening by
path, making a map and loading a program (call steering, which needs no bcc), and ``Map``:
one map by fd, with raw-bytes lookup, update, delete, key walk and batch dump
(per-CPU values summed without a Python loop per counter). It knows map types and sizes
but not what the fast path's maps mean: that is ``maps.PinnedMaps``. Separate because it is
the one place that talks to the kernel's bpf(2) ABI.
"""

from __future__ import annotations

import ctypes
import errno
import operator
import os
import platform
import struct
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clearip.fastpath.layout import PERCPU_TYPES

__all__ = ["bpf_syscall"]

# ---------------------------------------------------------------------------------------------
# bpf(2) through ctypes: the few commands needed to use maps by fd or by pinned path.

_BPF_MAP_CREATE = 0
_BPF_MAP_LOOKUP_ELEM = 1
_BPF_MAP_UPDATE_ELEM = 2
_BPF_MAP_DELETE_ELEM = 3
_BPF_MAP_GET_NEXT_KEY = 4
_BPF_PROG_LOAD = 5
_BPF_OBJ_PIN = 6
_BPF_OBJ_GET = 7
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_MAP_LOOKUP_BATCH = 24
_BPF_ANY = 0
BPF_NOEXIST = 1
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

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]


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


class _MapCreateAttr(ctypes.Structure):  # union bpf_attr, BPF_MAP_CREATE
    _fields_ = (
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * 16),
    )


class _ProgLoadAttr(ctypes.Structure):  # union bpf_attr, BPF_PROG_LOAD
    _fields_ = (
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
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
    _BPF_MAP_CREATE: "MAP_CREATE",
    _BPF_PROG_LOAD: "PROG_LOAD",
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
    ret = libc.syscall(
        ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr))
    )
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({_CMD_NAMES.get(cmd, cmd)}): {os.strerror(err)}")
    return int(ret)


def obj_get(path: Path) -> int:
    """A new fd for the object pinned at `path` (OSError: ENOENT when nothing is pinned)."""
    raw = os.fsencode(path)
    buf = ctypes.create_string_buffer(raw)
    attr = _ObjAttr(pathname=ctypes.addressof(buf))
    try:
        return bpf_syscall(_BPF_OBJ_GET, attr)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror}: {path}") from None


def obj_pin(fd: int, path: Path) -> None:
    buf = ctypes.create_string_buffer(os.fsencode(path))
    try:
        bpf_syscall(_BPF_OBJ_PIN, _ObjAttr(pathname=ctypes.addressof(buf), bpf_fd=fd))
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror}: {path}") from None


def map_create(kind: int, key_size: int, value_size: int, entries: int, name: bytes) -> int:
    """A new map's fd."""
    attr = _MapCreateAttr(
        map_type=kind, key_size=key_size, value_size=value_size, max_entries=entries, map_name=name
    )
    return bpf_syscall(_BPF_MAP_CREATE, attr)


PROG_LOAD_TRIES = 5


def _load_retrying(attr: ctypes.Structure) -> int:
    """BPF_PROG_LOAD, again when the verifier gave up because a signal arrived (EAGAIN: it
    checks signal_pending() as it walks; a worker's SIGCHLD during the ~170 ms load did it in CI
    and the proxy ran unsteered). Bounded: a signal storm still ends in the EAGAIN."""
    for _ in range(PROG_LOAD_TRIES - 1):
        try:
            return bpf_syscall(_BPF_PROG_LOAD, attr)
        except OSError as e:
            if e.errno != errno.EAGAIN:
                raise
    return bpf_syscall(_BPF_PROG_LOAD, attr)


def prog_load(kind: int, attach_type: int, insns: bytes, name: bytes) -> int:
    """A new program's fd; OSError with the verifier's last words when it refuses (the load is
    tried again with its log, which costs a second verification only then)."""
    code = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(b"GPL")  # as bcc declares the tc filter's
    attr = _ProgLoadAttr(
        prog_type=kind,
        insn_cnt=len(insns) // 8,
        insns=ctypes.addressof(code),
        license=ctypes.addressof(license_),
        prog_name=name,
        expected_attach_type=attach_type,
    )
    try:
        return _load_retrying(attr)
    except OSError as first:
        log = ctypes.create_string_buffer(1 << 20)
        attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ctypes.addressof(log)
        try:
            return _load_retrying(attr)
        except OSError:
            tail = log.value.decode(errors="replace").strip().splitlines()[-3:]
            raise OSError(first.errno, f"{first.strerror}: {' / '.join(tail)}") from None


def map_info(fd: int) -> _MapInfo:
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


class Map:
    """One bpf map, by fd (owned: closed by close()). Keys and values are raw bytes."""

    def __init__(self, fd: int, label: str) -> None:
        self.fd = fd
        self.label = label  # for messages: the pin path, or the map name
        info = map_info(fd)
        self.type = int(info.type)
        self.id = int(info.id)
        self.key_size = int(info.key_size)
        self.value_size = int(info.value_size)
        self.max_entries = int(info.max_entries)
        percpu = self.type in PERCPU_TYPES
        # per-CPU maps copy one 8-byte-aligned slot per possible CPU
        self.ncpus = _possible_cpus() if percpu else 1
        self.stride = (self.value_size + 7) & ~7 if percpu else self.value_size
        self.buf_size = self.stride * self.ncpus
        self._batch_ok = True

    def __repr__(self) -> str:
        return f"Map({self.label!r}, id={self.id}, type={self.type}, fd={self.fd})"

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
        if self.type not in PERCPU_TYPES:
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
