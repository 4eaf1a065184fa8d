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
  # test: nbdcopy, the NBD client an attacker with a stolen key would use
  libnbd-bin
  # test: udevd, as on a real machine (open's mapping must stay unprobed)
  udev
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
[ "$needs_vm" = 1 ] && packages+=(qemu-system-x86 linux-image-amd64 busybox-static python3-venv)
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
