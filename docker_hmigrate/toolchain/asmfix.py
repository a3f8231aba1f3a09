"""Assembly rewrite: one section per string literal.

GCC pads string literals inside an object's .rodata differently per ISA (aarch64
aligns them to 8 bytes, x86-64 does not), so "%s\\n" would sit at different offsets
and a char* kept in memory would point at garbage after migration. Giving every
literal its own section named after its contents lets the layout place each one
at the same address on both ISAs, like any named object.
"""

from __future__ import annotations

import hashlib
import re

_LABEL = re.compile(r"^\.LC\d+:\s*$")
_STRING = re.compile(r"^\s*\.(string|ascii|asciz)\b")
# Code optimized per function (optimize.py) puts its literals in mergeable
# .rodata.<fn>.str1.<align> sections, which ld places itself: split those too.
_MERGED_STR = re.compile(r"^\.rodata(\.[\w.$]+)?\.str1\.\d+$")


def _literal_section(sec: str | None) -> bool:
    return sec == ".rodata" or bool(sec and _MERGED_STR.match(sec))


def _section_name(line: str) -> str | None:
    s = line.strip()
    if s.startswith(".section"):
        rest = s[len(".section") :].strip()
        return rest.split(",")[0].strip().strip('"')
    if s in (".text", ".data", ".bss"):
        return s
    if s.startswith((".pushsection", ".popsection", ".previous", ".subsection")):
        return "?"
    return None


def split_string_literals(asm: str) -> str:
    lines = asm.splitlines()
    out: list[str] = []
    cur: str | None = None
    cur_line = ""
    displaced = False
    used: dict[str, int] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        sec = _section_name(line)
        if sec is not None:
            cur, cur_line, displaced = sec, line, False
            out.append(line)
            i += 1
            continue
        if _literal_section(cur) and _LABEL.match(line):
            j = i + 1
            while j < len(lines) and _STRING.match(lines[j]):
                j += 1
            body = lines[i + 1 : j]
            if body:
                digest = hashlib.sha1("\n".join(s.strip() for s in body).encode()).hexdigest()
                n = used.get(digest, 0)
                used[digest] = n + 1
                name = f".rodata.hmstr.{digest[:16]}" + (f".{n}" if n else "")
                out.append(f'\t.section\t{name},"a"')
                out.append(line)
                out.extend(body)
                displaced = True
                i = j
                continue
        if displaced and line.strip() and not line.lstrip().startswith("#"):
            out.append(cur_line)
            displaced = False
        out.append(line)
        i += 1
    return "\n".join(out) + "\n"
