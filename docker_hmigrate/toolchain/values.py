"""What an optimized function's registers and frame slots hold, as formulas, so that a
value GCC keeps across a call without naming it can be computed from named variables.

GCC at -Og keeps values it derived from variables in callee-saved registers and spills:
Lua 5.1's dispatch keeps the instruction's A field (`(i >> 6) & 0xff`) and A * 16 (the
offset of `ra` from `base`) across the calls of several opcodes, while only `ra` and
`base` have DWARF locations there. Those are translatable all the same: A * 16 is
`ra - base`, A is `(ra - base) >> 4`, whatever ISA the values were computed on.

Each place (a register; a frame slot of 1, 2, 4 or 8 bytes, "s<CFA offset>:<size>")
gets, per instruction, a symbolic value: a linear form (sum of integer multiples of
atoms plus a constant, modulo 2**64). Atoms are opaque values: what a register held at
the function's entry, what an instruction the analysis does not follow wrote (a load
from memory, a call's result), what a control-flow merge joined from different values,
and non-linear operations of forms (a shift right, a mask, the low 32 bits). Only what
is known on every path is kept (a must analysis: a merge of different values is a new
atom), and anything not followed is a fresh atom: a formula found is an identity of the
machine code, never a guess.

At a call, `solve` looks for integers c_v and a constant with
    2**s * value(place) = sum(c_v * value(v)) + c   (mod 2**64)
over the variables the DWARF places somewhere there; a right shift (s > 0) only when the
place's value is known to be small enough not to have wrapped (a masked field).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction

import capstone

from docker_hmigrate.toolchain import machine_aarch64, machine_x86_64
from docker_hmigrate.toolchain.locations import _access, _writeback, ranges_of, slot_bits

MASK = (1 << 64) - 1
Atom = tuple


@dataclass(frozen=True, eq=False)
class Form:
    """sum(c * atom) + const, modulo 2**64."""

    terms: tuple[tuple[Atom, int], ...] = ()
    const: int = 0

    # forms nest (an operation's atom holds its operand's form) and are compared and
    # hashed at every merge: the hash is computed once
    def __hash__(self) -> int:
        h = self.__dict__.get("_h")
        if h is None:
            h = hash((self.terms, self.const))
            object.__setattr__(self, "_h", h)
        return h

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Form) or hash(self) != hash(other):
            return False
        return self.const == other.const and self.terms == other.terms

    @staticmethod
    def of(atom: Atom) -> Form:
        return Form(((atom, 1),), 0)

    @staticmethod
    def k(c: int) -> Form:
        return Form((), c & MASK)

    def __add__(self, other: Form) -> Form:
        acc = dict(self.terms)
        for a, c in other.terms:
            acc[a] = (acc.get(a, 0) + c) & MASK
        return Form(tuple(sorted(((a, c) for a, c in acc.items() if c), key=repr)),
                    (self.const + other.const) & MASK)

    def scale(self, m: int) -> Form:
        return Form(tuple(sorted(((a, c * m & MASK) for a, c in self.terms if c * m & MASK),
                                 key=repr)), self.const * m & MASK)

    def is_const(self) -> bool:
        return not self.terms


def width(f: Form) -> int:
    """How many low bits f's value can have set (64 when not known)."""
    if f.is_const():
        return f.const.bit_length()
    if f.const or len(f.terms) != 1 or f.terms[0][1] != 1:
        return 64
    a = f.terms[0][0]
    if a[0] == "and":
        return min(a[2].bit_length(), width(a[1]))
    if a[0] == "shr":
        return max(width(a[1]) - a[2], 0)
    if a[0] == "low":
        return min(a[2], width(a[1]))
    return 64


def op_and(f: Form, mask: int) -> Form:
    mask &= MASK
    if f.is_const():
        return Form.k(f.const & mask)
    if mask & (mask + 1) == 0 and width(f) <= mask.bit_length():
        return f  # already within the mask
    return Form.of(("and", f, mask))


