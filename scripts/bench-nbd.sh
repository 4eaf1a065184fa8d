#!/usr/bin/env bash
# NBD bridge throughput vs nbdfuse, on the host (FUSE works here; no dm-crypt
# needed). One nbdkit file server on a unix socket; sequential dd, 1 MiB
# blocks, O_DIRECT, through each client's FUSE file. Then the same with
# nbdkit's delay filter adding 20 ms per request, against the bridge and the
# bridge limited to one request in flight (--threads 1).
#
#   [RUNS=N] scripts/bench-nbd.sh [SIZE_MIB] [DELAYED_SIZE_MIB]    (default 2 runs, 512 and 128)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${IMGBACKUP_BIN:-$root/.build/release/imgbackup}
size=${1:-512}
delayed_size=${2:-128}
work=$(mktemp -d /var/tmp/imgbackup-bench.XXXXXX)   # on disk, not tmpfs
export IMGBACKUP_RUNTIME_DIR=$work/run IMGBACKUP_STATE_DIR=$work/state

cleanup() {
  for m in "$work"/mnt-*; do mountpoint -q "$m" 2>/dev/null && fusermount3 -u "$m" || true; done
  [ -f "$work/nbdkit.pid" ] && kill "$(cat "$work/nbdkit.pid")" 2>/dev/null || true
  sleep 0.5; rm -rf "$work"
}
trap cleanup EXIT

start_nbdkit() {  # [--filter=NAME] [filter parameters...]
  [ -f "$work/nbdkit.pid" ] && { kill "$(cat "$work/nbdkit.pid")" 2>/dev/null || true; sleep 0.5; }
  rm -f "$work/sock" "$work/nbdkit.pid"
  local filter=()
  if [ "${1:-}" != "" ] && [ "${1#--filter=}" != "$1" ]; then filter=("$1"); shift; fi
  # nbdkit [OPTIONS] PLUGIN [PARAMETERS]: the filter's parameters follow the plugin's.
  nbdkit --unix "$work/sock" --pidfile "$work/nbdkit.pid" "${filter[@]}" file "$work/export.img" "$@"
  for _ in $(seq 50); do [ -S "$work/sock" ] && return; sleep 0.1; done
}

cat > "$work/bench.toml" <<TOML
[target.bench]
remote = "localhost:/unused"
key_file = "/unused"
transport = "nbd"
[target.bench.nbd]
uri = "nbd+unix:///?socket=$work/sock"
TOML

mount_bridge() {  # mountpoint [threads]
  mkdir -p "$1"
  "$bin" --config "$work/bench.toml" nbd-bridge bench --mount "$1" --threads "${2:-16}" &
  for _ in $(seq 100); do mountpoint -q "$1" && return; sleep 0.1; done
  echo "bridge did not mount" >&2; exit 1
}

mount_nbdfuse() {  # mountpoint
  mkdir -p "$1"
  nbdfuse "$1/image" --unix "$work/sock" &
  for _ in $(seq 100); do [ -e "$1/image" ] && mountpoint -q "$1" && return; sleep 0.1; done
  echo "nbdfuse did not mount" >&2; exit 1
}

rate() {  # dd's MB/s figure
  awk '/copied/ { for (i = 1; i <= NF; i++) if ($i ~ /^[kMG]?B\/s$/) { v = $(i-1); u = $i } }
       END { if (u == "GB/s") v *= 1000; if (u == "kB/s") v /= 1000; print v }'
}

measure() {  # label file mib
  local write read
  write=$(dd if=/dev/zero of="$2" bs=1M count="$3" oflag=direct conv=notrunc,fdatasync 2>&1 | rate)
  read=$(dd if="$2" of=/dev/null bs=1M count="$3" iflag=direct 2>&1 | rate)
  printf '| %s | %s | %s |\n' "$1" "$write" "$read"
}

# Allocated up front: otherwise whichever client writes first pays for the
# server's filesystem allocating blocks, and the alternation is biased.
fallocate -l "${size}M" "$work/export.img"
echo "# $(date -u +%F) $(uname -r), $(nproc) cores; nbdkit $(nbdkit --version | awk '{print $2}'), $(nbdfuse --version 2>&1 | head -1)"
echo
echo "## no added latency, ${size} MiB, dd bs=1M direct"
echo "| client | write MB/s | read MB/s |"
echo "| --- | --- | --- |"
start_nbdkit
# Unreported warm-up pass: the first writer after the server starts pays for
# cold caches, and would bias whichever client goes first.
mount_bridge "$work/mnt-bridge"; measure warm-up "$work/mnt-bridge/image" "$size" >/dev/null; fusermount3 -u "$work/mnt-bridge"; sleep 0.5
for run in $(seq "${RUNS:-2}"); do
  mount_bridge "$work/mnt-bridge"; measure "imgbackup bridge (run $run)" "$work/mnt-bridge/image" "$size"; fusermount3 -u "$work/mnt-bridge"; sleep 0.5
  mount_nbdfuse "$work/mnt-nbdfuse"; measure "nbdfuse (run $run)" "$work/mnt-nbdfuse/image" "$size"; fusermount3 -u "$work/mnt-nbdfuse"; sleep 0.5
done

echo
echo "## 20 ms added per request (nbdkit --filter=delay), ${delayed_size} MiB"
echo "| client | write MB/s | read MB/s |"
echo "| --- | --- | --- |"
start_nbdkit --filter=delay delay-read=20ms delay-write=20ms
mount_bridge "$work/mnt-bridge"; measure "imgbackup bridge, 16 in flight" "$work/mnt-bridge/image" "$delayed_size"; fusermount3 -u "$work/mnt-bridge"; sleep 0.5
mount_bridge "$work/mnt-one" 1; measure "imgbackup bridge, 1 in flight" "$work/mnt-one/image" "$delayed_size"; fusermount3 -u "$work/mnt-one"; sleep 0.5
mount_nbdfuse "$work/mnt-nbdfuse"; measure "nbdfuse" "$work/mnt-nbdfuse/image" "$delayed_size"; fusermount3 -u "$work/mnt-nbdfuse"
