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


def fields_match(tx: TypeInfo, ta: TypeInfo, ix: Isa, ia: Isa) -> bool:
    """Two ISAs' layouts (tx on ix, ta on ia) of a type holding a jmp_buf have the same
    leaves (paths, kinds, sizes of everything but the jmp_bufs), none opaque, every
    jmp_buf of musl's size on its ISA."""
    fx, fa = tx.fields, ta.fields
    if not fx or len(fx) != len(fa):
        return False
    for a, b in zip(fx, fa, strict=True):
        if a.path != b.path or a.kind != b.kind or a.kind == "opaque":
            return False
        if a.kind == "jmp_buf":
            if (a.size, b.size) != (ix.jmpbuf.size, ia.jmpbuf.size):
                return False
        elif a.size != b.size:
            return False
    return True


SETJMP_NAMES = ("setjmp", "_setjmp", "__setjmp")
SIGSETJMP_NAMES = ("sigsetjmp", "__sigsetjmp")
