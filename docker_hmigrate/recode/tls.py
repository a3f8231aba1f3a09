"""Thread-local storage of a static musl 1.2.3 program, moved between TLS variants.

x86-64 is TLS variant 2 (thread pointer = struct pthread, TLS block just below it, dtv
at the start of the thread's TLS area); aarch64 is variant 1 (thread pointer = just past
struct pthread, TLS block tls_gap_above_tp=16 bytes above it rounded to the block's
alignment, dtv at the end of the area). musl lays each thread's area [mem,
mem+libc.tls_size) out from a few numbers computed at start-up (static_init_tls) and
placed by __copy_tls; this module redoes that arithmetic for both ISAs, finds every
thread's source area, lays the target area out, moves struct pthread and the TLS block
there, rebuilds the dtv, gives musl's globals (libc.tls_size, main_tls) the target's
values (threads created after the migration are laid out by them) and remaps the
pointers to the moved structs. Both directions, between any two ISAs of isa/ (their
`pthread`, `tls_variant` and `tls_gap_above_tp` facts).

Where the target area goes: the main thread's area starts where it started (musl's
static builtin_tls, or the area's own mmap) and must fit there. A pthread_create'd
thread's area ends where it ended (its tsd follows, up to the end of the mapping), so a
larger target area grows down into the top of the thread's stack: only bytes above the
outermost frame of ours (musl's start frame and start_args, both dead once the thread
routine runs) may be taken.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from docker_hmigrate import isa as isas
from docker_hmigrate.criu.memory import scan
from docker_hmigrate.isa import PTHREAD_COMMON as COMMON
from docker_hmigrate.isa import PTHREAD_COMMON_SIZE as COMMON_SIZE
from docker_hmigrate.recode.frames import Untranslatable, arch
from docker_hmigrate.toolchain import contract
from docker_hmigrate.toolchain.contract import Metadata, TlsSegment

MASK = (1 << 64) - 1
MIN_TLS_ALIGN = 8  # offsetof(struct builtin_tls, pt) on LP64
# musl 1.2.3 globals (LP64): struct __libc and struct tls_module field offsets.
LIBC_SYM, MAIN_TLS_SYM, BUILTIN_SYM = "__libc", "__init_tls.lo::main_tls", \
    "__init_tls.lo::builtin_tls"
LIBC = {"tls_head": 16, "tls_size": 24, "tls_align": 32, "tls_cnt": 40}
TLS_MODULE = {"image": 8, "len": 16, "size": 24, "align": 32, "offset": 40}
BUILTIN_TLS_SIZE = 336  # char c; struct pthread pt; void *space[16]


def thread_pointer(isa: str, td: int) -> int:
    """musl's TP_ADJ: the thread pointer register's value for struct pthread at td."""
    return arch(isa).thread_pointer(td)


def struct_address(isa: str, tp: int) -> int:
    return arch(isa).pthread_at(tp)


@dataclass(frozen=True)
class Params:
    """What static_init_tls computes from PT_TLS (main_tls and libc's tls_* fields)."""

    isa: str
    image: int
    len: int
    size: int  # main_tls.size, rounded so that image+size is aligned
    align: int  # main_tls.align = libc.tls_align (at least MIN_TLS_ALIGN)
    offset: int  # main_tls.offset: block = tp - offset (v2) or td+sizeof+offset (v1)
    tls_size: int  # libc.tls_size: bytes of one thread's area

    @classmethod
    def from_segment(cls, isa: str, seg: TlsSegment | dict[str, Any] | None) -> Params:
        if not isinstance(seg, TlsSegment):
            seg = TlsSegment(seg or {})
        image, flen, size, align = seg.vaddr, seg.filesz, seg.memsz, seg.align
        mask = (align - 1) & MASK  # p_align 0 (no PT_TLS) wraps like musl's size_t
        size = (size + ((-size - image) & mask)) & MASK
        a = arch(isa)
        if a.tls_variant == 1:
            gap = a.tls_gap_above_tp
            offset = (gap + ((image - gap) & mask)) & MASK
        else:
            offset = size
        align = max(align, MIN_TLS_ALIGN)
        total = 2 * 8 + a.pthread.size + (offset if a.tls_variant == 1 else 0) \
            + size + align
        tls_size = (total + MIN_TLS_ALIGN - 1) & -MIN_TLS_ALIGN
        return cls(isa, image, flen, size, align, offset, tls_size)


@dataclass(frozen=True)
class Area:
    """One thread's TLS area as __copy_tls lays it out from `mem` (one TLS module)."""

    mem: int
    size: int
    td: int  # struct pthread
    tp: int  # thread pointer register
    block: int  # the TLS block (main_tls.size bytes)
    dtv: int  # dtv[0] = module count, dtv[1] = block

    @property
    def end(self) -> int:
        return self.mem + self.size


def layout(p: Params, mem: int, cnt: int = 1) -> Area:
    a = arch(p.isa)
    sz = a.pthread.size
    if a.tls_variant == 1:
        td = mem + ((-(mem + sz)) & (p.align - 1))
        block = td + sz + p.offset
        dtv = mem + p.tls_size - (cnt + 1) * 8
    else:
        td = (mem + p.tls_size - sz) & -p.align
        block = td - p.offset
        dtv = mem
    return Area(mem, p.tls_size, td, a.thread_pointer(td), block, dtv)


def has_tls(md: Metadata | dict[str, Any]) -> bool:
    return contract.load(md).has_tls


def preflight_problems(md: Metadata | dict[str, Any], src: str, dst: str) -> list[str]:
    """What keeps this program's TLS from being moved src -> dst (static facts only)."""
    md = contract.load(md)
    if not md.has_tls:
        return []
    if src == dst or not {src, dst} <= set(isas.NAMES):
        return [f"TLS translation {src} -> {dst} is not implemented"]
    a, b = md.tls.segment(src), md.tls.segment(dst)
    problems = []
    for k in ("vaddr", "memsz", "align"):
        va, vb = getattr(a, k) if a else None, getattr(b, k) if b else None
        if va != vb:
            problems.append(f"the TLS segments differ in {k} ({va} vs {vb}): "
                            f"thread-local variables cannot keep their offsets")
    for s in md.tls.symbols:
        if s.offset.get(src) is None or s.offset.get(src) != s.offset.get(dst):
            problems.append(f"thread-local {s.name} is at block offset "
                            f"{s.offset.get(src)} on {src}, {s.offset.get(dst)} on {dst}")
    for name, size in ((LIBC_SYM, None), (MAIN_TLS_SYM, 48), (BUILTIN_SYM, BUILTIN_TLS_SIZE)):
        sym = md.symbol(name)
        at = sym.at(src) if sym else None
        if not at or at != sym.at(dst):  # type: ignore[union-attr]
            problems.append(f"musl's {name} is not at the same address on both ISAs")
        elif size is not None and at[1] != size:
            problems.append(f"musl's {name} is {at[1]} bytes, not musl 1.2.3's {size}")
    return problems


@dataclass
class ThreadPlan:
    tid: int
    src: Area
    dst: Area


class TlsTranslation:
    """The TLS areas of one process, source and target, and their writing."""

    def __init__(self, md: Metadata | dict[str, Any], src_isa: str, dst_isa: str):
        md = contract.load(md)
        problems = preflight_problems(md, src_isa, dst_isa)
        if problems:
            raise Untranslatable("; ".join(problems))
        self.src_isa, self.dst_isa = src_isa, dst_isa
        self.si, self.di = arch(src_isa), arch(dst_isa)
        self.ps = Params.from_segment(src_isa, md.tls.segment(src_isa))
        self.pd = Params.from_segment(dst_isa, md.tls.segment(dst_isa))

        def addr(name: str) -> int:
            return md.symbol(name).addr(src_isa)  # type: ignore[union-attr,return-value]

        self.libc, self.main_tls, self.builtin = addr(LIBC_SYM), addr(MAIN_TLS_SYM), \
            addr(BUILTIN_SYM)
        self.plans: list[ThreadPlan] = []

    # -- source --------------------------------------------------------------------

    def check_globals(self, mem) -> None:
        """musl's own numbers in the dumped process must be what Params computed: the
        areas are found with them."""
        want = {("libc", "tls_size"): self.ps.tls_size, ("libc", "tls_align"): self.ps.align,
                ("libc", "tls_cnt"): 1, ("main_tls", "size"): self.ps.size,
                ("main_tls", "offset"): self.ps.offset, ("main_tls", "image"): self.ps.image}
        for (obj, field), v in want.items():
            addr = (self.libc + LIBC[field]) if obj == "libc" else \
                (self.main_tls + TLS_MODULE[field])
            got = mem.read_u64(addr)
            if got != v:
                raise Untranslatable(f"musl's {obj}.{field} is {got}, expected {v} (not musl "
                                     f"1.2.3's static TLS set-up?)")

    def source_area(self, mem, tid: int, is_main: bool, td: int, vma) -> Area:
        """The source thread's area: main's is builtin_tls (or its own mmap when larger),
        a created thread's ends at its tsd."""
        raw = mem.read(td, self.si.pthread.size)
        f = self.si.pthread
        if _u64(raw, f["self"]) != td:
            raise Untranslatable(f"thread {tid}: no musl struct pthread at {td:#x}")
        if is_main:
            mem_start = self.builtin if self.ps.tls_size <= BUILTIN_TLS_SIZE else vma.start
        else:
            mem_start = _u64(raw, f["common"] + COMMON["tsd"]) - self.ps.tls_size
        area = layout(self.ps, mem_start)
        if area.td != td:
            raise Untranslatable(f"thread {tid}: struct pthread at {td:#x} is not where musl "
                                 f"lays out a TLS area from {mem_start:#x} (an application-"
                                 f"provided stack?)")
        return area

    # -- target --------------------------------------------------------------------

    def target_area(self, tid: int, is_main: bool, src: Area, vma, outer_cfa: int) -> Area:
        if is_main:
            limit = src.mem + BUILTIN_TLS_SIZE if src.mem == self.builtin else vma.end
            dst = layout(self.pd, src.mem)
            if dst.end > limit:
                raise Untranslatable(f"the main thread's {self.dst_isa} TLS area "
                                     f"({self.pd.tls_size} bytes) does not fit where the "
                                     f"{self.src_isa} one is")
            return dst
        dst = layout(self.pd, src.end - self.pd.tls_size)
        if dst.mem < src.mem and not (outer_cfa <= dst.mem and vma.start <= dst.mem):
            raise Untranslatable(f"thread {tid}: its {self.dst_isa} TLS area would reach "
                                 f"{dst.mem:#x}, into live stack (outermost frame at "
                                 f"{outer_cfa:#x})")
        return dst

    def plan(self, images, pid: int, threads: list[tuple[int, int, int]]) -> None:
        """threads: (tid, source thread pointer, outermost CFA of the thread's frames)."""
        mem = images.memory(pid)
        self.check_globals(mem)
        for tid, tp, outer_cfa in threads:
            td = self.si.pthread_at(tp)
            vma = images.vma_at(pid, td)
            if vma is None:
                raise Untranslatable(f"thread {tid}: thread pointer {tp:#x} is not mapped")
            is_main = tid == pid
            src = self.source_area(mem, tid, is_main, td, vma)
            self.plans.append(ThreadPlan(tid, src, self.target_area(tid, is_main, src, vma,
                                                                    outer_cfa)))
        ranges = sorted((min(p.src.mem, p.dst.mem), max(p.src.end, p.dst.end))
                        for p in self.plans)
        for (_a, b), (c, _d) in zip(ranges, ranges[1:], strict=False):
            if c < b:
                raise Untranslatable("two threads' TLS areas overlap")

    def td_map(self) -> dict[int, int]:
        return {p.src.td: p.dst.td for p in self.plans}

    def struct_bytes(self, src_mem, p: ThreadPlan) -> bytes:
        """struct pthread in the target's field order, its pointers to thread structs
        (self, prev, next) and into itself (robust list head) remapped."""
        fs, fd = self.si.pthread, self.di.pthread
        raw = src_mem.read(p.src.td, fs.size)
        tds = self.td_map()
        out = bytearray(fd.size)
        n = COMMON_SIZE
        out[fd["common"]:fd["common"] + n] = raw[fs["common"]:fs["common"] + n]
        for name in ("sysinfo", "canary"):
            out[fd[name]:fd[name] + 8] = raw[fs[name]:fs[name] + 8]
        _put(out, fd["self"], p.dst.td)
        _put(out, fd["dtv"], p.dst.dtv)
        for name in ("prev", "next"):
            v = _u64(raw, fs[name])
            if v not in tds:
                raise Untranslatable(f"thread {p.tid}: musl's thread list ({name} {v:#x}) "
                                     f"leads to a thread not in the checkpoint")
            _put(out, fd[name], tds[v])
        head = _u64(raw, fs["common"] + COMMON["robust_head"])
        if head == p.src.td + fs["common"] + COMMON["robust_head"]:
            _put(out, fd["common"] + COMMON["robust_head"],
                 p.dst.td + fd["common"] + COMMON["robust_head"])
        elif head:
            raise Untranslatable(f"thread {p.tid} holds robust mutexes (kernel robust list)")
        if _u64(raw, fs["common"] + COMMON["cancelbuf"]):
            # a pthread_cleanup_push buffer on the stack: not remapped with the frames
            raise Untranslatable(f"thread {p.tid} is inside pthread_cleanup_push")
        return bytes(out)

    def write(self, src_mem, dst_mem) -> None:
        """Every target area (old ones cleared first), and musl's globals."""
        built = [(p, self.struct_bytes(src_mem, p)) for p in self.plans]
        for p in self.plans:
            if not dst_mem.contains(p.dst.mem, p.dst.size):
                raise Untranslatable(f"thread {p.tid}: its target TLS area {p.dst.mem:#x} "
                                     f"is not in the dumped memory")
        for p in self.plans:
            dst_mem.write(p.src.mem, bytes(p.src.size))
        for p, st in built:
            area = bytearray(p.dst.size)
            base = p.dst.mem
            area[p.dst.td - base:p.dst.td - base + len(st)] = st
            # the variables' current values: same size and offsets in both blocks
            block = src_mem.read(p.src.block, self.ps.size)
            area[p.dst.block - base:p.dst.block - base + len(block)] = block
            _put(area, p.dst.dtv - base, 1)
            _put(area, p.dst.dtv - base + 8, p.dst.block)
            dst_mem.write(base, bytes(area))
        for field, v in (("tls_size", self.pd.tls_size), ("tls_align", self.pd.align)):
            dst_mem.write_u64(self.libc + LIBC[field], v)
        for field in ("len", "size", "align", "offset"):
            dst_mem.write_u64(self.main_tls + TLS_MODULE[field], getattr(self.pd, field))

    def remap_pointers(self, dst_mem, writable: list[tuple[int, int]],
                       skip: list[tuple[int, int]]) -> int:
        """Words in writable memory that point at a moved struct pthread (pthread_t values
        in the program's variables and heap, musl's lists) or into a moved TLS block
        (&tls_var) get the target address. A word equal to a struct's address is taken
        as a pthread_t (a TLS block's one-past-the-end on x86-64 is the same address; a
        pthread_t is by far the likelier); a word pointing inside an old struct is
        refused (nothing but the struct itself keeps such pointers). The typed stack
        slots cannot be used instead: heap and musl's own data have no types here.
        Dead stack below each SP (skip) and the rewritten structs/dtvs are left out."""
        exact = self.td_map()
        blocks = [(p.src.block, p.src.block + self.ps.size, p.dst.block) for p in self.plans]
        inside = [(p.src.td + 1, p.src.td + self.si.pthread.size) for p in self.plans]
        lo = min([a for a, _ in inside] + [a for a, _b, _d in blocks] + list(exact))
        hi = max([b for _a, b in inside] + [b for _a, b, _d in blocks] + list(exact)) + 1
        own = [(p.dst.td, p.dst.td + self.di.pthread.size) for p in self.plans] + \
            [(p.dst.dtv, p.dst.dtv + 16) for p in self.plans]
        excluded = sorted(skip + own)
        changed = 0
        for run in dst_mem.runs:
            if run.offset is None:
                continue
            for a0, a1 in _clip([(run.vaddr, run.end)], writable):
                for b0, b1 in _subtract((a0, a1), excluded):
                    b0, b1 = -(-b0 // 8) * 8, b1 // 8 * 8
                    if b1 <= b0:
                        continue
                    for c0, data in scan(dst_mem, b0, b1):  # bounded pieces
                        for i, w in enumerate(struct.unpack(f"<{len(data) // 8}Q", data)):
                            if not lo <= w < hi:
                                continue
                            new = self._remap(w, exact, blocks, inside, c0 + 8 * i)
                            if new != w:
                                dst_mem.write_u64(c0 + 8 * i, new)
                                changed += 1
        return changed

    def _remap(self, w: int, exact, blocks, inside, addr: int) -> int:
        if w in exact:
            return exact[w]
        for s, e, d in blocks:
            if s <= w < e:
                return d + w - s
        for s, e in inside:
            if s <= w < e:
                raise Untranslatable(f"memory at {addr:#x} points inside a thread's struct "
                                     f"pthread ({w:#x}): it cannot follow the move")
        return w

    def remap_value(self, w: int) -> int:
        """A register value: a pthread_t or a TLS variable's address moves with it."""
        if w in self.td_map():
            return self.td_map()[w]
        for p in self.plans:
            if p.src.block <= w < p.src.block + self.ps.size:
                return p.dst.block + w - p.src.block
        return w

    def thread_pointers(self) -> dict[int, int]:
        return {p.tid: p.dst.tp for p in self.plans}


def set_thread_pointer(core, isa: str, tp: int) -> None:
    """The thread pointer register of a target core entry (TPIDR_EL0 / fs_base)."""
    arch(isa).set_tp(core, tp)


def remap_registers(core, isa: str, tr: TlsTranslation) -> None:
    """Callee-saved temporaries may hold a pthread_t or &tls_var across a call."""
    arch(isa).remap_registers(core, tr.remap_value)


def translate_process(src_images, dst_images, pid: int, md: Metadata, src_isa: str,
                      dst_isa: str, threads: list[tuple[int, int, int]],
                      skip: list[tuple[int, int]]) -> TlsTranslation:
    """Move every thread's TLS area of process pid to the target layout (dst_images:
    stacks already rebuilt, cores already of dst_isa); threads as in TlsTranslation.plan."""
    tr = TlsTranslation(md, src_isa, dst_isa)
    tr.plan(src_images, pid, threads)
    smem, dmem = src_images.memory(pid), dst_images.memory(pid)
    tr.write(smem, dmem)
    writable = [(v.start, v.end) for v in dst_images.mm(pid).vmas if v.prot & 2]
    tr.remap_pointers(dmem, writable, skip)
    for tid, tp in tr.thread_pointers().items():
        core = dst_images.core(tid)
        set_thread_pointer(core, dst_isa, tp)
        remap_registers(core, dst_isa, tr)
    return tr


def _u64(b: bytes | bytearray, off: int) -> int:
    return int.from_bytes(b[off:off + 8], "little")


def _put(b: bytearray, off: int, v: int) -> None:
    b[off:off + 8] = (v & MASK).to_bytes(8, "little")


def _clip(spans: list[tuple[int, int]], allowed: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for a, b in spans:
        for c, d in allowed:
            lo, hi = max(a, c), min(b, d)
            if lo < hi:
                out.append((lo, hi))
    return out


def _subtract(span: tuple[int, int], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, (a, b) = [], span
    for c, d in holes:  # sorted
        if d <= a or c >= b:
            continue
        if c > a:
            out.append((a, c))
        a = max(a, d)
    if a < b:
        out.append((a, b))
    return out
