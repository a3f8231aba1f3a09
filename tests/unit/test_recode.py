"""Recode units on synthetic inputs: stack unwinding and rebuilding from metadata,
musl's struct pthread, the empty vDSO, preflight refusals. No daemon needed."""

from __future__ import annotations

import struct

import pytest

from docker_hmigrate import errors
from docker_hmigrate.isa import AARCH64, X86_64, ThreadRegs
from docker_hmigrate.isa.aarch64 import saves_frame_record
from docker_hmigrate.recode import Program, frames, process, rebuild, transform
from docker_hmigrate.toolchain import contract

# -- a tiny parked program: main -> work -> __cyg_profile_func_enter -> hmigrate_park
#    -> hm_futex_wait, with musl's libc_start_main_stage2 at the bottom.
X, A = "x86-64", "aarch64"
BOTTOM = {X: 0x405000, A: 0x405010}


def site(index, ret, sp, kind="call", live=(), temps=(), target=None):
    return {"index": index, "call_pc": ret - 4, "return_address": ret, "target": target,
            "kind": kind, "sp_cfa_offset": sp, "live_callee_saved": list(live),
            "callee_saved_temps": list(temps), "translatable": True}


def fn(name, addr, x86, a64, pairs, park_point=None, instrumented=True):
    f = {"name": name, "addr": addr, "instrumented": instrumented, "translatable": True,
         "isa": {X: x86, A: a64}, "call_site_pairs": pairs}
    if park_point:
        f["park_point"] = park_point
    return f


def frame(isa, size, saved):
    if isa == X:
        return {"frame_size": size, "fp_cfa_offset": -16, "dynamic_sp": False,
                "cfa": "rbp+16", "saved_regs": {"rip": -8, "rbp": -16, **saved},
                "return_address_cfa_offset": -8, "saved_fp_cfa_offset": -16}
    return {"frame_size": size, "fp_cfa_offset": -size, "dynamic_sp": False,
            "cfa": f"sp+{size}", "saved_regs": {"x29": -size, "x30": -size + 8, **saved},
            "return_address_cfa_offset": -size + 8, "saved_fp_cfa_offset": -size}


def var(name, off, size=8, ptr=False, kind="local"):
    return {"name": name, "kind": kind, "cfa_offset": off, "scope": None,
            "type": {"name": "t", "size": size, "kind": "pointer" if ptr else "base",
                     "pointer_offsets": [0] if ptr else []}}


def metadata():
    funcs = [
        fn("main", 0x401000,
           {"addr": 0x401000, "size": 64, "frame": frame(X, 32, {}),
            "vars": [var("x", -24), var("p", -32, ptr=True)],
            "call_sites": [site(0, 0x401010, -32, "enter_hook"), site(1, 0x401020, -32)]},
           {"addr": 0x401000, "size": 80, "frame": frame(A, 32, {}),
            "vars": [var("x", -8), var("p", -16, ptr=True)],
            "call_sites": [site(0, 0x401014, -32, "enter_hook"), site(1, 0x401028, -32)]},
           [[0, 0], [1, 1]]),
        fn("work", 0x401100,
           {"addr": 0x401100, "size": 64, "frame": frame(X, 32, {"rbx": -24}),
            "vars": [var("arg", -32, ptr=True, kind="param")],
            "call_sites": [site(0, 0x401110, -32, "enter_hook", temps=["rbx"],
                                live=["rbx"])]},
           {"addr": 0x401100, "size": 80, "frame": frame(A, 48, {"x19": -32, "x20": -24}),
            "vars": [var("arg", -8, ptr=True, kind="param")],
            "call_sites": [site(0, 0x401118, -48, "enter_hook", live=["x19", "x20"],
                                temps=["x20"])]},
           [[0, 0]], park_point={"clean": True, "aarch64_lr_copy": "x19"}),
        fn("__cyg_profile_func_enter", 0x401200,
           {"addr": 0x401200, "size": 32, "frame": frame(X, 16, {}), "vars": [],
            "call_sites": [site(0, 0x401210, -16)]},
           {"addr": 0x401200, "size": 32, "frame": frame(A, 16, {}), "vars": [],
            "call_sites": [site(0, 0x401214, -16)]}, [[0, 0]], instrumented=False),
        fn("hmigrate_park", 0x401300,
           {"addr": 0x401300, "size": 32, "frame": frame(X, 48, {}),
            "vars": [var("ts", -40, 16)], "call_sites": [site(0, 0x401310, -48)]},
           {"addr": 0x401300, "size": 32, "frame": frame(A, 64, {}),
            "vars": [var("ts", -24, 16)], "call_sites": [site(0, 0x401318, -64)]},
           [[0, 0]], instrumented=False),
        fn("hm_futex_wait", 0x401400, {"addr": 0x401400, "size": 16, "vars": [],
                                       "call_sites": []},
           {"addr": 0x401400, "size": 16, "vars": [], "call_sites": []}, [],
           instrumented=False),
    ]
    return {
        "schema": "hmigrate-toolchain/1",
        "binaries": {X: {}, A: {}},
        "runtime": {
            "park_functions": ["__cyg_profile_func_enter", "hmigrate_park", "hm_futex_wait"],
            "park_points": {X: {"blocked_pc": 0x401408, "syscall_pc": 0x401406,
                                "frame_size": 16},
                            A: {"blocked_pc": 0x401408, "syscall_pc": 0x401404,
                                "frame_size": 32}},
            "bottom_frames": {X: [{"function": "stage2", "return_address": BOTTOM[X],
                                   "target": None}],
                              A: [{"function": "stage2", "return_address": BOTTOM[A],
                                   "target": None}]}},
        "tls": {X: None, A: None, "symbols": []},
        "functions": funcs,
        "symbols": [{"name": n, "kind": "func", X: [a, 16], A: [a, 16], "aligned": True}
                    for n, a in (("main", 0x401000), ("work", 0x401100))],
        "checks": {"park_points_clean": True},
    }


