"""Recode a CRIU image set of a parked hmigrate-cc program between two ISAs (x86-64 and
aarch64, both ways; every fact of either ISA comes from its isa/ object).

Only the build metadata (program.md: toolchain/contract.py's records of
"hmigrate-toolchain/1") and the target ELF are used: no DWARF at migration time. Per thread: unwind
the source stack (frames.py), rebuild it frame by frame for the target, set the
registers at the target's park point and the thread pointer (musl's struct pthread
translated in place). Per process: the executable's mappings and file size, mm bounds,
auxv, vDSO/vvar (target sizes; the vsyscall page goes), cached vDSO pointers, signal
actions, the O_* flags of open files (fileflags.py). Whatever is not understood raises
NotMigratableCrossISA: nothing passes through untranslated.
"""

from __future__ import annotations

import hashlib
import struct
import time
from pathlib import Path
from typing import Any

from docker_hmigrate.criu import ImageSet, check_supported, schema
from docker_hmigrate.isa import NAMES as ISA_NAMES
from docker_hmigrate.recode import (
    fileflags,
    frames,
    jmpbuf,
    process,
    rebuild,
    shared,
    stackrefs,
    tls,
)
from docker_hmigrate.recode.frames import Index, Untranslatable, arch
from docker_hmigrate.recode.process import TargetFacts
from docker_hmigrate.toolchain.contract import FunctionIsa

# every ordered pair of two different ISAs of isa/
SUPPORTED = {(a, b) for a in ISA_NAMES for b in ISA_NAMES if a != b}
# Images kept as bytes that hold nothing ISA-specific, carried as they are: an
# established TCP connection's state (sequence numbers, windows, options, queued bytes);
# the network namespace's conntrack entries and expectations (CRIU dumps them with
# established connections: netlink messages, 4-byte aligned on every ISA, host-order
# headers and network-order values; isa/ has only little-endian ISAs).
ISA_NEUTRAL_OPAQUE = ("tcp-stream-", "netns-ct-", "netns-exp-")
ERESTART = {-512, -513, -514, -516}  # kernel-internal restart codes


def preflight_problems(program, src_isa: str, dst_isa: str) -> list[str]:
    """What this version cannot recode for this program and direction (empty: it can).
    Said before the source is frozen; the per-stack checks happen at recode time, but
    the runtime never parks a thread in a frame the metadata calls untranslatable."""
    if (src_isa, dst_isa) not in SUPPORTED:
        return [f"recode {src_isa} -> {dst_isa} is not implemented"]
    md = program.md
    problems: list[str] = []
    problems += tls.preflight_problems(md, src_isa, dst_isa)
    rt = md.runtime
    for isa in (src_isa, dst_isa):
        if rt.park_pc(isa).frame_size is None:
            problems.append(f"metadata has no {isa} park point frame size (relink)")
    bs, bd = rt.bottoms(src_isa), rt.bottoms(dst_isa)
    if not bs or [(b.function, b.target) for b in bs] != [(b.function, b.target) for b in bd]:
        problems.append("musl's bottom frames differ between the ISAs in the metadata")
    park_fn = rt.park_function
    # indexed here, before the freeze: the recode after it finds the index cached
    by_name = Index.of(md, src_isa, dst_isa).by_name
    if park_fn not in by_name:
        problems.append(f"metadata lacks the runtime function {park_fn}")
    binary = program.binaries.get(dst_isa)
    want = md.binary(dst_isa).sha256
    if binary is not None:
        if want and _sha256(binary) != want:
            problems.append(f"the image's {dst_isa} binary is not the one the metadata "
                            f"describes")
        elif park_fn in by_name:
            g = by_name[park_fn].isa.get(dst_isa) or FunctionIsa({})
            code = binary_code(binary, g.addr, g.size)
            if code is None or not arch(dst_isa).park_function_ok(code):
                problems.append(f"{park_fn} on {dst_isa} does not have the frame this "
                                f"recode expects")
    return problems


_digests: list[tuple[bytes, str]] = []


