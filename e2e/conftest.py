"""Fixtures for the end-to-end suite: a real OpenSSH backup host on loopback
and helpers that run the imgbackup binary as a user would, and check that
nothing (mount, mapping, loop device, FUSE mount, state record) is left behind.

Runs as root inside a kernel with dm-crypt (e2e/in-real-kernel.sh).
"""
import collections
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("IMGBACKUP_BIN", os.path.join(HERE, "..", ".build", "debug", "imgbackup"))
PORT = 2222
# Named limits for one CLI call: init runs mkfs under software emulation.
COMMAND_TIMEOUT = {"init": 600, "open": 180, "close": 180, "trim": 600, "run": 600}
TIMINGS = collections.defaultdict(list)


class BackupHost:
    def __init__(self, work):
        self.work = work
        self.storage = os.path.join(work, "storage")
        self.config = os.path.join(work, "imgbackup.toml")
        self.runtime = os.path.join(work, "run")
        self.state = os.path.join(work, "state")
        self.env = dict(os.environ, IMGBACKUP_RUNTIME_DIR=self.runtime, IMGBACKUP_STATE_DIR=self.state)
        self.template = None
        self.template_state = None  # where init recorded the template's LUKS UUID and pin

    def add_target(self, name, tables=None, **overrides):
        """Appends a [target.NAME] table like the demo target, with overrides
        (None leaves a key out); `tables` adds sub-tables: {"nbd": {"uri": ...}, "copy": {...}}."""
        values = {
            "remote": f"root@127.0.0.1:{self.storage}",
            "port": PORT,
            "identity_file": f"{self.work}/ssh/client_ed25519",
            "ssh_options": [f"UserKnownHostsFile={self.work}/ssh/known_hosts", "StrictHostKeyChecking=yes"],
            "image": f"{name}.img",
            "size": "64M",
            "filesystem": "ext4",
            "key_file": f"{self.work}/keys/demo.key",
            "mount_point": f"{self.work}/mnt/{name}",
        }
        # Every test file appends to one config: a name used twice would make
        # it invalid TOML, and every later test would fail with it.
        if os.path.exists(self.config):
            with open(self.config) as config:
                assert f"[target.{name}]\n" not in config.read(), f"target '{name}' is already in {self.config}: pick another name"
        if "key_command" in overrides and "key_file" not in overrides:
            del values["key_file"]
        values.update(overrides)
        lines = [f"\n[target.{name}]"]
        for key, value in values.items():
            if value is None:  # left out
                continue
            lines.append(f"{key} = {toml_value(value)}")
        tables = dict(tables or {})
        timeouts = {"stall": "60s", "teardown": "20s", **tables.pop("timeouts", {})}
        lines += [f"[target.{name}.luks]", 'pbkdf = "pbkdf2"', "pbkdf_iterations = 1000",
                  f"[target.{name}.timeouts]"] + [f"{key} = {toml_value(value)}" for key, value in timeouts.items()]
        for table, entries in tables.items():
            lines.append(f"[target.{name}.{table}]")
            lines += [f"{key} = {toml_value(value)}" for key, value in entries.items()]
        with open(self.config, "a") as config:
            config.write("\n".join(lines) + "\n")
        return name

    def clone_image(self, target, image=None, directory=None):
        """Gives `target` a ready image: a sparse copy of one image initialised
        once per session (ext4, 96 MiB, the demo key). init is the slowest
        command under emulation; tests that are not about init start here."""
        if self.template is None:
            self.add_target("template", size="96M")
            self.ok("init", "template")
            self.template = self.image("template")
            self.template_state = os.path.join(self.state, "template")
        destination = os.path.join(directory or self.storage, image or f"{target}.img")
        subprocess.run(["cp", "--sparse=always", self.template, destination], check=True)
        # As if init had run here: the target knows its image's LUKS UUID and header pin.
        os.makedirs(os.path.join(self.state, target), exist_ok=True)
        for record in ("luks-uuid", "luks-header.json"):
            shutil.copy(os.path.join(self.template_state, record), os.path.join(self.state, target, record))
            if not os.path.exists(os.path.join(self.template_state, "luks-header.json")):
                break  # an imgbackup from before header pins (tests checked against older code)

    def discard(self, target, *directories):
        """Removes a finished test's image and data directories: the VM's /tmp
        is a tmpfs in its 2 GiB of memory, and fault tests write 48 MiB each."""
        for path in (self.image(target), *directories):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.remove(path)

    def with_config(self, file_name):
        """The same backup host and state, with a config file of its own
        (for `run --all`, which runs every target of its config)."""
        other = BackupHost(self.work)
        other.template, other.template_state = self.template, self.template_state
        other.config = os.path.join(self.work, file_name)
        open(other.config, "w").close()
        return other

    def new_machine(self, label):
        """The same backup host and config seen from another client: empty
        runtime and state directories, as on a machine rebuilt from the
        config and the key alone."""
        other = BackupHost(self.work)
        other.template, other.template_state = self.template, self.template_state
        other.config = self.config
        other.runtime = os.path.join(self.work, f"{label}-run")
        other.state = os.path.join(self.work, f"{label}-state")
        other.env = dict(os.environ, IMGBACKUP_RUNTIME_DIR=other.runtime, IMGBACKUP_STATE_DIR=other.state)
        return other

    def run(self, *args, timeout=None):
        """Runs `imgbackup --config CONFIG ARGS...` and returns the CompletedProcess."""
        command = args[0]
        started = time.monotonic()
        process = subprocess.Popen([BIN, "--config", self.config, *args], env=self.env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stdout, stderr = communicate_until_exit(process, timeout or COMMAND_TIMEOUT.get(command, 180),
                                                f"imgbackup {' '.join(args)}")
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        elapsed = time.monotonic() - started
        TIMINGS[command].append(elapsed)
        print(f"$ imgbackup {' '.join(args)}  -> exit {result.returncode} in {elapsed:.1f}s")
        for line in (result.stdout + result.stderr).splitlines():
            print(f"    {line}")
        return result

    def ok(self, *args, **kwargs):
        result = self.run(*args, **kwargs)
        assert result.returncode == 0, f"imgbackup {' '.join(args)} failed: {result.stderr}"
        return result

    def notice(self, target):
        """The [notify] command's record of `target`'s last failed run: {IMGBACKUP_...: value}, or None."""
        path = os.path.join(self.work, "notices", target)
        if not os.path.exists(path):
            return None
        return dict(line.rstrip("\n").split("=", 1) for line in open(path) if "=" in line)

    def image(self, target):
        return os.path.join(self.storage, f"{target}.img")

    def state_record(self, target):
        return os.path.join(self.runtime, f"{target}.state.json")


# Seconds a process may stay half-exited (its main thread gone, another
# thread of it still in the kernel) before that counts as stuck for good.
HALF_EXITED_SECONDS = 60


def communicate_until_exit(process, limit, label):
    """process.communicate(), failing instead of waiting forever: past
    `limit` seconds, or once the process has half-exited for
    HALF_EXITED_SECONDS. A thread stuck in the kernel (a FUSE request its
    daemon never answers) keeps such a process from ending: it holds its
    pipes open, so the output never ends, and it can never be reaped. On a
    user's machine that is a run that never finishes and keeps its lock."""
    deadline = time.monotonic() + limit
    half_exited_since = None
    while True:
        try:
            stdout, stderr = process.communicate(timeout=1)
            process.wait()
            return stdout, stderr
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if main_thread_exited(process.pid):
            half_exited_since = half_exited_since or now
            if now - half_exited_since > HALF_EXITED_SECONDS:
                raise AssertionError(f"{label} exited, but a thread of it is stuck in the kernel, so it never "
                                     f"ends: {stuck_threads(process.pid)}")
        if now > deadline:
            process.kill()
            raise AssertionError(f"{label} did not end within {limit}s")


def main_thread_exited(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def stuck_threads(pid):
    """Each thread left of `pid`: its name, state and kernel stack."""
    found = []
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(f"{task}/comm") as comm, open(f"{task}/stat") as stat, open(f"{task}/stack") as stack:
                found.append(f"{comm.read().strip()} ({stat.read().rsplit(')', 1)[1].split()[0]}): "
                             + " <- ".join(line.split()[-1].split("+")[0] for line in stack.read().splitlines()[:6]))
        except (OSError, IndexError):
            continue
    return "; ".join(found) or "no thread left to look at"


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@pytest.fixture(scope="session")
def host():
    assert os.geteuid() == 0, "the end-to-end suite needs root"
    with open("/proc/devices") as devices:
        assert "device-mapper" in devices.read(), "run through e2e/in-real-kernel.sh: no device-mapper"
    work = tempfile.mkdtemp(prefix="imgbackup-e2e.")
    subprocess.run([os.path.join(HERE, "backup-host.sh"), "start", work, str(PORT)], check=True)
    backup_host = BackupHost(work)
    with open(backup_host.config, "w") as config:  # the suite writes its own targets
        # Every failed run of the suite leaves its notice: notices/TARGET holds its IMGBACKUP_* environment.
        os.makedirs(os.path.join(work, "notices"))
        config.write('[notify]\ncommand = ["/bin/sh", "-c", "env | grep ^IMGBACKUP_ | sort > \\"$0/$IMGBACKUP_TARGET\\"", '
                     f'"{work}/notices"]\n')
    yield backup_host
    subprocess.run([os.path.join(HERE, "backup-host.sh"), "stop", work], check=False)
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def initialized(host):
    """One ext4 target, initialised once, shared by the tests that only open it."""
    name = host.add_target("main")
    host.ok("init", name)
    assert_nothing_left(host, name)
    return name


# --- one failed test must not fail the ones after it ----------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.imgbackup_failed = report.failed
    state = getattr(item, "imgbackup_state_near_deadline", None)
    if report.failed and state:
        report.sections.append(("the machine 45 s before the test's deadline", state))


# --- a hang is one failed test, with what the machine was waiting on -------

# Seconds before the test's deadline (run-suite.sh's --timeout) at which the
# machine's state is taken: while the test still waits, before its finally
# clauses let frozen processes go on.
STATE_BEFORE_DEADLINE = 45


def machine_state():
    """What is waiting on what: every process with its state and kernel wait
    channel, the kernel stacks of those in uninterruptible sleep (D) and of
    all blocked tasks (SysRq w), FUSE requests in flight, mounts, mappings,
    loop devices."""
    parts = []

    def command(*argv):
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=15)
            parts.append(f"$ {' '.join(argv)}\n{result.stdout}{result.stderr}")
        except (OSError, subprocess.TimeoutExpired) as error:
            parts.append(f"$ {' '.join(argv)}: {error}")

    command("ps", "-eLo", "pid,tid,ppid,stat,wchan:32,etimes,args", "--sort=pid")
    for stat in glob.glob("/proc/[0-9]*/task/[0-9]*/stat"):
        try:
            with open(stat) as f:
                name, fields = f.read().split(" (", 1)[1].rsplit(") ", 1)
            if fields.split()[0] == "D":
                task = os.path.dirname(stat)
                with open(f"{task}/stack") as f:
                    parts.append(f"kernel stack of {task} ({name}, D):\n{f.read()}")
        except (OSError, ValueError):
            continue
    for waiting in glob.glob("/sys/fs/fuse/connections/*/waiting"):
        with open(waiting) as f:
            parts.append(f"{waiting}: {f.read().strip()}")
    try:
        with open("/proc/sysrq-trigger", "w") as sysrq:
            sysrq.write("w")
    except OSError as error:
        parts.append(f"sysrq w: {error}")
    command("sh", "-c", "dmesg | tail -n 150")
    command("sh", "-c", "grep -E 'fuse|ext4|btrfs|/tmp' /proc/self/mounts")
    command("dmsetup", "table")
    command("losetup", "-a")
    return "\n".join(parts)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    deadline = item.config.getoption("timeout", None)
    timer = None
    if deadline and deadline > STATE_BEFORE_DEADLINE:
        def take():
            state = machine_state()
            item.imgbackup_state_near_deadline = state
            # Also now, past pytest's capture: a test stuck in the kernel
            # never gets to its report.
            with item.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
                sys.stderr.write(f"\n=== {item.nodeid}: the machine {STATE_BEFORE_DEADLINE} s before its deadline ===\n"
                                 f"{state}\n=== end of the machine's state ===\n")
                sys.stderr.flush()
        timer = threading.Timer(deadline - STATE_BEFORE_DEADLINE, take)
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer:
            timer.cancel()


@pytest.fixture(autouse=True)
def clear_what_a_failed_test_left(request):
    """A test that fails half-way leaves its target open, and every later
    test's "nothing left behind" would then fail on it. After a failed test
    only, close what it left (as an admin would: `close --force`), then
    sweep mounts, mappings, loop devices and FUSE connections."""
    yield
    if not getattr(request.node, "imgbackup_failed", False) or "host" not in request.fixturenames:
        return
    host = request.getfixturevalue("host")
    for record in glob.glob(os.path.join(host.work, "*run", "*.state.json")):
        runtime = os.path.dirname(record)
        state = runtime[:-len("run")] + "state"  # run and state, or LABEL-run and LABEL-state
        env = dict(host.env, IMGBACKUP_RUNTIME_DIR=runtime, IMGBACKUP_STATE_DIR=state)
        target = os.path.basename(record)[:-len(".state.json")]
        run_bounded([BIN, "--config", host.config, "close", "--force", target], env=env, timeout=180)
    for mount_point in sorted(mounts_under(host.work, host.runtime), key=len, reverse=True):
        run_bounded(["umount", "-l", mount_point])
    for mapping in imgbackup_mappings():
        run_bounded(["dmsetup", "remove", "--force", mapping])
    for loop in loop_devices_on(host.work):
        run_bounded(["losetup", "-d", f"/dev/{loop}"])
    for pid in bridge_processes():
        run_bounded(["kill", "-9", pid])
    for connection in orphaned_fuse_connections():
        with open(f"/sys/fs/fuse/connections/{connection}/abort", "w") as abort:
            abort.write("1")
    for leftover in glob.glob(os.path.join(host.work, "*run", "*.state.json")) + glob.glob(os.path.join(host.storage, "*.lock")):
        os.remove(leftover)


def run_bounded(argv, env=None, timeout=60):
    """Runs a clean-up command for at most `timeout` seconds, and at most 10
    more after killing it: one stuck in the kernel (an unmount on a dead
    remote) is left there, where subprocess.run would wait for it forever."""
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            print(f"clean-up: {' '.join(argv)} is stuck; left behind")


# --- what "nothing left behind" means --------------------------------------

def mounts_under(*prefixes):
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            mount_point = line.split()[4].replace("\\040", " ")
            if any(mount_point.startswith(prefix) for prefix in prefixes):
                found.append(mount_point)
    return found


def imgbackup_mappings():
    """imgbackup's device-mapper devices, as device-mapper itself lists them:
    a device created but never given a table has no /sys/block entry."""
    listed = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split()[0] for line in listed.splitlines() if line.startswith("imgbackup-"))


