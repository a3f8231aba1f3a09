"""Parking a toolchain-built program in a container through the engine API only
(docker_hmigrate.park): every thread stops at an equivalence point, the container says so
with its park file, and the program goes on unharmed once the request is withdrawn."""

from __future__ import annotations

import time

import pytest

from docker_hmigrate.engine import Host
from docker_hmigrate.park import ParkProtocol, park, read_container_file, resume
from tests.support.lab import REGISTRY, unique, wait_until

pytestmark = pytest.mark.lab

HELLO = f"{REGISTRY}/hmigrate/helloworld:latest"


def ticks(host, name: str) -> list[int]:
    return [int(line.rsplit(":", 1)[1]) for line in host.logs(name).splitlines()
            if line.startswith("hello from hmigrate:")]


def test_helloworld_parks_and_resumes(host_a, cleanup):
    name = unique("park-hello")
    cleanup.append(name)
    host_a.docker("pull", "-q", HELLO)
    host_a.docker("run", "-d", "--name", name, HELLO)
    wait_until(lambda: len(ticks(host_a, name)) >= 2, what="helloworld to count")
    host = Host("hm-a", host_a.client)
    proto = ParkProtocol()

    parked = park(host, name, proto, timeout=10)
    assert parked["threads"] == "1" and parked["pid"] == "1", parked
    frozen = ticks(host_a, name)[-1]
    time.sleep(2.5)  # parked: no tick may come out
    assert ticks(host_a, name)[-1] == frozen
    assert host_a.client.containers.get(name).status == "running"

    resume(host, name, proto)
    wait_until(lambda: ticks(host_a, name)[-1] >= frozen + 2, what="the counter to go on")
    values = ticks(host_a, name)
    assert values == list(range(len(values))), values  # one run, never restarted
    # The announcement is withdrawn with the request.
    assert read_container_file(host, name, proto.park_file) is None
