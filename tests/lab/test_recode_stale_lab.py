"""A local not yet assigned at the call a thread is parked under holds stale bytes of an
earlier frame — here, deliberately, an address no variable of the live frames has (the
return-address slot). The recode carries such a slot as it is (toolchain/frame_writes.py
shows no path to the call wrote it) instead of refusing after the freeze, which is what
lua's `atomic` met in CI (`origweak`, declared first, assigned after several calls)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from docker_hmigrate.recode import transform
from tests.lab.test_recode_tls_lab import start_threads
from tests.support.lab import LabHost, wait_until
from tests.support.recode_lab import (
    arm_container_with,
    park_and_checkpoint,
    park_pcs,
    recoded_on_arm,
)

pytestmark = pytest.mark.lab

STALE_C = r"""
#include <stdio.h>
#include <unistd.h>
/* writes the address of a return-address slot all over the area below `top` */
static void __attribute__((noinline)) smear(void **top, long n)
{
	for (long k = 1; k <= n; k++)
		top[-k] = (char *)top + 8;
}
/* leaves that in the stack work() reuses: fill's frame spans it, smear's lies below */
static void fill(void)
{
	volatile char room[1024];
	room[0] = 0;
	smear(__builtin_frame_address(0), 100);
}
static long tick(long i)
{
	usleep(1000);
	return i % 7;
}
static long wait_a_bit(int step)
{
	long r = 0;
	for (long i = 0; i < 1500; i++)  /* ~1.5 s: parked in here, under work() */
		r += tick(i + step);
	return r;
}
static void work(int step)
{
	char *late;  /* assigned only after the call: stale until then */
	char buf[48];
	long r = wait_a_bit(step);
	late = buf;
	snprintf(late, sizeof buf, "progress %d/0 r=%ld", step, r);
	puts(late);
	fflush(stdout);
}
int main(void)
{
	for (int step = 1;; step++) {
		fill();
		work(step);
	}
}
"""
PROGRESS = re.compile(r"progress (\d+)/0 r=(\d+)")


def expected_r(step: int) -> int:
    return sum((i + step) % 7 for i in range(1500))


@pytest.mark.arm64
def test_local_not_yet_assigned_is_carried_not_refused(host_a: LabHost, arm, cleanup,
                                                       workdir: Path) -> None:
    program, c = start_threads(host_a, cleanup, workdir, min_progress=2, source=STALE_C,
                               args=())
    ck = park_and_checkpoint(host_a.client, host_a.url, c, workdir / "x86",
                             park_pcs=park_pcs(program))
    last = max(int(m.group(1)) for m in PROGRESS.finditer(c.logs().decode()))
    # before frame_writes: "work: late (...): a pointer to stack address ... matches no
    # variable slot", after the freeze
    transform.recode_images(ck, workdir / "offline", program, "x86-64", "aarch64", {})
    with recoded_on_arm(arm, ck, workdir, program, lambda n, _r: arm_container_with(
            arm, n, program.binaries["aarch64"]), "hm-rc-stale") as target:
        lines = wait_until(lambda: (lambda ls: ls if len(ls) >= 2 else None)(
            PROGRESS.findall(target.logs().decode())), 120, what="two steps on aarch64")
        print(lines)
        steps = [(int(s), int(r)) for s, r in lines]
        assert steps[0][0] == last + 1, (last, steps)  # the parked step, finished there
        assert all(r == expected_r(s) for s, r in steps), steps
