import Foundation
import ImgBackupOS

/// The token of the remote lock this machine last took for a target
/// (`RuntimePaths.remoteLockTokenFile`): how the next open knows a lock it
/// finds is this machine's own, left by a teardown that could not reach the
/// remote.
struct RemoteLockToken {
    let paths: RuntimePaths
    let target: String

    var recorded: String? {
        LocalFiles.contents(paths.remoteLockTokenFile(target))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func record(_ token: String) throws(ImgBackupError) {
        do {
            try LocalFiles.makeDirectories(paths.targetStateDirectory(target))
            try LocalFiles.writeAtomically(paths.remoteLockTokenFile(target), token + "\n")
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "record the remote lock of \(target)")
        }
    }
}
