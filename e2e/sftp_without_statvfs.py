#!/usr/bin/python3
"""The SFTP server of an SFTP-only backup host without statvfs, for the
end-to-end suite: OpenSSH's sftp-server refusing statvfs and fstatvfs (-P),
with those two left out of the extensions it announces, as servers that
never had them do (sshfs then answers statfs itself, with made-up numbers).
sshd runs it as the ForceCommand: every login gets SFTP, never a shell."""
import os
import struct
import subprocess
import sys

HIDDEN = (b"statvfs@openssh.com", b"fstatvfs@openssh.com")
SSH_FXP_VERSION = 2


def read_exactly(fd, count):
    data = b""
    while len(data) < count:
        chunk = os.read(fd, count - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def without_hidden(packet):
    """SSH_FXP_VERSION: a type byte, a uint32 version, then (name, data)
    string pairs, each string a uint32 length and its bytes."""
    if packet[0] != SSH_FXP_VERSION:
        return packet
    kept, at = bytearray(packet[:5]), 5
    while at < len(packet):
        pair_start = at
        for _ in range(2):
            at += 4 + struct.unpack(">I", packet[at:at + 4])[0]
        name_length = struct.unpack(">I", packet[pair_start:pair_start + 4])[0]
        if packet[pair_start + 4:pair_start + 4 + name_length] not in HIDDEN:
            kept += packet[pair_start:at]
    return bytes(kept)


server = subprocess.Popen(["/usr/lib/openssh/sftp-server", "-P", "statvfs,fstatvfs"], stdout=subprocess.PIPE)
replies = server.stdout.fileno()
try:
    length = struct.unpack(">I", read_exactly(replies, 4))[0]
    version = without_hidden(read_exactly(replies, length))
    write_all(1, struct.pack(">I", len(version)) + version)
    while chunk := os.read(replies, 1 << 16):
        write_all(1, chunk)
except (EOFError, BrokenPipeError):
    pass
sys.exit(server.wait())
