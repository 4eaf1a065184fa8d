"""Faults during a run: the remote freezes or vanishes, imgbackup notices,
tears down, and says which layer hung (issue 5). Each asserts the exit
status, the time from the fault to the exit, that nothing is left behind,
and that the next open finds the earlier backups intact."""
import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

from conftest import BIN, assert_nothing_left, communicate_until_exit, processes_whose_argv, tree_digest

STALL = 15
MiB = 1 << 20


def processes_named(name):
    result = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
    return [int(pid) for pid in result.stdout.split()]


def write_random_files(directory, count, size):
    os.makedirs(directory, exist_ok=True)
    for index in range(count):
        with open(os.path.join(directory, f"part-{index}.bin"), "wb") as out:
            out.write(os.urandom(size))


@contextlib.contextmanager
def small_remote():
    """A 40 MiB tmpfs as the remote directory: smaller than a 96 MiB image."""
    storage = tempfile.mkdtemp(prefix="imgbackup-small-remote.")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40M", "tmpfs", storage], check=True)
    try:
        yield storage
    finally:
        subprocess.run(["umount", "-l", storage], check=False)
        os.rmdir(storage)


def start(host, command, target):
    """`imgbackup COMMAND TARGET` in the background, output captured."""
    return subprocess.Popen([BIN, "--config", host.config, command, target], env=host.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_run(host, target):
    return start(host, "run", target)


def wait_for_process(name, imgbackup, timeout=120):
    """Until a process called `name` runs (or `imgbackup` ended without one)."""
    deadline = time.monotonic() + timeout
    while not processes_named(name) and time.monotonic() < deadline and imgbackup.poll() is None:
        time.sleep(0.05)
    assert processes_named(name), f"{name} never ran"


def wait_until_copying(host, target, timeout=120):
    """Until the image is mounted and bytes are moving into it."""
    mapping = f"/dev/mapper/imgbackup-{target}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(mapping):
            name = os.path.basename(os.path.realpath(mapping))
            with open(f"/sys/block/{name}/stat") as stat:
                if int(stat.read().split()[6]) > 8192:  # sectors written: 4 MiB
                    return
        time.sleep(0.2)
    raise AssertionError("the copy never started writing into the image")


def freeze_until_exit(process, name, pids=None):
    """SIGSTOPs every process called `name` (or the `pids` given), waits for
    `process` (imgbackup) to exit, then lets them go on. Returns (stderr,
    seconds from the freeze to the exit)."""
    stopped = pids if pids is not None else processes_named(name)
    assert stopped, f"no {name} to freeze"
    try:
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        _, stderr = communicate_until_exit(process, STALL + 120, "imgbackup (frozen remote)")
        return stderr, time.monotonic() - frozen_at
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if process.poll() is None:
            process.kill()


def freeze_expecting_hang(process, label, error_line, name=None, pids=None):
    """Freezes as freeze_until_exit does, prints how it went under `label`,
    and asserts the hang contract: exit 3, a last line starting with
    `error_line`, within the stall plus 30 s. Returns imgbackup's stderr."""
    stderr, to_exit = freeze_until_exit(process, name, pids)
    print(f"{label} -> imgbackup exited {process.returncode} after {to_exit:.1f}s (stall {STALL}s)")
    print(stderr)
    assert process.returncode == 3
    assert stderr.strip().splitlines()[-1].startswith(error_line)
    assert to_exit <= STALL + 30
    return stderr


def freeze_mid_copy(host, name, source, frozen):
    """One good run (the earlier backup), then a 48 MiB run during which every
    process called `frozen` is SIGSTOPped. Asserts exit 3 within the stall
    plus 30 s and nothing left behind; returns (stderr, the earlier backup's
    digest)."""
    host.clone_image(name)
    host.ok("run", name)
    earlier = tree_digest(source)
    write_random_files(os.path.join(source, "big"), 12, 4 * MiB)  # minutes at this VM's transport speed
    run = start_run(host, name)
    wait_until_copying(host, name)
    stderr = freeze_expecting_hang(run, f"{frozen} frozen", "imgbackup: error: the backup hung", name=frozen)
    assert_nothing_left(host, name, stale_lock=True)
    # The [notify] command heard of it, as a hang.
    notice = host.notice(name)
    assert notice["IMGBACKUP_RESULT"] == "hung" and notice["IMGBACKUP_EXIT_STATUS"] == "3"
    assert notice["IMGBACKUP_ERROR"].startswith("the backup hung")
    return stderr, earlier


def assert_earlier_backup_intact(host, name, source, digest, stale_lock=False):
    """The next open checks the filesystem (the hang left the dirty marker),
    replaces this machine's own stale remote lock if the hang left one,
    works, and the one complete snapshot matches `digest`."""
    opened = host.ok("open", name)
    mount = opened.stdout.strip()
    assert f"the last session of '{name}' did not end cleanly" in opened.stderr
    assert "is clean" in opened.stderr or "repaired the filesystem" in opened.stderr
    if stale_lock:
        assert "replacing this machine's own stale lock" in opened.stderr
    try:
        snapshots = sorted(p for p in os.listdir(os.path.join(mount, "snapshots")) if p[0].isdigit())
        assert len(snapshots) == 1
        assert tree_digest(os.path.join(mount, "snapshots", snapshots[0]) + source) == digest
    finally:
        host.ok("close", name)
    assert_nothing_left(host, name)
    host.discard(name, source)


def add_nbd_run_target(host, name, source):
    """A target over NBD (nbdkit run over ssh) that backs `source` up with rsync."""
    image = os.path.join(host.storage, f"{name}.img")
    return host.add_target(name, size="96M", transport="nbd", tables={
        "nbd": {"command": ["nbdkit", "--single", "--exit-with-parent", "file", image]},
        "copy": {"method": "rsync", "sources": [source]},
        "timeouts": {"stall": f"{STALL}s", "teardown": "10s"},
    })


def test_sftp_server_frozen_mid_copy_exits_3_and_leaves_nothing(host):
    """sshd stays up and answers keepalives; only the SFTP server freezes."""
    source = os.path.join(host.work, "src-frozen")
    write_random_files(source, 2, MiB)
    name = host.add_target("frozen", size="96M", tables={
        "copy": {"method": "rsync", "sources": [source]},
        "timeouts": {"stall": f"{STALL}s", "teardown": "10s"},
    })
    stderr, earlier = freeze_mid_copy(host, name, source, "sftp-server")
    assert "sshfs to 127.0.0.1 did not answer" in stderr
    assert processes_named("sshfs") == [], "sshfs was left running"
    # The remote froze during teardown: its lock file could not be removed.
    assert os.path.exists(host.image(name) + ".lock")
    assert_earlier_backup_intact(host, name, source, earlier, stale_lock=True)


def test_nbdkit_frozen_mid_copy_exits_3_and_leaves_nothing(host):
    """The NBD transport: nbdkit (run over ssh, the reference server) is
    SIGSTOPped while the copy writes through the bridge."""
    source = os.path.join(host.work, "src-nbd-frozen")
    write_random_files(source, 2, MiB)
    name = add_nbd_run_target(host, "nbdfrozen", source)
    stderr, earlier = freeze_mid_copy(host, name, source, "nbdkit")
    assert "the NBD export of nbdfrozen did not answer" in stderr
    deadline = time.monotonic() + 10
    while processes_named("nbdkit") and time.monotonic() < deadline:
        time.sleep(0.2)  # --exit-with-parent: it follows its ssh session out
    assert processes_named("nbdkit") == [], "nbdkit was left running"
    assert_earlier_backup_intact(host, name, source, earlier)


def test_imgbackup_killed_mid_run_then_close_cleans_up_and_the_next_run_works(host):
    """kill -9 of imgbackup while its copy step works in the mount: the copy
    step (its own process group) lives on and holds the mount busy; close
    must stop it and bring everything down. The command here stays in the
    mount until stopped, so the test does not depend on timing."""
    name = host.add_target("killed", tables={"copy": {"method": "command", "command": [
        "sh", "-c", "[ -e {mount}/first-run-done ] && exit 0; touch {mount}/first-run-done; cd {mount} && exec sleep 600"]}})
    host.clone_image(name)
    run = start_run(host, name)
    wait_for_process("sleep", run)  # the copy step
    run.kill()  # SIGKILL: no teardown at all
    run.wait()
    result = host.ok("close", name)
    assert "stopping what the interrupted run" in result.stderr
    assert processes_named("sleep") == []
    assert_nothing_left(host, name)
    assert processes_named("sshfs") == []
    # close unmounted cleanly: the next run needs no check, and works.
    result = host.ok("run", name)
    assert f"{name}: backed up with command" in result.stdout
    assert "did not end cleanly" not in result.stderr
    assert_nothing_left(host, name)
    records = [line for line in open(os.path.join(host.state, name, "runs.jsonl")) if line.strip()]
    assert len(records) == 1, "the killed run left no record; the good one did"


def test_bridge_killed_mid_run_fails_the_run_and_leaves_nothing(host):
    source = os.path.join(host.work, "src-bridge-killed")
    write_random_files(source, 12, 2 * MiB)
    name = add_nbd_run_target(host, "bridgekilled", source)
    host.clone_image(name)
    run = start_run(host, name)
    wait_until_copying(host, name)
    bridges = [int(p) for p in subprocess.run(["pgrep", "-f", "nbd-bridge bridgekilled"], capture_output=True,
                                              text=True).stdout.split()]
    assert bridges
    for pid in bridges:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    stdout, stderr = run.communicate(timeout=STALL + 120)
    to_exit = time.monotonic() - killed_at
    print(f"bridge killed -> imgbackup exited {run.returncode} after {to_exit:.1f}s")
    print(stderr)
    assert run.returncode in (2, 3), "the copy failed or the watchdog saw the dead transport"
    assert stderr.strip().splitlines()[-1].startswith("imgbackup: error: ")
    assert to_exit <= STALL + 30
    host.ok("close", name)  # whatever is left, close finishes it
    assert_nothing_left(host, name)
    host.ok("run", name)
    assert_nothing_left(host, name)
    host.discard(name, source)


def test_nbdkit_frozen_mid_trim_exits_3_and_leaves_nothing(host):
    """trim: nbdkit (with 5 s per trim request, so fstrim is caught in the
    act) is SIGSTOPped while fstrim sends discards through the bridge."""
    image = os.path.join(host.storage, "trimfrozen.img")
    name = host.add_target("trimfrozen", size="96M", transport="nbd", tables={
        "nbd": {"command": ["nbdkit", "--single", "--exit-with-parent", "--filter=delay", "file", image,
                            "delay-trim=5"]},
        "timeouts": {"stall": f"{STALL}s", "teardown": "10s"},
    })
    host.clone_image(name)
    mount = host.ok("open", name).stdout.strip()
    write_random_files(os.path.join(mount, "keep"), 1, MiB)
    kept = tree_digest(os.path.join(mount, "keep"))
    write_random_files(os.path.join(mount, "gone"), 8, 4 * MiB)
    host.ok("close", name)
    mount = host.ok("open", name).stdout.strip()
    subprocess.run(["rm", "-rf", os.path.join(mount, "gone")], check=True)
    host.ok("close", name)

    trim = start(host, "trim", name)
    wait_for_process("fstrim", trim)
    freeze_expecting_hang(trim, "nbdkit frozen mid-trim",
                          "imgbackup: error: the trim hung: the NBD export of trimfrozen did not answer", name="nbdkit")
    assert_nothing_left(host, name)

    mount = host.ok("open", name).stdout.strip()
    try:
        assert tree_digest(os.path.join(mount, "keep")) == kept
    finally:
        host.ok("close", name)
    assert_nothing_left(host, name)


def sshd_sessions():
    """The backup host's per-connection sshd processes (the listener aside)."""
    return [int(pid) for pid in processes_whose_argv(lambda argv: argv[0].startswith(b"sshd: root@"))]


def kill_mid_copy(host, name, source, victims):
    """One good run (the earlier backup), then a 48 MiB run during which
    every pid `victims()` returns gets SIGKILL. The writes in flight fail
    (exit 2, the write-out failed) or the watchdog sees the transport go
    (exit 3): either way within the stall plus 30 s, closed, and the next
    open checks the filesystem and finds the earlier backup."""
    host.clone_image(name)
    host.ok("run", name)
    earlier = tree_digest(source)
    write_random_files(os.path.join(source, "big"), 12, 4 * MiB)
    run = start_run(host, name)
    wait_until_copying(host, name)
    killed = victims()
    assert killed, "nothing to kill"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    _, stderr = run.communicate(timeout=STALL + 120)
    to_exit = time.monotonic() - killed_at
    print(f"{name}: killed {killed} -> imgbackup exited {run.returncode} after {to_exit:.1f}s (stall {STALL}s)")
    print(stderr)
    assert run.returncode in (2, 3)
    assert stderr.strip().splitlines()[-1].startswith("imgbackup: error: ")
    assert to_exit <= STALL + 30
    host.ok("close", name)  # nothing to do, or whatever a hang left
    assert_nothing_left(host, name)
    assert processes_named("sshfs") == []
    assert_earlier_backup_intact(host, name, source, earlier)


def test_ssh_connection_killed_mid_copy_ends_the_run_cleanly(host):
    """The server side of sshfs's ssh connection dies mid-copy (a rebooted or
    disconnected backup host). sshfs reconnects, but the writes in flight
    are lost: the run must fail and not count as a backup."""
    source = os.path.join(host.work, "src-ssh-killed")
    write_random_files(source, 2, MiB)
    name = host.add_target("sshkilled", size="96M", tables={
        "copy": {"method": "rsync", "sources": [source]},
        "timeouts": {"stall": f"{STALL}s", "teardown": "10s"},
    })
    kill_mid_copy(host, name, source, sshd_sessions)


def test_nbdkit_killed_mid_write_ends_the_run_cleanly(host):
    source = os.path.join(host.work, "src-nbdkit-killed")
    write_random_files(source, 2, MiB)
    name = add_nbd_run_target(host, "nbdkilled", source)
    kill_mid_copy(host, name, source, lambda: processes_named("nbdkit"))
    assert processes_named("nbdkit") == []


def test_remote_filesystem_full_mid_copy_says_so_and_keeps_earlier_backups(host):
    """The remote directory is a 40 MiB tmpfs under a 96 MiB sparse image:
    the second run fills it. The run must fail with a line that says the
    remote is full; once there is space again, the next open replays the
    journal, its e2fsck -p finds nothing it cannot fix, and the first backup
    is intact."""
    with small_remote() as storage:
        source = os.path.join(host.work, "src-full")
        write_random_files(source, 2, MiB)
        name = host.add_target("full", size="96M", remote=f"root@127.0.0.1:{storage}", tables={
            "copy": {"method": "rsync", "sources": [source]},
            "timeouts": {"stall": f"{STALL}s", "teardown": "10s"},
        })
        host.clone_image(name, directory=storage)
        host.ok("run", name)
        earlier = tree_digest(source)
        write_random_files(os.path.join(source, "big"), 12, 4 * MiB)
        started = time.monotonic()
        result = host.run("run", name)
        print(f"remote full -> exit {result.returncode} after {time.monotonic() - started:.1f}s")
        assert result.returncode == 2
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("imgbackup: error: the remote filesystem is full: writing the backup out to full.img "
                               f"failed with ")
        assert f"free in root@127.0.0.1:{storage}" in last
        # Unmounted after failed writes, Linux 6.1 would drop the journal that
        # still holds the new backup's metadata (a directory block lost in 3 of 5
        # tries); shut down first, the journal stays for the next check.
        assert "shut the filesystem at" in result.stderr and "so the next open replays its journal" in result.stderr
        assert_nothing_left(host, name)
        records = [json.loads(line) for line in open(os.path.join(host.state, name, "runs.jsonl"))]
        assert [r["result"] for r in records] == ["success", "failure"] and records[1]["exitCode"] == 2

        # The admin makes room; the next open checks and finds the first backup.
        subprocess.run(["mount", "-o", "remount,size=256M", storage], check=True)
        opened = host.ok("open", name)
        assert f"the last session of '{name}' did not end cleanly" in opened.stderr
        assert "recovering journal" in opened.stderr, "the journal the failed run left was not replayed"
        mount = opened.stdout.strip()
        try:
            snapshots = sorted(p for p in os.listdir(os.path.join(mount, "snapshots")) if p[0].isdigit())
            assert len(snapshots) == 1
            assert tree_digest(os.path.join(mount, "snapshots", snapshots[0]) + source) == earlier
        finally:
            host.ok("close", name)
        assert_nothing_left(host, name)
        host.ok("run", name)  # with room, the whole backup fits
        assert_nothing_left(host, name)
        shutil.rmtree(source)


def test_a_remote_filling_up_under_a_hand_opened_session_is_reported_by_close(host):
    """Someone writes into an opened image more than the remote holds; the
    write-back fails in the background (sync(2) tells nobody). close must
    say so (exit 7), shut ext4 down before unmounting, keep the dirty
    marker, and the next open replays the journal and finds the files that
    had landed."""
    with small_remote() as storage:
        name = host.add_target("handfull", size="96M", remote=f"root@127.0.0.1:{storage}",
                               tables={"timeouts": {"stall": f"{STALL}s", "teardown": "10s"}})
        host.clone_image(name, directory=storage)
        mount = host.ok("open", name).stdout.strip()
        landed = os.path.join(mount, "landed")
        write_random_files(landed, 2, MiB)
        subprocess.run(["sync", "-f", mount], check=True)
        earlier = tree_digest(landed)
        try:
            write_random_files(os.path.join(mount, "too-much"), 12, 4 * MiB)
        except OSError as refused:
            # ext4 may notice first: a journal commit into a hole the full
            # remote cannot allocate fails, and errors=remount-ro stops writes.
            assert refused.errno in (errno.EROFS, errno.EIO, errno.ENOSPC), refused
        subprocess.run(["sync"], check=False)  # the write-back fails here, and sync(2) reports nothing

        closed = host.run("close", name)
        assert closed.returncode == 7, closed.stderr
        last = closed.stderr.strip().splitlines()[-1]
        assert last.startswith(f"imgbackup: error: closed target '{name}', but not everything written to it "
                               "reached the remote: the last write-out failed (syncfs on "), last
        assert "shut the filesystem at" in closed.stderr
        assert_nothing_left(host, name)

        subprocess.run(["mount", "-o", "remount,size=256M", storage], check=True)
        opened = host.ok("open", name)
        assert "recovering journal" in opened.stderr, opened.stderr
        try:
            assert tree_digest(landed) == earlier
        finally:
            host.ok("close", name)
        assert_nothing_left(host, name)


def test_sftp_server_frozen_during_init_exits_3_and_the_next_init_works(host):
    """mkfs writes through the transport: the SFTP server freezing then is a
    hang like in a run. mkfs writes only a few MiB (lazy init), too quickly
    to catch by polling for it, so the freeze comes at init's line saying
    that mkfs starts: everything after that line is the filesystem step."""
    name = host.add_target("initfrozen", size="512M", tables={"timeouts": {"stall": f"{STALL}s", "teardown": "10s"}})
    init = subprocess.Popen([BIN, "--config", host.config, "init", "-v", name], env=host.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The SFTP server is looked up while LUKS2 is formatted (its sshfs is
    # mounted by then), so the freeze itself is one kill(2) away.
    sftp_servers = None
    for line in init.stderr:
        if line.startswith("imgbackup: formatting LUKS2 on "):
            sftp_servers = processes_named("sftp-server")
        if line.startswith("imgbackup: making ext4 on "):
            break
    else:
        raise AssertionError(f"init never said it makes the filesystem (exit {init.wait()})")
    freeze_expecting_hang(init, "sftp-server frozen during init",
                          "imgbackup: error: making the filesystem hung: sshfs to 127.0.0.1 did not answer",
                          pids=sftp_servers)
    assert_nothing_left(host, name, stale_lock=True)
    assert processes_named("sshfs") == [] and processes_named("mkfs.ext4") == []
    assert not os.path.exists(host.image(name)), "a half-made image got the real name"

    result = host.ok("init", name)
    assert "replacing this machine's own stale lock" in result.stderr
    assert "left by an earlier init that did not finish" in result.stderr
    assert_nothing_left(host, name)
    host.ok("open", name)
    host.ok("close", name)
    assert_nothing_left(host, name)
