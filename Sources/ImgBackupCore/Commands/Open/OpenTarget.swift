import ImgBackupOS
import Logging

/// What the body of ``OpenOperation/withOpenTarget(key:operation:sources:_:)``
/// holds, and what it tells the close that follows it.
final class OpenSession: Sendable {
    let mountPoint: String
    /// The transport stopped answering: close with force, at once.
    let hung = Latch()
    /// Writes to the image failed on their way to the remote: the dirty
    /// marker stays, and the next open checks the filesystem.
    let imageWritesFailed = Latch()

    init(mountPoint: String) { self.mountPoint = mountPoint }
}

/// How a body held open ended, with the close after it.
struct HeldOutcome<T: Sendable>: Sendable {
    var value: T?
    /// The first failure: the body's, else the close's. A stop signal makes
    /// it an interrupt (exit 9), unless the close left something up (exit 8).
    var failure: ImgBackupError?
    /// The stop signal that cut the body or the close short, if one did.
    var interruptedBy: Int32?
}

extension OpenOperation {
    /// Loads the key, takes the target lock, brings the target up, runs
    /// `body` with it open, and always closes it: the one place that owns
    /// an open target's lifetime (`run`, `trim`, and `resize` of a closed
    /// target). The key is dropped (and wiped) once the mapping is up; the
    /// lock is held until the close is done. A caller that holds the lock
    /// already passes `takeLock: false`.
    ///
    /// A stop signal cancels the bring-up or the body; the close then runs
    /// in a task no signal can cancel, and a second signal does not cut it
    /// short. Throws only when the target never came up (after unwinding
    /// what did); everything after that is in the outcome.
    func withOpenTarget<T: Sendable>(
        operation: StateRecord.Operation, sources: Target.Copy? = nil, takeLock: Bool = true,
        key loadKey: () async throws(ImgBackupError) -> SecureBytes,
        _ body: (OpenSession) async throws(ImgBackupError) -> T
    ) async throws(ImgBackupError) -> HeldOutcome<T> {
        // A closure of its own, so the key's last reference goes before the body runs.
        let (lock, session) = try await { () async throws(ImgBackupError) -> (FileLock?, OpenSession) in
            let key = try await loadKey()
            let lock = takeLock ? try TargetLock.acquire(target, paths: environment.paths) : nil
            return (lock, OpenSession(mountPoint: try await bringUp(key: key, operation: operation, sources: sources)))
        }()
        defer { withExtendedLifetime(lock) {} }
        var outcome = HeldOutcome<T>()
        do {
            outcome.value = try await body(session)
        } catch {
            outcome.failure = error
        }
        var close = CloseOperation(target: target, environment: environment, force: session.hung.isSet)
        close.imageWritesFailed = session.imageWritesFailed.isSet
        let closeFailure: ImgBackupError? =
            if case .failure(let error) = await close.tearDownUncancelled() { error } else { nil }
        // A signal that came after the work was done and closed cut nothing short.
        if let signal = environment.stopSignals.received, outcome.failure != nil || closeFailure != nil {
            outcome.interruptedBy = signal
            if let cause = outcome.failure, cause.code != .interrupted {
                environment.logger.info("the \(operation) stopped: \(cause.description)")
            }
            outcome.failure =
                closeFailure.map { error in
                    ImgBackupError(
                        error.code, "interrupted by \(StopSignals.name(of: signal)), and \(error.message)",
                        hint: error.hint, cause: error)
                } ?? .interrupted(by: signal, "the \(operation) of '\(target.name)' stopped and the target was closed")
        } else if let closeFailure {
            if outcome.failure != nil {
                // The first error decides the exit status; the second must not vanish.
                environment.logger.error("\(closeFailure.description)")
            } else {
                outcome.failure = closeFailure
            }
        }
        return outcome
    }
}
