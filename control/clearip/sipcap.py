"""Sans-IO SIP capture: captured packets in, SIP messages and the lines to print out.

`clearipctl capture` (clearip.capture) owns the sockets, the pcap files and the clock; this
module only turns `(timestamp, IP bytes, how the packet was seen)` into `Shown` items and those
into text, so every rule below is tested with bytes.

Decisions a reader may want to know:

* IPv4 and IPv6 fragments are put back together first (a UDP INVITE with an Identity header
  often exceeds the MTU); a datagram still incomplete after FRAGMENT_TIMEOUT is forgotten.
* TCP is reassembled per direction by sequence number, then framed with the relay's own
  `StreamFramer`, so one segment may give several messages and one message may span several
  segments. A stream joined in the middle (the capture started after the connection) is picked
  up at the first segment that begins like a SIP message or a TLS record; after a framing
  error the same resynchronisation applies. Retransmitted bytes are dropped, a gap is waited
  for while at most MAX_PENDING bytes are held out of order.
* A TLS stream cannot be read: nothing is shown for it, or one line per TLS record with
  `verbose`. `clearipctl capture --decrypted` shows those legs from the relay's tap instead.
* Fast-path marks repeat the rules of bpf/clearip_tc.bpf.c (SPEC §5) on what AF_PACKET saw
  before the tc classifier ran: an incoming packet on a filtered interface, to a guarded
  (protocol, port) of one of the proxy's addresses, from a source neither trusted nor
  pinholed, is dropped; a UDP payload there that does not look like SIP (`looks_like_sip`,
  the kernel's probe, STUN keepalives included) is dropped too, and so is an IPv6 packet
  behind more extension headers than the kernel walks (its ports unseen there).
"""

from __future__ import annotations

import heapq
import ipaddress
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

from clearip.config import HostPort
from clearip.relay.tap import TapRecord
from clearip.sip.errors import SipProtocolError
from clearip.sip.framing import StreamFramer

Address = tuple[str, int]

UDP, TCP, TLS, DECRYPTED = "UDP", "TCP", "TLS", "TLS (decrypted)"
DROP_UNTRUSTED = "fast path: drop untrusted"
DROP_NONSIP = "fast path: drop non-SIP"

# Bounds on what a capture holds, so a long run or a hostile stream costs bounded memory.
MAX_FLOWS = 4096  # TCP directions followed at once (the least recently used is forgotten)
MAX_PENDING = 256 * 1024  # out-of-order bytes held per TCP direction before giving up the gap
MAX_FRAGMENTED = 1024  # IP datagrams being reassembled at once
FRAGMENT_TIMEOUT = 30.0  # seconds, as Linux's ipfrag_time
MAX_DATAGRAM = 65535 + 8  # largest UDP datagram (header included) a reassembly may produce

_PROTO_TCP, _PROTO_UDP = 6, 17
MAX_EXT_HEADERS = 8  # IPv6 extension headers the eBPF classifier walks (CLEARIP_MAX_EXT_HDRS)
_TCP_FIN, _TCP_SYN, _TCP_RST = 0x01, 0x02, 0x04
_SEQ_MOD = 1 << 32

# What a SIP message starts with (RFC 3261 §7.1/§7.2): a method token and a space, or the
# status line's version. The kernel's probe (looks_like_sip) is stricter about length.
_SIP_START = re.compile(rb"(?:[A-Z]{3,16} |SIP/2\.0 )")
_TLS_TYPES = {20: "change cipher spec", 21: "alert", 22: "handshake", 23: "application data"}


# ---------------------------------------------------------------------------------------------
# The vocabulary


@dataclass(frozen=True, slots=True)
class Packet:
    """One captured packet, from its IP header on."""

    ts: float  # wall clock, as in a pcap
    l3: bytes
    iface: str = ""  # "" when unknown (a saved capture)
    incoming: bool | None = None  # None when unknown
    decrypted: bool = False  # a synthetic packet carrying a tap record (see capture -w)


