"""aarch64 machine code as metadata.py reads it (capstone): calls, branches, register
names, the prologue's SP/FP/stack stores, where a frame keeps its record, GCC's copy of
the return address. The ISA's facts themselves (registers, ABI) are in isa/aarch64.py."""

from __future__ import annotations

import re

import capstone

from docker_hmigrate.isa import AARCH64

ISA = AARCH64
CS_ARCH, CS_MODE = capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM
ENTRY_SP = 0  # SP - CFA at a function's first instruction: bl keeps the RA in x30
SYSCALL = "svc"


def norm_reg(name: str) -> str:
    if name.startswith("w") and name[1:].isdigit():
        return "x" + name[1:]
    if name in ("fp",):
        return "x29"
    if name in ("lr",):
        return "x30"
    return name


# Aliases of SBFM/UBFM (sign/zero extensions, shifts by an immediate, bitfield
# extracts) write their destination without reading it, but capstone 5 lists the
# destination among the registers they read: `sxtw x21, w0` would keep a stale x21
# "live" through the whole function (bc's yyparse: a temporary in every call's way).
_DEST_ONLY = frozenset(("sxtb", "sxth", "sxtw", "uxtb", "uxth", "uxtw", "lsl", "lsr",
                        "asr", "ubfx", "sbfx", "ubfiz", "sbfiz", "ubfm", "sbfm"))


# Comparisons (SUBS/ADDS/ANDS aliases whose destination is the zero register) write
# only the flags, but capstone 5 lists their first operand as written and not read:
# `cmp w20, #1` ended w20's liveness, so a variable kept in x20 across a call and
# compared after it looked dead at the call (lua's lua_compare `op`: a move did not
# carry it, and the sort after it went wrong).
_FLAGS_ONLY = frozenset(("cmp", "cmn", "tst"))


def regs_access(insn) -> tuple[set[str], set[str]]:
    """(registers read, registers written) by capstone's names, corrected for the
    aliases above. Raises capstone.CsError as capstone does."""
    r, w = insn.regs_access()
    reads = {insn.reg_name(x) for x in r}
    writes = {insn.reg_name(x) for x in w}
    ops = [insn.reg_name(o.reg) for o in insn.operands
           if o.type == capstone.arm64.ARM64_OP_REG]
    if insn.mnemonic in _FLAGS_ONLY:
        return reads | set(ops), {"nzcv"}
    if insn.mnemonic in _DEST_ONLY and ops and \
            insn.operands[0].type == capstone.arm64.ARM64_OP_REG and \
            norm_reg(ops[0]) not in {norm_reg(x) for x in ops[1:]}:
        reads = {x for x in reads if norm_reg(x) != norm_reg(ops[0])}
    return reads, writes


def is_call(insn) -> bool:
    return insn.mnemonic in ("bl", "blr")


def call_target(insn) -> int | None:
    op = insn.operands[0] if insn.operands else None
    if op is not None and insn.mnemonic == "bl" and op.type == capstone.arm64.ARM64_OP_IMM:
        return op.imm
    return None


def branch(insn) -> tuple[str, int | None]:
    """('jump'|'cond'|'ret'|'indirect'|'none', direct target)."""
    m = insn.mnemonic
    if m == "ret":
        return "ret", None
    if m == "br":
        return "indirect", None
    if m == "b" or m.startswith("b.") or m in ("cbz", "cbnz", "tbz", "tbnz"):
        imms = [o.imm for o in insn.operands if o.type == capstone.arm64.ARM64_OP_IMM]
        tgt = imms[-1] if imms else None
        return ("jump" if m == "b" else "cond"), tgt
    return "none", None


