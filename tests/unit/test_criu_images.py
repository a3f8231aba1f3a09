"""Unit tests of the CRIU image library on synthetic images (no daemon, no CRIU)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from docker_hmigrate.criu import (
    ImageFile,
    ImageSet,
    March,
    NotDumpedError,
    check_supported,
    isa_specific_parts,
    new,
    unknown_fields,
)
from docker_hmigrate.criu.__main__ import main as cli_main
from docker_hmigrate.criu.image import (
    IMG_COMMON_MAGIC,
    INVENTORY_MAGIC,
    KIND_BY_MAGIC,
    Entry,
)
from docker_hmigrate.criu.memory import PE_PARENT, PE_PRESENT, Memory
from tests.support.criu_images import (
    CORE,
    MARKER,
    PAGE,
    PAGEMAP,
    PIPES_DATA,
    PSTREE,
    STACK,
    aarch64_core,
    varint,
    write_set,
    x86_core,
)

# -- single images -----------------------------------------------------------------

def test_header_forms(tmp_path: Path) -> None:
    write_set(tmp_path)
    inv = (tmp_path / "inventory.img").read_bytes()
    assert struct.unpack_from("<I", inv)[0] == INVENTORY_MAGIC  # no common magic in front
    core = (tmp_path / "core-1.img").read_bytes()
    assert struct.unpack_from("<II", core) == (IMG_COMMON_MAGIC, CORE)
    (size,) = struct.unpack_from("<I", core, 8)
    assert len(core) == 12 + size  # one length-prefixed entry
    assert ImageFile.load(tmp_path / "pages-1.img").form == "raw"


def test_entries_round_trip_byte_exact(tmp_path: Path) -> None:
    write_set(tmp_path)
    for name in os.listdir(tmp_path):
        blob = (tmp_path / name).read_bytes()
        img = ImageFile.from_bytes(name, blob)
        assert img.form in ("img", "raw"), name
        assert img.to_bytes() == blob, name
        for e in img.entries:
            assert e.msg.SerializeToString() == e.raw  # canonical: re-serializes the same


def test_unknown_fields_preserved() -> None:
    core = x86_core(1, "app")
    known = core.SerializeToString()
    # a field from a newer CRIU (number 99, varint) and one inside thread_core (number 40)
    extra_top = varint(99 << 3) + varint(12345)
    tcore = core.thread_core.SerializeToString() + varint(40 << 3 | 2) + varint(3) + b"abc"
    blob = known + extra_top + varint(5 << 3 | 2) + varint(len(tcore)) + tcore
    image = struct.pack("<II", IMG_COMMON_MAGIC, CORE) + struct.pack("<I", len(blob)) + blob
    img = ImageFile.from_bytes("core-1.img", image)
    assert img.to_bytes() == image  # unchanged: written from the original bytes
    msg = img.entries[0].msg
    assert msg.thread_core.comm == "app"
    assert unknown_fields(msg) == ["#99", "thread_core.#40"]
    msg.thread_info.gpregs.ip = 0x999999  # changed: re-serialized, unknowns still there
    out = ImageFile.from_bytes("core-1.img", img.to_bytes())
    again = out.entries[0].msg
    assert again.thread_info.gpregs.ip == 0x999999
    assert extra_top in out.entries[0].raw and b"abc" in out.entries[0].raw
    again.thread_info.gpregs.ip = 0x401234
    assert out.entries[0].changed


def test_new_entry_requires_required_fields() -> None:
    img = ImageFile.new("pstree.img", PSTREE, [new("pstree_entry", pid=1)])
    with pytest.raises(Exception, match="ppid"):
        img.to_bytes()


def test_payload_after_entry() -> None:
    entry = new("pipe_data_entry", pipe_id=7, bytes=5)
    body = entry.SerializeToString()
    image = (struct.pack("<II", IMG_COMMON_MAGIC, PIPES_DATA)
             + struct.pack("<I", len(body)) + body + b"hello"
             + struct.pack("<I", len(body)) + body + b"world")
    img = ImageFile.from_bytes("pipes-data.img", image)
    assert [e.payload for e in img.entries] == [b"hello", b"world"]
    assert img.to_bytes() == image


def test_unknown_and_malformed_images_kept_opaque() -> None:
    odd = struct.pack("<II", IMG_COMMON_MAGIC, 0x12345678) + b"\x01\x02"
    img = ImageFile.from_bytes("newthing-1.img", odd)
    assert img.form == "opaque" and "unknown image magic" in img.error
    assert img.to_bytes() == odd
    cut = struct.pack("<II", IMG_COMMON_MAGIC, CORE) + struct.pack("<I", 100) + b"\x08"
    img = ImageFile.from_bytes("core-3.img", cut)
    assert img.form == "opaque" and "runs past the end" in img.error
    kept = ImageFile.from_bytes("fifo.img", struct.pack("<II", IMG_COMMON_MAGIC, 0x58364939))
    assert kept.form == "opaque" and "not interpreted" in kept.error
    assert KIND_BY_MAGIC[PAGEMAP].first == "pagemap_head"


# -- memory ------------------------------------------------------------------------

def make_memory(runs: list[tuple[int, int, int]]) -> Memory:
    entries = [new("pagemap_head", pages_id=3)]
    size = 0
    for vaddr, n, flags in runs:
        entries.append(new("pagemap_entry", vaddr=vaddr, compat_nr_pages=n, flags=flags))
        size += n * PAGE if flags & PE_PRESENT else 0
    pagemap = ImageFile.new("pagemap-1.img", PAGEMAP, entries)
    data = bytearray(i % 251 for i in range(size))
    return Memory(pagemap, ImageFile(name="pages-3.img", form="raw", data=data))


def test_memory_read_write_across_runs() -> None:
    # two adjacent runs: a read/write spanning the boundary goes to two places in pages
    mem = make_memory([(0x10000, 1, PE_PRESENT), (0x11000, 2, PE_PRESENT),
                       (0x20000, 1, PE_PARENT)])
    assert mem.pages_id == 3
    assert mem.read(0x10000, 4) == bytes([0, 1, 2, 3])
    mark = b"\xff\xfe\xfd\xfc"  # bytes the i % 251 filler never holds
    mem.write(0x10FFE, mark)
    assert mem.read(0x10FFC, 8)[2:6] == mark
    assert mem.pages.data[PAGE - 2:PAGE + 2] == mark
    mem.write_u64(0x12FF8, 0x1122334455667788)
    assert mem.read_u64(0x12FF8) == 0x1122334455667788
    assert mem.find(mark) == [0x10FFE]  # found across the run boundary
    assert mem.find(mark, start=0x10FFF) == []
    with pytest.raises(NotDumpedError, match="not dumped"):
        mem.read(0x13000, 1)
    with pytest.raises(NotDumpedError, match="not in this image"):
        mem.read(0x20000, 1)
    with pytest.raises(NotDumpedError):  # nothing written when any part is missing
        mem.write(0x12FFF, b"xy")
    assert mem.read(0x12FFF, 1) != b"x"
    assert mem.contains(0x10000, 3 * PAGE) and not mem.contains(0x10000, 3 * PAGE + 1)


def test_memory_populate_inserts_pages_in_order() -> None:
    mem = make_memory([(0x10000, 1, PE_PRESENT), (0x13000, 1, PE_PRESENT),
                       (0x20000, 1, PE_PARENT)])
    before = mem.read(0x13000, PAGE)
    assert mem.populate(0x10800, 0x2900) == 2  # pages 0x11000 and 0x12000
    assert mem.read(0x11000, 2 * PAGE) == bytes(2 * PAGE)
    assert mem.read(0x13000, PAGE) == before  # later pages moved, not lost
    mem.write(0x12FF0, b"grown stack")
    assert mem.populate(0x10000, 4 * PAGE) == 0
    with pytest.raises(NotDumpedError, match="parent"):
        mem.populate(0x1F000, 2 * PAGE)
    # the written pagemap + pages read back as the same memory
    pm = ImageFile.from_bytes("pagemap-1.img", mem.pagemap.to_bytes())
    vaddrs = [e.msg.vaddr for e in pm.entries[1:]]
    assert vaddrs == sorted(vaddrs) and 0x11000 in vaddrs
    again = Memory(pm, ImageFile(name="pages-3.img", form="raw", data=bytearray(mem.pages.data)))
    assert again.read(0x12FF0, 11) == b"grown stack" and again.read(0x13000, PAGE) == before


def test_memory_size_mismatch_refused() -> None:
    pagemap = ImageFile.new("pagemap-1.img", PAGEMAP, [
        new("pagemap_head", pages_id=1),
        new("pagemap_entry", vaddr=0, compat_nr_pages=2, flags=PE_PRESENT)])
    with pytest.raises(ValueError, match="holds 4096"):
        Memory(pagemap, ImageFile(name="pages-1.img", form="raw", data=bytearray(PAGE)))


# -- image sets --------------------------------------------------------------------

def test_imageset_api_and_byte_exact_save(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_set(src)
    s = ImageSet.load(src)
    assert s.inventory.img_version == 2
    assert s.pids == [1] and s.threads(1) == [1] and s.root_pid == 1
    assert s.arch == March.X86_64
    assert s.core(1).thread_info.gpregs.ip == 0x401234
    assert s.mm(1).exe_file_id == 1 and s.exe_path(1) == "/bin/app"
    assert s.files[1].reg.size == 8192
    assert [f.fd for f in s.fdinfo(1)] == [0]
    assert s.ids(1).files_id == 1
    assert s.vma_at(1, STACK + 5).start == STACK and s.vma_at(1, 0x10) is None
    mm = s.mm(1)
    env = s.memory(1).read(mm.mm_env_start, mm.mm_env_end - mm.mm_env_start)
    assert env.startswith(MARKER)
    s.save(dst)
    assert sorted(os.listdir(src)) == sorted(os.listdir(dst))
    for name in os.listdir(src):
        assert (src / name).read_bytes() == (dst / name).read_bytes(), name
    assert (dst.stat().st_mode & 0o777) == 0o700


def test_imageset_changes_are_saved(tmp_path: Path) -> None:
    write_set(tmp_path / "a")
    s = ImageSet.load(tmp_path / "a")
    s.core(1).thread_info.gpregs.ip = 0x404040
    s.memory(1).write(STACK, b"changed")
    s.save(tmp_path / "b")
    t = ImageSet.load(tmp_path / "b")
    assert t.core(1).thread_info.gpregs.ip == 0x404040
    assert t.memory(1).read(STACK, 7) == b"changed"
    assert (tmp_path / "a" / "mm-1.img").read_bytes() == (tmp_path / "b" / "mm-1.img").read_bytes()


def test_isa_parts_and_supported(tmp_path: Path) -> None:
    write_set(tmp_path)
    s = ImageSet.load(tmp_path)
    parts = "\n".join(isa_specific_parts(s))
    assert "core-1.img: core_entry.mtype = X86_64" in parts
    assert "ti_aarch64" in parts and "fs_base" in parts
    assert "vdso" in parts and "vvar" in parts
    assert "'/bin/app'" in parts and "mm_saved_auxv" in parts
    assert "sigactions for signals [2]" in parts
    assert check_supported(s) == []
    # a file of a kind this library does not read, and a pre-dump pagemap
    (tmp_path / "fifo.img").write_bytes(struct.pack("<II", IMG_COMMON_MAGIC, 0x58364939))
    (tmp_path / "weird.img").write_bytes(b"\x00" * 16)
    pm = ImageFile.load(tmp_path / "pagemap-1.img")
    pm.entries.append(Entry(msg=new("pagemap_entry", vaddr=0x900000, compat_nr_pages=1,
                                    flags=PE_PARENT)))
    pm.save(tmp_path / "pagemap-1.img")
    core = ImageFile.load(tmp_path / "core-1.img")
    core.entries[0].msg.thread_info.gpregs.MergeFromString(varint(77 << 3) + varint(1))
    core.save(tmp_path / "core-1.img")
    problems = check_supported(ImageSet.load(tmp_path))
    assert any(p.startswith("fifo.img:") for p in problems)
    assert any(p.startswith("weird.img: no CRIU magic") for p in problems)
    assert "pagemap-1.img: pages in a parent (pre-dump) image set" in problems
    assert "core-1.img: fields unknown to this library: ['thread_info.gpregs.#77']" in problems


def test_aarch64_core_and_cli(tmp_path: Path, capsys) -> None:
    write_set(tmp_path, core=aarch64_core())
    s = ImageSet.load(tmp_path)
    assert s.arch == March.AARCH64
    g = s.core(1).ti_aarch64.gpregs
    assert len(g.regs) == 31 and g.regs[30] == 130 and g.pc == 0x401000
    parts = isa_specific_parts(s)
    assert "ti_aarch64 (gpregs regs[31]" in parts[1]
    assert any("pac_keys (pointer authentication" in p for p in parts)
    assert cli_main(["show", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "arch AARCH64" in out and "pc=0x401000" in out and "lr=0x82" in out
    assert "vdso" in out and "/bin/app" in out and "not understood: none" in out
    assert cli_main(["check", str(tmp_path)]) == 0
    assert cli_main(["isa", str(tmp_path)]) == 0


def test_load_refuses_non_imageset(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="inventory.img"):
        ImageSet.load(tmp_path)


def test_entry_without_baseline_is_serialized() -> None:
    e = Entry(msg=new("fs_entry", cwd_id=1, root_id=2))
    assert e.changed and e.encode() == e.msg.SerializeToString()


def test_pure_python_protobuf_backend(tmp_path: Path) -> None:
    """The schemas need no C extension: the same round trip on protobuf's Python backend."""
    write_set(tmp_path)
    code = (
        "import sys; from google.protobuf.internal import api_implementation as a;"
        "assert a.Type() == 'python', a.Type();"
        "from docker_hmigrate.criu import ImageSet; s = ImageSet.load(sys.argv[1]);"
        "s.save(sys.argv[1] + '.out'); print(s.core(1).thread_info.gpregs.ip)"
    )
    env = dict(os.environ, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(0x401234)
    for name in os.listdir(tmp_path):
        assert (tmp_path / name).read_bytes() == Path(f"{tmp_path}.out/{name}").read_bytes()


def test_zombie_has_no_address_space(tmp_path: Path, capsys) -> None:
    write_set(tmp_path)
    pstree = ImageFile.load(tmp_path / "pstree.img")
    pstree.entries.append(Entry(msg=new("pstree_entry", pid=5, ppid=1, pgid=1, sid=1,
                                        threads=[5])))
    pstree.save(tmp_path / "pstree.img")
    zombie = new("core_entry", mtype=March.X86_64)
    zombie.tc.task_state, zombie.tc.exit_code, zombie.tc.personality = 0x06, 0, 0
    zombie.tc.flags, zombie.tc.blk_sigset, zombie.tc.comm = 0, 0, "gone"
    ImageFile.new("core-5.img", CORE, [zombie]).save(tmp_path / "core-5.img")
    s = ImageSet.load(tmp_path)
    assert s.pids == [1, 5] and not s.has_mm(5)
    assert check_supported(s) == []
    assert not any("-5.img" in p for p in isa_specific_parts(s) if not p.startswith("core-5"))
    assert cli_main(["show", str(tmp_path)]) == 0
    assert "no address space (task state 6)" in capsys.readouterr().out