def loop_devices_on(prefix):
    found = []
    for path in glob.glob("/sys/block/loop*/loop/backing_file"):
        with open(path) as backing:
            if backing.read().strip().startswith(prefix):
                found.append(path.split("/")[3])
    return found


def processes_whose_argv(matches):
    """Pids (as text) of the processes whose argv (a list of bytes) `matches`."""
    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            argv = open(path, "rb").read().split(b"\0")
        except OSError:
            continue
        if argv and matches(argv):
            found.append(path.split("/")[2])
    return found


def bridge_processes():
    return processes_whose_argv(lambda argv: b"nbd-bridge" in argv)


def orphaned_fuse_connections():
    """FUSE connections with no mounted filesystem: what a lazy unmount of a
    hung sshfs or bridge leaves while something still holds it. The
    connection's number under /sys/fs/fuse/connections is its superblock's
    device number, which mountinfo shows as major:minor."""
    assert os.path.ismount("/sys/fs/fuse/connections"), "fusectl is not mounted (kernel-setup.sh mounts it)"
    mounted = set()
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype.startswith("fuse"):
                major, minor = (int(n) for n in fields[2].split(":"))
                mounted.add(os.makedev(major, minor))
    return [name for name in os.listdir("/sys/fs/fuse/connections") if int(name) not in mounted]