def step(st, consts: dict[str, int], insn) -> None:
    """Apply one instruction to the SP/FP/stack-store tracking state (PrologueState)."""
    m, ops = insn.mnemonic, insn.operands
    if m == "mov" and len(ops) == 2 and ops[1].type == capstone.arm64.ARM64_OP_IMM:
        consts[insn.reg_name(ops[0].reg)] = ops[1].imm
        return
    if m in ("stp", "str", "stur", "strb", "strh", "sturb", "sturh") and ops:
        mem_ops = [o for o in ops if o.type == capstone.arm64.ARM64_OP_MEM]
        if not mem_ops:
            return
        mem = mem_ops[0].mem
        base = insn.reg_name(mem.base)
        size = {"strb": 1, "sturb": 1, "strh": 2, "sturh": 2}.get(m, 0)
        if not size:
            size = 4 if insn.reg_name(ops[0].reg).startswith(("w", "s")) else 8
            if insn.reg_name(ops[0].reg).startswith("q"):
                size = 16
        nregs = 2 if m == "stp" else 1
        if base == "sp":
            if insn.writeback:
                # stp x29, x30, [sp, #-N]! pre-indexed; post-index not used in prologues
                st.sp += mem.disp
                st.stores.append((st.sp, size * nregs))
            else:
                st.stores.append((st.sp + mem.disp, size * nregs))
        elif base in ("x29", "fp") and st.fp is not None:
            st.stores.append((st.fp + mem.disp, size * nregs))
    elif m == "sub" and len(ops) == 3 and insn.reg_name(ops[0].reg) == "sp" and \
            insn.reg_name(ops[1].reg) == "sp":
        if ops[2].type == capstone.arm64.ARM64_OP_IMM:
            st.sp -= ops[2].imm << (ops[2].shift.value if ops[2].shift.type else 0)
        elif insn.reg_name(ops[2].reg) in consts:
            st.sp -= consts[insn.reg_name(ops[2].reg)]
        else:
            st.dynamic = True
    elif m == "mov" and len(ops) == 2 and insn.reg_name(ops[0].reg) in ("x29", "fp") \
            and ops[1].type == capstone.arm64.ARM64_OP_REG and \
            insn.reg_name(ops[1].reg) == "sp":
        st.fp = st.sp
    elif m == "add" and len(ops) == 3 and insn.reg_name(ops[0].reg) in ("x29", "fp") \
            and insn.reg_name(ops[1].reg) == "sp" and \
            ops[2].type == capstone.arm64.ARM64_OP_IMM:
        st.fp = st.sp + ops[2].imm


def frame_record(frame: dict) -> tuple[int | None, int | None]:
    """(return address, caller's frame pointer) CFA offsets: where the prologue's
    stp x29, x30 put them (the CFI's saved registers)."""
    regs = frame.get("saved_regs", {})
    return regs.get(ISA.lr), regs.get(ISA.fp)


def lr_copy_reg(insns: list) -> str | None:
    """GCC's instrumented functions copy the return address into a callee-saved register
    for the exit hook (in their first instructions): which one."""
    for insn in insns[:16]:
        ops = insn.op_str.replace(" ", "").split(",")
        if insn.mnemonic == "mov" and len(ops) == 2 and ops[1] in ("x30", "lr") and \
                ops[0] in ISA.callee_saved:
            return ops[0]
    return None


_EXT = re.compile(r"(s|u)xt([bhw]) #(\d)")
_ENTRY = {"ldrb": 1, "ldrh": 2, "ldr": 4}


