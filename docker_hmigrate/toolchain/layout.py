"""Aligned layout: match input sections across ISAs and write per-ISA linker scripts.

Pure logic (no subprocesses) so it can be unit-tested with synthetic inputs.
Every *unit* is what one linker-script statement places: one section name of one
input file (an object, or one archive member). Units present in both ISAs are
placed at the same offset of the same output section, sized and aligned to the
max of both ISAs; units of only one ISA go after the common part, per ISA.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .config import IMAGE_BASE, PAGE, TEXT_BASE

# Regions that are aligned across ISAs, in address order.
REGIONS = ("text", "rodata", "tdata", "tbss", "data", "bss")
CATCH_ALL = {
    "text": "*(.text .text.*)",
    "rodata": "*(.rodata .rodata.*)",
    "tdata": "*(.tdata .tdata.*)",
    "tbss": "*(.tbss .tbss.*)",
    "data": "*(.data .data.*)",
    "bss": "*(.bss .bss.*) *(COMMON)",
}
SLACK = 0x1000
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+@%,=~-]+$")


def align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a if a > 1 else x


def classify(name: str, *, exec_: bool = False, write: bool = False, nobits: bool = False,
             tls: bool = False) -> str:
    """Region of a section name; 'special' ones are per-ISA and never aligned."""
    if name in (".init", ".fini"):
        return "special"
    if name == ".text" or name.startswith(".text."):
        return "text"
    if name.startswith((".rodata", ".srodata")):
        return "rodata"
    if name.startswith(".tdata"):
        return "tdata"
    if name.startswith(".tbss"):
        return "tbss"
    if name.startswith((".init_array", ".fini_array", ".ctors", ".dtors", ".eh_frame",
                        ".gcc_except_table", ".got", ".igot", ".note", ".tm_clone_table",
                        ".preinit_array", ".rela", ".jcr")):
        return "special"
    if name == ".data" or name.startswith(".data."):  # .data.rel.ro too: musl's .lo are PIC
        return "data"
    if name == ".bss" or name.startswith(".bss."):
        return "bss"
    # Unknown names: classify by flags; they are placed per ISA by explicit name.
    if tls:
        return "tbss" if nobits else "tdata"
    if exec_:
        return "text"
    if write:
        return "bss" if nobits else "data"
    return "rodata"


@dataclass
class Unit:
    key: str  # logical "file|section", identical across ISAs for the same source unit
    pattern: str  # ld input section description, e.g. /x/libc.a:printf.lo(.text.printf)
    section: str
    region: str
    size: int
    align: int
    symbols: tuple[str, ...] = ()
    mergeable: bool = False  # ld merges these; never placed explicitly
    inner: tuple[tuple[str, int], ...] = ()  # global symbols at offset > 0 (asm files)
    stub_room: int = 0  # bytes added for linker stubs placed right after this section


@dataclass
class Placement:
    unit: Unit
    offset: int  # from the region's output section start
    common: bool


@dataclass
class RegionPlan:
    base: int = 0
    common_end: int = 0  # first offset after the aligned part (same on both ISAs)
    max_end: int = 0  # max over ISAs of the explicit part's end
    placements: dict[str, list[Placement]] = field(default_factory=dict)


@dataclass
class Plan:
    isas: tuple[str, str]
    regions: dict[str, RegionPlan]
    pairs: list[tuple[Unit, Unit]]
    only: dict[str, list[Unit]]
    special: dict[str, list[Unit]]
    # Symbols both ISAs define that cannot share an address: a multi-entry assembly
    # section on one ISA (musl's x86-64 floorl.s also holds ceill) vs a section of
    # its own on the other. check-align reports them as allowed, by name.
    unalignable: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "unalignable": self.unalignable,
            "common_units": len(self.pairs),
            "isa_only_units": {k: len(v) for k, v in self.only.items()},
            "regions": {
                r: {"base": hex(p.base), "common_size": p.common_end, "max_size": p.max_end}
                for r, p in self.regions.items()
            },
        }


def match_units(a: list[Unit], b: list[Unit]) -> tuple[list[tuple[Unit, Unit]], list[Unit],
                                                         list[Unit]]:
    """Pair units of two ISAs: by logical key first, then by the symbol defined at offset 0."""
    bmap = {u.key: u for u in b if not u.mergeable}
    pairs, rest_a = [], []
    used: set[str] = set()
    for u in a:
        v = bmap.get(u.key)
        if v is not None and not u.mergeable and v.region == u.region and v.key not in used:
            pairs.append((u, v))
            used.add(v.key)
        else:
            rest_a.append(u)
    rest_b = [v for v in b if v.key not in used]
    by_sym: dict[tuple[str, str], Unit] = {}
    for v in rest_b:
        if v.symbols and not v.mergeable:
            by_sym.setdefault((v.region, v.symbols[0]), v)
    only_a = []
    for u in rest_a:
        v = by_sym.get((u.region, u.symbols[0])) if u.symbols and not u.mergeable else None
        if v is not None and v.key not in used:
            pairs.append((u, v))
            used.add(v.key)
        else:
            only_a.append(u)
    only_b = [v for v in rest_b if v.key not in used]
    return pairs, only_a, only_b


def plan_layout(units: dict[str, list[Unit]], isas: tuple[str, str]) -> Plan:
    ia, ib = isas
    pairs, only_a, only_b = match_units(
        [u for u in units[ia] if u.region != "special"],
        [u for u in units[ib] if u.region != "special"],
    )
    only = {ia: only_a, ib: only_b}
    special = {i: [u for u in units[i] if u.region == "special"] for i in isas}
    regions: dict[str, RegionPlan] = {}
    for region in REGIONS:
        rp = RegionPlan(placements={ia: [], ib: []})
        off = 0
        for ua, ub in pairs:
            if ua.region != region:
                continue
            off = align_up(off, max(ua.align, ub.align))
            rp.placements[ia].append(Placement(ua, off, True))
            rp.placements[ib].append(Placement(ub, off, True))
            off += max(ua.size, ub.size)
        rp.common_end = off
        ends = []
        for isa in isas:
            o = rp.common_end
            for u in only[isa]:
                if u.region != region:
                    continue
                if u.mergeable:  # left to the catch-all; counted for the size estimate
                    o += u.size + u.align
                    continue
                o = align_up(o, u.align)
                rp.placements[isa].append(Placement(u, o, False))
                o += u.size
            ends.append(o)
        rp.max_end = max(ends)
        regions[region] = rp
    _assign_bases(regions, special, isas)
    plan = Plan(isas, regions, pairs, only, special)
    plan.unalignable = _unalignable(plan)
    return plan


def _unalignable(plan: Plan) -> list[str]:
    where: dict[str, dict[str, int]] = {}
    for rp in plan.regions.values():
        for isa, pls in rp.placements.items():
            for p in pls:
                for name in p.unit.symbols:
                    where.setdefault(name, {})[isa] = rp.base + p.offset
                for name, off in p.unit.inner:
                    where.setdefault(name, {})[isa] = rp.base + p.offset + off
    return sorted(n for n, d in where.items() if len(d) == 2 and len(set(d.values())) == 2)


def _special_size(special: dict[str, list[Unit]], isas: tuple[str, str], names: tuple[str, ...]
                  ) -> int:
    best = 0
    for isa in isas:
        total = sum(u.size + u.align for u in special[isa] if u.section.startswith(names))
        best = max(best, total)
    return best


def _assign_bases(regions: dict[str, RegionPlan], special: dict[str, list[Unit]],
                  isas: tuple[str, str]) -> None:
    t = regions["text"]
    t.base = TEXT_BASE
    after_text = _special_size(special, isas, (".init", ".fini"))
    r = regions["rodata"]
    r.base = align_up(t.base + t.max_end + after_text + SLACK, PAGE)
    after_ro = _special_size(special, isas, (".eh_frame", ".gcc_except_table", ".note"))
    td = regions["tdata"]
    td.base = align_up(r.base + r.max_end + after_ro + SLACK, PAGE)
    tls_align = 64  # generous, so the TLS block starts identically on both ISAs
    tb = regions["tbss"]
    tb.base = align_up(td.base + td.max_end, tls_align)
    d = regions["data"]
    d.base = align_up(tb.base + tb.max_end + SLACK, 0x1000)
    after_data = _special_size(
        special, isas, (".init_array", ".fini_array", ".ctors", ".dtors", ".got", ".igot",
                        ".preinit_array", ".tm_clone_table", ".jcr"))
    b = regions["bss"]
    # GOT entries are made by the linker; SLACK*2 covers them (an ASSERT guards it).
    b.base = align_up(d.base + d.max_end + after_data + 2 * SLACK, 0x1000)


def check_path(p: str) -> str:
    if not _SAFE_PATH.match(p):
        raise ValueError(f"path {p!r} has characters a linker script cannot match; rename it")
    return p


def ld_pattern(path: str, member: str | None, section: str) -> str:
    f = check_path(path) if member is None else f"{check_path(path)}:{check_path(member)}"
    return f"{f}({section})"


def _region_body(rp: RegionPlan, isa: str, region: str, extra_catch: list[str],
                 pad_to: int | None = None) -> list[str]:
    lines = []
    for p in rp.placements[isa]:
        tag = "" if p.common else "  /* " + isa + " only */"
        # MAX: an unexpectedly grown section (linker stubs) shifts the rest instead of
        # failing the link; the driver then grows that unit and check-align judges.
        lines.append(f"    . = MAX(., 0x{p.offset:x});{tag}")
        lines.append(f"    KEEP({p.unit.pattern})")
    lines.append(f"    . = MAX(., 0x{rp.common_end:x});")
    lines.extend(f"    {c}" for c in extra_catch)
    lines.append(f"    {CATCH_ALL[region]}")
    if pad_to is not None:
        lines.append(f"    . = MAX(., 0x{pad_to:x});")
    return lines


def _unknown_catch(plan: Plan, isa: str, region: str) -> list[str]:
    """Explicit catch-alls for odd section names the standard wildcards miss."""
    known = re.compile(r"^\.(text|rodata|tdata|tbss|data|bss)(\.|$)")
    names = sorted({u.section for u in plan.only[isa]
                    if u.region == region and not known.match(u.section)})
    return [f"KEEP(*({n}))" for n in names if _SAFE_PATH.match(n)]


def linker_script(plan: Plan, isa: str) -> str:
    R = plan.regions
    td, tb = R["tdata"], R["tbss"]

    def body(region: str, pad: int | None = None) -> str:
        return "\n".join(_region_body(R[region], isa, region, _unknown_catch(plan, isa, region),
                                      pad))

    return f"""/* Generated by hmigrate-cc for {isa}: aligned layout, do not edit. */
