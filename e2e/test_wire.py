"""Bytes on the wire and the bandwidth limit (issue 20): a run records what
its own connections sent and received (the kernel's TCP counters of its
ssh sockets), status shows it, and a target's bandwidth_limit caps what
each connection sends (SO_MAX_PACING_RATE)."""
import json
import os
import subprocess
import time

from conftest import assert_nothing_left
from test_faults import MiB, write_random_files

LIMIT = 512 << 10


def lo_tx_bytes():
    with open("/sys/class/net/lo/statistics/tx_bytes") as counter:
        return int(counter.read())


def test_a_run_counts_its_bytes_on_the_wire_and_a_bandwidth_limit_caps_them(host):
    source = os.path.join(host.work, "src-wire")
    write_random_files(source, 3, MiB)
    name = host.add_target("wire", bandwidth_limit="512K", tables={"copy": {"method": "rsync", "sources": [source]}})
    host.clone_image(name)

    before = lo_tx_bytes()
    host.ok("run", name)
    on_lo = lo_tx_bytes() - before
    with open(os.path.join(host.state, name, "runs.jsonl")) as history:
        record = json.loads(history.read().splitlines()[-1])
    sent, received = record["wireBytesSent"], record["wireBytesReceived"]
    print(f"run: {sent} bytes sent, {received} received on the wire; loopback carried {on_lo}; "
          f"{record['bytesWritten']} written to the image")
    # Random data cannot shrink: all of it crossed, encrypted, and no more
    # than the loopback interface carried in all (both ends' packets).
    assert 3 * MiB <= sent <= on_lo
    assert 0 < received <= on_lo
    status = host.ok("status", name).stdout
    assert "sent and" in status and "received on the wire" in status, status

    # A person's open is capped as well: the ssh socket says so, and a write
    # that has to reach the remote takes at least as long as the cap allows.
    mount = host.ok("open", name).stdout.strip()
    try:
        sockets = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, check=True).stdout
        print(sockets)
        # ss shows "pacing_rate NOW/MAX": the cap, in bits a second.
        assert f"pacing_rate {LIMIT * 8}bps/{LIMIT * 8}bps" in sockets, "no connection is capped at 512 KiB/s"
        started = time.monotonic()
        subprocess.run(["dd", "if=/dev/urandom", f"of={mount}/capped.bin", "bs=1M", "count=4", "conv=fsync",
                        "status=none"], check=True)
        took = time.monotonic() - started
        print(f"4 MiB written out under a 512 KiB/s cap in {took:.1f}s")
        assert took >= 4 * MiB / LIMIT * 0.9
    finally:
        host.ok("close", name)
    assert_nothing_left(host, name)
    host.discard(name, source)
