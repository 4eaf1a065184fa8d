import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Reads files the kernel generates on each read (/proc, /sys) to their end.
///
/// Foundation's file readers trust st_size, which is 0 for these files, and
/// stop after one buffer: /proc/self/mountinfo came back cut at about 4 KiB,
/// so on a machine with many mounts the mount table missed imgbackup's own
/// mounts and `close` left them up. This reads with read(2) until it returns 0.
public enum KernelFile {
    public static func data(_ path: String) -> Data? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var contents = Data()
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count > 0 {
                contents.append(contentsOf: buffer[0..<count])
            } else if count == 0 {
                return contents
            } else if errno != EINTR {
                return nil
            }
        }
    }

    /// The file as text (invalid UTF-8 replaced, as mount points may hold any bytes).
    public static func text(_ path: String) -> String? {
        data(path).map { String(decoding: $0, as: UTF8.self) }
    }
}