class FakeMem:
    """A flat little-endian memory from base, with the Memory methods frames.py uses."""

    def __init__(self, base: int, size: int):
        self.base, self.data = base, bytearray(size)

    def read(self, a: int, n: int) -> bytes:
        assert self.base <= a and a + n <= self.base + len(self.data), hex(a)
        return bytes(self.data[a - self.base:a - self.base + n])

    def write(self, a: int, b: bytes) -> None:
        assert self.base <= a and a + len(b) <= self.base + len(self.data), hex(a)
        self.data[a - self.base:a - self.base + len(b)] = b

    def read_u64(self, a: int) -> int:
        return int.from_bytes(self.read(a, 8), "little")

    def write_u64(self, a: int, v: int) -> None:
        self.write(a, v.to_bytes(8, "little"))


STACK = 0x7ff000
OUTER = 0x7ff800  # main's CFA: where musl's stage2 called main


def x86_stack():
    """Lay out the parked x86-64 stack as the program would have."""
    m = FakeMem(STACK, 0x1000)
    main_cfa = OUTER
    m.write_u64(main_cfa - 8, BOTTOM[X])
    m.write_u64(main_cfa - 16, 0)  # stage2's rbp
    m.write_u64(main_cfa - 24, 42)  # x
    work_cfa = main_cfa - 32
    m.write_u64(main_cfa - 32, work_cfa - 100 + 100)  # p = &work's arg slot? set below
    m.write_u64(work_cfa - 8, 0x401020)
    m.write_u64(work_cfa - 16, main_cfa - 16)
    m.write_u64(work_cfa - 24, 0x5151)  # main's rbx, saved by work
    m.write_u64(work_cfa - 32, main_cfa - 24)  # arg = &x (main's x)
    m.write_u64(main_cfa - 32, work_cfa - 32)  # p = &arg
    enter_cfa = work_cfa - 32
    m.write_u64(enter_cfa - 8, 0x401110)
    m.write_u64(enter_cfa - 16, work_cfa - 16)
    park_cfa = enter_cfa - 16
    m.write_u64(park_cfa - 8, 0x401210)
    m.write_u64(park_cfa - 16, enter_cfa - 16)
    m.write(park_cfa - 40, struct.pack("<QQ", 0, 200_000_000))
    futex_cfa = park_cfa - 48
    m.write_u64(futex_cfa - 8, 0x401310)
    m.write_u64(futex_cfa - 16, park_cfa - 16)
    sp = futex_cfa - 16
    regs = ThreadRegs(pc=0x401408, sp=sp, fp=sp, tp=0, syscall_nr=202,
                             result=(1 << 64) - 4, args=(0x600000, 128, 1, park_cfa - 40),
                             callee_saved={"rbx": 0x7777, "r12": 0, "r13": 0, "r14": 0,
                                           "r15": 0})
    return m, regs


def test_unwind_and_rebuild_aarch64_stack() -> None:
    md = metadata()
    idx = frames.Index(md, X, A)
    src, regs = x86_stack()
    stack = frames.unwind(src, regs, idx)
    assert [f.function.name for f in stack.frames] == [
        "hm_futex_wait", "hmigrate_park", "__cyg_profile_func_enter", "work", "main"]
    assert stack.outer_cfa == OUTER and stack.bottom_return == BOTTOM[X]
    frames.source_callee_saved(src, stack, regs, idx)
    assert stack.frames[3].regs["rbx"] == 0x7777  # work's temp: still in the register
    frames.plan_target(stack, idx)
    cfas = [f.dst_cfa for f in stack.frames]
    assert cfas == [OUTER - 32 - 48 - 16 - 64, OUTER - 32 - 48 - 16, OUTER - 32 - 48,
                    OUTER - 32, OUTER]
    dst = FakeMem(STACK, 0x1000)
    smap = frames.StackMap(stack, idx)
    out = rebuild.write_target(src, dst, stack, idx, smap, BOTTOM[A])
    main_cfa, work_cfa, enter_cfa, park_cfa = OUTER, OUTER - 32, OUTER - 80, OUTER - 96
    # frame records: saved fp / return address per frame, chain ends with 0
    assert dst.read_u64(main_cfa - 32) == 0 and dst.read_u64(main_cfa - 24) == BOTTOM[A]
    assert dst.read_u64(work_cfa - 48) == main_cfa - 32
    assert dst.read_u64(work_cfa - 40) == 0x401028  # twin of main's call to work
    assert dst.read_u64(enter_cfa - 16) == work_cfa - 48
    assert dst.read_u64(enter_cfa - 8) == 0x401118
    # variables moved slot to slot; pointers into the stack follow their variable
    assert dst.read_u64(main_cfa - 8) == 42
    assert dst.read_u64(work_cfa - 8) == main_cfa - 8  # arg = &x, x moved
    assert dst.read_u64(main_cfa - 16) == work_cfa - 8  # p = &arg, arg moved
    assert dst.read(park_cfa - 24, 16) == struct.pack("<QQ", 0, 200_000_000)
    # work saved main's values of x19/x20 (dead in main: 0); inside work x19 is its
    # own return address (lr copy) and x20 the rbx temporary
    assert out["x19"] == 0x401028 and out["x20"] == 0x7777
    assert out["x29"] == park_cfa - 64 and out["x30"] == 0x401318
    assert frames.lowest_target_sp(stack, idx) == park_cfa - 64 - 32


