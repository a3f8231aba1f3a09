"""Fixtures shared by the test suite: lab hosts, clean-up of what tests create, and a
private folder for checkpoints. Lab fixtures skip (or fail under HMLAB_REQUIRED=1) when
the lab is not usable: tests/support/lab.py."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.support.lab import (
    LabHost,
    arm_guest_trouble,
    arm_serial_offset,
    connect,
    connect_arm,
    remove_containers,
    revive_arm_guest,
)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """A test on the aarch64 guest that failed while the guest's kernel reported a soft
    lockup or an RCU stall (qemu TCG, seen during CRIU dumps: the guest's dockerd answers
    nothing for minutes) is run once more, on a guest that answers again. The lockup is
    the emulator's, not the product's; the first run's failure and the guest's report are
    printed. Any other failure, or a second one, is reported as it is."""
    if "arm64" not in item.keywords and "arm" not in getattr(item, "fixturenames", ()):
        return None
    from _pytest.runner import runtestprotocol

    hook = item.ihook
    for attempt in (1, 2):
        hook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        since = arm_serial_offset()
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        trouble = arm_guest_trouble(since) if any(r.failed for r in reports) else []
        if attempt == 1 and trouble:
            failed = next(r for r in reports if r.failed)
            revived = revive_arm_guest()
            terminal = item.config.pluginmanager.get_plugin("terminalreporter")
            if terminal is not None:
                terminal.write_line(
                    f"\n{item.nodeid}: failed while the aarch64 guest's kernel reported "
                    f"{trouble[0]!r} ({len(trouble)} report(s)); "
                    f"{revived or 'the guest answers again'}; running it once more. "
                    f"The first run's failure: {failed.longreprtext[-1500:]}", yellow=True)
            item._initrequest()  # fixtures are set up afresh for the second run
            hook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
            continue
        for report in reports:
            hook.pytest_runtest_logreport(report=report)
        hook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True
    return True


@pytest.fixture(scope="session", autouse=True)
def no_staging_copies_left() -> Iterator[None]:
    """Lab tests checkpoint through the API too, not only through `migrate` (which removes
    its own): containerd's staging copies of those (/tmp/ctrd-checkpoint*, process memory;
    the lab's daemons share this machine's /tmp) are removed when the session ends. Only
    folders made during the session, and not in the last 30 s (a restore still reading)."""
    start = time.time()
    yield
    for d in glob.glob("/tmp/ctrd-checkpoint*"):
        try:
            made = os.stat(d).st_mtime
        except OSError:
            continue
        if start <= made < time.time() - 30:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def host_a() -> LabHost:
    return connect("a")


@pytest.fixture(scope="session")
def host_b() -> LabHost:
    return connect("b")


@pytest.fixture(scope="session")
def host_c() -> LabHost:
    return connect("c")


@pytest.fixture(scope="session")
def host_c2() -> LabHost:
    return connect("c2")


@pytest.fixture(scope="session")
def arm2() -> LabHost:
    """The aarch64 host on cgroup v2 (hm-arm2; HMLAB_CGROUP2=1 HMLAB_ARM64=1)."""
    return connect("arm2")


@pytest.fixture(scope="session")
def arm() -> docker.DockerClient:
    """The aarch64 host (HM_ARM_PORT, default 2391)."""
    return connect_arm()


@pytest.fixture
def cleanup(host_a: LabHost, host_b: LabHost) -> Iterator[list[str]]:
    """Register container names to remove from hosts a and b when the test ends."""
    names: list[str] = []
    yield names
    for host in (host_a, host_b):
        remove_containers(host.client, names)


@pytest.fixture
def on_arm(arm: docker.DockerClient) -> Iterator[list[str]]:
    """Register container names to remove from the aarch64 host when the test ends."""
    names: list[str] = []
    yield names
    remove_containers(arm, names)


@pytest.fixture
def cleanup_on() -> Iterator[list[tuple[LabHost, str]]]:
    """Register (host, container name) pairs to remove when the test ends."""
    made: list[tuple[LabHost, str]] = []
    yield made
    for host, name in made:
        remove_containers(host.client, [name])


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A private temp dir (0700: checkpoints hold process memory), always deleted."""
    d = Path(tempfile.mkdtemp(prefix="hm-test-"))
    os.chmod(d, 0o700)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