def assert_nothing_left(host, target, stale_lock=False):
    """No mount, bridge, mapping, loop device, FUSE connection or state record of `target`;
    and no lock file beside its image, unless `stale_lock` (a teardown after a
    hang cannot reach the remote to remove it)."""
    assert mounts_under(host.work, host.runtime) == [], "a mount was left behind"
    assert bridge_processes() == [], "an NBD bridge process was left behind"
    assert imgbackup_mappings() == [], "a dm-crypt mapping was left behind"
    assert loop_devices_on(host.runtime) == [] and loop_devices_on(host.work) == [], "a loop device was left behind"
    assert not os.path.exists(host.state_record(target)), "the state record was left behind"
    assert orphaned_fuse_connections() == [], "a FUSE connection was left behind"
    if not stale_lock:
        assert glob.glob(os.path.join(host.storage, "*.lock")) == [], "a remote lock file was left behind"


def sha256_of(path, limit=None):
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        remaining = limit
        while remaining is None or remaining > 0:
            chunk = source.read(1 << 20 if remaining is None else min(1 << 20, remaining))
            if not chunk:
                break
            digest.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return digest.hexdigest()


def tree_digest(root):
    """sha256 of every file under root, by relative path (lost+found and
    imgbackup's own generation marker at the filesystem's root aside)."""
    result = {}
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d != "lost+found"]
        for name in files:
            if name == ".imgbackup-generation" and directory == root:
                continue
            path = os.path.join(directory, name)
            result[os.path.relpath(path, root)] = sha256_of(path)
    return result


