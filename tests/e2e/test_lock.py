"""The remote lock beside the image (issue 5): two targets on one image, a
lock from another machine, --break-lock, and the lock gone after close."""
import os
import socket

from conftest import assert_nothing_left


def test_two_targets_on_one_image_cannot_both_open_it(host):
    first = host.add_target("lock_a", image="locked.img")
    second = host.add_target("lock_b", image="locked.img")
    host.ok("init", first)
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
    host.ok("init", name)
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
