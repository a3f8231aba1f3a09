"""Cross-ISA moves without a second run of the user's program (issue 16): the target's
facts come from the inert template, everything of the process from the source.

- examples/startjobs appends to /data/starts.log and takes a job from /data/queue at
  start-up (a bind mount present on both hosts): x86-64 -> aarch64 -> x86-64 leaves both
  targets' log and queue as they were, and its counter goes on exactly.
- examples/tcpfile: a server and its (forked) client over an established TCP connection,
  and a file written through one descriptor: x86-64 -> aarch64 -> x86-64, the client
  going on over the same connection (the same ports, no reconnect, no answer lost) and the
  file's offset the source's; and host a's checkpoint with host b's template facts
  restores on b (the merge on real CRIU without recode: seconds).

The client lives in the container: the aarch64 host is a qemu guest behind qemu's user
networking (only its Docker port forwarded), so a peer outside it has no route to the
container's address there; a connection survives only when both its ends move.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import docker
import pytest

from tests.support.lab import ARM_IMAGE, BASE_IMAGE, REGISTRY, hmigrate, unique, wait_until

pytestmark = [pytest.mark.lab]

STARTJOBS = f"{REGISTRY}/hmigrate/examples/startjobs:latest"
TCPFILE = f"{REGISTRY}/hmigrate/examples/tcpfile:latest"


def figures(doc: dict) -> str:
    phases = {p["name"]: p.get("seconds") for p in doc.get("phases", [])}
    return json.dumps({"downtime_seconds": doc.get("downtime_seconds"),
                       "prepare target": phases.get("prepare target"),
                       "template": doc.get("template"), "phases": phases})


def ticks(logs: str) -> list[int]:
    return [int(line.split()[1]) for line in logs.splitlines() if line.startswith("tick ")]


def consecutive(values: list[int]) -> bool:
    return bool(values) and values == list(range(values[0], values[0] + len(values)))


def arm_sh(arm, script: str, folder: str) -> str:
    """A shell command in a busybox container on the aarch64 host with `folder` (a host
    path there) bind-mounted at /d: the only way into that host's filesystem."""
    out = arm.containers.run(ARM_IMAGE, ["sh", "-c", script], remove=True,
                             volumes={folder: {"bind": "/d", "mode": "rw"}})
    return out.decode(errors="replace")


def jobs_folder(arm, folder: Path, jobs: str) -> None:
    folder.mkdir(mode=0o755)
    (folder / "queue").write_text(jobs)
    (folder / "starts.log").write_text("")
    arm_sh(arm, f"printf '{jobs.replace(chr(10), chr(92) + 'n')}' > /d/queue; : > /d/starts.log",
           str(folder))


def arm_files(arm, folder: Path) -> tuple[str, str]:
    out = arm_sh(arm, "cat /d/starts.log; echo ===; cat /d/queue", str(folder))
    log, _, queue = out.partition("===\n")
    return log, queue


