"""--optimize-frames: reading GCC's location expressions, live stack bytes along the
control flow, the metadata's verdict per call site pair, and the recode writing a
described frame's variables (registers and slots) for the other ISA."""

from __future__ import annotations

import capstone
from elftools.dwarf.structs import DWARFStructs

from docker_hmigrate.recode import described
from docker_hmigrate.recode.frames import Frame, Index, Untranslatable
from docker_hmigrate.toolchain import contract, locations, metadata
from docker_hmigrate.toolchain.metadata import A64, X86


class _Reader(locations.Reader):
    def __init__(self, arch):  # no binary: only the expression parser
        from elftools.dwarf.dwarf_expr import DWARFExprParser

        self.arch = arch
        self.exprs = DWARFExprParser(DWARFStructs(little_endian=True, dwarf_format=32,
                                                  address_size=8, dwarf_version=5))


def test_expressions_decoded_per_isa() -> None:
    x, a = _Reader(X86), _Reader(A64)
    assert x.decode([0x91, 0x68]) == ("fb", -24)  # DW_OP_fbreg -24
    assert x.decode([0x53]) == ("reg", "rbx")  # DW_OP_reg3
    assert a.decode([0x50 + 19]) == ("reg", "x19")
    assert x.decode([0x76, 0x78]) == ("fp", -8)  # DW_OP_breg6 (rbp) -8
    assert a.decode([0x70 + 31, 0x10]) == ("sp", 16)
    assert x.decode([0x73, 0x08, 0x9F]) == ("value", "rbx", 8)  # breg3 8; stack_value
    assert x.decode([0x35, 0x9F]) == ("const", 5)  # lit5; stack_value
    assert x.decode([0xA3, 0x01, 0x55, 0x9F]) == ("gone",)  # entry_value(reg5)
    assert x.decode([0x73, 0x00, 0x3F, 0x25, 0x9F])[0] == "computed"  # rbx >> 15
    assert x.decode([0x53, 0x93, 0x04, 0x5C, 0x93, 0x04])[0] == "unknown"  # pieces


def test_site_forms() -> None:
    assert locations.at_site(("fp", -8), X86, -16, -48) == ["slot", -24]
    assert locations.at_site(("sp", 16), A64, -64, -64) == ["slot", -48]
    assert locations.at_site(("reg", "rdi"), X86, -16, -48) == ["gone"]  # caller-saved
    assert locations.at_site(("reg", "x20"), A64, -16, -48) == ["reg", "x20"]
    assert locations.at_site(None, X86, -16, -48) == ["gone"]


# push rbp; mov rbp, rsp; sub rsp, 32; mov [rbp-8], rdi; call .+5; mov rax, [rbp-8];
# mov rcx, [rbp-24] (read, never written: padding); leave; ret
X86_CODE = bytes.fromhex("55" "4889e5" "4883ec20" "48897df8" "e800000000"
                         "488b45f8" "488b4de8" "c9" "c3")


def _x86_insns() -> list:
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.detail = True
    return list(cs.disasm(X86_CODE, 0x1000))


def test_live_stack_bytes_at_a_call() -> None:
    insns = _x86_insns()
    succ = metadata.control_flow(X86, insns)
    states = locations.frame_states(X86, insns, succ)
    call = next(i for i, x in enumerate(insns) if x.mnemonic == "call")
    assert states[call].sp == -48 and states[call].fp == -16
    live = locations.live_slots(X86, insns, succ, states)
    assert live.unknown is None
    at_call = live.live_in[call + 1] & live.written[call]
    # [rbp-8] = CFA-24 was stored before the call and is read after it; CFA-40 is read
    # but nothing wrote it (a struct's padding copied whole): not a value
    assert locations.ranges_of(at_call) == [(-24, -16)]
    assert locations.ranges_of(live.live_in[call + 1]) == [(-40, -32), (-24, -16)]


def _fn(xvars, avars, xsite, asite) -> dict:
    return {"name": "f", "isa": {"x86-64": {"vars": xvars, "call_sites": [xsite]},
                                 "aarch64": {"vars": avars, "call_sites": [asite]}}}


