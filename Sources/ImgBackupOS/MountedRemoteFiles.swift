#if canImport(Glibc)
    import Glibc
#endif

/// File operations on the mounted remote directory. Each runs where its
/// deadline can abandon it: on a frozen SFTP server a `stat` blocks forever.
public enum MountedRemoteFiles {
    public static func exists(_ path: String, deadline: Duration) async throws -> Bool {
        try await withAbandonableDeadline(deadline, operation: "stat \(path)") {
            var info = stat()
            if lstat(path, &info) == 0 { return true }
            if errno == ENOENT { return false }
            throw SystemCallError(call: "stat", object: path, errno: errno)
        }
    }

    /// Whether the server behind the FUSE mount at `directory` answers a
    /// lookup of a name never asked for before (a random one: no cache in
    /// the kernel or in sshfs can hold the answer). "No such file" is an
    /// answer; any other error is not. Blocks while the server does not
    /// answer: the caller's deadline abandons it.
    public static func answersLookup(in directory: String) -> Bool {
        let name = ".imgbackup-probe-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        var info = stat()
        return lstat("\(directory)/\(name)", &info) == 0 || errno == ENOENT
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

    /// Opens a file in the mounted remote directory the remote cannot
    /// redirect: not through a symlink (O_NOFOLLOW: ELOOP), only a regular
    /// file (EINVAL otherwise), and only one on the same mount as its
    /// directory (EXDEV otherwise: a bind or a link that escaped the mount).
    /// Returns the descriptor; the caller closes it.
    public static func openRegularFile(_ path: String, flags: Int32) throws(SystemCallError) -> Int32 {
        let fd = try checked("open", path) { open(path, flags | O_NOFOLLOW | O_CLOEXEC) }
        var file = stat()
        var directory = stat()
        let parent = path.lastIndex(of: "/").map { String(path[..<$0]) }.map { $0.isEmpty ? "/" : $0 } ?? "."
        guard fstat(fd, &file) == 0, stat(parent, &directory) == 0 else {
            let failure = SystemCallError(call: "stat", object: path, errno: errno)
            close(fd)
            throw failure
        }
        if (file.st_mode & S_IFMT) != S_IFREG || file.st_dev != directory.st_dev {
            close(fd)
            throw SystemCallError(
                call: (file.st_mode & S_IFMT) != S_IFREG
                    ? "open (not a regular file)" : "open (not on the remote's mount)",
                object: path, errno: (file.st_mode & S_IFMT) != S_IFREG ? EINVAL : EXDEV)
        }
        return fd
    }

    /// The text of a small remote file, or nil if it does not exist.
    public static func read(_ path: String, deadline: Duration) async throws -> String? {
        try await withAbandonableDeadline(deadline, operation: "read \(path)") {
            let fd: Int32
            do {
                fd = try openRegularFile(path, flags: O_RDONLY)
            } catch let error as SystemCallError where error.errno == ENOENT {
                return nil
            }
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
    /// Through the descriptor: a symlink put in the image's place is refused.
    public static func grow(_ path: String, to size: UInt64, deadline: Duration) async throws {
        try await withAbandonableDeadline(deadline, operation: "grow \(path)") {
            guard let length = off_t(exactly: size) else {
                throw SystemCallError(call: "ftruncate", object: path, errno: EFBIG)
            }
            let fd = try openRegularFile(path, flags: O_WRONLY)
            defer { close(fd) }
            _ = try checked("ftruncate", path) { ftruncate(fd, length) }
        }
    }

    /// Apparent size of `path` (the file itself, never what a symlink points to).
    public static func size(_ path: String, deadline: Duration) async throws -> UInt64 {
        try await withAbandonableDeadline(deadline, operation: "stat \(path)") {
            var info = stat()
            try checked("stat", path) { lstat(path, &info) }
            guard (info.st_mode & S_IFMT) == S_IFREG else {
                throw SystemCallError(call: "stat (not a regular file)", object: path, errno: EINVAL)
            }
            return UInt64(clamping: info.st_size)
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
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
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
    ///
    /// The temporary file has a random name and is created new (mkstemp:
    /// O_CREAT|O_EXCL), so a symlink someone planted in a directory others
    /// can write (a metrics collector's) is never followed; rename replaces
    /// a link at `path` itself rather than writing through it.
    public static func writeAtomically(_ path: String, _ contents: String, mode: mode_t = 0o600) throws(SystemCallError)
    {
        var template = Array("\(path).tmp-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        let temporary = String(cString: template)
        guard fd >= 0 else { throw SystemCallError(call: "mkstemp", object: temporary, errno: errno) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
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
            throw SystemCallError(
                call: "write", object: temporary, errno: written < 0 || synced != 0 ? writeErrno : EIO)
        }
        try rename(temporary, to: path)
    }

    /// Replaces the bytes of a small file in place and makes them durable
    /// (`fdatasync`): no new inode, no rename, no directory change, so the
    /// filesystem journals nothing for it and an unmount has little to
    /// write back. For a record of fixed length rewritten often (the
    /// generation marker, at every open of an image over a slow link). A
    /// file that is not there yet is created through ``writeAtomically``,
    /// and its directory synced, so the new name is durable too.
    public static func overwriteInPlace(_ path: String, _ contents: String, mode: mode_t = 0o600)
        throws(SystemCallError)
    {
        let fd = open(path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            guard errno == ENOENT else { throw SystemCallError(call: "open", object: path, errno: errno) }
            try writeAtomically(path, contents, mode: mode)
            // The new name must be as durable as the bytes: without this a
            // crash (a transport that dies) can lose the rename from the
            // journal, and the file with it.
            let parent = path.lastIndex(of: "/").map { String(path[..<$0]) }.map { $0.isEmpty ? "/" : $0 } ?? "."
            let directory = try checked("open", parent) { open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
            defer { close(directory) }
            _ = try checked("fsync", parent) { fsync(directory) }
            return
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
            throw SystemCallError(call: "open", object: path, errno: EINVAL)
        }
        let bytes = Array(contents.utf8)
        let written = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        guard written == bytes.count else {
            throw SystemCallError(call: "pwrite", object: path, errno: written < 0 ? errno : EIO)
        }
        if info.st_size != off_t(bytes.count) {
            _ = try checked("ftruncate", path) { ftruncate(fd, off_t(bytes.count)) }
        }
        _ = try checked("fdatasync", path) { fdatasync(fd) }
    }

    /// Size, free space and free space for unprivileged users of the filesystem holding `path`.
    public static func capacity(_ path: String) throws(SystemCallError) -> (
        total: UInt64, free: UInt64, available: UInt64
    ) {
        var info = statvfs()
        _ = try checked("statvfs", path) { statvfs(path, &info) }
        // Through sshfs these are the server's numbers: saturate, never trap.
        let block = UInt64(info.f_frsize)
        return (
            saturatingProduct(UInt64(info.f_blocks), block), saturatingProduct(UInt64(info.f_bfree), block),
            saturatingProduct(UInt64(info.f_bavail), block)
        )
    }

    /// The file's text, or nil when it does not exist or cannot be read.
    public static func contents(_ path: String) -> String? {
        try? String(contentsOfFile: path, encoding: .utf8)
    }
}

/// `a * b`, or UInt64.max where it would overflow: for sizes the remote
/// reports (block counts times block sizes), which it may make as large as it likes.
public func saturatingProduct(_ a: UInt64, _ b: UInt64) -> UInt64 {
    let (product, overflow) = a.multipliedReportingOverflow(by: b)
    return overflow ? .max : product
}
