"""Build-time metadata for recode: frames, variables, call sites, park points, TLS.

Everything recode needs is extracted here from DWARF (pyelftools) and machine code
(capstone), so that migration itself never parses DWARF. Schema: docs/toolchain.md.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from types import ModuleType

import capstone
from elftools.dwarf.enums import ENUM_DW_ATE
from elftools.dwarf.ranges import BaseAddressEntry, RangeEntry
from elftools.elf.elffile import ELFFile

from docker_hmigrate.isa import AARCH64, X86_64, Isa
from docker_hmigrate.toolchain import (
    contract,
    locations,
    machine_aarch64,
    machine_x86_64,
    patch,
    values,
)
from docker_hmigrate.toolchain import jmpbuf_layout as jmpbuf
from docker_hmigrate.toolchain.contract import TypeInfo

SCHEMA = contract.SCHEMA
ENTER_HOOK = "__cyg_profile_func_enter"
EXIT_HOOK = "__cyg_profile_func_exit"
# musl frames under every thread's stack (no DWARF): where they call user code.
BOTTOM_FUNCTIONS = ("libc_start_main_stage2", "__libc_start_main", "start", "start_c")
# Frames of parked threads end in these runtime functions (see runtime/hmigrate_rt.c).
PARK_FUNCTIONS = ("__cyg_profile_func_enter", "hmigrate_park", "hm_futex_wait")
OPTIMIZED = "optimized (-O2, no entry hook): never on a parked stack"


@dataclass(frozen=True)
class Arch:
    """An ISA: its facts (isa/) and how its machine code reads (machine_<isa>.py)."""

    isa: Isa
    mc: ModuleType  # toolchain/machine_<isa>.py

    def reg(self, n: int) -> str:
        return self.isa.dwarf_reg(n)


# The two ISAs hmigrate-cc builds for: X the host's (objects carry A's twin), A the other.
X86 = Arch(X86_64, machine_x86_64)
A64 = Arch(AARCH64, machine_aarch64)
ARCHES = {a.isa.elf_machine_name: a for a in (X86, A64)}
X, A = X86_64.name, AARCH64.name

def norm_reg(arch: Arch, name: str) -> str:
    return arch.mc.norm_reg(name)


# ---------------------------------------------------------------- DWARF helpers


def _attr(die, name, default=None):
    a = die.attributes.get(name)
    return default if a is None else a.value


def _name(die) -> str | None:
    v = _attr(die, "DW_AT_name")
    return v.decode() if isinstance(v, bytes) else v


def _ref(die, name="DW_AT_type"):
    if name not in die.attributes:
        return None
    return die.get_DIE_from_attribute(name)


# musl's jmp_buf and sigjmp_buf are arrays of this struct: the registers of a call site
# (return address, stack and frame pointers, callee-saved registers) in one ISA's layout.
JMP_BUF_STRUCTS = ("__jmp_buf_tag",)


def describe_type(die, depth: int = 0) -> dict:
    """Type summary recode needs: name, size, and where pointers live inside it."""
    if die is None:
        return {"name": "void", "size": 0, "kind": "void", "pointer_offsets": []}
    tag = die.tag
    if tag in ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type",
               "DW_TAG_restrict_type", "DW_TAG_atomic_type"):
        inner = describe_type(_ref(die), depth)
        if tag == "DW_TAG_typedef":
            inner = {**inner, "name": _name(die) or inner["name"]}
        return inner
    if tag == "DW_TAG_pointer_type":
        tgt = _ref(die)
        tname = "void" if tgt is None else (_name(tgt) or tgt.tag.replace("DW_TAG_", ""))
        return {"name": f"{tname} *", "size": _attr(die, "DW_AT_byte_size", 8), "kind": "pointer",
                "pointer_offsets": [0]}
    if tag == "DW_TAG_base_type":
        out = {"name": _name(die), "size": _attr(die, "DW_AT_byte_size", 0), "kind": "base",
               "pointer_offsets": []}
        if _attr(die, "DW_AT_encoding") in (ENUM_DW_ATE["DW_ATE_signed"],
                                             ENUM_DW_ATE["DW_ATE_signed_char"]):
            out["signed"] = True  # widened with its sign into a 64-bit register
        return out
    if tag == "DW_TAG_enumeration_type":
        return {"name": f"enum {_name(die) or ''}".strip(), "kind": "enum",
                "size": _attr(die, "DW_AT_byte_size", 4), "pointer_offsets": []}
    if tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
        kw = "struct" if tag == "DW_TAG_structure_type" else "union"
        ptrs: list[int] = []
        holds: set[str] = {"jmp_buf"} if _name(die) in JMP_BUF_STRUCTS else set()
        if depth < 6:
            for m in die.iter_children():
                if m.tag != "DW_TAG_member":
                    continue
                off = _attr(m, "DW_AT_data_member_location", 0)
                if not isinstance(off, int):
                    continue
                mt = describe_type(_ref(m), depth + 1)
                ptrs += [off + p for p in mt["pointer_offsets"]]
                holds.update(mt.get("holds", ()))
        out = {"name": f"{kw} {_name(die) or '<anon>'}", "kind": kw,
               "size": _attr(die, "DW_AT_byte_size", 0), "pointer_offsets": ptrs[:256]}
        if holds:
            out["holds"] = sorted(holds)
            out["fields"] = type_fields(die)
        return out
    if tag == "DW_TAG_array_type":
        elem = describe_type(_ref(die), depth + 1)
        count = 1
        for sub in die.iter_children():
            if sub.tag == "DW_TAG_subrange_type":
                ub = _attr(sub, "DW_AT_upper_bound")
                cnt = _attr(sub, "DW_AT_count")
                n = cnt if isinstance(cnt, int) else (ub + 1 if isinstance(ub, int) else 0)
                count *= n
        ptrs = [i * elem["size"] + p for i in range(min(count, 256)) for p in
                elem["pointer_offsets"]] if elem["size"] else []
        out = {"name": f"{elem['name']}[{count}]", "kind": "array",
               "size": elem["size"] * count, "pointer_offsets": ptrs[:256]}
        if elem.get("holds"):
            out["holds"] = elem["holds"]
            out["fields"] = type_fields(die)
        return out
    if tag == "DW_TAG_subroutine_type":
        return {"name": "function", "kind": "function", "size": 0, "pointer_offsets": []}
    return {"name": tag, "kind": "other", "size": _attr(die, "DW_AT_byte_size", 0),
            "pointer_offsets": []}


def _strip(die):
    while die is not None and die.tag in ("DW_TAG_typedef", "DW_TAG_const_type",
                                          "DW_TAG_volatile_type", "DW_TAG_restrict_type",
                                          "DW_TAG_atomic_type"):
        die = _ref(die)
    return die


def type_fields(die, prefix: str = "", base: int = 0, depth: int = 0) -> list[dict]:
    """The leaves of a type that holds a jmp_buf, for a member-by-member copy between
    the ISAs' layouts: {path, offset, size, kind: jmp_buf | pointer | data | opaque}."""
    die = _strip(die)
    if die is None:
        return []
    size = _attr(die, "DW_AT_byte_size", 0)
    if die.tag == "DW_TAG_structure_type" and _name(die) in JMP_BUF_STRUCTS:
        return [{"path": prefix, "offset": base, "size": size, "kind": "jmp_buf"}]
    if die.tag == "DW_TAG_pointer_type":
        return [{"path": prefix, "offset": base, "size": size or 8, "kind": "pointer"}]
    if die.tag == "DW_TAG_structure_type" and depth < 8:
        out = []
        for m in die.iter_children():
            if m.tag != "DW_TAG_member":
                continue
            off = _attr(m, "DW_AT_data_member_location", 0)
            name = f"{prefix}.{_name(m)}" if prefix else (_name(m) or "?")
            if not isinstance(off, int) or "DW_AT_bit_size" in m.attributes:
                # a bitfield: its bits cannot be moved as bytes
                out.append({"path": name, "offset": base, "size": 0, "kind": "opaque"})
                continue
            out += type_fields(_ref(m), name, base + off, depth + 1)
        return out
    if die.tag == "DW_TAG_array_type" and depth < 8:
        elem, count = describe_type(_ref(die), depth + 1), _array_count(die)
        if not elem["pointer_offsets"] and "jmp_buf" not in elem.get("holds", ()):
            return [{"path": prefix, "offset": base, "size": elem["size"] * count,
                     "kind": "data"}]
        if count > 64:
            return [{"path": prefix, "offset": base, "size": 0, "kind": "opaque"}]
        out = []
        for i in range(count):
            out += type_fields(_ref(die), f"{prefix}[{i}]", base + i * elem["size"],
                               depth + 1)
        return out
    if die.tag == "DW_TAG_union_type":  # members overlap: only plain data can be copied
        members = [describe_type(_ref(m), depth + 1) for m in die.iter_children()
                   if m.tag == "DW_TAG_member"]
        plain = not any(m.get("holds") or m["pointer_offsets"] for m in members)
        return [{"path": prefix, "offset": base, "size": size,
                 "kind": "data" if plain else "opaque"}]
    leaf = {"path": prefix, "offset": base, "size": size, "kind": "data"}
    enc = _attr(die, "DW_AT_encoding") if die.tag in ("DW_TAG_base_type",
                                                        "DW_TAG_enumeration_type") else None
    if die.tag == "DW_TAG_enumeration_type" or enc in (DW_ATE_SIGNED, DW_ATE_SIGNED_CHAR):
        leaf["int"] = "s"
    elif enc in (DW_ATE_UNSIGNED, DW_ATE_UNSIGNED_CHAR, DW_ATE_BOOLEAN):
        leaf["int"] = "u"
    return [leaf]


