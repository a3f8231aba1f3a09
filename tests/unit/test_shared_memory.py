"""Unit tests of cross-ISA shared memory (recode/shared.py) and the template alignment
for several processes (recode/template.py), on synthetic image sets shaped like what
CRIU 4.2.1 / 4.1.1 wrote for nginx in the lab (master 1 + worker, one memfd of /dev/zero)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from docker_hmigrate.criu import FdType, ImageFile, ImageSet, new
from docker_hmigrate.criu.image import INVENTORY_MAGIC
from docker_hmigrate.criu.memory import PE_PRESENT
from docker_hmigrate.isa import X86_64
from docker_hmigrate.migrate import anonymous_shared
from docker_hmigrate.recode import shared, template
from docker_hmigrate.recode.frames import Untranslatable
from docker_hmigrate.toolchain import contract
from tests.support.criu_images import (
    CORE,
    FDINFO,
    FILES,
    IDS,
    MM,
    PAGE,
    PAGEMAP,
    PSTREE,
    STACK,
    reg,
    vma,
    x86_core,
)

MEMFD, EPOLL_DATA = 0x48453499, 0x7F20BCB5A0A0
SHM = 0x7F20BCB3E000
FOWN = dict(uid=0, euid=0, signum=0, pid_type=0, pid=0)
ANON_SHARED_MEMFD = 0x4081  # VMA_AREA_REGULAR | VMA_FILE_SHARED | VMA_AREA_MEMFD


class FakeIndex:
    """What shared.check_contents reads from frames.Index."""

    def __init__(self, funcs=()):
        self.func_twins = {f: f for f in funcs}
        self.src_isa = X86_64
        self.md = contract.load({"layout": {"regions": {"text": {
            "base": "0x401000", "common_size": 0x800, "max_size": 0x900}}}})


def image_set(worker: int = 7, shmid: int = 22151, shared_words: bytes = b"",
              memfd_name: str = "/dev/zero", epoll_data: int = EPOLL_DATA,
              extra_fd: bool = False) -> ImageSet:
    """Master (pid 1) and worker sharing one page, worker with an epoll watching fd 3."""
    images: dict[str, ImageFile] = {}

    def add(name, magic, msgs):
        images[name] = ImageFile.new(name, magic, msgs)

    add("inventory.img", INVENTORY_MAGIC, [new("inventory_entry", img_version=2,
                                               fdinfo_per_id=True)])
    add("pstree.img", PSTREE, [new("pstree_entry", pid=1, ppid=0, pgid=1, sid=1, threads=[1]),
                               new("pstree_entry", pid=worker, ppid=1, pgid=1, sid=1,
                                   threads=[worker])])
    pages = bytearray()
    for n, pid in enumerate((1, worker)):
        core = x86_core(pid, "nginx")
        core.thread_info.gpregs.sp = STACK + 0x800 - 0x100 * n
        add(f"core-{pid}.img", CORE, [core])
        add(f"ids-{pid}.img", IDS, [new("task_kobj_ids_entry", vm_id=n + 2, files_id=n + 2,
                                        fs_id=n + 2, sighand_id=n + 2)])
        add(f"mm-{pid}.img", MM, [new(
            "mm_entry", mm_start_code=0x401000, mm_end_code=0x402000, mm_start_data=0x403000,
            mm_end_data=0x404000, mm_start_stack=STACK + 0x900, mm_start_brk=0x500000,
            mm_brk=0x500000, mm_arg_start=0, mm_arg_end=0, mm_env_start=0, mm_env_end=0,
            exe_file_id=1,
            vmas=[vma(0x400000, 0x402000, 0x41, shmid=1, prot=5),
                  {**vma(SHM, SHM + PAGE, ANON_SHARED_MEMFD, shmid=2), "flags": 1},
                  vma(STACK, STACK + 4 * PAGE, 0x203)])])
        add(f"pagemap-{pid}.img", PAGEMAP, [
            new("pagemap_head", pages_id=n + 2),
            new("pagemap_entry", vaddr=STACK, compat_nr_pages=0, nr_pages=4, flags=PE_PRESENT)])
        images[f"pages-{n + 2}.img"] = ImageFile(name=f"pages-{n + 2}.img", form="raw",
                                                 data=bytearray(4 * PAGE))
        fds = [new("fdinfo_entry", id=3, flags=0, type=FdType.INETSK, fd=3)]
        if pid == worker:
            fds.append(new("fdinfo_entry", id=11, flags=0, type=FdType.EVENTPOLL, fd=6))
            if extra_fd:
                fds.append(new("fdinfo_entry", id=12, flags=0, type=FdType.INETSK, fd=8))
        add(f"fdinfo-{n + 2}.img", FDINFO, fds)
    pages += shared_words.ljust(PAGE, b"\0")
    add(f"pagemap-shmem-{shmid}.img", PAGEMAP, [
        new("pagemap_head", pages_id=1),
        new("pagemap_entry", vaddr=0, compat_nr_pages=0, nr_pages=1, flags=PE_PRESENT)])
    images["pages-1.img"] = ImageFile(name="pages-1.img", form="raw", data=pages)
    inode = new("memfd_inode_entry", uid=0, gid=0, size=PAGE, shmid=shmid, seals=1,
                inode_id=1, mode=0o100777)
    inode.name = memfd_name  # new()'s own first parameter is called name
    add("memfd.img", MEMFD, [inode])
    epoll = new("file_entry", type=FdType.EVENTPOLL, id=11)
    epoll.epfd.id, epoll.epfd.flags = 11, 2
    epoll.epfd.fown.CopyFrom(new("fown_entry", **FOWN))
    epoll.epfd.tfd.add(id=0, tfd=3, events=8217, data=epoll_data)
    isk = new("file_entry", type=FdType.EVENTFD, id=3)  # its type does not matter here
    isk.efd.id, isk.efd.flags, isk.efd.counter = 3, 2, 0
    isk.efd.fown.CopyFrom(new("fown_entry", **FOWN))
    add("files.img", FILES, [
        reg(1, "/nginx", size=8192),
        new("file_entry", type=FdType.MEMFD, id=2,
            memfd=dict(id=2, flags=0, pos=0, fown=FOWN, inode_id=1)),
        isk, epoll])
    return ImageSet(images)


def test_memfd_of_dev_zero_is_anonymous_shared_memory() -> None:
    s = image_set()
    objs = shared.shared_objects(s)
    assert list(objs) == [22151]
    obj = objs[22151]
    assert obj.size == PAGE and obj.file_id == 2 and sorted(p for p, _v in obj.vmas) == [1, 7]
    assert shared.unsupported(s) == []
    assert shared.shmem_pages(s, 22151) == [(0, bytes(PAGE))]


def test_shared_data_passes_and_pagemap_becomes_portable() -> None:
    # nginx's page: lock, wait, connection counter: integers; a pointer into the page
    words = struct.pack("<QQ", 0, 0) + bytes(112) + struct.pack("<QQ", 2, SHM + 8)
    s = image_set(shared_words=words)
    done = shared.recode_shared(s, s, FakeIndex())
    assert len(done) == 1 and "kept as is" in done[0]
    e = s.images["pagemap-shmem-22151.img"].entries[1].msg
    assert e.compat_nr_pages == e.nr_pages == 1


@pytest.mark.parametrize("word,what", [(STACK + 0x10, "a thread stack"),
                                       (0x401234, "code"),
                                       (0x401000 + 0x880, "code")])
def test_isa_dependent_words_in_shared_memory_are_refused(word: int, what: str) -> None:
    s = image_set(shared_words=struct.pack("<QQ", 1, word))
    with pytest.raises(Untranslatable, match=f"pointer into {what}"):
        shared.check_contents(s, FakeIndex())


def test_aligned_function_pointer_in_shared_memory_passes() -> None:
    s = image_set(shared_words=struct.pack("<Q", 0x401234))
    assert shared.check_contents(s, FakeIndex(funcs=[0x401234]))


def test_memfd_create_objects_and_sysv_are_refused() -> None:
    s = image_set(memfd_name="memfd:cache")
    assert "memfd 'memfd:cache'" in shared.unsupported(s)[0]
    with pytest.raises(Untranslatable, match="does not translate"):
        shared.recode_shared(s, s, FakeIndex())
    s = image_set()
    s.mm(7).vmas[1].status = 0x401  # VMA_AREA_SYSVIPC
    assert any("SysV" in p for p in shared.unsupported(s))


def test_probe_lines_anonymous_or_not() -> None:
    assert anonymous_shared("pid 21762: 7f20bcb3e000-7f20bcb3f000 /dev/zero (deleted)")
    assert not anonymous_shared("pid 3: 7f00-7f01 /SYSV00000000 (deleted)")
    assert not anonymous_shared("pid 3: 7f00-7f01 /memfd:x (deleted)")
    assert not anonymous_shared("pid 3: 7f00-7f01 /data/file")


def save(s: ImageSet, d: Path) -> Path:
    s.save(d)
    return d


def test_template_prepare_lines_up_pids_shared_memory_and_epoll(tmp_path: Path) -> None:
    rec = save(image_set(worker=7, shmid=22151), tmp_path / "rec")
    tpl = save(image_set(worker=8, shmid=2, epoll_data=0xFFFF8ABD0000), tmp_path / "tpl")
    assert template.prepare(rec, tpl) == {1: 1, 8: 7}
    assert (tpl / "ids-7.img").exists() and not (tpl / "ids-8.img").exists()
    assert (rec / "pagemap-shmem-2.img").exists() and not (rec / "pagemap-shmem-22151.img").exists()
    r, t = ImageSet.load(rec), ImageSet.load(tpl)
    assert r.mm(7).vmas[1].shmid == 2  # the template's memfd file id
    assert [x.data for x in t.files[11].epfd.tfd] == [EPOLL_DATA]  # the source's pointer


def test_template_prepare_refuses_a_connection_in_flight(tmp_path: Path) -> None:
    rec = save(image_set(extra_fd=True), tmp_path / "rec")
    tpl = save(image_set(worker=8, shmid=2), tmp_path / "tpl")
    with pytest.raises(Untranslatable, match="fd 8: INETSK"):
        template.prepare(rec, tpl)


def test_template_prepare_refuses_other_process_trees(tmp_path: Path) -> None:
    rec = save(image_set(), tmp_path / "rec")
    one = image_set(worker=8, shmid=2)
    one.images["pstree.img"].entries.pop()
    tpl = save(one, tmp_path / "tpl")
    with pytest.raises(Untranslatable, match="cannot be lined up"):
        template.prepare(rec, tpl)
