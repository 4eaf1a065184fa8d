import CImgBackupShim

#if canImport(Glibc)
    import Glibc
#endif

/// Key material. The bytes live in pages of their own that are locked in
/// memory (never swapped) and left out of core dumps, and are wiped when
/// the last reference goes away; they are never turned into a String, so
/// they cannot end up in a log line, an error message or an argument vector.
public final class SecureBytes: @unchecked Sendable {
    // Safe to share: the buffer is written only in init and wiped in deinit;
    // in between it is read-only.
    private let buffer: UnsafeMutableRawBufferPointer

    /// Whole pages, so madvise and mlock cover the key and nothing else.
    private static let pageSize = max(Int(sysconf(Int32(_SC_PAGESIZE))), 4096)

    /// Takes ownership of `bytes`, copying them and wiping the source array's storage.
    public init(consuming bytes: inout [UInt8]) {
        let length = (max(bytes.count, 1) + Self.pageSize - 1) / Self.pageSize * Self.pageSize
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: Self.pageSize)
        if let base = storage.baseAddress {
            // Best effort: mlock is capped by RLIMIT_MEMLOCK for non-root users.
            _ = imgb_protect_secret_pages(base, length)
        }
        bytes.withUnsafeMutableBytes { source in
            if let base = source.baseAddress {
                storage.copyMemory(from: UnsafeRawBufferPointer(source))
                imgb_wipe(base, source.count)
            }
        }
        buffer = storage
        count = bytes.count
        bytes.removeAll()
    }

    /// Number of key bytes.
    public let count: Int

    public var isEmpty: Bool { count == 0 }

    /// Lends the bytes to a C call that copies what it needs (libcryptsetup does).
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
    }

    deinit {
        if let base = buffer.baseAddress {
            imgb_wipe(base, buffer.count)
            munlock(base, buffer.count)
        }
        buffer.deallocate()
    }
}

extension SecureBytes: CustomStringConvertible {
    /// Never the bytes themselves.
    public var description: String { "<\(count) key bytes>" }
}