# base type encodings (DWARF 5, 7.8): pyelftools' table, not our own numbers (unsigned was
# once written 0x08 here, unsigned char's, and every `unsigned long` leaf looked opaque)
DW_ATE_BOOLEAN, DW_ATE_SIGNED, DW_ATE_SIGNED_CHAR = (
    ENUM_DW_ATE["DW_ATE_boolean"], ENUM_DW_ATE["DW_ATE_signed"], ENUM_DW_ATE["DW_ATE_signed_char"])
DW_ATE_UNSIGNED, DW_ATE_UNSIGNED_CHAR = (ENUM_DW_ATE["DW_ATE_unsigned"],
                                         ENUM_DW_ATE["DW_ATE_unsigned_char"])


def _array_count(die) -> int:
    count = 1
    for sub in die.iter_children():
        if sub.tag == "DW_TAG_subrange_type":
            ub, cnt = _attr(sub, "DW_AT_upper_bound"), _attr(sub, "DW_AT_count")
            count *= cnt if isinstance(cnt, int) else (ub + 1 if isinstance(ub, int) else 0)
    return count


def _file_name(lp, index: int) -> str | None:
    """A file of a CU's line program by its index (DW_AT_decl_file, a line-table row):
    0-based from DWARF 5 on, 1-based before."""
    if lp is None:
        return None
    entries = lp["file_entry"]
    i = index if lp.header["version"] >= 5 else index - 1
    if not 0 <= i < len(entries):
        return None
    name = entries[i].name
    return name.decode(errors="replace") if isinstance(name, bytes) else name


def _fbreg_offset(loc, indirect: bool = False) -> int | None:
    """Offset from the frame base (= CFA, DW_OP_call_frame_cfa) of DW_OP_fbreg N.

    With indirect=True, matches "DW_OP_fbreg N; DW_OP_deref" (the slot holds the
    variable's address: VLAs, aarch64 by-reference aggregates).
    """
    if not isinstance(loc, list) or not loc or loc[0] != 0x91:
        return None
    val, shift = 0, 0
    for i, b in enumerate(loc[1:]):
        val |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            if b & 0x40:
                val -= 1 << shift
            rest = loc[i + 2 :]
            return val if rest == ([0x06] if indirect else []) else None
    return None


def _pc_range(die) -> tuple[int, int] | None:
    lo = _attr(die, "DW_AT_low_pc")
    hi = die.attributes.get("DW_AT_high_pc")
    if lo is None or hi is None:
        return None
    return lo, (lo + hi.value if hi.form != "DW_FORM_addr" else hi.value)


def _pc_ranges(die) -> list[tuple[int, int]] | None:
    """The code ranges of a DIE: low/high pc, or DW_AT_ranges (GCC gives a block whose
    code is split, bison's YYSTACK_RELOCATE block in yyparse, a range list)."""
    r = _pc_range(die)
    if r is not None:
        return [r]
    a = die.attributes.get("DW_AT_ranges")
    if a is None or a.form != "DW_FORM_sec_offset":
        return None
    lists = die.dwarfinfo.range_lists()
    if lists is None:
        return None
    base = _attr(die.cu.get_top_DIE(), "DW_AT_low_pc", 0) or 0
    out = []
    for e in lists.get_range_list_at_offset(a.value, cu=die.cu):
        if isinstance(e, BaseAddressEntry):
            base = e.base_address
        elif isinstance(e, RangeEntry):
            lo, hi = (e.begin_offset, e.end_offset) if e.is_absolute else \
                (base + e.begin_offset, base + e.end_offset)
            if hi > lo:
                out.append((lo, hi))
    return sorted(out) or None


NOWHERE = locations.Ranges([])  # a variable with no location at all


def _collect_vars(die, out: list[dict], scope: list[tuple[int, int]] | None,
                  described: bool = False) -> None:
    """A function's variables (its lexical blocks' too). described: the function is
    optimized (-Og, locations.py): a variable not in one fixed slot has its location
    list read per call site instead of making the function untranslatable."""
    for ch in die.iter_children():
        if ch.tag in ("DW_TAG_formal_parameter", "DW_TAG_variable"):
            loc = _attr(ch, "DW_AT_location")
            # optimized away on this ISA: listed all the same (kept nowhere), so that
            # twins by name and occurrence still pair the same declarations
            nowhere = loc is None and described and \
                "DW_AT_declaration" not in ch.attributes and \
                "DW_AT_const_value" not in ch.attributes
            if loc is None and not nowhere:  # declarations (extern), constants, unused
                continue
            entry = {"name": _name(ch), "kind": "param" if ch.tag.endswith("parameter") else
                     "local", "type": describe_type(_ref(ch)), "_type_die": _ref(ch),
                     "scope": [scope[0][0], max(h for _, h in scope)] if scope else None}
            if scope and len(scope) > 1:  # the pieces of a split block
                entry["scope_ranges"] = [list(r) for r in scope]
            if isinstance(_attr(ch, "DW_AT_decl_line"), int):
                entry["line"] = _attr(ch, "DW_AT_decl_line")
                if isinstance(_attr(ch, "DW_AT_decl_file"), int):
                    entry["decl_file"] = _attr(ch, "DW_AT_decl_file")
            if nowhere:
                out.append({**entry, "described": True, "_ranges": NOWHERE})
                continue
            off = _fbreg_offset(loc)
            ind = _fbreg_offset(loc, indirect=True)
            if off is not None:
                entry["cfa_offset"] = off
            elif ind is not None:  # the slot holds the variable's address
                entry["cfa_offset"] = ind
                entry["indirect"] = True
            elif isinstance(loc, list) and loc and loc[0] == 0x03:  # DW_OP_addr: a static
                entry["kind"] = "static"
                entry["addr"] = int.from_bytes(bytes(loc[1:9]), "little")
            elif described:
                entry["described"] = True
                entry["_loc_die"] = ch  # its location list, read per call site
            else:
                entry["location"] = "unsupported"
            out.append(entry)
        elif ch.tag == "DW_TAG_lexical_block":
            _collect_vars(ch, out, _pc_ranges(ch) or scope, described)


def _collect_inlined(die, out: list) -> None:
    """The code ranges of functions inlined into a function (always_inline ones, at
    -O0: liblzma's lzma_memcmplen). -finstrument-functions gives each its own entry
    hook inside the caller's body; their parameters and locals (DW_TAG_inlined_subroutine
    children) are not among the function's variables."""
    for ch in die.iter_children():
        if ch.tag == "DW_TAG_inlined_subroutine":
            origin = _ref(ch, "DW_AT_abstract_origin")
            name = (_name(origin) if origin is not None else None) or "?"
            line = _attr(ch, "DW_AT_call_line")
            for lo, hi in _pc_ranges(ch) or []:
                out.append((lo, hi, name, line if isinstance(line, int) else None))
        if ch.tag in ("DW_TAG_lexical_block", "DW_TAG_inlined_subroutine"):
            _collect_inlined(ch, out)


@dataclass
class DwarfFunc:
    name: str
    low: int
    high: int
    file: str
    vars: list[dict] = field(default_factory=list)
    variadic: bool = False
    hooked_cu: bool = False  # its file was compiled with -finstrument-functions
    described: bool = False  # -Og (--optimize-frames): variables per call site
    # code of functions inlined into it: (lo, hi, name, call line)
    inlined: list[tuple[int, int, str, int | None]] = field(default_factory=list)


