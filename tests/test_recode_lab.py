"""Recode on real checkpoints: a parked hmigrate-cc program checkpointed by Docker+CRIU on
host a (x86-64), recoded for aarch64, and checked against the aarch64 metadata and
binary (and, when the aarch64 lab host is up, field by field against a real aarch64
checkpoint of the same program parked at the same point).

Restoring the recoded set on the aarch64 host is @pytest.mark.arm64 and skips while
that host cannot restore checkpoints (see docs/recode.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import docker
import pytest
import requests

from docker_hmigrate.criu import ImageSet
from docker_hmigrate.criu.schema import March
from docker_hmigrate.engine import Host
from docker_hmigrate.recode import (
    Program,
    aarch64,
    merge_into_template,
    process,
    template_facts,
    transform,
)
from docker_hmigrate.recode.process import TargetFacts
from docker_hmigrate.validate import load_program
from tests.lab import LabHost, lab_unavailable, unique

pytestmark = pytest.mark.lab

HELLO = "localhost:5000/hmigrate/helloworld:latest"
ARM_URL = "tcp://127.0.0.1:2391"
REPO = Path(__file__).resolve().parent.parent

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


def wait_until(cond, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


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
    wait_until(lambda: container.logs(), timeout, "first output")
    container.kill(signal=40)
    wait_until(lambda: read_file(container, "/run/hmigrate/parked"), timeout, "parked file")
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


@pytest.fixture
def workdir(tmp_path: Path):
    d = tmp_path / "w"
    d.mkdir(mode=0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)  # checkpoints hold process memory


def program_of_image(client: docker.DockerClient, image: str) -> Program:
    """The multi-ISA program an image carries (metadata and both variants), read as
    migrate reads it: validate.load_program on a container created from the image."""
    c = client.containers.create(image, ["true"], name=unique("hm-rc-files"))
    try:
        return load_program(Host("lab", client), client.api.inspect_container(c.id))
    finally:
        c.remove(force=True)


@pytest.fixture
def hello_program(host_a: LabHost) -> Program:
    try:
        host_a.client.images.get(HELLO)
    except docker.errors.ImageNotFound:
        lab_unavailable(f"{HELLO} is not on host a (build it: helloworld/Dockerfile)")
    return program_of_image(host_a.client, HELLO)


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
            td = ti.tls - aarch64.PTHREAD_SIZE
            assert mem.read_u64(td) == td
            assert mem.read_u64(td + aarch64.PTHREAD["common"]) & 0xFFFFFFFF == tid
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
        assert auxv[process.AT["AT_HWCAP"]] == aarch64.HWCAP
        assert mem.read(auxv[process.AT["AT_PLATFORM"]], 8) == aarch64.PLATFORM
        vdso = next(v for v in mm.vmas if v.status & process.VMA_AREA_VDSO)
        assert vdso.start == auxv[process.AT["AT_SYSINFO_EHDR"]]
        assert mem.read(vdso.start, 4) == b"\x7fELF"
        for sa in s.core(pid).tc.sigactions:
            if sa.sigaction > 1 and sa.flags & process.SA_RESTORER:
                assert sa.restorer in {x["aarch64"][0] for x in md["symbols"]
                                       if x["name"] == "__restore_rt" and x["aarch64"]}
    return facts


def test_recode_parked_helloworld(host_a: LabHost, cleanup, workdir: Path,
                                  hello_program: Program) -> None:
    name = unique("hm-rc-hello")
    cleanup.append(name)
    c = host_a.client.containers.run(HELLO, name=name, detach=True,
                                     security_opt=["seccomp=unconfined"])
    ck = park_and_checkpoint(host_a.client, host_a.url, c, workdir / "x86",
                             park_pcs=park_pcs(hello_program))
    out = workdir / "arm"
    assert transform.preflight_problems(hello_program, "x86-64", "aarch64") == []
    times = transform.recode_images(ck, out, hello_program, "x86-64", "aarch64",
                                    TargetFacts(maps={"vdso": [(0, 8192)],
                                                      "vvar": [(0, 8192)]}))
    assert set(times) >= {"load", "unwind", "stacks", "process", "save"}
    facts = check_recoded(out, hello_program)
    (stack,) = facts["stacks"].values()
    assert stack[0] == "__cyg_profile_func_enter" and stack[-1] == "main"
    assert "__wrap_sleep" in stack
    # source images untouched
    assert ImageSet.load(ck).arch == March.X86_64



def test_recode_command_line(host_a: LabHost, cleanup, workdir: Path,
                             hello_program: Program) -> None:
    name = unique("hm-rc-cli")
    cleanup.append(name)
    c = host_a.client.containers.run(HELLO, name=name, detach=True,
                                     security_opt=["seccomp=unconfined"])
    ck = park_and_checkpoint(host_a.client, host_a.url, c, workdir / "x86")
    prog_dir = workdir / "prog"  # the layout `recode -p` reads: NAME.hmigrate.json, NAME_ISA
    prog_dir.mkdir()
    (prog_dir / "hello.hmigrate.json").write_text(json.dumps(hello_program.metadata))
    for isa, elf in hello_program.binaries.items():
        (prog_dir / f"hello_{isa}").write_bytes(elf)
    cli_out = workdir / "arm-cli"
    proc = subprocess.run([sys.executable, "-m", "docker_hmigrate", "recode", str(ck), "-o",
                           str(cli_out), "-p", str(prog_dir), "--to-isa", "aarch64",
                           "--path", "/hello", "--json"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    check_recoded(cli_out, hello_program)


def test_recode_refuses_seccomp_filters(host_a: LabHost, cleanup, workdir: Path,
                                        hello_program: Program) -> None:
    """Docker's default seccomp profile checks the x86-64 syscall ABI: refused."""
    name = unique("hm-rc-seccomp")
    cleanup.append(name)
    c = host_a.client.containers.run(HELLO, name=name, detach=True)
    ck = park_and_checkpoint(host_a.client, host_a.url, c, workdir / "x86")
    with pytest.raises(transform.Untranslatable, match="seccomp"):
        transform.recode_images(ck, workdir / "arm", hello_program, "x86-64", "aarch64")
    assert not (workdir / "arm").exists()


