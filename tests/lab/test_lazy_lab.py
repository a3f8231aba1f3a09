"""`migrate --lazy` (post-copy, lazy.py) on the lab: refused before the freeze, with the
reason, where the hosts cannot do it; the source is never touched.

The lab's hosts a and b run dockerd 20.10 (API 1.41): Docker cannot make the restore lazy
there (docs/lazy.md). Between host c's daemons (Docker 26, API 1.45; HMLAB_CGROUP2=1) a
counter moves with post-copy (slow: the VM runs under a loaded machine).
"""

from __future__ import annotations

import pytest

from tests.support.lab import (
    BASE_IMAGE,
    COUNTER_CMD,
    counter_values,
    exists,
    hmigrate,
    migrate_json,
    unique,
    wait_until,
)

pytestmark = pytest.mark.lab


def _refused_untouched(proc, doc, src, dst, name: str, before: int) -> str:
    assert proc.returncode == 12, (proc.returncode, proc.stderr)
    assert doc["ok"] is False
    message = doc["error"]["message"]
    assert message.startswith("--lazy (post-copy) cannot be used"), message
    assert "without --lazy" in doc["error"]["hint"]
    # Refused before the freeze: the source ran on without a gap, nothing on the target.
    assert not exists(dst, name)
    assert src.client.containers.get(name).attrs["State"]["Running"]
    wait_until(lambda: counter_values(src.logs(name))[-1] > before + 1, timeout=60,
               what="the source counting on")
    values = counter_values(src.logs(name))
    assert values == list(range(len(values))), values[-10:]  # never restarted or frozen long
    return message


def test_lazy_to_dockerd_20_10_is_refused_before_the_freeze(host_a, host_b, cleanup):
    name = unique("lazy-counter")
    cleanup.append(name)
    host_a.docker("run", "-d", "--name", name, BASE_IMAGE, *COUNTER_CMD)
    wait_until(lambda: len(counter_values(host_a.logs(name))) >= 2, what="counter on a")
    before = counter_values(host_a.logs(name))[-1]

    proc, doc = migrate_json(name, "--to", "hm-b", "--lazy")
    message = _refused_untouched(proc, doc, host_a, host_b, name, before)
    assert "API 1.41" in message and "org.criu.config" in message, message
    assert "checkpoint" not in [p["name"] for p in doc.get("phases", [])]
    # The plain message (not --json) says the same, without a traceback.
    plain = hmigrate("migrate", name, "--to", "hm-b", "--lazy")
    assert plain.returncode == 12 and "Traceback" not in plain.stderr
    assert "--lazy (post-copy) cannot be used" in plain.stderr


@pytest.mark.cgroup2
def test_lazy_counter_between_current_engines(host_c, host_c2, cleanup_on):
    """Post-copy for real (Docker 26 both sides): the target runs before its pages have
    arrived, every page is fetched, Docker's view of the target is its own."""
    name = unique("lazy-c-counter")
    cleanup_on += [(host_c, name), (host_c2, name)]
    host_c.docker("run", "-d", "--name", name, "--restart", "always", BASE_IMAGE,
                  *COUNTER_CMD)
    wait_until(lambda: len(counter_values(host_c.logs(name))) >= 3, timeout=120,
               what="counter on c")

    proc, doc = migrate_json(name, "--to", "hm-c2", "--lazy", "--verify-seconds", "0",
                             context="hm-c", timeout=1200)
    assert proc.returncode == 0, (proc.stderr, doc.get("error"))
    assert doc["checkpoint_path"] == "runc"
    assert doc["lazy_page_server"].startswith("10.78.0.1:"), doc["lazy_page_server"]
    names = [p["name"] for p in doc["phases"]]
    assert names.index("restore") < names.index("pages") < names.index("commit"), names
    assert not exists(host_c, name)
    attrs = host_c2.client.containers.get(name).attrs
    assert attrs["State"]["Running"] and attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"
    wait_until(lambda: len(counter_values(host_c2.logs(name))) >= 2, timeout=120,
               what="counter on c2")
    values = counter_values(host_c2.logs(name))
    assert values[0] >= 3 and values == list(range(values[0], values[0] + len(values)))
    host_c2.docker("stop", "-t", "1", name, timeout=300)
    assert host_c2.client.containers.get(name).attrs["State"]["Status"] == "exited"


@pytest.mark.cgroup2
@pytest.mark.slow
def test_lazy_redis_300mb_keeps_every_key_and_the_writes_made_while_pages_arrive(
        host_c, host_c2, cleanup_on):
    """Redis holding ~300 MB moved c -> c2 with post-copy: the target runs at once and is
    written to while its pages are still being pulled (writes go on until the migration
    has committed); afterwards every key is there with its value, and every acknowledged
    write too."""
    import threading
    import time

    from tests.lab.test_cgroup2_lab import REDIS_MULTI, _redis, _try

    name = unique("lazy-c-redis")
    cleanup_on += [(host_c, name), (host_c2, name)]
    host_c.docker("pull", "-q", REDIS_MULTI, timeout=600)
    host_c.docker("run", "-d", "--name", name, REDIS_MULTI)
    wait_until(lambda: _try(lambda: _redis(host_c, name, "PING")) == "PONG", timeout=120,
               what="redis on c")
    n = 300_000  # ~1 KB each
    fill = ("for i=1,tonumber(ARGV[1]) do redis.call('SET','key:'..i, i..':'.."
            "string.rep(string.char(97 + i % 26), 1000)) end return redis.call('DBSIZE')")
    sample = ("local t={} for i=1,tonumber(ARGV[1]),997 do t[#t+1]=redis.call('GET','key:'..i)"
              " end local s=0 for i=1,tonumber(ARGV[1]) do s=s+redis.call('STRLEN','key:'..i)"
              " end return redis.sha1hex(table.concat(t))..':'..s")
    assert _redis(host_c, name, "EVAL", fill, "0", str(n)) == str(n)
    before = _redis(host_c, name, "EVAL", sample, "0", str(n))

    result: dict = {}

    def move() -> None:
        result["proc"], result["doc"] = migrate_json(
            name, "--to", "hm-c2", "--lazy", "--verify-seconds", "0", context="hm-c",
            timeout=1800)
        result["ended"] = time.monotonic()

    mover = threading.Thread(target=move)
    mover.start()
    acked: list[tuple[str, float]] = []
    def running_on_c2() -> bool:  # a helper joining a container not running is left behind
        found = host_c2.client.containers.list(filters={"name": f"^/{name}$"})
        return bool(found) and found[0].status == "running"

    while mover.is_alive():  # written on the target as soon as it runs there
        key = f"during:{len(acked)}"
        if running_on_c2() and _try(lambda k=key: _redis(host_c2, name, "SET", k, "kept")) == "OK":
            acked.append((key, time.monotonic()))
        else:
            time.sleep(0.2)
    mover.join()
    proc, doc = result["proc"], result["doc"]
    assert proc.returncode == 0, (proc.stderr, doc.get("error"))
    names = [p["name"] for p in doc["phases"]]
    assert names.index("restore") < names.index("pages") < names.index("commit"), names
    during = [k for k, at in acked if at < result["ended"]]
    print(f"lazy Redis {n} keys: downtime {doc['downtime_seconds']} s, "
          f"{len(during)} write(s) acknowledged before the move ended")
    assert _redis(host_c2, name, "DBSIZE") == str(n + len(acked))
    assert _redis(host_c2, name, "EVAL", sample, "0", str(n)) == before
    for key, _at in acked:
        assert _redis(host_c2, name, "GET", key) == "kept", key
    assert not exists(host_c, name)
