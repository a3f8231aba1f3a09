"""Reading objects and archives: ar members, bundled aarch64 twins, input sections."""

from __future__ import annotations

import functools
import io
import json
import os
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from .config import AARCH64, BUNDLE_SECTION, NOTE_SECTION, X86_64

AR_MAGIC = b"!<arch>\n"


class ToolchainError(Exception):
    """A build step failed; the message says what and why."""


def iter_ar(path: str) -> Iterator[tuple[str, bytes]]:
    """Yield (member name, bytes) of a System V / GNU ar archive, in order."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(AR_MAGIC):
        raise ToolchainError(f"{path}: not an ar archive")
    if data.startswith(b"!<thin>"):
        raise ToolchainError(f"{path}: thin archives are not supported")
    pos, longnames = len(AR_MAGIC), b""
    while pos + 60 <= len(data):
        hdr = data[pos : pos + 60]
        name = hdr[:16].decode("ascii", "replace").rstrip()
        size = int(hdr[48:58].decode().strip())
        body = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
        if name in ("/", "/SYM64/"):
            continue
        if name == "//":
            longnames = body
            continue
        if name.startswith("/") and name[1:].isdigit():
            off = int(name[1:])
            end = longnames.index(b"\n", off)
            name = longnames[off:end].decode().rstrip("/")
        elif name.startswith("#1/"):  # BSD long name stored before the body
            n = int(name[3:])
            name, body = body[:n].rstrip(b"\0").decode(), body[n:]
        else:
            name = name.rstrip("/")
        yield name, body


def is_archive(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == AR_MAGIC


def embed_twin(x86_obj: str, a64_obj: str, note: bytes | None = None) -> None:
    """Store the aarch64 object inside the x86-64 one (single file survives mv/cp/ar),
    with optimize.py's note on its functions when there is one."""
    extra: list[str] = []
    if note is not None:
        note_file = f"{x86_obj}.hmigrate-note.tmp"
        with open(note_file, "wb") as f:
            f.write(note)
        extra = ["--add-section", f"{NOTE_SECTION}={note_file}",
                 "--set-section-flags", f"{NOTE_SECTION}=readonly,exclude"]
    try:
        subprocess.run(
            [
                X86_64.tool("objcopy"),
                "--add-section",
                f"{BUNDLE_SECTION}={a64_obj}",
                "--set-section-flags",
                f"{BUNDLE_SECTION}=readonly,exclude",
                *extra,
                x86_obj,
            ],
            check=True,
        )
    finally:
        if note is not None:
            os.unlink(note_file)


def read_note(data: bytes) -> dict | None:
    """optimize.py's note of one object (None: compiled without --optimize-leaves)."""
    from elftools.elf.elffile import ELFFile  # imported when needed: compiles never are

    sec = ELFFile(io.BytesIO(data)).get_section_by_name(NOTE_SECTION)
    return json.loads(sec.data()) if sec is not None else None


def twin_bytes(data: bytes, what: str) -> bytes:
    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(data))
    sec = elf.get_section_by_name(BUNDLE_SECTION)
    if sec is None:
        raise ToolchainError(
            f"{what}: has no {BUNDLE_SECTION} section; it was not compiled by hmigrate-cc "
            "(rebuild it with CC=hmigrate-cc)"
        )
    return sec.data()


def extract_twin(x86_obj: str, dest: str) -> None:
    with open(x86_obj, "rb") as f:
        data = f.read()
    with open(dest, "wb") as f:
        f.write(twin_bytes(data, x86_obj))


def twin_archive(x86_ar: str, dest: str, workdir: str) -> None:
    """Build the aarch64 archive of a bundled x86-64 archive, member names kept."""
    os.makedirs(workdir, exist_ok=True)
    paths = []
    for i, (name, body) in enumerate(iter_ar(x86_ar)):
        if not body.startswith(b"\x7fELF"):
            continue
        sub = os.path.join(workdir, str(i))
        os.makedirs(sub, exist_ok=True)
        p = os.path.join(sub, name)
        with open(p, "wb") as f:
            f.write(twin_bytes(body, f"{x86_ar}({name})"))
        paths.append(p)
    if os.path.exists(dest):
        os.unlink(dest)
    # "q" keeps duplicate member names, which "r" would collapse.
    subprocess.run([AARCH64.tool("ar"), "qcs", dest, *paths], check=True)


