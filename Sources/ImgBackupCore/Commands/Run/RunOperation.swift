import Foundation
import ImgBackupOS
import Logging

/// `imgbackup run`: the whole cycle under the target lock: open (transport
/// from config), pre-hooks, the copy step, retention, post-hooks, and close,
/// which happens however the middle went. Each run is recorded in the
/// target's run history, failed ones too.
public struct RunOperation: Sendable {
    public let target: Target
    public let environment: OperationEnvironment
    /// The run's time: names the backup point and drives retention. Tests
    /// inject one to simulate weeks of runs in minutes.
    public let now: Date

    /// Take the remote lock even if someone else's lock file is there.
    public var breakLock = false

    public init(target: Target, environment: OperationEnvironment, now: Date = Date(), breakLock: Bool = false) {
        self.breakLock = breakLock
        self.target = target
        self.environment = environment
        self.now = now
    }

    public struct Report: Sendable {
        public let record: RunRecord
    }

    /// Runs the cycle; on failure throws the first error, after closing and
    /// recording. The record is in the history either way.
    public func run() async throws(ImgBackupError) -> Report {
        guard let copy = target.copy else {
            throw ImgBackupError(
                .config, "target '\(target.name)' has no [target.\(target.name).copy] table: nothing to run",
                hint: "add one with method = \"rsync\", \"borg\", \"btrfs-send\" or \"command\"")
        }
        let history = RunHistory(paths: environment.paths)
        var record = RunRecord(target: target.name, start: Date())
        record.method = copy.method.rawValue
        let failure: ImgBackupError?
        do {
            let outcome = try await cycle(copy)
            record.point = outcome.copy.point
            record.bytesCopied = outcome.copy.bytesCopied
            record.incremental = outcome.copy.incremental
            record.pruned = outcome.pruned
            record.bytesWritten = outcome.bytesWritten
            record.wireBytesSent = outcome.wire?.sent
            record.wireBytesReceived = outcome.wire?.received
            failure = outcome.failure
        } catch {
            failure = error
        }
        record.end = Date()
        record.result = RunRecord.Result(failure: failure, stoppedBy: environment.stopSignals.received)
        record.exitCode = failure?.code.exitStatus ?? 0
        record.error = failure?.description
        do {
            try history.append(record)
        } catch {
            // The run's own outcome matters more than its record.
            environment.logger.error("\(error.description)")
        }
        if let directory = environment.metricsDirectory {
            do {
                try RunMetrics(directory: directory).write(
                    record, history: history, image: ImageMeasurement(paths: environment.paths).last(target.name))
            } catch {
                environment.logger.error("\(error.description)")
            }
        }
        if let failure { throw failure }
        return Report(record: record)
    }

    /// How a run names itself in the state record.

    private struct Outcome: Sendable {
        var copy = CopyOutcome()
        var pruned: [String]?
        var bytesWritten: UInt64?
        var wire: TCPConnections.Traffic?
        var failure: ImgBackupError?
        /// The image's transport stopped answering.
        var hung = false
    }

    /// Lock, open, the middle, close. Throws what stopped it before the
    /// image was open; a failure after that is in the outcome, and the
    /// stack is closed either way (``OpenOperation/withOpenTarget``).
    private func cycle(_ copy: Target.Copy) async throws(ImgBackupError) -> Outcome {
        let open = OpenOperation(target: target, environment: environment, breakLock: breakLock)
        // The key lives only until the mapping is up: nothing holds it
        // during the copy step, so its pages are wiped (SecureBytes) before
        // any copy tool runs.
        let held = try await open.withOpenTarget(
            operation: .run, sources: copy,
            key: { () async throws(ImgBackupError) in try await environment.key(for: target) }
        ) { session in
            await middle(session, copy: copy)
        }

        // The body keeps its own failure in the outcome; the held one is the close's.
        var outcome = held.value ?? Outcome()
        if let signal = environment.stopSignals.received, outcome.failure != nil || held.failure != nil {
            // How the stopped copy step failed is detail; the stop is the news.
            if let cause = outcome.failure, cause.code != .interrupted {
                environment.logger.info("the run stopped: \(cause.description)")
            }
            outcome.failure =
                held.failure
                ?? .interrupted(by: signal, "the run of '\(target.name)' stopped and the target was closed")
        } else if let later = held.failure {
            if outcome.failure != nil {
                // Keep the first error for the exit status; the second must not vanish.
                environment.logger.error("\(later.description)")
            } else {
                outcome.failure = later
            }
        }
        if outcome.hung {
            // After a hang the image is gone from under the hooks; they still
            // run (a stopped service must start again), told what happened.
            outcome = await withUncancelledTask { [outcome] in
                var hooked = outcome
                await runPostHooks(mountPoint: target.mountPoint, outcome: &hooked)
                return hooked
            }
        }
        return outcome
    }