def to_aarch64(md: dict):
    """The synthetic x86-64 stack rebuilt for aarch64 as a recode does: the source stack's
    plan, the aarch64 memory, and the registers it gives the thread there."""
    src, regs = x86_stack()
    fwd = frames.Index(md, X, A)
    stack = frames.unwind(src, regs, fwd)
    frames.source_callee_saved(src, stack, regs, fwd)
    frames.plan_target(stack, fwd)
    arm = FakeMem(STACK, 0x1000)
    out = rebuild.write_target(src, arm, stack, fwd, frames.StackMap(stack, fwd), BOTTOM[A])
    park = md["runtime"]["park_points"]
    return stack, arm, ThreadRegs(
        pc=park[A]["blocked_pc"], sp=frames.lowest_target_sp(stack, fwd), fp=out["x29"],
        tp=0, syscall_nr=AARCH64.sys_futex, result=0, args=(0, 0, 0, 0),
        callee_saved={r: out.get(r, 0) for r in AARCH64.callee_saved}, lr=out["x30"])


def test_stack_round_trip_x86_aarch64_x86() -> None:
    """x86-64 -> aarch64 -> x86-64 gives back the same frames: CFAs, return addresses,
    frame records, variables (pointers among them) and the temporary in rbx."""
    md = metadata()
    src, regs = x86_stack()
    stack, arm, arm_regs = to_aarch64(md)
    back = frames.Index(md, A, X)
    again = frames.unwind(arm, arm_regs, back)
    assert [f.function.name for f in again.frames] == [f.function.name
                                                          for f in stack.frames]
    frames.source_callee_saved(arm, again, arm_regs, back)
    frames.plan_target(again, back)
    assert [f.dst_cfa for f in again.frames] == [f.src_cfa for f in stack.frames]
    assert frames.lowest_target_sp(again, back) == regs.sp
    x86 = FakeMem(STACK, 0x1000)
    out2 = rebuild.write_target(arm, x86, again, back, frames.StackMap(again, back), BOTTOM[X])
    assert out2["rbp"] == regs.fp and out2["rbx"] == 0x7777
    for fr in stack.frames[1:]:  # frame records and every variable slot, frame by frame
        assert x86.read_u64(fr.src_cfa - 8) == src.read_u64(fr.src_cfa - 8), fr.function.name
        for v in fr.function.isa[X].stack_vars:
            a = fr.src_cfa + v.cfa_offset
            assert x86.read(a, v.type.size) == src.read(a, v.type.size), v.name
    # frame chain: each saved rbp is the caller's, main's caller's is 0 (musl's frame)
    assert [x86.read_u64(f.src_cfa - 16) for f in stack.frames[1:]] == \
        [f.src_cfa - 16 for f in stack.frames[2:]] + [0]


def test_unknown_return_address_is_refused() -> None:
    idx = frames.Index(metadata(), X, A)
    src, regs = x86_stack()
    src.write_u64(OUTER - 32 - 8, 0x409999)  # work returns somewhere unknown
    with pytest.raises(errors.NotMigratableCrossISA, match="unknown return address"):
        frames.unwind(src, regs, idx)


def test_not_parked_is_refused() -> None:
    idx = frames.Index(metadata(), X, A)
    src, regs = x86_stack()
    regs.pc = 0x401000
    with pytest.raises(errors.NotMigratableCrossISA, match="not parked"):
        frames.unwind(src, regs, idx)


def test_pointer_into_no_variable_is_refused() -> None:
    md = metadata()
    idx = frames.Index(md, X, A)
    src, regs = x86_stack()
    src.write_u64(OUTER - 32, OUTER - 12)  # p points into main's saved-rbp slot
    stack = frames.unwind(src, regs, idx)
    frames.source_callee_saved(src, stack, regs, idx)
    frames.plan_target(stack, idx)
    with pytest.raises(errors.NotMigratableCrossISA, match="matches no variable"):
        rebuild.write_target(src, FakeMem(STACK, 0x1000), stack, idx,
                             frames.StackMap(stack, idx), BOTTOM[A])


def test_stale_pointer_into_a_called_frame_is_carried_as_it_is() -> None:
    """A variable holding an address inside a frame it called, at no variable there (xz's
    lzma_raw_coder_init: filters[5] of which only count + 1 are filled hold a dead frame's
    addresses, now inside the live callees): stale bytes, carried as they are; into its
    own frame or an outer one at no variable is still refused (the test above)."""
    src, regs = x86_stack()
    stack = frames.unwind(src, regs, frames.Index(metadata(), X, A))
    stale = stack.frames[-2].src_cfa - 16  # main's callee's frame record: no variable
    assert stale < stack.frames[-1].src_sp
    main_frame, src, dst = _rebuild_with_lines(None, None, p_value=stale)  # main's p
    assert dst.read_u64(main_frame.dst_cfa - 16) == stale  # p: its bytes as they were


def test_local_declared_below_the_stop_is_not_carried() -> None:
    """The same stale stack address, in a local declared on a line below the call its
    frame is stopped at (C gives it no value there): not translated, not refused; its
    slot on the target is left as the target stack has it."""
    main_frame, src, dst = _rebuild_with_lines(var_file="main.c", call_file="main.c")
    assert dst.read_u64(main_frame.dst_cfa - 16) == 0  # p: not written
    assert dst.read_u64(main_frame.dst_cfa - 8) == src.read_u64(OUTER - 24)  # x: carried


