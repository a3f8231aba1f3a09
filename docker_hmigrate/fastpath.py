"""The fast checkpoint path: the source host's own runc and CRIU, driven through an agent.

Why: `POST /containers/{id}/checkpoints` makes runc dump into containerd's staging folder
(/tmp/ctrd-checkpoint*, on disk), containerd packs it into its content store (written and
synced), and dockerd unpacks it again into its checkpoints folder: the same bytes written
three times while the container is frozen (docs/downtime.md has the measured costs). Here
runc dumps once, straight into a 0700 folder on the host's tmpfs (/dev/shm), and the
move phase streams it from there into the target container's checkpoints folder, which
is the only place `docker start --checkpoint` reads (the restore stays on the API).

How: an *agent* container (created before the freeze, like the probe: empty image, the
host's loader and binaries, host pid namespace) enters the host's mount namespace through
the container's shim (its parent process, which lives in the daemon's namespace) and runs
`runc --root <exec-root>/runtime-runc/moby checkpoint` for the container, exactly what
containerd's runc shim runs for Docker (no leave-running: CRIU ends the process, dockerd
sees it exit as after `docker checkpoint create`). CRIU's work folder (dump.log,
stats-dump) stays in the same tmpfs folder, so CRIU's own figures can be read.

Docker's view afterwards is what the API path leaves: the source "Exited (137)", then
removed at commit (migrate.py holds the source's restart policy at "no" from before the
freeze, for both paths, or dockerd would restart the dumped source); the target started
by `docker start --checkpoint`, so `ps`, `inspect`, `logs`, `stop` and its restart policy
are Docker's own. Where the path does not apply (another runtime, no runc state found,
the agent refused) `FastCheckpoint.prepare` says why and the migration takes the API
path; a failed dump leaves the container running (CRIU resumes it), and the API path is
tried next.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import uuid
from collections.abc import Iterator
from typing import Any

import docker.errors

from docker_hmigrate import direct, errors
from docker_hmigrate.criu import log as criu_log
from docker_hmigrate.criu import stats as criu_stats
from docker_hmigrate.engine import HELPER_LABEL, PROBE_CAPS, Host, host_loader

TMPFS = "/dev/shm"  # tmpfs on every Linux host Docker runs on
# Below this much memory in use, copying the images into the restore folder costs less
# than the agent and the exec that make links (a shell counter: a few hundred KB).
LINKS_FROM_BYTES = 16 << 20
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Where dockerd (through containerd's runc shim) keeps runc's state, for the usual
# exec-roots (/var/run/docker, or --exec-root DIR): DIR/runtime-runc/moby/<id>.
_FIND_ROOT = ("for d in /run/*/runtime-runc/moby /var/run/*/runtime-runc/moby "
              "/run/docker/runtime-runc/moby; do [ -e \"$d/{id}/state.json\" ] && "
              "{{ echo \"$d\"; exit 0; }}; done; exit 1")

def memory_in_use(host: Host, container_id: str) -> int:
    """The container's anonymous memory, about what CRIU will write (its page cache is
    not dumped): rss on cgroup v1, anon on v2, else the whole usage."""
    stats = (host.api.stats(container_id, stream=False, one_shot=True)
             .get("memory_stats") or {})
    detail = stats.get("stats") or {}
    for key in ("total_rss", "rss", "anon"):
        if key in detail:
            return int(detail[key])
    return int(stats.get("usage") or 0)


class FastPathUnavailable(Exception):
    """Why the fast path does not apply; the migration takes the API path. `criu_log`:
    CRIU's dump.log when CRIU itself failed the dump (the caller decides whether the API
    path could do better: not when the process's state is what CRIU refuses)."""

    def __init__(self, message: str, criu_log: str = ""):
        super().__init__(message)
        self.criu_log = criu_log


def disabled_by_user() -> bool:
    return os.environ.get("HMIGRATE_FASTPATH", "1") == "0"


def refusal(host: Host, inspect: dict[str, Any]) -> str | None:
    """Why this container cannot take the fast path on this host (None: it can)."""
    if disabled_by_user():
        return "HMIGRATE_FASTPATH=0"
    runtime = inspect["HostConfig"].get("Runtime") or host.info.get("DefaultRuntime", "runc")
    if runtime != "runc":
        return f"runtime {runtime}, not runc"
    return None


def _ppid(pid: str) -> str:
    """Shell text giving the parent pid of `pid` with sh builtins only (the agent's own
    shell runs from the host's root, before any nsenter)."""
    return f'$(while read -r k v; do [ "$k" = PPid: ] && echo $v; done < /proc/{pid}/status)'


