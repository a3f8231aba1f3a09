"""Thread-local variables across ISAs on real checkpoints: examples/threads (a `__thread`
generator mix per worker, combined into a checked result) parked mid-run on host a
(x86-64), recoded, restored on the aarch64 host, and finishing there with the result
that only the carried-over state of every thread (stack, TLS, shared array) gives."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
import requests

from docker_hmigrate.criu import ImageSet
from docker_hmigrate.recode import aarch64, tls, transform
from tests import test_recode_lab
from tests.lab import LabHost, lab_unavailable, unique
from tests.test_recode_lab import (
    ARM_URL,
    arm_container_with,
    build_mt,
    check_recoded,
    fetch_checkpoint,
    park_and_checkpoint,
    park_pcs,
    restore_recoded,
    wait_until,
)

# the fixtures of the recode lab tests, shared
arm = test_recode_lab.arm
workdir = test_recode_lab.workdir

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parent.parent
THREADS_C = (REPO / "examples" / "threads" / "threads.c").read_text()
# 4 workers x 400 steps of 25 ms: ~10 s on x86-64, parked after a few hundred steps
ARGS = ("4", "400", "25")
PROGRESS = re.compile(r"progress (\d+)/(\d+)")


def start_threads(host_a: LabHost, cleanup, workdir: Path):
    src, program = build_mt(workdir, THREADS_C)
    name = unique("hm-rc-tls")
    cleanup.append(name)
    c = host_a.client.containers.run("hmlab/busybox:latest", ["/t/mt_x86-64", *ARGS],
                                     name=name, detach=True,
                                     security_opt=["seccomp=unconfined"],
                                     volumes={str(src): {"bind": "/t", "mode": "ro"}})
    wait_until(lambda: PROGRESS.search(c.logs().decode()), 60, "first progress")
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
        td = tp - aarch64.PTHREAD_SIZE
        tds[td_src] = td
        assert dmem.read_u64(td) == td
        dtv = dmem.read_u64(td + aarch64.PTHREAD["dtv"])
        block = td + aarch64.PTHREAD_SIZE + pd.offset
        assert (dmem.read_u64(dtv), dmem.read_u64(dtv + 8)) == (1, block)
        # tls_mix (offset 0 in the block on both ISAs) keeps its value
        assert dmem.read(block, ps.size) == smem.read(td_src - ps.offset, ps.size)
    # musl's thread list is a ring over the moved structs
    for td_src, td in tds.items():
        nxt = smem.read_u64(td_src + 24)  # x86-64 next
        assert dmem.read_u64(td + aarch64.PTHREAD["next"]) == tds[nxt]
    assert len(set(tds.values())) == 5  # main and four workers


@pytest.mark.arm64
def test_recoded_threads_with_tls_finish_on_aarch64(host_a: LabHost, arm, cleanup,
                                                    workdir: Path) -> None:
    """Parked mid-run on x86-64, restored on aarch64: the program goes on from where it
    was and prints `result=... expected=... OK`."""
    program, c = start_threads(host_a, cleanup, workdir)
    ck = park_and_checkpoint(host_a.client, host_a.url, c, workdir / "x86",
                             park_pcs=park_pcs(program))
    before = [int(m.group(1)) for m in PROGRESS.finditer(c.logs().decode())]
    total = 4 * 400
    assert before and before[-1] < total - 200, before  # well before the end
    names = [unique("hm-rc-tls-native"), unique("hm-rc-tls-target")]
    try:
        nc = arm_container_with(arm, names[0], program.binaries["aarch64"],
                                ("4", "100000", "25"))
        nc.start()
        try:
            park_and_checkpoint(arm, ARM_URL, nc, None, timeout=180)
        except requests.exceptions.ReadTimeout:
            lab_unavailable("CRIU on the aarch64 host hangs")
        native = fetch_checkpoint(arm, nc.id, workdir / "native")
        target = arm_container_with(arm, names[1], program.binaries["aarch64"], ARGS)
        restore_recoded(arm, ck, native, workdir / "arm", program, target)
        logs = wait_until(lambda: (lambda t: t if "result=" in t else None)(
            target.logs().decode()), 300, "the result on aarch64")
        after = [int(m.group(1)) for m in PROGRESS.finditer(logs)]
        assert after and after[0] >= before[-1], (before, logs)  # continued, not restarted
        assert re.search(r"result=([0-9a-f]{16}) expected=\1 OK", logs), logs
        target.reload()
        assert target.attrs["State"]["ExitCode"] == 0 or target.status == "running"
    finally:
        for n in names:
            with contextlib.suppress(Exception):
                arm.containers.get(n).remove(force=True)
