"""Bringing a toolchain-built program to its equivalence points, through the engine API.

The runtime linked into every binary built by hmigrate-cc parks each thread at its next
function entry when the process gets the park signal, and announces it with a file in
the container (docs/toolchain.md, "Runtime"); the resume signal withdraws the request.
"""

from __future__ import annotations

import tarfile
import time
from dataclasses import dataclass, field

import docker.errors

from docker_hmigrate import errors
from docker_hmigrate.engine import Host, api_error_text
from docker_hmigrate.isa import NAMES as ISAS
from docker_hmigrate.polling import poll
from docker_hmigrate.toolchain import contract

# musl's sigreturn trampolines (x86-64, aarch64): a signal handler returns into them.
SIGNAL_TRAMPOLINES = frozenset({"__restore_rt", "__restore"})


@dataclass
class ParkProtocol:
    park_signal: int = contract.SIG_PARK
    resume_signal: int = contract.SIG_RESUME
    park_file: str = contract.PARK_FILE
    fallback_file: str = contract.PARK_FILE_FALLBACK
    # where a parked thread's futex wait shows in /proc/TID/syscall (either ISA)
    parked_pcs: tuple[int, ...] = ()
    # return address -> why that frame cannot be translated (the runtime reports the
    # one that keeps a thread from parking in "<park file>.blocked")
    metadata: contract.Metadata | None = field(default=None, repr=False, compare=False)

    def explain(self, ra: int) -> str:
        """What the frame returned to at `ra` is and why it cannot move to another ISA."""
        md = self.metadata or contract.load({})
        for f in md.functions:
            for isa, fi in f.isa.items():
                if not fi.addr <= ra - 1 < fi.addr + fi.size:
                    continue
                site = next((c for c in fi.call_sites if c.return_address == ra), None)
                at = f"{f.file or '?'}:{site.line}" if site and site.line else f.file or "?"
                why = f.untranslatable_reasons or \
                    (site.untranslatable_reasons if site else None) or ["(no reason recorded)"]
                return f"{f.name} ({isa}, called at {at}): {'; '.join(why)}"
        for s in md.symbols:
            for isa in ISAS:
                a = s.at(isa)
                # ra == start: a signal handler "returns" to the trampoline's first byte
                if s.kind == "func" and a and a[0] <= ra <= a[0] + max(a[1], 1):
                    # libc's signal trampolines are named per ISA (one-ISA by name),
                    # but the program was called back from them: said below
                    if s.name not in SIGNAL_TRAMPOLINES and any(
                            s.at(other) is None for other in ISAS if other != isa):
                        return (f"{s.name} ({isa}): code only the {isa} binary has (a "
                                f"code path of one ISA: CPU-feature dispatch, assembly), "
                                f"with no twin to rebuild its frame on the other ISA")
                    return (f"{s.name} ({isa}): code without metadata (libc) in the "
                            f"middle of the stack, i.e. the program was called back from "
                            f"it (qsort comparator, signal handler): such a frame cannot "
                            f"be rebuilt on the other ISA")
        return f"an untranslatable frame (return address {ra:#x})"

    @classmethod
    def from_metadata(cls, metadata: dict | contract.Metadata) -> ParkProtocol:
        md = contract.load(metadata)
        rt = md.runtime
        pcs = tuple(sorted({p.blocked_pc for p in rt.park_points.values()
                            if p.blocked_pc is not None}))
        return cls(rt.park_signal, rt.resume_signal, rt.park_file, rt.park_file_fallback,
                   pcs, md)


def read_container_file(host: Host, container: str, path: str) -> bytes | None:
    """A file's contents from a container (running or not), or None if it is absent.
    The archive is read as it streams: the file's bytes are held once (a program's
    metadata is tens of MB), not also as a whole archive."""
    from docker_hmigrate.transfer import _StreamReader

    try:
        stream, _ = host.api.get_archive(container, path)
    except docker.errors.NotFound:
        return None
    chunks = iter(stream)
    data = None
    with tarfile.open(fileobj=_StreamReader(chunks), mode="r|") as tar:
        for member in tar:
            if member.isfile():
                f = tar.extractfile(member)
                data = f.read() if f else None
                break
    for _rest in chunks:  # the archive's end: read, so the connection can be reused
        pass
    return data


