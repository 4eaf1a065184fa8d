#!/usr/bin/env bash
# A release that runs on a Debian 12 machine without Swift: the Swift runtime
# and Foundation are linked in statically (--static-swift-stdlib), so the
# binary needs only Debian's own libraries. Packs it twice, into dist/:
#
#   imgbackup-VERSION-linux-ARCH.tar.gz   usr/bin, usr/lib/systemd/system,
#                                         usr/share (man, completions, the
#                                         example config): tar -xzf ... -C /
#   imgbackup_VERSION_ARCH.deb            the same tree; Depends on the
#                                         Debian packages of every library the
#                                         binary links and every tool it runs
#
#   scripts/make-dist.sh          (make dist)
#
# Refuses to pack a binary that still needs anything from the toolchain.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
swift=${SWIFT:-swift}
scratch=$root/.build-dist
out=$root/dist

"$swift" build -c release --static-swift-stdlib --scratch-path "$scratch" --product imgbackup
built=$scratch/release/imgbackup
version=$("$built" --version | awk '{ print $2 }')
arch=$(dpkg --print-architecture)

# Every library the binary asks for by name must come from a Debian package:
# a path under the toolchain (or one dpkg does not know) means a machine
# without Swift could not run it.
needed=$(objdump -p "$built" | awk '/NEEDED/ { print $2 }')
packages=()
for library in $needed; do
  # awk reads to the end: leaving early would kill ldconfig with SIGPIPE,
  # which pipefail turns into this script's failure once the cache outgrows
  # the pipe's buffer.
  path=$(ldconfig -p | awk -v lib="$library" '$1 == lib && /x86-64|x32|64/ && !found { print $NF; found = 1 }')
  [ -n "$path" ] || { echo "make-dist: $library is not a system library (ldconfig does not know it)" >&2; exit 1; }
  package=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null | awk -F: 'NR == 1 { print $1 }') || true
  [ -n "$package" ] || package=$(dpkg -S "$path" 2>/dev/null | awk -F: 'NR == 1 { print $1 }') || true
  [ -n "$package" ] || { echo "make-dist: $library ($path) belongs to no Debian package" >&2; exit 1; }
  packages+=("$package")
done
if ldd "$built" | grep -Ei 'swift|/opt/'; then
  echo "make-dist: the binary still links the Swift toolchain (above)" >&2
  exit 1
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
tree=$stage/tree
install -D -m 755 "$built" "$tree/usr/bin/imgbackup"
strip --strip-unneeded "$tree/usr/bin/imgbackup"
install -d "$tree/usr/lib/systemd/system"
for unit in configs/*.service configs/*.timer; do
  sed 's|/usr/local/bin/imgbackup|/usr/bin/imgbackup|' "$unit" > "$tree/usr/lib/systemd/system/$(basename "$unit")"
done
install -D -m 644 configs/imgbackup.toml "$tree/usr/share/doc/imgbackup/examples/imgbackup.toml"
install -m 644 README.md "$tree/usr/share/doc/imgbackup/"
cp -r docs "$tree/usr/share/doc/imgbackup/docs"
"$built" --generate-completion-script bash | install -D -m 644 /dev/stdin "$tree/usr/share/bash-completion/completions/imgbackup"
"$built" --generate-completion-script zsh | install -D -m 644 /dev/stdin "$tree/usr/share/zsh/vendor-completions/_imgbackup"
"$built" --generate-completion-script fish | install -D -m 644 /dev/stdin "$tree/usr/share/fish/vendor_completions.d/imgbackup.fish"
"$swift" build --scratch-path "$scratch" --product generate-manual >/dev/null
install -d "$tree/usr/share/man/man1"
"$scratch/debug/generate-manual" "$built" --multi-page --section 1 --output-directory "$tree/usr/share/man/man1"
gzip -9n "$tree"/usr/share/man/man1/*.1

mkdir -p "$out"
tarball=$out/imgbackup-$version-linux-$arch.tar.gz
tar --owner=0 --group=0 --sort=name -C "$tree" -czf "$tarball" usr

# What the commands run (doctor names each): a backup needs ssh, sshfs,
# fusermount3, the filesystem tools and rsync; borg, btrfs send, NBD and
# trim are the user's choice, and an image in S3 needs nbdkit's Python plugin
# with boto3 and curl (Recommends).
depends=$(printf '%s\n' "${packages[@]}" openssh-client sshfs fuse3 rsync e2fsprogs util-linux | sort -u | paste -sd, | sed 's/,/, /g')
mkdir -p "$tree/DEBIAN"
cat > "$tree/DEBIAN/control" <<CONTROL
Package: imgbackup
Version: $version
Architecture: $arch
Maintainer: imgbackup developers <imgbackup@localhost>
Installed-Size: $(du -sk "$tree/usr" | cut -f1)
Depends: $depends
Recommends: btrfs-progs, borgbackup, nbdkit, cryptsetup-bin, nbdkit-plugin-python, python3-boto3, curl
Section: admin
Priority: optional
Description: encrypted block images on storage you don't trust
 imgbackup keeps a LUKS2 image on a remote host reached over sshfs or NBD,
 opens it locally with dm-crypt, mounts the ext4 or btrfs filesystem inside,
 runs the backup's copy step (rsync snapshots, borg, btrfs send/receive or a
 command) and tears it all down, detecting hangs and recovering after crashes.
CONTROL
deb=$out/imgbackup_${version}_$arch.deb
dpkg-deb --root-owner-group --build "$tree" "$deb" >/dev/null
echo "make-dist: $(du -h "$tarball" | cut -f1) $tarball"
echo "make-dist: $(du -h "$deb" | cut -f1) $deb (Depends: $depends)"