@dataclass(frozen=True, slots=True)
class Segment:
    """A UDP datagram (IP fragments joined) or TCP segment: what the fast-path rules judge."""

    ts: float
    proto: str  # "udp" | "tcp"
    src: Address
    dst: Address
    payload: bytes
    seq: int = 0
    flags: int = 0
    probed: bool = True  # the eBPF probe sees its ports and payload (IPv6: <= 8 ext. headers)


@dataclass(frozen=True, slots=True)
class Shown:
    """One thing to show: a SIP message, another payload, or a one-line note."""

    ts: float
    src: Address
    dst: Address
    transport: str  # UDP, TCP, TLS, TLS (decrypted)
    data: bytes = b""  # the message or payload; empty for a note
    kind: str = "sip"  # "sip" | "payload" (not SIP) | "note"
    summary: str = ""  # a note's text ("handshake, 517 bytes"); content items: the size
    mark: str = ""  # a fast-path verdict, shown in brackets


# ---------------------------------------------------------------------------------------------
# The fast path's rules (SPEC §5, bpf/clearip_tc.bpf.c)


def looks_like_sip(payload: bytes) -> bool:
    """The eBPF classifier's UDP probe: a CRLF keepalive, a STUN Binding request (RFC 5626
    §4.4.2), or at least PROBE_LEN (17) bytes that start with "SIP/2.0 " or with 3-16 capitals
    and a space."""
    if len(payload) in (2, 4):
        return payload in (b"\r\n", b"\r\n\r\n")
    if len(payload) < 17:
        return False
    if payload.startswith(b"SIP/2.0 "):
        return True
    if payload[0] == 0:
        return is_stun_binding_request(payload)
    for i, c in enumerate(payload[:17]):
        if c == 0x20:
            return i >= 3
        if not 0x41 <= c <= 0x5A:
            return False
    return False


_STUN_MAGIC_COOKIE = 0x2112A442


def is_stun_binding_request(payload: bytes) -> bool:
    """A STUN Binding request (RFC 5389 §6): type 0x0001, the magic cookie, and a length that
    is a multiple of 4 and exactly what follows the 20-byte header."""
    if len(payload) < 20:
        return False
    msg_type, length, cookie = struct.unpack_from("!HHI", payload)
    return (
        msg_type == 0x0001
        and cookie == _STUN_MAGIC_COOKIE
        and length % 4 == 0
        and length == len(payload) - 20
    )


@dataclass(frozen=True, slots=True)
class FastPathRules:
    """What the running fast path filters and whom it admits (trusted or pinholed)."""

    udp_ports: frozenset[int]
    tcp_ports: frozenset[int]  # TCP and TLS listeners
    interfaces: frozenset[str]  # where the classifier is attached
    admitted: Callable[[str], bool]
    # Is this destination one of the proxy's own (judged)? None: every one is, as in the
    # kernel before it is told its addresses.
    local: Callable[[str], bool] | None = None

    def verdict(self, seg: Segment, iface: str, incoming: bool | None) -> str:
        """The drop this packet meets in the kernel, or "" when it passes (or is not judged)."""
        # Only ingress on an attached interface meets the tc classifier.
        if not incoming or iface not in self.interfaces:
            return ""
        ports = self.udp_ports if seg.proto == "udp" else self.tcp_ports
        if seg.dst[1] not in ports:
            return ""
        if self.local is not None and not self.local(seg.dst[0]):
            return ""  # forwarded or bridged to another host: not the proxy's to judge
        if not self.admitted(seg.src[0]):
            return DROP_UNTRUSTED
        if not seg.probed:  # the kernel could not see its ports: dropped unjudged
            return DROP_NONSIP
        if seg.proto == "udp" and not looks_like_sip(seg.payload):
            return DROP_NONSIP
        return ""


Verdict = Callable[[Segment, str, bool | None], str]


# ---------------------------------------------------------------------------------------------
# IP


