"""Anonymous shared memory between the processes of a container (nginx's master and
worker: MAP_SHARED|MAP_ANONYMOUS, or MAP_SHARED of /dev/zero).

What CRIU writes for it: CRIU 4.2.1 (x86-64) and 4.1.1 (aarch64) both dump such a
mapping as a memfd: each process's VMA has VMA_AREA_MEMFD|VMA_FILE_SHARED and `shmid` =
the id of a MEMFD file_entry in files.img, whose `inode_id` names a memfd_inode_entry in
memfd.img (name "/dev/zero", size, `shmid` = the kernel's inode number); the object's
pages are in pagemap-shmem-<inode shmid>.img (runs keyed by offset in the object, not by
address) and its pages-<pages_id>.img. Older CRIUs write VMA_ANON_SHARED with `shmid` =
the inode number directly (no memfd.img): both forms are accepted.

Why its contents pass through untranslated: the toolchain places every function and
data object at the same address on both ISAs, CRIU maps the object at the same address
in every process, and both ISAs are little-endian LP64 with musl's same struct layouts.
So integers, locks (nginx's shmtx holds the holder's pid: pids are kept) and pointers to
data (nginx's slab pools point into themselves and at aligned objects) mean the same on
aarch64. What would not: a code pointer other than a function entry, a pointer into a
thread stack (rebuilt in the target's frame layout), into the vDSO/vvar (replaced), or
into an ISA-only part of the executable. `check_contents` refuses a set whose shared
memory holds any word that looks like one of those (a false alarm refuses, never
corrupts). A thread's stack or TLS inside shared memory is refused too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from docker_hmigrate.criu.memory import (
    PAGE_SIZE,
    PE_PARENT,
    PE_PRESENT,
    entry_flags,
    entry_nr_pages,
)
from docker_hmigrate.criu.schema import FdType
from docker_hmigrate.recode.frames import Index, Untranslatable

VMA_AREA_REGULAR = 1 << 0
VMA_AREA_STACK = 1 << 1
VMA_AREA_VSYSCALL = 1 << 2
VMA_AREA_VDSO = 1 << 3
VMA_FILE_SHARED = 1 << 7
VMA_ANON_SHARED = 1 << 8
VMA_AREA_SYSVIPC = 1 << 10
VMA_AREA_VVAR = 1 << 12
VMA_AREA_MEMFD = 1 << 14
PROT_EXEC = 4

ANON_NAME = "/dev/zero"  # what the kernel calls an anonymous shared mapping's file
SHMEM_PAGEMAP = "pagemap-shmem-{}.img"


@dataclass
class SharedObject:
    """One anonymous shared memory object and the VMAs (of any process) mapping it."""

    shmid: int  # names pagemap-shmem-<shmid>.img
    size: int
    file_id: int | None  # the MEMFD file_entry id (CRIU 4.x form), None: VMA_ANON_SHARED
    vmas: list[tuple[int, object]] = field(default_factory=list)  # (pid, vma_entry)


def memfd_inode(imgset, file_id: int):
    """The memfd_inode_entry behind a MEMFD file id, or None."""
    fe = imgset.files.get(file_id)
    if fe is None or fe.type != FdType.MEMFD or not fe.HasField("memfd"):
        return None
    for inode in imgset.entries("memfd.img"):
        if inode.inode_id == fe.memfd.inode_id:
            return inode
    return None


def is_anon_shared(imgset, vma) -> bool:
    """Whether a VMA maps anonymous shared memory (either of CRIU's forms)."""
    if vma.status & VMA_AREA_SYSVIPC:
        return False
    if vma.status & VMA_ANON_SHARED:
        return True
    if vma.status & VMA_AREA_MEMFD:
        inode = memfd_inode(imgset, vma.shmid)
        # a memfd_create()d object is named "memfd:..."; only /dev/zero is anonymous
        return inode is not None and inode.name == ANON_NAME and not inode.hugetlb
    return False


def shared_objects(imgset) -> dict[int, SharedObject]:
    """Anonymous shared objects by shmid (the key of their pagemap-shmem image)."""
    out: dict[int, SharedObject] = {}
    for pid in imgset.pids:
        if not imgset.has_mm(pid):
            continue
        for v in imgset.mm(pid).vmas:
            if not is_anon_shared(imgset, v):
                continue
            if v.status & VMA_AREA_MEMFD:
                inode = memfd_inode(imgset, v.shmid)
                shmid, size, fid = inode.shmid, inode.size, v.shmid
            else:
                shmid, size, fid = v.shmid, 0, None
            obj = out.setdefault(shmid, SharedObject(shmid, size, fid))
            obj.vmas.append((pid, v))
            if fid is None:
                obj.size = max(obj.size, v.pgoff + v.end - v.start)
    return out


def unsupported(imgset) -> list[str]:
    """Shared mappings this recode does not translate: SysV shm, shared file mappings,
    memfd_create()d objects, hugetlb. One line each; [] if none."""
    problems = []
    for pid in imgset.pids:
        if not imgset.has_mm(pid):
            continue
        exe = imgset.mm(pid).exe_file_id
        for v in imgset.mm(pid).vmas:
            where = f"process {pid} {v.start:#x}-{v.end:#x}"
            if v.status & VMA_AREA_SYSVIPC:
                problems.append(f"{where}: SysV shared memory")
            elif v.status & (VMA_AREA_MEMFD | VMA_ANON_SHARED) and not is_anon_shared(
                    imgset, v):
                inode = memfd_inode(imgset, v.shmid)
                problems.append(f"{where}: memfd {inode.name if inode else '?'!r}"
                                f"{' (hugetlb)' if inode and inode.hugetlb else ''}")
            elif v.status & VMA_FILE_SHARED and not v.status & VMA_AREA_MEMFD \
                    and v.shmid != exe:
                problems.append(f"{where}: shared mapping of {imgset.path_of(v.shmid)!r}")
    return problems


def shmem_pages(imgset, shmid: int) -> list[tuple[int, bytes]]:
    """(offset in the object, bytes) of the dumped pages of a shared object."""
    name = SHMEM_PAGEMAP.format(shmid)
    img = imgset.images.get(name)
    if img is None or img.form != "img":
        return []  # never touched: nothing dumped, nothing to check
    pages = imgset.image(f"pages-{img.entries[0].msg.pages_id}.img")
    out, offset = [], 0
    for e in img.entries[1:]:
        n, flags = entry_nr_pages(e.msg), entry_flags(e.msg)
        if flags & PE_PARENT:
            raise Untranslatable(f"{name}: pages in a parent (pre-dump) image set")
        if flags & PE_PRESENT:
            out.append((e.msg.vaddr, bytes(pages.data[offset:offset + n * PAGE_SIZE])))
            offset += n * PAGE_SIZE
    if offset != len(pages.data):
        raise Untranslatable(f"{name} describes {offset} bytes, its pages image holds "
                             f"{len(pages.data)}")
    return out


def _forbidden_ranges(imgset, idx: Index) -> list[tuple[int, int, str]]:
    """Address ranges whose meaning changes with the ISA: stacks, vDSO/vvar/vsyscall,
    the executable's code (function entries excepted, checked apart) and the ISA-only
    tails of its regions."""
    out = []
    for pid in imgset.pids:
        if not imgset.has_mm(pid):
            continue
        mm = imgset.mm(pid)
        sps = set()
        for tid in imgset.threads(pid):
            sps.add(idx.src_isa.read_regs(imgset.core(tid)).sp)
        for v in mm.vmas:
            if v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL):
                out.append((v.start, v.end, "the vDSO/vvar"))
            elif v.status & VMA_AREA_STACK or any(v.start <= sp < v.end for sp in sps) \
                    or v.start <= mm.mm_start_stack < v.end:
                out.append((v.start, v.end, "a thread stack"))
            elif v.shmid == mm.exe_file_id and v.prot & PROT_EXEC:
                out.append((v.start, v.end, "code"))
    for name, r in idx.md.layout.regions.items():
        lo = r.base + r.common_size
        hi = r.base + r.max_size
        if lo < hi:
            out.append((lo, hi, f"the ISA-only part of .{name}"))
    return out