def _var(name, **kw) -> dict:
    return {"name": name, "kind": "local", "type": {"name": "long", "size": 8,
                                                    "pointer_offsets": []},
            "scope": None, **kw}


def test_pair_verdicts() -> None:
    xs = {"locations": [[0, "reg", "rbx"], [1, "gone"]], "unnamed": []}
    as_ = {"locations": [[0, "reg", "x19"], [1, "slot", -24]], "unnamed": []}
    f = _fn([_var("n", described=True), _var("h", described=True)],
            [_var("n", described=True), _var("h", described=True)], xs, as_)
    fx, fa = f["isa"]["x86-64"], f["isa"]["aarch64"]
    # aarch64 keeps h in a slot, x86-64 has no value for it there: x86 -> aarch64 refused
    why = metadata.described_reasons("x86-64", fx, xs, "aarch64", fa, as_)
    assert len(why) == 1 and "h" in why[0] and "no value" in why[0]
    # the other way every variable x86-64 stores (n in rbx) has a value on aarch64
    assert metadata.described_reasons("aarch64", fa, as_, "x86-64", fx, xs) == []
    as_["unnamed"] = ["callee-saved ['x21'] hold values no variable names"]
    assert any("x21" in r for r in
               metadata.described_reasons("aarch64", fa, as_, "x86-64", fx, xs)) is False
    assert any("x21" in r for r in
               metadata.described_reasons("x86-64", fx, xs, "aarch64", fa, as_))


class _Mem:
    def __init__(self, data: dict[int, bytes] | None = None):
        self.data = dict(data or {})

    def read(self, addr: int, n: int) -> bytes:
        return self.data[addr][:n]

    def write(self, addr: int, b: bytes) -> None:
        self.data[addr] = bytes(b)


class _Smap:
    def in_stack(self, v: int) -> bool:
        return 0x7000 <= v < 0x8000

    def map(self, v: int) -> int:
        return v + 0x100


def test_recode_writes_registers_and_slots() -> None:
    ptr = {"name": "char *", "size": 8, "pointer_offsets": [0]}
    xs = {"index": 0, "return_address": 0x2005,
          "locations": [[0, "reg", "rbx"], [1, "slot", -24], [2, "value", "r12", 8],
                        [3, "const", 3]]}
    as_ = {"index": 0, "return_address": 0x3004,
           "locations": [[0, "slot", -40], [1, "reg", "x20"], [2, "reg", "x21"],
                         [3, "gone"]]}
    vs = [_var("n", described=True), _var("p", described=True, type=ptr),
          _var("q", described=True), _var("k", described=True)]
    raw = {"name": "f", "instrumented": True, "translatable": True,
           "isa": {"x86-64": {"vars": vs, "call_sites": [xs]},
                   "aarch64": {"vars": vs, "call_sites": [as_]}}}
    fn = contract.Function(raw)
    site = contract.CallSite(xs)
    twin = contract.CallSite(as_)
    from docker_hmigrate.recode.frames import CallSite

    fr = Frame(fn, 0x7100, 0x2005, CallSite(fn, site, twin), dst_cfa=0x9000,
               regs={"rbx": 41, "r12": 0x5000})
    src = _Mem({0x7100 - 24: (0x7010).to_bytes(8, "little")})
    dst = _Mem()
    idx = Index.__new__(Index)
    idx.src, idx.dst, idx.return_twins = "x86-64", "aarch64", {}
    regs = described.write_frame(src, dst, fr, idx, _Smap())  # type: ignore[arg-type]
    assert dst.data[0x9000 - 40] == (41).to_bytes(8, "little")  # rbx -> slot
    assert regs == {"x20": 0x7110, "x21": 0x5008}  # stack pointer moved; r12 + 8
    # a target slot the source has no value for
    xs["locations"][0] = [0, "gone"]
    try:
        described.write_frame(src, dst, fr, idx, _Smap())  # type: ignore[arg-type]
    except Untranslatable as exc:
        assert "n" in str(exc)
    else:
        raise AssertionError("a missing value was not refused")


