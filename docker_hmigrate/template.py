"""The inert template: what the target host gives a container, learnt without running
any of the user's code there (cross-ISA moves; docs/recode.md, "Target facts").

A cross-ISA restore needs a few facts only the target host has: its mount tree, cgroups
and namespaces as the target's CRIU dumps them, its vDSO/vvar layout and bytes, its auxv
(HWCAP, platform) and, on x86-64, the register fields CRIU checks (segment selectors,
FPU/xsave layout). They are taken from a checkpoint of a *template* container: the
source's configuration with
- every bind mount and volume replaced by an anonymous volume at the same path (the
  same mount tree shape, none of the user's data: nothing can be read or changed);
- no network (`none`: the same mount tree as a bridged container, no ports, nothing
  reachable), no restart policy, no health check, no log;
- the entrypoint replaced by a stub of the target ISA that blocks in one system call at
  once (`stub_elf`), copied in with PUT /archive before the start;
- the helpers' empty image instead of the user's, run as root in / (what the image gives
  a container, its files, user and working folder, shapes neither the mount tree nor the
  cgroups; the process's creds and cwd come from the source): one template serves every
  image of the same configuration, rebuilt images included, and needs no pull.
The checkpoint is cached per (target daemon, configuration) in the user's cache folder
(0700, files 0600): a second move to the same target pays nothing. A configuration's facts
are derived from its *host template* (the configuration without its bind mounts and
volumes, host_body) with the user's mounts grafted into the mount tree
(recode/hostimages.graft_user_mounts), so every configuration differing only in its mounts
shares one template per target: a first move of a new configuration to a host seen before
runs nothing there. Where a graft could be wrong, the configuration's own template is
taken (derivation_refusal; a restore with derived facts that failed). A migration takes it
while the hosts are validated (strategy.CrossIsa.start), so a first move waits for what is
left of it only, and leaves its removal to the migration's end.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import shutil
import struct
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_fixed

from docker_hmigrate import errors, interrupts, transfer
from docker_hmigrate.engine import HELPER_LABEL, SCRATCH_IMAGE, Host, api_error_text
from docker_hmigrate.polling import poll

STUB_PATH = "/.hmigrate-template-stub"
LABEL = "org.hmigrate.template"
VERSION = 2  # of the template recipe: part of the cache key (2: the empty image)

# The stub's whole program, per ISA: block in a system call that only a signal ends, and
# block again after one. Hand-encoded (a few instructions), so no compiler is needed on
# the machine that runs the migration.
_CODE = {
    # loop: mov eax, 34 (pause); syscall; jmp loop
    "x86-64": bytes.fromhex("b822000000" "0f05" "ebf7"),
    # loop: mov x0..x3, #0; mov x8, #73 (ppoll: no fds, no timeout); svc #0; b loop
    "aarch64": struct.pack("<7I", 0xD2800000, 0xD2800001, 0xD2800002, 0xD2800003,
                           0xD2800928, 0xD4000001, 0x17FFFFFA),
}
_MACHINE = {"x86-64": 62, "aarch64": 183}  # EM_X86_64, EM_AARCH64
_BASE = 0x400000


def stub_elf(isa: str) -> bytes:
    """A static ELF64 executable for isa: one read+execute PT_LOAD holding the headers and
    the code; the entry point is the code right after the program header."""
    code = _CODE[isa]
    ehsize, phsize = 64, 56
    entry = _BASE + ehsize + phsize
    size = ehsize + phsize + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, SysV
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, _MACHINE[isa], 1, entry, ehsize, 0, 0,
                               ehsize, phsize, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, _BASE, _BASE, size, size, 0x1000)
    return ehdr + phdr + code


def stub_archive(isa: str) -> bytes:
    """The stub as a tar stream for PUT /containers/{id}/archive at /."""
    data = stub_elf(isa)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(STUB_PATH.lstrip("/"))
        info.size, info.mode, info.mtime = len(data), 0o755, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def template_body(body: dict[str, Any], inspect_mounts: list[dict[str, Any]]) -> dict[str, Any]:
    """The create body of the inert template for a target container's create body."""
    t = copy.deepcopy(body)
    hc = t.setdefault("HostConfig", {})
    # Every place the user's data appears (bind mounts, named and anonymous volumes)
    # becomes an empty anonymous volume: the same external bind mount for CRIU.
    # Not read-only: daemons refuse a read-only anonymous volume, and the merge gives the
    # mount the source's flags anyway.
    mounts = [{"Type": "volume", "Target": m["Destination"]}
              for m in inspect_mounts if m.get("Type") in ("bind", "volume")]
    targets = {m["Target"] for m in mounts}
    mounts += [m for m in hc.get("Mounts") or []
               if m.get("Type") not in ("bind", "volume") and m.get("Target") not in targets]
    hc["Binds"], hc["Mounts"], hc["VolumesFrom"] = None, mounts, None
    t["Volumes"] = {k: v for k, v in (t.get("Volumes") or {}).items() if k not in targets}
    mode = hc.get("NetworkMode") or "default"
    if mode != "host" and not mode.startswith("container:"):
        hc["NetworkMode"] = "none"  # same mounts as bridge mode; nothing reachable
    hc["PortBindings"], hc["PublishAllPorts"], hc["Links"] = {}, False, None
    t.pop("NetworkingConfig", None)
    t.pop("ExposedPorts", None)
    hc["RestartPolicy"] = {"Name": "no"}
    hc["AutoRemove"] = False
    hc["LogConfig"] = {"Type": "none", "Config": {}}
    hc["Init"] = False
    t["Entrypoint"], t["Cmd"] = [STUB_PATH], []
    t["Env"] = []  # the user's secrets have nothing to do in it
    # no file of the user's image is needed: the empty image (Host.scratch_image), root, /
    t["Image"], t["User"], t["WorkingDir"] = SCRATCH_IMAGE, "", ""
    # the process's own uts namespace comes from the source: the template's name is not
    # used, and leaving it out lets containers of one image share a cached template
    t["Hostname"], t["Domainname"] = "", ""
    t["Healthcheck"] = {"Test": ["NONE"]}
    t["OnBuild"] = None
    t["Labels"] = {LABEL: str(VERSION), HELPER_LABEL: "template"}
    t["AttachStdin"] = t["AttachStdout"] = t["AttachStderr"] = False
    return t


