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
  pipe past fs.pipe-max-size, or every request fails with EBADF). Not wired into
  `migrate` yet: `--lazy` is refused with that reason where everything else allows it.
"""

from __future__ import annotations

from dataclasses import dataclass

from docker_hmigrate import errors
from docker_hmigrate.engine import Host

ANNOTATIONS_API = (1, 43)  # first engine API whose HostConfig carries OCI annotations
CRIU_CONFIG_ANNOTATION = "org.criu.config"  # runc: the CRIU configuration file to use
UFFD_PROBE = "criu check --feature uffd-noncoop 2>&1; echo \"rc=$?\""
SOURCE_SIDE_MISSING = (
    "the source side of post-copy is not built yet: runc's lazy dump exposes its page "
    "server on every address of the source host; serving the fast path's tmpfs dump with "
    "`criu page-server --lazy-pages` on one address works by hand (docs/lazy.md) and is "
    "not wired into migrate yet")


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
    reasons = refusals(facts) or [SOURCE_SIDE_MISSING]
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
