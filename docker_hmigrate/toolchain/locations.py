"""Where an optimized (-Og) function keeps its variables at each of its calls, and whether
that is all the state its frame holds there (`hmigrate-cc --optimize-frames`).

At -O0 every variable has one stack slot for the whole function. At -Og GCC keeps values
in callee-saved registers and stack slots that change along the code; its DWARF location
lists say, per code range, where each named variable is. At a call, what a frame needs
after the callee returns is in callee-saved registers and its own stack slots (the
caller-saved registers are clobbered by the call). So a frame stopped at a call can be
rebuilt on the other ISA when every live callee-saved register and every live stack byte
there is where the DWARF puts a named variable: the recode reads each variable where the
source ISA has it and writes it where the target ISA wants it (recode/described.py).
A call where a live register or live stack byte holds a value no variable names (a
common subexpression, a strength-reduced pointer) is untranslatable: the runtime never
parks above it.

Locations, per call site, in the metadata (JSON lists):
- ["slot", off]: in memory at CFA + off (DW_OP_fbreg, or the frame or stack pointer plus
  a constant);
- ["reg", r]: the value is callee-saved register r;
- ["value", r, k]: the value is register r plus k (DW_OP_bregN k; DW_OP_stack_value);
- ["const", c]: a known constant (nothing to store);
- ["expr", text, steps]: computed from callee-saved registers and the frame's slots by
  a DWARF expression the recode evaluates on the source (nothing to store on the
  target: what it is computed from is stored, or named otherwise);
- ["computed", text]: computed from what the call does not keep, or by operations not
  followed (nothing to store; not read back);
- ["gone"]: in a caller-saved register or anywhere else the call does not keep (nothing
  to read on the source; nothing to store on the target);
- ["unknown", why]: an expression this reader does not follow (pieces, entry values).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import capstone
from elftools.dwarf.dwarf_expr import DWARFExprParser
from elftools.dwarf.locationlists import (
    BaseAddressEntry,
    LocationEntry,
    LocationExpr,
    LocationParser,
)

# -O0 frames keep every variable in one slot; this is what a CU built for described
# frames has in its DW_AT_producer (the flags GCC was called with).
PRODUCER_MARK = b" -Og"


@dataclass
class Ranges:
    """A variable's locations: [(lo, hi, decoded expression)] for pc in [lo, hi)."""

    items: list[tuple[int, int, tuple]]

    def at(self, pc: int) -> tuple | None:
        for lo, hi, loc in self.items:
            if lo <= pc < hi:
                return loc
        return None


class Reader:
    """Location lists and expressions of one binary's DWARF."""

    def __init__(self, dwarf, arch):
        self.arch = arch
        self.lists = LocationParser(dwarf.location_lists())
        self.exprs = DWARFExprParser(dwarf.structs)

    def ranges(self, die) -> Ranges:
        attr = die.attributes["DW_AT_location"]
        ll = self.lists.parse_from_attribute(attr, die.cu["version"], die)
        if isinstance(ll, LocationExpr):
            return Ranges([(0, 1 << 64, self.decode(ll.loc_expr))])
        top = die.cu.get_top_DIE().attributes.get("DW_AT_low_pc")
        base = top.value if top is not None else 0
        items = []
        for e in ll:
            if isinstance(e, BaseAddressEntry):
                base = e.base_address
            elif isinstance(e, LocationEntry):
                absolute = getattr(e, "is_absolute", False)
                lo = e.begin_offset if absolute else base + e.begin_offset
                hi = e.end_offset if absolute else base + e.end_offset
                items.append((lo, hi, self.decode(e.loc_expr)))
        return Ranges(items)

    def decode(self, expr: list[int]) -> tuple:
        """A location expression as one of this module's forms, before the frame is
        known: ("fb", k) / ("fp", k) / ("sp", k) for memory at the frame base, frame
        pointer or stack pointer plus k; ("reg", r); ("value", r, k); ("const", c);
        ("unknown", why)."""
        try:
            ops = self.exprs.parse_expr(expr)
        except Exception as exc:  # pyelftools raises bare errors on unknown opcodes
            return ("unknown", f"unreadable expression ({exc})")
        names = [o.op_name for o in ops]
        isa = self.arch.isa
        if not ops:
            return ("unknown", "empty expression")
        first = names[0]
        if len(ops) == 1:
            if first == "DW_OP_fbreg":
                return ("fb", ops[0].args[0])
            if first.startswith("DW_OP_reg"):
                n = ops[0].args[0] if first == "DW_OP_regx" else int(first[9:])
                return ("reg", self.arch.reg(n))
            if first.startswith("DW_OP_breg"):
                r = self.arch.reg(ops[0].args[0] if first == "DW_OP_bregx" else int(first[10:]))
                k = ops[0].args[-1]
                if r == isa.fp:
                    return ("fp", k)
                if r == isa.sp:
                    return ("sp", k)
                return ("unknown", f"memory at {r}{k:+d}")
        if names[-1] == "DW_OP_stack_value" and first in ("DW_OP_entry_value",
                                                          "DW_OP_GNU_entry_value"):
            return ("gone",)  # the caller's value: kept nowhere in this frame
        if names[-1] == "DW_OP_stack_value" and (
                len(ops) > 2 or not first.startswith(("DW_OP_lit", "DW_OP_const", "DW_OP_breg"))):
            # a value computed from registers or memory (i >> 15 & 0xff, a field of a
            # slot): nothing to store on the target (what it is computed from is, or is
            # unnamed); the source would have to evaluate it
            return ("computed", " ".join(n.replace("DW_OP_", "") for n in names),
                    _expr_ops(self, ops))
        if names[-1] == "DW_OP_stack_value" and len(ops) == 2:
            op = ops[0]
            if first.startswith("DW_OP_lit"):
                return ("const", int(first[9:]))
            if first.startswith("DW_OP_const"):
                return ("const", op.args[0])
            if first.startswith("DW_OP_breg") and first != "DW_OP_bregx":
                r = self.arch.reg(int(first[10:]))
                if r in (isa.fp, isa.sp):
                    return ("unknown", "the address of a stack slot as a value")
                return ("value", r, op.args[0])
        return ("unknown", " ".join(n.replace("DW_OP_", "") for n in names))


