#!/usr/bin/env bash
# Installs what building and testing imgbackup needs on Debian 12, and nothing
# twice: packages already present are skipped, so it is fast on a warm machine.
set -euo pipefail

packages=(
  # build: the C libraries imgbackup links
  pkg-config libcryptsetup-dev libfuse3-dev libnbd-dev
  # run: the tools imgbackup drives
  fuse3 sshfs openssh-client cryptsetup-bin e2fsprogs btrfs-progs rsync borgbackup
  # test: systemd-analyze checks the units in configs/; zsh parses the zsh completion
  systemd zsh
  # test: the backup host and the real kernel the end-to-end suite boots
  openssh-server nbdkit nbd-server qemu-system-x86 linux-image-amd64 busybox-static kmod
  python3-pytest
  # test: nbdcopy, the NBD client an attacker with a stolen key would use
  libnbd-bin
  # test: udevd in the VM, as on a real machine (open's mapping must stay unprobed)
  udev
)
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

# virtme-ng boots the Debian kernel with this machine's userspace. Pinned:
# the flags and behaviour the suite relies on were checked with this version.
VIRTME_NG_VERSION=1.42
if ! command -v vng >/dev/null 2>&1 || [ "$(vng --version 2>/dev/null | awk '{print $2}')" != "$VIRTME_NG_VERSION" ]; then
  echo "install-deps: installing virtme-ng $VIRTME_NG_VERSION"
  pip install -q "virtme-ng==$VIRTME_NG_VERSION"
fi
