"""Unit tests of the inert template (template.py: stub, configuration, cache) and of the
merge of the source's images with the target's host facts (recode/hostimages.py), on
synthetic image sets shaped like the lab's CRIU 4.2 checkpoints of a container with a
bind mount at /data."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from docker_hmigrate import template
from docker_hmigrate.criu import ImageFile, ImageSet, new
from docker_hmigrate.criu.image import INVENTORY_MAGIC
from docker_hmigrate.engine import SCRATCH_IMAGE
from docker_hmigrate.recode import hostimages
from docker_hmigrate.recode.frames import Untranslatable
from tests.support.criu_images import CORE, FILES, PSTREE, reg, x86_core

MOUNTPOINTS, CGROUP = 0x55563928, 0x59383330


def mnt(mnt_id: int, parent: int, path: str, fstype: int = 0, dev: int = 98, **kw) -> dict:
    return dict(fstype=fstype, mnt_id=mnt_id, root_dev=dev, parent_mnt_id=parent,
                flags=kw.pop("flags", 0x200000), root=kw.pop("root", "/"), mountpoint=path,
                source=kw.pop("source", "none"), options="", **kw)


def cgroups(set_id: int, path: str) -> object:
    return new("cgroup_entry", sets=[dict(id=1, ctls=[]),
                                     dict(id=set_id, ctls=[dict(name="pids", path=path)])])


def image_set(d: Path, mounts: list[dict], cg_set: int, cg_path: str, files: list,
              tmpfs: dict[int, bytes], lsm: int = 0) -> Path:
    images: dict[str, ImageFile] = {}

    def add(name, magic, msgs):
        images[name] = ImageFile.new(name, magic, msgs)

    add("inventory.img", INVENTORY_MAGIC, [new("inventory_entry", img_version=2,
                                               fdinfo_per_id=True, root_cg_set=1,
                                               lsmtype=lsm)])
    add("pstree.img", PSTREE, [new("pstree_entry", pid=1, ppid=0, pgid=1, sid=1, threads=[1])])
    core = x86_core(1, "prog")
    core.tc.cg_set = cg_set
    add("core-1.img", CORE, [core])
    add("files.img", FILES, files)
    add("mountpoints-13.img", MOUNTPOINTS, [new("mnt_entry", **m) for m in mounts])
    add("cgroup.img", CGROUP, [cgroups(cg_set, cg_path)])
    s = ImageSet(images, {n: 0o600 for n in images})
    s.save(d)
    for dev, data in tmpfs.items():
        (d / f"tmpfs-dev-{dev}.tar.gz.img").write_bytes(data)
    return d


def queue_file() -> object:
    f = reg(5, "/data/queue", mnt_id=183)
    f.reg.pos = 12
    return f


def source(d: Path) -> Path:
    return image_set(d, [
        mnt(166, 111, "/", fstype=17, dev=63, source="overlay"),
        mnt(168, 166, "/dev", fstype=5, dev=67),
        mnt(182, 168, "/dev/shm", fstype=5, dev=71),
        mnt(183, 166, "/data", root="/srv/jobs", ext_key="/data", flags=0x200000),
    ], cg_set=2, cg_path="/docker/source", files=[
        reg(1, "/prog", mnt_id=166), reg(2, "/dev/null", mnt_id=168),
        queue_file(),
        new("file_entry", type=2, id=3, pipe=dict(id=3, pipe_id=47325, flags=1, fown=dict(
            uid=0, euid=0, signum=0, pid_type=0, pid=0)))],
        tmpfs={67: b"source /dev", 71: b"source shm"})


def target(d: Path) -> Path:
    return image_set(d, [
        mnt(351, 257, "/", fstype=17, dev=109, source="overlay"),
        mnt(353, 351, "/dev", fstype=5, dev=80),
        mnt(370, 353, "/dev/shm", fstype=5, dev=84),
        mnt(460, 351, "/data", root="/var/lib/docker/volumes/x/_data", ext_key="/data",
            flags=0x280000, master_id=4),
        mnt(461, 351, "/sys/firmware", fstype=5, dev=85),
    ], cg_set=3, cg_path="/docker/template", files=[reg(1, "/.stub", mnt_id=351)],
        tmpfs={80: b"target /dev", 84: b"target shm", 85: b"target firmware"}, lsm=2)


def test_merge_keeps_the_source_process_and_takes_the_target_host(tmp_path):
    out = tmp_path / "out"
    got = hostimages.merge_host_facts(source(tmp_path / "src"), target(tmp_path / "tpl"),
                                      out, ["/data"])
    m = ImageSet.load(out)
    files = {f.id: f for f in m.entries("files.img")}
    # the source's files, each on the target's mount at the same place, offsets kept
    assert {i: (f.reg.name, f.reg.mnt_id) for i, f in files.items() if f.type == 1} == {
        1: ("/prog", 351), 2: ("/dev/null", 353), 5: ("/data/queue", 460)}
    assert files[5].reg.pos == 12 and files[3].pipe.pipe_id == 47325
    assert got["mount_ids"] == 3 and got["user_mounts"] == 1
    # the target's mount tree, the user's mount as the source had it
    mounts = {e.mountpoint: e for e in m.entries("mountpoints-13.img")}
    assert sorted(mounts) == ["/", "/data", "/dev", "/dev/shm", "/sys/firmware"]
    data = mounts["/data"]
    assert (data.mnt_id, data.parent_mnt_id, data.root, data.flags, data.master_id) == \
        (460, 351, "/srv/jobs", 0x200000, 0)
    # cgroups: the target's, the task in the target's container set
    assert m.core(1).tc.cg_set == 3
    assert m.entries("cgroup.img")[0].sets[1].ctls[0].path == "/docker/template"
    assert m.inventory.lsmtype == 2
    # tmpfs: /dev/shm's content is the user's (source), renamed to the target's device;
    # the runtime's /dev and /sys/firmware are the target's
    assert (out / "tmpfs-dev-84.tar.gz.img").read_bytes() == b"source shm"
    assert (out / "tmpfs-dev-80.tar.gz.img").read_bytes() == b"target /dev"
    assert (out / "tmpfs-dev-85.tar.gz.img").read_bytes() == b"target firmware"
    assert not (out / "tmpfs-dev-71.tar.gz.img").exists()
    assert all(p.stat().st_mode & 0o077 == 0 for p in out.iterdir())


def test_a_file_on_a_mount_the_target_lacks_is_refused(tmp_path):
    src = source(tmp_path / "src")
    s = ImageSet.load(src)
    s.entries("files.img")[2].reg.mnt_id = 999
    shutil.rmtree(src)
    s.save(src)
    with pytest.raises(Untranslatable, match="/data/queue is open on a mount"):
        hostimages.merge_host_facts(src, target(tmp_path / "tpl"), tmp_path / "out", ["/data"])


def test_shared_user_mount_is_refused(tmp_path):
    src = source(tmp_path / "src")
    s = ImageSet.load(src)
    s.entries("mountpoints-13.img")[3].shared_id = 7
    s.save(src)
    with pytest.raises(Untranslatable, match="propagation"):
        hostimages.merge_host_facts(src, target(tmp_path / "tpl"), tmp_path / "out", ["/data"])


def test_template_body_runs_nothing_of_the_user():
    body = {
        "Image": "reg/app:1", "Entrypoint": ["/app"], "Cmd": ["--serve"],
        "Env": ["SECRET=x"], "Labels": {"a": "b"}, "ExposedPorts": {"80/tcp": {}},
        "Volumes": {"/cache": {}}, "Healthcheck": {"Test": ["CMD", "/app", "--check"]},
        "HostConfig": {"Binds": ["/srv/jobs:/data:ro"], "NetworkMode": "bridge",
                       "PortBindings": {"80/tcp": [{"HostPort": "8080"}]},
                       "RestartPolicy": {"Name": "always"},
                       "Mounts": [{"Type": "tmpfs", "Target": "/scratch"}],
                       "SecurityOpt": ["seccomp=unconfined"]},
        "NetworkingConfig": {"EndpointsConfig": {"mynet": {}}},
    }
    mounts = [{"Type": "bind", "Source": "/srv/jobs", "Destination": "/data", "RW": False},
              {"Type": "volume", "Name": "abc", "Destination": "/cache", "RW": True}]
    t = template.template_body(body, mounts)
    assert t["Entrypoint"] == [template.STUB_PATH] and t["Cmd"] == []
    assert t["Env"] == [] and t["Healthcheck"] == {"Test": ["NONE"]}
    hc = t["HostConfig"]
    assert hc["Binds"] is None and hc["NetworkMode"] == "none" and hc["PortBindings"] == {}
    assert hc["RestartPolicy"] == {"Name": "no"}
    assert hc["Mounts"] == [{"Type": "volume", "Target": "/data", "ReadOnly": True},
                            {"Type": "volume", "Target": "/cache", "ReadOnly": False},
                            {"Type": "tmpfs", "Target": "/scratch"}]
    assert t["Volumes"] == {} and "NetworkingConfig" not in t
    assert hc["SecurityOpt"] == ["seccomp=unconfined"]  # what shapes the mount tree stays
    assert body["Entrypoint"] == ["/app"]  # the target's own body is untouched
    assert t["Hostname"] == "" and t["Labels"][template.LABEL] == str(template.VERSION)
    # none of the user's image: the empty one, as root in /; so one template serves every
    # image of this configuration
    assert (t["Image"], t["User"], t["WorkingDir"]) == (SCRATCH_IMAGE, "", "")
    other = template.template_body({**body, "Image": "reg/other:2", "User": "app",
                                    "WorkingDir": "/srv"}, mounts)
    assert other == t


@pytest.mark.parametrize("isa,machine", [("x86-64", 62), ("aarch64", 183)])
def test_stub_is_a_static_elf_of_the_isa(isa, machine):
    elf = template.stub_elf(isa)
    assert elf[:4] == b"\x7fELF" and struct.unpack_from("<H", elf, 18)[0] == machine
    entry, phoff = struct.unpack_from("<QQ", elf, 24)
    ptype, flags, off, vaddr, _pa, filesz = struct.unpack_from("<IIQQQQ", elf, phoff)
    assert (ptype, flags, off) == (1, 5, 0) and vaddr <= entry < vaddr + filesz == \
        vaddr + len(elf)


@pytest.mark.parametrize("isa", ["x86-64", "aarch64"])
def test_stub_blocks_until_killed(isa, tmp_path):
    """Runs it (natively, or through qemu-user's binfmt for the other ISA)."""
    exe = tmp_path / "stub"
    exe.write_bytes(template.stub_elf(isa))
    exe.chmod(0o755)
    try:
        proc = subprocess.run([str(exe)], timeout=1.5)
    except subprocess.TimeoutExpired:
        return  # still blocked: what it must do
    except OSError as exc:
        pytest.skip(f"cannot run a {isa} binary here: {exc}")
    pytest.fail(f"the stub exited with {proc.returncode}")


def test_cache_is_private_and_keyed(tmp_path, monkeypatch):
    monkeypatch.setenv("HMIGRATE_CACHE", str(tmp_path / "cache"))

    class Dst:
        info = {"ID": "E1", "KernelVersion": "6.12", "ServerVersion": "26"}

    k1 = template.cache_key(Dst, {"HostConfig": {"ShmSize": 1}})
    assert k1 != template.cache_key(Dst, {"HostConfig": {"ShmSize": 2}})

    class Other:
        info = {**Dst.info, "ID": "E2"}

    assert k1 != template.cache_key(Other, {"HostConfig": {"ShmSize": 1}})
    assert template.cached(k1) is None
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "inventory.img").write_bytes(b"x")
    template.store(k1, imgs)
    hit = template.cached(k1)
    assert hit is not None and (hit / "inventory.img").read_bytes() == b"x"
    assert (hit / "inventory.img").stat().st_mode & 0o777 == 0o600
    assert hit.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "cache" / "templates").stat().st_mode & 0o777 == 0o700


