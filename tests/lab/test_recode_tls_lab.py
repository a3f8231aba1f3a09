"""Thread-local variables across ISAs on real checkpoints: examples/threads (a `__thread`
generator mix per worker, combined into a checked result) parked mid-run on host a
(x86-64), recoded, restored on the aarch64 host, and finishing there with the result
that only the carried-over state of every thread (stack, TLS, shared array) gives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from docker_hmigrate.criu import ImageSet
from docker_hmigrate.isa import AARCH64
from docker_hmigrate.recode import tls, transform
from tests.support.lab import LabHost, unique, wait_until
from tests.support.recode_lab import (
    arm_container_with,
    build_mt,
    check_recoded,
    park_and_checkpoint,
    park_pcs,
    recoded_on_arm,
)

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
THREADS_C = (REPO / "examples" / "threads" / "threads.c").read_text()
# 4 workers x 400 steps of 25 ms: ~10 s on x86-64, parked after a few hundred steps
ARGS = ("4", "400", "25")
PROGRESS = re.compile(r"progress (\d+)/(\d+)")


def start_threads(host_a: LabHost, cleanup, workdir: Path, min_progress: int = 1,
                  source: str = THREADS_C, args: tuple[str, ...] = ARGS):
    src, program = build_mt(workdir, source)
    name = unique("hm-rc-tls")
    cleanup.append(name)
    c = host_a.client.containers.run("hmlab/busybox:latest", ["/t/mt_x86-64", *args],
                                     name=name, detach=True,
                                     security_opt=["seccomp=unconfined"],
                                     volumes={str(src): {"bind": "/t", "mode": "ro"}})
    wait_until(lambda: any(int(m.group(1)) >= min_progress
                           for m in PROGRESS.finditer(c.logs().decode())),
               60, what=f"progress {min_progress}")
    return program, c


def test_recode_threads_with_tls(host_a: LabHost, cleanup, workdir: Path) -> None:
    """The recoded set: each thread's struct pthread, TLS block and dtv in the aarch64
    layout, tls_mix's value carried over, musl's globals with the aarch64 numbers."""
    program, c = start_threads(host_a, cleanup, workdir)
    assert transform.preflight_problems(program, "x86-64", "aarch64") == []
    ck = park_and_checkpoint(host_a.client, host_a.url, c, workdir / "x86",
                             park_pcs=park_pcs(program))
    out = workdir / "arm"
    transform.recode_images(ck, out, program, "x86-64", "aarch64", {})
    check_recoded(out, program)
    md = program.metadata
    ps = tls.Params.from_segment("x86-64", md["tls"]["x86-64"])
    pd = tls.Params.from_segment("aarch64", md["tls"]["aarch64"])
    s, d = ImageSet.load(ck), ImageSet.load(out)
    smem, dmem = s.memory(1), d.memory(1)
    syms = {x["name"]: x["aarch64"][0] for x in md["symbols"] if x["aarch64"]}
    assert dmem.read_u64(syms["__libc"] + tls.LIBC["tls_size"]) == pd.tls_size
    assert dmem.read_u64(syms[tls.MAIN_TLS_SYM] + tls.TLS_MODULE["offset"]) == pd.offset
    tds = {}
    for tid in s.threads(1):
        td_src = s.core(tid).thread_info.gpregs.fs_base
        tp = d.core(tid).ti_aarch64.tls
        td = tp - AARCH64.pthread.size
        tds[td_src] = td
        assert dmem.read_u64(td) == td
        dtv = dmem.read_u64(td + AARCH64.pthread["dtv"])
        block = td + AARCH64.pthread.size + pd.offset
        assert (dmem.read_u64(dtv), dmem.read_u64(dtv + 8)) == (1, block)
        # tls_mix (offset 0 in the block on both ISAs) keeps its value
        assert dmem.read(block, ps.size) == smem.read(td_src - ps.offset, ps.size)
    # musl's thread list is a ring over the moved structs
    for td_src, td in tds.items():
        nxt = smem.read_u64(td_src + 24)  # x86-64 next
        assert dmem.read_u64(td + AARCH64.pthread["next"]) == tds[nxt]
    assert len(set(tds.values())) == 5  # main and four workers


@pytest.mark.arm64
def test_recoded_threads_with_tls_finish_on_aarch64(host_a: LabHost, arm, cleanup,
                                                    workdir: Path) -> None:
    """Parked mid-run on x86-64, restored on aarch64: the program goes on from where it
    was and prints `result=... expected=... OK`."""
    program, c = start_threads(host_a, cleanup, workdir, min_progress=300)
    ck = park_and_checkpoint(host_a.client, host_a.url, c, workdir / "x86",
                             park_pcs=park_pcs(program))
    before = [int(m.group(1)) for m in PROGRESS.finditer(c.logs().decode())]
    total = 4 * 400
    assert before and before[-1] < total - 200, before  # well before the end
    def make(n: str, role: str):  # the native run must not end before its checkpoint
        args = ("4", "100000", "25") if role == "native" else ARGS
        return arm_container_with(arm, n, program.binaries["aarch64"], args)

    with recoded_on_arm(arm, ck, workdir, program, make, "hm-rc-tls") as target:
        logs = wait_until(lambda: (lambda t: t if "result=" in t else None)(
            target.logs().decode()), 300, what="the result on aarch64")
        after = [int(m.group(1)) for m in PROGRESS.finditer(logs)]
        assert after and after[0] >= before[-1], (before, logs)  # continued, not restarted
        assert re.search(r"result=([0-9a-f]{16}) expected=\1 OK", logs), logs
        print(f"x86-64 progress at the checkpoint: {before[-1]}/{total}; on aarch64:\n{logs}")
        target.reload()
        assert target.attrs["State"]["ExitCode"] == 0 or target.status == "running"


# Threads created after the migration are laid out by musl's libc.tls_size and
# main_tls.offset: an initialised __thread (.tdata, copied from the image by __copy_tls)
# reads its initial value only if they hold the aarch64 numbers.
SPAWN_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static __thread long seed = 12345;
static __thread long bumps;
static void *child(void *arg)
{
	bumps += (long)arg;
	return (void *)(seed + bumps);
}
int main(void)
{
	seed = 777;  /* main's own copy: must survive too */
	for (long n = 1;; n++) {
		pthread_t t;
		void *r;
		pthread_create(&t, 0, child, (void *)n);
		pthread_join(t, &r);
		printf("progress %ld/0 child=%ld main=%ld %s\n", n, (long)r, seed,
			(long)r == 12345 + n && seed == 777 ? "OK" : "BAD");
		fflush(stdout);
		usleep(200000);
	}
}
"""


@pytest.mark.arm64
def test_threads_created_after_migration_get_aarch64_tls(host_a: LabHost, arm, cleanup,
                                                         workdir: Path) -> None:
    program, c = start_threads(host_a, cleanup, workdir, min_progress=3, source=SPAWN_C,
                               args=())
    assert program.metadata["tls"]["x86-64"]["filesz"] > 0  # an initialised TLS image
    ck = park_and_checkpoint(host_a.client, host_a.url, c, workdir / "x86",
                             park_pcs=park_pcs(program))
    last = max(int(m.group(1)) for m in PROGRESS.finditer(c.logs().decode()))
    with recoded_on_arm(arm, ck, workdir, program, lambda n, _r: arm_container_with(
            arm, n, program.binaries["aarch64"]), "hm-rc-tls2") as target:
        lines = wait_until(lambda: (lambda ls: ls if len(ls) >= 3 else None)(
            target.logs().decode().splitlines()), 120, what="three children on aarch64")
        print("\n".join(lines))
        assert lines[0].startswith(f"progress {last + 1}/0 "), (last, lines)
        assert all(ln.endswith(" OK") for ln in lines[:3]), lines
