#!/usr/bin/env bash
# The systemd units in configs/ pass `systemd-analyze verify` (syntax, known
# directives, each timer's unit and each OnFailure= unit exists), as installed
# with a stand-in binary, and keep the promises docs/usage.md makes of them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for unit in imgbackup@.service imgbackup-trim@.service imgbackup-check@.service imgbackup-failed@.service; do
  sed "s|/usr/local/bin/imgbackup|/bin/true|" "$root/configs/$unit" > "$work/$unit"
done
cp "$root/configs/imgbackup@.timer" "$root/configs/imgbackup-trim@.timer" "$root/configs/imgbackup-check@.timer" "$work/"
cd "$work"
output=$(systemd-analyze verify --man=no imgbackup@check.service imgbackup@check.timer \
  imgbackup-trim@check.service imgbackup-trim@check.timer imgbackup-check@check.service imgbackup-check@check.timer \
  imgbackup-failed@check.service 2>&1)
if [ -n "$output" ]; then
  echo "$output" >&2
  echo "units: systemd-analyze verify reported problems" >&2
  exit 1
fi
fail() { echo "units: $1" >&2; exit 1; }
for timer in imgbackup@.timer imgbackup-trim@.timer imgbackup-check@.timer; do
  grep -q '^Persistent=true' "$timer" || fail "$timer must be Persistent"
done
grep -q '^OnCalendar=weekly' imgbackup-trim@.timer || fail "the trim timer must be weekly"
grep -q '^OnCalendar=monthly' imgbackup-check@.timer || fail "the check timer must be monthly"
for service in imgbackup@.service imgbackup-trim@.service imgbackup-check@.service; do
  # SIGTERM to imgbackup alone: it stops its copy step and closes the target itself.
  grep -q '^KillMode=mixed' "$service" || fail "$service must stop with KillMode=mixed"
  grep -q '^OnFailure=imgbackup-failed@%i.service' "$service" || fail "$service must name its OnFailure= unit"
  # The teardown after a stop signal may take 370 s (docs/usage.md, "Stopping a run").
  stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)min$/\1/p' "$service")
  [ -n "$stop" ] && [ "$stop" -ge 7 ] || fail "$service: TimeoutStopSec must cover the worst teardown (>= 7min)"
done
echo "units: the run, trim, check and failure units and their timers verify clean"
