"""The NBD transport and `imgbackup trim`, in a real kernel (issue 3).

Both NBD paths: a command run on the remote over ssh (nbdkit --single, the
reference) and an nbd-server URI (trim = true)."""
import os
import re
import subprocess
import time

import pytest

from conftest import assert_nothing_left, sha256_of, tree_digest

MiB = 1 << 20
NBD_SERVER_PORT = 10809
NBDKIT_TCP_PORT = 10810


class NBDServer:
    """nbd-server on 127.0.0.1 exporting files of the backup host's storage."""

    def __init__(self, host):
        self.host = host
        self.config = os.path.join(host.work, "nbd-server.conf")
        self.auth = os.path.join(host.work, "nbd-server.allow")
        self.exports = []

    def export(self, name, image, trim=True, allowed=True):
        self.exports.append((name, image, trim, allowed))

    def start(self):
        with open(self.auth, "w") as auth:
            auth.write("127.0.0.0/8\n")  # nbd-server refuses clients its authfile does not allow
        with open(self.auth + ".deny", "w") as deny:
            deny.write("192.0.2.0/24\n")  # a documentation range: nobody here
        lines = ["[generic]", "    user = root", "    group = root", "    listenaddr = 127.0.0.1",
                 f"    port = {NBD_SERVER_PORT}"]
        for name, image, trim, allowed in self.exports:
            lines += [f"[{name}]", f"    exportname = {image}", f"    trim = {'true' if trim else 'false'}",
                      f"    authfile = {self.auth if allowed else self.auth + '.deny'}"]
        with open(self.config, "w") as config:
            config.write("\n".join(lines) + "\n")
        subprocess.run(["nbd-server", "-C", self.config], check=True)  # forks into the background
        for _ in range(50):
            if subprocess.run(["ss", "-ltn", f"sport = :{NBD_SERVER_PORT}"], capture_output=True,
                              text=True).stdout.count("LISTEN"):
                return
            time.sleep(0.1)

    def stop(self):
        subprocess.run(["pkill", "-f", f"nbd-server -C {self.config}"], check=False)


@pytest.fixture(scope="module")
def shared_image(host):
    """One image, initialised over sshfs, reachable three ways: sshfs, nbdkit
    over ssh, nbd-server. The targets share the image (one at a time)."""
    image = os.path.join(host.storage, "shared.img")
    host.add_target("shared", image="shared.img", size="96M")
    host.ok("init", "shared")
    host.add_target("shared_nbdkit", image="shared.img", transport="nbd", tables={"nbd": {"command": ["nbdkit", "--single", "--exit-with-parent", "file", image]}})
    host.add_target("shared_uri", image="shared.img", transport="nbd", tables={"nbd": {"uri": f"nbd://127.0.0.1:{NBD_SERVER_PORT}/shared"}})
    # The same LUKS image: every target may record its UUID.
    server = NBDServer(host)
    server.export("shared", image)
    server.export("notrim", image, trim=False)
    server.export("refused", image, allowed=False)
    server.start()
    host.add_target("shared_notrim", image="shared.img", transport="nbd", tables={"nbd": {"uri": f"nbd://127.0.0.1:{NBD_SERVER_PORT}/notrim"}})
    # nbdkit on TCP, reached by URI: nbd-server 3.24 (Debian 12) cannot be the
    # trim reference: its exptrim() clips a request to size - 2 * offset, so
    # trims in the upper half of an export are cut short or dropped while
    # still acknowledged.
    nbdkit_pid = os.path.join(host.work, "nbdkit-tcp.pid")
    subprocess.run(["nbdkit", "--ipaddr", "127.0.0.1", "--port", str(NBDKIT_TCP_PORT), "--pidfile", nbdkit_pid,
                    "file", image], check=True)
    host.add_target("shared_nbdkit_uri", image="shared.img", transport="nbd", tables={"nbd": {"uri": f"nbd://127.0.0.1:{NBDKIT_TCP_PORT}"}})
    yield image
    server.stop()
    subprocess.run(["kill", open(nbdkit_pid).read().strip()], check=False)


def remote_allocated(path):
    return os.stat(path).st_blocks * 512


@pytest.mark.parametrize("nbd_target", ["shared_nbdkit", "shared_uri"])
def test_write_through_nbd_read_back_over_sshfs(host, shared_image, nbd_target):
    mount_point = host.ok("open", nbd_target).stdout.strip()
    try:
        with open("/proc/self/mountinfo") as mountinfo:
            assert any("fuse.imgbackup-nbd" in line for line in mountinfo), "the NBD bridge is not mounted"
        directory = os.path.join(mount_point, nbd_target)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "data.bin"), "wb") as out:
            out.write(os.urandom(5 * MiB + 3))
        written = tree_digest(directory)
    finally:
        host.ok("close", nbd_target)
    assert_nothing_left(host, nbd_target)
    assert subprocess.run(["pgrep", "-f", "nbdkit --single"], capture_output=True).returncode != 0, \
        "the nbdkit that ssh started outlived close"

    mount_point = host.ok("open", "shared").stdout.strip()
    try:
        assert tree_digest(os.path.join(mount_point, nbd_target)) == written
    finally:
        host.ok("close", "shared")
    assert_nothing_left(host, "shared")


