"""The ClearIP emulator (tools/clearip_emulator.py) over UDP, TCP and TLS on loopback.

Each test runs the emulator in-process on ephemeral 127.0.0.1 ports and talks to it with real
sockets; every wait is bounded. One test drives the command line as a subprocess.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import selectors
import signal
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from clearip.sip.framing import PING_BYTES, PONG, PONG_BYTES, StreamFramer
from clearip.sip.message import Request, Response, parse_message
from clearip.sip.uri import SipUri, parse_uri
from clearip.stir import generate_key, load_key, parse_identity, verify_passport

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "clearip_emulator.py"
EXAMPLE = ROOT / "tools" / "emulator-rules.example.toml"


def _load_tool() -> Any:
    spec = importlib.util.spec_from_file_location("clearip_emulator", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["clearip_emulator"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


emu_mod = _load_tool()
Emulator = emu_mod.Emulator

RULES_TOML = r"""
[defaults]
x5u = "https://cr.example.org/cert.pem"
attest = "A"
identity = true

[[rule]]    # 0: the anchor's 302
match = "^\\+1202555"
contacts = ["sip:{number}@127.0.0.13:5060;user=phone;q=1.0",
            "sip:{number}@127.0.0.14:5060;transport=tcp;q=0.5"]

[[rule]]    # 1: Identity inside the Contact URIs, and a PAI
match = "^\\+1202666"
identity_in_contact = true
contacts = ["sip:{number}@127.0.0.13:5060;q=0.7", "<sip:{number}@127.0.0.14:5060>;q=0.3"]
pai = "<sip:{from}@clearip.example.org;verstat=TN-Validation-Passed>"

[[rule]]    # 2
match = "^\\+1900"
action = "603"
identity = false
reason = "Q.850;cause=21;text=\"Call Rejected\""
headers = { "X-Test" = "1" }

[[rule]]    # 3
match = "^\\+1999000"
action = "silent"

[[rule]]    # 4
match = "^\\+1999111"
action = "reset"

[[rule]]    # 5: slow enough to CANCEL
match = "^\\+1404"
action = "503"
delay = 5.0

