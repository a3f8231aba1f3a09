"""Recode on real checkpoints: a parked hmigrate-cc program checkpointed by Docker+CRIU on
host a (x86-64), recoded for aarch64, and checked against the aarch64 metadata and
binary (and, when the aarch64 lab host is up, field by field against a real aarch64
checkpoint of the same program parked at the same point).

Restoring the recoded set on the aarch64 host is @pytest.mark.arm64 and skips while
that host cannot restore checkpoints (see docs/recode.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import docker
import pytest
import requests

from docker_hmigrate.criu import ImageSet
from docker_hmigrate.criu.schema import March
from docker_hmigrate.isa import AARCH64
from docker_hmigrate.recode import (
    Program,
    process,
    transform,
)
from docker_hmigrate.recode.process import TargetFacts
from tests.support.lab import ARM_URL, LabHost, lab_unavailable, unique, wait_until
from tests.support.recode_lab import (
    HELLO,
    REDIS,
    THREADS_C,
    arm_container_with,
    build_mt,
    check_recoded,
    fetch_checkpoint,
    park_and_checkpoint,
    park_pcs,
    program_of_image,
    recoded_on_arm,
    restore_recoded,
)

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def hello_program(host_a: LabHost) -> Program:
    try:
        host_a.client.images.get(HELLO)
    except docker.errors.ImageNotFound:
        lab_unavailable(f"{HELLO} is not on host a (build it: helloworld/Dockerfile)")
    return program_of_image(host_a.client, HELLO)


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

@pytest.fixture(scope="module")
def arm_images(arm: docker.DockerClient) -> None:
    """The programs' aarch64 images, pulled, not looked up: a fresh VM has none, and a
    running one may hold an older build under the same tag (the variants must come from
    the same build)."""
    try:
        arm.images.pull(HELLO.rsplit(":", 1)[0], tag="latest", platform="linux/arm64")
        arm.images.pull(REDIS, tag="latest-arm64")  # what lab/examples pushes
    except Exception as exc:  # noqa: BLE001 - any failure: the VM is not ready
        lab_unavailable(f"aarch64 lab host cannot pull the test images ({exc})")


@pytest.mark.arm64
@pytest.mark.usefixtures("arm_images")
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
    assert a["tp_minus_td"] == b["tp_minus_td"] == AARCH64.pthread.size
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
    td = ti.tls - AARCH64.pthread.size
    return {"chain": [(f - outer, ra) for f, ra in chain],
            "regs": (g.sp - outer, g.regs[29] - outer, g.regs[30], g.regs[19]),
            "tp_minus_td": ti.tls - td if mem.read_u64(td) == td else None,
            "vma_kinds": sorted((v.status, v.prot) for v in s.mm(1).vmas)}


@pytest.mark.arm64
@pytest.mark.usefixtures("arm_images")
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
                           60, what="the counter on aarch64")
        assert lines[0] == f"hello from hmigrate: {last + 1}", lines
        target.reload()
        assert target.status == "running"


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
                           60, what="main's ticks on aarch64")
        assert lines[0] == f"tick {last + 1}", lines
        target.reload()
        assert target.status == "running"


def redis_cmd(client: docker.DockerClient, image: str, ip: str, commands: list[str]) -> str:
    script = "".join(f"{c}\\r\\n" for c in commands) + "QUIT\\r\\n"
    out = client.containers.run(image, ["sh", "-c", f"printf '{script}' | nc {ip} 6379"],
                                remove=True)
    return out.decode(errors="replace")


@pytest.mark.arm64
@pytest.mark.usefixtures("arm_images")
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
    wait_until(lambda: b"Ready to accept" in c.logs(), 60, what="redis on host a")
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
        wait_until(lambda: b"Ready to accept" in nc.logs(), 240, what="redis on aarch64")
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


# Values an -Og build keeps in callee-saved registers across the calls where its threads
# park (main's n and h, each worker's id, h and mine): hmigrate-cc --optimize-frames.
OPTIMIZED_C = r"""
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdint.h>
#include <unistd.h>
static long counts[4];
static unsigned long hashes[4];
static unsigned long step(unsigned long h, long i)
{
	return (h ^ (unsigned long)i) * 1099511628211ul;
}
static __attribute__((noinline)) void bounce(jmp_buf env, long n)
{
	longjmp(env, (int)(n % 1000) + 1);
}
/* -O0 (it calls setjmp); main parks in its sleep, then longjmp returns into it: the
   jmp_buf must give back main's callee-saved registers */
