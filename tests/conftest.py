"""Fixtures shared by the test suite: lab hosts and clean-up of what tests create."""

from __future__ import annotations

import contextlib

import pytest

from tests.support.lab import LabHost, connect


@pytest.fixture(scope="session")
def host_a() -> LabHost:
    return connect("a")


@pytest.fixture(scope="session")
def host_b() -> LabHost:
    return connect("b")


@pytest.fixture
def cleanup(host_a: LabHost, host_b: LabHost):
    """Register container names to remove from both hosts when the test ends."""
    names: list[str] = []
    yield names
    for host in (host_a, host_b):
        for name in names:
            with contextlib.suppress(Exception):
                host.client.containers.get(name).remove(force=True, v=True)
