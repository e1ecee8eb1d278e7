"""`clearipctl capture`: tcpdump for SIP, live or from a pcap file (SPEC §2, §6).

The I/O half: AF_PACKET sockets with a kernel port filter, pcap files (scapy), the relay's tap
for the TLS legs, the fast path's pinned maps, signals. clearip.sipcap does the rest sans-IO
(IP and TCP reassembly, SIP framing, fast-path marks, filters, the printed lines).

Sniffing uses SOCK_DGRAM packet sockets (what `tcpdump -i any` does): every interface gives
the packet from its IP header on, with the interface, direction and link type beside it, so one
kernel filter compiled for raw IP serves all, and the file written is LINUX_SLL like tcpdump's.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any, TextIO

from clearip.config import Config
from clearip.ctlsock import ControlError, NotRunning, request
from clearip.relay.events import PRIVATE_PORT_OFFSET
from clearip.relay.tap import TapReader, TapRecord
from clearip.sipcap import (
    ARPHRD_LOOPBACK,
    ARPHRD_NONE,
    DLT_RAW,
    LINKTYPE_LINUX_SLL,
    PACKET_HOST,
    PACKET_OUTGOING,
    TAP_ADDRESS,
    Decoder,
    Display,
    FastPathRules,
    Filter,
    Packet,
    Reorder,
    bpf_expression,
    ethertype_of,
    packet_from_frame,
    shown_from_tap,
    sll_header,
)
from clearip.trust import TrustList, normal_address

NEED_ROOT = "capturing packets needs root or CAP_NET_RAW: run it as root (sudo clearipctl capture)"
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26  # asm-generic/socket.h
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # also the SCM_ type of its cmsg
_TIMESPEC = struct.Struct("@qq")
SOL_PACKET, PACKET_STATISTICS = 263, 6  # linux/socket.h, linux/if_packet.h
_STATS = struct.Struct("@II")  # struct tpacket_stats {tp_packets, tp_drops}
MAX_FRAME = 256 * 1024  # GRO/TSO aggregates are larger than the MTU
RECV_BUFFER = 8 * 1024 * 1024
READ_BATCH = 256  # packets taken from one socket before looking at the others
TICK = 0.1  # seconds between checks of Ctrl-C and the reorder window
REORDER_WINDOW = 0.25  # how long sniffed and tapped messages wait to be put in time order
TRUSTED_REFRESH = 1.0  # seconds a read of the kernel's trusted list is reused
PINHOLES_REFRESH = 0.02  # ... and of its pinholes (read only for a source not trusted)

EPILOG = """\
examples:
  clearipctl capture                          every SIP message on the proxy's ports
  clearipctl capture -i eth0 --no-options     one interface, without OPTIONS pings
  clearipctl capture --call-id 3f2a9c@10.0.0.5 -c 20
  clearipctl capture -w /tmp/sip.pcap         print and save (tshark -r /tmp/sip.pcap -Y sip)
  clearipctl capture -r /tmp/sip.pcap --call-id 3f2a9c@10.0.0.5
  clearipctl capture --decrypted -w /tmp/sip.pcap
                                              also the TLS legs (switch, ClearIP) in clear

Ports: by default the proxy's listeners (listen.udp, .tcp, .tls), the relay workers' own UDP
ports (each UDP listener port + 10 + worker index) and ClearIP's port; --port replaces them.
A saved capture (-r) is read whole unless --port is given.

Fast path: a packet the kernel fast path drops (SPEC §5) is still seen here, since the capture
sees it before the tc classifier runs; it is marked [fast path: drop untrusted] or [fast path:
drop non-SIP]. Marks need the running proxy with its fast path on.

TLS: the encrypted legs show nothing (-v: one line per TLS record). --decrypted asks the
running relay for a copy of every TLS message in clear, shown as "TLS (decrypted)" and saved
with -w as UDP packets with the same addresses and ports; Wireshark decodes UDP 5060 as SIP by
itself, other ports need decode-as: tshark -r FILE -d udp.port==5061,sip -Y sip

