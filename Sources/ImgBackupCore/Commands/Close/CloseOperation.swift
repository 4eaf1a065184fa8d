import ImgBackupOS
import Logging
import Synchronization

/// `imgbackup close`: unwinds the target's stack in reverse. Works from the
/// state record alone, so it also finishes the job of a crashed command; with
/// no record it still checks every place a layer of this target could be
/// (every `down` is idempotent), so closing a closed target is a quiet success.
public struct CloseOperation: Sendable {
    public let target: Target
    public let environment: OperationEnvironment
    public let force: Bool
    /// Writes to the image failed while it was open (a run's write-out):
    /// keep the dirty marker, so the next open checks the filesystem.
    var imageWritesFailed = false

    public enum Outcome: Sendable, Equatable {
        case closed(layers: Int)
        case wasNotOpen
    }

    public init(target: Target, environment: OperationEnvironment, force: Bool = false) {
        self.target = target
        self.environment = environment
        self.force = force
    }

    /// A `run` killed mid-copy leaves its copy step running (in its own
    /// process group) with files open in the image. When the command that
    /// owned the stack is gone, stop whatever still uses the mount, and wait
    /// until it has gone: only an unattended command's mount, never one a
    /// person opened and may be working in.
    private func stopOrphanedCopyStep(_ record: StateRecord) async {
        guard record.operation.isUnattended, record.pid != getpid(),
            !ProcessTable.isAlive(record.pid), MountTable.isMountPoint(target.mountPoint)
        else { return }
        let users = ProcessTable.processes(using: target.mountPoint)
        guard !users.isEmpty else { return }
        environment.logger.notice(
            "stopping what the interrupted \(record.operation) (pid \(record.pid)) left using \(target.mountPoint): pid \(users.map(String.init).joined(separator: ", "))"
        )
        let deadlines = Deadlines(target)
        let left = await ProcessTable.stopAll(
            using: target.mountPoint, grace: deadlines.orphanGrace, deadline: deadlines.orphanStop)
        if !left.isEmpty {
            environment.logger.notice(
                "pid \(left.map(String.init).joined(separator: ", ")) still use\(left.count == 1 ? "s" : "") \(target.mountPoint) after \(deadlines.orphanStop.secondsText) (stuck on the remote?)"
            )
        }
    }

    /// Closing is all teardown: a stop signal (a second Ctrl-C) never cuts it short.
    public func run() async throws(ImgBackupError) -> Outcome {
        let lock = try TargetLock.acquire(target, paths: environment.paths)
        defer { withExtendedLifetime(lock) {} }
        return try await tearDownUncancelled().get()
    }

    /// ``tearDown()`` in a task no cancellation reaches: how every caller
    /// that may have been stopped by a signal (close, a run, the clearing
    /// of a dead run's leftovers) takes a target down.
    func tearDownUncancelled() async -> Result<Outcome, ImgBackupError> {
        let close = self
        return await withUncancelledTask { () async -> Result<Outcome, ImgBackupError> in
            do {
                return .success(try await close.tearDown())
            } catch {
                return .failure(
                    ImgBackupError.wrapping(error, .invalidState, failedTo: "close target '\(close.target.name)'"))
            }
        }
    }

    /// What writing the image out before the unwind found.
    private enum WriteOutResult {
        case notNeeded
        case wroteOut
        /// syncfs reported a failed write-back: why, as the filesystem
        /// layer reports it. syncfs tells each error once per superblock
        /// to a newly opened descriptor: asking again would hear nothing.
        case failed(String)
        /// The remote stopped answering; its transport was cut off.
        case hung(ImgBackupError)

        var hang: ImgBackupError? {
            if case .hung(let error) = self { return error }
            return nil
        }
        var failure: String? {
            if case .failed(let reason) = self { return reason }
            return nil
        }
    }

