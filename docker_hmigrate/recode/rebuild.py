"""Rebuild a parked thread's stack for the target ISA, frame by frame, from the plan
frames.py made (frames.unwind, frames.plan_target): each frame's record and saved
callee-saved registers, its variables slot to slot (pointers into the stack moved with
their variables), jmp_buf variables member by member (jmpbuf.py)."""

from __future__ import annotations

from docker_hmigrate.recode import described, jmpbuf
from docker_hmigrate.recode.frames import (
    Frame,
    Index,
    SourceStack,
    StackMap,
    Untranslatable,
    fp_offset,
    matched_vars,
    read_stack,
    translate_value,
    unset_at_stop,
)


def write_target(src_mem, dst_mem, stack: SourceStack, idx: Index, smap: StackMap,
                 bottom_ret: int) -> dict[str, int]:
    """Write every target frame; returns the callee-saved register values the innermost
    frame must find in its registers, plus the park frame's frame pointer (and, on
    an ISA whose park function is a leaf, the registers holding its frame record)."""
    dst = idx.dst_isa
    expected: dict[str, int] = {}  # value each callee-saved register must hold now
    frames = stack.frames
    # variables holding jmp_bufs, copied once every frame's entry registers are known:
    # a jmp_buf holds the registers of the frame that called setjmp, which may be inner
    jmp_vars: list = []
    for i in range(len(frames) - 1, -1, -1):
        fr = frames[i]
        caller = frames[i + 1] if i + 1 < len(frames) else None
        own_ret = caller.dst_pc if caller else bottom_ret
        fr.dst_entry_regs = dict(expected)
        if fr.site is None:  # the park frame
            _copy_vars(src_mem, dst_mem, fr, idx, smap, strict=False, stack=stack,
                       bottom_ret=bottom_ret, jmp_vars=jmp_vars)
            for copy in jmp_vars:
                copy()
            return {**expected, **dst.write_park_frame(
                dst_mem, fr.dst_cfa, caller.dst_cfa + fp_offset(caller, idx), own_ret)}
        fmeta = fr.function.isa[idx.dst].frame
        if fmeta.dynamic_sp or fmeta.saved_fp_cfa_offset is None \
                or fmeta.return_address_cfa_offset is None:
            raise Untranslatable(f"{fr.function.name}: no fixed {idx.dst} frame layout")
        # frame record
        caller_fp = caller.dst_cfa + fp_offset(caller, idx) if caller else 0  # 0 ends the chain
        dst_mem.write_u64(fr.dst_cfa + fmeta.saved_fp_cfa_offset, caller_fp)
        dst_mem.write_u64(fr.dst_cfa + fmeta.return_address_cfa_offset, own_ret)
        if fmeta.lr_copy_cfa_offset is not None:  # -Og aarch64: its copy for the exit hook
            dst_mem.write_u64(fr.dst_cfa + fmeta.lr_copy_cfa_offset, own_ret)
        # callee-saved registers this function saved in its prologue: the values its
        # caller needs back
        saved = fmeta.saved_regs
        for r, off in saved.items():
            if r in dst.callee_saved:
                dst_mem.write_u64(fr.dst_cfa + off, expected.get(r, 0))
        # this frame's own live values at its call site
        twin = fr.site.twin
        assert twin is not None  # unwind refuses a call site without one
        live = twin.live_callee_saved
        # a register in which the target's instrumented functions keep their own return
        # address for the exit hook (aarch64's GCC does), if any
        lr_copy = fr.function.park_point.lr_copy(idx.dst)
        temps_dst = twin.callee_saved_temps
        temps_src = fr.site.site.callee_saved_temps
        for r in saved:
            if r in dst.callee_saved:
                expected[r] = 0  # clobbered here, dead unless live below
        # optimized frames: variables in registers and slots, where each ISA has them
        in_regs = described.write_frame(src_mem, dst_mem, fr, idx, smap)
        for r, v in in_regs.items():
            if r not in saved:
                raise Untranslatable(f"{fr.function.name}: {r} holds {fr.function.name}'s "
                                     f"variable but is not saved by it")
            expected[r] = v
        for r in live:
            if r not in saved:
                raise Untranslatable(f"{fr.function.name}: {r} live but not saved")
            if r in in_regs:
                continue
            if r == lr_copy:
                expected[r] = own_ret
            elif r == fmeta.self_address_reg:
                expected[r] = fr.function.isa[idx.dst].addr
            elif r in twin.unset_regs:
                expected[r] = 0  # not set by this function yet: nothing of its own
            elif r in temps_dst:
                k = temps_dst.index(r)
                if k >= len(temps_src):
                    raise Untranslatable(f"{fr.function.name}: temporary in {r} has "
                                         f"no source value")
                expected[r] = translate_value(fr.regs[temps_src[k]], None, smap, idx)
            else:
                raise Untranslatable(f"{fr.function.name}: unknown live value in {r} "
                                     f"at {fr.dst_pc:#x}")
        _copy_vars(src_mem, dst_mem, fr, idx, smap, stack=stack, bottom_ret=bottom_ret,
                   jmp_vars=jmp_vars)
    raise Untranslatable("stack has no park frame")


def _copy_vars(src_mem, dst_mem, fr: Frame, idx: Index, smap: StackMap,
               strict: bool = True, stack: SourceStack | None = None,
               bottom_ret: int = 0, jmp_vars: list | None = None) -> None:
    """Variables slot to slot; pointers inside them (pointer_offsets) translated;
    variables holding a jmp_buf member by member (jmpbuf.py), appended to jmp_vars as
    copies to run once every frame is rebuilt."""
    for sv, dv in matched_vars(fr, idx, strict):
        raw = bytearray(read_stack(src_mem, fr.src_cfa + sv.cfa_offset, sv.type.size))
        if sv.type.by_member:
            if stack is None or jmp_vars is None:
                raise Untranslatable(f"{fr.function.name}: {sv.name} (member by member) "
                                     f"without its stack")

            def copy(raw=bytes(raw), sv=sv, dv=dv) -> None:
                dst_mem.write(fr.dst_cfa + dv.cfa_offset, jmpbuf.copy_var(
                    raw, sv, dv, f"{fr.function.name}: {sv.name}", stack, idx,
                    smap, bottom_ret))
            jmp_vars.append(copy)
            continue
        for po in sv.type.pointer_offsets:
            if po + 8 <= len(raw):
                v = int.from_bytes(raw[po:po + 8], "little")
                try:
                    new = translate_value(v, sv, smap, idx)
                except Untranslatable as exc:  # say whose value it is
                    if unset_at_stop(fr, sv, idx):
                        break  # not yet assigned: its stale bytes go as they are
                    if smap.in_stack(v) and v < fr.src_sp:
                        # into a frame this one called (live below it now) at no
                        # variable: a dead frame's address left in memory this frame
                        # has not written yet (xz's lzma_raw_coder_init fills only
                        # `count + 1` of filters[5]); a live callee's own variables would
                        # have matched a slot. Its stale bytes go as they are.
                        continue
                    raise Untranslatable(f"{fr.function.name}: {sv.name} "
                                         f"({_where(fr, sv)}): {exc}") from None
                raw[po:po + 8] = new.to_bytes(8, "little")
        dst_mem.write(fr.dst_cfa + dv.cfa_offset, bytes(raw))


def _where(fr: Frame, var) -> str:
    return f"{var.file or fr.function.file or '?'}:{var.line or '?'}"
