import CImgBackupShim
import Foundation
import Subprocess
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One external tool invocation. Arguments are an argv, never a shell string:
/// nothing a user typed is ever interpreted by a shell.
public struct Command: Sendable {
    /// A name looked up in the fixed system directories, or an absolute path.
    public var executable: String
    public var arguments: [String]
    /// Added to the minimal environment (PATH, LC_ALL=C). Never key material.
    public var environment: [String: String]
    /// The named deadline for the whole run.
    public var timeout: Duration
    /// Time between SIGTERM to the process group and SIGKILL.
    public var terminationGrace: Duration
    /// The most bytes kept of each of stdout and stderr (the tail).
    public var outputLimit: Int

    public init(
        _ executable: String,
        _ arguments: [String],
        timeout: Duration,
        environment: [String: String] = [:],
        terminationGrace: Duration = .seconds(5),
        outputLimit: Int = 64 * 1024
    ) {
        self.executable = executable
        self.arguments = arguments
        self.timeout = timeout
        self.environment = environment
        self.terminationGrace = terminationGrace
        self.outputLimit = outputLimit
    }

    /// The command as a person would type it, for messages.
    public var displayText: String {
        ([executable] + arguments).map { $0.contains(" ") || $0.isEmpty ? "'\($0)'" : $0 }.joined(separator: " ")
    }
}

/// How a command ended. A non-zero exit is a value, not an error: the caller
/// decides what it means.
public struct CommandResult: Sendable {
    public enum Termination: Sendable, Equatable {
        case exited(Int32)
        case signaled(Int32)
    }
    public let executable: String
    public let termination: Termination
    public let standardOutput: String
    public let standardError: String

    public init(executable: String, termination: Termination, standardOutput: String, standardError: String) {
        self.executable = executable
        self.termination = termination
        self.standardOutput = standardOutput
        self.standardError = standardError
    }

    public var succeeded: Bool { termination == .exited(0) }

    /// The last non-empty lines of stderr (or stdout when stderr is empty), joined for a one-line message.
    public func outputTail(lines: Int = 2) -> String {
        let source = standardError.contains(where: { !$0.isWhitespace }) ? standardError : standardOutput
        let tail = source.split(whereSeparator: \.isNewline)
            .map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
            .suffix(lines)
        return tail.joined(separator: "; ")
    }

    /// "exited with status 1" / "was killed by signal 9", plus the output tail.
    public var failureSummary: String {
        let how: String
        switch termination {
        case .exited(let code): how = "\(executable) exited with status \(code)"
        case .signaled(let signal): how = "\(executable) was killed by signal \(signal)"
        }
        let tail = outputTail()
        return tail.isEmpty ? how : "\(how): \(tail)"
    }
}

/// An executable the runner could not find in the system directories.
public struct ExecutableNotFound: Error, Sendable, CustomStringConvertible {
    public let name: String
    public var description: String { "\(name) is not installed (looked in \(ExecutableLocator.searchDirectories.joined(separator: ", ")))" }
}

/// Finds tools in a fixed list of directories, not in the caller's PATH.
public enum ExecutableLocator {
    public static let searchDirectories = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]

    public static func locate(_ name: String) throws(ExecutableNotFound) -> String {
        if name.hasPrefix("/") {
            guard access(name, X_OK) == 0 else { throw ExecutableNotFound(name: name) }
            return name
        }
        for directory in searchDirectories {
            let candidate = directory + "/" + name
            if access(candidate, X_OK) == 0 { return candidate }
        }
        throw ExecutableNotFound(name: name)
    }
}

/// The seam orchestration code runs tools through; tests of orchestration may
/// substitute it, the real side is ``SubprocessCommandRunner``.
public protocol CommandRunning: Sendable {
    func run(_ command: Command) async throws -> CommandResult
}

/// Runs tools with swift-subprocess: absolute path, minimal environment, its
/// own process group, bounded output, and a teardown ladder (SIGTERM to the
/// group, grace, SIGKILL) when the deadline passes.
public struct SubprocessCommandRunner: CommandRunning {
    public init() {}

    public static let minimalEnvironment: [String: String] = [
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C",
    ]

    public func run(_ command: Command) async throws -> CommandResult {
        let path = try ExecutableLocator.locate(command.executable)
        // Output goes to memory files, not pipes: a tool that leaves a daemon
        // behind (sshfs and its ssh child) would hold a pipe open forever, and
        // a reader waiting for EOF would never return.
        let stdoutFile = try MemoryFile(name: "stdout")
        let stderrFile = try MemoryFile(name: "stderr")

        var options = PlatformOptions()
        options.processGroupID = 0  // its own group, so the ladder reaches its children too
        options.teardownSequence = [
            .gracefulShutDown(toProcessGroup: true, allowedDurationToNextStep: command.terminationGrace)
        ]
        var environment: [Environment.Key: String] = [:]
        for (key, value) in Self.minimalEnvironment.merging(command.environment, uniquingKeysWith: { $1 }) {
            environment[Environment.Key(rawValue: key)!] = value
        }
        let arguments = Arguments(command.arguments)
        let stdoutFD = stdoutFile.descriptor
        let stderrFD = stderrFile.descriptor
        let finalEnvironment = environment
        let finalOptions = options

        let status = try await withDeadline(
            command.timeout, operation: command.displayText,
            cancellationGrace: command.terminationGrace + .seconds(5)
        ) {
            try await Subprocess.run(
                .path(FilePath(path)),
                arguments: arguments,
                environment: .custom(finalEnvironment),
                platformOptions: finalOptions,
                input: .none,
                output: .fileDescriptor(FileDescriptor(rawValue: stdoutFD), closeAfterSpawningProcess: false),
                error: .fileDescriptor(FileDescriptor(rawValue: stderrFD), closeAfterSpawningProcess: false)
            ).terminationStatus
        }
        let termination: CommandResult.Termination
        switch status {
        case .exited(let code): termination = .exited(code)
        case .signaled(let signal): termination = .signaled(signal)
        }
        return CommandResult(
            executable: command.executable,
            termination: termination,
            standardOutput: stdoutFile.tail(limit: command.outputLimit),
            standardError: stderrFile.tail(limit: command.outputLimit)
        )
    }
}

/// An anonymous in-memory file (memfd) that a child writes its output into.
final class MemoryFile: Sendable {
    let descriptor: Int32

    init(name: String) throws(SystemCallError) {
        descriptor = try checkedNegative("memfd_create", name) { imgb_memfd_create("imgbackup-\(name)") }
    }

    /// The last `limit` bytes written, as text.
    func tail(limit: Int) -> String {
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { return "" }
        let size = Int(info.st_size)
        let start = max(0, size - limit)
        var bytes = [UInt8](repeating: 0, count: size - start)
        let got = bytes.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, $0.count, off_t(start)) }
        guard got > 0 else { return "" }
        return String(decoding: bytes[0..<got], as: UTF8.self)
    }

    deinit { close(descriptor) }
}
