"""-O0 per function where -Og frames would not move (`hmigrate-cc --optimize-frames`).

GCC's DWARF at -Og describes most variables at most calls, not all: an interpreter's
main loop keeps instruction fields in registers no variable names at every call it
makes. A thread parked under such a call could not move to the other ISA, so the
runtime would never park there: a program busy in that loop could not be moved at all.
Such a function is compiled -O0 instead (GCC's per-function `optimize("O0")` attribute),
where every variable has its slot: the same frame as without --optimize-frames.

Per C file, at compile time: the -Og objects of both ISAs are linked into probe
executables (musl's libc for the calls into it, anything else left unresolved), read
with the metadata's own analysis, and every function with a call where a thread may be
parked (the entry hook, a call into our code or unknown code, a wrapped or callback libc
function) that cannot be rebuilt on the other ISA, either way, is named with the first
reason. The link's metadata reads those functions as -O0 (the object's note).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from .config import AARCH64, WRAPPED, X86_64
from .optimize import SETJMP

# the probe's hooks: defined, so that calls to them are recognized as the hooks
HOOK_STUBS = """
void __cyg_profile_func_enter(void *f, void *c) { (void)f; (void)c; }
void __cyg_profile_func_exit(void *f, void *c) { (void)f; (void)c; }
"""
O0_ATTRIBUTE = '__attribute__((optimize("O0"))) '


@dataclass
class Probe:
    exes: dict[str, str]  # ISA -> probe executable
    unknown: set[str]  # symbols of other files (stubs here): code that may park


def probe(work: str, objects: dict[str, str], libc: set[str]) -> Probe | None:
    """Probe executables of one file's objects: libc from musl, every other symbol it
    uses a stub of its own (another file's code, unknown here). None when they do not
    link (then the caller keeps the file as it is and the metadata at the link decides)."""
    out = {}
    unknown: set[str] = set()
    try:
        for isa in (X86_64, AARCH64):
            nm = subprocess.run([isa.tool("nm"), "-u", objects[isa.name]], check=True,
                                capture_output=True, text=True, timeout=120).stdout
            unknown |= {ln.split()[-1] for ln in nm.splitlines() if ln.strip()} - libc
        unknown -= {"__cyg_profile_func_enter", "__cyg_profile_func_exit"}
        stubs = os.path.join(work, "stubs.s")
        with open(stubs, "w") as f:
            # aligned: some are data (an extern array of another file); weak: libc data
            # (stdout) a libc member defines wins
            f.write("\t.text\n" + "".join(f"\t.balign 16\n\t.weak {n}\n\t.type {n}, %function"
                                          f"\n{n}:\n\tnop\n" for n in sorted(unknown)))
        hooks_c = os.path.join(work, "hooks.c")
        with open(hooks_c, "w") as f:
            f.write(HOOK_STUBS)
        for isa in (X86_64, AARCH64):
            exe = os.path.join(work, f"probe-{isa.name}")
            objs = []
            for src in (stubs, hooks_c):
                o = os.path.join(work, f"{os.path.basename(src)}-{isa.name}.o")
                subprocess.run([isa.gcc, "-O0", "-c", src, "-o", o], check=True,
                               capture_output=True, timeout=120)
                objs.append(o)
            subprocess.run([isa.gcc, "-nostdlib", "-static", "-no-pie", "-Wl,-e,0", "-o", exe,
                            objects[isa.name], *objs, f"{isa.musl_lib}/libc.a", isa.libgcc()],
                           check=True, capture_output=True, timeout=300)
            out[isa.name] = exe
    except (subprocess.SubprocessError, OSError):
        return None
    return Probe(out, unknown)


def verdicts(pr: Probe) -> dict[str, str]:
    """Function -> why it falls back to -O0, from the probe executables."""
    from . import metadata as md  # capstone, pyelftools: only a frames build needs them

    X, A = X86_64.name, AARCH64.name
    bx, ba = md.Binary(pr.exes[X]), md.Binary(pr.exes[A])
    try:
        ours = {n for n, f in bx.dfuncs.items() if f.hooked_cu}

        def may_park(cs: dict) -> bool:
            t = cs["target"]
            if cs["kind"] == "exit_hook":
                return False
            if cs["kind"] == "enter_hook" or t is None:
                return True  # through a pointer: anything
            return t in WRAPPED or t in md.CALLBACK_LIBC or t in pr.unknown or t in ours

        out: dict[str, str] = {}
        for name in sorted(set(bx.dfuncs) & set(ba.dfuncs)):
            if not (bx.dfuncs[name].described and ba.dfuncs[name].described):
                continue
            fx, fa = md.analyse_function(bx, name), md.analyse_function(ba, name)
            if not any(c["kind"] == "enter_hook" for c in fx["call_sites"]):
                continue  # not instrumented: --optimize-leaves made it -O2
            why = _why(md, bx, ba, name, fx, fa, may_park)
            if why:
                out[name] = why
        return out
    finally:
        bx.close()
        ba.close()


def _why(md, bx, ba, name: str, fx: dict, fa: dict, may_park) -> str | None:
    X, A = X86_64.name, AARCH64.name
    jumps = sorted({c["target"] for c in fx["call_sites"] if c["target"] in SETJMP})
    if jumps:  # a jmp_buf holds its registers: recode/jmpbuf.py reads -O0 frames only
        return f"calls {jumps[0]}"
    probs = md.check_park_point(bx, fx) + md.check_park_point(ba, fa)
    if probs:
        return f"entry hook: {probs[0]}"
    pairs, ux, ua = md.match_call_sites(fx["call_sites"], fa["call_sites"])
    for isa, f, unpaired in ((X, fx, ux), (A, fa, ua)):
        for i in unpaired:
            c = f["call_sites"][i]
            if may_park(c):
                return f"{_site(c)}: no twin call on the other ISA ({isa})"
    for ix, ia in pairs:
        cx, ca = fx["call_sites"][ix], fa["call_sites"][ia]
        if not (may_park(cx) or may_park(ca)):
            continue
        why = (md.described_reasons(X, fx, cx, A, fa, ca)
               + md.described_reasons(A, fa, ca, X, fx, cx)
               + md.inlined_reasons(X, bx.dfuncs[name], cx)
               + md.inlined_reasons(A, ba.dfuncs[name], ca))
        if why:
            return f"{_site(cx)}: {why[0]}"
    return None


def _site(c: dict) -> str:
    return f"call to {c['target'] or 'a pointer'} at line {c['line']}"
