"""recover.py without a daemon: who counts as gone, what the sweep removes, what a lock
records (the lab tests kill a real plugin: tests/lab/test_faults_lab.py)."""

from __future__ import annotations

import calendar
import os
import subprocess
import time

from docker_hmigrate import recover
from docker_hmigrate.engine import MIGRATION_LABEL


def dead_pid() -> int:
    """A pid that no process has any more (a child that has exited and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


class ListingAPI:
    def __init__(self, containers):
        self.listed = containers
        self.filters = None

    def containers(self, all=False, filters=None):
        self.filters = filters
        return self.listed


class ListingHost:
    def __init__(self, containers):
        self.api = ListingAPI(containers)
        self.removed: list[str] = []

    def remove_quietly(self, cid):
        self.removed.append(cid)


def test_a_process_is_gone_when_this_machine_has_no_such_pid():
    node = os.uname().nodename
    assert recover.process_gone(node, str(dead_pid()), time.time())
    assert not recover.process_gone(node, str(os.getpid()), time.time())
    assert not recover.process_gone(node, "1", time.time())  # alive (init), maybe not ours


def test_another_machines_process_counts_as_gone_only_after_a_day():
    now = time.time()
    assert not recover.process_gone("elsewhere", "123", now - 3600)
    assert recover.process_gone("elsewhere", "123",
                                now - recover.FOREIGN_STALE_SECONDS - 60)


def test_sweep_removes_only_what_a_gone_plugin_made():
    node = os.uname().nodename
    host = ListingHost([
        {"Id": "dead", "Created": time.time(),
         "Labels": {MIGRATION_LABEL: "hmigrate-1", recover.OWNER_LABEL: f"{node}:{dead_pid()}"}},
        {"Id": "alive", "Created": time.time(),
         "Labels": {MIGRATION_LABEL: "hmigrate-2", recover.OWNER_LABEL: recover.owner()}},
        {"Id": "old-version", "Created": 0, "Labels": {MIGRATION_LABEL: "hmigrate-3"}},
        {"Id": "foreign-old", "Created": time.time() - 3 * 24 * 3600,
         "Labels": {MIGRATION_LABEL: "hmigrate-4", recover.OWNER_LABEL: "elsewhere:77"}},
        {"Id": "foreign-new", "Created": time.time(),
         "Labels": {MIGRATION_LABEL: "hmigrate-5", recover.OWNER_LABEL: "elsewhere:77"}},
    ])
    assert recover.sweep(host) == ["dead", "foreign-old"]
    assert host.removed == ["dead", "foreign-old"]
    assert host.api.filters == {"label": MIGRATION_LABEL}  # never the locks (".lock" label)


def test_a_lock_records_what_a_recovery_needs():
    labels = recover.lock_labels("c" * 64, "hmigrate-abc", "hm-b", "web2",
                                 {"Name": "on-failure", "MaximumRetryCount": 3}, True)
    lock = recover.Lock("l1", labels)
    assert lock.checkpoint == "hmigrate-abc"
    assert lock.get("target") == "hm-b" and lock.get("target_name") == "web2"
    assert lock.restart_policy == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert lock.get("keep_source") == "1"
    assert not lock.stale  # this process holds it
    assert str(os.getpid()) in lock.holder
    assert labels[recover.LOCK_LABEL] == "c" * 64
    assert MIGRATION_LABEL not in labels  # a sweep never lists it


def test_a_lock_of_an_older_version_is_read_without_its_new_facts():
    lock = recover.Lock("l1", {"org.hmigrate.lock.pid": str(dead_pid()),
                               "org.hmigrate.lock.host": os.uname().nodename,
                               "org.hmigrate.lock.restart": "not json"})
    assert lock.stale and lock.checkpoint == "" and lock.restart_policy == {}


def test_created_after_reads_dockers_timestamps():
    since = calendar.timegm(time.strptime("2026-12-02 17:00:00", "%Y-%m-%d %H:%M:%S"))
    assert recover._created_after("2026-12-02T17:00:05.123456789Z", since)
    assert not recover._created_after("2026-12-02T16:59:00.5Z", since)
    assert not recover._created_after("garbage", since)


def test_a_parked_program_is_resumed_even_when_the_target_does_not_answer(monkeypatch):
    """Killed after the park on the way to another ISA, and that host now unreachable: the
    source still runs, parked; recover withdraws the request (it did not, before)."""
    from types import SimpleNamespace

    from docker_hmigrate import park, validate

    withdrawn = []
    monkeypatch.setattr(validate, "load_program",
                        lambda host, inspect: SimpleNamespace(park_protocol="proto"))
    monkeypatch.setattr(park, "withdraw", lambda host, cid, proto: withdrawn.append(cid))
    src = SimpleNamespace(name="hm-a", isa="x86-64")
    lock = recover.Lock("l1", recover.lock_labels("c" * 64, "hmigrate-x", "hm-arm", "web",
                                                  {}, False))
    rec = recover.Recovery(src, {"Id": "c" * 64, "Name": "/web"}, lock,
                           lambda name: None, lambda line: None)
    rec._resume_parked()  # rec.dst is None: the target was not reached
    assert withdrawn == ["c" * 64] and "withdrew the park request" in rec.done[0]
    rec.done.clear()
    withdrawn.clear()
    rec.dst = SimpleNamespace(name="hm-b", isa="x86-64")  # same ISA: nothing was parked
    rec._resume_parked()
    assert withdrawn == [] and rec.done == []
