import Foundation
import ImgBackupOS

/// The mounted image for a command that only reads it (`list`, `restore`):
/// the mount of an `open` the user already made, or else a read-only open
/// for the command's length, closed again afterwards whatever happened.
/// The command's work runs under the hang watchdog, as a run's copy does.
struct ReadOnlySession {
    let target: Target
    let environment: OperationEnvironment
    /// For the hang message: "the restore".
    let step: String
    /// `check` reads a target without a [copy] table too (the filesystem
    /// and its files; no backup points): as one whose command keeps its own.
    var withoutCopyTable: Target.Copy? = nil

    func run<T: Sendable>(_ body: @escaping @Sendable (CopyContext) async throws(ImgBackupError) -> T)
        async throws(ImgBackupError) -> T
    {
        guard let copy = target.copy ?? withoutCopyTable else {
            throw ImgBackupError(
                .config, "target '\(target.name)' has no [target.\(target.name).copy] table: it keeps no backup points",
                hint: "'imgbackup open --read-only \(target.name)' mounts the image without changing it")
        }
        let lock = try TargetLock.acquire(target, paths: environment.paths)
        defer { withExtendedLifetime(lock) {} }
        if let record = try environment.stateStore.load(target: target.name), record.operation.isByHand,
            FilesystemLayer.isUp(mountPoint: target.mountPoint)
        {
            environment.logger.info("reading target '\(target.name)' where it is open, at \(target.mountPoint)")
            return try await guarded(copy, body).get()
        }
        let mountPoint = try await openReadOnly()
        let result = await guarded(copy, body, mountPoint: mountPoint)
        // After a hang the transport is gone: close at once, with force.
        var hung = false
        if case .failure(let error) = result, error.code == .hung { hung = true }
        let closed = await CloseOperation(target: target, environment: environment, force: hung).tearDownUncancelled()
        let value = try result.get()
        if case .failure(let error) = closed { throw error }
        return value
    }

    /// The key is released when this returns, before the command's work.
    private func openReadOnly() async throws(ImgBackupError) -> String {
        let key = try await environment.key(for: target)
        return try await OpenOperation(target: target, environment: environment, readOnly: true)
            .bringUp(key: key, operation: .openReadOnly)
    }

    private func guarded<T: Sendable>(
        _ copy: Target.Copy, _ body: @escaping @Sendable (CopyContext) async throws(ImgBackupError) -> T,
        mountPoint: String? = nil
    ) async -> Result<T, ImgBackupError> {
        let heartbeat = OutputHeartbeat()
        let context = CopyContext(
            target: target, copy: copy, mountPoint: mountPoint ?? target.mountPoint, now: Date(),
            environment: environment, heartbeat: heartbeat)
        var hangGuard = HangGuard(target: target, environment: environment, heartbeat: heartbeat)
        hangGuard.step = step
        switch await hangGuard.run({ () async throws(ImgBackupError) -> T in try await body(context) }) {
        case .finished(let result): return result
        case .hung(let error, _): return .failure(error)
        }
    }
}
