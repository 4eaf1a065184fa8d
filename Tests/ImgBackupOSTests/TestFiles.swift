import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A scratch directory on a disk filesystem (not tmpfs), removed at deinit.
final class ScratchDirectory {
    let path: String

    init() {
        var template = Array("/var/tmp/imgbackup-test.XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    }

    /// A sparse file of `size` bytes with `mode`.
    func file(_ name: String, size: Int, mode: mode_t = 0o600, contents: [UInt8] = []) -> String {
        let path = "\(self.path)/\(name)"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, mode)
        precondition(fd >= 0)
        if !contents.isEmpty { _ = contents.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
        if size > 0 { ftruncate(fd, off_t(size)) }
        fchmod(fd, mode)
        close(fd)
        return path
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

let isRoot = geteuid() == 0
let hasLoopControl = access("/dev/loop-control", F_OK) == 0
