#if canImport(Glibc)
    import Glibc
#endif

/// Reads every byte of every regular file under a directory, to find the
/// ones that cannot be read back: a filesystem with data checksums (btrfs)
/// answers EIO for a damaged block, and a remote that lost part of the
/// image answers EIO through the transport. Never follows a symlink, never
/// enters another mount (btrfs subvolumes are not mounts: they are read),
/// and reads a hard-linked inode once (rsync snapshots share most of their
/// files).
public struct TreeReader {
    public struct Unreadable: Sendable, Equatable {
        /// Relative to the root.
        public let path: String
        public let error: SystemCallError
    }

    public struct Report: Sendable {
        public var files = 0
        public var bytes: UInt64 = 0
        public var unreadable: [Unreadable] = []
    }

    /// Called after each file with the totals so far.
    public var progress: (Report) -> Void = { _ in }
    /// Asked before each file: true ends the walk (a hang was detected).
    public var shouldStop: () -> Bool = { false }
    private var seen = Set<InodeKey>()

    private struct InodeKey: Hashable {
        let device: UInt64
        let inode: UInt64
    }

    public init() {}

    public mutating func readAll(under root: String) -> Report {
        var report = Report()
        let otherMounts = Set(MountTable.entries().map(\.mountPoint).filter { $0.hasPrefix(root + "/") })
        walk(root, relative: "", otherMounts: otherMounts, into: &report)
        return report
    }

    private mutating func walk(
        _ directory: String, relative: String, otherMounts: Set<String>, into report: inout Report
    ) {
        guard let stream = opendir(directory) else {
            report.unreadable.append(
                Unreadable(
                    path: relative.isEmpty ? "." : relative,
                    error: SystemCallError(call: "opendir", object: directory, errno: errno)))
            return
        }
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(cString: $0.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(stream)
        for name in names.sorted() {
            if shouldStop() { return }
            let path = "\(directory)/\(name)"
            let inside = relative.isEmpty ? name : "\(relative)/\(name)"
            var info = stat()
            guard lstat(path, &info) == 0 else {
                report.unreadable.append(
                    Unreadable(path: inside, error: SystemCallError(call: "lstat", object: path, errno: errno)))
                continue
            }
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                if !otherMounts.contains(path) { walk(path, relative: inside, otherMounts: otherMounts, into: &report) }
            case S_IFREG:
                guard seen.insert(InodeKey(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))).inserted else {
                    continue
                }
                read(path, inside, into: &report)
                progress(report)
            default:
                continue
            }
        }
    }

    private func read(_ path: String, _ inside: String, into report: inout Report) {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)
        guard fd >= 0 else {
            report.unreadable.append(
                Unreadable(path: inside, error: SystemCallError(call: "open", object: path, errno: errno)))
            return
        }
        defer { close(fd) }
        report.files += 1
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let got = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if got == 0 { return }
            if got < 0 {
                if errno == EINTR { continue }
                report.unreadable.append(
                    Unreadable(path: inside, error: SystemCallError(call: "read", object: path, errno: errno)))
                return
            }
            report.bytes += UInt64(got)
        }
    }
}
