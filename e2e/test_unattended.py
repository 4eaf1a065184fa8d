"""Unattended runs heal themselves (issue 18): a stop signal closes what is
open and is recorded; a dead run's leftovers are the next run's to clear; a
close after kill -9 does not depend on timing; every failed run leaves a
notice; a source that contains imgbackup's own mounts does not back them up.

Each signal test prints the time from the signal to the exit, for the
closing note and docs/usage.md ("Stopping a run")."""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import BIN, assert_nothing_left

# The unit's TimeoutStopSec is 5 min; here the teardown steps have 20 s each
# (the suite's timeouts.teardown) and nothing is stuck, so a clean stop is
# far quicker. The bound is loose for a loaded emulated machine.
STOP_BUDGET = 90


def processes_named(name):
    result = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
    return [int(pid) for pid in result.stdout.split()]


def start(host, *args, env=None):
    return subprocess.Popen([BIN, "--config", host.config, *args], env=env or host.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, what, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"imgbackup ended before {what}: {process.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stop_with(process, number, again_after=None):
    """Sends `number`; with `again_after`, the same signal once more that many
    seconds later (while the teardown runs). Returns (stderr, seconds from
    the first signal to the exit)."""
    sent = time.monotonic()
    process.send_signal(number)
    if again_after is not None:
        time.sleep(again_after)
        if process.poll() is None:
            process.send_signal(number)
    _, stderr = process.communicate(timeout=STOP_BUDGET + 60)
    return stderr, time.monotonic() - sent


def stop_expecting_interrupt(host, name, process, number, label, again_after=None):
    """Stops `process` with `number` and asserts the contract: exit 9 within
    the budget, a last line naming the signal, nothing of `name` left up.
    Returns stderr."""
    stderr, to_exit = stop_with(process, number, again_after)
    signal_name = signal.Signals(number).name
    print(f"{signal_name} {label} -> exit {process.returncode} after {to_exit:.1f}s")
    print(stderr)
    assert process.returncode == 9
    assert stderr.strip().splitlines()[-1].startswith(f"imgbackup: error: interrupted by {signal_name}")
    assert to_exit < STOP_BUDGET
    assert_nothing_left(host, name)
    return stderr


def last_record(host, name):
    lines = [line for line in open(os.path.join(host.state, name, "runs.jsonl")) if line.strip()]
    return json.loads(lines[-1])


def copy_step_that_waits(host, name):
    """A copy step that stays in the mount until stopped, writing as it goes;
    the second run of the target (marker present) finishes at once."""
    results = os.path.join(host.work, f"{name}-post-hook")
    done = os.path.join(host.work, f"{name}-done")
    host.add_target(name, tables={
        "copy": {"method": "command", "command": [
            "sh", "-c", f"[ -e {done} ] && exit 0; cd {{mount}} && "
            "while :; do head -c 65536 /dev/urandom > data; sleep 0.2; done"]},
        "hooks": {"post": [["sh", "-c", f'echo "$IMGBACKUP_RESULT" >> {results}']]},
    })
    host.clone_image(name)
    return results


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_mid_copy_closes_records_and_notifies(host, number):
    name = f"stop{number}"
    post_hook = copy_step_that_waits(host, name)
    env = dict(host.env, IMGBACKUP_PROGRESS_INTERVAL="1")
    run = start(host, "run", name, env=env)
    wait_for(lambda: processes_named("sleep") and os.path.exists(os.path.join(host.work, "mnt", name, "data")),
             "the copy step", run)
    time.sleep(2.5)  # a journal progress line or two

    # The target lock serializes whatever else wants the target (a trim timer).
    trim = host.run("trim", name)
    assert trim.returncode == 4 and "is locked" in trim.stderr

    # A second signal while the teardown runs does not cut it short.
    stderr = stop_expecting_interrupt(host, name, run, number, "mid-copy", again_after=0.5)
    signal_name = signal.Signals(number).name
    assert f"received {signal_name}: stopping" in stderr
    assert f"run of '{name}': " in stderr and "written to the image" in stderr, "no progress line for the journal"
    assert processes_named("sleep") == [], "the copy step was left running"

    record = last_record(host, name)
    assert record["result"] == "interrupted" and record["exitCode"] == 9
    assert open(post_hook).read().split() == ["interrupted"]
    notice = host.notice(name)
    assert notice["IMGBACKUP_RESULT"] == "interrupted" and notice["IMGBACKUP_EXIT_STATUS"] == "9"
    assert notice["IMGBACKUP_ERROR"].startswith(f"interrupted by {signal_name}")

    # The next run needs nobody (its copy step finishes at once this time).
    open(os.path.join(host.work, f"{name}-done"), "w").close()
    result = host.ok("run", name)
    assert f"{name}: backed up with command" in result.stdout
    assert_nothing_left(host, name)
    host.discard(name)


def test_a_stop_signal_mid_init_leaves_no_image_and_init_works_again(host):
    name = host.add_target("stopinit", size="64M")
    init = start(host, "init", name)
    mapping = f"/dev/mapper/imgbackup-{name}"
    wait_for(lambda: os.path.exists(mapping), "the mapping", init, timeout=300)
    stop_expecting_interrupt(host, name, init, signal.SIGTERM, "mid-init")
    assert sorted(f for f in os.listdir(host.storage) if f.startswith(name)) == [], "a (partial) image was left"
    host.ok("init", name)
    assert_nothing_left(host, name)
    host.discard(name)


def test_a_stop_signal_mid_trim_closes_and_the_next_trim_works(host):
    name = "stoptrim"
    host.add_target(name, tables={"nbd": {"command": [
        "nbdkit", "--single", "--exit-with-parent", "file", os.path.join(host.storage, f"{name}.img")]}})
    host.clone_image(name)
    trim = start(host, "trim", name)
    wait_for(lambda: subprocess.run(["pgrep", "-f", f"nbd-bridge {name}"], capture_output=True).returncode == 0,
             "the NBD bridge", trim)
    stop_expecting_interrupt(host, name, trim, signal.SIGINT, "mid-trim")
    result = host.ok("trim", name)
    assert "trimmed:" in result.stdout
    assert_nothing_left(host, name)
    host.discard(name)


def layer_count(host, name):
    try:
        return len(json.load(open(host.state_record(name)))["layers"])
    except (OSError, ValueError):
        return 0


def test_the_next_run_clears_what_a_killed_run_left_at_any_point(host):
    """kill -9 of a run at every stage of it: while each of its five layers
    comes up, while the copy step works in the mount, and while it closes;
    IMGBACKUP_KILL_ROUNDS repeats the seven points (a longer proof than CI
    runs). After each kill the next command goes ahead by itself:
    alternately a `close` (must not depend on how far the copy step got in
    dying) and the next `run` (must finish the dead run's teardown, say so,
    and back up). A person's `open` is never touched: that stays exit 4."""
    name = "killpoints"
    written = os.path.join(host.work, "mnt", name, "f1")
    host.add_target(name, tables={"copy": {"method": "command", "command": [
        "sh", "-c", "cd {mount} && rm -f f*; for i in 1 2 3 4 5 6; do head -c 262144 /dev/urandom > f$i; sleep 0.3; done"]}})
    host.clone_image(name)
    host.ok("run", name)
    copied = []  # the last file was seen in the mount (it is gone from view once unmounted)

    def closing():
        if not copied:
            copied.extend([True] if os.path.exists(written.replace("f1", "f6")) else [])
            return False
        return layer_count(host, name) < 5

    stages = {
        **{f"layer {count} up": (lambda count=count: layer_count(host, name) >= count) for count in range(1, 6)},
        "copying": lambda: os.path.exists(written),
        "closing": closing,
    }
    rounds = int(os.environ.get("IMGBACKUP_KILL_ROUNDS", "1"))
    tried, recovered = 0, 0
    for round_number in range(rounds):
        for stage, reached in stages.items():
            copied.clear()
            run = start(host, "run", name)
            wait_for(reached, stage, run, timeout=180)
            time.sleep(0.3 * ((tried * 7) % 5) / 4)  # 0 to 0.3 s further into the stage
            run.kill()
            run.communicate()
            left = layer_count(host, name)
            command = "close" if tried % 2 == 0 else "run"
            result = host.run(command, name)
            recovered += "finishing the teardown of an interrupted 'run'" in result.stderr
            print(f"round {round_number + 1}, killed {stage}: {left} layers on record -> {command} exit {result.returncode}")
            assert result.returncode == 0, result.stderr
            assert_nothing_left(host, name)
            tried += 1
    print(f"kill points: {tried} tried, {tried} passed; {recovered} runs finished a dead run's teardown")
    assert recovered >= 3 * rounds, "the next run did not clear what the killed ones left"

    # A stack a person opened is theirs: the run refuses and names it.
    host.ok("open", name)
    refused = host.run("run", name)
    assert refused.returncode == 4
    assert "already open" in refused.stderr and "imgbackup open" in refused.stderr
    host.ok("close", name)
    assert_nothing_left(host, name)
    host.discard(name)


def test_every_failed_run_leaves_a_notice(host):
    # A wrong key: exit 5.
    wrong_key = os.path.join(host.work, "keys", "wrong.key")
    with open(wrong_key, "wb") as key:
        key.write(b"not the key")
    os.chmod(wrong_key, 0o600)
    name = host.add_target("noticekey", key_file=wrong_key, tables={"copy": {"method": "command", "command": ["true"]}})
    host.clone_image(name)
    assert host.run("run", name).returncode == 5
    notice = host.notice(name)
    assert notice["IMGBACKUP_RESULT"] == "failure" and notice["IMGBACKUP_EXIT_STATUS"] == "5"
    assert "key" in notice["IMGBACKUP_ERROR"]

    # An unreachable remote: exit 6.
    name = host.add_target("noticeremote", port=1, tables={"copy": {"method": "command", "command": ["true"]}})
    assert host.run("run", name).returncode == 6
    assert host.notice(name)["IMGBACKUP_EXIT_STATUS"] == "6"

    # A held lock: exit 4.
    name = host.add_target("noticelock", tables={"copy": {"method": "command", "command": ["true"]}})
    os.makedirs(host.runtime, exist_ok=True)
    with open(os.path.join(host.runtime, f"{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert host.run("run", name).returncode == 4
    notice = host.notice(name)
    assert notice["IMGBACKUP_EXIT_STATUS"] == "4" and "locked" in notice["IMGBACKUP_ERROR"]

    # A target the config does not have: exit 1, still a notice.
    assert host.run("run", "nosuchtarget").returncode == 1
    assert host.notice("nosuchtarget")["IMGBACKUP_EXIT_STATUS"] == "1"
    for name in ("noticekey",):
        host.discard(name)


def test_a_source_that_contains_imgbackups_own_mounts_does_not_back_them_up(host):
    """sources = a tree that holds the image's mount point, imgbackup's
    runtime directory (the remote's sshfs mount) and a filesystem of its
    own. With one_file_system = false the other filesystem is backed up,
    imgbackup's mounts never are; by default it is left out too."""
    # Outside the suite's work directory, whose mounts must all be imgbackup's.
    tree = tempfile.mkdtemp(prefix="imgbackup-owntree.")
    os.makedirs(os.path.join(tree, "data"))
    with open(os.path.join(tree, "data", "file.txt"), "w") as data:
        data.write("kept\n")
    other_fs = os.path.join(tree, "otherfs")
    os.makedirs(other_fs)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", other_fs], check=True)
    try:
        with open(os.path.join(other_fs, "on-another-fs.txt"), "w") as other:
            other.write("another filesystem\n")
        if host.template is None:  # run alone: the machine below clones the suite's template image
            host.clone_image("ownseed")
            host.discard("ownseed")
        machine = host.new_machine("owntree")
        machine.runtime = os.path.join(tree, "run")
        machine.env["IMGBACKUP_RUNTIME_DIR"] = machine.runtime
        results = {}
        for label, one_fs in (("ownall", False), ("ownone", True)):
            name = machine.add_target(label, mount_point=os.path.join(tree, "mnt", label), tables={
                "copy": {"method": "rsync", "sources": [tree], "one_file_system": one_fs}})
            machine.clone_image(name)
            machine.ok("run", name)
            mount = machine.ok("open", name).stdout.strip()
            snapshot = os.path.join(mount, "snapshots", "latest", tree.lstrip("/"))
            results[label] = sorted(os.path.relpath(os.path.join(d, f), snapshot)
                                    for d, _, files in os.walk(snapshot) for f in files)
            machine.ok("close", name)
            assert_nothing_left(machine, name)
            machine.discard(name)
        print(results)
        assert results["ownall"] == ["data/file.txt", "otherfs/on-another-fs.txt"]
        assert results["ownone"] == ["data/file.txt"]
    finally:
        subprocess.run(["umount", other_fs], check=False)
        shutil.rmtree(tree, ignore_errors=True)
