#if canImport(Glibc)
    import Glibc
#endif

/// Recognises the filesystems imgbackup makes by their superblock magic, so
/// a mount of the wrong thing is refused with a clear line rather than
/// attempted.
public enum FilesystemProbe {
    public enum Found: String, Sendable {
        case ext4, btrfs, none
    }

    /// Reads the superblock of `device`. Runs where a deadline can abandon it:
    /// the read goes to the remote.
    public static func probe(device: String, deadline: Duration) async throws -> Found {
        try await withAbandonableDeadline(deadline, operation: "read the superblock of \(device)") {
            let fd = try checked("open", device) { open(device, O_RDONLY | O_CLOEXEC) }
            defer { close(fd) }
            // ext2/3/4: magic 0xEF53 at byte 1080. btrfs: "_BHRfS_M" at 65536 + 64.
            var ext = [UInt8](repeating: 0, count: 2)
            if ext.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, 2, 1080) }) == 2, ext == [0x53, 0xEF] {
                return .ext4
            }
            var btrfs = [UInt8](repeating: 0, count: 8)
            if btrfs.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, 8, 65536 + 64) }) == 8,
                btrfs == Array("_BHRfS_M".utf8)
            {
                return .btrfs
            }
            return .none
        }
    }
}
