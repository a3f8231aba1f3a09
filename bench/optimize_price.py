"""What `hmigrate-cc --optimize-leaves` buys on CPU-bound work: the same sources built
three ways, timed in one run, as ratios against the ordinary -O2 build (same musl libc):

    sudo python -m bench.optimize_price [--runs 3] [--lua-iterations N] [--cache-key K]
        [--programs redis-server,lua] [--builds "-O0 all,-Og frames"]

- `-O2`: musl-gcc -O2 -static (the baseline)
- `-O0 all`: hmigrate-cc --no-optimize-leaves (every function -O0 and instrumented, as
  before issue 15)
- `optimize-leaves`: hmigrate-cc --optimize-leaves (functions that can never be on a
  parked stack at -O2 without hooks)
- `-Og frames`: hmigrate-cc --optimize-frames (the functions with hooks at -Og, their
  variables described per call site instead of -O0 slots), and `-Og frames+leaves` both

Workloads: Redis's CPU-bound Lua loop (EVAL, Lua 5.1 inside redis-server 7.0.15) and the
lua5.4 interpreter running a loop script (Debian's lua5.4 5.4.4 source). Sources come
from Debian's source packages (`apt-get source`, never kept); the builds run natively,
one at a time, and are cached in /var/cache/hmigrate-lab/bench/opt keyed by the
toolchain's sources. The table prints the median of --runs, ratio = build / -O2 (>1 is
slower), and the geometric mean per build.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.examples_price import bench_redis_cpu

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path("/var/cache/hmigrate-lab/bench/opt")
# build -> hmigrate-cc's flags (None: plain musl-gcc)
FLAGS: dict[str, tuple[str, ...] | None] = {
    "-O2": None,
    "-O0 all": ("--no-optimize-leaves",),
    "optimize-leaves": ("--optimize-leaves",),
    "-Og frames": ("--no-optimize-leaves", "--optimize-frames"),
    "-Og frames+leaves": ("--optimize-leaves", "--optimize-frames"),
}
BUILDS = tuple(FLAGS)
LUA_SCRIPT = "local s = 0 for i = 1, {n} do s = s + i % 7 end print(s)\n"


def toolchain_key() -> str:
    h = hashlib.sha256()
    for sub in ("docker_hmigrate/toolchain", "docker_hmigrate/runtime", "docker_hmigrate/isa"):
        for p in sorted((ROOT / sub).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(ROOT)).encode() + p.read_bytes())
    return h.hexdigest()[:12]


def sources(work: Path) -> dict[str, Path]:
    """Debian's redis and lua5.4 sources, unpacked under work (downloaded once)."""
    dl = CACHE / "src"
    dl.mkdir(parents=True, exist_ok=True)
    pats = ("redis_*.orig.tar.gz", "lua5.4_*.orig.tar.gz")
    if not all(glob.glob(str(dl / p)) for p in pats):
        subprocess.run(["apt-get", "source", "-q", "--download-only", "redis", "lua5.4"],
                       cwd=dl, check=True, capture_output=True)
    out = {}
    for name, pat in (("redis", "redis_*.orig.tar.gz"), ("lua", "lua5.4_*.orig.tar.gz")):
        d = work / name
        d.mkdir()
        subprocess.run(["tar", "xzf", glob.glob(str(dl / pat))[0], "-C", str(d),
                        "--strip-components=1"], check=True)
        out[name] = d
    return out


def cc_wrapper(work: Path, flags: tuple[str, ...]) -> str:
    """A CC for Makefiles that runs this checkout's hmigrate-cc with flags."""
    p = work / ("hmcc" + "".join(f.replace("-", "_") for f in flags))
    p.write_text("#!/bin/sh\n"
                 f"PYTHONPATH={ROOT} exec {sys.executable} -m docker_hmigrate.toolchain cc "
                 + " ".join(flags) + ' "$@"\n')
    p.chmod(0o755)
    return str(p)


PROGRAMS = {"redis-server": "redis", "lua": "lua"}  # binary -> source tree


