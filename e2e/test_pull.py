"""Pull backups (issue 8): a second loopback sshd on its own port is the
server whose files are backed up; imgbackup mounts it read-only with the key
`authorized-keys --source` allowed there (read-only SFTP, nothing else),
copies from it into the image, and tears it down. Owners and modes arrive
by number, the server refuses writes and commands, borg does not re-read
unchanged pulled files, and a frozen server ends the run within the stall
with nothing left behind."""
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import assert_nothing_left, tree_digest
from test_faults import STALL, MiB, freeze_expecting_hang, start_run, wait_until_copying, write_random_files

SOURCE_PORT = 2225


class SourceServer:
    def __init__(self, base, key, keys_file):
        self.base = base
        self.key = key
        self.keys_file = keys_file
        self.pid_file = os.path.join(base, "sshd.pid")

    def source(self, path):
        return f"ssh://root@127.0.0.1:{SOURCE_PORT}{path}"

    def copy_table(self, method, *paths, **extra):
        return {"method": method, "sources": [self.source(path) for path in paths],
                "source_identity_file": self.key,
                "source_ssh_options": [f"UserKnownHostsFile={os.path.dirname(self.key)}/known_hosts",
                                       "StrictHostKeyChecking=yes"], **extra}

    def sessions(self):
        """Every process of the server's connections (not the listener)."""
        listener = open(self.pid_file).read().strip()
        found, queue = [], [listener]
        while queue:
            children = subprocess.run(["pgrep", "-P", queue.pop()], capture_output=True, text=True).stdout.split()
            found += [int(pid) for pid in children]
            queue += children
        return found

    def client(self, program, *args, stdin=None):
        port = ["-P" if program == "sftp" else "-p", str(SOURCE_PORT)]
        options = ["-o", f"IdentityFile={self.key}", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                   "-o", f"UserKnownHostsFile={os.path.dirname(self.key)}/known_hosts"]
        return subprocess.run([program, *port, *options, *args], input=stdin, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def server(host):
    """The source server: its own sshd on 127.0.0.1:2225 whose
    authorized_keys holds the line `authorized-keys --source` printed."""
    base = tempfile.mkdtemp(prefix="imgbackup-pull.")
    os.chmod(base, 0o755)
    keys = os.path.join(base, "client")
    os.makedirs(keys)
    key = os.path.join(keys, "pull_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    host_key = open(f"{host.work}/ssh/host_ed25519.pub").read().split()[:2]
    with open(os.path.join(keys, "known_hosts"), "w") as known:
        known.write(f"[127.0.0.1]:{SOURCE_PORT} {' '.join(host_key)}\n")
    server = SourceServer(base, key, os.path.join(base, "authorized_keys"))
    # Every source the tests pull lies under base: the line's sandbox holds base alone, read-only.
    name = host.add_target("pull_keys", tables={"copy": server.copy_table("rsync", base)})
    line = host.ok("authorized-keys", "--source", name).stdout
    assert line.startswith('restrict,command="') and line.endswith(f'" {open(key + ".pub").read().strip()}\n')
    assert "sftp-server' -R -P symlink,hardlink" in line and line.count("\n") == 1
    with open(server.keys_file, "w") as out:
        out.write(line)
    # UsePAM: root is locked on these machines (see backup-host.sh).
    subprocess.run(["/usr/sbin/sshd", "-f", "/dev/null", "-o", "ListenAddress=127.0.0.1",
                    "-o", f"Port={SOURCE_PORT}", "-o", f"HostKey={host.work}/ssh/host_ed25519",
                    "-o", f"AuthorizedKeysFile={server.keys_file}", "-o", f"PidFile={server.pid_file}",
                    "-o", "UsePAM=yes", "-o", "PermitRootLogin=prohibit-password", "-o", "StrictModes=no",
                    "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
                    "-o", "Subsystem=sftp /usr/lib/openssh/sftp-server", "-E", os.path.join(base, "sshd.log")],
                   check=True)
    for _ in range(50):
        if os.path.exists(server.pid_file) and os.path.getsize(server.pid_file):
            break
        time.sleep(0.1)
    yield server
    subprocess.run(["kill", open(server.pid_file).read().strip()], check=False)
    shutil.rmtree(base, ignore_errors=True)


def make_tree(root):
    """Files of several owners and modes, a symlink, and a cache to exclude."""
    files = {"etc/app/config": (b"setting = 1\n", 0, 4242, 0o640),
             "etc/app/big.bin": (os.urandom(3 * MiB), 2000, 2000, 0o600),
             "home/alice/notes.txt": (b"alice's notes\n", 1001, 1002, 0o644),
             "home/alice/.cache/junk": (b"cache, excluded\n", 1001, 1002, 0o644)}
    for relative, (data, uid, gid, mode) in files.items():
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(data)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    os.symlink("config", os.path.join(root, "etc", "app", "config.link"))
    return root


def test_rsync_pulls_owners_and_modes_and_the_server_stays_read_only(host, server):
    tree = make_tree(os.path.join(server.base, "srv"))
    name = host.add_target("pull_rsync", tables={"copy": server.copy_table(
        "rsync", f"{tree}/etc", f"{tree}/home", exclude=[f"{tree}/home/*/.cache"])})
    host.clone_image(name)
    doctor = host.run("doctor", name)
    assert doctor.returncode == 0, doctor.stdout
    assert f"ok    {name}: the source host root@127.0.0.1 port {SOURCE_PORT} reachable over SFTP" in doctor.stdout.splitlines()

    host.ok("run", name, "--now", "2026-03-01T03:00:00Z")
    assert_nothing_left(host, name)
    with open(os.path.join(tree, "etc", "app", "config"), "wb") as out:
        out.write(b"setting = 2\n")
    os.utime(os.path.join(tree, "etc", "app", "config"), (1_700_086_400,) * 2)
    host.ok("run", name, "--now", "2026-03-02T03:00:00Z")
    assert_nothing_left(host, name)

    mount = host.ok("open", name).stdout.strip()
    try:
        snapshots = os.path.join(mount, "snapshots")
        newest = os.path.join(snapshots, "latest", "127.0.0.1") + tree
        older = os.path.join(snapshots, "2026-03-01T030000Z", "127.0.0.1") + tree
        expected = {path: digest for path, digest in tree_digest(tree).items() if "/.cache/" not in path}
        assert tree_digest(newest) == expected
        assert open(f"{older}/etc/app/config").read() == "setting = 1\n"
        for relative, owner, mode in [("etc/app/config", (0, 4242), 0o640), ("etc/app/big.bin", (2000, 2000), 0o600),
                                      ("home/alice/notes.txt", (1001, 1002), 0o644)]:
            stat = os.lstat(os.path.join(newest, relative))
            assert ((stat.st_uid, stat.st_gid), stat.st_mode & 0o777) == (owner, mode), relative
        assert os.readlink(os.path.join(newest, "etc", "app", "config.link")) == "config"
        assert not os.path.exists(os.path.join(newest, "home", "alice", ".cache")), "the anchored exclude holds for pulled trees"
        # Incremental across runs: sshfs keeps the times, so --link-dest links.
        assert os.stat(f"{newest}/etc/app/big.bin").st_ino == os.stat(f"{older}/etc/app/big.bin").st_ino
    finally:
        host.ok("close", name)
    assert_nothing_left(host, name)

    planted = os.path.join(tree, "planted")
    write = server.client("sftp", "-b", "-", "root@127.0.0.1", stdin=f"put /etc/hostname {planted}\n")
    assert write.returncode != 0 and not os.path.exists(planted), "the source key must not write"
    shell = server.client("ssh", "root@127.0.0.1", "id")
    assert "uid=" not in shell.stdout, "the source key must not run commands"
    # It reads the source paths and nothing else of the host, even as root (issue 17).
    for path in ["/etc/shadow", "/root/.ssh/authorized_keys", f"{host.work}/keys/demo.key"]:
        fetched = server.client("sftp", "-b", "-", "root@127.0.0.1", stdin=f"get {path} /tmp/fetched\n")
        assert fetched.returncode != 0 and not os.path.exists("/tmp/fetched"), f"{path} was readable through the source key"
    host.discard(name)


def test_doctor_and_run_name_a_missing_source_and_a_refused_key(host, server):
    missing = os.path.join(server.base, "no-such-directory")
    name = host.add_target("pull_missing", tables={"copy": server.copy_table("rsync", missing)})
    host.clone_image(name)
    doctor = host.run("doctor", name)
    assert doctor.returncode == 2, doctor.stdout
    assert f"FAIL  {name}: the source {missing} is not on 127.0.0.1 -> fix [target.{name}.copy] sources, or create it there" in doctor.stdout.splitlines()

    table = server.copy_table("rsync", "/etc")
    table["source_identity_file"] = f"{host.work}/ssh/client_ed25519"  # not in the server's authorized_keys
    name = host.add_target("pull_refused", image="pull_missing.img", tables={"copy": table})
    doctor = host.run("doctor", name)
    assert doctor.returncode == 6, doctor.stdout
    assert any(line.startswith(f"FAIL  {name}: cannot reach the source host root@127.0.0.1 port {SOURCE_PORT} over SFTP: ")
               and line.endswith(f"try: ssh -p {SOURCE_PORT} root@127.0.0.1") for line in doctor.stdout.splitlines()), doctor.stdout
    run = host.run("run", name)
    assert run.returncode == 6, run.stderr
    assert "failed to mount root@127.0.0.1:/ over sshfs" in run.stderr
    assert_nothing_left(host, name)
    host.discard("pull_missing")


def test_borg_does_not_read_unchanged_pulled_files_again(host, server):
    """sshfs makes up inode numbers per mount, in the order it is asked for
    paths: with borg's default files cache (ctime, size, inode) a pulled file
    is read again whenever files before it came or went. On a strictatime
    tmpfs any read moves the atime: it must not move."""
    tree = os.path.join(server.base, "atime")
    os.makedirs(tree)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "strictatime,size=16m", "atime", tree], check=True)
    try:
        big = os.path.join(tree, "big.bin")
        with open(big, "wb") as out:
            out.write(os.urandom(3 * MiB))
        # borg forgets the files changed in the newest second it saw (they
        # may change again within it), and SFTP times are whole seconds: the
        # unchanged file is an hour older than the one that changes.
        os.utime(big, (time.time() - 3600,) * 2)
        with open(os.path.join(tree, "small.txt"), "w") as out:
            out.write("first\n")
        name = host.add_target("pull_borg", tables={"copy": server.copy_table("borg", tree)})
        host.clone_image(name)
        host.ok("run", name, "--now", "2026-03-01T03:00:00Z")
        read_by_first_run = os.stat(big).st_atime_ns
        time.sleep(1.1)
        with open(os.path.join(tree, "small.txt"), "w") as out:
            out.write("second\n")
        # New files, looked up before big.bin (a tmpfs lists the newest
        # first): sshfs numbers inodes in lookup order, so big.bin's changes.
        for index in range(5):
            with open(os.path.join(tree, f"new-{index}.txt"), "w") as out:
                out.write(f"new {index}\n")
        host.ok("run", name, "--now", "2026-03-02T03:00:00Z")
        assert os.stat(big).st_atime_ns == read_by_first_run, "borg read the unchanged file again"
        assert_nothing_left(host, name)

        mount = host.ok("open", name).stdout.strip()
        try:
            restore = os.path.join(host.work, "restore-pull-borg")
            os.makedirs(restore)
            borg_env = dict(os.environ, BORG_BASE_DIR=os.path.join(host.work, "borg-pull-check"),
                            BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes", BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
            subprocess.run(["borg", "extract", f"{mount}/borg::2026-03-02T030000Z"], cwd=restore, env=borg_env, check=True)
            assert tree_digest(os.path.join(restore, "127.0.0.1") + tree) == tree_digest(tree)
        finally:
            host.ok("close", name)
        shutil.rmtree(restore, ignore_errors=True)
    finally:
        subprocess.run(["umount", tree], check=False)
    host.discard(name)


def test_a_frozen_source_server_ends_the_run_within_the_stall(host, server):
    tree = os.path.join(server.base, "frozen")
    write_random_files(tree, 12, 4 * MiB)  # minutes at this VM's transport speed
    name = host.add_target("pull_frozen", tables={
        "copy": server.copy_table("rsync", tree), "timeouts": {"stall": f"{STALL}s", "teardown": "10s"}})
    host.clone_image(name)
    run = start_run(host, name)
    wait_until_copying(host, name)
    freeze_expecting_hang(run, "source server frozen",
                          f"imgbackup: error: the backup hung: the source host 127.0.0.1 did not answer for {STALL}s",
                          name="sshd", pids=server.sessions())
    # The image's own transport was fine: it closed cleanly, lock file and all.
    assert_nothing_left(host, name)
    host.ok("run", name)
    assert_nothing_left(host, name)
    shutil.rmtree(tree, ignore_errors=True)
    host.discard(name)
