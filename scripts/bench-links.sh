#!/usr/bin/env bash
# Backups over a slow, distant link: the same source and the same change set
# through `imgbackup run` (sshfs and NBD), the shell recipe it replaces,
# borg over ssh, restic over sftp, and plain rsync over ssh (unencrypted: the
# ceiling). The link is netem on loopback, inside the VM:
#
#   e2e/in-real-kernel.sh scripts/bench-links.sh [PROFILE...]
#
# PROFILE is RTT:RATE (default "20ms:16mbit 100ms:100mbit"). For each: a
# first run of every tool over the link, then the change set (40 files
# edited, 2 MiB added, 10 removed), then an incremental run of every tool.
# Reported: wall time, and bytes on the wire (the loopback interface's
# transmitted bytes: both directions, headers included), plus what imgbackup
# itself counted on its connections. Then the cost of `open` next to one ssh
# login and reading the header's first MiB over the same link.
#
# "run borg" is `imgbackup run` with the borg copy method (a borg repository
# inside the image) over sshfs: the copy method that writes least to the
# image for a change like this one.
#
# The images are 1 GiB: below 512 MiB mkfs.ext4 takes 1 KiB blocks, and
# users' images (0.5-4 TiB) have 4 KiB ones.
#
# IMGBACKUP_BIN_BEFORE=PATH adds "run sshfs (before)": another imgbackup
# binary (an earlier commit) on its own image, for a side-by-side comparison.
# Needs restic (apt-get install restic; `make bench-links` installs it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${IMGBACKUP_BIN:-$root/.build/release/imgbackup}
[ -x "$bin" ] || bin=$root/.build/debug/imgbackup
profiles=("$@")
[ ${#profiles[@]} -gt 0 ] || profiles=(20ms:16mbit 100ms:100mbit)
command -v restic >/dev/null || { echo "bench-links: restic is not installed (apt-get install restic)" >&2; exit 1; }

work=$(mktemp -d /tmp/imgbackup-bench-links.XXXXXX)
config=$work/imgbackup.toml
export IMGBACKUP_RUNTIME_DIR=$work/run IMGBACKUP_STATE_DIR=$work/state
ssh_opts="-p 2222 -i $work/ssh/client_ed25519 -o IdentitiesOnly=yes -o UserKnownHostsFile=$work/ssh/known_hosts -o StrictHostKeyChecking=yes"
export BORG_BASE_DIR=$work/borg-base BORG_PASSPHRASE=bench BORG_RSH="ssh $ssh_opts"
export BORG_REMOTE_PATH="env BORG_BASE_DIR=$work/borg-remote-base borg" RESTIC_PASSWORD=bench
export RESTIC_CACHE_DIR=$work/restic-cache

cleanup() {
  tc qdisc del dev lo root 2>/dev/null || true
  mountpoint -q "$work/recipe-mnt" 2>/dev/null && umount "$work/recipe-mnt"
  [ -e /dev/mapper/bench-recipe ] && cryptsetup close bench-recipe
  mountpoint -q "$work/recipe-remote" 2>/dev/null && fusermount3 -u "$work/recipe-remote"
  for target in sshfs nbd borgmethod; do "$bin" --config "$config" close "$target" >/dev/null 2>&1 || true; done
  [ -n "${before:-}" ] && "$before" --config "$work/before.toml" close before >/dev/null 2>&1 || true
  "$root/e2e/backup-host.sh" stop "$work"
  rm -rf "$work"
}
trap cleanup EXIT

"$root/e2e/backup-host.sh" start "$work" 2222 >/dev/null
: > "$config"   # the bench writes its own targets
storage=$work/storage
before=${IMGBACKUP_BIN_BEFORE:-}
targets=(sshfs nbd borgmethod recipe)
[ -n "$before" ] && targets+=(before)
targets+=(capped)
for target in "${targets[@]}"; do
  transport=sshfs limit=""
  [ "$target" = nbd ] && transport=nbd
  [ "$target" = capped ] && limit='bandwidth_limit = "512K"'
  file=$config
  [ "$target" = before ] && file=$work/before.toml  # an earlier binary may not know every key
  cat >> "$file" <<TOML
[target.$target]
remote        = "root@127.0.0.1:$storage"
port          = 2222
identity_file = "$work/ssh/client_ed25519"
ssh_options   = ["UserKnownHostsFile=$work/ssh/known_hosts", "StrictHostKeyChecking=yes"]
image         = "$target.img"
size          = "1G"
transport     = "$transport"
key_file      = "$work/keys/demo.key"
mount_point   = "$work/mnt/$target"
$limit
[target.$target.luks]
pbkdf            = "pbkdf2"
pbkdf_iterations = 1000
[target.$target.timeouts]
stall    = "300s"
teardown = "120s"
[target.$target.copy]
method  = "$([ "$target" = borgmethod ] && echo borg || echo rsync)"
sources = ["$work/src"]
TOML
  [ "$transport" = nbd ] && cat >> "$file" <<TOML
[target.$target.nbd]
command = ["nbdkit", "--single", "--exit-with-parent", "file", "$storage/$target.img"]
TOML
done

# The source: 1,400 small files and 20 larger ones, 27 MiB of random bytes;
# then the change set applied to a copy.
mkdir -p "$work/recipe-remote" "$work/recipe-mnt" "$storage/plain"
/usr/bin/python3 "$root/scripts/bench-source.py" "$work/src-first" "$work/src-second"

"$bin" --config "$config" init sshfs >/dev/null
"$bin" --config "$config" init nbd >/dev/null
"$bin" --config "$config" init borgmethod >/dev/null
"$bin" --config "$config" init recipe >/dev/null
"$bin" --config "$config" init capped >/dev/null
[ -n "$before" ] && "$before" --config "$work/before.toml" init before >/dev/null
# borg and restic start each profile from a new repository (a kept one
# would deduplicate the next profile's first run against the last one's).
new_repositories() {
  rm -rf "$storage/borg" "$storage/restic" "$work/borg-base" "$work/borg-remote-base" "$work/restic-cache"
  borg init --warning -e repokey "ssh://root@127.0.0.1:2222$storage/borg" >/dev/null 2>&1
  restic -q -r "sftp:root@127.0.0.1:$storage/restic" -o sftp.command="ssh $ssh_opts root@127.0.0.1 -s sftp" init >/dev/null
}

recipe() {  # snapshot name
  sshfs -p 2222 -o "IdentityFile=$work/ssh/client_ed25519,UserKnownHostsFile=$work/ssh/known_hosts,StrictHostKeyChecking=yes" \
    "root@127.0.0.1:$storage" "$work/recipe-remote"
  cryptsetup open --key-file "$work/keys/demo.key" "$work/recipe-remote/recipe.img" bench-recipe
  mount /dev/mapper/bench-recipe "$work/recipe-mnt"
  mkdir -p "$work/recipe-mnt/snapshots"
  local previous link=()
  previous=$(ls "$work/recipe-mnt/snapshots" | sort | tail -1)
  [ -n "$previous" ] && link=(--link-dest="$work/recipe-mnt/snapshots/$previous")
  rsync -aHAX --numeric-ids --delete --relative "${link[@]}" "$work/src" "$work/recipe-mnt/snapshots/$1/"
  umount "$work/recipe-mnt"
  cryptsetup close bench-recipe
  fusermount3 -u "$work/recipe-remote"
}

backup() {  # tool, pass (first|second)
  case "$1" in
    "run sshfs") "$bin" --config "$config" run sshfs >/dev/null ;;
    "run NBD") "$bin" --config "$config" run nbd >/dev/null ;;
    "run borg") "$bin" --config "$config" run borgmethod >/dev/null ;;
    "run sshfs (before)") "$before" --config "$work/before.toml" run before >/dev/null ;;
    recipe) recipe "$2" ;;
    borg) borg create --warning --compression lz4 "ssh://root@127.0.0.1:2222$storage/borg::$2" "$work/src" ;;
    restic) restic -q -r "sftp:root@127.0.0.1:$storage/restic" -o sftp.command="ssh $ssh_opts root@127.0.0.1 -s sftp" \
      backup "$work/src" >/dev/null ;;
    rsync) rsync -aH --delete -e "ssh $ssh_opts" "$work/src/" "root@127.0.0.1:$storage/plain/" ;;
  esac
}

