"""musl's jmp_buf layouts on both ISAs: facts the toolchain (metadata: which variables can
be translated) and the recode (recode/jmpbuf.py: the translation) share. A leaf module
with no imports from the package, so hmigrate-cc's image (toolchain and runtime only)
has it.

musl 1.2's layouts (facts read off its setjmp/longjmp code, both ISAs):
- x86-64 `__jb` (8 words): rbx, rbp, r12, r13, r14, r15, rsp (after the return), rip.
- aarch64 `__jb` (22 words): x19..x28, x29, x30 (the return address), an unused word,
  sp, d8..d15.
Then `__fl` (sigsetjmp's "mask saved" flag) and `__ss` (the signal mask, 128 bytes) on
both.
"""

from __future__ import annotations

from typing import Any

X86_64, AARCH64 = "x86-64", "aarch64"
X86_REGS = ("rbx", "rbp", "r12", "r13", "r14", "r15")


class Layout:
    def __init__(self, size: int, regs: dict[str, int], pc: int, sp: int, fp: int,
                 rest: int, fp_regs: tuple[int, int] | None = None):
        self.size, self.regs, self.pc, self.sp, self.fp = size, regs, pc, sp, fp
        self.rest = rest  # offset of __fl; __fl and __ss follow to the end
        self.fp_regs = fp_regs  # [start, end) of floating-point callee-saved registers


LAYOUTS = {
    X86_64: Layout(200, {r: 8 * i for i, r in enumerate(X86_REGS)}, pc=56, sp=48, fp=8,
                       rest=64),
    AARCH64: Layout(312, {f"x{19 + i}": 8 * i for i in range(12)}, pc=88, sp=104, fp=80,
                        rest=176, fp_regs=(112, 176)),
}


def fields_match(tx: dict[str, Any], ta: dict[str, Any]) -> bool:
    """Both ISAs' layouts of a type holding a jmp_buf have the same leaves (paths, kinds,
    sizes of everything but the jmp_bufs), none opaque, every jmp_buf of musl's size."""
    fx, fa = tx.get("fields") or [], ta.get("fields") or []
    if not fx or len(fx) != len(fa):
        return False
    for a, b in zip(fx, fa, strict=True):
        if a["path"] != b["path"] or a["kind"] != b["kind"] or a["kind"] == "opaque":
            return False
        if a["kind"] == "jmp_buf":
            if (a["size"], b["size"]) not in ((200, 312), (312, 200)):
                return False
        elif a["size"] != b["size"]:
            return False
    return True


SETJMP_NAMES = ("setjmp", "_setjmp", "__setjmp")
SIGSETJMP_NAMES = ("sigsetjmp", "__sigsetjmp")
