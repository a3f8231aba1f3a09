"""Migrations on cgroup v2 hosts with a current Docker Engine: the lab's host c (lab/hostc)
and the aarch64 host on cgroup v2, hm-arm2 (HM_ARM_CGROUP=2 lab/arm64/up).

Host c is an x86-64 VM with cgroup v2 only and Debian trixie's docker.io/containerd/runc
and sid's CRIU; it runs two daemons, hm-c and hm-c2 (the second in its own network
namespace and data root), like hosts a and b on the lab machine. hm-arm2 is a second
aarch64 VM beside hm-arm, booted with cgroup v2 only. Opt-in: skipped unless
HMLAB_CGROUP2=1 (`sudo HMLAB_CGROUP2=1 lab/up` brings host c up); the cross-ISA tests also
need HMLAB_ARM64=1 (`sudo HMLAB_CGROUP2=1 HMLAB_ARM64=1 lab/up`). Both VMs run under TCG
here: the same-ISA tests take minutes, the cross-ISA ones tens of minutes (phase times in
docs/support-matrix.md).
"""

from __future__ import annotations

import hashlib

import pytest

from tests.support.lab import (
    ARM64_HOSTS,
    ARM_IMAGE,
    BASE_IMAGE,
    COUNTER_CMD,
    REGISTRY,
    LabHost,
    counter_values,
    exists,
    hello_ticks,
    migrate_json,
    unique,
    wait_until,
)
from tests.support.resp import Redis

pytestmark = [pytest.mark.lab, pytest.mark.cgroup2]

# The project's Redis (redis/Dockerfile, multi-ISA, ~8 MB), pushed by lab/examples.
REDIS_MULTI = f"{REGISTRY}/hmigrate/redis:latest"


def _assert_counter_continues(host: LabHost, name: str, after: int) -> None:
    wait_until(lambda: len(counter_values(host.logs(name))) >= 2, what=f"counter on {host.name}")
    values = counter_values(host.logs(name))
    # Restored, not restarted: it starts past the last value the source printed, and
    # counts on without a gap or a repeat.
    assert values[0] >= after and 0 not in values, values
    assert values == list(range(values[0], values[0] + len(values))), values


def test_host_c_is_cgroup_v2_only(host_c, host_c2):
    for host in (host_c, host_c2):
        info = host.client.info()
        assert info["CgroupVersion"] == "2", (host.name, info["CgroupVersion"])
        assert info["ExperimentalBuild"] is True
    # No v1 hierarchy is mounted in the VM (the kernel runs with cgroup_no_v1=all).
    mounts = host_c.docker("run", "--rm", "--pid=host", BASE_IMAGE, "cat", "/proc/1/mounts")
    kinds = {line.split()[2] for line in mounts.splitlines() if "cgroup" in line.split()[2]}
    assert kinds == {"cgroup2"}, mounts
    assert host_c.client.info()["ID"] != host_c2.client.info()["ID"]


def test_counter_moves_between_v2_daemons(host_c, host_c2, cleanup_on):
    name = unique("c2-counter")
    cleanup_on += [(host_c, name), (host_c2, name)]
    host_c.docker("run", "-d", "--name", name, "--label", "hm.test=cgroup2", BASE_IMAGE,
                  *COUNTER_CMD)
    wait_until(lambda: len(counter_values(host_c.logs(name))) >= 3, what="counter on c")

    proc, doc = migrate_json(name, "--to", "hm-c2", context="hm-c")
    assert proc.returncode == 0, proc.stderr
    assert doc["ok"] is True and doc["target"] == "hm-c2"
    assert not exists(host_c, name), "the source must be gone after a migration"
    assert host_c2.client.containers.get(name).status == "running"
    _assert_counter_continues(host_c2, name, after=3)
    assert host_c2.client.containers.get(name).attrs["Config"]["Labels"]["hm.test"] == "cgroup2"


def _helper(host: LabHost) -> str:
    """A busybox image of the host's ISA: host c pulls hmlab/busybox, lab/arm64/up imports
    Debian's arm64 busybox-static."""
    return ARM_IMAGE if host.name in ARM64_HOSTS else BASE_IMAGE


def _redis(host: LabHost, name: str, *args: str) -> str:
    """One command to the Redis in container `name`, through busybox nc in its network
    namespace (published ports of host c are inside the VM): the reply's value.

    run -d + wait + logs: an attached `docker run` of a short container sometimes returns
    without its output on these daemons (docs/cgroup2-hosts.md).
    """
    payload = Redis.encode(*args).decode()
    cid = host.docker("run", "-d", "--network", f"container:{name}", _helper(host), "sh", "-c",
                      'printf "%s" "$1" | nc -w 5 127.0.0.1 6379', "sh", payload).strip()
    try:
        host.docker("wait", cid, timeout=180)
        out = host.client.containers.get(cid).logs(stdout=True, stderr=False)
    finally:
        host.docker("rm", "-f", cid, check=False)
    lines = out.split(b"\r\n")
    head = lines[0].decode(errors="replace")
    if head and head[0] in "+:":
        return head[1:]
    if head.startswith("$") and len(lines) > 1:
        return lines[1].decode()
    raise AssertionError(f"no Redis reply from {name} on {host.name}: {out[:200]!r}")


