"""hmigrate-cc / hmigrate-ar: a CC for Makefiles that builds for x86-64 and aarch64 at once.

Objects: foo.o is a normal x86-64 object that carries its aarch64 twin in an
excluded section (.hmigrate.aarch64), so mv/cp/ar/ranlib keep both together.
Links: NAME_x86-64 and NAME_aarch64 with an aligned layout, NAME.hmigrate.json
(metadata), and NAME itself as a copy of the host binary (configure scripts run it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources

from . import asmfix, fallback, layout, optimize
from .config import (
    AARCH64,
    DROPPED_EXACT,
    DROPPED_PREFIXES,
    FORCED_CFLAGS,
    HOST,
    NOTE_SECTION,
    WRAPPED,
    X86_64,
    Isa,
    missing_tools,
)
from .objects import (
    ToolchainError,
    ar_member,
    embed_twin,
    extract_twin,
    is_archive,
    read_file_sections,
    read_note,
    twin_archive,
)
from .optimize import FRAMES_LEVEL

NOTE_BYTES = NOTE_SECTION.encode()
SOURCE_EXTS = (".c", ".i", ".s", ".S", ".sx")
ARG_FLAGS = {"-I", "-D", "-U", "-include", "-imacros", "-isystem", "-iquote", "-idirafter",
             "-x", "-MF", "-MT", "-MQ", "-Xlinker", "-L", "-l", "-o", "-T", "-u", "-e"}
DEP_FLAGS = {"-MD", "-MMD", "-MP"}
DEP_ARG_FLAGS = {"-MF", "-MT", "-MQ"}
MUSL_STUB_LIBS = {"c", "m", "pthread", "rt", "dl", "util", "crypt", "xnet", "resolv"}


def log(msg: str) -> None:
    if os.environ.get("HMIGRATE_VERBOSE"):
        print(f"hmigrate-cc: {msg}", file=sys.stderr)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    log(" ".join(cmd))
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        shown = " ".join(cmd)
        if len(shown) > 300 and not os.environ.get("HMIGRATE_VERBOSE"):
            shown = shown[:300] + " ... (HMIGRATE_VERBOSE=1 shows all)"
        raise ToolchainError(f"command failed ({res.returncode}): {shown}")
    if res.stderr:
        sys.stderr.write(res.stderr)
    return res


@dataclass
class Args:
    mode: str = "link"  # link | compile | asm | preprocess
    output: str | None = None
    sources: list[str] = field(default_factory=list)
    # Link inputs in command-line order: ("obj", path) ("ar", path) ("lib", name) ("src", path)
    inputs: list[tuple[str, str]] = field(default_factory=list)
    lib_dirs: list[str] = field(default_factory=list)
    cflags: list[str] = field(default_factory=list)  # passed to compiles (kept order)
    ldflags: list[str] = field(default_factory=list)  # -Wl,... and friends
    passthrough: bool = False  # -v, -print-*, --version: ask the host gcc
    optimize: bool = False  # --optimize-leaves / HMIGRATE_OPTIMIZE=1 (optimize.py)
    frames: bool = False  # --optimize-frames / HMIGRATE_OPTIMIZE_FRAMES=1: -Og, described


def parse(argv: list[str]) -> Args:
    a = Args()
    i = 0
    deps_only = False
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg in ARG_FLAGS and nxt is not None:
            i += 2
            if arg == "-o":
                a.output = nxt
            elif arg == "-L":
                a.lib_dirs.append(nxt)
            elif arg == "-l":
                a.inputs.append(("lib", nxt))
            elif arg == "-Xlinker":
                a.ldflags.append(f"-Wl,{nxt}")
            elif arg == "-T":
                raise ToolchainError("-T: hmigrate-cc generates the linker script itself")
            elif arg in ("-u", "-e"):
                a.ldflags.extend([arg, nxt])
            else:
                a.cflags.extend([arg, nxt])
            continue
        i += 1
        if arg == "-c":
            a.mode = "compile"
        elif arg == "-S":
            a.mode = "asm"
        elif arg == "-E":
            a.mode = "preprocess"
        elif arg in ("-M", "-MM"):
            deps_only = True
            a.cflags.append(arg)
        elif arg.startswith("-o") and len(arg) > 2:
            a.output = arg[2:]
        elif arg.startswith("-L") and len(arg) > 2:
            a.lib_dirs.append(arg[2:])
        elif arg.startswith("-l") and len(arg) > 2:
            a.inputs.append(("lib", arg[2:]))
        elif arg.startswith("-Wl,"):
            a.ldflags.append(arg)
        elif arg == "-shared":
            raise ToolchainError("-shared: hmigrate-cc builds static executables only")
        elif arg in ("-v", "--version", "-dumpversion", "-dumpmachine", "-dumpfullversion") or (
            arg.startswith("-print-")
        ):
            a.passthrough = True
            a.cflags.append(arg)
        elif arg.startswith("-") and arg != "-":
            a.cflags.append(arg)
        elif arg.endswith(SOURCE_EXTS) or arg == "-":
            a.sources.append(arg)
            a.inputs.append(("src", arg))
        elif os.path.exists(arg) and is_archive(arg):
            a.inputs.append(("ar", arg))
        else:
            a.inputs.append(("obj", arg))
    if deps_only and a.mode == "link":
        a.mode = "preprocess"
    return a


def isa_cflags(isa: Isa, cflags: list[str], *, deps: bool) -> list[str]:
    """User flags adapted to one ISA, then the forced ones (last wins in GCC)."""
    out: list[str] = []
    skip_next = False
    for j, f in enumerate(cflags):
        if skip_next:
            skip_next = False
            continue
        if f in DEP_ARG_FLAGS:
            if deps:
                out.extend(cflags[j : j + 2])
            skip_next = True
            continue
        if f in DEP_FLAGS and not deps:
            continue
        if f in DROPPED_EXACT or f.startswith(DROPPED_PREFIXES):
            continue
        if f.startswith("-g"):
            continue
        if f.startswith("-m") and not isa.keeps_machine_flags:
            continue
        out.append(f)
    return out + list(FORCED_CFLAGS) + list(isa.extra_cflags) + isa.system_cflags()


_EXPLICIT_REG = re.compile(r"\bregister\b[^;{}]*\b(?:__asm__|asm)\s*\(")


def _explicit_registers(src: str) -> bool:
    """The file declares a variable in a named register (`register long x asm("r10")`),
    which needs the keyword: keep it there."""
    try:
        with open(src, errors="replace") as f:
            return bool(_EXPLICIT_REG.search(f.read()))
    except OSError:
        return True


def compile_one(src: str, out: str, cflags: list[str], instrument: bool = True,
                optimize: bool = False, frames: bool = False) -> None:
    """Compile src for both ISAs into out (x86-64 object with the aarch64 twin inside).

    C goes through assembly so string literals can get one section each (asmfix).
    optimize: functions that can never be on a parked stack get -O2 (optimize.py).
    frames: the instrumented functions are -Og instead of -O0 (optimize.FRAMES_ENV).
    """
    tmp = f"{out}.hmigrate-{AARCH64.name}.tmp"
    # A configure probe's object is never in a program: straight to objects (same
    # compilers and flags), without the per-literal sections.
    via_asm = src.endswith((".c", ".i")) and not probing()
    wa = [f for f in cflags if f.startswith("-Wa,")]

    drop_register = instrument and via_asm and not _explicit_registers(src)

    def isa_flags(isa: Isa, deps: bool) -> list[str]:
        flags = isa_cflags(isa, cflags, deps=deps)
        if not instrument:
            flags = [f for f in flags if f != "-finstrument-functions"]
        elif frames:
            # no section anchors: aarch64 GCC would address string literals from one
            # anchor in .rodata, which asmfix moves each to a section of its own
            flags = [FRAMES_LEVEL if f == "-O0" else f for f in flags] + \
                ["-fno-section-anchors"]
        if drop_register:
            # GCC keeps `register` locals in callee-saved registers even at -O0 (mawk's
            # interpreter loop): such a frame has no slot to move. Dropping the keyword
            # is always valid C (a register variable's address is never taken).
            flags.append("-Dregister=")
        if deps and ("-MD" in flags or "-MMD" in flags):
            # GCC would name the dependency file and target after the .s we ask for.
            if "-MF" not in flags:
                flags += ["-MF", os.path.splitext(out)[0] + ".d"]
            if "-MT" not in flags and "-MQ" not in flags:
                flags += ["-MT", out]
        return flags

    def to_asm(isa: Isa, dest: str, deps: bool, source: str = src,
               pre: tuple[str, ...] = ()) -> str:
        asm = f"{dest}.hmigrate.s"
        try:
            run([isa.gcc, *pre, *isa_flags(isa, deps), "-S", source, "-o", asm])
            with open(asm) as f:
                return f.read()
        finally:
            if os.path.exists(asm) and not os.environ.get("HMIGRATE_KEEP_TMP"):
                os.unlink(asm)

    def assemble(isa: Isa, text: str, dest: str) -> None:
        asm = f"{dest}.hmigrate.s"
        with open(asm, "w") as f:
            f.write(asmfix.split_string_literals(text))
        try:
            run([isa.gcc, *wa, "-c", asm, "-o", dest])
        finally:
            if os.path.exists(asm) and not os.environ.get("HMIGRATE_KEEP_TMP"):
                os.unlink(asm)

    def both(fn, *per_isa_args) -> list:
        with ThreadPoolExecutor(max_workers=2) as ex:
            futs = [ex.submit(fn, *a) for a in per_isa_args]
            errors, res = [], []
            for fut in futs:
                try:
                    res.append(fut.result())
                except ToolchainError as e:
                    errors.append(e)
        if errors:
            raise errors[0]
        return res

    note = None
    try:
        if not via_asm:
            both(lambda isa, dest, deps: run([isa.gcc, *isa_flags(isa, deps), "-c", src,
                                              "-o", dest]),
                 (X86_64, out, True), (AARCH64, tmp, False))
        else:
            asms = both(to_asm, (X86_64, out, True), (AARCH64, tmp, False))
            leaves: dict[str, int] = {}
            if optimize and instrument and src.endswith(".c"):
                asms, note, leaves = _optimize_leaves(src, out, asms, assemble, to_asm, both)
            if frames and instrument and src.endswith(".c"):
                checked = _frames_fallback(src, asms, assemble, to_asm, both, leaves, note)
                if checked is None:  # not checked: the whole file -O0, as without the flag
                    frames = False
                    asms = both(to_asm, (X86_64, out, True), (AARCH64, tmp, False))
                    note = None
                    if optimize:
                        asms, note, leaves = _optimize_leaves(src, out, asms, assemble,
                                                              to_asm, both)
                else:
                    asms, note = checked
            both(assemble, (X86_64, asms[0], out), (AARCH64, asms[1], tmp))
        embed_twin(out, tmp, note)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _compile_rewritten(src: str, work: str, text: str, to_asm, both) -> list[str]:
    """Both ISAs' assembly of a rewritten copy of src (function attributes added; its
    quoted includes still found beside src)."""
    copy = os.path.join(work, os.path.basename(src))
    with open(copy, "w", errors="surrogateescape") as f:
        f.write(text)
    pre = ("-iquote", os.path.dirname(os.path.abspath(src)))
    return both(to_asm, (X86_64, os.path.join(work, "x"), False, copy, pre),
                (AARCH64, os.path.join(work, "a"), False, copy, pre))


def _optimize_leaves(src: str, out: str, asms: list[str], assemble, to_asm,
                     both) -> tuple[list[str], bytes, dict[str, int]]:
    """The two ISAs' assembly with the functions that can never be on a parked stack
    compiled at -O2 (a second compile of a rewritten copy of src), the note that says
    which and why the others stay -O0, and the lines that took the attribute. Falls back
    to the -O0 assembly."""
    parsed = [optimize.parse_asm(asms[0], X86_64), optimize.parse_asm(asms[1], AARCH64)]
    libc = optimize.libc_names()
    everything = {n: None for n in parsed[0][0]}
    sel, why = optimize.select(parsed, libc, everything)
    if not sel:
        return asms, optimize.note(sel, why), {}
    work = tempfile.mkdtemp(prefix="hmigrate-opt-")
    try:
        probe = os.path.join(work, "o0.o")
        assemble(X86_64, asms[0], probe)
        decl = optimize.decl_lines(probe, src)
        inject: dict[str, str | None] = {n: (None if isinstance(v, int) else v)
                                         for n, v in decl.items()}
        with open(src, errors="surrogateescape") as f:
            text = f.read()
        for _ in range(3):
            sel, why = optimize.select(parsed, libc, inject)
            if not sel:
                break
            try:
                new = _compile_rewritten(src, work, optimize.rewrite(
                    text, src, {n: decl[n] for n in sel}), to_asm, both)
            except ToolchainError as e:
                log(f"{src}: optimized compile failed, all -O0: {e}")
                for n in sel:
                    inject[n] = "attribute not taken"
                continue
            hooked = {n for f, _ in parsed for n, fn in f.items() if fn.instrumented}
            bad = optimize.verify([optimize.parse_asm(new[0], X86_64),
                                   optimize.parse_asm(new[1], AARCH64)], sel, libc, hooked)
            if not bad:
                return new, optimize.note(sel, why), {n: decl[n] for n in sel}
            if any(r.startswith("attribute misplaced") for r in bad.values()):
                # another function of a selected line took the attribute: keep all -O0
                log(f"{src}: {bad}; all -O0")
                return asms, optimize.note(set(), {**why, **{n: "attribute misplaced"
                                                             for n in sel}}), {}
            for n, r in bad.items():
                inject[n] = r
        return asms, optimize.note(set(), why), {}
    finally:
        if not os.environ.get("HMIGRATE_KEEP_TMP"):
            shutil.rmtree(work, ignore_errors=True)


def _frames_fallback(src: str, asms: list[str], assemble, to_asm, both,
                     leaves: dict[str, int],
                     note: bytes | None) -> tuple[list[str], bytes] | None:
    """--optimize-frames: the -Og functions whose frames could not move to the other ISA
    at a call where a thread may park are compiled -O0 instead (fallback.py); the note
    names them (the link's metadata reads them as -O0) and why. None: the file could not
    be checked (its probe did not link, or its -O0 rewrite did not compile)."""
    doc = json.loads(note) if note else {"optimized": [], "o0": {}}
    work = tempfile.mkdtemp(prefix="hmigrate-frames-")

    def noted(fallback: dict[str, str]) -> bytes:
        return optimize.note(set(doc["optimized"]), doc["o0"], fallback, src)

    try:
        objs = {X86_64.name: os.path.join(work, "x.o"), AARCH64.name: os.path.join(work, "a.o")}
        both(assemble, (X86_64, asms[0], objs[X86_64.name]),
             (AARCH64, asms[1], objs[AARCH64.name]))
        pr = fallback.probe(work, objs, optimize.libc_names())
        if pr is None:
            log(f"{src}: no probe link; the file is -O0")
            return None
        why = fallback.verdicts(pr)
        if not why:
            return asms, noted({})
        # from the linked probe: an object's DWARF may have relocations pyelftools cannot
        # apply (TLS variables: R_X86_64_DTPOFF32)
        decl = optimize.decl_lines(pr.exes[X86_64.name], src)
        lines = {n: d for n in why if isinstance(d := decl.get(n), int)}
        with open(src, errors="surrogateescape") as f:
            text = f.read()
        try:
            new = _compile_rewritten(src, work, optimize.rewrite(
                text, src, leaves, {ln: fallback.O0_ATTRIBUTE for ln in lines.values()}),
                to_asm, both)
        except ToolchainError as e:
            log(f"{src}: -O0 fallback compile failed, the file is -O0: {e}")
            return None
        # a function without a line of its own (a header's inline) stays -Og: its
        # untranslatable calls are in the runtime's table, no thread parks above them
        return new, noted({n: why[n] for n in lines})
    finally:
        if not os.environ.get("HMIGRATE_KEEP_TMP"):
            shutil.rmtree(work, ignore_errors=True)


def default_object_name(src: str) -> str:
    base = os.path.basename(src)
    return os.path.splitext(base)[0] + ".o"


# ---------------------------------------------------------------- link


@dataclass
class IsaLink:
    isa: Isa
    files: list[str]  # link-line inputs between crtbegin and libc
    logical: dict[str, str]  # absolute path -> logical name shared across ISAs


def runtime_sources() -> list[tuple[str, bool]]:
    """(path, instrumented) of the C runtime linked into every binary."""
    root = resources.files("docker_hmigrate") / "runtime"
    return [
        (str(root / "hmigrate_rt.c"), False),  # hooks and parking: must not instrument itself
        (str(root / "hmigrate_wrap.c"), True),  # wrappers of blocking calls: clean -O0 frames
        (str(root / "hmigrate_mmap.c"), False),  # runs under malloc's lock: never parks
    ]


def runtime_cache_dir() -> str:
    """Where compiled runtimes are kept between links, one folder per version of the
    runtime and of the compile steps (HMIGRATE_CACHE, else ~/.cache/hmigrate-cc)."""
    pkg = resources.files("docker_hmigrate")
    files = sorted((pkg / "runtime").iterdir(), key=lambda f: f.name)
    files += [pkg / "toolchain" / n for n in ("driver.py", "asmfix.py", "config.py")]
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    for isa in (X86_64, AARCH64):  # a compiler upgraded in place gets a new folder
        gcc = shutil.which(isa.gcc)
        h.update(f"{gcc}:{os.stat(gcc).st_mtime_ns if gcc else 0}".encode())
    base = os.environ.get("HMIGRATE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "hmigrate-cc")
    return os.path.join(base, "rt-" + h.hexdigest()[:16])


def build_runtime(work: str) -> list[str]:
    """Compile the runtime into bundled objects; returns x86-64 paths in work/rt.

    Compiled once and cached (runtime_cache_dir): every link needs it, and configure
    scripts link hundreds of probes. A cache that cannot be written is skipped."""
    out = []
    inc = str(resources.files("docker_hmigrate") / "runtime")
    cache = runtime_cache_dir()
    rt = os.path.join(work, "rt")
    os.makedirs(rt, exist_ok=True)
    for src, instr in runtime_sources():
        name = os.path.basename(src)[:-2] + ".o"
        obj = os.path.join(rt, name)
        if os.path.exists(os.path.join(cache, name)):
            shutil.copyfile(os.path.join(cache, name), obj)
        else:
            compile_one(src, obj, ["-I", inc, "-D_GNU_SOURCE"], instrument=instr)
        out.append(obj)
    if not os.path.isdir(cache):
        # A complete folder appears at once (rename); a concurrent link may win the race.
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=".rt-", dir=os.path.dirname(cache))
            for obj in out:
                shutil.copyfile(obj, os.path.join(tmp, os.path.basename(obj)))
            try:
                os.rename(tmp, cache)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def find_lib(name: str, dirs: list[str]) -> str | None:
    for d in dirs:
        p = os.path.join(d, f"lib{name}.a")
        if os.path.exists(p):
            return os.path.abspath(p)
    return None


def prepare_inputs(args: Args, work: str, rt_objs: list[str]) -> dict[str, IsaLink]:
    x = IsaLink(X86_64, [], {})
    a = IsaLink(AARCH64, [], {})
    n = 0
    srcdir = os.path.join(work, "src")
    entries: list[tuple[str, str]] = []
    for kind, val in args.inputs:
        if kind == "src":
            os.makedirs(srcdir, exist_ok=True)
            obj = os.path.join(srcdir, f"{len(entries)}_{default_object_name(val)}")
            compile_one(val, obj, args.cflags, optimize=args.optimize, frames=args.frames)
            entries.append(("obj", obj))
        elif kind == "lib":
            found = find_lib(val, args.lib_dirs)
            if found:
                entries.append(("ar", found))
            elif val in MUSL_STUB_LIBS:
                continue  # musl's libc.a holds all of these
            else:
                raise ToolchainError(f"cannot find -l{val}: need a static lib{val}.a built with "
                                     "hmigrate-cc in a -L directory")
        else:
            entries.append((kind, val))
    entries += [("obj", p) for p in rt_objs]
    for kind, val in entries:
        p = os.path.abspath(val)
        if not os.path.exists(p):
            raise ToolchainError(f"{val}: no such file")
        n += 1
        if kind == "obj":
            dest = os.path.join(work, AARCH64.name, f"{n}_{os.path.basename(p)}")
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            extract_twin(p, dest)
            name = "obj:" + os.path.basename(p) if p.startswith(work) else "obj:" + p
        else:
            dest = os.path.join(work, AARCH64.name, f"{n}_{os.path.basename(p)}")
            twin_archive(p, dest, os.path.join(work, AARCH64.name, f"{n}_members"))
            name = "ar:" + p
        layout.check_path(p)
        x.files.append(p)
        x.logical[p] = name
        a.files.append(dest)
        a.logical[dest] = name
    return {X86_64.name: x, AARCH64.name: a}


def system_files(isa: Isa) -> tuple[list[str], list[str], list[str], dict[str, str]]:
    """(start files, libraries, end files, logical names) for a static musl link."""
    ml = isa.musl_lib
    start = [f"{ml}/crt1.o", f"{ml}/crti.o", isa.gcc_file("crtbeginT.o")]
    libs = [f"{ml}/libc.a", isa.libgcc(), isa.gcc_file("libgcc_eh.a")]
    libs = [p for p in libs if os.path.exists(p)]
    end = [isa.gcc_file("crtend.o"), f"{ml}/crtn.o"]
    logical = {p: "sys:" + os.path.basename(p) for p in start + libs + end}
    return start, libs, end, logical


def link_cmd(il: IsaLink, out: str, mapfile: str, ldflags: list[str],
             script: str | None) -> list[str]:
    start, libs, end, _ = system_files(il.isa)
    cmd = [il.isa.gcc, "-nostdlib", "-static", "-no-pie",
           "-Wl,-z,max-page-size=0x10000", "-Wl,-z,noexecstack", "-Wl,--build-id=none"]
    cmd += start + il.files
    cmd += ["-Wl,--start-group", *libs, "-Wl,--end-group", *end]
    cmd += [f"-Wl,--wrap={s}" for s in WRAPPED]
    cmd += list(il.isa.extra_link_flags)
    cmd += [f for f in ldflags if "--gc-sections" not in f and "-Map" not in f]
    cmd += [f"-Wl,-Map={mapfile}", "-o", out]
    if script:
        cmd += ["-Wl,-T," + script]
    return cmd


_MAP_MEMBER = re.compile(r"^(.+?\.a)\(([^()]+)\)(?:\s+\S.*)?$")


def parse_map_inputs(text: str) -> list[tuple[str, str | None]]:
    """Files the linker loaded, from a GNU ld map: plain objects and archive members."""
    members: list[tuple[str, str | None]] = []
    plain: list[tuple[str, str | None]] = []
    in_members = False
    for line in text.splitlines():
        if line.startswith("Archive member included"):
            in_members = True
            continue
        if line.startswith(("Discarded input sections", "Memory Configuration", "Merging",
                            "Allocating common symbols", "Linker script and memory map")):
            in_members = False
        if in_members and line and not line[0].isspace():
            # ld writes "ARCHIVE(MEMBER)" alone on its line when it is 29 characters or
            # longer, else padded and followed by the referencing "FILE (SYMBOL)" on the
            # same line: which form appears depends on the path's length, i.e. on the
            # folder the sources lie in and on our per-ISA work folder.
            m = _MAP_MEMBER.match(line)
            if not m:
                continue
            path, member = m.group(1), m.group(2)
            if not os.path.exists(path):
                continue
            if (path, member) not in members:
                members.append((path, member))
        elif line.startswith("LOAD "):
            path = line[5:].strip()
            if path.endswith(".a") or path.startswith("linker stubs"):
                continue
            if os.path.exists(path) and not is_archive(path):
                plain.append((path, None))
    return plain + members


def parse_map_stubs(text: str) -> list[tuple[str, int]]:
    """(ld input pattern of the section a stub follows, stub size) from a GNU ld map."""
    out = []
    prev: str | None = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^ (\.\S+)(?:\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(.+))?$", line)
        i += 1
        if not m:
            continue
        name, addr, size, src = m.groups()
        if addr is None and i < len(lines):  # long names wrap onto the next line
            m2 = re.match(r"^\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(.+)$", lines[i])
            if not m2:
                continue
            addr, size, src = m2.groups()
            i += 1
        src = src.strip()
        if name.endswith(".stub") and src.startswith("linker stubs"):
            if prev is not None:
                out.append((prev, int(size, 16)))
            continue
        am = re.match(r"^(.*\.a)\((.*)\)$", src)
        prev = f"{am.group(1)}:{am.group(2)}({name})" if am else f"{src}({name})"
    return out


def grow_for_stubs(units: list[layout.Unit], stubs: list[tuple[str, int]]) -> int:
    """Add room for linker stubs behind their sections; returns how many units grew."""
    by_pattern = {u.pattern: u for u in units}
    need: dict[str, int] = {}
    for pattern, size in stubs:
        need[pattern] = need.get(pattern, 0) + size
    grown = 0
    for pattern, size in need.items():
        u = by_pattern.get(pattern)
        if u is None:
            continue
        if u.stub_room < size:
            u.size += size - u.stub_room
            u.stub_room = size
            grown += 1
    return grown


def units_for(inputs: list[tuple[str, str | None]], logical: dict[str, str]) -> list[layout.Unit]:
    units: dict[str, layout.Unit] = {}
    order: list[str] = []
    for path, member in inputs:
        lname = logical.get(path, "sys:" + os.path.basename(path))
        if member is not None:
            lname = f"{lname}({member})"
        for s in read_file_sections(path, member):
            region = layout.classify(s.name, nobits=s.nobits, tls=s.tls)
            key = f"{lname}|{s.name}"
            u = units.get(key)
            if u is None:
                units[key] = layout.Unit(key, layout.ld_pattern(path, member, s.name), s.name,
                                         region, s.size, s.align, s.symbols, s.merge, s.inner)
                order.append(key)
            else:  # several same-named sections in one file: one statement places them all
                u.size = layout.align_up(u.size, s.align) + s.size
                u.align = max(u.align, s.align)
                u.mergeable = u.mergeable or s.merge
                u.inner += tuple((n, o + u.size - s.size) for n, o in s.inner)
    return [units[k] for k in order]


def report_optimization(out: str, loaded: list[tuple[str, str | None]]) -> set[tuple[str, str]]:
    """Per binary: how many of its functions --optimize-leaves compiled at -O2 and why
    the others keep the -O0 translatable frame, and how many --optimize-frames left -O0
    and why (from the notes of the objects used). Returns those (file, function)."""
    notes = []
    for path, member in loaded:
        try:
            if member is None:
                with open(path, "rb") as f:
                    bodies = [f.read()]
            else:
                bodies = ar_member(path, member)
            # Only objects compiled with --optimize-leaves carry the note: a byte search
            # skips parsing the others (libc's members, ~100 per link).
            notes += [n for b in bodies if b.startswith(b"\x7fELF") and NOTE_BYTES in b
                      for n in [read_note(b)] if n is not None]
        except (OSError, ValueError, ToolchainError):
            continue
    if not notes:
        return set()
    opt, o0, kinds = optimize.summarize(notes)
    why = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
    if opt or o0:
        print(f"hmigrate-cc: {os.path.basename(out)}: {opt} functions optimized (-O2, no "
              f"hooks), {o0} -O0 instrumented ({why}); {len(notes)} objects", file=sys.stderr)
    fallen = {(n.get("file", ""), f): r for n in notes for f, r in n.get("o0_fallback", {}).items()}
    if fallen:
        from .metadata import reason_kind

        kinds = {}
        for r in fallen.values():
            k = reason_kind(r)
            kinds[k] = kinds.get(k, 0) + 1
        top = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:5])
        print(f"hmigrate-cc: {os.path.basename(out)}: {len(fallen)} functions -O0 fallback "
              f"(their -Og frames could not move where a thread parks: {top})", file=sys.stderr)
    return set(fallen)


def report_described(out: str, summary: dict) -> None:
    """--optimize-frames: how many -Og functions, and at how many of their calls a frame
    can move to the other ISA (the others are in the runtime's table: no thread parks
    above them)."""
    if not summary.get("functions"):
        return
    per = "; ".join(
        f"{isa}: {s['translatable']} of {s['call_sites']} call sites translatable"
        + (" (" + ", ".join(f"{n} {k}" for k, n in s["reasons"].items()) + ")"
           if s["reasons"] else "")
        for isa, s in summary.items() if isa != "functions")
    print(f"hmigrate-cc: {os.path.basename(out)}: {summary['functions']} functions -Og with "
          f"described frames; {per}", file=sys.stderr)


def probing() -> bool:
    """HMIGRATE_PROBE=1 (for a configure script's run): a link only checks that both
    ISAs link and writes the host's plain link, without the aligned layout, variants
    and metadata, which take most of a link's time. Compiles are unchanged, so what a
    configure script learns is what the real build sees; the real build (make) runs
    without it."""
    return os.environ.get("HMIGRATE_PROBE") == "1"


def link(args: Args) -> int:
    # Imported here: every compile (hundreds per configure script) starts this module.
    from tenacity import Retrying, retry_if_result, stop_after_attempt

    out = args.output or "a.out"
    keep = bool(os.environ.get("HMIGRATE_KEEP_TMP"))
    work = tempfile.mkdtemp(prefix="hmigrate-link-")
    try:
        rt = build_runtime(work)
        links = prepare_inputs(args, work, rt)
        for il in links.values():
            il.logical.update(system_files(il.isa)[3])
        # Pass 1: plain links, only to learn which files and sections get used.
        units: dict[str, list[layout.Unit]] = {}
        o0_fallback: set[tuple[str, str]] = set()
        for name, il in links.items():
            mp = os.path.join(work, f"pass1_{name}.map")
            run(link_cmd(il, os.path.join(work, f"pass1_{name}"), mp, args.ldflags, None))
            if probing():
                continue
            with open(mp) as f:
                loaded = parse_map_inputs(f.read())
            units[name] = units_for(loaded, il.logical)
            if name == X86_64.name:
                o0_fallback = report_optimization(out, loaded)
        if probing():
            # Both ISAs link (what a probe asks); the host's plain link runs its tests.
            shutil.copy2(os.path.join(work, f"pass1_{HOST.name}"), out)
            return 0
        # Pass 2: aligned links. The aarch64 linker adds erratum-843419 stubs after some
        # sections depending on their addresses; grow those units and relink until no
        # new stub appears.
        outs: dict[str, str] = {}
        plans: list[layout.Plan] = []

        def aligned_link() -> int:
            """One aligned link of both ISAs; how many units new stubs made grow."""
            plans.append(layout.plan_layout(units, (X86_64.name, AARCH64.name)))
            grown = 0
            for name, il in links.items():
                script = os.path.join(work, f"layout_{name}.ld")
                with open(script, "w") as f:
                    f.write(layout.linker_script(plans[-1], name))
                dest = f"{out}_{name}"
                mp = os.path.join(work, f"final_{name}.map")
                run(link_cmd(il, dest, mp, args.ldflags, script))
                outs[name] = dest
                with open(mp) as f:
                    grown += grow_for_stubs(units[name], parse_map_stubs(f.read()))
            return grown

        # At most 5 links, relinking while stubs appear (the last link stands, as before).
        Retrying(
            stop=stop_after_attempt(5),
            retry=retry_if_result(lambda grown: grown > 0),
            before_sleep=lambda state: log(
                f"linker stubs: {state.outcome.result()} units grown, relinking "
                f"(attempt {state.attempt_number + 1})"),
            retry_error_callback=lambda state: state.outcome.result(),
        )(aligned_link)
        plan = plans[-1]
        from . import check, metadata, patch

        report = check.check_alignment(outs[X86_64.name], outs[AARCH64.name],
                                       allowed=set(plan.unalignable))
        if not report.ok and not os.environ.get("HMIGRATE_NO_CHECK"):
            sys.stderr.write(report.text())
            raise ToolchainError(f"{out}: aligned layout check FAILED")
        md = metadata.build_metadata(outs[X86_64.name], outs[AARCH64.name], plan,
                                     o0_fallback)
        md["checks"]["align"] = report.text().strip().splitlines()[-1]
        # No thread parks while an untranslatable frame is on its stack (runtime table).
        for name, dest in outs.items():
            patch.write_unclean(dest, [tuple(r) for r in md["unclean_ranges"][name]])
            md["binaries"][name]["sha256"] = metadata._sha256(dest)
        metadata.write(md, f"{out}.hmigrate.json")
        if not md["checks"]["park_points_clean"] and not os.environ.get("HMIGRATE_NO_CHECK"):
            for p in md["checks"]["problems"]:
                sys.stderr.write(f"hmigrate-cc: unclean park point: {p}\n")
            raise ToolchainError(f"{out}: equivalence points are not clean (see above)")
        log(f"{md['checks']['untranslatable_functions']} functions never park "
            "(see untranslatable_reasons in the metadata)")
        report_described(out, md["checks"]["described"])
        host = outs[HOST.name]
        tmp_out = f"{out}.hmigrate-tmp"
        shutil.copy2(host, tmp_out)
        os.replace(tmp_out, out)
        log(f"linked {outs} ({report.aligned} symbols aligned)")
        return 0
    finally:
        if keep:
            print(f"hmigrate-cc: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def host_cmd(args: Args, argv: list[str]) -> list[str]:
    if args.passthrough:
        return [HOST.gcc, *argv]
    return [HOST.gcc, *isa_cflags(HOST, args.cflags, deps=True), *args.sources,
            *(["-o", args.output] if args.output else []),
            *(["-E"] if args.mode == "preprocess" else ["-S"] if args.mode == "asm" else [])]


def cc(argv: list[str]) -> int:
    if argv and argv[0] == "--check-align":
        from . import check

        return check.main(argv[1:])
    opt, argv = optimize.enabled(argv)
    frames, argv = optimize.frames_enabled(argv)
    args = parse(argv)
    args.optimize, args.frames = opt, frames
    if args.passthrough or args.mode in ("preprocess", "asm"):
        return subprocess.call(host_cmd(args, argv))
    miss = missing_tools()
    if miss:
        raise ToolchainError("missing cross toolchain pieces: " + ", ".join(miss) +
                             " (apt-get install gcc-aarch64-linux-gnu musl-tools musl-dev "
                             "musl-dev:arm64)")
    if args.mode == "compile":
        if args.output and len(args.sources) > 1:
            raise ToolchainError("-o with -c and several sources")
        if not args.sources:
            raise ToolchainError("no source file")
        for src in args.sources:
            compile_one(src, args.output or default_object_name(src), args.cflags,
                        optimize=args.optimize, frames=args.frames)
        return 0
    if not args.inputs:
        raise ToolchainError("no input files")
    return link(args)


def cc_main() -> None:
    try:
        sys.exit(cc(sys.argv[1:]))
    except ToolchainError as e:
        print(f"hmigrate-cc: error: {e}", file=sys.stderr)
        sys.exit(1)


def ar_main() -> None:
    """Objects are plain x86-64 ELF carrying their twin, so the host ar does the job."""
    sys.exit(subprocess.call([HOST.tool("ar"), *sys.argv[1:]]))
