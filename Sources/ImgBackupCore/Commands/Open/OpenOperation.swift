import ImgBackupOS
import Logging

/// `imgbackup open`: sshfs, loop device, dm-crypt, mount. The stack stays up
/// after the command returns; the state record says what is up.
public struct OpenOperation {
    public let target: Target
    public let environment: OperationEnvironment
    public var allowDiscards = false
    /// Refuse an NBD server that cannot trim (for `trim`).
    public var requireTrim = false
    /// Mount without the check the dirty marker calls for (to check by hand).
    public var skipCheck = false
    /// Take the remote lock even if someone else's lock file is there.
    public var breakLock = false
    /// Take an image older than the one this machine last opened (after
    /// restoring an older copy on purpose).
    public var acceptRollback = false
    /// Not one byte of the remote changes: every layer read-only, no lock
    /// taken, no journal replayed, no check run, no marker moved.
    public var readOnly = false

    public init(
        target: Target, environment: OperationEnvironment, allowDiscards: Bool = false, requireTrim: Bool = false,
        skipCheck: Bool = false, breakLock: Bool = false, acceptRollback: Bool = false, readOnly: Bool = false
    ) {
        self.readOnly = readOnly
        self.acceptRollback = acceptRollback
        self.skipCheck = skipCheck
        self.breakLock = breakLock
        self.target = target
        self.environment = environment
        self.allowDiscards = allowDiscards
        self.requireTrim = requireTrim
    }

    /// Returns the mount point.
    public func run() async throws(ImgBackupError) -> String {
        let key = try await environment.key(for: target)
        let lock = try TargetLock.acquire(target, paths: environment.paths)
        defer { withExtendedLifetime(lock) {} }
        return try await bringUp(key: key, operation: readOnly ? .openReadOnly : .open)
    }

    /// The stack going up, for a caller that holds the target lock (`run`,
    /// which records itself as the operation, so a `close` after it crashed
    /// knows its copy step may still hold the mount). `run` also mounts the
    /// hosts its ssh:// sources are on, read-only, on top: they come down
    /// first, with the same state record and hang handling.
    func bringUp(key: SecureBytes, operation: StateRecord.Operation = .open, sources copy: Target.Copy? = nil)
        async throws(ImgBackupError) -> String
    {
        try await TargetLock.clearLeftovers(target, environment: environment)
        // Before anything touches the remote (the filesystem layer checks again).
        try FilesystemLayer.requireUsableMountPoint(target.mountPoint)

        let builder = StackBuilder(target: target, environment: environment, operation: operation)
        let identity = LUKSIdentity(paths: environment.paths)
        return try await builder.unwindingOnFailure { () throws(ImgBackupError) -> String in
            let image = try await builder.pushTransport(
                requireTrim: requireTrim, breakLock: breakLock, readOnly: readOnly)
            let exists: Bool
            do {
                exists = try await MountedRemoteFiles.exists(image, deadline: builder.deadlines.remoteCall)
            } catch {
                throw ImgBackupError.wrapping(
                    error, .remote, failedTo: "look for the image \(target.image) on \(target.remote)")
            }
            guard exists else {
                throw ImgBackupError(
                    .remote,
                    "failed to open target '\(target.name)': there is no image \(target.image) in \(target.remote)",
                    hint: "run 'imgbackup init \(target.name)' to create it")
            }
            let loop = LoopLayer(backingFile: image, deadline: builder.deadlines.remoteCall, readOnly: readOnly)
            try await builder.push(loop)
            defer { loop.release() }
            if let device = loop.attachedDevice, !device.directIO {
                environment.logger.notice("\(device.path) runs without direct I/O: expect slow writes")
            }

            let expected = identity.expectation(for: target.name)
            environment.logger.info("unlocking \(target.image)")
            let crypt = CryptLayer(
                device: loop.attachedDevice?.path ?? image, name: target.mappingName, key: key,
                expected: expected, detachedHeaderPath: environment.paths.detachedHeader(target.name),
                allowDiscards: allowDiscards && !readOnly, readOnly: readOnly, deadline: builder.deadlines.remoteCall)
            try await builder.push(crypt)
            loop.release()

            let check = FilesystemCheck(target: target, environment: environment)
            if readOnly {
                await check.sayWhatReadingSkips(device: crypt.mappedDevice, deadline: builder.deadlines.remoteCall)
            } else {
                if !skipCheck { try await check.checkIfMarked(device: crypt.mappedDevice) }
                try check.marker.set(by: operation)
            }
            environment.logger.info(
                "mounting \(target.filesystem.rawValue) at \(target.mountPoint)\(readOnly ? ", read-only" : "")")
            try await builder.push(
                FilesystemLayer(
                    device: crypt.mappedDevice, mountPoint: target.mountPoint, filesystem: target.filesystem,
                    readOnly: readOnly, deadline: builder.deadlines.remoteCall))
            // Only once it opened: a failed open says one thing, its error.
            try await ImageGeneration(paths: environment.paths, target: target, logger: environment.logger)
                .checkAndAdvance(
                    acceptRollback: acceptRollback, readOnly: readOnly, deadline: builder.deadlines.remoteCall)
            if expected.pin == nil, let pin = crypt.observedPin {
                let why =
                    if case .uuidOnly = expected { "recorded before header pins existed" } else {
                        "first open on this machine"
                    }
                environment.logger.notice(
                    "recording the LUKS header pin of target '\(target.name)' (UUID \(pin.uuid)): \(why); from now on a changed header is refused"
                )
                try identity.record(pin, for: target.name)
            }
            if let copy {
                for host in copy.sourceHosts {
                    environment.logger.info("mounting \(host.location) read-only over sshfs (a source)")
                    try await builder.push(
                        SSHFSLayer(
                            endpoint: SSHFSEndpoint(source: host, copy: copy),
                            mountPoint: environment.paths.sourceMount(target.name, host),
                            runner: environment.runner, deadline: builder.deadlines.transportUp))
                }
            }
            return target.mountPoint
        }
    }
}
