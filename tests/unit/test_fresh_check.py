"""lab/fresh-check's reading of the lab scripts (the chroot part needs root and
mmdebstrap: run `sudo lab/fresh-check`)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

LAB = Path(__file__).resolve().parents[2] / "lab"


def load():
    loader = importlib.machinery.SourceFileLoader("fresh_check", str(LAB / "fresh-check"))
    spec = importlib.util.spec_from_loader("fresh_check", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def test_commands_of_a_script() -> None:
    fc = load()
    script = """#!/bin/bash
# a comment with words: mkfs wget
say() { printf '%s\\n' "$*"; }
X=( alpha beta )
for ((i = 0; i < 3; i++)); do sleep 1; done
for p in "${X[@]}"; do installed "$p" || missing+=("$p"); done
want=$(docker_a image inspect x --format '{{.Id}}' | cut -c1-12)
start_bg "$pid" "$log" "${pre[@]}" dockerd --debug
timeout 5 nsenter --net=/x socat A B && "$DOCKER" ps
case "$1" in
  bash|zsh) echo ok ;;
esac
cat >f <<EOF2
modprobe inside-a-heredoc
EOF2
[ -e /x ] || update-binfmts --enable qemu-aarch64
"""
    found = fc.commands_in(script)
    assert {"sleep", "cut", "dockerd", "nsenter", "socat", "docker", "cat",
            "update-binfmts", "timeout"} <= found
    assert not {"i", "alpha", "image", "mkfs", "wget", "modprobe", "zsh"} & found


def test_the_lab_scripts_commands() -> None:
    fc = load()
    cmds = fc.external_commands()
    # what the lab needs from Debian's packages, found in the scripts themselves
    assert {"dockerd", "docker", "docker-registry", "socat", "mmdebstrap", "nsenter",
            "qemu-system-aarch64", "update-binfmts", "mke2fs", "cpio", "ip"} <= set(cmds)
    # nothing that is a bash builtin or a lab function
    assert not {"say", "die", "start_bg", "wait_for", "docker_a", "echo", "local"} & set(cmds)
    # run by other programs: mmdebstrap needs arch-test for the arm64 roots (issue 13)
    assert "(run by mmdebstrap (foreign architectures: the arm64 roots))" in cmds["arch-test"]
    assert "arch-test" in fc.lab_install_packages()
    # host c (HMLAB_CGROUP2=1 lab/up): its scripts are read too, and its VM's qemu comes
    # from a package lab/install installs (issue 17: a fresh machine brings it up)
    assert "lab/hostc/up" in cmds["qemu-system-x86_64"]
    assert "lab/hostc/build-rootfs.sh" in cmds["mmdebstrap"]
    assert "qemu-system-x86" in fc.lab_install_packages()
