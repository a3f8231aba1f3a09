"""The cross-ISA data path in bounded memory: image contents left on disk (FileBytes),
memory scanned in pieces, image sets saved by copy or link, uploads streamed as tar."""

from __future__ import annotations

import io
import os
import random
import stat
import tarfile
from pathlib import Path

import pytest

from docker_hmigrate.criu import ImageSet
from docker_hmigrate.criu.filebytes import PAGE, FileBytes
from docker_hmigrate.criu.image import ImageFile
from docker_hmigrate.criu.memory import PE_PARENT, PE_PRESENT, Memory, scan
from docker_hmigrate.criu.schema import new
from docker_hmigrate.recode import process
from docker_hmigrate.transfer import _StreamReader, tar_stream
from tests.support.criu_images import STACK, write_set

PAGEMAP = 0x56084025


def pattern(n_pages: int) -> bytes:
    """Every page distinct, every byte position within a page distinct."""
    return b"".join(bytes((p * 7 + i) % 251 for i in range(PAGE)) for p in range(n_pages))


def backed(tmp_path: Path, data: bytes, name: str = "pages-1.img") -> tuple[Path, FileBytes]:
    p = tmp_path / name
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return p, FileBytes.open(p)


# -- FileBytes ---------------------------------------------------------------------

def test_reads_come_from_the_file_and_edits_hold_only_their_pages(tmp_path: Path) -> None:
    orig = pattern(64)
    p, fb = backed(tmp_path, orig)
    assert len(fb) == len(orig) and fb.held == 0 and fb.whole_file() is not None
    assert fb[PAGE - 3:PAGE + 5] == orig[PAGE - 3:PAGE + 5]
    fb[10 * PAGE + 100:10 * PAGE + 108] = b"ABCDEFGH"
    assert fb.held == PAGE  # one page pulled in, not the file
    fb[11 * PAGE - 2:11 * PAGE + 2] = b"wxyz"  # straddles pages 10 and 11: joined
    assert fb.held == 2 * PAGE and fb.whole_file() is None
    want = bytearray(orig)
    want[10 * PAGE + 100:10 * PAGE + 108] = b"ABCDEFGH"
    want[11 * PAGE - 2:11 * PAGE + 2] = b"wxyz"
    assert fb[:] == bytes(want) and fb == want
    assert p.read_bytes() == orig  # the backing file is never written
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert fb.write_to(fd) == len(want)
    finally:
        os.close(fd)
    assert out.read_bytes() == bytes(want)


def test_a_held_area_edited_word_by_word_stays_one_piece(tmp_path: Path) -> None:
    orig = pattern(16)
    _p, fb = backed(tmp_path, orig)
    fb[4 * PAGE:8 * PAGE] = bytes(4 * PAGE)  # a stack cleared, then rebuilt
    for a in range(4 * PAGE, 8 * PAGE, 64):
        fb[a:a + 8] = a.to_bytes(8, "little")
    assert fb.held == 4 * PAGE and len(fb._segs) == 3  # file, held, file
    assert fb[5 * PAGE:5 * PAGE + 8] == (5 * PAGE).to_bytes(8, "little")
    assert fb[8 * PAGE:] == orig[8 * PAGE:]


def test_insert_and_delete_keep_the_rest_in_order(tmp_path: Path) -> None:
    orig = pattern(8)
    _p, fb = backed(tmp_path, orig)
    fb[3 * PAGE:3 * PAGE] = bytes(2 * PAGE)  # populate: zero pages inserted
    del fb[7 * PAGE:8 * PAGE]  # drop_pages: the old page 5 goes
    want = orig[:3 * PAGE] + bytes(2 * PAGE) + orig[3 * PAGE:5 * PAGE] + orig[6 * PAGE:]
    assert len(fb) == len(want) and fb[:] == want
    assert fb.held == 2 * PAGE  # the inserted zeros only


