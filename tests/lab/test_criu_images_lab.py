"""The CRIU image library against real checkpoints taken by the lab's Docker + CRIU.

Each test checkpoints a container on host a with --checkpoint-dir, reads the images,
checks facts we know about the process, writes the set again and, for the counter,
restores new containers from the written copies: from a byte-identical copy, and from
one whose memory the library changed (the restored process shows the change).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from docker_hmigrate.criu import (
    FdType,
    ImageSet,
    March,
    check_supported,
    isa_specific_parts,
)
from docker_hmigrate.criu.isa import vma_kind
from tests.support.criu_images import assert_identical, assert_schema_covers
from tests.support.lab import (
    BASE_IMAGE,
    COUNTER_CMD,
    REDIS_IMAGE,
    LabHost,
    counter_values,
    unique,
    wait_until,
)

pytestmark = pytest.mark.lab


def checkpoint(host: LabHost, container: str, workdir: Path, name: str = "ck") -> Path:
    host.docker("checkpoint", "create", "--checkpoint-dir", str(workdir), container, name)
    return workdir / name


def restore_copy(host: LabHost, images: Path, name: str, env: list[str], cleanup) -> str:
    """Create a container like the counter, put `images` in as its checkpoint, start it."""
    cleanup.append(name)
    args = [a for e in env for a in ("-e", e)]
    cid = host.docker("create", "--name", name, *args, BASE_IMAGE, *COUNTER_CMD).strip()
    target = Path(host.data_root) / "containers" / cid / "checkpoints" / "ck"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(images, target)
    # Images byte-identical to a dump just taken on this daemon (same files, same mtimes)
    # tar to the same digest as the dump's copy in containerd's content store, which is
    # garbage collected a little later; until then the upload "already exists" (the
    # plugin's Engine.start retries the same way).
    deadline = time.monotonic() + 30
    while True:
        try:
            host.docker("start", "--checkpoint", "ck", name)
            return cid
        except AssertionError as exc:
            if "already exists" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_busybox_counter_images(host_a: LabHost, cleanup, workdir: Path) -> None:
    src = unique("criu-counter")
    marker = unique("hm-marker-unique")
    cleanup.append(src)
    host_a.docker("run", "-d", "--name", src, "-e", f"HM_MARKER={marker}", BASE_IMAGE,
                  *COUNTER_CMD)
    wait_until(lambda: len(counter_values(host_a.logs(src))) >= 3, what="the counter")
    ck = checkpoint(host_a, src, workdir)
    last = counter_values(host_a.logs(src))[-1]

    s = ImageSet.load(ck)
    assert check_supported(s) == [], check_supported(s)
    assert_schema_covers(s)
    assert s.inventory.img_version == 2
    assert s.arch == March.X86_64
    # the pid tree: the shell counter is pid 1; its only possible child is `sleep 1`
    assert s.root_pid == 1 and s.threads(1) == [1]
    assert s.core(1).tc.comm == "sh"
    for p in s.pstree[1:]:
        assert p.ppid == 1 and s.core(p.pid).tc.comm == "sleep"
    assert s.exe_path(1) == "/bin/busybox"

    # registers: pc in busybox's code, sp in the stack, a thread pointer
    mm = s.mm(1)
    regs = s.core(1).thread_info.gpregs
    code = [v for v in mm.vmas if v.prot & 4 and s.path_of(v.shmid) == "/bin/busybox"]
    assert any(v.start <= regs.ip < v.end for v in code), hex(regs.ip)
    stack = next(v for v in mm.vmas if v.start <= mm.mm_start_stack < v.end)
    assert stack.start <= regs.sp < stack.end
    assert regs.fs_base != 0
    kinds = {vma_kind(v.status) for v in mm.vmas}
    assert {"vdso", "vvar"} <= kinds

    # the environment, read from the dumped stack between mm_env_start and mm_env_end
    mem = s.memory(1)
    env = mem.read(mm.mm_env_start, mm.mm_env_end - mm.mm_env_start).split(b"\0")
    assert f"HM_MARKER={marker}".encode() in env
    hits = mem.find(marker.encode(), mm.mm_env_start, mm.mm_env_end)
    assert len(hits) == 1
    parts = isa_specific_parts(s)
    assert any("vdso" in p for p in parts) and any("seccomp.img" in p for p in parts)

    # written again: byte-identical
    same = workdir / "same"
    s.save(same)
    assert_identical(ck, same)

    # restored from the written copy: the counter goes on where it stopped
    env_args = [f"HM_MARKER={marker}"]
    a = unique("criu-same")
    restore_copy(host_a, same, a, env_args, cleanup)
    wait_until(lambda: len(counter_values(host_a.logs(a))) >= 2, what="restored counter")
    logged = counter_values(host_a.logs(a))
    assert logged[0] == last + 1, (last, logged)

    # changed through the library: the marker in memory, seen by the restored process,
    # and a page added below the dumped part of the stack, holding another marker
    changed = marker.upper()
    mem.write(hits[0], changed.encode())
    lowest = min(r.vaddr for r in mem.runs if stack.start <= r.vaddr < stack.end)
    new_page = lowest - 2 * 4096
    assert new_page >= stack.start and not mem.contains(new_page)
    assert mem.populate(new_page, 4096) == 1
    added = unique("added-page")
    mem.write(new_page + 100, added.encode())
    edited = workdir / "edited"
    s.save(edited)
    assert (ck / "core-1.img").read_bytes() == (edited / "core-1.img").read_bytes()
    b = unique("criu-edited")
    restore_copy(host_a, edited, b, env_args, cleanup)
    wait_until(lambda: len(counter_values(host_a.logs(b))) >= 2, what="edited counter")
    assert counter_values(host_a.logs(b))[0] == last + 1
    environ = host_a.docker("exec", b, "cat", "/proc/1/environ")
    assert f"HM_MARKER={changed}" in environ.split("\0"), environ
    page = host_a.docker("exec", b, "sh", "-c", f"dd if=/proc/1/mem bs=4096 "
                         f"skip={new_page // 4096} count=1 2>/dev/null | grep -a -o {added}")
    assert page.strip() == added


def test_redis_images(host_a: LabHost, cleanup, workdir: Path) -> None:
    src = unique("criu-redis")
    cleanup.append(src)
    host_a.docker("run", "-d", "--name", src, REDIS_IMAGE)
    wait_until(lambda: "Ready to accept connections" in host_a.logs(src), what="redis")
    ck = checkpoint(host_a, src, workdir)

    s = ImageSet.load(ck)
    assert check_supported(s) == [], check_supported(s)
    assert_schema_covers(s)
    assert s.pids == [1] and s.core(1).tc.comm == "redis-server"
    tids = s.threads(1)
    assert len(tids) >= 4  # the main thread, bio threads, jemalloc's
    assert all(s.core(t).mtype == March.X86_64 for t in tids)
    for t in tids:  # every thread's sp lies in a mapped, dumped area
        sp = s.core(t).thread_info.gpregs.sp
        assert any(v.start <= sp < v.end for v in s.mm(1).vmas)
    listening = [f.isk for f in s.files.values() if f.type == FdType.INETSK]
    assert any(sk.src_port == 6379 and sk.state == 10 for sk in listening)  # TCP_LISTEN
    assert "redis" in (s.exe_path(1) or "")
    same = workdir / "same"
    s.save(same)
    assert_identical(ck, same)
