#!/bin/bash
# A minimal initramfs for the arm64 guest: busybox-static + the modules needed to
# mount the virtio root disk, then switch_root to /sbin/hmigrate-init. Much faster
# under TCG than Debian's generic initramfs (no udev, no module scanning).
# Usage: build-initramfs.sh ROOTFS_DIR MODULES_BASE KVER OUT.cpio.gz
#   MODULES_BASE: directory holding lib/modules/KVER (with modules.dep)
set -euo pipefail
. "$(dirname "$0")/common.sh"
rootfs=$1 base=$2 kver=$3 out=$4
mods="$base/lib/modules/$kver"
[ -f "$mods/modules.dep" ] || hm_die "no $mods/modules.dep"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"/{bin,dev,proc,sys,newroot,mod}
cp "$rootfs/usr/bin/busybox" "$tmp/bin/busybox"
for a in sh mount umount mkdir insmod sleep switch_root cat echo ls; do
  ln -s busybox "$tmp/bin/$a"
done

declare -A seen=()
order=()
add() { # add MODULE_NAME: its dependencies first
  local name=$1 path deps d
  path=$(grep -E "(^|/)${name}\.ko(\.xz|\.zst|\.gz)?:" "$mods/modules.dep" | head -1 | cut -d: -f1) || true
  [ -n "$path" ] || return 0          # built into the kernel
  [ -z "${seen[$path]:-}" ] || return 0
  seen[$path]=1
  deps=$(grep -E "^${path//./\\.}:" "$mods/modules.dep" | cut -d: -f2-)
  local arr=($deps) i
  for ((i=${#arr[@]}-1; i>=0; i--)); do
    d=${arr[i]##*/}; d=${d%%.ko*}; add "$d"
  done
  order+=("$path")
}
for m in virtio_pci virtio_mmio virtio_blk crc32c_generic ext4; do add "$m"; done
for p in "${order[@]}"; do
  f="$tmp/mod/$(basename "${p%%.ko*}").ko"
  case $p in
    *.xz) xz -dc "$mods/$p" > "$f" ;;
    *.zst) zstd -qdc "$mods/$p" > "$f" ;;
    *.gz) gzip -dc "$mods/$p" > "$f" ;;
    *) cp "$mods/$p" "$f" ;;
  esac
  echo "$(basename "$f")" >> "$tmp/mod/order"
done

cat > "$tmp/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs -o mode=0755 devtmpfs /dev
[ -f /mod/order ] && for m in $(cat /mod/order); do insmod "/mod/$m" 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 -o rw /dev/vda /newroot || { echo "initramfs: cannot mount /dev/vda"; exec sh; }
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /usr/sbin/hmigrate-init
INIT
chmod +x "$tmp/init"
(cd "$tmp" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -1 > "$out"
hm_log "initramfs $out: ${#order[@]} modules ($(cat "$tmp/mod/order" 2>/dev/null | tr '\n' ' '))"