def test_random_edits_match_a_bytearray(tmp_path: Path) -> None:
    """The bytearray operations the image code uses, on both, in a fixed random order."""
    rnd = random.Random(11)
    model = bytearray(pattern(32))
    _p, fb = backed(tmp_path, bytes(model))
    for _ in range(300):
        op = rnd.choice(["write", "write", "read", "insert", "delete"])
        lo = rnd.randrange(0, len(model) + 1)
        hi = min(len(model), lo + rnd.choice([1, 8, 100, PAGE, 3 * PAGE + 5]))
        if op == "write":
            payload = rnd.randbytes(hi - lo)
            model[lo:hi] = payload
            fb[lo:hi] = payload
        elif op == "insert":
            k = rnd.choice([PAGE, 2 * PAGE])
            model[lo:lo] = bytes(k)
            fb[lo:lo] = bytes(k)
        elif op == "delete" and len(model) > 8 * PAGE:
            del model[lo:hi]
            del fb[lo:hi]
        assert len(fb) == len(model)
        assert fb[lo:hi] == bytes(model[lo:hi])
    assert fb[:] == bytes(model)
    got = b"".join(bytes(c) for _o, c in fb.chunks(size=3 * PAGE))
    assert got == bytes(model)


def test_only_contiguous_slices() -> None:
    fb = FileBytes(None, [(0, 4, bytearray(b"abcd"))])
    assert fb[1:3] == b"bc" and bytes(fb) == b"abcd"
    with pytest.raises(TypeError):
        fb[::2]  # noqa: B018
    with pytest.raises(TypeError):
        fb[0]  # type: ignore[index]  # noqa: B018


# -- memory on disk ----------------------------------------------------------------

def lazy_memory(tmp_path: Path, runs: list[tuple[int, int, int]]) -> tuple[Memory, bytes]:
    entries = [new("pagemap_head", pages_id=3)]
    n = 0
    for vaddr, k, flags in runs:
        entries.append(new("pagemap_entry", vaddr=vaddr, compat_nr_pages=k, flags=flags))
        n += k if flags & PE_PRESENT else 0
    data = pattern(n)
    _p, fb = backed(tmp_path, data, "pages-3.img")
    pagemap = ImageFile.new("pagemap-1.img", PAGEMAP, entries)
    return Memory(pagemap, ImageFile(name="pages-3.img", form="raw", data=fb)), data


def test_pagemap_offsets_on_a_file(tmp_path: Path) -> None:
    """The pagemap says which page lies where in pages-N.img: runs in pagemap order,
    parent runs taking no room."""
    mem, data = lazy_memory(tmp_path, [(0x10000, 2, PE_PRESENT), (0x20000, 1, PE_PARENT),
                                       (0x30000, 3, PE_PRESENT)])
    assert [r.offset for r in mem.runs] == [0, None, 2 * PAGE]
    assert mem.read(0x31000, 16) == data[3 * PAGE:3 * PAGE + 16]
    mem.write_u64(0x30ff8, 0x1122334455667788)
    assert mem.read_u64(0x30ff8) == 0x1122334455667788
    assert mem.pages.data.held == PAGE
    mem.write(0x31ffc, b"\xfe\xff\xfe\xff" * 2)  # bytes the % 251 filler never holds
    assert mem.find(b"\xfe\xff" * 4) == [0x31ffc]
    assert mem.find(b"\xfe\xff" * 4, end=0x32000) == []
    assert mem.populate(0x12000, PAGE) == 1  # a grown stack: zeros after run 1
    assert mem.read(0x12000, PAGE) == bytes(PAGE)
    assert mem.read(0x31000, 16) == data[3 * PAGE:3 * PAGE + 16]  # moved, not lost


def test_scan_pieces_are_bounded_aligned_and_cover_the_dump(tmp_path: Path) -> None:
    mem, data = lazy_memory(tmp_path, [(0x10000, 5, PE_PRESENT), (0x20000, 1, PE_PARENT),
                                       (0x30000, 7, PE_PRESENT)])
    pieces = list(scan(mem, 0x10800, 0x36000, size=2 * PAGE))
    assert all(len(b) <= 2 * PAGE and a % 8 == 0 for a, b in pieces)
    got = b"".join(b for _a, b in pieces)
    assert got == data[0x800:5 * PAGE] + data[5 * PAGE:11 * PAGE]
    assert [a for a, _b in pieces][:3] == [0x10800, 0x12000, 0x14000]


