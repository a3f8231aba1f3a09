"""What a migration does differently between hosts of one ISA and of two.

`Migration` (migrate.py) keeps the phases in one list and calls these hooks at fixed
points; no phase asks which ISA it moves to. `SameIsa`: the checkpoint streams from host
to host (by the fast path where it applies) and nothing is transformed. `CrossIsa`
(docs/design.md, "Heterogeneous ISA"): the program's own checks, the target's variant of
the image, a template checkpoint taken on the target, every thread parked at an
equivalence point before the dump, the images recoded here and merged into the template,
the restored threads let go.

The hooks, in the order the phases call them: start and checks (validate), image and
prepare (prepare target), open_checkpoint_link (the move's helpers, before the freeze),
before_freeze (park), move_checkpoint (move), transform (recode), after_restore
(restore), and on a rollback undo and release_source; staging_ids and close at the end.
What a hook makes that a rollback must undo is recorded in the migration's `Created`.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Protocol

from docker_hmigrate import (
    engine,
    errors,
    fastpath,
    park,
    recode,
    safepoint,
    template,
    transfer,
)
from docker_hmigrate.engine import Host
from docker_hmigrate.output import Reporter
from docker_hmigrate.polling import wait_limit
from docker_hmigrate.spec import ContainerSpec
from docker_hmigrate.validate import Check, cross_isa_checks

# How long a rollback waits for a template step in flight (a container start or a dump on a
# slow, emulated target) before it goes on; close() removes the container once it exists.
FACTS_GRACE = 300.0
# How long prepare waits for the target's facts (an inert template's checkpoint: seconds,
# even on an emulated host). Past it the target's daemon or CRIU is stuck: the move is
# refused before anything is frozen. HMIGRATE_TEMPLATE_TIMEOUT (seconds) overrides it.
FACTS_TIMEOUT = 300.0
# How long the park waits for the stack reader made in the background (a stuck source
# daemon: the probe container's path, bounded by the engine's own limits, is taken).
READER_WAIT = 60.0


class Moving(Protocol):
    """What a strategy uses of the migration it serves (migrate.Migration), so that this
    module needs nothing of migrate's."""

    src: Host
    dst: Host
    opts: Any  # MigrationOptions
    rep: Reporter
    inspect: dict[str, Any]
    spec: ContainerSpec
    checkpoint: str
    created: Any  # Created: what a rollback undoes
    frozen_at: float
    bytes_moved: int
    bytes_sent: int
    transfers: list[tuple[transfer.FolderLink, str, str]]
    fast_link: int

    def pull(self, ph: Any, ref: str) -> None: ...

    def open_link(self, what: str, src_bind: str, dst_bind: str, src_sub: str,
                  dst_sub: str) -> None: ...

    def enter_link(self, link: transfer.FolderLink) -> transfer.FolderLink: ...

    def fast_prepare(self) -> str | None: ...

    def fast_restore_prepare(self) -> str | None: ...