def test_computed_goto_successors_are_its_table_labels() -> None:
    """An interpreter's `goto *disptab[op & 0x7f]`: the jump's successors are the labels
    its table holds (up to where the entries stop being the function's), not every block
    (which made every temporary of every opcode look live at every call)."""
    from docker_hmigrate.toolchain import machine_x86_64

    # 0x1000: mov eax, ebx; and eax, 0x7f; mov rax, [rax*8 + 0x9000]; jmp rax;
    # 0x1010: L1: nop; ret; L2: nop; ret
    code = bytes.fromhex("89d8" "83e07f" "488b04c500900000" "ffe0" "90" "c3" "90" "c3")
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.detail = True
    insns = list(cs.disasm(code, 0x1000))
    labels = [x.address for x in insns if x.mnemonic == "nop"]
    table = b"".join(a.to_bytes(8, "little") for a in labels) + (0x7777).to_bytes(8, "little")

    def read(addr: int, n: int) -> bytes:
        return (table + bytes(n))[:n] if addr == 0x9000 else bytes(n)

    jmp = next(i for i, x in enumerate(insns) if x.mnemonic == "jmp")
    assert machine_x86_64.goto_table(insns, jmp, read)[:3] == [*labels, 0x7777]
    succ = metadata.control_flow(X86, insns, read)
    assert sorted(insns[s].address for s in succ[jmp]) == labels
    # no table read: any block may follow
    assert len(metadata.control_flow(X86, insns)[jmp]) >= len(labels)
    # optimized code jumps through the table's memory operand, the `and` just before
    # (a third block, after a ret, that the table does not name)
    code = bytes.fromhex("89d8" "83e07f" "ff24c500900000" "90" "c3" "90" "c3" "90" "c3")
    insns = list(cs.disasm(code, 0x1000))
    labels = [x.address for x in insns if x.mnemonic == "nop"][:2]
    table = b"".join(a.to_bytes(8, "little") for a in labels) + (0x7777).to_bytes(8, "little")
    jmp = next(i for i, x in enumerate(insns) if x.mnemonic == "jmp")
    succ = metadata.control_flow(X86, insns, read)
    assert sorted(insns[s].address for s in succ[jmp]) == labels


# push rbp; mov rbp, rsp; push rbx; push r12; push r13; sub rsp, 24; mov rbx, rdi;
# mov [rbp-40], rbx; lea r12, [rbx+16]; add r12, 8; mov r13d, dword [rbp-40]; call .+5;
# mov rax, r12
COPIES_CODE = bytes.fromhex("554889e553415441554883ec184889fb48895dd84c8d63104983c408"
                            "448b6dd8e8000000004c89e0")


def test_copies_of_a_value_survive_the_call() -> None:
    """A register GCC keeps as a copy of a variable (or it plus a constant) that its
    DWARF places elsewhere: related to that place after the call; the argument register
    the copies came from is not (a call clobbers it)."""
    insns = _x86_insns_of(COPIES_CODE)
    rels = _relations_at_call(X86, insns)
    slot = "s-56"  # [rbp-40], the frame pointer at CFA-16
    assert locations.offset_between(rels, "rbx", slot) == 0
    assert locations.offset_between(rels, "r12", slot) == 24  # lea +16, add +8
    assert locations.offset_between(rels, "r12", "rdi") is None  # clobbered by the call
    assert locations.zero_extended_copy(rels, "r13", slot)  # mov r13d, [rbp-40]
    assert not locations.zero_extended_copy(rels, "r12", slot)  # its upper half is not 0
    # an address-taken variable's home is never related (a callee may write it)
    rels = _relations_at_call(X86, insns, homes=locations.slot_bits(-56, 8))
    assert locations.offset_between(rels, "rbx", slot) is None


def _relations_at_call(arch, insns: list, homes: int = 0) -> frozenset:
    """locations.copies_after's relations after the code's first call."""
    succ = metadata.control_flow(arch, insns)
    states = locations.frame_states(arch, insns, succ)
    call = next(i for i, x in enumerate(insns) if arch.mc.is_call(x))
    return locations.copies_after(arch, insns, succ, states, homes,
                                  lambda x: metadata._written(arch, x))[call]


def _x86_insns_of(code: bytes) -> list:
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.detail = True
    return list(cs.disasm(code, 0x1000))


