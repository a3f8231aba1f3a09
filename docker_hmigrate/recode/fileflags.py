"""Open-file status flags (O_*) in CRIU's file images are the dumping kernel's values,
and four of them differ between x86-64 and aarch64. Carried untranslated, they change
meaning: a pipe that CRIU reopened through /proc/self/fd on an aarch64 restore carries
aarch64's O_LARGEFILE (0o400000); restored on x86-64 that bit is O_NOFOLLOW, and CRIU's
reopen of the inherited stdio pipe fails with ELOOP ("Unable to reopen the pipe
/proc/self/fd/1: Too many levels of symbolic links"). x86-64's O_LARGEFILE (0o100000),
the other way, is aarch64's O_NOFOLLOW.

Each ISA object (isa/) lists those bits as `open_flags`. `translate_files` rewrites
every flags field of files.img that holds O_* values (and the
open flags of file mappings in mm-*.img) from the source ISA's bits to the target's.
Kinds kept as opaque bytes (signalfd, timerfd, packet/netlink sockets, tun, bpf, pidfd,
fifo, inotify/fanotify, ext) are restored by their own system call plus F_SETFL, which
honours none of the four bits that differ except O_DIRECT, which those kinds refuse; so
they cannot carry one, and they pass as they are.
"""

from __future__ import annotations

from docker_hmigrate import isa as isas
from docker_hmigrate.criu import ImageSet
from docker_hmigrate.recode.frames import Untranslatable

# file_entry sub-messages (schema.py) whose `flags` field holds O_* status flags
TYPED_KINDS = ("reg", "pipe", "isk", "usk", "nsf", "efd", "epfd", "tty", "memfd")


def translate(flags: int, src_isa: str, dst_isa: str) -> int:
    """flags with each ISA-specific O_* bit of src_isa moved to dst_isa's value."""
    src, dst = isas.get(src_isa).open_flags, isas.get(dst_isa).open_flags
    mask = 0
    for bit in src.values():
        mask |= bit
    out = flags & ~mask
    for name, bit in src.items():
        if flags & bit:
            out |= dst[name]
    return out


def translate_files(s: ImageSet, src_isa: str, dst_isa: str) -> int:
    """Rewrite, in place, the O_* flags of every file of s (files.img) and of every file
    mapping (mm-*.img fdflags) for dst_isa. Returns how many fields changed."""
    if src_isa == dst_isa:
        return 0
    try:
        src, dst = isas.get(src_isa).open_flags, isas.get(dst_isa).open_flags
    except KeyError as exc:
        raise Untranslatable(f"open-file flags: {exc.args[0]}") from None
    if set(src) != set(dst):
        raise Untranslatable(f"open-file flags: {src_isa} and {dst_isa} name different "
                             f"ISA-specific bits")
    n = 0
    if "files.img" in s.images:
        for entry in s.entries("files.img"):
            for kind in TYPED_KINDS:
                if entry.HasField(kind):
                    obj = getattr(entry, kind)
                    new = translate(obj.flags, src_isa, dst_isa)
                    if new != obj.flags:
                        obj.flags = new
                        n += 1
    for pid in s.pids:
        if not s.has_mm(pid):
            continue
        for vma in s.mm(pid).vmas:
            if vma.HasField("fdflags"):
                new = translate(vma.fdflags, src_isa, dst_isa)
                if new != vma.fdflags:
                    vma.fdflags = new
                    n += 1
    return n
