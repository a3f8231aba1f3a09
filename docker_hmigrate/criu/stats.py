"""CRIU's own figures for a dump and a restore: the stats-dump / stats-restore images.

CRIU writes them into the images folder at the end of `criu dump` and `criu restore`
(a "service" image: IMG_SERVICE_MAGIC, the stats magic, then one length-prefixed
stats_entry). Times in them are microseconds; here they are turned into seconds and
page counts into bytes, under the names the migration reports (Podman's
`--print-stats` shows the same figures). Reading never fails a migration: a missing or
unreadable file gives None.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from docker_hmigrate.criu import schema
from docker_hmigrate.criu.image import IMG_SERVICE_MAGIC

STATS_MAGIC = 0x57093306
PAGE_SIZE = 4096  # CRIU counts pages of the dumping host; both lab ISAs use 4 KiB

_DUMP_TIMES = ("freezing_time", "frozen_time", "memdump_time", "memwrite_time")
_DUMP_PAGES = ("pages_scanned", "pages_skipped_parent", "pages_written", "pages_lazy")
_RESTORE_TIMES = ("forking_time", "restore_time")
_RESTORE_PAGES = ("pages_compared", "pages_skipped_cow", "pages_restored")


def parse(data: bytes) -> dict[str, Any] | None:
    """The figures of one stats-dump or stats-restore file's bytes, or None."""
    if len(data) < 12:
        return None
    magic, kind, size = struct.unpack_from("<III", data)
    if magic != IMG_SERVICE_MAGIC or kind != STATS_MAGIC or len(data) < 12 + size:
        return None
    try:
        entry = schema.parse("stats_entry", data[12:12 + size])
    except DecodeError:
        return None
    out: dict[str, Any] = {}
    if entry.HasField("dump"):
        out.update(_figures(entry.dump, _DUMP_TIMES, _DUMP_PAGES))
    if entry.HasField("restore"):
        out.update(_figures(entry.restore, _RESTORE_TIMES, _RESTORE_PAGES))
    return out or None


def _figures(msg, times: tuple[str, ...], pages: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in times:
        if msg.HasField(name):
            out[name.removesuffix("_time") + "_seconds"] = getattr(msg, name) / 1e6
    for name in pages:
        if msg.HasField(name):
            out[name] = getattr(msg, name)
    return out


def read(folder: Path, which: str) -> dict[str, Any] | None:
    """stats-`which` ("dump" or "restore") of an images folder, or None."""
    try:
        return parse((Path(folder) / f"stats-{which}").read_bytes())
    except OSError:
        return None


def summary(stats: dict[str, Any]) -> str:
    """One line for the human summary, e.g. "frozen 0.412 s, memdump 0.2 s, 76800 pages"."""
    parts = []
    for key, label in (("frozen_seconds", "frozen"), ("memdump_seconds", "memdump"),
                       ("memwrite_seconds", "memwrite"), ("restore_seconds", "restore"),
                       ("forking_seconds", "forking")):
        if key in stats:
            parts.append(f"{label} {stats[key]:.3f} s")
    for key, label in (("pages_written", "written"), ("pages_restored", "restored")):
        if key in stats:
            parts.append(f"{stats[key] * PAGE_SIZE / 1e6:.1f} MB {label}")
    return ", ".join(parts)
