"""Benchmark: `docker hmigrate migrate` against the manual baseline, in the same run.

Manual baseline (what a user does by hand, docs/lab-facts.md): `docker checkpoint create
--checkpoint-dir`, `docker create` on the target, copy the checkpoint folder into the
target container's checkpoints folder, `docker start --checkpoint`. Its downtime is all
of it (the process is frozen from the dump to the restore). For hmigrate the downtime is
what the plugin reports: freeze to running on the target.

Workloads: a shell counter, and Redis holding a few hundred MB (DEBUG POPULATE).
Run as root with the lab up:   python -m bench.migration [--redis-mb 300] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.lab import BASE_IMAGE, COUNTER_CMD, DOCKER_CLI, REDIS_IMAGE, connect
from tests.resp import Redis

REDIS_PORT = 16400


def docker(context: str, *args: str) -> str:
    proc = subprocess.run([DOCKER_CLI, "--context", context, *args], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"docker {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def start_workload(kind: str, name: str, redis_mb: int) -> list[str]:
    """Start the workload on host a; return the run arguments (for the manual create)."""
    if kind == "counter":
        args = [BASE_IMAGE, *COUNTER_CMD]
        docker("hm-a", "run", "-d", "--name", name, *args)
        time.sleep(2)
        return args
    args = ["-p", f"{REDIS_PORT}:6379", REDIS_IMAGE, "redis-server", "--save", "",
            "--appendonly", "no", "--protected-mode", "no", "--enable-debug-command", "yes"]
    docker("hm-a", "run", "-d", "--name", name, *args)
    deadline = time.monotonic() + 30
    while True:
        try:
            client = Redis("127.0.0.1", REDIS_PORT)
            client.call("PING")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    value_size = 1024
    client.call("DEBUG", "POPULATE", redis_mb * 1024, "key", value_size)
    client.close()
    return args


def manual(kind: str, redis_mb: int, data_root_b: str) -> dict[str, float]:
    name = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
    args = start_workload(kind, name, redis_mb)
    ckdir = Path(tempfile.mkdtemp(prefix="bench-ck-"))
    ckdir.chmod(0o700)
    try:
        t0 = time.monotonic()
        docker("hm-a", "checkpoint", "create", "--checkpoint-dir", str(ckdir), name, "ck")
        cid = docker("hm-b", "create", "--name", name, *args).strip()
        dest = Path(data_root_b) / "containers" / cid / "checkpoints" / "ck"
        shutil.copytree(ckdir / "ck", dest)
        docker("hm-b", "start", "--checkpoint", "ck", name)
        t1 = time.monotonic()
        return {"downtime": t1 - t0, "total": t1 - t0}
    finally:
        shutil.rmtree(ckdir, ignore_errors=True)
        for ctx in ("hm-a", "hm-b"):
            subprocess.run([DOCKER_CLI, "--context", ctx, "rm", "-f", name], capture_output=True)


def hmigrate(kind: str, redis_mb: int) -> dict[str, float]:
    name = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
    start_workload(kind, name, redis_mb)
    try:
        t0 = time.monotonic()
        out = docker("hm-a", "hmigrate", "migrate", name, "--to", "hm-b", "--json",
                     "--verify-seconds", "0")
        total = time.monotonic() - t0
        doc = json.loads(out)
        return {"downtime": doc["downtime_seconds"], "total": total,
                **{f"phase {p['name']}": p["seconds"] for p in doc["phases"]}}
    finally:
        for ctx in ("hm-a", "hm-b"):
            subprocess.run([DOCKER_CLI, "--context", ctx, "rm", "-f", name], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--redis-mb", type=int, default=300)
    parser.add_argument("--only", choices=["counter", "redis"])
    ns = parser.parse_args()
    data_root_b = connect("b").data_root
    print(f"{'workload':<10} {'method':<9} {'downtime s':>11} {'total s':>9}   (median of "
          f"{ns.runs}; redis {ns.redis_mb} MB)")
    for kind in ("counter", "redis"):
        if ns.only and kind != ns.only:
            continue
        runs = {"manual": [], "hmigrate": []}
        for _ in range(ns.runs):  # interleaved, so drift affects both alike
            runs["manual"].append(manual(kind, ns.redis_mb, data_root_b))
            runs["hmigrate"].append(hmigrate(kind, ns.redis_mb))
        med = {m: {k: statistics.median(r[k] for r in rs) for k in ("downtime", "total")}
               for m, rs in runs.items()}
        for m in ("manual", "hmigrate"):
            print(f"{kind:<10} {m:<9} {med[m]['downtime']:>11.3f} {med[m]['total']:>9.3f}")
        phases = {k: statistics.median(r[k] for r in runs["hmigrate"])
                  for k in runs["hmigrate"][0] if k.startswith("phase ")}
        print(f"{'':<10} phases:   " + ", ".join(f"{k[6:]} {v:.3f}" for k, v in phases.items()))
        print(f"{kind:<10} ratio hmigrate/manual: downtime "
              f"{med['hmigrate']['downtime'] / med['manual']['downtime']:.2f}, total "
              f"{med['hmigrate']['total'] / med['manual']['total']:.2f} "
              "(total includes validation, image and volume handling the manual way skips)")


if __name__ == "__main__":
    main()
