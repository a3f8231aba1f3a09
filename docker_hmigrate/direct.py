"""`migrate --direct`: the memory goes from the source host straight to the target host.

Why: on the fast path (fastpath.py) the dump is written to the source's tmpfs, then the
move streams it through both daemons' archive endpoints and this process: for a 424 MB
Redis the move (1.7-2.9 s here) is most of the downtime, and every byte crosses the machine
the plugin runs on (a laptop reaching two servers over ssh, say). With --direct the
source's CRIU sends the pages during the dump to a `criu page-server` on the target
(CRIU's own transport, on both hosts wherever Docker checkpoints), which writes them into
the target's tmpfs folder; only the small images (tens to hundreds of KB) are moved.

Nothing is lost on a failure: the source is frozen through its cgroup freezer *before*
`runc checkpoint --leave-running` (CRIU then leaves it as it found it: frozen, its memory
in place), so until the target runs the whole state is still in the frozen source, which
sends nothing meanwhile (Freezer.block). A rollback thaws it; once the target runs it is
ended without a trace on the network (its interfaces downed first, then SIGKILL, then
thawed: it dies before it runs; a plain dump kills it with its TCP sockets in repair
mode, and nothing is sent either).

Limits, checked before the freeze (every reason at once): same ISA, the fast path on the
source, a target address on a private subnet the source shares (CRIU's page server has no
authentication, as for --lazy), a network namespace of the container's own and of no
other container (its interfaces are downed at the end), and its cgroup freezer found.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from docker_hmigrate import errors

# How long the freeze may take before the dump is given up (cgroup v1 and v2 freezers
# finish in micro- to milliseconds for tasks that sleep or run in user space).
FREEZE_TRIES = 20000
BLOCK_TAG = "hmigrate-direct"  # the comment on the rules that close the frozen source
_BLOCK_MATCH = f"-m comment --comment {BLOCK_TAG} -j DROP"  # in the OUTPUT chain
WAIT_DUMP = 120  # seconds a thaw waits for a runc checkpoint still running to end


@dataclass(frozen=True)
class DirectFacts:
    """What decides whether --direct can be taken (gathered before the freeze)."""

    src_isa: str
    dst_isa: str
    fast_path: str | None  # why the source cannot be dumped by runc (None: it can)
    network_mode: str  # HostConfig.NetworkMode of the source
    joined_by: tuple[str, ...] = ()  # containers that run in the source's network namespace


def refusals(facts: DirectFacts) -> list[str]:
    """Every reason --direct cannot be taken that is known before any agent runs."""
    out: list[str] = []
    if facts.src_isa != facts.dst_isa:
        out.append(f"the pages cross unchanged, so both hosts need the same ISA "
                   f"({facts.src_isa} -> {facts.dst_isa}): a cross-ISA move recodes them")
    if facts.fast_path:
        out.append(f"the source must be dumped by runc through the agent (fast path), "
                   f"which is not possible here: {facts.fast_path}")
    mode = facts.network_mode or "default"
    if mode == "host" or mode.startswith("container:"):
        out.append(f"the container's network namespace is not its own (--network {mode}): "
                   "the frozen source's interfaces are taken down before it is ended, "
                   "which would cut the others")
    if facts.joined_by:
        out.append(f"{', '.join(facts.joined_by)} run(s) in the container's network "
                   "namespace (--network container:...): its interfaces are taken down "
                   "before the frozen source is ended, which would cut them")
    return out


def joined_by(containers: list[dict], container_id: str, name: str) -> tuple[str, ...]:
    """The containers (GET /containers/json rows) whose network namespace is this one's."""
    modes = {f"container:{container_id}", f"container:{container_id[:12]}",
             f"container:{name}"}
    return tuple(sorted((c.get("Names") or ["?"])[0].lstrip("/") for c in containers
                        if (c.get("HostConfig") or {}).get("NetworkMode") in modes))


def check(facts: DirectFacts) -> None:
    reasons = refusals(facts)
    if reasons:
        raise errors.ValidationFailed(
            "--direct cannot be used: " + "; ".join(reasons),
            hint="migrate without --direct (the memory then goes through this machine); "
                 "nothing was frozen or changed")


