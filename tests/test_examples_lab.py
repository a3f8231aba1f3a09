"""The example applications as multi-ISA images (lab/examples): built with the toolchain
for linux/amd64 and linux/arm64, pushed to the lab's registry as one manifest list."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.lab import DOCKER_CLI, REGISTRY, unique, wait_until

pytestmark = pytest.mark.lab

HELLO = f"{REGISTRY}/hmigrate/helloworld"


def test_helloworld_manifest_lists_both_platforms():
    proc = subprocess.run([DOCKER_CLI, "manifest", "inspect", "--insecure", f"{HELLO}:latest"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    platforms = {m["platform"]["architecture"] for m in json.loads(proc.stdout)["manifests"]}
    assert platforms == {"amd64", "arm64"}


@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64"])
def test_helloworld_variant_runs_and_counts(host_b, cleanup, platform):
    """Each platform's variant runs its own ISA's binary (arm64 under qemu-user here) and
    carries both binaries and the metadata recode needs."""
    name = unique("hello")
    cleanup.append(name)
    arch = platform.split("/")[1]
    host_b.docker("pull", "-q", f"{HELLO}:{arch}")
    image = host_b.client.images.get(f"{HELLO}:{arch}")
    assert image.attrs["Architecture"] == arch
    labels = image.attrs["Config"]["Labels"]
    assert labels["org.hmigrate.toolchain"] == "hmigrate-toolchain/1"
    host_b.docker("run", "-d", "--platform", platform, "--name", name, f"{HELLO}:{arch}")
    wait_until(lambda: "hello from hmigrate: 2" in host_b.logs(name), timeout=60,
               what=f"{platform} helloworld to count")
    tar = subprocess.run([DOCKER_CLI, "--context", host_b.context, "export", name],
                         capture_output=True, timeout=60).stdout
    for member in (b"hmigrate/hello_x86-64", b"hmigrate/hello_aarch64",
                   b"hmigrate/hello.hmigrate.json", b"run/hmigrate"):
        assert member in tar, member
