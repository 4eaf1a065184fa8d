"""A hostile backup host (issue 17), attacking the way it would: forging the
LUKS2 header it stores, planting symlinks, answering with absurd numbers.
Each attack must be refused with the right exit status and nothing written
under a key the host knows. docs/threat-model.md lists them."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import assert_nothing_left, sha256_of
from luks2_forge import null_keyslot, read_metadata


def attacker_image(host, name, work):
    """What the host does: format an image of its own with a volume key it
    chose, copy our header's UUID into it (plaintext, in the header), and
    turn keyslot 0 into cipher_null so that any passphrase opens it."""
    # The UUID as plaintext bytes of our header: the forged one gets them exactly.
    with open(host.image(name), "rb") as ours:
        ours.seek(168)
        uuid = ours.read(40).split(b"\0")[0].decode()
    volume_key = os.urandom(64)
    with open(os.path.join(work, "vk"), "wb") as out:
        out.write(volume_key)
    with open(os.path.join(work, "attacker.key"), "wb") as out:
        out.write(b"the host's own passphrase")
    os.chmod(os.path.join(work, "attacker.key"), 0o600)
    forged = os.path.join(work, "forged.img")
    subprocess.run(["truncate", "-s", str(os.path.getsize(host.image(name))), forged], check=True)
    subprocess.run(["cryptsetup", "luksFormat", "-q", "--type", "luks2", "--uuid", uuid,
                    "--volume-key-file", os.path.join(work, "vk"), "--key-size", "512", "--sector-size", "4096",
                    "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                    "--key-file", os.path.join(work, "attacker.key"), forged], check=True)
    null_keyslot(forged, volume_key, uuid=uuid)
    # And a filesystem inside, so that a client fooled by the header would
    # mount it and write its backup there, under the host's volume key.
    mapping = f"attacker-{os.path.basename(work)}"
    subprocess.run(["cryptsetup", "open", "--key-file", os.path.join(work, "attacker.key"), forged, mapping], check=True)
    try:
        subprocess.run(["mkfs.ext4", "-q", f"/dev/mapper/{mapping}"], check=True)
    finally:
        subprocess.run(["cryptsetup", "close", mapping], check=True)
    return forged, volume_key


def test_a_header_forged_under_our_uuid_with_a_null_keyslot_is_refused(host):
    """libcryptsetup 2.6.1 opens the forged keyslot with our key too (shown
    first, with cryptsetup itself): without the pin, the next run would write
    a backup the host can decrypt."""
    name = host.add_target("forged", tables={"copy": {"method": "rsync", "sources": ["/usr/share/doc/cryptsetup-bin"]}})
    host.clone_image(name)
    work = os.path.join(host.work, "forge")
    os.makedirs(work, exist_ok=True)
    forged, _ = attacker_image(host, name, work)
    opens = subprocess.run(["cryptsetup", "open", "--test-passphrase", "--key-file",
                            os.path.join(host.work, "keys", "demo.key"), forged])
    assert opens.returncode == 0, "the forged keyslot no longer opens with any key: the attack needs a new form"
    os.replace(forged, host.image(name))
    digest = sha256_of(host.image(name))

    for command in (["run", name], ["open", name], ["key", "add", name, "--new-key-file", os.path.join(work, "attacker.key")]):
        result = host.run(*command)
        assert result.returncode == 5, result.stderr
        assert "the image on the remote is not the one this machine created" in result.stderr
        assert "keeps keyslot 0's key unencrypted (cipher_null-ecb)" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert sha256_of(host.image(name)) == digest, "something was written to the forged image"
        assert_nothing_left(host, name)
    runs = os.path.join(host.state, name, "runs.jsonl")
    assert not os.path.exists(runs) or all(json.loads(line)["result"] != "ok" for line in open(runs))
    shutil.rmtree(work)
    host.discard(name)


def test_a_null_keyslot_is_refused_even_on_a_machine_with_no_pin_yet(host):
    """A new machine (restore day) trusts the first header it sees, but never
    one whose keyslot is not encrypted."""
    name = host.add_target("forged_new")
    host.clone_image(name)
    work = os.path.join(host.work, "forge-new")
    os.makedirs(work, exist_ok=True)
    forged, _ = attacker_image(host, name, work)
    os.replace(forged, host.image(name))
    machine = host.new_machine("forged-new-machine")
    result = machine.run("open", name)
    assert result.returncode == 5, result.stderr
    assert "keeps keyslot 0's key unencrypted (cipher_null-ecb)" in result.stderr
    assert not os.path.exists(os.path.join(machine.state, name, "luks-header.json"))
    assert_nothing_left(machine, name)
    shutil.rmtree(work)
    host.discard(name)


def test_a_machine_with_only_the_uuid_records_the_pin_on_its_next_open(host):
    """Images made before pins existed: the next open records the pin and says so."""
    name = host.add_target("unpinned")
    host.clone_image(name)
    pin = os.path.join(host.state, name, "luks-header.json")
    os.remove(pin)
    result = host.ok("open", name)
    assert "recording the LUKS header pin of target 'unpinned'" in result.stderr
    assert "recorded before header pins existed" in result.stderr
    host.ok("close", name)
    recorded = json.load(open(pin))
    assert recorded == json.load(open(os.path.join(host.state, "template", "luks-header.json")))
    assert "aes-xts-plain64" in recorded["segment"] and recorded["keyslotEncryption"] == "aes-xts-plain64"
    # Pinned now: the second open says nothing about it.
    assert "recording" not in host.ok("open", name).stderr
    host.ok("close", name)
    host.discard(name)


def test_an_older_copy_of_the_image_is_refused_until_a_person_accepts_it(host):
    """The host keeps yesterday's copy and serves it after today's run."""
    name = host.add_target("rollback", tables={"copy": {"method": "rsync", "sources": ["/usr/share/doc/cryptsetup-bin"]}})
    host.clone_image(name)
    host.ok("open", name)
    host.ok("close", name)
    yesterday = host.image(name) + ".yesterday"
    subprocess.run(["cp", "--sparse=always", host.image(name), yesterday], check=True)
    mount = host.ok("open", name).stdout.strip()
    with open(os.path.join(mount, "today"), "w") as out:
        out.write("written after the copy was taken\n")
    host.ok("close", name)
    assert open(os.path.join(host.state, name, "generation")).read().strip() == "2"

    os.replace(yesterday, host.image(name))
    for command in (["open", name], ["run", name]):
        result = host.run(*command)
        assert result.returncode == 5, result.stderr
        assert "it is older than the one this machine last opened (generation 1, expected at least 2)" in result.stderr
        # One error line (the refused open before it left the session marked, so a check runs first).
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and "--accept-rollback" in errors[0], result.stderr
        assert_nothing_left(host, name)

    mount = host.ok("open", name, "--accept-rollback").stdout.strip()
    assert not os.path.exists(os.path.join(mount, "today"))
    host.ok("close", name)
    host.ok("open", name)
    host.ok("close", name)
    assert open(os.path.join(host.state, name, "generation")).read().strip() == "3"
    host.discard(name)


def test_an_image_replaced_by_a_symlink_to_a_client_file_is_never_opened_or_grown(host):
    """The remote puts a symlink where the image was, absolute or climbing out
    with ..: through sshfs it would resolve against this machine's own files,
    as root. Here the victim is a LUKS image the key opens, outside the
    remote directory, so following the link would succeed."""
    name = host.add_target("linked")
    host.clone_image(name)
    victim = os.path.join(host.work, "victim.img")
    os.replace(host.image(name), victim)
    size = os.path.getsize(victim)
    digest = sha256_of(victim)
    relative = os.path.relpath(victim, host.storage)
    for target in (victim, relative):
        os.symlink(target, host.image(name))
        for command in (["open", name], ["resize", name, "--size", "128M"]):
            result = host.run(*command)
            assert result.returncode == 6, result.stderr
            assert f"refusing to open the image {host.runtime}/{name}/remote/{name}.img: on the remote it is a symbolic link" in result.stderr
            assert_nothing_left(host, name)
        assert os.path.getsize(victim) == size and sha256_of(victim) == digest
        os.remove(host.image(name))
    os.remove(victim)


def find_block(device, block):
    """The offset of the 4 KiB `block` on `device`, scanning 4 KiB-aligned blocks."""
    with open(device, "rb") as source:
        offset = 0
        while True:
            chunk = source.read(16 << 20)
            if not chunk:
                return None
            for start in range(0, len(chunk), 4096):
                if chunk[start:start + 4096] == block:
                    return offset + start
            offset += len(chunk)


@pytest.mark.parametrize("filesystem", ["ext4", "btrfs"])
def test_what_each_filesystem_detects_when_the_host_flips_ciphertext_of_file_data(host, filesystem):
    """What remains (docs/threat-model.md): XTS has no integrity. The host
    flips one byte in each of 4 encrypted sectors of a file's data; ext4
    hands back the file with 16 bytes of noise per flip (one AES block),
    btrfs refuses to read it (its data checksums)."""
    name = host.add_target(f"flip_{filesystem}", filesystem=filesystem, size="160M")
    if filesystem == "ext4":
        host.clone_image(name)
    else:
        host.ok("init", name)
    data = os.urandom(1 << 20)
    mount = host.ok("open", name).stdout.strip()
    with open(os.path.join(mount, "file.bin"), "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    offset = find_block(f"/dev/mapper/imgbackup-{name}", data[:4096])
    host.ok("close", name)
    assert offset is not None, "the file's first block is not on the device"
    with open(host.image(name), "r+b") as image:
        _, metadata = read_metadata(image)
        start = int(metadata["segments"]["0"]["offset"]) + offset
        for sector in (0, 1, 7, 100):  # 4 KiB sectors of the file's first extent
            image.seek(start + sector * 4096 + 123)
            byte = image.read(1)
            image.seek(start + sector * 4096 + 123)
            image.write(bytes([byte[0] ^ 0x01]))
    mount = host.ok("open", name).stdout.strip()
    try:
        with open(os.path.join(mount, "file.bin"), "rb") as source:
            read = source.read()
        outcome = "read"
    except OSError as error:
        outcome, read = f"error {error.errno}", b""
    host.ok("close", name)
    differing = sum(1 for a, b in zip(read, data) if a != b)
    print(f"{filesystem}: {outcome}, {differing} bytes differ after 4 flipped ciphertext bytes")
    if filesystem == "ext4":
        # Undetected: the file reads back, 4 AES blocks (16 bytes each) of noise.
        assert outcome == "read" and len(read) == len(data)
        assert 4 * 16 - 8 <= differing <= 4 * 16
    else:
        assert outcome == "error 5", "btrfs's checksums must refuse the damaged data (EIO)"
    host.discard(name)


def test_a_lock_file_with_terminal_escapes_is_printed_as_text(host):
    """The host writes escape sequences and line breaks into the lock file's
    fields: the refusal stays one line, with the bytes escaped."""
    name = host.add_target("escapes")
    host.clone_image(name)
    with open(host.image(name) + ".lock", "w") as lock:
        lock.write("host=evil\x1b[2J\x1b]0;owned\x07\npid=4242\ntarget=x\u202ey\nsince=now\ntoken=abc\n")
    result = host.run("open", name)
    assert result.returncode == 4, result.stderr
    assert "\x1b" not in result.stderr and "\u202e" not in result.stderr and "\x07" not in result.stderr
    assert "evil\\u{1b}[2J\\u{1b}]0;owned\\u{7}" in result.stderr and "x\\u{202e}y" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    os.remove(host.image(name) + ".lock")
    assert_nothing_left(host, name)
    host.discard(name)


def test_the_decrypted_mount_is_roots_alone_and_honours_no_devices_or_setuid(host):
    """Other local users can neither read the backups nor sit in the mount;
    a device node or set-uid program inside a backup takes no effect here."""
    name = host.add_target("private")
    host.clone_image(name)
    mount = host.ok("open", name).stdout.strip()
    try:
        assert os.stat(mount).st_mode & 0o777 == 0o700
        with open("/proc/self/mountinfo") as mountinfo:
            options = next(line.split()[5] for line in mountinfo if line.split()[4] == mount)
        assert "nosuid" in options.split(",") and "nodev" in options.split(","), options
    finally:
        host.ok("close", name)
    host.discard(name)
