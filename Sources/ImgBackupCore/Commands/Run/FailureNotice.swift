import ImgBackupOS
import Logging

/// The `[notify] command`, run after every `run` that did not succeed,
/// whatever stopped it: the config, the key, the lock, the open, the copy
/// step, a hang or a stop signal. Post-hooks belong to a target that was
/// opened; this reaches someone also when nothing could be opened.
///
/// An argv, no shell. Its environment: IMGBACKUP_TARGET, IMGBACKUP_RESULT
/// (failure, hung, interrupted), IMGBACKUP_EXIT_STATUS and IMGBACKUP_ERROR
/// (the one line imgbackup printed). Its own failure is logged and changes
/// nothing about the run's exit status.
public struct FailureNotice: Sendable {
    public let command: [String]
    public let runner: any CommandRunning
    public let logger: Logger
    public let stopSignals: StopSignals

    /// A notice must not hold a stopping machine: the unit's TimeoutStopSec
    /// covers it beside the teardown.
    public static let limit: Duration = .seconds(60)

    public init(command: [String], runner: any CommandRunning, logger: Logger, stopSignals: StopSignals = .shared) {
        self.command = command
        self.runner = runner
        self.logger = logger
        self.stopSignals = stopSignals
    }

    /// The notice for one target's failed run (`target` is the name given,
    /// even when no such target is configured).
    public func send(target: String, error: ImgBackupError) async {
        let result = RunRecord.Result(failure: error, stoppedBy: stopSignals.received)
        let environment = [
            "IMGBACKUP_TARGET": target,
            "IMGBACKUP_RESULT": result.rawValue,
            "IMGBACKUP_EXIT_STATUS": String(error.code.exitStatus),
            "IMGBACKUP_ERROR": error.description.escapingControlCharacters,
        ]
        let command = Command(
            self.command[0], Array(self.command.dropFirst()), timeout: Self.limit, environment: environment)
        logger.info("notify: \(command.displayText)")
        // Uncancelled: after a stop signal the notice matters most.
        let runner = runner
        let outcome = await withUncancelledTask { () async -> String? in
            do {
                let result = try await runner.run(command)
                return result.succeeded ? nil : result.failureSummary
            } catch {
                return ImgBackupError.reason(of: error)
            }
        }
        if let outcome {
            logger.error("the notify command \(command.displayText) failed: \(outcome)")
        }
    }
}
