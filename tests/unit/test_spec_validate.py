"""Unit tests (no daemon): the target's configuration and the validation logic."""

from __future__ import annotations

import pytest

from docker_hmigrate import errors
from docker_hmigrate.spec import target_spec
from docker_hmigrate.strategy import split_ref
from docker_hmigrate.validate import Check, HostFacts, Validation, parse_probe, probe_script

INSPECT = {
    "Id": "0123456789abcdef" * 4,
    "Name": "/web",
    "Image": "sha256:" + "e" * 64,
    "Config": {
        "Hostname": "0123456789ab", "Image": "localhost:5000/web:1", "Env": ["A=1"],
        "Cmd": ["serve"], "Labels": {"l": "v"}, "ExposedPorts": {"80/tcp": {}}, "Tty": False,
    },
    "HostConfig": {
        "ContainerIDFile": "/tmp/cid", "PortBindings": {"80/tcp": [{"HostPort": "8080"}]},
        "RestartPolicy": {"Name": "always"}, "Memory": 1 << 28, "Binds": ["/srv:/srv"],
    },
    "Mounts": [
        {"Type": "volume", "Name": "data", "Destination": "/data", "Driver": "local"},
        {"Type": "bind", "Source": "/srv", "Destination": "/srv"},
    ],
    "NetworkSettings": {"Networks": {
        "bridge": {"Aliases": None},
        "backend": {"Aliases": ["web"], "IPAMConfig": {"IPv4Address": "10.9.0.5"}},
        "frontend": {"Aliases": ["www"]},
    }},
}


def test_target_spec_carries_configuration():
    spec = target_spec(INSPECT, "web2")
    body = spec.body
    assert spec.name == "web2" and spec.image == "localhost:5000/web:1"
    assert body["Env"] == ["A=1"] and body["Cmd"] == ["serve"] and body["Labels"] == {"l": "v"}
    assert body["Hostname"] == "0123456789ab"  # the checkpointed UTS namespace's name
    hc = body["HostConfig"]
    assert hc["PortBindings"]["80/tcp"][0]["HostPort"] == "8080"
    assert hc["RestartPolicy"]["Name"] == "always" and hc["Memory"] == 1 << 28
    assert "ContainerIDFile" not in hc  # a path of the source's client only
    assert [(v.name, v.destination) for v in spec.volumes] == [("data", "/data")]
    assert spec.binds == ["/srv"]
    # Built-in networks are never recreated; the first user network goes in the create call.
    assert list(spec.networks) == ["backend", "frontend"]
    eps = body["NetworkingConfig"]["EndpointsConfig"]
    assert eps == {"backend": {"IPAMConfig": {"IPv4Address": "10.9.0.5"}, "Aliases": ["web"]}}


def test_target_spec_image_override_and_no_mutation():
    spec = target_spec(INSPECT, "web", image="localhost:5000/web:1-arm64")
    assert spec.body["Image"] == "localhost:5000/web:1-arm64"
    assert INSPECT["Config"]["Image"] == "localhost:5000/web:1"
    assert "ContainerIDFile" in INSPECT["HostConfig"]


def test_parse_probe():
    out = ("criu_version=4.2.1\ncriu_check=fail\ncriu_log=Error (criu/kerndat.c): x\n"
           "mem_available_kb=1024\ndisk_free_kb=2048\ncpu_flags= fpu sse2 avx\n"
           "runc_version=1.1.5\nmissing_path=/srv\nnoise without equals\n"
           "special_map=7ffd1000-7ffd5000 r--p 00000000 00:00 0                  [vvar]\n"
           "special_map=7ffd5000-7ffd7000 r-xp 00000000 00:00 0                  [vdso]\n")
    f = parse_probe(out)
    assert f.criu_version == "4.2.1" and f.criu_check is False
    assert f.criu_log == ["Error (criu/kerndat.c): x"]
    assert f.mem_available == 1024 * 1024 and f.disk_free == 2048 * 1024
    assert f.cpu_flags == {"fpu", "sse2", "avx"} and f.missing_paths == ["/srv"]
    assert f.special_maps == {"vvar": [(0x7FFD1000, 0x7FFD5000)],
                              "vdso": [(0x7FFD5000, 0x7FFD7000)]}


def test_probe_script_quotes_paths():
    script = probe_script("/var/lib/docker", ["/a b", "/c;rm -rf /"])
    assert "[ -e \"$hr\"'/a b' ]" in script and "'/c;rm -rf /'" in script


def test_probe_path_checks_see_paths_through_the_parent_root(tmp_path):
    """The path checks, run by a real shell: a path under /tmp is found (the probe's own
    /tmp is private: they look through its parent's root), a missing one reported."""
    import subprocess

    there = tmp_path / "bind source"
    there.mkdir()
    script = probe_script("/", [str(there), str(tmp_path / "gone")])
    checks = script[script.index("hr=/proc/$PPID/root"):]
    out = subprocess.run(["sh", "-c", checks], capture_output=True, text=True).stdout
    assert out.split("\n")[0] == f"missing_path={tmp_path / 'gone'}", out


def test_first_failure_decides_exit_code_and_all_are_listed():
    v = Validation([
        Check("ok", True, "fine"),
        Check("warn", False, "meh", warning=True),
        Check("no TTY", False, "has a TTY", "recreate it", errors.UnsupportedContainer),
        Check("target memory", False, "1 needed", "free it", errors.InsufficientResources),
    ], HostFacts(), HostFacts())
    assert [c.name for c in v.failures] == ["no TTY", "target memory"]
    with pytest.raises(errors.UnsupportedContainer) as exc:
        v.raise_for_failures()
    assert exc.value.exit_code == 7
    assert "no TTY" in exc.value.message and "target memory" in exc.value.message
    assert "--force" not in exc.value.hint  # --force cannot get past a TTY


def test_passing_validation_raises_nothing():
    Validation([Check("ok", True, "fine")], HostFacts(), HostFacts()).raise_for_failures()


@pytest.mark.parametrize("ref,expected", [
    ("redis", ("redis", "latest")),
    ("redis:7", ("redis", "7")),
    ("localhost:5000/x/y:2", ("localhost:5000/x/y", "2")),
    ("localhost:5000/x", ("localhost:5000/x", "latest")),
])
def test_split_ref(ref, expected):
    assert split_ref(ref) == expected
