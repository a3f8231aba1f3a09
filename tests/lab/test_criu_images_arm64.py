"""The CRIU image library on real aarch64 checkpoints (the lab's arm64 VM, lab/arm64/up).

Two ways to get images out of the aarch64 host, both through the engine API only:
- CRIU run directly in the guest (a privileged helper container entering the guest's
  namespaces) dumps a busybox counter; the images are read here, changed (a marker in
  memory), written back and restored with `criu restore` in the guest, and the restored
  process shows the change. This does not depend on Docker's checkpoint path.
- `docker checkpoint create` of a counter container; images read and written again
  byte-identically (Docker restores hang on this guest, see that test).
Files move through created-never-started helper containers that bind-mount a folder.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
from pathlib import Path

import docker
import pytest
import requests

from docker_hmigrate.criu import ImageSet, March, check_supported, isa_specific_parts
from tests.support.criu_images import assert_identical, assert_schema_covers
from tests.support.lab import (
    ARM_IMAGE,
    ARM_URL,
    COUNTER_CMD,
    counter_values,
    lab_unavailable,
    unique,
    wait_until,
)

pytestmark = [pytest.mark.lab, pytest.mark.arm64]
CHECKPOINT_TIMEOUT = 150  # s; a checkpoint takes ~5 s on the emulated guest


@contextlib.contextmanager
def containers_dir(arm: docker.DockerClient, on_arm: list[str]):
    """A helper container whose /c is the host's <DockerRootDir>/containers."""
    root = arm.info()["DockerRootDir"]
    name = unique("hm-criu-cp")
    on_arm.append(name)
    helper = arm.containers.create(ARM_IMAGE, ["true"], name=name,
                                   volumes={f"{root}/containers": {"bind": "/c", "mode": "rw"}})
    try:
        yield helper
    finally:
        helper.remove(force=True)


def fetch(helper, cid: str, name: str, dest: Path) -> Path:
    stream, _ = helper.get_archive(f"/c/{cid}/checkpoints/{name}")
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        tar.extractall(dest, filter="data")
    return dest / name


def guest_sh(arm: docker.DockerClient, script: str) -> str:
    """Run a shell script in the guest's own namespaces (root, full PATH)."""
    out = arm.containers.run(
        ARM_IMAGE, ["nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--", "/bin/sh", "-c",
                    "export PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin\n" + script],
        privileged=True, pid_mode="host", network_mode="host", remove=True)
    return out.decode(errors="replace")


def guest_get(arm: docker.DockerClient, folder: str, dest: Path) -> Path:
    c = arm.containers.create(ARM_IMAGE, ["true"], volumes={folder: {"bind": "/d", "mode": "ro"}})
    try:
        stream, _ = c.get_archive("/d")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            tar.extractall(dest, filter="data")
    finally:
        c.remove(force=True)
    return dest / "d"


def guest_put(arm: docker.DockerClient, src: Path, parent: str, name: str) -> None:
    c = arm.containers.create(ARM_IMAGE, ["true"], volumes={parent: {"bind": "/p", "mode": "rw"}})
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(src, arcname=name)
        assert c.put_archive("/p", buf.getvalue())
    finally:
        c.remove(force=True)


