"""Which callee-saved registers hold a value at a call (toolchain/metadata.liveness):
a register wrongly seen live there makes the call site untranslatable, and the runtime
then never parks under it (bc's yyparse: every call of its parser loop). The machine
code below is GCC 12 -O0 output read off bc's binaries (bc 1.07.1, hmigrate-cc)."""

from __future__ import annotations

import capstone

from docker_hmigrate.toolchain import machine_aarch64, machine_x86_64
from docker_hmigrate.toolchain.metadata import A64, X86, liveness


def _a64(words: list[int], at: int) -> list:
    cs = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    cs.detail = True
    return list(cs.disasm(b"".join(w.to_bytes(4, "little") for w in words), at))


def _x86(code: bytes, at: int) -> list:
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.detail = True
    return list(cs.disasm(code, at))


def _reader(table: int, data: bytes):
    def read(addr: int, n: int) -> bytes:
        off = addr - table
        return data[off:off + n] if 0 <= off and off + n <= len(data) else b""
    return read


# cmp w0, #2 ; b.hi (to the last ret below) ; adrp x1, 0x431000 ; add x1, x1, #0xa68
# ldr w0, [x1, w0, uxtw #2] ; adr x1, 0x401ff0 ; add x0, x1, w0, sxtw #2 ; br x0
A64_SWITCH = [0x7100081F, 0x540001A8, 0x90000181, 0x9129A021, 0xB8605820, 0x10000061,
              0x8B20C820, 0xD61F0000]
A64_BASE = 0x401FD0


def test_aarch64_jump_table_decoded() -> None:
    insns = _a64(A64_SWITCH, A64_BASE)
    entries = b"".join(v.to_bytes(4, "little", signed=True) for v in (0, 2, -1))
    got = machine_aarch64.jump_table(insns, len(insns) - 1, _reader(0x431A68, entries))
    assert got == [0x401FF0, 0x401FF8, 0x401FEC]  # adr's base + entry * 4, 3 entries


def test_aarch64_jump_table_other_shape_is_none() -> None:
    insns = _a64(A64_SWITCH[:-2] + [0xD61F0000], A64_BASE)  # no add before the br
    assert machine_aarch64.jump_table(insns, len(insns) - 1,
                                      _reader(0x431A68, bytes(12))) is None


def test_x86_64_jump_table_decoded() -> None:
    code = (bytes.fromhex("837dbc02") + bytes.fromhex("0f8700010000")  # cmp [rbp-0x44],2; ja
            + bytes.fromhex("8b45bc")  # mov eax, [rbp-0x44]
            + bytes.fromhex("488b04c5681a4300")  # mov rax, [rax*8 + 0x431a68]
            + bytes.fromhex("ffe0"))  # jmp rax
    insns = _x86(code, 0x401ED0)
    table = b"".join(a.to_bytes(8, "little") for a in (0x401F00, 0x401F10, 0x401F20))
    got = machine_x86_64.jump_table(insns, len(insns) - 1, _reader(0x431A68, table))
    assert got == [0x401F00, 0x401F10, 0x401F20]


def test_x86_64_optimized_jump_table_decoded() -> None:
    """GCC -O1 and above jump through the table's memory operand directly (Redis's Lua 5.1
    dispatch: seen as "any block may follow", every opcode's temporaries looked live at
    every call of the interpreter loop)."""
    code = (bytes.fromhex("83f802") + bytes.fromhex("0f8700010000")  # cmp eax, 2 ; ja
            + bytes.fromhex("89c0")  # mov eax, eax
            + bytes.fromhex("ff24c5681a4300"))  # jmp qword ptr [rax*8 + 0x431a68]
    insns = _x86(code, 0x401ED0)
    table = b"".join(a.to_bytes(8, "little") for a in (0x401F00, 0x401F10, 0x401F20))
    got = machine_x86_64.jump_table(insns, len(insns) - 1, _reader(0x431A68, table))
    assert got == [0x401F00, 0x401F10, 0x401F20]
    # a jump through a table with a base register is not that shape
    other = _x86(code[:-7] + bytes.fromhex("ff24c3"), 0x401ED0)  # jmp [rbx + rax*8]
    assert machine_x86_64.jump_table(other, len(other) - 1, _reader(0x431A68, table)) is None


def test_sign_extension_does_not_read_its_destination() -> None:
    """`sxtw x21, w0 ; mov x1, x21 ; ret`: capstone lists x21 among sxtw's reads; x21 is
    not live before the sxtw (it used to be, and with it at every call of yyparse)."""
    insns = _a64([0x93407C15, 0xAA1503E1, 0xD65F03C0], 0x402E60)
    live = liveness(A64, insns)
    assert "x21" not in live[0]
    assert "x21" in live[1]


