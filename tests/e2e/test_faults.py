"""Faults during a run: the remote freezes or vanishes, imgbackup notices,
tears down, and says which layer hung (issue 5). Each asserts the exit
status, the time from the fault to the exit, that nothing is left behind,
and that the next open finds the earlier backups intact."""
import os
import signal
import subprocess
import time

from conftest import BIN, assert_nothing_left, tree_digest

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


def start_run(host, target):
    command = [BIN, "--config", host.config, "run", target]
    return subprocess.Popen(command, env=host.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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


def test_sftp_server_frozen_mid_copy_exits_3_and_leaves_nothing(host):
    source = os.path.join(host.work, "src-frozen")
    write_random_files(source, 2, MiB)
    name = host.add_target("frozen", size="96M", tables={
        "copy": {"method": "rsync", "sources": [source]},
        "timeouts": {"stall": f"{STALL}s", "teardown": "10s"},
    })
    host.ok("init", name)
    host.ok("run", name)  # an earlier backup that must survive
    with_earlier = tree_digest(source)

    write_random_files(os.path.join(source, "big"), 12, 4 * MiB)  # 48 MiB: minutes at sshfs speed here
    run = start_run(host, name)
    stopped = []
    try:
        wait_until_copying(host, name)
        # sshd stays up and answers keepalives; only the SFTP server freezes.
        stopped = processes_named("sftp-server")
        assert stopped, "no sftp-server to freeze"
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        stdout, stderr = run.communicate(timeout=STALL + 120)
        to_exit = time.monotonic() - frozen_at
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if run.poll() is None:
            run.kill()
    print(f"sftp-server frozen -> imgbackup exited {run.returncode} after {to_exit:.1f}s (stall {STALL}s)")
    print(stderr)
    assert run.returncode == 3
    assert "sshfs to 127.0.0.1 did not answer" in stderr
    assert stderr.strip().splitlines()[-1].startswith("imgbackup: error: the backup hung")
    assert to_exit <= STALL + 30
    assert_nothing_left(host, name)
    assert processes_named("sshfs") == [], "sshfs was left running"

    # The next open works and the earlier backup is intact.
    mount = host.ok("open", name).stdout.strip()
    try:
        snapshots = sorted(p for p in os.listdir(os.path.join(mount, "snapshots")) if p[0].isdigit())
        assert len(snapshots) == 1
        assert tree_digest(os.path.join(mount, "snapshots", snapshots[0]) + source) == with_earlier
    finally:
        host.ok("close", name)
    assert_nothing_left(host, name)
