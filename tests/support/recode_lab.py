"""Programs built by hmigrate-cc on the lab: read from their images, parked and
checkpointed, recoded and restored on the aarch64 host, and the recoded images checked.
Shared by the recode lab tests and bench/ (bench/recode.py, bench/corpus.py)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import docker
import requests

from docker_hmigrate.criu import ImageSet
from docker_hmigrate.criu.schema import March
from docker_hmigrate.engine import Host
from docker_hmigrate.isa import AARCH64
from docker_hmigrate.recode import (
    Program,
    merge_into_template,
    process,
    template_facts,
    transform,
)
from docker_hmigrate.validate import load_program
from tests.support.lab import ARM_URL, lab_unavailable, unique, wait_until

HELLO = "localhost:5000/hmigrate/helloworld:latest"
REDIS = "localhost:5000/hmigrate/redis"



# A multi-threaded program without thread-local variables (TLS: test_recode_tls_lab.py).
THREADS_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdint.h>
#include <unistd.h>
static long counts[4];
static void *worker(void *arg)
{
	int id = (int)(intptr_t)arg;
	long mine = 0;
	for (;;) {
		mine++;
		counts[id] = mine;
		usleep(20000);
	}
	return 0;
}
int main(void)
{
	pthread_t t[3];
	for (int i = 0; i < 3; i++)
		pthread_create(&t[i], 0, worker, (void *)(intptr_t)i);
	for (long n = 0;; n++) {
		printf("tick %ld\n", n);
		fflush(stdout);
		sleep(1);
	}
	pthread_join(t[0], 0);
	return 0;
}
"""


def read_file(container, path: str) -> bytes | None:
    try:
        stream, _ = container.get_archive(path)
    except docker.errors.NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.getmembers()[0]
        f = tar.extractfile(member)
        return f.read() if f else None


def park_and_checkpoint(client: docker.DockerClient, url: str, container, dest: Path | None,
                        timeout: float = 60, park_pcs: set[int] | None = None) -> Path | None:
    """Park the program, then checkpoint it (leaving it running). A parked thread wakes
    every 200 ms to re-kick the others (runtime): a checkpoint can catch it outside the
    futex wait, so with park_pcs the checkpoint is retried until every thread is there."""
    wait_until(lambda: container.logs(), timeout, what="first output")
    container.kill(signal=40)
    wait_until(lambda: read_file(container, "/run/hmigrate/parked"), timeout,
               what="parked file")
    api = docker.APIClient(base_url=url, version="auto", timeout=max(timeout, 120))
    for _attempt in range(10):
        data = {"CheckpointID": "ck", "Exit": False}
        if dest is not None:
            dest.mkdir(mode=0o700, parents=True, exist_ok=True)
            data["CheckpointDir"] = str(dest)
        res = api._post_json(api._url("/containers/{0}/checkpoints", container.id), data=data)
        api._raise_for_status(res)
        if dest is None or park_pcs is None:
            return dest / "ck" if dest is not None else None
        s = ImageSet.load(dest / "ck")
        if all(s.core(t).thread_info.gpregs.ip in park_pcs for p in s.pids
               for t in s.threads(p)):
            return dest / "ck"
        shutil.rmtree(dest / "ck")
        time.sleep(0.3)
    raise AssertionError("no checkpoint with every thread at the park point in 10 tries")


def park_pcs(program: Program) -> set[int]:
    p = program.metadata["runtime"]["park_points"]["x86-64"]
    return {p["blocked_pc"], p["syscall_pc"]}


def program_of_image(client: docker.DockerClient, image: str) -> Program:
    """The multi-ISA program an image carries (metadata and both variants), read as
    migrate reads it: validate.load_program on a container created from the image."""
    c = client.containers.create(image, ["true"], name=unique("hm-rc-files"))
    try:
        return load_program(Host("lab", client), client.api.inspect_container(c.id))
    finally:
        c.remove(force=True)


