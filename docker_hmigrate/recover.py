"""Interrupted migrations: what a plugin killed outright (SIGKILL, an out-of-memory kill, a
lost machine) leaves behind, found and undone.

A migration interrupted by a signal it can handle rolls back itself (migrate.Migration).
One killed outright cannot: its lock, helper containers, inert template and tmpfs folders
stay, the source may be stopped with its dump in a tmpfs folder, and its restart policy
held at "no". What it needs to be undone is written where it survives the plugin:
- the lock container (on the source) carries the migration's checkpoint name, target,
  target container name and the source's restart policy (`lock_labels`);
- every container the migration makes carries its checkpoint name (MIGRATION_LABEL) and
  its owner, the plugin's host and pid (OWNER_LABEL): `sweep` removes those whose owner
  is gone;
- the tmpfs folders and the local work folder are named after the checkpoint.

`recover` decides from the hosts' state, as the commit rule does: a target container of
that migration that runs is the truth (the source is removed, as at a commit); otherwise
the source is made to run again from its own dump.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import docker.errors

from docker_hmigrate import direct, errors, fastpath
from docker_hmigrate.engine import LOCK_PREFIX, MIGRATION_LABEL, Host, api_error_text

OWNER_LABEL = "org.hmigrate.owner"  # "<host>:<pid>" of the plugin that made a container
LOCK_LABEL = MIGRATION_LABEL + ".lock"  # on the lock: the locked container's id
_LOCK = "org.hmigrate.lock."  # the lock's own facts: pid, host, since, checkpoint, ...
# A lock or helper made on another machine: its process cannot be asked, so it counts as
# gone only after a day (a migration takes minutes).
FOREIGN_STALE_SECONDS = 24 * 3600


def owner() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"


def lock_name(container_id: str) -> str:
    return f"{LOCK_PREFIX}{container_id[:32]}"


def lock_labels(container_id: str, checkpoint: str, target: str, target_name: str,
                restart_policy: dict[str, Any] | None, keep_source: bool,
                direct: bool = False) -> dict[str, str]:
    """What a recovery needs to know of the migration that holds the lock."""
    return {LOCK_LABEL: container_id, "org.hmigrate.helper": "lock",
            _LOCK + "pid": str(os.getpid()), _LOCK + "host": os.uname().nodename,
            _LOCK + "since": str(int(time.time())), _LOCK + "checkpoint": checkpoint,
            _LOCK + "target": target, _LOCK + "target_name": target_name,
            _LOCK + "restart": json.dumps(restart_policy or {}),
            _LOCK + "keep_source": "1" if keep_source else "",
            # --direct: the source may be frozen by its freezer (running for Docker)
            _LOCK + "direct": "1" if direct else ""}


def process_gone(host: str, pid: str, since: float) -> bool:
    """Whether the process that made something is gone (a process on another machine:
    when it is older than FOREIGN_STALE_SECONDS)."""
    if host == os.uname().nodename and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's live process
            return False
        return False
    return time.time() - since > FOREIGN_STALE_SECONDS


@dataclass
class Lock:
    """A migration's lock on a container, as read from its labels."""

    id: str
    labels: dict[str, str]

    def get(self, key: str) -> str:
        return self.labels.get(_LOCK + key, "") or ""

    @property
    def since(self) -> float:
        return float(self.get("since") or 0)

    @property
    def stale(self) -> bool:
        return process_gone(self.get("host"), self.get("pid"), self.since)

    @property
    def holder(self) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(self.since))
        return f"pid {self.get('pid')} on {self.get('host')}, since {when}"

    @property
    def checkpoint(self) -> str:
        return self.get("checkpoint")  # "" on locks of versions that did not record it

    @property
    def restart_policy(self) -> dict[str, Any]:
        with contextlib.suppress(ValueError):
            return json.loads(self.get("restart") or "{}") or {}
        return {}


def read_lock(host: Host, container_id: str) -> Lock | None:
    try:
        found = host.api.inspect_container(lock_name(container_id))
    except docker.errors.NotFound:
        return None
    return Lock(found["Id"], found["Config"].get("Labels") or {})