# About how many seconds each file takes alone in one VM under emulation
# (a clean clone's `.ci/run` of 2026-12-06, one virtual CPU, setup and teardown included,
# rounded), for splitting the suite over several VMs (run-sharded.sh). Only
# the balance depends on them; a file missing here counts as
# SHARD_DEFAULT_SECONDS.
SHARD_SECONDS = {
    "test_s3.py": 655, "test_faults.py": 405, "test_run.py": 250, "test_unattended.py": 245,
    "test_keys.py": 240, "test_pull.py": 235, "test_core_path.py": 215, "test_hostile_host.py": 175,
    "test_restore.py": 175, "test_nbd.py": 160, "test_check.py": 140, "test_big_image.py": 110,
    "test_resize.py": 105, "test_read_only.py": 95, "test_authorized_keys.py": 95, "test_bad_input.py": 85,
    "test_sftp_only.py": 80, "test_status.py": 70, "test_doctor.py": 60, "test_lock.py": 55,
    "test_setup.py": 45, "test_wire.py": 35, "test_metrics.py": 15,
}
SHARD_DEFAULT_SECONDS = 100


def shard_of_each_file(files, count):
    """Whole files to `count` shards, longest first onto the lightest shard."""
    loads = [0] * count
    shard = {}
    for name in sorted(files, key=lambda f: (-SHARD_SECONDS.get(f, SHARD_DEFAULT_SECONDS), f)):
        lightest = loads.index(min(loads))
        shard[name] = lightest + 1
        loads[lightest] += SHARD_SECONDS.get(name, SHARD_DEFAULT_SECONDS)
    return shard


