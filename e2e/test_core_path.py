"""init, open, close over SSHFS, black-box, in a real kernel (issue 2)."""
import json
import os
import signal
import stat
import subprocess
import time
import uuid

import pytest

from conftest import (BIN, assert_nothing_left, imgbackup_mappings, mounts_under, sha256_of, tree_digest)

LUKS2_HEADER_BYTES = 16 << 20
MiB = 1 << 20


def luks_uuid(image):
    """The UUID field of a LUKS2 binary header (offset 168, 40 bytes)."""
    with open(image, "rb") as source:
        header = source.read(208)
    assert header[:6] == b"LUKS\xba\xbe", "not a LUKS header"
    assert int.from_bytes(header[6:8], "big") == 2, "not LUKS2"
    return header[168:208].rstrip(b"\0").decode()


def allocated_bytes(path):
    return os.stat(path).st_blocks * 512


def test_init_creates_a_sparse_luks2_image_and_leaves_nothing_behind(host, initialized):
    image = host.image(initialized)
    apparent = os.stat(image).st_size
    allocated = allocated_bytes(image)
    print(f"remote image: {apparent} bytes apparent, {allocated} bytes allocated")
    assert apparent == 64 * MiB
    assert allocated < apparent, "the image is not sparse on the remote"
    recorded = open(os.path.join(host.state, initialized, "luks-uuid")).read().strip()
    assert recorded == luks_uuid(image)
    assert not os.path.exists(image + ".imgbackup-partial")
    assert_nothing_left(host, initialized)


def test_open_write_close_reopen_compares_equal(host, initialized):
    result = host.ok("open", initialized)
    mount_point = result.stdout.strip()
    try:
        assert mount_point == os.path.join(host.work, "mnt", initialized)
        assert mount_point in mounts_under(mount_point)
        # A failed write-back (remote full) must stop ext4 at once, so the
        # journal still holds what did not land (see test_faults).
        options = open("/proc/self/mounts").read().split(f" {mount_point} ")[1].split()[1].split(",")
        assert "errors=remount-ro" in options and "data_err=abort" in options
        assert imgbackup_mappings() == [f"imgbackup-{initialized}"]
        # udev leaves the mapping alone: its blkid would read the remote
        # with one round trip per 4 KiB probe while open waits for it.
        subprocess.run(["udevadm", "settle", "--timeout=30"], check=True)
        udev = subprocess.run(["udevadm", "info", "--query=property", f"--name=/dev/mapper/imgbackup-{initialized}"],
                              capture_output=True, text=True, check=True).stdout.splitlines()
        assert "DM_UDEV_DISABLE_DISK_RULES_FLAG=1" in udev, udev
        assert not any(line.startswith("ID_FS_") for line in udev), f"udev probed the mapping: {udev}"
        record = json.load(open(host.state_record(initialized)))
        assert [list(layer)[0] for layer in record["layers"]] == ["sshfs", "remoteLock", "loop", "crypt", "filesystem"]

        os.makedirs(os.path.join(mount_point, "dir", "sub"))
        with open(os.path.join(mount_point, "dir", "sub", "random.bin"), "wb") as out:
            out.write(os.urandom(3 * MiB + 17))
        with open(os.path.join(mount_point, "name with spaces.txt"), "w") as out:
            out.write("hello\n")
        os.symlink("dir/sub/random.bin", os.path.join(mount_point, "link"))
        before = tree_digest(mount_point)
        assert sorted(before) == ["dir/sub/random.bin", "link", "name with spaces.txt"]
    finally:
        host.ok("close", initialized)
    assert_nothing_left(host, initialized)

    mount_point = host.ok("open", initialized).stdout.strip()
    try:
        assert tree_digest(mount_point) == before
        assert os.readlink(os.path.join(mount_point, "link")) == "dir/sub/random.bin"
    finally:
        host.ok("close", initialized)
    assert_nothing_left(host, initialized)