-w saves every packet on the ports (--call-id, --no-options and -c only change what is
printed). Live capture needs root or CAP_NET_RAW. Ctrl-C stops it (exit status 0).
"""


class CaptureError(Exception):
    """A failure to report as one line (clearipctl prints it and exits 1)."""


# ---------------------------------------------------------------------------------------------
# Arguments


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "-i", "--interface", dest="interfaces", action="append", metavar="IFACE",
        help="capture on IFACE (repeatable); default: every interface, like tcpdump -i any",
    )  # fmt: skip
    parser.add_argument(
        "--port", dest="ports", action="append", type=_port, metavar="N",
        help="only UDP/TCP port N, either end (repeatable); default: the proxy's ports",
    )  # fmt: skip
    parser.add_argument("--call-id", metavar="ID", help="only the messages of this Call-ID")
    parser.add_argument(
        "--no-options", action="store_true", help="hide OPTIONS requests and their responses"
    )
    parser.add_argument(
        "-c", "--count", type=_count, metavar="N", help="stop after N messages shown"
    )
    parser.add_argument("-w", "--write", metavar="FILE", help="also save the packets to a pcap")
    parser.add_argument("-r", "--read", metavar="FILE", help="print a saved pcap/pcapng capture")
    parser.add_argument(
        "--decrypted", action="store_true",
        help="also show the TLS legs in clear, from the running relay's own tap",
    )  # fmt: skip
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also a line per TLS record and keepalive"
    )


def run(args: argparse.Namespace) -> int:
    from clearip.cmdutil import CommandError, load

    _path, config = load(args)
    try:
        with _StopOnSignal() as stop:
            if args.read:
                return _read(args, stop)
            return _live(args, config, stop)
    except CaptureError as e:
        raise CommandError(str(e)) from None


class _StopOnSignal:
    """Ctrl-C (or SIGTERM) ends the capture cleanly: the loop sees the flag within a TICK."""

    def __init__(self) -> None:
        self.stopped = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.stopped = True

    def __enter__(self) -> _StopOnSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _emit(out: TextIO, lines: list[str]) -> None:
    for line in lines:
        out.write(line + "\n")
    if lines:
        out.flush()  # line by line, so `| grep` and a log file follow live


# ---------------------------------------------------------------------------------------------
# Reading a saved capture


def _frames(path: str) -> Iterator[tuple[int, float, bytes]]:
    """(link type, timestamp, frame) of each packet of a pcap or pcapng file."""
    from scapy.error import Scapy_Exception
    from scapy.utils import RawPcapNgReader, RawPcapReader

    try:
        reader = RawPcapReader(path)  # a pcapng file gives a RawPcapNgReader
    except FileNotFoundError:
        raise CaptureError(f"{path}: no such file") from None
    except OSError as e:
        raise CaptureError(f"{path}: {e.strerror or e}") from None
    except Scapy_Exception as e:
        raise CaptureError(f"{path}: not a pcap or pcapng capture ({e})") from None
    with reader:
        for frame, meta in reader:
            if isinstance(reader, RawPcapNgReader):
                ts = ((meta.tshigh << 32) + meta.tslow) / meta.tsresol
                yield meta.linktype, ts, frame
            else:
                ts = meta.sec + meta.usec / (1e9 if reader.nano else 1e6)
                yield reader.linktype, ts, frame


def _read(args: argparse.Namespace, stop: _StopOnSignal) -> int:
    for given, flag in (
        (args.write, "-w"),
        (args.interfaces, "-i"),
        (args.decrypted, "--decrypted"),
    ):
        if given:
            raise CaptureError(f"-r reads a saved capture: {flag} applies to a live one only")
    ports = frozenset(args.ports) if args.ports else None
    # Without --port the file is read whole: only what looks like SIP is shown.
    decoder = Decoder(non_sip=ports is not None, verbose=args.verbose)
    display = Display(Filter(ports, args.call_id, args.no_options), args.count)
    for linktype, ts, frame in _frames(args.read):
        if stop.stopped or display.done:
            break
        try:
            pkt = packet_from_frame(linktype, frame, ts)
        except ValueError as e:
            raise CaptureError(f"{args.read}: {e}") from None
        if pkt is not None:
            _emit(sys.stdout, display.render(decoder.feed(pkt)))
    return 0


# ---------------------------------------------------------------------------------------------
# Live


def default_ports(config: Config, workers: int) -> set[int]:
    """The listeners, the relay workers' own UDP ports, and ClearIP's port."""
    listen = config.listen
    ports = {p.port for p in (*listen.udp, *listen.tcp, *listen.tls)}
    ports |= {
        p.port + PRIVATE_PORT_OFFSET + i
        for p in listen.udp
        for i in range(workers)
        if p.port + PRIVATE_PORT_OFFSET + i <= 65535
    }
    ports.add(config.clearip.port)
    return ports


def _proxy_status(config: Config) -> tuple[dict[str, Any] | None, str]:
    """The running proxy's status, or None and why there is none."""
    try:
        status = request(config.control.socket, "status")
    except NotRunning:
        return None, "the proxy is not running"
    except ControlError as e:
        return None, str(e)
    if not isinstance(status, dict):
        return None, "bad status reply from the proxy"
    return status, ""


