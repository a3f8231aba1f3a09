"""Reading objects and archives: ar members, bundled aarch64 twins, input sections."""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

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
    sec = ELFFile(io.BytesIO(data)).get_section_by_name(NOTE_SECTION)
    return json.loads(sec.data()) if sec is not None else None


def twin_bytes(data: bytes, what: str) -> bytes:
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


def read_file_sections(path: str, member: str | None) -> list[InputSection]:
    if member is None:
        with open(path, "rb") as f:
            return read_sections(f.read())
    st = os.stat(path)
    secs: list[InputSection] = []
    for body in _ar_members(path, st.st_mtime_ns, st.st_size).get(member, []):
        secs.extend(read_sections(body))
    return secs
