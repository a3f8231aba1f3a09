"""`migrate --direct` on the lab (direct.py): the pages go from host a's CRIU to a page
server on host b during the dump, the source stays frozen in place until the target runs;
a failure after the dump thaws it with its state, a killed migration is recovered."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.lab.test_fastpath_lab import _no_agents_left, _no_tmpfs_images_left
from tests.support.lab import (
    BASE_IMAGE,
    COUNTER_CMD,
    DOCKER_CLI,
    REDIS_IMAGE,
    counter_values,
    exists,
    hmigrate,
    migrate_json,
    run_cli,
    unique,
    wait_until,
)
from tests.support.resp import try_redis

pytestmark = pytest.mark.lab


def _counter(host, name: str) -> None:
    host.docker("run", "-d", "--name", name, "--restart", "always", BASE_IMAGE, *COUNTER_CMD)
    wait_until(lambda: len(counter_values(host.logs(name))) >= 3, what="counter on a")


def _migrate(name: str, fault: str):
    env = {**os.environ, "HMIGRATE_TEST_FAULT": fault}
    return run_cli([DOCKER_CLI, "--context", "hm-a", "hmigrate", "migrate", name, "--to",
                    "hm-b", "--direct"], 300, env=env)


def _failed_and_back_on_a(host_a, proc, code: int, name: str) -> dict:
    """The move failed with `code`, and the counter goes on on host a where it stopped
    (no value missing or repeated, never restarted); its attributes."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    before = max(counter_values(host_a.logs(name)))
    wait_until(lambda: max(counter_values(host_a.logs(name))) > before + 2,
               what="the source to go on counting")
    values = counter_values(host_a.logs(name))
    assert values == list(range(len(values))), values
    attrs = host_a.client.containers.get(name).attrs
    assert attrs["RestartCount"] == 0
    return attrs


def _continuous(values: list[int]) -> bool:
    return values == list(range(values[0], values[0] + len(values)))


def test_direct_redis_pages_skip_the_plugin(host_a, host_b, cleanup):
    """Redis holding ~40 MB: the pages cross host to host (criu_dump.bytes_written), only
    the small images through the plugin (bytes_moved); every key is there afterwards."""
    name, port = unique("direct-redis"), 16432
    cleanup.append(name)
    host_a.docker("run", "-d", "--name", name, "-p", f"{port}:6379", REDIS_IMAGE,
                  "redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no")
    client = wait_until(lambda: try_redis("127.0.0.1", port), what="redis on a")
    value = "d" * 4000
    for start in range(0, 10000, 1000):
        client.pipeline([("SET", f"key:{i}", f"{i}:{value}") for i in range(start, start + 1000)])
    client.close()

    proc, doc = migrate_json(name, "--to", "hm-b", "--direct", "--verify-seconds", "0")
    assert proc.returncode == 0, (proc.stderr, doc.get("error"))
    assert doc["transfer"] == "direct" and doc["direct_page_server"].startswith("10.77.0.2:")
    assert doc["criu_dump"]["bytes_written"] > 40e6  # the pages, sent by CRIU
    assert doc["bytes_moved"] < 5e6, doc["bytes_moved"]  # the rest, through the plugin
    assert doc["restore_folder"] == "links"

    client = wait_until(lambda: try_redis(host_b.address, port), what="redis on b")
    assert client.call("DBSIZE") == 10000
    got = client.pipeline([("GET", f"key:{i}") for i in range(0, 10000, 7)])
    assert [g.decode() for g in got] == [f"{i}:{value}" for i in range(0, 10000, 7)]
    client.close()
    assert not exists(host_a, name)
    _no_agents_left(host_a, host_b)
    _no_tmpfs_images_left()


def test_direct_failure_after_the_dump_thaws_the_source(host_a, host_b, cleanup):
    """The move fails once the pages are on the target: the source, frozen in place, runs
    on where it stopped (no value missing or repeated), its restart policy given back."""
    name = unique("direct-fail")
    cleanup.append(name)
    _counter(host_a, name)
    attrs = _failed_and_back_on_a(host_a, _migrate(name, "during:move:fail"), 1, name)
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"
    # the network, closed while it was frozen, is open again (the lab's hosts are this
    # machine's processes: its namespace is reachable from here)
    rules = subprocess.run(["nsenter", "-t", str(attrs["State"]["Pid"]), "-n", "iptables",
                            "-S"], capture_output=True, text=True, check=True).stdout
    assert "hmigrate-direct" not in rules, rules
    assert not exists(host_b, name)
    _no_agents_left(host_a, host_b)
    _no_tmpfs_images_left()


@pytest.mark.parametrize("point, runs_on", [("before:move", "hm-a"),
                                             ("before:verify", "hm-b")])
def test_direct_killed_migration_is_recovered(host_a, host_b, cleanup, point, runs_on):
    """SIGKILL after the dump (the source frozen, alive) or after the restore (the target
    runs): `recover` thaws the source, or ends it without it running again."""
    name = unique("direct-kill")
    cleanup.append(name)
    _counter(host_a, name)
    proc = _migrate(name, f"{point}:sigkill")
    assert proc.returncode != 0
    rec = hmigrate("recover", name)
    assert rec.returncode == 0, rec.stderr
    host, other = (host_a, host_b) if runs_on == "hm-a" else (host_b, host_a)
    wait_until(lambda: len(counter_values(host.logs(name))) >= 3, what=f"counter on {runs_on}")
    before = max(counter_values(host.logs(name)))
    wait_until(lambda: max(counter_values(host.logs(name))) > before + 2,
               what=f"the counter to go on on {runs_on}")
    assert _continuous(counter_values(host.logs(name)))
    assert not exists(other, name)
    _no_agents_left(host_a, host_b)
    _no_tmpfs_images_left()


def test_direct_target_that_dies_during_verify_gives_the_source_back(host_a, host_b, cleanup):
    """The source is ended once the target runs (its clients then reach the target); if
    the target dies during verify, the dump's pages come back from the target's tmpfs and
    the source is restored from them where it stopped."""
    name = unique("direct-died")
    cleanup.append(name)
    _counter(host_a, name)
    _failed_and_back_on_a(host_a, _migrate(name, "during:verify:kill-target"), 11, name)
    assert not exists(host_b, name)
    _no_agents_left(host_a, host_b)
    _no_tmpfs_images_left()
