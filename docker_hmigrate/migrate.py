"""The migration pipeline, phase by phase (docs/design.md, "The migration, phase by phase").

    1 validate   2 prepare target   3 checkpoint (freeze)   4 move   5 recode
    6 restore + verify   7 commit, or roll back

`Migration.run` is the one place where the phases are put in order; each phase is a
method below it. Whatever the migration creates is recorded in `Created`, so that a
failure at any point removes it and, once the source is frozen, restores the source from
its own checkpoint: after every attempt the container runs somewhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors

from docker_hmigrate import errors, park, recode, transfer
from docker_hmigrate.engine import Host, api_error_text
from docker_hmigrate.output import Reporter
from docker_hmigrate.polling import watch
from docker_hmigrate.spec import ContainerSpec, target_spec
from docker_hmigrate.validate import Check, Validation, image_check, validate

HOOK_POINTS = ("pre-restore", "post-restore", "failed-restore")


@dataclass
class MigrationOptions:
    container: str
    target_name: str | None = None
    keep_source: bool = False
    force: bool = False
    hooks: dict[str, str] = field(default_factory=dict)  # hook point -> shell command
    verify_seconds: float = 1.0


@dataclass
class Created:
    """What this migration made, to undo on failure."""

    target_container: str | None = None
    volumes: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    source_frozen: bool = False
    source_parked: bool = False  # cross-ISA: the park request is pending on the source
    template: str | None = None  # cross-ISA: the target's own checkpoint of the program


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
        self.frozen_at = 0.0
        self.downtime = 0.0
        self._links = contextlib.ExitStack()
        self._transfers: list[tuple[transfer.FolderLink, str, str]] = []
        self._progress_lock = threading.Lock()
        self.cross_isa = src.isa != dst.isa
        self.program: recode.Program | None = None
        self._checkpoint_link: transfer.FolderLink | None = None  # cross-ISA: via recode
        self._workdir: Path | None = None  # cross-ISA: the images, locally (mode 0700)

    # --- the pipeline --------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
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
            self._run_phases()
        finally:
            self._links.close()  # helper containers, on both hosts
            if self._workdir and os.environ.get("HMIGRATE_KEEP_IMAGES") == "1":
                # debugging a recode: the images stay, readable by root only (0700)
                self.rep.warn(f"cross-ISA images kept in {self._workdir} "
                              f"(HMIGRATE_KEEP_IMAGES=1): they hold process memory")
            elif self._workdir:  # checkpoint images hold process memory
                shutil.rmtree(self._workdir, ignore_errors=True)
        return self._result(time.monotonic() - started)

    def _run_phases(self) -> None:
        try:
            self.phase_validate()
            self.phase_prepare_target()
            self.phase_park()
            self.phase_checkpoint()
            self.phase_move()
            self.phase_recode()
            self.phase_restore()
            self.phase_commit()
        except BaseException as exc:
            self.roll_back(exc)
            raise

    def phase_validate(self) -> None:
        with self.rep.phase("validate") as ph:
            image = image_check(self.src, self.dst, self.spec.image, self.inspect["Image"])
            cross = None
            if self.cross_isa:
                cross, self.program = cross_isa_checks(self.src, self.dst, self.inspect,
                                                       self.spec)
            self.validation = validate(self.src, self.dst, self.inspect, self.spec, image, cross)
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

    def phase_prepare_target(self) -> None:
        with self.rep.phase("prepare target") as ph:
            self._ensure_image(ph)
            self._ensure_networks()
            self._create_volumes()
            if self.cross_isa:
                self._template_checkpoint(ph)
            body = self.spec.body
            url = self.dst.api._url("/containers/create")
            res = self.dst.api._result(
                self.dst.api._post_json(url, data=body, params={"name": self.spec.name}),
                json=True,
            )
            self.created.target_container = self.target_id = res["Id"]
            for net in list(self.spec.networks)[1:]:
                self.dst.api.connect_container_to_network(res["Id"], net)
            self._open_links(self.dst.inspect(res["Id"]))
            ph.update(f"created {self.spec.name} ({res['Id'][:12]})")

    def _template_checkpoint(self, ph) -> None:
        """Cross-ISA: start the program on the target with the same configuration, park it
        and checkpoint it, before the source is frozen. Its images that describe the host
        (mount tree, cgroups, namespaces) are what the target's CRIU expects; recode
        supplies the process itself (recode.merge_into_template). Volumes are still empty
        then: the source's data is copied over them after the freeze."""
        ph.update("template checkpoint on the target")
        self._workdir = Path(tempfile.mkdtemp(prefix="hmigrate-"))  # mode 0700
        url = self.dst.api._url("/containers/create")
        name = f"hmigrate-template-{self.checkpoint}"
        res = self.dst.api._result(
            self.dst.api._post_json(url, data=self.spec.body, params={"name": name}), json=True)
        self.created.template = res["Id"]
        want = park.fd_counts(self.src, self.inspect["Id"])
        self.dst.api.start(res["Id"])
        park.wait_like(self.dst, res["Id"], want)  # its processes started, as the source's
        park.park(self.dst, res["Id"], self.program.park_protocol, timeout=120)
        self.dst.checkpoint_create(res["Id"], "template", exit=True)
        with self.dst.helper([f"{self.dst.checkpoint_dir(res['Id'])}:{transfer.SRC_MOUNT}:ro"]) \
                as helper:
            (self._workdir / "template").mkdir(mode=0o700)
            transfer.download_folder("template checkpoint", self.dst, helper,
                                     f"{transfer.SRC_MOUNT}/template", self._workdir / "template")
        self._remove_template()

    def _remove_template(self) -> None:
        if self.created.template:
            with contextlib.suppress(docker.errors.NotFound):
                self.dst.api.remove_container(self.created.template, force=True)
            self.created.template = None

    def _open_links(self, target: dict[str, Any]) -> None:
        """Helper containers for every stream of the move phase, made before the freeze."""
        def link(what: str, src_bind: str, dst_bind: str, src_sub: str, dst_sub: str) -> None:
            folder = transfer.FolderLink(what, self.src, src_bind, self.dst, dst_bind)
            self._transfers.append((self._links.enter_context(folder), src_sub, dst_sub))

        # The checkpoint does not exist yet: bind the folder it will appear in.
        if self.cross_isa:  # downloaded, recoded here, then uploaded
            self._checkpoint_link = self._links.enter_context(transfer.FolderLink(
                "checkpoint", self.src, self.src.checkpoint_dir(self.inspect["Id"]),
                self.dst, self.dst.checkpoint_dir(target["Id"])))
        else:
            link("checkpoint", self.src.checkpoint_dir(self.inspect["Id"]),
                 self.dst.checkpoint_dir(target["Id"]), self.checkpoint, "")
        link("filesystem changes", _upper_dir(self.src, self.inspect),
             _upper_dir(self.dst, target), ".", "")
        for vol in self.spec.volumes:
            link(f"volume {vol.name}", vol.name, vol.name, ".", "")

    def phase_park(self) -> None:
        """Cross-ISA: bring every thread to an equivalence point before the dump."""
        if not self.cross_isa:
            return
        if self.program is None:  # --force cannot make up for a program recode can't read
            raise errors.NotMigratableCrossISA(
                f"{self.opts.container} cannot move from {self.src.isa} to {self.dst.isa}: "
                "its image was not built by the multi-ISA toolchain")
        with self.rep.phase("park") as ph:
            self.frozen_at = time.monotonic()  # the program stops making progress here
            parked = park.park_all(self.src, self.inspect["Id"], self.program.park_protocol)
            self.created.source_parked = True
            ph.update(f"{parked['processes']} processes parked" if "processes" in parked
                      else f"{parked.get('threads', '?')} thread(s) parked")

    def phase_checkpoint(self) -> None:
        with self.rep.phase("checkpoint") as ph:
            self.frozen_at = self.frozen_at or time.monotonic()
            try:
                self.src.checkpoint_create(self.inspect["Id"], self.checkpoint, exit=True)
            except docker.errors.APIError as exc:
                # The source keeps running when the dump fails: CRIU resumes it.
                raise errors.CriuError(
                    f"checkpoint of {self.opts.container} failed: {api_error_text(exc)}",
                    hint="read the criu-dump.log named above on the source host",
                ) from exc
            self.created.source_frozen = True
            ph.update(f"checkpoint {self.checkpoint}")

    def phase_move(self) -> None:
        with self.rep.phase("move") as ph:

            def progress(n: int) -> None:
                with self._progress_lock:
                    self.bytes_moved += n
                    ph.update(f"{self.bytes_moved / 1e6:.1f} MB")

            # Independent streams, in parallel: the downtime is the longest, not the sum.
            with ThreadPoolExecutor(max_workers=4) as pool:
                futures = [pool.submit(link.copy, src_sub, dst_sub, progress)
                           for link, src_sub, dst_sub in self._transfers]
                if self._checkpoint_link:
                    (self._workdir / "source").mkdir(mode=0o700)
                    futures.append(pool.submit(self._checkpoint_link.download,
                                               self.checkpoint, self._workdir / "source"))
                moved = [f.result() for f in futures]
            self.rep.set("transfers", [
                {"what": t.what, "bytes": t.bytes, "seconds": round(t.seconds, 3)} for t in moved
            ])
            ph.update(f"{self.bytes_moved / 1e6:.1f} MB in {len(moved)} stream(s)")

    def phase_recode(self) -> None:
        with self.rep.phase("recode") as ph:
            if not self.cross_isa:
                ph.skip(f"same ISA ({self.src.isa})")
            else:
                out, template = self._workdir / "target", self._workdir / "template"
                facts = recode.template_facts(template)
                timings = recode.recode(self._workdir / "source", out, self.program,
                                        self.src.isa, self.dst.isa, facts)
                recode.merge_into_template(out, template)
                self.rep.set("recode_seconds", {k: round(v, 4) for k, v in timings.items()})
                moved = self._checkpoint_link.upload(template, self.checkpoint)
                self.bytes_moved += moved.bytes
                ph.update(f"{self.src.isa} -> {self.dst.isa} in {timings['total']:.3f}s")
        self._links.close()  # the helpers are done; they must not hold the volumes

    def phase_restore(self) -> None:
        self._hook("pre-restore")
        with self.rep.phase("restore") as ph:
            cid = self.created.target_container
            try:
                self.dst.start(cid, checkpoint=self.checkpoint)
            except docker.errors.APIError as exc:
                raise errors.RestoreFailed(
                    f"restore on {self.dst.name} failed: {api_error_text(exc)}",
                    hint="the source was restored where it was; see the restore.log named above",
                ) from exc
            if self.cross_isa:  # restored parked, as it was dumped: let it go on
                park.resume_all(self.dst, cid, self.program.park_protocol)
            self.downtime = time.monotonic() - self.frozen_at
            ph.update(f"running on {self.dst.name}")
        with self.rep.phase("verify") as ph:
            self._verify_running(cid)
            ph.update(f"still running after {self.opts.verify_seconds:g}s")
        self._hook("post-restore", fatal=False)

    def phase_commit(self) -> None:
        with self.rep.phase("commit") as ph:
            # The restored container no longer needs its checkpoint: it holds process memory.
            with contextlib.suppress(docker.errors.APIError):
                self.dst.checkpoint_delete(self.created.target_container, self.checkpoint)
            with contextlib.suppress(docker.errors.APIError):
                self.src.checkpoint_delete(self.inspect["Id"], self.checkpoint)
            if self.opts.keep_source:
                ph.update("source kept (stopped)")
            else:
                self.src.api.remove_container(self.inspect["Id"], force=True)
                ph.update("source removed")
            self.created = Created()  # nothing to undo any more

    # --- rollback ------------------------------------------------------------------------
    def roll_back(self, cause: BaseException) -> None:
        created = self.created
        if not (created.target_container or created.volumes or created.networks
                or created.source_frozen or created.source_parked or created.template):
            return
        self._hook("failed-restore", fatal=False, error=str(cause))
        self._links.close()  # helpers bind the volumes to remove
        problems: list[str] = []
        with contextlib.suppress(docker.errors.APIError):
            self._remove_template()
        with self.rep.phase("roll back") as ph:
            if created.target_container:
                with contextlib.suppress(docker.errors.NotFound):
                    try:
                        self.dst.api.remove_container(created.target_container, force=True)
                    except docker.errors.APIError as exc:
                        problems.append(f"remove target container: {api_error_text(exc)}")
            for vol in created.volumes:
                with contextlib.suppress(docker.errors.NotFound):
                    try:
                        self.dst.api.remove_volume(vol, force=True)
                    except docker.errors.APIError as exc:
                        problems.append(f"remove volume {vol}: {api_error_text(exc)}")
            for net in created.networks:
                with contextlib.suppress(docker.errors.APIError):
                    self.dst.api.remove_network(net)
            if created.source_frozen:
                try:
                    self.src.start(self.inspect["Id"], checkpoint=self.checkpoint)
                    if created.source_parked:
                        park.resume_all(self.src, self.inspect["Id"], self.program.park_protocol)
                    self._verify_running(self.inspect["Id"], host=self.src)
                    with contextlib.suppress(docker.errors.APIError):
                        self.src.checkpoint_delete(self.inspect["Id"], self.checkpoint)
                except (docker.errors.APIError, errors.HmigrateError) as exc:
                    problems.append(
                        f"restore source {self.opts.container} from checkpoint "
                        f"{self.checkpoint}: {api_error_text(exc)}")
            elif created.source_parked:  # never dumped: only the request to withdraw
                try:
                    park.resume_all(self.src, self.inspect["Id"], self.program.park_protocol)
                except errors.HmigrateError as exc:
                    problems.append(exc.message)
            ph.update("source restored" if created.source_frozen else "target cleaned")
        self.created = Created()
        if problems:
            raise errors.RollbackFailed(
                f"migration failed ({cause}) and the rollback too: {'; '.join(problems)}",
                hint=f"the checkpoint {self.checkpoint} is kept on {self.src.name}: "
                     f"docker start --checkpoint {self.checkpoint} {self.opts.container}",
            ) from cause

    # --- helpers -------------------------------------------------------------------------
    def _target_image(self) -> str:
        return self.inspect["Config"]["Image"]

    def _ensure_image(self, ph) -> None:
        ref, image_id = self.spec.image, self.inspect["Image"]
        if self.cross_isa:  # the source's image is the other ISA's variant: never reuse it
            self._pull_target_variant(ph, ref)
            return
        if self.dst.image_present(image_id):
            named = self.dst.image_present(ref)
            if named is None:
                self.dst.api.tag(image_id, *_split_ref(ref))
            elif named["Id"] != image_id:
                # The target knows the name as another image: create from the exact one.
                self.spec.body["Image"] = image_id
            return
        if self.src.image_present(image_id):  # same ISA here: the very image can go over
            ph.update(f"copying image {ref}")
            moved = transfer.copy_image(self.src, self.dst, image_id)
            self.dst.api.tag(image_id, *_split_ref(ref))
            ph.update(f"image copied ({moved.bytes / 1e6:.1f} MB)")
            return
        self._pull(ph, ref)

    def _pull(self, ph, ref: str) -> None:
        """ref, in the target platform's variant, from a registry the target reaches."""
        ph.update(f"pulling {ref} for {self.dst.platform}")
        try:
            self.dst.api.pull(ref, platform=self.dst.platform)
        except docker.errors.APIError as exc:
            raise errors.ImageUnavailable(
                f"{self.dst.name} cannot pull {ref}: {api_error_text(exc)}",
                hint=f"push {ref} (with a {self.dst.platform} variant) to a registry "
                     f"{self.dst.name} can reach") from exc

    def _pull_target_variant(self, ph, ref: str) -> None:
        """The target ISA's variant of the image, by name (a target may also hold the
        source's variant, e.g. loaded by a multi-platform build)."""
        self._pull(ph, ref)
        got = self.dst.image_present(ref) or {}
        if got.get("Architecture") != self.dst.platform.split("/")[1]:
            raise errors.ImageUnavailable(
                f"{ref} on {self.dst.name} is {got.get('Architecture')}, not "
                f"{self.dst.platform}", hint="push a manifest list with both variants")
        self.spec.body["Image"] = ref

    def _ensure_networks(self) -> None:
        for net in self.spec.networks:
            if self.dst.client.networks.list(names=[net]):
                continue
            src_net = self.src.api.inspect_network(net)
            self.dst.api.create_network(net, driver=src_net.get("Driver"),
                                        options=src_net.get("Options"),
                                        labels=src_net.get("Labels"))
            self.created.networks.append(net)

    def _create_volumes(self) -> None:
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
            state = host.api.inspect_container(cid)["State"]
            if not state.get("Running") or state.get("Restarting"):
                raise errors.RestoreFailed(
                    f"the restored container on {host.name} is {state.get('Status')} "
                    f"(exit code {state.get('ExitCode')}): {state.get('Error') or 'no error'}",
                    hint="the source was restored where it was")

        watch(still_running, self.opts.verify_seconds, 0.1)

    def _hook(self, point: str, fatal: bool = True, error: str = "") -> None:
        command = self.opts.hooks.get(point)
        if not command:
            return
        env = {**os.environ, **self._facts(), "HMIGRATE_HOOK": point}
        if error:
            env["HMIGRATE_ERROR"] = error
        with self.rep.phase(f"hook {point}"):
            proc = subprocess.run(command, shell=True, env=env)
            if proc.returncode != 0:
                msg = f"the {point} hook exited with {proc.returncode}"
                if fatal:
                    raise errors.HmigrateError(msg, hint=f"fix the hook: {command}")
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
            "source_kept": self.opts.keep_source,
        }
        for k, v in result.items():
            self.rep.set(k, v)
        return result


