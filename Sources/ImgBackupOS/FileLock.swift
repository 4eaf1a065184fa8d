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
}
