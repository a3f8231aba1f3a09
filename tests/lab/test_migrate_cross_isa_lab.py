"""`docker hmigrate migrate` from x86-64 (host a) to the aarch64 host (hm-arm): park,
checkpoint, recode, restore, through the engine API only; and the refusals that must come
before anything is frozen."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor

import docker
import pytest

from tests.support.lab import (
    BASE_IMAGE,
    COUNTER_CMD,
    DOCKER_CLI,
    REGISTRY,
    counter_values,
    hmigrate,
    run_cli,
    unique,
    wait_until,
)
from tests.support.lab import (
    hello_ticks as ticks,
)

pytestmark = [pytest.mark.lab, pytest.mark.arm64]

# lab/examples pushes under HMLAB_EXAMPLES_PREFIX (default hmigrate): builds of another
# toolchain (e.g. hmigrate-cc --optimize-leaves) are tested by pointing it elsewhere.
PREFIX = f"{REGISTRY}/{os.environ.get('HMLAB_EXAMPLES_PREFIX', 'hmigrate')}"
HELLO = f"{PREFIX}/helloworld:latest"


def leftovers(client: docker.DockerClient, checkpoint: str) -> list[str]:
    """This migration's template container if still there (named after its checkpoint:
    other migrations may run at the same time; only those matching are inspected, as
    others' containers may go between the listing and the inspection)."""
    name = f"hmigrate-template-{checkpoint}"
    return [c.name for c in client.containers.list(all=True, filters={"name": f"^/{name}$"})
            if c.name == name]


def hello_on_x86(host_a, cleanup, on_arm, prefix: str) -> str:
    """helloworld started on host a (cleaned up on both hosts), counting."""
    name = unique(prefix)
    cleanup.append(name)
    on_arm.append(name)
    host_a.docker("pull", "-q", HELLO)
    host_a.docker("run", "-d", "--name", name, "--security-opt", "seccomp=unconfined", HELLO)
    wait_until(lambda: len(ticks(host_a.logs(name))) >= 2, what="helloworld on x86-64")
    return name


def test_helloworld_moves_to_aarch64_and_back_counting_on(host_a, arm, cleanup, on_arm):
    name = hello_on_x86(host_a, cleanup, on_arm, "x-hello")

    proc = hmigrate("migrate", name, "--to", "hm-arm", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["source_isa"], doc["target_isa"]) == ("x86-64", "aarch64")
    assert {p["name"] for p in doc["phases"]} >= {"park", "checkpoint", "recode", "restore"}
    assert doc["recode_seconds"]["total"] > 0
    assert not host_a.client.containers.list(all=True, filters={"name": f"^/{name}$"})

    target = arm.containers.get(name)
    assert target.status == "running"
    assert arm.images.get(target.attrs["Image"]).attrs["Architecture"] == "arm64"
    wait_until(lambda: len(ticks(target.logs().decode())) >= 3, timeout=60,
               what="the counter on aarch64")
    values = ticks(target.logs().decode())
    # It went on from where it was on x86-64: never from zero, one tick after another.
    assert values[0] >= 2 and values == list(range(values[0], values[0] + len(values))), values
    # Nothing left behind: no template, no helpers, no checkpoint.
    assert not leftovers(arm, doc["checkpoint"])

    # And back to x86-64: the same process, recoded the other way, counts on.
    proc = hmigrate("migrate", name, "--to", "hm-a", "--keep-source", "--json", context="hm-arm")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["source_isa"], doc["target_isa"]) == ("aarch64", "x86-64")
    assert doc["recode_seconds"]["total"] > 0
    on_arm_values = ticks(arm.containers.get(name).logs().decode())  # stopped, kept
    assert arm.containers.get(name).status == "exited"
    back = host_a.client.containers.get(name)
    assert host_a.client.images.get(back.attrs["Image"]).attrs["Architecture"] == "amd64"
    wait_until(lambda: len(ticks(host_a.logs(name))) >= 3, timeout=30,
               what="the counter back on x86-64")
    again = ticks(host_a.logs(name))
    assert again[0] == on_arm_values[-1] + 1, (on_arm_values[-3:], again[:3])
    assert again == list(range(again[0], again[0] + len(again)))
    assert not leftovers(host_a.client, doc["checkpoint"])


