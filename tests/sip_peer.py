"""A small scripted SIP peer over UDP, for flows SIPp's scenarios make awkward.

    python sip_peer.py uac --local IP --proxy IP:PORT --number N --call-id ID [--timeout S]
        the switch: INVITE through the proxy, ACK the 2xx, then wait for the callee's BYE and
        answer it 200 (exit 0 when all of that happened)
    python sip_peer.py uas --local IP [--hold S] [--timeout S]
        the provider: answer one INVITE 100/200 (Record-Route mirrored), wait for the ACK,
        hold the call S seconds, then hang up: BYE through the Record-Route, expecting 200

Deliberately independent of the project's own parser (plain regular expressions), so a bug
there cannot hide in both ends of a test. Prints one line per message sent and received.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import time

Address = tuple[str, int]


def stamp() -> str:
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


def header(msg: str, name: str) -> list[str]:
    return [m.strip() for m in re.findall(rf"^{name}:(.*)$", msg, re.I | re.M)]


def first_line(msg: str) -> str:
    return msg.split("\r\n", 1)[0]


def uri_of(value: str) -> str:
    m = re.search(r"<([^>]+)>", value)
    return m.group(1) if m else value.split(";")[0].strip()


def hostport(uri: str) -> Address:
    m = re.match(r"sips?:(?:[^@]*@)?([^;:>]+)(?::(\d+))?", uri)
    if m is None:
        raise ValueError(f"cannot route to {uri!r}")
    return m.group(1), int(m.group(2) or 5060)


class Peer:
    def __init__(self, local: str, port: int, timeout: float) -> None:
        self.local = local
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((local, port))
        self.port = self.sock.getsockname()[1]
        self.deadline = time.monotonic() + timeout
        self.branches = 0
        self.nonce = os.urandom(4).hex()

    def branch(self) -> str:
        self.branches += 1
        # unique across runs too (RFC 3261 §8.1.1.7): a reused branch would match the last
        # call's INVITE server transaction at the proxy and be absorbed as a retransmission
        return f"z9hG4bK-peer-{self.nonce}-{self.branches}"

    def send(self, text: str, to: Address) -> None:
        print(f"{stamp()} -> {to[0]}:{to[1]} {first_line(text)}", flush=True)
        self.sock.sendto(text.encode(), to)

    def recv(self, until: float | None = None) -> tuple[str, Address] | None:
        end = min(until or self.deadline, self.deadline)
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                return None
            text = data.decode("utf-8", "replace")
            print(f"{stamp()} <- {addr[0]}:{addr[1]} {first_line(text)}", flush=True)
            return text, addr
        return None

    def expect(
        self, pattern: str, resend: tuple[str, Address] | None = None
    ) -> tuple[str, Address]:
        """The next message whose first line matches `pattern`, resending `resend` each 0.5 s
        meanwhile (RFC 3261 Timer A/G, roughly)."""
        while True:
            got = self.recv(time.monotonic() + 0.5 if resend else None)
            if got is None:
                if resend is None or time.monotonic() >= self.deadline:
                    raise SystemExit(f"timed out waiting for {pattern!r}")
                self.send(*resend)
                continue
            if re.match(pattern, first_line(got[0])):
                return got

    def reply(
        self, req: str, addr: Address, status: str, extra: str = "", tag: str = "", rr: bool = False
    ) -> str:
        lines = [f"SIP/2.0 {status}"]
        lines += [f"Via: {v}" for v in header(req, "Via")]
        lines += [f"Record-Route: {r}" for r in header(req, "Record-Route")] if rr else []
        lines.append(f"From: {header(req, 'From')[0]}")
        to = header(req, "To")[0]
        lines.append(f"To: {to}" + (f";tag={tag}" if tag and ";tag=" not in to else ""))
        lines.append(f"Call-ID: {header(req, 'Call-ID')[0]}")
        lines.append(f"CSeq: {header(req, 'CSeq')[0]}")
        if extra:
            lines.append(extra)
        text = "\r\n".join([*lines, "Content-Length: 0", "", ""])
        self.send(text, addr)
        return text


def run_uac(args: argparse.Namespace) -> int:
    peer = Peer(args.local, 5060, args.timeout)
    proxy_host, proxy_port = args.proxy.rsplit(":", 1)
    proxy = (proxy_host, int(proxy_port))
    me = f"{args.local}:{peer.port}"
    invite = "\r\n".join([
        f"INVITE sip:+{args.number}@{proxy[0]}:{proxy[1]};user=phone SIP/2.0",
        f"Via: SIP/2.0/UDP {me};branch={peer.branch()};rport",
        f"From: <sip:+13035550199@{args.local};user=phone>;tag=uac-{peer.port}",
        f"To: <sip:+{args.number}@{proxy[0]};user=phone>",
        f"Call-ID: {args.call_id}",
        "CSeq: 1 INVITE",
        f"Contact: <sip:+13035550199@{me}>",
        "Max-Forwards: 70",
        "Content-Length: 0", "", "",
    ])  # fmt: skip
    peer.send(invite, proxy)
    ok, _ = peer.expect(r"SIP/2\.0 [2-6]\d\d", resend=(invite, proxy))
    if not first_line(ok).startswith("SIP/2.0 2"):
        print(f"call failed: {first_line(ok)}", file=sys.stderr)
        return 1
    routes = [uri_of(r) for rr in reversed(header(ok, "Record-Route")) for r in rr.split(",")]
    target = uri_of(header(ok, "Contact")[0])
    ack = "\r\n".join([
        f"ACK {target} SIP/2.0",
        f"Via: SIP/2.0/UDP {me};branch={peer.branch()};rport",
        *(f"Route: <{r}>" for r in routes),
        f"From: {header(ok, 'From')[0]}",
        f"To: {header(ok, 'To')[0]}",
        f"Call-ID: {args.call_id}",
        "CSeq: 1 ACK",
        "Max-Forwards: 70",
        "Content-Length: 0", "", "",
    ])  # fmt: skip
    peer.send(ack, hostport(routes[0]) if routes else hostport(target))
    bye, addr = peer.expect(r"BYE ")
    peer.reply(bye, addr, "200 OK")
    return 0


def run_uas(args: argparse.Namespace) -> int:
    peer = Peer(args.local, 5060, args.timeout)
    invite, addr = peer.expect(r"INVITE ")
    peer.reply(invite, addr, "100 Trying")
    tag = f"uas-{peer.port}"
    contact = f"Contact: <sip:callee@{args.local}:{peer.port}>"
    ok = peer.reply(invite, addr, "200 OK", extra=contact, tag=tag, rr=True)
    peer.expect(r"ACK ", resend=(ok, addr))
    time.sleep(args.hold)
    routes = [uri_of(r) for rr in header(invite, "Record-Route") for r in rr.split(",")]
    target = uri_of(header(invite, "Contact")[0])
    to_hdr = header(invite, "To")[0] + f";tag={tag}"
    bye = "\r\n".join([
        f"BYE {target} SIP/2.0",
        f"Via: SIP/2.0/UDP {args.local}:{peer.port};branch={peer.branch()};rport",
        *(f"Route: <{r}>" for r in routes),
        f"From: {to_hdr}",
        f"To: {header(invite, 'From')[0]}",
        f"Call-ID: {header(invite, 'Call-ID')[0]}",
        "CSeq: 1 BYE",
        "Max-Forwards: 70",
        "Content-Length: 0", "", "",
    ])  # fmt: skip
    to = hostport(routes[0]) if routes else hostport(target)
    peer.send(bye, to)
    peer.expect(r"SIP/2\.0 200 ", resend=(bye, to))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)
    uac = sub.add_parser("uac")
    uac.add_argument("--local", required=True)
    uac.add_argument("--proxy", required=True)
    uac.add_argument("--number", required=True)
    uac.add_argument("--call-id", required=True)
    uac.add_argument("--timeout", type=float, default=30.0)
    uas = sub.add_parser("uas")
    uas.add_argument("--local", required=True)
    uas.add_argument("--hold", type=float, default=0.0)
    uas.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    return run_uac(args) if args.role == "uac" else run_uas(args)


if __name__ == "__main__":
    sys.exit(main())
