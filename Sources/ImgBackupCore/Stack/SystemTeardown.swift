import Foundation
import ImgBackupOS
import Logging
import Synchronization

/// Takes real layers down: a dispatcher to each layer kind's `down`, which
/// lives in that kind's file under Layers/. Each step checks first whether
/// its layer is still up (reading /proc and /sys, which never block on a
/// hung remote), and each blocking step runs under the target's teardown
/// deadline.
public struct SystemTeardown: LayerTeardown {
    public let context: TeardownContext

    public init(context: TeardownContext) { self.context = context }

    public func down(_ record: LayerRecord, force: Bool) async throws {
        try await record.down(force: force, in: context)
    }

    public func cutOff(_ records: [LayerRecord]) async {
        for mountPoint in records.compactMap(\.fuseMountPoint) where MountTable.isMountPoint(mountPoint) {
            context.logger.notice("aborting the FUSE connection of \(mountPoint)")
            do {
                try FUSEConnection.abort(mountPoint: mountPoint)
            } catch {
                context.logger.error("could not abort the FUSE connection of \(mountPoint): \(error)")
            }
        }
    }
}

/// What every layer's `down` shares: the command runner, the step deadline
/// (`Deadlines.teardownStep`), and what the teardown learns on the way.
public struct TeardownContext: Sendable {
    public let runner: any CommandRunning
    /// The named deadline of each step (`Deadlines.teardownStep`).
    public let stepDeadline: Duration
    public let logger: Logger
    /// Writes to the image already failed while it was open (a run's
    /// write-out): its ext4 filesystem is shut down before the unmount.
    public let imageWritesFailed: Bool
    /// Close's own write-out before the unwind failed, and why: syncfs
    /// reports an error once, so the filesystem layer cannot ask again.
    public let writeOutFailure: String?
    /// Why the filesystem was shut down before its unmount, when it was:
    /// writes that did not reach the remote, for `close` to report.
    public let lostWrites = LostWrites()

    public init(
        runner: any CommandRunning, stepDeadline: Duration, logger: Logger, imageWritesFailed: Bool = false,
        writeOutFailure: String? = nil
    ) {
        self.runner = runner
        self.stepDeadline = stepDeadline
        self.logger = logger
        self.imageWritesFailed = imageWritesFailed
        self.writeOutFailure = writeOutFailure
    }

    /// Unmounts the FUSE filesystem at `mountPoint` (sshfs, the NBD bridge)
    /// if it is mounted; lazily when forced and a plain unmount fails.
    func unmountFUSE(_ mountPoint: String, force: Bool, what: String) async throws {
        guard let entry = MountTable.mount(at: mountPoint), entry.filesystemType.hasPrefix("fuse") else { return }
        var result = try await runner.run(Command("fusermount3", ["-u", mountPoint], timeout: stepDeadline))
        if result.succeeded || !MountTable.isMountPoint(mountPoint) { return }
        // The layers above are down, so what still waits on the daemon is a
        // call of ours that was abandoned at its deadline (a probe, a
        // measurement): it keeps the mount busy, and its thread would keep
        // this process from ever exiting (a FUSE request the daemon has
        // read ends only with an answer or an abort). Abort, then unmount.
        if let waiting = FUSEConnection.waitingRequests(mountPoint: mountPoint), waiting > 0 {
            logger.notice("\(what) left \(waiting) request(s) unanswered: aborting its FUSE connection")
            do {
                try FUSEConnection.abort(mountPoint: mountPoint)
            } catch {
                logger.error("could not abort the FUSE connection of \(mountPoint): \(error)")
            }
            result = try await runner.run(Command("fusermount3", ["-u", mountPoint], timeout: stepDeadline))
            if result.succeeded || !MountTable.isMountPoint(mountPoint) { return }
        }
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

    /// Waits up to `deadline` for the processes `find` returns to exit after
    /// their mount went away; stops (TERM, then KILL) those that do not.
    func stopLingering(_ what: String, within deadline: Duration, find: () -> [pid_t]) async throws {
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

    /// Stops `strays`: a FUSE process whose command was stopped while it
    /// connected (a stop signal, a kill) would mount after we looked.
    func stopStrays(_ strays: [pid_t], _ what: String) async {
        guard !strays.isEmpty else { return }
        logger.notice(
            "stopping \(what) (pid \(strays.map(String.init).joined(separator: ", "))) left by an interrupted command")
        await ProcessTable.terminate(strays, grace: .seconds(2))
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
