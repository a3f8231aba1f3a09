"""Pre-migration validations: every reason a migration would fail, found before freezing.

Host facts the engine API does not expose (CRIU's version and `criu check`, free memory
and disk, CPU flags, whether bind-mount sources exist) are read by a short probe
container per host (engine.Host.run_probe), both hosts in parallel.
"""

from __future__ import annotations

import ipaddress
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import docker.errors

from docker_hmigrate import errors, isa, park, recode
from docker_hmigrate.engine import DaemonUnreachable, Host, api_error_text
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
    # Source only: the container's established TCP connections (local "ADDR:PORT") and
    # the bytes in its named volumes.
    tcp_established: list[str] = field(default_factory=list)
    volume_bytes: int = 0


def probe_script(root_dir: str, paths: list[str], pid: int = 0,
                 du_paths: list[str] | None = None) -> str:
    # Paths as the daemon sees them: through the root of the probe's shim (it lives in the
    # daemon's mount namespace), since the probe's own /tmp is a private tmpfs that hides
    # the host's (a bind source under /tmp was reported missing).
    checks = "hr=/proc/$PPID/root; [ -d \"$hr/\" ] || hr=\n" if paths else ""
    checks += "".join(f"[ -e \"$hr\"{shlex.quote(p)} ] || echo missing_path={p}\n"
                      for p in paths)
    if pid:  # TCP state 01 = ESTABLISHED; the local address is field 2
        checks += (f"cat /proc/{pid}/net/tcp /proc/{pid}/net/tcp6 2>/dev/null | "
                   "awk '$4 == \"01\" {print \"tcp_established=\" $2}'\n")
    for p in du_paths or []:
        checks += f"echo volume_kb=$(du -sk {shlex.quote(p)} 2>/dev/null | cut -f1)\n"
    return rf"""
echo criu_version=$(criu --version 2>/dev/null | sed -n 's/^Version: //p')
# once more after a failure: its kernel probes (kerndat) fail now and then on a busy host
if criu check >/tmp/criu-check.log 2>&1 || {{ sleep 1; criu check >/tmp/criu-check.log 2>&1; }}
then echo criu_check=ok
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
        elif key == "tcp_established" and value:
            facts.tcp_established.append(_proc_net_addr(value))
        elif key == "volume_kb" and value.isdigit():
            facts.volume_bytes += int(value) * 1024
        elif key == "special_map" and value:
            fields = value.split()
            lo, _, hi = fields[0].partition("-")
            facts.special_maps.setdefault(fields[-1].strip("[]"), []).append(
                (int(lo, 16), int(hi, 16)))
    return facts


def _proc_net_addr(field: str) -> str:
    """/proc/net/tcp's "0200A8C0:1F90" (little-endian words) as "192.168.0.2:8080"."""
    addr, _, port = field.partition(":")
    raw = bytes.fromhex(addr)
    swapped = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(swapped)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return f"{ip}:{int(port, 16)}"


def probe(host: Host, paths: list[str] | None = None, pid: int = 0,
          du_paths: list[str] | None = None) -> HostFacts:
    try:
        status, out = host.run_probe(probe_script(host.root_dir, paths or [], pid, du_paths))
    except DaemonUnreachable:
        raise  # no further check can be answered: the move is refused at once
    except Exception as exc:  # noqa: BLE001 - reported as a failed check, not a crash
        return HostFacts(probe_error=str(exc))
    facts = parse_probe(out)
    if status != 0 and not facts.criu_version:
        facts.probe_error = out.strip()[-300:]
    return facts


