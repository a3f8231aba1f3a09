"""A Docker host as the migration sees it, and the engine API calls the SDK does not wrap.

Two levels, both here: `EngineAPIClient` is docker-py's `APIClient` plus, in its own
style, the routes it lacks (the experimental checkpoint routes, `start` from a
checkpoint, inspect with sizes); it is the only code that touches the SDK's private
helpers. `Host` is one daemon as the migration uses it: its facts (ISA, root folder),
checkpoints by name, helper containers that are created but never started and bind-mount
a host folder so that its files can be read or written with the archive endpoints, and a
probe container that runs the host's own tools (CRIU) under chroot. Everything goes
through the Engine API only.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import docker
import docker.auth
import docker.errors
import docker.utils
import requests.exceptions
import requests.utils
import urllib3.exceptions
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

from docker_hmigrate import interrupts, isa
from docker_hmigrate.errors import HmigrateError, UnknownContainer

HELPER_LABEL = "org.hmigrate.helper"
# On helpers, probes and locks: the migration (its checkpoint name) that made them, so
# that whatever an interrupt left behind can be found and removed by that label.
MIGRATION_LABEL = "org.hmigrate.migration"
LOCK_PREFIX = "hmigrate-lock-"
SCRATCH_IMAGE = "hmigrate/scratch:1"
# What `criu check` needs to inspect the kernel from inside the probe container.
PROBE_CAPS = ["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN", "DAC_READ_SEARCH", "SYS_CHROOT", "IPC_LOCK"]
# Go/Docker architecture names -> ISA names used by the toolchain and recode.
ISA_NAMES = isa.ALIASES
PLATFORMS = isa.PLATFORMS


class CheckpointApiMixin:
    """`POST/GET/DELETE /containers/{id}/checkpoints` and `POST /containers/{id}/start
    ?checkpoint=` (experimental daemons), written like docker-py's own API mixins."""

    @docker.utils.check_resource("container")
    def create_checkpoint(self, container: str, checkpoint_id: str,
                          checkpoint_dir: str | None = None, exit: bool = False) -> None:
        """Dump the container with CRIU; `exit` ends it (the API's default: it runs on)."""
        data: dict[str, Any] = {"CheckpointID": checkpoint_id, "Exit": exit}
        if checkpoint_dir:
            data["CheckpointDir"] = checkpoint_dir
        url = self._url("/containers/{0}/checkpoints", container)
        self._raise_for_status(self._post_json(url, data=data))

    @docker.utils.check_resource("container")
    def checkpoints(self, container: str,
                    checkpoint_dir: str | None = None) -> list[dict[str, Any]]:
        """The container's checkpoints ([{"Name": ...}])."""
        params = {"dir": checkpoint_dir} if checkpoint_dir else {}
        url = self._url("/containers/{0}/checkpoints", container)
        return self._result(self._get(url, params=params), json=True) or []

    @docker.utils.check_resource("container")
    def remove_checkpoint(self, container: str, checkpoint_id: str,
                          checkpoint_dir: str | None = None) -> None:
        params = {"dir": checkpoint_dir} if checkpoint_dir else {}
        url = self._url("/containers/{0}/checkpoints/{1}", container, checkpoint_id)
        self._raise_for_status(self._delete(url, params=params))

    @docker.utils.check_resource("container")
    def start(self, container: str, checkpoint: str | None = None) -> None:
        """Start the container, from `checkpoint` when given (a CRIU restore).

        Restoring right after a dump on the same daemon: the dump's copy in containerd's
        content store has the same digest and is only garbage collected a little later;
        until then the upload "already exists". Retried for up to 20 s."""
        url = self._url("/containers/{0}/start", container)
        params = {"checkpoint": checkpoint} if checkpoint else {}
        retrying = Retrying(
            stop=stop_after_delay(20), wait=wait_fixed(0.5), reraise=True,
            retry=retry_if_exception(lambda exc: bool(checkpoint) and isinstance(
                exc, docker.errors.APIError) and "already exists" in api_error_text(exc)))
        retrying(lambda: self._raise_for_status(self._post(url, params=params)))

    @docker.utils.check_resource("container")
    def inspect_container_size(self, container: str) -> dict[str, Any]:
        """inspect_container with the sizes (SizeRw, SizeRootFs): `GET .../json?size=1`."""
        url = self._url("/containers/{0}/json", container)
        return self._result(self._get(url, params={"size": 1}), json=True)


