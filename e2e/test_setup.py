"""imgbackup setup (issue 21): from an empty config to a first successful
run against the test backup host, with the authorized_keys line setup
prints installed as the backup host's only way in for the new key. The
backup host's key is recorded only when its fingerprint is given (no
terminal here): without it, or with a wrong one, nothing is made."""
import os
import stat
import subprocess

from conftest import BackupHost, assert_nothing_left, sha256_of
from test_run import DAY, POINT, make_source


def test_setup_from_an_empty_config_to_a_first_run(host):
    machine = BackupHost(host.work)
    directory = os.path.join(host.work, "setup-etc")
    os.makedirs(directory)
    machine.config = os.path.join(directory, "imgbackup.toml")
    machine.runtime = os.path.join(host.work, "setup-run")
    machine.state = os.path.join(host.work, "setup-state")
    machine.env = dict(os.environ, IMGBACKUP_RUNTIME_DIR=machine.runtime, IMGBACKUP_STATE_DIR=machine.state)
    remote = os.path.join(host.storage, "setup-laptop")
    os.makedirs(remote)
    source = make_source(os.path.join(host.work, "src-setup"))
    host_key = os.path.join(host.work, "ssh", "host_ed25519.pub")
    fingerprint = subprocess.run(["ssh-keygen", "-lf", host_key], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    arguments = ["setup", "laptop", "--remote", f"root@127.0.0.1:{remote}", "--port", "2222", "--size", "64M",
                 "--source", f"{source}/etc", "--mount-point", os.path.join(host.work, "mnt", "laptop")]

    # No terminal to ask on and no fingerprint: refused, nothing made.
    unchecked = machine.run(*arguments)
    assert unchecked.returncode == 1 and "not recording the host key of 127.0.0.1 unchecked" in unchecked.stderr
    assert "SHA256:" in unchecked.stdout  # it showed what it was offered
    assert os.listdir(directory) == []
    wrong = machine.run(*arguments, "--host-key-fingerprint", "SHA256:" + "A" * 43)
    assert wrong.returncode == 6 and "none of its keys has the fingerprint" in wrong.stderr
    assert os.listdir(directory) == []

    made = machine.ok(*arguments, "--host-key-fingerprint", fingerprint)
    for name in ("laptop.key", "laptop.ssh"):
        mode = os.stat(os.path.join(directory, name)).st_mode
        assert stat.S_IMODE(mode) == 0o600, name
    assert os.path.getsize(os.path.join(directory, "laptop.key")) == 64
    with open(os.path.join(directory, "known_hosts")) as known:
        assert known.read().startswith("[127.0.0.1]:2222 ssh-ed25519 ")
    line = next(text for text in made.stdout.splitlines() if text.startswith("restrict,command="))
    assert "Then: imgbackup init laptop && imgbackup run laptop" in made.stdout
    # A second setup of the name is refused and changes nothing.
    key_before = sha256_of(os.path.join(directory, "laptop.key"))
    again = machine.run(*arguments, "--host-key-fingerprint", fingerprint)
    assert again.returncode == 1 and "already has it" in again.stderr
    assert sha256_of(os.path.join(directory, "laptop.key")) == key_before

    # The backup host's side: the line, as docs/remote-setup.md says.
    authorized = os.path.join(host.work, "ssh", "authorized_keys")
    with open(authorized) as keys:
        before = keys.read()
    with open(authorized, "a") as keys:
        keys.write(line + "\n")
    # Tests keep the PBKDF cheap (never a default): the one line a test adds.
    with open(machine.config, "a") as config:
        config.write('[target.laptop.luks]\npbkdf = "pbkdf2"\npbkdf_iterations = 1000\n')
    try:
        machine.ok("doctor", "laptop")
        machine.ok("init", "laptop")
        machine.ok("run", "laptop", "--now", DAY[0])
        assert [line.split()[0] for line in machine.ok("list", "laptop").stdout.splitlines()] == [POINT[0]]
        assert_nothing_left(machine, "laptop")
    finally:
        with open(authorized, "w") as keys:
            keys.write(before)
    machine.discard("laptop", remote, source)
