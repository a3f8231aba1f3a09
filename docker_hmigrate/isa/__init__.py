"""Every per-ISA fact in one place: one object per ISA (isa/x86_64.py, isa/aarch64.py)
implementing the `Isa` protocol (isa/base.py), used by the toolchain, recode, the CRIU
image reader, validation and the engine alike. A leaf package (it imports nothing else of
docker_hmigrate), so hmigrate/toolchain's image carries it. Adding an ISA: see
docs/adding-an-isa.md."""

from __future__ import annotations

from docker_hmigrate.isa.aarch64 import AARCH64
from docker_hmigrate.isa.base import (
    PTHREAD_COMMON,
    PTHREAD_COMMON_SIZE,
    AuxvBaseline,
    Isa,
    JmpBufLayout,
    PthreadLayout,
    ThreadRegs,
)
from docker_hmigrate.isa.x86_64 import X86_64

ISAS: tuple[Isa, ...] = (X86_64, AARCH64)
NAMES: tuple[str, ...] = tuple(i.name for i in ISAS)
BY_NAME: dict[str, Isa] = {i.name: i for i in ISAS}
# Docker platforms ("linux/amd64") of every ISA, and every spelling of each ISA's name.
PLATFORMS: dict[str, str] = {i.name: f"linux/{i.docker_arch}" for i in ISAS}
ALIASES: dict[str, str] = {a: i.name for i in ISAS for a in (i.name, *i.uname_machines)}

__all__ = ["AARCH64", "ALIASES", "BY_NAME", "ISAS", "NAMES", "PLATFORMS", "PTHREAD_COMMON",
           "PTHREAD_COMMON_SIZE", "X86_64", "AuxvBaseline", "Isa", "JmpBufLayout",
           "PthreadLayout", "ThreadRegs", "by_criu_march", "by_elf_machine", "get"]


def get(name: str) -> Isa:
    """The ISA called name (any spelling in ALIASES); KeyError names the known ones."""
    try:
        return BY_NAME[ALIASES[name]]
    except KeyError:
        raise KeyError(f"unknown ISA {name!r} (known: {', '.join(NAMES)})") from None


def by_criu_march(mtype: int) -> Isa | None:
    return next((i for i in ISAS if i.criu_march == mtype), None)


def by_elf_machine(machine: int) -> Isa | None:
    return next((i for i in ISAS if i.elf_machine == machine), None)