def test_cross_isa_move_says_which_frames_it_recodes() -> None:
    """-Og frames move across ISAs (their recode was behind HMIGRATE_EXPERIMENTAL_FRAMES
    until the corpus's lua5.4 moved with exact output: docs/toolchain.md); the validation
    line says which kind of frames the move recodes."""
    from docker_hmigrate import validate
    from docker_hmigrate.recode import Program

    plain = Program("/p", {"checks": {"described": {"functions": 0}}}, {})
    og = Program("/p", {"checks": {"described": {"functions": 12}}}, {})
    assert validate.optimized_frames_check(plain).ok
    assert validate.optimized_frames_check(plain).detail == "none (-O0 frames)"
    moved = validate.optimized_frames_check(og)
    assert moved.ok and moved.detail.startswith("12 -Og functions")


def test_aarch64_store_widths() -> None:
    """`str wzr` writes 4 bytes, not 8: a wider write would end the liveness of the next
    slot's bytes (a live variable then looked dead and was not carried)."""
    cs = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    cs.detail = True
    # str wzr, [sp, #12]; str xzr, [sp, #16]; stp w1, w2, [sp, #24]; ldrb w0, [sp, #3]
    code = bytes.fromhex("ff0f00b9" "ff0b00f9" "e10b0329" "e00f4039")
    st = locations.FrameState(-64, -64)
    got = [locations._access(A64, x, st) for x in cs.disasm(code, 0x1000)]
    assert locations.ranges_of(got[0][1]) == [(-52, -48)]
    assert locations.ranges_of(got[1][1]) == [(-48, -40)]
    assert locations.ranges_of(got[2][1]) == [(-40, -32)]
    assert locations.ranges_of(got[3][0]) == [(-61, -60)]


def test_a_32_bit_copy_plus_a_constant() -> None:
    """lua's OP_SHRI: DWARF places `ic` at rbx - 127, and the code keeps rbx's low half
    (ic + 127) in a 4-byte spill it reads after the call: a copy of ic plus 127, which
    the recode writes as 32 bits."""
    pairs = frozenset({locations._w("s-136", "rbx")})
    cs: dict = {}
    live, left = metadata._copies_of_variables(
        cs, [[0, "value", "rbx", -127]], [{"type": {"size": 4}}], pairs, [],
        locations.slot_bits(-136, 4))
    assert (live, left) == ([], 0)
    assert cs["copies"] == [["s-136", 0, "w32", 127]]
    xs = {"index": 0, "return_address": 0x2005, "locations": [[0, "reg", "rbx"]]}
    as_ = {"index": 0, "return_address": 0x3004, "locations": [[0, "gone"]],
           "dead_vars": [0], "copies": cs["copies"]}
    vs = [_var("ic", described=True, type={"name": "int", "size": 4})]
    fn = contract.Function({"name": "f", "instrumented": True, "translatable": True,
                            "isa": {"x86-64": {"vars": vs, "call_sites": [xs]},
                                    "aarch64": {"vars": vs, "call_sites": [as_]}}})
    from docker_hmigrate.recode.frames import CallSite

    fr = Frame(fn, 0x7100, 0x2005, CallSite(fn, contract.CallSite(xs), contract.CallSite(as_)),
               dst_cfa=0x9000, regs={"rbx": (1 << 32) - 3})  # ic = -3
    dst = _Mem()
    idx = Index.__new__(Index)
    idx.src, idx.dst, idx.return_twins = "x86-64", "aarch64", {}
    assert described.write_frame(_Mem(), dst, fr, idx, _Smap()) == {}  # type: ignore[arg-type]
    assert dst.data[0x9000 - 136] == (124).to_bytes(4, "little")  # -3 + 127


# push rbp; mov rbp, rsp; push rbx; sub rsp, 24; mov eax, [rdi+0x28];
# mov [rbp-0x68], eax; test eax, eax; setne bl; movzx ebx, bl; call .+5; test rbx, rbx
NOT_ZERO_X86 = bytes.fromhex("554889e5534883ec188b472889459885c00f95c30fb6db"
                             "e8000000004885dbc3")
