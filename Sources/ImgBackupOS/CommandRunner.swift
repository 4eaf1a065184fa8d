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
    /// What the command reads on stdin.
    public var input: CommandInput = .none
    /// Send stdout here (the write end of a pipe to the next command)
    /// instead of capturing it. The runner closes it once the child has it.
    public var outputDescriptor: Int32?
    /// Sees the command's output while it runs (progress lines), in pieces
    /// as they arrive, a few times a second.
    public var observer: (@Sendable (CommandOutput) -> Void)?
    /// Where it runs (nil: where imgbackup runs); for tools that name what
    /// they archive by the relative paths they are given (borg).
    public var workingDirectory: String?

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

/// What a command reads on stdin.
public enum CommandInput: Sendable {
    case none
    /// Secret bytes (a passphrase for a tool's `..._FD=0` mechanism): they
    /// reach the child through an in-memory file, never argv or the
    /// environment, and the file is emptied when the command ends.
    case secret(SecureBytes)
    /// The read end of a pipe from the previous command. The runner closes
    /// it once the child has it.
    case descriptor(Int32)
    /// Plain text (sftp's batch): through an in-memory file, so no file of
    /// a predictable name in a shared directory is ever involved.
    case text(String)
}

/// A piece of output seen while a command runs.
public struct CommandOutput: Sendable {
    public enum Stream: Sendable { case standardOutput, standardError }
    public let stream: Stream
    public let text: String
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
            .map { $0.clipped(to: Self.lineLimit) }
        return tail.joined(separator: "; ")
    }

    /// What of one line of a tool's output an error message quotes: the
    /// tool may be relaying a remote that sends a line of any length.
    static let lineLimit = 300

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
    public var description: String {
        "\(name) is not installed (looked in \(ExecutableLocator.searchDirectories.joined(separator: ", ")))"
    }
}

/// Finds tools in a fixed list of directories, not in the caller's PATH.
public enum ExecutableLocator {
    public static let searchDirectories = [
        "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin",
    ]

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
        let workingDirectory = command.workingDirectory.map { FilePath($0) }

        let inputFile: MemoryFile?
        let input: FileDescriptorInput
        switch command.input {
        case .none:
            inputFile = nil
            let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
            guard null >= 0 else { throw SystemCallError(call: "open", object: "/dev/null", errno: errno) }
            input = .fileDescriptor(FileDescriptor(rawValue: null), closeAfterSpawningProcess: true)
        case .secret(let bytes):
            let file = try MemoryFile(name: "stdin")
            try file.write(bytes)
            inputFile = file
            input = .fileDescriptor(FileDescriptor(rawValue: file.descriptor), closeAfterSpawningProcess: false)
        case .descriptor(let fd):
            inputFile = nil
            input = .fileDescriptor(FileDescriptor(rawValue: fd), closeAfterSpawningProcess: true)
        case .text(let text):
            let file = try MemoryFile(name: "stdin")
            try file.write(Array(text.utf8))
            inputFile = file
            input = .fileDescriptor(FileDescriptor(rawValue: file.descriptor), closeAfterSpawningProcess: false)
        }
        // The secret's file is emptied however the command ends.
        defer { inputFile?.empty() }
        let output: FileDescriptorOutput
        if let fd = command.outputDescriptor {
            output = .fileDescriptor(FileDescriptor(rawValue: fd), closeAfterSpawningProcess: true)
        } else {
            output = .fileDescriptor(FileDescriptor(rawValue: stdoutFD), closeAfterSpawningProcess: false)
        }
        let watcher = command.observer.map { observer in
            Task {
                var offsets = (0, 0)
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(250))
                    Self.report(stdoutFile, from: &offsets.0, .standardOutput, to: observer)
                    Self.report(stderrFile, from: &offsets.1, .standardError, to: observer)
                }
                Self.report(stdoutFile, from: &offsets.0, .standardOutput, to: observer)
                Self.report(stderrFile, from: &offsets.1, .standardError, to: observer)
            }
        }
        defer { watcher?.cancel() }

        let status = try await withDeadline(
            command.timeout, operation: command.displayText,
            cancellationGrace: command.terminationGrace + .seconds(5)
        ) {
            try await Subprocess.run(
                .path(FilePath(path)),
                arguments: arguments,
                environment: .custom(finalEnvironment),
                workingDirectory: workingDirectory,
                platformOptions: finalOptions,
                input: input,
                output: output,
                error: .fileDescriptor(FileDescriptor(rawValue: stderrFD), closeAfterSpawningProcess: false)
            ).terminationStatus
        }
        if let watcher {
            watcher.cancel()
            await watcher.value
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

extension SubprocessCommandRunner {
    /// Hands what was written to `file` since `offset` to the observer.
    fileprivate static func report(
        _ file: MemoryFile, from offset: inout Int, _ stream: CommandOutput.Stream,
        to observer: @Sendable (CommandOutput) -> Void
    ) {
        let bytes = file.bytes(from: offset)
        guard !bytes.isEmpty else { return }
        offset += bytes.count
        observer(CommandOutput(stream: stream, text: String(decoding: bytes, as: UTF8.self)))
    }
}

/// An anonymous in-memory file (memfd) that a child writes its output into,
/// or reads a secret from.
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

    /// What was written from `offset` on (at most 1 MiB at a time).
    func bytes(from offset: Int) -> [UInt8] {
        var info = stat()
        guard fstat(descriptor, &info) == 0, Int(info.st_size) > offset else { return [] }
        var bytes = [UInt8](repeating: 0, count: min(Int(info.st_size) - offset, 1 << 20))
        let got = bytes.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, $0.count, off_t(offset)) }
        return got > 0 ? Array(bytes[0..<got]) : []
    }

    /// Fills the file with `secret` for the child to read from the start.
    func write(_ secret: SecureBytes) throws(SystemCallError) {
        let written = secret.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
        guard written == secret.count else {
            throw SystemCallError(call: "pwrite", object: "memfd", errno: written < 0 ? errno : EIO)
        }
    }

    func write(_ bytes: [UInt8]) throws(SystemCallError) {
        let written = bytes.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
        guard written == bytes.count else {
            throw SystemCallError(call: "pwrite", object: "memfd", errno: written < 0 ? errno : EIO)
        }
    }

    /// Drops the contents (the secret's pages go back to the kernel).
    func empty() { _ = ftruncate(descriptor, 0) }

    deinit { close(descriptor) }
}

/// A pipe from one command's stdout to the next one's stdin (`a | b`),
/// without a shell. Each end goes to one ``Command`` (``Command/outputDescriptor``,
/// ``CommandInput/descriptor(_:)``); the runner closes it once the child has it.
public enum CommandPipe {
    public static func make() throws(SystemCallError) -> (read: Int32, write: Int32) {
        var ends: [Int32] = [-1, -1]
        guard imgb_pipe_cloexec(&ends) == 0 else {
            throw SystemCallError(call: "pipe2", object: "command pipe", errno: errno)
        }
        return (ends[0], ends[1])
    }
}

extension StringProtocol {
    /// At most `limit` characters, an ellipsis marking the cut: text that a
    /// remote or a tool chose stays one readable line of an error message.
    public func clipped(to limit: Int) -> String {
        count <= limit ? String(self) : String(prefix(Swift.max(0, limit - 1))) + "\u{2026}"
    }
}
