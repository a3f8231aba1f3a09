"""The contents of a big image file (pages-N.img, a tmpfs tarball) left on disk.

A checkpoint's memory passes through a recode almost unchanged: only stacks, TLS, the
vDSO and a few words are rewritten. `FileBytes` reads the file on demand (pread) and
keeps only what was edited in memory, so the plugin's memory does not grow with the
container's. It answers the bytearray operations the image code uses on raw data
(`len`, slicing, slice assignment, `del`), so `ImageFile.data` may be either.

The contents are a list of segments, in order: a range of the backing file, or bytes
held here (edited pages, inserted zero pages). An edit pulls the pages it touches into
memory (whole pages: pages-N.img is page after page); writing the result out copies the
file's ranges in the kernel (copy_file_range) and writes the edited pages between them.
The backing file is never written to: the image set is saved to new files (or to a new
name renamed over the old one), so a set saved into its own folder stays consistent.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from pathlib import Path

PAGE = 4096
CHUNK = 4 << 20  # bytes per read when streaming or scanning


class _Backing:
    """An open, read-only file; closed when the last FileBytes using it goes."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(self.fd)
        self.size, self.ident = st.st_size, (st.st_dev, st.st_ino)

    def pread(self, n: int, off: int) -> bytes:
        parts, got = [], 0
        while got < n:
            b = os.pread(self.fd, n - got, off + got)
            if not b:
                raise OSError(f"{self.path}: file ended at {off + got} (it was changed "
                              f"while in use)")
            parts.append(b)
            got += len(b)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def __del__(self) -> None:
        fd, self.fd = getattr(self, "fd", -1), -1
        if fd >= 0:
            os.close(fd)


