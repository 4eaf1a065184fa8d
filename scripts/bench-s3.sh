#!/usr/bin/env bash
# An image in an S3 bucket against the same run over sshfs and NBD, and
# against restic's S3 backend, on the same source, change set and link
# (the S3 server is rclone's, on loopback, its objects files we can count):
#
#   e2e/in-real-kernel.sh scripts/bench-s3.sh [PROFILE...]
#
# PROFILE is "loopback" or RTT:RATE for netem on the VM's loopback
# (default "loopback 20ms:16mbit"). The s3 targets are made with each
# object size of IMGBACKUP_BENCH_S3_SIZES (default "256K 1M 4M"), to choose
# the default. For each profile and tool: a first run, then the change set
# (40 files edited, 2 MiB added, 10 removed), then an incremental run.
# Reported: wall time, the objects and bytes the bucket holds afterwards
# (the backup host's allocated bytes for sshfs and NBD), and the requests
# the S3 server answered during the run.
# Then trim: the older backup point is removed (what retention does) and
# `imgbackup trim` gives its blocks back (NBD and s3: sshfs cannot discard);
# reported is what trim says it gave back, and the bucket before and after.
# Needs restic (apt-get install restic; `make bench-s3` installs it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${IMGBACKUP_BIN:-$root/.build/release/imgbackup}
[ -x "$bin" ] || bin=$root/.build/debug/imgbackup
profiles=("$@")
[ ${#profiles[@]} -gt 0 ] || profiles=(loopback 20ms:16mbit)
command -v restic >/dev/null || { echo "bench-s3: restic is not installed (apt-get install restic)" >&2; exit 1; }
rclone=/opt/imgbackup-rclone/bin/rclone
[ -x "$rclone" ] || { echo "bench-s3: $rclone is missing (scripts/install-deps.sh)" >&2; exit 1; }

work=$(mktemp -d /tmp/imgbackup-bench-s3.XXXXXX)
config=$work/imgbackup.toml
export IMGBACKUP_RUNTIME_DIR=$work/run IMGBACKUP_STATE_DIR=$work/state
storage=$work/storage
s3data=$work/s3data
access=AKIDBENCH secret=bench-secret port=9401
export AWS_ACCESS_KEY_ID=$access AWS_SECRET_ACCESS_KEY=$secret RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$work/restic-cache
targets=(sshfs nbd)
for size in ${IMGBACKUP_BENCH_S3_SIZES:-256K 1M 4M}; do targets+=("s3-$size"); done

cleanup() {
  tc qdisc del dev lo root 2>/dev/null || true
  for target in "${targets[@]}"; do "$bin" --config "$config" close "$target" >/dev/null 2>&1 || true; done
  [ -n "${server:-}" ] && kill "$server" 2>/dev/null
  "$root/e2e/backup-host.sh" stop "$work"
  rm -rf "$work"
}
trap cleanup EXIT

"$root/e2e/backup-host.sh" start "$work" 2222 >/dev/null
: > "$config"
mkdir -p "$s3data/bench"
"$rclone" serve s3 -vv --auth-key "$access,$secret" --addr "127.0.0.1:$port" --config /dev/null "$s3data" \
  > "$work/rclone.log" 2>&1 &
server=$!
printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$access" "$secret" > "$work/keys/s3"
chmod 600 "$work/keys/s3"
for target in "${targets[@]}"; do
  case "$target" in
    s3-*) cat >> "$config" <<TOML
[target.$target]
transport   = "s3"
size        = "256M"
key_file    = "$work/keys/demo.key"
mount_point = "$work/mnt/$target"
[target.$target.s3]
endpoint         = "http://127.0.0.1:$port"
bucket           = "bench"
prefix           = "$target"
object_size      = "${target#s3-}"
credentials_file = "$work/keys/s3"
TOML
    ;;
    *) cat >> "$config" <<TOML
[target.$target]
remote        = "root@127.0.0.1:$storage"
port          = 2222
identity_file = "$work/ssh/client_ed25519"
ssh_options   = ["UserKnownHostsFile=$work/ssh/known_hosts", "StrictHostKeyChecking=yes"]
image         = "$target.img"
size          = "256M"
transport     = "$target"
key_file      = "$work/keys/demo.key"
mount_point   = "$work/mnt/$target"
TOML
      [ "$target" = nbd ] && cat >> "$config" <<TOML
[target.$target.nbd]
command = ["nbdkit", "--single", "--exit-with-parent", "file", "$storage/$target.img"]
TOML
    ;;
  esac
  cat >> "$config" <<TOML
[target.$target.luks]
pbkdf            = "pbkdf2"
pbkdf_iterations = 1000
[target.$target.timeouts]
stall    = "300s"
teardown = "120s"
[target.$target.copy]
method  = "rsync"
sources = ["$work/src"]
TOML
done

# The source and the change set of bench-links.sh: 1,400 small files and 20
# larger ones, 27 MiB of random bytes.
/usr/bin/python3 "$root/scripts/bench-source.py" "$work/src-first" "$work/src-second"

