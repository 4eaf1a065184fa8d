"""The s3 transport against a real S3 server on loopback: `rclone serve s3`
over a directory (installed by scripts/install-deps.sh), so every object is
a file the tests can count, read and freeze. The image goes through nbdkit's
S3 plugin in the NBD bridge; imgbackup's own requests (lock, metadata,
listings) through curl."""
import glob
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
import xml.sax.saxutils

import pytest

from conftest import assert_nothing_left, mounts_under, tree_digest
from test_faults import (STALL, freeze_expecting_hang, processes_named, start_run, wait_for_process,
                         wait_until_copying, write_random_files)

RCLONE = "/opt/imgbackup-rclone/bin/rclone"
S3_PORT = 9400
ACCESS_KEY = "AKIDIMGBACKUPE2E"
SECRET_KEY = "e2e-secret-never-logged"
MiB = 1 << 20


class S3Server:
    """rclone serving DATA/BUCKET as an S3 bucket. What the tests add or
    remove goes through its S3 API (rclone's own client): it caches
    directory listings, and would not see files put behind its back."""

    def __init__(self, work):
        self.data = os.path.join(work, "s3data")
        self.bucket = "backups"
        os.makedirs(os.path.join(self.data, self.bucket), exist_ok=True)
        self.credentials = os.path.join(work, "keys", "s3-credentials")
        with open(os.open(self.credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            out.write(f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n")
        self.endpoint = f"http://127.0.0.1:{S3_PORT}"
        self.process = None

    def start(self):
        assert os.access(RCLONE, os.X_OK), f"{RCLONE} is missing: run scripts/install-deps.sh"
        self.process = subprocess.Popen(
            [RCLONE, "serve", "s3", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--addr", f"127.0.0.1:{S3_PORT}",
             "--config", "/dev/null", self.data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if subprocess.run(["curl", "-s", "-o", "/dev/null", self.endpoint], check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError("rclone serve s3 did not start")

    def stop(self):
        if self.process:
            self.process.kill()
            self.process.wait()

    def objects(self, prefix):
        """The image's block objects as the server stores them."""
        return sorted(glob.glob(os.path.join(self.data, self.bucket, prefix, "*")))

    def object(self, key):
        return os.path.join(self.data, self.bucket, key)

    def copy(self, source, destination, single=False):
        """Copies a prefix's objects (or one object) through the S3 API."""
        env = dict(os.environ, RCLONE_CONFIG_SRV_TYPE="s3", RCLONE_CONFIG_SRV_PROVIDER="Other",
                   RCLONE_CONFIG_SRV_ENDPOINT=self.endpoint, RCLONE_CONFIG_SRV_ACCESS_KEY_ID=ACCESS_KEY,
                   RCLONE_CONFIG_SRV_SECRET_ACCESS_KEY=SECRET_KEY)
        subprocess.run([RCLONE, "--config", "/dev/null", "copyto" if single else "copy",
                        f"srv:{self.bucket}/{source}", f"srv:{self.bucket}/{destination}"], env=env, check=True)


@pytest.fixture(scope="module")
def s3(host):
    server = S3Server(host.work)
    server.start()
    yield server
    server.stop()


def add_s3_target(host, s3, name, tables=None, **overrides):
    values = dict(remote=None, port=None, identity_file=None, ssh_options=None, image=None, transport="s3")
    values.update(overrides)
    s3_table = {"endpoint": s3.endpoint, "bucket": s3.bucket, "prefix": f"hosts/{name}",
                "credentials_file": s3.credentials, **dict(tables or {}).pop("s3", {})}
    return host.add_target(name, tables={"s3": s3_table, **{k: v for k, v in (tables or {}).items() if k != "s3"}},
                           **values)


def assert_no_s3_leftovers(host, s3, name):
    assert_nothing_left(host, name)
    assert not os.path.exists(s3.object(f"hosts/{name}.lock")), "the lock object was left behind"
    assert not os.path.exists(os.path.join(host.runtime, name, "s3")), "nbdkit's files were left behind"


@pytest.fixture(scope="module")
def s3_template(host, s3):
    """One image made by init, which the tests not about init start from:
    init is the slowest command under emulation."""
    name = add_s3_target(host, s3, "s3template", size="64M")
    host.ok("init", name)
    return name


def clone_s3_image(host, s3, template, name):
    """Gives `name` a copy of the template's objects and metadata, as the
    server stores them, and the template's LUKS identity on this machine."""
    s3.copy(f"hosts/{template}", f"hosts/{name}")
    s3.copy(f"hosts/{template}.imgbackup", f"hosts/{name}.imgbackup", single=True)
    os.makedirs(os.path.join(host.state, name), exist_ok=True)
    for record in ("luks-uuid", "luks-header.json"):
        shutil.copy(os.path.join(host.state, template, record), os.path.join(host.state, name, record))


def test_init_open_write_close_reopen_in_a_bucket(host, s3):
    """The core path: init makes objects and then the metadata object, the
    store sees only ciphertext, the lock object lives exactly as long as the
    session, and a new open finds the file."""
    name = add_s3_target(host, s3, "s3core", size="64M")
    before = host.run("doctor", name)
    assert "there is no image at s3://backups/hosts/s3core yet" in before.stdout + before.stderr
    host.ok("init", name)
    doctor = host.ok("doctor", name)
    said = doctor.stdout + doctor.stderr
    assert f"the bucket of s3://backups/hosts/{name} answers" in said
    assert f"image s3://backups/hosts/{name}: 64 MiB in objects of 256 KiB" in said
    # rclone's S3 server overwrites on If-None-Match: doctor says what that means for the lock.
    assert "the store ignores If-None-Match" in said
    assert not os.path.exists(s3.object(f"hosts/{name}.imgbackup-doctor")), "doctor's probe object was left"
    assert_no_s3_leftovers(host, s3, name)
    with open(s3.object(f"hosts/{name}.imgbackup")) as metadata:
        assert metadata.read() == f"imgbackup-s3-image 1\nsize={64 * MiB}\nobject_size={256 << 10}\n"
    assert not os.path.exists(s3.object(f"hosts/{name}.imgbackup-partial"))
    made = s3.objects(f"hosts/{name}")
    print(f"init wrote {len(made)} objects of 256 KiB for a 64 MiB image")
    assert 1 <= len(made) < 256, "only the blocks written exist"

    mount = host.ok("open", name).stdout.strip()
    try:
        lock = open(s3.object(f"hosts/{name}.lock")).read()
        assert f"target={name}" in lock and "token=" in lock
        assert not os.path.exists(os.path.join(host.runtime, name, "s3", "aws-credentials")), \
            "nbdkit's copy of the credentials outlived its connection"
        marker = b"imgbackup-s3-plaintext-marker " * 1000
        with open(os.path.join(mount, "marker.txt"), "wb") as out:
            out.write(marker)
        status = host.ok("status", name, "--json").stdout
        assert '"transport" : "s3"' in status or '"transport": "s3"' in status
        # Another machine's open of the same prefix is refused while this
        # one holds the lock (its own state, its own mount point).
        other = host.new_machine("s3other")
        add_s3_target(other, s3, "s3core2", size="64M", tables={"s3": {"prefix": f"hosts/{name}"}})
        refused = other.run("open", "s3core2")
        assert refused.returncode == 4
        assert refused.stderr.strip().splitlines()[-1].startswith(
            f"imgbackup: error: the image hosts/{name} is locked by target '{name}'")
        # ... and so is its read-only open (it could see a half-written filesystem).
        refused = other.run("open", "--read-only", "s3core2")
        assert refused.returncode == 4 and "could see it half-written" in refused.stderr
        assert mounts_under(other.runtime) == [] and not os.path.exists(other.state_record("s3core2")), \
            "the refused opens left something up"
        assert os.path.exists(s3.object(f"hosts/{name}.lock")), "the refused opens left the lock alone"
    finally:
        host.ok("close", name)
    assert_no_s3_leftovers(host, s3, name)
    for path in s3.objects(f"hosts/{name}"):
        assert b"imgbackup-s3-plaintext-marker" not in open(path, "rb").read(), f"plaintext in {path}"
    # What comes back through a new open: test_a_run_and_a_trim_that_deletes_objects.
    # A second init never overwrites.
    again = host.run("init", name)
    assert again.returncode == 1 and "an image exists at s3://backups/hosts/s3core" in again.stderr


def test_a_run_and_a_trim_that_deletes_objects(host, s3, s3_template):
    """A run backs up with rsync; trim after deleting the data deletes the
    objects of the freed blocks, counted on the server, and reports it."""
    source = os.path.join(host.work, "src-s3run")
    write_random_files(source, 6, 2 * MiB)
    name = add_s3_target(host, s3, "s3run", size="64M", tables={"copy": {"method": "rsync", "sources": [source]}})
    clone_s3_image(host, s3, s3_template, name)
    host.ok("run", name)
    assert_no_s3_leftovers(host, s3, name)
    after_run = len(s3.objects(f"hosts/{name}"))
    # list opens the closed image read-only over S3: it takes no lock and changes no object.
    objects = {path: os.path.getmtime(path) for path in s3.objects(f"hosts/{name}")}
    listed = host.ok("list", name)
    assert len([line for line in listed.stdout.splitlines() if line[:1].isdigit()]) == 1, listed.stdout
    assert {path: os.path.getmtime(path) for path in s3.objects(f"hosts/{name}")} == objects
    assert_no_s3_leftovers(host, s3, name)
    mount = host.ok("open", name).stdout.strip()
    try:
        snapshots = sorted(p for p in os.listdir(os.path.join(mount, "snapshots")) if p[0].isdigit())
        assert len(snapshots) == 1
        assert tree_digest(os.path.join(mount, "snapshots", snapshots[0]) + source) == tree_digest(source)
        subprocess.run(["rm", "-rf", os.path.join(mount, "snapshots")], check=True)
    finally:
        host.ok("close", name)
    trimmed = host.ok("trim", name)
    after_trim = len(s3.objects(f"hosts/{name}"))
    print(f"objects: {after_run} after the run, {after_trim} after the trim")
    assert after_trim <= after_run - 8, "the 12 MiB of freed blocks were given back"
    given_back = [line for line in trimmed.stdout.splitlines() if line.startswith("given back: ")]
    assert given_back and int(given_back[0].split("(")[1].split()[0]) >= 8 * MiB, trimmed.stdout
    assert_no_s3_leftovers(host, s3, name)
    host.discard(name, source)


def test_a_frozen_store_is_a_hang_and_the_next_run_goes_ahead(host, s3, s3_template):
    """rclone SIGSTOPped mid-copy: exit 3 within the stall plus 30 s, nothing
    left on this machine but the lock object the store could not delete,
    which the next run replaces as this machine's own."""
    source = os.path.join(host.work, "src-s3frozen")
    write_random_files(source, 1, MiB)
    name = add_s3_target(host, s3, "s3frozen", size="64M", tables={
        "copy": {"method": "rsync", "sources": [source]},
        "timeouts": {"stall": f"{STALL}s", "teardown": "10s"}})
    clone_s3_image(host, s3, s3_template, name)
    write_random_files(os.path.join(source, "big"), 6, 4 * MiB)
    run = start_run(host, name)
    wait_until_copying(host, name)
    stderr = freeze_expecting_hang(run, "S3 store frozen", "imgbackup: error: the backup hung",
                                   pids=[s3.process.pid])
    assert f"the S3 store at {s3.endpoint} did not answer" in stderr
    assert_nothing_left(host, name, stale_lock=True)
    assert processes_named("nbdkit") == [], "nbdkit was left running"
    assert os.path.exists(s3.object(f"hosts/{name}.lock")), "the frozen store kept the lock object"
    result = host.ok("run", name)
    # The bridge took the lock over; its notice reaches the run's output.
    assert "replacing this machine's own stale lock on hosts/s3frozen" in result.stderr
    assert "did not end cleanly" in result.stderr
    assert_no_s3_leftovers(host, s3, name)
    host.discard(name, source)


def test_a_store_slower_than_the_stall_is_no_hang(host, s3, s3_template):
    """An uplink that needs longer than the stall to send what one commit
    gathered (bandwidth_limit 512 KiB/s, 16 MiB, stall 15 s): nbdkit's cache
    filter answers no ping while its flush sends, but the store's answers to
    the flush's PUTs show it works, and the run succeeds. (Before, the run
    was declared hung.)"""
    source = os.path.join(host.work, "src-s3slow")
    write_random_files(source, 4, 4 * MiB)
    name = add_s3_target(host, s3, "s3slow", size="64M", bandwidth_limit="512K", tables={
        "copy": {"method": "rsync", "sources": [source]}, "timeouts": {"stall": f"{STALL}s"}})
    clone_s3_image(host, s3, s3_template, name)
    result = host.ok("run", name)
    assert "hung" not in result.stderr
    with open(os.path.join(host.state, name, "runs.jsonl")) as history:
        record = json.loads(history.read().splitlines()[-1])
    print(f"run: {record['wireBytesSent']} bytes sent to the store at 512 KiB/s")
    # What the store got took more than two stalls to send at the cap.
    assert record["wireBytesSent"] >= 16 * MiB > 2 * STALL * 512 * 1024
    assert_no_s3_leftovers(host, s3, name)
    host.discard(name, source)


def test_imgbackup_killed_mid_run_then_close_recovers_and_the_image_grows(host, s3, s3_template):
    """kill -9 of imgbackup mid-copy: close stops what it left, releases the
    lock through the bridge, and the next open's check finds the filesystem
    clean. Then resize grows it."""
    name = add_s3_target(host, s3, "s3killed", size="64M", tables={"copy": {"method": "command", "command": [
        "sh", "-c", "head -c 8388608 /dev/urandom > {mount}/part && cd {mount} && exec sleep 600"]}})
    clone_s3_image(host, s3, s3_template, name)
    run = start_run(host, name)
    wait_for_process("sleep", run)
    run.kill()
    run.wait()
    result = host.ok("close", name)
    assert "stopping what the interrupted run" in result.stderr
    assert_no_s3_leftovers(host, s3, name)
    # resize (which opens it again): the metadata object's size grows, then the layers above.
    resized = host.ok("resize", name, "--size", "96M")
    assert "did not end cleanly" not in resized.stderr, "close unmounted cleanly"
    with open(s3.object(f"hosts/{name}.imgbackup")) as metadata:
        assert f"size={96 * MiB}\n" in metadata.read()
    opened = host.ok("open", name)
    try:
        statvfs = os.statvfs(opened.stdout.strip())
        assert statvfs.f_blocks * statvfs.f_frsize > 72 * MiB, "the filesystem grew"
        assert os.path.getsize(os.path.join(opened.stdout.strip(), "part")) == 8 * MiB
    finally:
        host.ok("close", name)
    assert_no_s3_leftovers(host, s3, name)
    refused = host.run("resize", name, "--size", "100004K")
    assert refused.returncode == 1 and "a whole number of 256 KiB objects" in refused.stderr


class FailingStore:
    """An S3 endpoint that answers every request 500, with a message the way
    a hostile or broken store could write it: 45 KiB of terminal escapes and
    lines that pretend to be imgbackup's."""
    MESSAGE = "\x1b]0;owned\x07\x1b[2J\nimgbackup: all backups fine " * 1000

    def __enter__(self):
        message = xml.sax.saxutils.escape(self.MESSAGE)

        class Answer500(http.server.BaseHTTPRequestHandler):
            def answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = f"<Error><Code>InternalError</Code><Message>{message}</Message></Error>".encode()
                self.send_response(500)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer500)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_what_the_store_refuses_is_one_clear_line(host, s3):
    """Wrong credentials (403), a bucket that is gone (404), an endpoint
    nobody serves, a store that answers 500 with a hostile message: each one
    short line, exit 6 (the remote), nothing left, and the secret never
    printed."""
    name = "s3refused"  # no image: each is refused before it could be read
    wrong = os.path.join(host.work, "keys", "s3-wrong")
    with open(os.open(wrong, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        out.write(f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = not-{SECRET_KEY}\n")
    cases = {
        "s3wrongkey": ({"credentials_file": wrong, "prefix": f"hosts/{name}"}, "imgbackup: error: the S3 store refused to read backups/hosts/s3refused.imgbackup: 403"),
        "s3nobucket": ({"bucket": "gone-bucket", "prefix": f"hosts/{name}"}, "imgbackup: error: the S3 bucket 'gone-bucket' does not exist"),
        "s3noserver": ({"endpoint": "http://127.0.0.1:9", "prefix": f"hosts/{name}"}, "imgbackup: error: failed to reach the S3 endpoint http://127.0.0.1:9"),
    }
    with FailingStore() as failing:
        cases["s3error500"] = ({"endpoint": failing, "prefix": f"hosts/{name}"},
                               "imgbackup: error: failed to read backups/hosts/s3refused.imgbackup in S3: "
                               "the store answered 500 InternalError: \\u{1b}]0;owned\\u{7}")
        for case, (table, line) in cases.items():
            add_s3_target(host, s3, case, size="64M", tables={"s3": table})
            result = host.run("open", case)
            print(case, result.returncode, result.stderr[:1000])
            assert result.returncode == 6
            last = result.stderr.strip().splitlines()[-1]
            assert last.startswith(line)
            assert len(result.stderr) < 1000 and "\x1b" not in result.stderr, "the store's words were not clipped"
            assert SECRET_KEY not in result.stderr + result.stdout
            assert_nothing_left(host, case)


def test_a_store_that_goes_away_mid_run_leaves_no_half_backup(host, s3, s3_template):
    """The server killed mid-copy (connections refused, not a freeze): the
    run fails in one line, nothing is left up, and once the store is back
    the next run goes ahead; the broken run's copy is never a backup point
    that counts (at most an incomplete one)."""
    source = os.path.join(host.work, "src-s3gone")
    write_random_files(source, 6, 4 * MiB)
    name = add_s3_target(host, s3, "s3gone", size="64M", tables={
        "copy": {"method": "rsync", "sources": [source]},
        "timeouts": {"stall": f"{STALL}s", "teardown": "10s"}})
    clone_s3_image(host, s3, s3_template, name)
    run = start_run(host, name)
    wait_until_copying(host, name)
    s3.stop()
    try:
        _, stderr = run.communicate(timeout=STALL + 180)
    finally:
        s3.start()
    print(stderr)
    assert run.returncode in (2, 3, 7), "the copy failed, the watchdog saw the store gone, or close lost writes"
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("imgbackup: error: ") and SECRET_KEY not in stderr
    host.ok("close", name)  # whatever is left (the lock object the store could not take back)
    assert_nothing_left(host, name, stale_lock=True)
    result = host.ok("run", name)
    assert "did not end cleanly" in result.stderr
    listed = host.ok("list", name, "--json").stdout
    points = json.loads(listed)["points"]
    assert len([point for point in points if point["complete"]]) == 1, listed
    assert_no_s3_leftovers(host, s3, name)
    host.discard(name, source)