class Binary:
    """One linked binary: symbols, code, DWARF functions, CFI and line table."""

    def __init__(self, path: str, o0_fallback: set[tuple[str, str]] | None = None):
        self.path = path
        self.o0_fallback = o0_fallback or set()
        self.f = open(path, "rb")
        self.elf = ELFFile(self.f)
        self.arch = ARCHES[self.elf["e_machine"]]
        self.funcs: dict[str, tuple[int, int]] = {}
        self.objects: dict[str, tuple[int, int]] = {}
        self.tls_syms: dict[str, tuple[int, int]] = {}
        self.by_addr: dict[int, str] = {}
        cur_file = ""
        symtab = self.elf.get_section_by_name(".symtab")
        # A static function several files define (a `static inline` of a header, copied
        # into each file that uses it at -O0: liblzma's mf_skip) is one function per
        # copy: each copy is named "<file>::<name>" (STT_FILE, the same on both ISAs).
        # Under its bare name only the first copy had metadata, and a thread parked in
        # another one was found after the freeze ("unknown return address").
        copies: dict[str, set[int]] = {}
        for sym in symtab.iter_symbols():
            if sym["st_info"]["type"] == "STT_FUNC" and sym.name and \
                    sym["st_shndx"] != "SHN_UNDEF":
                copies.setdefault(sym.name, set()).add(sym["st_value"])
        self.static_copies: dict[tuple[str, int], str] = {}  # (name, addr) -> its key
        for sym in symtab.iter_symbols():
            t = sym["st_info"]["type"]
            if t == "STT_FILE":
                cur_file = sym.name
                continue
            if not sym.name or sym["st_shndx"] == "SHN_UNDEF" or sym.name.startswith("$"):
                continue  # $x/$d are aarch64 mapping symbols
            if sym.name == "_TLS_MODULE_BASE_":
                continue
            v, sz = sym["st_value"], sym["st_size"]
            if t == "STT_FUNC":
                key = sym.name
                if len(copies.get(key, ())) > 1 and sym["st_info"]["bind"] == "STB_LOCAL":
                    key = self.static_copies[(sym.name, v)] = f"{cur_file}::{sym.name}"
                self.funcs.setdefault(key, (v, sz))
                self.by_addr.setdefault(v, key)
            elif t == "STT_OBJECT":
                self.objects.setdefault(sym.name if sym["st_info"]["bind"] != "STB_LOCAL"
                                        else f"{cur_file}::{sym.name}", (v, sz))
            elif t == "STT_TLS":
                self.tls_syms[sym.name] = (v, sz)
        self.dwarf = self.elf.get_dwarf_info() if self.elf.has_dwarf_info() else None
        self.dfuncs: dict[str, DwarfFunc] = {}
        self._lines: list[tuple[int, int, int]] = []
        self._fdes: list[tuple[int, int, object]] = []
        self._fde_keys: list[int] | None = None
        self._fde_tables: dict[int, list] = {}
        self._segs: list[tuple[int, int, bytes]] | None = None
        self._disasm: dict[tuple[int, int], list] = {}
        self.locations = locations.Reader(self.dwarf, self.arch) if self.dwarf else None
        if self.dwarf:
            self._load_dwarf()
            self._load_cfi()
        self.cs = capstone.Cs(self.arch.mc.CS_ARCH, self.arch.mc.CS_MODE)
        self.cs.detail = True

    def close(self) -> None:
        self.f.close()

    def _load_dwarf(self) -> None:
        for cu in self.dwarf.iter_CUs():
            top = cu.get_top_DIE()
            lp = self.dwarf.line_program_for_CU(cu)
            cu_name = _name(top) or ""
            producer = _attr(top, "DW_AT_producer") or b""
            producer = producer if isinstance(producer, bytes) else str(producer).encode()
            hooked = b"-finstrument-functions" in producer
            described = hooked and locations.PRODUCER_MARK in producer
            for die in top.iter_children():
                if die.tag != "DW_TAG_subprogram" or _attr(die, "DW_AT_frame_base") is None:
                    continue
                rng = _pc_range(die)
                name = _name(die)
                if rng is None or name is None:
                    continue
                own = described and (os.path.basename(cu_name), name) not in self.o0_fallback
                fn = DwarfFunc(name, rng[0], rng[1], os.path.basename(cu_name),
                               hooked_cu=hooked, described=own)
                _collect_vars(die, fn.vars, None, own)
                _collect_inlined(die, fn.inlined)
                for v in fn.vars:  # the file of its decl_line (#line: a .y, a .h ...)
                    if "decl_file" in v:
                        v["file"] = _file_name(lp, v.pop("decl_file"))
                fn.variadic = any(c.tag == "DW_TAG_unspecified_parameters"
                                  for c in die.iter_children())
                # Statics may share names across files; the symbol table decides.
                name = self.static_copies.get((name, rng[0]), name)
                if self.funcs.get(name, (None,))[0] == rng[0]:
                    self.dfuncs[name] = fn
            if lp is None:
                continue
            names: dict[int, str | None] = {}
            for e in lp.get_entries():
                st = e.state
                if st is not None and not st.end_sequence:
                    if st.file not in names:
                        names[st.file] = _file_name(lp, st.file)
                    self._lines.append((st.address, st.line, st.column, names[st.file]))
        self._lines.sort()

    def _load_cfi(self) -> None:
        entries = self.dwarf.EH_CFI_entries() if self.dwarf.has_EH_CFI() else (
            self.dwarf.CFI_entries() if self.dwarf.has_CFI() else [])
        for ent in entries:
            hdr = getattr(ent, "header", None)
            if hdr is None or "initial_location" not in hdr:
                continue
            lo = hdr["initial_location"]
            self._fdes.append((lo, lo + hdr["address_range"], ent))
        self._fdes.sort(key=lambda t: t[0])

    def line_at(self, addr: int) -> tuple[int, int, str | None] | None:
        """(line, column, file) of the code at addr."""
        i = bisect.bisect_right(self._lines, (addr, 1 << 30, 1 << 30)) - 1
        if i < 0:
            return None
        return self._lines[i][1], self._lines[i][2], self._lines[i][3]

    def cfi_row(self, pc: int) -> dict | None:
        if self._fde_keys is None:
            self._fde_keys = [f[0] for f in self._fdes]
        i = bisect.bisect_right(self._fde_keys, pc) - 1
        if i < 0 or pc >= self._fdes[i][1]:
            return None
        table = self._fde_tables.get(i)
        if table is None:
            table = self._fde_tables[i] = self._fdes[i][2].get_decoded().table
        row = None
        for r in table:
            if r["pc"] <= pc:
                row = r
        return row

    def code(self, addr: int, size: int) -> bytes:
        if self._segs is None:  # segment contents read once, not per function
            self._segs = [(seg["p_vaddr"], seg["p_filesz"], seg.data())
                          for seg in self.elf.iter_segments() if seg["p_type"] == "PT_LOAD"]
        for vaddr, filesz, data in self._segs:
            if vaddr <= addr < vaddr + filesz:
                off = addr - vaddr
                return data[off : off + size]
        return b""

    def disasm(self, addr: int, size: int) -> list:
        key = (addr, size)
        got = self._disasm.get(key)
        if got is None:
            got = self._disasm[key] = list(self.cs.disasm(self.code(addr, size), addr))
        return got

    def tls(self) -> dict | None:
        for seg in self.elf.iter_segments():
            if seg["p_type"] == "PT_TLS":
                return {"vaddr": seg["p_vaddr"], "filesz": seg["p_filesz"],
                        "memsz": seg["p_memsz"], "align": seg["p_align"]}
        return None


# ---------------------------------------------------------------- machine code analysis


def _is_call(arch: Arch, insn) -> bool:
    return arch.mc.is_call(insn)


def _call_target(arch: Arch, insn) -> int | None:
    return None if not insn.operands else arch.mc.call_target(insn)


def _regs(arch: Arch, insn) -> tuple[set[str], set[str]]:
    try:
        r, w = arch.mc.regs_access(insn)
    except capstone.CsError:
        return set(), set()
    return {norm_reg(arch, x) for x in r}, {norm_reg(arch, x) for x in w}


def _branch(arch: Arch, insn) -> tuple[str, int | None]:
    """('jump'|'cond'|'ret'|'indirect'|'none', direct target)."""
    return arch.mc.branch(insn)


def control_flow(arch: Arch, insns: list, read=None) -> list[list[int]]:
    """Each instruction's successors (indices into insns). With `read` (the binary's
    bytes at an address) a switch's jump table gives the indirect jump its real
    successors; without it, or for a jump not shaped like GCC's dispatch, any block may
    follow (a temporary used in one case would then look live at every call of the
    function)."""
    n = len(insns)
    index = {x.address: i for i, x in enumerate(insns)}
    kinds = [_branch(arch, x) for x in insns]
    tables: dict[int, list[int]] = {}  # indirect jump -> its table's instructions
    for i, (k, _) in enumerate(kinds):
        table = arch.mc.jump_table(insns, i, read) if k == "indirect" and read else None
        if table is not None and all(t in index for t in table):
            tables[i] = sorted({index[t] for t in table})
            continue
        # a computed goto (labels as values): its table holds the addresses of the
        # function's labels, up to where they stop being instructions of the function
        table = arch.mc.goto_table(insns, i, read) if k == "indirect" and read else None
        if table:
            used = next((j for j, t in enumerate(table) if t not in index), len(table))
            if used:
                tables[i] = sorted({index[t] for t in table[:used]})
    starts = {index[t] for _, t in kinds if t in index}
    starts |= {i + 1 for i, (k, _) in enumerate(kinds) if k in ("jump", "ret", "indirect")}
    starts |= {t for ts in tables.values() for t in ts}
    succ: list[list[int]] = []
    for i, (k, t) in enumerate(kinds):
        nxt = [i + 1] if i + 1 < n else []
        tgt = [index[t]] if t in index else []
        if k == "jump":
            succ.append(tgt)
        elif k == "cond":
            succ.append(tgt + nxt)
        elif k == "ret":
            succ.append([])
        elif k == "indirect":  # a jump table: its entries, else any block start
            succ.append(tables.get(i) or sorted(s for s in starts if s < n))
        else:
            succ.append(nxt)
    return succ


def liveness(arch: Arch, insns: list, read=None,
             succ: list[list[int]] | None = None) -> list[set[str]]:
    """Callee-saved registers live on entry to each instruction (CFG dataflow); succ:
    the control flow when already built (control_flow(arch, insns, read))."""
    n = len(insns)
    if succ is None:
        succ = control_flow(arch, insns, read)
    cs = set(arch.isa.callee_saved)
    use, defs = [], []
    for x in insns:
        r, w = _regs(arch, x)
        use.append(r & cs)
        defs.append(w & cs)
    live_in: list[set[str]] = [set() for _ in range(n)]
    changed = True
    while changed:
        changed = False
        for i in range(n - 1, -1, -1):
            out: set[str] = set()
            for s in succ[i]:
                out |= live_in[s]
            new = (out - defs[i]) | use[i]
            if new != live_in[i]:
                live_in[i] = new
                changed = True
    return live_in


def live_callee_saved(arch: Arch, insns: list, start: int,
                      live_in: list[set[str]] | None = None) -> list[str]:
    """Callee-saved registers holding a live value at insns[start] (e.g. a return address)."""
    if live_in is None:
        live_in = liveness(arch, insns)
    if start >= len(insns):
        return []
    return [r for r in arch.isa.callee_saved if r in live_in[start]]


