"""Lining up a recoded image set with the target's template checkpoint before the merge
(recode.merge_into_template), for programs of several processes and shared memory.

The template (the same image started on the target) supplies the host-describing
images, the recode the process images. Both describe the same program in the same
state, but ids the kernels and CRIU hand out differ:
- pids: the worker of nginx is 7 on the lab's x86-64 host, 8 on the aarch64 one; the
  template's per-process host images (ids-N, fs-N) are renamed to the source's pids,
  process matched to process by its place in the tree;
- shared memory: the memfd's file id and inode number (which names pagemap-shmem-N);
  the recoded VMAs and shmem pagemap take the template's;
- epoll: each watched fd's `data` is the program's own (nginx stores a pointer to its
  connection there): the template's values are its own process's addresses, so the
  source's are written into the template's entries, fd by fd.
Open files must match fd for fd (number and type): a source with a client connection
open, or any file the template lacks, is refused rather than restored without it.
"""

from __future__ import annotations

from pathlib import Path

from docker_hmigrate.criu import ImageSet
from docker_hmigrate.criu.schema import FdType
from docker_hmigrate.recode import shared
from docker_hmigrate.recode.frames import Untranslatable

# per-process images of the host side (named after the pid), renamed with the process
PER_PID = ("ids-", "fs-", "creds-", "sigacts-", "itimers-", "posix-timers-", "rlimit-")


def tree_order(s: ImageSet) -> list[int]:
    """Pids in depth-first order, children by pid: the same program forking the same way
    gives the same order on both hosts whatever pids it got."""
    kids: dict[int, list[int]] = {}
    for p in s.pstree:
        kids.setdefault(p.ppid, []).append(p.pid)
    out: list[int] = []

    def walk(pid: int) -> None:
        out.append(pid)
        for c in sorted(kids.get(pid, [])):
            walk(c)

    walk(s.root_pid)
    return out


def pid_map(src: ImageSet, tpl: ImageSet) -> dict[int, int]:
    """Template pid -> source pid."""
    a, b = tree_order(src), tree_order(tpl)
    shape = [(len(src.threads(p)), src.core(p).tc.comm) for p in a]
    tshape = [(len(tpl.threads(p)), tpl.core(p).tc.comm) for p in b]
    if len(a) != len(b) or [c for _n, c in shape] != [c for _n, c in tshape]:
        raise Untranslatable(f"the target's template runs processes {tshape}, the source "
                             f"{shape}: they cannot be lined up")
    return dict(zip(b, a, strict=True))


def _fds(s: ImageSet, pid: int) -> dict[int, object]:
    return {fd.fd: fd for fd in s.fdinfo(pid)}


def check_fds(src: ImageSet, tpl: ImageSet, pids: dict[int, int]) -> None:
    for tp, sp in pids.items():
        a = {n: FdType(f.type).name for n, f in _fds(src, sp).items()}
        b = {n: FdType(f.type).name for n, f in _fds(tpl, tp).items()}
        if a != b:
            extra = {n: t for n, t in a.items() if b.get(n) != t}
            raise Untranslatable(
                f"process {sp} has open files the target's fresh copy lacks "
                f"({', '.join(f'fd {n}: {t}' for n, t in sorted(extra.items())) or 'fewer'}): "
                f"a connection in progress? retry when it is closed")


def copy_epoll_data(src: ImageSet, tpl: ImageSet, pids: dict[int, int]) -> int:
    """The source's epoll user data into the template's epoll entries; returns fds set."""
    n = 0
    tfiles, sfiles = tpl.files, src.files
    for tp, sp in pids.items():
        sfd, tfd = _fds(src, sp), _fds(tpl, tp)
        for num, f in tfd.items():
            if f.type != FdType.EVENTPOLL:
                continue
            a, b = sfiles[sfd[num].id].epfd, tfiles[f.id].epfd
            want = {t.tfd: t for t in a.tfd}
            if sorted(want) != sorted(t.tfd for t in b.tfd):
                raise Untranslatable(f"process {sp}'s epoll fd {num} watches fds "
                                     f"{sorted(want)}, the template's "
                                     f"{sorted(t.tfd for t in b.tfd)}")
            for t in b.tfd:
                t.data, t.events = want[t.tfd].data, want[t.tfd].events
                n += 1
    return n


def align_shared(rec: ImageSet, tpl: ImageSet, pids: dict[int, int]) -> list[tuple[str, str]]:
    """Recoded shared-memory VMAs and pagemaps renamed to the template's memfd ids,
    objects matched by (processes mapping it, size, order of address). Returns (old,
    new) pagemap-shmem file names."""
    a, b = shared.shared_objects(rec), shared.shared_objects(tpl)
    if not a:
        return []

    def key(obj: shared.SharedObject, to_src: dict[int, int]) -> tuple:
        return tuple(sorted(to_src.get(p, p) for p, _v in obj.vmas)), obj.size

    def order(o: shared.SharedObject, to_src: dict[int, int]) -> tuple:
        return key(o, to_src), min(v.start for _p, v in o.vmas)

    sa = sorted(a.values(), key=lambda o: order(o, {}))
    sb = sorted(b.values(), key=lambda o: order(o, pids))
    if [key(o, {}) for o in sa] != [key(o, pids) for o in sb]:
        raise Untranslatable("the target's template shares memory differently from the "
                             "source (processes or sizes differ)")
    renames = []
    for x, y in zip(sa, sb, strict=True):
        if (x.file_id is None) != (y.file_id is None):
            raise Untranslatable("source and target CRIU write shared memory differently")
        for _p, v in x.vmas:
            v.shmid = y.file_id if y.file_id is not None else y.shmid
        if x.shmid != y.shmid:
            renames.append((shared.SHMEM_PAGEMAP.format(x.shmid),
                            shared.SHMEM_PAGEMAP.format(y.shmid)))
    return renames


def prepare(recoded: Path, template: Path) -> dict[int, int]:
    """Edit both directories so that merging process images works (see the module doc).
    Returns the pid map (template pid -> source pid)."""
    rec, tpl = ImageSet.load(recoded), ImageSet.load(template)
    pids = pid_map(rec, tpl)
    check_fds(rec, tpl, pids)
    copy_epoll_data(rec, tpl, pids)
    renames = align_shared(rec, tpl, pids)
    for old, new in renames:
        img = rec.images.pop(old)
        img.name = new
        rec.images[new] = img
        rec.modes[new] = rec.modes.pop(old, 0o600)
        (recoded / old).unlink()
    rec.save(recoded)
    tpl.save(template)
    # per-process host images follow their process; two passes: pids may swap
    moves = []
    for tp, sp in pids.items():
        for prefix in PER_PID:
            f = template / f"{prefix}{tp}.img"
            if tp != sp and f.exists():
                moves.append((f, template / f"{prefix}{sp}.img"))
    for f, new in moves:
        f.rename(new.with_name(new.name + ".moving"))
    for _f, new in moves:
        new.with_name(new.name + ".moving").rename(new)
    return pids