class SameIsa:
    """A move between hosts of the same ISA: the images go over as they are."""

    def __init__(self, m: Moving):
        self.m = m

    def start(self) -> None:
        """As validation begins: work on the target that may overlap it (none here)."""

    def checks(self) -> list[Check] | None:
        """Validations of this kind of move (None: validate's own "same ISA" check)."""
        return None

    def image(self, ph) -> None:
        """The very image on the target: there already, copied from the source, or pulled."""
        m = self.m
        ref, image_id = m.spec.image, m.inspect["Image"]
        if m.dst.image_present(image_id):
            named = m.dst.image_present(ref)
            if named is None:
                m.dst.api.tag(image_id, *split_ref(ref))
            elif named["Id"] != image_id:
                # The target knows the name as another image: create from the exact one.
                m.spec.body["Image"] = image_id
            return
        if m.src.image_present(image_id):
            ph.update(f"copying image {ref}")
            moved = transfer.copy_image(m.src, m.dst, image_id)
            m.dst.api.tag(image_id, *split_ref(ref))
            ph.update(f"image copied ({moved.bytes / 1e6:.1f} MB)")
            return
        m.pull(ph, ref)

    def prepare(self, ph) -> None:
        """On the target, before its container is created (networks and volumes exist)."""

    def open_checkpoint_link(self, target: dict[str, Any]) -> None:
        """The checkpoint's stream, one of the move's: from a tmpfs folder of the source
        (fast path, issue 11) or dockerd's checkpoints folder, into the target's."""
        m = self.m
        src_folder = m.fast_prepare() or m.src.checkpoint_dir(m.inspect["Id"])
        dst_folder = m.fast_restore_prepare() or m.dst.checkpoint_dir(target["Id"])
        m.fast_link = len(m.transfers)
        m.open_link("checkpoint", src_folder, dst_folder, m.checkpoint, "")

    def before_freeze(self) -> None:
        """Bring the program to where it can be dumped (nothing to do here)."""

    def move_checkpoint(self, pool: ThreadPoolExecutor) -> list[Future]:
        """Streams of the checkpoint beside the move's transfers (none: it is one)."""
        return []

    def transform(self) -> None:
        with self.m.rep.phase("recode") as ph:
            ph.skip(f"same ISA ({self.m.src.isa})")

    def restore_failed(self) -> None:
        """The target's restore failed (before the rollback)."""

    def after_restore(self, cid: str) -> None:
        """The target container runs: what it needs to go on (nothing here)."""

    def undo(self) -> None:
        """Rollback: remove what prepare made on the target."""

    def release_source(self) -> None:
        """Rollback: whatever before_freeze asked of the source, withdrawn."""

    def staging_ids(self) -> list[str]:
        """Containers besides the source whose checkpoints containerd stages."""
        return []

    def close(self) -> None:
        """Always, at the end: local files."""


