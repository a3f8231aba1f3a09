"""aarch64: the register set CRIU restores (ti_aarch64), the park frame (a leaf),
musl's struct pthread (TLS variant 1: TPIDR_EL0 points just past the struct) and
jmp_buf, the auxv values a fresh aarch64 process would see."""

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


class AArch64Isa(IsaBase):
    name = "aarch64"
    elf_machine = 183
    elf_machine_name = "EM_AARCH64"
    criu_march = 3  # March.AARCH64
    docker_arch = "arm64"
    docker_variant: str | None = "v8"
    uname_machines = ("aarch64", "arm64")
    gnu_triple = "aarch64-linux-gnu"
    dynamic_loader = "/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1"
    user_end = 1 << 48  # 48-bit virtual addresses (4 KiB pages, 4 levels)

    callee_saved = tuple(f"x{i}" for i in range(19, 29))  # x29 is the frame chain
    fp, sp, lr = "x29", "sp", "x30"
    dwarf_regs = {**{i: f"x{i}" for i in range(31)}, 31: "sp"}
    sys_futex = 98
    result_reg, nr_reg = "x0", "x8"
    arg_regs = ("x0", "x1", "x2", "x3")

    tls_variant = 1
    tls_gap_above_tp = 16
    # musl 1.2.3 struct pthread on aarch64 (TLS_ABOVE_TP: canary and dtv at the end).
    pthread = PthreadLayout(200, {"self": 0, "prev": 8, "next": 16, "sysinfo": 24,
                                  "common": 32, "robust_head": 120, "canary": 184,
                                  "dtv": 192})
    # musl 1.2 `__jb` (22 words): x19..x28, x29, x30 (the return address), an unused
    # word, sp, d8..d15.
    jmpbuf = JmpBufLayout(312, {f"x{19 + i}": 8 * i for i in range(12)}, pc=88, sp=104,
                          fp=80, rest=176, fp_regs=(112, 176))
    # Every arm64 Linux CPU has FP and ASIMD; musl reads HWCAP only at start-up. The
    # largest signal frame seen on the lab's arm64 kernel (-cpu max: SVE/SME state).
    auxv = AuxvBaseline(hwcap=0x3, hwcap2=0, platform=b"aarch64\0", minsigstksz=0x2700,
                        criu_auxv_size=46)
    needs_sa_restorer = False
    criu_regs_summary = ("core_entry.ti_aarch64 (gpregs regs[31]/sp/pc/pstate, fpsimd "
                         "vregs/fpsr/fpcr, tls = TPIDR_EL0, pac_keys)")

    # -- CRIU's core entry ---------------------------------------------------------

    def has_thread(self, core) -> bool:
        return core.mtype == self.criu_march and core.HasField("ti_aarch64")

    def read_regs(self, core) -> ThreadRegs:
        t = core.ti_aarch64
        x = list(t.gpregs.regs)
        return ThreadRegs(pc=t.gpregs.pc, sp=t.gpregs.sp, fp=x[29], tp=t.tls,
                          syscall_nr=x[8], result=x[0], args=(x[0], x[1], x[2], x[3]),
                          callee_saved={r: x[int(r[1:])] for r in self.callee_saved},
                          lr=x[30])

    def clear_tid_addr(self, core) -> int:
        return core.ti_aarch64.clear_tid_addr

    def get_tp(self, core) -> int:
        return core.ti_aarch64.tls

    def set_tp(self, core, tp: int) -> None:
        core.ti_aarch64.tls = tp

    def remap_registers(self, core, remap: Callable[[int], int]) -> None:
        g = core.ti_aarch64.gpregs
        regs = list(g.regs)
        out = [remap(v) for v in regs]
        if out != regs:
            del g.regs[:]
            g.regs.extend(out)

    def set_core(self, core, new: Callable[..., Any], clear_tid_addr: int, tp: int,
                 regs: dict[str, int], sp: int, pc: int, native=None) -> None:
        """Make core an aarch64 thread (new: criu.schema.new; native: unused, the
        register set has no host-dependent part CRIU checks). FP/SIMD state is zeroed:
        no FP value is live at a park point."""
        gp = [0] * 31
        for r, v in regs.items():
            gp[int(r[1:])] = v
        core.ClearField("thread_info")
        core.mtype = self.criu_march
        core.ti_aarch64.CopyFrom(new(
            "thread_info_aarch64", clear_tid_addr=clear_tid_addr, tls=tp,
            gpregs=new("user_aarch64_regs_entry", regs=gp, sp=sp, pc=pc, pstate=0),
            fpsimd=new("user_aarch64_fpsimd_context_entry", vregs=[0] * 64, fpsr=0,
                       fpcr=0)))

    def native_thread(self, core):
        """Nothing of a native thread is needed (set_core ignores `native`)."""
        return None

    def describe_regs(self, core) -> str:
        t = core.ti_aarch64
        g = t.gpregs
        fp = g.regs[29] if len(g.regs) > 29 else 0
        lr = g.regs[30] if len(g.regs) > 30 else 0
        return f"pc={g.pc:#x} sp={g.sp:#x} fp={fp:#x} lr={lr:#x} tls={t.tls:#x}"

    # -- the runtime's park frame ----------------------------------------------------

    def park_frame(self, mem, regs: ThreadRegs, frame_size: int) -> tuple[int, int, int]:
        """The runtime's futex wait is a leaf on aarch64: no frame record of its own, the
        caller's frame pointer is still in x29 and the return address in x30."""
        return regs.sp + frame_size, regs.fp, regs.lr

    def park_frame_pointer(self, sp: int, frame_size: int) -> int | None:
        """None: the leaf park function leaves the caller's x29 in the register."""
        return None

    def write_park_frame(self, mem, cfa: int, caller_fp: int, own_ret: int) -> dict[str, int]:
        return {"x29": caller_fp, "x30": own_ret}

    def park_function_ok(self, code: bytes) -> bool:
        return not saves_frame_record(code)


def saves_frame_record(code: bytes) -> bool:
    """Whether a function's code stores x29/x30 (stp x29, x30, [sp, ...]), i.e. is not a
    leaf that keeps its return address in x30."""
    for i in range(0, len(code) - 3, 4):
        w = int.from_bytes(code[i:i + 4], "little")
        # STP (64-bit) x29, x30 with base sp, any addressing form: Rt=29, Rt2=30, Rn=31.
        if w & 0x7e407fff == 0x28007bfd and w >> 30 == 2:
            return True
    return False


AARCH64 = AArch64Isa()