def _upper_dir(host: Host, inspect: dict[str, Any]) -> str:
    driver = inspect.get("GraphDriver", {})
    upper = (driver.get("Data") or {}).get("UpperDir")
    if driver.get("Name") != "overlay2" or not upper:
        raise errors.UnsupportedContainer(
            f"{host.name} stores containers with {driver.get('Name')}: only overlay2 is supported",
            hint="configure the daemon with the overlay2 storage driver")
    return upper


def cross_isa_checks(src: Host, dst: Host, inspect: dict[str, Any], spec: ContainerSpec,
                     ) -> tuple[list[Check], recode.Program | None]:
    """What a move to another ISA needs, checked before anything is frozen."""
    checks: list[Check] = []
    try:
        program = recode.load_program(src, inspect)
    except errors.HmigrateError as exc:
        return [Check("built for migration across ISAs", False, exc.message, exc.hint or "",
                      errors.NotMigratableCrossISA)], None
    problems = recode.preflight(program, src.isa, dst.isa)
    checks.append(Check(
        f"recode {src.isa} -> {dst.isa}", not problems,
        "; ".join(problems) or f"{program.path}: both variants, park points clean",
        "rebuild with hmigrate-cc, or migrate to a host of the same ISA",
        errors.NotMigratableCrossISA))
    platforms = _distribution_platforms(dst, spec.image)
    arch = dst.platform.split("/")[1]
    checks.append(Check(
        f"image variant for {dst.platform}", arch in platforms,
        f"{spec.image} offers {', '.join(sorted(platforms)) or 'no platform list'}",
        f"push a multi-platform image with a {dst.platform} variant",
        errors.ImageUnavailable))
    seccomp = [o for o in inspect["HostConfig"].get("SecurityOpt") or []
               if o.startswith("seccomp")]
    unconfined = any(o.split("=", 1)[-1].split(":", 1)[-1] == "unconfined" for o in seccomp)
    checks.append(Check(
        "seccomp", unconfined,
        "unconfined" if unconfined else
        "the container has a seccomp filter, compiled for the source ISA's system calls",
        "run it with --security-opt seccomp=unconfined to migrate it across ISAs",
        errors.NotMigratableCrossISA))
    maps = _process_maps(src, inspect)
    shared = [f"pid {pid}: {f[0]} {f[5] if len(f) > 5 else ''} {f[6] if len(f) > 6 else ''}"
              .rstrip() for pid, f in maps if len(f) > 1 and f[1].endswith("s")]
    bad = [m for m in shared if not anonymous_shared(m)]
    checks.append(Check(
        "shared memory", not bad,
        f"shared mappings the recode does not translate: {'; '.join(bad[:3])}" if bad else
        f"anonymous shared memory, kept as data: {'; '.join(shared[:3])}" if shared else
        "none",
        "migrate it to a host of the same ISA", errors.NotMigratableCrossISA))
    if dst.isa == "x86-64":
        # aarch64 gives a process 48 bits of addresses, x86-64 47: what the program mapped
        # up there (its stack and mmaps when it started on aarch64) has no place on x86-64
        high = [f"pid {pid}: {f[0]} {f[5] if len(f) > 5 else '(anonymous)'}" for pid, f in maps
                if int(f[0].split("-")[1], 16) > X86_64_USER_END
                and not (len(f) > 5 and f[5] in ("[vdso]", "[vvar]"))]
        checks.append(Check(
            "address space", not high,
            f"mappings above x86-64's 47-bit user space: {'; '.join(high[:3])}" if high else
            "every mapping fits x86-64's 47-bit user space",
            "a program started on aarch64 cannot move to x86-64 (one that came from "
            "x86-64 can, until it maps memory up there)", errors.NotMigratableCrossISA))
    return checks, program