@pytest.mark.arm64
def test_startup_side_effects_never_happen_on_the_targets(host_a, arm, cleanup, on_arm):
    name = unique("x-startjobs")
    cleanup.append(name)
    on_arm.append(name)
    folder = Path(f"/srv/jobs-{name}")
    jobs = "job-1\njob-2\njob-3\n"
    try:
        jobs_folder(arm, folder, jobs)  # inside: a failure there still cleans both hosts
        host_a.docker("pull", "-q", STARTJOBS)
        host_a.docker("run", "-d", "--name", name, "--security-opt", "seccomp=unconfined",
                      "-v", f"{folder}:/data", STARTJOBS)
        wait_until(lambda: len(ticks(host_a.logs(name))) >= 2, what="startjobs on x86-64")
        assert "took job: job-1" in host_a.logs(name)
        log_a, queue_a = (folder / "starts.log").read_text(), (folder / "queue").read_text()
        assert log_a.count("started on") == 1 and queue_a == "job-2\njob-3\n"

        proc = hmigrate("migrate", name, "--to", "hm-arm", "--keep-source", "--json")
        assert proc.returncode == 0, proc.stderr + proc.stdout
        doc = json.loads(proc.stdout)
        assert (doc["source_isa"], doc["target_isa"]) == ("x86-64", "aarch64")
        print("x86-64 -> aarch64:", figures(doc))
        on_a = ticks(host_a.logs(name))  # stopped, kept: its last tick is final
        host_a.client.containers.get(name).remove(force=True)
        # nothing of the program ran on the target before the restore
        assert arm_files(arm, folder) == ("", jobs)
        target = arm.containers.get(name)
        wait_until(lambda: len(ticks(target.logs().decode())) >= 2, timeout=60,
                   what="startjobs on aarch64")
        logs = target.logs().decode()
        assert "took job" not in logs and consecutive(ticks(logs)), logs[-300:]
        assert ticks(logs)[0] == on_a[-1] + 1, (on_a[-3:], logs[:200])

        proc = hmigrate("migrate", name, "--to", "hm-a", "--keep-source", "--json",
                        context="hm-arm")
        assert proc.returncode == 0, proc.stderr + proc.stdout
        doc = json.loads(proc.stdout)
        assert (doc["source_isa"], doc["target_isa"]) == ("aarch64", "x86-64")
        print("aarch64 -> x86-64:", figures(doc))
        on_arm_ticks = ticks(arm.containers.get(name).logs().decode())
        arm.containers.get(name).remove(force=True)
        back = host_a.client.containers.get(name)
        wait_until(lambda: len(ticks(back.logs().decode())) >= 2, what="startjobs back")
        again = back.logs().decode()
        assert "took job" not in again and consecutive(ticks(again)), again[-300:]
        assert ticks(again)[0] == on_arm_ticks[-1] + 1, (on_arm_ticks[-3:], again[:200])
        # host a's files as the first (and only) start left them; the aarch64 host's intact
        assert (folder / "starts.log").read_text() == log_a
        assert (folder / "queue").read_text() == queue_a
        assert arm_files(arm, folder) == ("", jobs)
    finally:
        with contextlib.suppress(Exception):
            arm_sh(arm, "rm -rf /d/queue /d/starts.log", str(folder))
        shutil.rmtree(folder, ignore_errors=True)


def record(client, name: str) -> str:
    stream, _ = client.api.get_archive(name, "/tmp/record.txt")
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        return tar.extractfile(tar.getmembers()[0]).read().decode()


def pongs(logs: str) -> list[int]:
    return [int(line.split()[-1]) for line in logs.splitlines()
            if line.startswith("client got pong ")]


def offsets(logs: str) -> list[int]:
    return [int(line.split()[-1]) for line in logs.splitlines()
            if line.startswith("server offset ")]


def connections(client: docker.DockerClient, image: str, name: str) -> set[tuple[int, int]]:
    """The established TCP connections (local port, remote port) in the container's
    network namespace, from /proc/net/tcp read by a busybox sharing it."""
    out = client.containers.run(image, ["cat", "/proc/net/tcp"], remove=True,
                                network_mode=f"container:{name}").decode()
    got = set()
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "01":  # TCP_ESTABLISHED
            got.add((int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)))
    return got


def moved_on(before: str, after: str) -> None:
    """The client's answers go on over the same connection (no new connect, none lost or
    repeated) and the server's file offset goes on from the source's: each line the
    source printed followed by each the target printed, as one run would print them."""
    assert "connected" not in after and "lost" not in after, after[-400:]
    assert len(pongs(after)) >= 2, after[-400:]
    got = pongs(before) + pongs(after)
    assert got == list(range(len(got))), (before[-200:], after[:200])
    seen = offsets(before) + offsets(after)
    assert seen == [sum(len(f"{k}\n") for k in range(n + 1)) for n in range(len(seen))], \
        (offsets(before)[-3:], offsets(after)[:3])