def check_contents(imgset, idx: Index) -> list[str]:
    """Refuse shared memory holding anything whose meaning depends on the ISA (see the
    module's doc); returns one line per object checked."""
    objs = shared_objects(imgset)
    if not objs:
        return []
    ranges = sorted(_forbidden_ranges(imgset, idx))
    for pid in imgset.pids:
        for tid in imgset.threads(pid):
            regs = idx.src_isa.read_regs(imgset.core(tid))
            for what, a in (("stack pointer", regs.sp), ("thread pointer", regs.tp)):
                for obj in objs.values():
                    for _p, v in obj.vmas:
                        if v.start <= a < v.end:
                            raise Untranslatable(f"thread {tid}'s {what} {a:#x} is in shared "
                                                 f"memory")
    done = []
    for obj in objs.values():
        starts = {v.start - v.pgoff for _p, v in obj.vmas}
        if len(starts) != 1:
            raise Untranslatable(f"shared memory {obj.shmid} is mapped at different "
                                 f"addresses in its processes ({len(starts)} places)")
        base = starts.pop()
        words = 0
        for off, data in shmem_pages(imgset, obj.shmid):
            for i, (w,) in enumerate(struct.iter_unpack("<Q", data)):
                if w < 0x10000:
                    continue  # small integers: counters, flags, pids
                words += 1
                for lo, hi, what in ranges:
                    if lo <= w < hi:
                        if what == "code" and idx.func_twins.get(w) == w:
                            break  # an aligned function's entry: the same on both ISAs
                        raise Untranslatable(
                            f"shared memory at {base + off + 8 * i:#x} holds {w:#x}, a "
                            f"pointer into {what}: not translatable")
        done.append(f"shared memory {base:#x}+{obj.size:#x} ({len(obj.vmas)} mappings, "
                    f"{words} non-small words): data, kept as is")
    return done


def portable_shmem_pagemaps(imgset) -> None:
    """Both page counts in every pagemap-shmem run (see process.portable_pagemap: the
    target's CRIU 4.1 reads only compat_nr_pages)."""
    for name, img in imgset.images.items():
        if not name.startswith("pagemap-shmem-") or img.form != "img":
            continue
        for e in img.entries[1:]:
            n = entry_nr_pages(e.msg)
            if n >= 1 << 32:
                raise Untranslatable(f"{name}: a run of {n} pages does not fit CRIU 4.1")
            if e.msg.compat_nr_pages != n or not e.msg.HasField("nr_pages"):
                e.msg.compat_nr_pages = n
                e.msg.nr_pages = n


def recode_shared(src, dst, idx: Index) -> list[str]:
    """The whole-set step for shared memory: refuse (reading the source set) what is not
    anonymous shared memory or holds ISA-dependent words; make the edited set's shmem
    pagemaps readable by the target's CRIU."""
    bad = unsupported(src)
    if bad:
        raise Untranslatable("shared mappings this recode does not translate: "
                             + "; ".join(bad))
    done = check_contents(src, idx)
    portable_shmem_pagemaps(dst)
    return done

