#if canImport(Glibc)
import Glibc
#endif

/// File operations on the mounted remote directory. Each runs where its
/// deadline can abandon it: on a frozen SFTP server a `stat` blocks forever.
public enum RemoteFiles {
    public static func exists(_ path: String, deadline: Duration) async throws -> Bool {
        try await withAbandonableDeadline(deadline, operation: "stat \(path)") {
            var info = stat()
            if lstat(path, &info) == 0 { return true }
            if errno == ENOENT { return false }
            throw SystemCallError(call: "stat", object: path, errno: errno)
        }
    }

    /// Creates `path` (never an existing file) as a sparse file of `size` bytes.
    public static func createSparse(_ path: String, size: UInt64, deadline: Duration) async throws {
        try await withAbandonableDeadline(deadline, operation: "create \(path)") {
            let fd = try checked("open", path) { open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600) }
            defer { close(fd) }
            try checked("ftruncate", path) { ftruncate(fd, off_t(size)) }
        }
    }

    /// Creates `path` holding `contents`; fails with EEXIST if it exists
    /// (SFTP's exclusive create), which is what makes it a lock.
    public static func createExclusive(_ path: String, contents: String, deadline: Duration) async throws {
        try await withAbandonableDeadline(deadline, operation: "create \(path)") {
            let fd = try checked("open", path) { open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600) }
            defer { close(fd) }
            let bytes = Array(contents.utf8)
            let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            guard written == bytes.count else {
                throw SystemCallError(call: "write", object: path, errno: written < 0 ? errno : EIO)
            }
        }
    }

    /// The text of a small remote file, or nil if it does not exist.
    public static func read(_ path: String, deadline: Duration) async throws -> String? {
        try await withAbandonableDeadline(deadline, operation: "read \(path)") {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            if fd < 0 && errno == ENOENT { return nil }
            guard fd >= 0 else { throw SystemCallError(call: "open", object: path, errno: errno) }
            defer { close(fd) }
            var bytes = [UInt8](repeating: 0, count: 4096)
            let got = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            guard got >= 0 else { throw SystemCallError(call: "read", object: path, errno: errno) }
            return String(decoding: bytes[0..<got], as: UTF8.self)
        }
    }

    /// Renames within the remote directory (SFTP rename).
    public static func rename(_ from: String, to: String, deadline: Duration) async throws {
        try await withAbandonableDeadline(deadline, operation: "rename \(from)") {
            _ = try checked("rename", from) { Glibc.rename(from, to) }
        }
    }

    /// Removes `path`; already gone counts as success.
    public static func remove(_ path: String, deadline: Duration) async throws {
        try await withAbandonableDeadline(deadline, operation: "remove \(path)") {
            if unlink(path) != 0 && errno != ENOENT {
                throw SystemCallError(call: "unlink", object: path, errno: errno)
            }
        }
    }

    /// Makes `path` `size` bytes long; the new part is a hole (sparse).
    public static func grow(_ path: String, to size: UInt64, deadline: Duration) async throws {
        try await withAbandonableDeadline(deadline, operation: "grow \(path)") {
            _ = try checked("truncate", path) { truncate(path, off_t(size)) }
        }
    }

    /// Apparent size of `path`.
    public static func size(_ path: String, deadline: Duration) async throws -> UInt64 {
        try await withAbandonableDeadline(deadline, operation: "stat \(path)") {
            var info = stat()
            try checked("stat", path) { stat(path, &info) }
            return UInt64(info.st_size)
        }
    }
}

/// Local directories imgbackup owns (mount points, runtime and state dirs).
public enum LocalFiles {
    /// mkdir -p with `mode` for the directories it creates.
    public static func makeDirectories(_ path: String, mode: mode_t = 0o700) throws(SystemCallError) {
        var current = ""
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, mode) != 0 && errno != EEXIST {
                throw SystemCallError(call: "mkdir", object: current, errno: errno)
            }
        }
    }

    /// Whether the directory has no entries (false when it cannot be read).
    public static func isEmptyDirectory(_ path: String) -> Bool {
        guard let directory = opendir(path) else { return false }
        defer { closedir(directory) }
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { return false }
        }
        return true
    }

    /// rmdir; already gone or not empty is left alone.
    public static func removeDirectoryIfEmpty(_ path: String) {
        _ = rmdir(path)
    }

    public static func rename(_ source: String, to destination: String) throws(SystemCallError) {
        _ = try checked("rename", source) { Glibc.rename(source, destination) }
    }

    /// Points `path` at `target` (a relative name), replacing what was there
    /// in one step: a reader sees the old link or the new, never none.
    public static func replaceSymbolicLink(_ path: String, pointingTo target: String) throws(SystemCallError) {
        let temporary = path + ".new"
        _ = unlink(temporary)
        _ = try checked("symlink", temporary) { symlink(target, temporary) }
        try rename(temporary, to: path)
    }

    /// Writes a whole file in one step (temporary file, fsync, rename), mode
    /// 0600 unless told otherwise (whatever the umask): a crash leaves the
    /// old contents or the new, never half.
    public static func writeAtomically(_ path: String, _ contents: String, mode: mode_t = 0o600) throws(SystemCallError) {
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw SystemCallError(call: "open", object: temporary, errno: errno) }
        guard fchmod(fd, mode) == 0 else {
            let chmodErrno = errno
            close(fd)
            _ = unlink(temporary)
            throw SystemCallError(call: "fchmod", object: temporary, errno: chmodErrno)
        }
        let bytes = Array(contents.utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd)
        let writeErrno = errno
        close(fd)
        guard written == bytes.count, synced == 0 else {
            _ = unlink(temporary)
            throw SystemCallError(call: "write", object: temporary, errno: written < 0 || synced != 0 ? writeErrno : EIO)
        }
        try rename(temporary, to: path)
    }

    /// Size and free space (for unprivileged users) of the filesystem holding `path`.
    public static func capacity(_ path: String) throws(SystemCallError) -> (total: UInt64, available: UInt64) {
        var info = statvfs()
        _ = try checked("statvfs", path) { statvfs(path, &info) }
        return (UInt64(info.f_blocks) * UInt64(info.f_frsize), UInt64(info.f_bavail) * UInt64(info.f_frsize))
    }

    /// The file's text, or nil when it does not exist or cannot be read.
    public static func contents(_ path: String) -> String? {
        try? String(contentsOfFile: path, encoding: .utf8)
    }
}
