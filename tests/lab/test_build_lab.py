"""A new C program, from source to aarch64 and back: a <= 6-line Dockerfile, one
`docker hmigrate build --push`, then `migrate --to hm-arm` and back, counting on."""

from __future__ import annotations

import time
from pathlib import Path

import docker.errors
import pytest

from tests.support.lab import REGISTRY, hmigrate, unique, wait_until

pytestmark = pytest.mark.lab

IMAGE = f"{REGISTRY}/hmigrate/build-test/counter:latest"

COUNTER_C = r"""/* A new program: one line a second, "tick N". */
#include <stdio.h>
#include <unistd.h>

static long ticks;

static void say(long n)
{
	printf("tick %ld\n", n);
	fflush(stdout);
}

int main(void)
{
	for (;;) {
		say(ticks++);
		sleep(1);
	}
}
"""

DOCKERFILE = """FROM hmigrate/toolchain
COPY counter.c .
RUN hmigrate-cc -o /counter counter.c
CMD ["/counter"]
"""


def ticks(logs: str) -> list[int]:
    return [int(line.split()[1]) for line in logs.splitlines()
            if line.startswith("tick ") and line.split()[1].isdigit()]


def consecutive(values: list[int]) -> bool:
    return values == list(range(values[0], values[0] + len(values)))


@pytest.mark.arm64
def test_new_program_builds_and_moves_to_aarch64_and_back(host_a, arm, cleanup, on_arm,
                                                         tmp_path: Path):
    (tmp_path / "counter.c").write_text(COUNTER_C)
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    assert len(DOCKERFILE.splitlines()) <= 6
    started = time.monotonic()
    proc = hmigrate("build", "-t", IMAGE, "--push", str(tmp_path), timeout=1200)
    assert proc.returncode == 0, proc.stderr
    print(f"build --push: {time.monotonic() - started:.1f} s")
    assert f"pushed manifest list {IMAGE}@sha256:" in proc.stdout, proc.stdout
    built = host_a.client.images.get(IMAGE)
    assert built.attrs["Architecture"] == "amd64"
    assert built.attrs["Config"]["Labels"]["org.hmigrate.program"] == "/counter"

    name = unique("build-counter")
    cleanup.append(name)
    on_arm.append(name)
    host_a.docker("run", "-d", "--name", name, "--security-opt", "seccomp=unconfined", IMAGE)
    wait_until(lambda: len(ticks(host_a.logs(name))) >= 3, what="the counter on x86-64")

    proc = hmigrate("migrate", name, "--to", "hm-arm", "--keep-source")
    assert proc.returncode == 0, proc.stderr
    on_x86 = ticks(host_a.logs(name))  # the stopped source keeps its log
    host_a.client.containers.get(name).remove()
    target = arm.containers.get(name)
    assert arm.images.get(target.attrs["Image"]).attrs["Architecture"] == "arm64"
    wait_until(lambda: len(ticks(target.logs().decode())) >= 3, timeout=90,
               what="the counter on aarch64")
    on_aarch64 = ticks(target.logs().decode())
    assert on_aarch64[0] == on_x86[-1] + 1 and consecutive(on_aarch64), (on_x86, on_aarch64)

    proc = hmigrate("migrate", name, "--to", "hm-a", "--keep-source", context="hm-arm")
    assert proc.returncode == 0, proc.stderr
    on_aarch64 = ticks(arm.containers.get(name).logs().decode())
    back = host_a.client.containers.get(name)
    assert host_a.client.images.get(back.attrs["Image"]).attrs["Architecture"] == "amd64"
    wait_until(lambda: len(ticks(host_a.logs(name))) >= 3, timeout=60,
               what="the counter back on x86-64")
    again = ticks(host_a.logs(name))
    assert again[0] == on_aarch64[-1] + 1 and consecutive(again), (on_aarch64[-3:], again[:3])


def test_build_refuses_a_program_not_built_with_hmigrate_cc(host_a, tmp_path: Path):
    (tmp_path / "counter.c").write_text(COUNTER_C)
    (tmp_path / "Dockerfile").write_text(DOCKERFILE.replace("hmigrate-cc", "gcc -static"))
    proc = hmigrate("build", "-q", "-t", f"{REGISTRY}/hmigrate/build-test/plain:latest",
                    str(tmp_path), timeout=600)
    assert proc.returncode == 14, proc.stderr
    assert "/counter was not built with hmigrate-cc" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    with pytest.raises(docker.errors.ImageNotFound):  # nothing was tagged
        host_a.client.images.get(f"{REGISTRY}/hmigrate/build-test/plain:latest")


def test_build_push_to_an_unreachable_registry_fails_before_building(host_a, tmp_path: Path):
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    proc = hmigrate("build", "--push", "-t", "127.0.0.1:5999/hmigrate/build-test/none",
                    str(tmp_path), timeout=120)
    assert proc.returncode == 4, proc.stderr
    assert "registry 127.0.0.1:5999 is not reachable" in proc.stderr, proc.stderr
    assert "Step 1/" not in proc.stderr  # refused before the build
