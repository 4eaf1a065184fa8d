/// What one layer of the stack put up, in enough detail to take it down with
/// nothing else in hand: after a crash, `close` reads these from the state
/// record and unwinds them. Encoded in the state record as it always was.
///
/// Everything about one kind (bring up, tear down, is it up, how it is
/// described) lives in that kind's file; the switches here only dispatch.
public enum LayerRecord: Codable, Sendable, Equatable, CustomStringConvertible {
    /// The remote directory mounted over sshfs (SSHFSLayer).
    case sshfs(source: String, mountPoint: String)
    /// The NBD bridge process serving the export as a FUSE file at
    /// mountPoint/image (NBDBridgeLayer).
    case nbdBridge(mountPoint: String, pid: Int32?)
    /// The lock file beside the image naming this machine; removed on close
    /// if it still holds `token`, never someone else's lock (RemoteLockLayer).
    case remoteLock(path: String, token: String)
    /// An image file being created by `init`; removed unless `init` finished
    /// (PartialImageLayer).
    case partialImage(path: String)
    /// A loop device on the image file, device nil until it is attached (LoopLayer).
    case loop(backingFile: String, device: String?)
    /// A dm-crypt mapping, /dev/mapper/NAME (CryptLayer).
    case crypt(name: String)
    /// The image's filesystem mounted at mountPoint (FilesystemLayer).
    case filesystem(device: String, mountPoint: String)

    public var description: String {
        switch self {
        case .sshfs(let source, let mountPoint): SSHFSLayer.describe(source: source, mountPoint: mountPoint)
        case .nbdBridge(let mountPoint, let pid): NBDBridgeLayer.describe(mountPoint: mountPoint, pid: pid)
        case .remoteLock(let path, _): RemoteLockLayer.describe(path: path)
        case .partialImage(let path): PartialImageLayer.describe(path: path)
        case .loop(let backingFile, let device): LoopLayer.describe(backingFile: backingFile, device: device)
        case .crypt(let name): CryptLayer.describe(name: name)
        case .filesystem(_, let mountPoint): FilesystemLayer.describe(mountPoint: mountPoint)
        }
    }

    /// The layer kind's name in messages and `status` ("sshfs", "loop", ...).
    public var layerName: String {
        switch self {
        case .sshfs: SSHFSLayer.kind
        case .nbdBridge: NBDBridgeLayer.kind
        case .remoteLock: RemoteLockLayer.kind
        case .partialImage: PartialImageLayer.kind
        case .loop: LoopLayer.kind
        case .crypt: CryptLayer.kind
        case .filesystem: FilesystemLayer.kind
        }
    }

    /// Where the layer is on this machine (or the remote): two records with
    /// the same kind and place are the same layer, whatever else (a pid, a
    /// device name) only one of them knows.
    var place: String {
        switch self {
        case .sshfs(_, let mountPoint), .nbdBridge(let mountPoint, _), .filesystem(_, let mountPoint): mountPoint
        case .remoteLock(let path, _), .partialImage(let path): path
        case .loop(let backingFile, _): backingFile
        case .crypt(let name): name
        }
    }

    /// The FUSE mount this layer is (a transport that can be aborted), if it is one.
    var fuseMountPoint: String? {
        switch self {
        case .sshfs(_, let mountPoint), .nbdBridge(let mountPoint, _): mountPoint
        case .remoteLock, .partialImage, .loop, .crypt, .filesystem: nil
        }
    }

    func isSameLayer(as other: LayerRecord) -> Bool { layerName == other.layerName && place == other.place }

    /// Whether the layer is up, checked now without touching the remote
    /// (mount table, loop devices, device-mapper); nil for what can only be
    /// known on the remote (the lock file, a partial image).
    public var isUp: Bool? {
        switch self {
        case .sshfs(_, let mountPoint): SSHFSLayer.isUp(mountPoint: mountPoint)
        case .nbdBridge(let mountPoint, _): NBDBridgeLayer.isUp(mountPoint: mountPoint)
        case .remoteLock, .partialImage: nil
        case .loop(let backingFile, _): LoopLayer.isUp(backingFile: backingFile)
        case .crypt(let name): CryptLayer.isUp(name: name)
        case .filesystem(_, let mountPoint): FilesystemLayer.isUp(mountPoint: mountPoint)
        }
    }

    /// The image's transport, if this layer is it: how the image file is
    /// reached through it (a source host's sshfs mount is no transport).
    func imageTransport(of target: Target, _ paths: RuntimePaths) -> (transport: Target.Transport, imageFile: String)? {
        switch self {
        case .sshfs(_, let mountPoint):
            SSHFSLayer.imageFile(mountPoint: mountPoint, of: target, paths).map { (.sshfs, $0) }
        case .nbdBridge(let mountPoint, _):
            (target.transport == .s3 ? .s3 : .nbd, NBDBridgeLayer.imageFile(mountPoint: mountPoint))
        case .remoteLock, .partialImage, .loop, .crypt, .filesystem: nil
        }
    }

    /// Takes the layer down from this record alone. Idempotent: a layer that
    /// is already down (or never came up) counts as success.
    func down(force: Bool, in context: TeardownContext) async throws {
        switch self {
        case .sshfs(_, let mountPoint): try await SSHFSLayer.down(mountPoint: mountPoint, force: force, in: context)
        case .nbdBridge(let mountPoint, let pid):
            try await NBDBridgeLayer.down(mountPoint: mountPoint, pid: pid, force: force, in: context)
        case .remoteLock(let path, let token): await RemoteLockLayer.down(path: path, token: token, in: context)
        case .partialImage(let path): try await PartialImageLayer.down(path: path, force: force, in: context)
        case .loop(let backingFile, _): try await LoopLayer.down(backingFile: backingFile, in: context)
        case .crypt(let name): try await CryptLayer.down(name: name, force: force, in: context)
        case .filesystem(let device, let mountPoint):
            try await FilesystemLayer.down(device: device, mountPoint: mountPoint, force: force, in: context)
        }
    }
}
