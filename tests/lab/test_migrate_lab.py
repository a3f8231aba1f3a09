"""`docker hmigrate migrate` between the lab's hosts a and b: real daemons, real CRIU."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.support.lab import (
    BASE_IMAGE,
    COUNTER_CMD,
    DOCKER_CLI,
    REDIS_IMAGE,
    counter_values,
    exists,
    hmigrate,
    migrate_json,
    run_cli,
    unique,
    wait_until,
)
from tests.support.resp import try_redis

pytestmark = pytest.mark.lab


def helper_ids(*hosts) -> set[str]:
    """Every helper/probe container on these hosts now (to tell ours from older ones)."""
    return {c.id for host in hosts
            for c in host.client.containers.list(all=True,
                                                 filters={"label": "org.hmigrate.helper"})}


def no_helpers_left(*hosts, migration: str = "", besides: frozenset[str] = frozenset()
                    ) -> None:
    """No helper/probe container left; with `migration` (its checkpoint name), only that
    migration's are looked at, else only those not in `besides` (taken before the test:
    other people's migrations may run on the lab meanwhile, or have left theirs)."""
    label = f"org.hmigrate.migration={migration}" if migration else "org.hmigrate.helper"
    for host in hosts:
        left = [c for c in host.client.containers.list(all=True, filters={"label": label})
                if c.id not in besides]
        assert not left, f"helper containers left on {host.name}: {[c.name for c in left]}"