def _sha256(data: bytes) -> str:
    """A binary's digest, computed once (the preflight before the freeze and the recode
    after it check the same bytes)."""
    for d, h in _digests:
        if d is data:
            return h
    h = hashlib.sha256(data).hexdigest()
    _digests[:] = [(data, h)] + _digests[:3]
    return h


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
                  target: TargetFacts | None = None) -> dict[str, float]:
    """Rewrite src_dir's image set for dst_isa into dst_dir; per-phase seconds.

    target: what the target host gives a process (from a template checkpoint). Its vDSO
    bytes, when known, let CRIU remap the running vDSO in place; otherwise an empty vDSO
    is written and the restored process's calls go through system calls (see
    process.empty_vdso).
    """
    target = target or TargetFacts()
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
    for images in (src, dst):  # src: so that its check passes; dst: what is restored
        drop_park_kicks(images, program.md.runtime.park_signal)
    check_images(src, src_isa)
    idx = Index.of(program.md, src_isa, dst_isa)
    elf = process.Elf.parse(program.binaries[dst_isa])
    if elf.machine != idx.dst_isa.elf_machine:
        raise Untranslatable(f"the {dst_isa} variant is an ELF for machine {elf.machine}")
    src_bin = program.binaries.get(src_isa)
    idx.src_code = process.Elf.parse(src_bin).reader(src_bin) if src_bin else None
    lap("check")
    plans = unwind_all(src, idx)
    lap("unwind")
    skip = rebuild_stacks(src, dst, idx, plans, target.thread)
    if program.md.has_tls:  # struct pthread and TLS blocks move (tls.py)
        for pid, threads in plans.items():
            tls.translate_process(src, dst, pid, program.md, src_isa, dst_isa,
                                  [(t, r.tp, st.outer_cfa) for t, r, st in threads], skip[pid])
    stackrefs.remap(dst, plans, idx)  # pointers to stack variables held elsewhere
    jmpbuf.outside_stacks(dst, plans, idx)  # static jmp_bufs; heap ones refused
    lap("stacks")
    shared.recode_shared(src, dst, idx)  # memory the processes share: checked, kept as is
    for pid in dst.pids:
        process.rewrite_exe(dst, pid, program.path, elf)
        process.isa_only_data(dst, pid, program.md, elf, program.binaries[dst_isa])
        old_vdso = process.rewrite_special(dst, pid, target.maps, target.vdso,
                                           idx.dst_isa.elf_machine)
        process.rewrite_auxv(dst, pid, elf, old_vdso, dst_isa, target)
        process.fix_data_pointers(dst, pid, idx, old_vdso, skip.get(pid, []),
                                  target.aux(dst_isa, "AT_HWCAP"))
        process.drop_empty_high_areas(dst, pid, idx.dst_isa.user_end)
        process.portable_pagemap(dst, pid)
        core = dst.core(pid)
        if core.HasField("tc"):
            process.translate_sigactions(core.tc, idx)
    fileflags.translate_files(dst, src_isa, dst_isa)  # O_* bits that differ per ISA
    lap("process")
    dst.save(dst_dir)
    lap("save")
    return t


def not_understood(s: ImageSet) -> list[str]:
    """The parts of an image set a recode would have to carry without understanding
    them and that may hold ISA-specific state (what check_supported lists, less the
    ISA-neutral ones)."""
    return [p for p in check_supported(s) if not p.startswith(ISA_NEUTRAL_OPAQUE)]


SI_TKILL = -6  # siginfo si_code of tgkill()


def is_park_kick(siginfo: bytes, park_signal: int, pids: set[int]) -> bool:
    """A pending siginfo (the kernel's layout, the same on every 64-bit ISA of isa/:
    si_signo, si_errno, si_code, then si_pid, si_uid at 16) that is the runtime's own
    kick: the park signal sent with tgkill by a thread of the process itself."""
    if len(siginfo) < 24:
        return False
    signo, _errno, code = struct.unpack_from("<iii", siginfo, 0)
    pid, = struct.unpack_from("<i", siginfo, 16)
    return signo == park_signal and code == SI_TKILL and pid in pids


