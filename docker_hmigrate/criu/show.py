"""`python -m docker_hmigrate.criu show DIR`: a readable summary of an image set."""

from __future__ import annotations

from docker_hmigrate import isa
from docker_hmigrate.criu.imageset import ImageSet
from docker_hmigrate.criu.isa import AT_NAMES, check_supported, vma_kind
from docker_hmigrate.criu.schema import FdType, March

PROT = ((1, "r"), (2, "w"), (4, "x"))


def _prot(p: int) -> str:
    return "".join(c if p & bit else "-" for bit, c in PROT)


def _regs(core) -> str:
    own = isa.by_criu_march(core.mtype)
    if own is None:
        return "(registers of this machine not decoded)"
    return own.describe_regs(core)


def summary(s: ImageSet) -> str:
    out: list[str] = []
    w = out.append
    inv = s.inventory
    w(f"image set {s.path}: img_version {inv.img_version}, arch {s.arch.name}, "
      f"{len(s.images)} files")
    for p in s.pstree:
        w(f"process {p.pid} (ppid {p.ppid}, pgid {p.pgid}, sid {p.sid}) "
          f"comm={s.core(p.pid).tc.comm!r} "
          f"exe={s.exe_path(p.pid) if s.has_mm(p.pid) else None!r}")
        for tid in s.threads(p.pid):
            core = s.core(tid)
            comm = core.thread_core.comm or core.tc.comm
            w(f"  thread {tid} {comm!r} {March(core.mtype).name}: {_regs(core)}")
        if not s.has_mm(p.pid):
            w(f"  no address space (task state {s.core(p.pid).tc.task_state})")
            continue
        mm = s.mm(p.pid)
        w(f"  code {mm.mm_start_code:#x}-{mm.mm_end_code:#x} data {mm.mm_start_data:#x}-"
          f"{mm.mm_end_data:#x} brk {mm.mm_start_brk:#x}-{mm.mm_brk:#x} "
          f"stack {mm.mm_start_stack:#x}")
        w(f"  args {mm.mm_arg_start:#x}-{mm.mm_arg_end:#x} env {mm.mm_env_start:#x}-"
          f"{mm.mm_env_end:#x}")
        aux = list(mm.mm_saved_auxv)
        pairs = zip(aux[::2], aux[1::2], strict=False)  # an odd tail is no pair
        named = [f"{AT_NAMES[k]}={v:#x}" for k, v in pairs if k in AT_NAMES]
        w(f"  auxv: {' '.join(named)}")
        mem = s.memory(p.pid)
        for v in mm.vmas:
            kind = vma_kind(v.status)
            if kind == "anon" and v.start <= mm.mm_start_stack < v.end:
                kind = "stack"  # CRIU marks only some stacks with VMA_AREA_STACK
            path = s.path_of(v.shmid) if kind.startswith("file") else ""
            dumped = sum(min(r.end, v.end) - max(r.vaddr, v.start) for r in mem.runs
                         if r.offset is not None and r.vaddr < v.end and r.end > v.start)
            w(f"    {v.start:#014x}-{v.end:#014x} {_prot(v.prot)} {kind:<9} "
              f"dumped {dumped // 4096:>4}p {path or ''}".rstrip())
        fds = ", ".join(f"{fd.fd}:{FdType(fd.type).name}" for fd in s.fdinfo(p.pid))
        w(f"  fds: {fds}")
    problems = check_supported(s)
    w("not understood: " + ("; ".join(problems) if problems else "none"))
    return "\n".join(out)
