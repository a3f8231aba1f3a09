"""validate() and transfer against a fake engine (no daemon): each failure class maps to
the right exception and exit code, and an interrupted stream is reported as such."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import requests

from docker_hmigrate import errors, transfer
from docker_hmigrate.spec import target_spec
from docker_hmigrate.validate import Check, validate

GOOD_PROBE = ("criu_version=4.2.1\ncriu_check=ok\nmem_available_kb=8000000\n"
              "disk_free_kb=90000000\ncpu_flags=fpu sse2\nrunc_version=1.1.5\n")


class FakeAPI:
    def __init__(self, mem_usage: int = 50 << 20):
        self.mem_usage = mem_usage

    def stats(self, cid, stream, one_shot):
        return {"memory_stats": {"usage": self.mem_usage}}

    def inspect_container(self, cid, size=False):
        return {"SizeRw": 4096}


class FakeHost:
    def __init__(self, name: str, probe: str = GOOD_PROBE, experimental: bool = True,
                 isa: str = "x86-64", mem_usage: int = 50 << 20, existing: list | None = None):
        self.name, self.isa, self.root_dir = name, isa, "/var/lib/docker"
        self.experimental = experimental
        self.info = {"ID": name, "CgroupDriver": "cgroupfs", "CgroupVersion": "1"}
        self.version = {"Version": "20.10.24",
                        "Components": [{"Name": "containerd", "Version": "1.6.20"}]}
        self.api = FakeAPI(mem_usage)
        self._probe = probe
        self.client = SimpleNamespace(
            containers=SimpleNamespace(list=lambda **kw: existing or []))

    def run_probe(self, script, timeout=120):
        return 0, self._probe


INSPECT = {
    "Id": "c" * 64, "Name": "/web", "Image": "sha256:" + "1" * 64,
    "State": {"Running": True, "Paused": False, "Status": "running"},
    "Config": {"Image": "web", "Tty": False}, "HostConfig": {}, "Mounts": [],
    "NetworkSettings": {"Networks": {}},
}
IMAGE_OK = Check("image on target", True, "present")


def run(src, dst, inspect=INSPECT, image=IMAGE_OK):
    return validate(src, dst, inspect, target_spec(inspect, "web"), image)


def expect(validation, cls: type[errors.HmigrateError], code: int, text: str):
    with pytest.raises(cls) as exc:
        validation.raise_for_failures()
    assert exc.value.exit_code == code
    assert text in exc.value.message, exc.value.message


def test_all_good():
    v = run(FakeHost("a"), FakeHost("b"))
    assert not v.failures, [c.to_dict() for c in v.failures]
    assert v.target_facts.criu_version == "4.2.1"


def test_not_experimental():
    expect(run(FakeHost("a"), FakeHost("b", experimental=False)),
           errors.DaemonNotExperimental, 5, "not experimental")


def test_criu_missing_and_failing():
    expect(run(FakeHost("a"), FakeHost("b", probe="criu_version=\ncriu_check=fail\n")),
           errors.CriuError, 6, "CRIU not found")
    failing = GOOD_PROBE.replace("criu_check=ok", "criu_check=fail\ncriu_log=Error: vdso")
    expect(run(FakeHost("a"), FakeHost("b", probe=failing)), errors.CriuError, 6, "vdso")


def test_tty_refused():
    tty = {**INSPECT, "Config": {"Image": "web", "Tty": True}}
    expect(run(FakeHost("a"), FakeHost("b"), inspect=tty), errors.UnsupportedContainer, 7, "TTY")


def test_target_out_of_memory():
    expect(run(FakeHost("a", mem_usage=16 << 30), FakeHost("b")),
           errors.InsufficientResources, 8, "target memory")


def test_image_unavailable():
    missing = Check("image on target", False, "web is nowhere", "push it", errors.ImageUnavailable)
    expect(run(FakeHost("a"), FakeHost("b"), image=missing), errors.ImageUnavailable, 9, "nowhere")


def test_cross_isa_refused_and_cpu_flags():
    expect(run(FakeHost("a"), FakeHost("b", isa="aarch64")),
           errors.NotMigratableCrossISA, 14, "x86-64 -> aarch64")
    poorer = GOOD_PROBE.replace("fpu sse2", "fpu")
    expect(run(FakeHost("a"), FakeHost("b", probe=poorer)), errors.ValidationFailed, 12, "sse2")


def test_same_daemon_refused():
    expect(run(FakeHost("a"), FakeHost("a")), errors.UsageError, 2, "same daemon")


class StreamingAPI:
    """GET archive yields two chunks then the connection drops."""

    def get_archive(self, cid, path, chunk_size):
        def gen():
            yield b"x" * 10
            yield b"y" * 10
            raise requests.ConnectionError("connection reset by peer")
        return gen(), {}

    def put_archive(self, cid, path, data):
        for _ in data:
            pass
        return True


class HelperHost:
    def __init__(self, name):
        self.name, self.api = name, StreamingAPI()

    def helper(self, binds):
        import contextlib
        return contextlib.nullcontext("helper-id")


def test_interrupted_stream_is_reported():
    with pytest.raises(errors.TransferInterrupted) as exc:
        transfer.copy_folder("checkpoint", HelperHost("a"), "/x", HelperHost("b"), "/y")
    assert exc.value.exit_code == 10
    assert "after 20 bytes" in exc.value.message and "connection reset" in exc.value.message


def _engine(host: FakeHost, docker: str, containerd: str) -> FakeHost:
    host.version = {"Version": docker, "Components": [{"Name": "containerd",
                                                       "Version": containerd}]}
    return host


def test_engine_that_cannot_restore_refused_both_ways():
    """Docker 28 cannot restore (lab host c with sid's engine): refused as target, and as
    source (no rollback possible); Docker 26 and 20.10 are not."""
    expect(run(FakeHost("a"), _engine(FakeHost("c"), "28.5.2+dfsg4", "1.7.24~ds1")),
           errors.CriuError, 6, "checkpoint restore on c: Docker 28.5.2+dfsg4 cannot restore")
    expect(run(_engine(FakeHost("c"), "28.5.2+dfsg4", "2.1.9+unknown"), FakeHost("b")),
           errors.CriuError, 6, "checkpoint restore on c:")
    for ok in (("26.1.5+dfsg1", "1.7.24~ds1"), ("20.10.24+dfsg1", "1.6.20~ds1")):
        v = run(FakeHost("a"), _engine(FakeHost("c"), *ok))
        assert not v.failures, [c.to_dict() for c in v.failures]


def test_cgroup_version_mismatch_refused_with_the_reason():
    v2 = FakeHost("c")
    v2.info["CgroupVersion"] = "2"
    expect(run(FakeHost("a"), v2), errors.ValidationFailed, 12,
           "cgroup version: 1 -> 2: CRIU cannot restore a checkpoint on another cgroup version")
    expect(run(v2, FakeHost("a")), errors.ValidationFailed, 12, "cgroup version: 2 -> 1")
    other = FakeHost("d")
    other.info["CgroupVersion"] = "2"
    assert not run(v2, other).failures
