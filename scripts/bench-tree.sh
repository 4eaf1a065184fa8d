#!/usr/bin/env bash
# An incremental rsync run of a tree with many directories over a slow,
# distant link: rsync looks up every file of the previous snapshot, and
# every directory block it has not read yet costs a round trip. The source:
# 40 x 50 directories of 4 files (512 bytes each); before each run 10 files
# grow by a line. The link is netem on the VM's loopback, as in
# bench-links.sh:
#
#   e2e/in-real-kernel.sh scripts/bench-tree.sh [RTT:RATE]     (default 20ms:16mbit)
#
# IMGBACKUP_BIN_BEFORE=PATH runs another imgbackup binary (an earlier
# commit) on the same target, interleaved with IMGBACKUP_BIN (before, after,
# after, before, ...), so both meet the same change and the same machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${IMGBACKUP_BIN:-$root/.build/release/imgbackup}
[ -x "$bin" ] || bin=$root/.build/debug/imgbackup
before=${IMGBACKUP_BIN_BEFORE:-}
profile=${1:-20ms:16mbit}
rounds=${IMGBACKUP_BENCH_ROUNDS:-2}
rtt=${profile%%:*} rate=${profile##*:}

work=$(mktemp -d /tmp/imgbackup-bench-tree.XXXXXX)
export IMGBACKUP_RUNTIME_DIR=$work/run IMGBACKUP_STATE_DIR=$work/state
cleanup() {
  tc qdisc del dev lo root 2>/dev/null || true
  "$bin" --config "$work/imgbackup.toml" close tree >/dev/null 2>&1 || true
  "$root/e2e/backup-host.sh" stop "$work"
  rm -rf "$work"
}
trap cleanup EXIT
"$root/e2e/backup-host.sh" start "$work" 2222 >/dev/null
cat > "$work/imgbackup.toml" <<TOML
[target.tree]
remote        = "root@127.0.0.1:$work/storage"
port          = 2222
identity_file = "$work/ssh/client_ed25519"
ssh_options   = ["UserKnownHostsFile=$work/ssh/known_hosts", "StrictHostKeyChecking=yes"]
image         = "tree.img"
size          = "1G"
key_file      = "$work/keys/demo.key"
mount_point   = "$work/mnt/tree"
[target.tree.luks]
pbkdf            = "pbkdf2"
pbkdf_iterations = 1000
[target.tree.copy]
method  = "rsync"
sources = ["$work/src"]
TOML
/usr/bin/python3 - "$work/src" <<'PY'
import os, sys
for top in range(40):
    for sub in range(50):
        directory = f"{sys.argv[1]}/{top:02d}/{sub:02d}"
        os.makedirs(directory)
        for name in range(4):
            with open(f"{directory}/{name}", "wb") as out:
                out.write(os.urandom(512))
PY
"$bin" --config "$work/imgbackup.toml" init tree >/dev/null
"$bin" --config "$work/imgbackup.toml" run tree >/dev/null

echo "# $(date -u +%F), $(uname -r); RTT $rtt, $rate; source: $(find "$work/src" -type d | wc -l) directories, $(find "$work/src" -type f | wc -l) files"
echo
echo "| binary | incremental run | written to the image |"
echo "| --- | --- | --- |"
order=(after)
[ -n "$before" ] && order=(before after after before)
run=0
for _ in $(seq "$rounds"); do
  for which in "${order[@]}"; do
    run=$((run + 1))
    for top in 00 04 08 12 16 20 24 28 32 36; do echo "$run" >> "$work/src/$top/07/1"; done
    binary=$bin
    [ "$which" = before ] && binary=$before
    tc qdisc add dev lo root netem delay "$(( ${rtt%ms} / 2 ))ms" rate "$rate" limit 100000
    start=$(date +%s.%N)
    "$binary" --config "$work/imgbackup.toml" run tree > "$work/out" 2>&1 || { cat "$work/out"; exit 1; }
    end=$(date +%s.%N)
    tc qdisc del dev lo root
    written=$(tail -n 1 "$work/out" | sed -n 's/.*, \([0-9.]* [KMG]*i*B\) written to the image.*/\1/p')
    awk -v w="$which" -v s="$start" -v e="$end" -v b="$written" 'BEGIN { printf "| %s | %.1f s | %s |\n", w, e - s, b }'
  done
done
