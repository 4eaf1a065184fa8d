import ImgBackupOS
import Logging

/// Brings one target's layers up on a LayerStack, and unwinds it all when a
/// step fails, so a failed command never leaves a half-built stack behind.
struct StackBuilder {
    let target: Target
    let environment: OperationEnvironment
    let stack: LayerStack
    let deadlines: Deadlines

    init(target: Target, environment: OperationEnvironment, operation: StateRecord.Operation) {
        self.target = target
        self.environment = environment
        self.deadlines = Deadlines(target)
        let teardown = environment.layerTeardown(
            TeardownContext(
                runner: environment.runner, stepDeadline: deadlines.teardownStep, logger: environment.logger))
        self.stack = LayerStack(
            journal: environment.stateStore.journal(for: target.name, operation: operation),
            teardown: teardown, logger: environment.logger)
    }

    var remoteDirectory: String { environment.paths.remoteMount(target.name) }

    func push(_ layer: any Layer) async throws(ImgBackupError) {
        try stopIfInterrupted()
        do {
            try await stack.push(layer)
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "bring up the \(layer.intent)")
        }
    }

    /// sshfs mount of the remote directory, and the lock beside the image;
    /// returns the image's local path. Read-only: the mount is, and no lock
    /// is taken (that would write); one someone else holds is refused.
    func pushRemote(breakLock: Bool = false, readOnly: Bool = false) async throws(ImgBackupError) -> String {
        environment.logger.info("mounting \(target.remote) over sshfs\(readOnly ? ", read-only" : "")")
        try await push(
            SSHFSLayer(
                endpoint: SSHFSEndpoint(target: target, readOnly: readOnly), mountPoint: remoteDirectory,
                runner: environment.runner, deadline: deadlines.transportUp))
        let image = "\(remoteDirectory)/\(target.image)"
        if readOnly {
            try await RemoteLock(
                store: LockFile(path: RemoteLockLayer.lockPath(imagePath: image), deadline: deadlines.remoteCall),
                target: target, paths: environment.paths, breakLock: breakLock, logger: environment.logger
            ).requireUnheldForReading()
            return image
        }
        try await pushLock(
            RemoteLockLayer(
                path: RemoteLockLayer.lockPath(imagePath: image), target: target, paths: environment.paths,
                breakLock: breakLock,
                deadline: deadlines.remoteCall, logger: environment.logger))
        return image
    }

    /// Between layers: a stop signal ends the bring-up, and the caller's
    /// unwinding takes down what is already up.
    func stopIfInterrupted() throws(ImgBackupError) {
        guard Task.isCancelled || environment.stopSignals.received != nil else { return }
        throw .interrupted(by: environment.stopSignals.received, "stopped bringing target '\(target.name)' up")
    }

    /// A lock held by someone else is their error (exit 4), not a failure to
    /// bring a layer up.
    private func pushLock(_ layer: RemoteLockLayer) async throws(ImgBackupError) {
        try stopIfInterrupted()
        do {
            try await stack.push(layer)
        } catch let error as ImgBackupError {
            throw error
        } catch {
            throw ImgBackupError.wrapping(error, .remote, failedTo: "lock \(layer.path)")
        }
    }

    /// The transport of `target.transport`, its connections capped at the
    /// target's `bandwidth_limit`; returns the image's local path.
    func pushTransport(requireTrim: Bool = false, breakLock: Bool = false, readOnly: Bool = false)
        async throws(ImgBackupError) -> String
    {
        let image = try await pushTransportUncapped(requireTrim: requireTrim, breakLock: breakLock, readOnly: readOnly)
        if target.bandwidthLimit != nil { WireTraffic(target: target, paths: environment.paths).sample() }
        return image
    }

    /// Over NBD the remote lock is an flock the session holds, gone with
    /// it: a read-only session takes it like any other.
    private func pushTransportUncapped(requireTrim: Bool, breakLock: Bool, readOnly: Bool)
        async throws(ImgBackupError) -> String
    {
        switch target.transport {
        case .sshfs:
            return try await pushRemote(breakLock: breakLock, readOnly: readOnly)
        case .nbd:
            environment.logger.info("starting the NBD bridge for \(target.remote.host)")
            let bridge = nbdBridge(requireTrim: requireTrim)
            try await push(bridge)
            return bridge.imagePath
        case .s3:
            return try await pushS3(breakLock: breakLock, readOnly: readOnly)
        }
    }

    func nbdBridge(requireTrim: Bool) -> NBDBridgeLayer {
        var bridge = NBDBridgeLayer(
            target: target, mountPoint: environment.paths.nbdMount(target.name), configPath: environment.configPath,
            logFile: environment.paths.nbdLog(target.name), requireTrim: requireTrim, deadline: deadlines.transportUp)
        bridge.paths = environment.paths
        bridge.logger = environment.logger
        return bridge
    }

    /// The bridge over nbdkit's S3 plugin. It holds the lock object itself
    /// (a read-only one checks it and takes none); `createSize` for `init`.
    func pushS3(breakLock: Bool = false, readOnly: Bool = false, createSize: UInt64? = nil)
        async throws(ImgBackupError) -> String
    {
        environment.logger.info(
            "starting the NBD bridge to \(target.s3?.description ?? target.name)\(readOnly ? ", read-only" : "")")
        var bridge = nbdBridge(requireTrim: false)
        bridge.readOnly = readOnly
        bridge.breakLock = breakLock
        bridge.createSize = createSize
        try stopIfInterrupted()
        do {
            try await stack.push(bridge)
        } catch let error as ImgBackupError where [.locked, .config].contains(error.code) {
            throw error
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "bring up the \(bridge.intent)")
        }
        return bridge.imagePath
    }

    /// Runs `body`; when it throws, unwinds everything and rethrows, noting
    /// anything that could not be taken down.
    func unwindingOnFailure<T>(_ body: () async throws(ImgBackupError) -> T) async throws(ImgBackupError) -> T {
        do {
            return try await body()
        } catch {
            // A stop signal's cancellation may have surfaced as another failure.
            let error =
                error.code != .interrupted && environment.stopSignals.received != nil
                ? ImgBackupError.interrupted(
                    by: environment.stopSignals.received, "stopped bringing target '\(target.name)' up", cause: error)
                : error
            // After a hang the transport is gone: escalate at once.
            let report = await stack.unwind(force: error.code == .hung)
            guard let failure = report.firstFailure else { throw error }
            throw ImgBackupError(
                error.code,
                "\(error.message); and cleaning up failed: \(failure.error.message)",
                hint: "run 'imgbackup close \(target.name)' to retry the cleanup", cause: error)
        }
    }

    /// Unwinds to `remaining` layers; throws the first failure.
    func unwind(keeping remaining: Int = 0, force: Bool = false) async throws(ImgBackupError) {
        let report = await stack.unwind(keeping: remaining, force: force)
        if let failure = report.firstFailure { throw failure.error }
        if let stuck = report.stuck {
            throw ImgBackupError(
                .hung,
                "taking target '\(target.name)' down hung: \(stuck), so its transport was cut off",
                hint: "check the remote (\(target.remote.host)); earlier backups are untouched")
        }
    }
}
