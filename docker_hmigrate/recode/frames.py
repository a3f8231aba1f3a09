"""Unwind a parked thread's stack with the build metadata and rebuild it for the other ISA.

A parked thread's stack, innermost first (docs/toolchain.md): the runtime's
hm_futex_wait <- hmigrate_park <- __cyg_profile_func_enter <- the instrumented function
being entered <- its callers ... <- musl's bottom frame (libc_start_main_stage2 for main,
pthread's start for threads). Every frame of ours is -O0: each variable lives in a
stack slot at a fixed offset from the CFA (the caller's SP before the call), and the
frame record {saved FP, return address} and saved callee-saved registers sit at fixed
CFA offsets. So a frame is moved by copying variables slot to slot; the target frame's
CFA is its caller's SP at the twin call site (from the metadata), the outermost CFA
(where musl's frame calls ours) stays where it was, so everything above it (musl's
bottom frames, argv, envp, auxv) keeps its address.
"""

from __future__ import annotations

import bisect
import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from docker_hmigrate import errors, isa
from docker_hmigrate.isa import Isa, ThreadRegs
from docker_hmigrate.toolchain import contract
from docker_hmigrate.toolchain.contract import Function, Metadata, Var
from docker_hmigrate.toolchain.jmpbuf_layout import SETJMP_NAMES, SIGSETJMP_NAMES, fields_match


class Untranslatable(errors.NotMigratableCrossISA):
    # The program was built right: what it holds at this moment is what cannot move.
    default_hint = ("this state is not translated across ISAs yet (docs/toolchain.md, "
                    "C constructs); migrate to a host of the same ISA")


@dataclass
class CallSite:
    function: Function
    site: contract.CallSite  # the source ISA's call site
    twin: contract.CallSite | None  # the target ISA's


class Index:
    """The metadata, indexed for one direction (src -> dst). Build it with `Index.of`:
    indexing a large program (Redis: ~20k call sites) costs tens of milliseconds, so it is
    done once per program and direction (the preflight, before the freeze, does it) and
    the recode after the freeze finds it cached."""

    _cache: list[tuple[Metadata, str, str, Index]] = []
    _CACHED = 4

    @classmethod
    def of(cls, md: dict[str, Any] | Metadata, src: str, dst: str) -> Index:
        raw = md.raw if isinstance(md, Metadata) else md
        for m, s, d, idx in cls._cache:
            if m.raw is raw and (s, d) == (src, dst):
                return idx
        # Tens of thousands of small objects at once: the collector's full passes over the
        # whole metadata (every JSON object is tracked) would cost more than the index.
        enabled = gc.isenabled()
        gc.disable()
        try:
            idx = cls(md, src, dst)
        finally:
            if enabled:
                gc.enable()
        cls._cache[:] = [(idx.md, src, dst, idx)] + cls._cache[:cls._CACHED - 1]
        return idx

    def __init__(self, md: dict[str, Any] | Metadata, src: str, dst: str):
        self.md = md = contract.load(md)
        self.src, self.dst = src, dst
        # the source binary's bytes by address (set by the recode): for reading its
        # machine code when a value needs more than the metadata says
        self.src_code: Callable[[int, int], bytes] | None = None
        # (function address, return address) -> frame_writes.Effects: one reading of a
        # function's machine code per stopped call, whatever number of its locals is asked
        self.frame_writes: dict[tuple[int, int], Any] = {}
        self.src_isa, self.dst_isa = arch(src), arch(dst)
        functions = md.functions
        self.by_name: dict[str, Function] = {f.name: f for f in functions}
        self.calls: dict[int, CallSite] = {}
        self.return_twins: dict[int, int] = {}  # src return address -> dst
        calls, twins = self.calls, self.return_twins
        # pairs are [index on NAMES[0], index on NAMES[1]]: oriented src -> dst here
        flip = src != isa.NAMES[0]
        for f in functions:
            fi = f.isa
            if src not in fi or dst not in fi:
                continue
            pairs = {(b if flip else a): (a if flip else b) for a, b in f.call_site_pairs}
            dst_sites = fi[dst].call_sites
            for c in fi[src].call_sites:
                t = pairs.get(c.index)
                ra = c.return_address
                if t is None:
                    calls[ra] = CallSite(f, c, None)
                else:
                    twin = dst_sites[t]
                    calls[ra] = CallSite(f, c, twin)
                    twins[ra] = twin.return_address
        rt = md.runtime
        self.park_function = rt.park_function
        self.src_park, self.dst_park = rt.park_pc(src), rt.park_pc(dst)
        self.bottoms: dict[int, int] = {}
        for a, b in zip(rt.bottoms(src), rt.bottoms(dst), strict=False):
            if (a.function, a.target) == (b.function, b.target):
                self.bottoms[a.return_address] = b.return_address
        self.func_twins: dict[int, int] = {}  # code addresses of functions, src -> dst
        self._objects: dict[int, contract.Symbol] | None = None
        for sym in md.symbols:
            a, b = sym.addr(src), sym.addr(dst)
            if sym.kind == "func" and a is not None and b is not None:
                self.func_twins[a] = b
        self._setjmp_calls: dict[int, CallSite] | None = None

    @property
    def objects(self) -> dict[int, contract.Symbol]:
        """Data objects on both ISAs, by source address."""
        if self._objects is None:
            src, dst = self.src, self.dst
            self._objects = {s.addr(src): s for s in self.md.symbols  # type: ignore[misc]
                             if s.kind == "object" and s.at(src) and s.at(dst)}
        return self._objects

    def setjmp_calls(self, names: tuple[str, ...]) -> dict[int, CallSite]:
        """Call sites of setjmp (names): return address -> site, found once."""
        if self._setjmp_calls is None:
            self._setjmp_calls = {ra: cs for ra, cs in self.calls.items()
                                  if cs.site.target in names}
        return self._setjmp_calls


