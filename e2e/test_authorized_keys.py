"""The authorized_keys line of `imgbackup authorized-keys` (issue 6), installed
for a dedicated user of a second loopback sshd: init, open, run and trim work
through it, and the same key cannot run a command or read outside the backup
directory."""
import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import assert_nothing_left, tree_digest

RESTRICTED_PORT = 2224
USER, UID = "imgbremote", 64123


@pytest.fixture(scope="module")
def restricted(host):
    """A user that exists only in this VM's mount namespace (bind-mounted
    passwd, group and shadow), its backup directory, and an sshd whose
    authorized_keys holds exactly what `authorized-keys` printed."""
    base = tempfile.mkdtemp(prefix="imgbackup-restricted.")
    os.chmod(base, 0o755)
    accounts = os.path.join(base, "etc")
    os.makedirs(accounts)
    added = {"passwd": f"{USER}:x:{UID}:{UID}:imgbackup remote:/nonexistent:/bin/sh\n",
             "group": f"{USER}:x:{UID}:\n", "shadow": f"{USER}:*:19000:0:99999:7:::\n"}
    for name, line in added.items():
        shutil.copy(f"/etc/{name}", os.path.join(accounts, name))
        with open(os.path.join(accounts, name), "a") as out:
            out.write(line)
        subprocess.run(["mount", "--bind", os.path.join(accounts, name), f"/etc/{name}"], check=True)
    storage = os.path.join(base, "backups", "laptop")
    os.makedirs(storage)
    os.chown(storage, UID, UID)
    with open(os.path.join(base, "backups", "neighbour.txt"), "w") as out:
        out.write("not for this key\n")
    source = os.path.join(base, "source")
    os.makedirs(source)
    with open(os.path.join(source, "data.bin"), "wb") as out:
        out.write(os.urandom(1 << 20))
    name = host.add_target("restricted", size="96M", remote=f"{USER}@127.0.0.1:{storage}", port=RESTRICTED_PORT,
                           tables={"copy": {"method": "rsync", "sources": [source]},
                                   "nbd": {"command": ["nbdkit", "--single", "--exit-with-parent", "file",
                                                       os.path.join(storage, "restricted.img")]}})
    line = host.ok("authorized-keys", name).stdout
    assert line.count("\n") == 1 and line.startswith('restrict,command="')
    keys = os.path.join(base, "authorized_keys")
    with open(keys, "w") as out:
        out.write(line)
    pid_file = os.path.join(base, "sshd.pid")
    subprocess.run(["/usr/sbin/sshd", "-f", "/dev/null", "-o", "ListenAddress=127.0.0.1",
                    "-o", f"Port={RESTRICTED_PORT}", "-o", f"HostKey={host.work}/ssh/host_ed25519",
                    "-o", f"AuthorizedKeysFile={keys}", "-o", f"PidFile={pid_file}", "-o", "UsePAM=yes",
                    "-o", "StrictModes=no", "-o", "PasswordAuthentication=no",
                    "-o", "Subsystem=sftp /usr/lib/openssh/sftp-server", "-E", os.path.join(base, "sshd.log")],
                   check=True)
    with open(os.path.join(host.work, "ssh", "known_hosts"), "a") as known:
        host_key = open(f"{host.work}/ssh/host_ed25519.pub").read().split()[:2]
        known.write(f"[127.0.0.1]:{RESTRICTED_PORT} {' '.join(host_key)}\n")
    yield name, storage, base, source
    subprocess.run(["kill", open(pid_file).read().strip()], check=False)
    for name in added:
        subprocess.run(["umount", f"/etc/{name}"], check=False)
    shutil.rmtree(base, ignore_errors=True)


def client(host, program, *args, stdin=None):
    options = ["-o", f"IdentityFile={host.work}/ssh/client_ed25519", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
               "-o", f"UserKnownHostsFile={host.work}/ssh/known_hosts"]
    port = ["-P" if program == "sftp" else "-p", str(RESTRICTED_PORT)]
    result = subprocess.run([program, *port, *options, *args], input=stdin, capture_output=True, text=True, timeout=60)
    print(f"$ {program} {' '.join(args)} -> {result.returncode}\n{result.stdout}{result.stderr}")
    return result


def test_init_open_run_and_trim_work_through_the_printed_line(host, restricted):
    name, storage, base, source = restricted
    host.ok("init", name)
    assert os.stat(os.path.join(storage, "restricted.img")).st_uid == UID
    mount = host.ok("open", name).stdout.strip()
    with open(os.path.join(mount, "marker"), "w") as out:
        out.write("written through the restricted key\n")
    host.ok("close", name)
    host.ok("run", name)
    assert_nothing_left(host, name)
    host.ok("trim", name)
    assert_nothing_left(host, name)
    # doctor looks at the remote through the same line: SFTP's statvfs works inside the sandbox.
    checks = host.ok("doctor", name).stdout
    assert "reachable over SFTP" in checks and "free on the remote" in checks and "FAIL" not in checks
    mount = host.ok("open", name).stdout.strip()
    try:
        snapshot = sorted(p for p in os.listdir(os.path.join(mount, "snapshots")) if p[0].isdigit())[-1]
        assert tree_digest(os.path.join(mount, "snapshots", snapshot) + source) == tree_digest(source)
        assert open(os.path.join(mount, "marker")).read() == "written through the restricted key\n"
    finally:
        host.ok("close", name)