def cache_dir() -> Path:
    base = os.environ.get("HMIGRATE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "docker-hmigrate")
    return Path(base) / "templates"


def cache_key(dst: Host, body: dict[str, Any]) -> str:
    """What makes two templates the same: the target daemon and its kernel, runtime and
    version, the template's configuration (the empty image in it) and this recipe."""
    info = dst.info
    facts = {"engine": info.get("ID"), "kernel": info.get("KernelVersion"),
             "server": info.get("ServerVersion"), "runc": (info.get("RuncCommit") or {}).get("ID"),
             "cgroup": [info.get("CgroupDriver"), info.get("CgroupVersion")],
             "body": body, "version": VERSION}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def _private_copy(src: Path, dst: Path) -> None:
    dst.mkdir(mode=0o700, parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            fd = os.open(dst / f.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(f.read_bytes())


def cached(key: str) -> Path | None:
    d = cache_dir() / key
    return d if (d / "inventory.img").is_file() else None


def forget(key: str) -> None:
    """Drop a cached template (a restore with it failed: the next move takes a new one).
    Renamed away first, so that a move copying it meanwhile sees it gone (load) instead of
    restoring from half of it (CRIU: "No utsns-12.img image")."""
    d = cache_dir() / key
    gone = d.with_name(f".old-{key}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(d, gone)
    except OSError:  # not there (another run forgot it first)
        return
    shutil.rmtree(gone, ignore_errors=True)


def load(key: str, into: Path) -> bool:
    """Copy a cached template into `into`; False (and `into` removed) when there is none,
    or when another move forgot it while it was being copied."""
    d = cached(key)
    if d is None:
        return False
    try:
        before = os.stat(d).st_ino
        _private_copy(d, into)
        whole = os.stat(d).st_ino == before and (into / "inventory.img").is_file()
    except OSError:
        whole = False
    if not whole:
        shutil.rmtree(into, ignore_errors=True)
    return whole


def store(key: str, images: Path) -> None:
    """Into the cache, atomically (another migration may store the same key)."""
    root = cache_dir()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=root))
    _private_copy(images, tmp)
    try:
        os.rename(tmp, root / key)
    except OSError:  # already stored by another run
        shutil.rmtree(tmp, ignore_errors=True)


ID_FILE = "hmigrate-template-container"  # beside the images: whose mounts they name


def container_id(images: Path) -> str:
    """The template container's id (its mount images name it: containerd's staging copies
    of a restore from them are found by it)."""
    with contextlib.suppress(OSError):
        return (images / ID_FILE).read_text().strip()
    return ""


class Stopped(errors.HmigrateError):
    """The migration that asked for the template gave up on it (stop was set)."""


def take_checkpoint(dst: Host, body: dict[str, Any], into: Path, name: str,
                    record: Callable[[str | None], None] = lambda cid: None,
                    stop: threading.Event | None = None, keep: bool = False) -> str:
    """Create, inject, start and checkpoint the inert template on dst; its images into
    `into` (0700). The container (and its anonymous volumes) is removed before returning
    its id; record(id) is called as it is created and record(None) once it is removed, so
    that a rollback meanwhile can remove it. `keep`: once the images are read, the
    template and the helper that read them stay (stopped, never started) for the caller
    to remove later, out of the way of the move (a removal takes seconds on a slow
    target): a migration's end removes every container with its label. `stop` set: no
    further step is begun (raises Stopped; a step in flight ends first)."""
    def step() -> None:
        if stop is not None and stop.is_set():
            raise Stopped("the template was given up")

    step()
    url = dst.api._url("/containers/create")
    if body.get("Image") == SCRATCH_IMAGE:
        dst.scratch_image  # noqa: B018 - imported there when missing
    body = dict(body, Labels={**(body.get("Labels") or {}), **dst.labels})
    with interrupts.shielded():  # created and recorded, or neither
        try:
            res = dst.api._result(dst.api._post_json(url, data=body, params={"name": name}),
                                  json=True)
        except docker.errors.APIError as exc:
            raise errors.HmigrateError(
                f"cannot create the template container on {dst.name}: "
                f"{api_error_text(exc)}",
                hint="the target must accept the source's configuration") from exc
        cid = res["Id"]
        record(cid)
    done, helper = False, ""
    try:
        dst.api.put_archive(cid, "/", stub_archive(dst.isa))
        step()
        dst.api.start(cid)
        _wait_blocked(dst, cid)
        step()
        _checkpoint(dst, cid, step)
        with interrupts.shielded():  # created and recorded, or neither
            helper = dst.create_helper([f"{dst.checkpoint_dir(cid)}:{transfer.SRC_MOUNT}:ro"])
        into.mkdir(mode=0o700, parents=True, exist_ok=True)
        transfer.download_folder("template checkpoint", dst, helper,
                                 f"{transfer.SRC_MOUNT}/template", into)
        fd = os.open(into / ID_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(cid)
        done = True
        return cid
    except docker.errors.APIError as exc:
        raise errors.CriuError(
            f"the template checkpoint on {dst.name} failed: {api_error_text(exc)}",
            hint="see the criu-dump.log named above on the target host") from exc
    finally:
        if not (done and keep):
            if helper:
                dst.remove_quietly(helper)
            remove(dst, cid)
            record(None)


FREEZE_TRIES = 3


def _gave_up_freezing(exc: BaseException) -> bool:
    return isinstance(exc, docker.errors.APIError) and "unable to freeze" in api_error_text(exc)


def _checkpoint(dst: Host, cid: str, step: Callable[[], None], name: str = "template") -> None:
    """The template's checkpoint, tried again when the freezer gave up: on a loaded host
    the stub is not scheduled soon enough to enter the freezer ("unable to freeze"); the
    container goes on running then, and it is inert: another try is harmless. Any other
    failure, or the last try's, is raised as it is."""
    retrying = Retrying(stop=stop_after_attempt(FREEZE_TRIES), wait=wait_fixed(1.0),
                        retry=retry_if_exception(_gave_up_freezing),
                        before=lambda state: state.attempt_number > 1 and step(),
                        reraise=True)
    retrying(dst.checkpoint_create, cid, name, exit=True)


def _wait_blocked(dst: Host, cid: str, timeout: float = 30) -> None:
    """Until the stub sleeps in its system call: the freezer cannot freeze a process that
    the runtime is still starting ("unable to freeze")."""
    def blocked() -> bool | None:
        procs = dst.api.top(cid, ps_args="-o pid,stat,args").get("Processes") or []
        ok = len(procs) == 1 and procs[0][1].startswith("S") and STUB_PATH in procs[0][-1]
        return True if ok else None

    if not poll(blocked, timeout, 0.1):
        raise errors.HmigrateError(f"the template stub on {dst.name} did not start in "
                                   f"{timeout:g}s")


def remove(dst: Host, cid: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        dst.api.remove_container(cid, force=True, v=True)


def host_body(body: dict[str, Any]) -> dict[str, Any]:
    """The template body without the user's bind mounts and volumes: what the host gives
    every configuration that differs from this one only in those (and in what
    template_body drops already: image, command, environment, network, ports). Its
    checkpoint, with the user's mounts grafted in (recode/hostimages.graft_user_mounts),
    stands for the configuration's own template."""
    h = copy.deepcopy(body)
    hc = h.setdefault("HostConfig", {})
    hc["Mounts"] = [m for m in hc.get("Mounts") or [] if m.get("Type") not in ("bind", "volume")]
    h["Volumes"] = {}
    return h


def user_paths(body: dict[str, Any]) -> list[str]:
    """Where a template body has the user's data (its anonymous volumes)."""
    return [m["Target"] for m in body.get("HostConfig", {}).get("Mounts") or []
            if m.get("Type") in ("bind", "volume")]


def derivation_refusal(body: dict[str, Any]) -> str:
    """Why the configuration's facts cannot be derived from its host template (empty: they
    can). Decided from the configuration alone."""
    from docker_hmigrate.recode import hostimages

    hc = body.get("HostConfig") or {}
    others = [m.get("Target", "") for m in hc.get("Mounts") or []
              if m.get("Type") not in ("bind", "volume")] + list(hc.get("Tmpfs") or {})
    if body.get("Volumes"):
        return "the configuration declares volumes of its own"
    return hostimages.graft_refusal(user_paths(body), others)


def _marker(key: str) -> Path:
    return cache_dir() / f"{key}.underivable"


def underivable(key: str) -> bool:
    """A restore with derived facts of this configuration failed before: take its own
    template from now on."""
    return _marker(key).exists()


def mark_underivable(key: str) -> None:
    root = cache_dir()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        _marker(key).touch(mode=0o600)


@dataclass
class Facts:
    """The target host's facts for one move: a checkpoint of the inert template, the
    configuration's own or its host template's with the user's mounts grafted in."""

    images: Path  # its CRIU images (0700): recode.template_facts, recode.merge_host_facts
    container_id: str  # the template container's id (containerd's staging copies name it)
    key: str  # the cache entry used (forget() it when a restore with it fails)
    cached: bool  # read from the cache: nothing was run on the target
    seconds: float = 0.0  # to read the cache or take the template
    config_key: str = ""  # derived: the configuration's own key (mark_underivable)
    derived: bool = False  # the host template's, with the user's mounts grafted in
    derivation: str = ""  # not derived: why (empty when the configuration has no mounts)


def target_facts(dst: Host, target_body: dict[str, Any], inspect: dict[str, Any],
                 into: Path, name: str,
                 record: Callable[[str | None], None] = lambda cid: None,
                 stop: threading.Event | None = None, keep: bool = False) -> Facts:
    """The target's facts for a container to be created there with `target_body` (the
    source's configuration, spec.py) from the source's `inspect`. In this order:
    - the configuration's own template from the cache;
    - its host template (the configuration without its bind mounts and volumes, host_body)
      from the cache or taken now, the user's mounts grafted in: every configuration
      that differs only in its mounts shares it, so a first move of a new configuration
      to a known host runs nothing there;
    - the configuration's own template taken now (then cached), where a graft could be
      wrong (derivation_refusal, or a restore with derived facts failed before).
    `into`: a new folder for the images; `name`: the template container's name; `record`,
    `stop`, `keep`: see take_checkpoint. Needs nothing of the target but its info when cached."""
    from docker_hmigrate.recode import hostimages
    from docker_hmigrate.recode.frames import Untranslatable

    started = time.monotonic()
    body = template_body(target_body, inspect.get("Mounts") or [])
    key = cache_key(dst, body)

    def done(images_key: str, cid: str, hit: bool, **kw: Any) -> Facts:
        return Facts(into, cid, images_key, cached=hit, seconds=time.monotonic() - started,
                     **kw)

    if load(key, into):
        return done(key, container_id(into), True)
    paths = user_paths(body)
    why = derivation_refusal(body) if paths else ""
    if paths and not why and underivable(key):
        why = "a restore with derived facts failed before"
    if paths and not why:
        hbody = host_body(body)
        hkey = cache_key(dst, hbody)
        host = load(hkey, into)
        if host:
            cid = container_id(into)
        else:
            cid = take_checkpoint(dst, hbody, into, name, record, stop, keep)
            store(hkey, into)
        try:
            hostimages.graft_user_mounts(into, paths)
            return done(hkey, cid, host, config_key=key, derived=True)
        except Untranslatable as exc:  # the host's tree has a mount in the way
            why = str(exc)
            shutil.rmtree(into, ignore_errors=True)
    cid = take_checkpoint(dst, body, into, name, record, stop, keep)
    store(key, into)
    return done(key, cid, False, derivation=why)
