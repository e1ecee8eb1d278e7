"""What bpf/clearip.h says, mirrored in Python: verdicts, limits, map keys and values, maps.

The bottom of `clearip.fastpath`: plain constants and struct formats, no I/O at import. Every
other layer (the bpf(2) calls, the pinned-map API, the loader) reads the kernel's data through
these, and ``header_mismatches()`` checks them against the header (the loader refuses to build
when they differ, and the tests check it too). Separate so that the header's mirror is one
short file to read beside clearip.h.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

__all__ = [
    "BPF_DIR",
    "MAP_NAMES",
    "PINHOLE_MAPS",
    "SRC_STATS_FIELDS",
    "TOTALS_NAMES",
    "header_constants",
]

# control/clearip/fastpath/layout.py -> the repository's bpf/ (an editable install runs from it).
BPF_DIR = Path(__file__).resolve().parents[3] / "bpf"
SOURCE_NAME = "clearip_tc.bpf.c"
HEADER_NAME = "clearip.h"

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
PORT_KEY = struct.Struct("=BBH")  # struct clearip_port_key {proto, pad, port}
LPM_V4 = struct.Struct("=I4s")  # struct clearip_lpm_v4 {prefixlen, addr}
LPM_V6 = struct.Struct("=I16s")  # struct clearip_lpm_v6 {prefixlen, addr[16]}
ADDR6 = struct.Struct("=16s")  # struct clearip_addr6
_SRC_STATS = struct.Struct("=6Q")  # struct clearip_src_stats
VERDICT_STATS = struct.Struct("=2Q")  # struct clearip_verdict_stats {pkts, bytes}
U64 = struct.Struct("=Q")
U32 = struct.Struct("=I")
ONE = b"\x01"  # the __u8 value of sip_ports, local_addrs and trusted_v4/v6 entries
LOCAL_MARKER = bytes(16)  # `::` in local_addrs: "the list is in force" (clearip.h)

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
    "CLEARIP_PORT_KEY_SIZE": PORT_KEY.size,
    "CLEARIP_LPM_V4_SIZE": LPM_V4.size,
    "CLEARIP_LPM_V6_SIZE": LPM_V6.size,
    "CLEARIP_ADDR6_SIZE": ADDR6.size,
    "CLEARIP_SRC_STATS_SIZE": _SRC_STATS.size,
    "CLEARIP_VERDICT_STATS_SIZE": VERDICT_STATS.size,
}

# bpf(2) map types (include/uapi/linux/bpf.h, enum bpf_map_type).
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_LPM_TRIE = 11
PERCPU_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH}

# Every map the program has: (type, key size, value size). Checked whenever a map is opened,
# so a pin left by another version is refused with a reason instead of being misread.
LAYOUT: dict[str, tuple[int, int, int]] = {
    "sip_ports": (BPF_MAP_TYPE_HASH, PORT_KEY.size, 1),
    "local_addrs": (BPF_MAP_TYPE_HASH, ADDR6.size, 1),
    "trusted_v4": (BPF_MAP_TYPE_LPM_TRIE, LPM_V4.size, 1),
    "trusted_v6": (BPF_MAP_TYPE_LPM_TRIE, LPM_V6.size, 1),
    "pinholes_v4": (BPF_MAP_TYPE_HASH, 4, U64.size),
    "pinholes_v6": (BPF_MAP_TYPE_HASH, ADDR6.size, U64.size),
    "src_stats": (BPF_MAP_TYPE_LRU_HASH, ADDR6.size, _SRC_STATS.size),
    "admitted_stats": (BPF_MAP_TYPE_PERCPU_HASH, ADDR6.size, _SRC_STATS.size),
    "verdicts": (BPF_MAP_TYPE_PERCPU_ARRAY, 4, VERDICT_STATS.size),
}
MAP_NAMES = tuple(LAYOUT)
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
        f"{name}: clearip.h says {found.get(name)}, layout.py says {value}"
        for name, value in _MIRRORED.items()
        if found.get(name) != value
    ]