@pytest.mark.arm64
def test_established_connection_and_file_offset_move_across_isas(host_a, arm, cleanup,
                                                                 on_arm):
    name = unique("x-tcpfile")
    cleanup.append(name)
    on_arm.append(name)
    host_a.docker("pull", "-q", TCPFILE)
    host_a.docker("run", "-d", "--name", name, "--security-opt", "seccomp=unconfined", TCPFILE)
    wait_until(lambda: len(pongs(host_a.logs(name))) >= 3, what="tcpfile on x86-64")
    ports = connections(host_a.client, BASE_IMAGE, name)
    assert len(ports) == 2, ports  # the client's end and the server's

    proc = hmigrate("migrate", name, "--to", "hm-arm", "--keep-source", "--json",
                    timeout=1200)  # the emulated host, shared
    assert proc.returncode == 0, proc.stderr + proc.stdout
    doc = json.loads(proc.stdout)
    assert (doc["source_isa"], doc["target_isa"]) == ("x86-64", "aarch64")
    print("tcpfile x86-64 -> aarch64:", figures(doc))
    before = host_a.logs(name)  # stopped, kept: its last answer is final
    host_a.client.containers.get(name).remove(force=True)
    target = arm.containers.get(name)
    wait_until(lambda: len(pongs(target.logs().decode())) >= 2, timeout=90,
               what="the client talking on aarch64")
    moved_on(before, target.logs().decode())
    assert connections(arm, ARM_IMAGE, name) == ports  # the very connection

    proc = hmigrate("migrate", name, "--to", "hm-a", "--keep-source", "--json",
                    context="hm-arm", timeout=1200)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    doc = json.loads(proc.stdout)
    assert (doc["source_isa"], doc["target_isa"]) == ("aarch64", "x86-64")
    print("tcpfile aarch64 -> x86-64:", figures(doc))
    on_arm_logs = arm.containers.get(name).logs().decode()
    arm.containers.get(name).remove(force=True)
    back = host_a.client.containers.get(name)
    wait_until(lambda: len(pongs(back.logs().decode())) >= 2, what="the client back on x86-64")
    moved_on(before + on_arm_logs, back.logs().decode())
    assert connections(host_a.client, BASE_IMAGE, name) == ports
    # the file, written through one descriptor on three hosts: every number once, in order
    lines = record(host_a.client, name).splitlines()
    assert lines == [str(n) for n in range(len(lines))], lines
    assert int(lines[-1]) >= pongs(back.logs().decode())[0], lines[-3:]


def test_source_images_with_host_b_template_restore_on_b(host_a, host_b, cleanup, tmp_path):
    """The merge itself on real CRIU, without recode: host a's checkpoint of tcpfile (two
    processes, an established connection, a file) with host b's inert-template facts is
    restored on b; the client goes on over the same connection, the offset is kept."""
    from docker_hmigrate import template, transfer
    from docker_hmigrate.engine import Host
    from docker_hmigrate.recode import merge_host_facts
    from docker_hmigrate.spec import target_spec

    a, b = Host("hm-a", host_a.client), Host("hm-b", host_b.client)
    name = unique("tpl-merge")
    cleanup.append(name)
    folder = tmp_path / "data"  # its /tmp (record.txt): a bind mount both hosts see
    folder.mkdir()
    folder.chmod(0o1777)
    for h in (host_a, host_b):
        h.docker("pull", "-q", TCPFILE)
    src = a.client.containers.run(TCPFILE, name=name, detach=True,
                                  security_opt=["seccomp=unconfined"],
                                  volumes={str(folder): {"bind": "/tmp", "mode": "rw"}})
    wait_until(lambda: len(pongs(src.logs().decode())) >= 3, what="tcpfile on host a")
    inspect = a.api.inspect_container(src.id)
    body = template.template_body(target_spec(inspect, name).body, inspect["Mounts"])
    work = tmp_path / "work"
    template.take_checkpoint(b, body, work / "template", f"{name}-template")

    a.checkpoint_create(src.id, "ck", exit=True)
    before = src.logs().decode()
    with a.helper([f"{a.checkpoint_dir(src.id)}:{transfer.SRC_MOUNT}:ro"]) as helper:
        (work / "source").mkdir(mode=0o700)
        transfer.download_folder("checkpoint", a, helper, f"{transfer.SRC_MOUNT}/ck",
                                 work / "source")
    got = merge_host_facts(work / "source", work / "template", work / "merged", inspect)
    assert got["user_mounts"] == 1 and got["mount_ids"] >= 1
    src.remove(force=True)
    dst = b.api.create_container(TCPFILE, name=name, host_config=b.api.create_host_config(
        binds=[f"{folder}:/tmp"], security_opt=["seccomp=unconfined"]))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(work / "merged", arcname="ck")
    with b.helper([f"{b.checkpoint_dir(dst['Id'])}:/dst"]) as helper:
        b.api.put_archive(helper, "/dst", buf.getvalue())
    b.start(dst["Id"], checkpoint="ck")
    target = b.client.containers.get(dst["Id"])
    wait_until(lambda: len(pongs(target.logs().decode())) >= 2, what="tcpfile on host b")
    moved_on(before, target.logs().decode())


