#!/usr/bin/env bash
# The end-to-end suite split over several real kernels at once: each VM runs
# one shard (whole test files, balanced by their measured times in
# conftest.py), and this waits for all of them. One VM per host core, each
# with one virtual CPU, at most three. Measured on the two-core development
# machine (2026-12-06, the same 12 tests): one VM with two virtual CPUs
# 314 s, with one 302 s; two VMs with two virtual CPUs each 353 s (no
# gain), two VMs with one each 205 s; three VMs with one each 237 s. A
# kernel with device-mapper runs the suite directly, in one piece: shards
# would share its sshd port and device names.
#
#   run-sharded.sh [PYTEST_ARGS...]      IMGBACKUP_E2E_SHARDS=N (default: one per core, 1-3)
#
# IMGBACKUP_E2E_SUITE names another suite script (a wrapper that points
# IMGBACKUP_BIN at another binary, to compare two builds).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
suite=${IMGBACKUP_E2E_SUITE:-$here/run-suite.sh}
shards=${IMGBACKUP_E2E_SHARDS:-$(nproc)}
[ "$shards" -ge 1 ] || shards=1
[ "$shards" -le 3 ] || shards=3
"$here/in-real-kernel.sh" --boots-vm || shards=1
if [ "$shards" = 1 ]; then
  exec "$here/in-real-kernel.sh" "$suite" "$@"
fi
# A single VM keeps in-real-kernel.sh's default; shards get one CPU each.
export IMGBACKUP_VM_CPUS=${IMGBACKUP_VM_CPUS:-1}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
pids=()
tails=()
for shard in $(seq 1 "$shards"); do
  : > "$logs/$shard.log"
  ( "$here/in-real-kernel.sh" "$suite" "--shard=$shard/$shards" "$@" > "$logs/$shard.log" 2>&1;
    echo $? > "$logs/$shard.status" ) &
  pids+=($!)
  # Its lines, labelled, as they come; it stops once the shard has.
  tail -n +1 -F --pid=$! "$logs/$shard.log" 2>/dev/null | sed -u "s|^|[e2e $shard/$shards] |" &
  tails+=($!)
done
wait "${pids[@]}"
wait "${tails[@]}" 2>/dev/null || true
status=0
for shard in $(seq 1 "$shards"); do
  echo "=== e2e shard $shard/$shards: exit $(cat "$logs/$shard.status") ==="
  grep -E "^(PASSED|FAILED|ERROR|SKIPPED) |^=+ .* in [0-9.]+s" "$logs/$shard.log" || true
  [ "$(cat "$logs/$shard.status")" = 0 ] || status=1
done
exit "$status"