def test_counter_continues_on_target(host_a, host_b, cleanup):
    name = unique("mig-counter")
    cleanup.append(name)
    host_a.docker("run", "-d", "--name", name, "--restart", "unless-stopped",
                  "-e", "HM_TEST=1", "--label", "hm.test=counter", BASE_IMAGE, *COUNTER_CMD)
    wait_until(lambda: len(counter_values(host_a.logs(name))) >= 3, what="counter on a")

    proc, doc = migrate_json(name, "--to", "hm-b")
    assert proc.returncode == 0, proc.stderr
    assert doc["ok"] is True and doc["target"] == "hm-b"
    assert 0 < doc["downtime_seconds"] < doc["total_seconds"]
    assert not exists(host_a, name), "the source must be gone after a migration"

    target = host_b.client.containers.get(name)
    assert target.status == "running"
    wait_until(lambda: len(counter_values(host_b.logs(name))) >= 2, what="counter on b")
    values = counter_values(host_b.logs(name))
    assert values[0] >= 3 and 0 not in values, values  # continued, never restarted
    assert values == list(range(values[0], values[0] + len(values)))
    cfg = target.attrs
    assert cfg["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert "HM_TEST=1" in cfg["Config"]["Env"]
    assert cfg["Config"]["Labels"]["hm.test"] == "counter"
    # The restored container holds no checkpoint any more (it is process memory).
    assert host_b.docker("checkpoint", "ls", name).strip().splitlines()[1:] == []
    no_helpers_left(host_a, host_b, migration=doc["checkpoint"])


def test_compressed_move_sends_less_and_the_counter_continues(host_a, host_b, cleanup):
    """--compress gzip: the archives cross gzip-compressed (the target daemon unpacks
    them), on the fast path and on the API path alike."""
    name = unique("mig-gzip")
    cleanup.append(name)
    host_a.docker("run", "-d", "--name", name, BASE_IMAGE, *COUNTER_CMD)
    wait_until(lambda: len(counter_values(host_a.logs(name))) >= 2, what="counter on a")
    proc, doc = migrate_json(name, "--to", "hm-b", "--compress", "gzip")
    assert proc.returncode == 0, proc.stderr
    assert doc["compress"] == "gzip" and 0 < doc["bytes_sent"] < doc["bytes_moved"] / 2, doc
    wait_until(lambda: len(counter_values(host_b.logs(name))) >= 2, what="counter on b")
    before = max(counter_values(host_b.logs(name)))
    # and back through Docker's checkpoint API
    proc = run_cli([DOCKER_CLI, "--context", "hm-b", "hmigrate", "migrate", name, "--to",
                    "hm-a", "--compress", "gzip", "--json"], 600,
                   env={**os.environ, "HMIGRATE_FASTPATH": "0"})
    assert proc.returncode == 0, proc.stderr
    back = json.loads(proc.stdout)
    assert back["checkpoint_path"] == "api" and back["bytes_sent"] < back["bytes_moved"]
    wait_until(lambda: counter_values(host_a.logs(name)), what="counter back on a")
    values = counter_values(host_a.logs(name))
    assert values[0] > before and values == list(range(values[0], values[0] + len(values)))
    no_helpers_left(host_a, host_b, migration=back["checkpoint"])


def test_filesystem_changes_and_named_volume_move(host_a, host_b, cleanup):
    name, vol = unique("mig-files"), unique("mig-vol")
    cleanup.append(name)
    script = ("echo written-before > /root/note.txt; rm /etc/group; "
              "echo in-volume > /data/v.txt; " + COUNTER_CMD[2])
    host_a.docker("run", "-d", "--name", name, "-v", f"{vol}:/data", BASE_IMAGE, "sh", "-c",
                  script)
    try:
        wait_until(lambda: len(counter_values(host_a.logs(name))) >= 2, what="files written")
        proc = hmigrate("migrate", name, "--to", "hm-b")
        assert proc.returncode == 0, proc.stderr
        assert "downtime" in proc.stdout  # the human summary
        assert host_b.docker("exec", name, "cat", "/root/note.txt").strip() == "written-before"
        assert host_b.docker("exec", name, "cat", "/data/v.txt").strip() == "in-volume"
        # A file deleted in the source's filesystem stays deleted (overlay whiteout moved).
        out = host_b.docker("exec", name, "sh", "-c", "test -e /etc/group; echo $?")
        assert out.strip() == "1"
        mounts = host_b.client.containers.get(name).attrs["Mounts"]
        assert [m["Name"] for m in mounts if m["Type"] == "volume"] == [vol]
    finally:
        for host in (host_a, host_b):
            host.docker("rm", "-f", name, check=False)
            host.docker("volume", "rm", "-f", vol, check=False)


@pytest.mark.slow
def test_redis_keeps_every_key_and_port(host_a, host_b, cleanup):
    name, port = unique("mig-redis"), 16379
    cleanup.append(name)
    host_a.docker("run", "-d", "--name", name, "-p", f"{port}:6379", REDIS_IMAGE,
                  "redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no")
    client = wait_until(lambda: try_redis("127.0.0.1", port), what="redis on a")
    keys = {f"key:{i}": f"value-{i}-" + "x" * (i % 50) for i in range(2000)}
    assert client.pipeline([("SET", k, v) for k, v in keys.items()]) == ["OK"] * len(keys)
    client.close()

    proc, doc = migrate_json(name, "--to", "hm-b")
    assert proc.returncode == 0, proc.stderr

    # Same published port, now on host b's address.
    client = wait_until(lambda: try_redis(host_b.address, port), what="redis on b")
    assert client.call("DBSIZE") == len(keys)
    got = client.pipeline([("GET", k) for k in keys])
    assert [g.decode() for g in got] == list(keys.values())
    assert client.call("SET", "after", "move") == "OK"
    client.close()
    ports = host_b.client.containers.get(name).attrs["HostConfig"]["PortBindings"]
    assert ports["6379/tcp"][0]["HostPort"] == str(port)


def test_failed_restore_leaves_source_running(host_a, host_b, cleanup):
    """Corrupt the checkpoint on the target (pre-restore hook): CRIU's restore fails for
    real, and the source must be restored from its own checkpoint with its state."""
    name, vol = unique("mig-fail"), unique("mig-fail-vol")
    cleanup.append(name)
    older = frozenset(helper_ids(host_a, host_b))
    host_a.docker("run", "-d", "--name", name, "-v", f"{vol}:/data", BASE_IMAGE, *COUNTER_CMD)
    wait_until(lambda: len(counter_values(host_a.logs(name))) >= 3, what="counter on a")
    marker = Path(f"/tmp/{name}.hook")
    corrupt = (f"rm -f {host_b.data_root}/containers/$HMIGRATE_TARGET_CONTAINER_ID/checkpoints/"
               "$HMIGRATE_CHECKPOINT/pages-*.img")
    proc = hmigrate("migrate", name, "--to", "hm-b", "--hook-pre-restore", corrupt,
                    "--hook-failed-restore", f"echo $HMIGRATE_ERROR > {marker}")
    try:
        assert proc.returncode == 11, (proc.returncode, proc.stderr)  # RestoreFailed
        assert "restore" in proc.stderr and "hint:" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert marker.exists(), "the failed-restore hook did not run"
    finally:
        marker.unlink(missing_ok=True)
    before = max(counter_values(host_a.logs(name)))
    assert host_a.client.containers.get(name).status == "running"
    wait_until(lambda: max(counter_values(host_a.logs(name))) > before + 1,
               what="the restored source to go on counting")
    values = counter_values(host_a.logs(name))
    # One run of numbers: the source was restored from its checkpoint, not restarted.
    assert values == list(range(len(values))), values
    assert not exists(host_b, name), "the target container must be removed"
    assert vol not in host_b.docker("volume", "ls", "-q").split(), "target volume left behind"
    assert host_a.docker("checkpoint", "ls", name).strip().splitlines()[1:] == []
    no_helpers_left(host_a, host_b, besides=older)
    host_a.docker("rm", "-f", name)
    host_a.docker("volume", "rm", vol)


def test_refusals_say_what_and_exit_per_class(host_a, host_b, cleanup):
    tty, taken = unique("mig-tty"), unique("mig-taken")
    cleanup += [tty, taken]
    older = frozenset(helper_ids(host_a, host_b))
    host_a.docker("run", "-d", "-t", "--name", tty, BASE_IMAGE, *COUNTER_CMD)
    proc = hmigrate("migrate", tty, "--to", "hm-b")
    assert proc.returncode == 7 and "TTY" in proc.stderr, proc.stderr
    assert host_a.client.containers.get(tty).status == "running"

    proc = hmigrate("migrate", "no-such-container-xyz", "--to", "hm-b")
    assert proc.returncode == 3 and "no-such-container-xyz" in proc.stderr, proc.stderr

    proc = hmigrate("migrate", tty, "--to", "no-such-context-xyz")
    assert proc.returncode == 3 and "no-such-context-xyz" in proc.stderr, proc.stderr

    host_a.docker("run", "-d", "--name", taken, BASE_IMAGE, *COUNTER_CMD)
    host_b.docker("create", "--name", taken, BASE_IMAGE, "true")
    proc = hmigrate("migrate", taken, "--to", "hm-b")
    assert proc.returncode == 12 and "target name free" in proc.stderr, proc.stderr
    for p in (proc,):
        assert "Traceback" not in p.stderr
    # check: the same validations, nothing frozen.
    proc = hmigrate("check", taken, "--to", "hm-b", "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 12 and doc["ok"] is False
    checks = {c["check"]: c["ok"] for c in doc["targets"][0]["checks"]}
    assert checks["criu check on hm-b"] is True and checks["target name free"] is False
    assert host_a.client.containers.get(taken).status == "running"
    no_helpers_left(host_a, host_b, besides=older)


def test_checkpoint_and_restore_building_blocks(host_a, host_b, cleanup, tmp_path):
    name = unique("mig-blocks")
    cleanup.append(name)
    host_a.docker("run", "-d", "--name", name, BASE_IMAGE, *COUNTER_CMD)
    wait_until(lambda: len(counter_values(host_a.logs(name))) >= 3, what="counter on a")
    out = tmp_path / "ck.tar"
    proc = hmigrate("checkpoint", name, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600  # process memory: owner only
    last = max(counter_values(host_a.logs(name)))
    # Restore into a fresh container with the same configuration on host b.
    host_b.docker("create", "--name", name, BASE_IMAGE, *COUNTER_CMD)
    proc = hmigrate("restore", name, "-i", str(out), context="hm-b")
    assert proc.returncode == 0, proc.stderr
    wait_until(lambda: counter_values(host_b.logs(name)), what="restored counter")
    assert counter_values(host_b.logs(name))[0] == last + 1


def test_image_network_name_and_keep_source(host_a, host_b, cleanup):
    """An image only the source has is streamed over; a user network is recreated;
    --name renames the target; --keep-source leaves the stopped source."""
    name, new, net = unique("mig-keep"), unique("mig-renamed"), unique("mig-net")
    image = f"hmlab/only-on-a:{unique('t')}"
    cleanup += [name, new]
    maker = unique("mig-maker")
    host_a.docker("run", "--name", maker, BASE_IMAGE, "touch", f"/{maker}")
    host_a.docker("commit", maker, image)  # an image with an ID no other host has
    host_a.docker("rm", maker)
    host_a.docker("network", "create", net)
    try:
        host_a.docker("run", "-d", "--name", name, "--network", net, "--network-alias", "svc",
                      image, *COUNTER_CMD)
        wait_until(lambda: len(counter_values(host_a.logs(name))) >= 2, what="counter on a")
        assert host_b.client.images.list(name=image.split(":")[0]) == []
        proc, doc = migrate_json(name, "--to", "hm-b", "--name", new, "--keep-source")
        assert proc.returncode == 0, proc.stderr
        assert doc["target_container"] == new and doc["source_kept"] is True
        target = host_b.client.containers.get(new)
        assert target.status == "running"
        assert target.attrs["Config"]["Image"] == image
        assert target.attrs["Image"] == host_a.client.images.get(image).id  # streamed over
        assert net in target.attrs["NetworkSettings"]["Networks"]
        assert "svc" in target.attrs["NetworkSettings"]["Networks"][net]["Aliases"]
        assert host_a.client.containers.get(name).status == "exited"
        wait_until(lambda: counter_values(host_b.logs(new)), what="counter on b")
        assert counter_values(host_b.logs(new))[0] >= 2
    finally:
        for host in (host_a, host_b):
            for c in (name, new):
                host.docker("rm", "-f", c, check=False)
            host.docker("network", "rm", net, check=False)
            host.docker("rmi", image, check=False)


def counter_moves_exactly(name: str, source, target, target_context: str) -> None:
    """The counter started on `source` moves to `target` (reached as `target_context`)
    and goes on counting from where it was, nothing of the migration left."""
    source.docker("run", "-d", "--name", name, BASE_IMAGE, *COUNTER_CMD)
    wait_until(lambda: len(counter_values(source.logs(name))) >= 3,
               what=f"counter on {source.name}")
    proc, doc = migrate_json(name, "--to", target_context, context=source.context)
    assert proc.returncode == 0, proc.stderr
    assert doc["ok"] is True and doc["target"] == target_context
    assert not exists(source, name)
    wait_until(lambda: len(counter_values(target.logs(name))) >= 2,
               what=f"counter on {target.name}")
    values = counter_values(target.logs(name))
    assert values[0] >= 3 and values == list(range(values[0], values[0] + len(values)))
    no_helpers_left(source, target, migration=doc["checkpoint"])


def _ssh_processes() -> set[int]:
    """Every ssh client process of this machine whose command names the lab's ssh host."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0] == b"ssh" and b"hmlab-a-ssh" in argv:
                pids.add(int(entry.name))
    return pids


def test_move_to_a_target_reached_over_ssh(host_a, host_b, cleanup):
    """The target is a context on ssh:// (the lab's real sshd, lab/ssh): every engine call
    goes through `ssh ... docker system dial-stdio`, over one master connection."""
    import subprocess

    from tests.support.lab import DOCKER_CLI

    answer = subprocess.run([DOCKER_CLI, "--context", "hm-a-ssh", "version"],
                            capture_output=True, text=True, timeout=60)
    assert answer.returncode == 0, f"context hm-a-ssh does not answer (run lab/up): {answer.stderr}"
    name = unique("mig-ssh")
    cleanup.append(name)
    ssh_before = _ssh_processes()
    tmp_before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("hmigrate-ssh-*"))
    counter_moves_exactly(name, host_b, host_a, "hm-a-ssh")
    # The master connection, the channels opened ahead and the private socket folder end
    # with the plugin.
    assert _ssh_processes() - ssh_before == set()
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("hmigrate-ssh-*")) <= tmp_before


def test_move_to_a_target_reached_over_mutual_tls(host_a, host_b, cleanup):
    """The target is a context with TLS data (the lab's CA and client certificate,
    lab/tls): the plugin takes them from the context, as the docker CLI does."""
    name = unique("mig-tls")
    cleanup.append(name)
    counter_moves_exactly(name, host_a, host_b, "hm-b-tls")