@dataclass
class InputSection:
    """One allocatable section of one input file, as the linker will see it."""

    name: str
    size: int
    align: int
    nobits: bool
    tls: bool
    merge: bool
    symbols: tuple[str, ...]  # non-local symbols defined at offset 0, for cross-ISA matching
    inner: tuple[tuple[str, int], ...] = ()  # global symbols inside the section (offset > 0)


def read_sections(data: bytes) -> list[InputSection]:
    """The allocatable input sections of one relocatable object. ELF64 little-endian
    (both ISAs' objects) is read with struct: pyelftools took most of a link's time
    (a configure script links hundreds of probes, each reading ~100 libc members)."""
    if data[:6] == b"\x7fELF\x02\x01":
        return _read_sections_elf64le(data)
    return _read_sections_pyelftools(data)


_SHF_ALLOC, _SHF_MERGE, _SHF_TLS, _SHF_EXCLUDE = 0x2, 0x10, 0x400, 0x80000000
_SHT_SKIP = (4, 7, 9, 17)  # SHT_RELA, SHT_NOTE, SHT_REL, SHT_GROUP
_SHT_NOBITS = 8
_STT_SKIP = (0, 3, 4)  # STT_NOTYPE, STT_SECTION, STT_FILE
_SHN_LORESERVE = 0xFF00  # special section indexes (ABS, COMMON, XINDEX): no section


def _cstr(data: bytes, off: int) -> str:
    return data[off : data.index(b"\0", off)].decode("utf-8", "replace")


def _elf64le_sections(data: bytes) -> tuple[list[tuple], list[str]]:
    """(section headers as tuples, section names) of an ELF64 little-endian file."""
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shoff == 0:
        return [], []
    first = struct.unpack_from("<IIQQQQIIQQ", data, shoff)
    if shnum == 0:  # extended numbering: the count is section 0's sh_size
        shnum = first[5]
    if shstrndx == 0xFFFF:  # SHN_XINDEX: the index is section 0's sh_link
        shstrndx = first[6]
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
               for i in range(shnum)]
    stroff = headers[shstrndx][4]
    return headers, [_cstr(data, stroff + h[0]) for h in headers]


@dataclass
class Symbol:
    """One .symtab entry of an ELF64 little-endian file (st_info split in two)."""

    name: str
    type: int  # STT_*: 1 OBJECT, 2 FUNC, 4 FILE, 6 TLS
    bind: int  # STB_*: 0 LOCAL
    shndx: int  # 0: undefined
    value: int
    size: int