def test_plugin_killed_after_the_park_is_recovered_and_counts_on(host_a, arm, cleanup,
                                                                 on_arm):
    """SIGKILL of the plugin once the program is parked at its equivalence points (before
    the dump): no handler withdraws the park request. `recover` does, removes what the move
    made on the aarch64 host, and the program counts on from where it stopped, one tick
    after another."""
    name = hello_on_x86(host_a, cleanup, on_arm, "x-kill")
    killed = run_cli([DOCKER_CLI, "--context", "hm-a", "hmigrate", "migrate", name, "--to",
                      "hm-arm"], 600,
                     env={**os.environ, "HMIGRATE_TEST_FAULT": "before:checkpoint:sigkill"})
    assert killed.returncode != 0 and "park" in killed.stdout + killed.stderr
    parked = len(ticks(host_a.logs(name)))
    proc = hmigrate("recover", name, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["runs_on"] == "source", doc
    assert any("park request" in a for a in doc["actions"]), doc["actions"]
    wait_until(lambda: len(ticks(host_a.logs(name))) >= parked + 2, timeout=60,
               what="helloworld to count on after the recovery")
    values = ticks(host_a.logs(name))
    assert values == list(range(len(values))), values  # never restarted, none skipped
    assert not arm.containers.list(all=True, filters={"name": f"^/{name}$"})
    for client in (host_a.client, arm):
        left = client.containers.list(
            all=True, filters={"label": f"org.hmigrate.migration={doc['checkpoint']}"})
        assert not left, [c.name for c in left]


def test_program_not_built_by_the_toolchain_is_refused_before_freezing(host_a, arm, cleanup):
    name = unique("x-busybox")
    cleanup.append(name)
    host_a.docker("run", "-d", "--name", name, "--security-opt", "seccomp=unconfined",
                  BASE_IMAGE, *COUNTER_CMD)
    wait_until(lambda: len(counter_values(host_a.logs(name))) >= 2, what="counter")
    proc = hmigrate("migrate", name, "--to", "hm-arm")
    assert proc.returncode == 14, proc.stderr  # NotMigratableCrossISA
    assert "not built by hmigrate-cc" in proc.stderr and "Traceback" not in proc.stderr
    assert "checkpoint" not in proc.stderr.split("error:")[0]  # never frozen
    before = max(counter_values(host_a.logs(name)))
    wait_until(lambda: max(counter_values(host_a.logs(name))) > before, what="still counting")
    values = counter_values(host_a.logs(name))
    assert values == list(range(len(values)))
    assert not arm.containers.list(all=True, filters={"name": f"^/{name}$"})


def test_default_seccomp_profile_is_refused_before_freezing(host_a, arm, cleanup):
    name = unique("x-seccomp")
    cleanup.append(name)
    host_a.docker("pull", "-q", HELLO)
    host_a.docker("run", "-d", "--name", name, HELLO)  # Docker's default seccomp filter
    wait_until(lambda: ticks(host_a.logs(name)), what="helloworld")
    proc = hmigrate("check", name, "--to", "hm-arm", "--json")
    doc = json.loads(proc.stdout)
    checks = {c["check"]: c for c in doc["targets"][0]["checks"]}
    assert checks["seccomp"]["ok"] is False and "seccomp=unconfined" in checks["seccomp"]["hint"]
    assert proc.returncode == 14
    assert host_a.client.containers.get(name).status == "running"


def test_helloworld_arm64_variant_checkpoint_restores_on_arm(arm, on_arm, tmp_path):
    """On the aarch64 host itself: the arm64 variant runs; a checkpoint of it (the plugin's
    `checkpoint` building block) restores into a new container there (`restore`)."""
    name, copy = unique("arm-hello"), unique("arm-hello-2")
    on_arm += [name, copy]
    arm.images.pull(HELLO, platform="linux/arm64")
    c = arm.containers.run(HELLO, name=name, detach=True)
    wait_until(lambda: len(ticks(c.logs().decode())) >= 2, timeout=60, what="arm64 hello")
    ck = tmp_path / "ck.tar"
    proc = hmigrate("checkpoint", name, "-o", str(ck), context="hm-arm")
    assert proc.returncode == 0, proc.stderr
    last = ticks(c.logs().decode())[-1]
    arm.containers.create(HELLO, name=copy)
    proc = hmigrate("restore", copy, "-i", str(ck), context="hm-arm")
    assert proc.returncode == 0, proc.stderr
    restored = arm.containers.get(copy)
    wait_until(lambda: ticks(restored.logs().decode()), timeout=60, what="restored counter")
    assert ticks(restored.logs().decode())[0] == last + 1


def arm_redis(arm, container: str, *commands: str) -> str:
    """Inline Redis commands sent from a busybox container sharing the server's network."""
    script = "printf '" + "".join(c + "\\r\\n" for c in commands) + "' | nc -w 3 127.0.0.1 6379"
    out = arm.containers.run("hmigrate-lab/busybox:arm64", ["sh", "-c", script], remove=True,
                             network_mode=f"container:{container}")
    return out.decode(errors="replace")


def test_redis_dataset_moves_to_aarch64(host_a, arm, cleanup, on_arm):
    from tests.support.resp import Redis

    name, port = unique("x-redis"), 16395
    cleanup.append(name)
    on_arm.append(name)
    image = f"{PREFIX}/redis:latest"
    host_a.docker("pull", "-q", image)
    host_a.docker("run", "-d", "--name", name, "--security-opt", "seccomp=unconfined",
                  "-p", f"{port}:6379", image)

    def connect():
        try:
            client = Redis("127.0.0.1", port, timeout=5)
            return client if client.call("PING") == "PONG" else None
        except (OSError, RuntimeError, ConnectionError):
            return None

    client = wait_until(connect, timeout=30, what="redis on x86-64")
    keys = {f"k{i}": f"v{i}" for i in range(300)}
    assert client.pipeline([("SET", k, v) for k, v in keys.items()]) == ["OK"] * len(keys)
    client.close()

    proc = hmigrate("migrate", name, "--to", "hm-arm")
    assert proc.returncode == 0, proc.stderr
    assert arm.containers.get(name).status == "running"
    out = arm_redis(arm, name, "DBSIZE", "GET k0", "GET k299", "SET after move", "GET after")
    assert ":300" in out and "v0" in out and "v299" in out and "move" in out, out


def arm_get(arm, container: str, path: str = "/") -> str:
    """A page fetched by a busybox wget in the server's network namespace on aarch64."""
    out = arm.containers.run("hmigrate-lab/busybox:arm64",
                             ["wget", "-q", "-O-", "-T", "20", f"http://127.0.0.1{path}"],
                             remove=True, network_mode=f"container:{container}")
    return out.decode(errors="replace")


def test_nginx_master_and_worker_move_to_aarch64_and_serve(host_a, arm, cleanup, on_arm):
    """nginx's master and worker share anonymous memory (CRIU: a memfd of /dev/zero):
    both are parked, both recoded, the shared page kept as data; on aarch64 the same two
    processes go on and the worker serves the page."""
    import urllib.request

    name, port = unique("x-nginx"), 18096
    cleanup.append(name)
    on_arm.append(name)
    image = f"{PREFIX}/nginx-bin:latest"
    host_a.docker("pull", "-q", image)
    host_a.docker("run", "-d", "--name", name, "--security-opt", "seccomp=unconfined",
                  "-p", f"{port}:80", image)

    def page():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                return resp.read().decode()
        except OSError:
            return None

    assert "hmigrate-cc" in wait_until(page, timeout=30, what="nginx on x86-64")
    proc = hmigrate("migrate", name, "--to", "hm-arm", "--json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    doc = json.loads(proc.stdout)
    assert (doc["source_isa"], doc["target_isa"]) == ("x86-64", "aarch64")
    assert {p["name"] for p in doc["phases"]} >= {"park", "checkpoint", "recode", "restore"}
    assert not host_a.client.containers.list(all=True, filters={"name": f"^/{name}$"})

    target = arm.containers.get(name)
    assert target.status == "running"
    assert arm.images.get(target.attrs["Image"]).attrs["Architecture"] == "arm64"
    assert "hmigrate-cc" in arm_get(arm, target.id)
    assert "hmigrate-cc" in arm_get(arm, target.id)  # and again: the worker goes on
    procs = [p[-1] for p in target.top(ps_args="-o pid,args")["Processes"]]
    assert any("master process" in p for p in procs), procs
    assert any("worker process" in p for p in procs), procs
    assert len(procs) == 2, procs  # the same worker: none died and was replaced
    target.reload()
    assert target.status == "running"

    def nothing_left():  # other sessions share the lab: their helpers come and go
        # one list call (no inspect per container: theirs may be gone meanwhile)
        return not [n for c in arm.api.containers(all=True) for n in c["Names"]
                    if n.lstrip("/").startswith(
                        ("hmigrate-template-", "hmigrate-helper-", "hmigrate-probe-"))]

    wait_until(nothing_left, timeout=60, what="no template, helper or probe left")


SYSV_C = r"""
#include <stdio.h>
#include <sys/shm.h>
#include <unistd.h>
int main(void)
{
	long *shared = shmat(shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600), 0, 0);
	for (long n = 0;; n++) {
		*shared = n;
		printf("tick %ld\n", n);
		fflush(stdout);
		sleep(1);
	}
}
"""


def test_sysv_shared_memory_is_refused_before_freezing(host_a, tmp_path, cleanup):
    """SysV shared memory is not translated: `check` says so, nothing is frozen."""
    import shutil

    if shutil.which("hmigrate-cc") is None:
        pytest.skip("hmigrate-cc is not installed")
    (tmp_path / "shm.c").write_text(SYSV_C)
    build = subprocess.run(["hmigrate-cc", "-o", "shm", "shm.c"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    (tmp_path / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\n"
        "COPY shm_x86-64 shm_aarch64 shm.hmigrate.json /hmigrate/\n"
        "COPY shm_x86-64 /shm\n"
        'LABEL org.hmigrate.toolchain="hmigrate-toolchain/1" org.hmigrate.program="/shm" '
        'org.hmigrate.variants="/hmigrate/shm_x86-64 /hmigrate/shm_aarch64" '
        'org.hmigrate.metadata="/hmigrate/shm.hmigrate.json"\n'
        'CMD ["/shm"]\n')
    name = unique("x-sysv")
    image = f"hmlab/{name}:latest"
    cleanup.append(name)
    host_a.docker("build", "-q", "-t", image, str(tmp_path))
    try:
        host_a.docker("run", "-d", "--name", name, "--security-opt", "seccomp=unconfined", image)
        wait_until(lambda: "tick 1" in host_a.logs(name), what="the SysV program")
        proc = hmigrate("check", name, "--to", "hm-arm", "--json")
        doc = json.loads(proc.stdout)
        checks = {c["check"]: c for c in doc["targets"][0]["checks"]}
        assert checks["shared memory"]["ok"] is False, checks["shared memory"]
        assert "SYSV" in checks["shared memory"]["detail"]
        # the image is local only: its missing arm64 variant (exit 9) may be said first
        assert proc.returncode in (9, 14), proc.stderr
        assert host_a.client.containers.get(name).status == "running"
    finally:
        with contextlib.suppress(Exception):
            host_a.client.containers.get(name).remove(force=True)
        with contextlib.suppress(Exception):
            host_a.client.images.remove(image, force=True)


THREADS = f"{PREFIX}/examples/threads:latest"


def progress(logs: str) -> int:
    done = [int(line.split()[1].split("/")[0]) for line in logs.splitlines()
            if line.startswith("progress ")]
    return max(done, default=0)


def test_threads_move_to_aarch64_and_back_and_finish_with_the_right_result(
        host_a, arm, cleanup, on_arm):
    """examples/threads: four workers, each with state in locals, a __thread variable and
    a shared array. Moved x86-64 -> aarch64 -> x86-64 mid-run; the result it prints at the
    end combines every thread's state and is checked against a sequential recomputation."""
    name = unique("x-threads")
    cleanup.append(name)
    on_arm.append(name)
    host_a.docker("pull", "-q", THREADS)
    # 4 workers x 5000 steps of 20 ms: ~100 s of work, two moves in the middle (the
    # validations and template of a move to the emulated host take ~30-60 s under load)
    host_a.docker("run", "-d", "--name", name, "--security-opt", "seccomp=unconfined",
                  THREADS, "4", "5000", "20")
    wait_until(lambda: progress(host_a.logs(name)) >= 300, what="threads on x86-64")

    proc = hmigrate("migrate", name, "--to", "hm-arm", "--keep-source", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["target_isa"] == "aarch64"
    before = progress(host_a.logs(name))
    assert before < 20000  # moved mid-run
    host_a.client.containers.get(name).remove(force=True)
    target = arm.containers.get(name)
    wait_until(lambda: progress(target.logs().decode()) > before + 200, timeout=120,
               what="the workers progressing on aarch64")
    assert "result=" not in target.logs().decode()

    proc = hmigrate("migrate", name, "--to", "hm-a", "--json", context="hm-arm")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["target_isa"] == "x86-64"
    back = host_a.client.containers.get(name)
    assert host_a.client.images.get(back.attrs["Image"]).attrs["Architecture"] == "amd64"
    back.wait(timeout=180)
    logs = back.logs().decode()
    assert "result=" in logs and logs.rstrip().endswith("OK"), logs[-300:]
    back.reload()
    assert back.attrs["State"]["ExitCode"] == 0


def test_program_started_on_aarch64_is_refused_for_x86_64_before_freezing(arm, on_arm):
    """Started on aarch64, its stack and mmaps live above x86-64's 47-bit user space:
    `migrate` says so before anything is parked or frozen, and it keeps counting."""
    name = unique("x-armborn")
    on_arm.append(name)
    arm.images.pull(HELLO, platform="linux/arm64")
    c = arm.containers.run(HELLO, name=name, detach=True, security_opt=["seccomp=unconfined"])
    wait_until(lambda: len(ticks(c.logs().decode())) >= 2, timeout=60, what="hello on aarch64")
    proc = hmigrate("migrate", name, "--to", "hm-a", "--json", context="hm-arm")
    assert proc.returncode == 14, proc.stderr
    doc = json.loads(proc.stdout)
    assert "47-bit user space" in doc["error"]["message"], doc["error"]
    assert [p["name"] for p in doc["phases"]] == ["validate"]  # nothing parked or frozen
    before = max(ticks(c.logs().decode()))
    wait_until(lambda: max(ticks(c.logs().decode())) > before, timeout=30, what="still counting")
    c.reload()
    assert c.status == "running"


STACKADDR = f"{PREFIX}/examples/stackaddr:latest"


def stackaddr_ticks(logs: str) -> list[tuple[int, str]]:
    """examples/stackaddr's lines: (N, "held" or "free")."""
    out = []
    for line in logs.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "tick" and parts[1].isdigit():
            out.append((int(parts[1]), parts[2]))
    return out


def put_file(container, path: str, data: bytes) -> None:
    """A file into a container whose image has no shell (docker cp's API)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(path.rsplit("/", 1)[1])
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert container.put_archive(path.rsplit("/", 1)[0] or "/", buf.getvalue())


def parked(container) -> bool:
    """The runtime's announcement that every thread is parked."""
    for path in ("/run/hmigrate/parked", "/tmp/.hmigrate-parked"):
        with contextlib.suppress(docker.errors.NotFound):
            bits, _ = container.get_archive(path)
            b"".join(bits)
            return True
    return False


def test_untranslatable_point_is_left_for_a_later_one(host_a, arm, cleanup, on_arm):
    """examples/stackaddr keeps, while /hold says 1, the address of its own frame record in
    a variable: a stack address at no variable slot, which no recode can place on aarch64.
    The parked stacks are checked before the freeze (recode/livecheck.py): held for good,
    the move is refused before the freeze, naming the variable, and the program counts
    on; let go while the move waits, it is parked again at a later point and moves, and
    comes back from aarch64 (its stacks read there), one tick after another."""
    name = unique("x-stackaddr")
    cleanup.append(name)
    on_arm.append(name)
    host_a.docker("pull", "-q", STACKADDR)
    host_a.docker("run", "-d", "--name", name, "--security-opt", "seccomp=unconfined",
                  STACKADDR)
    source = host_a.client.containers.get(name)
    put_file(source, "/hold", b"1\n")
    wait_until(lambda: any(s == "held" for _, s in stackaddr_ticks(host_a.logs(name))),
               what="stackaddr to hold a stack address")

    # held at every point: refused before the freeze
    proc = run_cli([DOCKER_CLI, "--context", "hm-a", "hmigrate", "migrate", name, "--to",
                    "hm-arm", "--json"], 600,
                   env={**os.environ, "HMIGRATE_SAFE_POINT_WAIT": "2"})
    assert proc.returncode == 14, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["error"]["message"].startswith(f"{name} reached no point that can be "
                                              "translated to aarch64"), doc["error"]
    assert "held" in doc["error"]["message"] and "matches no variable slot" in \
        doc["error"]["message"], doc["error"]
    assert "checkpoint" not in {p["name"] for p in doc["phases"]}  # never frozen
    assert "Traceback" not in proc.stderr
    before = len(stackaddr_ticks(host_a.logs(name)))
    wait_until(lambda: len(stackaddr_ticks(host_a.logs(name))) >= before + 2,
               what="stackaddr to count on after the refusal")
    assert not arm.containers.list(all=True, filters={"name": f"^/{name}$"})

    # let go once the move has parked it (held): it parks again later and moves
    def let_go() -> None:
        wait_until(lambda: parked(source), timeout=120, interval=0.05,
                   what="the first park")
        put_file(source, "/hold", b"0\n")

    with ThreadPoolExecutor(max_workers=1) as pool:
        releasing = pool.submit(let_go)
        proc = hmigrate("migrate", name, "--to", "hm-arm", "--json")
        releasing.result()
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["park_tries"] >= 2, doc.get("park_tries")
    target = arm.containers.get(name)
    wait_until(lambda: len(stackaddr_ticks(target.logs().decode())) >= 2, timeout=60,
               what="stackaddr on aarch64")

    # and back: its stacks read and checked on the aarch64 host
    proc = hmigrate("migrate", name, "--to", "hm-a", "--json", context="hm-arm")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["park_tries"] == 1
    wait_until(lambda: len(stackaddr_ticks(host_a.logs(name))) >= 2, timeout=60,
               what="stackaddr back on x86-64")
    n = [t for t, _ in stackaddr_ticks(host_a.logs(name))]
    assert n == list(range(n[0], n[0] + len(n))) and n[0] > before, n[:5]