def op_low(f: Form, bits: int) -> Form:
    """The low `bits` bits of f, zero-extended."""
    if bits >= 64:
        return f
    if f.is_const():
        return Form.k(f.const & ((1 << bits) - 1))
    if width(f) <= bits:
        return f
    # the low bits of a sum depend only on the low bits of its terms
    return Form.of(("low", f, bits))


def op_shr(f: Form, n: int) -> Form:
    if f.is_const():
        return Form.k(f.const >> n)
    if n == 0:
        return f
    return Form.of(("shr", f, n))


def op_sext(f: Form, bits: int) -> Form:
    """f's low `bits` bits, sign-extended to 64."""
    if f.is_const():
        v = f.const & ((1 << bits) - 1)
        return Form.k(v - (1 << bits) if v >> (bits - 1) else v)
    if width(f) < bits:
        return f  # the sign bit is 0
    return Form.of(("sext", op_low(f, bits), bits))


def op_opaque(kind: str, *args) -> Form:
    return Form.of((kind, *args))


# ---------------------------------------------------------------- machine semantics


def _slot(off: int, size: int) -> str:
    return f"s{off}:{size}"


def _slot_span(place: str) -> tuple[int, int] | None:
    if ":" not in place:
        return None
    off, size = place[1:].split(":")
    return int(off), int(off) + int(size)


class _State:
    """The forms of one program point: registers always present, slots when known."""

    def __init__(self, forms: dict[str, Form]):
        self.forms = forms

    def reg(self, r: str) -> Form:
        return self.forms.get(r) or Form.of(("in", r))

    def set(self, place: str, f: Form) -> None:
        span = _slot_span(place)
        if span is not None:
            self.kill_slots(*span)
        self.forms[place] = f

    def kill_slots(self, lo: int, hi: int) -> None:
        for p in [p for p in self.forms if ":" in p]:
            a, b = _slot_span(p)  # type: ignore[misc]
            if a < hi and lo < b:
                del self.forms[p]

    def load(self, off: int, size: int, fresh: Form) -> Form:
        f = self.forms.get(_slot(off, size))
        if f is not None:
            return f
        for p, g in self.forms.items():  # the low bytes of a wider slot
            span = _slot_span(p)
            if span and span[0] == off and span[1] - span[0] > size:
                return op_low(g, 8 * size)
        return fresh


