#!/bin/bash
# Stage 2: bootable ext4 image + kernel + a minimal initramfs, from the stage-1 root file
# system and the guest files in lab/hostc/guest/.
# Usage: build-image.sh ROOTFS_DIR OUTDIR   (writes OUTDIR/{disk.img,vmlinuz,initrd-min.img})
set -euo pipefail
. "$(dirname "$0")/common.sh"
hm_need_root
rootfs=$1 out=$2
work="$out.work"

rm -rf --one-file-system "$work" "$out.part"
mkdir -p "$out.part"
trap 'rm -rf --one-file-system "$work"' EXIT

hm_log "copying root file system"
mkdir -p "$work"
cp -a "$rootfs/." "$work/"

hm_log "installing guest files"
cp -a "$HM_C_DIR/guest/." "$work/"
chown -R 0:0 "$work/usr/sbin/hmigrate-init" "$work/etc/criu" "$work/etc/docker" "$work/etc/containerd"
chmod 755 "$work/usr/sbin/hmigrate-init"
echo "$HM_C_NAME" >"$work/etc/hostname"
cat >"$work/etc/hosts" <<HOSTS
127.0.0.1	localhost
127.0.1.1	$HM_C_NAME
::1		localhost ip6-localhost ip6-loopback
HOSTS
: >"$work/etc/fstab"
# dockerd's own systemd units are not used (no systemd: our init starts the daemons).
kver=$(ls "$work/boot" | sed -n 's/^vmlinuz-//p' | sort -V | tail -1)
[ -n "$kver" ] || hm_die "no kernel in $rootfs/boot"
cp "$work/boot/vmlinuz-$kver" "$out.part/vmlinuz"
# The same minimal initramfs as the aarch64 host (busybox + virtio/ext4 modules): no udev.
"$HM_C_DIR/../arm64/build-initramfs.sh" "$work" "$work" "$kver" "$out.part/initrd-min.img"
echo "$kver" >"$out.part/kernel-version"
cp "$work/etc/hmigrate-packages" "$out.part/packages" 2>/dev/null || true

hm_log "making ext4 image ($HM_C_DISK_SIZE, sparse) with kernel $kver"
mke2fs -q -t ext4 -L hm-c-root -d "$work" "$out.part/disk.img" "$HM_C_DISK_SIZE"

rm -rf --one-file-system "$out"
mv "$out.part" "$out"
hm_log "image ready in $out"
