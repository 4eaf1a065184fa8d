"""imgbackup run: the full cycle with each copy method, retention, hooks,
failures and run --all, black-box, in a real kernel (issue 4).

Runs are given their time with the hidden --now option, so retention over
days is exercised in minutes.
"""
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import BIN, assert_nothing_left, tree_digest

DAY = ["2026-03-01T03:00:00Z", "2026-03-02T03:00:00Z", "2026-03-03T03:00:00Z"]
POINT = ["2026-03-01T030000Z", "2026-03-02T030000Z", "2026-03-03T030000Z"]


def make_source(root):
    """A small tree with what archive mode must keep: several owners, a
    hard link, a symlink, an xattr, modes."""
    os.makedirs(os.path.join(root, "etc", "app"), exist_ok=True)
    os.makedirs(os.path.join(root, "home", "alice", ".cache"), exist_ok=True)
    files = {
        "etc/app/config": b"setting = 1\n",
        "etc/app/big.bin": os.urandom(3 << 20),
        "home/alice/notes.txt": b"unchanged notes\n",
        "home/alice/.cache/junk": b"cache, excluded\n",
    }
    for relative, data in files.items():
        with open(os.path.join(root, relative), "wb") as out:
            out.write(data)
    os.chown(os.path.join(root, "home", "alice", "notes.txt"), 1001, 1002)
    os.chown(os.path.join(root, "etc", "app", "config"), 0, 4242)
    os.chmod(os.path.join(root, "etc", "app", "config"), 0o640)
    os.link(os.path.join(root, "etc", "app", "big.bin"), os.path.join(root, "etc", "app", "big.link"))
    os.symlink("config", os.path.join(root, "etc", "app", "config.link"))
    # trusted.*: root may set it on the VM's tmpfs (user.* needs Linux 6.6 there).
    os.setxattr(os.path.join(root, "home", "alice", "notes.txt"), "trusted.tag", b"kept")
    return root


def change_source(root, generation):
    path = os.path.join(root, "etc", "app", "config")
    with open(path, "wb") as out:
        out.write(f"setting = {generation}\n".encode())
    # A day later, as far as rsync's quick check can tell.
    os.utime(path, (1_700_000_000 + generation * 86_400,) * 2)


def run_records(host, target):
    path = os.path.join(host.state, target, "runs.jsonl")
    with open(path) as history:
        return [json.loads(line) for line in history if line.strip()]


def opened(host, target):
    """Context: open the target, yield its mount point, close it."""
    class Opened:
        def __enter__(self):
            self.mount = host.ok("open", target).stdout.strip()
            return self.mount

        def __exit__(self, *exc):
            host.ok("close", target)
            assert_nothing_left(host, target)
    return Opened()


def without_excluded(digest):
    return {path: value for path, value in digest.items() if "/.cache/" not in path}