def relative_links(images: str, checkpoint_dir: str, name: str) -> str:
    """Shell script: `checkpoint_dir/name` (0700) holding a symlink per file of `images`.

    `docker start --checkpoint` tars `<DockerRootDir>/containers/<id>/checkpoints/<name>`
    into containerd's content store (written, hashed, synced) and unpacks it again into a
    staging folder for runc: the cost grows with the images. Symlinks make that copy a
    few hundred bytes; CRIU opens each image through its link and reads it from tmpfs.
    They are relative (enough ".." to reach / from any folder): CRIU opens images from
    inside the restored container's mount namespace, where an absolute link would be
    resolved in the container's root."""
    up = "../" * 32  # ".." stops at /: more than any folder's depth is harmless
    return (f"mkdir -p {shlex.quote(checkpoint_dir)} && "
            f"mkdir -m 0700 {shlex.quote(checkpoint_dir + '/' + name)} && "
            f"for f in {shlex.quote(images)}/*; do "
            f"ln -s \"{up.rstrip('/')}$f\" {shlex.quote(checkpoint_dir + '/' + name)}/; done")


class Agent:
    """A running container on a host that runs host commands in the daemon's mount
    namespace (nsenter through its own shim, which lives there): empty image, the host's
    loader and binaries, host pid namespace, the probe's capabilities. Made before the
    freeze; removed with close()."""

    def __init__(self, host: Host, extra_caps: tuple[str, ...] = ()):
        self.host = host
        self.id: str | None = None
        self.anchor = ""  # a pid in the daemon's mount namespace: the agent's shim
        self.extra_caps = list(extra_caps)  # post-copy: CRIU's page pipes (lazy.py)

    def start(self) -> None:
        api = self.host.api
        loader, _libdir = host_loader(self.host.isa)
        host_config = api.create_host_config(
            binds=["/:/host:ro"], pid_mode="host", network_mode="host",
            cap_add=PROBE_CAPS + self.extra_caps,
            security_opt=["seccomp=unconfined", "apparmor=unconfined"])
        # The host's cgroup namespace: on cgroup v2 a private one (the default there) makes
        # runc's dump fail ("cg: failed walking /proc/self/fd/N/../<id> for empty
        # cgroups", seen on host c). Daemons older than API 1.41 ignore the field.
        host_config["CgroupnsMode"] = "host"
        created = api.create_container(
            self.host.scratch_image, name=f"hmigrate-agent-{uuid.uuid4().hex[:12]}",
            host_config=host_config, labels={HELPER_LABEL: "agent", **self.host.labels},
            entrypoint=[f"/host{loader}", *self._libpath(), "/host/bin/sleep"],
            command=["3600"])  # bounded: a crashed plugin does not leave it for ever
        self.id = created["Id"]
        api.start(self.id)
        pid = api.inspect_container(self.id)["State"]["Pid"]
        status, out = self.sh("echo $PPID", anchor=_ppid(str(pid)))
        anchor = out.strip().splitlines()[-1] if status == 0 and out.strip() else ""
        if not anchor.isdigit():
            raise FastPathUnavailable(f"the daemon's mount namespace not found ({out})")
        self.anchor = _ppid(str(pid))

    def _libpath(self) -> list[str]:
        _loader, libdir = host_loader(self.host.isa)
        return ["--library-path", f"/host/lib/{libdir}:/host/usr/lib/{libdir}"]

    def run(self, script: str, anchor: str | None = None,
            stderr: bool = True) -> tuple[int, bytes]:
        """script in the host's mount namespace, as root with the agent's capabilities.
        The agent has no shell of its own: the host's sh and nsenter through the host's
        loader."""
        loader, _ = host_loader(self.host.isa)
        lib = " ".join(self._libpath())
        wrapped = (f"exec /host{loader} {lib} /host/usr/bin/nsenter -t {anchor or self.anchor}"
                   f" -m -- /bin/sh -c {shlex.quote('PATH=' + PATH + '; ' + script)}")
        cmd = [f"/host{loader}", *self._libpath(), "/host/bin/sh", "-c", wrapped]
        res = self.host.api.exec_create(self.id, cmd, stdout=True, stderr=stderr)
        out = self.host.api.exec_start(res["Id"])
        return self.host.api.exec_inspect(res["Id"])["ExitCode"], out

    def sh(self, script: str, anchor: str | None = None) -> tuple[int, str]:
        status, out = self.run(script, anchor)
        return status, out.decode(errors="replace")

    def close(self) -> None:
        if self.id:
            with contextlib.suppress(docker.errors.APIError):
                self.host.api.remove_container(self.id, force=True)
            self.id = None


