"""A backup host that offers SFTP only (no shell, no nbdkit) and whose SFTP
server has no statvfs, like some storage boxes (issue 20): doctor, init and
run work there, and a frozen SFTP server is still a hang. Without the
extension sshfs answers statfs itself, so a probe by statfs would never
see the freeze."""
import os
import subprocess
import time

import pytest

from conftest import HERE, assert_nothing_left
from test_faults import STALL, freeze_expecting_hang, start_run, write_random_files

SFTP_ONLY_PORT = 2226


@pytest.fixture(scope="module")
def sftp_only(host):
    """sshd on its own port whose every login runs sftp_without_statvfs.py."""
    base = os.path.join(host.work, "sftp-only")
    os.makedirs(base)
    pid_file = os.path.join(base, "sshd.pid")
    subprocess.run(["/usr/sbin/sshd", "-f", "/dev/null", "-o", "ListenAddress=127.0.0.1",
                    "-o", f"Port={SFTP_ONLY_PORT}", "-o", f"HostKey={host.work}/ssh/host_ed25519",
                    "-o", f"AuthorizedKeysFile={host.work}/ssh/authorized_keys", "-o", f"PidFile={pid_file}",
                    "-o", "UsePAM=yes", "-o", "PermitRootLogin=prohibit-password", "-o", "StrictModes=no",
                    "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
                    # sshd accepts only a subsystem it knows; ForceCommand then runs instead of it.
                    "-o", "Subsystem=sftp /usr/lib/openssh/sftp-server",
                    "-o", f"ForceCommand={os.path.join(HERE, 'sftp_without_statvfs.py')}",
                    "-E", os.path.join(base, "sshd.log")], check=True)
    with open(os.path.join(host.work, "ssh", "known_hosts"), "a") as known:
        host_key = open(f"{host.work}/ssh/host_ed25519.pub").read().split()[:2]
        known.write(f"[127.0.0.1]:{SFTP_ONLY_PORT} {' '.join(host_key)}\n")
    yield
    subprocess.run(["kill", open(pid_file).read().strip()], check=False)


def client(host, program, *args, stdin=None):
    options = ["-o", f"IdentityFile={host.work}/ssh/client_ed25519", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
               "-o", f"UserKnownHostsFile={host.work}/ssh/known_hosts"]
    port = ["-P" if program == "sftp" else "-p", str(SFTP_ONLY_PORT)]
    result = subprocess.run([program, *port, *options, *args], input=stdin, capture_output=True, text=True, timeout=60)
    print(f"$ {program} {' '.join(args)} -> {result.returncode}\n{result.stdout}{result.stderr}")
    return result


def doctor_lines(host, name):
    result = host.run("doctor", name)
    return result.returncode, result.stdout.splitlines()


def test_doctor_init_and_run_work_on_an_sftp_only_host_without_statvfs(host, sftp_only):
    # The host is what it claims: no df over SFTP, and a command gets no shell.
    df = client(host, "sftp", "-b", "-", "root@127.0.0.1", stdin="df /\n")
    assert df.returncode != 0 and "statvfs@openssh.com" in df.stderr
    shell = client(host, "ssh", "root@127.0.0.1", "echo a shell answered")
    assert "a shell answered" not in shell.stdout

    source = os.path.join(host.work, "src-sftp-only")
    write_random_files(source, 4, 256 << 10)
    name = host.add_target("sftponly", port=SFTP_ONLY_PORT, tables={"copy": {"method": "rsync", "sources": [source]}})
    status, lines = doctor_lines(host, name)
    print("\n".join(lines))
    assert status == 0, lines
    assert any(line.startswith(f"ok    {name}: root@127.0.0.1:") and line.endswith("reachable over SFTP")
               for line in lines), lines
    assert f"ok    {name}: the remote does not report its free space" in lines
    assert any(line.startswith(f"WARN  {name}: there is no image") for line in lines), lines
    assert not any(line.startswith("FAIL") for line in lines), lines

    host.ok("init", name)
    result = host.ok("run", name)
    assert result.stdout.startswith(f"{name}: backed up snapshots/")
    assert_nothing_left(host, name)
    status, lines = doctor_lines(host, name)
    assert status == 0 and not any(line.startswith(("FAIL", "WARN")) for line in lines), lines
    host.discard(name, source)


def test_a_frozen_sftp_only_server_without_statvfs_is_a_hang(host, sftp_only):
    """The copy step writes a line and syncs it every second, so few requests
    are in flight when the SFTP server freezes: sshfs has threads to spare,
    and a probe by statfs, which sshfs answers itself on this server, would
    say the remote is fine for ever. The lookup the probe asks now only the
    frozen server can answer."""
    name = host.add_target("sftponlyfrozen", size="96M", port=SFTP_ONLY_PORT, tables={
        "copy": {"method": "command", "command": [
            "sh", "-c", "while :; do date >> {mount}/ticks; sync -f {mount}; sleep 1; done"]},
        "timeouts": {"stall": f"{STALL}s", "teardown": "10s"},
    })
    host.clone_image(name)
    run = start_run(host, name)
    ticks = os.path.join(host.work, "mnt", name, "ticks")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        if os.path.exists(ticks) and len(open(ticks).read().splitlines()) >= 3:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the copy step never wrote its ticks")
    freeze_expecting_hang(run, "sftp-only server frozen",
                          "imgbackup: error: the backup hung: sshfs to 127.0.0.1 did not answer", name="sftp-server")
    assert_nothing_left(host, name, stale_lock=True)
    opened = host.ok("open", name)
    assert f"the last session of '{name}' did not end cleanly" in opened.stderr
    host.ok("close", name)
    assert_nothing_left(host, name)
    host.discard(name)