class EngineAPIClient(CheckpointApiMixin, docker.APIClient):
    """docker-py's low-level client with the checkpoint routes."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # noqa: ANN001, ANN201
        """The context's CA verifies its daemon even when REQUESTS_CA_BUNDLE is set:
        requests lets that variable override a session's own `verify` (requests issue
        3829), which made every TLS context fail "self-signed certificate in chain"."""
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and isinstance(self.verify, str):
            settings["verify"] = self.verify
        return settings


class EngineClient(docker.DockerClient):
    """docker.DockerClient whose `.api` is an EngineAPIClient (hosts.connect makes these)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.api = EngineAPIClient(*args, **kwargs)


def engine_api(api: Any) -> Any:
    """The checkpoint routes on the APIClient of a client made elsewhere (a plain
    docker.DockerClient): EngineAPIClient only adds methods, so the same connection is
    used as is. Anything else (a test's fake) is returned untouched."""
    if type(api) is docker.APIClient:
        api.__class__ = EngineAPIClient
    return api


class DaemonUnreachable(docker.errors.APIError):
    """The daemon did not answer (connection refused, reset or timed out): the outcome of
    the call is unknown. An APIError, so that every clean-up path that tolerates a failed
    call tolerates this one too; code that must know whether a call took effect (did the
    restore start the container?) tells it apart."""


# A pull whose daemon reports nothing this long (seconds) has stalled (Host.pull).
PULL_STALL = 120.0
# Once a daemon let a call time out, every later call to it waits this long at most: the
# clean-up that follows must not wait the full call timeout once per container (a wedged
# daemon accepts connections and never replies).
STUCK_TIMEOUT = 10


def raise_unreachable_as_api_errors(api: docker.APIClient, host: str) -> None:
    """Make `api` raise DaemonUnreachable instead of requests' network exceptions."""
    send = api.send

    def guarded_send(request, **kwargs):
        try:
            return send(request, **kwargs)
        except requests.exceptions.Timeout as exc:
            waited = api.timeout
            impatient(api)
            raise DaemonUnreachable(
                f"the daemon at {host} did not answer {request.method} {_path(request.url)} "
                f"within {waited:g} s: it is stuck or overloaded",
                explanation=f"{host} does not answer") from exc
        except requests.exceptions.ConnectionError as exc:
            raise DaemonUnreachable(f"the daemon at {host} does not answer: {exc}",
                                    explanation=f"{host} does not answer") from exc

    api.send = guarded_send  # type: ignore[method-assign]


def _path(url: str) -> str:
    """/containers/json of http+docker://localhost/v1.45/containers/json?all=1"""
    path = requests.utils.urlparse(url).path
    return "/" + path.split("/", 2)[2] if path.startswith("/v1.") and path.count("/") > 1 else path


def impatient(api: docker.APIClient) -> None:
    """Later calls on `api` time out after STUCK_TIMEOUT (see there)."""
    api.hmigrate_stuck = True  # answer_within keeps it short
    api.timeout = min(api.timeout or STUCK_TIMEOUT, STUCK_TIMEOUT)


def stuck(api: docker.APIClient) -> bool:
    """Whether a call on `api` has timed out (impatient)."""
    return getattr(api, "hmigrate_stuck", False)


