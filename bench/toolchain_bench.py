"""Toolchain figures: build times, alignment, metadata size, park latency.

    python bench/toolchain_bench.py [--redis /path/to/redis-7.0.15] [--runs 5]

Builds helloworld and examples/threads in a temporary directory with hmigrate-cc,
then measures how long a park request takes until the parked file appears.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CC = f"{sys.executable} -m docker_hmigrate.toolchain cc"


def build(src: Path, dest: Path, target: str) -> float:
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.name == "Makefile" or f.suffix in (".c", ".h"):
            shutil.copy(f, dest / f.name)
    t = time.perf_counter()
    subprocess.run(["make", "-C", str(dest), f"CC={CC}", target], check=True,
                   capture_output=True)
    return time.perf_counter() - t


def check(dest: Path, name: str) -> str:
    res = subprocess.run([sys.executable, "-m", "docker_hmigrate.toolchain", "check-align",
                          str(dest / f"{name}_x86-64"), str(dest / f"{name}_aarch64")],
                         capture_output=True, text=True)
    return (res.stdout or res.stderr).strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def park_latency(cmd: list[str], runs: int, warmup: float) -> dict:
    lat, resumed = [], 0
    with tempfile.TemporaryDirectory() as td:
        flag = Path(td) / "parked"
        for _ in range(runs):
            argv = [a.replace("{port}", str(free_port())) for a in cmd]
            p = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                 env={**os.environ, "HMIGRATE_PARK_FILE": str(flag)})
            try:
                time.sleep(warmup)
                t = time.perf_counter()
                p.send_signal(40)
                while not flag.exists() and time.perf_counter() - t < 10:
                    time.sleep(0.0005)
                lat.append(time.perf_counter() - t)
                p.send_signal(41)
                time.sleep(0.1)
                resumed += p.poll() is None and not flag.exists()
            finally:
                p.send_signal(signal.SIGKILL)
                p.wait()
    return {"runs": runs, "median_ms": round(statistics.median(lat) * 1000, 2),
            "max_ms": round(max(lat) * 1000, 2), "resumed": resumed}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--redis", help="an unpacked redis source tree to build as well")
    ns = ap.parse_args()
    out: dict = {}
    with tempfile.TemporaryDirectory() as td:
        hello, threads = Path(td) / "hello", Path(td) / "threads"
        out["build_s"] = {"helloworld": round(build(ROOT / "helloworld", hello, "hello"), 2),
                          "threads": round(build(ROOT / "examples/threads", threads,
                                                 "threads"), 2)}
        out["check_align"] = {"helloworld": check(hello, "hello"),
                              "threads": check(threads, "threads")}
        out["metadata_bytes"] = {"helloworld": (hello / "hello.hmigrate.json").stat().st_size,
                                 "threads": (threads / "threads.hmigrate.json").stat().st_size}
        out["park"] = {
            "helloworld": park_latency([str(hello / "hello_x86-64")], ns.runs, 0.5),
            "threads_8": park_latency([str(threads / "threads_x86-64"), "8", "1000", "5"],
                                      ns.runs, 0.3),
        }
    if ns.redis:
        src = Path(ns.redis)
        t = time.perf_counter()
        subprocess.run(["make", "-C", str(src / "src"), "CC=hmigrate-cc", "MALLOC=libc",
                        "BUILD_TLS=no", "USE_SYSTEMD=no", "redis-server"], check=True,
                       capture_output=True)
        out["redis"] = {"build_s": round(time.perf_counter() - t, 1),
                        "check_align": check(src / "src", "redis-server"),
                        "park": park_latency([str(src / "src/redis-server_x86-64"), "--port",
                                              "{port}", "--save", ""], ns.runs, 1.0)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
