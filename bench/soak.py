"""Soak: Redis under a client doing INCR, moved a <-> b N times with live connections.

The client counts a write as acknowledged when Redis replies with the new value; after
every move it reconnects (to whichever host answers) and checks that the counter never
went back: a value lower than the last acknowledged one means acknowledged writes were
lost. The container runs on a user network whose subnet exists on both hosts, so that it
keeps its address and CRIU can restore its established connections. Printed: success
rate, downtime percentiles (the plugin's, and the gap the client saw), acknowledged
writes lost, anything left behind; the baseline is the client's own rate without moves,
measured in the same run.

Run as root with the lab up:   python -m bench.soak [--moves 50] [--redis-mb 0] [--direct]
(`--direct`: every move with `migrate --direct`, the pages host to host.)

Cross-ISA (`--cross-isa N`, needs HMLAB_ARM64=1 lab/up): the hmigrate-cc Redis under the
same client, moved x86-64 (hm-a) -> aarch64 (hm-arm) -> x86-64 N round trips; on the
emulated host the client reaches it through a relay (ArmRelay). Printed: round trips,
downtime per direction, the client's gaps, acknowledged writes lost, anything left behind
(helpers, templates, locks, checkpoints, containerd's staging copies on both hosts).

`--cross-isa N --app helloworld`: the toolchain-built helloworld,
a counter printing one numbered line a second, moved x86-64 -> aarch64 -> x86-64 N round
trips. Its lines, gathered from every host it ran on, must count on with no number missing
or repeated (its memory state moved each time, it never restarted). Printed: success
rate, downtime percentiles per direction, the counter's continuity, anything left behind.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.lab import (
    ARM_CONTEXT as ARM,
)
from tests.support.lab import (
    ARM_IMAGE,
    DOCKER_CLI,
    REDIS_IMAGE,
    REGISTRY,
    connect,
    hello_ticks,
    staging_copies,
)
from tests.support.recode_lab import HELLO
from tests.support.resp import Redis

HOSTS = {"hm-a": "127.0.0.1", "hm-b": "10.77.0.2"}  # where a published port answers
MULTI_REDIS = f"{REGISTRY}/hmigrate/redis:latest"  # built by hmigrate-cc: x86-64 and aarch64


def docker(context: str, *args: str, check: bool = True) -> str:
    proc = subprocess.run([DOCKER_CLI, "--context", context, *args], capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode:
        raise RuntimeError(f"docker {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Client:
    """INCR in a loop against whichever endpoint serves; acknowledged writes only.

    An endpoint is a function that returns a connected client or raises OSError; the one
    that served last is tried first."""

    endpoints: list[Callable[[], Redis]]
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
        order = list(self.endpoints)
        while not self.stop.is_set():
            if conn is None:
                for endpoint in order:
                    try:
                        conn = endpoint()
                        order.sort(key=lambda e, first=endpoint: e is not first)
                        break
                    except OSError:
                        conn = None
                if conn is None:
                    time.sleep(0.02)
                    continue
            try:
                value = conn.call("INCR", "soak:counter")
            except (OSError, ConnectionError, RuntimeError, ValueError):
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


MOVE_OPTIONS: list[str] = []  # given to every same-ISA move (--direct)


def migrate(name: str, here: str, there: str, *extra: str,
            timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    """One `docker hmigrate migrate --json` and its document (or the error it printed)."""
    proc = subprocess.run([DOCKER_CLI, "--context", here, "hmigrate", "migrate", name,
                           "--to", there, *extra, "--json"],
                          capture_output=True, text=True, timeout=timeout)
    try:
        return proc, json.loads(proc.stdout)
    except json.JSONDecodeError:
        return proc, {"error": {"message": proc.stderr.strip()[-300:]}}


def soak_move(number: int, name: str, here: str, there: str, client: Client,
              checkpoints: list[str], ids: set[str], timeout: float,
              served_within: float) -> dict:
    """One move under the client's writes: its row (exit, downtime, total, restore phase,
    error), then the client served again (by whichever host) within `served_within`
    seconds. The checkpoint and the target's container id are recorded for the
    leftovers check."""
    acks_before = client.acks
    t0 = time.monotonic()
    proc, doc = migrate(name, here, there, *MOVE_OPTIONS, timeout=timeout)
    if doc.get("checkpoint"):
        checkpoints.append(doc["checkpoint"])
    ok = proc.returncode == 0
    phases = {p["name"]: p.get("seconds") for p in doc.get("phases") or []}
    row = {"move": number, "from": here, "to": there, "exit": proc.returncode,
           "downtime": doc.get("downtime_seconds"),
           "total": round(time.monotonic() - t0, 3),
           "restore": phases.get("restore"),
           "error": None if ok else (doc.get("error") or {}).get("message")}
    if ok:
        ids.add(docker(there, "inspect", "-f", "{{.Id}}", name).strip())
    wait = time.monotonic() + served_within
    while client.acks <= acks_before + 10 and time.monotonic() < wait:
        time.sleep(0.05)
    row["served_again"] = client.acks > acks_before + 10
    return row


def published(address: str, port: int, timeout: float = 1.0) -> Callable[[], Redis]:
    return lambda: Redis(address, port, timeout=timeout)


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


def free_subnet(contexts=tuple(HOSTS)) -> str:
    """A /24 that no network on any of these hosts uses."""
    used = []
    for ctx in contexts:
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


def leftovers(name: str, ids: set[str], checkpoints: list[str],
              contexts=tuple(HOSTS)) -> list[str]:
    """Anything of these migrations still on either host (scoped to them)."""
    found = []
    for ctx in contexts:
        for ck in filter(None, checkpoints):
            out = docker(ctx, "ps", "-aq", "--filter", f"label=org.hmigrate.migration={ck}")
            found += [f"{ctx}: helper {c}" for c in out.split()]
            found += [f"{ctx}: template {c}" for c in docker(
                ctx, "ps", "-aq", "--filter", f"name=hmigrate-template-{ck}").split()]
        for cid in ids:
            out = docker(ctx, "ps", "-aq", "--filter", f"name=hmigrate-lock-{cid[:32]}")
            found += [f"{ctx}: lock {c}" for c in out.split()]
        if docker(ctx, "ps", "-aq", "--filter", f"name=^{name}$").strip():
            cks = docker(ctx, "checkpoint", "ls", name, check=False).split()[2:]
            found += [f"{ctx}: checkpoint {c}" for c in cks]
    found += [f"staging copy {d}" for d in staging_copies(*ids)]  # hosts a, b share /tmp
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
    client = Client([published(addr, port) for addr in HOSTS.values()])
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
            row = soak_move(i + 1, name, here, there, client, checkpoints, ids,
                            timeout=600, served_within=30)
            rows.append(row)
            if verbose:
                print(f"move {i + 1:3d} {here} -> {there}: exit {row['exit']} downtime "
                      f"{row['downtime']} s  acked={client.acked} lost={client.lost}"
                      + (f"  ERROR {row['error']}" if row["error"] else ""), flush=True)
            if row["exit"] == 0:
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


class ArmRelay:
    """Redis on the aarch64 host, reached from here.

    The VM forwards only its engine's port, but its guest reaches this machine's loopback
    as 10.0.2.2: a relay container there (host network, so it never takes an address the
    moving container needs on the user network) dials a listener here and pipes each
    connection to Redis's address, one connection at a time, again and again. busybox nc
    exits when either side closes, so a client that drops a connection frees the relay;
    while Redis is elsewhere the relay's connections close at once (the client counts
    them as errors and moves on)."""

    def __init__(self, name: str, address: str, image: str = ARM_IMAGE):
        self.name, self.address, self.image = name, address, image
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(1.0)
        self.port = self.listener.getsockname()[1]

    def start(self) -> None:
        docker(ARM, "run", "-d", "--name", self.name, "--network", "host", self.image, "sh",
               "-c", f"while :; do nc 10.0.2.2 {self.port} -e nc {self.address} 6379; "
               "sleep 1; done")

    def connect(self) -> Redis:
        conn, _ = self.listener.accept()  # socket.timeout is an OSError: next endpoint
        return Redis.over(conn, timeout=10.0)

    def close(self) -> None:
        docker(ARM, "rm", "-f", self.name, check=False)
        self.listener.close()


def arm_staging_copies(ids: set[str]) -> list[str]:
    """containerd's staging copies of these containers' checkpoints inside the aarch64
    guest (its /tmp is its own), looked for by a short-lived container."""
    pattern = "\\|".join(cid[:64] for cid in ids)
    out = docker(ARM, "run", "--rm", "-v", "/tmp:/host-tmp:ro", ARM_IMAGE, "sh", "-c",
                 f"grep -l '{pattern}' /host-tmp/ctrd-checkpoint*/mountpoints-*.img "
                 "2>/dev/null; true", check=False)
    return [f"{ARM}: staging copy {Path(f).parent.name}" for f in out.split()]


def final_value(endpoint: Callable[[], Redis], timeout: float = 120) -> int:
    """The counter as the server that runs it says, once the client has stopped (the
    relay on the emulated host takes seconds to dial again after the client's last
    connection closed)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = endpoint()
            try:
                return int(conn.call("GET", "soak:counter"))
            finally:
                with _quiet():
                    conn.close()
        except (OSError, ConnectionError, RuntimeError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def soak_cross_isa_redis(round_trips: int, baseline_seconds: float = 5.0,
                         verbose: bool = True, stop_after: float = 0) -> dict:
    """Redis built by hmigrate-cc, under acknowledged INCRs, moved x86-64 (hm-a) ->
    aarch64 (hm-arm) -> x86-64 `round_trips` times; acknowledged writes counted exactly as
    in the same-ISA soak (the client reconnects to whichever host serves). `stop_after`
    (seconds, 0: none): no round trip starts after that long (the result says how many
    were done)."""
    contexts = ("hm-a", ARM)
    tag = uuid.uuid4().hex[:6]
    name, net = f"soak-xredis-{tag}", f"soak-xnet-{tag}"
    port = random.randint(20000, 29999)
    subnet = free_subnet(contexts)
    address = str(next(ipaddress.ip_network(subnet).hosts()) + 9)  # fixed: relay knows it
    for ctx in contexts:  # the same subnet on both hosts: the container keeps its address
        docker(ctx, "network", "create", "--subnet", subnet, net)
    relay = ArmRelay(f"soak-xrelay-{tag}", address)
    ids: set[str] = set()
    checkpoints: list[str] = []
    rows: list[dict] = []
    client = Client([published(HOSTS["hm-a"], port), relay.connect])
    value = 0
    stopped = ""
    try:
        docker("hm-a", "pull", "-q", MULTI_REDIS)
        docker("hm-a", "run", "-d", "--name", name, "--network", net, "--ip", address,
               "--security-opt", "seccomp=unconfined", "-p", f"{port}:6379", MULTI_REDIS)
        ids.add(docker("hm-a", "inspect", "-f", "{{.Id}}", name).strip())
        relay.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                r = Redis(HOSTS["hm-a"], port)
                r.call("PING")
                r.close()
                break
            except (OSError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        worker = threading.Thread(target=client.run, daemon=True)
        worker.start()
        time.sleep(baseline_seconds)  # the baseline: INCRs acknowledged without moves
        baseline_rate = client.acks / baseline_seconds
        here = "hm-a"
        started = time.monotonic()
        for i in range(2 * round_trips):
            there = ARM if here == "hm-a" else "hm-a"
            if there == ARM and stop_after and time.monotonic() - started > stop_after:
                stopped = f"time limit: no round trip started after {stop_after / 60:g} min"
                break
            row = soak_move(i + 1, name, here, there, client, checkpoints, ids,
                            timeout=1800, served_within=180)
            ok = row["exit"] == 0
            if ok:
                here = there
            rows.append(row)
            if verbose:
                print(f"move {i + 1:3d} {row['from']:>6} -> {row['to']:<6} exit "
                      f"{row['exit']}  downtime {row['downtime']} s  total {row['total']} s"
                      f"  acked={client.acked} lost={client.lost}"
                      + (f"  ERROR {row['error']}" if row["error"] else ""), flush=True)
            if not ok:
                break  # the source runs on (the client says so); the soak stops here
        time.sleep(2)
        client.stop.set()
        worker.join(timeout=30)
        value = final_value(client.endpoints[0] if here == "hm-a" else relay.connect)
        left = leftovers(name, ids, checkpoints, contexts) + arm_staging_copies(ids)
    finally:
        client.stop.set()
        relay.close()
        for ctx in contexts:
            docker(ctx, "rm", "-f", name, check=False)
            docker(ctx, "network", "rm", net, check=False)
    ok_rows = [r for r in rows if r["exit"] == 0]
    to_arm = [r["downtime"] for r in ok_rows if r["to"] == ARM and r["downtime"] is not None]
    to_x86 = [r["downtime"] for r in ok_rows if r["to"] != ARM and r["downtime"] is not None]
    return {
        "round_trips": round_trips, "moves": len(rows), "succeeded": len(ok_rows),
        "round_trips_done": sum(1 for r in ok_rows if r["to"] == "hm-a"),
        "round_trips_tried": sum(1 for r in rows if r["to"] == ARM),
        "success_rate": len(ok_rows) / max(1, len(rows)), "stopped": stopped,
        "downtime_to_aarch64": [percentile(to_arm, q) for q in (50, 90)]
        + [max(to_arm, default=float("nan"))],
        "downtime_to_x86_64": [percentile(to_x86, q) for q in (50, 90)]
        + [max(to_x86, default=float("nan"))],
        "total_p50": percentile([r["total"] for r in ok_rows], 50),
        "client_gap_p50": percentile(client.gaps, 50),
        "client_gap_p90": percentile(client.gaps, 90),
        "client_gap_max": max(client.gaps, default=float("nan")),
        "acked_writes": client.acks, "last_acked": client.acked, "final_value": value,
        "acked_writes_lost": client.lost + max(0, client.acked - value),
        "baseline_incr_per_s": round(baseline_rate, 1),
        "leftovers": left, "failures": [r for r in rows if r["exit"] != 0], "rows": rows,
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
            proc, doc = migrate(name, here, there, "--keep-source", timeout=1800)
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


def print_cross_isa_redis(res: dict) -> None:
    def trio(v: list[float]) -> str:
        return f"p50 {v[0]:.2f} s  p90 {v[1]:.2f} s  max {v[2]:.2f} s"

    print()
    print(f"round trips           {res['round_trips_done']}/{res['round_trips_tried']} "
          f"succeeded (moves {res['succeeded']}/{res['moves']}, {res['success_rate']:.0%}); "
          f"{res['round_trips']} asked" + (f", {res['stopped']}" if res["stopped"] else ""))
    print(f"downtime -> aarch64   {trio(res['downtime_to_aarch64'])}")
    print(f"downtime -> x86-64    {trio(res['downtime_to_x86_64'])}")
    print(f"move (whole command)  p50 {res['total_p50']:.1f} s")
    print(f"client gap            p50 {res['client_gap_p50']:.2f} s  p90 "
          f"{res['client_gap_p90']:.2f} s  max {res['client_gap_max']:.2f} s")
    print(f"acknowledged writes   {res['acked_writes']} (last {res['last_acked']}, final "
          f"value {res['final_value']}), lost {res['acked_writes_lost']}")
    print(f"baseline              {res['baseline_incr_per_s']} INCR/s acknowledged without "
          "moves (x86-64)")
    print(f"left behind           {', '.join(res['leftovers']) or 'nothing'}")
    for f in res["failures"]:
        print(f"failed move {f['move']} {f['from']} -> {f['to']}: exit {f['exit']}: "
              f"{f['error']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moves", type=int, default=50)
    ap.add_argument("--redis-mb", type=int, default=0, help="data loaded before the moves")
    ap.add_argument("--cross-isa", type=int, default=0, metavar="N",
                    help="instead: N round trips x86-64 <-> aarch64")
    ap.add_argument("--app", choices=("redis", "helloworld"), default="redis",
                    help="what --cross-isa moves (default redis)")
    ap.add_argument("--stop-after", type=float, default=0, metavar="MIN",
                    help="--cross-isa: start no round trip after MIN minutes")
    ap.add_argument("--direct", action="store_true",
                    help="the a <-> b moves with `migrate --direct` (pages host to host)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.direct:
        MOVE_OPTIONS.append("--direct")
    if os.geteuid() != 0:
        raise SystemExit("run as root (the lab's daemons are root's)")
    if args.cross_isa and args.app == "redis":
        res = soak_cross_isa_redis(args.cross_isa, stop_after=args.stop_after * 60)
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            print_cross_isa_redis(res)
        return
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
