#!/usr/bin/env bash
# The restore day: how long until the first file is back, for a small image
# with one backup point and a large image with many. Both targets get the
# same source (FILES small files); the large one is a 1 TiB sparse image
# with POINTS rsync snapshots of it. Measured, each five times, alternating
# (the median, then every value):
# `imgbackup list`, and `imgbackup restore` of one file from the oldest point
# (a read-only open, one rsync, the close: the first file is back when the
# command returns). Needs a kernel with dm-crypt:
#
#   e2e/in-real-kernel.sh scripts/bench-restore.sh [POINTS] [FILES]   (default 12 and 10000)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${IMGBACKUP_BIN:-$root/.build/release/imgbackup}
[ -x "$bin" ] || bin=$root/.build/debug/imgbackup
points=${1:-12}
files=${2:-10000}
work=$(mktemp -d /tmp/imgbackup-bench-restore.XXXXXX)
config=$work/imgbackup.toml
export IMGBACKUP_RUNTIME_DIR=$work/run IMGBACKUP_STATE_DIR=$work/state

cleanup() {
  for target in small large; do "$bin" --config "$config" close "$target" >/dev/null 2>&1 || true; done
  "$root/e2e/backup-host.sh" stop "$work"
  rm -rf "$work"
}
trap cleanup EXIT

"$root/e2e/backup-host.sh" start "$work" 2222 >/dev/null
: > "$config"
for target in small large; do
  size=64M
  [ "$target" = large ] && size=1T
  cat >> "$config" <<TOML
[target.$target]
remote        = "root@127.0.0.1:$work/storage"
port          = 2222
identity_file = "$work/ssh/client_ed25519"
ssh_options   = ["UserKnownHostsFile=$work/ssh/known_hosts", "StrictHostKeyChecking=yes"]
image         = "$target.img"
size          = "$size"
key_file      = "$work/keys/demo.key"
mount_point   = "$work/mnt/$target"
[target.$target.luks]
pbkdf            = "pbkdf2"
pbkdf_iterations = 1000
[target.$target.copy]
method  = "rsync"
sources = ["$work/src"]
TOML
done

mkdir -p "$work/src"
python3 - "$work/src" "$files" <<'PY'
import os, sys
root, count = sys.argv[1], int(sys.argv[2])
for index in range(count):
    directory = os.path.join(root, f"dir{index % 100:03d}")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"file{index:05d}.txt"), "wb") as out:
        out.write(os.urandom(1024))
PY
for target in small large; do "$bin" --config "$config" init "$target" >/dev/null; done
day() { printf '2026-01-%02dT03:00:00Z' "$1"; }
"$bin" --config "$config" run small --now "$(day 1)" >/dev/null
for point in $(seq "$points"); do
  # A few files change between points, as from day to day.
  for index in $(seq 0 9); do head -c 1024 /dev/urandom > "$work/src/dir00$index/file0000$index.txt"; done
  "$bin" --config "$config" run large --now "$(day "$point")" >/dev/null
done

seconds() {  # command...: wall time
  local start
  start=$(date +%s.%N)
  "$@" >/dev/null
  awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { printf "%.1f", a - b }'
}
wanted="$work/src/dir042/file00042.txt"
echo "# $(date -u +%F) kernel $(uname -r); imgbackup $(basename "$(dirname "$bin")") build"
echo "# source: $files files of 1 KiB in 100 directories; large: $points snapshots in a 1 TiB image; small: 1 snapshot in 64 MiB"
echo
echo "| target | image | backup points | \`list\` | \`restore\` of one file from the oldest point |"
echo "| --- | --- | --- | --- | --- |"
declare -A list restore
for round in 1 2 3 4 5; do
  for target in small large; do
    list[$target]+="$(seconds "$bin" --config "$config" list "$target") "
    rm -rf "$work/restored"
    restore[$target]+="$(seconds "$bin" --config "$config" restore "$target" "$(day 1 | tr -d ':')" "$wanted" --to "$work/restored") "
    [ -f "$work/restored$wanted" ] || { echo "bench-restore: $target: the file did not come back" >&2; exit 1; }
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for target in small large; do
  size=64M count=1
  [ "$target" = large ] && size=1T count=$points
  echo "| $target | $size | $count | $(echo "${list[$target]}" | median) s (${list[$target]% }) | $(echo "${restore[$target]}" | median) s (${restore[$target]% }) |"
done