def test_target_facts_from_the_cache_create_nothing_on_the_target(tmp_path, monkeypatch):
    """A second move to the same target: the images come from the cache, and the target
    daemon is asked nothing (any call would fail here; its info is known already)."""
    monkeypatch.setenv("HMIGRATE_CACHE", str(tmp_path / "cache"))

    class NoApi:
        def __getattr__(self, name):
            raise AssertionError(f"the target's API was called: {name}")

    class Dst:
        name, info, labels, api = "arm", {"ID": "E1", "KernelVersion": "6.12"}, {}, NoApi()

        def __getattr__(self, name):
            raise AssertionError(f"the target was asked: {name}")

    body = {"Image": "reg/app:1", "HostConfig": {}}
    inspect = {"Mounts": [{"Type": "bind", "Destination": "/data", "RW": True}]}
    key = template.cache_key(Dst, template.template_body(body, inspect["Mounts"]))
    imgs = tmp_path / "taken"
    imgs.mkdir()
    (imgs / "inventory.img").write_bytes(b"inv")
    (imgs / template.ID_FILE).write_text("c0ffee")
    template.store(key, imgs)

    facts = template.target_facts(Dst(), body, inspect, tmp_path / "work" / "template", "t")
    assert facts.cached and facts.key == key and facts.container_id == "c0ffee"
    assert (facts.images / "inventory.img").read_bytes() == b"inv"
    assert (facts.images / "inventory.img").stat().st_mode & 0o777 == 0o600
    template.forget(key)
    assert template.cached(key) is None
