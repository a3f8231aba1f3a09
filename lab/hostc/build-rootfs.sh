#!/bin/bash
# Stage 1: the host c root file system (a directory), Debian HM_C_SUITE amd64 with the
# engine packages from HM_C_ENGINE_SUITE, made with mmdebstrap (native: no emulation).
# Usage: build-rootfs.sh OUTDIR   (settings come from common.sh)
set -euo pipefail
. "$(dirname "$0")/common.sh"
hm_need_root
out=$1

include=$(IFS=,; echo "${HM_C_PACKAGES[*]}")
sources=("deb $HM_C_MIRROR $HM_C_SUITE main")
for p in "${HM_C_ENGINE_PACKAGES[@]}"; do
  include+=",$p"
  s=${p#*/}
  [[ " ${sources[*]} " == *" $s main"* ]] || sources+=("deb $HM_C_MIRROR $s main")
done
hm_log "mmdebstrap $HM_C_SUITE amd64 (${HM_C_ENGINE_PACKAGES[*]}): $include"
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
# Check-Valid-Until off: an unstable suite's Release file from a mirror snapshot may be
# past its Valid-Until date (apt then refuses the whole suite).
# Default-Release keeps everything but the engine packages (and what only the newer
# suite can satisfy for them) at HM_C_SUITE's versions.
mmdebstrap --arch=amd64 --variant=minbase --format=directory \
  --include="$include" \
  --aptopt="APT::Default-Release \"$HM_C_SUITE\"" \
  --aptopt='Acquire::Retries "5"' \
  --aptopt='Acquire::Check-Valid-Until "false"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
  --customize-hook='chroot "$1" dpkg-query -W -f "\${Package} \${Version}\n" > "$1"/etc/hmigrate-packages' \
  "$HM_C_SUITE" "$out.part" "${sources[@]}"
mv "$out.part" "$out"
hm_log "root file system: $out ($(du -sh "$out" | cut -f1))"
