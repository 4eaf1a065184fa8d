#!/usr/bin/env bash
# `imgbackup run` (rsync) against the shell recipe it replaces (sshfs,
# cryptsetup open, mount, rsync, umount, cryptsetup close, fusermount -u), on
# the same data, the same image and the same loopback backup host, rounds
# alternating. Each round changes CHANGE_MIB of the source before each of the
# two runs, so both copy the same amount, hard-linked against the newest
# snapshot. Needs a kernel with dm-crypt:
#
#   e2e/in-real-kernel.sh scripts/bench-run.sh [ROUNDS] [CHANGE_MIB]   (default 4 and 8)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${IMGBACKUP_BIN:-$root/.build/release/imgbackup}
[ -x "$bin" ] || bin=$root/.build/debug/imgbackup
rounds=${1:-4}
change=${2:-8}
work=$(mktemp -d /tmp/imgbackup-bench-run.XXXXXX)
config=$work/imgbackup.toml
export IMGBACKUP_RUNTIME_DIR=$work/run IMGBACKUP_STATE_DIR=$work/state

cleanup() {
  mountpoint -q "$work/recipe-mnt" 2>/dev/null && umount "$work/recipe-mnt"
  [ -e /dev/mapper/bench-recipe ] && cryptsetup close bench-recipe
  mountpoint -q "$work/recipe-remote" 2>/dev/null && fusermount3 -u "$work/recipe-remote"
  "$bin" --config "$config" close demo >/dev/null 2>&1 || true
  "$root/e2e/backup-host.sh" stop "$work"
  rm -rf "$work"
}
trap cleanup EXIT

"$root/e2e/backup-host.sh" start "$work" 2222 >/dev/null
sed -i 's/^size          = "64M"/size          = "160M"/' "$config"
cat >> "$config" <<TOML
[target.demo.copy]
method  = "rsync"
sources = ["$work/src"]
TOML
mkdir -p "$work/src" "$work/recipe-remote" "$work/recipe-mnt"
for i in $(seq 64); do head -c 256K /dev/urandom > "$work/src/base-$i.bin"; done   # 16 MiB that never changes
"$bin" --config "$config" init demo >/dev/null

change_source() {  # tag
  head -c "${change}M" /dev/urandom > "$work/src/changed-$1.bin"
}

recipe() {  # snapshot name
  sshfs -p 2222 -o "IdentityFile=$work/ssh/client_ed25519,UserKnownHostsFile=$work/ssh/known_hosts,StrictHostKeyChecking=yes" \
    "root@127.0.0.1:$work/storage" "$work/recipe-remote"
  cryptsetup open --key-file "$work/keys/demo.key" "$work/recipe-remote/demo.img" bench-recipe
  mount /dev/mapper/bench-recipe "$work/recipe-mnt"
  local previous
  previous=$(ls "$work/recipe-mnt/snapshots" | grep -v -e latest -e '^\.' | sort | tail -1)
  rsync -aHAX --numeric-ids --delete --delete-excluded --relative \
    --link-dest="$work/recipe-mnt/snapshots/$previous" "$work/src" "$work/recipe-mnt/snapshots/$1/"
  umount "$work/recipe-mnt"
  cryptsetup close bench-recipe
  fusermount3 -u "$work/recipe-remote"
}

seconds() { date +%s.%N; }
echo "# $(date -u +%F) kernel $(uname -r); imgbackup $(basename "$(dirname "$bin")") build; ${change} MiB changed per run, 16 MiB unchanged"
echo
echo "| round | imgbackup run | recipe | ratio |"
echo "| --- | --- | --- | --- |"
"$bin" --config "$config" run demo --now 2026-01-01T00:00:00Z >/dev/null   # the first, full copy: not measured
total_ratio=0
for round in $(seq "$rounds"); do
  change_source "run-$round"
  start=$(seconds)
  "$bin" --config "$config" run demo --now "2026-01-0$((round + 1))T00:00:00Z" >/dev/null
  run_time=$(awk -v a="$(seconds)" -v b="$start" 'BEGIN { print a - b }')
  change_source "recipe-$round"
  start=$(seconds)
  recipe "2026-01-0$((round + 1))T120000Z"
  recipe_time=$(awk -v a="$(seconds)" -v b="$start" 'BEGIN { print a - b }')
  ratio=$(awk -v a="$run_time" -v b="$recipe_time" 'BEGIN { printf "%.3f", a / b }')
  total_ratio=$(awk -v a="$total_ratio" -v b="$ratio" 'BEGIN { print a + b }')
  printf '| %s | %.1f s | %.1f s | %.2f |\n' "$round" "$run_time" "$recipe_time" "$ratio"
done
printf '\nmean ratio (imgbackup run / recipe): %.2f\n' "$(awk -v a="$total_ratio" -v n="$rounds" 'BEGIN { print a / n }')"
