import CImgBackupShim
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// mount(2) and umount2(2), run where a deadline can abandon them.
public enum Mounts {
    /// Mounts `device` at `mountPoint`, nosuid and nodev: what the backups
    /// hold (a set-uid program, a device node copied from a source) never
    /// takes effect here. On storage that stopped answering the syscall can
    /// block in the kernel forever: the deadline abandons it.
    public static func mount(
        device: String, at mountPoint: String, type: String, options: String = "", readOnly: Bool = false,
        deadline: Duration
    ) async throws {
        let flags = UInt(MS_NOSUID | MS_NODEV) | (readOnly ? UInt(MS_RDONLY) : 0)
        try await withAbandonableDeadline(deadline, operation: "mount \(device) on \(mountPoint)") {
            _ = try checked("mount", mountPoint) {
                Glibc.mount(device, mountPoint, type, flags, options.isEmpty ? nil : options)
            }
        }
    }

    /// Makes the root of the filesystem mounted at `mountPoint` root's alone
    /// (0700): other local users cannot read the backups, nor sit in the
    /// mount and keep it busy when the run wants to unmount it.
    public static func restrictRootToOwner(_ mountPoint: String) throws(SystemCallError) {
        var info = stat()
        _ = try checked("stat", mountPoint) { stat(mountPoint, &info) }
        if info.st_mode & 0o077 != 0 {
            _ = try checked("chmod", mountPoint) { chmod(mountPoint, 0o700) }
        }
    }

    public enum UnmountMode: Sendable {
        case normal
        /// MNT_DETACH: the mount vanishes from the namespace now, the kernel
        /// finishes when the last user lets go.
        case lazy
    }

    /// Unmounts `mountPoint`. Not mounted counts as success.
    public static func unmount(_ mountPoint: String, mode: UnmountMode = .normal, deadline: Duration) async throws {
        guard MountTable.isMountPoint(mountPoint) else { return }
        let flags: Int32 = mode == .lazy ? Int32(MNT_DETACH) : 0
        try await withAbandonableDeadline(deadline, operation: "umount \(mountPoint)") {
            let status = umount2(mountPoint, flags)
            if status != 0 && errno != EINVAL && errno != ENOENT {
                throw SystemCallError(call: "umount2", object: mountPoint, errno: errno)
            }
        }
    }

    /// Writes the filesystem's dirty data out (syncfs): after it, what the
    /// copy step wrote has reached the remote.
    public static func sync(_ mountPoint: String, deadline: Duration) async throws {
        try await withAbandonableDeadline(deadline, operation: "sync \(mountPoint)") {
            let fd = open(mountPoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard fd >= 0 else { throw SystemCallError(call: "open", object: mountPoint, errno: errno) }
            defer { close(fd) }
            if imgb_syncfs(fd) != 0 { throw SystemCallError(call: "syncfs", object: mountPoint, errno: errno) }
        }
    }
}

extension Mounts {
    /// Shuts an ext4 filesystem down as at a power cut (EXT4_IOC_SHUTDOWN,
    /// no log flush): its journal is aborted and nothing more is written.
    /// Unmounting a filesystem whose write-back failed otherwise lets
    /// Linux (6.1 at least) mark the journal as needing no recovery although
    /// its last checkpoint failed; the next mount then discards the journal
    /// and the metadata it held is lost. Shut down first, the journal stays
    /// marked, and the next e2fsck replays it.
    public static func shutDownKeepingJournal(_ mountPoint: String) throws(SystemCallError) {
        let fd = open(mountPoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemCallError(call: "open", object: mountPoint, errno: errno) }
        defer { close(fd) }
        let status = imgb_ext4_shut_down_without_log_flush(fd)
        if status != 0 { throw SystemCallError(call: "ioctl(EXT4_IOC_SHUTDOWN)", object: mountPoint, errno: -status) }
    }
}

/// syncfs(2) through one descriptor of a mounted filesystem, opened before
/// the writes it is to vouch for. Since Linux 5.8 syncfs reports a write-back
/// error to every descriptor opened before the error happened, once each: a
/// descriptor opened after the copy would miss the errors of background
/// write-back during it. The descriptor keeps the mount busy: `release` it
/// before unmounting.
public final class WriteBackWatch: Sendable {
    private let descriptor: Mutex<Int32>
    public let mountPoint: String

    public init(mountPoint: String) throws(SystemCallError) {
        let fd = open(mountPoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemCallError(call: "open", object: mountPoint, errno: errno) }
        self.descriptor = Mutex(fd)
        self.mountPoint = mountPoint
    }

    /// Writes the filesystem's dirty data out; fails if any write-back since
    /// this watch was opened (or since its last failure) failed.
    public func sync(deadline: Duration) async throws {
        // A duplicate for the call: an abandoned syncfs keeps its own descriptor,
        // and release() can close ours meanwhile. dup shares the error cursor.
        let fd = descriptor.withLock { $0 >= 0 ? dup($0) : -1 }
        guard fd >= 0 else { throw SystemCallError(call: "syncfs", object: mountPoint, errno: EBADF) }
        let mountPoint = mountPoint
        try await withAbandonableDeadline(deadline, operation: "sync \(mountPoint)") {
            defer { close(fd) }
            if imgb_syncfs(fd) != 0 {
                throw SystemCallError(call: "syncfs", object: mountPoint, errno: errno)
            }
        }
    }

    /// Closes the descriptor, so the filesystem can be unmounted.
    public func release() {
        descriptor.withLock { fd in
            if fd >= 0 { close(fd) }
            fd = -1
        }
    }

    deinit { release() }
}