@dataclass(frozen=True, slots=True)
class _Ip:
    src: str
    dst: str
    proto: int
    payload: bytes
    frag: tuple[int, int, bool] | None  # (id, offset, more fragments) of a fragment
    probed: bool  # the eBPF classifier reaches its upper-layer header (see MAX_EXT_HEADERS)


def _parse_ip(l3: bytes) -> _Ip | None:
    if not l3:
        return None
    version = l3[0] >> 4
    if version == 4 and len(l3) >= 20:
        ihl = (l3[0] & 0x0F) * 4
        total, ident, frag, proto = struct.unpack_from("!2xHHH xB", l3)
        end = total if ihl <= total <= len(l3) else len(l3)  # 0 with TSO: the whole buffer
        offset, more = (frag & 0x1FFF) * 8, bool(frag & 0x2000)
        return _Ip(
            str(ipaddress.IPv4Address(l3[12:16])),
            str(ipaddress.IPv4Address(l3[16:20])),
            proto,
            l3[ihl:end],
            (ident, offset, more) if offset or more else None,
            True,
        )
    if version == 6 and len(l3) >= 40:
        (length,) = struct.unpack_from("!H", l3, 4)
        end = 40 + length if length and 40 + length <= len(l3) else len(l3)
        nh, off, frag, walked = l3[6], 40, None, 0
        while nh in (0, 43, 44, 51, 60) and off + 8 <= end:
            walked += 1
            if nh == 44:  # fragment header (RFC 8200 §4.5)
                offmore, ident = struct.unpack_from("!HI", l3, off + 2)
                frag = (ident, offmore & 0xFFF8, bool(offmore & 1))
                nh, off = l3[off], off + 8
            elif nh == 51:  # AH counts its length in 4-byte units, less 2
                nh, off = l3[off], off + (l3[off + 1] + 2) * 4
            else:
                nh, off = l3[off], off + (l3[off + 1] + 1) * 8
        return _Ip(
            str(ipaddress.IPv6Address(l3[8:24])),
            str(ipaddress.IPv6Address(l3[24:40])),
            nh,
            l3[off:end],
            frag,
            walked <= MAX_EXT_HEADERS,
        )
    return None


@dataclass(slots=True)
class _Partial:
    first_ts: float
    pieces: dict[int, bytes] = field(default_factory=dict)
    total: int | None = None  # known once the last fragment arrived


class Defragmenter:
    """Joins IP fragments (RFC 791, RFC 8200 §4.5) into whole datagrams, bounded."""

    def __init__(self) -> None:
        self._partial: OrderedDict[tuple[object, ...], _Partial] = OrderedDict()

    def feed(self, ts: float, ip: _Ip) -> bytes | None:
        """The whole payload once every fragment of `ip`'s datagram arrived, else None."""
        assert ip.frag is not None
        ident, offset, more = ip.frag
        self._expire(ts)
        key = (ip.src, ip.dst, ip.proto, ident)
        part = self._partial.get(key)
        if part is None:
            if len(self._partial) >= MAX_FRAGMENTED:
                self._partial.popitem(last=False)
            part = self._partial[key] = _Partial(ts)
        if offset + len(ip.payload) > MAX_DATAGRAM:
            del self._partial[key]
            return None
        part.pieces[offset] = ip.payload
        if not more:
            part.total = offset + len(ip.payload)
        if part.total is None:
            return None
        data, at = bytearray(), 0
        for start in sorted(part.pieces):
            if start > at:
                return None  # a hole: more to come
            data += part.pieces[start][at - start :]
            at = max(at, start + len(part.pieces[start]))
        if at < part.total:
            return None
        del self._partial[key]
        return bytes(data[: part.total])

    def _expire(self, ts: float) -> None:
        while self._partial:
            key, oldest = next(iter(self._partial.items()))
            if ts - oldest.first_ts < FRAGMENT_TIMEOUT:
                break
            del self._partial[key]


