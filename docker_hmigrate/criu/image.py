"""One CRIU image file: its header, its length-prefixed protobuf entries, or raw data.

Forms of image files (CRIU "images v1.1"):
- "img": u32 IMG_COMMON_MAGIC, u32 image magic, then entries, each a u32 length
  followed by that many bytes of one protobuf message. inventory.img is the exception:
  only its own magic, no common magic in front. All integers are little-endian.
- "service": like "img" but with IMG_SERVICE_MAGIC (stats-*, irmap-cache).
- "raw": no header at all, CRIU-foreign data: pages-N.img (process memory, page after
  page), tmpfs-*.tar.gz.img (tar of a tmpfs), ifaddr/route/iptables dumps...
- "opaque": anything else (an image whose entries we have no schema for, a non-image
  file such as runc's descriptors.json): its bytes are kept and written back.

Some images carry raw data after an entry (pipes-data: the pipe's buffered bytes);
those bytes are kept with the entry as its payload.

Byte-exact writing: each entry keeps the bytes it was read from. On writing, an entry
whose message serializes as it did when read is written from those bytes; only a
changed entry is re-serialized. Protobuf keeps unknown fields, so even a re-serialized
entry loses nothing, but it writes unknown fields after the known ones (tests check
that CRIU's own entries re-serialize identically).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from docker_hmigrate.criu import schema
from docker_hmigrate.criu.filebytes import FileBytes

IMG_COMMON_MAGIC = 0x54564319
IMG_SERVICE_MAGIC = 0x55105940
INVENTORY_MAGIC = 0x58313116
RAW_IMAGE_MAGIC = 0x0


@dataclass(frozen=True)
class Kind:
    """What an image magic means: file name pattern, the entry message, payload rule."""

    name: str  # CRIU's file name pattern
    magic: int
    message: str | None  # schema message of every entry; None: entries not understood
    payload_field: str | None = None  # entry field holding the size of trailing raw data
    first: str | None = None  # message of a leading head entry (pagemap)


_U = None  # images CRIU writes that this library keeps opaque
KINDS: list[Kind] = [
    Kind("inventory", INVENTORY_MAGIC, "inventory_entry"),
    Kind("pstree", 0x50273030, "pstree_entry"),
    Kind("fdinfo-%u", 0x56213732, "fdinfo_entry"),
    Kind("pagemap-%lu", 0x56084025, "pagemap_entry", first="pagemap_head"),
    Kind("core-%u", 0x55053847, "core_entry"),
    Kind("ids-%u", 0x54432030, "task_kobj_ids_entry"),
    Kind("vmas-%u", 0x54123737, "vma_entry"),
    Kind("pipes", 0x56513555, "pipe_entry"),
    Kind("pipes-data", 0x56453709, "pipe_data_entry", payload_field="bytes"),
    Kind("fifo", 0x58364939, _U),
    Kind("fifo-data", 0x59333054, "pipe_data_entry", payload_field="bytes"),
    Kind("sigacts-%u", 0x55344201, "sa_entry"),
    Kind("unixsk", 0x54373943, "unix_sk_entry"),
    Kind("inetsk", 0x56443851, "inet_sk_entry"),
    Kind("packetsk", 0x60454618, _U),
    Kind("itimers-%u", 0x57464056, "itimer_entry"),
    Kind("posix-timers-%u", 0x52603957, _U),
    Kind("sk-queues", 0x56264026, "sk_packet_entry", payload_field="length"),
    Kind("utsns-%u", 0x54473203, "utsns_entry"),
    Kind("creds-%u", 0x54023547, "creds_entry"),
    Kind("ipcns-var-%u", 0x53115007, "ipc_var_entry"),
    Kind("ipcns-shm-%u", 0x46283044, _U),
    Kind("ipcns-msg-%u", 0x55453737, _U),
    Kind("ipcns-sem-%u", 0x59573019, _U),
    Kind("reg-files", 0x50363636, "reg_file_entry"),
    Kind("ext-files", 0x59255641, _U),
    Kind("fs-%u", 0x51403912, "fs_entry"),
    Kind("mm-%u", 0x57492820, "mm_entry"),
    Kind("remap-fpath", 0x59133954, _U),
    Kind("ghost-file-%x", 0x52583605, _U),
    Kind("tcp-stream-%x", 0x51465506, _U),
    Kind("eventfd", 0x44523722, "eventfd_file_entry"),
    Kind("eventpoll", 0x45023858, "eventpoll_file_entry"),
    Kind("eventpoll-tfd", 0x44433746, "eventpoll_tfd_entry"),
    Kind("signalfd", 0x57323820, _U),
    Kind("inotify", 0x48424431, _U),
    Kind("inotify-wd", 0x54562009, _U),
    Kind("mountpoints-%u", 0x55563928, "mnt_entry"),
    Kind("netdev-%u", 0x57373951, _U),
    Kind("netns-%u", 0x55933752, _U),
    Kind("tty", 0x59433025, "tty_file_entry"),
    Kind("tty-info", 0x59453036, "tty_info_entry"),
    Kind("tty-data", 0x59413026, "tty_data_entry"),
    Kind("filelocks", 0x54323616, _U),
    Kind("rlimit-%u", 0x57113925, "rlimit_entry"),
    Kind("fanotify", 0x55096122, _U),
    Kind("fanotify-mark", 0x56506035, _U),
    Kind("signal-%u", 0x59255647, "siginfo_entry"),  # signal-s-N and signal-p-N
    Kind("netlinksk", 0x58005614, _U),
    Kind("ns-files", 0x61394011, "ns_file_entry"),
    Kind("tunfile", 0x57143751, _U),
    Kind("cgroup", 0x59383330, "cgroup_entry"),
    Kind("timerfd", 0x50493712, _U),
    Kind("cpuinfo", 0x61404013, _U),
    Kind("userns-%u", 0x55474906, _U),
    Kind("seccomp", 0x64413049, "seccomp_entry"),
    Kind("binfmt-misc", 0x67343323, _U),
    Kind("autofs-%u", 0x49353943, _U),
    Kind("files", 0x56303138, "file_entry"),
    Kind("memfd", 0x48453499, "memfd_inode_entry"),
    Kind("timens-%u", 0x43114433, "timens_entry"),
    Kind("pidns-%u", 0x61157326, _U),
    Kind("bpfmap-file", 0x57506142, _U),
    Kind("bpfmap-data", 0x64324033, _U),
    Kind("apparmor", 0x59423047, _U),
    Kind("pidfd", 0x54435556, _U),
    Kind("stats-%s", 0x57093306, _U),
    Kind("irmap-cache", 0x57004059, _U),
]
# Several patterns share a magic (pagemap-shmem uses PAGEMAP_MAGIC): first one wins.
KIND_BY_MAGIC: dict[int, Kind] = {}
for _k in KINDS:
    KIND_BY_MAGIC.setdefault(_k.magic, _k)

# File name prefixes of raw images (no header): CRIU-foreign data that we keep as bytes.
RAW_PREFIXES = (
    "pages-", "tmpfs-", "ifaddr-", "route-", "route6-", "rule-", "iptables-",
    "ip6tables-", "nftables-", "netns-ct-", "netns-exp-",
)
# Raw images whose contents need no interpretation to be moved/recoded as they are
# (pages are interpreted through the pagemap by memory.Memory).
RAW_UNDERSTOOD = ("pages-", "tmpfs-")
# Files in a Docker/runc checkpoint directory that are not CRIU images.
NON_IMAGE_FILES = {"descriptors.json", "dump.log", "restore.log", "stats-dump", "stats-restore"}
# Raw and non-image files from this size on are left on disk (filebytes.FileBytes) when
# an image set is loaded: process memory passes through a recode almost unchanged.
LAZY_MIN = 256 << 10


class ImageError(ValueError):
    """An image file that does not have the format its name or magic says."""


@dataclass
class Entry:
    """One length-prefixed protobuf entry; `payload` is raw data CRIU wrote after it."""

    msg: Message
    raw: bytes = b""
    payload: bytes = b""
    _baseline: bytes | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, message: str, raw: bytes, payload: bytes = b"") -> Entry:
        try:
            msg = schema.parse(message, raw)
        except DecodeError as exc:
            raise ImageError(f"bad {message}: {exc}") from exc
        return cls(msg=msg, raw=raw, payload=payload, _baseline=_serialize(msg))

    def encode(self) -> bytes:
        """The entry's bytes: the original ones if the message is unchanged."""
        data = _serialize(self.msg)
        if self._baseline is not None and data == self._baseline:
            return self.raw
        return data

    @property
    def changed(self) -> bool:
        return self._baseline is None or _serialize(self.msg) != self._baseline


