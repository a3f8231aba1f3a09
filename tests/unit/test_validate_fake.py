"""validate() and transfer against a fake engine (no daemon): each failure class maps to
the right exception and exit code, and an interrupted stream is reported as such."""

from __future__ import annotations

import os
from types import SimpleNamespace

import docker.errors
import pytest
import requests

from docker_hmigrate import errors, transfer
from docker_hmigrate.spec import target_spec
from docker_hmigrate.validate import Check, validate
from tests.support.fakes import GOOD_PROBE, IMAGE_OK, INSPECT, FakeAPI, FakeHost


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


def test_memory_check_counts_shm():
    """500 MB in /dev/shm: the memory check fails on a target with 400 MB available (it
    used to say "0 B needed": the size query raised TypeError, swallowed as (0, 0))."""
    small = GOOD_PROBE.replace("mem_available_kb=8000000", "mem_available_kb=400000")
    v = run(FakeHost("a", mem_usage=510 << 20, shm=500 << 20), FakeHost("b", probe=small))
    expect(v, errors.InsufficientResources, 8, "target memory")
    mem = next(c for c in v.checks if c.name == "target memory")
    assert "500.0 MiB of it tmpfs/shm" in mem.detail, mem.detail
    assert next(c for c in v.checks if c.name == "target disk").ok


def test_disk_check_counts_writable_layer():
    """3 GB in the writable layer, 2 GB free on the target: the disk check fails alone."""
    small = GOOD_PROBE.replace("disk_free_kb=90000000", "disk_free_kb=2000000")
    v = run(FakeHost("a", size_rw=3 << 30), FakeHost("b", probe=small))
    expect(v, errors.InsufficientResources, 8, "target disk")
    assert [c.name for c in v.failures] == ["target disk"]
    assert "writable layer 3.0 GiB" in v.failures[0].detail


def test_usage_unreadable_is_a_failed_check():
    class Broken(FakeAPI):
        def stats(self, cid, stream, one_shot):
            raise docker.errors.APIError("stats failed")

    a = FakeHost("a")
    a.api = Broken()
    expect(run(a, FakeHost("b")), errors.InsufficientResources, 8, "cannot read")


def test_image_unavailable():
    missing = Check("image on target", False, "web is nowhere", "push it", errors.ImageUnavailable)
    expect(run(FakeHost("a"), FakeHost("b"), image=missing), errors.ImageUnavailable, 9, "nowhere")


def test_cross_isa_refused_and_cpu_flags():
    expect(run(FakeHost("a"), FakeHost("b", isa="aarch64")),
           errors.NotMigratableCrossISA, 14, "x86-64 -> aarch64")
    poorer = GOOD_PROBE.replace("fpu sse2", "fpu")
    expect(run(FakeHost("a"), FakeHost("b", probe=poorer)), errors.ValidationFailed, 12, "sse2")


def test_same_daemon_refused():
    expect(run(FakeHost("a"), FakeHost("a")), errors.UsageError, 125, "same daemon")


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
        with transfer.FolderLink("checkpoint", HelperHost("a"), "/x",
                                 HelperHost("b"), "/y") as link:
            link.copy(".", "")
    assert exc.value.exit_code == 10
    assert "after 20 bytes" in exc.value.message and "connection reset" in exc.value.message


# ---- addresses: CRIU restores established TCP connections only on their own address -----

class NetAPI:
    def __init__(self, nets: dict):
        self.nets = nets

    def inspect_network(self, name):
        if name not in self.nets:
            raise docker.errors.NotFound("no such network")
        return self.nets[name]


def net_host(name, nets):
    return SimpleNamespace(name=name, api=NetAPI(nets))


def on_net(net: str, ip: str) -> dict:
    return {"Name": "/redis", "NetworkSettings": {"Networks": {net: {"IPAddress": ip}}}}


BRIDGE_B = {"bridge": {"IPAM": {"Config": [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]},
                       "Containers": {"x": {"Name": "other", "IPv4Address": "172.17.0.2/16"}}}}


def test_default_bridge_with_connections_refused_before_the_freeze():
    from docker_hmigrate.validate import address_checks

    checks = address_checks(net_host("a", {}), net_host("b", BRIDGE_B),
                            on_net("bridge", "172.17.0.2"), ["172.17.0.2:6379"])
    assert len(checks) == 1 and not checks[0].ok
    assert "will give it 172.17.0.3" in checks[0].detail and "user network" in checks[0].hint
    # without established connections the address may change
    ok = address_checks(net_host("a", {}), net_host("b", BRIDGE_B),
                        on_net("bridge", "172.17.0.2"), [])
    assert ok[0].ok


def test_user_network_address_kept_or_taken():
    from docker_hmigrate.validate import address_checks

    net = {"IPAM": {"Config": [{"Subnet": "172.30.5.0/24"}]}, "Containers": {}}
    free = address_checks(net_host("a", {"app": net}), net_host("b", {"app": net}),
                          on_net("app", "172.30.5.2"), ["172.30.5.2:6379"])
    assert free[0].ok, free[0].detail
    taken = {**net, "Containers": {"y": {"Name": "squatter", "IPv4Address": "172.30.5.2/24"}}}
    busy = address_checks(net_host("a", {"app": net}), net_host("b", {"app": taken}),
                          on_net("app", "172.30.5.2"), ["172.30.5.2:6379"])
    assert not busy[0].ok and "squatter" in busy[0].detail
    created = address_checks(net_host("a", {"app": net}), net_host("b", {}),
                             on_net("app", "172.30.5.2"), [])
    assert created[0].ok and "will be created" in created[0].detail


