import Foundation
import ImgBackupOS

/// `imgbackup resize TARGET --size SIZE`: grows the remote image file, the
/// loop device, the dm-crypt mapping and the filesystem, in that order, all
/// online. A target that is open stays open; a closed one is opened over
/// sshfs for the resize and closed again.
///
/// Each step only ever grows and is a no-op at the right size already, so a
/// resize cut off half way (a crash, a dropped link) is finished by running
/// the same command again.
public struct ResizeOperation {
    public let target: Target
    public let environment: OperationEnvironment
    public let size: ByteSize

    public struct Report: Sendable {
        public let previousBytes: UInt64
        public let imageBytes: UInt64
        /// The filesystem's size after growing (statvfs of the mount).
        public let filesystemBytes: UInt64?
        /// Whether the target was open before (and so stays open).
        public let wasOpen: Bool
    }

    /// LUKS2 images use 4096-byte sectors: the mapping can only cover whole ones.
    static let granule: UInt64 = 4096
    /// The kernel's btrfs resize ioctl refuses sizes under 256 MiB (EINVAL);
    /// the LUKS2 header takes 16 MiB of the image.
    static let smallestBtrfsResize: UInt64 = (256 + 16) << 20
    /// resize2fs grows in place; on a large filesystem it writes new group
    /// descriptors and bitmaps for every added group.
    static let filesystemGrowLimit: Duration = .seconds(3600)

    public init(target: Target, environment: OperationEnvironment, size: ByteSize) {
        self.target = target
        self.environment = environment
        self.size = size
    }

    public func run() async throws(ImgBackupError) -> Report {
        guard size.bytes % Self.granule == 0 else {
            throw ImgBackupError(
                .usage, "cannot resize '\(target.name)' to \(size.bytes) bytes: not a whole number of 4 KiB sectors",
                hint: "give the size in M or G, e.g. --size 60G")
        }
        if target.filesystem == .btrfs && size.bytes < Self.smallestBtrfsResize {
            throw ImgBackupError(
                .usage,
                "cannot resize '\(target.name)' to \(size): btrfs refuses to resize a filesystem to less than 256 MiB (the image holds 16 MiB of LUKS header too)",
                hint: "give --size 272M or more")
        }
        let key = try await environment.key(for: target)
        let lock = try TargetLock.acquire(target, paths: environment.paths)
        defer { withExtendedLifetime(lock) {} }

        if target.transport == .s3 { return try await resizeInS3(key: key) }
        if try await openOverSSHFS() {
            return try await grow(key: key, wasOpen: true)
        }
        let held = try await OpenOperation(target: overSSHFS, environment: environment).withOpenTarget(
            operation: .resize, takeLock: false, key: { () throws(ImgBackupError) in key }
        ) { _ throws(ImgBackupError) in
            try await grow(key: key, wasOpen: false)
        }
        guard let grown = held.value, held.failure == nil else {
            throw held.failure ?? ImgBackupError(.system, "failed to resize '\(target.name)'")
        }
        return grown
    }

    /// The target as resize opens it: an NBD export has a fixed size, the file over sshfs grows.
    private var overSSHFS: Target {
        var target = target
        target.transport = .sshfs
        return target
    }

    /// Whether the target is open already, over sshfs; refuses other states.
    private func openOverSSHFS() async throws(ImgBackupError) -> Bool {
        guard let record = try environment.stateStore.load(target: target.name) else { return false }
        let layers = record.layers
        let mounted = layers.contains { if case .filesystem = $0 { $0.isUp == true } else { false } }
        guard record.operation == .open, mounted else {
            try await TargetLock.clearLeftovers(target, environment: environment)  // or says what is left over
            return false
        }
        guard layers.contains(where: { if case .sshfs = $0 { true } else { false } }) else {
            throw ImgBackupError(
                .refused, "cannot resize '\(target.name)' while it is open over NBD: an NBD export has a fixed size",
                hint: "run 'imgbackup close \(target.name)', then resize (it grows the image over sshfs)")
        }
        return true
    }

    /// An S3 image's size is its metadata object's: a closed image grows by
    /// a new size there (objects past the old end do not exist yet, and
    /// read as zeros), then opens over S3 and grows the layers above. One
    /// that is open already must close first: the bridge serves a fixed size.
    private func resizeInS3(key: SecureBytes) async throws(ImgBackupError) -> Report {
        if let record = try environment.stateStore.load(target: target.name), record.operation == .open {
            throw ImgBackupError(
                .refused, "cannot resize '\(target.name)' while it is open: the S3 bridge serves a fixed size",
                hint: "run 'imgbackup close \(target.name)', then resize")
        }
        try await TargetLock.clearLeftovers(target, environment: environment)
        let client = try await S3Client.forTarget(target, runner: environment.runner)
        var metadata = try await client.requireMetadata()
        let previous = metadata.size
        try refuseShrinking(from: previous)
        if size.bytes % metadata.objectSize != 0 {
            throw ImgBackupError(
                .usage,
                "cannot resize '\(target.name)' to \(size): an S3 image is a whole number of \(ByteSize(bytes: metadata.objectSize)) objects",
                hint:
                    "give a multiple of the object size, e.g. --size \(ByteSize(bytes: (size.bytes / metadata.objectSize + 1) * metadata.objectSize))"
            )
        }
        if size.bytes > previous {
            metadata.size = size.bytes
            try await client.writeMetadata(metadata)
        }
        let image = NBDBridgeLayer.imageFile(mountPoint: environment.paths.nbdMount(target.name))
        let held = try await OpenOperation(target: target, environment: environment).withOpenTarget(
            operation: .resize, takeLock: false, key: { () throws(ImgBackupError) in key }
        ) { _ throws(ImgBackupError) in
            try await growLayers(key: key, image: image, previous: previous, wasOpen: false)
        }
        guard let grown = held.value, held.failure == nil else {
            throw held.failure ?? ImgBackupError(.system, "failed to resize '\(target.name)'")
        }
        return grown
    }

