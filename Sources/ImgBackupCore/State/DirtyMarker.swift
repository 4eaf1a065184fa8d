import Foundation
import ImgBackupOS

/// The dirty marker of one target (`RuntimePaths.dirtyMarker`): `open` sets
/// it before mounting; only a `close` that went down cleanly, without force,
/// removes it. While it is there the next open checks the filesystem
/// (FilesystemCheck).
struct DirtyMarker {
    let paths: RuntimePaths
    let target: String

    var path: String { paths.dirtyMarker(target) }
    var isSet: Bool { FileManager.default.fileExists(atPath: path) }
    /// Who set it and when ("run pid 42 at 2026-...").
    var setBy: String? { LocalFiles.contents(path)?.trimmingCharacters(in: .whitespacesAndNewlines) }

    func set(by operation: StateRecord.Operation) throws(ImgBackupError) {
        do {
            try LocalFiles.makeDirectories(paths.targetStateDirectory(target))
            let stamp = ISO8601DateFormatter().string(from: Date())
            try LocalFiles.writeAtomically(path, "\(operation) pid \(getpid()) at \(stamp)\n")
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "set the dirty marker of \(target)")
        }
    }

    func clear() { _ = unlink(path) }
}

#if canImport(Glibc)
    import Glibc
#endif
