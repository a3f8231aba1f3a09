"""Per-ISA toolchain configuration: compilers, musl locations, forced flags (the ISAs'
own facts are in isa/)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass

from docker_hmigrate import isa

# Section that carries the aarch64 twin inside every x86-64 object we produce.
# SHF_EXCLUDE ("exclude") makes ld drop it from linked output automatically.
BUNDLE_SECTION = ".hmigrate.aarch64"

# Address plan shared by both ISAs (64 KiB granules so 64K-page kernels work too).
IMAGE_BASE = 0x400000
TEXT_BASE = 0x401000
PAGE = 0x10000

# Flags forced on every compile, after the user's so they win.
FORCED_CFLAGS = (
    "-O0",
    "-g",
    "-fno-omit-frame-pointer",
    "-ffunction-sections",
    "-fdata-sections",
    "-finstrument-functions",
    "-fno-pie",
    "-fno-pic",
    "-fno-common",
    "-fno-stack-protector",
    "-fno-merge-constants",
    "-fno-lto",
)

# User flags that would break equivalence points or the static musl link.
DROPPED_PREFIXES = (
    "-O",
    "-flto",
    "-fomit-frame-pointer",
    "-fpie",
    "-fPIE",
    "-fpic",
    "-fPIC",
    "-fstack-protector",
    "-fsanitize",
    "-fcf-protection",
    "-fasynchronous-unwind-tables",
    "-fno-asynchronous-unwind-tables",
)
DROPPED_EXACT = {"-pie", "-static-pie", "-pthread", "-rdynamic", "-s", "-static", "-no-pie"}

# Blocking calls the runtime wraps so that a thread blocked in them can park.
# pthread_mutex_lock is wrapped so that a thread waiting for a lock whose holder is
# parked can park too; condition variables so that no thread waits inside libc's
# (leaving it needs the mutex, which a parked thread may hold).
# mmap and mremap (musl's own callers use __mmap/__mremap) so that new mappings stay
# below every ISA's user-space end (runtime/hmigrate_mmap.c).
WRAPPED = ("sleep", "usleep", "nanosleep", "pthread_join", "pthread_mutex_lock",
           "pthread_cond_wait", "pthread_cond_timedwait", "pthread_cond_signal",
           "pthread_cond_broadcast",
           "__mmap", "mmap", "mmap64", "__mremap", "mremap")


@dataclass(frozen=True)
class Isa:
    name: str  # suffix of linked binaries: NAME_x86-64, NAME_aarch64
    gnu_prefix: str  # binutils/gcc prefix ("" for the host)
    musl_triple: str
    elf_machine: str  # pyelftools e_machine
    extra_cflags: tuple[str, ...]
    keeps_machine_flags: bool  # whether user -m/-march flags apply to this ISA
    extra_link_flags: tuple[str, ...] = ()

    def tool(self, name: str) -> str:
        return f"{self.gnu_prefix}{name}"

    @property
    def gcc(self) -> str:
        return self.tool("gcc")

    @property
    def musl_lib(self) -> str:
        return f"/usr/lib/{self.musl_triple}"

    @property
    def musl_include(self) -> str:
        return f"/usr/include/{self.musl_triple}"

    def gcc_file(self, name: str) -> str:
        return _print_file_name(self.gcc, name)

    def libgcc(self) -> str:
        return _print_file_name(self.gcc, "libgcc.a")

    def system_cflags(self) -> list[str]:
        return ["-nostdinc", "-isystem", self.musl_include, "-isystem", self.gcc_file("include")]

    def missing(self) -> list[str]:
        """Names of what is not installed for this ISA (empty when usable)."""
        out = []
        if shutil.which(self.gcc) is None:
            out.append(self.gcc)
        for p in (f"{self.musl_lib}/libc.a", f"{self.musl_include}/stdio.h"):
            if not os.path.exists(p):
                out.append(p)
        return out


@functools.cache
def _print_file_name(gcc: str, name: str) -> str:
    res = subprocess.run([gcc, f"-print-file-name={name}"], capture_output=True, text=True)
    return res.stdout.strip() or name


X86_64 = Isa(
    name=isa.X86_64.name,
    gnu_prefix="" if os.uname().machine in isa.X86_64.uname_machines else "x86_64-linux-gnu-",
    musl_triple="x86_64-linux-musl",
    elf_machine=isa.X86_64.elf_machine_name,
    extra_cflags=(),
    keeps_machine_flags=True,
)
AARCH64 = Isa(
    name=isa.AARCH64.name,
    gnu_prefix="aarch64-linux-gnu-",
    musl_triple="aarch64-linux-musl",
    elf_machine=isa.AARCH64.elf_machine_name,
    # Outline atomics would call libgcc helpers that depend on hwcap probing.
    extra_cflags=("-mno-outline-atomics",),
    keeps_machine_flags=False,
    # Debian's aarch64 gcc asks ld for Cortex-A53 erratum 843419 stubs; ld inserts them
    # where adrp lands at page offset 0xff8/0xffc, which moves everything behind them by
    # a page in a late relaxation pass and breaks the layout.
    extra_link_flags=("-mno-fix-cortex-a53-843419",),
)
ISAS = (X86_64, AARCH64)
HOST = X86_64


def missing_tools() -> list[str]:
    return [m for isa in ISAS for m in isa.missing()]
