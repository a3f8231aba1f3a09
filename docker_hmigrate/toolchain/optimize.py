"""Optimize what can never be a suspended frame (`hmigrate-cc --optimize-leaves` or
HMIGRATE_OPTIMIZE=1; `--no-optimize-leaves` / HMIGRATE_OPTIMIZE=0 force it off).

A thread parks only at the entry hook of an instrumented (-O0) function, or in a
runtime wrapper. A function that cannot reach either through its callees is never on a
parked stack, so it needs no translatable frame: it is compiled with GCC's per-function
`optimize("O2")` attribute and without instrumentation. The rest keeps the -O0 frame.

Per translation unit, from the -O0 assembly of BOTH ISAs (a function is optimized only
if both agree), a function stays -O0 when it:
- makes an indirect call (its target may be instrumented), or calls setjmp;
- calls a function of another file (unknown here), a wrapped or blocking libc function
  (runtime wrappers park; a retry loop around a blocking call would never park), or a
  libc function that calls back into our code (qsort...);
- calls an -O0 function of its own file, is recursive, or has its address taken (it could
  be called through a pointer from a loop that would then never reach a park point);
- is not defined in the main source file (a header's inline function: the attribute
  cannot be put there) or GCC did not take the attribute;
- is the park point of a loop: every loop that calls one of our functions keeps at least
  one instrumented call (the largest callee), so a thread still parks once per iteration,
  as it did when every function was instrumented.

Safety net (docs/toolchain.md): optimized frames keep their frame pointer and are listed
whole in the runtime's table of frames no thread may park above, and their call sites
are untranslatable in the metadata: a mistake here can only delay a park, never produce
a wrong stack.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field

from .config import AARCH64, WRAPPED, X86_64, Isa

ENV = "HMIGRATE_OPTIMIZE"
FLAG = "--optimize-leaves"
NO_FLAG = "--no-optimize-leaves"
# Described frames: the functions that keep their hooks (can be suspended) are compiled
# -Og instead of -O0; the recode reads and writes their variables where GCC's DWARF says
# they are at each call (registers, stack slots: metadata.site_locations), and a call
# where a live register or slot holds a value no variable names is untranslatable.
FRAMES_ENV = "HMIGRATE_OPTIMIZE_FRAMES"
FRAMES_FLAG = "--optimize-frames"
NO_FRAMES_FLAG = "--no-optimize-frames"
FRAMES_LEVEL = "-Og"
# Off until the cross-ISA lab suite has passed with it (docs/toolchain.md): the lab runs
# of that suite timed out under load when it was measured; every other check passed.
DEFAULT = False

# The attribute put in front of each selected function's definition. Frame pointers keep
# the runtime's frame walk through these frames (the safety net); no sibling calls so no
# frame can vanish under a callee; no clones or split parts (functions that exist on one
# ISA only).
ATTRIBUTE = ('__attribute__((optimize("O2","no-omit-frame-pointer","no-optimize-sibling-calls",'
             '"no-partial-inlining","no-reorder-blocks-and-partition"),'
             'no_instrument_function,noclone)) ')

HOOKS = {"__cyg_profile_func_enter", "__cyg_profile_func_exit"}
SETJMP = {"setjmp", "_setjmp", "sigsetjmp", "__sigsetjmp", "vfork", "savectx", "getcontext"}
# libc functions that run our code (callbacks, exit handlers, thread cleanup).
CALLBACK_LIBC = {"qsort", "qsort_r", "bsearch", "tsearch", "tfind", "tdelete", "twalk",
                 "nftw", "ftw", "scandir", "pthread_once", "call_once", "dl_iterate_phdr",
                 "exit", "pthread_exit", "glob", "lfind", "lsearch", "atexit", "on_exit"}
# libc calls that can wait for an event without end: an optimized retry loop around one
# would never reach a park point.
BLOCKING_LIBC = {
    "read", "readv", "pread", "preadv", "recv", "recvfrom", "recvmsg", "recvmmsg", "accept",
    "accept4", "connect", "poll", "ppoll", "select", "pselect", "epoll_wait", "epoll_pwait",
    "wait", "waitpid", "wait3", "wait4", "waitid", "sigwait", "sigwaitinfo", "sigtimedwait",
    "sigsuspend", "pause", "sem_wait", "sem_timedwait", "pthread_barrier_wait",
    "pthread_rwlock_rdlock", "pthread_rwlock_wrlock", "pthread_spin_lock", "pthread_timedjoin_np",
    "pthread_mutex_timedlock", "msgrcv", "semop", "semtimedop", "flock", "lockf", "fcntl",
    "fgets", "fgetc", "getc", "getchar", "fread", "scanf", "fscanf", "getline", "getdelim",
    "system", "syscall", "clock_nanosleep", "mq_receive", "mq_timedreceive",
}
UNSAFE_LIBC = set(WRAPPED) | CALLBACK_LIBC | BLOCKING_LIBC | SETJMP


def enabled(argv: list[str], on: str = FLAG, off: str = NO_FLAG, env_name: str = ENV,
            default: bool = DEFAULT) -> tuple[bool, list[str]]:
    """(optimize?, argv without our flags): the last of --optimize-leaves /
    --no-optimize-leaves, else HMIGRATE_OPTIMIZE=1/0, else the default. The same for
    --optimize-frames with frames_enabled."""
    flags = [a for a in argv if a in (on, off)]
    rest = [a for a in argv if a not in (on, off)]
    if flags:
        return flags[-1] == on, rest
    env = os.environ.get(env_name, "")
    return (env != "0") if env else default, rest


def frames_enabled(argv: list[str]) -> tuple[bool, list[str]]:
    """(-Og described frames?, argv without --optimize-frames / --no-optimize-frames)."""
    return enabled(argv, FRAMES_FLAG, NO_FRAMES_FLAG, FRAMES_ENV, False)


# ---------------------------------------------------------------- assembly reading


@dataclass
class AsmFunction:
    name: str
    calls: list[str] = field(default_factory=list)  # direct targets, in order
    indirect: bool = False
    instrumented: bool = False
    insns: int = 0
    loops: list[list[str]] = field(default_factory=list)  # direct targets called per loop


_TYPE = re.compile(r"^\s*\.type\s+([\w.$]+)\s*,\s*[@%]function")
_SIZE = re.compile(r"^\s*\.size\s+([\w.$]+)\s*,")
_LABEL = re.compile(r"^([\w.$]+):")
_TOKEN = re.compile(r"[A-Za-z_.$][\w.$]*")
_X86_CALL = re.compile(r"^\s+call[lq]?\s+(\S+)")
_X86_BRANCH = re.compile(r"^\s+j\w+\s+(\.L\w+)\s*$")
_A64_CALL = re.compile(r"^\s+bl\s+(\S+)")
_A64_ICALL = re.compile(r"^\s+blr\s")
_A64_COND = "eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le|al"
_A64_BRANCH = re.compile(rf"^\s+(?:b|b\.?(?:{_A64_COND})|cbn?z|tbn?z)\s+(?:.*,\s*)?(\.L\w+)\s*$")


def parse_asm(text: str, isa: Isa) -> tuple[dict[str, AsmFunction], set[str]]:
    """Functions defined in GCC's assembly output, and the symbols used other than by a
    direct call (address taken, data references)."""
    x86 = isa.name == X86_64.name
    funcs: dict[str, AsmFunction] = {}
    typed: set[str] = set()
    referenced: set[str] = set()
    cur: AsmFunction | None = None
    labels: dict[str, int] = {}
    calls_at: list[tuple[int, str | None]] = []
    pos = 0
    for line in text.splitlines():
        code = line.split("#", 1)[0] if x86 else line.split("//", 1)[0]
        m = _TYPE.match(code)
        if m:
            typed.add(m.group(1))
            continue
        if cur is None:
            m = _LABEL.match(code)
            if m and m.group(1) in typed:
                cur = AsmFunction(m.group(1))
                labels, calls_at, pos = {}, [], 0
                continue
        else:
            m = _SIZE.match(code)
            if m and m.group(1) == cur.name:
                funcs[cur.name] = cur
                cur = None
                continue
            m = _LABEL.match(code)
            if m:
                labels[m.group(1)] = pos
                continue
            s = code.strip()
            if not s or s.startswith("."):
                _refs(code, referenced, cur.name)
                continue
            pos += 1
            cur.insns += 1
            m = (_X86_CALL if x86 else _A64_CALL).match(code)
            if m:
                t = m.group(1)
                if x86 and t.startswith("*"):
                    cur.indirect = True
                    calls_at.append((pos, None))
                else:
                    t = t.split("@", 1)[0]
                    if t in HOOKS:
                        cur.instrumented = cur.instrumented or t == "__cyg_profile_func_enter"
                    else:
                        cur.calls.append(t)
                        calls_at.append((pos, t))
                continue
            if not x86 and _A64_ICALL.match(code):
                cur.indirect = True
                calls_at.append((pos, None))
                continue
            m = (_X86_BRANCH if x86 else _A64_BRANCH).match(code)
            if m and m.group(1) in labels:  # a backward branch closes a loop
                lo = labels[m.group(1)]
                inside = [t for p, t in calls_at if lo <= p <= pos]
                if inside:
                    cur.loops.append(["*" if t is None else t for t in inside])
                continue
            # (the entry and exit hooks get the function's own address: not a use)
            _refs(code, referenced, cur.name)
            continue
        _refs(code, referenced)
    return funcs, referenced


def _refs(code: str, out: set[str], own: str | None = None) -> None:
    s = code.strip()
    if s.startswith((".type", ".size", ".globl", ".global", ".local", ".weak", ".hidden",
                     ".section", ".file", ".loc", ".ident", ".string", ".ascii")):
        return
    out.update(t for t in _TOKEN.findall(re.sub(r'"[^"]*"', "", code)) if t != own)


# ---------------------------------------------------------------- selection


def libc_names() -> set[str]:
    """Functions musl's libc.a and libgcc define for either ISA (cached per file set)."""
    paths = []
    for isa in (X86_64, AARCH64):
        paths += [f"{isa.musl_lib}/libc.a", isa.libgcc()]
    paths = [p for p in paths if os.path.exists(p)]
    key = hashlib.sha1(repr([(p, os.stat(p).st_mtime_ns) for p in paths]).encode()).hexdigest()
    cache = os.path.join(tempfile.gettempdir(), f"hmigrate-libc-names-{key[:16]}.json")
    try:
        with open(cache) as f:
            return set(json.load(f))
    except (OSError, ValueError):
        pass
    names: set[str] = set()
    for p in paths:
        out = subprocess.run([X86_64.tool("nm") if "x86_64" in p else AARCH64.tool("nm"),
                              "-g", "--defined-only", p], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "TtWi":
                names.add(parts[2])
    tmp = f"{cache}.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(sorted(names), f)
    os.replace(tmp, cache)
    return names


def select(per_isa: list[tuple[dict[str, AsmFunction], set[str]]], libc: set[str],
           injectable: dict[str, str | None]) -> tuple[set[str], dict[str, str]]:
    """Functions to optimize, and for every other function of the file why not.

    injectable: function -> None if the attribute can be put on its definition, else why
    not (functions missing from it are taken as not injectable)."""
    defined = set.intersection(*(set(f) for f, _ in per_isa))
    why: dict[str, str] = {}

    def no(f: str, reason: str) -> None:
        why.setdefault(f, reason)

    for funcs, refs in per_isa:
        for name in set(funcs) - defined:
            no(name, "one ISA only")
        for name in defined:
            fn = funcs[name]
            if name == "main":
                no(name, "main")
            if name in refs:
                no(name, "address taken")
            if fn.indirect:
                no(name, "indirect call")
            for t in fn.calls:
                if t == name:
                    no(name, "recursive")
                elif t in defined:
                    continue
                elif t in UNSAFE_LIBC:
                    no(name, f"parking, blocking or callback libc: {t}")
                elif t not in libc:
                    no(name, f"calls another file: {t}")
    for name in defined:
        if name not in why:
            r = injectable.get(name, "no DWARF location")
            if r:
                no(name, r)
    _no_cycles(per_isa[0][0], defined, no)
    while True:
        changed = False
        cand = defined - set(why)
        for funcs, _ in per_isa:
            for name in sorted(cand):
                bad = next((t for t in funcs[name].calls if t in defined and t not in cand), None)
                if bad and name not in why:
                    no(name, f"calls -O0: {bad}")
                    changed = True
            cand = defined - set(why)
            # Every loop that calls our code keeps one instrumented call: a park point
            # per iteration, as before.
            for name in sorted(defined):
                for loop in funcs[name].loops:
                    ours = [t for t in loop if t == "*" or t in defined or
                            t in UNSAFE_LIBC or t not in libc]
                    if not ours or any(t not in cand for t in ours):
                        continue
                    keep = max(ours, key=lambda t: (funcs[t].insns, t))
                    no(keep, f"park point of a loop: in {name}")
                    changed = True
                    cand = defined - set(why)
        if not changed:
            return defined - set(why), why


def _no_cycles(funcs: dict[str, AsmFunction], defined: set[str], no) -> None:
    """Mark functions on call cycles (mutual recursion) as -O0 (Tarjan's SCC)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    counter = [0]

    def visit(v: str) -> None:
        work = [(v, iter([t for t in funcs[v].calls if t in defined]))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter([t for t in funcs[nxt].calls if t in defined])))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    for w in comp:
                        no(w, "recursive")

    for v in sorted(defined):
        if v not in index:
            visit(v)


def verify(per_isa: list[tuple[dict[str, AsmFunction], set[str]]], sel: set[str],
           libc: set[str], before: set[str] | None = None) -> dict[str, str]:
    """Selected functions whose optimized code breaks the rule (GCC ignored the attribute,
    or its code calls something that can park): name -> why. before: the functions that
    had hooks in the -O0 compile (each must keep them unless selected)."""
    before = before or set()
    bad: dict[str, str] = {}
    for funcs, _ in per_isa:
        for name, fn in funcs.items():
            if name not in sel and not fn.instrumented and name in before:
                # the attribute landed on another declaration of the same line
                bad.setdefault(next(iter(sorted(sel))), f"attribute misplaced: {name}")
        for name in sorted(sel):
            fn = funcs.get(name)
            if fn is None:
                continue  # inlined into its callers and dropped: nothing to park in
            if fn.instrumented:
                bad.setdefault(name, "attribute not taken")
            elif fn.indirect:
                bad.setdefault(name, "indirect call")
            for t in fn.calls:
                ok = (t in sel or (t in libc and t not in UNSAFE_LIBC) or
                      (t in funcs and not funcs[t].instrumented and t not in UNSAFE_LIBC))
                if not ok:
                    bad.setdefault(name, f"calls -O0: {t}")
    return bad


# ---------------------------------------------------------------- source rewrite


def decl_lines(obj: str, src: str) -> dict[str, str | None | int]:
    """function -> declaration line in src (int), or why it has none, from the DWARF of
    the -O0 object."""
    from elftools.elf.elffile import ELFFile

    out: dict[str, str | None | int] = {}
    want = os.path.realpath(src)
    with open(obj, "rb") as f:
        elf = ELFFile(f)
        if not elf.has_dwarf_info():
            return out
        dw = elf.get_dwarf_info()
        for cu in dw.iter_CUs():
            top = cu.get_top_DIE()
            comp_dir = _s(top.attributes.get("DW_AT_comp_dir"))
            lp = dw.line_program_for_CU(cu)
            files = lp["file_entry"] if lp else []
            dirs = lp["include_directory"] if lp else []
            v5 = cu["version"] >= 5
            for die in top.iter_children():
                if die.tag != "DW_TAG_subprogram" or "DW_AT_low_pc" not in die.attributes:
                    continue
                name = _s(die.attributes.get("DW_AT_name"))
                if not name:
                    continue
                fi = die.attributes.get("DW_AT_decl_file")
                ln = die.attributes.get("DW_AT_decl_line")
                if fi is None or ln is None:
                    out[name] = "no DWARF location"
                    continue
                idx = fi.value if v5 else fi.value - 1
                if not 0 <= idx < len(files):
                    out[name] = "no DWARF location"
                    continue
                fe = files[idx]
                d = fe.dir_index if v5 else fe.dir_index - 1
                base = _s(dirs[d]) if 0 <= d < len(dirs) and (v5 or fe.dir_index) else ""
                path = os.path.join(comp_dir or "", base, _s(fe.name))
                if os.path.realpath(path) != want:
                    out[name] = f"not in the main file: {os.path.basename(_s(fe.name))}"
                else:
                    out[name] = ln.value
    return out


def _s(v) -> str:
    if v is None:
        return ""
    v = getattr(v, "value", v)
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def rewrite(text: str, src: str, lines: dict[str, int],
            attributes: dict[int, str] | None = None) -> str:
    """The source with the attribute at the start of each selected definition's line
    (or, per line, the one `attributes` gives), after a #line so that file names and
    line numbers stay the original's."""
    out = text.split("\n")
    at = {n: ATTRIBUTE for n in lines.values()} | (attributes or {})
    for n in sorted(at):
        if 0 < n <= len(out):
            out[n - 1] = at[n] + out[n - 1]
    return f'#line 1 "{src}"\n' + "\n".join(out)


def note(selected: set[str], why: dict[str, str], fallback: dict[str, str] | None = None,
         src: str | None = None) -> bytes:
    """What the object says about its functions (read back by the link's report and,
    for --optimize-frames, by its metadata: `o0_fallback` are -O0 in an -Og file)."""
    doc: dict = {"optimized": sorted(selected), "o0": why}
    if fallback is not None:
        doc["o0_fallback"] = fallback
        doc["file"] = os.path.basename(src or "")
    return json.dumps(doc, sort_keys=True).encode()


def summarize(notes: list[dict]) -> tuple[int, int, dict[str, int]]:
    """(optimized, -O0, -O0 count by reason kind) over the notes of a link's objects."""
    opt, o0, kinds = 0, 0, {}
    for n in notes:
        opt += len(n.get("optimized", []))
        for r in n.get("o0", {}).values():
            o0 += 1
            k = r.split(":", 1)[0]
            kinds[k] = kinds.get(k, 0) + 1
    return opt, o0, kinds
