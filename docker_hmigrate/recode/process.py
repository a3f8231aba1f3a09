"""Process-wide state of an image set, rewritten for the target ISA: the executable's
mappings and file entry, mm bounds, the auxiliary vector, vDSO/vvar/vsyscall areas,
signal actions, seccomp, and musl's per-thread struct pthread."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from docker_hmigrate.criu import schema
from docker_hmigrate.criu.memory import (
    PAGE_SIZE,
    PE_PRESENT,
    entry_flags,
    entry_nr_pages,
    scan,
)
from docker_hmigrate.isa import PTHREAD_COMMON_SIZE
from docker_hmigrate.recode import shared, stackrefs
from docker_hmigrate.recode.frames import Index, Untranslatable, arch, read_stack
from docker_hmigrate.toolchain.contract import Metadata

# vma_entry.status bits (CRIU's VMA_AREA_*)
VMA_AREA_REGULAR = 1 << 0
VMA_AREA_STACK = 1 << 1
VMA_AREA_VSYSCALL = 1 << 2
VMA_AREA_VDSO = 1 << 3
VMA_FILE_PRIVATE = 1 << 6
VMA_ANON_PRIVATE = 1 << 9
VMA_AREA_VVAR = 1 << 12

AT = {"AT_PHDR": 3, "AT_PHENT": 4, "AT_PHNUM": 5, "AT_ENTRY": 9, "AT_HWCAP": 16,
      "AT_PLATFORM": 15, "AT_SYSINFO_EHDR": 33, "AT_HWCAP2": 26, "AT_MINSIGSTKSZ": 51}
PF_X, PF_W, PF_R = 1, 2, 4
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
SA_RESTORER = 0x04000000


@dataclass
class TargetFacts:
    """What the target host gives a fresh process, as a checkpoint taken there (the
    template) shows it. Every field is optional: recode falls back to the ISA's
    baseline values."""

    maps: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # [vdso] ...
    vdso: bytes | None = None  # the target kernel's vDSO image
    auxv: dict[int, int] = field(default_factory=dict)  # AT_HWCAP, AT_MINSIGSTKSZ ...
    platform: bytes | None = None  # the AT_PLATFORM string, NUL-terminated
    thread: Any = None  # a native thread_info of the target ISA (x86-64: FPU layout)

    def aux(self, isa: str, key: str) -> int:
        default = {"AT_HWCAP": "hwcap", "AT_HWCAP2": "hwcap2",
                   "AT_MINSIGSTKSZ": "minsigstksz"}[key]
        return self.auxv.get(AT[key], getattr(arch(isa).auxv, default))


def page_down(a: int) -> int:
    return a // PAGE_SIZE * PAGE_SIZE


def page_up(a: int) -> int:
    return -(-a // PAGE_SIZE) * PAGE_SIZE


@dataclass
class Elf:
    entry: int
    machine: int
    phoff: int
    phnum: int
    loads: list[tuple[int, int, int, int, int]]  # (offset, vaddr, filesz, memsz, flags)
    size: int

    @classmethod
    def parse(cls, data: bytes) -> Elf:
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise Untranslatable("target binary is not a 64-bit little-endian ELF")
        machine, = struct.unpack_from("<H", data, 18)
        entry, phoff = struct.unpack_from("<QQ", data, 24)
        phentsize, phnum = struct.unpack_from("<HH", data, 54)
        loads = []
        for i in range(phnum):
            p_type, p_flags, off, vaddr, _pa, filesz, memsz, _al = struct.unpack_from(
                "<IIQQQQQQ", data, phoff + i * phentsize)
            if p_type == 1:
                loads.append((off, vaddr, filesz, memsz, p_flags))
        return cls(entry, machine, phoff, phnum, loads, len(data))

    def reader(self, data: bytes) -> Callable[[int, int], bytes]:
        """The file's bytes by virtual address (b"" outside what it loads)."""
        def read(addr: int, n: int) -> bytes:
            for off, vaddr, filesz, _m, _f in self.loads:
                if vaddr <= addr < vaddr + filesz:
                    start = off + addr - vaddr
                    return data[start:start + min(n, vaddr + filesz - addr)]
            return b""
        return read

    @property
    def phdr_addr(self) -> int:
        for off, vaddr, filesz, _m, _f in self.loads:
            if off <= self.phoff < off + filesz:
                return vaddr + self.phoff - off
        raise Untranslatable("target binary's program headers are not loaded")


