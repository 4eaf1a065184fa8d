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
echo "kernel-setup: kernel $(uname -r), device-mapper and loop ready"
exec "$@"
