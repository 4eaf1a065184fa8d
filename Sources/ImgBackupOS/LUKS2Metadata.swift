import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// One copy of a LUKS2 header's metadata as it lies on the device: the
/// 4096-byte binary header and the JSON text after it. LUKS2 keeps two
/// copies, the primary at 0 and the secondary right after it.
public struct LUKS2MetadataCopy: Sendable {
    /// Where this copy starts on the device.
    public let offset: UInt64
    /// Binary header plus JSON area (both copies have the same size).
    public let size: UInt64
    public let sequenceID: UInt64
    public let uuid: String
    /// The JSON area up to its first NUL, as libcryptsetup reads it; nil
    /// when that is not valid UTF-8.
    public let json: String?
    /// Every byte of the copy as it was read (binary header and JSON area):
    /// what the detached header is made of, so libcryptsetup gets the very
    /// bytes that were checked, not a second answer from the remote.
    public let raw: [UInt8]

    public init(offset: UInt64, size: UInt64, sequenceID: UInt64, uuid: String, json: String?, raw: [UInt8] = []) {
        self.offset = offset
        self.size = size
        self.sequenceID = sequenceID
        self.uuid = uuid
        self.json = json
        self.raw = raw
    }
}

/// Reads LUKS2 metadata straight from a device or file, without
/// libcryptsetup, so it can be checked before libcryptsetup acts on it; and
/// copies exactly those bytes into a local detached header, so libcryptsetup
/// then acts on what was checked, not on what the remote serves a moment later.
///
/// The layout is the LUKS2 on-disk format: magic (6 bytes), version (u16),
/// header size (u64), sequence id (u64), label, checksum algorithm, salt,
/// UUID (40 bytes at 168), ..., all big-endian.
public enum LUKS2Metadata {
    /// The metadata sizes the format allows (binary header and JSON area):
    /// 16 KiB to 4 MiB in powers of two.
    public static let allowedSizes: Set<UInt64> = Set((14...22).map { UInt64(1) << $0 })
    static let primaryMagic: [UInt8] = [0x4C, 0x55, 0x4B, 0x53, 0xBA, 0xBE]  // "LUKS\xba\xbe"
    static let secondaryMagic: [UInt8] = [0x53, 0x4B, 0x55, 0x4C, 0xBA, 0xBE]  // "SKUL\xba\xbe"
    static let binaryHeaderSize = 4096

    /// The primary copy and, right after it, the secondary. A copy whose
    /// magic is missing is left out (it is no header: libcryptsetup skips it
    /// too); the primary must be there, since the detached copy holds only
    /// these two places.
    public static func readCopies(device: String) throws(LUKS2MetadataError) -> [LUKS2MetadataCopy] {
        let file = try DeviceFile(path: device)
        guard let primary = try file.copy(at: 0, magic: primaryMagic) else {
            throw .noPrimaryHeader(device: device)
        }
        var copies = [primary]
        if let secondary = try file.copy(at: primary.size, magic: secondaryMagic) { copies.append(secondary) }
        return copies
    }

    /// Runs `body` while `path` holds a detached header (a new file, mode
    /// 0600): the metadata copies as they were read and checked, and the
    /// keyslot areas `areas` (offset, length), read from `device` (their
    /// contents need no check: the pinned digest verifies what they unlock),
    /// everything else a hole, `length` bytes in all. Everything else libcryptsetup could read as a header is zeros.
    /// The file is removed afterwards (and a stale one before).
    public static func withDetachedHeader<T>(
        from device: String, copies: [LUKS2MetadataCopy], areas: [(offset: UInt64, length: UInt64)], length: UInt64,
        at path: String, _ body: () throws -> T
    ) throws -> T {
        unlink(path)
        defer { unlink(path) }
        try writeDetachedHeader(from: device, copies: copies, areas: areas, length: length, to: path)
        return try body()
    }

