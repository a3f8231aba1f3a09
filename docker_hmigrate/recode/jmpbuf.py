"""setjmp/longjmp state across ISAs: a musl jmp_buf rewritten for the other ISA.

A jmp_buf is what a frame holds at one call site: setjmp saves the return address of
its call, the caller's SP after the return, its frame pointer and the callee-saved
registers. A parked program's jmp_bufs that can still be longjmp'ed to belong to frames
on its stack (a jmp_buf of a returned frame is dead: longjmp to it is undefined), so
each one is translated like that frame at that call site: the twin call site's return
address, the rebuilt frame's SP and FP, and the callee-saved values the target code
expects there: the frame's own (aarch64 GCC's copy of its return address, temporaries
matched like a parked frame's; its other registers are dead at -O0) and, in the
registers it does not save, its callers' (an -Og caller's variables), which longjmp puts
back as setjmp found them.

musl 1.2's `__jb` layouts are facts of each ISA object (isa/*.py: `jmpbuf`); `__fl`
(sigsetjmp's "mask saved" flag) and `__ss` (the signal mask) follow on every ISA and are
copied as they are.

The variable holding the jmp_buf (lua's `struct lua_longjmp`) has another size and
member offsets per ISA: the toolchain's metadata lists its leaves (type "fields") on
both ISAs and the copy goes leaf by leaf.
"""

from __future__ import annotations

from docker_hmigrate.criu.memory import scan
from docker_hmigrate.recode.frames import (  # noqa: F401 - map_offset re-exported
    Frame,
    Index,
    SourceStack,
    StackMap,
    Untranslatable,
    fp_offset,
    map_offset,
    stack_map,
    translate_value,
)
from docker_hmigrate.toolchain.contract import Var
from docker_hmigrate.toolchain.jmpbuf_layout import (  # noqa: F401 - re-exported
    SETJMP_NAMES,
    SIGSETJMP_NAMES,
    Layout,
    fields_match,
    is_padding,
    layout_problem,
)


def _u64(raw: bytes, off: int) -> int:
    return int.from_bytes(raw[off:off + 8], "little")


def translate(raw: bytes, where: str, stack: SourceStack, idx: Index, smap: StackMap,
              bottom_ret: int) -> bytes:
    """One jmp_buf from idx.src's layout to idx.dst's."""
    sl, dl = idx.src_isa.jmpbuf, idx.dst_isa.jmpbuf
    if len(raw) != sl.size:
        raise Untranslatable(f"{where}: a jmp_buf of {len(raw)} bytes is not musl's "
                             f"{idx.src} layout")
    out = bytearray(dl.size)
    out[dl.rest:] = raw[sl.rest:]
    if not any(raw[:sl.rest]):
        return bytes(out)  # never set: nothing to translate
    pc, sp, fp = _u64(raw, sl.pc), _u64(raw, sl.sp), _u64(raw, sl.fp)
    cs = idx.calls.get(pc)
    if cs is None or cs.twin is None:
        raise Untranslatable(f"{where}: jmp_buf saved at {pc:#x}, not a call site with a "
                             f"{idx.dst} twin (setjmp from code without metadata?)")
    fname = cs.function.name
    at = f"{cs.function.file or '?'}:{cs.site.line}"
    frames = stack.frames
    k = next((i for i, fr in enumerate(frames) if fr.site is not None
              and fr.function is cs.function and fr.src_cfa + cs.site.sp_cfa_offset == sp),
             None)
    if k is None:
        raise Untranslatable(f"{where}: jmp_buf of setjmp in {fname} ({at}) belongs to a "
                             f"frame no longer on the stack")
    fr: Frame = frames[k]
    src_fp = fr.src_cfa + (fr.function.isa[idx.src].frame.fp_cfa_offset or 0)
    if fp != src_fp:
        raise Untranslatable(f"{where}: jmp_buf of {fname} ({at}) holds frame pointer "
                             f"{fp:#x}, the frame's is {src_fp:#x}")
    own_ret = frames[k + 1].dst_pc if k + 1 < len(frames) else bottom_ret
    twin = cs.twin
    src_regs = {r: _u64(raw, o) for r, o in sl.regs.items()}
    lr_copy = cs.function.park_point.lr_copy(idx.dst)
    temps_src = cs.site.callee_saved_temps
    temps_dst = twin.callee_saved_temps
    vals: dict[str, int] = {}
    for r in twin.live_callee_saved:
        if r == lr_copy:
            vals[r] = own_ret
        elif r in temps_dst and temps_dst.index(r) < len(temps_src):
            vals[r] = translate_value(src_regs[temps_src[temps_dst.index(r)]], None, smap,
                                      idx)
        elif r != idx.dst_isa.fp:  # the frame pointer, set below
            raise Untranslatable(f"{where}: {idx.dst} code after setjmp in {fname} ({at}) "
                                 f"needs {r}, which has no source value")
    # a register the frame does not save holds its callers' value (an optimized caller's
    # variable, say) when setjmp saves it: longjmp must put that value back
    own = fr.function.isa[idx.dst].frame.saved_regs
    callers = {r: v for r, v in (fr.dst_entry_regs or {}).items() if r not in own}
    if fr.dst_entry_regs is None and any(r not in own for r in dl.regs):
        raise Untranslatable(f"{where}: the jmp_buf of {fname} ({at}) is translated "
                             f"before its frame is rebuilt")
    dst_fp = fr.dst_cfa + fp_offset(fr, idx)
    for r, o in dl.regs.items():
        out[o:o + 8] = vals.get(r, callers.get(r, 0)).to_bytes(8, "little")
    out[dl.fp:dl.fp + 8] = dst_fp.to_bytes(8, "little")
    out[dl.pc:dl.pc + 8] = twin.return_address.to_bytes(8, "little")
    out[dl.sp:dl.sp + 8] = (fr.dst_cfa + twin.sp_cfa_offset).to_bytes(8, "little")
    return bytes(out)


