#!/usr/bin/env bash
# The end-to-end suite, run inside the real kernel by in-real-kernel.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONDONTWRITEBYTECODE=1
export IMGBACKUP_BIN=${IMGBACKUP_BIN:-$(cd "$here/.." && pwd)/.build/debug/imgbackup}
# run-sharded.sh: --shard=K/N runs the K-th of N shards (conftest.py splits the files).
# --long: also the long variants conftest.py's LONG_TESTS leaves out of `make test`.
while :; do
  case "${1:-}" in
    --shard=*) export IMGBACKUP_SHARD=${1#--shard=}; shift ;;
    --long) export IMGBACKUP_E2E_LONG=1; shift ;;
    *) break ;;
  esac
done
# Debian's python3 and pytest: the VM's PATH does not see per-user Pythons.
# Every test has a deadline (conftest.py, TEST_DEADLINE): a hang is one
# failed test with the machine's state printed, not a CI run out of time.
exec /usr/bin/python3 -m pytest -p no:cacheprovider -v -rA --durations=0 \
  --timeout="${IMGBACKUP_E2E_TEST_DEADLINE:-600}" --timeout-method=signal "$here" "$@"
