/// What one layer of the stack put up, in enough detail to take it down with
/// nothing else in hand: after a crash, `close` reads these from the state
/// record and unwinds them.
public enum LayerRecord: Codable, Sendable, Equatable, CustomStringConvertible {
    /// The remote directory mounted over sshfs.
    case sshfs(source: String, mountPoint: String)
    /// The NBD bridge process serving the export as a FUSE file at mountPoint/image.
    case nbdBridge(mountPoint: String, pid: Int32?)
    /// The lock file beside the image naming this machine; removed on close
    /// if it still holds `token` (never someone else's lock).
    case remoteLock(path: String, token: String)
    /// An image file being created by `init`; removed unless `init` finished.
    case partialImage(path: String)
    /// A loop device on the image file (device nil until it is attached).
    case loop(backingFile: String, device: String?)
    /// A dm-crypt mapping, /dev/mapper/NAME.
    case crypt(name: String)
    /// The image's filesystem mounted at mountPoint.
    case filesystem(device: String, mountPoint: String)

    public var description: String {
        switch self {
        case .sshfs(let source, let mountPoint): return "sshfs mount of \(source) at \(mountPoint)"
        case .nbdBridge(let mountPoint, let pid): return "NBD bridge\(pid.map { " (pid \($0))" } ?? "") at \(mountPoint)"
        case .remoteLock(let path, _): return "remote lock \(path)"
        case .partialImage(let path): return "partial image \(path)"
        case .loop(let backingFile, let device): return "loop device \(device ?? "(not yet attached)") on \(backingFile)"
        case .crypt(let name): return "dm-crypt mapping /dev/mapper/\(name)"
        case .filesystem(_, let mountPoint): return "filesystem mount at \(mountPoint)"
        }
    }

    /// The layer name used in messages ("sshfs", "loop", ...).
    public var layerName: String {
        switch self {
        case .sshfs: return "sshfs"
        case .nbdBridge: return "nbd"
        case .remoteLock: return "lock"
        case .partialImage: return "image"
        case .loop: return "loop"
        case .crypt: return "dm-crypt"
        case .filesystem: return "filesystem"
        }
    }
}
