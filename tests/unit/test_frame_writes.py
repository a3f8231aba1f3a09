"""Which stack slots a -O0 function may have written before a call (toolchain/
frame_writes.py): a local nothing wrote yet holds stale bytes the recode may carry as
they are (lua's `atomic`: `origweak` held a dead frame's address before its assignment).
The machine code is GCC -O0's shape, written out by hand."""

from __future__ import annotations

import struct

from docker_hmigrate.toolchain.frame_writes import effects_before_call

BASE = 0x401000


def _reader(code: bytes):
    def read(addr: int, n: int) -> bytes:
        off = addr - BASE
        return code[off:off + n] if 0 <= off < len(code) else b""
    return read


def _x86(*parts: str) -> tuple[bytes, list[int]]:
    """Code and the return address of each call in it."""
    code, rets = b"", []
    for p in parts:
        code += bytes.fromhex(p)
        if p.startswith("e8"):
            rets.append(BASE + len(code))
    return code, rets


PROLOGUE = ("55", "4889e5", "4883ec20")  # push rbp; mov rbp, rsp; sub rsp, 0x20
CALL = "e800000000"
STORE_X = "488945f8"  # mov [rbp-8], rax: CFA-24
LEA_BUF = "488d45f0"  # lea rax, [rbp-0x10]: CFA-32
X, BUF = (-24, -16), (-32, -24)


def _written(code: bytes, ret: int, slot: tuple[int, int], isa: str = "x86-64") -> bool:
    return effects_before_call(isa, _reader(code), BASE, len(code), ret).writes(*slot)


def test_x86_local_assigned_after_the_call_is_not_written_yet() -> None:
    code, (r1, r2, r3) = _x86(*PROLOGUE, CALL, STORE_X, CALL, LEA_BUF, "4889c7", CALL,
                              "c9", "c3")
    assert not _written(code, r1, X) and not _written(code, r1, BUF)
    assert _written(code, r2, X) and not _written(code, r2, BUF)
    assert _written(code, r3, BUF)  # its address went to the callee


def test_x86_loop_makes_a_later_assignment_reach_the_call() -> None:
    # L: call f1; mov [rbp-8], rax; jmp L
    code, (r1,) = _x86(*PROLOGUE, CALL, STORE_X, "ebf5")
    assert _written(code, r1, X)


def test_x86_frame_pointer_copied_is_unknown() -> None:
    code, (r1,) = _x86(*PROLOGUE, "4889e8", CALL, STORE_X, "c9", "c3")  # mov rax, rbp
    assert _written(code, r1, X) and _written(code, r1, BUF)


def test_x86_indexed_store_is_unknown() -> None:
    # mov [rbp+rax*4-0x30], edx
    code, (r1,) = _x86(*PROLOGUE, "895485d0", CALL, "c9", "c3")
    assert _written(code, r1, X)


def test_not_a_call_return_address_is_unknown() -> None:
    code, (r1,) = _x86(*PROLOGUE, CALL, STORE_X, "c9", "c3")
    assert _written(code, r1 + 1, X)


def _a64(words: list[int]) -> tuple[bytes, list[int]]:
    code = b"".join(struct.pack("<I", w) for w in words)
    rets = [BASE + 4 * (i + 1) for i, w in enumerate(words) if w >> 26 == 0b100101]
    return code, rets


A64_PROLOGUE = [0xA9BE7BFD, 0x910003FD]  # stp x29, x30, [sp, #-32]!; mov x29, sp
BL = 0x94000000
A64_EPILOGUE = [0xA8C27BFD, 0xD65F03C0]  # ldp x29, x30, [sp], #32; ret
A_X, A_BUF = (-8, 0), (-16, -8)  # [sp, #24] and [sp, #16] with sp = CFA-32


def test_aarch64_local_assigned_after_the_call_is_not_written_yet() -> None:
    # bl; str x0, [sp, #24]; bl; add x0, sp, #16; bl
    code, (r1, r2, r3) = _a64([*A64_PROLOGUE, BL, 0xF9000FE0, BL, 0x910043E0, BL,
                               *A64_EPILOGUE])
    w = lambda r, s: _written(code, r, s, "aarch64")  # noqa: E731
    assert not w(r1, A_X) and not w(r1, A_BUF)
    assert w(r2, A_X) and not w(r2, A_BUF)
    assert w(r3, A_BUF)


def test_aarch64_store_through_x29_and_frame_address_copy() -> None:
    # str x1, [x29, #24] writes CFA-8 too; mov x0, x29 takes the frame's base
    code, (r1,) = _a64([*A64_PROLOGUE, 0xF9000FA1, BL, *A64_EPILOGUE])
    assert _written(code, r1, A_X, "aarch64")
    code, (r1,) = _a64([*A64_PROLOGUE, 0x910003A0, BL, *A64_EPILOGUE])
    assert _written(code, r1, (-32, -24), "aarch64")
    assert not _written(code, r1, A_X, "aarch64")


def test_recode_asks_only_about_locals_of_functions_without_setjmp() -> None:
    """frames.unset_at_stop: a function that calls setjmp may run a call again after a
    longjmp, with later stores done: never 'not written' there."""
    from types import SimpleNamespace as NS

    from docker_hmigrate.recode.frames import unset_at_stop

    code, (r1, _r2, _r3) = _x86(*PROLOGUE, CALL, STORE_X, CALL, LEA_BUF, "4889c7", CALL,
                                "c9", "c3")
    site = NS(kind="call", return_address=r1, target="f1")
    fi = NS(addr=BASE, size=len(code), call_sites=[site])
    fr = NS(site=NS(site=site), function=NS(isa={"x86-64": fi}))
    idx = NS(src="x86-64", src_code=_reader(code), frame_writes={})
    x = NS(kind="local", indirect=False, cfa_offset=X[0], type=NS(size=8))
    assert unset_at_stop(fr, x, idx)
    assert not unset_at_stop(fr, NS(**{**vars(x), "kind": "param"}), idx)
    fi.call_sites = [site, NS(kind="call", return_address=0, target="_setjmp")]
    assert not unset_at_stop(fr, x, idx)
    idx.src_code = None  # no binary to read: nothing is assumed
    fi.call_sites = [site]
    assert not unset_at_stop(fr, x, idx)
