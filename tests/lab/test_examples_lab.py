"""The example applications as multi-ISA images (lab/examples): built with the toolchain
for linux/amd64 and linux/arm64, pushed to the lab's registry as one manifest list."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support.lab import DOCKER_CLI, REGISTRY, unique, wait_until

pytestmark = pytest.mark.lab

# lab/examples pushes under HMLAB_EXAMPLES_PREFIX (default hmigrate)
PREFIX = f"{REGISTRY}/{os.environ.get('HMLAB_EXAMPLES_PREFIX', 'hmigrate')}"
HELLO = f"{PREFIX}/helloworld"


def test_helloworld_manifest_lists_both_platforms():
    proc = subprocess.run([DOCKER_CLI, "manifest", "inspect", "--insecure", f"{HELLO}:latest"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    platforms = {m["platform"]["architecture"] for m in json.loads(proc.stdout)["manifests"]}
    assert platforms == {"amd64", "arm64"}


@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64"])
def test_helloworld_variant_runs_and_counts(host_b, cleanup, platform):
    """Each platform's variant (built by `docker hmigrate build`: REF-<arch>) runs its own
    ISA's binary (arm64 under qemu-user here) and carries both binaries and the metadata
    recode needs."""
    name = unique("hello")
    cleanup.append(name)
    arch = platform.split("/")[1]
    ref = f"{HELLO}:latest-{arch}"
    host_b.docker("pull", "-q", ref)
    image = host_b.client.images.get(ref)
    assert image.attrs["Architecture"] == arch
    labels = image.attrs["Config"]["Labels"]
    assert labels["org.hmigrate.toolchain"] == "hmigrate-toolchain/1"
    assert labels["org.hmigrate.program"] == "/hello"
    host_b.docker("run", "-d", "--platform", platform, "--name", name, ref)
    wait_until(lambda: "hello from hmigrate: 2" in host_b.logs(name), timeout=60,
               what=f"{platform} helloworld to count")
    tar = subprocess.run([DOCKER_CLI, "--context", host_b.context, "export", name],
                         capture_output=True, timeout=60).stdout
    for member in (b"hmigrate/hello_x86-64", b"hmigrate/hello_aarch64",
                   b"hmigrate/hello.hmigrate.json", b"run/hmigrate"):
        assert member in tar, member


def _redis_answers(address: str, port: int):
    from tests.support.resp import Redis

    try:
        client = Redis(address, port, timeout=5)
        try:
            return client.call("PING") == "PONG" and client
        except (OSError, RuntimeError, ConnectionError):
            client.close()
    except OSError:
        pass
    return None


def run_variant(host, cleanup, example: str, arch: str, port: int, container_port: int):
    """Run one platform's variant of an example image with a published port."""
    name = unique(f"{example}-{arch}")
    cleanup.append(name)
    image = f"{PREFIX}/{example}:latest-{arch}"
    host.docker("pull", "-q", image)
    host.docker("run", "-d", "--platform", f"linux/{arch}", "--name", name,
                "-p", f"{port}:{container_port}", image)
    return name


@pytest.mark.parametrize("arch,port", [("amd64", 16391), ("arm64", 16392)])
def test_redis_image_serves(host_a, cleanup, arch, port):
    """Redis 7 from Debian's source, built by hmigrate-cc: PING, SET and GET (the arm64
    variant runs under qemu-user emulation on this x86-64 host)."""
    run_variant(host_a, cleanup, "redis", arch, port, 6379)
    client = wait_until(lambda: _redis_answers("127.0.0.1", port), timeout=90,
                        what=f"redis {arch} to answer")
    assert client.call("SET", "greeting", "hello") == "OK"
    assert client.call("GET", "greeting") == b"hello"
    assert client.call("DBSIZE") == 1
    client.close()


@pytest.mark.parametrize("arch,port", [("amd64", 18091), ("arm64", 18092)])
def test_nginx_image_serves_its_page(host_a, cleanup, arch, port):
    """nginx from Debian's source, built by hmigrate-cc: a master and a worker process."""
    import urllib.request

    name = run_variant(host_a, cleanup, "nginx-bin", arch, port, 80)

    def page():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                return resp.read().decode()
        except OSError:
            return None

    body = wait_until(page, timeout=90, what=f"nginx {arch} to serve")
    assert "served by nginx built with hmigrate-cc" in body
    # A master and its worker: two nginx processes, the worker a child of the master.
    rows = [line.split() for line in host_a.docker("top", name).splitlines()[1:]]
    procs = [(row[1], row[2]) for row in rows if "nginx" in " ".join(row[7:])]
    assert len(procs) == 2, rows
    pids = {pid for pid, _ in procs}
    assert sum(ppid in pids for _, ppid in procs) == 1, rows  # the worker's parent: master