class _TmpfsSide:
    """A 0700 folder on a host's tmpfs (it will hold process memory) and the agent that
    works in it; close() removes both."""

    def __init__(self, host: Host, checkpoint: str, extra_caps: tuple[str, ...] = ()):
        self.host = host
        # made 0700: root only; named after the migration's checkpoint, so that a
        # recovery finds it when the plugin was killed (recover.py)
        self.folder = f"{TMPFS}/{checkpoint}-{uuid.uuid4().hex[:6]}"
        self.agent = Agent(host, extra_caps)

    @contextlib.contextmanager
    def _or_closed(self) -> Iterator[None]:
        """Setting up: on failure everything made is removed, and the reason is a
        FastPathUnavailable (the migration takes the API path)."""
        try:
            yield
        except docker.errors.APIError as exc:
            self.close()
            raise FastPathUnavailable(f"agent container refused: {exc.explanation or exc}") \
                from exc
        except FastPathUnavailable:
            self.close()
            raise

    def close(self) -> None:
        if self.agent.id:
            with contextlib.suppress(docker.errors.APIError):
                self.agent.sh(f"rm -rf {self.folder}")
        self.agent.close()


class FastCheckpoint(_TmpfsSide):
    """One container's dump through the host's runc, into a tmpfs folder on its host.

    prepare() before the freeze (raises FastPathUnavailable), dump() at the freeze,
    stage_for_restore() only when rolling back, close() always (removes the images:
    they hold process memory, and the agent)."""

    def __init__(self, host: Host, inspect: dict[str, Any], checkpoint: str,
                 extra_caps: tuple[str, ...] = ()):
        super().__init__(host, checkpoint, extra_caps)
        self.inspect, self.checkpoint = inspect, checkpoint
        self.images = f"{self.folder}/{checkpoint}"  # named like the checkpoint: moved as is
        self.work = f"{self.folder}/work"
        self.runc_root = ""
        self.stats: dict[str, Any] | None = None
        self.dumped = False
        # --direct (direct.py): the pages go to the target's page server at this endpoint,
        # and the source stays frozen by its freezer, alive, until the target runs
        self.freezer: direct.Freezer | None = None
        self.page_server = ""

    # --- before the freeze -----------------------------------------------------------
    def prepare(self) -> None:
        reason = refusal(self.host, self.inspect)
        if reason:
            raise FastPathUnavailable(reason)
        with self._or_closed():
            self.agent.start()
            status, out = self._sh(f"mkdir -m 0700 {self.folder} {self.work} && "
                                   + _FIND_ROOT.format(id=self.inspect["Id"]))
            if status != 0 or not out.strip():
                raise FastPathUnavailable(
                    f"runc state of the container not found ({out.strip()})")
            self.runc_root = out.strip().splitlines()[-1]

    def _exec(self, script: str, stderr: bool = True) -> tuple[int, bytes]:
        return self.agent.run(script, stderr=stderr)

    def _sh(self, script: str) -> tuple[int, str]:
        return self.agent.sh(script)

    # --- at the freeze ---------------------------------------------------------------
    def dump(self) -> dict[str, Any] | None:
        """runc checkpoint into the tmpfs folder; CRIU's figures (or None). Raises
        FastPathUnavailable when the dump failed and the container still runs."""
        cid = self.inspect["Id"]
        runc = (f"runc --root {shlex.quote(self.runc_root)} checkpoint "
                f"--image-path {self.images} --work-path {self.work}")
        if self.freezer is not None:  # --direct: frozen first, so that it stays frozen
            status, out = self._sh(
                f"{self.freezer.freeze()} && {{ {runc} --leave-running --page-server "
                f"{self.page_server} {cid} || {{ rc=$?; {self.freezer.thaw()}; exit $rc; }}; }}")
        else:
            status, out = self._sh(f"{runc} {cid}")
        if status != 0:
            # read before close() removes the work folder with the agent
            _st, log = self._sh(f"cat {self.work}/dump.log 2>/dev/null")
            log = log if criu_log.failed(log) else ""
            why = criu_log.reason(log) or out.strip()[-300:]
            state = self.host.api.inspect_container(cid)["State"]
            if state.get("Running"):
                raise FastPathUnavailable(f"runc checkpoint failed: {why}", criu_log=log)
            kept = criu_log.keep(log, f"{self.checkpoint}-dump.log")
            raise errors.CriuError(
                f"runc checkpoint failed and {cid[:12]} is no longer running: {why}",
                hint=f"CRIU's dump log is kept in {kept}" if kept else
                "CRIU left no dump log")
        self.dumped = True
        return self.stats

    def read_stats(self) -> dict[str, Any] | None:
        """CRIU's stats-dump (after the downtime: an exec costs tens of milliseconds)."""
        if self.stats is None and self.dumped and self.agent.id:
            status, out = self._exec(f"cat {self.work}/stats-dump", stderr=False)
            self.stats = criu_stats.parse(out) if status == 0 else None
        return self.stats

    # --- --direct: the source frozen in place ----------------------------------------
    def find_freezer(self) -> direct.Freezer:
        """Before the freeze: the container's cgroup freezer (raises FastPathUnavailable)."""
        pid = int(self.host.api.inspect_container(self.inspect["Id"])["State"]["Pid"])
        found, out = direct.find(self.agent, pid)
        if found is None:
            raise FastPathUnavailable(f"the container's cgroup freezer not found ({out})")
        return found

    def thaw(self) -> None:
        """A rollback: the frozen source runs on (once a dump still running has ended)."""
        assert self.freezer is not None
        status, out = self._sh(self.freezer.thaw_after_dump(self.inspect["Id"]))
        if status != 0:
            raise errors.RollbackFailed(f"the source could not be thawed: {out.strip()}",
                                        hint=f"thaw it by hand: {self.freezer.thaw()}")

    def end_frozen(self) -> None:
        """The target runs: the frozen source ends without running again (direct.Freezer)."""
        assert self.freezer is not None
        self._sh(self.freezer.end_silently())

    # --- on failure ------------------------------------------------------------------
    def stage_for_restore(self, checkpoint_dir: str) -> None:
        """Make the images readable where `docker start --checkpoint` looks (rollback):
        links into the tmpfs folder, which stays until close()."""
        status, out = self._sh(f"test -e {self.images}/inventory.img && "
                               + relative_links(self.images, checkpoint_dir, self.checkpoint))
        if status != 0:
            raise errors.CriuError(
                f"the checkpoint could not be put in {checkpoint_dir}: {out.strip()}")

    def persist(self, checkpoint_dir: str) -> None:
        """Copy the images where `docker start --checkpoint` finds them after close()
        (the source is left stopped with its checkpoint for the user: the tmpfs folder and
        the agent go). Private, as CRIU's own checkpoints are not: 0700 folders, 0600."""
        dest = shlex.quote(f"{checkpoint_dir}/{self.checkpoint}")
        status, out = self._sh(
            f"test -e {self.images}/inventory.img && umask 077 && "
            f"mkdir -p {shlex.quote(checkpoint_dir)} && rm -rf {dest} && "
            f"cp -R {self.images} {dest} && chmod -R go-rwx {dest}")
        if status != 0:
            raise errors.CriuError(
                f"the checkpoint could not be kept in {checkpoint_dir}: {out.strip()}")