# --- the source's cgroup freezer ------------------------------------------------------------
@dataclass(frozen=True)
class Freezer:
    """The container's freezer, as the host's mount namespace sees it: a cgroup v1
    freezer folder (freezer.state) or a cgroup v2 folder (cgroup.freeze)."""

    path: str
    v2: bool

    def freeze(self) -> str:
        """Shell: freeze and wait until every task is frozen (or fail, thawed again)."""
        p = shlex.quote(self.path)
        write = f"echo 1 > {p}/cgroup.freeze" if self.v2 else f"echo FROZEN > {p}/freezer.state"
        return (f"{write} && n=0 && until {self.frozen()}; do n=$((n+1)); "
                f"if [ $n -gt {FREEZE_TRIES} ]; then {self.thaw()}; "
                f"echo 'the container did not freeze'; exit 1; fi; done; {self.block()}")

    def thaw(self) -> str:
        """Shell: the network opened again (unblock), then the tasks go on."""
        p = shlex.quote(self.path)
        return (f"{self.unblock()}; " + (f"echo 0 > {p}/cgroup.freeze" if self.v2
                                         else f"echo THAWED > {p}/freezer.state"))

    def _in_netns(self, command: str) -> str:
        """Shell: `command` in the network namespace of the cgroup's first task."""
        p = shlex.quote(self.path)
        return (f"{{ pids=$(cat {p}/cgroup.procs 2>/dev/null); first=${{pids%%[!0-9]*}}; "
                f"[ -n \"$first\" ] && nsenter -t $first -n sh -c {shlex.quote(command)}; }}")

    def block(self) -> str:
        """Shell: nothing leaves the container's network namespace (iptables OUTPUT, where
        the host has it). Between the dump and the commit the frozen source's kernel
        would otherwise acknowledge what its peers send (CRIU takes the TCP sockets out
        of repair mode when it leaves a process running): bytes the target, restored from
        the dump, never sees. Unacknowledged, the peer sends them again to the target.
        What arrives is still taken in: what came before the dump is in it, and the
        target answers it at once (a client's request gets its reply at the restore,
        not after a retransmission timeout). CRIU does not dump the rules of a namespace
        Docker made (external to runc)."""
        return self._in_netns(
            "for t in iptables ip6tables; do command -v $t >/dev/null || continue; "
            f"$t -w -I OUTPUT 1 {_BLOCK_MATCH}; done 2>/dev/null; true")

    def unblock(self) -> str:
        return self._in_netns(
            "for t in iptables ip6tables; do command -v $t >/dev/null || continue; "
            f"while $t -w -D OUTPUT {_BLOCK_MATCH}; do :; done; done 2>/dev/null; true")

    def frozen(self) -> str:
        """Shell: true while the cgroup is frozen."""
        p = shlex.quote(self.path)
        return (f"grep -qx 'frozen 1' {p}/cgroup.events" if self.v2
                else f"[ \"$(cat {p}/freezer.state)\" = FROZEN ]")

    def end_silently(self) -> str:
        """Shell: the frozen tasks end without a packet leaving: the interfaces of their
        network namespace down, SIGKILL (pending while frozen), then thawed (they die
        before running). A cgroup that is gone or empty already is fine."""
        p = shlex.quote(self.path)
        down = ("ip -o link show | while read -r _n name _rest; do name=${name%:}; "
                "name=${name%@*}; [ \"$name\" = lo ] || ip link set dev \"$name\" down; done")
        return (f"[ -e {p}/cgroup.procs ] || exit 0; {self._in_netns(down)}; "
                f"[ -n \"$pids\" ] || exit 0; kill -9 $pids 2>/dev/null; {self.thaw()}")

    def thaw_after_dump(self, container_id: str) -> str:
        """Shell: a rollback's thaw, once a `runc checkpoint` still running has ended (CRIU,
        when it ends, puts the freezer back as it found it: frozen); prints `thawed` if
        the cgroup was frozen."""
        return (f"{wait_for_dump(container_id)}; "
                f"if {self.frozen()}; then {self.thaw()}; echo thawed; fi")