def test_aarch64_criu_dump_read_edit_restore(arm, workdir: Path) -> None:
    marker = unique("hm-arm-direct")
    base = f"/tmp/{unique('hm-criu')}"  # in the guest; removed at the end
    try:
        out = guest_sh(arm, f"""
            mkdir -m 700 {base} {base}/ck
            HM_MARKER={marker} setsid /bin/busybox sh -c \
              'i=0; while true; do i=$((i+1)); sleep 1; done' </dev/null >/dev/null 2>&1 &
            p=$!; sleep 2; echo pid=$p
            timeout 120 criu dump -t $p -D {base}/ck -o dump.log && echo dumped || {{
              kill -9 $p; tail -3 {base}/ck/dump.log; }}""")
        pid = int(out.split("pid=")[1].split()[0])
        if "dumped" not in out.split():
            lab_unavailable(f"CRIU on the aarch64 host cannot dump now: {out[-500:]}")
        ck = guest_get(arm, f"{base}/ck", workdir)

        s = ImageSet.load(ck)
        assert check_supported(s) == [], check_supported(s)
        assert_schema_covers(s)
        assert s.arch == March.AARCH64 and s.root_pid == pid
        ti = s.core(pid).ti_aarch64
        assert len(ti.gpregs.regs) == 31 and ti.tls != 0
        assert len(ti.fpsimd.vregs) == 64  # v0..v31, two halves each
        mm = s.mm(pid)
        exe = s.exe_path(pid)
        code = [v for v in mm.vmas if v.prot & 4 and s.path_of(v.shmid) == exe]
        assert any(v.start <= ti.gpregs.pc < v.end for v in code), hex(ti.gpregs.pc)
        stack = next(v for v in mm.vmas if v.start <= mm.mm_start_stack < v.end)
        assert stack.start <= ti.gpregs.sp < stack.end
        mem = s.memory(pid)
        hits = mem.find(marker.encode(), mm.mm_env_start, mm.mm_env_end)
        assert len(hits) == 1
        same = workdir / "same"
        s.save(same)
        assert_identical(ck, same)

        mem.write(hits[0], marker.upper().encode())
        edited = workdir / "edited"
        s.save(edited)
        guest_put(arm, edited, base, "edited")
        # criu restore does not always return on this emulated guest (docker restores
        # there hang the same way, in CRIU); bound it, and look at the restored process.
        out = guest_sh(arm, f"""
            criu restore -D {base}/edited -d -o restore.log &
            r=$!
            for i in $(seq 60); do
              tr '\\0' '\\n' < /proc/{pid}/environ 2>/dev/null | grep -q HM_MARKER && break
              sleep 1
            done
            tr '\\0' '\\n' < /proc/{pid}/environ | grep HM_MARKER
            kill -9 $r -{pid} {pid} 2>/dev/null; true""")
        assert f"HM_MARKER={marker.upper()}" in out, out
    finally:
        guest_sh(arm, f"rm -rf {base}")


def logs(arm: docker.DockerClient, name: str) -> list[int]:
    return counter_values(arm.containers.get(name).logs().decode(errors="replace"))


def test_aarch64_docker_checkpoint_images(arm, on_arm, workdir: Path) -> None:
    """Images of `docker checkpoint create` on aarch64: read and written back identically.

    No `docker start --checkpoint` here: on the emulated guest every Docker restore
    (also the lab's own test, with untouched images) hangs inside `criu restore`,
    whatever the images; the CRIU-direct test above restores our written images.
    """
    src = unique("criu-arm-counter")
    marker = unique("hm-arm-marker")
    on_arm.append(src)
    c = arm.containers.run(ARM_IMAGE, COUNTER_CMD, name=src, detach=True,
                           environment={"HM_MARKER": marker})
    wait_until(lambda: len(logs(arm, src)) >= 3, timeout=180, what="the arm64 counter")
    api = docker.APIClient(base_url=ARM_URL, version="auto", timeout=CHECKPOINT_TIMEOUT)
    try:
        res = api._post_json(api._url("/containers/{0}/checkpoints", c.id),
                             data={"CheckpointID": "ck", "Exit": True})
        api._raise_for_status(res)
    except requests.exceptions.ReadTimeout:
        pid = arm.containers.get(src).attrs["State"]["Pid"]
        guest_sh(arm, f"kill -9 $(pgrep -f 'criu: dump --rpc -t {pid} ') 2>/dev/null; true")
        lab_unavailable(f"CRIU on the aarch64 host hangs: no checkpoint in {CHECKPOINT_TIMEOUT} s")
    except docker.errors.APIError as exc:  # the lab host's runc/CRIU set-up, not images
        lab_unavailable(f"aarch64 host cannot checkpoint containers: {exc}")
    with containers_dir(arm, on_arm) as helper:
        ck = fetch(helper, c.id, "ck", workdir)

        s = ImageSet.load(ck)
        assert check_supported(s) == [], check_supported(s)
        assert_schema_covers(s)
        assert s.arch == March.AARCH64
        assert s.root_pid == 1 and s.core(1).tc.comm == "sh"
        core = s.core(1)
        assert not core.HasField("thread_info") and core.HasField("ti_aarch64")
        ti = core.ti_aarch64
        assert len(ti.gpregs.regs) == 31 and ti.tls != 0
        mm = s.mm(1)
        code = [v for v in mm.vmas if v.prot & 4 and s.path_of(v.shmid) == "/bin/busybox"]
        assert any(v.start <= ti.gpregs.pc < v.end for v in code), hex(ti.gpregs.pc)
        stack = next(v for v in mm.vmas if v.start <= mm.mm_start_stack < v.end)
        assert stack.start <= ti.gpregs.sp < stack.end
        env = s.memory(1).read(mm.mm_env_start, mm.mm_env_end - mm.mm_env_start)
        assert f"HM_MARKER={marker}".encode() in env.split(b"\0")
        parts = isa_specific_parts(s)
        assert any("ti_aarch64" in p for p in parts) and not any("vsyscall" in p for p in parts)

        same = workdir / "same"
        s.save(same)
        assert_identical(ck, same)
