"""Benchmark: x86-64 -> aarch64 migration against the same-ISA migration (a -> b) of the
same container, in the same run, for the example images built by the toolchain.

    sudo HMLAB_ARM64=1 lab/up && sudo python -m bench.cross_isa [--runs 3]

Prints, per example, the downtime and total of each move, the recode's own time per
phase (from the plugin's JSON), and the ratios cross-ISA / same-ISA. The aarch64 host is
emulated (qemu TCG), so its restore is slow: the ratio shows that, not the recode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
import uuid

from tests.lab import DOCKER_CLI, REGISTRY

EXAMPLES = ("helloworld", "redis")


def docker(context: str, *args: str) -> str:
    proc = subprocess.run([DOCKER_CLI, "--context", context, *args], capture_output=True,
                          text=True, timeout=900)
    if proc.returncode:
        raise RuntimeError(f"docker {' '.join(args)}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def move(example: str, target: str) -> dict:
    name = f"bench-x-{example}-{uuid.uuid4().hex[:6]}"
    image = f"{REGISTRY}/hmigrate/{example}:latest"
    docker("hm-a", "pull", "-q", image)
    docker("hm-a", "run", "-d", "--name", name, "--security-opt", "seccomp=unconfined", image)
    time.sleep(2)
    try:
        doc = json.loads(docker("hm-a", "hmigrate", "migrate", name, "--to", target, "--json",
                                "--verify-seconds", "0"))
        return {"downtime": doc["downtime_seconds"], "total": doc["total_seconds"],
                "recode": doc.get("recode_seconds", {})}
    finally:
        for ctx in ("hm-a", "hm-b", "hm-arm"):
            subprocess.run([DOCKER_CLI, "--context", ctx, "rm", "-f", name],
                           capture_output=True, timeout=300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    ns = parser.parse_args()
    print(f"{'example':<11} {'move':<22} {'downtime s':>10} {'total s':>8}  (median of {ns.runs})")
    for example in EXAMPLES:
        same = [move(example, "hm-b") for _ in range(ns.runs)]
        cross = [move(example, "hm-arm") for _ in range(ns.runs)]
        med = {label: {k: statistics.median(r[k] for r in rs) for k in ("downtime", "total")}
               for label, rs in (("same", same), ("cross", cross))}
        print(f"{example:<11} {'x86-64 -> x86-64 (b)':<22} {med['same']['downtime']:>10.3f} "
              f"{med['same']['total']:>8.3f}")
        print(f"{example:<11} {'x86-64 -> aarch64':<22} {med['cross']['downtime']:>10.3f} "
              f"{med['cross']['total']:>8.3f}")
        phases = {k: statistics.median(r["recode"][k] for r in cross)
                  for k in cross[0]["recode"]}
        listed = ", ".join(f"{k} {v:.4f}" for k, v in phases.items())
        print(f"{'':<11} recode phases (s): {listed}")
        print(f"{example:<11} ratio cross/same: downtime "
              f"{med['cross']['downtime'] / med['same']['downtime']:.2f}, total "
              f"{med['cross']['total'] / med['same']['total']:.2f}")


if __name__ == "__main__":
    main()
