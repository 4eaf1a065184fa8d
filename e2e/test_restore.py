"""Restores (issues 7 and 21), each on "a new machine": fresh runtime and
state directories, only the config and the key. Back up with each copy
method, then list the backup points and restore with `imgbackup list` and
`imgbackup restore` (the image byte-identical afterwards), and by hand the
way docs/operations.md says; compare with the source: contents, numeric
owners, hard links, xattrs. The last test restores with the packaged binary
(`make dist`) while the Swift toolchain's libraries are hidden."""
import glob
import json
import os
import shutil
import subprocess

import pytest

from conftest import BIN, HERE, assert_nothing_left, sha256_of, tree_digest
from test_run import DAY, POINT, btrfs_source, change_source, make_source, without_excluded  # noqa: F401 (fixture)


def assert_same_tree(restored, source, excluded=True):
    expected = tree_digest(source)
    assert tree_digest(restored) == (without_excluded(expected) if excluded else expected)
    notes = os.path.join(restored, "home", "alice", "notes.txt")
    assert (os.stat(notes).st_uid, os.stat(notes).st_gid) == (1001, 1002)
    assert os.getxattr(notes, "trusted.tag") == b"kept"
    config = os.stat(os.path.join(restored, "etc", "app", "config"))
    assert (config.st_gid, config.st_mode & 0o777) == (4242, 0o640)
    big, link = (os.stat(os.path.join(restored, "etc", "app", name)) for name in ("big.bin", "big.link"))
    assert big.st_ino == link.st_ino, "the hard link was not kept"
    assert os.readlink(os.path.join(restored, "etc", "app", "config.link")) == "config"


def listed(machine, target):
    """`imgbackup list --json` of a closed target: its points, nothing left up after."""
    listing = json.loads(machine.ok("list", target, "--json").stdout)
    assert listing["target"] == target
    assert_nothing_left(machine, target)
    return listing["points"]


def opened_on(machine, target):
    mount = machine.ok("open", target).stdout.strip()
    # The new machine learned the image's LUKS UUID on its first open.
    assert os.path.exists(os.path.join(machine.state, target, "luks-uuid"))
    return mount


def test_files_from_an_rsync_snapshot(host):
    source = make_source(os.path.join(host.work, "src-restore-rsync"))
    name = host.add_target("restore_rsync", size="96M", tables={
        "copy": {"method": "rsync", "sources": [f"{source}/etc", f"{source}/home"],
                 "exclude": [f"{source}/home/*/.cache"]}})
    host.clone_image(name)
    host.ok("run", name, "--now", DAY[0])
    change_source(source, 2)
    host.ok("run", name, "--now", DAY[1])

    machine = host.new_machine("rsync-restorer")
    image_before = sha256_of(host.image(name))
    points = listed(machine, name)
    assert [(point["name"], point["location"], point["complete"]) for point in points] == [
        (POINT[0], f"snapshots/{POINT[0]}", True), (POINT[1], f"snapshots/{POINT[1]}", True)]
    # One file from the older point (it changed since), under its own path.
    first = os.path.join(host.work, "restored-rsync-first")
    machine.ok("restore", name, POINT[0], f"{source}/etc/app/config", "--to", first)
    with open(f"{first}{source}/etc/app/config") as restored:
        assert restored.read() == "setting = 1\n"
    assert sorted(os.listdir(f"{first}{source}/etc/app")) == ["config"]
    # Both trees from the latest, with owners, modes, links and xattrs.
    latest = os.path.join(host.work, "restored-rsync-latest")
    machine.ok("restore", name, f"{source}/etc", f"{source}/home", "--to", latest)
    assert_same_tree(f"{latest}{source}", source)
    missing = machine.run("restore", name, f"{source}/etc/nope", "--to", latest)
    assert missing.returncode == 1 and f"{source}/etc/nope is not in snapshots/{POINT[1]}" in missing.stderr
    assert machine.run("restore", name, "2020-01-01T000000Z", "/", "--to", latest).returncode == 1
    assert_nothing_left(machine, name)
    assert sha256_of(host.image(name)) == image_before, "listing or restoring changed the image"

    restore = os.path.join(host.work, "restored-rsync")
    mount = opened_on(machine, name)
    try:
        snapshot = os.path.join(mount, "snapshots", "latest")
        assert os.path.realpath(snapshot).endswith(POINT[1])
        subprocess.run(["rsync", "-aHAX", "--numeric-ids", f"{snapshot}{source}/", restore + "/"], check=True)
        # An open target is listed where it is mounted.
        assert [point["name"] for point in json.loads(machine.ok("list", name, "--json").stdout)["points"]] == POINT[:2]
    finally:
        machine.ok("close", name)
    assert_nothing_left(machine, name)
    assert_same_tree(restore, source)
    for directory in (restore, first, latest):
        shutil.rmtree(directory)
    host.discard(name, source)


