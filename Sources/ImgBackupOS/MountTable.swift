import Foundation

/// One line of /proc/self/mountinfo.
public struct MountEntry: Sendable, Equatable {
    public let mountID: Int
    /// "major:minor" of the mounted device; for FUSE the minor is the
    /// connection number under /sys/fs/fuse/connections.
    public let device: String
    public let mountPoint: String
    public let filesystemType: String
    public let source: String
    /// The mount's own options (rw or ro first), and its superblock's: a
    /// filesystem that stopped itself after an error (ext4's
    /// errors=remount-ro, btrfs aborting a transaction) shows "ro" in its
    /// superblock's options under a mount that still says "rw".
    public var mountOptions: [Substring] = []
    public var superOptions: [Substring] = []

    /// Mounted read-write, but its filesystem has made itself read-only.
    public var turnedReadOnly: Bool { mountOptions.first == "rw" && superOptions.first == "ro" }
}

/// The mount table, read from /proc/self/mountinfo. Reading it never touches
/// the mounted filesystems, so it works when one of them hangs; `stat` on a
/// mount point of a frozen FUSE filesystem would not.
public enum MountTable {
    public static func entries(mountinfo: String = "/proc/self/mountinfo") -> [MountEntry] {
        guard let text = KernelFile.text(mountinfo) else { return [] }
        return parse(text)
    }

    public static func parse(_ text: String) -> [MountEntry] {
        text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: false)
            guard let separator = fields.firstIndex(of: "-"), separator >= 6, fields.count >= separator + 3,
                let id = Int(fields[0])
            else { return nil }
            return MountEntry(
                mountID: id,
                device: String(fields[2]),
                mountPoint: unescape(fields[4]),
                filesystemType: String(fields[separator + 1]),
                source: unescape(fields[separator + 2]),
                mountOptions: fields[5].split(separator: ","),
                superOptions: fields.count > separator + 3 ? fields[separator + 3].split(separator: ",") : []
            )
        }
    }

    /// The topmost mount at `path`, if any.
    public static func mount(at path: String) -> MountEntry? {
        let normalized = normalize(path)
        return entries().last { $0.mountPoint == normalized }
    }

    public static func isMountPoint(_ path: String) -> Bool { mount(at: path) != nil }

    /// mountinfo escapes space, tab, newline and backslash as octal (\040).
    static func unescape<S: StringProtocol>(_ field: S) -> String {
        var bytes: [UInt8] = []
        let utf8 = Array(field.utf8)
        var index = 0
        while index < utf8.count {
            if utf8[index] == UInt8(ascii: "\\"), index + 3 < utf8.count,
                let value = UInt8(String(decoding: utf8[(index + 1)...(index + 3)], as: UTF8.self), radix: 8)
            {
                bytes.append(value)
                index += 4
            } else {
                bytes.append(utf8[index])
                index += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func normalize(_ path: String) -> String {
        var result = path
        while result.count > 1 && result.hasSuffix("/") { result.removeLast() }
        return result
    }
}
