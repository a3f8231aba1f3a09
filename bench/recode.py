"""Recode time per phase on real checkpoints (lab host a, as root).

    sudo python -m bench.recode [--runs 5] [--threads 8]

Checkpoints the parked multi-ISA helloworld (and, with hmigrate-cc installed, a program
with N sleeping worker threads) on host a, then recodes each image set x86-64 ->
aarch64 `--runs` times and prints the median seconds of every phase.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import docker

from docker_hmigrate.recode import Program, transform
from tests.support.lab import HOSTS, unique
from tests.support.recode_lab import (
    HELLO,
    REDIS,
    THREADS_C,
    park_and_checkpoint,
    park_pcs,
    program_of_image,
)


def redis_program(client: docker.DockerClient) -> Program | None:
    try:
        return program_of_image(client, f"{REDIS}:latest-amd64")
    except docker.errors.ImageNotFound:
        return None


def threads_program(work: Path, n: int) -> Program | None:
    if shutil.which("hmigrate-cc") is None:
        return None
    src = work / "mt"
    src.mkdir()
    (src / "mt.c").write_text(THREADS_C.replace("t[3]", f"t[{n}]").replace(
        "i < 3", f"i < {n}").replace("counts[4]", f"counts[{n + 1}]"))
    subprocess.run(["hmigrate-cc", "-O2", "-o", "mt", "mt.c", "-lpthread"], cwd=src,
                   check=True, capture_output=True, timeout=600)
    src.chmod(0o755)
    return Program("/t/mt_x86-64", json.loads((src / "mt.hmigrate.json").read_text()),
                   {i: (src / f"mt_{i}").read_bytes() for i in ("x86-64", "aarch64")})


def measure(ck: Path, program: Program, runs: int, work: Path) -> dict[str, float]:
    samples: dict[str, list[float]] = {}
    for i in range(runs):
        out = work / f"out-{i}"
        t = transform.recode_images(ck, out, program, "x86-64", "aarch64")
        t["total"] = sum(t.values())
        for k, v in t.items():
            samples.setdefault(k, []).append(v)
        shutil.rmtree(out)
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=8)
    ns = ap.parse_args()
    spec = HOSTS["a"]
    client = docker.DockerClient(base_url=spec["url"], version="auto", timeout=120)
    work = Path(tempfile.mkdtemp(prefix="hm-bench-recode-"))  # 0700
    names: list[str] = []
    try:
        cases = [("helloworld (1 thread)", program_of_image(client, HELLO), HELLO, None, None)]
        mt = threads_program(work, ns.threads)
        if mt is not None:
            cases.append((f"threads ({ns.threads + 1} threads)", mt, "hmlab/busybox:latest",
                          ["/t/mt_x86-64"], {str(work / "mt"): {"bind": "/t", "mode": "ro"}}))
        redis = redis_program(client)
        if redis is not None:
            cases.append(("redis-server (4 threads)", redis, f"{REDIS}:latest-amd64", None, None))
        rows = []
        for label, program, image, cmd, volumes in cases:
            name = unique("hm-bench-recode")
            names.append(name)
            c = client.containers.run(image, cmd, name=name, detach=True, volumes=volumes,
                                      security_opt=["seccomp=unconfined"])
            if program is redis:  # parked before it listens would be a different test
                time.sleep(2)
            ck = park_and_checkpoint(client, spec["url"], c, work / name,
                                     park_pcs=park_pcs(program))
            size = sum(f.stat().st_size for f in ck.iterdir())
            rows.append((label, size, measure(ck, program, ns.runs, work)))
        phases = ["load", "check", "unwind", "stacks", "process", "save", "total"]
        print(f"recode x86-64 -> aarch64, median of {ns.runs} runs (ms)")
        print(f"{'program':24} {'images':>9} " + " ".join(f"{p:>8}" for p in phases))
        for label, size, med in rows:
            print(f"{label:24} {size / 1024:8.0f}K " +
                  " ".join(f"{med.get(p, 0) * 1000:8.2f}" for p in phases))
    finally:
        for n in names:
            try:
                client.containers.get(n).remove(force=True)
            except docker.errors.NotFound:
                pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