def drop_pages(imgset, pid: int, start: int, end: int) -> int:
    """Remove [start, end) from the process's pagemap and pages image; returns pages.
    Only the dropped bytes are cut from the pages image (its other pages may be on
    disk, never read here)."""
    mem = imgset.memory(pid)
    pagemap, pages = mem.pagemap, mem.pages
    head, entries = pagemap.entries[0], pagemap.entries[1:]
    out, cuts, dropped, offset = [], [], 0, 0
    for e in entries:
        m = e.msg
        n, flags = entry_nr_pages(m), entry_flags(m)
        present = bool(flags & PE_PRESENT) and not flags & 1
        size = n * PAGE_SIZE
        lo, hi = m.vaddr, m.vaddr + size
        keep = [(a, b) for a, b in ((lo, min(hi, start)), (max(lo, end), hi)) if a < b]
        if keep != [(lo, hi)]:
            dropped += (size - sum(b - a for a, b in keep)) // PAGE_SIZE
            for a, b in keep:
                out.append(type(e)(msg=schema.new(
                    "pagemap_entry", vaddr=a, compat_nr_pages=0, flags=flags,
                    nr_pages=(b - a) // PAGE_SIZE)))
            if present:  # the bytes of [lo, hi) between the kept pieces go
                pos = lo
                for a, b in [*keep, (hi, hi)]:
                    if pos < a:
                        cuts.append((offset + pos - lo, offset + a - lo))
                    pos = b
        else:
            out.append(e)
        if present:
            offset += size
    if dropped:
        pagemap.entries = [head, *out]
        for a, b in reversed(cuts):  # from the end: earlier offsets stay valid
            del pages.data[a:b]
        imgset._memory.pop(pid, None)  # re-index on next use
    return dropped


def portable_pagemap(imgset, pid: int) -> None:
    """Give every run both page counts: CRIU 4.2 writes nr_pages (field 5) and leaves
    compat_nr_pages 0, CRIU 4.1 reads only compat_nr_pages and would restore no page
    at all (the lab's aarch64 host runs 4.1.1). Both readers accept both fields."""
    pagemap = imgset.image(f"pagemap-{pid}.img")
    for e in pagemap.entries[1:]:
        n = entry_nr_pages(e.msg)
        if n >= 1 << 32:
            raise Untranslatable(f"a run of {n} pages does not fit CRIU 4.1's pagemap")
        if e.msg.compat_nr_pages != n or not e.msg.HasField("nr_pages"):
            e.msg.compat_nr_pages = n
            e.msg.nr_pages = n


def rewrite_exe(imgset, pid: int, program_path: str, target: Elf) -> None:
    """The executable's VMAs from the target variant's PT_LOADs (addresses are aligned by
    the toolchain; offsets, sizes and the number of segments differ), its file entry's
    size, and mm's code/data bounds."""
    mm = imgset.mm(pid)
    exe_id = mm.exe_file_id
    exe_vmas = [v for v in mm.vmas if v.shmid == exe_id and v.status & VMA_AREA_REGULAR
                and not v.status & VMA_ANON_PRIVATE]
    if not exe_vmas:
        raise Untranslatable("the executable's mappings are not in the image")
    other_files = {imgset.path_of(v.shmid) for v in mm.vmas
                   if v.shmid and v.shmid != exe_id and not v.status & VMA_ANON_PRIVATE
                   and not shared.is_anon_shared(imgset, v)}  # checked by recode_shared
    if other_files:
        names = ", ".join(map(str, other_files))
        raise Untranslatable(f"process {pid} maps other files ({names}): "
                             f"libraries of the source ISA cannot be translated")
    template = exe_vmas[0]
    # text/rodata come from the target file; dumped copies there are source code
    for v in exe_vmas:
        if not v.prot & PROT_WRITE:
            drop_pages(imgset, pid, v.start, v.end)
    new = []
    for off, vaddr, filesz, _memsz, flags in target.loads:
        prot = ((PROT_READ if flags & PF_R else 0) | (PROT_WRITE if flags & PF_W else 0)
                | (PROT_EXEC if flags & PF_X else 0))
        v = schema.message_class("vma_entry")()
        v.CopyFrom(template)
        v.start, v.end, v.pgoff, v.prot = page_down(vaddr), page_up(vaddr + filesz), \
            page_down(off), prot
        new.append(v)
    for v in new:
        for o in mm.vmas:
            if o in exe_vmas:
                continue
            if o.start < v.end and v.start < o.end:
                raise Untranslatable(f"target segment {v.start:#x}-{v.end:#x} overlaps "
                                     f"{o.start:#x}-{o.end:#x}")
    keep = [v for v in mm.vmas if v not in exe_vmas]
    vmas = sorted([*keep, *new], key=lambda v: v.start)
    del mm.vmas[:]
    mm.vmas.extend(vmas)
    x = [(vaddr, vaddr + filesz) for _o, vaddr, filesz, _m, f in target.loads if f & PF_X]
    mm.mm_start_code = min(a for a, _ in x)
    mm.mm_end_code = max(b for _, b in x)
    mm.mm_start_data = max(vaddr for _o, vaddr, *_ in target.loads)
    mm.mm_end_data = max(vaddr + filesz for _o, vaddr, filesz, *_ in target.loads)
    reg = imgset.file_object(exe_id)
    if reg is None or reg.name != program_path:
        raise Untranslatable(f"process {pid} runs {reg.name if reg else '?'}, not "
                             f"{program_path}")
    reg.size = target.size


def isa_only_data(imgset, pid: int, md: Metadata, target: Elf, binary: bytes) -> list[str]:
    """The writable regions' per-ISA tails (after the units both ISAs share: the
    target's .init_array/.fini_array/.got and its ISA-only objects) take the target
    file's bytes, the bss tail zeros: the dumped bytes there are the source's own."""
    mem = imgset.memory(pid)
    done = []
    regions = md.layout.regions
    for name in ("data", "bss"):
        r = regions.get(name)
        if not r:
            continue
        start = r.base + r.common_size
        for off, vaddr, filesz, memsz, flags in target.loads:
            if not flags & PF_W or not vaddr <= start <= vaddr + memsz:
                continue
            end = vaddr + memsz if name == "bss" else vaddr + filesz
            if name == "data":
                # up to the end of the page: the rest of the source's tail goes too
                bss = regions.get("bss")
                end = max(end, min(page_up(end), bss.base if bss else page_up(end)))
            for run in mem.runs:
                a, b = max(start, run.vaddr), min(end, run.end)
                if a >= b or run.offset is None:
                    continue
                blob = bytearray(b - a)
                lo, hi = max(a, vaddr), min(b, vaddr + filesz)
                if lo < hi:
                    blob[lo - a:hi - a] = binary[off + lo - vaddr:off + hi - vaddr]
                mem.write(a, bytes(blob))
                done.append(f"{name} {a:#x}-{b:#x}")
    return done


def drop_empty_high_areas(imgset, pid: int, dst_end: int) -> None:
    """Mappings above the target's user address space that hold nothing (PROT_NONE,
    anonymous, no dumped page: guard areas) are dropped; anything else up there is
    untranslatable, and validation refuses it before the freeze.

    (Keeping a process from mapping above x86-64's 47 bits while on aarch64, by a
    PROT_NONE reservation of aarch64's upper half, was tried: stock CRIU cannot dump it
    again, its pagemap cache allocates 8 bytes per page of the longest private mapping,
    256 GiB for that one.)"""
    mm = imgset.mm(pid)
    mem = imgset.memory(pid)
    keep = [v for v in mm.vmas
            if not (v.end > dst_end and v.prot == 0 and v.status & VMA_ANON_PRIVATE
                    and not any(r.vaddr < v.end and v.start < r.end for r in mem.runs))]
    del mm.vmas[:]
    mm.vmas.extend(keep)


def special_areas(imgset, pid: int) -> dict[str, list]:
    mm = imgset.mm(pid)
    return {"vdso": [v for v in mm.vmas if v.status & VMA_AREA_VDSO],
            "vvar": [v for v in mm.vmas if v.status & VMA_AREA_VVAR],
            "vsyscall": [v for v in mm.vmas if v.status & VMA_AREA_VSYSCALL]}


def rewrite_special(imgset, pid: int, target_maps: dict[str, list[tuple[int, int]]],
                    vdso_image: bytes | None, machine: int) -> tuple[int, int]:
    """Drop [vsyscall]; [vvar] and [vdso] keep the vDSO's address but get the target
    kernel's sizes, and the dumped vDSO pages are replaced. Returns the source vDSO range
    (pointers into it must not survive)."""
    mm = imgset.mm(pid)
    areas = special_areas(imgset, pid)
    for v in areas["vsyscall"]:
        drop_pages(imgset, pid, v.start, v.end)
    if len(areas["vdso"]) != 1 or len(areas["vvar"]) > 1:
        raise Untranslatable(f"unexpected vDSO areas in process {pid}")
    vdso = areas["vdso"][0]
    vvar = areas["vvar"][0] if areas["vvar"] else None
    old_lo = min(vdso.start, vvar.start if vvar else vdso.start)
    old_hi = max(vdso.end, vvar.end if vvar else vdso.end)
    drop_pages(imgset, pid, old_lo, old_hi)
    vdso_size = _size(target_maps.get("vdso"), 2 * PAGE_SIZE)
    vvar_size = _size(target_maps.get("vvar"), 2 * PAGE_SIZE)
    if vdso_image is not None and len(vdso_image) != vdso_size:
        raise Untranslatable(f"target vDSO image is {len(vdso_image)} bytes, its area "
                             f"{vdso_size}")
    base = vdso.start
    vdso.end = base + vdso_size
    for v in (vdso, vvar):
        if v is not None:
            v.ClearField("madv")  # the target kernel's special mappings carry none
    if vvar is not None:
        vvar.start, vvar.end = base - vvar_size, base
    keep = [v for v in mm.vmas if not v.status & VMA_AREA_VSYSCALL]
    for v in keep:
        if v is vdso or v is vvar:
            continue
        lo, hi = (vvar.start if vvar else base), vdso.end
        if v.start < hi and lo < v.end:
            raise Untranslatable(f"target vDSO/vvar {lo:#x}-{hi:#x} would overlap "
                                 f"{v.start:#x}-{v.end:#x}")
    del mm.vmas[:]
    mm.vmas.extend(sorted(keep, key=lambda v: v.start))
    mem = imgset.memory(pid)
    mem.populate(base, vdso_size, flags=PE_PRESENT)
    mem.write(base, vdso_image if vdso_image is not None else empty_vdso(vdso_size, machine))
    return old_lo, old_hi


def _size(ranges, default: int) -> int:
    return ranges[0][1] - ranges[0][0] if ranges else default


def empty_vdso(size: int, machine: int) -> bytes:
    """A valid vDSO-shaped ELF that defines no symbol. CRIU's restorer parses the
    dumped vDSO and, finding none of the kernel's symbols, keeps it as a proxy; musl
    finds no clock_gettime in it and uses the system call. Used when the target
    kernel's own vDSO image is not at hand (the area must not keep source-ISA code)."""
    # layout: ehdr 0x0, phdrs 0x40 (2), dynamic 0xb0, hash 0x110, symtab 0x120, strtab 0x138
    dyn, hsh, sym, stt = 0xB0, 0x110, 0x120, 0x138
    eh = struct.pack("<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, b"\0" * 7,
                     3, machine, 1, 0, 0x40, 0, 0, 64, 56, 2, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, PF_R | PF_X, 0, 0, 0, size, size, PAGE_SIZE)
    dynp = struct.pack("<IIQQQQQQ", 2, PF_R, dyn, dyn, dyn, 0x60, 0x60, 8)
    dyns = struct.pack("<6q", 4, hsh, 5, stt, 6, sym) + struct.pack(
        "<6q", 10, 1, 11, 24, 0, 0)  # DT_HASH, DT_STRTAB, DT_SYMTAB, DT_STRSZ, DT_SYMENT
    hashtab = struct.pack("<4I", 1, 1, 0, 0)  # one bucket, one (null) chain entry
    out = bytearray(size)
    for at, blob in ((0, eh), (0x40, load), (0x78, dynp), (dyn, dyns), (hsh, hashtab),
                     (sym, bytes(24)), (stt, b"\0")):
        out[at:at + len(blob)] = blob
    return bytes(out)


def stack_auxv(imgset, pid: int) -> tuple[int, list[tuple[int, int]]]:
    """The auxiliary vector the process reads (on its stack; musl's libc.auxv points
    there): its address and pairs up to AT_NULL. CRIU's saved copy may be a subset (a
    restore keeps only what its own ISA's limit allows), so it is matched pair by pair."""
    mm = imgset.mm(pid)
    saved = list(mm.mm_saved_auxv)
    want = {(saved[i], saved[i + 1]) for i in range(0, len(saved) - 1, 2) if saved[i]}
    if not want:
        raise Untranslatable(f"process {pid} has no saved auxiliary vector")
    mem = imgset.memory(pid)
    first = struct.pack("<QQ", saved[0], saved[1])
    found = []
    for at in mem.find(first, mm.mm_start_stack, mm.mm_env_start):
        pairs, p = [], at
        while len(pairs) < 64 and mem.contains(p, 16):
            k, v = struct.unpack("<QQ", mem.read(p, 16))
            if k == 0:
                break
            pairs.append((k, v))
            p += 16
        if want <= set(pairs):
            found.append((at, pairs))
    if len(found) != 1:
        raise Untranslatable(f"the auxiliary vector on the stack of {pid} was not found")
    return found[0]


def rewrite_auxv(imgset, pid: int, target: Elf, src_vdso: tuple[int, int], isa: str,
                 facts: TargetFacts) -> None:
    """AT_* values a fresh process of the target ISA would have (the target host's own
    HWCAP when the template shows it), in the process's own copy on its stack and in
    mm_saved_auxv."""
    mm = imgset.mm(pid)
    at, pairs = stack_auxv(imgset, pid)
    values = {AT["AT_PHDR"]: target.phdr_addr, AT["AT_PHNUM"]: target.phnum,
              AT["AT_PHENT"]: 56, AT["AT_ENTRY"]: target.entry,
              **{AT[k]: facts.aux(isa, k) for k in ("AT_HWCAP", "AT_HWCAP2", "AT_MINSIGSTKSZ")}}
    new = [(k, values.get(k, v)) for k, v in pairs]
    mem = imgset.memory(pid)
    platform = dict(pairs).get(AT["AT_PLATFORM"])
    name = facts.platform or arch(isa).auxv.platform
    if platform:
        # The string sits below a random gap (arch_align_stack) that may reach an untouched
        # stack page CRIU did not dump: such bytes are zeros, and a longer name may need
        # that page.
        cur = read_stack(mem, platform, len(name))
        end = cur.find(b"\0")  # the old string's NUL, if within the new one's length
        # the kernel leaves padding after the platform string: a longer name fits
        if end >= 0 and any(cur[end:]):
            raise Untranslatable(f"no room for the {isa} AT_PLATFORM string")
        if end < 0:  # a shorter name: clear the rest of the old one
            rest = read_stack(mem, platform + len(name), 64)
            name += bytes(rest.index(b"\0") if b"\0" in rest else 0)
        if not mem.contains(platform, len(name)):
            mem.populate(platform, len(name))
        mem.write(platform, name)
    mem.write(at, b"".join(struct.pack("<QQ", k, v) for k, v in new))
    # The saved copy (what /proc/PID/auxv shows) holds the keys a process of the target
    # has, within its CRIU's AT_VECTOR_SIZE (restore refuses a longer vector); the copy
    # on the stack, which the program reads, keeps every pair.
    saved = [(k, v) for k, v in new if not facts.auxv or k in facts.auxv]
    saved = saved[:arch(isa).auxv.criu_auxv_size // 2 - 1] + [(0, 0)]
    del mm.mm_saved_auxv[:]
    mm.mm_saved_auxv.extend(x for kv in saved for x in kv)
    lo, hi = src_vdso
    if not lo <= dict(new).get(AT["AT_SYSINFO_EHDR"], lo) < hi:
        raise Untranslatable("AT_SYSINFO_EHDR does not point at the vDSO")


def fix_data_pointers(imgset, pid: int, idx: Index, src_vdso: tuple[int, int],
                      skip: list[tuple[int, int]], hwcap: int) -> list[str]:
    """Writable memory holding pointers into the source vDSO/vvar: musl's cached
    clock_gettime pointer goes back to its lazy initialiser; anything else is refused.
    Also writes the target HWCAP into musl's __hwcap. Returns what was changed."""
    mem = imgset.memory(pid)
    mm = imgset.mm(pid)
    sym = idx.md.symbol
    changed = []
    cache = sym("clock_gettime.lo::vdso_func") or sym("vdso_func")
    init = sym("cgt_init")
    lo, hi = src_vdso
    vdso = next(v for v in mm.vmas if v.status & VMA_AREA_VDSO)
    # the source vDSO's code: [base, old end); base itself is AT_SYSINFO_EHDR, valid on
    # both (a mapping just below ends exactly at the vvar start: not a vDSO pointer)
    base, vdso_end = vdso.start, max(vdso.end, hi)
    a = cache.addr(idx.src) if cache else None
    if cache and cache.at(idx.dst) and init and init.at(idx.dst) and a is not None:
        v = mem.read_u64(a) if mem.contains(a, 8) else None
        if v is not None and v != init.addr(idx.src):
            if not (lo <= v < hi or v == 0):
                raise Untranslatable(f"musl's vdso_func holds {v:#x}")
            mem.write_u64(a, init.addr(idx.dst))
            changed.append(f"vdso_func {v:#x} -> cgt_init")
    hw = sym("__hwcap")
    hw_at = hw.addr(idx.src) if hw else None
    if hw_at is not None and hw_at == hw.addr(idx.dst):  # type: ignore[union-attr]
        if mem.contains(hw_at, 8):
            mem.write_u64(hw_at, hwcap)
    # any other word pointing into the old vDSO/vvar is a cache we cannot translate
    for v in mm.vmas:
        if not v.prot & PROT_WRITE or v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR):
            continue
        for a0, data in scan(mem, v.start, v.end):  # bounded pieces: memory stays flat
            for off in stackrefs.words_in(data, base + 1, vdso_end):  # not its start
                addr = a0 + off
                if any(s <= addr < e for s, e in skip):
                    continue
                w = int.from_bytes(data[off:off + 8], "little")
                raise Untranslatable(f"memory at {addr:#x} holds a pointer into the "
                                     f"source vDSO ({w:#x})")
    return changed


def translate_pthread(src_mem, dst_mem, tp: int, src_isa: str, dst_isa: str) -> int:
    """musl's struct pthread from the source ISA's field order to the target's, at the
    same address (so pthread_t values, the thread list and robust list heads stay
    valid). Takes the source thread pointer, returns the target's."""
    s_isa, d_isa = arch(src_isa), arch(dst_isa)
    x, a = s_isa.pthread, d_isa.pthread
    td = s_isa.pthread_at(tp)
    raw = src_mem.read(td, x.size)

    def word(off: int) -> int:
        return int.from_bytes(raw[off:off + 8], "little")

    if word(x["self"]) != td:
        raise Untranslatable(f"no musl struct pthread at the thread pointer {tp:#x}")
    head = word(x["robust_head"])
    if head not in (0, td + x["robust_head"]):
        raise Untranslatable("a thread holds robust mutexes (kernel robust list)")
    out = bytearray(a.size)
    for name in ("self", "prev", "next", "sysinfo", "canary", "dtv"):
        out[a[name]:a[name] + 8] = raw[x[name]:x[name] + 8]
    # tid .. stdio_locks: the same fields in the same order on every ISA
    n = PTHREAD_COMMON_SIZE
    out[a["common"]:a["common"] + n] = raw[x["common"]:x["common"] + n]
    if head:
        out[a["robust_head"]:a["robust_head"] + 8] = (td + a["robust_head"]).to_bytes(8, "little")
    dst_mem.write(td, bytes(out))
    return d_isa.thread_pointer(td)


def translate_sigactions(tc, idx: Index) -> None:
    """Handlers are aligned functions; the source's SA_RESTORER trampoline becomes musl's
    target __restore_rt (signal numbers and SA_* flags are the same on both). A kernel
    that delivers no signal to a handler without a restorer (x86-64's) gets musl's."""
    for i, sa in enumerate(tc.sigactions):
        if sa.sigaction in (0, 1):
            continue
        twin = idx.func_twins.get(sa.sigaction)
        if twin != sa.sigaction:
            raise Untranslatable(f"signal {i + 1} handler {sa.sigaction:#x} is not an "
                                 f"aligned function")
        if sa.flags & SA_RESTORER:
            r = idx.func_twins.get(sa.restorer)
            if r is None:
                raise Untranslatable(f"signal {i + 1} restorer {sa.restorer:#x} unknown")
            sa.restorer = r
        elif idx.dst_isa.needs_sa_restorer:
            sa.flags |= SA_RESTORER
            sa.restorer = restore_rt(idx)


def restore_rt(idx: Index) -> int:
    s = idx.md.symbol("__restore_rt")
    if s is not None and s.at(idx.dst):
        return s.addr(idx.dst)  # type: ignore[return-value]
    raise Untranslatable(f"musl's __restore_rt is not in the {idx.dst} binary's symbols")