@dataclass
class PrologueState:
    sp: int  # SP relative to CFA
    fp: int | None  # frame pointer relative to CFA, once set
    stores: list[tuple[int, int]]  # (cfa offset, size) of stack stores seen
    dynamic: bool = False  # SP moved by a non-constant amount


def _step(arch: Arch, st: PrologueState, consts: dict[str, int], insn) -> None:
    arch.mc.step(st, consts, insn)


def simulate(arch: Arch, insns: list, until: int) -> PrologueState:
    """Track SP/FP and stack stores from function entry up to instruction index `until`."""
    st = PrologueState(sp=arch.mc.ENTRY_SP, fp=None, stores=[])
    consts: dict[str, int] = {}  # aarch64 large frames: mov x12, #5200; sub sp, sp, x12
    for insn in insns[:until]:
        _step(arch, st, consts, insn)
    return st


def _covered(stores: list[tuple[int, int]], off: int, size: int) -> bool:
    need = set(range(off, off + max(size, 1)))
    for o, s in stores:
        need -= set(range(o, o + s))
    return not need


def analyse_function(b: Binary, name: str) -> dict:
    addr, size = b.funcs[name]
    arch = b.arch
    insns = b.disasm(addr, size)
    df = b.dfuncs.get(name)
    calls = []
    counts: dict[tuple, int] = {}
    body_state = None
    succ = control_flow(arch, insns, b.code)
    live_in = liveness(arch, insns, succ=succ)
    # One pass of the SP/FP tracker, snapshotted at each call (not one pass per call).
    run = PrologueState(sp=arch.mc.ENTRY_SP, fp=None, stores=[])
    consts: dict[str, int] = {}
    done = 0
    dynamic_calls = 0
    for i, insn in enumerate(insns):
        if not _is_call(arch, insn):
            continue
        tgt = _call_target(arch, insn)
        tname = b.by_addr.get(tgt) if tgt is not None else None
        kind = ("indirect" if tgt is None else "enter_hook" if tname == ENTER_HOOK else
                "exit_hook" if tname == EXIT_HOOK else "call")
        line = b.line_at(insn.address)
        key = (line, tname)
        occ = counts.get(key, 0)
        counts[key] = occ + 1
        for x in insns[done:i]:
            _step(arch, run, consts, x)
        done = i
        st = PrologueState(run.sp, run.fp, run.stores, run.dynamic)
        if body_state is None:
            body_state = st
        dynamic_calls += st.dynamic
        ra = insn.address + insn.size
        row = b.cfi_row(insn.address)
        cs = {"index": len(calls), "call_pc": insn.address, "return_address": ra,
              "target": tname, "kind": kind, "line": line[0] if line else None,
              "column": line[1] if line else None, "occurrence": occ,
              "file": line[2] if line else None,
              "sp_cfa_offset": st.sp,
              "live_callee_saved": live_callee_saved(arch, insns, i + 1, live_in)}
        if row is not None:
            cs["cfa"] = _cfa_rule(arch, row)
        calls.append(cs)
    out: dict = {"addr": addr, "size": size, "call_sites": calls}
    row = b.cfi_row(calls[0]["call_pc"]) if calls else None
    if body_state is not None:
        # alloca/VLAs move SP after the entry hook: any call made with a moved SP
        # makes the frame variable-size (its callees' CFAs are not at fixed offsets)
        frame = {"frame_size": -body_state.sp, "fp_cfa_offset": body_state.fp,
                 "dynamic_sp": body_state.dynamic or dynamic_calls > 0}
        if row is not None:
            frame["cfa"] = _cfa_rule(arch, row)
            frame["saved_regs"] = {arch.reg(r): rule.arg for r, rule in row.items()
                                   if isinstance(r, int) and getattr(rule, "type", "") == "OFFSET"}
        # Where this ISA keeps the return address and the caller's frame pointer.
        frame["return_address_cfa_offset"], frame["saved_fp_cfa_offset"] = \
            arch.mc.frame_record(frame)
        out["frame"] = frame
    if df is not None:
        out["vars"] = df.vars
        out["file"] = df.file
        out["variadic"] = df.variadic
        if df.described:
            _describe_sites(b, insns, succ, out)
    return out


def _describe_sites(b: Binary, insns: list, succ: list[list[int]], fn: dict) -> None:
    """An optimized (-Og) function: per call site, where each variable in scope is
    (`locations`, locations.py) and what live state no variable names (`unnamed`: the
    frame cannot be rebuilt on another ISA if stopped there)."""
    arch = b.arch
    states = locations.frame_states(arch, insns, succ)
    index = {x.address: i for i, x in enumerate(insns)}
    frame = fn.get("frame", {})
    fp_cfa = frame.get("fp_cfa_offset")
    saved = frame.get("saved_regs", {})
    problems = []
    odd = sorted(r for r in saved if r not in arch.isa.callee_saved
                 and r not in (arch.isa.fp, arch.isa.lr, "rip"))  # rip: x86's RA column
    if odd:  # aarch64's d8-d15: the recode carries general registers only
        problems.append(f"keeps values in callee-saved registers {odd} across calls")
    slots = locations.live_slots(arch, insns, succ, states)
    if slots.unknown:
        problems.append(f"its use of the stack is not followed ({slots.unknown})")
    kept = 0  # the frame record and saved registers: the recode writes them itself
    for off in saved.values():
        kept |= locations.slot_bits(off, 8)
    if arch.isa.lr is None:
        kept |= locations.slot_bits(-8, 8)  # the return address the call pushed
    lr_copy = arch.mc.lr_copy_reg(insns)
    self_reg = locations.self_address_reg(arch, insns, fn["addr"])
    if self_reg is not None:  # aarch64 -Og: the function's own address, for the hooks
        frame["self_address_reg"] = self_reg
    lr_slot = locations.lr_copy_slot(arch, insns, states)
    if lr_slot is not None:  # aarch64 -Og: the own return address, for the exit hook
        frame["lr_copy_cfa_offset"] = lr_slot
        kept |= locations.slot_bits(lr_slot, 8)
    # at the entry hook, a callee-saved register this function has not set yet holds
    # its caller's value: whatever it reads from it before setting it is undefined, so
    # the target's may hold anything (0); the caller's own value is in its save slot
    hook = next((c for c in fn["call_sites"] if c["kind"] == "enter_hook"), None)
    unset = set(arch.isa.callee_saved) - (
        set_before(arch, insns, index[hook["call_pc"]]) if hook else set())
    variables = fn.get("vars", [])
    homes = 0  # the fixed slots of variables in memory (address taken), in scope or not
    for v in variables:
        if v.get("described") and "_ranges" not in v:
            v["_ranges"] = b.locations.ranges(v["_loc_die"])
        elif "cfa_offset" in v and v["kind"] != "static":
            homes |= locations.slot_bits(v["cfa_offset"],
                                         8 if v.get("indirect") else v["type"]["size"])
    copies = None  # places holding the same value (locations.copies_after), when asked
    forms = None  # the places' values as formulas (values.forms_at), when asked
    keys: dict[int, list] = {}  # a call instruction's index -> its call site's key
    # a frame address in a register (a struct returned through a pointer, a temporary
    # passed by address) lets a callee read and write bytes the slot liveness does not
    # see: only variables' homes may be addressed
    loose = sorted({a for a in locations.frame_addresses(arch, insns, states)
                    if not homes & locations.slot_bits(a, 1)})
    if loose:
        problems.append(f"takes the address of stack bytes no variable owns "
                        f"(CFA{loose[0]:+d})")
    for cs in fn["call_sites"]:
        i = index[cs["call_pc"]]
        st = states[i]
        if st is None:
            cs["locations"], cs["unnamed"] = [], ["not reached from the function's entry"]
            continue
        cs["sp_cfa_offset"] = st.sp  # along the control flow: early returns pop
        pc = cs["return_address"] - 1  # the call instruction: what holds during the call
        row = b.cfi_row(cs["call_pc"])
        here = {arch.reg(r): rule.arg for r, rule in (row or {}).items()
                if isinstance(r, int) and getattr(rule, "type", "") == "OFFSET"}
        if row is not None and here != saved:  # shrink-wrapped: the unwind reads `saved`
            cs["locations"] = []
            cs["unnamed"] = [f"saves other registers here than at its first call "
                             f"({sorted(set(here) ^ set(saved))})"]
            continue
        locs, regs_named, bytes_named = [], set(), 0
        for vi, v in enumerate(variables):
            if v["kind"] == "static" or not _in_scope(v, pc):
                continue
            if v.get("described"):
                loc = locations.at_site(v["_ranges"].at(pc), arch, fp_cfa, st.sp)
                locs.append([vi, *loc])
                if loc[0] in ("reg", "value"):
                    regs_named.add(loc[1])
                elif loc[0] == "slot":
                    bytes_named |= locations.slot_bits(loc[1], v["type"]["size"])
            elif "cfa_offset" in v:
                size = 8 if v.get("indirect") else v["type"]["size"]
                bytes_named |= locations.slot_bits(v["cfa_offset"], size)
        cs["locations"] = locs
        # variables whose place here is not read again before being written (lua's `i`,
        # fetched anew after the hook call): nothing to store there on a target
        after = slots.live_in[i + 1] if not slots.unknown and i + 1 < len(insns) else -1
        live_regs = set(cs["live_callee_saved"])
        cs["dead_vars"] = [loc[0] for loc in locs
                           if (loc[1] in ("reg", "value") and loc[2] not in live_regs)
                           or (loc[1] == "slot" and not after & locations.slot_bits(
                               loc[2], variables[loc[0]]["type"]["size"]))]
        why = list(problems)
        if cs["kind"] == "enter_hook":
            cs["unset_regs"] = [r for r in cs["live_callee_saved"]
                                if r in unset and r not in regs_named]
        if cs["kind"] != "exit_hook":
            live = [r for r in cs["live_callee_saved"]
                    if r not in (lr_copy, self_reg) and r not in regs_named
                    and r not in cs.get("unset_regs", ())]
            left = 0
            if not slots.unknown and i + 1 < len(insns):
                # a variable's home out of its scope holds nothing C can read (its
                # block is left or not yet entered); what looks live there is a struct's
                # padding copied whole (lua's TValue key), its later block initializes it
                left = slots.live_in[i + 1] & slots.written[i] & ~bytes_named & ~kept & ~homes
            if live or left:  # copies of named variables GCC's DWARF places elsewhere
                if copies is None:
                    copies = locations.copies_after(arch, insns, succ, states, homes,
                                                    lambda x: _written(arch, x))
                live, left = _copies_of_variables(cs, locs, variables, copies[i], live, left)
            if live or left:  # values GCC derived from named variables (Lua's `ra - base`)
                if forms is None:
                    forms = values.forms_at(arch, insns, succ, states, homes,
                                            lambda x: _written(arch, x))
                    keys = {index[c["call_pc"]]: call_key(c) for c in fn["call_sites"]}
                if forms[i] is not None:
                    live, left = _derived_values(cs, locs, variables, forms[i], live,
                                                 left if not slots.unknown else 0, keys)
            if live:
                why.append(f"callee-saved {live} hold values no variable names")
            if not slots.unknown and i + 1 < len(insns):
                if left:
                    spans = ", ".join(f"CFA{lo:+d}..{hi:+d}"
                                      for lo, hi in locations.ranges_of(left))
                    why.append(f"stack bytes {spans} hold values no variable names")
        cs["unnamed"] = why


