import Foundation
import ImgBackupOS
import Logging
import Synchronization

/// Takes real layers down. Each step checks first whether its layer is still
/// up (reading /proc and /sys, which never block on a hung remote), and each
/// blocking step runs under the target's teardown deadline.
public struct SystemTeardown: LayerTeardown {
    public let runner: any CommandRunning
    /// The named deadline of each step (`timeouts.teardown`).
    public let stepDeadline: Duration
    public let logger: Logger
    /// Writes to the image already failed while it was open (a run's
    /// write-out): its ext4 filesystem is shut down before the unmount.
    public let imageWritesFailed: Bool
    /// Why the filesystem was shut down before its unmount, when it was:
    /// writes that did not reach the remote, for `close` to report.
    public let lostWrites = LostWrites()

    public init(runner: any CommandRunning, stepDeadline: Duration, logger: Logger, imageWritesFailed: Bool = false) {
        self.runner = runner
        self.stepDeadline = stepDeadline
        self.logger = logger
        self.imageWritesFailed = imageWritesFailed
    }

    public func down(_ record: LayerRecord, force: Bool) async throws {
        switch record {
        case .filesystem(let device, let mountPoint):
            try await unmountFilesystem(device: device, mountPoint: mountPoint, force: force)
        case .crypt(let name):
            try await deactivate(name: name, force: force)
        case .loop(let backingFile, _):
            try await detachLoops(backingFile: backingFile)
        case .remoteLock(let path, let token):
            await removeLock(path, token: token)
        case .partialImage(let path):
            do {
                try await RemoteFiles.remove(path, deadline: stepDeadline)
            } catch where force {
                // After a hang the remote cannot be reached. The half-made
                // image never had the real name, and the next init removes it.
                logger.notice("could not remove the unfinished image \(path) (\(error)): the next init removes it")
            }
        case .sshfs(_, let mountPoint):
            try await unmountSSHFS(mountPoint, force: force)
        case .nbdBridge(let mountPoint, let pid):
            try await stopBridge(mountPoint: mountPoint, pid: pid, force: force)
        }
    }

    /// Removes the remote lock if it is still ours. Best effort: after a hang
    /// the remote cannot be reached, and the lock must not keep the rest of
    /// the stack up; the next open from this machine knows it as its own.
    private func removeLock(_ path: String, token: String) async {
        do {
            guard let text = try await RemoteFiles.read(path, deadline: stepDeadline) else { return }
            if text.isEmpty {
                // Created (O_EXCL) but never written: this session was
                // stopped between the two, as its record of the lock says.
                // Left there, it would lock out every later open.
                logger.notice("removing the empty lock file \(path), left by an interrupted lock")
                return try await RemoteFiles.remove(path, deadline: stepDeadline)
            }
            guard text.contains("token=\(token)") else {
                // Also the unwind after failing to take a lock someone else holds.
                logger.info("\(path) is not this session's lock: leaving it")
                return
            }
            try await RemoteFiles.remove(path, deadline: stepDeadline)
        } catch {
            logger.notice("could not remove the remote lock \(path) (\(ImgBackupError.reason(of: error))): the next open from this machine replaces it")
        }
    }

    private func unmountFilesystem(device: String, mountPoint: String, force: Bool) async throws {
        // Only our own mount: never unmount something else mounted there.
        guard let entry = MountTable.mount(at: mountPoint),
            entry.source == device || BlockDeviceStats.kernelName(of: entry.source) == BlockDeviceStats.kernelName(of: device)
        else { return }
        if entry.filesystemType == "ext4" { await keepJournalIfWritesFailed(mountPoint) }
        do {
            try await unmountRetryingWhileNobodyUsesIt(mountPoint)
        } catch let error as SystemCallError where error.errno == EBUSY {
            guard force else {
                throw ImgBackupError(
                    .invalidState, "failed to unmount \(mountPoint): it is busy",
                    hint: "close the programs using it (fuser -vm \(mountPoint)), or use close --force")
            }
            logger.notice("\(mountPoint) is busy: detaching it lazily")
            try await Mounts.unmount(mountPoint, mode: .lazy, deadline: stepDeadline)
        }
    }