def build(kind: str, work: Path, tkey: str | None = None,
          programs: tuple[str, ...] = tuple(PROGRAMS)) -> dict[str, Path]:
    """The programs built one way, cached (tkey: the toolchain's cache key)."""
    flags = FLAGS[kind]
    key = "O2" if flags is None else f"{kind.replace(' ', '-')}-{tkey or toolchain_key()}"
    dest = CACHE / key
    want = {p: dest / p for p in programs}
    if all(p.exists() for p in want.values()):
        return want
    tree = work / key
    tree.mkdir()
    src = sources(tree)
    cc = "musl-gcc -static" if flags is None else cc_wrapper(tree, flags)
    t0 = time.monotonic()
    log = tree / "build.log"
    with open(log, "w") as f:
        if "redis-server" in programs and not want["redis-server"].exists():
            subprocess.run(["make", "-C", str(src["redis"] / "src"), "-j2", f"CC={cc}",
                            "OPTIMIZATION=-O2", "MALLOC=libc", "BUILD_TLS=no",
                            "USE_SYSTEMD=no", "redis-server"],
                           check=True, stdout=f, stderr=subprocess.STDOUT)
        if "lua" in programs and not want["lua"].exists():
            subprocess.run(["make", "-C", str(src["lua"] / "src"), "-j2", f"CC={cc}", "posix"],
                           check=True, stdout=f, stderr=subprocess.STDOUT)
    print(f"built {kind} in {time.monotonic() - t0:.0f} s; its report:")
    for line in log.read_text().splitlines():
        if line.startswith("hmigrate-cc:") and ("functions" in line or "call sites" in line):
            print("  " + line)
    dest.mkdir(parents=True, exist_ok=True)
    for p in programs:
        if not want[p].exists():
            shutil.copy2(src[PROGRAMS[p]] / "src" / p, want[p])
            md = src[PROGRAMS[p]] / "src" / f"{p}.hmigrate.json"
            if md.exists():
                shutil.copy2(md, dest / md.name)
    with open(dest / "build.log", "a") as f:
        f.write(log.read_text())
    return want


# calls, tables, strings, sort and pattern matching: the interpreter and its C library
LUA_MIXED = """
local function fib(n) if n < 2 then return n end return fib(n-1) + fib(n-2) end
local t = {}
for i = 1, 200000 do t[i] = tostring(i) .. "x" end
local s = 0
for _, v in ipairs(t) do s = s + #v end
table.sort(t)
local parts = {}
for i = 1, 100000 do parts[#parts+1] = string.format("%d:%s", i, t[i]) end
local str = table.concat(parts, ",")
local cnt = 0
for _ in str:gmatch("%d+") do cnt = cnt + 1 end
print(fib(27), s, cnt)
"""


def lua_mixed(binary: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(binary), "-e", LUA_MIXED], check=True, capture_output=True, timeout=600)
    return time.perf_counter() - t0


def lua_loop(binary: Path, n: int) -> float:
    script = LUA_SCRIPT.format(n=n)
    t0 = time.perf_counter()
    subprocess.run([str(binary), "-e", script], check=True, capture_output=True, timeout=600)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--lua-iterations", type=int, default=30_000_000)
    ap.add_argument("--cache-key", help="use the builds cached under this toolchain key "
                    "(default: the hash of this checkout's toolchain sources)")
    ap.add_argument("--programs", default=",".join(PROGRAMS),
                    help="which to build and time: redis-server,lua (default both)")
    ap.add_argument("--builds", default=",".join(BUILDS),
                    help=f"which builds, -O2 always included (default: {','.join(BUILDS)})")
    ns = ap.parse_args()
    programs = tuple(p for p in ns.programs.split(",") if p)
    builds: tuple[str, ...] = ("-O2",) + tuple(b for b in ns.builds.split(",")
                                              if b and b != "-O2")
    unknown = [p for p in programs if p not in PROGRAMS] + [b for b in builds if b not in FLAGS]
    if unknown:
        ap.error(f"unknown: {unknown} (programs: {list(PROGRAMS)}, builds: {list(FLAGS)})")
    work = Path(tempfile.mkdtemp(prefix="hm-optprice-"))
    try:
        bins = {k: build(k, work, ns.cache_key, programs) for k in builds}
        rows = {label: fn for label, fn, prog in (
            ("redis Lua loop (s)", lambda b: bench_redis_cpu(b["redis-server"]), "redis-server"),
            ("lua5.4 loop (s)", lambda b: lua_loop(b["lua"], ns.lua_iterations), "lua"),
            ("lua5.4 mixed (s)", lambda b: lua_mixed(b["lua"]), "lua")) if prog in programs}
        results: dict[str, dict[str, float]] = {}
        for label, fn in rows.items():
            results[label] = {}
            for k in builds:
                results[label][k] = statistics.median(fn(bins[k]) for _ in range(ns.runs))
        print(f"{'workload':<22}" + "".join(f"{k:>17}" for k in builds) + "   ratios vs -O2")
        for label, r in results.items():
            print(f"{label:<22}" + "".join(f"{r[k]:>17.3f}" for k in builds) + "   " +
                  "  ".join(f"{k}: {r[k] / r['-O2']:.2f}x" for k in builds[1:]))
        for k in builds[1:]:
            gm = math.exp(statistics.mean(math.log(r[k] / r["-O2"]) for r in results.values()))
            print(f"geometric mean {k}: {gm:.2f}x of -O2")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.umask(0o022)
    main()
