"""Benchmark: `docker hmigrate migrate` against the manual baseline, in the same run.

Manual baseline (what a user does by hand, docs/lab-facts.md): `docker checkpoint create
--checkpoint-dir`, `docker create` on the target, copy the checkpoint folder into the
target container's checkpoints folder, `docker start --checkpoint`. Its downtime is all
of it (the process is frozen from the dump to the restore). For hmigrate the downtime is
what the plugin reports: freeze to running on the target.

Raw CRIU (bench/rawcriu.py) is the floor: the same image and program run by runc alone,
dumped to tmpfs and restored on the same host, no Docker or containerd around it.

Methods: hmigrate (the default move: the dump streamed through the plugin), direct
(`migrate --direct`: the pages sent by the source's CRIU to a page server on the target
during the dump), manual, raw CRIU.
Workloads: a shell counter, and Redis holding 64 MB / 300 MB / 1 GB (DEBUG POPULATE).
Each line gives the median downtime and total, with ratios of the downtime to raw CRIU
and to the manual baseline; then hmigrate's phases and CRIU's own figures (stats-dump of
the fast checkpoint path) and raw CRIU's dump and restore, wall and CRIU's own.
With --ssh, the counter is also moved host b -> host a twice per run, once over the unix
socket (context hm-a) and once over the lab's real sshd (context hm-a-ssh, lab/ssh), and
the ssh figure is given as a ratio to the unix one.
Run as root with the lab up:
    python -m bench.migration [--runs 3] [--workloads counter,redis64,redis300,redis1024]
                              [--ssh] [--lazy] [--lazy-redis 64,300]
With --lazy, the counter is also moved hm-c -> hm-c2 (host c's two Docker 26 daemons,
HMLAB_CGROUP2=1) with and without post-copy, interleaved (docs/lazy.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from bench.rawcriu import RawContainer
from tests.support.lab import (
    BASE_IMAGE,
    COUNTER_CMD,
    DOCKER_CLI,
    REDIS_IMAGE,
    connect,
    remove_staging_copies,
)
from tests.support.resp import Redis

REDIS_PORT = 16400
RAW_REDIS_PORT = 16401  # the raw runc container uses the host's network


def docker(context: str, *args: str) -> str:
    proc = subprocess.run([DOCKER_CLI, "--context", context, *args], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"docker {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


REDIS_ARGS = ["redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no",
              "--enable-debug-command", "yes"]


def fill_redis(port: int, redis_mb: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            client = Redis("127.0.0.1", port, timeout=600)  # populating 1 GB takes a while
            client.call("PING")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    client.call("DEBUG", "POPULATE", redis_mb * 1024, "key", 1024)  # 1 KiB values
    client.close()


def start_workload(kind: str, name: str, redis_mb: int) -> list[str]:
    """Start the workload on host a; return the run arguments (for the manual create)."""
    if kind == "counter":
        args = [BASE_IMAGE, *COUNTER_CMD]
        docker("hm-a", "run", "-d", "--name", name, *args)
        time.sleep(2)
        return args
    args = ["-p", f"{REDIS_PORT}:6379", REDIS_IMAGE, *REDIS_ARGS]
    docker("hm-a", "run", "-d", "--name", name, *args)
    fill_redis(REDIS_PORT, redis_mb)
    return args


def raw(kind: str, redis_mb: int) -> dict[str, float]:
    """The floor: runc + CRIU alone, dump to tmpfs and restore, same host (rawcriu.py)."""
    if kind == "counter":
        c = RawContainer([DOCKER_CLI, "--context", "hm-a"], BASE_IMAGE, COUNTER_CMD)
    else:
        c = RawContainer([DOCKER_CLI, "--context", "hm-a"], REDIS_IMAGE,
                         [*REDIS_ARGS, "--port", str(RAW_REDIS_PORT)])
    try:
        c.start()
        if kind == "counter":
            time.sleep(2)
        else:
            fill_redis(RAW_REDIS_PORT, redis_mb)
        return c.checkpoint_restore()
    finally:
        c.close()


def manual(kind: str, redis_mb: int, data_root_b: str) -> dict[str, float]:
    name = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
    ckdir = Path(tempfile.mkdtemp(prefix="bench-ck-"))
    ckdir.chmod(0o700)
    ids: list[str] = []
    try:
        args = start_workload(kind, name, redis_mb)
        ids.append(docker("hm-a", "inspect", "-f", "{{.Id}}", name).strip())
        t0 = time.monotonic()
        docker("hm-a", "checkpoint", "create", "--checkpoint-dir", str(ckdir), name, "ck")
        cid = docker("hm-b", "create", "--name", name, *args).strip()
        ids.append(cid)
        dest = Path(data_root_b) / "containers" / cid / "checkpoints" / "ck"
        shutil.copytree(ckdir / "ck", dest)
        docker("hm-b", "start", "--checkpoint", "ck", name)
        t1 = time.monotonic()
        return {"downtime": t1 - t0, "total": t1 - t0}
    finally:
        shutil.rmtree(ckdir, ignore_errors=True)
        for ctx in ("hm-a", "hm-b"):
            subprocess.run([DOCKER_CLI, "--context", ctx, "rm", "-f", name], capture_output=True)
        remove_staging_copies(*ids)  # the manual way leaves containerd's (process memory)


def hmigrate(kind: str, redis_mb: int, source: str = "hm-a",
             target: str = "hm-b", extra: tuple[str, ...] = ()) -> dict[str, float]:
    name = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
    try:
        if source == "hm-a":
            start_workload(kind, name, redis_mb)
        else:  # the counter only: Redis's published port is reached on host a
            docker(source, "run", "-d", "--name", name, BASE_IMAGE, *COUNTER_CMD)
            time.sleep(2)
        t0 = time.monotonic()
        out = docker(source, "hmigrate", "migrate", name, "--to", target, "--json",
                     "--verify-seconds", "0", *extra)
        total = time.monotonic() - t0
        doc = json.loads(out)
        criu = doc.get("criu_dump") or {}
        return {"downtime": doc["downtime_seconds"], "total": total,
                "frozen to running": doc.get("downtime_frozen_seconds", float("nan")),
                **{f"phase {p['name']}": p["seconds"] for p in doc["phases"]},
                "criu frozen": criu.get("frozen_seconds", float("nan")),
                "criu memdump": criu.get("memdump_seconds", float("nan")),
                "criu memwrite": criu.get("memwrite_seconds", float("nan")),
                "MB written": criu.get("pages_written", 0) * 4096 / 1e6,
                "fast path": 1.0 if doc.get("checkpoint_path") == "runc" else 0.0}
    finally:
        for ctx in {"hm-a", "hm-b", source, target}:
            subprocess.run([DOCKER_CLI, "--context", ctx, "rm", "-f", name], capture_output=True)


def counter_interleaved(title: str, column: str, ways: dict[str, tuple[str, str, tuple]],
                        runs: int) -> None:
    """The counter moved each way (name -> source, target, extra options), interleaved
    run by run; medians, with ratios to the first way, and each way's phase medians."""
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in ways}
    for _ in range(runs):
        for way, (source, target, extra) in ways.items():
            rows[way].append(_attempt(f"hmigrate {way} {source}->{target}",
                                      lambda s=source, t=target, e=extra: hmigrate(
                                          "counter", 0, source=s, target=t, extra=e)))
    med = {w: {k: _median(r, k) for k in ("downtime", "total")} for w, r in rows.items()}
    base = next(iter(ways))
    width = max(14, len(title) + 1)
    print(f"{title:<{width}} {column:<9} {'downtime s':>11} {'total s':>9} {'/' + base:>6}")
    for way in ways:
        d = med[way]["downtime"]
        print(f"{'':<{width}} {way:<9} {d:>11.3f} {med[way]['total']:>9.3f} "
              f"{d / med[base]['downtime']:>6.2f}")
    for way, rs in rows.items():
        keys = [k for k in rs[0] if k.startswith("phase ")]
        print(f"{'':<{width}} {way}: " + ", ".join(f"{k} {_median(rs, k):.3f}" for k in keys))