@dataclass
class Frame:
    """One frame of ours on the source stack (and, once planned, on the target)."""

    function: Function
    src_cfa: int
    src_pc: int  # where this frame is stopped (a return address, or the park pc)
    site: CallSite | None  # None for the innermost (park) frame
    src_sp: int = 0  # lowest address of the frame (its SP at the stop)
    dst_cfa: int = 0
    dst_pc: int = 0
    regs: dict[str, int] = field(default_factory=dict)  # callee-saved values (source)
    # once rebuilt: the callee-saved values the target's registers hold while this frame
    # runs that its callers put there (what it saves, or passes through unsaved)
    dst_entry_regs: dict[str, int] | None = None


@dataclass
class SourceStack:
    frames: list[Frame]  # innermost first
    bottom_return: int  # the return address into musl's bottom frame (source)
    outer_cfa: int  # CFA of the outermost frame of ours: stays where it is
    smap: StackMap | None = field(default=None, repr=False)  # once planned: stack_map()


def stack_map(stack: SourceStack, idx: Index) -> StackMap:
    """The stack's StackMap, made once its target frames are planned (plan_target) and
    shared by the stack rebuild, the pointer remap and the jmp_buf translation."""
    if stack.smap is None:
        stack.smap = StackMap(stack, idx)
    return stack.smap


def in_scope(var: Var, pc: int) -> bool:
    return var.in_scope(pc)


def arch(name: str) -> Isa:
    """The ISA object with an ISA's register, frame and musl facts."""
    try:
        return isa.get(name)
    except KeyError as exc:
        raise Untranslatable(str(exc.args[0])) from None