_EXPR_OPS = {"DW_OP_deref": "deref", "DW_OP_plus": "plus", "DW_OP_minus": "minus",
             "DW_OP_mul": "mul", "DW_OP_and": "and", "DW_OP_or": "or", "DW_OP_xor": "xor",
             "DW_OP_shl": "shl", "DW_OP_shr": "shr", "DW_OP_shra": "shra",
             "DW_OP_neg": "neg", "DW_OP_not": "not"}


def _expr_ops(reader: Reader, ops) -> list | None:
    """A computed value's DWARF expression as evaluable steps (None when it uses what
    these do not follow): ["breg", r, k], ["fbreg", k], ["lit", c], ["plus_uconst", k],
    and the operators of _EXPR_OPS; the final DW_OP_stack_value left out."""
    out: list = []
    for op in ops[:-1]:
        n = op.op_name
        if n.startswith("DW_OP_breg") and n != "DW_OP_bregx":
            out.append(["breg", reader.arch.reg(int(n[10:])), op.args[0]])
        elif n == "DW_OP_fbreg":
            out.append(["fbreg", op.args[0]])
        elif n.startswith("DW_OP_lit") and n[9:].isdigit():
            out.append(["lit", int(n[9:])])
        elif n.startswith("DW_OP_const") and op.args:
            out.append(["lit", op.args[0]])
        elif n == "DW_OP_plus_uconst":
            out.append(["plus_uconst", op.args[0]])
        elif n in _EXPR_OPS:
            out.append([_EXPR_OPS[n]])
        else:
            return None
    return out


def at_site(loc: tuple | None, arch, fp_cfa: int | None, sp_cfa: int) -> list:
    """A decoded location as the metadata's site form (see the module's docstring)."""
    if loc is None:
        return ["gone"]
    kind = loc[0]
    if kind == "fb":
        return ["slot", loc[1]]
    if kind == "fp":
        return ["slot", fp_cfa + loc[1]] if fp_cfa is not None else \
            ["unknown", "frame pointer not set"]
    if kind == "sp":
        return ["slot", sp_cfa + loc[1]]
    if kind in ("reg", "value"):
        if loc[1] not in arch.isa.callee_saved:
            return ["gone"]  # a caller-saved register: the call does not keep it
        return list(loc)
    if kind == "const":
        return ["const", loc[1]]
    if kind == "gone":
        return ["gone"]
    if kind == "computed":
        ops = loc[2] if len(loc) > 2 else None
        out = []
        for op in ops or ():  # registers and frame addresses as the frame has them
            if op[0] == "breg" and op[1] == arch.isa.fp:
                if fp_cfa is None:
                    return ["computed", loc[1]]
                out.append(["cfa", fp_cfa + op[2]])
            elif op[0] == "breg" and op[1] == arch.isa.sp:
                out.append(["cfa", sp_cfa + op[2]])
            elif op[0] == "breg":
                if op[1] not in arch.isa.callee_saved:
                    return ["computed", loc[1]]  # the call does not keep it
                out.append(["reg", op[1], op[2]])
            elif op[0] == "fbreg":
                out.append(["cfa", op[1]])
            elif op[0] == "deref" and not (out and out[-1][0] == "cfa"):
                return ["computed", loc[1]]  # memory other than the frame's own slots
            else:
                out.append(op)
        return ["expr", loc[1], out] if ops else ["computed", loc[1]]
    return ["unknown", loc[1]]


