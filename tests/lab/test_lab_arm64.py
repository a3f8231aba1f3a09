"""The lab's aarch64 Docker host (lab/arm64/up): a Debian arm64 VM under qemu TCG.

Skips with a reason when not root or when the hm-arm host does not answer (run
`sudo lab/arm64/up`, or `HMLAB_ARM64=1 sudo lab/up`); with HMLAB_REQUIRED=1 it fails.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import tarfile
from pathlib import Path

import docker
import pytest

from tests.support.lab import (
    ARM_CONTEXT,
    ARM_IMAGE,
    COUNTER_CMD,
    DOCKER_CLI,
    connect,
    counter_values,
    lab_unavailable,
    unique,
    wait_until,
)

pytestmark = [pytest.mark.lab, pytest.mark.arm64]

ARM_DIR = Path(__file__).resolve().parents[2] / "lab" / "arm64"
REGISTRY_REPO = "localhost:5000/hmlab-arm64/busybox"


def cli(*args: str, timeout: float = 300) -> str:
    proc = subprocess.run([DOCKER_CLI, "--context", ARM_CONTEXT, *args],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"docker --context {ARM_CONTEXT} {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def test_arm64_host_is_an_experimental_aarch64_daemon(arm):
    info = arm.info()
    assert info["Architecture"] == "aarch64"
    assert info["ExperimentalBuild"] is True
    # same cgroup setup as the x86-64 lab hosts: v1 hierarchies, cgroupfs driver
    assert info["CgroupVersion"] == "1"
    assert info["CgroupDriver"] == "cgroupfs"
    assert info["Driver"] == "overlay2"
    # the context the plugin will use points at the VM
    assert cli("info", "--format", "{{.Architecture}}").strip() == "aarch64"


def test_arm64_status_reports_criu_check_good(arm):
    proc = subprocess.run(["bash", str(ARM_DIR / "status")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = proc.stdout.strip()
    assert "aarch64" in line and 'criu-check="Looks good."' in line, line


def test_arm64_pulls_arm64_image_from_lab_registry(arm):
    """The guest reaches the lab registry (x86 host 127.0.0.1:5000) as localhost:5000."""
    ref = f"{REGISTRY_REPO}:latest"
    arm.images.get(ARM_IMAGE).tag(REGISTRY_REPO, "latest")
    try:
        cli("push", ref)
    except AssertionError as exc:
        lab_unavailable(f"lab registry not reachable from the aarch64 host: {exc}")
    arm.images.remove(ref)
    cli("pull", ref)
    img = arm.images.get(ref)
    assert img.attrs["Architecture"] == "arm64"
    out = arm.containers.run(ref, ["uname", "-m"], remove=True)
    assert out.decode().strip() == "aarch64"


def test_arm64_pulls_its_variant_of_a_multi_arch_image(arm):
    """A manifest list in the lab registry with an amd64 (host a) and an arm64 variant:
    hm-arm pulls the arm64 one, host a the amd64 one."""
    host_a = connect("a")  # skips if the x86-64 lab is not up
    base = host_a.client.images.list()
    amd64_src = next((t for i in base for t in i.tags
                      if i.attrs.get("Architecture") == "amd64"), None)
    if amd64_src is None:
        lab_unavailable("host a has no amd64 image to build a manifest list from; run lab/up")
    repo = f"{REGISTRY_REPO}-multi"
    host_a.client.images.get(amd64_src).tag(repo, "amd64")
    host_a.docker("push", f"{repo}:amd64")
    arm.images.get(ARM_IMAGE).tag(repo, "arm64")
    cli("push", f"{repo}:arm64")
    subprocess.run([DOCKER_CLI, "manifest", "rm", f"{repo}:latest"], capture_output=True)
    for args in (["create", "--insecure", f"{repo}:latest", "--amend", f"{repo}:amd64",
                  "--amend", f"{repo}:arm64"],
                 ["push", "--insecure", "--purge", f"{repo}:latest"]):
        proc = subprocess.run([DOCKER_CLI, "manifest", *args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
    with contextlib.suppress(Exception):
        arm.images.remove(f"{repo}:latest")
    cli("pull", f"{repo}:latest")
    assert arm.images.get(f"{repo}:latest").attrs["Architecture"] == "arm64"
    host_a.docker("pull", f"{repo}:latest")
    assert host_a.client.images.get(f"{repo}:latest").attrs["Architecture"] == "amd64"


def _copy_checkpoint(arm: docker.DockerClient, src_id: str, dst_id: str, name: str) -> None:
    """Copy <root>/containers/SRC/checkpoints/NAME to DST through the engine API only:
    a created-never-started helper container bind-mounts the containers folder and we
    GET/PUT its archive (what a cross-host move does, here on one host)."""
    root = arm.info()["DockerRootDir"]
    helper = arm.containers.create(ARM_IMAGE, ["true"], name=unique("hm-arm-cp"),
                                   volumes={f"{root}/containers": {"bind": "/c", "mode": "rw"}})
    try:
        stream, _ = helper.get_archive(f"/c/{src_id}/checkpoints/{name}")
        src = tarfile.open(fileobj=io.BytesIO(b"".join(stream)))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as dst:
            for member in src.getmembers():
                data = src.extractfile(member) if member.isfile() else None
                member.name = f"checkpoints/{member.name}"
                dst.addfile(member, data)
        assert helper.put_archive(f"/c/{dst_id}", buf.getvalue())
    finally:
        helper.remove(force=True)


def test_arm64_counter_checkpoint_restores_into_new_container(arm, on_arm):
    src, dst = unique("hm-arm-counter"), unique("hm-arm-restored")
    on_arm += [src, dst]
    cli("run", "-d", "--name", src, ARM_IMAGE, *COUNTER_CMD)
    wait_until(lambda: len(counter_values(arm.containers.get(src).logs().decode())) >= 3,
               timeout=120, what="the arm64 counter to print")

    c = arm.containers.get(src)
    api = arm.api
    res = api._post_json(api._url("/containers/{0}/checkpoints", c.id),
                         data={"CheckpointID": "cp1", "Exit": True})
    api._raise_for_status(res)
    before = counter_values(c.logs().decode())
    c.reload()
    assert c.status == "exited", c.status
    assert before and before[-1] >= 2

    # a NEW container with the same config, restored from the copied checkpoint
    new = arm.containers.create(ARM_IMAGE, COUNTER_CMD, name=dst)
    _copy_checkpoint(arm, c.id, new.id, "cp1")
    cli("start", "--checkpoint", "cp1", dst)

    def restored():
        values = counter_values(new.logs().decode())
        return values if len(values) >= 2 else None

    after = wait_until(restored, timeout=120, what="the restored counter to print")
    # it continued where the checkpoint froze it, not from zero
    assert after[0] >= before[-1], (before[-3:], after)
    assert after[0] > 0
    assert after == list(range(after[0], after[0] + len(after)))
    new.reload()
    assert new.status == "running"