def lazy_versus_copy(runs: int, source: str = "hm-c", target: str = "hm-c2") -> None:
    """The counter moved with and without --lazy, interleaved. Post-copy needs engines
    with OCI annotations (docs/lazy.md): host c's two daemons (HMLAB_CGROUP2=1)."""
    counter_interleaved(f"counter {source}->{target}", "method",
                        {"copy": (source, target, ()), "lazy": (source, target, ("--lazy",))},
                        runs)


def redis_on_c(mb: int, extra: tuple[str, ...], source: str = "hm-c",
               target: str = "hm-c2") -> dict[str, float]:
    """Redis holding ~mb MB on host c moved to c2 (with `extra`, e.g. --lazy); its keys
    checked on the target (a count and a sampled digest)."""
    from tests.lab.test_cgroup2_lab import REDIS_MULTI, _redis
    from tests.support.lab import connect

    src, dst = connect(source.removeprefix("hm-")), connect(target.removeprefix("hm-"))
    name = f"bench-lazy-{uuid.uuid4().hex[:6]}"
    n = mb * 1000  # ~1 KB values
    fill = ("for i=1,tonumber(ARGV[1]) do redis.call('SET','key:'..i, i..':'.."
            "string.rep('v', 1000)) end return redis.call('DBSIZE')")
    sample = ("local t={} for i=1,tonumber(ARGV[1]),997 do "
              "t[#t+1]=redis.call('GET','key:'..i) end return redis.sha1hex(table.concat(t))")
    try:
        docker(source, "run", "-d", "--name", name, REDIS_MULTI)
        for _ in range(60):
            try:
                if _redis(src, name, "PING") == "PONG":
                    break
            except AssertionError:
                time.sleep(1)
        if _redis(src, name, "EVAL", fill, "0", str(n)) != str(n):
            raise RuntimeError("Redis was not filled")
        before = _redis(src, name, "EVAL", sample, "0", str(n))
        t0 = time.monotonic()
        doc = json.loads(docker(source, "hmigrate", "migrate", name, "--to", target, "--json",
                                "--verify-seconds", "0", *extra))
        total = time.monotonic() - t0
        if (_redis(dst, name, "DBSIZE"), _redis(dst, name, "EVAL", sample, "0", str(n))) \
                != (str(n), before):
            raise RuntimeError(f"{name}: keys differ after the move")
        return {"downtime": doc["downtime_seconds"], "total": total,
                **{f"phase {p['name']}": p["seconds"] for p in doc["phases"]}}
    finally:
        for ctx in (source, target):
            subprocess.run([DOCKER_CLI, "--context", ctx, "rm", "-f", name], capture_output=True)


