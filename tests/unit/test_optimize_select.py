"""Which functions hmigrate-cc --optimize-leaves may compile at -O2: the selection rules on
GCC-shaped assembly of both ISAs (pure logic; the compiled end is in
tests/lab/test_toolchain_optimize.py)."""

from __future__ import annotations

from docker_hmigrate.toolchain import optimize
from docker_hmigrate.toolchain.config import AARCH64, X86_64


def fn_x86(name: str, body: str, hook: bool = True) -> str:
    enter = (f"\tleaq\t{name}(%rip), %rax\n\tmovq\t%rax, %rdi\n"
             "\tcall\t__cyg_profile_func_enter\n") if hook else ""
    return (f"\t.section\t.text.{name},\"ax\",@progbits\n\t.type\t{name}, @function\n"
            f"{name}:\n.LFB_{name}:\n\tpushq\t%rbp\n{enter}{body}\tret\n"
            f"\t.size\t{name}, .-{name}\n")


def fn_a64(name: str, body: str, hook: bool = True) -> str:
    enter = (f"\tadrp\tx0, {name}\n\tadd\tx0, x0, :lo12:{name}\n"
             "\tbl\t__cyg_profile_func_enter\n") if hook else ""
    return (f"\t.section\t.text.{name},\"ax\",@progbits\n\t.type\t{name}, %function\n"
            f"{name}:\n\tstp\tx29, x30, [sp, -32]!\n{enter}{body}\tret\n"
            f"\t.size\t{name}, .-{name}\n")


def program() -> tuple[str, str]:
    """leaf, a caller of leaves, a loop calling only leaves, an indirect caller, a caller
    of read(), a caller of another file's function, an address-taken function, recursion."""
    x = "".join([
        fn_x86("leaf", "\tleal\t1(%rdi), %eax\n"),
        fn_x86("sq", "\timull\t%edi, %edi\n"),
        fn_x86("twice", "\tcall\tleaf\n\tcall\tstrlen@PLT\n"),
        fn_x86("loop", "\tjmp\t.L3\n.L4:\n\tcall\tsq\n\tcall\ttwice\n.L3:\n\tcmpl\t$9, %eax\n"
                       "\tjle\t.L4\n"),
        fn_x86("indirect", "\tcall\t*%rdx\n"),
        fn_x86("reader", "\tcall\tread@PLT\n"),
        fn_x86("other", "\tcall\telsewhere\n"),
        fn_x86("cb", "\tmovl\t$1, %eax\n"),
        fn_x86("rec", "\tcall\trec\n"),
        "\t.section\t.data.table,\"aw\"\ntable:\n\t.quad\tcb\n",
    ])
    a = "".join([
        fn_a64("leaf", "\tadd\tw0, w0, 1\n"),
        fn_a64("sq", "\tmul\tw0, w0, w0\n"),
        fn_a64("twice", "\tbl\tleaf\n\tbl\tstrlen\n"),
        fn_a64("loop", "\tb\t.L3\n.L4:\n\tbl\tsq\n\tbl\ttwice\n.L3:\n\tcmp\tw0, 9\n\tble\t.L4\n"),
        fn_a64("indirect", "\tblr\tx1\n"),
        fn_a64("reader", "\tbl\tread\n"),
        fn_a64("other", "\tbl\telsewhere\n"),
        fn_a64("cb", "\tmov\tw0, 1\n"),
        fn_a64("rec", "\tbl\trec\n"),
        "\t.section\t.data.table,\"aw\"\ntable:\n\t.xword\tcb\n",
    ])
    return x, a


LIBC = {"strlen", "read", "memcpy"}


def parsed(x: str, a: str):
    return [optimize.parse_asm(x, X86_64), optimize.parse_asm(a, AARCH64)]


def test_parse_reads_calls_hooks_loops_and_taken_addresses():
    x, a = program()
    for funcs, refs in parsed(x, a):
        assert funcs["twice"].calls == ["leaf", "strlen"] and funcs["twice"].instrumented
        assert funcs["indirect"].indirect and not funcs["leaf"].indirect
        assert funcs["loop"].loops == [["sq", "twice"]]
        # a function's own address handed to its hooks is not "taken"; a table entry is
        assert "cb" in refs and "leaf" not in refs


