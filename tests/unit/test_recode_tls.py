"""TLS layout arithmetic of musl 1.2.3 for both variants and a synthetic round trip
x86-64 -> aarch64 -> x86-64 of a two-thread process's TLS areas (no daemon)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from docker_hmigrate.isa import AARCH64, X86_64
from docker_hmigrate.isa import get as get_isa
from docker_hmigrate.recode import tls
from docker_hmigrate.recode.frames import Untranslatable

X, A = "x86-64", "aarch64"
SEG = {"vaddr": 0x420000, "filesz": 0, "memsz": 8, "align": 8}  # examples/threads


def test_params_of_examples_threads() -> None:
    px, pa = tls.Params.from_segment(X, SEG), tls.Params.from_segment(A, SEG)
    assert (px.size, px.align, px.offset, px.tls_size) == (8, 8, 8, 232)
    assert (pa.size, pa.align, pa.offset, pa.tls_size) == (8, 8, 16, 248)


def test_params_without_tls_match_on_both() -> None:
    # no PT_TLS: musl's wrapping arithmetic gives offset 0 on aarch64 too
    px, pa = tls.Params.from_segment(X, None), tls.Params.from_segment(A, None)
    assert (px.offset, px.tls_size) == (pa.offset, pa.tls_size) == (0, 224)


def test_params_aligned_block() -> None:
    seg = {"vaddr": 0x420000, "filesz": 8, "memsz": 8, "align": 64}
    px, pa = tls.Params.from_segment(X, seg), tls.Params.from_segment(A, seg)
    assert (px.size, px.offset, px.tls_size) == (64, 64, 344)
    assert (pa.size, pa.offset, pa.tls_size) == (64, 64, 408)
    # an image not aligned to 64 inside its segment: aarch64's gap takes the slack
    pa2 = tls.Params.from_segment(A, {**seg, "vaddr": 0x420010, "align": 64})
    assert pa2.offset == 16 + ((0x420010 - 16) & 63)


@pytest.mark.parametrize("align", [8, 16, 64])
@pytest.mark.parametrize("mem", [0x4466C0, 0x7F0000001000 - 1024 - 344, 0x7F0000000F08])
def test_layout_invariants(align: int, mem: int) -> None:
    seg = {"vaddr": 0x420000, "filesz": 8, "memsz": 24, "align": align}
    for isa in (X, A):
        p = tls.Params.from_segment(isa, seg)
        a = tls.layout(p, mem)
        sz = get_isa(isa).pthread.size
        assert mem <= a.td and a.td + sz <= a.end
        assert a.block % align == 0 and mem <= a.block and a.block + p.size <= a.end
        assert tls.struct_address(isa, a.tp) == a.td
        if isa == X:  # variant 2: TP = struct, block ends at it, dtv at the start
            assert (a.tp, a.block + p.size, a.dtv) == (a.td, a.td, mem)
            assert a.td % align == 0
        else:  # variant 1: TP past the struct, block 16+ above, dtv at the end
            assert a.tp == a.td + sz and a.tp % align == 0
            assert a.block >= a.tp + get_isa(A).tls_gap_above_tp
            assert a.dtv + 16 == a.end and a.block + p.size <= a.dtv


# -- a synthetic process: main thread in builtin_tls, one created thread in its map --

@dataclass
class FakeMem:
    base: int
    data: bytearray
    runs: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.runs = [SimpleNamespace(vaddr=self.base, end=self.base + len(self.data),
                                     offset=0)]

    def contains(self, addr: int, n: int = 1) -> bool:
        return self.base <= addr and addr + n <= self.base + len(self.data)

    def read(self, addr: int, n: int) -> bytes:
        assert self.contains(addr, n), hex(addr)
        return bytes(self.data[addr - self.base:addr - self.base + n])

    def write(self, addr: int, b: bytes) -> None:
        assert self.contains(addr, len(b)), hex(addr)
        self.data[addr - self.base:addr - self.base + len(b)] = b

    def read_u64(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")

    def write_u64(self, addr: int, v: int) -> None:
        self.write(addr, v.to_bytes(8, "little"))


class FakeImages:
    """One process: [0x440000, 0x450000) .bss, [MAP, MAP+0x20000) a thread's map."""

    def __init__(self, mem: FakeMem, isa: str):
        self.mem, self.isa = mem, isa
        self.cores = {1: SimpleNamespace(), 2: SimpleNamespace()}
        for c in self.cores.values():
            c.ti_aarch64 = SimpleNamespace(tls=0, gpregs=SimpleNamespace(regs=[0] * 31))
            c.thread_info = SimpleNamespace(gpregs=SimpleNamespace(
                fs_base=0, bx=0, r12=0, r13=0, r14=0, r15=0, di=0, si=0, dx=0, r10=0, ax=0))

    def memory(self, pid: int) -> FakeMem:
        return self.mem

    def vma_at(self, pid: int, addr: int):
        v = SimpleNamespace(start=self.mem.base, end=self.mem.base + len(self.mem.data),
                            prot=3)
        return v if v.start <= addr < v.end else None

    def mm(self, pid: int):
        return SimpleNamespace(vmas=[self.vma_at(pid, self.mem.base)])

    def core(self, tid: int):
        return self.cores[tid]


