/// Every exit status imgbackup gives, defined once. Each error code maps to
/// one of these; `--help` prints them from here; docs/usage.md's table and
/// the systemd units' `RestartPreventExitStatus=` are checked against this
/// table by a host test (ExitStatusTests).
public struct ExitStatus: Sendable, Equatable {
    public let value: Int32
    /// A few words, for `--help`.
    public let summary: String
    /// The row of docs/usage.md's "Exit status" table.
    public let meaning: String
    /// Whether trying again later, with nobody changing anything, may work:
    /// the run and trim units restart on these and not on the others.
    public let retryLater: Bool

    public static let success = ExitStatus(value: 0, summary: "success", meaning: "success", retryLater: false)
    public static let usageOrConfig = ExitStatus(
        value: 1, summary: "usage or config error",
        meaning: "usage or config error; `init` refusing to overwrite an image", retryLater: false)
    public static let copyStep = ExitStatus(
        value: 2, summary: "copy step failed", meaning: "the copy step failed", retryLater: true)
    public static let hang = ExitStatus(
        value: 3, summary: "hang detected",
        meaning: "a hang was detected (the remote stopped answering) and the stack was torn down", retryLater: true)
    public static let lockedOrOpen = ExitStatus(
        value: 4, summary: "locked or already open",
        meaning: "the target is locked by another imgbackup command, or already open", retryLater: true)
    public static let keyOrLUKS = ExitStatus(
        value: 5, summary: "key or LUKS error",
        meaning: "key or LUKS error: wrong key, key file readable by others, not a LUKS image, UUID mismatch",
        retryLater: false)
    public static let remote = ExitStatus(
        value: 6, summary: "remote error", meaning: "the remote failed: unreachable, login refused, image missing",
        retryLater: true)
    public static let localSystem = ExitStatus(
        value: 7, summary: "local system error",
        meaning: "a local operation failed (loop device, device-mapper, mount, a missing tool)", retryLater: true)
    public static let leftUp = ExitStatus(
        value: 8, summary: "teardown left something up",
        meaning:
            "teardown could not finish: something is still up (the message says what; run `close` again, or let the next run clear it)",
        retryLater: true)
    public static let interrupted = ExitStatus(
        value: 9, summary: "interrupted by a stop signal (what was open was closed)",
        meaning: "interrupted by a stop signal (SIGTERM, SIGINT, SIGHUP); what was open was closed", retryLater: true)
    public static let damaged = ExitStatus(
        value: 10, summary: "check found damage",
        meaning:
            "`check` found damage: the filesystem check, a file that cannot be read back, or the copy method's own check",
        retryLater: false)

    public static let all: [ExitStatus] = [
        .success, .usageOrConfig, .copyStep, .hang, .lockedOrOpen, .keyOrLUKS, .remote, .localSystem, .leftUp,
        .interrupted, .damaged,
    ]

    /// "Exit status: 0 success; 1 usage or config error; ...", for `--help`.
    public static var helpText: String {
        "Exit status: " + all.map { "\($0.value) \($0.summary)" }.joined(separator: "; ") + "."
    }
}