def unknown_fields(msg: Message, path: str = "") -> list[str]:
    """Paths of fields in `msg` (and its sub-messages) that our schema does not declare,
    e.g. ["thread_info.gpregs.#29"]: state a newer CRIU wrote that we would pass on
    blindly."""
    found = [f"{path}#{f.field_number}" for f in UnknownFieldSet(msg)]
    for fd, value in msg.ListFields():
        if fd.type != fd.TYPE_MESSAGE:
            continue
        items = list(value) if fd.is_repeated else [value]
        for i, sub in enumerate(items):
            where = f"{path}{fd.name}[{i}]." if fd.is_repeated else f"{path}{fd.name}."
            found += unknown_fields(sub, where)
    return found


def _serialize(msg: Message) -> bytes:
    # deterministic: stable bytes for comparison; partial: a field missing in CRIU's
    # own entry must not make us unable to compare (serializing for writing checks it).
    return msg.SerializePartialToString(deterministic=True)


@dataclass
class ImageFile:
    """An image file in one of the forms "img", "service", "raw" or "opaque"."""

    name: str
    form: str
    kind: Kind | None = None
    header: bytes = b""  # the magic bytes exactly as read
    entries: list[Entry] = field(default_factory=list)
    # raw/opaque contents; a big file's are left on disk (FileBytes, same slicing)
    data: bytearray | FileBytes = field(default_factory=bytearray)
    error: str | None = None  # why an image that looked parseable is kept opaque

    # -- reading ---------------------------------------------------------------
    @classmethod
    def from_bytes(cls, name: str, blob: bytes) -> ImageFile:
        if name in NON_IMAGE_FILES or not name.endswith(".img"):
            return cls(name=name, form="opaque", data=bytearray(blob))
        if name.startswith(RAW_PREFIXES):
            return cls(name=name, form="raw", data=bytearray(blob))
        if len(blob) < 4:
            return cls(name=name, form="opaque", data=bytearray(blob), error="too short")
        (m0,) = struct.unpack_from("<I", blob, 0)
        if m0 == INVENTORY_MAGIC:
            kind, form, off = KIND_BY_MAGIC[INVENTORY_MAGIC], "img", 4
        elif m0 in (IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC) and len(blob) >= 8:
            (m1,) = struct.unpack_from("<I", blob, 4)
            kind = KIND_BY_MAGIC.get(m1)
            form = "img" if m0 == IMG_COMMON_MAGIC else "service"
            off = 8
            if kind is None:
                return cls(name=name, form="opaque", data=bytearray(blob),
                           error=f"unknown image magic {m1:#010x}")
        else:
            return cls(name=name, form="opaque", data=bytearray(blob),
                       error=f"no CRIU magic (starts {blob[:8].hex()})")
        img = cls(name=name, form=form, kind=kind, header=blob[:off])
        if kind.message is None:
            img.form, img.data = "opaque", bytearray(blob)
            img.error = f"{kind.name} images are not interpreted by this library"
            return img
        try:
            img.entries = _parse_entries(blob, off, kind)
        except (ImageError, struct.error) as exc:
            return cls(name=name, form="opaque", kind=kind, data=bytearray(blob),
                       error=f"malformed {kind.name} image: {exc}")
        return img

    @classmethod
    def on_disk(cls, path: Path, size: int, lazy_min: int = LAZY_MIN) -> ImageFile | None:
        """The image at `path` with its contents left on disk, if it is a raw or
        non-image file of at least lazy_min bytes (None: read it with from_bytes)."""
        name = path.name
        if size < lazy_min:
            return None
        if name in NON_IMAGE_FILES or not name.endswith(".img"):
            return cls(name=name, form="opaque", data=FileBytes.open(path))
        if name.startswith(RAW_PREFIXES):
            return cls(name=name, form="raw", data=FileBytes.open(path))
        return None

    @classmethod
    def load(cls, path: str | Path) -> ImageFile:
        path = Path(path)
        return cls.from_bytes(path.name, path.read_bytes())

    @classmethod
    def new(cls, name: str, magic: int, messages: list[Message] | None = None) -> ImageFile:
        """A new "img" image of the kind with this image magic, holding `messages`."""
        kind = KIND_BY_MAGIC[magic]
        header = (struct.pack("<I", magic) if magic == INVENTORY_MAGIC
                  else struct.pack("<II", IMG_COMMON_MAGIC, magic))
        img = cls(name=name, form="img", kind=kind, header=header)
        img.entries = [Entry(msg=m) for m in messages or []]
        return img

    # -- writing ---------------------------------------------------------------
    def to_bytes(self) -> bytes:
        if self.form in ("raw", "opaque"):
            return bytes(self.data)
        out = [self.header]
        for entry in self.entries:
            if entry._baseline is None:
                body = entry.msg.SerializeToString()  # checks required fields
            else:
                body = entry.encode()
            out.append(struct.pack("<I", len(body)))
            out.append(body)
            out.append(entry.payload)
        return b"".join(out)

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    # -- access ----------------------------------------------------------------
    @property
    def messages(self) -> list[Message]:
        return [e.msg for e in self.entries]

    @property
    def understood(self) -> bool:
        """Whether this library interprets the file (raw tarballs: moved as they are)."""
        if self.form in ("img", "service"):
            return True
        return self.form == "raw" and self.name.startswith(RAW_UNDERSTOOD)


def _parse_entries(blob: bytes, off: int, kind: Kind) -> list[Entry]:
    entries: list[Entry] = []
    while off < len(blob):
        if off + 4 > len(blob):
            raise ImageError(f"truncated entry size at offset {off}")
        (size,) = struct.unpack_from("<I", blob, off)
        off += 4
        if off + size > len(blob):
            raise ImageError(f"entry of {size} bytes at offset {off} runs past the end")
        raw = blob[off:off + size]
        off += size
        message = kind.first if (kind.first and not entries) else kind.message
        assert message is not None
        entry = Entry.parse(message, raw)
        if kind.payload_field and message == kind.message:
            n = getattr(entry.msg, kind.payload_field)
            if off + n > len(blob):
                raise ImageError(f"payload of {n} bytes at offset {off} runs past the end")
            entry.payload = blob[off:off + n]
            off += n
        entries.append(entry)
    return entries