def unwind(mem, regs: ThreadRegs, idx: Index) -> SourceStack:
    """Walk a parked thread from the runtime's futex wait down to musl's bottom frame,
    with the frame layouts of the metadata (each frame's CFA from its frame pointer, its
    caller's frame pointer and return address at fixed CFA offsets)."""
    src = idx.src_isa
    park = idx.src_park
    if regs.pc not in (park.blocked_pc, park.syscall_pc):
        raise Untranslatable(f"thread is not parked at the runtime's futex wait "
                             f"(pc {regs.pc:#x}, expected {park.blocked_pc or 0:#x})")
    if regs.syscall_nr not in (src.sys_futex, -1, (1 << 64) - 1):
        raise Untranslatable(f"thread is in system call {regs.syscall_nr}, not futex")
    top_fn = idx.by_name.get(idx.park_function or "")
    if top_fn is None:
        raise Untranslatable("the metadata lacks the runtime's park function")
    try:
        cfa, fp, ret = src.park_frame(mem, regs, park.frame_size or 0)
    except ValueError as exc:
        raise Untranslatable(str(exc)) from None
    frames = [Frame(top_fn, cfa, regs.pc, None, src_sp=regs.sp)]
    for _ in range(100000):
        if ret in idx.bottoms:
            return SourceStack(frames, ret, frames[-1].src_cfa)
        cs = idx.calls.get(ret)
        if cs is None:
            raise Untranslatable(f"unknown return address {ret:#x} on the stack (a frame "
                                 f"without metadata)")
        f = cs.function
        if not cs.site.translatable or cs.twin is None:
            raise Untranslatable(f"{f.name}: call site at {ret:#x} has no translatable "
                                 f"twin on {idx.dst}: {cs.site.untranslatable_reasons}")
        if f.instrumented and not f.translatable:
            raise Untranslatable(f"{f.name} is untranslatable: "
                                 f"{f.untranslatable_reasons}")
        frame = f.isa[idx.src].frame
        if not frame.has_frame_record:
            raise Untranslatable(f"{f.name}: frame layout {frame.cfa} not supported")
        caller_cfa = fp - frame.fp_cfa_offset  # type: ignore[operator]
        if caller_cfa <= frames[-1].src_cfa:
            raise Untranslatable(f"broken frame chain at {fp:#x}")
        frames.append(Frame(f, caller_cfa, ret, cs,
                            src_sp=caller_cfa + cs.site.sp_cfa_offset))
        fp = mem.read_u64(caller_cfa + frame.saved_fp_cfa_offset)  # type: ignore[operator]
        ret = mem.read_u64(caller_cfa + frame.return_address_cfa_offset)  # type: ignore[operator]
    raise Untranslatable("frame chain too long")


def planned(mem, regs: ThreadRegs, idx: Index) -> SourceStack:
    """A parked thread's stack unwound, its frames' callee-saved values found, and its
    target frames planned: what the recode after the dump and the check before it
    (livecheck.py) both start from."""
    stack = unwind(mem, regs, idx)
    source_callee_saved(mem, stack, regs, idx)
    plan_target(stack, idx)
    return stack


def source_callee_saved(mem, stack: SourceStack, regs: ThreadRegs, idx: Index) -> None:
    """Each frame's callee-saved register values at its call site: in the nearest inner
    frame that saved the register, else still in the register."""
    current = dict(regs.callee_saved)  # values as the innermost frame sees them
    for fr in stack.frames:  # innermost first
        fr.regs = dict(current)
        saved = fr.function.isa[idx.src].frame.saved_regs
        for r, off in saved.items():
            if r in idx.src_isa.callee_saved:
                current[r] = mem.read_u64(fr.src_cfa + off)


class StackMap:
    """Source stack addresses -> target addresses, variable by variable."""

    def __init__(self, stack: SourceStack, idx: Index):
        self.idx = idx
        self.lo = min(f.src_sp for f in stack.frames)
        self.hi = stack.outer_cfa
        self.spans: list[tuple[int, int, int]] = []  # (src start, src end, dst start)
        self.fields: dict[int, tuple[Var, Var]] = {}  # src start -> (src var, dst var)
        for fr in stack.frames:
            if fr.site is None:
                continue
            for sv, dv in matched_vars(fr, idx):
                a = fr.src_cfa + sv.cfa_offset
                self.spans.append((a, a + sv.type.size, fr.dst_cfa + dv.cfa_offset))
                if sv.type.by_member:  # members sit elsewhere in the target
                    self.fields[a] = (sv, dv)
        self.spans.sort()
        self._starts = [s[0] for s in self.spans]

    def in_stack(self, addr: int) -> bool:
        return self.lo <= addr < self.hi

    def map(self, addr: int) -> int:
        if not self.in_stack(addr):
            return addr  # above our frames (musl, argv, env) or not on this stack
        i = bisect.bisect_right(self._starts, addr) - 1
        # one past the end of a variable (array end pointers) is still that variable
        for j in (i, i - 1):
            if 0 <= j < len(self.spans):
                s, e, d = self.spans[j]
                if s <= addr <= e:
                    if s in self.fields:
                        off = map_offset(*self.fields[s], addr - s)
                        if off is None:
                            raise Untranslatable(f"a pointer to stack address {addr:#x} "
                                                 f"points inside a jmp_buf")
                        return d + off
                    return d + (addr - s)
        raise Untranslatable(f"a pointer to stack address {addr:#x} matches no variable slot")


