#!/usr/bin/env bash
# The shell completions and man pages `make install` ships are generated from
# the command definitions: each must know every subcommand, and the bash and
# zsh scripts must parse.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
make --no-print-directory completions man >/dev/null
commands="setup init open close run list restore check trim resize status doctor key authorized-keys"
fail() { echo "cli-artifacts: $*" >&2; exit 1; }
for script in .build/completions/imgbackup.bash .build/completions/_imgbackup .build/completions/imgbackup.fish; do
  [ -s "$script" ] || fail "$script is empty"
  for command in $commands; do
    grep -q -- "$command" "$script" || fail "$script does not complete '$command'"
  done
done
bash -n .build/completions/imgbackup.bash || fail "the bash completion does not parse"
command -v zsh >/dev/null || fail "zsh is not installed (make deps): the zsh completion cannot be checked"
zsh -n .build/completions/_imgbackup || fail "the zsh completion does not parse"
[ -s .build/man/imgbackup.1 ] || fail "no man page imgbackup.1"
grep -q '^\.Dt IMGBACKUP 1' .build/man/imgbackup.1 || fail "imgbackup.1 is not an mdoc page of section 1"
for command in $commands; do
  page=.build/man/imgbackup.$command.1
  [ -s "$page" ] || fail "no man page for '$command' ($page)"
done
grep -q 'crypt_resize' .build/man/imgbackup.resize.1 || fail "imgbackup.resize.1 lacks the command's discussion"
# --version names the release and the commit the binary was built from.
version=$(.build/debug/imgbackup --version)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
case "$version" in
  "imgbackup "[0-9]*" (commit $commit"*) ;;
  *) fail "--version says '$version', expected the release and commit $commit" ;;
esac
# -q: errors only. A config error still prints its one line.
quiet=$(.build/debug/imgbackup -q --config /nonexistent status 2>&1 || true)
[ "$(printf '%s\n' "$quiet" | wc -l)" = 1 ] && printf '%s' "$quiet" | grep -q 'error: failed to read config' \
  || fail "-q must keep the error line alone: '$quiet'"
echo "cli-artifacts: $version"
echo "cli-artifacts: completions (bash, zsh, fish) and $(ls .build/man | wc -l) man pages cover: $commands"
