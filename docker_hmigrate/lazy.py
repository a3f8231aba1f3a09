"""Post-copy (`migrate --lazy`): what it needs from both hosts, checked before the freeze.

Post-copy restores the target at once with CRIU's lazy pages (userfaultfd) and pulls the
memory from a page server on the source afterwards. Each host must allow a step that the
engine API does not offer; docs/lazy.md has the evidence (lab, Docker 20.10 and 26):

- **Target**: the restoring CRIU needs `lazy-pages` (and a work folder where the
  lazy-pages daemon's socket is). containerd's runc shim restores with only an image
  path, a work path and a parent (no LazyPages), and runc adds options to CRIU only from
  the container's OCI annotation `org.criu.config` (a CRIU configuration file) or the
  host-wide /etc/criu/runc.conf. Docker sets OCI annotations only from API 1.43 (Engine
  24, `HostConfig.Annotations`): on an older daemon (the lab's dockerd 20.10, API 1.41)
  a Docker-made restore cannot be lazy, and a restore outside Docker would leave dockerd
  and containerd without the process. Refused there, before anything is touched.
- **Target kernel and CRIU**: `criu check --feature uffd-noncoop` (userfaultfd with the
  events a multi-process restore needs).
- **Source**: runc's `checkpoint --lazy-pages` (CRIU 4.2.1 over runc's RPC) binds its
  page server on every address of the host's network namespace (CRIU applies runc's
  page-server address only without lazy pages). What works (done by hand on the lab,
  Docker 26): the fast path's full dump to tmpfs, served by `criu page-server
  --lazy-pages --address <one address>` from an agent with CAP_SYS_RESOURCE (CRIU grows a
  pipe past fs.pipe-max-size, or every request fails with EBADF). That is what
  `migrate --lazy` does (the steps below, called from migrate.py).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from docker_hmigrate import errors
from docker_hmigrate.engine import Host

ANNOTATIONS_API = (1, 43)  # first engine API whose HostConfig carries OCI annotations
CRIU_CONFIG_ANNOTATION = "org.criu.config"  # runc: the CRIU configuration file to use
UFFD_PROBE = "criu check --feature uffd-noncoop 2>&1; echo \"rc=$?\""
@dataclass(frozen=True)
class LazyFacts:
    """What decides whether --lazy can be taken (gathered before the freeze)."""

    src_isa: str
    dst_isa: str
    dst_api: str  # the target daemon's ApiVersion ("1.41")
    dst_server: str  # its engine version, for the message
    fast_path: str | None  # why the source cannot be dumped by runc (None: it can)
    uffd: str | None = None  # why the target's CRIU/kernel cannot restore lazily


def parse_api(version: str) -> tuple[int, int]:
    """'1.41' -> (1, 41); anything unreadable is (0, 0): too old to rely on."""
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return 0, 0


def uffd_reason(output: str) -> str | None:
    """Why `criu check --feature uffd-noncoop` (UFFD_PROBE's output) refuses, or None."""
    ok = "rc=0" in output.split() and "is supported" in output
    if ok:
        return None
    detail = " ".join(line.strip() for line in output.splitlines()
                      if line.strip() and not line.startswith("rc="))
    return f"`criu check --feature uffd-noncoop` fails ({detail or 'no output'})"


def refusals(facts: LazyFacts) -> list[str]:
    """Every reason --lazy cannot be taken between these hosts, most basic first."""
    out: list[str] = []
    if facts.src_isa != facts.dst_isa:
        out.append(f"post-copy needs the same ISA on both hosts ({facts.src_isa} -> "
                   f"{facts.dst_isa}): a cross-ISA move recodes the memory first")
    if parse_api(facts.dst_api) < ANNOTATIONS_API:
        out.append(
            f"the target's Docker Engine {facts.dst_server} (API {facts.dst_api}) cannot "
            f"restore with CRIU's lazy pages: neither dockerd nor containerd's runc shim "
            f"passes --lazy-pages, and runc takes extra CRIU options only from the OCI "
            f"annotation {CRIU_CONFIG_ANNOTATION}, which Docker sets from API "
            f"{'.'.join(map(str, ANNOTATIONS_API))} (Engine 24) on")
    if facts.fast_path:
        out.append(f"the source must be dumped by runc through the agent "
                   f"(fast path), which is not possible here: {facts.fast_path}")
    if facts.uffd:
        out.append(f"the target cannot restore lazily: {facts.uffd}")
    return out


def check(facts: LazyFacts) -> None:
    """Raise ValidationFailed (before the freeze: nothing touched) unless --lazy can run."""
    reasons = refusals(facts)
    if not reasons:
        return
    raise errors.ValidationFailed(
        "--lazy (post-copy) cannot be used: " + "; ".join(reasons),
        hint="migrate without --lazy (stop-and-copy through the fast path); nothing was "
             "frozen or changed")


def target_uffd(dst: Host) -> str | None:
    """Ask the target's own CRIU (through the probe) whether userfaultfd restores work."""
    try:
        _status, out = dst.run_probe(UFFD_PROBE, timeout=120)
    except Exception as exc:  # noqa: BLE001 - any failure of the probe is a refusal
        return f"the probe for `criu check` could not run ({exc})"
    return uffd_reason(out)


# --- the post-copy steps (docs/lazy.md, "Done by hand") -----------------------------------
# CRIU grows its page pipes to 4 MiB (past fs.pipe-max-size): without this capability
# every lazy page request after the first fails (EBADF).
LAZY_CAPS = ("SYS_RESOURCE",)
WAIT_LISTEN = 30  # seconds for a page server / lazy-pages daemon to come up


def _until_ready(test: str, log: str) -> str:
    """Shell: wait up to WAIT_LISTEN s for `test` to hold (a daemon started in the
    background is up); else print its log's tail and fail."""
    return (f"end=$(($(date +%s) + {WAIT_LISTEN})); while [ $(date +%s) -lt $end ]; do "
            f"{test} && exit 0; sleep 0.05; done; tail -5 {log}; exit 1")


def addresses(output: str) -> list[tuple[str, int]]:
    """(address, prefix length) of each global IPv4 address in `ip -4 -o addr` output."""
    out = []
    for line in output.splitlines():
        parts = line.split()
        if "inet" in parts and parts[1] != "lo":
            addr, _, plen = parts[parts.index("inet") + 1].partition("/")
            out.append((addr, int(plen or 32)))
    return out


def page_server_address(server: list[tuple[str, int]], peer: list[tuple[str, int]]
                        ) -> str | None:
    """The address of the host that runs CRIU's page server (`server`: the source for
    --lazy, the target for --direct) on a link it shares with `peer`: in a subnet of one
    of the peer's addresses, not an address both hosts have (each host's docker0 bridge),
    private (the page server has no authentication). None: no such address."""
    import ipaddress

    peer_ips = {a for a, _ in peer}
    for addr, _plen in server:
        ip = ipaddress.ip_address(addr)
        if addr in peer_ips or not ip.is_private:
            continue
        if any(ip in ipaddress.ip_network(f"{p}/{plen}", strict=False) for p, plen in peer):
            return addr
    return None


def port_for(name: str) -> int:
    """A port for the page server (27000-28999), from the migration's random name."""
    return 27000 + int.from_bytes(name.encode()[-4:], "big") % 2000


def serve_pages(fast: Any, address: str, port: int) -> None:
    """Source, after the fast dump: `criu page-server --lazy-pages` on the images in tmpfs,
    bound to `address` only; returns once it listens. The source's whole state stays in
    those images until the move commits (a failure restores the source from them)."""
    log = f"{fast.work}/page-server.log"
    status, out = fast.agent.sh(
        f"setsid criu page-server --lazy-pages --images-dir {fast.images} "
        f"--work-dir {fast.work} --address {address} --port {port} -o page-server.log -v3 "
        f"</dev/null >/dev/null 2>&1 & echo $! > {fast.work}/page-server.pid; "
        + _until_ready(f"grep -q 'Starting page server' {log} 2>/dev/null", log))
    if status != 0:
        raise errors.CriuError(f"CRIU's page server did not start on {fast.host.name}: "
                               f"{out.strip()[-300:] or 'no log'}",
                               hint="the source is restored from its dump; migrate "
                                    "without --lazy, or see docs/lazy.md")


def stop_pages(fast: Any) -> None:
    """End the page server if it still runs (it holds the images open)."""
    fast.agent.sh(f"test -s {fast.work}/page-server.pid && "
                  f"kill $(cat {fast.work}/page-server.pid) 2>/dev/null; true")


class LazyTarget:
    """The target side: a CRIU configuration named by the container's annotation (lazy
    pages, a work folder), the lazy-pages daemon, its outcome. Wraps a FastRestore (its
    tmpfs folder and agent), made before the target container is created."""

    def __init__(self, restore: Any):
        self.restore = restore
        self.work = f"{restore.folder}/work"
        self.conf = f"{restore.folder}/criu.conf"

    def prepare(self) -> None:
        """Before the freeze: the folder, criu.conf (the host's runc.conf lines kept), and
        whether this CRIU and kernel can restore lazily at all."""
        status, out = self.restore.agent.sh(
            f"mkdir -m 0700 {self.work} && {{ cat /etc/criu/runc.conf 2>/dev/null; "
            f"echo lazy-pages; echo work-dir {self.work}; }} > {self.conf} && "
            + UFFD_PROBE)
        reason = uffd_reason(out) if status == 0 else out.strip()
        if reason:
            raise errors.ValidationFailed(
                f"--lazy: the target cannot restore lazily: {reason}",
                hint="migrate without --lazy; nothing was frozen")

    def annotations(self) -> dict[str, str]:
        return {CRIU_CONFIG_ANNOTATION: self.conf}

    def start_daemon(self, images: str, address: str, port: int) -> None:
        """Before `docker start --checkpoint`: the daemon that takes the restored process's
        userfaultfd and fetches its pages from the source."""
        status, out = self.restore.agent.sh(
            f"setsid sh -c 'criu lazy-pages --page-server --address {address} --port {port} "
            f"--images-dir {images} --work-dir {self.work} -o lazy-pages.log; "
            f"echo $? > {self.work}/lazy.rc' </dev/null >/dev/null 2>&1 & "
            + _until_ready(f"[ -S {self.work}/lazy-pages.socket ]",
                           f"{self.work}/lazy-pages.log"))
        if status != 0:
            raise errors.CriuError(f"CRIU's lazy-pages daemon did not start on "
                                   f"{self.restore.host.name}: {out.strip()[-300:] or 'no log'}",
                                   hint="the source is restored from its dump; migrate "
                                        "without --lazy, or see docs/lazy.md")

    def outcome(self) -> tuple[int | None, str]:
        """The daemon's exit status (None: still fetching) and its log's last lines."""
        _status, out = self.restore.agent.sh(
            f"cat {self.work}/lazy.rc 2>/dev/null; echo ---; "
            f"tail -3 {self.work}/lazy-pages.log 2>/dev/null")
        rc, _, tail = out.partition("---")
        rc = rc.strip()
        return (int(rc) if rc.lstrip("-").isdigit() else None), tail.strip()

    def stop(self) -> None:
        """The daemon, if it still runs (a failure: the target is removed anyway)."""
        self.restore.agent.sh(
            f"for p in $(pgrep -f 'lazy-pages --page-server.*--work-dir {self.work}'); do "
            f"kill $p; done; true")


# --- only what the restore reads crosses before it (the rest is fetched lazily) ------------
PAGE = 4096  # the hosts' page size (x86-64 and aarch64 Linux as Docker runs them)
MOVED = "move"  # the source folder's subfolder whose <checkpoint>/ the move streams


@dataclass(frozen=True)
class PagesPlan:
    """One pages-M.img: its size in pages and the runs of it (first page, pages) a lazy
    restore reads from the file (present and not lazy), in order, adjacent ones merged."""

    name: str
    pages: int
    runs: tuple[tuple[int, int], ...]


def restore_reads(pagemap_name: str, pagemap: bytes) -> PagesPlan:
    """The plan of the pages image a pagemap image describes. A lazy restore skips the
    runs flagged PE_LAZY (userfaultfd brings them); runs in a parent image are not in
    this file."""
    from docker_hmigrate.criu.image import ImageFile
    from docker_hmigrate.criu.memory import (
        PE_LAZY,
        PE_PARENT,
        PE_PRESENT,
        entry_flags,
        entry_nr_pages,
    )

    image = ImageFile.from_bytes(pagemap_name, pagemap)
    runs: list[tuple[int, int]] = []
    offset = 0
    for entry in image.entries[1:]:
        flags, n = entry_flags(entry.msg), entry_nr_pages(entry.msg)
        if not flags & PE_PRESENT or flags & PE_PARENT:
            continue
        if not flags & PE_LAZY:
            if runs and sum(runs[-1]) == offset:
                runs[-1] = (runs[-1][0], runs[-1][1] + n)
            else:
                runs.append((offset, n))
        offset += n
    return PagesPlan(f"pages-{image.entries[0].msg.pages_id}.img", offset, tuple(runs))


def pack_script(images: str, moved: str, plans: list[PagesPlan]) -> str:
    """Source: `moved` (a new folder on the same tmpfs) gets every image of `images` as a
    hard link but the planned pages images, which become their runs only, back to back
    (NAME.runs). The full dump stays as it is: the page server serves it, a rollback
    restores from it."""
    q = shlex.quote
    planned = " ".join(q(p.name) for p in plans)
    lines = [f"mkdir -p -m 0700 {q(moved)}",
             f"for f in {q(images)}/*; do case \" {planned} \" in *\" ${{f##*/}} \"*) ;; "
             f"*) ln \"$f\" {q(moved)}/ ;; esac; done"]
    for p in plans:
        reads = "; ".join(f"dd if={q(images)}/{p.name} bs={PAGE} skip={first} count={n} "
                          "status=none" for first, n in p.runs)
        lines.append(f"{{ {reads or ':'}; }} > {q(moved)}/{p.name}.runs")
    return " && ".join(lines)


def unpack_script(folder: str, plans: list[PagesPlan]) -> str:
    """Target: each NAME.runs becomes NAME again, a file of the dump's size (sparse) with
    the runs at their places; the lazy runs stay holes, never read."""
    q = shlex.quote
    lines = []
    for p in plans:
        image, runs = q(f"{folder}/{p.name}"), q(f"{folder}/{p.name}.runs")
        lines.append(f"truncate -s {p.pages * PAGE} {image}")
        at = 0
        for first, n in p.runs:
            lines.append(f"dd if={runs} of={image} bs={PAGE} skip={at} seek={first} "
                         f"count={n} conv=notrunc status=none")
            at += n
        lines.append(f"rm -f {runs}")
    return " && ".join(lines) or "true"


def pack(fast: Any) -> list[PagesPlan]:
    """Source, after the dump: its pagemaps read (one exec: each as its name, its size and
    its bytes), and `<folder>/move/<checkpoint>` made for the move (pack_script): what the
    target's restore reads, not the lazy pages."""
    status, out = fast.agent.run(read_pagemaps_script(fast.images), stderr=False)
    plans = [restore_reads(name, blob) for name, blob in named_files(out)
             if re.fullmatch(r"pagemap-\d+\.img", name)]
    if status != 0 or not plans:
        raise errors.CriuError(f"the dump in {fast.images} has no pagemap image")
    status, out = fast.agent.run(pack_script(fast.images, moved_images(fast), plans))
    if status != 0:
        raise errors.CriuError(f"the lazy move's folder could not be made on "
                               f"{fast.host.name}: {out.decode(errors='replace')[-300:]}")
    return plans


def read_pagemaps_script(images: str) -> str:
    """Every pagemap image of the dump as `NAME SIZE\\n` and its bytes (named_files)."""
    return (f"cd {shlex.quote(images)} && for f in pagemap-*.img; do [ -f \"$f\" ] && "
            "printf '%s %s\\n' \"$f\" \"$(stat -c %s \"$f\")\" && cat \"$f\"; done")


def named_files(out: bytes) -> list[tuple[str, bytes]]:
    """`NAME SIZE\\n` then SIZE bytes, again and again."""
    files, at = [], 0
    while at < len(out):
        end = out.index(b"\n", at)
        name, size = out[at:end].decode().rsplit(" ", 1)
        files.append((name, out[end + 1:end + 1 + int(size)]))
        at = end + 1 + int(size)
    return files


def moved_images(fast: Any) -> str:
    return f"{fast.folder}/{MOVED}/{fast.checkpoint}"


def unpack(restore: Any, checkpoint: str, plans: list[PagesPlan]) -> None:
    """Target, after the move: the pages images rebuilt at the dump's offsets."""
    folder = f"{restore.folder}/{checkpoint}"
    status, out = restore.agent.sh(unpack_script(folder, plans))
    if status != 0:
        raise errors.TransferInterrupted(
            f"the pages images could not be rebuilt on {restore.host.name}: "
            f"{out.strip()[-300:]}")
