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
from typing import Any

import docker.errors

from docker_hmigrate.criu import stats as criu_stats
from docker_hmigrate.engine import HELPER_LABEL, PROBE_CAPS, Host, _host_loader

TMPFS = "/dev/shm"  # tmpfs on every Linux host Docker runs on
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Where dockerd (through containerd's runc shim) keeps runc's state, for the usual
# exec-roots (/var/run/docker, or --exec-root DIR): DIR/runtime-runc/moby/<id>.
_FIND_ROOT = ("for d in /run/*/runtime-runc/moby /var/run/*/runtime-runc/moby "
              "/run/docker/runtime-runc/moby; do [ -e \"$d/{id}/state.json\" ] && "
              "{{ echo \"$d\"; exit 0; }}; done; exit 1")
_ANCHOR = ("a=$(tr '\\0' '\\n' < /proc/{shim}/cmdline | sed -n '/^-address$/{{n;p;}}'); "
           "p=$(cat \"${{a%/*}}/containerd.pid\" 2>/dev/null) || p=$(pidof containerd dockerd); "
           "echo ${{p%% *}}")


class FastPathUnavailable(Exception):
    """Why the fast path does not apply; the migration takes the API path."""


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


class FastCheckpoint:
    """One container's dump through the host's runc, into a tmpfs folder on its host.

    prepare() before the freeze (raises FastPathUnavailable), dump() at the freeze,
    stage_for_restore() only when rolling back, close() always (removes the images:
    they hold process memory, and the agent)."""

    def __init__(self, host: Host, inspect: dict[str, Any], checkpoint: str):
        self.host, self.inspect, self.checkpoint = host, inspect, checkpoint
        self.folder = f"{TMPFS}/hmigrate-{uuid.uuid4().hex[:12]}"  # 0700, root only
        self.images = f"{self.folder}/{checkpoint}"  # named like the checkpoint: moved as is
        self.work = f"{self.folder}/work"
        self.agent: str | None = None
        self.runc_root = ""
        self.anchor = ""  # a pid in the daemon's mount namespace
        self.stats: dict[str, Any] | None = None
        self.dumped = False

    # --- before the freeze -----------------------------------------------------------
    def prepare(self) -> None:
        reason = refusal(self.host, self.inspect)
        if reason:
            raise FastPathUnavailable(reason)
        try:
            self._start_agent()
            # A process that lives in the daemon's mount namespace for the whole migration
            # (the container's shim exits with the dumped container): containerd, whose
            # pid file sits next to the socket named on the shim's command line.
            shim = ('$(while read -r k v; do [ "$k" = PPid: ] && echo $v; done '
                    f"< /proc/{self.inspect['State']['Pid']}/status)")  # sh builtins only
            status, out = self._sh(_ANCHOR.format(shim=shim), anchor=shim)
            anchor = out.strip().splitlines()[-1] if status == 0 and out.strip() else ""
            if not anchor.isdigit():
                raise FastPathUnavailable(f"the daemon's mount namespace not found ({out})")
            self.anchor = anchor
            status, out = self._sh(f"mkdir -m 0700 {self.folder} {self.work} && "
                                   + _FIND_ROOT.format(id=self.inspect["Id"]))
            if status != 0 or not out.strip():
                raise FastPathUnavailable(
                    f"runc state of the container not found ({out.strip()})")
            self.runc_root = out.strip().splitlines()[-1]
        except docker.errors.APIError as exc:
            self.close()
            raise FastPathUnavailable(f"agent container refused: {exc.explanation or exc}") \
                from exc
        except FastPathUnavailable:
            self.close()
            raise

    def _start_agent(self) -> None:
        api = self.host.api
        loader, _libdir = _host_loader(self.host.isa)
        host_config = api.create_host_config(
            binds=["/:/host:ro"], pid_mode="host", network_mode="host",
            cap_add=PROBE_CAPS, security_opt=["seccomp=unconfined", "apparmor=unconfined"])
        created = api.create_container(
            self.host.scratch_image, name=f"hmigrate-agent-{uuid.uuid4().hex[:12]}",
            host_config=host_config, labels={HELPER_LABEL: "agent"},
            entrypoint=[f"/host{loader}", *self._libpath(), "/host/bin/sleep"],
            command=["3600"])  # bounded: a crashed plugin does not leave it for ever
        self.agent = created["Id"]
        api.start(self.agent)

    def _libpath(self) -> list[str]:
        _loader, libdir = _host_loader(self.host.isa)
        return ["--library-path", f"/host/lib/{libdir}:/host/usr/lib/{libdir}"]

    def _exec(self, script: str, anchor: str | None = None,
              stderr: bool = True) -> tuple[int, bytes]:
        """script in the host's mount namespace (nsenter into the anchor's), as root with
        the agent's capabilities. The agent has no shell of its own: the host's sh and
        nsenter through the host's loader."""
        loader, _ = _host_loader(self.host.isa)
        lib = " ".join(self._libpath())
        wrapped = (f"exec /host{loader} {lib} /host/usr/bin/nsenter -t {anchor or self.anchor}"
                   f" -m -- /bin/sh -c {shlex.quote('PATH=' + PATH + '; ' + script)}")
        cmd = [f"/host{loader}", *self._libpath(), "/host/bin/sh", "-c", wrapped]
        res = self.host.api.exec_create(self.agent, cmd, stdout=True, stderr=stderr)
        out = self.host.api.exec_start(res["Id"])
        return self.host.api.exec_inspect(res["Id"])["ExitCode"], out

    def _sh(self, script: str, anchor: str | None = None) -> tuple[int, str]:
        status, out = self._exec(script, anchor)
        return status, out.decode(errors="replace")

    # --- at the freeze ---------------------------------------------------------------
    def dump(self) -> dict[str, Any] | None:
        """runc checkpoint into the tmpfs folder; CRIU's figures (or None). Raises
        FastPathUnavailable when the dump failed and the container still runs."""
        cid = self.inspect["Id"]
        status, out = self._sh(
            f"runc --root {shlex.quote(self.runc_root)} checkpoint "
            f"--image-path {self.images} --work-path {self.work} {cid}")
        if status != 0:
            state = self.host.api.inspect_container(cid)["State"]
            if state.get("Running"):
                raise FastPathUnavailable(f"runc checkpoint failed: {out.strip()[-300:]}")
            raise RuntimeError(f"runc checkpoint failed and {cid[:12]} is no longer "
                               f"running: {out.strip()[-300:]}")
        self.dumped = True
        return self.stats

    def read_stats(self) -> dict[str, Any] | None:
        """CRIU's stats-dump (after the downtime: an exec costs tens of milliseconds)."""
        if self.stats is None and self.dumped and self.agent:
            status, out = self._exec(f"cat {self.work}/stats-dump", stderr=False)
            self.stats = criu_stats.parse(out) if status == 0 else None
        return self.stats

    # --- on failure ------------------------------------------------------------------
    def stage_for_restore(self, checkpoint_dir: str) -> None:
        """Copy the images where `docker start --checkpoint` reads them (rollback)."""
        dest = f"{checkpoint_dir}/{self.checkpoint}"
        status, out = self._sh(f"mkdir -p {shlex.quote(checkpoint_dir)} && "
                               f"cp -a {self.images} {shlex.quote(dest)}")
        if status != 0:
            raise RuntimeError(f"copying the checkpoint to {dest} failed: {out.strip()}")

    def close(self) -> None:
        if self.agent:
            with contextlib.suppress(docker.errors.APIError):
                self._sh(f"rm -rf {self.folder}")
            with contextlib.suppress(docker.errors.APIError):
                self.host.api.remove_container(self.agent, force=True)
            self.agent = None
