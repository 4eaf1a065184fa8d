#!/usr/bin/env bash
# Runs a command in a Linux kernel that has what imgbackup needs (dm-crypt,
# loop, fuse): directly when this machine's kernel has device-mapper,
# otherwise in the Debian kernel booted with virtme-ng (the development and CI
# machines lack device-mapper and nbd, and KVM: docs/testing.md).
#
#   in-real-kernel.sh COMMAND [ARGS...]
#   in-real-kernel.sh --boots-vm     exit 0 when it would boot a VM (run-sharded.sh)
#
# IMGBACKUP_VM_CPUS: the VM's virtual CPUs (default 2; run-sharded.sh gives
# each of its VMs one). IMGBACKUP_FORCE_VM=1 boots a VM even here.
#
# The VM sees this machine's filesystem read-only, with /tmp, /run and /var
# writable (overlays); the command's exit status comes back as ours.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

host_has_device_mapper() {
  grep -qw device-mapper /proc/devices 2>/dev/null || { modprobe dm_crypt 2>/dev/null && grep -qw device-mapper /proc/devices; }
}

boots_vm() { [ "${IMGBACKUP_FORCE_VM:-0}" = 1 ] || ! host_has_device_mapper; }
if [ "${1:-}" = --boots-vm ]; then
  boots_vm
  exit
fi

quoted=$(printf '%q ' "$@")
if ! boots_vm; then
  echo "in-real-kernel: this kernel ($(uname -r)) has device-mapper: running directly"
  exec "$root/e2e/kernel-setup.sh" "$@"
fi

kernel=$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -n 1)
if [ -z "$kernel" ]; then
  echo "in-real-kernel: no kernel with device-mapper here and no /boot/vmlinuz-*-amd64 to boot; run 'make deps'" >&2
  exit 1
fi
echo "in-real-kernel: $(uname -r) has no device-mapper: booting $(basename "$kernel") with virtme-ng"
# --disable-kvm: with KVM, QEMU aborts ("failed to set MSR") or hangs at boot
# on these machines; software emulation boots in about 30 s.
cd "$root"
# Through a pipe: vng reopens its output, which truncates a file it was
# redirected to and would lose everything printed before it (the unit tests).
# The root exported a second time, for kernel-setup.sh to mount with a cache.
vng --run "$kernel" --disable-kvm --memory 2G --cpus "${IMGBACKUP_VM_CPUS:-2}" \
  --qemu-opts="-virtfs local,path=/,mount_tag=imgbackup-host,security_model=none,readonly=on,multidevs=remap" \
  --exec "env IMGBACKUP_IN_VM=1 IMGBACKUP_HOST_CACHE_TAG=imgbackup-host $root/e2e/kernel-setup.sh $quoted" 2>&1 | cat
exit "${PIPESTATUS[0]}"