# ---------------------------------------------------------------- frame states by CFG


@dataclass
class FrameState:
    """What machine_<isa>.step tracks (metadata.PrologueState's fields)."""

    sp: int  # SP - CFA before the instruction
    fp: int | None
    stores: list = field(default_factory=list)  # unused here
    dynamic: bool = False


def frame_states(arch, insns: list, succ: list[list[int]]) -> list[FrameState | None]:
    """SP and FP (relative to the CFA) before each instruction, carried along the
    control flow from the entry (not in address order: an early return's epilogue pops
    registers in the middle of an optimized function's code)."""
    states: list[FrameState | None] = [None] * len(insns)
    if not insns:
        return states
    states[0] = FrameState(arch.mc.ENTRY_SP, None)
    todo = [0]
    consts: dict[str, int] = {}
    while todo:
        i = todo.pop()
        st = states[i]
        assert st is not None
        nxt = FrameState(st.sp, st.fp, [], st.dynamic)
        arch.mc.step(nxt, consts, insns[i])
        for s in succ[i]:
            if states[s] is None:
                states[s] = FrameState(nxt.sp, nxt.fp, [], nxt.dynamic)
                todo.append(s)
    return states


def lr_copy_slot(arch, insns: list, states: list[FrameState | None]) -> int | None:
    """aarch64 GCC at -Og keeps the function's own return address for the exit hook in a
    stack slot (stored before the entry hook, beside the frame record's copy): its CFA
    offset, which the recode fills like the frame record's."""
    if arch.isa.lr is None:
        return None
    for i, x in enumerate(insns[:24]):
        if arch.mc.is_call(x):
            return None
        ops = x.op_str.replace(" ", "")
        if x.mnemonic in ("str", "stur") and ops.startswith(("x30,[", "lr,[")) and \
                not x.writeback and states[i] is not None:
            mem = next(o for o in x.operands if o.type == capstone.arm64.ARM64_OP_MEM)
            base = x.reg_name(mem.mem.base)
            ref = states[i].fp if base in ("x29", "fp") else states[i].sp \
                if base == "sp" else None
            if ref is not None:
                return ref + mem.mem.disp
    return None


def self_address_reg(arch, insns: list, fn_addr: int) -> str | None:
    """aarch64 GCC at -Og computes the function's own address (the hooks' first
    argument) once, before the entry hook, into a callee-saved register it keeps for the
    exit hook: which one (its value on the target is the same address: functions are
    aligned across ISAs)."""
    if arch.isa.lr is None:
        return None
    page: dict[str, int] = {}
    for x in insns[:24]:
        if arch.mc.is_call(x):
            return None
        ops = x.op_str.replace(" ", "").split(",")
        if x.mnemonic == "adrp" and len(ops) == 2:
            page[ops[0]] = int(ops[1].lstrip("#"), 0)
        elif x.mnemonic == "add" and len(ops) == 3 and ops[0] == ops[1] and ops[0] in page \
                and ops[0] in arch.isa.callee_saved and ops[2].startswith("#"):
            if page[ops[0]] + int(ops[2].lstrip("#"), 0) == fn_addr:
                return ops[0]
    return None


# ---------------------------------------------------------------- live stack bytes

BIAS = 1 << 16  # bit index of CFA offset 0 in a bitset of frame bytes


def _bits(lo: int, hi: int) -> int:
    lo, hi = max(lo + BIAS, 0), max(hi + BIAS, 0)
    return ((1 << (hi - lo)) - 1) << lo if hi > lo else 0


def ranges_of(bits: int) -> list[tuple[int, int]]:
    """A bitset of frame bytes as [lo, hi) CFA offsets."""
    out = []
    while bits:
        lo = (bits & -bits).bit_length() - 1  # the lowest set bit
        run = bits >> lo
        n = (~run & (run + 1)).bit_length() - 1  # how many set bits from there
        out.append((lo - BIAS, lo + n - BIAS))
        bits &= ~(((1 << n) - 1) << lo)
    return out


_A64_SIZE = {"x": 8, "w": 4, "d": 8, "s": 4, "h": 2, "b": 1, "q": 16}


def _access(arch, insn, st: FrameState) -> tuple[int, int, str | None]:
    """(bytes read, bytes written, why unknown) of the frame by one instruction."""
    if st.dynamic:
        return 0, 0, "the stack pointer moves by a variable amount"
    if arch.isa.name == "x86-64":
        return _x86_access(insn, st)
    return _a64_access(insn, st)