def _written(arch: Arch, insn) -> set[str]:
    try:
        return {locations.full_reg(arch, r) for r in arch.mc.regs_access(insn)[1]}
    except capstone.CsError:
        return {"?"}


def _copies_of_variables(cs: dict, locs: list, variables: list[dict], pairs,
                         live: list[str], left: int) -> tuple[list[str], int]:
    """The live registers and stack bytes (8 at a time) no variable's location names
    that hold an 8-byte variable's value, or it plus a constant, on every path: recorded
    in cs["copies"] ([place, variable index, k]: the recode writes the variable's value
    plus k there too; a 32-bit variable's [place, index, "z32"|"w32"(, k)]: its value
    plus k, 32 bits, zero-extended in a register or 4 bytes of a slot; [register, index,
    "ne"]: 1 if the variable is not 0, else 0); returns what is left unnamed."""
    if not pairs:
        return live, left
    # (variable, its place, k): val(place) = variable + k
    places = []
    for loc in locs:
        vi, kind = loc[0], loc[1]
        if variables[vi]["type"]["size"] == 8 and kind in ("reg", "slot", "value"):
            places.append((vi, f"s{loc[2]}" if kind == "slot" else loc[2],
                           -loc[3] if kind == "value" else 0))

    # 32-bit variables: (variable, its place, k): low32(place) = low32(variable + k)
    narrow = [(loc[0], f"s{loc[2]}" if loc[1] == "slot" else loc[2],
               -loc[3] if loc[1] == "value" else 0) for loc in locs
              if variables[loc[0]]["type"]["size"] == 4 and loc[1] in ("reg", "slot", "value")]

    def copy_of(place: str) -> list | None:
        for vi, p, k in places:
            off = locations.offset_between(pairs, place, p)
            if off is not None:
                return [place, vi, off + k]  # val(place) = variable + off + k
        for vi, p, k in narrow:  # zero-extended in a register, or 4 bytes of a slot
            if locations.zero_extended_copy(pairs, place, p):
                # lua's OP_SHRI spills `ic + 127` (DWARF: ic = rbx - 127) across a call
                form = "w32" if place.startswith("s") else "z32"
                return [place, vi, form, k] if k else [place, vi, form]
        nz = locations.not_zero_of(pairs, place) if not place.startswith("s") else None
        if nz is not None:  # 1 if a variable is not 0, else 0: [place, index, "ne"]
            src, bits = nz
            for vi, p, k in narrow:
                if k == 0 and (locations.low32_equal(pairs, src, p) if bits == 32 else
                               locations.zero_extended_copy(pairs, src, p)):
                    return [place, vi, "ne"]
            for vi, p, k in places:
                if k == 0 and bits == 64 and locations.offset_between(pairs, src, p) == 0:
                    return [place, vi, "ne"]
        return None

    found = []
    still = []
    for r in live:
        c = copy_of(r)
        if c is None:
            still.append(r)
        else:
            found.append(c)
    for lo, hi in locations.ranges_of(left):
        for off in range(lo - (lo % 4), hi, 4):
            chunk = locations.slot_bits(off, 4)
            if not left & chunk:
                continue
            c = copy_of(f"s{off}")
            if c is not None and c[2] not in ("w32", "z32"):
                chunk = locations.slot_bits(off, 8)  # an 8-byte copy
            if c is not None and c[2] == "z32":
                c = None  # a slot holds 4 bytes: only "w32" fits
            if c is not None:
                found.append(c)
                left &= ~chunk
    if found:
        cs["copies"] = found
    return still, left


def _integer(var: dict) -> bool:
    t = var["type"]
    return t["size"] in (1, 2, 4, 8) and (t["kind"] in ("pointer", "enum") or (
        t["kind"] == "base" and not any(w in (t["name"] or "") for w in
                                        ("float", "double", "complex", "_Float"))))


def _derived_values(cs: dict, locs: list, variables: list[dict], forms: dict,
                    live: list[str], left: int, keys: dict[int, list]) -> tuple[list[str], int]:
    """The live registers and stack bytes whose value the code computed from variables
    named here (values.solve): recorded in cs["derived"] ([place, bytes, [[variable
    index, coefficient], ...], constant, shift]: the recode writes (sum of coefficient
    * variable + constant, modulo 2**64) >> shift there); and those holding an earlier
    call's result (`f(g(x), h(y))`: g's result kept across the call of h), in
    cs["results"] ([place, bytes, the call's key (call_key), bits]: the low bits of
    what that call returned, which the twin call's frame keeps too). Returns what is
    left unnamed."""
    named: dict[int | str, values.Form] = {}
    for loc in locs:
        v = variables[loc[0]]
        if not _integer(v):
            continue
        bits = 8 * v["type"]["size"]
        kind = loc[1]
        if kind == "reg":
            f = values.place_form(forms, loc[2])
        elif kind == "value":
            f = values.place_form(forms, loc[2]) + values.Form.k(loc[3])
        elif kind == "slot":
            f = values.place_form(forms, f"s{loc[2]}", v["type"]["size"])
        elif kind == "const":
            f = values.Form.k(loc[2])
        elif kind == "expr":
            f = values.expr_form(loc[3], forms, bits)  # type: ignore[assignment]
        else:
            continue
        if f is not None:
            named[loc[0]] = values.op_low(f, bits)  # type: ignore[index]
            if v["type"].get("signed") and bits < 64:  # its value sign-extended
                named[f"{loc[0]}:sx"] = values.op_sext(named[loc[0]], bits)  # type: ignore[index]
    found, results, still = [], [], []

    def named_by(place: str, size: int, f: values.Form | None) -> bool:
        got = values.solve(f, named) if f is not None and named else None
        if got is not None:
            found.append([place, size, *got])
            return True
        res = values.call_result(f) if f is not None else None
        if res is not None and res[0] in keys:
            results.append([place, size, keys[res[0]], min(res[1], 8 * size)])
            return True
        return False

    for r in live:
        if not named_by(r, 8, values.place_form(forms, r)):
            still.append(r)
    for lo, hi in locations.ranges_of(left):
        off = lo
        while off < hi:
            for size in (8, 4):
                if off + size > hi and size == 8:
                    continue
                if named_by(f"s{off}", size, values.place_form(forms, f"s{off}", size)):
                    left &= ~locations.slot_bits(off, size)
                    off += size
                    break
            else:
                off += 4 - (off % 4) if off % 4 else 4
    if found:
        cs["derived"] = found
    if results:
        cs["results"] = results
    return still, left


def call_key(c: dict) -> list:
    """What pairs a call site with its twin on the other ISA (match_call_sites)."""
    return [c["line"], c["column"], c["target"] if c["kind"] != "indirect" else "*",
            c["occurrence"]]