def test_recode_multithreaded(host_a: LabHost, cleanup, workdir: Path) -> None:
    """Four threads (main in sleep, three workers in usleep), each parked, each stack
    rebuilt; thread stacks and struct pthreads live in musl's mmap'd areas."""
    if shutil.which("hmigrate-cc") is None:
        lab_unavailable("hmigrate-cc is not installed (pip install -e .)")
    src = workdir / "build"
    src.mkdir()
    (src / "mt.c").write_text(THREADS_C)
    proc = subprocess.run(["hmigrate-cc", "-O2", "-o", "mt", "mt.c", "-lpthread"], cwd=src,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        lab_unavailable(f"hmigrate-cc cannot build here: {proc.stderr[-300:]}")
    os.chmod(src, 0o755)
    program = Program("/t/mt_x86-64", json.loads((src / "mt.hmigrate.json").read_text()),
                      {isa: (src / f"mt_{isa}").read_bytes() for isa in ("x86-64", "aarch64")})
    assert transform.preflight_problems(program, "x86-64", "aarch64") == []
    name = unique("hm-rc-mt")
    cleanup.append(name)
    c = host_a.client.containers.run("hmlab/busybox:latest", ["/t/mt_x86-64"], name=name,
                                     detach=True, security_opt=["seccomp=unconfined"],
                                     volumes={str(src): {"bind": "/t", "mode": "ro"}})
    ck = park_and_checkpoint(host_a.client, host_a.url, c, workdir / "x86",
                             park_pcs=park_pcs(program))
    s = ImageSet.load(ck)
    assert len(s.threads(1)) == 4
    out = workdir / "arm"
    transform.recode_images(ck, out, program, "x86-64", "aarch64")
    facts = check_recoded(out, program)
    stacks = facts["stacks"]
    assert len(stacks) == 4
    assert sum(1 for st in stacks.values() if st and st[-1] == "worker") == 3
    assert sum(1 for st in stacks.values() if st and st[-1] == "main") == 1
    tps = {ImageSet.load(out).core(t).ti_aarch64.tls for t in stacks}
    assert len(tps) == 4


# -- against the real aarch64 host -------------------------------------------------

@pytest.fixture
def arm() -> docker.DockerClient:
    if os.geteuid() != 0:
        lab_unavailable("lab tests need root")
    try:
        client = docker.DockerClient(base_url=ARM_URL, version="auto", timeout=300)
        # Pulled, not looked up: a fresh VM has none, and a running one may hold an older
        # build under the same tag (the variants must come from the same build).
        client.images.pull(HELLO.rsplit(":", 1)[0], tag="latest", platform="linux/arm64")
        client.images.pull(REDIS, tag="arm64")
    except Exception as exc:  # noqa: BLE001 - any failure: the VM is not ready
        lab_unavailable(f"aarch64 lab host not ready on {ARM_URL} ({exc})")
    return client


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


@pytest.mark.arm64
def test_recoded_matches_native_aarch64_checkpoint(host_a: LabHost, arm, cleanup,
                                                   workdir: Path,
                                                   hello_program: Program) -> None:
    """The same program parked at the same point on the aarch64 host: same frames (as
    offsets from the outermost CFA), same registers at the park point, same TLS
    relation, same kind of VMAs."""
    name = unique("hm-rc-native")
    cleanup.append(name)
    c = host_a.client.containers.run(HELLO, name=name, detach=True,
                                     security_opt=["seccomp=unconfined"])
    ck = park_and_checkpoint(host_a.client, host_a.url, c, workdir / "x86")
    nc = arm.containers.run(HELLO, name=name, detach=True, security_opt=["seccomp=unconfined"])
    try:
        try:
            park_and_checkpoint(arm, ARM_URL, nc, None, timeout=180)
        except requests.exceptions.ReadTimeout:
            lab_unavailable("CRIU on the aarch64 host hangs")
        native = fetch_checkpoint(arm, nc.id, workdir / "native")
    finally:
        with contextlib.suppress(Exception):
            nc.remove(force=True)
    out = workdir / "arm"
    vdso = native_vdso(native)
    transform.recode_images(ck, out, hello_program, "x86-64", "aarch64",
                            TargetFacts(maps={"vdso": [(0, len(vdso))], "vvar": [(0, 8192)]},
                                        vdso=vdso))
    a, b = frame_words(out), frame_words(native)
    assert a["chain"] == b["chain"]
    assert a["regs"] == b["regs"]
    assert a["tp_minus_td"] == b["tp_minus_td"] == aarch64.PTHREAD_SIZE
    assert a["vma_kinds"] == b["vma_kinds"]


def native_vdso(d: Path) -> bytes:
    s = ImageSet.load(d)
    v = next(v for v in s.mm(1).vmas if v.status & process.VMA_AREA_VDSO)
    return s.memory(1).read(v.start, v.end - v.start)


def frame_words(d: Path) -> dict:
    s = ImageSet.load(d)
    mem, ti = s.memory(1), s.core(1).ti_aarch64
    g = ti.gpregs
    fp, chain = g.regs[29], []
    while fp:
        nfp, ra = mem.read_u64(fp), mem.read_u64(fp + 8)
        if ra == 0:  # _start's terminating record (native stacks only)
            break
        chain.append((fp, ra))
        if nfp <= fp:
            break
        fp = nfp
    outer = chain[-1][0] + 16  # main's CFA
    td = ti.tls - aarch64.PTHREAD_SIZE
    return {"chain": [(f - outer, ra) for f, ra in chain],
            "regs": (g.sp - outer, g.regs[29] - outer, g.regs[30], g.regs[19]),
            "tp_minus_td": ti.tls - td if mem.read_u64(td) == td else None,
            "vma_kinds": sorted((v.status, v.prot) for v in s.mm(1).vmas)}


# files of an image set that describe the process (recoded); the others describe the
# host and container set-up (cgroups, mounts, namespaces, open files' mount ids)
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


@pytest.mark.arm64
def test_recoded_helloworld_resumes_on_aarch64(host_a: LabHost, arm, cleanup, workdir: Path,
                                               hello_program: Program) -> None:
    """x86-64 checkpoint -> recode -> restored by Docker+CRIU on the aarch64 host; after
    the resume signal the counter goes on at the next number.

    The lab's hosts differ in cgroup version (v1 on x86-64, v2 in the VM) and mount
    layout, which is not the ISA: the host-describing images come from a native
    checkpoint of the same image on the aarch64 host, the process images from recode."""
    name = unique("hm-rc-resume")
    cleanup.append(name)
    c = host_a.client.containers.run(HELLO, name=name, detach=True,
                                     security_opt=["seccomp=unconfined"])
    ck = park_and_checkpoint(host_a.client, host_a.url, c, workdir / "x86",
                             park_pcs=park_pcs(hello_program))
    last = int(c.logs().decode().split()[-1])
    def make(n: str, _role: str):
        return arm.containers.create(HELLO, name=n, security_opt=["seccomp=unconfined"])

    with recoded_on_arm(arm, ck, workdir, hello_program, make, "hm-rc") as target:
        lines = wait_until(lambda: target.logs().decode().split("\n")[:-1][:3]
                           if len(target.logs().decode().split("\n")) > 3 else None,
                           60, "the counter on aarch64")
        assert lines[0] == f"hello from hmigrate: {last + 1}", lines
        target.reload()
        assert target.status == "running"


def build_mt(workdir: Path, source: str = THREADS_C) -> tuple[Path, Program]:
    if shutil.which("hmigrate-cc") is None:
        lab_unavailable("hmigrate-cc is not installed (pip install -e .)")
    src = workdir / "build"
    src.mkdir(exist_ok=True)
    (src / "mt.c").write_text(source)
    proc = subprocess.run(["hmigrate-cc", "-O2", "-o", "mt", "mt.c", "-lpthread"], cwd=src,
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


@pytest.mark.arm64
def test_recoded_threads_resume_on_aarch64(host_a: LabHost, arm, cleanup,
                                           workdir: Path) -> None:
    """Four threads recoded from x86-64 and restored on aarch64: main's tick counter goes
    on at the next number and the process keeps running with its workers."""
    src, program = build_mt(workdir)
    name = unique("hm-rc-mt")
    cleanup.append(name)
    c = host_a.client.containers.run("hmlab/busybox:latest", ["/t/mt_x86-64"], name=name,
                                     detach=True, security_opt=["seccomp=unconfined"],
                                     volumes={str(src): {"bind": "/t", "mode": "ro"}})
    ck = park_and_checkpoint(host_a.client, host_a.url, c, workdir / "x86",
                             park_pcs=park_pcs(program))
    last = int(c.logs().decode().split()[-1])
    with recoded_on_arm(arm, ck, workdir, program, lambda n, _r: arm_container_with(
            arm, n, program.binaries["aarch64"]), "hm-rc-mt") as target:
        lines = wait_until(lambda: target.logs().decode().split("\n")[:-1][:3]
                           if len(target.logs().decode().split("\n")) > 3 else None,
                           60, "main's ticks on aarch64")
        assert lines[0] == f"tick {last + 1}", lines
        target.reload()
        assert target.status == "running"


REDIS = "localhost:5000/hmigrate/redis"


def redis_cmd(client: docker.DockerClient, image: str, ip: str, commands: list[str]) -> str:
    script = "".join(f"{c}\\r\\n" for c in commands) + "QUIT\\r\\n"
    out = client.containers.run(image, ["sh", "-c", f"printf '{script}' | nc {ip} 6379"],
                                remove=True)
    return out.decode(errors="replace")


@pytest.mark.arm64
def test_recoded_redis_serves_on_aarch64(host_a: LabHost, arm, cleanup,
                                         workdir: Path) -> None:
    """redis-server 7.0 (4 threads, a listening socket, epoll) with a key set on x86-64,
    recoded and restored on aarch64: the key is there and the server answers."""
    try:
        host_a.client.images.get(f"{REDIS}:latest-amd64")
    except docker.errors.ImageNotFound:
        lab_unavailable(f"{REDIS}:latest-amd64 is not on host a")
    program = program_of_image(host_a.client, f"{REDIS}:latest-amd64")
    assert transform.preflight_problems(program, "x86-64", "aarch64") == []
    name = unique("hm-rc-redis")
    cleanup.append(name)
    c = host_a.client.containers.run(f"{REDIS}:latest-amd64", name=name, detach=True,
                                     security_opt=["seccomp=unconfined"])
    wait_until(lambda: b"Ready to accept" in c.logs(), 60, "redis on host a")
    c.reload()
    ip = c.attrs["NetworkSettings"]["IPAddress"]
    assert "+OK" in redis_cmd(host_a.client, "hmlab/busybox:latest", ip,
                              ["SET hm:key from-x86-64"])
    ck = park_and_checkpoint(host_a.client, host_a.url, c, workdir / "x86",
                             park_pcs=park_pcs(program))
    names = [unique("hm-rc-redis-native"), unique("hm-rc-redis-target")]
    busybox = next(t for i in arm.images.list() for t in i.tags if "busybox" in t)
    try:
        nc = arm.containers.run(f"{REDIS}:latest-arm64", name=names[0], detach=True,
                                security_opt=["seccomp=unconfined"])
        wait_until(lambda: b"Ready to accept" in nc.logs(), 240, "redis on aarch64")
        try:
            park_and_checkpoint(arm, ARM_URL, nc, None, timeout=240)
        except requests.exceptions.ReadTimeout:
            lab_unavailable("CRIU on the aarch64 host hangs")
        native = fetch_checkpoint(arm, nc.id, workdir / "native")
        target = arm.containers.create(f"{REDIS}:latest-arm64", name=names[1],
                                       security_opt=["seccomp=unconfined"])
        restore_recoded(arm, ck, native, workdir / "arm", program, target)
        target.reload()
        assert target.status == "running", target.attrs["State"]
        reply = redis_cmd(arm, busybox, target.attrs["NetworkSettings"]["IPAddress"],
                          ["PING", "GET hm:key", "SET hm:after arm", "GET hm:after"])
        assert reply.split("\r\n")[:6] == ["+PONG", "$11", "from-x86-64", "+OK", "$3", "arm"]
    finally:
        for n in names:
            with contextlib.suppress(Exception):
                arm.containers.get(n).remove(force=True)
