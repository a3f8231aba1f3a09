"""Soak: Redis under a client doing INCR, moved a <-> b N times with live connections.

The client counts a write as acknowledged when Redis replies with the new value; after
every move it reconnects (to whichever host answers) and checks that the counter never
went back: a value lower than the last acknowledged one means acknowledged writes were
lost. The container runs on a user network whose subnet exists on both hosts, so that it
keeps its address and CRIU can restore its established connections. Printed: success
rate, downtime percentiles (the plugin's, and the gap the client saw), acknowledged
writes lost, anything left behind; the baseline is the client's own rate without moves,
measured in the same run.

Run as root with the lab up:   python -m bench.soak [--moves 50] [--redis-mb 0]

Cross-ISA (`--cross-isa N`, needs HMLAB_ARM64=1 lab/up): the toolchain-built helloworld,
a counter printing one numbered line a second, moved x86-64 -> aarch64 -> x86-64 N round
trips. Its lines, gathered from every host it ran on, must count on with no number missing
or repeated (its memory state moved each time, it never restarted). Printed: success
rate, downtime percentiles per direction, the counter's continuity, anything left behind.
"""

from __future__ import annotations

import argparse
import glob
import ipaddress
import json
import os
import random
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.lab import DOCKER_CLI, REDIS_IMAGE, connect, hello_ticks
from tests.support.recode_lab import HELLO
from tests.support.resp import Redis

HOSTS = {"hm-a": "127.0.0.1", "hm-b": "10.77.0.2"}  # where a published port answers


