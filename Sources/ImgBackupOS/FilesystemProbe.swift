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

    /// Whether the filesystem on `device` holds writes only its journal has:
    /// ext4's needs_recovery feature (incompat 0x4 at byte 1024 + 0x60),
    /// btrfs's log tree (log_root at 65536 + 0x60, not 0). A read-only
    /// mount that does not replay them does not show them.
    public static func journalNeedsReplay(device: String, found: Found, deadline: Duration) async throws -> Bool {
        guard found != .none else { return false }
        return try await withAbandonableDeadline(deadline, operation: "read the superblock of \(device)") {
            let fd = try checked("open", device) { open(device, O_RDONLY | O_CLOEXEC) }
            defer { close(fd) }
            var field = [UInt8](repeating: 0, count: 8)
            let offset: off_t = found == .ext4 ? 1024 + 0x60 : 65536 + 0x60
            guard field.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, 8, offset) }) == 8 else { return false }
            return found == .ext4 ? field[0] & 0x4 != 0 : field.contains { $0 != 0 }
        }
    }
}