class _KernelView:
    """Whom the running fast path admits, read from its pinned maps (trusted or pinholed)."""

    def __init__(self, maps: Any) -> None:
        self.maps = maps
        self._trust = TrustList()
        self._trusted_at = -1e9
        self._holes: dict[str, float] = {}
        self._holes_at = -1e9
        self._local: frozenset[str] = frozenset()
        self._local_at = -1e9

    def local(self, ip: str) -> bool:
        """Is `ip` a destination the classifier judges: one of the proxy's own addresses, any
        multicast or limited broadcast, or any at all while it knows none (fails closed)."""
        now = time.monotonic()
        try:
            if now - self._local_at >= TRUSTED_REFRESH:
                self._local = frozenset(self.maps.local_addresses())
                self._local_at = now
        except OSError:
            return True
        if not self._local or ip in self._local:
            return True
        addr = normal_address(ip)
        return addr is None or addr.is_multicast or str(addr) == "255.255.255.255"

    def admitted(self, ip: str) -> bool:
        now = time.monotonic()
        try:
            if now - self._trusted_at >= TRUSTED_REFRESH:
                self._trust.set(ipaddress.ip_network(c) for c in self.maps.trusted())
                self._trusted_at = now
            if ip in self._trust:
                return True
            # Pinholes open and close with calls: re-read them (rarely: only for a stranger).
            if now - self._holes_at >= PINHOLES_REFRESH:
                self._holes = self.maps.pinholes()
                self._holes_at = now
        except OSError:
            return True  # the maps went away (proxy stopped): no mark rather than a wrong one
        return ip in self._holes


def _fastpath_rules(
    config: Config, status: dict[str, Any] | None, why: str
) -> tuple[FastPathRules | None, Any, str]:
    """The rules to mark drops with and the maps to close after, or None and why not."""
    if status is None:
        return None, None, why
    fastpath = status.get("fastpath") or {}
    if not fastpath.get("enabled"):
        return None, None, f"the fast path is off: {fastpath.get('reason') or 'no reason given'}"
    from clearip.fastpath.errors import FastPathError
    from clearip.fastpath.maps import open_pinned

    # The kernel's own lists, not the config's: what the classifier really applies, pinholes
    # included, and the same after an `allow` or a reload.
    try:
        maps = open_pinned(config.fastpath.name)
    except (FastPathError, OSError, ValueError) as e:
        return None, None, f"cannot read the fast path's maps: {e}"
    try:
        guarded = maps.sip_ports()
    except OSError as e:
        maps.close()
        return None, None, f"cannot read the fast path's maps: {e}"
    view = _KernelView(maps)
    rules = FastPathRules(
        udp_ports=frozenset(port for proto, port in guarded if proto == "udp"),
        tcp_ports=frozenset(port for proto, port in guarded if proto == "tcp"),
        interfaces=frozenset(fastpath.get("interfaces") or ()),
        admitted=view.admitted,
        local=view.local,
    )
    return rules, maps, ""


def _compile(expression: str) -> tuple[Any, Any]:
    """The kernel filter program (struct sock_fprog) for raw IP, compiled by libpcap."""
    from scapy.arch.common import compile_filter
    from scapy.error import Scapy_Exception
    from scapy.libs.structures import sock_fprog

    try:
        program = compile_filter(expression, linktype=DLT_RAW[0])
    except ImportError:
        raise CaptureError("the port filter needs libpcap: apt-get install libpcap0.8") from None
    except Scapy_Exception as e:
        raise CaptureError(f"bad filter {expression!r}: {e}") from None
    return program, sock_fprog(program.bf_len, program.bf_insns)