def _x86(st: _State, insn, i: int, fstate, regs_written: set[str], homes) -> None:
    X = capstone.x86
    m, ops = insn.mnemonic, insn.operands
    norm_reg = machine_x86_64.norm_reg

    def name(op) -> str:
        return norm_reg(insn.reg_name(op.reg))

    def slot_of(op) -> tuple[int, int] | None:  # (CFA offset, size) of a frame operand
        base = insn.reg_name(op.mem.base) if op.mem.base else None
        ref = fstate.fp if base == "rbp" else fstate.sp if base == "rsp" else None
        if ref is None or op.mem.index or op.mem.segment:
            return None
        off = ref + op.mem.disp
        return None if homes(off, op.size) else (off, op.size)

    def value(op) -> Form | None:  # an operand's value, zero-extended to 64 bits
        if op.type == X.X86_OP_IMM:
            return Form.k(op.imm & ((1 << 8 * op.size) - 1) if op.size in (1, 2, 4) else op.imm)
        if op.type == X.X86_OP_REG:
            r = insn.reg_name(op.reg)
            if r in ("ah", "bh", "ch", "dh"):
                return None
            return op_low(st.reg(name(op)), 8 * op.size)
        if op.type == X.X86_OP_MEM:
            s = slot_of(op)
            if s is not None:
                return st.load(*s, op_opaque("load", i, s[0], s[1]))
        return None

    def address(op) -> Form | None:  # lea's operand as a form
        mem = op.mem
        if mem.segment:
            return None
        f = Form.k(mem.disp)
        if mem.base:
            b = insn.reg_name(mem.base)
            if b == "rip":
                f = f + Form.k(insn.address + insn.size)
            elif b in ("rsp", "rbp"):
                ref = fstate.fp if b == "rbp" else fstate.sp
                if ref is None:
                    return None
                f = f + Form.of(("cfa",)) + Form.k(ref)
            else:
                f = f + st.reg(norm_reg(b))
        if mem.index:
            f = f + st.reg(norm_reg(insn.reg_name(mem.index))).scale(mem.scale)
        return f

    def put(op, f: Form | None) -> None:
        if op.type == X.X86_OP_REG:
            r = name(op)
            if op.size == 8:
                st.set(r, f if f is not None else op_opaque("def", i, r))
            elif op.size == 4:  # a 32-bit write zeroes the upper half
                st.set(r, op_low(f, 32) if f is not None else
                       op_low(op_opaque("def", i, r), 32))
            else:  # 8/16-bit writes keep the rest of the register
                st.set(r, op_opaque("def", i, r))
            regs_written.discard(r)
        elif op.type == X.X86_OP_MEM:
            s = slot_of(op)
            if s is not None:
                st.set(_slot(*s), op_low(f, 8 * s[1]) if f is not None else
                       op_opaque("def", i, s[0], s[1]))

    if len(ops) == 2 and ops[0].type in (X.X86_OP_REG, X.X86_OP_MEM):
        a, b = ops
        size = a.size
        if m in ("mov", "movzx"):  # movzx: value() zero-extends already
            put(a, value(b))
            return
        if m == "movsxd" and a.type == X.X86_OP_REG and size == 8:
            v = value(b)
            put(a, op_sext(v, 32) if v is not None else None)
            return
        if m == "lea" and a.type == X.X86_OP_REG:
            put(a, address(b))
            return
        va, vb = value(a), value(b)
        if va is not None and vb is not None and size in (4, 8):
            bits = 8 * size
            if m == "add":
                put(a, op_low(va + vb, bits))
                return
            if m == "sub":
                put(a, op_low(va + vb.scale(-1), bits))
                return
            if m == "xor" and b.type == X.X86_OP_REG and a.type == X.X86_OP_REG and \
                    name(a) == name(b):
                put(a, Form.k(0))
                return
            if m == "and" and vb.is_const():
                mask = b.imm & MASK if b.type == X.X86_OP_IMM else vb.const
                put(a, op_and(op_low(va, bits), mask & ((1 << bits) - 1)))
                return
            if m == "shl" and vb.is_const():
                put(a, op_low(va.scale(1 << (vb.const & (bits - 1))), bits))
                return
            if m == "shr" and vb.is_const():
                put(a, op_shr(op_low(va, bits), vb.const & (bits - 1)))
                return
            if m == "imul" and vb.is_const():
                put(a, op_low(va.scale(vb.const), bits))
                return
    if m == "imul" and len(ops) == 3 and ops[2].type == X.X86_OP_IMM and ops[0].size in (4, 8):
        v = value(ops[1])
        put(ops[0], op_low(v.scale(ops[2].imm), 8 * ops[0].size) if v is not None else None)
        return
    if m == "neg" and len(ops) == 1 and ops[0].size in (4, 8):
        v = value(ops[0])
        put(ops[0], op_low(v.scale(-1), 8 * ops[0].size) if v is not None else None)
        return
    # anything else: what it writes is a new unknown value
    for op in ops:
        if op.type == X.X86_OP_MEM and op.access & capstone.CS_AC_WRITE:
            put(op, None)


