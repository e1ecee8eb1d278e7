"""Per-call cost of the sans-IO proxy core: whole calls through ProxyCore, no sockets.

The call-rate benchmark (bench_calls.py) measures the relay with its syscalls, the event loop
and SIPp sharing the machine; this one isolates the Python the relay runs per call, so a change
to the core can be judged in seconds. Each call is the anchor's ok flow: INVITE from the
switch, 302 from ClearIP (Identity, two Contacts), 100/180/200 from provider A, the switch's
ACK and BYE, A's 200 to the BYE; `--failover` adds a 503 from A and the same answers from B.
The peers' messages are built outside the timed region; only `receive`, the timers and
`data_to_send` are timed. Run by `make bench`. Figures, not assertions.

    .venv/bin/python tools/bench_core.py [--calls N] [--failover] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import platform
import pstats
import time

from clearip.config import parse_config
from clearip.relay.core import ProxyCore
from clearip.relay.counters import Counters
from clearip.relay.events import Address, Flow, Send
from clearip.sip.message import Request, parse_message

PROXY = ("10.0.0.1", 5060)
SWITCH = ("10.0.0.11", 5060)
CLEARIP = ("10.0.0.2", 5061)
PROV_A = ("10.0.0.13", 5060)
PROV_B = ("10.0.0.14", 5060)
LINK = 1

CONFIG = """
[listen]
udp = ["10.0.0.1:5060"]
tcp = ["10.0.0.1:5060"]
tls = []
[clearip]
uri = "sip:10.0.0.2:5061;transport=tcp"
[trust]
sources = ["10.0.0.0/24"]
[fastpath]
enabled = false
"""

IDENTITY = (
    "eyJhbGciOiJFUzI1NiIsInBwdCI6InNoYWtlbiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly9jci5l"
    "eGFtcGxlLm9yZy9jZXJ0LnBlbSJ9.eyJhdHRlc3QiOiJBIiwiZGVzdCI6eyJ0biI6WyIxMjAyNTU1MDEyMyJdfSwi"
    "aWF0IjoxNzMyNzgwODAwLCJvcmlnIjp7InRuIjoiMTMwMzU1NTAxOTkifSwib3JpZ2lkIjoiNDQzN2M3ZWIifQ."
    "c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl"
    ";info=<https://cr.example.org/cert.pem>;alg=ES256;ppt=shaken"
)
SDP = (
    b"v=0\r\no=switch 53655765 2353687637 IN IP4 10.0.0.11\r\ns=-\r\nc=IN IP4 10.0.0.11\r\n"
    b"t=0 0\r\nm=audio 6000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
)


class Env:
    def via_address(self, transport: str, dest_host: str) -> Address:
        return ("10.0.0.1", 5070 if transport == "udp" else 5060)

    def rr_address(self, transport: str, peer_host: str) -> Address:
        return PROXY

    def is_local(self, host: str, port: int | None) -> bool:
        return host == "10.0.0.1" and port in (None, 5060, 5070)

    def is_trusted(self, ip: str) -> bool:
        return ip.startswith("10.0.0.")

    def pinhole(self, host: str, is_open: bool) -> None:
        pass


def invite(n: int) -> bytes:
    head = (
        f"INVITE sip:+12025550123@10.0.0.1:5060;user=phone SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.11:5060;branch=z9hG4bK-{n}-1-0\r\n"
        f"From: <sip:+13035550199@10.0.0.11:5060;user=phone>;tag={n}SW1\r\n"
        f"To: <sip:+12025550123@10.0.0.1:5060;user=phone>\r\n"
        f"Call-ID: {n}-4711@10.0.0.11\r\n"
        f"CSeq: 1 INVITE\r\n"
        f"Contact: <sip:+13035550199@10.0.0.11:5060;transport=UDP>\r\n"
        f"Max-Forwards: 70\r\n"
        f"Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n"
    )
    return head.encode() + SDP


def answer(req: Request, status: int, reason: str, extra: str = "", tag: str = "uas") -> bytes:
    """What a UAS answers: Vias, From, To (+tag), Call-ID, CSeq, and the Record-Route."""
    lines = [f"SIP/2.0 {status} {reason}"]
    for key, line in req.header_lines():
        if key in ("via", "from", "call-id", "cseq", "record-route"):
            lines.append(line.decode())
        elif key == "to":
            text = line.decode()
            lines.append(text if ";tag=" in text or status == 100 else f"{text};tag={tag}")
    lines.append(extra) if extra else None
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def in_dialog(method: str, n: int, cseq: int, provider: Address) -> bytes:
    return (
        f"{method} sip:+12025550123@{provider[0]}:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.11:5060;branch=z9hG4bK-{n}-{cseq}-{method}\r\n"
        f"Route: <sip:10.0.0.1:5060;lr>\r\n"
        f"From: <sip:+13035550199@10.0.0.11:5060;user=phone>;tag={n}SW1\r\n"
        f"To: <sip:+12025550123@10.0.0.1:5060;user=phone>;tag=uas\r\n"
        f"Call-ID: {n}-4711@10.0.0.11\r\n"
        f"CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class Bench:
    def __init__(self) -> None:
        self.core = ProxyCore(parse_config(CONFIG), Env(), Counters(), worker=0)
        self.now = 1000.0
        self.core.link_up(LINK, self.now)
        self.timed = 0.0

    def feed(self, data: bytes, src: Address, upstream: bool = False) -> list[Send]:
        flow = Flow("tcp", src, CLEARIP, LINK, True) if upstream else Flow("udp", src, PROXY)
        core = self.core
        started = time.perf_counter()
        core.receive(data, flow, self.now)
        out = core.data_to_send()
        when = core.next_deadline()
        if when is not None and when <= self.now:
            core.on_timer(self.now)
            out += core.data_to_send()
        self.timed += time.perf_counter() - started
        return out

    def tick(self, seconds: float) -> None:
        self.now += seconds
        core = self.core
        started = time.perf_counter()
        while (when := core.next_deadline()) is not None and when <= self.now:
            core.on_timer(self.now)
        core.data_to_send()
        self.timed += time.perf_counter() - started


def to(sends: list[Send], host: Address) -> Request:
    for s in sends:
        if (s.target.host, s.target.port) == host:
            msg = parse_message(s.data)
            assert isinstance(msg, Request), msg
            return msg
    raise AssertionError(f"nothing sent to {host}: {[s.target for s in sends]}")


def one_call(b: Bench, n: int, failover: bool) -> None:
    out = b.feed(invite(n), SWITCH)
    to_clearip = next(parse_message(s.data) for s in out if s.target.upstream)
    assert isinstance(to_clearip, Request)
    contacts = (
        "Contact: <sip:+12025550123@10.0.0.13:5060>;q=1.0, <sip:+12025550123@10.0.0.14:5060>;q=0.5"
        f"\r\nIdentity: {IDENTITY}"
    )
    out = b.feed(answer(to_clearip, 302, "Moved Temporarily", contacts, tag="ci"), CLEARIP, True)
    provider = PROV_A
    req = to(out, PROV_A)
    if failover:
        provider = PROV_B
        req = to(b.feed(answer(req, 503, "Service Unavailable"), PROV_A), PROV_B)
    b.feed(answer(req, 100, "Trying"), provider)
    b.feed(answer(req, 180, "Ringing"), provider)
    b.feed(answer(req, 200, "OK", "Contact: <sip:+12025550123@10.0.0.13:5060>"), provider)
    b.feed(in_dialog("ACK", n, 1, provider), SWITCH)
    bye = to(b.feed(in_dialog("BYE", n, 2, provider), SWITCH), provider)
    b.feed(answer(bye, 200, "OK"), provider)
    b.tick(0.001)


def run(calls: int, failover: bool) -> tuple[float, Bench]:
    b = Bench()
    for n in range(calls):
        one_call(b, n, failover)
    b.tick(60.0)  # every transaction and dialog times out: the tables must be empty again
    core = b.core
    assert not (core.calls or core.server_txs or core.client_txs or core.dialogs), "leak"
    return b.timed / calls, b


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per flow [5000]")
    parser.add_argument("--failover", action="store_true", help="only the failover flow")
    parser.add_argument("--repeats", type=int, default=3, help="runs per flow; the best counts [3]")
    parser.add_argument("--profile", action="store_true", help="cProfile the run, top 25")
    args = parser.parse_args()
    # as the worker runs: start-up objects frozen, young collections rare
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    flows = [True] if args.failover else [False, True]
    print(f"proxy core per call: Python {platform.python_version()}, {platform.machine()}")
    print(f"{'flow':<10} {'calls':>7} {'us/call (best)':>15} {'calls/s on one core':>21}")
    for failover in flows:
        run(200, failover)  # warm the caches
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
        per_call = min(run(args.calls, failover)[0] for _ in range(max(1, args.repeats)))
        if args.profile:
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        name = "failover" if failover else "ok"
        print(f"{name:<10} {args.calls:>7} {per_call * 1e6:>15.1f} {1 / per_call:>21,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
