#!/usr/bin/env bash
# Inside the real kernel: load the modules imgbackup uses, mount fusectl (the
# FUSE connection abort files), then run the command given.
set -euo pipefail
modprobe -a dm_crypt loop fuse 2>/dev/null || true
if [ -d /sys/fs/fuse/connections ] && ! mountpoint -q /sys/fs/fuse/connections; then
  mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null || true
fi
if ! grep -qw device-mapper /proc/devices; then
  echo "kernel-setup: device-mapper is not available in $(uname -r)" >&2
  exit 1
fi
if [ "${IMGBACKUP_IN_VM:-0}" = 1 ] && [ -s /root/.bashrc ]; then
  # The VM reuses this machine's root account as the backup host's user, and
  # bash sources ~/.bashrc for every ssh session (sftp-server included). Here
  # that file is a developer shell setup costing ~5 s per login under
  # emulation. Hide it, in the VM's own mount namespace only.
  mount --bind /dev/null /root/.bashrc
fi
if [ "${IMGBACKUP_IN_VM:-0}" = 1 ]; then
  # Booted without systemd, nothing removes the boot-time /run/nologin, and
  # pam_nologin then turns away every user but root (the restricted-key tests
  # log in as a dedicated user).
  rm -f /run/nologin
fi
if [ "${IMGBACKUP_IN_VM:-0}" = 1 ] && [ -n "${IMGBACKUP_HOST_CACHE_TAG:-}" ]; then
  # virtme-ng shares this machine's root over 9p without a cache (virtiofs
  # needs a virtiofsd Debian 12 lacks), so every exec reads its binary and
  # libraries across 9p again: imgbackup --version took 1.2 s, 0.56 s from a
  # cached mount. in-real-kernel.sh exports the root a second time; serve
  # /usr, /opt and the repository from it, cached (cache=loose: nothing on the
  # host changes while the VM runs). Writes still go to VM-only tmpfs layers.
  cached=/run/imgbackup-host
  mkdir -p "$cached"
  mount -t 9p -o "trans=virtio,version=9p2000.L,cache=loose,ro,access=any,msize=512000" \
    "$IMGBACKUP_HOST_CACHE_TAG" "$cached"
  for dir in /usr /opt; do
    layer=/run/imgbackup-layers$dir
    mkdir -p "$layer/upper" "$layer/work"
    mount -t overlay -o "lowerdir=$cached$dir,upperdir=$layer/upper,workdir=$layer/work" overlay "$dir"
  done
  repo=$(cd "$(dirname "$0")/.." && pwd)
  mount --bind "$cached$repo" "$repo"
fi
echo "kernel-setup: kernel $(uname -r), device-mapper and loop ready"
exec "$@"