@pytest.mark.slow
def test_redis_moves_between_v2_daemons(host_c, host_c2, cleanup_on):
    """The project's Redis (multi-ISA image from the lab registry) with 2000 keys of several
    lengths: every value is on the target, byte for byte (a SHA-1 over all of them)."""
    host_c.docker("pull", "-q", REDIS_MULTI, timeout=600)
    name = unique("c2-redis")
    cleanup_on += [(host_c, name), (host_c2, name)]
    host_c.docker("run", "-d", "--name", name, REDIS_MULTI)
    wait_until(lambda: _try(lambda: _redis(host_c, name, "PING")) == "PONG", timeout=120,
               what="redis on c")
    n = 2000
    values = [f"value-{i}-" + "x" * (i % 50) for i in range(1, n + 1)]
    # Written and digested by the server itself (one round trip each).
    fill = ("for i=1,tonumber(ARGV[1]) do "
            "redis.call('SET','key:'..i,'value-'..i..'-'..string.rep('x', i % 50)) end "
            "return redis.call('DBSIZE')")
    digest = ("local t={} for i=1,tonumber(ARGV[1]) do t[i]=redis.call('GET','key:'..i) end "
              "return redis.sha1hex(table.concat(t, '\\n'))")
    assert _redis(host_c, name, "EVAL", fill, "0", str(n)) == str(n)
    expected = hashlib.sha1("\n".join(values).encode()).hexdigest()
    assert _redis(host_c, name, "EVAL", digest, "0", str(n)) == expected

    proc, doc = migrate_json(name, "--to", "hm-c2", context="hm-c")
    assert proc.returncode == 0, proc.stderr
    assert not exists(host_c, name)
    assert _redis(host_c2, name, "DBSIZE") == str(n)
    assert _redis(host_c2, name, "EVAL", digest, "0", str(n)) == expected
    assert _redis(host_c2, name, "SET", "after", "move") == "OK"


def _try(fn):
    try:
        return fn()
    except AssertionError:
        return None


def test_v1_to_v2_move_is_refused_before_the_freeze(host_a, host_c, cleanup_on):
    """Host a (cgroup v1, Docker 20.10) -> host c (cgroup v2, Docker 28): refused by the
    validation, and the source never stopped counting (it was not frozen)."""
    name = unique("c2-v1v2")
    cleanup_on += [(host_a, name), (host_c, name)]
    host_a.docker("run", "-d", "--name", name, BASE_IMAGE, *COUNTER_CMD)
    wait_until(lambda: len(counter_values(host_a.logs(name))) >= 2, what="counter on a")

    proc, doc = migrate_json(name, "--to", "hm-c", context="hm-a")
    assert proc.returncode == 12, (proc.returncode, proc.stderr)
    assert doc["ok"] is False
    assert "cgroup version: 1 -> 2: CRIU cannot restore" in doc["error"]["message"], doc
    assert not exists(host_c, name), "nothing may be left on the target"
    src = host_a.client.containers.get(name)
    assert src.status == "running"
    before = counter_values(host_a.logs(name))
    wait_until(lambda: len(counter_values(host_a.logs(name))) > len(before) + 1,
               what="counter on a going on")
    values = counter_values(host_a.logs(name))
    assert values == list(range(len(values))), "the source was interrupted"


# --- cross-ISA on cgroup v2: host c (x86-64) <-> hm-arm2 (aarch64), both v2 only -----------
# Opt-in twice over: HMLAB_CGROUP2=1 and HMLAB_ARM64=1 (two TCG VMs: minutes per move).

HELLO = f"{REGISTRY}/hmigrate/helloworld:latest"
MOVE_TIMEOUT = 1500  # one cross-ISA move between two TCG VMs (phase times: support matrix)


def _phases(doc: dict) -> str:
    return ", ".join(f"{p['name']} {p['seconds']:.1f}s" for p in doc.get("phases", []))