@dataclass
class Check:
    """One validation. `detail` describes what was found: callers give the passing or
    the failing text according to `ok` (see `Check.of`), never the failure text for a
    check that passed."""

    name: str
    ok: bool
    detail: str
    hint: str = ""
    error: type[errors.HmigrateError] = errors.ValidationFailed
    warning: bool = False  # reported, but does not block the migration
    # Whether `migrate --force` can get past this failure: true for estimates and
    # version/config differences, false where the migration itself would then fail
    # (no checkpoint API, no CRIU, a TTY, the same daemon, a name taken, no image ...).
    forcible: bool = False

    @classmethod
    def of(cls, name: str, ok: bool, passed: str, failed: str, hint: str = "",
           error: type[errors.HmigrateError] = errors.ValidationFailed,
           forcible: bool = False) -> Check:
        """A check whose detail is `passed` or `failed` according to `ok`; the hint is
        kept only for a failure (a passing check needs no advice)."""
        return cls(name, ok, passed if ok else failed, "" if ok else hint, error,
                   forcible=forcible)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"check": self.name, "ok": self.ok, "detail": self.detail}
        if self.hint and not self.ok:
            d["hint"] = self.hint
        if self.warning:
            d["warning"] = True
        if not self.ok:
            d["error"] = {"class": self.error.__name__, "exit_code": self.error.exit_code}
            d["forcible"] = self.forcible
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
        hint = first.hint or "fix the problem above"
        # --force is advice only when it can get past every failure.
        if all(c.forcible for c in failed):
            hint += "; or skip these checks with --force"
        # The first failure's class gives the exit code; all failures are in the message.
        raise first.error(f"validation failed ({len(failed)} check(s)): {lines}", hint=hint)


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


@dataclass
class Usage:
    """What a container holds, which the target must have room for."""

    memory: int = 0  # resident memory, tmpfs and /dev/shm included: what CRIU dumps
    tmpfs: int = 0  # of which shared memory (tmpfs, /dev/shm)
    size_rw: int = 0  # its writable layer
    error: str = ""


def container_usage(host: Host, container_id: str) -> Usage:
    """The container's real use: its memory cgroup (anonymous memory plus shmem, the pages
    of its tmpfs and /dev/shm; file cache is not dumped) and its writable layer's size
    (GET /containers/{id}/json?size=1: EngineAPIClient.inspect_container_size)."""
    try:
        stats = host.api.stats(container_id, stream=False, one_shot=True)
        mem = stats.get("memory_stats") or {}
        detail = mem.get("stats") or {}
        usage = int(mem.get("usage") or 0)
        # Shared memory (tmpfs, /dev/shm) sits on the anon LRU lists with the process
        # memory: their sum is what CRIU dumps (cgroup v1 names them total_*, v2 without).
        anon = sum(int(detail.get(f"total_{k}", detail.get(k, 0)) or 0)
                   for k in ("active_anon", "inactive_anon"))
        rss = int(detail.get("total_rss", detail.get("anon", 0)) or 0)
        memory = anon if detail else usage
        shmem = max(0, anon - rss) if "total_rss" in detail else int(detail.get("shmem", 0))
        size_rw = int(host.api.inspect_container_size(container_id).get("SizeRw") or 0)
    except (docker.errors.APIError, OSError, ValueError) as exc:
        return Usage(error=api_error_text(exc))
    return Usage(memory=memory, tmpfs=shmem, size_rw=size_rw)


