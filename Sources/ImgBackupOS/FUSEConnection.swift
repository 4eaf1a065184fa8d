import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The kernel side of a FUSE mount: /sys/fs/fuse/connections/N, where N is
/// the minor number of the mount's device. Aborting it fails every request
/// waiting on the FUSE daemon at once, so processes stuck on a frozen sshfs
/// (or a bridge whose server froze) get an error instead of waiting forever,
/// and the mounts above can then come down.
public enum FUSEConnection {
    public static let controlDirectory = "/sys/fs/fuse/connections"

    /// The connection number of the FUSE mount at `mountPoint`, from
    /// mountinfo (never touching the mount itself).
    public static func number(mountPoint: String) -> Int? {
        guard let entry = MountTable.mount(at: mountPoint), entry.filesystemType.hasPrefix("fuse"),
            let minor = entry.device.split(separator: ":").last
        else { return nil }
        return Int(minor)
    }

    /// How many requests to the daemon of the FUSE mount at `mountPoint`
    /// are waiting for its answer; nil when there is no such mount or its
    /// connection cannot be read.
    public static func waitingRequests(mountPoint: String) -> Int? {
        guard let number = number(mountPoint: mountPoint), (try? mountControl(number)) != nil,
            let text = KernelFile.text(controlDirectory + "/\(number)/waiting")
        else { return nil }
        return Int(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Mounts fusectl if connection `number` is not to be seen (systemd
    /// mounts it at boot; minimal systems may not have).
    private static func mountControl(_ number: Int) throws(SystemCallError) {
        guard access(controlDirectory + "/\(number)", F_OK) != 0 else { return }
        if mount("fusectl", controlDirectory, "fusectl", 0, nil) != 0 && errno != EBUSY {
            throw SystemCallError(call: "mount fusectl", object: controlDirectory, errno: errno)
        }
    }

    /// Aborts the connection of the FUSE mount at `mountPoint`. Returns false
    /// when there is no such mount. Mounts fusectl first if nobody has.
    @discardableResult
    public static func abort(mountPoint: String) throws(SystemCallError) -> Bool {
        guard let number = number(mountPoint: mountPoint) else { return false }
        try mountControl(number)
        let path = controlDirectory + "/\(number)/abort"
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemCallError(call: "open", object: path, errno: errno) }
        defer { close(fd) }
        guard write(fd, "1", 1) == 1 else { throw SystemCallError(call: "write", object: path, errno: errno) }
        return true
    }
}
