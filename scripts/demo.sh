#!/usr/bin/env bash
# A full encrypted cycle against a throwaway loopback backup host:
# init, open, write, close, reopen, check, close. Runs in a real kernel
# (make demo starts it through e2e/in-real-kernel.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${IMGBACKUP_BIN:-$root/.build/debug/imgbackup}
work=$(mktemp -d /tmp/imgbackup-demo.XXXXXX)
config=$work/imgbackup.toml
# Keep the demo's records out of the machine's real /run and /var/lib.
export IMGBACKUP_RUNTIME_DIR=$work/run IMGBACKUP_STATE_DIR=$work/state

cleanup() {
  "$bin" --config "$config" close demo >/dev/null 2>&1 || true
  "$root/e2e/backup-host.sh" stop "$work"
}
trap cleanup EXIT

# Everything on stdout, so the VM console keeps it in order.
say() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@" 2>&1; }
open_demo() {
  printf '$ %s\n' "$bin --config $config open demo"
  mnt=$("$bin" --config "$config" open demo)
  echo "$mnt"
}

say "a backup host on 127.0.0.1:2222 (OpenSSH sshd), storing into $work/storage"
"$root/e2e/backup-host.sh" start "$work" 2222
sed -n '/^\[target.demo\]/,/^$/p' "$config"

say "init: sparse image, LUKS2, ext4, all over sshfs"
run "$bin" --config "$config" init demo
image=$work/storage/demo.img
printf 'remote file: %s bytes apparent, %s bytes allocated\n' \
  "$(stat -c %s "$image")" "$(( $(stat -c %b "$image") * $(stat -c %B "$image") ))"

say "open, write, close"
open_demo
marker="imgbackup-demo-plaintext-$(date +%s)"
mkdir -p "$mnt/etc"
cp -a /etc/hostname /etc/os-release "$mnt/etc/"
for i in $(seq 200); do echo "$marker $i"; done > "$mnt/notes.txt"
head -c 8M /dev/urandom > "$mnt/random.bin"
sums=$(cd "$mnt" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum)
echo "$sums"
echo "(the apparent size stays 64 MiB; the remote allocates only what is written)"
run "$bin" --config "$config" close demo

say "the remote holds only ciphertext"
if grep -qa "$marker" "$image"; then echo "plaintext marker FOUND in the remote file" >&2; exit 1; fi
echo "marker '$marker' is not in $image"

say "reopen and compare"
open_demo
again=$(cd "$mnt" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 sha256sum)
[ "$sums" = "$again" ] && echo "all $(echo "$sums" | wc -l) files identical after reopening"
run "$bin" --config "$config" close demo
run "$bin" --config "$config" close demo
echo "(closing again is a no-op)"
say "demo finished"