static __attribute__((noinline)) long guarded(long n)
{
	jmp_buf env;
	int r = setjmp(env);
	if (r)
		return r - 1;
	sleep(1);
	bounce(env, n);
	return -1;
}
static void *worker(void *arg)
{
	int id = (int)(intptr_t)arg;
	unsigned long h = 1469598103934665603ul ^ (unsigned long)id;
	long mine = 0;
	for (;;) {
		mine++;
		h = step(h, mine);
		counts[id] = mine;
		hashes[id] = h;
		usleep(20000);
	}
	return 0;
}
int main(void)
{
	pthread_t t[3];
	for (int i = 0; i < 3; i++)
		pthread_create(&t[i], 0, worker, (void *)(intptr_t)i);
	unsigned long h = 7;
	for (long n = 0;; n++) {
		h = step(h, n);
		long back = guarded(n);
		printf("tick %ld %lx %lx %ld\n", n, h,
			hashes[n % 3] ^ (unsigned long)counts[n % 3], back);
		fflush(stdout);
	}
	pthread_join(t[0], 0);
	return 0;
}
"""


def optimized_tick(n: int) -> str:
    """main's hash after tick n, as the program computes it."""
    h = 7
    for i in range(n + 1):
        h = ((h ^ i) * 1099511628211) % (1 << 64)
    return f"{h:x}"


@pytest.mark.arm64
def test_recoded_optimized_frames_resume_on_aarch64(host_a: LabHost, arm, cleanup,
                                                    workdir: Path) -> None:
    """-Og frames (hmigrate-cc --optimize-frames) recoded from x86-64 and restored on
    aarch64: the values main and the workers keep in callee-saved registers across the
    calls they park in land in the target's registers: main's next tick has the next
    number and the hash only the carried values give. main parks inside guarded (-O0:
    it calls setjmp), whose longjmp after the move restores main's registers from the
    translated jmp_buf: they must be main's values there too."""
    src, program = build_mt(workdir, OPTIMIZED_C, ("--optimize-frames",))
    fns = {f["name"]: f for f in program.metadata["functions"]}
    described = [n for n in ("main", "worker")
                 if any(v.get("described") for v in fns[n]["isa"]["x86-64"]["vars"])]
    assert described == ["main", "worker"], "main and worker are not -Og"
    assert not any(v.get("described") for v in fns["guarded"]["isa"]["x86-64"]["vars"])
    for isa in ("x86-64", "aarch64"):  # h crosses the call in a register: the jmp_buf's
        f = fns["main"]["isa"][isa]
        cs = next(c for c in f["call_sites"] if c["target"] == "guarded")
        h = next(i for i, v in enumerate(f["vars"]) if v["name"] == "h")
        assert [loc[1] for loc in cs["locations"] if loc[0] == h] == ["reg"], (isa, cs)
    name = unique("hm-rc-og")
    cleanup.append(name)
    c = host_a.client.containers.run("hmlab/busybox:latest", ["/t/mt_x86-64"], name=name,
                                     detach=True, security_opt=["seccomp=unconfined"],
                                     volumes={str(src): {"bind": "/t", "mode": "ro"}})
    wait_until(lambda: len(c.logs().decode().splitlines()) >= 2, 30, what="two ticks")
    ck = park_and_checkpoint(host_a.client, host_a.url, c, workdir / "x86",
                             park_pcs=park_pcs(program))
    last = c.logs().decode().splitlines()[-1].split()
    assert last[2] == optimized_tick(int(last[1])), last  # the program itself agrees
    with recoded_on_arm(arm, ck, workdir, program, lambda n, _r: arm_container_with(
            arm, n, program.binaries["aarch64"]), "hm-rc-og") as target:
        lines = wait_until(lambda: target.logs().decode().splitlines()[:2]
                           if len(target.logs().decode().splitlines()) >= 2 else None,
                           60, what="main's ticks on aarch64")
        n = int(last[1]) + 1
        for k, line in enumerate(lines[:2]):  # after the longjmp: main's h, n carried
            f = line.split()
            assert [f[0], f[1], f[2], f[4]] == ["tick", str(n + k), optimized_tick(n + k),
                                               str((n + k) % 1000)], (last, lines)
        target.reload()
        assert target.status == "running"