lo_bytes() { cat /sys/class/net/lo/statistics/tx_bytes; }
now() { date +%s.%N; }
wire_of_last_run() {  # target: what imgbackup counted on its own connections
  tail -n 1 "$IMGBACKUP_STATE_DIR/$1/runs.jsonl" | python3 -c 'import json, sys; r = json.load(sys.stdin); print(r.get("wireBytesSent", 0) + r.get("wireBytesReceived", 0))'
}

tools=("run sshfs" "run NBD" "run borg" recipe borg restic rsync)
[ -n "$before" ] && tools=("run sshfs" "run sshfs (before)" "run NBD" "run borg" recipe borg restic rsync)
seconds_of() {  # command...: wall time, and the loopback bytes it moved
  local bytes start
  bytes=$(lo_bytes) start=$(now)
  "$@" >/dev/null
  echo "$(awk -v a="$(now)" -v b="$start" 'BEGIN { printf "%.1f s", a - b }'), $(awk -v b="$(( $(lo_bytes) - bytes ))" 'BEGIN { printf "%.2f MiB", b / 1048576 }')"
}
echo "# $(date -u +%F) kernel $(uname -r); imgbackup $(basename "$(dirname "$bin")") build"
echo "# source $(du -sb "$work/src-first" | cut -f1) bytes in $(find "$work/src-first" -type f | wc -l) files; change set: 40 edited (4 KiB each), 2 MiB added, 10 removed"
for profile in "${profiles[@]}"; do
  rtt=${profile%%:*} rate=${profile##*:}
  half=$(( ${rtt%ms} / 2 ))
  tc qdisc del dev lo root 2>/dev/null || true
  new_repositories
  tc qdisc add dev lo root netem delay "${half}ms" rate "$rate" limit 100000
  echo
  echo "## $rtt RTT, $rate"
  echo
  echo "| tool | first run | bytes on the wire | incremental run | bytes on the wire | imgbackup counted |"
  echo "| --- | --- | --- | --- | --- | --- |"
  for tool in "${tools[@]}"; do
    row="| $tool"
    counted=""
    for pass in first second; do
      rsync -a --delete "$work/src-$pass/" "$work/src/"
      sync
      bytes=$(lo_bytes) start=$(now)
      backup "$tool" "$profile-$pass"
      seconds=$(awk -v a="$(now)" -v b="$start" 'BEGIN { printf "%.1f", a - b }')
      moved=$(( $(lo_bytes) - bytes ))
      row="$row | $seconds s | $(awk -v b="$moved" 'BEGIN { printf "%.1f MiB", b / 1048576 }')"
      case "$tool" in
        "run sshfs") counted=$(awk -v b="$(wire_of_last_run sshfs)" 'BEGIN { printf "%.1f MiB", b / 1048576 }') ;;
        "run NBD") counted=$(awk -v b="$(wire_of_last_run nbd)" 'BEGIN { printf "%.1f MiB", b / 1048576 }') ;;
        "run borg") counted=$(awk -v b="$(wire_of_last_run borgmethod)" 'BEGIN { printf "%.1f MiB", b / 1048576 }') ;;
      esac
    done
    echo "$row | ${counted:--} |"
  done
  echo
  echo "| step | time, bytes on the wire |"
  echo "| --- | --- |"
  echo "| ssh login (\`ssh HOST true\`) | $(seconds_of ssh $ssh_opts root@127.0.0.1 true) |"
  echo "| ssh login and reading the image's first MiB | $(seconds_of ssh $ssh_opts root@127.0.0.1 "head -c 1048576 $storage/sshfs.img") |"
  echo "| \`imgbackup open\` (sshfs) | $(seconds_of "$bin" --config "$config" open sshfs) |"
  echo "| \`imgbackup close\` (sshfs) | $(seconds_of "$bin" --config "$config" close sshfs) |"
  "$bin" --config "$config" open capped >/dev/null
  bytes=$(lo_bytes) start=$(now)
  dd if=/dev/urandom of="$work/mnt/capped/capped.bin" bs=1M count=8 conv=fsync status=none
  seconds=$(awk -v a="$(now)" -v b="$start" 'BEGIN { printf "%.1f", a - b }')
  moved=$(( $(lo_bytes) - bytes ))
  rm "$work/mnt/capped/capped.bin"
  "$bin" --config "$config" close capped >/dev/null
  echo "| 8 MiB written (dd conv=fsync) under \`bandwidth_limit = \"512K\"\` | $seconds s, $(awk -v b="$moved" 'BEGIN { printf "%.2f MiB", b / 1048576 }'): $(awk -v b="$moved" -v t="$seconds" 'BEGIN { printf "%.0f KiB/s", b / 1024 / t }') |"
  if [ -n "$before" ]; then
    echo "| \`imgbackup open\` (sshfs, before) | $(seconds_of "$before" --config "$work/before.toml" open before) |"
    "$before" --config "$work/before.toml" close before >/dev/null
  fi
  # The next profile starts from empty backups again.
  tc qdisc del dev lo root
  "$bin" --config "$config" open sshfs >/dev/null && rm -rf "$work/mnt/sshfs/snapshots" && "$bin" --config "$config" close sshfs >/dev/null
  "$bin" --config "$config" open nbd >/dev/null && rm -rf "$work/mnt/nbd/snapshots" && "$bin" --config "$config" close nbd >/dev/null
  "$bin" --config "$config" open borgmethod >/dev/null && rm -rf "$work/mnt/borgmethod/borg" && "$bin" --config "$config" close borgmethod >/dev/null
  rm -rf "$IMGBACKUP_STATE_DIR/borgmethod/borg"  # its files cache: the next profile's first run starts cold too
  if [ -n "$before" ]; then
    "$before" --config "$work/before.toml" open before >/dev/null && rm -rf "$work/mnt/before/snapshots" && "$before" --config "$work/before.toml" close before >/dev/null
  fi
  rm -rf "$storage/plain" && mkdir -p "$storage/plain"
  recipe_reset=$(mktemp -d)
  sshfs -p 2222 -o "IdentityFile=$work/ssh/client_ed25519,UserKnownHostsFile=$work/ssh/known_hosts" "root@127.0.0.1:$storage" "$recipe_reset"
  cryptsetup open --key-file "$work/keys/demo.key" "$recipe_reset/recipe.img" bench-recipe
  mount /dev/mapper/bench-recipe "$work/recipe-mnt" && rm -rf "$work/recipe-mnt/snapshots" && umount "$work/recipe-mnt"
  cryptsetup close bench-recipe && fusermount3 -u "$recipe_reset" && rmdir "$recipe_reset"
done
