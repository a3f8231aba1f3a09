# Shared settings for the lab's host c: an x86-64 VM under KVM, Debian trixie, cgroup v2
# only, the newest Docker Engine and CRIU Debian offers, two daemons inside (hm-c, hm-c2).
# Sourced by up/down/status/build-*.sh; every setting can be overridden by HM_C_* variables.
# shellcheck shell=bash

HM_C_NAME=${HM_C_NAME:-hm-c}                    # guest host name, context of the first daemon
HM_C2_NAME=${HM_C2_NAME:-hm-c2}                 # context of the second daemon (netns inside)
HM_C_PORT=${HM_C_PORT:-2393}                    # 127.0.0.1:PORT on this machine -> guest dockerd c
HM_C2_PORT=${HM_C2_PORT:-2394}                  # 127.0.0.1:PORT -> guest :2376 -> dockerd c2
HM_C_CACHE=${HM_C_CACHE:-/var/cache/hmigrate-lab/hostc}
HM_C_STATE=${HM_C_STATE:-/var/lib/hmigrate-lab/hostc}
HM_C_SUITE=${HM_C_SUITE:-trixie}                # root file system and kernel
# Docker Engine (with its containerd and runc) from HM_C_DOCKER_SUITE, CRIU from
# HM_C_CRIU_SUITE. sid's docker.io 28.5.2 is the newest Debian has, but it cannot restore
# any checkpoint (dockerd bind-mounts the restored task's /proc/0/ns/net: "no such file or
# directory", with containerd 1.7.24 and 2.1.9 alike): the default is trixie's 26.1.5,
# which can. HM_C_DOCKER_SUITE=sid builds the 28.5.2 host (the plugin refuses it).
HM_C_DOCKER_SUITE=${HM_C_DOCKER_SUITE:-trixie}
HM_C_CRIU_SUITE=${HM_C_CRIU_SUITE:-sid}
. "$(dirname "${BASH_SOURCE[0]}")/../mirror.sh"
HM_C_MIRROR=${HM_C_MIRROR:-$(debian_mirror)}
# Accelerator: kvm needs a /dev/kvm that runs ordinary guest kernels. This lab machine's
# /dev/kvm is PVM (module kvm_pvm, for nested guests): it creates VMs but a stock Debian
# kernel hangs at its switch to long mode (only PVM-enabled guest kernels boot there), so
# "auto" picks TCG (software emulation, -cpu max) on such machines and KVM elsewhere.
HM_C_ACCEL=${HM_C_ACCEL:-auto}
if [ "$HM_C_ACCEL" = auto ]; then
  if [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; then HM_C_ACCEL=kvm; else HM_C_ACCEL=tcg; fi
fi
HM_C_CPUS=${HM_C_CPUS:-2}
HM_C_MEM=${HM_C_MEM:-2560}                      # MiB
HM_C_DISK_SIZE=${HM_C_DISK_SIZE:-12G}           # sparse ext4 root file system
HM_C_BOOT_TIMEOUT=${HM_C_BOOT_TIMEOUT:-600}     # seconds to wait for both daemons (TCG: slow)

# Packages as apt's PKG/SUITE; the rest come from HM_C_SUITE.
HM_C_ENGINE_PACKAGES=(docker.io/"$HM_C_DOCKER_SUITE" containerd/"$HM_C_DOCKER_SUITE"
                      runc/"$HM_C_DOCKER_SUITE" criu/"$HM_C_CRIU_SUITE")
HM_C_PACKAGES=(
  linux-image-amd64 kmod
  iproute2 iptables procps socat ca-certificates busybox-static util-linux mount
)

HM_C_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

hm_log() { printf '[hostc %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
hm_die() { printf '[hostc] ERROR: %s\n' "$*" >&2; exit 1; }
hm_need_root() { [ "$(id -u)" = 0 ] || hm_die "must run as root"; }

# Hash of what goes into the mmdebstrap root file system (stage 1).
hm_rootfs_recipe_hash() {
  {
    echo "suite=$HM_C_SUITE mirror=$HM_C_MIRROR"
    printf '%s\n' "${HM_C_ENGINE_PACKAGES[@]}" -- "${HM_C_PACKAGES[@]}"
    cat "$HM_C_DIR/build-rootfs.sh"
  } | sha256sum | cut -d' ' -f1
}

# Hash of the bootable image (stage 1 + image script + initramfs script + guest files).
hm_image_recipe_hash() {
  {
    hm_rootfs_recipe_hash
    echo "disk=$HM_C_DISK_SIZE"
    cat "$HM_C_DIR/build-image.sh" "$HM_C_DIR/../arm64/build-initramfs.sh"
    (cd "$HM_C_DIR/guest" && find . -type f | LC_ALL=C sort | xargs sha256sum)
  } | sha256sum | cut -d' ' -f1
}

hm_pid() { # the VM's qemu pid, only if that process really is ours
  local pf="$HM_C_STATE/qemu.pid" pid
  [ -s "$pf" ] || return 1
  pid=$(cat "$pf")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$HM_C_STATE/disk.qcow2" || return 1
  echo "$pid"
}

hm_docker_bin() {
  local d=/usr/local/bin/docker
  [ -x "$d" ] || d=$(command -v docker) || hm_die "no docker client found"
  echo "$d"
}
hm_docker_c() { "$(hm_docker_bin)" -H "tcp://127.0.0.1:$HM_C_PORT" "$@"; }
hm_docker_c2() { "$(hm_docker_bin)" -H "tcp://127.0.0.1:$HM_C2_PORT" "$@"; }
