#if canImport(Glibc)
    import Glibc
#endif

/// An exclusive flock(2) on a lock file, held until the instance goes away.
/// The kernel drops it when the process dies, so a crash never leaves it
/// stale.
public final class FileLock: Sendable {
    private let descriptor: Int32
    public let path: String

    private init(path: String, descriptor: Int32) {
        self.path = path
        self.descriptor = descriptor
    }

    /// Takes the lock without waiting; nil when another process holds it.
    public static func tryAcquire(path: String) throws(SystemCallError) -> FileLock? {
        let fd = try checked("open", path) { open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            close(fd)
            if code == EWOULDBLOCK { return nil }
            throw SystemCallError(call: "flock", object: path, errno: code)
        }
        return FileLock(path: path, descriptor: fd)
    }

    deinit { close(descriptor) }

    /// The pid holding an flock on `path`, from /proc/locks (nil when nobody
    /// holds it). Only reads: never takes the lock, so asking cannot get in
    /// the way of a command starting.
    public static func holder(of path: String) -> pid_t? {
        var info = stat()
        guard stat(path, &info) == 0, let locks = KernelFile.text("/proc/locks") else { return nil }
        return holder(inode: UInt64(info.st_ino), inLocks: locks)
    }

    /// "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF" -> 1234 for inode 5678.
    static func holder(inode: UInt64, inLocks text: String) -> pid_t? {
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            // A blocked waiter's line starts with "->" and shifts the fields by one.
            guard fields.count >= 6, fields[1] == "FLOCK", let pid = pid_t(fields[4]),
                let inodeField = fields[5].split(separator: ":").last, UInt64(inodeField) == inode
            else { continue }
            return pid
        }
        return nil
    }
}