    /// Writes what is still in the page cache out to the remote before the
    /// stack goes down: after a person's session that can be gigabytes,
    /// hours over a slow link. Guarded as a run's copy is: it may take as
    /// long as bytes move or the remote answers; a remote that stops
    /// answering is a hang.
    private func writeOutGuarded(_ record: StateRecord?) async -> WriteOutResult {
        let mountPoint = target.mountPoint
        guard !force, !imageWritesFailed,
            record?.layers.contains(where: { $0.layerName == FilesystemLayer.kind }) == true,
            FilesystemLayer.isUp(mountPoint: mountPoint)
        else { return .notNeeded }
        let failure = Mutex<String?>(nil)
        let outcome = await HangGuard(target: target, environment: environment, step: "writing the image out").run {
            () async throws(ImgBackupError) in
            do {
                try await Mounts.sync(mountPoint, deadline: WriteOut.limit)
            } catch let error as SystemCallError {
                failure.withLock { $0 = "the last write-out failed (\(error))" }
            } catch {
                throw ImgBackupError.wrapping(error, .system, failedTo: "write the image out")
            }
        }
        if case .hung(let error, _) = outcome { return .hung(error) }
        return failure.withLock { $0 }.map(WriteOutResult.failed) ?? .wroteOut
    }

    /// The stack going down, for a caller that holds the target lock (`run`).
    func tearDown() async throws(ImgBackupError) -> Outcome {
        let store = environment.stateStore
        let record = try store.load(target: target.name)
        if let record { await stopOrphanedCopyStep(record) }
        // A failed write-out is the filesystem layer's to report: it shuts
        // the filesystem down before unmounting it.
        let writeOut = await writeOutGuarded(record)
        let hang = writeOut.hang
        let force = self.force || hang != nil
        let layers = record?.layers ?? target.possibleLayers(environment.paths)
        let context = TeardownContext(
            runner: environment.runner, stepDeadline: Deadlines(target).teardownStep, logger: environment.logger,
            imageWritesFailed: imageWritesFailed, writeOutFailure: writeOut.failure)
        let stack = LayerStack(
            records: layers,
            journal: store.journal(for: target.name, operation: record?.operation ?? .close),
            teardown: environment.layerTeardown(context),
            logger: environment.logger)
        let report = await stack.unwind(force: force)
        if let failure = report.firstFailure {
            let left = report.remaining.map(\.layerName).joined(separator: ", ")
            throw ImgBackupError(
                failure.error.code,
                "failed to close target '\(target.name)': \(failure.error.message); still up: \(left)",
                hint: failure.error.hint ?? "run 'imgbackup close \(target.name)' again")
        }
        // A forced close may have cut the filesystem off mid-write, and a
        // failed write-out may have lost writes: leave the dirty marker, and
        // the next open checks it.
        // Closing what was not open says nothing about the filesystem, nor
        // does closing a read-only open (it neither set the marker nor
        // checked the filesystem the marker asks to be checked).
        let lost = context.lostWrites.reason
        if !force && !imageWritesFailed && lost == nil && report.stuck == nil && record != nil
            && record?.operation != .openReadOnly
        {
            DirtyMarker(paths: environment.paths, target: target.name).clear()
        }
        if let hang { throw hang }
        if let stuck = report.stuck {
            throw ImgBackupError(
                .hung,
                "closed target '\(target.name)', but its remote stopped answering: \(stuck), so its transport was cut off and the last writes may not have reached it",
                hint: "check the remote; the next open replays the filesystem's journal and checks it")
        }
        // Whoever wrote into a hand-opened image learns here that it did not
        // all land; a run and a forced close already report their failure.
        if let lost, !force && !imageWritesFailed {
            throw ImgBackupError(
                .system, "closed target '\(target.name)', but not everything written to it reached the remote: \(lost)",
                hint:
                    "if the remote is full, free space there; the next open replays the filesystem's journal and checks it; the last writes may be lost"
            )
        }
        return record == nil ? .wasNotOpen : .closed(layers: layers.count)
    }
}

#if canImport(Glibc)
    import Glibc
#endif
