"""Values GCC derives from variables and keeps across calls without naming them
(toolchain/values.py): what each place holds as a formula, solved at a call for the
variables the DWARF names there, and written by the recode (recode/described.py). The
machine code is the shape of Lua 5.1's dispatch (Redis's bundled Lua) at -Og."""

from __future__ import annotations

import capstone

from docker_hmigrate.recode import described
from docker_hmigrate.recode.frames import Frame, Index, Untranslatable
from docker_hmigrate.toolchain import contract, locations, metadata, values
from docker_hmigrate.toolchain.metadata import X86

# push rbp; mov rbp, rsp; push rbx; push r14; sub rsp, 96; mov ebx, [rdi];
# mov rcx, [rdi+8]; mov [rbp-0x48], rcx (base); mov eax, ebx; shr eax, 6;
# movzx edi, al; mov [rbp-0x50], edi (A); movzx eax, al; shl rax, 4;
# mov [rbp-0x58], rax (A * 16); mov rcx, [rbp-0x48]; lea r14, [rcx+rax] (ra); call
DISPATCH = bytes.fromhex("554889e55341564883ec608b1f488b4f0848894db889d8c1e8060fb6f8897db00f"
                         "b6c048c1e004488945a8488b4db84c8d3401e800000000488b45a8")
# push rbp; mov rbp, rsp; push rbx; push r12; call g; mov ebx, eax; test eax, eax;
# jne 1f; call f; mov rax, rbx; 1: pop r12
ZERO_PATH = bytes.fromhex("554889e5534154e80000000089c385c07508e8000000004889d8415c")
# push rbp; mov rbp, rsp; push rbx; push r12; 2: mov rbx, r12; mov r12, [rdi];
# call f; mov rax, rbx; jmp 2b
LOOP = bytes.fromhex("554889e55341544c89e34c8b27e8000000004889d8ebf0")


def _insns(code: bytes) -> list:
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.detail = True
    return list(cs.disasm(code, 0x1000))


def _forms_at_calls(code: bytes) -> list[dict]:
    insns = _insns(code)
    succ = metadata.control_flow(X86, insns)
    states = locations.frame_states(X86, insns, succ)
    forms = values.forms_at(X86, insns, succ, states, 0, lambda x: metadata._written(X86, x))
    return [forms[i] for i, x in enumerate(insns) if X86.mc.is_call(x)]


def test_the_dispatch_fields_are_formulas_of_ra_and_base() -> None:
    at = _forms_at_calls(DISPATCH)[0]
    named = {"ra": values.place_form(at, "r14"), "base": values.place_form(at, "s-88")}
    # A * 16, kept in a spill: ra - base
    assert values.solve(values.place_form(at, "s-104"), named) == \
        ([["base", -1], ["ra", 1]], 0, 0)
    # A, 4 bytes: (ra - base) >> 4, exact since A is a masked byte
    assert values.solve(values.place_form(at, "s-96", 4), named) == \
        ([["base", -1], ["ra", 1]], 0, 4)
    # the instruction word it came from is not a combination of them
    assert values.solve(values.place_form(at, "rbx"), named) is None
    # a value that is not small enough is never divided
    wide = values.Form.of(("def", 1, "rax"))
    assert values.solve(wide, {"v": wide.scale(16)}) is None


def test_a_value_is_zero_on_its_zero_path() -> None:
    """Lua's OP_TAILCALL keeps luaD_precall's result as `aux`'s 0 on the path where it
    is 0: that register is the constant 0 at the next call."""
    at = _forms_at_calls(ZERO_PATH)
    assert values.place_form(at[1], "rbx") == values.Form.k(0)
    assert values.solve(values.place_form(at[1], "rbx"), {}) == ([], 0, 0)


def test_a_loop_never_equates_a_value_with_its_next_run() -> None:
    """`rbx = r12; r12 = *p; f()` in a loop: rbx holds the previous load, r12 the new
    one, made by the same instruction: they must not look equal."""
    at = _forms_at_calls(LOOP)[0]
    rbx, r12 = values.place_form(at, "rbx"), values.place_form(at, "r12")
    assert rbx != r12
    assert values.solve(rbx, {"r12": r12}) is None


def test_a_kept_call_result_is_recorded_with_its_call() -> None:
    """`h(g(x), f(y))`: g's result kept across the call of f is named by g's call."""
    insns = _insns(ZERO_PATH)
    succ = metadata.control_flow(X86, insns)
    states = locations.frame_states(X86, insns, succ)
    forms = values.forms_at(X86, insns, succ, states, 0, lambda x: metadata._written(X86, x))
    calls = [i for i, x in enumerate(insns) if X86.mc.is_call(x)]
    after = forms[calls[0] + 1]  # ebx = eax: the first call's result, 32 bits
    ebx = forms[calls[0] + 2]["rbx"]
    assert values.call_result(ebx) == (calls[0], 32)
    cs: dict = {}
    live, left = metadata._derived_values(cs, [], [], forms[calls[0] + 2], ["rbx"], 0,
                                          {calls[0]: [7, 3, "g", 0]})
    assert (live, left) == ([], 0)
    assert cs["results"] == [["rbx", 8, [7, 3, "g", 0], 32]]
    assert "rax" in after


def _frame(src_site: dict, dst_site: dict, vs: list[dict], regs: dict) -> Frame:
    from docker_hmigrate.recode.frames import CallSite

    fn = contract.Function({"name": "f", "instrumented": True, "translatable": True,
                            "isa": {"x86-64": {"vars": vs, "call_sites": [src_site]},
                                    "aarch64": {"vars": vs, "call_sites": [dst_site]}}})
    return Frame(fn, 0x7100, 0x2005, CallSite(fn, contract.CallSite(src_site),
                                              contract.CallSite(dst_site)),
                 dst_cfa=0x9000, regs=regs)


