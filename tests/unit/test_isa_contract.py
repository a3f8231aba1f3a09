"""The ISA objects (docker_hmigrate/isa/) and the toolchain -> recode contract
(toolchain/contract.py): pure facts and typed reading of the metadata."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from docker_hmigrate import isa
from docker_hmigrate.toolchain import contract

PKG = Path(__file__).resolve().parents[2] / "docker_hmigrate"


def test_one_object_per_isa_found_by_every_spelling() -> None:
    assert isa.NAMES == ("x86-64", "aarch64")
    assert isa.get("amd64") is isa.get("x86_64") is isa.X86_64
    assert isa.get("arm64") is isa.AARCH64
    with pytest.raises(KeyError, match="known: x86-64, aarch64"):
        isa.get("riscv64")
    assert isa.by_elf_machine(183) is isa.AARCH64 and isa.by_elf_machine(243) is None
    assert isa.by_criu_march(1) is isa.X86_64
    assert isa.PLATFORMS == {"x86-64": "linux/amd64", "aarch64": "linux/arm64"}


@pytest.mark.parametrize("i", isa.ISAS, ids=isa.NAMES)
def test_thread_pointer_and_struct_pthread_are_inverse(i) -> None:
    td = 0x7F0000001000
    assert i.pthread_at(i.thread_pointer(td)) == td
    # variant 1 (aarch64): TP just past struct pthread; variant 2: TP is the struct
    assert i.thread_pointer(td) - td == (i.pthread.size if i.tls_variant == 1 else 0)
    assert set(i.pthread.offsets) >= {"self", "dtv", "prev", "next", "common", "robust_head"}
    assert i.jmpbuf.size > max(i.jmpbuf.regs.values()) and i.jmpbuf.rest < i.jmpbuf.size
    assert set(i.callee_saved).isdisjoint({i.fp, i.sp}) and i.dwarf_reg(0) in i.dwarf_regs.values()


def test_isa_package_is_a_leaf() -> None:
    """hmigrate/toolchain's image carries isa/ beside toolchain/ and runtime/ only."""
    for f in (PKG / "isa").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level \
                    and node.module.startswith("docker_hmigrate"):
                assert node.module.startswith("docker_hmigrate.isa"), (f.name, node.module)


def test_contract_reads_what_the_toolchain_writes_and_defaults_the_rest() -> None:
    doc = {"schema": contract.SCHEMA,
           "runtime": {"park_functions": ["hmigrate_park", "hm_futex_wait"],
                       "park_points": {"x86-64": {"blocked_pc": 0x401008, "frame_size": 16}},
                       "bottom_frames": {"x86-64": [{"function": "start", "target": "main",
                                                     "return_address": 0x402000}]}},
           "tls": {"x86-64": {"vaddr": 0x420000, "memsz": 8, "align": 8}, "aarch64": None,
                   "symbols": []},
           "functions": [{"name": "f", "isa": {"aarch64": {
               "addr": 0x401100, "size": 32,
               "call_sites": [{"index": 0, "return_address": 0x401110, "kind": "call"}],
               "vars": [{"name": "x", "kind": "local", "type": {"size": 4},
                         "scope": [0x401100, 0x401108], "cfa_offset": -20},
                        {"name": "r", "kind": "local", "type": {"size": 8}}]}},
               "park_point": {"clean": True, "x86-64": 1, "aarch64": 2,
                              "aarch64_lr_copy": "x19"}}],
           "symbols": [{"name": "g", "kind": "object", "x86-64": [0x430000, 8],
                        "aarch64": None, "aligned": False}]}
    md = contract.load(doc)
    assert contract.load(md) is md and md.dump() is doc  # a view: nothing copied
    rt = md.runtime
    assert (rt.park_signal, rt.resume_signal, rt.park_file) == (40, 41, contract.PARK_FILE)
    assert rt.park_function == "hm_futex_wait" and rt.park_pc("x86-64").frame_size == 16
    assert rt.park_pc("aarch64").blocked_pc is None  # missing: the recode's checks say so
    assert [b.target for b in rt.bottoms("x86-64")] == ["main"] and rt.bottoms("aarch64") == []
    assert md.has_tls and md.tls.segment("aarch64") is None
    fi = md.functions[0].isa["aarch64"]
    assert fi.call_sites[0].translatable and fi.call_sites[0].callee_saved_temps == []
    assert [v.name for v in fi.stack_vars] == ["x"]
    x = fi.stack_vars[0]
    assert x.in_scope(0x401108) and not x.in_scope(0x401109)  # pc is a return address
    assert not fi.frame.has_frame_record and fi.frame.saved_regs == {}
    pp = md.functions[0].park_point
    assert pp.lr_copy("aarch64") == "x19" and pp.lr_copy("x86-64") is None
    g = md.symbol("g")
    assert g is not None and g.at("x86-64") == (0x430000, 8) and g.addr("aarch64") is None
    assert md.symbol("nothing") is None and md.checks.park_points_clean is False