def address_checks(src: Host, dst: Host, inspect: dict[str, Any],
                   established: list[str]) -> list[Check]:
    """Can the container keep its addresses on the target? CRIU restores an established
    TCP connection only on the address it had ("Can't bind inet socket back")."""
    checks: list[Check] = []
    name = inspect["Name"].lstrip("/")
    for net, ep in (inspect.get("NetworkSettings", {}).get("Networks") or {}).items():
        ip = ep.get("IPAddress")
        if not ip or net in ("host", "none"):
            continue
        conns = [c for c in established if c.rsplit(":", 1)[0] == ip]
        title = f"address {ip} on {net}"
        try:
            target_net = _network(dst, net)
        except docker.errors.APIError as exc:
            checks.append(Check(title, False, f"cannot inspect {net} on {dst.name}: "
                                f"{api_error_text(exc)}", "check the target daemon"))
            continue
        if net == "bridge":  # Docker 20.10 refuses --ip on the default bridge
            if not conns:
                checks.append(Check(title, True, "no established TCP connections: the "
                                    "target's bridge may give it another address"))
                continue
            nxt = _next_free(target_net)
            ok = nxt == ip
            checks.append(Check(
                title, ok,
                f"{len(conns)} established TCP connection(s) on {ip}; {dst.name}'s default "
                f"bridge will give it {nxt or 'an unknown address'}" + (
                    "" if ok else ", and CRIU cannot restore a connection on another address "
                    "(Docker does not let a container keep its address on the default bridge)"),
                f"run {name} on a user network with a subnet that exists on both hosts "
                "(docker network create --subnet ...), or close its connections first",
                errors.ValidationFailed))
            continue
        if target_net is None:
            src_net = _network(src, net) or {}
            subnets = [c.get("Subnet") for c in (src_net.get("IPAM") or {}).get("Config") or []
                       if c.get("Subnet")]
            clash = _subnet_clash(dst, subnets)
            ok = bool(subnets) and not clash
            checks.append(Check(
                title, ok or not conns,
                f"{net} will be created on {dst.name} with subnet {', '.join(subnets)}, "
                f"keeping {ip}" if ok else
                f"{net} cannot get subnet {', '.join(subnets) or '(none)'} on {dst.name}"
                f"{' (used by ' + clash + ')' if clash else ''}: the address will change"
                + (f", and {len(conns)} established TCP connection(s) need it" if conns
                   else ""),
                f"create {net} on {dst.name} with the source's subnet", errors.ValidationFailed))
            continue
        problem = address_problem(target_net, ip)
        checks.append(Check(
            title, not problem or not conns,
            f"{ip} is free in {net} on {dst.name}" if not problem else
            f"{problem}: the address will change" + (
                f", and {len(conns)} established TCP connection(s) need it" if conns else ""),
            f"free {ip} on {dst.name} or give {net} the same subnet on both hosts",
            errors.ValidationFailed))
    return checks


def address_problem(target_net: dict[str, Any], ip: str) -> str:
    """Why a container cannot have `ip` on this (target) network; "" when it can."""
    subnets = [ipaddress.ip_network(c["Subnet"], strict=False)
               for c in (target_net.get("IPAM") or {}).get("Config") or [] if c.get("Subnet")]
    users = [c.get("Name", "?") for c in (target_net.get("Containers") or {}).values()
             if (c.get("IPv4Address") or "").split("/")[0] == ip]
    if users:
        return f"{ip} is used by {', '.join(users)} in {target_net.get('Name', '')}"
    if not any(ipaddress.ip_address(ip) in sn for sn in subnets):
        return (f"{target_net.get('Name', 'the network')} has subnet "
                f"{', '.join(map(str, subnets)) or 'none'}, not holding {ip}")
    return ""


def _subnet_clash(host: Host, subnets: list[str]) -> str:
    """The network on `host` whose subnet overlaps one of `subnets`, if any."""
    want = [ipaddress.ip_network(s, strict=False) for s in subnets]
    try:
        nets = host.api.networks()
    except (docker.errors.APIError, AttributeError):
        return ""
    for n in nets:
        for c in (n.get("IPAM") or {}).get("Config") or []:
            if c.get("Subnet") and any(
                    ipaddress.ip_network(c["Subnet"], strict=False).overlaps(w) for w in want):
                return n.get("Name", "?")
    return ""


def _network(host: Host, name: str) -> dict[str, Any] | None:
    try:
        return host.api.inspect_network(name)
    except docker.errors.NotFound:
        return None


def _next_free(net: dict[str, Any] | None) -> str | None:
    """The address Docker's default IPAM gives next: the lowest free one of the subnet."""
    if not net:
        return None
    configs = net.get("IPAM", {}).get("Config") or []
    if not configs or not configs[0].get("Subnet"):
        return None
    subnet = ipaddress.ip_network(configs[0]["Subnet"], strict=False)
    used = {(c.get("IPv4Address") or "").split("/")[0]
            for c in (net.get("Containers") or {}).values()}
    used.add(configs[0].get("Gateway") or str(next(subnet.hosts())))
    for n, addr in enumerate(subnet.hosts()):
        if str(addr) not in used:
            return str(addr)
        if n > 65536:
            break
    return None


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


# ---- moves across ISAs -------------------------------------------------------------------


