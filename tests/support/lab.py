"""Handles on the lab's Docker hosts for tests (see lab/lib.sh for the names used here).

Lab tests skip with a reason when the lab is not usable (not root, lab not up); with
HMLAB_REQUIRED=1 (set by .ci/run) they fail instead, so CI cannot pass by skipping.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

DOCKER_CLI = "/usr/local/bin/docker" if Path("/usr/local/bin/docker").exists() else "docker"
LAB_DIR = Path(__file__).resolve().parents[2] / "lab"
BASE_IMAGE = "hmlab/busybox:latest"
REDIS_IMAGE = "hmlab/redis:latest"
REGISTRY = "localhost:5000"

COUNTER_CMD = ["sh", "-c", "i=0; while true; do echo $i; i=$((i+1)); sleep 1; done"]


@dataclass
class LabHost:
    """One lab Docker host: its context name, socket and where its published ports answer."""

    name: str
    context: str
    url: str
    data_root: str
    address: str  # where a port published on this host is reached from the test process
    client: docker.DockerClient = field(repr=False)

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        """Run the real docker CLI against this host and return its stdout."""
        proc = subprocess.run(
            [DOCKER_CLI, "--context", self.context, *args],
            capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed on {self.name}: {proc.stderr}")
        return proc.stdout

    def logs(self, container: str) -> str:
        return self.client.containers.get(container).logs().decode(errors="replace")


HOSTS = {
    "a": dict(context="hm-a", url="unix:///var/run/hmlab-a.sock", address="127.0.0.1"),
    "b": dict(context="hm-b", url="unix:///var/run/hmlab-b.sock", address="10.77.0.2"),
    # Host c (lab/hostc): two cgroup v2 daemons in an x86-64 VM; their published ports are
    # inside the VM, so tests reach servers with `docker exec` (address left empty).
    "c": dict(context="hm-c", url="tcp://127.0.0.1:2393", address=""),
    "c2": dict(context="hm-c2", url="tcp://127.0.0.1:2394", address=""),
    # The aarch64 host on cgroup v2 (HM_ARM_CGROUP=2 lab/arm64/up): a second TCG VM.
    "arm2": dict(context="hm-arm2", url="tcp://127.0.0.1:2392", address=""),
}
# Hosts that exist only when the lab was brought up with HMLAB_CGROUP2=1 (arm2: with
# HMLAB_ARM64=1 too).
CGROUP2_HOSTS = {"c", "c2", "arm2"}
ARM64_HOSTS = {"arm2"}

# The aarch64 host (lab/arm64/up): its context name and port follow lab/arm64/common.sh.
ARM_CONTEXT = os.environ.get("HM_ARM_NAME", "hm-arm")
ARM_URL = f"tcp://127.0.0.1:{os.environ.get('HM_ARM_PORT', '2391')}"
ARM_IMAGE = "hmigrate-lab/busybox:arm64"  # imported by lab/arm64/up (Debian's busybox-static)


def lab_unavailable(reason: str) -> None:
    if os.environ.get("HMLAB_REQUIRED") == "1":
        pytest.fail(f"lab required (HMLAB_REQUIRED=1) but unusable: {reason}")
    pytest.skip(reason)


def connect(name: str) -> LabHost:
    if name in CGROUP2_HOSTS and os.environ.get("HMLAB_CGROUP2") != "1":
        # Not a lab failure even under HMLAB_REQUIRED: host c is opt-in.
        pytest.skip("host c (cgroup v2) tests run with HMLAB_CGROUP2=1 "
                    "(sudo HMLAB_CGROUP2=1 lab/up)")
    if name in ARM64_HOSTS and os.environ.get("HMLAB_ARM64") != "1":
        pytest.skip("the aarch64 host on cgroup v2 runs with HMLAB_CGROUP2=1 HMLAB_ARM64=1 "
                    "(sudo HMLAB_CGROUP2=1 HMLAB_ARM64=1 lab/up)")
    if os.geteuid() != 0:
        lab_unavailable("lab tests need root (the lab's daemons and checkpoints are root's)")
    spec = HOSTS[name]
    try:
        client = docker.DockerClient(base_url=spec["url"], version="auto", timeout=120)
        info = client.info()
    except Exception as exc:  # noqa: BLE001 - any failure means the lab is not up
        lab_unavailable(
            f"lab host {name} does not answer on {spec['url']} ({exc}); run: sudo "
            + ("HMLAB_CGROUP2=1 " if name in CGROUP2_HOSTS else "")
            + ("HMLAB_ARM64=1 " if name in ARM64_HOSTS else "") + "lab/up"
        )
    return LabHost(name=name, client=client, data_root=info["DockerRootDir"], **spec)


# The aarch64 guest (qemu TCG): its serial console, where its kernel reports lockups.
ARM_SERIAL_LOG = Path(os.environ.get("HM_ARM_STATE", "/var/lib/hmigrate-lab/arm64")) / "serial.log"
# Seen under TCG during a CRIU dump: "watchdog: BUG: soft lockup - CPU#0 stuck for 518s!
# [criu]"; the guest's dockerd accepts connections and answers nothing for minutes.
GUEST_TROUBLE = re.compile(r"soft lockup|rcu_\w+ detected stalls|blocked for more than \d+ seconds")
LAB_DIR = Path(__file__).resolve().parents[2] / "lab"


def arm_serial_offset() -> int:
    """Where the guest's serial log ends now (0 when there is none)."""
    try:
        return ARM_SERIAL_LOG.stat().st_size
    except OSError:
        return 0


