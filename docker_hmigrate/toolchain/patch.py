"""Fill the runtime's table of untranslatable functions inside linked binaries.

The table (struct hmigrate_unclean in runtime/hmigrate_rt.h) sits at the same
address in both binaries; each ISA gets its own [start, end) ranges because code
sizes differ. Patching after the link keeps the layout identical to what was
checked (the table has a fixed size).
"""

from __future__ import annotations

import struct

from elftools.elf.elffile import ELFFile

from .objects import ToolchainError

SYMBOL = "hmigrate_unclean"
MAGIC = 0x6E61656C636E7568
MAX = 8192


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def file_offset(path: str, symbol: str) -> tuple[int, int]:
    """(file offset, size) of a defined data symbol."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        syms = symtab.get_symbol_by_name(symbol) if symtab else None
        if not syms:
            raise ToolchainError(f"{path}: no {symbol} symbol (runtime not linked?)")
        sym = syms[0]
        sec = elf.get_section(sym["st_shndx"])
        if sec["sh_type"] != "SHT_PROGBITS":
            raise ToolchainError(f"{path}: {symbol} is not in a file-backed section")
        return sec["sh_offset"] + sym["st_value"] - sec["sh_addr"], sym["st_size"]


def write_unclean(path: str, ranges: list[tuple[int, int]]) -> int:
    merged = merge_ranges(ranges)
    if len(merged) > MAX:
        raise ToolchainError(f"{path}: {len(merged)} untranslatable functions, table holds {MAX}")
    off, size = file_offset(path, SYMBOL)
    with open(path, "r+b") as f:
        f.seek(off)
        magic, _ = struct.unpack("<QQ", f.read(16))
        if magic != MAGIC:
            raise ToolchainError(f"{path}: {SYMBOL} has a bad magic 0x{magic:x}")
        payload = struct.pack("<Q", len(merged)) + b"".join(
            struct.pack("<QQ", lo, hi) for lo, hi in merged)
        if 8 + len(payload) > size:
            raise ToolchainError(f"{path}: {SYMBOL} too small")
        f.seek(off + 8)
        f.write(payload)
    return len(merged)
