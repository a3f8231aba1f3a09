"""What the toolchain (metadata: which variables can be translated) and the recode
(recode/jmpbuf.py: the translation) share about jmp_bufs. Each ISA's musl `__jb` layout
is a fact of its ISA object (isa/*.py: `jmpbuf`); `__fl` (sigsetjmp's "mask saved" flag)
and `__ss` (the signal mask, 128 bytes) follow it on every ISA. Imports only isa/, which
hmigrate-cc's image carries.
"""

from __future__ import annotations

from docker_hmigrate.isa import Isa, JmpBufLayout
from docker_hmigrate.toolchain.contract import TypeInfo

Layout = JmpBufLayout


def is_padding(path: str) -> bool:
    """A member that holds no value of the program's (musl's `__pad0`, `__unused[2]`)."""
    last = path.rsplit(".", 1)[-1]
    return last.startswith("__")


def layout_problem(tx: TypeInfo, ta: TypeInfo, ix: Isa, ia: Isa) -> str | None:
    """Why a value of a type laid out as tx on ix cannot be copied member by member into
    its layout ta on ia (None: it can). Leaves pair by path; a leaf only one side has must
    be padding (musl's struct stat has __pad0 on x86-64, __pad/__pad2 on aarch64), as may
    a pair sized per ISA (its `__unused`: 3 longs on x86-64, 2 ints on aarch64); a pair
    must be of one kind, none opaque, jmp_bufs of musl's size on each ISA, other leaves of
    one size, or integers (converted with a range check: st_nlink is 8 bytes on x86-64,
    4 on aarch64)."""
    fx, fa = tx.fields, ta.fields
    if not fx or not fa:
        return "no member list in the metadata"
    bx, ba = {f.path: f for f in fx}, {f.path: f for f in fa}
    for path, a in bx.items():
        b = ba.get(path)
        if b is None:
            if not is_padding(path):
                return f"member {path} exists only on {ix.name}"
            continue
        if is_padding(path) and (a.size, a.kind) != (b.size, b.kind):
            continue  # reserved on both, sized per ISA (struct stat's __unused): left zero
        if a.kind != b.kind or a.kind == "opaque":
            return f"member {path} is {a.kind} on {ix.name}, {b.kind} on {ia.name}"
        if a.kind == "jmp_buf":
            if (a.size, b.size) != (ix.jmpbuf.size, ia.jmpbuf.size):
                return f"member {path} is not musl's jmp_buf"
        elif a.size != b.size and not (a.int and b.int):
            return f"member {path} has size {a.size} on {ix.name}, {b.size} on {ia.name}"
    for path in ba:
        if path not in bx and not is_padding(path):
            return f"member {path} exists only on {ia.name}"
    return None


def fields_match(tx: TypeInfo, ta: TypeInfo, ix: Isa, ia: Isa) -> bool:
    """Two ISAs' layouts (tx on ix, ta on ia) of a type can be copied member by member."""
    return layout_problem(tx, ta, ix, ia) is None


SETJMP_NAMES = ("setjmp", "_setjmp", "__setjmp")
SIGSETJMP_NAMES = ("sigsetjmp", "__sigsetjmp")