@pytest.mark.parametrize("nbd_target", ["shared_nbdkit", "shared_nbdkit_uri"])
def test_trim_gives_deleted_space_back_to_the_remote(host, shared_image, nbd_target):
    mount_point = host.ok("open", "shared").stdout.strip()
    try:
        with open(os.path.join(mount_point, "keep.bin"), "wb") as out:
            out.write(os.urandom(MiB))
        kept = tree_digest(mount_point)
        with open(os.path.join(mount_point, "bulk.bin"), "wb") as out:
            for _ in range(48):
                out.write(os.urandom(MiB))
    finally:
        host.ok("close", "shared")
    written = remote_allocated(shared_image)

    mount_point = host.ok("open", "shared").stdout.strip()
    try:
        os.remove(os.path.join(mount_point, "bulk.bin"))
    finally:
        host.ok("close", "shared")
    assert remote_allocated(shared_image) >= written - MiB, "sshfs cannot discard: deleting must not shrink the file"

    result = host.ok("trim", nbd_target)
    after = remote_allocated(shared_image)
    reclaimed = written - after
    print(f"{nbd_target}: remote allocated {written} -> {after} bytes, reclaimed {reclaimed} of {48 * MiB} deleted "
          f"({100 * reclaimed / (48 * MiB):.0f}%)")
    log = os.path.join(host.runtime, nbd_target, "nbd-bridge.log")
    if os.path.exists(log):
        print("bridge log:", open(log).read()[-2000:])
    assert reclaimed >= 0.9 * 48 * MiB
    trimmed = int(re.search(r"trimmed: .*\((\d+) bytes\)", result.stdout).group(1))
    assert trimmed >= 48 * MiB
    # nbdkit answers block-status queries: the report must match the remote.
    before_nbd = int(re.search(r"remote allocated before: .*\((\d+) bytes\)", result.stdout).group(1))
    after_nbd = int(re.search(r"remote allocated after: .*\((\d+) bytes\)", result.stdout).group(1))
    assert before_nbd - after_nbd >= 0.9 * 48 * MiB, "the NBD block status report disagrees with the remote"
    assert abs(after_nbd - after) <= 4 * MiB
    assert_nothing_left(host, nbd_target)

    mount_point = host.ok("open", "shared").stdout.strip()
    try:
        assert tree_digest(mount_point) == kept, "trim damaged the data that was kept"
    finally:
        host.ok("close", "shared")


def test_trim_refuses_a_server_that_cannot_trim(host, shared_image):
    digest = sha256_of(shared_image)
    result = host.run("trim", "shared_notrim")
    assert result.returncode == 6
    assert "cannot trim" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sha256_of(shared_image) == digest
    assert_nothing_left(host, "shared_notrim")


def test_absent_nbd_server_fails_clearly(host):
    name = host.add_target("nbd_absent", transport="nbd", tables={"nbd": {"uri": "nbd://127.0.0.1:10999/none"}})
    result = host.run("open", name)
    assert result.returncode == 6
    assert "NBD" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert_nothing_left(host, name)


def test_nbd_command_that_fails_on_the_remote_fails_clearly(host):
    name = host.add_target("nbd_badcmd", transport="nbd", tables={"nbd": {"command": ["nbdkit", "--single", "file", "/nonexistent/image"]}})
    result = host.run("open", name)
    assert result.returncode == 6
    assert len(result.stderr.strip().splitlines()) == 1
    assert_nothing_left(host, name)


def test_nbd_server_refusing_the_client_fails_clearly(host, shared_image):
    digest = sha256_of(shared_image)
    name = host.add_target("nbd_refused", image="shared.img", transport="nbd", tables={"nbd": {"uri": f"nbd://127.0.0.1:{NBD_SERVER_PORT}/refused"}})
    result = host.run("open", name)
    assert result.returncode == 6
    assert "NBD export" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sha256_of(shared_image) == digest
    assert_nothing_left(host, name)


def test_nbd_stack_keeps_writing_under_memory_pressure(host, shared_image):
    """A loop device on a FUSE file can deadlock when reclaim waits on the
    bridge's own allocations. The bridge marks itself PR_SET_IO_FLUSHER and
    locks its memory; writes must finish while a hog holds most of RAM."""
    mount_point = host.ok("open", "shared_nbdkit").stdout.strip()
    hog = None
    try:
        with open("/proc/meminfo") as meminfo:
            available_kib = int(next(l for l in meminfo if l.startswith("MemAvailable")).split()[1])
        hog_mib = int(available_kib * 0.85 / 1024)
        # The hog: touches every page, then holds them; the OOM killer takes it first.
        hog = subprocess.Popen(
            ["python3", "-c",
             "import os, sys, time\n"
             "open('/proc/self/oom_score_adj', 'w').write('1000')\n"
             f"chunks = [bytearray(1 << 20) for _ in range({hog_mib})]\n"
             "print('held', flush=True)\n"
             "time.sleep(600)\n"],
            stdout=subprocess.PIPE, text=True)
        assert hog.stdout.readline().strip() == "held"
        data = os.urandom(MiB)
        started = time.monotonic()
        with open(os.path.join(mount_point, "pressure.bin"), "wb") as out:
            for _ in range(32):
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        elapsed = time.monotonic() - started
        print(f"32 MiB written and synced in {elapsed:.1f}s with {hog_mib} MiB held by the hog")
        assert elapsed < 240
    finally:
        if hog:
            hog.kill()
            hog.wait()
        host.ok("close", "shared_nbdkit")
    assert_nothing_left(host, "shared_nbdkit")
    mount_point = host.ok("open", "shared").stdout.strip()
    try:
        with open(os.path.join(mount_point, "pressure.bin"), "rb") as back:
            assert back.read() == data * 32
        os.remove(os.path.join(mount_point, "pressure.bin"))
    finally:
        host.ok("close", "shared")