    private func refuseShrinking(from current: UInt64) throws(ImgBackupError) {
        if size.bytes < current {
            throw ImgBackupError(
                .refused,
                "cannot shrink '\(target.name)' from \(ByteSize.format(current)) to \(size): \(target.filesystem == .ext4 ? "ext4 cannot shrink while mounted, and " : "")imgbackup only grows images",
                hint:
                    "to use less space on the remote, run 'imgbackup trim \(target.name)'; for a smaller image, init a new target and copy the backups over"
            )
        }
    }

    private func grow(key: SecureBytes, wasOpen: Bool) async throws(ImgBackupError) -> Report {
        let image = "\(environment.paths.remoteMount(target.name))/\(target.image)"
        let remoteCall = Deadlines(target).remoteCall
        let current: UInt64
        do {
            current = try await MountedRemoteFiles.size(image, deadline: remoteCall)
        } catch {
            throw ImgBackupError.wrapping(
                error, .remote, failedTo: "read the size of \(target.image) on \(target.remote)")
        }
        try refuseShrinking(from: current)
        if size.bytes > current {
            let growth = size.bytes - current
            // The file grows sparse, but the filesystem inside may fill it: the remote must have room.
            if let available = await RemoteFreeSpace(target: overSSHFS, environment: environment).available(),
                available < growth
            {
                throw ImgBackupError(
                    .remote,
                    "cannot grow '\(target.name)' by \(ByteSize.format(growth)): the remote has \(ByteSize.format(available)) free in \(target.remote)",
                    hint: "free space there, or choose a smaller --size")
            }
            do {
                try await MountedRemoteFiles.grow(image, to: size.bytes, deadline: remoteCall)
            } catch {
                throw ImgBackupError.wrapping(error, .remote, failedTo: "grow \(target.image) on \(target.remote)")
            }
        }
        return try await growLayers(key: key, image: image, previous: current, wasOpen: wasOpen)
    }

    /// The loop device, the mapping and the filesystem, up to the image's size now.
    private func growLayers(key: SecureBytes, image: String, previous current: UInt64, wasOpen: Bool)
        async throws(ImgBackupError) -> Report
    {
        let remoteCall = Deadlines(target).remoteCall
        let mapping = target.mappingName
        // Growing the mapping unlocks the header again: check it against the
        // pin as open does, and let libcryptsetup read only the checked copy,
        // or a header swapped in since the open would change the live key.
        let (name, expected) = (target.name, LUKSIdentity(paths: environment.paths).expectation(for: target.name))
        let detached = environment.paths.detachedHeader(target.name)
        do {
            try await withAbandonableDeadline(remoteCall, operation: "grow the loop device and /dev/mapper/\(mapping)")
            {
                let devices = LoopDevice.devices(backingFile: image)
                for device in devices {
                    try LoopDevice.refreshCapacity(device)
                }
                guard let device = devices.first else {
                    throw ImgBackupError(
                        .invalidState, "no loop device is attached to \(image)",
                        hint: "run 'imgbackup close \(name)', then resize again")
                }
                let header = try CheckedHeader.read(device: device, expected: expected)
                try LUKS2Metadata.withDetachedHeader(
                    from: device, copies: header.copies, areas: header.keyslotAreas, length: header.dataOffset,
                    at: detached
                ) { () throws in
                    try CryptDevice.growActive(name: mapping, key: key, detachedHeader: detached)
                }
            }
        } catch let error as CryptSetupError where error.isWrongKey {
            throw ImgBackupError(
                .badKey, "failed to grow /dev/mapper/\(mapping): the key does not open \(target.image)")
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "grow /dev/mapper/\(mapping)")
        }
        try await growFilesystem(device: "/dev/mapper/\(mapping)")
        return Report(
            previousBytes: current, imageBytes: max(size.bytes, current),
            filesystemBytes: StatusOperation.usage(target.mountPoint)?.sizeBytes, wasOpen: wasOpen)
    }

    private func growFilesystem(device: String) async throws(ImgBackupError) {
        let command =
            switch target.filesystem {
            case .ext4: Command("resize2fs", [device], timeout: Self.filesystemGrowLimit)
            case .btrfs:
                Command("btrfs", ["filesystem", "resize", "max", target.mountPoint], timeout: Self.filesystemGrowLimit)
            }
        let result: CommandResult
        do {
            result = try await environment.runner.run(command)
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "grow the filesystem of '\(target.name)'")
        }
        guard result.succeeded else {
            throw ImgBackupError(
                .system, "failed to grow the filesystem of '\(target.name)': \(result.failureSummary)",
                hint: "the image and mapping did grow; run the same resize again to retry")
        }
    }
}

#if canImport(Glibc)
    import Glibc
#endif
