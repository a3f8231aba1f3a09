"""hmigrate-cc --optimize-frames end to end (no daemon): the functions with hooks are
-Og with their variables described per call site, a function whose frame could not move
where a thread may park falls back to -O0 (named in the link's report, read as -O0 by
the metadata), and no call where a thread may park is left untranslatable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from docker_hmigrate.toolchain.config import missing_tools

CC = [sys.executable, "-m", "docker_hmigrate.toolchain", "cc"]

pytestmark = [
    pytest.mark.toolchain,
    pytest.mark.skipif(bool(missing_tools()),
                       reason=f"cross toolchain/musl missing: {missing_tools()} (run lab install)"),
]

SOURCE = r"""
#include <setjmp.h>
#include <stdio.h>
#include <unistd.h>

static jmp_buf back;
static unsigned long total;

static unsigned long step(unsigned long h, long i)
{
	return (h ^ (unsigned long)i) * 1099511628211ul;
}

static double scaled(double x, int n)   /* a double kept across calls: d8 on aarch64 */
{
	double acc = x;
	for (int i = 0; i < n; i++)
		acc = acc * 1.5 + (double)step((unsigned long)acc, i) / 1e19;
	return acc;
}

static int guarded(int n)                /* setjmp: its jmp_buf holds its registers */
{
	if (setjmp(back))
		return -1;
	total += (unsigned long)n;
	return n;
}

int main(int argc, char **argv)
{
	unsigned long h = 7;
	int ticks = argc > 1 ? 3 : 2;
	for (long n = 0; n < ticks; n++) {
		h = step(h, n);
		printf("tick %ld %lx", n, h);
		printf(" %.3f", scaled(1.0, 3));
		printf(" %d\n", guarded((int)n));
		fflush(stdout);
		usleep(1000);
	}
	return 0;
}
"""


def test_optimize_frames_builds_described_frames_with_an_o0_fallback(tmp_path: Path) -> None:
    (tmp_path / "p.c").write_text(SOURCE)
    proc = subprocess.run([*CC, "--optimize-frames", "-O2", "-o", "p", "p.c"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "functions -Og with described frames" in proc.stderr, proc.stderr
    assert "-O0 fallback" in proc.stderr and "calls setjmp" in proc.stderr, proc.stderr
    md = json.loads((tmp_path / "p.hmigrate.json").read_text())
    fns = {f["name"]: f for f in md["functions"]}

    def described(name: str) -> bool:
        return any(v.get("described") for v in fns[name]["isa"]["x86-64"]["vars"])

    assert described("main") and described("step")
    assert not described("guarded")  # setjmp: -O0, every variable in its slot
    assert not described("scaled")  # aarch64 keeps acc in d8 across step(): -O0
    # no call where a thread may park (the hooks, our functions, the wrappers) is left
    # untranslatable in an -Og function
    ours = {n for n, f in fns.items() if f["instrumented"]}
    for f in fns.values():
        if not f["instrumented"] or not f["translatable"]:
            continue
        for isa in ("x86-64", "aarch64"):
            for c in f["isa"][isa]["call_sites"]:
                may_park = c["kind"] == "enter_hook" or c["target"] in ours or \
                    (c["target"] or "").startswith("__wrap_")
                assert c["translatable"] or not may_park, (f["name"], isa, c)
    assert md["checks"]["described"]["functions"] >= 2
    # both variants run and agree (the aarch64 one under qemu when it is there)
    out = subprocess.run([str(tmp_path / "p_x86-64")], capture_output=True, text=True,
                         timeout=60).stdout
    assert out.splitlines()[0].startswith("tick 0 "), out
    qemu = Path("/usr/bin/qemu-aarch64-static")
    if qemu.exists():
        arm = subprocess.run([str(qemu), str(tmp_path / "p_aarch64")], capture_output=True,
                             text=True, timeout=120).stdout
        assert arm == out