def arm_guest_trouble(since: int) -> list[str]:
    """The guest kernel's lockup and stall reports written after offset `since` (a
    reboot starts a new log: then all of it)."""
    try:
        with ARM_SERIAL_LOG.open("rb") as f:
            if f.seek(0, os.SEEK_END) >= since:
                f.seek(since)
            else:
                f.seek(0)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [line.strip() for line in text.splitlines() if GUEST_TROUBLE.search(line)]


def arm_answers(timeout: int = 15) -> bool:
    try:
        docker.APIClient(base_url=ARM_URL, version="1.41", timeout=timeout).ping()
        return True
    except Exception:  # noqa: BLE001 - any failure: it does not answer
        return False


def revive_arm_guest() -> str:
    """The aarch64 guest answers again: lab/arm64/up waits a minute for a guest that does
    not, then boots it again (its helper image imported again). What was done, or ''."""
    if arm_answers():
        return ""
    proc = subprocess.run(["bash", str(LAB_DIR / "arm64" / "up")], capture_output=True,
                          text=True, timeout=1200)
    if proc.returncode != 0:
        lab_unavailable(f"the aarch64 guest does not answer and lab/arm64/up failed: "
                        f"{proc.stderr[-2000:]}")
    return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "lab/arm64/up ran"


def connect_arm() -> docker.DockerClient:
    """A client of the aarch64 host, once it answers and has its helper image (a wedged
    guest is booted again first)."""
    if os.geteuid() != 0:
        lab_unavailable("lab tests need root (the lab's daemons and checkpoints are root's)")
    if os.path.exists(ARM_SERIAL_LOG):  # the lab's guest runs here: bring it back if stuck
        revive_arm_guest()
    try:
        client = docker.DockerClient(base_url=ARM_URL, version="auto", timeout=300)
        client.ping()
        client.images.get(ARM_IMAGE)
    except Exception as exc:  # noqa: BLE001 - any failure means the VM is not up
        lab_unavailable(f"aarch64 lab host does not answer on {ARM_URL} ({exc}); "
                        "run: sudo HMLAB_ARM64=1 lab/up")
    return client


def remove_containers(client: docker.DockerClient, names: list[str]) -> None:
    """Remove these containers (and their anonymous volumes) if they exist."""
    for name in names:
        with contextlib.suppress(Exception):
            client.containers.get(name).remove(force=True, v=True)


def run_cli(argv: list[str], timeout: float, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """subprocess.run(argv) with its output captured, in a process group of its own: on
    timeout the whole group is interrupted as a user's Ctrl-C would (the plugin rolls back),
    then killed. The docker CLI runs a plugin as its child, which outlives a killed CLI:
    an orphaned migration would go on beside the tests that follow."""
    import signal

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for sig, grace in ((signal.SIGINT, 120), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                out, err = proc.communicate(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            out, err = "", ""
        raise subprocess.TimeoutExpired(argv, timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def hmigrate(*args: str, context: str = "hm-a", timeout: float = 600
             ) -> subprocess.CompletedProcess:
    """Run the plugin through the real docker CLI, as a user would."""
    return run_cli([DOCKER_CLI, "--context", context, "hmigrate", *args], timeout)


def json_of(proc: subprocess.CompletedProcess) -> dict:
    """The --json document a command printed on stdout."""
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON on stdout: {proc.stdout!r} {proc.stderr!r}") from None


def migrate_json(*args: str, context: str = "hm-a", timeout: float = 600
                 ) -> tuple[subprocess.CompletedProcess, dict]:
    proc = hmigrate("migrate", *args, "--json", context=context, timeout=timeout)
    return proc, json_of(proc)


def exists(host: LabHost, name: str) -> bool:
    return bool(host.client.containers.list(all=True, filters={"name": f"^/{name}$"}))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_until(predicate, timeout: float = 30, interval: float = 0.2, what: str = "condition"):
    """Poll predicate until it returns a truthy value; fail the test with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def counter_values(text: str) -> list[int]:
    return [int(line) for line in text.split() if line.isdigit()]


def hello_ticks(logs: str) -> list[int]:
    """The numbers helloworld (the toolchain-built counter) printed, in order."""
    return [int(line.rsplit(":", 1)[1]) for line in logs.splitlines()
            if line.startswith("hello from hmigrate:")]


def staging_copies(*container_ids: str) -> list[str]:
    """containerd's staging copies of these containers' checkpoints (/tmp/ctrd-checkpoint*:
    process memory; containerd 1.6 leaves the one of every restore), told apart by the
    container id in their mount images: the lab's daemons share this machine's /tmp."""
    found = []
    for d in glob.glob("/tmp/ctrd-checkpoint*"):
        for f in glob.glob(f"{d}/mountpoints-*.img"):
            try:
                data = Path(f).read_bytes()
            except OSError:  # another user's copy, removed meanwhile
                continue
            if any(c and c.encode() in data for c in container_ids):
                found.append(d)
                break
    return found


def remove_staging_copies(*container_ids: str) -> int:
    """Benches and tests that checkpoint through the API or the CLI (not through
    `migrate`, which removes its own) remove theirs. Returns how many."""
    found = staging_copies(*container_ids)
    for d in found:
        shutil.rmtree(d, ignore_errors=True)
    return len(found)