def lazy_redis(runs: int, mb: int) -> None:
    """Redis of `mb` MB moved c -> c2 with and without --lazy, interleaved; medians."""
    rows: dict[str, list[dict[str, float]]] = {"copy": [], "lazy": []}
    for _ in range(runs):
        for way, extra in (("copy", ()), ("lazy", ("--lazy",))):
            rows[way].append(_attempt(f"redis{mb} {way}", lambda e=extra: redis_on_c(mb, e)))
    base = _median(rows["copy"], "downtime")
    print(f"redis{mb} hm-c->hm-c2  {'method':<6} {'downtime s':>11} {'total s':>9} {'/copy':>6}")
    for way, rs in rows.items():
        d = _median(rs, "downtime")
        print(f"{'':<18} {way:<6} {d:>11.3f} {_median(rs, 'total'):>9.3f} {d / base:>6.2f}")
        keys = [k for k in rs[0] if k.startswith("phase ")]
        print(f"{'':<18} {way}: " + ", ".join(f"{k} {_median(rs, k):.3f}" for k in keys))


def ssh_versus_unix(runs: int) -> None:
    """The counter moved b -> a over a unix socket and over ssh, interleaved."""
    counter_interleaved("counter b->a", "transport",
                        {"unix": ("hm-b", "hm-a", ()), "ssh": ("hm-b", "hm-a-ssh", ())}, runs)


LAB_LINK = "hmlab-a0"  # host a's side of the veth to host b (hm-b-tcp's 10.77.0.2)


@contextlib.contextmanager
def link_rate(rate: str):
    """The lab link from host a to host b limited to `rate` (tc's tbf, e.g. 100mbit) while
    inside; "none": as it is. The plugin runs on host a: its PUTs to hm-b-tcp cross it."""
    if rate == "none":
        yield
        return
    subprocess.run(["tc", "qdisc", "replace", "dev", LAB_LINK, "root", "tbf", "rate", rate,
                    "burst", "256kb", "latency", "100ms"], check=True)
    try:
        yield
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", LAB_LINK, "root"], check=False)


def compress_on_link(runs: int, rates: list[str], redis_mb: int = 64) -> None:
    """Redis (DEBUG POPULATE) moved hm-a -> hm-b-tcp with --compress none and gzip,
    interleaved, for each link rate; medians and the ratio of gzip to none."""
    print(f"Redis {redis_mb} MB hm-a -> hm-b-tcp, median of {runs}; link = tc tbf on "
          f"{LAB_LINK} (none: the veth as it is)")
    print(f"{'link':<9} {'compress':<9} {'downtime s':>11} {'move s':>8} {'/none':>6}")
    for rate in rates:
        rows: dict[str, list[dict[str, float]]] = {"none": [], "gzip": []}
        with link_rate(rate):
            for _ in range(runs):
                for c in rows:
                    rows[c].append(_attempt(f"hmigrate --compress {c} ({rate})",
                                            lambda c=c: hmigrate("redis", redis_mb, "hm-a",
                                                                 "hm-b-tcp",
                                                                 ("--compress", c))))
        base = _median(rows["none"], "downtime")
        for c, rs in rows.items():
            d = _median(rs, "downtime")
            print(f"{rate:<9} {c:<9} {d:>11.3f} {_median(rs, 'phase move'):>8.3f} "
                  f"{d / base:>6.2f}")


WORKLOADS = {"counter": ("counter", 0), "redis64": ("redis", 64), "redis300": ("redis", 300),
             "redis1024": ("redis", 1024)}
