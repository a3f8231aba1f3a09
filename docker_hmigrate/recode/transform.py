"""Recode a CRIU image set of a parked hmigrate-cc program from x86-64 to aarch64.

Only the build metadata (program.metadata, hmigrate-toolchain/1) and the target ELF are
used: no DWARF at migration time. Per thread: unwind the x86-64 stack (frames.py),
rebuild it frame by frame for aarch64, set the registers at the aarch64 park point and
the thread pointer (musl's struct pthread translated in place). Per process: the
executable's mappings and file size, mm bounds, auxv, vDSO/vvar (target sizes; the
vsyscall page goes), cached vDSO pointers, signal actions. Whatever is not understood
raises NotMigratableCrossISA: nothing passes through untranslated.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from docker_hmigrate.criu import ImageSet, check_supported
from docker_hmigrate.criu.schema import March
from docker_hmigrate.recode import aarch64, frames, process, shared, x86_64
from docker_hmigrate.recode.frames import Index, Untranslatable

SUPPORTED = {("x86-64", "aarch64")}
ERESTART = {-512, -513, -514, -516}  # kernel-internal restart codes


def preflight_problems(program, src_isa: str, dst_isa: str) -> list[str]:
    """What this version cannot recode for this program and direction (empty: it can).
    Said before the source is frozen; the per-stack checks happen at recode time, but
    the runtime never parks a thread in a frame the metadata calls untranslatable."""
    if (src_isa, dst_isa) not in SUPPORTED:
        return [f"recode {src_isa} -> {dst_isa} is not implemented (only x86-64 -> aarch64)"]
    md = program.metadata
    problems: list[str] = []
    tls = md.get("tls") or {}
    size = max(((tls.get(i) or {}).get("memsz", 0) for i in (src_isa, dst_isa)), default=0)
    if size:
        problems.append(f"the program has thread-local variables ({size} bytes of PT_TLS): "
                        f"moving TLS blocks between TLS variants is not implemented")
    rt = md.get("runtime") or {}
    for isa in (src_isa, dst_isa):
        if "frame_size" not in (rt.get("park_points") or {}).get(isa, {}):
            problems.append(f"metadata has no {isa} park point frame size (relink)")
    bs = (rt.get("bottom_frames") or {}).get(src_isa, [])
    bd = (rt.get("bottom_frames") or {}).get(dst_isa, [])
    if not bs or [(b["function"], b["target"]) for b in bs] != \
            [(b["function"], b["target"]) for b in bd]:
        problems.append("musl's bottom frames differ between the ISAs in the metadata")
    park_fn = (rt.get("park_functions") or [None])[-1]
    by_name = {f["name"]: f for f in md.get("functions", [])}
    if park_fn not in by_name:
        problems.append(f"metadata lacks the runtime function {park_fn}")
    binary = program.binaries.get(dst_isa)
    want = ((md.get("binaries") or {}).get(dst_isa) or {}).get("sha256")
    if binary is not None:
        if want and hashlib.sha256(binary).hexdigest() != want:
            problems.append(f"the image's {dst_isa} binary is not the one the metadata "
                            f"describes")
        elif park_fn in by_name:
            g = by_name[park_fn]["isa"].get(dst_isa, {})
            code = binary_code(binary, g.get("addr", 0), g.get("size", 0))
            if code is None or aarch64.saves_frame_record(code):
                problems.append(f"{park_fn} on {dst_isa} is not the leaf this recode expects")
    return problems


def binary_code(elf: bytes, addr: int, size: int) -> bytes | None:
    try:
        e = process.Elf.parse(elf)
    except Untranslatable:
        return None
    for off, vaddr, filesz, _m, _f in e.loads:
        if vaddr <= addr and addr + size <= vaddr + filesz:
            return elf[off + addr - vaddr: off + addr - vaddr + size]
    return None


def recode_images(src_dir: Path, dst_dir: Path, program, src_isa: str, dst_isa: str,
                  target_maps: dict[str, list[tuple[int, int]]],
                  vdso_image: bytes | None = None) -> dict[str, float]:
    """Rewrite src_dir's image set for dst_isa into dst_dir; per-phase seconds.

    vdso_image: the target kernel's vDSO bytes when known (CRIU then remaps the
    running vDSO in place); otherwise an empty vDSO is written and the restored
    process's calls go through system calls (see process.empty_vdso).
    """
    problems = preflight_problems(program, src_isa, dst_isa)
    if problems:
        raise Untranslatable("cannot recode: " + "; ".join(problems))
    t: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        t[name] = now - clock
        clock = now

    src = ImageSet.load(src_dir)
    dst = ImageSet.load(src_dir)  # edited copy; src stays the pristine source
    lap("load")
    check_images(src, src_isa)
    idx = Index(program.metadata, src_isa, dst_isa)
    target = process.Elf.parse(program.binaries[dst_isa])
    if target.machine != process.EM[dst_isa]:
        raise Untranslatable(f"the {dst_isa} variant is an ELF for machine {target.machine}")
    lap("check")
    plans = unwind_all(src, idx)
    lap("unwind")
    skip = rebuild_stacks(src, dst, idx, plans)
    lap("stacks")
    shared.recode_shared(src, dst, idx)  # memory the processes share: checked, kept as is
    for pid in dst.pids:
        process.rewrite_exe(dst, pid, program.path, target)
        process.isa_only_data(dst, pid, program.metadata, target, program.binaries[dst_isa])
        old_vdso = process.rewrite_special(dst, pid, target_maps, vdso_image)
        process.rewrite_auxv(dst, pid, target, old_vdso)
        process.fix_data_pointers(dst, pid, idx, old_vdso, skip.get(pid, []))
        process.portable_pagemap(dst, pid)
        core = dst.core(pid)
        if core.HasField("tc"):
            process.translate_sigactions(core.tc, idx)
    lap("process")
    dst.save(dst_dir)
    lap("save")
    return t


def check_images(s: ImageSet, src_isa: str) -> None:
    bad = check_supported(s)
    if bad:
        raise Untranslatable("image parts this recode does not understand: " + "; ".join(bad))
    if s.arch != March.X86_64:
        raise Untranslatable(f"images are {s.arch.name}, not {src_isa}")
    for e in s.entries("seccomp.img"):
        if len(e.seccomp_filters):
            raise Untranslatable("seccomp filters are installed (they check the syscall "
                                 "ABI): run the container with seccomp=unconfined")
    for pid in s.pids:
        if not s.has_mm(pid):
            raise Untranslatable(f"process {pid} is a zombie")
        for tid in s.threads(pid):
            c = s.core(tid)
            if c.mtype != March.X86_64 or not c.HasField("thread_info"):
                raise Untranslatable(f"thread {tid} is not an x86-64 thread")
            if c.thread_info.gpregs.mode not in (0, 1):
                raise Untranslatable(f"thread {tid} runs 32-bit code")
            tc = c.thread_core
            if tc.seccomp_mode:
                raise Untranslatable(f"thread {tid} is in seccomp mode {tc.seccomp_mode}")
            if tc.HasField("signals_p") and len(tc.signals_p.signals):
                raise Untranslatable(f"thread {tid} has pending signals")
            if tc.HasField("rseq_entry") and tc.rseq_entry.rseq_abi_pointer:
                raise Untranslatable(f"thread {tid} registered rseq")
            if tc.futex_rla:
                raise Untranslatable(f"thread {tid} registered a robust futex list")
            if c.HasField("tc") and c.tc.HasField("signals_s") and len(c.tc.signals_s.signals):
                raise Untranslatable(f"process {pid} has pending signals")
            if c.HasField("tc") and c.tc.personality & 0xFF == 0x0008:  # PER_LINUX32
                raise Untranslatable(f"process {pid} has an x86-only personality")


def unwind_all(src: ImageSet, idx: Index) -> dict[int, list[tuple[int, Any, Any]]]:
    plans: dict[int, list] = {}
    for pid in src.pids:
        mem = src.memory(pid)
        plans[pid] = []
        for tid in src.threads(pid):
            regs = x86_64.read_regs(src.core(tid))
            try:
                stack = frames.unwind_x86(mem, regs, idx)
            except Untranslatable as exc:
                raise Untranslatable(f"thread {tid}: {exc}") from None
            frames.source_callee_saved(mem, stack, regs, idx)
            frames.plan_aarch64(stack, idx)
            plans[pid].append((tid, regs, stack))
    return plans


def rebuild_stacks(src: ImageSet, dst: ImageSet, idx: Index, plans) -> dict[int, list]:
    """Every thread's frames and registers for aarch64. Returns, per process, the dead
    stack areas below each thread's SP (stale values there are never read)."""
    park = idx.md["runtime"]["park_points"][idx.dst]
    src_park = idx.md["runtime"]["park_points"][idx.src]
    skip: dict[int, list] = {}
    for pid, threads in plans.items():
        smem, dmem = src.memory(pid), dst.memory(pid)
        skip[pid] = []
        for tid, regs, stack in threads:
            sp = frames.lowest_target_sp(stack, idx)
            vma = src.vma_at(pid, regs.sp)
            if vma is None or not vma.start <= sp < vma.end:
                raise Untranslatable(f"thread {tid}: the aarch64 stack ({sp:#x}) leaves "
                                     f"its stack mapping")
            lo = min(sp, regs.sp)
            dmem.populate(lo, stack.outer_cfa - lo)
            dmem = dst.memory(pid)
            dmem.write(lo, bytes(stack.outer_cfa - lo))  # no stale x86-64 frame remains
            smap = frames.StackMap(stack, idx)
            bottom = idx.bottoms[stack.bottom_return]
            out = frames.write_aarch64(smem, dmem, stack, idx, smap, bottom)
            gp = [0] * 31
            for r, v in out.items():
                gp[int(r[1:])] = v
            if regs.pc == src_park["syscall_pc"]:  # CRIU rewound the futex: restart it
                pc = park["syscall_pc"]
                gp[0:4] = [frames.translate_value(a, None, smap, idx) for a in regs.args]
                gp[8] = aarch64.SYS_FUTEX
            else:
                res = regs.result - (1 << 64) if regs.result >> 63 else regs.result
                if res in ERESTART:
                    raise Untranslatable(f"thread {tid}: unexpected restart code {res}")
                pc = park["blocked_pc"]
                gp[0] = regs.result
            tls = process.translate_pthread(smem, dmem, regs.tp)
            core = dst.core(tid)
            clear_tid = core.thread_info.clear_tid_addr
            core.ClearField("thread_info")
            core.mtype = March.AARCH64
            core.ti_aarch64.CopyFrom(aarch64.regs_message(clear_tid, tls, gp, sp, pc))
            skip[pid].append((vma.start, sp))
    return skip

