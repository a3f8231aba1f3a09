"""x86-64 machine code as metadata.py reads it (capstone): calls, branches, register
names, the prologue's SP/FP/stack stores, where a frame keeps its record. The ISA's
facts themselves (registers, ABI) are in isa/x86_64.py."""

from __future__ import annotations

import capstone

from docker_hmigrate.isa import X86_64

ISA = X86_64
CS_ARCH, CS_MODE = capstone.CS_ARCH_X86, capstone.CS_MODE_64
ENTRY_SP = -8  # SP - CFA at a function's first instruction: the call pushed the RA
SYSCALL = "syscall"

# every part of a general register -> the whole 64-bit register (eax, ax, al, ah -> rax)
_FULL: dict[str, str] = {}
for _r in ("ax", "bx", "cx", "dx"):
    for _p in (f"e{_r}", _r, f"{_r[0]}l", f"{_r[0]}h"):
        _FULL[_p] = f"r{_r}"
for _r in ("si", "di", "bp", "sp"):
    for _p in (f"e{_r}", _r, f"{_r}l"):
        _FULL[_p] = f"r{_r}"
for _n in range(8, 16):
    for _s in ("d", "w", "b"):
        _FULL[f"r{_n}{_s}"] = f"r{_n}"


def norm_reg(name: str) -> str:
    """The whole register a (sub)register name is part of."""
    return _FULL.get(name, name)


def regs_access(insn) -> tuple[set[str], set[str]]:
    """(registers read, registers written) by capstone's names: right on x86-64 as
    capstone gives them. Raises capstone.CsError as capstone does."""
    r, w = insn.regs_access()
    return {insn.reg_name(x) for x in r}, {insn.reg_name(x) for x in w}


def is_call(insn) -> bool:
    return insn.mnemonic == "call"


def call_target(insn) -> int | None:
    op = insn.operands[0] if insn.operands else None
    if op is not None and op.type == capstone.x86.X86_OP_IMM:
        return op.imm
    return None


def branch(insn) -> tuple[str, int | None]:
    """('jump'|'cond'|'ret'|'indirect'|'none', direct target)."""
    m = insn.mnemonic
    if m in ("ret", "retq"):
        return "ret", None
    if m.startswith("j"):
        op = insn.operands[0] if insn.operands else None
        tgt = op.imm if op is not None and op.type == capstone.x86.X86_OP_IMM else None
        if m == "jmp":
            return ("jump" if tgt is not None else "indirect"), tgt
        return "cond", tgt
    if "jmp" in m:  # notrack jmp / bnd jmp
        return "indirect", None
    return "none", None


def step(st, consts: dict[str, int], insn) -> None:
    """Apply one instruction to the SP/FP/stack-store tracking state (PrologueState)."""
    m, ops = insn.mnemonic, insn.operands
    if m == "push":
        st.sp -= 8
        st.stores.append((st.sp, 8))
    elif m == "pop":
        st.sp += 8
    elif m == "add" and len(ops) == 2 and ops[0].type == capstone.x86.X86_OP_REG and \
            insn.reg_name(ops[0].reg) == "rsp" and ops[1].type == capstone.x86.X86_OP_IMM:
        st.sp += ops[1].imm  # stack arguments popped after a call
    elif m == "mov" and len(ops) == 2 and ops[0].type == capstone.x86.X86_OP_REG \
            and insn.reg_name(ops[0].reg) == "rbp" and ops[1].type == \
            capstone.x86.X86_OP_REG and insn.reg_name(ops[1].reg) == "rsp":
        st.fp = st.sp
    elif m == "sub" and ops and ops[0].type == capstone.x86.X86_OP_REG and \
            insn.reg_name(ops[0].reg) == "rsp":
        if ops[1].type == capstone.x86.X86_OP_IMM:
            st.sp -= ops[1].imm
        else:
            st.dynamic = True
    elif ops and ops[0].type == capstone.x86.X86_OP_MEM and m.startswith("mov"):
        mem = ops[0].mem
        base = insn.reg_name(mem.base) if mem.base else None
        ref = st.fp if base == "rbp" else st.sp if base == "rsp" else None
        if ref is not None and not mem.index:
            st.stores.append((ref + mem.disp, ops[0].size))


def frame_record(frame: dict) -> tuple[int | None, int | None]:
    """(return address, caller's frame pointer) CFA offsets: push rbp right after the
    call's pushed return address."""
    return -8, -16


