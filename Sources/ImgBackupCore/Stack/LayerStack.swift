import ImgBackupOS
import Logging

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
    /// its (idempotent) `down` will run when the stack unwinds.
    public func push(_ layer: any Layer) async throws {
        records.append(layer.intent)
        try journal.save(records)
        logger.debug("up: \(layer.intent)")
        let upRecord = try await layer.up()
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
        while records.count > remaining {
            let record = records.removeLast()
            do {
                logger.debug("down: \(record)")
                try await teardown.down(record, force: force)
            } catch {
                logger.debug("down failed: \(record): \(error)")
                report.failures.append(
                    TeardownFailure(
                        layer: record,
                        error: .wrapping(error, .invalidState, failedTo: "take down the \(record)")))
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

    public var depth: Int { records.count }
}
