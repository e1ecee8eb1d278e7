#!/usr/bin/env python3
"""ClearIP emulator: a SIP redirect server standing in for ClearIP in tests, labs and benchmarks.

It answers each INVITE the way ClearIP does (SPEC §3): a 302 with Contacts and a signed
PASSporT in Identity, or a verdict (503, 603, 404 ...), or nothing, or a dropped connection,
chosen by TOML rules matched on the dialled number (tools/emulator-rules.example.toml documents
the format). UDP, TCP and TLS listeners, any number of each.

    tools/clearip_emulator.py --rules RULES.toml --listen udp:127.0.0.1:5060 \
        [--listen tcp:IP:PORT] [--listen tls:IP:PORT --cert PEM --key PEM] \
        [--signing-key PEM] [--log FILE.jsonl] [--no-pong] [--no-uvloop]

Prints one "listening TRANSPORT:IP:PORT" line per listener (real ports, so :0 works), then
"ready". Stops cleanly on SIGTERM/SIGINT. `--log` writes one JSON object per line for every
request received, response sent and connection event, flushed at once, so a test can assert
what "ClearIP" saw.

As a library: `Emulator(listens, rules, ...)` with `await start()` / `await stop()` (or
`async with`), or `await serve(listens, rules, stop=event)`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import math
import os
import re
import secrets
import signal
import socket
import ssl
import struct
import sys
import tempfile
import time
import tomllib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, cast
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric import ec

from clearip import stir
from clearip.sip.errors import SipProtocolError
from clearip.sip.framing import PING, PONG_BYTES, StreamFramer
from clearip.sip.limits import MAX_MESSAGE_BYTES
from clearip.sip.message import Request, Response, build_response, parse_message
from clearip.sip.uri import parse_uri, user_number
from clearip.tlscert import self_signed

__all__ = [
    "Contact",
    "Emulator",
    "Listen",
    "Rule",
    "Rules",
    "RulesError",
    "build_answer",
    "load_rules",
    "main",
    "parse_rules",
    "serve",
]

Transport = Literal["udp", "tcp", "tls"]
Record = dict[str, Any]

ALLOW = "INVITE, ACK, CANCEL, OPTIONS"
# RFC 3261 §17.2.1: a server transaction absorbs retransmissions for 64*T1 after its answer.
TXN_LINGER = 32.0
MAX_TXNS = 65536  # bounds the retransmission cache whatever the call rate
DEFAULT_X5U = "https://cr.example.org/cert.pem"

PHRASES = {
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}
_CLASS_PHRASES = {3: "Redirection", 4: "Request Failure", 5: "Server Failure", 6: "Global Failure"}


def phrase_for(status: int) -> str:
    return PHRASES.get(status) or _CLASS_PHRASES.get(status // 100, "Unknown")


# --- rules -----------------------------------------------------------------------------------


class RulesError(ValueError):
    """The rules file is wrong; the message names the key."""


@dataclass(frozen=True, slots=True)
class Contact:
    """One Contact of a rule: the URI template (inside <>) and what follows the ">"."""

    uri: str
    suffix: str = ""  # ";q=0.5" ...

    @classmethod
    def parse(cls, item: str, where: str) -> Contact:
        item = item.strip()
        if item.startswith("<"):
            gt = item.find(">")
            if gt < 0:
                raise RulesError(f"{where}: unterminated <URI>")
            return cls(item[1:gt], item[gt + 1 :])
        uri, *params = item.split(";")
        kept: list[str] = []
        suffix = ""
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() != "q":
                kept.append(param)
                continue
            try:
                q = float(value)
            except ValueError:
                q = -1.0
            if not 0.0 <= q <= 1.0:
                raise RulesError(f"{where}: q must be a number from 0 to 1, not {value!r}")
            suffix = f";q={value.strip()}"
        return cls(";".join([uri, *kept]), suffix)


@dataclass(frozen=True, slots=True)
class Rule:
    index: int  # position in the file, from 0; logged as "rule"
    match: re.Pattern[str]
    action: Literal["answer", "silent", "reset"]
    status: int  # for "answer"
    contacts: tuple[Contact, ...] = ()
    identity: bool = False
    identity_in_contact: bool = False
    pai: str = ""
    reason: str = ""
    phrase: str = ""
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()
    x5u: str = DEFAULT_X5U
    attest: str = "A"
    fold: bool = False  # fold Identity and P-Asserted-Identity over two lines (legal SIP)


@dataclass(frozen=True, slots=True)
class Rules:
    rules: tuple[Rule, ...] = ()

    def match(self, number: str) -> Rule | None:
        """The first rule whose regex is found in `number`."""
        for rule in self.rules:
            if rule.match.search(number):
                return rule
        return None


_RULE_KEYS = (
    "match",
    "action",
    "contacts",
    "identity",
    "identity_in_contact",
    "pai",
    "reason",
    "phrase",
    "delay",
    "headers",
    "x5u",
    "attest",
    "fold",
)
_HEADER_NAME = re.compile(r"[A-Za-z0-9!%*_+`'~.-]+")


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RulesError(f"{where}: must be a string")
    if "\r" in value or "\n" in value:
        raise RulesError(f"{where}: must not contain CR or LF")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise RulesError(f"{where}: must be true or false")
    return value


def _rule(index: int, table: Any, defaults: dict[str, Any], where: str) -> Rule:
    if not isinstance(table, dict):
        raise RulesError(f"{where}: must be a table")
    for key in table:
        if key not in _RULE_KEYS:
            raise RulesError(f"{where}.{key}: unknown key (known: {', '.join(_RULE_KEYS)})")
    merged = {**defaults, **table}

    def at(key: str) -> str:
        return f"{where}.{key}" if key in table else f"defaults.{key}"

    try:
        match = re.compile(_str(merged.get("match", ""), at("match")))
    except re.error as exc:
        raise RulesError(f"{at('match')}: bad regex: {exc}") from None

    action = merged.get("action", "302")
    if isinstance(action, int) and not isinstance(action, bool):
        action = str(action)
    action = _str(action, at("action"))
    status = 0
    kind: Literal["answer", "silent", "reset"] = "answer"
    if action == "silent":
        kind = "silent"
    elif action == "reset":
        kind = "reset"
    elif action.isdigit() and len(action) == 3 and 300 <= int(action) <= 699:
        status = int(action)
    else:
        raise RulesError(f'{at("action")}: must be a status 300-699, "silent" or "reset"')

    contacts = merged.get("contacts", [])
    if not isinstance(contacts, list):
        raise RulesError(f"{at('contacts')}: must be a list of strings")
    parsed = tuple(
        Contact.parse(_str(c, f"{at('contacts')}[{i}]"), f"{at('contacts')}[{i}]")
        for i, c in enumerate(contacts)
    )

    delay = merged.get("delay", 0.0)
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise RulesError(f"{at('delay')}: must be a number of seconds")
    if not (math.isfinite(delay) and delay >= 0):
        raise RulesError(f"{at('delay')}: must be >= 0")

    headers = merged.get("headers", {})
    if not isinstance(headers, dict):
        raise RulesError(f'{at("headers")}: must be a table of name = "value"')
    for name in headers:
        if not _HEADER_NAME.fullmatch(name):
            raise RulesError(f"{at('headers')}: bad header name {name!r}")

    attest = _str(merged.get("attest", "A"), at("attest"))
    if attest not in stir.ATTESTATIONS:
        raise RulesError(f'{at("attest")}: must be "A", "B" or "C"')

    return Rule(
        index=index,
        match=match,
        action=kind,
        status=status,
        contacts=parsed,
        identity=_bool(merged.get("identity", False), at("identity")),
        identity_in_contact=_bool(
            merged.get("identity_in_contact", False), at("identity_in_contact")
        ),
        pai=_str(merged.get("pai", ""), at("pai")),
        reason=_str(merged.get("reason", ""), at("reason")),
        phrase=_str(merged.get("phrase", ""), at("phrase")),
        delay=float(delay),
        headers=tuple((n, _str(v, f"{at('headers')}.{n}")) for n, v in headers.items()),
        x5u=_str(merged.get("x5u", DEFAULT_X5U), at("x5u")),
        attest=attest,
        fold=_bool(merged.get("fold", False), at("fold")),
    )


def parse_rules(data: dict[str, Any]) -> Rules:
    """Rules from the parsed TOML document; raises RulesError naming the bad key."""
    for key in data:
        if key not in ("defaults", "rule"):
            raise RulesError(f"{key}: unknown key (known: defaults, rule)")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise RulesError("defaults: must be a table")
    for key in defaults:
        if key not in _RULE_KEYS or key == "match":
            raise RulesError(f"defaults.{key}: unknown key")
    tables = data.get("rule", [])
    if not isinstance(tables, list):
        raise RulesError("rule: must be an array of tables ([[rule]])")
    # Check the defaults on their own too, so a bad default is reported without any rule.
    _rule(-1, {}, defaults, "defaults")
    return Rules(tuple(_rule(i, t, defaults, f"rule[{i}]") for i, t in enumerate(tables)))


def load_rules(path: str | Path) -> Rules:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{path}: {exc}") from None
    try:
        return parse_rules(data)
    except RulesError as exc:
        raise RulesError(f"{path}: {exc}") from None


# --- answers (no I/O) ------------------------------------------------------------------------


def _number_of(uri: str | bytes) -> str:
    """Dialled digits of a URI (leading "+" kept), "" when there are none or it is bad."""
    try:
        return user_number(parse_uri(uri)) or ""
    except SipProtocolError:
        return ""


# Characters an hvalue may carry unescaped (RFC 3261 §25.1 hnv-unreserved / unreserved).
_HVALUE_SAFE = "!*'()[]/:+$"


def build_answer(
    request: Request,
    rule: Rule,
    *,
    number: str,
    to_tag: str,
    signing_key: ec.EllipticCurvePrivateKey | None = None,
    now: float | None = None,
) -> Response:
    """The final response `rule` gives to the INVITE `request` (rule.action == "answer")."""
    caller = _number_of(request.from_.uri)

    def fill(text: str) -> str:
        return text.replace("{number}", number).replace("{from}", caller)

    identity = None
    if rule.identity or rule.identity_in_contact:
        if signing_key is None:
            raise ValueError("rule asks for an Identity but no signing key was given")
        jws = stir.sign_passport(
            signing_key,
            attest=rule.attest,
            orig_tn=stir.canonical_tn(caller),
            dest_tns=[stir.canonical_tn(number)],
            x5u=rule.x5u,
            iat=int(time.time() if now is None else now),
        )
        identity = stir.identity_header(jws, rule.x5u)

    headers: list[tuple[str, str]] = []
    if rule.contacts:
        items = []
        for contact in rule.contacts:
            uri = fill(contact.uri)
            if identity is not None and rule.identity_in_contact:
                sep = "&" if "?" in uri else "?"
                uri = f"{uri}{sep}Identity={quote(identity, safe=_HVALUE_SAFE)}"
            items.append(f"<{uri}>{contact.suffix}")
        headers.append(("Contact", ", ".join(items)))
    if identity is not None and not rule.identity_in_contact:
        headers.append(("Identity", identity))
    if rule.pai:
        headers.append(("P-Asserted-Identity", fill(rule.pai)))
    if rule.reason and rule.status >= 400:
        headers.append(("Reason", rule.reason))
    headers.extend((name, fill(value)) for name, value in rule.headers)
    return build_response(
        request,
        rule.status,
        rule.phrase or phrase_for(rule.status),
        to_tag=to_tag,
        headers=headers,
    )


def fold_lines(wire: bytes, names: tuple[bytes, ...]) -> bytes:
    """`wire` with each header line named in `names` folded after its colon: the value starts
    on a continuation line (RFC 3261 §7.3.1, where SWS allows it), as some SIP stacks send
    long values. Unfolded, the value is unchanged."""
    head, sep, body = wire.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    for i, line in enumerate(lines):
        name, colon, value = line.partition(b":")
        if colon and name.strip() in names:
            lines[i] = name + b":\r\n   " + value.lstrip()
    return b"\r\n".join(lines) + sep + body


# --- listeners -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listen:
    transport: Transport
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        """`udp:IP:PORT`, `tcp:IP:PORT`, `tls:IP:PORT`; IPv6 as `tcp:[::1]:5060`."""
        transport, _, rest = text.partition(":")
        host, _, port = rest.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if transport not in ("udp", "tcp", "tls") or not host or not port.isdigit():
            raise ValueError(f"bad listen address {text!r}: expected udp|tcp|tls:IP:PORT")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"bad listen address {text!r}: {host!r} is not an IP") from None
        if int(port) > 65535:
            raise ValueError(f"bad listen address {text!r}: port out of range")
        return cls(cast(Transport, transport), host, int(port))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


def self_signed_cert(directory: Path, hosts: Sequence[str] = ()) -> tuple[Path, Path]:
    """A throw-away certificate for localhost, 127.0.0.1, ::1 and `hosts`; (cert, key) paths."""
    ips = []
    for host in {"127.0.0.1", "::1", *hosts}:
        with contextlib.suppress(ValueError):
            if not ipaddress.ip_address(host).is_unspecified:
                ips.append(host)
    cert, key = self_signed("clearip-emulator", dns=["localhost"], ips=sorted(ips), days=365)
    cert_path, key_path = directory / "emulator-cert.pem", directory / "emulator-key.pem"
    cert_path.write_bytes(cert)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return cert_path, key_path


# --- the server ------------------------------------------------------------------------------


class _Link:
    """Where a request came from and how to answer it."""

    transport_name: Transport
    conn: int | None = None
    peer: str = ""

    def send(self, data: bytes) -> bool:
        raise NotImplementedError

    def reset(self) -> None:
        """Drop the connection with a RST; nothing for UDP."""


class _UdpLink(_Link):
    transport_name = "udp"

    def __init__(self, transport: asyncio.DatagramTransport, addr: tuple[Any, ...]) -> None:
        self.transport = transport
        self.addr = addr
        self.peer = _peer_text(addr)

    def send(self, data: bytes) -> bool:
        if self.transport.is_closing():
            return False
        self.transport.sendto(data, self.addr)
        return True


def _peer_text(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = f"[{addr[0]}]" if ":" in str(addr[0]) else str(addr[0])
        return f"{host}:{addr[1]}"
    return str(addr)


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # not always a DatagramTransport subclass (3.11's selector transport is not)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        assert self.transport is not None
        if not data.strip(b"\r\n"):
            return  # a CRLF keepalive: nothing to answer over UDP
        self.emulator._on_message(data, _UdpLink(self.transport, addr), framed=False)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable from a peer that went away: not our problem


class _StreamProtocol(asyncio.Protocol, _Link):
    """One TCP or TLS connection, cut into messages by the StreamFramer."""

    def __init__(self, emulator: Emulator, transport_name: Transport) -> None:
        self.emulator = emulator
        self.transport_name = transport_name
        self.framer = StreamFramer(emulator.max_message_bytes)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = _peer_text(transport.get_extra_info("peername"))
        self.emulator._connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.emulator._disconnected(self)

    def data_received(self, data: bytes) -> None:
        self.framer.feed(data)
        emulator = self.emulator
        while self.transport is not None and not self.transport.is_closing():
            try:
                event = self.framer.next_event()
            except SipProtocolError as exc:
                # The stream position is lost: nothing more can be read from this connection.
                emulator._malformed(self, exc.reason)
                self.transport.close()
                return
            if event is None:
                return
            if isinstance(event, bytes):
                emulator._on_message(event, self, framed=True)
            elif event is PING:
                emulator._ping(self)
            # a pong (lone CRLF) needs nothing

    def send(self, data: bytes) -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True

    def reset(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER with a zero timeout: close() sends a RST instead of a FIN.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


@dataclass(slots=True)
class _Txn:
    """An INVITE server transaction, kept to answer retransmissions and CANCELs."""

    request: Request
    link: _Link
    rule: Rule | None
    number: str
    to_tag: str
    state: Literal["pending", "silent", "done"]
    response: Response | None = None
    wire: bytes = b""  # the response's bytes, resent as they were on a retransmission
    timer: asyncio.TimerHandle | None = None
    expires: float = math.inf  # loop time after which it is forgotten (once no longer pending)


@dataclass(slots=True)
class _Stats:
    requests: int = 0
    invites: int = 0
    responses: int = 0
    retransmissions: int = 0
    malformed: int = 0
    pings: int = 0
    connections: int = 0
    resets: int = 0
    ignored_responses: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


class Emulator:
    """The ClearIP stand-in: `await start()`, then `listening` has the bound addresses."""

    def __init__(
        self,
        listens: Sequence[Listen | str],
        rules: Rules,
        *,
        signing_key: ec.EllipticCurvePrivateKey | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        log: str | Path | IO[str] | None = None,
        on_record: Callable[[Record], None] | None = None,
        pong: bool = True,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.listens = [x if isinstance(x, Listen) else Listen.parse(x) for x in listens]
        if not self.listens:
            raise ValueError("at least one listen address is needed")
        if (cert is None) != (key is None):
            raise ValueError("--cert and --key go together")
        self.rules = rules  # may be replaced while running; the next INVITE uses the new rules
        self.signing_key = signing_key or stir.generate_key()
        self.cert, self.key = cert, key  # the self-signed pair while running, when none given
        self.pong = pong
        self.max_message_bytes = max_message_bytes
        self.on_record = on_record
        self.stats = _Stats()
        self.listening: list[Listen] = []
        self._log_arg = log
        self._log: IO[str] | None = None
        self._own_log = False
        self._servers: list[asyncio.Server] = []
        self._udp: list[asyncio.DatagramTransport] = []
        self._conns: set[_StreamProtocol] = set()
        self._next_conn = 0
        self._txns: OrderedDict[tuple[str, str], _Txn] = OrderedDict()
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.signing_key.public_key()

    def address(self, transport: Transport) -> tuple[str, int]:
        """(host, port) of the first listener of `transport`."""
        for listen in self.listening:
            if listen.transport == transport:
                return listen.host, listen.port
        raise LookupError(f"no {transport} listener")

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        if isinstance(self._log_arg, str | Path):
            self._log = open(self._log_arg, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
            self._own_log = True
        else:
            self._log = self._log_arg
        try:
            tls = self._tls_context() if any(x.transport == "tls" for x in self.listens) else None
            for listen in self.listens:
                if listen.transport == "udp":
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: _DatagramProtocol(self), local_addr=(listen.host, listen.port)
                    )
                    self._udp.append(transport)
                    sockname = transport.get_extra_info("sockname")
                else:
                    name = listen.transport

                    def factory(name: Transport = name) -> _StreamProtocol:
                        return _StreamProtocol(self, name)

                    server = await loop.create_server(
                        factory,
                        listen.host,
                        listen.port,
                        ssl=tls if name == "tls" else None,
                        reuse_address=True,
                    )
                    self._servers.append(server)
                    sockname = server.sockets[0].getsockname()
                self.listening.append(Listen(listen.transport, listen.host, sockname[1]))
        except BaseException:
            await self.stop()
            raise

    def _tls_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="clearip-emulator-")
            self.cert, self.key = self_signed_cert(
                Path(self._tmpdir.name), [x.host for x in self.listens]
            )
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    async def stop(self) -> None:
        """Close every listener and connection and forget pending answers."""
        for txn in self._txns.values():
            if txn.timer is not None:
                txn.timer.cancel()
        self._txns.clear()
        for server in self._servers:
            server.close()
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.abort()
        for server in self._servers:
            await server.wait_closed()
        for udp in self._udp:
            udp.close()
        self._servers.clear()
        self._udp.clear()
        self.listening.clear()
        await asyncio.sleep(0)  # let connection_lost callbacks run before the log closes
        if self._own_log and self._log is not None:
            self._log.close()
        self._log = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
            self.cert = self.key = None  # a restart makes a new one

    # -- records --------------------------------------------------------------------------------

    def _record(self, event: str, link: _Link, **fields: Any) -> None:
        if self._log is None and self.on_record is None:
            return
        record: Record = {
            "time": round(time.time(), 6),
            "event": event,
            "transport": link.transport_name,
            "peer": link.peer,
            "conn": link.conn,
            **fields,
        }
        if self._log is not None:
            self._log.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._log.flush()
        if self.on_record is not None:
            self.on_record(record)

    def _connected(self, link: _StreamProtocol) -> None:
        self._next_conn += 1
        link.conn = self._next_conn
        self._conns.add(link)
        self.stats.connections += 1
        self._record("connect", link)

    def _disconnected(self, link: _StreamProtocol) -> None:
        self._conns.discard(link)
        self._record("close", link)

    def _malformed(self, link: _Link, reason: str) -> None:
        self.stats.malformed += 1
        self._record("malformed", link, reason=reason)

    def _ping(self, link: _StreamProtocol) -> None:
        self.stats.pings += 1
        self._record("ping", link, pong=self.pong)
        if self.pong:
            link.send(PONG_BYTES)

    # -- requests -------------------------------------------------------------------------------

    def _on_message(self, data: bytes, link: _Link, *, framed: bool) -> None:
        try:
            msg = parse_message(data, max_bytes=self.max_message_bytes, framed=framed)
            msg.check()
        except SipProtocolError as exc:
            self._malformed(link, exc.reason)
            return
        if not isinstance(msg, Request):
            self.stats.ignored_responses += 1
            self._record("response_in", link, status=msg.status, call_id=msg.call_id)
            return
        self.stats.requests += 1
        if msg.method == "INVITE":
            self._invite(msg, link)
        elif msg.method == "ACK":
            self._record("request", link, **_describe(msg))
        elif msg.method == "CANCEL":
            self._cancel(msg, link)
        elif msg.method == "OPTIONS":
            self._record("request", link, **_describe(msg))
            self._send(
                link, build_response(msg, 200, "OK", to_tag=_tag(), headers=[("Allow", ALLOW)])
            )
        else:
            self._record("request", link, **_describe(msg))
            self._send(
                link,
                build_response(
                    msg, 405, "Method Not Allowed", to_tag=_tag(), headers=[("Allow", ALLOW)]
                ),
            )

    def _invite(self, request: Request, link: _Link) -> None:
        self.stats.invites += 1
        key = (request.call_id, request.top_via.branch or "")
        txn = self._txns.get(key)
        if txn is not None:
            # A retransmission (UDP): answer as before, or absorb while the answer is pending.
            self.stats.retransmissions += 1
            rule = None if txn.rule is None else txn.rule.index
            self._record(
                "request",
                link,
                **_describe(request),
                number=txn.number,
                rule=rule,
                retransmission=True,
            )
            if txn.response is not None:
                self._send(link, txn.response, txn, wire=txn.wire, retransmission=True)
            return
        self._expire()
        number = _number_of(request.uri)
        rule = self.rules.match(number)
        self._record(
            "request",
            link,
            **_describe(request),
            number=number,
            rule=None if rule is None else rule.index,
        )
        txn = _Txn(request, link, rule, number, _tag(), "pending")
        self._txns[key] = txn
        if rule is None:
            self._finish(txn, build_response(request, 404, "Not Found", to_tag=txn.to_tag))
        elif rule.action == "reset" and link.transport_name != "udp":
            # Not kept: the same INVITE sent again on a fresh connection is a new attempt.
            del self._txns[key]
            self.stats.resets += 1
            self._record("reset", link, call_id=request.call_id, number=number, rule=rule.index)
            link.reset()
        elif rule.action in ("silent", "reset"):
            txn.state = "silent"
            self._forget(key, txn)
        elif rule.delay > 0:
            assert self._loop is not None
            # RFC 3261 §17.2.1: a server that will not answer within 200 ms sends 100 Trying,
            # which also lets the client CANCEL (§9.1 forbids it before any provisional)
            self._send(link, build_response(request, 100, "Trying"), txn)
            txn.timer = self._loop.call_later(rule.delay, self._answer, txn)
        else:
            self._answer(txn)

    def _answer(self, txn: _Txn) -> None:
        assert txn.rule is not None
        txn.timer = None
        response = build_answer(
            txn.request,
            txn.rule,
            number=txn.number,
            to_tag=txn.to_tag,
            signing_key=self.signing_key,
        )
        self._finish(txn, response)

    def _finish(self, txn: _Txn, response: Response) -> None:
        wire = response.to_bytes()
        if txn.rule is not None and txn.rule.fold:
            wire = fold_lines(wire, (b"Identity", b"P-Asserted-Identity"))
        txn.state, txn.response, txn.wire = "done", response, wire
        self._send(txn.link, response, txn, wire=txn.wire)
        self._forget((txn.request.call_id, txn.request.top_via.branch or ""), txn)

    def _forget(self, key: tuple[str, str], txn: _Txn) -> None:
        """Start the linger time after which retransmissions are no longer recognised."""
        assert self._loop is not None
        txn.expires = self._loop.time() + TXN_LINGER
        if key in self._txns:
            self._txns.move_to_end(key)

    def _expire(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        txns = self._txns
        while txns:
            key, txn = next(iter(txns.items()))
            if txn.expires > now and len(txns) < MAX_TXNS:
                break
            if txn.timer is not None:
                txn.timer.cancel()
            del txns[key]

    def _cancel(self, cancel: Request, link: _Link) -> None:
        txn = self._txns.get((cancel.call_id, cancel.top_via.branch or ""))
        number = "" if txn is None else txn.number
        rule = None if txn is None or txn.rule is None else txn.rule.index
        self._record("request", link, **_describe(cancel), number=number, rule=rule)
        if txn is None:
            self._send(link, build_response(cancel, 481, PHRASES[481], to_tag=_tag()))
            return
        if txn.state == "silent":
            return  # a dead server answers nothing
        self._send(link, build_response(cancel, 200, "OK", to_tag=txn.to_tag), txn)
        if txn.state == "pending":
            if txn.timer is not None:
                txn.timer.cancel()
                txn.timer = None
            request = txn.request
            self._finish(txn, build_response(request, 487, PHRASES[487], to_tag=txn.to_tag))

    def _send(
        self,
        link: _Link,
        response: Response,
        txn: _Txn | None = None,
        *,
        wire: bytes | None = None,
        **extra: Any,
    ) -> None:
        if not link.send(response.to_bytes() if wire is None else wire):
            return  # the connection went away while the answer was pending
        self.stats.responses += 1
        self.stats.by_status[response.status] = self.stats.by_status.get(response.status, 0) + 1
        self._record(
            "response",
            link,
            status=response.status,
            method=response.cseq.method,
            call_id=response.call_id,
            number=None if txn is None else txn.number,
            rule=None if txn is None or txn.rule is None else txn.rule.index,
            **extra,
        )


def _describe(request: Request) -> dict[str, Any]:
    return {
        "method": request.method,
        "call_id": request.call_id,
        "cseq": request.cseq.number,
        "branch": request.top_via.branch,
    }


def _tag() -> str:
    return secrets.token_hex(6)


async def serve(
    listens: Sequence[Listen | str],
    rules: Rules,
    *,
    stop: asyncio.Event | None = None,
    ready: Callable[[Emulator], None] | None = None,
    **options: Any,
) -> None:
    """Run an Emulator until `stop` is set (or the task is cancelled); `ready` is called once
    it listens. `options` are Emulator's keyword arguments."""
    emulator = Emulator(listens, rules, **options)
    await emulator.start()
    try:
        if ready is not None:
            ready(emulator)
        await (stop or asyncio.Event()).wait()
    finally:
        await emulator.stop()