def lr_copy_reg(insns: list) -> str | None:
    """The return address lives on the stack: no register copy of it."""
    return None


def _table_jump(insns: list, i: int):
    """The memory operand of the jump through a table of absolute addresses (a static
    binary's) ending at insns[i], or None: `mov rax, qword ptr [rI*8 + table] ; jmp rax`
    (-O0) or `jmp qword ptr [rI*8 + table]` (optimized code)."""
    jmp = insns[i]
    ops = jmp.operands
    if jmp.mnemonic != "jmp" or len(ops) != 1:
        return None
    if ops[0].type == capstone.x86.X86_OP_MEM:
        table = ops[0]
    else:
        load = insns[i - 1]
        lops = load.operands
        if ops[0].type != capstone.x86.X86_OP_REG or load.mnemonic != "mov" or \
                len(lops) != 2 or lops[0].type != capstone.x86.X86_OP_REG or \
                lops[0].reg != ops[0].reg or lops[1].type != capstone.x86.X86_OP_MEM:
            return None
        table = lops[1]
    mem = table.mem
    if mem.base != 0 or mem.index == 0 or mem.scale != 8 or mem.segment != 0 or \
            table.size != 8:
        return None
    return mem


def jump_table(insns: list, i: int, read) -> list[int] | None:
    """The targets of the switch dispatch GCC emits at -O0 in a static (non-PIE)
    binary, ending in the `jmp` at insns[i]:
        cmp X, N ; ja default ; mov eax, X ; mov rax, qword ptr [rax*8 + table] ; jmp rax
    (optimized: `cmp eX, N ; ja default ; mov eax, eX ; jmp qword ptr [rax*8 + table]`)
    (N + 1 absolute addresses). None when the code around the `jmp` is not that shape:
    the caller then assumes any block may follow."""
    if i < 2:
        return None
    mem = _table_jump(insns, i)
    if mem is None:
        return None
    count = None
    for k in range(i - 1, max(i - 8, 0), -1):  # cmp X, N ; ja default
        cmp, ja = insns[k - 1], insns[k]
        if ja.mnemonic == "ja" and cmp.mnemonic == "cmp" and len(cmp.operands) == 2 \
                and cmp.operands[1].type == capstone.x86.X86_OP_IMM:
            count = cmp.operands[1].imm + 1
            break
    if count is None or not 0 < count <= 1 << 16:
        return None
    raw = read(mem.disp & ((1 << 64) - 1), count * 8)
    if len(raw) != count * 8:
        return None
    return [int.from_bytes(raw[n * 8:n * 8 + 8], "little") for n in range(count)]


def goto_table(insns: list, i: int, read) -> list[int] | None:
    """The candidate targets of a computed goto through a table of label addresses (an
    interpreter's `goto *disptab[op]`, GCC's labels as values), ending in the `jmp` at
    insns[i]:
        and eI, MASK ; mov rax, qword ptr [rI*8 + table] ; jmp rax
    (or `jmp qword ptr [rI*8 + table]`). MASK + 1 entries read; the caller keeps those
    that are addresses in the function (the table's own end is where they stop being so)."""
    if i < 2:
        return None
    mem = _table_jump(insns, i)
    if mem is None:
        return None

    index = norm_reg(insns[i].reg_name(mem.index))
    load = i if insns[i].operands[0].type == capstone.x86.X86_OP_MEM else i - 1
    for k in range(load - 1, max(load - 5, -1), -1):  # and eI, MASK
        x = insns[k]
        if x.mnemonic == "and" and len(x.operands) == 2 and \
                x.operands[0].type == capstone.x86.X86_OP_REG and \
                norm_reg(x.reg_name(x.operands[0].reg)) == index and \
                x.operands[1].type == capstone.x86.X86_OP_IMM:
            mask = x.operands[1].imm
            if mask <= 0 or mask & (mask + 1) or mask >= 1 << 12:
                return None
            raw = read(mem.disp & ((1 << 64) - 1), (mask + 1) * 8)
            return [int.from_bytes(raw[n * 8:n * 8 + 8], "little")
                    for n in range(len(raw) // 8)]
        if index in {norm_reg(r) for r in regs_access(x)[1]}:
            return None  # the index set otherwise: not bounded by a mask here
    return None
