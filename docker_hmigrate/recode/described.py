"""Variables of optimized (-Og, `hmigrate-cc --optimize-frames`) frames: each read where
the source ISA keeps it at the call the frame is stopped at (a stack slot, a
callee-saved register found by the unwind, a register plus a constant, a constant) and
written where the target ISA wants it at the twin call (toolchain/locations.py). The
metadata has already refused, per call site, any frame whose target needs a value the
source does not have or holds live state no variable names; what is checked again here
only guards against metadata that says otherwise.
"""

from __future__ import annotations

from docker_hmigrate.recode.frames import (
    Frame,
    Index,
    StackMap,
    Untranslatable,
    read_stack,
    translate_value,
)
from docker_hmigrate.toolchain import contract
from docker_hmigrate.toolchain.contract import Var

MASK = (1 << 64) - 1


def _widen(raw: bytes, var: Var) -> int:
    v = int.from_bytes(raw, "little")
    n = len(raw)
    if var.type.raw.get("signed") and n < 8 and v >> (8 * n - 1):
        v -= 1 << (8 * n)
    return v & MASK


def _read(src_mem, fr: Frame, var: Var, loc: list, size: int) -> tuple[bytes, int | None]:
    """(the value's bytes, the whole 64-bit register when it came from one)."""
    kind = loc[0]
    if kind == "slot":
        return read_stack(src_mem, fr.src_cfa + loc[1], size), None
    if kind in ("reg", "value"):
        if loc[1] not in fr.regs:
            raise Untranslatable(f"{fr.function.name}: {var.name}: {loc[1]} not recovered "
                                 f"by the unwind")
        v = (fr.regs[loc[1]] + (loc[2] if kind == "value" else 0)) & MASK
        return v.to_bytes(8, "little")[:size], v
    if kind == "const":
        v = loc[1] & MASK
        return v.to_bytes(8, "little")[:size], v
    if kind == "expr":
        v = _evaluate(src_mem, fr, var, loc[2])
        return v.to_bytes(8, "little")[:size], v
    raise Untranslatable(f"{fr.function.name}: {var.name} has no value at {fr.src_pc:#x} "
                         f"({' '.join(map(str, loc))})")


_BINARY = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b,
           "mul": lambda a, b: a * b, "and": lambda a, b: a & b, "or": lambda a, b: a | b,
           "xor": lambda a, b: a ^ b, "shl": lambda a, b: a << b if b < 64 else 0,
           "shr": lambda a, b: a >> b if b < 64 else 0,
           "shra": lambda a, b: (a - (1 << 64) if a >> 63 else a) >> min(b, 63)}


def _evaluate(src_mem, fr: Frame, var: Var, steps: list) -> int:
    """A DWARF expression's value on the source frame (locations' "expr" steps)."""
    stack: list[int] = []
    for op in steps:
        k = op[0]
        if k == "reg":
            if op[1] not in fr.regs:
                raise Untranslatable(f"{fr.function.name}: {var.name}: {op[1]} not "
                                     f"recovered by the unwind")
            stack.append(fr.regs[op[1]] + op[2])
        elif k == "cfa":
            stack.append(fr.src_cfa + op[1])
        elif k == "lit":
            stack.append(op[1])
        elif k == "plus_uconst":
            stack.append(stack.pop() + op[1])
        elif k == "deref":
            stack.append(int.from_bytes(read_stack(src_mem, stack.pop() & MASK, 8), "little"))
        elif k == "neg":
            stack.append(-stack.pop())
        elif k == "not":
            stack.append(~stack.pop())
        elif k in _BINARY:
            b, a = stack.pop() & MASK, stack.pop() & MASK
            stack.append(_BINARY[k](a, b))
        else:
            raise Untranslatable(f"{fr.function.name}: {var.name}: DWARF step {k}")
        stack[-1] &= MASK
    if len(stack) != 1:
        raise Untranslatable(f"{fr.function.name}: {var.name}: a DWARF expression "
                             f"left {len(stack)} values")
    return stack[0]


