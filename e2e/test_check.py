"""imgbackup check (issue 21): what it detects when the backup host flips
ciphertext on the remote, per filesystem and copy method. The attacker's
way: one byte of the image file XORed on the backup host's side; through
dm-crypt (4 KiB sectors) that garbles one whole 4 KiB block of plaintext.

Measured, and said in docs/usage.md ("Checking backups"):
- ext4, a flipped data block: not detected (ext4 keeps no data checksums;
  the file reads back as garbage). A flipped inode table block: e2fsck
  and the read-back both name it.
- btrfs, a flipped data block: the file cannot be read back (its data
  checksum), and is named.
- borg in ext4, a flipped block of a segment file: borg check --verify-data.
"""
import os
import re
import subprocess

from conftest import assert_nothing_left, sha256_of
from test_run import DAY, POINT


def data_offset(image):
    """Where the encrypted filesystem starts in the image file (the LUKS2 data segment)."""
    dump = subprocess.run(["cryptsetup", "luksDump", image], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"offset:\s+(\d+) \[bytes\]", dump.split("Data segments:")[1]).group(1))


def first_block(path):
    """The first 4 KiB block of a file as filefrag maps it (ext4: on the
    device; btrfs: its logical address space)."""
    report = subprocess.run(["filefrag", "-v", "-b4096", path], capture_output=True, text=True, check=True).stdout
    for line in report.splitlines():
        extent = re.match(r"\s*0:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.", line)
        if extent:
            return int(extent.group(1))
    raise AssertionError(f"filefrag mapped nothing of {path}:\n{report}")


def flip(image, offset):
    """What the backup host does: one byte of the stored ciphertext changed."""
    with open(image, "r+b") as stored:
        stored.seek(offset)
        byte = stored.read(1)
        stored.seek(offset)
        stored.write(bytes([byte[0] ^ 0xFF]))


def source_with_a_victim(root):
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    for index in range(5):
        with open(os.path.join(root, "data", f"file{index}.bin"), "wb") as out:
            out.write(os.urandom(64 << 10))
    with open(os.path.join(root, "data", "victim.bin"), "wb") as out:
        out.write(os.urandom(1 << 20))
    return root


def checked(host, name, status):
    result = host.run("check", name)
    assert result.returncode == status, result.stderr
    assert_nothing_left(host, name)
    return result


def test_check_on_ext4_names_damaged_metadata_and_cannot_see_damaged_data(host):
    source = source_with_a_victim(os.path.join(host.work, "src-check-ext4"))
    name = host.add_target("check_ext4", tables={"copy": {"method": "rsync", "sources": [source]}})
    host.clone_image(name)
    host.ok("run", name, "--now", DAY[0])
    image = host.image(name)
    before = sha256_of(image)
    clean = checked(host, name, 0)
    assert "e2fsck: the ext4 filesystem is clean" in clean.stdout and "every one read back" in clean.stdout
    assert sha256_of(image) == before, "check changed the image"

    victim = f"snapshots/{POINT[0]}{source}/data/victim.bin"
    mount = host.ok("open", name).stdout.strip()
    block = first_block(os.path.join(mount, victim))
    imap = subprocess.run(["debugfs", "-R", f"imap /{victim}", f"/dev/mapper/imgbackup-{name}"],
                          capture_output=True, text=True, check=True).stdout
    inode_block = int(re.search(r"located at block (\d+)", imap).group(1))
    host.ok("close", name)

    flip(image, data_offset(image) + block * 4096 + 1000)
    unseen = checked(host, name, 0)
    assert "unreadable:" not in unseen.stdout  # ext4 has no data checksums: measured, documented

    flip(image, data_offset(image) + inode_block * 4096 + 100)
    damaged = checked(host, name, 10)
    assert "e2fsck found errors in the ext4 filesystem" in damaged.stderr
    host.discard(name, source)


def test_check_on_btrfs_names_a_file_whose_data_was_flipped(host):
    source = source_with_a_victim(os.path.join(host.work, "src-check-btrfs"))
    name = host.add_target("check_btrfs", size="160M", filesystem="btrfs",
                           tables={"copy": {"method": "rsync", "sources": [source]}})
    host.ok("init", name)
    host.ok("run", name, "--now", DAY[0])
    image = host.image(name)
    clean = checked(host, name, 0)
    assert "btrfs: the btrfs filesystem is clean" in clean.stdout

    victim = f"snapshots/{POINT[0]}{source}/data/victim.bin"
    mount = host.ok("open", name).stdout.strip()
    logical = first_block(os.path.join(mount, victim)) * 4096
    mapped = subprocess.run(["btrfs-map-logical", "-l", str(logical), f"/dev/mapper/imgbackup-{name}"],
                            capture_output=True, text=True, check=True).stdout
    physical = int(re.search(r"physical (\d+)", mapped).group(1))
    host.ok("close", name)

    flip(image, data_offset(image) + physical + 1000)
    damaged = checked(host, name, 10)
    assert f"unreadable: {victim} (Input/output error)" in damaged.stdout
    assert "1 file could not be read back" in damaged.stderr
    host.discard(name, source)


def test_check_with_borg_verifies_every_chunk(host):
    source = source_with_a_victim(os.path.join(host.work, "src-check-borg"))
    name = host.add_target("check_borg", size="96M", tables={"copy": {"method": "borg", "sources": [source]}})
    host.clone_image(name)
    host.ok("run", name, "--now", DAY[0], timeout=600)
    image = host.image(name)
    clean = checked(host, name, 0)
    assert "borg check --verify-data: every archive and chunk is intact" in clean.stdout

    mount = host.ok("open", name).stdout.strip()
    segments = os.path.join(mount, "borg", "data", "0")
    largest = max(os.listdir(segments), key=lambda segment: os.path.getsize(os.path.join(segments, segment)))
    block = first_block(os.path.join(segments, largest))
    host.ok("close", name)

    flip(image, data_offset(image) + (block + 2) * 4096 + 1000)
    damaged = checked(host, name, 10)
    assert "borg check --verify-data found damage" in damaged.stderr
    host.discard(name, source)
