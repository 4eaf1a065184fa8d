import ImgBackupOS

/// The one error type users see: a code that decides the exit status, and a
/// message that reads "failed to <verb> <object>: <reason>", with what to do
/// where imgbackup knows.
public struct ImgBackupError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let name: String
        /// The process exit status (docs/usage.md: 0 ok, 1 usage/config, 2 copy
        /// step, 3 hang, 4 locked/open, 5 key/LUKS, 6 remote, 7 local, 8 left
        /// up, 9 interrupted).
        public let exitStatus: Int32

        public static let usage = Code(name: "usage", exitStatus: 1)
        public static let config = Code(name: "config", exitStatus: 1)
        /// The command would destroy data (an image exists) and refuses.
        public static let refused = Code(name: "refused", exitStatus: 1)
        public static let copyFailed = Code(name: "copyFailed", exitStatus: 2)
        public static let hung = Code(name: "hung", exitStatus: 3)
        public static let locked = Code(name: "locked", exitStatus: 4)
        public static let alreadyOpen = Code(name: "alreadyOpen", exitStatus: 4)
        public static let badKey = Code(name: "badKey", exitStatus: 5)
        public static let luks = Code(name: "luks", exitStatus: 5)
        /// The remote (ssh, sftp, the image file) failed or is unreachable.
        public static let remote = Code(name: "remote", exitStatus: 6)
        /// A local OS operation failed (mount, loop, device-mapper, a tool).
        public static let system = Code(name: "system", exitStatus: 7)
        /// A wait ran out (not a detected hang of the remote).
        public static let timeout = Code(name: "timeout", exitStatus: 7)
        /// Teardown could not finish; something is still up.
        public static let invalidState = Code(name: "invalidState", exitStatus: 8)
        /// A stop signal (SIGTERM, SIGINT, SIGHUP) ended the command; what
        /// it had open was closed.
        public static let interrupted = Code(name: "interrupted", exitStatus: 9)

        public var description: String { name }
    }

    public let code: Code
    public let message: String
    /// What the user can do about it, appended after the message.
    public let hint: String?
    public let cause: (any Error)?

    public init(_ code: Code, _ message: String, hint: String? = nil, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.hint = hint
        self.cause = cause
    }

    /// One line for the terminal or the journal.
    public var description: String {
        guard let hint else { return message }
        return "\(message) (\(hint))"
    }
}

extension ImgBackupError {
    /// Wraps any error as "failed to <action>: <reason>" unless it already is
    /// an ImgBackupError, which passes through untouched.
    public static func wrapping(
        _ error: any Error, _ code: Code, failedTo action: String, hint: String? = nil
    ) -> ImgBackupError {
        if let error = error as? ImgBackupError { return error }
        return ImgBackupError(code, "failed to \(action): \(reason(of: error))", hint: hint, cause: error)
    }

    /// A readable reason for lower-level errors.
    public static func reason(of error: any Error) -> String {
        switch error {
        case let error as ImgBackupError: return error.message
        case let error as CustomStringConvertible: return error.description
        default: return String(describing: error)
        }
    }
}

extension ImgBackupError {
    /// A stop signal ended `what`; `cause` is how the work itself ended.
    static func interrupted(by signal: Int32?, _ what: String, cause: ImgBackupError? = nil) -> ImgBackupError {
        let name = signal.map(StopSignals.name(of:)) ?? "a stop signal"
        return ImgBackupError(.interrupted, "interrupted by \(name): \(what)", cause: cause)
    }
}
