"""The lab itself: both hosts healthy, and a checkpoint taken on a restores on b."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.lab import BASE_IMAGE, COUNTER_CMD, LAB_DIR, counter_values, unique, wait_until

pytestmark = pytest.mark.lab


def test_status_reports_both_hosts_healthy(host_a, host_b):
    proc = subprocess.run(["bash", str(LAB_DIR / "status")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    for host in ("host-a", "host-b"):
        assert "experimental=true" in lines[host] and "criu-check=ok" in lines[host], lines[host]
    assert "up" in lines["registry"]


def test_up_is_idempotent_and_fast(host_a):
    proc = subprocess.run(["bash", str(LAB_DIR / "up")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # A second run starts nothing: every "starting" line would mean it restarted something.
    assert "starting" not in proc.stderr, proc.stderr


def test_hosts_are_separate_daemons(host_a, host_b):
    assert host_a.client.info()["ID"] != host_b.client.info()["ID"]
    assert host_a.data_root != host_b.data_root
    for host in (host_a, host_b):
        assert host.client.info()["ExperimentalBuild"] is True
        assert host.client.images.get(BASE_IMAGE)


def test_registry_serves_both_hosts(host_b):
    host_b.docker("pull", "-q", f"localhost:5000/{BASE_IMAGE}")


def test_counter_checkpoint_on_a_restores_on_b(host_a, host_b, cleanup):
    """The manual way, with plain docker commands: the proof that the lab can migrate."""
    src, dst = unique("lab-counter"), unique("lab-counter-b")
    cleanup += [src, dst]
    host_a.docker("run", "-d", "--name", src, BASE_IMAGE, *COUNTER_CMD)
    wait_until(lambda: len(counter_values(host_a.logs(src))) >= 4, what="the counter to count")

    ckdir = Path(tempfile.mkdtemp(prefix="hmlab-ck-"))
    try:
        os.chmod(ckdir, 0o700)
        host_a.docker("checkpoint", "create", "--checkpoint-dir", str(ckdir), src, "ck1")
        last_on_a = counter_values(host_a.logs(src))[-1]
        assert host_a.client.containers.get(src).status == "exited"

        cid = host_b.docker("create", "--name", dst, BASE_IMAGE, *COUNTER_CMD).strip()
        target = Path(host_b.data_root) / "containers" / cid / "checkpoints" / "ck1"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(ckdir / "ck1", target)
    finally:
        shutil.rmtree(ckdir, ignore_errors=True)

    host_b.docker("start", "--checkpoint", "ck1", dst)
    values = wait_until(lambda: [v for v in counter_values(host_b.logs(dst)) if v > last_on_a + 1],
                        what="the restored counter to go on")
    logged = counter_values(host_b.logs(dst))
    # The restored process continues: it never starts again from zero.
    assert 0 not in logged, logged
    assert logged[0] == last_on_a + 1, (last_on_a, logged)
    assert values
