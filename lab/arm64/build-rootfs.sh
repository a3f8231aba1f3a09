#!/bin/bash
# Stage 1: arm64 Debian root file system (a directory) with mmdebstrap.
# Usage: build-rootfs.sh OUTDIR   (settings come from common.sh)
set -euo pipefail
. "$(dirname "$0")/common.sh"
hm_need_root
out=$1

# mmdebstrap --arch=arm64 runs the arm64 maintainer scripts under qemu-user.
if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
  hm_log "mounting binfmt_misc"
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64 || true
fi
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
  || hm_die "qemu-aarch64 binfmt handler not enabled (install qemu-user-static binfmt-support)"

include=$(IFS=,; echo "${HM_ARM_PACKAGES[*]}")
hm_log "mmdebstrap $HM_ARM_SUITE arm64 (takes ~10 min under emulation): $include"
# Never rm -rf a chroot that still has /proc, /sys or /dev mounted in it.
hm_umount_under() {
  local m
  for m in $(awk -v p="$1/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" || true
  done
}
hm_umount_under "$out.part"
rm -rf --one-file-system "$out.part"
trap 'hm_umount_under "$out.part"' EXIT
mmdebstrap --arch=arm64 --variant=minbase --format=directory \
  --include="$include" \
  --aptopt='Acquire::Retries "5"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
  "$HM_ARM_SUITE" "$out.part" "$HM_ARM_MIRROR"
mv "$out.part" "$out"
hm_log "root file system: $out ($(du -sh "$out" | cut -f1))"
