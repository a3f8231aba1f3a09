"""Moving state between two Docker hosts as tar streams, through the engine API only.

A folder on one host is read with GET /containers/{helper}/archive on a helper container
that bind-mounts it, and written with PUT /containers/{helper}/archive on a helper on the
other host: the stream passes through this process in chunks, never to disk.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker.errors
import requests

from docker_hmigrate.engine import Host, api_error_text
from docker_hmigrate.errors import TransferInterrupted

CHUNK = 1 << 20
SRC_MOUNT = "/hmigrate-src"
DST_MOUNT = "/hmigrate-dst"

Progress = Callable[[int], None]


@dataclass
class Transferred:
    what: str
    bytes: int
    seconds: float


# How the move's archives cross to the target daemon: as they are, or gzip-compressed by
# the plugin (the engine's archive PUT takes gzip on every Docker version; zstd only on
# recent ones). Level 1: a link slower than ~100 MB/s is where it pays.
COMPRESSIONS = ("none", "gzip")
GZIP_LEVEL = 1

PREFETCH_CHUNKS = 16  # up to 16 coalesced chunks read ahead: the two daemons work at once
COALESCE = 4 << 20  # bytes per chunk sent: fewer, larger writes into the PUT


def prefetched(stream: Iterator[bytes]) -> Iterator[bytes]:
    """The source's archive read by a thread while the target's PUT is being written.

    Read and write in one thread take the sum of both daemons' times (measured: GET
    alone 2.2 s, PUT alone 2.7 s, GET->PUT 6.1 s for 420 MB); overlapped, about the
    longer of the two. Chunks are coalesced to COALESCE bytes (requests sends each
    chunk of a generator body as its own chunked-encoding write)."""
    chunks: queue.Queue = queue.Queue(maxsize=PREFETCH_CHUNKS)
    done = object()
    stop = threading.Event()

    def read() -> None:
        pending: list[bytes] = []
        size = 0
        try:
            for chunk in stream:
                pending.append(chunk)
                size += len(chunk)
                if size >= COALESCE:
                    if not _put(chunks, b"".join(pending), stop):
                        return
                    pending, size = [], 0
            if pending:
                _put(chunks, b"".join(pending), stop)
            _put(chunks, done, stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            if pending:  # what was read still goes on, so the count says where it broke
                _put(chunks, b"".join(pending), stop)
            _put(chunks, exc, stop)

    threading.Thread(target=read, name="hmigrate-prefetch", daemon=True).start()
    try:
        while (item := chunks.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # the consumer gave up: let the reader end


def gzipped(chunks: Iterator[bytes], level: int = GZIP_LEVEL) -> Iterator[bytes]:
    """The stream as one gzip member (the target daemon unpacks it)."""
    z = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    for chunk in chunks:
        out = z.compress(chunk)
        if out:
            yield out
    yield z.flush()


def _put(chunks: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            chunks.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def _counted(stream: Iterator[bytes], tally: list[int], progress: Progress | None):
    for chunk in stream:
        tally[0] += len(chunk)
        if progress:
            progress(len(chunk))
        yield chunk


def private_modes(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """A tar stream with every regular file made 0600 and every folder 0700, on the fly:
    checkpoint images hold process memory, and CRIU writes them 0644."""
    buf = b""
    skip = 0  # bytes of file data (with padding) still to pass through untouched
    for chunk in chunks:
        buf += chunk
        out: list[bytes] = []
        pos = 0
        while True:
            if skip:
                n = min(skip, len(buf) - pos)
                out.append(buf[pos:pos + n])
                pos, skip = pos + n, skip - n
                if skip:
                    break
            if len(buf) - pos < 512:
                break
            hdr = bytearray(buf[pos:pos + 512])
            pos += 512
            if not any(hdr):  # the end-of-archive blocks
                out.append(bytes(hdr))
                continue
            raw = bytes(hdr[124:136])
            size = (int.from_bytes(raw[1:], "big") if raw[0] & 0x80
                    else int(raw.strip(b"\0 ") or b"0", 8))
            kind = bytes(hdr[156:157])
            mode = 0o600 if kind in (b"0", b"\0", b"7") else 0o700 if kind == b"5" else None
            if mode is not None:
                hdr[100:108] = b"%07o\0" % mode
                hdr[148:156] = b" " * 8
                hdr[148:156] = b"%06o\0 " % sum(hdr)
            out.append(bytes(hdr))
            skip = -(-size // 512) * 512
        buf = buf[pos:]
        if out:
            yield b"".join(out)
    if buf:
        yield buf


class FolderLink:
    """A pair of helper containers, one per host, binding a folder (or volume) on each.

    Created before the container is frozen, so that the freeze-to-restore window only
    holds the streaming itself. Use as a context manager; `copy` may be called from a
    worker thread.
    """

    def __init__(self, what: str, src: Host, src_bind: str, dst: Host, dst_bind: str,
                 private: bool = False, compress: str = "none"):
        self.what, self.src, self.dst = what, src, dst
        self.private = private  # process memory: files 0600, folders 0700 on the target
        self.compress = compress  # COMPRESSIONS
        self.sent = [0]  # bytes that crossed to the target (compressed or not)
        self._binds = (src_bind, dst_bind)
        self._stack = contextlib.ExitStack()
        self.src_helper = self.dst_helper = ""

    def __enter__(self) -> FolderLink:
        src_bind, dst_bind = self._binds
        try:
            self.src_helper = self._stack.enter_context(
                self.src.helper([f"{src_bind}:{SRC_MOUNT}:ro"]))
            self.dst_helper = self._stack.enter_context(
                self.dst.helper([f"{dst_bind}:{DST_MOUNT}"]))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def copy(self, src_subpath: str = ".", dst_subpath: str = "",
             progress: Progress | None = None) -> Transferred:
        """Stream SRC/src_subpath into DST/dst_subpath ("." copies the folder's contents,
        a name copies that entry itself)."""
        started = time.monotonic()
        tally = [0]
        src_path = f"{SRC_MOUNT}/{src_subpath}"
        dst_path = f"{DST_MOUNT}/{dst_subpath}".rstrip("/")
        try:
            stream, _stat = self.src.api.get_archive(self.src_helper, src_path, chunk_size=CHUNK)
            data = _counted(prefetched(stream), tally, progress)
            ok = self.dst.api.put_archive(self.dst_helper, dst_path, self._wire(
                private_modes(data) if self.private else data))
            if not ok:
                raise TransferInterrupted(f"{self.dst.name} refused the {self.what} archive")
        except (docker.errors.APIError, requests.RequestException, OSError) as exc:
            raise TransferInterrupted(
                f"moving the {self.what} from {self.src.name} to {self.dst.name} failed "
                f"after {tally[0]} bytes: {api_error_text(exc)}",
                hint="check that both daemons are reachable and have free disk, then retry",
            ) from exc
        return Transferred(self.what, tally[0], time.monotonic() - started)


    def _wire(self, data: Iterator[bytes]) -> Iterator[bytes]:
        """What is sent: the archive, gzip-compressed with --compress gzip. `sent` is
        known once the stream ends."""
        return _counted(gzipped(data) if self.compress == "gzip" else data, self.sent, None)

    def download(self, src_subpath: str, local_dir: Path) -> Transferred:
        """Unpack SRC/src_subpath (a folder) into local_dir, for a local transformation."""
        return download_folder(self.what, self.src, self.src_helper,
                               f"{SRC_MOUNT}/{src_subpath}", local_dir)

    def upload(self, local_dir: Path, dst_name: str) -> Transferred:
        """Unpack local_dir as DST/dst_name: a tar stream made from its files while it is
        sent (tar_stream), neither packed on disk nor held in memory."""
        started = time.monotonic()
        tally = [0]
        try:
            stream = _counted(tar_stream(local_dir, dst_name), tally, None)
            if not self.dst.api.put_archive(self.dst_helper, DST_MOUNT,
                                            self._wire(stream)):
                raise TransferInterrupted(f"{self.dst.name} refused the {self.what}")
        except (docker.errors.APIError, requests.RequestException, OSError) as exc:
            raise TransferInterrupted(
                f"uploading the {self.what} to {self.dst.name} failed after {tally[0]} "
                f"bytes: {api_error_text(exc)}") from exc
        return Transferred(self.what, tally[0], time.monotonic() - started)


def tar_stream(local_dir: Path, arcname: str, chunk: int = COALESCE) -> Iterator[bytes]:
    """A tar archive of local_dir's regular files (one level: a checkpoint folder) as
    `arcname`, in pieces of about `chunk` bytes read from the files as it is consumed:
    the memory it takes does not grow with the files. Owner-only modes (0600 files in a
    0700 folder): checkpoint images hold process memory. Anything but a regular file is
    refused (a checkpoint folder has no links or sub-folders)."""
    def header(info: tarfile.TarInfo) -> bytes:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = int(time.time())
        return info.tobuf(format=tarfile.PAX_FORMAT)

    top = tarfile.TarInfo(arcname)
    top.type, top.mode = tarfile.DIRTYPE, 0o700
    out = [header(top)]
    size = len(out[0])
    for entry in sorted(os.scandir(local_dir), key=lambda e: e.name):
        if not entry.is_file(follow_symlinks=False):
            raise OSError(f"{entry.path} is not a regular file: not sent")
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            n = os.fstat(fd).st_size
            info = tarfile.TarInfo(f"{arcname}/{entry.name}")
            info.size, info.mode = n, 0o600
            out.append(header(info))
            size += len(out[-1])
            left = n
            while left:
                b = os.read(fd, min(chunk, left))
                if not b:
                    raise OSError(f"{entry.path} shrank while it was sent")
                out.append(b)
                size += len(b)
                left -= len(b)
                if size >= chunk:
                    yield b"".join(out)
                    out, size = [], 0
            pad = -n % tarfile.BLOCKSIZE
            if pad:
                out.append(bytes(pad))
                size += pad
        finally:
            os.close(fd)
    out.append(bytes(2 * tarfile.BLOCKSIZE))  # the end-of-archive blocks
    yield b"".join(out)


def check_private_target(path: Path) -> None:
    """A file that will hold process memory: never through a symlink, never a folder."""
    from docker_hmigrate.errors import UsageError

    if path.is_symlink():
        raise UsageError(f"{path} is a symbolic link: refusing to write process memory "
                         "through it", hint="give the path of a regular file")
    if path.exists() and not path.is_file():
        raise UsageError(f"{path} exists and is not a regular file",
                         hint="give the path of a new or regular file")


def create_private_file(path: Path) -> int:
    """Create `path` afresh, mode 0600 (an existing file is replaced, never reused with its
    old mode), refusing symlinks; returns a file descriptor open for writing."""
    check_private_target(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)


def _private_filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
    """tarfile's "data" filter, and checkpoint images readable by their owner only."""
    member = tarfile.data_filter(member, path)
    if member is not None and member.mode is not None:
        member = member.replace(mode=0o700 if member.isdir() else 0o600, deep=False)
    return member