def _x86_access(insn, st: FrameState) -> tuple[int, int, str | None]:
    X = capstone.x86
    if insn.mnemonic == "push":  # the 8 bytes below the stack pointer
        return 0, _bits(st.sp - 8, st.sp), None
    if insn.mnemonic in ("lea", "pop", "nop", "call") or \
            insn.mnemonic.startswith(("prefetch", "nop")):
        return 0, 0, None
    r = w = 0
    for op in insn.operands:
        if op.type != X.X86_OP_MEM or not op.mem.base:
            continue
        base = insn.reg_name(op.mem.base)
        if base not in ("rbp", "rsp"):
            continue
        ref = st.fp if base == "rbp" else st.sp
        if ref is None or op.mem.index:
            return 0, 0, f"{insn.mnemonic} {insn.op_str}: frame address not constant"
        b = _bits(ref + op.mem.disp, ref + op.mem.disp + op.size)
        if op.access & capstone.CS_AC_READ or not op.access:
            r |= b
        if op.access & capstone.CS_AC_WRITE:
            w |= b
    return r, w, None


def _a64_access(insn, st: FrameState) -> tuple[int, int, str | None]:
    A = capstone.arm64
    mem = next((o for o in insn.operands if o.type == A.ARM64_OP_MEM), None)
    if mem is None:
        return 0, 0, None
    base = insn.reg_name(mem.mem.base)
    if base not in ("sp", "x29", "fp"):
        return 0, 0, None
    ref = st.fp if base in ("x29", "fp") else st.sp
    if ref is None or mem.mem.index:
        return 0, 0, f"{insn.mnemonic} {insn.op_str}: frame address not constant"
    m = insn.mnemonic
    regs = [insn.reg_name(o.reg) for o in insn.operands if o.type == A.ARM64_OP_REG]
    # by the register's name: x/w (xzr 8, wzr 4), d/s/h/b/q; fp and lr are x registers
    width = _A64_SIZE.get(regs[0][0], 8) if regs and regs[0] not in ("fp", "lr") else 8
    if m.endswith(("b", "sb")) and not m.startswith(("ldp", "stp")):
        width = 1
    elif m.endswith(("h", "sh")) and not m.startswith(("ldp", "stp")):
        width = 2
    elif m.startswith("ldrsw"):
        width = 4
    n = width * (2 if m in ("ldp", "stp", "ldnp", "stnp", "ldpsw") else 1)
    # pre-index ([sp, #-16]!) addresses base+disp; post-index ([sp], #16) the base
    post = insn.writeback and "]!" not in insn.op_str
    at = ref + (0 if post else mem.mem.disp)
    b = _bits(at, at + n)
    if m.startswith(("ld", "prfm")):
        return (b if not m.startswith("prfm") else 0), 0, None
    if m.startswith("st"):
        return 0, b, None
    return b, b, None  # atomics and the like: read and written


def frame_addresses(arch, insns: list, states: list[FrameState | None]) -> list[int]:
    """CFA offsets whose address the function puts in a register (lea from the frame or
    stack pointer, add/sub/mov of sp or x29): what a callee may then read or write, which
    the slot liveness does not see."""
    out = []
    x86 = arch.isa.name == "x86-64"
    for i, x in enumerate(insns):
        st = states[i]
        if st is None:
            continue
        ops = x.operands
        if x86:
            if x.mnemonic == "lea" and len(ops) == 2 and ops[1].mem.base and \
                    x.reg_name(ops[1].mem.base) in ("rbp", "rsp") and \
                    x.reg_name(ops[0].reg) not in ("rbp", "rsp"):
                ref = st.fp if x.reg_name(ops[1].mem.base) == "rbp" else st.sp
                if ref is not None:
                    out.append(ref + ops[1].mem.disp)
            elif x.mnemonic == "mov" and len(ops) == 2 and \
                    ops[1].type == capstone.x86.X86_OP_REG and \
                    x.reg_name(ops[1].reg) in ("rbp", "rsp") and \
                    ops[0].type == capstone.x86.X86_OP_REG and \
                    x.reg_name(ops[0].reg) not in ("rbp", "rsp"):
                ref = st.fp if x.reg_name(ops[1].reg) == "rbp" else st.sp
                if ref is not None:
                    out.append(ref)
            continue
        if x.mnemonic not in ("add", "sub", "mov") or len(ops) < 2 or \
                any(o.type not in (capstone.arm64.ARM64_OP_REG, capstone.arm64.ARM64_OP_IMM)
                    for o in ops):
            continue
        names = [x.reg_name(o.reg) if o.type == capstone.arm64.ARM64_OP_REG else None
                 for o in ops]
        if names[0] in ("sp", "x29", "fp") or names[1] not in ("sp", "x29", "fp"):
            continue
        ref = st.fp if names[1] in ("x29", "fp") else st.sp
        if ref is None:
            continue
        imm = ops[2].imm if len(ops) == 3 and ops[2].type == capstone.arm64.ARM64_OP_IMM else 0
        out.append(ref + (imm if x.mnemonic != "sub" else -imm))
    return out