def test_rsync_runs_make_incremental_snapshots_and_retention_prunes(host):
    source = make_source(os.path.join(host.work, "src-rsync"))
    hook_log = os.path.join(host.work, "rsync-hooks.log")
    name = host.add_target("rs", tables={
        "copy": {"method": "rsync", "sources": [f"{source}/etc", f"{source}/home"],
                 "exclude": [f"{source}/home/*/.cache"]},
        "retention": {"keep_daily": 2},
        "hooks": {"pre": [["sh", "-c", f'echo "pre $IMGBACKUP_TARGET $IMGBACKUP_MOUNT" >> {hook_log}']],
                  "post": [["sh", "-c", f'echo "post $IMGBACKUP_RESULT" >> {hook_log}']]},
    })
    host.clone_image(name)
    for generation, day in enumerate(DAY):
        if generation:
            change_source(source, generation)
        result = host.ok("run", name, "--now", day)
        assert f"{name}: backed up snapshots/{POINT[generation]}" in result.stdout
        assert_nothing_left(host, name)

    mount_point = os.path.join(host.work, "mnt", name)
    assert open(hook_log).read().splitlines() == [f"pre {name} {mount_point}", "post success"] * 3
    records = run_records(host, name)
    assert [r["result"] for r in records] == ["success"] * 3
    assert [r["exitCode"] for r in records] == [0, 0, 0]
    assert records[0]["bytesWritten"] >= 3 << 20, "the first run wrote the whole tree"
    # The third run only carried one small changed file; the first carried 3 MiB.
    assert records[2]["bytesCopied"] < 4096 < records[0]["bytesCopied"]
    assert records[2]["pruned"] == [POINT[0]]

    with opened(host, name) as mount:
        snapshots = os.path.join(mount, "snapshots")
        assert sorted(os.listdir(snapshots)) == [POINT[1], POINT[2], "latest"]
        assert os.readlink(os.path.join(snapshots, "latest")) == POINT[2]
        newest = os.path.join(snapshots, POINT[2]) + source
        older = os.path.join(snapshots, POINT[1]) + source
        assert tree_digest(newest) == without_excluded(tree_digest(source))
        assert not os.path.exists(os.path.join(newest, "home", "alice", ".cache"))
        # Incremental: unchanged files are hard links to the previous snapshot.
        assert os.stat(f"{newest}/etc/app/big.bin").st_ino == os.stat(f"{older}/etc/app/big.bin").st_ino
        assert os.stat(f"{newest}/etc/app/config").st_ino != os.stat(f"{older}/etc/app/config").st_ino
        assert open(f"{older}/etc/app/config").read() == "setting = 1\n"
        # Archive mode: owners by number, modes, hard links, symlinks, xattrs.
        notes = os.stat(f"{newest}/home/alice/notes.txt")
        assert (notes.st_uid, notes.st_gid) == (1001, 1002)
        config = os.stat(f"{newest}/etc/app/config")
        assert (config.st_gid, config.st_mode & 0o777) == (4242, 0o640)
        assert os.stat(f"{newest}/etc/app/big.link").st_ino == os.stat(f"{newest}/etc/app/big.bin").st_ino
        assert os.readlink(f"{newest}/etc/app/config.link") == "config"
        assert os.getxattr(f"{newest}/home/alice/notes.txt", "trusted.tag") == b"kept"


def test_a_failing_copy_step_exits_2_closes_and_is_recorded(host):
    source = make_source(os.path.join(host.work, "src-fail"))
    hook_log = os.path.join(host.work, "fail-hooks.log")
    name = host.add_target("fails", tables={
        "copy": {"method": "rsync", "sources": [f"{source}/etc", f"{host.work}/no-such-directory"]},
        "hooks": {"post": [["sh", "-c", f'echo "post $IMGBACKUP_RESULT" >> {hook_log}']]},
    })
    host.clone_image(name)
    result = host.run("run", name, "--now", DAY[0])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgbackup: error: the copy step failed: rsync exited with status 23")
    assert_nothing_left(host, name)
    assert open(hook_log).read() == "post failure\n"
    record = run_records(host, name)[-1]
    assert (record["result"], record["exitCode"]) == ("failure", 2)
    assert "rsync exited with status 23" in record["error"]
    # Nothing half-made counts as a backup point; the next good run works.
    with opened(host, name) as mount:
        assert os.listdir(os.path.join(mount, "snapshots")) == [".incomplete"]


def test_a_failing_pre_hook_stops_the_copy(host):
    source = make_source(os.path.join(host.work, "src-prehook"))
    name = host.add_target("prehook", tables={
        "copy": {"method": "rsync", "sources": [f"{source}/etc"]},
        "hooks": {"pre": [["sh", "-c", "echo database would not stop >&2; exit 3"]]},
    })
    host.clone_image(name)
    result = host.run("run", name)
    assert result.returncode == 2
    assert "pre-hook sh -c" in result.stderr and "database would not stop" in result.stderr
    assert_nothing_left(host, name)
    with opened(host, name) as mount:
        assert not os.path.exists(os.path.join(mount, "snapshots"))