def sweep(host: Host) -> list[str]:
    """Remove the containers (helpers, agents, probes, templates) of migrations whose
    plugin is gone. Locks are left to `recover` (a stopped source may depend on them);
    containers made by versions without an owner label are left alone."""
    removed = []
    try:
        found = host.api.containers(all=True, filters={"label": MIGRATION_LABEL})
    except docker.errors.APIError:
        return removed
    for c in found:
        made_by = (c.get("Labels") or {}).get(OWNER_LABEL, "")
        node, _, pid = made_by.rpartition(":")
        if made_by and process_gone(node, pid, float(c.get("Created") or 0)):
            host.remove_quietly(c["Id"])
            removed.append(c["Id"])
    return removed


def _remove_tmpfs(host: Host, checkpoint: str) -> None:
    """The migration's tmpfs folders on a host (process memory): named after it."""
    with contextlib.suppress(docker.errors.APIError, errors.HmigrateError):
        host.run_probe(f"rm -rf {fastpath.TMPFS}/{shlex.quote(checkpoint)}-*", timeout=60)


def _remove_local(checkpoint: str) -> None:
    """The local work folder of a cross-ISA move (its images hold process memory)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{checkpoint}-*")):
        shutil.rmtree(path, ignore_errors=True)


class Recovery:
    """Undo what a killed migration of one container left: `run()` returns what was done
    (the JSON result)."""

    def __init__(self, src: Host, inspect: dict[str, Any], lock: Lock,
                 open_target: Callable[[str], Host], say: Callable[[str], None]):
        self.src, self.inspect, self.lock = src, inspect, lock
        self.open_target, self.say = open_target, say
        self.name = inspect["Name"].lstrip("/")
        self.done: list[str] = []
        self.dst: Host | None = None

    def run(self) -> dict[str, Any]:
        lock, ck = self.lock, self.lock.checkpoint
        target = lock.get("target")
        if target:
            try:
                self.dst = self.open_target(target)
                self.dst.info  # noqa: B018 - it answers, or raises here
            except (errors.HmigrateError, docker.errors.APIError, OSError) as exc:
                self.dst = None
                self.say(f"the target {target} does not answer: {exc}")
        state = self.inspect["State"]
        runs_on = "source"
        if state.get("Running") and lock.get("direct"):
            runs_on = self._settle_frozen_source()  # --direct: maybe frozen, alive
        elif state.get("Running"):
            self._resume_parked()
            self._act("the source kept running (it was never frozen)")
            if self.dst is not None:  # a target container it created, never started
                running = self._target_that_runs()
                if running:
                    self._act(f"left {self.lock.get('target_name')} running on "
                              f"{self.dst.name} as well: it was started there by hand")
        else:
            moved = self._target_that_runs()
            if moved is None:
                self._restore_source()
            else:
                runs_on = "target"
                self._finish_commit(moved)
        self._give_back_policy(runs_on)
        self._clean(ck)
        return {"container": self.name, "container_id": self.inspect["Id"],
                "checkpoint": ck, "interrupted": lock.holder, "target": target,
                "runs_on": runs_on, "actions": self.done}

    def _act(self, what: str) -> None:
        self.done.append(what)
        self.say(what)

    # --- where the container is the truth ---------------------------------------------
    def _target_that_runs(self) -> str | None:
        """The target container of that migration, if it runs (the move got past its
        commit point); a target container of it that does not run is removed. Raises when
        the target cannot be asked: restoring the source could run the program twice."""
        name = self.lock.get("target_name")
        if not (self.lock.get("target") and name):
            return None
        if self.dst is None:  # (a running source leaves no choice: dst was opened)
            raise errors.HostUnreachable(
                f"{self.name} is stopped on {self.src.name} by a migration to "
                f"{self.lock.get('target')} that was killed ({self.lock.holder}), and that "
                "host does not answer: whether the container runs there cannot be known",
                hint="run `docker hmigrate recover` again once the target answers")
        try:
            found = self.dst.api.inspect_container(name)
        except docker.errors.NotFound:
            return None
        created = found.get("Created", "")
        ours = _created_after(created, self.lock.since)
        if not ours:
            return None  # a container of that name that predates the migration
        if found["State"].get("Running"):
            return found["Id"]
        self.dst.remove_quietly(found["Id"])
        self._act(f"removed the target container {name} on {self.dst.name} (never ran)")
        return None

    def _restore_source(self) -> None:
        """The source from its own dump: the fast path's tmpfs images (linked where
        `docker start --checkpoint` looks), or the API path's checkpoint."""
        cid, ck = self.inspect["Id"], self.lock.checkpoint
        if not ck:
            raise errors.RollbackFailed(
                f"{self.name} is stopped and its interrupted migration ({self.lock.holder}) "
                "recorded no checkpoint name (an older version)",
                hint=f"see `docker checkpoint ls {self.name}`; start it with `docker start "
                     f"--checkpoint NAME {self.name}`, or afresh with `docker start "
                     f"{self.name}`")
        agent = fastpath.Agent(self.src)
        try:
            with contextlib.suppress(docker.errors.APIError, fastpath.FastPathUnavailable):
                agent.start()
            linked = ck in self.src.checkpoint_list(cid)  # API path, or already linked
            if not linked and agent.id and agent.anchor:  # the fast path: tmpfs images
                _st, out = agent.sh(f"ls -d {fastpath.TMPFS}/{ck}-*/{ck} 2>/dev/null")
                for images in out.split():
                    status, _ = agent.sh(f"test -e {shlex.quote(images)}/inventory.img && "
                                         + fastpath.relative_links(
                                             images, self.src.checkpoint_dir(cid), ck))
                    linked = status == 0
                    if linked:
                        break
            if not linked:
                raise errors.RollbackFailed(
                    f"{self.name} is stopped and no dump of its interrupted migration "
                    f"({ck}) is left on {self.src.name}: its memory state is lost",
                    hint=f"start it afresh: docker --context {self.src.name} start "
                         f"{self.name}")
            try:
                self.src.start(cid, checkpoint=ck)
            except docker.errors.APIError as exc:
                raise errors.RollbackFailed(
                    f"restoring {self.name} from {ck} failed: {api_error_text(exc)}",
                    hint=f"its dump stays in {fastpath.TMPFS}/{ck}-* on {self.src.name}"
                ) from exc
            with contextlib.suppress(docker.errors.APIError):
                self.src.checkpoint_delete(cid, ck)
            self._act(f"restored {self.name} on {self.src.name} from its checkpoint {ck}")
            self._resume_parked()  # its staging copy and tmpfs images go in _clean
        finally:
            agent.close()

    def _settle_frozen_source(self) -> str:
        """--direct: the source was frozen by its cgroup freezer before its dump (Docker
        still calls it running). If the target runs, the move was done: the source ends
        without running again; if not, it is thawed. Returns where the container runs."""
        if self.lock.get("target") and self.dst is None:
            raise errors.HostUnreachable(
                f"{self.name} may be frozen on {self.src.name} by a --direct migration to "
                f"{self.lock.get('target')} that was killed ({self.lock.holder}), and that "
                "host does not answer: whether the container runs there cannot be known",
                hint="run `docker hmigrate recover` again once the target answers")
        moved = self._target_that_runs()
        agent = fastpath.Agent(self.src)
        try:
            agent.start()
            pid = int(self.src.api.inspect_container(self.inspect["Id"])["State"]["Pid"])
            freezer, out = direct.find(agent, pid)
            if freezer is None:
                raise errors.RollbackFailed(
                    f"the cgroup freezer of {self.name} was not found on {self.src.name}: "
                    f"{out}", hint=f"see `docker --context {self.src.name} top {self.name}`")
            if moved is not None:
                agent.sh(freezer.end_silently())
                self._finish_commit(moved)
                return "target"
            _st, out = agent.sh(freezer.thaw_after_dump(self.inspect["Id"]))
            self._act(f"thawed {self.name} on {self.src.name} (frozen by --direct)"
                      if "thawed" in out else f"{self.name} kept running on {self.src.name}")
            return "source"
        finally:
            agent.close()

    def _finish_commit(self, target_id: str) -> None:
        """The move had got past its commit point: the source goes, as at a commit."""
        assert self.dst is not None
        self._act(f"{self.lock.get('target_name')} runs on {self.dst.name}: the move had "
                  "completed")
        if self.lock.get("keep_source"):
            self._act(f"kept the stopped source {self.name} (--keep-source)")
            return
        try:
            self.src.api.remove_container(self.inspect["Id"], force=True)
            self._act(f"removed the stopped source {self.name} on {self.src.name}")
        except docker.errors.APIError as exc:
            self._act(f"could not remove the stopped source: {api_error_text(exc)}")

    def _resume_parked(self) -> None:
        """Cross-ISA: threads parked at their equivalence points go on (the request is
        withdrawn; a program that was not parked ignores it). A target that does not
        answer may be of the other ISA: the request is withdrawn all the same."""
        if self.dst is not None and self.dst.isa == self.src.isa:
            return
        from docker_hmigrate import park
        from docker_hmigrate.validate import load_program
        try:
            program = load_program(self.src, self.inspect)
            park.withdraw(self.src, self.inspect["Id"], program.park_protocol)
            self._act("withdrew the park request (the program's threads go on)")
        except (errors.HmigrateError, docker.errors.APIError):
            pass  # not a program built for cross-ISA moves: nothing was parked

    def _give_back_policy(self, runs_on: str) -> None:
        policy = self.lock.restart_policy
        if runs_on != "source" or (policy.get("Name") or "no") == "no":
            return
        with contextlib.suppress(docker.errors.APIError):
            now = self.src.api.inspect_container(self.inspect["Id"])["HostConfig"]
            if (now.get("RestartPolicy") or {}).get("Name", "no") in ("", "no"):
                self.src.api.update_container(self.inspect["Id"], restart_policy=policy)
                self._act(f"gave {self.name} back its restart policy {policy.get('Name')}")

    def _remove_staging(self, host: Host) -> None:
        """containerd's staging copies of a restore of this container (process memory, or
        links into the tmpfs images: found by reading through them, so before those go)."""
        with contextlib.suppress(docker.errors.APIError, errors.HmigrateError):
            host.remove_checkpoint_staging([self.inspect["Id"]], since=self.lock.since)

    def _clean(self, ck: str) -> None:
        hosts = [self.src] + ([self.dst] if self.dst is not None else [])
        for host in hosts:
            if ck:
                removed = host.remove_labelled(MIGRATION_LABEL, ck)
                if removed:
                    self._act(f"removed {len(removed)} helper container(s) on {host.name}")
                self._remove_staging(host)  # while its links still lead to the images
                _remove_tmpfs(host, ck)
            sweep(host)
        if ck:
            _remove_local(ck)
        self.src.remove_quietly(self.lock.id)
        self._act("removed the lock")


def _created_after(created: str, since: float) -> bool:
    """Whether Docker's Created timestamp (RFC 3339, nanoseconds) is after `since`."""
    try:
        stamp = datetime.fromisoformat(created[:26].rstrip("Z") + "+00:00")
    except ValueError:
        return False
    return stamp.timestamp() >= since - 1


def recover(src: Host, container: str, open_target: Callable[[str], Host],
            say: Callable[[str], None]) -> dict[str, Any]:
    """`docker hmigrate recover CONTAINER`: undo a killed migration of it."""
    inspect = src.inspect(container)
    lock = read_lock(src, inspect["Id"])
    name = inspect["Name"].lstrip("/")
    if lock is None:
        say(f"no interrupted migration of {name} on {src.name}")
        return {"container": name, "container_id": inspect["Id"], "checkpoint": None,
                "interrupted": None, "target": None, "runs_on": None, "actions": []}
    if not lock.stale:
        raise errors.ContainerBusy(f"{name} is being migrated ({lock.holder})",
                                   hint="wait for that migration to end")
    return Recovery(src, inspect, lock, open_target, say).run()