# Variants of what other tests already prove, left out of `make test` (and
# so CI) to keep it within CI's time, and run by `make e2e-long` (run-suite.sh
# --long). Each names the test that proves the same in every run.
LONG_TESTS = {
    # btrfs growing: test_resize.py's ext4 tests grow a closed and an open target.
    "test_resize.py::test_btrfs_grows_too",
    # The restricted line end to end: test_setup.py runs doctor, init, run and list through it.
    "test_authorized_keys.py::test_init_open_run_and_trim_work_through_the_printed_line",
    # A frozen nbdkit: test_faults.py's mid-copy freeze; trim's own hang: test_sftp_only/test_nbd.
    "test_faults.py::test_nbdkit_frozen_mid_trim_exits_3_and_leaves_nothing",
    # 1 TiB btrfs: the 1 TiB ext4 test (init cost, flat allocation, check after a frozen close).
    "test_big_image.py::test_a_1_tib_btrfs_image_is_cheap_to_make_and_stays_flat",
    # trim through an NBD URI: the same trim through nbdkit over ssh.
    "test_nbd.py::test_trim_gives_deleted_space_back_to_the_remote[shared_nbdkit_uri]",
    # borg extract: test_run.py's borg test restores through borg too.
    "test_restore.py::test_borg_extract",
}


def pytest_collection_modifyitems(config, items):
    """Without IMGBACKUP_E2E_LONG (run-suite.sh --long), leave LONG_TESTS out,
    and say so. IMGBACKUP_SHARD=K/N (run-suite.sh --shard=K/N): keep the
    files of shard K."""
    if not os.environ.get("IMGBACKUP_E2E_LONG"):
        long = [item for item in items if item.nodeid.split("/")[-1] in LONG_TESTS]
        if long:
            print(f"\ne2e: leaving out {len(long)} long variants (make e2e-long runs them): "
                  + ", ".join(item.nodeid.split("/")[-1] for item in long))
            config.hook.pytest_deselected(items=long)
            items[:] = [item for item in items if item not in long]
    spec = os.environ.get("IMGBACKUP_SHARD")
    if not spec:
        return
    index, count = (int(part) for part in spec.split("/"))
    files = {os.path.basename(item.fspath) for item in items}
    shard = shard_of_each_file(files, count)
    kept = [item for item in items if shard[os.path.basename(item.fspath)] == index]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


def pytest_sessionfinish(session, exitstatus):
    """A shard that a -k filter left without tests has passed, not failed (pytest's 5)."""
    if os.environ.get("IMGBACKUP_SHARD") and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK


def pytest_terminal_summary(terminalreporter):
    if not TIMINGS:
        return
    terminalreporter.section("imgbackup command times (this kernel)")
    for command, times in sorted(TIMINGS.items()):
        terminalreporter.write_line(
            f"{command:6s} n={len(times):2d}  min {min(times):6.1f}s  mean {sum(times) / len(times):6.1f}s  max {max(times):6.1f}s")
