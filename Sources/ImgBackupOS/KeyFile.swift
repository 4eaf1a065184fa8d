import CImgBackupShim

#if canImport(Glibc)
    import Glibc
#endif

/// Why a key file was refused.
public enum KeyFileProblem: Error, Sendable, Equatable {
    /// Readable or writable by group or others: the mode, e.g. 0o644.
    case loosePermissions(mode: UInt32)
    case notRegularFile
    case empty
    case tooLarge(limit: Int)
    case unreadable(SystemCallError)
    /// Owned by another user than the one reading it (root, for a run).
    case foreignOwner(uid: UInt32)
    /// Its directory lets others replace it: the directory and its mode.
    case looseDirectory(path: String, mode: UInt32)

    public static func == (lhs: KeyFileProblem, rhs: KeyFileProblem) -> Bool {
        switch (lhs, rhs) {
        case (.loosePermissions(let a), .loosePermissions(let b)): return a == b
        case (.notRegularFile, .notRegularFile), (.empty, .empty): return true
        case (.tooLarge(let a), .tooLarge(let b)): return a == b
        case (.unreadable(let a), .unreadable(let b)): return a.errno == b.errno
        case (.foreignOwner(let a), .foreignOwner(let b)): return a == b
        case (.looseDirectory(let a, let m), .looseDirectory(let b, let n)): return a == b && m == n
        default: return false
        }
    }
}

/// Reads a key file the way `cryptsetup --key-file` does (every byte,
/// trailing newline included), after refusing one that group or others can
/// read or write, one another user owns, or one in a directory others could
/// swap it in. Opened without following a symlink and without blocking, so
/// a FIFO at the path is refused instead of hanging a run forever.
public enum KeyFile {
    /// cryptsetup's default key file size limit.
    public static let sizeLimit = 8 * 1024 * 1024

    /// Makes a new key file of `bytes` random bytes (from /dev/urandom),
    /// mode 0600, never over an existing one: returns false when `path`
    /// exists. The bytes pass through one buffer, wiped before returning.
    public static func createRandom(path: String, bytes: Int) throws(SystemCallError) -> Bool {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        if fd < 0 && errno == EEXIST { return false }
        guard fd >= 0 else { throw SystemCallError(call: "open", object: path, errno: errno) }
        var key = [UInt8](repeating: 0, count: bytes)
        defer {
            key.withUnsafeMutableBytes { if let base = $0.baseAddress { imgb_wipe(base, $0.count) } }
            close(fd)
        }
        let random = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
        let filled = random < 0 ? -1 : key.withUnsafeMutableBytes { Glibc.read(random, $0.baseAddress, $0.count) }
        let readErrno = errno
        if random >= 0 { close(random) }
        let failure: SystemCallError? =
            if filled != bytes {
                SystemCallError(call: "read", object: "/dev/urandom", errno: filled < 0 ? readErrno : EIO)
            } else if key.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) != bytes {
                SystemCallError(call: "write", object: path, errno: errno)
            } else if fsync(fd) != 0 {
                SystemCallError(call: "fsync", object: path, errno: errno)
            } else { nil }
        if let failure {
            unlink(path)
            throw failure
        }
        return true
    }

    public static func read(path: String) throws(KeyFileProblem) -> SecureBytes {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK)
        guard fd >= 0 else {
            if errno == ELOOP { throw .notRegularFile }
            throw .unreadable(SystemCallError(call: "open", object: path, errno: errno))
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw .unreadable(SystemCallError(call: "fstat", object: path, errno: errno))
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw .notRegularFile }
        let mode = UInt32(info.st_mode & 0o7777)
        guard mode & 0o077 == 0 else { throw .loosePermissions(mode: mode) }
        guard info.st_uid == geteuid() else { throw .foreignOwner(uid: info.st_uid) }
        try requireSafeDirectory(of: path)
        guard info.st_size > 0 else { throw .empty }
        guard info.st_size <= sizeLimit else { throw .tooLarge(limit: sizeLimit) }

        var bytes = [UInt8](repeating: 0, count: Int(info.st_size))
        var filled = 0
        while filled < bytes.count {
            let got = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + filled, $0.count - filled) }
            if got < 0 && errno == EINTR { continue }
            if got < 0 {
                let error = SystemCallError(call: "read", object: path, errno: errno)
                _ = SecureBytes(consuming: &bytes)  // wipes what was read
                throw .unreadable(error)
            }
            if got == 0 { break }
            filled += got
        }
        if filled < bytes.count { bytes.removeLast(bytes.count - filled) }
        guard !bytes.isEmpty else { throw .empty }
        return SecureBytes(consuming: &bytes)
    }
}

