import Foundation

/// A scratch directory for a server's socket, removed at deinit.
final class ScratchDirectory {
    let path = NSTemporaryDirectory() + "imgbackup-nbd-test.\(UUID().uuidString)"

    init() { try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}