[[rule]]    # 6: slow enough to retransmit before the answer
match = "^\\+1505"
delay = 0.3
contacts = ["sip:{number}@127.0.0.13"]
"""
RULES = emu_mod.parse_rules(tomllib.loads(RULES_TOML))
LISTENS = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0", "tls:127.0.0.1:0"]
TRANSPORTS = ["udp", "tcp", "tls"]
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0, *, uvloop: bool = False) -> T:
    factory = None
    if uvloop:
        factory = pytest.importorskip("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(asyncio.wait_for(coro, timeout))


def request(
    number: str,
    *,
    method: str = "INVITE",
    transport: str = "udp",
    call_id: str = "call-1@switch",
    branch: str = "z9hG4bK-1",
    cseq: int = 1,
) -> bytes:
    via_t = {"udp": "UDP", "tcp": "TCP", "tls": "TLS"}[transport]
    return (
        f"{method} sip:{number}@clearip.example.org;user=phone SIP/2.0\r\n"
        f"Via: SIP/2.0/{via_t} 127.0.0.1:5099;branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:+13035550199@switch.example.net;user=phone>;tag=f1\r\n"
        f"To: <sip:{number}@clearip.example.org;user=phone>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Content-Length: 0\r\n"
        "\r\n"
    ).encode()


class Client:
    """One client socket of any transport; reads are framed and bounded in time."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.framer = StreamFramer()
        self.pending: list[bytes] = []
        self.udp: asyncio.DatagramTransport | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @classmethod
    async def open(cls, emulator: Any, transport: str) -> Client:
        self = cls(transport)
        host, port = emulator.address(transport)
        loop = asyncio.get_running_loop()
        if transport == "udp":
            queue = self.queue

            class Proto(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: Any) -> None:
                    queue.put_nowait(data)

            self.udp, _ = await loop.create_datagram_endpoint(Proto, remote_addr=(host, port))
        else:
            ctx = None
            if transport == "tls":
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self.reader, self.writer = await asyncio.open_connection(host, port, ssl=ctx)
        return self

    async def send(self, data: bytes) -> None:
        if self.udp is not None:
            self.udp.sendto(data)
        else:
            assert self.writer is not None
            self.writer.write(data)
            await self.writer.drain()

    async def recv(self, timeout: float = 3.0) -> bytes:
        """The next message (raises TimeoutError when none comes)."""
        async with asyncio.timeout(timeout):
            if self.udp is not None:
                data = await self.queue.get()
                assert data is not None
                return data
            if self.pending:
                return self.pending.pop(0)
            while True:
                event = self.framer.next_event()
                if isinstance(event, bytes):
                    return event
                if event is None:
                    await self._read()

    async def _read(self) -> None:
        assert self.reader is not None
        data = await self.reader.read(65536)
        if not data:
            raise EOFError
        self.framer.feed(data)

    async def recv_pong(self, timeout: float = 3.0) -> None:
        """Wait for a CRLF pong; messages framed meanwhile are kept for recv()."""
        async with asyncio.timeout(timeout):
            while not self.framer.flush_pong():
                event = self.framer.next_event()
                if event is PONG:
                    return
                if isinstance(event, bytes):
                    self.pending.append(event)
                elif event is None:
                    await self._read()

    async def silent(self, wait: float = 0.5) -> bool:
        try:
            await self.recv(wait)
        except TimeoutError:
            return True
        return False

    async def closed_by_peer(self, timeout: float = 3.0) -> bool:
        assert self.reader is not None
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
            pass
        return True

    def close(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.writer is not None:
            self.writer.close()


async def response(client: Client, timeout: float = 3.0) -> Response:
    msg = parse_message(await client.recv(timeout), framed=client.transport != "udp")
    assert isinstance(msg, Response)
    return msg


def with_emulator(
    body: Callable[[Any, list[dict[str, Any]]], Awaitable[None]],
    *,
    uvloop: bool = False,
    **options: Any,
) -> None:
    async def main() -> None:
        records: list[dict[str, Any]] = []
        emulator = Emulator(LISTENS, RULES, on_record=records.append, **options)
        async with emulator:
            await body(emulator, records)

    run(main(), uvloop=uvloop)


# --- rules -----------------------------------------------------------------------------------


def test_example_rules_load() -> None:
    rules = emu_mod.load_rules(EXAMPLE)
    first = rules.match("+12025550123")
    assert first is not None and first.index == 0 and first.status == 302
    assert [str(c.uri) for c in first.contacts] == [
        "sip:{number}@10.1.0.13:5060",
        "sip:{number}@10.1.0.14:5060;transport=tcp",
    ]
    assert [c.suffix for c in first.contacts] == [";q=1.0", ";q=0.5"]
    assert rules.match("+19005550000").status == 603  # type: ignore[union-attr]
    assert rules.match("999000").action == "silent"  # type: ignore[union-attr]
    fallback = rules.match("anything")
    assert fallback is not None and fallback.attest == "B" and fallback.x5u.startswith("https")


def test_first_matching_rule_wins_and_defaults_apply() -> None:
    rules = emu_mod.parse_rules(
        {
            "defaults": {"action": "503", "delay": 1},
            "rule": [{"match": "^1"}, {"match": "^12", "action": "302"}, {"match": "2"}],
        }
    )
    assert rules.match("123").index == 0
    assert rules.match("123").status == 503
    assert rules.match("123").delay == 1.0
    assert rules.match("23").index == 2
    assert rules.match("3") is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"rules": []}, "rules: unknown key"),
        ({"rule": [{"match": "x", "colour": "red"}]}, r"rule\[0\]\.colour: unknown key"),
        ({"rule": [{"action": "299"}]}, r"rule\[0\]\.action"),
        ({"rule": [{"action": "bounce"}]}, r"rule\[0\]\.action"),
        ({"rule": [{"match": "("}]}, r"rule\[0\]\.match: bad regex"),
        ({"rule": [{"contacts": ["sip:a@b;q=2"]}]}, r"contacts\[0\]: q must"),
        ({"rule": [{"contacts": "sip:a@b"}]}, "contacts: must be a list"),
        ({"rule": [{"delay": -1}]}, "delay: must be >= 0"),
        ({"rule": [{"identity": "yes"}]}, "identity: must be true or false"),
        ({"rule": [{"headers": {"Bad Name": "1"}}]}, "bad header name"),
        ({"rule": [{"pai": "a\r\nb"}]}, "CR or LF"),
        ({"defaults": {"attest": "D"}}, "defaults.attest"),
        ({"defaults": {"match": "x"}}, "defaults.match: unknown key"),
        ({"rule": {"match": "x"}}, r"array of tables"),
    ],
)
def test_bad_rules_are_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(emu_mod.RulesError, match=message):
        emu_mod.parse_rules(data)


