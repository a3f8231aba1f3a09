"""The source's own checkpoint, recoded, with the target host's facts put in
(`merge_host_facts`): what a same-ISA move restores, plus what only the target host can
say. See docs/recode.md, "Source images and target facts".

Image by image (CRIU 4.x, the images a Docker checkpoint holds):
- from the **source** (recoded where ISA-specific: core, mm, pagemap, pages): pstree,
  ids, fs, files, fdinfo, pipes(-data), unixsk/inetsk, tcp-stream, sk-queues, eventfd,
  eventpoll(-tfd), timens, utsns, ipcns-var, seccomp, creds/sigacts/rlimit/itimers,
  descriptors.json (runc's stdio names, which match the source's files.img), and the
  tmpfs contents of user tmpfs mounts and /dev/shm. None of these has an ISA-specific
  field (ids, flags, offsets, addresses and ports, sequence numbers, queued bytes);
- from the **target** (the inert template's checkpoint, template.py): the mount tree
  (mountpoints-*.img: masked and read-only paths, cgroup mounts, the runtime's own
  mounts differ between daemons and kernels), the tmpfs contents under /dev, /sys and
  /proc, cgroup.img (controllers and the container's cgroup paths), and the
  inventory's lsmtype and network_lock_method.
The source's references into the replaced images are renumbered: every mount id (open
files, unix sockets bound to a path) to the target mount at the same path, every task's
cgroup set to the target's.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from docker_hmigrate.criu import ImageSet
from docker_hmigrate.criu.image import Entry
from docker_hmigrate.criu.schema import FdType
from docker_hmigrate.recode.frames import Untranslatable

TMPFS_IMAGE = re.compile(r"tmpfs-dev-(\d+)\.tar\.gz\.img")
HOST_TREES = ("/dev", "/sys", "/proc")  # tmpfs below these: the runtime's, not the user's
USER_TMPFS = ("/dev/shm",)
MS_SLAVE = 1 << 19


def _mounts(s: ImageSet) -> tuple[str, list]:
    names = [n for n in s.images if n.startswith("mountpoints-")]
    if len(names) != 1:
        raise Untranslatable(f"expected one mount namespace image, found {names or 'none'}")
    return names[0], s.entries(names[0])


def _by_path(mounts: list) -> dict[tuple[str, int], object]:
    """(mount point, n-th mount on that path in mount-id order) -> entry."""
    out: dict[tuple[str, int], object] = {}
    seen: dict[str, int] = {}
    for m in sorted(mounts, key=lambda m: m.mnt_id):
        n = seen.get(m.mountpoint, 0)
        seen[m.mountpoint] = n + 1
        out[(m.mountpoint, n)] = m
    return out


def mount_map(src: list, tpl: list) -> dict[int, object]:
    """Source mount id -> the target's mount entry at the same place (None: no such
    mount on the target)."""
    a, b = _by_path(src), _by_path(tpl)
    return {m.mnt_id: b.get(k) for k, m in a.items()}


def user_tmpfs(mountpoint: str) -> bool:
    return mountpoint in USER_TMPFS or not any(
        mountpoint == p or mountpoint.startswith(p + "/") for p in HOST_TREES)


def _renumber_files(s: ImageSet, mounts: dict[int, object]) -> int:
    """Every mnt_id in files.img to the target's; refuses a file on a mount the target
    does not have. Returns the number of entries changed."""
    n = 0
    for entry in s.entries("files.img"):
        if entry.HasField("ify") or entry.HasField("ffy"):
            raise Untranslatable("inotify/fanotify watches name the source host's devices "
                                 "and file handles")
        for kind in ("reg", "usk"):
            if not entry.HasField(kind):
                continue
            obj = getattr(entry, kind)
            if not obj.HasField("mnt_id") or obj.mnt_id < 0:
                continue
            target = mounts.get(obj.mnt_id)
            if target is None:
                what = obj.name if kind == "reg" else obj.name.decode(errors="replace")
                raise Untranslatable(f"{what!s} is open on a mount ({obj.mnt_id}) the "
                                     f"target container does not have")
            if obj.mnt_id != target.mnt_id:
                obj.mnt_id = target.mnt_id
                n += 1
    return n


def _cgroup_sets(src: ImageSet, tpl: ImageSet) -> dict[int, int]:
    """Source cgroup set id -> the target's: the root set and the container's."""
    out = {src.inventory.root_cg_set: tpl.inventory.root_cg_set}
    want = tpl.core(tpl.root_pid).tc.cg_set
    for pid in src.pids:
        for tid in src.threads(pid):
            c = src.core(tid)
            for cs in (c.tc.cg_set if c.HasField("tc") else 0, c.thread_core.cg_set):
                if cs and out.setdefault(cs, want) != want and cs != src.inventory.root_cg_set:
                    raise Untranslatable(f"thread {tid} is in another cgroup than its "
                                         f"container's")
    return out


# What a user mount (bind or volume) looks like, taken from the source's entry: the
# template has an anonymous volume there (docker mounts those as slaves, relatime), the
# target container the user's own mount, configured as on the source.
USER_MOUNT_FIELDS = ("fstype", "flags", "sb_flags", "root", "source", "options",
                     "shared_id", "master_id", "ext_key")


def user_mounts(src_mounts: list, tpl_mounts: list, mounts: dict[int, object],
                paths: list[str]) -> int:
    """The source's description of each user mount into the template's entry at the same
    path (which keeps its own mount id and parent). Returns how many."""
    n = 0
    for m in src_mounts:
        if m.mountpoint not in paths:
            continue
        t = mounts.get(m.mnt_id)
        if t is None or not (m.ext_key and t.ext_key):
            raise Untranslatable(f"the mount at {m.mountpoint} is not an external bind mount "
                                 f"on both hosts")
        if m.shared_id or m.master_id:
            raise Untranslatable(f"the mount at {m.mountpoint} has shared or slave "
                                 f"propagation: only private bind mounts are carried across")
        for f in USER_MOUNT_FIELDS:
            if m.HasField(f):
                setattr(t, f, getattr(m, f))
            else:
                t.ClearField(f)
        n += 1
    return n


def user_paths(inspect: dict) -> list[str]:
    """Where the container's own data is mounted (bind mounts and volumes): the template
    has empty volumes there, the target container the user's mounts."""
    return [m["Destination"] for m in inspect.get("Mounts") or []
            if m.get("Type") in ("bind", "volume")]