def map_offset(sv: Var, dv: Var, off: int) -> int | None:
    """Where byte `off` of a source variable copied member by member lies in the target's
    variable (a pointer to one of its members), or None inside a jmp_buf's registers, an
    integer of another size, or a member the target does not have."""
    others = {b.path: b for b in dv.type.fields}
    for a in sv.type.fields:
        if a.offset <= off < a.offset + max(a.size, 1):
            b = others.get(a.path)
            if b is None:
                return None
            if a.kind == "jmp_buf" or a.size != b.size:
                return b.offset if off == a.offset else None
            return b.offset + off - a.offset
    return dv.type.size if off == sv.type.size else None


def matched_vars(fr: Frame, idx: Index, strict: bool = True) -> list[tuple[Var, Var]]:
    """Pairs (source var, target var) live at this frame's stop, matched by name and
    occurrence (-O0 DWARF lists them in declaration order on both ISAs). Not strict:
    variables without a twin are left out (the runtime's syscall frame keeps some in
    registers on one ISA)."""
    out = []
    # twins counted over all variables: an optimized function's (-Og) described ones
    # are carried by recode/described.py, the slot ones here
    src_vars, dst_vars = fr.function.isa[idx.src].vars, fr.function.isa[idx.dst].vars
    twins = contract.var_twins([v.raw for v in src_vars], [v.raw for v in dst_vars])
    for i, v in enumerate(src_vars):
        if not v.in_stack:
            continue
        d = dst_vars[twins[i]] if i in twins else None
        if d is not None and not d.in_stack:
            continue  # described on the target: recode/described.py
        if d is None and (not strict or not in_scope(v, fr.src_pc)
                          or not live_at_stop(fr, v)):
            continue  # no value to carry: out of scope, or not yet stored
        if d is None:
            raise Untranslatable(f"{fr.function.name}: variable {v.name} has no "
                                 f"twin on {idx.dst}")
        if d.type.size != v.type.size and not (
                v.type.by_member and fields_match(v.type, d.type, idx.src_isa, idx.dst_isa)):
            raise Untranslatable(f"{fr.function.name}: variable {v.name} has "
                                 f"size {v.type.size} on {idx.src}, "
                                 f"{d.type.size} on {idx.dst}")
        if in_scope(v, fr.src_pc) and in_scope(d, fr.dst_pc) and live_at_stop(fr, v):
            out.append((v, d))
    return out


def live_at_stop(fr: Frame, var: Var) -> bool:
    """A frame stopped at its entry hook has stored only its parameters: its locals
    hold stale bytes (old stack addresses among them) that nothing reads before writing.
    Likewise a local declared on a later line than the call the frame is stopped at: its
    declaration has not been reached in this run of its block, C gives it no value yet
    (Redis's handleClientsWithPendingWritesUsingThreads returns through
    handleClientsWithPendingWrites() above `listIter li;`, whose slot holds a dead frame's
    address). Only a backward goto inside one block could make such a variable hold a
    value at that call; its slot is then left out, and a pointer to it is refused.
    Lines compare only within one file: generated code (bison's parser) declares its
    locals in the .c file and makes its calls from #line'd actions of the .y file, where
    bc's `yyvsp` (bc.c:1329) looked declared below a call at bc.y:134; metadata without
    the files (older builds) cannot tell, so the variable is carried."""
    if fr.site is None or var.kind != "local":
        return True
    site = fr.site.site
    if site.kind == "enter_hook" and site.index == 0:  # its own, in the prologue
        # (an always_inline callee's hook sits in the body: the toolchain marks those
        # call sites untranslatable, its variables are not described)
        return False
    if var.line is None or site.line is None or var.file is None or site.file is None \
            or var.file != site.file:
        return True
    return var.line <= site.line


