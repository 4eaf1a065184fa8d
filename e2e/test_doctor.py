"""`imgbackup doctor` (issue 7) on the real machine and remote: what passes,
and each blocking problem with its fix and the exit status a run would have."""
import os
import subprocess
import time

from conftest import assert_nothing_left


def doctor(host, target, remote_stderr=False):
    """doctor's exit status and lines. Only a remote command's own complaint
    (nbdkit's, passed through by ssh) may reach stderr, and only when asked."""
    result = host.run("doctor", target)
    lines = result.stdout.splitlines()
    assert lines and all(line.split("  ")[0] in ("ok", "WARN", "FAIL") for line in lines), result.stdout
    if not remote_stderr:
        assert result.stderr == ""
    return result.returncode, lines


def test_a_ready_target_passes_every_check(host):
    name = host.add_target("doctor_ok", tables={"copy": {"method": "rsync", "sources": ["/etc/ssh"]}})
    host.clone_image(name)
    status, lines = doctor(host, name)
    assert status == 0, lines
    for expected in ["ok    machine: running as root", "ok    machine: device-mapper", "ok    machine: dm-crypt",
                     "ok    machine: loop devices", "ok    machine: FUSE", f"ok    {name}: the key loads",
                     f"ok    {name}: programs: ssh, sshfs, fusermount3, mkfs.ext4, e2fsck, resize2fs, rsync"]:
        assert expected in lines
    assert any(line.startswith(f"ok    {name}: root@127.0.0.1:") and line.endswith("reachable over SFTP") for line in lines)
    assert any(line.startswith(f"ok    {name}: ") and line.endswith("free on the remote") for line in lines), lines
    assert not any(line.startswith("FAIL") for line in lines)
    assert f"ok    {name}: nothing of this target is up on this machine" in lines
    # Opened by hand: fine, but runs refuse it until it is closed.
    mount_point = f"{host.work}/mnt/{name}"
    host.ok("open", name)
    status, lines = doctor(host, name)
    assert status == 0, lines
    assert (f"WARN  {name}: open at {mount_point} (imgbackup open): runs refuse it (exit 4) until it is closed"
            f" -> imgbackup close {name} when done") in lines
    # The state record lost: doctor finds what is up from the one list of a target's layers.
    os.unlink(host.state_record(name))
    status, lines = doctor(host, name)
    left = [line for line in lines if line.startswith(f"WARN  {name}: left up without a state record: ")]
    assert status == 0 and len(left) == 1, lines
    for layer in [f"sshfs mount of root@127.0.0.1:", f"loop device", f"dm-crypt mapping /dev/mapper/imgbackup-{name}",
                  f"filesystem mount at {mount_point}"]:
        assert layer in left[0], left[0]
    assert left[0].endswith(f" -> imgbackup close {name}")
    host.ok("close", name)
    # Without a record close cannot know the lock's token; this machine's
    # next open knows the lock as its own and replaces it.
    assert_nothing_left(host, name, stale_lock=True)
    os.remove(host.image(name) + ".lock")
    host.discard(name)


def test_each_blocking_problem_is_named_with_its_fix_and_exit_status(host):
    loose_key = os.path.join(host.work, "keys", "doctor-loose.key")
    with open(loose_key, "w") as out:
        out.write("a passphrase others can read\n")
    os.chmod(loose_key, 0o644)
    name = host.add_target("doctor_key", key_file=loose_key)
    host.clone_image(name)
    status, lines = doctor(host, name)
    assert status == 5
    assert f"FAIL  {name}: refusing key file {loose_key}: group or others can access it (mode 644) -> chmod 600 {loose_key}" in lines

    name = host.add_target("doctor_port", port=2299)
    status, lines = doctor(host, name)
    assert status == 6
    failure = [line for line in lines if line.startswith(f"FAIL  {name}: cannot reach root@127.0.0.1:")]
    assert len(failure) == 1 and failure[0].endswith(f"try: ssh -p 2299 root@127.0.0.1"), lines

    missing = os.path.join(host.work, "no-such-directory")
    name = host.add_target("doctor_dir", remote=f"root@127.0.0.1:{missing}")
    status, lines = doctor(host, name)
    assert status == 6
    assert any(line.startswith(f"FAIL  {name}: the remote directory {missing} is not there") for line in lines), lines
    assert not os.path.exists(missing), "doctor must only look"

    name = host.add_target("doctor_noimage")
    status, lines = doctor(host, name)
    assert status == 0
    assert f"WARN  {name}: there is no image {name}.img yet -> imgbackup init {name}" in lines
    assert not os.path.exists(host.image(name))
    host.discard("doctor_key")


def test_the_nbd_export_is_connected_to_where_configured(host):
    name = host.add_target("doctor_nbd", transport="nbd", tables={"nbd": {"command": [
        "nbdkit", "--single", "--exit-with-parent", "file", os.path.join(host.storage, "doctor_nbd.img")]}})
    host.clone_image(name)
    status, lines = doctor(host, name)
    assert status == 0, lines
    assert f"ok    {name}: NBD export connected (96 MiB)" in lines
    assert not any("does not take trim" in line for line in lines), "nbdkit's file plugin trims"
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", "nbdkit --single"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the nbdkit doctor started outlived it"
        time.sleep(0.2)
    assert_nothing_left(host, name)

    missing = os.path.join(host.storage, "no-such.img")
    name = host.add_target("doctor_nbd_missing", image="doctor_nbd.img", transport="nbd", tables={"nbd": {"command": [
        "nbdkit", "--single", "--exit-with-parent", "file", missing]}})
    status, lines = doctor(host, name, remote_stderr=True)
    assert status == 6, lines
    failure = [line for line in lines if line.startswith(f"FAIL  {name}: cannot connect to the NBD export: ")]
    assert len(failure) == 1 and failure[0].endswith(
        f"-> check [target.{name}.nbd] command: it must run on the backup host and serve doctor_nbd.img"
        f" (try it over ssh -p 2222 root@127.0.0.1)"), lines

    name = host.add_target("doctor_nbd_uri", image="doctor_nbd.img", transport="nbd",
                           tables={"nbd": {"uri": "nbd://127.0.0.1:10999/none"}})
    status, lines = doctor(host, name)
    assert status == 6, lines
    assert any(line.startswith(f"FAIL  {name}: cannot connect to the NBD export: ") and line.endswith(
        "-> check that an NBD server answers at nbd://127.0.0.1:10999/none and exports the image") for line in lines), lines
    host.discard("doctor_nbd")
