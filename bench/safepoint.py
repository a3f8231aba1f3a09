"""Benchmark: what the stack check before the freeze adds to the park phase, in one run.

    python -m bench.safepoint [--hosts hm-a,hm-arm] [--images helloworld,examples/threads]
                              [--runs 5] [--prefix hmigrate]

On each host, a toolchain-built example in a container; per run, interleaved:
1. park only (park.park_all, then the withdrawal): the baseline, what a move waited
   before the check existed;
2. park, the stacks read by a probe container, checked (safepoint.read_parked +
   recode/livecheck.py);
3. the same with the stacks read by an exec in a helper made beforehand (what a move
   does: the helper is made in the background while the hosts are validated).
Prints medians of park time, of the reading and of the check, and each way's ratio to the
park alone. The aarch64 host is emulated (qemu TCG): its figures are emulation's.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from docker_hmigrate import fastpath, hosts, park, safepoint
from docker_hmigrate.engine import Host
from docker_hmigrate.recode import livecheck
from tests.support.lab import REGISTRY
from tests.support.recode_lab import program_of_image


def open_host(context: str) -> Host:
    return Host(context, hosts.connect(hosts.resolve_target(context, hosts.GlobalOptions())))


def one(host: Host, cid: str, program, dst: str, reader) -> tuple[float, float, float]:
    """(park, read, check) seconds of one park; read/check 0 for the park alone."""
    proto = program.park_protocol
    t0 = time.monotonic()
    parked = park.park_all(host, cid, proto)
    t1 = time.monotonic()
    read = check = 0.0
    try:
        if reader is not False:
            threads = safepoint.read_parked(host, cid, proto, parked, reader)
            t2 = time.monotonic()
            why = livecheck.problem(program, host.isa, dst, threads)
            check = time.monotonic() - t2
            read = t2 - t1
            if why is not None:
                print(f"    (not translatable here: {why})")
    finally:
        park.withdraw(host, cid, proto)
    return t1 - t0, read, check


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", default="hm-a,hm-arm")
    ap.add_argument("--images", default="helloworld,examples/threads")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--prefix", default="hmigrate",
                    help="the registry folder of the images (lab/examples' HMLAB_EXAMPLES_PREFIX)")
    ns = ap.parse_args(argv)
    rows = []
    for context in ns.hosts.split(","):
        host = open_host(context)
        dst = "aarch64" if host.isa == "x86-64" else "x86-64"
        agent = fastpath.Agent(host)
        agent.start()
        try:
            for image in ns.images.split(","):
                ref = f"{REGISTRY}/{ns.prefix}/{image}:latest"
                host.client.images.pull(ref, platform=host.platform)
                program = program_of_image(host.client, ref)
                c = host.client.containers.run(
                    ref, name=f"bench-safepoint-{uuid.uuid4().hex[:6]}", detach=True,
                    security_opt=["seccomp=unconfined"])
                try:
                    time.sleep(3)
                    got: dict[str, list[tuple[float, float, float]]] = {
                        "park only": [], "probe": [], "helper exec": []}
                    for _ in range(ns.runs):
                        for way, reader in (("park only", False), ("probe", None),
                                            ("helper exec", agent)):
                            got[way].append(one(host, c.id, program, dst, reader))
                            time.sleep(0.5)
                    base = statistics.median(p for p, _, _ in got["park only"])
                    for way, runs in got.items():
                        total = statistics.median(p + r + k for p, r, k in runs)
                        rows.append((context, image, way,
                                     statistics.median(p for p, _, _ in runs),
                                     statistics.median(r for _, r, _ in runs),
                                     statistics.median(k for _, _, k in runs), total,
                                     total / base if base else 0.0))
                finally:
                    c.remove(force=True)
        finally:
            agent.close()
    print(f"\n$ python -m bench.safepoint --hosts {ns.hosts} --images {ns.images} "
          f"--runs {ns.runs} --prefix {ns.prefix}   (medians, seconds)")
    print("host | image | way | park | read | check | total | x park only")
    print("--- | --- | --- | --- | --- | --- | --- | ---")
    for ctx, image, way, p, r, k, t, x in rows:
        print(f"{ctx} | {image} | {way} | {p:.3f} | {r:.3f} | {k:.3f} | {t:.3f} | {x:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