def described_reasons(src: str, fs: dict, cs: dict, dst: str, fd: dict, cd: dict) -> list[str]:
    """Why a frame stopped at call site cs on src cannot be rebuilt at its twin cd on dst,
    for optimized functions: every variable the target keeps somewhere there must have a
    value the source can read, and the target's live state must all be named."""
    why = [f"{dst}: {u}" for u in cd.get("unnamed", [])]
    for _, _, key, bits in cd.get("results", []):  # the twin frame keeps the same result
        if not any(k == key and b >= bits for _, _, k, b in cs.get("results", [])):
            why.append(f"{src}: the result of the call to {key[2]} at line {key[0]} is "
                       f"not kept at this call")
    sloc = {loc[0]: loc[1:] for loc in cs.get("locations", [])}
    dloc = {loc[0]: loc[1:] for loc in cd.get("locations", [])}
    twins = contract.var_twins(fd.get("vars", []), fs.get("vars", []))
    dead = set(cd.get("dead_vars", []))
    copied = {c[1] for c in cd.get("copies", [])} | \
        {contract.derived_var(t[0]) for d in cd.get("derived", []) for t in d[2]}
    for dj, dv in enumerate(fd.get("vars", [])):
        if dj in dead and dj not in copied:
            continue
        dl = contract.site_location(dv, dj, dloc)
        if dj in copied and (dl is None or dl[0] not in contract.STORED):
            dl = ["copy"]  # kept only in a copy: a value is needed all the same
        if dl is None or dl[0] not in contract.STORED + ("unknown", "copy"):
            continue
        si = twins.get(dj)
        sv = fs["vars"][si] if si is not None else None
        if sv is not None and not sv.get("described") and not dv.get("described"):
            continue  # slot to slot, as at -O0 (recode's matched_vars)
        name = f"variable {dv['name']} ({_where(fd, dv)})"
        if dl[0] == "unknown":
            why.append(f"{dst}: {name} is at {dl[1]}")
            continue
        sl = contract.site_location(sv, si, sloc) if sv is not None else None
        if sl is None or sl[0] not in contract.READABLE:
            why.append(f"{src}: {name} has no value at this call"
                       + (f" ({sl[1]})" if sl and sl[0] == "unknown" else ""))
        elif sv["type"]["size"] != dv["type"]["size"] or sv["type"].get("by_member") or \
                sv["type"].get("holds"):
            why.append(f"{name}: another layout on {dst}")
        elif (sl[0] in ("reg", "value") or dl[0] in ("reg", "value")) and \
                dv["type"]["size"] > 8:
            why.append(f"{name}: {dv['type']['size']} bytes in a register")
    return why


def _cfa_rule(arch: Arch, row: dict) -> str:
    rule = row["cfa"]
    if rule.expr is not None:
        return "expr"
    return f"{arch.reg(rule.reg)}+{rule.offset}"


def check_park_point(b: Binary, fn: dict) -> list[str]:
    """Problems that make the entry hook call of this function an unclean point.

    Callee-saved registers that still hold the caller's values are fine (they are
    saved in this frame or preserved for the caller, found by unwinding). What
    must not happen is this function putting a value of its own in one before the
    hook, except aarch64's copy of its return address (a known value).
    """
    arch = b.arch
    hooks = [c for c in fn["call_sites"] if c["kind"] == "enter_hook"]
    if not hooks:
        return ["no call to " + ENTER_HOOK]
    probs = []
    if fn.get("frame", {}).get("dynamic_sp"):
        probs.append("stack pointer moves by a variable amount (alloca/VLA)")
    insns = b.disasm(fn["addr"], fn["size"])
    hook_i = next(i for i, x in enumerate(insns) if x.address == hooks[0]["call_pc"])
    defined = set_before(arch, insns, hook_i)
    lr_copy = _lr_copy_reg(b, fn)
    live = set(hooks[0]["live_callee_saved"])
    # an optimized function's parameters moved to callee-saved registers: named there
    named = {loc[2] for loc in hooks[0].get("locations", []) if loc[1] in ("reg", "value")}
    named.add(fn.get("frame", {}).get("self_address_reg"))
    bad = sorted((defined & live) - {lr_copy} - named)
    if bad:
        probs.append(f"callee-saved registers set before the entry hook: {bad}")
    return probs


def set_before(arch: Arch, insns: list, hook_i: int) -> set[str]:
    """The callee-saved registers a function writes before its entry hook (insns[hook_i])."""
    out: set[str] = set()
    for x in insns[:hook_i]:
        out |= _regs(arch, x)[1] & set(arch.isa.callee_saved)
    return out


def _lr_copy_reg(b: Binary, fn: dict) -> str | None:
    """The callee-saved register holding the function's own return address for the exit
    hook, if its ISA's GCC keeps one (aarch64)."""
    return b.arch.mc.lr_copy_reg(b.disasm(fn["addr"], fn["size"]))


def _params_stored(b: Binary, name: str, fn: dict) -> list[str]:
    insns = b.disasm(fn["addr"], fn["size"])
    idx = next((i for i, x in enumerate(insns) if _is_call(b.arch, x) and
                _call_target(b.arch, x) == b.funcs.get(ENTER_HOOK, (None,))[0]), None)
    if idx is None:
        return []
    st = simulate(b.arch, insns, idx)
    missing = []
    for v in fn.get("vars", []):
        if v["kind"] == "param" and "cfa_offset" in v and v["cfa_offset"] < 0:
            size = 8 if v.get("indirect") else v["type"]["size"]
            if not _covered(st.stores, v["cfa_offset"], size):
                missing.append(v["name"])
    return [f"parameters not yet in their stack slots at the entry hook: {missing}"] if \
        missing else []


def _in_scope(v: dict, pc: int) -> bool:
    if v["scope"] is None:
        return True
    return any(lo <= pc < hi for lo, hi in v.get("scope_ranges") or [v["scope"]])


def _bad_var(v: dict) -> str | None:
    if "va_list" in v["type"]["name"]:
        return f"va_list variable {v['name']} (its state differs per ISA)"
    if "long double" in v["type"]["name"]:  # 80-bit x87 vs IEEE binary128: no conversion
        return f"long double variable {v['name']} (another format per ISA)"
    if v.get("location") == "unsupported":
        return f"variable {v['name']} not in a stack slot"
    return None


def _where(f: dict, v: dict) -> str:
    file = os.path.basename(v.get("file") or f.get("file") or "?")
    return f"{file}:{v['line']}" if v.get("line") else file


def cross_isa_var_reasons(fx: dict, fa: dict) -> list[str]:
    """Stack variables whose contents have another layout on the other ISA: a jmp_buf
    (setjmp/longjmp state: registers of one ISA), or any type whose size differs."""
    reasons = []
    seen: dict[tuple, int] = {}
    twins: dict[tuple, dict] = {}
    for v in fa.get("vars", []):
        k = (v["name"], v["kind"])
        twins[(*k, seen.get(k, 0))] = v
        seen[k] = seen.get(k, 0) + 1
    seen.clear()
    for v in fx.get("vars", []):
        if v.get("kind") == "static":
            continue
        k = (v["name"], v["kind"])
        n = seen.get(k, 0)
        seen[k] = n + 1
        a = twins.get((*k, n))
        tname = v["type"]["name"]
        if "jmp_buf" in v["type"].get("holds", ()) and a and \
                jmpbuf.fields_match(TypeInfo(v["type"]), TypeInfo(a["type"]), X86_64, AARCH64):
            continue  # translated member by member (recode/jmpbuf.py)
        why = None
        if a and a["type"]["size"] != v["type"]["size"] and "jmp_buf" not in \
                v["type"].get("holds", ()) + a["type"].get("holds", ()):
            # another layout per ISA (a libc struct inside, zstd's cRess_t holding a
            # struct stat): copied member by member when the members pair up
            tx, ta = _with_fields(v), _with_fields(a)
            why = jmpbuf.layout_problem(TypeInfo(tx), TypeInfo(ta), X86_64, AARCH64)
            if why is None:
                v["type"], a["type"] = tx, ta
                continue
        if "jmp_buf" in v["type"].get("holds", ()) or (a and "jmp_buf" in
                                                      a["type"].get("holds", ())):
            sizes = f"{v['type']['size']} bytes on {X}, " \
                    f"{a['type']['size'] if a else '?'} on {A}"
            reasons.append(f"setjmp/longjmp: variable {v['name']} ({tname}) holds a jmp_buf "
                           f"(registers in one ISA's layout; {sizes}) at {_where(fx, v)}")
        elif a and a["type"]["size"] != v["type"]["size"]:
            reasons.append(f"variable {v['name']} ({tname}) has size {v['type']['size']} on "
                           f"{X}, {a['type']['size']} on {A} at {_where(fx, v)}"
                           + (f" ({why})" if why else ""))
    return reasons


def _with_fields(v: dict) -> dict:
    """A variable's type with its leaves (from its DIE) and marked for a copy member by
    member."""
    die = v.get("_type_die")
    fields = type_fields(die) if die is not None else []
    return {**v["type"], "fields": fields,
            "holds": sorted({*v["type"].get("holds", ()), "layout"})}


def function_reasons(fx: dict, fa: dict) -> list[str]:
    """Why no frame of this function can be rebuilt on the other ISA (whole-function)."""
    reasons = cross_isa_var_reasons(fx, fa)
    for c in fx.get("call_sites", []):
        if c.get("target") in jmpbuf.SIGSETJMP_NAMES:
            # musl's sigsetjmp keeps its own return address and a register in the
            # buffer's signal-mask part: a layout this recode does not translate
            reasons.append(f"sigsetjmp/siglongjmp: sigsetjmp called at "
                           f"{fx.get('file') or '?'}:{c.get('line')}")
    for isa, f in ((X, fx), (A, fa)):
        if f.get("variadic"):
            reasons.append(f"{isa}: variadic (va_list state differs per ISA)")
        if f.get("frame", {}).get("dynamic_sp"):
            reasons.append(f"{isa}: variable-size frame (alloca/VLA)")
        for v in f.get("vars", []):
            why = _bad_var(v)
            if why and v["scope"] is None:
                reasons.append(f"{isa}: {why}")
    return sorted(set(reasons))


