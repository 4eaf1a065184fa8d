import Foundation
import ImgBackupOS

/// The client-side lock of one target: an flock held for the duration of one
/// imgbackup command, so two commands never work on one target at once.
enum TargetLock {
    static func acquire(_ target: Target, paths: RuntimePaths) throws(ImgBackupError) -> FileLock {
        let path = paths.lockFile(target.name)
        do {
            try LocalFiles.makeDirectories(paths.runtimeDirectory)
            if let lock = try FileLock.tryAcquire(path: path) { return lock }
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "lock target '\(target.name)'")
        }
        throw ImgBackupError(
            .locked, "target '\(target.name)' is locked: another imgbackup command is working on it",
            hint: "wait for it to finish")
    }

    /// Before a target is brought up, by a caller that holds the target
    /// lock: nothing of it may be up. What a dead run (or init, trim,
    /// resize, key) left is torn down here, saying so in one line, and the
    /// caller goes on; a person's `open` (or a record of an operation this
    /// release does not know) is refused (exit 4) with its holder named.
    static func clearLeftovers(_ target: Target, environment: OperationEnvironment) async throws(ImgBackupError) {
        let store = environment.stateStore
        guard let record = try store.load(target: target.name) else { return }
        let alive = record.pid != getpid() && ProcessTable.isAlive(record.pid)
        let since = record.startedAt.formatted(.iso8601)
        if record.operation.isByHand {
            let mounted = record.layers.contains { if case .filesystem = $0 { return true } else { return false } }
            let command = record.operation == .openReadOnly ? "imgbackup open --read-only" : "imgbackup open"
            throw ImgBackupError(
                .alreadyOpen,
                mounted
                    ? "target '\(target.name)' is already open\(record.operation == .openReadOnly ? " read-only" : "") at \(target.mountPoint) (opened by '\(command)', pid \(record.pid), at \(since))"
                    : "target '\(target.name)' has layers left over from an '\(command)' (pid \(record.pid)\(alive ? ", still running" : ", no longer running"), at \(since)) that did not finish",
                hint: "run 'imgbackup close \(target.name)' first")
        }
        // The caller holds the target lock, which such a command holds for
        // its whole life: its process is gone, whatever the pid shows now.
        guard record.operation.isUnattended else {
            throw ImgBackupError(
                .alreadyOpen,
                "target '\(target.name)' has layers of an '\(record.operation)' (pid \(record.pid), at \(since))",
                hint: "run 'imgbackup close \(target.name)' to clean up")
        }
        environment.logger.notice(
            "finishing the teardown of an interrupted '\(record.operation)' of '\(target.name)' (pid \(record.pid), started \(since)), then going on"
        )
        let name = target.name
        var failure: ImgBackupError?
        if case .failure(let error) = await CloseOperation(target: target, environment: environment)
            .tearDownUncancelled()
        {
            // A run that died on a frozen transport left mounts a plain
            // close cannot take down in time: force, as after a hang.
            environment.logger.notice(
                "the leftovers of '\(name)' did not come down cleanly (\(error.message)): forcing")
            if case .failure(let forced) = await CloseOperation(target: target, environment: environment, force: true)
                .tearDownUncancelled()
            {
                failure = forced
            }
        }
        if let failure {
            throw ImgBackupError(
                failure.code,
                "failed to clean up after the interrupted '\(record.operation)' of '\(name)': \(failure.message)",
                hint: failure.hint)
        }
    }
}

#if canImport(Glibc)
    import Glibc
#endif
