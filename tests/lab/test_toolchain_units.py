"""Fast tests of the toolchain's pure logic (no compilers needed)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from docker_hmigrate.toolchain import asmfix, layout
from docker_hmigrate.toolchain.config import AARCH64, X86_64
from docker_hmigrate.toolchain.driver import isa_cflags, parse, parse_map_inputs
from docker_hmigrate.toolchain.metadata import _fbreg_offset, match_call_sites
from docker_hmigrate.toolchain.objects import iter_ar

pytestmark = pytest.mark.toolchain


def U(key, region, size, align, syms=(), merge=False, sec=None):  # noqa: N802
    sec = sec or key.split("|")[1]
    return layout.Unit(key, f"/o/{key.split('|')[0]}({sec})", sec, region, size, align,
                       tuple(syms), merge)


def test_plan_places_common_units_at_same_offsets_with_max_size_and_align():
    x = [U("a.o|.text.main", "text", 0x65, 1), U("a.o|.text.f", "text", 0x71, 1),
         U("a.o|.data.g", "data", 4, 4), U("libc(x.lo)|.text.x86only", "text", 0x20, 16)]
    a = [U("a.o|.text.main", "text", 0x88, 4), U("a.o|.text.f", "text", 0xec, 4),
         U("a.o|.data.g", "data", 4, 4), U("libc(y.lo)|.text.armonly", "text", 0x40, 8)]
    plan = layout.plan_layout({"x86-64": x, "aarch64": a}, ("x86-64", "aarch64"))
    t = plan.regions["text"]
    ox = {p.unit.section: p.offset for p in t.placements["x86-64"]}
    oa = {p.unit.section: p.offset for p in t.placements["aarch64"]}
    assert ox[".text.main"] == oa[".text.main"] == 0
    # f follows main at max(0x65, 0x88) rounded to max(1, 4) alignment.
    assert ox[".text.f"] == oa[".text.f"] == 0x88
    assert t.common_end == 0x88 + 0xEC
    assert ox[".text.x86only"] == layout.align_up(t.common_end, 16)
    assert oa[".text.armonly"] == layout.align_up(t.common_end, 8)
    assert len(plan.pairs) == 3
    assert plan.regions["rodata"].base % 0x10000 == 0
    assert plan.regions["rodata"].base > t.base + t.max_end


def test_plan_matches_by_symbol_when_member_names_differ():
    x = [U("libc(memcpy.lo)|.text", "text", 0x30, 16, syms=("memcpy",))]
    a = [U("libc(memcpy_a64.lo)|.text", "text", 0x80, 8, syms=("memcpy",))]
    pairs, ox, oa = layout.match_units(x, a)
    assert len(pairs) == 1 and not ox and not oa


def test_mergeable_units_are_never_placed_explicitly():
    x = [U("libc(s.lo)|.rodata.str1.1", "rodata", 0x30, 1, merge=True)]
    a = [U("libc(s.lo)|.rodata.str1.1", "rodata", 0x30, 1, merge=True)]
    plan = layout.plan_layout({"x86-64": x, "aarch64": a}, ("x86-64", "aarch64"))
    assert not plan.pairs
    assert plan.regions["rodata"].placements["x86-64"] == []
    assert plan.regions["rodata"].max_end >= 0x30


def test_linker_script_contents():
    x = [U("a.o|.text.main", "text", 0x10, 1), U("a.o|.tbss.t", "tbss", 8, 8)]
    a = [U("a.o|.text.main", "text", 0x20, 4), U("a.o|.tbss.t", "tbss", 8, 8)]
    plan = layout.plan_layout({"x86-64": x, "aarch64": a}, ("x86-64", "aarch64"))
    sx = layout.linker_script(plan, "x86-64")
    sa = layout.linker_script(plan, "aarch64")
    for s in (sx, sa):
        assert "ENTRY(_start)" in s
        assert f".text 0x{layout.TEXT_BASE:x} :" in s
        assert "KEEP(/o/a.o(.text.main))" in s
        assert "__init_array_start" in s
        assert "ASSERT(" in s
    # The same address plan for both ISAs.
    def bases(s):
        return [ln.split()[1] for ln in s.splitlines()
                if ln.strip().startswith(".") and " 0x" in ln]
    assert bases(sx) == bases(sa)


def test_classify():
    assert layout.classify(".text.main") == "text"
    assert layout.classify(".rodata.hmstr.abc") == "rodata"
    assert layout.classify(".data.rel.ro.local") == "data"
    assert layout.classify(".init_array") == "special"
    assert layout.classify(".tbss.x") == "tbss"
    assert layout.classify("__libc_freeres_ptrs", write=True, nobits=True) == "bss"
    assert layout.classify("weird", exec_=True) == "text"


def test_unsafe_paths_rejected():
    with pytest.raises(ValueError):
        layout.ld_pattern("/tmp/a b/x.o", None, ".text")
    assert layout.ld_pattern("/l/libc.a", "printf.lo", ".text.printf") == \
        "/l/libc.a:printf.lo(.text.printf)"


ASM = """\t.section\t.rodata
\t.align 8
.LC0:
\t.string\t"hello"
.LC1:
\t.string\t"%s: %ld\\n"
\t.align 8
.LC2:
\t.long\t0
\t.long\t1074528256
\t.text
main:
\tret
"""


def test_asmfix_gives_each_string_literal_its_own_section():
    out = asmfix.split_string_literals(ASM)
    lines = out.splitlines()
    secs = [ln for ln in lines if ".section" in ln]
    assert len([s for s in secs if ".rodata.hmstr." in s]) == 2
    # The double constant goes back to .rodata, and sections are content-named.
    i = lines.index(".LC2:")
    assert any(ln.strip() == ".section\t.rodata" for ln in lines[i - 3 : i])
    assert asmfix.split_string_literals(ASM) == out
    other = asmfix.split_string_literals(ASM.replace('"hello"', '"bye"'))
    hm = [s for s in secs if "hmstr" in s]
    hm_other = [s for s in other.splitlines() if "hmstr" in s]
    assert hm_other[0] != hm[0] and hm_other[1] == hm[1]


def test_asmfix_leaves_other_sections_alone():
    src = "\t.section\t.rodata.f\n.LC0:\n\t.string\t\"x\"\n"
    assert asmfix.split_string_literals(src) == src


MAP = """Archive member included to satisfy reference by file (symbol)