def drop_park_kicks(s: ImageSet, park_signal: int) -> int:
    """The runtime's kicks still pending in threads that block every signal (liblzma's
    worker threads, created with all signals blocked: they park at their next function
    entry all the same, so the kick meant to interrupt their system call stays queued).
    Their work is done, and delivered on the target one would start a park request
    there; other pending signals are left for check_images to refuse. Returns how many
    were dropped."""
    pids = set(s.pids)
    dropped = 0
    for pid in s.pids:
        for tid in s.threads(pid):
            tc = s.core(tid).thread_core
            if not tc.HasField("signals_p"):
                continue
            queue = tc.signals_p.signals
            keep = [e for e in queue if not is_park_kick(bytes(e.siginfo), park_signal, pids)]
            if len(keep) != len(queue):
                dropped += len(queue) - len(keep)
                kept = [type(e)() for e in keep]
                for new, old in zip(kept, keep, strict=True):
                    new.CopyFrom(old)
                del queue[:]
                queue.extend(kept)
    return dropped


def check_images(s: ImageSet, src_isa: str) -> None:
    bad = not_understood(s)
    if bad:
        raise Untranslatable("image parts this recode does not understand: " + "; ".join(bad))
    src = arch(src_isa)
    if s.arch != src.criu_march:
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
            if not src.has_thread(c):
                raise Untranslatable(f"thread {tid} is not a 64-bit {src_isa} thread")
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
    read_regs = idx.src_isa.read_regs
    plans: dict[int, list] = {}
    for pid in src.pids:
        mem = src.memory(pid)
        plans[pid] = []
        for tid in src.threads(pid):
            regs = read_regs(src.core(tid))
            try:
                stack = frames.planned(mem, regs, idx)
            except Untranslatable as exc:
                raise Untranslatable(f"thread {tid}: {exc}") from None
            plans[pid].append((tid, regs, stack))
    return plans


def rebuild_stacks(src: ImageSet, dst: ImageSet, idx: Index, plans,
                   native_thread=None) -> dict[int, list]:
    """Every thread's frames and registers for the target ISA. Returns, per process, the
    dead stack areas below each thread's SP (stale values there are never read)."""
    park, src_park = idx.dst_park, idx.src_park
    target = idx.dst_isa
    skip: dict[int, list] = {}
    for pid, threads in plans.items():
        smem, dmem = src.memory(pid), dst.memory(pid)
        skip[pid] = []
        for tid, regs, stack in threads:
            sp = frames.lowest_target_sp(stack, idx)
            vma = src.vma_at(pid, regs.sp)
            if vma is None or not vma.start <= sp < vma.end:
                raise Untranslatable(f"thread {tid}: the {idx.dst} stack ({sp:#x}) leaves "
                                     f"its stack mapping")
            lo = min(sp, regs.sp)
            dmem.populate(lo, stack.outer_cfa - lo)
            dmem = dst.memory(pid)
            dmem.write(lo, bytes(stack.outer_cfa - lo))  # no stale source frame remains
            smap = frames.stack_map(stack, idx)
            bottom = idx.bottoms[stack.bottom_return]
            out = rebuild.write_target(smem, dmem, stack, idx, smap, bottom)
            if regs.pc == src_park.syscall_pc:  # CRIU rewound the futex: restart it
                pc = park.syscall_pc
                for r, a in zip(target.arg_regs, regs.args, strict=True):
                    out[r] = frames.translate_value(a, None, smap, idx)
                out[target.nr_reg] = target.sys_futex
            else:
                res = regs.result - (1 << 64) if regs.result >> 63 else regs.result
                if res in ERESTART:
                    raise Untranslatable(f"thread {tid}: unexpected restart code {res}")
                pc = park.blocked_pc
                if target.nr_reg != target.result_reg:
                    # aarch64's x8 still holds the futex's number after the svc (a wait
                    # that had just timed out when frozen: liblzma's main thread); the
                    # way back reads it (x8 = 0: "in system call 0, not futex")
                    out[target.nr_reg] = target.sys_futex
                out[target.result_reg] = regs.result
            tp = process.translate_pthread(smem, dmem, regs.tp, idx.src, idx.dst)
            core = dst.core(tid)
            clear_tid = idx.src_isa.clear_tid_addr(core)
            target.set_core(core, schema.new, clear_tid, tp, out, sp, pc, native_thread)
            skip[pid].append((vma.start, sp))
    return skip
