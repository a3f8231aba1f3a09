"""What recode must change when the ISA changes, and what this library cannot read."""

from __future__ import annotations

from docker_hmigrate import isa
from docker_hmigrate.criu.image import unknown_fields
from docker_hmigrate.criu.imageset import ImageSet
from docker_hmigrate.criu.memory import PE_PARENT
from docker_hmigrate.criu.schema import March, TaskState

# vma_entry.status bits (CRIU's VMA_AREA_* / VMA_* flags)
VMA_AREA_REGULAR = 1 << 0
VMA_AREA_STACK = 1 << 1
VMA_AREA_VSYSCALL = 1 << 2
VMA_AREA_VDSO = 1 << 3
VMA_AREA_HEAP = 1 << 5
VMA_FILE_PRIVATE = 1 << 6
VMA_FILE_SHARED = 1 << 7
VMA_ANON_SHARED = 1 << 8
VMA_ANON_PRIVATE = 1 << 9
VMA_AREA_SYSVIPC = 1 << 10
VMA_AREA_SOCKET = 1 << 11
VMA_AREA_VVAR = 1 << 12
VMA_AREA_AIORING = 1 << 13
VMA_AREA_MEMFD = 1 << 14
VMA_AREA_SHSTK = 1 << 15
VMA_AREA_GUARD = 1 << 16
VMA_AREA_UPROBES = 1 << 17

SUPPORTED_ARCHES = tuple(March(i.criu_march) for i in isa.ISAS)

# auxv keys that describe the machine or the kernel's mappings
AT_NAMES = {3: "AT_PHDR", 7: "AT_BASE", 9: "AT_ENTRY", 15: "AT_PLATFORM", 16: "AT_HWCAP",
            26: "AT_HWCAP2", 33: "AT_SYSINFO_EHDR", 51: "AT_MINSIGSTKSZ"}


def vma_kind(status: int) -> str:
    """A short name for what a VMA is, from its CRIU status bits."""
    for bit, name in ((VMA_AREA_VDSO, "vdso"), (VMA_AREA_VVAR, "vvar"),
                      (VMA_AREA_VSYSCALL, "vsyscall"), (VMA_AREA_STACK, "stack"),
                      (VMA_AREA_HEAP, "heap"), (VMA_AREA_SHSTK, "shadow-stack"),
                      (VMA_AREA_AIORING, "aio-ring"), (VMA_AREA_SYSVIPC, "sysv-shm"),
                      (VMA_AREA_MEMFD, "memfd"), (VMA_AREA_SOCKET, "socket"),
                      (VMA_AREA_UPROBES, "uprobes"), (VMA_AREA_GUARD, "guard"),
                      (VMA_FILE_PRIVATE, "file"), (VMA_FILE_SHARED, "file-shared"),
                      (VMA_ANON_SHARED, "anon-shared"), (VMA_ANON_PRIVATE, "anon")):
        if status & bit:
            return name
    return "?"


