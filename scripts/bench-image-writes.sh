#!/usr/bin/env bash
# What each copy method writes to the image for the link benchmark's change
# set: the floor of the bytes an incremental run puts on the wire, before
# the open, SFTP, SSH and TCP add theirs. Measured at the loop device under
# the filesystem (its write counter in /sys/block/loopN/stat), from a fresh
# mount (as after `open`) to the unmount (as at `close`); no dm-crypt, which
# does not change sizes. Needs root, loop devices, mkfs.ext4, mkfs.btrfs,
# rsync and borg; no network and no VM.
#
#   scripts/bench-image-writes.sh
#
# Methods: rsync snapshots with --link-dest on ext4 (imgbackup's rsync
# method), the same on btrfs, btrfs subvolume snapshots with rsync
# --inplace (metadata DUP, mkfs.btrfs's default, and single), and a borg
# repository inside the image (imgbackup's borg method) on ext4 and btrfs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/imgbackup-bench-writes.XXXXXX)
device=""
cleanup() {
  mountpoint -q "$work/mnt" 2>/dev/null && umount "$work/mnt"
  [ -n "$device" ] && losetup -d "$device" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
export BORG_CACHE_DIR=$work/borg-cache BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
/usr/bin/python3 "$root/scripts/bench-source.py" "$work/first" "$work/second"
archive=(-aHAX --numeric-ids --delete --delete-excluded)

counter() {  # field of the loop device's stat: 3 sectors read, 7 sectors written
  awk -v f="$1" '{ print $f * 512 }' "/sys/block/$(basename "$device")/stat"
}

new_image() {  # ext4 | btrfs | btrfs-single: mkfs as imgbackup init does
  rm -rf "$BORG_CACHE_DIR"
  truncate -s 0 "$work/image" && truncate -s 1G "$work/image"
  device=$(losetup --direct-io=on --find --show "$work/image")
  case "$1" in
    ext4)
      mkfs.ext4 -F -q -m 0 -O metadata_csum -E lazy_itable_init=1,lazy_journal_init=1,nodiscard "$device"
      options=errors=remount-ro,data_err=abort,noinit_itable ;;
    btrfs) mkfs.btrfs -f -q -K "$device" >/dev/null 2>&1; options=defaults ;;
    btrfs-single) mkfs.btrfs -f -q -K -m single "$device" >/dev/null 2>&1; options=defaults ;;
  esac
  mkdir -p "$work/mnt"
  mount -o "$options" "$device" "$work/mnt"
  mkdir -p "$work/mnt/snapshots"
}

backup() {  # method, pass (first | second), snapshot name
  local into=$work/mnt/snapshots
  case "$1" in
    link-dest)
      local previous=()
      [ "$2" = second ] && previous=(--link-dest="$into/first")
      rsync "${archive[@]}" "${previous[@]}" "$work/$2/" "$into/.incomplete/"
      mv "$into/.incomplete" "$into/$2" ;;
    subvolume)
      if [ "$2" = first ]; then
        btrfs -q subvolume create "$into/.incomplete"
      else
        btrfs -q subvolume snapshot "$into/first" "$into/.incomplete"
      fi
      rsync "${archive[@]}" --inplace "$work/$2/" "$into/.incomplete/"
      btrfs -q property set -ts "$into/.incomplete" ro true
      mv "$into/.incomplete" "$into/$2" ;;
    borg)
      [ "$2" = first ] && borg init -e none "$work/mnt/borg"
      (cd "$work/$2" && borg create --numeric-ids "$work/mnt/borg::$2" .) ;;
  esac
}

echo "# $(date -u +%F) kernel $(uname -r); source $(du -sb "$work/first" | cut -f1) bytes in $(find "$work/first" -type f | wc -l) files"
echo "# change set: 40 files edited (4 KiB each), 2 MiB added, 10 removed: 2.16 MiB of new bytes"
echo
echo "| copy method | filesystem | incremental: written to the image | read from it |"
echo "| --- | --- | --- | --- |"
for case in "link-dest ext4" "link-dest btrfs" "subvolume btrfs" "subvolume btrfs-single" "borg ext4" "borg btrfs"; do
  read -r method filesystem <<<"$case"
  new_image "$filesystem"
  backup "$method" first
  umount "$work/mnt" && mount -o "$options" "$device" "$work/mnt"  # a new run: a fresh mount
  written=$(counter 7) read_bytes=$(counter 3)
  backup "$method" second
  sync -f "$work/mnt" && umount "$work/mnt"
  written=$(( $(counter 7) - written )) read_bytes=$(( $(counter 3) - read_bytes ))
  losetup -d "$device" && device=""
  awk -v m="$method" -v f="$filesystem" -v w="$written" -v r="$read_bytes" \
    'BEGIN { printf "| %s | %s | %.2f MiB | %.2f MiB |\n", m, f, w / 1048576, r / 1048576 }'
done