def _rebuild_with_lines(var_file: str | None, call_file: str | None, p_value: int = 0):
    """main's p declared at line 12 of var_file, x at line 9, main stopped at a call on
    line 10 of call_file; p's slot holds p_value (else a dead frame's address)."""
    md = metadata()
    main = md["functions"][0]
    for isa in (X, A):
        for v, line in ((main["isa"][isa]["vars"][1], 12), (main["isa"][isa]["vars"][0], 9)):
            v["line"], v["file"] = line, var_file
        for cs in main["isa"][isa]["call_sites"]:
            cs["line"], cs["file"] = 10, call_file
    idx = frames.Index(md, X, A)
    src, regs = x86_stack()
    src.write_u64(OUTER - 32, p_value or OUTER - 12)  # p, in main's slot
    stack = frames.unwind(src, regs, idx)
    frames.source_callee_saved(src, stack, regs, idx)
    frames.plan_target(stack, idx)
    dst = FakeMem(STACK, 0x1000)
    rebuild.write_target(src, dst, stack, idx, frames.StackMap(stack, idx), BOTTOM[A])
    main_frame = stack.frames[-1]
    assert main_frame.function.name == "main"
    return main_frame, src, dst


@pytest.mark.parametrize("var_file,call_file", [("bc.c", "bc.y"), (None, None)])
def test_line_of_another_file_does_not_drop_a_local(var_file, call_file) -> None:
    """bison's parser: yyvsp declared at bc.c:1329, its frame stopped at a call from an
    action at bc.y:134 (#line). Lines of two files say nothing about declaration order:
    the variable is carried (it was dropped, and bc's parser then crashed writing through
    a null yyvsp on x86-64 after a round trip). Without files (older metadata) likewise."""
    heap = 0x7000_0000
    main_frame, _src, dst = _rebuild_with_lines(var_file, call_file, p_value=heap)
    assert dst.read_u64(main_frame.dst_cfa - 16) == heap


def test_pthread_translated_in_place() -> None:
    td = 0x445598
    src = FakeMem(0x445000, 0x1000)
    words = {0: td, 8: 0x445580, 16: td, 24: td, 32: 0, 40: 0xCAFE, 48: 0x400000001,
             136: td + 136, 168: 0x4450B8}
    for off, v in words.items():
        src.write_u64(td + off, v)
    dst = FakeMem(0x445000, 0x1000)
    tp = process.translate_pthread(src, dst, td, "x86-64", "aarch64")
    assert tp == td + 200
    a = AARCH64.pthread
    assert dst.read_u64(td + a["self"]) == td and dst.read_u64(td + a["next"]) == td
    assert dst.read_u64(td + a["dtv"]) == 0x445580 and dst.read_u64(td + a["canary"]) == 0xCAFE
    assert dst.read_u64(td + a["common"]) == 0x400000001  # tid, errno
    assert dst.read_u64(td + a["robust_head"]) == td + a["robust_head"]
    assert dst.read_u64(td + 152) == 0x4450B8  # locale


def test_pthread_missing_is_refused() -> None:
    with pytest.raises(errors.NotMigratableCrossISA, match="no musl struct pthread"):
        process.translate_pthread(FakeMem(0x445000, 0x1000), FakeMem(0x445000, 0x1000),
                                  0x445598, "x86-64", "aarch64")