class _Sniffer:
    """One AF_PACKET socket: one interface, or all of them (iface None)."""

    def __init__(self, iface: str | None, fprog: Any) -> None:
        self.iface = iface
        # One interface: protocol 0 queues nothing until bind(), which comes after the filter.
        # Every interface: there is no bind (Python cannot name ifindex 0), so what arrived
        # before the filter was attached is drained below.
        proto = 0 if iface else socket.htons(ETH_P_ALL)
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, proto)
        except PermissionError:
            raise CaptureError(NEED_ROOT) from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            for opt in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, RECV_BUFFER)
                    break
            if iface:
                sock.bind((iface, ETH_P_ALL))
        except OSError as e:
            sock.close()
            if e.errno == errno.ENODEV:
                raise CaptureError(f"no interface {iface!r} (see `ip link`)") from None
            raise CaptureError(f"capture on {iface or 'any'}: {e.strerror or e}") from None
        sock.setblocking(False)
        if not iface:
            with contextlib.suppress(BlockingIOError):
                while True:
                    sock.recv(1)
        self.sock = sock
        self._buf = bytearray(MAX_FRAME)
        self._cmsg = socket.CMSG_SPACE(_TIMESPEC.size)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[tuple[Packet, bytes]]:
        """The packets waiting, each with its frame for the pcap file (LINUX_SLL)."""
        out = []
        for _ in range(READ_BATCH):
            try:
                size, ancdata, _flags, addr = self.sock.recvmsg_into([self._buf], self._cmsg)
            except (BlockingIOError, InterruptedError):
                break
            ifname, _proto, pkttype, hatype, haddr = addr
            if pkttype == PACKET_OUTGOING and hatype == ARPHRD_LOOPBACK:
                continue  # loopback: the same packet comes back in as incoming
            ts = None
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack_from(data)
                    ts = sec + nsec / 1e9
            l3 = bytes(self._buf[:size])
            pkt = Packet(ts or time.time(), l3, ifname, pkttype != PACKET_OUTGOING)
            out.append((pkt, sll_header(pkttype, hatype, haddr, ethertype_of(l3)) + l3))
        return out

    def dropped(self) -> int:
        """Packets the kernel dropped because this socket's buffer was full (tcpdump's
        "dropped by kernel"), since the last call."""
        try:
            raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
        except OSError:
            return 0
        return int(_STATS.unpack(raw)[1])

    def close(self) -> None:
        self.sock.close()


class _PcapOut:
    """-w: packets as tcpdump -i any writes them (LINUX_SLL), flushed as they come."""

    def __init__(self, path: str) -> None:
        from scapy.utils import PcapWriter

        try:
            self.writer = PcapWriter(
                path, linktype=LINKTYPE_LINUX_SLL, sync=True, snaplen=MAX_FRAME
            )
        except OSError as e:
            raise CaptureError(f"cannot write {path}: {e.strerror or e}") from None
        self.writer.write_header(None)  # a capture with no packet is still a valid file
        self.path = path
        self.written = 0

    def write(self, frame: bytes, ts: float) -> None:
        sec, usec = divmod(round(ts * 1e6), 1_000_000)
        self.writer.write_packet(frame, sec=sec, usec=usec)
        self.written += 1

    def write_tap(self, rec: TapRecord) -> None:
        """A decrypted message as a UDP packet with its addresses and ports, so Wireshark
        decodes it as SIP; its link-layer address (TAP_ADDRESS) tells `-r` what it was."""
        from scapy.layers.inet import IP, UDP
        from scapy.layers.inet6 import IPv6
        from scapy.packet import Raw

        ip: Any = IPv6 if ":" in rec.src[0] else IP
        udp = UDP(sport=rec.src[1], dport=rec.dst[1]) / Raw(rec.data)
        try:
            l3 = bytes(ip(src=rec.src[0], dst=rec.dst[0]) / udp)
        except struct.error:  # larger than an IP packet can be: not representable as UDP
            return
        pkttype = PACKET_OUTGOING if rec.direction == "out" else PACKET_HOST
        self.write(sll_header(pkttype, ARPHRD_NONE, TAP_ADDRESS, ethertype_of(l3)) + l3, rec.ts)

    def close(self) -> None:
        self.writer.close()


