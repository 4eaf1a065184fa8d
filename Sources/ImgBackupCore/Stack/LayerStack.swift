import ImgBackupOS
import Logging

/// Thrown by a layer's `up` that found its place taken (a dm-crypt mapping
/// of that name exists) and made nothing: the stack forgets its intent, so
/// no unwind takes down what another session owns.
public struct LayerNotMade: Error {
    public let error: ImgBackupError
    public init(_ error: ImgBackupError) { self.error = error }
}

/// A layer that did not come down, and why.
public struct TeardownFailure: Sendable {
    /// Nil when the state record itself could not be written.
    public let layer: LayerRecord?
    public let error: ImgBackupError
}

/// The result of unwinding: layers still up (their records were kept) and the
/// failures in the order they happened. The first failure is the one to report.
public struct UnwindReport: Sendable {
    public var failures: [TeardownFailure] = []
    public var remaining: [LayerRecord] = []
    /// The step that did not finish in time, when one did not: the
    /// transports were then cut off and the rest of the unwind was forced.
    /// The layers may all be down, but writes may not have reached the remote.
    public var stuck: DeadlineExceeded?
    public var succeeded: Bool { failures.isEmpty }
    public var firstFailure: TeardownFailure? { failures.first }
}

/// The stack of layers of one target. Teardown is data: every layer pushed
/// is recorded (and persisted through the journal) before it comes up;
/// unwinding takes them down in reverse, carries on past a failure, and
/// keeps the record of whatever did not come down.
public actor LayerStack {
    public private(set) var records: [LayerRecord]
    private let journal: any StateJournal
    private let teardown: any LayerTeardown
    private let logger: Logger

    public init(
        records: [LayerRecord] = [], journal: any StateJournal, teardown: any LayerTeardown, logger: Logger
    ) {
        self.records = records
        self.journal = journal
        self.teardown = teardown
        self.logger = logger
    }

    /// Records `layer`'s intent, brings it up, records the result. When `up`
    /// throws, the intent stays on the stack: the layer may be half up, and
    /// its (idempotent) `down` will run when the stack unwinds. Unless `up`
    /// says it made nothing because the place is someone else's
    /// (``LayerNotMade``): its `down` would take down what is not ours.
    public func push(_ layer: any Layer) async throws {
        records.append(layer.intent)
        try journal.save(records)
        logger.debug("up: \(layer.intent)")
        let upRecord: LayerRecord
        do {
            upRecord = try await layer.up()
        } catch let notMade as LayerNotMade {
            records.removeLast()
            try journal.save(records)
            throw notMade.error
        }
        records[records.count - 1] = upRecord
        try journal.save(records)
    }

    /// Takes layers down, newest first, until `remaining` are left. A failure
    /// does not stop the unwinding; the failed layer's record is kept. Runs
    /// uncancelled: a stop signal that cancelled the work never cuts the
    /// teardown short.
    @discardableResult
    public func unwind(keeping remaining: Int = 0, force: Bool = false) async -> UnwindReport {
        await withUncancelledTask { await self.unwindNow(keeping: remaining, force: force) }
    }

    private func unwindNow(keeping remaining: Int, force: Bool) async -> UnwindReport {
        var report = UnwindReport()
        var kept: [LayerRecord] = []
        var force = force
        while records.count > remaining {
            let record = records.removeLast()
            var failure = await takeDown(record, force: force)
            if let error = failure, !force, let stuck = Self.stuckStep(error) {
                // A remote that stopped answering never will: cut it off, so
                // what blocks on it fails now, and force the rest.
                logger.notice(
                    "\(stuck): the remote stopped answering; cutting off its transport and forcing the rest of the teardown"
                )
                report.stuck = stuck
                await teardown.cutOff(records + [record])
                force = true
                failure = await takeDown(record, force: true)
            }
            if let failure {
                report.failures.append(
                    TeardownFailure(
                        layer: record,
                        error: .wrapping(failure, .invalidState, failedTo: "take down the \(record)")))
                kept.insert(record, at: 0)
            }
            // What is still (or may still be) up, after each step: `status`
            // sees the close progress, and a kill mid-close leaves a record
            // of only what is left. The final save below reports a failure.
            if records.count > remaining { try? journal.save(records + kept) }
        }
        records.append(contentsOf: kept)
        report.remaining = records
        do {
            if records.isEmpty { try journal.clear() } else { try journal.save(records) }
        } catch {
            report.failures.append(
                TeardownFailure(layer: nil, error: .wrapping(error, .system, failedTo: "update the state record")))
        }
        return report
    }

    /// Takes one layer down; the error when it did not come down.
    private func takeDown(_ record: LayerRecord, force: Bool) async -> (any Error)? {
        do {
            logger.debug("down: \(record)\(force ? " (forced)" : "")")
            try await teardown.down(record, force: force)
            return nil
        } catch {
            logger.debug("down failed: \(record): \(error)")
            return error
        }
    }

    /// The deadline a step ran out of, however deep in the error it is.
    static func stuckStep(_ error: any Error) -> DeadlineExceeded? {
        if let exceeded = error as? DeadlineExceeded { return exceeded }
        if let wrapped = error as? ImgBackupError, let cause = wrapped.cause { return stuckStep(cause) }
        return nil
    }

    public var depth: Int { records.count }
}
