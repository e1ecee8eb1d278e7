"""A test rig for the sans-IO proxy core: bytes in, `Send` records out, a hand-turned clock.

The switch, ClearIP and the providers are plain addresses; tests play them by feeding the bytes
those peers would send and reading back exactly what the core put on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clearip.config import parse_config
from clearip.relay.core import ProxyCore
from clearip.relay.counters import Counters
from clearip.relay.events import Address, Flow, Send
from clearip.sip.message import Request, Response, parse_message

PROXY = ("10.0.0.1", 5060)
SWITCH = ("10.0.0.11", 5060)
CLEARIP = ("10.0.0.2", 5061)
PROV_A = ("10.0.0.13", 5060)
PROV_B = ("10.0.0.14", 5060)
UNTRUSTED = ("192.0.2.66", 5060)
LINK = 1  # the ClearIP connection id

IDENTITY = (
    "eyJhbGciOiJFUzI1NiIsInBwdCI6InNoYWtlbiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly9jci5l"
    "eGFtcGxlLm9yZy9jZXJ0LnBlbSJ9.eyJhdHRlc3QiOiJBIiwiZGVzdCI6eyJ0biI6WyIxMjAyNTU1MDEyMyJdfSwi"
    "aWF0IjoxNzMyNzgwODAwLCJvcmlnIjp7InRuIjoiMTMwMzU1NTAxOTkifSwib3JpZ2lkIjoiNDQzN2M3ZWIifQ."
    "c2lnbmF0dXJl;info=<https://cr.example.org/cert.pem>;alg=ES256;ppt=shaken"
)

BASE_CONFIG = """
[listen]
udp = ["10.0.0.1:5060"]
tcp = ["10.0.0.1:5060"]
tls = ["10.0.0.1:5061"]
[clearip]
uri = "sip:10.0.0.2:5061;transport=tls"
timeout = 2.0
[trust]
sources = ["10.0.0.0/24"]
[fastpath]
enabled = false
"""


class FakeEnv:
    def __init__(self, trusted_prefix: str = "10.0.0.") -> None:
        self.trusted_prefix = trusted_prefix
        self.pinholes: list[tuple[str, bool]] = []
        self.notices: list[tuple[str, dict[str, object]]] = []

    def via_address(self, transport: str, dest_host: str) -> Address:
        return ("10.0.0.1", 5061 if transport == "tls" else 5060)

    def rr_address(self, transport: str, peer_host: str) -> Address:
        return ("10.0.0.1", 5061 if transport == "tls" else 5060)

    def is_local(self, host: str, port: int | None) -> bool:
        return host == "10.0.0.1" and port in (None, 5060, 5061)

    def is_trusted(self, ip: str) -> bool:
        return ip.startswith(self.trusted_prefix)

    def pinhole(self, host: str, is_open: bool) -> None:
        self.pinholes.append((host, is_open))

    def notice(self, kind: str, detail: dict[str, object]) -> None:
        self.notices.append((kind, detail))


@dataclass
class Rig:
    extra_config: str = ""
    now: float = 1000.0
    core: ProxyCore = field(init=False)
    counters: Counters = field(init=False)
    sent: list[Send] = field(default_factory=list)

    def __post_init__(self) -> None:
        config = parse_config(BASE_CONFIG + self.extra_config)
        self.counters = Counters()
        self.core = ProxyCore(config, FakeEnv(), self.counters, worker=0)
        self.core.link_up(LINK, self.now)

    # -- driving ------------------------------------------------------------------------------

    def feed(
        self,
        data: bytes,
        src: Address,
        transport: str = "udp",
        conn: int | None = None,
        upstream: bool = False,
        waited: float = 0.0,
    ) -> list[Send]:
        local = CLEARIP if upstream else PROXY
        self.core.receive(data, Flow(transport, src, local, conn, upstream), self.now, waited)
        return self.drain()

    def from_clearip(self, data: bytes) -> list[Send]:
        return self.feed(data, CLEARIP, "tls", LINK, upstream=True)

    def advance(self, seconds: float) -> list[Send]:
        """Move the clock, firing every timer due on the way in order."""
        end = self.now + seconds
        while True:
            when = self.core.next_deadline()
            if when is None or when > end:
                break
            self.now = max(self.now, when)
            self.core.on_timer(self.now)
        self.now = end
        return self.drain()

    def drain(self) -> list[Send]:
        out = self.core.data_to_send()
        self.sent.extend(out)
        return out

    # -- reading ------------------------------------------------------------------------------


def msgs(sends: list[Send], to: Address | None = None, upstream: bool | None = None):
    out = []
    for s in sends:
        if to is not None and (s.target.host, s.target.port) != to:
            continue
        if upstream is not None and s.target.upstream != upstream:
            continue
        out.append(parse_message(s.data))
    return out


def only(sends: list[Send], to: Address | None = None, upstream: bool | None = None):
    found = msgs(sends, to, upstream)
    assert len(found) == 1, f"expected one message, got {[repr(m) for m in found]}"
    return found[0]


def invite(
    number: str = "+12025550123",
    call_id: str = "call-1@10.0.0.11",
    branch: str = "z9hG4bK-sw-1",
    src: Address = SWITCH,
    transport: str = "UDP",
    extra: str = "",
    max_forwards: int = 70,
    uri: str | None = None,
) -> bytes:
    body = b"v=0\r\no=switch 1 1 IN IP4 10.0.0.11\r\ns=-\r\nc=IN IP4 10.0.0.11\r\nt=0 0\r\n"
    ruri = uri or f"sip:{number}@10.0.0.1:5060;user=phone"
    head = (
        f"INVITE {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {src[0]}:{src[1]};branch={branch};rport\r\n"
        f"From: <sip:+13035550199@{src[0]};user=phone>;tag=sw-tag\r\n"
        f"To: <sip:{number}@10.0.0.1;user=phone>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 INVITE\r\n"
        f"Contact: <sip:+13035550199@{src[0]}:{src[1]}>\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        f"P-Asserted-Identity: <sip:+13035550199@{src[0]};user=phone>\r\n"
        f"{extra}"
        f"Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def response_to(
    req: Request,
    status: int,
    reason: str,
    *,
    to_tag: str | None = "uas-tag",
    extra: str = "",
    body: bytes = b"",
    mirror_rr: bool = False,
) -> bytes:
    """What a UAS answers: Vias, From, To (+tag), Call-ID, CSeq copied from the request."""
    lines = [f"SIP/2.0 {status} {reason}"]
    for key, line in req.header_lines():
        if key in ("via", "from", "call-id", "cseq") or (mirror_rr and key == "record-route"):
            lines.append(line.decode())
        elif key == "to":
            text = line.decode()
            if to_tag and ";tag=" not in text:
                text += f";tag={to_tag}"
            lines.append(text)
    if extra:
        lines.extend(x for x in extra.split("\r\n") if x)
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def redirect(
    req: Request, contacts: str, *, identity: str | None = IDENTITY, extra: str = ""
) -> bytes:
    headers = f"Contact: {contacts}\r\n"
    if identity is not None:
        headers += f"Identity: {identity}\r\n"
    return response_to(req, 302, "Moved Temporarily", to_tag="ci-tag", extra=headers + extra)


def is_response(msg: Request | Response, status: int) -> bool:
    return isinstance(msg, Response) and msg.status == status