ENTRY(_start)
SECTIONS
{{
  PROVIDE(__executable_start = 0x{IMAGE_BASE:x});
  . = 0x{IMAGE_BASE:x} + SIZEOF_HEADERS;
  .text 0x{R["text"].base:x} : {{
{body("text")}
  }}
  .init : {{ KEEP(*(SORT_NONE(.init))) }}
  .fini : {{ KEEP(*(SORT_NONE(.fini))) }}
  PROVIDE(__etext = .); PROVIDE(_etext = .); PROVIDE(etext = .);
  ASSERT(. <= 0x{R["rodata"].base:x}, "hmigrate: text region overflows into rodata")
  .rodata 0x{R["rodata"].base:x} : {{
{body("rodata")}
  }}
  .eh_frame : {{ KEEP(*(.eh_frame)) *(.eh_frame.*) }}
  .gcc_except_table : {{ *(.gcc_except_table .gcc_except_table.*) }}
  .note : {{ *(.note .note.*) }}
  ASSERT(. <= 0x{td.base:x}, "hmigrate: rodata region overflows into data")
  .tdata 0x{td.base:x} : {{
{body("tdata", td.max_end)}
  }}
  .tbss 0x{tb.base:x} : {{
{body("tbss", tb.max_end)}
  }}
  .data 0x{R["data"].base:x} : {{
{body("data")}
  }}
  .preinit_array : {{
    PROVIDE_HIDDEN(__preinit_array_start = .);
    KEEP(*(.preinit_array))
    PROVIDE_HIDDEN(__preinit_array_end = .);
  }}
  .init_array : {{
    PROVIDE_HIDDEN(__init_array_start = .);
    KEEP(*(SORT_BY_INIT_PRIORITY(.init_array.*) SORT_BY_INIT_PRIORITY(.ctors.*)))
    KEEP(*(.init_array .ctors))
    PROVIDE_HIDDEN(__init_array_end = .);
  }}
  .fini_array : {{
    PROVIDE_HIDDEN(__fini_array_start = .);
    KEEP(*(SORT_BY_INIT_PRIORITY(.fini_array.*) SORT_BY_INIT_PRIORITY(.dtors.*)))
    KEEP(*(.fini_array .dtors))
    PROVIDE_HIDDEN(__fini_array_end = .);
  }}
  .got : {{ *(.got) *(.igot) }}
  .got.plt : {{ *(.got.plt) *(.igot.plt) }}
  .rela.iplt : {{
    PROVIDE_HIDDEN(__rela_iplt_start = .);
    *(.rela.iplt)
    PROVIDE_HIDDEN(__rela_iplt_end = .);
  }}
  _edata = .; PROVIDE(edata = .);
  ASSERT(. <= 0x{R["bss"].base:x}, "hmigrate: data region overflows into bss")
  __bss_start = 0x{R["bss"].base:x};
  .bss 0x{R["bss"].base:x} : {{
{body("bss")}
  }}
  _end = .; PROVIDE(end = .);
  /DISCARD/ : {{ *(.note.GNU-stack) *(.note.gnu.property) *(.gnu_debuglink) }}
}}
"""