srv() {  # rclone's own S3 client, against the server
  RCLONE_CONFIG_SRV_TYPE=s3 RCLONE_CONFIG_SRV_PROVIDER=Other RCLONE_CONFIG_SRV_ENDPOINT="http://127.0.0.1:$port" \
    RCLONE_CONFIG_SRV_ACCESS_KEY_ID=$access RCLONE_CONFIG_SRV_SECRET_ACCESS_KEY=$secret "$rclone" --config /dev/null "$@"
}
requests() { grep -cE 'serve s3: (GET|HEAD|PUT|POST|DELETE|LIST|COPY|CREATE)' "$work/rclone.log" || true; }
now() { date +%s.%N; }
lo_bytes() { cat /sys/class/net/lo/statistics/tx_bytes; }
stored() {  # tool: "objects bytes" the bucket holds (allocated bytes of the image file for sshfs and NBD)
  case "$1" in
    s3-*) find "$s3data/bench/$1" -type f -printf '%s\n' 2>/dev/null | awk '{ n++; b += $1 } END { printf "%d %d\n", n, b }' ;;
    restic) find "$s3data/bench/restic" -type f -printf '%s\n' | awk '{ n++; b += $1 } END { printf "%d %d\n", n, b }' ;;
    *) echo "- $(( $(stat -c %b "$storage/$1.img") * 512 ))" ;;
  esac
}
backup() {  # tool
  case "$1" in
    restic) restic -q -r "s3:http://127.0.0.1:$port/bench/restic" backup "$work/src" >/dev/null ;;
    *) "$bin" --config "$config" run "$1" >/dev/null ;;
  esac
}
new_images() {
  for target in "${targets[@]}"; do
    "$bin" --config "$config" close "$target" >/dev/null 2>&1 || true
    rm -rf "$storage/$target.img" "$IMGBACKUP_STATE_DIR/$target"
    # Through the S3 API: the server caches listings, and would not see files removed behind its back.
    srv purge "srv:bench/$target" 2>/dev/null || true
    srv delete "srv:bench" --include "/$target.*" 2>/dev/null || true
    "$bin" --config "$config" init "$target" >/dev/null
  done
  srv purge "srv:bench/restic" 2>/dev/null || true
  rm -rf "$work/restic-cache"
  restic -q -r "s3:http://127.0.0.1:$port/bench/restic" init >/dev/null
}

echo "# $(date -u +%F) kernel $(uname -r); imgbackup $(basename "$(dirname "$bin")") build; restic $(restic version | awk '{ print $2 }'); S3 server rclone $("$rclone" version | awk 'NR == 1 { print $2 }') on loopback"
echo "# source: 1,420 files, 27 MiB; change set: 40 files edited (4 KiB each), 10 removed, 2 MiB added"
for profile in "${profiles[@]}"; do
  tc qdisc del dev lo root 2>/dev/null || true
  new_images
  if [ "$profile" != loopback ]; then
    # Loopback carries both directions: half the round trip each way.
    rtt=${profile%%:*}
    tc qdisc add dev lo root netem delay "$(( ${rtt%ms} / 2 ))ms" rate "${profile#*:}" limit 100000
  fi
  echo
  echo "## $profile"
  echo
  echo "| tool | pass | time | bytes on the wire | objects | bytes stored | S3 requests |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  for pass in first incremental; do
    rm -rf "$work/src"
    if [ "$pass" = first ]; then cp -a "$work/src-first" "$work/src"; else cp -a "$work/src-second" "$work/src"; fi
    for tool in "${targets[@]}" restic; do
      before=$(requests)
      wire=$(lo_bytes)
      start=$(now)
      backup "$tool"
      seconds=$(awk -v a="$(now)" -v b="$start" 'BEGIN { printf "%.1f", a - b }')
      wire=$(( $(lo_bytes) - wire ))
      read -r objects bytes <<< "$(stored "$tool")"
      made=$(( $(requests) - before ))
      [ "${tool%%-*}" = s3 ] || [ "$tool" = restic ] || made=-
      printf '| %s | %s | %s s | %s | %s | %s | %s |\n' "$tool" "$pass" "$seconds" \
        "$(awk -v b="$wire" 'BEGIN { printf "%.1f MiB", b / 1048576 }')" "$objects" \
        "$(awk -v b="$bytes" 'BEGIN { printf "%.1f MiB", b / 1048576 }')" "$made"
    done
  done

  echo
  echo "| target | trim | given back (trim's line) | objects before / after | bytes stored before / after | S3 requests |"
  echo "| --- | --- | --- | --- | --- | --- |"
  for target in "${targets[@]}"; do
    [ "$target" = sshfs ] && continue
    mount=$("$bin" --config "$config" open "$target")
    oldest=$(find "$mount/snapshots" -mindepth 1 -maxdepth 1 -name '2*' | sort | head -n 1)
    rm -rf "$oldest"
    "$bin" --config "$config" close "$target" >/dev/null
    read -r objects_before bytes_before <<< "$(stored "$target")"
    before=$(requests)
    start=$(now)
    given=$("$bin" --config "$config" trim "$target" | awk -F': ' '$1 == "given back" { print $2 }')
    seconds=$(awk -v a="$(now)" -v b="$start" 'BEGIN { printf "%.1f", a - b }')
    read -r objects_after bytes_after <<< "$(stored "$target")"
    made=$(( $(requests) - before ))
    [ "${target%%-*}" = s3 ] || made=-
    printf '| %s | %s s | %s | %s / %s | %s / %s | %s |\n' "$target" "$seconds" "${given:-none}" \
      "$objects_before" "$objects_after" \
      "$(awk -v b="$bytes_before" 'BEGIN { printf "%.1f MiB", b / 1048576 }')" \
      "$(awk -v b="$bytes_after" 'BEGIN { printf "%.1f MiB", b / 1048576 }')" "$made"
  done
done
