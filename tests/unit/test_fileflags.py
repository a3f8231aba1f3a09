"""Open-file flags across ISAs (recode/fileflags.py): the values the lab's checkpoints
hold, and the translation of files.img and mm-*.img."""

from __future__ import annotations

import errno
import os
import platform
from pathlib import Path

import pytest

from docker_hmigrate.criu import ImageFile, ImageSet, new
from docker_hmigrate.criu.schema import FdType
from docker_hmigrate.isa import AARCH64, X86_64
from docker_hmigrate.recode import fileflags
from docker_hmigrate.recode.frames import Untranslatable
from tests.support.criu_images import FILES, reg, write_set

O_WRONLY, O_RDWR, O_NONBLOCK, O_APPEND, O_CLOEXEC = 0o1, 0o2, 0o4000, 0o2000, 0o2000000
ON_X86_64 = platform.machine() == "x86_64"


def test_values_seen_in_the_lab_checkpoints():
    # a stdio pipe CRIU reopened on the aarch64 host, then dumped there (fdinfo 0400001)
    assert fileflags.translate(0o400001, "aarch64", "x86-64") == 0o100001
    # /dev/null opened on x86-64 (0100002): O_LARGEFILE, not aarch64's O_NOFOLLOW
    assert fileflags.translate(0o100002, "x86-64", "aarch64") == 0o400002
    # untranslated, the aarch64 bit is x86-64's O_NOFOLLOW and the other way round
    x86, arm = X86_64.open_flags, AARCH64.open_flags
    assert arm["O_LARGEFILE"] == x86["O_NOFOLLOW"] and x86["O_LARGEFILE"] == arm["O_NOFOLLOW"]


def test_every_combination_round_trips_and_common_bits_stay():
    bits = list(X86_64.open_flags.values())
    common = O_RDWR | O_NONBLOCK | O_APPEND | O_CLOEXEC
    for i in range(16):
        flags = common | sum(b for k, b in enumerate(bits) if i >> k & 1)
        there = fileflags.translate(flags, "x86-64", "aarch64")
        assert there & common == common
        assert bin(there).count("1") == bin(flags).count("1")
        assert fileflags.translate(there, "aarch64", "x86-64") == flags
    assert fileflags.translate(0o400001, "aarch64", "aarch64") == 0o400001


@pytest.mark.skipif(not ON_X86_64, reason="x86-64 values of the running system")
def test_x86_64_table_is_this_systems():
    x86 = X86_64.open_flags
    assert (x86["O_DIRECTORY"], x86["O_NOFOLLOW"], x86["O_DIRECT"]) == \
        (os.O_DIRECTORY, os.O_NOFOLLOW, os.O_DIRECT)


@pytest.mark.skipif(not ON_X86_64 or not os.path.isdir("/proc/self/fd"),
                    reason="the x86-64 kernel's open of a pipe through /proc/self/fd")
def test_reopening_a_pipe_with_untranslated_aarch64_flags_fails_as_criu_did():
    """What CRIU's restore does with an inherited stdio pipe: open /proc/self/fd/N with
    the image's flags. aarch64's O_LARGEFILE is O_NOFOLLOW here: ELOOP."""
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as exc:
            os.open(f"/proc/self/fd/{w}", 0o400001)
        assert exc.value.errno == errno.ELOOP
        fd = os.open(f"/proc/self/fd/{w}", fileflags.translate(0o400001, "aarch64", "x86-64"))
        os.close(fd)
    finally:
        os.close(r)
        os.close(w)


def test_translate_files_rewrites_files_and_file_mappings(tmp_path: Path):
    d = tmp_path / "set"
    write_set(d)
    s = ImageSet.load(d)
    exe = s.entries("files.img")[0]
    exe.reg.flags = 0o400000  # the executable, opened by the aarch64 kernel
    fown = dict(uid=0, euid=0, signum=0, pid_type=0, pid=0)
    null = reg(3, "/dev/null")
    null.reg.flags = 0o500002  # as dumped on aarch64 after an x86-64 restore
    s.images["files.img"] = ImageFile.new("files.img", FILES, [
        exe,
        new("file_entry", type=FdType.PIPE, id=2,
            pipe=dict(id=2, pipe_id=13887, flags=0o400001, fown=fown)),
        null,
        new("file_entry", type=FdType.UNIXSK, id=4, usk=dict(
            id=4, ino=9, type=1, state=1, flags=O_RDWR | O_NONBLOCK, uflags=0, backlog=0,
            peer=0, fown=fown, opts=b"", name=b""))])
    s.mm(1).vmas[0].fdflags = 0o400000
    assert fileflags.translate_files(s, "aarch64", "x86-64") == 3  # not /dev/null's
    s.save(tmp_path / "out")
    out = ImageSet.load(tmp_path / "out")
    got = {e.id: e for e in out.entries("files.img")}
    assert got[1].reg.flags == 0o100000
    assert got[2].pipe.flags == 0o100001
    assert got[3].reg.flags == 0o100000 | 0o400000 | O_RDWR  # O_LARGEFILE|O_NOFOLLOW|O_RDWR
    assert got[4].usk.flags == O_RDWR | O_NONBLOCK
    assert out.mm(1).vmas[0].fdflags == 0o100000
    assert fileflags.translate_files(out, "x86-64", "x86-64") == 0


def test_unknown_isa_is_refused(tmp_path: Path):
    write_set(tmp_path / "set")
    with pytest.raises(Untranslatable):
        fileflags.translate_files(ImageSet.load(tmp_path / "set"), "riscv64", "x86-64")