def test_the_key_runs_no_command_and_reads_nothing_outside_the_backup_directory(host, restricted):
    name, storage, base, _ = restricted
    shell = client(host, "ssh", f"{USER}@127.0.0.1", "cat /etc/passwd; id")
    assert shell.returncode == 1 and "root:" not in shell.stdout and f"uid={UID}" not in shell.stdout
    assert "only serves its image's SFTP and NBD export" in shell.stderr
    sneaky = client(host, "ssh", f"{USER}@127.0.0.1", "/usr/lib/openssh/sftp-server; cat /etc/passwd", stdin="")
    assert "root:" not in sneaky.stdout
    listing = client(host, "sftp", "-b", "-", f"{USER}@127.0.0.1", stdin="ls -1 /\n")
    assert listing.returncode == 0
    top = {line.strip().lstrip("/") for line in listing.stdout.splitlines() if not line.startswith("sftp>")}
    assert "usr" in top and top <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "sbin", "tmp", "usr"}, top
    # sftp-server's /etc/passwd is the one line the sandbox writes; the host's stays out of reach.
    fetched = client(host, "sftp", "-b", "-", f"{USER}@127.0.0.1", stdin="get /etc/passwd /tmp/fetched\n")
    assert fetched.returncode == 0
    with open("/tmp/fetched") as passwd:
        assert passwd.read() == "imgbackup:x:0:0:imgbackup sftp:/:/nonexistent\n"
    os.remove("/tmp/fetched")
    for path in ["/etc/shadow", "/etc/group", os.path.join(base, "backups", "neighbour.txt"),
                 os.path.join(storage, "..", "neighbour.txt"), f"{host.work}/keys/demo.key"]:
        fetched = client(host, "sftp", "-b", "-", f"{USER}@127.0.0.1", stdin=f"get {path} /tmp/fetched\n")
        assert fetched.returncode != 0, f"{path} was readable through the key"
        assert not os.path.exists("/tmp/fetched")
    for planted in ["/usr/planted", "/planted", "/etc/planted"]:
        written = client(host, "sftp", "-b", "-", f"{USER}@127.0.0.1", stdin=f"put {os.path.join(base, 'backups', 'neighbour.txt')} {planted}\n")
        assert written.returncode != 0, f"{planted} was writable through the key"
    assert not os.path.exists("/usr/planted")


def remote_command_line(argv):
    """What imgbackup sends for an NBD command: every word single-quoted (NBDEndpointBuilder)."""
    return " ".join("'" + word.replace("'", "'\\''") + "'" for word in argv)


def test_a_stolen_key_plants_no_link_and_its_nbd_command_serves_nothing_else(host, restricted):
    """Issue 17, as a thief of the restricted key would try it: over SFTP,
    link a name to another file; then, with a link in place, connect with
    the target's exact NBD command and read what nbdkit serves."""
    name, storage, base, _ = restricted
    neighbour = os.path.join(base, "backups", "neighbour.txt")
    image = os.path.join(storage, "restricted.img")
    if not os.path.exists(image):
        # The test that inits through the line is a long variant (conftest.LONG_TESTS): without it, a ready image.
        host.clone_image(name, directory=storage)
        os.chown(image, UID, UID)
    for request, planted in [(f"symlink {neighbour} {storage}/planted-link\n", "planted-link"),
                             (f"ln {image} {storage}/planted-hardlink\n", "planted-hardlink")]:
        made = client(host, "sftp", "-b", "-", f"{USER}@127.0.0.1", stdin=request)
        assert made.returncode != 0, f"SFTP made {planted}"
        assert not os.path.lexists(os.path.join(storage, planted))

    # A link that got there some other way (the host's own admin, an older line): swap it in for the image.
    os.rename(image, image + ".aside")
    os.symlink(neighbour, image)
    try:
        ssh = ["ssh", "-p", str(RESTRICTED_PORT), "-o", f"IdentityFile={host.work}/ssh/client_ed25519", "-o", "IdentitiesOnly=yes",
               "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={host.work}/ssh/known_hosts", f"{USER}@127.0.0.1",
               remote_command_line(["nbdkit", "--single", "--exit-with-parent", "file", image])]
        served = subprocess.run(["nbdcopy", "--", "[", *ssh, "]", "-"], capture_output=True, timeout=60)
        print(f"nbdcopy -> {served.returncode}\n{served.stderr.decode(errors='replace')}")
        assert b"not for this key" not in served.stdout, "the NBD command served another file through a symlink"
        assert served.returncode != 0
    finally:
        os.remove(image)
        os.rename(image + ".aside", image)
    # The image itself is still served through the same command: the sandbox took nothing away.
    host.ok("trim", name)
    assert_nothing_left(host, name)