def _a64(st: _State, insn, i: int, fstate, regs_written: set[str], homes) -> None:
    A = capstone.arm64
    m, ops = insn.mnemonic, insn.operands
    norm_reg = machine_aarch64.norm_reg

    def rname(op) -> str:
        return insn.reg_name(op.reg)

    def bits_of(op) -> int:
        return 32 if rname(op).startswith("w") else 64

    def value(op) -> Form | None:
        if op.type == A.ARM64_OP_IMM:
            v = op.imm
            if op.shift.type == A.ARM64_SFT_LSL:
                v <<= op.shift.value
            return Form.k(v)
        if op.type != A.ARM64_OP_REG:
            return None
        r = rname(op)
        if r in ("xzr", "wzr"):
            f = Form.k(0)
        elif r.startswith(("x", "w")) or r in ("fp", "lr"):
            f = st.reg(norm_reg(r))
        else:
            return None
        f = op_low(f, bits_of(op))
        if op.ext:  # an extended register operand (add x0, x1, w2, sxtw #4)
            ext = {A.ARM64_EXT_UXTB: (8, False), A.ARM64_EXT_UXTH: (16, False),
                   A.ARM64_EXT_UXTW: (32, False), A.ARM64_EXT_UXTX: (64, False),
                   A.ARM64_EXT_SXTB: (8, True), A.ARM64_EXT_SXTH: (16, True),
                   A.ARM64_EXT_SXTW: (32, True), A.ARM64_EXT_SXTX: (64, True)}.get(op.ext)
            if ext is None:
                return None
            f = op_sext(f, ext[0]) if ext[1] and ext[0] < 64 else op_low(f, ext[0])
        if op.shift.type and op.shift.value:
            if op.shift.type != A.ARM64_SFT_LSL:
                return None
            f = f.scale(1 << op.shift.value)
        return f

    def put(op, f: Form | None) -> None:
        r = rname(op)
        if r in ("xzr", "wzr", "sp") or not r.startswith(("x", "w")) and r not in ("fp", "lr"):
            return
        full = norm_reg(r)
        bits = bits_of(op)
        st.set(full, op_low(f, bits) if f is not None else
               op_low(op_opaque("def", i, full), bits))
        regs_written.discard(full)

    def frame_slot(mem, size: int) -> tuple[int, int] | None:
        base = insn.reg_name(mem.base) if mem.base else None
        ref = fstate.fp if base in ("x29", "fp") else fstate.sp if base == "sp" else None
        if ref is None or mem.index:
            return None
        post = insn.writeback and "]!" not in insn.op_str
        off = ref + (0 if post else mem.disp)
        return None if homes(off, size) else (off, size)

    regs = [o for o in ops if o.type == A.ARM64_OP_REG]
    mem = [o for o in ops if o.type == A.ARM64_OP_MEM]
    if mem and m.startswith(("ldr", "str", "ldur", "stur", "ldp", "stp")) and \
            not m.startswith(("ldrs", "ldurs")):
        width = 8 if regs and bits_of(regs[0]) == 64 else 4
        if m.endswith("b"):
            width = 1
        elif m.endswith("h"):
            width = 2
        pair = m.startswith(("ldp", "stp"))
        for n, r in enumerate(regs[:2] if pair else regs[:1]):
            s = frame_slot(mem[0].mem, width * (2 if pair else 1))  # homes: both
            if s is not None:
                s = (s[0] + n * width, width)
            if m.startswith("ld"):
                put(r, st.load(*s, op_opaque("load", i, *s)) if s else None)
            elif s is not None:
                v = value(r)
                st.set(_slot(*s), op_low(v, 8 * width) if v is not None else
                       op_opaque("def", i, *s))
        return  # a writeback's base register: forms_at, as locations.copies_after
    if not regs:
        return
    d = regs[0]
    srcs = [value(o) for o in ops[1:]]
    bits = bits_of(d)
    if m == "mov" and len(ops) == 2:
        put(d, srcs[0])
        return
    if m in ("add", "sub") and len(ops) == 3 and None not in srcs:
        a, b = srcs
        put(d, op_low(a + (b if m == "add" else b.scale(-1)), bits))  # type: ignore[operator]
        return
    if m == "neg" and len(ops) == 2 and srcs[0] is not None:
        put(d, op_low(srcs[0].scale(-1), bits))
        return
    if m == "lsl" and len(ops) == 3 and srcs[0] is not None and srcs[1] is not None \
            and srcs[1].is_const() and srcs[1].const < 64:
        put(d, op_low(srcs[0].scale(1 << srcs[1].const), bits))
        return
    if m == "lsr" and len(ops) == 3 and srcs[0] is not None and srcs[1] is not None \
            and srcs[1].is_const() and srcs[1].const < 64:
        put(d, op_shr(srcs[0], srcs[1].const))
        return
    if m == "and" and len(ops) == 3 and srcs[0] is not None and srcs[1] is not None \
            and srcs[1].is_const():
        put(d, op_and(srcs[0], srcs[1].const))
        return
    if m in ("ubfx", "ubfiz", "sbfiz") and len(ops) == 4 and srcs[0] is not None:
        lsb, w = ops[2].imm, ops[3].imm
        if m == "ubfx":
            put(d, op_and(op_shr(srcs[0], lsb), (1 << w) - 1))
        elif m == "ubfiz":
            put(d, op_low(op_and(srcs[0], (1 << w) - 1).scale(1 << lsb), bits))
        else:
            put(d, op_low(op_sext(srcs[0], w).scale(1 << lsb), bits))
        return
    if m in ("sxtw", "sxth", "sxtb") and len(ops) == 2 and srcs[0] is not None:
        put(d, op_low(op_sext(srcs[0], {"sxtw": 32, "sxth": 16, "sxtb": 8}[m]), bits))
        return
    if m in ("uxtw", "uxth", "uxtb") and len(ops) == 2 and srcs[0] is not None:
        put(d, op_low(srcs[0], {"uxtw": 32, "uxth": 16, "uxtb": 8}[m]))
        return
    if m == "mul" and len(ops) == 3 and None not in srcs and (srcs[0].is_const() or  # type: ignore[union-attr]
                                                            srcs[1].is_const()):  # type: ignore[union-attr]
        a, b = srcs
        put(d, op_low(a.scale(b.const) if b.is_const() else b.scale(a.const), bits))  # type: ignore[union-attr]
        return