LIBC, MAIN_TLS, BUILTIN = 0x441000, 0x441100, 0x4466C0
MAP = 0x7F0000000000
MAP_SIZE = 0x20000
TSD = MAP + MAP_SIZE - 1024
HEAP = MAP + 0x100  # a pthread_t and a pointer to the thread's TLS variable live here
OUTER_CFA = TSD - 232 - 32 - 64  # below start_args and musl's start frame


def metadata() -> dict:
    syms = [{"name": tls.LIBC_SYM, "kind": "object", X: [LIBC, 104], A: [LIBC, 104]},
            {"name": tls.MAIN_TLS_SYM, "kind": "object", X: [MAIN_TLS, 48], A: [MAIN_TLS, 48]},
            {"name": tls.BUILTIN_SYM, "kind": "object", X: [BUILTIN, 336], A: [BUILTIN, 336]}]
    return {"tls": {X: {**SEG, "variant": 2}, A: {**SEG, "variant": 1},
                    "symbols": [{"name": "tls_mix", "offset": {X: 0, A: 0}, "size": 8}]},
            "symbols": syms}


def x86_process() -> tuple[FakeImages, FakeImages, dict[str, int]]:
    """Memory as musl 1.2.3 leaves it on x86-64 (two threads, tls_mix set in each)."""
    lo = 0x440000
    bss = bytearray(0x10000)
    p = tls.Params.from_segment(X, SEG)
    main = tls.layout(p, BUILTIN)
    thr = tls.layout(p, TSD - p.tls_size)
    mem = FakeMem(lo, bss)
    tmem = FakeMem(MAP, bytearray(MAP_SIZE))
    both = Both(mem, tmem)
    for off, v in ((tls.LIBC["tls_size"], p.tls_size), (tls.LIBC["tls_align"], p.align),
                   (tls.LIBC["tls_cnt"], 1), (tls.LIBC["tls_head"], MAIN_TLS)):
        both.write_u64(LIBC + off, v)
    for f in ("image", "len", "size", "align", "offset"):
        both.write_u64(MAIN_TLS + tls.TLS_MODULE[f], getattr(p, f))
    f = X86_64.pthread
    for a, other, tsd, mix in ((main, thr, 0x441200, 0x1111), (thr, main, TSD, 0x2222)):
        td = a.td
        both.write_u64(td + f["self"], td)
        both.write_u64(td + f["dtv"], a.dtv)
        both.write_u64(td + f["prev"], other.td)
        both.write_u64(td + f["next"], other.td)
        both.write_u64(td + f["canary"], 0xC0FFEE)
        both.write_u64(td + f["common"] + tls.COMMON["tsd"], tsd)
        both.write_u64(td + f["robust_head"], td + f["robust_head"])
        both.write_u64(a.dtv, 1)
        both.write_u64(a.dtv + 8, a.block)
        both.write_u64(a.block, mix)
    both.write_u64(td_slot := HEAP, thr.td)  # pthread_t t = ...
    both.write_u64(HEAP + 8, thr.block)  # uint64_t *p = &tls_mix (in the thread)
    both.write_u64(HEAP + 16, thr.td + 8)  # not a pointer: a number close to one? no
    both.write_u64(HEAP + 16, 0)
    src = FakeImages2(both, X)
    dst = FakeImages2(both.copy(), X)
    return src, dst, {"main": main.td, "thr": thr.td, "slot": td_slot}


class Both:
    """Two FakeMems as one address space."""

    def __init__(self, *parts: FakeMem):
        self.parts = parts
        self.runs = [r for p in parts for r in p.runs]

    def _p(self, addr: int, n: int = 1) -> FakeMem:
        for p in self.parts:
            if p.contains(addr, n):
                return p
        raise AssertionError(hex(addr))

    def contains(self, addr: int, n: int = 1) -> bool:
        return any(p.contains(addr, n) for p in self.parts)

    def read(self, addr: int, n: int) -> bytes:
        return self._p(addr, n).read(addr, n)

    def write(self, addr: int, b: bytes) -> None:
        self._p(addr, len(b)).write(addr, b)

    def read_u64(self, addr: int) -> int:
        return self._p(addr, 8).read_u64(addr)

    def write_u64(self, addr: int, v: int) -> None:
        self._p(addr, 8).write_u64(addr, v)

    def copy(self) -> Both:
        return Both(*(FakeMem(p.base, bytearray(p.data)) for p in self.parts))


