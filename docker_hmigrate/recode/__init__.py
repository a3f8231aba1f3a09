"""Recode: rewrite a CRIU image set taken on one ISA so that it restores on the other.

Entry points:
- `program_from_image(labels, read_file, container)`: what the toolchain put in the
  container's image (its metadata and both binaries), from its files (the engine side,
  validate.load_program, reads them from the container).
- `preflight(program, images?)`: every reason the recode would fail, found before the
  source is frozen (and again on the dumped images, before anything is restored).
- `recode(src_dir, dst_dir, program, src_isa, dst_isa)`: the transformation itself,
  timed per phase.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docker_hmigrate import errors
from docker_hmigrate.isa import NAMES as ISAS
from docker_hmigrate.isa import by_criu_march
from docker_hmigrate.toolchain import contract

TOOLCHAIN_SCHEMA = contract.SCHEMA
LABEL_TOOLCHAIN = "org.hmigrate.toolchain"
LABEL_PROGRAM = "org.hmigrate.program"
LABEL_VARIANTS = "org.hmigrate.variants"
LABEL_METADATA = "org.hmigrate.metadata"


@dataclass
class Program:
    """A program built by hmigrate-cc, as its multi-ISA image describes it."""

    path: str  # the executable inside the container (the local ISA's variant)
    metadata: dict[str, Any]  # the parsed NAME.hmigrate.json
    binaries: dict[str, bytes] = field(repr=False)  # ISA -> ELF

    @functools.cached_property
    def md(self) -> contract.Metadata:
        """The metadata as the toolchain -> recode contract's typed records."""
        return contract.load(self.metadata)

    @property
    def park_protocol(self):
        from docker_hmigrate.park import ParkProtocol

        return ParkProtocol.from_metadata(self.metadata)


def program_from_image(labels: dict[str, str], read_file: Callable[[str], bytes | None],
                       container: str) -> Program:
    """The program hmigrate-cc put in an image: its labels name the metadata file and each
    ISA's variant, `read_file(path)` gives a file's bytes (None when absent). No engine
    here: validate.load_program reads a container's files through it."""
    if labels.get(LABEL_TOOLCHAIN) != TOOLCHAIN_SCHEMA:
        raise errors.NotMigratableCrossISA(
            f"the image of {container} was not built by hmigrate-cc "
            f"(no {LABEL_TOOLCHAIN}={TOOLCHAIN_SCHEMA} label)",
            hint="build the program with the multi-ISA toolchain (see docs/toolchain.md), "
                 "or migrate to a host of the same ISA")
    meta_raw = read_file(labels.get(LABEL_METADATA, ""))
    if not meta_raw:
        raise errors.NotMigratableCrossISA(
            f"the toolchain metadata {labels.get(LABEL_METADATA)} is missing from the container")
    metadata = json.loads(meta_raw, object_hook=_shared_values())
    del meta_raw  # tens of MB for a big program: not kept beside the parsed form
    binaries: dict[str, bytes] = {}
    for path in labels.get(LABEL_VARIANTS, "").split():
        isa = next((i for i in ISAS if path.endswith("_" + i)), None)
        data = read_file(path)
        if isa and data:
            binaries[isa] = data
    return Program(labels.get(LABEL_PROGRAM, ""), metadata, binaries)


def _shared_values() -> Callable[[dict], dict]:
    """A json object_hook that makes equal short strings and integers one object: a big
    program's metadata repeats the same register names, kinds, offsets and addresses
    hundreds of thousands of times (Redis: 27 MB of JSON, 113 MB parsed as is, 75 MB
    with this), and the plugin holds it for the whole migration."""
    ints: dict[int, int] = {}

    def hook(d: dict) -> dict:
        for k, v in d.items():
            t = type(v)
            if t is str and len(v) < 64:
                d[k] = sys.intern(v)
            elif t is int:
                d[k] = ints.setdefault(v, v)
            elif t is list:
                for i, x in enumerate(v):
                    if type(x) is str and len(x) < 64:
                        v[i] = sys.intern(x)
                    elif type(x) is int:
                        v[i] = ints.setdefault(x, x)
        return d

    return hook