def call_site_reasons(isa: str, f: dict, other: dict, cs: dict, lr_copy: str | None,
                      paired: bool, instrumented: set[str]) -> list[str]:
    """Why a frame stopped at this call site cannot be rebuilt (empty: it can)."""
    reasons = []
    ra = cs["return_address"]
    if not paired and _may_reach_park(cs, instrumented):
        reasons.append(f"{isa}: call site {cs['index']} has no twin on the other ISA")
    live = [r for r in cs["live_callee_saved"] if r != lr_copy]
    if live and cs["kind"] != "exit_hook" and not paired:
        reasons.append(f"{isa}: call site {cs['index']}: callee-saved {live} hold values")
    names_other = {(v["name"], v["kind"]) for v in other.get("vars", [])}
    for v in f.get("vars", []):
        if not _in_scope(v, ra):
            continue
        why = _bad_var(v)
        if why and v["scope"] is not None:
            reasons.append(f"{isa}: {why}")
        if "locations" in cs:
            continue  # optimized: described_reasons says which variables must pair up
        if (v["name"], v["kind"]) not in names_other:
            reasons.append(f"{isa}: variable {v['name']} exists on this ISA only")
    return reasons


CALLBACK_LIBC = ("qsort", "qsort_r", "bsearch", "tsearch", "tfind", "tdelete", "twalk",
                 "nftw", "ftw", "scandir", "pthread_once", "call_once", "dl_iterate_phdr",
                 "exit", "glob", "lfind", "lsearch")


def inlined_reasons(isa: str, df: DwarfFunc, cs: dict) -> list[str]:
    """A call inside code inlined into the function (its entry hook included): the
    inlined function's variables live in this frame's slots but are not described."""
    pc = cs["call_pc"]
    return [f"{isa}: call inside {name} inlined at line {line or '?'} (always_inline: "
            f"its variables are not described)"
            for lo, hi, name, line in df.inlined if lo <= pc < hi][:1]


def _may_reach_park(cs: dict, instrumented: set[str]) -> bool:
    t = cs["target"]
    return t is None or t in instrumented or t in CALLBACK_LIBC


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def match_call_sites(xs: list[dict], ys: list[dict]) -> tuple[list[list[int]], list[int],
                                                                list[int]]:
    """Pair call sites by (source line, column, target, occurrence); then indirect by order."""

    def key(c: dict) -> tuple:
        return tuple(call_key(c))

    ymap = {key(c): c["index"] for c in ys}
    pairs, used = [], set()
    for c in xs:
        j = ymap.get(key(c))
        if j is not None and j not in used:
            pairs.append([c["index"], j])
            used.add(j)
    px = {p[0] for p in pairs}
    return (pairs, [c["index"] for c in xs if c["index"] not in px],
            [c["index"] for c in ys if c["index"] not in used])


def _bottom_frames(b: Binary) -> list[dict]:
    out = []
    for name in BOTTOM_FUNCTIONS:
        if name not in b.funcs:
            continue
        addr, size = b.funcs[name]
        for insn in b.disasm(addr, size):
            if _is_call(b.arch, insn):
                tgt = _call_target(b.arch, insn)
                out.append({"function": name, "return_address": insn.address + insn.size,
                            "target": b.by_addr.get(tgt) if tgt is not None else None})
    return out


def _park_points(b: Binary) -> dict:
    info: dict = {}
    if "hm_futex_wait" in b.funcs:
        addr, size = b.funcs["hm_futex_wait"]
        insns = b.disasm(addr, size)
        for i, insn in enumerate(insns):
            if insn.mnemonic == b.arch.mc.SYSCALL:
                info["blocked_pc"] = insn.address + insn.size
                info["syscall_pc"] = insn.address
                # CFA - SP while blocked: with SP from /proc/PID/task/TID/syscall this
                # locates the frame chain of a parked thread without any register dump.
                info["frame_size"] = -simulate(b.arch, insns, i).sp
    return info


def build_metadata(bin_x86: str, bin_a64: str, plan=None,
                   o0_fallback: set[tuple[str, str]] | None = None) -> dict:
    """o0_fallback: (file, function) pairs --optimize-frames compiled -O0 in -Og files."""
    bx, ba = Binary(bin_x86, o0_fallback), Binary(bin_a64, o0_fallback)
    try:
        return _build(bx, ba, plan)
    finally:
        bx.close()
        ba.close()


def _build(bx: Binary, ba: Binary, plan) -> dict:
    names = sorted(set(bx.dfuncs) & set(ba.dfuncs))
    analysed = {n: (analyse_function(bx, n), analyse_function(ba, n)) for n in names}
    instrumented = {n for n, (fx, _) in analysed.items()
                    if any(c["kind"] == "enter_hook" for c in fx["call_sites"])}
    functions = []
    problems: list[str] = []
    for name in names:
        fx, fa = analysed[name]
        pairs, ux, ua = match_call_sites(fx["call_sites"], fa["call_sites"])
        entry = {"name": name, "addr": fx["addr"], "file": fx.get("file"),
                 "instrumented": name in instrumented,
                 "isa": {X: fx, A: fa},
                 "call_site_pairs": pairs, "unmatched_call_sites": {X: ux, A: ua}}
        if fx["addr"] != fa["addr"]:
            problems.append(f"{name}: not aligned (0x{fx['addr']:x} vs 0x{fa['addr']:x})")
        reasons = function_reasons(fx, fa)
        # Code without hooks in a file built with them (hmigrate-cc --optimize-leaves, or
        # no_instrument_function) cannot be under a park point: its frames and call sites
        # are never rebuilt. (The runtime's and musl's files are built without hooks.)
        if not entry["instrumented"] and bx.dfuncs[name].hooked_cu:
            entry["optimized"] = True
            reasons = [OPTIMIZED]
        lr = {X: None, A: _lr_copy_reg(ba, fa)}
        # Per call site: both members of a pair share their verdict.
        per: dict[str, dict[int, list[str]]] = {X: {}, A: {}}
        for isa, f, other, unm, b in ((X, fx, fa, ux, bx), (A, fa, fx, ua, ba)):
            for c in f["call_sites"]:
                per[isa][c["index"]] = call_site_reasons(isa, f, other, c, lr[isa],
                                                         c["index"] not in unm, instrumented)
                per[isa][c["index"]] += inlined_reasons(isa, b.dfuncs[name], c)
        hook_probs: dict[str, list[str]] = {X: [], A: []}
        if entry["instrumented"]:
            for b, f, arch in ((bx, fx, X86), (ba, fa, A64)):
                hook_probs[arch.isa.name] = [f"{arch.isa.name}: {p}" for p in
                                         check_park_point(b, f) + _params_stored(b, name, f)]
        for ix, ia in pairs:
            cx, ca = fx["call_sites"][ix], fa["call_sites"][ia]
            both = per[X][ix] + per[A][ia]
            from_x, from_a = list(both), list(both)
            # -O0 GCC keeps some expression temporaries in callee-saved registers
            # across calls (a->end < ustime(): a->end in rbx / x20). Equal counts pair up
            # in allocation order. A temporary only the source has can be dropped (the
            # target evaluates that operand after the call: another valid C order); one
            # only the target needs cannot be made up.
            lx = list(cx["live_callee_saved"])
            la = [r for r in ca["live_callee_saved"] if r != lr[A]]
            if "locations" in cx or "locations" in ca:  # optimized (-Og): described
                if "locations" in cx and "locations" in ca:
                    from_x += described_reasons(X, fx, cx, A, fa, ca)
                    from_a += described_reasons(A, fa, ca, X, fx, cx)
                else:
                    from_x.append("optimized on one ISA only")
                    from_a.append("optimized on one ISA only")
            elif cx["kind"] != "exit_hook" and (lx or la):
                cx["callee_saved_temps"], ca["callee_saved_temps"] = lx, la
                if lx and la and len(lx) != len(la):
                    from_x.append(f"callee-saved temporaries differ: {lx} vs {la}")
                    from_a.append(f"callee-saved temporaries differ: {lx} vs {la}")
                elif la and not lx:
                    from_x.append(f"{A} needs temporaries {la} {X} does not keep")
                elif lx and not la:
                    from_a.append(f"{X} needs temporaries {lx} {A} does not keep")
            per[X][ix], per[A][ia] = from_x, from_a
        for isa, f in ((X, fx), (A, fa)):
            for c in f["call_sites"]:
                why = per[isa][c["index"]]
                if c["kind"] == "enter_hook":
                    why = why + hook_probs[X] + hook_probs[A]
                # translatable: a parked frame stopped here on THIS ISA can be rebuilt
                # on the other one (the runtime table of this ISA's binary).
                c["translatable"] = not why and not reasons
                if why:
                    c["untranslatable_reasons"] = sorted(set(why))
        if entry["instrumented"]:
            fprobs = hook_probs[X] + hook_probs[A]
            entry["park_point"] = {
                "clean": not fprobs, "problems": fprobs,
                X: next(c["return_address"] for c in fx["call_sites"]
                               if c["kind"] == "enter_hook"),
                A: next(c["return_address"] for c in fa["call_sites"]
                                if c["kind"] == "enter_hook"),
                # aarch64 GCC keeps the function's own return address in a callee-saved
                # register (x19 or x20) for the exit hook: recode must restore it.
                A + contract.LR_COPY_SUFFIX: lr[A],
            }
        entry["translatable"] = not reasons
        entry["untranslatable_reasons"] = reasons
        for f in (fx, fa):  # the type DIEs served the member lists: not JSON
            for v in f.get("vars", []):
                v.pop("_type_die", None)
                v.pop("_loc_die", None)
                v.pop("_ranges", None)
        functions.append(entry)
    tls_x, tls_a = bx.tls(), ba.tls()
    tls: dict = {X: tls_x, A: tls_a, "symbols": []}
    for t, arch in ((tls_x, X86), (tls_a, A64)):
        if t:
            t["variant"] = arch.isa.tls_variant
            t["block_tp_offset"] = _block_tp_offset(arch.isa, t)
    for n in sorted(set(bx.tls_syms) | set(ba.tls_syms)):
        tls["symbols"].append({"name": n, "offset": {X: bx.tls_syms.get(n, (None,))[0],
                                                     A: ba.tls_syms.get(n, (None,))[0]},
                               "size": (bx.tls_syms.get(n) or ba.tls_syms[n])[1]})
    symbols = []
    for n in sorted(set(bx.funcs) | set(ba.funcs) | set(bx.objects) | set(ba.objects)):
        x = bx.funcs.get(n) or bx.objects.get(n)
        a = ba.funcs.get(n) or ba.objects.get(n)
        symbols.append({"name": n, "kind": "func" if n in bx.funcs or n in ba.funcs else "object",
                        X: list(x) if x else None, A: list(a) if a else None,
                        "aligned": bool(x and a and x[0] == a[0])})
    state = bx.objects.get("hmigrate_state")
    md = {
        "schema": SCHEMA,
        "binaries": {
            X: {"file": os.path.basename(bx.path), "sha256": _sha256(bx.path),
                       "entry": bx.elf["e_entry"]},
            A: {"file": os.path.basename(ba.path), "sha256": _sha256(ba.path),
                        "entry": ba.elf["e_entry"]},
        },
        "layout": plan.summary() if plan is not None else None,
        "runtime": {
            "signals": {"park": contract.SIG_PARK, "resume": contract.SIG_RESUME},
            "park_file": contract.PARK_FILE,
            "park_file_fallback": contract.PARK_FILE_FALLBACK,
            "park_file_env": contract.PARK_FILE_ENV,
            "state": {"symbol": "hmigrate_state", "addr": state[0] if state else None,
                      "size": state[1] if state else None},
            "park_functions": list(PARK_FUNCTIONS),
            "park_points": {X: _park_points(bx), A: _park_points(ba)},
            "bottom_frames": {X: _bottom_frames(bx), A: _bottom_frames(ba)},
        },
        "tls": tls,
        "functions": functions,
        "symbols": symbols,
        "unclean_ranges": {b.arch.isa.name: unclean_ranges(functions, b.arch.isa.name, instrumented,
                                                       foreign_code(b) + one_isa_code(b, names))
                           for b in (bx, ba)},
        "checks": {"park_points_clean": not problems, "problems": problems,
                   "untranslatable_functions": sum(not f["translatable"] and f["instrumented"]
                                                   for f in functions),
                   "optimized_functions": sum(bool(f.get("optimized")) for f in functions),
                   "described": described_summary(functions),
                   "instrumented_functions": sum(bool(f["instrumented"]) for f in functions),
                   "untranslatable_call_sites": {
                       isa: sum(1 for f in functions if f["instrumented"] and f["translatable"]
                                for c in f["isa"][isa]["call_sites"]
                                if not c["translatable"] and c["kind"] != "exit_hook")
                       for isa in (X, A)}},
    }
    return md


