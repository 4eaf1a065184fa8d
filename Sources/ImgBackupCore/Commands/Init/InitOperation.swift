import Foundation
import ImgBackupOS
import Logging

/// `imgbackup init`: a new sparse image on the remote, LUKS2-formatted
/// in-process, with a filesystem inside.
///
/// The image is built under a temporary name and renamed into place only when
/// it is complete, so the remote never holds a half-made image under the real
/// name, and a failed init leaves nothing behind. Its stack is not the open
/// target's (a partial image, no mount), so it is held by the builder's own
/// scope (`unwindingOnFailure`); a stop signal ends it between layers or
/// cancels the step that runs, and the unwinding is never cancelled.
public struct InitOperation {
    public let target: Target
    public let environment: OperationEnvironment
    public let size: ByteSize

    public struct Report: Sendable {
        public let image: String
        public let size: ByteSize
        public let luksUUID: String
    }

    public init(target: Target, environment: OperationEnvironment, size: ByteSize? = nil) throws(ImgBackupError) {
        guard let size = size ?? target.size else {
            throw ImgBackupError(
                .usage, "init needs a size for target '\(target.name)'",
                hint: "set size in the config or pass --size 50G")
        }
        guard size.bytes >= 32 << 20 else {
            throw ImgBackupError(
                .usage, "size \(size) is too small: the LUKS2 header alone takes 16 MiB (use at least 32M)")
        }
        self.target = target
        self.environment = environment
        self.size = size
    }

    public var partialImageName: String { "\(target.image).imgbackup-partial" }

    public func run() async throws(ImgBackupError) -> Report {
        let key = try await environment.key(for: target)
        let lock = try TargetLock.acquire(target, paths: environment.paths)
        defer { withExtendedLifetime(lock) {} }
        try await TargetLock.clearLeftovers(target, environment: environment)

        let builder = StackBuilder(target: target, environment: environment, operation: .initialize)
        if target.transport == .s3 { return try await initializeInS3(key: key, builder: builder) }
        let logger = environment.logger
        return try await builder.unwindingOnFailure { () throws(ImgBackupError) -> Report in
            let image = try await builder.pushRemote()
            let partial = "\(builder.remoteDirectory)/\(partialImageName)"
            let deadline = builder.deadlines.remoteCall
            do {
                if try await MountedRemoteFiles.exists(image, deadline: deadline) {
                    throw ImgBackupError(
                        .refused,
                        "refusing to init target '\(target.name)': \(target.image) already exists in \(target.remote)",
                        hint: "init never overwrites an image; use 'imgbackup open', or choose another image name")
                }
                if try await MountedRemoteFiles.exists(partial, deadline: deadline) {
                    logger.notice("removing \(partialImageName) left by an earlier init that did not finish")
                    try await MountedRemoteFiles.remove(partial, deadline: deadline)
                }
            } catch {
                throw ImgBackupError.wrapping(
                    error, .remote, failedTo: "check for an existing image in \(target.remote)")
            }

            logger.info("creating a sparse \(size) image")
            try await builder.push(PartialImageLayer(path: partial, size: size, deadline: deadline))
            let partialDepth = await builder.stack.depth
            let loop = LoopLayer(backingFile: partial, deadline: deadline)
            try await builder.push(loop)
            defer { loop.release() }
            // Only the path: holding the LoopDevice itself would keep its
            // descriptor open, and autoclear could never detach it.
            guard let loopPath = loop.attachedDevice?.path else {
                throw ImgBackupError(.system, "failed to attach a loop device to \(partial)")
            }

            let (uuid, pin) = try await format(loopPath: loopPath, key: key, builder: builder) { loop.release() }

            // Close the image before giving it its real name.
            try await builder.unwind(keeping: partialDepth)
            do {
                try await MountedRemoteFiles.rename(partial, to: image, deadline: deadline)
            } catch {
                throw ImgBackupError.wrapping(error, .remote, failedTo: "rename \(partialImageName) to \(target.image)")
            }
            try LUKSIdentity(paths: environment.paths).record(pin, for: target.name)
            try await builder.unwind()
            return Report(image: "\(target.remote.sshfsSource)/\(target.image)", size: size, luksUUID: uuid)
        }
    }

    /// LUKS2 on the new image's loop device, its mapping, and the
    /// filesystem inside; returns the LUKS UUID and the header's pin.
    /// `attached` runs once the mapping holds the loop device.
    private func format(
        loopPath: String, key: SecureBytes, builder: StackBuilder, attached: () -> Void
    ) async throws(ImgBackupError) -> (String, HeaderPin) {
        let logger = environment.logger
        let deadline = builder.deadlines.remoteCall
        logger.info("formatting LUKS2 on \(loopPath)")
        let uuid: String
        do {
            let pbkdf = target.pbkdf
            uuid = try await withAbandonableDeadline(
                builder.deadlines.luksFormat, operation: "luksFormat \(loopPath)"
            ) {
                try CryptDevice(devicePath: loopPath).formatLUKS2(key: key, pbkdf: pbkdf)
            }
        } catch {
            throw ImgBackupError.wrapping(error, .luks, failedTo: "format LUKS2 on the new image")
        }
        // The header just written is ours: its pin is what every later open must match.
        let pin = try CheckedHeader.read(device: loopPath, expected: .firstUse).pin
        let crypt = CryptLayer(
            device: loopPath, name: target.mappingName, key: key, expected: .pinned(pin),
            detachedHeaderPath: environment.paths.detachedHeader(target.name), allowDiscards: false,
            deadline: deadline)
        try await builder.push(crypt)
        attached()

        logger.info("making \(target.filesystem.rawValue) on \(crypt.mappedDevice)")
        let progress = JournalProgress.start(
            "init of '\(target.name)'", device: crypt.mappedDevice, environment: environment)
        defer { progress.stop() }
        try await FilesystemMaker(target: target, device: crypt.mappedDevice, environment: environment).run()
        return (uuid, pin)
    }