def format_address(addr: Address) -> str:
    return str(HostPort(*addr))


# ---------------------------------------------------------------------------------------------
# TCP


@dataclass(slots=True)
class _Flow:
    """One direction of a TCP connection."""

    next_seq: int | None = None  # None: not synchronised on a message boundary
    kind: str = ""  # "sip" | "tls", decided by the first bytes
    pending: dict[int, bytes] = field(default_factory=dict)  # out of order, by sequence number
    pending_bytes: int = 0
    framer: StreamFramer = field(default_factory=StreamFramer)
    tls: bytearray = field(default_factory=bytearray)

    def lose_sync(self) -> None:
        self.next_seq = None
        self.kind = ""
        self.pending.clear()
        self.pending_bytes = 0
        self.framer = StreamFramer()
        self.tls.clear()


def _seq_diff(a: int, b: int) -> int:
    """a - b in sequence space (RFC 9293 §3.4): negative when a is before b."""
    d = (a - b) % _SEQ_MOD
    return d - _SEQ_MOD if d >= _SEQ_MOD // 2 else d


def _starts_tls(data: bytes) -> bool:
    return len(data) >= 3 and data[0] in _TLS_TYPES and data[1] == 3


# ---------------------------------------------------------------------------------------------
# The decoder


class Decoder:
    """Packets in, `Shown` items out. One instance per capture (it holds the TCP streams).

    `verdict` marks what the fast path drops (None: no marking). `non_sip` shows UDP payloads
    that are not SIP (live, on the SIP ports: worth seeing); `verbose` adds a line per TLS
    record and per keepalive.
    """

    def __init__(
        self, *, verdict: Verdict | None = None, non_sip: bool = True, verbose: bool = False
    ) -> None:
        self.verdict = verdict
        self.non_sip = non_sip
        self.verbose = verbose
        self._defrag = Defragmenter()
        self._flows: OrderedDict[tuple[Address, Address], _Flow] = OrderedDict()

    def feed(self, pkt: Packet) -> list[Shown]:
        ip = _parse_ip(pkt.l3)
        if ip is None or ip.proto not in (_PROTO_TCP, _PROTO_UDP):
            return []
        payload: bytes | None = ip.payload
        if ip.frag is not None:
            payload = self._defrag.feed(pkt.ts, ip)
            if payload is None:
                return []
        seg = _segment(pkt.ts, ip, payload)
        if seg is None:
            return []
        mark = self.verdict(seg, pkt.iface, pkt.incoming) if self.verdict else ""
        if seg.proto == "udp":
            return self._udp(seg, mark, pkt.decrypted)
        if mark:  # the relay never sees it: nothing to reassemble
            flags = "SYN" if seg.flags & _TCP_SYN else f"{len(seg.payload)} bytes"
            return [Shown(seg.ts, seg.src, seg.dst, TCP, kind="note", summary=flags, mark=mark)]
        return self._tcp(seg)

    def _udp(self, seg: Segment, mark: str, decrypted: bool) -> list[Shown]:
        data = seg.payload
        transport = DECRYPTED if decrypted else UDP
        if data and not data.strip(b"\r\n"):
            if self.verbose or mark:
                return [self._note(seg, transport, "keepalive", mark)]
            return []
        if _SIP_START.match(data):
            return [Shown(seg.ts, seg.src, seg.dst, transport, data, mark=mark)]
        if self.non_sip or mark:
            return [Shown(seg.ts, seg.src, seg.dst, transport, data, kind="payload", mark=mark)]
        return []

    @staticmethod
    def _note(seg: Segment, transport: str, summary: str, mark: str = "") -> Shown:
        return Shown(seg.ts, seg.src, seg.dst, transport, kind="note", summary=summary, mark=mark)

    def _tcp(self, seg: Segment) -> list[Shown]:
        key = (seg.src, seg.dst)
        flow = self._flows.get(key)
        if flow is None:
            if len(self._flows) >= MAX_FLOWS:
                self._flows.popitem(last=False)
            flow = self._flows[key] = _Flow()
        else:
            self._flows.move_to_end(key)
        out: list[Shown] = []
        if seg.flags & _TCP_SYN:
            flow.lose_sync()
            flow.next_seq = (seg.seq + 1) % _SEQ_MOD
        elif seg.payload:
            starts = _SIP_START.match(seg.payload) or _starts_tls(seg.payload)
            if flow.next_seq is None and starts:
                flow.next_seq = seg.seq
            if flow.next_seq is not None:
                out = self._stream(flow, seg)
        if seg.flags & (_TCP_FIN | _TCP_RST):
            self._flows.pop(key, None)
        return out

    def _stream(self, flow: _Flow, seg: Segment) -> list[Shown]:
        assert flow.next_seq is not None
        ahead = _seq_diff(seg.seq, flow.next_seq)
        if ahead > 0:  # a gap: hold this until the missing bytes come
            if seg.seq not in flow.pending:
                flow.pending[seg.seq] = seg.payload
                flow.pending_bytes += len(seg.payload)
            if flow.pending_bytes > MAX_PENDING:
                flow.lose_sync()  # the gap never filled: pick up at the next message start
            return []
        data = bytearray(seg.payload[-ahead:])  # a retransmission's old bytes cut off
        flow.next_seq = (flow.next_seq + len(data)) % _SEQ_MOD
        while flow.pending:  # what was waiting for this segment
            ready = [s for s in flow.pending if _seq_diff(s, flow.next_seq) <= 0]
            if not ready:
                break
            for s in ready:
                chunk = flow.pending.pop(s)
                flow.pending_bytes -= len(chunk)
                skip = -_seq_diff(s, flow.next_seq)
                if skip < len(chunk):
                    data += chunk[skip:]
                    flow.next_seq = (flow.next_seq + len(chunk) - skip) % _SEQ_MOD
        if not data:
            return []
        if not flow.kind:
            flow.kind = "tls" if _starts_tls(bytes(data[:3])) else "sip"
        if flow.kind == "tls":
            return self._tls(flow, seg, bytes(data))
        return self._sip_stream(flow, seg, bytes(data))

    def _sip_stream(self, flow: _Flow, seg: Segment, data: bytes) -> list[Shown]:
        out: list[Shown] = []
        try:
            flow.framer.feed(data)
            while (event := flow.framer.next_event()) is not None:
                if isinstance(event, bytes):
                    out.append(Shown(seg.ts, seg.src, seg.dst, TCP, event))
                elif self.verbose:
                    out.append(self._note(seg, TCP, "keepalive"))
        except SipProtocolError as e:
            flow.lose_sync()
            if self.verbose:
                out.append(self._note(seg, TCP, f"not SIP ({e.reason}): skipped to the next"))
        return out

    def _tls(self, flow: _Flow, seg: Segment, data: bytes) -> list[Shown]:
        buf = flow.tls
        buf += data
        out: list[Shown] = []
        while len(buf) >= 5:
            rtype, major, length = buf[0], buf[1], int.from_bytes(buf[3:5], "big")
            if rtype not in _TLS_TYPES or major != 3:
                flow.lose_sync()
                break
            if len(buf) < 5 + length:
                break
            del buf[: 5 + length]
            if self.verbose:
                summary = f"{_TLS_TYPES[rtype]}, {length} bytes (encrypted)"
                out.append(self._note(seg, TLS, summary))
        return out