def anonymous_shared(mapping: str) -> bool:
    """Whether a shared mapping ("pid P: RANGE PATH") is anonymous shared memory (MAP_SHARED|
    MAP_ANONYMOUS or of /dev/zero: the kernel names both "/dev/zero (deleted)"), which
    recode keeps as data (recode/shared.py); SysV segments ("/SYSV..."), memfd_create()d
    objects ("/memfd:...") and files are not translated."""
    parts = mapping.split()
    return len(parts) >= 4 and parts[3] == "/dev/zero"


X86_64_USER_END = 0x7FFFFFFFF000  # x86-64's TASK_SIZE with 4-level page tables


def _process_maps(host: Host, inspect: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Every mapping of the container's processes (pid, /proc/PID/maps fields), read on
    the host by the probe, so that what the recode cannot translate (shared memory of
    other kinds, addresses the target cannot hold) is refused before the freeze rather
    than found after it."""
    try:
        procs = host.api.top(inspect["Id"], ps_args="-o pid")["Processes"] or []
    except docker.errors.APIError:
        return []
    pids = " ".join(p[0] for p in procs if p and p[0].isdigit())
    script = f"for p in {pids}; do sed \"s/^/pid $p /\" /proc/$p/maps; done"
    _status, out = host.run_probe(script)
    return [(line.split()[1], line.split()[2:]) for line in out.splitlines()
            if line.startswith("pid ") and len(line.split()) > 2]


def _distribution_platforms(host: Host, ref: str) -> set[str]:
    """Architectures the registry offers for ref, asked by the target daemon."""
    try:
        info = host.api.inspect_distribution(ref)
    except docker.errors.APIError:
        return set()
    return {p.get("architecture", "") for p in info.get("Platforms") or []}


def _split_ref(ref: str) -> tuple[str, str]:
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        return ref, "latest"
    return name, tag