    /// In a bucket there is no rename: the image is complete once its
    /// metadata object exists, which is written last. A marker object
    /// (`PREFIX.imgbackup-partial`) says the objects under the prefix are an
    /// unfinished init's; the next init removes them, and nothing else does.
    private func initializeInS3(key: SecureBytes, builder: StackBuilder) async throws(ImgBackupError) -> Report {
        let client = try await S3Client.forTarget(target, runner: environment.runner)
        let location = client.location
        let objectSize = (location.objectSize ?? S3Location.defaultObjectSize).bytes
        guard size.bytes % objectSize == 0 else {
            throw ImgBackupError(
                .usage,
                "size \(size) is not a whole number of \(ByteSize(bytes: objectSize)) objects",
                hint:
                    "give a multiple of the object size, e.g. --size \(ByteSize(bytes: (size.bytes / objectSize + 1) * objectSize))"
            )
        }
        try await client.checkBucket()
        if try await client.readMetadata() != nil {
            throw ImgBackupError(
                .refused, "refusing to init target '\(target.name)': an image exists at \(location.description)",
                hint: "init never overwrites an image; use 'imgbackup open', or choose another prefix")
        }
        // Someone's init (or open) of this prefix may be under way: its
        // objects are not leftovers. This machine's own stale lock is.
        if let text = try await client.get(location.lockKey) {
            let holder = RemoteLockHolder.parse(text)
            if holder?.token != RemoteLockToken(paths: environment.paths, target: target.name).recorded {
                throw ImgBackupError(
                    .locked,
                    "refusing to init target '\(target.name)': \(location.description) is locked by \(holder?.description ?? "an unreadable lock")",
                    hint:
                        "wait for it to finish; if that machine is gone for good, delete \(location.lockKey) from the bucket"
                )
            }
        }
        let leftovers = try await client.list(prefix: location.objectPrefix, pageSize: 1, onePage: true)
        if try await client.get(location.partialKey) != nil {
            environment.logger.notice(
                "removing the objects of an earlier init of \(location.description) that did not finish")
            _ = try await client.deleteObjects()
        } else if !leftovers.isEmpty {
            throw ImgBackupError(
                .refused,
                "refusing to init target '\(target.name)': objects exist under \(location.objectPrefix) in \(location.bucket), and no image says they are its",
                hint: "choose another prefix, or delete them yourself if they are nobody's")
        }
        try await client.put(location.partialKey, "init of '\(target.name)' started \(Date())\n")
        let report: Report
        do {
            report = try await makeS3Image(key: key, builder: builder, client: client, objectSize: objectSize)
        } catch {
            // As a partial file is removed: best effort, and the marker
            // lets the next init finish the job when the store is away.
            if ![.hung, .locked].contains(error.code), (try? await client.deleteObjects()) != nil {
                try? await client.delete(location.partialKey)
            }
            throw error
        }
        do {
            try await client.delete(location.partialKey)
        } catch {
            environment.logger.notice("the image is complete, but its init marker stays: \(error.message)")
        }
        return report
    }

    private func makeS3Image(key: SecureBytes, builder: StackBuilder, client: S3Client, objectSize: UInt64)
        async throws(ImgBackupError) -> Report
    {
        let location = client.location
        return try await builder.unwindingOnFailure { () throws(ImgBackupError) -> Report in
            let image = try await builder.pushS3(createSize: size.bytes)
            let bridgeDepth = await builder.stack.depth
            let loop = LoopLayer(backingFile: image, deadline: builder.deadlines.remoteCall)
            try await builder.push(loop)
            defer { loop.release() }
            guard let loopPath = loop.attachedDevice?.path else {
                throw ImgBackupError(.system, "failed to attach a loop device to \(image)")
            }
            let (uuid, pin) = try await format(loopPath: loopPath, key: key, builder: builder) { loop.release() }
            // Every block written out through the bridge, then the image is declared.
            try await builder.unwind(keeping: bridgeDepth)
            try await client.writeMetadata(S3ImageMetadata(size: size.bytes, objectSize: objectSize))
            try LUKSIdentity(paths: environment.paths).record(pin, for: target.name)
            try await builder.unwind()
            return Report(image: location.description, size: size, luksUUID: uuid)
        }
    }
}