def docker(context: str, *args: str, check: bool = True) -> str:
    proc = subprocess.run([DOCKER_CLI, "--context", context, *args], capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode:
        raise RuntimeError(f"docker {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Client:
    """INCR in a loop against whichever host serves the port; acknowledged writes only."""

    port: int
    acked: int = 0  # the last value Redis acknowledged
    acks: int = 0
    lost: int = 0  # acknowledged writes later missing
    gaps: list[float] = field(default_factory=list)  # seconds without an acknowledgement
    errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conn: Redis | None = None
        last_ack = time.monotonic()
        broken = False
        order = list(HOSTS.values())
        while not self.stop.is_set():
            if conn is None:
                for addr in order:
                    try:
                        conn = Redis(addr, self.port, timeout=1.0)
                        order.sort(key=lambda a, first=addr: a != first)
                        break
                    except OSError:
                        conn = None
                if conn is None:
                    time.sleep(0.02)
                    continue
            try:
                value = conn.call("INCR", "soak:counter")
            except (OSError, ConnectionError, RuntimeError):
                self.errors += 1
                broken = True
                with _quiet():
                    conn.close()
                conn = None
                continue
            now = time.monotonic()
            if value <= self.acked:  # the counter went back: those acks are gone
                self.lost += self.acked - value + 1
            if broken:
                self.gaps.append(now - last_ack)
                broken = False
            self.acked, self.acks, last_ack = value, self.acks + 1, now
        if conn is not None:
            with _quiet():
                conn.close()


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


def free_subnet() -> str:
    """A /24 that no network on either host uses."""
    used = []
    for ctx in HOSTS:
        for net_id in docker(ctx, "network", "ls", "-q").split():
            info = json.loads(docker(ctx, "network", "inspect", net_id))[0]
            used += [ipaddress.ip_network(c["Subnet"]) for c in
                     (info.get("IPAM") or {}).get("Config") or [] if c.get("Subnet")]
    for _ in range(200):
        cand = ipaddress.ip_network(f"172.{random.randint(20, 30)}.{random.randint(0, 255)}.0/24")
        if not any(cand.overlaps(u) for u in used):
            return str(cand)
    raise RuntimeError("no free /24 in 172.20-30")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def leftovers(name: str, ids: set[str], checkpoints: list[str]) -> list[str]:
    """Anything of these migrations still on either host (scoped to them)."""
    found = []
    for ctx in HOSTS:
        for ck in checkpoints:
            out = docker(ctx, "ps", "-aq", "--filter", f"label=org.hmigrate.migration={ck}")
            found += [f"{ctx}: helper {c}" for c in out.split()]
        for cid in ids:
            out = docker(ctx, "ps", "-aq", "--filter", f"name=hmigrate-lock-{cid[:32]}")
            found += [f"{ctx}: lock {c}" for c in out.split()]
        if docker(ctx, "ps", "-aq", "--filter", f"name=^{name}$").strip():
            cks = docker(ctx, "checkpoint", "ls", name, check=False).split()[2:]
            found += [f"{ctx}: checkpoint {c}" for c in cks]
    for d in glob.glob("/tmp/ctrd-checkpoint*"):  # the lab's hosts share this /tmp
        for f in glob.glob(f"{d}/mountpoints-*.img"):
            try:
                data = Path(f).read_bytes()
            except OSError:  # another user's copy, removed meanwhile
                continue
            if any(cid.encode() in data for cid in ids):
                found.append(f"staging copy {d}")
                break
    return found


def soak(moves: int, redis_mb: int = 0, baseline_seconds: float = 5.0,
         verbose: bool = True) -> dict:
    connect("a"), connect("b")  # skips/fails clearly when the lab is down
    tag = uuid.uuid4().hex[:6]
    name, net = f"soak-redis-{tag}", f"soak-net-{tag}"
    port = random.randint(20000, 29999)
    subnet = free_subnet()
    for ctx in HOSTS:  # the same subnet on both hosts: the container keeps its address
        docker(ctx, "network", "create", "--subnet", subnet, net)
    ids: set[str] = set()
    checkpoints: list[str] = []
    rows: list[dict] = []
    client = Client(port)
    try:
        docker("hm-a", "run", "-d", "--name", name, "--network", net, "-p",
               f"{port}:6379", REDIS_IMAGE, "redis-server", "--save", "", "--appendonly",
               "no", "--protected-mode", "no", "--enable-debug-command", "yes")
        ids.add(docker("hm-a", "inspect", "-f", "{{.Id}}", name).strip())
        deadline = time.monotonic() + 30
        while True:
            try:
                r = Redis(HOSTS["hm-a"], port)
                r.call("PING")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if redis_mb:
            r.call("DEBUG", "POPULATE", redis_mb * 1024, "key", 1024)
        r.close()
        worker = threading.Thread(target=client.run, daemon=True)
        worker.start()
        time.sleep(baseline_seconds)  # the baseline: INCRs acknowledged without moves
        baseline_rate = client.acks / baseline_seconds
        here, there = "hm-a", "hm-b"
        for i in range(moves):
            acks_before = client.acks
            t0 = time.monotonic()
            proc = subprocess.run(
                [DOCKER_CLI, "--context", here, "hmigrate", "migrate", name, "--to", there,
                 "--json"], capture_output=True, text=True, timeout=600)
            try:
                doc = json.loads(proc.stdout)
            except json.JSONDecodeError:
                doc = {"error": {"message": proc.stderr.strip()[-300:]}}
            if doc.get("checkpoint"):
                checkpoints.append(doc["checkpoint"])
            ok = proc.returncode == 0
            row = {"move": i + 1, "from": here, "to": there, "exit": proc.returncode,
                   "downtime": doc.get("downtime_seconds"),
                   "total": round(time.monotonic() - t0, 3),
                   "error": None if ok else (doc.get("error") or {}).get("message")}
            # wait for the client to be served again before the next move
            wait = time.monotonic() + 30
            while client.acks <= acks_before + 10 and time.monotonic() < wait:
                time.sleep(0.05)
            rows.append(row)
            if verbose:
                print(f"move {i + 1:3d} {here} -> {there}: exit {proc.returncode} downtime "
                      f"{row['downtime']} s  acked={client.acked} lost={client.lost}"
                      + (f"  ERROR {row['error']}" if row["error"] else ""), flush=True)
            if ok:
                ids.add(docker(there, "inspect", "-f", "{{.Id}}", name).strip())
                here, there = there, here
        time.sleep(1)
        client.stop.set()
        worker.join(timeout=10)
        final = Redis(HOSTS[here], port)
        value = int(final.call("GET", "soak:counter"))
        final.close()
        left = leftovers(name, ids, checkpoints)
    finally:
        client.stop.set()
        for ctx in HOSTS:
            docker(ctx, "rm", "-f", name, check=False)
            docker(ctx, "network", "rm", net, check=False)
    ok_rows = [r for r in rows if r["exit"] == 0]
    downs = [r["downtime"] for r in ok_rows if r["downtime"] is not None]
    return {
        "moves": moves, "succeeded": len(ok_rows),
        "success_rate": len(ok_rows) / moves if moves else 0.0,
        "downtime_p50": percentile(downs, 50), "downtime_p90": percentile(downs, 90),
        "downtime_p99": percentile(downs, 99), "downtime_max": max(downs, default=float("nan")),
        "client_gap_p50": percentile(client.gaps, 50),
        "client_gap_p90": percentile(client.gaps, 90),
        "client_gap_max": max(client.gaps, default=float("nan")),
        "acked_writes": client.acks, "last_acked": client.acked, "final_value": value,
        "acked_writes_lost": client.lost + max(0, client.acked - value),
        "baseline_incr_per_s": round(baseline_rate, 1),
        "leftovers": left, "failures": [r for r in rows if r["exit"] != 0],
    }


def soak_cross_isa(round_trips: int, verbose: bool = True) -> dict:
    """helloworld moved hm-a <-> hm-arm; each source is kept (stopped) until its lines are
    read, so the record of what the counter printed has no hole of our own making."""
    name = f"soak-x-{uuid.uuid4().hex[:6]}"
    docker("hm-a", "pull", "-q", HELLO)
    docker("hm-a", "run", "-d", "--name", name, "--security-opt", "seccomp=unconfined", HELLO)
    deadline = time.monotonic() + 60
    while len(hello_ticks(docker("hm-a", "logs", name))) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError("helloworld does not count on hm-a")
        time.sleep(0.5)
    ticks: list[int] = []
    rows: list[dict] = []
    checkpoints: list[str] = []
    here = "hm-a"
    try:
        for i in range(2 * round_trips):
            there = "hm-arm" if here == "hm-a" else "hm-a"
            t0 = time.monotonic()
            proc = subprocess.run([DOCKER_CLI, "--context", here, "hmigrate", "migrate", name,
                                   "--to", there, "--keep-source", "--json"],
                                  capture_output=True, text=True, timeout=1800)
            try:
                doc = json.loads(proc.stdout)
            except json.JSONDecodeError:
                doc = {}
            checkpoints.append(doc.get("checkpoint", ""))
            row = {"move": i + 1, "from": here, "to": there, "exit": proc.returncode,
                   "downtime": doc.get("downtime_seconds"),
                   "total": round(time.monotonic() - t0, 2),
                   "error": (doc.get("error") or {}).get("message", proc.stderr[-300:])}
            rows.append(row)
            if verbose:
                print(f"move {i + 1:3d} {here:>6} -> {there:<6} exit {proc.returncode}  "
                      f"downtime {row['downtime']}  total {row['total']}s", flush=True)
            if proc.returncode != 0:
                break  # the source runs on (checked below); a soak stops at the first failure
            ticks += hello_ticks(docker(here, "logs", name))
            docker(here, "rm", "-f", name)
            here = there
        time.sleep(3)
        ticks += hello_ticks(docker(here, "logs", name))
    finally:
        for ctx in ("hm-a", "hm-arm"):
            docker(ctx, "rm", "-f", name, check=False)
    expected = list(range(ticks[0], ticks[0] + len(ticks))) if ticks else []
    gaps = [(a, b) for a, b in zip(ticks, ticks[1:], strict=False) if b != a + 1]
    left = []
    for ctx in ("hm-a", "hm-arm"):
        for ck in filter(None, checkpoints):
            out = docker(ctx, "ps", "-aq", "--filter", f"label=org.hmigrate.migration={ck}")
            left += [f"{ctx}: helper {c}" for c in out.split()]
            left += [f"{ctx}: template {c}" for c in docker(
                ctx, "ps", "-aq", "--filter", f"name=hmigrate-template-{ck}").split()]
    ok = [r for r in rows if r["exit"] == 0]
    out_dt = [r["downtime"] for r in ok if r["from"] == "hm-a" and r["downtime"] is not None]
    back_dt = [r["downtime"] for r in ok if r["from"] == "hm-arm" and r["downtime"] is not None]
    return {
        "round_trips": round_trips, "moves": len(rows), "succeeded": len(ok),
        "success_rate": len(ok) / max(1, 2 * round_trips),
        "downtime_to_aarch64_p50": percentile(out_dt, 50),
        "downtime_to_aarch64_max": max(out_dt, default=float("nan")),
        "downtime_to_x86_64_p50": percentile(back_dt, 50),
        "downtime_to_x86_64_max": max(back_dt, default=float("nan")),
        "lines": len(ticks), "continuous": ticks == expected, "gaps": gaps[:10],
        "leftovers": left, "failures": [r for r in rows if r["exit"] != 0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moves", type=int, default=50)
    ap.add_argument("--redis-mb", type=int, default=0, help="data loaded before the moves")
    ap.add_argument("--cross-isa", type=int, default=0, metavar="N",
                    help="instead: N round trips x86-64 <-> aarch64 of helloworld")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the lab's daemons are root's)")
    if args.cross_isa:
        res = soak_cross_isa(args.cross_isa)
        print(json.dumps(res, indent=2) if args.json else "\n".join(
            f"{k:24} {v}" for k, v in res.items()))
        return
    res = soak(args.moves, args.redis_mb)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print()
    print(f"moves                 {res['succeeded']}/{res['moves']} succeeded "
          f"({res['success_rate']:.0%})")
    print(f"downtime (plugin)     p50 {res['downtime_p50']:.3f} s  p90 "
          f"{res['downtime_p90']:.3f} s  p99 {res['downtime_p99']:.3f} s  max "
          f"{res['downtime_max']:.3f} s")
    print(f"client gap            p50 {res['client_gap_p50']:.3f} s  p90 "
          f"{res['client_gap_p90']:.3f} s  max {res['client_gap_max']:.3f} s")
    print(f"acknowledged writes   {res['acked_writes']} (last {res['last_acked']}, final "
          f"value {res['final_value']}), lost {res['acked_writes_lost']}")
    print(f"baseline              {res['baseline_incr_per_s']} INCR/s acknowledged without "
          "moves")
    print(f"left behind           {', '.join(res['leftovers']) or 'nothing'}")
    for f in res["failures"]:
        print(f"failed move {f['move']} {f['from']} -> {f['to']}: exit {f['exit']}: "
              f"{f['error']}")


if __name__ == "__main__":
    main()