class FakeImages2(FakeImages):
    def __init__(self, mem: Both, isa: str):
        super().__init__(FakeMem(0, bytearray()), isa)
        self.mem = mem

    def vma_at(self, pid: int, addr: int):
        for p in self.mem.parts:
            if p.contains(addr):
                return SimpleNamespace(start=p.base, end=p.base + len(p.data), prot=3)
        return None

    def mm(self, pid: int):
        return SimpleNamespace(vmas=[self.vma_at(pid, p.base) for p in self.mem.parts])


def translate(src: FakeImages2, dst: FakeImages2, s: str, d: str,
              tps: dict[int, int]) -> tls.TlsTranslation:
    return tls.translate_process(src, dst, 1, metadata(), s, d,
                                 [(1, tps[1], 0), (2, tps[2], OUTER_CFA)], [])


def test_round_trip_x86_aarch64_x86() -> None:
    src, dst, at = x86_process()
    tr = translate(src, dst, X, A, {1: at["main"], 2: at["thr"]})
    m = dst.mem
    pa = tls.Params.from_segment(A, SEG)
    td_main = dst.core(1).ti_aarch64.tls - AARCH64.pthread.size
    td_thr = dst.core(2).ti_aarch64.tls - AARCH64.pthread.size
    assert td_main == BUILTIN  # main's area starts where it started
    assert td_thr == TSD - pa.tls_size  # a thread's ends where it ended
    f = AARCH64.pthread
    for td, other, mix in ((td_main, td_thr, 0x1111), (td_thr, td_main, 0x2222)):
        assert m.read_u64(td + f["self"]) == td
        assert m.read_u64(td + f["next"]) == m.read_u64(td + f["prev"]) == other
        assert m.read_u64(td + f["canary"]) == 0xC0FFEE
        assert m.read_u64(td + f["robust_head"]) == td + f["robust_head"]
        block = td + AARCH64.pthread.size + pa.offset
        assert m.read_u64(block) == mix
        dtv = m.read_u64(td + f["dtv"])
        assert (m.read_u64(dtv), m.read_u64(dtv + 8)) == (1, block)
    assert m.read_u64(LIBC + tls.LIBC["tls_size"]) == pa.tls_size == 248
    assert m.read_u64(MAIN_TLS + tls.TLS_MODULE["offset"]) == 16
    assert m.read_u64(HEAP) == td_thr  # the program's pthread_t
    assert m.read_u64(HEAP + 8) == td_thr + AARCH64.pthread.size + 16  # &tls_mix
    assert tr.td_map() == {at["main"]: td_main, at["thr"]: td_thr}
    # and back: everything musl and the program see is as it was on x86-64
    back = FakeImages2(m.copy(), A)
    translate(dst, back, A, X, {1: td_main + 200, 2: td_thr + 200})
    assert back.core(1).thread_info.gpregs.fs_base == at["main"]
    assert back.core(2).thread_info.gpregs.fs_base == at["thr"]
    orig = src.mem
    px = tls.Params.from_segment(X, SEG)
    for area in (tls.layout(px, BUILTIN), tls.layout(px, TSD - px.tls_size)):
        assert back.mem.read(area.mem, area.size) == orig.read(area.mem, area.size)
    for a in (LIBC, MAIN_TLS, HEAP):
        assert back.mem.read(a, 48) == orig.read(a, 48)


def test_refuses_pointer_inside_struct() -> None:
    src, dst, at = x86_process()
    src.mem.write_u64(HEAP + 16, at["thr"] + 48)  # &t->tid kept somewhere
    dst.mem.write_u64(HEAP + 16, at["thr"] + 48)
    with pytest.raises(Untranslatable, match="inside a thread's struct pthread"):
        translate(src, dst, X, A, {1: at["main"], 2: at["thr"]})


def test_refuses_area_into_live_stack() -> None:
    src, dst, at = x86_process()
    with pytest.raises(Untranslatable, match="live stack"):
        tls.translate_process(src, dst, 1, metadata(), X, A,
                              [(1, at["main"], 0), (2, at["thr"], TSD - 232 - 8)], [])


def test_refuses_unexpected_musl_numbers() -> None:
    src, dst, at = x86_process()
    src.mem.write_u64(LIBC + tls.LIBC["tls_size"], 999)
    with pytest.raises(Untranslatable, match="tls_size"):
        translate(src, dst, X, A, {1: at["main"], 2: at["thr"]})


def test_preflight_tls() -> None:
    md = metadata()
    assert tls.preflight_problems(md, X, A) == tls.preflight_problems(md, A, X) == []
    md["tls"]["symbols"][0]["offset"][A] = 8
    assert any("tls_mix" in p for p in tls.preflight_problems(md, X, A))
    md = metadata()
    md["tls"][A]["memsz"] = 16
    assert any("memsz" in p for p in tls.preflight_problems(md, X, A))
    md = metadata()
    md["symbols"] = md["symbols"][:1]
    assert any("main_tls" in p for p in tls.preflight_problems(md, X, A))
    assert tls.preflight_problems({"tls": {}}, X, A) == []