def mount_tree(images: Path) -> list[tuple]:
    """A checkpoint's mount tree as comparable rows, in CRIU's order: each mount's place
    (its path, its parent's path) and description; mount ids and the paths that name a
    container (roots, overlay layers) left out, anonymous devices and peer groups numbered
    by first use (they differ between any two containers of one host)."""
    from docker_hmigrate.criu import ImageSet

    s = ImageSet.load(images)
    entries = s.entries(next(n for n in s.images if n.startswith("mountpoints-")))
    by_id = {m.mnt_id: m for m in entries}
    devs: dict[int, int] = {}
    peers: dict[int, int] = {0: 0}
    rows = []
    for m in entries:
        fields = {f.name: v for f, v in m.ListFields()
                  if f.name not in ("mnt_id", "parent_mnt_id", "root", "root_dev", "options")}
        for f in ("shared_id", "master_id"):
            if f in fields:
                fields[f] = peers.setdefault(fields[f], len(peers))
        parent = by_id.get(m.parent_mnt_id)
        rows.append((m.mountpoint, parent.mountpoint if parent else None,
                     devs.setdefault(m.root_dev, len(devs)),
                     "" if m.fstype == 17 else m.options, sorted(fields.items())))
    return rows


def test_derived_facts_are_the_own_templates_and_restore_on_b(host_a, host_b, cleanup,
                                                              tmp_path):
    """Host b's host template (tcpfile's configuration without its bind mounts) with the
    user's mounts grafted in has the very mount tree of the configuration's own template,
    and host a's checkpoint merged with it restores on b: the client goes on."""
    from docker_hmigrate import template, transfer
    from docker_hmigrate.engine import Host
    from docker_hmigrate.recode import hostimages, merge_host_facts
    from docker_hmigrate.spec import target_spec

    a, b = Host("hm-a", host_a.client), Host("hm-b", host_b.client)
    name = unique("tpl-derive")
    cleanup.append(name)
    folder, sub = tmp_path / "data", tmp_path / "sub"  # a bind mount and one inside it
    for f in (folder, sub):
        f.mkdir()
        f.chmod(0o1777)
    binds = [f"{folder}:/tmp", f"{sub}:/tmp/sub:ro"]
    for h in (host_a, host_b):
        h.docker("pull", "-q", TCPFILE)
    src = a.client.containers.run(TCPFILE, name=name, detach=True,
                                  security_opt=["seccomp=unconfined"],
                                  volumes={str(folder): {"bind": "/tmp", "mode": "rw"},
                                           str(sub): {"bind": "/tmp/sub", "mode": "ro"}})
    wait_until(lambda: len(pongs(src.logs().decode())) >= 3, what="tcpfile on host a")
    inspect = a.api.inspect_container(src.id)
    body = template.template_body(target_spec(inspect, name).body, inspect["Mounts"])
    assert template.derivation_refusal(body) == ""
    work = tmp_path / "work"
    template.take_checkpoint(b, body, work / "own", f"{name}-own")
    template.take_checkpoint(b, template.host_body(body), work / "derived", f"{name}-host")
    assert hostimages.graft_user_mounts(work / "derived", template.user_paths(body)) == 2
    # the same tree; a user mount's peer group (an anonymous volume's master: the host's
    # mount of docker's data root) is the one field the graft cannot know, and the merge
    # replaces it with the source's
    users = set(template.user_paths(body))

    def known(rows: list[tuple]) -> list[tuple]:
        return [r[:4] + ([f for f in r[4] if f[0] != "master_id" or r[0] not in users],)
                for r in rows]

    assert known(mount_tree(work / "derived")) == known(mount_tree(work / "own"))

    template._checkpoint(a, src.id, lambda: None, "ck")  # again if the freezer gave up
    before = src.logs().decode()
    with a.helper([f"{a.checkpoint_dir(src.id)}:{transfer.SRC_MOUNT}:ro"]) as helper:
        (work / "source").mkdir(mode=0o700)
        transfer.download_folder("checkpoint", a, helper, f"{transfer.SRC_MOUNT}/ck",
                                 work / "source")
    got = merge_host_facts(work / "source", work / "derived", work / "merged", inspect)
    assert got["user_mounts"] == 2
    assert got == merge_host_facts(work / "source", work / "own", work / "with-own", inspect)
    assert mount_tree(work / "merged") == mount_tree(work / "with-own")
    src.remove(force=True)
    dst = b.api.create_container(TCPFILE, name=name, host_config=b.api.create_host_config(
        binds=binds, security_opt=["seccomp=unconfined"]))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(work / "merged", arcname="ck")
    with b.helper([f"{b.checkpoint_dir(dst['Id'])}:/dst"]) as helper:
        b.api.put_archive(helper, "/dst", buf.getvalue())
    b.start(dst["Id"], checkpoint="ck")
    target = b.client.containers.get(dst["Id"])
    wait_until(lambda: len(pongs(target.logs().decode())) >= 2, what="tcpfile on host b")
    moved_on(before, target.logs().decode())