def _segment(ts: float, ip: _Ip, payload: bytes) -> Segment | None:
    if ip.proto == _PROTO_UDP:
        if len(payload) < 8:
            return None
        sport, dport, length = struct.unpack_from("!HHH", payload)
        end = length if 8 <= length <= len(payload) else len(payload)
        return Segment(
            ts, "udp", (ip.src, sport), (ip.dst, dport), payload[8:end], probed=ip.probed
        )
    if len(payload) < 20:
        return None
    sport, dport, seq, _ack, offset, flags = struct.unpack_from("!HHIIBB", payload)
    return Segment(
        ts,
        "tcp",
        (ip.src, sport),
        (ip.dst, dport),
        payload[(offset >> 4) * 4 :],
        seq,
        flags,
        ip.probed,
    )


def shown_from_tap(rec: TapRecord) -> Shown:
    """A relay tap record (a TLS leg in clear) as a message to show."""
    return Shown(rec.ts, rec.src, rec.dst, DECRYPTED, rec.data)


# ---------------------------------------------------------------------------------------------
# Filters and display

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CALL_ID = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
_CSEQ = re.compile(rb"^cseq[ \t]*:[ \t]*\d+[ \t]+(\S+)", re.IGNORECASE | re.MULTILINE)


def _head(data: bytes) -> bytes:
    end = _HEAD_END.search(data)
    return data[: end.start()] if end else data


