import Foundation
import ImgBackupOS

/// What one `imgbackup run` did, kept under the state directory
/// (`/var/lib/imgbackup/TARGET/runs.jsonl`, one JSON object per line, newest
/// last) for `status`, metrics and people reading it.
public struct RunRecord: Codable, Sendable, Equatable {
    /// Also IMGBACKUP_RESULT for post-hooks and the notify command.
    public enum Result: String, Codable, Sendable {
        case success, failure
        /// The remote (or a source host) stopped answering; exit 3.
        case hung
        /// A stop signal ended the run; exit 9 (8 if the close failed too).
        case interrupted

        /// A run that failed after a stop signal was interrupted, whatever
        /// the failure looked like; one that finished was not.
        init(failure: ImgBackupError?, stoppedBy signal: Int32?) {
            guard let failure else {
                self = .success
                return
            }
            self = signal != nil ? .interrupted : failure.code == .hung ? .hung : .failure
        }
    }

    public var target: String
    public var start: Date
    public var end: Date?
    public var result: Result?
    /// The exit status imgbackup gave (0, or the error's code).
    public var exitCode: Int32?
    /// Bytes written to the image's dm-crypt device during the copy step.
    public var bytesWritten: UInt64?
    /// Bytes the copy tool reported copying, where it does (rsync, borg).
    public var bytesCopied: UInt64?
    /// Bytes the target's own connections sent and received (TCP payload:
    /// ssh's encrypted stream, retransmissions included), open to write-out.
    public var wireBytesSent: UInt64?
    public var wireBytesReceived: UInt64?
    public var method: String?
    /// The backup point the run made: snapshots/NAME, borg::NAME.
    public var point: String?
    public var incremental: Bool?
    /// Backup points deleted by retention.
    public var pruned: [String]?
    /// The one-line error of a failed run.
    public var error: String?

    public init(target: String, start: Date) {
        self.target = target
        self.start = start
    }

    public var duration: TimeInterval? { end.map { $0.timeIntervalSince(start) } }
}

/// The run history of the targets on this machine.
public struct RunHistory: Sendable {
    public let paths: RuntimePaths
    /// Records kept per target; older lines are dropped on write.
    static let kept = 1000

    public init(paths: RuntimePaths) { self.paths = paths }

    func file(_ target: String) -> String { paths.runHistory(target) }

    /// Every record of `target`, oldest first (lines that do not parse are skipped).
    public func records(_ target: String) -> [RunRecord] {
        guard let text = LocalFiles.contents(file(target)) else { return [] }
        let decoder = Self.decoder()
        return text.split(whereSeparator: \.isNewline).compactMap {
            try? decoder.decode(RunRecord.self, from: Data($0.utf8))
        }
    }

    public func last(_ target: String) -> RunRecord? { records(target).last }

    /// Appends a record (rewriting the file in one step, so a crash never
    /// leaves half a line).
    public func append(_ record: RunRecord) throws(ImgBackupError) {
        do {
            try LocalFiles.makeDirectories(paths.targetStateDirectory(record.target))
            var lines = (LocalFiles.contents(file(record.target)) ?? "").split(whereSeparator: \.isNewline).map(
                String.init)
            let data = try Self.encoder().encode(record)
            lines.append(String(decoding: data, as: UTF8.self))
            try LocalFiles.writeAtomically(file(record.target), lines.suffix(Self.kept).joined(separator: "\n") + "\n")
        } catch {
            throw ImgBackupError.wrapping(error, .system, failedTo: "record the run of \(record.target)")
        }
    }

    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}