def _remove_stale_sockets(directory: str) -> None:
    """Sockets of earlier captures killed before they could clean up (SIGKILL): their PID is
    gone. The relay has already dropped their taps; only the files are left."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith("capture-") and name.endswith(".sock")):
            continue
        pid = name[len("capture-") : -len(".sock")]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
        except PermissionError:
            pass  # alive, someone else's


class _Tap:
    """--decrypted: the relay copies its TLS messages to our socket until untap."""

    def __init__(self, config: Config) -> None:
        self.control = config.control.socket
        directory = os.path.dirname(self.control)
        _remove_stale_sockets(directory)
        self.path = os.path.join(directory, f"capture-{os.getpid()}.sock")
        try:
            self.reader = TapReader(self.path)
        except OSError as e:
            raise CaptureError(f"--decrypted: cannot bind {self.path}: {e.strerror or e}") from None
        try:
            reply = request(self.control, "tap", path=self.path, transports=["tls"])
        except ControlError as e:
            self.reader.close()
            raise CaptureError(f"--decrypted: the relay refused the tap: {e}") from None
        self.workers = int(reply.get("workers", 0)) if isinstance(reply, dict) else 0

    def fileno(self) -> int:
        return self.reader.fileno()

    def read(self) -> list[TapRecord]:
        out = []
        while len(out) < READ_BATCH and (rec := self.reader.read(0)) is not None:
            out.append(rec)
        return out

    def close(self) -> None:
        try:
            request(self.control, "untap", path=self.path)
        except ControlError:
            pass  # the relay forgets a tap whose socket is gone on its own
        finally:
            self.reader.close()


def _live(args: argparse.Namespace, config: Config, stop: _StopOnSignal) -> int:
    status, why = _proxy_status(config)
    if args.decrypted and status is None:
        raise CaptureError(f"--decrypted needs the running proxy to decrypt for it: {why}")
    workers = len(status.get("workers") or ()) if status else 0
    ports = set(args.ports or default_ports(config, workers or config.relay.effective_workers()))
    program, fprog = _compile(bpf_expression(ports))
    sniffers: list[_Sniffer] = []
    maps: Any = None
    tap: _Tap | None = None
    pcap: _PcapOut | None = None
    try:
        try:
            for iface in args.interfaces or [None]:
                sniffers.append(_Sniffer(iface, fprog))
        finally:
            from scapy.arch.common import free_filter

            free_filter(program)  # the kernel has its own copy
        rules, maps, why_not = _fastpath_rules(config, status, why)
        if rules is None:
            print(f"fast-path marks off: {why_not}", file=sys.stderr)
        if args.write:
            pcap = _PcapOut(args.write)
        if args.decrypted:
            tap = _Tap(config)
        where = ", ".join(args.interfaces or ["any"])
        also = f"; TLS in clear from {tap.workers} relay workers" if tap else ""
        print(
            f"capturing SIP on {where}, ports {_ranges(ports)}{also}; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        decoder = Decoder(verdict=rules.verdict if rules else None, verbose=args.verbose)
        display = Display(Filter(frozenset(ports), args.call_id, args.no_options), args.count)
        captured = _loop(sniffers, tap, pcap, decoder, display, stop)
    finally:
        dropped = sum(sniffer.dropped() for sniffer in sniffers)
        for sniffer in sniffers:
            sniffer.close()
        if tap is not None:
            tap.close()
        if pcap is not None:
            pcap.close()
        if maps is not None:
            maps.close()
    saved = f", {pcap.written} written to {pcap.path}" if pcap else ""
    lost = f", {dropped} dropped by the kernel (the capture fell behind)" if dropped else ""
    print(
        f"{display.shown} message{'' if display.shown == 1 else 's'} shown, "
        f"{captured} packets captured{lost}{saved}",
        file=sys.stderr,
    )
    return 0


def _loop(
    sniffers: list[_Sniffer],
    tap: _Tap | None,
    pcap: _PcapOut | None,
    decoder: Decoder,
    display: Display,
    stop: _StopOnSignal,
) -> int:
    """Reads until Ctrl-C or the -c count; how many packets were captured."""
    # One source needs no reordering; with the tap, messages wait a moment for the other.
    reorder = Reorder(REORDER_WINDOW if tap else 0.0)
    sources: list[Any] = [*sniffers, *([tap] if tap else [])]
    captured = 0
    while not stop.stopped and not display.done:
        ready, _, _ = select.select(sources, [], [], TICK)
        for source in ready:
            if source is tap:
                for rec in tap.read():
                    if pcap is not None:
                        pcap.write_tap(rec)
                    reorder.push([shown_from_tap(rec)])
                continue
            for pkt, frame in source.read():
                captured += 1
                if pcap is not None:
                    pcap.write(frame, pkt.ts)
                reorder.push(decoder.feed(pkt))
        _emit(sys.stdout, display.render(reorder.pop_ready(time.time())))
    if not display.done:
        _emit(sys.stdout, display.render(reorder.flush()))
    return captured


def _ranges(ports: set[int]) -> str:
    """5060, 5061, 5070-5073: runs of ports shortened."""
    out: list[str] = []
    for port in sorted(ports):
        if out and out[-1].split("-")[-1] == str(port - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{port}"
        else:
            out.append(str(port))
    return ", ".join(out)