def call_id(data: bytes) -> str | None:
    """The Call-ID of a SIP message (compact form `i` too), or None."""
    match = _CALL_ID.search(_head(data))
    return match.group(1).decode("utf-8", "replace") if match else None


def is_options(data: bytes) -> bool:
    """An OPTIONS request, or a response to one (by its CSeq method)."""
    if data.startswith(b"OPTIONS "):
        return True
    if data.startswith(b"SIP/2.0 "):
        match = _CSEQ.search(_head(data))
        return bool(match and match.group(1).upper() == b"OPTIONS")
    return False


@dataclass(frozen=True, slots=True)
class Filter:
    """What to show: by port (either end), by Call-ID, and without OPTIONS keepalives."""

    ports: frozenset[int] | None = None
    call_id: str | None = None
    no_options: bool = False

    def accepts(self, item: Shown) -> bool:
        if self.ports is not None and not {item.src[1], item.dst[1]} & self.ports:
            return False
        if self.call_id is not None and (item.kind != "sip" or call_id(item.data) != self.call_id):
            return False
        return not (self.no_options and item.kind == "sip" and is_options(item.data))


class Display:
    """Applies the filter and the message count (-c), then formats what passes."""

    def __init__(self, flt: Filter, limit: int | None = None, tz: tzinfo | None = None) -> None:
        self.filter = flt
        self.limit = limit
        self.tz = tz
        self.shown = 0  # messages and payloads shown (notes do not count)

    @property
    def done(self) -> bool:
        return self.limit is not None and self.shown >= self.limit

    def render(self, items: Iterable[Shown]) -> list[str]:
        out = []
        for item in items:
            if self.done:
                break
            if not self.filter.accepts(item):
                continue
            if item.kind != "note":
                self.shown += 1
            out.append(format_shown(item, self.tz))
        return out


# C0 but tab and newline, DEL, C1 (a terminal takes \x9b as CSI), the Unicode line
# separators, and the bidi controls that reorder what an operator reads
_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def render_text(data: bytes) -> str:
    """A message as text, like `tcpdump -A`: CRLF as newlines, other control characters (C1
    and bidi ones too) as '.'."""
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    return _CONTROL.sub(".", text).rstrip("\n")


def format_time(ts: float, tz: tzinfo | None = None) -> str:
    """Time of day with microseconds, local time unless `tz` is given (as tcpdump)."""
    return datetime.fromtimestamp(ts, tz).strftime("%H:%M:%S.%f")


def format_shown(item: Shown, tz: tzinfo | None = None) -> str:
    """A header line, then the message text and a blank line (notes: the header line only)."""
    summary = item.summary or f"{len(item.data)} bytes"
    if item.kind == "payload":
        summary += ", not SIP"
    line = (
        f"{format_time(item.ts, tz)} {format_address(item.src)} → {format_address(item.dst)} "
        f"{item.transport}, {summary}"
    )
    if item.mark:
        line += f" [{item.mark}]"
    if item.kind == "note":
        return line
    return f"{line}\n{render_text(item.data)}\n"