def parse_park_file(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def park(host: Host, container: str, proto: ParkProtocol, timeout: float = 15,
         label: str | None = None) -> dict:
    """Ask every thread to park; wait for the announcement. Withdraws on failure.
    `label`: the container as the user named it, for messages (else `container`)."""
    who = label or container
    try:
        host.api.kill(container, signal=proto.park_signal)
    except docker.errors.APIError as exc:
        raise errors.NotMigratableCrossISA(
            f"cannot send the park signal to {who}: {api_error_text(exc)}") from exc
    def announced() -> dict | None:
        for path in (proto.park_file, proto.fallback_file):
            data = read_container_file(host, container, path)
            if data:
                return parse_park_file(data.decode(errors="replace"))
        return None

    found = poll(announced, timeout, 0.05)
    if found is not None:
        return found
    blocked = blocked_by(host, container, proto)
    withdraw(host, container, proto)
    if blocked:
        raise errors.NotMigratableCrossISA(
            f"{who} did not reach its equivalence points within {timeout:g}s: "
            f"{blocked}; refused before the freeze",
            hint="the request was withdrawn and the container runs on; this construct is "
                 "not translated across ISAs yet (see docs/toolchain.md, C constructs): "
                 "migrate to a host of the same ISA, or at a moment it is not active")
    raise errors.NotMigratableCrossISA(
        f"{who} did not reach its equivalence points within {timeout:g}s "
        "(a thread that never calls a function, or blocks every signal, cannot park)",
        hint="the request was withdrawn and the container runs on; retry, or migrate to "
             "a host of the same ISA")


def blocked_by(host: Host, container: str, proto: ParkProtocol) -> str | None:
    """The runtime's report of the untranslatable frame that kept a thread from parking,
    explained with the metadata (read before the withdrawal removes it)."""
    for path in (proto.park_file, proto.fallback_file):
        data = read_container_file(host, container, path + ".blocked")
        if data:
            info = parse_park_file(data.decode(errors="replace"))
            try:
                ra = int(info.get("ra", ""), 16)
            except ValueError:
                return None
            return f"thread {info.get('tid', '?')} stays inside {proto.explain(ra)}"
    return None


WITHDRAW_REPEAT, WITHDRAW_GAP = 3, 0.3


def withdraw(host: Host, container: str, proto: ParkProtocol) -> None:
    """Withdraw a request some threads never answered: the resume signal, sent again
    after a moment. While a request stands, parked threads kick the others with the park
    signal every 200 ms; a kick sent just before the resume lands after it and arms a
    new request, which parks the threads again with nobody to resume them (zstd -T2,
    refused before the freeze: its workers stayed parked and its main thread waited for
    them for good; a second resume set it going)."""
    for i in range(WITHDRAW_REPEAT):
        if i:
            time.sleep(WITHDRAW_GAP)
        resume(host, container, proto)


def resume(host: Host, container: str, proto: ParkProtocol) -> None:
    """Withdraw the park request: parked threads go on."""
    try:
        host.api.kill(container, signal=proto.resume_signal)
    except docker.errors.APIError as exc:
        raise errors.HmigrateError(
            f"cannot send the resume signal to {container}: {api_error_text(exc)}",
            hint=f"send it by hand: docker kill -s {proto.resume_signal} {container}") from exc


# Several processes (nginx's master and worker): the engine's kill reaches only the
# container's first process, and each process's runtime parks only its own threads and
# writes the same announcement file. So a probe on the host (host pid namespace) signals
# every process and waits until every thread of each sits in the runtime's futex wait
# with no timeout, which the runtime uses only once its process announced.
_PARK_ALL = """pids='{pids}'; pcs=' {pcs} '
kill -{sig} $pids || exit 3
end=$(( $(date +%s) + {timeout} ))
while :; do
  ok=1
  for p in $pids; do
    for t in /proc/$p/task/*; do
      set -- $(cat $t/syscall 2>/dev/null)
      case "$5 $pcs" in "0x0 "*" $9 "*) ;; *) ok=0 ;; esac
    done
  done
  [ $ok = 1 ] && {{ echo parked; exit 0; }}
  [ $(date +%s) -ge $end ] && {{ echo not parked; exit 1; }}
  sleep 0.05
done
"""


def container_pids(host: Host, container: str, label: str | None = None) -> list[int]:
    """Host pids of the container's processes (`label`: its name for messages)."""
    try:
        procs = host.api.top(container, ps_args="-o pid")["Processes"] or []
    except docker.errors.APIError as exc:
        stopped = _stopped(host, container)
        if stopped is not None:  # its program ended while the migration went on
            name, how = stopped
            raise errors.ContainerStopped(
                f"{label or name} stopped on {host.name} during the migration "
                f"({how}): nothing is left to move",
                hint="its program ended on its own; start it again to move it") from exc
        raise errors.NotMigratableCrossISA(
            f"cannot list the processes of {label or container}: "
            f"{api_error_text(exc)}") from exc
    return [int(p[0]) for p in procs if p and p[0].isdigit()]


def _stopped(host: Host, container: str) -> tuple[str, str] | None:
    """(its name, how it stopped: "exited, exit code 0"), or None if it runs (or is
    unknown)."""
    try:
        doc = host.api.inspect_container(container)
    except docker.errors.APIError:
        return None
    state = doc["State"]
    if state.get("Running"):
        return None
    return (doc.get("Name", "").lstrip("/") or container,
            f"{state.get('Status', 'stopped')}, exit code {state.get('ExitCode', '?')}")


def park_all(host: Host, container: str, proto: ParkProtocol, timeout: float = 15,
             label: str | None = None) -> dict:
    """park() for a container of any number of processes; withdraws on failure."""
    who = label or container
    pids = container_pids(host, container, label)
    if len(pids) <= 1 or not proto.parked_pcs:
        return park(host, container, proto, timeout, label)
    script = _PARK_ALL.format(pids=" ".join(map(str, pids)), sig=proto.park_signal,
                              pcs=" ".join(hex(p) for p in proto.parked_pcs),
                              timeout=int(timeout + 0.999))
    status, out = host.run_probe(script, timeout=timeout + 60)
    if status != 0:
        blocked = blocked_by(host, container, proto)
        resume_all(host, container, proto, pids)
        raise errors.NotMigratableCrossISA(
            f"{who}: its {len(pids)} processes did not all reach their equivalence "
            f"points within {timeout:g}s ({blocked or out.strip()[-200:]})",
            hint="the request was withdrawn and the container runs on; retry, or migrate "
                 "to a host of the same ISA")
    return {"processes": str(len(pids)), "pids": ",".join(map(str, pids))}


def resume_all(host: Host, container: str, proto: ParkProtocol,
               pids: list[int] | None = None) -> None:
    """resume() for every process of the container."""
    pids = pids if pids is not None else container_pids(host, container)
    if len(pids) <= 1:
        resume(host, container, proto)
        return
    status, out = host.run_probe(f"kill -{proto.resume_signal} {' '.join(map(str, pids))}")
    if status != 0:
        raise errors.HmigrateError(
            f"cannot send the resume signal to the processes of {container}: {out.strip()}",
            hint=f"send it to each by hand: kill -{proto.resume_signal} PID (host pids)")