class _Mem:
    def __init__(self, data: dict[int, bytes] | None = None):
        self.data = dict(data or {})

    def write(self, addr: int, raw: bytes) -> None:
        self.data[addr] = raw

    def read(self, addr: int, n: int) -> bytes:
        return self.data[addr][:n]

    def contains(self, addr: int, n: int) -> bool:
        return addr in self.data


class _Smap:
    def in_stack(self, v: int) -> bool:
        return 0x7000 <= v < 0x8000

    def map(self, v: int) -> int:
        return v + 0x2000


def _index() -> Index:
    idx = Index.__new__(Index)
    idx.src, idx.dst, idx.return_twins = "x86-64", "aarch64", {}
    return idx


def _var(name: str, size: int = 8, **kw) -> dict:
    return {"name": name, "kind": "local", "described": True,
            "type": {"name": "long", "kind": "base", "size": size, "pointer_offsets": []},
            **kw}


def test_the_recode_writes_a_derived_value_and_a_kept_result() -> None:
    """The target keeps A = (ra - base) >> 4 in x27 and g's result in x19: written from
    the source's ra, base (a DWARF expression: base's slot plus A * 16) and its own copy
    of g's result."""
    vs = [_var("ra"), _var("base")]
    key = [466, 9, "luaO_fb2int", 0]
    src = {"index": 0, "return_address": 0x2005,
           "locations": [[0, "expr", "fbreg deref fbreg deref plus stack_value",
                          [["cfa", -88], ["deref"], ["cfa", -104], ["deref"], ["plus"]]],
                         [1, "slot", -88]],
           "results": [["rbx", 8, key, 32]]}
    dst = {"index": 0, "return_address": 0x3004,
           "locations": [[0, "reg", "x22"], [1, "reg", "x24"]],
           "derived": [["x27", 8, [[0, 1], [1, -1]], 0, 4]],
           "results": [["x19", 8, key, 32]]}
    base, a = 0x5550, 0x23
    mem = _Mem({0x7100 - 88: base.to_bytes(8, "little"),
                0x7100 - 104: (a * 16).to_bytes(8, "little")})
    fr = _frame(src, dst, vs, {"rbx": 0xFFFF_FFFF_0000_0007})
    fr.src_cfa = 0x7100
    regs = described.write_frame(mem, _Mem(), fr, _index(), _Smap())  # type: ignore[arg-type]
    assert regs == {"x22": base + a * 16, "x24": base, "x27": a, "x19": 7}
    # the source does not keep g's result: refused, never guessed
    fr = _frame({**src, "results": []}, dst, vs, {})
    fr.src_cfa = 0x7100
    try:
        described.write_frame(mem, _Mem(), fr, _index(), _Smap())  # type: ignore[arg-type]
    except Untranslatable as exc:
        assert "luaO_fb2int" in str(exc)
    else:
        raise AssertionError("a missing result was not refused")


def test_a_result_must_be_kept_on_both_isas() -> None:
    key = [466, 9, "luaO_fb2int", 0]
    fs = {"vars": [], "call_sites": []}
    kept = {"results": [["rbx", 8, key, 32]], "locations": []}
    assert metadata.described_reasons("x86-64", fs, kept, "aarch64", fs, kept) == []
    lost = {"results": [], "locations": []}
    why = metadata.described_reasons("x86-64", fs, lost, "aarch64", fs, kept)
    assert why and "luaO_fb2int" in why[0]


def test_dwarf_expressions_of_kept_places_are_evaluable() -> None:
    """`ra` at -Og: DW_OP_fbreg -88 deref fbreg -104 deref plus stack_value, as steps on
    the frame; one using a register the call does not keep stays unreadable."""
    steps = [["fbreg", -88], ["deref"], ["fbreg", -104], ["deref"], ["plus"]]
    got = locations.at_site(("computed", "fbreg deref fbreg deref plus", steps), X86, -16, -120)
    assert got == ["expr", "fbreg deref fbreg deref plus",
                   [["cfa", -88], ["deref"], ["cfa", -104], ["deref"], ["plus"]]]
    clobbered = [["breg", "rdi", 0], ["lit", 14], ["shr"]]
    assert locations.at_site(("computed", "breg5", clobbered), X86, -16, -120)[0] == "computed"
    # memory other than the frame's slots is not read back (it may have changed)
    heap = [["breg", "rbx", 8], ["deref"]]
    assert locations.at_site(("computed", "breg3 deref", heap), X86, -16, -120)[0] == "computed"


def test_a_merge_drops_and_joins_for_good() -> None:
    """The analysis ends: at a merge, a slot once missing on a path stays dropped and a
    place once joined from different values stays the merge's own atom, whatever later
    passes bring (Redis's loadAppendOnlyFiles made a slot come and go for ever)."""
    a, b = values.Form.of(("def", 1, "rax")), values.Form.of(("def", 2, "rax"))
    merged: dict = {}
    first = values._join(7, [{"s-8:8": a, "rbx": a}, {"rbx": b}], merged)
    assert "s-8:8" not in first and first["rbx"] == values.Form.of(("phi", 7, "rbx"))
    again = values._join(7, [{"s-8:8": a, "rbx": a}, {"s-8:8": a, "rbx": a}], merged)
    assert "s-8:8" not in again and again["rbx"] == values.Form.of(("phi", 7, "rbx"))
    # elsewhere, equal values on every path stay what they are
    assert values._join(9, [{"s-8:8": a}, {"s-8:8": a}], merged) == {"s-8:8": a}