class FastRestore(_TmpfsSide):
    """The target side: the checkpoint lands in a 0700 tmpfs folder on the target, and the
    target container's checkpoints folder gets links to it (relative_links), so that
    `docker start --checkpoint` copies links instead of the images. Falls back to the
    plain folder (FastPathUnavailable) before the freeze; link() failing copies instead."""

    def __init__(self, host: Host, checkpoint: str, extra_caps: tuple[str, ...] = ()):
        super().__init__(host, checkpoint, extra_caps)
        self.checkpoint = checkpoint

    def prepare(self) -> None:
        if disabled_by_user():
            raise FastPathUnavailable("HMIGRATE_FASTPATH=0")
        with self._or_closed():
            self.agent.start()
            status, out = self.agent.sh(f"mkdir -m 0700 {self.folder}")
            if status != 0:
                raise FastPathUnavailable(f"no tmpfs folder on {self.host.name}: {out}")

    def link(self, checkpoint_dir: str) -> str:
        """After the move: the restore folder as links (or, failing that, a copy)."""
        images = f"{self.folder}/{self.checkpoint}"
        status, out = self.agent.sh(relative_links(images, checkpoint_dir, self.checkpoint))
        if status == 0:
            return "links"
        dest = shlex.quote(f"{checkpoint_dir}/{self.checkpoint}")
        status, out2 = self.agent.sh(f"rm -rf {dest}; cp -a {images} {dest}")
        if status != 0:
            raise errors.TransferInterrupted(
                f"the checkpoint could not be put in place on {self.host.name}: "
                f"{out.strip()} {out2.strip()}")
        return "copy"
