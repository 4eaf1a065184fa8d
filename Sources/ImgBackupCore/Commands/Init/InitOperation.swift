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
            loop.release()

            logger.info("making \(target.filesystem.rawValue) on \(crypt.mappedDevice)")
            let progress = JournalProgress.start(
                "init of '\(target.name)'", device: crypt.mappedDevice, environment: environment)
            defer { progress.stop() }
            try await FilesystemMaker(target: target, device: crypt.mappedDevice, environment: environment).run()

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
}