def share_one_connection_pool(api: docker.APIClient) -> None:
    """Reuse kept-alive connections across requests to a unix socket.

    docker-py's unix adapter keeps one pool per request URL, so every container id or
    query string opens a new connection (15 calls made 11). Free on a local socket; over
    ssh:// each connection is a remote `docker system dial-stdio`. Every URL reaches the
    same socket, so one pool serves them all, as requests' own adapter does for tcp://
    (where attach and exec streams already share it).
    """
    from docker.transport.unixconn import UnixHTTPAdapter

    adapter = getattr(api, "_custom_adapter", None)
    if not isinstance(adapter, UnixHTTPAdapter):
        return
    get_connection = adapter.get_connection

    def one_pool(url, proxies=None):  # noqa: ANN001, ANN202 - requests' adapter signature
        return get_connection("http+docker://localhost", proxies)

    adapter.get_connection = one_pool  # type: ignore[method-assign]


@dataclass
class Host:
    """One Docker daemon, named as the user named it (context name or URL)."""

    name: str
    client: docker.DockerClient = field(repr=False)
    # Labels put on every helper and probe this host makes (the migration's own label).
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        engine_api(self.client.api)

    @property
    def api(self) -> EngineAPIClient:
        return self.client.api

    @contextlib.contextmanager
    def answer_within(self, seconds: float) -> Iterator[None]:
        """Calls made meanwhile wait at most `seconds` for the daemon's answer (no longer
        than they would otherwise); the timeout before is put back unless the daemon was
        found stuck meanwhile (impatient: shorter still)."""
        before = self.api.timeout
        self.api.timeout = min(before or seconds, seconds)
        try:
            yield
        finally:
            self.api.timeout = (min(before or STUCK_TIMEOUT, STUCK_TIMEOUT) if stuck(self.api)
                                else before)

    @cached_property
    def info(self) -> dict[str, Any]:
        return self.client.info()

    @cached_property
    def version(self) -> dict[str, Any]:
        return self.client.version()

    @property
    def isa(self) -> str:
        arch = self.info.get("Architecture", "")
        return ISA_NAMES.get(arch, arch)

    @property
    def platform(self) -> str:
        return PLATFORMS.get(self.isa, f"linux/{self.isa}")

    @property
    def root_dir(self) -> str:
        return self.info["DockerRootDir"]

    @property
    def experimental(self) -> bool:
        return bool(self.info.get("ExperimentalBuild"))

    def inspect(self, container: str) -> dict[str, Any]:
        try:
            return self.api.inspect_container(container)
        except docker.errors.NotFound:
            raise UnknownContainer(f"no container '{container}' on {self.name}") from None

    # --- checkpoints, by name (EngineAPIClient's routes) ---------------------------------
    def checkpoint_create(self, container: str, name: str, exit: bool = True) -> None:
        self.api.create_checkpoint(container, name, exit=exit)

    def checkpoint_list(self, container: str) -> list[str]:
        return [c["Name"] for c in self.api.checkpoints(container)]

    def checkpoint_delete(self, container: str, name: str) -> None:
        self.api.remove_checkpoint(container, name)

    def start(self, container: str, checkpoint: str | None = None) -> None:
        """Start the container, restoring `checkpoint` when given (retried while
        containerd still holds a fresh dump's copy: EngineAPIClient.start)."""
        self.api.start(container, checkpoint=checkpoint)

    def checkpoint_dir(self, container_id: str) -> str:
        """Where the daemon keeps (and restores from) a container's checkpoints."""
        return f"{self.root_dir}/containers/{container_id}/checkpoints"

    # --- helper containers -----------------------------------------------------------------
    @cached_property
    def scratch_image(self) -> str:
        """An empty image for helper and probe containers, imported when missing.

        Their files are never used, but a container needs an image; the container being
        migrated may not have its image on the other host yet.
        """
        try:
            self.api.inspect_image(SCRATCH_IMAGE)
        except docker.errors.ImageNotFound:
            empty = io.BytesIO()
            tarfile.open(fileobj=empty, mode="w").close()
            repo, tag = SCRATCH_IMAGE.split(":")
            self.api.import_image_from_data(empty.getvalue(), repository=repo, tag=tag,
                                            changes=[f"LABEL {HELPER_LABEL}=scratch"])
        return SCRATCH_IMAGE

    @contextlib.contextmanager
    def helper(self, binds: list[str]) -> Iterator[str]:
        """A created, never started container with `binds`, removed on exit.

        The archive endpoints work on it, which gives read and write access to the bound
        host folders or volumes without any access to the host but the engine API.
        """
        cid = ""
        try:
            with interrupts.shielded():  # created and recorded, or neither
                cid = self.create_helper(binds)
            yield cid
        finally:
            if cid:
                self.remove_quietly(cid)

    def create_helper(self, binds: list[str]) -> str:
        """helper()'s container, created only: the caller removes it (remove_quietly), or
        the migration's end does (it carries the migration's label)."""
        name = f"hmigrate-helper-{uuid.uuid4().hex[:12]}"
        host_config = self.api.create_host_config(binds=binds, network_mode="none")
        return self.api.create_container(
            self.scratch_image, command=["hmigrate-helper-never-started"], name=name,
            host_config=host_config, labels={HELPER_LABEL: "1", **self.labels},
            network_disabled=True,
        )["Id"]

    def remove_quietly(self, cid: str) -> None:
        """Remove a container of ours; an interrupt waits until it is gone."""
        with interrupts.shielded(), contextlib.suppress(docker.errors.APIError):
            self.api.remove_container(cid, force=True, v=True)

    def remove_labelled(self, label: str, value: str) -> list[str]:
        """Remove every container with label=value (what an interrupt may have left)."""
        removed = []
        with interrupts.shielded():
            for c in self.api.containers(all=True, filters={"label": f"{label}={value}"}):
                self.remove_quietly(c["Id"])
                removed.append(c["Id"])
        return removed

    def run_probe(self, script: str, timeout: float = 120, host_tmp: bool = False,
                  stop: threading.Event | None = None,
                  private: bool = False) -> tuple[int, str]:
        """Run `script` with the host's own /bin/sh, chrooted into the host's root.

        The probe container has the capabilities CRIU needs, shares the host's pid namespace
        and binds the host's / at /host; its entrypoint is the host's dynamic loader running the
        host's chroot, so its image can be empty. `host_tmp`: the host's own /tmp, writable
        (to remove containerd's staging copies), instead of a private one. `stop`: when
        set, the probe is killed (a watcher) and what it printed so far is returned.
        `private`: what it prints holds process memory; no log driver sees it (a daemon's
        journald or remote driver would keep it): it is read from the attach stream.
        """
        loader, libdir = host_loader(self.isa)
        name = f"hmigrate-probe-{uuid.uuid4().hex[:12]}"
        tmp = {} if host_tmp else {"/host/tmp": "mode=1777"}
        host_config = self.api.create_host_config(
            # The host's root read-only (recursively so on newer daemons), /proc writable
            # (criu check writes ns_last_pid), a private /tmp where `criu check` makes dirs.
            binds=["/:/host:ro", "/proc:/host/proc"] + (["/tmp:/host/tmp"] if host_tmp else []),
            tmpfs=tmp,
            pid_mode="host", network_mode="host",
            # Not --privileged: it asks for every capability, and a host that lacks one
            # (CAP_SYS_RESOURCE in some sandboxes) refuses to start the container.
            cap_add=PROBE_CAPS, security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        )
        if private:
            host_config["LogConfig"] = {"Type": "none", "Config": {}}
        cid = ""
        try:
            with interrupts.shielded():  # created and recorded, or neither
                cid = self.api.create_container(
                    self.scratch_image, name=name, host_config=host_config,
                    labels={HELPER_LABEL: "probe", **self.labels},
                    entrypoint=[f"/host{loader}", "--library-path",
                                f"/host/lib/{libdir}:/host/usr/lib/{libdir}",
                                "/host/usr/sbin/chroot"],
                    command=["/host", "/bin/sh", "-c", script],
                    environment={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                                         "/sbin:/bin"},
                )["Id"]
            attached = self.api.attach(cid, stdout=True, stderr=True, stream=True,
                                       logs=False) if private else None
            self.api.start(cid)
            if stop is not None:
                def killer() -> None:
                    stop.wait(timeout)
                    with contextlib.suppress(docker.errors.APIError):
                        self.api.kill(cid)
                threading.Thread(target=killer, daemon=True).start()
            if attached is not None:
                out = b"".join(attached).decode(errors="replace")
            status = self.api.wait(cid, timeout=timeout + 30)["StatusCode"]
            if attached is None:
                out = self.api.logs(cid, stdout=True, stderr=True).decode(errors="replace")
            return status, out
        finally:
            if cid:
                self.remove_quietly(cid)

    def remove_checkpoint_staging(self, container_ids: list[str], since: float = 0) -> int:
        """Remove containerd's staging copies (/tmp/ctrd-checkpoint*) of the checkpoints
        of these containers: they hold process memory, and containerd 1.6 leaves the one
        of every restore behind. Ours are told apart by the container id in their mount
        images; only folders made after `since` (epoch seconds) are looked at."""
        pattern = " ".join(f"-e {cid}" for cid in container_ids if cid)
        newer = f"-newermt @{int(since) - 5}" if since else ""
        script = (f"n=0; for d in $(find /tmp -maxdepth 1 -type d -name 'ctrd-checkpoint*' "
                  f"{newer}); do if grep -lqsF {pattern} \"$d\"/mountpoints-*.img; then "
                  "rm -rf \"$d\"; n=$((n+1)); fi; done; echo removed=$n")
        _status, out = self.run_probe(script, host_tmp=True)
        for line in out.splitlines():
            if line.startswith("removed=") and line[8:].isdigit():
                return int(line[8:])
        return 0

    def pull(self, ref: str, platform: str, stall: float = PULL_STALL,
             progress: Callable[[dict[str, Any]], None] = lambda msg: None) -> None:
        """`docker pull --platform` of ref, its progress messages passed to `progress`.
        docker-py's own pull waits without any timeout (a stalled registry or a wedged
        daemon would hang the move for ever): here every read waits `stall` seconds at
        most, which a pull in progress never reaches (the daemon reports each chunk)."""
        repository, tag = docker.utils.parse_repository_tag(ref)
        registry, _ = docker.auth.resolve_repository_name(repository)
        headers = {}
        header = docker.auth.get_config_header(self.api, registry)
        if header:
            headers["X-Registry-Auth"] = header
        params = {"fromImage": repository, "tag": tag or "latest", "platform": platform}
        response = self.api._post(self.api._url("/images/create"), params=params,
                                  headers=headers, stream=True, timeout=stall)
        self.api._raise_for_status(response)
        try:
            for msg in self.api._stream_helper(response, decode=True):
                if msg.get("error"):
                    raise docker.errors.APIError(msg["error"], response=response,
                                                 explanation=msg["error"])
                progress(msg)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
                OSError) as exc:  # docker-py reads the stream from the raw socket
            raise DaemonUnreachable(
                f"pulling {ref} on {self.name} made no progress in {stall:g} s: {exc}",
                explanation=f"no progress in {stall:g} s") from exc
        finally:
            response.close()

    def image_present(self, ref: str) -> dict[str, Any] | None:
        try:
            return self.api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as exc:
            raise HmigrateError(f"cannot inspect image {ref} on {self.name}: {exc}") from exc


def host_loader(name: str) -> tuple[str, str]:
    """The host's dynamic loader and library folder name, for running its own binaries
    from a container with the host's / bound (an unknown ISA: x86-64's, as before)."""
    # The real files, not /lib64's absolute symlink, which would resolve in the container.
    host_isa = isa.BY_NAME.get(isa.ALIASES.get(name, ""), isa.X86_64)
    return host_isa.dynamic_loader, host_isa.gnu_triple


def api_error_text(exc: Exception) -> str:
    """The daemon's own explanation, without the SDK's URL noise."""
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        return str(exc.explanation)
    return str(exc)
