"""aarch64 facts recode needs: the register set CRIU restores (ti_aarch64), musl's
struct pthread (TLS variant 1: TPIDR_EL0 points just past the struct), the auxv values
a fresh aarch64 process would see."""

from __future__ import annotations

from docker_hmigrate.criu import schema
from docker_hmigrate.criu.schema import March
from docker_hmigrate.recode.regs import ThreadRegs

ISA = "aarch64"
MARCH = March.AARCH64
EM = 183
CALLEE_SAVED = tuple(f"x{i}" for i in range(19, 29))  # x29 is the frame chain
# CRIU's AT_VECTOR_SIZE for this ISA: the longest saved auxv its restore accepts
CRIU_AUXV_SIZE = 46
SYS_FUTEX = 98
RESULT_REG, NR_REG = "x0", "x8"
ARG_REGS = ("x0", "x1", "x2", "x3")

# musl 1.2.3 struct pthread on aarch64 (TLS_ABOVE_TP: canary and dtv at the end).
PTHREAD_SIZE = 200
PTHREAD_COMMON_SIZE = 152  # tid .. stdio_locks, the same fields on both ISAs
PTHREAD = {"self": 0, "prev": 8, "next": 16, "sysinfo": 24, "common": 32,
           "robust_head": 120, "canary": 184, "dtv": 192}

# Every arm64 Linux CPU has FP and ASIMD; the target's exact HWCAP is not known
# here, and musl only reads it at start-up (a restored process never re-reads it).
HWCAP = 0x3
HWCAP2 = 0
PLATFORM = b"aarch64\0"
# The largest signal frame seen on the lab's arm64 kernel (-cpu max: SVE/SME state).
MINSIGSTKSZ = 0x2700


def regs_message(clear_tid_addr: int, tls: int, regs: list[int], sp: int, pc: int):
    """A thread_info_aarch64 for CRIU: 31 general registers, zeroed FP/SIMD state (no FP
    value is live at a park point: every frame's values are in stack slots)."""
    if len(regs) != 31:
        raise ValueError("aarch64 has 31 general registers")
    return schema.new(
        "thread_info_aarch64", clear_tid_addr=clear_tid_addr, tls=tls,
        gpregs=schema.new("user_aarch64_regs_entry", regs=regs, sp=sp, pc=pc, pstate=0),
        fpsimd=schema.new("user_aarch64_fpsimd_context_entry", vregs=[0] * 64, fpsr=0,
                          fpcr=0))


def saves_frame_record(code: bytes) -> bool:
    """Whether a function's code stores x29/x30 (stp x29, x30, [sp, ...]), i.e. is not a
    leaf that keeps its return address in x30."""
    for i in range(0, len(code) - 3, 4):
        w = int.from_bytes(code[i:i + 4], "little")
        # STP (64-bit) x29, x30 with base sp, any addressing form: Rt=29, Rt2=30, Rn=31.
        if w & 0x7e407fff == 0x28007bfd and w >> 30 == 2:
            return True
    return False



def read_regs(core) -> ThreadRegs:
    t = core.ti_aarch64
    x = list(t.gpregs.regs)
    return ThreadRegs(pc=t.gpregs.pc, sp=t.gpregs.sp, fp=x[29], tp=t.tls, syscall_nr=x[8],
                      result=x[0], args=(x[0], x[1], x[2], x[3]),
                      callee_saved={r: x[int(r[1:])] for r in CALLEE_SAVED}, lr=x[30])


def has_thread(core) -> bool:
    return core.mtype == MARCH and core.HasField("ti_aarch64")


def park_frame(mem, regs: ThreadRegs, frame_size: int) -> tuple[int, int, int]:
    """The runtime's futex wait is a leaf on aarch64: no frame record of its own, the
    caller's frame pointer is still in x29 and the return address in x30."""
    return regs.sp + frame_size, regs.fp, regs.lr


def write_park_frame(mem, cfa: int, caller_fp: int, own_ret: int) -> dict[str, int]:
    return {"x29": caller_fp, "x30": own_ret}


def pthread_at(tp: int) -> int:
    return tp - PTHREAD_SIZE


def thread_pointer(td: int) -> int:
    return td + PTHREAD_SIZE


def set_core(core, clear_tid_addr: int, tp: int, regs: dict[str, int], sp: int, pc: int,
             native=None) -> None:
    """Make core an aarch64 thread (native: unused, the register set has no
    host-dependent part CRIU checks)."""
    gp = [0] * 31
    for r, v in regs.items():
        gp[int(r[1:])] = v
    core.ClearField("thread_info")
    core.mtype = MARCH
    core.ti_aarch64.CopyFrom(regs_message(clear_tid_addr, tp, gp, sp, pc))


def clear_tid_addr(core) -> int:
    return core.ti_aarch64.clear_tid_addr
