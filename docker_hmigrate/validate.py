"""Pre-migration validations: every reason a migration would fail, found before freezing.

Host facts the engine API does not expose (CRIU's version and `criu check`, free memory
and disk, CPU flags, whether bind-mount sources exist) are read by a short probe
container per host (engine.Host.run_probe), both hosts in parallel.
"""

from __future__ import annotations

import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import docker.errors

from docker_hmigrate import errors
from docker_hmigrate.engine import Host, api_error_text
from docker_hmigrate.spec import ContainerSpec

# Headroom over the container's current memory use, for the restore's own needs.
MEMORY_HEADROOM = 1.25


@dataclass
class HostFacts:
    criu_version: str = ""
    criu_check: bool = False
    criu_log: list[str] = field(default_factory=list)
    mem_available: int = 0  # bytes
    disk_free: int = 0  # bytes, on the filesystem of DockerRootDir
    cpu_flags: set[str] = field(default_factory=set)
    runc_version: str = ""
    missing_paths: list[str] = field(default_factory=list)
    probe_error: str = ""
    # The kernel's special mappings ([vdso], [vvar], ...) as a process there sees them,
    # name -> list of (start, end): what a recoded image must reserve for the target.
    special_maps: dict[str, list[tuple[int, int]]] = field(default_factory=dict)


def probe_script(root_dir: str, paths: list[str]) -> str:
    checks = "".join(f"[ -e {shlex.quote(p)} ] || echo missing_path={p}\n" for p in paths)
    return rf"""
echo criu_version=$(criu --version 2>/dev/null | sed -n 's/^Version: //p')
if criu check >/tmp/criu-check.log 2>&1; then echo criu_check=ok
else echo criu_check=fail; tail -n 5 /tmp/criu-check.log | sed 's/^/criu_log=/'; fi
echo mem_available_kb=$(awk '/^MemAvailable:/ {{print $2}}' /proc/meminfo)
echo disk_free_kb=$(df -Pk {shlex.quote(root_dir)} | awk 'NR==2 {{print $4}}')
echo cpu_flags=$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo | cut -d: -f2)
echo runc_version=$(runc --version 2>/dev/null | sed -n 's/^runc version //p')
grep -E '\[(vdso|vvar|vvar_vclock|vsyscall)\]' /proc/self/maps | sed 's/^/special_map=/'
{checks}"""


def parse_probe(output: str) -> HostFacts:
    facts = HostFacts()
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if key == "criu_version":
            facts.criu_version = value
        elif key == "criu_check":
            facts.criu_check = value == "ok"
        elif key == "criu_log":
            facts.criu_log.append(value)
        elif key == "mem_available_kb" and value.isdigit():
            facts.mem_available = int(value) * 1024
        elif key == "disk_free_kb" and value.isdigit():
            facts.disk_free = int(value) * 1024
        elif key == "cpu_flags":
            facts.cpu_flags = set(value.split())
        elif key == "runc_version":
            facts.runc_version = value
        elif key == "missing_path":
            facts.missing_paths.append(value)
        elif key == "special_map" and value:
            fields = value.split()
            lo, _, hi = fields[0].partition("-")
            facts.special_maps.setdefault(fields[-1].strip("[]"), []).append(
                (int(lo, 16), int(hi, 16)))
    return facts


def probe(host: Host, paths: list[str] | None = None) -> HostFacts:
    try:
        status, out = host.run_probe(probe_script(host.root_dir, paths or []))
    except Exception as exc:  # noqa: BLE001 - reported as a failed check, not a crash
        return HostFacts(probe_error=str(exc))
    facts = parse_probe(out)
    if status != 0 and not facts.criu_version:
        facts.probe_error = out.strip()[-300:]
    return facts


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    error: type[errors.HmigrateError] = errors.ValidationFailed
    warning: bool = False  # reported, but does not block the migration

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"check": self.name, "ok": self.ok, "detail": self.detail}
        if self.hint:
            d["hint"] = self.hint
        if self.warning:
            d["warning"] = True
        return d


