import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Counters of a block device from /sys/block/NAME/stat: how a watcher tells
/// that writes are making progress without touching the device itself.
public struct BlockDeviceStats: Sendable, Equatable {
    public init(sectorsRead: UInt64, sectorsWritten: UInt64) {
        self.sectorsRead = sectorsRead
        self.sectorsWritten = sectorsWritten
    }

    public let sectorsRead: UInt64
    public let sectorsWritten: UInt64
    /// Kernels since 4.18 count discards too (what fstrim sends).
    public var sectorsDiscarded: UInt64 = 0
    public var bytesDiscarded: UInt64 { sectorsDiscarded * 512 }
    public var bytesWritten: UInt64 { sectorsWritten * 512 }
    public var bytesRead: UInt64 { sectorsRead * 512 }

    /// Reads the counters of `devicePath` (e.g. /dev/mapper/imgbackup-x,
    /// resolved to its dm-N name through the device numbers).
    public static func read(devicePath: String) -> BlockDeviceStats? {
        guard let name = kernelName(of: devicePath),
            let text = KernelFile.text("/sys/block/\(name)/stat")
        else { return nil }
        let fields = text.split(separator: " ").compactMap { UInt64($0) }
        // Field 3 is sectors read, field 7 sectors written (Documentation/block/stat.rst).
        guard fields.count >= 7 else { return nil }
        var stats = BlockDeviceStats(sectorsRead: fields[2], sectorsWritten: fields[6])
        if fields.count >= 15 { stats.sectorsDiscarded = fields[14] }  // field 15: sectors discarded
        return stats
    }

    /// "dm-3" for /dev/mapper/x, "loop0" for /dev/loop0.
    public static func kernelName(of devicePath: String) -> String? {
        var info = stat()
        guard stat(devicePath, &info) == 0, (info.st_mode & S_IFMT) == S_IFBLK else { return nil }
        // glibc's major()/minor() are macros; this is their bit layout.
        let device = UInt64(info.st_rdev)
        let major = ((device >> 8) & 0xfff) | ((device >> 32) & ~UInt64(0xfff))
        let minor = (device & 0xff) | ((device >> 12) & ~UInt64(0xff))
        guard let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "/sys/dev/block/\(major):\(minor)")
        else { return nil }
        return link.split(separator: "/").last.map(String.init)
    }
}