def test_target_keeps_the_address_on_user_networks():
    inspect = {**INSPECT, "NetworkSettings": {"Networks": {
        "app": {"IPAddress": "172.30.5.2", "Aliases": ["r"]}, "bridge": {"IPAddress": "x"}}}}
    spec = target_spec(inspect, "web")
    ep = spec.body["NetworkingConfig"]["EndpointsConfig"]["app"]
    assert ep["IPAMConfig"] == {"IPv4Address": "172.30.5.2"}


def test_proc_net_tcp_addresses():
    from docker_hmigrate.validate import _proc_net_addr, parse_probe

    assert _proc_net_addr("0200A8C0:1F90") == "192.168.0.2:8080"
    facts = parse_probe("tcp_established=020011AC:18EB\n")
    assert facts.tcp_established == ["172.17.0.2:6379"]


def test_checkpoint_stream_made_private():
    """CRIU writes images 0644: the checkpoint stream lands 0600 (folders 0700), byte for
    byte otherwise, whatever the chunking (long names use pax headers)."""
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in (("ck", None, 0o755), ("ck/pages-1.img", os.urandom(70000), 0o644),
                                 ("ck/" + "n" * 150 + ".img", b"x" * 513, 0o644),
                                 ("ck/empty.img", b"", 0o666)):
            info = tarfile.TarInfo(name)
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    blob = raw.getvalue()
    chunks = (blob[i:i + 777] for i in range(0, len(blob), 777))
    out = b"".join(transfer.private_modes(chunks))
    assert len(out) == len(blob)
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        members = tar.getmembers()
        assert {m.name: m.mode for m in members} == {
            "ck": 0o700, "ck/pages-1.img": 0o600, "ck/" + "n" * 150 + ".img": 0o600,
            "ck/empty.img": 0o600}
        with tarfile.open(fileobj=io.BytesIO(blob)) as orig:
            for m in members:
                if m.isfile():
                    assert tar.extractfile(m).read() == orig.extractfile(m.name).read()


# ---- truthful pass/fail (issue 13: `check` printed "ok" next to failure texts) -------

FAILURE_WORDS = ("same daemon", "has a TTY", "not experimental", "not found", "fails",
                 "not enough", "lacks", "exists on", "missing")


def test_passing_checks_describe_what_passed():
    v = run(FakeHost("a"), FakeHost("b"))
    for c in v.checks:
        assert c.ok
        assert not any(w in c.detail for w in FAILURE_WORDS), c.to_dict()
        assert "hint" not in c.to_dict(), c.to_dict()


def test_failing_checks_describe_the_failure():
    tty = {**INSPECT, "Config": {"Image": "web", "Tty": True}}
    v = run(FakeHost("a"), FakeHost("a", experimental=False), inspect=tty)
    failed = {c.name: c for c in v.failures}
    assert "same daemon" in failed["distinct hosts"].detail
    assert "has a TTY" in failed["no TTY"].detail
    assert "not experimental" in failed["experimental daemon on a"].detail
    d = failed["no TTY"].to_dict()
    assert d["ok"] is False and d["error"] == {"class": "UnsupportedContainer", "exit_code": 7}


def test_force_hint_only_where_forcing_helps():
    # A TTY cannot be forced past: the hint must not suggest --force.
    tty = {**INSPECT, "Config": {"Image": "web", "Tty": True}}
    with pytest.raises(errors.UnsupportedContainer) as exc:
        run(FakeHost("a"), FakeHost("b"), inspect=tty).raise_for_failures()
    assert "--force" not in (exc.value.hint or "")
    with pytest.raises(errors.UsageError) as exc:
        run(FakeHost("a"), FakeHost("a")).raise_for_failures()
    assert "--force" not in (exc.value.hint or "")
    # Memory is an estimate: --force can help.
    with pytest.raises(errors.InsufficientResources) as exc:
        run(FakeHost("a", mem_usage=16 << 30), FakeHost("b")).raise_for_failures()
    assert "--force" in (exc.value.hint or "")


def test_blocking_failures_are_errors_not_warnings(monkeypatch):
    import io

    from docker_hmigrate import migrate
    from docker_hmigrate.output import Reporter

    monkeypatch.setattr(migrate, "image_check", lambda *a: IMAGE_OK)
    tty = {**INSPECT, "Config": {"Image": "web", "Tty": True}}
    for force, level in ((False, "error"), (True, "warning")):
        err = io.StringIO()
        m = migrate.Migration(FakeHost("a"), FakeHost("b"),
                              migrate.MigrationOptions("web", force=force),
                              Reporter(err=err, out=io.StringIO(), tty=False))
        m.inspect, m.spec = tty, target_spec(tty, "web")
        if force:
            m.phase_validate()
        else:
            with pytest.raises(errors.UnsupportedContainer):
                m.phase_validate()
        assert f"{level}: no TTY: web has a TTY" in err.getvalue(), err.getvalue()


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