def freezer_script(pid: int) -> str:
    """Shell printing `v1 PATH` or `v2 PATH`: the freezer of the process `pid` (the
    container's init) in the host's cgroup tree (the agent shares its cgroup namespace):
    v1's freezer where it has one, else v2's (the whole tree, or the hybrid layout's
    `unified` mount)."""
    return (f"v1=''; v2=''; while IFS=: read -r _h ctl path; do case \"$ctl\" in "
            f"*freezer*) v1=$path ;; '') v2=$path ;; esac; done < /proc/{pid}/cgroup; "
            f"if [ -n \"$v1\" ] && [ -e \"/sys/fs/cgroup/freezer$v1/freezer.state\" ]; then "
            f"echo \"v1 /sys/fs/cgroup/freezer$v1\"; "
            f"elif [ -n \"$v2\" ] && [ -e \"/sys/fs/cgroup$v2/cgroup.freeze\" ]; then "
            f"echo \"v2 /sys/fs/cgroup$v2\"; "
            f"elif [ -n \"$v2\" ] && [ -e \"/sys/fs/cgroup/unified$v2/cgroup.freeze\" ]; then "
            f"echo \"v2 /sys/fs/cgroup/unified$v2\"; else echo 'no freezer'; exit 1; fi")


def find(agent, pid: int) -> tuple[Freezer | None, str]:
    """The freezer of the process `pid` (the container's init), read through an agent on
    its host (fastpath.Agent); and the script's output, for a message."""
    status, out = agent.sh(freezer_script(pid))
    return (parse_freezer(out) if status == 0 else None), out.strip()


def parse_freezer(output: str) -> Freezer | None:
    """freezer_script's output, or None."""
    for line in reversed(output.strip().splitlines()):
        kind, _, path = line.partition(" ")
        if kind in ("v1", "v2") and path.startswith("/sys/fs/cgroup"):
            return Freezer(path, kind == "v2")
    return None


def wait_for_dump(container_id: str) -> str:
    """Shell: wait (bounded) while a `runc checkpoint` of the container still runs: CRIU,
    when it ends, puts the freezer back as it found it (frozen), so a thaw before that
    would be undone."""
    # "[r]unc": the pattern must not match the shells that carry this very script
    pattern = shlex.quote(f"[r]unc .*checkpoint .*{container_id}")
    return (f"end=$(($(date +%s) + {WAIT_DUMP})); "
            f"while pgrep -f {pattern} >/dev/null && [ $(date +%s) -lt $end ]; do "
            f"sleep 0.05; done")


# --- the target's page server -----------------------------------------------------------
class PageServer:
    """`criu page-server` on the target, in its agent (host network), writing into the
    checkpoint's folder of the target's tmpfs; it serves one dump and exits."""

    def __init__(self, restore, checkpoint: str, address: str, port: int):
        self.restore = restore  # fastpath.FastRestore: its tmpfs folder and agent
        self.images = f"{restore.folder}/{checkpoint}"
        self.work = f"{restore.folder}/page-server"
        self.address, self.port = address, port

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self) -> None:
        """Before the freeze; returns once it listens (CRIU's --daemon does)."""
        status, out = self.restore.agent.sh(
            f"mkdir -p -m 0700 {self.images} {self.work} && "
            f"criu page-server --daemon --pidfile {self.work}/pid --images-dir {self.images} "
            f"--work-dir {self.work} --address {self.address} --port {self.port} "
            f"-o page-server.log -v2 </dev/null 2>&1 || "
            f"{{ tail -3 {self.work}/page-server.log; exit 1; }}")
        if status != 0:
            raise errors.ValidationFailed(
                f"--direct: CRIU's page server did not start on "
                f"{self.restore.host.name} ({self.endpoint}): {out.strip()[-300:] or 'no log'}",
                hint="migrate without --direct; nothing was frozen")

    def stop(self) -> None:
        """It exits after the dump; before one (a failure), it is ended here."""
        self.restore.agent.sh(f"test -s {self.work}/pid && kill $(cat {self.work}/pid) "
                              "2>/dev/null; true")

    def clear(self) -> None:
        """What a failed dump may have sent (the move must not mix it in)."""
        self.restore.agent.sh(f"rm -rf {self.images}")