@dataclass
class SlotLiveness:
    live_in: list[int]  # per instruction: frame bytes read later before being written
    unknown: str | None  # why the frame's use could not be followed (then: all live)
    # per instruction: frame bytes some path from the entry may have written before it
    # (a byte read but never written holds nothing: a struct's padding copied whole)
    written: list[int] = field(default_factory=list)


def live_slots(arch, insns: list, succ: list[list[int]],
               states: list[FrameState | None]) -> SlotLiveness:
    n = len(insns)
    use, kill = [0] * n, [0] * n
    for i, x in enumerate(insns):
        st = states[i]
        if st is None:
            continue  # not reachable from the entry
        r, w, why = _access(arch, x, st)
        if why:
            return SlotLiveness([], why)
        use[i], kill[i] = r, w & ~r
    live_in = [0] * n
    changed = True
    while changed:
        changed = False
        for i in range(n - 1, -1, -1):
            out = 0
            for s in succ[i]:
                out |= live_in[s]
            new = (out & ~kill[i]) | use[i]
            if new != live_in[i]:
                live_in[i] = new
                changed = True
    written = [0] * n  # forward: union over the paths reaching each instruction
    changed = True
    while changed:
        changed = False
        for i in range(n):
            out = written[i] | kill[i]
            for s in succ[i]:
                if out & ~written[s]:
                    written[s] |= out
                    changed = True
    return SlotLiveness(live_in, None, written)


def slot_bits(lo: int, size: int) -> int:
    return _bits(lo, lo + max(size, 1))


# ---------------------------------------------------------------- copies of values


def full_reg(arch, name: str) -> str:
    """The whole register a (sub)register name is part of (eax -> rax, w19 -> x19)."""
    return arch.mc.norm_reg(name)


def _loc_reg(arch, insn, op) -> str | None:
    name = insn.reg_name(op.reg)
    full = full_reg(arch, name)
    if arch.isa.name == "x86-64":
        return full if name.startswith("r") and not name.endswith(("d", "w", "b")) else None
    return full if name.startswith("x") or name in ("fp", "lr") else None


def _affine(arch, insn, st: FrameState) -> tuple[str, str, int] | None:
    """(d, s, k) when insn sets place d to place s plus k, all 8 bytes: a move between
    registers, a load or store of a frame slot ("s<cfa offset>"), an add of a constant
    (x86 lea/add, aarch64 add/sub)."""
    m, ops = insn.mnemonic, insn.operands
    x86 = arch.isa.name == "x86-64"
    X, A = capstone.x86, capstone.arm64
    is_reg = X.X86_OP_REG if x86 else A.ARM64_OP_REG
    is_mem = X.X86_OP_MEM if x86 else A.ARM64_OP_MEM
    is_imm = X.X86_OP_IMM if x86 else A.ARM64_OP_IMM

    def slot(op) -> str | None:
        base = insn.reg_name(op.mem.base) if op.mem.base else None
        ref = st.fp if base in ("rbp", "x29", "fp") else st.sp if base in ("rsp", "sp") else None
        if ref is None or op.mem.index or (not x86 and insn.writeback):
            return None
        if x86 and op.size != 8:
            return None
        return f"s{ref + op.mem.disp}"

    if x86:
        if len(ops) != 2:
            return None
        a, b = ops
        ra = _loc_reg(arch, insn, a) if a.type == is_reg else None
        if m == "mov":
            if ra and b.type == is_reg:
                rb = _loc_reg(arch, insn, b)
                return (ra, rb, 0) if rb else None
            if ra and b.type == is_mem:
                sb = slot(b)
                return (ra, sb, 0) if sb else None
            if a.type == is_mem and b.type == is_reg:
                sa, rb = slot(a), _loc_reg(arch, insn, b)
                return (sa, rb, 0) if sa and rb else None
            return None
        if m == "lea" and ra and b.type == is_mem and b.mem.base and not b.mem.index:
            base = full_reg(arch, insn.reg_name(b.mem.base))
            if base in ("rip", "rsp", "rbp"):
                return None
            return (ra, base, b.mem.disp)
        if m in ("add", "sub") and ra and b.type == is_imm:
            return (ra, ra, b.imm if m == "add" else -b.imm)
        return None
    if len(ops) == 2 and m == "mov" and ops[0].type == is_reg and ops[1].type == is_reg:
        ra, rb = _loc_reg(arch, insn, ops[0]), _loc_reg(arch, insn, ops[1])
        return (ra, rb, 0) if ra and rb else None
    if len(ops) == 2 and m in ("ldr", "str", "ldur", "stur") and ops[0].type == is_reg \
            and ops[1].type == is_mem:
        r, sl = _loc_reg(arch, insn, ops[0]), slot(ops[1])
        if not (r and sl):
            return None
        return (r, sl, 0) if m.startswith("ld") else (sl, r, 0)
    if len(ops) == 3 and m in ("add", "sub") and ops[0].type == is_reg and \
            ops[1].type == is_reg and ops[2].type == is_imm and not ops[2].shift.type:
        ra, rb = _loc_reg(arch, insn, ops[0]), _loc_reg(arch, insn, ops[1])
        if ra and rb and rb not in ("sp", "x29"):
            return (ra, rb, ops[2].imm if m == "add" else -ops[2].imm)
    return None