def copy_var(raw: bytes, sv: Var, dv: Var, where: str,
             stack: SourceStack, idx: Index, smap: StackMap, bottom_ret: int) -> bytes:
    """A variable copied member by member into the target's layout (it holds jmp_bufs,
    or a libc struct laid out per ISA): leaves paired by path; jmp_bufs translated,
    pointers moved, integers of another size converted (refused if the value does not
    fit), padding only one side has left zero, like the bytes between members."""
    why = layout_problem(sv.type, dv.type, idx.src_isa, idx.dst_isa)
    if why is not None:
        raise Untranslatable(f"{where}: {sv.type.name} has a layout this recode cannot "
                             f"map member by member ({why})")
    out = bytearray(dv.type.size)
    targets = {b.path: b for b in dv.type.fields}
    for a in sv.type.fields:
        b = targets.get(a.path)
        if b is None or (is_padding(a.path) and (a.size, a.kind) != (b.size, b.kind)):
            continue  # padding of the source's layout, or reserved and sized per ISA
        chunk = raw[a.offset:a.offset + a.size]
        if a.kind == "jmp_buf":
            chunk = translate(chunk, f"{where}.{a.path}", stack, idx, smap, bottom_ret)
        elif a.kind == "pointer" and a.size == 8:
            chunk = translate_value(int.from_bytes(chunk, "little"), None, smap,
                                    idx).to_bytes(8, "little")
        elif a.size != b.size:
            signed = a.int == "s"
            v = int.from_bytes(chunk, "little", signed=signed)
            try:
                chunk = v.to_bytes(b.size, "little", signed=signed)
            except OverflowError:
                raise Untranslatable(f"{where}.{a.path}: {v} does not fit the {b.size} "
                                     f"bytes it has on {idx.dst}") from None
        out[b.offset:b.offset + len(chunk)] = chunk
    return bytes(out)


PROT_WRITE, MAP_SHARED = 2, 0x01
VMA_AREA_VDSO, VMA_AREA_VVAR = 1 << 3, 1 << 12


def outside_stacks(dst, plans, idx: Index) -> dict[int, int]:
    """jmp_bufs outside the thread stacks, found by the return address of one of our
    setjmp calls at their pc slot: a static `jmp_buf` variable (the aligned layout gives
    it the larger ISA's size, so the target's layout fits in place) is translated like a
    stack one; a jmp_buf of a frame that has returned is dead (longjmp to it is
    undefined) and gets zero registers, so a use crashes instead of jumping into wrong
    state; any other (in the heap, or inside a bigger static object) is refused.
    Returns per process how many were translated."""
    sl, dl = idx.src_isa.jmpbuf, idx.dst_isa.jmpbuf
    ras = idx.setjmp_calls(SETJMP_NAMES)
    if not ras:
        return {}
    objs = idx.objects
    done: dict[int, int] = {}
    for pid, threads in plans.items():
        mem = dst.memory(pid)
        vmas = dst.mm(pid).vmas
        stacks = [next(((v.start, v.end) for v in vmas if v.start <= regs.sp < v.end),
                       (regs.sp, st.outer_cfa)) for _, regs, st in threads]
        maps = [(st, stack_map(st, idx)) for _, _, st in threads]
        done[pid] = 0
        for v in vmas:
            if not v.prot & PROT_WRITE or v.flags & MAP_SHARED or \
                    v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR):
                continue
            if any(lo <= v.start < hi for lo, hi in stacks):
                continue
            for a0, data in scan(mem, v.start, v.end):  # bounded pieces: memory stays flat
                for ra, cs in ras.items():
                    word = ra.to_bytes(8, "little")
                    # the address's significant bytes only (find skips on the last one)
                    needle = word[:max(1, (ra.bit_length() + 7) // 8)]
                    i = data.find(needle)
                    while i >= 0:
                        if i % 8 == 0 and data[i:i + 8] == word:
                            base = a0 + i - sl.pc
                            _static(mem, base, objs.get(base), cs, maps, idx, sl, dl)
                            done[pid] += 1
                        i = data.find(needle, i + 1)
    return done


def _static(mem, base: int, sym, cs, maps, idx: Index, sl: Layout, dl: Layout) -> None:
    at = f"{cs.function.name} ({cs.function.file or '?'}:{cs.site.line})"
    if sym is None or (sym.at(idx.src) or (0, 0))[1] != sl.size \
            or (sym.at(idx.dst) or (0, 0))[1] != dl.size:
        raise Untranslatable(f"a jmp_buf saved by setjmp in {at} lies at {base:#x}, outside "
                             f"the stack and not a static jmp_buf variable (in the heap, or "
                             f"inside a bigger object): not translated yet")
    raw = mem.read(base, sl.size)
    for stack, smap in maps:
        try:
            mem.write(base, translate(raw, sym.name, stack, idx, smap,
                                      idx.bottoms.get(stack.bottom_return, 0)))
            return
        except Untranslatable as exc:
            if "no longer on the stack" not in str(exc):
                raise
    dead = bytearray(dl.size)  # its frame returned: no valid longjmp can use it
    dead[dl.rest:] = raw[sl.rest:]
    mem.write(base, bytes(dead))