def write_frame(src_mem, dst_mem, fr: Frame, idx: Index, smap: StackMap) -> dict[str, int]:
    """Write the described variables of one frame; returns the values the target's
    callee-saved registers must hold for it (the caller of write_frame puts them where
    the frames below restore them from)."""
    site, twin = fr.site.site if fr.site else None, fr.site.twin if fr.site else None
    if site is None or twin is None:
        return {}
    src_vars, dst_vars = fr.function.isa[idx.src].vars, fr.function.isa[idx.dst].vars
    if not any(v.described for v in src_vars) and not any(v.described for v in dst_vars):
        return {}
    sl = {loc[0]: loc[1:] for loc in site.locations}
    dl = {loc[0]: loc[1:] for loc in twin.locations}
    twins = contract.var_twins([v.raw for v in dst_vars], [v.raw for v in src_vars])
    regs: dict[str, int] = {}
    dead = set(twin.dead_vars)
    copies: dict[int, list[tuple[str, int | str, int]]] = {}
    for place, vi, k, *more in twin.copies:  # a 32-bit copy may add a constant
        copies.setdefault(vi, []).append((place, k, more[0] if more else 0))
    # values the target's code derived from variables: their values are needed
    needed = set(copies) | {contract.derived_var(t[0]) for d in twin.derived for t in d[2]}
    values: dict[int, int] = {}  # variable -> its bytes' value, zero-extended
    moved: set[int] = set()  # variables whose value the move changes (stack addresses)
    for dj, dv in enumerate(dst_vars):
        dloc = contract.site_location(dv.raw, dj, dl)
        # its own place is written before it is read there (dead): nothing to carry to
        # it; a copy of it elsewhere still needs its value
        own = dloc is not None and dj not in dead and \
            dloc[0] in contract.STORED + ("unknown",)
        if not own and dj not in needed:
            continue
        si = twins.get(dj)
        sv = src_vars[si] if si is not None else None
        if sv is not None and not sv.described and not dv.described:
            continue  # slot to slot (rebuild._copy_vars)
        if (own and dloc[0] == "unknown") or sv is None:
            raise Untranslatable(f"{fr.function.name}: {dv.name} cannot be placed on "
                                 f"{idx.dst} at {fr.dst_pc:#x}")
        sloc = contract.site_location(sv.raw, si, sl)  # type: ignore[arg-type]
        if sloc is None:
            raise Untranslatable(f"{fr.function.name}: {dv.name} is out of scope on "
                                 f"{idx.src} at {fr.src_pc:#x}")
        size = dv.type.size
        raw, whole = _read(src_mem, fr, sv, sloc, size)
        raw = bytearray(raw)
        for po in sv.type.pointer_offsets:  # stack addresses move, return addresses too
            if po + 8 <= len(raw):
                v = int.from_bytes(raw[po:po + 8], "little")
                raw[po:po + 8] = translate_value(v, sv, smap, idx).to_bytes(8, "little")
                whole = None
                if raw[po:po + 8] != v.to_bytes(8, "little"):
                    moved.add(dj)
        values[dj] = int.from_bytes(raw[:size], "little")
        # a narrower variable is widened by its type on every path: the source's upper bits
        # follow its own code's conventions, not the target's
        v = whole if whole is not None and size == 8 else _widen(bytes(raw), dv)
        for place, k, k32 in copies.get(dj, []):
            low = (int.from_bytes(raw[:4], "little") + k32) & 0xFFFFFFFF
            if k == "w32":  # the 4 bytes of a 32-bit variable (plus k32)
                dst_mem.write(fr.dst_cfa + int(place[1:]), low.to_bytes(4, "little"))
                continue
            if k == "ne":  # 1 if the variable is not 0 (a kept `x != 0`)
                c = int(any(raw))
            else:
                c = low if k == "z32" else (v + k) & MASK  # type: ignore[operator]
            if place.startswith("s"):
                dst_mem.write(fr.dst_cfa + int(place[1:]), c.to_bytes(8, "little"))
            else:
                regs[place] = c
        if not own:
            continue
        if dloc[0] == "slot":
            dst_mem.write(fr.dst_cfa + dloc[1], bytes(raw))
            continue
        regs[dloc[1]] = (v - dloc[2]) & MASK if dloc[0] == "value" else v
    for place, size, terms, const, shift in twin.derived:
        total = const
        for term in terms:
            dj = contract.derived_var(term[0])
            if dj in moved:  # a formula of stack addresses: not followed
                raise Untranslatable(f"{fr.function.name}: a value derived from "
                                     f"{dst_vars[dj].name}, a stack address")
            v = values[dj]
            bits = 8 * dst_vars[dj].type.size
            if str(term[0]).endswith(":sx") and v >> (bits - 1):
                v = (v - (1 << bits)) & MASK  # the variable sign-extended
            total += term[1] * v
        _put(dst_mem, fr, regs, place, size, (total & MASK) >> shift)
    for place, size, key, bits in twin.results:
        _put(dst_mem, fr, regs, place, size,
             _result(src_mem, fr, site.results, key, bits, smap, idx))
    return regs


def _put(dst_mem, fr: Frame, regs: dict[str, int], place: str, size: int, v: int) -> None:
    """A value into a target place: `size` bytes of a slot ("s<cfa offset>"), or a
    callee-saved register (returned to the caller of write_frame)."""
    if place.startswith("s"):
        dst_mem.write(fr.dst_cfa + int(place[1:]), v.to_bytes(8, "little")[:size])
    else:
        regs[place] = v


def _result(src_mem, fr: Frame, kept: list, key: list, bits: int, smap: StackMap,
            idx: Index) -> int:
    """The low bits of an earlier call's result where the source frame keeps it."""
    for place, size, k, b in kept:
        if k != key or b < bits:
            continue
        if place.startswith("s"):
            v = int.from_bytes(read_stack(src_mem, fr.src_cfa + int(place[1:]), size), "little")
        elif place in fr.regs:
            v = fr.regs[place]
        else:
            continue
        v &= (1 << bits) - 1
        if bits == 64 and translate_value(v, None, smap, idx) != v:
            # a stack or return address, which the move changes: its type is not known
            raise Untranslatable(f"{fr.function.name}: the result of {key[2]} (line "
                                 f"{key[0]}) is an address the move changes")
        return v
    raise Untranslatable(f"{fr.function.name}: the result of {key[2]} (line {key[0]}) is "
                         f"not kept on {idx.src} at {fr.src_pc:#x}")

