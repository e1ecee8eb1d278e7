"""A small eBPF assembler: instructions as Python calls, jumps to named labels.

For the call-steering program (`steering.py`), which is loaded straight with bpf(2): no
compiler, no kernel headers and no bcc, so it loads on any kernel with
SK_REUSEPORT programs (4.19+) and bounded loops (5.3+). Only what that program needs is here.

Registers are 0-10 (r10 the frame pointer). `alu`/`jmp` take an int immediate or a register
given as `R(n)`; the `32` variants work on the low 32 bits and zero the upper ones.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["Asm", "R"]

_INSN = struct.Struct("<BBhi")

# instruction classes, sizes, modes, sources
_LD, _LDX, _ST, _STX, _ALU, _JMP, _JMP32, _ALU64 = range(8)
_SIZES = {1: 0x10, 2: 0x08, 4: 0x00, 8: 0x18}
_MEM, _IMM = 0x60, 0x00
_K, _X = 0x00, 0x08
_ALU_OPS = {
    "+": 0x00, "-": 0x10, "*": 0x20, "/": 0x30, "|": 0x40, "&": 0x50, "<<": 0x60, ">>": 0x70,
    "neg": 0x80, "%": 0x90, "^": 0xA0, "=": 0xB0, "s>>": 0xC0,
}  # fmt: skip
_JMP_OPS = {
    "==": 0x10, ">": 0x20, ">=": 0x30, "&": 0x40, "!=": 0x50, "s>": 0x60, "s>=": 0x70,
    "<": 0xA0, "<=": 0xB0, "s<": 0xC0, "s<=": 0xD0,
}  # fmt: skip
_JA, _CALL, _EXIT = 0x00, 0x80, 0x90
PSEUDO_MAP_FD = 1


@dataclass(frozen=True, slots=True)
class R:
    """A register operand (an int operand is an immediate)."""

    n: int


class Asm:
    def __init__(self) -> None:
        self._insns: list[tuple[int, int, int, int, int]] = []  # code, dst, src, off, imm
        self._labels: dict[str, int] = {}
        self._fixups: list[tuple[int, str]] = []  # instruction index, label it jumps to

    def __len__(self) -> int:
        return len(self._insns)

    def _emit(self, code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> None:
        if not -(2**31) <= imm < 2**32:
            raise ValueError(f"immediate out of range: {imm}")
        if imm >= 2**31:
            imm -= 2**32  # the 32-bit pattern, as the signed field holds it
        self._insns.append((code, dst, src, off, imm))

    def label(self, name: str) -> None:
        if name in self._labels:
            raise ValueError(f"label {name!r} defined twice")
        self._labels[name] = len(self._insns)

    def _alu(self, cls: int, dst: int, op: str, operand: int | R) -> None:
        code = cls | _ALU_OPS[op]
        if isinstance(operand, R):
            self._emit(code | _X, dst, operand.n)
        else:
            self._emit(code | _K, dst, imm=operand)

    def alu(self, dst: int, op: str, operand: int | R = 0) -> None:
        """64-bit: dst op= operand ("=" moves, "neg" negates)."""
        self._alu(_ALU64, dst, op, operand)

    def alu32(self, dst: int, op: str, operand: int | R = 0) -> None:
        self._alu(_ALU, dst, op, operand)

    def _jump(self, cls: int, op: str, dst: int, operand: int | R, target: str) -> None:
        self._fixups.append((len(self._insns), target))
        code = cls | _JMP_OPS[op]
        if isinstance(operand, R):
            self._emit(code | _X, dst, operand.n)
        else:
            self._emit(code | _K, dst, imm=operand)

    def jmp(self, dst: int, op: str, operand: int | R, target: str) -> None:
        """if dst op operand goto target (64-bit compare; ">" and "<" are unsigned)."""
        self._jump(_JMP, op, dst, operand, target)

    def jmp32(self, dst: int, op: str, operand: int | R, target: str) -> None:
        self._jump(_JMP32, op, dst, operand, target)

    def goto(self, target: str) -> None:
        self._fixups.append((len(self._insns), target))
        self._emit(_JMP | _JA)

    def load(self, dst: int, src: int, off: int, size: int) -> None:
        """dst = *(u<size*8> *)(src + off)"""
        self._emit(_LDX | _MEM | _SIZES[size], dst, src, off)

    def store(self, dst: int, off: int, src: int, size: int) -> None:
        """*(u<size*8> *)(dst + off) = src"""
        self._emit(_STX | _MEM | _SIZES[size], dst, src, off)

    def store_imm(self, dst: int, off: int, imm: int, size: int) -> None:
        self._emit(_ST | _MEM | _SIZES[size], dst, 0, off, imm)

    def map_fd(self, dst: int, fd: int) -> None:
        """dst = the map with this fd (the two-slot ld_imm64 the loader resolves)."""
        self._emit(_LD | _IMM | _SIZES[8], dst, PSEUDO_MAP_FD, 0, fd)
        self._emit(0)

    def call(self, helper: int) -> None:
        self._emit(_JMP | _CALL, imm=helper)

    def exit(self) -> None:
        self._emit(_JMP | _EXIT)

    def assemble(self) -> bytes:
        insns = list(self._insns)
        for at, target in self._fixups:
            if target not in self._labels:
                raise ValueError(f"jump to undefined label {target!r}")
            code, dst, src, _, imm = insns[at]
            off = self._labels[target] - at - 1
            if not -(2**15) <= off < 2**15:
                raise ValueError(f"jump to {target!r} too far: {off}")
            insns[at] = (code, dst, src, off, imm)
        return b"".join(_INSN.pack(c, (s << 4) | d, o, i) for c, d, s, o, i in insns)