# ---------------------------------------------------------------- the analysis


def _general(arch, r: str) -> bool:
    """A general register (the places followed, beside frame slots)."""
    if arch.isa.name == "x86-64":
        return r.startswith("r") and r not in ("rflags", "rip")
    return r.startswith("x")


# the registers a call does not keep (the return value's first)
_CLOBBERED = {"x86-64": ["rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"],
              "aarch64": ["x0", *(f"x{n}" for n in range(1, 19)), "x30"]}


def forms_at(arch, insns: list, succ: list[list[int]], states: list, homes: int,
             regs_of) -> list[dict[str, Form] | None]:
    """Per instruction, the forms of the places before it (None: not reached)."""
    def home(off: int, size: int) -> bool:
        return bool(homes & slot_bits(off, size))

    n = len(insns)
    into: list[dict[str, Form] | None] = [None] * n
    if not n:
        return into
    preds: list[list[int]] = [[] for _ in range(n)]
    for i, ss in enumerate(succ):
        for s in ss:
            preds[s].append(i)
    outs: list[dict[str, Form] | None] = [None] * n
    # instruction -> place -> "phi" (joined from different values) or "drop" (a slot not
    # known on every path)
    merged: dict[int, dict[str, str]] = {}
    effects: list = [None] * n  # per instruction: (registers written, frame access)
    zero = {p: z for p in range(n) if (z := _zero_edge(arch, insns, p, succ[p])) is not None}
    todo, queued = [0], {0}
    step = _x86 if arch.isa.name == "x86-64" else _a64
    budget = 64 * n + 1000  # the joins make it end; a bound all the same (a build never hangs)
    while todo:
        budget -= 1
        if budget < 0:
            return [None] * n  # nothing known: every unnamed value stays unnamed
        i = todo.pop()
        queued.discard(i)
        ins = []
        for p in preds[i]:
            d = outs[p]
            if d is not None and p in zero and zero[p][2] == i:
                # a branch taken only when a register is 0: what equals it is 0 there
                # (lua's `aux` kept as luaD_precall's result on its 0 path)
                f = op_low(into[p].get(zero[p][0]) or Form.of(("in", zero[p][0])),  # type: ignore[union-attr]
                           zero[p][1])
                d = {k: Form.k(0) if g == f else g for k, g in d.items()}
            if d is not None:
                ins.append(d)
        if i == 0:
            ins.append({})  # the function's entry: every register its caller's value
        into[i] = _join(i, ins, merged)  # type: ignore[arg-type]
        st = _State(dict(into[i]))  # type: ignore[arg-type]
        # this instruction makes its atoms anew (in a loop, each time it runs): a value
        # an earlier run made is a value of its own from here on
        for p_, f in list(st.forms.items()):
            if i in _made_at(f):
                st.forms[p_] = Form.of(("stale", i, p_))
        x, fs = insns[i], states[i]
        if fs is not None and not fs.dynamic:
            if effects[i] is None:  # the same on every visit
                raw = set(regs_of(x))
                regs = {r for r in raw if _general(arch, r)}
                if "?" in raw:  # not decoded: it may have written any register
                    regs = set(_CLOBBERED[arch.isa.name]) | set(arch.isa.callee_saved)
                r_, w_, why = _access(arch, x, fs)
                if arch.isa.name == "x86-64" and any(
                        o.type == capstone.x86.X86_OP_MEM and not o.access
                        for o in x.operands):
                    why = why or "memory access not described"  # written, may be
                effects[i] = (frozenset(regs), (r_, w_, why))
            regs, (_, w, unknown) = effects[i]  # type: ignore[misc]
            written = set(regs)  # frame bytes it writes: their slots end
            if unknown:
                st.kill_slots(-(1 << 40), 1 << 40)
            for lo, hi in ranges_of(w):
                st.kill_slots(lo, hi)
            if arch.mc.is_call(x):
                for r in _CLOBBERED[arch.isa.name]:  # what the callee leaves there
                    st.set(r, op_opaque("def", i, r))
                written = set()
                st.set(_CLOBBERED[arch.isa.name][0], op_opaque("ret", i))
            else:
                step(st, x, i, fs, written, home)
                wb = _writeback(arch, x)
                if wb is not None:  # aarch64 `ldr w19, [x21], #4`: the base moves by 4
                    st.set(wb[0], st.reg(wb[0]) + Form.k(wb[1]))
                    written.discard(wb[0])
            for r in written:  # written in a way not followed
                st.set(r, op_opaque("def", i, r))
            out = st.forms
        else:
            out = {}
        if out != outs[i]:
            outs[i] = out
            for s in succ[i]:
                if s not in queued:
                    queued.add(s)
                    todo.append(s)
    return into