def check_recoded(out: Path, program: Program) -> dict:
    """Everything a restore on aarch64 depends on, read back from the written set."""
    md = program.metadata
    s = ImageSet.load(out)
    assert s.arch == March.AARCH64
    idx_calls = {c["return_address"]: f for f in md["functions"]
                 for c in f["isa"]["aarch64"]["call_sites"]}
    bottoms = {b["return_address"] for b in md["runtime"]["bottom_frames"]["aarch64"]}
    park = md["runtime"]["park_points"]["aarch64"]
    target = process.Elf.parse(program.binaries["aarch64"])
    facts = {}
    for pid in s.pids:
        mem, mm = s.memory(pid), s.mm(pid)
        for tid in s.threads(pid):
            core = s.core(tid)
            assert core.mtype == March.AARCH64 and not core.HasField("thread_info")
            ti = core.ti_aarch64
            g = ti.gpregs
            assert not ti.HasField("pac_keys")  # nothing signed on our stacks
            assert g.pc in (park["blocked_pc"], park["syscall_pc"])
            assert g.sp % 16 == 0
            vma = s.vma_at(pid, g.sp)
            assert vma is not None and vma.prot & 3 == 3
            # the leaf park frame: x30 returns into hmigrate_park, x29 is its frame
            assert idx_calls[g.regs[30]]["name"] == "hmigrate_park"
            assert g.regs[29] == g.sp + park["frame_size"]
            # walk the frame-pointer chain with the aarch64 metadata only
            fp, names = g.regs[29], []
            while True:
                nfp, ra = mem.read_u64(fp), mem.read_u64(fp + 8)
                if ra in bottoms:
                    assert nfp == 0
                    break
                f = idx_calls[ra]  # KeyError: a return address aarch64 does not have
                names.append(f["name"])
                # aarch64 keeps its own return address in the lr-copy register: the
                # callee saved that register's value in its frame
                assert nfp > fp
                fp = nfp
            facts.setdefault("stacks", {})[tid] = names
            # TLS: musl's struct pthread just below TPIDR_EL0, self pointer
            td = ti.tls - AARCH64.pthread.size
            assert mem.read_u64(td) == td
            assert mem.read_u64(td + AARCH64.pthread["common"]) & 0xFFFFFFFF == tid
        # the executable: the aarch64 variant's segments
        exe = [v for v in mm.vmas if v.shmid == mm.exe_file_id and not v.status & 0x200]
        want = [(process.page_down(va), process.page_up(va + fs)) for _o, va, fs, _m, _f
                in target.loads]
        assert [(v.start, v.end) for v in exe] == want
        assert s.file_object(mm.exe_file_id).size == len(program.binaries["aarch64"])
        for v in exe:
            if not v.prot & 2:  # no source-ISA code left in the images
                assert not any(r.vaddr < v.end and v.start < r.end for r in mem.runs)
        assert not any(v.status & process.VMA_AREA_VSYSCALL for v in mm.vmas)
        assert all(v.end <= 1 << 48 for v in mm.vmas)
        auxv = dict(zip(mm.mm_saved_auxv[::2], mm.mm_saved_auxv[1::2], strict=False))
        assert auxv[process.AT["AT_ENTRY"]] == target.entry
        assert auxv[process.AT["AT_PHDR"]] == target.phdr_addr
        assert auxv[process.AT["AT_PHNUM"]] == target.phnum
        assert auxv[process.AT["AT_HWCAP"]] == AARCH64.auxv.hwcap
        assert mem.read(auxv[process.AT["AT_PLATFORM"]], 8) == AARCH64.auxv.platform
        vdso = next(v for v in mm.vmas if v.status & process.VMA_AREA_VDSO)
        assert vdso.start == auxv[process.AT["AT_SYSINFO_EHDR"]]
        assert mem.read(vdso.start, 4) == b"\x7fELF"
        for sa in s.core(pid).tc.sigactions:
            if sa.sigaction > 1 and sa.flags & process.SA_RESTORER:
                assert sa.restorer in {x["aarch64"][0] for x in md["symbols"]
                                       if x["name"] == "__restore_rt" and x["aarch64"]}
    return facts