class Reorder:
    """Holds items for `window` seconds so that two sources (the sniffer and the relay's tap)
    come out in timestamp order; `window` 0 passes items straight through."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._heap: list[tuple[float, int, Shown]] = []
        self._n = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, items: Iterable[Shown]) -> None:
        for item in items:
            self._n += 1
            heapq.heappush(self._heap, (item.ts, self._n, item))

    def pop_ready(self, now: float) -> list[Shown]:
        out = []
        while self._heap and self._heap[0][0] <= now - self.window:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def flush(self) -> list[Shown]:
        return [heapq.heappop(self._heap)[2] for _ in range(len(self._heap))]


# ---------------------------------------------------------------------------------------------
# Capture files and the kernel filter

LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP = 0, 1, 101, 108
LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2 = 113, 228, 229, 276
DLT_RAW = (12, 14)  # what libpcap calls raw IP on Linux and on OpenBSD
PACKET_HOST, PACKET_OUTGOING = 0, 4  # sll_pkttype (linux/if_packet.h)
ARPHRD_LOOPBACK, ARPHRD_NONE = 772, 0xFFFE
# The link-layer address of synthetic packets written for tap records: `-r` shows them as
# decrypted TLS again, and Wireshark shows the address as 43:54:41:50 ("CTAP").
TAP_ADDRESS = b"CTAP"
_ETHERTYPES = {0x0800, 0x86DD}
_VLAN = {0x8100, 0x88A8, 0x9100}
_SLL = struct.Struct("!HHH8sH")


def sll_header(pkttype: int, hatype: int, addr: bytes, ethertype: int) -> bytes:
    """The Linux "cooked" header (LINKTYPE_LINUX_SLL) tcpdump -i any writes."""
    return _SLL.pack(pkttype, hatype, len(addr[:8]), addr[:8].ljust(8, b"\0"), ethertype)


def ethertype_of(l3: bytes) -> int:
    return 0x86DD if l3 and l3[0] >> 4 == 6 else 0x0800


def packet_from_frame(linktype: int, frame: bytes, ts: float) -> Packet | None:
    """The IP packet in a frame of a capture file, or None when it carries none."""
    if linktype == LINKTYPE_LINUX_SLL and len(frame) >= 16:
        pkttype, hatype, halen, addr, proto = _SLL.unpack_from(frame)
        if proto not in _ETHERTYPES:
            return None
        tap = hatype == ARPHRD_NONE and addr[:halen] == TAP_ADDRESS
        return Packet(ts, frame[16:], incoming=pkttype != PACKET_OUTGOING, decrypted=tap)
    if linktype == LINKTYPE_LINUX_SLL2 and len(frame) >= 20:
        proto, pkttype = struct.unpack_from("!H", frame)[0], frame[10]
        if proto not in _ETHERTYPES:
            return None
        return Packet(ts, frame[20:], incoming=pkttype != PACKET_OUTGOING)
    if linktype == LINKTYPE_ETHERNET:
        off = 12
        while len(frame) >= off + 2:
            (proto,) = struct.unpack_from("!H", frame, off)
            if proto in _VLAN:
                off += 4
                continue
            return Packet(ts, frame[off + 2 :]) if proto in _ETHERTYPES else None
        return None
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return Packet(ts, frame[4:])
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, *DLT_RAW):
        return Packet(ts, frame)
    raise ValueError(f"link type {linktype} is not supported (Ethernet, Linux cooked, raw IP)")


def bpf_expression(ports: Iterable[int]) -> str:
    """The kernel filter (pcap syntax, raw IP): TCP and UDP to or from `ports`, and the IP
    fragments after the first, which carry no ports but belong to a datagram that may."""
    either = " or ".join(f"port {p}" for p in sorted(set(ports)))
    return (
        f"((udp or tcp) and ({either})) or (ip and ip[6:2] & 0x1fff != 0) or (ip6 and ip6[6] == 44)"
    )