_MADE = ("def", "ret", "load", "stale", "phi")  # atoms an instruction makes: (kind, index, ..)


@functools.lru_cache(maxsize=1 << 16)
def _made_at(f: Form) -> frozenset[int]:
    """The instructions whose atoms f is made of (nested operations included)."""
    out: set[int] = set()
    for a, _ in f.terms:
        if a[0] in _MADE:
            out.add(a[1])
        for part in a[1:]:
            if isinstance(part, Form):
                out |= _made_at(part)
    return frozenset(out)


_ZERO_IF_TAKEN = {"je": True, "jne": False, "b.eq": True, "b.ne": False,
                  "cbz": True, "cbnz": False}


def _zero_edge(arch, insns: list, p: int, succ: list[int]) -> tuple[str, int, int] | None:
    """(register, bits, successor) when the branch at insns[p] goes to that successor
    only if the register's low bits are 0: x86 `test r, r` or `cmp r, 0` then je/jne,
    aarch64 cbz/cbnz, or `cmp r, #0` then b.eq/b.ne."""
    x = insns[p]
    taken = _ZERO_IF_TAKEN.get(x.mnemonic)
    if taken is None or len(succ) != 2 or p + 1 not in succ:
        return None
    target = next(s for s in succ if s != p + 1) if succ[0] != succ[1] else None
    if target is None:
        return None
    edge = target if taken else p + 1
    if x.mnemonic.startswith("cb"):
        tested, cmp = x, None
    elif p > 0:
        tested = cmp = insns[p - 1]
    else:
        return None
    ops = tested.operands
    x86 = arch.isa.name == "x86-64"
    REG = capstone.x86.X86_OP_REG if x86 else capstone.arm64.ARM64_OP_REG
    IMM = capstone.x86.X86_OP_IMM if x86 else capstone.arm64.ARM64_OP_IMM
    if not ops or ops[0].type != REG:
        return None
    name = tested.reg_name(ops[0].reg)
    if cmp is not None:
        same = len(ops) == 2 and ops[1].type == REG and ops[1].reg == ops[0].reg
        zero_imm = len(ops) == 2 and ops[1].type == IMM and ops[1].imm == 0
        if not ((cmp.mnemonic == "test" and x86 and same) or
                (cmp.mnemonic == "cmp" and zero_imm)):
            return None
    if x86:
        bits = 8 * ops[0].size
        if not _general(arch, arch.mc.norm_reg(name)) or name in ("ah", "bh", "ch", "dh"):
            return None
    else:
        bits = 32 if name.startswith("w") else 64
        if not name.startswith(("w", "x")) or name in ("wzr", "xzr"):
            return None
    return arch.mc.norm_reg(name), bits, edge