class FileBytes:
    """Bytes backed by a file, edited in memory page by page (see the module doc)."""

    def __init__(self, backing: _Backing | None, segments: list[tuple[int, int, bytearray | None]]):
        self._file = backing
        # (file offset, length, None) for a range of the file; (0, length, data) for bytes
        # held here
        self._segs = segments
        self._index()

    @classmethod
    def open(cls, path: str | Path) -> FileBytes:
        b = _Backing(Path(path))
        return cls(b, [(0, b.size, None)] if b.size else [])

    # -- the layout ------------------------------------------------------------
    def _index(self) -> None:
        self._starts, pos = [], 0
        for _off, n, _d in self._segs:
            self._starts.append(pos)
            pos += n
        self._len = pos

    def __len__(self) -> int:
        return self._len

    @property
    def held(self) -> int:
        """Bytes held in memory (edited or inserted pages)."""
        return sum(n for _o, n, d in self._segs if d is not None)

    @property
    def backing(self) -> Path | None:
        return self._file.path if self._file else None

    def whole_file(self) -> _Backing | None:
        """The backing file, if these bytes are exactly its unedited contents."""
        f = self._file
        if f is not None and self._segs == [(0, f.size, None)]:
            return f
        if f is not None and f.size == 0 and not self._segs:
            return f
        return None

    def _split(self, pos: int) -> int:
        """Index of the segment starting at `pos` (0 <= pos <= len), splitting one."""
        if pos >= self._len:
            return len(self._segs)
        i = bisect.bisect_right(self._starts, pos) - 1
        start = self._starts[i]
        if start == pos:
            return i
        off, n, data = self._segs[i]
        k = pos - start
        if data is None:
            a, b = (off, k, None), (off + k, n - k, None)
        else:
            a, b = (0, k, data[:k]), (0, n - k, data[k:])
        self._segs[i:i + 1] = [a, b]
        self._index()
        return i + 1

    def _bounds(self, key: slice) -> tuple[int, int]:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("FileBytes takes contiguous slices only")
        start, stop, _ = key.indices(self._len)
        return start, max(start, stop)

    # -- reading ---------------------------------------------------------------
    def _pieces(self, lo: int, hi: int) -> Iterator[bytes | memoryview]:
        if lo >= hi:
            return
        i = bisect.bisect_right(self._starts, lo) - 1
        while lo < hi:
            off, n, data = self._segs[i]
            start = self._starts[i]
            a, b = lo - start, min(hi - start, n)
            if data is None:
                yield self._file.pread(b - a, off + a)  # type: ignore[union-attr]
            else:
                yield memoryview(data)[a:b]
            lo = start + b
            i += 1

    def __getitem__(self, key: slice) -> bytes:
        lo, hi = self._bounds(key)
        return b"".join(self._pieces(lo, hi))

    def __bytes__(self) -> bytes:
        return self[:]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (bytes, bytearray, memoryview, FileBytes)):
            return len(self) == len(other) and self[:] == bytes(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like bytearray

    def chunks(self, lo: int = 0, hi: int | None = None, size: int = CHUNK
               ) -> Iterator[tuple[int, bytes | memoryview]]:
        """(offset, bytes) pieces of [lo, hi), each at most `size` bytes; pieces start
        at multiples of `size` from `lo` (page-aligned when lo is)."""
        hi = self._len if hi is None else min(hi, self._len)
        pos = lo
        while pos < hi:
            n = min(size, hi - pos)
            parts = list(self._pieces(pos, pos + n))
            yield pos, parts[0] if len(parts) == 1 else b"".join(parts)
            pos += n

    # -- editing ---------------------------------------------------------------
    def _hold(self, lo: int, hi: int) -> int:
        """Bring [lo, hi) (widened to whole pages) into memory as one segment; returns
        its index. Neighbouring held segments are joined to it."""
        lo, hi = lo // PAGE * PAGE, min(self._len, -(-hi // PAGE) * PAGE)
        i = bisect.bisect_right(self._starts, lo) - 1
        if self._segs[i][2] is not None and hi <= self._starts[i] + self._segs[i][1]:
            return i  # already held: no split (a stack rebuilt word by word stays whole)
        i, j = self._split(lo), self._split(hi)
        if j - i == 1 and self._segs[i][2] is not None:
            return i
        data = bytearray(b"".join(self._pieces(lo, hi)))
        self._segs[i:j] = [(0, len(data), data)]
        if i + 1 < len(self._segs) and self._segs[i + 1][2] is not None:
            nxt = self._segs.pop(i + 1)[2]
            data += nxt  # type: ignore[operator]
            self._segs[i] = (0, len(data), data)
        if i > 0 and self._segs[i - 1][2] is not None:
            prev = self._segs[i - 1][2]
            prev += data  # type: ignore[operator]
            self._segs[i - 1:i + 1] = [(0, len(prev), prev)]  # type: ignore[arg-type]
            i -= 1
        self._index()
        return i

    def __setitem__(self, key: slice, payload) -> None:
        lo, hi = self._bounds(key)
        payload = bytes(payload)
        if len(payload) != hi - lo:  # a change of size: cut, then insert
            if hi > lo:
                del self[lo:hi]
            if payload:
                i = self._split(lo)
                self._segs.insert(i, (0, len(payload), bytearray(payload)))
                self._index()
            return
        if not payload:
            return
        i = self._hold(lo, hi)
        start = self._starts[i]
        data = self._segs[i][2]
        data[lo - start:hi - start] = payload  # type: ignore[index]

    def __delitem__(self, key: slice) -> None:
        lo, hi = self._bounds(key)
        if lo == hi:
            return
        i, j = self._split(lo), self._split(hi)
        del self._segs[i:j]
        self._index()

    # -- writing out -----------------------------------------------------------
    def write_to(self, fd: int) -> int:
        """Write the contents at fd's position: the file's ranges copied in the kernel,
        held pages written. Returns the bytes written."""
        total = 0
        for off, n, data in self._segs:
            if data is not None:
                view = memoryview(data)
                while view:
                    k = os.write(fd, view)
                    view = view[k:]
            else:
                _copy_range(self._file, off, n, fd)  # type: ignore[arg-type]
            total += n
        return total


def _copy_range(src: _Backing, off: int, n: int, fd: int) -> None:
    end = off + n
    try:
        while off < end:
            k = os.copy_file_range(src.fd, fd, end - off, off)
            if k == 0:
                raise OSError(f"{src.path}: file ended at {off}")
            off += k
        return
    except OSError as exc:
        if exc.errno is None:
            raise
    while off < end:  # a file system without copy_file_range (EXDEV, EINVAL...)
        b = src.pread(min(CHUNK, end - off), off)
        view = memoryview(b)
        while view:
            k = os.write(fd, view)
            view = view[k:]
        off += len(b)
