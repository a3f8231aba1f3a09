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
    # never read-only (daemons refuse it for an anonymous volume; the merge takes the
    # source's flags)
    assert hc["Mounts"] == [{"Type": "volume", "Target": "/data"},
                            {"Type": "volume", "Target": "/cache"},
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


def test_template_forgotten_while_copied_is_a_miss_not_half_a_set(tmp_path, monkeypatch):
    """A move copying a cached template while another move forgets it (its restore
    failed) gets no template rather than part of one: a restore from a set missing
    utsns-12.img failed on hm-arm during the soak of issue 14."""
    monkeypatch.setenv("HMIGRATE_CACHE", str(tmp_path / "cache"))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for n in ("inventory.img", "utsns-12.img", "ids-1.img"):
        (imgs / n).write_bytes(n.encode())
    template.store("k", imgs)
    assert template.load("k", tmp_path / "whole")
    assert sorted(p.name for p in (tmp_path / "whole").iterdir()) == \
        ["ids-1.img", "inventory.img", "utsns-12.img"]
    real_read = Path.read_bytes
    calls = []

    def forgotten_midway(self: Path) -> bytes:
        calls.append(self.name)
        if len(calls) == 2:
            template.forget("k")
        return real_read(self)

    template.store("k", imgs)
    monkeypatch.setattr(Path, "read_bytes", forgotten_midway)
    assert not template.load("k", tmp_path / "half")
    assert not (tmp_path / "half").exists() and template.cached("k") is None
    assert not [p for p in (tmp_path / "cache").rglob(".old-*")]  # nothing left behind


# -- facts derived from the host template (the configuration without its mounts) -------

HOSTS_DEV = 266338304  # the runtime's file binds: docker's data root filesystem


def host_template(d: Path, extra: list[dict] | None = None) -> Path:
    """target() as a host template gives it: no /data; the runtime's file binds, which
    the lab's checkpoints list after the cgroup and /dev mounts."""
    return image_set(d, [
        mnt(461, 351, "/sys/firmware", fstype=5, dev=85),
        mnt(455, 351, "/etc/hosts", root="/var/lib/docker/containers/t/hosts",
            ext_key="/etc/hosts", dev=HOSTS_DEV, source="/dev/vda"),
        mnt(454, 351, "/etc/resolv.conf", root="/var/lib/docker/containers/t/resolv.conf",
            ext_key="/etc/resolv.conf", dev=HOSTS_DEV, source="/dev/vda"),
        mnt(370, 353, "/dev/shm", fstype=5, dev=84),
        mnt(353, 351, "/dev", fstype=5, dev=80),
        mnt(351, 257, "/", fstype=17, dev=109, source="overlay"),
        *(extra or []),
    ], cg_set=3, cg_path="/docker/template", files=[reg(1, "/.stub", mnt_id=351)],
        tmpfs={80: b"target /dev", 84: b"target shm", 85: b"target firmware"}, lsm=2)


def test_graft_puts_the_user_mounts_where_docker_would(tmp_path):
    tpl = host_template(tmp_path / "tpl")
    assert hostimages.graft_user_mounts(tpl, ["/data/sub", "/data", "/cache"]) == 3
    entries = ImageSet.load(tpl).entries("mountpoints-13.img")
    order = [e.mountpoint for e in entries]
    # newest first, right after the runtime's file binds: as CRIU lists a real template's
    assert order == ["/sys/firmware", "/etc/hosts", "/etc/resolv.conf", "/data/sub",
                     "/data", "/cache", "/dev/shm", "/dev", "/"]
    by = {e.mountpoint: e for e in entries}
    assert len({e.mnt_id for e in entries}) == len(entries)
    assert by["/data"].parent_mnt_id == by["/cache"].parent_mnt_id == 351
    assert by["/data/sub"].parent_mnt_id == by["/data"].mnt_id  # nested: under the user's
    for p in ("/data", "/data/sub", "/cache"):
        e = by[p]
        # an anonymous volume's entry: docker's filesystem, external, a slave
        assert (e.root_dev, e.ext_key, e.fstype, e.source) == (HOSTS_DEV, p, 0, "/dev/vda")
        assert e.flags & hostimages.MS_SLAVE and e.master_id
    assert (tpl / "mountpoints-13.img").stat().st_mode & 0o777 == 0o600


def test_derived_facts_merge_as_the_configurations_own_template(tmp_path):
    """The source's images merged with the host template + graft, and with the
    configuration's own template (target(): /data an anonymous volume): the same images
    but for the mount id /data got."""
    tpl = host_template(tmp_path / "tpl")
    hostimages.graft_user_mounts(tpl, ["/data"])
    derived, own = tmp_path / "derived", tmp_path / "own"
    a = hostimages.merge_host_facts(source(tmp_path / "s1"), tpl, derived, ["/data"])
    b = hostimages.merge_host_facts(source(tmp_path / "s2"), target(tmp_path / "t"), own,
                                    ["/data"])
    assert a == b
    da, ob = ImageSet.load(derived), ImageSet.load(own)
    mounts = {e.mountpoint: e for e in da.entries("mountpoints-13.img")}
    theirs = {e.mountpoint: e for e in ob.entries("mountpoints-13.img")}
    data = mounts["/data"]
    assert (data.parent_mnt_id, data.root, data.flags, data.master_id, data.ext_key) == \
        (351, "/srv/jobs", 0x200000, 0, "/data")
    for f in hostimages.USER_MOUNT_FIELDS:
        assert getattr(data, f) == getattr(theirs["/data"], f), f
    queue = next(f for f in da.entries("files.img") if f.id == 5)
    assert queue.reg.mnt_id == data.mnt_id and queue.reg.pos == 12
    assert {p.name for p in derived.iterdir()} == {p.name for p in own.iterdir()}


@pytest.mark.parametrize("paths,others,why", [
    (["/dev/data"], [], "inside the runtime's dev tree"),
    (["/proc/x"], [], "inside the runtime's proc tree"),
    (["/etc/hosts"], [], "replaces one of the runtime's"),
    (["/"], [], "replaces one of the runtime's"),
    (["/data"], ["/data/tmp"], "the mount at /data/tmp is inside the user mount at /data"),
    (["/data", "/data"], [], "two user mounts at the same place"),
    (["/etc"], [], "the runtime's mount at /etc/hosts is inside the user mount at /etc"),
])
def test_graft_refusals_from_the_configuration(paths, others, why):
    assert why in hostimages.graft_refusal(paths, others)


def test_graft_refused_where_the_host_tree_is_in_the_way(tmp_path):
    tpl = host_template(tmp_path / "a", [mnt(470, 351, "/srv", fstype=5, dev=86)])
    with pytest.raises(Untranslatable, match="already has a mount at /srv"):
        hostimages.graft_user_mounts(tpl, ["/srv"])
    tpl = host_template(tmp_path / "b", [mnt(471, 351, "/opt/x", fstype=5, dev=87)])
    with pytest.raises(Untranslatable, match="/opt/x inside the user mount at /opt"):
        hostimages.graft_user_mounts(tpl, ["/opt"])
    bare = image_set(tmp_path / "c", [mnt(1, 0, "/", fstype=17)], 3, "/x", [], {})
    with pytest.raises(Untranslatable, match="no external bind mount"):
        hostimages.graft_user_mounts(bare, ["/data"])


def test_host_body_is_the_configuration_without_its_mounts():
    body = {"Image": "reg/app:1", "Volumes": {"/cache": {}},
            "HostConfig": {"Binds": ["/srv/jobs:/data"], "ShmSize": 1 << 20,
                           "Mounts": [{"Type": "tmpfs", "Target": "/scratch"}]}}
    one = template.template_body(body, [
        {"Type": "bind", "Destination": "/data", "RW": True},
        {"Type": "volume", "Destination": "/cache", "RW": True}])
    other = template.template_body({**body, "HostConfig": {**body["HostConfig"],
                                                           "Binds": ["/x:/elsewhere:ro"]}},
                                   [{"Type": "bind", "Destination": "/elsewhere", "RW": False}])
    assert template.user_paths(one) == ["/data", "/cache"]
    assert template.host_body(one) == template.host_body(other)
    hb = template.host_body(one)
    assert hb["HostConfig"]["Mounts"] == [{"Type": "tmpfs", "Target": "/scratch"}]
    assert hb["HostConfig"]["ShmSize"] == 1 << 20  # what shapes the runtime's mounts stays
    assert template.derivation_refusal(one) == ""
    nested = template.template_body({"HostConfig": {"Tmpfs": {"/data/tmp": ""}}},
                                    [{"Type": "bind", "Destination": "/data", "RW": True}])
    assert "/data/tmp" in template.derivation_refusal(nested)


class _Target:
    """A target whose API must not be called; its info is known."""

    name, info, labels = "arm", {"ID": "E1", "KernelVersion": "6.12"}, {}

    @property
    def api(self):
        raise AssertionError("the target's API was called")


def own_templates_taken(tmp_path, monkeypatch) -> list[dict]:
    """A private cache, and a fake take_checkpoint that records each template body and
    writes an own (not derivable) template; returns the record."""
    monkeypatch.setenv("HMIGRATE_CACHE", str(tmp_path / "cache"))
    taken: list[dict] = []

    def take(dst, body, into, *a, **k):
        taken.append(body)
        into.mkdir(parents=True)
        (into / "inventory.img").write_bytes(b"own")
        return "own-tpl"

    monkeypatch.setattr(template, "take_checkpoint", take)
    return taken


def test_first_move_of_a_configuration_to_a_known_host_runs_nothing(tmp_path, monkeypatch):
    taken = own_templates_taken(tmp_path, monkeypatch)
    body = {"Image": "reg/app:1", "HostConfig": {}}
    inspect = {"Mounts": [{"Type": "bind", "Destination": "/data", "RW": True}]}
    own = template.template_body(body, inspect["Mounts"])
    host = template.host_body(own)
    host_template(tmp_path / "host")
    (tmp_path / "host" / template.ID_FILE).write_text("host-tpl")
    template.store(template.cache_key(_Target, host), tmp_path / "host")

    facts = template.target_facts(_Target(), body, inspect, tmp_path / "w1" / "t", "t")
    assert (facts.derived, facts.cached, facts.container_id) == (True, True, "host-tpl")
    assert facts.key == template.cache_key(_Target, host)
    assert facts.config_key == template.cache_key(_Target, own)
    assert "/data" in {e.mountpoint for e in ImageSet.load(facts.images).entries(
        "mountpoints-13.img")}
    assert not taken
    # the cached host template itself is not changed by the graft
    assert "/data" not in {e.mountpoint for e in ImageSet.load(template.cached(
        facts.key)).entries("mountpoints-13.img")}

    # a restore with them failed: that configuration takes its own template from now on
    template.mark_underivable(facts.config_key)
    again = template.target_facts(_Target(), body, inspect, tmp_path / "w2" / "t", "t")
    assert not again.derived and again.key == facts.config_key
    assert again.derivation == "a restore with derived facts failed before"
    assert taken == [own]


def test_a_new_host_takes_the_host_template_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HMIGRATE_CACHE", str(tmp_path / "cache"))
    taken: list[dict] = []

    def take(dst, body, into, *a, **k):
        taken.append(body)
        host_template(into)
        return "new-tpl"

    monkeypatch.setattr(template, "take_checkpoint", take)
    inspect = {"Mounts": [{"Type": "volume", "Destination": "/var/db", "RW": True}]}
    facts = template.target_facts(_Target(), {"HostConfig": {}}, inspect,
                                  tmp_path / "w" / "t", "t")
    assert facts.derived and not facts.cached and facts.container_id == "new-tpl"
    assert [template.user_paths(b) for b in taken] == [[]]  # the host template, no mounts
    other = {"Mounts": [{"Type": "bind", "Destination": "/srv", "RW": False}]}
    second = template.target_facts(_Target(), {"HostConfig": {}}, other,
                                   tmp_path / "w2" / "t", "t")
    assert second.derived and second.cached and len(taken) == 1


def test_a_configuration_that_cannot_be_grafted_takes_its_own_template(tmp_path, monkeypatch):
    taken = own_templates_taken(tmp_path, monkeypatch)
    inspect = {"Mounts": [{"Type": "bind", "Destination": "/dev/fuse-data", "RW": True}]}
    facts = template.target_facts(_Target(), {"HostConfig": {}}, inspect,
                                  tmp_path / "w" / "t", "t")
    assert not facts.derived and "dev tree" in facts.derivation
    assert template.user_paths(taken[0]) == ["/dev/fuse-data"]


class _FakeApi:
    """The engine calls take_checkpoint makes, recorded; `fail`: the call that fails."""

    def __init__(self, fail: str = ""):
        self.calls: list[tuple] = []
        self.fail = fail

    def _call(self, name, *args):
        self.calls.append((name, *args))
        if name == self.fail:
            import docker.errors
            raise docker.errors.APIError(f"{name} failed")

    def _url(self, path):
        return path

    def _post_json(self, url, data, params):
        self._call("create", params["name"])
        return {"Id": "tpl"}

    def _result(self, res, json=False):
        return res

    def put_archive(self, cid, path, data):
        self._call("put_archive", cid)

    def start(self, cid):
        self._call("start", cid)

    def top(self, cid, ps_args=""):
        return {"Processes": [["1", "S", template.STUB_PATH]]}

    def remove_container(self, cid, force=False, v=False):
        self._call("remove", cid)


class _FakeHost:
    name, isa, labels = "arm", "aarch64", {}

    def __init__(self, fail: str = ""):
        self.api = _FakeApi(fail)

    def checkpoint_dir(self, cid):
        return f"/var/lib/docker/containers/{cid}/checkpoints"

    def create_helper(self, binds):
        self.api._call("create_helper", *binds)
        return "helper"

    def checkpoint_create(self, cid, name, exit=True):
        self.api._call("checkpoint", cid)

    def remove_quietly(self, cid):
        self.api._call("remove", cid)


@pytest.mark.parametrize("keep", [False, True])
def test_template_removals_kept_for_later_in_a_migration(
        tmp_path, monkeypatch, keep):
    from docker_hmigrate import transfer

    monkeypatch.setattr(transfer, "download_folder",
                        lambda what, host, helper, path, into: host.api._call("read", helper))
    dst = _FakeHost()
    records: list = []
    cid = template.take_checkpoint(dst, {"Image": "x"}, tmp_path / "imgs", "t",
                                   record=records.append, keep=keep)
    names = [c[0] for c in dst.api.calls]
    assert cid == "tpl" and ("create_helper", "/var/lib/docker/containers/tpl/checkpoints:"
                             f"{transfer.SRC_MOUNT}:ro") in dst.api.calls
    assert names.index("read") > names.index("checkpoint")
    assert (tmp_path / "imgs" / template.ID_FILE).read_text() == "tpl"
    if keep:  # left for the migration's end: still recorded for a rollback
        assert "remove" not in names and records == ["tpl"]
    else:
        assert sorted(c[1] for c in dst.api.calls if c[0] == "remove") == ["helper", "tpl"]
        assert records == ["tpl", None]


def test_a_failed_template_removes_its_container_and_helper_even_if_kept(tmp_path,
                                                                        monkeypatch):
    from docker_hmigrate import transfer

    def broken(what, host, helper, path, into):
        raise transfer.TransferInterrupted("the stream broke")

    monkeypatch.setattr(transfer, "download_folder", broken)
    dst = _FakeHost()
    records: list = []
    with pytest.raises(transfer.TransferInterrupted):
        template.take_checkpoint(dst, {"Image": "x"}, tmp_path / "imgs", "t",
                                 record=records.append, keep=True)
    assert sorted(c[1] for c in dst.api.calls if c[0] == "remove") == ["helper", "tpl"]
    assert records == ["tpl", None]


def test_a_freeze_that_gave_up_is_tried_again(tmp_path, monkeypatch):
    import docker.errors

    from docker_hmigrate import transfer

    monkeypatch.setattr(transfer, "download_folder", lambda *a: None)
    no_wait = template.wait_fixed(0)
    monkeypatch.setattr(template, "wait_fixed", lambda s: no_wait)
    dst = _FakeHost()
    tries = []

    def checkpoint(cid, name, exit=True):
        tries.append(cid)
        if len(tries) < 2:
            raise docker.errors.APIError("Cannot checkpoint container: OCI runtime pause "
                                         "failed: unable to freeze: unknown")

    dst.checkpoint_create = checkpoint
    assert template.take_checkpoint(dst, {"Image": "x"}, tmp_path / "i", "t") == "tpl"
    assert tries == ["tpl", "tpl"]
    dst, tries[:] = _FakeHost(), []

    def broken(cid, name, exit=True):
        tries.append(cid)
        raise docker.errors.APIError("criu failed: type NOTIFY errno 0")

    dst.checkpoint_create = broken
    with pytest.raises(Exception, match="template checkpoint on arm failed"):
        template.take_checkpoint(dst, {"Image": "x"}, tmp_path / "j", "t")
    assert tries == ["tpl"]  # another failure: not tried again
