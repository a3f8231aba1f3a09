"""Plugin manners against the lab's real daemons through the real docker CLI: `check`
tells pass from fail, --json documents match docs/json.md, completion through
`docker __complete` lists the host's containers (issue 13)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import jsondoc
from tests.support.lab import (
    BASE_IMAGE,
    COUNTER_CMD,
    DOCKER_CLI,
    counter_values,
    json_of,
    unique,
    wait_until,
)

pytestmark = pytest.mark.lab


def docker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER_CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def counter(host_a, cleanup) -> str:
    name = unique("manners")
    cleanup.append(name)
    host_a.docker("run", "-d", "--name", name, BASE_IMAGE, *COUNTER_CMD)
    wait_until(lambda: len(counter_values(host_a.logs(name))) >= 2, what="counter on a")
    return name


def test_check_reports_pass_and_fail_truthfully(counter, host_a) -> None:
    """It printed `ok distinct hosts: hm-a and hm-b are the same daemon` and `"ok": true`
    next to failure texts."""
    proc = docker("--context", "hm-a", "hmigrate", "check", counter, "--to", "hm-b")
    # (the return code depends on the lab's state: `criu check` itself fails at times
    # under load; what is checked is that each line says what it found)
    assert "ok   distinct hosts: hm-a and hm-b are different daemons" in proc.stdout
    assert f"ok   no TTY: {counter} has no TTY" in proc.stdout
    for line in proc.stdout.splitlines():
        if line.startswith("    ok   "):
            assert not any(w in line for w in ("same daemon", "not experimental", "fails",
                                               "has a TTY", "not found")), line
    # the same host as target: a blocking failure, as an error, without a --force hint
    proc = docker("--context", "hm-a", "hmigrate", "check", counter, "--to", "hm-a", "--json")
    doc = json_of(proc)
    jsondoc.check_keys("check", doc)
    assert proc.returncode == 125 and doc["ok"] is False
    checks = {c["check"]: c for c in doc["targets"][0]["checks"]}
    assert checks["distinct hosts"]["ok"] is False
    assert checks["distinct hosts"]["detail"] == "hm-a and hm-a are the same daemon"
    assert checks["no TTY"]["ok"] is True and "has a TTY" not in checks["no TTY"]["detail"]
    assert "error: validation failed" in proc.stderr and "--force" not in proc.stderr


def test_json_documents_match_the_docs(counter, host_a, host_b, cleanup, tmp_path: Path) -> None:
    tar = tmp_path / "ck.tar"
    proc = docker("--context", "hm-a", "hmigrate", "checkpoint", counter, "-o", str(tar),
                  "--leave-running", "--json")
    assert proc.returncode == 0, proc.stderr
    jsondoc.check_keys("checkpoint", json_of(proc))
    host_a.docker("stop", "-t", "1", counter)
    proc = docker("--context", "hm-a", "hmigrate", "restore", counter, "-i", str(tar),
                  "--format", "json")
    assert proc.returncode == 0, proc.stderr
    jsondoc.check_keys("restore", json_of(proc))
    proc = docker("--context", "hm-a", "hmigrate", "migrate", counter, "--to", "hm-b", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json_of(proc)
    jsondoc.check_keys("migrate", doc)
    assert doc["container_id"] != doc["target_container_id"]
    assert doc["target_container_id"] == host_b.client.containers.get(counter).id
    assert (doc["source_isa"], doc["target_isa"]) == ("x86-64", "x86-64")
    assert [p["name"] for p in doc["phases"]][:2] == ["validate", "prepare target"]
    proc = docker("--context", "hm-a", "hmigrate", "version", "--to", "hm-b", "--json")
    jsondoc.check_keys("version", json_of(proc))


def test_completion_through_the_docker_cli(counter, host_a) -> None:
    """docker's completion script calls `docker __complete hmigrate ...`; the current
    context's containers come back with their image and state."""
    prefix = counter[:-3]
    proc = docker("--context", "hm-a", "__complete", "hmigrate", "--context", "hm-a",
                  "migrate", prefix)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == ":4"
    assert any(line.startswith(f"{counter}\t{BASE_IMAGE} (Up ") for line in lines), lines
    proc = docker("__complete", "hmigrate", "migrate", counter, "--to", "hm-")
    assert {"hm-a", "hm-b", "hm-b-tcp"} <= {line.split("\t")[0] for line in
                                             proc.stdout.splitlines()}
    proc = docker("__complete", "hmigrate", "restore", counter, "-i", "")
    assert proc.stdout.splitlines()[-1] == ":0"  # the shell completes file names