def merge_host_facts(recoded: Path, template: Path, out: Path,
                     user_paths: list[str] | None = None) -> dict[str, int]:
    """Write into `out` the recoded source set with the target's host images (see the
    module doc); user_paths: the container's bind mount and volume destinations. Returns
    counts of what was renumbered, for the report."""
    src, tpl = ImageSet.load(recoded), ImageSet.load(template)
    src_name, src_mounts = _mounts(src)
    tpl_name, tpl_mounts = _mounts(tpl)
    mounts = mount_map(src_mounts, tpl_mounts)
    changed = _renumber_files(src, mounts)
    users = user_mounts(src_mounts, tpl_mounts, mounts, user_paths or [])

    # the mount tree: the target's, under the source's mount namespace id
    del src.images[src_name]
    img = tpl.images[tpl_name]
    img.name = src_name
    src.images[src_name] = img
    src.modes[src_name] = 0o600

    # tmpfs contents (named by the mount's device): the user's from the source, renamed to
    # the target mount's device; the runtime's from the target
    tmpfs: dict[str, bytes] = {}
    src_dev = {m.root_dev: m for m in src_mounts}
    for name in list(src.images):
        m = TMPFS_IMAGE.fullmatch(name)
        if not m:
            continue
        raw = src.images.pop(name).to_bytes()
        src.modes.pop(name, None)
        mount = src_dev.get(int(m.group(1)))
        if mount is not None and user_tmpfs(mount.mountpoint):
            target = mounts.get(mount.mnt_id)
            if target is None:
                raise Untranslatable(f"the tmpfs at {mount.mountpoint} has no place on the "
                                     f"target")
            tmpfs[f"tmpfs-dev-{target.root_dev}.tar.gz.img"] = raw
    tpl_dev = {m.root_dev: m for m in tpl_mounts}
    for name in tpl.images:
        m = TMPFS_IMAGE.fullmatch(name)
        if m and name not in tmpfs:
            mount = tpl_dev.get(int(m.group(1)))
            if mount is None or not user_tmpfs(mount.mountpoint):
                tmpfs[name] = tpl.images[name].to_bytes()

    # cgroups: the target's controllers and paths; tasks point at its sets
    sets = _cgroup_sets(src, tpl)
    src.images["cgroup.img"] = tpl.images["cgroup.img"]
    src.modes["cgroup.img"] = 0o600
    for pid in src.pids:
        for tid in src.threads(pid):
            c = src.core(tid)
            if c.HasField("tc") and c.tc.cg_set:
                c.tc.cg_set = sets[c.tc.cg_set]
            if c.thread_core.cg_set:
                c.thread_core.cg_set = sets[c.thread_core.cg_set]
    inv = src.inventory
    inv.root_cg_set = tpl.inventory.root_cg_set
    inv.lsmtype = tpl.inventory.lsmtype
    inv.network_lock_method = tpl.inventory.network_lock_method

    if out.exists():
        shutil.rmtree(out)
    src.save(out)
    for name, raw in tmpfs.items():
        fd = os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
    return {"mount_ids": changed, "tmpfs": len(tmpfs), "user_mounts": users,
            "files": sum(1 for e in src.entries("files.img") if e.type != FdType.REG)}


