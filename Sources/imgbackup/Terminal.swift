import Foundation
import ImgBackupCore
import Logging

/// How imgbackup talks to a person or a journal: plain lines on stderr,
/// "imgbackup: message", and a progress line only when stderr is a terminal.
enum Terminal {
    /// Messages quote what the remote sent (lock file fields, a server's
    /// stderr, names): escaped here, one line each, never a terminal sequence.
    static func printError(_ message: String) {
        FileHandle.standardError.write(Data("imgbackup: error: \(message.escapingControlCharacters)\n".utf8))
    }

    /// A line about the process itself (a stop signal), whatever the log level.
    static func printNotice(_ message: String) {
        FileHandle.standardError.write(Data("imgbackup: \(message.escapingControlCharacters)\n".utf8))
    }

    static func bootstrapLogging(verbosity: Int) {
        let level: Logger.Level = verbosity >= 2 ? .debug : verbosity == 1 ? .info : verbosity == 0 ? .notice : .error
        LoggingSystem.bootstrap { _ in LineLogHandler(logLevel: level) }
    }

    static func progressDisplay() -> (any ProgressDisplay)? {
        isatty(STDERR_FILENO) == 1 ? TerminalProgress() : nil
    }
}

/// One line per message, no timestamps (journald adds its own).
struct LineLogHandler: LogHandler {
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let prefix = event.level >= .warning ? "\(event.level): " : ""
        FileHandle.standardError.write(
            Data("imgbackup: \(prefix)\("\(event.message)".escapingControlCharacters)\n".utf8))
    }
}

/// Rewrites one status line in place.
struct TerminalProgress: ProgressDisplay {
    func update(_ line: String) {
        FileHandle.standardError.write(Data("\r\u{1B}[K\(line)".utf8))
    }

    func finish() {
        FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
    }
}