    /// The copy step under the hang watchdog, then (unless the transport
    /// hung) the post-hooks and a measurement, with the target open.
    private func middle(_ session: OpenSession, copy: Target.Copy) async -> Outcome {
        let mountPoint = session.mountPoint
        var outcome = Outcome()
        let device = "/dev/mapper/\(target.mappingName)"
        let before = BlockDeviceStats.read(devicePath: device)
        let heartbeat = OutputHeartbeat()
        // Opened before the copy writes anything, so every failed write-back of the run is reported.
        let writeOut = WriteOut(mountPoint: mountPoint)
        let context = CopyContext(
            target: target, copy: copy, mountPoint: mountPoint, now: now, environment: environment,
            heartbeat: heartbeat,
            writeOut: writeOut)
        var guarded = HangGuard(target: target, environment: environment, heartbeat: heartbeat)
        guarded.sources = copy.sourceHosts
        let wire = WireTraffic(target: target, paths: environment.paths, sources: copy.sourceHosts)
        let sampling = wire.sampling()

        let progress = JournalProgress.start(
            "run of '\(target.name)'", device: device, heartbeat: heartbeat, environment: environment)
        switch await guarded.run({ () async throws(ImgBackupError) -> Middle in
            try await copyAndPrune(context, copy: copy, writeOut: writeOut)
        }) {
        case .finished(.success(let middle)):
            outcome.copy = middle.copy
            outcome.pruned = middle.pruned
        case .finished(.failure(let error)):
            outcome.failure =
                writeOut.failed.isSet
                ? await RemoteFreeSpace(target: target, environment: environment).explain(error) : error
        case .hung(let error, let probe):
            // A frozen source host leaves the image and its transport whole:
            // its mount was aborted, the rest closes as after any failure.
            outcome.hung = !probe.isSource
            outcome.failure = error
        }
        progress.stop()
        sampling.cancel()
        await sampling.value
        // After the write-out: what the run moved, short of the teardown's last words.
        wire.sample()
        outcome.wire = wire.total
        if outcome.hung { session.hung.set() }
        if writeOut.failed.isSet { session.imageWritesFailed.set() }
        // Bytes that reached the image, whatever the tool says.
        if let before, let after = BlockDeviceStats.read(devicePath: device), after.bytesWritten >= before.bytesWritten
        {
            outcome.bytesWritten = after.bytesWritten - before.bytesWritten
        }
        if !outcome.hung {
            // Uncancelled: a service a pre-hook stopped starts again after a stop signal too.
            let hooked = await withUncancelledTask { [outcome] in
                var hooked = outcome
                await runPostHooks(mountPoint: mountPoint, outcome: &hooked)
                await measureImage()
                return hooked
            }
            outcome = hooked
        }
        writeOut.release()  // its descriptor would keep the mount busy
        return outcome
    }

    /// The image's sizes while the transport is still up, for `status` and
    /// the metrics once the target is closed. Best effort, bounded.
    private func measureImage() async {
        let layers = (try? environment.stateStore.load(target: target.name))??.layers ?? []
        if let measured = await ImageMeasurement.live(layers, target: target, paths: environment.paths, source: .run) {
            try? ImageMeasurement(paths: environment.paths).record(target.name, measured)
        }
    }

    private struct Middle: Sendable {
        var copy: CopyOutcome
        var pruned: [String]?
    }

    /// Pre-hooks, the copy, retention, and the flush to the remote. The
    /// flush also follows a failed copy: what the copy left in the page
    /// cache goes out now, under the watchdog, so lost writes are known
    /// (and the next open checks the filesystem) instead of dropped at close.
    private func copyAndPrune(
        _ context: CopyContext, copy: Target.Copy, writeOut: WriteOut
    ) async throws(ImgBackupError) -> Middle {
        let mountPoint = context.mountPoint
        let middle: Middle
        do {
            try await runHooks(target.hooks.pre, kind: "pre-hook", mountPoint: mountPoint, result: nil)
            var copied = Middle(copy: try await CopyMethods.make(copy.method).copy(context))
            if let policy = RetentionPolicy(target.retention) {
                let pruned = try await CopyMethods.make(copy.method).prune(context, policy: policy)
                copied.pruned = pruned
                if !pruned.isEmpty { environment.logger.info("retention pruned \(pruned.joined(separator: ", "))") }
            }
            middle = copied
        } catch {
            // What a failed copy left goes out too; a failed write-out is remembered in writeOut.
            try? await writeOut.flush()
            throw error
        }
        // What the copy wrote reaches the remote before the run counts as
        // done, and before the bytes are counted.
        try await writeOut.flush()
        return middle
    }

    private func runPostHooks(mountPoint: String, outcome: inout Outcome) async {
        let result = RunRecord.Result(failure: outcome.failure, stoppedBy: environment.stopSignals.received)
        do {
            try await runHooks(target.hooks.post, kind: "post-hook", mountPoint: mountPoint, result: result)
        } catch {
            outcome.failure = outcome.failure ?? error
        }
    }

    /// How long a post-hook may take once a stop signal came: the unit's
    /// TimeoutStopSec (5 min) must cover it and the whole teardown.
    static let postHookLimitWhenStopping: Duration = .seconds(60)

    /// Hooks run in order as argv (no shell), with IMGBACKUP_TARGET,
    /// IMGBACKUP_MOUNT and, for post-hooks, IMGBACKUP_RESULT. A failing
    /// pre-hook stops the run before the copy; a failing post-hook fails it.
    private func runHooks(_ hooks: [[String]], kind: String, mountPoint: String, result: RunRecord.Result?)
        async throws(ImgBackupError)
    {
        var environment = CommandCopy.environment(mount: mountPoint, target: target.name)
        if let result { environment["IMGBACKUP_RESULT"] = result.rawValue }
        let limit =
            self.environment.stopSignals.received == nil
            ? CopyContext.housekeepingLimit : Self.postHookLimitWhenStopping
        for hook in hooks {
            let command = Command(hook[0], Array(hook.dropFirst()), timeout: limit, environment: environment)
            self.environment.logger.info("\(kind): \(command.displayText)")
            let outcome: CommandResult
            do {
                outcome = try await self.environment.runner.run(command)
            } catch {
                throw ImgBackupError.wrapping(error, .copyFailed, failedTo: "run the \(kind) \(hook[0])")
            }
            guard outcome.succeeded else {
                throw ImgBackupError(
                    .copyFailed, "the \(kind) \(command.displayText) failed: \(outcome.failureSummary)")
            }
        }
    }
}
