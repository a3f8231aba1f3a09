# Shared settings for the aarch64 lab host (sourced by up/down/status/build).
# shellcheck shell=bash

# HM_ARM_CGROUP=2: a second aarch64 host on cgroup v2 only (trixie's 6.12 kernel booted with
# cgroup_no_v1=all), with its own name, port and state so that it runs beside the v1 one;
# it shares the mmdebstrap stage (the expensive one) and keeps its own disk image.
HM_ARM_CGROUP=${HM_ARM_CGROUP:-1}
if [ "$HM_ARM_CGROUP" = 2 ]; then
  HM_ARM_NAME=${HM_ARM_NAME:-hm-arm2}
  HM_ARM_PORT=${HM_ARM_PORT:-2392}
  HM_ARM_STATE=${HM_ARM_STATE:-/var/lib/hmigrate-lab/arm64-v2}
  HM_ARM_KERNEL=${HM_ARM_KERNEL:-trixie}
  [ "$HM_ARM_KERNEL" = trixie ] || { echo "HM_ARM_CGROUP=2 needs HM_ARM_KERNEL=trixie" >&2; exit 1; }
fi
HM_ARM_NAME=${HM_ARM_NAME:-hm-arm}                 # guest host name and docker context name
HM_ARM_PORT=${HM_ARM_PORT:-2391}                   # 127.0.0.1:PORT on the x86 host -> guest :2375
HM_ARM_REGISTRY_PORT=${HM_ARM_REGISTRY_PORT:-5000} # guest localhost:5000 -> host 127.0.0.1:5000
HM_ARM_CACHE=${HM_ARM_CACHE:-/var/cache/hmigrate-lab/arm64}
HM_ARM_STATE=${HM_ARM_STATE:-/var/lib/hmigrate-lab/arm64}
HM_ARM_SUITE=${HM_ARM_SUITE:-trixie}
. "$(dirname "${BASH_SOURCE[0]}")/../mirror.sh"
HM_ARM_MIRROR=${HM_ARM_MIRROR:-$(debian_mirror)}
HM_ARM_CPUS=${HM_ARM_CPUS:-2}
# CPU model: pointer authentication off: CRIU 4.1.1 hangs restoring PAC keys under TCG
HM_ARM_CPU=${HM_ARM_CPU:-max,pauth=off}
HM_ARM_MEM=${HM_ARM_MEM:-3584}                     # MiB
HM_ARM_DISK_SIZE=${HM_ARM_DISK_SIZE:-10G}          # size of the (sparse) root file system
# Guest kernel: bookworm = Debian 12's arm64 6.1 (cgroup v1 memory/cpuset like the x86
# hosts; checkpoint/restore tested), trixie = the rootfs's own 6.12 (cgroup v2 only).
HM_ARM_KERNEL=${HM_ARM_KERNEL:-bookworm}
HM_ARM_INITRD=${HM_ARM_INITRD:-min}               # min (own, fast) or debian (initramfs-tools)
HM_ARM_BOOT_TIMEOUT=${HM_ARM_BOOT_TIMEOUT:-600}    # seconds to wait for the guest's dockerd
HM_ARM_BOOT_TRIES=${HM_ARM_BOOT_TRIES:-3}          # boots of a VM whose dockerd exits at start

# Packages of the guest root file system (arm64, from Debian).
HM_ARM_PACKAGES=(
  linux-image-arm64 initramfs-tools kmod udev
  docker.io containerd runc tini criu
  iproute2 iptables procps socat ca-certificates busybox-static util-linux mount
)

HM_ARM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

hm_log() { printf '[arm64 %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
hm_die() { printf '[arm64] ERROR: %s\n' "$*" >&2; exit 1; }

hm_need_root() { [ "$(id -u)" = 0 ] || hm_die "must run as root"; }

# Hash of what goes into the mmdebstrap root file system (stage 1).
hm_rootfs_recipe_hash() {
  {
    echo "suite=$HM_ARM_SUITE mirror=$HM_ARM_MIRROR"
    printf '%s\n' "${HM_ARM_PACKAGES[@]}"
    cat "$HM_ARM_DIR/build-rootfs.sh"
  } | sha256sum | cut -d' ' -f1
}

# Hash of the whole recipe of the bootable image (stage 2 = stage 1 + guest files).
hm_image_recipe_hash() {
  {
    hm_rootfs_recipe_hash
    echo "disk=$HM_ARM_DISK_SIZE kernel=$HM_ARM_KERNEL"
    # the v2 variant's image holds its own host name (v1's hash stays as it was, so a
    # running hm-arm is not seen as outdated)
    [ "$HM_ARM_CGROUP" != 2 ] || echo "cgroup=2 name=$HM_ARM_NAME"
    cat "$HM_ARM_DIR/build-image.sh" "$HM_ARM_DIR/build-initramfs.sh"
    (cd "$HM_ARM_DIR/guest" && find . -type f | LC_ALL=C sort | xargs sha256sum)
  } | sha256sum | cut -d' ' -f1
}

# The current image hash of the other variant (HM_ARM_CGROUP 1 <-> 2), with its defaults:
# both variants' images are cached side by side, and neither build removes the other's.
hm_other_image_hash() {
  local other=1
  [ "$HM_ARM_CGROUP" = 2 ] || other=2
  (unset HM_ARM_NAME HM_ARM_PORT HM_ARM_STATE HM_ARM_KERNEL
   HM_ARM_CGROUP=$other
   . "$HM_ARM_DIR/common.sh"
   hm_image_recipe_hash)
}

hm_pid() {
  local pf="$HM_ARM_STATE/qemu.pid" pid
  [ -s "$pf" ] || return 1
  pid=$(cat "$pf")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # make sure the pid really is our qemu (pid files can go stale)
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$HM_ARM_STATE/disk.qcow2" || return 1
  echo "$pid"
}

hm_docker() {
  local d=/usr/local/bin/docker
  [ -x "$d" ] || d=$(command -v docker) || hm_die "no docker client found"
  "$d" -H "tcp://127.0.0.1:$HM_ARM_PORT" "$@"
}
