"""open --read-only (issue 21): browsing a backup must not change it. Every
test hashes the remote image file before and after, and lists the remote
directory (a lock file is a write too)."""
import errno
import os
import subprocess

from conftest import assert_nothing_left, mounts_under, sha256_of
from test_run import DAY, POINT, make_source


def remote_state(host, image):
    """What the backup host stores: the image's bytes and mtime, and every name beside it."""
    return sha256_of(image), os.stat(image).st_mtime_ns, sorted(os.listdir(os.path.dirname(image)))


def test_a_read_only_open_changes_nothing_and_keeps_a_run_out(host):
    source = make_source(os.path.join(host.work, "src-readonly"))
    name = host.add_target("readonly", tables={"copy": {"method": "rsync", "sources": [f"{source}/etc"]}})
    host.clone_image(name)
    host.ok("run", name, "--now", DAY[0])
    image = host.image(name)
    before = remote_state(host, image)

    mount = host.ok("open", "--read-only", name).stdout.strip()
    assert os.listdir(os.path.join(mount, "snapshots", POINT[0], os.path.relpath(source, "/"), "etc", "app"))
    # Every layer refuses writes: the filesystem, the mapping, the loop device, the sshfs mount.
    try:
        with open(os.path.join(mount, "new-file"), "w") as out:
            out.write("x")
        raise AssertionError("a read-only open took a write")
    except OSError as error:
        assert error.errno == errno.EROFS
    options = {line.split()[1]: line.split()[3] for line in open("/proc/mounts")}
    assert options[mount].split(",")[0] == "ro"
    assert options[os.path.join(host.runtime, name, "remote")].split(",")[0] == "ro"
    mapping = f"/dev/mapper/imgbackup-{name}"
    assert subprocess.run(["blockdev", "--getro", mapping], capture_output=True, text=True).stdout.strip() == "1"
    dm = os.path.basename(os.path.realpath(mapping))
    (loop,) = os.listdir(f"/sys/block/{dm}/slaves")
    assert open(f"/sys/block/{loop}/ro").read().strip() == "1"
    assert "open read-only at" in host.ok("status", name).stdout
    # No lock on the remote while it is open, and nothing else written there.
    assert remote_state(host, image) == before

    # A scheduled run waits for the close: exit 4, and says why.
    refused = host.run("run", name, "--now", DAY[1])
    assert refused.returncode == 4
    assert "open read-only" in refused.stderr and "close" in refused.stderr
    assert host.run("open", name).returncode == 4

    host.ok("close", name)
    assert_nothing_left(host, name)
    assert remote_state(host, image) == before
    # Nothing local claims the session was unclean: the next open does not check.
    assert not os.path.exists(os.path.join(host.state, name, "dirty"))
    host.ok("run", name, "--now", DAY[1])
    assert_nothing_left(host, name)
    host.discard(name, source)


def test_a_read_only_open_shows_a_live_copy_without_replaying_its_journal(host):
    """The backup host copies the image while a session writes to it (its
    own snapshot, or a copy mid-run): the copy's journal needs a replay.
    Read-only, it opens as it is, says what is not shown, and stays
    byte-identical; a read-write open replays it."""
    name = host.add_target("livecopy")
    host.clone_image(name)
    mount = host.ok("open", name).stdout.strip()
    with open(os.path.join(mount, "written-while-copied"), "wb") as out:
        out.write(os.urandom(256 << 10))
        out.flush()
        os.fsync(out.fileno())
    frozen = host.add_target("livecopy_taken")
    subprocess.run(["cp", "--sparse=always", host.image(name), host.image(frozen)], check=True)
    host.ok("close", name)
    other = host.new_machine("readonly-machine")  # a restore from another machine
    before = remote_state(other, host.image(frozen))

    opened = other.ok("open", "--read-only", frozen)
    assert f"journal of '{frozen}' holds writes that were never replayed" in opened.stderr
    assert os.listdir(opened.stdout.strip()) is not None
    other.ok("close", frozen)
    assert_nothing_left(other, frozen)
    assert remote_state(other, host.image(frozen)) == before

    # Read-write, the journal is replayed: the file written before the copy is there.
    mount = other.ok("open", frozen).stdout.strip()
    assert os.path.getsize(os.path.join(mount, "written-while-copied")) == 256 << 10
    other.ok("close", frozen)
    assert_nothing_left(other, frozen)
    host.discard(name)
    host.discard(frozen)


def test_a_read_only_open_refuses_an_image_another_machine_has_locked(host):
    name = host.add_target("lockedread")
    host.clone_image(name)
    host.ok("open", name)  # this machine writes to it
    # Another machine: its own state and config. (Its target has another name
    # only because both "machines" share this kernel, where mapping names are one namespace.)
    other = host.with_config("lockedread-reader.toml").new_machine("reader")
    reader = other.add_target(f"{name}_reader", image=f"{name}.img", mount_point=f"{host.work}/mnt/{name}-reader")
    before_lock = sorted(os.listdir(host.storage))

    refused = other.run("open", "--read-only", reader)
    assert refused.returncode == 4
    assert "is locked by target 'lockedread'" in refused.stderr and "half-written" in refused.stderr
    # The reader left nothing (the writer's stack is still up: not assert_nothing_left).
    assert mounts_under(other.runtime, f"{host.work}/mnt/{name}-reader") == []
    assert not os.path.exists(other.state_record(reader))

    # A target of the same name under another config on this machine: its
    # mapping name is taken. Refused, and the writer's mapping is left alone
    # (an unwind used to try to close it).
    twin = host.with_config("lockedread-twin.toml").new_machine("twin")
    twin.add_target(name, mount_point=f"{host.work}/mnt/{name}-twin")
    taken = twin.run("open", "--read-only", "--break-lock", name)
    assert taken.returncode == 4 and "this open did not make it" in taken.stderr
    assert os.path.exists(f"/dev/mapper/imgbackup-{name}")
    assert os.listdir(os.path.join(host.work, "mnt", name)) is not None
    assert mounts_under(twin.runtime, f"{host.work}/mnt/{name}-twin") == []

    # Its holder gone for good: --break-lock reads anyway and leaves the lock alone.
    lock = host.image(name) + ".lock"
    lock_text = open(lock).read()
    other.ok("open", "--read-only", "--break-lock", reader)
    other.ok("close", reader)
    assert open(lock).read() == lock_text
    assert sorted(os.listdir(host.storage)) == before_lock
    host.ok("close", name)
    assert_nothing_left(host, name)
    host.discard(name)