# --- command line ----------------------------------------------------------------------------


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="clearip_emulator",
        description="A ClearIP stand-in: answers INVITEs with 302/503/603/... per TOML rules.",
    )
    parser.add_argument(
        "--listen",
        action="append",
        required=True,
        type=Listen.parse,
        metavar="T:IP:PORT",
        help="udp:IP:PORT, tcp:IP:PORT or tls:IP:PORT (repeatable; port 0 picks one)",
    )
    parser.add_argument("--rules", required=True, type=Path, help="TOML rules file")
    parser.add_argument("--cert", type=Path, help="TLS certificate (PEM); self-signed if absent")
    parser.add_argument("--key", type=Path, help="TLS private key (PEM) for --cert")
    parser.add_argument(
        "--signing-key",
        type=Path,
        metavar="PEM",
        help="ES256 PASSporT signing key: loaded if the file exists, else generated and saved",
    )
    parser.add_argument("--log", type=Path, help="append one JSON line per request/response")
    parser.add_argument(
        "--no-pong", action="store_true", help="do not answer CRLFCRLF keepalive pings"
    )
    parser.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    args = parser.parse_args(argv)
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    return args


async def _main(args: argparse.Namespace) -> None:
    rules = load_rules(args.rules)
    if args.signing_key is not None and args.signing_key.exists():
        signing_key = stir.load_key(args.signing_key)
    else:
        signing_key = stir.generate_key()
        if args.signing_key is not None:
            stir.save_key(signing_key, args.signing_key)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def ready(emulator: Emulator) -> None:
        for listen in emulator.listening:
            print(f"listening {listen}")
        print("ready", flush=True)

    await serve(
        args.listen,
        rules,
        stop=stop,
        ready=ready,
        signing_key=signing_key,
        cert=args.cert,
        key=args.key,
        log=args.log,
        pong=not args.no_pong,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    loop_factory = None
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_main(args))
    except (RulesError, ValueError, OSError) as exc:
        print(f"clearip_emulator: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
