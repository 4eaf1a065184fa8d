"""Keys (issue 6): every key source, keyslot management, the image-swap
check, and that the key never shows up where another process, a log or the
remote could see it."""
import glob
import hashlib
import os
import secrets
import shutil
import subprocess
import threading
import time
import uuid

from conftest import BIN, assert_nothing_left, sha256_of


def write_key(host, name, text):
    path = os.path.join(host.work, "keys", name)
    with open(path, "wb") as out:
        out.write(text)
    os.chmod(path, 0o600)
    return path


def imgbackup(host, *args, env=None, **kwargs):
    """Runs the binary with extra environment or descriptors; prints what happened."""
    result = subprocess.run([BIN, "--config", host.config, *args], env=dict(host.env, **(env or {})),
                            capture_output=True, timeout=600, **kwargs)
    print(f"$ imgbackup {' '.join(args)} -> exit {result.returncode}")
    print(result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace"))
    return result


def header_digest(host, name):
    return sha256_of(host.image(name), limit=16 << 20)


def test_every_key_source_opens_the_image(host):
    key_file = os.path.join(host.work, "keys", "demo.key")  # the cloned image's key
    key = open(key_file, "rb").read()
    name = host.add_target("sources")
    host.clone_image(name)

    def opens(*args, env=None, **kwargs):
        result = imgbackup(host, "open", name, *args, env=env, **kwargs)
        assert result.returncode == 0, result.stderr
        host.ok("close", name)

    opens("--key-file", "-", input=key)  # standard input
    read_end, write_end = os.pipe()
    os.write(write_end, key)
    os.close(write_end)
    try:
        opens("--key-fd", str(read_end), pass_fds=(read_end,))
    finally:
        os.close(read_end)
    credentials = os.path.join(host.work, "credentials")
    os.makedirs(credentials, exist_ok=True)
    credential = os.path.join(credentials, f"imgbackup.{name}")
    shutil.copy(key_file, credential)
    os.chmod(credential, 0o400)
    opens(env={"CREDENTIALS_DIRECTORY": credentials})

    # key_command, and a config with no key at all but a credential.
    other = host.add_target("sources_cmd", image=f"{name}.img", key_command=["cat", key_file],
                            mount_point=f"{host.work}/mnt/{name}")
    assert imgbackup(host, "open", other).returncode == 0
    host.ok("close", other)
    bare = host.add_target("sources_cred", image=f"{name}.img", key_file=None, mount_point=f"{host.work}/mnt/{name}")
    result = imgbackup(host, "open", bare)
    assert result.returncode == 1
    assert b"target 'sources_cred' has no key" in result.stderr
    shutil.copy(key_file, os.path.join(credentials, f"imgbackup.{bare}"))
    os.chmod(os.path.join(credentials, f"imgbackup.{bare}"), 0o400)
    assert imgbackup(host, "open", bare, env={"CREDENTIALS_DIRECTORY": credentials}).returncode == 0
    host.ok("close", bare)
    assert_nothing_left(host, bare)

    # The wrong key from each source: exit 5, the header untouched.
    digest = header_digest(host, name)
    assert imgbackup(host, "open", name, "--key-file", "-", input=b"wrong").returncode == 5
    failing = host.add_target("sources_badcmd", image=f"{name}.img", key_command=["sh", "-c", "echo 'no agent' >&2; exit 3"],
                              mount_point=f"{host.work}/mnt/{name}")
    result = imgbackup(host, "open", failing)
    assert result.returncode == 5
    assert result.stderr.decode().strip().splitlines() == [
        "imgbackup: error: key_command sh -c echo 'no agent' >&2; exit 3 failed: sh exited with status 3: no agent"]
    assert header_digest(host, name) == digest
    assert_nothing_left(host, name)


def test_key_add_and_remove_manage_keyslots_and_never_remove_the_last(host):
    first = os.path.join(host.work, "keys", "demo.key")  # the cloned image's key
    recovery = write_key(host, "slots-recovery.key", b"a long offline recovery passphrase\n")
    name = host.add_target("slots")
    host.clone_image(name)

    result = host.ok("key", "add", name, "--new-key-file", recovery)
    assert result.stdout.strip() == f"{name}: added the key in keyslot 1; 2 keys open the image"
    assert_nothing_left(host, name)
    assert host.run("key", "add", name, "--new-key-file", recovery).returncode == 1  # already there

    mount = host.ok("open", name, "--key-file", recovery).stdout.strip()
    with open(os.path.join(mount, "kept"), "w") as out:
        out.write("still here\n")
    host.ok("close", name)

    result = host.ok("key", "remove", name)  # the config's key: slot 0
    assert result.stdout.strip() == f"{name}: removed the key in keyslot 0; 1 keys open the image"
    assert host.run("open", name).returncode == 5
    assert_nothing_left(host, name)

    digest = header_digest(host, name)
    for both_from_stdin in (["--key-file", "-", "--new-key-fd", "0"], ["--key-fd", "0", "--new-key-file", "-"]):
        result = host.run("key", "add", name, *both_from_stdin)
        assert result.returncode == 1 and "only one key can come from standard input" in result.stderr
    result = host.run("key", "remove", name, "--key-file", recovery)
    assert result.returncode == 1
    assert "refusing to remove the last key of 'slots'" in result.stderr
    assert header_digest(host, name) == digest
    assert_nothing_left(host, name)

    # Adding while the target is open works on its loop device.
    mount = host.ok("open", name, "--key-file", recovery).stdout.strip()
    assert open(os.path.join(mount, "kept")).read() == "still here\n"
    result = imgbackup(host, "key", "add", name, "--key-file", recovery, "--new-key-file", "-", input=open(first, "rb").read())
    assert result.returncode == 0
    host.ok("close", name)
    host.ok("open", name)
    host.ok("close", name)
    assert_nothing_left(host, name)


def test_an_image_swapped_for_another_luks_image_is_refused(host):
    key = os.path.join(host.work, "keys", "demo.key")
    name = host.add_target("swap")
    host.clone_image(name)
    host.ok("open", name)  # records the UUID on this machine
    host.ok("close", name)
    # Same key, another LUKS image: a copy under a new UUID.
    host.clone_image("swap_other")
    subprocess.run(["cryptsetup", "luksUUID", "-q", "--uuid", str(uuid.uuid4()), host.image("swap_other")], check=True)
    os.replace(host.image("swap_other"), host.image(name))
    digest = sha256_of(host.image(name))
    result = host.run("open", name)
    assert result.returncode == 5
    assert "the image on the remote is not the one this machine created: its LUKS UUID is" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sha256_of(host.image(name)) == digest
    assert host.run("key", "add", name, "--new-key-file", key).returncode == 5
    assert_nothing_left(host, name)


class KeyWatch:
    """Scans every process's argv and environment for the key while
    imgbackup works, and collects what it finds."""

    def __init__(self, needles):
        self.needles = needles
        self.found = []
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _scan(self):
        while not self._stop.is_set():
            for path in glob.glob("/proc/[0-9]*"):
                for part in ("cmdline", "environ"):
                    try:
                        data = open(f"{path}/{part}", "rb").read()
                    except OSError:
                        continue
                    if any(needle in data for needle in self.needles):
                        self.found.append(f"{path}/{part}")
            self.scans += 1
            time.sleep(0.01)


def test_the_key_never_reaches_argv_environment_output_logs_state_or_the_remote(host):
    secret = f"imgbackup-e2e-secret-{secrets.token_hex(16)}".encode()
    needles = [secret, secret.hex().encode(), hashlib.sha256(secret).hexdigest().encode()]
    key_file = write_key(host, "leak.key", secret)
    source = os.path.join(host.work, "src-leak")
    os.makedirs(source, exist_ok=True)
    with open(os.path.join(source, "file"), "w") as out:
        out.write("data\n")
    name = host.add_target("leak", key_command=["cat", key_file], tables={"copy": {"method": "rsync", "sources": [source]}})
    outputs = []
    with KeyWatch(needles) as watch:
        for args in (("init", name), ("open", name), ("close", name), ("run", name)):
            result = imgbackup(host, *args)
            assert result.returncode == 0
            outputs += [result.stdout, result.stderr]
        result = imgbackup(host, "-vv", "open", name, "--key-file", "-", input=secret)
        assert result.returncode == 0
        outputs += [result.stdout, result.stderr]
        host.ok("close", name)
    print(f"{watch.scans} scans of every process's cmdline and environ")
    assert watch.scans > 50
    assert watch.found == []
    for output in outputs:
        assert not any(needle in output for needle in needles)
    for root in (host.runtime, host.state):
        for directory, _, files in os.walk(root):
            for file_name in files:
                data = open(os.path.join(directory, file_name), "rb").read()
                assert not any(needle in data for needle in needles), f"{file_name} holds the key"
    with open(host.image(name), "rb") as image:
        while chunk := image.read(1 << 20):
            assert secret not in chunk
    assert_nothing_left(host, name)


def process_memory_contains(pid, needle):
    """Whether any readable mapping of process `pid` holds `needle` (root
    reads /proc/PID/mem even of a process that is not dumpable)."""
    found = False
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:
        for line in maps:
            fields = line.split()
            start, end = (int(value, 16) for value in fields[0].split("-"))
            if "r" not in fields[1] or fields[-1] in ("[vvar]", "[vsyscall]"):
                continue
            try:
                memory.seek(start)
                if needle in memory.read(end - start):
                    found = True
            except (OSError, ValueError, OverflowError):
                continue
    return found


def test_the_key_is_gone_from_the_process_memory_while_the_copy_step_runs(host):
    """Issue 17: the key is kept only until the mapping is up; during the
    copy step (which may take hours) a crash or a memory read finds nothing."""
    key = open(os.path.join(host.work, "keys", "demo.key"), "rb").read()
    ready = os.path.join(host.work, "keymem.ready")
    name = host.add_target("keymem", tables={"copy": {
        "method": "command", "command": ["sh", "-c", f"touch {ready}; sleep 15"]}})
    host.clone_image(name)
    run = subprocess.Popen([BIN, "--config", host.config, "run", name], env=host.env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(ready) and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.2)
        assert os.path.exists(ready), "the copy step never started"
        assert not process_memory_contains(run.pid, key), "the key is still in imgbackup's memory during the copy step"
    finally:
        out, err = run.communicate(timeout=300)
        print(out.decode(errors="replace") + err.decode(errors="replace"))
    assert run.returncode == 0
    os.remove(ready)
    host.discard(name)