@dataclass
class Validation:
    checks: list[Check]
    source_facts: HostFacts
    target_facts: HostFacts

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok and not c.warning]

    def raise_for_failures(self) -> None:
        failed = self.failures
        if not failed:
            return
        first = failed[0]
        lines = "; ".join(f"{c.name}: {c.detail}" for c in failed)
        # The first failure's class gives the exit code; all failures are in the message.
        raise first.error(
            f"validation failed ({len(failed)} check(s)): {lines}",
            hint=(first.hint or "fix the problem above") + "; or skip validation with --force",
        )


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _major(version: str) -> int:
    head = version.lstrip("v").split(".")[0]
    return int(head) if head.isdigit() else 0


def restore_blocker(host: Host) -> str:
    """Why this host's engine cannot restore a checkpoint at all ('' when it can, as known).

    Docker 28 binds a restored container's network namespace from its task's process right
    after creating the task, but a task created from a checkpoint has no process until it
    is started (CRIU runs then): every `docker start --checkpoint` fails with
    "bind-mount /proc/0/ns/net ...: no such file or directory". Seen with Docker 28.5.2 on
    containerd 1.7.24 and on 2.1.9 (lab host c built with HM_C_DOCKER_SUITE=sid); Docker
    20.10 and 26.1 restore.
    """
    try:
        version = host.version
    except Exception:  # noqa: BLE001 - unknown versions block nothing
        return ""
    engine = str(version.get("Version") or "")
    if _major(engine) >= 28:
        return (f"Docker {engine} cannot restore checkpoints (it binds the restored task's "
                "network namespace before the task has a process: /proc/0/ns/net)")
    return ""


def container_usage(host: Host, container_id: str) -> tuple[int, int]:
    """(memory in use, bytes in the writable layer) of a running container."""
    stats = host.api.stats(container_id, stream=False, one_shot=True)
    mem = int((stats.get("memory_stats") or {}).get("usage") or 0)
    size_rw = int(host.api.inspect_container(container_id, size=True).get("SizeRw") or 0)
    return mem, size_rw


def image_check(src: Host, dst: Host, ref: str, image_id: str) -> Check:
    """Is the image on the target, or can it be copied from the source or pulled there?"""
    if dst.image_present(image_id):
        return Check("image on target", True, f"{ref} present on {dst.name}")
    if src.isa == dst.isa and src.image_present(image_id):
        return Check("image on target", True, f"{ref} will be copied from {src.name}")
    try:
        dst.api.inspect_distribution(ref)
        return Check("image on target", True, f"{ref} can be pulled by {dst.name}")
    except docker.errors.APIError as exc:
        return Check("image on target", False,
                     f"{ref} is neither on {dst.name} nor pullable: {api_error_text(exc)}",
                     f"push {ref} to a registry {dst.name} can reach", errors.ImageUnavailable)


