"""What every ISA object provides (the `Isa` protocol) and the plain records its facts
are made of. A leaf: nothing of the package is imported here (hmigrate/toolchain's image
carries isa/ beside toolchain/ and runtime/)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class ThreadRegs:
    """The registers of a parked thread as recode reads them, whatever the ISA."""

    pc: int
    sp: int
    fp: int  # frame pointer: rbp / x29
    tp: int  # thread pointer: fs_base / TPIDR_EL0
    syscall_nr: int  # the interrupted system call (-1: none)
    result: int  # the syscall's return value when pc is after the syscall
    args: tuple[int, int, int, int]  # the syscall's first four arguments
    callee_saved: dict[str, int]
    lr: int = 0  # a link register (aarch64's x30): a leaf keeps its return address there


@dataclass(frozen=True)
class PthreadLayout:
    """musl 1.2.3's struct pthread on one ISA: byte offsets of the fields recode moves.
    "common" is part 2 (tid .. stdio_locks), the same fields in the same order on every
    LP64 ISA, COMMON_SIZE bytes."""

    size: int
    offsets: dict[str, int]  # self, dtv, prev, next, sysinfo, canary, common, robust_head

    def __getitem__(self, name: str) -> int:
        return self.offsets[name]


# Part 2 of musl's struct pthread: offsets relative to its start, the same on every ISA.
PTHREAD_COMMON = {"tid": 0, "map_base": 24, "stack": 40, "cancelbuf": 72, "tsd": 80,
                  "robust_head": 88}
PTHREAD_COMMON_SIZE = 152


@dataclass(frozen=True)
class JmpBufLayout:
    """musl's `__jb` of one ISA: where setjmp puts each saved register."""

    size: int
    regs: dict[str, int]  # callee-saved register -> byte offset
    pc: int
    sp: int
    fp: int
    rest: int  # offset of __fl; __fl and __ss follow to the end
    fp_regs: tuple[int, int] | None = None  # [start, end) of FP callee-saved registers


@dataclass(frozen=True)
class AuxvBaseline:
    """Auxiliary-vector values of a fresh process when the target's own are not at hand
    (no template checkpoint)."""

    hwcap: int
    hwcap2: int
    platform: bytes  # AT_PLATFORM, NUL-terminated
    minsigstksz: int
    criu_auxv_size: int  # CRIU's AT_VECTOR_SIZE: the longest saved auxv its restore takes


class Isa(Protocol):
    """Every fact recode, the toolchain, validation and the engine need about one ISA."""

    name: str  # "x86-64": binaries' suffix, the metadata's key, what the user types
    elf_machine: int  # ELF e_machine
    elf_machine_name: str  # pyelftools' name of it ("EM_X86_64")
    criu_march: int  # CRIU's core_entry.mtype
    docker_arch: str  # Docker/OCI platform architecture ("amd64")
    uname_machines: tuple[str, ...]  # what `uname -m` / an engine's Arch may say
    gnu_triple: str  # Debian's multiarch triple
    dynamic_loader: str  # glibc's program interpreter on Debian
    user_end: int  # end of the user address space a process of this ISA can map
    # registers
    callee_saved: tuple[str, ...]  # excluding the frame pointer, described by the frame
    fp: str
    sp: str
    lr: str | None  # link register (None: return addresses live on the stack)
    dwarf_regs: dict[int, str]
    sys_futex: int
    nr_reg: str
    result_reg: str
    arg_regs: tuple[str, ...]
    # musl
    tls_variant: int  # 1: TLS above the thread pointer, 2: below
    tls_gap_above_tp: int
    pthread: PthreadLayout
    jmpbuf: JmpBufLayout
    auxv: AuxvBaseline
    needs_sa_restorer: bool  # the kernel delivers no signal to a handler without one
    criu_regs_summary: str  # the core_entry fields holding this ISA's thread state

    def dwarf_reg(self, n: int) -> str: ...
    def pthread_at(self, tp: int) -> int: ...
    def thread_pointer(self, td: int) -> int: ...
    def has_thread(self, core) -> bool: ...
    def read_regs(self, core) -> ThreadRegs: ...
    def clear_tid_addr(self, core) -> int: ...
    def get_tp(self, core) -> int: ...
    def set_tp(self, core, tp: int) -> None: ...
    def remap_registers(self, core, remap: Callable[[int], int]) -> None: ...
    def set_core(self, core, new: Callable[..., Any], clear_tid_addr: int, tp: int,
                 regs: dict[str, int], sp: int, pc: int, native=None) -> None: ...
    def native_thread(self, core): ...
    def describe_regs(self, core) -> str: ...
    def park_frame(self, mem, regs: ThreadRegs, frame_size: int) -> tuple[int, int, int]: ...
    def park_frame_pointer(self, sp: int, frame_size: int) -> int | None: ...
    def write_park_frame(self, mem, cfa: int, caller_fp: int,
                         own_ret: int) -> dict[str, int]: ...
    def park_function_ok(self, code: bytes) -> bool: ...


class IsaBase:
    """What follows from the facts alone, shared by the ISA classes."""

    pthread: PthreadLayout
    tls_variant: int
    dwarf_regs: dict[int, str]

    def dwarf_reg(self, n: int) -> str:
        return self.dwarf_regs.get(n, f"r{n}")

    def thread_pointer(self, td: int) -> int:
        """musl's TP_ADJ: the thread pointer register's value for struct pthread at td."""
        return td + (self.pthread.size if self.tls_variant == 1 else 0)

    def pthread_at(self, tp: int) -> int:
        return tp - (self.pthread.size if self.tls_variant == 1 else 0)

    def __repr__(self) -> str:
        return f"<Isa {self.name}>"  # type: ignore[attr-defined]
