"""Bad input in the real kernel (issue 6): each gets one clear line and its
exit status, leaves nothing behind, and leaves the remote image as it was.
Config-file mistakes that need no kernel are host tests (ConfigLoaderTests)."""
import os
import shutil
import subprocess

import pytest

from conftest import assert_nothing_left, sha256_of

MiB = 1 << 20


@pytest.fixture(scope="module")
def good_image(host):
    """An initialised target whose image the cases below copy and damage."""
    name = host.add_target("badin")
    host.clone_image(name)
    return host.image(name)


def refused(host, target, args=("open",), status=None):
    """Runs `imgbackup ARGS TARGET`, which must fail with `status` in one
    line and leave nothing behind; returns that line."""
    result = host.run(*args, target)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1 and lines[0].startswith("imgbackup: error: "), result.stderr
    assert_nothing_left(host, target)
    return lines[0]


def damaged_copy(host, good_image, name, damage):
    """A target on a copy of the good image with `damage(path)` applied."""
    image = os.path.join(host.storage, f"{name}.img")
    subprocess.run(["cp", "--sparse=always", good_image, image], check=True)
    damage(image)
    return host.add_target(name), image


def overwrite(offset, length):
    def damage(path):
        with open(path, "r+b") as image:
            image.seek(offset)
            image.write(os.urandom(length))
    return damage


def test_a_target_not_in_the_config(host):
    host.add_target("known")
    line = refused(host, "nosuch", status=1)
    assert "target 'nosuch' is not in" in line and "known targets:" in line and "known" in line


def test_an_image_that_is_not_luks(host):
    name = host.add_target("notluks")
    with open(host.image(name), "wb") as image:
        image.truncate(64 * MiB)
    digest = sha256_of(host.image(name))
    line = refused(host, name, status=5)
    assert "it has no LUKS header" in line
    assert sha256_of(host.image(name)) == digest


def test_both_luks_headers_corrupt(host, good_image):
    name, image = damaged_copy(host, good_image, "badheaders", overwrite(0, 32 * 1024))
    digest = sha256_of(image)
    refused(host, name, status=5)
    assert sha256_of(image) == digest


def test_the_keyslot_area_corrupt(host, good_image):
    name, image = damaged_copy(host, good_image, "badslots", overwrite(32 * 1024, 256 * 1024))
    digest = sha256_of(image)
    line = refused(host, name, status=5)
    assert "does not open any keyslot" in line or "keyslot" in line
    assert sha256_of(image) == digest


def test_a_truncated_image(host, good_image):
    def truncate(path):
        os.truncate(path, 20 * MiB)  # the header and 4 MiB of a 48 MiB filesystem
    name, image = damaged_copy(host, good_image, "truncated", truncate)
    digest = sha256_of(image)
    line = refused(host, name, status=7)
    assert "the kernel refused the ext4 filesystem in it" in line and "truncated" in line
    assert sha256_of(image) == digest and os.path.getsize(image) == 20 * MiB


def test_a_remote_directory_that_does_not_exist(host):
    name = host.add_target("nodir", remote="root@127.0.0.1:/nonexistent/backups")
    line = refused(host, name, status=6)
    assert "/nonexistent/backups" in line


def test_a_mount_point_that_is_not_empty(host, good_image):
    name = host.add_target("fullmount", image="badin.img")
    mount_point = os.path.join(host.work, "mnt", name)
    os.makedirs(mount_point, exist_ok=True)
    with open(os.path.join(mount_point, "someone's file"), "w") as out:
        out.write("keep me\n")
    digest = sha256_of(good_image, limit=16 * MiB)
    line = refused(host, name, status=7)
    assert line == (f"imgbackup: error: refusing mount_point {mount_point}: it is not empty (files there would be "
                    "hidden by the mount; move them or choose another mount_point)")
    assert open(os.path.join(mount_point, "someone's file")).read() == "keep me\n"
    assert sha256_of(good_image, limit=16 * MiB) == digest


def test_a_mount_point_something_is_mounted_on(host, good_image):
    name = host.add_target("busymount", image="badin.img")
    mount_point = os.path.join(host.work, "mnt", name)
    os.makedirs(mount_point, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", mount_point], check=True)
    try:
        result = host.run("open", name)
        assert result.returncode == 7
        lines = result.stderr.strip().splitlines()
        assert lines == [f"imgbackup: error: refusing mount_point {mount_point}: something is already mounted there "
                         "(unmount it or choose another mount_point)"]
        assert os.path.ismount(mount_point), "someone else's mount must stay"
    finally:
        subprocess.run(["umount", mount_point], check=True)
    assert_nothing_left(host, name)


def test_paths_with_spaces_quotes_and_shell_syntax_are_taken_literally(host):
    """No shell ever sees a path: `$(...)` and quotes are just characters."""
    canary = os.path.join(host.work, "PWNED")
    weird = f"we ird 'q' \"dq\" $(touch {canary}) `touch {canary}` ;touch {canary}"
    storage = os.path.join(host.storage, weird)
    os.makedirs(storage)
    name = host.add_target("weird", remote=f"root@127.0.0.1:{storage}", image=f"img {weird.replace('/', '_')}.img",
                           mount_point=os.path.join(host.work, "mnt", weird))
    host.ok("init", name)
    mount = host.ok("open", name).stdout.strip()
    assert mount == os.path.join(host.work, "mnt", weird)
    with open(os.path.join(mount, "file"), "w") as out:
        out.write("literal\n")
    host.ok("close", name)
    mount = host.ok("open", name).stdout.strip()
    assert open(os.path.join(mount, "file")).read() == "literal\n"
    host.ok("close", name)
    assert_nothing_left(host, name)
    assert not os.path.exists(canary), "a shell interpreted a path"
    assert not os.path.exists("PWNED")


def test_a_path_with_a_newline_is_refused_in_one_line(host):
    # A config of its own: a bad target makes the whole file refused.
    bad = host.with_config("newline.toml")
    name = bad.add_target("newline", mount_point=os.path.join(host.work, "mnt", "new\nline"))
    result = bad.run("open", name)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "mount_point: must not contain NUL or newline" in lines[0]
    assert_nothing_left(host, name)