def test_selection_rules_and_reasons():
    x, a = program()
    injectable = {n: None for n in optimize.parse_asm(x, X86_64)[0]}
    sel, why = optimize.select(parsed(x, a), LIBC, injectable)
    # The loop calls only optimizable functions: its largest callee stays instrumented
    # so the loop still parks once per iteration; the other one and the leaves go -O2.
    assert sel == {"leaf", "sq"}
    assert why["twice"].startswith("park point of a loop: in loop")
    assert why["loop"] == "calls -O0: twice"
    assert why["indirect"] == "indirect call"
    assert why["reader"].startswith("parking, blocking or callback libc: read")
    assert why["other"] == "calls another file: elsewhere"
    assert why["cb"] == "address taken"
    assert why["rec"] == "recursive"


def test_both_isas_must_agree_and_attribute_must_be_placeable():
    x, a = program()
    # aarch64 calls a helper x86-64 does not: leaf stays -O0 on both, and so its caller
    a = a.replace("\tadd\tw0, w0, 1\n", "\tbl\t__aarch64_only_helper\n")
    injectable = {n: None for n in optimize.parse_asm(x, X86_64)[0]}
    sel, why = optimize.select(parsed(x, a), LIBC, injectable)
    assert "leaf" not in sel and why["leaf"] == "calls another file: __aarch64_only_helper"
    # a function defined in a header cannot carry the attribute
    injectable["sq"] = "not in the main file: util.h"
    sel, why = optimize.select(parsed(x, a), LIBC, injectable)
    assert "sq" not in sel and why["sq"] == "not in the main file: util.h"


def test_verify_catches_ignored_attribute_and_calls_into_hooked_code():
    x, a = program()
    sel = {"leaf", "twice"}
    # after the optimized compile: leaf lost its hook, twice kept it (attribute ignored)
    x2 = x.replace(fn_x86("leaf", "\tleal\t1(%rdi), %eax\n"),
                   fn_x86("leaf", "\tleal\t1(%rdi), %eax\n", hook=False))
    bad = optimize.verify(parsed(x2, a.replace(
        fn_a64("leaf", "\tadd\tw0, w0, 1\n"), fn_a64("leaf", "\tadd\tw0, w0, 1\n", hook=False))),
        sel, LIBC)
    assert bad == {"twice": "attribute not taken"}


def test_rewrite_keeps_lines_and_names_the_original_file():
    src = "#include <x.h>\nstatic int\nleaf(int x)\n{\n\treturn x;\n}\n"
    out = optimize.rewrite(src, "dir/f.c", {"leaf": 3})
    lines = out.split("\n")
    assert lines[0] == '#line 1 "dir/f.c"'
    assert lines[3] == optimize.ATTRIBUTE + "leaf(int x)"
    assert len(lines) == len(src.split("\n")) + 1


def test_summary_counts_reason_kinds():
    notes = [{"optimized": ["a", "b"], "o0": {"c": "indirect call", "d": "calls -O0: c"}},
             {"optimized": ["e"], "o0": {"f": "indirect call"}}]
    assert optimize.summarize(notes) == (3, 3, {"indirect call": 2, "calls -O0": 1})


def test_flag_and_environment(monkeypatch):
    monkeypatch.setenv(optimize.ENV, "0")
    on, rest = optimize.enabled(["-c", "--optimize-leaves", "a.c"])
    assert on and rest == ["-c", "a.c"]
    assert optimize.enabled(["-c", "a.c"]) == (False, ["-c", "a.c"])
    monkeypatch.setenv(optimize.ENV, "1")
    assert optimize.enabled(["--no-optimize-leaves", "a.c"]) == (False, ["a.c"])
    monkeypatch.delenv(optimize.ENV)
    assert optimize.enabled(["a.c"]) == (optimize.DEFAULT, ["a.c"])


def test_verify_catches_an_attribute_that_landed_on_another_function():
    x, a = program()
    # sq lost its hook although only leaf was selected (both on one line of the source)
    x2 = x.replace(fn_x86("sq", "\timull\t%edi, %edi\n"),
                   fn_x86("sq", "\timull\t%edi, %edi\n", hook=False))
    hooked = set(optimize.parse_asm(x, X86_64)[0])
    bad = optimize.verify(parsed(x2, a), {"leaf"}, LIBC, hooked)
    assert bad["leaf"] == "attribute misplaced: sq"
