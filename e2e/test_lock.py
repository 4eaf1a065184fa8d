"""The remote lock beside the image (issue 5): two targets on one image, a
lock from another machine, --break-lock, and the lock gone after close."""
import os
import socket

from conftest import assert_nothing_left


def test_two_targets_on_one_image_cannot_both_open_it(host):
    first = host.add_target("lock_a", image="locked.img")
    second = host.add_target("lock_b", image="locked.img")
    host.clone_image(first, image="locked.img")
    lock = os.path.join(host.storage, "locked.img.lock")
    mount = host.ok("open", first).stdout.strip()
    try:
        with open(lock) as holder:
            text = holder.read()
        assert f"host={socket.gethostname()}\n" in text and "target=lock_a\n" in text and "pid=" in text
        result = host.run("open", second)
        assert result.returncode == 4
        assert result.stderr == ("imgbackup: error: the image locked.img is in use: target 'lock_a' has it open on "
                                 "this machine (close it first: imgbackup close lock_a)\n")
        assert os.path.ismount(mount), "the refused open touched the first target's stack"
        with open(lock) as holder:
            assert holder.read() == text, "the refused open touched the lock"
    finally:
        host.ok("close", first)
    assert not os.path.exists(lock)
    assert_nothing_left(host, first)
    assert_nothing_left(host, second)
    # Closed: now the second target may open it.
    host.ok("open", second)
    host.ok("close", second)
    assert_nothing_left(host, second)


def test_a_lock_from_another_machine_is_reported_and_only_broken_on_request(host):
    name = host.add_target("lock_foreign")
    host.clone_image(name)
    lock = host.image(name) + ".lock"
    foreign = "host=backup-laptop\npid=4242\ntarget=offsite\nsince=2026-11-20T03:00:00Z\ntoken=not-ours\n"
    with open(lock, "w") as out:
        out.write(foreign)
    result = host.run("open", name)
    assert result.returncode == 4
    assert result.stderr == ("imgbackup: error: the image lock_foreign.img is locked by target 'offsite' on "
                             "backup-laptop (pid 4242) since 2026-11-20T03:00:00Z (wait for it to close; if that "
                             "machine is gone for good, run again with --break-lock)\n")
    assert open(lock).read() == foreign
    assert_nothing_left(host, name, stale_lock=True)

    result = host.ok("open", name, "--break-lock")
    assert "breaking the lock on lock_foreign.img held by target 'offsite' on backup-laptop" in result.stderr
    assert "host=backup-laptop" not in open(lock).read()
    host.ok("close", name)
    assert not os.path.exists(lock)
    assert_nothing_left(host, name)


def test_an_nbd_command_wrapped_in_flock_refuses_a_second_client(host):
    """The NBD transport's remote lock: flock on the image around nbdkit.
    The second target gets exit 4 while the first is open, and gets in once
    the first has closed (the lock went with its session)."""
    image = os.path.join(host.storage, "nbdlocked.img")
    command = ["flock", "--nonblock", "--verbose", image, "nbdkit", "--single", "--exit-with-parent", "file", image]
    first = host.add_target("nbdlock_a", image="nbdlocked.img", transport="nbd", tables={"nbd": {"command": command}})
    second = host.add_target("nbdlock_b", image="nbdlocked.img", transport="nbd", tables={"nbd": {"command": command}})
    host.clone_image(first, image="nbdlocked.img")
    host.ok("open", first)
    try:
        result = host.run("open", second)
        assert result.returncode == 4
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("imgbackup: error: the image nbdlocked.img is in use: another NBD client holds")
        # The refused target left nothing (the first is still open).
        assert not os.path.exists(host.state_record(second))
        assert not os.path.ismount(os.path.join(host.runtime, second, "nbd"))
    finally:
        host.ok("close", first)
    assert_nothing_left(host, first)
    host.ok("open", second)
    host.ok("close", second)
    assert_nothing_left(host, second)
