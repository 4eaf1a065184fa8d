#!/usr/bin/env bash
# A throwaway backup host on loopback: a real OpenSSH sshd on 127.0.0.1 with
# its own host key, a client key allowed to log in, a storage directory, and an
# imgbackup config with one target ("demo") pointing at it.
#
#   backup-host.sh start DIR [PORT]   sets it up and starts sshd
#   backup-host.sh stop DIR           stops sshd
#
# Used by `make demo` and by the end-to-end suite.
set -euo pipefail

cmd=${1:?usage: backup-host.sh start|stop DIR [PORT]}
dir=${2:?usage: backup-host.sh start|stop DIR [PORT]}
port=${3:-2222}

case "$cmd" in
start)
  mkdir -p "$dir"/ssh "$dir"/storage "$dir"/keys
  chmod 700 "$dir"/keys
  [ -f "$dir/ssh/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh/host_ed25519"
  [ -f "$dir/ssh/client_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh/client_ed25519"
  cp "$dir/ssh/client_ed25519.pub" "$dir/ssh/authorized_keys"
  echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$dir/ssh/host_ed25519.pub")" > "$dir/ssh/known_hosts"
  [ -f "$dir/keys/demo.key" ] || head -c 64 /dev/urandom > "$dir/keys/demo.key"
  chmod 600 "$dir/keys/demo.key"
  mkdir -p /run/sshd
  # UsePAM: the root account is locked on these machines; without PAM sshd
  # refuses a locked account even for key logins.
  /usr/sbin/sshd -f /dev/null \
    -o ListenAddress=127.0.0.1 -o Port="$port" \
    -o HostKey="$dir/ssh/host_ed25519" \
    -o AuthorizedKeysFile="$dir/ssh/authorized_keys" \
    -o PidFile="$dir/ssh/sshd.pid" \
    -o UsePAM=yes -o PermitRootLogin=prohibit-password -o StrictModes=no \
    -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no \
    -o "Subsystem=sftp /usr/lib/openssh/sftp-server" \
    -E "$dir/ssh/sshd.log"
  for _ in $(seq 50); do [ -s "$dir/ssh/sshd.pid" ] && break; sleep 0.1; done
  cat > "$dir/imgbackup.toml" <<TOML
# Written by e2e/backup-host.sh for a throwaway loopback backup host.
[target.demo]
remote        = "root@127.0.0.1:$dir/storage"
port          = $port
identity_file = "$dir/ssh/client_ed25519"
ssh_options   = ["UserKnownHostsFile=$dir/ssh/known_hosts", "StrictHostKeyChecking=yes"]
image         = "demo.img"
size          = "64M"
filesystem    = "ext4"
key_file      = "$dir/keys/demo.key"
mount_point   = "$dir/mnt/demo"

# Cheap key derivation for a throwaway image only: never do this for real data.
[target.demo.luks]
pbkdf            = "pbkdf2"
pbkdf_iterations = 1000

[target.demo.timeouts]
stall    = "60s"
teardown = "20s"
TOML
  ;;
stop)
  if [ -s "$dir/ssh/sshd.pid" ]; then
    kill "$(cat "$dir/ssh/sshd.pid")" 2>/dev/null || true
    rm -f "$dir/ssh/sshd.pid"
  fi
  ;;
*)
  echo "usage: backup-host.sh start|stop DIR [PORT]" >&2; exit 1 ;;
esac
