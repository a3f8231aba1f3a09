"""The registers of a parked thread as recode reads them, whatever the ISA."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ThreadRegs:
    """What recode reads from a source thread's core entry."""

    pc: int
    sp: int
    fp: int  # frame pointer: rbp / x29
    tp: int  # thread pointer: fs_base / TPIDR_EL0
    syscall_nr: int  # x86-64 orig_ax, aarch64 x8 (-1: none)
    result: int  # rax / x0: the syscall's return value when pc is after the syscall
    args: tuple[int, int, int, int]  # the syscall's first four arguments
    callee_saved: dict[str, int]
    lr: int = 0  # aarch64's link register (x30): a leaf keeps its return address there