{libc}(printf.lo)
                              /w/hello.o (printf)
{short}(ldo.o)        /w/lua.o (luaD_call)
{libc}(a_very_long_member_name_here.lo)
                              {libc}(printf.lo) (x)

Merging program properties

Removed property 0xc0000002 to merge /x/crtbeginT.o (0x3) and /w/hello.o (not found)

Memory Configuration

Linker script and memory map

LOAD {crt1}
LOAD {libc}
"""


def test_parse_map_inputs(tmp_path: Path):
    libc = tmp_path / "libc.a"
    libc.write_bytes(b"!<arch>\n")
    crt1 = tmp_path / "crt1.o"
    crt1.write_bytes(b"\x7fELF")
    # ld puts a member shorter than 29 characters and its referrer on one line.
    short = Path(tempfile.mkdtemp(dir="/tmp", prefix="m")) / "l.a"
    try:
        short.write_bytes(b"!<arch>\n")
        assert len(f"{short}(ldo.o)") < 29
        got = parse_map_inputs(MAP.format(libc=libc, crt1=crt1, short=short))
    finally:
        shutil.rmtree(short.parent)
    assert got == [(str(crt1), None), (str(libc), "printf.lo"), (str(short), "ldo.o"),
                   (str(libc), "a_very_long_member_name_here.lo")]


def test_iter_ar_handles_long_names(tmp_path: Path):
    names = ["short.o", "a_member_with_a_really_long_name.o"]
    for n in names:
        (tmp_path / n).write_bytes(n.encode() * 3)
    subprocess.run(["ar", "qc", str(tmp_path / "x.a"), *names], cwd=tmp_path, check=True)
    got = list(iter_ar(str(tmp_path / "x.a")))
    assert [n for n, _ in got] == names
    assert got[1][1] == names[1].encode() * 3


def test_parse_and_isa_flags():
    a = parse(["-O2", "-march=native", "-MD", "-MF", "x.d", "-I", "inc", "-c", "x.c", "-o",
               "x.o"])
    assert a.mode == "compile" and a.output == "x.o" and a.sources == ["x.c"]
    fx = isa_cflags(X86_64, a.cflags, deps=True)
    fa = isa_cflags(AARCH64, a.cflags, deps=False)
    assert "-O2" not in fx and fx.count("-O0") == 1
    assert "-march=native" in fx and "-march=native" not in fa
    assert "-MD" in fx and "-MF" in fx and "-MD" not in fa and "-MF" not in fa
    assert "-finstrument-functions" in fa and "-mno-outline-atomics" in fa
    assert ["-I", "inc"] == fa[:2]
    link = parse(["-o", "prog", "a.o", "-L", "lib", "-lm", "-lfoo", "-Wl,-O1", "-pthread"])
    assert link.mode == "link" and link.lib_dirs == ["lib"]
    assert ("lib", "foo") in link.inputs and "-Wl,-O1" in link.ldflags


def test_fbreg_sleb():
    assert _fbreg_offset([0x91, 0x68]) == -24
    assert _fbreg_offset([0x91, 0x08]) == 8
    assert _fbreg_offset([0x91, 0xE0, 0x7E]) == -160
    assert _fbreg_offset([0x50]) is None


def cs(i, line, col, target, kind="call", occ=0):
    return {"index": i, "line": line, "column": col, "target": target, "kind": kind,
            "occurrence": occ}


def test_call_site_matching_by_source_position():
    x = [cs(0, 5, 1, "__cyg_profile_func_enter", "enter_hook"), cs(1, 6, 2, "printf"),
         cs(2, 7, 9, None, "indirect"), cs(3, 8, 2, "__cyg_profile_func_exit", "exit_hook")]
    # aarch64 has an extra helper call (e.g. a libgcc soft-float routine) on line 6.
    a = [cs(0, 5, 1, "__cyg_profile_func_enter", "enter_hook"), cs(1, 6, 5, "__addtf3"),
         cs(2, 6, 2, "printf"), cs(3, 7, 9, None, "indirect"),
         cs(4, 8, 2, "__cyg_profile_func_exit", "exit_hook")]
    pairs, ux, ua = match_call_sites(x, a)
    assert pairs == [[0, 0], [1, 2], [2, 3], [3, 4]]
    assert ux == [] and ua == [1]


def test_merge_ranges():
    from docker_hmigrate.toolchain.patch import merge_ranges

    assert merge_ranges([(10, 20), (0, 5), (15, 30), (30, 31)]) == [(0, 5), (10, 31)]


def test_call_site_reasons_and_callbacks():
    from docker_hmigrate.toolchain.metadata import call_site_reasons, function_reasons

    int_t = {"name": "int", "size": 4, "kind": "base", "pointer_offsets": []}
    va_t = {"name": "__builtin_va_list", "size": 24, "kind": "array", "pointer_offsets": []}
    f = {"vars": [{"name": "x", "kind": "local", "type": int_t, "scope": None, "cfa_offset": -20},
                  {"name": "only", "kind": "local", "type": int_t, "scope": [100, 200],
                   "cfa_offset": -24}]}
    other = {"vars": [{"name": "x", "kind": "local", "type": int_t, "scope": None}]}
    site = {"index": 3, "return_address": 150, "target": "memset", "kind": "call",
            "live_callee_saved": []}
    # An unpaired call into a libc leaf cannot be on a parked stack: only the
    # one-ISA variable in scope matters here.
    r = call_site_reasons("aarch64", f, other, site, None, False, {"tick"})
    assert r == ["aarch64: variable only exists on this ISA only"]
    assert not any("twin" in x for x in r)
    site2 = dict(site, return_address=300, target="qsort")
    r2 = call_site_reasons("aarch64", f, other, site2, None, False, {"tick"})
    assert any("twin" in x for x in r2) and not any("ISA only" in x for x in r2)
    fv = {"variadic": True, "vars": [{"name": "ap", "kind": "local", "type": va_t,
                                      "scope": None, "cfa_offset": -40}], "frame": {}}
    reasons = function_reasons(fv, {"vars": []})
    assert any("variadic" in x for x in reasons) and any("va_list" in x for x in reasons)


def test_parse_map_stubs_and_grow():
    from docker_hmigrate.toolchain.driver import grow_for_stubs, parse_map_stubs

    text = """ .text.__private_cond_signal
                0x0000000000406e80      0x228 /l/libc.a(pthread_cond_timedwait.lo)
 .text.__private_cond_signal.stub
                0x00000000004070a8       0x10 linker stubs
 .text.main     0x0000000000401126       0x2a /w/a.o
