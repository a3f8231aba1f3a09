"""hmigrate-cc --optimize-leaves end to end: which functions get -O2, that both ISAs
still agree (layout, string literals, output), that the runtime never parks above an
optimized frame, and that parking and resuming still work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from docker_hmigrate.toolchain.config import missing_tools
from tests.lab.test_toolchain_build import needs_qemu, qemu, wait_for

CC = [sys.executable, "-m", "docker_hmigrate.toolchain", "cc"]

pytestmark = [
    pytest.mark.toolchain,
    pytest.mark.skipif(bool(missing_tools()),
                       reason=f"cross toolchain/musl missing: {missing_tools()} (run lab install)"),
]

SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *last_word;                       /* holds a literal chosen by -O2 code */

static unsigned long checksum(const unsigned char *p, unsigned long n)
{                                            /* tight loop, no calls: -O2 */
	unsigned long h = 1469598103934665603ul;
	for (unsigned long i = 0; i < n; i++)
		h = (h ^ p[i]) * 1099511628211ul;
	return h;
}

static const char *parity(unsigned long v) { return (v & 1) ? "odd" : "even"; }  /* -O2 */

static int
describe(char *out, size_t cap, unsigned long v)   /* libc and -O2 callees only: -O2 */
{
	last_word = parity(v);
	return snprintf(out, cap, "%lx:%s", v & 0xffff, last_word);
}

static unsigned long step(unsigned long x) { return x * 6364136223846793005ul + 1; }

static unsigned long spin(unsigned long x, int n)  /* its loop calls only step: step keeps */
{                                                  /* the hook (a park point per turn) */
	for (int i = 0; i < n; i++)
		x = step(x);
	return x;
}

static unsigned long twice(unsigned long x) { return 2 * x; }

static unsigned long apply(unsigned long (*f)(unsigned long), unsigned long x) { return f(x); }

int main(int argc, char **argv)
{
	int ticks = argc > 1 ? atoi(argv[1]) : 1000000;
	unsigned char buf[4096];
	char line[64];
	unsigned long x = 7;
	for (int t = 0; t < ticks; t++) {
		memset(buf, t & 0xff, sizeof buf);
		x = spin(x, 1000) ^ checksum(buf, sizeof buf) ^ apply(twice, x);
		describe(line, sizeof line, x);
		printf("tick %d %s %p\n", t, line, (void *)last_word);
		fflush(stdout);
		usleep(20000);
	}
	return 0;
}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    d = tmp_path_factory.mktemp("opt")
    (d / "opt.c").write_text(SOURCE)
    res = subprocess.run([*CC, "--optimize-leaves", "-c", "opt.c", "-o", "opt.o"], cwd=d,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([*CC, "--optimize-leaves", "opt.o", "-o", "opt"], cwd=d,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return d, res.stderr


def functions(d: Path) -> dict[str, dict]:
    md = json.loads((d / "opt.hmigrate.json").read_text())
    return {f["name"]: f for f in md["functions"]}


def test_selection_and_build_report(built):
    d, stderr = built
    assert "opt: 3 functions optimized (-O2, no hooks), 5 -O0 instrumented" in stderr, stderr
    for why in ("1 park point of a loop", "1 indirect call", "1 address taken", "1 calls -O0"):
        assert why in stderr, stderr
    fns = functions(d)
    for name in ("checksum", "parity", "describe"):
        assert fns[name].get("optimized") and not fns[name]["instrumented"], name
    for name in ("step", "spin", "twice", "apply", "main"):
        assert fns[name]["instrumented"] and not fns[name].get("optimized"), name
    # no entry hook in the optimized code of either ISA
    for isa in ("x86-64", "aarch64"):
        assert not any(c["kind"] == "enter_hook"
                       for c in fns["checksum"]["isa"][isa]["call_sites"])


def test_optimized_frames_are_unclean_and_their_call_sites_untranslatable(built):
    d, _ = built
    md = json.loads((d / "opt.hmigrate.json").read_text())
    fns = functions(d)
    assert md["checks"]["optimized_functions"] == 3
    for isa in ("x86-64", "aarch64"):
        ranges = md["unclean_ranges"][isa]
        g = fns["describe"]["isa"][isa]
        assert any(lo <= g["addr"] and g["addr"] + g["size"] <= hi for lo, hi in ranges)
        assert all(not c["translatable"] for c in g["call_sites"])
    assert md["checks"]["align"].startswith("check-align: OK")


@needs_qemu
def test_both_isas_print_the_same_including_literal_addresses(built):
    d, _ = built
    x = subprocess.run([str(d / "opt_x86-64"), "5"], capture_output=True, text=True,
                       timeout=60).stdout
    a = subprocess.run([qemu(), str(d / "opt_aarch64"), "5"], capture_output=True, text=True,
                       timeout=120).stdout
    assert x == a and x.count("tick") == 5, (x, a)


def test_parks_and_resumes_with_optimized_code_running(built, tmp_path):
    d, _ = built
    flag = tmp_path / "parked"
    p = subprocess.Popen([str(d / "opt_x86-64")], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "HMIGRATE_PARK_FILE": str(flag)})
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        p.send_signal(40)
        text = wait_for(flag, 3)
        assert "threads=1" in text
        latency = time.monotonic() - t0
        time.sleep(1.0)
        p.send_signal(41)
        time.sleep(1.0)
    finally:
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=10)
    ticks = [int(line.split()[1]) for line in out.splitlines()]
    assert ticks == list(range(len(ticks))) and len(ticks) >= 40, ticks
    assert latency < 0.5, latency