def load_program(host: Host, inspect: dict[str, Any]) -> recode.Program:
    """The program hmigrate-cc put in the container's image (metadata and both variants),
    read from the (running) container through the engine API."""
    labels = (host.api.inspect_image(inspect["Image"]).get("Config") or {}).get("Labels") or {}
    return recode.program_from_image(
        labels, lambda path: park.read_container_file(host, inspect["Id"], path),
        inspect["Name"].lstrip("/"))


def cross_isa_checks(src: Host, dst: Host, inspect: dict[str, Any], spec: ContainerSpec,
                     ) -> tuple[list[Check], recode.Program | None]:
    """What a move to another ISA needs, checked before anything is frozen."""
    checks: list[Check] = []
    try:
        program = load_program(src, inspect)
    except errors.HmigrateError as exc:
        return [Check("built for migration across ISAs", False, exc.message, exc.hint or "",
                      errors.NotMigratableCrossISA)], None
    problems = recode.preflight(program, src.isa, dst.isa)
    checks.append(Check(
        f"recode {src.isa} -> {dst.isa}", not problems,
        "; ".join(problems) or f"{program.path}: both variants, park points clean",
        "rebuild with hmigrate-cc, or migrate to a host of the same ISA",
        errors.NotMigratableCrossISA))
    checks.append(optimized_frames_check(program))
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
    src_isa, dst_isa = (isa.BY_NAME.get(isa.ALIASES.get(h.isa, "")) for h in (src, dst))
    if src_isa and dst_isa and src_isa.user_end > dst_isa.user_end:
        # aarch64 gives a process 48 bits of addresses, x86-64 47: what the program mapped
        # up there (its stack and mmaps when it started on aarch64) has no place on x86-64
        bits = f"{(dst_isa.user_end - 1).bit_length()}-bit"
        high = [f"pid {pid}: {f[0]} {f[5] if len(f) > 5 else '(anonymous)'}" for pid, f in maps
                if int(f[0].split("-")[1], 16) > dst_isa.user_end
                and not (len(f) > 5 and f[5] in ("[vdso]", "[vvar]"))
                and not holds_nothing(f)]
        checks.append(Check(
            "address space", not high,
            f"mappings above {dst.isa}'s {bits} user space: {'; '.join(high[:3])}" if high
            else f"every mapping fits {dst.isa}'s {bits} user space",
            f"a program started on {src.isa} cannot move to {dst.isa}; one that came from "
            f"{dst.isa} can when hmigrate-cc's runtime keeps its new mappings low: rebuild "
            f"it with this version's hmigrate-cc (docs/toolchain.md, \"Address space\")",
            errors.NotMigratableCrossISA))
    return checks, program


def optimized_frames_check(program: recode.Program) -> Check:
    """What kind of frames a cross-ISA move recodes: -O0 slots only, or also -Og frames
    described per call site (hmigrate-cc --optimize-frames, docs/toolchain.md). Both
    move; the line says which, for a user reading why a move did what it did."""
    n = ((program.metadata.get("checks") or {}).get("described") or {}).get("functions", 0)
    return Check(
        "optimized frames", True,
        f"{n} -Og functions, their variables read per call site "
        f"(hmigrate-cc --optimize-frames)" if n else "none (-O0 frames)")


def holds_nothing(fields: list[str]) -> bool:
    """An anonymous PROT_NONE mapping (/proc/PID/maps fields): a guard area, which the
    recode drops on the way to x86-64 (recode/process.drop_empty_high_areas)."""
    return len(fields) > 1 and fields[1].startswith("---") and (
        len(fields) < 6 or not fields[5] or fields[4] == "0")


def anonymous_shared(mapping: str) -> bool:
    """Whether a shared mapping ("pid P: RANGE PATH") is anonymous shared memory (MAP_SHARED|
    MAP_ANONYMOUS or of /dev/zero: the kernel names both "/dev/zero (deleted)"), which
    recode keeps as data (recode/shared.py); SysV segments ("/SYSV..."), memfd_create()d
    objects ("/memfd:...") and files are not translated."""
    parts = mapping.split()
    return len(parts) >= 4 and parts[3] == "/dev/zero"


