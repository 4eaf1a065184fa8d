"""`imgbackup status` (issue 7) against the real stack: each layer checked
live, the lock holder, the last run, the image's sizes, the mount's usage."""
import json
import os
import re
import subprocess

from conftest import assert_nothing_left
from test_faults import start, wait_for_process

MiB = 1 << 20


def status(host, target):
    result = host.ok("status", target, "--json")
    targets = json.loads(result.stdout)["targets"]
    assert [t["target"] for t in targets] == [target]
    return targets[0]


def layers(report):
    return {layer["layer"]: layer["up"] for layer in report["layers"]}


def check_open_then_partial(host, name, mount):
    report = status(host, name)
    assert report["state"] == "open"
    assert layers(report) == {"sshfs": True, "lock": None, "loop": True, "dm-crypt": True, "filesystem": True}
    assert all(layer["recorded"] for layer in report["layers"])
    assert report["stateRecord"]["operation"] == "open" and report["stateRecord"]["running"] is False
    # Over sshfs the apparent size is known live, the allocation is not.
    assert report["image"]["source"] == "live" and report["image"]["apparentBytes"] == 96 * MiB
    assert report["image"]["allocatedBytes"] is None
    usage = report["mountUsage"]
    statvfs = os.statvfs(mount)
    assert usage["sizeBytes"] == statvfs.f_blocks * statvfs.f_frsize and 0 < usage["usedBytes"] < usage["sizeBytes"]
    assert host.ok("status", name).stdout.startswith(f"{name}: open at {mount} over sshfs\n")

    # Taken down behind imgbackup's back: the record still lists the mount, the live check says it is gone.
    subprocess.run(["umount", mount], check=True)
    report = status(host, name)
    assert report["state"] == "partial" and layers(report)["filesystem"] is False and layers(report)["dm-crypt"] is True
    assert f"partly up: run 'imgbackup close {name}'" in host.ok("status", name).stdout


def test_status_follows_a_target_through_open_partial_close_and_run(host):
    name = host.add_target("status", size="96M", tables={"copy": {"method": "command", "command": ["sleep", "12"]}})
    host.clone_image(name)

    report = status(host, name)
    assert report["state"] == "closed" and report["layers"] == [] and report["lastRun"] is None
    assert report["lockHolder"] is None and report["image"] is None and report["mountUsage"] is None
    assert "last run: none recorded" in host.ok("status", name).stdout

    mount = host.ok("open", name).stdout.strip()
    try:
        check_open_then_partial(host, name, mount)
    finally:
        host.run("close", name)
    assert status(host, name)["state"] == "closed"
    assert_nothing_left(host, name)

    # While a run works, status names it and its lock; it takes no lock itself.
    run = start(host, "run", name)
    try:
        wait_for_process("sleep", run)
        report = status(host, name)
        assert report["lockHolder"] == run.pid
        assert report["stateRecord"]["running"] is True and report["state"] == "open"
        assert f"locked by: pid {run.pid}" in host.ok("status", name).stdout
    finally:
        stdout, stderr = run.communicate(timeout=180)
    assert run.returncode == 0, stderr
    report = status(host, name)
    assert report["state"] == "closed" and report["lockHolder"] is None and report["stateRecord"] is None
    assert report["lastRun"]["result"] == "success" and report["lastRun"]["method"] == "command"
    assert report["lastSuccess"] == report["lastRun"]["end"]
    assert_nothing_left(host, name)
    host.discard(name)


def test_status_shows_the_remote_allocation_live_over_nbd_and_after_a_trim(host):
    image = host.image("status_nbd")
    name = host.add_target("status_nbd", size="96M", transport="nbd",
                           tables={"nbd": {"command": ["nbdkit", "--single", "--exit-with-parent", "file", image]}})
    host.clone_image(name)
    mount = host.ok("open", name).stdout.strip()
    try:
        with open(os.path.join(mount, "bulk.bin"), "wb") as out:
            out.write(os.urandom(16 * MiB))
        os.sync()
        report = status(host, name)
        assert report["transport"] == "nbd" and report["image"]["source"] == "live"
        assert report["image"]["apparentBytes"] == 96 * MiB
        allocated = os.stat(image).st_blocks * 512
        assert abs(report["image"]["allocatedBytes"] - allocated) <= 4 * MiB, (report["image"], allocated)
        os.remove(os.path.join(mount, "bulk.bin"))
    finally:
        host.ok("close", name)

    trim = host.ok("trim", name)
    after = int(re.search(r"remote allocated after: .*\((\d+) bytes\)", trim.stdout).group(1))
    report = status(host, name)
    assert report["state"] == "closed"
    assert report["image"]["source"] == "trim" and report["image"]["allocatedBytes"] == after
    assert report["image"]["apparentBytes"] == 96 * MiB
    assert "allocated on the remote (at the trim of" in host.ok("status", name).stdout
    assert_nothing_left(host, name)
    host.discard(name)