def download_folder(what: str, host: Host, helper: str, path: str,
                    local_dir: Path) -> Transferred:
    """Unpack the folder `path` of a helper container into local_dir (streamed)."""
    started = time.monotonic()
    tally = [0]
    try:
        stream, _ = host.api.get_archive(helper, f"{path}/.", chunk_size=CHUNK)
        reader = _StreamReader(_counted(stream, tally, None))
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            tar.extractall(local_dir, filter=_private_filter)
    except (docker.errors.APIError, requests.RequestException, OSError,
            tarfile.TarError) as exc:
        raise TransferInterrupted(
            f"downloading the {what} from {host.name} failed after {tally[0]} "
            f"bytes: {api_error_text(exc)}") from exc
    return Transferred(what, tally[0], time.monotonic() - started)


class _StreamReader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks (for tarfile's stream mode)."""

    def __init__(self, chunks: Iterator[bytes]):
        # a view moved along each chunk: slicing the chunk itself would copy its rest on
        # every read (tarfile reads 16 KiB at a time: 64 copies of a 1 MiB chunk)
        self._chunks, self._buf = chunks, memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n], self._buf = self._buf[:n], self._buf[n:]
        return n


def copy_image(src: Host, dst: Host, ref: str, progress: Progress | None = None) -> Transferred:
    """Stream an image from one daemon to the other (docker save | docker load)."""
    started = time.monotonic()
    tally = [0]
    try:
        stream = src.api.get_image(ref, chunk_size=CHUNK)
        for _ in dst.api.load_image(_counted(stream, tally, progress), quiet=True):
            pass
    except (docker.errors.APIError, requests.RequestException, OSError) as exc:
        raise TransferInterrupted(
            f"copying image {ref} from {src.name} to {dst.name} failed: {api_error_text(exc)}",
            hint="push the image to a registry both hosts can pull from, then retry",
        ) from exc
    return Transferred(f"image {ref}", tally[0], time.monotonic() - started)
