"""Recode time per phase on real checkpoints (lab host a, as root).

    sudo python -m bench.recode [--runs 5] [--threads 8]
    sudo python -m bench.recode --redis-mb 200 [--runs 1] [--baseline-ref main]

Checkpoints the parked multi-ISA helloworld (and, with hmigrate-cc installed, a program
with N sleeping worker threads) on host a, then recodes each image set x86-64 ->
aarch64 `--runs` times and prints the median seconds of every phase.

With --redis-mb: the cross-ISA data path of a migration (CrossIsa.move_checkpoint and
transform: download from the source's checkpoint folder, recode, merge with the target's
host facts, upload) on a parked multi-ISA Redis holding that many MB (DEBUG POPULATE),
checkpointed on host a; the upload goes to a scratch folder on host b (the aarch64 host
is not needed: the bytes are the same). Each run is a child process, so its peak RSS is
the data path's own; the same checkpoint goes through this tree's docker_hmigrate and
through `--baseline-ref`'s (git archive of that revision), in the same run, and the
ratios new/baseline are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
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


REPO = Path(__file__).resolve().parents[1]
DATA_PATH_PHASES = ("download", "recode", "merge", "upload")


def data_path_child(spec: dict) -> dict:
    """One pass of the cross-ISA data path, in this (child) process: what
    strategy.CrossIsa does between the dump and the restore. Returns seconds per phase,
    the peak RSS and the bytes moved."""
    from docker_hmigrate import recode as rc
    from docker_hmigrate import transfer
    from docker_hmigrate.engine import Host
    from docker_hmigrate.recode.process import TargetFacts

    hosts = {k: Host(HOSTS[k]["context"], docker.DockerClient(
        base_url=HOSTS[k]["url"], version="auto", timeout=600)) for k in ("a", "b")}
    program = program_of_image(hosts["a"].client, spec["image"])
    inspect = hosts["a"].client.api.inspect_container(spec["container"])
    work = Path(spec["work"])
    ck = Path(spec["checkpoint"])
    t: dict[str, float] = {}
    peaks = {"setup": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    steady = status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM from here: the data path's
        f.write("5")
    started = clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        t[name], clock = now - clock, now
        peaks[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    with transfer.FolderLink("checkpoint", hosts["a"], str(ck.parent), hosts["b"],
                             spec["upload_to"]) as link:
        (work / "source").mkdir(mode=0o700)
        down = link.download(ck.name, work / "source")
        lap("download")
        facts = TargetFacts(maps={"vdso": [(0, 8192)], "vvar": [(0, 8192)]})
        inner = rc.recode(work / "source", work / "target", program, "x86-64", "aarch64",
                          facts)
        lap("recode")
        # the source's own checkpoint as the template: the same host images a target's
        # template gives (mount tree, cgroups), read from disk as on a real move
        rc.merge_host_facts(work / "target", ck, work / "merged", inspect)
        lap("merge")
        up = link.upload(work / "merged", "ck")
        lap("upload")
    t["total"] = time.monotonic() - started
    import docker_hmigrate

    return {"seconds": t, "downloaded": down.bytes, "uploaded": up.bytes,
            "code": str(Path(docker_hmigrate.__file__).parent),
            "recode_phases": {k: round(v, 3) for k, v in inner.items()},
            # clear_refs reset the kernel's high-water mark: the setup's peak counts apart
            "peak_rss_mb": max(peaks["setup"], status_mb("VmHWM"),
                               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "setup_rss_mb": steady, "data_path_peak_rss_mb": status_mb("VmHWM"),
            "cpu_seconds": (lambda u: u.ru_utime + u.ru_stime)(
                resource.getrusage(resource.RUSAGE_SELF)),
            "peak_rss_after_mb": peaks}


def status_mb(field: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def baseline_tree(ref: str, dest: Path) -> Path:
    """docker_hmigrate as it is at `ref`, unpacked into dest (bench/ and tests/ stay
    this tree's: the child only calls APIs both have)."""
    dest.mkdir(mode=0o700)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "docker_hmigrate"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_child(tree: Path, spec: dict) -> dict:
    # run from `tree`: `python -m` puts the working folder first on sys.path, so that
    # docker_hmigrate is the tree's; bench/ and tests/ come from this checkout
    env = dict(os.environ, PYTHONPATH=f"{tree}:{REPO}")
    proc = subprocess.run([sys.executable, "-m", "bench.recode", "--child", json.dumps(spec)],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"data path run failed ({tree}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_data_path(redis_mb: int, runs: int, baseline_ref: str) -> None:
    """The cross-ISA data path on a Redis holding redis_mb MB: this tree against the
    baseline, in the same run (see the module doc)."""
    from tests.support.resp import Redis

    client = docker.DockerClient(base_url=HOSTS["a"]["url"], version="auto", timeout=600)
    image = f"{REDIS}:latest-amd64"
    program = program_of_image(client, image)
    work = Path(tempfile.mkdtemp(prefix="hm-bench-datapath-"))  # 0700: process memory
    name = unique("hm-bench-datapath")
    try:
        port = free_port()
        cmd = [*(client.images.get(image).attrs["Config"]["Cmd"] or []),
               "--enable-debug-command", "yes"]
        c = client.containers.run(image, cmd, name=name, detach=True,
                                  ports={"6379/tcp": ("127.0.0.1", port)},
                                  security_opt=["seccomp=unconfined"])
        deadline = time.monotonic() + 60
        while True:
            try:
                r = Redis("127.0.0.1", port, timeout=900)
                r.call("PING")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        filled = time.monotonic()
        r.call("DEBUG", "POPULATE", redis_mb * 1024, "key", 1024)  # 1 KiB values
        keys = r.call("DBSIZE")
        r.close()
        print(f"redis: {keys} keys ({redis_mb} MB of values) in "
              f"{time.monotonic() - filled:.1f}s", flush=True)
        ck = park_and_checkpoint(client, HOSTS["a"]["url"], c, work / "ck",
                                 park_pcs=park_pcs(program), timeout=300)
        size = sum(f.stat().st_size for f in ck.iterdir())
        print(f"checkpoint: {size / 1e6:.1f} MB in {ck}", flush=True)
        trees = {"baseline": baseline_tree(baseline_ref, work / "baseline"), "new": REPO}
        results: dict[str, list[dict]] = {k: [] for k in trees}
        for i in range(runs):
            for label, tree in trees.items():
                run_dir = work / f"{label}-{i}"
                run_dir.mkdir(mode=0o700)
                up = run_dir / "up"
                up.mkdir(mode=0o700)
                spec = {"image": image, "container": c.id, "checkpoint": str(ck),
                        "work": str(run_dir), "upload_to": str(up)}
                res = run_child(tree, spec)
                sent = sorted((f.name, f.stat().st_size) for f in (up / "ck").iterdir())
                merged = sorted((f.name, f.stat().st_size)
                                for f in (run_dir / "merged").iterdir())
                if sent != merged:
                    raise RuntimeError(f"{label}: the uploaded folder differs from the "
                                       f"merged one")
                results[label].append(res)
                if Path(res["code"]).parent != tree:
                    raise RuntimeError(f"{label} ran {res['code']}, not {tree}'s code")
                print(f"  {label} run {i + 1}: peak RSS {res['peak_rss_mb']:.0f} MB (after "
                      + ", ".join(f"{k} {v:.0f}" for k, v in res["peak_rss_after_mb"].items())
                      + "), " + ", ".join(f"{k} {v:.2f}s" for k, v in res["seconds"].items())
                      + f"; recode phases {res['recode_phases']}", flush=True)
                shutil.rmtree(run_dir)
        print(f"\ncross-ISA data path, Redis {redis_mb} MB ({size / 1e6:.0f} MB checkpoint), "
              f"median of {runs} run(s); baseline = {baseline_ref}")
        print("(wall seconds on a shared 2-core machine: load "
              f"{os.getloadavg()[0]:.1f}; cpu s is the child's own user+system time)")
        print("peak RSS: the child's whole life (ru_maxrss: the program's metadata read "
              "and parsed, then the data path); after setup: its RSS once the metadata is "
              "held; data path peak: VmHWM reset after setup")
        cols = ("peak RSS MB", "after setup", "data path pk", *DATA_PATH_PHASES, "total s",
                "cpu s")
        print(f"{'':10}" + "".join(f"{c:>13}" for c in cols))
        med: dict[str, list[float]] = {}
        for label, rs in results.items():
            med[label] = [statistics.median(r[k] for r in rs) for k in (
                "peak_rss_mb", "setup_rss_mb", "data_path_peak_rss_mb")] + [
                statistics.median(r["seconds"][p] for r in rs)
                for p in (*DATA_PATH_PHASES, "total")] + [
                statistics.median(r["cpu_seconds"] for r in rs)]
            print(f"{label:10}" + "".join(f"{v:13.2f}" for v in med[label]))
        print(f"{'new/base':10}" + "".join(
            f"{n / b:13.2f}" if b else f"{'-':>13}"
            for n, b in zip(med["new"], med["baseline"], strict=True)))
    finally:
        try:
            client.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--redis-mb", type=int, default=0,
                    help="measure the cross-ISA data path on a Redis holding this many MB")
    ap.add_argument("--baseline-ref", default="main",
                    help="git revision whose docker_hmigrate is the baseline (--redis-mb)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.child:
        print(json.dumps(data_path_child(json.loads(ns.child))))
        return
    if ns.redis_mb:
        redis_data_path(ns.redis_mb, ns.runs if "--runs" in sys.argv else 1,
                        ns.baseline_ref)
        return
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
