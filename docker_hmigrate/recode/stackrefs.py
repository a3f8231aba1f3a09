"""Pointers into a thread's stack held outside it (heap, data, TLS), remapped.

A rebuilt stack puts each variable at its target slot; a pointer to a stack variable
that lives *outside* the stack (lua's `L->errorJmp`, which points at the `lj` of the
innermost `luaD_rawrunprotected` frame; a pthread cleanup buffer in struct pthread;
a callback's context) must follow it, or a later longjmp/dereference reads the wrong
bytes on the target. Frames' own variables are handled by frames.py (their types say
where pointers lie); here every 8-byte word of writable private memory outside the
rebuilt stack areas is checked: one that points into a thread's live source stack and
onto a variable slot is remapped. One that points into the live stack but at no
variable (a stale value: -O0 code keeps every live value in a variable slot) is left
alone and counted.
"""

from __future__ import annotations

from docker_hmigrate.criu.memory import scan
from docker_hmigrate.recode import frames

PROT_WRITE = 2
MAP_SHARED = 0x01
VMA_AREA_VDSO, VMA_AREA_VVAR = 1 << 3, 1 << 12


def remap(dst, plans, idx: frames.Index) -> dict[int, dict[str, int]]:
    """Per process: {"remapped": n, "stale": n}. `plans` as transform.unwind_all gives
    them, after the stacks are rebuilt (their target CFAs are planned)."""
    report: dict[int, dict[str, int]] = {}
    for pid, threads in plans.items():
        maps = [frames.stack_map(stack, idx) for _, _, stack in threads]
        # rebuilt areas: from the lowest SP of either layout to the outermost CFA
        rebuilt = [(min(m.lo, frames.lowest_target_sp(st, idx)), m.hi)
                   for m, (_, _, st) in zip(maps, threads, strict=True)]
        mem = dst.memory(pid)
        stats = {"remapped": 0, "stale": 0}
        for v in dst.mm(pid).vmas:
            if not v.prot & PROT_WRITE or v.flags & MAP_SHARED or \
                    v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR):
                continue
            for a0, data in scan(mem, v.start, v.end):  # bounded pieces: memory stays flat
                for smap in maps:
                    for off in words_in(data, smap.lo, smap.hi):
                        addr = a0 + off
                        if any(lo <= addr < hi for lo, hi in rebuilt):
                            continue
                        w = int.from_bytes(data[off:off + 8], "little")
                        try:
                            new = smap.map(w)
                        except frames.Untranslatable:
                            stats["stale"] += 1
                            continue
                        if new != w:
                            mem.write_u64(addr, new)
                            stats["remapped"] += 1
        report[pid] = stats
    return report


def words_in(data: bytes, lo: int, hi: int):
    """Offsets of 8-aligned words in [lo, hi), with bytes.find instead of a loop over
    every word: found by their upper bits, as many as leave at most a few needles (the
    frames of one stack span a few pages: the upper 48 bits, which heap pointers near
    the stack mapping do not share)."""
    shift = next((b for b in (16, 24, 32) if ((hi - 1) >> b) - (lo >> b) < 4), 40)
    k = shift // 8
    # A user address's top two bytes are 0: left out of the needle (bytes.find skips
    # ahead on the needle's last byte, and zero bytes are everywhere); checked below.
    width = 6 if hi <= 1 << 48 else 8
    for top in range(lo >> shift, ((hi - 1) >> shift) + 1):
        needle = top.to_bytes(width - k, "little")
        i = data.find(needle, k)
        while i >= 0:
            if i % 8 == k:
                off = i - k
                w = int.from_bytes(data[off:off + 8], "little")
                if lo <= w < hi:
                    yield off
            i = data.find(needle, i + 1)