# stp x29, x30, [sp, #-32]!; mov x29, sp; str x19, [sp, #16]; mov x23, x0;
# ldr w23, [x24, #40]; cmp w23, #0; cset x19, ne; bl; cbnz x19; ret
NOT_ZERO_A64 = [0xA9BE7BFD, 0x910003FD, 0xF9000BF3, 0xAA0003F7, 0xB9402B17, 0x710002FF,
                0x9A9F07F3, 0x94000040, 0xB5000053, 0xD65F03C0]


def test_a_kept_not_zero_test_of_a_variable() -> None:
    """An interpreter's `l_unlikely(trap)` tested again after a call: GCC keeps
    `trap != 0` (0 or 1) in a callee-saved register (x86 test/setne/movzx, aarch64
    cmp/cset), trap itself in a slot or another register: [register, trap, "ne"], which
    the recode writes as 1 or 0 from trap's value."""
    rels = _relations_at_call(X86, _x86_insns_of(NOT_ZERO_X86))
    slot = "s-120"  # [rbp-0x68], the frame pointer at CFA-16
    assert locations.not_zero_of(rels, "rbx") == (slot, 32)  # rax: clobbered by the call
    cs: dict = {}
    live, _ = metadata._copies_of_variables(cs, [[0, "slot", -120]],
                                            [{"type": {"size": 4}}], rels, ["rbx"], 0)
    assert live == [] and cs["copies"] == [["rbx", 0, "ne"]]
    rels = _relations_at_call(A64, _a64_insns(NOT_ZERO_A64))
    assert locations.not_zero_of(rels, "x19") == ("x23", 32)
    # a write of the flags between the compare and the cset (adds x0, x0, x0): none
    rels = _relations_at_call(A64, _a64_insns(NOT_ZERO_A64[:6] + [0xAB000000]
                                              + NOT_ZERO_A64[6:]))
    assert locations.not_zero_of(rels, "x19") is None
    # the recode: 1 when trap is not 0
    xs = {"index": 0, "return_address": 0x2005, "locations": [[0, "reg", "rbx"]]}
    as_ = {"index": 0, "return_address": 0x3004, "locations": [[0, "reg", "x23"]],
           "copies": [["x19", 0, "ne"]]}
    vs = [_var("trap", described=True, type={"name": "int", "size": 4})]
    fn = contract.Function({"name": "f", "instrumented": True, "translatable": True,
                            "isa": {"x86-64": {"vars": vs, "call_sites": [xs]},
                                    "aarch64": {"vars": vs, "call_sites": [as_]}}})
    from docker_hmigrate.recode.frames import CallSite

    for trap, flag in ((7, 1), (0, 0), (1 << 31, 1)):
        fr = Frame(fn, 0x7100, 0x2005,
                   CallSite(fn, contract.CallSite(xs), contract.CallSite(as_)),
                   dst_cfa=0x9000, regs={"rbx": trap})
        idx = Index.__new__(Index)
        idx.src, idx.dst, idx.return_twins = "x86-64", "aarch64", {}
        regs = described.write_frame(_Mem(), _Mem(), fr, idx, _Smap())  # type: ignore[arg-type]
        assert regs == {"x23": trap, "x19": flag}


def test_a_load_with_writeback_moves_its_base() -> None:
    """aarch64's `ldr w19, [x21], #4` adds 4 to x21 (lua 5.1's `i = *pc++`: the old pc
    kept in x23 beside it is pc - 4); a pre-index `[x23, #-8]!` subtracts 8."""
    # mov x21, x23; ldr w19, [x21], #4; ldr x0, [x23, #-8]!; bl; ret
    insns = _a64_insns([0xAA1703F5, 0xB84046B3, 0xF85F8EE0, 0x94000002, 0xD65F03C0])
    rels = _relations_at_call(A64, insns)
    assert locations.offset_between(rels, "x21", "x23") == 12  # +4, and x23 -8
    assert locations.offset_between(rels, "x19", "x21") is None


def _a64_insns(words: list[int], at: int = 0x1000) -> list:
    cs = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    cs.detail = True
    return list(cs.disasm(b"".join(w.to_bytes(4, "little") for w in words), at))
