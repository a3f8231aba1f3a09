"""Benchmark: x86-64 -> aarch64 migration (and the way back) against the same-ISA
migration (a -> b) of the same container, in the same run, for the example images built
by the toolchain.

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

from tests.support.lab import DOCKER_CLI, REGISTRY

EXAMPLES = ("helloworld", "redis", "nginx-bin", "examples/threads")


def docker(context: str, *args: str) -> str:
    proc = subprocess.run([DOCKER_CLI, "--context", context, *args], capture_output=True,
                          text=True, timeout=900)
    if proc.returncode:
        raise RuntimeError(f"docker {' '.join(args)}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def figures(doc: dict) -> dict:
    return {"downtime": doc["downtime_seconds"], "total": doc["total_seconds"],
            "recode": doc.get("recode_seconds", {})}


def move(example: str, target: str) -> list[dict]:
    """One move a -> target; to the aarch64 host, also the way back (a second dict)."""
    name = f"bench-x-{example.replace('/', '-')}-{uuid.uuid4().hex[:6]}"
    image = f"{REGISTRY}/hmigrate/{example}:latest"
    docker("hm-a", "pull", "-q", image)
    docker("hm-a", "run", "-d", "--name", name, "--security-opt", "seccomp=unconfined", image)
    time.sleep(2)
    try:
        out = [figures(json.loads(docker("hm-a", "hmigrate", "migrate", name, "--to", target,
                                         "--json", "--verify-seconds", "0")))]
        if target == "hm-arm":
            time.sleep(2)
            try:
                out.append(figures(json.loads(docker(
                    "hm-arm", "hmigrate", "migrate", name, "--to", "hm-a", "--json",
                    "--verify-seconds", "0"))))
            except RuntimeError as exc:  # refused (e.g. it mapped memory above 2^47)
                out.append({"refused": str(exc).splitlines()[-1][-200:]})
        return out
    finally:
        for ctx in ("hm-a", "hm-b", "hm-arm"):
            subprocess.run([DOCKER_CLI, "--context", ctx, "rm", "-f", name],
                           capture_output=True, timeout=300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    ns = parser.parse_args()
    print(f"{'example':<17} {'move':<22} {'downtime s':>10} {'total s':>8}  "
          f"(median of {ns.runs})")
    for example in EXAMPLES:
        same = [move(example, "hm-b")[0] for _ in range(ns.runs)]
        trips = [move(example, "hm-arm") for _ in range(ns.runs)]
        rows = (("x86-64 -> x86-64 (b)", same), ("x86-64 -> aarch64", [t[0] for t in trips]),
                ("aarch64 -> x86-64", [t[1] for t in trips]))
        for label, rs in rows:
            refused = [r["refused"] for r in rs if "refused" in r]
            if refused:
                print(f"{example:<17} {label:<22} refused: {refused[0]}")
                continue
            d = statistics.median(r["downtime"] for r in rs)
            t = statistics.median(r["total"] for r in rs)
            print(f"{example:<17} {label:<22} {d:>10.3f} {t:>8.3f}  ratio to same-ISA: "
                  f"downtime {d / statistics.median(r['downtime'] for r in same):.2f}, "
                  f"total {t / statistics.median(r['total'] for r in same):.2f}")
            if rs is not same:
                phases = {k: statistics.median(r["recode"][k] for r in rs)
                          for k in rs[0]["recode"]}
                print(f"{'':<17} recode phases (s): "
                      + ", ".join(f"{k} {v:.4f}" for k, v in phases.items()))

if __name__ == "__main__":
    main()