"""
    stubs = parse_map_stubs(text)
    assert stubs == [("/l/libc.a:pthread_cond_timedwait.lo(.text.__private_cond_signal)", 0x10)]
    u = layout.Unit("k", stubs[0][0], ".text.__private_cond_signal", "text", 0x228, 16)
    assert grow_for_stubs([u], stubs) == 1 and u.size == 0x238
    assert grow_for_stubs([u], stubs) == 0 and u.size == 0x238


def test_sigsetjmp_and_jmp_buf_layout_verdicts() -> None:
    """sigsetjmp callers are untranslatable (their buffers hold musl's own return address);
    a jmp_buf-holding variable is translatable only when its leaves map one to one."""
    from docker_hmigrate.isa import AARCH64 as AARCH64_ISA
    from docker_hmigrate.isa import X86_64 as X86_64_ISA
    from docker_hmigrate.recode import jmpbuf
    from docker_hmigrate.toolchain import contract
    from docker_hmigrate.toolchain.metadata import function_reasons

    def jt(size, extra):
        return {"name": "struct g", "size": size, "holds": ["jmp_buf"],
                "fields": [{"path": "b[0]", "offset": 0, "size": size - 8, "kind": "jmp_buf"},
                           {"path": "s", "offset": size - 8, "size": extra, "kind": "data"}]}

    def f(size, extra, target="setjmp"):
        return {"file": "x.c", "call_sites": [{"target": target, "line": 9}],
                "vars": [{"name": "g", "kind": "local", "line": 3, "scope": None,
                          "type": jt(size, extra)}]}

    assert function_reasons(f(208, 4), f(320, 4)) == []
    why = function_reasons(f(208, 4), f(320, 8))
    assert why and why[0].startswith("setjmp/longjmp: variable g (struct g) holds a jmp_buf")
    assert "x.c:3" in why[0]
    why = function_reasons(f(208, 4, "sigsetjmp"), f(320, 4, "sigsetjmp"))
    assert why == ["sigsetjmp/siglongjmp: sigsetjmp called at x.c:9"]
    t = contract.TypeInfo
    assert not jmpbuf.fields_match(t(jt(208, 4)), t(jt(208, 4)), X86_64_ISA, AARCH64_ISA)
    assert jmpbuf.fields_match(t(jt(208, 4)), t(jt(320, 4)), X86_64_ISA, AARCH64_ISA)


@pytest.mark.parametrize("isa", [X86_64, AARCH64], ids=lambda i: i.name)
def test_struct_section_reader_equals_pyelftools_on_musl(isa):
    """The struct reader of input sections and symbols (links read ~100 libc members
    each) gives exactly what pyelftools gives, on every member of musl's libc.a."""
    from docker_hmigrate.toolchain import objects

    libc = Path(isa.musl_lib) / "libc.a"
    if not libc.exists():
        pytest.skip(f"{libc} is not installed")
    n = 0
    for name, body in iter_ar(str(libc)):
        if body.startswith(b"\x7fELF"):
            assert objects._read_sections_elf64le(body) == \
                objects._read_sections_pyelftools(body), name
            n += 1
    assert n > 1000