def _rel(a: str, b: str, k: int) -> tuple[str, str, int]:
    """val(a) = val(b) + k, in one orientation (a < b)."""
    return (a, b, k) if a < b else (b, a, -k)


def _w(a: str, b: str) -> tuple[str, str, str]:
    """The low 32 bits of a and b are equal."""
    return (a, b, "w") if a < b else (b, a, "w")


ZERO_UPPER = "#z"  # (r, ZERO_UPPER, "z"): a 32-bit write left r's upper half zero


def _mov32(arch, insn, st: FrameState) -> tuple[str, str] | None:
    """(d, s) when insn copies 32 bits between registers or a register and a frame slot
    (a 32-bit write to a register zeroes its upper half on both ISAs)."""
    m, ops = insn.mnemonic, insn.operands
    x86 = arch.isa.name == "x86-64"
    X, A = capstone.x86, capstone.arm64
    if len(ops) != 2:
        return None

    def reg32(op) -> str | None:
        if op.type != (X.X86_OP_REG if x86 else A.ARM64_OP_REG):
            return None
        name = insn.reg_name(op.reg)
        if x86 and (name.startswith("e") or (name.startswith("r") and name.endswith("d"))):
            return full_reg(arch, name)
        if not x86 and name.startswith("w") and name[1:].isdigit():
            return full_reg(arch, name)
        return None

    def slot4(op) -> str | None:
        if op.type != (X.X86_OP_MEM if x86 else A.ARM64_OP_MEM) or op.mem.index:
            return None
        base = insn.reg_name(op.mem.base) if op.mem.base else None
        ref = st.fp if base in ("rbp", "x29", "fp") else st.sp if base in ("rsp", "sp") else None
        if ref is None or (x86 and op.size != 4) or (not x86 and insn.writeback):
            return None
        return f"s{ref + op.mem.disp}"

    a, b = ops
    if m == "mov" and reg32(a) and reg32(b):
        return reg32(a), reg32(b)  # type: ignore[return-value]
    if x86 and m == "mov":
        if reg32(a) and slot4(b):
            return reg32(a), slot4(b)  # type: ignore[return-value]
        if slot4(a) and reg32(b):
            return slot4(a), reg32(b)  # type: ignore[return-value]
        return None
    if not x86 and m in ("ldr", "ldur", "str", "stur") and reg32(a) and slot4(b):
        return (reg32(a), slot4(b)) if m.startswith("ld") else (slot4(b), reg32(a))  # type: ignore[return-value]
    return None


FLAGS = "#f"  # (FLAGS, r, ("t", bits)): the flags hold a compare of r's low bits with 0


def _flag_op(arch, insn) -> tuple | None:
    """("cmp0", r, bits): insn compares r's low bits with 0 (x86 `test r, r` or
    `cmp r, 0`; aarch64 `cmp r, #0`); ("setne", r, bits): insn sets r's low bits to
    "not equal" as 0/1 (x86 `setne r8`: 8; aarch64 `cset r, ne`: 64, a w register's
    upper half zeroed); ("zx8", d, s): x86 `movzx d32, s8` (d's upper bits zeroed)."""
    m, ops = insn.mnemonic, insn.operands
    x86 = arch.isa.name == "x86-64"
    X, A = capstone.x86, capstone.arm64
    reg = X.X86_OP_REG if x86 else A.ARM64_OP_REG
    imm = X.X86_OP_IMM if x86 else A.ARM64_OP_IMM
    names = [insn.reg_name(o.reg) if o.type == reg else None for o in ops]

    def bits(name: str) -> int:
        if x86:
            return 64 if name.startswith("r") and not name.endswith(("d", "w", "b")) else \
                32 if name.startswith("e") or name.endswith("d") else 0
        return 64 if name.startswith("x") else 32 if name.startswith("w") else 0

    if len(ops) == 2 and names[0] and bits(names[0]) and (
            (m == "test" and x86 and names[1] == names[0])
            or (m == "cmp" and ops[1].type == imm and ops[1].imm == 0)):
        return "cmp0", full_reg(arch, names[0]), bits(names[0])
    if x86 and m == "setne" and len(ops) == 1 and names[0]:
        return "setne", full_reg(arch, names[0]), 8
    if not x86 and m == "cset" and len(ops) == 1 and names[0] and bits(names[0]) and \
            insn.cc == A.ARM64_CC_NE:
        return "setne", full_reg(arch, names[0]), 64
    if x86 and m == "movzx" and len(ops) == 2 and names[0] and names[1] and \
            bits(names[0]) == 32 and ops[1].size == 1:
        return "zx8", full_reg(arch, names[0]), full_reg(arch, names[1])
    return None


