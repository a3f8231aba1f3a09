"""x86-64 facts recode needs: registers of a parked thread and how CRIU stores them,
the park frame, musl's struct pthread (TLS variant 2: the thread pointer fs_base points
at the struct itself), the auxv values of a fresh x86-64 process."""

from __future__ import annotations

from docker_hmigrate.criu import schema
from docker_hmigrate.criu.schema import March
from docker_hmigrate.recode.regs import ThreadRegs

ISA = "x86-64"
MARCH = March.X86_64
EM = 62
CALLEE_SAVED = ("rbx", "r12", "r13", "r14", "r15")  # rbp is the frame chain
# CRIU's AT_VECTOR_SIZE for this ISA: the longest saved auxv its restore accepts
CRIU_AUXV_SIZE = 44
SYS_FUTEX = 202
RESULT_REG, NR_REG = "rax", "rax"
ARG_REGS = ("rdi", "rsi", "rdx", "r10")
# How a saved register of the metadata ("rbx") is named in CRIU's user_x86_regs_entry.
CRIU_REG = {"rbx": "bx", "rbp": "bp", "rax": "ax", "rdi": "di", "rsi": "si",
           "rdx": "dx", "r10": "r10", "r12": "r12", "r13": "r13", "r14": "r14", "r15": "r15"}

# musl 1.2.3 struct pthread on x86-64 (no TLS_ABOVE_TP): byte offsets, sizeof 200.
PTHREAD_SIZE = 200
PTHREAD_COMMON_SIZE = 152  # tid .. stdio_locks, the same fields on both ISAs
PTHREAD = {"self": 0, "dtv": 8, "prev": 16, "next": 24, "sysinfo": 32, "canary": 40,
           "common": 48, "robust_head": 136}


def read_regs(core) -> ThreadRegs:
    g = core.thread_info.gpregs
    return ThreadRegs(
        pc=g.ip, sp=g.sp, fp=g.bp, tp=g.fs_base, syscall_nr=g.orig_ax, result=g.ax,
        args=(g.di, g.si, g.dx, g.r10),
        callee_saved={r: getattr(g, CRIU_REG[r]) for r in CALLEE_SAVED})


# Defaults when the target's own auxv is not at hand (no template checkpoint): the
# baseline every x86-64 CPU has (fpu..sse2 in CPUID 1 EDX), and the kernel's values.
HWCAP = 0x178BFBFF
HWCAP2 = 0
PLATFORM = b"x86_64\0"
MINSIGSTKSZ = 0xE30


def has_thread(core) -> bool:
    return core.mtype == MARCH and core.HasField("thread_info") \
        and core.thread_info.gpregs.mode in (0, 1)


def park_frame(mem, regs: ThreadRegs, frame_size: int) -> tuple[int, int, int]:
    """The runtime's futex wait (push rbp; mov rbp, rsp): its CFA, and the caller's
    frame pointer and return address from its frame record."""
    if regs.fp != regs.sp + frame_size - 16:
        raise ValueError(f"unexpected frame at the park point (rbp {regs.fp:#x}, "
                         f"rsp {regs.sp:#x})")
    return regs.fp + 16, mem.read_u64(regs.fp), mem.read_u64(regs.fp + 8)


def write_park_frame(mem, cfa: int, caller_fp: int, own_ret: int) -> dict[str, int]:
    """The futex wait's frame record on the stack; rbp points at it."""
    mem.write_u64(cfa - 16, caller_fp)
    mem.write_u64(cfa - 8, own_ret)
    return {"rbp": cfa - 16}


def pthread_at(tp: int) -> int:
    return tp


def thread_pointer(td: int) -> int:
    return td


def set_core(core, clear_tid_addr: int, tp: int, regs: dict[str, int], sp: int, pc: int,
             native=None) -> None:
    """Make core an x86-64 thread. native: a thread_info of a process checkpointed on the
    target host (the template), whose segment selectors, flags and FPU/xsave layout are
    what its CRIU and CPU expect; no FP value is live at a park point."""
    core.ClearField("ti_aarch64")
    core.mtype = MARCH
    g = schema.new("user_x86_regs_entry", **{n: 0 for n in (
        "r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx",
        "si", "di", "ip", "sp", "fs_base", "gs_base", "ds", "es", "fs", "gs")},
        orig_ax=(1 << 64) - 1, cs=0x33, ss=0x2B, flags=0x246, mode=1)
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
        fp = schema.new("user_x86_fpregs_entry", cwd=0x37F, swd=0, twd=0, fop=0, rip=0,
                        rdp=0, mxcsr=0x1F80, mxcsr_mask=0xFFFF, st_space=[0] * 32,
                        xmm_space=[0] * 64, padding=[0] * 24)
        tls = []
    ti = schema.new("thread_info_x86", clear_tid_addr=clear_tid_addr, gpregs=g, fpregs=fp)
    ti.tls.extend(tls)
    core.thread_info.CopyFrom(ti)


def clear_tid_addr(core) -> int:
    return core.thread_info.clear_tid_addr


def sets_frame_pointer(code: bytes) -> bool:
    """Whether a function starts with push rbp; mov rbp, rsp (maybe after endbr64)."""
    if code.startswith(b"\xf3\x0f\x1e\xfa"):
        code = code[4:]
    return code.startswith(b"\x55\x48\x89\xe5")