def _cross(name: str, src: LabHost, dst: LabHost, *extra: str) -> dict:
    proc, doc = migrate_json(name, "--to", dst.context, *extra, context=src.context,
                             timeout=MOVE_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert doc["ok"] is True and doc["target"] == dst.context
    isas = {"c": "x86-64", "arm2": "aarch64"}
    assert (doc["source_isa"], doc["target_isa"]) == (isas[src.name], isas[dst.name])
    assert {p["name"] for p in doc["phases"]} >= {"park", "checkpoint", "recode", "restore"}
    print(f"{src.context} -> {dst.context}: {doc['total_seconds']:.1f}s ({_phases(doc)})")
    return doc


def test_arm2_is_an_aarch64_host_on_cgroup_v2_only(arm2):
    info = arm2.client.info()
    assert (info["Architecture"], info["CgroupVersion"]) == ("aarch64", "2"), info
    mounts = arm2.docker("run", "--rm", "--pid=host", ARM_IMAGE, "cat", "/proc/1/mounts")
    kinds = {line.split()[2] for line in mounts.splitlines() if "cgroup" in line.split()[2]}
    assert kinds == {"cgroup2"}, mounts


@pytest.mark.slow
def test_helloworld_moves_c_to_arm2_and_back_counting_on(host_c, arm2, cleanup_on):
    name = unique("c2x-hello")
    cleanup_on += [(host_c, name), (arm2, name)]
    host_c.docker("pull", "-q", HELLO, timeout=600)
    host_c.docker("run", "-d", "--name", name, "--security-opt", "seccomp=unconfined", HELLO)
    wait_until(lambda: len(hello_ticks(host_c.logs(name))) >= 2, timeout=120,
               what="helloworld on c")

    _cross(name, host_c, arm2)
    assert not exists(host_c, name)
    target = arm2.client.containers.get(name)
    assert target.status == "running"
    assert arm2.client.images.get(target.attrs["Image"]).attrs["Architecture"] == "arm64"
    wait_until(lambda: len(hello_ticks(arm2.logs(name))) >= 3, timeout=120,
               what="the counter on arm2")
    values = hello_ticks(arm2.logs(name))
    # restored, not restarted: never from zero, one tick after another
    assert values[0] >= 2 and values == list(range(values[0], values[0] + len(values))), values

    # and back to x86-64 (the aarch64 copy kept, stopped, to read its last tick)
    _cross(name, arm2, host_c, "--keep-source")
    on_arm = hello_ticks(arm2.logs(name))
    assert arm2.client.containers.get(name).status == "exited"
    back = host_c.client.containers.get(name)
    assert host_c.client.images.get(back.attrs["Image"]).attrs["Architecture"] == "amd64"
    wait_until(lambda: len(hello_ticks(host_c.logs(name))) >= 3, timeout=120,
               what="the counter back on c")
    again = hello_ticks(host_c.logs(name))
    assert again[0] == on_arm[-1] + 1, (on_arm[-3:], again[:3])
    assert again == list(range(again[0], again[0] + len(again))), again


@pytest.mark.slow
def test_redis_moves_c_to_arm2_and_back_with_every_key(host_c, arm2, cleanup_on):
    """The project's Redis with 2000 keys, x86-64 -> aarch64 -> x86-64: after each move
    DBSIZE and a server-side SHA-1 over every value are the source's, and it takes writes
    (the key written on aarch64 comes back too)."""
    host_c.docker("pull", "-q", REDIS_MULTI, timeout=600)
    name = unique("c2x-redis")
    cleanup_on += [(host_c, name), (arm2, name)]
    host_c.docker("run", "-d", "--name", name, "--security-opt", "seccomp=unconfined",
                  REDIS_MULTI)
    wait_until(lambda: _try(lambda: _redis(host_c, name, "PING")) == "PONG", timeout=120,
               what="redis on c")
    n = 2000
    expected, digest = _fill_redis(host_c, name, n)

    _cross(name, host_c, arm2)
    assert not exists(host_c, name)
    assert _redis(arm2, name, "DBSIZE") == str(n)
    assert _redis(arm2, name, "EVAL", digest, "0", str(n)) == expected
    assert _redis(arm2, name, "SET", "written-on", "aarch64") == "OK"

    _cross(name, arm2, host_c)
    assert not exists(arm2, name)
    assert _redis(host_c, name, "DBSIZE") == str(n + 1)
    assert _redis(host_c, name, "EVAL", digest, "0", str(n)) == expected
    assert _redis(host_c, name, "GET", "written-on") == "aarch64"


def _fill_redis(host: LabHost, name: str, n: int) -> tuple[str, str]:
    """n keys of several lengths, written by the server itself; (their SHA-1, the Lua that
    computes it server-side)."""
    values = [f"value-{i}-" + "x" * (i % 50) for i in range(1, n + 1)]
    fill = ("for i=1,tonumber(ARGV[1]) do "
            "redis.call('SET','key:'..i,'value-'..i..'-'..string.rep('x', i % 50)) end "
            "return redis.call('DBSIZE')")
    digest = ("local t={} for i=1,tonumber(ARGV[1]) do t[i]=redis.call('GET','key:'..i) end "
              "return redis.sha1hex(table.concat(t, '\\n'))")
    assert _redis(host, name, "EVAL", fill, "0", str(n)) == str(n)
    expected = hashlib.sha1("\n".join(values).encode()).hexdigest()
    assert _redis(host, name, "EVAL", digest, "0", str(n)) == expected
    return expected, digest
