"""A 1 TiB image costs what a small one does: init writes only the
filesystem's skeleton, nothing zeroes the rest in the background, and the
never-written areas (random bytes through dm-crypt, not zeros) never pass
for metadata, not even after a close that had to cut off a frozen remote
(issue 20). The remote is a sparse file in the VM's tmpfs: only
what is written costs memory."""
import os
import signal
import subprocess
import time

from conftest import assert_nothing_left, tree_digest
from test_faults import STALL, processes_named

MiB = 1 << 20
TiB = 1 << 40
# What init may leave on the remote for a 1 TiB image: the 16 MiB LUKS2
# header plus the filesystem's skeleton (measured: about 16 MiB for ext4,
# 5 MiB for btrfs).
INIT_BUDGET = 64 * MiB
# What an idle open image may add in the idle window: a superblock or a
# commit now and then, never the inode tables (2 MiB a block group).
IDLE_BUDGET = 1 * MiB
IDLE_SECONDS = 15


def allocated(path):
    return os.stat(path).st_blocks * 512


def write_tree(root, files, size):
    os.makedirs(root, exist_ok=True)
    for index in range(files):
        with open(os.path.join(root, f"f{index:04d}"), "wb") as out:
            out.write(os.urandom(size))


def check_offline(host, target, command):
    """Runs `command` (its last argument the mapped device) on the target's
    image, opened read-only by hand with cryptsetup; returns the result."""
    loop = subprocess.run(["losetup", "--read-only", "--find", "--show", host.image(target)],
                          capture_output=True, text=True, check=True).stdout.strip()
    mapping = f"check-{target}"
    try:
        subprocess.run(["cryptsetup", "open", "--readonly", "--key-file", f"{host.work}/keys/demo.key",
                        loop, mapping], check=True)
        try:
            return subprocess.run(command + [f"/dev/mapper/{mapping}"], capture_output=True, text=True)
        finally:
            subprocess.run(["cryptsetup", "close", mapping], check=True)
    finally:
        subprocess.run(["losetup", "--detach", loop], check=True)


def init_and_idle(host, name):
    """init a 1 TiB image, then open it and leave it idle; asserts the
    budgets and returns the mount point (open)."""
    started = time.monotonic()
    host.ok("init", name)
    image = host.image(name)
    after_init = allocated(image)
    print(f"{name}: init of 1 TiB took {time.monotonic() - started:.1f}s, "
          f"remote file {os.stat(image).st_size} bytes, {after_init} allocated")
    assert os.stat(image).st_size == TiB
    assert after_init <= INIT_BUDGET, f"init wrote {after_init / MiB:.1f} MiB for 1 TiB"

    mount = host.ok("open", name).stdout.strip()
    opened = allocated(image)
    time.sleep(IDLE_SECONDS)
    idle = allocated(image)
    print(f"{name}: after open {opened}, after {IDLE_SECONDS}s idle {idle} allocated")
    assert idle - opened <= IDLE_BUDGET, f"an idle image grew by {(idle - opened) / MiB:.1f} MiB on the remote"
    return mount


def test_a_1_tib_ext4_image_is_cheap_to_make_stays_flat_and_checks_clean_after_a_close_on_a_frozen_remote(host):
    name = host.add_target("hugeext4", size="1T", tables={"timeouts": {"stall": f"{STALL}s", "teardown": "10s"}})
    mount = init_and_idle(host, name)
    kept = os.path.join(mount, "kept")
    write_tree(kept, 200, 16 << 10)
    subprocess.run(["sync", "-f", mount], check=True)
    digest = tree_digest(kept)
    write_tree(os.path.join(mount, "in-flight"), 50, 16 << 10)

    # The remote freezes under the open session, and close must still end:
    # what reached the remote is a committed journal not yet written home,
    # whose tail is never-written garbage.
    frozen = processes_named("sftp-server")
    assert frozen, "no sftp-server to freeze"
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        closed = host.run("close", name)
        took = time.monotonic() - started
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    print(f"close with the remote frozen -> exit {closed.returncode} after {took:.1f}s\n{closed.stderr}")
    assert closed.returncode == 3, closed.stderr
    assert closed.stderr.strip().splitlines()[-1].startswith(
        "imgbackup: error: writing the image out hung: sshfs to 127.0.0.1 did not answer for 15s")
    assert took <= STALL + 30, "close took longer than the stall and the teardown allow"
    assert_nothing_left(host, name, stale_lock=True)

    opened = host.ok("open", name)
    assert "recovering journal" in opened.stderr, opened.stderr
    try:
        assert tree_digest(kept) == digest
    finally:
        host.ok("close", name)
    assert_nothing_left(host, name)

    checked = check_offline(host, name, ["e2fsck", "-fn"])
    print(checked.stdout, checked.stderr)
    assert checked.returncode == 0, "e2fsck -fn found damage"
    host.discard(name)


def test_a_1_tib_btrfs_image_is_cheap_to_make_and_stays_flat(host):
    name = host.add_target("hugebtrfs", size="1T", filesystem="btrfs")
    mount = init_and_idle(host, name)
    write_tree(os.path.join(mount, "kept"), 50, 16 << 10)
    host.ok("close", name)
    assert_nothing_left(host, name)
    checked = check_offline(host, name, ["btrfs", "check", "--readonly"])
    print(checked.stdout, checked.stderr)
    assert checked.returncode == 0, "btrfs check found damage"
    host.discard(name)
