import ImgBackupOS

/// The one error type users see: a code that decides the exit status, and a
/// message that reads "failed to <verb> <object>: <reason>", with what to do
/// where imgbackup knows.
public struct ImgBackupError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let name: String
        /// What the process exits with (ExitStatus: the one table of them).
        public let exit: ExitStatus
        public var exitStatus: Int32 { exit.value }

        public static func == (a: Code, b: Code) -> Bool { a.name == b.name }
        public func hash(into hasher: inout Hasher) { hasher.combine(name) }

        public static let usage = Code(name: "usage", exit: .usageOrConfig)
        public static let config = Code(name: "config", exit: .usageOrConfig)
        /// The command would destroy data (an image exists) and refuses.
        public static let refused = Code(name: "refused", exit: .usageOrConfig)
        public static let copyFailed = Code(name: "copyFailed", exit: .copyStep)
        public static let hung = Code(name: "hung", exit: .hang)
        public static let locked = Code(name: "locked", exit: .lockedOrOpen)
        public static let alreadyOpen = Code(name: "alreadyOpen", exit: .lockedOrOpen)
        public static let badKey = Code(name: "badKey", exit: .keyOrLUKS)
        public static let luks = Code(name: "luks", exit: .keyOrLUKS)
        /// The remote (ssh, sftp, the image file) failed or is unreachable.
        public static let remote = Code(name: "remote", exit: .remote)
        /// A local OS operation failed (mount, loop, device-mapper, a tool).
        public static let system = Code(name: "system", exit: .localSystem)
        /// A wait ran out (not a detected hang of the remote).
        public static let timeout = Code(name: "timeout", exit: .localSystem)
        /// Teardown could not finish; something is still up.
        public static let invalidState = Code(name: "invalidState", exit: .leftUp)
        /// A stop signal (SIGTERM, SIGINT, SIGHUP) ended the command; what
        /// it had open was closed.
        public static let interrupted = Code(name: "interrupted", exit: .interrupted)
        /// `check` found damage in the image.
        public static let damaged = Code(name: "damaged", exit: .damaged)

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