def test_plaintext_marker_never_reaches_the_remote_file(host, initialized):
    marker = f"IMGBACKUP-PLAINTEXT-MARKER-{uuid.uuid4()}".encode()
    mount_point = host.ok("open", initialized).stdout.strip()
    try:
        with open(os.path.join(mount_point, "marker.txt"), "wb") as out:
            out.write(marker * 4096)
    finally:
        host.ok("close", initialized)
    # The marker really is in the filesystem...
    mount_point = host.ok("open", initialized).stdout.strip()
    try:
        assert open(os.path.join(mount_point, "marker.txt"), "rb").read(len(marker)) == marker
    finally:
        host.ok("close", initialized)
    # ...and not in the file the remote stores.
    with open(host.image(initialized), "rb") as remote:
        data = remote.read()
    assert marker not in data
    assert marker[:24] not in data


def test_second_init_refuses_and_changes_nothing(host, initialized):
    image = host.image(initialized)
    digest = sha256_of(image)
    result = host.run("init", initialized)
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sha256_of(image) == digest
    assert_nothing_left(host, initialized)


def test_close_is_idempotent(host, initialized):
    host.ok("close", initialized)
    host.ok("close", initialized)
    host.ok("open", initialized)
    host.ok("close", initialized)
    host.ok("close", initialized)
    assert_nothing_left(host, initialized)


def test_second_open_of_an_open_target_exits_4(host, initialized):
    host.ok("open", initialized)
    try:
        result = host.run("open", initialized)
        assert result.returncode == 4
        assert "already open" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert imgbackup_mappings() == [f"imgbackup-{initialized}"], "the refused open disturbed the open one"
    finally:
        host.ok("close", initialized)
    assert_nothing_left(host, initialized)


def test_wrong_key_exits_5_and_leaves_the_header_byte_identical(host, initialized):
    wrong_key = os.path.join(host.work, "keys", "wrong.key")
    with open(wrong_key, "wb") as out:
        out.write(os.urandom(64))
    os.chmod(wrong_key, 0o600)
    name = host.add_target("wrongkey", image=f"{initialized}.img", key_file=wrong_key)
    image = host.image(initialized)
    header = sha256_of(image, LUKS2_HEADER_BYTES)
    whole = sha256_of(image)
    result = host.run("open", name)
    assert result.returncode == 5
    assert "key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sha256_of(image, LUKS2_HEADER_BYTES) == header
    assert sha256_of(image) == whole
    assert_nothing_left(host, name)


def test_key_file_readable_by_others_is_refused_before_touching_anything(host, initialized):
    loose_key = os.path.join(host.work, "keys", "loose.key")
    with open(os.path.join(host.work, "keys", "demo.key"), "rb") as source, open(loose_key, "wb") as out:
        out.write(source.read())
    os.chmod(loose_key, 0o644)
    name = host.add_target("loosekey", image=f"{initialized}.img", key_file=loose_key)
    result = host.run("open", name)
    assert result.returncode == 5
    assert "chmod 600" in result.stderr
    assert_nothing_left(host, name)


def test_unreachable_remote_fails_clearly_and_leaves_nothing_mounted(host):
    name = host.add_target("unreachable", port=1)  # nothing listens on port 1
    result = host.run("open", name)
    assert result.returncode == 6
    assert "sshfs" in result.stderr and "port" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr and "Fatal error" not in result.stderr
    assert_nothing_left(host, name)