def copies_after(arch, insns: list, succ: list[list[int]],
                 states: list[FrameState | None], homes: int,
                 regs_of) -> list[frozenset | None]:
    """Per instruction, the relations val(a) = val(b) + k between places (registers,
    frame slots as "s<off>", 8 bytes) that hold on every path to the point after it: a
    register GCC keeps as a copy of a variable, or of a variable plus a constant, that
    its DWARF places elsewhere (lua's `L` in r13 beside its slot; `ra + 1` in x19). A must
    analysis: a relation holds only if every path made it and nothing wrote either side
    since. Slots of address-taken variables are never related (a store through a pointer
    or a callee may change them). regs_of(insn) gives the registers an insn writes.
    Also (r, s, ("ne", bits, 64)): r holds 1 if s's low bits are not 0, else 0 (an
    interpreter's `l_unlikely(trap)` kept across calls: lua's OP_VARARGPREP)."""
    n = len(insns)
    out: list[frozenset | None] = [None] * n
    into: list[frozenset | None] = [None] * n
    if not n:
        return out
    into[0] = frozenset()
    todo = [0]
    queued = {0}
    keep = set(arch.isa.callee_saved) | {arch.isa.fp}  # what a call leaves as it was
    while todo:
        i = todo.pop()
        queued.discard(i)
        st, x = states[i], insns[i]
        rels = set(into[i] or ())
        if st is not None:
            before = frozenset(rels)
            written = set(regs_of(x))
            _, w, _ = _access(arch, x, st)
            af = _affine(arch, x, st)
            if af is not None and any(p.startswith("s") and homes & slot_bits(int(p[1:]), 8)
                                      for p in af[:2]):
                af = None
            if arch.mc.is_call(x):
                written |= {p for r in rels for p in r[:2] if not p.startswith(("s", "#"))
                            and p not in keep}
            m32 = _mov32(arch, x, st) if af is None else None
            if m32 is not None and any(p.startswith("s") and homes & slot_bits(int(p[1:]), 4)
                                       for p in m32):
                m32 = None
            if af is not None and af[0] == af[1]:  # d += k in place: its relations shift
                rels = _shifted(rels, af[0], af[2])
                written.discard(af[0])
                w = 0
                af = None
            wb = _writeback(arch, x)
            if wb is not None:  # aarch64 `ldr w19, [x21], #4`: the base moves by 4
                rels = _shifted(rels, *wb)
                written.discard(wb[0])
            dead = {p for r in rels for p in r[:2] if p in written or (
                p.startswith("s") and w & slot_bits(int(p[1:]), 8))}
            rels = {r for r in rels if r[0] not in dead and r[1] not in dead}
            if af is not None:
                d, src, k = af
                rels = {r for r in rels if d not in r[:2]}
                new = {_rel(d, src, k)}
                for a, b, kk in rels:  # d = src + k, src = o + k2 -> d = o + k + k2
                    if src in (a, b):
                        o = b if a == src else a
                        if o == d:
                            continue
                        if isinstance(kk, int):
                            new.add(_rel(d, o, k + (kk if a == src else -kk)))
                        elif k == 0 and kk == "w":
                            new.add(_w(d, o))
                        elif k == 0 and kk == "z":
                            new.add((d, ZERO_UPPER, "z"))
                rels |= new
            if m32 is not None:
                d, src = m32
                rels = {r for r in rels if d not in r[:2]}
                new = {_w(d, src)}
                for a, b, kk in rels:  # the low halves of src's equals
                    if src in (a, b) and (kk == "w" or kk == 0):
                        o = b if a == src else a
                        if o != d:
                            new.add(_w(d, o))
                if not d.startswith("s"):
                    new.add((d, ZERO_UPPER, "z"))
                rels |= new
            if written & {"rflags", "nzcv"} or arch.mc.is_call(x):
                rels = {r for r in rels if r[0] != FLAGS}
            rels |= _flag_relations(arch.mc.is_call(x), _flag_op(arch, x), before)
        res = frozenset(rels)
        out[i] = res
        for s_ in succ[i]:
            nxt = res if into[s_] is None else into[s_] & res
            if nxt != into[s_]:
                into[s_] = nxt
                if s_ not in queued:
                    queued.add(s_)
                    todo.append(s_)
    return out


