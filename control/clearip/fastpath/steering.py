"""Call steering in the kernel: an SK_REUSEPORT program hands each datagram to its call's worker.

Every worker binds the shared UDP listener with SO_REUSEPORT, and the kernel spreads datagrams
over them by the 4-tuple: all of one switch's calls arrive from one address and port, so they
land on one worker, which hands half of them (two workers) to the other through a Unix socket
(relay/handoff.py), a copy and a wake-up per message. This program picks the worker the way
`relay.ids.owner_of` does, by the CRC-32 of the Call-ID modulo the workers, so a message
lands where its call lives and the hand-off is left for what the program cannot read (no
Call-ID in the first SCAN bytes, a Call-ID longer than MAX_ID, a worker restarting).

The program is assembled here (`bpfasm`) and loaded with bpf(2): no compiler, kernel headers
or bcc. The supervisor loads it at start (~170 ms, the verifier's) and keeps it and one
REUSEPORT_SOCKARRAY map per shared UDP listener for its life, passing their fds to every
worker it starts; a worker puts its socket in slot `index` (`join`), and the kernel empties
the slot when the socket closes. The program never drops: whatever it cannot steer the
kernel spreads as before.

Why the verifier accepts the loops: each one is bounded by a constant, and wherever a loop
ends with a found position (the Call-ID header, its value, its length) the position goes
through the per-CPU scratch map and is read back, an unknown the verifier checks once, instead
of once per iteration the loop could have ended in.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct

from clearip.fastpath.bpfasm import Asm, R
from clearip.fastpath.syscall import Map, map_create, prog_load

__all__ = ["Steering", "SteeringError", "join", "parse_fds", "program"]

SCAN = 2048  # bytes of a datagram searched for the Call-ID (a power of two: indices are masked)
MAX_ID = 256  # longest Call-ID value steered (trimmed); longer ones are left to the hand-off
MAX_WS = 16  # blanks read around the colon of "Call-ID :"
MIN_LEN = 40  # a shorter datagram is no SIP request worth steering (keepalives, STUN)

_MAP_PERCPU_ARRAY = 6
_MAP_REUSEPORT_SOCKARRAY = 20
_PROG_SK_REUSEPORT = 21
_SK_REUSEPORT_SELECT = 39  # the program's attach type
_SO_ATTACH_REUSEPORT_EBPF = 52
_HELPER_MAP_LOOKUP = 1
_HELPER_SKB_LOAD_BYTES = 26
_HELPER_SK_SELECT_REUSEPORT = 82
_SK_PASS = 1
_UDP_HEADER = 8
_CTX_LEN = 16  # offsetof(struct sk_reuseport_md, len)
_CRC32_POLY = 0xEDB88320  # zlib's CRC-32, reflected

# the scratch map's value: the datagram's first SCAN bytes, then the positions passed on
_SAVED = SCAN  # u64 slots after the bytes: length read, value start, value length
_N, _START, _LEN = _SAVED, _SAVED + 8, _SAVED + 16
_SCRATCH_SIZE = SCAN + 24


class SteeringError(Exception):
    """The kernel would not make the maps or load the program (the message says why)."""


def _blank(asm: Asm, reg: int, target: str) -> None:
    """goto target if reg is a space or a tab."""
    asm.jmp(reg, "==", 0x20, target)
    asm.jmp(reg, "==", 0x09, target)


def program(scratch_fd: int, sockarray_fd: int, workers: int) -> bytes:
    """The steering program's instructions, for these maps and this many workers.

    r6 the context, r7 the scratch buffer; everything else is reloaded from the buffer after
    each loop (see the module's docstring)."""
    if not 1 <= workers <= 2**16:
        raise ValueError(f"workers out of range: {workers}")
    mask = SCAN - 1
    a = Asm()
    a.alu(6, "=", R(1))
    a.store_imm(10, -4, 0, 4)  # key 0
    a.map_fd(1, scratch_fd)
    a.alu(2, "=", R(10))
    a.alu(2, "+", -4)
    a.call(_HELPER_MAP_LOOKUP)
    a.jmp(0, "==", 0, "pass")
    a.alu(7, "=", R(0))
    # n = min(payload length, SCAN); the payload starts after the UDP header
    a.load(8, 6, _CTX_LEN, 4)
    a.jmp(8, "<", _UDP_HEADER + MIN_LEN, "pass")
    a.alu(8, "-", _UDP_HEADER)
    a.jmp(8, "<=", SCAN, "sized")
    a.alu(8, "=", SCAN)
    a.label("sized")
    a.store(7, _N, 8, 8)
    a.alu(1, "=", R(6))
    a.alu(2, "=", _UDP_HEADER)
    a.alu(3, "=", R(7))
    a.alu(4, "=", R(8))
    a.call(_HELPER_SKB_LOAD_BYTES)
    a.jmp(0, "!=", 0, "pass")

    # 1. the header: "\r\nCall-ID" or "\r\ni" (any case), then a blank or a colon; r9 = the
    #    CR's index. The loop's own path has one branch (the verifier keeps each one it has not
    #    followed yet, at most 8,192): all other checks are off it, after a CR.
    a.alu(9, "=", 0)
    a.label("scan")
    a.jmp(9, ">=", SCAN - 10, "pass")
    a.alu(2, "=", R(7))
    a.alu(2, "+", R(9))
    a.load(3, 2, 0, 1)
    a.jmp(3, "==", 0x0D, "cr")
    a.label("next")
    a.alu(9, "+", 1)
    a.goto("scan")
    a.label("cr")
    a.alu(1, "=", R(9))
    a.alu(1, "+", 10)
    a.jmp(1, ">", R(8), "pass")  # bytes i..i+9 not all read: the header is not there
    a.load(3, 2, 1, 1)
    a.jmp(3, "!=", 0x0A, "next")
    a.load(3, 2, 2, 1)
    a.alu(3, "|", 0x20)
    a.jmp(3, "==", ord("c"), "long")
    a.jmp(3, "!=", ord("i"), "next")
    a.load(4, 2, 3, 1)  # "i" then
    a.alu(1, "=", R(9))
    a.alu(1, "+", 3)
    _blank(a, 4, "name")
    a.jmp(4, "==", ord(":"), "name")
    a.goto("next")
    a.label("long")
    for k, ch in enumerate("all-id", start=3):
        a.load(4, 2, k, 1)
        a.alu(4, "|", 0x20)  # "-" (0x2d) is unchanged
        a.jmp(4, "!=", ord(ch), "next")
    a.load(4, 2, 9, 1)
    a.alu(1, "=", R(9))
    a.alu(1, "+", 9)
    _blank(a, 4, "name")
    a.jmp(4, "==", ord(":"), "name")
    a.goto("next")
    a.label("name")
    a.store(7, _START, 1, 8)  # where the name ends

    # 2. blanks, the colon, blanks: r1 = the position, r8 = n, both read back
    a.load(1, 7, _START, 8)
    a.load(8, 7, _N, 8)
    for side in ("before", "after"):
        for k in range(MAX_WS):
            a.jmp(1, ">=", R(8), "pass")
            a.alu(3, "=", R(1))
            a.alu(3, "&", mask)
            a.alu(2, "=", R(7))
            a.alu(2, "+", R(3))
            a.load(4, 2, 0, 1)
            a.jmp(4, "==", 0x20, f"{side}{k}")
            a.jmp(4, "!=", 0x09, f"{side}_done")
            a.label(f"{side}{k}")
            a.alu(1, "+", 1)
        a.goto("pass")  # more blanks than anyone sends
        a.label(f"{side}_done")
        if side == "before":
            a.jmp(4, "!=", ord(":"), "pass")
            a.alu(1, "+", 1)
    a.store(7, _START, 1, 8)

    # 3. the value's length up to CR/LF, trailing blanks trimmed: r2 = k; the trimmed length
    #    is kept in the buffer, not a register (one state per length it could have: too many)
    a.load(1, 7, _START, 8)
    a.load(8, 7, _N, 8)
    a.store_imm(7, _LEN, 0, 8)
    a.alu(2, "=", 0)
    a.label("value")
    a.jmp(2, ">=", MAX_ID, "pass")  # too long to steer (or no line end)
    a.alu(3, "=", R(1))
    a.alu(3, "+", R(2))
    a.jmp(3, ">=", R(8), "pass")  # no line end in what was read
    a.alu(3, "&", mask)
    a.alu(4, "=", R(7))
    a.alu(4, "+", R(3))
    a.load(4, 4, 0, 1)
    a.jmp(4, "==", 0x0D, "measured")
    a.jmp(4, "==", 0x0A, "measured")
    a.alu(2, "+", 1)
    for blank in (0x20, 0x09, 0x0B, 0x0C):  # what bytes.strip() strips
        a.jmp(4, "==", blank, "value")
    a.store(7, _LEN, 2, 8)
    a.goto("value")
    a.label("measured")
    a.load(5, 7, _LEN, 8)
    a.jmp(5, "==", 0, "pass")

    # 4. CRC-32 of value[0:len], bit by bit (zlib.crc32): w0
    a.load(1, 7, _START, 8)
    a.load(5, 7, _LEN, 8)
    a.alu32(0, "=", 0xFFFFFFFF)
    a.alu(2, "=", 0)
    a.label("crc")
    a.jmp(2, ">=", MAX_ID, "crc_done")
    a.jmp(2, ">=", R(5), "crc_done")
    a.alu(3, "=", R(1))
    a.alu(3, "+", R(2))
    a.alu(3, "&", mask)
    a.alu(4, "=", R(7))
    a.alu(4, "+", R(3))
    a.load(4, 4, 0, 1)
    a.alu32(0, "^", R(4))
    for _ in range(8):
        a.alu32(3, "=", R(0))
        a.alu32(3, "&", 1)
        # the polynomial or 0: a product, not -(bit) & poly (a verifier forks on that mask)
        a.alu32(3, "*", _CRC32_POLY)
        a.alu32(0, ">>", 1)
        a.alu32(0, "^", R(3))
    a.alu(2, "+", 1)
    a.goto("crc")
    a.label("crc_done")
    a.alu32(0, "^", 0xFFFFFFFF)
    a.alu32(0, "%", workers)
    a.store(10, -8, 0, 4)
    a.alu(1, "=", R(6))
    a.map_fd(2, sockarray_fd)
    a.alu(3, "=", R(10))
    a.alu(3, "+", -8)
    a.alu(4, "=", 0)
    a.call(_HELPER_SK_SELECT_REUSEPORT)  # an empty slot (a worker restarting): no choice made
    a.label("pass")
    a.alu(0, "=", _SK_PASS)
    a.exit()
    return a.assemble()


class Steering:
    """The supervisor's: per shared UDP listener, a socket array and the program that uses it."""

    def __init__(self, groups: list[tuple[int, int]], scratch: int) -> None:
        self.groups = groups  # (sockarray fd, program fd) per listener, in listen.udp order
        self._scratch = scratch

    @classmethod
    def load(cls, listeners: int, workers: int) -> Steering:
        """SteeringError when the kernel cannot (no bpf(2) rights, no SK_REUSEPORT programs)."""
        made: list[int] = []
        try:
            scratch = map_create(_MAP_PERCPU_ARRAY, 4, _SCRATCH_SIZE, 1, b"cip_steer_buf")
            made.append(scratch)
            groups = []
            for _ in range(listeners):
                array = map_create(_MAP_REUSEPORT_SOCKARRAY, 4, 8, workers, b"cip_steer_socks")
                made.append(array)
                code = program(scratch, array, workers)
                prog = prog_load(_PROG_SK_REUSEPORT, _SK_REUSEPORT_SELECT, code, b"cip_steer")
                made.append(prog)
                groups.append((array, prog))
        except BaseException as e:
            _close_all(made)
            if isinstance(e, OSError):
                raise SteeringError(e.strerror or str(e)) from None
            raise
        return cls(groups, scratch)

    def fds(self) -> list[int]:
        """What a worker must inherit."""
        return [fd for group in self.groups for fd in group]

    def arg(self) -> str:
        """The worker's --steering-fds: "array,program" per listener, ";" between them."""
        return ";".join(f"{array},{prog}" for array, prog in self.groups)

    def close(self) -> None:
        _close_all([*self.fds(), self._scratch])
        self.groups = []


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def parse_fds(arg: str) -> list[tuple[int, int]]:
    """--steering-fds back into (sockarray fd, program fd) per listener ("" : none)."""
    groups = []
    for part in filter(None, arg.split(";")):
        array, prog = part.split(",")
        groups.append((int(array), int(prog)))
    return groups


def join(sock: socket.socket, array_fd: int, prog_fd: int, index: int) -> None:
    """Put a worker's bound SO_REUSEPORT socket in its slot and make its group use the
    program (OSError when the kernel refuses)."""
    array = Map(array_fd, "steering sockets")  # not closed: the worker keeps the fd
    array.update(struct.pack("<I", index), struct.pack("<Q", sock.fileno()))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_EBPF, prog_fd)