class CrossIsa(SameIsa):
    """A move to another ISA: a program built by hmigrate-cc, parked, recoded here."""

    def __init__(self, m: Moving):
        super().__init__(m)
        self.program: recode.Program | None = None
        self.link: transfer.FolderLink | None = None  # downloaded, recoded, uploaded
        self.workdir: Path | None = None  # the images, locally (mode 0700)
        self.template_id = ""  # the template container, even once removed
        self.facts: template.Facts | None = None  # the target's facts (template.py)
        self._facts_call: Future | None = None  # taking them, from start()
        self._facts_stop = threading.Event()  # a rollback gives the template up
        self._movable = False  # the program's own checks passed: worth a template
        # a helper on the source that reads the parked stacks before the freeze (an exec
        # in it costs 0.07 s here, 1-1.7 s on the emulated aarch64 host, against 0.2 s
        # and 4 s for a probe container); made beside the template, in the background
        self._reader_call: Future | None = None

    def checks(self) -> list[Check] | None:
        m = self.m
        checks, self.program = cross_isa_checks(m.src, m.dst, m.inspect, m.spec)
        self._movable = self.program is not None and all(c.ok or c.warning for c in checks)
        return checks

    def image(self, ph) -> None:
        """The target ISA's variant of the image, by name (the source's image is the other
        ISA's variant: never reused; a target may hold both, e.g. loaded by a
        multi-platform build)."""
        m = self.m
        ref = m.spec.image
        m.pull(ph, ref)
        got = m.dst.image_present(ref) or {}
        if got.get("Architecture") != m.dst.platform.split("/")[1]:
            raise errors.ImageUnavailable(
                f"{ref} on {m.dst.name} is {got.get('Architecture')}, not "
                f"{m.dst.platform}", hint="push a manifest list with both variants")
        m.spec.body["Image"] = ref

    def start(self) -> None:
        """The target host's facts (mount tree, cgroups, vDSO, auxv, register layout)
        from a checkpoint of the inert template (template.py): the source's configuration
        with empty volumes, no network, an empty image, a stub of the target ISA as its
        only process. Nothing of the user's program runs on the target; the process
        itself, its files and sockets come from the source's checkpoint
        (recode.merge_host_facts). Taken in the background while the hosts are validated
        (it needs neither the image nor anything validation decides; prepare waits for
        it) and cached per (target, configuration): a second move pays nothing."""
        m = self.m
        if self._facts_call is not None or not self._movable:
            return  # a move refused by its own checks makes nothing on the target
        # mode 0700; named after the checkpoint: a recovery removes it (recover.py)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{m.checkpoint}-"))
        body = copy.deepcopy(m.spec.body)  # the main thread edits the spec meanwhile
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="template")
        self._facts_call = pool.submit(
            template.target_facts, m.dst, body, m.inspect, self.workdir / "template",
            f"hmigrate-template-{m.checkpoint}",
            record=lambda cid: setattr(m.created, "template", cid), stop=self._facts_stop,
            keep=True)  # removed at the migration's end, not while prepare waits
        self._reader_call = pool.submit(self._start_reader)
        pool.shutdown(wait=False)

    def _start_reader(self) -> fastpath.Agent:
        agent = fastpath.Agent(self.m.src)
        try:
            agent.start()
        except BaseException:
            agent.close()
            raise
        return agent

    def _reader(self) -> fastpath.Agent | None:
        """The stack reader if it started (else the stacks are read by a probe)."""
        call = self._reader_call
        if call is None:
            return None
        try:
            return call.result(timeout=READER_WAIT)
        except Exception:  # noqa: BLE001 - a probe container does the same, slower
            return None

    def prepare(self, ph) -> None:
        """The target's facts, as start() takes them (or now, if it was not called)."""
        m = self.m
        if self._facts_call is None:  # --force past a failed check of the program
            self._movable = True
            self.start()
        ph.update("target facts (inert template)")
        waited = time.monotonic()
        limit = wait_limit("HMIGRATE_TEMPLATE_TIMEOUT", FACTS_TIMEOUT)
        try:
            self.facts = self._facts_call.result(timeout=limit)
        except FutureTimeout:
            engine.impatient(m.dst.api)  # and the rollback waits no longer for it
            raise errors.HostUnreachable(
                f"{m.dst.name} did not checkpoint the inert template in {limit:g} s: its "
                "daemon or CRIU is stuck; nothing was frozen",
                hint=f"check `docker --context {m.dst.name} info` and the host's kernel log "
                     "(soft lockups); HMIGRATE_TEMPLATE_TIMEOUT=SECONDS waits longer") from None
        self.template_id = self.facts.container_id
        m.rep.set("template", "cached" if self.facts.cached else "taken")
        # the configuration's own template, or its host template with the user's mounts
        # grafted in (template.target_facts)
        m.rep.set("template_facts", "derived" if self.facts.derived else "own")
        # what taking them cost, and what of it prepare waited for (the rest overlapped
        # validation)
        m.rep.set("template_seconds", {"total": round(self.facts.seconds, 3),
                                       "waited": round(time.monotonic() - waited, 3)})

    def open_checkpoint_link(self, target: dict[str, Any]) -> None:
        m = self.m
        self.link = m.enter_link(transfer.FolderLink(
            "checkpoint", m.src, m.src.checkpoint_dir(m.inspect["Id"]),
            m.dst, m.dst.checkpoint_dir(target["Id"]), private=True,
            compress=m.opts.compress))

    def before_freeze(self) -> None:
        """Bring every thread to an equivalence point before the dump."""
        m = self.m
        if self.program is None:  # --force cannot make up for a program recode can't read
            raise errors.NotMigratableCrossISA(
                f"{m.opts.container} cannot move from {m.src.isa} to {m.dst.isa}: "
                "its image was not built by the multi-ISA toolchain")
        with m.rep.phase("park") as ph:
            m.frozen_at = time.monotonic()  # the program stops making progress here
            m.created.source_parked = True  # from the first signal: a request may stand
            # parked where the recode's stack checks pass, read live (recode/livecheck.py)
            parked = safepoint.park_where_translatable(
                m.src, m.inspect["Id"], self.program, m.dst.isa, report=ph.update,
                warn=m.rep.warn,
                bound=wait_limit("HMIGRATE_SAFE_POINT_WAIT", safepoint.SAFE_POINT_WAIT),
                label=m.opts.container, reader=self._reader())
            m.rep.set("park_tries", int(parked["tries"]))
            ph.update(f"{parked['processes']} processes parked" if "processes" in parked
                      else f"{parked.get('threads', '?')} thread(s) parked")

    def move_checkpoint(self, pool: ThreadPoolExecutor) -> list[Future]:
        """The source's images, downloaded here to be recoded."""
        (self.workdir / "source").mkdir(mode=0o700)
        return [pool.submit(self.link.download, self.m.checkpoint, self.workdir / "source")]

    def transform(self) -> None:
        m = self.m
        with m.rep.phase("recode") as ph:
            out, tpl = self.workdir / "target", self.workdir / "template"
            facts = recode.template_facts(tpl)
            timings = recode.recode(self.workdir / "source", out, self.program,
                                    m.src.isa, m.dst.isa, facts)
            merged = self.workdir / "merged"  # the source's images + the target's facts
            recode.merge_host_facts(out, tpl, merged, m.inspect)
            m.rep.set("recode_seconds", {k: round(v, 4) for k, v in timings.items()})
            moved = self.link.upload(merged, m.checkpoint)
            m.bytes_moved += moved.bytes
            m.bytes_sent += self.link.sent[0]
            ph.update(f"{m.src.isa} -> {m.dst.isa} in {timings['total']:.3f}s")

    def after_restore(self, cid: str) -> None:
        """Restored parked, as it was dumped: let it go on."""
        park.resume_all(self.m.dst, cid, self.program.park_protocol)

    def _end_facts(self) -> None:
        """The background template, if still being taken: no further step begun, its
        step in flight waited for (its container is then removed by it, or below)."""
        if self._facts_call is not None and not self._facts_call.done():
            self._facts_stop.set()
            # a daemon found stuck will not finish that step: not waited for
            wait([self._facts_call], timeout=0 if engine.stuck(self.m.dst.api) else FACTS_GRACE)

    def undo(self) -> None:
        """The template container (its checkpoint was downloaded, or the move failed)."""
        self._end_facts()
        created = self.m.created
        if created.template:
            template.remove(self.m.dst, created.template)  # with its scratch volumes
            created.template = None

    def restore_failed(self) -> None:
        """A template whose facts a restore failed with is not trusted again: the next
        move takes a new one, the configuration's own if they were derived."""
        if self.facts is not None:
            template.forget(self.facts.key)
            if self.facts.derived:  # a graft may be what failed: its own template next time
                template.mark_underivable(self.facts.config_key)

    def release_source(self) -> None:
        if self.m.created.source_parked:
            try:
                park.resume_all(self.m.src, self.m.inspect["Id"], self.program.park_protocol)
            except errors.ContainerStopped:
                pass  # its program ended: no process is left holding the request

    def staging_ids(self) -> list[str]:
        # a cross-ISA restore's images are the template's (its mounts name the template)
        return [self.template_id] if self.template_id else []

    def close(self) -> None:
        try:
            self._end_facts()
            if self._reader_call is not None:  # once started (or failed), removed
                reader = self._reader()  # waits for a start in flight
                if reader is not None:
                    reader.close()
                self._reader_call = None
            if self.m.created.template:  # taken after a rollback had looked (grace exceeded)
                template.remove(self.m.dst, self.m.created.template)
                self.m.created.template = None
        finally:  # whatever failed above, the local images go
            if self.workdir and os.environ.get("HMIGRATE_KEEP_IMAGES") == "1":
                # debugging a recode: the images stay, readable by root only (0700)
                self.m.rep.warn(f"cross-ISA images kept in {self.workdir} "
                                f"(HMIGRATE_KEEP_IMAGES=1): they hold process memory")
            elif self.workdir:  # checkpoint images hold process memory
                shutil.rmtree(self.workdir, ignore_errors=True)


def for_hosts(m: Moving) -> SameIsa:
    """The strategy for the migration's two hosts."""
    return CrossIsa(m) if m.src.isa != m.dst.isa else SameIsa(m)


def split_ref(ref: str) -> tuple[str, str]:
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        return ref, "latest"
    return name, tag