# Where docker itself bind-mounts a file of the container's folder: a user mount there
# replaces docker's own, which a host template (without the user's mounts) still has.
RUNTIME_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")


def graft_refusal(paths: list[str], other_mounts: list[str]) -> str:
    """Why the user's mounts at `paths` cannot be put into a host template's mount tree
    by `graft_user_mounts` (empty: they can). `other_mounts`: the configuration's other
    mount destinations (tmpfs), which the host template has. Decided from the
    configuration alone, before anything is taken; the tree itself is checked again by
    the graft."""
    for p in paths:
        if not p.startswith("/") or p == "/" or p in RUNTIME_FILES:
            return f"a user mount at {p} replaces one of the runtime's"
        if any(p == t or p.startswith(t + "/") for t in HOST_TREES):
            return f"a user mount at {p} is inside the runtime's {p.split('/')[1]} tree"
        under = [t for t in RUNTIME_FILES + HOST_TREES if t.startswith(p.rstrip("/") + "/")]
        if under:
            return f"the runtime's mount at {under[0]} is inside the user mount at {p}"
        below = [o for o in other_mounts if o.startswith(p.rstrip("/") + "/") or o == p]
        if below:
            return f"the mount at {below[0]} is inside the user mount at {p}"
    if len(set(paths)) != len(paths):
        return "two user mounts at the same place"
    return ""


def _external_bind(mounts: list) -> object:
    """The runtime's own external bind mount of a file of the container's folder (its
    /etc/hosts): what an anonymous volume's entry looks like but for its path (the same
    filesystem: docker's data root)."""
    for m in mounts:
        if m.mountpoint in RUNTIME_FILES and m.ext_key:
            return m
    raise Untranslatable("the host template has no external bind mount of /etc/hosts, "
                         "/etc/hostname or /etc/resolv.conf to model the user's mounts on")


def graft_user_mounts(images: Path, paths: list[str]) -> int:
    """Turn a host template's checkpoint (the configuration without its bind mounts and
    volumes) into what the configuration's own template would have given: one external
    bind mount entry per user mount path, as docker makes an anonymous volume (docker's
    data root filesystem, a slave, relatime; the merge gives it the source's fields),
    under the deepest mount holding its path, with new mount ids. Edits `images` in
    place; returns how many entries it added. Raises Untranslatable where the tree does
    not fit (a mount already there, or a runtime mount below the path)."""
    s = ImageSet.load(images)
    name, mounts = _mounts(s)
    proto = _external_bind(mounts)
    taken = {m.mountpoint for m in mounts}
    next_id = max(m.mnt_id for m in mounts) + 1
    added: list = []
    for p in sorted(paths, key=lambda p: (p.count("/"), p)):  # parents before children
        p = p.rstrip("/") or "/"
        if p in taken:
            raise Untranslatable(f"the host template already has a mount at {p}")
        inside = [m for m in mounts + added if m.mountpoint.startswith(p + "/")]
        if inside:
            raise Untranslatable(f"the host template has a mount at {inside[0].mountpoint} "
                                 f"inside the user mount at {p}")
        parent = max((m for m in mounts + added
                      if m.mountpoint == "/" or p.startswith(m.mountpoint + "/")),
                     key=lambda m: (len(m.mountpoint), m.mnt_id), default=None)
        if parent is None:
            raise Untranslatable("the host template has no root mount")
        entry = type(proto)()
        entry.CopyFrom(proto)
        entry.mnt_id, entry.parent_mnt_id, entry.mountpoint = next_id, parent.mnt_id, p
        entry.root, entry.ext_key = p, p  # the merge puts the source's in
        # a slave, as docker mounts an anonymous volume; its master (the host's mount of
        # docker's data root) is not known here: the merge gives the entry the source's
        # propagation (a slave or shared user mount is refused there)
        entry.flags |= MS_SLAVE
        entry.master_id = entry.master_id or 1
        next_id += 1
        taken.add(p)
        added.append(entry)
    if not added:
        return 0
    # where CRIU writes a container's user mounts: right after the runtime's own file
    # binds (the images list mounts newest first; runc mounts the user's before those)
    img = s.images[name]
    at = 1 + max(i for i, e in enumerate(img.entries) if e.msg.mountpoint in RUNTIME_FILES)
    img.entries[at:at] = [Entry(msg=m) for m in reversed(added)]
    s.modes[name] = 0o600
    s.save(images)
    return len(added)