def _join(at: int, ins: list[dict[str, Form]], merged: dict) -> dict[str, Form]:
    """The forms known on every path into an instruction: different values become the
    merge's own atom, a slot not known on every path is dropped, and both for good, so
    that the analysis ends; a register no path set holds the caller's value."""
    here = merged.get(at)
    if len(ins) == 1 and not here:
        return dict(ins[0])
    if here is None:
        here = merged[at] = {}
    out: dict[str, Form] = {}
    places = {p for d in ins for p in d}
    for p in places:
        if here.get(p) == "drop" or (":" in p and not all(p in d for d in ins)):
            here[p] = "drop"
            continue
        fs = {d.get(p) or Form.of(("in", p)) for d in ins}
        # a value made from this merge's own atoms comes from an earlier pass of a loop
        if len(fs) == 1 and p not in here and at not in _made_at(next(iter(fs))):
            out[p] = fs.pop()
        else:
            here[p] = "phi"
            out[p] = Form.of(("phi", at, p))
    for p, how in here.items():
        if how == "phi" and p not in places and ":" not in p:
            out[p] = Form.of(("phi", at, p))
    return out


def place_form(forms: dict[str, Form], place: str, size: int = 8) -> Form:
    """The form of a register, or of `size` bytes of a slot ("s<off>"), at a point."""
    if place.startswith("s") and place[1:].lstrip("-").isdigit():
        st = _State(dict(forms))
        return st.load(int(place[1:]), size, Form.of(("unknown", place, size)))
    return forms.get(place) or Form.of(("in", place))