def test_borg_runs_prune_and_restore(host):
    source = make_source(os.path.join(host.work, "src-borg"))
    passphrase = os.path.join(host.work, "keys", "borg.pass")
    with open(passphrase, "w") as out:
        out.write("correct horse battery staple\n")
    os.chmod(passphrase, 0o600)
    name = host.add_target("bg", size="96M", tables={
        "copy": {"method": "borg", "sources": [f"{source}/etc", f"{source}/home"],
                 "exclude": [f"{source}/home/*/.cache"], "borg_passphrase_file": passphrase},
        "retention": {"keep_daily": 1},
    })
    host.clone_image(name)
    # Two runs, not three: each borg call costs seconds under emulation.
    for generation, day in enumerate(DAY[:2]):
        if generation:
            change_source(source, generation)
        result = host.ok("run", name, "--now", day, timeout=600)
        assert f"{name}: backed up borg::{POINT[generation]}" in result.stdout
        assert_nothing_left(host, name)
    assert run_records(host, name)[-1]["pruned"] == [POINT[0]]

    borg_env = dict(os.environ, BORG_PASSPHRASE="correct horse battery staple",
                    BORG_BASE_DIR=os.path.join(host.work, "borg-check"),
                    BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
    with opened(host, name) as mount:
        repository = os.path.join(mount, "borg")
        listing = subprocess.run(["borg", "list", "--short", repository], env=borg_env,
                                 capture_output=True, text=True, check=True)
        assert listing.stdout.split() == [POINT[1]]
        info = subprocess.run(["borg", "info", repository], env=borg_env, capture_output=True, text=True, check=True)
        assert "Encrypted: Yes" in info.stdout
        restore = os.path.join(host.work, "restore-borg")
        os.makedirs(restore)
        subprocess.run(["borg", "extract", "--numeric-ids", f"{repository}::{POINT[1]}"], cwd=restore,
                       env=borg_env, check=True)
        restored = os.path.join(restore, source.lstrip("/"))
        assert tree_digest(restored) == without_excluded(tree_digest(source))
        assert os.stat(f"{restored}/home/alice/notes.txt").st_uid == 1001


@pytest.fixture
def btrfs_source(host):
    """A local btrfs filesystem (on a loop device) with a subvolume to back up,
    outside the backup host's directory (which must end up with no mounts)."""
    base = tempfile.mkdtemp(prefix="imgbackup-srcfs.")
    image = os.path.join(base, "srcfs.img")
    mount = os.path.join(base, "mnt")
    with open(image, "wb") as out:
        out.truncate(160 << 20)
    subprocess.run(["mkfs.btrfs", "-q", image], check=True)
    os.makedirs(mount, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", image, mount], check=True)
    subprocess.run(["btrfs", "-q", "subvolume", "create", os.path.join(mount, "@data")], check=True)
    make_source(os.path.join(mount, "@data"))
    yield mount
    subprocess.run(["umount", mount], check=False)
    shutil.rmtree(base, ignore_errors=True)


def received(mount, point):
    return os.path.join(mount, "snapshots", point)


def test_btrfs_send_runs_are_incremental_and_a_lost_parent_means_a_full_send(host, btrfs_source):
    subvolume = os.path.join(btrfs_source, "@data")
    quiesce_log = os.path.join(host.work, "quiesce.log")
    name = host.add_target("bt", size="160M", filesystem="btrfs", tables={
        "copy": {"method": "btrfs-send", "source_subvolume": subvolume,
                 "quiesce_command": ["sh", "-c", f"echo quiesce >> {quiesce_log}"],
                 "resume_command": ["sh", "-c", f"echo resume >> {quiesce_log}"]},
        "retention": {"keep_daily": 1},
    })
    host.ok("init", name)
    local = os.path.join(btrfs_source, ".imgbackup-snapshots", name)

    host.ok("run", name, "--now", DAY[0])
    change_source(subvolume, 1)
    host.ok("run", name, "--now", DAY[1])
    records = run_records(host, name)
    assert [r["incremental"] for r in records] == [False, True]
    assert records[1]["pruned"] == [POINT[0]]
    assert open(quiesce_log).read().split() == ["quiesce", "resume"] * 2
    # Only the newest local snapshot is kept: the next run's parent.
    assert os.listdir(local) == [POINT[1]]
    assert_nothing_left(host, name)

    # The parent is gone locally: the next send is a full one, and works.
    subprocess.run(["btrfs", "-q", "subvolume", "delete", os.path.join(local, POINT[1])], check=True)
    change_source(subvolume, 2)
    host.ok("run", name, "--now", DAY[2])
    assert run_records(host, name)[-1]["incremental"] is False
    assert_nothing_left(host, name)

    with opened(host, name) as mount:
        assert sorted(os.listdir(os.path.join(mount, "snapshots"))) == [POINT[2]]
        snapshot = received(mount, POINT[2])
        assert tree_digest(snapshot) == tree_digest(subvolume)
        show = subprocess.run(["btrfs", "subvolume", "show", snapshot], capture_output=True, text=True, check=True)
        assert "readonly" in show.stdout
        assert os.stat(f"{snapshot}/home/alice/notes.txt").st_uid == 1001


def test_command_method_gets_mount_and_target(host):
    source = make_source(os.path.join(host.work, "src-command"))
    name = host.add_target("cmd", tables={
        "copy": {"method": "command",
                 "command": ["sh", "-c",
                             '[ -d {mount}/copy ] || { echo "no copy directory in $IMGBACKUP_MOUNT" >&2; exit 4; }; '
                             'cp -a "$1/." "$IMGBACKUP_MOUNT/copy/" && echo "$IMGBACKUP_TARGET" > {mount}/by-{target}',
                             "sh", f"{source}/etc"]},
    })
    host.clone_image(name)
    result = host.run("run", name)
    assert result.returncode == 2
    mount_point = os.path.join(host.work, "mnt", name)
    assert result.stderr == (f"imgbackup: error: the copy step failed: sh exited with status 4: "
                             f"no copy directory in {mount_point}\n")
    assert_nothing_left(host, name)
    with opened(host, name) as mount:
        os.makedirs(os.path.join(mount, "copy"))
    host.ok("run", name)
    with opened(host, name) as mount:
        assert tree_digest(os.path.join(mount, "copy")) == tree_digest(f"{source}/etc")
        assert open(os.path.join(mount, f"by-{name}")).read() == f"{name}\n"


def test_run_all_runs_each_target_and_reports_each(host):
    source = make_source(os.path.join(host.work, "src-all"))
    other = host.with_config("all.toml")
    other.add_target("all_ok", tables={"copy": {"method": "rsync", "sources": [f"{source}/etc"]}})
    other.add_target("all_broken", tables={"copy": {"method": "rsync", "sources": [f"{host.work}/gone"]}})
    other.add_target("all_ok2", tables={"copy": {"method": "rsync", "sources": [f"{source}/home"]}})
    other.add_target("all_no_copy")
    for name in ["all_ok", "all_broken", "all_ok2"]:
        other.clone_image(name)
    result = other.run("run", "--all", timeout=900)
    assert result.returncode == 2, "the first failure's status"
    assert "all_ok: backed up snapshots/" in result.stdout
    assert "all_ok2: backed up snapshots/" in result.stdout
    assert "imgbackup: error: all_broken: the copy step failed" in result.stderr
    assert "all_no_copy" not in result.stdout + result.stderr
    for name in ["all_ok", "all_broken", "all_ok2"]:
        assert_nothing_left(other, name)
    assert [r["result"] for r in run_records(other, "all_ok2")] == ["success"]
