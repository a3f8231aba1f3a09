"""Benchmark: prepare target of a first cross-ISA move, in one run, against its baseline.

    python -m bench.first_move [--to hm-arm] [--image helloworld]

Three moves of the same toolchain-built example from host a, each with a fresh
container, against an empty template cache of its own (the user's stays untouched):
1. a new host: nothing cached, the host template is taken (the baseline);
2. a new configuration (a bind mount at a path never used) to that host: its facts
   derived from the host template, nothing run on the target;
3. the same configuration again.
Prints prepare target, what of it waited for the target's facts and what was the image
pull (`prepare_seconds`), the template's own time, and each move's ratio to the baseline.
The aarch64 host is emulated (qemu TCG): note the load average printed with each move.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
import uuid

from tests.support.lab import DOCKER_CLI, REGISTRY


def docker(context: str, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([DOCKER_CLI, "--context", context, *args], capture_output=True,
                          text=True, timeout=1800, env={**os.environ, **(env or {})})
    if proc.returncode:
        raise RuntimeError(f"docker {' '.join(args)}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def move(image: str, target: str, cache: str, extra: list[str]) -> dict:
    name = f"bench-first-{uuid.uuid4().hex[:6]}"
    docker("hm-a", "run", "-d", "--name", name, "--security-opt", "seccomp=unconfined",
           *extra, image)
    time.sleep(2)
    load = os.getloadavg()[0]
    try:
        doc = json.loads(docker("hm-a", "hmigrate", "migrate", name, "--to", target, "--json",
                                "--verify-seconds", "0", env={"HMIGRATE_CACHE": cache}))
    finally:
        for ctx in ("hm-a", target):
            subprocess.run([DOCKER_CLI, "--context", ctx, "rm", "-f", name],
                           capture_output=True, timeout=600)
    phases = {p["name"]: p.get("seconds", 0.0) for p in doc.get("phases", [])}
    steps = doc.get("prepare_seconds") or {}
    return {"prepare": phases.get("prepare target", 0.0), "pull": steps.get("image", 0.0),
            "waited": steps.get("target_facts", 0.0),
            "template": f"{doc.get('template', '-')}/{doc.get('template_facts', '-')}",
            "template_total": (doc.get("template_seconds") or {}).get("total", 0.0),
            "downtime": doc.get("downtime_seconds", 0.0), "load": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", default="hm-arm")
    parser.add_argument("--image", default="helloworld")
    ns = parser.parse_args()
    image = f"{REGISTRY}/hmigrate/{ns.image}:latest"
    docker("hm-a", "pull", "-q", image)
    path = f"/bench-{uuid.uuid4().hex[:8]}"  # a configuration no cache has seen
    with tempfile.TemporaryDirectory(prefix="hmigrate-bench-cache-") as cache:
        runs = [("1 new host (baseline)", move(image, ns.to, cache, []))]
        runs.append(("2 new configuration", move(image, ns.to, cache, ["-v", f"/tmp:{path}"])))
        runs.append(("3 same again", move(image, ns.to, cache, ["-v", f"/tmp:{path}"])))
    base = runs[0][1]["prepare"]
    print(f"{'move to ' + ns.to:<24} {'prepare s':>9} {'-pull s':>8} {'waited s':>8} "
          f"{'template':>15} {'tpl s':>6} {'downtime':>8} {'load':>5}  ratio")
    for label, r in runs:
        print(f"{label:<24} {r['prepare']:>9.2f} {r['prepare'] - r['pull']:>8.2f} "
              f"{r['waited']:>8.2f} {r['template']:>15} {r['template_total']:>6.1f} "
              f"{r['downtime']:>8.2f} {r['load']:>5.1f}  {r['prepare'] / base:.2f}")


if __name__ == "__main__":
    main()