def isa_specific_parts(s: ImageSet) -> list[str]:
    """Every image/field of this set whose contents depend on the ISA, one line each.

    Recode must rewrite (or refuse) each of them for a target of another ISA; what is
    not listed (pstree, ids, fdinfo, fs, creds, namespaces, mounts, cgroups, pipes,
    sockets, the tmpfs tarballs) is the same on x86-64 and aarch64.
    """
    own = isa.by_criu_march(s.arch)
    others = [i for i in isa.ISAS if i is not own]
    regs = " -> ".join(i.criu_regs_summary for i in ([own] if own else []) + others[:1])
    parts: list[str] = []
    for pid in s.pids:
        for tid in s.threads(pid):
            core = s.core(tid)
            img = f"core-{tid}.img"
            parts.append(f"{img}: core_entry.mtype = {March(core.mtype).name}")
            parts.append(f"{img}: {regs}")
            parts.append(f"{img}: clear_tid_addr (inside the source libc's thread struct, "
                         "moves with the TLS layout)")
            if core.HasField("ti_aarch64") and core.ti_aarch64.HasField("pac_keys"):
                parts.append(f"{img}: ti_aarch64.pac_keys (pointer authentication: lr and "
                             "saved return addresses carry PAC bits to strip or re-sign)")
            tcore = core.thread_core
            if tcore.HasField("rseq_entry") and tcore.rseq_entry.rseq_abi_pointer:
                parts.append(f"{img}: thread_core.rseq_entry (rseq area in the thread struct; "
                             "the rseq signature is per-ISA)")
            if tcore.signals_p.signals:
                parts.append(f"{img}: thread_core.signals_p (pending siginfo, may hold "
                             "code addresses)")
        if not s.has_mm(pid):  # a zombie: only its exit state, nothing per-ISA
            continue
        tc = s.core(pid).tc
        handled = [i + 1 for i, sa in enumerate(tc.sigactions) if sa.sigaction > 1]
        if handled:
            parts.append(f"core-{pid}.img: tc.sigactions for signals {handled} (handler and "
                         "restorer are source-ISA code addresses; SA_RESTORER use differs)")
        if tc.signals_s.signals:
            parts.append(f"core-{pid}.img: tc.signals_s (pending siginfo)")
        mm = s.mm(pid)
        mmimg = f"mm-{pid}.img"
        parts.append(f"{mmimg}: mm_saved_auxv (AT_HWCAP/AT_HWCAP2/AT_PLATFORM describe the CPU, "
                     "AT_SYSINFO_EHDR the vDSO, AT_ENTRY/AT_PHDR the executable)")
        exe = s.exe_path(pid)
        parts.append(f"{mmimg}: exe_file_id -> files.img {exe!r} (size, mode, build_id: the "
                     "executable becomes the target ISA's variant), mm_start_code..mm_end_data")
        for i, v in enumerate(mm.vmas):
            kind = vma_kind(v.status)
            where = f"{mmimg}: vmas[{i}] {v.start:#x}-{v.end:#x}"
            if kind in ("vdso", "vvar"):
                parts.append(f"{where} {kind}: replaced by the target kernel's {kind} "
                             "(size and layout differ per ISA and kernel)")
            elif kind == "vsyscall":
                parts.append(f"{where} vsyscall: x86-64 only, dropped for aarch64")
            elif kind in ("file", "file-shared"):
                path = s.path_of(v.shmid)
                if path != exe:
                    parts.append(f"{where} maps {path!r} (a file of the source ISA?)")
        pages = f"pagemap-{pid}.img+pages-{s.memory(pid).pages_id}.img"
        for tid in s.threads(pid):
            parts.append(f"{pages}: stack of thread {tid} (frames in the source ABI) and its "
                         "TLS block at the thread pointer")
        if any(vma_kind(v.status) == "vdso" for v in mm.vmas):
            parts.append(f"{pages}: dumped vDSO pages (source kernel's code)")
    if "seccomp.img" in s.images:
        parts.append("seccomp.img: BPF filters test seccomp_data.arch (AUDIT_ARCH_*) and "
                     "syscall numbers, both per-ISA")
    if "cpuinfo.img" in s.images:
        parts.append("cpuinfo.img: the source CPU's features")
    return parts


def check_supported(s: ImageSet) -> list[str]:
    """Why this image set cannot be fully interpreted: one line per problem, [] if none.

    Lists every file this library does not understand (unknown magic, an image kind
    kept opaque, a malformed image), an unsupported machine, fields unknown to our
    schema in the per-ISA images (core, mm: a newer CRIU's state that recode would copy
    untranslated), and memory that lives in a parent (pre-dump) image set: recode must
    refuse such a set rather than guess.
    """
    problems: list[str] = []
    for name, img in s.images.items():
        if img.form == "opaque" and name.endswith(".img"):
            problems.append(f"{name}: {img.error or 'not understood'}")
        elif img.form == "raw" and not img.understood:
            problems.append(f"{name}: raw image not interpreted by this library")
    for name in s.skipped:
        problems.append(f"{name}: not a regular file")
    for pid in s.pids:
        for tid in s.threads(pid):
            name = f"core-{tid}.img"
            if name not in s.images or s.images[name].form != "img":
                problems.append(f"{name}: missing")
                continue
            mtype = s.core(tid).mtype
            unknown = unknown_fields(s.core(tid))
            if unknown:
                problems.append(f"{name}: fields unknown to this library: {unknown}")
            if mtype not in SUPPORTED_ARCHES:
                label = March(mtype).name if mtype in March._value2member_map_ else str(mtype)
                problems.append(f"{name}: machine {label} not supported")
        core_img = s.images.get(f"core-{pid}.img")
        if (not s.has_mm(pid) and core_img is not None and core_img.form == "img"
                and core_img.entries[0].msg.tc.task_state == TaskState.ZOMBIE):
            continue  # zombies have no address space to check
        mmimg = s.images.get(f"mm-{pid}.img")
        if mmimg is None or mmimg.form != "img":
            problems.append(f"mm-{pid}.img: missing")
        elif unknown_fields(mmimg.entries[0].msg):
            problems.append(f"mm-{pid}.img: fields unknown to this library: "
                            f"{unknown_fields(mmimg.entries[0].msg)}")
        pm = s.images.get(f"pagemap-{pid}.img")
        if pm is None or pm.form != "img":
            problems.append(f"pagemap-{pid}.img: missing")
            continue
        if any(r.flags & PE_PARENT for r in s.memory(pid).runs):
            problems.append(f"pagemap-{pid}.img: pages in a parent (pre-dump) image set")
    return problems