def _shifted(rels: set, d: str, k: int) -> set:
    """The relations after d += k: d's constant offsets shift, its other relations end."""
    return {_rel(d, b if a == d else a, (kk if a == d else -kk) + k)
            if d in (a, b) else (a, b, kk) for a, b, kk in rels
            if isinstance(kk, int) or d not in (a, b)}


def _writeback(arch, insn) -> tuple[str, int] | None:
    """(base, k) when an aarch64 load or store with writeback adds k to its base
    register (pre-index `[x1, #8]!`, post-index `[x21], #4`); None otherwise and for
    the stack and frame pointers (the frame states follow those)."""
    if arch.isa.name == "x86-64" or not insn.writeback:
        return None
    A = capstone.arm64
    mem = [o for o in insn.operands if o.type == A.ARM64_OP_MEM]
    post = [o.imm for o in insn.operands if o.type == A.ARM64_OP_IMM]
    if len(mem) != 1 or not mem[0].mem.base or mem[0].mem.index:
        return None
    base = full_reg(arch, insn.reg_name(mem[0].mem.base))
    if base in ("sp", "x29", "fp") or not base.startswith("x"):
        return None
    return base, (post[0] if post else mem[0].mem.disp)


def _flag_relations(call: bool, op: tuple | None, before: frozenset) -> set:
    """The relations an instruction's compare with 0 or "not equal" result makes, from
    the relations before it."""
    if op is None or call:
        return set()
    kind, r, b = op
    if kind == "cmp0":
        return {(FLAGS, r, ("t", b))}
    if kind == "setne":
        # every place holding the compared bits: the register compared is often a
        # scratch one a call clobbers, its value kept in a slot or another register
        places = {p for rel in before for p in rel[:2] if not p.startswith("#")}
        out = set()
        for f, src, k in before:
            if f != FLAGS:
                continue
            same = {q for q in places | {src} if q != r and (q == src or (
                low32_equal(before, src, q) if k[1] == 32 else
                offset_between(before, src, q) == 0))}  # r itself is written here
            out |= {(r, q, ("ne", k[1], b)) for q in same}
        return out
    return {(r, src, ("ne", k[1], 64)) for s_, src, k in before  # zx8: r = zero-extended b
            if s_ == b and isinstance(k, tuple) and k[0] == "ne" and k[2] == 8}


def not_zero_of(rels: frozenset, a: str) -> tuple[str, int] | None:
    """(s, bits) when a (or a copy of it) holds 1 if s's low bits are not 0, else 0."""
    for x, src, k in rels:
        if isinstance(k, tuple) and k[0] == "ne" and k[2] == 64 and \
                offset_between(rels, a, x) == 0:
            return src, k[1]
    return None


def zero_extended_copy(rels: frozenset, a: str, b: str) -> bool:
    """a's low 32 bits equal b's through the relations, and (a a register) its upper half
    is zero: a holds a 32-bit variable kept in b, zero-extended."""
    if not a.startswith("s") and (a, ZERO_UPPER, "z") not in rels:
        return False
    return low32_equal(rels, a, b)


def low32_equal(rels: frozenset, a: str, b: str) -> bool:
    """a's low 32 bits equal b's through the relations."""
    if a == b:
        return True
    seen, todo = {a}, [a]
    while todo:
        p = todo.pop()
        for x, y, k in rels:
            if p in (x, y) and (k == "w" or k == 0) and y != ZERO_UPPER:
                o = y if p == x else x
                if o == b:
                    return True
                if o not in seen:
                    seen.add(o)
                    todo.append(o)
    return False


def offset_between(rels: frozenset, a: str, b: str) -> int | None:
    """k such that val(a) = val(b) + k by the relations (through any chain), or None."""
    if a == b:
        return 0
    seen, todo = {a: 0}, [a]
    while todo:
        p = todo.pop()
        for x, y, k in rels:
            if p not in (x, y) or not isinstance(k, int):
                continue
            # val(a) = val(p) + seen[p]; p == x: val(x) = val(y) + k; p == y:
            # val(y) = val(x) - k
            o = y if p == x else x
            ko = seen[p] + k if p == x else seen[p] - k
            if o == b:
                return ko
            if o not in seen:
                seen[o] = ko
                todo.append(o)
    return None
