#!/bin/bash
# Stage 2: bootable ext4 image + kernel + initrd from the stage-1 root file system
# and the guest files in lab/arm64/guest/.
# Usage: build-image.sh ROOTFS_DIR OUTDIR   (writes OUTDIR/{disk.img,vmlinuz,initrd-*.img})
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
cp -a "$HM_ARM_DIR/guest/." "$work/"
chown -R 0:0 "$work/usr/sbin/hmigrate-init" "$work/etc/criu" "$work/etc/docker" "$work/etc/containerd"
echo "$HM_ARM_NAME" > "$work/etc/hostname"
cat > "$work/etc/hosts" <<HOSTS
127.0.0.1	localhost
127.0.1.1	$HM_ARM_NAME
::1		localhost ip6-localhost ip6-loopback
HOSTS
: > "$work/etc/fstab"

kver=$(ls "$work/boot" | sed -n 's/^vmlinuz-//p' | sort -V | tail -1)
[ -n "$kver" ] || hm_die "no kernel in $rootfs/boot"
if [ "$HM_ARM_KERNEL" = bookworm ]; then
  # Debian 12's arm64 kernel (6.1): it still has cgroup v1 memory/cpuset
  # controllers, so the guest can use the same cgroup layout as the x86-64 hosts.
  kdir="$HM_ARM_CACHE/kernel-bookworm"
  if [ ! -f "$kdir/ok" ]; then
    rm -rf --one-file-system "$kdir"; mkdir -p "$kdir/debs"
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
      hm_log "enabling arm64 as a foreign architecture in the host's apt (to download the kernel)"
      dpkg --add-architecture arm64
      apt-get -o DPkg::Lock::Timeout=900 update >&2 || hm_die "apt-get update failed"
    fi
    pkg=$(apt-cache depends linux-image-arm64:arm64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$pkg" ] || hm_die "cannot resolve linux-image-arm64:arm64 with apt"
    hm_log "downloading $pkg"
    (cd "$kdir/debs" && apt-get download "$pkg" >&2)
    dpkg -x "$kdir"/debs/*.deb "$kdir/root"
    kv=$(ls "$kdir/root/lib/modules")
    depmod -b "$kdir/root" "$kv"
    echo "$kv" > "$kdir/ok"
  fi
  kver=$(cat "$kdir/ok")
  rm -rf "$work/usr/lib/modules"/*
  cp -a "$kdir/root/lib/modules/$kver" "$work/usr/lib/modules/"
  cp "$kdir/root/boot/vmlinuz-$kver" "$out.part/vmlinuz"
  "$HM_ARM_DIR/build-initramfs.sh" "$work" "$work/usr" "$kver" "$out.part/initrd-min.img"
else
  cp "$work/boot/vmlinuz-$kver" "$out.part/vmlinuz"
  cp "$work/boot/initrd.img-$kver" "$out.part/initrd-debian.img"
  "$HM_ARM_DIR/build-initramfs.sh" "$work" "$work" "$kver" "$out.part/initrd-min.img"
fi
echo "$kver" > "$out.part/kernel-version"
# arm64 busybox for the helper image that lab/arm64/up imports into the guest
cp "$work/usr/bin/busybox" "$out.part/busybox-arm64"

hm_log "making ext4 image ($HM_ARM_DISK_SIZE, sparse) with kernel $kver"
mke2fs -q -t ext4 -L hm-arm-root -d "$work" "$out.part/disk.img" "$HM_ARM_DISK_SIZE"

rm -rf --one-file-system "$out"
mv "$out.part" "$out"
hm_log "image ready in $out"
