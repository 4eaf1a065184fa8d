"""Prometheus textfile metrics after every run (issue 8): written by a real
run over NBD, parseable, and updated by a failing run too."""
import os
import re
import shutil

from conftest import assert_nothing_left

MiB = 1 << 20
SAMPLE = re.compile(r'^([a-z_]+)\{target="([^"]*)"\} (-?[0-9]+)$')


def read_metrics(path):
    """{name: value} of one target's file, checking the exposition format:
    every sample has its HELP and TYPE gauge lines, nothing else is there."""
    with open(path) as file:
        lines = file.read().splitlines()
    samples, described = {}, set()
    for line in lines:
        if line.startswith("# HELP "):
            described.add(line.split(" ")[2])
        elif line.startswith("# TYPE "):
            assert line.endswith(" gauge"), line
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, target, value = match.groups()
            assert target == "metrics" and name in described, line
            samples[name] = int(value)
    return samples


def test_metrics_are_written_after_a_run_and_after_a_failed_one(host):
    source = os.path.join(host.work, "metrics-source")
    os.makedirs(source)
    with open(os.path.join(source, "data.bin"), "wb") as out:
        out.write(os.urandom(2 * MiB))
    directory = os.path.join(host.work, "node-exporter")
    config = host.with_config("metrics.toml")
    with open(config.config, "w") as out:
        out.write(f'[metrics]\ndirectory = "{directory}"\n')
    config.add_target("metrics", transport="nbd", tables={
        "nbd": {"command": ["nbdkit", "--single", "--exit-with-parent", "file", host.image("metrics")]},
        "copy": {"method": "rsync", "sources": [source]}})
    host.clone_image("metrics")
    path = os.path.join(directory, "imgbackup-metrics.prom")

    config.ok("run", "metrics")
    first = read_metrics(path)
    assert os.stat(path).st_mode & 0o777 == 0o644, "node_exporter does not run as root"
    assert os.listdir(directory) == ["imgbackup-metrics.prom"], "no temporary file is left"
    assert first["imgbackup_last_run_success"] == 1 and first["imgbackup_last_run_exit_code"] == 0
    assert first["imgbackup_last_run_start_timestamp_seconds"] <= first["imgbackup_last_run_end_timestamp_seconds"]
    assert first["imgbackup_last_success_timestamp_seconds"] == first["imgbackup_last_run_end_timestamp_seconds"]
    assert first["imgbackup_last_run_bytes_copied"] >= 2 * MiB
    assert first["imgbackup_last_run_bytes_written"] >= 2 * MiB
    assert first["imgbackup_image_apparent_bytes"] == 96 * MiB
    # Over NBD the allocation is known: the data went in, the sparse image is not full.
    assert 2 * MiB <= first["imgbackup_image_allocated_bytes"] < 96 * MiB

    shutil.rmtree(source)
    failed = config.run("run", "metrics")
    assert failed.returncode == 2, failed.stderr
    second = read_metrics(path)
    assert second["imgbackup_last_run_success"] == 0 and second["imgbackup_last_run_exit_code"] == 2
    assert second["imgbackup_last_run_start_timestamp_seconds"] >= first["imgbackup_last_run_end_timestamp_seconds"]
    assert second["imgbackup_last_success_timestamp_seconds"] == first["imgbackup_last_success_timestamp_seconds"]
    assert second["imgbackup_image_apparent_bytes"] == 96 * MiB
    assert_nothing_left(config, "metrics")
    host.discard("metrics")
