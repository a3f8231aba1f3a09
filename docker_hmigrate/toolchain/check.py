"""Prove, symbol by symbol, that two binaries share one address layout."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field

from elftools.elf.elffile import ELFFile

from docker_hmigrate.isa import AARCH64, X86_64

CHECKED_TYPES = ("STT_FUNC", "STT_OBJECT", "STT_TLS")
# Symbols that cannot share an address and never matter at an equivalence point:
# GCC's crtstuff/crtend (startup/teardown, frame registration) and musl's x86-64 signal
# return trampoline, which starts one byte in (a nop for debuggers).
EXEMPT_FILES = ("crtstuff.c",)
EXEMPT_NAMES = ("__restore_rt", "__restore", "__TMC_END__")


@dataclass
class AlignReport:
    aligned: int = 0
    mismatched: list[tuple[str, int, int]] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    exempt: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    names: tuple[str, str] = (X86_64.name, AARCH64.name)

    @property
    def ok(self) -> bool:
        return not self.mismatched and not self.problems

    def text(self, verbose: bool = False) -> str:
        a, b = self.names
        lines = []
        for p in self.problems:
            lines.append(f"check-align: BROKEN: {p}")
        for name in self.allowed:
            lines.append(f"check-align: allowed (unalignable by construction): {name}")
        for name, va, vb in self.mismatched:
            lines.append(f"check-align: BROKEN: {name}: {a} 0x{va:x} != {b} 0x{vb:x}")
        if verbose:
            lines += [f"  {a} only: {n}" for n in self.only_a]
            lines += [f"  {b} only: {n}" for n in self.only_b]
        status = "OK" if self.ok else "FAILED"
        lines.append(
            f"check-align: {status}: {self.aligned} symbols at identical addresses, "
            f"{len(self.mismatched)} misaligned, {len(self.problems)} layout problems, "
            f"{len(self.exempt)} exempt (crtstuff, signal trampoline), "
            f"{len(self.allowed)} allowed (multi-entry asm), "
            f"{len(self.only_a)} {a}-only, {len(self.only_b)} {b}-only"
        )
        return "\n".join(lines) + "\n"


def symbol_table(path: str) -> tuple[dict[str, list[int]], dict]:
    """Symbols keyed by name (globals) or file::name (locals) -> sorted addresses."""
    out: dict[str, list[int]] = {}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            raise SystemExit(f"check-align: {path} has no symbol table (stripped?)")
        cur_file = ""
        for sym in symtab.iter_symbols():
            t = sym["st_info"]["type"]
            if t == "STT_FILE":
                cur_file = sym.name
                continue
            if t not in CHECKED_TYPES or not sym.name or sym["st_shndx"] == "SHN_UNDEF":
                continue
            local = sym["st_info"]["bind"] == "STB_LOCAL"
            key = f"{cur_file}::{sym.name}" if local else sym.name
            out.setdefault(key, []).append(sym["st_value"])
        info = {"tls": None, "machine": elf["e_machine"]}
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_TLS":
                info["tls"] = (seg["p_vaddr"], seg["p_memsz"], seg["p_align"])
        info["sections"] = {s.name: s["sh_addr"] for s in elf.iter_sections() if s["sh_addr"]}
    return {k: sorted(v) for k, v in out.items()}, info


def check_alignment(bin_a: str, bin_b: str, names: tuple[str, str] = (X86_64.name, AARCH64.name),
                    allowed: set[str] | None = None) -> AlignReport:
    sa, ia = symbol_table(bin_a)
    sb, ib = symbol_table(bin_b)
    rep = AlignReport(names=names)
    if ia["machine"] == ib["machine"]:
        rep.problems.append(f"both binaries are {ia['machine']}")
    for key in sorted(sa.keys() | sb.keys()):
        va, vb = sa.get(key), sb.get(key)
        if va is None:
            rep.only_b.append(key)
        elif vb is None:
            rep.only_a.append(key)
        elif va == vb:
            rep.aligned += len(va)
        elif key in EXEMPT_NAMES or key.split("::")[0] in EXEMPT_FILES:
            rep.exempt.append(key)
        elif allowed and key in allowed:
            rep.allowed.append(key)
        else:
            rep.mismatched.append((key, va[0], vb[0]))
    ta, tb = ia["tls"], ib["tls"]
    if (ta is None) != (tb is None):
        rep.problems.append("only one binary has a TLS segment")
    elif ta and (ta[0] != tb[0] or ta[1] != tb[1]):
        rep.problems.append(f"TLS segment differs: {ta} vs {tb} (vaddr, memsz, align)")
    for sec in (".text", ".rodata", ".data", ".bss", ".tdata"):
        a, b = ia["sections"].get(sec), ib["sections"].get(sec)
        if a is not None and b is not None and a != b:
            rep.problems.append(f"section {sec} starts at 0x{a:x} vs 0x{b:x}")
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="check-align", description=__doc__)
    ap.add_argument("x86_64_binary")
    ap.add_argument("aarch64_binary")
    ap.add_argument("-v", "--verbose", action="store_true", help="list ISA-only symbols")
    ap.add_argument("--allow", action="append", default=[], metavar="SYMBOL",
                    help="a symbol known to be unalignable (repeatable)")
    ap.add_argument("--metadata", help="NAME.hmigrate.json whose layout.unalignable to allow "
                    "(default: found beside the x86-64 binary)")
    ns = ap.parse_args(argv)
    allowed = set(ns.allow)
    md_path = ns.metadata
    suffix = f"_{X86_64.name}"
    if md_path is None and ns.x86_64_binary.endswith(suffix):
        guess = ns.x86_64_binary[: -len(suffix)] + ".hmigrate.json"
        md_path = guess if os.path.exists(guess) else None
    if md_path:
        with open(md_path) as f:
            allowed |= set((json.load(f).get("layout") or {}).get("unalignable", []))
    rep = check_alignment(ns.x86_64_binary, ns.aarch64_binary, allowed=allowed)
    out = sys.stdout if rep.ok else sys.stderr
    out.write(rep.text(ns.verbose))
    return 0 if rep.ok else 1
