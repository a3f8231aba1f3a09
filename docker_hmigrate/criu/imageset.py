"""A whole CRIU checkpoint directory (as `docker checkpoint create` leaves it)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from google.protobuf.message import Message

from docker_hmigrate.criu.filebytes import FileBytes
from docker_hmigrate.criu.image import LAZY_MIN, ImageFile
from docker_hmigrate.criu.memory import Memory
from docker_hmigrate.criu.schema import FILE_ENTRY_FIELD, March


class ImageSet:
    """Every file of a checkpoint directory, parsed where this library knows how.

    Task images are named after the pid as seen inside the container's pid namespace
    (core-<tid>.img per thread, mm/pagemap/ids/fs-<pid>.img per process); shared
    objects by ids (fdinfo-<files_id>.img when inventory.fdinfo_per_id is set,
    pages-<pages_id>.img named by the pagemap's head).
    """

    def __init__(self, images: dict[str, ImageFile], modes: dict[str, int] | None = None,
                 path: Path | None = None, skipped: list[str] | None = None):
        self.images = images
        self.modes = modes or {}
        self.path = path
        self.skipped = skipped or []  # directory entries that are not regular files
        self._memory: dict[int, Memory] = {}

    # -- loading and saving ----------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path, lazy_min: int = LAZY_MIN) -> ImageSet:
        """Parse every file of `directory`; big raw files (pages-N.img...) stay on disk
        and are read on demand (filebytes.py): the folder must not change meanwhile."""
        directory = Path(directory)
        images: dict[str, ImageFile] = {}
        modes: dict[str, int] = {}
        skipped: list[str] = []
        for name in sorted(os.listdir(directory)):
            p = directory / name
            st = p.lstat()
            if name.endswith(".hm-tmp"):  # a save that was cut short: not an image
                continue
            if not stat.S_ISREG(st.st_mode):
                skipped.append(name)
                continue
            img = ImageFile.on_disk(p, st.st_size, lazy_min)
            images[name] = img if img is not None else ImageFile.from_bytes(name, p.read_bytes())
            modes[name] = stat.S_IMODE(st.st_mode)
        if "inventory.img" not in images:
            raise FileNotFoundError(f"{directory}: no inventory.img, not a CRIU image set")
        return cls(images, modes, directory, skipped)

    def save(self, directory: str | Path) -> None:
        """Write every file to `directory` (created 0700: images hold process memory).

        Each file is written under a temporary name and renamed over the old one, never
        rewritten in place: contents left on disk may be read from the old file (saving
        into the folder the set was loaded from), or shared with it by a hard link. An
        unedited file left on disk is linked, not copied, when both folders are on one
        file system; an edited one is copied in the kernel with its edited pages."""
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, img in self.images.items():
            p = directory / name
            mode = self.modes.get(name, 0o600)
            data = img.data if img.form in ("raw", "opaque") else None
            if isinstance(data, FileBytes) and _link_or_keep(data, p, mode):
                continue
            tmp = directory / f".{name}.hm-tmp"
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            try:
                if isinstance(data, FileBytes):
                    data.write_to(fd)
                else:
                    with os.fdopen(os.dup(fd), "wb") as f:
                        f.write(img.to_bytes())
                os.fchmod(fd, mode)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            finally:
                os.close(fd)
            os.replace(tmp, p)

    # -- generic access --------------------------------------------------------
    def image(self, name: str) -> ImageFile:
        try:
            return self.images[name]
        except KeyError:
            raise KeyError(f"image set has no {name}") from None

    def entries(self, name: str) -> list[Message]:
        img = self.images.get(name)
        return img.messages if img else []

    def _single(self, name: str) -> Message:
        msgs = self.image(name).messages
        if len(msgs) != 1:
            raise ValueError(f"{name}: expected one entry, found {len(msgs)}")
        return msgs[0]

    # -- the process tree ------------------------------------------------------
    @property
    def inventory(self) -> Message:
        return self._single("inventory.img")

    @property
    def pstree(self) -> list[Message]:
        return self.entries("pstree.img")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.pstree]

    def process(self, pid: int) -> Message:
        for p in self.pstree:
            if p.pid == pid:
                return p
        raise KeyError(f"no process {pid} in pstree.img")

    def threads(self, pid: int) -> list[int]:
        return list(self.process(pid).threads) or [pid]

    @property
    def root_pid(self) -> int:
        return self.pstree[0].pid

    def core(self, tid: int) -> Message:
        return self._single(f"core-{tid}.img")

    @property
    def arch(self) -> March:
        """The machine of the image set (of its first thread); all threads agree."""
        return March(self.core(self.root_pid).mtype)

    def has_mm(self, pid: int) -> bool:
        """Whether the process has an address space in the set (zombies have none)."""
        return f"mm-{pid}.img" in self.images

    def mm(self, pid: int) -> Message:
        return self._single(f"mm-{pid}.img")

    def vma_at(self, pid: int, addr: int) -> Message | None:
        """The vma_entry of process `pid` that contains `addr`, if any."""
        for v in self.mm(pid).vmas:
            if v.start <= addr < v.end:
                return v
        return None

    def ids(self, pid: int) -> Message:
        name = f"ids-{pid}.img"
        if name in self.images:
            return self._single(name)
        return self.core(pid).ids

    def fs(self, pid: int) -> Message:
        return self._single(f"fs-{pid}.img")

    def fdinfo(self, pid: int) -> list[Message]:
        key = self.ids(pid).files_id if self.inventory.fdinfo_per_id else pid
        return self.entries(f"fdinfo-{key}.img")

    def memory(self, pid: int) -> Memory:
        mem = self._memory.get(pid)
        if mem is None:
            pagemap = self.image(f"pagemap-{pid}.img")
            pages_id = pagemap.entries[0].msg.pages_id
            mem = Memory(pagemap, self.image(f"pages-{pages_id}.img"))
            self._memory[pid] = mem
        return mem

    # -- files -----------------------------------------------------------------
    @property
    def files(self) -> dict[int, Message]:
        """Open file objects by id: file_entry of files.img (CRIU >= 3.x layout)."""
        return {f.id: f for f in self.entries("files.img")}

    def file_object(self, file_id: int) -> Message | None:
        """The type-specific entry (reg_file_entry, pipe_entry...) of a file id."""
        fe = self.files.get(file_id)
        if fe is not None:
            fname = FILE_ENTRY_FIELD.get(fe.type)  # IntEnum keys match plain ints
            return getattr(fe, fname) if fname and fe.HasField(fname) else None
        for reg in self.entries("reg-files.img"):  # images of old CRIUs
            if reg.id == file_id:
                return reg
        return None

    def path_of(self, file_id: int) -> str | None:
        """The path of a regular file id (VMA shmid, exe_file_id, fs cwd/root)."""
        obj = self.file_object(file_id)
        if obj is not None and obj.DESCRIPTOR.name == "reg_file_entry":
            return obj.name
        return None

    def exe_path(self, pid: int) -> str | None:
        return self.path_of(self.mm(pid).exe_file_id)


def _link_or_keep(data: FileBytes, p: Path, mode: int) -> bool:
    """An unedited file left on disk at `p` without copying it: already there (saved into
    its own folder), or hard-linked (same file system, same mode). False: copy it."""
    whole = data.whole_file()
    if whole is None:
        return False
    try:
        st = os.stat(p, follow_symlinks=False)
        if (st.st_dev, st.st_ino) == whole.ident:
            return True
    except FileNotFoundError:
        pass
    try:
        src = os.stat(whole.path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if (src.st_dev, src.st_ino) != whole.ident or stat.S_IMODE(src.st_mode) != mode:
        return False
    tmp = p.with_name(f".{p.name}.hm-tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(whole.path, tmp, follow_symlinks=False)
    except OSError:  # another file system, or links not allowed
        return False
    os.replace(tmp, p)
    return True