    /// A mount that nobody is seen using can still be busy for a moment:
    /// a process that was just killed lets go of its files as it exits.
    /// Retried for a few seconds (within the step's deadline) while no
    /// process uses it; a process that does (a person's shell) makes it busy
    /// at once, and so does a user no process table shows for long.
    static let busyRetryLimit: Duration = .seconds(5)

    private func unmountRetryingWhileNobodyUsesIt(_ mountPoint: String) async throws {
        let clock = ContinuousClock()
        let end = clock.now.advanced(by: min(stepDeadline, Self.busyRetryLimit))
        while true {
            do {
                return try await Mounts.unmount(mountPoint, deadline: stepDeadline)
            } catch let error as SystemCallError where error.errno == EBUSY {
                let users = ProcessTable.processes(using: mountPoint).filter(ProcessTable.isAlive)
                guard users.isEmpty, clock.now < end else { throw error }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    /// A filesystem whose writes did not all reach the remote (a full
    /// remote, a hang) is shut down before it is unmounted: see
    /// `Mounts.shutDownKeepingJournal`. The sync asks whether everything
    /// written reached the remote; one that only runs out of time is left
    /// to the unmount, as before.
    private func keepJournalIfWritesFailed(_ mountPoint: String) async {
        var failure = imageWritesFailed ? "writes to the image failed earlier" : nil
        if failure == nil {
            do {
                try await Mounts.sync(mountPoint, deadline: stepDeadline)
            } catch let error as SystemCallError {
                failure = "the last write-out failed (\(error))"
            } catch {}
        }
        guard let failure else { return }
        lostWrites.record(failure)
        do {
            try Mounts.shutDownKeepingJournal(mountPoint)
            logger.notice("\(failure): shut the filesystem at \(mountPoint) down, so the next open replays its journal")
        } catch {
            logger.error("\(failure), and shutting the filesystem at \(mountPoint) down failed: \(error)")
        }
    }

    private func deactivate(name: String, force: Bool) async throws {
        do {
            try await withAbandonableDeadline(stepDeadline, operation: "deactivate /dev/mapper/\(name)") {
                try CryptDevice.deactivate(name: name)
            }
        } catch let error as CryptSetupError where error.isBusy {
            guard force else {
                throw ImgBackupError(
                    .invalidState, "failed to close /dev/mapper/\(name): it is in use",
                    hint: "something still holds it open; use close --force to remove it when it is released")
            }
            logger.notice("/dev/mapper/\(name) is busy: deferring its removal")
            try await withAbandonableDeadline(stepDeadline, operation: "deactivate /dev/mapper/\(name)") {
                try CryptDevice.deactivate(name: name, deferred: true)
            }
        }
    }

    private func detachLoops(backingFile: String) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: stepDeadline)
        while true {
            let devices = LoopDevice.devices(backingFile: backingFile)
            if devices.isEmpty { return }
            for device in devices {
                if let holder = LoopDevice.holders(of: device).first {
                    throw ImgBackupError(
                        .invalidState, "failed to detach \(device): \(holder) still uses it",
                        hint: "the dm-crypt mapping above it did not close; run 'imgbackup close' again")
                }
                try LoopDevice.detach(device)
            }
            // Detaching is asynchronous in the kernel: wait until sysfs agrees.
            guard clock.now < deadline else {
                throw ImgBackupError(
                    .invalidState,
                    "failed to detach \(devices.joined(separator: ", ")) within \(stepDeadline.secondsText)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// Unmounting the bridge's FUSE mount ends its loop; it then flushes and
    /// disconnects from the server and exits. One that does not is stopped.
    private func stopBridge(mountPoint: String, pid: Int32?, force: Bool) async throws {
        if !MountTable.isMountPoint(mountPoint) {
            // A bridge whose command was stopped while it connected (a stop
            // signal, a kill) has no pid on record yet, and would mount
            // after we looked: stop it first.
            let strays = ProcessTable.processes(named: (DetachedProcess.currentExecutable as NSString).lastPathComponent, withArgument: mountPoint)
                .filter { DetachedProcess.isRunning(pid: $0, withArgument: NBDBridgeLayer.subcommand) }
            if !strays.isEmpty {
                logger.notice("stopping the NBD bridge (pid \(strays.map(String.init).joined(separator: ", "))) left by an interrupted command")
                await ProcessTable.terminate(strays, grace: .seconds(2))
            }
        }
        try await unmountFUSE(mountPoint, force: force, what: "the NBD bridge")
        if let pid {
            // Forced (after a hang, or close --force): the bridge's last flush
            // waits on the server that stopped answering; do not wait it out.
            try await stopLingering(
                "the NBD bridge", within: force ? min(stepDeadline, .seconds(2)) : stepDeadline
            ) { DetachedProcess.isRunning(pid: pid, withArgument: NBDBridgeLayer.subcommand) ? [pid] : [] }
        }
        LocalFiles.removeDirectoryIfEmpty(mountPoint)
    }

    private func unmountSSHFS(_ mountPoint: String, force: Bool) async throws {
        defer {
            // The mount point and the per-target runtime directory it lives in.
            LocalFiles.removeDirectoryIfEmpty(mountPoint)
            LocalFiles.removeDirectoryIfEmpty(String(mountPoint[..<(mountPoint.lastIndex(of: "/") ?? mountPoint.endIndex)]))
        }
        if !MountTable.isMountPoint(mountPoint) {
            // An sshfs whose `open` died while it was connecting would mount
            // after we looked: stop it first.
            let strays = ProcessTable.processes(named: "sshfs", withArgument: mountPoint)
            guard !strays.isEmpty else { return }
            logger.notice("stopping sshfs (pid \(strays.map(String.init).joined(separator: ", "))) left by an interrupted command")
            await ProcessTable.terminate(strays, grace: .seconds(2))
        }
        try await unmountFUSE(mountPoint, force: force, what: "the remote directory")
        // sshfs normally exits once unmounted; one stuck on a dead server
        // (its connection aborted after a hang) is stopped.
        try await stopLingering("sshfs", within: .seconds(2)) {
            ProcessTable.processes(named: "sshfs", withArgument: mountPoint)
        }
    }

    /// Waits up to `deadline` for the processes `find` returns to exit after
    /// their mount went away; stops (TERM, then KILL) those that do not.
    private func stopLingering(_ what: String, within deadline: Duration, find: () -> [pid_t]) async throws {
        let clock = ContinuousClock()
        let end = clock.now.advanced(by: deadline)
        while clock.now < end, !find().isEmpty {
            try await Task.sleep(for: .milliseconds(50))
        }
        let left = find()
        guard !left.isEmpty else { return }
        logger.notice("\(what) (pid \(left.map(String.init).joined(separator: ", "))) did not exit: stopping it")
        await ProcessTable.terminate(left, grace: .seconds(2))
    }

    private func unmountFUSE(_ mountPoint: String, force: Bool, what: String) async throws {
        guard let entry = MountTable.mount(at: mountPoint), entry.filesystemType.hasPrefix("fuse") else { return }
        let result = try await runner.run(Command("fusermount3", ["-u", mountPoint], timeout: stepDeadline))
        if result.succeeded || !MountTable.isMountPoint(mountPoint) { return }
        guard force else {
            throw ImgBackupError(
                .invalidState, "failed to unmount \(what) at \(mountPoint): \(result.failureSummary)",
                hint: "use close --force to detach it lazily")
        }
        logger.notice("\(mountPoint) did not unmount: detaching it lazily")
        let lazy = try await runner.run(Command("fusermount3", ["-u", "-z", mountPoint], timeout: stepDeadline))
        if !lazy.succeeded && MountTable.isMountPoint(mountPoint) {
            throw ImgBackupError(.invalidState, "failed to detach \(mountPoint): \(lazy.failureSummary)")
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// What the teardown learned about writes lost on the way to the remote.
public final class LostWrites: Sendable {
    private let first = Mutex<String?>(nil)
    public var reason: String? { first.withLock { $0 } }
    func record(_ reason: String) { first.withLock { $0 = $0 ?? reason } }
}