def expr_form(ops: list, forms: dict[str, Form], bits: int) -> Form | None:
    """The form of a variable located by a DWARF expression (locations' "expr" ops)."""
    stack: list[Form] = []
    try:
        for op in ops:
            k = op[0]
            if k == "reg":
                stack.append(place_form(forms, op[1]) + Form.k(op[2]))
            elif k == "cfa":
                stack.append(Form.of(("cfa",)) + Form.k(op[1]))
            elif k == "lit":
                stack.append(Form.k(op[1]))
            elif k == "deref":
                a = stack.pop()
                cfa = Form.of(("cfa",))
                rest = a + cfa.scale(-1)
                if not rest.is_const():
                    return None
                off = rest.const - (1 << 64) if rest.const >> 63 else rest.const
                stack.append(place_form(forms, f"s{off}", 8))
            elif k == "plus_uconst":
                stack.append(stack.pop() + Form.k(op[1]))
            elif k in ("plus", "minus", "mul", "and", "shl", "shr"):
                b, a = stack.pop(), stack.pop()
                if k == "plus":
                    stack.append(a + b)
                elif k == "minus":
                    stack.append(a + b.scale(-1))
                elif k == "mul" and (a.is_const() or b.is_const()):
                    stack.append(a.scale(b.const) if b.is_const() else b.scale(a.const))
                elif k == "and" and b.is_const():
                    stack.append(op_and(a, b.const))
                elif k == "shl" and b.is_const():
                    stack.append(a.scale(1 << b.const) if b.const < 64 else Form.k(0))
                elif k == "shr" and b.is_const():
                    stack.append(op_shr(a, b.const) if b.const < 64 else Form.k(0))
                else:
                    return None
            elif k == "neg":
                stack.append(stack.pop().scale(-1))
            else:
                return None
    except IndexError:
        return None
    return op_low(stack[-1], bits) if len(stack) == 1 else None


def call_result(f: Form) -> tuple[int, int] | None:
    """(the call instruction's index, bits) when f is the low bits of a call's result."""
    if f.const or len(f.terms) != 1 or f.terms[0][1] != 1:
        return None
    a = f.terms[0][0]
    if a[0] == "ret":
        return a[1], 64
    if a[0] == "low" and len(a[1].terms) == 1 and not a[1].const and a[1].terms[0][1] == 1 \
            and a[1].terms[0][0][0] == "ret":
        return a[1].terms[0][0][1], a[2]
    return None


def solve(target: Form, vars_: dict) -> tuple[list[list], int, int] | None:
    """([[variable, coefficient], ...], constant, shift) with
    target = (sum(coefficient * variable) + constant mod 2**64) >> shift, or None."""
    if target.is_const():
        return [], target.const, 0
    def moves(f: Form) -> bool:  # a stack address: it moves with the frame
        return any(a[0] == "cfa" for a, _ in f.terms)

    if moves(target):
        return None
    vars_ = {v: f for v, f in vars_.items() if not moves(f)}
    atoms = sorted({a for f in [target, *vars_.values()] for a, _ in f.terms}, key=repr)
    names = sorted(vars_, key=str)
    # columns: variables; rows: atoms. Solve V x = t over the rationals (signed coeffs).

    def signed(c: int) -> int:
        return c - (1 << 64) if c >> 63 else c

    rows = [[Fraction(signed(dict(vars_[v].terms).get(a, 0))) for v in names]
            + [Fraction(signed(dict(target.terms).get(a, 0)))] for a in atoms]
    ncol = len(names)
    pivots: list[int] = []
    r = 0
    for c in range(ncol):
        p = next((k for k in range(r, len(rows)) if rows[k][c] != 0), None)
        if p is None:
            continue
        rows[r], rows[p] = rows[p], rows[r]
        piv = rows[r][c]
        rows[r] = [x / piv for x in rows[r]]
        for k in range(len(rows)):
            if k != r and rows[k][c] != 0:
                f = rows[k][c]
                rows[k] = [x - f * y for x, y in zip(rows[k], rows[r], strict=True)]
        pivots.append(c)
        r += 1
    if any(all(x == 0 for x in row[:-1]) and row[-1] != 0 for row in rows):
        return None  # the target is not a combination of the variables
    x = [Fraction(0)] * ncol
    for k, c in enumerate(pivots):
        x[c] = rows[k][-1]
    den = 1
    for v in x:
        den = den * v.denominator // _gcd(den, v.denominator)
    shift = den.bit_length() - 1
    if den != 1 << shift or width(target) > 64 - shift:
        return None  # a division that is not an exact shift of a small enough value
    coeffs = [[names[c], int(x[c] * den)] for c in range(ncol) if x[c] != 0]
    const = target.const * den
    for v, c in coeffs:
        const -= c * vars_[v].const
    return coeffs, const & MASK, shift


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a