def validate(
    src: Host, dst: Host, inspect: dict[str, Any], spec: ContainerSpec, image_ok: Check,
    cross_isa: list[Check] | None = None,
) -> Validation:
    """Run every check; never raises for a failed check (see Validation.raise_for_failures).

    `cross_isa`: the checks of a move to another ISA (migrate.Migration makes them); without
    them a move between ISAs fails the "same ISA" check.
    """
    state = inspect["State"]
    name = inspect["Name"].lstrip("/")
    checks: list[Check] = []
    add = checks.append

    with ThreadPoolExecutor(max_workers=2) as pool:
        src_future = pool.submit(probe, src)
        dst_future = pool.submit(probe, dst, spec.binds)
        usage_future = pool.submit(container_usage, src, inspect["Id"])
        sf, tf = src_future.result(), dst_future.result()
        try:
            mem_used, size_rw = usage_future.result()
        except Exception:  # noqa: BLE001 - stats can fail on a container that just stopped
            mem_used, size_rw = 0, 0

    add(Check("distinct hosts", src.info.get("ID") != dst.info.get("ID"),
              f"{src.name} and {dst.name} are the same daemon", "name another host with --to",
              errors.UsageError))
    running = bool(state.get("Running")) and not state.get("Paused")
    add(Check("container running", running, f"{name} is {state.get('Status')}",
              f"start it first: docker start {name}", errors.UnsupportedContainer))
    tty = bool(inspect["Config"].get("Tty"))
    add(Check("no TTY", not tty, f"{name} has a TTY (-t): CRIU cannot checkpoint it",
              "recreate the container without -t", errors.UnsupportedContainer))
    for host in (src, dst):
        add(Check(f"experimental daemon on {host.name}", host.experimental,
                  f"the daemon on {host.name} is not experimental",
                  'set "experimental": true in its daemon.json and restart it',
                  errors.DaemonNotExperimental))
    for host, facts in ((src, sf), (dst, tf)):
        if facts.probe_error:
            add(Check(f"probe on {host.name}", False,
                      f"could not inspect {host.name}: {facts.probe_error}",
                      "check that the daemon can run containers", errors.CriuError))
            continue
        add(Check(f"CRIU on {host.name}", bool(facts.criu_version),
                  f"CRIU {facts.criu_version or 'not found'}",
                  f"install CRIU (4.x) on {host.name}, on runc's PATH", errors.CriuError))
        add(Check(f"criu check on {host.name}", facts.criu_check,
                  "passes" if facts.criu_check else " | ".join(facts.criu_log) or "fails",
                  f"run `criu check` on {host.name} and fix what it reports", errors.CriuError))
    if sf.criu_version and tf.criu_version:
        same_major = sf.criu_version.split(".")[0] == tf.criu_version.split(".")[0]
        add(Check("CRIU versions compatible", same_major,
                  f"{sf.criu_version} -> {tf.criu_version}",
                  "use the same CRIU major version on both hosts", errors.CriuError))
    if tf.mem_available:
        need = int(mem_used * MEMORY_HEADROOM)
        add(Check("target memory", tf.mem_available >= need,
                  f"{_bytes(tf.mem_available)} available, {_bytes(need)} needed",
                  f"free memory on {dst.name} or pick another target",
                  errors.InsufficientResources))
    if tf.disk_free:
        need = mem_used + size_rw
        add(Check("target disk", tf.disk_free >= need,
                  f"{_bytes(tf.disk_free)} free, {_bytes(need)} needed",
                  f"free disk on {dst.name} under {dst.root_dir}", errors.InsufficientResources))
    # The target restores the checkpoint; the source must be able to restore its own to
    # roll back a failed move.
    for host, role in ((dst, "restore"), (src, "roll back to")):
        blocker = restore_blocker(host)
        add(Check(f"checkpoint restore on {host.name}", not blocker, blocker or "supported",
                  f"use a Docker Engine before 28 on {host.name} (26.1 works): it could "
                  f"not {role} the container", errors.CriuError))
    # Not a formality: CRIU restores the cgroups a checkpoint records, and it cannot across
    # versions. Lab hosts a (v1) and c (v2), forced: v1 -> v2 fails mounting the image's v1
    # controllers ("cg: Can't mount controller dir .criu.cgyard.../pids"), v2 -> v1 fails
    # too (runc: "criu failed: type NOTIFY"); the source was restored both times.
    a, b = src.info.get("CgroupDriver"), dst.info.get("CgroupDriver")
    add(Check("cgroup driver", a == b, f"{a} -> {b}",
              "configure both daemons with the same cgroup driver"))
    a, b = src.info.get("CgroupVersion"), dst.info.get("CgroupVersion")
    add(Check("cgroup version", a == b,
              f"{a} -> {b}" + ("" if a == b else
                               ": CRIU cannot restore a checkpoint on another cgroup version"),
              f"pick a target with cgroup v{a} like {src.name} (docker info: CgroupVersion)"))
    same_isa = src.isa == dst.isa
    if same_isa and sf.cpu_flags and tf.cpu_flags:
        missing = sorted(sf.cpu_flags - tf.cpu_flags)
        add(Check("CPU compatibility", not missing,
                  "target has every CPU feature of the source" if not missing
                  else f"target lacks {', '.join(missing[:8])}",
                  "pick a target with the same or a newer CPU"))
    if same_isa or cross_isa is None:
        add(Check("same ISA", same_isa, f"{src.isa} -> {dst.isa}",
                  "cross-ISA migration needs an image built with hmigrate-cc",
                  errors.NotMigratableCrossISA))
    else:
        checks += cross_isa
    add(image_ok)
    add(Check("bind-mount sources on target", not tf.missing_paths,
              "present" if not tf.missing_paths else f"missing: {', '.join(tf.missing_paths)}",
              f"create them on {dst.name}", errors.ValidationFailed))
    existing = dst.client.containers.list(all=True, filters={"name": f"^/{spec.name}$"})
    add(Check("target name free", not existing,
              f"a container named {spec.name} exists on {dst.name}" if existing
              else f"{spec.name} is free",
              "remove it, or choose another name with --name", errors.ValidationFailed))
    return Validation(checks, sf, tf)