    private static func writeDetachedHeader(
        from device: String, copies: [LUKS2MetadataCopy], areas: [(offset: UInt64, length: UInt64)], length: UInt64,
        to path: String
    ) throws(LUKS2MetadataError) {
        let source = try DeviceFile(path: device)
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw .io(SystemCallError(call: "open", object: path, errno: errno)) }
        defer { close(descriptor) }
        var pieces: [(offset: UInt64, bytes: [UInt8])] = []
        for copy in copies {
            guard copy.raw.count == Int(copy.size) else {
                throw .badHeader(device: device, offset: copy.offset, reason: "was not read whole")
            }
            pieces.append((copy.offset, copy.raw))
        }
        for area in areas {
            pieces.append((area.offset, try source.read(at: area.offset, count: Int(area.length))))
        }
        for (offset, bytes) in pieces {
            let written = bytes.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, off_t(offset)) }
            guard written == bytes.count else {
                throw .io(SystemCallError(call: "pwrite", object: path, errno: written < 0 ? errno : EIO))
            }
        }
        guard ftruncate(descriptor, off_t(length)) == 0 else {
            throw .io(SystemCallError(call: "ftruncate", object: path, errno: errno))
        }
    }
}

public enum LUKS2MetadataError: Error, Sendable, CustomStringConvertible {
    case noPrimaryHeader(device: String)
    case badHeader(device: String, offset: UInt64, reason: String)
    case io(SystemCallError)

    public var description: String {
        switch self {
        case .noPrimaryHeader(let device): return "\(device) has no LUKS2 header at offset 0"
        case .badHeader(let device, let offset, let reason):
            return "the LUKS2 header copy at offset \(offset) of \(device) \(reason)"
        case .io(let error): return error.description
        }
    }
}

/// A read-only descriptor on the device, closed when dropped.
private final class DeviceFile {
    let path: String
    let descriptor: Int32

    init(path: String) throws(LUKS2MetadataError) {
        self.path = path
        descriptor = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard descriptor >= 0 else { throw .io(SystemCallError(call: "open", object: path, errno: errno)) }
        // Every byte read here crosses the network: without this, the
        // kernel's readahead turned the 290 KiB of header and keyslot into
        // 584 KiB read from the remote.
        _ = posix_fadvise(descriptor, 0, 0, POSIX_FADV_RANDOM)
    }

    deinit { close(descriptor) }

    func read(at offset: UInt64, count: Int) throws(LUKS2MetadataError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let got = bytes.withUnsafeMutableBytes { buffer in
                pread(descriptor, buffer.baseAddress! + done, count - done, off_t(offset) + off_t(done))
            }
            if got < 0 && errno == EINTR { continue }
            guard got > 0 else {
                throw .io(SystemCallError(call: "pread", object: path, errno: got < 0 ? errno : EIO))
            }
            done += got
        }
        return bytes
    }

    /// The copy at `offset`, or nil when its magic is not there.
    func copy(at offset: UInt64, magic: [UInt8]) throws(LUKS2MetadataError) -> LUKS2MetadataCopy? {
        let header = try read(at: offset, count: LUKS2Metadata.binaryHeaderSize)
        guard Array(header[0..<6]) == magic else { return nil }
        let version = header[6..<8].reduce(0) { $0 << 8 | UInt16($1) }
        let size = header[8..<16].reduce(0) { $0 << 8 | UInt64($1) }
        let sequenceID = header[16..<24].reduce(0) { $0 << 8 | UInt64($1) }
        // The remote wrote these numbers: check them before they size a read.
        guard version == 2 else {
            throw .badHeader(device: path, offset: offset, reason: "is version \(version), not 2")
        }
        guard LUKS2Metadata.allowedSizes.contains(size) else {
            throw .badHeader(
                device: path, offset: offset, reason: "claims a size of \(size) bytes, which LUKS2 does not allow")
        }
        let uuidBytes = header[168..<208].prefix { $0 != 0 }
        let area = try read(
            at: offset + UInt64(LUKS2Metadata.binaryHeaderSize), count: Int(size) - LUKS2Metadata.binaryHeaderSize)
        let text = String(validating: area.prefix { $0 != 0 }, as: UTF8.self)
        return LUKS2MetadataCopy(
            offset: offset, size: size, sequenceID: sequenceID,
            uuid: String(decoding: uuidBytes, as: UTF8.self), json: text, raw: header + area)
    }
}
