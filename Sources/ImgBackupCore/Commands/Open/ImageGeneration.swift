import ImgBackupOS
import Logging

/// Rollback detection: a counter kept both inside the encrypted filesystem
/// and on the client. Every open checks that the image's counter is not
/// behind this machine's, then advances both: first the image (synced to
/// the remote), then the local record. A host that serves a copy of the
/// image from before the last open that succeeded here (yesterday's, or
/// last month's) shows a counter behind the local one and is refused.
///
/// The host cannot forge the counter: it lives in the filesystem, under
/// dm-crypt. It can only serve an older copy, which is what is detected.
struct ImageGeneration {
    let paths: RuntimePaths
    let target: Target
    let logger: Logger

    /// In the filesystem's root, beside what the copy method keeps.
    static let fileName = ".imgbackup-generation"

    var localRecord: String { paths.generationFile(target.name) }
    var imageRecord: String { "\(target.mountPoint)/\(Self.fileName)" }

    /// Checks the mounted image against this machine's record, then moves
    /// both on by one. `acceptRollback` takes an older image as the new
    /// truth (after restoring an older copy on purpose). `readOnly` checks
    /// only: a read-only open changes neither.
    func checkAndAdvance(acceptRollback: Bool, readOnly: Bool = false, deadline: Duration) async throws(ImgBackupError)
    {
        let local = Self.parse(LocalFiles.contents(localRecord))
        let imageText = LocalFiles.contents(imageRecord)
        let image = Self.parse(imageText)
        if imageText != nil, image == nil, !acceptRollback {
            throw ImgBackupError(
                .luks,
                "refusing to use the image of '\(target.name)': its generation marker (\(Self.fileName)) is unreadable",
                hint: "the image was damaged or tampered with; check it, and if it is what you expect, "
                    + "open it once with 'imgbackup open \(target.name) --accept-rollback'")
        }
        if let local, (image ?? 0) < local, !acceptRollback {
            throw ImgBackupError(
                .luks,
                "refusing to use the image of '\(target.name)': it is older than the one this machine last opened "
                    + "(generation \(image ?? 0), expected at least \(local)); the remote may be serving an old copy",
                hint: "if you restored an older copy of the image on purpose, open it once with "
                    + "'imgbackup open \(target.name) --accept-rollback'")
        }
        if let local, acceptRollback, (image ?? 0) < local {
            logger.notice(
                "accepting generation \(image ?? 0) of '\(target.name)' although this machine last opened \(local)")
        }
        if readOnly { return }
        // Saturating: the image's number came out of a filesystem the remote can scramble.
        let next = max(image ?? 0, acceptRollback ? 0 : local ?? 0).addingReportingOverflow(1)
        guard !next.overflow else {
            throw ImgBackupError(
                .luks, "refusing to use the image of '\(target.name)': its generation marker is at its maximum")
        }
        do {
            // On the remote before the local record moves on: a crash in
            // between leaves the image ahead, which is accepted. Rewritten
            // in place at a fixed width: one data block goes out, and the
            // filesystem has (almost) nothing to journal for it.
            let (path, text) = (imageRecord, Self.format(next.partialValue))
            try await withAbandonableDeadline(deadline, operation: "write \(Self.fileName)") {
                try LocalFiles.overwriteInPlace(path, text)
            }
            try LocalFiles.makeDirectories(paths.targetStateDirectory(target.name))
            try LocalFiles.writeAtomically(localRecord, "\(next.partialValue)\n")
        } catch {
            throw ImgBackupError.wrapping(error, .remote, failedTo: "advance the generation marker of '\(target.name)'")
        }
    }

    /// Twenty digits and a newline: every generation has the same length.
    static func format(_ generation: UInt64) -> String {
        let digits = String(generation)
        return String(repeating: "0", count: max(0, 20 - digits.count)) + digits + "\n"
    }

    /// A non-negative decimal on one line; nil for anything else.
    static func parse(_ text: String?) -> UInt64? {
        guard let text else { return nil }
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard trimmed.count <= 20, trimmed.allSatisfy(\.isASCII) else { return nil }
        return UInt64(trimmed)
    }
}
