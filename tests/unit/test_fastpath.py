"""When the fast checkpoint path applies (pure logic; the path itself: test_fastpath_lab)."""

from __future__ import annotations

from types import SimpleNamespace

from docker_hmigrate import fastpath


def _inspect(runtime: str = "", policy: str = "always") -> dict:
    return {"Id": "c" * 64, "HostConfig": {"Runtime": runtime,
                                           "RestartPolicy": {"Name": policy}}}


def test_runc_containers_take_it_whatever_their_restart_policy(monkeypatch):
    monkeypatch.delenv("HMIGRATE_FASTPATH", raising=False)
    host = SimpleNamespace(info={"DefaultRuntime": "runc"})
    assert fastpath.refusal(host, _inspect("runc")) is None
    assert fastpath.refusal(host, _inspect("", "no")) is None  # the daemon's default: runc


def test_other_runtimes_and_the_user_switch_refuse_with_the_reason(monkeypatch):
    monkeypatch.delenv("HMIGRATE_FASTPATH", raising=False)
    host = SimpleNamespace(info={"DefaultRuntime": "crun"})
    assert fastpath.refusal(host, _inspect("")) == "runtime crun, not runc"
    assert fastpath.refusal(host, _inspect("kata")) == "runtime kata, not runc"
    monkeypatch.setenv("HMIGRATE_FASTPATH", "0")
    assert fastpath.refusal(SimpleNamespace(info={}), _inspect("runc")) == "HMIGRATE_FASTPATH=0"


def test_restore_folder_links_resolve_from_any_folder_they_are_copied_to(tmp_path):
    """The links are made in dockerd's folder and copied (as links) by containerd into a
    staging folder elsewhere: relative links with enough ".." still reach the images."""
    import os
    import shutil
    import subprocess

    images = tmp_path / "shm" / "hmigrate-x" / "ck"
    images.mkdir(parents=True)
    (images / "pages-1.img").write_bytes(b"memory")
    (images / "inventory.img").write_bytes(b"inv")
    ckdir = tmp_path / "docker" / "containers" / "id" / "checkpoints"
    subprocess.run(["sh", "-c", fastpath.relative_links(str(images), str(ckdir), "ck")],
                   check=True)
    linked = ckdir / "ck"
    assert oct(linked.stat().st_mode & 0o777) == "0o700"
    assert sorted(os.listdir(linked)) == ["inventory.img", "pages-1.img"]
    assert all(not os.readlink(linked / n).startswith("/") for n in os.listdir(linked))
    staging = tmp_path / "tmp" / "ctrd-checkpoint1"
    shutil.copytree(linked, staging, symlinks=True)  # as containerd's unpacking does
    assert (staging / "pages-1.img").read_bytes() == b"memory"
    assert (linked / "inventory.img").read_bytes() == b"inv"
