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

    /// Refuses to bring a target up while a state record says layers of it
    /// are (or may still be) up.
    static func requireClosed(_ target: Target, store: StateStore) throws(ImgBackupError) {
        guard let record = try store.load(target: target.name) else { return }
        let alive = kill(record.pid, 0) == 0 && record.pid != getpid()
        let mounted = record.layers.contains { if case .filesystem = $0 { return true } else { return false } }
        if mounted && record.operation == "open" {
            throw ImgBackupError(
                .alreadyOpen, "target '\(target.name)' is already open at \(target.mountPoint)",
                hint: "run 'imgbackup close \(target.name)' first")
        }
        throw ImgBackupError(
            .alreadyOpen,
            "target '\(target.name)' has layers left over from an '\(record.operation)' (pid \(record.pid)\(alive ? ", still running" : ", no longer running")) that did not finish",
            hint: "run 'imgbackup close \(target.name)' to clean up")
    }
}

#if canImport(Glibc)
import Glibc
#endif
