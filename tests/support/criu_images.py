"""CRIU image sets for tests: synthetic ones for unit tests (no daemon, no CRIU): magics,
cores, VMAs and a one-process set shaped like what CRIU writes; and checks of real ones."""

from __future__ import annotations

import os
from pathlib import Path

from docker_hmigrate.criu import FdType, ImageFile, ImageSet, March, new, unknown_fields
from docker_hmigrate.criu.image import INVENTORY_MAGIC
from docker_hmigrate.criu.memory import PE_PRESENT

CORE, MM, PSTREE, PAGEMAP, FILES = 0x55053847, 0x57492820, 0x50273030, 0x56084025, 0x56303138
IDS, FDINFO, PIPES_DATA = 0x54432030, 0x56213732, 0x56453709
PAGE = 4096
STACK = 0x7FFF0000_0000
MARKER = b"HM_MARKER=unit-test-marker"


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def x86_core(tid: int, comm: str) -> object:
    core = new("core_entry", mtype=March.X86_64)
    ti = core.thread_info
    ti.clear_tid_addr = 0x1000
    g = ti.gpregs
    for f in g.DESCRIPTOR.fields:
        if f.name != "mode":
            setattr(g, f.name, 0)
    g.ip, g.sp, g.fs_base, g.cs, g.ss = 0x401234, STACK + 0x800, 0x5000, 0x33, 0x2B
    fp = ti.fpregs
    for name in ("cwd", "swd", "twd", "fop", "rip", "rdp", "mxcsr", "mxcsr_mask"):
        setattr(fp, name, 0)
    fp.st_space.extend([0] * 32)
    fp.xmm_space.extend(range(64))
    ti.tls.add(entry_number=12, base_addr=0, limit=0, seg_32bit=False, contents_h=False,
               contents_l=False, read_exec_only=True, limit_in_pages=False,
               seg_not_present=True, usable=False)
    tc = core.tc
    tc.task_state, tc.exit_code, tc.personality, tc.flags, tc.blk_sigset = 1, 0, 0, 0, 0
    tc.comm = comm
    tc.sigactions.add(sigaction=0, flags=0, restorer=0, mask=0)
    tc.sigactions.add(sigaction=0x401500, flags=0x04000000, restorer=0x401600, mask=0)
    core.thread_core.futex_rla, core.thread_core.futex_rla_len = 0, 0
    core.thread_core.comm = comm
    return core


def aarch64_core() -> object:
    core = new("core_entry", mtype=March.AARCH64)
    t = core.ti_aarch64
    t.clear_tid_addr, t.tls = 0x2000, 0x7000
    t.gpregs.regs.extend(range(100, 131))
    t.gpregs.sp, t.gpregs.pc, t.gpregs.pstate = STACK + 0x700, 0x401000, 0x60000000
    t.fpsimd.vregs.extend([0] * 64)
    t.fpsimd.fpsr, t.fpsimd.fpcr = 0, 0
    t.pac_keys = b"\x32\x00"  # opaque: kept as CRIU wrote it
    core.thread_core.futex_rla, core.thread_core.futex_rla_len = 0, 0
    return core


def vma(start: int, end: int, status: int, shmid: int = 0, prot: int = 3) -> dict:
    return dict(start=start, end=end, pgoff=0, shmid=shmid, prot=prot, flags=0x22,
                status=status, fd=-1)


def reg(id_: int, name: str, **kw) -> object:
    fown = dict(uid=0, euid=0, signum=0, pid_type=0, pid=0)
    return new("file_entry", type=FdType.REG, id=id_,
               reg=dict(id=id_, flags=0, pos=0, fown=fown, name=name, **kw))


def write_set(d: Path, core=None) -> None:
    """A one-process image set: pid 1, executable /bin/app, stack with the marker."""
    d.mkdir(mode=0o700, exist_ok=True)
    env_start = STACK + 3 * PAGE + 0x100
    ids = dict(vm_id=1, files_id=1, fs_id=1, sighand_id=1)
    mm = new("mm_entry", mm_start_code=0x401000, mm_end_code=0x402000,
             mm_start_data=0x403000, mm_end_data=0x404000, mm_start_stack=STACK + 0x900,
             mm_start_brk=0x500000, mm_brk=0x500000, mm_arg_start=env_start - 0x10,
             mm_arg_end=env_start, mm_env_start=env_start,
             mm_env_end=env_start + len(MARKER) + 1, exe_file_id=1,
             mm_saved_auxv=[33, 0x7000_0000, 16, 0x178BFBFF, 0, 0],
             vmas=[vma(0x400000, 0x402000, 0x41, shmid=1, prot=5),
                   vma(0x6000_0000, 0x6000_2000, 0x1201, prot=1),
                   vma(0x7000_0000, 0x7000_2000, 0x209, prot=5),
                   vma(STACK, STACK + 4 * PAGE, 0x203)])
    pages = bytearray(b"\xcc" * PAGE) + bytearray(4 * PAGE)  # 1 code page, 4 stack pages
    pages[PAGE + (env_start - STACK):PAGE + (env_start - STACK) + len(MARKER)] = MARKER
    images = {
        "inventory.img": ImageFile.new("inventory.img", INVENTORY_MAGIC, [
            new("inventory_entry", img_version=2, fdinfo_per_id=True, root_ids=ids)]),
        "pstree.img": ImageFile.new("pstree.img", PSTREE, [
            new("pstree_entry", pid=1, ppid=0, pgid=1, sid=1, threads=[1])]),
        "core-1.img": ImageFile.new("core-1.img", CORE, [core or x86_core(1, "app")]),
        "ids-1.img": ImageFile.new("ids-1.img", IDS, [new("task_kobj_ids_entry", **ids)]),
        "mm-1.img": ImageFile.new("mm-1.img", MM, [mm]),
        "pagemap-1.img": ImageFile.new("pagemap-1.img", PAGEMAP, [
            new("pagemap_head", pages_id=1),
            new("pagemap_entry", vaddr=0x401000, compat_nr_pages=1, nr_pages=1,
                flags=PE_PRESENT),
            new("pagemap_entry", vaddr=STACK, compat_nr_pages=4, nr_pages=4,
                flags=PE_PRESENT)]),
        "pages-1.img": ImageFile(name="pages-1.img", form="raw", data=pages),
        "files.img": ImageFile.new("files.img", FILES, [reg(1, "/bin/app", size=8192)]),
        "fdinfo-1.img": ImageFile.new("fdinfo-1.img", FDINFO, [
            new("fdinfo_entry", id=1, flags=0, type=FdType.REG, fd=0)]),
    }
    for name, img in images.items():
        img.save(d / name)


def assert_schema_covers(s: ImageSet) -> None:
    """Every entry CRIU wrote re-serializes to its own bytes, with no unknown field: our
    schema covers what this CRIU writes, so recode's changed entries stay canonical."""
    for name, img in s.images.items():
        for i, e in enumerate(img.entries):
            assert e.msg.SerializeToString() == e.raw, f"{name}[{i}] not canonical"
            assert unknown_fields(e.msg) == [], f"{name}[{i}]: {unknown_fields(e.msg)}"


def assert_identical(a: Path, b: Path) -> None:
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    for name in os.listdir(a):
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs"