def _process_maps(host: Host, inspect: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Every mapping of the container's processes (pid, /proc/PID/maps fields), read on
    the host by the probe, so that what the recode cannot translate (shared memory of
    other kinds, addresses the target cannot hold) is refused before the freeze rather
    than found after it."""
    try:
        pids = " ".join(map(str, park.container_pids(host, inspect["Id"])))
    except errors.NotMigratableCrossISA:  # not listed: nothing to refuse here
        return []
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


def validate(
    src: Host, dst: Host, inspect: dict[str, Any], spec: ContainerSpec, image_ok: Check,
    cross_isa: list[Check] | None = None,
) -> Validation:
    """Run every check; never raises for a failed check (see Validation.raise_for_failures).

    `cross_isa`: the checks of a move to another ISA (cross_isa_checks, which also loads the
    program); without them a move between ISAs fails the "same ISA" check.
    """
    state = inspect["State"]
    name = inspect["Name"].lstrip("/")
    checks: list[Check] = []
    add = checks.append

    volume_paths = [m["Source"] for m in inspect.get("Mounts", [])
                    if m.get("Type") == "volume" and m.get("Source")]
    with ThreadPoolExecutor(max_workers=3) as pool:
        src_future = pool.submit(probe, src, None, int(state.get("Pid") or 0), volume_paths)
        dst_future = pool.submit(probe, dst, spec.binds)
        usage_future = pool.submit(container_usage, src, inspect["Id"])
        sf, tf = src_future.result(), dst_future.result()
        usage = usage_future.result()

    add(Check.of("distinct hosts", src.info.get("ID") != dst.info.get("ID"),
                 f"{src.name} and {dst.name} are different daemons",
                 f"{src.name} and {dst.name} are the same daemon",
                 "name another host with --to", errors.UsageError))
    running = bool(state.get("Running")) and not state.get("Paused")
    add(Check.of("container running", running, f"{name} is running",
                 f"{name} is {state.get('Status')}",
                 f"start it first: docker start {name}" if state.get("Status") != "paused"
                 else f"unpause it first: docker unpause {name}", errors.UnsupportedContainer))
    tty = bool(inspect["Config"].get("Tty"))
    add(Check.of("no TTY", not tty, f"{name} has no TTY",
                 f"{name} has a TTY (-t): CRIU cannot checkpoint it",
                 "recreate the container without -t (keep -i if it reads stdin)",
                 errors.UnsupportedContainer))
    for host in (src, dst):
        add(Check.of(f"experimental daemon on {host.name}", host.experimental,
                     f"the daemon on {host.name} is experimental",
                     f"the daemon on {host.name} is not experimental (no checkpoint API)",
                     f'set "experimental": true in its daemon.json and restart dockerd on '
                     f"{host.name}", errors.DaemonNotExperimental))
    for host, facts in ((src, sf), (dst, tf)):
        if facts.probe_error:
            add(Check(f"probe on {host.name}", False,
                      f"could not inspect {host.name}: {facts.probe_error}",
                      "check that the daemon can run containers", errors.CriuError,
                      forcible=True))
            continue
        add(Check.of(f"CRIU on {host.name}", bool(facts.criu_version),
                     f"CRIU {facts.criu_version}", "CRIU not found",
                     f"install CRIU (4.x) on {host.name}, on runc's PATH", errors.CriuError))
        add(Check.of(f"criu check on {host.name}", facts.criu_check, "passes",
                     "fails: " + (" | ".join(facts.criu_log) or "no output"),
                     f"run `criu check` on {host.name} and fix what it reports",
                     errors.CriuError, forcible=True))
    if sf.criu_version and tf.criu_version:
        same_major = sf.criu_version.split(".")[0] == tf.criu_version.split(".")[0]
        versions = f"{sf.criu_version} -> {tf.criu_version}"
        add(Check.of("CRIU versions compatible", same_major, f"{versions} (same major)",
                     f"{versions}: different major versions",
                     "use the same CRIU major version on both hosts", errors.CriuError,
                     forcible=True))
    if usage.error and running:
        add(Check("container usage", False, f"cannot read {name}'s memory and disk use: "
                  f"{usage.error}", "retry", errors.InsufficientResources, forcible=True))
    if tf.mem_available and not usage.error:
        need = int(usage.memory * MEMORY_HEADROOM)
        shm = f", {_bytes(usage.tmpfs)} of it tmpfs/shm" if usage.tmpfs else ""
        amounts = (f"{_bytes(tf.mem_available)} available, {_bytes(need)} needed "
                   f"({_bytes(usage.memory)} in use{shm}, +{MEMORY_HEADROOM - 1:.0%})")
        add(Check.of("target memory", tf.mem_available >= need, amounts,
                     f"not enough: {amounts}",
                     f"free memory on {dst.name} or pick another target",
                     errors.InsufficientResources, forcible=True))
    if tf.disk_free and not usage.error:
        # the checkpoint (its memory), the writable layer and the volumes land on the disk
        need = usage.memory + usage.size_rw + sf.volume_bytes
        amounts = (f"{_bytes(tf.disk_free)} free, {_bytes(need)} needed (checkpoint "
                   f"{_bytes(usage.memory)}, writable layer {_bytes(usage.size_rw)}, volumes "
                   f"{_bytes(sf.volume_bytes)})")
        add(Check.of("target disk", tf.disk_free >= need, amounts, f"not enough: {amounts}",
                     f"free disk on {dst.name} under {dst.root_dir}",
                     errors.InsufficientResources, forcible=True))
    checks.extend(address_checks(src, dst, inspect, sf.tcp_established))
    # The target restores the checkpoint; the source must be able to restore its own to
    # roll back a failed move.
    for host, role in ((dst, "restore"), (src, "roll back to")):
        blocker = restore_blocker(host)
        add(Check.of(f"checkpoint restore on {host.name}", not blocker, "supported", blocker,
                     f"use a Docker Engine before 28 on {host.name} (26.1 works): it could "
                     f"not {role} the container", errors.CriuError, forcible=True))
    # Not a formality: CRIU restores the cgroups a checkpoint records, and it cannot across
    # versions. Lab hosts a (v1) and c (v2), forced: v1 -> v2 fails mounting the image's v1
    # controllers ("cg: Can't mount controller dir .criu.cgyard.../pids"), v2 -> v1 fails
    # too (runc: "criu failed: type NOTIFY"); the source was restored both times.
    a, b = src.info.get("CgroupDriver"), dst.info.get("CgroupDriver")
    add(Check.of("cgroup driver", a == b, f"{a} on both", f"{a} -> {b}: they differ",
                 "configure both daemons with the same cgroup driver", forcible=True))
    a, b = src.info.get("CgroupVersion"), dst.info.get("CgroupVersion")
    add(Check.of("cgroup version", a == b, f"{a} on both",
                 f"{a} -> {b}: CRIU cannot restore a checkpoint on another cgroup version",
                 f"pick a target with cgroup v{a} like {src.name} (docker info: CgroupVersion)",
                 forcible=True))
    same_isa = src.isa == dst.isa
    if same_isa and sf.cpu_flags and tf.cpu_flags:
        missing = sorted(sf.cpu_flags - tf.cpu_flags)
        add(Check.of("CPU compatibility", not missing,
                     "target has every CPU feature of the source",
                     f"target lacks {', '.join(missing[:8])}",
                     "pick a target with the same or a newer CPU", forcible=True))
    if same_isa or cross_isa is None:
        add(Check.of("same ISA", same_isa, f"{src.isa} on both", f"{src.isa} -> {dst.isa}",
                     "cross-ISA migration needs an image built with hmigrate-cc",
                     errors.NotMigratableCrossISA))
    else:
        checks += cross_isa
    add(image_ok)
    add(Check.of("bind-mount sources on target", not tf.missing_paths, "present",
                 f"missing: {', '.join(tf.missing_paths)}", f"create them on {dst.name}",
                 errors.ValidationFailed))
    existing = dst.api.containers(all=True, filters={"name": f"^/{spec.name}$"})
    add(Check.of("target name free", not existing, f"{spec.name} is free",
                 f"a container named {spec.name} exists on {dst.name}",
                 "remove it, or choose another name with --name", errors.ValidationFailed))
    return Validation(checks, sf, tf)
