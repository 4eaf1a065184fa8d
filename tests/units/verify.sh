#!/usr/bin/env bash
# The systemd units in configs/ pass `systemd-analyze verify` (syntax, known
# directives, the timer's unit exists), as installed with a stand-in binary.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed "s|/usr/local/bin/imgbackup|/bin/true|" "$root/configs/imgbackup@.service" > "$work/imgbackup@.service"
cp "$root/configs/imgbackup@.timer" "$work/"
cd "$work"
output=$(systemd-analyze verify --man=no imgbackup@check.service imgbackup@check.timer 2>&1)
if [ -n "$output" ]; then
  echo "$output" >&2
  echo "units: systemd-analyze verify reported problems" >&2
  exit 1
fi
grep -q '^Persistent=true' imgbackup@.timer || { echo "units: the timer must be Persistent" >&2; exit 1; }
echo "units: imgbackup@.service and imgbackup@.timer verify clean"