def elf64le_symbols(data: bytes) -> list[Symbol] | None:
    """The .symtab of an ELF64 little-endian file, in order (None: not such a file).
    struct instead of pyelftools: the metadata of every link reads both binaries'
    symbol tables, and pyelftools spent seconds on each."""
    if data[:6] != b"\x7fELF\x02\x01":
        return None
    headers, names = _elf64le_sections(data)
    symtab = next((i for i, n in enumerate(names) if n == ".symtab"), None)
    if symtab is None:
        return []
    _, _, _, _, off, size, link, _, _, entsize = headers[symtab]
    entsize = entsize or 24
    symstr = headers[link][4]
    out = []
    for k in range(size // entsize):
        st_name, st_info, _, shndx, value, sz = struct.unpack_from(
            "<IBBHQQ", data, off + k * entsize)
        out.append(Symbol(_cstr(data, symstr + st_name) if st_name else "", st_info & 0xF,
                          st_info >> 4, shndx, value, sz))
    return out


def _read_sections_elf64le(data: bytes) -> list[InputSection]:
    headers, names = _elf64le_sections(data)
    first_syms: dict[int, list[str]] = {}
    inner: dict[int, list[tuple[str, int]]] = {}
    for sym in elf64le_symbols(data) or []:
        if sym.shndx == 0 or sym.shndx >= _SHN_LORESERVE or not sym.name:
            continue
        if sym.type in _STT_SKIP:
            continue
        if sym.value == 0:
            first_syms.setdefault(sym.shndx, []).append(sym.name)
        elif sym.bind != 0:  # not STB_LOCAL
            inner.setdefault(sym.shndx, []).append((sym.name, sym.value))
    out = []
    for idx, h in enumerate(headers):
        _, sh_type, flags, _, _, size, _, _, align, _ = h
        if not flags & _SHF_ALLOC or flags & _SHF_EXCLUDE:
            continue
        if sh_type in _SHT_SKIP or size == 0:
            continue
        out.append(
            InputSection(
                name=names[idx],
                size=size,
                align=max(1, align),
                nobits=sh_type == _SHT_NOBITS,
                tls=bool(flags & _SHF_TLS),
                merge=bool(flags & _SHF_MERGE),
                symbols=tuple(sorted(first_syms.get(idx, []))),
                inner=tuple(sorted(inner.get(idx, []))),
            )
        )
    return out


def _read_sections_pyelftools(data: bytes) -> list[InputSection]:
    from elftools.elf.constants import SH_FLAGS
    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(data))
    first_syms: dict[int, list[str]] = {}
    inner: dict[int, list[tuple[str, int]]] = {}
    symtab = elf.get_section_by_name(".symtab")
    if symtab is not None:
        for sym in symtab.iter_symbols():
            shndx = sym["st_shndx"]
            if not isinstance(shndx, int) or not sym.name:
                continue
            if sym["st_info"]["type"] in ("STT_SECTION", "STT_FILE", "STT_NOTYPE"):
                continue
            if sym["st_value"] == 0:
                first_syms.setdefault(shndx, []).append(sym.name)
            elif sym["st_info"]["bind"] != "STB_LOCAL":
                inner.setdefault(shndx, []).append((sym.name, sym["st_value"]))
    out = []
    for idx, sec in enumerate(elf.iter_sections()):
        flags = sec["sh_flags"]
        if not flags & SH_FLAGS.SHF_ALLOC or flags & SH_FLAGS.SHF_EXCLUDE:
            continue
        skip = ("SHT_GROUP", "SHT_RELA", "SHT_REL", "SHT_NOTE")
        if sec["sh_type"] in skip or sec["sh_size"] == 0:
            continue
        out.append(
            InputSection(
                name=sec.name,
                size=sec["sh_size"],
                align=max(1, sec["sh_addralign"]),
                nobits=sec["sh_type"] == "SHT_NOBITS",
                tls=bool(flags & SH_FLAGS.SHF_TLS),
                merge=bool(flags & SH_FLAGS.SHF_MERGE),
                symbols=tuple(sorted(first_syms.get(idx, []))),
                inner=tuple(sorted(inner.get(idx, []))),
            )
        )
    return out


@functools.lru_cache(maxsize=32)
def _ar_members(path: str, mtime_ns: int, size: int) -> dict[str, list[bytes]]:
    """An archive's ELF members by name (several may share one), read once per version
    of the file: a link reads hundreds of libc.a's members, and scanning the whole
    archive for each one made every link (so every configure probe) seconds slower."""
    members: dict[str, list[bytes]] = {}
    for name, body in iter_ar(path):
        if body.startswith(b"\x7fELF"):
            members.setdefault(name, []).append(body)
    return members


def ar_member(path: str, member: str) -> list[bytes]:
    """The ELF members of an archive that bear this name (read once per archive)."""
    st = os.stat(path)
    return _ar_members(path, st.st_mtime_ns, st.st_size).get(member, [])


def read_file_sections(path: str, member: str | None) -> list[InputSection]:
    if member is None:
        with open(path, "rb") as f:
            return read_sections(f.read())
    secs: list[InputSection] = []
    for body in ar_member(path, member):
        secs.extend(read_sections(body))
    return secs