def build_mt(workdir: Path, source: str = THREADS_C,
             flags: tuple[str, ...] = ()) -> tuple[Path, Program]:
    if shutil.which("hmigrate-cc") is None:
        lab_unavailable("hmigrate-cc is not installed (pip install -e .)")
    src = workdir / "build"
    src.mkdir(exist_ok=True)
    (src / "mt.c").write_text(source)
    proc = subprocess.run(["hmigrate-cc", *flags, "-O2", "-o", "mt", "mt.c", "-lpthread"],
                          cwd=src,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        lab_unavailable(f"hmigrate-cc cannot build here: {proc.stderr[-300:]}")
    os.chmod(src, 0o755)
    return src, Program("/t/mt_x86-64", json.loads((src / "mt.hmigrate.json").read_text()),
                        {i: (src / f"mt_{i}").read_bytes() for i in ("x86-64", "aarch64")})


def arm_container_with(arm: docker.DockerClient, name: str, binary: bytes,
                       args: tuple[str, ...] = ()):
    """A busybox container on the aarch64 host running /t/mt_x86-64 (the path the
    x86-64 process had), which holds the aarch64 variant."""
    image = next(t for i in arm.images.list() for t in i.tags if "busybox" in t)
    c = arm.containers.create(image, ["/t/mt_x86-64", *args], name=name,
                              security_opt=["seccomp=unconfined"])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ti = tarfile.TarInfo("t/mt_x86-64")
        ti.size, ti.mode = len(binary), 0o755
        tar.addfile(ti, io.BytesIO(binary))
    assert c.put_archive("/", buf.getvalue())
    return c


def fetch_checkpoint(arm: docker.DockerClient, cid: str, dest: Path) -> Path:
    root = arm.info()["DockerRootDir"]
    helper_image = next((t for i in arm.images.list() for t in i.tags if "busybox" in t), HELLO)
    h = arm.containers.create(helper_image, ["true"],
                              volumes={f"{root}/containers": {"bind": "/c", "mode": "rw"}})
    try:
        stream, _ = h.get_archive(f"/c/{cid}/checkpoints/ck")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            tar.extractall(dest, filter="data")
    finally:
        h.remove(force=True)
    return dest / "ck"


def put_checkpoint(arm: docker.DockerClient, cid: str, src: Path) -> None:
    root = arm.info()["DockerRootDir"]
    helper_image = next((t for i in arm.images.list() for t in i.tags if "busybox" in t), HELLO)
    h = arm.containers.create(helper_image, ["true"],
                              volumes={f"{root}/containers": {"bind": "/c", "mode": "rw"}})
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            d = tarfile.TarInfo("checkpoints")
            d.type, d.mode = tarfile.DIRTYPE, 0o700
            tar.addfile(d)
            tar.add(src, arcname="checkpoints/ck")
        assert h.put_archive(f"/c/{cid}", buf.getvalue())
    finally:
        h.remove(force=True)


def restore_recoded(arm: docker.DockerClient, ck: Path, native: Path, out: Path,
                    program: Program, target) -> None:
    """Recode the x86-64 set `ck` into the native aarch64 checkpoint `native` (its
    host-describing images kept), restore `target` from it and resume the program."""
    transform.recode_images(ck, out, program, "x86-64", "aarch64", template_facts(native))
    merge_into_template(out, native)  # the native set's own process images are not ours
    put_checkpoint(arm, target.id, native)
    host = Host("hm-arm", docker.DockerClient(base_url=ARM_URL, version="auto", timeout=240))
    try:
        host.start(target.id, checkpoint="ck")
    except requests.exceptions.ReadTimeout:
        lab_unavailable("docker start --checkpoint hangs on the aarch64 host")
    target.reload()
    assert target.status == "running", target.attrs["State"]
    target.kill(signal=41)


@contextlib.contextmanager
def recoded_on_arm(arm: docker.DockerClient, ck: Path, workdir: Path, program: Program,
                   make, tag: str):
    """A native run of the program parked and checkpointed on the aarch64 host (its
    host-describing images are the template), the recoded set `ck` restored into a new
    container there and resumed; yields that container. make(name, role) creates a
    container of the program on the aarch64 host, role "native" or "target". Both
    containers are removed afterwards."""
    made: list = []
    try:
        nc = make(unique(f"{tag}-native"), "native")
        made.append(nc)
        nc.start()
        try:
            park_and_checkpoint(arm, ARM_URL, nc, None, timeout=180)
        except requests.exceptions.ReadTimeout:
            lab_unavailable("CRIU on the aarch64 host hangs")
        native = fetch_checkpoint(arm, nc.id, workdir / "native")
        target = make(unique(f"{tag}-target"), "target")
        made.append(target)
        restore_recoded(arm, ck, native, workdir / "arm", program, target)
        yield target
    finally:
        for c in made:
            with contextlib.suppress(Exception):
                c.remove(force=True)