def test_empty_vdso_parses_like_criu() -> None:
    img = process.empty_vdso(8192, AARCH64.elf_machine)
    assert img[:4] == b"\x7fELF" and len(img) == 8192
    phoff, = struct.unpack_from("<Q", img, 32)
    phnum, = struct.unpack_from("<H", img, 56)
    types = {}
    for i in range(phnum):
        t, _f, off, vaddr, _p, filesz, *_ = struct.unpack_from("<IIQQQQQQ", img,
                                                               phoff + 56 * i)
        types[t] = (off, vaddr, filesz)
    assert set(types) == {1, 2}
    off, _, filesz = types[2]
    tags = {}
    for i in range(filesz // 16):
        tag, val = struct.unpack_from("<qQ", img, off + 16 * i)
        if tag == 0:
            break
        tags[tag] = val
    assert {4, 5, 6, 10, 11} <= set(tags)  # HASH, STRTAB, SYMTAB, STRSZ, SYMENT
    nbucket, nchain, bucket0, chain0 = struct.unpack_from("<4I", img, tags[4])
    assert (nbucket, nchain, bucket0, chain0) == (1, 1, 0, 0)  # no symbol to find


def test_stp_frame_record_detection() -> None:
    stp_pre = (0xA9BE7BFD).to_bytes(4, "little")  # stp x29, x30, [sp, #-32]!
    leaf = (0xD10083FF).to_bytes(4, "little") + (0xD65F03C0).to_bytes(4, "little")
    assert saves_frame_record(stp_pre)
    assert not saves_frame_record(leaf)


def program(md=None, binaries=None) -> Program:
    return Program("/p", md or metadata(), binaries or {})


def test_preflight_both_directions_and_not_same_isa() -> None:
    assert transform.preflight_problems(program(), A, X) == []
    assert "not implemented" in transform.preflight_problems(program(), X, X)[0]


def test_preflight_refuses_tls() -> None:
    md = metadata()
    md["tls"][X] = {"memsz": 16, "variant": 2}
    assert any("thread-local" in p for p in transform.preflight_problems(program(md), X, A))


def test_preflight_checks_target_binary_hash() -> None:
    md = metadata()
    md["binaries"][A] = {"sha256": "0" * 64}
    probs = transform.preflight_problems(program(md, {A: b"\x7fELF"}), X, A)
    assert any("not the one" in p for p in probs)


def test_preflight_clean_for_synthetic_program() -> None:
    assert transform.preflight_problems(program(), X, A) == []


def test_recode_refuses_with_problems(tmp_path) -> None:
    with pytest.raises(errors.NotMigratableCrossISA, match="not implemented"):
        transform.recode_images(tmp_path, tmp_path / "o", program(), X, X)


# -- pagemap editing, on a synthetic image set --------------------------------------

class FakeSet:
    """Just what process.drop_pages / portable_pagemap need of an ImageSet."""

    def __init__(self, runs: list[tuple[int, int, int]]):
        from docker_hmigrate.criu import schema
        from docker_hmigrate.criu.image import ImageFile

        msgs = [schema.new("pagemap_head", pages_id=1)]
        data = bytearray()
        for vaddr, n, flags in runs:
            msgs.append(schema.new("pagemap_entry", vaddr=vaddr, compat_nr_pages=0,
                                   flags=flags, nr_pages=n))
            if flags & 4:
                for p in range(n):
                    data += bytes([(vaddr >> 12) + p & 0xFF]) * 4096
        self.images = {"pagemap-1.img": ImageFile.new("pagemap-1.img", 0x56084025, msgs),
                       "pages-1.img": ImageFile.from_bytes("pages-1.img", bytes(data))}
        self._memory: dict = {}

    def image(self, name: str):
        return self.images[name]

    def memory(self, pid: int):
        from docker_hmigrate.criu.memory import Memory

        if pid not in self._memory:
            self._memory[pid] = Memory(self.images["pagemap-1.img"],
                                       self.images["pages-1.img"])
        return self._memory[pid]


def test_drop_pages_splits_runs_and_keeps_contents() -> None:
    s = FakeSet([(0x400000, 3, 4), (0x500000, 2, 6)])
    assert process.drop_pages(s, 1, 0x401000, 0x402000) == 1
    mem = s.memory(1)
    assert [(r.vaddr, r.nr_pages) for r in mem.runs] == [(0x400000, 1), (0x402000, 1),
                                                         (0x500000, 2)]
    assert mem.read(0x402000, 1) == bytes([0x402 & 0xFF])
    assert mem.read(0x501000, 1) == bytes([0x501 & 0xFF])
    assert not mem.contains(0x401000)
    assert process.drop_pages(s, 1, 0x600000, 0x700000) == 0


def test_portable_pagemap_sets_both_counts() -> None:
    s = FakeSet([(0x400000, 3, 4)])
    process.portable_pagemap(s, 1)
    e = s.images["pagemap-1.img"].entries[1].msg
    assert e.compat_nr_pages == 3 and e.nr_pages == 3


# -- setjmp/longjmp: a jmp_buf saved by main's setjmp call, translated like main's frame
def jmp_metadata():
    md = metadata()
    main = md["functions"][0]
    main["isa"][X]["call_sites"].append(site(2, 0x401030, -32, target="setjmp"))
    main["isa"][A]["call_sites"].append(site(2, 0x401034, -32, target="setjmp",
                                             live=["x19"]))
    main["call_site_pairs"].append([2, 2])
    main["park_point"] = {"clean": True, "aarch64_lr_copy": "x19"}
    return md


def guard_type(isa):
    jb = 200 if isa == X else 312
    return {"name": "struct lua_longjmp", "size": jb + 16, "kind": "struct",
            "pointer_offsets": [0], "holds": ["jmp_buf"],
            "fields": [{"path": "previous", "offset": 0, "size": 8, "kind": "pointer"},
                       {"path": "b[0]", "offset": 8, "size": jb, "kind": "jmp_buf"},
                       {"path": "status", "offset": jb + 8, "size": 4, "kind": "data"}]}


def x86_jmp_buf(main_cfa):
    raw = bytearray(200)
    struct.pack_into("<8Q", raw, 0, 0x11, main_cfa - 16, 0, 0, 0, 0, main_cfa - 32, 0x401030)
    raw[64:200] = bytes(range(136))  # __fl and the signal mask: copied as they are
    return bytes(raw)


def unwound(md, src_isa=X, dst_isa=A):
    idx = frames.Index(md, src_isa, dst_isa)
    src, regs = x86_stack()
    stack = frames.unwind(src, regs, idx)
    frames.source_callee_saved(src, stack, regs, idx)
    frames.plan_target(stack, idx)
    smap = frames.StackMap(stack, idx)
    # rebuilt once: a jmp_buf takes its registers' callers' values from the frames
    rebuild.write_target(src, FakeMem(STACK, 0x1000), stack, idx, smap, BOTTOM[dst_isa])
    return idx, src, stack, smap


def test_jmp_buf_translated_like_its_frame_and_back() -> None:
    from docker_hmigrate.recode import jmpbuf

    md = jmp_metadata()
    idx, _, stack, smap = unwound(md)
    raw = x86_jmp_buf(OUTER)
    a64 = jmpbuf.translate(raw, "main: lj", stack, idx, smap, BOTTOM[A])
    regs = struct.unpack_from("<14Q", a64, 0)
    assert regs[0] == BOTTOM[A]  # x19: main's own return address (GCC's lr copy)
    assert regs[1:10] == (0,) * 9  # dead at -O0
    assert regs[10] == OUTER - 32  # x29: main's frame record on aarch64
    assert regs[11] == 0x401034  # x30: the twin of the setjmp call's return address
    assert regs[13] == OUTER - 32  # sp: main's SP at that call
    assert a64[112:176] == bytes(64) and a64[176:] == raw[64:]
    # and back: the aarch64 jmp_buf of the rebuilt stack gives the x86-64 one again
    arm = FakeMem(STACK, 0x1000)
    out = rebuild.write_target(x86_stack()[0], arm, stack, idx, smap, BOTTOM[A])
    park = md["runtime"]["park_points"]
    arm_regs = ThreadRegs(
        pc=park[A]["blocked_pc"], sp=frames.lowest_target_sp(stack, idx), fp=out["x29"],
        tp=0, syscall_nr=AARCH64.sys_futex, result=0, args=(0, 0, 0, 0),
        callee_saved={r: out.get(r, 0) for r in AARCH64.callee_saved}, lr=out["x30"])
    back = frames.Index(md, A, X)
    again = frames.unwind(arm, arm_regs, back)
    frames.source_callee_saved(arm, again, arm_regs, back)
    frames.plan_target(again, back)
    back_map = frames.StackMap(again, back)
    rebuild.write_target(arm, FakeMem(STACK, 0x1000), again, back, back_map, BOTTOM[X])
    x86 = jmpbuf.translate(a64, "main: lj", again, back, back_map, BOTTOM[X])
    assert x86[:8] == bytes(8)  # rbx: dead after the call on x86-64 (the source's 0x11)
    assert x86[8:] == raw[8:]


def test_jmp_buf_keeps_the_callers_registers() -> None:
    """A register the setjmp frame does not save holds its callers' value when setjmp
    saves it (an -Og caller's variable): longjmp puts it back, so the target's jmp_buf
    holds the value the rebuilt callers keep there (lua's auxresume lost its L in x21
    when a coroutine yielded through lua_resume's -O0 setjmp frame)."""
    from docker_hmigrate.recode import jmpbuf

    idx, _, stack, smap = unwound(jmp_metadata())
    main = stack.frames[-1]
    assert "x20" not in main.function.isa[A].frame.saved_regs
    main.dst_entry_regs = {"x20": 0xCAFE, "x19": 0xBAD}
    regs = struct.unpack_from("<14Q", jmpbuf.translate(
        x86_jmp_buf(OUTER), "main: lj", stack, idx, smap, BOTTOM[A]), 0)
    assert regs[1] == 0xCAFE  # x20: passed through main, its caller's
    assert regs[0] == BOTTOM[A]  # x19: main's own (its lr copy), saved by main
    main.dst_entry_regs = None
    with pytest.raises(frames.Untranslatable, match="before its frame is rebuilt"):
        jmpbuf.translate(x86_jmp_buf(OUTER), "main: lj", stack, idx, smap, BOTTOM[A])


def test_variable_holding_a_jmp_buf_moves_member_by_member() -> None:
    from docker_hmigrate.recode import jmpbuf

    md = jmp_metadata()
    idx, _, stack, smap = unwound(md)
    sv = contract.Var({"name": "lj", "type": guard_type(X)})
    dv = contract.Var({"name": "lj", "type": guard_type(A)})
    raw = (OUTER - 24).to_bytes(8, "little") + x86_jmp_buf(OUTER) + struct.pack("<II", 7, 0)
    out = jmpbuf.copy_var(raw, sv, dv, "main: lj", stack, idx, smap, BOTTOM[A])
    assert len(out) == 328
    assert int.from_bytes(out[:8], "little") == OUTER - 8  # previous -> main's x, moved
    assert struct.unpack_from("<Q", out, 8 + 88)[0] == 0x401034
    assert struct.unpack_from("<I", out, 320)[0] == 7  # status after the bigger jmp_buf
    assert jmpbuf.map_offset(sv, dv, 208) == 320 and jmpbuf.map_offset(sv, dv, 8) == 8
    assert jmpbuf.map_offset(sv, dv, 60) is None  # inside the registers: no meaning


def test_jmp_buf_of_unknown_code_or_returned_frame_is_refused() -> None:
    from docker_hmigrate.recode import jmpbuf

    md = jmp_metadata()
    idx, _, stack, smap = unwound(md)
    raw = bytearray(x86_jmp_buf(OUTER))
    struct.pack_into("<Q", raw, 56, 0x401ffe)  # a pc that is no call site of ours
    with pytest.raises(frames.Untranslatable, match="not a call site"):
        jmpbuf.translate(bytes(raw), "g", stack, idx, smap, BOTTOM[A])
    raw = bytearray(x86_jmp_buf(OUTER))
    struct.pack_into("<Q", raw, 48, OUTER - 512)  # SP of a frame that has returned
    with pytest.raises(frames.Untranslatable, match="no longer on the stack"):
        jmpbuf.translate(bytes(raw), "g", stack, idx, smap, BOTTOM[A])
    assert jmpbuf.translate(bytes(200), "g", stack, idx, smap, BOTTOM[A]) == bytes(312)
    bad = guard_type(A)
    bad["fields"][2]["size"] = 8
    with pytest.raises(frames.Untranslatable, match="member by member"):
        jmpbuf.copy_var(bytes(216), contract.Var({"name": "lj", "type": guard_type(X)}),
                        contract.Var({"name": "lj", "type": bad}), "g", stack, idx, smap,
                        BOTTOM[A])


def test_pointers_to_stack_variables_held_in_the_heap_follow_them() -> None:
    """lua's L->errorJmp (heap) points at a frame's lj: remapped with the stack; a word
    into the live stack at no variable is left alone and counted as stale."""
    from types import SimpleNamespace

    from docker_hmigrate.recode import stackrefs

    md = metadata()
    idx, _, stack, _ = unwound(md)
    heap = FakeMem(0x600000, 0x100)
    heap.runs = [SimpleNamespace(vaddr=0x600000, end=0x600100, offset=0)]
    heap.write_u64(0x600008, OUTER - 24)  # &main's x on x86-64
    heap.write_u64(0x600010, OUTER - 12)  # main's frame record, no variable: stale
    heap.write_u64(0x600018, 0x1234)
    vmas = [SimpleNamespace(start=0x600000, end=0x600100, prot=3, flags=0x22, status=1)]
    dst = SimpleNamespace(memory=lambda pid: heap,
                          mm=lambda pid: SimpleNamespace(vmas=vmas))
    got = stackrefs.remap(dst, {1: [(1, None, stack)]}, idx)
    assert got == {1: {"remapped": 1, "stale": 1}}
    assert heap.read_u64(0x600008) == OUTER - 8  # main's x on aarch64
    assert heap.read_u64(0x600010) == OUTER - 12 and heap.read_u64(0x600018) == 0x1234
    data = (OUTER - 24).to_bytes(8, "little") * 2 + bytes(4) + (OUTER - 24).to_bytes(8,
                                                                                      "little")
    assert list(stackrefs.words_in(data, STACK, OUTER)) == [0, 8]  # not the unaligned one


def test_static_jmp_buf_translated_heap_one_refused_dead_one_zeroed() -> None:
    from types import SimpleNamespace

    from docker_hmigrate.recode import jmpbuf

    md = jmp_metadata()
    md["symbols"].append({"name": "env", "kind": "object", X: [0x600040, 200],
                          A: [0x600040, 312], "aligned": True})
    idx, _, stack, _ = unwound(md)
    regs = SimpleNamespace(sp=stack.frames[0].src_sp)

    def fake(raws: dict[int, bytes]):
        mem = FakeMem(0x600000, 0x400)
        mem.runs = [SimpleNamespace(vaddr=0x600000, end=0x600400, offset=0)]
        for a, b in raws.items():
            mem.write(a, b)
        vmas = [SimpleNamespace(start=0x600000, end=0x600400, prot=3, flags=0x22, status=1),
                SimpleNamespace(start=STACK, end=STACK + 0x1000, prot=3, flags=0x22,
                                status=2)]
        return mem, SimpleNamespace(memory=lambda pid: mem,
                                    mm=lambda pid: SimpleNamespace(vmas=vmas))

    mem, dst = fake({0x600040: x86_jmp_buf(OUTER)})
    assert jmpbuf.outside_stacks(dst, {1: [(1, regs, stack)]}, idx) == {1: 1}
    assert mem.read_u64(0x600040 + 88) == 0x401034 and mem.read_u64(0x600040 + 104) == OUTER - 32
    dead = bytearray(x86_jmp_buf(OUTER))
    struct.pack_into("<Q", dead, 48, OUTER - 512)  # its frame has returned
    mem, dst = fake({0x600040: bytes(dead)})
    jmpbuf.outside_stacks(dst, {1: [(1, regs, stack)]}, idx)
    assert mem.read(0x600040, 176) == bytes(176) and mem.read(0x600040 + 176, 136) == dead[64:]
    _, dst = fake({0x600100: x86_jmp_buf(OUTER)})  # not a static jmp_buf: heap
    with pytest.raises(frames.Untranslatable, match="outside the stack and not a static"):
        jmpbuf.outside_stacks(dst, {1: [(1, regs, stack)]}, idx)


def test_stack_pages_never_dumped_read_as_zeros() -> None:
    """A big local buffer touched only in part: CRIU dumps only its touched pages."""
    class Holey(FakeMem):
        def contains(self, a: int, n: int = 1) -> bool:
            return not (a < 0x7ff000 + 0x200 and a + n > 0x7ff000 + 0x100)  # hole

        def read(self, a: int, n: int) -> bytes:
            if not self.contains(a, n):
                raise LookupError("not dumped")
            return super().read(a, n)

    m = Holey(STACK - 0x1000, 0x2000)
    m.write(STACK - 8, b"\x01" * 8)
    assert frames.read_stack(m, STACK - 8, 8) == b"\x01" * 8
    with pytest.raises(LookupError):
        m.read(STACK - 8, 0x1000)
    got = frames.read_stack(m, STACK - 8, 0x1000)
    assert got[:8] == b"\x01" * 8 and got[8:] == bytes(0x1000 - 8)


# -- the address space: empty areas above the target's end are dropped, others kept
def test_empty_areas_above_the_target_address_space_are_dropped(tmp_path) -> None:
    from docker_hmigrate.criu.imageset import ImageSet
    from docker_hmigrate.isa import X86_64
    from tests.support.criu_images import vma, write_set

    write_set(tmp_path / "x")
    s = ImageSet.load(tmp_path / "x")
    before = [(v.start, v.end) for v in s.mm(1).vmas]
    anon = process.VMA_ANON_PRIVATE | process.VMA_AREA_REGULAR
    high = X86_64.user_end + (1 << 30)
    s.mm(1).vmas.add(**vma(high, high + (1 << 20), anon, prot=0))  # a guard area
    s.mm(1).vmas.add(**vma(high + (2 << 20), high + (3 << 20), anon, prot=3))  # data
    process.drop_empty_high_areas(s, 1, X86_64.user_end)
    assert [(v.start, v.end) for v in s.mm(1).vmas] == [
        *before, (high + (2 << 20), high + (3 << 20))]
    process.drop_empty_high_areas(s, 1, AARCH64.user_end)  # all fits: nothing changes
    assert len(s.mm(1).vmas) == len(before) + 1


def test_conntrack_images_are_carried_other_raw_images_refused(tmp_path) -> None:
    """A Redis with live clients dumps its netns's conntrack entries (netns-ct-*,
    netns-exp-*: netlink messages, ISA-neutral): a cross-ISA move carries them; a raw
    image recode knows nothing about (iptables-*) is still refused."""
    from docker_hmigrate.criu import ImageSet
    from tests.support.criu_images import write_set

    write_set(tmp_path)
    for name in ("netns-ct-10.img", "netns-exp-10.img", "tcp-stream-1f3.img"):
        (tmp_path / name).write_bytes(struct.pack("<IHHII", 16, 0x100, 0, 0, 0))
    assert transform.not_understood(ImageSet.load(tmp_path)) == []
    (tmp_path / "iptables-10.img").write_bytes(b"*filter\n")
    assert transform.not_understood(ImageSet.load(tmp_path)) == [
        "iptables-10.img: raw image not interpreted by this library"]


def test_split_block_scope() -> None:
    """A block whose code GCC split (DW_AT_ranges: bison's YYSTACK_RELOCATE block with
    yyss1) holds its variables only in its pieces, not in the hull between them, where
    yyss1's slot holds a stale stack address."""
    v = contract.Var({"name": "yyss1", "scope": [0x100, 0x300],
                      "scope_ranges": [[0x100, 0x150], [0x2F0, 0x300]]})
    assert v.in_scope(0x120) and v.in_scope(0x300)  # a return address: the call before
    assert not v.in_scope(0x200)
    assert contract.Var({"name": "x", "scope": [0x100, 0x300]}).in_scope(0x200)


@pytest.mark.parametrize("index,carried", [(0, False), (5, True)])
def test_entry_hook_of_an_inlined_callee_is_not_the_frames_own(index, carried) -> None:
    """A frame stopped at its own entry hook (call site 0, in the prologue) has stored only
    its parameters; one stopped at the hook of an always_inline callee in its body
    (liblzma's lzma_memcmplen inside lzma_mf_hc4_find) has live locals: they were
    dropped, matches_count read 0 after a round trip and xz crashed."""
    fn = contract.Function({"name": "lzma_mf_hc4_find"})
    site = contract.CallSite({"index": index, "kind": "enter_hook", "line": 398})
    fr = frames.Frame(fn, 0x7000, 0x401000, frames.CallSite(fn, site, site))
    var = contract.Var({"name": "matches_count", "kind": "local", "line": 368})
    assert frames.live_at_stop(fr, var) is carried


def stat_holder(isa):
    """A struct holding musl's struct stat, in each ISA's layout (zstd's cRess_t)."""
    if isa == X:
        leaves = [("st.st_dev", 0, 8, "u"), ("st.st_nlink", 16, 8, "u"),
                  ("st.__pad0", 36, 4, None), ("st.st_size", 48, 8, "s"),
                  ("st.__unused", 120, 24, None)]  # long __unused[3]
        size, ptr = 152, 144
    else:
        leaves = [("st.st_dev", 0, 8, "u"), ("st.st_nlink", 20, 4, "u"),
                  ("st.__pad", 40, 8, None), ("st.st_size", 48, 8, "s"),
                  ("st.__unused", 120, 8, None)]  # unsigned __unused[2]
        size, ptr = 136, 128
    fields = [{"path": p, "offset": o, "size": n, "kind": "data",
               **({"int": i} if i else {})} for p, o, n, i in leaves]
    fields.append({"path": "buf", "offset": ptr, "size": 8, "kind": "pointer"})
    return {"name": "cRess_t", "size": size, "kind": "struct", "pointer_offsets": [ptr],
            "holds": ["layout"], "fields": fields}


def test_struct_with_a_per_isa_layout_moves_member_by_member() -> None:
    from docker_hmigrate.recode import jmpbuf

    idx, _, stack, smap = unwound(jmp_metadata())
    sv = contract.Var({"name": "ress", "type": stat_holder(X)})
    dv = contract.Var({"name": "ress", "type": stat_holder(A)})
    raw = bytearray(152)
    struct.pack_into("<Q", raw, 0, 0x803)
    struct.pack_into("<Q", raw, 16, 3)  # st_nlink
    struct.pack_into("<I", raw, 36, 0xDEAD)  # x86-64's padding: not carried
    struct.pack_into("<q", raw, 48, -1)
    raw[120:144] = b"\xff" * 24  # reserved, sized per ISA: left zero
    struct.pack_into("<Q", raw, 144, OUTER - 24)  # a pointer to main's x: moved
    out = jmpbuf.copy_var(bytes(raw), sv, dv, "f: ress", stack, idx, smap, BOTTOM[A])
    assert len(out) == 136
    assert struct.unpack_from("<QxxxxI", out, 0)[0] == 0x803
    assert struct.unpack_from("<I", out, 20)[0] == 3 and out[40:48] == bytes(8)
    assert struct.unpack_from("<q", out, 48)[0] == -1
    assert out[120:128] == bytes(8)
    assert struct.unpack_from("<Q", out, 128)[0] == OUTER - 8
    assert jmpbuf.map_offset(sv, dv, 48) == 48 and jmpbuf.map_offset(sv, dv, 20) is None
    struct.pack_into("<Q", raw, 16, 1 << 40)  # does not fit aarch64's 4 bytes
    with pytest.raises(frames.Untranslatable, match="does not fit"):
        jmpbuf.copy_var(bytes(raw), sv, dv, "f: ress", stack, idx, smap, BOTTOM[A])
    odd = stat_holder(A)
    odd["fields"][1]["path"] = "st.st_links"  # a member only one side has
    why = jmpbuf.layout_problem(sv.type, contract.TypeInfo(odd), X86_64, AARCH64)
    assert why == "member st.st_nlink exists only on x86-64"


def test_pending_park_kicks_dropped_others_kept() -> None:
    """liblzma's workers block every signal: the runtime's tgkill kick stays queued in
    them although they parked (checkpoint of xz -T2). Recode drops exactly those."""
    from types import SimpleNamespace

    from docker_hmigrate.criu import schema

    def info(signo: int, code: int, pid: int) -> bytes:
        return struct.pack("<iiiiii", signo, 0, code, 0, pid, 0) + bytes(104)

    core = schema.new("core_entry")
    q = core.thread_core.signals_p.signals
    for raw in (info(40, -6, 1), info(10, -6, 1), info(40, 0, 0), info(40, -6, 1)):
        q.add().siginfo = raw
    images = SimpleNamespace(pids=[1], threads=lambda pid: [7], core=lambda tid: core)
    assert transform.drop_park_kicks(images, 40) == 2
    left = [struct.unpack_from("<iii", e.siginfo) for e in q]
    assert left == [(10, 0, -6), (40, 0, 0)]  # SIGUSR1, and a kill(2) from outside
