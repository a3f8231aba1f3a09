#!/bin/bash
# Stage 2: bootable ext4 image + kernel + initrd from the stage-1 root file system
# and the guest files in lab/arm64/guest/.
# Usage: build-image.sh ROOTFS_DIR OUTDIR   (writes OUTDIR/{disk.img,vmlinuz,initrd.img})
set -euo pipefail
. "$(dirname "$0")/common.sh"
hm_need_root
rootfs=$1 out=$2
work="$out.work"

rm -rf --one-file-system "$work" "$out.part"
mkdir -p "$out.part"
trap 'rm -rf --one-file-system "$work"' EXIT

hm_log "copying root file system"
cp -a "$rootfs" "$work"

hm_log "installing guest files"
cp -a "$HM_ARM_DIR/guest/." "$work/"
chown -R 0:0 "$work/sbin/hmigrate-init" "$work/etc/criu" "$work/etc/docker"
echo "$HM_ARM_NAME" > "$work/etc/hostname"
cat > "$work/etc/hosts" <<HOSTS
127.0.0.1	localhost
127.0.1.1	$HM_ARM_NAME
::1		localhost ip6-localhost ip6-loopback
HOSTS
: > "$work/etc/fstab"

kver=$(ls "$work/boot" | sed -n 's/^vmlinuz-//p' | sort -V | tail -1)
[ -n "$kver" ] || hm_die "no kernel in $rootfs/boot"
cp "$work/boot/vmlinuz-$kver" "$out.part/vmlinuz"
cp "$work/boot/initrd.img-$kver" "$out.part/initrd.img"
echo "$kver" > "$out.part/kernel-version"

hm_log "making ext4 image ($HM_ARM_DISK_SIZE, sparse) with kernel $kver"
mke2fs -q -t ext4 -L hm-arm-root -d "$work" "$out.part/disk.img" "$HM_ARM_DISK_SIZE"

rm -rf --one-file-system "$out"
mv "$out.part" "$out"
hm_log "image ready in $out"
