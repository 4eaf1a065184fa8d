"""Restores (issue 7), each on "a new machine": fresh runtime and state
directories, only the config and the key. Back up with each copy method,
restore into a fresh directory the way docs/operations.md says, and compare
with the source: contents, numeric owners, hard links, xattrs."""
import os
import shutil
import subprocess

from conftest import assert_nothing_left, tree_digest
from test_run import DAY, POINT, btrfs_source, make_source, without_excluded  # noqa: F401 (fixture)


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

    machine = host.new_machine("rsync-restorer")
    restore = os.path.join(host.work, "restored-rsync")
    mount = opened_on(machine, name)
    try:
        snapshot = os.path.join(mount, "snapshots", "latest")
        assert os.path.realpath(snapshot).endswith(POINT[0])
        subprocess.run(["rsync", "-aHAX", "--numeric-ids", f"{snapshot}{source}/", restore + "/"], check=True)
    finally:
        machine.ok("close", name)
    assert_nothing_left(machine, name)
    assert_same_tree(restore, source)
    shutil.rmtree(restore)
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
    shutil.rmtree(restore)
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
    host.discard(name)


def test_the_whole_image_on_a_new_backup_host_and_machine(host):
    """The backup host died; its disk (or a copy of the image file) survives.
    On a new machine with the config and key, the image opens from its new
    place and holds the backup."""
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
    machine.add_target(name, size="96M", remote=f"root@127.0.0.1:{new_remote}")
    restore = os.path.join(host.work, "restored-image")
    mount = opened_on(machine, name)
    try:
        subprocess.run(["rsync", "-aHAX", "--numeric-ids", f"{mount}/snapshots/latest{source}/", restore + "/"], check=True)
    finally:
        machine.ok("close", name)
    assert_nothing_left(machine, name)
    assert_same_tree(restore, source)
    shutil.rmtree(new_remote)
    shutil.rmtree(restore)
    host.discard(name, source)