def test_movk_still_reads_its_destination() -> None:
    insns = _a64([0x72A005D4, 0xAA1403E1, 0xD65F03C0], 0x400000)  # movk w20, #0x2e, lsl 16
    assert "x20" in liveness(A64, insns)[0]


def test_switch_edges_come_from_the_table() -> None:
    """A switch in a loop; case 1 sets a temporary in x21 and uses it in a block it
    branches to. Without the table every block may follow the `br`, that block's use of
    x21 among them, and x21 looks live around the whole loop (at case 0's call too); with
    the table's real successors it is not."""
    words = A64_SWITCH + [
        0x94000000,  # +0x20 case 0: bl (a call)
        0x17FFFFF7,  # +0x24 b back to the cmp (the loop)
        0x93407C15,  # +0x28 case 1: sxtw x21, w0
        0x14000002,  # +0x2c b +0x34
        0xD65F03C0,  # +0x30 ret
        0xAA1503E1,  # +0x34 mov x1, x21
        0xD65F03C0,  # +0x38 ret
    ]
    insns = _a64(words, A64_BASE)
    base = 0x401FF0  # adr's target: the entries are instruction offsets from it
    entries = b"".join(((A64_BASE + off - base) // 4).to_bytes(4, "little", signed=True)
                       for off in (0x20, 0x28, 0x20))
    after_call = 9
    assert "x21" in liveness(A64, insns)[after_call]
    live = liveness(A64, insns, _reader(0x431A68, entries))
    assert "x21" not in live[after_call]
    assert "x21" in live[13]  # where it is used


def test_x86_64_reads_unchanged() -> None:
    insns = _x86(bytes.fromhex("4889df"), 0x400000)  # mov rdi, rbx
    assert X86.mc.regs_access(insns[0]) == ({"rbx"}, {"rdi"})


def test_aarch64_comparisons_read_their_registers() -> None:
    """capstone 5 lists `cmp w20, #1`'s w20 as written, not read: a variable kept in
    x20 across a call and compared after it looked dead at the call (lua's lua_compare
    `op`, not carried by a move). Comparisons read every operand and write the flags."""
    insns = _a64([
        0x2A0303F4,  # mov w20, w3
        0x94000040,  # bl
        0x7100069F,  # cmp w20, #1
        0x1A9F17E0,  # cset w0, eq
        0xF2400EBF,  # tst x21, #0xf
        0x1A9F07E1,  # cset w1, ne
        0xEB0002DF,  # cmp x22, x0
        0xD65F03C0,  # ret
    ], A64_BASE)
    assert A64.mc.regs_access(insns[2]) == ({"w20"}, {"nzcv"})
    assert A64.mc.regs_access(insns[6]) == ({"x22", "x0"}, {"nzcv"})
    live = liveness(A64, insns)[2]  # after the call
    assert {"x20", "x21", "x22"} <= live


def test_calls_inside_inlined_code_are_untranslatable() -> None:
    from docker_hmigrate.toolchain.metadata import DwarfFunc, inlined_reasons
    df = DwarfFunc("lzma_mf_hc4_find", 0x446000, 0x447000, "lz_encoder_mf.c",
                   inlined=[(0x446600, 0x446710, "lzma_memcmplen", 398)])
    assert inlined_reasons("x86-64", df, {"call_pc": 0x446650})[0].startswith(
        "x86-64: call inside lzma_memcmplen inlined at line 398")
    assert inlined_reasons("x86-64", df, {"call_pc": 0x446710}) == []


def test_unclean_table_coarsens_to_fit() -> None:
    """More untranslatable return addresses than the runtime's table holds: functions
    with the most of them become whole ranges until it fits (never a lost range)."""
    from docker_hmigrate.toolchain.metadata import unclean_ranges

    def fn(addr: int, bad: int) -> dict:
        sites = [{"return_address": addr + 16 * (i + 1), "kind": "call", "target": None,
                  "translatable": i >= bad} for i in range(8)]
        return {"instrumented": True, "translatable": True,
                "isa": {"x86-64": {"addr": addr, "size": 0x100, "call_sites": sites}}}

    functions = [fn(0x1000 * (k + 1), bad) for k, bad in enumerate((6, 1, 5, 2))]
    full = unclean_ranges(functions, "x86-64", set())
    assert len(full) == 14
    small = unclean_ranges(functions, "x86-64", set(), limit=6)
    assert len(small) <= 6
    for lo, hi in full:  # every return address is still covered
        assert any(a <= lo and hi <= b for a, b in small)
    assert [0x1000, 0x1100] in small and [0x3000, 0x3100] in small