def test_close_cleans_up_after_open_killed_at_any_point(host, initialized):
    """kill -9 of `open` at several points, then `close` from the state record.

    The kill points are fractions of a measured open, so they land in every
    stage (sshfs, loop, dm-crypt, mount) however fast this kernel is."""
    started = time.monotonic()
    host.ok("open", initialized)
    full_open = time.monotonic() - started
    host.ok("close", initialized)
    killed_midway = 0
    stages_seen = set()
    # Later points only while the kills have not yet landed in two stages: on
    # a loaded machine the stages' share of an open moves around.
    for fraction in (0.2, 0.6, 0.85, 0.93, 0.97, 0.9, 0.95, 0.99):
        if fraction in (0.9, 0.95, 0.99) and len(stages_seen) >= 2:
            break
        delay = fraction * full_open
        process = subprocess.Popen([BIN, "--config", host.config, "open", initialized], env=host.env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        finished_before_kill = process.poll() is not None
        process.send_signal(signal.SIGKILL)
        process.wait()
        layers = []
        if os.path.exists(host.state_record(initialized)):
            layers = [list(layer)[0] for layer in json.load(open(host.state_record(initialized)))["layers"]]
        print(f"killed after {delay:.1f}s of a {full_open:.1f}s open: finished={finished_before_kill}, "
              f"state record layers={layers}")
        if not finished_before_kill:
            killed_midway += 1
            stages_seen.add(len(layers))
        # sshfs, spawned just before the kill, may still be connecting: close must cope.
        host.ok("close", initialized)
        assert_nothing_left(host, initialized)
    assert killed_midway > 0, "no kill landed while open was still running"
    assert len(stages_seen) >= 2, f"kills landed in only one stage: {stages_seen}"
    mount_point = host.ok("open", initialized).stdout.strip()
    assert os.path.ismount(mount_point)
    host.ok("close", initialized)
    assert_nothing_left(host, initialized)


@pytest.mark.parametrize("table", ["inactive", "none"])
def test_close_removes_a_mapping_an_interrupted_open_left_without_a_live_table(host, initialized, table):
    """`open` killed between creating the dm-crypt device and resuming it
    leaves a device with only an inactive table, still holding the loop
    device (seen in CI: the kill test hit it once in many runs); killed
    before the table is loaded, a device with no table at all, which has no
    /sys/block entry yet keeps the name (seen with the release build).
    libcryptsetup calls either not active; close must remove it and
    everything under it, and the next open must work. Made here on purpose
    with dmsetup."""
    mount = host.ok("open", initialized).stdout.strip()
    name = f"imgbackup-{initialized}"
    dm = os.path.basename(os.path.realpath(f"/dev/mapper/{name}"))
    loops = os.listdir(f"/sys/block/{dm}/slaves")
    assert len(loops) == 1 and loops[0].startswith("loop")
    sectors = int(open(f"/sys/block/{dm}/size").read())
    subprocess.run(["umount", mount], check=True)
    # The loop device detaches itself when its last user goes: hold it meanwhile.
    holder = os.open(f"/dev/{loops[0]}", os.O_RDONLY)
    try:
        subprocess.run(["dmsetup", "--noudevsync", "remove", name], check=True)
        subprocess.run(["dmsetup", "--noudevsync", "create", name, "--notable"], check=True)
        if table == "inactive":
            subprocess.run(["dmsetup", "--noudevsync", "load", name, "--table",
                            f"0 {sectors} linear /dev/{loops[0]} 0"], check=True)
    finally:
        os.close(holder)
    assert imgbackup_mappings() == [name]
    if table == "inactive":
        assert os.listdir(f"/sys/block/{loops[0]}/holders"), "the half-made device should hold the loop device"

    host.ok("close", initialized)
    assert_nothing_left(host, initialized)
    assert not os.path.exists(f"/dev/mapper/{name}")
    host.ok("open", initialized)
    host.ok("close", initialized)
    assert_nothing_left(host, initialized)


def test_btrfs_target_round_trip(host):
    name = host.add_target("btrfs", filesystem="btrfs", size="160M")
    host.ok("init", name)
    assert_nothing_left(host, name)
    mount_point = host.ok("open", name).stdout.strip()
    try:
        with open("/proc/self/mounts") as mounts:
            assert any(line.split()[1] == mount_point and line.split()[2] == "btrfs" for line in mounts)
        with open(os.path.join(mount_point, "data.bin"), "wb") as out:
            out.write(os.urandom(2 * MiB))
        before = tree_digest(mount_point)
    finally:
        host.ok("close", name)
    mount_point = host.ok("open", name).stdout.strip()
    try:
        assert tree_digest(mount_point) == before
    finally:
        host.ok("close", name)
    assert_nothing_left(host, name)


def test_init_shows_mkfs_progress_on_a_terminal(host):
    """stderr on a pty gets a live progress line; captured stderr (above) gets none.

    The line is shown at once, so this holds however fast mkfs is (CI once
    finished it within the first second). ProgressWatcherTests proves the
    updates that follow count the bytes written."""
    import pty
    name = host.add_target("progress")
    controller, terminal = pty.openpty()
    process = subprocess.Popen([BIN, "--config", host.config, "init", name], env=host.env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(timeout=600) == 0
    text = output.decode(errors="replace")
    print(repr(text[-300:]))
    assert "making ext4: " in text and " written, " in text and "/s, " in text
    assert "\r\x1b[K" in text, "the progress line is rewritten in place"
    assert_nothing_left(host, name)
