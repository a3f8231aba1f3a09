"""x86-64 facts recode needs: registers of a parked thread, musl's struct pthread (TLS
variant 2: the thread pointer fs_base points at the struct itself)."""

from __future__ import annotations

from dataclasses import dataclass

ISA = "x86-64"
CALLEE_SAVED = ("rbx", "r12", "r13", "r14", "r15")  # rbp is the frame chain
SYS_FUTEX = 202
# How a saved register of the metadata ("rbx") is named in CRIU's user_x86_regs_entry.
CRIU_REG = {"rbx": "bx", "rbp": "bp", "r12": "r12", "r13": "r13", "r14": "r14", "r15": "r15"}

# musl 1.2.3 struct pthread on x86-64 (no TLS_ABOVE_TP): byte offsets, sizeof 200.
PTHREAD_SIZE = 200
PTHREAD = {"self": 0, "dtv": 8, "prev": 16, "next": 24, "sysinfo": 32, "canary": 40,
           "common": 48, "robust_head": 136}


@dataclass
class ThreadRegs:
    """What recode reads from a source thread's core entry."""

    pc: int
    sp: int
    fp: int
    tp: int  # thread pointer (fs_base)
    syscall_nr: int  # orig_ax: the syscall the thread was in (-1: none)
    result: int  # ax: its return value when pc is after the syscall instruction
    args: tuple[int, int, int, int]  # rdi, rsi, rdx, r10
    callee_saved: dict[str, int]


def read_regs(core) -> ThreadRegs:
    g = core.thread_info.gpregs
    return ThreadRegs(
        pc=g.ip, sp=g.sp, fp=g.bp, tp=g.fs_base, syscall_nr=g.orig_ax, result=g.ax,
        args=(g.di, g.si, g.dx, g.r10),
        callee_saved={r: getattr(g, CRIU_REG[r]) for r in CALLEE_SAVED})
