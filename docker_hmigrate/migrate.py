"""The migration pipeline, phase by phase (docs/design.md, "The migration, phase by phase").

    1 validate   2 prepare target   3 checkpoint (freeze)   4 move   5 recode
    6 restore + verify   7 commit, or roll back

`Migration._run_phases` is the one place where the phases are put in order; each phase
is a method below it. What differs between a move to the same ISA and to another one
(park, template checkpoint, recode) is the strategy's (strategy.py: SameIsa, CrossIsa),
called at fixed points: no phase asks which kind of move it is. Whatever the migration
creates is recorded in `Created`, so that a failure at any point removes it and, once the
source may be frozen, restores the source from its own checkpoint: after every attempt
the container runs somewhere.

The commit point (docs/plugin.md, "The commit point"), enforced in `_settle` only: before
the target container has started, every failure or interrupt rolls back and the source
resumes; once it has started it is the truth: an interrupt, a failing or hanging
post-restore hook or any other failure keeps the target and cleans up the source. Only a
target that dies during verify makes the source resume (what it accepted is lost).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import docker.types
from tenacity import (
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_fixed,
)

from docker_hmigrate import (
    direct,
    errors,
    fastpath,
    hosts,
    interrupts,
    lazy,
    recover,
    strategy,
    transfer,
)
from docker_hmigrate.criu import log as criu_log
from docker_hmigrate.criu import stats as criu_stats
from docker_hmigrate.engine import (
    MIGRATION_LABEL,
    DaemonUnreachable,
    Host,
    api_error_text,
)
from docker_hmigrate.output import Reporter
from docker_hmigrate.polling import poll, wait_limit, watch
from docker_hmigrate.spec import ContainerSpec, target_spec
from docker_hmigrate.validate import (  # cross-ISA checks moved there: kept for one release
    Validation,
    address_problem,
    anonymous_shared,  # noqa: F401
    cross_isa_checks,  # noqa: F401
    image_check,
    validate,
)

HOOK_POINTS = ("pre-restore", "post-restore", "failed-restore")
# Test-only fault injection (tests/test_faults_lab.py): HMIGRATE_TEST_FAULT=POINT:ACTION
# (several, separated by commas), read in Migration._fault only. POINT is before:PHASE or
# during:checkpoint|move|restore|verify|rollback; ACTION is sigint, sigint2 (one Ctrl-C as
# a terminal delivers it: twice), sigterm, fail or kill-target.
FAULT_ENV = "HMIGRATE_TEST_FAULT"
# Docker's rule for container names.
NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
# How long a rollback waits for a daemon call still in flight (a dump, a restore).
DAEMON_CALL_WAIT = 600.0
# Dumps CRIU refuses for a passing reason (criu.log.transient) are tried this many times.
DUMP_ATTEMPTS = 4
# How long a rollback waits for a target its own daemon is removing (a --rm container).
REMOVAL_WAIT = 30.0
# How long a target that stopped answering is waited for, when what it did decides what
# happens next (did the restore start the container?) or what it holds must be removed.
TARGET_ANSWER_WAIT = 30.0
# Before the freeze every call is short (inspections, probes, creating containers, an
# inert template's checkpoint): a daemon that has not answered one in this long is stuck,
# and the move is refused with nothing frozen (a wedged daemon accepts connections and
# never answers: the default call timeout, sized for dumps and restores, is 600 s).
# Seconds; HMIGRATE_ANSWER_TIMEOUT overrides it.
ANSWER_TIMEOUT = 120.0
# The clean-up at the end (helpers, agents, labelled leftovers): removals only.
CLEANUP_TIMEOUT = 60.0


class _PassingRefusal(Exception):
    """CRIU refused a dump for a reason about the moment (criu.log.transient)."""

    def __init__(self, why: str, meaning: str, log: str) -> None:
        super().__init__(why)
        self.why, self.meaning, self.log = why, meaning, log


@dataclass
class MigrationOptions:
    container: str
    target_name: str | None = None
    keep_source: bool = False
    force: bool = False
    hooks: dict[str, str] = field(default_factory=dict)  # hook point -> shell command
    verify_seconds: float = 1.0
    hook_timeout: float = 60.0
    lazy: bool = False  # post-copy (lazy.py): checked before the freeze
    direct: bool = False  # the pages straight to the target's page server (direct.py)
    compress: str = "none"  # the move's archives on the wire (transfer.COMPRESSIONS)

    def check(self) -> None:
        """Refuse bad option values before anything is touched (a usage error)."""
        for opt, value, low in (("--verify-seconds", self.verify_seconds, 0.0),
                                ("--hook-timeout", self.hook_timeout, 0.001)):
            if not math.isfinite(value) or value < low or value > 86400:
                raise errors.UsageError(
                    f"{opt} {value!r} is not a valid number of seconds",
                    hint=f"give {opt} a finite number of seconds from {low:g} to 86400")
        if self.target_name is not None and not NAME_RE.match(self.target_name):
            raise errors.UsageError(
                f"--name {self.target_name!r} is not a valid container name",
                hint="use letters, digits and _ . - (starting with a letter or digit), "
                     "at least 2 characters")
        bad = [p for p in self.hooks if p not in HOOK_POINTS]
        if bad:
            raise errors.UsageError(f"unknown hook point(s): {', '.join(bad)}")
        if self.lazy and self.direct:
            raise errors.UsageError(
                "--lazy and --direct cannot be given together",
                hint="--lazy leaves the memory on the source and pulls it afterwards; "
                     "--direct sends it to the target during the dump: choose one")
        if self.compress not in transfer.COMPRESSIONS:
            raise errors.UsageError(
                f"--compress {self.compress!r} is not a compression this plugin sends",
                hint=f"use one of: {', '.join(transfer.COMPRESSIONS)}")


@dataclass
class Created:
    """What this migration made, to undo on failure."""

    target_container: str | None = None
    volumes: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    source_frozen: bool = False  # set BEFORE the dump is asked for: "maybe frozen"
    source_parked: bool = False  # cross-ISA: the park request is pending on the source
    template: str | None = None  # cross-ISA: the inert template container (template.py)


class Migration:
    def __init__(self, src: Host, dst: Host, opts: MigrationOptions, reporter: Reporter):
        self.src, self.dst, self.opts, self.rep = src, dst, opts, reporter
        self.checkpoint = f"hmigrate-{uuid.uuid4().hex[:10]}"
        self.created = Created()
        self.target_id: str | None = None  # kept for the report once `created` is cleared
        self.inspect: dict[str, Any] = {}
        self.spec: ContainerSpec | None = None
        self.validation: Validation | None = None
        self.bytes_moved = 0
        self.bytes_sent = 0  # what crossed to the target: bytes_moved, or less compressed
        self.frozen_at = 0.0
        self.downtime = 0.0
        self._links = contextlib.ExitStack()
        self._entering: list[Future] | None = None  # links being opened (_open_links)
        self.transfers: list[tuple[transfer.FolderLink, str, str]] = []  # the move's streams
        self._progress_lock = threading.Lock()
        self.strategy = strategy.for_hosts(self)  # same ISA, or across ISAs
        # --- fast checkpoint path (fastpath.py, issue 11) ---
        self._fast: fastpath.FastCheckpoint | None = None
        self._fast_restore: fastpath.FastRestore | None = None  # target: tmpfs + links
        self.fast_link = -1  # index of the checkpoint stream in self.transfers
        self.checkpoint_path = "api"  # or "runc": how the source was dumped
        self._checkpoint_record = None  # the checkpoint phase, for CRIU's figures
        self._held_policy: dict[str, Any] | None = None  # the source's restart policy
        self._dump_returned = 0.0  # when runc checkpoint returned (fast path)
        # --- post-copy (--lazy, lazy.py) ---
        self._lazy_target: lazy.LazyTarget | None = None
        self._lazy_address = ""  # the source's page server: address, port
        self._lazy_port = 0
        self._lazy_plans: list[lazy.PagesPlan] = []  # pages images moved as their runs
        # --- --direct (direct.py) ---
        self._page_server: direct.PageServer | None = None
        self._source_ended = False  # the frozen source ended at the restore
        self.target_started = False  # the commit point (see _settle)
        self.started_at = time.time()
        self.committed = False
        self.target_started_at = 0.0
        self._checkpoint_call: Future | None = None  # the dump, running in the daemon
        self._restore_call: Future | None = None  # the restore, running in the daemon
        self._restore_unknown: errors.RollbackFailed | None = None  # target never answered
        self._lock: str | None = None  # the lock container's id on the source
        self.restore_log: Path | None = None
        self._restore_watch: tuple[Future, threading.Event] | None = None
        self._keep_ip: dict[str, str] = {}  # network -> the address kept there
        self.warnings: list[str] = []
        for host in (src, dst):  # every helper and probe made for this migration, and
            # who made it: a recovery or a later move removes them if this process dies
            host.labels = {MIGRATION_LABEL: self.checkpoint, recover.OWNER_LABEL: recover.owner()}

    # --- the pipeline --------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.opts.check()
        started = time.monotonic()
        self.inspect = self.src.inspect(self.opts.container)
        name = self.opts.target_name or self.inspect["Name"].lstrip("/")
        self.spec = target_spec(self.inspect, name, self._target_image())
        self.rep.set("container", self.inspect["Name"].lstrip("/"))
        self.rep.set("container_id", self.inspect["Id"])
        self.rep.set("source", self.src.name)
        self.rep.set("checkpoint", self.checkpoint)
        self.rep.set("target", self.dst.name)
        self.rep.set("source_isa", self.src.isa)
        self.rep.set("target_isa", self.dst.isa)
        try:
            self._take_lock()
            self._run_phases()
        finally:
            try:
                with interrupts.shielded(), contextlib.ExitStack() as bounded:
                    for host in (self.src, self.dst):  # removals: a stuck daemon is not waited for
                        bounded.enter_context(host.answer_within(CLEANUP_TIMEOUT))
                    self._stop_restore_watch()
                    self._links.close()  # helper containers, on both hosts
                    if self._lazy_target:  # post-copy: daemon and page server, if still up
                        with contextlib.suppress(docker.errors.APIError):
                            self._lazy_target.stop()
                        if self._fast:
                            with contextlib.suppress(docker.errors.APIError):
                                lazy.stop_pages(self._fast)
                    if self._fast:  # fast path (issue 11): CRIU's figures, then agent and images
                        with contextlib.suppress(docker.errors.APIError):
                            self._fast.read_stats()
                        self._fast.close()
                    if self._page_server:  # --direct: listening still if no dump came
                        with contextlib.suppress(docker.errors.APIError):
                            self._page_server.stop()
                    if self._fast_restore:
                        self._fast_restore.close()
                    for host in (self.src, self.dst):  # whatever an interrupt may have left
                        with contextlib.suppress(docker.errors.APIError):
                            host.remove_labelled(MIGRATION_LABEL, self.checkpoint)
                    self._release_lock()
            finally:  # whatever failed above, the local images (process memory) go
                with interrupts.shielded(), contextlib.ExitStack() as bounded:
                    for host in (self.src, self.dst):
                        bounded.enter_context(host.answer_within(CLEANUP_TIMEOUT))
                    self.strategy.close()  # cross-ISA
        return self._result(time.monotonic() - started)

    def _run_phases(self) -> None:
        """The phases, in order. `_settle` decides what a failure means."""
        steps: list[tuple[str, Callable[[], None]]] = [
            ("validate", self.phase_validate),
            ("prepare", self.phase_prepare_target),
            ("park", self.strategy.before_freeze),  # cross-ISA: threads to equivalence points
            ("checkpoint", self.phase_checkpoint),
            ("move", self.phase_move),
            ("recode", self.phase_recode),
            ("pre-restore", lambda: self._hook("pre-restore")),
            ("restore", self.phase_restore),  # the commit point: the target has started
            ("verify", self.phase_verify),
            ("pages", self.phase_pages),  # --lazy: the commit point, every page arrived
            ("post-restore", lambda: self._hook("post-restore")),
            ("commit", self.phase_commit),
        ]
        try:
            for name, step in steps:
                self._fault(f"before:{name}")
                with self._answer_limit(name in ("validate", "prepare")):
                    step()
        except BaseException as exc:  # noqa: BLE001 - interrupts too: they are settled here
            self._settle(exc)

    def _answer_limit(self, before_freeze: bool) -> contextlib.AbstractContextManager:
        """Before the freeze, both daemons answer each call within HMIGRATE_ANSWER_TIMEOUT
        (ANSWER_TIMEOUT)."""
        stack = contextlib.ExitStack()
        if before_freeze:
            limit = wait_limit("HMIGRATE_ANSWER_TIMEOUT", ANSWER_TIMEOUT)
            for host in (self.src, self.dst):
                stack.enter_context(host.answer_within(limit))
        return stack

    def _settle(self, exc: BaseException) -> None:
        """The commit rule, in this one place; always raises.

        Before the target has started: roll back, the source resumes. Once it has started,
        it is the truth: keep it, clean up the source, and report what went wrong (an
        interrupt, a hook, an error) with its own exit code. Only a target that died
        during verify rolls back, and the message says what is lost.
        """
        with interrupts.shielded(consume=True):
            if not self.target_started and self._restore_call is not None:
                # interrupted while the daemon restores: its outcome decides
                self._await(self._restore_call, "restore")
                if self._restore_call.done() and isinstance(
                        self._restore_call.exception(), DaemonUnreachable):
                    # the request was sent, its answer lost: the container may run there
                    self._learn_restore_outcome()
                elif self._restore_call.done() and self._restore_call.exception() is None \
                        and self._lazy_target is None \
                        and self._running(self.dst, self.created.target_container):
                    self._mark_started()
            if not self.target_started or isinstance(exc, errors.TargetDied):
                touched = self.created != Created()
                self.roll_back(exc)
                if isinstance(exc, KeyboardInterrupt) and touched:
                    raise errors.Interrupted(
                        f"interrupted before the commit point: rolled back, "
                        f"{self.opts.container} runs on {self.src.name}") from exc
                raise exc
            state = self._target_state()
            if state is not None and not state.get("Running"):
                died = errors.TargetDied(self._died_message(state))
                self.roll_back(died)
                raise died from exc
            if state is None:
                self._keep_source_checkpoint()
                raise errors.RollbackFailed(
                    f"the migration failed after the container started on {self.dst.name} "
                    f"({_describe(exc)}) and {self.dst.name} does not answer: the source is "
                    f"kept stopped with its checkpoint {self.checkpoint}",
                    hint=f"if it does not run on {self.dst.name}: docker start --checkpoint "
                         f"{self.checkpoint} {self.opts.container} (on {self.src.name})",
                ) from exc
            self.phase_commit()
        where = f"the container runs on {self.dst.name} (source cleaned up)"
        if isinstance(exc, KeyboardInterrupt):
            raise errors.Interrupted(f"interrupted after the commit point: {where}") from exc
        if isinstance(exc, errors.HmigrateError):
            raise type(exc)(f"{exc.message}; {where}",
                            hint=exc.hint, exit_code=exc.exit_code) from exc
        raise errors.HmigrateError(f"{_describe(exc)}; {where}") from exc

    def _fault(self, point: str) -> None:
        """Test-only fault injection at `point` (FAULT_ENV); nothing unless it is set."""
        faults = dict(f.rpartition(":")[::2] for f in os.environ.get(FAULT_ENV, "").split(",")
                      if ":" in f)
        action = faults.get(point)
        if not action:
            return
        if action in ("sigint", "sigint2", "sigterm"):
            sig = signal.SIGTERM if action == "sigterm" else signal.SIGINT
            for _ in range(2 if action == "sigint2" else 1):
                os.kill(os.getpid(), sig)
            time.sleep(0.5)  # the handler runs here (and raises, unless shielded)
        elif action == "fail":
            raise errors.HmigrateError(f"fault injected at {point}")
        elif action == "sigkill":  # killed outright: nothing of ours runs after this
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "kill-target" and self.created.target_container:
            self.dst.api.kill(self.created.target_container)
            time.sleep(0.3)

    def _take_lock(self) -> None:
        """A per-container lock: a never-started container on the source named after the
        container's id. Creating it is atomic (409 when it exists). Its labels hold what a
        recovery needs if this process is killed outright (recover.lock_labels); a lock
        whose process is gone is recovered first (recover.Recovery), then taken."""
        cid = self.inspect["Id"]
        name = recover.lock_name(cid)
        for attempt in (1, 2):
            policy = (self.inspect.get("HostConfig") or {}).get("RestartPolicy") or {}
            labels = recover.lock_labels(cid, self.checkpoint, self.dst.name,
                                         self.spec.name if self.spec else "", policy,
                                         self.opts.keep_source, self.opts.direct)
            try:
                with interrupts.shielded():
                    self._lock = self.src.api.create_container(
                        self.src.scratch_image, command=["hmigrate-lock-never-started"],
                        name=name, labels=labels,
                        host_config=self.src.api.create_host_config(network_mode="none"),
                        network_disabled=True)["Id"]
                break
            except docker.errors.APIError as exc:
                if exc.status_code != 409 or attempt == 2:
                    raise
                lock = recover.read_lock(self.src, cid)
                if lock is not None and not lock.stale:
                    raise errors.ContainerBusy(
                        f"{self.opts.container} is being migrated already ({lock.holder})",
                        hint="wait for that migration to end; if it is gone, remove the "
                             f"lock: docker rm {name}") from None
                if lock is not None:
                    self._recover(lock)
        for host in (self.src, self.dst):  # what other killed migrations left
            with contextlib.suppress(docker.errors.APIError):
                recover.sweep(host)

    def _recover(self, lock: recover.Lock) -> None:
        """A migration of this container was killed outright: undo what it left before
        this one starts (its helpers, its tmpfs images, the restart policy it held)."""
        if not self.inspect["State"].get("Running"):
            raise errors.RollbackFailed(
                f"{self.opts.container} was stopped by a migration that was killed "
                f"({lock.holder})",
                hint=f"run `docker --context {self.src.name} hmigrate recover "
                     f"{self.opts.container}`: it restores the container from its dump, or "
                     "finishes the move if the target runs it")
        done = recover.Recovery(self.src, self.inspect, lock, self._open_host,
                                lambda _line: None).run()
        # what the killed migration had changed (its restart policy) is put back: the
        # target is made from the container as it is now
        self.inspect = self.src.inspect(self.inspect["Id"])
        if self.spec is not None:
            self.spec = target_spec(self.inspect, self.spec.name, self._target_image())
        msg = (f"an earlier migration of {self.opts.container} was killed ({lock.holder}): "
               f"recovered first ({'; '.join(done['actions'])})")
        self.rep.warn(msg)
        self.warnings.append(msg)

    def _open_host(self, name: str) -> Host:
        """The recorded target of a killed migration: this move's hosts by name, or a
        context of that name."""
        for host in (self.dst, self.src):
            if host.name == name:
                return host
        return Host(name, hosts.connect(hosts.resolve_target(name, hosts.GlobalOptions())))

    def _release_lock(self) -> None:
        if self._lock:
            self.src.remove_quietly(self._lock)
            self._lock = None

    def phase_validate(self) -> None:
        with self.rep.phase("validate") as ph:
            if self.opts.lazy:  # before anything is created or frozen
                self._check_lazy()
            if self.opts.direct:
                direct.check(direct.DirectFacts(
                    src_isa=self.src.isa, dst_isa=self.dst.isa,
                    fast_path=fastpath.refusal(self.src, self.inspect),
                    network_mode=str(self.inspect["HostConfig"].get("NetworkMode") or ""),
                    joined_by=direct.joined_by(self.src.api.containers(all=True),
                                               self.inspect["Id"],
                                               self.inspect["Name"].lstrip("/"))))
            image = image_check(self.src, self.dst, self.spec.image, self.inspect["Image"])
            checks = self.strategy.checks()
            self.strategy.start()  # cross-ISA: the template, while the hosts are validated
            self.validation = validate(self.src, self.dst, self.inspect, self.spec, image,
                                       checks)
            failed = self.validation.failures
            for check in failed:
                # blocking unless --force: an error line; with --force, a warning
                report = self.rep.warn if self.opts.force else self.rep.error
                report(f"{check.name}: {check.detail}")
            if failed and self.opts.force:
                ph.update(f"{len(failed)} failed check(s) ignored (--force)")
            elif not failed:
                ph.update(f"{len(self.validation.checks)} checks passed")
            if not self.opts.force:
                self.validation.raise_for_failures()

    def _check_lazy(self) -> None:
        """--lazy (post-copy, lazy.py): raises ValidationFailed with every reason it
        cannot be taken between these hosts (never skipped by --force: a lazy restore
        that cannot work would fail after the freeze)."""
        version = self.dst.version
        facts = lazy.LazyFacts(
            src_isa=self.src.isa, dst_isa=self.dst.isa,
            dst_api=str(version.get("ApiVersion", "")),
            dst_server=str(version.get("Version", "?")),
            fast_path=fastpath.refusal(self.src, self.inspect))
        lazy.check(facts)  # the target's userfaultfd: LazyTarget.prepare, before the freeze

    def phase_prepare_target(self) -> None:
        with self.rep.phase("prepare target") as ph:
            # where the phase's time goes (--json prepare_seconds): the image (a pull) is
            # the one part a target without the image must pay
            steps: dict[str, float] = {}
            mark = [time.monotonic()]

            def lap(name: str) -> None:
                now = time.monotonic()
                steps[name] = round(now - mark[0], 3)
                mark[0] = now

            self.strategy.image(ph)
            lap("image")
            self._ensure_networks()
            self._create_volumes()
            lap("networks_volumes")
            self.strategy.prepare(ph)  # cross-ISA: the template checkpoint
            lap("target_facts")
            self._addresses()
            if self.opts.lazy:  # the annotation names a file that must exist before create
                self._lazy_prepare()
            with interrupts.shielded():  # created and recorded, or neither
                try:
                    res = self.dst.api.create_container_from_config(self.spec.body,
                                                                    name=self.spec.name)
                except DaemonUnreachable:
                    # no answer: the daemon may have made it (or make it yet): the
                    # rollback removes it by name once the target answers
                    self.created.target_container = self.spec.name
                    raise
                except docker.errors.APIError as exc:
                    raise errors.ValidationFailed(
                        f"{self.dst.name} refused to create {self.spec.name}: "
                        f"{api_error_text(exc)}",
                        hint="see the reason above; nothing was frozen") from exc
                self.created.target_container = self.target_id = res["Id"]
            lap("create")
            for net in list(self.spec.networks)[1:]:
                ep = self.spec.networks[net]
                self.dst.api.connect_container_to_network(
                    res["Id"], net, ipv4_address=self._keep_ip.get(net),
                    aliases=ep.get("Aliases") or None)
            self._open_links(self.dst.inspect(res["Id"]))
            if self.opts.direct:
                self._direct_prepare()
            lap("links")
            self._hold_restart_policy()  # issue 11: before the freeze
            self._watch_restore_log(res["Id"])
            lap("rest")
            self.rep.set("prepare_seconds", steps)
            ph.update(f"created {self.spec.name} ({res['Id'][:12]})")

    def _open_links(self, target: dict[str, Any]) -> None:
        """Helper containers for every stream of the move phase, made before the freeze.
        The checkpoint does not exist yet: its stream binds the folder it will appear in.
        They are created side by side (a container create on a slow target takes seconds);
        this returns once all exist, or raises the first failure."""
        self._entering = []
        try:
            self.strategy.open_checkpoint_link(target)
            self.open_link("filesystem changes", _upper_dir(self.src, self.inspect),
                           _upper_dir(self.dst, target), ".", "")
            for vol in self.spec.volumes:
                self.open_link(f"volume {vol.name}", vol.name, vol.name, ".", "")
        finally:
            done = [f.exception() for f in self._entering]  # every one ended, then
            self._entering = []
        for exc in done:
            if exc is not None:
                raise exc

    def open_link(self, what: str, src_bind: str, dst_bind: str, src_sub: str,
                  dst_sub: str) -> None:
        """One stream of the move phase: src_bind/src_sub into dst_bind/dst_sub."""
        folder = transfer.FolderLink(what, self.src, src_bind, self.dst, dst_bind,
                                     private=what == "checkpoint",
                                     compress=self.opts.compress)
        self.transfers.append((self.enter_link(folder), src_sub, dst_sub))

    def enter_link(self, link: transfer.FolderLink) -> transfer.FolderLink:
        """Its helpers live until the move is done (or the migration ends); within
        _open_links they are being created in the background when this returns."""
        if self._entering is None:
            return self._links.enter_context(link)
        entered = _in_background(link.__enter__)
        self._entering.append(entered)

        def leave(*exc: object) -> None:
            wait([entered])
            if entered.exception() is None:
                link.__exit__(*exc)

        self._links.push(leave)
        return link

    def phase_checkpoint(self) -> None:
        with self.rep.phase("checkpoint") as ph:
            self._checkpoint_record = ph.record
            self.frozen_at = self.frozen_at or time.monotonic()
            # "Maybe frozen" from before the request: an interrupt can land while the
            # daemon dumps, and the daemon finishes the dump (the source exits) anyway.
            self.created.source_frozen = True
            if self._fast_checkpoint(ph):  # fast path (issue 11); False: the API's
                self._fault("during:checkpoint")
                return
            attempts = Retrying(
                stop=stop_after_attempt(DUMP_ATTEMPTS), reraise=True,
                wait=wait_exponential(multiplier=0.5, max=2), sleep=lambda s: time.sleep(s),
                retry=retry_if_exception_type(_PassingRefusal),
                before_sleep=lambda rs: self._dump_tried_again(rs.attempt_number,
                                                               rs.outcome.exception()))
            try:
                attempts(self._api_dump)
            except _PassingRefusal as exc:  # refused every time
                raise self._dump_refused(
                    exc.why, f"{exc.meaning} (tried {DUMP_ATTEMPTS} times)",
                    criu_log.keep(exc.log, f"{self.checkpoint}-dump.log"),
                    "Docker's checkpoint API") from exc.__cause__
            finally:
                self.rep.set("checkpoint_attempts", attempts.statistics.get("attempt_number", 1))
            ph.update(f"checkpoint {self.checkpoint}")

    def _api_dump(self) -> None:
        """One dump through Docker's API (in the background: an interrupt can land while
        the daemon dumps); a refusal becomes the error that says why."""
        first = self._checkpoint_call is None
        if not first:
            self.frozen_at = time.monotonic()  # CRIU resumed it: frozen again from here
        self._checkpoint_call = _in_background(self._dump)
        if first:
            self._fault("during:checkpoint")
        try:
            self._checkpoint_call.result()
        except docker.errors.APIError as exc:
            # The source keeps running when the dump fails: CRIU resumes it.
            text = api_error_text(exc)
            log = self._read_dump_log(criu_log.log_path(text))
            why = criu_log.reason(log)
            if not why:
                raise errors.CriuError(
                    f"checkpoint of {self.opts.container} failed: {text}",
                    hint="read the criu-dump.log named above on the source host",
                ) from exc
            passing = criu_log.transient(log)
            if passing:
                raise _PassingRefusal(why, passing, log) from exc
            meaning, _ = criu_log.explain(log)
            raise self._dump_refused(why, meaning, criu_log.keep(
                log, f"{self.checkpoint}-dump.log"), "Docker's checkpoint API") from exc

    def _dump_tried_again(self, attempt: int, exc: BaseException | None) -> None:
        # About the moment (a client connecting as it froze): CRIU resumed the source,
        # and the same dump a moment later usually works.
        self.rep.warn(f"checkpoint attempt {attempt} of {DUMP_ATTEMPTS} refused by CRIU "
                      f"({getattr(exc, 'why', exc)}); {self.opts.container} runs on: "
                      "trying again")

    def _read_dump_log(self, path: str) -> str:
        """CRIU's dump log named by a failed checkpoint, read on the source host as its
        daemon sees it (through the probe's shim), while the task that holds it lives."""
        if not path:
            return ""
        try:
            _st, out = self.src.run_probe(f"cat \"/proc/$PPID/root\"{shlex.quote(path)}",
                                          timeout=60)
        except Exception:  # noqa: BLE001 - the log is a help, never a new failure
            return ""
        return out if criu_log.failed(out) else ""

    def _dump_refused(self, why: str, meaning: str, kept: Path | None,
                      how: str) -> errors.CriuError:
        """CRIU refused to dump the source (which it resumed): its reason, what that
        means, where its log is kept."""
        where = (f"CRIU's dump log is kept in {kept}" if kept
                 else "CRIU's dump log could not be kept")
        return errors.CriuError(
            f"checkpoint of {self.opts.container} failed ({how}): CRIU: {why}",
            hint=(f"{meaning}. " if meaning else "")
            + f"{self.opts.container} still runs on {self.src.name}, where it was; {where}")

    def _dump(self) -> None:
        """The checkpoint, retried when runc could not freeze the container (a busy
        process under cgroup v1's freezer): runc thaws it again, nothing was dumped."""
        Retrying(
            stop=stop_after_attempt(5), wait=wait_exponential(multiplier=0.5, max=4),
            reraise=True, sleep=lambda s: time.sleep(s),
            retry=retry_if_exception(lambda exc: isinstance(exc, docker.errors.APIError)
                                     and "unable to freeze" in api_error_text(exc)),
        )(self.src.checkpoint_create, self.inspect["Id"], self.checkpoint, exit=True)

    def phase_move(self) -> None:
        with self.rep.phase("move") as ph:

            def progress(n: int) -> None:
                with self._progress_lock:
                    self.bytes_moved += n
                    ph.update(f"{self.bytes_moved / 1e6:.1f} MB")

            # Independent streams, in parallel: the downtime is the longest, not the sum.
            pool = ThreadPoolExecutor(max_workers=4)
            try:
                futures = [pool.submit(link.copy, src_sub, dst_sub, progress)
                           for link, src_sub, dst_sub in self.transfers]
                futures += self.strategy.move_checkpoint(pool)  # cross-ISA: to recode here
                self._fault("during:move")
                moved = [f.result() for f in futures]
                self.bytes_sent += sum(link.sent[0] for link, _s, _d in self.transfers)
            finally:
                # On a failure the rollback removes the helpers, which ends the streams.
                pool.shutdown(wait=False, cancel_futures=True)
            if self._lazy_plans:  # post-copy: the pages images rebuilt, holes for the lazy
                lazy.unpack(self._fast_restore, self.checkpoint, self._lazy_plans)
            if self._fast_restore:  # issue 11: the restore folder as links into tmpfs
                how = self._fast_restore.link(
                    self.dst.checkpoint_dir(self.created.target_container))
                self.rep.set("restore_folder", how)
            self.rep.set("transfers", [
                {"what": t.what, "bytes": t.bytes, "seconds": round(t.seconds, 3)} for t in moved
            ])
            ph.update(f"{self.bytes_moved / 1e6:.1f} MB in {len(moved)} stream(s)")

    def phase_recode(self) -> None:
        self.strategy.transform()  # cross-ISA: recoded here and uploaded
        self._links.close()  # the helpers are done; they must not hold the volumes

    def phase_restore(self) -> None:
        with self.rep.phase("restore") as ph:
            cid = self.created.target_container
            if self._lazy_target is not None:  # post-copy: the daemon before the restore
                self._lazy_target.start_daemon(f"{self._fast_restore.folder}/{self.checkpoint}",
                                               self._lazy_address, self._lazy_port)
            self._restore_call = _in_background(self.dst.start, cid, checkpoint=self.checkpoint)
            self._fault("during:restore")
            try:
                self._restore_call.result()
            except DaemonUnreachable as exc:
                self._learn_restore_outcome()  # raises if it stays unknown
                if not self.target_started:
                    raise errors.RestoreFailed(
                        f"{self.dst.name} stopped answering during the restore and did not "
                        f"start {self.opts.container} ({api_error_text(exc)})",
                        hint="the source was restored where it was; check the network to "
                             f"{self.dst.name}, then retry") from exc
                msg = (f"{self.dst.name}'s answer to the restore was lost; asked again, it "
                       f"runs {self.opts.container}")
                self.rep.warn(msg)
                self.warnings.append(msg)
            except docker.errors.APIError as exc:
                self.strategy.restore_failed()  # cross-ISA: its template is not trusted again
                with contextlib.suppress(OSError):
                    self._keep_restore_log()
                where = (f"CRIU's restore log is kept in {self.restore_log}"
                         if self.restore_log else "CRIU's restore log could not be kept")
                raise errors.RestoreFailed(
                    f"restore on {self.dst.name} failed: {api_error_text(exc)}",
                    hint=f"the source was restored where it was; {where}",
                ) from exc
            except BaseException:
                self._stop_restore_watch()
                raise
            self._let_restore_watch_end()
            if self._lazy_target is None:  # post-copy commits when every page arrived
                self._mark_started()
            self.strategy.after_restore(cid)  # cross-ISA: restored parked, let go on
            self.downtime = time.monotonic() - self.frozen_at
            if self.target_started:  # --direct: its clients now reach the target
                self._direct_end_source()
            ph.update(f"running on {self.dst.name}")

    def _learn_restore_outcome(self) -> None:
        """The target stopped answering while it restored. Whether the container runs
        there decides everything (resuming the source while it does would run it twice):
        ask until the target answers. Still unknown: the source stays stopped with its
        checkpoint and the user is told how to finish by hand."""
        if self._restore_unknown is not None:  # asked already: the same answer
            raise self._restore_unknown
        try:
            state = self._on_target(self.dst.api.inspect_container,
                                    self.created.target_container)["State"]
        except docker.errors.NotFound:
            return  # never created or removed: the source resumes
        except docker.errors.APIError as exc:
            self._keep_source_checkpoint()
            self._restore_unknown = errors.RollbackFailed(
                f"{self.dst.name} stopped answering while it restored "
                f"{self.opts.container} and still does not after {TARGET_ANSWER_WAIT:g}s "
                f"({api_error_text(exc)}): whether it runs there is unknown, so the source "
                f"is kept stopped with its checkpoint {self.checkpoint}",
                hint=f"when {self.dst.name} answers: if `docker --context {self.dst.name} "
                     f"ps` shows {self.opts.container} running, remove the source; if not, "
                     f"`docker --context {self.src.name} start --checkpoint {self.checkpoint}"
                     f" {self.opts.container}`; then remove the migration's helpers there: "
                     f"`docker --context {self.dst.name} ps -aq --filter "
                     f"label={MIGRATION_LABEL}={self.checkpoint}`",
            )
            raise self._restore_unknown from exc
        if state.get("Running") or state.get("Restarting"):
            self._mark_started()

    def _keep_source_checkpoint(self) -> None:
        """The source stays stopped for the user to decide: its checkpoint must outlive
        this run where `docker start --checkpoint` looks (the fast path's is on tmpfs)."""
        if self._fast is not None:
            try:
                self._fast.persist(self.src.checkpoint_dir(self.inspect["Id"]))
            except (errors.HmigrateError, docker.errors.APIError) as exc:
                self.rep.warn(f"the source's checkpoint could not be kept: {exc}")

    def _mark_started(self) -> None:
        """The commit point: from here on the target is the truth (see _settle)."""
        self.target_started = True
        self.target_started_at = time.monotonic()

    def phase_verify(self) -> None:
        with self.rep.phase("verify") as ph:
            self._verify_running(self.created.target_container)
            ph.update(f"still running after {self.opts.verify_seconds:g}s")

    def phase_commit(self) -> None:
        if self.committed:
            return
        with self.rep.phase("commit") as ph, interrupts.shielded():
            # The restored container no longer needs its checkpoint: it holds process memory.
            with contextlib.suppress(docker.errors.APIError):
                self.dst.checkpoint_delete(self.created.target_container, self.checkpoint)
            with contextlib.suppress(docker.errors.APIError):
                self.src.checkpoint_delete(self.inspect["Id"], self.checkpoint)
            self._direct_end_source()  # --direct: unless the restore phase ended it (not
            # when an interrupt landed during the restore and _settle commits)
            if self.opts.keep_source:
                ph.update("source kept (stopped)")
            else:
                with contextlib.suppress(docker.errors.NotFound):
                    self.src.api.remove_container(self.inspect["Id"], force=True)
                ph.update("source removed")
            self._remove_staging()
            self.created = Created()  # nothing to undo any more
            self.committed = True

    def _remove_staging(self) -> None:
        """containerd's copies of the checkpoint in /tmp, on both hosts (process memory)."""
        ids = [self.inspect["Id"], *self.strategy.staging_ids()]
        def clean(host: Host) -> None:
            with contextlib.suppress(Exception):
                host.remove_checkpoint_staging(ids, since=self.started_at)
        threads = [threading.Thread(target=clean, args=(h,)) for h in (self.src, self.dst)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)

    # --- CRIU's restore log: containerd deletes it with the task, before start returns ----
    def _watch_restore_log(self, cid: str) -> None:
        """Follow the target task's restore.log from a probe started before the freeze
        (the log only exists while the restore runs), to keep it if the restore fails."""
        script = (
            "for d in /run/*/containerd/daemon/io.containerd.runtime.v2.task/moby "
            "/run/containerd/io.containerd.runtime.v2.task/moby; do [ -d \"$d\" ] && "
            f"set -- \"$@\" \"$d/{cid}/work/restore.log\"; done; "
            "exec tail -q -n +1 -s 0.05 -F \"$@\" 2>/dev/null")
        stop = threading.Event()
        self._restore_watch = (_in_background(self.dst.run_probe, script, 3600, stop=stop),
                               stop)

    def _let_restore_watch_end(self) -> None:
        """The restore worked: its probe is killed in the background, and waited for when
        the migration ends (_stop_restore_watch), not inside the downtime."""
        if self._restore_watch is not None:
            self._restore_watch[1].set()

    def _stop_restore_watch(self) -> str:
        """End the watch; what it saw (a failed restore's log)."""
        if self._restore_watch is None:
            return ""
        future, stop = self._restore_watch
        self._restore_watch = None
        stop.set()
        try:
            return future.result(timeout=30)[1]
        except Exception:  # noqa: BLE001 - the log is a help, never a new failure
            return ""

    def _keep_restore_log(self) -> None:
        """Copy the failed restore's log to a local 0600 file, before the rollback."""
        time.sleep(0.3)  # tail's last poll
        text = self._stop_restore_watch()
        self.restore_log = criu_log.keep(text, f"{self.checkpoint}-restore.log")

    # --- rollback ------------------------------------------------------------------------
    def roll_back(self, cause: BaseException) -> None:
        """Undo what was created and make the source run again (shielded: a duplicate or a
        second Ctrl-C cannot abort it)."""
        with interrupts.shielded(consume=True):
            self._roll_back(cause)

    def _roll_back(self, cause: BaseException) -> None:
        created = self.created
        if not (created.target_container or created.volumes or created.networks
                or created.source_frozen or created.source_parked or created.template):
            return
        self._stop_restore_watch()
        with contextlib.suppress(errors.HmigrateError):
            self._hook("failed-restore", fatal=False, error=_describe(cause))
        self._links.close()  # helpers bind the volumes to remove
        problems: list[str] = []  # the source could not be made to run again
        leftovers: list[str] = []  # what stays on the target (unreachable, say)
        with contextlib.suppress(docker.errors.APIError):
            self.strategy.undo()  # cross-ISA: the template container
        with self.rep.phase("roll back") as ph:
            self._fault("during:rollback")
            going = True  # the target container is gone or going: its volumes free up
            if created.target_container:
                tid = created.target_container
                problem = _removed(
                    lambda: self._on_target(self.dst.api.remove_container, tid, force=True),
                    lambda: self._gone(tid))
                if problem:
                    leftovers.append(f"remove target container: {problem}")
                    going = False
            for vol in created.volumes:
                problem = _removed(
                    lambda v=vol: self._on_target(self.dst.api.remove_volume, v, force=True),
                    lambda: False, wait=going)
                if problem:
                    leftovers.append(f"remove volume {vol}: {problem}")
            for net in created.networks:
                with contextlib.suppress(docker.errors.APIError):
                    self._on_target(self.dst.api.remove_network, net)
            if created.source_frozen:
                try:
                    if self._page_server is not None and self._fast and self._fast.freezer \
                            and not self._source_ended:
                        # --direct: the source is frozen, alive, its memory in place
                        self._fast.thaw()
                        how = "source thawed (frozen in place since the dump)"
                    else:
                        if self._source_ended:  # --direct: the pages are on the target
                            self._direct_pages_back()
                        if self._fast:  # fast path: links to the tmpfs images where docker
                            # looks (none if the dump never finished: _resume_source decides)
                            with contextlib.suppress(errors.HmigrateError,
                                                     docker.errors.APIError):
                                self._fast.stage_for_restore(
                                    self.src.checkpoint_dir(self.inspect["Id"]))
                        how = self._resume_source()
                    self.strategy.release_source()  # cross-ISA: the park request withdrawn
                    self._verify_running(self.inspect["Id"], host=self.src)
                    with contextlib.suppress(docker.errors.APIError):
                        self.src.checkpoint_delete(self.inspect["Id"], self.checkpoint)
                    ph.update(how)
                except (docker.errors.APIError, errors.HmigrateError) as exc:
                    problems.append(
                        f"restore source {self.opts.container} from checkpoint "
                        f"{self.checkpoint}: {api_error_text(exc)}")
            elif created.source_parked:  # never dumped: only the request to withdraw
                try:
                    self.strategy.release_source()
                except errors.HmigrateError as exc:
                    problems.append(exc.message)
                ph.update("target cleaned")
            else:
                ph.update("target cleaned")
            if created.source_frozen or self.strategy.staging_ids():
                self._remove_staging()
        self._release_restart_policy(problems)  # issue 11
        self.created = Created()
        if problems:
            raise errors.RollbackFailed(
                f"migration failed ({_describe(cause)}) and the rollback too: "
                f"{'; '.join(problems + leftovers)}",
                hint=f"the checkpoint {self.checkpoint} is kept on {self.src.name}: "
                     f"docker start --checkpoint {self.checkpoint} {self.opts.container}",
            ) from cause
        if leftovers:
            raise errors.RollbackFailed(
                f"migration failed ({_describe(cause)}); {self.opts.container} runs again on "
                f"{self.src.name}, but {self.dst.name} could not be cleaned: "
                f"{'; '.join(leftovers)}",
                hint=f"when {self.dst.name} answers again, remove what the migration made "
                     f"there: docker --context {self.dst.name} rm -f "
                     f"{created.target_container or '(none)'}; docker --context "
                     f"{self.dst.name} ps -a --filter label={MIGRATION_LABEL}={self.checkpoint}",
            ) from cause

    def _on_target(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A clean-up call on the target, retried while the target does not answer (a
        network blip must not leave a container behind)."""
        return Retrying(stop=stop_after_delay(TARGET_ANSWER_WAIT), wait=wait_fixed(1),
                        retry=retry_if_exception_type(DaemonUnreachable), reraise=True)(
            call, *args, **kwargs)

    # --- fast checkpoint path and CRIU's figures (fastpath.py, criu/stats.py; issue 11) ----
    def fast_prepare(self) -> str | None:
        """Before the freeze: the agent for a runc dump into tmpfs; its folder, or None
        (the API path, with the reason in the result)."""
        caps = lazy.LAZY_CAPS if self.opts.lazy else ()
        fast = fastpath.FastCheckpoint(self.src, self.inspect, self.checkpoint, caps)
        try:
            fast.prepare()
        except fastpath.FastPathUnavailable as exc:
            if self.opts.lazy:  # post-copy serves the pages from this agent's dump
                raise errors.ValidationFailed(
                    f"--lazy: the source cannot be dumped by runc through an agent with "
                    f"CAP_SYS_RESOURCE on {self.src.name}: {exc}",
                    hint="migrate without --lazy; nothing was frozen") from exc
            if self.opts.direct:
                raise errors.ValidationFailed(
                    f"--direct: the source cannot be dumped by runc through an agent on "
                    f"{self.src.name}: {exc}",
                    hint="migrate without --direct; nothing was frozen") from exc
            self.rep.set("checkpoint_fast_path", f"not used: {exc}")
            return None
        self._fast = fast
        return fast.folder

    def fast_restore_prepare(self) -> str | None:
        """Before the freeze: a tmpfs folder on the target for the images (links to them
        go in the restore folder after the move); None: the restore folder itself."""
        if self._fast_restore is not None:  # --lazy: made before the target container
            return self._fast_restore.folder
        try:
            memory = fastpath.memory_in_use(self.src, self.inspect["Id"])
        except Exception:  # noqa: BLE001 - unknown size: links are right for big ones
            memory = fastpath.LINKS_FROM_BYTES
        if memory < fastpath.LINKS_FROM_BYTES and not self.opts.direct:
            self.rep.set("restore_folder", f"copy ({memory / 1e6:.0f} MB in use: small)")
            return None
        fast = fastpath.FastRestore(self.dst, self.checkpoint)
        try:
            fast.prepare()
        except fastpath.FastPathUnavailable as exc:
            if self.opts.direct:  # the page server writes into that tmpfs folder
                raise errors.ValidationFailed(
                    f"--direct: no tmpfs folder for the pages on {self.dst.name}: {exc}",
                    hint="migrate without --direct; nothing was frozen") from exc
            self.rep.set("restore_folder", f"copy ({exc})")
            return None
        self._fast_restore = fast
        return fast.folder

    def _fast_checkpoint(self, ph) -> bool:
        """Dump through runc; False when the API path must do it (the source still runs)."""
        if self._fast is None:
            return False
        try:
            self._fast.dump()
        except fastpath.FastPathUnavailable as exc:
            if self.opts.lazy:  # no API fallback: the pages are served from this dump
                raise errors.CriuError(
                    f"checkpoint of {self.opts.container} failed (runc, --lazy): {exc}",
                    hint=f"{self.opts.container} still runs on {self.src.name}") from exc
            if self._page_server is not None:  # --direct: thawed by the dump's script
                with contextlib.suppress(docker.errors.APIError):
                    self._page_server.clear()
                raise errors.CriuError(
                    f"checkpoint of {self.opts.container} failed (runc, --direct): {exc}",
                    hint=f"{self.opts.container} still runs on {self.src.name}; migrate "
                         "without --direct to take Docker's checkpoint API") from exc
            meaning, permanent = criu_log.explain(exc.criu_log)
            if permanent:  # the process's state: the API path's CRIU would refuse it too
                self._fast.close()
                self._fast = None
                raise self._dump_refused(criu_log.reason(exc.criu_log), meaning,
                                         criu_log.keep(exc.criu_log,
                                                       f"{self.checkpoint}-dump.log"),
                                         "runc, fast path") from exc
            self.rep.warn(f"fast checkpoint failed, using Docker's checkpoint API: {exc}")
            self.rep.set("checkpoint_fast_path", f"failed: {exc}")
            self._fast.close()
            self._fast = None
            # the stream now starts in dockerd's checkpoints folder
            folder = transfer.FolderLink(
                "checkpoint", self.src, self.src.checkpoint_dir(self.inspect["Id"]),
                self.dst, self._fast_restore.folder if self._fast_restore else
                self.dst.checkpoint_dir(self.created.target_container), private=True,
                compress=self.opts.compress)
            _old, sub, dst_sub = self.transfers[self.fast_link]
            self.transfers[self.fast_link] = (self.enter_link(folder), sub, dst_sub)
            self.frozen_at = time.monotonic()  # CRIU resumed it: frozen again from here
            return False
        self._dump_returned = time.monotonic()
        self.created.source_frozen = True
        self.checkpoint_path = "runc"
        if self.opts.lazy:  # post-copy: the memory is served from the dump, in place
            # and only what the restore reads crosses before it (not the lazy pages): the
            # move's folder is made while the page server starts
            with ThreadPoolExecutor(max_workers=1) as pool:
                packing = pool.submit(lazy.pack, self._fast)
                lazy.serve_pages(self._fast, self._lazy_address, self._lazy_port)
                self._lazy_plans = packing.result()
            link, sub, dst_sub = self.transfers[self.fast_link]
            self.transfers[self.fast_link] = (link, f"{lazy.MOVED}/{sub}", dst_sub)
        ph.update(f"checkpoint {self.checkpoint} (runc, tmpfs)")
        return True

    # --- post-copy (--lazy, lazy.py, docs/lazy.md) -----------------------------------------
    def _lazy_prepare(self) -> None:
        """Before the target container is created: its tmpfs folder with the CRIU
        configuration its annotation names, userfaultfd checked there, the source's
        address on the link to the target. Raises ValidationFailed (nothing frozen)."""
        restore = fastpath.FastRestore(self.dst, self.checkpoint, lazy.LAZY_CAPS)
        try:
            restore.prepare()
        except fastpath.FastPathUnavailable as exc:
            raise errors.ValidationFailed(
                f"--lazy: no agent with CAP_SYS_RESOURCE on {self.dst.name}: {exc}",
                hint="migrate without --lazy; nothing was frozen") from exc
        self._fast_restore = restore
        self._lazy_target = lazy.LazyTarget(restore)
        self._lazy_target.prepare()
        src_agent = fastpath.Agent(self.src)
        try:
            src_agent.start()
            _st, src_ips = src_agent.sh("ip -4 -o addr")
        finally:
            src_agent.close()
        _st, dst_ips = restore.agent.sh("ip -4 -o addr")
        address = _page_server_address("--lazy", (self.src, src_ips), (self.dst, dst_ips))
        self._lazy_address, self._lazy_port = address, lazy.port_for(self.checkpoint)
        host_config = self.spec.body.setdefault("HostConfig", {})
        host_config["Annotations"] = {**(host_config.get("Annotations") or {}),
                                      **self._lazy_target.annotations()}
        self.rep.set("lazy_page_server", f"{address}:{self._lazy_port}")

    # --- --direct (direct.py, docs/downtime.md) ---------------------------------------------
    def _direct_prepare(self) -> None:
        """Before the freeze: the target's address on a link to the source, CRIU's page
        server listening there, and the source's cgroup freezer. Raises ValidationFailed."""
        fast, restore = self._fast, self._fast_restore
        assert fast is not None and restore is not None  # fast_prepare raised otherwise
        _st, src_ips = fast.agent.sh("ip -4 -o addr")
        _st, dst_ips = restore.agent.sh("ip -4 -o addr")
        address = _page_server_address("--direct", (self.dst, dst_ips), (self.src, src_ips))
        try:
            fast.freezer = fast.find_freezer()
        except fastpath.FastPathUnavailable as exc:
            raise errors.ValidationFailed(
                f"--direct: {exc}", hint="migrate without --direct; nothing was frozen"
            ) from exc
        server = direct.PageServer(restore, self.checkpoint, address,
                                   lazy.port_for(self.checkpoint))
        server.start()
        self._page_server = server
        fast.page_server = server.endpoint
        self.rep.set("direct_page_server", server.endpoint)

    def _direct_end_source(self) -> None:
        """Once the target runs: the source, frozen since the dump, ends without running
        again. Not later (at the commit): until it exits dockerd keeps its published
        ports and their proxies, and clients that would reconnect to the target hang on
        it instead. A target that dies during verify is rolled back from its pages
        (_direct_pages_back)."""
        if self._page_server is None or self._fast is None or not self._fast.dumped \
                or self._source_ended:
            return
        try:
            self._fast.end_frozen()
            self._source_ended = True
        except docker.errors.APIError as exc:
            msg = (f"the frozen source {self.opts.container} could not be ended on "
                   f"{self.src.name}: {api_error_text(exc)}")
            self.rep.warn(msg)
            self.warnings.append(msg)

    def _direct_pages_back(self) -> None:
        """A target that died during verify, after the source was ended: the dump's pages
        come back from the target's tmpfs beside the source's own images, which the
        source is then restored from."""
        assert self._fast is not None and self._fast_restore is not None
        back = transfer.FolderLink("checkpoint pages, back", self.dst, self._fast_restore.folder,
                                   self.src, self._fast.folder, private=True)
        with back:
            back.copy(self.checkpoint, "")

    def phase_pages(self) -> None:
        """--lazy: the target runs while its pages arrive; the commit point is when the
        lazy-pages daemon has them all (exit 0). Until then a failure removes the target
        (its memory is incomplete) and restores the source from its tmpfs dump."""
        if self._lazy_target is None:
            return
        with self.rep.phase("pages") as ph:
            started = time.monotonic()
            while True:
                rc, tail = self._lazy_target.outcome()
                if rc == 0:
                    break
                if rc is not None:
                    raise errors.TransferInterrupted(
                        f"the background copy of {self.opts.container}'s memory failed "
                        f"(CRIU's lazy-pages daemon exited {rc}: {tail[-300:]})",
                        hint="the target was removed (its memory was incomplete) and the "
                             "source restored from its dump; what the target did since "
                             "the restore is lost")
                if not self._running(self.dst, self.created.target_container):
                    raise errors.TargetDied(f"{self.opts.container} stopped on "
                                            f"{self.dst.name} while its pages arrived")
                time.sleep(0.2)
            self.rep.set("lazy_pages_seconds", round(time.monotonic() - started, 3))
            self._mark_started()
            ph.update(f"every page arrived after {time.monotonic() - started:.1f}s")

    def _hold_restart_policy(self) -> None:
        """dockerd applies a container's restart policy to the exit a checkpoint causes
        (API path and fast path alike: seen on 20.10, `always` restarted a dumped counter
        from 0): a second, fresh source would run while its state moves, and a rollback's
        `start --checkpoint` would then fail. So the source runs under "no" from just before
        the freeze; a rollback gives its policy back, the target has it from the spec."""
        policy = self.inspect["HostConfig"].get("RestartPolicy") or {}
        if (policy.get("Name") or "no") == "no":
            return
        self.src.api.update_container(self.inspect["Id"], restart_policy={"Name": "no"})
        self._held_policy = policy

    def _release_restart_policy(self, problems: list[str]) -> None:
        if self._held_policy is None:
            return
        try:
            self.src.api.update_container(self.inspect["Id"], restart_policy=self._held_policy)
            self._held_policy = None
        except docker.errors.APIError as exc:
            problems.append(f"give {self.opts.container} back its restart policy "
                            f"{self._held_policy.get('Name')}: {api_error_text(exc)}")

    def _criu_figures(self) -> dict[str, Any]:
        """CRIU's own figures next to the wall time Docker adds (result data, and the
        checkpoint phase's data). The API path cannot give them: containerd deletes the
        work folder where CRIU writes stats-dump / stats-restore."""
        out: dict[str, Any] = {"checkpoint_path": self.checkpoint_path}
        dump = self._fast.read_stats() if self._fast else None
        if dump:
            wall = next((p.seconds for p in self.rep.phases if p.name == "checkpoint"), 0.0)
            dump = {**dump, "wall_seconds": round(wall, 6),
                    "outside_criu_seconds": round(wall - dump.get("frozen_seconds", 0), 6),
                    "bytes_written": dump.get("pages_written", 0) * criu_stats.PAGE_SIZE}
            out["criu_dump"] = dump
            if self.downtime:
                # The program ran on until CRIU froze it (CRIU's start-up, runc, the exec
                # into the agent come first): frozen -> running on the target.
                frozen = dump.get("frozen_seconds", 0) + dump.get("freezing_seconds", 0)
                before_freeze = self._dump_returned - self.frozen_at - frozen
                if self._page_server is not None:  # --direct froze it before CRIU started
                    before_freeze = 0.0
                out["downtime_frozen_seconds"] = round(self.downtime - before_freeze, 3)
            if self._checkpoint_record is not None:
                _phase_data(self._checkpoint_record)["criu"] = dump
        return out

    def _resume_source(self) -> str:
        """The source may be frozen: wait for a dump still in flight, then make it run again
        the way its state allows. Returns what was done."""
        if self._checkpoint_call is not None:
            self._await(self._checkpoint_call, "checkpoint")
        cid = self.inspect["Id"]
        state = self.src.api.inspect_container(cid)["State"]
        if state.get("Paused"):
            self.src.api.unpause(cid)
            return "source unpaused"
        if state.get("Running"):
            return "source kept running (it was never stopped)"
        if self.checkpoint in self.src.checkpoint_list(cid):
            self.src.start(cid, checkpoint=self.checkpoint)
            return "source restored from its checkpoint"
        self.src.api.start(cid)  # no checkpoint to come back from: at least it runs
        msg = f"{self.opts.container} had stopped without a checkpoint: started afresh"
        self.rep.warn(msg)
        self.warnings.append(msg)
        return "source started (its memory state was lost)"

    def _await(self, call: Future, what: str) -> None:
        """Wait (shielded) for a daemon call an interrupt left running."""
        with contextlib.suppress(Exception):
            call.exception(timeout=DAEMON_CALL_WAIT)
        if not call.done():
            self.rep.warn(f"the {what} still runs in the daemon after {DAEMON_CALL_WAIT:g}s")

    def _running(self, host: Host, cid: str | None) -> bool:
        try:
            state = host.api.inspect_container(cid)["State"] if cid else {}
        except docker.errors.APIError:
            return False
        return bool(state.get("Running")) and not state.get("Restarting")

    def _gone(self, cid: str) -> bool:
        """Whether the target container no longer exists (unknown: not gone)."""
        try:
            self.dst.api.inspect_container(cid)
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError:
            return False
        return False

    def _target_state(self) -> dict[str, Any] | None:
        try:
            return self.dst.api.inspect_container(self.created.target_container)["State"]
        except docker.errors.NotFound:
            return {"Running": False, "Status": "removed"}
        except Exception:  # noqa: BLE001 - unreachable: unknown
            return None

    def _died_message(self, state: dict[str, Any]) -> str:
        window = time.monotonic() - self.target_started_at if self.target_started_at else 0
        return (f"the container stopped on {self.dst.name} {window:.1f}s after it started "
                f"({state.get('Status')}, exit code {state.get('ExitCode')}"
                f"{': ' + state['Error'] if state.get('Error') else ''}): the source resumes "
                "from its checkpoint; writes the target accepted in that window are lost")

    # --- helpers -------------------------------------------------------------------------
    def _target_image(self) -> str:
        return self.inspect["Config"]["Image"]

    def pull(self, ph, ref: str) -> None:
        """ref, in the target platform's variant, from a registry the target reaches."""
        ph.update(f"pulling {ref} for {self.dst.platform}")
        layers: dict[str, str] = {}

        def progress(msg: dict[str, Any]) -> None:  # "3/5 layers" as they complete
            if msg.get("id") and msg.get("status"):
                layers[msg["id"]] = msg["status"]
                done = sum(st in ("Pull complete", "Already exists") for st in layers.values())
                ph.update(f"pulling {ref} for {self.dst.platform}: {done}/{len(layers)} layers")

        try:
            self.dst.pull(ref, self.dst.platform, progress=progress)
        except docker.errors.APIError as exc:
            raise errors.ImageUnavailable(
                f"{self.dst.name} cannot pull {ref}: {api_error_text(exc)}",
                hint=f"push {ref} (with a {self.dst.platform} variant) to a registry "
                     f"{self.dst.name} can reach") from exc

    def _ensure_networks(self) -> None:
        for net in self.spec.networks:
            if self.dst.api.networks(names=[net]):
                continue
            src_net = self.src.api.inspect_network(net)
            ipam = src_net.get("IPAM") or {}
            pools = [docker.types.IPAMPool(subnet=c.get("Subnet"), gateway=c.get("Gateway"),
                                           iprange=c.get("IPRange"))
                     for c in ipam.get("Config") or [] if c.get("Subnet")]
            # the same subnet, so that the container keeps its address there (or any,
            # when another network of the target has it: the address will change)
            kwargs = dict(driver=src_net.get("Driver"), options=src_net.get("Options"),
                          labels=src_net.get("Labels"))
            try:
                self.dst.api.create_network(net, **kwargs, ipam=docker.types.IPAMConfig(
                    driver=ipam.get("Driver") or "default", pool_configs=pools)
                    if pools else None)
            except docker.errors.APIError:
                if not pools:
                    raise
                self.dst.api.create_network(net, **kwargs)
            self.created.networks.append(net)

    def _addresses(self) -> None:
        """Keep each user network's address where the target allows it (validation said
        whether connections need it); otherwise let the target choose one."""
        self._keep_ip = {}
        endpoints = (self.spec.body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
        for net, ep in self.spec.networks.items():
            ip = ep.get("IPAddress")
            try:
                problem = address_problem(self.dst.api.inspect_network(net), ip) if ip else "-"
            except docker.errors.APIError:
                problem = "-"
            if not problem:
                self._keep_ip[net] = ip
            elif net in endpoints:
                (endpoints[net].get("IPAMConfig") or {}).pop("IPv4Address", None)

    def _create_volumes(self) -> None:
        if not self.spec.volumes:
            return  # no listing of the target's volumes (a call on a slow target)
        existing = {v["Name"] for v in (self.dst.api.volumes().get("Volumes") or [])}
        for vol in self.spec.volumes:
            if vol.name in existing:
                raise errors.ValidationFailed(
                    f"volume {vol.name} already exists on {self.dst.name}",
                    hint=f"remove it there (docker volume rm {vol.name}) so its data "
                         "can be carried over")
            src_vol = self.src.api.inspect_volume(vol.name)
            self.dst.api.create_volume(vol.name, driver=vol.driver,
                                       driver_opts=src_vol.get("Options"),
                                       labels=src_vol.get("Labels"))
            self.created.volumes.append(vol.name)

    def _verify_running(self, cid: str, host: Host | None = None) -> None:
        host = host or self.dst

        def still_running() -> None:
            if host is self.dst:
                self._fault("during:verify")
            state = host.api.inspect_container(cid)["State"]
            if not state.get("Running") or state.get("Restarting"):
                if host is self.dst and self.target_started:
                    raise errors.TargetDied(self._died_message(state))
                raise errors.RestoreFailed(
                    f"the restored container on {host.name} is {state.get('Status')} "
                    f"(exit code {state.get('ExitCode')}): {state.get('Error') or 'no error'}",
                    hint="the source was restored where it was")

        watch(still_running, self.opts.verify_seconds, 0.1)

    def _hook(self, point: str, fatal: bool = True, error: str = "") -> None:
        """Run a hook with a timeout; its output goes to stderr (stdout may be --json's)."""
        command = self.opts.hooks.get(point)
        if not command:
            return
        env = {**os.environ, **self._facts(), "HMIGRATE_HOOK": point}
        if error:
            env["HMIGRATE_ERROR"] = error
        with self.rep.phase(f"hook {point}"):
            proc = subprocess.Popen(command, shell=True, env=env, stdout=sys.stderr.fileno(),
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                code = proc.wait(timeout=self.opts.hook_timeout)
                msg = f"the {point} hook exited with {code}" if code else ""
            except subprocess.TimeoutExpired:
                msg = f"the {point} hook did not finish within {self.opts.hook_timeout:g}s"
                code = -1
            finally:
                if proc.poll() is None or code == -1:  # its whole process group
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            if msg:
                if fatal:
                    raise errors.HookFailed(msg, hint=f"fix the hook: {command}")
                self.rep.warn(msg)

    def _facts(self) -> dict[str, str]:
        return {
            "HMIGRATE_CONTAINER": self.inspect["Name"].lstrip("/"),
            "HMIGRATE_CONTAINER_ID": self.inspect["Id"],
            "HMIGRATE_SOURCE": self.src.name,
            "HMIGRATE_TARGET": self.dst.name,
            "HMIGRATE_TARGET_CONTAINER": self.spec.name if self.spec else "",
            "HMIGRATE_TARGET_CONTAINER_ID": self.created.target_container or "",
            "HMIGRATE_CHECKPOINT": self.checkpoint,
            "HMIGRATE_SOURCE_ISA": self.src.isa,
            "HMIGRATE_TARGET_ISA": self.dst.isa,
        }

    def _result(self, total: float) -> dict[str, Any]:
        # Machine values only (docs/json.md, schema hmigrate/v1); the per-phase seconds
        # are in the reporter's "phases" list.
        result = {
            "container": self.inspect["Name"].lstrip("/"),
            "container_id": self.inspect["Id"],
            "target_container": self.spec.name,
            "target_container_id": self.target_id,
            "source": self.src.name,
            "target": self.dst.name,
            "source_isa": self.src.isa,
            "target_isa": self.dst.isa,
            "downtime_seconds": round(self.downtime, 3),
            "total_seconds": round(total, 3),
            "bytes_moved": self.bytes_moved,
            "compress": self.opts.compress,
            "bytes_sent": self.bytes_sent,
            "transfer": "direct" if self._page_server is not None else "relay",
            "source_kept": self.opts.keep_source,
            **self._criu_figures(),  # issue 11
        }
        for k, v in result.items():
            self.rep.set(k, v)
        return result


def _page_server_address(flag: str, server: tuple[Host, str], peer: tuple[Host, str]) -> str:
    """Where CRIU's page server listens for `flag` (--lazy: on the source, --direct: on the
    target): the server host's private address on a link to its peer, from each host's
    `ip -4 -o addr`. Raises ValidationFailed (before the freeze) when there is none."""
    address = lazy.page_server_address(lazy.addresses(server[1]), lazy.addresses(peer[1]))
    if address is None:
        raise errors.ValidationFailed(
            f"{flag}: {server[0].name} has no private address on a link to {peer[0].name} "
            "for CRIU's page server (it has no authentication)",
            hint=f"migrate without {flag}; nothing was frozen")
    return address


def _phase_data(record) -> dict[str, Any]:
    """The data fields of a phase (PhaseRecord.data, rendered by output.py)."""
    return record.data


def _in_background(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """Run a long daemon call in a daemon thread: the main thread waits on the Future, so
    an interrupt reaches it at once while the call goes on and its outcome stays known."""
    future: Future = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiter
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def _removed(remove: Callable[[], None], gone: Callable[[], bool], wait: bool = True) -> str:
    """Undo one thing the migration made: "" once it is removed or gone already, else the
    daemon's reason. NotFound is an APIError: it is caught first. A 409 while `wait`
    means its daemon removes it already (a --rm target that died: "removal ... already
    in progress"), or it is held by such a container (a volume "in use"): retried until
    it is gone, for up to REMOVAL_WAIT seconds."""
    conflict = [""]

    def attempt() -> str | None:
        try:
            remove()
        except docker.errors.NotFound:
            return ""  # already gone: nothing to undo
        except docker.errors.APIError as exc:
            if exc.status_code != 409 or not wait:
                return api_error_text(exc)
            if gone():
                return ""
            conflict[0] = api_error_text(exc)
            return None  # going: try again
        return ""

    problem = poll(attempt, REMOVAL_WAIT, 0.2)
    if problem is None:
        return f"{conflict[0]} (still being removed after {REMOVAL_WAIT:g}s)"
    return problem


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return str(exc) or type(exc).__name__


def _upper_dir(host: Host, inspect: dict[str, Any]) -> str:
    driver = inspect.get("GraphDriver", {})
    upper = (driver.get("Data") or {}).get("UpperDir")
    if driver.get("Name") != "overlay2" or not upper:
        raise errors.UnsupportedContainer(
            f"{host.name} stores containers with {driver.get('Name')}: only overlay2 is supported",
            hint="configure the daemon with the overlay2 storage driver")
    return upper