def foreign_code(b: Binary) -> list[list[int]]:
    """Code without metadata (musl, libgcc) other than the bottom frames: a return address
    there in the middle of a parked stack means our code was called back from it (a qsort
    comparator, a signal handler returning to the signal trampoline), a frame recode
    cannot rebuild, so the runtime must not park above it."""
    # From a - 1: the kernel makes a signal handler "return" to the very first byte of
    # the trampoline (musl's __restore_rt), which the runtime checks as [ra - 1, ra);
    # size 0 (aarch64's asm trampoline) still covers that byte.
    return [[a - 1, a + max(n, 1)] for name, (a, n) in b.funcs.items()
            if name not in b.dfuncs and name not in BOTTOM_FUNCTIONS]


def one_isa_code(b: Binary, names: list[str]) -> list[list[int]]:
    """Our functions with DWARF in this binary only (an optimized static function inlined
    away on the other ISA): no twin, so no thread may park above one."""
    both = set(names)
    return [[f.low, f.high] for n, f in b.dfuncs.items()
            if n not in both and f.hooked_cu]


def _merge(ranges: list[list[int]], gap: int = 16) -> list[list[int]]:
    """Sorted ranges, neighbours closer than `gap` (alignment padding, never a return
    address) joined, so the runtime's table stays small."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo - out[-1][1] < gap:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


UNCLEAN_TABLE_MAX = patch.MAX  # ranges the runtime's table holds


def unclean_ranges(functions: list[dict], isa: str, instrumented: set[str],
                   foreign: list[list[int]] | None = None,
                   limit: int = UNCLEAN_TABLE_MAX) -> list[list[int]]:
    """Code ranges no parked stack may hold a return address in (the runtime's table).

    Whole functions when the function itself is untranslatable; otherwise single
    return addresses [ra - 1, ra) of untranslatable call sites that can be on a
    parked stack. Only instrumented frames can sit below a park point; the others
    (runtime, crt) are top or bottom frames that recode treats specially.
    """
    whole: list[list[int]] = []
    sites: list[tuple[list[int], list[list[int]]]] = []  # (function, its return addresses)
    for f in functions:
        g = f["isa"][isa]
        if f.get("optimized"):
            whole.append([g["addr"], g["addr"] + g["size"]])
            continue
        if not f["instrumented"]:
            continue
        if not f["translatable"]:
            whole.append([g["addr"], g["addr"] + g["size"]])
            continue
        ras = [[c["return_address"] - 1, c["return_address"]] for c in g["call_sites"]
               if not c["translatable"] and (c["kind"] == "enter_hook" or
                                             _may_reach_park(c, instrumented))]
        if ras:
            sites.append(([g["addr"], g["addr"] + g["size"]], ras))

    def table() -> list[list[int]]:
        out = whole + [r for _, ras in sites for r in ras]
        return _merge(out + list(foreign or []), gap=1) if foreign else sorted(out)

    ranges = table()
    # Too many for the runtime's table (zstd: ~11,000): the functions with the most
    # untranslatable call sites become whole untranslatable ranges (no thread parks
    # under them at all: fewer park points, never a wrong one) until the table fits.
    sites.sort(key=lambda s: len(s[1]))
    while len(ranges) > limit and sites:
        excess = len(ranges) - limit
        while excess > 0 and sites:
            fn, ras = sites.pop()
            whole.append(fn)
            excess -= len(ras) - 1
        ranges = table()
    return ranges


def _block_tp_offset(isa: Isa, seg: dict) -> int:
    """Where the TLS block starts relative to the thread pointer: it ends there in
    variant 2, it starts tls_gap_above_tp above it (aligned) in variant 1."""
    if isa.tls_variant == 2:
        return -_align_up(seg["memsz"], seg["align"])
    return _align_up(isa.tls_gap_above_tp, seg["align"])


def _align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a if a > 1 else x


def described_summary(functions: list[dict]) -> dict:
    """For --optimize-frames builds: how many functions are -Og with described frames,
    and per ISA how many of their call sites a frame can be rebuilt from, with the
    commonest reasons for the others (the link prints it)."""
    fs = [f for f in functions if f["instrumented"] and any(
        "locations" in c for c in f["isa"][X]["call_sites"])]
    out: dict = {"functions": len(fs)}
    for isa in (X, A):
        sites = [c for f in fs for c in f["isa"][isa]["call_sites"] if c["kind"] != "exit_hook"]
        why: dict[str, int] = {}
        for c in sites:
            for r in c.get("untranslatable_reasons") or []:
                k = reason_kind(r)
                why[k] = why.get(k, 0) + 1
        out[isa] = {"call_sites": len(sites),
                    "translatable": sum(bool(c["translatable"]) for c in sites),
                    "reasons": dict(sorted(why.items(), key=lambda kv: -kv[1])[:6])}
    return out


def reason_kind(reason: str) -> str:
    """A reason without its registers, offsets and names, for counting."""
    for kind in ("hold values no variable names", "has no value at this call",
                 "set before the entry hook", "keeps values in callee-saved registers",
                 "use of the stack is not followed", "no twin", "another layout",
                 "variadic", "va_list", "inlined"):
        if kind in reason:
            return ("stack bytes " if "stack bytes" in reason and kind.startswith("hold")
                    else "registers " if kind.startswith("hold") else "") + kind
    return reason.split(": ")[-1][:60]


def write(md: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(md, f, separators=(",", ":"))
        f.write("\n")
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="metadata", description="write recode metadata JSON")
    ap.add_argument("x86_64_binary")
    ap.add_argument("aarch64_binary")
    ap.add_argument("-o", "--output", default="-")
    ns = ap.parse_args(argv)
    md = build_metadata(ns.x86_64_binary, ns.aarch64_binary)
    if ns.output == "-":
        json.dump(md, sys.stdout, indent=1)
        print()
    else:
        write(md, ns.output)
    for p in md["checks"]["problems"]:
        print(f"metadata: unclean park point: {p}", file=sys.stderr)
    return 0 if md["checks"]["park_points_clean"] else 1
