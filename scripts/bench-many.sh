#!/usr/bin/env bash
# Many clients, one backup host: N targets (default 8), each with its own
# user, its own ssh key restricted by the line `imgbackup authorized-keys`
# prints, and its own backup directory, as docs/remote-setup.md recommends.
# Every target runs once alone, one after another, then all at once; every
# run must succeed, and the two totals are reported side by side:
#
#   e2e/in-real-kernel.sh scripts/bench-many.sh [N] [RTT:RATE]
#
# RTT:RATE puts a netem link on loopback (default "20ms:100mbit": the
# backup host's one link, shared by every client). The users exist only in
# the VM's mount namespace (bind-mounted passwd, group and shadow).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${IMGBACKUP_BIN:-$root/.build/release/imgbackup}
[ -x "$bin" ] || bin=$root/.build/debug/imgbackup
count=${1:-8}
profile=${2:-20ms:100mbit}
port=2230

work=$(mktemp -d /tmp/imgbackup-bench-many.XXXXXX)
chmod 755 "$work"
config=$work/imgbackup.toml
export IMGBACKUP_RUNTIME_DIR=$work/run IMGBACKUP_STATE_DIR=$work/state
accounts=$work/etc
mkdir -p "$accounts" "$work/ssh" "$work/keys" "$work/backups"
chmod 700 "$work/keys"

cleanup() {
  tc qdisc del dev lo root 2>/dev/null || true
  for index in $(seq "$count"); do "$bin" --config "$config" close "client$index" >/dev/null 2>&1 || true; done
  [ -s "$work/ssh/sshd.pid" ] && kill "$(cat "$work/ssh/sshd.pid")" 2>/dev/null || true
  for name in passwd group shadow; do umount "/etc/$name" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

for name in passwd group shadow; do cp "/etc/$name" "$accounts/$name"; done
ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/host_ed25519"
: > "$config"
for index in $(seq "$count"); do
  user=imgbclient$index uid=$((64200 + index))
  echo "$user:x:$uid:$uid:imgbackup client $index:/nonexistent:/bin/sh" >> "$accounts/passwd"
  echo "$user:x:$uid:" >> "$accounts/group"
  echo "$user:*:19000:0:99999:7:::" >> "$accounts/shadow"
  mkdir -p "$work/backups/$user" "$work/src/client$index"
  chown "$uid:$uid" "$work/backups/$user"
  ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/client$index"
  head -c 64 /dev/urandom > "$work/keys/client$index.key"
  chmod 600 "$work/keys/client$index.key"
  # Each client's own data: 300 files, 8 MiB of random bytes.
  python3 - "$work/src/client$index" <<'PY'
import os, sys
root = sys.argv[1]
for index in range(300):
    directory = os.path.join(root, f"dir{index % 10}")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"file{index:03d}.dat"), "wb") as out:
        out.write(os.urandom(28 << 10))
PY
  cat >> "$config" <<TOML
[target.client$index]
remote        = "$user@127.0.0.1:$work/backups/$user"
port          = $port
identity_file = "$work/ssh/client$index"
ssh_options   = ["UserKnownHostsFile=$work/ssh/known_hosts", "StrictHostKeyChecking=yes"]
image         = "client$index.img"
size          = "128M"
key_file      = "$work/keys/client$index.key"
mount_point   = "$work/mnt/client$index"
[target.client$index.luks]
pbkdf            = "pbkdf2"
pbkdf_iterations = 1000
[target.client$index.timeouts]
stall    = "300s"
teardown = "120s"
[target.client$index.copy]
method  = "rsync"
sources = ["$work/src/client$index"]
TOML
done
for name in passwd group shadow; do mount --bind "$accounts/$name" "/etc/$name"; done
# Every key may do what its own line allows, in its own directory only.
for index in $(seq "$count"); do "$bin" --config "$config" authorized-keys "client$index"; done > "$work/ssh/authorized_keys"
echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$work/ssh/host_ed25519.pub")" > "$work/ssh/known_hosts"
mkdir -p /run/sshd
/usr/sbin/sshd -f /dev/null -o ListenAddress=127.0.0.1 -o Port=$port -o HostKey="$work/ssh/host_ed25519" \
  -o AuthorizedKeysFile="$work/ssh/authorized_keys" -o PidFile="$work/ssh/sshd.pid" -o UsePAM=yes \
  -o StrictModes=no -o PasswordAuthentication=no -o MaxStartups=64 \
  -o "Subsystem=sftp /usr/lib/openssh/sftp-server" -E "$work/ssh/sshd.log"
for _ in $(seq 50); do [ -s "$work/ssh/sshd.pid" ] && break; sleep 0.1; done

now() { date +%s.%N; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }
for index in $(seq "$count"); do "$bin" --config "$config" init "client$index" >/dev/null; done

rtt=${profile%%:*} rate=${profile##*:}
tc qdisc add dev lo root netem delay "$(( ${rtt%ms} / 2 ))ms" rate "$rate" limit 100000
failed=0
echo "# $(date -u +%F) kernel $(uname -r); $count targets, one user and key each; link $rtt RTT, $rate"
echo
echo "| | first runs (full copy) | second runs (nothing changed) |"
echo "| --- | --- | --- |"
row_one_by_one="| one after another"
row_at_once="| all at once"
# Pass 1 and 3: one after another; pass 2 and 4: all at once. The first
# pair copies everything (each target on its own fresh image for the
# at-once pass), the second pair finds nothing changed.
for pass in full unchanged; do
  start=$(now)
  for index in $(seq "$count"); do
    "$bin" --config "$config" run "client$index" > "$work/run-$index.log" 2>&1 || { failed=1; cat "$work/run-$index.log" >&2; }
  done
  row_one_by_one="$row_one_by_one | $(since "$start") s"
  if [ "$pass" = full ]; then  # the same full copy again: a fresh image for everyone
    tc qdisc del dev lo root
    for index in $(seq "$count"); do
      "$bin" --config "$config" open "client$index" >/dev/null && rm -rf "$work/mnt/client$index/snapshots" \
        && "$bin" --config "$config" close "client$index" >/dev/null
    done
    tc qdisc add dev lo root netem delay "$(( ${rtt%ms} / 2 ))ms" rate "$rate" limit 100000
  fi
  start=$(now)
  pids=()
  for index in $(seq "$count"); do
    "$bin" --config "$config" run "client$index" > "$work/run-$index.log" 2>&1 & pids+=($!)
  done
  for index in $(seq "$count"); do
    wait "${pids[$((index - 1))]}" || { failed=1; echo "client$index failed at once:" >&2; cat "$work/run-$index.log" >&2; }
  done
  row_at_once="$row_at_once | $(since "$start") s"
done
echo "$row_one_by_one |"
echo "$row_at_once |"
echo
if [ "$failed" = 0 ]; then echo "every run of every target succeeded"; else echo "bench-many: some runs failed (above)" >&2; exit 1; fi
