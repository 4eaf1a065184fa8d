"""`imgbackup resize` (issue 7): the image, the mapping and the filesystem
grow, online or by opening; shrinking and a too-small remote are refused
with the image untouched."""
import os
import subprocess
import tempfile

from conftest import assert_nothing_left, sha256_of, tree_digest

MiB = 1 << 20


def filesystem_bytes(mount):
    stats = os.statvfs(mount)
    return stats.f_blocks * stats.f_frsize


def fill(path, mib):
    with open(path, "wb") as out:
        for _ in range(mib):
            out.write(os.urandom(MiB))


def test_a_closed_ext4_target_grows_and_keeps_its_data(host):
    name = host.add_target("grow", size="96M")
    host.clone_image(name)
    mount = host.ok("open", name).stdout.strip()
    fill(os.path.join(mount, "kept.bin"), 8)
    before = filesystem_bytes(mount)
    kept = tree_digest(mount)
    host.ok("close", name)

    result = host.ok("resize", name, "--size", "160M")
    assert result.stdout.startswith(f"{name}: image 96 MiB -> 160 MiB, ext4 now ")
    assert "(opened and closed again)" in result.stdout
    assert f'set size = "160M" in [target.{name}] to match' in result.stdout
    assert os.stat(host.image(name)).st_size == 160 * MiB
    assert_nothing_left(host, name)

    mount = host.ok("open", name).stdout.strip()
    try:
        grown = filesystem_bytes(mount)
        assert grown >= before + 56 * MiB, (before, grown)  # 64 MiB more image, less ext4's metadata
        assert tree_digest(mount) == kept
        # The new space is usable: more than the old filesystem's free space.
        fill(os.path.join(mount, "new.bin"), 96)
    finally:
        host.ok("close", name)

    # Again at the same size: nothing to grow, and nothing breaks (finishing an interrupted resize).
    assert "image 160 MiB -> 160 MiB" in host.ok("resize", name, "--size", "160M").stdout
    assert_nothing_left(host, name)
    host.discard(name)


def test_an_open_target_grows_online_and_stays_open(host):
    name = host.add_target("grow_online", size="96M")
    host.clone_image(name)
    mount = host.ok("open", name).stdout.strip()
    try:
        fill(os.path.join(mount, "before.bin"), 4)
        before = filesystem_bytes(mount)
        result = host.ok("resize", name, "--size", "128M")
        assert result.stdout.rstrip().splitlines()[0].endswith("(online, still open)")
        assert filesystem_bytes(mount) >= before + 28 * MiB
        assert os.path.ismount(mount)
        fill(os.path.join(mount, "after.bin"), 4)
        digest = tree_digest(mount)
    finally:
        host.ok("close", name)
    mount = host.ok("open", name).stdout.strip()
    try:
        assert tree_digest(mount) == digest
    finally:
        host.ok("close", name)
    assert_nothing_left(host, name)
    host.discard(name)


def test_btrfs_grows_too(host):
    name = host.add_target("grow_btrfs", size="160M", filesystem="btrfs")
    host.ok("init", name)
    mount = host.ok("open", name).stdout.strip()
    before = filesystem_bytes(mount)
    host.ok("close", name)
    # The kernel refuses to resize btrfs below 256 MiB: said before anything is touched.
    line = refused(host, name, "240M", 1)
    assert "btrfs refuses to resize a filesystem to less than 256 MiB" in line and "--size 272M or more" in line
    result = host.ok("resize", name, "--size", "320M")
    assert "btrfs now" in result.stdout
    mount = host.ok("open", name).stdout.strip()
    try:
        assert filesystem_bytes(mount) >= before + 150 * MiB, before
    finally:
        host.ok("close", name)
    assert_nothing_left(host, name)
    host.discard(name)


def refused(host, name, size, status):
    result = host.run("resize", name, "--size", size)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1 and lines[0].startswith("imgbackup: error: "), result.stderr
    assert_nothing_left(host, name)
    return lines[0]


def test_shrinking_and_a_remote_without_room_are_refused_untouched(host):
    name = host.add_target("noshrink", size="96M")
    host.clone_image(name)
    header = sha256_of(host.image(name), limit=16 * MiB)
    line = refused(host, name, "64M", 1)
    assert "cannot shrink 'noshrink' from 96 MiB to 64 MiB: ext4 cannot shrink while mounted" in line
    assert os.stat(host.image(name)).st_size == 96 * MiB and sha256_of(host.image(name), limit=16 * MiB) == header
    line = refused(host, name, "100001K", 1)
    assert "not a whole number of 4 KiB sectors" in line
    host.discard(name)

    storage = tempfile.mkdtemp(prefix="imgbackup-small-remote.")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120M", "tmpfs", storage], check=True)
    try:
        name = host.add_target("noroom", size="96M", remote=f"root@127.0.0.1:{storage}")
        host.clone_image(name, directory=storage)
        image = os.path.join(storage, f"{name}.img")
        line = refused(host, name, "512M", 6)
        assert "cannot grow 'noroom' by 416 MiB: the remote has" in line and "free space there, or choose a smaller --size" in line
        assert os.stat(image).st_size == 96 * MiB
    finally:
        subprocess.run(["umount", storage], check=False)
        os.rmdir(storage)