def test_borg_extract(host):
    source = make_source(os.path.join(host.work, "src-restore-borg"))
    passphrase = os.path.join(host.work, "keys", "restore-borg.pass")
    with open(passphrase, "w") as out:
        out.write("restore horse battery staple\n")
    os.chmod(passphrase, 0o600)
    name = host.add_target("restore_borg", size="96M", tables={
        "copy": {"method": "borg", "sources": [f"{source}/etc", f"{source}/home"],
                 "exclude": [f"{source}/home/*/.cache"], "borg_passphrase_file": passphrase}})
    host.clone_image(name)
    host.ok("run", name, "--now", DAY[0], timeout=600)

    machine = host.new_machine("borg-restorer")
    restore = os.path.join(host.work, "restored-borg")
    os.makedirs(restore)
    # A new machine has no borg cache or security records: borg must accept the repository as found.
    borg_env = dict(os.environ, BORG_PASSPHRASE="restore horse battery staple",
                    BORG_BASE_DIR=os.path.join(host.work, "borg-new-machine"),
                    BORG_RELOCATED_REPO_ACCESS_IS_OK="yes", BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="no")
    mount = opened_on(machine, name)
    try:
        subprocess.run(["borg", "extract", "--numeric-ids", f"{mount}/borg::{POINT[0]}"], cwd=restore,
                       env=borg_env, check=True)
    finally:
        machine.ok("close", name)
    assert_nothing_left(machine, name)
    assert_same_tree(os.path.join(restore, source.lstrip("/")), source)

    image_before = sha256_of(host.image(name))
    assert [(point["name"], point["location"], point["complete"]) for point in listed(machine, name)] == [
        (POINT[0], f"borg::{POINT[0]}", True)]
    extracted = os.path.join(host.work, "restored-borg-command")
    machine.ok("restore", name, f"{source}/etc", f"{source}/home", "--to", extracted)
    assert_same_tree(f"{extracted}{source}", source)
    missing = machine.run("restore", name, f"{source}/etc/nope", "--to", extracted)
    assert missing.returncode == 1 and f"{source}/etc/nope is not in borg::{POINT[0]}" in missing.stderr
    assert_nothing_left(machine, name)
    assert sha256_of(host.image(name)) == image_before
    shutil.rmtree(restore)
    shutil.rmtree(extracted)
    host.discard(name, source)


def test_a_received_btrfs_snapshot(host, btrfs_source):
    subvolume = os.path.join(btrfs_source, "@data")
    name = host.add_target("restore_btrfs", size="160M", filesystem="btrfs", tables={
        "copy": {"method": "btrfs-send", "source_subvolume": subvolume}})
    host.ok("init", name)
    host.ok("run", name, "--now", DAY[0])

    machine = host.new_machine("btrfs-restorer")
    restore = os.path.join(btrfs_source, "restored")
    os.makedirs(restore)
    mount = opened_on(machine, name)
    try:
        send = subprocess.Popen(["btrfs", "-q", "send", os.path.join(mount, "snapshots", POINT[0])],
                                stdout=subprocess.PIPE)
        subprocess.run(["btrfs", "-q", "receive", restore], stdin=send.stdout, check=True)
        send.stdout.close()
        assert send.wait() == 0
    finally:
        machine.ok("close", name)
    assert_nothing_left(machine, name)
    restored = os.path.join(restore, POINT[0])
    # The whole subvolume came across, .cache included (btrfs-send has no excludes).
    assert_same_tree(restored, subvolume, excluded=False)

    # The same with the commands; the image mounts read-only without replaying btrfs's log.
    image_before = sha256_of(host.image(name))
    assert [(point["name"], point["complete"]) for point in listed(machine, name)] == [(POINT[0], True)]
    extracted = os.path.join(btrfs_source, "restored-command")
    machine.ok("restore", name, subvolume, "--to", extracted)
    assert_same_tree(f"{extracted}{subvolume}", subvolume, excluded=False)
    machine.ok("restore", name, f"{subvolume}/etc/app/config", "--to", extracted + "-one")
    assert os.listdir(f"{extracted}-one{subvolume}/etc/app") == ["config"]
    outside = machine.run("restore", name, "/etc", "--to", extracted)
    assert outside.returncode == 1 and f"is not under the subvolume this target backs up ({subvolume})" in outside.stderr
    assert_nothing_left(machine, name)
    assert sha256_of(host.image(name)) == image_before
    host.discard(name)