extension KeyFile {
    /// The key file's directory: others may not write it (they could put
    /// their own key in its place), unless it is sticky (/tmp-like: they
    /// cannot replace a file they do not own).
    static func requireSafeDirectory(of path: String) throws(KeyFileProblem) {
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) }.map { $0.isEmpty ? "/" : $0 } ?? "."
        var info = stat()
        guard stat(directory, &info) == 0 else {
            throw .unreadable(SystemCallError(call: "stat", object: directory, errno: errno))
        }
        let mode = UInt32(info.st_mode & 0o7777)
        let othersMayReplace = mode & 0o022 != 0 && mode & UInt32(S_ISVTX) == 0
        if othersMayReplace || (info.st_uid != geteuid() && info.st_uid != 0) {
            throw .looseDirectory(path: directory, mode: mode)
        }
    }

    /// The most a key read from a stream (stdin, `--key-fd`, a key
    /// command's output) may be. One buffer of this size is filled, so the
    /// key is never copied by a growing array and left behind in freed memory.
    public static let streamLimit = 64 * 1024

    /// Reads a key from an open descriptor until end of file, every byte as
    /// `cryptsetup --key-file -` does (a trailing newline included).
    public static func read(descriptor fd: Int32, name: String) throws(KeyFileProblem) -> SecureBytes {
        var bytes = [UInt8](repeating: 0, count: streamLimit + 1)
        var filled = 0
        while filled < bytes.count {
            let got = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + filled, $0.count - filled) }
            if got < 0 && errno == EINTR { continue }
            if got < 0 {
                let error = SystemCallError(call: "read", object: name, errno: errno)
                _ = SecureBytes(consuming: &bytes)
                throw .unreadable(error)
            }
            if got == 0 { break }
            filled += got
        }
        guard filled <= streamLimit else {
            _ = SecureBytes(consuming: &bytes)
            throw .tooLarge(limit: streamLimit)
        }
        bytes.removeLast(bytes.count - filled)
        guard !bytes.isEmpty else { throw .empty }
        return SecureBytes(consuming: &bytes)
    }
}

/// Where a key command writes the key: an in-memory file handed to the
/// child as stdout, read back into ``SecureBytes`` and emptied. The key
/// never passes through a pipe buffer the runner would turn into text.
public final class KeyCapture: Sendable {
    private let file: MemoryFile

    public init() throws(SystemCallError) {
        file = try MemoryFile(name: "key")
    }

    /// A descriptor for the child's stdout (``Command/outputDescriptor``; the runner closes it).
    public func childDescriptor() throws(SystemCallError) -> Int32 {
        try checkedNegative("dup", "key memfd") { fcntl(file.descriptor, F_DUPFD_CLOEXEC, 0) }
    }

    /// What the child wrote, and the file emptied.
    public func take(name: String) throws(KeyFileProblem) -> SecureBytes {
        defer { file.empty() }
        guard lseek(file.descriptor, 0, SEEK_SET) == 0 else {
            throw .unreadable(SystemCallError(call: "lseek", object: name, errno: errno))
        }
        return try KeyFile.read(descriptor: file.descriptor, name: name)
    }
}