def test_answer_bytes_exact() -> None:
    rules = emu_mod.parse_rules(
        {
            "rule": [
                {
                    "action": "302",
                    "contacts": ["sip:{number}@127.0.0.13:5060;user=phone;q=1.0"],
                    "pai": "<sip:{from}@x>",
                    "reason": "ignored on a 3xx",
                    "headers": {"X-Test": "{number}"},
                }
            ]
        }
    )
    invite = parse_message(request("+12025550123"))
    assert isinstance(invite, Request)
    rule = rules.match("+12025550123")
    answer = emu_mod.build_answer(invite, rule, number="+12025550123", to_tag="t1")
    assert answer.to_bytes() == (
        b"SIP/2.0 302 Moved Temporarily\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-1\r\n"
        b"From: <sip:+13035550199@switch.example.net;user=phone>;tag=f1\r\n"
        b"To: <sip:+12025550123@clearip.example.org;user=phone>;tag=t1\r\n"
        b"Call-ID: call-1@switch\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Contact: <sip:+12025550123@127.0.0.13:5060;user=phone>;q=1.0\r\n"
        b"P-Asserted-Identity: <sip:+13035550199@x>\r\n"
        b"X-Test: +12025550123\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )


# --- over the wire ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_302_with_contacts_and_identity(transport: str) -> None:
    async def body(emulator: Any, records: list[dict[str, Any]]) -> None:
        client = await Client.open(emulator, transport)
        await client.send(request("+12025550123", transport=transport))
        answer = await response(client)
        client.close()
        assert answer.status == 302 and answer.reason == b"Moved Temporarily"
        assert answer.call_id == "call-1@switch"
        assert answer.top_via.branch == "z9hG4bK-1"
        assert answer.to.tag
        # one Contact line, in the order given, q as a Contact parameter (like the anchor)
        assert answer.get_all("contact") == [
            b"<sip:+12025550123@127.0.0.13:5060;user=phone>;q=1.0",
            b"<sip:+12025550123@127.0.0.14:5060;transport=tcp>;q=0.5",
        ]
        assert sum(1 for key, _ in answer.header_lines() if key == "contact") == 1
        identity = answer.get("identity")
        assert identity is not None
        passport = parse_identity(identity)
        assert verify_passport(passport, emulator.public_key)
        assert (passport.attest, passport.orig_tn) == ("A", "13035550199")
        assert passport.dest_tns == ["12025550123"]
        assert passport.info == "https://cr.example.org/cert.pem"
        assert abs(passport.iat - time.time()) < 60
        seen = [(r["event"], r.get("method"), r.get("status")) for r in records]
        assert ("request", "INVITE", None) in seen and ("response", "INVITE", 302) in seen
        invite = next(r for r in records if r["event"] == "request")
        assert invite["number"] == "+12025550123" and invite["rule"] == 0
        assert invite["transport"] == transport

    with_emulator(body)


def test_identity_in_contact_and_pai() -> None:
    async def body(emulator: Any, records: list[dict[str, Any]]) -> None:
        client = await Client.open(emulator, "udp")
        await client.send(request("+12026660000"))
        answer = await response(client)
        client.close()
        assert answer.get("identity") is None
        assert answer.get("p-asserted-identity") == (
            b"<sip:+13035550199@clearip.example.org;verstat=TN-Validation-Passed>"
        )
        contacts = answer.contacts
        assert isinstance(contacts, list)
        assert [c.params for c in contacts] == [{"q": "0.7"}, {"q": "0.3"}]
        for contact in contacts:
            uri = parse_uri(contact.uri)
            assert isinstance(uri, SipUri)
            assert str(uri.without_headers()).startswith("sip:+12026660000@127.0.0.1")
            (name, value), *_ = uri.headers
            assert name == "Identity"
            passport = parse_identity(value)
            assert verify_passport(passport, emulator.public_key)
            assert passport.dest_tns == ["12026660000"]

    with_emulator(body)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_603_with_reason(transport: str) -> None:
    async def body(emulator: Any, records: list[dict[str, Any]]) -> None:
        client = await Client.open(emulator, transport)
        await client.send(request("+19005550000", transport=transport))
        answer = await response(client)
        client.close()
        assert (answer.status, answer.reason) == (603, b"Decline")
        assert answer.get("reason") == b'Q.850;cause=21;text="Call Rejected"'
        assert answer.get("x-test") == b"1"
        assert answer.get("identity") is None and answer.get("contact") is None

    with_emulator(body)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_silent_never_answers(transport: str) -> None:
    async def body(emulator: Any, records: list[dict[str, Any]]) -> None:
        client = await Client.open(emulator, transport)
        await client.send(request("+19990001234", transport=transport))
        assert await client.silent(0.5)
        # not even a CANCEL: the server is dead
        await client.send(request("+19990001234", method="CANCEL", transport=transport))
        assert await client.silent(0.3)
        client.close()
        assert [r["method"] for r in records if r["event"] == "request"] == ["INVITE", "CANCEL"]
        assert emulator.stats.responses == 0

    with_emulator(body)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_reset_closes_the_connection(transport: str) -> None:
    async def body(emulator: Any, records: list[dict[str, Any]]) -> None:
        client = await Client.open(emulator, transport)
        await client.send(request("+19991110000", transport=transport))
        assert await client.closed_by_peer()
        client.close()
        assert emulator.stats.resets == 1
        # a fresh connection gets the same treatment for the same INVITE
        again = await Client.open(emulator, transport)
        await again.send(request("+19991110000", transport=transport))
        assert await again.closed_by_peer()
        again.close()
        assert emulator.stats.resets == 2

    with_emulator(body)


def test_reset_over_udp_is_silent() -> None:
    async def body(emulator: Any, records: list[dict[str, Any]]) -> None:
        client = await Client.open(emulator, "udp")
        await client.send(request("+19991110000"))
        assert await client.silent(0.5)
        client.close()

    with_emulator(body)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cancel_of_delayed_invite(transport: str) -> None:
    async def body(emulator: Any, records: list[dict[str, Any]]) -> None:
        client = await Client.open(emulator, transport)
        await client.send(request("+14045550000", transport=transport))
        assert (await response(client)).status == 100  # the final answer is 5 s away
        assert await client.silent(0.2)
        await client.send(request("+14045550000", method="CANCEL", transport=transport))
        first, second = await response(client), await response(client)
        by_method = {r.cseq.method: r for r in (first, second)}
        assert by_method["CANCEL"].status == 200
        assert (by_method["INVITE"].status, by_method["INVITE"].reason) == (
            487,
            b"Request Terminated",
        )
        assert by_method["CANCEL"].to.tag == by_method["INVITE"].to.tag
        # the 503 never follows; a second CANCEL gets 200 but changes nothing
        await client.send(request("+14045550000", method="CANCEL", transport=transport))
        assert (await response(client)).status == 200
        assert await client.silent(0.3)
        client.close()

    with_emulator(body)


def test_cancel_without_invite_gets_481() -> None:
    async def body(emulator: Any, records: list[dict[str, Any]]) -> None:
        client = await Client.open(emulator, "udp")
        await client.send(request("+14045550000", method="CANCEL", branch="z9hG4bK-none"))
        assert (await response(client)).status == 481
        client.close()

    with_emulator(body)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_keepalive_pong(transport: str) -> None:
    async def body(emulator: Any, records: list[dict[str, Any]]) -> None:
        client = await Client.open(emulator, transport)
        await client.send(PING_BYTES)
        await client.recv_pong()
        # the connection still carries SIP afterwards
        await client.send(PING_BYTES + request("+19005550000", transport=transport))
        await client.recv_pong()
        assert (await response(client)).status == 603
        client.close()
        assert emulator.stats.pings == 2

    with_emulator(body)


def test_no_pong() -> None:
    async def body(emulator: Any, records: list[dict[str, Any]]) -> None:
        client = await Client.open(emulator, "tcp")
        await client.send(PING_BYTES)
        with pytest.raises(TimeoutError):
            await client.recv_pong(0.5)
        client.close()
        assert emulator.stats.pings == 1
        assert PONG_BYTES not in client.framer._buf

    with_emulator(body, pong=False)


def test_udp_retransmission_answered_identically() -> None:
    async def body(emulator: Any, records: list[dict[str, Any]]) -> None:
        client = await Client.open(emulator, "udp")
        invite = request("+12025550123")
        await client.send(invite)
        first = await client.recv()
        await client.send(invite)
        again = await client.recv()
        assert again == first  # same To tag, same Identity: the cached bytes
        # a new branch is a new transaction
        await client.send(request("+12025550123", branch="z9hG4bK-2"))
        other = await client.recv()
        assert other != first
        client.close()
        assert emulator.stats.retransmissions == 1

    with_emulator(body)


def test_udp_retransmission_while_pending_is_absorbed() -> None:
    async def body(emulator: Any, records: list[dict[str, Any]]) -> None:
        client = await Client.open(emulator, "udp")
        invite = request("+15055550000")
        await client.send(invite)
        await asyncio.sleep(0.05)
        await client.send(invite)
        assert (await response(client)).status == 100  # the delayed rule says Trying at once
        answer = await response(client)
        assert answer.status == 302
        assert await client.silent(0.3)  # one answer only
        client.close()

    with_emulator(body)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_options_ack_and_other_methods(transport: str) -> None:
    async def body(emulator: Any, records: list[dict[str, Any]]) -> None:
        client = await Client.open(emulator, transport)
        await client.send(request("proxy", method="OPTIONS", transport=transport))
        ok = await response(client)
        assert ok.status == 200 and ok.get("allow") == b"INVITE, ACK, CANCEL, OPTIONS"
        await client.send(request("+1", method="ACK", transport=transport))
        await client.send(request("+1", method="BYE", transport=transport))
        bye = await response(client)  # the ACK got nothing: the next answer is the BYE's
        assert bye.status == 405 and bye.cseq.method == "BYE"
        client.close()
        assert [r["method"] for r in records if r["event"] == "request"] == [
            "OPTIONS",
            "ACK",
            "BYE",
        ]

    with_emulator(body)


def test_unmatched_number_gets_404() -> None:
    async def body(emulator: Any, records: list[dict[str, Any]]) -> None:
        client = await Client.open(emulator, "udp")
        await client.send(request("+17775550000"))
        assert (await response(client)).status == 404
        client.close()
        assert next(r for r in records if r["event"] == "request")["rule"] is None

    with_emulator(body)


def test_malformed_input_is_counted_and_ignored() -> None:
    async def body(emulator: Any, records: list[dict[str, Any]]) -> None:
        udp = await Client.open(emulator, "udp")
        await udp.send(b"GARBAGE\r\n\r\n")
        await udp.send(b"\r\n\r\n")  # a UDP keepalive: not malformed, not answered
        assert await udp.silent(0.3)
        udp.close()
        tcp = await Client.open(emulator, "tcp")
        await tcp.send(b"INVITE nonsense\r\n\r\n")  # framed, unparsable: the stream goes on
        await tcp.send(request("+19005550000", transport="tcp"))
        assert (await response(tcp)).status == 603
        await tcp.send(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: x\r\n\r\n")  # framing lost
        assert await tcp.closed_by_peer()
        tcp.close()
        assert emulator.stats.malformed == 3

    with_emulator(body)


def test_log_file_lines(tmp_path: Path) -> None:
    log = tmp_path / "emulator.jsonl"

    async def body(emulator: Any, records: list[dict[str, Any]]) -> None:
        client = await Client.open(emulator, "tcp")
        await client.send(request("+12025550123", transport="tcp"))
        await response(client)
        # flushed at once: readable while the emulator runs
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert [line["event"] for line in lines] == ["connect", "request", "response"]
        assert lines[1]["method"] == "INVITE" and lines[1]["number"] == "+12025550123"
        assert lines[2]["status"] == 302 and lines[2]["rule"] == 0
        assert {line["conn"] for line in lines} == {1}
        assert lines[1]["peer"].startswith("127.0.0.1:")
        assert isinstance(lines[1]["time"], float)
        client.close()

    with_emulator(body, log=log)


def test_given_signing_key_is_used() -> None:
    key = generate_key()

    async def body(emulator: Any, records: list[dict[str, Any]]) -> None:
        client = await Client.open(emulator, "udp")
        await client.send(request("+12025550123"))
        answer = await response(client)
        client.close()
        identity = answer.get("identity")
        assert identity is not None
        assert verify_passport(parse_identity(identity), key.public_key())

    with_emulator(body, signing_key=key)


def test_under_uvloop() -> None:
    """What the command line runs on by default: the same behaviour on uvloop's transports."""

    async def body(emulator: Any, records: list[dict[str, Any]]) -> None:
        for transport in TRANSPORTS:
            client = await Client.open(emulator, transport)
            await client.send(request("+12025550123", transport=transport))
            answer = await response(client)
            identity = answer.get("identity")
            assert answer.status == 302 and identity is not None
            assert verify_passport(parse_identity(identity), emulator.public_key)
            delayed = {"transport": transport, "branch": "z9hG4bK-c", "call_id": f"c-{transport}"}
            await client.send(request("+14045550000", **delayed))
            await client.send(request("+14045550000", method="CANCEL", **delayed))
            assert {(await response(client)).status for _ in range(3)} == {100, 200, 487}
            if transport != "udp":
                await client.send(PING_BYTES)
                await client.recv_pong()
                reset = request("+19991110000", transport=transport, call_id=f"r-{transport}")
                await client.send(reset)
                assert await client.closed_by_peer()
            client.close()
        assert emulator.stats.resets == 2

    with_emulator(body, uvloop=True)


def test_listen_parsing() -> None:
    listen = emu_mod.Listen.parse("tls:[::1]:5061")
    assert (listen.transport, listen.host, listen.port) == ("tls", "::1", 5061)
    assert str(listen) == "tls:[::1]:5061"
    for bad in (
        "sctp:127.0.0.1:5060",
        "udp:127.0.0.1",
        "udp:host.example:5060",
        "tcp:1.2.3.4:70000",
    ):
        with pytest.raises(ValueError, match="bad listen address"):
            emu_mod.Listen.parse(bad)


# --- command line ----------------------------------------------------------------------------


def read_until_ready(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> list[str]:
    """The lines the emulator prints before "ready"; fails (with its stderr) past `timeout`."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()  # read unbuffered, so select() sees every byte not yet taken
    out = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0 and selector.select(left):
            chunk = os.read(fd, 4096)
            out += chunk
            lines = out.decode().splitlines()
            if "ready" in lines:
                return lines[: lines.index("ready")]
            if not chunk:
                break  # exited
    proc.kill()
    _, err = proc.communicate(timeout=5)
    pytest.fail(f"emulator not ready: {out!r} {err}")


def test_command_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES_TOML)
    key_path, log = tmp_path / "signing.pem", tmp_path / "log.jsonl"
    argv = [sys.executable, str(TOOL), "--rules", str(rules), "--signing-key", str(key_path)]
    argv += ["--listen", "udp:127.0.0.1:0", "--listen", "tls:127.0.0.1:0", "--log", str(log)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            listening = read_until_ready(proc)
            assert [x.split(":")[0] for x in listening] == ["listening udp", "listening tls"]
            port = int(listening[0].rsplit(":", 1)[1])
            answer = run(udp_call(port, request("+12025550123")))
            assert answer.status == 302
            identity = answer.get("identity")
            assert identity is not None
            assert verify_passport(parse_identity(identity), load_key(key_path).public_key())
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events == ["request", "response"]


async def udp_call(port: int, data: bytes) -> Response:
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            if not got.done():
                got.set_result(data)

    udp, _ = await loop.create_datagram_endpoint(Proto, remote_addr=("127.0.0.1", port))
    udp.sendto(data)
    try:
        msg = parse_message(await asyncio.wait_for(got, 5))
    finally:
        udp.close()
    assert isinstance(msg, Response)
    return msg


def test_command_line_refuses_bad_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\naction = "bounce"\n')
    done = subprocess.run(
        [sys.executable, str(TOOL), "--listen", "udp:127.0.0.1:0", "--rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "rule[0].action" in done.stderr
    assert "ready" not in done.stdout