def packaged_binary(work):
    """The binary of `make dist`'s .deb, unpacked as dpkg would install it."""
    packages = sorted(glob.glob(os.path.join(HERE, "..", "dist", "imgbackup_*.deb")))
    if not packages:
        pytest.fail("no package in dist/: run 'make dist' first ('make test' does)")
    root = os.path.join(work, "installed-package")
    subprocess.run(["dpkg-deb", "-x", packages[-1], root], check=True)
    return os.path.join(root, "usr", "bin", "imgbackup")


def swift_runtime_directory():
    """Where the toolchain's libswiftCore.so is, as the development build links it."""
    for line in subprocess.run(["ldd", BIN], capture_output=True, text=True).stdout.splitlines():
        if "libswiftCore.so" in line:
            return os.path.dirname(line.split("=>")[1].split()[0])
    pytest.fail(f"{BIN} does not link libswiftCore.so: cannot tell where the toolchain is")


def without_the_toolchain(argv):
    """argv in a mount namespace where the Swift runtime's directory is an empty tmpfs."""
    script = f'mount -t tmpfs none "{swift_runtime_directory()}" && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


def test_the_whole_image_on_a_new_backup_host_and_machine(host):
    """The backup host died; its disk (or a copy of the image file) survives.
    On a new machine with the config and key, the image opens from its new
    place and holds the backup; the packaged binary restores it on a machine
    without the Swift toolchain."""
    source = make_source(os.path.join(host.work, "src-restore-image"))
    name = host.add_target("restore_image", size="96M", tables={
        "copy": {"method": "rsync", "sources": [f"{source}/etc", f"{source}/home"],
                 "exclude": [f"{source}/home/*/.cache"]}})
    host.clone_image(name)
    host.ok("run", name, "--now", DAY[0])

    new_remote = os.path.join(host.work, "new-backup-host")
    os.makedirs(new_remote)
    subprocess.run(["cp", "--sparse=always", host.image(name), os.path.join(new_remote, f"{name}.img")], check=True)
    machine = host.with_config("new-machine.toml").new_machine("image-restorer")
    machine.add_target(name, size="96M", remote=f"root@127.0.0.1:{new_remote}", tables={
        "copy": {"method": "rsync", "sources": [f"{source}/etc", f"{source}/home"],
                 "exclude": [f"{source}/home/*/.cache"]}})
    restore = os.path.join(host.work, "restored-image")
    mount = opened_on(machine, name)
    try:
        subprocess.run(["rsync", "-aHAX", "--numeric-ids", f"{mount}/snapshots/latest{source}/", restore + "/"], check=True)
    finally:
        machine.ok("close", name)
    assert_nothing_left(machine, name)
    assert_same_tree(restore, source)

    packaged = packaged_binary(host.work)
    linked = subprocess.run(["ldd", packaged], capture_output=True, text=True, check=True).stdout
    print(f"ldd {packaged}:\n{linked}")
    assert "swift" not in linked.lower() and "/opt/" not in linked
    # The hiding works: the development build cannot even start without the toolchain.
    assert subprocess.run(without_the_toolchain([BIN, "--version"]), capture_output=True).returncode != 0
    restored = os.path.join(host.work, "restored-by-package")
    result = subprocess.run(
        without_the_toolchain([packaged, "--config", machine.config, "restore", name, f"{source}/etc", f"{source}/home",
                               "--to", restored]),
        env=machine.env, capture_output=True, text=True, timeout=300)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr
    assert_same_tree(f"{restored}{source}", source)
    assert_nothing_left(machine, name)
    shutil.rmtree(new_remote)
    shutil.rmtree(restore)
    shutil.rmtree(restored)
    host.discard(name, source)