def test_drop_pages_cuts_only_the_dropped_bytes(tmp_path: Path) -> None:
    mem, data = lazy_memory(tmp_path, [(0x400000, 3, PE_PRESENT), (0x500000, 2, PE_PRESENT)])

    class Set:
        _memory = {1: mem}

        def memory(self, pid: int) -> Memory:
            if pid not in self._memory:
                self._memory[pid] = Memory(mem.pagemap, mem.pages)
            return self._memory[pid]

    s = Set()
    assert process.drop_pages(s, 1, 0x401000, 0x402000) == 1
    m = s.memory(1)
    assert m.read(0x402000, PAGE) == data[2 * PAGE:3 * PAGE]
    assert m.read(0x501000, PAGE) == data[4 * PAGE:5 * PAGE]
    assert m.pages.data.held == 0  # nothing read into memory to cut a page


# -- image sets: saved by link or copy, never in place ------------------------------

def test_imageset_leaves_pages_on_disk_and_links_unedited_ones(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_set(src)
    s = ImageSet.load(src, lazy_min=0)
    pages = next(n for n in s.images if n.startswith("pages-"))
    assert isinstance(s.images[pages].data, FileBytes)
    s.save(dst)
    assert os.stat(dst / pages).st_ino == os.stat(src / pages).st_ino  # linked
    for name in os.listdir(src):
        assert (src / name).read_bytes() == (dst / name).read_bytes(), name
    assert not [n for n in os.listdir(dst) if n.endswith(".hm-tmp")]
    assert stat.S_IMODE(dst.stat().st_mode) == 0o700


def test_imageset_edited_pages_copied_and_saved_over_their_own_folder(tmp_path: Path) -> None:
    d = tmp_path / "a"
    write_set(d)
    pages = next(n for n in os.listdir(d) if n.startswith("pages-"))
    before = (d / pages).read_bytes()
    mode = stat.S_IMODE((d / pages).stat().st_mode)
    s = ImageSet.load(d, lazy_min=0)
    s.memory(1).write(STACK, b"changed")
    s.save(tmp_path / "b")  # copied with the edited page
    s.save(d)  # into the folder it reads from: a new file renamed over the old one
    for folder in (tmp_path / "b", d):
        t = ImageSet.load(folder, lazy_min=0)
        assert t.memory(1).read(STACK, 7) == b"changed"
        assert len((folder / pages).read_bytes()) == len(before)
        assert stat.S_IMODE((folder / pages).stat().st_mode) == mode  # kept as loaded
    assert not [n for n in os.listdir(d) if n.endswith(".hm-tmp")]
    # a save cut short leaves a temporary name that a load ignores
    (d / f".{pages}.hm-tmp").write_bytes(b"partial")
    assert f".{pages}.hm-tmp" not in ImageSet.load(d).images


# -- transfer: streamed tar out, chunked reader in ----------------------------------

def test_tar_stream_is_private_complete_and_bounded(tmp_path: Path) -> None:
    d = tmp_path / "merged"
    d.mkdir(mode=0o700)
    big = pattern(300)  # 1.2 MB
    (d / "pages-1.img").write_bytes(big)
    (d / "core-1.img").write_bytes(b"core")
    (d / "empty.img").write_bytes(b"")
    pieces = list(tar_stream(d, "ck", chunk=256 << 10))
    assert max(len(p) for p in pieces) <= (256 << 10) + 4 * 512 + (256 << 10)
    with tarfile.open(fileobj=io.BytesIO(b"".join(pieces))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"ck", "ck/pages-1.img", "ck/core-1.img", "ck/empty.img"}
        assert members["ck"].isdir() and members["ck"].mode == 0o700
        assert all(m.mode == 0o600 for n, m in members.items() if n != "ck")
        assert tar.extractfile("ck/pages-1.img").read() == big
        assert tar.extractfile("ck/core-1.img").read() == b"core"
    os.symlink("/etc/passwd", d / "link.img")
    with pytest.raises(OSError, match="not a regular file"):
        list(tar_stream(d, "ck"))


def test_stream_reader_hands_tarfile_every_byte(tmp_path: Path) -> None:
    d = tmp_path / "src"
    d.mkdir()
    data = pattern(100)
    (d / "pages-1.img").write_bytes(data)
    blob = b"".join(tar_stream(d, "x"))
    chunks = (blob[i:i + 100_003] for i in range(0, len(blob), 100_003))  # odd sizes
    with tarfile.open(fileobj=_StreamReader(chunks), mode="r|") as tar:
        for m in tar:
            if m.isfile():
                assert tar.extractfile(m).read() == data


def test_read_container_file_streams_the_archive(tmp_path: Path) -> None:
    """A program's metadata (tens of MB) read from the archive as it streams, every
    chunk of the response consumed (the connection goes back to the pool)."""
    from types import SimpleNamespace

    from docker_hmigrate.park import read_container_file

    d = tmp_path / "f"
    d.mkdir()
    data = pattern(50)
    (d / "prog.hmigrate.json").write_bytes(data)
    blob = b"".join(tar_stream(d, "f"))
    consumed = []

    def get_archive(_cid, _path):
        def chunks():
            for i in range(0, len(blob), 65_536):
                consumed.append(i)
                yield blob[i:i + 65_536]
        return chunks(), {}

    host = SimpleNamespace(api=SimpleNamespace(get_archive=get_archive))
    assert read_container_file(host, "c", "/prog.hmigrate.json") == data
    assert len(consumed) == -(-len(blob) // 65_536)
    empty = tmp_path / "e"
    empty.mkdir()
    blob = b"".join(tar_stream(empty, "e"))  # a folder only: no file in it
    assert read_container_file(host, "c", "/e") is None


def test_metadata_parsed_with_shared_values_is_the_same_document() -> None:
    import json

    from docker_hmigrate.recode import _shared_values

    doc = {"functions": [{"name": f"f{i}", "cfa": "rbp+16", "size": 4096, "flag": True,
                          "regs": ["rbx", "r12"], "sites": [{"kind": "call", "sp": -80}]}
                         for i in range(50)], "big": 1 << 70, "f": 1.5}
    text = json.dumps(doc)
    got = json.loads(text, object_hook=_shared_values())
    assert got == doc and got["functions"][3]["flag"] is True
    fs = got["functions"]
    assert fs[1]["cfa"] is fs[2]["cfa"] and fs[1]["regs"][0] is fs[2]["regs"][0]
    assert fs[1]["size"] is fs[2]["size"] and fs[1]["sites"][0]["sp"] is fs[2]["sites"][0]["sp"]


def test_gzipped_stream_unpacks_to_the_same_archive_and_counts_what_is_sent() -> None:
    """--compress gzip: one gzip member the target daemon unpacks (its archive PUT takes
    gzip); `sent` counts the compressed bytes."""
    import gzip

    from docker_hmigrate import transfer

    chunks = [bytes(1 << 20), b"hello" * 1000, bytes(range(256)) * 64]
    link = transfer.FolderLink("checkpoint", None, "", None, "", compress="gzip")
    out = b"".join(link._wire(iter(chunks)))
    assert gzip.decompress(out) == b"".join(chunks)
    sent = link.sent
    assert sent[0] == len(out) < sum(map(len, chunks)) // 10


def test_an_unknown_compression_is_a_usage_error() -> None:
    import pytest

    from docker_hmigrate import errors
    from docker_hmigrate.migrate import MigrationOptions

    MigrationOptions("web", compress="gzip").check()
    with pytest.raises(errors.UsageError) as exc:
        MigrationOptions("web", compress="zstd").check()
    assert exc.value.exit_code == 125 and "none, gzip" in exc.value.hint
