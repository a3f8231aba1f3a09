"""CRIU's stats-dump / stats-restore images read by criu/stats.py (pure logic).

The entries are encoded here by hand, field by field, from CRIU's published stats.proto
field numbers, independently of the schema module that reads them."""

from __future__ import annotations

import struct

from docker_hmigrate.criu import stats


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _fields(*pairs: tuple[int, int]) -> bytes:
    return b"".join(_varint(num << 3) + _varint(value) for num, value in pairs)


def _message(num: int, body: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(body)) + body


def _image(entry: bytes) -> bytes:
    return struct.pack("<III", 0x55105940, 0x57093306, len(entry)) + entry


def test_dump_figures_in_seconds_and_pages():
    dump = _fields((1, 800), (2, 455061), (3, 2258), (4, 1050), (5, 49), (6, 0), (7, 35),
                   (9, 0))
    got = stats.parse(_image(_message(1, dump)))
    assert got == {"freezing_seconds": 0.0008, "frozen_seconds": 0.455061,
                   "memdump_seconds": 0.002258, "memwrite_seconds": 0.00105,
                   "pages_scanned": 49, "pages_skipped_parent": 0, "pages_written": 35,
                   "pages_lazy": 0}
    line = stats.summary(got)
    assert "frozen 0.455 s" in line and "0.1 MB written" in line


def test_restore_figures():
    restore = _fields((1, 10), (2, 0), (3, 12000), (4, 324829), (5, 76800))
    got = stats.parse(_image(_message(2, restore)))
    assert got["restore_seconds"] == 0.324829 and got["forking_seconds"] == 0.012
    assert got["pages_restored"] == 76800


def test_not_a_stats_image_gives_none(tmp_path):
    assert stats.parse(b"") is None
    assert stats.parse(struct.pack("<III", 0x54564319, 0x57093306, 0)) is None  # wrong magic
    assert stats.parse(_image(b"\xff")) is None  # truncated entry
    assert stats.read(tmp_path, "dump") is None  # no file