METHODS = {"hmigrate": lambda kind, mb, root: hmigrate(kind, mb),
           "direct": lambda kind, mb, root: hmigrate(kind, mb, extra=("--direct",)),
           "manual": lambda kind, mb, root: manual(kind, mb, root),
           "raw CRIU": lambda kind, mb, root: raw(kind, mb)}


def _median(rows: list[dict[str, float]], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return statistics.median(values) if values else float("nan")


def _attempt(method: str, run, tries: int = 3) -> dict[str, float]:
    """One measurement; a run the busy lab made fail (a cgroup freeze that timed out) is
    said and retried, never counted."""
    for i in range(tries):
        try:
            return run()
        except RuntimeError as exc:
            print(f"  ({method}: attempt {i + 1} failed: {str(exc)[-160:]})", flush=True)
    raise RuntimeError(f"{method} failed {tries} times")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workloads", default="counter,redis64,redis300",
                        help=f"comma-separated, of {', '.join(WORKLOADS)}")
    parser.add_argument("--ssh", action="store_true",
                        help="also the counter moved b -> a over ssh vs the unix socket")
    parser.add_argument("--lazy", action="store_true",
                        help="also the counter moved hm-c -> hm-c2 with --lazy vs without "
                             "(post-copy needs Docker >= 24: docs/lazy.md)")
    parser.add_argument("--lazy-redis", default="", metavar="MB,...",
                        help="also Redis of these sizes moved hm-c -> hm-c2 with --lazy vs "
                             "without (HMLAB_CGROUP2=1; host c's VM holds ~300 MB at most)")
    parser.add_argument("--compress-link", default="", metavar="RATE,...",
                        help="also Redis 64 MB moved hm-a -> hm-b-tcp with --compress none vs "
                             "gzip over the lab link limited to each rate (tc, e.g. "
                             "none,1gbit,100mbit)")
    ns = parser.parse_args()
    lazy_sizes = [int(x) for x in ns.lazy_redis.split(",") if x]
    data_root_b = connect("b").data_root
    workloads = [w for w in ns.workloads.split(",") if w]
    link_rates = [r for r in ns.compress_link.split(",") if r]
    if not workloads:
        if link_rates:
            compress_on_link(ns.runs, link_rates)
        if ns.ssh:
            ssh_versus_unix(ns.runs)
        if ns.lazy:
            lazy_versus_copy(ns.runs)
        for mb in lazy_sizes:
            lazy_redis(ns.runs, mb)
        return
    print(f"median of {ns.runs} runs; raw CRIU = runc checkpoint to tmpfs + runc restore "
          "on host a, no Docker")
    print("downtime = from the checkpoint request until running again (what a user "
          "waits); frozen = from CRIU's freeze (stats-dump) until running again, where "
          "CRIU's figures exist")
    print(f"{'workload':<10} {'method':<9} {'downtime s':>11} {'total s':>9} "
          f"{'/raw':>6} {'/manual':>8} {'frozen s':>9} {'/raw':>6}")
    for wl in workloads:
        kind, mb = WORKLOADS[wl]
        runs: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
        for _ in range(ns.runs):  # interleaved, so drift affects every method alike
            for m, fn in METHODS.items():
                runs[m].append(_attempt(m, lambda fn=fn, k=kind, n=mb: fn(k, n, data_root_b)))
        med = {m: {k: _median(rs, k) for k in ("downtime", "total", "frozen to running")}
               for m, rs in runs.items()}
        for m in METHODS:
            d, f = med[m]["downtime"], med[m]["frozen to running"]
            print(f"{wl:<10} {m:<9} {d:>11.3f} {med[m]['total']:>9.3f} "
                  f"{d / med['raw CRIU']['downtime']:>6.2f} {d / med['manual']['downtime']:>8.2f}"
                  f" {f:>9.3f} {f / med['raw CRIU']['frozen to running']:>6.2f}")
        for m in ("hmigrate", "direct"):
            hm = runs[m]
            keys = [k for k in hm[0] if k.startswith(("phase ", "criu ", "MB ", "fast "))]
            print(f"{'':<10} {m}: " + ", ".join(f"{k} {_median(hm, k):.3f}" for k in keys))
        rw = runs["raw CRIU"]
        print(f"{'':<10} raw CRIU: " + ", ".join(
            f"{k} {_median(rw, k):.3f}" for k in ("dump wall", "criu frozen", "restore wall",
                                                   "criu restore", "MB written")))
    if ns.ssh:
        ssh_versus_unix(ns.runs)
    if ns.lazy:
        lazy_versus_copy(ns.runs)
    for mb in lazy_sizes:
        lazy_redis(ns.runs, mb)


if __name__ == "__main__":
    main()