def preflight(program: Program, src_isa: str, dst_isa: str) -> list[str]:
    """Reasons why this program cannot be recoded from src_isa to dst_isa (empty: it can)."""
    problems: list[str] = []
    if program.md.schema != TOOLCHAIN_SCHEMA:
        problems.append(f"metadata schema {program.md.schema!r} is not {TOOLCHAIN_SCHEMA}")
    for isa in (src_isa, dst_isa):
        if isa not in program.binaries:
            problems.append(f"the image lacks the {isa} variant of {program.path}")
    if not program.md.checks.park_points_clean:
        problems.append("the toolchain's build-time check of the park points failed")
    problems += _engine_problems(program, src_isa, dst_isa)
    return problems


def _engine_problems(program: Program, src_isa: str, dst_isa: str) -> list[str]:
    """What this version of recode cannot transform yet, said before anything is frozen."""
    try:
        from docker_hmigrate.recode import transform
    except ImportError:
        return ["the recode transformation of thread stacks and process state is not "
                "available in this version of docker-hmigrate"]
    return transform.preflight_problems(program, src_isa, dst_isa)


# Images of the process itself, which recode writes; every other image of a checkpoint
# (mounts, cgroups, namespaces, files) describes the host and the container around it.
PROCESS_IMAGES = ("core-", "mm-", "pagemap-", "pages-", "pstree.img")


def template_facts(template_dir: Path):
    """What the target host gives a fresh process (special mappings, vDSO bytes, auxv
    values, a native thread's register layout), from a checkpoint taken there."""
    from docker_hmigrate.criu.imageset import ImageSet
    from docker_hmigrate.recode import process

    images = ImageSet.load(template_dir)
    pid = images.root_pid
    areas = process.special_areas(images, pid)
    facts = process.TargetFacts(maps={k: [(v.start, v.end) for v in vs]
                                      for k, vs in areas.items()})
    mem = images.memory(pid)
    for v in areas["vdso"]:
        try:
            facts.vdso = mem.read(v.start, v.end - v.start)
        except LookupError:
            facts.vdso = None
    saved = list(images.mm(pid).mm_saved_auxv)
    facts.auxv = {saved[i]: saved[i + 1] for i in range(0, len(saved) - 1, 2)}
    platform = facts.auxv.get(process.AT["AT_PLATFORM"])
    if platform:
        try:
            raw = mem.read(platform, 32)
            facts.platform = raw[:raw.index(b"\0") + 1]
        except (LookupError, ValueError):
            facts.platform = None
    core = images.core(pid)
    own = by_criu_march(core.mtype)
    facts.thread = own.native_thread(core) if own else None
    return facts


def merge_into_template(recoded: Path, template: Path) -> None:
    """Put the recoded process into the target's own checkpoint of the same container.

    The template is a checkpoint of the program started on the target with the same
    configuration: its host-describing images (mount tree, cgroups, namespaces) are what
    the target's CRIU expects, whatever the kernels and daemons differ in."""
    from docker_hmigrate.recode import template as tpl

    tpl.prepare(recoded, template)  # pids, shared memory ids, epoll data lined up
    for f in template.iterdir():
        if f.name.startswith(PROCESS_IMAGES):
            f.unlink()
    for f in recoded.iterdir():
        if f.name.startswith(PROCESS_IMAGES):
            shutil.copy2(f, template / f.name)


def merge_host_facts(recoded: Path, template: Path, out: Path,
                     inspect: dict[str, Any]) -> dict[str, int]:
    """The recoded source set with the target host's facts (mount tree, cgroups) taken
    from the inert template's checkpoint (template.py), into `out`; inspect: the source
    container's (its bind mounts and volumes). See recode/hostimages.py."""
    from docker_hmigrate.recode import hostimages

    return hostimages.merge_host_facts(recoded, template, out,
                                       hostimages.user_paths(inspect))


def recode(src_dir: Path, dst_dir: Path, program: Program, src_isa: str, dst_isa: str,
           target=None) -> dict[str, float]:
    """Rewrite the image set in src_dir for dst_isa into dst_dir; per-phase seconds.

    target: process.TargetFacts of the target host (template_facts of a checkpoint taken
    there): its special mappings, vDSO, auxv values and native register layout.
    """
    problems = preflight(program, src_isa, dst_isa)
    if problems:
        raise errors.NotMigratableCrossISA("cannot recode: " + "; ".join(problems))
    from docker_hmigrate.recode import transform

    started = time.monotonic()
    timings = transform.recode_images(src_dir, dst_dir, program, src_isa, dst_isa, target)
    timings["total"] = time.monotonic() - started
    return timings
