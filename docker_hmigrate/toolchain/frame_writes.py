"""Which of its stack slots a -O0 function may have written before one of its calls.

A local that no path from the function's entry to the call writes, and whose address no
such path takes, holds stale bytes of an earlier frame at that call: C gives it no value
until a later statement does (lua's `atomic` declares `origweak` first and assigns it
after several calls; stopped in one of those, its slot held a dead frame's address). The
recode asks this only about a value it could not translate, so an answer of "maybe
written" (anything this reading does not follow) keeps the refusal.

Read at the machine-code level of the binary that runs (no DWARF): every store whose
address is the frame pointer or the stack pointer plus a constant gives a written range
of CFA offsets; every address of the frame put in a register (lea; add/sub/mov from
x29 or sp) is a pointer that may write the slot it points into; any other use of the
frame or stack pointer (an indexed store, a copy into another register) makes the
answer "maybe written".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import capstone

from docker_hmigrate.toolchain import metadata
from docker_hmigrate.toolchain.metadata import A64, X86, Arch, PrologueState


@dataclass
class Effects:
    """What the reachable instructions do to the frame, in CFA offsets."""

    stores: list[tuple[int, int]] = field(default_factory=list)  # [lo, hi)
    addresses: list[int] = field(default_factory=list)  # frame addresses taken
    unknown: str | None = None  # why the answer cannot be "not written"

    def writes(self, lo: int, hi: int) -> bool:
        if self.unknown:
            return True
        return any(a < hi and lo < b for a, b in self.stores) or \
            any(lo <= a <= hi for a in self.addresses)


def arch_of(isa_name: str) -> Arch:
    return {X86.isa.name: X86, A64.isa.name: A64}[isa_name]


def on_paths_to(succ: list[list[int]], target: int) -> set[int]:
    """Instructions on some path from the entry (index 0) to `target` (excluded)."""
    fwd, todo = {0}, [0]
    while todo:
        for s in succ[todo.pop()]:
            if s not in fwd:
                fwd.add(s)
                todo.append(s)
    pred: dict[int, list[int]] = {}
    for i, ss in enumerate(succ):
        for s in ss:
            pred.setdefault(s, []).append(i)
    back, todo = set(), [target]
    while todo:
        for p in pred.get(todo.pop(), ()):
            if p not in back:
                back.add(p)
                todo.append(p)
    return fwd & back


def frame_effects(arch: Arch, insns: list, call_index: int,
                  read: Callable[[int, int], bytes] | None = None) -> Effects:
    """Stores into and addresses of the frame on the paths from entry to insns[call_index].
    SP and FP come from one pass of the prologue tracker in address order: at -O0 both
    stay fixed in the body, and a frame whose SP moves (alloca) is "unknown"."""
    succ = metadata.control_flow(arch, insns, read)
    on_path = on_paths_to(succ, call_index)
    eff = Effects()
    st = PrologueState(sp=arch.mc.ENTRY_SP, fp=None, stores=[])
    consts: dict[str, int] = {}
    for i, insn in enumerate(insns):  # in a loop, what follows the call comes first too
        if i in on_path:
            why = _x86(insn, st, eff) if arch is X86 else _a64(insn, st, eff, consts)
            if st.dynamic:
                why = why or "the stack pointer moves by a variable amount"
            if why:
                eff.unknown = f"{insn.address:#x} {insn.mnemonic} {insn.op_str}: {why}"
                return eff
        arch.mc.step(st, consts, insn)
    return eff


# -- x86-64 ------------------------------------------------------------------------------

_X86_FRAME = ("rbp", "rsp")
# instructions that use rbp/rsp as values only to keep the frame itself
_X86_FRAME_KEEPING = ("push", "pop", "call", "ret", "leave", "endbr64", "nop")


def _x86(insn, st: PrologueState, eff: Effects) -> str | None:
    """Why insn makes the answer unknown, else None (its effects added to eff)."""
    X = capstone.x86
    for op in insn.operands:
        if op.type == X.X86_OP_MEM:
            base = insn.reg_name(op.mem.base) if op.mem.base else None
            if base not in _X86_FRAME:
                continue
            ref = st.fp if base == "rbp" else st.sp
            if ref is None:
                return "rbp used before it is set"
            if insn.mnemonic == "lea":
                if op.mem.index:
                    return "an indexed frame address"
                eff.addresses.append(ref + op.mem.disp)
            elif op.access != capstone.CS_AC_READ:  # written, or capstone cannot say
                if op.mem.index:
                    return "an indexed store into the frame"
                eff.stores.append((ref + op.mem.disp, ref + op.mem.disp + op.size))
        elif op.type == X.X86_OP_REG and \
                metadata.norm_reg(X86, insn.reg_name(op.reg)) in _X86_FRAME:
            if insn.mnemonic in _X86_FRAME_KEEPING or _x86_frame_setup(insn):
                continue
            return "the frame or stack pointer used as a value"
    if insn.mnemonic == "push":
        eff.stores.append((st.sp - 8, st.sp))
    return None


def _x86_frame_setup(insn) -> bool:
    """mov rbp, rsp / mov rsp, rbp, and sub/add/and of rsp with a constant."""
    X = capstone.x86
    ops = insn.operands
    names = [insn.reg_name(o.reg) if o.type == X.X86_OP_REG else None for o in ops]
    if insn.mnemonic == "mov" and sorted(n or "" for n in names) == ["rbp", "rsp"]:
        return True
    return insn.mnemonic in ("sub", "add", "and") and len(ops) == 2 and \
        names[0] == "rsp" and ops[1].type == X.X86_OP_IMM


# -- aarch64 -----------------------------------------------------------------------------

_A64_FRAME = ("x29", "sp")
_A64_LOADS = ("ldr", "ldp", "ldur", "ldnp", "ldar", "ldxr", "ldaxr", "ldxp", "ldaxp",
              "ldapr", "prfm", "prfum")
_A64_SIZE = {"b": 1, "h": 2, "w": 4, "x": 8, "s": 4, "d": 8, "q": 16}


def _a64(insn, st: PrologueState, eff: Effects, consts: dict[str, int]) -> str | None:
    """Why insn makes the answer unknown, else None (its effects added to eff)."""
    A = capstone.arm64
    m, ops = insn.mnemonic, insn.operands
    regs = [metadata.norm_reg(A64, insn.reg_name(o.reg)) if o.type == A.ARM64_OP_REG else None
            for o in ops]
    mem = next((o for o in ops if o.type == A.ARM64_OP_MEM), None)
    if mem is not None:
        base = metadata.norm_reg(A64, insn.reg_name(mem.mem.base))
        if base in _A64_FRAME:
            ref = st.fp if base == "x29" else st.sp
            if ref is None:
                return "x29 used before it is set"
            store = not m.startswith(_A64_LOADS) or (insn.writeback and base != "sp")
            if store:
                if mem.mem.index:
                    return "an indexed store into the frame"
                at = ref + mem.mem.disp  # pre-index or offset; post-index: disp 0
                eff.stores.append((at, at + _a64_store_size(insn, regs)))
        # a register stored as data must not be the frame's address (the prologue's
        # stp x29, x30 saves the caller's, before x29 is this frame's)
        data = [r for r, o in zip(regs, ops, strict=True) if o.type == A.ARM64_OP_REG]
        if m.startswith("st") and "x29" in data and st.fp is not None:
            return "this frame's address stored"
        if "sp" in data:
            return "the stack pointer stored"
        return None
    if "x29" not in regs and "sp" not in regs:
        return None
    dest, sources = regs[0], regs[1:]
    imm = next((o.imm << (o.shift.value if o.shift.type else 0) for o in ops
                if o.type == A.ARM64_OP_IMM), None)
    if dest in _A64_FRAME:  # the frame's own setup and teardown (large: mov x12, #N first)
        if m in ("mov", "add", "sub") and all(s in _A64_FRAME or s is None or
                                              insn.reg_name(o.reg) in consts
                                              for s, o in zip(sources, ops[1:], strict=True)):
            return None
        return "the frame or stack pointer set from another value"
    frame_src = [s for s in sources if s in _A64_FRAME]
    if len(frame_src) == 1 and m in ("mov", "add", "sub") and len(ops) <= 3 and \
            (m == "mov" or imm is not None):
        ref = st.fp if frame_src[0] == "x29" else st.sp
        if ref is None:
            return "x29 used before it is set"
        eff.addresses.append(ref + (0 if m == "mov" else imm if m == "add" else -imm))
        return None
    return "the frame or stack pointer used as a value"


def _a64_store_size(insn, regs: list[str | None]) -> int:
    """Bytes a plain store writes; 16 (the most any writes) for the others (exclusive
    and atomic stores), which only ever makes more of the frame look written."""
    m = insn.mnemonic
    if m in ("strb", "sturb"):
        return 1
    if m in ("strh", "sturh"):
        return 2
    if m not in ("str", "stur", "stp", "stnp") or not regs or not regs[0]:
        return 16
    name = insn.reg_name(insn.operands[0].reg)
    size = 8 if name in ("fp", "lr", "xzr") else _A64_SIZE.get(name[0], 16)
    return size * (2 if m in ("stp", "stnp") else 1)


def effects_before_call(isa_name: str, code: Callable[[int, int], bytes], func_addr: int,
                        func_size: int, return_address: int) -> Effects:
    """What the function may have done to its frame when its call returning to
    `return_address` was made (ask it `writes(lo, hi)` of a slot's CFA offsets); "unknown"
    when that is not one of its calls."""
    arch = arch_of(isa_name)
    cs = capstone.Cs(arch.mc.CS_ARCH, arch.mc.CS_MODE)
    cs.detail = True
    insns = list(cs.disasm(code(func_addr, func_size), func_addr))
    call = next((i for i, x in enumerate(insns) if x.address + x.size == return_address), None)
    if call is None or not arch.mc.is_call(insns[call]):
        return Effects(unknown=f"{return_address:#x} follows no call of the function")
    return frame_effects(arch, insns, call, code)
