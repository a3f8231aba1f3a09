"""The fast checkpoint path (fastpath.py) on the lab: Docker's view of both hosts stays
Docker's own afterwards, CRIU's figures are reported, and a rollback from a tmpfs dump
restores the source with its state and its restart policy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.lab import (
    BASE_IMAGE,
    COUNTER_CMD,
    REDIS_IMAGE,
    counter_values,
    exists,
    hmigrate,
    migrate_json,
    unique,
    wait_until,
)
from tests.support.resp import try_redis

pytestmark = pytest.mark.lab


def _no_agents_left(*hosts) -> None:
    # only the fast path's agents: other sessions' helpers share the lab
    for host in hosts:
        left = host.client.containers.list(
            all=True, filters={"label": "org.hmigrate.helper=agent"})
        assert not left, f"agent containers left on {host.name}: {[c.name for c in left]}"


def _no_tmpfs_images_left() -> None:
    # the lab's hosts share this machine's /dev/shm; only the migration's own folders
    left = [p.name for p in Path("/dev/shm").glob("hmigrate-*")
            if re.fullmatch(r"hmigrate-[0-9a-f]{10}-[0-9a-f]{6}", p.name)]
    assert not left, f"checkpoint images left in /dev/shm: {left}"


def test_fast_path_keeps_dockers_view(host_a, host_b, cleanup):
    name = unique("fast-counter")
    cleanup.append(name)
    host_a.docker("run", "-d", "--name", name, "--restart", "always", BASE_IMAGE, *COUNTER_CMD)
    wait_until(lambda: len(counter_values(host_a.logs(name))) >= 3, what="counter on a")

    proc, doc = migrate_json(name, "--to", "hm-b", "--verify-seconds", "0")
    assert proc.returncode == 0, proc.stderr
    assert doc["checkpoint_path"] == "runc", doc.get("checkpoint_fast_path")
    dump = doc["criu_dump"]  # CRIU's own figures next to the phase's wall time
    assert 0 < dump["frozen_seconds"] < dump["wall_seconds"]
    assert dump["pages_written"] > 0 and dump["bytes_written"] == dump["pages_written"] * 4096
    assert doc["restore_folder"].startswith("copy")  # a counter: small, copied
    phase = next(p for p in doc["phases"] if p["name"] == "checkpoint")
    assert phase["data"]["criu"]["frozen_seconds"] == dump["frozen_seconds"]

    # Source host: gone for Docker, not restarted by its policy after the dump.
    assert not exists(host_a, name)
    # Target host: ps, inspect, logs, restart policy, stop, start are Docker's own.
    assert name in host_b.docker("ps", "--filter", f"name={name}", "--format", "{{.Names}}")
    attrs = host_b.client.containers.get(name).attrs
    assert attrs["State"]["Running"] and attrs["RestartCount"] == 0
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"
    wait_until(lambda: len(counter_values(host_b.logs(name))) >= 2, what="counter on b")
    values = counter_values(host_b.logs(name))
    assert values[0] >= 3 and values == list(range(values[0], values[0] + len(values)))
    host_b.docker("stop", "-t", "1", name)
    assert host_b.client.containers.get(name).attrs["State"]["Status"] == "exited"
    host_b.docker("start", name)  # a plain start: the program from the beginning
    wait_until(lambda: host_b.client.containers.get(name).status == "running",
               what="a plain start on b")
    _no_agents_left(host_a, host_b)
    _no_tmpfs_images_left()


def test_fast_path_rollback_restores_source_and_policy(host_a, host_b, cleanup):
    """A restore that fails for real (pages removed on the target) after a fast dump: the
    source comes back from the tmpfs images with its state and its restart policy."""
    name = unique("fast-fail")
    cleanup.append(name)
    host_a.docker("run", "-d", "--name", name, "--restart", "on-failure:3", BASE_IMAGE,
                  *COUNTER_CMD)
    wait_until(lambda: len(counter_values(host_a.logs(name))) >= 3, what="counter on a")
    corrupt = (f"rm -f {host_b.data_root}/containers/$HMIGRATE_TARGET_CONTAINER_ID/checkpoints/"
               "$HMIGRATE_CHECKPOINT/pages-*.img")
    proc = hmigrate("migrate", name, "--to", "hm-b", "--hook-pre-restore", corrupt)
    assert proc.returncode == 11, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    before = max(counter_values(host_a.logs(name)))
    wait_until(lambda: max(counter_values(host_a.logs(name))) > before + 1,
               what="the restored source to go on counting")
    values = counter_values(host_a.logs(name))
    assert values == list(range(len(values))), values  # restored, never restarted
    attrs = host_a.client.containers.get(name).attrs
    assert attrs["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert attrs["RestartCount"] == 0
    assert not exists(host_b, name)
    _no_agents_left(host_a, host_b)
    _no_tmpfs_images_left()


def test_fast_path_redis_restored_through_links(host_a, host_b, cleanup):
    """Redis holding ~40 MB: dumped by runc into tmpfs, restored through the restore
    folder's links; every key and its value are there afterwards, and writes go on."""
    name, port = unique("fast-redis"), 16431
    cleanup.append(name)
    host_a.docker("run", "-d", "--name", name, "-p", f"{port}:6379", REDIS_IMAGE,
                  "redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no")
    client = wait_until(lambda: try_redis("127.0.0.1", port), what="redis on a")
    value = "v" * 4000  # 10000 keys of ~4 KB: well above LINKS_FROM_BYTES
    for start in range(0, 10000, 1000):
        client.pipeline([("SET", f"key:{i}", f"{i}:{value}") for i in range(start, start + 1000)])
    client.close()

    proc, doc = migrate_json(name, "--to", "hm-b", "--verify-seconds", "0")
    assert proc.returncode == 0, proc.stderr
    assert doc["checkpoint_path"] == "runc" and doc["restore_folder"] == "links"
    assert doc["criu_dump"]["bytes_written"] > 40e6

    client = wait_until(lambda: try_redis(host_b.address, port), what="redis on b")
    assert client.call("DBSIZE") == 10000
    got = client.pipeline([("GET", f"key:{i}") for i in range(0, 10000, 7)])
    assert [g.decode() for g in got] == [f"{i}:{value}" for i in range(0, 10000, 7)]
    assert client.call("SET", "after", "move") == "OK"
    client.close()
    _no_agents_left(host_a, host_b)
    _no_tmpfs_images_left()
