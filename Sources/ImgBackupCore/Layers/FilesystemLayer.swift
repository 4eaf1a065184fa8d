import ImgBackupOS

/// The image's filesystem mounted at the target's mount point, after checking
/// that the device holds the filesystem the target expects.
public struct FilesystemLayer: Layer {
    public let device: String
    public let mountPoint: String
    public let filesystem: Target.Filesystem
    public let deadline: Duration

    public var intent: LayerRecord { .filesystem(device: device, mountPoint: mountPoint) }

    public func up() async throws -> LayerRecord {
        let found: FilesystemProbe.Found
        do {
            found = try await FilesystemProbe.probe(device: device, deadline: deadline)
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "read the filesystem on \(device)")
        }
        guard found.rawValue == filesystem.rawValue else {
            throw ImgBackupError(
                .system,
                "failed to mount \(device): it holds \(found == .none ? "no filesystem imgbackup knows" : found.rawValue), not \(filesystem.rawValue)",
                hint: "check 'filesystem' in the target's config")
        }
        do {
            try LocalFiles.makeDirectories(mountPoint, mode: 0o755)
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "create the mount point \(mountPoint)")
        }
        if MountTable.isMountPoint(mountPoint) {
            throw ImgBackupError(
                .system, "failed to mount \(device): something is already mounted at \(mountPoint)",
                hint: "unmount it or choose another mount_point")
        }
        if !LocalFiles.isEmptyDirectory(mountPoint) {
            throw ImgBackupError(
                .system, "failed to mount \(device): the mount point \(mountPoint) is not empty",
                hint: "files there would be hidden by the mount; move them or choose another mount_point")
        }
        do {
            try await Mounts.mount(device: device, at: mountPoint, type: filesystem.rawValue, deadline: deadline)
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "mount \(device) at \(mountPoint)")
        }
        return intent
    }
}