def jump_table(insns: list, i: int, read) -> list[int] | None:
    """The targets of the switch dispatch GCC emits at -O0, ending in the `br` at insns[i]:
        cmp wI, #N ; b.hi default ; adrp xT, table ; add xT, xT, :lo12:table
        ldr{b,h,} wE, [xT, wI, uxtw #s] ; adr xB, base ; add xD, xB, wE, sxt? #2 ; br xD
    (N + 1 entries, each an offset in instructions from base). None when the code around
    the `br` is not that shape: the caller then assumes any block may follow."""
    if i < 7:
        return None
    br, add, adr, ld, lo, page = (insns[i - k] for k in range(6))
    regs = [o.reg for o in br.operands]
    if not (add.mnemonic == "add" and adr.mnemonic == "adr" and lo.mnemonic == "add"
            and page.mnemonic == "adrp" and ld.mnemonic in _ENTRY and len(regs) == 1
            and len(add.operands) == 3 and add.operands[0].reg == regs[0]
            and add.operands[1].reg == adr.operands[0].reg):
        return None
    m = _EXT.search(add.op_str)
    mem = [o for o in ld.operands if o.type == capstone.arm64.ARM64_OP_MEM]
    if m is None or not mem or mem[0].mem.base != lo.operands[0].reg or \
            lo.operands[0].reg != page.operands[0].reg or len(lo.operands) != 3:
        return None
    signed, width, shift = m.group(1) == "s", {"b": 1, "h": 2, "w": 4}[m.group(2)], \
        int(m.group(3))
    table = page.operands[1].imm + lo.operands[2].imm
    base = adr.operands[1].imm
    index = ld.reg_name(mem[0].mem.index)
    count = None
    for k in range(i - 6, max(i - 12, 0), -1):  # cmp wI, #N ; b.hi default
        cmp, bhi = insns[k - 1], insns[k]
        if bhi.mnemonic == "b.hi" and cmp.mnemonic == "cmp" and len(cmp.operands) == 2 \
                and cmp.operands[1].type == capstone.arm64.ARM64_OP_IMM \
                and cmp.reg_name(cmp.operands[0].reg) == index:
            count = cmp.operands[1].imm + 1
            break
    size = _ENTRY[ld.mnemonic]
    if count is None or not 0 < count <= 1 << 16:
        return None
    raw = read(table, count * size)
    if len(raw) != count * size:
        return None
    out = []
    for n in range(count):
        v = int.from_bytes(raw[n * size:n * size + size], "little") & ((1 << 8 * width) - 1)
        if signed and v >> (8 * width - 1):
            v -= 1 << 8 * width
        out.append(base + (v << shift))
    return out


def goto_table(insns: list, i: int, read) -> list[int] | None:
    """The candidate targets of a computed goto through a table of label addresses (an
    interpreter's `goto *disptab[op]`), ending in the `br` at insns[i]:
        and xI, xS, #MASK ; adrp xT, table ; add xT, xT, :lo12:table ;
        ldr xD, [xT, xI, lsl #3] ; br xD
    MASK + 1 entries read; the caller keeps those that are addresses in the function."""
    if i < 4:
        return None
    br, ld, lo, page = insns[i], insns[i - 1], insns[i - 2], insns[i - 3]
    A = capstone.arm64
    if br.mnemonic != "br" or ld.mnemonic != "ldr" or lo.mnemonic != "add" or \
            page.mnemonic != "adrp" or len(lo.operands) != 3:
        return None
    mem = [o for o in ld.operands if o.type == A.ARM64_OP_MEM]
    if not mem or ld.operands[0].reg != br.operands[0].reg or not mem[0].mem.index or \
            mem[0].mem.base != lo.operands[0].reg or lo.operands[0].reg != page.operands[0].reg \
            or "lsl #3" not in ld.op_str or not ld.reg_name(ld.operands[0].reg).startswith("x"):
        return None
    index = norm_reg(ld.reg_name(mem[0].mem.index))
    table = page.operands[1].imm + lo.operands[2].imm
    for k in range(i - 4, max(i - 8, -1), -1):  # and xI, xS, #MASK
        x = insns[k]
        if x.mnemonic == "and" and len(x.operands) == 3 and \
                norm_reg(x.reg_name(x.operands[0].reg)) == index and \
                x.operands[2].type == A.ARM64_OP_IMM:
            mask = x.operands[2].imm
            if mask <= 0 or mask & (mask + 1) or mask >= 1 << 12:
                return None
            raw = read(table, (mask + 1) * 8)
            return [int.from_bytes(raw[n * 8:n * 8 + 8], "little")
                    for n in range(len(raw) // 8)]
        if index in {norm_reg(r) for r in regs_access(x)[1]}:
            return None
    return None
