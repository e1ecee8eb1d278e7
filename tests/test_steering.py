"""The call-steering program (fastpath/steering.py) in the kernel: real SO_REUSEPORT sockets on
loopback, datagrams from one source port (which the kernel's own hash would give to one socket),
and the socket each one reaches compared with the worker `relay.ids.owner_of` names."""

from __future__ import annotations

import os
import random
import select
import socket
import string
from collections.abc import Iterator

import pytest

from clearip.fastpath import steering
from clearip.fastpath.bpfasm import Asm, R
from clearip.relay.ids import owner_of

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loading eBPF needs root")


def _request(call_id_line: str, *, before: str = "", method: str = "INVITE") -> bytes:
    return (
        f"{method} sip:+12025550123@127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5064;branch=z9hG4bK-1\r\n"
        f"{before}"
        "From: <sip:+13035550199@127.0.0.1>;tag=1\r\n"
        "To: <sip:+12025550123@127.0.0.1>\r\n"
        f"{call_id_line}\r\n"
        f"CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class Group:
    """`workers` sockets sharing a port through SO_REUSEPORT, steered by the program."""

    def __init__(self, workers: int) -> None:
        self.socks: list[socket.socket] = []
        port = 0
        for _ in range(workers):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", port))
            port = sock.getsockname()[1]
            sock.setblocking(False)
            self.socks.append(sock)
        self.port = port
        self.steering = steering.Steering.load(1, workers)
        array, prog = self.steering.groups[0]
        for index, sock in enumerate(self.socks):
            steering.join(sock, array, prog, index)
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.bind(("127.0.0.1", 0))  # one source port for everything, like one switch

    def reached(self, data: bytes) -> int:
        """The index of the socket that got `data`."""
        self.client.sendto(data, ("127.0.0.1", self.port))
        live = [s for s in self.socks if s.fileno() >= 0]
        readable, _, _ = select.select(live, [], [], 2.0)
        assert readable, "datagram lost"
        got = readable[0].recv(65536)
        assert got == data
        return self.socks.index(readable[0])

    def close(self) -> None:
        for sock in [*self.socks, self.client]:
            sock.close()
        self.steering.close()


@pytest.fixture
def group(request: pytest.FixtureRequest) -> Iterator[Group]:
    g = Group(request.param)
    try:
        yield g
    finally:
        g.close()


def _call_ids(rng: random.Random, count: int) -> list[str]:
    alphabet = string.ascii_letters + string.digits + "-.!%*_+`'~()<>:\\\"/[]?{}"
    ids = []
    for _ in range(count):
        token = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
        ids.append(token + (f"@10.0.0.{rng.randint(1, 254)}" if rng.random() < 0.5 else ""))
    return ids


@needs_root
@pytest.mark.parametrize("group", [2, 3, 4], indirect=True)
def test_each_call_reaches_the_worker_owner_of_names(group: Group) -> None:
    rng = random.Random(len(group.socks))
    forms = [
        "Call-ID: {}",
        "call-id:{}",
        "CALL-ID :  {}  ",
        "Call-ID:\t{}\t",
        "i: {}",
        "I:{}",
        "i  :  {}",
    ]
    workers = len(group.socks)
    picked = set()
    for n, call_id in enumerate(_call_ids(rng, 300)):
        line = forms[n % len(forms)].format(call_id)
        before = "Identity: " + "x" * rng.choice([0, 100, 900, 1500]) + "\r\n"
        data = _request(line, before=before, method=rng.choice(["INVITE", "ACK", "BYE"]))
        expected = owner_of(data, workers)
        assert expected is not None
        assert group.reached(data) == expected, line
        picked.add(expected)
    assert picked == set(range(workers))


@needs_root
@pytest.mark.parametrize("group", [2], indirect=True)
def test_a_response_is_steered_by_its_call_id_too(group: Group) -> None:
    for n in range(40):
        data = (
            "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-x\r\n"
            f"To: <sip:a@b>;tag=2\r\nFrom: <sip:c@d>;tag=1\r\nCall-ID: resp-{n}@h\r\n"
            "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        assert group.reached(data) == owner_of(data, 2)


@needs_root
@pytest.mark.parametrize("group", [2], indirect=True)
def test_what_it_cannot_read_is_still_delivered(group: Group) -> None:
    """No Call-ID, one too long, one past the bytes searched, a keepalive, a header named like
    it ("Identity:" starts with i): each reaches a socket; the worker hands it on if need be."""
    cases = [
        _request("Subject: none"),
        _request("Call-ID: " + "x" * (steering.MAX_ID + 10)),
        _request("Call-ID: late@h", before="X-Pad: " + "p" * steering.SCAN + "\r\n"),
        _request("Identity: abc"),
        b"\r\n\r\n",
        b"\x00\x01\x00\x00" + bytes(16),
    ]
    for data in cases:
        assert group.reached(data) in (0, 1)


@needs_root
@pytest.mark.parametrize("group", [3], indirect=True)
def test_a_worker_gone_leaves_its_calls_to_the_others(group: Group) -> None:
    """The kernel empties a closed socket's slot: its calls go where the kernel's hash puts
    them (and the hand-off takes them on), never nowhere."""
    group.socks[1].close()
    for n in range(60):
        data = _request(f"Call-ID: gone-{n}@h")
        reached = group.reached(data)
        assert reached != 1
        if owner_of(data, 3) != 1:
            assert reached == owner_of(data, 3)


def test_the_program_assembles_and_refuses_a_worker_count_it_cannot_use() -> None:
    code = steering.program(3, 4, 2)
    assert len(code) % 8 == 0 and 200 < len(code) // 8 < 4096
    with pytest.raises(ValueError):
        steering.program(3, 4, 0)


def test_assembler_jumps_and_immediates() -> None:
    a = Asm()
    a.alu(0, "=", 1)
    a.jmp(0, "==", R(1), "end")
    a.alu32(0, "^", 0xFFFFFFFF)  # the 32-bit pattern, stored as the signed field holds it
    a.label("end")
    a.exit()
    code = a.assemble()
    assert len(code) == 4 * 8
    assert code[8:10] == bytes([0x1D, 0x10])  # jeq r0, r1
    assert int.from_bytes(code[10:12], "little", signed=True) == 1  # over one instruction
    assert int.from_bytes(code[20:24], "little", signed=True) == -1
    b = Asm()
    b.goto("nowhere")
    with pytest.raises(ValueError, match="undefined label"):
        b.assemble()


def test_the_worker_argument_round_trips() -> None:
    assert steering.parse_fds("") == []
    assert steering.parse_fds("4,5;7,8") == [(4, 5), (7, 8)]


def test_status_says_how_calls_reach_their_workers() -> None:
    from clearip.cli import format_status

    steered = format_status({"steering": {"mode": "ebpf"}, "handoff": {"sent": 3}})
    assert "steering   in the kernel (Call-ID), 3 messages handed between workers" in steered
    refused = format_status({"steering": {"mode": "handoff", "reason": "EPERM"}})
    assert "by hand-off: the program did not load (EPERM)" in refused


@needs_root
def test_a_signal_during_the_load_does_not_cost_the_steering() -> None:
    """The verifier gives up with EAGAIN when a signal is pending (CI: a worker's SIGCHLD arrived
    during the ~170 ms load and the proxy ran unsteered); the load is tried again."""
    import signal
    import threading

    got: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda sig, _frame: got.append(sig))
    main = threading.main_thread().ident
    assert main is not None
    stop = threading.Event()

    def poke() -> None:  # two signals, 30 ms apart: each lands inside one verification
        for _ in range(2):
            if stop.wait(0.03):
                return
            signal.pthread_kill(main, signal.SIGUSR1)

    thread = threading.Thread(target=poke)
    try:
        thread.start()
        loaded = steering.Steering.load(1, 2)
        loaded.close()
    finally:
        stop.set()
        thread.join()
        signal.signal(signal.SIGUSR1, previous)
    assert got, "no signal arrived during the load: the test proved nothing"
