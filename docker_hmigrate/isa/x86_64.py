"""x86-64: registers and how CRIU stores them (thread_info_x86), the park frame, musl's
struct pthread (TLS variant 2: the thread pointer fs_base points at the struct itself)
and jmp_buf, the auxv values of a fresh x86-64 process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from docker_hmigrate.isa.base import (
    AuxvBaseline,
    IsaBase,
    JmpBufLayout,
    PthreadLayout,
    ThreadRegs,
)

# How a register of the metadata ("rbx") is named in CRIU's user_x86_regs_entry.
CRIU_REG = {"rbx": "bx", "rbp": "bp", "rax": "ax", "rdi": "di", "rsi": "si",
            "rdx": "dx", "r10": "r10", "r12": "r12", "r13": "r13", "r14": "r14", "r15": "r15"}
# Registers that may hold a pointer across a park point: callee-saved temporaries and
# the futex call's arguments and result.
POINTER_REGS = ("bx", "r12", "r13", "r14", "r15", "di", "si", "dx", "r10", "ax")
_GP = ("r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx",
       "si", "di", "ip", "sp", "fs_base", "gs_base", "ds", "es", "fs", "gs")
JB_REGS = ("rbx", "rbp", "r12", "r13", "r14", "r15")


class X86_64Isa(IsaBase):
    name = "x86-64"
    elf_machine = 62
    elf_machine_name = "EM_X86_64"
    criu_march = 1  # March.X86_64
    docker_arch = "amd64"
    docker_variant: str | None = None
    uname_machines = ("x86_64", "amd64")
    gnu_triple = "x86_64-linux-gnu"
    dynamic_loader = "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    user_end = 0x7FFFFFFFF000  # TASK_SIZE with 4-level page tables (47 bits)

    callee_saved = ("rbx", "r12", "r13", "r14", "r15")  # rbp is the frame chain
    fp, sp, lr = "rbp", "rsp", None
    dwarf_regs = {0: "rax", 1: "rdx", 2: "rcx", 3: "rbx", 4: "rsi", 5: "rdi", 6: "rbp",
                  7: "rsp", **{i: f"r{i}" for i in range(8, 16)}, 16: "rip"}
    sys_futex = 202
    result_reg = nr_reg = "rax"
    arg_regs = ("rdi", "rsi", "rdx", "r10")

    tls_variant = 2
    tls_gap_above_tp = 0
    # musl 1.2.3 struct pthread on x86-64 (no TLS_ABOVE_TP), sizeof 200.
    pthread = PthreadLayout(200, {"self": 0, "dtv": 8, "prev": 16, "next": 24, "sysinfo": 32,
                                  "canary": 40, "common": 48, "robust_head": 136})
    # musl 1.2 `__jb` (8 words): rbx, rbp, r12, r13, r14, r15, rsp (after the return), rip.
    jmpbuf = JmpBufLayout(200, {r: 8 * i for i, r in enumerate(JB_REGS)}, pc=56, sp=48, fp=8,
                          rest=64)
    # The baseline every x86-64 CPU has (fpu..sse2 in CPUID 1 EDX) and the kernel's values.
    auxv = AuxvBaseline(hwcap=0x178BFBFF, hwcap2=0, platform=b"x86_64\0", minsigstksz=0xE30,
                        criu_auxv_size=44)
    needs_sa_restorer = True
    criu_regs_summary = ("core_entry.thread_info (thread_info_x86: gpregs ip/sp/bp/ax.., "
                         "fs_base = thread pointer, fpregs x87/SSE/xsave, tls GDT user_desc_t "
                         "entries)")

    # -- CRIU's core entry ---------------------------------------------------------

    def has_thread(self, core) -> bool:
        return core.mtype == self.criu_march and core.HasField("thread_info") \
            and core.thread_info.gpregs.mode in (0, 1)

    def read_regs(self, core) -> ThreadRegs:
        g = core.thread_info.gpregs
        return ThreadRegs(
            pc=g.ip, sp=g.sp, fp=g.bp, tp=g.fs_base, syscall_nr=g.orig_ax, result=g.ax,
            args=(g.di, g.si, g.dx, g.r10),
            callee_saved={r: getattr(g, CRIU_REG[r]) for r in self.callee_saved})

    def clear_tid_addr(self, core) -> int:
        return core.thread_info.clear_tid_addr

    def get_tp(self, core) -> int:
        return core.thread_info.gpregs.fs_base

    def set_tp(self, core, tp: int) -> None:
        core.thread_info.gpregs.fs_base = tp

    def remap_registers(self, core, remap: Callable[[int], int]) -> None:
        g = core.thread_info.gpregs
        for name in POINTER_REGS:
            setattr(g, name, remap(getattr(g, name)))

    def set_core(self, core, new: Callable[..., Any], clear_tid_addr: int, tp: int,
                 regs: dict[str, int], sp: int, pc: int, native=None) -> None:
        """Make core an x86-64 thread (new: criu.schema.new). native: a thread_info of a
        process checkpointed on the target host (the template), whose segment selectors,
        flags and FPU/xsave layout are what its CRIU and CPU expect; no FP value is live
        at a park point."""
        core.ClearField("ti_aarch64")
        core.mtype = self.criu_march
        g = new("user_x86_regs_entry", **{n: 0 for n in _GP}, orig_ax=(1 << 64) - 1,
                cs=0x33, ss=0x2B, flags=0x246, mode=1)
        if native is not None:
            n = native.gpregs
            g.cs, g.ss, g.flags, g.ds, g.es, g.fs, g.gs = n.cs, n.ss, n.flags, n.ds, n.es, \
                n.fs, n.gs
        for r, v in regs.items():
            setattr(g, CRIU_REG.get(r, r), v)
        g.ip, g.sp, g.fs_base = pc, sp, tp
        if native is not None:
            fp = native.fpregs
            tls = list(native.tls)
        else:
            fp = new("user_x86_fpregs_entry", cwd=0x37F, swd=0, twd=0, fop=0, rip=0, rdp=0,
                     mxcsr=0x1F80, mxcsr_mask=0xFFFF, st_space=[0] * 32, xmm_space=[0] * 64,
                     padding=[0] * 24)
            tls = []
        ti = new("thread_info_x86", clear_tid_addr=clear_tid_addr, gpregs=g, fpregs=fp)
        ti.tls.extend(tls)
        core.thread_info.CopyFrom(ti)

    def native_thread(self, core):
        """What set_core takes as `native` from a template's thread: its thread_info."""
        return core.thread_info if core.HasField("thread_info") else None

    def describe_regs(self, core) -> str:
        g = core.thread_info.gpregs
        return f"pc={g.ip:#x} sp={g.sp:#x} bp={g.bp:#x} fs_base={g.fs_base:#x} ax={g.ax:#x}"

    # -- the runtime's park frame ----------------------------------------------------

    def park_frame(self, mem, regs: ThreadRegs, frame_size: int) -> tuple[int, int, int]:
        """The runtime's futex wait (push rbp; mov rbp, rsp): its CFA, and the caller's
        frame pointer and return address from its frame record."""
        if regs.fp != self.park_frame_pointer(regs.sp, frame_size):
            raise ValueError(f"unexpected frame at the park point (rbp {regs.fp:#x}, "
                             f"rsp {regs.sp:#x})")
        return regs.fp + 16, mem.read_u64(regs.fp), mem.read_u64(regs.fp + 8)

    def park_frame_pointer(self, sp: int, frame_size: int) -> int | None:
        """The park frame's frame pointer from its SP alone (push rbp; mov rbp, rsp)."""
        return sp + frame_size - 16

    def write_park_frame(self, mem, cfa: int, caller_fp: int, own_ret: int) -> dict[str, int]:
        """The futex wait's frame record on the stack; rbp points at it."""
        mem.write_u64(cfa - 16, caller_fp)
        mem.write_u64(cfa - 8, own_ret)
        return {"rbp": cfa - 16}

    def park_function_ok(self, code: bytes) -> bool:
        return sets_frame_pointer(code)


def sets_frame_pointer(code: bytes) -> bool:
    """Whether a function starts with push rbp; mov rbp, rsp (maybe after endbr64)."""
    if code.startswith(b"\xf3\x0f\x1e\xfa"):
        code = code[4:]
    return code.startswith(b"\x55\x48\x89\xe5")


X86_64 = X86_64Isa()