RETURNS_TWICE = frozenset((*SETJMP_NAMES, *SIGSETJMP_NAMES, "vfork"))


def unset_at_stop(fr: Frame, var: Var, idx: Index) -> bool:
    """A local whose slot nothing of this run of its function has written or pointed
    at by the call the frame is stopped at (toolchain/frame_writes.py): it holds stale
    bytes of an earlier frame that the program cannot read before it assigns them."""
    site = fr.site.site if fr.site is not None else None
    if idx.src_code is None or site is None or var.kind != "local" or var.indirect \
            or var.cfa_offset is None or site.kind == "enter_hook":
        return False
    fi = fr.function.isa[idx.src]
    if any(c.target in RETURNS_TWICE for c in fi.call_sites):
        return False  # a longjmp back re-runs the call after later stores: not a path here
    # imported here: capstone and the toolchain's reader cost ~11 MB of the recode's peak
    # RSS (issue 11), and only a value the metadata could not translate needs them
    from docker_hmigrate.toolchain import frame_writes

    key = (fi.addr, site.return_address)
    eff = idx.frame_writes.get(key)
    if eff is None:
        eff = idx.frame_writes[key] = frame_writes.effects_before_call(
            idx.src, idx.src_code, fi.addr, fi.size, site.return_address)
    return not eff.writes(var.cfa_offset, var.cfa_offset + var.type.size)


def plan_target(stack: SourceStack, idx: Index) -> None:
    """Target CFAs and stop addresses, outermost frame first."""
    cfa = stack.outer_cfa
    if cfa % 16:
        raise Untranslatable(f"outermost frame's CFA {cfa:#x} is not 16-byte aligned")
    frames = stack.frames
    for i in range(len(frames) - 1, -1, -1):
        fr = frames[i]
        fr.dst_cfa = cfa
        if fr.site is None:  # the park frame: stopped at the park pc
            fr.dst_pc = idx.dst_park.blocked_pc or 0
            break
        twin = fr.site.twin
        assert twin is not None  # unwind refuses a call site without one
        fr.dst_pc = twin.return_address
        sp = cfa + twin.sp_cfa_offset
        if sp % 16:
            raise Untranslatable(f"{fr.function.name}: target SP {sp:#x} misaligned")
        cfa = sp  # the callee's CFA is the caller's SP at the call


def lowest_target_sp(stack: SourceStack, idx: Index) -> int:
    return stack.frames[0].dst_cfa - (idx.dst_park.frame_size or 0)


def read_stack(mem, addr: int, n: int) -> bytes:
    """Bytes of the source stack; pages CRIU did not dump were never touched (a big local
    buffer used only in part) and read as zeros, as the process would see them."""
    try:
        return mem.read(addr, n)
    except LookupError:  # criu.memory.NotDumpedError
        out = bytearray()
        a = addr
        while a < addr + n:
            k = min(addr + n, (a // 4096 + 1) * 4096) - a
            out += mem.read(a, k) if mem.contains(a, k) else bytes(k)
            a += k
        return bytes(out)


def fp_offset(fr: Frame, idx: Index) -> int:
    """Where a frame's frame pointer points on the target, from its CFA."""
    return fr.function.isa[idx.dst].frame.fp_cfa_offset or 0


def translate_value(v: int, var: Var | None, smap: StackMap, idx: Index) -> int:
    """A pointer-sized value: stack addresses move with their variable; return
    addresses go to their twins; everything else (heap, data, function addresses:
    aligned by the toolchain) stays."""
    if smap.in_stack(v):
        return smap.map(v)
    if v in idx.return_twins:
        return idx.return_twins[v]
    return v
