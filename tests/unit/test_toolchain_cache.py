"""hmigrate-cc's per-link speedups, pure logic: an archive read once per version (members
by name), and the compiled runtime reused from its cache (compile_one faked here: the
real compile needs the cross compilers, which the toolchain tests have)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from docker_hmigrate.toolchain import driver, objects


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(objects.AR_MAGIC)
    for name, body in members:
        hdr = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{644:<8}{len(body):<10}`\n".encode()
        out += hdr + body + (b"\n" if len(body) & 1 else b"")
    return bytes(out)


def test_archive_members_by_name_read_once_per_version(tmp_path: Path) -> None:
    p = tmp_path / "libx.a"
    p.write_bytes(_ar([("a.o", b"\x7fELF-1"), ("note.txt", b"hello"), ("a.o", b"\x7fELF-2x")]))
    st = os.stat(p)
    members = objects._ar_members(str(p), st.st_mtime_ns, st.st_size)
    assert members == {"a.o": [b"\x7fELF-1", b"\x7fELF-2x"]}  # duplicates kept, non-ELF out
    assert objects._ar_members(str(p), st.st_mtime_ns, st.st_size) is members  # cached
    p.write_bytes(_ar([("b.o", b"\x7fELF-3")]))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    st2 = os.stat(p)
    assert objects._ar_members(str(p), st2.st_mtime_ns, st2.st_size) == {"b.o": [b"\x7fELF-3"]}


def test_runtime_compiled_once_then_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    compiled: list[str] = []

    def fake_compile(src: str, out: str, cflags: list[str], instrument: bool = True) -> None:
        compiled.append(src)
        Path(out).write_bytes(f"object of {os.path.basename(src)} {instrument}".encode())

    monkeypatch.setattr(driver, "compile_one", fake_compile)
    monkeypatch.setenv("HMIGRATE_CACHE", str(tmp_path / "cache"))
    first = driver.build_runtime(str(tmp_path / "w1"))
    n = len(driver.runtime_sources())
    assert len(compiled) == n and len(first) == n
    second = driver.build_runtime(str(tmp_path / "w2"))
    assert len(compiled) == n  # nothing compiled again
    assert [Path(p).read_bytes() for p in first] == [Path(p).read_bytes() for p in second]
    assert all(p.startswith(str(tmp_path / "w2" / "rt")) for p in second)
    assert os.path.basename(driver.runtime_cache_dir()).startswith("rt-")


def test_runtime_cache_that_cannot_be_written_is_skipped(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    calls: list[str] = []
    monkeypatch.setattr(driver, "compile_one",
                        lambda src, out, *a, **k: (calls.append(src), Path(out).write_bytes(b"o")))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("HMIGRATE_CACHE", str(blocker / "cache"))
    assert len(driver.build_runtime(str(tmp_path / "w"))) == len(driver.runtime_sources())
    driver.build_runtime(str(tmp_path / "w3"))
    assert len(calls) == 2 * len(driver.runtime_sources())
