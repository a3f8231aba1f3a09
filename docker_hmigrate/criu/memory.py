"""A process's dumped memory: pagemap-N.img (where) + pages-M.img (what).

pagemap-N.img holds a pagemap_head (pages_id: which pages-M.img) and then one
pagemap_entry per run of pages: vaddr, nr_pages (compat_nr_pages in old images) and
flags. Runs with PE_PRESENT have their contents in pages-M.img, in the order of the
entries, page after page, no header. Runs only in a parent (pre-dump) image or lazy
ones are not in this image set; addresses in no run at all were not dumped (untouched
anonymous memory, or file contents CRIU maps from the file again at restore).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from docker_hmigrate.criu import schema
from docker_hmigrate.criu.image import Entry, ImageFile

PAGE_SIZE = 4096  # x86-64 and Debian's arm64 kernels both use 4 KiB pages

PE_PARENT = 1 << 0  # pages are in the parent (pre-dump) image set
PE_LAZY = 1 << 1  # pages may be restored lazily (userfaultfd)
PE_PRESENT = 1 << 2  # pages are in pages-M.img


class NotDumpedError(LookupError):
    """An address range that this image set holds no contents for."""


@dataclass(frozen=True)
class Run:
    """One pagemap entry: `nr_pages` pages from `vaddr`; `offset` into pages-M.img."""

    vaddr: int
    nr_pages: int
    flags: int
    offset: int | None  # None: contents not in this image set

    @property
    def end(self) -> int:
        return self.vaddr + self.nr_pages * PAGE_SIZE


def entry_nr_pages(entry) -> int:
    return entry.nr_pages if entry.HasField("nr_pages") else entry.compat_nr_pages


def entry_flags(entry) -> int:
    if entry.HasField("flags"):
        return entry.flags
    # images older than the flags field: in_parent or present
    return PE_PARENT if entry.in_parent else PE_PRESENT


SCAN_CHUNK = 4 << 20  # bytes per piece when scanning memory (chunks): bounded memory


class Memory:
    """Read and write a process's dumped memory by virtual address.

    Writes change the pages image's data (a bytearray, or a FileBytes whose pages stay on
    disk until edited): saving the image set writes them. Only pages that were dumped
    can be written; populate adds zero pages. Scans of large areas go through chunks(),
    which never holds more than SCAN_CHUNK bytes of the image at once.
    """

    def __init__(self, pagemap: ImageFile, pages: ImageFile, page_size: int = PAGE_SIZE):
        if not pagemap.entries:
            raise ValueError(f"{pagemap.name}: no pagemap_head")
        self.pagemap, self.pages, self.page_size = pagemap, pages, page_size
        self._index()

    def _index(self) -> None:
        self.runs: list[Run] = []
        offset = 0
        for entry in self.pagemap.entries[1:]:
            e = entry.msg
            n, flags = entry_nr_pages(e), entry_flags(e)
            present = bool(flags & PE_PRESENT) and not flags & PE_PARENT
            self.runs.append(Run(e.vaddr, n, flags, offset if present else None))
            if present:
                offset += n * self.page_size
        if offset != len(self.pages.data):
            raise ValueError(
                f"{self.pagemap.name} describes {offset} bytes of pages but {self.pages.name} "
                f"holds {len(self.pages.data)}"
            )
        self.runs.sort(key=lambda r: r.vaddr)
        self._starts = [r.vaddr for r in self.runs]

    def populate(self, addr: int, size: int, flags: int = PE_PRESENT | PE_LAZY) -> int:
        """Make [addr, addr+size) present, adding zero-filled pages where nothing was
        dumped (e.g. to grow a rebuilt stack below the old sp); returns pages added.

        Only right for anonymous private memory: a file mapping's undumped pages come
        from the file, not zeros. The caller checks that a VMA covers the range.
        New runs are inserted in address order, as CRIU writes and reads them; their
        pages go at the matching place in the pages image. flags default to what CRIU
        4.x writes for anonymous memory (present, may be restored lazily).
        """
        ps = self.page_size
        first, last = addr // ps * ps, -(-(addr + size) // ps) * ps
        missing: list[int] = []
        for page in range(first, last, ps):
            run = self.run_at(page)
            if run is None:
                missing.append(page)
            elif run.offset is None:
                raise NotDumpedError(f"page {page:#x} is in a parent image set")
        chunks: list[list[int]] = []
        for page in missing:
            if chunks and chunks[-1][-1] + ps == page:
                chunks[-1].append(page)
            else:
                chunks.append([page])
        head, entries = self.pagemap.entries[0], self.pagemap.entries[1:]
        for chunk in chunks:
            vaddr, n = chunk[0], len(chunk)
            pos = bisect.bisect_left([e.msg.vaddr for e in entries], vaddr)
            offset = sum(entry_nr_pages(e.msg) * ps for e in entries[:pos]
                         if entry_flags(e.msg) & PE_PRESENT and not entry_flags(e.msg) & PE_PARENT)
            msg = schema.new("pagemap_entry", vaddr=vaddr, compat_nr_pages=0, flags=flags,
                             nr_pages=n)
            entries.insert(pos, Entry(msg=msg))
            self.pages.data[offset:offset] = bytes(n * ps)
        self.pagemap.entries = [head, *entries]
        self._index()
        return len(missing)

    @property
    def pages_id(self) -> int:
        return self.pagemap.entries[0].msg.pages_id

    def run_at(self, addr: int) -> Run | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self.runs[i].end:
            return self.runs[i]
        return None

    def _spans(self, addr: int, n: int):
        """(offset in pages image, length) pieces covering [addr, addr+n)."""
        end = addr + n
        while addr < end:
            run = self.run_at(addr)
            if run is None or run.offset is None:
                why = "not dumped" if run is None else f"not in this image (flags {run.flags})"
                raise NotDumpedError(f"address {addr:#x} is {why}")
            take = min(end, run.end) - addr
            yield run.offset + (addr - run.vaddr), take
            addr += take

    def read(self, addr: int, n: int) -> bytes:
        data = self.pages.data
        return b"".join(bytes(data[off:off + k]) for off, k in self._spans(addr, n))

    def write(self, addr: int, payload: bytes) -> None:
        spans = list(self._spans(addr, len(payload)))  # check it all before changing any
        pos = 0
        for off, k in spans:
            self.pages.data[off:off + k] = payload[pos:pos + k]
            pos += k

    def read_u64(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")

    def write_u64(self, addr: int, value: int) -> None:
        self.write(addr, value.to_bytes(8, "little"))

    def contains(self, addr: int, n: int = 1) -> bool:
        try:
            for _ in self._spans(addr, n):
                pass
        except NotDumpedError:
            return False
        return True

    def chunks(self, start: int, end: int, size: int = SCAN_CHUNK):
        """See scan()."""
        return scan(self, start, end, size)

    def find(self, needle: bytes, start: int = 0, end: int = 1 << 64) -> list[int]:
        """Addresses of `needle` in the dumped memory within [start, end)."""
        hits: list[int] = []
        data = self.pages.data
        over = max(0, len(needle) - 1)  # a match may cross a piece's end
        for vaddr, off, size in self._extents():
            lo, hi = max(vaddr, start), min(vaddr + size, end)
            pos = lo
            while pos < hi:
                n = min(SCAN_CHUNK, hi - pos)
                o = off + pos - vaddr
                chunk = bytes(data[o:o + min(n + over, vaddr + size - pos)])
                i = chunk.find(needle)
                while 0 <= i < n:
                    a = pos + i
                    if a + len(needle) <= hi:
                        hits.append(a)
                    i = chunk.find(needle, i + 1)
                pos += n
        return hits

    def _extents(self) -> list[tuple[int, int, int]]:
        """(vaddr, offset, size) of present memory, adjacent runs merged so that a
        search finds what crosses a run boundary."""
        out: list[tuple[int, int, int]] = []
        for run in self.runs:
            if run.offset is None:
                continue
            size = run.nr_pages * self.page_size
            if out and out[-1][0] + out[-1][2] == run.vaddr and sum(out[-1][1:]) == run.offset:
                v, o, n = out[-1]
                out[-1] = (v, o, n + size)
            else:
                out.append((run.vaddr, run.offset, size))
        return out


def scan(mem, start: int, end: int, size: int = SCAN_CHUNK):
    """(address, bytes) of the dumped memory of `mem` in [start, end), in pieces of at
    most `size` bytes that start at run starts or at multiples of `size` from them (so
    8-aligned words never straddle two pieces); adjacent runs are not joined. Uses only
    mem.runs and mem.read: a scan of all of a process's memory holds one piece at once."""
    size = max(PAGE_SIZE, size // PAGE_SIZE * PAGE_SIZE)
    for run in mem.runs:
        if run.offset is None or run.end <= start or run.vaddr >= end:
            continue
        a0, a1 = max(run.vaddr, start), min(run.end, end)
        while a0 < a1:
            n = min(size - (a0 - run.vaddr) % size, a1 - a0)
            yield a0, mem.read(a0, n)
            a0 += n
